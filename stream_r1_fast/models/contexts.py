"""The conditioning and cache types :class:`~stream_r1_fast.models.wan.CausalWanTransformer`
takes: :class:`TextContext` (per-prompt text conditioning, encoded or lazy), :class:`TimeContext`
(per-timestep modulation) and the :class:`KVCache` protocol a streaming cache implements."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch


class KVCache(Protocol):
    """What :meth:`CausalWanTransformer.forward_chunk` needs from a self-attention cache.

    ``attend`` returns the chunk's attention output ``[B, Lq, heads, head_dim]`` from its
    pre-RoPE ``q, k, v`` (q and k RMS-normalised) and the cached frames; ``update`` stores the
    chunk's K/V (k normalised, pre-RoPE; called on the context-refresh forward only);
    ``begin_chunk`` is called once before a chunk's first forward.
    :class:`stream_r1_fast.cache.SinkKVCache` is the production implementation.

    Optional: ``attend_inputs(layer, inputs)``, the same output from the chunk's
    :class:`~stream_r1_fast.models.wan_blocks.SelfAttentionInputs` (the q / k projections
    before their norms, and v). A cache that rotates q and k itself defines it to fuse the
    norms with its RoPE (:class:`stream_r1_fast.cache.RotatedSinkKVCache`: one
    ``qk_norm_rope`` call per block); ``forward_chunk`` then calls it instead of ``attend``.
    """

    grid: tuple[int, int]

    def begin_chunk(self) -> None: ...

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None: ...


@dataclasses.dataclass
class TextContext:
    """The text conditioning of every block for one batch of prompts, in one of two forms.

    * encoded: ``keys``/``values`` [num_layers, B, text_len, heads, head_dim], every block's
      cross-attention K/V, computed once per prompt by :meth:`CausalWanTransformer.encode_text`
      (inference; :meth:`copy_` swaps prompts in place, the tensors keep their storage, e.g. for
      a captured CUDA graph).
    * lazy (:meth:`lazy`, :meth:`CausalWanTransformer.embed_text`): ``states`` [B, text_len, dim],
      the projected text embeddings only; each block computes its K/V inside its own forward
      (per-block FSDP: no block parameter is used outside its block's forward).
    """

    keys: torch.Tensor | None
    values: torch.Tensor | None
    states: torch.Tensor | None = None

    @classmethod
    def lazy(cls, states: torch.Tensor) -> "TextContext":
        """A lazy context of projected text states [B, text_len, dim]."""
        return cls(None, None, states)

    @property
    def is_lazy(self) -> bool:
        return self.keys is None

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block ``i``'s text input: ``(keys, values)``, or ``(states, None)`` when lazy."""
        return (self.states, None) if self.is_lazy else (self.keys[i], self.values[i])

    def copy_(self, other: "TextContext") -> "TextContext":
        if other.is_lazy != self.is_lazy:
            raise ValueError("cannot copy a lazy text context into an encoded one or vice versa")
        src, dst = (other.states, self.states) if self.is_lazy else (other.keys, self.keys)
        if src.shape != dst.shape:
            raise ValueError(
                f"cannot copy a text context of shape {tuple(src.shape)} into one of shape "
                f"{tuple(dst.shape)} (same batch and text length needed)"
            )
        if self.is_lazy:
            self.states.copy_(other.states)
        else:
            self.keys.copy_(other.keys)
            self.values.copy_(other.values)
        return self

    @property
    def batch_size(self) -> int:
        return self.states.shape[0] if self.is_lazy else self.keys.shape[1]


@dataclasses.dataclass
class TimeContext:
    """The time conditioning of one forward, computed once per timestep value
    (:meth:`CausalWanTransformer.time_context`) and reused by every forward at that timestep
    (a sampler's fixed step list): ``temb`` [B, F, dim] (the output head's modulation input) and
    ``e`` [B, F, 6, dim] (every block's modulation). Passing one as the ``timestep`` of a
    forward skips the timestep embedding, and with it a host-to-device copy of the timestep."""

    temb: torch.Tensor
    e: torch.Tensor


__all__ = ["KVCache", "TextContext", "TimeContext"]
