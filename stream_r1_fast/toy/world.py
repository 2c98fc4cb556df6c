"""The toy world: a seedable procedural generator of short captioned videos.

One to three coloured shapes (circle, square, triangle, diamond; small or large) move at a
constant speed (slow or fast) in one of four directions and bounce off the walls, over a
plain or gradient background. The caption is built from the attributes::

    "a small red circle moving left fast and a large blue square moving up slow on a black background"

Every clip carries its ground truth (:class:`ClipAttributes`): per-frame centres and
velocities of each object, plus the attributes the caption names. Objects in one clip have
distinct colours, and object colours are bright while backgrounds are dark, so that an oracle
can segment generated videos procedurally (:mod:`stream_r1_fast.toy.oracle`).

Frames are rendered with 4x4 supersampling (anti-aliased edges), so sub-pixel motion is
smooth. Videos are float32 ``[T, 3, H, W]`` in [0, 1]; ``T = 1 + 4k`` matches the causal
grouping of the codec (first frame alone, then groups of 4).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.15, 0.15),
    "green": (0.15, 0.85, 0.2),
    "blue": (0.2, 0.4, 1.0),
    "yellow": (0.95, 0.9, 0.15),
    "cyan": (0.15, 0.9, 0.95),
    "magenta": (0.95, 0.2, 0.9),
    "white": (0.95, 0.95, 0.95),
}
# name -> (top colour, bottom colour); a plain background has both equal.
BACKGROUNDS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "black": ((0.05, 0.05, 0.05), (0.05, 0.05, 0.05)),
    "gray": ((0.35, 0.35, 0.35), (0.35, 0.35, 0.35)),
    "brown": ((0.35, 0.22, 0.1), (0.35, 0.22, 0.1)),
    "purple gradient": ((0.3, 0.05, 0.35), (0.02, 0.02, 0.1)),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES: dict[str, float] = {"small": 3.5, "large": 6.0}  # half-extent in pixels at 32x32
SPEEDS: dict[str, float] = {"slow": 0.5, "fast": 1.0}  # pixels per frame at 32x32
DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

#: Every word a caption can contain (the text encoder's closed vocabulary).
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["a", "moving", "and", "on", "background"]
        + list(SIZES) + list(COLORS) + list(SHAPES) + list(DIRECTIONS) + list(SPEEDS)
        + [w for name in BACKGROUNDS for w in name.split()]
    )
)


@dataclasses.dataclass
class ObjectSpec:
    """What the caption says about one object (its motion at frame 0)."""

    shape: str
    color: str
    size: str
    direction: str
    speed: str

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape} moving {self.direction} {self.speed}"


@dataclasses.dataclass
class ClipAttributes:
    """Ground truth of one clip. positions/velocities: [T, N, 2] (x, y) in pixels of the
    rendered resolution (centre of each object; velocity = position change to the next frame
    as rendered, after bounces)."""

    objects: list[ObjectSpec]
    background: str
    positions: torch.Tensor
    velocities: torch.Tensor
    height: int
    width: int

    @property
    def caption(self) -> str:
        return caption_of(self.objects, self.background)

    def half_extent(self, i: int) -> float:
        return SIZES[self.objects[i].size] * self.width / 32.0


def caption_of(objects: Sequence[ObjectSpec], background: str) -> str:
    return " and ".join(o.phrase() for o in objects) + f" on a {background} background"


def parse_caption(caption: str) -> tuple[list[ObjectSpec], str]:
    """The inverse of :func:`caption_of`; a ValueError names what does not parse."""
    text = caption.strip()
    if " on a " not in text or not text.endswith(" background"):
        raise ValueError(f"a toy caption ends with 'on a <background> background', got {caption!r}")
    head, bg = text.rsplit(" on a ", 1)
    bg = bg[: -len(" background")]
    if bg not in BACKGROUNDS:
        raise ValueError(f"unknown background {bg!r} in {caption!r}; choose one of {sorted(BACKGROUNDS)}")
    return _parse_objects(head), bg


def _parse_objects(head: str) -> list[ObjectSpec]:
    out = []
    for phrase in head.split(" and "):
        w = phrase.split()
        if len(w) != 7 or w[0] != "a" or w[4] != "moving":
            raise ValueError(f"object phrase {phrase!r} is not 'a <size> <colour> <shape> moving <direction> <speed>'")
        spec = ObjectSpec(size=w[1], color=w[2], shape=w[3], direction=w[5], speed=w[6])
        for value, table, what in (
            (spec.size, SIZES, "size"), (spec.color, COLORS, "colour"), (spec.shape, SHAPES, "shape"),
            (spec.direction, DIRECTIONS, "direction"), (spec.speed, SPEEDS, "speed"),
        ):
            if value not in table:
                raise ValueError(f"unknown {what} {value!r} in {phrase!r}; choose one of {sorted(table)}")
        out.append(spec)
    if not 1 <= len(out) <= 3:
        raise ValueError(f"a toy caption names one to three objects, got {len(out)}")
    return out


class ClipSampling:
    """``sample`` / ``batch`` of a world that has ``sample_attributes(generator, num_frames)``
    and ``render(attrs)`` (both toy worlds)."""

    def sample(self, generator: torch.Generator, num_frames: int | None = None):
        """One random clip: (video [T, 3, H, W] in [0, 1], its ground truth)."""
        attrs = self.sample_attributes(generator, num_frames)
        return self.render(attrs), attrs

    def batch(self, batch_size: int, seed: int, num_frames: int | None = None):
        """``batch_size`` clips from one seed: (video [B, T, 3, H, W], ground truths)."""
        g = torch.Generator().manual_seed(seed)
        clips = [self.sample(g, num_frames) for _ in range(batch_size)]
        return torch.stack([c for c, _ in clips]), [a for _, a in clips]


@dataclasses.dataclass(frozen=True)
class ToyWorld(ClipSampling):
    """Clip generator. ``height``/``width`` in pixels (multiples of 8), ``num_frames = 1 + 4k``."""

    height: int = 32
    width: int = 32
    num_frames: int = 33
    max_objects: int = 3
    supersample: int = 4

    def __post_init__(self):
        if self.height % 8 or self.width % 8 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"height and width must be positive multiples of 8, got {self.height}x{self.width}")
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 1 + 4k (the codec's causal grouping), got {self.num_frames}")
        if not 1 <= self.max_objects <= 3:
            raise ValueError(f"max_objects must be 1..3, got {self.max_objects}")

    # ------------------------------------------------------------------ sampling

    def sample_attributes(self, generator: torch.Generator, num_frames: int | None = None) -> ClipAttributes:
        """Random objects (distinct colours), background and start positions; motion rolled out."""
        g = generator

        def pick(seq):
            seq = list(seq)
            return seq[int(torch.randint(len(seq), (1,), generator=g))]

        n = int(torch.randint(1, self.max_objects + 1, (1,), generator=g))
        colors = [list(COLORS)[i] for i in torch.randperm(len(COLORS), generator=g)[:n].tolist()]
        objects = [
            ObjectSpec(shape=pick(SHAPES), color=c, size=pick(SIZES), direction=pick(DIRECTIONS), speed=pick(SPEEDS))
            for c in colors
        ]
        return self.rollout(objects, pick(BACKGROUNDS), generator=g, num_frames=num_frames)

    def rollout(
        self,
        objects: Sequence[ObjectSpec],
        background: str,
        *,
        generator: torch.Generator | None = None,
        start: torch.Tensor | None = None,
        num_frames: int | None = None,
    ) -> ClipAttributes:
        """Positions and velocities of ``objects`` over time, bouncing off the walls.
        ``start``: [N, 2] centres at frame 0 (random inside the frame when None)."""
        t_len = num_frames or self.num_frames
        scale = self.width / 32.0
        n = len(objects)
        ext = torch.tensor([SIZES[o.size] * scale for o in objects])
        lo = ext[:, None].expand(n, 2)
        hi = torch.stack([self.width - ext, self.height - ext], 1)
        if start is None:
            # Objects start apart (up to 20 tries), so none hides another for good.
            for _ in range(20):
                start = lo + (hi - lo) * torch.rand(n, 2, generator=generator)
                gap = torch.cdist(start, start) - (ext[:, None] + ext[None, :]) * 1.2
                if bool((gap + torch.eye(n) * 1e3 > 0).all()):
                    break
        vel = torch.tensor([DIRECTIONS[o.direction] for o in objects]) * torch.tensor(
            [SPEEDS[o.speed] * scale for o in objects]
        )[:, None]
        pos = torch.empty(t_len, n, 2)
        vels = torch.empty(t_len, n, 2)
        p, v = start.clone().float(), vel.clone()
        for t in range(t_len):
            pos[t] = p
            q = p + v
            # Reflect at the walls (the object's extent touches the border).
            over, under = q > hi, q < lo
            q = torch.where(over, 2 * hi - q, torch.where(under, 2 * lo - q, q))
            v = torch.where(over | under, -v, v)
            vels[t] = q - p
            p = q
        return ClipAttributes(list(objects), background, pos, vels, self.height, self.width)

    # ------------------------------------------------------------------ rendering

    def render(self, attrs: ClipAttributes) -> torch.Tensor:
        """The clip as float32 [T, 3, H, W] in [0, 1]."""
        ss = self.supersample
        h, w = attrs.height * ss, attrs.width * ss
        top, bottom = (torch.tensor(c) for c in BACKGROUNDS[attrs.background])
        ramp = torch.linspace(0, 1, attrs.height)[:, None, None]
        bg = (top * (1 - ramp) + bottom * ramp).permute(2, 0, 1)  # [3, H, W]
        t_len = attrs.positions.shape[0]
        frames = bg.unsqueeze(0).repeat(t_len, 1, 1, 1)
        ys = (torch.arange(h) + 0.5) / ss
        xs = (torch.arange(w) + 0.5) / ss
        for i, obj in enumerate(attrs.objects):
            cx = attrs.positions[:, i, 0].view(-1, 1, 1)
            cy = attrs.positions[:, i, 1].view(-1, 1, 1)
            dx, dy = xs.view(1, 1, -1) - cx, ys.view(1, -1, 1) - cy
            inside = shape_mask(obj.shape, dx, dy, attrs.half_extent(i)).unsqueeze(1).float()  # [T, 1, h, w]
            cover = torch.nn.functional.avg_pool2d(inside, ss)  # sub-pixel coverage, [T, 1, H, W]
            color = torch.tensor(COLORS[obj.color]).view(1, 3, 1, 1)
            frames = frames * (1 - cover) + color * cover
        return frames


def shape_mask(shape: str, dx: torch.Tensor, dy: torch.Tensor, r: float) -> torch.Tensor:
    """Inside test of a shape of half-extent ``r`` centred at the origin (y points down)."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (dx.abs() <= r * 0.9) & (dy.abs() <= r * 0.9)
    if shape == "diamond":
        return dx.abs() + dy.abs() <= r * 1.1
    if shape == "triangle":
        # Apex up, base down: inside when below the two slanted sides and above the base.
        return (dy <= r * 0.9) & (dx.abs() <= (dy + r) * 0.475)
    raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


def area_fraction(shape: str) -> float:
    """Area of the shape over (2 r)^2, used by the oracle's size check."""
    return {"circle": math.pi / 4, "square": 0.81, "diamond": 0.605, "triangle": 0.428}[shape]
