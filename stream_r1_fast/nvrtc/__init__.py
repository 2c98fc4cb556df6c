"""The fused ops' CUDA kernels compiled at run time (NVRTC through CuPy).

For a compiled extension without CUDA kernels (a CPU-only build or wheel, no CUDA toolkit at
install time) on a machine with a CUDA GPU and CuPy (``pip install 'stream_r1_fast[cupy]'``):
the same kernel headers the nvcc build compiles (``csrc/<op>/<op>_kernels.cuh``, shipped as
``stream_r1_fast/_kernels``) are compiled on first use for the device's architecture, cached
on disk (``$STREAM_R1_FAST_NVRTC_CACHE``, default ``~/.cache/stream_r1_fast/nvrtc``), and
registered as the CUDA kernels of the same ``torch.library`` ops: callers cannot tell which
path runs. ``stream_r1_fast.backend_info()`` says which one does, and why. The launches are
planned by the compiled extension (the same planner as the nvcc launchers); ``_launch`` only
runs them. ``_backend`` decides and calls :func:`register`; nothing here imports it back.

Importing this package is cheap: CuPy is imported when a kernel first runs.
"""

from __future__ import annotations

import importlib.util

import torch

from stream_r1_fast import _op_table

# Ops whose kernels NVRTC can build (the op table's "nvrtc" backend).
KERNEL_OPS = tuple(op.name for op in _op_table.OPS if "nvrtc" in op.backends)
# CUDA headers an op's kernels include beyond the runtime's cuda_fp16.h / cuda_bf16.h (which
# torch's pip dependencies ship), from the op table: sink_attention's <mma.h> needs crt/mma.h.
CUDA_HEADERS = {op.name: op.cuda_headers for op in _op_table.OPS if op.cuda_headers}


def unavailable_reason() -> str | None:
    """Why the NVRTC kernels cannot run in this process, or None when they can."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (pip install 'stream_r1_fast[cupy]')"
    if _op_table.source_dir() is None:
        return "the kernel sources (stream_r1_fast/_kernels) are not installed"
    return None


def op_unavailable_reason(op: str) -> str | None:
    """Why ``op``'s NVRTC kernels cannot compile here when the others can (a CUDA header its
    kernels need is missing), or None."""
    if not CUDA_HEADERS.get(op):
        return None
    from stream_r1_fast.nvrtc._compile import MISSING_HEADERS_HINT, find_cuda_headers

    missing = find_cuda_headers(CUDA_HEADERS[op])[1]
    if not missing:
        return None
    return f"CUDA headers not found: {', '.join(missing)} ({MISSING_HEADERS_HINT})"


def register(ops: tuple[str, ...]) -> None:
    """Registers the NVRTC launchers of ``ops`` as their CUDA kernels (replacing compiled ones)."""
    if not ops:
        return
    from stream_r1_fast.nvrtc._launch import launcher

    for op in ops:
        torch.library.impl(f"stream_r1_fast::{op}", "CUDA", launcher(op))
