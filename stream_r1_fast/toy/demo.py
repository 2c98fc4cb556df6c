"""The toy world's demo: a captioned video from the best shipped generator, with its metrics.

    python -m stream_r1_fast.toy.demo --seed 0 --out toy_demo

Writes ``video.mp4``, ``video.gif`` and ``contact_sheet.png`` (frames upscaled, the
caption above, the world's own rendering of the caption beside the generated frames), prints
the oracle metrics of the world (:mod:`stream_r1_fast.toy.oracle`, :mod:`~stream_r1_fast.toy.oracle2`),
the reward model's normalised VQ / MQ / TA (where the world has one shipped) and the generation speed.

Which world: ``--world v1`` (the first toy world and its models in ``weights/``) or ``v2``
(world v2, ``weights/v2/``; docs/toy_world.md); each has its own caption grammar (``--help``).
Which generator: by default the world's shipped Stream-R1 student (``student_stream_r1.safetensors``;
else Re-DMD, else DMD, else the ODE-initialised student, whichever is present) streams through :class:`StreamingPipeline` with
the EMA-Sink cache, 4 steps per chunk, and the speed printed is streaming speed with the time to
the first decoded chunk. ``--generator teacher`` samples the bidirectional teacher instead — the
whole clip at once, ``--steps`` Euler steps with guidance ``--cfg`` — and the speed printed is
frames generated per second of wall time, not streaming; ``--generator PATH`` streams any
student file. Torch keeps its own thread count (it follows ``OMP_NUM_THREADS``) unless
``--threads`` is given; the count used is printed. A bad argument (a caption outside the toy
grammar, ``--frames`` not 1 + 4k >= 5, ``--threads`` < 1, an unwritable ``--out``) is one line on
stderr and exit status 2, before anything runs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

from stream_r1_fast.outputs import VIDEO_FPS
from stream_r1_fast.toy.kits import toy_kit
from stream_r1_fast.toy.models import load_transformer_file

STUDENTS = ("stream_r1", "re_dmd", "dmd", "ode")
PLAYBACK_FPS = VIDEO_FPS  # the videos are written at 16 frames per second (Wan2.1's rate)
WORLDS = ("v1", "v2")
DEFAULT_WORLD = "v1"


def best_student(world: str = DEFAULT_WORLD) -> Path | None:
    """The first of Stream-R1, Re-DMD, DMD, ODE students shipped for ``world``, else None."""
    weights = toy_kit(world).weights
    for name in STUDENTS:
        path = weights / f"student_{name}.safetensors"
        if path.is_file():
            return path
    return None


def generate(prompt: str, *, seed: int, num_frames: int, steps: int, cfg: float, generator: str = "auto",
             world: str = DEFAULT_WORLD):
    """-> (video [T, 3, H, W] in [0, 1], description of the generator, frames per second,
    seconds to the first decoded chunk (None for the teacher, which has no stream)). Timed: from
    the first denoising call to the last decoded frame; loading the weights is not."""
    kit = toy_kit(world)
    clips = kit.world(num_frames=num_frames)
    codec, text = kit.codec(), kit.text_encoder()
    student = best_student(world) if generator == "auto" else (None if generator == "teacher" else Path(generator))
    first = None
    if student is not None:
        from stream_r1_fast.inference import StreamingPipeline

        pipe = StreamingPipeline(load_transformer_file(student), codec, text)  # set-up: not timed
        chunks = []
        start = time.perf_counter()
        for chunk in pipe.stream(prompt, num_chunks=pipe.chunks_for_frames(num_frames), height=clips.height,
                                 width=clips.width, seed=seed):
            chunks.append(chunk.frames)
            first = first or time.perf_counter() - start
        video = torch.cat(chunks, 1)[0, :num_frames].permute(0, 3, 1, 2).float() / 255
        what = f"causal student {student.name}, streamed chunk by chunk (4 steps per chunk, EMA-Sink cache)"
    else:
        from stream_r1_fast.toy.sampling import euler_sample

        model = load_transformer_file(kit.weights / "teacher.safetensors").float().eval()
        s = codec.spatial_factor
        latent_frames = 1 + (num_frames - 1) // codec.temporal_factor
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(1, codec.latent_channels, latent_frames, clips.height // s, clips.width // s, generator=g)
        start = time.perf_counter()
        with torch.no_grad():
            x0 = euler_sample(model, text([prompt]), text([""]), noise, steps=steps, cfg=cfg)
        video = codec.decode_frames(x0)[0]
        what = f"bidirectional teacher, whole clip at once ({steps} Euler steps, guidance {cfg}; not streaming)"
    fps = video.shape[0] / (time.perf_counter() - start)
    return video, what, fps, first


SHEET_FRAMES = 8  # frames per row of the contact sheet


def caption_font(size: int = 15):
    """A scalable font for the contact sheet's text (Pillow's bundled one: its old bitmap
    default runs words together at small sizes)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _wrapped(text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and font.getlength(trial) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines


def _upscaled_uint8(video: torch.Tensor, scale: int):
    """[T, 3, H, W] in [0, 1] -> uint8 numpy [T, H * scale, W * scale, 3]."""
    frames = (video.clamp(0, 1) * 255).round().to(torch.uint8)
    return frames.repeat_interleave(scale, 2).repeat_interleave(scale, 3).permute(0, 2, 3, 1).numpy()


def contact_sheet(rows: list[tuple[str, torch.Tensor]], caption: str, scale: int = 4):
    """A PIL image: the caption on top, then one labelled row of ``SHEET_FRAMES`` frames (the
    same indices) per ``(label, video [T, 3, H, W] in [0, 1])``."""
    from PIL import Image, ImageDraw

    from stream_r1_fast.commands.videos import contact_sheet_indices

    picks = contact_sheet_indices(rows[0][1].shape[0], SHEET_FRAMES)
    h, w = rows[0][1].shape[2] * scale, rows[0][1].shape[3] * scale
    font, small = caption_font(15), caption_font(12)
    pad, label_h = 6, 18
    width = len(picks) * w + (len(picks) - 1) * 2
    lines = _wrapped(caption, font, width - 2 * pad)
    top = pad + 19 * len(lines) + pad
    sheet = Image.new("RGB", (width, top + len(rows) * (label_h + h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(lines):
        draw.text((pad, pad + 19 * i), line, fill="black", font=font)
    y = top
    for label, video in rows:
        draw.text((pad, y + 2), label, fill=(60, 60, 60), font=small)
        y += label_h
        frames = _upscaled_uint8(video, scale)
        for k, i in enumerate(picks):
            sheet.paste(Image.fromarray(frames[i]), (k * (w + 2), y))
        y += h + pad
    return sheet


def write_outputs(video: torch.Tensor, caption: str, out: Path, scale: int = 8, fps: int = PLAYBACK_FPS,
                  reference: torch.Tensor | None = None) -> list[Path]:
    """mp4 and GIF of ``video`` [T, 3, H, W] in [0, 1] upscaled ``scale`` x, and a PNG contact
    sheet: the caption, then ``reference`` (the world's own rendering of the caption) above the
    generated frames when given."""
    import imageio.v2 as imageio
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    frames = _upscaled_uint8(video, scale)
    paths = [out / "video.mp4", out / "video.gif", out / "contact_sheet.png"]
    imageio.mimwrite(paths[0], list(frames), fps=fps, macro_block_size=1)
    Image.fromarray(frames[0]).save(
        paths[1], save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]], duration=1000 // fps, loop=0
    )
    rows = [("generated", video)]
    if reference is not None:
        rows.insert(0, ("ground truth: the world's own rendering of the caption (another start position)", reference))
    contact_sheet(rows, caption).save(paths[2])
    return paths


def _module(world: str):
    """The world's module (its caption parser, vocabulary and attribute names)."""
    from stream_r1_fast.toy import world as v1, world2 as v2

    return {"v1": v1, "v2": v2}[world]


def ground_truth(prompt: str, *, seed: int, num_frames: int, world: str = DEFAULT_WORLD) -> torch.Tensor:
    """The world's rendering of ``prompt`` [T, 3, H, W] (start positions drawn from ``seed``)."""
    clips = toy_kit(world).world(num_frames=num_frames)
    objects, background = _module(world).parse_caption(prompt)
    return clips.render(clips.rollout(objects, background, generator=torch.Generator().manual_seed(seed)))


def grammar(world: str) -> str:
    """The caption grammar of ``world``, with every word it knows."""
    m = _module(world)
    if world == "v1":
        return (
            "v1: a caption names one to three objects (of distinct colours), joined by 'and', then the background:\n"
            "  a <size> <colour> <shape> moving <direction> <speed> [and a ...] on a <background> background\n"
            f"  size: {' | '.join(m.SIZES)}; colour: {' | '.join(m.COLORS)}; shape: {' | '.join(m.SHAPES)};\n"
            f"  direction: {' | '.join(m.DIRECTIONS)}; speed: {' | '.join(m.SPEEDS)}; background: {' | '.join(m.BACKGROUNDS)}\n"
            '  e.g. "a small red circle moving left fast and a large blue square moving up slow on a black background"'
        )
    trained = toy_kit("v2").world().max_objects
    return (
        "v2: a caption names one to three objects (of distinct colours; the shipped v2 models were trained on "
        f"{'one' if trained == 1 else f'up to {trained}'}), joined by 'and', then the background:\n"
        "  a <colour> <shape> moving <direction> <speed> [and a ...] on a <background> background\n"
        f"  colour: {' | '.join(m.COLORS)}; shape: {' | '.join(m.SHAPES)};\n"
        f"  direction: {' | '.join(m.DIRECTION_NAMES)}; speed: {' | '.join(m.SPEED_NAMES)}; "
        f"background: {' | '.join(m.BACKGROUNDS)}\n"
        '  e.g. "a green triangle moving right fast on a gray background"'
    )


def _grammar_line(world: str) -> str:
    size = "<size> " if world == "v1" else ""
    return (f"a {world} caption is 'a {size}<colour> <shape> moving <direction> <speed> [and a ...] on a "
            "<background> background' (see --help)")


class DemoError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def check_caption(caption: str, world: str = DEFAULT_WORLD) -> str:
    """A caption the world's text encoder and oracle both take, or a DemoError saying what is wrong."""
    m = _module(world)
    words = caption.split()
    if not words:
        raise DemoError(f"--prompt is empty; {_grammar_line(world)}")
    unknown = [w for w in dict.fromkeys(words) if w not in m.VOCABULARY]
    if unknown:
        raise DemoError(f"--prompt: {', '.join(map(repr, unknown))} not in the {world} toy vocabulary "
                        f"({' '.join(m.VOCABULARY)}); {_grammar_line(world)}")
    try:
        objects, _ = m.parse_caption(" ".join(words))
    except ValueError as exc:
        if "distinct colours" in str(exc):
            raise DemoError(f"--prompt: the objects of a caption have distinct colours (the oracle tells them "
                            f"apart by colour): {exc}") from None
        raise DemoError(f"--prompt: {exc}; {_grammar_line(world)}") from None
    colours = [o.color for o in objects]
    if len(set(colours)) < len(colours):
        raise DemoError(f"--prompt: two objects are {colours}: the objects of a caption have distinct colours "
                        "(the oracle tells them apart by colour)")
    return " ".join(words)


def check_out(out: Path) -> None:
    """The output folder exists or can be made, and a file can be written in it."""
    from stream_r1_fast.outputs import check_writable_folder

    try:
        check_writable_folder(out, f"--out {out}")
    except ValueError as exc:
        raise DemoError(str(exc)) from None


def check_args(args) -> None:
    if args.frames < 5 or (args.frames - 1) % 4:  # 1 + 4k: the codec's grouping; k >= 1: the reward model's
        raise DemoError(f"--frames must be 1 + 4k with k >= 1 (5, 9, ..., 33, ...), got {args.frames}")
    if args.threads is not None and args.threads < 1:
        raise DemoError(f"--threads must be >= 1, got {args.threads}")
    if args.steps < 1:
        raise DemoError(f"--steps must be >= 1, got {args.steps}")
    if not math.isfinite(args.cfg):
        raise DemoError(f"--cfg must be a finite number, got {args.cfg}")
    if not 0 <= args.seed < 2**64:
        raise DemoError(f"--seed must be in [0, 2**64), got {args.seed}")
    if args.generator not in ("auto", "teacher"):
        path = Path(args.generator)
        if not path.is_file() or path.suffix != ".safetensors":
            raise DemoError(f"--generator {args.generator}: not auto, teacher or a student .safetensors file")


def _threads_note(asked: int | None) -> str:
    if asked is not None:
        return "--threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return f"torch's default under OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    return "torch's default; --threads to change"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stream_r1_fast.toy.demo", description=__doc__,
                                 epilog="\n\n".join(grammar(w) for w in WORLDS),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", help="a toy caption, as below (default: the caption of a random world clip)")
    ap.add_argument("--world", choices=WORLDS, default=DEFAULT_WORLD,
                    help=f"the toy world and its shipped models (default {DEFAULT_WORLD}; grammars below)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=33, help="video frames, 1 + 4k with k >= 1 (default 33)")
    ap.add_argument("--steps", type=int, default=24, help="teacher Euler steps")
    ap.add_argument("--cfg", type=float, default=1.0, help="teacher guidance scale (1: none; the shipped teacher scores best on attributes without)")
    ap.add_argument("--generator", default="auto", help="auto (best shipped), teacher, or a student .safetensors")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's own, which follows OMP_NUM_THREADS; the number used is printed)")
    ap.add_argument("--out", default="toy_demo", help="output folder (default toy_demo)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its line")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except (DemoError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"{ap.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def _run(args) -> int:
    check_args(args)
    prompt = check_caption(args.prompt, args.world) if args.prompt is not None else None
    out = Path(args.out)
    check_out(out)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from safetensors import SafetensorError

    from stream_r1_fast.toy.reward import ToyRewardModel

    kit = toy_kit(args.world)
    prompt = prompt or kit.world().sample_attributes(torch.Generator().manual_seed(args.seed)).caption
    try:
        video, what, fps, first = generate(prompt, seed=args.seed, num_frames=args.frames, steps=args.steps,
                                           cfg=args.cfg, generator=args.generator, world=args.world)
    except (SafetensorError, ValueError) as exc:
        if args.generator in ("auto", "teacher"):
            raise
        raise DemoError(f"--generator {args.generator}: cannot load it: {exc}") from exc
    try:
        paths = write_outputs(video, prompt, out, reference=ground_truth(prompt, seed=args.seed, num_frames=args.frames,
                                                                    world=args.world))
    except (OSError, RuntimeError, ValueError) as exc:
        raise DemoError(f"--out {out}: writing the outputs failed: {exc}") from exc
    metrics = kit.score_clip(video, prompt)
    reward = None
    if (kit.weights / "reward.safetensors").is_file():
        with torch.no_grad():
            reward = ToyRewardModel.pretrained(args.world).rewards(video[None], [prompt]).normalized[0]
    print(f"prompt:    {prompt}")
    print(f"generator: {what}")
    speed = f"{fps:.0f} frames/s on {torch.get_num_threads()} CPU threads ({_threads_note(args.threads)})"
    if first is not None:
        speed += f" = {fps / PLAYBACK_FPS:.1f}x real time at {PLAYBACK_FPS} fps, first frames after {first * 1000:.0f} ms"
    print(f"video:     {video.shape[0]} frames of {video.shape[3]}x{video.shape[2]}, {speed}")
    print("oracle:    " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    if reward is None:
        print(f"reward:    (no {args.world} reward model is shipped)")
    else:
        print("reward:    " + ", ".join(f"{k} {v:+.2f}" for k, v in zip(("VQ", "MQ", "TA"), reward.tolist())))
    print("wrote:     " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
