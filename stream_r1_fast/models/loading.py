"""Loading Wan transformer weights from the layouts they come in, with clear errors.

Layouts read (all from local paths):

* diffusers: a ``transformer/`` folder (``config.json`` + ``*.safetensors``, sharded or not),
  or a model folder that has one; names as in ``WanTransformer3DModel``.
* the original Wan layout (``self_attn.q``, ``ffn.0``, ``head.head``, ``modulation``...), as a
  ``.safetensors`` / ``.pt`` / ``.pth`` file;
* Self-Forcing / Reward Forcing / Stream-R1 student checkpoints: a ``.pt`` dict with
  ``generator`` and/or ``generator_ema`` state dicts in the original layout, their keys
  prefixed by the wrapper (``model.``) and possibly by FSDP / torch.compile wrappers.

``.pt`` files are read with ``torch.load(weights_only=True)`` (no pickled code runs).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Mapping

import torch

from stream_r1_fast.models.configs import preset
from stream_r1_fast.models.wan import CausalWanTransformer

SAFETENSORS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
# Wrapper prefixes removed from the front of every key, and wrapper names removed anywhere.
_LEADING_PREFIXES = ("module.", "model.", "generator.", "transformer.")
_WRAPPER_TOKENS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")

# Original Wan name -> diffusers name, applied to the key suffix after ``blocks.N.`` or at the top.
_ORIGINAL_TO_DIFFUSERS = [
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^head\.head\.", "proj_out."),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"^(blocks\.\d+)\.self_attn\.([qkv])\.", r"\1.attn1.to_\2."),
    (r"^(blocks\.\d+)\.self_attn\.o\.", r"\1.attn1.to_out.0."),
    (r"^(blocks\.\d+)\.self_attn\.norm_([qk])\.", r"\1.attn1.norm_\2."),
    (r"^(blocks\.\d+)\.cross_attn\.([qkv])\.", r"\1.attn2.to_\2."),
    (r"^(blocks\.\d+)\.cross_attn\.o\.", r"\1.attn2.to_out.0."),
    (r"^(blocks\.\d+)\.cross_attn\.norm_([qk])\.", r"\1.attn2.norm_\2."),
    # Wan's affine norm before cross-attention is its norm3; diffusers calls it norm2.
    (r"^(blocks\.\d+)\.norm3\.", r"\1.norm2."),
    (r"^(blocks\.\d+)\.ffn\.0\.", r"\1.ffn.net.0.proj."),
    (r"^(blocks\.\d+)\.ffn\.2\.", r"\1.ffn.net.2."),
    (r"^(blocks\.\d+)\.modulation$", r"\1.scale_shift_table"),
]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: names what is missing, extra or misshapen."""


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove training-wrapper prefixes (``model.``, ``module.``, FSDP, torch.compile) from keys."""
    out = {}
    for key, value in state_dict.items():
        for token in _WRAPPER_TOKENS:
            key = key.replace(token, "")
        changed = True
        while changed:
            changed = False
            for prefix in _LEADING_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


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
    """Rename an original-layout Wan state dict to diffusers' names (tensors are not copied)."""
    out = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in _ORIGINAL_TO_DIFFUSERS:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        out[new] = value
    return out


def to_diffusers_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported state dict (wrapped or not, original or diffusers names) -> diffusers names."""
    sd = strip_wrapper_prefixes(state_dict)
    return convert_original_to_diffusers(sd) if detect_layout(sd) == "original" else dict(sd)


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` whose errors (truncated or empty file, a header too large
    or not JSON) name the file: :class:`CheckpointError`."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as exc:  # SafetensorError, OSError, ...
        raise CheckpointError(f"cannot read {path} as safetensors ({type(exc).__name__}: {exc})") from None


def _read_safetensors_dir(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({type(exc).__name__}: {exc})") from None
        paths = [folder / f for f in files]
    else:
        paths = sorted(folder.glob("*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    sd: dict[str, torch.Tensor] = {}
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p} is named in {index} but does not exist")
        sd.update(read_safetensors(p))
    return sd


def _pick_generator(obj, which: str, path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict inside a ``torch.load``-ed object (Self-Forcing: generator[_ema])."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    if which not in ("auto", "generator", "generator_ema"):
        raise ValueError(f"which must be 'auto', 'generator' or 'generator_ema', got {which!r}")
    if "generator" in obj or "generator_ema" in obj:
        key = which
        if which == "auto":
            key = "generator_ema" if "generator_ema" in obj else "generator"
        if key not in obj:
            raise CheckpointError(f"{path} has no {key!r} entry (it has {sorted(k for k in obj if isinstance(k, str))})")
        obj = obj[key]
    elif which != "auto":
        raise CheckpointError(f"{path} has no {which!r} entry: it is a plain state dict")
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:5]}")
    return obj


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
        sd = _read_safetensors_dir(folder)
    elif path.suffix == ".safetensors":
        sd = read_safetensors(path)
    elif path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickles with code, truncated files: say which file
            first = (str(exc).strip().splitlines() or [""])[0]
            raise CheckpointError(
                f"cannot read {path} with torch.load(weights_only=True) ({type(exc).__name__}: {first}); "
                "only tensors and plain containers load (no pickled code runs)"
            ) from None
        sd = _pick_generator(obj, which, path)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint type (expected a folder, .safetensors, .pt or .pth)")
    return to_diffusers_layout(sd)


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


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming missing keys, unexpected keys, shape mismatches and
    weights that are not floating point (int64, bool...) where the model has floats."""
    model_sd = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in model_sd.items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    wrong_dtype = [f"{k}: checkpoint {state_dict[k].dtype} vs model {model_sd[k].dtype} (weights must be floating point)"
                   for k in sorted(set(got) & set(expected))
                   if model_sd[k].is_floating_point() and not state_dict[k].is_floating_point()]
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    mismatched = [f"{k}: checkpoint {got[k]} vs model {expected[k]}" for k in sorted(set(got) & set(expected)) if got[k] != expected[k]]
    if not (missing or unexpected or mismatched or wrong_dtype):
        return

    def block(title: str, items: list[str]) -> str:
        shown = "\n    ".join(items[:10])
        more = f"\n    ... and {len(items) - 10} more" if len(items) > 10 else ""
        return f"\n  {title} ({len(items)}):\n    {shown}{more}" if items else ""

    cfg = getattr(model, "config", {})
    hint = ""
    width = "patch_embedding.weight"
    if width in got and width in expected and got[width][0] != expected[width][0]:
        hint = (
            f"\n  (the checkpoint's width is {got[width][0]}, the model's {expected[width][0]}: "
            "is the config the right model size?)"
        )
    raise CheckpointError(
        f"{source} does not fit the model (num_layers={cfg.get('num_layers')}, width="
        f"{cfg.get('num_attention_heads', 0) * cfg.get('attention_head_dim', 0)}):"
        + block("missing keys", missing)
        + block("unexpected keys", unexpected)
        + block("dtype mismatches", wrong_dtype)
        + block("shape mismatches", mismatched)
        + hint
    )


def _resolve_config(config: str | Mapping | None, path: Path, state_dict, attention_head_dim: int) -> dict:
    if isinstance(config, str):
        return preset(config)
    if config is not None:
        return dict(config)
    for folder in (path, path / "transformer"):
        if (folder / "config.json").is_file():
            return dict(CausalWanTransformer.load_config(str(folder)))
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
    return model.to(device=device, dtype=dtype).eval()
