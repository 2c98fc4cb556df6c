"""Shared timing and reporting for the kernel benchmarks.

GPU: ``triton.testing.do_bench`` (median over repeated runs, L2 flushed between them) when
triton is importable, else CUDA events. CPU: a plain repeated wall-clock timer. Every result
records what was timed, on which device, with which versions and commit, and is written as
JSON under ``bench/results/``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Timing:
    op: str
    variant: str
    shape: str
    device: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    extra: dict = field(default_factory=dict)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment() -> dict:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=Path(__file__).resolve().parent, check=False,
        ).stdout.strip() or "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, cwd=Path(__file__).resolve().parent, check=False,
        ).stdout.strip()
        if dirty:
            commit += "-dirty"
    except OSError:
        commit = "unknown"
    import stream_r1_fast

    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "commit": commit,
        "backend": str(stream_r1_fast.backend_info()),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def time_fn(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, reps: int = 10) -> tuple[float, float, float]:
    """(median, 20th, 80th percentile) wall time of ``fn()`` in milliseconds."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench

            q = do_bench(fn, quantiles=[0.5, 0.2, 0.8], return_mode="median")
            return float(q[0]), float(q[1]), float(q[2])
        except ImportError:
            pass
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    qs = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    return statistics.median(times), qs[0], qs[3]


def bandwidth_rows(op: str, fns: dict[str, Callable[[], object]], shape: str, device: torch.device,
                   moved: int) -> list[Timing]:
    """One row per variant of ``fns`` (name -> call), each timed by :func:`time_fn`, with the
    bandwidth the ``moved`` bytes it must move imply."""
    rows = []
    for name, fn in fns.items():
        med, p20, p80 = time_fn(fn, device)
        rows.append(Timing(op, name, shape, str(device), med, p20, p80,
                           extra={"GB/s": round(moved / (med * 1e-3) / 1e9, 1), "MB": round(moved / 1e6, 1)}))
    return rows


def print_table(rows: list[Timing], baseline: str) -> None:
    """One line per variant with its speed-up over ``baseline`` at the same shape."""
    base = {(r.op, r.shape): r.median_ms for r in rows if r.variant == baseline}
    print(f"{'op':<23}{'shape':<34}{'variant':<22}{'median ms':>11}{'p20':>9}{'p80':>9}{'vs ' + baseline:>18}  extra")
    for r in rows:
        ref = base.get((r.op, r.shape))
        speed = f"{ref / r.median_ms:.2f}x" if ref else "-"
        extra = " ".join(f"{k}={v}" for k, v in r.extra.items())
        print(f"{r.op:<23}{r.shape:<34}{r.variant:<22}{r.median_ms:>11.3f}{r.p20_ms:>9.3f}{r.p80_ms:>9.3f}{speed:>18}  {extra}")


def write_json(name: str, rows: list[Timing], device: torch.device) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if device.type == "cuda" else "cpu"
    path = RESULTS_DIR / f"{name}_{tag}.json"
    payload = {
        "device": device_name(device),
        "environment": environment(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": [asdict(r) for r in rows],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    return path


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def script_main(name: str, run: Callable[[torch.device], list[Timing]], baseline: str, description: str) -> None:
    """The command line of a single-op benchmark script: ``[--device cpu|cuda]``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    print(f"device: {device_name(device)}")
    print("environment: " + ", ".join(f"{k}={v}" for k, v in environment().items()))
    rows = run(device)
    print_table(rows, baseline=baseline)
    print(f"wrote {write_json(name, rows, device)}")
