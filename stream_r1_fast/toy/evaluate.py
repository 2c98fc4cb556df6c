"""Sampling and scoring toy generators for the comparison (scripts/toy/compare.py).

Every generator is scored the same way: its videos (float [B, T, 3, H, W] in [0, 1]) against
their captions by the oracle of the world (``kit``, :mod:`stream_r1_fast.toy.kits`; default v1,
:mod:`stream_r1_fast.toy.oracle`, ground truth only) and by the reward model's normalised
VQ / MQ / TA. Students stream chunk by chunk
(:class:`~stream_r1_fast.inference.StreamingPipeline`, 4 steps per chunk); the bidirectional
teacher denoises whole clips (:func:`~stream_r1_fast.toy.sampling.euler_sample`).
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from stream_r1_fast.cache import CachePolicy
from stream_r1_fast.toy.kits import ToyKit, toy_kit

REWARD_AXES = ("VQ", "MQ", "TA")

# The cache policies of the long-rollout comparison, each with 6 latent frames of cache: the
# EMA-Sink at Reward Forcing's alpha (0.999) and at the 0.99 of its ablation, the static sink of
# Self-Forcing, and a plain sliding window.
POLICIES = {
    "EMA-Sink": CachePolicy.ema_sink(3, 3, 0.999),
    "EMA-Sink a=0.99": CachePolicy.ema_sink(3, 3, 0.99),
    "static sink": CachePolicy.static_sink(3, 3),
    "no sink": CachePolicy.no_sink(6),
}


def sample_teacher(teacher, captions: Sequence[str], seed: int, *, num_frames: int = 33, steps: int = 24,
                   cfg: float = 1.0, kit: ToyKit | None = None, codec=None) -> tuple[torch.Tensor, float]:
    """Whole-clip samples of the bidirectional teacher -> (videos [B, T, 3, H, W], frames per second).
    ``codec``: the teacher's latent space, default the kit's."""
    from stream_r1_fast.toy.sampling import euler_sample

    kit = kit or toy_kit("v1")
    codec, text, world = codec or kit.codec(), kit.text_encoder(), kit.world()
    latent_frames = 1 + (num_frames - 1) // codec.temporal_factor
    g = torch.Generator().manual_seed(seed)
    grid = world.height // codec.spatial_factor, world.width // codec.spatial_factor
    noise = torch.randn(len(captions), codec.latent_channels, latent_frames, *grid, generator=g)
    start = time.perf_counter()
    x0 = euler_sample(teacher, text(list(captions)), text([""] * len(captions)), noise, steps=steps, cfg=cfg)
    video = codec.decode_frames(x0)
    return video, video.shape[0] * video.shape[1] / (time.perf_counter() - start)


def stream_student(student, captions: Sequence[str], seed: int, *, num_frames: int = 33,
                   policy: CachePolicy = POLICIES["EMA-Sink"], kit: ToyKit | None = None,
                   codec=None) -> tuple[torch.Tensor, float]:
    """Streamed samples of a causal student (one seed per stream: ``seed * 1000 + b``)
    -> (videos [B, T, 3, H, W], frames per second, decoding included). ``codec``: the student's
    latent space, default the kit's."""
    from stream_r1_fast.inference import StreamingPipeline

    kit = kit or toy_kit("v1")
    world = kit.world()
    pipe = StreamingPipeline(student, codec or kit.codec(), kit.text_encoder())
    start = time.perf_counter()
    frames = pipe.generate(list(captions), num_frames, height=world.height, width=world.width, policy=policy,
                           seed=[seed * 1000 + b for b in range(len(captions))])
    video = frames.permute(0, 1, 4, 2, 3).float() / 255
    return video, video.shape[0] * video.shape[1] / (time.perf_counter() - start)


def score(videos: torch.Tensor, captions: Sequence[str], reward_model=None, kit: ToyKit | None = None) -> dict[str, float]:
    """Mean oracle metrics (and normalised rewards when ``reward_model`` is given) of a batch."""
    kit = kit or toy_kit("v1")
    per_clip = [kit.score_clip(v, c) for v, c in zip(videos, captions)]
    out = {k: sum(m[k] for m in per_clip) / len(per_clip) for k in per_clip[0]}
    if reward_model is not None:
        with torch.no_grad():
            r = reward_model.rewards(videos, list(captions)).normalized.mean(0)
        out.update({f"reward_{k}": float(v) for k, v in zip(REWARD_AXES, r)})
    return out


def window_scores(videos: torch.Tensor, captions: Sequence[str], starts: Sequence[int], length: int = 33,
                  reward_model=None, kit: ToyKit | None = None) -> list[dict[str, float]]:
    """:func:`score` of the ``length``-frame windows of long videos starting at ``starts``."""
    return [score(videos[:, s:s + length], captions, reward_model, kit) for s in starts]


__all__ = ["POLICIES", "REWARD_AXES", "sample_teacher", "score", "stream_student", "window_scores"]
