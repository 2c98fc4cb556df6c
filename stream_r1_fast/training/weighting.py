"""Reward weights of the DMD loss: ``dmd`` (none), ``re_dmd`` (Reward Forcing) and
``stream_r1`` (Inter-Reliability x Intra-Perplexity with the adaptive balance); formulas and
defaults in docs/method.md.

A weighting turns a decoded rollout into loss weights ``W`` [B, 1, F, h, w] (broadcast over
latent channels) that :func:`stream_r1_fast.training.dmd.dmd_loss` multiplies in:
``L = 0.5 * mean(W * (x - sg(x - g))^2)`` = ``0.5 * mean_b W_inter[b] * mean(W_intra[b] * ...)``.
The reward pass and the saliency backward run on a detached copy of the decoded video, so
they never touch the student's graph; every weight is a constant.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import deque
from typing import Sequence

import torch

from stream_r1_fast.inference.vae import WAN_VAE_FACTORS
from stream_r1_fast.ops.saliency import axis_weights_from_rewards, saliency_weights
from stream_r1_fast.rewards.base import AXES, RewardModel

MODES = ("dmd", "re_dmd", "stream_r1")


@dataclasses.dataclass
class WeightingConfig:
    """Every knob of the reward weighting (defaults: the papers').

    mode: ``dmd`` | ``re_dmd`` | ``stream_r1``. beta: ``W_inter = exp(beta * r)``.
    balance_lambda, balance_window, balance_warmup, balance_min_per_axis: the adaptive balance.
    temperature: axis weights ``softmax(-r / T)``. saliency_mode: ``vae`` | ``trilinear``.
    tau_floor, sigma_floor, gamma_t, gamma_s: see :func:`~stream_r1_fast.ops.saliency_weights`.
    """

    mode: str = "dmd"
    beta: float = 2.0
    balance_lambda: float = 0.5
    balance_window: int = 50
    balance_warmup: int = 50
    balance_min_per_axis: int = 4
    temperature: float = 1.0
    saliency_mode: str = "vae"
    tau_floor: float = 0.2
    sigma_floor: float = 0.15
    gamma_t: float = 1.0
    gamma_s: float = 1.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"weighting.mode must be one of {MODES}, got {self.mode!r}")
        if self.saliency_mode not in ("vae", "trilinear"):
            raise ValueError(f"weighting.saliency_mode must be 'vae' or 'trilinear', got {self.saliency_mode!r}")
        if not self.temperature > 0:
            raise ValueError(f"weighting.temperature must be > 0, got {self.temperature}")
        for name in ("balance_window", "balance_warmup", "balance_min_per_axis"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "balance_window" else 0):
                raise ValueError(f"weighting.{name} must be an int >= {2 if name == 'balance_window' else 0}, got {v!r}")
        for name in ("tau_floor", "sigma_floor", "gamma_t", "gamma_s"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"weighting.{name} must be in [0, 1], got {getattr(self, name)!r}")


class AdaptiveBalance:
    """Stream-R1's adaptive balance over the last ``window`` optimisation steps.

    Per axis (VQ, MQ, TA) the history holds one entry per step: the mean of that step's finite
    normalised rewards over the global batch (every rank sees the same rows, so every rank
    computes the same P, on any number of ranks). Once ``warmup`` steps were recorded and every
    axis holds ``>= min_per_axis`` entries (at least 2):
    ``delta_k = mean(newer half) - mean(older half)`` (an odd count gives the extra entry to the
    newer half), ``P = std(delta_VQ, delta_MQ, delta_TA)`` with the unbiased (n - 1) estimator,
    as the official code's ``torch.Tensor.std``; before that P = 0. ``r = mean_k r_k - lambda * P``.
    The current step's entry is recorded before P is computed (the official order).

    Under gradient accumulation a step calls :meth:`record` once per micro-batch with the same
    ``step``: the step's entry is then the running mean of its micro-batches so far (complete
    after the last one). State is plain lists / numbers: :meth:`state_dict` is JSON-able.
    See docs/method.md ("Adaptive balance").
    """

    def __init__(self, window: int = 50, warmup: int = 50, min_per_axis: int = 4, lam: float = 0.5, axes: int = 3):
        self.window, self.warmup, self.min_per_axis, self.lam = window, warmup, min_per_axis, lam
        self.history = [deque(maxlen=window) for _ in range(axes)]
        self.steps = 0
        # The current step: its id, and per axis the sum / count of its finite rewards so far.
        self._step_id: int | None = None
        self._sums = [0.0] * axes
        self._counts = [0] * axes

    def record(self, normalized: torch.Tensor, step: int | None = None) -> None:
        """Add the normalised rewards [N, A] of (one micro-batch of) optimisation step ``step``
        (``None``: every call is a step of its own). Non-finite values are left out."""
        if step is None or step != self._step_id:
            self.steps += 1
            self._step_id = step
            self._sums = [0.0] * len(self.history)
            self._counts = [0] * len(self.history)
        for row in normalized.detach().double().cpu().tolist():
            for axis, value in enumerate(row):
                if math.isfinite(value):
                    if self._counts[axis] == 0:
                        self.history[axis].append(0.0)  # this step's entry, filled in below
                    self._sums[axis] += value
                    self._counts[axis] += 1
        for axis, h in enumerate(self.history):
            if self._counts[axis]:
                h[-1] = self._sums[axis] / self._counts[axis]

    def penalty(self) -> float:
        """P (0 during warm-up)."""
        if self.steps < self.warmup or any(len(h) < max(self.min_per_axis, 2) for h in self.history):
            return 0.0
        deltas = []
        for h in self.history:
            vals = list(h)
            half = len(vals) // 2
            deltas.append(sum(vals[half:]) / (len(vals) - half) - sum(vals[:half]) / half)
        mean = sum(deltas) / len(deltas)
        return math.sqrt(sum((d - mean) ** 2 for d in deltas) / (len(deltas) - 1))

    def combined(self, normalized: torch.Tensor) -> torch.Tensor:
        """``mean_k r_k - lambda * P`` per sample: [B, A] -> [B] (float64)."""
        return normalized.detach().double().mean(-1) - self.lam * self.penalty()

    def state_dict(self) -> dict:
        return {"history": [list(h) for h in self.history], "steps": self.steps, "step_id": self._step_id,
                "sums": list(self._sums), "counts": list(self._counts)}

    def load_state_dict(self, state: dict) -> None:
        if len(state["history"]) != len(self.history):
            raise ValueError(f"balance state has {len(state['history'])} axes, expected {len(self.history)}")
        for h, vals in zip(self.history, state["history"]):
            h.clear()
            h.extend(float(v) for v in vals)
        axes = len(self.history)
        # Checkpoints written before the history counted steps hold "entries" (samples) instead.
        self.steps = int(state.get("steps", state.get("entries", 0)))
        self._step_id = state.get("step_id")
        self._sums = [float(v) for v in state.get("sums", [0.0] * axes)]
        self._counts = [int(v) for v in state.get("counts", [0] * axes)]


def finite_weight(w: torch.Tensor, what: str) -> torch.Tensor:
    """Non-finite per-sample weights -> 1, with a warning."""
    bad = ~torch.isfinite(w)
    if bool(bad.any()):
        warnings.warn(f"{what}: non-finite reward for samples {bad.nonzero().flatten().tolist()}; using weight 1",
                      RuntimeWarning, stacklevel=3)
        w = torch.where(bad, torch.ones_like(w), w)
    return w


def reward_saliency(reward_model: RewardModel, video: torch.Tensor, prompts: Sequence[str]):
    """Rewards of ``video`` [B, T, 3, H, W] in [0, 1] and their pixel gradients.

    Runs on a detached copy that requires grad, with ``torch.autograd.grad`` (the caller's
    graph and every parameter's ``.grad`` stay untouched). Returns ``(RewardOutput detached,
    grads [A, B, T, 3, H, W])``; ``grads`` of a non-finite reward are zero.
    """
    pixels = video.detach().float().requires_grad_(True)
    with torch.enable_grad():
        out = reward_model.rewards(pixels, prompts)
        grads = []
        for axis in range(len(AXES)):
            raw = out.raw[:, axis]
            # Sum over the batch: sample b's reward depends on sample b's pixels only.
            (g,) = torch.autograd.grad(torch.nan_to_num(raw).sum(), pixels, retain_graph=axis < len(AXES) - 1,
                                       allow_unused=True)
            g = torch.zeros_like(pixels) if g is None else g
            finite = torch.isfinite(raw).view(-1, 1, 1, 1, 1)
            grads.append(torch.where(finite, torch.nan_to_num(g), torch.zeros_like(g)))
    out = type(out)(out.raw.detach(), out.normalized.detach())
    return out, torch.stack(grads).contiguous()


class Weighting:
    """Computes the loss weights of one student step (and owns the balance history)."""

    def __init__(self, config: WeightingConfig, reward_model: RewardModel | None = None,
                 vae_factors: tuple[int, int] = WAN_VAE_FACTORS):
        if config.mode != "dmd" and reward_model is None:
            raise ValueError(f"weighting mode {config.mode!r} needs a reward model")
        self.config = config
        self.reward_model = reward_model
        self.temporal_factor, self.spatial_factor = vae_factors
        self.balance = AdaptiveBalance(config.balance_window, config.balance_warmup,
                                       config.balance_min_per_axis, config.balance_lambda)

    def __call__(self, video: torch.Tensor | None, prompts: Sequence[str], latent_shape: Sequence[int],
                 step: int | None = None) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """video [B, T, 3, H, W] in [0, 1] (decoded rollout; ignored by ``dmd``), latent shape
        [B, C, F, h, w] -> (weights [B, 1, F, h, w] float64 or None for ``dmd``, logs).
        ``step``: the optimisation step (micro-batches of one step share it; see
        :class:`AdaptiveBalance`)."""
        cfg = self.config
        if cfg.mode == "dmd":
            return None, {}
        b, _, f, h, w = latent_shape
        if cfg.mode == "re_dmd":
            with torch.no_grad():
                out = self.reward_model.rewards(video.detach().float(), prompts)
            r = out.normalized.detach().double()
            w_inter = finite_weight(torch.exp(cfg.beta * r[:, AXES.index("MQ")]), "re_dmd")
            logs = _reward_logs(out) | {"w_inter": w_inter}
            return w_inter.view(b, 1, 1, 1, 1).expand(b, 1, f, h, w), logs

        out, grads = reward_saliency(self.reward_model, video, prompts)
        r_axes = out.normalized.double()
        # Every rank keeps the same history: the whole global batch's rewards.
        self.balance.record(_all_ranks(r_axes), step)
        r = self.balance.combined(r_axes)
        w_inter = finite_weight(torch.exp(cfg.beta * r), "stream_r1")
        axis_w = axis_weights_from_rewards(r_axes.float(), cfg.temperature)
        axis_w = torch.where(torch.isfinite(axis_w).all(-1, keepdim=True), axis_w, torch.full_like(axis_w, 1 / 3))
        w_intra, tau, _ = saliency_weights(
            grads, axis_w.to(grads.device), mode=cfg.saliency_mode, temporal_factor=self.temporal_factor,
            spatial_factor=self.spatial_factor, tau_floor=cfg.tau_floor, sigma_floor=cfg.sigma_floor,
            gamma_t=cfg.gamma_t, gamma_s=cfg.gamma_s,
        )
        if tuple(w_intra.shape) != (b, f, h, w):
            raise ValueError(f"saliency weights have shape {tuple(w_intra.shape)}, the latents' grid is {(b, f, h, w)}"
                             " (check the VAE factors)")
        w_intra = w_intra.double().to(video.device)
        logs = _reward_logs(out) | {"w_inter": w_inter, "balance_penalty": torch.tensor(self.balance.penalty()),
                                    "w_intra_max": w_intra.flatten(1).amax(1), "tau_max": tau.amax(1)}
        return (w_inter.to(w_intra).view(b, 1, 1, 1) * w_intra).unsqueeze(1), logs

    def state_dict(self) -> dict:
        return {"balance": self.balance.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.balance.load_state_dict(state["balance"])


def _all_ranks(x: torch.Tensor) -> torch.Tensor:
    """All ranks' [b, ...] rows concatenated in rank order (x itself on one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    dev = x.device if dist.get_backend() == "nccl" else "cpu"
    parts = [torch.empty_like(x, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.to(dev).contiguous())
    return torch.cat(parts)


def _reward_logs(out) -> dict[str, torch.Tensor]:
    return {f"reward_{a}": out.normalized[:, i].detach() for i, a in enumerate(AXES)}
