"""The attention-backends benchmark on a tiny CPU geometry: every fill stage is timed for every
available backend, with the key lengths of the streaming cache, and a wrong backend is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_attention_backends as bench  # noqa: E402


def test_every_fill_stage_is_timed_with_the_cache_key_lengths(monkeypatch):
    monkeypatch.setattr(bench, "CPU_GEOMETRY", dict(fq=3, gh=2, gw=3, h=2, d=64, dtype=torch.float32))
    monkeypatch.setattr(bench, "time_fn", lambda fn, device: (fn(), (1.0, 0.9, 1.1))[1])
    rows = bench.run(torch.device("cpu"))
    tokens = 2 * 3
    stages = {(r.extra["Lq"], r.extra["Lk"]) for r in rows}
    assert stages == {(3 * tokens, (3 + s) * tokens) for s in bench.FILL_STAGES}
    for lq, lk in stages:
        names = {r.variant for r in rows if r.extra["Lk"] == lk}
        assert {"sdpa_default", "sdpa_math", "sink_attention"} <= names
    flops = 4 * 18 * 36 * 64 * 2
    row = next(r for r in rows if r.extra["Lk"] == 36 and r.variant == "sdpa_default")
    assert row.extra["TFLOP/s"] == pytest.approx(flops / 1e-3 / 1e12, rel=1e-2)


def test_a_backend_with_a_wrong_result_is_refused():
    want = torch.randn(1, 8, 2, 16)
    bench._check("ok", want.clone(), want, torch.float32)
    with pytest.raises(AssertionError, match="wrong: max error"):
        bench._check("wrong", want + 0.1, want, torch.float32)
