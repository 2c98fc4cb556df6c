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

import copy
import dataclasses

import torch

from stream_r1_fast.ops import ema_cache_update, sink_attention


@dataclasses.dataclass(frozen=True)
class CachePolicy:
    """How much context a stream keeps.

    sink_frames: latent frames of attention sink (0: no sink, a plain sliding window).
    window_frames: latent frames of the sliding window (a ring), >= 1; must hold at least one
        chunk.
    alpha: EMA weight of the old sink each time evicted frames are folded in (one EMA step per
        sink frame per eviction, at every chunk and sink length; ``1.0``: a static sink that
        keeps the first frames; Reward Forcing: 0.999).
    """

    sink_frames: int = 3
    window_frames: int = 3
    alpha: float = 0.999

    def __post_init__(self):
        if isinstance(self.sink_frames, bool) or not isinstance(self.sink_frames, int) or self.sink_frames < 0:
            raise ValueError(f"sink_frames must be an int >= 0, got {self.sink_frames!r}")
        if isinstance(self.window_frames, bool) or not isinstance(self.window_frames, int) or self.window_frames < 1:
            raise ValueError(f"window_frames must be an int >= 1, got {self.window_frames!r}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")

    @classmethod
    def ema_sink(cls, sink_frames: int = 3, window_frames: int = 3, alpha: float = 0.999) -> "CachePolicy":
        """Reward Forcing's EMA-Sink (the default)."""
        return cls(sink_frames, window_frames, alpha)

    @classmethod
    def static_sink(cls, sink_frames: int = 3, window_frames: int = 3) -> "CachePolicy":
        """The first frames stay the sink for ever (Self-Forcing / StreamingLLM style)."""
        return cls(sink_frames, window_frames, 1.0)

    @classmethod
    def no_sink(cls, window_frames: int = 6) -> "CachePolicy":
        """A plain sliding window."""
        return cls(0, window_frames, 1.0)

    @property
    def slots(self) -> int:
        return self.sink_frames + self.window_frames


def model_cache_sizes(model, batch_size: int, latent_height: int, latent_width: int, dtype=None, device=None) -> dict:
    """The constructor arguments every cache class shares, read off ``model`` (a
    CausalWanTransformer) for latent frames of H x W: layers, batch, token grid, heads, head
    dim, and dtype / device (default: the model's parameters')."""
    cfg = model.config
    param = next(model.parameters())
    return dict(num_layers=cfg.num_layers, batch_size=batch_size, grid=model.latent_grid(latent_height, latent_width),
                heads=cfg.num_attention_heads, head_dim=cfg.attention_head_dim, dtype=dtype or param.dtype,
                device=device or param.device)


class SinkKVCache:
    """KV cache of all blocks of a :class:`~stream_r1_fast.models.CausalWanTransformer` for a
    batch of streams (the :class:`~stream_r1_fast.models.KVCache` protocol).

    Tensors (fixed size, allocated once): ``keys``/``values`` [num_layers, B, S, P, heads,
    head_dim], ``positions`` int32 [num_layers, S], ``state`` int32 [num_layers, 4]; block i uses
    the contiguous views ``keys[i]`` etc. Every block holds the same frames (one update per block
    per chunk), so the per-block position tables are equal.
    """

    #: The name the pipeline's and the rollout's ``cache_impl`` option use for this class.
    impl_name = "fused"

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        grid: tuple[int, int],
        heads: int,
        head_dim: int,
        policy: CachePolicy = CachePolicy(),
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ):
        if batch_size < 1 or num_layers < 1:
            raise ValueError(f"batch_size and num_layers must be >= 1, got {batch_size} and {num_layers}")
        self.policy = policy
        self.grid = (int(grid[0]), int(grid[1]))
        p = self.grid[0] * self.grid[1]
        shape = (num_layers, batch_size, policy.slots, p, heads, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.positions = torch.full((num_layers, policy.slots), -1, dtype=torch.int32, device=device)
        self.state = torch.zeros((num_layers, 4), dtype=torch.int32, device=device)

    @classmethod
    def for_model(
        cls,
        model,
        batch_size: int,
        latent_height: int,
        latent_width: int,
        policy: CachePolicy = CachePolicy(),
        *,
        chunk_frames: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> "SinkKVCache":
        """A cache sized for ``model`` (a CausalWanTransformer) and latent frames of H x W.
        ``chunk_frames``: accepted for the interface of
        :meth:`RotatedSinkKVCache.for_model <stream_r1_fast.cache.RotatedSinkKVCache.for_model>`;
        this cache takes any chunk up to the window, so it only checks that one fits."""
        if chunk_frames is not None and not 1 <= chunk_frames <= policy.window_frames:
            raise ValueError(
                f"chunk_frames must be in [1, window_frames = {policy.window_frames}], got {chunk_frames!r}"
            )
        return cls(**model_cache_sizes(model, batch_size, latent_height, latent_width, dtype, device), policy=policy)

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

    def snapshot(self) -> "SinkKVCache":
        """An independent copy (its own tensors): what a gradient-carrying forward attends to
        while the live cache is updated in place afterwards."""
        snap = copy.copy(self)
        snap.keys, snap.values = self.keys.clone(), self.values.clone()
        snap.positions, snap.state = self.positions.clone(), self.state.clone()
        return snap

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.keys, self.values, self.positions, self.state)

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors (constant for the cache's lifetime)."""
        return sum(t.untyped_storage().nbytes() for t in self.tensors())
