"""The one interface every reward model sits behind (docs/method.md, section 5).

A reward model scores decoded videos on three axes, in this order: visual quality (VQ),
motion quality (MQ) and text alignment (TA). It is differentiable with respect to the pixels,
so that Stream-R1's Intra-Perplexity can back-propagate each axis to the video.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence, runtime_checkable

import torch

AXES = ("VQ", "MQ", "TA")


@dataclasses.dataclass
class RewardOutput:
    """raw: [B, 3] logits in AXES order; normalized: [B, 3] = (raw - mean) / std with the
    statistics shipped with the model. Both keep the autograd graph to the pixels."""

    raw: torch.Tensor
    normalized: torch.Tensor

    def axis(self, name: str, normalized: bool = True) -> torch.Tensor:
        """[B] values of one axis ("VQ", "MQ" or "TA")."""
        return (self.normalized if normalized else self.raw)[:, AXES.index(name)]


@runtime_checkable
class RewardModel(Protocol):
    """``rewards(video, prompts)``: video [B, T, 3, H, W] float in [0, 1] (not [-1, 1]), one
    prompt per video; returns a :class:`RewardOutput`, differentiable w.r.t. ``video``."""

    def rewards(self, video: torch.Tensor, prompts: Sequence[str]) -> RewardOutput: ...


def normalize(raw: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(raw - mean) / std`` per axis; raw [B, 3], mean/std [3]."""
    return (raw - mean.to(raw)) / std.to(raw)


def check_video(video: torch.Tensor, prompts: Sequence[str]) -> None:
    """Clear errors for the inputs every reward model takes."""
    if not isinstance(video, torch.Tensor) or not video.is_floating_point():
        raise TypeError(f"video must be a float tensor [B, T, 3, H, W] in [0, 1], got {type(video).__name__}")
    if video.dim() != 5 or video.shape[2] != 3:
        raise ValueError(f"video must have shape [B, T, 3, H, W], got {tuple(video.shape)}")
    if isinstance(prompts, str) or len(prompts) != video.shape[0]:
        raise ValueError(f"prompts must be a sequence of {video.shape[0]} strings (one per video)")
