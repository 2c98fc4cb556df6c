"""Few-step flow-matching sampling of one chunk (Self-Forcing / Reward Forcing's schedule).

Noise level ``s = t / 1000``: ``x_t = (1 - s) x0 + s eps``; the model predicts ``v = eps - x0``,
so ``x0_hat = x_t - s v``. Denoising visits the timesteps of the step list (default
[1000, 750, 500, 250] warped with shift 5, ``t' = 5 t / (1 + 4 t)`` for t in [0, 1]: about
1000, 937.5, 833.3, 625); between steps ``x0_hat`` is re-noised to the next timestep with fresh
noise. After the last step the clean chunk is run once more at t = 0 (the context refresh) to
write its K/V into the cache: one chunk = len(steps) + 1 forwards.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def shift_timesteps(timesteps: Sequence[float], shift: float = 5.0) -> tuple[float, ...]:
    """Warp timesteps in [0, 1000]: ``t' = shift t / (1 + (shift - 1) t)`` on t / 1000."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    out = []
    for t in timesteps:
        s = float(t) / 1000.0
        out.append(1000.0 * shift * s / (1.0 + (shift - 1.0) * s))
    return tuple(out)


def randn(shape: Sequence[int], generator: Generators, *, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise [B, ...]. With one generator per sample, sample b depends only on
    generator b (a stream in a batch equals the same stream generated alone)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])


@dataclasses.dataclass(frozen=True)
class FlowMatchSampler:
    """The denoising timesteps (already warped, descending, in (0, 1000]); pure math, no weights."""

    timesteps: tuple[float, ...] = shift_timesteps((1000, 750, 500, 250), 5.0)

    def __post_init__(self):
        ts = tuple(float(t) for t in self.timesteps)
        if not ts:
            raise ValueError("the step list is empty")
        if any(not 0.0 < t <= 1000.0 for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
            raise ValueError(f"timesteps must be strictly decreasing values in (0, 1000], got {ts}")
        object.__setattr__(self, "timesteps", ts)

    @classmethod
    def from_steps(cls, steps: Sequence[float] = (1000, 750, 500, 250), shift: float = 5.0) -> "FlowMatchSampler":
        """Unwarped steps in [0, 1000] plus the shift (1.0: use the steps as they are)."""
        return cls(shift_timesteps(steps, shift))

    @staticmethod
    def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: float) -> torch.Tensor:
        s = t / 1000.0
        return (1.0 - s) * x0 + s * eps

    @staticmethod
    def predict_x0(x_t: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
        return x_t - (t / 1000.0) * v

    @property
    def forwards_per_chunk(self) -> int:
        return len(self.timesteps) + 1

    def draw_chunk_noise(self, shape: Sequence[int], generator: Generators, *, device) -> torch.Tensor:
        """All the noise one chunk needs, [len(timesteps), *shape] float32: the starting noise,
        then one re-noising draw per later step — the order the step loop consumes them, so the
        result equals drawing each just before its use. Drawn outside :meth:`denoise_chunk`
        because a ``torch.Generator`` cannot be traced (``torch.compile``) or captured."""
        return torch.stack([randn(shape, generator, device=device) for _ in self.timesteps])

    def time_contexts(self, model, batch: int, frames: int, device=None) -> list:
        """The model's :class:`~stream_r1_fast.models.TimeContext` of every step and of the
        refresh (t = 0): computed once per stream and reused by every chunk."""
        return [model.time_context(t, batch, frames, device) for t in (*self.timesteps, 0.0)]

    @torch.no_grad()
    def denoise_chunk(self, model, noise: torch.Tensor, text, cache, times: Sequence | None = None) -> torch.Tensor:
        """One chunk's step: denoise from ``noise`` [len(timesteps), B, C, Fq, H, W]
        (:meth:`draw_chunk_noise`) against ``cache``, then refresh the cache with the clean
        chunk. ``times``: :meth:`time_contexts` (None: embed the timesteps on every forward).
        No random draws and no host synchronisation inside: the step compiles as one graph
        (``torch.compile(fullgraph=True)``). Returns x0 [B, C, Fq, H, W] in float32."""
        if noise.shape[0] != len(self.timesteps):
            raise ValueError(f"noise holds {noise.shape[0]} draws, the sampler takes {len(self.timesteps)} "
                             "(one per step: see draw_chunk_noise)")
        cache.begin_chunk()
        x_t = noise[0].float()
        last = len(self.timesteps) - 1
        for i, t in enumerate(self.timesteps):
            v = model.forward_chunk(x_t, t if times is None else times[i], text, cache).float()
            x0 = self.predict_x0(x_t, v, t)
            if i < last:
                x_t = self.add_noise(x0, noise[i + 1], self.timesteps[i + 1])
        model.forward_chunk(x0, 0.0 if times is None else times[-1], text, cache, update_cache=True)
        return x0

    def sample_chunk(self, model, noise: torch.Tensor, text, cache, generator: Generators = None) -> torch.Tensor:
        """:meth:`denoise_chunk` from the starting ``noise`` [B, C, Fq, H, W], with the
        re-noising draws taken from ``generator``. Returns x0 [B, C, Fq, H, W] in float32."""
        later = [randn(noise.shape, generator, device=noise.device) for _ in self.timesteps[1:]]
        return self.denoise_chunk(model, torch.stack([noise.float(), *later]), text, cache)
