"""The two forms of text conditioning (encoded K/V once per prompt vs lazy, each block
projecting its own K/V in its forward, as per-block FSDP needs) give identical outputs."""

from __future__ import annotations

import pytest
import torch
from tiny_wan import TEXT_DIM, tiny_transformer

from stream_r1_fast.cache import CachePolicy, SinkKVCache
from stream_r1_fast.models import TextContext
from stream_r1_fast.ops.sink_attention import sink_attention


@pytest.fixture(scope="module")
def model():
    return tiny_transformer(0)


def _emb(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 5, TEXT_DIM, generator=torch.Generator().manual_seed(seed))


def test_lazy_context_form(model):
    lazy, enc = model.embed_text(_emb()), model.encode_text(_emb())
    assert lazy.is_lazy and not enc.is_lazy
    assert lazy.batch_size == enc.batch_size == 2
    assert lazy.states.shape == (2, 5, model.dim)
    # encode_text = the lazy states through every block's cross-attention projections.
    for i, block in enumerate(model.blocks):
        k, v = block.attn2.key_value(lazy.states)
        torch.testing.assert_close(enc.keys[i], k, rtol=0, atol=0)
        torch.testing.assert_close(enc.values[i], v, rtol=0, atol=0)
    other = model.embed_text(_emb(seed=1))
    lazy.copy_(other)
    torch.testing.assert_close(lazy.states, other.states, rtol=0, atol=0)
    with pytest.raises(ValueError, match="lazy"):
        enc.copy_(other)
    with pytest.raises(ValueError, match="shape"):
        lazy.copy_(TextContext.lazy(other.states[:1]))


@pytest.mark.parametrize("causal", [None, 1])
def test_forward_lazy_equals_encoded(model, causal):
    x = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([300.0, 700.0])
    emb = _emb()
    with torch.no_grad():
        ref = model(x, t, model.encode_text(emb), causal_chunk_frames=causal).sample
        lazy = model(x, t, model.embed_text(emb), causal_chunk_frames=causal).sample
        raw = model(x, t, emb, causal_chunk_frames=causal).sample
    torch.testing.assert_close(lazy, ref, rtol=0, atol=0)
    torch.testing.assert_close(raw, ref, rtol=0, atol=0)


def test_forward_chunk_lazy_equals_encoded(model):
    emb = _emb()
    policy = CachePolicy(1, 1)

    def stream(text):
        cache = SinkKVCache.for_model(model, 2, 8, 8, policy, dtype=torch.float32)
        outs = []
        g = torch.Generator().manual_seed(3)
        for _ in range(3):
            cache.begin_chunk()
            x = torch.randn(2, 4, 1, 8, 8, generator=g)
            outs.append(model.forward_chunk(x, 500.0, text, cache))
            assert model.forward_chunk(x, 0.0, text, cache, update_cache=True) is None
        return torch.cat(outs, 2), cache

    with torch.no_grad():
        ref, ref_cache = stream(model.encode_text(emb))
        lazy, lazy_cache = stream(model.embed_text(emb))
    torch.testing.assert_close(lazy, ref, rtol=0, atol=0)
    torch.testing.assert_close(lazy_cache.keys, ref_cache.keys, rtol=0, atol=0)
    torch.testing.assert_close(lazy_cache.values, ref_cache.values, rtol=0, atol=0)


def test_lazy_gradients_equal_encoded():
    grads = []
    for form in ("encode_text", "embed_text"):
        model = tiny_transformer(0).train()
        x = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(4))
        text = getattr(model, form)(_emb(1))
        model(x, 400.0, text).sample.square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-6, atol=1e-7, msg=n)


def test_sink_attention_under_autocast():
    b, h, d, gh, gw = 1, 2, 64, 2, 2
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(b, gh * gw, h, d, generator=g, dtype=torch.bfloat16) for _ in range(3))
    kc = torch.randn(b, 1, gh * gw, h, d, generator=g, dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    args = (q, k, v, kc, vc, torch.tensor([0], dtype=torch.int32), torch.tensor([1], dtype=torch.int32), gh, gw)
    ref = sink_attention(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sink_attention(*args)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
