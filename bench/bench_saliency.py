"""Benchmark of ``saliency_weights``: the fused kernel against the eager PyTorch reference, and a
device-to-device copy of the input's bytes (the bandwidth ceiling of a single pass over it).

    python bench/bench_saliency.py [--device cpu|cuda]

CUDA: Wan's geometry, A=3 reward axes, B=1, T=81 frames, C=3, 480x832 (-> 21x60x104 latent),
fp32 and bf16, both modes. CPU: a small shape. ``extra`` holds the achieved bandwidth (bytes
of the input read, or read + written for the copy, per second) and the kernel's max error
against the reference on the same data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timing, script_main, time_fn  # noqa: E402

from stream_r1_fast.ops.saliency import axis_weights_from_rewards, saliency_weights  # noqa: E402
from stream_r1_fast.ops.saliency_ref import saliency_weights_ref  # noqa: E402

OP = "saliency_weights"
SHAPES = {
    "cuda": (3, 1, 81, 3, 480, 832),
    "cpu": (3, 1, 9, 3, 64, 96),
}


def run(device: torch.device) -> list[Timing]:
    device = torch.device(device)
    a, b, t, c, h, w = SHAPES[device.type]
    rows: list[Timing] = []
    for dtype in (torch.float32, torch.bfloat16):
        gen = torch.Generator(device=device).manual_seed(0)
        grads = torch.randn(a, b, t, c, h, w, device=device, dtype=dtype, generator=gen)
        aw = axis_weights_from_rewards(torch.tensor([0.3, -0.5, 0.1], device=device))
        nbytes = grads.numel() * grads.element_size()
        shape = f"{a}x{b}x{t}x{c}x{h}x{w} {str(dtype).removeprefix('torch.')}"
        copy_dst = torch.empty_like(grads)
        med, p20, p80 = time_fn(lambda: copy_dst.copy_(grads), device)
        rows.append(Timing(OP, "copy_bw", shape, device.type, med, p20, p80,
                           {"GB/s": round(2 * nbytes / med / 1e6, 1)}))
        del copy_dst
        for mode in ("vae", "trilinear"):
            kernel = lambda: saliency_weights(grads, aw, mode=mode)  # noqa: E731
            reference = lambda: saliency_weights_ref(grads, aw, mode, 4, 8, 0.2, 0.15, 1.0, 1.0)  # noqa: E731
            err = max((o.double() - r.double()).abs().max().item() for o, r in zip(kernel(), reference()))
            for variant, fn in (("kernel", kernel), ("reference", reference)):
                med, p20, p80 = time_fn(fn, device)
                extra = {"GB/s": round(nbytes / med / 1e6, 1)}
                if variant == "kernel":
                    extra["max_err_vs_ref"] = f"{err:.1e}"
                rows.append(Timing(OP, variant, f"{shape} {mode}", device.type, med, p20, p80, extra))
        del grads
    return rows


if __name__ == "__main__":
    script_main("saliency", run, "reference", __doc__.split("\n")[0])
