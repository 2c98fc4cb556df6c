"""Loading Wan transformer weights from the layouts they come in, with clear errors.

Layouts read (all from local paths):

* diffusers: a ``transformer/`` folder (``config.json`` + ``*.safetensors``, sharded or not),
  or a model folder that has one; names as in ``WanTransformer3DModel``.
* the original Wan layout (``self_attn.q``, ``ffn.0``, ``head.head``, ``modulation``...), as a
  ``.safetensors`` / ``.pt`` / ``.pth`` file;
* Self-Forcing / Reward Forcing / Stream-R1 student checkpoints: a ``.pt`` dict with
  ``generator`` and/or ``generator_ema`` state dicts in the original layout, their keys
  prefixed by the wrapper (``model.``) and possibly by FSDP / torch.compile wrappers.

Also: whole Wan model folders in either layout (:func:`find_wan_folder`: diffusers', or the
original ``config.json`` + ``diffusion_pytorch_model*.safetensors`` + ``Wan2.1_VAE.pth`` +
``models_t5_umt5-xxl-enc-bf16.pth`` + ``google/umt5-xxl/``), the Wan VAE from either
(:func:`load_vae`), and LoRA adapters merged through peft (:func:`merge_lora`). Original names
are converted by diffusers' own single-file converters
(``diffusers.loaders.single_file_utils.convert_wan_transformer_to_diffusers`` /
``convert_wan_vae_to_diffusers``), applied to the state dicts: ``from_single_file`` would fetch
a diffusers config from the Hub, which an original folder does not have.

``.pt`` files are read with ``torch.load(weights_only=True)`` (no pickled code runs).

This module holds the public :func:`load_transformer` and :func:`read_state_dict`; the pieces
live by job in :mod:`~stream_r1_fast.models.weight_files` (reading files safely, checking a
state dict against a model), :mod:`~stream_r1_fast.models.layouts` (layout detection, key and
config conversion), :mod:`~stream_r1_fast.models.folders` (model folders),
:mod:`~stream_r1_fast.models.vae_loading`, :mod:`~stream_r1_fast.models.lora` and
:mod:`~stream_r1_fast.models.quiet` (third-party log noise), and are re-exported here.
"""


from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from stream_r1_fast.models.configs import preset
from stream_r1_fast.models.folders import ORIGINAL_T5, ORIGINAL_TOKENIZER, ORIGINAL_VAE, WanFolder, find_wan_folder
from stream_r1_fast.models.layouts import (convert_original_to_diffusers, detect_layout, infer_config,
                                           read_transformer_config, strip_wrapper_prefixes, to_diffusers_layout,
                                           transformer_config_from_original)
from stream_r1_fast.models.lora import merge_lora, read_lora
from stream_r1_fast.models.quiet import quiet_loading
from stream_r1_fast.models.vae_loading import load_vae, vae_config_from_original
from stream_r1_fast.models.wan import CausalWanTransformer
from stream_r1_fast.models.weight_files import (PICKLE_SUFFIXES, SAFETENSORS_INDEX, CheckpointError,
                                                check_checkpoint_path, check_state_dict, pick_generator,
                                                read_safetensors, read_safetensors_dir, read_weights_file, torch_load)


def read_state_dict(path: str | Path, which: str = "auto") -> dict[str, torch.Tensor]:
    """Weights at ``path`` in diffusers names: a diffusers folder (or a model folder with a
    ``transformer/`` subfolder), a ``.safetensors`` file, or a ``.pt``/``.pth``/``.bin`` file
    (for Self-Forcing checkpoints ``which`` picks ``generator_ema`` (auto: if present) or
    ``generator``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint file or folder: {path}")
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer").is_dir() else path
        sd = read_safetensors_dir(folder)
    elif path.suffix == ".safetensors":
        sd = read_safetensors(path)
    elif path.suffix in PICKLE_SUFFIXES:
        sd = pick_generator(torch_load(path), which, path)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint type (expected a folder, .safetensors, .pt or .pth)")
    return to_diffusers_layout(sd)


def _resolve_config(config: str | Mapping | None, path: Path, state_dict, attention_head_dim: int) -> dict:
    if isinstance(config, str):
        return preset(config)
    if config is not None:
        return dict(config)
    for folder in (path, path / "transformer"):
        if (folder / "config.json").is_file():
            return read_transformer_config(folder / "config.json")
    return infer_config(state_dict, attention_head_dim)


def load_transformer(
    path: str | Path,
    config: str | Mapping | None = None,
    *,
    which: str = "auto",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    attention_head_dim: int = 128,
) -> CausalWanTransformer:
    """A :class:`CausalWanTransformer` with the weights at ``path`` (any supported layout).

    config: a preset name, a config dict, or None to read ``config.json`` beside the weights
    (diffusers folders) or else infer it from the weights' shapes (with ``attention_head_dim``).
    Raises FileNotFoundError for missing files and :class:`CheckpointError` when the weights do
    not fit the config (missing / unexpected keys, shape mismatches, all listed).
    """
    path = Path(path)
    state_dict = read_state_dict(path, which)
    cfg = {k: v for k, v in _resolve_config(config, path, state_dict, attention_head_dim).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = CausalWanTransformer.from_config(cfg)
    check_state_dict(model, state_dict, source=str(path))
    model.load_state_dict(state_dict, strict=True, assign=True)
    with quiet_loading():  # diffusers' ModelMixin.to warns about fp32 modules (there are none)
        return model.to(device=device, dtype=dtype).eval()


__all__ = ["ORIGINAL_T5", "ORIGINAL_TOKENIZER", "ORIGINAL_VAE", "SAFETENSORS_INDEX", "CheckpointError", "WanFolder",
           "check_checkpoint_path", "check_state_dict", "convert_original_to_diffusers", "detect_layout",
           "find_wan_folder", "infer_config", "load_transformer", "load_vae", "merge_lora", "quiet_loading",
           "read_lora", "read_safetensors", "read_state_dict", "read_transformer_config", "read_weights_file",
           "strip_wrapper_prefixes", "to_diffusers_layout", "transformer_config_from_original",
           "vae_config_from_original"]
