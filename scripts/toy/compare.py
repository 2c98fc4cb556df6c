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
last three from an existing results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "toy"
# The distillation recipes (configs/toy_<name>.yaml): the three methods, then Stream-R1's two
# levels alone (its ablation: W_intra = 1, and W_inter = 1).
METHODS = ("dmd", "re_dmd", "stream_r1", "stream_r1_inter", "stream_r1_intra")
LABELS = {"teacher": "teacher (24 steps)", "ode": "ODE init", "dmd": "DMD", "re_dmd": "Re-DMD",
          "stream_r1": "Stream-R1", "stream_r1_inter": "Stream-R1, inter only", "stream_r1_intra": "Stream-R1, intra only"}
# Paired comparisons (same captions and noise within a seed): generator a - generator b, and for
# the long rollouts cache a - cache b on the mean of the windows after the first.
PAIRS = (("dmd", "ode"), ("dmd", "teacher"), ("re_dmd", "dmd"), ("stream_r1", "dmd"), ("stream_r1", "re_dmd"),
         ("stream_r1_inter", "dmd"), ("stream_r1_intra", "dmd"), ("stream_r1", "stream_r1_inter"),
         ("stream_r1", "stream_r1_intra"))
CACHE_PAIRS = (("EMA-Sink", "no sink"), ("EMA-Sink", "static sink"), ("EMA-Sink", "EMA-Sink a=0.99"))
PAIRED_METRICS = ("count", "color", "shape", "direction", "speed", "smoothness", "dynamic_degree", "background_error",
                  "reward_VQ", "reward_MQ", "reward_TA")
# The metrics shown, and whether higher is better.
METRICS = {"count": True, "color": True, "shape": True, "direction": True, "speed": True, "smoothness": True,
           "dynamic_degree": True, "frame_copy_rate": False, "background_error": False, "drift": False,
           "reward_VQ": True, "reward_MQ": True, "reward_TA": True}


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


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _later(run: dict, key: str) -> float:
    """One seed's long rollout: the mean of ``key`` over every window after the first (all past
    the first eviction; 7 windows of the captions instead of one window's)."""
    return statistics.fmean(w[key] for w in run["windows"][1:])


def summarise(results: list[dict]) -> dict:
    names = list(results[0]["generators"])
    table = {n: {k: _stats([r["generators"][n][k] for r in results]) for k in METRICS} for n in names}
    fps = {n: _stats([r["fps"][n] for r in results]) for n in names}
    long = {}
    for label in results[0]["long"]:
        windows = len(results[0]["long"][label]["windows"])
        long[label] = {
            "starts": results[0]["long"][label]["starts"],
            "windows": [{k: _stats([r["long"][label]["windows"][w][k] for r in results]) for k in METRICS}
                        for w in range(windows)],
            "later": {k: _stats([_later(r["long"][label], k) for r in results]) for k in METRICS},
            "drift": _stats([r["long"][label]["drift"] for r in results]),
            "frame_copy_rate": _stats([r["long"][label]["frame_copy_rate"] for r in results]),
        }
    paired = {f"{a} - {b}": {k: [r["generators"][a][k] - r["generators"][b][k] for r in results]
                             for k in PAIRED_METRICS}
              for a, b in PAIRS if a in names and b in names}
    paired_long = {f"{a} - {b}": {k: [_later(r["long"][a], k) - _later(r["long"][b], k) for r in results]
                                  for k in PAIRED_METRICS}
                   for a, b in CACHE_PAIRS if a in long and b in long}
    return {"table": table, "fps": fps, "long": long, "paired": paired, "paired_long": paired_long}


def _fmt(ms: tuple[float, float], signed: bool = False) -> str:
    m, s = ms
    return f"{m:+.2f} ± {s:.2f}" if signed else f"{m:.2f} ± {s:.2f}"


