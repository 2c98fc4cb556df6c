"""Runs every kernel benchmark on the best available device (or --device), prints one table
per op with each variant against its baseline, and writes bench/results/<op>_<device>.json."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import default_device, device_name, environment, print_table, write_json  # noqa: E402

# (module, JSON name, baseline variant the table compares against)
SUITE = [
    ("bench_sink_attention", "sink_attention", "rf_style"),
    ("bench_attention_backends", "attention_backends", "sdpa_default"),
    ("bench_ema_cache", "ema_cache", "rf_shift"),
    ("bench_rotated_cache", "rotated_cache", "reference"),
    ("bench_saliency", "saliency", "reference"),
    ("bench_qk_norm_rope", "qk_norm_rope", "unfused"),
    ("bench_nvrtc", "nvrtc", "compiled"),  # CUDA only: run-time compiled kernels vs nvcc's
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--only", nargs="*", default=None, help="subset of: " + " ".join(n for _, n, _ in SUITE))
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()
    print(f"device: {device_name(device)}")
    print("environment: " + ", ".join(f"{k}={v}" for k, v in environment().items()))
    for module_name, name, baseline in SUITE:
        if args.only and name not in args.only:
            continue
        module = importlib.import_module(module_name)
        print(f"\n== {name} ==")
        rows = module.run(device)
        if not rows:
            continue
        print_table(rows, baseline=baseline)
        print(f"-> {write_json(name, rows, device)}")


if __name__ == "__main__":
    main()
