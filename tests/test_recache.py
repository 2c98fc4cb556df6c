"""LongLive-style KV recache at prompt switches (``stream(..., recache=True)``, the live API's
``switch(prompt, recache=...)``): what it changes, that it equals a cache built independently
from the kept latents under the new prompt, that its memory is bounded, that schedules and the
live API agree; and that prompts stay lists of whole prompts whichever way they are given."""

from __future__ import annotations

import inspect

import pytest
import torch
from tiny_wan import tiny_text_encoder, tiny_tokenizer, tiny_transformer, tiny_vae

from stream_r1_fast.cache import CachePolicy, SinkKVCache
from stream_r1_fast.inference import PromptEncoder, PromptSchedule, StreamingPipeline
from stream_r1_fast.inference.pipeline import LatentHistory

SIZE = dict(height=16, width=24)  # latents 4 x 6, a 2 x 3 token grid
A = "a red circle moves left"
B = "a white square on black background"
SEED = 5


@pytest.fixture(scope="module")
def pipe():
    encoder = PromptEncoder(tiny_tokenizer(), tiny_text_encoder(), max_length=16)
    return StreamingPipeline(tiny_transformer(), tiny_vae(), encoder)


def run(pipe, prompt, n, policy, **kw):
    return list(pipe.stream(prompt, num_chunks=n, seed=SEED, policy=policy, decode=False, **SIZE, **kw))


def text_of(pipe, prompt):
    with torch.no_grad():
        return pipe.transformer.encode_text(pipe.prompt_encoder([prompt]))


def independent_recache(pipe, old_latents, policy, switch_chunk):
    """Chunk ``switch_chunk`` after a recache, built from scratch with the model's refresh: the
    cache the stream had under A is rebuilt from its latents; then a fresh cache gets the sink
    (copied, when frames were already folded into it) and the kept frames' latents refreshed
    under B, chunk by chunk; then the same noise is denoised against it under B."""
    model, sampler = pipe.transformer, pipe.sampler
    cf, s, w = pipe.chunk_frames, policy.sink_frames, policy.window_frames
    text_a, text_b = text_of(pipe, A), text_of(pipe, B)
    t0 = model.time_context(0.0, 1, cf)
    made = switch_chunk * cf
    fresh = SinkKVCache.for_model(model, 1, 4, 6, policy)
    with torch.no_grad():
        if made <= s + w:  # nothing evicted: every frame from frame 0, the sink included
            start = 0
        elif s == 0:  # a plain window: its last w frames
            start = made - w
        else:  # the sink as it was under A (an EMA fold), then the last w frames
            old = SinkKVCache.for_model(model, 1, 4, 6, policy)
            for x in old_latents:
                model.forward_chunk(x, t0, text_a, old, update_cache=True)
            assert s <= w  # one update writes the whole sink
            p = 2 * 3
            for layer in range(model.config.num_layers):
                k = old.keys[layer][:, :s].reshape(1, s * p, *old.keys.shape[-2:])
                v = old.values[layer][:, :s].reshape(1, s * p, *old.values.shape[-2:])
                fresh.update(layer, k, v)
            start = made - w
        for j, x in enumerate(old_latents):
            lo = max(start - j * cf, 0)
            if lo < cf:
                piece = x[:, :, lo:]
                model.forward_chunk(piece, model.time_context(0.0, 1, piece.shape[2]), text_b, fresh,
                                    update_cache=True)
        gen = torch.Generator().manual_seed(SEED)
        shape = (1, model.config.in_channels, cf, 4, 6)
        for _ in range(switch_chunk):
            sampler.draw_chunk_noise(shape, gen, device="cpu")
        noise = sampler.draw_chunk_noise(shape, gen, device="cpu")
        return sampler.denoise_chunk(model, noise, text_b, fresh, sampler.time_contexts(model, 1, cf))


