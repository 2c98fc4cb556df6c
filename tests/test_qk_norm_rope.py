"""qk_norm_rope: the kernels against the PyTorch reference (hypothesis shapes: batch 1 and 3,
odd tokens per frame, 1-3 heads, head dims 6, 10, 64 and 128, every frame offset of the table,
every dtype, weights in the tensors' or the compute dtype), both against an independent model
(torch.nn.RMSNorm in float64, then the rotation as complex multiplication by torch.polar of
rope_angles), autograd (gradcheck in float64, gradients against autograd through the reference),
opcheck on every dtype, compile (fullgraph, forward and backward), CUDA graphs, autocast and the
input checks. The kernels' CUDA device code also runs thread by thread on the CPU
(tests/test_cuda_emulation.py); the model-level wiring is tested in tests/test_rotated_cache.py
and here (one call per block)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_r1_fast._backend import backend_info, use_kernel
from stream_r1_fast.ops.qk_norm_rope import norm_rope_backward, qk_norm_rope
from stream_r1_fast.ops.qk_norm_rope_ref import qk_norm_rope_ref
from stream_r1_fast.ops.rope import compute_dtype, rope_angles, rope_tables
from test_ema_cache import _set
from tolerances import EXACT, assert_fa_close

HAS_EXTENSION = backend_info().name == "extension"
HAS_CUDA = torch.cuda.is_available()
needs_extension = pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not loaded")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                              pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")])]
FIXTURE_OK = settings(suppress_health_check=[*settings().suppress_health_check, HealthCheck.function_scoped_fixture])
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# (rtol, atol) of kernel vs reference, once per dtype: the same arithmetic but the order of the
# row's sum of squares (float32: a few ulps of the mean, so 1e-5; float64: double's), then one
# rounding to the dtype (16-bit: at most one ulp apart, EXACT's bounds).
TOL = {**EXACT, torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12)}
THETA = 10000.0


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def _close(got, want, what):
    rtol, atol = TOL[want.dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


@st.composite
def norm_rope_cases(draw, dtypes=tuple(DTYPES)):
    frames = draw(st.integers(1, 3))
    table_frames = frames + draw(st.integers(0, 3))
    return dict(
        batch=draw(st.sampled_from([1, 3])),
        frames=frames,
        table_frames=table_frames,
        frame_offset=draw(st.integers(0, table_frames - frames)),
        grid=draw(st.sampled_from([(1, 1), (1, 3), (5, 1), (3, 3)])),  # odd tokens per frame
        heads=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from([6, 10, 64, 128])),
        dtype=draw(st.sampled_from(list(dtypes))),
        wide_weights=draw(st.booleans()),  # the weights in the compute dtype (autocast, FSDP)
        scale=draw(st.sampled_from([1e-2, 1.0, 30.0])),
        eps=draw(st.sampled_from([1e-6, 1e-5, 0.1])),
        seed=draw(st.integers(0, 2**16)),
    )


def make_inputs(case, device):
    """(q, k, weight_q, weight_k, cos, sin, frame_offset, eps) of a case."""
    gen = torch.Generator().manual_seed(case["seed"])
    b, f, (gh, gw), h, d = case["batch"], case["frames"], case["grid"], case["heads"], case["head_dim"]
    dtype = case["dtype"]
    shape = (b, f, gh * gw, h, d)
    q, k = ((case["scale"] * torch.randn(shape, generator=gen)).to(device=device, dtype=dtype) for _ in "qk")
    wdtype = compute_dtype(dtype) if case["wide_weights"] else dtype
    wq, wk = ((1 + 0.5 * torch.randn(h * d, generator=gen)).to(device=device, dtype=wdtype) for _ in "qk")
    cos, sin = rope_tables(case["table_frames"], gh, gw, d, THETA, dtype, device)
    return q, k, wq, wk, cos, sin, case["frame_offset"], case["eps"]


def independent_model(x, weight, case):
    """torch.nn.RMSNorm over H * D (float64), then each adjacent pair as a complex number times
    e^(i angle), the angles of rope_angles at the chunk's frame positions: float64 truth."""
    b, f, p, h, d = x.shape
    norm = torch.nn.RMSNorm(h * d, eps=case["eps"], dtype=torch.float64, device=x.device)
    with torch.no_grad():
        norm.weight.copy_(weight.double())
        y = norm(x.double().reshape(b, f, p, h * d)).reshape(b, f * p, h, d)
    m = case["frame_offset"]
    ang = rope_angles(torch.arange(m, m + f, device=x.device), *case["grid"], d, THETA)  # [F * P, D / 2]
    turned = torch.view_as_complex(y.unflatten(-1, (-1, 2)).contiguous()) * torch.polar(torch.ones_like(ang),
                                                                                         ang)[None, :, None]
    return torch.view_as_real(turned).flatten(-2).reshape(b, f, p, h, d)


