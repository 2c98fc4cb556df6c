"""A kernel's CUDA code checked without a GPU: its device code compiled by the host compiler
with host stand-ins for the CUDA built-ins (tests/cuda_emulation/common/cuda_utils.h, first on
the include path), and every thread of the launch the extension plans run in turn on the
CPU, on the params bytes the planner returns (what the nvcc and NVRTC launchers launch).

rotated_cache_advance's kernels (float32 and float64, every access width, buffers and chunks
off alignment): bit for bit the reference, over every fill state, with the threads in launch
order and reversed (two threads sharing an element would make the orders disagree). The
16-bit types differ only in the conversions every op's kernels share; on a GPU,
tests/test_rotated_cache_advance.py runs them all.

dense_attention's kernels (fp16 and bf16, D 64 and 128) are warp-wide code: each block's
threads run as fibers (tests/cuda_emulation/dense_attention_emulation.cpp) that meet at every
ldmatrix, mma.sync, shuffle and barrier, which the emulator runs for the whole warp with the PTX
ISA's fragment layouts (the kernel's PTX wrappers have host stand-ins,
tests/cuda_emulation/dense_attention/); their results are held to the CUDA tests' bound.

qk_norm_rope's kernels (float32 and float64, every access width, rows of one warp to 8 warps
with columns beyond the register-cached ones): each block's threads run as fibers
(tests/cuda_emulation/qk_norm_rope_emulation.cpp) that meet at every shuffle and barrier of the
row's block reduction; held to the CPU kernel's bound against the reference.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_r1_fast import _op_table, backend_info
from stream_r1_fast.nvrtc import _launch
from stream_r1_fast.ops.dense_attention_ref import dense_attention_ref
from stream_r1_fast.ops.qk_norm_rope_ref import qk_norm_rope_ref
from stream_r1_fast.ops.rotated_cache_ref import rotated_cache_advance_ref
from test_dense_attention_op import attention_cases as dense_cases
from test_dense_attention_op import make_inputs as make_dense_inputs
from test_qk_norm_rope import TOL as NORM_ROPE_TOL
from test_qk_norm_rope import make_inputs as make_norm_rope_inputs
from test_qk_norm_rope import norm_rope_cases
from test_rotated_cache_advance import Buffers, advance_cases
from tests.tolerances import assert_fa_close

HERE = Path(__file__).resolve().parent / "cuda_emulation"
pytestmark = [
    pytest.mark.skipif(shutil.which("c++") is None, reason="no host C++ compiler"),
    pytest.mark.skipif(backend_info().name != "extension", reason="the planner is the extension's"),
]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    lib = tmp_path_factory.mktemp("emulation") / "rotated_cache_emulation.so"
    subprocess.run(["c++", "-std=c++17", "-O1", "-shared", "-fPIC", "-ffp-contract=off", f"-I{HERE}",
                    f"-I{_op_table.source_dir()}", str(HERE / "rotated_cache_emulation.cpp"), "-o", str(lib)],
                   check=True)
    fn = ctypes.CDLL(str(lib)).emulate_launch
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int]
    return fn


def _emulate(emulator, args, reversed_order: bool) -> list[str]:
    """Runs the planned launches of ``args`` on the CPU; the kernels' names."""
    _, _, params, flat = _launch.plan("rotated_cache_advance", *args, device_type="cpu")
    raw = params.numpy().tobytes()
    names = []
    for kernel, grid, block, _ in _launch.launches(flat):
        assert emulator(raw, kernel, grid[0], grid[1], block[0], int(reversed_order)) == 0
        names.append(_launch.spec("rotated_cache_advance").names[kernel])
    return names


