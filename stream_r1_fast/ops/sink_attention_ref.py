"""PyTorch definition of ``sink_attention`` (the semantics every kernel is tested against),
and the Reward-Forcing-style path that the benchmarks use as the baseline.

The current chunk's queries attend densely to every occupied cache slot and to the chunk
itself. K/V are stored before RoPE; rotation uses the slot -> position table, so the cache
can be a ring in any order (dense attention does not care about key order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stream_r1_fast.ops.rope import apply_rope, rope_angles


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rotated_keys_values(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_pos: torch.Tensor,
    q_pos: torch.Tensor,
    grid_h: int,
    grid_w: int,
    rope_theta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys [B, S*P + Lq, H, D] rotated (in the dtype of k), values, and a key mask [S*P + Lq]
    that is False for tokens of empty slots."""
    b, s, p, h, d = k_cache.shape
    f_q = k.shape[1] // p
    cd = _compute_dtype(k.dtype)
    ang_cache = rope_angles(cache_pos.clamp(min=0), grid_h, grid_w, d, rope_theta)
    chunk_frames = q_pos.to(torch.int64) + torch.arange(f_q, device=q_pos.device)
    ang_chunk = rope_angles(chunk_frames, grid_h, grid_w, d, rope_theta)
    kc = apply_rope(k_cache.reshape(b, s * p, h, d), ang_cache, cd)
    kq = apply_rope(k, ang_chunk, cd)
    keys = torch.cat([kc, kq], dim=1)
    values = torch.cat([v_cache.reshape(b, s * p, h, d), v], dim=1)
    valid = torch.cat(
        [(cache_pos >= 0).repeat_interleave(p), torch.ones(k.shape[1], dtype=torch.bool, device=k.device)]
    )
    # Empty slots may hold anything (NaN included): their zero weights must not meet it.
    values = values.masked_fill(~valid[None, :, None, None], 0)
    return keys, values, valid


def rotated_queries(q: torch.Tensor, q_pos: torch.Tensor, grid_h: int, grid_w: int, rope_theta: float):
    p = grid_h * grid_w
    f_q = q.shape[1] // p
    frames = q_pos.to(torch.int64) + torch.arange(f_q, device=q_pos.device)
    ang = rope_angles(frames, grid_h, grid_w, q.shape[-1], rope_theta)
    return apply_rope(q, ang, _compute_dtype(q.dtype))


def sink_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_pos: torch.Tensor,
    q_pos: torch.Tensor,
    grid_h: int,
    grid_w: int,
    scale: float,
    rope_theta: float = 10000.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference forward. Shapes as in the op schema; returns (out [B, Lq, H, D], lse [B, H, Lq]).

    Angles are float64; rotation is computed in float32 (float64 for float64 inputs) and
    rounded to the input dtype, as a same-precision PyTorch implementation would. Scores and
    P @ V are computed in the input dtype, the softmax in float32: called on float64 inputs
    this is the ground truth, called on bf16/fp16 inputs it is the same-precision baseline of
    the tests' error bound.
    """
    qr = rotated_queries(q, q_pos, grid_h, grid_w, rope_theta)
    keys, values, valid = rotated_keys_values(
        k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, rope_theta
    )
    scores = torch.einsum("bqhd,bkhd->bhqk", qr, keys) * scale
    soft_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = scores.to(soft_dtype).masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None]).to(q.dtype)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, values)
    return out, lse.to(torch.float32)


def sink_attention_rf_style(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sink_k: torch.Tensor,
    sink_v: torch.Tensor,
    window_k: torch.Tensor,
    window_v: torch.Tensor,
    start_frame: int,
    grid_h: int,
    grid_w: int,
    rope_theta: float = 10000.0,
) -> torch.Tensor:
    """The attention path of Reward Forcing's inference code, reproduced as the benchmark
    baseline: RoPE recomputed in float64 on every cached key at every call, sink and window
    joined with ``torch.cat``, then ``scaled_dot_product_attention``.

    sink_k/v: [B, Ls, H, D], window_k/v: [B, Lw, H, D], contiguous in time order (a shifting
    cache); q, k, v: [B, Lq, H, D]. Positions: sink then window then chunk, from 0.
    """
    p = grid_h * grid_w
    d = q.shape[-1]
    dev = q.device
    cache_k = torch.cat([sink_k, window_k, k], dim=1)
    cache_v = torch.cat([sink_v, window_v, v], dim=1)
    n_frames = cache_k.shape[1] // p
    ang = rope_angles(torch.arange(n_frames, device=dev), grid_h, grid_w, d, rope_theta)
    keys = apply_rope(cache_k, ang, torch.float64)
    f_q = q.shape[1] // p
    ang_q = rope_angles(start_frame + torch.arange(f_q, device=dev), grid_h, grid_w, d, rope_theta)
    qr = apply_rope(q, ang_q, torch.float64)
    out = F.scaled_dot_product_attention(
        qr.transpose(1, 2), keys.transpose(1, 2), cache_v.transpose(1, 2)
    )
    return out.transpose(1, 2)
