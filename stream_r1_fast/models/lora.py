"""LoRA adapters for the Wan transformer: read from peft folders, peft ``.safetensors`` or
LongLive ``.pt`` files (:func:`read_lora`, original Wan module names renamed by diffusers'
converter) and merged into the weights through peft (:func:`merge_lora`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

from stream_r1_fast.files import read_json_object
from stream_r1_fast.models.layouts import LEADING_PREFIXES, convert_original_to_diffusers, strip_key
from stream_r1_fast.models.quiet import quiet_loading
from stream_r1_fast.models.weight_files import PICKLE_SUFFIXES, CheckpointError, read_safetensors, read_weights_file, torch_load

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
            config = read_json_object(cfg_file, CheckpointError)
        except CheckpointError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        if config.get("peft_type", "LORA") != "LORA":
            raise CheckpointError(f"{where}: a {config.get('peft_type')} adapter; only LoRA is supported")
        raw = read_weights_file(weights[0])
    elif path.suffix in (".safetensors", *PICKLE_SUFFIXES):
        if path.suffix == ".safetensors":
            raw = read_safetensors(path)
        else:
            try:
                obj = torch_load(path)
            except CheckpointError as exc:
                raise CheckpointError(f"{where}: {exc}") from None
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
        # LongLive under FSDP: model.base_model.model.blocks...
        m = _LORA_KEY.match(strip_key(key, (_PEFT_PREFIX, *LEADING_PREFIXES)))
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


__all__ = ["merge_lora", "read_lora"]
