"""Streaming through the fused-op cache against independent, straightforward references:

(a) Reward Forcing's cache, written the way its code does it (time-ordered K/V joined with
    torch.cat, the chunk appended on its first forward and overwritten on later forwards,
    EMA fold when the evicted length equals the sink length — the only sizes used here, where
    our group-mean fold is Reward Forcing's fold (other sizes: tests/test_ema_cache.py) —, RoPE
    recomputed with complex numbers at every call over window positions 0..N-1);
(b) with no sink and a window longer than the video, one block-causal forward of the model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_wan import TEXT_DIM, tiny_transformer

from stream_r1_fast.cache import CachePolicy, SinkKVCache
from stream_r1_fast.inference.sampler import FlowMatchSampler

CHUNK = 3
LATENT_HW = (4, 6)  # -> a 2 x 3 token grid per latent frame


def _axis_freqs(n: int, max_pos: int, theta: float = 10000.0) -> torch.Tensor:
    inv = 1.0 / theta ** (torch.arange(0, n, 2, dtype=torch.float64) / n)
    return torch.polar(torch.ones(max_pos, n // 2, dtype=torch.float64), torch.outer(torch.arange(max_pos).double(), inv))


def _rope(x: torch.Tensor, first_frame: int, grid: tuple[int, int]) -> torch.Tensor:
    """Wan RoPE as the original code writes it: adjacent pairs as complex numbers."""
    b, l, h, d = x.shape
    gh, gw = grid
    frames = l // (gh * gw)
    dh = 2 * (d // 6)
    dt = d - 2 * dh
    ft = _axis_freqs(dt, 64)[first_frame : first_frame + frames]
    fh, fw = _axis_freqs(dh, 64)[:gh], _axis_freqs(dh, 64)[:gw]
    freqs = torch.cat(
        [
            ft[:, None, None].expand(frames, gh, gw, -1),
            fh[None, :, None].expand(frames, gh, gw, -1),
            fw[None, None, :].expand(frames, gh, gw, -1),
        ],
        dim=-1,
    ).reshape(l, 1, -1)
    xc = torch.view_as_complex(x.double().reshape(b, l, h, -1, 2))
    return torch.view_as_real(xc * freqs).flatten(3).to(x.dtype)


class RewardForcingCache:
    """Reward Forcing's KV cache, straightforwardly: ``capacity`` frames including the
    current chunk, the first ``sink`` of them the sink."""

    def __init__(self, num_layers: int, grid, capacity: int, sink: int, alpha: float):
        self.grid, self.capacity, self.sink, self.alpha = grid, capacity, sink, alpha
        self.p = grid[0] * grid[1]
        self.k = [None] * num_layers
        self.v = [None] * num_layers
        self.fresh = [False] * num_layers

    def begin_chunk(self):
        self.fresh = [True] * len(self.fresh)

    def _write(self, layer, k, v):
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k.clone(), v.clone()
            self.fresh[layer] = False
            return
        ck, cv = self.k[layer], self.v[layer]
        if self.fresh[layer]:  # first forward of the chunk: make room, then append
            self.fresh[layer] = False
            n_frames = ck.shape[1] // self.p + k.shape[1] // self.p
            evict = max(0, n_frames - self.capacity)
            if evict:
                s0, s1 = self.sink * self.p, (self.sink + evict) * self.p
                sink_k, sink_v = ck[:, :s0], cv[:, :s0]
                if evict == self.sink:
                    sink_k = self.alpha * sink_k + (1 - self.alpha) * ck[:, s0:s1]
                    sink_v = self.alpha * sink_v + (1 - self.alpha) * cv[:, s0:s1]
                ck = torch.cat([sink_k, ck[:, s1:]], dim=1)
                cv = torch.cat([sink_v, cv[:, s1:]], dim=1)
            self.k[layer], self.v[layer] = torch.cat([ck, k], 1), torch.cat([cv, v], 1)
        else:  # a later denoising step or the refresh: overwrite the chunk's frames
            n = k.shape[1]
            self.k[layer] = torch.cat([ck[:, :-n], k], 1).clone()
            self.v[layer] = torch.cat([cv[:, :-n], v], 1).clone()

    def attend(self, layer, q, k, v):
        self._write(layer, k, v)
        keys, values = self.k[layer], self.v[layer]
        n_frames = keys.shape[1] // self.p
        q_first = n_frames - q.shape[1] // self.p
        qr = _rope(q, q_first, self.grid)
        kr = _rope(keys, 0, self.grid)
        o = F.scaled_dot_product_attention(qr.transpose(1, 2), kr.transpose(1, 2), values.transpose(1, 2))
        return o.transpose(1, 2)

    def update(self, layer, k, v):
        self._write(layer, k, v)


def _stream(model, cache, text, chunks: int, seed: int, sampler=FlowMatchSampler()):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(chunks):
        noise = torch.randn(1, 4, CHUNK, *LATENT_HW, generator=g)
        out.append(sampler.sample_chunk(model, noise, text, cache, g))
    return out


@pytest.mark.parametrize(
    "policy",
    [CachePolicy.ema_sink(3, 3, alpha=0.9), CachePolicy.ema_sink(), CachePolicy.static_sink(), CachePolicy.no_sink(6)],
    ids=["ema0.9", "ema0.999", "static", "nosink"],
)
def test_ema_sink_matches_reward_forcing_cache(policy):
    model = tiny_transformer()
    torch.manual_seed(1)
    text = model.encode_text(torch.randn(1, 5, TEXT_DIM))
    grid = model.latent_grid(*LATENT_HW)
    ours = SinkKVCache.for_model(model, 1, *LATENT_HW, policy, dtype=torch.float32)
    ref = RewardForcingCache(
        model.config.num_layers, grid, capacity=policy.slots + CHUNK, sink=policy.sink_frames, alpha=policy.alpha
    )
    chunks = 13
    got = _stream(model, ours, text, chunks, seed=7)
    want = _stream(model, ref, text, chunks, seed=7)
    for n, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5, msg=lambda m: f"chunk {n}: {m}")
    # The reference really evicted and folded (the test would be vacuous otherwise).
    assert ref.k[0].shape[1] == (policy.slots + CHUNK) * ours.grid[0] * ours.grid[1]


def test_ema_changes_the_sink():
    """Sanity check of the parametrised test: EMA (alpha 0.9) and static sinks disagree."""
    model = tiny_transformer()
    text = model.encode_text(torch.randn(1, 5, TEXT_DIM))
    a = _stream(model, SinkKVCache.for_model(model, 1, *LATENT_HW, CachePolicy.ema_sink(alpha=0.9)), text, 5, 3)
    b = _stream(model, SinkKVCache.for_model(model, 1, *LATENT_HW, CachePolicy.static_sink()), text, 5, 3)
    torch.testing.assert_close(a[2], b[2])  # chunk 2 is before the first eviction
    assert (a[4] - b[4]).abs().max() > 1e-4


def test_unbounded_window_equals_block_causal_forward():
    model = tiny_transformer()
    chunks, b = 4, 2
    frames = chunks * CHUNK
    torch.manual_seed(2)
    latents = torch.randn(b, 4, frames, *LATENT_HW)
    t = torch.rand(b, frames) * 1000
    text_emb = torch.randn(b, 6, TEXT_DIM)
    with torch.no_grad():
        full = model(latents, t, text_emb, causal_chunk_frames=CHUNK).sample
        text = model.encode_text(text_emb)
        cache = SinkKVCache.for_model(model, b, *LATENT_HW, CachePolicy.no_sink(window_frames=frames), dtype=torch.float32)
        outs = []
        for n in range(chunks):
            sl = slice(n * CHUNK, (n + 1) * CHUNK)
            outs.append(model.forward_chunk(latents[:, :, sl], t[:, sl], text, cache))
            assert model.forward_chunk(latents[:, :, sl], t[:, sl], text, cache, update_cache=True) is None
    torch.testing.assert_close(torch.cat(outs, dim=2), full, rtol=1e-5, atol=1e-5)
    # Block-causal really differs from bidirectional (the mask matters).
    with torch.no_grad():
        bidir = model(latents, t, text_emb).sample
    assert (bidir[:, :, :CHUNK] - full[:, :, :CHUNK]).abs().max() > 1e-3
