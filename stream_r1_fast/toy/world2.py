"""The toy world, version 2: fewer, larger, faster objects that wrap around the frame.

Why a second world (docs/toy_world.md, "World v2"): the v1 teacher learned almost nothing of its
caption but the colours; small objects (half-extent 3.5 px) lose their shape in the linear codec;
at 0.5-1 px/frame an object moves at most half a token (8x8 px) per latent frame; and as every
object bounces inside the frame, the frame-0 layout stays roughly right forever, so a cache that
keeps frame 0 (a static sink) is never wrong. Here:

* 1-2 objects per clip (3 as an opt-in, ``max_objects=3``), distinct colours;
* 3 shapes that a token grid separates best: square, triangle, diamond. v1's circle is dropped:
  at half-extent 6 px its coverage, pooled to 8x8-px tokens, differs from the square's by 6% of
  the object's area (square-diamond 29%, circle-diamond 26%, the triangle >= 45% from all);
  the circle and the square also have the same area (0.79 vs 0.81 of the bounding box), which
  the other three do not (0.81, 0.43, 0.61);
* 5 bright colours of distinct hue (red, yellow, green, blue, magenta) over 3 dark plain
  backgrounds (black, gray, brown); the RGB values are v1's, so v1's codec is in distribution;
* one object size, ``half_extent`` (default 6 px at 32x32, v1's "large"); no size word;
* 4 directions x 2 speeds, ``speeds`` = (slow, fast) in px/frame at 32x32, default (1, 2):
  with the codec's 4 frames per latent frame that is half a token and one token per latent frame;
* ``wrap=True`` (the default): an object leaving one edge re-enters at the opposite one (drawn
  on both sides while it straddles the edge), velocity constant; ``wrap=False`` bounces as in v1.

Captions follow v1's grammar without the size word::

    "a red diamond moving left fast and a blue square moving up slow on a black background"

Ground truth (:class:`ClipAttributesV2`): per-frame centres (wrapped into the frame in wrap
mode) and velocities (the unwrapped displacement to the next frame). Videos are float32
``[T, 3, H, W]`` in [0, 1] with ``T = 1 + 4k``, 4x4 supersampled, seeded by a torch.Generator.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from stream_r1_fast.toy.world import COLORS as _V1_COLORS
from stream_r1_fast.toy.world import BACKGROUNDS as _V1_BACKGROUNDS
from stream_r1_fast.toy.world import DIRECTIONS, ClipSampling, shape_mask

COLORS: dict[str, tuple[float, float, float]] = {c: _V1_COLORS[c] for c in ("red", "yellow", "green", "blue", "magenta")}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {b: _V1_BACKGROUNDS[b][0] for b in ("black", "gray", "brown")}
SHAPES: tuple[str, ...] = ("square", "triangle", "diamond")
SPEED_NAMES: tuple[str, str] = ("slow", "fast")
DIRECTION_NAMES: tuple[str, ...] = tuple(DIRECTIONS)

#: Every word a v2 caption can contain.
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["a", "moving", "and", "on", "background"]
        + list(COLORS) + list(SHAPES) + list(DIRECTION_NAMES) + list(SPEED_NAMES) + list(BACKGROUNDS)
    )
)

#: The attribute groups of an object, with their values (the text encoder's one-hot groups).
ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS), "shape": SHAPES, "direction": DIRECTION_NAMES, "speed": SPEED_NAMES,
}


@dataclasses.dataclass(frozen=True)
class ObjectSpecV2:
    """What the caption says about one object."""

    shape: str
    color: str
    direction: str
    speed: str

    def phrase(self) -> str:
        return f"a {self.color} {self.shape} moving {self.direction} {self.speed}"


@dataclasses.dataclass
class ClipAttributesV2:
    """Ground truth of one clip. ``positions``/``velocities``: [T, N, 2] (x, y) in pixels of the
    rendered resolution; in wrap mode positions lie in [0, W) x [0, H) and ``velocities[t]`` is
    the unwrapped displacement from frame t to t + 1 (constant), in bounce mode it is the
    displacement after bounces (as v1)."""

    objects: list[ObjectSpecV2]
    background: str
    positions: torch.Tensor
    velocities: torch.Tensor
    height: int
    width: int
    radius: float  # half-extent in pixels of the rendered resolution
    wrap: bool

    @property
    def caption(self) -> str:
        return caption_of(self.objects, self.background)

    def half_extent(self, i: int) -> float:
        return self.radius

    def unwrapped_positions(self) -> torch.Tensor:
        """[T, N, 2] centres without the wrap-around (frame-0 centre plus summed displacements)."""
        steps = torch.cat([torch.zeros_like(self.velocities[:1]), self.velocities[:-1]]).cumsum(0)
        return self.positions[:1] + steps


def caption_of(objects: Sequence[ObjectSpecV2], background: str) -> str:
    return " and ".join(o.phrase() for o in objects) + f" on a {background} background"


def swap_alternatives(attrs, group: str, index: int = 0) -> list[str]:
    """The words object ``index``'s ``group`` word (or, for ``group == "background"``, the
    background) could be swapped for in ``attrs``' caption, in the group's order: any other
    value, except that a colour no object already has (colours tell objects apart)."""
    if group == "background":
        return [b for b in BACKGROUNDS if b != attrs.background]
    if group not in ATTRIBUTE_GROUPS:
        raise ValueError(f"group must be one of {list(ATTRIBUTE_GROUPS) + ['background']}, got {group!r}")
    taken = {o.color for o in attrs.objects} if group == "color" else {getattr(attrs.objects[index], group)}
    return [v for v in ATTRIBUTE_GROUPS[group] if v not in taken]


def swapped_caption(attrs, group: str, index: int = 0, value: str | None = None) -> str:
    """``attrs``' caption with one word changed: object ``index``'s ``group`` word (or the
    background) set to ``value`` (one of :func:`swap_alternatives`; default the next one after
    the current word in the group's order, cyclically)."""
    options = swap_alternatives(attrs, group, index)
    if value is None:
        order = list(BACKGROUNDS) if group == "background" else list(ATTRIBUTE_GROUPS[group])
        now = order.index(attrs.background if group == "background" else getattr(attrs.objects[index], group))
        value = min(options, key=lambda v: (order.index(v) - now) % len(order))
    elif value not in options:
        raise ValueError(f"{value!r} is not a swap for the {group} word here; options: {options}")
    objects = list(attrs.objects)
    if group == "background":
        return caption_of(objects, value)
    objects[index] = dataclasses.replace(objects[index], **{group: value})
    return caption_of(objects, attrs.background)


def parse_caption(caption: str) -> tuple[list[ObjectSpecV2], str]:
    """The inverse of :func:`caption_of`; a ValueError names what does not parse."""
    if not isinstance(caption, str):
        raise ValueError(f"a caption is a str, got {type(caption).__name__}")
    text = " ".join(caption.split())
    for word in text.split():
        if word not in VOCABULARY:
            raise ValueError(f"word {word!r} of {caption!r} is not in the v2 toy vocabulary {VOCABULARY}")
    if " on a " not in text or not text.endswith(" background"):
        raise ValueError(f"a v2 toy caption ends with 'on a <background> background', got {caption!r}")
    head, bg = text.rsplit(" on a ", 1)
    bg = bg[: -len(" background")]
    if bg not in BACKGROUNDS:
        raise ValueError(f"unknown background {bg!r} in {caption!r}; choose one of {sorted(BACKGROUNDS)}")
    out = []
    for phrase in head.split(" and "):
        w = phrase.split()
        if len(w) != 6 or w[0] != "a" or w[3] != "moving":
            raise ValueError(f"object phrase {phrase!r} of {caption!r} is not 'a <colour> <shape> moving <direction> <speed>'")
        spec = ObjectSpecV2(color=w[1], shape=w[2], direction=w[4], speed=w[5])
        for value, group in ((spec.color, "color"), (spec.shape, "shape"), (spec.direction, "direction"), (spec.speed, "speed")):
            if value not in ATTRIBUTE_GROUPS[group]:
                raise ValueError(f"{value!r} is not a {group} in {phrase!r}; choose one of {ATTRIBUTE_GROUPS[group]}")
        out.append(spec)
    if not 1 <= len(out) <= 3:
        raise ValueError(f"a v2 toy caption names one to three objects, got {len(out)}")
    if len({o.color for o in out}) != len(out):
        raise ValueError(f"objects of a v2 toy caption have distinct colours, got {caption!r}")
    return out, bg


def wrap_delta(d: torch.Tensor, period: torch.Tensor | float) -> torch.Tensor:
    """``d`` taken to the nearest image on a torus of ``period``: in [-period/2, period/2)."""
    return torch.remainder(d + period / 2, period) - period / 2


@dataclasses.dataclass(frozen=True)
class ToyWorldV2(ClipSampling):
    """Clip generator. ``height``/``width`` in pixels (multiples of 8), ``num_frames = 1 + 4k``;
    ``half_extent`` and ``speeds`` (slow, fast) in pixels (per frame) at 32x32, scaled with width."""

    height: int = 32
    width: int = 32
    num_frames: int = 33
    min_objects: int = 1
    max_objects: int = 2
    half_extent: float = 6.0
    speeds: tuple[float, float] = (1.0, 2.0)
    wrap: bool = True
    supersample: int = 4

    def __post_init__(self):
        if self.height % 8 or self.width % 8 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"height and width must be positive multiples of 8, got {self.height}x{self.width}")
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 1 + 4k (the codec's causal grouping), got {self.num_frames}")
        if not 1 <= self.min_objects <= self.max_objects <= 3:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 3, got {self.min_objects}, {self.max_objects}")
        if not 0 < self.half_extent * self.scale < min(self.height, self.width) / 4:
            raise ValueError(f"half_extent must be in (0, min(H, W) / 4) px, got {self.half_extent} at 32x32")
        if len(self.speeds) != 2 or not all(s > 0 for s in self.speeds):
            raise ValueError(f"speeds must be two positive px/frame values (slow, fast), got {self.speeds}")
        object.__setattr__(self, "speeds", tuple(float(s) for s in self.speeds))

    @property
    def scale(self) -> float:
        return self.width / 32.0

    @property
    def radius(self) -> float:
        """Half-extent in pixels at this resolution."""
        return self.half_extent * self.scale

    def speed_px(self, name: str) -> float:
        """Pixels per frame of the named speed at this resolution."""
        return self.speeds[SPEED_NAMES.index(name)] * self.scale

    # ------------------------------------------------------------------ sampling

    def sample_attributes(self, generator: torch.Generator, num_frames: int | None = None) -> ClipAttributesV2:
        """Random objects (distinct colours), background and start positions; motion rolled out."""
        g = generator

        def pick(seq):
            seq = list(seq)
            return seq[int(torch.randint(len(seq), (1,), generator=g))]

        n = int(torch.randint(self.min_objects, self.max_objects + 1, (1,), generator=g))
        colors = [list(COLORS)[i] for i in torch.randperm(len(COLORS), generator=g)[:n].tolist()]
        objects = [ObjectSpecV2(shape=pick(SHAPES), color=c, direction=pick(DIRECTION_NAMES), speed=pick(SPEED_NAMES))
                   for c in colors]
        return self.rollout(objects, pick(BACKGROUNDS), generator=g, num_frames=num_frames)

    def rollout(
        self,
        objects: Sequence[ObjectSpecV2],
        background: str,
        *,
        generator: torch.Generator | None = None,
        start: torch.Tensor | None = None,
        num_frames: int | None = None,
    ) -> ClipAttributesV2:
        """Positions and velocities of ``objects`` over time (wrapping or bouncing).
        ``start``: [N, 2] centres at frame 0 (random, objects apart, when None)."""
        t_len = num_frames or self.num_frames
        n, r = len(objects), self.radius
        size = torch.tensor([float(self.width), float(self.height)])
        lo = torch.zeros(2) if self.wrap else torch.full((2,), r)
        hi = size if self.wrap else size - r
        if start is None:
            # Objects start apart (up to 20 tries), so none hides another at frame 0.
            for _ in range(20):
                start = lo + (hi - lo) * torch.rand(n, 2, generator=generator)
                d = start[:, None] - start[None]
                if self.wrap:
                    d = wrap_delta(d, size)
                if bool((d.norm(dim=-1) + torch.eye(n) * 1e3 > 2.4 * r).all()):
                    break
        vel = torch.tensor([DIRECTIONS[o.direction] for o in objects]) * torch.tensor(
            [self.speed_px(o.speed) for o in objects])[:, None]
        pos, vels = torch.empty(t_len, n, 2), torch.empty(t_len, n, 2)
        p, v = start.clone().float(), vel.clone()
        if self.wrap:
            p = torch.remainder(p, size)
        for t in range(t_len):
            pos[t] = p
            if self.wrap:
                vels[t] = v
                p = torch.remainder(p + v, size)
                continue
            q = p + v
            over, under = q > hi, q < lo
            q = torch.where(over, 2 * hi - q, torch.where(under, 2 * lo - q, q))
            v = torch.where(over | under, -v, v)
            vels[t] = q - p
            p = q
        return ClipAttributesV2(list(objects), background, pos, vels, self.height, self.width, r, self.wrap)

    # ------------------------------------------------------------------ rendering

    def object_cover(self, shape: str, centres: torch.Tensor, height: int | None = None,
                     width: int | None = None, wrap: bool | None = None) -> torch.Tensor:
        """Sub-pixel coverage [T, H, W] of a ``shape`` centred at ``centres`` [T, 2] (wrap-aware)."""
        ss, h, w = self.supersample, height or self.height, width or self.width
        wrap = self.wrap if wrap is None else wrap
        ys = (torch.arange(h * ss) + 0.5) / ss
        xs = (torch.arange(w * ss) + 0.5) / ss
        dx = xs.view(1, 1, -1) - centres[:, 0].view(-1, 1, 1)
        dy = ys.view(1, -1, 1) - centres[:, 1].view(-1, 1, 1)
        if wrap:
            dx, dy = wrap_delta(dx, float(w)), wrap_delta(dy, float(h))
        inside = shape_mask(shape, dx, dy, self.radius).unsqueeze(1).float()
        return torch.nn.functional.avg_pool2d(inside, ss)[:, 0]

    def render(self, attrs: ClipAttributesV2) -> torch.Tensor:
        """The clip as float32 [T, 3, H, W] in [0, 1]."""
        t_len = attrs.positions.shape[0]
        bg = torch.tensor(BACKGROUNDS[attrs.background]).view(1, 3, 1, 1)
        frames = bg.expand(t_len, 3, attrs.height, attrs.width).clone()
        for i, obj in enumerate(attrs.objects):
            cover = self.object_cover(obj.shape, attrs.positions[:, i], attrs.height, attrs.width, attrs.wrap).unsqueeze(1)
            color = torch.tensor(COLORS[obj.color]).view(1, 3, 1, 1)
            frames = frames * (1 - cover) + color * cover
        return frames
