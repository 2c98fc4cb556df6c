"""Public ``rotated_cache_advance``: one refresh of one block of the rotated KV cache (fold,
move and re-rotation of the survivors, the chunk written rotated) in one pass; docs/method.md,
section 2, "How the cache is stored".

The semantics are defined by
:func:`stream_r1_fast.ops.rotated_cache_ref.rotated_cache_advance_ref`; this module validates
the arguments, dispatches to the compiled kernel of the tensors' device when there is one (else
to the reference) and registers the fake kernel ``torch.compile`` traces through. A no-grad
cache op: there is no autograd formula, and a call that would need one is refused.
"""

from __future__ import annotations

import torch

from stream_r1_fast._backend import backend_info, use_kernel
from stream_r1_fast.ops._checks import (
    FLOAT_DTYPES_AND_64,
    INT32_MAX,
    check_contiguous,
    check_float_dtypes,
    check_int,
    check_no_overlap,
    check_number,
    check_same_device,
    check_tensors,
    checked_size,
)
from stream_r1_fast.ops.rope import compute_dtype
from stream_r1_fast.ops.rotated_cache_ref import rotated_cache_advance_ref

_OP = "rotated_cache_advance"


def check_inputs(keys, values, k_new, v_new, cos, sin, occupied, sink_size, window, alpha) -> None:
    """The user-facing checks of ``rotated_cache_advance``, run by the wrapper and the fake
    kernel (direct torch.ops calls, through the compiled or the NVRTC kernels, are kept memory
    safe by make_params of csrc/rotated_cache/rotated_cache_torch.h). TypeError / ValueError
    naming the argument."""
    check_tensors(keys=keys, values=values, k_new=k_new, v_new=v_new, cos=cos, sin=sin)
    check_int("occupied", occupied)
    check_int("sink_size", sink_size)
    check_int("window", window)
    check_number("alpha", alpha)
    # One device for every tensor, first: a mixed call may be running the fake kernel.
    check_same_device("keys", keys, values=values, k_new=k_new, v_new=v_new, cos=cos, sin=sin)
    if keys.dim() != 5:
        raise ValueError(f"keys must have 5 dimensions [B, N, P, H, D], got shape {tuple(keys.shape)}")
    if values.shape != keys.shape:
        raise ValueError(f"values must have the shape of keys ({tuple(keys.shape)}), got {tuple(values.shape)}")
    if k_new.dim() != 4:
        raise ValueError(f"k_new must have 4 dimensions [B, F * P, H, D], got shape {tuple(k_new.shape)}")
    if v_new.shape != k_new.shape:
        raise ValueError(f"v_new must have the shape of k_new ({tuple(k_new.shape)}), got {tuple(v_new.shape)}")
    b, n, p, h, d = keys.shape
    if p < 1:
        raise ValueError(f"keys must hold at least one token per frame (P >= 1), got shape {tuple(keys.shape)}")
    if d < 2 or d % 2:
        raise ValueError(f"keys.shape[4] (head_dim D) must be even and >= 2 (RoPE pairs), got {d}")
    if not (sink_size >= 0 and window >= 1 and sink_size + window <= n):
        raise ValueError(
            f"sink_size and window must satisfy sink_size >= 0, window >= 1 and sink_size + window <= "
            f"N = {n} buffer frames, got sink_size = {sink_size}, window = {window}"
        )
    if not 0 <= occupied <= sink_size + window:
        raise ValueError(f"occupied must be in [0, sink_size + window] = [0, {sink_size + window}], got {occupied}")
    if not 0.0 <= alpha <= 1.0:  # NaN fails too
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if k_new.shape[0] != b or k_new.shape[2] != h or k_new.shape[3] != d:
        raise ValueError(
            f"k_new must have shape [B, F * P, H, D] = [{b}, F * {p}, {h}, {d}] to match keys, "
            f"got {tuple(k_new.shape)}"
        )
    if k_new.shape[1] % p != 0:
        raise ValueError(f"k_new.shape[1] ({k_new.shape[1]}) must be a multiple of the {p} tokens per frame of keys")
    f = k_new.shape[1] // p
    if not 1 <= f <= window:
        raise ValueError(
            f"k_new must hold between 1 and window = {window} frames, got {f} ({k_new.shape[1]} tokens of {p})"
        )
    # The sizes the kernels compute with (csrc/rotated_cache/rotated_cache_torch.h): an empty
    # dimension lets the others multiply past int64.
    checked_size("keys.shape[1] (N, buffer frames)", n, INT32_MAX)
    checked_size("2 * keys.numel()", 2 * b * n * p * h * d)
    for name, table in (("cos", cos), ("sin", sin)):
        if table.dim() != 2 or tuple(table.shape) != (n * p, d // 2):
            raise ValueError(f"{name} must have shape [N * P, D / 2] = [{n * p}, {d // 2}], got {tuple(table.shape)}")
    check_float_dtypes("keys", keys, allowed=FLOAT_DTYPES_AND_64, values=values, k_new=k_new, v_new=v_new)
    want = compute_dtype(keys.dtype)
    for name, table in (("cos", cos), ("sin", sin)):
        if table.dtype != want:
            raise ValueError(f"{name} must be {want} (the compute dtype of {keys.dtype} keys), got {table.dtype}")
    check_contiguous(keys=keys, values=values, k_new=k_new, v_new=v_new, cos=cos, sin=sin)
    check_no_overlap(dict(keys=keys, values=values), dict(k_new=k_new, v_new=v_new, cos=cos, sin=sin))


def rotated_cache_advance(
    keys: torch.Tensor,
    values: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    occupied: int,
    sink_size: int,
    window: int,
    alpha: float = 0.999,
) -> None:
    """Advance one block's rotated KV buffers by one chunk, in place (once per refresh).

    Args:
        keys, values: [B, N, P, H, D], N >= sink_size + window frames of P tokens in age order
            (sink, then the window oldest first); keys stored rotated at their slot's position.
        k_new, v_new: [B, F * P, H, D], the chunk's F frames (1 <= F <= window), k_new before
            RoPE; same dtype (float32, float16, bfloat16 or float64) and device as the buffers.
        cos, sin: [N * P, D / 2] RoPE tables of the slots
            (:func:`~stream_r1_fast.ops.rope.rope_tables`), float32 (float64 for float64 buffers).
        occupied: m, frames held before the chunk, 0 <= m <= sink_size + window.
        sink_size, window: S >= 0 sink frames, W >= 1 window frames.
        alpha: EMA weight of the old sink, in [0, 1] (1 keeps a static sink).

    The E = max(0, m + F - S - W) oldest window frames are folded into the sink by the EMA
    group mean of ``ema_cache_update`` in rotated space, the surviving window frames move down
    E slots (temporal RoPE pairs turned by -E), and the chunk is written at [m - E, m - E + F),
    keys rotated at those slots (details: :mod:`stream_r1_fast.ops.rotated_cache_ref`). The
    frames held after the call are ``min(m + F, S + W)``. Every decision is a host integer:
    nothing is read from the device (CUDA-graph capturable). A no-grad op: with grad enabled,
    tensors that require grad are refused (RuntimeError). Raises TypeError / ValueError on
    malformed arguments, naming the argument.
    """
    check_inputs(keys, values, k_new, v_new, cos, sin, occupied, sink_size, window, alpha)
    if torch.is_grad_enabled():
        for name, t in (("keys", keys), ("values", values), ("k_new", k_new), ("v_new", v_new), ("cos", cos),
                        ("sin", sin)):
            if t.requires_grad:
                raise RuntimeError(
                    f"rotated_cache_advance has no autograd (a no-grad cache op), but {name} requires grad: "
                    f"call it under torch.no_grad() or pass {name}.detach()"
                )
    if use_kernel(_OP, keys.device.type):
        torch.ops.stream_r1_fast.rotated_cache_advance(
            keys, values, k_new, v_new, cos, sin, occupied, sink_size, window, alpha
        )
    else:
        rotated_cache_advance_ref(keys, values, k_new, v_new, cos, sin, occupied, sink_size, window, alpha)


if backend_info().name == "extension":

    @torch.library.register_fake(f"stream_r1_fast::{_OP}")
    def _rotated_cache_advance_fake(keys, values, k_new, v_new, cos, sin, occupied, sink_size, window, alpha):
        # The wrapper's checks: a traced call fails as an eager one would, and a direct call
        # that mixes meta with real tensors (which lands here) is refused.
        check_inputs(keys, values, k_new, v_new, cos, sin, occupied, sink_size, window, alpha)
        return None
