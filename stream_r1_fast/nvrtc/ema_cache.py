"""ema_cache_update's CUDA kernels through NVRTC: the launch of csrc/ema_cache/ema_cache_kernel.cu
(``launch_ema_cache_update``) in Python, on the kernels of ema_cache_kernels.cuh."""

from __future__ import annotations

import numpy as np
import torch

from stream_r1_fast.nvrtc._compile import (
    CTYPES,
    KernelModule,
    KernelSpec,
    Struct,
    as_runtime_error,
    header_constants,
    torch_stream,
)
from stream_r1_fast.ops import ema_cache as _op

HEADER = "ema_cache/ema_cache_kernels.cuh"

# srf::EmaCacheParams (csrc/ema_cache/ema_cache.h), field for field.
PARAMS = Struct("srf::EmaCacheParams", np.dtype([
    ("k_cache", np.uint64), ("v_cache", np.uint64), ("cache_pos", np.uint64), ("state", np.uint64),
    ("k_new", np.uint64), ("v_new", np.uint64),
    ("batch", np.int64), ("slots", np.int64), ("sink_size", np.int64), ("new_frames", np.int64),
    ("frame_elems", np.int64),
    ("alpha", np.float32), ("one_minus_alpha", np.float32), ("dtype", np.int32),
], align=True))
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # common/dtype_code.h


def _move_kernel(ctype: str, vector_bytes: int) -> str:
    return f"srf::ema::ema_cache_move_kernel<{ctype}, {vector_bytes}>"


_STATE_KERNEL = "srf::ema::ema_cache_state_kernel"
# Vector widths >= the element size, as launch_move's switch instantiates them.
_ELEM = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
SPEC = KernelSpec(
    op="ema_cache",
    header=HEADER,
    names=tuple(_move_kernel(CTYPES[dt], vb) for dt, size in _ELEM.items()
                for vb in (16, 8, 4, 2) if vb >= size) + (_STATE_KERNEL,),
    structs=(PARAMS,),
)
MODULE = KernelModule(SPEC)
_K: dict[str, int] = {}


def _vector_bytes(frame_elems: int, elem_size: int, pointers: list[int]) -> int:
    """vector_bytes() of ema_cache_kernel.cu: the widest access (<= 16 bytes) that divides the
    frame size and every base address."""
    bits = frame_elems * elem_size
    for p in pointers:
        bits |= p
    vb = 16
    while vb > elem_size:
        if bits % vb == 0:
            return vb
        vb //= 2
    return elem_size


def ema_cache_update_cuda(k_cache, v_cache, cache_pos, state, k_new, v_new, sink_size, alpha):
    """The CUDA kernel of ``stream_r1_fast::ema_cache_update`` (schema: csrc/registration.cpp)."""
    as_runtime_error(_op.check_inputs, k_cache, v_cache, cache_pos, state, k_new, v_new,
                     sink_size, alpha)
    if not k_cache.is_cuda:
        raise RuntimeError("k_cache must be a CUDA tensor for the CUDA kernel")
    if not _K:
        _K.update(header_constants(HEADER))
    b, s, p, h, d = k_cache.shape
    fn = k_new.shape[1] // p
    frame_elems = p * h * d
    ptrs = [t.data_ptr() for t in (k_cache, v_cache, k_new, v_new)]
    params = PARAMS.pack(
        k_cache=ptrs[0], v_cache=ptrs[1], cache_pos=cache_pos.data_ptr(), state=state.data_ptr(),
        k_new=ptrs[2], v_new=ptrs[3], batch=b, slots=s, sink_size=sink_size, new_frames=fn,
        frame_elems=frame_elems, alpha=np.float32(alpha), one_minus_alpha=np.float32(1.0 - alpha),
        dtype=_DTYPE_CODE[k_cache.dtype],
    )
    device = k_cache.device
    with torch_stream(device):
        if b * frame_elems > 0:
            elem = k_cache.element_size()
            vb = _vector_bytes(frame_elems, elem, ptrs)
            nvec = frame_elems * elem // vb
            rows = 2 * b  # (tensor, batch): each thread walks every frame
            tile = _K["kThreads"] * _K["kUnroll"]  # kTile
            grid = (min(-(-nvec // tile), _K["kMaxBlocksX"]), min(rows, _K["kMaxBlocksY"]))
            kernel = MODULE.kernel(_move_kernel(CTYPES[k_cache.dtype], vb), device)
            kernel(grid, (_K["kThreads"],), (params,))
        MODULE.kernel(_STATE_KERNEL, device)(
            (1,), (32,),
            (state.data_ptr(), cache_pos.data_ptr(), np.int32(s), np.int32(sink_size), np.int32(fn)),
        )
