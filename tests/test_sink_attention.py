"""sink_attention: kernels (forward and backward) against the float64 reference with the
FlashAttention error bound, schema / fake / autograd plumbing, torch.compile, CUDA graphs, and
input checks."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_r1_fast._backend import backend_info, use_kernel
from stream_r1_fast.ops.sink_attention import sink_attention, sink_attention_backward
from stream_r1_fast.ops.sink_attention_ref import sink_attention_ref, sink_attention_rf_style
from tests.tolerances import assert_fa_close

HAS_EXTENSION = backend_info().name == "extension"
HAS_CUDA = torch.cuda.is_available()
# The device fixture is function scoped but stateless: every example builds its own tensors.
FIXTURE_OK = settings(
    suppress_health_check=[*settings().suppress_health_check, HealthCheck.function_scoped_fixture]
)
needs_extension = pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not loaded")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


@st.composite
def attention_cases(draw):
    slots = draw(st.integers(0, 5))
    # Ring-like tables: positions in any order, some slots empty.
    cache_pos = draw(st.lists(st.one_of(st.just(-1), st.integers(0, 40)), min_size=slots, max_size=slots))
    return dict(
        batch=draw(st.sampled_from([1, 2, 3])),
        heads=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from([64, 128])),
        grid_h=draw(st.sampled_from([1, 3, 5])),
        grid_w=draw(st.sampled_from([1, 3, 5, 7])),
        frames=draw(st.integers(1, 3)),
        cache_pos=cache_pos,
        q_pos=draw(st.integers(0, 40)),
        dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])),
        seed=draw(st.integers(0, 2**16)),
    )


def make_inputs(case, device):
    """(q, k, v, k_cache, v_cache, cache_pos, q_pos) of a case, in its dtype, on device. Empty
    slots hold large finite garbage: it must not reach the output."""
    gen = torch.Generator().manual_seed(case["seed"])
    b, h, d = case["batch"], case["heads"], case["head_dim"]
    p = case["grid_h"] * case["grid_w"]
    s = len(case["cache_pos"])
    chunk = (b, case["frames"] * p, h, d)
    cache = (b, s, p, h, d)
    q, k, v = (torch.randn(chunk, generator=gen) for _ in range(3))
    k_cache, v_cache = (torch.randn(cache, generator=gen) for _ in range(2))
    empty = torch.tensor(case["cache_pos"], dtype=torch.int64) < 0
    k_cache[:, empty] = 300.0
    v_cache[:, empty] = -500.0
    tensors = [t.to(device=device, dtype=case["dtype"]) for t in (q, k, v, k_cache, v_cache)]
    cache_pos = torch.tensor(case["cache_pos"], dtype=torch.int32, device=device)
    q_pos = torch.tensor([case["q_pos"]], dtype=torch.int32, device=device)
    return (*tensors, cache_pos, q_pos)


def OP(*args):
    """The registered op (resolved lazily: absent on the reference backend)."""
    return torch.ops.stream_r1_fast.sink_attention(*args)


def kernel_forward(inputs, grid_h, grid_w, scale, theta=10000.0):
    """(out, lse) from the compiled kernel of the inputs' device, else from the reference."""
    if use_kernel("sink_attention", inputs[0].device.type):
        return OP(*inputs, grid_h, grid_w, scale, theta)
    return sink_attention_ref(*inputs, grid_h, grid_w, scale, theta)


def as_float64(inputs):
    return [t.double() if t.is_floating_point() else t for t in inputs]


@FIXTURE_OK
@given(case=attention_cases())
def test_forward_matches_reference(device, case):
    inputs = make_inputs(case, device)
    gh, gw, scale = case["grid_h"], case["grid_w"], case["head_dim"] ** -0.5
    out, lse = kernel_forward(inputs, gh, gw, scale)
    ref_out, ref_lse = sink_attention_ref(*inputs, gh, gw, scale)
    true_out, true_lse = sink_attention_ref(*as_float64(inputs), gh, gw, scale)
    assert out.dtype == case["dtype"] and lse.dtype == torch.float32
    assert lse.shape == (case["batch"], case["heads"], inputs[0].shape[1])
    assert_fa_close(out, ref_out, true_out, case["dtype"], "out")
    assert_fa_close(lse, ref_lse, true_lse, case["dtype"], "lse")
    # The public function returns the same output.
    assert torch.equal(sink_attention(*inputs, gh, gw), out)


