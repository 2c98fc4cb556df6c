"""The DMD training loop: Self-Forcing rollouts of the causal generator, a frozen teacher with
CFG, a trainable critic, and the reward weighting (``dmd`` / ``re_dmd`` / ``stream_r1``).

One :meth:`Trainer.train_step` = (generator update if ``step % generator_every == 0``) + one
critic update, each over ``grad_accum`` micro-batches of ``batch_size`` prompts per rank.
Randomness is drawn per *global sample* from generators seeded by (seed, step, micro-batch,
sample index), so a run on N ranks sees the same samples as one process with the same global
batch, and a resumed run the same as an uninterrupted one.

Under ``torchrun`` the generator, critic and teacher are sharded with FSDP2 (``fully_shard``,
see :func:`shard_model`): each transformer block is a unit of its own, so parameters are
gathered block by block; gradients are averaged over ranks.
"""

from __future__ import annotations

import contextlib
import csv
import math
import random
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from stream_r1_fast.cache import CachePolicy
from stream_r1_fast.inference.sampler import FlowMatchSampler, randn
from stream_r1_fast.inference.vae import StreamingVAEDecoder
from stream_r1_fast.training import checkpoint as ckpt
from stream_r1_fast.training.config import TrainConfig
from stream_r1_fast.training.dmd import critic_loss, dmd_gradient, dmd_loss, sample_timesteps
from stream_r1_fast.training.rollout import draw_exit_step, self_forcing_rollout
from stream_r1_fast.training.weighting import Weighting

