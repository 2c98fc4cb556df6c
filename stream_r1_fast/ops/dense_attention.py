"""Dense attention over keys already rotated and laid out contiguously, on the fastest backend.

The rotated cache (:class:`~stream_r1_fast.cache.RotatedSinkKVCache`) attends a chunk's
queries to one contiguous key range ``[occupied prefix | chunk]``, with no mask: plain dense
attention, which several libraries implement well. Which one is fastest depends on the GPU,
the library versions and the shape, so it is *measured* (:func:`choose_backend`): once per
process and shape, every backend available here runs the shape on random data, is checked
against PyTorch's own choice, and is timed (median of CUDA-event timings); the fastest wins.
Only three key lengths occur while a default cache fills, so a stream measures three shapes
once. :func:`attention_choices` (also ``backend_info().attention()``) reports what was chosen
and the times it was chosen on.

Backends (:data:`BACKENDS`; each where it can run):

* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, PyTorch's own choice (the
  only one off CUDA: ATen's kernels);
* ``cudnn`` / ``flash`` / ``efficient``: the same pinned to cuDNN attention, PyTorch's
  FlashAttention-2 kernels, or its memory-efficient kernels (``torch.nn.attention.sdpa_kernel``,
  which ``torch.compile(fullgraph=True)`` traces);
* ``fa3`` / ``fa2``: FlashAttention-3 (``flash_attn_interface``) or the ``flash_attn`` package,
  when installed (optional, never required; both register their kernels as torch ops);
* ``ours``: this package's FlashAttention-2-class kernel
  (:func:`~stream_r1_fast.ops.dense_attention_op.fused_dense_attention`), where its CUDA kernel
  is compiled or built by NVRTC and the shape is fp16 / bf16 with D in {64, 128}.

``STREAM_R1_FAST_ATTENTION=<backend>`` skips the measurement and uses that backend.
A forward that carries gradient (training) always uses ``sdpa``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import statistics
from typing import Callable

import torch
import torch.nn.functional as F

ATTENTION_ENV = "STREAM_R1_FAST_ATTENTION"
BACKENDS = ("sdpa", "cudnn", "flash", "efficient", "fa3", "fa2", "ours")
_SDPA_PINNED = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}
_EXTERNAL = {"fa3": "flash_attn_interface", "fa2": "flash_attn"}


@dataclasses.dataclass(frozen=True)
class AttentionChoice:
    """The backend chosen for one shape, and why: ``times_ms`` (median per backend that ran
    and matched), ``skipped`` (backend -> why it did not run here)."""

    backend: str
    reason: str
    times_ms: dict = dataclasses.field(default_factory=dict)
    skipped: dict = dataclasses.field(default_factory=dict)


_CHOICES: dict[tuple, AttentionChoice] = {}


def _module(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import failure means "not installed here"
        return None


_EXTERNAL_FNS: dict[str, Callable] = {}


def _external_fn(backend: str) -> Callable:
    """The ``flash_attn_func`` of an installed library, imported on first use (the measurement,
    outside any compiled region) and then a plain dict lookup, which torch.compile traces."""
    fn = _EXTERNAL_FNS.get(backend)
    if fn is None:
        fn = _EXTERNAL_FNS[backend] = _module(_EXTERNAL[backend]).flash_attn_func
    return fn


def _sdpa_pinned(name: str, q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, _SDPA_PINNED[name])):
        return F.scaled_dot_product_attention(q, k, v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """softmax(q kᵀ / sqrt(D)) v for q [B, Lq, H, D], k / v [B, Lk, H, D] (no mask) on
    ``backend``; returns [B, Lq, H, D] in q's dtype."""
    if backend in _OWN:
        return _OWN[backend][0](q, k, v)
    if backend in _EXTERNAL:
        fn = _external_fn(backend)
        out = fn(q, k, v)
        return out[0] if isinstance(out, tuple) else out
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(qt, kt, vt)
    elif backend in _SDPA_PINNED:
        out = _sdpa_pinned(backend, qt, kt, vt)
    else:
        raise ValueError(f"unknown attention backend {backend!r} (known: {', '.join(BACKENDS)})")
    return out.transpose(1, 2)


# This package's own backends, registered by the modules of their ops (ops/dense_attention_op.py
# registers "ours"; this module imports none of them, so the ops' backend selection never
# imports it back): name -> (run(q, k, v) -> out, why_not(dtype, head_dim) -> reason | None).
_OWN: dict[str, tuple[Callable, Callable]] = {}
_OWN_NAMES = ("ours",)


def register_own_backend(name: str, run: Callable, why_not: Callable) -> None:
    """Registers one of the package's own kernels as the CUDA backend ``name`` (of
    :data:`BACKENDS`): ``run(q, k, v)`` in the cache layout, ``why_not(dtype, head_dim)`` the
    reason it cannot run such inputs here (None when it can; either may be None: unknown)."""
    if name not in _OWN_NAMES:
        raise ValueError(f"{name!r} is not one of this package's attention backends ({', '.join(_OWN_NAMES)})")
    _OWN[name] = (run, why_not)


