"""PyTorch definition of ``rotated_cache_advance``: one refresh of one block's buffers of
:class:`~stream_r1_fast.cache.RotatedSinkKVCache` (docs/method.md, section 2, "How the cache is
stored").

Layout: ``keys``/``values`` [B, N, P, H, D], N frames of P tokens in *age order* (sink frames
first, then the window oldest first, then free slots); a frame's RoPE position is its slot, and
keys are stored already rotated there by Wan's 3-D RoPE (``rope.py``), values as they are.
``cos``/``sin`` [N * P, D / 2] are the rotation tables of every slot
(:func:`~stream_r1_fast.ops.rope.rope_tables`), in the compute dtype (float32; float64 for
float64 buffers). With ``m = occupied`` frames held, a chunk of F frames (``k_new`` pre-RoPE
and ``v_new``, [B, F * P, H, D], 1 <= F <= W) evicts ``E = max(0, m + F - S - W)`` frames, the
oldest window frames at slots ``[S, S + E)``:

1. Fold (when S > 0, E > 0 and alpha != 1): sink frame i <- alpha * sink_i + (1 - alpha) *
   the mean of its group of evicted frames (:func:`~stream_r1_fast.ops.ema_cache_ref.fold_group`,
   the rule of ``ema_cache_update``), evicted key S + j first turned to position i by the
   temporal rotation R(i - S - j) (values as they are): the pre-RoPE fold seen through RoPE.
2. Move: the survivors at ``[S + E, m)`` go to ``[S, m - E)``, their keys' temporal pairs (the
   first ``rope_axis_dims(D)[0] / 2``) turned by -E frames, the spatial pairs and the values copied.
3. Write: the chunk at ``[m - E, m - E + F)``, keys rotated by the full RoPE of those slots.

A turn by -n frames uses row ``n * P`` of the tables, the sine negated. The arithmetic is in the
compute dtype, each result rounded once to the buffer dtype: a rotation is
``(x0 c - x1 s, x0 s + x1 c)`` over adjacent pairs, a group mean a sum in group order divided by
the group size (a group of one is its frame as it is), the blend
``alpha * sink + (1 - alpha) * mean``. Every decision comes from the host integers m, F, S, W:
nothing is read from the device. The kernels (csrc/rotated_cache/) do the same in one pass.
"""

from __future__ import annotations

import torch

from stream_r1_fast.ops.ema_cache_ref import fold_group
from stream_r1_fast.ops.rope import rope_axis_dims

__all__ = ["evicted_frames", "rotate_rows", "rotated_cache_advance_ref"]


def evicted_frames(occupied: int, frames: int, sink_size: int, window: int) -> int:
    """E: the frames a chunk of ``frames`` evicts from a buffer holding ``occupied``."""
    return max(0, occupied + frames - sink_size - window)


def _rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Adjacent pairs of x [..., 2n] (already in the compute dtype) turned by cos/sin [..., n]."""
    x2 = x.unflatten(-1, (-1, 2))
    x0, x1 = x2[..., 0], x2[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


def rotate_rows(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, first_row: int) -> torch.Tensor:
    """x [B, L, H, D] rotated by table rows ``first_row .. first_row + L - 1`` (token l by row
    ``first_row + l``); math in the tables' dtype, result in x.dtype."""
    rows = slice(first_row, first_row + x.shape[1])
    c, s = cos[rows][None, :, None, :], sin[rows][None, :, None, :]
    return _rotate_pairs(x.to(cos.dtype), c, s).to(x.dtype)


def _turn_back(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, frames: int, tokens: int) -> torch.Tensor:
    """Rotated keys x [..., D] moved back by ``frames`` frames: the temporal pairs turned by
    -frames (row ``frames * tokens``, sine negated), the spatial ones kept; in the compute dtype."""
    tp = rope_axis_dims(x.shape[-1])[0]
    row = frames * tokens
    c, s = cos[row, : tp // 2], -sin[row, : tp // 2]
    xc = x.to(cos.dtype)
    return torch.cat([_rotate_pairs(xc[..., :tp], c, s), xc[..., tp:]], dim=-1)


def _fold(buf, cos, sin, *, sink_size: int, evict: int, alpha: float, rotate: bool) -> None:
    """The fold of the ``evict`` oldest window frames (slots [S, S + evict)) into the sink
    (slots [0, S)) of one buffer [B, N, P, H, D], in place."""
    s, p = sink_size, buf.shape[2]
    cd = cos.dtype

    def evicted(j: int, i: int) -> torch.Tensor:  # evicted frame j as seen from sink frame i
        x = buf[:, s + j]
        return _turn_back(x, cos, sin, s + j - i, p) if rotate else x.to(cd)

    if evict == s:  # the EMA-Sink default: frame for frame, every key moved back by S
        ev = buf[:, s : 2 * s]
        ev = _turn_back(ev, cos, sin, s, p) if rotate else ev.to(cd)
        buf[:, :s].copy_((alpha * buf[:, :s].to(cd) + (1.0 - alpha) * ev).to(buf.dtype))
        return
    folded = []
    for i in range(s):
        lo, hi = fold_group(i, evict, s)
        mean = evicted(lo, i)
        for j in range(lo + 1, hi):
            mean = mean + evicted(j, i)
        if hi - lo > 1:
            # A tensor divisor: true division on every device (no reciprocal).
            mean = mean / torch.full_like(mean, float(hi - lo))
        folded.append(alpha * buf[:, i].to(cd) + (1.0 - alpha) * mean)
    buf[:, :s].copy_(torch.stack(folded, dim=1).to(buf.dtype))


def rotated_cache_advance_ref(
    keys: torch.Tensor,
    values: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    occupied: int,
    sink_size: int,
    window: int,
    alpha: float,
) -> None:
    """In place. k_new/v_new: [B, F * P, H, D] with 1 <= F <= window; 0 <= occupied <= S + W."""
    b, _, p, h, d = keys.shape
    f = k_new.shape[1] // p
    m, s = occupied, sink_size
    e = evicted_frames(m, f, s, window)
    if e > 0:
        if s > 0 and float(alpha) != 1.0:
            _fold(keys, cos, sin, sink_size=s, evict=e, alpha=alpha, rotate=True)
            _fold(values, cos, sin, sink_size=s, evict=e, alpha=alpha, rotate=False)
        if m - s - e > 0:  # survivors at slots [s + e, m)
            keys[:, s : m - e].copy_(_turn_back(keys[:, s + e : m], cos, sin, e, p).to(keys.dtype))
            values[:, s : m - e].copy_(values[:, s + e : m].clone())
    start = m - e
    keys[:, start : start + f].copy_(rotate_rows(k_new, cos, sin, start * p).reshape(b, f, p, h, d))
    values[:, start : start + f].copy_(v_new.reshape(b, f, p, h, d))
