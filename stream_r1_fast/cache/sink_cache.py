"""The streaming KV cache: one EMA-Sink ring buffer per transformer block, on the fused ops.

Per block the cache holds ``sink_frames + window_frames`` latent frames of pre-RoPE K/V
(``S`` slots), a slot -> temporal-position table and a 4-int state, all on the device. A chunk
attends to [occupied slots | itself] through :func:`~stream_r1_fast.ops.sink_attention` (RoPE
from the position table, window-relative), and after its context refresh its clean K/V enter
the cache through :func:`~stream_r1_fast.ops.ema_cache_update` (sink first, then the ring;
when the ring is full the oldest frames are evicted and EMA-folded into the sink whatever
their number: sink frame i folds in the mean of its group of evicted frames,
``[floor(i*E/S), max(floor((i+1)*E/S), floor(i*E/S)+1))`` for E evicted and S sink frames,
so E == S folds frame for frame, more are averaged, fewer are shared; docs/method.md,
section 2). With ``sink_frames = 0`` nothing folds (a sliding window). Nothing reads the
device state on the host, so a chunk step has no host synchronisation and the tensors never
change size.

Reward Forcing's cache of ``local_attn_size`` frames *including* the current chunk maps to
``sink_frames + window_frames = local_attn_size - chunk_frames`` persistent slots here (the
chunk's own K/V are passed to the attention separately): its defaults (9 frames, sink 3,
chunks of 3) are ``CachePolicy(sink_frames=3, window_frames=3)``.
"""

from __future__ import annotations

import torch

from stream_r1_fast.cache.base import StreamingKVCache
from stream_r1_fast.ops import ema_cache_update, sink_attention


class SinkKVCache(StreamingKVCache):
    """KV cache of all blocks of a :class:`~stream_r1_fast.models.CausalWanTransformer` for a
    batch of streams (the :class:`~stream_r1_fast.models.KVCache` protocol).

    Tensors (fixed size, allocated once): ``keys``/``values`` [num_layers, B, S, P, heads,
    head_dim], ``positions`` int32 [num_layers, S], ``state`` int32 [num_layers, 4]; block i uses
    the contiguous views ``keys[i]`` etc. Every block holds the same frames (one update per block
    per chunk), so the per-block position tables are equal. Any chunk up to the window fits
    (``for_model``'s ``chunk_frames`` is only checked); construction, :meth:`snapshot` and
    :meth:`nbytes` come from :class:`~stream_r1_fast.cache.base.StreamingKVCache`.
    """

    impl_name = "fused"
    _state = ("keys", "values", "positions", "state")

    def _allocate(self, batch_size: int, heads: int, head_dim: int, dtype: torch.dtype, device) -> None:
        slots = self.policy.slots
        shape = (self.num_layers, batch_size, slots, self.tokens_per_frame, heads, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.positions = torch.full((self.num_layers, slots), -1, dtype=torch.int32, device=device)
        self.state = torch.zeros((self.num_layers, 4), dtype=torch.int32, device=device)

    # ------------------------------------------------------------------ the KVCache protocol

    def begin_chunk(self) -> None:
        """Nothing to do: the chunk's K/V enter the cache on its refresh (:meth:`update`)."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Block ``layer``'s chunk queries against its cache and the chunk: [B, Lq, heads, D]."""
        return sink_attention(
            q,
            k,
            v,
            self.keys[layer],
            self.values[layer],
            self.positions[layer],
            self.state[layer, 3:4],
            self.grid[0],
            self.grid[1],
            rope_theta=10000.0,
        )

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write a chunk's K/V [B, Fq * P, heads, D] into block ``layer``'s cache, in place."""
        ema_cache_update(
            self.keys[layer],
            self.values[layer],
            self.positions[layer],
            self.state[layer],
            k.contiguous(),
            v.contiguous(),
            self.policy.sink_frames,
            float(self.policy.alpha),
        )

    # ------------------------------------------------------------------ housekeeping

    def reset(self) -> None:
        """Empty every slot (a new video), keeping the storage."""
        self.positions.fill_(-1)
        self.state.zero_()

    def clear_window(self) -> None:
        """Empty the window of a cache whose sink is full, keeping the sink's K/V as they are:
        the next :meth:`update` writes the window from its first slot, at the positions after the
        sink (a KV recache at a prompt switch re-feeds the window this way). No host sync."""
        s = self.policy.sink_frames
        self.positions[:, s:] = -1
        self.state[:, 1:3] = 0  # state per block: (sink_filled, ring_start, ring_count, next_pos)
        self.state[:, 3] = self.state[:, 0]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]
