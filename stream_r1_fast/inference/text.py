"""The UMT5 text encoder (transformers) with an embedding cache per prompt, from a diffusers
Wan folder (``tokenizer/``, ``text_encoder/``) or the original one (``google/umt5-xxl/``,
``models_t5_umt5-xxl-enc-bf16.pth``: Wan's own T5 code's names, mapped here onto
transformers' ``UMT5EncoderModel``), optionally kept on the CPU between prompt switches."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

import torch

# Wan's T5 encoder (wan/modules/t5.py: T5Encoder of T5SelfAttention blocks) -> transformers'
# UMT5EncoderModel. Per block: norm1 -> layer.0.layer_norm, attn.{q,k,v,o} -> SelfAttention.*,
# pos_embedding.embedding (a relative-position bias in every block: UMT5) ->
# SelfAttention.relative_attention_bias, norm2 -> layer.1.layer_norm, and the gated GELU
# feed-forward fc2(fc1(x) * gelu(gate.0(x))) -> wo(wi_1(x) * gelu_new(wi_0(x))).
_T5_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
# Not in the weights: Wan's T5RelativeEmbedding(max_dist=128), T5LayerNorm(eps=1e-6).
_T5_MAX_DISTANCE = 128
_T5_EPS = 1e-6


def convert_wan_t5_to_umt5(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan's T5 encoder state dict (``token_embedding``, ``blocks.N.attn.q``, ``norm``...) in the
    names of transformers' ``UMT5EncoderModel`` (tensors are not copied)."""
    from stream_r1_fast.models.loading import CheckpointError

    out, unknown = {}, []
    for key, value in state_dict.items():
        m = re.match(r"^blocks\.(\d+)\.(.+)$", key)
        if key == "token_embedding.weight":
            out["shared.weight"] = out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif m and m[2] in _T5_BLOCK:
            out[f"encoder.block.{m[1]}.{_T5_BLOCK[m[2]]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"not Wan's UMT5 encoder: unexpected keys {unknown[:5]}"
                              + (" (a T5 with one shared position bias is not UMT5)" if "pos_embedding.embedding.weight" in unknown else ""))
    return out


