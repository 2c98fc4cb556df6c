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

import pytest
import torch
from hypothesis import given, settings

import stream_r1_fast
from stream_r1_fast import _backend, nvrtc
from stream_r1_fast._backend import BACKEND_ENV, EXTENSION_ENV
from stream_r1_fast.nvrtc import _compile
from stream_r1_fast.nvrtc import ema_cache as nv_ema
from stream_r1_fast.nvrtc import saliency as nv_saliency
from stream_r1_fast.nvrtc import sink_attention as nv_attn
from stream_r1_fast.ops.ema_cache import new_sink_cache
from test_ema_cache import _chunk, cache_cases
from test_saliency import problems
from test_sink_attention import attention_cases, make_inputs

HAS_CUDA = torch.cuda.is_available()
HAS_CUPY = importlib.util.find_spec("cupy") is not None
SPECS = [nv_ema.SPEC, nv_saliency.SPEC, nv_attn.SPEC]
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


def test_kernel_sources_are_found_and_torch_free():
    root = _compile.source_dir()
    assert root is not None
    for spec in SPECS:
        files = _compile.dependencies(spec.source(), root)
        assert spec.header in files and "common/cuda_utils.h" in files, files
        for rel in files:
            text = (root / rel).read_text()
            assert not re.search(r"#include [<\"](ATen|torch|c10)/", text), f"{rel} includes torch"


def test_header_constants_feed_the_launchers():
    assert {"kThreads", "kUnroll", "kMaxBlocksX", "kMaxBlocksY"} <= set(_compile.header_constants(nv_ema.HEADER))
    assert {"kTX", "kTY", "kThreads"} <= set(_compile.header_constants(nv_saliency.HEADER))
    assert {"kThreads", "kBlockK", "kRopeThreads"} <= set(_compile.header_constants(nv_attn.HEADER))


def test_cache_key_changes_with_every_input(tmp_path):
    root = tmp_path / "csrc"
    shutil.copytree(_compile.source_dir(), root)
    spec = nv_ema.SPEC
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


@pytest.mark.skipif(not HAS_CXX, reason="no host C++ compiler")
@pytest.mark.parametrize("struct, header", [(nv_ema.PARAMS, "ema_cache/ema_cache.h"),
                                            (nv_saliency.PARAMS, "saliency/saliency.h"),
                                            (nv_attn.PARAMS, "sink_attention/sink_attention.h"),
                                            (nv_attn.LAYOUT, "sink_attention/sink_attention.h")],
                         ids=lambda x: x.cxx_name if isinstance(x, _compile.Struct) else "")
def test_params_layout_matches_cxx(tmp_path, struct, header):
    """NVRTC cannot evaluate offsetof; the host compiler can, and CUDA lays structs out alike."""
    fields = list(struct.dtype.fields)
    prints = "\n".join(f'  std::printf("%zu\\n", offsetof({struct.cxx_name}, {f}));' for f in fields)
    got = _run_cxx(tmp_path, header, f'  std::printf("%zu\\n", sizeof({struct.cxx_name}));\n{prints}')
    want = [struct.dtype.itemsize] + [struct.dtype.fields[f][1] for f in fields]
    assert got == want, dict(zip(["sizeof", *fields], zip(got, want)))


# (slots, chunk frames, grid_h, grid_w, head_dim): streaming shapes and odd ones.
LAYOUT_SHAPES = [(6, 3, 30, 52, 128), (0, 1, 1, 1, 64), (5, 2, 3, 7, 64), (18, 3, 12, 20, 128)]


@pytest.mark.skipif(not HAS_CXX, reason="no host C++ compiler")
def test_rope_table_layout_matches_cxx(tmp_path):
    """The NVRTC launcher sizes the RoPE table as RopeTableLayout::of does."""
    fields = list(nv_attn.LAYOUT.dtype.fields)
    body = []
    for s, fq, gh, gw, d in LAYOUT_SHAPES:
        body.append(f"  {{ srf::SinkAttentionParams p{{}}; p.slots = {s}; p.q_len = {fq * gh * gw}; "
                    f"p.grid_h = {gh}; p.grid_w = {gw}; p.head_dim = {d};\n"
                    "    const auto l = srf::RopeTableLayout::of(p);\n")
        body += [f'    std::printf("%lld\\n", static_cast<long long>(l.{f}));' for f in fields]
        body.append("  }")
    got = _run_cxx(tmp_path, "sink_attention/sink_attention.h", "\n".join(body))
    want = [nv_attn.rope_table_layout(s, fq, gh, gw, d)[f] for s, fq, gh, gw, d in LAYOUT_SHAPES
            for f in fields]
    assert got == want


