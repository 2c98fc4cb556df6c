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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Mapping

import torch

from stream_r1_fast.models.configs import preset
from stream_r1_fast.models.wan import CausalWanTransformer

SAFETENSORS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
# Wrapper prefixes removed from the front of every key, and wrapper names removed anywhere.
_LEADING_PREFIXES = ("module.", "model.", "generator.", "transformer.")
_WRAPPER_TOKENS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")

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
    """Rename an original-layout Wan state dict to diffusers' names with diffusers' own converter
    (``diffusers.loaders.single_file_utils.convert_wan_transformer_to_diffusers``; tensors are
    not copied, the argument is not changed)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(state_dict))


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


# ---------------------------------------------------------------------- third-party log noise


def _user_wants_library_logs() -> bool:
    return os.environ.get("STREAM_R1_FAST_VERBOSE", "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def quiet_loading():
    """Silence diffusers' / transformers' / accelerate's / peft's warnings and progress bars
    while our loaders run, through those libraries' own verbosity switches, and restore every
    setting afterwards. Left alone: everything when ``STREAM_R1_FAST_VERBOSE=1``; a library
    whose verbosity the user chose (its ``DIFFUSERS_VERBOSITY`` / ``TRANSFORMERS_VERBOSITY``
    variable set, or a level other than its default WARNING set in code)."""
    if _user_wants_library_logs():
        yield
        return
    import importlib

    restore = []
    for lib, env in (("diffusers", "DIFFUSERS_VERBOSITY"), ("transformers", "TRANSFORMERS_VERBOSITY")):
        try:
            lg = importlib.import_module(f"{lib}.utils.logging")
        except ImportError:
            continue
        level, bars = lg.get_verbosity(), lg.is_progress_bar_enabled()
        if env in os.environ or level != logging.WARNING:
            continue  # the user's own choice
        lg.set_verbosity_error()
        lg.disable_progress_bar()
        restore.append((lg, level, bars))
    plain = []
    for name in ("accelerate", "peft", "huggingface_hub"):
        logger = logging.getLogger(name)
        if logger.level in (logging.NOTSET, logging.WARNING):
            plain.append((logger, logger.level))
            logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for lib in ("diffusers", "transformers", "accelerate", "peft", "huggingface_hub", "torch.nn.modules.module"):
                warnings.filterwarnings("ignore", module=re.escape(lib) + r"(\.|$)")
            yield
    finally:
        for lg, level, bars in restore:
            lg.set_verbosity(level)
            (lg.enable_progress_bar if bars else lg.disable_progress_bar)()
        for logger, level in plain:
            logger.setLevel(level)


# ---------------------------------------------------------------------- model folders

ORIGINAL_VAE = "Wan2.1_VAE.pth"
ORIGINAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_TOKENIZER = "google/umt5-xxl"

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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a config must be a JSON object, got {type(data).__name__}")
    if "num_attention_heads" not in data and ("dim" in data or "num_heads" in data):
        try:
            return transformer_config_from_original(data)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    return dict(CausalWanTransformer.load_config(str(path.parent)))


@dataclasses.dataclass(frozen=True)
class WanFolder:
    """Where the parts of a Wan model folder are. ``layout``: ``"diffusers"`` (``transformer/``,
    ``vae/``, ``text_encoder/``, ``tokenizer/``) or ``"original"`` (as Wan-AI publishes
    Wan2.1-T2V-1.3B: ``config.json`` + ``diffusion_pytorch_model*.safetensors``,
    ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl/``)."""

    root: Path
    layout: str
    transformer: Path  # the folder with the transformer's config.json and weights
    vae: Path  # a diffusers vae/ folder or the original .pth
    text_encoder: Path  # a transformers text_encoder/ folder or the original T5 .pth
    tokenizer: Path

    def transformer_config(self) -> dict:
        return read_transformer_config(self.transformer / "config.json")

    def vae_config(self) -> dict:
        """The VAE's config: ``vae/config.json``, or read off the tensor shapes of the original
        ``.pth`` (memory-mapped: its data is not read)."""
        if self.layout == "diffusers":
            try:
                return dict(json.loads((self.vae / "config.json").read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                raise CheckpointError(f"cannot read {self.vae / 'config.json'} ({type(exc).__name__}: {exc})") from None
        try:
            return vae_config_from_original(read_weights_file(self.vae))
        except CheckpointError as exc:
            raise CheckpointError(f"{self.vae}: {exc}") from None

    def text_dim(self) -> int:
        """The text encoder's width (the transformer's ``text_dim`` must match it)."""
        if self.layout == "diffusers":
            try:
                return int(json.loads((self.text_encoder / "config.json").read_text(encoding="utf-8"))["d_model"])
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise CheckpointError(f"cannot read d_model from {self.text_encoder / 'config.json'} "
                                      f"({type(exc).__name__}: {exc})") from None
        sd = read_weights_file(self.text_encoder)
        if "token_embedding.weight" not in sd:
            raise CheckpointError(f"{self.text_encoder}: not Wan's T5 encoder (no token_embedding.weight)")
        return int(sd["token_embedding.weight"].shape[1])


def find_wan_folder(path: str | Path, option: str = "path", *, transformer_weights: bool = True) -> WanFolder:
    """The parts of the Wan model folder at ``path`` (either layout), checked to exist; nothing
    is read. Raises FileNotFoundError / NotADirectoryError naming ``option`` and every missing part.
    ``transformer_weights=False``: the transformer's weights may be missing (a checkpoint replaces them)."""
    root = Path(path)
    where = f"{option}={str(path)!r}"
    if not root.exists():
        raise FileNotFoundError(f"{where}: the folder does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{where}: not a folder (expected a Wan model folder)")
    if (root / "transformer").is_dir() or (root / "model_index.json").is_file():
        folder = WanFolder(root, "diffusers", root / "transformer", root / "vae", root / "text_encoder", root / "tokenizer")
        needed = [("transformer/config.json", (folder.transformer / "config.json").is_file()),
                  ("vae/", folder.vae.is_dir()), ("text_encoder/", folder.text_encoder.is_dir()),
                  ("tokenizer/", folder.tokenizer.is_dir())]
        weights = folder.transformer.is_dir() and any(folder.transformer.glob("*.safetensors"))
        needed.append(("transformer/*.safetensors", weights or not transformer_weights))
    elif (root / "config.json").is_file() or (root / ORIGINAL_VAE).is_file() or (root / ORIGINAL_T5).is_file():
        folder = WanFolder(root, "original", root, root / ORIGINAL_VAE, root / ORIGINAL_T5, root / ORIGINAL_TOKENIZER)
        weights = any(root.glob("diffusion_pytorch_model*.safetensors"))
        needed = [("config.json", (root / "config.json").is_file()),
                  ("diffusion_pytorch_model*.safetensors", weights or not transformer_weights),
                  (ORIGINAL_VAE, folder.vae.is_file()), (ORIGINAL_T5, folder.text_encoder.is_file()),
                  (ORIGINAL_TOKENIZER + "/", folder.tokenizer.is_dir())]
    else:
        raise FileNotFoundError(
            f"{where}: not a Wan model folder: neither the diffusers layout (transformer/config.json, vae/, "
            f"text_encoder/, tokenizer/) nor the original one (config.json + diffusion_pytorch_model*.safetensors, "
            f"{ORIGINAL_VAE}, {ORIGINAL_T5}, {ORIGINAL_TOKENIZER}/)"
        )
    missing = [name for name, ok in needed if not ok]
    if missing:
        raise FileNotFoundError(f"{where}: a Wan model folder in the {folder.layout} layout without {', '.join(missing)}")
    return folder


