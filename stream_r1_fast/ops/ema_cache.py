"""Public `ema_cache_update` (placeholder: dispatches to the reference until the kernels land)."""

from stream_r1_fast.ops.ema_cache_ref import ema_cache_update_ref as ema_cache_update  # noqa: F401
