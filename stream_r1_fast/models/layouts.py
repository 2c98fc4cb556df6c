"""Wan transformer key names and configs: the layouts weights come in, and the conversion to
diffusers' ``WanTransformer3DModel`` names that :class:`CausalWanTransformer` uses.

* training-wrapper prefixes (``model.``, ``module.``, FSDP, torch.compile) are stripped
  (:func:`strip_wrapper_prefixes`);
* the layout is told from the keys (:func:`detect_layout`): diffusers' or the original Wan one
  (``self_attn.q``, ``ffn.0``, ``head.head``, ``modulation``...);
* original names are renamed by diffusers' own converter
  (``diffusers.loaders.single_file_utils.convert_wan_transformer_to_diffusers``), applied to the
  state dict;
* configs: read off the weights' shapes (:func:`infer_config`) or from a ``config.json`` in
  either naming (:func:`read_transformer_config`). diffusers has no counterpart for these: its
  single-file loader recognises a Wan checkpoint by its keys and fetches the matching config
  from the Hub, which neither an original folder nor a local-only run has.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import torch

from stream_r1_fast.files import read_json_object
from stream_r1_fast.models.configs import preset
from stream_r1_fast.models.wan import CausalWanTransformer
from stream_r1_fast.models.weight_files import CheckpointError

# Wrapper prefixes removed from the front of every key, and wrapper names removed anywhere.
LEADING_PREFIXES = ("module.", "model.", "generator.", "transformer.")
_WRAPPER_TOKENS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def strip_key(key: str, prefixes: tuple[str, ...] = LEADING_PREFIXES) -> str:
    """One key without training-wrapper names (anywhere) and ``prefixes`` (at the front, as
    many times as they repeat, in any order)."""
    for token in _WRAPPER_TOKENS:
        key = key.replace(token, "")
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove training-wrapper prefixes (``model.``, ``module.``, FSDP, torch.compile) from keys."""
    return {strip_key(key): value for key, value in state_dict.items()}


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"diffusers"`` or ``"original"`` (Wan's own names), from the keys."""
    keys = list(state_dict)
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys):
        return "diffusers"
    if any(k.startswith(("text_embedding.", "time_embedding.", "head.")) or ".self_attn." in k for k in keys):
        return "original"
    raise CheckpointError(
        "cannot tell the checkpoint's layout: it has neither diffusers names (condition_embedder.*, "
        f"blocks.N.attn1.*) nor original Wan names (text_embedding.*, blocks.N.self_attn.*); first keys: {keys[:5]}"
    )


def convert_original_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original-layout Wan state dict to diffusers' names with diffusers' own converter
    (``diffusers.loaders.single_file_utils.convert_wan_transformer_to_diffusers``; tensors are
    not copied, the argument is not changed)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(state_dict))


def to_diffusers_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported state dict (wrapped or not, original or diffusers names) -> diffusers names."""
    sd = strip_wrapper_prefixes(state_dict)
    return convert_original_to_diffusers(sd) if detect_layout(sd) == "original" else dict(sd)


def infer_config(state_dict: Mapping[str, torch.Tensor], attention_head_dim: int = 128) -> dict:
    """A model config read off diffusers-named weights (head dim is not in the shapes: Wan's 128)."""
    try:
        pe = state_dict["patch_embedding.weight"]  # [dim, C_in, pt, ph, pw]
        dim, in_channels, patch = pe.shape[0], pe.shape[1], tuple(pe.shape[2:])
        layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        cfg = dict(
            patch_size=patch,
            in_channels=in_channels,
            out_channels=state_dict["proj_out.weight"].shape[0] // math.prod(patch),
            num_layers=layers,
            num_attention_heads=dim // attention_head_dim,
            attention_head_dim=attention_head_dim,
            ffn_dim=state_dict["blocks.0.ffn.net.0.proj.weight"].shape[0],
            text_dim=state_dict["condition_embedder.text_embedder.linear_1.weight"].shape[1],
            freq_dim=state_dict["condition_embedder.time_embedder.linear_1.weight"].shape[1],
            cross_attn_norm="blocks.0.norm2.weight" in state_dict,
        )
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"cannot infer the model config from the weights (missing {exc}); pass config=...") from exc
    if dim % attention_head_dim:
        raise CheckpointError(f"width {dim} is not a multiple of the head dim {attention_head_dim}; pass config=...")
    return preset("wan2.1-1.3b", **cfg)


# WanModel's (the original code's) defaults, for keys its config.json leaves out.
_WAN_MODEL_DEFAULTS = dict(
    model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=2048, ffn_dim=8192, freq_dim=256, text_dim=4096,
    out_dim=16, num_heads=16, num_layers=32, qk_norm=True, cross_attn_norm=True, eps=1e-6,
)


def transformer_config_from_original(cfg: Mapping) -> dict:
    """The original Wan ``config.json`` (``WanModel``: ``dim``, ``num_heads``, ``in_dim``...) as
    a :class:`CausalWanTransformer` config (diffusers' ``WanTransformer3DModel`` keys)."""
    c = {**_WAN_MODEL_DEFAULTS, **{k: v for k, v in cfg.items() if not k.startswith("_")}}
    if c["model_type"] != "t2v":
        raise CheckpointError(f"model_type {c['model_type']!r}: only Wan's text-to-video models (t2v) are supported")
    try:
        dim, heads = int(c["dim"]), int(c["num_heads"])
        if heads <= 0 or dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {heads}")
        return preset(
            "wan2.1-1.3b", patch_size=tuple(int(p) for p in c["patch_size"]), in_channels=int(c["in_dim"]),
            out_channels=int(c["out_dim"]), num_layers=int(c["num_layers"]), num_attention_heads=heads,
            attention_head_dim=dim // heads, ffn_dim=int(c["ffn_dim"]), text_dim=int(c["text_dim"]),
            freq_dim=int(c["freq_dim"]), cross_attn_norm=bool(c["cross_attn_norm"]),
            qk_norm="rms_norm_across_heads" if c["qk_norm"] else None, eps=float(c["eps"]),
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"not a Wan transformer config ({exc})") from None


def read_transformer_config(path: str | Path) -> dict:
    """A transformer ``config.json``, in diffusers' names or the original Wan names (converted)."""
    path = Path(path)
    data = read_json_object(path, CheckpointError)
    if "num_attention_heads" not in data and ("dim" in data or "num_heads" in data):
        try:
            return transformer_config_from_original(data)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    return dict(CausalWanTransformer.load_config(str(path.parent)))


__all__ = ["LEADING_PREFIXES", "convert_original_to_diffusers", "detect_layout", "infer_config", "read_transformer_config",
           "strip_key", "strip_wrapper_prefixes", "to_diffusers_layout", "transformer_config_from_original"]