@FIXTURE_OK
@given(case=norm_rope_cases())
def test_kernel_matches_reference(device, case):
    args = make_inputs(case, device)
    got = qk_norm_rope(*args)
    want = qk_norm_rope_ref(*args)
    for name, g, w in zip(("q_out", "k_out"), got, want):
        assert g.shape == w.shape == args[0].shape and g.dtype == args[0].dtype and g.is_contiguous()
        _close(g, w, name)


@FIXTURE_OK
@given(case=norm_rope_cases())
def test_op_and_reference_follow_the_independent_model(device, case):
    """Within the tolerance idiom of tests/tolerances.py: the op's error against the float64
    truth is at most twice the same-precision reference's, plus ATOL[dtype]."""
    args = make_inputs(case, device)
    got = qk_norm_rope(*args)
    same = qk_norm_rope_ref(*args)
    for i, name in enumerate(("q_out", "k_out")):
        truth = independent_model(args[i], args[2 + i], case)
        if case["dtype"] == torch.float64:
            torch.testing.assert_close(got[i], truth, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(same[i], truth, rtol=1e-10, atol=1e-10)
        else:
            assert_fa_close(got[i], same[i], truth, case["dtype"], name)


def test_worked_example_head_dim_6(device):
    """One token, one head of 6: x = (3, 4, 0, 0, 1, 0), mean(x^2) = 26 / 6; weight 2 on every
    element but the last pair; at position 2 with P = 1 only the temporal pair turns (by 2 rad,
    theta^0 * 2), the row and column pairs sit at row 0, column 0 (angle 0)."""
    x = torch.tensor([3.0, 4.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64, device=device).view(1, 1, 1, 1, 6)
    w = torch.tensor([2.0, 2.0, 2.0, 2.0, 1.0, 1.0], dtype=torch.float64, device=device)
    cos, sin = rope_tables(4, 1, 1, 6, THETA, torch.float64, device)
    q, k = qk_norm_rope(x, -x, w, w, cos, sin, 2, 0.0)
    r = math.sqrt(6 / 26)
    y0, y1 = 6 * r, 8 * r
    want = torch.tensor([y0 * math.cos(2) - y1 * math.sin(2), y0 * math.sin(2) + y1 * math.cos(2), 0, 0, r, 0],
                        dtype=torch.float64)
    torch.testing.assert_close(q.flatten().cpu(), want)
    torch.testing.assert_close(k.flatten().cpu(), -want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_unaligned_storage(device, dtype):
    """q and k one element past an aligned address take the narrow-access path (one element per
    access, a pair per column) and agree all the same."""
    case = dict(batch=2, frames=2, table_frames=4, frame_offset=1, grid=(1, 3), heads=2, head_dim=8, dtype=dtype,
                wide_weights=False, scale=1.0, eps=1e-6, seed=0)
    q, k, *rest = make_inputs(case, device)
    shifted = [torch.zeros(t.numel() + 1, dtype=dtype, device=device)[1:].view(t.shape).copy_(t) for t in (q, k)]
    for g, w in zip(qk_norm_rope(*shifted, *rest), qk_norm_rope_ref(q, k, *rest)):
        _close(g, w, "unaligned")


def test_wan_sized_rows(device):
    """Wan2.1 1.3B's rows (12 heads of 128) and 14B's (40 heads: beyond what the CUDA kernel keeps
    in registers, kCached columns per thread) at a chunk of 3 frames, bf16."""
    for heads in (12, 40):
        case = dict(batch=1, frames=3, table_frames=9, frame_offset=6, grid=(2, 3), heads=heads, head_dim=128,
                    dtype=torch.bfloat16, wide_weights=False, scale=1.0, eps=1e-6, seed=heads)
        args = make_inputs(case, device)
        for g, w in zip(qk_norm_rope(*args), qk_norm_rope_ref(*args)):
            _close(g, w, f"{heads} heads")


def test_empty_batch(device):
    case = dict(batch=1, frames=1, table_frames=2, frame_offset=1, grid=(1, 3), heads=2, head_dim=8,
                dtype=torch.float32, wide_weights=False, scale=1.0, eps=1e-6, seed=0)
    q, k, *rest = make_inputs(case, device)
    q_out, k_out = qk_norm_rope(q[:0], k[:0], *rest)
    assert q_out.shape == k_out.shape == (0, 1, 3, 2, 8)


# ---- autograd ---------------------------------------------------------------------------------


def _grad_case(dtype, wide=False, seed=0):
    return dict(batch=2, frames=2, table_frames=3, frame_offset=1, grid=(1, 3), heads=2, head_dim=10, dtype=dtype,
                wide_weights=wide, scale=1.0, eps=1e-5, seed=seed)


def test_gradcheck_float64(device):
    q, k, wq, wk, cos, sin, m, eps = make_inputs(_grad_case(torch.float64), device)
    inputs = [t.clone().requires_grad_() for t in (q, k, wq, wk)]
    assert torch.autograd.gradcheck(lambda *t: qk_norm_rope(*t, cos, sin, m, eps), inputs)


@pytest.mark.parametrize("dtype, wide", [(torch.float32, False), (torch.float64, False), (torch.bfloat16, True),
                                         (torch.float16, False)], ids=str)
def test_gradients_match_autograd_through_the_reference(device, dtype, wide):
    q, k, wq, wk, cos, sin, m, eps = make_inputs(_grad_case(dtype, wide, seed=3), device)
    gen = torch.Generator().manual_seed(5)
    gq, gk = (torch.randn(q.shape, generator=gen).to(device=device, dtype=dtype) for _ in "qk")
    grads = {}
    for name, fn in (("op", qk_norm_rope), ("reference", qk_norm_rope_ref)):
        leaves = [t.clone().requires_grad_() for t in (q, k, wq, wk)]
        out_q, out_k = fn(*leaves, cos, sin, m, eps)
        ((out_q.float() * gq.float()).sum() + (out_k.float() * gk.float()).sum()).backward()
        grads[name] = [t.grad for t in leaves]
    tol = {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 2e-2)
    for label, a, b in zip(("q", "k", "weight_q", "weight_k"), grads["op"], grads["reference"]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol, msg=lambda msg: f"d{label}: {msg}")


def test_backward_formula_against_the_reference_in_float64():
    """norm_rope_backward (what the registered autograd runs) equals autograd through the
    reference, also with one output's gradient missing (None: zeros)."""
    q, k, wq, wk, cos, sin, m, eps = make_inputs(_grad_case(torch.float64, seed=7), "cpu")
    leaves = [t.clone().requires_grad_() for t in (q, wq)]
    out, _ = qk_norm_rope_ref(leaves[0], k, leaves[1], wk, cos, sin, m, eps)
    g = torch.randn_like(out)
    want = torch.autograd.grad(out, leaves, g)
    got = norm_rope_backward(g, q, wq, cos, sin, m, eps)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    dx, dw = norm_rope_backward(None, q, wq, cos, sin, m, eps)
    assert not dx.any() and not dw.any() and dx.shape == q.shape and dw.shape == wq.shape


# ---- schema, compile, graphs, autocast -------------------------------------------------------


@needs_extension
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(device, dtype):
    """Schema, fake kernel, dispatch and the autograd registration (inputs requiring grad)."""
    if not use_kernel("qk_norm_rope", device.type):
        pytest.skip(f"no {device.type} kernel")
    q, k, wq, wk, cos, sin, m, eps = make_inputs(_grad_case(dtype), device)
    args = (q.requires_grad_(), k.requires_grad_(), wq.requires_grad_(), wk.requires_grad_(), cos, sin, m, eps)
    torch.library.opcheck(torch.ops.stream_r1_fast.qk_norm_rope.default, args)


def test_torch_compile_fullgraph_forward_and_backward(device):
    torch._dynamo.reset()
    q, k, wq, wk, cos, sin, m, eps = make_inputs(_grad_case(torch.float32), device)

    def loss(q, k, wq, wk):
        out_q, out_k = qk_norm_rope(q * 2.0, k, wq, wk, cos, sin, m, eps)
        return (out_q * out_k).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    grads = []
    for fn in (compiled, loss):
        leaves = [t.clone().requires_grad_() for t in (q, k, wq, wk)]
        value = fn(*leaves)
        value.backward()
        grads.append([value.detach()] + [t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_autocast_keeps_the_inputs_dtypes():
    """Under autocast (the trainer's bf16), bf16 projections with float32 weights: the op runs
    on them as they are and returns bf16."""
    q, k, wq, wk, cos, sin, m, eps = make_inputs(_grad_case(torch.bfloat16, wide=True), "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = qk_norm_rope(q, k, wq, wk, cos, sin, m, eps)
    for g, w in zip(got, qk_norm_rope_ref(q, k, wq, wk, cos, sin, m, eps)):
        assert g.dtype == torch.bfloat16
        _close(g, w, "autocast")


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_graph_replay(dtype):
    if not use_kernel("qk_norm_rope", "cuda"):
        pytest.skip("no CUDA kernel")
    case = dict(batch=1, frames=3, table_frames=9, frame_offset=6, grid=(1, 5), heads=4, head_dim=40, dtype=dtype,
                wide_weights=False, scale=1.0, eps=1e-6, seed=0)
    q, k, *rest = make_inputs(case, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph
        qk_norm_rope(q, k, *rest)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = qk_norm_rope(q, k, *rest)
    for _ in range(4):
        q.copy_(torch.randn_like(q))
        k.copy_(torch.randn_like(k))
        graph.replay()
        for g, w in zip(outs, qk_norm_rope_ref(q, k, *rest)):
            _close(g, w, "replay")


# ---- bad inputs --------------------------------------------------------------------------------


def _good_args(device, dtype=torch.float32):
    q, k, wq, wk, cos, sin, m, eps = make_inputs(_grad_case(dtype), device)
    return dict(q=q, k=k, weight_q=wq, weight_k=wk, cos=cos, sin=sin, frame_offset=m, eps=eps)


def _pair(a, b, fn):
    return _set(**{a: lambda x: fn(x[a]), b: lambda x: fn(x[b])})


BAD_INPUTS = {  # name: (mutation of good arguments, expected message)
    "q rank": (_pair("q", "k", lambda t: t.flatten(1, 2)), r"q must have 5 dimensions \[B, F, P, H, D\]"),
    "k shape": (_set(k=lambda a: a["k"][:, :1]), "k must have the shape of q"),
    "odd head dim": (_pair("q", "k", lambda t: t[..., :9].contiguous()), "must be even"),
    "dtype mismatch": (_set(k=lambda a: a["k"].double()), "k must have the dtype of q"),
    "int tensors": (_pair("q", "k", lambda t: t.int()), "q must be float32, float16, bfloat16 or float64"),
    "weight size": (_set(weight_q=lambda a: a["weight_q"][:-2]), r"weight_q must have shape \[H \* D\] = \[20\]"),
    "weight rank": (_set(weight_k=lambda a: a["weight_k"].view(2, 10)), r"weight_k must have shape \[H \* D\]"),
    "weight dtype": (_set(weight_q=lambda a: a["weight_q"].half(), weight_k=lambda a: a["weight_k"].half()),
                     "weight_q must have the dtype of q"),
    "weights differ": (_set(weight_k=lambda a: a["weight_k"].double()), "weight_k must have the dtype of weight_q"),
    "table dtype": (_set(cos=lambda a: a["cos"].double()), "cos must be (torch.)?float32"),
    "table width": (_set(sin=lambda a: a["sin"][:, :4].contiguous()), "sin must have the shape of cos"),
    "table too short": (_set(frame_offset=lambda a: 2), r"cos and sin have 9 rows, too few .* \(12 rows needed\)"),
    "non-contiguous q": (_set(q=lambda a: a["q"].transpose(3, 4).contiguous().transpose(3, 4)),
                         "q must be contiguous"),
    "non-contiguous cos": (_set(cos=lambda a: a["cos"].t().contiguous().t()), "cos must be contiguous"),
    "negative offset": (_set(frame_offset=lambda a: -1), "frame_offset must be"),
    "eps nan": (_set(eps=lambda a: float("nan")), "eps must be a finite number >= 0"),
    "eps < 0": (_set(eps=lambda a: -1e-6), "eps must be a finite number >= 0"),
    "no heads": (_pair("q", "k", lambda t: t[:, :, :, :0]), r"q.shape\[3\] \(heads H\) must be >= 1"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_inputs_raise(device, case):
    mutate, match = BAD_INPUTS[case]
    args = _good_args(device)
    mutate(args)
    with pytest.raises(ValueError, match=match):
        qk_norm_rope(**args)


@needs_extension
@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_inputs_raise_in_kernel(device, case):
    """The C++ entry points check the same things (for direct torch.ops calls)."""
    if not use_kernel("qk_norm_rope", device.type):
        pytest.skip(f"no {device.type} kernel")
    mutate, match = BAD_INPUTS[case]
    args = _good_args(device)
    mutate(args)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.stream_r1_fast.qk_norm_rope(*args.values())


def test_sizes_that_overflow_int32_are_refused():
    """A row of H * D >= 2^31 elements (an empty batch, so nothing is allocated) is refused by
    name, in the wrapper and in the kernel's own checks."""
    q = torch.empty(0, 1, 1, 2**16, 2**15)
    w = torch.empty(4)  # (checked after the row size)
    cos = torch.empty(1, 2**14)
    with pytest.raises(ValueError, match=r"q.shape\[3\] \* shape\[4\] \(row size H \* D\) = 2147483648 exceeds"):
        qk_norm_rope(q, q, w, w, cos, cos, 0, 1e-6)
    if HAS_EXTENSION:
        with pytest.raises(RuntimeError, match=r"row size H \* D\) must be at most 2\^31 - 1"):
            torch.ops.stream_r1_fast.qk_norm_rope(q, q, w, w, cos, cos, 0, 1e-6)


@pytest.mark.parametrize("name, value", [("eps", "1e-6"), ("eps", None), ("frame_offset", 1.0),
                                         ("frame_offset", True), ("q", [1.0]), ("cos", 0.5)])
def test_wrong_types_name_the_argument(device, name, value):
    args = _good_args(device)
    args[name] = value
    with pytest.raises(TypeError, match=f"^{name} must be"):
        qk_norm_rope(**args)


@needs_extension
@pytest.mark.parametrize("name", ["q", "k", "weight_q", "weight_k", "cos", "sin"])
def test_one_meta_tensor_is_refused(name):
    """A direct call mixing meta with CPU tensors dispatches to the fake kernel, which must
    refuse it rather than return empty tensors."""
    args = _good_args(torch.device("cpu"))
    args[name] = torch.empty_like(args[name], device="meta")
    with pytest.raises((RuntimeError, ValueError), match=f"({name}|k) must be on the device of"):
        torch.ops.stream_r1_fast.qk_norm_rope(*args.values())


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_device_mismatch_is_refused():
    args = _good_args(torch.device("cuda"))
    args["cos"] = args["cos"].cpu()
    with pytest.raises(ValueError, match="cos must be on the device of q"):
        qk_norm_rope(**args)
