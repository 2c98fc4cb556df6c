"""Distribution Matching Distillation: the student's DMD loss and the critic's loss.

Pure functions; the score networks come in as callables ``score(x_t, t) -> v`` that predict
the flow-matching velocity ``v = eps - x0`` of latents ``x_t`` [B, C, F, H, W] at timesteps
``t`` [B] in [0, 1000] (the conditioning is bound by the caller). The noising and the ``x0``
prediction are :mod:`stream_r1_fast.scheduling`'s (``x_t = (1 - s) x0 + s eps``,
``x0_hat = x_t - s v`` with ``s = t / 1000``; docs/method.md, sections 1 and 3).
"""

from __future__ import annotations

from typing import Callable

import torch

from stream_r1_fast import scheduling

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _x0_of(score: Score, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x0_hat = x_t - s * score(x_t, t)`` in float32."""
    v = score(x_t, t).float()
    return scheduling.predict_x0(x_t.float(), v, t)


def sample_timesteps(
    batch: int,
    *,
    shift: float = 5.0,
    min_t: float = 20.0,
    max_t: float = 980.0,
    device=None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """t ~ U[0, 1000) per sample, warped by ``shift`` (:func:`~stream_r1_fast.scheduling.warp_timesteps`),
    clamped to [min_t, max_t]; float32 [B]."""
    u = torch.rand(batch, device=device, generator=generator, dtype=torch.float64)
    return scheduling.warp_timesteps(scheduling.NUM_TRAIN_TIMESTEPS * u, shift).clamp(min_t, max_t).float()


def draw_noise(
    x: torch.Tensor,
    *,
    t: torch.Tensor | None = None,
    eps: torch.Tensor | None = None,
    shift: float = 5.0,
    min_t: float = 20.0,
    max_t: float = 980.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The timesteps ``t`` [B] and noise ``eps`` (like x) that noise ``x``: the given ones, or
    fresh draws from ``generator`` (t first, by :func:`sample_timesteps` with ``shift``,
    ``min_t``, ``max_t``, then eps). The keywords :func:`dmd_gradient` and :func:`critic_loss`
    take after their own."""
    if t is None:
        t = sample_timesteps(x.shape[0], shift=shift, min_t=min_t, max_t=max_t, device=x.device, generator=generator)
    if eps is None:
        eps = torch.randn(x.shape, device=x.device, generator=generator)
    return t, eps


def dmd_gradient(
    x: torch.Tensor,
    real_cond: Score,
    real_uncond: Score,
    fake: Score,
    *,
    guidance_scale: float = 3.0,
    **noise,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DMD gradient ``g`` of student samples ``x`` [B, C, F, H, W] (no grad).

    ``x_t = noise(x, eps, t)``; ``x0_real = f(x_t, c) + guidance * (f(x_t, c) - f(x_t, neg))``;
    ``x0_fake = f_fake(x_t, c)``; ``g = (x0_fake - x0_real) / mean_{c,f,h,w} |x - x0_real|``
    per sample, non-finite entries set to 0. ``noise``: the keywords of :func:`draw_noise`
    (``t`` [B], ``eps``, ``shift``, ``min_t``, ``max_t``, ``generator``; t and eps are drawn
    when not given). Returns ``(g float32, stats)`` with ``stats`` holding ``t`` and the
    per-sample normaliser.
    """
    with torch.no_grad():
        x = x.detach().float()
        t, eps = draw_noise(x, **noise)
        x_t = scheduling.add_noise(x, eps, t)
        cond = _x0_of(real_cond, x_t, t)
        if guidance_scale == 0.0:  # no guidance: the unconditional branch would not count
            x0_real = cond
        else:
            x0_real = cond + guidance_scale * (cond - _x0_of(real_uncond, x_t, t))
        x0_fake = _x0_of(fake, x_t, t)
        norm = (x - x0_real).abs().mean(dim=tuple(range(1, x.dim())), keepdim=True)
        g = torch.nan_to_num((x0_fake - x0_real) / norm, nan=0.0, posinf=0.0, neginf=0.0)
    return g, {"t": t, "normalizer": norm.flatten()}


def dmd_loss(x: torch.Tensor, g: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(0.5 * W * (x - sg(x - g))^2)`` in float64; its gradient w.r.t. x is ``W * g / N``
    (N = x.numel()). ``weights`` broadcasts against x (None = 1)."""
    x64 = x.double()
    target = (x64 - g.double()).detach()
    sq = (x64 - target) ** 2
    if weights is not None:
        sq = weights.detach().double() * sq
    return 0.5 * sq.mean()


def critic_loss(fake: Score, x: torch.Tensor, **noise) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Flow-matching denoising loss of the critic on detached student samples x:
    ``mean((f_fake(x_t, t) - (eps - x))^2)`` (float32), ``t`` and ``eps`` given or drawn as
    :func:`draw_noise` (its keywords). Returns ``(loss, {"t": t})``."""
    x = x.detach().float()
    t, eps = draw_noise(x, **noise)
    v = fake(scheduling.add_noise(x, eps, t), t).float()
    return ((v - scheduling.velocity(x, eps)) ** 2).mean(), {"t": t}