def _shifted(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A copy of t starting ``offset`` elements past an aligned address."""
    out = torch.empty(t.numel() + offset, dtype=t.dtype)[offset:].view(t.shape)
    return out.copy_(t)


@given(case=advance_cases().map(lambda c: {**c, "dtype": torch.float64 if c["dtype"] == torch.float64
                                           else torch.float32}),
       offsets=st.tuples(st.sampled_from([0, 0, 1, 2]), st.sampled_from([0, 1])), reversed_order=st.booleans())
def test_cuda_kernel_emulated_matches_reference(emulator, case, offsets, reversed_order):
    gen = torch.Generator().manual_seed(case["seed"])
    ref = Buffers(case["batch"], case["grid"], case["heads"], case["head_dim"], case["sink"], case["window"],
                  case["chunk"], case["dtype"], "cpu", gen)
    keys, values = _shifted(ref.keys, offsets[0]), _shifted(ref.values, offsets[0])
    m, slots, kernels = case["start"], case["sink"] + case["window"], set()
    for step, f in enumerate(case["frames"]):
        b, _, p, h, d = keys.shape
        k_new = _shifted(torch.randn(b, f * p, h, d, generator=gen, dtype=case["dtype"]), offsets[1])
        v_new = torch.randn(b, f * p, h, d, generator=gen, dtype=case["dtype"])
        kernels.update(_emulate(emulator, (keys, values, *ref.args(k_new, v_new, m, case["alpha"])[2:]),
                                reversed_order))
        rotated_cache_advance_ref(*ref.args(k_new, v_new, m, case["alpha"]))
        assert torch.equal(keys, ref.keys) and torch.equal(values, ref.values), f"step {step}, m={m}, F={f}, {kernels}"
        m = min(m + f, slots)
    assert len(kernels) == 1 and "advance_kernel<" in kernels.pop()


def test_every_access_width_is_emulated(emulator):
    """The cases above reach each float kernel: 16, 8 and 4 bytes (float), 16 and 8 (double)."""
    seen = set()
    for dtype, d, offset in [(torch.float32, 64, 0), (torch.float32, 10, 0), (torch.float32, 64, 1),
                             (torch.float64, 64, 0), (torch.float64, 64, 1)]:
        bufs = Buffers(1, (1, 3), 2, d, 1, 2, 1, dtype, "cpu", torch.Generator().manual_seed(0))
        k_new = _shifted(torch.randn(1, 3, 2, d, dtype=dtype), offset)
        seen.update(_emulate(emulator, bufs.args(k_new, k_new.clone(), 3, 0.5), False))
    assert seen == {f"srf::rotated_cache::advance_kernel<{t}, {w}>" for t, w in
                    [("float", 16), ("float", 8), ("float", 4), ("double", 16), ("double", 8)]}


# ---- dense_attention: warp-wide code, threads as fibers -------------------------------------------


@pytest.fixture(scope="module")
def dense_emulator(tmp_path_factory):
    lib = tmp_path_factory.mktemp("emulation") / "dense_attention_emulation.so"
    subprocess.run(["c++", "-std=c++17", "-O1", "-shared", "-fPIC", f"-I{HERE}", f"-I{_op_table.source_dir()}",
                    str(HERE / "dense_attention_emulation.cpp"), "-o", str(lib)], check=True)
    fn = ctypes.CDLL(str(lib)).emulate_launch
    fn.restype = ctypes.c_char_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                   ctypes.c_int, ctypes.c_int]
    return fn


def _emulate_dense(emulator, q, k, v, scale, early_copies: bool):
    """(out, lse, kernel name) of the planned launch run on the CPU; out and lse start as NaN."""
    (out, lse), _, params, flat = _launch.plan("dense_attention", q, k, v, scale, device_type="cpu")
    out.fill_(float("nan"))
    lse.fill_(float("nan"))
    raw = params.numpy().tobytes()
    (kernel, grid, block, smem), = _launch.launches(flat)
    failure = emulator(raw, kernel, *grid, block[0], smem, int(early_copies))
    assert failure is None, failure.decode()
    return out, lse, _launch.spec("dense_attention").names[kernel]


@settings(max_examples=12)
@given(case=dense_cases(dtypes=(torch.float16, torch.bfloat16)), early_copies=st.booleans())
def test_dense_attention_cuda_kernel_emulated_matches_reference(dense_emulator, case, early_copies):
    """The CUDA kernel's device code as it is (only its PTX wrappers and the CUDA built-ins are
    host stand-ins: tests/cuda_emulation/), every block of the plan, its 256 threads as fibers
    meeting at each ldmatrix / mma.sync / shuffle / barrier; cp.async landing at the wait or at
    issue; no ldmatrix bank conflict (the swizzle). Within the CUDA tests' bound of the float64
    reference, tails and strided batches included; every row written (out and lse start as NaN)."""
    q, k, v = make_dense_inputs(case, "cpu")
    d = case["head_dim"]
    out, lse, name = _emulate_dense(dense_emulator, q, k, v, d ** -0.5, early_copies)
    ctype = "__half" if case["dtype"] == torch.float16 else "__nv_bfloat16"
    assert name == f"srf::dense_attention::fwd_kernel<{ctype}, {d}>"
    same_out, same_lse = dense_attention_ref(q, k, v, d ** -0.5)
    true_out, true_lse = dense_attention_ref(q.double(), k.double(), v.double(), d ** -0.5)
    assert_fa_close(out, same_out, true_out, case["dtype"], "out")
    assert_fa_close(lse, same_lse, true_lse.float(), case["dtype"], "lse")


@pytest.mark.parametrize("head_dim", [64, 128])
def test_dense_attention_emulated_on_copies_and_negative_scale(dense_emulator, head_dim):
    """A view 2 bytes off alignment (the planner's copy is what runs), two query blocks, a key
    tail, and a negative scale (the mask is applied after the scale)."""
    gen = torch.Generator().manual_seed(head_dim)
    base = torch.randn(1 * 140 * 2 * head_dim + 1, generator=gen).to(torch.bfloat16)
    q = base[1:].view(1, 140, 2, head_dim)
    k, v = (torch.randn(1, 77, 2, head_dim, generator=gen).to(torch.bfloat16) for _ in "kv")
    out, lse, _ = _emulate_dense(dense_emulator, q, k, v, -0.2, False)
    same_out, same_lse = dense_attention_ref(q, k, v, -0.2)
    true_out, true_lse = dense_attention_ref(q.double(), k.double(), v.double(), -0.2)
    assert_fa_close(out, same_out, true_out, torch.bfloat16, "out")
    assert_fa_close(lse, same_lse, true_lse.float(), torch.bfloat16, "lse")


# ---- qk_norm_rope: a block reduction, threads as fibers -------------------------------------------


@pytest.fixture(scope="module")
def norm_rope_emulator(tmp_path_factory):
    lib = tmp_path_factory.mktemp("emulation") / "qk_norm_rope_emulation.so"
    subprocess.run(["c++", "-std=c++17", "-O1", "-shared", "-fPIC", "-ffp-contract=off", f"-I{HERE}",
                    f"-I{_op_table.source_dir()}", str(HERE / "qk_norm_rope_emulation.cpp"), "-o", str(lib)],
                   check=True)
    fn = ctypes.CDLL(str(lib)).emulate_launch
    fn.restype = ctypes.c_char_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int,
                   ctypes.c_int]
    return fn


def _emulate_norm_rope(emulator, args, reversed_order: bool):
    """(q_out, k_out, kernel name, threads) of the planned launch run on the CPU; the outputs start
    as NaN."""
    (q_out, k_out), _, params, flat = _launch.plan("qk_norm_rope", *args, device_type="cpu")
    q_out.fill_(float("nan"))
    k_out.fill_(float("nan"))
    (kernel, grid, block, smem), = _launch.launches(flat)
    failure = emulator(params.numpy().tobytes(), kernel, grid[0], grid[1], block[0], smem, int(reversed_order))
    assert failure is None, failure.decode()
    return q_out, k_out, _launch.spec("qk_norm_rope").names[kernel], block[0]


@settings(max_examples=12, deadline=None)
@given(case=norm_rope_cases(dtypes=(torch.float32, torch.float64)), offset=st.sampled_from([0, 0, 1]),
       reversed_order=st.booleans())
def test_qk_norm_rope_cuda_kernel_emulated_matches_reference(norm_rope_emulator, case, offset, reversed_order):
    q, k, wq, wk, cos, sin, m, eps = make_norm_rope_inputs(case, "cpu")
    q, k = _shifted(q, offset), _shifted(k, offset)  # off 16-byte alignment: the narrower kernels
    q_out, k_out, name, _ = _emulate_norm_rope(norm_rope_emulator, (q, k, wq, wk, cos, sin, m, eps), reversed_order)
    assert name.startswith(f"srf::qk_norm_rope::norm_rope_kernel<{'double' if q.dtype == torch.float64 else 'float'}")
    want_q, want_k = qk_norm_rope_ref(q, k, wq, wk, cos, sin, m, eps)
    rtol, atol = NORM_ROPE_TOL[q.dtype]
    torch.testing.assert_close(q_out, want_q, rtol=rtol, atol=atol)
    torch.testing.assert_close(k_out, want_k, rtol=rtol, atol=atol)


def test_qk_norm_rope_emulated_multi_warp_and_cached_columns(norm_rope_emulator):
    """A row of more columns than kCached * 256 (float32, H * D = 5120 as in Wan 14B: 8 warps, columns
    read twice), and every float access width."""
    seen = set()
    for h, d, offset in [(40, 128, 0), (3, 10, 0), (2, 64, 1), (1, 6, 0)]:
        case = dict(batch=1, frames=1, table_frames=2, frame_offset=1, grid=(1, 3), heads=h, head_dim=d,
                    dtype=torch.float32, wide_weights=False, scale=1.0, eps=1e-6, seed=h)
        q, k, wq, wk, cos, sin, m, eps = make_norm_rope_inputs(case, "cpu")
        q, k = _shifted(q, offset), _shifted(k, offset)
        q_out, k_out, name, threads = _emulate_norm_rope(norm_rope_emulator, (q, k, wq, wk, cos, sin, m, eps), False)
        seen.add(name)
        want_q, want_k = qk_norm_rope_ref(q, k, wq, wk, cos, sin, m, eps)
        torch.testing.assert_close(q_out, want_q, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(k_out, want_k, rtol=1e-5, atol=1e-5)
        if h == 40:
            assert threads == 256
    assert seen == {f"srf::qk_norm_rope::norm_rope_kernel<float, {w}>" for w in (16, 8, 4)}
