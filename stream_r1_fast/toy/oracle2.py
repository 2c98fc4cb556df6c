"""Oracle metrics of v2 toy videos (:mod:`stream_r1_fast.toy.world2`), wrap-aware.

Measured procedurally from the pixels and the caption, like v1's :mod:`stream_r1_fast.toy.oracle`:

* segmentation: each pixel's coverage by each palette colour, projecting the pixel on the
  segment between the caption's background colour and that colour;
* count: the caption's colours are present and no other palette colour is (solid pixels);
* colour: each caption object's colour is present at a plausible size;
* shape: the object's coverage, moved (rolled) so that it does not straddle an edge, against
  templates of the 3 shapes at its centroid, over frames where the object is whole;
* direction / speed: the centroid track against the world's own rollout (wrapping or bouncing)
  from the first centroid, for each of 4 directions x 2 speeds and for standing still, best fit;
  distances are taken on the torus in wrap mode, so a centroid that jumps across an edge is one
  step of motion, not a teleport (standing still as the best fit counts as wrong);
* smoothness: fraction of steps with |acceleration| < 0.5 px/frame^2 (wrap-aware steps; bounces
  excepted in bounce mode, frames with the object not whole excepted);
* dynamic degree: fraction of steps where the centroid moves > 0.2 px;
* **stuck rate**: fraction of steps where the centroid moves less than ``STUCK_FRACTION`` of the
  captioned speed;
* **ghost rate**: over the frames where the captioned motion (from the frame-0 centroid) has
  taken the object off its frame-0 footprint (the pixels it covered solidly at frame 0), the
  fraction in which that footprint is still mostly covered by the object's colour: the frame-0
  layout persisting where the object no longer is (a stale sink, a copied first frame);
* frame-copy rate, background error, drift: as v1.

:func:`score_clip_v2` returns these (floats) plus ``tracks``: per caption object its detected
shape / direction / speed and per-frame centroid (wrapped), step and validity.
Videos: float [T, 3, H, W] in [0, 1].
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import torch

from stream_r1_fast.toy.world import area_fraction
from stream_r1_fast.toy.world2 import (
    BACKGROUNDS, COLORS, DIRECTION_NAMES, SHAPES, SPEED_NAMES, ObjectSpecV2, ToyWorldV2, parse_caption,
    wrap_delta,
)

STUCK_FRACTION = 0.25
GHOST_COVER = 0.5  # mean coverage of the frame-0 footprint that counts as a ghost
METRICS = ("count", "color", "shape", "direction", "speed", "smoothness", "dynamic_degree", "stuck_rate",
           "ghost_rate", "frame_copy_rate", "background_error", "drift")


def coverage(video: torch.Tensor, bg_rgb: Sequence[float], rgb: Sequence[float], tol: float = 0.12) -> torch.Tensor:
    """Coverage [T, H, W] in [0, 1] of ``video`` [T, 3, H, W] by colour ``rgb`` over a plain ``bg_rgb``."""
    bg = torch.tensor(bg_rgb).view(1, 3, 1, 1)
    d = torch.tensor(rgb).view(1, 3, 1, 1) - bg
    p = video - bg
    alpha = ((p * d).sum(1, keepdim=True) / (d * d).sum()).clamp(0, 1)
    resid = (p - alpha * d).norm(dim=1)
    return torch.where(resid < tol + 0.1 * alpha[:, 0], alpha[:, 0], torch.zeros(()))


def centroid(a: torch.Tensor, wrap: bool) -> tuple[float, float]:
    """(x, y) centroid of a coverage map [H, W]; in wrap mode on the torus (exact for an object
    smaller than half the frame: the map is rolled so that the object sits whole, then unrolled)."""
    h, w = a.shape
    m = a.sum().clamp_min(1e-6)
    ys, xs = torch.arange(h) + 0.5, torch.arange(w) + 0.5
    if not wrap:
        return float((a.sum(0) * xs).sum() / m), float((a.sum(1) * ys).sum() / m)
    out = []
    for marg, n in ((a.sum(0), w), (a.sum(1), h)):
        ang = (torch.arange(n) + 0.5) * (2 * math.pi / n)
        c0 = math.atan2(float((marg * ang.sin()).sum()), float((marg * ang.cos()).sum())) * n / (2 * math.pi)
        shift = int(round(n / 2 - c0))
        rolled = torch.roll(marg, shift)
        c = float((rolled * (torch.arange(n) + 0.5)).sum() / m) - shift
        out.append(c % n)
    return out[0], out[1]


def _rolled(a: torch.Tensor, c: tuple[float, float]) -> tuple[torch.Tensor, tuple[float, float]]:
    """``a`` rolled by whole pixels so that centre ``c`` sits mid-frame; the centre after the roll."""
    h, w = a.shape
    sx, sy = int(round(w / 2 - c[0])), int(round(h / 2 - c[1]))
    return torch.roll(a, (sy, sx), (0, 1)), ((c[0] + sx) % w, (c[1] + sy) % h)


def _shape_of(world: ToyWorldV2, alpha: torch.Tensor, frames: Sequence[int], track: torch.Tensor) -> str:
    """The shape whose template, centred to the same centroid, best matches the coverage."""
    h, w = alpha.shape[1:]
    err = {s: 0.0 for s in SHAPES}
    for t in frames:
        a, (cx, cy) = _rolled(alpha[t], (float(track[t, 0]), float(track[t, 1])))
        for s in SHAPES:
            tpl = world.object_cover(s, torch.tensor([[cx, cy]]), h, w, wrap=False)[0]
            tx, ty = centroid(tpl, wrap=False)
            tpl = world.object_cover(s, torch.tensor([[2 * cx - tx, 2 * cy - ty]]), h, w, wrap=False)[0]
            err[s] += float((a - tpl).abs().sum() / tpl.sum().clamp_min(1e-6))
    return min(err, key=err.get)


def _diff(a: torch.Tensor, b: torch.Tensor, world: ToyWorldV2) -> torch.Tensor:
    d = a - b
    if world.wrap:
        d = wrap_delta(d, torch.tensor([float(world.width), float(world.height)]))
    return d


def _motion_of(world: ToyWorldV2, track, valid, obj: ObjectSpecV2) -> tuple[str | None, str | None]:
    """(direction, speed) whose rollout from the first valid centroid fits the track best;
    (None, None) when standing still fits best."""
    first = int(valid.nonzero()[0])
    obs, ok = track[first:], valid[first:]
    best, best_err = (None, None), _diff(track[first][None], obs, world)[ok].norm(dim=-1).mean().item()
    for d, sp in itertools.product(DIRECTION_NAMES, SPEED_NAMES):
        spec = ObjectSpecV2(obj.shape, obj.color, d, sp)
        sim = world.rollout([spec], "black", start=track[first][None], num_frames=obs.shape[0]).positions[:, 0]
        e = _diff(sim, obs, world)[ok].norm(dim=-1).mean().item()
        if e < best_err - 1e-6:
            best, best_err = (d, sp), e
    return best


def score_clip_v2(video: torch.Tensor, caption: str, *, wrap: bool, world: ToyWorldV2 | None = None) -> dict:
    """Oracle metrics of one video [T, 3, H, W] in [0, 1] against its v2 caption (module doc).
    ``wrap``: the world's mode; ``world``: its object size and speeds (default ToyWorldV2())."""
    if video.dim() != 4 or video.shape[1] != 3:
        raise ValueError(f"video must be [T, 3, H, W], got {tuple(video.shape)}")
    video = video.detach().float().cpu()
    objects, bg_name = parse_caption(caption)
    t_len, _, h, w = video.shape
    world = dataclasses.replace(world or ToyWorldV2(), height=h, width=w, wrap=wrap, num_frames=1)
    r = world.radius
    bg_rgb = BACKGROUNDS[bg_name]

    alphas = {c: coverage(video, bg_rgb, rgb) for c, rgb in COLORS.items()}
    expected = {o.color: area_fraction(o.shape) * (2 * r) ** 2 for o in objects}
    min_area = min(area_fraction(s) for s in SHAPES) * (2 * r) ** 2
    solid = {c: (a > 0.5).float().sum((1, 2)) for c, a in alphas.items()}
    present = {c for c in COLORS if float(solid[c].quantile(0.75)) >= 0.4 * expected.get(c, min_area)}

    per = {k: [] for k in ("color", "shape", "direction", "speed", "smoothness", "dynamic_degree", "stuck_rate",
                           "ghost_rate")}
    area_ratio, tracks = [], []
    for o in objects:
        a = alphas[o.color]
        ratio = a.sum((1, 2)) / expected[o.color]
        area_ratio.append(ratio)
        per["color"].append(o.color in present)
        whole, valid = (ratio > 0.85) & (ratio < 1.15), ratio > 0.5
        track = torch.tensor([centroid(a[t], wrap) for t in range(t_len)])
        info = {"color": o.color, "shape": None, "direction": None, "speed": None,
                "centres": track, "valid": valid, "steps": torch.zeros(max(t_len - 1, 0), 2)}
        tracks.append(info)
        per["ghost_rate"].append(_ghost_rate(world, a, o, track, valid))
        if not bool(whole.any()):
            for k in ("shape", "direction", "speed", "smoothness", "dynamic_degree"):
                per[k].append(0.0)
            per["stuck_rate"].append(1.0)
            continue
        idx = whole.nonzero()[:, 0]
        pick = idx[torch.linspace(0, len(idx) - 1, min(6, len(idx))).round().long()].tolist()
        info["shape"] = _shape_of(world, a, pick, track)
        info["direction"], info["speed"] = _motion_of(world, track, valid, o)
        per["shape"].append(info["shape"] == o.shape)
        per["direction"].append(info["direction"] == o.direction)
        per["speed"].append(info["speed"] == o.speed)
        steps = _diff(track[1:], track[:-1], world)
        info["steps"] = steps
        ok = valid[1:] & valid[:-1]
        size = steps.norm(dim=-1)
        per["dynamic_degree"].append(float((size[ok] > 0.2).float().mean()) if bool(ok.any()) else 0.0)
        if not world.wrap:  # a bounce shortens a step: steps next to a wall are not counted
            ok = ok & ~_near_wall(world, track[:-1], world.speed_px(o.speed))
        per["stuck_rate"].append(
            float((size[ok] < STUCK_FRACTION * world.speed_px(o.speed)).float().mean()) if bool(ok.any()) else 0.0)
        per["smoothness"].append(_smoothness(world, track, steps, whole, world.speed_px(o.speed)))

    video_bg = torch.tensor(bg_rgb).view(1, 3, 1, 1)
    diffs = (video[1:] - video[:-1]).abs().flatten(1).amax(1)
    bg_px = sum(alphas.values()) < 0.05
    bg_err = ((video - video_bg).abs().mean(1) * bg_px).flatten(1).sum(1) / bg_px.flatten(1).sum(1).clamp_min(1)
    win = max(1, min(33, t_len // 4))
    area_mean = torch.stack(area_ratio).clamp(max=2).mean(0)
    out = {
        "count": float(present == set(expected)),
        **{k: _mean(per[k]) for k in ("color", "shape", "direction", "speed", "smoothness", "dynamic_degree",
                                      "stuck_rate", "ghost_rate")},
        "frame_copy_rate": float((diffs < 1.0 / 255).float().mean()) if t_len > 1 else 0.0,
        "background_error": float(bg_err.mean()),
        "drift": float((bg_err[-win:].median() - bg_err[:win].median()).abs()
                       + (area_mean[-win:].median() - area_mean[:win].median()).abs()),
        "tracks": tracks,
    }
    return {k: out[k] for k in METRICS + ("tracks",)}


def score_videos_v2(videos: torch.Tensor, captions: Sequence[str], *, wrap: bool,
                    world: ToyWorldV2 | None = None) -> dict[str, float]:
    """Mean of :func:`score_clip_v2`'s metrics over a batch: videos [B, T, 3, H, W] in [0, 1]."""
    if len(captions) != videos.shape[0]:
        raise ValueError(f"{len(captions)} captions for {videos.shape[0]} videos")
    scores = [score_clip_v2(v, c, wrap=wrap, world=world) for v, c in zip(videos, captions)]
    return {k: sum(s[k] for s in scores) / len(scores) for k in METRICS}


def _ghost_rate(world: ToyWorldV2, a: torch.Tensor, o: ObjectSpecV2, track, valid) -> float:
    """Fraction of the frames, after the captioned motion took the object off its frame-0
    footprint, in which the footprint is still covered by its colour (mean coverage > GHOST_COVER)."""
    foot = a[0] > 0.5
    if not bool(valid[0]) or int(foot.sum()) == 0 or a.shape[0] < 2:
        return 0.0
    sim = world.rollout([o], "black", start=track[0][None], num_frames=a.shape[0]).positions[:, 0]
    expected = world.object_cover(o.shape, sim, a.shape[1], a.shape[2])  # [T, H, W]
    left = (expected * foot).sum((1, 2)) < 0.05 * foot.sum()
    if not bool(left.any()):
        return 0.0
    still = (a * foot).sum((1, 2)) / foot.sum() > GHOST_COVER
    return float(still[left].float().mean())


def _smoothness(world: ToyWorldV2, track, steps, whole, speed) -> float:
    """Fraction of steps with |acceleration| < 0.5 px/frame^2 (bounces, incomplete objects excepted)."""
    if track.shape[0] < 3:
        return 1.0
    acc = (steps[1:] - steps[:-1]).norm(dim=-1)
    counted = whole[2:] & whole[1:-1] & whole[:-2]
    if not world.wrap:
        counted &= ~_near_wall(world, track[1:-1], speed)
    if not bool(counted.any()):
        return 1.0
    return float((acc[counted] < 0.5).float().mean())


def _near_wall(world: ToyWorldV2, c: torch.Tensor, speed: float) -> torch.Tensor:
    """[T] whether centres ``c`` [T, 2] are within a step of a bounce."""
    near = world.radius + speed + 0.75
    return (c[:, 0] < near) | (c[:, 0] > world.width - near) | (c[:, 1] < near) | (c[:, 1] > world.height - near)


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else 0.0
