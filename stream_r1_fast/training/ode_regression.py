"""ODE-regression initialisation of a causal student (the CausVid / Self-Forcing technique).

A bidirectional teacher integrates its probability-flow ODE from noise to a clean clip on a
grid that contains the student's few timesteps (:func:`ode_grid`); the states it passes at
those timesteps and the clip it ends at are training pairs (:func:`teacher_ode_pairs`). The
student learns ``x0 = f(x_t, t)`` on them *as it will be used* (:func:`ode_regression_loss`):
chunk by chunk through ``forward_chunk`` against its own KV cache, the cache refreshed with the
teacher's clean chunks (teacher forcing), each sample's chunk at its own student timestep. The
chunk step is inference's :func:`~stream_r1_fast.inference.sampler.denoise_chunk` with one
per-sample timestep.

Nothing here is tied to a model size or a recipe: the caller passes the chunk shape, the
teacher and the student.
"""

from __future__ import annotations

from typing import Sequence

import torch

from stream_r1_fast.cache import CachePolicy, resolve_cache_impl
from stream_r1_fast.inference.sampler import denoise_chunk
from stream_r1_fast.scheduling import euler_step, shift_timesteps


def ode_grid(student_timesteps: Sequence[float], steps: int = 24, shift: float = 3.0) -> list[float]:
    """The teacher's Euler grid (``steps`` steps warped by ``shift``, 1000 -> 0) with the student's
    timesteps inserted: descending, starting at 1000, ending at 0, no duplicates."""
    # float64: a float32 linspace puts teacher points ~1e-5 off (937.499991 beside the student's 937.5).
    teacher = shift_timesteps(torch.linspace(1000, 0, steps + 1, dtype=torch.float64).tolist(), shift)
    grid = set(round(t, 6) for t in teacher)
    grid.update(round(float(t), 6) for t in student_timesteps)
    grid.update((1000.0, 0.0))
    return sorted(grid, reverse=True)


@torch.no_grad()
def teacher_ode_pairs(teacher, text, uncond_text, noise: torch.Tensor, *, student_timesteps: Sequence[float],
                      steps: int = 24, shift: float = 3.0, cfg: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate the teacher's ODE from ``noise`` [B, C, F, h, w] (``x_1000``) over :func:`ode_grid`.

    Returns ``(states, x0)``: ``states`` [S, B, C, F, h, w], the ODE's state at each of the S
    student timesteps (in their order), and ``x0`` [B, C, F, h, w] the clean end (float32).
    ``teacher(x, t, text).sample`` is the velocity; ``text`` / ``uncond_text``: its
    conditioning (``uncond_text`` unused at ``cfg`` 1, else ``v = v_u + cfg (v_c - v_u)``).
    """
    grid = ode_grid(student_timesteps, steps, shift)
    wanted = {round(float(t), 6): i for i, t in enumerate(student_timesteps)}
    states: list[torch.Tensor | None] = [None] * len(wanted)
    x = noise.float()
    for t, t_next in zip(grid[:-1], grid[1:]):
        if t in wanted:
            states[wanted[t]] = x.clone()
        v = teacher(x, t, text).sample.float()
        if cfg != 1.0:
            v_u = teacher(x, t, uncond_text).sample.float()
            v = v_u + cfg * (v - v_u)
        x = euler_step(x, v, t, t_next)
    return torch.stack(states), x


def ode_regression_loss(student, text, states: torch.Tensor, x0: torch.Tensor, step_index: torch.Tensor, *,
                        timesteps: Sequence[float], chunk_frames: int, policy: CachePolicy = CachePolicy(),
                        cache_impl="fused") -> torch.Tensor:
    """Mean squared error of the student's streamed ``x0`` predictions on ODE pairs.

    Args:
        student: a CausalWanTransformer.
        text: the student's conditioning for the batch (a TextContext or embeddings).
        states: [S, B, C, F, h, w] ODE states at the S student ``timesteps``; x0: [B, C, F, h, w].
        step_index: long [B, F // chunk_frames], which student timestep each chunk is shown at.
        chunk_frames: latent frames per chunk (the student's streaming chunk).
        policy, cache_impl: the student's KV cache (as :func:`~stream_r1_fast.cache.resolve_cache_impl`).
    Chunk c is predicted against a cache holding the teacher's clean chunks before it (written
    by the refresh forward, as at inference), so the loss of a chunk reaches the parameters
    only through that chunk's own forward.
    """
    s, b, _, f, h, w = states.shape
    if f % chunk_frames:
        raise ValueError(f"{f} latent frames do not split into chunks of {chunk_frames}")
    if step_index.shape != (b, f // chunk_frames):
        raise ValueError(f"step_index must be [{b}, {f // chunk_frames}], got {list(step_index.shape)}")
    ts = torch.tensor([float(t) for t in timesteps], device=states.device)
    param = next(student.parameters())
    cache = resolve_cache_impl(cache_impl).for_model(student, b, h, w, policy, chunk_frames=chunk_frames,
                                                     dtype=param.dtype, device=param.device)
    rows = torch.arange(b, device=states.device)
    total = 0.0
    for c in range(f // chunk_frames):
        frames = slice(c * chunk_frames, (c + 1) * chunk_frames)
        idx = step_index[:, c]
        clean = x0[:, :, frames]
        pred = denoise_chunk(student, text, cache, states[idx, rows][:, :, frames], [ts[idx]],
                             refresh_with=clean.to(param.dtype))
        total = total + ((pred - clean) ** 2).mean()
    return total / (f // chunk_frames)


__all__ = ["ode_grid", "ode_regression_loss", "teacher_ode_pairs"]
