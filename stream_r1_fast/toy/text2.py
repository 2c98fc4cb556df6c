"""Caption encoder of the v2 toy world: one token per object carrying all its attributes.

The v1 encoder (:mod:`stream_r1_fast.toy.text`) gives every word its own token, so the teacher
has to learn which colour word goes with which shape word and which motion words; the shipped
v1 teacher never learned to route direction and speed words at all (swapping one changes its
error by exactly 0). Here the binding is done by the encoder: token 0 is the background, tokens
1..n the caption's objects in caption order, each::

    [is_object, is_background | colour (5) | shape (3) | direction (4) | speed (2) | background (3)]

(concatenated one-hot groups, zero-padded to ``TEXT_DIM``); the remaining tokens up to
``MAX_TOKENS`` are zeros. Deterministic; not invariant to the order of the objects. The empty
prompt encodes to zeros (the unconditional branch for guidance). Same call as
:class:`stream_r1_fast.toy.text.ToyTextEncoder`: prompts -> ``[B, MAX_TOKENS, TEXT_DIM]``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from stream_r1_fast.inference.text import as_prompt_list
from stream_r1_fast.toy.world2 import ATTRIBUTE_GROUPS, BACKGROUNDS, parse_caption

MAX_TOKENS = 4  # the background and up to three objects
TEXT_DIM = 32

#: Offsets of each one-hot group in a token: name -> (start, values).
GROUPS: dict[str, tuple[int, tuple[str, ...]]] = {}
_o = 2
for _name, _values in list(ATTRIBUTE_GROUPS.items()) + [("background", tuple(BACKGROUNDS))]:
    GROUPS[_name] = (_o, _values)
    _o += len(_values)
USED_DIMS = _o
assert USED_DIMS <= TEXT_DIM
del _o, _name, _values


class ObjectTokenEncoder:
    """Captions -> embeddings [B, MAX_TOKENS, TEXT_DIM] (float32, on ``device``)."""

    max_length = MAX_TOKENS
    text_dim = TEXT_DIM

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    @staticmethod
    def _set(token: torch.Tensor, group: str, value: str) -> None:
        start, values = GROUPS[group]
        token[start + values.index(value)] = 1.0

    def encode_one(self, caption: str) -> torch.Tensor:
        out = torch.zeros(MAX_TOKENS, TEXT_DIM)
        if not caption.strip():
            return out
        objects, background = parse_caption(caption)  # ValueError: unknown word, malformed caption
        out[0, 1] = 1.0
        self._set(out[0], "background", background)
        for i, o in enumerate(objects, start=1):
            out[i, 0] = 1.0
            for group in ATTRIBUTE_GROUPS:
                self._set(out[i], group, getattr(o, group))
        return out

    def check_prompt(self, caption: str) -> None:
        """The ValueError :meth:`encode_one` would raise for ``caption`` (a word outside the
        vocabulary, a malformed caption), if any."""
        if not isinstance(caption, str):
            raise ValueError(f"a prompt is a str, got {type(caption).__name__}")
        self.encode_one(caption)

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        prompts = as_prompt_list(prompts)  # the standard TypeError for anything else
        return torch.stack([self.encode_one(p) for p in prompts]).to(self.device)
