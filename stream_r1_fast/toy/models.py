"""Configurations and loaders of the toy world's shipped networks (``weights/``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from stream_r1_fast.models import CausalWanTransformer, preset
from stream_r1_fast.toy.text import TEXT_DIM

WEIGHTS = Path(__file__).parent / "weights"

# The teacher: bidirectional Wan DiT, 4 blocks, width 128 = 2 heads x 64 (64: the smallest head
# dim of the fused attention), on the toy codec's 16-channel 8x8 latents with 2x2 patches:
# 16 tokens per latent frame, 144 for a 33-frame clip, 64 values per token. ~1.2M parameters.
TEACHER_CONFIG = preset(
    "tiny", num_layers=4, num_attention_heads=2, attention_head_dim=64, ffn_dim=512,
    in_channels=16, out_channels=16, text_dim=TEXT_DIM, freq_dim=64,
)


def save_transformer(model: CausalWanTransformer, path: str | Path, dtype: torch.dtype | None = None,
                     **metadata) -> None:
    """safetensors with the model config (and training facts) in the metadata; ``dtype``: the
    stored dtype of floating tensors (e.g. float16 to ship; :func:`load_transformer_file` loads
    into float32 weights)."""
    meta = {"config": json.dumps(dict(model.config)), **{k: str(v) for k, v in metadata.items()}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)


def load_transformer_file(path: str | Path, dtype: torch.dtype = torch.float32) -> CausalWanTransformer:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} has no 'config' metadata (not saved by stream_r1_fast.toy.models.save_transformer)")
    config = {k: v for k, v in json.loads(meta["config"]).items() if not k.startswith("_")}
    config["patch_size"] = tuple(config["patch_size"])
    model = CausalWanTransformer(**config)
    model.load_state_dict(load_file(str(path)))
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)


def load_teacher(path: str | Path | None = None) -> CausalWanTransformer:
    """The shipped bidirectional teacher (``weights/teacher.safetensors``)."""
    return load_transformer_file(path or WEIGHTS / "teacher.safetensors")
