"""dense_attention (our FlashAttention-2-class op): the CPU kernel against the float64
reference with hypothesis shapes (odd lengths, tails of the 64 / 128-key tiles, strided batch
rows as the rotated cache passes them), schema / fake / autograd plumbing (opcheck, gradcheck
in float64), input checks, the "ours" backend's registration, the CUDA kernel at the
streaming shapes (skipped without a GPU) and, where nvcc is installed, ptxas' report of the
CUDA kernels: no register spills."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_r1_fast._backend import backend_info, use_kernel
from stream_r1_fast.ops import dense_attention as backends
from stream_r1_fast.ops import fused_dense_attention
from stream_r1_fast.ops.dense_attention_op import cuda_kernel_takes, dense_attention_backward, why_not_cuda
from stream_r1_fast.ops.dense_attention_ref import dense_attention_ref
from tests.tolerances import assert_fa_close

HAS_EXTENSION = backend_info().name == "extension"
HAS_CUDA = torch.cuda.is_available()
FIXTURE_OK = settings(suppress_health_check=[*settings().suppress_health_check, HealthCheck.function_scoped_fixture])
needs_extension = pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not loaded")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
ROOT = Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)


@st.composite
def attention_cases(draw, dtypes=(torch.float32, torch.float16, torch.bfloat16)):
    return dict(
        batch=draw(st.sampled_from([1, 3])),
        q_len=draw(st.sampled_from([1, 7, 63, 129, 130])),
        k_len=draw(st.sampled_from([1, 5, 64, 65, 127, 191, 257])),
        heads=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from([64, 128])),
        strided=draw(st.booleans()),
        dtype=draw(st.sampled_from(list(dtypes))),
        seed=draw(st.integers(0, 2**16)),
    )


def make_inputs(case, device):
    """(q, k, v) of a case. ``strided``: k and v are prefixes of a larger [B, S, H, D] buffer
    (contiguous per batch element, batch stride S * H * D > Lk * H * D), q a head slice."""
    gen = torch.Generator().manual_seed(case["seed"])
    b, lq, lk, h, d = (case[n] for n in ("batch", "q_len", "k_len", "heads", "head_dim"))
    dtype = case["dtype"]
    if not case["strided"]:
        return tuple(torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
                     for shape in ((b, lq, h, d), (b, lk, h, d), (b, lk, h, d)))
    q = torch.randn(b, lq, h + 1, d, generator=gen).to(device=device, dtype=dtype)[:, :, 1:]
    kv = torch.randn(2, b, lk + 9, h, d, generator=gen).to(device=device, dtype=dtype)
    return q, kv[0, :, :lk], kv[1, :, :lk]


def as_float64(tensors):
    return [t.double() for t in tensors]


def op_forward(q, k, v, scale):
    """(out, lse) from the kernel of the inputs' device when it takes them, else the reference."""
    if use_kernel("dense_attention", q.device.type) and (q.device.type == "cpu" or cuda_kernel_takes(q)):
        return torch.ops.stream_r1_fast.dense_attention(q, k, v, scale)
    return dense_attention_ref(q, k, v, scale)


def check_forward(q, k, v, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out, lse = op_forward(q, k, v, scale)
    same_out, same_lse = dense_attention_ref(q, k, v, scale)
    true_out, true_lse = dense_attention_ref(*as_float64((q, k, v)), scale)
    assert out.dtype == q.dtype and lse.dtype == torch.float32 and out.is_contiguous()
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    assert_fa_close(out, same_out, true_out, q.dtype, "out")
    assert_fa_close(lse, same_lse, true_lse.float(), q.dtype, "lse")
    return out, lse


@FIXTURE_OK
@given(case=attention_cases())
def test_forward_matches_reference(device, case):
    q, k, v = make_inputs(case, device)
    if case["strided"]:
        assert k.stride(0) == (case["k_len"] + 9) * k.stride(1) and q.stride(1) == (case["heads"] + 1) * q.shape[3]
    out, _ = check_forward(q, k, v)
    assert torch.equal(fused_dense_attention(q, k, v)[0], out)  # the public function agrees


@pytest.mark.parametrize("scale", [0.0, -0.3, 2.5])
def test_any_finite_scale(device, scale):
    case = dict(batch=1, q_len=9, k_len=70, heads=2, head_dim=64, strided=False, dtype=torch.float32, seed=3)
    check_forward(*make_inputs(case, device), scale)


def test_float64_on_the_cpu_kernel_is_exact():
    case = dict(batch=3, q_len=33, k_len=65, heads=2, head_dim=16, strided=True, dtype=torch.float64, seed=5)
    q, k, v = make_inputs(case, "cpu")
    out, lse = op_forward(q, k, v, 0.25)
    want_out, want_lse = dense_attention_ref(q, k, v, 0.25)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse)


