"""RotatedSinkKVCache (keys stored rotated, age-ordered buffer, one SDPA call) against the
unchanged paths it replaces:

(a) SinkKVCache on the reference backend (``sink_attention_ref`` / ``ema_cache_update_ref``):
    every policy, sink sizes 1/2/3/6 against chunks of 3 (the group-mean fold at E > S, E < S
    and E == S), windows longer than the chunk and not a multiple of it (window 5, chunk 3:
    the first overflow evicts 1 frame, later ones 3), chunks of 1, batch 1 and 3, head dim 64
    and 128, over 30 chunks: the model's latents, and after every chunk the stored keys
    un-rotated (and the values) against the pre-RoPE cache of the old path, frame by frame;
(b) the independent Reward-Forcing-style cache of tests/test_streaming_cache.py (E == S only);
(c) the training rollout's gradients (the exit-step forward) against the fused cache's;
(d) the pipeline option, torch.compile (fullgraph, one compile per fill phase), no host sync.

Tolerances, once per dtype: float32 latents and cached K/V within 2e-5 (measured: <= 5e-6
over 30 chunks; the cache alone, in float64, equals the old path to 1e-12); bfloat16 latents within 5e-2 (measured below 2e-2: a few bf16
roundings of re-rotated keys and of the folds, carried through the stream).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stream_r1_fast import _backend
from stream_r1_fast.cache import CACHE_IMPLS, CachePolicy, RotatedSinkKVCache, SinkKVCache, resolve_cache_impl
from stream_r1_fast.inference import FlowMatchSampler, StreamingPipeline
from stream_r1_fast.ops.ema_cache_ref import ema_cache_update_ref
from stream_r1_fast.ops.rope import apply_rope, rope_angles
from stream_r1_fast.training.rollout import self_forcing_rollout
from test_streaming_cache import RewardForcingCache
from tiny_wan import TEXT_DIM, tiny_transformer
from training_helpers import FixedTextEncoder

ROOT = Path(__file__).resolve().parents[1]
LATENT_HW = (4, 6)  # a 2 x 3 token grid
SAMPLER = FlowMatchSampler.from_steps((1000, 500))  # 2 denoising forwards + the refresh per chunk
CHUNKS = 30
TOL = {torch.float32: dict(latents=2e-5, cache=2e-5), torch.bfloat16: dict(latents=0.1)}


@pytest.fixture
def reference_backend(monkeypatch):
    """SinkKVCache's fused ops run their PyTorch references (the semantics)."""
    for op in ("sink_attention", "ema_cache_update"):
        monkeypatch.setitem(_backend._KERNELS, (op, "cpu"), False)


def _model(head_dim: int, dtype=torch.float32):
    model = tiny_transformer(0) if head_dim == 64 else tiny_transformer(0, attention_head_dim=128, num_attention_heads=1)
    return model.to(dtype)


def _unrotated(cache: RotatedSinkKVCache, layer: int) -> torch.Tensor:
    """The rotated cache's keys of ``layer`` turned back to pre-RoPE, [B, m, P, H, D] float64."""
    m, p = cache.occupied, cache.tokens_per_frame
    k = cache.keys[layer][:, :m]
    b, _, _, h, d = k.shape
    ang = rope_angles(torch.arange(m), *cache.grid, d, cache.rope_theta)
    return apply_rope(k.reshape(b, m * p, h, d).double(), -ang, torch.float64).view(b, m, p, h, d)


def _by_age(cache: SinkKVCache, layer: int, which: torch.Tensor) -> torch.Tensor:
    """The fused cache's frames of ``layer`` in position order (sink, then the window oldest first)."""
    pos = cache.positions[layer].tolist()
    order = sorted((q, s) for s, q in enumerate(pos) if q >= 0)
    assert [q for q, _ in order] == list(range(len(order)))
    return torch.stack([which[layer][:, s] for _, s in order], dim=1) if order else which[layer][:, :0]


