"""Wan2.1's 3-D rotary position embedding, as the references and backward passes use it.

Per head, the head dim D is split into three axes t:h:w of sizes ``D - 4*(D//6)``,
``2*(D//6)``, ``2*(D//6)`` (44:42:42 for D = 128). Adjacent elements (2i, 2i+1) form one
complex number (not the two halves of the head dim); pair j of an axis of size ``d`` turns by
``pos * theta**(-2j/d)``. A token of latent frame t at row y, column x of a ``grid_h x grid_w``
frame has position (t, y, x).
"""

from __future__ import annotations

import torch


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Sizes (in elements, not pairs) of the t, h, w parts of a head of ``head_dim``."""
    d6 = head_dim // 6
    return head_dim - 4 * d6, 2 * d6, 2 * d6


def rope_angles(
    frame_pos: torch.Tensor, grid_h: int, grid_w: int, head_dim: int, theta: float
) -> torch.Tensor:
    """Rotation angles in float64 for every token of the given frames.

    frame_pos: integer [F] temporal positions. Returns [F * grid_h * grid_w, head_dim // 2].
    """
    dt, dh, dw = rope_axis_dims(head_dim)
    dev = frame_pos.device

    def inv_freq(d: int) -> torch.Tensor:
        return theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=dev) / d)

    rows = torch.arange(grid_h, dtype=torch.float64, device=dev)
    cols = torch.arange(grid_w, dtype=torch.float64, device=dev)
    f = frame_pos.to(torch.float64)
    n_f, p = f.numel(), grid_h * grid_w
    ang_t = (f[:, None] * inv_freq(dt)[None]).repeat_interleave(p, dim=0)  # [F*P, dt/2]
    ang_h = (rows[:, None] * inv_freq(dh)[None]).repeat_interleave(grid_w, dim=0).repeat(n_f, 1)
    ang_w = (cols[:, None] * inv_freq(dw)[None]).repeat(grid_h * n_f, 1)
    return torch.cat([ang_t, ang_h, ang_w], dim=1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
    """Rotate x [B, L, H, D] by angles [L, D/2]; math in ``compute_dtype``, result in x.dtype."""
    xc = x.to(compute_dtype).unflatten(-1, (-1, 2))
    cos = angles.cos().to(compute_dtype)[None, :, None, :]
    sin = angles.sin().to(compute_dtype)[None, :, None, :]
    x0, x1 = xc[..., 0], xc[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype RoPE is computed in for tensors of ``dtype``: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rope_tables(
    frames: int, grid_h: int, grid_w: int, head_dim: int, theta: float, dtype: torch.dtype, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [frames * grid_h * grid_w, head_dim // 2] of the frames at positions
    0..frames-1 (float64 angles, rounded once to ``compute_dtype(dtype)``): row ``s * P + p`` is
    token ``p`` of the frame at position ``s``. A frame's temporal angles at position ``n`` are
    those of a move by ``n`` frames, so the same table turns frames by any whole number of
    frames below ``frames`` (the sine negated for a move back)."""
    ang = rope_angles(torch.arange(frames, device=device), grid_h, grid_w, head_dim, theta)
    cd = compute_dtype(dtype)
    return ang.cos().to(cd), ang.sin().to(cd)