@pytest.mark.skipif(not HAS_CUPY, reason="CuPy not installed")
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.op)
def test_every_kernel_compiles_with_nvrtc(spec, arch):
    """NVRTC needs no GPU: the shipped sources compile, every name expression resolves, and
    the params structs pass the size checks compiled into the unit."""
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
def test_sink_attention_launch_sizes_are_checked_against_the_kernels(monkeypatch):
    """The unit static_asserts the launcher's block and shared-memory sizes: a launcher whose
    numbers drifted from WmmaCfg / SimtCfg does not compile."""
    key = (torch.bfloat16, 128)
    drifted = {**nv_attn.configs(), key: dataclasses.replace(nv_attn.configs()[key], smem=95488 + 16)}
    monkeypatch.setattr(nv_attn, "configs", lambda: drifted)
    includes, _ = _compile.find_cuda_headers(nv_attn.SPEC.cuda_headers)
    options = _compile.compile_options("sm_80", _compile.source_dir(), includes)
    with pytest.raises(RuntimeError, match=re.escape("WmmaCfg<__nv_bfloat16, 128>::smem differs")):
        _compile.nvrtc_compile(nv_attn.SPEC.source(), options, (), "cubin")


# ---- sink_attention's launch, kernels stubbed (runs on CPU tensors) -----------------------------

# What sink_attention_kernel.cu's launch_for<T, D> uses: WmmaCfg<T, D> / SimtCfg<D>::BQ, ::smem.
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
    launches: list[_Launch] = []

    def kernel(name, device):
        launches.append(_Launch(name))
        return launches[-1]

    monkeypatch.setattr(nv_attn.MODULE, "kernel", kernel)
    monkeypatch.setattr(nv_attn, "torch_stream", lambda device: contextlib.nullcontext())
    return launches