def _stream_both(model, policy, chunk, batch, chunks=CHUNKS, check_state=None):
    """Latents of ``chunks`` chunks from both caches (same noise); ``check_state(fused, rotated)``
    after every chunk."""
    dtype = next(model.parameters()).dtype
    text = model.encode_text(torch.randn(batch, 5, TEXT_DIM, generator=torch.Generator().manual_seed(1)).to(dtype))
    fused = SinkKVCache.for_model(model, batch, *LATENT_HW, policy)
    rot = RotatedSinkKVCache.for_model(model, batch, *LATENT_HW, policy, chunk_frames=chunk)
    g = torch.Generator().manual_seed(7)
    out_f, out_r = [], []
    for _ in range(chunks):
        noise = SAMPLER.draw_chunk_noise((batch, 4, chunk, *LATENT_HW), g, device="cpu")
        out_f.append(SAMPLER.denoise_chunk(model, noise, text, fused))
        out_r.append(SAMPLER.denoise_chunk(model, noise, text, rot))
        if check_state is not None:
            check_state(fused, rot)
    return out_f, out_r


CASES = {
    # id: (policy, chunk frames, batch, head dim)
    "ema3-w3-c3-b3": (CachePolicy.ema_sink(3, 3, alpha=0.9), 3, 3, 64),
    "ema1-w5-c3": (CachePolicy.ema_sink(1, 5, alpha=0.8), 3, 1, 64),  # E 3 > S 1: one mean
    "ema2-w5-c3": (CachePolicy.ema_sink(2, 5, alpha=0.8), 3, 1, 64),  # first E 2, then 3 into 2
    "ema3-w5-c3": (CachePolicy.ema_sink(3, 5, alpha=0.8), 3, 1, 64),  # first overflow E 1, then 3
    "ema6-w3-c3": (CachePolicy.ema_sink(6, 3, alpha=0.8), 3, 1, 64),  # E 3 < S 6: shared frames
    "ema1-w2-c1": (CachePolicy.ema_sink(1, 2, alpha=0.9), 1, 1, 64),  # chunks of one frame
    "static2-w4-c3": (CachePolicy.static_sink(2, 4), 3, 1, 64),
    "nosink-w5-c3-b3": (CachePolicy.no_sink(5), 3, 3, 64),
    "ema3-w3-c3-d128": (CachePolicy.ema_sink(3, 3, alpha=0.9), 3, 1, 128),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_the_reference_cache_frame_for_frame(case, reference_backend):
    policy, chunk, batch, head_dim = CASES[case]
    model = _model(head_dim)
    seen = {"evicted": 0, "folded": False}

    def check_state(fused, rot):
        assert rot.occupied == int(fused.state[0, 0] + fused.state[0, 2])  # test code may read the device
        for layer in range(model.config.num_layers):
            want_k = _by_age(fused, layer, fused.keys).double()
            want_v = _by_age(fused, layer, fused.values)
            tol = TOL[torch.float32]["cache"]
            torch.testing.assert_close(_unrotated(rot, layer), want_k, rtol=tol, atol=tol)
            torch.testing.assert_close(rot.values[layer][:, : rot.occupied], want_v, rtol=tol, atol=tol)
        seen["evicted"] += rot.occupied == policy.slots

    out_f, out_r = _stream_both(model, policy, chunk, batch, check_state=check_state)
    tol = TOL[torch.float32]["latents"]
    for n, (a, b) in enumerate(zip(out_r, out_f)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"chunk {n}: {m}")
    assert seen["evicted"] >= CHUNKS - 8  # the stream spent most chunks evicting (not vacuous)


def test_the_fold_matters_so_the_comparison_is_not_vacuous(reference_backend):
    """Static and EMA sinks give different latents through the rotated cache (so the EMA
    fold is really exercised), while the first chunks, before any eviction, agree."""
    model = _model(64)
    _, ema = _stream_both(model, CachePolicy.ema_sink(2, 5, alpha=0.5), 3, 1, chunks=6)
    _, static = _stream_both(model, CachePolicy.static_sink(2, 5), 3, 1, chunks=6)
    torch.testing.assert_close(ema[1], static[1], rtol=0, atol=0)
    assert (ema[5] - static[5]).abs().max() > 1e-3


def test_bfloat16_within_its_tolerance(reference_backend):
    """In bf16 the rotated cache is as close to the float32 stream as the fused cache is (its
    extra roundings, of re-rotated keys and of folds in rotated space, do not add up)."""
    m32, m16 = _model(64), _model(64, torch.bfloat16)
    for policy in (CachePolicy.ema_sink(3, 3, alpha=0.9), CachePolicy.ema_sink(2, 5, alpha=0.8)):
        truth, _ = _stream_both(m32, policy, 3, 1)
        fused, rotated = _stream_both(m16, policy, 3, 1)
        truth, fused, rotated = torch.stack(truth), torch.stack(fused), torch.stack(rotated)
        worst = (rotated - fused).abs().max().item()
        assert worst < TOL[torch.bfloat16]["latents"], f"{policy}: max |rotated - fused| = {worst:.3e} (bf16)"
        err_f, err_r = (fused - truth).abs(), (rotated - truth).abs()
        assert err_r.mean() <= 1.1 * err_f.mean() and err_r.max() <= 1.25 * err_f.max(), (
            f"{policy}: error vs float32 mean {err_r.mean():.3e} / max {err_r.max():.3e} (rotated), "
            f"{err_f.mean():.3e} / {err_f.max():.3e} (fused)")


def test_fold_in_rotated_space_without_the_model():
    """The cache alone, fed random chunks at many odd sizes: un-rotated keys and values against
    ``ema_cache_update_ref``'s pre-RoPE cache after every chunk. float64 storage, so the only
    rounding is the reference's float32 fold arithmetic (measured: <= 2e-7)."""
    gen = torch.Generator().manual_seed(0)
    grid, heads = (2, 2), 2
    for s, w, c in [(1, 3, 3), (2, 3, 3), (6, 3, 3), (3, 5, 3), (2, 5, 3), (4, 4, 1), (0, 4, 3), (5, 7, 2)]:
        policy = CachePolicy(s, w, 0.7)
        for head_dim in (64, 128):
            fused = SinkKVCache(2, 2, grid, heads, head_dim, policy, dtype=torch.float64)
            rot = RotatedSinkKVCache(2, 2, grid, heads, head_dim, policy, chunk_frames=c, dtype=torch.float64)
            for _ in range(12):
                for layer in range(2):
                    k, v = (torch.randn(2, c * 4, heads, head_dim, generator=gen, dtype=torch.float64) for _ in "kv")
                    ema_cache_update_ref(fused.keys[layer], fused.values[layer], fused.positions[layer],
                                         fused.state[layer], k, v, s, 0.7)
                    rot.update(layer, k, v)
                for layer in range(2):
                    torch.testing.assert_close(_unrotated(rot, layer), _by_age(fused, layer, fused.keys),
                                               rtol=1e-6, atol=1e-6)
                    torch.testing.assert_close(rot.values[layer][:, : rot.occupied], _by_age(fused, layer, fused.values),
                                               rtol=1e-6, atol=1e-6)
            assert rot.occupied == policy.slots


@pytest.mark.parametrize(
    "policy", [CachePolicy.ema_sink(3, 3, alpha=0.9), CachePolicy.static_sink(), CachePolicy.no_sink(6)],
    ids=["ema0.9", "static", "nosink"],
)
def test_matches_reward_forcing_cache(policy):
    model = _model(64)
    text = model.encode_text(torch.randn(1, 5, TEXT_DIM, generator=torch.Generator().manual_seed(1)))
    rot = RotatedSinkKVCache.for_model(model, 1, *LATENT_HW, policy, chunk_frames=3)
    ref = RewardForcingCache(model.config.num_layers, rot.grid, policy.slots + 3, policy.sink_frames, policy.alpha)
    g = torch.Generator().manual_seed(3)
    for n in range(CHUNKS):
        noise = SAMPLER.draw_chunk_noise((1, 4, 3, *LATENT_HW), g, device="cpu")
        a = SAMPLER.denoise_chunk(model, noise, text, rot)
        b = SAMPLER.denoise_chunk(model, noise, text, ref)
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5, msg=lambda m: f"chunk {n}: {m}")
    assert ref.k[0].shape[1] == rot.capacity * rot.tokens_per_frame  # the reference evicted


