"""Benchmark of the NVRTC kernels (stream_r1_fast.nvrtc) against the compiled ones, CUDA only.

Per op: the first call with a cold disk cache (NVRTC compiles every instantiation of the op,
then loads and launches) and with a warm one (load and launch), in milliseconds of wall time
after CuPy is imported; then the steady-state time of both paths at the streaming shapes of
bench_ema_cache.py (one layer), bench_saliency.py (vae mode) and bench_sink_attention.py (the
first: one layer's attention of a 3-frame chunk against 6 cached frames, bf16). Variants:
  compiled  torch.ops on the extension's nvcc-built kernels (absent from a CPU-only build);
  nvrtc     the same kernel sources through NVRTC, launched from Python.
Without a GPU and CuPy it says so and exits 0.

    python bench/bench_nvrtc.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ema_cache import ALPHA, CUDA_SHAPES, full_caches  # noqa: E402
from bench_saliency import SHAPES  # noqa: E402
from bench_sink_attention import CUDA_SHAPES as ATTN_SHAPES  # noqa: E402
from bench_sink_attention import make_inputs as attention_inputs  # noqa: E402
from common import Timing, default_device, print_table, time_fn, write_json  # noqa: E402

import stream_r1_fast  # noqa: E402
from stream_r1_fast import _backend, nvrtc  # noqa: E402

ARGS = ("vae", 4, 8, 0.2, 0.15, 1.0, 1.0)  # saliency_weights' defaults after (saliency, axis_weights)


def _first_call_ms(module, call) -> float:
    module.reset()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    call()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def _cases(device: torch.device):
    """(op, shape label, NVRTC module, nvrtc call, compiled call or None)."""
    from stream_r1_fast.nvrtc import _launch

    info = stream_r1_fast.backend_info()

    def compiled(op, fn):
        ok = info.name == "extension" and op not in info.nvrtc_ops and _backend._has_kernel(op, "CUDA")
        return fn if ok else None

    cfg = dict(CUDA_SHAPES[0], layers=1)
    layers, k_new, v_new = full_caches(cfg, torch.bfloat16, device)
    ema_args = (*layers[0], k_new, v_new, cfg["sink"], ALPHA)
    yield ("ema_cache_update",
           f"B{cfg['b']} S{cfg['sink']}+{cfg['window']} P{cfg['p']} H{cfg['h']} D{cfg['d']} Fn{cfg['fn']} bf16",
           _launch.module("ema_cache_update"), lambda: _launch.launcher("ema_cache_update")(*ema_args),
           compiled("ema_cache_update", lambda: torch.ops.stream_r1_fast.ema_cache_update(*ema_args)))

    a, b, t, c, h, w = SHAPES["cuda"]
    grads = torch.randn(a, b, t, c, h, w, device=device, dtype=torch.bfloat16)
    aw = torch.full((a,), 1.0 / a, device=device)
    yield ("saliency_weights", f"{a}x{b}x{t}x{c}x{h}x{w} bf16 vae", _launch.module("saliency_weights"),
           lambda: _launch.launcher("saliency_weights")(grads, aw, *ARGS),
           compiled("saliency_weights", lambda: torch.ops.stream_r1_fast.saliency_weights(grads, aw, *ARGS)))

    cfg = ATTN_SHAPES[0]
    attn_args = (*attention_inputs(cfg, device), cfg["gh"], cfg["gw"], cfg["d"] ** -0.5, 10000.0)
    yield ("sink_attention",
           f"B{cfg['b']} Fq{cfg['fq']} {cfg['gh']}x{cfg['gw']} S{cfg['s']} H{cfg['h']} D{cfg['d']} bf16",
           _launch.module("sink_attention"), lambda: _launch.launcher("sink_attention")(*attn_args),
           compiled("sink_attention", lambda: torch.ops.stream_r1_fast.sink_attention(*attn_args)))


def run(device: torch.device) -> list[Timing]:
    device = torch.device(device)
    if device.type != "cuda" or nvrtc.unavailable_reason() is not None:
        why = "not a CUDA device" if device.type != "cuda" else nvrtc.unavailable_reason()
        print(f"bench_nvrtc: needs a CUDA GPU and CuPy ({why}); nothing timed")
        return []
    import cupy

    cupy.cuda.runtime.getDeviceCount()  # CuPy's import and CUDA init are not NVRTC's cost
    from stream_r1_fast.nvrtc._compile import CACHE_ENV

    rows = []
    saved = os.environ.get(CACHE_ENV)
    try:
        for op, shape, module, nvrtc_call, compiled_call in _cases(device):
            with tempfile.TemporaryDirectory() as cache:
                os.environ[CACHE_ENV] = cache
                cold = _first_call_ms(module, nvrtc_call)
                warm = _first_call_ms(module, nvrtc_call)
            first = {"first_call_cold_ms": round(cold, 1), "first_call_warm_ms": round(warm, 1),
                     "target": module.last_build.get("target")}
            variants = [("compiled", compiled_call, {})] if compiled_call else []
            for variant, call, extra in variants + [("nvrtc", nvrtc_call, first)]:
                med, p20, p80 = time_fn(call, device)
                rows.append(Timing(op, variant, shape, device.type, med, p20, p80, extra))
    finally:
        if saved is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = saved
    return rows


def main() -> None:
    device = default_device()
    rows = run(device)
    if rows:
        print_table(rows, baseline="compiled")
        print(f"-> {write_json('nvrtc', rows, device)}")


if __name__ == "__main__":
    main()