@pytest.mark.parametrize("shape", [(1, 4, 0, 2, 64), (2, 0, 5, 2, 64), (1, 3, 4, 2, 0)], ids=str)
def test_empty_inputs_give_the_references_values(device, shape):
    b, lq, lk, h, d = shape
    q, k, v = torch.randn(b, lq, h, d, device=device), torch.randn(b, lk, h, d, device=device), torch.randn(b, lk, h, d, device=device)
    out, lse = op_forward(q, k, v, 0.5)
    want_out, want_lse = dense_attention_ref(q, k, v, 0.5)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(lse, want_lse)


def test_gradcheck_float64():
    """The registered backward (the kernel path on CPU, which takes float64) against finite
    differences, with gradients flowing into out and lse."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True)
               for s in ((2, 5, 2, 8), (2, 7, 2, 8), (2, 7, 2, 8)))
    k_strided = torch.randn(2, 11, 2, 8, generator=gen, dtype=torch.float64)[:, :7].requires_grad_()

    def f(q, k, v):
        out, lse = fused_dense_attention(q, k, v, 0.4)
        return out, lse.double() if q.dtype == torch.float64 and lse.dtype != torch.float64 else lse

    # lse is float32 by the schema: check out's gradient fully, lse's through the formula below.
    assert torch.autograd.gradcheck(lambda q, k, v: fused_dense_attention(q, k, v, 0.4)[0], (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: fused_dense_attention(q, k, v, 0.4)[0], (q, k_strided, v))
    assert f(q, k, v)[1].shape == (2, 2, 5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backward_formula_with_lse_gradient(dtype):
    """dense_attention_backward with both gradients (out and lse) against autograd through the
    reference."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(s, generator=gen, dtype=dtype) for s in ((2, 6, 3, 16), (2, 9, 3, 16), (2, 9, 3, 16)))
    g_out, g_lse = torch.randn(2, 6, 3, 16, generator=gen, dtype=dtype), torch.randn(2, 3, 6, generator=gen)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = dense_attention_ref(*leaves, 0.3)
    want = torch.autograd.grad((out * g_out).sum() + (lse * g_lse).sum(), leaves)
    got = dense_attention_backward(g_out, g_lse, q, k, v, 0.3)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    got_out_only = dense_attention_backward(g_out, None, q, k, v, 0.3)
    want_out_only = torch.autograd.grad((dense_attention_ref(*leaves, 0.3)[0] * g_out).sum(), leaves)
    for g, w in zip(got_out_only, want_out_only):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@settings(FIXTURE_OK, max_examples=8)
@given(case=attention_cases())
def test_gradients_match_reference(device, case):
    q, k, v = make_inputs(case, device)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(case["seed"] + 1)).to(device=device, dtype=q.dtype)

    def grads(fn, tensors):
        leaves = [t.detach().requires_grad_() for t in tensors]
        return torch.autograd.grad(fn(*leaves), leaves, grad_out.to(leaves[0].dtype))

    got = grads(lambda *t: fused_dense_attention(*t)[0], (q, k, v))
    same = grads(lambda *t: dense_attention_ref(*t)[0], (q, k, v))
    truth = grads(lambda *t: dense_attention_ref(*t)[0], as_float64((q, k, v)))
    for name, g, s, t in zip(("dq", "dk", "dv"), got, same, truth):
        assert g.dtype == q.dtype
        assert_fa_close(g, s, t, q.dtype, name)


@needs_extension
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if not use_kernel("dense_attention", device.type):
        pytest.skip("no kernel for this device")
    case = dict(batch=2, q_len=9, k_len=70, heads=2, head_dim=64, strided=True, dtype=dtype, seed=2)
    q, k, v = (t.detach().requires_grad_(requires_grad) for t in make_inputs(case, device))
    torch.library.opcheck(torch.ops.stream_r1_fast.dense_attention.default, (q, k, v, 0.125))


