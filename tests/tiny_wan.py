"""Tiny random Wan components shared by the model, streaming and CLI tests (CPU, fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from stream_r1_fast.models import CausalWanTransformer, preset

TEXT_DIM = 32
WORDS = "a red blue green circle square moves left right up down fast slow on black white background".split()


def tiny_transformer(seed: int = 0, **overrides) -> CausalWanTransformer:
    """The ``tiny`` preset with random weights large enough that attention is not uniform."""
    torch.manual_seed(seed)
    model = CausalWanTransformer(**preset("tiny", **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def tiny_vae_config(z_dim: int = 4) -> dict:
    return dict(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 2, 2],  # x4 in space
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[True, True],  # x4 in time, as Wan's
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**tiny_vae_config()).eval()


def tiny_text_encoder(seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(
        vocab_size=64, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return UMT5EncoderModel(cfg).eval()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def write_pipeline_dir(root: Path, seed: int = 0) -> Path:
    """A diffusers-style model folder (transformer/, vae/, text_encoder/, tokenizer/) of tiny
    random components, as ``StreamingPipeline.from_pretrained`` and the CLI read it."""
    root = Path(root)
    tiny_transformer(seed).save_pretrained(root / "transformer")
    tiny_vae(seed).save_pretrained(root / "vae")
    tiny_text_encoder(seed).save_pretrained(root / "text_encoder")
    tiny_tokenizer().save_pretrained(root / "tokenizer")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    return root
