"""Public ``fused_dense_attention``: our FlashAttention-2-class dense attention op
(``torch.ops.stream_r1_fast.dense_attention``), q against every key, no mask, with the
log-sum-exp a backward needs.

The semantics are defined by :func:`stream_r1_fast.ops.dense_attention_ref.dense_attention_ref`;
this module validates the arguments, dispatches to the compiled (or NVRTC) kernel of the
tensors' device when there is one that takes them (else to the reference), and registers the
fake kernel and the autograd formula (composed from the reference's math: correct, not fast).
It is a backend (``"ours"``) of :mod:`stream_r1_fast.ops.dense_attention`, which measures
which backend runs the rotated cache's attention; that module is the op folder's usual
``ops/<folder>.py`` name, so the op lives here.
"""

from __future__ import annotations

import math

import torch

from stream_r1_fast._backend import backend_info, use_kernel
from stream_r1_fast.ops._checks import INT32_MAX, check_number, check_same_device, check_tensors, checked_size
from stream_r1_fast.ops.dense_attention import register_own_backend
from stream_r1_fast.ops.dense_attention_ref import compute_dtype, dense_attention_ref

_OP = "dense_attention"
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
CUDA_DTYPES = (torch.float16, torch.bfloat16)  # what the CUDA kernel computes in
CUDA_HEAD_DIMS = (64, 128)
# The backward materialises [B, H, block, Lk] score tiles of at most this many elements.
_BWD_TILE_ELEMENTS = 1 << 25


def check_inputs(q, k, v, scale) -> None:
    """The user-facing checks of ``dense_attention``, run by the wrapper and the fake kernel
    (direct torch.ops calls are kept memory safe by make_params of
    csrc/dense_attention/dense_attention_torch.h). TypeError / ValueError naming the argument."""
    check_tensors(q=q, k=k, v=v)
    if scale is not None:
        check_number("scale", scale)
        if not math.isfinite(scale):
            raise ValueError(f"dense_attention: scale must be a finite float or None, got {scale!r}")
    # One device for every tensor, first: a mixed call may be running the fake kernel.
    check_same_device("q", q, k=k, v=v)
    layouts = {"q": "[B, Lq, H, D]", "k": "[B, Lk, H, D]", "v": "[B, Lk, H, D]"}
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions {layouts[name]}, got shape {tuple(t.shape)}")
    if q.dtype not in DTYPES:
        raise ValueError(f"q must be float64, float32, float16 or bfloat16, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
    b, lq, h, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, h, d):
        raise ValueError(f"k must have shape [B, Lk, H, D] = [{b}, Lk, {h}, {d}] to match q, got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.shape[3] > 1 and t.stride(3) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension (stride 1), got strides {t.stride()}")
        if any(s < 0 for s in t.stride()):
            raise ValueError(f"{name} must not have negative strides, got {t.stride()}")
    # Sizes the kernels index with 32-bit ints (dense_attention_torch.h), the CUDA grid's
    # limits (heads and batch are its y and z), and the element counts.
    checked_size("dense_attention: q.shape[0] (batch)", b, 65535)
    checked_size("dense_attention: q.shape[2] (heads)", h, 65535)
    checked_size("dense_attention: q.shape[1] (Lq)", lq, INT32_MAX)
    checked_size("dense_attention: k.shape[1] (Lk)", k.shape[1], INT32_MAX)
    checked_size("dense_attention: q.shape[3] (head_dim)", d, INT32_MAX)
    checked_size("dense_attention: q.numel()", b * lq * h * d)
    checked_size("dense_attention: k.numel()", b * k.shape[1] * h * d)


def cuda_kernel_takes(q: torch.Tensor) -> bool:
    """Whether the CUDA kernel (compiled or NVRTC) runs for tensors like ``q`` here: a CUDA
    kernel registered, fp16 / bf16, D in {64, 128}."""
    return use_kernel(_OP, "cuda") and q.dtype in CUDA_DTYPES and q.shape[-1] in CUDA_HEAD_DIMS


def why_not_cuda(dtype: torch.dtype | None, head_dim: int | None) -> str | None:
    """Why the CUDA kernel cannot run inputs of ``dtype`` / ``head_dim`` here (None: either
    unknown), or None when it can: the "ours" backend's availability."""
    if not use_kernel(_OP, "cuda"):
        return "no CUDA kernel of stream_r1_fast::dense_attention here (compiled or NVRTC)"
    if dtype is not None and dtype not in CUDA_DTYPES:
        return f"the kernel takes float16 / bfloat16, not {str(dtype).split('.')[-1]}"
    if head_dim is not None and head_dim not in CUDA_HEAD_DIMS:
        return f"the kernel takes head_dim 64 or 128, not {head_dim}"
    return None


