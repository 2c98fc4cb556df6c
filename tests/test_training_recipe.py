"""The training recipe's choices that follow the official code: the rollout's cache holds the
whole rollout, and the critic trains on a fresh rollout of the updated generator."""

from __future__ import annotations

import pytest
import torch

from stream_r1_fast.cache import CachePolicy
from stream_r1_fast.training import trainer as trainer_module
from stream_r1_fast.training.config import ConfigError, TrainConfig
from stream_r1_fast.training.rollout import self_forcing_rollout, training_cache_policy
from tiny_wan import tiny_transformer
from training_helpers import FixedTextEncoder, tiny_config, tiny_trainer

FOUR_CHUNKS = {"num_chunks": 4, "chunk_frames": 1, "sink_frames": 1, "window_frames": 1}


def _rollout(model, policy, chunks=4):
    text = model.encode_text(FixedTextEncoder()(["a red circle moves left"]))
    with torch.no_grad():
        return self_forcing_rollout(model, text, num_chunks=chunks, chunk_frames=1, latent_size=(4, 4), exit_step=3,
                                    policy=policy, generator=torch.Generator().manual_seed(3))


def test_default_training_cache_holds_the_whole_rollout():
    """Official recipe: nothing is evicted or folded during a training rollout. A cache with room
    for far more than the rollout (64 frames) is the official behaviour; the default policy of
    a 4-chunk rollout must give exactly its result, while the inference EMA-Sink of the same
    recipe (sink 1 + window 1) evicts and differs."""
    assert TrainConfig().rollout.cache == "full"
    cfg = tiny_config(rollout=FOUR_CHUNKS)
    policy = tiny_trainer(cfg).policy
    assert policy.slots >= 3
    model = tiny_transformer(0)
    unbounded = _rollout(model, CachePolicy(0, 64, 1.0))
    torch.testing.assert_close(_rollout(model, policy), unbounded, rtol=0, atol=0)
    assert not torch.allclose(_rollout(model, CachePolicy(1, 1, 0.999)), unbounded, atol=1e-4)


def test_ema_sink_in_training_is_an_option():
    cfg = tiny_config(rollout=FOUR_CHUNKS | {"cache": "ema_sink", "alpha": 0.9})
    assert training_cache_policy(cfg.rollout) == CachePolicy(1, 1, 0.9)
    with pytest.raises(ConfigError, match="rollout.cache"):
        tiny_config(rollout={"cache": "sliding"})
    with pytest.raises(ConfigError, match="dmd.critic_samples"):
        tiny_config(dmd={"critic_samples": "stale"})


def _spy_step(monkeypatch, critic_samples):
    """One generator + critic step; returns (trainer, the generator's rollout, the critic's samples)."""
    seen = {}
    dmd_gradient, critic_loss = trainer_module.dmd_gradient, trainer_module.critic_loss

    def spy_dmd(x, *args, **kwargs):
        seen["generator"] = x.detach().clone()
        return dmd_gradient(x, *args, **kwargs)

    def spy_critic(score, x, **kwargs):
        seen["critic"] = x.detach().clone()
        return critic_loss(score, x, **kwargs)

    monkeypatch.setattr(trainer_module, "dmd_gradient", spy_dmd)
    monkeypatch.setattr(trainer_module, "critic_loss", spy_critic)
    tr = tiny_trainer(tiny_config(dmd={"critic_samples": critic_samples}))
    logs = tr.train_step()
    return tr, logs, seen["generator"], seen["critic"]


def test_critic_trains_on_a_fresh_rollout_of_the_updated_generator(monkeypatch):
    """Self-Forcing's order: generator update, then the critic's samples come from a new no-grad
    rollout of the *updated* generator (own noise, own exit step), not the pre-update one."""
    assert TrainConfig().dmd.critic_samples == "fresh"
    tr, logs, gen_x, critic_x = _spy_step(monkeypatch, "fresh")
    assert not torch.allclose(gen_x, critic_x)
    # Re-derive the critic's samples independently: the updated generator, rolled out for the
    # same prompts with the critic's noise and exit step.
    tr.step -= 1  # the step just taken
    prompts, gens = tr._batch(0, 3)
    text = tr.student.encode_text(tr.text_encoder(prompts))
    with torch.no_grad():
        want = self_forcing_rollout(tr.student, text, num_chunks=2, chunk_frames=1, latent_size=tr.latent_size,
                                    exit_step=logs["critic_exit_step"], sampler=tr.sampler, policy=tr.policy,
                                    generator=gens)
    torch.testing.assert_close(critic_x, want)


def test_critic_can_reuse_the_generator_rollout(monkeypatch):
    _, logs, gen_x, critic_x = _spy_step(monkeypatch, "reuse")
    torch.testing.assert_close(critic_x, gen_x, rtol=0, atol=0)
    assert logs["critic_exit_step"] == logs["exit_step"]


def test_rotated_cache_in_training_gives_the_fused_caches_run():
    """rollout.cache_impl: the rotated storage trains like the fused one (same semantics; float
    rounding apart), with evictions and folds in the rollout (ema_sink over 4 chunks)."""
    logs = {}
    for impl in ("fused", "rotated"):
        tr = tiny_trainer(tiny_config(rollout=FOUR_CHUNKS | {"cache": "ema_sink", "cache_impl": impl}))
        logs[impl] = [tr.train_step() for _ in range(2)]
    for a, b in zip(logs["fused"], logs["rotated"]):
        for key in ("critic_loss", "generator_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), key
    with pytest.raises(ConfigError, match="rollout.cache_impl"):
        tiny_config(rollout={"cache_impl": "paged"})
