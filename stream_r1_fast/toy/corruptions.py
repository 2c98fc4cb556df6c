"""Corruptions of world clips along the reward model's three axes (training data and tests).

Visual (VQ): additive noise, blur, colour shift, blockiness — on a random span of frames.
Motion (MQ): jitter (random per-frame offsets of the true positions), frozen spans (frames held),
teleports (an object jumps and stays displaced). Text (TA): a caption with one attribute changed,
or another clip's caption. Videos are [T, 3, H, W] in [0, 1]; every function takes a generator.
"""

from __future__ import annotations

import dataclasses
import random

import torch
import torch.nn.functional as F

from stream_r1_fast.toy.world import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, ClipAttributes, ToyWorld, caption_of

VISUAL = ("noise", "blur", "color_shift", "blocky")
MOTION = ("jitter", "frozen", "teleport")


def _span(t_len: int, rng: random.Random) -> slice:
    n = rng.randint(max(1, t_len // 3), t_len)
    a = rng.randint(0, t_len - n)
    return slice(a, a + n)


def corrupt_visual(video: torch.Tensor, kind: str, rng: random.Random) -> torch.Tensor:
    out = video.clone()
    span = _span(video.shape[0], rng)
    x = out[span]
    if kind == "noise":
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        x = x + rng.uniform(0.06, 0.2) * torch.randn(x.shape, generator=g)
    elif kind == "blur":
        k = rng.choice((3, 5))
        x = F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)
    elif kind == "color_shift":
        # At least 0.15 on one channel: milder shifts are not visibly wrong.
        shift = torch.tensor([rng.uniform(-0.3, 0.3) for _ in range(3)])
        k = rng.randrange(3)
        shift[k] = rng.choice((-1, 1)) * rng.uniform(0.15, 0.35)
        x = x + shift.view(1, 3, 1, 1)
    elif kind == "blocky":
        f = rng.choice((4, 8))
        x = F.interpolate(F.avg_pool2d(x, f), scale_factor=f, mode="nearest")
    else:
        raise ValueError(f"unknown visual corruption {kind!r}; choose one of {VISUAL}")
    out[span] = x
    return out.clamp(0, 1)


def corrupt_motion(world: ToyWorld, attrs: ClipAttributes, kind: str, rng: random.Random) -> torch.Tensor:
    """Re-render ``attrs`` with corrupted motion: [T, 3, H, W]."""
    t_len, n = attrs.positions.shape[:2]
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    if kind == "frozen":
        video = world.render(attrs)
        idx = torch.arange(t_len)
        for _ in range(rng.randint(1, 3)):
            a = rng.randrange(t_len - 2)
            idx[a : a + rng.randint(3, 10)] = idx[a]
        return video[idx]
    pos = attrs.positions.clone()
    if kind == "jitter":
        pos = pos + rng.uniform(0.6, 1.6) * torch.randn(pos.shape, generator=g) * attrs.width / 32
    elif kind == "teleport":
        for _ in range(rng.randint(1, 2)):
            t0, i = rng.randrange(1, t_len), rng.randrange(n)
            jump = (torch.rand(2, generator=g) * 2 - 1) * attrs.width / 3
            pos[t0:, i] += jump
        hi = torch.tensor([attrs.width, attrs.height], dtype=pos.dtype)
        pos = pos.clamp(torch.zeros(2), hi)
    else:
        raise ValueError(f"unknown motion corruption {kind!r}; choose one of {MOTION}")
    return world.render(dataclasses.replace(attrs, positions=pos))


def mismatch_caption(attrs: ClipAttributes, other: ClipAttributes, rng: random.Random) -> str:
    """A wrong caption: one attribute of one object (or the background) changed, or ``other``'s."""
    kind = rng.choice(("color", "shape", "direction", "background", "other"))
    if kind == "other":
        if other.caption != attrs.caption:
            return other.caption
        kind = "direction"
    objects = [dataclasses.replace(o) for o in attrs.objects]
    i = rng.randrange(len(objects))
    if kind == "color":
        used = {o.color for o in objects}
        objects[i].color = rng.choice([c for c in COLORS if c not in used])
    elif kind == "shape":
        objects[i].shape = rng.choice([s for s in SHAPES if s != objects[i].shape])
    elif kind == "direction":
        objects[i].direction = rng.choice([d for d in DIRECTIONS if d != objects[i].direction])
    elif kind == "background":
        return caption_of(objects, rng.choice([b for b in BACKGROUNDS if b != attrs.background]))
    return caption_of(objects, attrs.background)
