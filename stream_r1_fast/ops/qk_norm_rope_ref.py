"""PyTorch definition of ``qk_norm_rope``: a Wan self-attention layer's q/k RMSNorm and 3-D
RoPE for one chunk, the two passes the fused kernels (csrc/qk_norm_rope/) make in one.

Layout: ``q``/``k`` [B, F, P, H, D], the to_q / to_k outputs [B, F * P, H * D] of a chunk of F
latent frames of P tokens viewed per frame, token and head (a free view). Per token, the H * D
elements are normalised together (Wan normalises across all heads at once,
``torch.nn.RMSNorm(H * D)``): ``y = x * rsqrt(mean(x^2) + eps) * weight``, then each adjacent
pair ``(y[2i], y[2i + 1])`` of a head is turned by its token's angle (``ops/rope.py``):
``(y0 c - y1 s, y0 s + y1 c)``. ``cos``/``sin`` [N * P, D / 2] are the RoPE tables of
:func:`~stream_r1_fast.ops.rope.rope_tables` (row ``s * P + p``: token p of the frame at
position s); frame f of the chunk is at position ``frame_offset + f``. Everything is computed
in the compute dtype (float32; float64 for float64 tensors), the weights included, and rounded
once to the tensors' dtype at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stream_r1_fast.ops.rope import compute_dtype
from stream_r1_fast.ops.rotated_cache_ref import rotate_rows

__all__ = ["norm_rope_ref", "qk_norm_rope_ref"]


def norm_rope_ref(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  frame_offset: int, eps: float) -> torch.Tensor:
    """One tensor x [B, F, P, H, D]: RMSNorm over H * D with ``weight`` [H * D], then RoPE at
    positions ``frame_offset ..``; math in the compute dtype, result in x.dtype."""
    b, f, p, h, d = x.shape
    cd = compute_dtype(x.dtype)
    y = F.rms_norm(x.to(cd).reshape(b, f * p, h * d), (h * d,), weight.to(cd), eps)
    rotated = rotate_rows(y.view(b, f * p, h, d), cos.to(cd), sin.to(cd), frame_offset * p)
    return rotated.view(b, f, p, h, d).to(x.dtype)


def qk_norm_rope_ref(q: torch.Tensor, k: torch.Tensor, weight_q: torch.Tensor, weight_k: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor, frame_offset: int,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_out, k_out) [B, F, P, H, D] in q's dtype; differentiable w.r.t. q, k and the weights."""
    return (norm_rope_ref(q, weight_q, cos, sin, frame_offset, eps),
            norm_rope_ref(k, weight_k, cos, sin, frame_offset, eps))