def check_checkpoint_path(path: str | Path, option: str = "checkpoint") -> Path:
    """That a transformer checkpoint exists and is of a type :func:`read_state_dict` reads (nothing is read)."""
    p = Path(path)
    where = f"{option}={str(path)!r}"
    if not p.exists():
        raise FileNotFoundError(f"{where}: no such checkpoint file or folder")
    if p.is_dir():
        if not any(p.glob("*.safetensors")) and not any((p / "transformer").glob("*.safetensors")):
            raise FileNotFoundError(f"{where}: a folder without *.safetensors weights (nor transformer/*.safetensors)")
    elif p.suffix not in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        raise CheckpointError(f"{where}: unknown checkpoint type (expected a folder, .safetensors, .pt or .pth)")
    return p


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file, or a ``.pt``/``.pth``/``.bin`` pickle read with
    ``torch.load(weights_only=True)`` (memory-mapped where the file allows), as a dict of tensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # an old (not zip) torch.save format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"cannot read {path} with torch.load(weights_only=True) ({type(exc).__name__}: {first}); "
            "only tensors and plain containers load (no pickled code runs)"
        ) from None
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return dict(obj)


# ---------------------------------------------------------------------- the Wan VAE


def vae_config_from_original(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """An ``AutoencoderKLWan`` config read off an original-layout Wan VAE state dict
    (``encoder.downsamples.N...``, ``decoder.upsamples.N...``). The latent statistics are not in
    the weights: they are Wan 2.1's (``AutoencoderKLWan``'s defaults), for its 16 channels."""
    import inspect

    from diffusers import AutoencoderKLWan

    sd = state_dict
    try:
        base, z_dim = sd["encoder.conv1.weight"].shape[0], sd["conv2.weight"].shape[0]
        idx = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.downsamples.")})
        resamples = [i for i in idx if f"encoder.downsamples.{i}.resample.1.weight" in sd]
        levels = len(resamples) + 1
        per_level, rest = divmod(len(idx) - len(resamples), levels)
        if rest or per_level < 1:
            raise ValueError(f"{len(idx) - len(resamples)} residual blocks do not split into {levels} levels")
        dim_mult = [sd[f"encoder.downsamples.{lvl * (per_level + 1)}.residual.6.weight"].shape[0] // base
                    for lvl in range(levels)]
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"not an original-layout Wan VAE state dict ({type(exc).__name__}: {exc})") from None
    if any(".to_qkv." in k for k in sd if k.startswith("encoder.downsamples.")):
        raise CheckpointError("a Wan VAE with attention in its down blocks (attn_scales) is not supported")
    if (levels, per_level) != (4, 2):
        # diffusers' converter (convert_wan_vae_to_diffusers) knows the decoder of Wan 2.1's VAE only
        raise CheckpointError(
            f"a Wan VAE of {levels} levels of {per_level} residual blocks: only Wan 2.1's structure "
            "(4 levels of 2) converts from the original layout"
        )
    params = inspect.signature(AutoencoderKLWan.__init__).parameters
    mean, std = params["latents_mean"].default, params["latents_std"].default
    if z_dim != len(mean):
        raise CheckpointError(
            f"a Wan VAE of {z_dim} latent channels: its latent statistics are known only for Wan 2.1's {len(mean)}"
        )
    return dict(
        base_dim=base, z_dim=z_dim, dim_mult=dim_mult, num_res_blocks=per_level, attn_scales=[],
        temperal_downsample=[f"encoder.downsamples.{i}.time_conv.weight" in sd for i in resamples],
        latents_mean=list(mean), latents_std=list(std),
    )