def fused_dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention without a mask: ``softmax(q kᵀ · scale) v``.

    Args:
        q: [B, Lq, H, D]; k, v: [B, Lk, H, D]; one dtype (float64, float32, float16 or
            bfloat16) and device. Any batch, row and head strides (a prefix of a larger cache
            buffer, ``keys[:, :m].flatten(1, 2)``, is taken as it is); the last dimension
            must be contiguous.
        scale: softmax scale, default ``D ** -0.5``.

    Returns:
        (out [B, Lq, H, D] in q's dtype, lse [B, H, Lq] float32, the natural log of the softmax
        denominator). On CUDA, fp16 / bf16 with D in {64, 128} run our FlashAttention-2-class
        kernel; other CUDA inputs and a build without kernels run the reference. Differentiable
        w.r.t. q, k and v. Raises TypeError / ValueError naming the offending argument.
    """
    check_inputs(q, k, v, scale)
    if torch.is_autocast_enabled(q.device.type):
        with torch.autocast(q.device.type, enabled=False):  # the op must not recast its inputs
            return fused_dense_attention(q, k, v, scale)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    device = q.device.type
    if use_kernel(_OP, device) and (device == "cpu" or cuda_kernel_takes(q)):
        out, lse = torch.ops.stream_r1_fast.dense_attention(q, k, v, scale)
        return out, lse
    return dense_attention_ref(q, k, v, scale)


def dense_attention_backward(grad_out, grad_lse, q, k, v, scale: float):
    """Gradients (dq, dk, dv), recomputed from q, k, v in float32 (float64 for float64), query
    block by query block (score tiles of at most ``_BWD_TILE_ELEMENTS``); no host sync and no
    data-dependent shapes. With P = softmax(s), s = scale q kᵀ: dV = Pᵀ dO, dP = dO Vᵀ,
    dS = P * (dP - rowsum(P * dP) + dlse), dQ = scale dS K, dK = scale dSᵀ Q."""
    acc = compute_dtype(q.dtype)
    b, lq, h, d = q.shape
    qf, kf, vf = (t.to(acc).transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
    do = None if grad_out is None else grad_out.to(acc).transpose(1, 2)
    lk = kf.shape[2]
    block = max(1, min(lq, _BWD_TILE_ELEMENTS // max(1, b * h * lk)))
    dq_blocks = []
    dk = torch.zeros(b, h, lk, d, dtype=acc, device=q.device)
    dv = torch.zeros(b, h, lk, d, dtype=acc, device=q.device)
    for i0 in range(0, max(lq, 1), block):
        i1 = min(lq, i0 + block)
        qb = qf[:, :, i0:i1]
        probs = torch.softmax((qb @ kf.transpose(-1, -2)) * scale, dim=-1)  # [B, H, blk, Lk]
        ds = torch.zeros_like(probs)
        if do is not None:
            dob = do[:, :, i0:i1]
            dv = dv + probs.transpose(-1, -2) @ dob
            dp = dob @ vf.transpose(-1, -2)
            ds = probs * (dp - (probs * dp).sum(-1, keepdim=True))
        if grad_lse is not None:
            ds = ds + probs * grad_lse[:, :, i0:i1, None].to(acc)
        dq_blocks.append((ds @ kf) * scale)
        dk = dk + (ds.transpose(-1, -2) @ qb) * scale
    dq = torch.cat(dq_blocks, dim=2)
    return (dq.transpose(1, 2).to(q.dtype), dk.transpose(1, 2).to(k.dtype), dv.transpose(1, 2).to(v.dtype))


if backend_info().name == "extension":

    @torch.library.register_fake(f"stream_r1_fast::{_OP}")
    def _dense_attention_fake(q, k, v, scale):
        # The wrapper's checks: a traced call fails as an eager one would, and a direct call
        # that mixes meta with real tensors (which lands here) is refused.
        check_inputs(q, k, v, scale)
        b, lq, h, d = q.shape
        return q.new_empty((b, lq, h, d)), q.new_empty((b, h, lq), dtype=torch.float32)

    def _setup_context(ctx, inputs, output):
        q, k, v, scale = inputs
        ctx.save_for_backward(q, k, v)
        ctx.scale = scale

    def _backward(ctx, grad_out, grad_lse):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = dense_attention_backward(grad_out, grad_lse, q, k, v, ctx.scale)
        return dq, dk, dv, None

    torch.library.register_autograd(f"stream_r1_fast::{_OP}", _backward, setup_context=_setup_context)


register_own_backend("ours", lambda q, k, v: fused_dense_attention(q, k, v)[0], why_not_cuda)

__all__ = ["check_inputs", "cuda_kernel_takes", "dense_attention_backward", "fused_dense_attention", "why_not_cuda"]