def test_torch_compile_fullgraph(device):
    case = dict(batch=1, q_len=9, k_len=20, heads=2, head_dim=64, strided=False, dtype=torch.float32, seed=4)
    inputs = make_inputs(case, device)

    def run(fn):
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.square().sum().backward()
        return out.detach(), [t.grad for t in leaves]

    def f(q, k, v):
        return fused_dense_attention(q, k, v)[0] * 2.0

    torch._dynamo.reset()
    out_c, grads_c = run(torch.compile(f, fullgraph=True, backend="aot_eager"))
    out_e, grads_e = run(f)
    torch.testing.assert_close(out_c, out_e)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge)


def _good():
    return [torch.randn(1, 6, 2, 64), torch.randn(1, 9, 2, 64), torch.randn(1, 9, 2, 64)]


@pytest.mark.parametrize("what, mutate, message", [
    ("rank", lambda a: a.__setitem__(0, a[0][0]), r"q must have 4 dimensions \[B, Lq, H, D\]"),
    ("dtype", lambda a: a.__setitem__(1, a[1].half()), r"k must have the dtype of q"),
    ("int dtype", lambda a: a.__setitem__(0, a[0].int()), r"q must be float64, float32, float16 or bfloat16"),
    ("heads", lambda a: a.__setitem__(1, torch.randn(1, 9, 3, 64)), r"k must have shape \[B, Lk, H, D\] = \[1, Lk, 2, 64\]"),
    ("v shape", lambda a: a.__setitem__(2, torch.randn(1, 8, 2, 64)), r"v must have the shape of k"),
    ("last dim", lambda a: a.__setitem__(2, torch.randn(1, 9, 2, 128)[..., ::2]), r"v must be contiguous in its last dimension"),
])
def test_bad_inputs_raise_clear_errors(what, mutate, message):
    args = _good()
    mutate(args)
    with pytest.raises(ValueError, match=message):
        fused_dense_attention(*args)
    if HAS_EXTENSION:  # direct calls: the C++ checks, RuntimeError naming the same argument
        name = message.split()[0].lstrip("r")
        with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
            torch.ops.stream_r1_fast.dense_attention(*args, 0.125)


def test_bad_scalars_and_types():
    args = _good()
    for scale, exc in ((float("nan"), ValueError), (float("inf"), ValueError), ("1", TypeError), (True, TypeError)):
        with pytest.raises(exc, match="scale"):
            fused_dense_attention(*args, scale)
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        fused_dense_attention(args[0], None, args[2])
    with pytest.raises(ValueError, match="heads"):
        fused_dense_attention(torch.randn(1, 2, 70000, 0), torch.randn(1, 2, 70000, 0), torch.randn(1, 2, 70000, 0))


@needs_extension
def test_one_meta_tensor_is_refused():
    args = _good()
    args[1] = torch.empty(1, 9, 2, 64, device="meta")
    with pytest.raises((RuntimeError, ValueError), match=r"\bk\b"):
        torch.ops.stream_r1_fast.dense_attention(*args, 0.125)


def test_ours_is_a_backend_only_where_its_kernel_runs():
    assert "ours" in backends.BACKENDS
    names, skipped = backends.available_backends(torch.device("cpu"))
    assert "ours" not in names and skipped["ours"] == "CUDA only"
    assert backends._OWN["ours"][1] is why_not_cuda
    why = why_not_cuda(torch.float32, 128)
    if use_kernel("dense_attention", "cuda"):
        assert why == "the kernel takes float16 / bfloat16, not float32"
        assert why_not_cuda(torch.bfloat16, 96) == "the kernel takes head_dim 64 or 128, not 96"
        assert why_not_cuda(torch.bfloat16, 128) is None and why_not_cuda(None, None) is None
    else:
        assert "no CUDA kernel" in why
    with pytest.raises(ValueError, match="'mine' is not one of this package's attention backends"):
        backends.register_own_backend("mine", None, None)
    # The backend runs the op in the cache layout (here: whichever path the CPU takes).
    q = torch.randn(1, 6, 2, 64)
    torch.testing.assert_close(backends._OWN["ours"][0](q, q, q), dense_attention_ref(q, q, q)[0])


