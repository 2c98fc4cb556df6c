"""Which implementation of the fused ops is active, decided once at import.

Order of preference: the compiled extension (``stream_r1_fast._C``), else the pure PyTorch
reference. ``STREAM_R1_FAST_BACKEND`` forces a choice (``auto`` | ``extension`` |
``reference``); ``STREAM_R1_FAST_EXTENSION`` points at a compiled ``_C*.so`` to load instead of
the installed one (a developer's build tree).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings

import torch

logger = logging.getLogger("stream_r1_fast")

BACKEND_ENV = "STREAM_R1_FAST_BACKEND"
EXTENSION_ENV = "STREAM_R1_FAST_EXTENSION"
OPS = ("sink_attention", "ema_cache_update", "saliency_weights")


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """What runs the fused ops. ``name`` is ``"extension"`` or ``"reference"``."""

    name: str
    reason: str
    library: str | None
    cpu_kernels: bool
    cuda_kernels: bool

    def __str__(self) -> str:
        if self.name == "reference":
            return f"stream_r1_fast: pure PyTorch reference ops ({self.reason})"
        if self.cpu_kernels and self.cuda_kernels:
            where = "CPU + CUDA"
        elif self.cpu_kernels:
            where = "CPU (built without CUDA kernels: CUDA tensors use the reference)"
        else:
            where = "a subset of the ops (a partial developer build; the rest use the reference)"
        return f"stream_r1_fast: compiled kernels for {where} [{self.library}]"


def _has_kernel(op: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"stream_r1_fast::{op}", dispatch_key)


def _load() -> BackendInfo:
    choice = os.environ.get(BACKEND_ENV, "auto").strip().lower()
    if choice not in ("auto", "extension", "reference"):
        raise ValueError(
            f"{BACKEND_ENV}={choice!r}: expected 'auto', 'extension' or 'reference'"
        )
    if choice == "reference":
        return BackendInfo("reference", f"forced by {BACKEND_ENV}=reference", None, False, False)
    path = os.environ.get(EXTENSION_ENV)
    try:
        if path:
            torch.ops.load_library(path)
            library = path
        else:
            from stream_r1_fast import _C  # noqa: F401  (registers the ops)

            library = _C.__file__
    except (ImportError, OSError) as exc:
        if choice == "extension":
            raise ImportError(
                f"{BACKEND_ENV}=extension but the compiled extension cannot be loaded: {exc}"
            ) from exc
        return BackendInfo(
            "reference", f"compiled extension unavailable: {exc}", None, False, False
        )
    return BackendInfo(
        "extension",
        "compiled extension loaded",
        library,
        cpu_kernels=all(_has_kernel(op, "CPU") for op in OPS),
        cuda_kernels=all(_has_kernel(op, "CUDA") for op in OPS),
    )


INFO = _load()
if INFO.name == "reference":
    warnings.warn(str(INFO), RuntimeWarning, stacklevel=2)
else:
    logger.info("%s", INFO)


def backend_info() -> BackendInfo:
    """The backend chosen at import (see the module docstring for how to force one)."""
    return INFO


# Which (op, device type) pairs have a compiled kernel, fixed at import. A plain dict so that
# the lookup inside the public ops traces under torch.compile(fullgraph=True).
_KERNELS: dict[tuple[str, str], bool] = {
    (op, device_type): INFO.name == "extension" and _has_kernel(op, key)
    for op in OPS
    for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA"))
}


def use_kernel(op: str, device_type: str) -> bool:
    """Whether ``op`` on tensors of ``device_type`` runs a compiled kernel (else the reference)."""
    return _KERNELS.get((op, device_type), False)
