"""Streaming generation: the few-step sampler, the text encoder, streaming VAE decode and the
pipeline that ties them to the causal transformer and its KV cache."""

from stream_r1_fast.inference.pipeline import StreamingPipeline
from stream_r1_fast.inference.sampler import FlowMatchSampler, shift_timesteps
from stream_r1_fast.inference.schedule import PromptSchedule, StreamChunk
from stream_r1_fast.inference.text import PromptEncoder
from stream_r1_fast.inference.vae import StreamingVAEDecoder

__all__ = [
    "FlowMatchSampler",
    "PromptEncoder",
    "PromptSchedule",
    "StreamChunk",
    "StreamingPipeline",
    "StreamingVAEDecoder",
    "shift_timesteps",
]