CSV_COLUMNS = ("step", "exit_step", "critic_loss", "generator_loss", "grad_norm_critic", "grad_norm_generator",
               "reward_VQ", "reward_MQ", "reward_TA", "w_inter", "balance_penalty", "seconds")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def shard_model(model: torch.nn.Module, *, param_dtype: torch.dtype | None = None,
                reshard_after_forward: bool = True) -> torch.nn.Module:
    """FSDP2 with one unit per transformer block, then the root (patch/time/text embedders
    and the head): parameters, gradients and optimiser state are sharded at rest, and a
    forward gathers one block at a time (freed again after the block when
    ``reshard_after_forward``, and gathered again for its backward).

    The root's ``forward_chunk``, ``embed_text`` and ``encode_text`` get FSDP's forward hooks
    too. Text conditioning must reach the blocks as raw embeddings or a lazy
    :class:`~stream_r1_fast.models.TextContext` (each block projects its own cross-attention
    K/V inside its forward); ``encode_text`` returns the lazy form once the blocks are sharded.

    ``param_dtype`` (e.g. bfloat16): compute dtype of the gathered parameters
    (``MixedPrecisionPolicy``; gradients are reduced in float32, sharded parameters and
    optimiser state keep their dtype). Forward inputs are not cast (the model casts what it
    needs; the trainer's autocast does the rest)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    kwargs = {"reshard_after_forward": reshard_after_forward}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                                   cast_forward_inputs=False)
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    for name in ("forward_chunk", "embed_text", "encode_text"):
        register_fsdp_forward_method(model, name)
    return model


def _full_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _global_mean(value: torch.Tensor) -> float:
    v = value.detach().double().reshape(1).cpu()
    if _distributed():
        dist.all_reduce(v)
        v /= dist.get_world_size()
    return float(v)


class Trainer:
    """DMD distillation of ``generator`` (a CausalWanTransformer).

    Args:
        config: the run's :class:`TrainConfig`.
        generator, teacher, critic: CausalWanTransformers (teacher frozen; critic trainable,
            usually a copy of the student's initial weights).
        text_encoder: ``prompts -> embeddings [B, L, text_dim]`` (a PromptEncoder).
        vae: diffusers ``AutoencoderKLWan`` for decoding rollouts (needed by reward modes), or a
            codec with ``temporal_factor``, ``spatial_factor`` and ``streaming_decoder()`` (the
            toy world's :class:`~stream_r1_fast.toy.ToyCodec`).
        reward_model: a :class:`~stream_r1_fast.rewards.RewardModel` (needed by reward modes).
    """

    def __init__(self, config: TrainConfig, *, generator, teacher, critic, text_encoder: Callable,
                 vae=None, reward_model=None, prompts: Sequence[str] | None = None, device=None):
        self.config = cfg = config
        self.device = torch.device(device or cfg.train.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.rank = dist.get_rank() if _distributed() else 0
        self.world = dist.get_world_size() if _distributed() else 1
        self.prompts = list(prompts or cfg.prompt_list())
        self.text_encoder = text_encoder
        self.vae = vae
        self.generator = generator.to(self.device).train()
        self.critic = critic.to(self.device).train()
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        if cfg.train.gradient_checkpointing:
            for m in (self.generator, self.critic):
                m.enable_gradient_checkpointing()
        if self.world > 1:
            # Every model frees each block's gathered parameters after its forward (the frozen
            # teacher never needs them again; the rollout's many forwards re-gather per block).
            for m in (self.generator, self.critic, self.teacher):
                shard_model(m, param_dtype=self._compute_dtype(), reshard_after_forward=True)
        o = cfg.optim
        self.g_opt = torch.optim.AdamW(self.generator.parameters(), lr=o.lr_generator, betas=tuple(o.betas),
                                       weight_decay=o.weight_decay)
        self.c_opt = torch.optim.AdamW(self.critic.parameters(), lr=o.lr_critic, betas=tuple(o.betas),
                                       weight_decay=o.weight_decay)
        self.ema = {n: p.detach().float().clone() for n, p in self.generator.named_parameters()}
        if vae is not None and hasattr(vae, "streaming_decoder"):  # a codec with its own decoder (the toy world's)
            factors = (vae.temporal_factor, vae.spatial_factor)
        elif vae is not None:
            vae_cfg = vae.config
            factors = (2 ** sum(bool(d) for d in vae_cfg.temperal_downsample), 2 ** (len(vae_cfg.dim_mult) - 1))
        else:
            factors = (4, 8)
        self.vae_factors = factors
        if cfg.weighting.mode != "dmd" and vae is None:
            raise ValueError(f"weighting mode {cfg.weighting.mode!r} needs a VAE to decode rollouts")
        self.weighting = Weighting(cfg.weighting, reward_model, factors)
        r = cfg.rollout
        self.sampler = FlowMatchSampler.from_steps(r.steps, r.shift)
        self.policy = CachePolicy(r.sink_frames, r.window_frames, r.alpha)
        s = factors[1]
        if r.height % (2 * s) or r.width % (2 * s):
            raise ValueError(f"rollout.height/width must be multiples of {2 * s} pixels, got {r.height}x{r.width}")
        self.latent_size = (r.height // s, r.width // s)
        self.exit_rng = random.Random(cfg.train.seed)
        self.step = 0
        self.output_dir = Path(cfg.train.output_dir)
        self._csv = None
        self._tb = None

    # ------------------------------------------------------------------ helpers

    def _autocast(self):
        if self.config.train.mixed_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _compute_dtype(self) -> torch.dtype | None:
        """bf16 when configured (the K/V the blocks compute under autocast or FSDP's mixed
        precision are bf16 even where the parameters are float32); else the parameters'."""
        return torch.bfloat16 if self.config.train.mixed_precision == "bf16" else None

    def _batch(self, micro: int, purpose: int) -> tuple[list[str], list[torch.Generator]]:
        """This rank's prompts and per-sample generators for (step, micro-batch, purpose)."""
        o = self.config.optim
        global_batch = o.batch_size * self.world
        base = (self.step * o.grad_accum + micro) * global_batch
        idx = [base + self.rank * o.batch_size + j for j in range(o.batch_size)]
        prompts = [self.prompts[i % len(self.prompts)] for i in idx]
        seed = self.config.train.seed
        gens = [torch.Generator(device=self.device).manual_seed((seed * 1_000_003 + i * 8 + purpose) % 2**63)
                for i in idx]
        return prompts, gens

    def _texts(self, prompts: list[str]):
        emb = self.text_encoder(prompts).to(self.device)
        neg = self.text_encoder([self.config.data.negative_prompt] * len(prompts)).to(self.device)
        return emb, neg

    def _score(self, model, text):
        def score(x_t, t):
            with self._autocast():
                return model(x_t, t, text).sample
        return score

    def _noise(self, shape, gens):
        d = self.config.dmd
        t = torch.cat([sample_timesteps(1, shift=d.timestep_shift, min_t=d.min_t, max_t=d.max_t,
                                        device=self.device, generator=g) for g in gens])
        return t, randn(shape, gens, device=self.device)

    def _rollout(self, prompts, gens, exit_step: int, emb):
        r = self.config.rollout
        with self._autocast():
            # Text K/V once per rollout; once the blocks are FSDP units of their own this is
            # the lazy form (each block projects them in its forward: ~5% slower on the tiny CPU
            # model, bit-identical, and the price of gathering one block at a time).
            text = self.generator.encode_text(emb)
            return self_forcing_rollout(
                self.generator, text, num_chunks=r.num_chunks, chunk_frames=r.chunk_frames,
                latent_size=self.latent_size, exit_step=exit_step, sampler=self.sampler, policy=self.policy,
                generator=gens, cache_dtype=self._compute_dtype(),
            )

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """latents -> video [B, T, 3, H, W] in [0, 1] (no grad)."""
        make = getattr(self.vae, "streaming_decoder", None)
        decoder = make() if make is not None else StreamingVAEDecoder(self.vae)
        video = decoder.decode(x.detach())
        return ((video + 1.0) / 2.0).permute(0, 2, 1, 3, 4).contiguous()

    def _clip(self, model) -> float:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.optim.grad_clip)
        return float(_full_tensor(norm))

    @torch.no_grad()
    def _update_ema(self) -> None:
        o = self.config.optim
        decay = o.ema_decay if self.step >= o.ema_start else 0.0
        for n, p in self.generator.named_parameters():
            self.ema[n].lerp_(p.detach().float(), 1.0 - decay)

    # ------------------------------------------------------------------ one step

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        accum = cfg.optim.grad_accum
        t0 = time.perf_counter()
        k = draw_exit_step(len(self.sampler.timesteps), self.exit_rng, self.device)
        logs: dict[str, float] = {"step": self.step, "exit_step": k}
        samples = []
        if self.step % cfg.optim.generator_every == 0:
            self.g_opt.zero_grad(set_to_none=True)
            total, wlogs_all = 0.0, []
            for micro in range(accum):
                prompts, gens = self._batch(micro, 0)
                emb, neg = self._texts(prompts)
                x = self._rollout(prompts, gens, k, emb)
                samples.append((x.detach(), emb))
                t, eps = self._noise(x.shape, self._batch(micro, 1)[1])
                g, _ = dmd_gradient(
                    x, self._score(self.teacher, emb), self._score(self.teacher, neg), self._score(self.critic, emb),
                    guidance_scale=cfg.dmd.guidance_scale, t=t, eps=eps,
                )
                video = self._decode(x) if cfg.weighting.mode != "dmd" else None
                weights, wlogs = self.weighting(video, prompts, x.shape)
                loss = dmd_loss(x, g, weights) / accum
                loss.backward()
                total += loss.detach()
                wlogs_all.append(wlogs)
            logs["grad_norm_generator"] = self._clip(self.generator)
            self.g_opt.step()
            self._update_ema()
            logs["generator_loss"] = _global_mean(torch.as_tensor(total))
            for key in ("reward_VQ", "reward_MQ", "reward_TA", "w_inter", "balance_penalty"):
                vals = [w[key].double().flatten().cpu() for w in wlogs_all if key in w]
                if vals:
                    logs[key] = _global_mean(torch.cat(vals).mean())

        self.c_opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(accum):
            if samples:
                x, emb = samples[micro]
            else:
                prompts, gens = self._batch(micro, 0)
                emb, _ = self._texts(prompts)
                with torch.no_grad():
                    x = self._rollout(prompts, gens, k, emb)
            t, eps = self._noise(x.shape, self._batch(micro, 2)[1])
            loss, _ = critic_loss(self._score(self.critic, emb), x, t=t, eps=eps)
            (loss / accum).backward()
            total += loss.detach() / accum
        logs["grad_norm_critic"] = self._clip(self.critic)
        self.c_opt.step()
        logs["critic_loss"] = _global_mean(torch.as_tensor(total))
        self.step += 1
        logs["seconds"] = time.perf_counter() - t0
        return logs

    # ------------------------------------------------------------------ state

    def _full_state(self, model) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _full_optim(self, model, opt) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save(self) -> Path:
        weights = {
            "generator": self._full_state(self.generator),
            "generator_ema": {n: _full_tensor(t).cpu() for n, t in self.ema.items()},
            "critic": self._full_state(self.critic),
        }
        optimizers = {"generator": self._full_optim(self.generator, self.g_opt),
                      "critic": self._full_optim(self.critic, self.c_opt)}
        state = {"weighting": self.weighting.state_dict(), "exit_rng": _py_state(self.exit_rng),
                 "config": self.config.to_dict()}
        return ckpt.save_checkpoint(
            self.output_dir / "checkpoints", self.step, weights=weights if self.rank == 0 else None,
            optimizers=optimizers if self.rank == 0 else None, state=state, rank=self.rank, world_size=self.world,
            barrier=dist.barrier if _distributed() else (lambda: None),
        )

    def load(self, path: str | Path) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, set_model_state_dict, set_optimizer_state_dict,
        )

        data = ckpt.load_checkpoint(path, self.rank)
        opts = StateDictOptions(full_state_dict=True)
        for name, model in (("generator", self.generator), ("critic", self.critic)):
            set_model_state_dict(model, data["weights"][name], options=opts)
        set_optimizer_state_dict(self.generator, self.g_opt, data["optimizers"]["generator"], options=opts)
        set_optimizer_state_dict(self.critic, self.c_opt, data["optimizers"]["critic"], options=opts)
        ema = data["weights"]["generator_ema"]
        for n, p in self.generator.named_parameters():
            full = ema[n].to(self.device, torch.float32)
            if hasattr(p, "device_mesh"):
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full, p.device_mesh, p.placements)
            self.ema[n] = full
        state = data["state"]
        self.step = int(state["step"])
        self.weighting.load_state_dict(state["weighting"])
        self.exit_rng.setstate(_py_unstate(state["exit_rng"]))
        ckpt.set_host_rng_state(state["host_rng"])
        if data["rng"] is not None:
            ckpt.set_rng_state(data["rng"])

    def resume(self) -> Path | None:
        """Load the latest complete checkpoint of the output folder, if any."""
        path = ckpt.latest_checkpoint(self.output_dir / "checkpoints")
        if path is not None:
            self.load(path)
        return path

    # ------------------------------------------------------------------ the loop

    def _log(self, logs: dict[str, float]) -> None:
        if self.rank != 0:
            return
        if self._csv is None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            path = self.output_dir / "metrics.csv"
            new = not path.exists()
            self._csv = open(path, "a", newline="")
            self._csv_writer = csv.DictWriter(self._csv, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            if new:
                self._csv_writer.writeheader()
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.output_dir / "tensorboard"))
            except ImportError:
                self._tb = None
        self._csv_writer.writerow({k: logs.get(k, "") for k in CSV_COLUMNS})
        self._csv.flush()
        if self._tb is not None:
            for k, v in logs.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, int(logs["step"]))

    def fit(self, steps: int | None = None, on_step: Callable[[dict], None] | None = None) -> list[dict]:
        """Train until ``steps`` (default ``train.steps``) total steps; saves every
        ``save_every`` steps and at the end. Returns this call's per-step logs."""
        from tqdm import tqdm

        cfg = self.config.train
        steps = cfg.steps if steps is None else steps
        history = []
        bar = tqdm(total=steps, initial=self.step, desc=f"train {self.config.weighting.mode}", unit="step",
                   disable=not cfg.progress or self.rank != 0)
        try:
            while self.step < steps:
                logs = self.train_step()
                history.append(logs)
                if self.step % cfg.log_every == 0 or self.step == steps:
                    self._log(logs)
                bar.update(1)
                bar.set_postfix(critic=f"{logs['critic_loss']:.4g}",
                                gen=f"{logs.get('generator_loss', float('nan')):.4g}")
                if on_step is not None:
                    on_step(logs)
                if self.step % cfg.save_every == 0 or self.step == steps:
                    self.save()
        finally:
            bar.close()
            if self._csv is not None:
                self._csv.close()
                self._csv = None
            if self._tb is not None:
                self._tb.close()
                self._tb = None
        return history


