"""The toy world (docs/toy_world.md): a procedural captioned-video world with tiny shipped
models, so the whole method runs on a laptop CPU.

world (clips + ground truth) -> codec (linear causal latents) -> text (caption embeddings) ->
teacher (bidirectional DiT) / reward model (VQ, MQ, TA) / oracle (metrics from ground truth).
"""

from stream_r1_fast.toy.codec import ToyCodec, ToyStreamingDecoder
from stream_r1_fast.toy.text import ToyTextEncoder
from stream_r1_fast.toy.world import ClipAttributes, ObjectSpec, ToyWorld, caption_of, parse_caption

__all__ = [
    "ClipAttributes",
    "ObjectSpec",
    "ToyCodec",
    "ToyStreamingDecoder",
    "ToyTextEncoder",
    "ToyWorld",
    "caption_of",
    "parse_caption",
]