# ---- the CUDA kernel ------------------------------------------------------------------------


def _check_cuda_case(b, lq, lk, h, d, dtype, strided=False, seed=0):
    case = dict(batch=b, q_len=lq, k_len=lk, heads=h, head_dim=d, strided=strided, dtype=dtype, seed=seed)
    q, k, v = make_inputs(case, torch.device("cuda"))
    assert cuda_kernel_takes(q), "the CUDA kernel must run these inputs"
    out, lse = torch.ops.stream_r1_fast.dense_attention(q, k, v, d ** -0.5)
    # Per head: the float64 reference of one head at Lq 4680 x Lk 14040 is 0.5 GB.
    for i in range(h):
        sl = (slice(None), slice(None), slice(i, i + 1))
        same_out, same_lse = dense_attention_ref(q[sl], k[sl], v[sl], d ** -0.5)
        true_out, true_lse = dense_attention_ref(*as_float64((q[sl], k[sl], v[sl])), d ** -0.5)
        assert_fa_close(out[sl], same_out, true_out, dtype, f"out head {i}")
        assert_fa_close(lse[:, i:i + 1], same_lse, true_lse.float(), dtype, f"lse head {i}")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("lk", [4680, 9360, 14040])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cuda_streaming_shapes(lk, dtype):
    _check_cuda_case(1, 4680, lk, 12, 128, dtype)


@pytest.mark.cuda
@needs_cuda
@settings(max_examples=30, deadline=None)
@given(case=attention_cases(dtypes=(torch.float16, torch.bfloat16)))
def test_cuda_odd_shapes(case):
    _check_cuda_case(case["batch"], case["q_len"], case["k_len"], case["heads"], case["head_dim"], case["dtype"],
                     case["strided"], case["seed"])


@pytest.mark.cuda
@needs_cuda
def test_cuda_misaligned_view_is_copied_and_float32_uses_the_reference():
    q = torch.randn(1 * 70 * 2 * 64 + 1, device="cuda", dtype=torch.bfloat16)[1:].view(1, 70, 2, 64)
    k = torch.randn(1, 130, 2, 64, device="cuda", dtype=torch.bfloat16)
    check_forward(q, k, k.clone())
    x = torch.randn(1, 70, 2, 64, device="cuda")
    assert not cuda_kernel_takes(x)
    torch.testing.assert_close(fused_dense_attention(x, x, x)[0], dense_attention_ref(x, x, x)[0])


# ---- ptxas: no spills -------------------------------------------------------------------------

PTXAS_LINE = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+a?)'")
SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


def ptxas_report(arch: str, tmp_path: Path) -> dict[str, tuple[int, int, int, int]]:
    """{kernel: (registers, stack, spill stores, spill loads)} of every instantiation, from
    nvcc -Xptxas -v on the kernel file (the instantiations of dense_attention_launch.cu)."""
    src = tmp_path / "probe.cu"
    src.write_text((ROOT / "csrc/dense_attention/dense_attention_launch.cu").read_text())
    res = subprocess.run([NVCC, "-std=c++17", "-O3", f"-arch={arch}", f"-I{ROOT / 'csrc'}", "-Xptxas", "-v",
                          "-c", str(src), "-o", str(tmp_path / "probe.o")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report, current = {}, None
    for line in res.stderr.splitlines():
        if m := PTXAS_LINE.search(line):
            current = m.group(1) if "fwd_kernel" in m.group(1) else None
        elif current and (m := SPILLS.search(line)):
            report[current] = tuple(int(x) for x in m.groups())
        elif current and (m := REGISTERS.search(line)):
            report[current] = (int(m.group(1)), *report[current])
    return report


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_cuda_kernels_do_not_spill(arch, tmp_path):
    report = ptxas_report(arch, tmp_path)
    assert len(report) == 4, report  # fp16 / bf16 x D 64 / 128
    for kernel, (registers, stack, stores, loads) in report.items():
        assert (stack, stores, loads) == (0, 0, 0), f"{kernel} on {arch}: {registers} registers, {stack} B stack, {stores} B spill stores"
        assert registers <= 255, kernel
