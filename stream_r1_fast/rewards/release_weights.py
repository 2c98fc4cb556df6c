"""A VideoAlign release's weights: locating them (:func:`find_release_files`), reading them
safely (:func:`load_tensors`: tensors only, pickles never executed), mapping their names to
transformers 5's ``Qwen2VLModel`` (:func:`map_module_name`, :func:`split_state`) and merging
the LoRA (:func:`merge_lora`). The layout is described in :mod:`stream_r1_fast.rewards.videoalign`.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import torch
import torch.nn as nn

from stream_r1_fast.rewards.release_config import RELEASE_CONFIG_NAME, ReleaseConfig

FULL_STATE_NAME = "model.pth"
ADAPTER_NAME = "adapter_model.safetensors"
NON_LORA_NAME = "non_lora_state_dict.pth"
TOKENIZER_DIR = "tokenizer"

_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_LORA_EMB_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_embedding_A|lora_embedding_B)(?:\.(?P<adapter>[^.]+))?$")


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReleaseFiles:
    """The files :func:`find_release_files` located; ``weights``: model.pth alone, or the adapter
    and the non-LoRA pickle."""

    root: Path
    config: Path
    checkpoint: Path
    weights: tuple[Path, ...]
    tokenizer: Path | None


def find_release_files(path: str | Path, checkpoint_step: int | None = None) -> ReleaseFiles:
    """Locate model_config.json and a ``checkpoint-<step>`` folder's weights (``path``: the
    release folder, or one of its ``checkpoint-<step>`` folders)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"VideoAlign release folder {root} does not exist")
    if root.name.startswith("checkpoint-") and not (root / RELEASE_CONFIG_NAME).is_file():
        if checkpoint_step is not None and root.name != f"checkpoint-{checkpoint_step}":
            raise ValueError(f"{root} is not checkpoint-{checkpoint_step}")
        ckpt, root = root, root.parent
    else:
        ckpt = None
    config = root / RELEASE_CONFIG_NAME
    if not config.is_file():
        raise FileNotFoundError(f"{root} has no {RELEASE_CONFIG_NAME} (VideoAlign's training configs)")
    if ckpt is None:
        steps = {}
        for p in root.glob("checkpoint-*"):
            suffix = p.name[len("checkpoint-"):]
            if p.is_dir() and suffix.isdigit():
                steps[int(suffix)] = p
        if not steps:
            raise FileNotFoundError(f"{root} has no checkpoint-<step>/ folder")
        if checkpoint_step is None:
            ckpt = steps[max(steps)]
        elif int(checkpoint_step) in steps:
            ckpt = steps[int(checkpoint_step)]
        else:
            raise FileNotFoundError(f"{root} has no checkpoint-{checkpoint_step}/ (found steps {sorted(steps)})")
    full, adapter, non_lora = ckpt / FULL_STATE_NAME, ckpt / ADAPTER_NAME, ckpt / NON_LORA_NAME
    if full.is_file():
        weights = (full,)
    elif adapter.is_file() and non_lora.is_file():
        weights = (adapter, non_lora)
    else:
        have = sorted(p.name for p in ckpt.iterdir())
        raise FileNotFoundError(f"{ckpt} holds neither {FULL_STATE_NAME} nor both {ADAPTER_NAME} and {NON_LORA_NAME} "
                                f"(found: {have})")
    tok = ckpt / TOKENIZER_DIR
    return ReleaseFiles(root=root, config=config, checkpoint=ckpt, weights=weights,
                        tokenizer=tok if tok.is_dir() else None)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` file: safetensors, or a torch pickle read with ``weights_only=True``
    (a pickle that holds anything else is refused, never executed)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"{path}: refused by torch.load(weights_only=True); it must hold only tensors "
                             f"({str(e).splitlines()[0]})") from e
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise ValueError(f"{path} is not a readable torch file: {e}") from e
            try:  # legacy (non-zip) serialization cannot be memory-mapped
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e2:
                raise ValueError(f"{path}: refused by torch.load(weights_only=True); it must hold only tensors "
                                 f"({str(e2).splitlines()[0]})") from e2
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{path} must hold a dict of name -> tensor, got {type(state).__name__}")
    return state


# --------------------------------------------------------------------------------------------
# Key mapping: VideoAlign (PeftModel over transformers-4.45 Qwen2-VL) -> our Qwen2VLModel
# --------------------------------------------------------------------------------------------

_PREFIXES = (("model.language_model.", "language_model."), ("model.visual.", "visual."),
             ("model.", "language_model."), ("visual.", "visual."), ("language_model.", "language_model."),
             ("rm_head.", "rm_head."), ("lm_head.", "lm_head."))


def map_module_name(name: str) -> str:
    """A VideoAlign parameter/module name -> the name in transformers 5's ``Qwen2VLModel``
    (``rm_head``/``lm_head`` kept as they are). Raises KeyError for anything else."""
    n = name[len("base_model.model."):] if name.startswith("base_model.model.") else name
    for old, new in _PREFIXES:
        if n.startswith(old):
            return new + n[len(old):]
    raise KeyError(name)


def split_state(state: dict[str, torch.Tensor], source: Path):
    """-> (lora {module: {"A": t, "B": t, "embedding": bool}}, other {our name: t}), names mapped.
    Drops peft's ``original_module`` copies, unwraps ``base_layer`` and ``modules_to_save``."""
    lora: dict[str, dict] = {}
    other: dict[str, torch.Tensor] = {}
    adapters = set()
    for key, tensor in state.items():
        m = _LORA_KEY.match(key) or _LORA_EMB_KEY.match(key)
        if m:
            adapters.add(m["adapter"])
            try:
                module = map_module_name(m["module"])
            except KeyError:
                raise KeyError(f"{source}: LoRA key {key!r} names no Qwen2-VL module") from None
            entry = lora.setdefault(module, {"embedding": m["kind"].startswith("lora_embedding")})
            entry[m["kind"][-1]] = tensor
            continue
        if ".lora_" in key:
            raise ValueError(f"{source}: unsupported peft tensor {key!r} (plain LoRA only: lora_A/lora_B)")
        if ".original_module." in key:
            continue
        plain = re.sub(r"\.modules_to_save\.[^.]+\.", ".", key).replace(".base_layer.", ".")
        try:
            name = map_module_name(plain)
        except KeyError:
            raise KeyError(f"{source}: key {key!r} names no Qwen2-VL parameter (expected base_model.model."
                           f"{{model,visual,rm_head,lm_head}}.*)") from None
        other[name] = tensor
    if len(adapters) > 1:
        raise ValueError(f"{source}: LoRA weights of several adapters {sorted(map(str, adapters))}")
    for module, entry in lora.items():
        if "A" not in entry or "B" not in entry:
            raise KeyError(f"{source}: LoRA of {module} lacks lora_{'A' if 'A' not in entry else 'B'}")
    return lora, other


# --------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------


def merge_lora(model: nn.Module, lora: dict[str, dict], cfg: ReleaseConfig, source: str) -> nn.Module:
    """Merge ``lora`` (as :func:`split_state` returns it) into ``model`` with peft, in float32,
    after checking every targeted module exists with the rank ``cfg`` names."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    if cfg.lora_r is None:
        raise ValueError(f"{source} holds LoRA weights but {cfg.path.name} has no enabled peft_lora_config "
                         f"(lora_enable, lora_r, lora_alpha)")
    modules = dict(model.named_modules())
    for name, entry in sorted(lora.items()):
        mod = modules.get(name)
        kinds = (nn.Embedding,) if entry["embedding"] else (nn.Linear,)
        if not isinstance(mod, kinds):
            raise KeyError(f"{source}: the LoRA targets {name!r}, which is "
                           f"{'missing' if mod is None else type(mod).__name__} in the Qwen2-VL model")
        rank = entry["A"].shape[0]  # lora_A [r, in], lora_embedding_A [r, num_embeddings]
        if rank != cfg.lora_r:
            raise ValueError(f"{source}: the LoRA of {name} has rank {rank}, {cfg.path.name} says "
                             f"peft_lora_config.lora_r={cfg.lora_r}")
    peft_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, use_rslora=cfg.use_rslora, lora_dropout=0.0,
                          bias="none", target_modules=sorted(lora))
    peft_model = get_peft_model(model, peft_cfg)
    state = {}
    for name, entry in lora.items():
        a, b = ("lora_embedding_A", "lora_embedding_B") if entry["embedding"] else ("lora_A.weight", "lora_B.weight")
        state[f"base_model.model.{name}.{a}"] = entry["A"].float()
        state[f"base_model.model.{name}.{b}"] = entry["B"].float()
    try:
        result = set_peft_model_state_dict(peft_model, state)
    except RuntimeError as e:
        raise ValueError(f"{source}: the LoRA weights do not fit the model: {e}") from e
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise KeyError(f"{source}: LoRA keys not loaded {list(result.unexpected_keys)[:5]}, LoRA parameters left "
                       f"unset {missing[:5]}")
    return peft_model.merge_and_unload(safe_merge=True)


__all__ = ["ADAPTER_NAME", "FULL_STATE_NAME", "NON_LORA_NAME", "ReleaseFiles", "TOKENIZER_DIR", "find_release_files",
           "load_tensors", "map_module_name", "merge_lora", "split_state"]
