"""One small call of every fused op on the GPU, checked against its PyTorch reference on fresh
random data. Small on purpose: scripts/gpu_check.sh also runs it under compute-sanitizer
(memcheck, racecheck), where every kernel launch is slow.

    python scripts/gpu_ops_smoke.py [--seed N]

Exit status 0 when every op matches its reference, 1 otherwise (each op prints one line).
"""

from __future__ import annotations

import argparse
import sys

import torch

import stream_r1_fast
from stream_r1_fast.ops import (ema_cache_update, fused_dense_attention, new_sink_cache, qk_norm_rope,
                                  rotated_cache_advance, saliency_weights, sink_attention)
from stream_r1_fast.ops.dense_attention_ref import dense_attention_ref
from stream_r1_fast.ops.ema_cache_ref import ema_cache_update_ref
from stream_r1_fast.ops.qk_norm_rope_ref import qk_norm_rope_ref
from stream_r1_fast.ops.rope import rope_tables
from stream_r1_fast.ops.rotated_cache_ref import rotated_cache_advance_ref
from stream_r1_fast.ops.saliency_ref import saliency_weights_ref
from stream_r1_fast.ops.sink_attention_ref import sink_attention_ref


def check_sink_attention(g: torch.Generator, dev: str) -> float:
    b, heads, d, gh, gw, fq, slots = 1, 2, 128, 3, 5, 2, 3
    p = gh * gw
    r = lambda *s: torch.randn(*s, generator=g, device=dev).to(torch.bfloat16)  # noqa: E731
    q, k, v = (r(b, fq * p, heads, d) for _ in range(3))
    kc, vc = r(b, slots, p, heads, d), r(b, slots, p, heads, d)
    cache_pos = torch.tensor([0, 1, -1], dtype=torch.int32, device=dev)
    q_pos = torch.tensor([2], dtype=torch.int32, device=dev)
    out = sink_attention(q, k, v, kc, vc, cache_pos, q_pos, gh, gw)
    ref, _ = sink_attention_ref(*(t.double() for t in (q, k, v, kc, vc)), cache_pos, q_pos, gh, gw, d ** -0.5)
    return (out.double() - ref).abs().max().item()


def check_ema_cache(g: torch.Generator, dev: str) -> float:
    sink, window, p, heads, d, chunk = 2, 3, 7, 2, 64, 3  # E != S: the group-mean fold
    ours = new_sink_cache(2, sink, window, p, heads, d, dtype=torch.float32, device=dev)
    ref = tuple(t.clone() for t in ours)
    for _ in range(6):
        k_new = torch.randn(2, chunk * p, heads, d, generator=g, device=dev)
        v_new = torch.randn(2, chunk * p, heads, d, generator=g, device=dev)
        ema_cache_update(*ours, k_new, v_new, sink, 0.9)
        ema_cache_update_ref(*ref, k_new, v_new, sink, 0.9)
    if not all(torch.equal(a, b) for a, b in zip(ours[2:], ref[2:])):
        return float("inf")  # positions / state disagree
    return max((a - b).abs().max().item() for a, b in zip(ours[:2], ref[:2]))


def check_saliency(g: torch.Generator, dev: str) -> float:
    grads = torch.randn(3, 2, 9, 3, 17, 23, generator=g, device=dev)
    axis_w = torch.softmax(torch.randn(2, 3, generator=g, device=dev), -1)
    kw = dict(temporal_factor=4, spatial_factor=8, tau_floor=0.2, sigma_floor=0.15, gamma_t=0.7, gamma_s=0.4)
    got = saliency_weights(grads, axis_w, mode="vae", **kw)
    want = saliency_weights_ref(grads, axis_w, "vae", *kw.values())
    return max((a - b).abs().max().item() for a, b in zip(got, want))


