"""What the server streams: a pipeline plus what the page needs to know about it.

:func:`toy_backend` (the default) is the toy world's best shipped student on the CPU, as
:mod:`stream_r1_fast.toy.demo` streams it; :func:`wan_backend` loads Wan weights
(``--model`` / ``--checkpoint``) on a GPU. Both give a :class:`Backend`.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Callable

import numpy as np

from stream_r1_fast.cache import CachePolicy

#: The cache policy presets of the page (sink frames, window frames, EMA alpha).
POLICY_PRESETS: dict[str, CachePolicy] = {
    "ema_sink": CachePolicy.ema_sink(),
    "static_sink": CachePolicy.static_sink(),
    "no_sink": CachePolicy.no_sink(),
}


@dataclasses.dataclass
class Backend:
    """A pipeline to serve. ``check_prompt``: raises ValueError for a prompt the model cannot
    take (beyond what the pipeline's text encoder checks); ``prompt_help``: grammar, examples
    and vocabulary shown on the page; ``fps``: playback rate of the video."""

    pipe: object  # StreamingPipeline
    name: str
    height: int
    width: int
    fps: int = 16
    default_prompt: str = ""
    prompt_help: dict = dataclasses.field(default_factory=dict)
    check_prompt: Callable[[str], None] | None = None
    frame_format: str = "auto"  # png, jpeg, or auto (PNG up to 128x128, JPEG above)
    max_prompt_chars: int = 512
    cheap_prompt_check: bool = False  # checking a prompt is cheap enough for the event loop (the toy's)

    def __post_init__(self):
        if self.frame_format == "auto":
            self.frame_format = "png" if self.height * self.width <= 128 * 128 else "jpeg"
        if self.frame_format not in ("png", "jpeg"):
            raise ValueError(f"frame_format must be png, jpeg or auto, got {self.frame_format!r}")

    @property
    def mime(self) -> str:
        return f"image/{self.frame_format}"

    def encode_frames(self, frames) -> list[bytes]:
        """uint8 [T, H, W, 3] (tensor or array) -> one PNG / JPEG per frame."""
        from PIL import Image

        frames = np.asarray(frames)
        out = []
        for f in frames:
            buf = io.BytesIO()
            if self.frame_format == "png":
                Image.fromarray(f).save(buf, "PNG", compress_level=1)
            else:
                Image.fromarray(f).save(buf, "JPEG", quality=88)
            out.append(buf.getvalue())
        return out

    def info(self) -> dict:
        return {
            "model": self.name, "height": self.height, "width": self.width, "fps": self.fps,
            "frame_format": self.frame_format, "default_prompt": self.default_prompt,
            "prompt_help": self.prompt_help, "max_prompt_chars": self.max_prompt_chars,
            "policies": {k: dataclasses.asdict(v) for k, v in POLICY_PRESETS.items()},
            "chunk_latent_frames": getattr(self.pipe, "chunk_frames", None),
        }


def toy_examples(count: int = 4) -> list[str]:
    """Captions of world clips from fixed seeds (what the toy students were trained on)."""
    import torch

    from stream_r1_fast.toy.world import ToyWorld

    world = ToyWorld(max_objects=2)
    return [world.sample_attributes(torch.Generator().manual_seed(s), num_frames=1).caption for s in range(count)]


def toy_backend(student: str | Path | None = None) -> Backend:
    """The toy world on the CPU: the best shipped student (Stream-R1's), the toy codec and
    caption encoder; 32x32 video at 16 fps; prompts in the toy caption grammar."""
    from stream_r1_fast.inference import StreamingPipeline
    from stream_r1_fast.toy import world as W
    from stream_r1_fast.toy.codec import ToyCodec
    from stream_r1_fast.toy.demo import PLAYBACK_FPS, best_student
    from stream_r1_fast.toy.models import load_transformer_file
    from stream_r1_fast.toy.text import ToyTextEncoder

    path = Path(student) if student is not None else best_student()
    if path is None or not path.is_file():
        raise FileNotFoundError(f"toy student weights {path} not found (stream_r1_fast/toy/weights/)")
    pipe = StreamingPipeline(load_transformer_file(path), ToyCodec.pretrained(), ToyTextEncoder())

    def check(prompt: str) -> None:  # the grammar (the pipeline's text encoder checks the vocabulary)
        objects, _ = W.parse_caption(prompt)
        colours = [o.color for o in objects]
        if len(set(colours)) < len(colours):
            raise ValueError(f"two objects are {colours}: the objects of a toy caption have distinct colours")

    examples = toy_examples()
    help_ = {
        "grammar": "OBJECT [and OBJECT [and OBJECT]] on a BACKGROUND background, "
                   "OBJECT = a SIZE COLOUR SHAPE moving DIRECTION SPEED",
        "words": {
            "SIZE": list(W.SIZES), "COLOUR": list(W.COLORS), "SHAPE": list(W.SHAPES),
            "DIRECTION": list(W.DIRECTIONS), "SPEED": list(W.SPEEDS), "BACKGROUND": list(W.BACKGROUNDS),
        },
        "examples": examples,
        "vocabulary": list(W.VOCABULARY),
        "note": "the toy world's captions have a closed vocabulary: other words are refused",
    }
    return Backend(pipe, f"toy world: {path.stem} (causal student, 4 steps per chunk) on the CPU",
                   32, 32, PLAYBACK_FPS, examples[0], help_, check, cheap_prompt_check=True)


def wan_backend(model: str | Path, checkpoint: str | Path | None = None, *, device: str | None = None,
                dtype: str = "bf16", height: int = 480, width: int = 832, steps=(1000, 750, 500, 250),
                shift: float = 5.0) -> Backend:
    """Wan weights (a diffusers Wan folder, optionally a student checkpoint) on a GPU."""
    import torch

    from stream_r1_fast.inference import FlowMatchSampler, StreamingPipeline

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    if not Path(model).is_dir():
        raise FileNotFoundError(f"--model {model}: no such model folder")
    pipe = StreamingPipeline.from_pretrained(model, checkpoint=checkpoint, dtype=dtypes[dtype], device=device,
                                             sampler=FlowMatchSampler.from_steps(steps, shift))
    pipe._latent_size(height, width)  # a bad size fails now, not at the first stream
    name = f"{Path(model).name}" + (f" + {Path(checkpoint).name}" if checkpoint else "") + f" on {pipe.device}"
    help_ = {"grammar": "any English text", "examples": ["a red fox runs through snow",
             "a paper boat drifts down a rainy street, cinematic", "a drone flies over a misty pine forest at dawn"]}
    return Backend(pipe, name, height, width, 16, help_["examples"][0], help_)
