"""PyTorch definition of ``ema_cache_update`` (EMA-Sink, Reward Forcing arXiv 2512.04678; the
fold rule for every chunk/sink length: docs/method.md, section 2, "The EMA-Sink cache").

Cache layout, per layer: ``k_cache``/``v_cache`` [B, S, P, H, D], one latent frame of P
tokens per slot, stored before RoPE. Slots ``0..sink_size-1`` are the sink, the remaining
``W = S - sink_size`` slots a ring (the sliding window). ``state`` is int32 [4] =
(sink_filled, ring_start, ring_count, next_pos): sink frames written so far, ring slot of
the oldest window frame, window frames held, and the temporal position of the next chunk's
first frame. ``cache_pos`` int32 [S] holds each slot's window-relative temporal position
(sink 0.., then the window oldest first), -1 for an empty slot.

One call per chunk, with the chunk's final K/V (after the context refresh):
1. frames go to the sink until it holds ``sink_size`` frames;
2. the rest go to free ring slots;
3. once the ring is full, its oldest frames are evicted: E >= 1 frames e_0..e_{E-1}, oldest
   first. With a full sink of S = ``sink_size`` >= 1 frames, sink frame i folds in the mean
   of its group of evicted frames, token for token, K and V alike:
   ``sink_i = alpha * sink_i + (1 - alpha) * mean_{j in G_i} e_j`` with
   ``G_i = [lo_i, hi_i)``, ``lo_i = floor(i * E / S)``,
   ``hi_i = max(floor((i + 1) * E / S), lo_i + 1)`` (:func:`fold_group`). E == S folds e_i
   into sink_i (the EMA-Sink setting); E > S averages consecutive evicted frames into each
   sink frame (E=3, S=2: {e_0}, {e_1, e_2}); E < S lets consecutive sink frames share one
   (E=3, S=6: e_0, e_0, e_1, e_1, e_2, e_2). Temporal order is kept and every sink frame
   takes one EMA step per eviction, whatever the sizes. The mean is a float32 sum in group
   order divided by the group size (a group of one is its frame exactly), the blend is
   computed in float32 and rounded once. ``alpha = 1`` gives a static sink; with
   ``sink_size = 0`` nothing folds (a plain sliding window).
4. the new frames take the evicted slots, ``cache_pos`` and ``state`` are rewritten.

This reference reads ``state`` on the host; the kernels keep it on the device. The kernels
compute the groups with ``ema_fold_group`` (csrc/ema_cache/ema_cache.h), the same rule.
"""

from __future__ import annotations

import torch


def fold_group(i: int, evict: int, sink_size: int) -> tuple[int, int]:
    """Evicted frames ``[lo, hi)`` whose mean sink frame ``i`` folds in (``0 <= i < sink_size``,
    ``evict >= 1``); ``ema_fold_group`` of csrc/ema_cache/ema_cache.h."""
    lo = i * evict // sink_size
    hi = max((i + 1) * evict // sink_size, lo + 1)
    return lo, hi


def ema_cache_update_ref(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_pos: torch.Tensor,
    state: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    sink_size: int,
    alpha: float,
) -> None:
    """In place. k_new/v_new: [B, Fn * P, H, D] with 1 <= Fn <= S - sink_size."""
    b, s, p, h, d = k_cache.shape
    ring = s - sink_size
    fn = k_new.shape[1] // p
    new_k = k_new.reshape(b, fn, p, h, d)
    new_v = v_new.reshape(b, fn, p, h, d)
    sink_filled, ring_start, ring_count, _ = (int(x) for x in state.tolist())

    to_sink = min(sink_size - sink_filled, fn)
    for i in range(to_sink):
        k_cache[:, sink_filled + i] = new_k[:, i]
        v_cache[:, sink_filled + i] = new_v[:, i]
    sink_filled += to_sink

    to_ring = fn - to_sink
    evict = max(0, to_ring - (ring - ring_count))
    if evict > 0 and sink_size > 0 and to_sink == 0:
        # Every fold reads ring slots only, all before the new frames overwrite them.
        evicted = [sink_size + (ring_start + j) % ring for j in range(evict)]
        for cache in (k_cache, v_cache):
            folded = []
            for i in range(sink_size):
                lo, hi = fold_group(i, evict, sink_size)
                mean = cache[:, evicted[lo]].float()
                for j in range(lo + 1, hi):
                    mean = mean + cache[:, evicted[j]].float()
                if hi - lo > 1:
                    # A tensor divisor: true division on every device (no reciprocal).
                    mean = mean / torch.full_like(mean, float(hi - lo))
                folded.append(alpha * cache[:, i].float() + (1.0 - alpha) * mean)
            for i, value in enumerate(folded):
                cache[:, i] = value.to(cache.dtype)
    for i in range(to_ring):
        slot = sink_size + (ring_start + ring_count + i) % ring
        k_cache[:, slot] = new_k[:, to_sink + i]
        v_cache[:, slot] = new_v[:, to_sink + i]
    ring_count = min(ring, ring_count + to_ring)
    ring_start = (ring_start + evict) % ring if ring else 0

    pos = torch.full((s,), -1, dtype=torch.int32)
    pos[:sink_filled] = torch.arange(sink_filled, dtype=torch.int32)
    for age in range(ring_count):
        pos[sink_size + (ring_start + age) % ring] = sink_filled + age
    cache_pos.copy_(pos)
    state.copy_(
        torch.tensor([sink_filled, ring_start, ring_count, sink_filled + ring_count], dtype=torch.int32)
    )
