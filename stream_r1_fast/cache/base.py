"""What both KV-cache storages share: the policy (:class:`CachePolicy`, with the one
window-must-hold-a-chunk rule, :meth:`CachePolicy.check_chunk`), the sizes read off a model,
and :class:`StreamingKVCache`, the base of :class:`~stream_r1_fast.cache.SinkKVCache` and
:class:`~stream_r1_fast.cache.RotatedSinkKVCache`: construction (also from a model), copying
itself (:meth:`StreamingKVCache.snapshot`) and its byte count. Only cache classes touch their
tensors; everything outside ``cache/`` goes through these methods and the KVCache protocol
(``begin_chunk`` / ``attend`` / ``update``).
"""

from __future__ import annotations

import copy
import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class CachePolicy:
    """How much context a stream keeps.

    sink_frames: latent frames of attention sink (0: no sink, a plain sliding window).
    window_frames: latent frames of the sliding window (a ring), >= 1; must hold at least one
        chunk (:meth:`check_chunk`).
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

    def check_chunk(self, chunk_frames) -> int:
        """``chunk_frames`` if chunks of that many latent frames fit this cache (an int in
        [1, window_frames]: the window must hold a chunk), else a ValueError saying so."""
        if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or \
                not 1 <= chunk_frames <= self.window_frames:
            raise ValueError(f"chunk_frames must be an int in [1, window_frames = {self.window_frames}] "
                             f"(the window must hold a chunk), got {chunk_frames!r}")
        return chunk_frames


def model_cache_sizes(model, batch_size: int, latent_height: int, latent_width: int, dtype=None, device=None) -> dict:
    """The constructor arguments every cache class shares, read off ``model`` (a
    CausalWanTransformer) for latent frames of H x W: layers, batch, token grid, heads, head
    dim, and dtype / device (default: the model's parameters')."""
    cfg = model.config
    param = next(model.parameters())
    return dict(num_layers=cfg.num_layers, batch_size=batch_size, grid=model.latent_grid(latent_height, latent_width),
                heads=cfg.num_attention_heads, head_dim=cfg.attention_head_dim, dtype=dtype or param.dtype,
                device=device or param.device)


def _clone(value):
    return [t.clone() for t in value] if isinstance(value, list) else value.clone()


class StreamingKVCache:
    """Base of the cache storages: checks and keeps the shared constructor arguments, then
    lets the subclass allocate (:meth:`_allocate`, with its own keyword ``options``).

    A subclass names in :attr:`_state` the attributes holding what it writes (tensors, or
    lists of tensors); :meth:`snapshot`, :meth:`tensors` and :meth:`nbytes` work from them.
    """

    #: The name the pipeline's and the rollout's ``cache_impl`` option use for the class.
    impl_name: str = ""
    #: Attributes with the cache's written state (tensors or lists of tensors).
    _state: tuple[str, ...] = ()

    def __init__(self, num_layers: int, batch_size: int, grid: tuple[int, int], heads: int, head_dim: int,
                 policy: CachePolicy = CachePolicy(), *, dtype: torch.dtype = torch.bfloat16,
                 device: torch.device | str | None = None, **options):
        if batch_size < 1 or num_layers < 1:
            raise ValueError(f"batch_size and num_layers must be >= 1, got {batch_size} and {num_layers}")
        if not isinstance(policy, CachePolicy):
            raise TypeError(f"policy must be a CachePolicy, got {type(policy).__name__}")
        self.policy = policy
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_layers = num_layers
        self._allocate(batch_size, heads, head_dim, dtype, device, **options)

    def _allocate(self, batch_size: int, heads: int, head_dim: int, dtype: torch.dtype, device, **options) -> None:
        raise NotImplementedError

    @classmethod
    def _model_options(cls, model, policy: CachePolicy, chunk_frames: int | None) -> dict:
        """The subclass's constructor options for :meth:`for_model`."""
        return {}

    @classmethod
    def for_model(cls, model, batch_size: int, latent_height: int, latent_width: int,
                  policy: CachePolicy = CachePolicy(), *, chunk_frames: int | None = None,
                  dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        """A cache sized for ``model`` (a CausalWanTransformer) and latent frames of H x W, for
        chunks of at most ``chunk_frames`` latent frames (checked against the window by
        :meth:`CachePolicy.check_chunk`; default: the window). dtype / device: the model's."""
        if chunk_frames is not None:
            policy.check_chunk(chunk_frames)
        return cls(**model_cache_sizes(model, batch_size, latent_height, latent_width, dtype, device), policy=policy,
                   **cls._model_options(model, policy, chunk_frames))

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def snapshot(self):
        """An independent copy: its own state tensors and host state (anything else, e.g. RoPE
        tables, is shared: never written). What a gradient-carrying forward attends to while the
        refresh then updates the live cache in place."""
        snap = copy.copy(self)
        for name in self._state:
            setattr(snap, name, _clone(getattr(self, name)))
        return snap

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The state tensors, flattened (:attr:`_state` order)."""
        out = []
        for name in self._state:
            value = getattr(self, name)
            out.extend(value if isinstance(value, list) else [value])
        return tuple(out)

    def nbytes(self) -> int:
        """Bytes held by the state tensors (constant for the cache's lifetime)."""
        return sum(t.untyped_storage().nbytes() for t in self.tensors())


__all__ = ["CachePolicy", "StreamingKVCache", "model_cache_sizes"]
