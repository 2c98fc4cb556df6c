"""One Wan transformer block and its attention projections (diffusers' parameter names):
:class:`WanBlock` and :class:`WanAttention`, used by
:class:`~stream_r1_fast.models.wan.CausalWanTransformer`. Tensor layouts as there."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.normalization import FP32LayerNorm

from stream_r1_fast.ops.qk_norm_rope import qk_norm_rope
from stream_r1_fast.ops.rope import compute_dtype


class WanAttention(nn.Module):
    """Projections of one Wan attention layer (diffusers' parameter names); the attention
    itself is done by the caller (self-attention goes through a cache or a mask)."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        # Wan normalises q and k across all heads at once.
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def self_attention_inputs(self, x: torch.Tensor) -> "SelfAttentionInputs":
        """[B, L, dim] -> the q / k projections before their norms and the values
        (:class:`SelfAttentionInputs`): the attention normalises (and rotates) them."""
        return SelfAttentionInputs(self.to_q(x), self.to_k(x), self.to_v(x).unflatten(-1, (self.heads, -1)), self)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, dim] -> [B, L, heads, head_dim]."""
        return self.norm_q(self.to_q(x)).unflatten(-1, (self.heads, -1))

    def key_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L, dim] -> two [B, L, heads, head_dim] (keys are RMS-normalised, not rotated)."""
        k = self.norm_k(self.to_k(x)).unflatten(-1, (self.heads, -1))
        return k, self.to_v(x).unflatten(-1, (self.heads, -1))

    def out(self, o: torch.Tensor) -> torch.Tensor:
        """[B, L, heads, head_dim] -> [B, L, dim]."""
        return self.to_out[0](o.flatten(-2))


def _norm_weight(norm: nn.RMSNorm, like: torch.Tensor) -> torch.Tensor:
    """The norm's weight as qk_norm_rope takes it: in like's dtype or the compute dtype."""
    w = norm.weight if norm.weight is not None else torch.ones(norm.normalized_shape, device=like.device)
    return w if w.dtype in (like.dtype, compute_dtype(like.dtype)) else w.to(compute_dtype(like.dtype))


@dataclasses.dataclass
class SelfAttentionInputs:
    """One self-attention layer's inputs for a chunk, as the block hands them to its attention:
    ``q`` / ``k`` [B, L, dim], the to_q / to_k outputs *before* Wan's RMSNorm, ``v`` [B, L, heads,
    head_dim], and ``layer``, whose norms apply. A cache that rotates q and k itself takes
    :meth:`rotated` (norms and RoPE in one fused ``qk_norm_rope`` call); everything else takes
    :meth:`normalized` (the norms as modules, pre-RoPE heads)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layer: WanAttention

    def normalized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, k) [B, L, heads, head_dim], RMS-normalised, not rotated."""
        heads = self.layer.heads
        return (self.layer.norm_q(self.q).unflatten(-1, (heads, -1)),
                self.layer.norm_k(self.k).unflatten(-1, (heads, -1)))

    def normalized_k(self) -> torch.Tensor:
        """k [B, L, heads, head_dim], RMS-normalised, not rotated (what a cache stores)."""
        return self.layer.norm_k(self.k).unflatten(-1, (self.layer.heads, -1))

    def rotated(self, cos: torch.Tensor, sin: torch.Tensor, frame_offset: int,
                tokens_per_frame: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, k) [B, L, heads, head_dim] normalised and rotated by Wan's 3-D RoPE at positions
        ``frame_offset ..`` (L = F * tokens_per_frame tokens; cos / sin: the
        :func:`~stream_r1_fast.ops.rope.rope_tables` of enough frames, in the compute dtype):
        one call of :func:`~stream_r1_fast.ops.qk_norm_rope`, the same numbers as
        :meth:`normalized` then RoPE up to float rounding (one rounding instead of two)."""
        b, tokens, dim = self.q.shape
        heads, p = self.layer.heads, tokens_per_frame
        if tokens % p:
            raise ValueError(f"the chunk's {tokens} tokens are not whole frames of {p} tokens")
        norm_q, norm_k = self.layer.norm_q, self.layer.norm_k
        eps_q = torch.finfo(self.q.dtype).eps if norm_q.eps is None else norm_q.eps
        eps_k = torch.finfo(self.k.dtype).eps if norm_k.eps is None else norm_k.eps
        if eps_q != eps_k:
            raise ValueError(f"norm_q and norm_k must share one eps for the fused op, got {eps_q} and {eps_k}")
        shape = (b, tokens // p, p, heads, dim // heads)
        q, k = qk_norm_rope(self.q.reshape(shape), self.k.reshape(shape), _norm_weight(norm_q, self.q),
                            _norm_weight(norm_k, self.k), cos, sin, frame_offset, eps_q)
        return q.flatten(1, 2), k.flatten(1, 2)


# What a block calls for its self-attention: the chunk's inputs -> [B, L, heads, head_dim].
Attend = Callable[[SelfAttentionInputs], torch.Tensor]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention over [B, L, heads, head_dim] tensors (the layout of the rest of the model)."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return o.transpose(1, 2)


class WanBlock(nn.Module):
    """One Wan transformer block: adaLN-modulated self-attention, cross-attention to text,
    adaLN-modulated GELU feed-forward. Modulation arithmetic is float32, as in Wan."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, cross_attn_norm: bool, eps: float):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim, heads, eps)
        self.attn2 = WanAttention(dim, heads, eps)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def _modulation(self, e: torch.Tensor) -> list[torch.Tensor]:
        """e [B, F, 6, dim] -> six float32 [B, F, 1, dim] (broadcast over a frame's tokens)."""
        mod = self.scale_shift_table.float() + e.float()
        return [m.unsqueeze(2) for m in mod.unbind(2)]

    def forward(
        self,
        x: torch.Tensor,
        e: torch.Tensor,
        text_k: torch.Tensor,
        text_v: torch.Tensor | None,
        attend: Attend | None,
        self_kv_only: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x [B, F, P, dim]; e [B, F, 6, dim]; text_k/v [B, Lt, heads, head_dim] (encoded), or
        ``text_k`` the projected text states [B, Lt, dim] and ``text_v`` None (lazy: the block
        computes its cross-attention K/V here); ``attend(inputs)`` does the self-attention of
        the chunk's :class:`SelfAttentionInputs` (projections before the q / k norms; the
        attention normalises and rotates them). ``self_kv_only``: return the self-attention
        ``(k, v)`` (k normalised, pre-RoPE) and stop (the last block of a context-refresh
        forward)."""
        shift, scale, gate, c_shift, c_scale, c_gate = self._modulation(e)
        n = (self.norm1(x.float()) * (1 + scale) + shift).type_as(x).flatten(1, 2)
        if self_kv_only:
            return self.attn1.key_value(n)
        inputs = self.attn1.self_attention_inputs(n)
        if text_v is None:
            text_k, text_v = self.attn2.key_value(text_k)
        o = self.attn1.out(attend(inputs)).view_as(x)
        x = (x.float() + o * gate).type_as(x)

        n = self.norm2(x.float()).type_as(x).flatten(1, 2)
        o = self.attn2.out(sdpa(self.attn2.query(n), text_k, text_v)).view_as(x)
        x = x + o

        n = (self.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
        return (x.float() + self.ffn(n).float() * c_gate).type_as(x)


__all__ = ["Attend", "SelfAttentionInputs", "WanAttention", "WanBlock", "sdpa"]
