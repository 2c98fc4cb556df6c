"""Reading weight files safely, and checking that weights fit a model.

``.safetensors`` files (one, or a folder of shards with its index) and ``.pt`` / ``.pth`` /
``.bin`` pickles, read with ``torch.load(weights_only=True)`` so that no pickled code runs;
every error names the file (:class:`CheckpointError`). :func:`check_state_dict` lists what
does not fit. Key names are not touched here (see :mod:`stream_r1_fast.models.layouts`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch

SAFETENSORS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
# The file types read_state_dict / read_weights_file take besides folders and .safetensors.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: names what is missing, extra or misshapen."""


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


def torch_load(path: str | Path, *, mmap: bool = False):
    """``torch.load(path, weights_only=True)`` on the CPU (``mmap``: memory-mapped where the
    file's format allows). A file it refuses or cannot parse (pickled code, truncated) raises
    :class:`CheckpointError` naming it; a missing file stays a FileNotFoundError."""
    try:
        if not mmap:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # an old (not zip) torch.save format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pickles with code, truncated files: say which file
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"cannot read {path} with torch.load(weights_only=True) ({type(exc).__name__}: {first}); "
            "only tensors and plain containers load (no pickled code runs)"
        ) from None


def read_safetensors_dir(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of every ``.safetensors`` shard a folder's index names (else of its
    ``diffusion_pytorch_model*.safetensors``, else of all its ``*.safetensors``), merged."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({type(exc).__name__}: {exc})") from None
        paths = [folder / f for f in files]
    else:  # an original Wan folder also holds other files; its transformer's are these
        paths = sorted(folder.glob("diffusion_pytorch_model*.safetensors")) or sorted(folder.glob("*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    sd: dict[str, torch.Tensor] = {}
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p} is named in {index} but does not exist")
        sd.update(read_safetensors(p))
    return sd


def pick_generator(obj, which: str, path: Path) -> Mapping[str, torch.Tensor]:
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


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file, or a ``.pt``/``.pth``/``.bin`` pickle read with
    ``torch.load(weights_only=True)`` (memory-mapped where the file allows), as a dict of tensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    obj = torch_load(path, mmap=True)
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return dict(obj)


def check_checkpoint_path(path: str | Path, option: str = "checkpoint") -> Path:
    """That a transformer checkpoint exists and is of a type :func:`read_state_dict` reads (nothing is read)."""
    p = Path(path)
    where = f"{option}={str(path)!r}"
    if not p.exists():
        raise FileNotFoundError(f"{where}: no such checkpoint file or folder")
    if p.is_dir():
        if not any(p.glob("*.safetensors")) and not any((p / "transformer").glob("*.safetensors")):
            raise FileNotFoundError(f"{where}: a folder without *.safetensors weights (nor transformer/*.safetensors)")
    elif p.suffix not in (".safetensors", *PICKLE_SUFFIXES):
        raise CheckpointError(f"{where}: unknown checkpoint type (expected a folder, .safetensors, .pt or .pth)")
    return p


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
    size = f" ({type(model).__name__})"
    if cfg.get("num_layers") is not None:
        size = (f" (num_layers={cfg.get('num_layers')}, width="
                f"{cfg.get('num_attention_heads', 0) * cfg.get('attention_head_dim', 0)})")
    raise CheckpointError(
        f"{source} does not fit the model{size}:"
        + block("missing keys", missing)
        + block("unexpected keys", unexpected)
        + block("dtype mismatches", wrong_dtype)
        + block("shape mismatches", mismatched)
        + hint
    )


__all__ = ["PICKLE_SUFFIXES", "SAFETENSORS_INDEX", "CheckpointError", "check_checkpoint_path", "check_state_dict",
           "pick_generator", "read_safetensors", "read_safetensors_dir", "read_weights_file", "torch_load"]
