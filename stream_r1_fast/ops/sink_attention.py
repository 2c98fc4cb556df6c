"""Public ``sink_attention``: the current chunk's queries against [EMA sink | window ring |
chunk] of a pre-RoPE KV cache, with Wan's 3-D RoPE applied inside the kernel.

The semantics are defined by :func:`stream_r1_fast.ops.sink_attention_ref.sink_attention_ref`;
this module validates the arguments, dispatches to the compiled kernel of the tensors' device
when there is one (else to the reference), and registers the fake kernel and the autograd
formula (backward w.r.t. q, k, v of the chunk) that ``torch.compile`` and training use.
"""

from __future__ import annotations

import math

import torch

from stream_r1_fast._backend import backend_info, use_kernel
from stream_r1_fast.ops._checks import (
    INT32_MAX,
    check_contiguous,
    check_float_dtypes,
    check_int,
    check_int32_vectors,
    check_number,
    check_same_device,
    check_tensors,
    checked_size,
)
from stream_r1_fast.ops.rope import apply_rope, rope_angles
from stream_r1_fast.ops.sink_attention_ref import rotated_keys_values, sink_attention_ref

_OP = "sink_attention"
_HEAD_DIMS = (64, 128)
# The backward materialises float32 [B, H, block, Lk] score tiles; each holds at most this many
# elements (a few such tiles are alive at once).
_BWD_TILE_ELEMENTS = 1 << 25


