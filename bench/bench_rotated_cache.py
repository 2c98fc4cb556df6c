"""Benchmark of rotated_cache_advance: one chunk's refresh of every layer of the rotated cache.

CUDA: a full 30-layer cache at the streaming shape (B=1, sink 3, P=1560, H=12, D=128, bf16,
chunks of 3), already full so that each call evicts three frames, folds them into the sink in
rotated space, moves the survivors (temporal pairs re-rotated) and writes the chunk rotated;
window W=3 (nothing survives: fold and write) and W=6 (three frames move). Variants:
  kernel     the public op (compiled kernel when available), one launch per layer;
  reference  the PyTorch reference, the handful of ops per layer RotatedSinkKVCache ran
             before the fused op (the baseline);
  copy_bw    one device-to-device copy moving as many bytes as the op must (the ceiling).
``GB/s`` counts the buffer bytes the op must move (sink read + write, evicted frames read,
survivors read + write, chunk read + write, K and V; not the small RoPE tables) for every
variant, so the figures compare directly.

    python bench/bench_rotated_cache.py [--device cpu|cuda]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timing, bandwidth_rows, script_main  # noqa: E402

from stream_r1_fast.ops.rope import rope_tables  # noqa: E402
from stream_r1_fast.ops.rotated_cache import rotated_cache_advance  # noqa: E402
from stream_r1_fast.ops.rotated_cache_ref import rotated_cache_advance_ref  # noqa: E402

ALPHA = 0.999
CUDA_SHAPES = [  # layers, batch, sink, window, grid (P = h * w), heads, head dim, chunk frames
    dict(layers=30, b=1, sink=3, window=3, grid=(30, 52), h=12, d=128, fn=3),
    dict(layers=30, b=1, sink=3, window=6, grid=(30, 52), h=12, d=128, fn=3),
]
CPU_SHAPES = [dict(layers=4, b=1, sink=3, window=3, grid=(8, 8), h=4, d=64, fn=3)]


def bytes_moved(cfg: dict, dtype: torch.dtype) -> int:
    """Minimum traffic of one steady-state advance of all layers (E = F evicted and folded)."""
    p = cfg["grid"][0] * cfg["grid"][1]
    frame = cfg["b"] * p * cfg["h"] * cfg["d"] * torch.finfo(dtype).bits // 8
    survivors = cfg["window"] - cfg["fn"]
    per_tensor = frame * (2 * cfg["sink"] + cfg["fn"] + 2 * survivors + 2 * cfg["fn"])
    return 2 * per_tensor * cfg["layers"]


def buffers(cfg: dict, dtype: torch.dtype, device: torch.device, layers: int):
    """Per layer random buffers [B, S + W + F, P, H, D], the shared RoPE tables, and a chunk."""
    p = cfg["grid"][0] * cfg["grid"][1]
    n = cfg["sink"] + cfg["window"] + cfg["fn"]
    shape = (cfg["b"], n, p, cfg["h"], cfg["d"])
    bufs = [(torch.randn(shape, dtype=dtype, device=device), torch.randn(shape, dtype=dtype, device=device))
            for _ in range(layers)]
    cos, sin = rope_tables(n, *cfg["grid"], cfg["d"], 10000.0, dtype, device)
    chunk = (cfg["b"], cfg["fn"] * p, cfg["h"], cfg["d"])
    k_new, v_new = (torch.randn(chunk, dtype=dtype, device=device) for _ in "kv")
    return bufs, cos, sin, k_new, v_new


def check_kernel(cfg: dict, dtype: torch.dtype, device: torch.device) -> None:
    """Fresh random data, chunk after chunk from empty into the steady state: the public op
    equals the reference (within bf16 rounding-order differences)."""
    small = dict(cfg, grid=(min(cfg["grid"][0], 7), min(cfg["grid"][1], 13)))
    ((k, v),), cos, sin, _, _ = buffers(small, dtype, device, 1)
    ref_k, ref_v = k.clone(), v.clone()
    m, slots = 0, small["sink"] + small["window"]
    for _ in range(3 * slots // small["fn"] + 2):
        k_new, v_new = (torch.randn(ref_k.shape[0], small["fn"] * k.shape[2], *k.shape[3:], dtype=dtype,
                                    device=device) for _ in "kv")
        rotated_cache_advance(k, v, k_new, v_new, cos, sin, m, small["sink"], small["window"], ALPHA)
        rotated_cache_advance_ref(ref_k, ref_v, k_new, v_new, cos, sin, m, small["sink"], small["window"], ALPHA)
        m = min(m + small["fn"], slots)
    for got, want in ((k, ref_k), (v, ref_v)):
        if not torch.allclose(got.float(), want.float(), rtol=8e-3, atol=1e-5):
            raise AssertionError("rotated_cache_advance differs from the reference; not timing it")


def run(device: torch.device) -> list[Timing]:
    dtype = torch.bfloat16
    shapes = CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    rows = []
    for cfg in shapes:
        check_kernel(cfg, dtype, device)
        layers, cos, sin, k_new, v_new = buffers(cfg, dtype, device, cfg["layers"])
        full, sink, window = cfg["sink"] + cfg["window"], cfg["sink"], cfg["window"]
        moved = bytes_moved(cfg, dtype)
        copy_src = torch.empty(moved // 2, dtype=torch.uint8, device=device)
        copy_dst = torch.empty_like(copy_src)

        # Every call starts from a full buffer (the steady state): it leaves one full again.
        def kernel():
            for k, v in layers:
                rotated_cache_advance(k, v, k_new, v_new, cos, sin, full, sink, window, ALPHA)

        def reference():
            for k, v in layers:
                rotated_cache_advance_ref(k, v, k_new, v_new, cos, sin, full, sink, window, ALPHA)

        def copy_bw():
            copy_dst.copy_(copy_src)

        shape = (f"L{cfg['layers']} B{cfg['b']} S{sink}+{window} P{cfg['grid'][0] * cfg['grid'][1]} "
                 f"H{cfg['h']} D{cfg['d']} F{cfg['fn']}")
        variants = {"kernel": kernel, "reference": reference, "copy_bw": copy_bw}
        rows += bandwidth_rows("rotated_cache_advance", variants, shape, device, moved)
        del layers, copy_src, copy_dst
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    script_main("rotated_cache", run, "reference", __doc__.split("\n")[0])
