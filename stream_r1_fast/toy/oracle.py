"""Oracle metrics of toy videos from the world's ground truth, independent of the reward model.

Everything is measured procedurally from the pixels and the caption (which fixes the
background, and each object's colour, shape, size, direction and speed):

* segmentation: each pixel's coverage by each caption colour, by projecting the pixel on the
  segment between the caption's background colour and that colour (anti-aliased edges give
  fractional coverage); pixels far from that segment count for nothing;
* count: the caption's colours that are present (and no other palette colour is), counting
  solid pixels;
* colour: each caption object's colour is present at a plausible size;
* shape: the object's coverage map against templates of every shape rendered by the world at
  the object's centroid, best match over frames where the object is whole;
* direction (and speed): the object's centroid track against the world's own bouncing rollout
  from the first centroid for each of the 4 directions x 2 speeds, best fit;
* motion smoothness: fraction of steps whose centroid acceleration is < 0.5 px/frame^2,
  bounces at walls and frames where the object is occluded or incomplete excepted;
* dynamic degree: fraction of steps where the objects' centroids move > 0.2 px;
* frame-copy rate: fraction of consecutive frame pairs that are identical to 1/255;
* background error: mean |pixel - caption background| on background pixels;
* drift (long rollouts): how much background error and object area move between the first and
  the last window of the video.

Videos: float [T, 3, H, W] in [0, 1] (H, W as the world renders, 32x32 by default).
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch

from stream_r1_fast.toy.world import (
    BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, SIZES, SPEEDS, ObjectSpec, ToyWorld, area_fraction, parse_caption,
    shape_mask,
)

MIN_ALPHA = 0.3  # coverage below this is not an object pixel


def background_image(name: str, height: int, width: int) -> torch.Tensor:
    """[3, H, W] background of the given name (as the world renders it)."""
    top, bottom = (torch.tensor(c) for c in BACKGROUNDS[name])
    ramp = torch.linspace(0, 1, height)[:, None, None]
    return (top * (1 - ramp) + bottom * ramp).permute(2, 0, 1).expand(3, height, width)


def coverage(video: torch.Tensor, bg: torch.Tensor, color: str, tol: float = 0.12) -> torch.Tensor:
    """Coverage [T, H, W] in [0, 1] of ``video`` [T, 3, H, W] by ``color`` over background ``bg``."""
    c = torch.tensor(COLORS[color]).view(1, 3, 1, 1)
    d = c - bg.unsqueeze(0)  # [1, 3, H, W]
    p = video - bg.unsqueeze(0)
    alpha = ((p * d).sum(1, keepdim=True) / (d * d).sum(1, keepdim=True)).clamp(0, 1)
    resid = (p - alpha * d).norm(dim=1)
    return torch.where(resid < tol + 0.1 * alpha[:, 0], alpha[:, 0], torch.zeros(()))


def _template(shape: str, cx: float, cy: float, r: float, h: int, w: int, ss: int = 4) -> torch.Tensor:
    ys = (torch.arange(h * ss) + 0.5) / ss
    xs = (torch.arange(w * ss) + 0.5) / ss
    inside = shape_mask(shape, xs.view(1, -1) - cx, ys.view(-1, 1) - cy, r).float()
    return torch.nn.functional.avg_pool2d(inside[None, None], ss)[0, 0]


def _centroid(a: torch.Tensor) -> tuple[float, float]:
    h, w = a.shape
    m = a.sum().clamp_min(1e-6)
    ys, xs = torch.arange(h) + 0.5, torch.arange(w) + 0.5
    return float((a.sum(0) * xs).sum() / m), float((a.sum(1) * ys).sum() / m)


def _shape_of(alpha: torch.Tensor, frames: Sequence[int], r: float) -> str:
    """The shape whose template, centred to the same centroid, best matches the coverage."""
    h, w = alpha.shape[1:]
    err = {s: 0.0 for s in SHAPES}
    for t in frames:
        a = alpha[t]
        cx, cy = _centroid(a)
        for s in SHAPES:
            tpl = _template(s, cx, cy, r, h, w)
            tx, ty = _centroid(tpl)
            tpl = _template(s, 2 * cx - tx, 2 * cy - ty, r, h, w)
            err[s] += float((a - tpl).abs().sum() / tpl.sum().clamp_min(1e-6))
    return min(err, key=err.get)


def _motion_of(track: torch.Tensor, valid: torch.Tensor, obj: ObjectSpec, world: ToyWorld) -> tuple[str, str]:
    """(direction, speed) whose bouncing rollout from the first valid centroid fits the track best."""
    first = int(valid.nonzero()[0])
    best, best_err = (obj.direction, obj.speed), math.inf
    for d, sp in itertools.product(DIRECTIONS, SPEEDS):
        spec = ObjectSpec(obj.shape, obj.color, obj.size, d, sp)
        sim = world.rollout([spec], "black", start=track[first][None], num_frames=track.shape[0] - first).positions[:, 0]
        e = (sim - track[first:])[valid[first:]].norm(dim=-1).mean().item()
        if e < best_err:
            best, best_err = (d, sp), e
    return best


def score_clip(video: torch.Tensor, caption: str) -> dict[str, float]:
    """Oracle metrics of one video [T, 3, H, W] in [0, 1] against its caption (see module doc)."""
    if video.dim() != 4 or video.shape[1] != 3:
        raise ValueError(f"video must be [T, 3, H, W], got {tuple(video.shape)}")
    video = video.detach().float().cpu()
    objects, bg_name = parse_caption(caption)
    t_len, _, h, w = video.shape
    world = ToyWorld(height=h, width=w)  # for its bouncing rollout (any length)
    bg = background_image(bg_name, h, w)
    scale = w / 32.0

    alphas = {c: coverage(video, bg, c) for c in COLORS}
    areas = {c: a.sum((1, 2)) for c, a in alphas.items()}  # [T]
    expected = {o.color: _expected_area(o, scale) for o in objects}
    # Presence counts solid pixels only (coverage > 1/2), so colour fringes at edges (the
    # codec's, or a generator's) do not make objects.
    solid = {c: (a > 0.5).float().sum((1, 2)) for c, a in alphas.items()}
    present = {c for c in COLORS if float(solid[c].quantile(0.75)) >= 0.4 * expected.get(c, _min_area(scale))}

    color_ok, shape_ok, dir_ok, speed_ok, smooth, moving = [], [], [], [], [], []
    area_ratio = []
    for o in objects:
        a, area = alphas[o.color], areas[o.color]
        ratio = area / expected[o.color]
        area_ratio.append(ratio)
        color_ok.append(o.color in present)
        whole = (ratio > 0.85) & (ratio < 1.15)
        if not bool(whole.any()):
            shape_ok.append(False), dir_ok.append(False), speed_ok.append(False)
            continue
        idx = whole.nonzero()[:, 0]
        pick = idx[torch.linspace(0, len(idx) - 1, min(6, len(idx))).round().long()].tolist()
        shape_ok.append(_shape_of(a, pick, SIZES[o.size] * scale) == o.shape)
        track = torch.tensor([_centroid(a[t]) for t in range(t_len)])
        valid = ratio > 0.5
        d, sp = _motion_of(track, valid, o, world)
        dir_ok.append(d == o.direction)
        speed_ok.append(sp == o.speed)
        smooth.append(_smoothness(track, whole, SIZES[o.size] * scale, SPEEDS[o.speed] * scale, h, w))
        step = (track[1:] - track[:-1]).norm(dim=-1)
        ok = valid[1:] & valid[:-1]
        moving.append(float((step[ok] > 0.2).float().mean()) if bool(ok.any()) else 0.0)

    diffs = (video[1:] - video[:-1]).abs().flatten(1).amax(1)
    fg = sum(alphas[o.color] for o in objects).clamp(0, 1)
    bg_px = (fg < 0.05) & (sum(alphas.values()) < 0.05)
    bg_err = ((video - bg).abs().mean(1) * bg_px).flatten(1).sum(1) / bg_px.flatten(1).sum(1).clamp_min(1)  # [T]
    win = max(1, min(33, t_len // 4))
    area_mean = torch.stack(area_ratio).clamp(max=2).mean(0)  # [T]
    return {
        "count": float(present == set(expected)),
        "color": _mean(color_ok),
        "shape": _mean(shape_ok),
        "direction": _mean(dir_ok),
        "speed": _mean(speed_ok),
        "smoothness": _mean(smooth),
        "dynamic_degree": _mean(moving),
        "frame_copy_rate": float((diffs < 1.0 / 255).float().mean()) if t_len > 1 else 0.0,
        "background_error": float(bg_err.mean()),
        "drift": float((bg_err[-win:].median() - bg_err[:win].median()).abs() + (area_mean[-win:].median() - area_mean[:win].median()).abs()),
    }


def score_videos(videos: torch.Tensor, captions: Sequence[str]) -> dict[str, float]:
    """Mean of :func:`score_clip` over a batch: videos [B, T, 3, H, W] in [0, 1]."""
    if len(captions) != videos.shape[0]:
        raise ValueError(f"{len(captions)} captions for {videos.shape[0]} videos")
    scores = [score_clip(v, c) for v, c in zip(videos, captions)]
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}


def _expected_area(o: ObjectSpec, scale: float) -> float:
    r = SIZES[o.size] * scale
    return area_fraction(o.shape) * (2 * r) ** 2


def _min_area(scale: float) -> float:
    return 0.4 * (2 * SIZES["small"] * scale) ** 2


def _smoothness(track, whole, r, speed, h, w) -> float:
    """Fraction of steps with |acceleration| < 0.5 px/frame^2 (bounces, occlusions excepted)."""
    if track.shape[0] < 3:
        return 1.0
    acc = (track[2:] - 2 * track[1:-1] + track[:-2]).norm(dim=-1)
    ok = whole[2:] & whole[1:-1] & whole[:-2]
    near = r + speed + 0.75
    c = track[1:-1]
    wall = (c[:, 0] < near) | (c[:, 0] > w - near) | (c[:, 1] < near) | (c[:, 1] > h - near)
    counted = ok & ~wall
    if not bool(counted.any()):
        return 1.0
    return float((acc[counted] < 0.5).float().mean())


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else 0.0
