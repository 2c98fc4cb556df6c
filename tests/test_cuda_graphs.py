"""StreamingPipeline(cuda_graphs=True): on CUDA the chunk step is recorded once per code path and
replayed (same latents as eager); elsewhere it says why, once, and runs compiled without graphs."""

from __future__ import annotations

import warnings

import pytest
import torch

from stream_r1_fast.cache import CachePolicy
from stream_r1_fast.inference import StreamingPipeline
from stream_r1_fast.inference.graphs import CudaGraphsUnavailable, unavailable_reason
from tiny_wan import tiny_transformer
from training_helpers import FixedTextEncoder

POLICY = CachePolicy(1, 2, 0.9)


def _latents(pipe, chunks=8, prompt="a red circle moves left"):
    out = pipe.stream(prompt, num_chunks=chunks, height=32, width=32, seed=3, policy=POLICY, decode=False)
    return torch.cat([c.latents for c in out], dim=2)


def test_without_a_cuda_device_it_warns_once_and_matches_eager():
    torch._dynamo.reset()
    model = tiny_transformer(0)
    pipe = StreamingPipeline(model, prompt_encoder=FixedTextEncoder(), chunk_frames=1, cuda_graphs=True,
                             compile_options={"backend": "eager"})
    assert pipe.cuda_graphs_status == "not run yet"
    with pytest.warns(CudaGraphsUnavailable, match="CUDA graphs need a CUDA device; the pipeline runs on cpu"):
        got = _latents(pipe)
    assert pipe.cuda_graphs_status.startswith("off: CUDA graphs need a CUDA device")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CudaGraphsUnavailable)  # said once per pipeline, not per stream
        again = _latents(pipe)
    want = _latents(StreamingPipeline(model, prompt_encoder=FixedTextEncoder(), chunk_frames=1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, want, rtol=1e-5, atol=1e-5)
    assert StreamingPipeline(model, prompt_encoder=FixedTextEncoder()).cuda_graphs_status == "off"


def test_bad_graph_options_are_refused_before_anything_runs():
    model = tiny_transformer(0)
    with pytest.raises(TypeError, match="cuda_graphs must be True or False"):
        StreamingPipeline(model, cuda_graphs="yes")
    with pytest.raises(ValueError, match="drop 'mode' from compile_options"):
        StreamingPipeline(model, cuda_graphs=True, compile_options={"mode": "max-autotune"})


def test_the_reason_names_the_device():
    assert unavailable_reason(torch.device("cpu")) == "CUDA graphs need a CUDA device; the pipeline runs on cpu"
    if torch.cuda.is_available():
        assert unavailable_reason(torch.device("cuda")) is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cache_impl", ["fused", "rotated"])
def test_on_cuda_the_step_is_captured_and_matches_eager(cache_impl):
    torch._dynamo.reset()
    model = tiny_transformer(0).cuda()
    kwargs = dict(prompt_encoder=FixedTextEncoder(), chunk_frames=1, cache_impl=cache_impl)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CudaGraphsUnavailable)
        graphed = StreamingPipeline(model, cuda_graphs=True, **kwargs)
        got = _latents(graphed, chunks=12, prompt={0: "a red circle moves left", 6: "a blue square"})
    assert graphed.cuda_graphs_status == "captured"
    want = _latents(StreamingPipeline(model, **kwargs), chunks=12,
                    prompt={0: "a red circle moves left", 6: "a blue square"})
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
