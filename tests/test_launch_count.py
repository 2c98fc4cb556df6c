"""Kernel launches per transformer block in a steady streaming chunk (eager), counted at the
dispatcher: every ATen / fused op that reaches a backend kernel — views and allocations, which
launch nothing, are left out. Counted as the difference between a 6-block and a 2-block model
so that the embedding and the head do not count. Budget: 120 per block (bf16 weights, where
Wan's float32 modulation and residuals add casts). Both caches: the fused one (65 per block
denoising, 66 on the refresh) and the rotated one, whose self-attention norms and RoPE are one
qk_norm_rope call (52 / 61; 85 / 86 when they were two norms and two rotations)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stream_r1_fast.cache import CachePolicy, RotatedSinkKVCache, SinkKVCache
from stream_r1_fast.models import CausalWanTransformer, preset

BUDGET_PER_BLOCK = 120
NO_KERNEL = {"empty", "empty_strided", "empty_like", "detach", "lift_fresh", "alias"}


class _Launches(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in NO_KERNEL:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def _count(num_layers: int, refresh: bool, cache_impl: str = "fused") -> Counter:
    cfg = dict(preset("tiny"), num_layers=num_layers)
    torch.manual_seed(0)
    model = CausalWanTransformer(**cfg).to(torch.bfloat16).eval()
    text = model.encode_text(torch.randn(1, 8, cfg["text_dim"], dtype=torch.bfloat16))
    if cache_impl == "fused":
        cache = SinkKVCache.for_model(model, 1, 4, 4, CachePolicy(1, 1))
    else:
        cache = RotatedSinkKVCache.for_model(model, 1, 4, 4, CachePolicy(1, 1), chunk_frames=1)
    x = torch.randn(1, cfg["in_channels"], 1, 4, 4)
    t = model.time_context(500.0, 1, 1)
    with torch.no_grad():
        for _ in range(3):  # fill the sink and the window: the steady state evicts and folds
            model.forward_chunk(x, t, text, cache)
            model.forward_chunk(x, t, text, cache, update_cache=True)
        mode = _Launches()
        with mode:
            model.forward_chunk(x, t, text, cache, update_cache=refresh)
    return mode.ops


@pytest.mark.parametrize("cache_impl", ["fused", "rotated"])
@pytest.mark.parametrize("refresh", [False, True], ids=["denoise", "refresh"])
def test_launches_per_block_within_budget(refresh, cache_impl):
    small, big = _count(2, refresh, cache_impl), _count(6, refresh, cache_impl)
    per_block = {k: (big[k] - small.get(k, 0)) / 4 for k in big}
    total = sum(per_block.values())
    detail = ", ".join(f"{k} {v:g}" for k, v in sorted(per_block.items(), key=lambda kv: -kv[1]) if v)
    assert 0 < total <= BUDGET_PER_BLOCK, f"{total:g} launches per block: {detail}"
    if cache_impl == "fused":
        assert per_block.get("sink_attention", 0) == 1  # self-attention is one fused call per block
    else:
        # q/k norms and RoPE: one fused call; the RMSNorms left are the cross-attention's q norm
        # and, on the refresh, the norm of the keys the cache stores.
        assert per_block.get("qk_norm_rope", 0) == 1, detail
        assert per_block.get("rsqrt", 0) == (2 if refresh else 1), detail
        assert per_block.get("rotated_cache_advance", 0) == (1 if refresh else 0), detail
