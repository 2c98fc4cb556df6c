"""The NVRTC path: selection and its reasons, the disk-cache key, the shipped kernel sources and
their NVRTC compilation (no GPU needed), the params-struct layout; on a GPU, the ops' own
tests run on the NVRTC kernels and agree with the compiled ones."""

from __future__ import annotations

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
from stream_r1_fast.ops.ema_cache import new_sink_cache
from test_ema_cache import _chunk, cache_cases
from test_saliency import problems

HAS_CUDA = torch.cuda.is_available()
HAS_CUPY = importlib.util.find_spec("cupy") is not None
SPECS = [nv_ema.SPEC, nv_saliency.SPEC]
TESTS_DIR = Path(__file__).resolve().parent


def _run(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=1200, cwd=TESTS_DIR.parent)


# ---- selection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "choice, compiled, unavailable, expected",
    [
        ("auto", set(_backend.OPS), None, ("compiled", (), "compiled CUDA kernels present")),
        ("auto", set(), None, ("nvrtc", nvrtc.KERNEL_OPS, "no compiled CUDA kernels")),
        ("auto", set(), "no CUDA device", ("reference", (), "no CUDA device")),
        ("extension", {"sink_attention"}, None, ("nvrtc", nvrtc.KERNEL_OPS, "no compiled CUDA kernels")),
        ("auto", {"sink_attention", "saliency_weights"}, "CuPy is not installed",
         ("compiled", (), "CuPy is not installed")),
        ("nvrtc", set(_backend.OPS), None,
         ("nvrtc", nvrtc.KERNEL_OPS, f"forced by {BACKEND_ENV}=nvrtc")),
    ],
)
def test_cuda_path_selection(monkeypatch, choice, compiled, unavailable, expected):
    monkeypatch.setattr(_backend, "_has_kernel", lambda op, key: key == "CUDA" and op in compiled)
    monkeypatch.setattr(nvrtc, "unavailable_reason", lambda: unavailable)
    assert _backend._cuda_path(choice) == expected


def test_forced_nvrtc_that_cannot_run_raises(monkeypatch):
    monkeypatch.setattr(_backend, "_has_kernel", lambda op, key: False)
    monkeypatch.setattr(nvrtc, "unavailable_reason", lambda: "no CUDA device")
    with pytest.raises(ImportError, match="STREAM_R1_FAST_BACKEND=nvrtc but NVRTC kernels cannot run here: no CUDA device"):
        _backend._cuda_path("nvrtc")


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
    res = _run(["-c", "import stream_r1_fast"], **{BACKEND_ENV: "nvrtc"})
    assert res.returncode != 0
    assert "STREAM_R1_FAST_BACKEND=nvrtc but NVRTC kernels cannot run here: no CUDA device" in res.stderr


def test_forcing_nvrtc_without_extension_fails_clearly():
    res = _run(["-c", "import stream_r1_fast"], **{BACKEND_ENV: "nvrtc", EXTENSION_ENV: "/nonexistent/_C.so"})
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


def test_cache_key_changes_with_every_input(tmp_path):
    root = tmp_path / "csrc"
    shutil.copytree(_compile.source_dir(), root)
    spec = nv_ema.SPEC
    args = dict(source=spec.source(), files=_compile.dependencies(spec.source(), root), target="sm_90",
                options=_compile.compile_options("sm_90", root, None), names=spec.names,
                versions={"cupy": "14.2.0", "nvrtc": "13.0"})
    base = _compile.cache_key(**args)
    assert base == _compile.cache_key(**args)
    changed = [
        dict(source=args["source"] + "// edit\n"),
        dict(target="sm_80"),
        dict(options=_compile.compile_options("sm_80", root, None)),
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


@pytest.mark.skipif(shutil.which("c++") is None, reason="no host C++ compiler")
@pytest.mark.parametrize("struct, header", [(nv_ema.PARAMS, "ema_cache/ema_cache.h"),
                                            (nv_saliency.PARAMS, "saliency/saliency.h")])
def test_params_layout_matches_cxx(tmp_path, struct, header):
    """NVRTC cannot evaluate offsetof; the host compiler can, and CUDA lays structs out alike."""
    fields = list(struct.dtype.fields)
    prints = "\n".join(f'  std::printf("%zu\\n", offsetof({struct.cxx_name}, {f}));' for f in fields)
    src = tmp_path / "layout.cpp"
    src.write_text(f'#include <cstddef>\n#include <cstdio>\n#include "{header}"\n'
                   f'int main() {{\n  std::printf("%zu\\n", sizeof({struct.cxx_name}));\n{prints}\n}}\n')
    exe = tmp_path / "layout"
    subprocess.run(["c++", "-std=c++17", f"-I{_compile.source_dir()}", str(src), "-o", str(exe)], check=True)
    got = [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    want = [struct.dtype.itemsize] + [struct.dtype.fields[f][1] for f in fields]
    assert got == want, dict(zip(["sizeof", *fields], zip(got, want)))


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
    options = _compile.compile_options(target, root, _compile.cuda_include_dir())
    binary, lowered = _compile.nvrtc_compile(spec.source(), options, spec.names, kind)
    assert binary[:4] == b"\x7fELF"
    assert set(lowered) == set(spec.names) and all(v.startswith("_Z") for v in lowered.values())


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
                str(TESTS_DIR / "test_ema_cache.py"), str(TESTS_DIR / "test_saliency.py")], **env)
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
