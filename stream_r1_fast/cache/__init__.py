"""The streaming KV cache (EMA sink / static sink / plain window), in two storages with the
same semantics:

* ``"fused"`` — :class:`SinkKVCache`: pre-RoPE K/V in a ring, the fused ops
  ``sink_attention`` (RoPE inside the kernel) and ``ema_cache_update``;
* ``"rotated"`` — :class:`RotatedSinkKVCache`: keys stored rotated in an age-ordered buffer,
  one dense ``scaled_dot_product_attention`` per block, PyTorch ops only.

:func:`resolve_cache_impl` maps a name (the pipeline's and the rollout's ``cache_impl``
option) or a class to the class. Both derive from :class:`StreamingKVCache`
(``cache/base.py``: construction from a model, :meth:`~StreamingKVCache.snapshot`, the
window-holds-a-chunk rule :meth:`CachePolicy.check_chunk`).
"""

from stream_r1_fast.cache.base import CachePolicy, StreamingKVCache
from stream_r1_fast.cache.rotated_cache import RotatedSinkKVCache
from stream_r1_fast.cache.sink_cache import SinkKVCache

CACHE_IMPLS = {"fused": SinkKVCache, "rotated": RotatedSinkKVCache}


def resolve_cache_impl(impl) -> type:
    """``"fused"`` / ``"rotated"`` (or a cache class with ``for_model``) -> the cache class;
    anything else is a ValueError naming the choices."""
    if isinstance(impl, type) and callable(getattr(impl, "for_model", None)):
        return impl
    if isinstance(impl, str) and impl.strip().lower() in CACHE_IMPLS:
        return CACHE_IMPLS[impl.strip().lower()]
    raise ValueError(f"cache_impl must be one of {', '.join(map(repr, CACHE_IMPLS))} (or a cache class), got {impl!r}")


__all__ = ["CACHE_IMPLS", "CachePolicy", "RotatedSinkKVCache", "SinkKVCache", "StreamingKVCache", "resolve_cache_impl"]
