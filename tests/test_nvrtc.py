"""The NVRTC path: selection and its reasons, the disk-cache key, the shipped kernel sources and
their NVRTC compilation (no GPU needed), the params-struct layout, sink_attention's launch
(kernels stubbed); on a GPU, the ops' own tests run on the NVRTC kernels and agree with the
compiled ones."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings

import stream_r1_fast
from stream_r1_fast import _backend, _op_table, nvrtc
from stream_r1_fast._backend import BACKEND_ENV, EXTENSION_ENV
from stream_r1_fast.nvrtc import _compile, _launch
from stream_r1_fast.ops.ema_cache import new_sink_cache
from test_dense_attention_op import attention_cases as dense_cases
from test_dense_attention_op import make_inputs as make_dense_inputs
from test_ema_cache import _chunk, cache_cases
from test_qk_norm_rope import TOL as NORM_ROPE_TOL
from test_qk_norm_rope import make_inputs as make_norm_rope_inputs
from test_qk_norm_rope import norm_rope_cases
from test_rotated_cache_advance import Buffers, advance_cases
from test_rotated_cache_advance import _chunk as advance_chunk
from test_saliency import problems
from test_sink_attention import attention_cases, make_inputs

HAS_CUDA = torch.cuda.is_available()
HAS_CUPY = importlib.util.find_spec("cupy") is not None
HAS_EXTENSION = stream_r1_fast.backend_info().name == "extension"
needs_extension = pytest.mark.skipif(not HAS_EXTENSION, reason="compiled extension not loaded")
# The NVRTC units of every op (kernel names and params size come from the extension).
SPECS = [_launch.spec(op) for op in nvrtc.KERNEL_OPS] if HAS_EXTENSION else []
HAS_CXX = shutil.which("c++") is not None
TESTS_DIR = Path(__file__).resolve().parent


def _run(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=1200, cwd=TESTS_DIR.parent)


# ---- selection ------------------------------------------------------------------------------


NOT_ATTN = tuple(op for op in nvrtc.KERNEL_OPS if op != "sink_attention")
NO_MMA = {"sink_attention": "CUDA headers not found: crt/mma.h"}


@pytest.mark.parametrize(
    "choice, compiled, unavailable, expected",
    [
        ("auto", set(_backend.OPS), None, ("compiled", (), "compiled CUDA kernels present")),
        ("auto", set(), None, ("nvrtc", nvrtc.KERNEL_OPS, "no compiled CUDA kernels")),
        ("auto", set(), "no CUDA device", ("reference", (), "no CUDA device")),
        ("extension", {"sink_attention"}, None, ("nvrtc", NOT_ATTN, "no compiled CUDA kernels")),
        ("auto", {"sink_attention", "saliency_weights"}, "CuPy is not installed",
         ("compiled", (), "CuPy is not installed")),
        ("nvrtc", set(_backend.OPS), None,
         ("nvrtc", nvrtc.KERNEL_OPS, f"forced by {BACKEND_ENV}=nvrtc")),
        # An op whose CUDA headers are missing keeps its compiled kernel or the reference.
        ("auto", set(), NO_MMA,
         ("nvrtc", NOT_ATTN, "no compiled CUDA kernels; no NVRTC kernels for sink_attention: "
                             "CUDA headers not found: crt/mma.h")),
        ("auto", set(NOT_ATTN), NO_MMA,
         ("compiled", (), "sink_attention: CUDA headers not found: crt/mma.h")),
    ],
)
def test_cuda_path_selection(monkeypatch, choice, compiled, unavailable, expected):
    """``unavailable``: the process-wide reason, or {op: reason} for ops lacking headers."""
    per_op = unavailable if isinstance(unavailable, dict) else {}
    monkeypatch.setattr(_backend, "_has_kernel", lambda op, key: key == "CUDA" and op in compiled)
    monkeypatch.setattr(nvrtc, "unavailable_reason", lambda: None if per_op else unavailable)
    monkeypatch.setattr(nvrtc, "op_unavailable_reason", per_op.get)
    assert _backend._cuda_path(choice) == expected


def test_forced_nvrtc_that_cannot_run_raises(monkeypatch):
    monkeypatch.setattr(_backend, "_has_kernel", lambda op, key: False)
    monkeypatch.setattr(nvrtc, "unavailable_reason", lambda: "no CUDA device")
    with pytest.raises(ImportError, match="STREAM_R1_FAST_BACKEND=nvrtc but NVRTC kernels cannot run here: no CUDA device"):
        _backend._cuda_path("nvrtc")
    monkeypatch.setattr(nvrtc, "unavailable_reason", lambda: None)
    monkeypatch.setattr(nvrtc, "op_unavailable_reason", NO_MMA.get)
    with pytest.raises(ImportError, match="cannot run here: sink_attention: CUDA headers not found: crt/mma.h"):
        _backend._cuda_path("nvrtc")


def test_missing_cuda_headers_are_named(monkeypatch, tmp_path):
    """Only the runtime headers (torch's pip dependencies): sink_attention lacks crt/mma.h."""
    (tmp_path / "cuda_fp16.h").touch()
    (tmp_path / "cuda_bf16.h").touch()
    monkeypatch.setattr(_compile, "_header_roots", lambda: [tmp_path])
    assert _compile.find_cuda_headers(()) == ((str(tmp_path),), ())
    assert _compile.find_cuda_headers(("crt/mma.h",)) == ((str(tmp_path),), ("crt/mma.h",))
    assert nvrtc.op_unavailable_reason("ema_cache_update") is None
    why = nvrtc.op_unavailable_reason("sink_attention")
    assert "crt/mma.h" in why and "nvidia-cuda-crt" in why, why
    toolkit = tmp_path / "toolkit"
    (toolkit / "crt").mkdir(parents=True)
    (toolkit / "crt" / "mma.h").touch()
    monkeypatch.setattr(_compile, "_header_roots", lambda: [tmp_path, toolkit])
    assert _compile.find_cuda_headers(("crt/mma.h",)) == ((str(tmp_path), str(toolkit)), ())
    assert nvrtc.op_unavailable_reason("sink_attention") is None


def test_unavailable_reasons(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert nvrtc.unavailable_reason() == "no CUDA device"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "cupy" else real_find_spec(name))
    assert "CuPy is not installed" in nvrtc.unavailable_reason()


def test_this_process_reports_its_cuda_path():
    info = stream_r1_fast.backend_info()
    if info.name != "extension":
        pytest.skip("no extension")
    assert info.cuda_path in ("compiled", "nvrtc", "reference"), info
    assert info.nvrtc_reason, info
    lacking = [op for op in nvrtc.KERNEL_OPS if not _backend._has_kernel(op, "CUDA")]
    if not HAS_CUDA and lacking:
        assert info.cuda_path != "nvrtc" and info.nvrtc_reason == "no CUDA device", info
        if info.cpu_kernels:
            assert "NVRTC kernels unavailable: no CUDA device" in str(info)
    for op in info.nvrtc_ops:  # the public ops dispatch to the registered NVRTC kernels
        assert _backend.use_kernel(op, "cuda")


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is present")
def test_forcing_nvrtc_without_gpu_fails_clearly():
    if stream_r1_fast.backend_info().name != "extension":
        pytest.skip("no extension")
    res = _run(["-c", "import stream_r1_fast.ops"], **{BACKEND_ENV: "nvrtc"})
    assert res.returncode != 0
    assert "STREAM_R1_FAST_BACKEND=nvrtc but NVRTC kernels cannot run here: no CUDA device" in res.stderr


def test_forcing_nvrtc_without_extension_fails_clearly():
    res = _run(["-c", "import stream_r1_fast.ops"], **{BACKEND_ENV: "nvrtc", EXTENSION_ENV: "/nonexistent/_C.so"})
    assert res.returncode != 0
    assert "STREAM_R1_FAST_BACKEND=nvrtc but the compiled extension cannot be loaded" in res.stderr


# ---- sources, cache key, layout ---------------------------------------------------------------


@needs_extension
def test_kernel_sources_are_found_and_torch_free():
    root = _compile.source_dir()
    assert root is not None
    for spec in SPECS:
        files = _compile.dependencies(spec.source(), root)
        assert spec.header in files and "common/cuda_utils.h" in files, files
        for rel in files:
            text = (root / rel).read_text()
            assert not re.search(r"#include [<\"](ATen|torch|c10)/", text), f"{rel} includes torch"


@needs_extension
def test_kernel_names_and_params_come_from_the_extension():
    """Every op of the op table has a planner in the extension, whose kernels live in the op's
    namespace and whose params are whole 8-byte words (how the launcher passes them)."""
    assert set(nvrtc.KERNEL_OPS) == set(_backend.OPS)
    for op, spec in zip(nvrtc.KERNEL_OPS, SPECS):
        folder = _op_table.op(op).folder
        assert spec.header == f"{folder}/{folder}_kernels.cuh" and spec.params_type == f"srf::{folder}::Params"
        assert spec.names and all(n.startswith(f"srf::{folder}::") for n in spec.names), spec.names
        assert spec.params_bytes > 0 and spec.params_bytes % 8 == 0


def test_op_table_parses():
    text = "# comment\n\nsome_op  some  cpu,nvrtc  a.h,b/c.h\nother_op other cpu -\n"
    assert _op_table.parse(text) == (_op_table.Op("some_op", "some", ("cpu", "nvrtc"), ("a.h", "b/c.h")),
                                     _op_table.Op("other_op", "other", ("cpu",), ()))
    assert _op_table.NAMES == tuple(op.name for op in _op_table.OPS) == _backend.OPS


@needs_extension
def test_cache_key_changes_with_every_input(tmp_path):
    root = tmp_path / "csrc"
    shutil.copytree(_compile.source_dir(), root)
    spec = _launch.spec("ema_cache_update")
    args = dict(source=spec.source(), files=_compile.dependencies(spec.source(), root), target="sm_90",
                options=_compile.compile_options("sm_90", root, ()), names=spec.names,
                versions={"cupy": "14.2.0", "nvrtc": "13.0"})
    base = _compile.cache_key(**args)
    assert base == _compile.cache_key(**args)
    changed = [
        dict(source=args["source"] + "// edit\n"),
        dict(target="sm_80"),
        dict(options=_compile.compile_options("sm_80", root, ())),
        dict(options=args["options"] + ("-DSRF_EXTRA",)),
        dict(names=args["names"][:-1]),
        dict(versions={"cupy": "14.2.0", "nvrtc": "13.1"}),
    ]
    for change in changed:
        assert _compile.cache_key(**{**args, **change}) != base, change
    # Editing a header the unit includes (not the unit itself) changes the key too.
    header = root / "common" / "dtype_code.h"
    header.write_text(header.read_text() + "\n// edit\n")
    files = _compile.dependencies(spec.source(), root)
    assert _compile.cache_key(**{**args, "files": files}) != base


def test_cache_dir_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv(_compile.CACHE_ENV, str(tmp_path))
    assert _compile.cache_dir() == tmp_path
    monkeypatch.delenv(_compile.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _compile.cache_dir() == tmp_path / "xdg" / "stream_r1_fast" / "nvrtc"


def test_nvrtc_target():
    supported = (75, 80, 86, 89, 90, 100, 120)
    assert _compile.nvrtc_target(90, supported) == ("sm_90", "cubin")
    assert _compile.nvrtc_target(130, supported) == ("compute_120", "ptx")
    with pytest.raises(RuntimeError, match="none usable"):
        _compile.nvrtc_target(70, supported)


def _run_cxx(tmp_path, header: str, body: str) -> list[int]:
    """Numbers printed by ``body`` (statements of main) compiled by the host compiler."""
    src = tmp_path / "probe.cpp"
    src.write_text(f'#include <cstddef>\n#include <cstdio>\n#include "{header}"\n'
                   f'int main() {{\n{body}\n}}\n')
    exe = tmp_path / "probe"
    subprocess.run(["c++", "-std=c++17", f"-I{_compile.source_dir()}", str(src), "-o", str(exe)], check=True)
    return [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]


# Fields of each op's Params the tests read back from the planner's bytes, with their types
# (the test's own decoding; the offsets come from the host compiler, which lays the struct out
# as nvcc and NVRTC do: CUDA guarantees it).
_PTR, _I32, _I64, _F32, _F64 = np.uint64, np.int32, np.int64, np.float32, np.float64
PARAMS_FIELDS = {
    "sink_attention": dict(
        q=_PTR, k=_PTR, v=_PTR, k_cache=_PTR, v_cache=_PTR, cache_pos=_PTR, q_pos=_PTR, out=_PTR,
        lse=_PTR, rope_table=_PTR, batch=_I32, q_len=_I32, heads=_I32, head_dim=_I32, slots=_I32,
        grid_h=_I32, grid_w=_I32, scale=_F32, rope_theta=_F64, dtype=_I32,
        **{f"rope.{f}": _I32 for f in ("t_pairs", "h_pairs", "w_pairs", "frames")},
        **{f"rope.{f}": _I64 for f in ("h_offset", "w_offset", "entries")}),
    "ema_cache_update": dict(
        k_cache=_PTR, v_cache=_PTR, cache_pos=_PTR, state=_PTR, k_new=_PTR, v_new=_PTR,
        batch=_I64, slots=_I64, sink_size=_I64, new_frames=_I64, frame_elems=_I64, alpha=_F32,
        one_minus_alpha=_F32, dtype=_I32),
    "saliency_weights": dict(
        saliency=_PTR, dtype=_I32, axis_weights=_PTR, axis_weights_b_stride=_I64,
        **{f: _I64 for f in ("A", "B", "T", "C", "H", "W", "F", "h", "w", "tf", "sf")},
        mode=_I32, tau_floor=_F32, sigma_floor=_F32, gamma_t=_F32, gamma_s=_F32, weights=_PTR,
        tau=_PTR, sigma=_PTR, frame_mean=_PTR, sigma_sum=_PTR),
    "rotated_cache_advance": dict(
        keys=_PTR, values=_PTR, k_new=_PTR, v_new=_PTR, cos=_PTR, sin=_PTR,
        **{f: _I64 for f in ("batch", "capacity", "tokens", "heads", "head_dim", "frame_elems", "occupied",
                             "sink_size", "window", "new_frames")},
        alpha=_F64, one_minus_alpha=_F64, dtype=_I32),
    "dense_attention": dict(
        q=_PTR, k=_PTR, v=_PTR, out=_PTR, lse=_PTR,
        **{f"{t}_{s}_stride": _I64 for t in "qkv" for s in ("batch", "row", "head")},
        batch=_I32, q_len=_I32, k_len=_I32, heads=_I32, head_dim=_I32, scale=_F32, scale_log2=_F32,
        dtype=_I32),
    "qk_norm_rope": dict(
        q=_PTR, k=_PTR, weight_q=_PTR, weight_k=_PTR, cos=_PTR, sin=_PTR, q_out=_PTR, k_out=_PTR,
        **{f: _I64 for f in ("rows", "tokens", "row_elems", "head_dim", "first_row")},
        eps=_F64, dtype=_I32, weight_wide=_I32),
}


@pytest.fixture(scope="session")
def cxx_layout(tmp_path_factory):
    """{op: (sizeof(Params), {field: offset})} from the host compiler."""
    if not HAS_CXX:
        pytest.skip("no host C++ compiler")
    out = {}
    for op, fields in PARAMS_FIELDS.items():
        folder = _op_table.op(op).folder
        t = f"srf::{folder}::Params"
        prints = "\n".join(f'  std::printf("%zu\\n", offsetof({t}, {f}));' for f in fields)
        got = _run_cxx(tmp_path_factory.mktemp(folder), f"{folder}/{folder}.h",
                       f'  std::printf("%zu\\n", sizeof({t}));\n{prints}')
        out[op] = got[0], dict(zip(fields, got[1:]))
    return out


def _decode(layout, op: str, raw: bytes) -> dict[str, object]:
    size, offsets = layout[op]
    assert len(raw) == size
    return {f: np.frombuffer(raw, dtype=t, count=1, offset=offsets[f])[0].item()
            for f, t in PARAMS_FIELDS[op].items()}


def _plan(op: str, *args):
    """The extension's plan for CPU tensors: (outputs, buffers, params bytes, launches)."""
    outputs, buffers, params, flat = _launch.plan(op, *args, device_type="cpu")
    return outputs, buffers, params.numpy().tobytes(), _launch.launches(flat)


def _sink_case(shape, dtype=torch.float32, head_dim=None):
    s, fq, gh, gw, d = shape
    return dict(batch=2, heads=3, head_dim=head_dim or d, grid_h=gh, grid_w=gw, frames=fq,
                cache_pos=list(range(s)), q_pos=s, dtype=dtype, seed=0)


# (slots, chunk frames, grid_h, grid_w, head_dim): streaming shapes and odd ones.
LAYOUT_SHAPES = [(6, 3, 30, 52, 128), (0, 1, 1, 1, 64), (5, 2, 3, 7, 64), (18, 3, 12, 20, 128)]


@needs_extension
def test_params_size_matches_every_compiler(cxx_layout):
    """The bytes the planner returns have the size of the struct the host compiler (and NVRTC,
    through the unit's static_assert) lays out from the same header."""
    for op, spec in zip(nvrtc.KERNEL_OPS, SPECS):
        assert spec.params_bytes == cxx_layout[op][0], op


@needs_extension
@pytest.mark.parametrize("shape", LAYOUT_SHAPES, ids=str)
def test_sink_attention_rope_table_layout(cxx_layout, shape):
    """The plan's RoPE table: Wan's split of the head's pairs (t gets what 2 * (D // 6) leaves)
    over S + Fq frames, grid_h rows and grid_w columns, and a workspace that holds it."""
    s, fq, gh, gw, d = shape
    inputs = make_inputs(_sink_case(shape), "cpu")
    _, buffers, raw, plan = _plan("sink_attention", *inputs, gh, gw, 0.125, 1e4)
    got = _decode(cxx_layout, "sink_attention", raw)
    t, hw = (d - 4 * (d // 6)) // 2, d // 6
    entries = (s + fq) * t + gh * hw + gw * hw
    assert [got[f"rope.{f}"] for f in ("t_pairs", "h_pairs", "w_pairs", "frames", "h_offset", "w_offset", "entries")] == [
        t, hw, hw, s + fq, (s + fq) * t, (s + fq) * t + gh * hw, entries]
    assert buffers[5].numel() == 8 * entries and got["rope_table"] == buffers[5].data_ptr()
    assert plan[0] == (0, (-(-entries // 256), 1, 1), (256, 1, 1), 0)


# What the nvcc launcher used before the planner (sink_attention_kernel.cu's launch_for<T, D>:
# WmmaCfg<T, D> / SimtCfg<D>::BQ, ::smem): the plan must keep them.
CXX_LAUNCH = {(torch.bfloat16, 64): (64, 62720), (torch.bfloat16, 128): (64, 95488),
              (torch.float16, 64): (64, 62720), (torch.float16, 128): (64, 95488),
              (torch.float32, 64): (32, 52480), (torch.float32, 128): (32, 93440)}


@dataclasses.dataclass
class _Launch:
    name: str
    grid: tuple = ()
    block: tuple = ()
    args: tuple = ()
    shared_mem: int = 0
    max_dynamic_shared_size_bytes: int = 0

    def __call__(self, grid, block, args, shared_mem=0):
        self.grid, self.block, self.args, self.shared_mem = grid, block, args, shared_mem


def _stub_launches(monkeypatch) -> list[_Launch]:
    """Kernel launches recorded instead of run (the launcher runs on CPU tensors)."""
    launches: list[_Launch] = []

    class Module:
        def kernel(self, name, device):
            launches.append(_Launch(name))
            return launches[-1]

    monkeypatch.setattr(_launch, "module", lambda op: Module())
    monkeypatch.setattr(_launch, "torch_stream", lambda device: contextlib.nullcontext())
    return launches


@needs_extension
@pytest.mark.parametrize("dtype, head_dim", list(CXX_LAUNCH), ids=str)
@pytest.mark.parametrize("shape", LAYOUT_SHAPES[:3], ids=str)
def test_sink_attention_launch_mirrors_cxx(monkeypatch, cxx_layout, dtype, head_dim, shape):
    s, fq, gh, gw, _ = shape
    launches = _stub_launches(monkeypatch)
    inputs = make_inputs(_sink_case(shape, dtype, head_dim), "cpu")
    out, lse = _launch.run("sink_attention", *inputs, gh, gw, 0.125, 10000.0, device_type="cpu")
    assert out.shape == inputs[0].shape and out.dtype == dtype
    assert lse.shape == (2, 3, fq * gh * gw) and lse.dtype == torch.float32

    rope, attn = launches
    assert rope.name == "srf::sink_attention::rope_table_kernel"
    assert rope.block == (256, 1, 1) and rope.shared_mem == 0
    block_q, smem = CXX_LAUNCH[(dtype, head_dim)]
    kind = "simt" if dtype == torch.float32 else "wmma"
    assert attn.name.startswith(f"srf::sink_attention::{kind}_kernel<") and f"{head_dim}>" in attn.name
    assert attn.grid == (-(-fq * gh * gw // block_q), 3, 2) and attn.block == (128, 1, 1)
    assert attn.shared_mem == smem and attn.max_dynamic_shared_size_bytes == smem
    (params,), (again,) = attn.args, rope.args
    assert again is params  # every kernel of the op takes the same params struct
    got = _decode(cxx_layout, "sink_attention", params.tobytes())
    assert (got["out"], got["lse"]) == (out.data_ptr(), lse.data_ptr())
    assert [got[n] for n in ("q", "k", "v", "k_cache", "v_cache", "cache_pos", "q_pos")] == [
        t.data_ptr() for t in inputs]
    sizes = (got["batch"], got["q_len"], got["heads"], got["head_dim"], got["slots"])
    assert sizes == (2, fq * gh * gw, 3, head_dim, s)
    assert (got["grid_h"], got["grid_w"], got["scale"], got["rope_theta"]) == (gh, gw, 0.125, 1e4)
    assert got["dtype"] == {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[dtype]


@needs_extension
def test_sink_attention_launch_copies_misaligned_inputs_and_skips_empty(monkeypatch, cxx_layout):
    launches = _stub_launches(monkeypatch)
    case = dict(batch=1, heads=2, head_dim=64, grid_h=3, grid_w=5, frames=2, cache_pos=[0, -1],
                q_pos=2, dtype=torch.bfloat16, seed=0)
    inputs = list(make_inputs(case, "cpu"))
    inputs[0] = torch.cat([inputs[0].new_zeros(1), inputs[0].flatten()])[1:].view(inputs[0].shape)
    assert inputs[0].data_ptr() % 16 == 2  # a view 2 bytes off
    _launch.run("sink_attention", *inputs, 3, 5, 0.125, 10000.0, device_type="cpu")
    got = _decode(cxx_layout, "sink_attention", launches[-1].args[0].tobytes())
    assert got["q"] != inputs[0].data_ptr() and got["q"] % 16 == 0  # a copy
    assert got["k"] == inputs[1].data_ptr()  # aligned: used in place

    launches.clear()
    empty = [t[:0] if i < 5 else t for i, t in enumerate(inputs)]
    out, lse = _launch.run("sink_attention", *empty, 3, 5, 0.125, 10000.0, device_type="cpu")
    assert launches == [] and out.shape == empty[0].shape and lse.shape == (0, 2, 30)


@needs_extension
def test_sink_attention_cuda_validates_like_the_compiled_kernel():
    """The launcher plans through the CUDA entry point's checks: RuntimeError with the
    compiled kernel's messages, before anything is compiled or launched."""
    case = dict(batch=1, heads=2, head_dim=64, grid_h=3, grid_w=3, frames=1, cache_pos=[0, -1],
                q_pos=1, dtype=torch.float32, seed=0)
    inputs = make_inputs(case, "cpu")
    kernel = _launch.launcher("sink_attention")
    with pytest.raises(RuntimeError, match=re.escape("must be a multiple of grid_h * grid_w")):
        kernel(*inputs, 3, 2, 0.125, 10000.0)
    with pytest.raises(RuntimeError, match=re.escape("must be on the device of q (cpu)")):
        kernel(*inputs, 3, 3, 0.125, 10000.0)


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_ema_cache_plan_round_trips(monkeypatch, cxx_layout, dtype):
    """The data kernel of the dtype at the widest vector width the frames allow, then the
    state kernel, both on the params of these tensors."""
    launches = _stub_launches(monkeypatch)
    k, v, pos, state = new_sink_cache(2, 2, 3, 5, 3, 40, dtype=dtype)
    k_new = torch.randn(2, 2 * 5, 3, 40, dtype=dtype)
    v_new = k_new.clone()
    assert _launch.run("ema_cache_update", k, v, pos, state, k_new, v_new, 2, 0.7, device_type="cpu") is None
    move, step = launches
    ctype = {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}[dtype]
    assert move.name == f"srf::ema_cache::move_kernel<{ctype}, 16>" and step.name == "srf::ema_cache::state_kernel"
    frame_bytes = 5 * 3 * 40 * dtype.itemsize
    assert move.grid == (-(-frame_bytes // 16 // 1024), 4, 1) and move.block == (256, 1, 1)
    assert step.grid == (1, 1, 1) and step.block == (32, 1, 1)
    got = _decode(cxx_layout, "ema_cache_update", move.args[0].tobytes())
    assert [got[n] for n in ("k_cache", "v_cache", "cache_pos", "state", "k_new", "v_new")] == [
        t.data_ptr() for t in (k, v, pos, state, k_new, v_new)]
    assert [got[n] for n in ("batch", "slots", "sink_size", "new_frames", "frame_elems")] == [2, 5, 2, 2, 600]
    assert got["alpha"] == np.float32(0.7) and got["one_minus_alpha"] == np.float32(1 - 0.7)


@needs_extension
@pytest.mark.parametrize("dtype, offset, width", [
    (torch.float32, 0, 16), (torch.bfloat16, 0, 16), (torch.float16, 0, 16), (torch.float64, 0, 16),
    (torch.float32, 2, 8), (torch.bfloat16, 1, 2), (torch.float64, 1, 8)], ids=str)
def test_rotated_cache_plan_round_trips(monkeypatch, cxx_layout, dtype, offset, width):
    """One kernel of the dtype at the widest access the head size and addresses allow (chunks
    ``offset`` elements past an aligned address narrow it), over (tensor, batch) rows and the
    frame's columns, on the params of these tensors and host integers."""
    from stream_r1_fast.ops.rope import rope_tables

    launches = _stub_launches(monkeypatch)
    b, n, p, h, d = 3, 7, 5, 2, 40
    keys, values = torch.randn(2, b, n, p, h, d).to(dtype)
    cos, sin = rope_tables(n, 1, 5, d, 1e4, dtype)
    k_new = torch.randn(b * 2 * p * h * d + offset).to(dtype)[offset:].view(b, 2 * p, h, d)
    v_new = k_new.clone()
    args = (keys, values, k_new, v_new, cos, sin, 4, 1, 3, 0.7)
    assert _launch.run("rotated_cache_advance", *args, device_type="cpu") is None
    (advance,) = launches
    ctype = {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16",
             torch.float64: "double"}[dtype]
    assert advance.name == f"srf::rotated_cache::advance_kernel<{ctype}, {width}>"
    per_thread = max(2, width // dtype.itemsize)
    assert advance.grid == (-(-p * h * d // per_thread // 256), 2 * b, 1) and advance.block == (256, 1, 1)
    got = _decode(cxx_layout, "rotated_cache_advance", advance.args[0].tobytes())
    assert [got[f] for f in ("keys", "values", "k_new", "v_new", "cos", "sin")] == [
        t.data_ptr() for t in (keys, values, k_new, v_new, cos, sin)]
    assert [got[f] for f in ("batch", "capacity", "tokens", "heads", "head_dim", "frame_elems", "occupied",
                             "sink_size", "window", "new_frames")] == [b, n, p, h, d, p * h * d, 4, 1, 3, 2]
    assert (got["alpha"], got["one_minus_alpha"]) == (0.7, 1 - 0.7)
    assert got["dtype"] == {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}[dtype]


@needs_extension
@pytest.mark.parametrize("mode", ["vae", "trilinear"])
def test_saliency_plan_round_trips(monkeypatch, cxx_layout, mode):
    launches = _stub_launches(monkeypatch)
    x = torch.rand(2, 1, 5, 3, 17, 9)
    aw = torch.tensor([0.25, 0.75], dtype=torch.float64)
    w, tau, sigma = _launch.run("saliency_weights", x, aw, mode, 4, 8, 0.2, 0.15, 1.0, 1.0,
                                device_type="cpu")
    assert w.shape == sigma.shape == (1, 2, 3, 2) and tau.shape == (1, 2)
    latent, spatial, weights = launches
    assert latent.name == f"srf::saliency::latent_{mode}_kernel<float, 3>"
    assert (spatial.name, weights.name) == ("srf::saliency::spatial_kernel", "srf::saliency::weights_kernel")
    assert spatial.grid == weights.grid == (2, 1, 1)
    assert latent.block == ((64, 4, 1) if mode == "vae" else (256, 1, 1))
    _, buffers, raw, _ = _plan("saliency_weights", x, aw, mode, 4, 8, 0.2, 0.15, 1.0, 1.0)
    got = _decode(cxx_layout, "saliency_weights", raw)
    assert [got[n] for n in ("A", "B", "T", "C", "H", "W", "F", "h", "w", "tf", "sf")] == [2, 1, 5, 3, 17, 9, 2, 3, 2, 4, 8]
    workspace, weights_f32 = buffers
    assert got["axis_weights"] == weights_f32.data_ptr() and weights_f32.dtype == torch.float32
    assert (got["frame_mean"], got["sigma_sum"]) == (workspace.data_ptr(), workspace.data_ptr() + 2 * 4)
    assert got["mode"] == (0 if mode == "vae" else 1) and got["saliency"] == x.data_ptr()


@needs_extension
@pytest.mark.parametrize("dtype, head_dim", [(torch.float16, 64), (torch.float16, 128), (torch.bfloat16, 64),
                                             (torch.bfloat16, 128)], ids=str)
def test_dense_attention_plan_round_trips(monkeypatch, cxx_layout, dtype, head_dim):
    """One launch of the dtype's and head dim's kernel, grid (query blocks of 128, heads,
    batch), 256 threads, Q + two K / V stages of shared memory; the params carry the strides
    of a strided batch (k, v: prefixes of a longer buffer) and point at the outputs."""
    launches = _stub_launches(monkeypatch)
    q = torch.randn(3, 300, 2, head_dim, dtype=dtype)
    kv = torch.randn(2, 3, 200, 2, head_dim, dtype=dtype)
    k, v = kv[0, :, :150], kv[1, :, :150]
    out, lse = _launch.run("dense_attention", q, k, v, 0.125, device_type="cpu")
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (3, 2, 300) and lse.dtype == torch.float32
    (attn,) = launches
    ctype = "__half" if dtype == torch.float16 else "__nv_bfloat16"
    assert attn.name == f"srf::dense_attention::fwd_kernel<{ctype}, {head_dim}>"
    keys = 64 if head_dim == 128 else 128
    smem = (128 * head_dim + 4 * keys * head_dim) * 2
    assert (attn.grid, attn.block, attn.shared_mem) == ((3, 2, 3), (256, 1, 1), smem)
    assert attn.max_dynamic_shared_size_bytes == smem
    got = _decode(cxx_layout, "dense_attention", attn.args[0].tobytes())
    assert [got[n] for n in ("q", "k", "v", "out", "lse")] == [t.data_ptr() for t in (q, k, v, out, lse)]
    row = 2 * head_dim
    assert [got[f"k_{s}_stride"] for s in ("batch", "row", "head")] == [200 * row, row, head_dim]
    assert [got[f"q_{s}_stride"] for s in ("batch", "row", "head")] == [300 * row, row, head_dim]
    assert [got[n] for n in ("batch", "q_len", "k_len", "heads", "head_dim")] == [3, 300, 150, 2, head_dim]
    assert got["scale"] == np.float32(0.125) and got["scale_log2"] == np.float32(0.125 * 1.4426950408889634)
    assert got["dtype"] == (1 if dtype == torch.float16 else 2)


@needs_extension
def test_dense_attention_plan_copies_misaligned_and_refuses_what_the_kernels_do_not_take(monkeypatch, cxx_layout):
    launches = _stub_launches(monkeypatch)
    q = torch.randn(1 * 5 * 2 * 64 + 1, dtype=torch.bfloat16)[1:].view(1, 5, 2, 64)
    k = torch.randn(1, 7, 2, 64, dtype=torch.bfloat16)
    _launch.run("dense_attention", q, k, k, 0.125, device_type="cpu")
    got = _decode(cxx_layout, "dense_attention", launches[-1].args[0].tobytes())
    assert got["q"] != q.data_ptr() and got["q"] % 16 == 0 and got["k"] == k.data_ptr()
    launches.clear()
    out, lse = _launch.run("dense_attention", q, k[:, :0], k[:, :0], 0.125, device_type="cpu")
    assert launches == [] and (out == 0).all() and (lse == float("-inf")).all()
    for bad, why in ((torch.randn(1, 5, 2, 64), "float16 or bfloat16"), (torch.randn(1, 5, 2, 96).half(), "head_dim 64 or 128")):
        with pytest.raises(RuntimeError, match=why):
            _launch.run("dense_attention", bad, bad, bad, 0.125, device_type="cpu")


@pytest.mark.skipif(not HAS_CUPY, reason="CuPy not installed")
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.op)
def test_every_kernel_compiles_with_nvrtc(spec, arch):
    """NVRTC needs no GPU: the shipped sources compile, every name expression the extension
    reports resolves, and the params struct passes the size check compiled into the unit."""
    from cupy.cuda import nvrtc as cupy_nvrtc

    root = _compile.source_dir()
    target, kind = _compile.nvrtc_target(arch, tuple(cupy_nvrtc.getSupportedArchs()))
    assert (target, kind) == (f"sm_{arch}", "cubin")
    includes, missing = _compile.find_cuda_headers(spec.cuda_headers)
    assert not missing, f"CUDA headers not found here: {missing}"
    options = _compile.compile_options(target, root, includes)
    binary, lowered = _compile.nvrtc_compile(spec.source(), options, spec.names, kind)
    assert binary[:4] == b"\x7fELF" and len(binary) == _compile.elf_extent(binary)
    assert set(lowered) == set(spec.names) and all(v.startswith("_Z") for v in lowered.values())


@pytest.mark.skipif(not HAS_CUPY, reason="CuPy not installed")
def test_cubin_is_whole():
    """CuPy's getCUBIN drops the image's last byte; what goes to the disk cache is NVRTC's whole
    image, as long as nvrtcGetCUBINSize says."""
    from cupy.cuda import nvrtc as cupy_nvrtc

    prog = cupy_nvrtc.createProgram("__global__ void k(float* o) { o[threadIdx.x] = 1.f; }\n", "k.cu", (), ())
    try:
        cupy_nvrtc.compileProgram(prog, ("--gpu-architecture=sm_90",))
        libs = {line.split()[-1] for line in open("/proc/self/maps") if "libnvrtc.so" in line}
        if len(libs) != 1:
            pytest.skip(f"cannot tell which libnvrtc CuPy loaded: {libs}")
        size = ctypes.c_size_t()
        assert ctypes.CDLL(libs.pop()).nvrtcGetCUBINSize(ctypes.c_void_p(prog), ctypes.byref(size)) == 0
        raw = cupy_nvrtc.getCUBIN(prog)
    finally:
        cupy_nvrtc.destroyProgram(prog)
    whole = _compile.whole_elf(raw)
    assert len(whole) == size.value and whole[:len(raw)] == raw


@pytest.mark.skipif(not HAS_CUPY, reason="CuPy not installed")
@needs_extension
def test_params_size_is_checked_against_the_kernels():
    """The unit static_asserts the size of the params the planner passes: kernel sources and an
    extension that disagree on the struct do not compile."""
    spec = dataclasses.replace(_launch.spec("sink_attention"), params_bytes=_launch.spec("sink_attention").params_bytes + 8)
    includes, _ = _compile.find_cuda_headers(spec.cuda_headers)
    options = _compile.compile_options("sm_80", _compile.source_dir(), includes)
    with pytest.raises(RuntimeError, match=re.escape("srf::sink_attention::Params differs from the compiled extension")):
        _compile.nvrtc_compile(spec.source(), options, (), "cubin")


# ---- on a GPU ---------------------------------------------------------------------------------

needs_nvrtc_gpu = pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs a CUDA device and CuPy")


@needs_nvrtc_gpu
def test_ops_own_tests_pass_on_nvrtc_path(tmp_path):
    """The CUDA tests of the ops, in a process whose CUDA kernels are the NVRTC ones (forced
    over compiled kernels if the extension has them), starting from an empty disk cache."""
    env = {BACKEND_ENV: "nvrtc", _compile.CACHE_ENV: str(tmp_path / "cache")}
    probe = _run(["-c", "import stream_r1_fast as s; i = s.backend_info(); print(i); "
                  "assert i.cuda_path == 'nvrtc', i"], **env)
    assert probe.returncode == 0, probe.stderr
    res = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
                *(str(TESTS_DIR / f"test_{op}.py")
                  for op in ("ema_cache", "saliency", "sink_attention", "rotated_cache_advance", "dense_attention_op",
                             "qk_norm_rope"))],
               **env)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert " passed" in res.stdout and list((tmp_path / "cache").glob("*.cubin")), res.stdout[-2000:]


def _needs_compiled(op: str):
    if not (HAS_CUDA and HAS_CUPY):
        pytest.skip("needs a CUDA device and CuPy")
    info = stream_r1_fast.backend_info()
    if info.name != "extension" or op in info.nvrtc_ops or not _backend._has_kernel(op, "CUDA"):
        pytest.skip(f"no compiled CUDA kernel of {op} in this process to compare with")


@settings(max_examples=20, deadline=None)
@given(case=cache_cases())
def test_ema_cache_agrees_with_compiled(case):
    _needs_compiled("ema_cache_update")
    compiled = list(new_sink_cache(case["batch"], case["sink_size"], case["window"], case["tokens"],
                                   case["heads"], case["head_dim"], dtype=case["dtype"], device="cuda"))
    compiled[0].normal_()
    compiled[1].normal_()
    ours = [t.clone() for t in compiled]
    gen = torch.Generator().manual_seed(case["seed"])
    for fn in case["fns"]:
        k_new, v_new = _chunk(case, fn, gen, torch.device("cuda"))
        torch.ops.stream_r1_fast.ema_cache_update(*compiled, k_new, v_new, case["sink_size"], case["alpha"])
        _launch.launcher("ema_cache_update")(*ours, k_new, v_new, case["sink_size"], case["alpha"])
    for got, want in zip(ours, compiled):
        assert torch.equal(got, want)  # same kernels, same rounding: bit for bit


@pytest.mark.parametrize("window", [3, 5, 6])
@pytest.mark.parametrize("sink_size", [1, 2, 3, 6])
def test_ema_cache_fold_at_every_sink_length_agrees_with_compiled(sink_size, window):
    """Chunks of 3 against sinks of 1, 2, 3, 6 and windows of 3, 5, 6 (group-mean folds of 1,
    2 or 3 evicted frames), 14 chunks, bf16: NVRTC and nvcc kernels bit for bit."""
    _needs_compiled("ema_cache_update")
    case = dict(batch=2, tokens=5, heads=3, head_dim=40, dtype=torch.bfloat16)
    compiled = list(new_sink_cache(2, sink_size, window, 5, 3, 40, dtype=torch.bfloat16, device="cuda"))
    ours = [t.clone() for t in compiled]
    gen = torch.Generator().manual_seed(sink_size * 10 + window)
    for _ in range(14):
        k_new, v_new = _chunk(case, 3, gen, torch.device("cuda"))
        torch.ops.stream_r1_fast.ema_cache_update(*compiled, k_new, v_new, sink_size, 0.7)
        _launch.launcher("ema_cache_update")(*ours, k_new, v_new, sink_size, 0.7)
    for got, want in zip(ours, compiled):
        assert torch.equal(got, want)


@settings(max_examples=20, deadline=None)
@given(case=advance_cases())
def test_rotated_cache_agrees_with_compiled(case):
    _needs_compiled("rotated_cache_advance")
    gen = torch.Generator().manual_seed(case["seed"])
    compiled = Buffers(case["batch"], case["grid"], case["heads"], case["head_dim"], case["sink"], case["window"],
                       case["chunk"], case["dtype"], "cuda", gen)
    ours = (compiled.keys.clone(), compiled.values.clone())
    m = case["start"]
    for f in case["frames"]:
        k_new, v_new = advance_chunk(compiled, f, gen)
        torch.ops.stream_r1_fast.rotated_cache_advance(*compiled.args(k_new, v_new, m, case["alpha"]))
        _launch.launcher("rotated_cache_advance")(*ours, *compiled.args(k_new, v_new, m, case["alpha"])[2:])
        m = min(m + f, case["sink"] + case["window"])
    for got, want in zip(ours, (compiled.keys, compiled.values)):
        assert torch.equal(got, want)  # same kernels, explicit rounding: bit for bit


@settings(max_examples=20, deadline=None)
@given(problem=problems())
def test_saliency_agrees_with_compiled(problem):
    _needs_compiled("saliency_weights")
    x, aw, kw = problem
    if x.dim() == 4:
        aw = torch.empty(0)
    elif aw is None:
        aw = torch.full((x.shape[0],), 1.0 / x.shape[0])
    args = (x.cuda(), aw.cuda(), *kw.values())  # kw is in the schema's order
    want = torch.ops.stream_r1_fast.saliency_weights(*args)
    got = _launch.launcher("saliency_weights")(*args)
    for g, w, name in zip(got, want, ("weights", "tau", "sigma")):
        # nvcc and NVRTC may contract a float op differently: float32 rounding apart at most.
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


@settings(max_examples=20, deadline=None)
@given(case=attention_cases())
def test_sink_attention_agrees_with_compiled(case):
    _needs_compiled("sink_attention")
    inputs = make_inputs(case, torch.device("cuda"))
    args = (*inputs, case["grid_h"], case["grid_w"], case["head_dim"] ** -0.5, 10000.0)
    want = torch.ops.stream_r1_fast.sink_attention(*args)
    got = _launch.launcher("sink_attention")(*args)
    # nvcc and NVRTC may contract a float op differently: a float32 rounding apart before the
    # output's own rounding, so at most one unit in the last place of the output dtype.
    eps = torch.finfo(case["dtype"]).eps if case["dtype"] != torch.float32 else 1e-5
    torch.testing.assert_close(got[0], want[0], rtol=eps, atol=1e-5, msg=lambda m: f"out: {m}")
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5, msg=lambda m: f"lse: {m}")


@settings(max_examples=20, deadline=None)
@given(case=dense_cases(dtypes=(torch.float16, torch.bfloat16)))
def test_dense_attention_agrees_with_compiled(case):
    _needs_compiled("dense_attention")
    q, k, v = make_dense_inputs(case, torch.device("cuda"))
    want = torch.ops.stream_r1_fast.dense_attention(q, k, v, case["head_dim"] ** -0.5)
    got = _launch.launcher("dense_attention")(q, k, v, case["head_dim"] ** -0.5)
    # nvcc and NVRTC may contract a float op differently: one unit in the last place of out.
    eps = torch.finfo(case["dtype"]).eps
    torch.testing.assert_close(got[0], want[0], rtol=eps, atol=1e-5, msg=lambda m: f"out: {m}")
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5, msg=lambda m: f"lse: {m}")


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_qk_norm_rope_plan_round_trips(cxx_layout, dtype):
    """qk_norm_rope's params bytes decode, with the host compiler's layout, to the call's sizes and
    pointers; one launch, a block per token row of q and of k, one shared value per warp."""
    from stream_r1_fast.ops.rope import compute_dtype, rope_tables

    b, f, p, h, d, m = 2, 3, 5, 3, 64, 2
    q, k = (torch.randn(b, f, p, h, d, dtype=dtype) for _ in "qk")
    wq, wk = (torch.ones(h * d, dtype=compute_dtype(dtype)) for _ in "qk")
    cos, sin = rope_tables(m + f, 1, p, d, 10000.0, dtype, "cpu")
    (q_out, k_out), buffers, raw, launches = _plan("qk_norm_rope", q, k, wq, wk, cos, sin, m, 1e-6)
    got = _decode(cxx_layout, "qk_norm_rope", raw)
    assert buffers == [] and q_out.shape == q.shape and k_out.shape == k.shape
    assert got["q"] == q.data_ptr() and got["k"] == k.data_ptr() and got["cos"] == cos.data_ptr()
    assert got["q_out"] == q_out.data_ptr() and got["k_out"] == k_out.data_ptr()
    assert (got["rows"], got["tokens"], got["row_elems"], got["head_dim"], got["first_row"]) == (
        b * f * p, f * p, h * d, d, m * p)
    assert got["eps"] == 1e-6 and got["weight_wide"] == (1 if dtype == torch.bfloat16 else 0)  # float32 weights
    (kernel, grid, block, smem), = launches
    assert grid == (b * f * p, 2, 1) and block[0] % 32 == 0 and smem == block[0] // 32 * (8 if dtype == torch.float64
                                                                                         else 4)


@settings(max_examples=20, deadline=None)
@given(case=norm_rope_cases())
def test_qk_norm_rope_agrees_with_compiled(case):
    """The NVRTC and the nvcc builds of the same kernels, every dtype and access width: within the
    kernel-vs-reference tolerance (both compilers may contract multiply-adds differently)."""
    _needs_compiled("qk_norm_rope")
    args = make_norm_rope_inputs(case, torch.device("cuda"))
    compiled = torch.ops.stream_r1_fast.qk_norm_rope(*args)
    ours = _launch.launcher("qk_norm_rope")(*args)
    rtol, atol = NORM_ROPE_TOL[case["dtype"]]
    for got, want in zip(ours, compiled):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
