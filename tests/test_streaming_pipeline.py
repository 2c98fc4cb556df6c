"""The streaming pipeline: determinism, batches of streams, prompt switches, frame counts,
streaming VAE decode, the text encoder, constant memory and input validation."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
import torch
from tiny_wan import tiny_text_encoder, tiny_tokenizer, tiny_transformer, tiny_vae, write_pipeline_dir

from stream_r1_fast.cache import CachePolicy, SinkKVCache
from stream_r1_fast.inference import FlowMatchSampler, PromptEncoder, StreamingPipeline, StreamingVAEDecoder
from stream_r1_fast.inference.sampler import shift_timesteps
from stream_r1_fast.inference.vae import to_uint8_frames

SIZE = dict(height=16, width=24)  # tiny VAE (x4) and patch 2 -> a 2 x 3 token grid


@pytest.fixture(scope="module")
def pipe():
    encoder = PromptEncoder(tiny_tokenizer(), tiny_text_encoder(), max_length=16)
    return StreamingPipeline(tiny_transformer(), tiny_vae(), encoder)


def _latents(chunks):
    return torch.cat([c.latents for c in chunks], dim=2)


def test_shifted_timesteps():
    ts = shift_timesteps((1000, 750, 500, 250), 5.0)
    torch.testing.assert_close(torch.tensor(ts), torch.tensor([1000.0, 937.5, 833.3333, 625.0]))
    assert FlowMatchSampler().timesteps == ts
    assert FlowMatchSampler.from_steps((1000, 500), shift=1.0).timesteps == (1000.0, 500.0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        FlowMatchSampler((500.0, 750.0))
    with pytest.raises(ValueError, match="empty"):
        FlowMatchSampler(())


def test_flow_matching_identities():
    x0, eps = torch.randn(3, 5), torch.randn(3, 5)
    s = FlowMatchSampler
    xt = s.add_noise(x0, eps, 625.0)
    torch.testing.assert_close(s.predict_x0(xt, eps - x0, 625.0), x0)


def test_deterministic_under_seed(pipe):
    a = list(pipe.stream("a red circle", num_chunks=3, seed=11, **SIZE))
    b = list(pipe.stream("a red circle", num_chunks=3, seed=11, **SIZE))
    c = list(pipe.stream("a red circle", num_chunks=3, seed=12, **SIZE))
    torch.testing.assert_close(_latents(a), _latents(b), rtol=0, atol=0)
    assert (_latents(a) - _latents(c)).abs().max() > 1e-3
    assert [x.frames.shape[1] for x in a] == [9, 12, 12]
    assert [x.first_frame for x in a] == [0, 9, 21]
    assert a[0].frames.dtype == torch.uint8 and a[0].frames.shape[2:] == (16, 24, 3)


def test_decoded_stream_equals_whole_video_decode(pipe):
    chunks = list(pipe.stream("a blue square", num_chunks=3, seed=0, **SIZE))
    video = torch.cat([c.frames for c in chunks], dim=1)
    decoder = StreamingVAEDecoder(pipe.vae)
    cfg = pipe.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        whole = pipe.vae.decode(_latents(chunks) * std + mean).sample
    want = ((whole + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
    assert video.shape == want.shape == (1, 1 + 4 * 8, 16, 24, 3)
    assert (video.int() - want.int()).abs().max() <= 1
    assert decoder.video_frames(3, first=True) == 9 and decoder.video_frames(3, first=False) == 12


def test_streaming_vae_decode_exact():
    vae = tiny_vae(seed=1)
    z = torch.randn(2, 4, 7, 4, 6)
    with torch.no_grad():
        whole = vae.decode(z).sample
    dec = StreamingVAEDecoder(vae)
    parts = [dec.decode(z[:, :, i : i + 3]) for i in (0, 3, 6)]
    assert [p.shape[2] for p in parts] == [9, 12, 4]
    torch.testing.assert_close(torch.cat(parts, 2), whole, rtol=1e-5, atol=1e-5)
    dec.reset()
    torch.testing.assert_close(dec.decode(z[:, :, :3]), parts[0])


def test_batch_of_streams_matches_streams_alone_over_32_chunks(pipe):
    """The tolerance stream()'s docstring states: a stream of a seeded batch matches it alone up
    to rounding (batched kernels sum in another order), and the differences do not grow."""
    prompts = ["a red circle moves left", "a green square moves up"]
    n = 32
    batch = list(pipe.stream(prompts, num_chunks=n, seed=[1, 2], decode=False, **SIZE))
    for b, (p, s) in enumerate(zip(prompts, [1, 2])):
        alone = list(pipe.stream(p, num_chunks=n, seed=[s], decode=False, **SIZE))
        diffs = [(batch[k].latents[b] - alone[k].latents[0]).abs().max().item() for k in range(n)]
        assert max(diffs) <= 1e-4, diffs
        assert max(diffs[n // 2 :]) <= 4 * max(max(diffs[: n // 2]), 1e-6), diffs  # no growth along the stream
        if b == 0:  # decoded: uint8 frames off by at most 1, in few values
            frames = [[to_uint8_frames(dec.decode(c)) for c in cs] for dec, cs in (
                (StreamingVAEDecoder(pipe.vae), [x.latents[:1] for x in batch]),
                (StreamingVAEDecoder(pipe.vae), [x.latents for x in alone]))]
            d = (torch.cat(frames[0], 1).int() - torch.cat(frames[1], 1).int()).abs()
            assert d.shape[1] == 9 + 12 * (n - 1) and d.max() <= 1 and (d > 0).float().mean() < 1e-3
    assert batch[0].prompts == prompts


def test_prompt_switch_mid_stream(pipe):
    kw = dict(num_chunks=4, seed=3, decode=False, **SIZE)
    a = list(pipe.stream("a red circle", **kw))
    switched = list(pipe.stream({0: "a red circle", 2: "a white square on black background"}, **kw))
    b = list(pipe.stream("a white square on black background", **kw))
    torch.testing.assert_close(_latents(switched[:2]), _latents(a[:2]), rtol=0, atol=0)
    assert (switched[2].latents - a[2].latents).abs().max() > 1e-3  # the new text acts
    assert (switched[2].latents - b[2].latents).abs().max() > 1e-3  # the old frames stay in context
    assert [c.prompts for c in switched] == [["a red circle"]] * 2 + [["a white square on black background"]] * 2


def test_sink_and_window_per_call(pipe):
    kw = dict(num_chunks=5, seed=4, decode=False, **SIZE)
    ema = _latents(list(pipe.stream("a", policy=CachePolicy.ema_sink(alpha=0.9), **kw)))
    static = _latents(list(pipe.stream("a", policy=CachePolicy.static_sink(), **kw)))
    window = _latents(list(pipe.stream("a", policy=CachePolicy.no_sink(3), **kw)))
    assert (ema - static).abs().max() > 1e-4 and (static - window).abs().max() > 1e-4


def test_prompt_encoder_caches_and_zeroes_padding():
    encoder = PromptEncoder(tiny_tokenizer(), tiny_text_encoder(), max_length=12, cache_size=2)
    calls = []
    encoder.text_encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    e1 = encoder(["a red circle", "a red circle"])
    e2 = encoder("a red circle")
    assert len(calls) == 1 and e1.shape == (2, 12, 32)
    torch.testing.assert_close(e1[:1], e2)
    assert e1[0, 4:].abs().max() == 0 and e1[0, :4].abs().max() > 0  # 3 words + </s>, then padding
    encoder(["b", "c"])
    assert len(encoder._cache) == 2


def test_memory_flat_over_500_chunks():
    """500 chunks at constant memory: the cache's storage never moves or grows, and nothing
    accumulates between chunks (live tensors, Python allocations)."""
    torch.manual_seed(0)
    model = tiny_transformer()
    text = model.encode_text(torch.randn(1, 4, 32))
    cache = SinkKVCache.for_model(model, 1, 2, 2, CachePolicy())
    sampler = FlowMatchSampler.from_steps((1000, 500))
    g = torch.Generator().manual_seed(0)
    ptrs = [t.data_ptr() for t in cache.tensors()]
    nbytes = cache.nbytes()

    def live_tensors():
        gc.collect()
        return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())

    for n in range(500):
        if n == 50:
            tensors_at_50 = live_tensors()
        if n == 400:  # tracing is slow: watch the last 100 chunks (a per-chunk leak shows in 50)
            tracemalloc.start()
        if n == 450:
            py_at_450 = tracemalloc.get_traced_memory()[0]
        sampler.sample_chunk(model, torch.randn(1, 4, 3, 2, 2, generator=g), text, cache, g)
    py_at_500 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert [t.data_ptr() for t in cache.tensors()] == ptrs and cache.nbytes() == nbytes
    assert live_tensors() == tensors_at_50
    assert py_at_500 - py_at_450 < 64 * 1024, f"Python allocations grew by {py_at_500 - py_at_450} bytes"
    assert cache.state[0].tolist() == [3, 0, 3, 6]  # full: 3 sink + 3 window frames


def test_pipeline_iterator_is_unbounded_and_lazy(pipe):
    it = pipe.stream("a", seed=0, decode=False, **SIZE)  # num_chunks=None: never ends by itself
    first = [next(it) for _ in range(4)]
    assert [c.index for c in first] == [0, 1, 2, 3]
    it.close()


def test_from_pretrained_folder(tmp_path):
    root = write_pipeline_dir(tmp_path / "tiny", seed=0)
    pipe = StreamingPipeline.from_pretrained(root, dtype=torch.float32, device="cpu")
    chunk = next(iter(pipe.stream("a red circle", num_chunks=1, seed=0, **SIZE)))
    assert chunk.frames.shape == (1, 9, 16, 24, 3)
    assert pipe.chunks_for_frames(81) == 7 * 1 and pipe.chunks_for_frames(1) == 1


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(prompt=3), TypeError, "prompt must be a str"),
        (dict(prompt=["a", 4]), TypeError, "prompt must be a str"),
        (dict(prompt=[]), TypeError, "prompt must be a str"),
        (dict(prompt={1: "a"}), ValueError, "must give the prompt of chunk 0"),
        (dict(prompt={0: "a", 2: ["b", "c"], 3: ["d", "e", "f"]}), ValueError, "different batch sizes"),
        (dict(prompt=""), ValueError, "the prompt of chunk 0 is empty"),
        (dict(prompt=" \t"), ValueError, "the prompt of chunk 0 is empty"),
        (dict(prompt=["a", "  "]), ValueError, r"chunk 0 \(stream 1\) is empty"),
        (dict(prompt={0: "a", 40: ""}), ValueError, "the prompt of chunk 40 is empty"),
        (dict(prompt="a", num_chunks=0), ValueError, "num_chunks must be a positive int"),
        (dict(prompt="a", height=20), ValueError, "height must be a positive multiple of 8"),
        (dict(prompt=["a", "b"], seed=[1]), ValueError, "1 seeds for a batch of 2"),
        (dict(prompt="a", seed="7"), TypeError, "seed must be an int"),
        (dict(prompt="a", policy=CachePolicy(3, 2)), ValueError, "must hold a chunk"),
        (dict(prompt="a", policy="ema"), TypeError, "policy must be a CachePolicy"),
    ],
)
def test_bad_inputs(pipe, kwargs, err, match):
    kwargs = {**SIZE, "num_chunks": 1, **kwargs}
    with pytest.raises(err, match=match):
        pipe.stream(kwargs.pop("prompt"), **kwargs)


def test_bad_policy_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="alpha must be in"):
        CachePolicy(alpha=1.5)
    with pytest.raises(ValueError, match="window_frames must be"):
        CachePolicy(window_frames=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        StreamingPipeline.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="transformer"):
        StreamingPipeline.from_pretrained(tmp_path / "half")
    with pytest.raises(RuntimeError, match="needs a VAE"):
        StreamingPipeline(tiny_transformer(), None, None).stream("a", **SIZE)


class _CountingEncoder:
    """A text encoder that says which prompts it cannot encode, and counts its calls."""

    def __init__(self):
        self.calls, self.checked = 0, []

    def check_prompt(self, prompt):
        self.checked.append(prompt)
        if "purple" in prompt.split():
            raise ValueError(f"word 'purple' of {prompt!r} is not in the vocabulary")

    def __call__(self, prompts):
        self.calls += 1
        return torch.zeros(len(prompts), 4, 32)


def test_whole_schedule_checked_before_the_first_chunk():
    enc = _CountingEncoder()
    pipe = StreamingPipeline(tiny_transformer(), None, enc)
    kw = dict(num_chunks=60, decode=False, height=16, width=32)
    with pytest.raises(ValueError, match="the prompt of chunk 50: word 'purple'"):
        pipe.stream({0: "a red circle", 20: "a blue square", 50: "a purple square"}, **kw)  # raises here, not at chunk 50
    assert enc.calls == 0 and enc.checked == ["a red circle", "a blue square", "a purple square"]
    with pytest.raises(ValueError, match="height must be"):  # sizes first: no prompt checked
        StreamingPipeline(tiny_transformer(), None, _CountingEncoder()).stream("a purple square", decode=False, height=20, width=32)
    ok = pipe.stream({0: "a red circle", 2: "a blue square"}, **kw)
    assert next(ok).index == 0 and enc.calls == 1
    ok.close()


def test_toy_vocabulary_checked_before_the_first_chunk():
    from stream_r1_fast.toy.text import ToyTextEncoder

    pipe = StreamingPipeline(tiny_transformer(), None, ToyTextEncoder())
    good = "a small red circle moving left fast on a black background"
    with pytest.raises(ValueError, match="the prompt of chunk 3: word 'elephant'"):
        pipe.stream({0: good, 3: "a small red elephant moving left fast on a black background"},
                    num_chunks=5, decode=False, height=16, width=32)
    with pytest.raises(ValueError, match="at most 32 words"):
        pipe.stream([good, " ".join(["a"] * 33)], decode=False, height=16, width=32)


def test_schedule_batch_sizes_checked_when_built():
    from stream_r1_fast.inference import PromptSchedule

    with pytest.raises(ValueError, match="different batch sizes"):
        PromptSchedule({0: ["a", "b"], 7: ["c", "d", "e"]})
    assert PromptSchedule({0: ["a", "b"], 7: "c"}).batch_size() == 2