@FIXTURE_OK
@given(case=attention_cases())
def test_gradients_match_reference(device, case):
    inputs = make_inputs(case, device)
    gh, gw, scale = case["grid_h"], case["grid_w"], case["head_dim"] ** -0.5
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    grad_out = torch.randn(inputs[0].shape, generator=gen).to(device=device, dtype=case["dtype"])

    def grads(fn, tensors):
        leaves = [t.detach().requires_grad_(i < 3) for i, t in enumerate(tensors)]
        out = fn(leaves)
        return torch.autograd.grad(out, leaves[:3], grad_out.to(out.dtype))

    got = grads(lambda t: sink_attention(*t, *inputs[5:], gh, gw, scale), inputs[:5])
    same = grads(lambda t: sink_attention_ref(*t, *inputs[5:], gh, gw, scale)[0], inputs[:5])
    truth = grads(lambda t: sink_attention_ref(*t, *inputs[5:], gh, gw, scale)[0], as_float64(inputs[:5]))
    for name, g, s, t in zip(("dq", "dk", "dv"), got, same, truth):
        assert g.dtype == case["dtype"]
        assert_fa_close(g, s, t, case["dtype"], name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_formula_with_lse_gradient(dtype):
    """The explicit backward (used by the kernels' autograd) against float64 autograd through
    the reference, with gradients flowing into both out and lse; runs on any backend."""
    case = dict(batch=2, heads=2, head_dim=64, grid_h=3, grid_w=5, frames=2, cache_pos=[4, -1, 0, 9],
                q_pos=11, dtype=dtype, seed=7)
    inputs = make_inputs(case, "cpu")
    gh, gw, scale = 3, 5, 0.125
    gen = torch.Generator().manual_seed(3)
    g_out = torch.randn(inputs[0].shape, generator=gen).to(dtype)
    g_lse = torch.randn(2, 2, inputs[0].shape[1], generator=gen)

    def autograd_grads(tensors):
        leaves = [t.detach().requires_grad_(i < 3) for i, t in enumerate(tensors)]
        out, lse = sink_attention_ref(*leaves, *inputs[5:], gh, gw, scale)
        loss = (out * g_out.to(out.dtype)).sum() + (lse * g_lse.to(lse.dtype)).sum()
        return torch.autograd.grad(loss, leaves[:3])

    out, lse = sink_attention_ref(*inputs, gh, gw, scale)
    got = sink_attention_backward(g_out, g_lse, *inputs, out, lse, gh, gw, scale, 10000.0)
    same = autograd_grads(inputs[:5])
    truth = autograd_grads(as_float64(inputs[:5]))
    for name, g, s, t in zip(("dq", "dk", "dv"), got, same, truth):
        assert_fa_close(g, s, t, dtype, name)


def test_streaming_like_shape(device):
    """Frames wider than a key tile (P = 240), tile tails, and whole tiles of empty slots."""
    case = dict(batch=1, heads=2, head_dim=128, grid_h=12, grid_w=20, frames=3,
                cache_pos=[0, 1, -1, -1, 4, 3], q_pos=5, dtype=torch.bfloat16, seed=11)
    inputs = make_inputs(case, device)
    scale = 128**-0.5
    out, lse = kernel_forward(inputs, 12, 20, scale)
    ref_out, ref_lse = sink_attention_ref(*inputs, 12, 20, scale)
    true_out, true_lse = sink_attention_ref(*as_float64(inputs), 12, 20, scale)
    assert_fa_close(out, ref_out, true_out, torch.bfloat16, "out")
    assert_fa_close(lse, ref_lse, true_lse, torch.bfloat16, "lse")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_slot_order_does_not_matter(device, dtype):
    """A ring cache is read through its position table: with slots permuted (and cache_pos
    with them) the output stays within the error bound of the unpermuted float64 truth."""
    case = dict(batch=2, heads=2, head_dim=64, grid_h=3, grid_w=7, frames=1, cache_pos=[0, 1, 2, -1, 5],
                q_pos=6, dtype=dtype, seed=5)
    inputs = make_inputs(case, device)
    q, k, v, kc, vc, cp, qp = inputs
    perm = torch.tensor([3, 1, 4, 0, 2], device=device)
    permuted = sink_attention(q, k, v, kc[:, perm].contiguous(), vc[:, perm].contiguous(), cp[perm].contiguous(), qp, 3, 7)
    same, _ = sink_attention_ref(*inputs, 3, 7, 0.125)
    truth, _ = sink_attention_ref(*as_float64(inputs), 3, 7, 0.125)
    assert_fa_close(permuted, same, truth, dtype, "out with permuted slots")


def test_empty_slots_never_leak(device):
    """Empty slots may hold anything (even NaN) in a ring buffer; every backend ignores them."""
    case = dict(batch=1, heads=2, head_dim=64, grid_h=5, grid_w=7, frames=2, cache_pos=[2, -1, 0, -1],
                q_pos=3, dtype=torch.float16, seed=9)
    q, k, v, kc, vc, cp, qp = make_inputs(case, device)
    out = sink_attention(q, k, v, kc, vc, cp, qp, 5, 7)
    kc[:, 1], vc[:, 3] = float("nan"), float("inf")
    assert torch.equal(sink_attention(q, k, v, kc, vc, cp, qp, 5, 7), out)


def test_rf_style_baseline_matches_reference():
    """The benchmark baseline computes the same attention as the reference on a full cache."""
    gen = torch.Generator().manual_seed(0)
    b, h, d, gh, gw = 2, 2, 64, 3, 5
    p = gh * gw
    sink_k, sink_v = (torch.randn(b, 3 * p, h, d, generator=gen, dtype=torch.float64) for _ in range(2))
    win_k, win_v = (torch.randn(b, 2 * p, h, d, generator=gen, dtype=torch.float64) for _ in range(2))
    q, k, v = (torch.randn(b, 3 * p, h, d, generator=gen, dtype=torch.float64) for _ in range(3))
    rf = sink_attention_rf_style(q, k, v, sink_k, sink_v, win_k, win_v, 5, gh, gw)
    k_cache = torch.cat([sink_k, win_k], 1).reshape(b, 5, p, h, d)
    v_cache = torch.cat([sink_v, win_v], 1).reshape(b, 5, p, h, d)
    cache_pos = torch.arange(5, dtype=torch.int32)
    ref, _ = sink_attention_ref(q, k, v, k_cache, v_cache, cache_pos, torch.tensor([5], dtype=torch.int32), gh, gw, d**-0.5)
    torch.testing.assert_close(rf, ref)


def _opcheck_inputs(device, requires_grad):
    case = dict(batch=2, heads=2, head_dim=64, grid_h=3, grid_w=3, frames=2, cache_pos=[1, -1, 0],
                q_pos=2, dtype=torch.float32, seed=1)
    inputs = list(make_inputs(case, device))
    for i in range(3):
        inputs[i].requires_grad_(requires_grad)
    return (*inputs, 3, 3, 0.125, 10000.0)


@needs_extension
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    if not use_kernel("sink_attention", device.type):
        pytest.skip("no compiled kernel for this device")
    torch.library.opcheck(torch.ops.stream_r1_fast.sink_attention.default, _opcheck_inputs(device, requires_grad))


def test_torch_compile_fullgraph(device):
    case = dict(batch=1, heads=2, head_dim=64, grid_h=3, grid_w=5, frames=2, cache_pos=[0, -1, 1],
                q_pos=2, dtype=torch.float32, seed=4)
    inputs = make_inputs(case, device)

    def loss_and_grads(fn):
        leaves = [t.detach().requires_grad_(i < 3) for i, t in enumerate(inputs[:5])]
        out = fn(*leaves, *inputs[5:])
        (out.square().sum()).backward()
        return out.detach(), [t.grad for t in leaves[:3]]

    def f(q, k, v, kc, vc, cp, qp):
        return sink_attention(q, k, v, kc, vc, cp, qp, 3, 5) * 2.0

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out_c, grads_c = loss_and_grads(compiled)
    out_e, grads_e = loss_and_grads(f)
    torch.testing.assert_close(out_c, out_e)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge)


