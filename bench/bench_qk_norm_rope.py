"""Benchmark of qk_norm_rope: one chunk's q/k RMSNorm (across all heads) and 3-D RoPE, every layer.

CUDA: the streaming shape of Wan 1.3B (B=1, chunks of 3 latent frames of P=1560 tokens, H=12,
D=128, bf16, 30 layers; the chunk at frame positions 3..5 of the window table). Variants:
  kernel     the public op (compiled kernel when available), one launch per layer;
  unfused    what a layer ran before the op: nn.RMSNorm-style norms of q and k
             (torch.nn.functional.rms_norm in float32) and the RoPE of both tensors as
             RotatedSinkKVCache rotated them (the baseline);
  reference  the op's PyTorch reference (ops/qk_norm_rope_ref.py);
  copy_bw    one device-to-device copy moving as many bytes as the op must (the ceiling).
``GB/s`` counts the bytes the op must move (q and k read, q_out and k_out written; not the
weights or the tables) for every variant, so the figures compare directly.

    python bench/bench_qk_norm_rope.py [--device cpu|cuda]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timing, bandwidth_rows, script_main  # noqa: E402

from stream_r1_fast.ops.qk_norm_rope import qk_norm_rope  # noqa: E402
from stream_r1_fast.ops.qk_norm_rope_ref import qk_norm_rope_ref  # noqa: E402
from stream_r1_fast.ops.rope import rope_tables  # noqa: E402
from stream_r1_fast.ops.rotated_cache_ref import rotate_rows  # noqa: E402

EPS = 1e-6
CUDA_SHAPES = [dict(layers=30, b=1, frames=3, offset=3, grid=(30, 52), h=12, d=128)]
CPU_SHAPES = [dict(layers=2, b=1, frames=3, offset=3, grid=(8, 8), h=4, d=64)]


def inputs(cfg: dict, dtype: torch.dtype, device: torch.device, gen: torch.Generator | None = None):
    p = cfg["grid"][0] * cfg["grid"][1]
    shape = (cfg["b"], cfg["frames"], p, cfg["h"], cfg["d"])
    q, k = (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in "qk")
    wq, wk = ((1 + 0.1 * torch.randn(cfg["h"] * cfg["d"], generator=gen)).to(device=device, dtype=dtype)
              for _ in "qk")
    cos, sin = rope_tables(cfg["offset"] + cfg["frames"], *cfg["grid"], cfg["d"], 10000.0, dtype, device)
    return q, k, wq, wk, cos, sin


def unfused(q, k, wq, wk, cos, sin, offset):
    """The sequence the model ran before the fused op: a norm per tensor, then a rotation per tensor."""
    b, f, p, h, d = q.shape
    out = []
    for x, w in ((q, wq), (k, wk)):
        y = torch.nn.functional.rms_norm(x.reshape(b, f * p, h * d).float(), (h * d,), w.float(), EPS).to(x.dtype)
        out.append(rotate_rows(y.view(b, f * p, h, d).float(), cos, sin, offset * p).to(x.dtype))
    return out


def check_kernel(cfg: dict, dtype: torch.dtype, device: torch.device) -> None:
    """Fresh random data: the public op equals the reference (within one rounding of the dtype)."""
    small = dict(cfg, grid=(min(cfg["grid"][0], 7), min(cfg["grid"][1], 13)))
    q, k, wq, wk, cos, sin = inputs(small, dtype, device)
    got = qk_norm_rope(q, k, wq, wk, cos, sin, small["offset"], EPS)
    want = qk_norm_rope_ref(q, k, wq, wk, cos, sin, small["offset"], EPS)
    for g, w in zip(got, want):
        if not torch.allclose(g.float(), w.float(), rtol=1.6e-2, atol=1e-5):
            raise AssertionError("qk_norm_rope differs from the reference; not timing it")


def run(device: torch.device) -> list[Timing]:
    dtype = torch.bfloat16
    shapes = CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    rows = []
    for cfg in shapes:
        check_kernel(cfg, dtype, device)
        q, k, wq, wk, cos, sin = inputs(cfg, dtype, device)
        m, layers = cfg["offset"], cfg["layers"]
        moved = 4 * q.numel() * q.element_size() * layers
        copy_src = torch.empty(moved // 2, dtype=torch.uint8, device=device)
        copy_dst = torch.empty_like(copy_src)

        def kernel():
            for _ in range(layers):
                qk_norm_rope(q, k, wq, wk, cos, sin, m, EPS)

        def unfused_run():
            for _ in range(layers):
                unfused(q, k, wq, wk, cos, sin, m)

        def reference():
            for _ in range(layers):
                qk_norm_rope_ref(q, k, wq, wk, cos, sin, m, EPS)

        def copy_bw():
            copy_dst.copy_(copy_src)

        p = cfg["grid"][0] * cfg["grid"][1]
        shape = f"L{layers} B{cfg['b']} F{cfg['frames']} P{p} H{cfg['h']} D{cfg['d']} m{m}"
        variants = {"kernel": kernel, "unfused": unfused_run, "reference": reference, "copy_bw": copy_bw}
        rows += bandwidth_rows("qk_norm_rope", variants, shape, device, moved)
        del copy_src, copy_dst
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    script_main("qk_norm_rope", run, "unfused", __doc__.split("\n")[0])
