"""Models: the causal Wan2.1 transformer and its checkpoint loaders."""

from stream_r1_fast.models.configs import PRESETS, preset
from stream_r1_fast.models.contexts import KVCache, TextContext, TimeContext
from stream_r1_fast.models.wan import CausalWanTransformer

__all__ = ["PRESETS", "CausalWanTransformer", "KVCache", "TextContext", "TimeContext", "preset"]
