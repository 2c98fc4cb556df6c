"""Public ``ema_cache_update``: the EMA-Sink KV cache step (Reward Forcing, arXiv 2512.04678;
docs/method.md, section 2, "The EMA-Sink cache").

The semantics are defined by :func:`stream_r1_fast.ops.ema_cache_ref.ema_cache_update_ref`;
this module validates the arguments, dispatches to the compiled kernel of the tensors' device
when there is one (else to the reference) and registers the fake kernel ``torch.compile``
traces through.
"""

from __future__ import annotations

import torch

from stream_r1_fast._backend import backend_info, use_kernel
from stream_r1_fast.ops._checks import (
    FLOAT_DTYPES,
    INT32_MAX,
    check_contiguous,
    check_float_dtypes,
    check_int,
    check_int32_vectors,
    check_no_overlap,
    check_number,
    check_same_device,
    check_tensors,
    checked_size,
)
from stream_r1_fast.ops.ema_cache_ref import ema_cache_update_ref

_OP = "ema_cache_update"


def new_sink_cache(
    batch: int,
    sink_size: int,
    window: int,
    tokens_per_frame: int,
    heads: int,
    head_dim: int,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An empty EMA-Sink cache for one layer: ``(k_cache, v_cache, cache_pos, state)``.

    ``k_cache``/``v_cache``: zeros [batch, sink_size + window, tokens_per_frame, heads,
    head_dim]; ``cache_pos``: int32 [sink_size + window], all -1 (every slot empty);
    ``state``: int32 [4] zeros. Pass them to :func:`ema_cache_update` once per chunk.
    """
    for name, value in (("batch", batch), ("sink_size", sink_size), ("window", window),
                        ("tokens_per_frame", tokens_per_frame), ("heads", heads), ("head_dim", head_dim)):
        check_int(name, value)
    if sink_size < 0 or window < 1:
        raise ValueError(f"need sink_size >= 0 and window >= 1, got {sink_size} and {window}")
    if tokens_per_frame < 1:
        raise ValueError(f"tokens_per_frame must be >= 1, got {tokens_per_frame}")
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    slots = sink_size + window
    shape = (batch, slots, tokens_per_frame, heads, head_dim)
    k_cache = torch.zeros(shape, dtype=dtype, device=device)
    v_cache = torch.zeros(shape, dtype=dtype, device=device)
    cache_pos = torch.full((slots,), -1, dtype=torch.int32, device=device)
    state = torch.zeros(4, dtype=torch.int32, device=device)
    return k_cache, v_cache, cache_pos, state


def check_inputs(k_cache, v_cache, cache_pos, state, k_new, v_new, sink_size, alpha) -> None:
    """The user-facing checks of ``ema_cache_update``, run by the wrapper and the fake kernel
    (direct torch.ops calls, through the compiled or the NVRTC kernels, are kept memory safe
    by make_params of csrc/ema_cache/ema_cache_torch.h). TypeError / ValueError naming the
    argument."""
    check_tensors(k_cache=k_cache, v_cache=v_cache, cache_pos=cache_pos, state=state,
                  k_new=k_new, v_new=v_new)
    check_int("sink_size", sink_size)
    check_number("alpha", alpha)
    # One device for every tensor, first: a mixed call may be running the fake kernel.
    check_same_device("k_cache", k_cache, v_cache=v_cache, cache_pos=cache_pos, state=state,
                      k_new=k_new, v_new=v_new)
    if k_cache.dim() != 5:
        raise ValueError(
            f"k_cache must have 5 dimensions [B, S, P, H, D], got shape {tuple(k_cache.shape)}"
        )
    if v_cache.shape != k_cache.shape:
        raise ValueError(
            f"v_cache must have the shape of k_cache ({tuple(k_cache.shape)}), got {tuple(v_cache.shape)}"
        )
    if k_new.dim() != 4:
        raise ValueError(
            f"k_new must have 4 dimensions [B, Fn * P, H, D], got shape {tuple(k_new.shape)}"
        )
    if v_new.shape != k_new.shape:
        raise ValueError(
            f"v_new must have the shape of k_new ({tuple(k_new.shape)}), got {tuple(v_new.shape)}"
        )
    b, s, p, h, d = k_cache.shape
    if p < 1:
        raise ValueError(
            f"k_cache must hold at least one token per frame (P >= 1), got shape {tuple(k_cache.shape)}"
        )
    if not 0 <= sink_size < s:
        raise ValueError(
            f"sink_size must be in [0, S) with S = {s} cache slots (at least one ring slot), "
            f"got {sink_size}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if k_new.shape[0] != b or k_new.shape[2] != h or k_new.shape[3] != d:
        raise ValueError(
            f"k_new must have shape [B, Fn * P, H, D] = [{b}, Fn * {p}, {h}, {d}] to match "
            f"k_cache, got {tuple(k_new.shape)}"
        )
    if k_new.shape[1] % p != 0:
        raise ValueError(
            f"k_new.shape[1] ({k_new.shape[1]}) must be a multiple of the {p} tokens per frame "
            "of k_cache"
        )
    ring, fn = s - sink_size, k_new.shape[1] // p
    if not 1 <= fn <= ring:
        raise ValueError(
            f"k_new must hold between 1 and W = S - sink_size = {ring} frames, got {fn} "
            f"({k_new.shape[1]} tokens of {p})"
        )
    # The sizes the kernels compute with (csrc/ema_cache/ema_cache_torch.h): an empty
    # dimension lets the others multiply past int64.
    checked_size("k_cache.shape[1] (S, cache slots)", s, INT32_MAX)
    checked_size("2 * k_cache.numel()", 2 * b * s * p * h * d)
    check_float_dtypes("k_cache", k_cache, v_cache=v_cache, k_new=k_new, v_new=v_new)
    check_int32_vectors(cache_pos=(cache_pos, s), state=(state, 4))
    check_contiguous(k_cache=k_cache, v_cache=v_cache, cache_pos=cache_pos, state=state,
                     k_new=k_new, v_new=v_new)
    check_no_overlap(dict(k_cache=k_cache, v_cache=v_cache, cache_pos=cache_pos, state=state),
                     dict(k_new=k_new, v_new=v_new))


def ema_cache_update(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_pos: torch.Tensor,
    state: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    sink_size: int,
    alpha: float = 0.999,
) -> None:
    """Write one chunk's K/V into an EMA-Sink cache, in place (once per chunk, per layer).

    Args:
        k_cache, v_cache: [B, S, P, H, D] pre-RoPE cache, one latent frame of P tokens per
            slot; slots ``0..sink_size-1`` are the sink, the other ``W = S - sink_size`` a ring.
        cache_pos: int32 [S], rewritten: window-relative temporal position of each slot (sink
            0.., then the window oldest first), -1 for an empty slot.
        state: int32 [4] = (sink_filled, ring_start, ring_count, next_pos), read and advanced
            on the tensors' device (no host sync, CUDA-graph capturable). Start from zeros
            (see :func:`new_sink_cache`); ``next_pos`` is the position of the next chunk.
        k_new, v_new: [B, Fn * P, H, D], the chunk's Fn frames, 1 <= Fn <= W; same dtype
            (float32, float16 or bfloat16) and device as the caches.
        sink_size: sink frames, 0 <= sink_size < S.
        alpha: EMA weight of the old sink, in [0, 1] (1 keeps a static sink).

    New frames fill the sink first, then free ring slots. Once the ring is full its oldest
    frames are evicted, E >= 1 of them (e_0 oldest), and folded into a full sink of
    S = ``sink_size`` >= 1 frames whatever E is: sink frame i takes the mean of its group,
    ``sink_i = alpha * sink_i + (1 - alpha) * mean_{j in [lo_i, hi_i)} e_j`` with
    ``lo_i = floor(i * E / S)``, ``hi_i = max(floor((i + 1) * E / S), lo_i + 1)``, token for
    token in float32, K and V alike (E == S: e_i into sink_i; E > S: consecutive evicted frames
    averaged; E < S: consecutive sink frames share one). ``sink_size = 0``: the evicted frames
    are dropped (a sliding window). The new frames take the evicted slots. Raises TypeError /
    ValueError on malformed arguments, naming the argument.
    """
    check_inputs(k_cache, v_cache, cache_pos, state, k_new, v_new, sink_size, alpha)
    if use_kernel(_OP, k_cache.device.type):
        torch.ops.stream_r1_fast.ema_cache_update(
            k_cache, v_cache, cache_pos, state, k_new, v_new, sink_size, alpha
        )
    else:
        ema_cache_update_ref(k_cache, v_cache, cache_pos, state, k_new, v_new, sink_size, alpha)


if backend_info().name == "extension":

    @torch.library.register_fake(f"stream_r1_fast::{_OP}")
    def _ema_cache_update_fake(k_cache, v_cache, cache_pos, state, k_new, v_new, sink_size, alpha):
        # The wrapper's checks: a traced call fails as an eager one would, and a direct call
        # that mixes meta with real tensors (which lands here) is refused.
        check_inputs(k_cache, v_cache, cache_pos, state, k_new, v_new, sink_size, alpha)
        return None