def test_fill_pattern_is_decided_on_the_host():
    c = RotatedSinkKVCache(1, 1, (1, 1), 1, 64, CachePolicy(3, 5), chunk_frames=3)
    assert c.capacity == 11 and c.fill_lengths() == [3, 6, 9, 11]
    evicted = []
    for _ in range(4):
        evicted.append(c.evicted())
        c.update(0, torch.zeros(1, 3, 1, 64, dtype=c.keys[0].dtype), torch.zeros(1, 3, 1, 64, dtype=c.keys[0].dtype))
    assert evicted == [0, 0, 1, 3] and c.occupied == 8
    assert RotatedSinkKVCache(1, 1, (1, 1), 1, 64, CachePolicy(3, 3)).fill_lengths() == [3, 6, 9]
    assert RotatedSinkKVCache(1, 1, (1, 1), 1, 64, CachePolicy(2, 3), chunk_frames=3).fill_lengths() == [3, 6, 8]
    with pytest.raises(ValueError, match="chunk_frames"):
        RotatedSinkKVCache(1, 1, (1, 1), 1, 64, CachePolicy(3, 3), chunk_frames=4)
    with pytest.raises(RuntimeError, match="out of order"):
        c.update(1, torch.zeros(1, 3, 1, 64), torch.zeros(1, 3, 1, 64))


