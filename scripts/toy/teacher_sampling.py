"""How should a toy teacher be sampled? Its oracle scores under several samplers, on the same clips.

    python scripts/toy/teacher_sampling.py --setting steps=24,cfg=3 --setting steps=24,cfg=1 \\
        --clips 64 --out runs/v2/teacher_sampling.json

Samples a v2 teacher (default the shipped one; ``--weights DIR`` for another folder with
teacher.safetensors + codec.safetensors, the world settings read from the teacher's file) on
``--clips`` fresh captions (clips of ``--eval-seed``, the same noise for every setting) with each
``--setting`` of the Euler sampler (``steps``, ``cfg`` = classifier-free guidance scale, 1 = none,
``shift`` = timestep shift), and scores the samples with the v2 oracle (as the motion pilot does). Each setting is a
comma-separated list of ``key=value``; a key left out keeps the default (24 steps, cfg 1, shift 3).
Results (one row per setting) -> ``--out`` (JSON) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

SAMPLER_DEFAULTS = {"steps": 24, "cfg": 1.0, "shift": 3.0}
SHOWN = ("count", "color", "shape", "direction", "speed", "stuck_rate", "ghost_rate")


def parse_setting(text: str) -> dict:
    """'steps=24,cfg=1.5' -> {'steps': 24, 'cfg': 1.5, 'shift': 3.0}; unknown keys and bad values refused."""
    setting = dict(SAMPLER_DEFAULTS)
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in SAMPLER_DEFAULTS:
            raise argparse.ArgumentTypeError(
                f"setting {text!r}: each item is key=value with key one of {', '.join(SAMPLER_DEFAULTS)}")
        try:
            setting[key] = int(value) if key == "steps" else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"setting {text!r}: {key}={value!r} is not a number") from None
    if setting["steps"] < 1 or setting["shift"] <= 0:
        raise argparse.ArgumentTypeError(f"setting {text!r}: steps must be >= 1 and shift > 0")
    return setting


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", help="a folder with teacher.safetensors and codec.safetensors (default: the world's)")
    ap.add_argument("--setting", type=parse_setting, action="append", metavar="KEY=VALUE,...",
                    help="a sampler setting (repeatable); default: guidance 1 and 3 at 24 steps")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--frames", type=int, default=33, help="video frames per clip (1 + 4k)")
    ap.add_argument("--eval-seed", type=int, default=4242)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the results here (JSON)")
    args = ap.parse_args(argv)
    if args.clips < 1 or args.frames < 1 or (args.frames - 1) % 4:
        ap.error(f"--clips must be >= 1 and --frames 1 + 4k, got {args.clips}, {args.frames}")
    if args.weights:
        missing = [n for n in ("teacher.safetensors", "codec.safetensors") if not (Path(args.weights) / n).is_file()]
        if missing:
            ap.error(f"--weights {args.weights}: missing {', '.join(missing)}")
    args.setting = args.setting or [parse_setting("cfg=1"), parse_setting("cfg=3")]
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from stream_r1_fast.toy import kits
    from stream_r1_fast.toy.models import load_transformer_file
    from stream_r1_fast.toy.sampling import euler_sample

    from stream_r1_fast.toy.oracle2 import score_videos_v2

    kit = kits._v2(Path(args.weights)) if args.weights else kits.toy_kit("v2")
    world, codec, text = kit.world(num_frames=args.frames), kit.codec(), kit.text_encoder()
    teacher = load_transformer_file(kit.weights / "teacher.safetensors").float().eval()
    truth, attrs = world.batch(args.clips, seed=args.eval_seed)
    captions = [a.caption for a in attrs]
    s = codec.spatial_factor
    noise = torch.randn(args.clips, codec.latent_channels, 1 + (args.frames - 1) // codec.temporal_factor,
                        world.height // s, world.width // s, generator=torch.Generator().manual_seed(args.eval_seed))
    cond, uncond = text(captions), text([""] * args.clips)
    rows = []
    for setting in args.setting:
        start = time.perf_counter()
        with torch.no_grad():
            video = codec.decode_frames(euler_sample(teacher, cond, uncond, noise, **setting))
        metrics = score_videos_v2(video, captions, wrap=world.wrap, world=world)
        rows.append({"sampler": setting, "clips": args.clips, "metrics": metrics,
                     "seconds": round(time.perf_counter() - start, 1)})
        shown = " ".join(f"{k} {metrics[k]:.3f}" for k in SHOWN if k in metrics)
        print(f"steps {setting['steps']:3d} cfg {setting['cfg']:4.1f} shift {setting['shift']:3.1f}: {shown}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"weights": str(kit.weights), "eval_seed": args.eval_seed,
                                              "rows": rows}, indent=2))
        print(f"-> {args.out}")
    return rows


if __name__ == "__main__":
    main()
