"""The fused ops' CUDA kernels compiled at run time (NVRTC through CuPy).

For a compiled extension without CUDA kernels (a CPU-only build or wheel, no CUDA toolkit at
install time) on a machine with a CUDA GPU and CuPy (``pip install 'stream_r1_fast[cupy]'``):
the same kernel headers the nvcc build compiles (``csrc/<op>/<op>_kernels.cuh``, shipped as
``stream_r1_fast/_kernels``) are compiled on first use for the device's architecture, cached
on disk (``$STREAM_R1_FAST_NVRTC_CACHE``, default ``~/.cache/stream_r1_fast/nvrtc``), and
registered as the CUDA kernels of the same ``torch.library`` ops: callers cannot tell which
path runs. ``stream_r1_fast.backend_info()`` says which one does, and why.

Importing this package is cheap: CuPy is imported when a kernel first runs.
"""

from __future__ import annotations

import importlib.util

import torch

# Ops with an NVRTC launcher (stream_r1_fast/nvrtc/<op>.py).
KERNEL_OPS = ("ema_cache_update", "saliency_weights", "sink_attention")
# CUDA headers an op's kernels include beyond the runtime's cuda_fp16.h / cuda_bf16.h (which
# torch's pip dependencies ship): sink_attention's <mma.h> needs crt/mma.h.
CUDA_HEADERS = {"sink_attention": ("crt/mma.h",)}


def unavailable_reason() -> str | None:
    """Why the NVRTC kernels cannot run in this process, or None when they can."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (pip install 'stream_r1_fast[cupy]')"
    from stream_r1_fast.nvrtc._compile import source_dir

    if source_dir() is None:
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
    from stream_r1_fast.nvrtc.ema_cache import ema_cache_update_cuda
    from stream_r1_fast.nvrtc.saliency import saliency_weights_cuda
    from stream_r1_fast.nvrtc.sink_attention import sink_attention_cuda

    impls = {"ema_cache_update": ema_cache_update_cuda, "saliency_weights": saliency_weights_cuda,
             "sink_attention": sink_attention_cuda}
    for op in ops:
        torch.library.impl(f"stream_r1_fast::{op}", "CUDA", impls[op])
