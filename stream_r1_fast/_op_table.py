"""The table of the fused ops, read from ``csrc/ops.txt`` (shipped in the wheel as
``stream_r1_fast/_kernels/ops.txt``): each op's name, its folder under ``csrc/`` (also its
module under ``stream_r1_fast/ops/`` and its C++ namespace ``srf::<folder>``), the backends it
has and the CUDA headers its NVRTC build needs beyond the runtime's. CMake reads the same file
to decide what to compile; ``_backend`` and ``nvrtc`` read it here. A leaf module: no torch,
no other package import.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_MARKER = Path("common") / "cuda_utils.h"
TABLE = "ops.txt"


def source_dir() -> Path | None:
    """Root of the kernel headers and the op table: the wheel's ``stream_r1_fast/_kernels``
    (CMake installs csrc's headers there), else ``csrc/`` of a source checkout (editable
    installs)."""
    for root in (_PACKAGE_DIR / "_kernels", _PACKAGE_DIR.parent / "csrc"):
        if (root / _MARKER).is_file() and (root / TABLE).is_file():
            return root
    return None


@dataclasses.dataclass(frozen=True)
class Op:
    name: str                      # the torch.ops.stream_r1_fast name
    folder: str                    # csrc/<folder>/<folder>_*.{h,cuh,cpp,cu}
    backends: tuple[str, ...]      # of cpu, cuda, nvrtc
    cuda_headers: tuple[str, ...]  # for NVRTC, beyond cuda_fp16.h / cuda_bf16.h

    @property
    def kernel_header(self) -> str:
        """The device code NVRTC compiles, relative to :func:`source_dir`."""
        return f"{self.folder}/{self.folder}_kernels.cuh"


def parse(text: str) -> tuple[Op, ...]:
    """The ops of a table's text: one ``name folder backends headers`` line each (``-`` for
    no headers), ``#`` comments and blank lines skipped."""
    ops = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, folder, backends, headers = line.split()
        ops.append(Op(name, folder, tuple(backends.split(",")),
                      () if headers == "-" else tuple(headers.split(","))))
    return tuple(ops)


def _load() -> tuple[Op, ...]:
    root = source_dir()
    if root is None:
        raise ImportError(f"stream_r1_fast: the op table {TABLE} is not installed "
                          "(stream_r1_fast/_kernels, or csrc/ of a source checkout)")
    return parse((root / TABLE).read_text())


OPS: tuple[Op, ...] = _load()
NAMES: tuple[str, ...] = tuple(op.name for op in OPS)


def op(name: str) -> Op:
    """The table's entry of the op called ``name``."""
    return next(o for o in OPS if o.name == name)
