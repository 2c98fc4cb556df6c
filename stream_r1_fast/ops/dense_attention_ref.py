"""PyTorch definition of ``dense_attention``: attention of every query to every key, no mask.

``q`` [B, Lq, H, D], ``k`` / ``v`` [B, Lk, H, D] (any strides), a softmax ``scale``:

    s   = scale * q kᵀ                    per (batch, head): [Lq, Lk]
    lse = log sum_j exp(s_ij)            [B, H, Lq], float32 (logsumexp's conventions: an
                                          infinite max is not subtracted; no keys: -inf)
    out = softmax(s) v                   [B, Lq, H, D], in q's dtype (no keys: zeros)

computed in float32 (float64 for float64 inputs: the reference is how the tests get a
float64 answer). The kernels compute the same in float32 accumulation (the CPU kernel in
float64 for float64); the CUDA kernel rounds the probabilities to the input type before
``P V``, as every FlashAttention-class kernel does.
"""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def dense_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Lq, H, D] in q's dtype, lse [B, H, Lq] float32); ``scale`` defaults to
    ``D ** -0.5``. Differentiable (plain torch ops)."""
    acc = compute_dtype(q.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    s = torch.einsum("bqhd,bkhd->bhqk", q.to(acc), k.to(acc)) * scale
    lse = torch.logsumexp(s, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, dim=-1), v.to(acc))
    return out.to(q.dtype), lse.to(torch.float32)


__all__ = ["compute_dtype", "dense_attention_ref"]
