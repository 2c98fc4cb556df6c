"""Flow-matching schedule math: pure functions of floats and tensors (no model, no RNG).

The conventions are those of diffusers' flow-matching Euler scheduler
(``FlowMatchEulerDiscreteScheduler``) with 1000 training timesteps: a timestep ``t`` in
[0, 1000] has the noise level ``sigma = t / 1000``; the noised latents are
``x_t = (1 - sigma) x0 + sigma eps`` (diffusers' ``scale_noise``); the model predicts the
velocity ``v = eps - x0``, so ``x0_hat = x_t - sigma v``, and an Euler step of the
probability-flow ODE from ``t`` to ``t_next`` is ``x + (sigma_next - sigma) v``. The timestep
shift is diffusers' static ``shift``: ``sigma' = shift sigma / (1 + (shift - 1) sigma)``.

Every function takes ``t`` as a Python float (one timestep for the whole batch) or as a tensor
``[B]`` (one per sample), broadcast over latents ``[B, C, F, H, W]`` (any rank). Used by the
few-step sampler (:mod:`stream_r1_fast.inference.sampler`), the DMD losses
(:mod:`stream_r1_fast.training.dmd`), ODE regression and the toy teacher's sampler. This
module lives at the package root because inference and training both use it and neither
should import the other's package for six lines of arithmetic.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

#: Timesteps run over [0, NUM_TRAIN_TIMESTEPS]; sigma = t / NUM_TRAIN_TIMESTEPS.
NUM_TRAIN_TIMESTEPS = 1000.0

Timestep = Union[float, torch.Tensor]


def sigma(t: Timestep, like: torch.Tensor | None = None) -> Timestep:
    """The noise level ``t / 1000``. A tensor ``t`` [B] is reshaped to [B, 1, ...] against
    ``like`` (and cast to its dtype) so that it broadcasts per sample; a float stays a float."""
    if isinstance(t, torch.Tensor) and like is not None:
        t = t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)
    return t / NUM_TRAIN_TIMESTEPS


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: Timestep) -> torch.Tensor:
    """``x_t = (1 - sigma) x0 + sigma eps`` (diffusers' ``scale_noise``)."""
    s = sigma(t, x0)
    return (1.0 - s) * x0 + s * eps


def predict_x0(x_t: torch.Tensor, v: torch.Tensor, t: Timestep) -> torch.Tensor:
    """The clean latents a velocity prediction ``v`` implies: ``x0_hat = x_t - sigma v``."""
    return x_t - sigma(t, v) * v


def velocity(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target ``v = eps - x0``."""
    return eps - x0


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of the probability-flow ODE ``dx/dsigma = v`` from ``t`` to ``t_next``."""
    return x + (t_next - t) / NUM_TRAIN_TIMESTEPS * v


def warp_timesteps(t: Timestep, shift: float) -> Timestep:
    """The shift on timesteps in [0, 1000]: ``1000 shift sigma / (1 + (shift - 1) sigma)``."""
    s = t / NUM_TRAIN_TIMESTEPS
    return NUM_TRAIN_TIMESTEPS * shift * s / (1.0 + (shift - 1.0) * s)


def shift_timesteps(timesteps: Sequence[float], shift: float = 5.0) -> tuple[float, ...]:
    """:func:`warp_timesteps` of each of ``timesteps`` (Python floats out); ``shift`` > 0."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return tuple(warp_timesteps(float(t), shift) for t in timesteps)


__all__ = ["NUM_TRAIN_TIMESTEPS", "add_noise", "euler_step", "predict_x0", "shift_timesteps", "sigma", "velocity",
           "warp_timesteps"]
