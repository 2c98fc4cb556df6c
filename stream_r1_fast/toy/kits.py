"""What the students, the distillation recipes and the evaluation need from a toy world, per world.

Two worlds exist while v2 is being trained (docs/toy_world.md, "World v2"): ``v1``
(:mod:`~stream_r1_fast.toy.world`, the shipped weights in ``weights/``) and ``v2``
(:mod:`~stream_r1_fast.toy.world2`, weights in ``weights/v2/`` once trained). A :class:`ToyKit`
names one world's pieces, so a script takes ``--world v1|v2`` instead of importing one world's
modules:

* ``world(num_frames)``: the clip generator (v2: with the settings its shipped teacher was
  trained on, recorded in the teacher's file: objects per clip, speeds, object size, wrap);
* ``text_encoder(device)``: its caption encoder (v1: a token per word; v2: a token per object);
* ``codec()``: its codec (``<weights>/codec.safetensors``);
* ``captions(count, seed)``: captions of random clips, the distribution the teacher learned;
* ``score_clip(video, caption)``: the oracle's metrics (floats) of one video [T, 3, H, W] in [0, 1];
* ``weights``: the directory of its shipped networks (``teacher.safetensors``,
  ``student_<method>.safetensors``, ``codec.safetensors``, ``reward.safetensors``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch

from stream_r1_fast.toy.models import WEIGHTS


@dataclasses.dataclass(frozen=True)
class ToyKit:
    """One toy world's pieces (module doc). Build with :func:`toy_kit`."""

    name: str
    weights: Path
    _world: Callable[..., object]
    _text_encoder: Callable[..., object]
    _score_clip: Callable[..., dict]

    def world(self, num_frames: int = 33):
        return self._world(num_frames=num_frames)

    def text_encoder(self, device: torch.device | str = "cpu"):
        return self._text_encoder(device)

    def codec(self):
        from stream_r1_fast.toy.codec import ToyCodec

        path = self.weights / "codec.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"the {self.name} toy world's codec {path} does not exist "
                                    "(see scripts/toy/ for how to make it)")
        return ToyCodec.from_file(path)

    def captions(self, count: int, seed: int = 0) -> list[str]:
        """``count`` captions of random clips of this world (seed ``seed``)."""
        world, g = self.world(), torch.Generator().manual_seed(seed)
        return [world.sample_attributes(g).caption for _ in range(count)]

    def score_clip(self, video: torch.Tensor, caption: str) -> dict:
        return self._score_clip(video, caption)


def _v1() -> ToyKit:
    from stream_r1_fast.toy.oracle import score_clip
    from stream_r1_fast.toy.text import ToyTextEncoder
    from stream_r1_fast.toy.world import ToyWorld

    return ToyKit("v1", WEIGHTS, ToyWorld, ToyTextEncoder, score_clip)


def v2_world_settings(weights: Path) -> dict:
    """The :class:`~stream_r1_fast.toy.world2.ToyWorldV2` settings the teacher in ``weights`` was
    trained on (the ``run`` its file records: objects, speeds, object size, wrap), {} if none."""
    import json

    path = weights / "teacher.safetensors"
    if not path.is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        run = json.loads((f.metadata() or {}).get("run", "{}"))
    keys = {"objects": "max_objects", "speeds": "speeds", "half_extent": "half_extent", "wrap": "wrap"}
    return {field: tuple(run[k]) if k == "speeds" else run[k] for k, field in keys.items() if k in run}


def _v2(weights: Path = WEIGHTS / "v2") -> ToyKit:
    import functools

    from stream_r1_fast.toy.oracle2 import METRICS, score_clip_v2
    from stream_r1_fast.toy.text2 import ObjectTokenEncoder
    from stream_r1_fast.toy.world2 import ToyWorldV2

    settings = v2_world_settings(weights)
    if settings.get("max_objects") == 1:
        settings["min_objects"] = 1
    make_world = functools.partial(ToyWorldV2, **settings)
    world = make_world()

    def score(video: torch.Tensor, caption: str) -> dict:
        metrics = score_clip_v2(video, caption, wrap=world.wrap, world=world)
        return {k: metrics[k] for k in METRICS}  # the floats (not the per-object tracks)

    return ToyKit("v2", weights, make_world, ObjectTokenEncoder, score)


KITS: dict[str, Callable[[], ToyKit]] = {"v1": _v1, "v2": _v2}


def toy_kit(name: str = "v1") -> ToyKit:
    """The named world's kit; ValueError names the known ones."""
    if name not in KITS:
        raise ValueError(f"unknown toy world {name!r}; choose one of {sorted(KITS)}")
    return KITS[name]()


__all__ = ["KITS", "ToyKit", "toy_kit", "v2_world_settings"]
