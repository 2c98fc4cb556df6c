"""sink_attention's CUDA kernels through NVRTC: ``sink_attention_cuda_op`` of
csrc/sink_attention/sink_attention_cuda.cpp and ``sink_attention_cuda`` of
sink_attention_kernel.cu in Python, on the kernels of sink_attention_kernels.cuh."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch

from stream_r1_fast.nvrtc import CUDA_HEADERS
from stream_r1_fast.nvrtc._compile import (
    CTYPES,
    KernelModule,
    KernelSpec,
    Struct,
    as_runtime_error,
    header_constants,
    torch_stream,
)
from stream_r1_fast.ops.sink_attention import check_inputs

HEADER = "sink_attention/sink_attention_kernels.cuh"

_PTR, _I32 = np.uint64, np.int32
# srf::SinkAttentionParams (csrc/sink_attention/sink_attention.h), field for field.
PARAMS = Struct("srf::SinkAttentionParams", np.dtype([
    ("q", _PTR), ("k", _PTR), ("v", _PTR), ("k_cache", _PTR), ("v_cache", _PTR),
    ("cache_pos", _PTR), ("q_pos", _PTR), ("out", _PTR), ("lse", _PTR), ("rope_table", _PTR),
    ("batch", _I32), ("q_len", _I32), ("heads", _I32), ("head_dim", _I32), ("slots", _I32),
    ("grid_h", _I32), ("grid_w", _I32), ("scale", np.float32), ("rope_theta", np.float64),
    ("dtype", _I32),
], align=True))
# srf::RopeTableLayout (same header), field for field.
LAYOUT = Struct("srf::RopeTableLayout", np.dtype([
    ("t_pairs", _I32), ("h_pairs", _I32), ("w_pairs", _I32), ("frames", _I32),
    ("h_offset", np.int64), ("w_offset", np.int64), ("entries", np.int64),
], align=True))
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # common/dtype_code.h
_HEAD_DIMS = (64, 128)
_ROPE_KERNEL = "srf::attn::rope_table_kernel"


def _kernel(dtype: torch.dtype, head_dim: int) -> tuple[str, str]:
    """(kernel, the C++ struct with its BQ and smem): launch_for<T, D> of
    sink_attention_kernel.cu, WMMA for bf16 / fp16, SIMT for float32."""
    if dtype == torch.float32:
        return (f"srf::attn::sink_attention_simt_kernel<{head_dim}>",
                f"srf::attn::SimtCfg<{head_dim}>")
    ctype = CTYPES[dtype]
    return (f"srf::attn::sink_attention_wmma_kernel<{ctype}, {head_dim}>",
            f"srf::attn::WmmaCfg<{ctype}, {head_dim}>")


@dataclasses.dataclass(frozen=True)
class Config:
    """One attention kernel's launch: queries per block, dynamic shared memory in bytes."""

    kernel: str
    cfg: str
    block_q: int
    smem: int