@needs_cuda
def test_no_host_sync_and_cuda_graph():
    """Forward and backward never synchronise; a captured forward follows cache_pos / q_pos
    written in place (positions are read on the device)."""
    case = dict(batch=1, heads=2, head_dim=128, grid_h=5, grid_w=13, frames=3, cache_pos=[0, 1, -1, 2],
                q_pos=3, dtype=torch.bfloat16, seed=2)
    q, k, v, kc, vc, cp, qp = make_inputs(case, "cuda")
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sink_attention(*leaves, kc, vc, cp, qp, 5, 13)
        out.float().square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")

    static = [t.clone() for t in (q, k, v, kc, vc, cp, qp)]
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        sink_attention(*static, 5, 13)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = sink_attention(*static, 5, 13)
    static[5].copy_(torch.tensor([3, -1, 1, 0], dtype=torch.int32))
    static[6].fill_(7)
    graph.replay()
    want = sink_attention(q, k, v, kc, vc, static[5].clone(), static[6].clone(), 5, 13)
    torch.cuda.synchronize()
    assert torch.equal(captured, want)


# ---- Input checks -------------------------------------------------------------------------------

def _valid_args(device):
    case = dict(batch=1, heads=2, head_dim=64, grid_h=3, grid_w=3, frames=1, cache_pos=[0, -1],
                q_pos=1, dtype=torch.float32, seed=0)
    return list(make_inputs(case, device))


