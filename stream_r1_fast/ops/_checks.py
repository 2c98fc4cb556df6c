"""Argument checks shared by the ops' user-facing validation (one ``check_inputs`` per op, run
by the public wrapper and by the fake kernel). Every message names the argument. The C++
entry points (which the NVRTC launcher reaches through the ops' planners) keep the
memory-safety checks (csrc/common/checks.h) that also protect direct ``torch.ops`` calls.
"""

from __future__ import annotations

import math

import torch

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the kernels compute in
FLOAT_DTYPES_AND_64 = (*FLOAT_DTYPES, torch.float64)  # rotated_cache_advance's kernels


def _type_name(x: object) -> str:
    return type(x).__name__


def check_tensors(**tensors: object) -> None:
    """TypeError naming the first argument that is not a tensor."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {_type_name(t)}")


def check_same_device(ref_name: str, ref: torch.Tensor, **tensors: torch.Tensor) -> None:
    """All tensors on the device of ``ref``. Also where the fake kernel runs: a call that mixes
    ``meta`` with real tensors dispatches to the fake kernel, which must refuse it."""
    for name, t in tensors.items():
        if t.device != ref.device:
            raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def _dtype_names(dtypes: tuple[torch.dtype, ...]) -> str:
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1]


def check_float_dtypes(ref_name: str, ref: torch.Tensor, *, allowed: tuple[torch.dtype, ...] = FLOAT_DTYPES,
                       **tensors: torch.Tensor) -> None:
    """``ref`` in one of the kernels' dtypes (``allowed``: FLOAT_DTYPES, or FLOAT_DTYPES_AND_64
    for ops whose kernels also compute in double), every other tensor in its dtype."""
    if ref.dtype not in allowed:
        raise ValueError(f"{ref_name} must be {_dtype_names(allowed)}, got {ref.dtype}")
    for name, t in tensors.items():
        if t.dtype != ref.dtype:
            raise ValueError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")


def check_int32_vectors(**vectors: tuple[torch.Tensor, int]) -> None:
    """Each ``name=(tensor, n)``: an int32 tensor of shape [n]."""
    for name, (t, n) in vectors.items():
        if t.dtype != torch.int32:
            raise ValueError(f"{name} must be int32, got {t.dtype}")
        if t.dim() != 1 or t.numel() != n:
            raise ValueError(f"{name} must have shape [{n}], got {tuple(t.shape)}")


def check_contiguous(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous() first)")


def check_int(name: str, value: object, lo: int | None = None, hi: int = INT64_MAX) -> int:
    """An int (not a bool) in ``[lo, hi]`` (``hi`` defaults to the int64 range the op's schema
    takes); TypeError for another type, ValueError out of range. SymInts pass unchecked."""
    if isinstance(value, torch.SymInt):
        return value
    # Plain types (no numbers ABCs): torch.compile traces these checks without a graph break.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {_type_name(value)}")
    low = -INT64_MAX - 1 if lo is None else lo
    if not low <= value <= hi:
        bounds = f">= {low}" if hi == INT64_MAX else f"in [{low}, {hi}]"
        raise ValueError(f"{name} must be an int {bounds}, got {value}")
    return value


def check_number(name: str, value: object) -> float:
    """A real number (not a bool); TypeError otherwise."""
    if isinstance(value, torch.SymFloat):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {_type_name(value)}")
    return float(value)


def check_unit_interval(name: str, value: object) -> float:
    v = check_number(name, value)
    if not 0.0 <= v <= 1.0:  # NaN fails too
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return v


def check_finite(name: str, value: object) -> float:
    v = check_number(name, value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def checked_size(what: str, value: int, limit: int = INT64_MAX) -> int:
    """A size computed from the arguments (Python ints never wrap): ValueError naming the
    expression when it exceeds what the kernels index with (int64, or ``limit``)."""
    if isinstance(value, int) and value > limit:
        bound = "2^63 - 1 (int64)" if limit == INT64_MAX else ("2^31 - 1" if limit == INT32_MAX else str(limit))
        raise ValueError(f"{what} = {value} exceeds {bound}")
    return value


def check_no_overlap(written: dict[str, torch.Tensor], read: dict[str, torch.Tensor]) -> None:
    """An in-place op's contiguous outputs (``written``) must share memory with no other
    argument (inputs that only are read may alias each other): ValueError naming both.
    Skipped where there is no memory to compare (meta and fake tensors, tracing)."""
    if torch.compiler.is_compiling():
        return

    def span(t):
        if t.device.type == "meta" or torch._subclasses.fake_tensor.is_fake(t) or t.numel() == 0:
            return None
        return t.device, t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()

    spans = {name: span(t) for name, t in {**written, **read}.items()}
    names = list(spans)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if a not in written and b not in written:
                continue
            sa, sb = spans[a], spans[b]
            if sa and sb and sa[0] == sb[0] and sa[1] < sb[2] and sb[1] < sa[2]:
                raise ValueError(f"{a} and {b} must not share memory ({a if a in written else b} is updated in place)")
