"""Are the distilled students as good as their teacher? Oracle scores of a teacher and its
causal students on the same fresh captions.

    python scripts/toy/evaluate_students.py --world v2 \\
        --student ode=runs/v2/student_ode.safetensors --student dmd=runs/v2/dmd/student_dmd.safetensors \\
        --clips 64 --out runs/v2/students.json

Rows: the world's clips themselves (``truth``), the teacher (bidirectional, whole clips, Euler
``--sample-steps`` at guidance ``--cfg``, shift 3), and each ``--student NAME=PATH`` streamed as
it is deployed (4 steps per chunk, EMA-Sink cache: sink 3 + window 3 latent frames, alpha
0.999). Every generator gets the same captions (clips of ``--eval-seed``, disjoint from the
training captions' seed 0); the teacher and the students draw their own noise from that seed.
Without ``--student`` the students shipped beside the teacher (``student_*.safetensors``) are
scored. Per student the difference to the teacher on each caption attribute is printed and
saved, with whether it is within ``--margin`` (0.05; the toy world's bar for a student).
``--long-factor K`` also streams each student for K x ``--frames`` frames (a cache that
folds) and scores its 33-frame windows, first and last.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ATTRIBUTES = ("count", "color", "shape", "direction")
SHOWN = ("count", "color", "shape", "direction", "speed", "stuck_rate", "ghost_rate", "frame_copy_rate", "drift")


def parse_student(text: str) -> tuple[str, Path]:
    """'dmd=runs/x.safetensors' -> ('dmd', Path(...)); the file must exist."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--student {text!r}: expected NAME=PATH")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"--student {text!r}: {path} does not exist")
    return name, Path(path)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", choices=("v1", "v2"), default="v2")
    ap.add_argument("--weights", help="a folder with teacher.safetensors and codec.safetensors (default: the world's)")
    ap.add_argument("--student", type=parse_student, action="append", metavar="NAME=PATH",
                    help="a causal student (repeatable); default: student_*.safetensors beside the teacher")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--frames", type=int, default=33, help="video frames per clip (1 + 4k)")
    ap.add_argument("--sample-steps", type=int, default=24, help="the teacher's Euler steps")
    ap.add_argument("--cfg", type=float, default=1.0, help="the teacher's guidance scale (1: none)")
    ap.add_argument("--eval-seed", type=int, default=4242)
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--long-factor", type=int, default=0, help="also stream K x --frames frames per student")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the results here (JSON)")
    args = ap.parse_args(argv)
    if args.clips < 1 or args.frames < 5 or (args.frames - 1) % 4 or args.sample_steps < 1 or args.long_factor < 0:
        ap.error("--clips and --sample-steps must be >= 1, --frames 1 + 4k (>= 5), --long-factor >= 0; got "
                 f"{args.clips}, {args.sample_steps}, {args.frames}, {args.long_factor}")
    if args.weights and args.world != "v2":
        ap.error("--weights is for --world v2 (v1's weights are the shipped ones)")
    if args.weights:
        missing = [n for n in ("teacher.safetensors", "codec.safetensors") if not (Path(args.weights) / n).is_file()]
        if missing:
            ap.error(f"--weights {args.weights}: missing {', '.join(missing)}")
    if args.student and len({n for n, _ in args.student}) != len(args.student):
        ap.error("--student names must differ")
    return args


def _kit(args):
    from stream_r1_fast.toy import kits

    return kits._v2(Path(args.weights)) if args.weights else kits.toy_kit(args.world)


def _mean(kit, videos: torch.Tensor, captions) -> dict[str, float]:
    scores = [kit.score_clip(v, c) for v, c in zip(videos, captions)]
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from stream_r1_fast.toy.evaluate import POLICIES, sample_teacher, stream_student
    from stream_r1_fast.toy.models import load_transformer_file

    kit = _kit(args)
    students = args.student or [(p.stem.removeprefix("student_"), p)
                                for p in sorted(kit.weights.glob("student_*.safetensors"))]
    if not students:
        raise SystemExit(f"no --student given and no student_*.safetensors in {kit.weights}")
    world = kit.world(num_frames=args.frames)
    truth, attrs = world.batch(args.clips, seed=args.eval_seed)
    captions = [a.caption for a in attrs]
    rows: dict[str, dict] = {"truth": {"metrics": _mean(kit, truth, captions)}}
    teacher = load_transformer_file(kit.weights / "teacher.safetensors").float().eval()
    start = time.perf_counter()
    with torch.no_grad():
        video, _ = sample_teacher(teacher, captions, args.eval_seed, num_frames=args.frames,
                                  steps=args.sample_steps, cfg=args.cfg, kit=kit)
    rows["teacher"] = {"metrics": _mean(kit, video, captions), "seconds": round(time.perf_counter() - start, 1)}
    for name, path in students:
        student = load_transformer_file(path).float().eval()
        start = time.perf_counter()
        with torch.no_grad():
            video, _ = stream_student(student, captions, args.eval_seed, num_frames=args.frames,
                                      policy=POLICIES["EMA-Sink"], kit=kit)
        m = _mean(kit, video, captions)
        gap = {k: round(m[k] - rows["teacher"]["metrics"][k], 4) for k in ATTRIBUTES}
        row = {"weights": str(path), "metrics": m, "minus_teacher": gap,
               "within_margin": all(g >= -args.margin for g in gap.values()),
               "seconds": round(time.perf_counter() - start, 1)}
        if args.long_factor:
            n = args.long_factor * (args.frames - 1) + 1
            with torch.no_grad():
                long, _ = stream_student(student, captions, args.eval_seed, num_frames=n,
                                         policy=POLICIES["EMA-Sink"], kit=kit)
            row["long"] = {"frames": n, "first_window": _mean(kit, long[:, :args.frames], captions),
                           "last_window": _mean(kit, long[:, -args.frames:], captions)}
        rows[name] = row
    print(f"{args.clips} captions of seed {args.eval_seed}, {args.frames} frames; teacher: {args.sample_steps} "
          f"Euler steps, guidance {args.cfg}")
    print(f"{'':10s} " + " ".join(f"{k[:9]:>9s}" for k in SHOWN))
    for name, row in rows.items():
        print(f"{name:10s} " + " ".join(f"{row['metrics'][k]:9.3f}" for k in SHOWN))
        if "minus_teacher" in row:
            print(f"{'  - teach.':10s} " + " ".join(f"{row['minus_teacher'][k]:+9.3f}" if k in ATTRIBUTES else " " * 9
                                               for k in SHOWN)
                  + ("" if row["within_margin"] else f"   (more than {args.margin} below the teacher)"))
        if "long" in row:
            for which in ("first_window", "last_window"):
                print(f"{'  ' + which[:5] + ' @' + str(row['long']['frames']):10s} "
                      + " ".join(f"{row['long'][which][k]:9.3f}" for k in SHOWN))
    result = {"world": args.world, "weights": str(kit.weights), "clips": args.clips, "eval_seed": args.eval_seed,
              "frames": args.frames, "teacher_sampler": {"steps": args.sample_steps, "cfg": args.cfg, "shift": 3.0},
              "student_cache": {"sink_frames": 3, "window_frames": 3, "alpha": 0.999}, "margin": args.margin,
              "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"-> {args.out}")
    return result


if __name__ == "__main__":
    main()
