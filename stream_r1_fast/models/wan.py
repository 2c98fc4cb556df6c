"""The Wan2.1 text-to-video transformer, with a chunk-causal streaming forward.

Parameter names and shapes are those of diffusers' ``WanTransformer3DModel`` (so a diffusers
``transformer/`` directory loads as it is), and so is its config. Two ways to run it:

* :meth:`CausalWanTransformer.forward` — a whole latent video at once, bidirectional (the
  teacher, the critic, parity with diffusers) or block-causal by chunks of frames
  (``causal_chunk_frames``, the student trained with teacher forcing).
* :meth:`CausalWanTransformer.forward_chunk` — one chunk of latent frames against a KV cache
  (:mod:`stream_r1_fast.cache`): self-attention through the cache's fused ``sink_attention``,
  cross-attention to text K/V computed once per prompt (:meth:`encode_text`).

Text conditioning comes as a :class:`TextContext` in one of two forms: *encoded* (every
block's cross-attention K/V, computed once per prompt by :meth:`encode_text` — inference) or
*lazy* (the projected text states only, :meth:`embed_text`; each block computes its own K/V
inside its forward). The lazy form keeps every parameter use inside the forward of the module
that owns it, which is what per-block FSDP2 sharding needs (training under ``torchrun``, see
:func:`stream_r1_fast.training.sharding.shard_model`); both forms give the same numbers.

Tensor layouts: latents ``[B, C, F, H, W]``; inside the blocks, tokens ``[B, F, P, dim]`` with
``P = (H / 2) * (W / 2)`` tokens per latent frame (row-major), attention heads ``[B, L, heads,
head_dim]``. Timesteps are in [0, 1000], one per sample or one per latent frame.

The conditioning types (:class:`TextContext`, :class:`TimeContext`, :class:`KVCache`) are in
:mod:`stream_r1_fast.models.contexts`, the block (:class:`WanBlock`) in
:mod:`stream_r1_fast.models.wan_blocks`; this module holds the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanTimeTextImageEmbedding

from stream_r1_fast.models.contexts import KVCache, TextContext, TimeContext
from stream_r1_fast.models.wan_blocks import WanBlock, sdpa
from stream_r1_fast.ops.rope import rope_angles

# KVCache, TextContext and TimeContext live in models/contexts.py, WanBlock in models/wan_blocks.py;
# they are imported here for the model's signatures and stay importable from this module.
__all__ = ["CausalWanTransformer", "KVCache", "TextContext", "TimeContext"]


class CausalWanTransformer(ModelMixin, ConfigMixin):
    """Wan2.1 text-to-video DiT (any size by config), loadable from diffusers' layout.

    Config keys are diffusers' ``WanTransformer3DModel`` keys; see
    :mod:`stream_r1_fast.models.configs` for the 1.3B / 14B / tiny presets. Image conditioning
    (Wan I2V: ``image_dim``, ``added_kv_proj_dim``) is not supported.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["WanBlock"]
    rope_theta = 10000.0

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
    ) -> None:
        super().__init__()
        if image_dim is not None or added_kv_proj_dim is not None or pos_embed_seq_len is not None:
            raise ValueError(
                "CausalWanTransformer is text-to-video only: image_dim, added_kv_proj_dim and "
                f"pos_embed_seq_len must be None (got {image_dim}, {added_kv_proj_dim}, {pos_embed_seq_len})"
            )
        if qk_norm != "rms_norm_across_heads":
            raise ValueError(f"qk_norm must be 'rms_norm_across_heads' (Wan2.1), got {qk_norm!r}")
        if len(patch_size) != 3 or patch_size[0] != 1:
            raise ValueError(f"patch_size must be (1, ph, pw) (one latent frame per token), got {patch_size}")
        dim = num_attention_heads * attention_head_dim
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=dim, time_freq_dim=freq_dim, time_proj_dim=dim * 6, text_embed_dim=text_dim
        )
        self.blocks = nn.ModuleList(
            [WanBlock(dim, ffn_dim, num_attention_heads, cross_attn_norm, eps) for _ in range(num_layers)]
        )
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, (out_channels or in_channels) * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.gradient_checkpointing = False

    # ----------------------------------------------------------------------------- pieces

    @property
    def dim(self) -> int:
        return self.config.num_attention_heads * self.config.attention_head_dim

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (rows, cols) of a latent frame of the given size."""
        _, ph, pw = self.config.patch_size
        if height % ph or width % pw:
            raise ValueError(f"latent height/width ({height}, {width}) must be multiples of the patch {ph}x{pw}")
        return height // ph, width // pw

    def _embed(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, F, H, W] -> tokens [B, F, P, dim]."""
        if latents.dim() != 5 or latents.shape[1] != self.config.in_channels:
            raise ValueError(
                f"latents must be [B, {self.config.in_channels}, F, H, W], got shape {tuple(latents.shape)}"
            )
        x = self.patch_embedding(latents.to(self.patch_embedding.weight.dtype))
        return x.permute(0, 2, 3, 4, 1).flatten(2, 3)

    def time_context(self, timestep: torch.Tensor | float, batch: int, frames: int, device=None) -> TimeContext:
        """The :class:`TimeContext` of ``timestep`` (scalar, [B] or [B, F]) for ``batch`` samples
        of ``frames`` latent frames (on the model's device unless ``device``)."""
        temb, e = self._time(timestep, batch, frames, device or self.patch_embedding.weight.device)
        return TimeContext(temb, e)

    def _time(self, timestep: torch.Tensor | float | TimeContext, batch: int, frames: int, device
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps (scalar, [B] or [B, F], or a precomputed TimeContext) -> (temb [B, F, dim],
        e [B, F, 6, dim])."""
        if isinstance(timestep, TimeContext):
            if tuple(timestep.e.shape[:2]) != (batch, frames):
                raise ValueError(f"the time context is for [B, F] = {list(timestep.e.shape[:2])}, the latents "
                                 f"are [{batch}, {frames}]")
            return timestep.temb, timestep.e
        t = torch.as_tensor(timestep, device=device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            t = t[:, None].expand(batch, frames)
        if tuple(t.shape) != (batch, frames):
            raise ValueError(f"timestep must be a scalar, [B] or [B, F] = [{batch}, {frames}], got {tuple(t.shape)}")
        ce = self.condition_embedder
        t_freq = ce.timesteps_proj(t.reshape(-1))
        t_freq = t_freq.to(ce.time_embedder.linear_1.weight.dtype)
        temb = ce.time_embedder(t_freq).to(self.patch_embedding.weight.dtype)
        e = ce.time_proj(ce.act_fn(temb))
        return temb.view(batch, frames, -1), e.view(batch, frames, 6, -1)

    def _head(self, x: torch.Tensor, temb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Tokens [B, F, P, dim] -> velocity [B, C_out, F, H, W]."""
        shift, scale = (self.scale_shift_table.float() + temb.float().unsqueeze(2)).unsqueeze(3).unbind(2)
        x = (self.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = self.proj_out(x)
        b, f = x.shape[:2]
        pt, ph, pw = self.config.patch_size
        x = x.reshape(b, f, grid[0], grid[1], pt, ph, pw, -1)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _run_block(self, block: WanBlock, x, e, text: TextContext, i: int, attend) -> torch.Tensor:
        text_k, text_v = text.layer(i)
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, x, e, text_k, text_v, attend)
        return block(x, e, text_k, text_v, attend)

    def _blocks_sharded(self) -> bool:
        """Whether the blocks are FSDP2 units of their own (their parameters are sharded
        outside their forwards)."""
        try:
            from torch.distributed.fsdp import FSDPModule
        except ImportError:  # pragma: no cover - torch without distributed
            return False
        return len(self.blocks) > 0 and isinstance(self.blocks[0], FSDPModule)

    def embed_text(self, encoder_hidden_states: torch.Tensor) -> TextContext:
        """Text embeddings [B, Lt, text_dim] (UMT5 output) -> a lazy :class:`TextContext` (the
        projected text states; every block computes its K/V in its own forward)."""
        return self._embed_text(encoder_hidden_states)

    # The public text methods get FSDP forward hooks under sharding (shard_model); the model's
    # own methods call this unhooked one, so that no nested hook reshards the root mid-forward.
    def _embed_text(self, encoder_hidden_states: torch.Tensor) -> TextContext:
        if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[-1] != self.config.text_dim:
            raise ValueError(
                f"encoder_hidden_states must be [B, text_len, {self.config.text_dim}], "
                f"got shape {tuple(encoder_hidden_states.shape)}"
            )
        dtype = self.patch_embedding.weight.dtype
        return TextContext.lazy(self.condition_embedder.text_embedder(encoder_hidden_states.to(dtype)))

    def encode_text(self, encoder_hidden_states: torch.Tensor) -> TextContext:
        """Text embeddings [B, Lt, text_dim] (UMT5 output) -> every block's cross-attention K/V,
        computed once (per prompt, for all the forwards that follow).

        When the blocks are FSDP2 units of their own, their projections cannot be used outside
        their forwards: the lazy context of :meth:`embed_text` is returned instead."""
        ctx = self._embed_text(encoder_hidden_states)
        if self._blocks_sharded():
            return ctx
        kv = [block.attn2.key_value(ctx.states) for block in self.blocks]
        return TextContext(torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv]))

    def _text(self, text: torch.Tensor | TextContext, batch: int) -> TextContext:
        ctx = text if isinstance(text, TextContext) else self._embed_text(text)
        if ctx.batch_size != batch:
            raise ValueError(f"text batch ({ctx.batch_size}) does not match the latents' batch ({batch})")
        return ctx

    # ----------------------------------------------------------------------------- forwards

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor | TextContext,
        causal_chunk_frames: int | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Velocity prediction for a whole latent video.

        Args:
            hidden_states: latents [B, C, F, H, W].
            timestep: scalar, [B] or [B, F] (per latent frame), in [0, 1000].
            encoder_hidden_states: text embeddings [B, Lt, text_dim] (each block projects its
                own K/V, as from :meth:`embed_text`) or a :class:`TextContext`.
            causal_chunk_frames: None for bidirectional attention; n for block-causal attention
                over chunks of n frames (a frame sees its own chunk and all earlier chunks), as the
                streaming forward sees them with an unbounded cache.
        Returns:
            ``v = eps - x0`` [B, C_out, F, H, W] (``.sample`` of the output, or a 1-tuple).
        """
        b, _, f, h, w = hidden_states.shape
        grid = self.latent_grid(h, w)
        x = self._embed(hidden_states)
        temb, e = self._time(timestep, b, f, x.device)
        text = self._text(encoder_hidden_states, b)

        p = grid[0] * grid[1]
        ang = rope_angles(torch.arange(f, device=x.device), grid[0], grid[1], self.config.attention_head_dim, self.rope_theta)
        cos, sin = ang.cos().float()[None, :, None], ang.sin().float()[None, :, None]
        mask = None
        if causal_chunk_frames is not None:
            if causal_chunk_frames < 1:
                raise ValueError(f"causal_chunk_frames must be >= 1, got {causal_chunk_frames}")
            chunk = torch.arange(f, device=x.device).repeat_interleave(p) // causal_chunk_frames
            mask = chunk[:, None] >= chunk[None, :]

        def rotate(t: torch.Tensor) -> torch.Tensor:
            t2 = t.float().unflatten(-1, (-1, 2))
            a, c = t2[..., 0], t2[..., 1]
            return torch.stack([a * cos - c * sin, a * sin + c * cos], -1).flatten(-2).type_as(t)

        def attend(inputs):
            q, k = inputs.normalized()
            return sdpa(rotate(q), rotate(k), inputs.v, mask)

        for i, block in enumerate(self.blocks):
            x = self._run_block(block, x, e, text, i, attend)
        out = self._head(x, temb, grid)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def forward_chunk(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float,
        text: TextContext | torch.Tensor,
        cache: KVCache,
        update_cache: bool = False,
    ) -> torch.Tensor | None:
        """One streaming forward of a chunk of latent frames against the KV cache.

        Args:
            latents: [B, C, Fq, H, W], the chunk (noisy, or clean for the context refresh).
            timestep: scalar, [B] or [B, Fq], or a :class:`TimeContext` computed once for it.
            text: a :class:`TextContext` (:meth:`encode_text`, or lazy from :meth:`embed_text`),
                or text embeddings [B, Lt, text_dim].
            cache: the self-attention cache; the chunk attends to its frames and to itself.
            update_cache: the context-refresh forward: every block writes the chunk's K/V to the
                cache after attending, and nothing after the last block's K/V is computed.
        Returns:
            velocity [B, C_out, Fq, H, W], or None when ``update_cache``.
        """
        b, _, f, h, w = latents.shape
        grid = self.latent_grid(h, w)
        if tuple(cache.grid) != grid:
            raise ValueError(f"the cache was made for a {tuple(cache.grid)} token grid, the latents give {grid}")
        text = self._text(text, b)
        x = self._embed(latents)
        temb, e = self._time(timestep, b, f, x.device)
        last = len(self.blocks) - 1
        # A cache that rotates q and k itself takes the projections before their norms and fuses
        # norms and RoPE (RotatedSinkKVCache: one qk_norm_rope call per block); any other gets
        # the normalised pre-RoPE heads (the KVCache protocol, models/contexts.py).
        attend_inputs = getattr(cache, "attend_inputs", None)
        for i, block in enumerate(self.blocks):
            if update_cache and i == last:
                k, v = block(x, e, None, None, None, self_kv_only=True)
                cache.update(i, k, v)
                return None

            def attend(inputs, layer=i):
                if attend_inputs is not None:
                    out = attend_inputs(layer, inputs)
                    if update_cache:
                        cache.update(layer, inputs.normalized_k(), inputs.v)
                    return out
                q, k = inputs.normalized()
                out = cache.attend(layer, q, k, inputs.v)
                if update_cache:
                    cache.update(layer, k, inputs.v)
                return out

            x = self._run_block(block, x, e, text, i, attend)
        return self._head(x, temb, grid)
