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

from stream_r1_fast.inference.sampler import FlowMatchSampler, randn
from stream_r1_fast.inference.vae import StreamingVAEDecoder, codec_factors
from stream_r1_fast.training import checkpoint as ckpt
from stream_r1_fast.training.config import (ConfigWarning, TrainConfig, config_diff, preflight, resolve_factory,
                                            yaml_load)
from stream_r1_fast.training.dmd import critic_loss, dmd_gradient, dmd_loss, sample_timesteps
from stream_r1_fast.training.rollout import draw_exit_step, self_forcing_rollout, training_cache_policy
from stream_r1_fast.training.weighting import Weighting

CSV_COLUMNS = ("step", "exit_step", "critic_loss", "generator_loss", "grad_norm_critic", "grad_norm_generator",
               "reward_VQ", "reward_MQ", "reward_TA", "w_inter", "balance_penalty", "seconds",
               "lr_generator", "lr_critic")
# train.* keys that steer the run but not what it computes: a resume that changes them (more
# steps, another device, other logging) is not reported as a different config.
RUN_CONTROL_KEYS = frozenset(f"train.{k}" for k in ("steps", "output_dir", "save_every", "log_every", "device",
                                                    "progress", "resume_inexact", "keep_last", "sample_every"))
SAMPLE_FPS = 16  # Wan2.1's frame rate, for the TensorBoard sample videos


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
        factors = codec_factors(vae)
        self.vae_factors = factors
        if cfg.weighting.mode != "dmd" and vae is None:
            raise ValueError(f"weighting mode {cfg.weighting.mode!r} needs a VAE to decode rollouts")
        self.weighting = Weighting(cfg.weighting, reward_model, factors)
        r = cfg.rollout
        self.sampler = FlowMatchSampler.from_steps(r.steps, r.shift)
        self.policy = training_cache_policy(r)
        s = factors[1]
        if r.height % (2 * s) or r.width % (2 * s):
            raise ValueError(f"rollout.height/width must be multiples of {2 * s} pixels, got {r.height}x{r.width}")
        self.latent_size = (r.height // s, r.width // s)
        self.exit_rng = random.Random(cfg.train.seed)
        self.step = 0
        self.output_dir = Path(cfg.train.output_dir)
        self._csv = None
        self._tb = None
        self._last_gen: tuple[int, float] | None = None  # (step, generator_loss) of the last generator update
        self.last_postfix: dict[str, str] = {}
        self._verified: set[str] = set()  # checkpoints whose manifest verified (the retention's check)
        self._warned: set[str] = set()
        self._sample_seed = cfg.train.seed
        if prompts is None and isinstance(cfg.data.prompts, str) and not cfg.data.prompts.startswith("toy-world:"):
            first = cfg.prompt_entries()[0]
            if first.seed is not None:
                self._sample_seed = first.seed

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
                generator=gens, cache_dtype=self._compute_dtype(), cache_impl=r.cache_impl,
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
                weights, wlogs = self.weighting(video, prompts, x.shape, step=self.step)
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

        # The critic learns the generator's current distribution: after a generator update
        # that is a fresh rollout of the updated generator (own noise, own exit step), unless
        # the recipe reuses the pre-update samples (dmd.critic_samples).
        reuse = bool(samples) and cfg.dmd.critic_samples == "reuse"
        if samples and not reuse:
            k = draw_exit_step(len(self.sampler.timesteps), self.exit_rng, self.device)
        logs["critic_exit_step"] = k
        self.c_opt.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(accum):
            if reuse:
                x, emb = samples[micro]
            else:
                prompts, gens = self._batch(micro, 3 if samples else 0)
                emb = samples[micro][1] if samples else self._texts(prompts)[0]
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
        """Checkpoint the current step (see :mod:`~stream_r1_fast.training.checkpoint`). Refuses
        (:class:`~stream_r1_fast.training.checkpoint.NonFiniteWeights`) to write NaN / inf weights."""
        weights = {
            "generator": self._full_state(self.generator),
            "generator_ema": {n: _full_tensor(t).cpu() for n, t in self.ema.items()},
            "critic": self._full_state(self.critic),
        }
        optimizers = {"generator": self._full_optim(self.generator, self.g_opt),
                      "critic": self._full_optim(self.critic, self.c_opt)}
        state = {"weighting": self.weighting.state_dict(), "exit_rng": _py_state(self.exit_rng),
                 "config": self.config.to_dict()}
        path = ckpt.save_checkpoint(
            self.output_dir / "checkpoints", self.step, weights=weights if self.rank == 0 else None,
            optimizers=optimizers if self.rank == 0 else None, state=state, rank=self.rank, world_size=self.world,
            barrier=dist.barrier if _distributed() else (lambda: None),
        )
        self._verified.discard(str(path))  # a rewritten folder is checked afresh
        self.prune_checkpoints()
        return path

    def _checkpoint_verifies(self, path: Path) -> bool:
        """A complete checkpoint whose manifest matches its files (sizes and sha256; a folder
        written before manifests counts when it has its marker). Cached per folder: each
        checkpoint is checksummed once, the first time retention has to decide on it."""
        if str(path) in self._verified:
            return True
        try:
            ok = (path / ckpt.MARKER).is_file() and (ckpt.verify_manifest(path) or (path / "state.json").is_file())
        except ckpt.CorruptCheckpoint as exc:
            ckpt.warn(f"checkpoint {path} does not verify ({exc}); it does not count as the newest good one")
            return False
        if ok:
            self._verified.add(str(path))
        return ok

    def prune_checkpoints(self) -> list[Path]:
        """``train.keep_last`` retention (rank 0; 0 keeps everything): deletes the ``step_N``
        folders beyond the newest ``keep_last``, never the newest one that verifies (so with a
        corrupt newest checkpoint the previous good one stays). Called by :meth:`save` once the
        new checkpoint is complete. Other entries (``step_final``, ``.tmp``) are left alone.
        Returns the folders deleted."""
        import shutil

        keep = self.config.train.keep_last
        if keep == 0 or self.rank != 0:
            return []
        candidates, _ = ckpt.checkpoint_candidates(self.output_dir / "checkpoints")
        if len(candidates) <= keep:
            return []
        kept = set(candidates[:keep])
        for path in candidates:
            if self._checkpoint_verifies(path):
                kept.add(path)
                break
        else:
            return []  # nothing verifies: delete nothing (a resume will say why)
        removed = []
        for path in candidates:
            if path not in kept:
                shutil.rmtree(path, ignore_errors=True)
                self._verified.discard(str(path))
                removed.append(path)
        return removed

    def _read_checkpoint(self, path: Path, inexact: bool) -> dict:
        """Read and verify ``path`` (no trainer state changes); CheckpointError says why not."""
        from stream_r1_fast.models.loading import check_state_dict

        data = ckpt.load_checkpoint(path, self.rank, require_rng=not inexact, required_weights=CHECKPOINT_WEIGHTS,
                                    required_state=("weighting", "exit_rng"),
                                    required_optimizers=("generator", "critic"))
        for name, model in (("generator", self.generator), ("critic", self.critic)):
            check_state_dict(model, data["weights"][name], source=str(path / f"{name}.safetensors"))
        ema, params = data["weights"]["generator_ema"], dict(self.generator.named_parameters())
        if set(ema) != set(params) or any(tuple(ema[n].shape) != tuple(p.shape) for n, p in params.items()):
            raise ckpt.CorruptCheckpoint(f"{path / 'generator_ema.safetensors'}: does not match the generator's "
                                         "parameters (names or shapes)")
        state = data["state"]
        try:  # on scratch generators: a bad state must not half-load
            random.Random().setstate(_py_unstate(state["exit_rng"]))
            random.Random().setstate(_py_unstate(state["host_rng"]["python"]))
            host = state["host_rng"]["numpy"]
            import numpy as np

            np.random.RandomState().set_state((host[0], np.asarray(host[1], dtype=np.uint32), *host[2:]))
        except (TypeError, ValueError, IndexError, OverflowError) as exc:
            raise ckpt.CorruptCheckpoint(f"{path / 'state.json'}: bad RNG state ({exc})") from None
        balance = getattr(self.weighting, "balance", None)
        if balance is not None:
            import copy

            try:
                copy.deepcopy(balance).load_state_dict(state["weighting"]["balance"])
            except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
                raise ckpt.CorruptCheckpoint(f"{path / 'state.json'}: bad 'weighting' state "
                                             f"({type(exc).__name__}: {exc})") from None
        return data

    def _apply(self, path: Path, data: dict) -> None:
        from stream_r1_fast.models.loading import CheckpointError

        try:
            self._apply_checkpoint(path, data)
        except Exception as exc:
            raise CheckpointError(f"{path} verified but could not be loaded into the trainer "
                                  f"({type(exc).__name__}: {exc})") from exc

    def _apply_checkpoint(self, path: Path, data: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, set_model_state_dict, set_optimizer_state_dict,
        )

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

    def _inexact(self, inexact: bool | None) -> bool:
        return bool(self.config.train.resume_inexact if inexact is None else inexact)

    def load(self, path: str | Path, *, inexact: bool | None = None) -> None:
        """Load checkpoint ``path`` after verifying it (raises CheckpointError naming the file
        if it fails). ``inexact`` (default ``train.resume_inexact``): accept a missing RNG file."""
        path = Path(path)
        data = self._read_checkpoint(path, self._inexact(inexact))
        if self.rank == 0:
            for note in data["notes"]:
                ckpt.warn(note)
        self._apply(path, data)

    def resume(self, *, inexact: bool | None = None) -> Path | None:
        """Load the newest checkpoint of the output folder that verifies, if any.

        Newer ones that fail verification (manifest size / sha256, unreadable files, a bad
        ``state.json``, a missing RNG file unless ``inexact`` / ``train.resume_inexact``) are
        skipped with a :class:`~stream_r1_fast.training.checkpoint.CheckpointWarning` naming the
        folder and the reason (also in ``self.resume_skipped``); folders that are not ``step_N``
        (``step_final``...) are ignored. Raises CheckpointError when checkpoints exist but none
        verifies (rather than silently starting over)."""
        from stream_r1_fast.models.loading import CheckpointError

        inexact = self._inexact(inexact)
        root = self.output_dir / "checkpoints"
        candidates, ignored = ckpt.checkpoint_candidates(root)
        if self.rank == 0:
            for p in ignored:
                ckpt.warn(f"ignoring {p}: not a checkpoint folder (step_N)")
        self.resume_skipped = []
        for path in candidates:
            reason = None
            try:
                data = self._read_checkpoint(path, inexact)
            except CheckpointError as exc:
                reason = str(exc)
            if _distributed():  # every rank must take the same checkpoint
                flag = torch.tensor([0.0 if reason is None else 1.0], device=self._flag_device())
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                if reason is None and float(flag) > 0:
                    reason = "it does not verify on every rank"
            if reason is not None:
                self.resume_skipped.append((path, reason))
                if self.rank == 0 or "every rank" not in reason:
                    ckpt.warn(f"skipping checkpoint {path}: {reason}; trying the previous one")
                continue
            if self.rank == 0:
                for note in data["notes"]:
                    ckpt.warn(note)
            self._apply(path, data)
            return path
        if candidates:
            why = "; ".join(f"{p.name}: {r}" for p, r in self.resume_skipped)
            raise CheckpointError(f"no checkpoint under {root} verifies ({why}); repair or move them away, "
                                  "or start fresh with --no-resume")
        return None

    # ------------------------------------------------------------------ the loop

    def _flag_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _truncate_metrics(self, step: int) -> None:
        """Drop the rows of ``metrics.csv`` with step >= ``step`` (a resumed run logs them
        again) and rows cut short by a kill; the header stays (a file with other columns is
        rewritten under today's, its values kept by column name). Atomic (temp file + rename)."""
        import os

        path = self.output_dir / "metrics.csv"
        if self.rank != 0 or not path.is_file():
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or "step" not in rows[0]:
            return
        header, col = rows[0], rows[0].index("step")
        keep = []
        for row in rows[1:]:
            try:
                if len(row) == len(header) and int(row[col]) < step:
                    keep.append(dict(zip(header, row)))
            except ValueError:
                pass
        if len(keep) == len(rows) - 1 and tuple(header) == CSV_COLUMNS:
            return
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore", restval="")
            writer.writeheader()
            writer.writerows(keep)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def write_run_config(self) -> Path | None:
        """Save the resolved config as ``<output_dir>/config.yaml`` (rank 0; atomically). When
        the folder already holds one that differs (a resume, or a new run in an old folder) in
        more than run-control keys (``RUN_CONTROL_KEYS``: steps, device, logging...), a
        :class:`~stream_r1_fast.training.config.ConfigWarning` lists the keys that differ."""
        import os
        import warnings

        if self.rank != 0:
            return None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "config.yaml"
        new = self.config.to_dict()
        if path.is_file():
            try:
                old = yaml_load(path.read_text(encoding="utf-8"))
            except Exception as exc:  # an unreadable earlier copy: say so, then replace it
                old = None
                warnings.warn(f"{path}: the earlier run's config is unreadable ({type(exc).__name__}); replacing it",
                              ConfigWarning, stacklevel=2)
            if isinstance(old, dict):
                diff = config_diff(old, new)
                if any(key not in RUN_CONTROL_KEYS for key, _, _ in diff):
                    what = "resuming at step {} with".format(self.step) if self.step else "starting with"
                    listed = "; ".join(f"{key}: {a!r} -> {b!r}" for key, a, b in diff)
                    warnings.warn(f"{what} a config that differs from the one saved in {path}: {listed} "
                                  "(the file now holds this run's)", ConfigWarning, stacklevel=2)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("# The resolved config of this run (file + overrides), written by stream-r1 train.\n"
                       + self.config.to_yaml(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def _open_logs(self) -> None:
        if self._csv is not None:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "metrics.csv"
        new = not path.exists() or path.stat().st_size == 0
        self._csv = open(path, "a", newline="")
        self._csv_writer = csv.DictWriter(self._csv, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new:
            self._csv_writer.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.output_dir / "tensorboard"))
        except ImportError:
            self._tb = None

    def _warn_once(self, key: str, message: str) -> None:
        import warnings

        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    @torch.no_grad()
    def sample(self, prompt: str | None = None, seed: int | None = None) -> torch.Tensor | None:
        """A full-denoising rollout of the *EMA* generator for ``prompt`` (default: the first
        training prompt), decoded: video [1, T, 3, H, W] in [0, 1], or None without a VAE. Runs
        on every rank (the generator may be sharded); the generator's weights and every RNG the
        training draws from are restored afterwards, so sampling does not change the run."""
        prompt = self.prompts[0] if prompt is None else prompt
        seed = self._sample_seed if seed is None else seed
        params = dict(self.generator.named_parameters())
        saved = {n: p.detach().clone() for n, p in params.items()}
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        try:
            for n, p in params.items():
                p.copy_(self.ema[n].to(p.dtype))
            gen = torch.Generator(device=self.device).manual_seed(int(seed))
            emb = self.text_encoder([prompt]).to(self.device)
            x = self._rollout([prompt], [gen], len(self.sampler.timesteps) - 1, emb)
            video = self._decode(x).float().clamp(0, 1).cpu() if self.vae is not None else None
        finally:
            for n, p in params.items():
                p.copy_(saved[n])
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        return video

    def _log_sample(self) -> None:
        """``train.sample_every``: a sample video of the EMA generator to TensorBoard (tag
        ``samples/ema``). TensorBoard encodes videos with moviepy (``moviepy.editor``, moviepy < 2);
        without it a one-time warning says so and the first, middle and last frames are logged
        as images (``samples/ema_frames``) instead."""
        import importlib

        every = self.config.train.sample_every
        if not every or self.step % every:
            return
        if self.vae is None:
            self._warn_once("sample-vae", "train.sample_every: no VAE to decode sample videos with; none are logged")
            return
        video = self.sample()
        if self.rank != 0:
            return
        self._open_logs()
        if self._tb is None:
            self._warn_once("sample-tb", "train.sample_every: TensorBoard is not installed; sample videos are not logged")
            return
        try:
            importlib.import_module("moviepy.editor")
            has_moviepy = True
        except Exception:  # not installed, or moviepy 2 (no moviepy.editor)
            has_moviepy = False
        if has_moviepy:
            self._tb.add_video("samples/ema", video, self.step, fps=SAMPLE_FPS)
        else:
            self._warn_once("sample-moviepy", "train.sample_every: TensorBoard's add_video needs moviepy < 2 "
                            "(pip install 'moviepy<2'); logging the first, middle and last frames of each sample "
                            "as images (samples/ema_frames) instead")
            frames = video[0, [0, video.shape[1] // 2, video.shape[1] - 1]]
            self._tb.add_images("samples/ema_frames", frames, self.step)
        self._tb.flush()

    def _postfix(self, logs: dict) -> dict[str, str]:
        """The progress bar's postfix: ``gen`` is the generator loss of this step when the
        generator was updated; on critic-only steps the last one, marked with its step
        (``0.123@5``); absent before the first generator update."""
        post = {"critic": f"{logs['critic_loss']:.4g}"}
        if "generator_loss" in logs:
            self._last_gen = (int(logs["step"]), float(logs["generator_loss"]))
            post["gen"] = f"{logs['generator_loss']:.4g}"
        elif self._last_gen is not None:
            post["gen"] = f"{self._last_gen[1]:.4g}@{self._last_gen[0]}"
        self.last_postfix = post
        return post

    def _log(self, logs: dict[str, float]) -> None:
        if self.rank != 0:
            return
        if self._csv is None:
            self._open_logs()
        self._csv_writer.writerow({k: logs.get(k, "") for k in CSV_COLUMNS})
        self._csv.flush()
        if self._tb is not None:
            for k, v in logs.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, int(logs["step"]))

    def _step_flags(self, logs: dict) -> tuple[bool, str | None]:
        """(a stop was requested on some rank, what diverged or None) — the same on every rank."""
        local = [float(self._stop_signal is not None), 0.0, 0.0]
        for i, model in ((1, self.generator), (2, self.critic)):
            finite = [torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all() for p in model.parameters()]
            local[i] = float(not bool(torch.stack(finite).all())) if finite else 0.0
        if _distributed():
            flags = torch.tensor(local, device=self._flag_device())
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            local = flags.tolist()
        checks = (
            (local[1] > 0, "the generator's weights are", "generator"),
            (not math.isfinite(logs.get("generator_loss", 0.0)), "generator_loss is", "generator"),
            (not math.isfinite(logs.get("grad_norm_generator", 0.0)), "the generator's gradient norm is", "generator"),
            (local[2] > 0, "the critic's weights are", "critic"),
            (not math.isfinite(logs.get("critic_loss", 0.0)), "critic_loss is", "critic"),
            (not math.isfinite(logs.get("grad_norm_critic", 0.0)), "the critic's gradient norm is", "critic"),
        )
        for bad, what, who in checks:
            if bad:
                return local[0] > 0, f"{what} not finite after training step {int(logs['step'])}; " \
                                     f"check {DIVERGENCE_HINTS[who]}"
        return local[0] > 0, None

    def _on_signal(self, signum, frame) -> None:
        import signal
        import sys

        if self._stop_signal is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop at once (the last checkpoint stays)
            return
        self._stop_signal = signum
        if self.rank == 0:
            print(f"\nstream-r1: {signal.Signals(signum).name} received: finishing step {self.step} and saving a "
                  "checkpoint (Ctrl-C again stops at once, without saving)", file=sys.stderr, flush=True)

    def fit(self, steps: int | None = None, on_step: Callable[[dict], None] | None = None) -> list[dict]:
        """Train until ``steps`` (default ``train.steps``) total steps; saves every
        ``save_every`` steps and at the end, keeping the newest ``train.keep_last``
        (:meth:`prune_checkpoints`). Returns this call's per-step logs. The resolved config is
        written to ``<output_dir>/config.yaml`` first (:meth:`write_run_config`); every
        ``train.sample_every`` steps a sample video goes to TensorBoard (:meth:`_log_sample`);
        ``metrics.csv`` and TensorBoard get the learning rates (``lr_generator``, ``lr_critic``).

        Rows of ``metrics.csv`` at or after the current step (left by an interrupted run) are
        dropped first. While it runs, SIGTERM / SIGINT (preemption, Ctrl-C) finish the current
        step, save a checkpoint and raise :class:`TrainingInterrupted` ("interrupted at step N;
        checkpoint saved to ..."); the previous handlers are restored on return. A NaN / inf
        loss, gradient norm or weight raises :class:`TrainingDiverged` naming the step and the
        config keys to check, before any checkpoint of the bad weights is written."""
        import signal
        import sys
        import threading

        from tqdm import tqdm

        cfg = self.config.train
        steps = cfg.steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {steps!r}")
        self._truncate_metrics(self.step)
        self.write_run_config()
        history = []
        self._stop_signal = None
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        bar = tqdm(total=steps, initial=self.step, desc=f"train {self.config.weighting.mode}", unit="step",
                   disable=not cfg.progress or self.rank != 0)
        try:
            while self.step < steps:
                logs = self.train_step()
                logs["lr_generator"] = float(self.g_opt.param_groups[0]["lr"])
                logs["lr_critic"] = float(self.c_opt.param_groups[0]["lr"])
                history.append(logs)
                stop, diverged = self._step_flags(logs)
                if self.step % cfg.log_every == 0 or self.step == steps or diverged:
                    self._log(logs)
                if diverged:
                    last = ckpt.latest_checkpoint(self.output_dir / "checkpoints")
                    raise TrainingDiverged(f"training diverged: {diverged}. Nothing was saved for this step; the "
                                           f"last checkpoint is {last or 'none'}", step=int(logs["step"]))
                bar.update(1)
                bar.set_postfix(self._postfix(logs))
                self._log_sample()
                if on_step is not None:
                    on_step(logs)
                path = None
                if self.step % cfg.save_every == 0 or self.step == steps:
                    path = self.save()
                if not _distributed():  # a signal during on_step / the save stops here too
                    stop = self._stop_signal is not None
                if stop and self.step < steps:
                    path = path or self.save()
                    signum = self._stop_signal or signal.SIGTERM
                    message = f"interrupted at step {self.step}; checkpoint saved to {path}"
                    if self.rank == 0:
                        print(f"stream-r1: {message}", file=sys.stderr, flush=True)
                    raise TrainingInterrupted(message, step=self.step, path=path, signum=int(signum))
        finally:
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)
            bar.close()
            if self._csv is not None:
                self._csv.close()
                self._csv = None
            if self._tb is not None:
                self._tb.close()
                self._tb = None
        return history


CHECKPOINT_WEIGHTS = ("generator", "generator_ema", "critic")
DIVERGENCE_HINTS = {"generator": "optim.lr_generator / dmd.guidance_scale (too large?)",
                    "critic": "optim.lr_critic (too large?), or a generator whose samples blew up "
                              "(optim.lr_generator / dmd.guidance_scale)"}


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM / SIGINT during :meth:`Trainer.fit`: the step finished and a checkpoint was saved."""

    def __init__(self, message: str, *, step: int, path: Path | None, signum: int):
        super().__init__(message)
        self.step, self.path, self.signum = step, path, signum

    def __str__(self) -> str:
        return self.args[0]


class TrainingDiverged(FloatingPointError):
    """A NaN / inf loss, gradient norm or weight; the message names the step and the config keys."""

    def __init__(self, message: str, *, step: int):
        super().__init__(message)
        self.step = step


def _py_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _py_unstate(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])


def build_trainer(config: TrainConfig) -> Trainer:
    """Models, text encoder, VAE and reward model as the config names them."""
    from diffusers import AutoencoderKLWan

    from stream_r1_fast.inference.text import PromptEncoder
    from stream_r1_fast.models import CausalWanTransformer, preset
    from stream_r1_fast.models.loading import load_transformer

    preflight(config)  # paths and reward.factory checked before any model loads
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
        reward = resolve_factory(config.reward.factory)(**config.reward.kwargs)
    return Trainer(config, generator=generator, teacher=teacher, critic=critic, text_encoder=encoder, vae=vae,
                   reward_model=reward, device=device)


__all__ = ["CSV_COLUMNS", "Trainer", "TrainingDiverged", "TrainingInterrupted", "build_trainer", "shard_model"]
