"""What each reward axis of the v2 toy world should measure: targets in [0, 1] from the oracle.

The v1 reward model learned "clean vs corrupted" from labelled corruptions of true clips and
never saw a generated clip; on generated clips its VQ and MQ ranked against the oracle. The v2
reward model is trained instead to reproduce these targets, computed from the pixels, the
caption and the world's rules (:mod:`~stream_r1_fast.toy.oracle2`), on generated clips as well
as true and corrupted ones:

* **TA** (text alignment): the mean of the oracle's count, colour, shape and direction and of
  whether the clip's background is the captioned one: the fraction of what the caption says
  that the clip shows;
* **MQ** (motion quality): per caption object, ``speed_match x steadiness``, averaged; an object
  never seen whole scores 0. Motion is measured over 4-frame spans (the codec's temporal
  group, inside which a codec reconstructs motion unevenly): ``d`` = the centroid's wrap-aware
  displacement over each span where the object is seen throughout;
  ``speed_match = exp(-|log(achieved / captioned)|)`` with ``achieved = median |d| / 4``
  (px/frame), so 1 at the captioned speed, 1/2 at twice or half of it, ~0 standing still;
  ``steadiness = 1 - mean(min(1, |d - median d| / (4 captioned)))``: jitter, frozen spans
  and teleports are spans off the object's own steady velocity. MQ is about the objects the
  caption names (their speed is the captioned one), so the reward's MQ head sees the caption;
* **VQ** (visual quality): ``exp(-background_error / 0.05) x (1 - off_palette)`` against the
  background the clip shows (the world background most pixels are near; the caption does not
  enter VQ): the mean absolute error of the pixels no palette colour covers, and the fraction of
  pixels that are neither near that background, nor a palette colour, nor a mix of the two
  (noise, smears, wrong hues).

Direction is in TA and speed in MQ, as in VideoAlign's split of text alignment and motion.
"""

from __future__ import annotations

import math

import torch

from stream_r1_fast.toy.oracle2 import coverage, score_clip_v2
from stream_r1_fast.toy.world2 import BACKGROUNDS, COLORS, ToyWorldV2, parse_caption

TARGET_AXES = ("VQ", "MQ", "TA")
TA_METRICS = ("count", "color", "shape", "direction")
BACKGROUND_SCALE = 0.05  # background error at which VQ's background factor is 1/e
NEAR_BACKGROUND = 0.12   # a pixel this close (max over RGB) to the background colour is background


def off_palette_fraction(video: torch.Tensor, background: str) -> float:
    """Fraction of the pixels of ``video`` [T, 3, H, W] that no palette colour over the
    ``background`` (or the background itself) explains."""
    bg = torch.tensor(BACKGROUNDS[background]).view(1, 3, 1, 1)
    explained = (video - bg).abs().amax(1) < NEAR_BACKGROUND
    for rgb in COLORS.values():
        explained |= coverage(video, BACKGROUNDS[background], rgb) > 0
    return float((~explained).float().mean())


GROUP = 4  # frames over which motion is measured (the codec's temporal group)


def _motion_quality(tracks: list[dict], objects, world: ToyWorldV2) -> float:
    scores = []
    for track, obj in zip(tracks, objects):
        captioned = world.speed_px(obj.speed)
        steps, valid = track["steps"], track["valid"]
        if track["shape"] is None or len(valid) <= GROUP:
            scores.append(0.0)
            continue
        # Displacements over GROUP frames, where the object is seen at every frame of the span.
        n = len(valid) - GROUP  # spans: frames t..t + GROUP for t < n
        ok = torch.stack([valid[i:n + i] for i in range(GROUP + 1)]).all(0)
        disp = torch.stack([steps[i:n + i] for i in range(GROUP)]).sum(0)[ok]
        if disp.shape[0] == 0:
            scores.append(0.0)
            continue
        length = float(disp.norm(dim=-1).median()) / GROUP
        speed_match = math.exp(-abs(math.log((length + 1e-3) / captioned)))
        typical = disp.median(0).values
        deviation = ((disp - typical).norm(dim=-1) / (GROUP * captioned)).clamp(max=1)
        scores.append(speed_match * (1 - float(deviation.mean())))
    return sum(scores) / len(scores)


def shown_background(video: torch.Tensor) -> str:
    """The world background most of the pixels of ``video`` [T, 3, H, W] are near."""
    near = {name: float(((video - torch.tensor(rgb).view(1, 3, 1, 1)).abs().amax(1) < NEAR_BACKGROUND).float().mean())
            for name, rgb in BACKGROUNDS.items()}
    return max(near, key=near.get)


def background_error(video: torch.Tensor, background: str) -> float:
    """Mean absolute error, against the ``background`` colour, of the pixels no palette colour covers."""
    bg = torch.tensor(BACKGROUNDS[background]).view(1, 3, 1, 1)
    covered = sum(coverage(video, BACKGROUNDS[background], rgb) for rgb in COLORS.values())
    free = covered < 0.05
    return float(((video - bg).abs().mean(1) * free).sum() / free.sum().clamp_min(1))


def reward_targets_v2(video: torch.Tensor, caption: str, *, world: ToyWorldV2 | None = None) -> torch.Tensor:
    """Targets [3] (VQ, MQ, TA) in [0, 1] of one video [T, 3, H, W] in [0, 1] against its v2
    caption (module doc); ``world``: its object size, speeds and wrap (default ToyWorldV2())."""
    world = world or ToyWorldV2()
    video = video.detach().float().cpu().clamp(0, 1)
    m = score_clip_v2(video, caption, wrap=world.wrap, world=world)
    objects, background = parse_caption(caption)
    shown = shown_background(video)
    ta = (sum(m[k] for k in TA_METRICS) + float(shown == background)) / (len(TA_METRICS) + 1)
    mq = _motion_quality(m["tracks"], objects, world)
    vq = math.exp(-background_error(video, shown) / BACKGROUND_SCALE) * (1 - off_palette_fraction(video, shown))
    return torch.tensor([vq, mq, ta])


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of ``x`` [n], ties given their mean rank."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Spearman's rank correlation of two [n] tensors (ties: mean ranks); None when either is
    constant (no ranking to compare)."""
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"need two [n] tensors, got {tuple(x.shape)} and {tuple(y.shape)}")
    rx, ry = _ranks(x.double()), _ranks(y.double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denom if denom > 0 else None


def reward_targets_v2_batch(videos: torch.Tensor, captions, *, world: ToyWorldV2 | None = None) -> torch.Tensor:
    """[B, 3] targets of videos [B, T, 3, H, W]."""
    if videos.dim() != 5 or len(captions) != videos.shape[0]:
        raise ValueError(f"need videos [B, T, 3, H, W] and B captions, got {tuple(videos.shape)} and {len(captions)}")
    return torch.stack([reward_targets_v2(v, c, world=world) for v, c in zip(videos, captions)])


__all__ = ["TARGET_AXES", "background_error", "off_palette_fraction", "shown_background", "reward_targets_v2", "reward_targets_v2_batch", "spearman"]
