"""Compiling the shipped kernel headers with NVRTC (through CuPy), caching the binaries on
disk, loading them per device and launching them on torch's current stream.

One NVRTC translation unit per op: ``#include "<op>/<op>_kernels.cuh"``, the name expressions
of its kernels and a ``static_assert`` that its params struct has the size of the bytes the
compiled extension's planner passes (both come from the extension: the ``<op>_kernels`` op).
CuPy is imported on first use only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from stream_r1_fast._op_table import source_dir

CACHE_ENV = "STREAM_R1_FAST_NVRTC_CACHE"
# Bumped when what a cache entry holds changes (2: cubins no longer lack their last byte).
_CACHE_FORMAT = 2

# The nvcc build's options (CMakeLists.txt: -O3 -lineinfo; NVRTC optimises by default and has
# no --expt-relaxed-constexpr, which the kernels do not need). nvcc and
# NVRTC share the defaults -ftz=false -prec-div=true -prec-sqrt=true -fmad=true).
BASE_OPTIONS = ("-std=c++17", "-lineinfo")

# Where the CUDA headers come from when they are missing.
MISSING_HEADERS_HINT = "pip install nvidia-cuda-runtime nvidia-cuda-crt, or set CUDA_HOME to a CUDA toolkit"



# The CUDA headers every kernel unit includes (common/cuda_utils.h); NVRTC has none built in.
BASE_HEADERS = ("cuda_fp16.h", "cuda_bf16.h")


def _header_roots() -> list[Path]:
    """Folders that may hold CUDA headers, in order of preference: those of the pip wheels
    (the cu13 wheels share one folder: nvidia-cuda-runtime's, which torch depends on, and
    nvidia-cuda-crt's), then a CUDA toolkit's ($CUDA_HOME, $CUDA_PATH, nvcc's, the default)."""
    roots = []
    try:
        from cuda.pathfinder import find_nvidia_header_directory

        found = find_nvidia_header_directory("cudart")
        if found:
            roots.append(Path(found))
    except Exception:  # noqa: BLE001 - any failure just means "look elsewhere"
        pass
    nvcc = shutil.which("nvcc")
    toolkits = (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                nvcc and Path(nvcc).resolve().parent.parent, "/usr/local/cuda")
    roots += [Path(root) / "include" for root in toolkits if root]
    return list(dict.fromkeys(r for r in roots if r.is_dir()))


def find_cuda_headers(headers: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(include folders, headers found in none) for ``BASE_HEADERS + headers``: for each header
    the first root that holds it, the runtime headers' root first. NVRTC ships none of them;
    ``<mma.h>``, for one, is a runtime header that includes ``crt/mma.h``, which is not."""
    roots = _header_roots()
    dirs: list[str] = []
    missing: list[str] = []
    for header in BASE_HEADERS + tuple(headers):
        root = next((r for r in roots if (r / header).is_file()), None)
        if root is None:
            missing.append(header)
        elif str(root) not in dirs:
            dirs.append(str(root))
    return tuple(dirs), tuple(missing)


def cache_dir() -> Path:
    """``$STREAM_R1_FAST_NVRTC_CACHE``, else ``$XDG_CACHE_HOME`` (or ~/.cache)/stream_r1_fast/nvrtc."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stream_r1_fast" / "nvrtc"


def dependencies(source: str, root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` that ``source`` includes with quotes, recursively."""
    found: dict[str, str] = {}
    pending = re.findall(r'#include "([^"]+)"', source)
    while pending:
        rel = pending.pop()
        if rel in found or not (root / rel).is_file():
            continue
        data = (root / rel).read_bytes()
        found[rel] = hashlib.sha256(data).hexdigest()
        pending += re.findall(r'#include "([^"]+)"', data.decode())
    return dict(sorted(found.items()))


def cache_key(source: str, files: dict[str, str], target: str, options: tuple[str, ...],
              names: tuple[str, ...], versions: dict[str, str]) -> str:
    """Hash of everything that determines the binary: translation unit, included files,
    target architecture, options, name expressions and compiler versions."""
    payload = json.dumps(
        dict(format=_CACHE_FORMAT, source=source, files=files, target=target,
             options=list(options), names=list(names), versions=versions),
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def nvrtc_target(arch: int, supported: tuple[int, ...]) -> tuple[str, str]:
    """(``--gpu-architecture`` value, output kind): SASS for an architecture NVRTC knows, else
    PTX for the newest one below it (the driver compiles that for the device)."""
    if arch in supported:
        return f"sm_{arch}", "cubin"
    older = [a for a in supported if a < arch]
    if not older:
        raise RuntimeError(f"NVRTC supports architectures {supported}, none usable for sm_{arch}")
    return f"compute_{max(older)}", "ptx"


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One op's NVRTC translation unit."""

    op: str                           # the op's folder, e.g. "ema_cache"
    header: str                       # e.g. "ema_cache/ema_cache_kernels.cuh"
    names: tuple[str, ...]            # name expressions: every kernel a plan may pick
    params_type: str                  # e.g. "srf::ema_cache::Params"
    params_bytes: int                 # sizeof(Params) in the compiled extension
    cuda_headers: tuple[str, ...] = ()  # CUDA headers needed beyond BASE_HEADERS

    def source(self) -> str:
        """The unit: the kernels, and the check that the params bytes the extension's planner
        passes have the size of the struct the kernels take (both compile the same header;
        this catches kernel sources and extension of different builds)."""
        t, n = self.params_type, self.params_bytes
        return (f'#include "{self.header}"\n'
                f'static_assert(sizeof({t}) == {n} && alignof({t}) == 8, '
                f'"{t} differs from the compiled extension\'s ({n} bytes, 8-aligned)");\n')


def _versions() -> dict[str, str]:
    import cupy
    from cupy.cuda import nvrtc

    return {"cupy": cupy.__version__, "nvrtc": ".".join(map(str, nvrtc.getVersion()))}


def compile_options(target: str, root: Path, cuda_includes: tuple[str, ...]) -> tuple[str, ...]:
    includes = [f"-I{root}"] + [f"-I{d}" for d in cuda_includes]
    return BASE_OPTIONS + (f"--gpu-architecture={target}",) + tuple(includes)


def nvrtc_compile(source: str, options: tuple[str, ...], names: tuple[str, ...], kind: str,
                  filename: str = "kernels.cu") -> tuple[bytes, dict[str, str]]:
    """(cubin or PTX, {name expression: lowered name}); raises RuntimeError with NVRTC's log."""
    from cupy.cuda import nvrtc

    prog = nvrtc.createProgram(source, filename, (), ())
    try:
        for name in names:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(
                f"NVRTC failed to compile {filename} ({' '.join(options)}):\n"
                f"{nvrtc.getProgramLog(prog)}"
            ) from exc
        lowered = {name: nvrtc.getLoweredName(prog, name) for name in names}
        if kind == "cubin":
            return whole_elf(nvrtc.getCUBIN(prog)), lowered
        ptx = nvrtc.getPTX(prog)
        return (ptx if isinstance(ptx, bytes) else ptx.encode()), lowered
    finally:
        nvrtc.destroyProgram(prog)


def elf_extent(image: bytes) -> int:
    """Bytes an ELF64 image spans: its header, program and section header tables, and the
    contents of its sections (as far as the header tables are there to say)."""
    phoff, shoff = struct.unpack_from("<QQ", image, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", image, 0x36)
    end = max(0x40, phoff + phentsize * phnum, shoff + shentsize * shnum)
    for i in range(shnum):
        at = shoff + i * shentsize
        if at + 0x28 > len(image):
            break
        (sh_type,) = struct.unpack_from("<I", image, at + 0x4)
        offset, size = struct.unpack_from("<QQ", image, at + 0x18)
        if sh_type != 8:  # SHT_NOBITS occupies no file space
            end = max(end, offset + size)
    return end


def whole_elf(image: bytes) -> bytes:
    """The cubin as NVRTC produced it. CuPy's getCUBIN drops its last byte (it strips a NUL
    terminator, as for PTX); loading those bytes from memory gets away with it (a Python bytes
    object keeps a NUL after its end), loading the disk cache's file would not."""
    return image.ljust(elf_extent(image), b"\0")


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class KernelModule:
    """An op's kernels, compiled on first use per architecture; ``kernel(name, device)``."""

    def __init__(self, spec: KernelSpec):
        self.spec = spec
        self._lock = threading.Lock()
        self._modules: dict[int, tuple[object, dict[str, str]]] = {}  # arch -> (RawModule, names)
        self._kernels: dict[tuple[int, str], object] = {}
        self.last_build: dict[str, object] = {}  # how the last load went (for the benchmark)

    def reset(self) -> None:
        """Forget the loaded modules (the disk cache stays)."""
        with self._lock:
            self._modules.clear()
            self._kernels.clear()

    def kernel(self, name: str, device: torch.device):
        major, minor = torch.cuda.get_device_capability(device)
        arch = 10 * major + minor
        found = self._kernels.get((arch, name))
        if found is None:
            with self._lock:
                if arch not in self._modules:
                    self._modules[arch] = self._load(arch)
                module, lowered = self._modules[arch]
                found = self._kernels[(arch, name)] = module.get_function(lowered[name])
        return found

    def _load(self, arch: int):
        import cupy
        from cupy.cuda import nvrtc

        root = source_dir()
        if root is None:
            raise RuntimeError("stream_r1_fast: the kernel sources (package data _kernels/) are missing")
        source = self.spec.source()
        target, kind = nvrtc_target(arch, tuple(nvrtc.getSupportedArchs()))
        cuda_includes, missing = find_cuda_headers(self.spec.cuda_headers)
        if missing:
            raise RuntimeError(f"stream_r1_fast: NVRTC needs the CUDA headers {', '.join(missing)} "
                               f"for {self.spec.op}; none found ({MISSING_HEADERS_HINT})")
        options = compile_options(target, root, cuda_includes)
        key = cache_key(source, dependencies(source, root), target, options, self.spec.names,
                        _versions())
        binary_path, names_path = self._paths(key, kind)
        cached = binary_path.is_file() and names_path.is_file()
        if cached:
            lowered = json.loads(names_path.read_text())
        else:
            binary, lowered = nvrtc_compile(source, options, self.spec.names, kind,
                                            filename=f"{self.spec.op}.cu")
            _write_atomic(binary_path, binary)
            _write_atomic(names_path, json.dumps(lowered).encode())
        self.last_build = {"cached": cached, "path": str(binary_path), "target": target}
        return cupy.RawModule(path=str(binary_path)), lowered

    def _paths(self, key: str, kind: str) -> tuple[Path, Path]:
        directory = cache_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / ".writable"
            probe.touch()
        except OSError:  # read-only home: a per-process directory still avoids recompiles
            directory = Path(tempfile.gettempdir()) / f"stream_r1_fast-nvrtc-{os.getuid()}"
            directory.mkdir(parents=True, exist_ok=True)
        stem = directory / f"{self.spec.op}-{key}"
        return stem.with_suffix(f".{kind}"), stem.with_suffix(".json")


@contextlib.contextmanager
def torch_stream(device: torch.device):
    """CuPy launches inside go to torch's current stream of ``device`` (no copies, no sync)."""
    import cupy

    stream = torch.cuda.current_stream(device)
    if hasattr(cupy.cuda.Stream, "from_external") and hasattr(stream, "__cuda_stream__"):
        cp_stream = cupy.cuda.Stream.from_external(stream)
    else:
        with warnings.catch_warnings():  # deprecated by CuPy 14 for the branch above
            warnings.simplefilter("ignore", DeprecationWarning)
            cp_stream = cupy.cuda.ExternalStream(stream.cuda_stream, device.index)
    with cupy.cuda.Device(device.index), cp_stream:
        yield
