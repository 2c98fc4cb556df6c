"""Load VideoAlign's released VideoReward checkpoint into :class:`VideoRewardModel`.

Reward Forcing and Stream-R1 score videos with VideoAlign's VideoReward (KwaiVGI / KlingTeam
"VideoReward" on the Hugging Face hub): Qwen2-VL-2B-Instruct fine-tuned with a LoRA on the
language model, a fully trained vision tower, three added special tokens and a bias-free
reward head. :func:`load_videoalign_release` reads that folder (local paths only, no hub) and
returns our :class:`~stream_r1_fast.rewards.model.VideoRewardModel` with the LoRA merged
in; :func:`convert_videoalign_release` (also ``python -m stream_r1_fast.rewards.videoalign``)
writes it once into the merged layout that ``VideoRewardModel.from_pretrained`` and the
trainer's ``reward.factory`` read.

Release layout read (as VideoAlign's ``train_reward.py`` / ``trainer.py`` write it)::

    <release>/model_config.json       {"data_config", "training_args", "model_config",
                                       "peft_lora_config", "inference_config"}
    <release>/checkpoint-<step>/      the highest step unless ``checkpoint_step`` is given, with
        model.pth                     EITHER the whole PeftModel state dict (the published
                                      release): "base_model.model.model.layers.N.self_attn.q_proj
                                      .base_layer.weight", "....lora_A.default.weight",
                                      "base_model.model.visual.*", "base_model.model.rm_head.weight"
        adapter_model.safetensors     OR the LoRA alone ("....q_proj.lora_A.weight", no adapter name)
        non_lora_state_dict.pth         + the trained non-LoRA tensors (vision tower, resized
                                      embed_tokens holding the 3 tokens, rm_head.weight)
        tokenizer/                    optional: the base tokenizer + the 3 added tokens

Fields used: ``model_config``: ``model_name_or_path`` (the base Qwen2-VL; a hub id there needs
``base_model=``), ``use_special_tokens`` and ``reward_token`` (must be true / "special"),
``output_dim`` (1 in the release: one head row scored at each of the 3 tokens; 3: one row per
token). ``peft_lora_config``: ``lora_r``, ``lora_alpha``, ``use_rslora`` (the LoRA's target
modules are the ones its weights name). ``data_config``: ``fps``, ``max_frame_pixels``,
``num_frames``, ``sample_type`` (must be "uniform"), ``prompt_template_type``.
``inference_config``: ``VQ_mean``, ``VQ_std``, ``MQ_mean``, ``MQ_std``, ``TA_mean``, ``TA_std``.

Differences from VideoAlign's own loading code, deliberate:

* The pickles are read with ``torch.load(weights_only=True)`` only; anything but tensors is refused.
* Keys are mapped from transformers 4.45's Qwen2-VL (``model.layers``, ``visual``, ``lm_head``)
  to transformers 5's ``Qwen2VLModel`` (``language_model.layers``, ``visual``); ``lm_head`` is
  dropped (the reward reads hidden states, not logits). Every other key must land on a
  parameter, and every parameter the LoRA names must exist; no silent ``strict=False``.
* The LoRA is merged (peft ``merge_and_unload``, in float32) instead of kept live.
* A missing ``checkpoint-<step>`` is an error, not a fall-back to the latest one.
* The prompt wording is not in ``model_config.json`` (only ``prompt_template_type``, e.g.
  "detailed_special"); it lives in VideoAlign's ``prompt_template.py``. It is taken from
  ``prompt_template=`` (text with ``{caption}`` or VideoAlign's ``{text_prompt}``),
  ``prompt_template_file=`` (a ``.py`` read with ``ast``, never imported or run: the string
  constant for the type, e.g. ``DETAILED_PROMPT_WITH_SPECIAL_TOKEN``; any other file: its text),
  ``data_config.prompt_template`` or a ``prompt_template.py`` next to ``model_config.json``.
  The merged layout stores the resolved text, so this is needed once, at conversion.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from stream_r1_fast.rewards.model import DTYPES, SPECIAL_TOKENS, VideoRewardConfig, VideoRewardModel
from stream_r1_fast.rewards.release_config import (ReleaseConfig, read_release_config, resolve_base_model,
                                                   resolve_prompt_template)
from stream_r1_fast.rewards.release_weights import (ReleaseFiles, find_release_files, load_tensors, map_module_name,
                                                    merge_lora, split_state)


def load_videoalign_release(path: str | Path, base_model: str | Path | None = None, *,
                            checkpoint_step: int | None = None, prompt_template: str | None = None,
                            prompt_template_file: str | Path | None = None, dtype: torch.dtype | str | None = None,
                            device: torch.device | str | None = None, attn_implementation: str | None = None,
                            **config_overrides) -> VideoRewardModel:
    """VideoAlign's released VideoReward folder -> :class:`VideoRewardModel` (LoRA merged).

    ``path``: the release folder (model_config.json + checkpoint-<step>/) or a checkpoint folder.
    ``base_model``: the local Qwen2-VL-2B-Instruct folder (config.json, *.safetensors, tokenizer);
    needed when model_config.json names it by hub id. ``prompt_template``/``prompt_template_file``:
    see the module docstring. ``config_overrides``: VideoRewardConfig fields (e.g. ``source_fps``;
    ``mean``/``std`` replace inference_config). Weights are merged in float32, then cast to ``dtype``.
    Everything is validated (files, config fields, base folder, template) before weights are read.
    """
    from transformers import AutoTokenizer, Qwen2VLModel

    files = find_release_files(path, checkpoint_step)
    cfg = read_release_config(files.config)
    template = resolve_prompt_template(cfg, prompt_template, prompt_template_file)
    base = resolve_base_model(cfg, base_model)
    if cfg.stats is None and not ("mean" in config_overrides and "std" in config_overrides):
        raise KeyError(f"{files.config} has no inference_config (VQ_mean, VQ_std, MQ_mean, MQ_std, TA_mean, TA_std); "
                       f"pass mean=/std= to use other normalisation statistics")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    reward_config = VideoRewardConfig.from_dict({"data_config": {
        "fps": cfg.data.get("fps"), "max_frame_pixels": cfg.data.get("max_frame_pixels"),
        "num_frames": cfg.data.get("num_frames")}, "inference_config": cfg.stats or {},
        "prompt_template": template, "special_tokens": SPECIAL_TOKENS, **config_overrides})

    # tokenizer: the checkpoint's own, else the base one with VideoAlign's three tokens appended
    if files.tokenizer is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(files.tokenizer))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})

    # weights
    lora, other = {}, {}
    for f in files.weights:
        lo, ot = split_state(load_tensors(f), f)
        if set(lo) & set(lora) or set(ot) & set(other):
            raise ValueError(f"{f} repeats tensors of {files.weights[0]}")
        lora.update(lo)
        other.update(ot)
    source = " + ".join(str(f) for f in files.weights)
    head_w = other.pop("rm_head.weight", None)
    other.pop("lm_head.weight", None)
    if head_w is None:
        raise KeyError(f"{source}: no reward head 'rm_head.weight'")
    if head_w.dim() != 2 or head_w.shape[0] != cfg.output_dim:
        raise ValueError(f"{source}: rm_head.weight has shape {tuple(head_w.shape)}, expected "
                         f"({cfg.output_dim}, hidden) from model_config.output_dim={cfg.output_dim}")
    kwargs = {"dtype": torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report flags the unused lm_head; checked below instead
    try:
        model, info = Qwen2VLModel.from_pretrained(str(base), output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    if info["missing_keys"] or info["mismatched_keys"] or [k for k in info["unexpected_keys"]
                                                           if not k.startswith("lm_head.")]:
        raise ValueError(f"base model {base} does not load as Qwen2-VL: missing {sorted(info['missing_keys'])[:5]}, "
                         f"unexpected {sorted(info['unexpected_keys'])[:5]}, mismatched {info['mismatched_keys'][:5]}")
    emb_key = "language_model.embed_tokens.weight"
    if emb_key not in other:
        raise KeyError(f"{source}: no embed_tokens weight; the trained embeddings of {SPECIAL_TOKENS} must come from "
                       f"the checkpoint")
    rows = other[emb_key].shape[0]
    if rows != len(tokenizer):
        raise ValueError(f"{source}: embed_tokens has {rows} rows but the tokenizer "
                         f"({files.tokenizer or base}) has {len(tokenizer)} tokens")
    if rows != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows, mean_resizing=False)
    params = dict(model.state_dict())
    unknown = sorted(k for k in other if k not in params)
    if unknown:
        raise KeyError(f"{source}: tensors with no counterpart in Qwen2VLModel: {unknown[:8]}")
    bad = [(k, tuple(v.shape), tuple(params[k].shape)) for k, v in other.items() if v.shape != params[k].shape]
    if bad:
        raise ValueError(f"{source}: shape mismatch (key, checkpoint, model): {bad[:5]}")
    with torch.no_grad():
        for k, v in other.items():
            params[k].copy_(v.to(params[k].dtype))
    if lora:
        model = merge_lora(model, lora, cfg, source)

    hidden = model.config.text_config.hidden_size
    if tuple(head_w.shape) != (cfg.output_dim, hidden):
        raise ValueError(f"{source}: rm_head.weight has shape {tuple(head_w.shape)}, expected "
                         f"({cfg.output_dim}, {hidden}) from model_config.output_dim={cfg.output_dim}")
    head = nn.Linear(hidden, 3, bias=False)
    with torch.no_grad():  # output_dim 1: the one row scores each of the three tokens
        head.weight.copy_(head_w.float().expand(3, hidden))
    if dtype is not None:  # before wrapping: the normalisation buffers stay float32
        model, head = model.to(dtype), head.to(dtype)
    out = VideoRewardModel(model, head, tokenizer, reward_config)
    return out.to(device) if device is not None else out


def convert_videoalign_release(path: str | Path, out: str | Path, base_model: str | Path | None = None,
                               dtype: torch.dtype | str | None = "bf16", **kwargs) -> VideoRewardModel:
    """:func:`load_videoalign_release` then ``save_pretrained(out)`` (the merged layout, in
    ``dtype``; bf16 by default, the release's own precision)."""
    model = load_videoalign_release(path, base_model, dtype=dtype, **kwargs)
    model.save_pretrained(out)
    return model


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m stream_r1_fast.rewards.videoalign",
                                description="Merge VideoAlign's released VideoReward (LoRA + head) into the merged "
                                            "layout VideoRewardModel.from_pretrained reads.")
    p.add_argument("release", help="the release folder (model_config.json, checkpoint-<step>/)")
    p.add_argument("out", help="output folder")
    p.add_argument("--base-model", help="local Qwen2-VL-2B-Instruct folder")
    p.add_argument("--step", type=int, help="checkpoint step (default: the highest)")
    p.add_argument("--prompt-template-file", help="VideoAlign's prompt_template.py (read, not run) or a text file")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    a = p.parse_args(argv)
    convert_videoalign_release(a.release, a.out, a.base_model, dtype=a.dtype, checkpoint_step=a.step,
                               prompt_template_file=a.prompt_template_file)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()


# The release's pieces stay importable from here (they live in release_config / release_weights).
__all__ = ["ReleaseConfig", "ReleaseFiles", "convert_videoalign_release", "find_release_files",
           "load_tensors", "load_videoalign_release", "map_module_name", "read_release_config",
           "resolve_base_model", "resolve_prompt_template", "split_state"]
