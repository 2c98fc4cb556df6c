"""Building a :class:`~stream_r1_fast.inference.pipeline.StreamingPipeline` from a Wan model
folder: dtype and LoRA arguments checked, every path and layout checked before any weight is
read, then the transformer (+ LoRA), the VAE and the text encoder loaded."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from stream_r1_fast.cache import resolve_cache_impl
from stream_r1_fast.devices import resolve_device
from stream_r1_fast.inference.sampler import FlowMatchSampler
from stream_r1_fast.inference.text import PromptEncoder
from stream_r1_fast.models.loading import load_transformer
from stream_r1_fast.models.wan import CausalWanTransformer

_DTYPE_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16, "half": torch.float16, "fp32": torch.float32,
                "float": torch.float32}


def as_dtype(value) -> torch.dtype | None:
    """A floating-point torch dtype from a dtype or its name ('bfloat16', 'torch.float16', 'bf16'), or None."""
    if isinstance(value, torch.dtype):
        return value if value.is_floating_point else None
    if isinstance(value, str):
        name = value.strip().lower().removeprefix("torch.")
        dt = _DTYPE_NAMES.get(name) or getattr(torch, name, None)
        return dt if isinstance(dt, torch.dtype) and dt.is_floating_point else None
    return None


def resolve_dtype(dtype, torch_dtype, name: str = "dtype", default: torch.dtype | None = torch.bfloat16):
    """``dtype`` / ``torch_dtype`` (diffusers' name) -> a floating-point torch dtype; giving both
    with different values, or anything else than a float dtype, is a ValueError naming it."""
    for value, arg in ((dtype, name), (torch_dtype, "torch_dtype")):
        if value is not None and as_dtype(value) is None:
            raise ValueError(f"{arg}={value!r}: not a floating-point torch dtype "
                             "(torch.bfloat16, torch.float16, torch.float32, or their names)")
    if dtype is not None and torch_dtype is not None and as_dtype(dtype) != as_dtype(torch_dtype):
        raise ValueError(f"{name}={dtype!r} and torch_dtype={torch_dtype!r} disagree: give one of them")
    value = dtype if dtype is not None else torch_dtype
    return default if value is None else as_dtype(value)


def check_lora_path(lora) -> None:
    """``lora``: a peft adapter folder or a weights file of a known type (FileNotFoundError /
    ValueError naming it otherwise)."""
    p = Path(lora)
    where = f"lora={str(lora)!r}"
    if not p.exists():
        raise FileNotFoundError(f"{where}: no such LoRA file or folder")
    if p.is_dir():
        if not (p / "adapter_config.json").is_file() or not any(
            (p / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")
        ):
            raise FileNotFoundError(f"{where}: a peft adapter folder needs adapter_config.json and adapter_model.safetensors")
    elif p.suffix not in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        raise ValueError(f"{where}: unknown LoRA type (expected a peft adapter folder, .safetensors, .pt or .pth)")


def load_parts(path: str | Path, *, checkpoint, which, lora, lora_alpha, dtype, torch_dtype, device,
               text_encoder_dtype, offload_text_encoder) -> tuple[CausalWanTransformer, torch.nn.Module, PromptEncoder]:
    """The models of :meth:`StreamingPipeline.from_pretrained`, which documents the arguments
    (all of its own but the pipeline's options; their defaults are there):
    ``(transformer, vae, prompt_encoder)``. Everything is checked before any weight is read."""
    from stream_r1_fast.models.loading import (
        check_checkpoint_path,
        find_wan_folder,
        load_vae,
        merge_lora,
        quiet_loading,
    )

    # -- everything that can be checked without the weights
    dtype = resolve_dtype(dtype, torch_dtype)
    enc_dtype = resolve_dtype(text_encoder_dtype, None, "text_encoder_dtype", default=dtype)
    device = resolve_device(device)
    if not isinstance(offload_text_encoder, bool):
        raise TypeError(f"offload_text_encoder must be True or False, got {offload_text_encoder!r}")
    if which not in ("auto", "generator", "generator_ema"):
        raise ValueError(f"which must be 'auto', 'generator' or 'generator_ema', got {which!r}")
    folder = find_wan_folder(path, "path", transformer_weights=checkpoint is None)
    if checkpoint is not None:
        check_checkpoint_path(checkpoint, "checkpoint")
    if lora is not None:
        check_lora_path(lora)
    if lora_alpha is not None and (isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or lora_alpha <= 0):
        raise ValueError(f"lora_alpha must be a number > 0, got {lora_alpha!r}")
    config = folder.transformer_config()
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        with torch.device("meta"):
            CausalWanTransformer.from_config(cfg)
    except Exception as exc:  # a config that cannot build the model is the folder's fault
        raise ValueError(f"path={str(path)!r}: {folder.transformer / 'config.json'} does not describe a "
                         f"Wan transformer: {exc}") from None

    # -- the weights
    with quiet_loading():
        load_dtype = torch.float32 if lora is not None else dtype
        transformer = load_transformer(checkpoint or folder.transformer, config, which=which,
                                       dtype=load_dtype, device=device)
        if lora is not None:
            transformer = merge_lora(transformer, lora, alpha=lora_alpha).to(dtype)
        vae = load_vae(folder.vae, dtype=torch.float32, device=device)
        encoder = PromptEncoder.from_parts(folder.tokenizer, folder.text_encoder, dtype=enc_dtype, device=device,
                                           offload=offload_text_encoder)
    return transformer, vae, encoder


def check_pipeline_options(init, options: dict) -> None:
    """The keyword arguments of ``StreamingPipeline.__init__`` (``init``) after the models,
    checked before anything is built or loaded."""
    params = inspect.signature(init).parameters
    known = [n for n in params if n not in ("self", "transformer", "vae", "prompt_encoder")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)} (known: {', '.join(known)})")
    chunk_frames = options.get("chunk_frames", params["chunk_frames"].default)
    if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be an int >= 1, got {chunk_frames!r}")
    graphs = options.get("cuda_graphs", False)
    if not isinstance(graphs, bool):
        raise TypeError(f"cuda_graphs must be True or False, got {graphs!r}")
    if options.get("compile_options") is not None and not (options.get("compile_step", False) or graphs):
        raise ValueError("compile_options are given but compile_step and cuda_graphs are False")
    if graphs and "mode" in (options.get("compile_options") or {}):
        raise ValueError("cuda_graphs=True sets torch.compile's mode ('reduce-overhead'); drop 'mode' from "
                         "compile_options")
    ahead = options.get("run_ahead")
    if ahead is not None and not isinstance(ahead, bool):
        raise TypeError(f"run_ahead must be True, False or None (on for CUDA), got {ahead!r}")
    if "cache_impl" in options:
        resolve_cache_impl(options["cache_impl"])
    sampler = options.get("sampler")
    if sampler is not None and not isinstance(sampler, FlowMatchSampler):
        raise TypeError(f"sampler must be a FlowMatchSampler, got {type(sampler).__name__}")