def write_markdown(summary: dict, meta: dict, path: Path) -> None:
    cols = list(METRICS)
    lines = [f"Seeds {meta['seeds']}; {meta['clips']} evaluation captions per seed; mean ± std over seeds. "
             f"Generated by `{meta['command']}` ({meta['machine']}, torch {meta['torch']}, {meta['seconds']:.0f} s).", "",
             "| generator | " + " | ".join(cols) + f" | frames/s (batch of {meta['clips']}) |", "|---" * (len(cols) + 2) + "|"]
    for name, row in summary["table"].items():
        cells = [_fmt(row[k], k.startswith("reward")) for k in cols]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + f" | {summary['fps'][name][0]:.0f} |")
    keys = ("count", "color", "shape", "direction", "dynamic_degree", "background_error", "reward_VQ", "reward_MQ",
            "reward_TA")
    lines += ["", f"Long rollouts ({meta['long_factor']}x the 33-frame training length, {meta['long_clips']} captions "
              f"per seed, student: {LABELS[meta['long_student']]}), scored on {meta['windows']} 33-frame windows "
              "spread along the video: the first window (before any eviction, the same for every cache), the "
              "last, and the mean of all windows after the first:", "",
              "| cache | window | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for label, data in summary["long"].items():
        for which, w in (("first", data["windows"][0]), ("last", data["windows"][-1]), ("after the first", data["later"])):
            lines.append(f"| {label} | {which} | " + " | ".join(_fmt(w[k], k.startswith("reward")) for k in keys) + " |")
    lines += ["", "| cache | drift (whole video) | frame-copy rate |", "|---|---|---|"]
    for label, data in summary["long"].items():
        lines.append(f"| {label} | {_fmt(data['drift'])} | {_fmt(data['frame_copy_rate'])} |")
    for title, table in (("generators", summary["paired"]), ("long rollouts, windows after the first", summary["paired_long"])):
        lines += ["", f"Paired differences, {title}: a - b per seed (seeds {meta['seeds']}; the same captions and "
                  "noise within a seed). Background error: lower is better.", "",
                  "| a - b | " + " | ".join(PAIRED_METRICS) + " |", "|---" * (len(PAIRED_METRICS) + 1) + "|"]
        for pair, diffs in table.items():
            pretty = " - ".join(LABELS.get(n, n) for n in pair.split(" - "))
            lines.append(f"| {pretty} | " + " | ".join(" ".join(f"{d:+.2f}" for d in diffs[k]) for k in PAIRED_METRICS)
                         + " |")
    path.write_text("\n".join(lines) + "\n")


def plot(summary: dict, meta: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = list(summary["table"])
    keys = list(METRICS)
    fig, axes = plt.subplots(2, math.ceil(len(keys) / 2), figsize=(3.0 * math.ceil(len(keys) / 2), 6.4))
    colors = ["#777777", "#bbbbbb", "#4c72b0", "#dd8452", "#55a868", "#8fd19e", "#2f6b3b"]
    for ax, k in zip(axes.flat, keys):
        means = [summary["table"][n][k][0] for n in names]
        stds = [summary["table"][n][k][1] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, color=colors[: len(names)], capsize=3)
        ax.set_xticks(range(len(names)), [LABELS[n] for n in names], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{k} ({'higher' if METRICS[k] else 'lower'} is better)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"Toy world: teacher vs students (mean ± std over seeds {meta['seeds']})", fontsize=10)
    fig.tight_layout()
    paths.append(out / "methods.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    long_keys = ("color", "count", "shape", "dynamic_degree", "background_error", "reward_MQ")
    fig, axes = plt.subplots(2, len(long_keys), figsize=(3.0 * len(long_keys), 6.2))
    labels = list(summary["long"])
    for ax, bar, k in zip(axes[0], axes[1], long_keys):
        for i, (label, data) in enumerate(summary["long"].items()):
            x = [s / 33 for s in data["starts"]]
            m = [w[k][0] for w in data["windows"]]
            s = [w[k][1] for w in data["windows"]]
            ax.plot(x, m, marker="o", ms=3, label=label, color=f"C{i}")
            ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.15, color=f"C{i}")
        ax.set_title(f"{k} per window", fontsize=9)
        ax.set_xlabel("window start (x training length)", fontsize=7)
        ax.tick_params(labelsize=7)
        bar.bar(range(len(labels)), [summary["long"][n]["later"][k][0] for n in labels],
                yerr=[summary["long"][n]["later"][k][1] for n in labels], color=[f"C{i}" for i in range(len(labels))],
                capsize=3)
        bar.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        bar.set_title(f"{k}, later windows", fontsize=8)
        bar.tick_params(axis="y", labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Long rollouts ({meta['long_factor']}x training length), {LABELS[meta['long_student']]} student, "
                 "33-frame windows (bottom: mean of the windows after the first), mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    paths.append(out / "long_rollouts.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


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
