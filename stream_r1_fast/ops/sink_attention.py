"""Public `sink_attention` (placeholder: dispatches to the reference until the kernels land)."""

from stream_r1_fast.ops.sink_attention_ref import sink_attention_ref as sink_attention  # noqa: F401
