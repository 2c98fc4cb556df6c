"""The three fused ops. Each lives in ``<op>.py`` (public function, fake kernel, autograd)
beside its PyTorch reference ``<op>_ref.py``, which defines its semantics."""

from stream_r1_fast import nvrtc as _nvrtc
from stream_r1_fast._backend import backend_info as _backend_info
from stream_r1_fast.ops.ema_cache import ema_cache_update, new_sink_cache
from stream_r1_fast.ops.saliency import saliency_weights
from stream_r1_fast.ops.sink_attention import sink_attention

# CUDA kernels compiled at run time for the ops the extension has none for (see _backend).
_nvrtc.register(_backend_info().nvrtc_ops)

__all__ = ["ema_cache_update", "new_sink_cache", "saliency_weights", "sink_attention"]