def check_inputs(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta) -> None:
    """The user-facing checks of ``sink_attention``, run by the wrapper and the fake kernel
    (direct torch.ops calls, through the compiled or the NVRTC kernels, are kept memory safe
    by make_params of csrc/sink_attention/sink_attention_torch.h). TypeError / ValueError
    naming the argument."""
    check_tensors(q=q, k=k, v=v, k_cache=k_cache, v_cache=v_cache, cache_pos=cache_pos, q_pos=q_pos)
    check_int("grid_h", grid_h)
    check_int("grid_w", grid_w)
    if grid_h <= 0 or grid_w <= 0:
        raise ValueError(f"sink_attention: grid_h and grid_w must be positive, got {grid_h} and {grid_w}")
    if scale is not None:
        check_number("scale", scale)
        if not math.isfinite(scale):
            raise ValueError(f"sink_attention: scale must be a finite float or None, got {scale!r}")
    check_number("rope_theta", rope_theta)
    if not 0 < rope_theta < math.inf:
        raise ValueError(f"sink_attention: rope_theta must be positive, got {rope_theta!r}")
    # One device for every tensor, first: a mixed call may be running the fake kernel.
    check_same_device("q", q, k=k, v=v, k_cache=k_cache, v_cache=v_cache, cache_pos=cache_pos, q_pos=q_pos)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions [B, Lq, H, D], got shape {tuple(t.shape)}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dim() != 5:
            raise ValueError(f"{name} must have 5 dimensions [B, S, P, H, D], got shape {tuple(t.shape)}")
    check_float_dtypes("q", q, k=k, v=v, k_cache=k_cache, v_cache=v_cache)
    b, lq, h, d = q.shape
    if d not in _HEAD_DIMS:
        raise ValueError(f"sink_attention: head_dim (last dim of q) must be 64 or 128, got {d}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have the shape of q {tuple(q.shape)}, got {tuple(t.shape)}")
    # Sizes the kernels index with 32-bit ints (sink_attention_torch.h), checked before use.
    checked_size("sink_attention: grid_h", grid_h, INT32_MAX)
    checked_size("sink_attention: grid_w", grid_w, INT32_MAX)
    p = checked_size("sink_attention: grid_h * grid_w (tokens per frame)", grid_h * grid_w, INT32_MAX)
    if lq % p != 0:
        raise ValueError(
            f"q.shape[1] (Lq = {lq}) must be a multiple of grid_h * grid_w = {p} (whole latent frames)"
        )
    s = k_cache.shape[1]
    if (k_cache.shape[0], k_cache.shape[2], k_cache.shape[3], k_cache.shape[4]) != (b, p, h, d):
        raise ValueError(
            f"k_cache must have shape [B, S, P, H, D] = [{b}, S, {p}, {h}, {d}] to match q and "
            f"grid_h * grid_w, got {tuple(k_cache.shape)}"
        )
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache must have the shape of k_cache {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")
    check_int32_vectors(cache_pos=(cache_pos, s), q_pos=(q_pos, 1))
    check_contiguous(q=q, k=k, v=v, k_cache=k_cache, v_cache=v_cache, cache_pos=cache_pos, q_pos=q_pos)
    checked_size("sink_attention: k_cache.shape[1] * shape[2] + q.shape[1] (keys)", s * p + lq, INT32_MAX)
    checked_size("sink_attention: q.shape[0] (batch)", b, 65535)
    checked_size("sink_attention: q.shape[2] (heads)", h, 65535)


def sink_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_pos: torch.Tensor,
    q_pos: torch.Tensor,
    grid_h: int,
    grid_w: int,
    scale: float | None = None,
    rope_theta: float = 10000.0,
) -> torch.Tensor:
    """Dense attention of a chunk's queries to the occupied cache slots and the chunk itself.

    Args:
        q, k, v: [B, Lq, H, D] current chunk before RoPE, ``Lq = Fq * grid_h * grid_w``
            (Fq latent frames, token p of a frame at row ``p // grid_w``, column
            ``p % grid_w``); float32, float16 or bfloat16; D in {64, 128}.
        k_cache, v_cache: [B, S, grid_h * grid_w, H, D] cache before RoPE, one latent frame per
            slot, in any order (S may be 0); same dtype and device as q.
        cache_pos: int32 [S] temporal RoPE position of each slot; < 0 marks an empty slot,
            whose keys are masked out. Read on the device: no host synchronisation.
        q_pos: int32 [1] temporal position of the chunk's first frame (frame f at q_pos + f).
        grid_h, grid_w: latent frame size in tokens.
        scale: softmax scale, default ``D ** -0.5``.
        rope_theta: RoPE base.

    Returns:
        out [B, Lq, H, D] in q's dtype. Queries, cache keys and chunk keys are rotated by Wan's
        3-D RoPE (adjacent pairs; t:h:w split of the head dim); no causal mask. Differentiable
        w.r.t. q, k and v (the cache is treated as a constant). Raises TypeError / ValueError
        naming the offending argument on malformed input.
    """
    check_inputs(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta)
    if torch.is_autocast_enabled(q.device.type):
        # The inputs share one dtype (checked); autocast must not recast them inside the op
        # (the CPU kernel then fails on mixed float32 / bfloat16 operands).
        with torch.autocast(q.device.type, enabled=False):
            return sink_attention(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if use_kernel(_OP, q.device.type):
        out, _ = torch.ops.stream_r1_fast.sink_attention(
            q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, float(rope_theta)
        )
        return out
    out, _ = sink_attention_ref(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, float(rope_theta))
    return out


def sink_attention_backward(
    grad_out: torch.Tensor | None,
    grad_lse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_pos: torch.Tensor,
    q_pos: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grid_h: int,
    grid_w: int,
    scale: float,
    rope_theta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) w.r.t. the pre-RoPE chunk, from the forward's out and lse.

    Float32 throughout, query block by query block (score tiles of at most
    ``_BWD_TILE_ELEMENTS``), recomputing the rotations; no host synchronisation and no
    data-dependent shapes, so it traces. With s = scale * q_r . k_r and P = exp(s - lse):
    dV = P^T dO, dP = dO V^T, dS = P * (dP - rowsum(dO * O) + dlse), dQ_r = scale dS K_r,
    dK_r = scale dS^T Q_r; the rotation is orthogonal, so dq, dk are dQ_r, dK_r turned back.
    """
    f32 = torch.float32
    b, lq, h, d = q.shape
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    n_cached = k_cache.shape[1] * grid_h * grid_w
    frames = q_pos.to(torch.int64) + torch.arange(lq // (grid_h * grid_w), device=q.device)
    ang = rope_angles(frames, grid_h, grid_w, d, rope_theta)  # chunk queries and keys alike
    qr = apply_rope(q.to(f32), ang, f32).transpose(1, 2)  # [B, H, Lq, D]
    keys, values, valid = rotated_keys_values(
        k.to(f32), v.to(f32), k_cache.to(f32), v_cache.to(f32), cache_pos, q_pos, grid_h, grid_w, rope_theta
    )
    # Zero the keys of empty slots so that whatever they hold cannot leak into dq as 0 * inf
    # (rotated_keys_values already zeroes their values).
    keys = torch.where(valid[None, :, None, None], keys, 0.0).transpose(1, 2)  # [B, H, Lk, D]
    values = values.transpose(1, 2)
    do = grad_out.to(f32).transpose(1, 2)  # [B, H, Lq, D]
    delta = (do * out.to(f32).transpose(1, 2)).sum(-1)  # [B, H, Lq]
    if grad_lse is not None:
        delta = delta - grad_lse.to(f32)

    lk = keys.shape[2]
    block = max(1, min(lq, _BWD_TILE_ELEMENTS // max(1, b * h * lk)))
    dq_blocks = []
    dk = torch.zeros(b, h, lq, d, dtype=f32, device=q.device)
    dv = torch.zeros(b, h, lq, d, dtype=f32, device=q.device)
    for i0 in range(0, lq, block):
        i1 = min(lq, i0 + block)
        qb, dob = qr[:, :, i0:i1], do[:, :, i0:i1]
        scores = torch.where(valid, (qb @ keys.transpose(-1, -2)) * scale, float("-inf"))
        probs = torch.exp(scores - lse[:, :, i0:i1, None])  # [B, H, blk, Lk]
        dv = dv + probs[..., n_cached:].transpose(-1, -2) @ dob
        ds = probs * (dob @ values.transpose(-1, -2) - delta[:, :, i0:i1, None])
        dq_blocks.append((ds @ keys) * scale)
        dk = dk + (ds[..., n_cached:].transpose(-1, -2) @ qb) * scale
    dq = torch.cat(dq_blocks, dim=2)
    dq = apply_rope(dq.transpose(1, 2), -ang, f32)
    dk = apply_rope(dk.transpose(1, 2), -ang, f32)
    return dq.to(q.dtype), dk.to(k.dtype), dv.transpose(1, 2).to(v.dtype)


if backend_info().name == "extension":

    @torch.library.register_fake(f"stream_r1_fast::{_OP}")
    def _sink_attention_fake(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta):
        # The wrapper's checks: a traced call fails as an eager one would, and a direct call
        # that mixes meta with real tensors (which lands here) is refused.
        check_inputs(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta)
        b, lq, h, d = q.shape
        return q.new_empty((b, lq, h, d)), q.new_empty((b, h, lq), dtype=torch.float32)

    def _setup_context(ctx, inputs, output):
        q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, k_cache, v_cache, cache_pos, q_pos, out, lse)
        ctx.rope_args = (grid_h, grid_w, scale, rope_theta)

    def _backward(ctx, grad_out, grad_lse):
        q, k, v, k_cache, v_cache, cache_pos, q_pos, out, lse = ctx.saved_tensors
        dq, dk, dv = sink_attention_backward(
            grad_out, grad_lse, q, k, v, k_cache, v_cache, cache_pos, q_pos, out, lse, *ctx.rope_args
        )
        return dq, dk, dv, None, None, None, None, None, None, None, None

    torch.library.register_autograd(f"stream_r1_fast::{_OP}", _backward, setup_context=_setup_context)