def _bad(index, make):
    def mutate(args):
        args[index] = make(args[index])
        return args
    return mutate


BAD_INPUTS = [
    ("q rank", _bad(0, lambda t: t[0]), "q must have 4 dimensions"),
    ("k_cache rank", _bad(3, lambda t: t[:, 0]), "k_cache must have 5 dimensions"),
    ("k dtype", _bad(1, lambda t: t.half()), "k must have the dtype of q"),
    ("int q", lambda a: [t.to(torch.int32) if i < 5 else t for i, t in enumerate(a)], "q must be float32, float16 or bfloat16"),
    ("head dim 96", lambda a: [torch.zeros(*t.shape[:-1], 96, dtype=t.dtype, device=t.device) if i < 5 else t for i, t in enumerate(a)], "head_dim"),
    ("non-contiguous q", _bad(0, lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)), "q must be contiguous"),
    ("Lq not whole frames", lambda a: [t[:, :-1].contiguous() if i < 3 else t for i, t in enumerate(a)], "must be a multiple of grid_h * grid_w"),
    ("cache shape", _bad(3, lambda t: t[:, :, :-1].contiguous()), "k_cache must have shape [B, S, P, H, D]"),
    ("cache_pos dtype", _bad(5, lambda t: t.long()), "cache_pos must be int32"),
    ("cache_pos length", _bad(5, lambda t: torch.cat([t, t])), "cache_pos must have shape [2]"),
    ("q_pos shape", _bad(6, lambda t: torch.cat([t, t])), "q_pos must have shape [1]"),
]


def _device_mismatch_cases():
    if not HAS_CUDA:
        return []
    return [
        ("cpu cache, cuda q", _bad(3, lambda t: t.cpu()), "k_cache must be on the device of q"),
        ("cpu cache_pos, cuda q", _bad(5, lambda t: t.cpu()), "cache_pos must be on the device of q"),
        ("cpu q_pos, cuda q", _bad(6, lambda t: t.cpu()), "q_pos must be on the device of q"),
    ]


@pytest.mark.parametrize("what,mutate,message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors(device, what, mutate, message):
    args = mutate(_valid_args(device))
    with pytest.raises(ValueError, match=re.escape(message)):
        sink_attention(*args, 3, 3)
    if use_kernel("sink_attention", device.type):
        with pytest.raises(RuntimeError, match=re.escape(message)):
            OP(*args, 3, 3, 0.125, 10000.0)


@pytest.mark.parametrize("what,mutate,message", _device_mismatch_cases(),
                         ids=[c[0] for c in _device_mismatch_cases()])
def test_device_mismatch_raises(what, mutate, message):
    args = mutate(_valid_args(torch.device("cuda")))
    with pytest.raises(ValueError, match=re.escape(message)):
        sink_attention(*args, 3, 3)
    if use_kernel("sink_attention", "cuda"):
        with pytest.raises(RuntimeError, match=re.escape(message)):
            OP(*args, 3, 3, 0.125, 10000.0)


def test_bad_scalars(device):
    args = _valid_args(device)
    with pytest.raises(ValueError, match="grid_h and grid_w must be positive"):
        sink_attention(*args, 0, 3)
    with pytest.raises(TypeError, match="grid_w must be an int"):
        sink_attention(*args, 3, 3.0)
    with pytest.raises(ValueError, match="rope_theta must be positive"):
        sink_attention(*args, 3, 3, rope_theta=-1.0)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        sink_attention(None, *args[1:], 3, 3)


@needs_extension
@pytest.mark.parametrize("index", range(7))
def test_one_meta_tensor_is_refused(index):
    """A direct call mixing meta with CPU tensors dispatches to the fake kernel, which must
    refuse it instead of returning uninitialised memory."""
    args = _valid_args(torch.device("cpu"))
    args[index] = torch.empty_like(args[index], device="meta")
    with pytest.raises((RuntimeError, ValueError), match="must be on the device of q"):
        torch.ops.stream_r1_fast.sink_attention(*args, 3, 3, 0.125, 10000.0)


@pytest.mark.parametrize("grid", [(2**32, 2**32), (2**31, 1), (2**63 - 1, 2)])
def test_huge_grids_are_refused_not_wrapped(grid):
    """grid_h * grid_w beyond int32 (2^32 * 2^32 wrapped to 0 and divided by it)."""
    args = _valid_args(torch.device("cpu"))
    with pytest.raises(ValueError, match="grid_"):
        sink_attention(*args, *grid)
    if use_kernel("sink_attention", "cpu"):
        with pytest.raises(RuntimeError, match="grid_"):
            torch.ops.stream_r1_fast.sink_attention(*args, *grid, 0.125, 10000.0)
