"""The six fused ops. Each lives in ``<op>.py`` (public function, fake kernel, autograd)
beside its PyTorch reference ``<op>_ref.py``, which defines its semantics; the module of
each op of the op table (``csrc/ops.txt``) is ``ops/<folder>.py``, except ``dense_attention``'s,
``ops/dense_attention_op.py`` (public ``fused_dense_attention``): ``ops/dense_attention.py`` is
the measured choice of a dense-attention backend, of which our op is one. Which kernels run is
decided (and the NVRTC ones registered) by ``stream_r1_fast._backend``."""

from stream_r1_fast.ops.dense_attention_op import fused_dense_attention
from stream_r1_fast.ops.ema_cache import ema_cache_update, new_sink_cache
from stream_r1_fast.ops.qk_norm_rope import qk_norm_rope
from stream_r1_fast.ops.rotated_cache import rotated_cache_advance
from stream_r1_fast.ops.saliency import saliency_weights
from stream_r1_fast.ops.sink_attention import sink_attention

__all__ = ["ema_cache_update", "fused_dense_attention", "new_sink_cache", "qk_norm_rope", "rotated_cache_advance",
           "saliency_weights", "sink_attention"]