def umt5_config_from_wan_t5(state_dict: Mapping[str, torch.Tensor]):
    """transformers' ``UMT5Config`` of Wan's T5 encoder weights (sizes read off the shapes)."""
    from transformers import UMT5Config

    from stream_r1_fast.models.loading import CheckpointError

    try:
        vocab, d_model = state_dict["token_embedding.weight"].shape
        buckets, heads = state_dict["blocks.0.pos_embedding.embedding.weight"].shape
        layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        d_kv = state_dict["blocks.0.attn.q.weight"].shape[0] // heads
        d_ff = state_dict["blocks.0.ffn.fc1.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"not Wan's UMT5 encoder (missing {exc})") from None
    return UMT5Config(
        vocab_size=vocab, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers, num_heads=heads,
        relative_attention_num_buckets=buckets, relative_attention_max_distance=_T5_MAX_DISTANCE,
        feed_forward_proj="gated-gelu", layer_norm_epsilon=_T5_EPS, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )


def load_wan_t5_encoder(path: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
    """transformers' ``UMT5EncoderModel`` with the weights of Wan's
    ``models_t5_umt5-xxl-enc-bf16.pth`` (read with ``torch.load(weights_only=True)``)."""
    from transformers import UMT5EncoderModel

    from stream_r1_fast.models.loading import CheckpointError, check_state_dict, quiet_loading, read_weights_file

    path = Path(path)
    sd = read_weights_file(path)
    try:
        config = umt5_config_from_wan_t5(sd)
        converted = convert_wan_t5_to_umt5(sd)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    with quiet_loading(), torch.device("meta"):
        model = UMT5EncoderModel(config)
    check_state_dict(model, converted, source=str(path))
    model.load_state_dict(converted, strict=True, assign=True)
    model.set_input_embeddings(model.shared)  # one embedding tensor, tied as transformers ties it
    return model.to(device=device, dtype=dtype).eval()


def as_prompt_list(prompts, what: str = "prompt") -> list[str]:
    """A str or a non-empty sequence of str -> list[str]; anything else is a TypeError."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Sequence) and prompts and all(isinstance(p, str) for p in prompts):
        return list(prompts)
    raise TypeError(f"{what} must be a str or a non-empty list of str, got {type(prompts).__name__}: {prompts!r:.80}")


class PromptEncoder:
    """Prompts -> text embeddings [B, max_length, text_dim], as Wan conditions on them: padded to
    ``max_length`` tokens, the embeddings of padding positions set to zero. The last
    ``cache_size`` prompts' embeddings are kept, so a prompt is encoded once."""

    def __init__(
        self,
        tokenizer,
        text_encoder,
        max_length: int = 512,
        cache_size: int = 32,
        *,
        offload: bool = False,
        execution_device: torch.device | str | None = None,
    ):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._execution_device = torch.device(execution_device) if execution_device is not None else None
        self.offload = False
        if offload:
            self.enable_offload(execution_device)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        offload: bool = False,
        **kwargs,
    ) -> "PromptEncoder":
        """From a Wan model folder: diffusers' (``tokenizer/``, ``text_encoder/``) or the original
        (``google/umt5-xxl/``, ``models_t5_umt5-xxl-enc-bf16.pth``). ``offload``: the encoder
        stays on the CPU and visits ``device`` only to encode (see :meth:`enable_offload`)."""
        from stream_r1_fast.models.loading import ORIGINAL_T5, ORIGINAL_TOKENIZER

        path = Path(path)
        if (path / ORIGINAL_TOKENIZER).is_dir() or (path / ORIGINAL_T5).is_file():
            parts = (path / ORIGINAL_TOKENIZER, path / ORIGINAL_T5)
            for p, ok in ((parts[0], parts[0].is_dir()), (parts[1], parts[1].is_file())):
                if not ok:
                    raise FileNotFoundError(f"{p} does not exist (an original Wan folder has {ORIGINAL_TOKENIZER}/ and {ORIGINAL_T5})")
        else:
            parts = (path / "tokenizer", path / "text_encoder")
            for p in parts:
                if not p.is_dir():
                    raise FileNotFoundError(f"{p} does not exist (expected a Wan model folder with {p.name}/)")
        return cls.from_parts(*parts, dtype=dtype, device=device, offload=offload, **kwargs)

    @classmethod
    def from_parts(
        cls,
        tokenizer: str | Path,
        text_encoder: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        offload: bool = False,
        **kwargs,
    ) -> "PromptEncoder":
        """From a tokenizer folder and a text encoder: a transformers ``UMT5EncoderModel`` folder
        or Wan's T5 ``.pth`` (:func:`load_wan_t5_encoder`)."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        from stream_r1_fast.models.loading import quiet_loading

        text_encoder = Path(text_encoder)
        home = torch.device("cpu") if offload else torch.device(device)
        with quiet_loading():
            tok = AutoTokenizer.from_pretrained(str(tokenizer))
            if text_encoder.is_dir():
                encoder = UMT5EncoderModel.from_pretrained(str(text_encoder), dtype=dtype).to(home)
            else:
                encoder = load_wan_t5_encoder(text_encoder, dtype=dtype, device=home)
        return cls(tok, encoder, offload=offload, execution_device=device, **kwargs)

    # ------------------------------------------------------------------ placement

    @property
    def device(self) -> torch.device:
        """Where prompts are encoded (and their embeddings kept)."""
        if self._execution_device is not None:
            return self._execution_device
        return next(self.text_encoder.parameters()).device

    def enable_offload(self, execution_device: torch.device | str | None = None) -> None:
        """Keep the encoder on the CPU; each encode of new prompts moves it to the execution
        device, runs, and moves it back (the encoder is needed only at a prompt switch; cached
        prompts do not move it). Saves its weights' bytes of device memory, for the time of a
        CPU -> device copy per switch."""
        if execution_device is not None:
            self._execution_device = torch.device(execution_device)
        elif self._execution_device is None:
            self._execution_device = next(self.text_encoder.parameters()).device
        self.text_encoder.to("cpu")
        self.offload = True

    def disable_offload(self) -> None:
        """Keep the encoder on the execution device from now on."""
        self.offload = False
        self.text_encoder.to(self.device)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "PromptEncoder":
        """Move (or, offloaded, re-target) the encoder and the cached embeddings; ``dtype`` casts
        the encoder (cached embeddings computed in another dtype are dropped)."""
        if device is not None:
            self._execution_device = torch.device(device)
        if dtype is not None and dtype != next(self.text_encoder.parameters()).dtype:
            self._cache.clear()
        self.text_encoder.to(device=None if self.offload else device, dtype=dtype)
        if device is not None:
            for k, v in self._cache.items():
                self._cache[k] = v.to(self.device)
        return self

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        if self.offload:
            self.text_encoder.to(self.device)
        try:
            hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        finally:
            if self.offload:
                self.text_encoder.to("cpu")
        return hidden * mask[..., None].to(hidden.dtype)

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        prompts = as_prompt_list(prompts)
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            for p, emb in zip(todo, self._encode(todo)):
                self._cache[p] = emb
        for p in prompts:
            self._cache.move_to_end(p)
        out = torch.stack([self._cache[p] for p in prompts])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out
