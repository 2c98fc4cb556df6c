"""A kernel's CUDA code checked without a GPU: its device code compiled by the host compiler
with host stand-ins for the CUDA built-ins (tests/cuda_emulation/common/cuda_utils.h, first on
the include path), and every thread of the launch the extension plans run in turn on the
CPU, on the params bytes the planner returns (what the nvcc and NVRTC launchers launch).

rotated_cache_advance's kernels (float32 and float64, every access width, buffers and chunks
off alignment): bit for bit the reference, over every fill state, with the threads in launch
order and reversed (two threads sharing an element would make the orders disagree). The
16-bit types differ only in the conversions every op's kernels share; on a GPU,
tests/test_rotated_cache_advance.py runs them all.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stream_r1_fast import _op_table, backend_info
from stream_r1_fast.nvrtc import _launch
from stream_r1_fast.ops.rotated_cache_ref import rotated_cache_advance_ref
from test_rotated_cache_advance import Buffers, advance_cases

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
