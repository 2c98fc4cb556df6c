"""Public `saliency_weights` (placeholder: dispatches to the reference until the kernels land)."""

from stream_r1_fast.ops.saliency_ref import saliency_weights_ref as saliency_weights  # noqa: F401
