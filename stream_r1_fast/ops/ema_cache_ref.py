"""PyTorch definition of ``ema_cache_update`` (EMA-Sink, Reward Forcing arXiv 2512.04678).

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
3. once the ring is full, its oldest frames are evicted. If exactly ``sink_size`` frames are
   evicted (chunk length == sink length, the EMA-Sink setting), evicted frame j is folded
   into sink frame j token for token, K and V alike: ``sink = alpha*sink + (1-alpha)*evicted``
   (computed in float32). Otherwise the evicted frames are simply overwritten (dropped), as
   Reward Forcing's cache does when the lengths differ. ``alpha = 1`` gives a static sink.
4. the new frames take the evicted slots, ``cache_pos`` and ``state`` are rewritten.

This reference reads ``state`` on the host; the kernels keep it on the device.
"""

from __future__ import annotations

import torch


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
    if evict > 0 and evict == sink_size:
        for j in range(evict):
            slot = sink_size + (ring_start + j) % ring
            for cache in (k_cache, v_cache):
                folded = alpha * cache[:, j].float() + (1.0 - alpha) * cache[:, slot].float()
                cache[:, j] = folded.to(cache.dtype)
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
