"""DMD losses and reward weightings against straightforward references (random tensors)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from stream_r1_fast.ops.saliency_ref import saliency_weights_ref
from stream_r1_fast.rewards.base import RewardOutput
from stream_r1_fast.training.dmd import critic_loss, dmd_gradient, dmd_loss, sample_timesteps
from stream_r1_fast.training.weighting import AdaptiveBalance, Weighting, WeightingConfig
from training_helpers import TinyReward

B, C, F, H, W = 2, 4, 4, 4, 4  # latents; video: T = 13, 16 x 16 (VAE factors 4, 4)


def _scores():
    torch.manual_seed(0)
    a, b, c = (torch.randn(C, 1, 1, 1) for _ in range(3))
    return (lambda x, t: a * x + t.view(-1, 1, 1, 1, 1) / 1000), (lambda x, t: b * x), (lambda x, t: c * x + 0.1)


def test_timesteps_shift_and_clamp():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(10000, generator=g)
    u = torch.rand(10000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = (1000 * 5 * u / (1 + 4 * u)).clamp(20, 980).float()
    torch.testing.assert_close(t, ref)
    assert t.min() >= 20 and t.max() <= 980 and (t == 980).any()


def test_dmd_gradient_matches_reference():
    real_c, real_u, fake = _scores()
    x = torch.randn(B, C, F, H, W)
    t, eps = torch.tensor([100.0, 900.0]), torch.randn(B, C, F, H, W)
    g, stats = dmd_gradient(x, real_c, real_u, fake, guidance_scale=3.0, t=t, eps=eps)
    s = (t / 1000).view(-1, 1, 1, 1, 1)
    x_t = (1 - s) * x + s * eps
    x0 = lambda f: x_t - s * f(x_t, t)  # noqa: E731
    real = x0(real_c) + 3.0 * (x0(real_c) - x0(real_u))
    ref = (x0(fake) - real) / (x - real).abs().mean((1, 2, 3, 4), keepdim=True)
    torch.testing.assert_close(g, ref)
    assert stats["normalizer"].shape == (B,)


def test_dmd_gradient_nan_to_num():
    x = torch.zeros(B, C, F, H, W)
    zero = lambda x_t, t: x_t / (t.view(-1, 1, 1, 1, 1) / 1000)  # noqa: E731  x0_real == x -> 0/0
    g, _ = dmd_gradient(x, zero, zero, zero, t=torch.full((B,), 500.0), eps=torch.ones_like(x))
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("weighted", [False, True])
def test_dmd_loss_value_and_gradient(weighted):
    x = torch.randn(B, C, F, H, W, requires_grad=True)
    g = torch.randn(B, C, F, H, W)
    w = torch.rand(B, 1, F, H, W, dtype=torch.float64) + 0.5 if weighted else None
    loss = dmd_loss(x, g, w)
    assert loss.dtype == torch.float64
    ww = w if weighted else torch.ones(1, dtype=torch.float64)
    torch.testing.assert_close(loss, (0.5 * ww * g.double() ** 2).mean())
    loss.backward()
    torch.testing.assert_close(x.grad, (ww * g.double() / x.numel()).float().expand_as(x))


def test_critic_loss_is_flow_matching():
    _, _, fake = _scores()
    x, eps, t = torch.randn(B, C, F, H, W), torch.randn(B, C, F, H, W), torch.tensor([300.0, 700.0])
    loss, _ = critic_loss(fake, x, t=t, eps=eps)
    s = (t / 1000).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(loss, ((fake((1 - s) * x + s * eps, t) - (eps - x)) ** 2).mean())


class OfficialBalance:
    """An independent re-statement of Stream-R1's official BalancedOverall penalty (its
    ``_apply_balance_penalty``): one call per training step with that step's (normalised) reward
    per axis; the step counter and the append come first; after ``warmup`` steps with >= 4
    entries per axis, ``delta = mean(recent half) - mean(early half)`` per axis (early half
    ``len // 2`` entries, at least 1) and the penalty is ``torch.std`` of the deltas (unbiased)."""

    def __init__(self, window=50, warmup=50, lam=0.5):
        from collections import deque

        self.hist = [deque(maxlen=window) for _ in range(3)]
        self.step, self.warmup, self.lam = 0, warmup, lam

    def __call__(self, step_rewards):
        self.step += 1
        for h, v in zip(self.hist, step_rewards):
            h.append(float(v))
        if self.step < self.warmup or any(len(h) < 4 for h in self.hist):
            return 0.0
        deltas = []
        for h in self.hist:
            h = list(h)
            half = max(1, len(h) // 2)
            deltas.append(sum(h[half:]) / max(1, len(h) - half) - sum(h[:half]) / half)
        return float(torch.tensor(deltas, dtype=torch.float64).std())


def test_adaptive_balance_official_example():
    """Per-step rewards [0.01 s, 0, -0.01 s], s = 0..49: the official penalty is 0.25 (the
    sample std of the deltas [0.25, 0, -0.25]); a population std would give 0.204."""
    bal, official = AdaptiveBalance(), OfficialBalance()
    for s in range(50):
        r = [0.01 * s, 0.0, -0.01 * s]
        bal.record(torch.tensor([r], dtype=torch.float64), step=s)
        want = official(r)
        assert bal.penalty() == pytest.approx(want, abs=1e-12)
    assert bal.penalty() == pytest.approx(0.25, abs=1e-12)


@pytest.mark.parametrize("batch", [1, 4, 64])
def test_adaptive_balance_counts_steps_not_samples(batch):
    """Any global batch size: one entry per step (the batch mean), warm-up after 50 steps, the
    same P as the official code fed the step means — at 64 samples per step the window still
    spans 50 steps of progress (a per-sample window would hold less than one step)."""
    rng = np.random.default_rng(batch)
    bal, official = AdaptiveBalance(), OfficialBalance()
    trend = np.array([0.02, 0.0, -0.01])
    for s in range(80):
        r = rng.normal(size=(batch, 3)) * 0.1 + trend * s
        bal.record(torch.tensor(r), step=s)
        want = official(r.mean(0))
        assert bal.penalty() == pytest.approx(want, rel=1e-9, abs=1e-12), s
        assert (bal.penalty() == 0.0) == (s < 49)
    assert bal.steps == 80 and all(len(h) == 50 for h in bal.history)
    assert bal.penalty() > 0.3  # the trend of 50 steps: deltas ~ [0.5, 0, -0.25]


def test_adaptive_balance_micro_batches_make_one_entry():
    """Gradient accumulation: micro-batches of one step (same step id) give one entry, the mean
    of all the step's finite rewards; a NaN is left out of its axis only."""
    rng = np.random.default_rng(0)
    split, whole = AdaptiveBalance(warmup=5), AdaptiveBalance(warmup=5)
    for s in range(12):
        r = rng.normal(size=(6, 3))
        if s == 3:
            r[1, 1] = np.nan
        for part in np.split(r, 3):
            split.record(torch.tensor(part), step=s)
        whole.record(torch.tensor(r), step=s)
        assert split.penalty() == pytest.approx(whole.penalty(), rel=1e-12, abs=1e-15)
        np.testing.assert_allclose(split.history[1][-1], np.nanmean(r[:, 1]), rtol=1e-12)
    assert split.steps == 12 and len(split.history[0]) == 12
    state = split.state_dict()
    other = AdaptiveBalance(warmup=5)
    other.load_state_dict(state)
    assert other.penalty() == split.penalty() and other.state_dict() == state


def test_adaptive_balance_combined():
    bal = AdaptiveBalance(warmup=4, min_per_axis=4)
    for s in range(6):
        bal.record(torch.tensor([[s * 0.1, 0.0, -s * 0.05]], dtype=torch.float64), step=s)
    r = torch.tensor([[0.3, -0.1, 0.4]], dtype=torch.float64)
    assert bal.penalty() > 0
    torch.testing.assert_close(bal.combined(r), r.mean(-1) - 0.5 * bal.penalty())


def _video(seed=0):
    return torch.rand(B, 13, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_re_dmd_weight():
    reward = TinyReward()
    wt = Weighting(WeightingConfig(mode="re_dmd"), reward, (4, 4))
    video = _video()
    w, logs = wt(video, ["a", "b"], (B, C, F, H, W))
    r_mq = reward.rewards(video, ["a", "b"]).normalized[:, 1].double()
    torch.testing.assert_close(w[:, 0, 0, 0, 0], torch.exp(2.0 * r_mq))
    assert w.shape == (B, 1, F, H, W) and (w == w[:, :, :1, :1, :1]).all()


def test_stream_r1_weights_and_gradient_match_reference():
    reward = TinyReward()
    cfg = WeightingConfig(mode="stream_r1", balance_warmup=2, balance_min_per_axis=2)
    wt = Weighting(cfg, reward, (4, 4))
    video = _video()
    # Fill the balance so that P != 0 on the step under test (one step per call).
    official = OfficialBalance(warmup=2)
    for step, seed in enumerate((1, 2, 3)):
        wt(_video(seed), ["a", "b"], (B, C, F, H, W), step=step)
        official(reward.rewards(_video(seed), ["a", "b"]).normalized.double().mean(0).tolist())
    w, _ = wt(video, ["a", "b"], (B, C, F, H, W), step=3)

    pixels = video.clone().requires_grad_(True)
    out = reward.rewards(pixels, ["a", "b"])
    grads = torch.stack([torch.autograd.grad(out.raw[:, a].sum(), pixels, retain_graph=True)[0] for a in range(3)])
    r = out.normalized.detach().double()
    penalty = official(r.mean(0).tolist())
    assert penalty > 0
    w_inter = torch.exp(2.0 * (r.mean(-1) - 0.5 * penalty))
    axis_w = torch.softmax(-r.float(), -1)
    w_intra = saliency_weights_ref(grads, axis_w, "vae", 4, 4, 0.2, 0.15, 1.0, 1.0)[0].double()
    ref = w_inter.view(B, 1, 1, 1, 1) * w_intra[:, None]
    torch.testing.assert_close(w, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(w_intra, torch.ones_like(w_intra))

    x = torch.randn(B, C, F, H, W, requires_grad=True)
    g = torch.randn(B, C, F, H, W)
    dmd_loss(x, g, w).backward()
    torch.testing.assert_close(x.grad.double(), w_inter.view(B, 1, 1, 1, 1) * w_intra[:, None] * g.double() / x.numel(),
                               rtol=1e-5, atol=1e-12)


class _NaNReward(TinyReward):
    def rewards(self, video, prompts):
        out = super().rewards(video, prompts)
        raw = out.raw.clone()
        raw[0] = float("nan")
        return RewardOutput(raw, raw * 1.0)


@pytest.mark.parametrize("mode", ["re_dmd", "stream_r1"])
def test_nan_reward_gives_weight_one_and_a_warning(mode):
    wt = Weighting(WeightingConfig(mode=mode), _NaNReward(), (4, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w, logs = wt(_video(), ["a", "b"], (B, C, F, H, W))
    assert any("non-finite reward" in str(c.message) for c in caught)
    assert torch.isfinite(w).all() and math.isclose(float(logs["w_inter"][0]), 1.0)
    x = torch.randn(B, C, F, H, W, requires_grad=True)
    loss = dmd_loss(x, torch.randn_like(x), w)
    assert torch.isfinite(loss)


def test_reward_pass_leaves_generator_graph_alone():
    reward = TinyReward()
    lin = torch.nn.Linear(3, 3)
    video = lin(_video().permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3).sigmoid()  # carries a graph
    wt = Weighting(WeightingConfig(mode="stream_r1"), reward, (4, 4))
    w, _ = wt(video, ["a", "b"], (B, C, F, H, W))
    assert lin.weight.grad is None and not w.requires_grad
    assert all(p.grad is None for p in reward.parameters())


def test_weighting_config_names_bad_values():
    with pytest.raises(ValueError, match="weighting.mode"):
        WeightingConfig(mode="ppo")
    with pytest.raises(ValueError, match="weighting.gamma_t"):
        WeightingConfig(gamma_t=2.0)