@pytest.mark.parametrize("dtype, head_dim", list(CXX_LAUNCH), ids=str)
@pytest.mark.parametrize("shape", LAYOUT_SHAPES[:3], ids=str)
def test_sink_attention_launch_mirrors_cxx(monkeypatch, dtype, head_dim, shape):
    s, fq, gh, gw, _ = shape
    launches = _stub_launches(monkeypatch)
    case = dict(batch=2, heads=3, head_dim=head_dim, grid_h=gh, grid_w=gw, frames=fq,
                cache_pos=list(range(s)), q_pos=s, dtype=dtype, seed=0)
    inputs = make_inputs(case, "cpu")
    out, lse = nv_attn.forward(*inputs, gh, gw, 0.125, 10000.0)
    assert out.shape == inputs[0].shape and out.dtype == dtype
    assert lse.shape == (2, 3, fq * gh * gw) and lse.dtype == torch.float32

    rope, attn = launches
    layout = nv_attn.rope_table_layout(s, fq, gh, gw, head_dim)
    assert rope.name == "srf::attn::rope_table_kernel"
    assert rope.grid == (-(-layout["entries"] // 256),) and rope.block == (256,) and rope.shared_mem == 0
    table, layout_arg, cache_pos, q_pos, slots, theta = rope.args
    assert {f: int(layout_arg[f][0]) for f in layout} == layout
    assert (cache_pos, q_pos, int(slots), float(theta)) == (inputs[5].data_ptr(), inputs[6].data_ptr(), s, 1e4)

    block_q, smem = CXX_LAUNCH[(dtype, head_dim)]
    kind = "simt" if dtype == torch.float32 else "wmma"
    assert attn.name.startswith(f"srf::attn::sink_attention_{kind}_kernel<") and f"{head_dim}>" in attn.name
    assert attn.grid == (-(-fq * gh * gw // block_q), 3, 2) and attn.block == (128,)
    assert attn.shared_mem == smem and attn.max_dynamic_shared_size_bytes == smem
    params, layout_again = attn.args
    assert layout_again is layout_arg
    got = {f: params[f][0].item() for f in params.dtype.names}
    assert got["rope_table"] == table
    assert (got["out"], got["lse"]) == (out.data_ptr(), lse.data_ptr())
    assert [got[n] for n in ("q", "k", "v", "k_cache", "v_cache")] == [t.data_ptr() for t in inputs[:5]]
    sizes = (got["batch"], got["q_len"], got["heads"], got["head_dim"], got["slots"])
    assert sizes == (2, fq * gh * gw, 3, head_dim, s)
    assert (got["grid_h"], got["grid_w"], got["scale"], got["rope_theta"]) == (gh, gw, 0.125, 1e4)
    assert got["dtype"] == {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[dtype]


def test_sink_attention_launch_copies_misaligned_inputs_and_skips_empty(monkeypatch):
    launches = _stub_launches(monkeypatch)
    case = dict(batch=1, heads=2, head_dim=64, grid_h=3, grid_w=5, frames=2, cache_pos=[0, -1],
                q_pos=2, dtype=torch.bfloat16, seed=0)
    inputs = list(make_inputs(case, "cpu"))
    inputs[0] = torch.cat([inputs[0].new_zeros(1), inputs[0].flatten()])[1:].view(inputs[0].shape)
    assert inputs[0].data_ptr() % 16 == 2  # a view 2 bytes off
    nv_attn.forward(*inputs, 3, 5, 0.125, 10000.0)
    q_ptr, k_ptr = (int(launches[-1].args[0][f][0]) for f in ("q", "k"))
    assert q_ptr != inputs[0].data_ptr() and q_ptr % 16 == 0  # a copy
    assert k_ptr == inputs[1].data_ptr()  # aligned: used in place

    launches.clear()
    empty = [t[:0] if i < 5 else t for i, t in enumerate(inputs)]
    out, lse = nv_attn.forward(*empty, 3, 5, 0.125, 10000.0)
    assert launches == [] and out.shape == empty[0].shape and lse.shape == (0, 2, 30)


def test_sink_attention_cuda_validates_like_the_compiled_kernel():
    """Checks run first and raise RuntimeError with the compiled kernel's messages."""
    case = dict(batch=1, heads=2, head_dim=64, grid_h=3, grid_w=3, frames=1, cache_pos=[0, -1],
                q_pos=1, dtype=torch.float32, seed=0)
    inputs = make_inputs(case, "cpu")
    with pytest.raises(RuntimeError, match=re.escape("must be a multiple of grid_h * grid_w")):
        nv_attn.sink_attention_cuda(*inputs, 3, 2, 0.125, 10000.0)
    with pytest.raises(RuntimeError, match=re.escape("must be on the device of q (cpu)")):
        nv_attn.sink_attention_cuda(*inputs, 3, 3, 0.125, 10000.0)


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
                *(str(TESTS_DIR / f"test_{op}.py") for op in ("ema_cache", "saliency", "sink_attention"))],
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
        nv_ema.ema_cache_update_cuda(*ours, k_new, v_new, case["sink_size"], case["alpha"])
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
        nv_ema.ema_cache_update_cuda(*ours, k_new, v_new, sink_size, 0.7)
    for got, want in zip(ours, compiled):
        assert torch.equal(got, want)


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
    got = nv_saliency.saliency_weights_cuda(*args)
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
    got = nv_attn.sink_attention_cuda(*args)
    # nvcc and NVRTC may contract a float op differently: a float32 rounding apart before the
    # output's own rounding, so at most one unit in the last place of the output dtype.
    eps = torch.finfo(case["dtype"]).eps if case["dtype"] != torch.float32 else 1e-5
    torch.testing.assert_close(got[0], want[0], rtol=eps, atol=1e-5, msg=lambda m: f"out: {m}")
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5, msg=lambda m: f"lse: {m}")
