"""The DMD training loop: Self-Forcing rollouts of the causal student, a frozen teacher with
CFG, a trainable critic, and the reward weighting (``dmd`` / ``re_dmd`` / ``stream_r1``).

One :meth:`Trainer.train_step` = (student update if ``step % optim.generator_every == 0``) +
one critic update, each over ``grad_accum`` micro-batches of ``batch_size`` prompts per rank.
Randomness is drawn per *global sample* from ``torch.Generator`` RNGs seeded by (seed, step,
micro-batch, sample index), so a run on N ranks sees the same samples as one process with the
same global batch, and a resumed run the same as an uninterrupted one.

Under ``torchrun`` the student, critic and teacher are sharded with FSDP2 (``fully_shard``,
see :func:`~stream_r1_fast.training.sharding.shard_model`): each transformer block is a unit of
its own, so parameters are gathered block by block; gradients are averaged over ranks.

The Trainer's other jobs are mixins of their own modules: checkpoints
(:mod:`~stream_r1_fast.training.trainer_state`), the run log
(:mod:`~stream_r1_fast.training.metrics`), stop and divergence checks
(:mod:`~stream_r1_fast.training.guards`). Building one from a config:
:func:`stream_r1_fast.training.build.build_trainer`.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist

import stream_r1_fast.training.checkpoint as ckpt
from stream_r1_fast.inference.sampler import FlowMatchSampler, randn
from stream_r1_fast.inference.vae import StreamingVAEDecoder, codec_factors
from stream_r1_fast.training.config import TrainConfig
from stream_r1_fast.training.dmd import critic_loss, dmd_gradient, dmd_loss, sample_timesteps
from stream_r1_fast.training.guards import GuardMixin, TrainingDiverged, TrainingInterrupted
from stream_r1_fast.training.metrics import CSV_COLUMNS, RunLogMixin
from stream_r1_fast.training.rollout import draw_exit_step, self_forcing_rollout, training_cache_policy
from stream_r1_fast.training.sharding import distributed, full_tensor, global_mean, shard_model
from stream_r1_fast.training.trainer_state import CheckpointMixin
from stream_r1_fast.training.weighting import Weighting


class Trainer(CheckpointMixin, RunLogMixin, GuardMixin):
    """DMD distillation of ``student`` (a CausalWanTransformer).

    Args:
        config: the run's :class:`TrainConfig`.
        student, teacher, critic: CausalWanTransformers (teacher frozen; critic trainable,
            usually a copy of the student's or the teacher's initial weights).
        text_encoder: ``prompts -> embeddings [B, L, text_dim]`` (a PromptEncoder).
        vae: diffusers ``AutoencoderKLWan`` for decoding rollouts (needed by reward modes), or any
            codec with ``temporal_factor``, ``spatial_factor`` and ``streaming_decoder()``.
        reward_model: a :class:`~stream_r1_fast.rewards.RewardModel` (needed by reward modes).
        prompts: the training prompts (default: the config's ``data.prompts``).

    ``student_opt`` / ``critic_opt`` are their AdamW optimisers, ``ema`` the student's EMA.
    """

    def __init__(self, config: TrainConfig, *, student, teacher, critic, text_encoder: Callable,
                 vae=None, reward_model=None, prompts: Sequence[str] | None = None, device=None):
        self.config = cfg = config
        self.device = torch.device(device or cfg.train.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.rank = dist.get_rank() if distributed() else 0
        self.world = dist.get_world_size() if distributed() else 1
        self.text_encoder = text_encoder
        self.vae = vae
        self.student = student.to(self.device).train()
        self.critic = critic.to(self.device).train()
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        if cfg.train.gradient_checkpointing:
            for m in (self.student, self.critic):
                m.enable_gradient_checkpointing()
        if self.world > 1:
            # Every model frees each block's gathered parameters after its forward (the frozen
            # teacher never needs them again; the rollout's many forwards re-gather per block).
            for m in (self.student, self.critic, self.teacher):
                shard_model(m, param_dtype=self._compute_dtype(), reshard_after_forward=True)
        o = cfg.optim
        self.student_opt = torch.optim.AdamW(self.student.parameters(), lr=o.lr_generator, betas=tuple(o.betas),
                                             weight_decay=o.weight_decay)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=o.lr_critic, betas=tuple(o.betas),
                                            weight_decay=o.weight_decay)
        self.ema = {n: p.detach().float().clone() for n, p in self.student.named_parameters()}
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
        self._last_student: tuple[int, float] | None = None  # (step, generator_loss) of the last student update
        self.last_postfix: dict[str, str] = {}
        self._verified: set[str] = set()  # checkpoints whose manifest verified (the retention's check)
        self._warned: set[str] = set()
        self._sample_seed = cfg.train.seed
        if prompts:
            self.prompts = list(prompts)
        else:  # the config's: a prompt file's first line may carry the seed of the sample videos
            entries = cfg.prompt_entries()
            self.prompts = [e.text for e in entries]
            if entries[0].seed is not None:
                self._sample_seed = entries[0].seed

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
        """This rank's prompts and per-sample RNGs (``torch.Generator``) for (step, micro-batch, purpose)."""
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
            text = self.student.encode_text(emb)
            return self_forcing_rollout(
                self.student, text, num_chunks=r.num_chunks, chunk_frames=r.chunk_frames,
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
        return float(full_tensor(norm))

    @torch.no_grad()
    def _update_ema(self) -> None:
        o = self.config.optim
        decay = o.ema_decay if self.step >= o.ema_start else 0.0
        for n, p in self.student.named_parameters():
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
            self.student_opt.zero_grad(set_to_none=True)
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
            logs["grad_norm_generator"] = self._clip(self.student)
            self.student_opt.step()
            self._update_ema()
            logs["generator_loss"] = global_mean(torch.as_tensor(total))
            for key in ("reward_VQ", "reward_MQ", "reward_TA", "w_inter", "balance_penalty"):
                vals = [w[key].double().flatten().cpu() for w in wlogs_all if key in w]
                if vals:
                    logs[key] = global_mean(torch.cat(vals).mean())

        # The critic learns the student's current distribution: after a student update
        # that is a fresh rollout of the updated student (own noise, own exit step), unless
        # the recipe reuses the pre-update samples (dmd.critic_samples).
        reuse = bool(samples) and cfg.dmd.critic_samples == "reuse"
        if samples and not reuse:
            k = draw_exit_step(len(self.sampler.timesteps), self.exit_rng, self.device)
        logs["critic_exit_step"] = k
        self.critic_opt.zero_grad(set_to_none=True)
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
        self.critic_opt.step()
        logs["critic_loss"] = global_mean(torch.as_tensor(total))
        self.step += 1
        logs["seconds"] = time.perf_counter() - t0
        return logs


    @torch.no_grad()
    def sample(self, prompt: str | None = None, seed: int | None = None) -> torch.Tensor | None:
        """A full-denoising rollout of the *EMA* student for ``prompt`` (default: the first
        training prompt), decoded: video [1, T, 3, H, W] in [0, 1], or None without a VAE. Runs
        on every rank (the student may be sharded); the student's weights and every RNG the
        training draws from are restored afterwards, so sampling does not change the run."""
        prompt = self.prompts[0] if prompt is None else prompt
        seed = self._sample_seed if seed is None else seed
        params = dict(self.student.named_parameters())
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
                logs["lr_generator"] = float(self.student_opt.param_groups[0]["lr"])
                logs["lr_critic"] = float(self.critic_opt.param_groups[0]["lr"])
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
                if not distributed():  # a signal during on_step / the save stops here too
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


__all__ = ["CSV_COLUMNS", "Trainer", "TrainingDiverged", "TrainingInterrupted", "shard_model"]