def test_resolve_cache_impl():
    assert resolve_cache_impl("rotated") is RotatedSinkKVCache and resolve_cache_impl("fused") is SinkKVCache
    assert resolve_cache_impl(RotatedSinkKVCache) is RotatedSinkKVCache and set(CACHE_IMPLS) == {"fused", "rotated"}
    for bad in ("paged", None, 3):
        with pytest.raises(ValueError, match="cache_impl"):
            resolve_cache_impl(bad)


def test_rollout_gradients_equal_the_fused_cache():
    """The exit-step forward carries the gradient through the rotated cache's cat path exactly
    as through sink_attention's backward (float32, with evictions and EMA folds)."""
    torch.manual_seed(0)
    weights = torch.randn(2, 4, 5, 4, 4)
    grads = {}
    for impl in ("fused", "rotated"):
        model = tiny_transformer(0).train()
        text = model.encode_text(FixedTextEncoder()(["a red circle", "a blue square"]))
        x = self_forcing_rollout(model, text, num_chunks=5, chunk_frames=1, latent_size=(4, 4), exit_step=1,
                                 policy=CachePolicy(1, 2, 0.8), generator=torch.Generator().manual_seed(4),
                                 cache_impl=impl)
        (x * weights).sum().backward()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["fused"].keys() == grads["rotated"].keys() and len(grads["fused"]) > 10
    for name, g in grads["fused"].items():
        torch.testing.assert_close(grads["rotated"][name], g, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_snapshot_is_independent():
    c = RotatedSinkKVCache(2, 1, (1, 2), 1, 64, CachePolicy(1, 1), chunk_frames=1, dtype=torch.float32)
    for layer in range(2):
        c.update(layer, torch.ones(1, 2, 1, 64), torch.ones(1, 2, 1, 64))
    snap = c.snapshot()
    for layer in range(2):
        c.update(layer, torch.full((1, 2, 1, 64), 5.0), torch.full((1, 2, 1, 64), 5.0))
    assert snap.occupied == 1 and c.occupied == 2
    for layer in range(2):
        assert snap.values[layer][:, 1].abs().max() == 0 and c.values[layer][:, 1].min() == 5.0
        assert snap.keys[layer] is not c.keys[layer]
    assert snap._cos is c._cos  # the read-only tables are shared


def _pipe(model, **kwargs):
    return StreamingPipeline(model, prompt_encoder=FixedTextEncoder(), chunk_frames=1, sampler=SAMPLER, **kwargs)


def _latents(pipe, chunks, policy=CachePolicy(1, 1, 0.9)):
    out = pipe.stream("a red circle moves left", num_chunks=chunks, height=32, width=32, seed=3, policy=policy,
                      decode=False)
    return torch.cat([c.latents for c in out], dim=2)


def test_pipeline_option():
    model = tiny_transformer(0)
    assert _pipe(model).cache_impl is SinkKVCache  # the default stays the fused cache
    rotated = _latents(_pipe(model, cache_impl="rotated"), 8, CachePolicy(2, 3, 0.8))
    fused = _latents(_pipe(model), 8, CachePolicy(2, 3, 0.8))
    torch.testing.assert_close(rotated, fused, rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="cache_impl"):
        _pipe(model, cache_impl="paged")


def test_chunk_step_compiles_once_per_fill_phase_without_graph_breaks():
    """The pipeline's chunk step (denoise_chunk: the denoising forwards + the refresh) through
    torch.compile(fullgraph=True): no graph break, one compile per fill phase (the host's
    ``occupied`` is a Python int the step specialises on), none in the steady state."""
    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = tiny_transformer(0)
    policy = CachePolicy(1, 1, 0.9)  # key lengths 1, 2, 3 frames, then the steady state
    text = model.encode_text(FixedTextEncoder()(["a red circle moves left"]))
    times = SAMPLER.time_contexts(model, 1, 1)
    step = torch.compile(SAMPLER.denoise_chunk, fullgraph=True, dynamic=False, backend=counting_backend)

    def stream(run):
        cache = RotatedSinkKVCache.for_model(model, 1, 4, 4, policy, chunk_frames=1)
        g = torch.Generator().manual_seed(3)
        noises = [SAMPLER.draw_chunk_noise((1, 4, 1, 4, 4), g, device="cpu") for _ in range(7)]
        return cache, torch.cat([run(model, noise, text, cache, times) for noise in noises], dim=2)

    cache, compiled = stream(step)
    assert cache.fill_lengths() == [1, 2, 3] and cache.occupied == policy.slots
    assert len(graphs) == len(cache.fill_lengths()), f"{len(graphs)} graphs for 3 fill phases"
    for gm in graphs:  # one graph = the whole step: 3 forwards x 2 blocks, the refresh's last block stops early;
        ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]  # SDPA for self- and cross-attention
        assert sum(o is torch._C._nn.scaled_dot_product_attention for o in ops) == 2 * (3 * 2 - 1)
        assert not any("sink_attention" in str(o) or "ema_cache" in str(o) for o in ops)
    _, eager = stream(SAMPLER.denoise_chunk)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


