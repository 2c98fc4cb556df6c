"""The streaming chunk step (4 denoising forwards + the refresh, through the cache's fused ops)
traces as one graph: torch.compile(fullgraph=True) raises on any graph break, and a stream of
20 chunks — sink fill, window fill, then evictions with EMA folds — compiles exactly once."""

from __future__ import annotations

import torch

from stream_r1_fast.cache import CachePolicy
from stream_r1_fast.inference import FlowMatchSampler, StreamingPipeline
from stream_r1_fast.models import TimeContext
from tiny_wan import tiny_transformer
from training_helpers import FixedTextEncoder


def _pipe(model, **kwargs):
    return StreamingPipeline(model, prompt_encoder=FixedTextEncoder(), chunk_frames=1, **kwargs)


def _latents(pipe, chunks=20):
    out = pipe.stream("a red circle moves left", num_chunks=chunks, height=32, width=32, seed=3,
                      policy=CachePolicy(1, 2, 0.9), decode=False)
    return torch.cat([c.latents for c in out], dim=2)


def test_chunk_step_compiles_once_without_graph_breaks():
    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = tiny_transformer(0)
    compiled = _latents(_pipe(model, compile_step=True, compile_options={"backend": counting_backend}))
    assert len(graphs) == 1, f"{len(graphs)} graphs: a graph break or a recompile"
    # One graph holds the whole step: 5 forwards x 2 blocks of cache attention, 2 refresh writes.
    ops = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert sum("sink_attention" in o for o in ops) == 5 * 2 - 1  # the refresh's last block skips attention
    assert sum("ema_cache_update" in o for o in ops) == 2
    torch.testing.assert_close(compiled, _latents(_pipe(model)), rtol=1e-5, atol=1e-5)


def test_time_contexts_equal_embedding_every_forward():
    model = tiny_transformer(0)
    sampler = FlowMatchSampler()
    times = sampler.time_contexts(model, 2, 3)
    assert len(times) == len(sampler.timesteps) + 1 and all(isinstance(t, TimeContext) for t in times)
    x = torch.randn(2, model.config.in_channels, 3, 4, 4)
    text = model.encode_text(FixedTextEncoder()(["a", "b"]))
    for t, ctx in zip((*sampler.timesteps, 0.0), times):
        a = model(x, t, text).sample
        b = model(x, ctx, text).sample
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_noise_drawn_up_front_equals_drawing_before_each_use():
    """draw_chunk_noise consumes the generators in the step loop's order: the pipeline's output
    is the same as drawing the start noise, then each re-noising draw just before its step."""
    sampler = FlowMatchSampler()
    shape = (2, 4, 1, 2, 2)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    upfront = sampler.draw_chunk_noise(shape, gens, device="cpu")
    again = [torch.Generator().manual_seed(s) for s in (1, 2)]
    one_by_one = [torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in again]) for _ in sampler.timesteps]
    torch.testing.assert_close(upfront, torch.stack(one_by_one), rtol=0, atol=0)
