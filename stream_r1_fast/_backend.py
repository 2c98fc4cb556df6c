"""Which implementation of the fused ops is active, decided once at import.

Order of preference: the compiled extension (``stream_r1_fast._C``), else the pure PyTorch
reference. For CUDA tensors, an extension built without CUDA kernels gets them compiled at run
time through NVRTC when a GPU and CuPy are present (:mod:`stream_r1_fast.nvrtc`), else the
reference runs. ``STREAM_R1_FAST_BACKEND`` forces a choice (``auto`` | ``extension`` |
``nvrtc`` | ``reference``; ``nvrtc`` = the extension with the NVRTC kernels for CUDA, even over
compiled ones); ``STREAM_R1_FAST_EXTENSION`` points at a compiled ``_C*.so`` to load instead of
the installed one (a developer's build tree).

The ops are those of the op table (:mod:`stream_r1_fast._op_table`). Deciding includes
registering the NVRTC kernels (:func:`stream_r1_fast.nvrtc.register`), so this module depends
on ``nvrtc`` and nothing imports it back but the ops that ask which backend runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings

import torch

from stream_r1_fast import _op_table, nvrtc

logger = logging.getLogger("stream_r1_fast")

BACKEND_ENV = "STREAM_R1_FAST_BACKEND"
EXTENSION_ENV = "STREAM_R1_FAST_EXTENSION"
OPS = _op_table.NAMES


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """What runs the fused ops. ``name`` is ``"extension"`` or ``"reference"``; ``cuda_kernels``
    whether the extension has compiled CUDA kernels for every op. For CUDA tensors,
    ``cuda_path`` is ``"compiled"``, ``"nvrtc"`` (``nvrtc_ops`` run kernels compiled at run time)
    or ``"reference"``; ``nvrtc_reason`` says why NVRTC is or is not used."""

    name: str
    reason: str
    library: str | None
    cpu_kernels: bool
    cuda_kernels: bool
    cuda_path: str = "reference"
    nvrtc_ops: tuple[str, ...] = ()
    nvrtc_reason: str = ""

    def attention(self) -> dict:
        """The dense-attention backend measured for every shape so far (the rotated cache's;
        :func:`stream_r1_fast.ops.dense_attention.attention_choices`)."""
        from stream_r1_fast.ops.dense_attention import attention_choices

        return attention_choices()

    def __str__(self) -> str:
        if self.name == "reference":
            return f"stream_r1_fast: pure PyTorch reference ops ({self.reason})"
        if self.cuda_path == "nvrtc":
            rest = "" if set(self.nvrtc_ops) == set(OPS) else "; other ops: reference on CUDA"
            where = (f"CPU; CUDA kernels compiled at run time by NVRTC for "
                     f"{', '.join(self.nvrtc_ops)} ({self.nvrtc_reason}{rest})")
        elif self.cpu_kernels and self.cuda_kernels:
            where = "CPU + CUDA"
        elif self.cpu_kernels:
            where = (f"CPU (built without CUDA kernels: CUDA tensors use the reference; "
                     f"NVRTC kernels unavailable: {self.nvrtc_reason})")
        else:
            where = "a subset of the ops (a partial developer build; the rest use the reference)"
        return f"stream_r1_fast: compiled kernels for {where} [{self.library}]"


def _has_kernel(op: str, dispatch_key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"stream_r1_fast::{op}", dispatch_key)
    except RuntimeError:  # an extension built before the op was added to the table: no schema
        return False


def _cuda_path(choice: str) -> tuple[str, tuple[str, ...], str]:
    """(cuda_path, nvrtc_ops, nvrtc_reason) for a loaded extension."""
    compiled = [op for op in OPS if _has_kernel(op, "CUDA")]
    wanted = nvrtc.KERNEL_OPS if choice == "nvrtc" else tuple(
        op for op in nvrtc.KERNEL_OPS if op not in compiled
    )
    fallback = "compiled" if compiled else "reference"
    if not wanted:
        return fallback, (), "compiled CUDA kernels present"
    unavailable = nvrtc.unavailable_reason()
    lacking = {} if unavailable else {
        op: why for op in wanted if (why := nvrtc.op_unavailable_reason(op)) is not None
    }
    if lacking:
        lacking_why = "; ".join(f"{op}: {why}" for op, why in lacking.items())
        wanted = tuple(op for op in wanted if op not in lacking)
        if choice == "nvrtc" or not wanted:
            unavailable = lacking_why
    if unavailable is not None:
        if choice == "nvrtc":
            raise ImportError(f"{BACKEND_ENV}=nvrtc but NVRTC kernels cannot run here: {unavailable}")
        return fallback, (), unavailable
    why = f"forced by {BACKEND_ENV}=nvrtc" if choice == "nvrtc" else "no compiled CUDA kernels"
    if lacking:
        why += f"; no NVRTC kernels for {lacking_why}"
    return "nvrtc", wanted, why


def _load() -> BackendInfo:
    choice = os.environ.get(BACKEND_ENV, "auto").strip().lower()
    if choice not in ("auto", "extension", "nvrtc", "reference"):
        raise ValueError(
            f"{BACKEND_ENV}={choice!r}: expected 'auto', 'extension', 'nvrtc' or 'reference'"
        )
    if choice == "reference":
        forced = f"forced by {BACKEND_ENV}=reference"
        return BackendInfo("reference", forced, None, False, False, nvrtc_reason=forced)
    path = os.environ.get(EXTENSION_ENV)
    try:
        if path:
            torch.ops.load_library(path)
            library = path
        else:
            from stream_r1_fast import _C  # noqa: F401  (registers the ops)

            library = _C.__file__
    except (ImportError, OSError) as exc:
        if choice in ("extension", "nvrtc"):
            raise ImportError(
                f"{BACKEND_ENV}={choice} but the compiled extension cannot be loaded "
                f"(it defines the ops, whichever kernels run): {exc}"
            ) from exc
        return BackendInfo(
            "reference", f"compiled extension unavailable: {exc}", None, False, False,
            nvrtc_reason="no compiled extension to register the kernels with",
        )
    cuda_path, nvrtc_ops, nvrtc_reason = _cuda_path(choice)
    return BackendInfo(
        "extension",
        "compiled extension loaded",
        library,
        cpu_kernels=all(_has_kernel(op, "CPU") for op in OPS),
        cuda_kernels=all(_has_kernel(op, "CUDA") for op in OPS),
        cuda_path=cuda_path,
        nvrtc_ops=nvrtc_ops,
        nvrtc_reason=nvrtc_reason,
    )


INFO = _load()
# CUDA kernels compiled at run time for the ops the extension has none for (or all, forced).
nvrtc.register(INFO.nvrtc_ops)
if INFO.name == "reference":
    warnings.warn(str(INFO), RuntimeWarning, stacklevel=2)
else:
    logger.info("%s", INFO)


def backend_info() -> BackendInfo:
    """The backend chosen at import (see the module docstring for how to force one)."""
    return INFO


# Which (op, device type) pairs have a kernel (compiled, or NVRTC: registered above), fixed
# at import. A plain dict so that the lookup inside the public ops
# traces under torch.compile(fullgraph=True).
_KERNELS: dict[tuple[str, str], bool] = {
    (op, device_type): INFO.name == "extension" and (
        _has_kernel(op, key) or (key == "CUDA" and op in INFO.nvrtc_ops)
    )
    for op in OPS
    for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}


def use_kernel(op: str, device_type: str) -> bool:
    """Whether ``op`` on tensors of ``device_type`` runs a kernel (else the reference)."""
    return _KERNELS.get((op, device_type), False)
