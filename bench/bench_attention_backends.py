"""Attention backends side by side at the streaming shapes: which one the hot path should use.

A chunk of the 1.3B model attends from Lq = 3 frames x 1560 tokens = 4680 queries to its
cache prefix plus itself. While the cache fills only three key lengths occur at the default
sizes (sink 3 + window 3 frames, chunks of 3): Lk = 4680 (first chunk, empty cache), 9360
(one chunk cached), 14040 (full cache, every later chunk). H = 12, D = 128, bf16, batch 1.

Variants (each where it can run; what is missing is printed, never faked):
  sdpa_default     torch.nn.functional.scaled_dot_product_attention, PyTorch's own choice
  sdpa_cudnn       the same pinned to cuDNN attention  (torch.nn.attention.SDPBackend)
  sdpa_flash       ... pinned to PyTorch's FlashAttention-2 kernels
  sdpa_efficient   ... pinned to the memory-efficient kernels
  flash_attn_3     FlashAttention-3 (``flash_attn_interface``), when installed
  flash_attn_2     the ``flash_attn`` package, when installed
  ours_fa2         our FlashAttention-2-class kernel (stream_r1_fast::dense_attention), where
                   its CUDA kernel is compiled or built by NVRTC
                   (these seven: stream_r1_fast.ops.dense_attention, as the rotated cache calls
                   them, in its [B, L, H, D] layout; the library's own measured choice per
                   shape is printed too)
  flashinfer       FlashInfer's single-request prefill, when installed
  sink_attention   our op on the rotating cache layout (RoPE of every key inside the call;
                   the occupied slots are the key prefix): what the fused cache pays today
All dense variants take keys already rotated and laid out contiguously ([occupied | chunk]),
the layout of the rotated cache. TFLOP/s counts 4 * Lq * Lk * D * H * B (no causal mask:
the chunk sees all of its keys). CPU: the same three fill stages at a small size
(Lq = 3 x 60 tokens, H 4, D 64, float32), SDPA and our op only.

    python bench/bench_attention_backends.py [--device cpu|cuda]
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from common import Timing, script_main, time_fn  # noqa: E402

from stream_r1_fast.ops.dense_attention import attention, attention_choices, available_backends, choose_backend  # noqa: E402
from stream_r1_fast.ops.sink_attention import sink_attention  # noqa: E402

CUDA_GEOMETRY = dict(fq=3, gh=30, gw=52, h=12, d=128, dtype=torch.bfloat16)
CPU_GEOMETRY = dict(fq=3, gh=6, gw=10, h=4, d=64, dtype=torch.float32)
CACHE_SLOTS = 6  # sink 3 + window 3 latent frames
FILL_STAGES = (0, 3, 6)  # occupied slots before the chunk: Lk = (stage + 3) * tokens per frame


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except Exception:  # noqa: BLE001 - any import failure means "not available here"
        return None


# Bench names of the library's backends (stream_r1_fast.ops.dense_attention, which the rotated
# cache dispatches to: q / k / v in the cache's [B, L, H, D] layout).
LIBRARY_NAMES = {"sdpa": "sdpa_default", "cudnn": "sdpa_cudnn", "flash": "sdpa_flash",
                 "efficient": "sdpa_efficient", "fa3": "flash_attn_3", "fa2": "flash_attn_2",
                 "ours": "ours_fa2"}


def dense_variants(device: torch.device) -> tuple[dict, list[str]]:
    """name -> (layout, fn): layout "bhld" ([B, H, L, D]) or "blhd" ([B, L, H, D]); and the
    names of the backends that are not available here, with why."""
    geo = CUDA_GEOMETRY if device.type == "cuda" else CPU_GEOMETRY
    names, skipped = available_backends(device, geo["dtype"], geo["d"], unvalidated=True)  # a benchmark validates
    out = {LIBRARY_NAMES[n]: ("blhd", lambda q, k, v, n=n: attention(q, k, v, n)) for n in names}
    missing = [f"{LIBRARY_NAMES[n]} ({why})" for n, why in skipped.items() if why != "CUDA only"]
    if device.type != "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def math(q, k, v):
            with sdpa_kernel(SDPBackend.MATH):
                return F.scaled_dot_product_attention(q, k, v)

        out["sdpa_math"] = ("bhld", math)
        return out, missing
    fi = _optional("flashinfer")
    if fi is not None:
        # One request: [L, H, D] without the batch dimension.
        out["flashinfer"] = ("blhd", lambda q, k, v: fi.single_prefill_with_kv_cache(q[0], k[0], v[0]))
    else:
        missing.append("flashinfer (not installed)")
    return out, missing


def _check(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """A backend that runs must also be right: compared with the float32 math result."""
    tol = 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    err = (got.float() - want).abs().max().item()
    if not err <= tol * max(1.0, want.abs().max().item()):
        raise AssertionError(f"{name}: max error {err:.3g} against float32 math attention")


def run(device: torch.device) -> list[Timing]:
    geo = CUDA_GEOMETRY if device.type == "cuda" else CPU_GEOMETRY
    variants, missing = dense_variants(device)
    for line in missing:
        print(f"not available: {line}")
    p, h, d, dtype = geo["gh"] * geo["gw"], geo["h"], geo["d"], geo["dtype"]
    lq = geo["fq"] * p
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    for stage in FILL_STAGES:
        lk = lq + stage * p
        q = torch.randn((1, lq, h, d), generator=g, device=device, dtype=dtype)
        k = torch.randn((1, lk, h, d), generator=g, device=device, dtype=dtype)
        v = torch.randn((1, lk, h, d), generator=g, device=device, dtype=dtype)
        layouts = {"blhd": (q, k, v), "bhld": tuple(t.transpose(1, 2).contiguous() for t in (q, k, v))}
        reference = F.scaled_dot_product_attention(*(t.float() for t in layouts["bhld"])).transpose(1, 2)
        shape = f"Lq{lq} Lk{lk} H{h} D{d} {str(dtype).split('.')[-1]}"
        flops = 4 * lq * lk * d * h
        timed = {}
        for name, (layout, fn) in variants.items():
            args = layouts[layout]
            try:
                out = fn(*args)
                _check(name, out if layout == "blhd" else out.transpose(1, 2), reference, dtype)
            except Exception as exc:  # noqa: BLE001 - a backend refusing this shape is a result
                print(f"{shape} {name}: not run ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                continue
            timed[name] = lambda fn=fn, args=args: fn(*args)
        # Our op on the rotating layout: the chunk (pre-RoPE) and a cache whose first `stage`
        # slots are occupied (positions 0..stage-1), the rest empty (position -1).
        k_cache = torch.randn((1, CACHE_SLOTS, p, h, d), generator=g, device=device, dtype=dtype)
        v_cache = torch.randn_like(k_cache)
        cache_pos = torch.tensor([i if i < stage else -1 for i in range(CACHE_SLOTS)], dtype=torch.int32,
                                 device=device)
        q_pos = torch.tensor([stage], dtype=torch.int32, device=device)
        kc, vc = k[:, stage * p:], v[:, stage * p:]
        timed["sink_attention"] = lambda kc=kc, vc=vc, k_cache=k_cache, v_cache=v_cache, cache_pos=cache_pos, \
            q_pos=q_pos, q=q: sink_attention(q, kc, vc, k_cache, v_cache, cache_pos, q_pos, geo["gh"], geo["gw"])
        for name, fn in timed.items():
            try:
                med, p20, p80 = time_fn(fn, device)
            except torch.OutOfMemoryError:
                print(f"{shape} {name}: out of memory, skipped")
                continue
            rows.append(Timing("attention", name, shape, str(device), med, p20, p80,
                               extra={"TFLOP/s": float(f"{flops / (med * 1e-3) / 1e12:.3g}"), "Lq": lq, "Lk": lk}))
        # What the rotated cache would dispatch this shape to (measured by the library itself).
        chosen = choose_backend(1, lq, lk, h, d, dtype, device)
        choice = next(c for key, c in attention_choices().items() if f"Lq{lq} Lk{lk} H{h} D{d}" in key)
        print(f"{shape}: the library's choice is {LIBRARY_NAMES[chosen]} ({choice.reason}"
              + (", " + ", ".join(f"{LIBRARY_NAMES[n]} {t:.3f} ms" for n, t in choice.times_ms.items())
                 if choice.times_ms else "") + ")")
        del q, k, v, layouts, reference, k_cache, v_cache, timed
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    script_main("attention_backends", run, "sdpa_default", __doc__.split("\n")[0])