def check_rotated_cache(g: torch.Generator, dev: str) -> float:
    sink, window, grid, heads, d, chunk = 2, 5, (3, 5), 2, 128, 3  # E 2 then 3 != S: the group-mean fold
    n, p = sink + window + chunk, grid[0] * grid[1]
    ours = [torch.randn(2, n, p, heads, d, generator=g, device=dev).to(torch.bfloat16) for _ in "kv"]
    ref = [t.clone() for t in ours]
    cos, sin = rope_tables(n, *grid, d, 10000.0, torch.bfloat16, dev)
    m = 0
    for _ in range(5):  # fill, the first overflow, then the steady state
        k_new, v_new = (torch.randn(2, chunk * p, heads, d, generator=g, device=dev).to(torch.bfloat16) for _ in "kv")
        rotated_cache_advance(*ours, k_new, v_new, cos, sin, m, sink, window, 0.9)
        rotated_cache_advance_ref(*ref, k_new, v_new, cos, sin, m, sink, window, 0.9)
        m = min(m + chunk, sink + window)
    return max((a.float() - b.float()).abs().max().item() for a, b in zip(ours, ref))


def check_dense_attention(g: torch.Generator, dev: str) -> float:
    # 130 queries (two CTAs of 128, the second a tail), 150 keys of a strided batch (the
    # cache's prefix layout), a tail of the 64-key tile; bf16, D 128 (on the CPU: its kernel).
    b, lq, lk, heads, d = 2, 130, 150, 2, 128
    q = torch.randn(b, lq, heads, d, generator=g, device=dev).to(torch.bfloat16)
    kv = torch.randn(2, b, lk + 40, heads, d, generator=g, device=dev).to(torch.bfloat16)
    k, v = kv[0, :, :lk], kv[1, :, :lk]
    out, lse = fused_dense_attention(q, k, v)
    ref, ref_lse = dense_attention_ref(q.double(), k.double(), v.double())
    return max((out.double() - ref).abs().max().item(), (lse.double() - ref_lse.double()).abs().max().item())


def check_qk_norm_rope(g: torch.Generator, dev: str) -> float:
    # bf16, 3 heads of 128 (rows of 384: one thread per 8-element column, 2 warps), an odd grid,
    # the chunk at frames 2..4 of a 6-frame table; a 3-head row of D 10 in float32 (the 8-byte access).
    err = 0.0
    for dtype, heads, d, grid in ((torch.bfloat16, 3, 128, (3, 5)), (torch.float32, 3, 10, (1, 7))):
        p = grid[0] * grid[1]
        q, k = (torch.randn(2, 3, p, heads, d, generator=g, device=dev).to(dtype) for _ in "qk")
        wq, wk = ((1 + 0.3 * torch.randn(heads * d, generator=g, device=dev)).to(dtype) for _ in "qk")
        cos, sin = rope_tables(6, *grid, d, 10000.0, dtype, dev)
        got = qk_norm_rope(q, k, wq, wk, cos, sin, 2, 1e-6)
        want = qk_norm_rope_ref(q, k, wq, wk, cos, sin, 2, 1e-6)
        err = max(err, *((a.float() - b.float()).abs().max().item() for a, b in zip(got, want)))
    return err


# rotated_cache_advance: bf16 buffers, a bf16 ulp or two at |x| < 8 at most; qk_norm_rope: one bf16
# rounding apart at most (outputs |x| < 8).
CHECKS = {"sink_attention": (check_sink_attention, 2e-2), "ema_cache_update": (check_ema_cache, 1e-5),
          "saliency_weights": (check_saliency, 1e-4), "rotated_cache_advance": (check_rotated_cache, 7.5e-2),
          "dense_attention": (check_dense_attention, 2e-2), "qk_norm_rope": (check_qk_norm_rope, 7.5e-2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=None, help="default: a fresh seed (printed)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (to check the script itself)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    print(stream_r1_fast.backend_info())
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device {name}, seed {seed}")
    g = torch.Generator(device=args.device).manual_seed(seed)
    ok = True
    for name, (check, tol) in CHECKS.items():
        try:
            err = check(g, args.device)
            if args.device == "cuda":
                torch.cuda.synchronize()
            good = err <= tol
            print(f"{name:>21}: max |op - reference| = {err:.3e} (tolerance {tol:g}) {'OK' if good else 'FAIL'}")
        except Exception as exc:  # report every op, then fail
            good = False
            print(f"{name:>21}: ERROR {type(exc).__name__}: {exc}")
        ok &= good
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