def _config(dtype: torch.dtype, head_dim: int, k: dict[str, int]) -> Config:
    """BQ and smem of WmmaCfg<T, D> / SimtCfg<D> (sink_attention_kernels.cuh), region by
    region; the NVRTC unit static_asserts that they are the structs' own."""
    d, bk, f32 = head_dim, k["kBlockK"], 4
    if dtype == torch.float32:
        bq, ldf, ldp = k["kThreads"] // 4, d + 4, bk + 4
        smem = (bq * ldf + 2 * bk * ldf + bq * ldp) * f32 + bk * 4  # Q, K, V, P, key mask
    else:
        elem = dtype.itemsize
        bq = 16 * (k["kThreads"] // 32)  # one 16-row slab of queries per warp
        ldh, lds, ldp, ldo = d + 8, bk + 4, bk + 8, d + 4
        q_or_scores = max(bq * ldh * elem, bq * lds * f32)
        # Q / scores, K, V, P, output accumulator, key mask
        smem = q_or_scores + 2 * bk * ldh * elem + bq * ldp * elem + bq * ldo * f32 + bk * 4
    return Config(*_kernel(dtype, d), bq, smem)


@functools.cache
def constants() -> dict[str, int]:
    """kThreads, kBlockK, kRopeThreads of the header: the launch code's block sizes."""
    return header_constants(HEADER)


@functools.cache
def configs() -> dict[tuple[torch.dtype, int], Config]:
    return {(dt, d): _config(dt, d, constants()) for dt in CTYPES for d in _HEAD_DIMS}


def _config_asserts() -> str:
    """For the NVRTC unit: the launch numbers above are the kernels' own."""
    lines = []
    for c in configs().values():
        for member, value in (("BQ", c.block_q), ("smem", c.smem)):
            lines.append(f'static_assert({c.cfg}::{member} == {value}, '
                         f'"{c.cfg}::{member} differs from stream_r1_fast.nvrtc");')
    return "\n".join(lines) + "\n"


SPEC = KernelSpec(
    op="sink_attention",
    header=HEADER,
    names=(_ROPE_KERNEL,) + tuple(_kernel(dt, d)[0] for dt in CTYPES for d in _HEAD_DIMS),
    structs=(PARAMS, LAYOUT),
    cuda_headers=CUDA_HEADERS["sink_attention"],
    checks=_config_asserts,
)
MODULE = KernelModule(SPEC)


def rope_table_layout(slots: int, q_frames: int, grid_h: int, grid_w: int, head_dim: int) -> dict[str, int]:
    """RopeTableLayout::of (sink_attention.h): per-axis (cos, sin) tables, sizes in entries."""
    d6 = head_dim // 6
    t_pairs, h_pairs, w_pairs = (head_dim - 4 * d6) // 2, d6, d6
    frames = slots + q_frames
    h_offset = frames * t_pairs
    w_offset = h_offset + grid_h * h_pairs
    return dict(t_pairs=t_pairs, h_pairs=h_pairs, w_pairs=w_pairs, frames=frames,
                h_offset=h_offset, w_offset=w_offset, entries=w_offset + grid_w * w_pairs)


def _aligned16(t: torch.Tensor) -> torch.Tensor:
    """The kernels read 16-byte vectors; a view at an odd offset is copied once."""
    return t if t.data_ptr() % 16 == 0 else t.clone()


def sink_attention_cuda(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale,
                        rope_theta):
    """The CUDA kernel of ``stream_r1_fast::sink_attention`` (schema: csrc/registration.cpp)."""
    # The op's checks, the kernels' size limits included (keys < 2^31, batch and heads <= 65535).
    as_runtime_error(check_inputs, q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h,
                     grid_w, scale, rope_theta)
    # Reached with a CPU q only when some other argument is on CUDA: name that mismatch.
    if not q.is_cuda:
        raise RuntimeError(f"sink_attention: all tensors must be on the device of q ({q.device}); "
                           "got CUDA tensors among them")
    return forward(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta)


def forward(q, k, v, k_cache, v_cache, cache_pos, q_pos, grid_h, grid_w, scale, rope_theta):
    """Allocation and launch of validated inputs, on torch's current stream of q's device:
    (out [B, Lq, H, D] in q's dtype, lse [B, H, Lq] float32)."""
    b, lq, h, d = q.shape
    out = torch.empty_like(q)
    lse = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    slots = k_cache.shape[1]
    layout = rope_table_layout(slots, lq // (grid_h * grid_w), grid_h, grid_w, d)
    table = torch.empty(2 * layout["entries"], dtype=torch.float32, device=q.device)
    qa, ka, va, kca, vca = (_aligned16(t) for t in (q, k, v, k_cache, v_cache))
    params = PARAMS.pack(
        q=qa.data_ptr(), k=ka.data_ptr(), v=va.data_ptr(), k_cache=kca.data_ptr(),
        v_cache=vca.data_ptr(), cache_pos=cache_pos.data_ptr(), q_pos=q_pos.data_ptr(),
        out=out.data_ptr(), lse=lse.data_ptr(), rope_table=table.data_ptr(),
        batch=b, q_len=lq, heads=h, head_dim=d, slots=slots, grid_h=grid_h, grid_w=grid_w,
        scale=np.float32(scale), rope_theta=rope_theta, dtype=_DTYPE_CODE[q.dtype],
    )
    layout_arg = LAYOUT.pack(**layout)
    cfg, consts = configs()[(q.dtype, d)], constants()
    device = q.device
    with torch_stream(device):
        rope_threads = consts["kRopeThreads"]
        MODULE.kernel(_ROPE_KERNEL, device)(
            (-(-layout["entries"] // rope_threads),), (rope_threads,),
            (table.data_ptr(), layout_arg, cache_pos.data_ptr(), q_pos.data_ptr(), np.int32(slots),
             np.float64(rope_theta)),
        )
        kernel = MODULE.kernel(cfg.kernel, device)
        # Above 48 KiB a kernel must opt in (cudaFuncSetAttribute in the C++ launcher).
        kernel.max_dynamic_shared_size_bytes = cfg.smem
        kernel((-(-lq // cfg.block_q), h, b), (consts["kThreads"],), (params, layout_arg),
               shared_mem=cfg.smem)
    return out, lse
