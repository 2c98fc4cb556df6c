"""The child-process half of test_ops_fuzz.py: ``python ops_fuzz_worker.py CASES OUT`` builds
each pickled case's arguments, calls the op and pickles one verdict per case to OUT (None =
fine, else a description of what was wrong). A crash of the process is the parent's finding.

A case is ``dict(op=..., call="wrapper" | "direct", args=[...])``; tensor arguments are
``dict(tensor=...)`` specs (see :func:`build`), everything else is passed as it is.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import sys

ARG_NAMES = {
    "ema_cache_update": ("k_cache", "v_cache", "cache_pos", "state", "k_new", "v_new", "sink_size", "alpha"),
    "sink_attention": ("q", "k", "v", "k_cache", "v_cache", "cache_pos", "q_pos", "grid_h", "grid_w",
                       "scale", "rope_theta"),
    "dense_attention": ("q", "k", "v", "scale"),
    "saliency_weights": ("saliency", "axis_weights", "mode", "temporal_factor", "spatial_factor",
                         "tau_floor", "sigma_floor", "gamma_t", "gamma_s"),
    "rotated_cache_advance": ("keys", "values", "k_new", "v_new", "cos", "sin", "occupied", "sink_size", "window",
                              "alpha"),
    "qk_norm_rope": ("q", "k", "weight_q", "weight_k", "cos", "sin", "frame_offset", "eps"),
}
ALLOWED = (RuntimeError, ValueError, TypeError)


def build(spec: dict, gen):
    """A tensor from its spec: shape, dtype, device ("cpu" | "meta"), fill ("randn" | "rand" |
    "nan" | "inf" | "zeros" | a list of values), strided (a non-contiguous view)."""
    import torch

    shape, dtype = tuple(spec["shape"]), getattr(torch, spec["dtype"])
    fill = spec.get("fill", "randn")
    if spec.get("device") == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    numel = math.prod(shape)
    if isinstance(fill, list):
        base = torch.tensor(fill, dtype=torch.float64)
        t = base.repeat(numel // max(1, base.numel()) + 1)[:numel].reshape(shape)
    elif fill == "zeros" or numel == 0:
        t = torch.zeros(shape, dtype=torch.float64)
    elif fill == "rand":
        t = torch.rand(shape, generator=gen, dtype=torch.float64)
    else:
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if fill in ("nan", "inf"):
            flat = t.view(-1)
            flat[torch.randint(0, numel, (max(1, numel // 7),), generator=gen)] = (
                float("nan") if fill == "nan" else float("inf"))
    t = t.to(dtype)
    if spec.get("strided") and t.dim() > 0:
        wide = torch.zeros(*shape[:-1], 2 * shape[-1], dtype=dtype)
        wide[..., ::2] = t
        t = wide[..., ::2]
    return t


def _arg(value, gen):
    return build(value, gen) if isinstance(value, dict) and "shape" in value else value


def _names_argument(op: str, message: str) -> bool:
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", message) for n in ARG_NAMES[op])


def _close(got, want, what: str, rtol: float, atol: float) -> str | None:
    import torch

    if got.shape != want.shape:
        return f"{what}: shape {tuple(got.shape)} != reference {tuple(want.shape)}"
    if got.device.type == "meta":
        return None
    try:
        torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError as exc:
        return f"{what} differs from the reference: {str(exc)[:400]}"
    return None


def _tolerance(dtype) -> tuple[float, float]:
    import torch

    return {torch.float16: (2e-2, 2e-2), torch.bfloat16: (6e-2, 6e-2)}.get(dtype, (1e-4, 1e-4))


def run_case(case: dict) -> str | None:
    """None when the call behaved (a result equal to the reference, or an allowed exception
    whose message names an argument), else what went wrong."""
    op, call = case["op"], case["call"]
    if op == "_abort":  # the parent's self-tests: a case that kills the process, one that is fine
        os.abort()
    if op == "_fine":
        return None
    import torch

    from stream_r1_fast.ops import (ema_cache_update, fused_dense_attention, qk_norm_rope, rotated_cache_advance,
                                    saliency_weights, sink_attention)
    from stream_r1_fast.ops.dense_attention_ref import dense_attention_ref
    from stream_r1_fast.ops.ema_cache_ref import ema_cache_update_ref
    from stream_r1_fast.ops.qk_norm_rope_ref import qk_norm_rope_ref
    from stream_r1_fast.ops.rotated_cache_ref import rotated_cache_advance_ref
    from stream_r1_fast.ops.saliency_ref import saliency_weights_ref
    from stream_r1_fast.ops.sink_attention_ref import sink_attention_ref

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(case.get("seed", 0))
    try:
        args = [_arg(a, gen) for a in case["args"]]
    except Exception:  # noqa: BLE001 - torch cannot build these tensors: nothing to call
        return None
    kwargs = dict(case.get("kwargs", {}))
    if op == "saliency_weights" and call == "wrapper" and len(args) > 2:
        # The wrapper takes the scalars by keyword.
        kwargs.update(zip(ARG_NAMES[op][2:], args[2:]))
        args = args[:2]
    before = [a.clone() if isinstance(a, torch.Tensor) and a.device.type != "meta" else a for a in args]
    fn = getattr(torch.ops.stream_r1_fast, op) if call == "direct" else {
        "ema_cache_update": ema_cache_update, "sink_attention": sink_attention,
        "saliency_weights": saliency_weights, "rotated_cache_advance": rotated_cache_advance,
        "dense_attention": fused_dense_attention, "qk_norm_rope": qk_norm_rope}[op]
    try:
        result = fn(*args, **kwargs)
    except ALLOWED as exc:
        message = str(exc)
        if not _names_argument(op, message):
            return f"{type(exc).__name__} names no argument: {message[:300]!r}"
        return None
    except Exception as exc:  # noqa: BLE001 - any other exception type is a finding
        return f"unexpected {type(exc).__name__}: {str(exc)[:300]!r}"

    # It succeeded: the inputs were valid, so the reference must give the same result.
    if any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args):
        if not all(a.device.type == "meta" for a in args if isinstance(a, torch.Tensor)):
            return "a call mixing meta and CPU tensors succeeded"
        return None  # all-meta: shape propagation only
    try:
        if op == "ema_cache_update":
            ema_cache_update_ref(*before[:6], before[6], float(before[7]))
            rtol, atol = _tolerance(before[0].dtype)
            for i, name in enumerate(("k_cache", "v_cache", "cache_pos", "state")):
                problem = _close(args[i], before[i], name, rtol, atol)
                if problem:
                    return problem
            return None
        if op == "rotated_cache_advance":
            rotated_cache_advance_ref(*before[:9], float(before[9]))
            rtol, atol = _tolerance(before[0].dtype)
            for i, name in enumerate(("keys", "values")):
                problem = _close(args[i], before[i], name, rtol, atol)
                if problem:
                    return problem
            return None
        if op == "qk_norm_rope":
            want = qk_norm_rope_ref(*before[:7], float(before[7]))
            rtol, atol = _tolerance(before[0].dtype)
            for got, w, name in zip(result, want, ("q_out", "k_out")):
                problem = _close(got, w, name, rtol, atol)
                if problem:
                    return problem
            return None
        if op == "sink_attention":
            scale = before[9] if len(before) > 9 and before[9] is not None else before[0].shape[-1] ** -0.5
            theta = before[10] if len(before) > 10 else kwargs.get("rope_theta", 10000.0)
            want, want_lse = sink_attention_ref(*(t.double() if t.is_floating_point() else t for t in before[:7]),
                                                before[7], before[8], float(scale), float(theta))
            out = result[0] if call == "direct" else result
            rtol, atol = _tolerance(before[0].dtype)
            problem = _close(out, want, "out", rtol, atol)
            if problem is None and call == "direct":
                problem = _close(result[1], want_lse, "lse", rtol, atol)
            return problem
        if op == "dense_attention":
            scale = before[3] if len(before) > 3 and before[3] is not None else before[0].shape[-1] ** -0.5
            # The kernels accumulate in float32 (float64 for float64): so does this reference,
            # on the inputs as they are (overflow included).
            want, want_lse = dense_attention_ref(*before[:3], float(scale))
            rtol, atol = _tolerance(before[0].dtype)
            problem = _close(result[0], want, "out", rtol, atol)
            return problem or _close(result[1], want_lse, "lse", rtol, atol)
        saliency, aw = before[0], (before[1] if len(before) > 1 else None)
        rest = list(before[2:]) if call == "direct" else [kwargs.get(k, d) for k, d in (
            ("mode", "vae"), ("temporal_factor", 4), ("spatial_factor", 8), ("tau_floor", 0.2),
            ("sigma_floor", 0.15), ("gamma_t", 1.0), ("gamma_s", 1.0))]
        if saliency.dim() == 4:
            aw = torch.empty(0)
        elif aw is None:
            aw = torch.full((saliency.shape[0],), 1.0 / saliency.shape[0])
        want = saliency_weights_ref(saliency.float() if saliency.dtype != torch.float64 else saliency,
                                    aw.to(torch.float64 if saliency.dtype == torch.float64 else torch.float32),
                                    *rest)
        for name, got, w in zip(("weights", "tau", "sigma"), result, want):
            problem = _close(got, w, name, 1e-4, 1e-4)
            if problem:
                return problem
        return None
    except Exception as exc:  # noqa: BLE001
        return f"the op accepted inputs the reference fails on: {type(exc).__name__}: {str(exc)[:300]}"


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        cases = pickle.load(f)
    verdicts = [run_case(c) for c in cases]
    with open(sys.argv[2], "wb") as f:
        pickle.dump(verdicts, f)


if __name__ == "__main__":
    main()
