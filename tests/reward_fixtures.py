"""A tiny random Qwen2-VL VideoReward for the reward tests (no hub access, CPU, fp32)."""

from __future__ import annotations

import torch
import torch.nn as nn

from stream_r1_fast.rewards.model import SPECIAL_TOKENS, VideoRewardConfig, VideoRewardModel

_TINY_WORDS = ("judge this generated video . it was from the caption : \" visual quality motion text alignment "
               "a red blue green white circle square moves left right up down fast slow on black background "
               "system you are helpful assistant user").split()
_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")


def tiny_tokenizer(reward_tokens: bool = True):
    """A word-level tokenizer with the Qwen2-VL special tokens and (``reward_tokens``) the three
    reward tokens appended after them — without, it stands for the base Qwen2-VL tokenizer
    before VideoAlign adds its tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0}
    for w in _TINY_WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<|endoftext|>")
    extra = list(_QWEN_SPECIALS[1:]) + (list(SPECIAL_TOKENS) if reward_tokens else [])
    fast.add_special_tokens({"additional_special_tokens": extra, "eos_token": "<|im_end|>"})
    return fast


def tiny_qwen2vl_config(tokenizer, vocab_size: int | None = None, tie_word_embeddings: bool = False):
    """Qwen2VLConfig: hidden 32, 2 LM layers (4 heads, 2 KV heads), vision depth 1, patch 14."""
    from transformers import Qwen2VLConfig

    tok = tokenizer
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=vocab_size or len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
                         pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=tok.eos_token_id),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=tie_word_embeddings,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def tiny_video_reward(seed: int = 0, **config) -> VideoRewardModel:
    """Qwen2-VL with hidden 32, 2 LM layers, vision depth 1; random weights (seeded); CPU fp32.
    ``config``: VideoRewardConfig fields (default mean/std (0.1, -0.2, 0.3) / (0.5, 1.5, 1.0))."""
    from transformers import Qwen2VLModel

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2VLModel(tiny_qwen2vl_config(tok)).float().eval()
    head = nn.Linear(32, 3, bias=False)
    with torch.no_grad():
        head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed + 1))
    config.setdefault("mean", (0.1, -0.2, 0.3))
    config.setdefault("std", (0.5, 1.5, 1.0))
    return VideoRewardModel(model, head, tok, VideoRewardConfig(**config))


__all__ = ["tiny_qwen2vl_config", "tiny_tokenizer", "tiny_video_reward"]