@pytest.mark.parametrize("policy, k", [
    (CachePolicy(3, 3, 0.5), 1),   # switch before any eviction: the whole cache from frame 0
    (CachePolicy(3, 3, 0.5), 4),   # after folds into an EMA sink: the sink kept, the window recomputed
    (CachePolicy(2, 5, 0.7), 4),   # a window that is not whole chunks: a partial first piece
    (CachePolicy(3, 3, 1.0), 3),   # a static sink, kept
    (CachePolicy(0, 6, 1.0), 4),   # no sink: a sliding window
])
def test_recache_equals_an_independent_construction(pipe, policy, k):
    sched = {0: A, k: B}
    plain = run(pipe, sched, k + 2, policy)
    rec = run(pipe, sched, k + 2, policy, recache=True)
    for a, b in zip(plain[:k], rec[:k]):  # before the switch nothing changes
        torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=0)
    assert [c.recached for c in rec] == [False] * k + [True, False]
    assert [c.prompt_since for c in rec] == [0] * k + [k, k] and not any(c.recached for c in plain)
    want = independent_recache(pipe, [c.latents for c in rec[:k]], policy, k)
    torch.testing.assert_close(rec[k].latents, want, rtol=1e-5, atol=1e-5)
    # (a) the recache changed what follows (so the comparison above can fail)
    assert (plain[k].latents - rec[k].latents).abs().max() > 1e-3
    assert (plain[k + 1].latents - rec[k + 1].latents).abs().max() > 1e-3
    assert (plain[k].latents - want).abs().max() > 1e-3


def test_recache_with_the_same_prompt_before_any_eviction_changes_nothing(pipe):
    """Re-encoding frames under the prompt they were made with rebuilds the same cache."""
    policy = CachePolicy(3, 3, 0.5)
    plain = run(pipe, A, 3, policy)
    rec = run(pipe, {0: A, 1: A}, 3, policy, recache=True)
    assert rec[1].recached
    for a, b in zip(plain, rec):
        torch.testing.assert_close(a.latents, b.latents, rtol=1e-5, atol=1e-5)


def test_recache_with_the_rotated_cache_matches_the_fused_one():
    if "cache_impl" not in inspect.signature(StreamingPipeline.__init__).parameters:
        pytest.skip("this pipeline has no cache_impl option")
    encoder = PromptEncoder(tiny_tokenizer(), tiny_text_encoder(), max_length=16)
    fused = StreamingPipeline(tiny_transformer(), tiny_vae(), encoder)
    rotated = StreamingPipeline(tiny_transformer(), tiny_vae(), encoder, cache_impl="rotated")
    for policy, k in ((CachePolicy(3, 3, 0.5), 1), (CachePolicy(3, 3, 0.5), 4), (CachePolicy(0, 6, 1.0), 4)):
        a = run(fused, {0: A, k: B}, k + 2, policy, recache=True)
        b = run(rotated, {0: A, k: B}, k + 2, policy, recache=True)
        for x, y in zip(a, b):
            torch.testing.assert_close(x.latents, y.latents, rtol=1e-4, atol=1e-4)


def test_live_api_equals_the_schedule(pipe):
    """(d) the same switches through the live API and through a schedule: the same latents
    and frames, bit for bit, and the same reports."""
    policy = CachePolicy(3, 3, 0.5)
    sched = list(pipe.stream({0: A, 2: B, 5: A}, num_chunks=7, seed=SEED, policy=policy, recache=True, **SIZE))
    live = pipe.open_stream(A, seed=SEED, policy=policy, recache=True, **SIZE)
    got = []
    for i in range(7):
        if i == 2:
            live.switch(B)  # the stream's default: recache
        if i == 5:
            live.switch(A, recache=True)
        got.append(next(live))
    live.close()
    for x, y in zip(sched, got):
        torch.testing.assert_close(x.latents, y.latents, rtol=0, atol=0)
        assert torch.equal(x.frames, y.frames)
    for attr in ("prompts", "prompt_since", "recached"):
        assert [getattr(c, attr) for c in got] == [getattr(c, attr) for c in sched]
    assert [c.prompt_since for c in got] == [0, 0, 2, 2, 2, 5, 5]
    assert [c.recached for c in got] == [False, False, True, False, False, True, False]


