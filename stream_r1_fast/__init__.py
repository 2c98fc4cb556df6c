"""stream_r1_fast: reward-weighted distillation and real-time streaming generation of
autoregressive video diffusion models, with fused C++/CUDA kernels.

The names below are loaded on first use (PEP 562), so that ``import stream_r1_fast`` — and
``stream-r1 --help`` — do not import torch or load the compiled extension before they are
needed; ``stream_r1_fast.ops`` (and every module using the ops) loads them as before.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "BackendInfo": "stream_r1_fast._backend",
    "backend_info": "stream_r1_fast._backend",
    "ema_cache_update": "stream_r1_fast.ops",
    "new_sink_cache": "stream_r1_fast.ops",
    "saliency_weights": "stream_r1_fast.ops",
    "sink_attention": "stream_r1_fast.ops",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stream_r1_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
