"""Public ``qk_norm_rope``: a Wan self-attention layer's q/k RMSNorm (across all heads) and 3-D
RoPE of one chunk in one pass, instead of a norm and a rotation per tensor.

The semantics are defined by :func:`stream_r1_fast.ops.qk_norm_rope_ref.qk_norm_rope_ref`; this
module validates the arguments, dispatches to the compiled (or NVRTC) kernel of the tensors'
device when there is one (else to the reference), and registers the fake kernel
``torch.compile`` traces through and the autograd formula (composed in PyTorch: the rotation's
backward is the rotation by the negative angle, then RMSNorm's backward).
"""

from __future__ import annotations

import math

import torch

from stream_r1_fast._backend import backend_info, use_kernel
from stream_r1_fast.ops._checks import (
    FLOAT_DTYPES_AND_64,
    INT32_MAX,
    check_contiguous,
    check_float_dtypes,
    check_int,
    check_number,
    check_same_device,
    check_tensors,
    checked_size,
)
from stream_r1_fast.ops.qk_norm_rope_ref import qk_norm_rope_ref
from stream_r1_fast.ops.rope import compute_dtype

_OP = "qk_norm_rope"


def check_inputs(q, k, weight_q, weight_k, cos, sin, frame_offset, eps) -> None:
    """The user-facing checks of ``qk_norm_rope``, run by the wrapper and the fake kernel (direct
    torch.ops calls, through the compiled or the NVRTC kernels, are kept memory safe by
    make_params of csrc/qk_norm_rope/qk_norm_rope_torch.h). TypeError / ValueError naming the
    argument."""
    check_tensors(q=q, k=k, weight_q=weight_q, weight_k=weight_k, cos=cos, sin=sin)
    check_int("frame_offset", frame_offset, lo=0)
    eps = check_number("eps", eps)
    if not isinstance(eps, torch.SymFloat) and not (math.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    # One device for every tensor, first: a mixed call may be running the fake kernel.
    check_same_device("q", q, k=k, weight_q=weight_q, weight_k=weight_k, cos=cos, sin=sin)
    if q.dim() != 5:
        raise ValueError(f"q must have 5 dimensions [B, F, P, H, D], got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q ({tuple(q.shape)}), got {tuple(k.shape)}")
    b, f, p, h, d = q.shape
    if p < 1:
        raise ValueError(f"q.shape[2] (tokens per frame P) must be >= 1, got shape {tuple(q.shape)}")
    if h < 1:
        raise ValueError(f"q.shape[3] (heads H) must be >= 1, got shape {tuple(q.shape)}")
    if d < 2 or d % 2:
        raise ValueError(f"q.shape[4] (head_dim D) must be even and >= 2 (RoPE pairs), got {d}")
    # The sizes the kernels compute with (csrc/qk_norm_rope/qk_norm_rope_torch.h): an empty
    # dimension lets the others multiply past int64.
    checked_size("q.shape[3] * shape[4] (row size H * D)", h * d, INT32_MAX)
    checked_size("q.numel()", b * f * p * h * d)
    checked_size("(frame_offset + F) * P (RoPE table rows)", (frame_offset + f) * p)
    for name, w in (("weight_q", weight_q), ("weight_k", weight_k)):
        if w.dim() != 1 or w.shape[0] != h * d:
            raise ValueError(f"{name} must have shape [H * D] = [{h * d}], got {tuple(w.shape)}")
    if cos.dim() != 2 or cos.shape[1] != d // 2:
        raise ValueError(f"cos must have shape [N * P, D / 2] = [N * {p}, {d // 2}], got {tuple(cos.shape)}")
    if sin.shape != cos.shape:
        raise ValueError(f"sin must have the shape of cos ({tuple(cos.shape)}), got {tuple(sin.shape)}")
    if cos.shape[0] < (frame_offset + f) * p:
        raise ValueError(
            f"cos and sin have {cos.shape[0]} rows, too few for frames frame_offset = {frame_offset} .. "
            f"{frame_offset + f - 1} of {p} tokens ({(frame_offset + f) * p} rows needed)"
        )
    check_float_dtypes("q", q, allowed=FLOAT_DTYPES_AND_64, k=k)
    want = compute_dtype(q.dtype)
    if weight_q.dtype not in (q.dtype, want):
        raise ValueError(f"weight_q must have the dtype of q ({q.dtype}) or {want} (the compute dtype), "
                         f"got {weight_q.dtype}")
    if weight_k.dtype != weight_q.dtype:
        raise ValueError(f"weight_k must have the dtype of weight_q ({weight_q.dtype}), got {weight_k.dtype}")
    for name, table in (("cos", cos), ("sin", sin)):
        if table.dtype != want:
            raise ValueError(f"{name} must be {want} (the compute dtype of {q.dtype} q), got {table.dtype}")
    check_contiguous(q=q, k=k, weight_q=weight_q, weight_k=weight_k, cos=cos, sin=sin)


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    weight_q: torch.Tensor,
    weight_k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    frame_offset: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of q and k across all heads, then Wan's 3-D RoPE, in one pass.

    Args:
        q, k: [B, F, P, H, D], a chunk of F latent frames of P tokens (the to_q / to_k outputs
            [B, F * P, H * D] viewed so: ``x.view(B, F, P, H, D)``), contiguous, one dtype
            (float32, float16, bfloat16 or float64) and device; the head count is H of the shape.
        weight_q, weight_k: [H * D], the norms' weights, in q's dtype or the compute dtype
            (float32; float64 for float64 q), both the same dtype.
        cos, sin: [N * P, D / 2] RoPE tables (:func:`~stream_r1_fast.ops.rope.rope_tables`) in
            the compute dtype; at least ``(frame_offset + F) * P`` rows.
        frame_offset: the RoPE position of the chunk's first frame (frame f of the chunk uses
            rows ``(frame_offset + f) * P + p``), >= 0.
        eps: the norms' epsilon (finite, >= 0).

    Returns:
        (q_out, k_out) [B, F, P, H, D] in q's dtype: per token ``x * rsqrt(mean(x^2) + eps) *
        weight`` over its H * D elements, then adjacent pairs (2i, 2i + 1) rotated, in the compute
        dtype and rounded once (``ops/qk_norm_rope_ref.py``); ``.flatten(1, 2)`` gives the
        attention's [B, F * P, H, D]. Differentiable w.r.t. q, k, weight_q and weight_k (the
        tables are constants). Raises TypeError / ValueError naming the offending argument.
    """
    check_inputs(q, k, weight_q, weight_k, cos, sin, frame_offset, eps)
    if torch.is_autocast_enabled(q.device.type):
        with torch.autocast(q.device.type, enabled=False):  # the op must not recast its inputs
            return qk_norm_rope(q, k, weight_q, weight_k, cos, sin, frame_offset, eps)
    if use_kernel(_OP, q.device.type):
        q_out, k_out = torch.ops.stream_r1_fast.qk_norm_rope(q, k, weight_q, weight_k, cos, sin, frame_offset,
                                                             float(eps))
        return q_out, k_out
    return qk_norm_rope_ref(q, k, weight_q, weight_k, cos, sin, frame_offset, float(eps))


def _rotate_back(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """g [B, F, P, H, D] (compute dtype) turned by the negative angles of cos / sin [F, P, D / 2]."""
    c, s = cos[None, :, :, None, :], sin[None, :, :, None, :]
    g2 = g.unflatten(-1, (-1, 2))
    g0, g1 = g2[..., 0], g2[..., 1]
    return torch.stack([g0 * c + g1 * s, g1 * c - g0 * s], dim=-1).flatten(-2)


def norm_rope_backward(grad: torch.Tensor | None, x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor,
                       sin: torch.Tensor, frame_offset: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dweight) of one tensor of the op, recomputed from x in the compute dtype. With
    u = x r, r = (mean(x^2) + eps)^(-1/2), y = u w, out = R(y): dy = R(-angle) dout,
    dw = sum over tokens of dy u, dx = r (du - u mean(du u)) with du = dy w."""
    b, f, p, h, d = x.shape
    cd = compute_dtype(x.dtype)
    if grad is None:
        return torch.zeros_like(x), torch.zeros_like(weight)
    rows = slice(frame_offset * p, (frame_offset + f) * p)
    c, s = cos[rows].to(cd).view(f, p, d // 2), sin[rows].to(cd).view(f, p, d // 2)
    dy = _rotate_back(grad.to(cd), c, s).reshape(b, f, p, h * d)
    xf = x.to(cd).reshape(b, f, p, h * d)
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    u = xf * r
    du = dy * weight.to(cd)
    dx = r * (du - u * (du * u).mean(-1, keepdim=True))
    dw = (dy * u).reshape(-1, h * d).sum(0)
    return dx.view(b, f, p, h, d).to(x.dtype), dw.to(weight.dtype)


_registered = backend_info().name == "extension" and hasattr(torch.ops.stream_r1_fast, _OP)

if _registered:  # (an extension built before the op existed has no schema for it: the reference runs)

    @torch.library.register_fake(f"stream_r1_fast::{_OP}")
    def _qk_norm_rope_fake(q, k, weight_q, weight_k, cos, sin, frame_offset, eps):
        # The wrapper's checks: a traced call fails as an eager one would, and a direct call
        # that mixes meta with real tensors (which lands here) is refused.
        check_inputs(q, k, weight_q, weight_k, cos, sin, frame_offset, eps)
        return q.new_empty(q.shape), k.new_empty(k.shape)

    def _setup_context(ctx, inputs, output):
        q, k, weight_q, weight_k, cos, sin, frame_offset, eps = inputs
        ctx.save_for_backward(q, k, weight_q, weight_k, cos, sin)
        ctx.frame_offset, ctx.eps = frame_offset, eps

    def _backward(ctx, grad_q, grad_k):
        q, k, weight_q, weight_k, cos, sin = ctx.saved_tensors
        need = ctx.needs_input_grad
        dq = dwq = dk = dwk = None
        if need[0] or need[2]:
            dq, dwq = norm_rope_backward(grad_q, q, weight_q, cos, sin, ctx.frame_offset, ctx.eps)
        if need[1] or need[3]:
            dk, dwk = norm_rope_backward(grad_k, k, weight_k, cos, sin, ctx.frame_offset, ctx.eps)
        return (dq if need[0] else None, dk if need[1] else None, dwq if need[2] else None,
                dwk if need[3] else None, None, None, None, None)

    torch.library.register_autograd(f"stream_r1_fast::{_OP}", _backward, setup_context=_setup_context)


__all__ = ["check_inputs", "norm_rope_backward", "qk_norm_rope"]