def test_live_switch_chooses_recache_per_switch(pipe):
    policy = CachePolicy(3, 3, 0.5)
    with_rc = run(pipe, {0: A, 3: B}, 4, policy, recache=True)
    without = run(pipe, {0: A, 3: B}, 4, policy)
    live = pipe.open_stream(A, seed=SEED, policy=policy, decode=False, **SIZE)  # default: no recache
    got = [next(live) for _ in range(3)]
    live.switch(B, recache=True)
    got.append(next(live))
    live.close()
    assert got[3].recached and got[3].prompt_since == 3
    torch.testing.assert_close(got[3].latents, with_rc[3].latents, rtol=0, atol=0)
    assert (got[3].latents - without[3].latents).abs().max() > 1e-3
    live = pipe.open_stream(A, seed=SEED, policy=policy, decode=False, recache=True, **SIZE)
    got = [next(live) for _ in range(3)]
    live.switch(B, recache=False)
    got.append(next(live))
    live.close()
    assert not got[3].recached
    torch.testing.assert_close(got[3].latents, without[3].latents, rtol=0, atol=0)
    with pytest.raises(TypeError, match="recache"):
        pipe.open_stream(A, **SIZE).switch(B, recache="yes")
    with pytest.raises(TypeError, match="recache"):
        pipe.stream(A, recache=1, **SIZE)


def test_recache_memory_is_bounded(pipe):
    """(c) the latents kept for a recache cover the last sink + window frames, whatever the
    length of the stream and the number of switches."""
    policy = CachePolicy(3, 4, 0.5)
    live = pipe.open_stream(A, seed=SEED, policy=policy, decode=False, recache=True, **SIZE)
    history = live._gen.gi_frame.f_locals.get("history") if live._gen.gi_frame else None
    held = []
    for i in range(30):
        if i % 4 == 3:
            live.switch(B if (i // 4) % 2 == 0 else A)
        c = next(live)
        history = live._gen.gi_frame.f_locals["history"]
        held.append(history.held_frames())
        assert c.recached == (i % 4 == 3)
    live.close()
    bound = policy.sink_frames + policy.window_frames + pipe.chunk_frames - 1
    assert max(held) <= bound and held[-1] == max(held[5:]) and len(history.chunks) <= 3
    # the history alone: whole chunks, the fewest that cover the last `frames` frames
    h = LatentHistory(7)
    for i in range(10):
        h.add(torch.full((1, 2, 3, 1, 1), float(i)))
        assert h.end == 3 * (i + 1)
        assert h.held_frames() >= min(7, h.end) and h.held_frames() - 3 < 7
    assert [c[0] for c in h.chunks] == [21, 24, 27]


def test_no_history_is_kept_without_recache(pipe):
    gen = pipe.stream(A, num_chunks=2, seed=SEED, decode=False, **SIZE)
    next(gen)
    assert gen.gi_frame.f_locals["history"] is None
    gen.close()


# ---------------------------------------------------------------------- prompts stay whole prompts


def test_prompts_are_lists_of_whole_prompts(pipe):
    policy = CachePolicy(3, 3, 0.5)
    # a schedule of plain str
    chunks = run(pipe, {0: A, 1: B}, 2, policy)
    assert [c.prompts for c in chunks] == [[A], [B]]
    # an entry added to a schedule while it runs: a str is one prompt, not its characters
    sched = PromptSchedule({0: A})
    gen = pipe.stream(sched, num_chunks=3, seed=SEED, policy=policy, decode=False, **SIZE)
    first = next(gen)
    sched.entries[2] = B
    rest = list(gen)
    assert [c.prompts for c in [first, *rest]] == [[A], [A], [B]]
    assert [c.prompt_since for c in [first, *rest]] == [0, 0, 2]
    sched = PromptSchedule({0: A})
    gen = pipe.stream(sched, num_chunks=3, seed=SEED, policy=policy, decode=False, **SIZE)
    next(gen)
    sched.entries[1] = "  "
    with pytest.raises(ValueError, match="the prompt of chunk 1 is empty"):
        next(gen)
    # the live API: switch() and the schedule's own set() with a str
    live = pipe.open_stream(A, seed=SEED, policy=policy, decode=False, **SIZE)
    got = [next(live)]
    live.switch(B)
    got.append(next(live))
    live.schedule.set(A)
    got.append(next(live))
    live.switch([B])
    got.append(next(live))
    live.close()
    assert [c.prompts for c in got] == [[A], [B], [A], [B]]
    assert [c.prompt_since for c in got] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="empty"):
        live.schedule.set(" ")
