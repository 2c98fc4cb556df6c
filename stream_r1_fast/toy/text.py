"""The toy world's caption encoder: a fixed (untrained) structured embedding of the closed vocabulary.

A caption names up to three objects and a background (:mod:`stream_r1_fast.toy.world`). Each
word becomes one token whose embedding is ``one_hot(word) ++ one_hot(slot)`` (slot: the object
the word belongs to — counted by "and" — or the background, after "on"), zero-padded to
``TEXT_DIM``. The transformer's text projection and cross-attention learn the rest; binding a
colour to its shape is explicit in the slot code, which a 1M-parameter teacher trained for
minutes could not learn from word order alone. The empty prompt encodes to zeros (the
unconditional branch for classifier-free guidance). Same call as
:class:`stream_r1_fast.inference.PromptEncoder`: prompts -> ``[B, MAX_TOKENS, TEXT_DIM]``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from stream_r1_fast.inference.text import as_prompt_list
from stream_r1_fast.toy.world import VOCABULARY

MAX_TOKENS = 32
NUM_SLOTS = 4  # three objects and the background
TEXT_DIM = 48
assert len(VOCABULARY) + NUM_SLOTS <= TEXT_DIM


class ToyTextEncoder:
    """Captions -> embeddings [B, MAX_TOKENS, TEXT_DIM] (float32, on ``device``)."""

    max_length = MAX_TOKENS
    text_dim = TEXT_DIM

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._index = {w: i for i, w in enumerate(VOCABULARY)}

    def encode_one(self, caption: str) -> torch.Tensor:
        out = torch.zeros(MAX_TOKENS, TEXT_DIM)
        words = caption.split()
        if len(words) > MAX_TOKENS:
            raise ValueError(f"a toy caption has at most {MAX_TOKENS} words, got {len(words)}: {caption!r}")
        slot = 0
        for pos, word in enumerate(words):
            if word not in self._index:
                raise ValueError(f"word {word!r} of {caption!r} is not in the toy vocabulary {VOCABULARY}")
            if word == "and":
                slot = min(slot + 1, NUM_SLOTS - 2)
            elif word == "on":
                slot = NUM_SLOTS - 1
            out[pos, self._index[word]] = 1.0
            out[pos, len(VOCABULARY) + slot] = 1.0
        return out

    def check_prompt(self, caption: str) -> None:
        """The ValueError :meth:`encode_one` would raise for ``caption`` (a word outside the
        vocabulary, too many words), if any: the streaming pipeline checks every prompt of a
        schedule with it before the first chunk."""
        self.encode_one(caption)

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            as_prompt_list(prompts)  # raises the standard TypeError
        return torch.stack([self.encode_one(p) for p in prompts]).to(self.device)
