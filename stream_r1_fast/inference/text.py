"""The UMT5 text encoder (transformers) with an embedding cache per prompt."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch


def as_prompt_list(prompts, what: str = "prompt") -> list[str]:
    """A str or a non-empty sequence of str -> list[str]; anything else is a TypeError."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, Sequence) and prompts and all(isinstance(p, str) for p in prompts):
        return list(prompts)
    raise TypeError(f"{what} must be a str or a non-empty list of str, got {type(prompts).__name__}: {prompts!r:.80}")


class PromptEncoder:
    """Prompts -> text embeddings [B, max_length, text_dim], as Wan conditions on them: padded to
    ``max_length`` tokens, the embeddings of padding positions set to zero. The last
    ``cache_size`` prompts' embeddings are kept, so a prompt is encoded once."""

    def __init__(self, tokenizer, text_encoder, max_length: int = 512, cache_size: int = 32):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", **kwargs
    ) -> "PromptEncoder":
        """From a folder with ``tokenizer/`` and ``text_encoder/`` (a diffusers Wan model folder)."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        path = Path(path)
        for sub in ("tokenizer", "text_encoder"):
            if not (path / sub).is_dir():
                raise FileNotFoundError(f"{path / sub} does not exist (expected a Wan model folder with {sub}/)")
        tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
        encoder = UMT5EncoderModel.from_pretrained(str(path / "text_encoder"), dtype=dtype).to(device)
        return cls(tokenizer, encoder, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden * mask[..., None].to(hidden.dtype)

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        prompts = as_prompt_list(prompts)
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            for p, emb in zip(todo, self._encode(todo)):
                self._cache[p] = emb
        for p in prompts:
            self._cache.move_to_end(p)
        out = torch.stack([self._cache[p] for p in prompts])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out