def load_vae(path: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
    """The Wan VAE (diffusers' ``AutoencoderKLWan``) from a diffusers ``vae/`` folder, or from
    the original ``Wan2.1_VAE.pth`` (keys renamed by diffusers'
    ``single_file_utils.convert_wan_vae_to_diffusers``, the config read off the shapes)."""
    from diffusers import AutoencoderKLWan

    path = Path(path)
    if path.is_dir():
        with quiet_loading():
            return AutoencoderKLWan.from_pretrained(str(path), torch_dtype=dtype).to(device).eval()
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    sd = read_weights_file(path)
    if "decoder.middle.0.residual.0.gamma" not in sd:
        raise CheckpointError(f"{path}: not an original-layout Wan VAE (no decoder.middle.0.residual.0.gamma)")
    try:
        cfg = vae_config_from_original(sd)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    sd = convert_wan_vae_to_diffusers(sd)
    with quiet_loading(), torch.device("meta"):
        vae = AutoencoderKLWan(**cfg)
    check_state_dict(vae, sd, source=str(path))
    vae.load_state_dict(sd, strict=True, assign=True)
    return vae.to(device=device, dtype=dtype).eval()


# ---------------------------------------------------------------------- LoRA adapters

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_PEFT_PREFIX = "base_model.model."


def _lora_module_names_to_diffusers(modules: list[str]) -> dict[str, str]:
    """Module paths in the original Wan names (``blocks.0.self_attn.q``) -> diffusers' names
    (``blocks.0.attn1.to_q``), by diffusers' converter applied to ``<module>.weight``."""
    probe = {f"{m}.weight": torch.empty(0) for m in modules}
    converted = convert_original_to_diffusers(probe)
    # the converter renames key by key and keeps the order
    return {m: k[: -len(".weight")] for m, k in zip(modules, converted)}


def read_lora(path: str | Path, *, alpha: float | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """A LoRA adapter for the Wan transformer -> (``{module.lora_A.weight / lora_B.weight: tensor}``
    in diffusers' module names, ``peft.LoraConfig`` keyword arguments).

    Reads a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors`` or
    ``adapter_model.bin``), a ``.safetensors`` file of peft keys, or a LongLive ``.pt`` (a
    ``generator_lora`` entry holding ``peft.get_peft_model_state_dict`` of the generator, in
    the original Wan names). Without ``adapter_config.json`` the rank is read off the weights
    and ``lora_alpha`` is ``alpha`` or else the rank (LongLive's default: scale 1)."""
    path = Path(path)
    where = f"lora={str(path)!r}"
    if not path.exists():
        raise FileNotFoundError(f"{where}: no such LoRA file or folder")
    config: dict = {}
    if path.is_dir():
        cfg_file = path / "adapter_config.json"
        weights = [p for p in (path / "adapter_model.safetensors", path / "adapter_model.bin") if p.is_file()]
        if not cfg_file.is_file() or not weights:
            raise FileNotFoundError(f"{where}: a peft adapter folder needs adapter_config.json and adapter_model.safetensors")
        try:
            config = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{where}: cannot read {cfg_file} ({type(exc).__name__}: {exc})") from None
        if config.get("peft_type", "LORA") != "LORA":
            raise CheckpointError(f"{where}: a {config.get('peft_type')} adapter; only LoRA is supported")
        raw = read_weights_file(weights[0])
    elif path.suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        if path.suffix == ".safetensors":
            raw = read_safetensors(path)
        else:
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [""])[0]
                raise CheckpointError(f"{where}: cannot read it with torch.load(weights_only=True) "
                                      f"({type(exc).__name__}: {first})") from None
            if isinstance(obj, Mapping) and "generator_lora" in obj:
                obj = obj["generator_lora"]
            if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
                raise CheckpointError(f"{where}: expected a dict of LoRA tensors (or a LongLive dict with generator_lora)")
            raw = dict(obj)
    else:
        raise CheckpointError(f"{where}: unknown LoRA type (expected a peft adapter folder, .safetensors, .pt or .pth)")

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    other = []
    for key, value in raw.items():
        k = key
        for token in _WRAPPER_TOKENS:
            k = k.replace(token, "")
        changed = True
        while changed:  # LongLive under FSDP: model.base_model.model.blocks...
            changed = False
            for prefix in (_PEFT_PREFIX, *_LEADING_PREFIXES):
                if k.startswith(prefix):
                    k, changed = k[len(prefix):], True
        m = _LORA_KEY.match(k)
        if m is None:
            other.append(key)
            continue
        pairs.setdefault(m["module"], {})[m["ab"]] = value
    if other:
        raise CheckpointError(f"{where}: {len(other)} entries that are not LoRA A/B weights (only LoRA merges): {other[:5]}")
    if not pairs:
        raise CheckpointError(f"{where}: no LoRA weights (keys ending in lora_A.weight / lora_B.weight)")
    half = sorted(m for m, ab in pairs.items() if set(ab) != {"A", "B"})
    if half:
        raise CheckpointError(f"{where}: modules with only one of lora_A / lora_B: {half[:5]}")
    modules = sorted(pairs)
    original = any(re.search(r"(^|\.)(self_attn|cross_attn)\.|\.ffn\.[02]$|^(text|time)_embedding\.|^head\.", m)
                   for m in modules)
    rename = _lora_module_names_to_diffusers(modules) if original else {m: m for m in modules}
    ranks = {rename[m]: int(pairs[m]["A"].shape[0]) for m in modules}
    r = int(config.get("r") or max(set(ranks.values()), key=list(ranks.values()).count))
    lora_alpha = alpha if alpha is not None else config.get("lora_alpha", r)
    for pattern in ("rank_pattern", "alpha_pattern"):
        if config.get(pattern) and original:
            raise CheckpointError(f"{where}: {pattern} in the original Wan names is not supported")
    kwargs = dict(
        r=r, lora_alpha=lora_alpha, target_modules=sorted(ranks), lora_dropout=0.0,
        use_rslora=bool(config.get("use_rslora", False)),
        rank_pattern={**{m: k for m, k in ranks.items() if k != r}, **(config.get("rank_pattern") or {})},
        alpha_pattern=dict(config.get("alpha_pattern") or {}),
    )
    sd = {}
    for m in modules:
        sd[f"{rename[m]}.lora_A.weight"] = pairs[m]["A"]
        sd[f"{rename[m]}.lora_B.weight"] = pairs[m]["B"]
    return sd, kwargs


def merge_lora(model: torch.nn.Module, path: str | Path, *, alpha: float | None = None) -> torch.nn.Module:
    """``model`` with the LoRA adapter at ``path`` (see :func:`read_lora`) merged into its
    weights through peft (``get_peft_model`` -> ``set_peft_model_state_dict`` ->
    ``merge_and_unload``): the result has no LoRA layers and runs at the base model's speed."""
    import peft

    sd, kwargs = read_lora(path, alpha=alpha)
    where = f"lora={str(path)!r}"
    modules = dict(model.named_modules())
    problems = []
    for name in kwargs["target_modules"]:
        layer = modules.get(name)
        a, b = sd[f"{name}.lora_A.weight"], sd[f"{name}.lora_B.weight"]
        if not isinstance(layer, torch.nn.Linear):
            problems.append(f"{name}: {'no such module' if layer is None else type(layer).__name__ + ' is not a Linear'}")
        elif a.shape[1] != layer.in_features or b.shape[0] != layer.out_features or a.shape[0] != b.shape[1]:
            problems.append(f"{name}: lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)} vs Linear "
                            f"{layer.in_features} -> {layer.out_features}")
    if problems:
        shown = "\n    ".join(problems[:10])
        raise CheckpointError(f"{where} does not fit the transformer ({len(problems)}):\n    {shown}")
    with quiet_loading():
        wrapped = peft.get_peft_model(model, peft.LoraConfig(**kwargs))
        result = peft.set_peft_model_state_dict(wrapped, {_PEFT_PREFIX + k: v for k, v in sd.items()})
        missing = [k for k in result.missing_keys if "lora_" in k]
        if missing or result.unexpected_keys:
            raise CheckpointError(f"{where}: LoRA weights not taken: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        merged = wrapped.merge_and_unload()
    return merged.eval()
