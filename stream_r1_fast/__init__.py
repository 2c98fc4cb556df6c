"""stream_r1_fast: reward-weighted distillation and real-time streaming generation of
autoregressive video diffusion models, with fused C++/CUDA kernels."""

from stream_r1_fast._backend import BackendInfo, backend_info
from stream_r1_fast.ops import ema_cache_update, new_sink_cache, saliency_weights, sink_attention

__version__ = "0.1.0"
__all__ = [
    "BackendInfo",
    "backend_info",
    "ema_cache_update",
    "new_sink_cache",
    "saliency_weights",
    "sink_attention",
]
