"""``stream-r1``: command-line streaming generation and training.

    stream-r1 generate --model Wan2.1-T2V-1.3B-Diffusers --checkpoint rf.pt \\
        --prompt "a red fox runs through snow" --seconds 10 --seed 0 --output fox.mp4

writes ``fox.mp4`` and a contact sheet ``fox.png``, and ends with one line giving the time to
first frame and the sustained frame rate, saying what each includes.

    stream-r1 train --config configs/wan2.1_1.3b_stream_r1.yaml     # or under torchrun

trains with the YAML config (DMD, Re-DMD or Stream-R1), resuming from the last complete
checkpoint of its output folder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

FPS = 16  # Wan2.1's frame rate

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def read_prompt_schedule(path: str | Path, chunk_seconds: float) -> dict[int, str]:
    """A schedule file -> ``{chunk: prompt}``. JSON: ``[{"at": seconds, "prompt": str}, ...]``;
    text: one ``SECONDS<whitespace>PROMPT`` per line (``#`` comments). A switch takes effect at
    the first chunk starting at or after its time."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt schedule {path} does not exist")
    text = path.read_text()
    entries: list[tuple[float, str]] = []
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(e, dict) and {"at", "prompt"} <= e.keys() for e in data):
            raise ValueError(f'{path}: expected a JSON list of {{"at": seconds, "prompt": text}}')
        entries = [(float(e["at"]), e["prompt"]) for e in data]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            head, _, prompt = line.partition(" ")
            try:
                entries.append((float(head), prompt.strip()))
            except ValueError:
                raise ValueError(f"{path}:{n}: expected 'SECONDS PROMPT', got {line!r}") from None
    if not entries:
        raise ValueError(f"{path} holds no prompts")
    schedule: dict[int, str] = {}
    for at, prompt in sorted(entries):
        if at < 0 or not isinstance(prompt, str) or not prompt:
            raise ValueError(f"{path}: bad entry at {at}s: {prompt!r}")
        schedule[math.ceil(at / chunk_seconds - 1e-9)] = prompt
    if 0 not in schedule:
        raise ValueError(f"{path}: the first prompt must start at 0 seconds")
    return schedule


def contact_sheet(frames, path: Path, columns: int = 6, count: int = 24) -> None:
    """A PNG grid of ``count`` frames sampled evenly from uint8 [T, H, W, 3]."""
    import numpy as np
    from PIL import Image

    t = frames.shape[0]
    idx = sorted({round(i * (t - 1) / max(count - 1, 1)) for i in range(min(count, t))})
    rows = math.ceil(len(idx) / columns)
    h, w = frames.shape[1:3]
    sheet = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for n, i in enumerate(idx):
        r, c = divmod(n, columns)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = frames[i]
    Image.fromarray(sheet).save(path)


def _generate(args) -> int:
    import imageio.v2 as imageio
    import torch
    from tqdm import tqdm

    from stream_r1_fast.cache import CachePolicy
    from stream_r1_fast.inference import FlowMatchSampler, StreamingPipeline

    if args.seconds <= 0:
        raise ValueError(f"--seconds must be positive, got {args.seconds}")
    output = Path(args.output)
    if output.suffix.lower() != ".mp4":
        raise ValueError(f"--output must end in .mp4, got {output}")
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"--model {args.model}: no such model folder")
    policy = CachePolicy(args.sink, args.window, 1.0 if args.static_sink else args.alpha)
    sampler = FlowMatchSampler.from_steps(args.steps, args.shift)

    t_load = time.perf_counter()
    pipe = StreamingPipeline.from_pretrained(
        args.model, checkpoint=args.checkpoint, dtype=getattr(torch, _DTYPES[args.dtype]),
        device=args.device, sampler=sampler,
    )
    load_s = time.perf_counter() - t_load
    num_frames = max(1, round(args.seconds * FPS))
    chunks = pipe.chunks_for_frames(num_frames)
    t_factor = pipe.vae_factors[0]
    chunk_seconds = pipe.chunk_frames * t_factor / FPS
    prompt = read_prompt_schedule(args.prompt_schedule, chunk_seconds) if args.prompt_schedule else args.prompt

    output.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(str(output), fps=FPS, codec="libx264", quality=8, macro_block_size=1)
    kept, written, sheet_frames = [], 0, []
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    first_s, gen_s = None, 0.0
    stream = pipe.stream(prompt, num_chunks=chunks, height=args.height, width=args.width, seed=args.seed, policy=policy)
    with tqdm(total=num_frames, unit="frame", desc="generating", disable=args.quiet) as bar:
        t_chunk = time.perf_counter()
        for chunk in stream:
            frames = chunk.frames[0].numpy()  # on the host: the chunk is done
            sync()
            now = time.perf_counter()
            if first_s is None:
                first_s = now - t0
            else:
                gen_s += now - t_chunk
            frames = frames[: num_frames - written]
            for f in frames:
                writer.append_data(f)
            written += len(frames)
            sheet_frames.append(frames)
            bar.update(len(frames))
            if chunk.index == 0:
                kept = len(frames)
            t_chunk = time.perf_counter()
    writer.close()
    import numpy as np

    sheet = output.with_suffix(".png")
    contact_sheet(np.concatenate(sheet_frames), sheet)
    later = written - kept
    fps = f"{later / gen_s:.2f} FPS over {later} frames after the first chunk" if later and gen_s > 0 else "n/a (one chunk)"
    print(f"wrote {output} ({written} frames, {written / FPS:.2f} s at {FPS} fps) and {sheet}")
    print(
        f"time to first frame {first_s:.2f} s (text encoding + first chunk's {sampler.forwards_per_chunk} "
        f"transformer forwards + VAE decode, model loading ({load_s:.1f} s) excluded); sustained {fps} "
        f"(denoising + refresh + VAE decode + copy to host; mp4 encoding excluded) on {pipe.device}"
    )
    return 0


