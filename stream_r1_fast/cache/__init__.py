"""The streaming KV cache (EMA sink / static sink / plain window) on the fused ops."""

from stream_r1_fast.cache.sink_cache import CachePolicy, SinkKVCache

__all__ = ["CachePolicy", "SinkKVCache"]
