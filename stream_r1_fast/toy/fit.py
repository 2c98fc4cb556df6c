"""The optimisation loop pieces shared by the toy training scripts (scripts/toy/)."""

from __future__ import annotations

import math
import time

import torch

from stream_r1_fast.scheduling import add_noise, shift_timesteps, velocity, warp_timesteps


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    )


def flow_matching_loss(model, x0: torch.Tensor, text: torch.Tensor, g: torch.Generator,
                       shift: float = 3.0, frame_noise: float = 0.0) -> torch.Tensor:
    """The teachers' loss ``|| v(x_s, s, c) - (eps - x0) ||^2``: eps, then s uniform on
    (0, 1000] warped by ``shift``, drawn from ``g`` in that order.

    ``frame_noise`` > 0: that fraction of the samples gets an independent noise level per latent
    frame (diffusion forcing, Chen et al. 2024) instead of one for the whole clip; the model is
    called with timesteps [B, F]. Frames less noisy than their neighbours make the relation
    between frames (where the object goes next) worth learning at every noise level. Draws two
    more tensors from ``g`` (after ``u``) only when it is > 0, so runs without it are unchanged.
    """
    eps = torch.randn(x0.shape, generator=g)
    u = torch.rand(x0.shape[0], generator=g)
    if frame_noise <= 0:
        t = torch.tensor(shift_timesteps((u * 1000).tolist(), shift))
        v = model(add_noise(x0, eps, t), t, text).sample
        return ((v.float() - velocity(x0, eps)) ** 2).mean()
    b, f = x0.shape[0], x0.shape[2]
    per_frame = torch.rand(b, f, generator=g)
    independent = torch.rand(b, 1, generator=g) < frame_noise
    u = torch.where(independent, per_frame, u[:, None].expand(b, f))
    t = warp_timesteps(u * 1000, shift)  # [B, F]
    s = (t / 1000).view(b, 1, f, *([1] * (x0.dim() - 3))).to(x0.dtype)
    v = model((1 - s) * x0 + s * eps, t, text).sample
    return ((v.float() - velocity(x0, eps)) ** 2).mean()


class Fitter:
    """One optimiser step (grad clip 1) plus a loss EMA printed every ``every`` steps."""

    def __init__(self, model: torch.nn.Module, opt, sched, steps: int, every: int = 50):
        self.model, self.opt, self.sched, self.steps, self.every = model, opt, sched, steps, every
        self.ema: float | None = None
        self.start = time.time()

    def step(self, step: int, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        value = loss.item()
        self.ema = value if self.ema is None else 0.98 * self.ema + 0.02 * value
        if step % self.every == 0 or step == self.steps - 1:
            print(f"step {step:5d}  loss {value:.4f}  ema {self.ema:.4f}  {self.elapsed:6.1f} s", flush=True)

    @property
    def elapsed(self) -> float:
        return time.time() - self.start
