"""The papers' comparison in miniature, on the toy world (docs/toy_world.md).

    python scripts/toy/compare.py --seeds 0 1 2 --jobs 3           # train what is missing, evaluate
    python scripts/toy/compare.py --seeds 0 1 2 --skip-training    # evaluate existing runs only

Per seed s (everything below is reproducible from s):

1. students: ``ode_init.py --seed s`` then ``train_student.py --method m --seed s`` for DMD,
   Re-DMD, Stream-R1 and Stream-R1's two levels alone (inter: W_intra = 1; intra: W_inter = 1)
   from that initialisation (``runs/toy/seed<s>/``; existing outputs are
   reused, interrupted runs resume);
2. generators: the teacher (bidirectional, 24 Euler steps, whole clips), the ODE-initialised
   student and the distilled students (streamed, 4 steps per chunk, EMA-Sink cache), each
   on the same ``--clips`` fresh world captions with the same noise seeds; scored by the oracle
   and the reward model;
3. long rollouts: the Stream-R1 student streams ``--long-factor`` x the training length
   (33 frames) for ``--long-clips`` captions under an EMA-Sink (alpha 0.999 and 0.99), a static
   sink and no sink (6 cached latent frames each), scored on 33-frame windows along the video.

Writes ``<out>/results.json`` (every number per seed), ``<out>/results.md`` (mean +- std over
seeds), ``<out>/methods.png`` and ``<out>/long_rollouts.png``; ``--report-only`` rewrites the
last three from an existing results.json. This script trains and evaluates; the statistics,
results.md and the plots are :mod:`stream_r1_fast.toy.comparison`.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from stream_r1_fast.toy.comparison.markdown import write_markdown
from stream_r1_fast.toy.comparison.plots import plot
from stream_r1_fast.toy.comparison.stats import METHODS, summarise

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "toy"


def _run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"  $ {' '.join(cmd[1:])}  (log: {log})", flush=True)
    with open(log, "a") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")


def train_seed(seed: int, runs: Path, args) -> None:
    """ODE init then the three distillations of one seed, skipping outputs that exist."""
    d = runs / f"seed{seed}"
    ode = d / "student_ode.safetensors"
    py = sys.executable
    if not ode.is_file():
        _run([py, str(SCRIPTS / "ode_init.py"), "--seed", str(seed), "--pairs", str(args.ode_pairs),
              "--steps", str(args.ode_steps), "--out", str(ode)], d / "ode_init.log")
    for m in METHODS:
        out = d / m / f"student_{m}.safetensors"
        if not out.is_file():
            _run([py, str(SCRIPTS / "train_student.py"), "--method", m, "--seed", str(seed), "--init", str(ode),
                  "--run-dir", str(d / m), "--out", str(out)] + (["--steps", str(args.steps)] if args.steps else []),
                 d / f"train_{m}.log")


def evaluate_seed(seed: int, runs: Path, args) -> dict:
    from stream_r1_fast.toy.evaluate import POLICIES, sample_teacher, score, stream_student, window_scores
    from stream_r1_fast.toy.models import load_teacher, load_transformer_file
    from stream_r1_fast.toy.reward import ToyRewardModel
    from stream_r1_fast.toy.world import ToyWorld

    d = runs / f"seed{seed}"
    reward = ToyRewardModel.pretrained()
    world = ToyWorld()
    g = torch.Generator().manual_seed(90_000 + seed)  # evaluation captions: never seen in training
    captions = [world.sample_attributes(g).caption for _ in range(args.clips)]
    result: dict = {"seed": seed, "captions": captions, "generators": {}, "fps": {}, "long": {}}
    t0 = time.perf_counter()
    video, fps = sample_teacher(load_teacher(), captions, seed)
    result["generators"]["teacher"], result["fps"]["teacher"] = score(video, captions, reward), fps
    students = {"ode": d / "student_ode.safetensors", **{m: d / m / f"student_{m}.safetensors" for m in METHODS}}
    for name, path in students.items():
        video, fps = stream_student(load_transformer_file(path), captions, seed)
        result["generators"][name], result["fps"][name] = score(video, captions, reward), fps
    print(f"  seed {seed}: generators scored in {time.perf_counter() - t0:.0f} s", flush=True)

    t0 = time.perf_counter()
    frames = 33 * args.long_factor
    long_caps = captions[: args.long_clips]
    starts = [round(i * (frames - 33) / (args.windows - 1)) for i in range(args.windows)]
    model = load_transformer_file(students[args.long_student])
    for label, policy in POLICIES.items():
        video, fps = stream_student(model, long_caps, seed, num_frames=frames, policy=policy)
        whole = score(video, long_caps)
        result["long"][label] = {"starts": starts, "windows": window_scores(video, long_caps, starts, reward_model=reward),
                                 "drift": whole["drift"], "frame_copy_rate": whole["frame_copy_rate"], "fps": fps}
    print(f"  seed {seed}: {len(POLICIES)} x {len(long_caps)} long rollouts of {frames} frames in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "toy"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "toy_comparison"))
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained in parallel (one CPU thread each)")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--steps", type=int, help="distillation steps (default: the configs')")
    ap.add_argument("--ode-pairs", type=int, default=512)
    ap.add_argument("--ode-steps", type=int, default=600)
    ap.add_argument("--clips", type=int, default=64, help="evaluation captions per seed")
    ap.add_argument("--long-factor", type=int, default=50, help="long rollouts: multiples of the 33-frame training length")
    ap.add_argument("--long-clips", type=int, default=16)
    ap.add_argument("--long-student", default="stream_r1", choices=("ode",) + METHODS)
    ap.add_argument("--windows", type=int, default=8, help="scored 33-frame windows along each long rollout")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite results.md and the plots from <out>/results.json (no training, no evaluation)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    runs, out = Path(args.runs), Path(args.out)
    if args.report_only:
        data = json.loads((out / "results.json").read_text())
        report(data["per_seed"], data["meta"], out)
        return
    if not args.skip_training:
        print(f"training seeds {args.seeds} ({args.jobs} at a time)", flush=True)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(lambda s: train_seed(s, runs, args), args.seeds))
    torch.set_num_threads(args.threads)
    print("evaluating", flush=True)
    results = [evaluate_seed(s, runs, args) for s in args.seeds]
    meta = {"seeds": args.seeds, "clips": args.clips, "long_factor": args.long_factor, "long_clips": args.long_clips,
            "long_student": args.long_student, "torch": torch.__version__, "python": platform.python_version(),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "command": "python scripts/toy/compare.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seconds": time.perf_counter() - start}
    report(results, meta, out)


def report(results: list[dict], meta: dict, out: Path) -> None:
    """results.json (every number per seed + the summary), results.md and the plots."""
    meta = {**meta, "windows": len(next(iter(results[0]["long"].values()))["windows"])}
    summary = summarise(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "per_seed": results, "summary": summary}, indent=1))
    write_markdown(summary, meta, out / "results.md")
    paths = plot(summary, meta, out)
    print((out / "results.md").read_text())
    print("wrote: " + ", ".join(str(p) for p in [out / "results.json", out / "results.md", *paths]))


if __name__ == "__main__":
    main()
