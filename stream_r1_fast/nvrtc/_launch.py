"""The one NVRTC launcher of every op: the compiled extension plans, this module launches.

``<op>_plan`` (csrc/<op>/<op>_plan.cpp) takes the op's arguments, checks and prepares them as
the nvcc launcher does (outputs, workspace, aligned copies) and returns the params struct's
bytes with the launches of ``plan()`` of csrc/<op>/<op>.h; ``<op>_kernels`` names the kernels.
Here the kernels are compiled (``_compile``) and launched, each with the params bytes as its
one argument, on torch's current stream. Nothing about an op is known in Python but its name.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from stream_r1_fast import _op_table
from stream_r1_fast.nvrtc._compile import KernelModule, KernelSpec, torch_stream

LAUNCH_FIELDS = 8  # kernel, grid x y z, block x y z, dynamic shared memory


def _private_op(name: str):
    return getattr(torch.ops.stream_r1_fast, name)


@functools.cache
def spec(op: str) -> KernelSpec:
    """The NVRTC unit of ``op``: its kernel header, and the kernel names and params size the
    compiled extension reports."""
    entry = _op_table.op(op)
    names, params_bytes = _private_op(f"{op}_kernels")()
    return KernelSpec(op=entry.folder, header=entry.kernel_header, names=tuple(names),
                      params_type=f"srf::{entry.folder}::Params", params_bytes=int(params_bytes),
                      cuda_headers=entry.cuda_headers)


@functools.cache
def module(op: str) -> KernelModule:
    return KernelModule(spec(op))


def params_argument(params: torch.Tensor) -> np.ndarray:
    """The params struct's bytes as a one-element NumPy struct of 8-byte words (the structs
    hold pointers: 8-byte aligned, a multiple of 8 long), which CuPy passes by value."""
    raw = params.numpy()
    if raw.size % 8:
        raise RuntimeError(f"params struct of {raw.size} bytes is not a whole number of 8-byte words")
    return raw.view(np.dtype([(f"w{i}", np.uint64) for i in range(raw.size // 8)]))


def launches(flat: list[int]) -> list[tuple[int, tuple[int, int, int], tuple[int, int, int], int]]:
    """(kernel index, grid, block, shared memory) of each launch of a flattened plan."""
    out = []
    for i in range(0, len(flat), LAUNCH_FIELDS):
        k, gx, gy, gz, bx, by, bz, smem = flat[i:i + LAUNCH_FIELDS]
        out.append((k, (gx, gy, gz), (bx, by, bz), smem))
    return out


def plan(op: str, *args, device_type: str = "cuda"):
    """(outputs, buffers, params bytes, flattened launches) of the extension's planner for
    ``op``'s arguments. ``"cuda"``: its CUDA kernel, which checks as the nvcc entry point does
    (the device of the tensors included); ``"cpu"``: the same planner without that device
    check, which launches nothing (how the tests look at plans without a GPU)."""
    key = {"cuda": torch._C.DispatchKey.CUDA, "cpu": torch._C.DispatchKey.CPU}[device_type]
    overload = _private_op(f"{op}_plan").default
    return overload.redispatch(torch._C.DispatchKeySet(key), *args)


def run(op: str, *args, device_type: str = "cuda"):
    """``op`` through NVRTC: plan, launch on the device of the first argument, return what the
    op returns."""
    outputs, buffers, params, flat = plan(op, *args, device_type=device_type)
    if flat:
        device = args[0].device
        names, kernels, argument = spec(op).names, module(op), params_argument(params)
        with torch_stream(device):
            for k, grid, block, smem in launches(flat):
                kernel = kernels.kernel(names[k], device)
                if smem:  # above 48 KiB a kernel must opt in
                    kernel.max_dynamic_shared_size_bytes = smem
                kernel(grid, block, (argument,), shared_mem=smem)
    # `buffers` (workspace, aligned copies) may go now: the caching allocator hands their
    # memory out again only to work ordered after these launches on the same stream.
    del buffers
    return tuple(outputs) if outputs else None


@functools.cache
def launcher(op: str):
    """The CUDA kernel of ``stream_r1_fast::<op>`` that runs through NVRTC."""

    def kernel(*args):
        return run(op, *args)

    kernel.__name__ = kernel.__qualname__ = f"{op}_nvrtc"
    return kernel
