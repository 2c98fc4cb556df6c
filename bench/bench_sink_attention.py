"""Benchmark of sink_attention: one layer's attention of a chunk against its KV cache.

CUDA (bf16): the streaming shape of Wan2.1-1.3B, B=1, a chunk of Fq=3 latent frames of
P=1560 tokens (grid 30x52) = 4680 queries, a cache of S=6 frames (14040 keys with the chunk),
H=12, D=128; the same at batch 4; and a 21-frame context (S=18, 32760 keys).
CPU: a small shape (B=1, P=12x20, Fq=3, S=6, H=4, D=64) in float32 and bf16.
Variants:
  kernel            the public op (compiled kernel when available; RoPE inside the kernel);
  reference         the eager PyTorch reference (the op's definition);
  rf_style          Reward Forcing's path: float64 RoPE of every cached key at every call,
                    torch.cat of sink / window / chunk, then SDPA (the baseline);
  sdpa_prerotated   F.scaled_dot_product_attention alone, on K/V already rotated and laid out
                    contiguously: what attention costs once RoPE and gathering are free.
``TFLOP/s`` counts 4 * Lq * Lk * D * H * B for every variant (Lk includes the chunk).

    python bench/bench_sink_attention.py [--device cpu|cuda]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from common import Timing, script_main, time_fn  # noqa: E402

from stream_r1_fast.ops.sink_attention import sink_attention  # noqa: E402
from stream_r1_fast.ops.sink_attention_ref import (  # noqa: E402
    rotated_keys_values,
    rotated_queries,
    sink_attention_ref,
    sink_attention_rf_style,
)
from tests.tolerances import assert_fa_close  # noqa: E402

SINK = 3  # frames of the sink in the rf_style layout; the rest of the cache is the window
CUDA_SHAPES = [  # batch, chunk frames, grid, cache slots, heads, head dim
    dict(b=1, fq=3, gh=30, gw=52, s=6, h=12, d=128, dtype=torch.bfloat16),
    dict(b=4, fq=3, gh=30, gw=52, s=6, h=12, d=128, dtype=torch.bfloat16),
    dict(b=1, fq=3, gh=30, gw=52, s=18, h=12, d=128, dtype=torch.bfloat16),
]
CPU_SHAPES = [
    dict(b=1, fq=3, gh=12, gw=20, s=6, h=4, d=64, dtype=torch.float32),
    dict(b=1, fq=3, gh=12, gw=20, s=6, h=4, d=64, dtype=torch.bfloat16),
]


def make_inputs(cfg: dict, device: torch.device, heads: int | None = None):
    """A full cache in time order (slot i at position i) and a chunk right after it."""
    h = heads or cfg["h"]
    p = cfg["gh"] * cfg["gw"]
    chunk = (cfg["b"], cfg["fq"] * p, h, cfg["d"])
    cache = (cfg["b"], cfg["s"], p, h, cfg["d"])
    q, k, v = (torch.randn(chunk, dtype=cfg["dtype"], device=device) for _ in range(3))
    k_cache, v_cache = (torch.randn(cache, dtype=cfg["dtype"], device=device) for _ in range(2))
    cache_pos = torch.arange(cfg["s"], dtype=torch.int32, device=device)
    q_pos = torch.tensor([cfg["s"]], dtype=torch.int32, device=device)
    return q, k, v, k_cache, v_cache, cache_pos, q_pos


def check_kernel(cfg: dict, device: torch.device) -> None:
    """Fresh random data at the benchmark's geometry (two heads): the public op is within the
    tests' error bound of the float64 reference; otherwise nothing is timed."""
    inputs = make_inputs(cfg, device, heads=2)
    scale = cfg["d"] ** -0.5
    out = sink_attention(*inputs, cfg["gh"], cfg["gw"])
    same, _ = sink_attention_ref(*inputs, cfg["gh"], cfg["gw"], scale)
    truth, _ = sink_attention_ref(*[t.double() if t.is_floating_point() else t for t in inputs],
                                  cfg["gh"], cfg["gw"], scale)
    assert_fa_close(out, same, truth, cfg["dtype"], "sink_attention (benchmark check)")


def run(device: torch.device) -> list[Timing]:
    shapes = CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    rows = []
    for cfg in shapes:
        check_kernel(cfg, device)
        q, k, v, k_cache, v_cache, cache_pos, q_pos = make_inputs(cfg, device)
        b, s, p, h, d, gh, gw = cfg["b"], cfg["s"], cfg["gh"] * cfg["gw"], cfg["h"], cfg["d"], cfg["gh"], cfg["gw"]
        lq, lk = q.shape[1], s * p + q.shape[1]
        scale = d**-0.5
        # rf_style keeps sink and window as separate time-ordered tensors.
        flat_k, flat_v = k_cache.reshape(b, s * p, h, d), v_cache.reshape(b, s * p, h, d)
        sink_k, win_k = flat_k[:, : SINK * p].contiguous(), flat_k[:, SINK * p :].contiguous()
        sink_v, win_v = flat_v[:, : SINK * p].contiguous(), flat_v[:, SINK * p :].contiguous()
        # sdpa_prerotated: everything rotated and gathered beforehand, [B, H, L, D].
        keys, values, _ = rotated_keys_values(k, v, k_cache, v_cache, cache_pos, q_pos, gh, gw, 10000.0)
        qr_t = rotated_queries(q, q_pos, gh, gw, 10000.0).transpose(1, 2).contiguous()
        keys_t, values_t = keys.transpose(1, 2).contiguous(), values.transpose(1, 2).contiguous()
        del keys, values

        variants = {
            "kernel": lambda: sink_attention(q, k, v, k_cache, v_cache, cache_pos, q_pos, gh, gw),
            "reference": lambda: sink_attention_ref(q, k, v, k_cache, v_cache, cache_pos, q_pos, gh, gw, scale),
            "rf_style": lambda: sink_attention_rf_style(q, k, v, sink_k, sink_v, win_k, win_v, s, gh, gw),
            "sdpa_prerotated": lambda: F.scaled_dot_product_attention(qr_t, keys_t, values_t),
        }
        shape = f"B{b} Fq{cfg['fq']} P{gh}x{gw} S{s} H{h} D{d} {str(cfg['dtype']).split('.')[-1]}"
        flops = 4 * lq * lk * d * h * b
        for name, fn in variants.items():
            try:
                med, p20, p80 = time_fn(fn, device)
            except torch.OutOfMemoryError:
                print(f"{shape} {name}: out of memory, skipped")
                torch.cuda.empty_cache()
                continue
            rows.append(Timing("sink_attention", name, shape, str(device), med, p20, p80,
                               extra={"TFLOP/s": float(f"{flops / (med * 1e-3) / 1e12:.3g}"), "Lq": lq, "Lk": lk}))
        del q, k, v, k_cache, v_cache, sink_k, sink_v, win_k, win_v, qr_t, keys_t, values_t, variants
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    script_main("sink_attention", run, "rf_style", __doc__.split("\n")[0])