def _py_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _py_unstate(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])


def build_trainer(config: TrainConfig) -> Trainer:
    """Models, text encoder, VAE and reward model as the config names them."""
    import importlib

    from diffusers import AutoencoderKLWan

    from stream_r1_fast.inference.text import PromptEncoder
    from stream_r1_fast.models import CausalWanTransformer, preset
    from stream_r1_fast.models.loading import load_transformer

    m = config.model
    if m.dir == "toy":
        from stream_r1_fast.toy.distill import build_toy_trainer

        return build_toy_trainer(config)
    if m.dir is None:
        raise ValueError("config key 'model.dir' must name a diffusers Wan folder (vae/, text_encoder/, tokenizer/)")
    root = Path(m.dir)
    device = torch.device(config.train.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if m.dtype == "bf16" else torch.float32
    torch.manual_seed(config.train.seed)
    student_cfg = dict(CausalWanTransformer.load_config(str(root / "transformer")))

    def load(spec: str | None, default: str | None):
        spec = spec or default
        if spec is None:
            return None
        if spec.lower() in ("wan2.1-1.3b", "wan2.1-14b", "tiny"):
            return CausalWanTransformer(**preset(spec)).to(device, dtype)
        cfg = None if Path(spec).is_dir() and (Path(spec) / "config.json").is_file() else student_cfg
        return load_transformer(spec, cfg, dtype=dtype, device=device)

    generator = load(m.student, str(root))
    teacher = load(m.teacher, None) or load(m.student, str(root))
    critic = load(m.critic, None) or load(m.student, str(root))
    encoder = PromptEncoder.from_pretrained(root, dtype=dtype, device=device, max_length=m.text_max_length)
    vae = AutoencoderKLWan.from_pretrained(str(root / "vae"), torch_dtype=torch.float32).to(device)
    reward = None
    if config.reward.factory is not None:
        module, _, attr = config.reward.factory.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        reward = obj(**config.reward.kwargs)
    return Trainer(config, generator=generator, teacher=teacher, critic=critic, text_encoder=encoder, vae=vae,
                   reward_model=reward, device=device)


__all__ = ["CSV_COLUMNS", "Trainer", "build_trainer", "shard_model"]
