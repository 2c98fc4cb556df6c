"""Dense attention over a contiguous key range on the measured-fastest backend: the choice
logic (fastest that matches; failures and mismatches skipped with why), the forced choice,
traceability, and the rotated cache using the choice for every fill shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stream_r1_fast import backend_info
from stream_r1_fast.cache import CachePolicy, RotatedSinkKVCache
from stream_r1_fast.ops import dense_attention
from stream_r1_fast.ops.dense_attention import (ATTENTION_ENV, BACKENDS, attention, attention_choices,
                                                available_backends, choose_backend, pick_fastest)


def _math(q, k, v):
    s = torch.einsum("blhd,bmhd->bhlm", q.double(), k.double()) / q.shape[-1] ** 0.5
    return torch.einsum("bhlm,bmhd->blhd", s.softmax(-1), v.double())


@pytest.mark.parametrize("shape", [(1, 7, 9, 1, 8), (3, 12, 30, 2, 64), (2, 5, 5, 3, 128)])
def test_sdpa_matches_math_in_the_cache_layout(shape):
    b, lq, lk, h, d = shape
    q, k, v = torch.randn(b, lq, h, d), torch.randn(b, lk, h, d), torch.randn(b, lk, h, d)
    out = attention(q, k, v)
    assert out.shape == (b, lq, h, d) and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), _math(q, k, v), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        attention(q, k, v, "nope")


def test_pick_fastest_takes_the_fastest_that_matches():
    want = torch.ones(4)
    outputs = {"sdpa": want, "a": want + 1e-6, "b": want + 1.0, "c": None, "d": want}
    times = {"sdpa": 3.0, "a": 1.0, "b": 0.1, "d": 2.0}

    def run(name):
        if outputs[name] is None:
            raise RuntimeError("no kernel for this shape")
        return outputs[name]

    choice = pick_fastest(list(outputs), run, times.__getitem__, tolerance=1e-4)
    assert choice.backend == "a"  # "b" is faster but wrong
    assert set(choice.times_ms) == {"sdpa", "a", "d"}
    assert "max error" in choice.skipped["b"] and "no kernel" in choice.skipped["c"]


def test_cpu_has_one_backend_and_says_why_not_the_others():
    names, skipped = available_backends(torch.device("cpu"))
    assert names == ["sdpa"] and set(skipped) == set(BACKENDS) - {"sdpa"}
    assert choose_backend(1, 6, 12, 2, 16, torch.float32, "cpu") == "sdpa"
    assert any("Lq6 Lk12" in k and c.reason == "the only backend here" for k, c in attention_choices().items())


def test_forced_backend(monkeypatch):
    monkeypatch.setattr(dense_attention, "_CHOICES", {})
    monkeypatch.setenv(ATTENTION_ENV, "sdpa")
    assert choose_backend(1, 6, 12, 2, 16, torch.float32, "cpu") == "sdpa"
    assert next(iter(attention_choices().values())).reason == f"forced by {ATTENTION_ENV}"
    monkeypatch.setenv(ATTENTION_ENV, "fastest")
    with pytest.raises(ValueError, match="'fastest' is not an attention backend"):
        choose_backend(1, 6, 24, 2, 16, torch.float32, "cpu")
    monkeypatch.setenv(ATTENTION_ENV, "cudnn")
    with pytest.raises(ValueError, match="'cudnn' cannot run here: CUDA only"):
        choose_backend(1, 6, 36, 2, 16, torch.float32, "cpu")


def test_pinned_sdpa_traces_in_one_graph():
    """sdpa_kernel(...) inside the compiled step: no graph break (the CPU's math backend)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def step(q, k, v):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v) * 2

    q = torch.randn(1, 2, 6, 8)
    compiled = torch.compile(step, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, q, q), step(q, q, q))


def test_rotated_cache_chooses_every_fill_shape():
    cache = RotatedSinkKVCache(num_layers=1, batch_size=1, grid=(2, 3), heads=2, head_dim=16,
                               policy=CachePolicy.ema_sink(3, 3, 0.9), chunk_frames=3, dtype=torch.float32)
    assert cache._attention == {(0, 3): "sdpa", (3, 3): "sdpa", (6, 3): "sdpa"}
    report = backend_info().attention()
    assert all(any(f"Lq18 Lk{18 * n}" in k for k in report) for n in (1, 2, 3))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_every_cuda_backend_matches_and_the_choice_is_timed():
    names, _ = available_backends(torch.device("cuda"))
    q, k, v = (torch.randn(1, n, 4, 128, device="cuda", dtype=torch.bfloat16) for n in (300, 700, 700))
    want = _math(q, k, v)
    for name in names:
        try:
            got = attention(q, k, v, name)
        except RuntimeError as exc:  # a pinned backend may not support this GPU / shape
            pytest.skip(f"{name}: {exc}")
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)
    backend = choose_backend(1, 300, 700, 4, 128, torch.bfloat16, "cuda")
    choice = next(c for key, c in attention_choices().items() if "Lq300 Lk700" in key)
    assert backend in names and backend in choice.times_ms and choice.times_ms[backend] == min(choice.times_ms.values())


def test_our_unvalidated_kernel_is_measured_only_when_asked(monkeypatch):
    """A kernel never run on a GPU is not measured by default (a fault there would poison the
    process's CUDA context): only with STREAM_R1_FAST_ATTENTION_OURS=1, or when forced."""
    monkeypatch.setitem(dense_attention._OWN, "ours", (lambda q, k, v: q, lambda dtype, head_dim: None))
    monkeypatch.delenv(dense_attention.OWN_ENV, raising=False)
    cuda = torch.device("cuda")
    names, skipped = available_backends(cuda, torch.bfloat16, 128)
    assert "ours" not in names and "never yet run on a GPU" in skipped["ours"]
    assert "ours" in available_backends(cuda, torch.bfloat16, 128, unvalidated=True)[0]
    monkeypatch.setenv(dense_attention.OWN_ENV, "1")
    assert "ours" in available_backends(cuda, torch.bfloat16, 128)[0]