def _train(args) -> int:
    import os

    import torch.distributed as dist

    from stream_r1_fast.training.config import TrainConfig
    from stream_r1_fast.training.trainer import build_trainer

    config = TrainConfig.from_yaml(args.config)
    overrides = {"steps": args.steps, "output_dir": args.output_dir, "device": args.device}
    for key, value in overrides.items():
        if value is not None:
            setattr(config.train, key, value)
    started = False
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        import torch

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            config.train.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        dist.init_process_group(backend)
        started = True
    try:
        trainer = build_trainer(config)
        resumed = trainer.resume() if not args.no_resume else None
        if resumed is not None and trainer.rank == 0:
            print(f"resumed from {resumed} (step {trainer.step})")
        trainer.fit()
        if trainer.rank == 0:
            print(f"done: {trainer.step} steps; checkpoints and metrics in {trainer.output_dir}")
    finally:
        if started:
            dist.destroy_process_group()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stream-r1", description="Streaming autoregressive video generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a video from a prompt or a prompt schedule")
    g.add_argument("--model", required=True, help="diffusers Wan model folder (transformer/, vae/, text_encoder/, tokenizer/)")
    g.add_argument("--checkpoint", help="student weights replacing the transformer's (.pt with generator[_ema], original or diffusers layout)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt")
    src.add_argument("--prompt-schedule", help="file of timed prompts: JSON [{at, prompt}] or lines 'SECONDS PROMPT'")
    g.add_argument("--seconds", type=float, default=5.0, help=f"video length in seconds at {FPS} fps (default 5)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--output", required=True, help="output .mp4 (a .png contact sheet is written beside it)")
    g.add_argument("--height", type=int, default=480)
    g.add_argument("--width", type=int, default=832)
    g.add_argument("--sink", type=int, default=3, help="sink latent frames (0: none)")
    g.add_argument("--window", type=int, default=3, help="sliding-window latent frames")
    g.add_argument("--alpha", type=float, default=0.999, help="EMA-Sink alpha")
    g.add_argument("--static-sink", action="store_true", help="keep the first frames as the sink (alpha 1)")
    g.add_argument("--steps", type=float, nargs="+", default=[1000, 750, 500, 250], help="denoising steps before the shift")
    g.add_argument("--shift", type=float, default=5.0)
    g.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_generate)

    t = sub.add_parser("train", help="DMD / Re-DMD / Stream-R1 distillation (under torchrun for several GPUs)")
    t.add_argument("--config", required=True, help="YAML training config (see configs/)")
    t.add_argument("--steps", type=int, help="override train.steps")
    t.add_argument("--output-dir", help="override train.output_dir")
    t.add_argument("--device", help="override train.device")
    t.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    t.set_defaults(func=_train)

    from stream_r1_fast.serve.cli import add_serve_parser  # argparse only: FastAPI is imported when serving

    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"stream-r1: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
