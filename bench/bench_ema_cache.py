"""Benchmark of ema_cache_update: one chunk's cache update of every layer.

CUDA: a full 30-layer cache at the streaming shape (B=1, sink 3, P=1560, H=12, D=128, bf16,
Fn=3), already full so that each call evicts three frames and folds them into the sink;
window W=3 (the layout of this package: the current chunk is attended outside the cache)
and W=6 (Reward Forcing's 9-frame layout, where its shift moves three frames). Variants:
  kernel     the public op (compiled kernel when available);
  reference  the eager PyTorch reference (reads state on the host);
  rf_shift   a Reward-Forcing-style cache kept in time order: EMA into the sink, shift the
             window left by clone-and-copy, write the new chunk at the end;
  copy_bw    one device-to-device copy moving as many bytes as the op must (the ceiling).
``GB/s`` counts the bytes the op must move (sink read+write, evicted frames read, new frames
read+write, K and V) for every variant, so the figures compare directly.

    python bench/bench_ema_cache.py [--device cpu|cuda]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timing, bandwidth_rows, script_main  # noqa: E402

from stream_r1_fast.ops.ema_cache import ema_cache_update, new_sink_cache  # noqa: E402
from stream_r1_fast.ops.ema_cache_ref import ema_cache_update_ref  # noqa: E402

ALPHA = 0.999
CUDA_SHAPES = [  # layers, batch, sink, window, tokens per frame, heads, head dim, new frames
    dict(layers=30, b=1, sink=3, window=3, p=1560, h=12, d=128, fn=3),
    dict(layers=30, b=1, sink=3, window=6, p=1560, h=12, d=128, fn=3),
]
CPU_SHAPES = [dict(layers=4, b=1, sink=3, window=3, p=64, h=4, d=64, fn=3)]


def bytes_moved(cfg: dict, dtype: torch.dtype) -> int:
    """Minimum traffic of one update of all layers, folding case."""
    frame = cfg["b"] * cfg["p"] * cfg["h"] * cfg["d"] * torch.finfo(dtype).bits // 8
    per_tensor = frame * (2 * cfg["sink"] + cfg["fn"] + 2 * cfg["fn"])
    return 2 * per_tensor * cfg["layers"]


def full_caches(cfg: dict, dtype: torch.dtype, device: torch.device):
    """Per layer a full cache (sink filled, ring full) with random contents, and a chunk."""
    layers = []
    for _ in range(cfg["layers"]):
        k, v, pos, state = new_sink_cache(
            cfg["b"], cfg["sink"], cfg["window"], cfg["p"], cfg["h"], cfg["d"], dtype=dtype, device=device
        )
        k.normal_()
        v.normal_()
        slots = cfg["sink"] + cfg["window"]
        pos.copy_(torch.arange(slots, dtype=torch.int32))
        state.copy_(torch.tensor([cfg["sink"], 0, cfg["window"], slots], dtype=torch.int32))
        layers.append((k, v, pos, state))
    shape = (cfg["b"], cfg["fn"] * cfg["p"], cfg["h"], cfg["d"])
    k_new = torch.randn(shape, dtype=dtype, device=device)
    v_new = torch.randn(shape, dtype=dtype, device=device)
    return layers, k_new, v_new


def rf_shift_update(k_cache, v_cache, k_new, v_new, sink: int, alpha: float) -> None:
    """Reward-Forcing-style update of a full, time-ordered cache: fold the oldest window
    frames into the sink, shift the window left by clone-and-copy, append the chunk."""
    b, s, p, h, d = k_cache.shape
    fn = k_new.shape[1] // p
    rolled = s - sink - fn
    for cache, new in ((k_cache, k_new), (v_cache, v_new)):
        evicted = cache[:, sink : sink + fn]
        if fn == sink:
            cache[:, :sink] = (alpha * cache[:, :sink].float() + (1.0 - alpha) * evicted.float()).to(cache.dtype)
        if rolled > 0:
            cache[:, sink : sink + rolled] = cache[:, sink + fn :].clone()
        cache[:, s - fn :] = new.view(b, fn, p, h, d)


def check_kernel(cfg: dict, dtype: torch.dtype, device: torch.device) -> None:
    """Fresh random data, a few chunks from empty: the public op equals the reference."""
    small = dict(cfg, layers=1, p=min(cfg["p"], 97))
    cache = new_sink_cache(small["b"], small["sink"], small["window"], small["p"], small["h"], small["d"],
                           dtype=dtype, device=device)
    ref = [t.clone() for t in cache]
    for _ in range(3 * (small["sink"] + small["window"])):
        shape = (small["b"], small["fn"] * small["p"], small["h"], small["d"])
        k_new = torch.randn(shape, dtype=dtype, device=device)
        v_new = torch.randn(shape, dtype=dtype, device=device)
        ema_cache_update(*cache, k_new, v_new, small["sink"], ALPHA)
        ema_cache_update_ref(*ref, k_new, v_new, small["sink"], ALPHA)
    for got, want in zip(cache, ref):
        if not torch.equal(got, want):
            raise AssertionError("ema_cache_update differs from the reference; not timing it")


def run(device: torch.device) -> list[Timing]:
    dtype = torch.bfloat16
    shapes = CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    rows = []
    for cfg in shapes:
        check_kernel(cfg, dtype, device)
        layers, k_new, v_new = full_caches(cfg, dtype, device)
        sink = cfg["sink"]
        moved = bytes_moved(cfg, dtype)
        copy_src = torch.empty(moved // 2, dtype=torch.uint8, device=device)
        copy_dst = torch.empty_like(copy_src)

        def kernel():
            for k, v, pos, state in layers:
                ema_cache_update(k, v, pos, state, k_new, v_new, sink, ALPHA)

        def reference():
            for k, v, pos, state in layers:
                ema_cache_update_ref(k, v, pos, state, k_new, v_new, sink, ALPHA)

        def rf_shift():
            for k, v, _, _ in layers:
                rf_shift_update(k, v, k_new, v_new, sink, ALPHA)

        def copy_bw():
            copy_dst.copy_(copy_src)

        shape = (f"L{cfg['layers']} B{cfg['b']} S{sink}+{cfg['window']} P{cfg['p']} "
                 f"H{cfg['h']} D{cfg['d']} Fn{cfg['fn']}")
        variants = {"kernel": kernel, "reference": reference, "rf_shift": rf_shift, "copy_bw": copy_bw}
        rows += bandwidth_rows("ema_cache_update", variants, shape, device, moved)
        del layers, copy_src, copy_dst
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    script_main("ema_cache", run, "rf_shift", __doc__.split("\n")[0])