# Our own kernels are measured automatically only once they have been validated on a GPU (a
# fault in a never-run kernel would poison the process's CUDA context, which no try/except
# recovers); until then they take part when this is "1", or when forced (ATTENTION_ENV).
OWN_ENV = "STREAM_R1_FAST_ATTENTION_OURS"
_UNVALIDATED = {"ours": "never yet run on a GPU"}


def available_backends(device: torch.device, dtype: torch.dtype | None = None,
                       head_dim: int | None = None, *, unvalidated: bool | None = None) -> tuple[list[str], dict[str, str]]:
    """The backends that may run on ``device`` (SDPA's own choice first), and why the others
    cannot (a library that is not installed; a CPU device; our kernel for another dtype or
    head dim, when those are given; our kernel not yet validated on a GPU, unless
    ``unvalidated`` — default: ``STREAM_R1_FAST_ATTENTION_OURS=1``)."""
    if unvalidated is None:
        unvalidated = os.environ.get(OWN_ENV, "").strip() == "1"
    if device.type != "cuda":
        return ["sdpa"], {b: "CUDA only" for b in BACKENDS if b != "sdpa"}
    names, skipped = ["sdpa", *_SDPA_PINNED], {}
    for name, module in _EXTERNAL.items():
        if _module(module) is not None:
            names.append(name)
        else:
            skipped[name] = f"{module} is not installed"
    for name in _OWN_NAMES:
        why = _OWN[name][1](dtype, head_dim) if name in _OWN else "not registered (import stream_r1_fast.ops)"
        if why is None and name in _UNVALIDATED and not unvalidated:
            why = f"{_UNVALIDATED[name]}: measured only with {OWN_ENV}=1 (or forced: {ATTENTION_ENV}={name})"
        if why is None:
            names.append(name)
        else:
            skipped[name] = why
    return names, skipped


def pick_fastest(candidates: list[str], run: Callable[[str], torch.Tensor], time_ms: Callable[[str], float],
                 *, tolerance: float) -> AttentionChoice:
    """The fastest of ``candidates`` whose output (``run(name)``) matches the first one's within
    ``tolerance`` (relative to its largest value); ``time_ms(name)`` times one. A candidate that
    raises or does not match is skipped, with why."""
    want = run(candidates[0])
    scale = max(1.0, want.float().abs().max().item())
    times, skipped = {}, {}
    for name in candidates:
        try:
            got = want if name == candidates[0] else run(name)
            err = (got.float() - want.float()).abs().max().item()
            if not err <= tolerance * scale:
                skipped[name] = f"max error {err:.3g} against {candidates[0]}"
                continue
            times[name] = time_ms(name)
        except Exception as exc:  # noqa: BLE001 - a backend refusing this shape is a result
            skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    best = min(times, key=times.get)
    return AttentionChoice(best, "measured: the fastest that matched", times, skipped)


def _time_cuda(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def choose_backend(batch: int, lq: int, lk: int, heads: int, head_dim: int, dtype: torch.dtype,
                   device: torch.device | str, *, repeats: int = 10) -> str:
    """The attention backend for q [batch, lq, heads, head_dim] against lk keys on ``device``:
    measured once per process and shape (see the module docstring), or forced by
    ``STREAM_R1_FAST_ATTENTION``."""
    device = torch.device(device)
    key = (batch, lq, lk, heads, head_dim, dtype, device.type, device.index)
    if key in _CHOICES:
        return _CHOICES[key].backend
    forced = os.environ.get(ATTENTION_ENV, "").strip()
    names, skipped = available_backends(device, dtype, head_dim, unvalidated=True if forced else None)
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{ATTENTION_ENV}={forced!r} is not an attention backend (known: {', '.join(BACKENDS)})")
        if forced not in names:
            raise ValueError(f"{ATTENTION_ENV}={forced!r} cannot run here: {skipped[forced]}")
        choice = AttentionChoice(forced, f"forced by {ATTENTION_ENV}", skipped=skipped)
    elif len(names) == 1:
        choice = AttentionChoice(names[0], "the only backend here", skipped=skipped)
    else:
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn((batch, lq, heads, head_dim), generator=g, device=device, dtype=dtype)
        k = torch.randn((batch, lk, heads, head_dim), generator=g, device=device, dtype=dtype)
        v = torch.randn((batch, lk, heads, head_dim), generator=g, device=device, dtype=dtype)
        tol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
        with torch.no_grad():
            choice = pick_fastest(names, lambda n: attention(q, k, v, n),
                                  lambda n: _time_cuda(lambda: attention(q, k, v, n), repeats), tolerance=tol)
        choice = dataclasses.replace(choice, skipped={**skipped, **choice.skipped})
        del q, k, v
    _CHOICES[key] = choice
    return choice.backend


def attention_choices() -> dict[str, AttentionChoice]:
    """Every shape measured so far in this process -> its :class:`AttentionChoice`."""
    return {f"B{b} Lq{lq} Lk{lk} H{h} D{d} {str(dt).split('.')[-1]} {dev}{'' if i is None else f':{i}'}": c
            for (b, lq, lk, h, d, dt, dev, i), c in _CHOICES.items()}


__all__ = ["ATTENTION_ENV", "OWN_ENV", "AttentionChoice", "BACKENDS", "attention", "attention_choices", "available_backends",
           "choose_backend", "pick_fastest", "register_own_backend"]
