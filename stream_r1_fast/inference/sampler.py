"""Few-step flow-matching sampling of one chunk (Self-Forcing / Reward Forcing's schedule), and
the one chunk step (:func:`denoise_chunk`) that inference, the Self-Forcing rollout and ODE
regression all run.

The math is :mod:`stream_r1_fast.scheduling`'s (``s = t / 1000``, ``x_t = (1 - s) x0 + s eps``,
the model predicts ``v = eps - x0``, ``x0_hat = x_t - s v``). Denoising visits the timesteps
of the step list (default [1000, 750, 500, 250] warped with shift 5, ``t' = 5 t / (1 + 4 t)``
for t in [0, 1]: about 1000, 937.5, 833.3, 625); between steps ``x0_hat`` is re-noised to the
next timestep with fresh noise. After the last step the clean chunk is run once more at t = 0
(the context refresh) to write its K/V into the cache: one chunk = len(steps) + 1 forwards.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from stream_r1_fast.scheduling import add_noise, predict_x0, shift_timesteps

Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generators, *, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise [B, ...]. With one generator per sample, sample b depends only on
    generator b (a stream in a batch equals the same stream generated alone)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])


def denoise_chunk(model, text, cache, x_t: torch.Tensor, timesteps: Sequence, *, noise: Sequence = (),
                  times: Sequence | None = None, refresh_with: torch.Tensor | None = None) -> torch.Tensor:
    """One chunk: denoise ``x_t`` [B, C, Fq, H, W] against ``cache``, then refresh the cache.

    ``timesteps``: the steps visited, in order, each a float or a per-sample tensor [B];
    ``x_t`` is the state at the first. Every step but the last runs without grad and
    re-noises its ``x0_hat`` to the next step with ``noise[i]`` (``len(timesteps) - 1``
    draws, like x_t). The last step is the chunk's output, and carries the gradient when grad
    is enabled: it then attends to a copy of the cache (:meth:`snapshot`), since the refresh
    updates the live cache in place. The refresh (no grad) runs ``refresh_with`` (default: the
    detached output; ODE regression passes the teacher's clean chunk) at t = 0 with
    ``update_cache=True``. ``times``: the model's time contexts of the steps and of the refresh
    (``len(timesteps) + 1``; None: each forward embeds its timestep).

    Inference calls this under ``torch.no_grad``: no random draws, no host synchronisation,
    so the step compiles as one graph (``torch.compile(fullgraph=True)``).
    Returns ``x0_hat`` [B, C, Fq, H, W] in float32.
    """
    last = len(timesteps) - 1
    if len(noise) < last:
        raise ValueError(f"{len(noise)} re-noising draws for {len(timesteps)} steps (one per step after the first)")

    def x0_at(i: int, x: torch.Tensor, kv) -> torch.Tensor:
        t = timesteps[i]
        return predict_x0(x, model.forward_chunk(x, t if times is None else times[i], text, kv).float(), t)

    cache.begin_chunk()
    with torch.no_grad():
        for i in range(last):
            x_t = add_noise(x0_at(i, x_t, cache), noise[i], timesteps[i + 1])
    x0 = x0_at(last, x_t, cache.snapshot() if torch.is_grad_enabled() else cache)
    with torch.no_grad():
        clean = x0.detach() if refresh_with is None else refresh_with
        model.forward_chunk(clean, 0.0 if times is None else times[-1], text, cache, update_cache=True)
    return x0


@dataclasses.dataclass(frozen=True)
class FlowMatchSampler:
    """The denoising timesteps (already warped, descending, in (0, 1000]); no weights."""

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

    #: :func:`stream_r1_fast.scheduling.add_noise` / :func:`~stream_r1_fast.scheduling.predict_x0`.
    add_noise = staticmethod(add_noise)
    predict_x0 = staticmethod(predict_x0)

    @property
    def forwards_per_chunk(self) -> int:
        return len(self.timesteps) + 1

    def draw_chunk_noise(self, shape: Sequence[int], generator: Generators, *, device,
                         steps: int | None = None) -> torch.Tensor:
        """The noise one chunk needs, [steps, *shape] float32 (default: every step): the
        starting noise, then one re-noising draw per later step — the order the step loop
        consumes them, so the result equals drawing each just before its use. Drawn outside
        :meth:`denoise_chunk` because a ``torch.Generator`` cannot be traced (``torch.compile``)
        or captured. ``steps`` < len(timesteps): a chunk that exits early (the rollout)."""
        n = len(self.timesteps) if steps is None else steps
        return torch.stack([randn(shape, generator, device=device) for _ in range(n)])

    def time_contexts(self, model, batch: int, frames: int, device=None) -> list:
        """The model's :class:`~stream_r1_fast.models.TimeContext` of every step and of the
        refresh (t = 0): computed once per stream and reused by every chunk."""
        return [model.time_context(t, batch, frames, device) for t in (*self.timesteps, 0.0)]

    @torch.no_grad()
    def denoise_chunk(self, model, noise: torch.Tensor, text, cache, times: Sequence | None = None) -> torch.Tensor:
        """Inference's chunk step (:func:`denoise_chunk` over every timestep, no grad): from
        ``noise`` [len(timesteps), B, C, Fq, H, W] (:meth:`draw_chunk_noise`) against
        ``cache``, then refresh the cache with the clean chunk. ``times``: :meth:`time_contexts`
        (None: embed the timesteps on every forward). Returns x0 [B, C, Fq, H, W] in float32."""
        if noise.shape[0] != len(self.timesteps):
            raise ValueError(f"noise holds {noise.shape[0]} draws, the sampler takes {len(self.timesteps)} "
                             "(one per step: see draw_chunk_noise)")
        return denoise_chunk(model, text, cache, noise[0].float(), self.timesteps, noise=noise[1:], times=times)

    def sample_chunk(self, model, noise: torch.Tensor, text, cache, generator: Generators = None) -> torch.Tensor:
        """:meth:`denoise_chunk` from the starting ``noise`` [B, C, Fq, H, W], with the
        re-noising draws taken from ``generator``. Returns x0 [B, C, Fq, H, W] in float32."""
        later = [randn(noise.shape, generator, device=noise.device) for _ in self.timesteps[1:]]
        return self.denoise_chunk(model, torch.stack([noise.float(), *later]), text, cache)


__all__ = ["FlowMatchSampler", "Generators", "denoise_chunk", "randn", "shift_timesteps"]
