"""Many-step sampling of a bidirectional toy model (the teacher): Euler on the flow-matching ODE.

With ``x_s = (1 - s) x0 + s eps`` and ``v = eps - x0``, ``dx/ds = v``; the sampler walks s from
1 to 0 over ``steps`` Euler steps on a grid warped by ``shift`` (more steps at high noise), with
classifier-free guidance ``v = v_u + cfg (v_c - v_u)`` (the empty prompt is the unconditional
branch). This is not streaming: the whole clip is denoised at once.
"""

from __future__ import annotations

import torch

from stream_r1_fast.scheduling import euler_step, shift_timesteps


@torch.no_grad()
def euler_sample(model, text, uncond_text, noise: torch.Tensor, steps: int = 24, cfg: float = 3.0, shift: float = 3.0) -> torch.Tensor:
    """noise [B, C, F, h, w] -> clean latents (float32). ``text``/``uncond_text``: embeddings
    [B, Lt, D] or TextContexts (``uncond_text`` unused when ``cfg == 1``)."""
    ts = list(shift_timesteps(torch.linspace(1000, 0, steps + 1).tolist(), shift))
    x = noise.float()
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = model(x, t, text).sample.float()
        if cfg != 1.0:
            v_u = model(x, t, uncond_text).sample.float()
            v = v_u + cfg * (v - v_u)
        x = euler_step(x, v, t, t_next)
    return x