class _NoHostSync(TorchDispatchMode):
    """Fails on any device -> host scalar read (``.item()``, ``.tolist()``, ``bool(tensor)``)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("host sync: aten::_local_scalar_dense")
        return func(*args, **(kwargs or {}))


def test_stream_has_no_host_sync():
    model = tiny_transformer(0)
    policy = CachePolicy(2, 3, 0.9)
    cache = RotatedSinkKVCache.for_model(model, 2, *LATENT_HW, policy, chunk_frames=2)
    text = model.encode_text(torch.randn(2, 5, TEXT_DIM))
    times = SAMPLER.time_contexts(model, 2, 2)
    g = torch.Generator().manual_seed(0)
    noises = [SAMPLER.draw_chunk_noise((2, 4, 2, *LATENT_HW), g, device="cpu") for _ in range(6)]
    with _NoHostSync():
        for noise in noises:  # fill, the first eviction (1 frame), then 2 per chunk with folds
            SAMPLER.denoise_chunk(model, noise, text, cache, times)
    assert cache.occupied == policy.slots
    with pytest.raises(AssertionError, match="host sync"), _NoHostSync():
        cache.keys[0].sum().item()  # the mode does catch a sync


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_stream_has_no_host_sync_on_cuda():
    model = tiny_transformer(0).cuda()
    cache = RotatedSinkKVCache.for_model(model, 1, *LATENT_HW, CachePolicy(2, 3, 0.9), chunk_frames=3)
    text = model.encode_text(torch.randn(1, 5, TEXT_DIM, device="cuda"))
    times = SAMPLER.time_contexts(model, 1, 3)
    g = torch.Generator(device="cuda").manual_seed(0)
    noises = [SAMPLER.draw_chunk_noise((1, 4, 3, *LATENT_HW), g, device="cuda") for _ in range(5)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for noise in noises:
            SAMPLER.denoise_chunk(model, noise, text, cache, times)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_e2e_bench_rotated_mode(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "e2e_streaming.py"), "--config", "tiny", "--device", "cpu",
           "--dtype", "float32", "--height", "32", "--width", "48", "--chunks", "3", "--warmup", "3",
           "--repeats", "1", "--no-vae", "--keep-output", "--modes", "ours", "rotated", "baseline",
           "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / "e2e_streaming_cpu.json").read_text())
    modes = {r["mode"]: r for r in data["results"]}
    assert set(modes) == {"ours", "rotated", "baseline"}
    assert modes["rotated"]["sustained_fps"] > 0 and modes["rotated"]["frames_measured"] == 3 * 12
    assert data["summary"]["speedup_rotated"] > 0
    assert data["summary"]["max_abs_diff_latents_rotated"] < 1e-4
