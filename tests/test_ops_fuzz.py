"""Hostile inputs for the six ops, each call in a child process (ops_fuzz_worker.py) so that
a crash (SIGFPE, SIGSEGV, abort) is a test failure rather than the end of the test run.

Whatever the arguments (bad dtypes, ranks, shapes, non-contiguous strides, a tensor on
``meta`` among CPU ones, sizes near 2^31 and 2^63, NaN / Inf values, wrong Python types),
through the public wrapper or ``torch.ops`` directly, the process must survive, and the call
must either return what the reference returns or raise RuntimeError / ValueError / TypeError
with a message that names an argument. Cases are batched per child; when a child dies, its
cases are rerun one per child to name the one that crashed.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

WORKER = Path(__file__).resolve().parent / "ops_fuzz_worker.py"
ROOT = WORKER.parent.parent
CHILD_TIMEOUT_S = 300

INT_EDGES = [0, 1, -1, 2, 3, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63)]
BAD_SCALARS = [None, "1", 1.5, True, float("nan"), float("inf"), [1]]


def _run_child(cases: list[dict]) -> tuple[int, list | None, str]:
    with tempfile.TemporaryDirectory() as tmp:
        cases_path, out_path = Path(tmp, "cases.pkl"), Path(tmp, "out.pkl")
        cases_path.write_bytes(pickle.dumps(cases))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
            [str(ROOT), str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, str(WORKER), str(cases_path), str(out_path)],
                              capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT_S)
        verdicts = pickle.loads(out_path.read_bytes()) if proc.returncode == 0 and out_path.exists() else None
        return proc.returncode, verdicts, proc.stderr[-2000:]


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def run_cases(cases: list[dict]) -> None:
    """Runs the cases in one child; on a crash, reruns them one by one to name the culprits.
    Fails listing every crashing case and every misbehaving call."""
    rc, verdicts, stderr = _run_child(cases)
    problems = []
    if verdicts is None:
        for case in cases:
            rc1, v1, err1 = _run_child([case])
            if v1 is None:
                problems.append(f"process {_describe_exit(rc1)} on {case!r}\n{err1[-600:]}")
            elif v1[0] is not None:
                problems.append(f"{v1[0]}\n  case: {case!r}")
        if not problems:
            problems.append(f"the batch's child {_describe_exit(rc)}, no case alone does:\n{stderr}")
    else:
        problems = [f"{v}\n  case: {c!r}" for c, v in zip(cases, verdicts) if v is not None]
    assert not problems, f"{len(problems)} of {len(cases)} cases misbehaved:\n" + "\n".join(problems[:20])


def T(shape, dtype="float32", **kw) -> dict:  # noqa: N802 - a tensor spec
    return dict(shape=list(shape), dtype=dtype, **kw)


# ---- the exact cases of the hostile-input review -------------------------------------------


def _attn_args(grid_h=2, grid_w=3, **over):
    p = 6
    args = [T((1, p, 2, 64)), T((1, p, 2, 64)), T((1, p, 2, 64)), T((1, 2, p, 2, 64)),
            T((1, 2, p, 2, 64)), T((2,), "int32", fill=[0, -1]), T((1,), "int32", fill=[1]),
            grid_h, grid_w, 0.125, 10000.0]
    for i, v in over.items():
        args[int(i[1:])] = v
    return args


def _ema_args(**over):
    args = [T((1, 5, 3, 2, 8)), T((1, 5, 3, 2, 8)), T((5,), "int32", fill=[-1]),
            T((4,), "int32", fill=[0]), T((1, 6, 2, 8)), T((1, 6, 2, 8)), 2, 0.99]
    for i, v in over.items():
        args[int(i[1:])] = v
    return args


def _sal_args(**over):
    args = [T((3, 2, 9, 3, 16, 16)), T((3,), fill="rand"), "vae", 4, 8, 0.2, 0.15, 1.0, 1.0]
    for i, v in over.items():
        args[int(i[1:])] = v
    return args


def _rot_args(**over):
    args = [T((1, 7, 3, 2, 8)), T((1, 7, 3, 2, 8)), T((1, 6, 2, 8)), T((1, 6, 2, 8)), T((21, 4)), T((21, 4)),
            5, 2, 3, 0.9]
    for i, v in over.items():
        args[int(i[1:])] = v
    return args


def _norm_rope_args(**over):
    # q, k [B, F, P, H, D] = [1, 2, 3, 2, 8]; tables of 4 frames of 3 tokens; the chunk at frame 1.
    args = [T((1, 2, 3, 2, 8)), T((1, 2, 3, 2, 8)), T((16,)), T((16,)), T((12, 4)), T((12, 4)), 1, 1e-6]
    for i, v in over.items():
        args[int(i[1:])] = v
    return args


def _dense_args(**over):
    # k / v: 70 keys (a tail of the 64-key tile), q: 5 queries; D 64.
    args = [T((1, 5, 2, 64)), T((1, 70, 2, 64)), T((1, 70, 2, 64)), 0.125]
    for i, v in over.items():
        args[int(i[1:])] = v
    return args


REGRESSIONS = {
    "sink_attention grid 2^32 x 2^32 (product wraps to 0)":
        dict(op="sink_attention", call="direct", args=_attn_args(2**32, 2**32)),
    "sink_attention grid 2^32 x 2^32, wrapper":
        dict(op="sink_attention", call="wrapper", args=_attn_args(2**32, 2**32)),
    "sink_attention grid 2^31 x 1":
        dict(op="sink_attention", call="direct", args=_attn_args(2**31, 1)),
    "sink_attention empty cache, huge grid":
        dict(op="sink_attention", call="direct", args=_attn_args(
            2**31 - 1, 2, a0=T((1, 0, 2, 64)), a1=T((1, 0, 2, 64)), a2=T((1, 0, 2, 64)),
            a3=T((1, 0, 2**32 - 2, 2, 64)), a4=T((1, 0, 2**32 - 2, 2, 64)), a5=T((0,), "int32"))),
    "saliency_weights spatial_factor 2^63-1 (ceil-div overflow)":
        dict(op="saliency_weights", call="wrapper", args=[T((3, 2, 9, 3, 16, 16))],
             kwargs=dict(spatial_factor=2**63 - 1)),
    "saliency_weights spatial_factor 2^63-1, direct":
        dict(op="saliency_weights", call="direct", args=_sal_args(a4=2**63 - 1)),
    "saliency_weights temporal_factor 2^63-1 (2 latent frames, not 1)":
        dict(op="saliency_weights", call="direct", args=_sal_args(a3=2**63 - 1)),
    "saliency_weights temporal_factor 2^63-2, wrapper":
        dict(op="saliency_weights", call="wrapper", args=[T((3, 2, 9, 3, 16, 16))],
             kwargs=dict(temporal_factor=2**63 - 2)),
    "saliency_weights factor 2^63 (beyond int64)":
        dict(op="saliency_weights", call="wrapper", args=[T((3, 2, 9, 3, 16, 16))],
             kwargs=dict(temporal_factor=2**63)),
    "sink_attention one meta tensor":
        dict(op="sink_attention", call="direct", args=_attn_args(a3=T((1, 2, 6, 2, 64), device="meta"))),
    "sink_attention meta q":
        dict(op="sink_attention", call="direct", args=_attn_args(a0=T((1, 6, 2, 64), device="meta"))),
    "ema_cache_update one meta tensor":
        dict(op="ema_cache_update", call="direct", args=_ema_args(a4=T((1, 6, 2, 8), device="meta"))),
    "ema_cache_update meta state":
        dict(op="ema_cache_update", call="direct", args=_ema_args(a3=T((4,), "int32", device="meta"))),
    "saliency_weights meta axis_weights":
        dict(op="saliency_weights", call="direct", args=_sal_args(a1=T((3,), device="meta"))),
    "saliency_weights meta saliency":
        dict(op="saliency_weights", call="direct", args=_sal_args(a0=T((3, 2, 9, 3, 16, 16), device="meta"))),
    "ema_cache_update alpha '0.5'":
        dict(op="ema_cache_update", call="wrapper", args=_ema_args(a7="0.5")),
    "ema_cache_update sink_size None":
        dict(op="ema_cache_update", call="wrapper", args=_ema_args(a6=None)),
    "ema_cache_update alpha '0.5', direct":
        dict(op="ema_cache_update", call="direct", args=_ema_args(a7="0.5")),
    "ema_cache_update huge empty cache":
        dict(op="ema_cache_update", call="direct", args=_ema_args(
            a0=T((0, 5, 2**31, 2**31, 4)), a1=T((0, 5, 2**31, 2**31, 4)),
            a4=T((0, 2**32, 2**31, 4)), a5=T((0, 2**32, 2**31, 4)))),
    "sink_attention empty batch":
        dict(op="sink_attention", call="direct", args=_attn_args(
            a0=T((0, 6, 2, 64)), a1=T((0, 6, 2, 64)), a2=T((0, 6, 2, 64)), a3=T((0, 2, 6, 2, 64)),
            a4=T((0, 2, 6, 2, 64)))),
    "sink_attention no heads, wrapper":
        dict(op="sink_attention", call="wrapper", args=_attn_args(
            a0=T((1, 6, 0, 64)), a1=T((1, 6, 0, 64)), a2=T((1, 6, 0, 64)), a3=T((1, 2, 6, 0, 64)),
            a4=T((1, 2, 6, 0, 64)))),
    "sink_attention empty cache":
        dict(op="sink_attention", call="direct", args=_attn_args(
            a3=T((1, 0, 6, 2, 64)), a4=T((1, 0, 6, 2, 64)), a5=T((0,), "int32"))),
    "ema_cache_update empty batch":
        dict(op="ema_cache_update", call="direct", args=_ema_args(
            a0=T((0, 5, 3, 2, 8)), a1=T((0, 5, 3, 2, 8)), a4=T((0, 6, 2, 8)), a5=T((0, 6, 2, 8)))),
    "ema_cache_update no heads":
        dict(op="ema_cache_update", call="direct", args=_ema_args(
            a0=T((1, 5, 3, 0, 8)), a1=T((1, 5, 3, 0, 8)), a4=T((1, 6, 0, 8)), a5=T((1, 6, 0, 8)))),
    "ema_cache_update inconsistent state":
        dict(op="ema_cache_update", call="direct", args=_ema_args(
            a3=T((4,), "int32", fill=[2**31 - 1, -2**31, 7, -5]))),
    "saliency_weights fp16 inf":
        dict(op="saliency_weights", call="direct", args=_sal_args(a0=T((3, 2, 9, 3, 16, 16), "float16", fill="inf"))),
    "saliency_weights one pixel":
        dict(op="saliency_weights", call="direct", args=_sal_args(a0=T((1, 1, 1, 1, 1, 1)), a1=T((1,)))),
    "rotated_cache_advance one meta table":
        dict(op="rotated_cache_advance", call="direct", args=_rot_args(a5=T((21, 4), device="meta"))),
    "rotated_cache_advance sink_size 2^63-1 (sink + window would wrap)":
        dict(op="rotated_cache_advance", call="direct", args=_rot_args(a7=2**63 - 1)),
    "rotated_cache_advance window 2^63-1, wrapper":
        dict(op="rotated_cache_advance", call="wrapper", args=_rot_args(a8=2**63 - 1)),
    "rotated_cache_advance huge empty buffers":
        dict(op="rotated_cache_advance", call="direct", args=_rot_args(
            a0=T((0, 7, 2**31, 2**31, 4)), a1=T((0, 7, 2**31, 2**31, 4)), a2=T((0, 2**32, 2**31, 4)),
            a3=T((0, 2**32, 2**31, 4)))),
    "rotated_cache_advance empty batch":
        dict(op="rotated_cache_advance", call="direct", args=_rot_args(
            a0=T((0, 7, 3, 2, 8)), a1=T((0, 7, 3, 2, 8)), a2=T((0, 6, 2, 8)), a3=T((0, 6, 2, 8)))),
    "rotated_cache_advance inf and nan values":
        dict(op="rotated_cache_advance", call="direct", args=_rot_args(
            a0=T((1, 7, 3, 2, 8), "bfloat16", fill="nan"), a1=T((1, 7, 3, 2, 8), "bfloat16", fill="inf"),
            a2=T((1, 6, 2, 8), "bfloat16", fill=[1e30, -1e30]), a3=T((1, 6, 2, 8), "bfloat16"))),
    "sink_attention all meta (shape propagation)":
        dict(op="sink_attention", call="direct", args=[
            {**a, "device": "meta"} if isinstance(a, dict) else a for a in _attn_args()]),
    "dense_attention no keys": dict(op="dense_attention", call="direct", args=_dense_args(
        a1=T((1, 0, 2, 64)), a2=T((1, 0, 2, 64)))),
    "dense_attention huge empty batch": dict(op="dense_attention", call="wrapper", args=_dense_args(
        a0=T((0, 2**31, 2, 64)), a1=T((0, 2**31, 2, 64)), a2=T((0, 2**31, 2, 64)))),
    "dense_attention strided last dim": dict(op="dense_attention", call="direct", args=_dense_args(
        a1=T((1, 70, 2, 64), strided=True))),
    "dense_attention one meta tensor": dict(op="dense_attention", call="direct", args=_dense_args(
        a2=T((1, 70, 2, 64), device="meta"))),
    "dense_attention all meta": dict(op="dense_attention", call="direct", args=[
        {**a, "device": "meta"} if isinstance(a, dict) else a for a in _dense_args()]),
    "dense_attention float64, wrapper": dict(op="dense_attention", call="wrapper", args=_dense_args(
        a0=T((1, 5, 2, 64), "float64"), a1=T((1, 70, 2, 64), "float64"), a2=T((1, 70, 2, 64), "float64"))),
    "qk_norm_rope one meta table":
        dict(op="qk_norm_rope", call="direct", args=_norm_rope_args(a5=T((12, 4), device="meta"))),
    "qk_norm_rope frame_offset 2^63-1 (table rows would wrap)":
        dict(op="qk_norm_rope", call="direct", args=_norm_rope_args(a6=2**63 - 1)),
    "qk_norm_rope frame_offset 2^63-1, wrapper":
        dict(op="qk_norm_rope", call="wrapper", args=_norm_rope_args(a6=2**63 - 1)),
    "qk_norm_rope row of 2^31 elements, empty batch":
        dict(op="qk_norm_rope", call="direct", args=_norm_rope_args(
            a0=T((0, 2, 3, 2**16, 2**15)), a1=T((0, 2, 3, 2**16, 2**15)))),
    "qk_norm_rope huge empty batch, wrapper":
        dict(op="qk_norm_rope", call="wrapper", args=_norm_rope_args(
            a0=T((0, 2**32, 2**31, 2, 8)), a1=T((0, 2**32, 2**31, 2, 8)))),
    "qk_norm_rope huge empty batch":
        dict(op="qk_norm_rope", call="direct", args=_norm_rope_args(
            a0=T((0, 2**32, 2**31, 2, 8)), a1=T((0, 2**32, 2**31, 2, 8)))),
    "qk_norm_rope empty batch":
        dict(op="qk_norm_rope", call="direct", args=_norm_rope_args(a0=T((0, 2, 3, 2, 8)), a1=T((0, 2, 3, 2, 8)))),
    "qk_norm_rope inf and nan values":
        dict(op="qk_norm_rope", call="direct", args=_norm_rope_args(
            a0=T((1, 2, 3, 2, 8), "bfloat16", fill="nan"), a1=T((1, 2, 3, 2, 8), "bfloat16", fill=[1e30, -1e30]),
            a2=T((16,), "bfloat16", fill="inf"), a3=T((16,), "bfloat16"))),
    "qk_norm_rope float32 weights of bf16 tensors":
        dict(op="qk_norm_rope", call="wrapper", args=_norm_rope_args(
            a0=T((1, 2, 3, 2, 8), "bfloat16"), a1=T((1, 2, 3, 2, 8), "bfloat16"))),
    "qk_norm_rope all meta (shape propagation)":
        dict(op="qk_norm_rope", call="direct", args=[
            {**a, "device": "meta"} if isinstance(a, dict) else a for a in _norm_rope_args()]),
}


def test_regressions_of_the_review():
    run_cases(list(REGRESSIONS.values()))


# ---- hypothesis: mutations of valid calls ----------------------------------------------------

DTYPE_NAMES = ["float32", "float16", "bfloat16", "float64", "int32", "int64", "bool"]


@st.composite
def tensor_mutation(draw, spec: dict) -> dict:
    spec = dict(spec)
    kind = draw(st.sampled_from(["dtype", "rank", "dim", "strided", "meta", "values", "zero-dim", "huge-empty"]))
    shape = list(spec["shape"])
    if kind == "dtype":
        spec["dtype"] = draw(st.sampled_from(DTYPE_NAMES))
    elif kind == "rank":
        if shape and draw(st.booleans()):
            shape.pop(draw(st.integers(0, len(shape) - 1)))
        else:
            shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(1, 3)))
    elif kind == "dim" and shape:
        shape[draw(st.integers(0, len(shape) - 1))] = draw(st.integers(0, 9))
    elif kind == "strided":
        spec["strided"] = True
    elif kind == "meta":
        spec["device"] = "meta"
    elif kind == "values":
        spec["fill"] = draw(st.sampled_from(["nan", "inf", "zeros", [2**31 - 1, -2**31, 7, -5], [1e30, -1e30]]))
    elif kind == "zero-dim":
        shape = []
    elif kind == "huge-empty" and shape:
        shape[0] = 0
        shape[draw(st.integers(0, len(shape) - 1))] = 0
        if len(shape) > 1:
            shape[-1] = draw(st.sampled_from([2**31, 2**40]))
    spec["shape"] = shape
    return spec


def scalar_mutation(name: str):
    ints = st.sampled_from(INT_EDGES + BAD_SCALARS)
    floats = st.sampled_from([0.0, 1.0, 0.5, -0.1, 1.1, 2**63, 1e-30] + BAD_SCALARS)
    return ints if name in ("sink_size", "grid_h", "grid_w", "temporal_factor", "spatial_factor", "occupied",
                            "window", "frame_offset") else (
        st.sampled_from(["vae", "trilinear", "nearest", "", None, 3]) if name == "mode" else floats)


BASES = {
    "ema_cache_update": _ema_args,
    "sink_attention": _attn_args,
    "saliency_weights": _sal_args,
    "rotated_cache_advance": _rot_args,
    "dense_attention": _dense_args,
    "qk_norm_rope": _norm_rope_args,
}
SCALAR_NAMES = {
    "ema_cache_update": {6: "sink_size", 7: "alpha"},
    "sink_attention": {7: "grid_h", 8: "grid_w", 9: "scale", 10: "rope_theta"},
    "dense_attention": {3: "scale"},
    "saliency_weights": {2: "mode", 3: "temporal_factor", 4: "spatial_factor", 5: "tau_floor",
                         6: "sigma_floor", 7: "gamma_t", 8: "gamma_s"},
    "rotated_cache_advance": {6: "occupied", 7: "sink_size", 8: "window", 9: "alpha"},
    "qk_norm_rope": {6: "frame_offset", 7: "eps"},
}


@st.composite
def cases(draw) -> dict:
    op = draw(st.sampled_from(sorted(BASES)))
    args = BASES[op]()
    if op == "ema_cache_update" and draw(st.booleans()):
        # A full cache, so that a valid call evicts and folds (sink 2, W 3: state (2, r, 3, 5)).
        args[3] = T((4,), "int32", fill=[2, draw(st.integers(0, 2)), 3, 5])
        args[4] = args[5] = T((1, 3 * draw(st.integers(1, 3)), 2, 8))
    if op == "rotated_cache_advance" and draw(st.booleans()):
        args[6] = draw(st.integers(0, 5))  # every fill state of sink 2, window 3, chunks of 2
    if op == "qk_norm_rope" and draw(st.booleans()):
        args[6] = draw(st.integers(0, 2))  # every chunk position the 4-frame tables hold
    if op == "saliency_weights" and draw(st.booleans()):
        args[0] = T((1, 5, 7, 9), fill="rand")  # a fused map
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(args) - 1))
        if isinstance(args[i], dict):
            args[i] = draw(tensor_mutation(args[i]))
        else:
            args[i] = draw(scalar_mutation(SCALAR_NAMES[op][i]))
    return dict(op=op, call=draw(st.sampled_from(["wrapper", "direct"])), args=args,
                seed=draw(st.integers(0, 2**16)))


def generated_cases(n: int = 300) -> list[dict]:
    """``n`` cases drawn by hypothesis with a fixed seed (derandomize), collected in this
    process so that they all run in one child."""
    collected: list[dict] = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=cases())
    def collect(case):
        collected.append(case)

    collect()
    return collected


def test_hostile_inputs_never_crash_and_errors_name_an_argument():
    batch = generated_cases()
    assert len(batch) >= 250 and len({repr(c) for c in batch}) >= 200, "too few distinct cases"
    run_cases(batch)


def test_a_crash_is_caught_and_its_case_named():
    """The harness itself: a case that aborts its process fails the run, named, while the
    batch's well-behaved case is not blamed (both are torch-free worker self-test cases)."""
    fine = dict(op="_fine", call="direct", args=[])
    crash = dict(op="_abort", call="direct", args=[], marker="the crashing one")
    with pytest.raises(AssertionError) as info:
        run_cases([fine, crash])
    message = str(info.value)
    assert "killed by SIGABRT" in message and "the crashing one" in message, message
    assert "1 of 2 cases misbehaved" in message, message
