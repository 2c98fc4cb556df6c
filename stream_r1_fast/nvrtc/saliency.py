"""saliency_weights' CUDA kernels through NVRTC: ``prepare`` of csrc/saliency/saliency_torch.h
and ``launch_saliency_weights_cuda`` of csrc/saliency/saliency_kernel.cu in Python, on the
kernels of saliency_kernels.cuh."""

from __future__ import annotations

import functools

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
from stream_r1_fast.ops import saliency as _op
from stream_r1_fast.ops.saliency_ref import latent_grid

HEADER = "saliency/saliency_kernels.cuh"

_PTR, _I64, _F32 = np.uint64, np.int64, np.float32
# srf::saliency::Params (csrc/saliency/saliency.h), field for field.
PARAMS = Struct("srf::saliency::Params", np.dtype([
    ("saliency", _PTR), ("dtype", np.int32), ("fused_input", np.bool_), ("axis_weights", _PTR),
    ("axis_weights_b_stride", _I64),
    ("A", _I64), ("B", _I64), ("T", _I64), ("C", _I64), ("H", _I64), ("W", _I64),
    ("F", _I64), ("h", _I64), ("w", _I64), ("tf", _I64), ("sf", _I64), ("mode", np.int32),
    ("tau_floor", _F32), ("sigma_floor", _F32), ("gamma_t", _F32), ("gamma_s", _F32),
    ("weights", _PTR), ("tau", _PTR), ("sigma", _PTR), ("frame_mean", _PTR), ("sigma_sum", _PTR),
], align=True))
_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # common/dtype_code.h
_MODE_CODE = {"vae": 0, "trilinear": 1}  # saliency::Mode
_CHANNELS = (1, 3, 0)  # kC: unrolled channel loops for 1 and 3 channels, 0 = any


def _latent_kernel(mode: str, ctype: str, channels: int) -> str:
    return f"srf::saliency::latent_{mode}_kernel<{ctype}, {channels}>"


SPEC = KernelSpec(
    op="saliency",
    header=HEADER,
    names=tuple(_latent_kernel(m, ct, c) for m in _MODE_CODE for ct in CTYPES.values()
                for c in _CHANNELS)
    + ("srf::saliency::spatial_kernel", "srf::saliency::weights_kernel"),
    structs=(PARAMS,),
)
MODULE = KernelModule(SPEC)
_K: dict[str, int] = {}
_INT32_MAX = 2**31 - 1


def saliency_weights_cuda(saliency, axis_weights, mode, temporal_factor, spatial_factor,
                          tau_floor, sigma_floor, gamma_t, gamma_s):
    """The CUDA kernel of ``stream_r1_fast::saliency_weights`` (schema: csrc/registration.cpp)."""
    # The dispatcher picks CUDA when any argument is on CUDA; a fused map ignores axis_weights.
    if not saliency.is_cuda:
        raise RuntimeError(f"saliency must be a CUDA tensor here (axis_weights is on "
                           f"{axis_weights.device}), got {saliency.device}")
    fused = saliency.dim() == 4
    as_runtime_error(functools.partial(_op.check_inputs, op=True), saliency, axis_weights, mode,
                     temporal_factor, spatial_factor, tau_floor, sigma_floor, gamma_t, gamma_s)
    if not _K:
        _K.update(header_constants(HEADER))

    if fused:
        a, (b, t, h_px, w_px), c = 1, saliency.shape, 1
        weights_f32, b_stride = None, 0
    else:
        a, b, t, c, h_px, w_px = saliency.shape
        weights_f32 = axis_weights.to(torch.float32).contiguous()
        b_stride = a if axis_weights.dim() == 2 else 0
    f, h, w = latent_grid(t, h_px, w_px, temporal_factor, spatial_factor)
    opts = dict(dtype=torch.float32, device=saliency.device)
    out_weights = torch.empty((b, f, h, w), **opts)
    tau = torch.empty((b, f), **opts)
    sigma = torch.empty((b, f, h, w), **opts)
    workspace = torch.empty((2, b * f), **opts)
    params = PARAMS.pack(
        saliency=saliency.data_ptr(), dtype=_DTYPE_CODE[saliency.dtype], fused_input=fused,
        axis_weights=0 if weights_f32 is None else weights_f32.data_ptr(),
        axis_weights_b_stride=b_stride, A=a, B=b, T=t, C=c, H=h_px, W=w_px, F=f, h=h, w=w,
        tf=temporal_factor, sf=spatial_factor, mode=_MODE_CODE[mode], tau_floor=tau_floor,
        sigma_floor=sigma_floor, gamma_t=gamma_t, gamma_s=gamma_s,
        weights=out_weights.data_ptr(), tau=tau.data_ptr(), sigma=sigma.data_ptr(),
        frame_mean=workspace.data_ptr(), sigma_sum=workspace[1].data_ptr(),
    )

    device, ctype = saliency.device, CTYPES[saliency.dtype]
    channels = 1 if fused or c == 1 else (3 if c == 3 else 0)
    tx, ty, threads = _K["kTX"], _K["kTY"], _K["kThreads"]
    with torch_stream(device):
        if mode == "vae":
            seg = min(spatial_factor, tx)
            blocks = b * f * h * -(-w // (tx // seg))
            if blocks > _INT32_MAX:
                raise RuntimeError("saliency_weights: CUDA launch failed: invalid configuration "
                                   f"argument ({blocks} blocks)")
            MODULE.kernel(_latent_kernel(mode, ctype, channels), device)((blocks,), (tx, ty), (params,))
        else:
            blocks = min(-(-b * f * h * w // threads), 65535 * 16)
            MODULE.kernel(_latent_kernel(mode, ctype, channels), device)((blocks,), (threads,), (params,))
        for name in ("srf::saliency::spatial_kernel", "srf::saliency::weights_kernel"):
            MODULE.kernel(name, device)((b * f,), (threads,), (params,))
    return out_weights, tau, sigma
