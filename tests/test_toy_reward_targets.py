"""The v2 reward targets (toy/reward_targets.py) rank what each axis is about: true clips on
top, each corruption lower on its own axis and not on the others, a wrong caption lower on TA."""

import dataclasses
import random

import pytest
import torch

from stream_r1_fast.toy.corruptions import corrupt_motion, corrupt_visual
from stream_r1_fast.toy.reward_targets import off_palette_fraction, reward_targets_v2, reward_targets_v2_batch
from stream_r1_fast.toy.world2 import ObjectSpecV2, ToyWorldV2, caption_of

VQ, MQ, TA = range(3)


@pytest.fixture(scope="module")
def clips():
    world = ToyWorldV2(num_frames=33)
    video, attrs = world.batch(6, seed=3)
    return world, video, attrs


def _targets(world, videos, attrs, captions=None):
    return reward_targets_v2_batch(videos, captions or [a.caption for a in attrs], world=world)


def test_true_clips_score_near_one_on_every_axis(clips):
    world, video, attrs = clips
    t = _targets(world, video, attrs)
    assert t.shape == (6, 3) and bool((t >= 0).all() and (t <= 1).all())
    assert bool((t > 0.9).all()), t


@pytest.mark.parametrize("kind", ["jitter", "frozen", "teleport"])
def test_motion_corruptions_lower_mq_only(clips, kind):
    world, video, attrs = clips
    rng = random.Random(0)
    bad = torch.stack([corrupt_motion(world, a, kind, rng) for a in attrs])
    t, t0 = _targets(world, bad, attrs).mean(0), _targets(world, video, attrs).mean(0)
    assert t[MQ] < t0[MQ] - 0.1, (kind, t, t0)  # a teleport is 1-2 jumps: ~4 of 29 spans off
    assert t[VQ] > 0.9


def test_noise_lowers_vq(clips):
    world, video, attrs = clips
    rng = random.Random(1)
    noisy = torch.stack([corrupt_visual(v, "noise", rng) for v in video])
    assert _targets(world, noisy, attrs)[:, VQ].mean() < 0.6
    assert off_palette_fraction(video[0], attrs[0].background) < 0.02


def test_a_wrong_direction_word_lowers_ta_and_a_wrong_speed_word_lowers_mq(clips):
    world, video, attrs = clips
    other = {"left": "right", "right": "left", "up": "down", "down": "up"}
    faster = {"slow": "fast", "fast": "slow"}
    wrong_dir = [caption_of([dataclasses.replace(o, direction=other[o.direction]) for o in a.objects], a.background)
                 for a in attrs]
    wrong_speed = [caption_of([dataclasses.replace(o, speed=faster[o.speed]) for o in a.objects], a.background)
                   for a in attrs]
    t0 = _targets(world, video, attrs)
    td, ts = _targets(world, video, attrs, wrong_dir), _targets(world, video, attrs, wrong_speed)
    assert bool((td[:, TA] < t0[:, TA] - 0.1).all()) and torch.allclose(td[:, MQ], t0[:, MQ])
    assert bool((ts[:, MQ] < 0.7).all()) and torch.allclose(ts[:, TA], t0[:, TA])


def test_an_empty_clip_scores_zero_ta_and_mq():
    world = ToyWorldV2(num_frames=9)
    caption = caption_of([ObjectSpecV2("square", "red", "left", "fast")], "black")
    black = torch.full((9, 3, 32, 32), 0.0)
    t = reward_targets_v2(black, caption, world=world)
    assert float(t[MQ]) == 0.0 and float(t[TA]) < 0.5


def test_batch_shapes_are_checked():
    with pytest.raises(ValueError, match="B captions"):
        reward_targets_v2_batch(torch.zeros(2, 5, 3, 32, 32), ["x"])


def test_spearman_matches_the_pearson_correlation_of_mean_ranks():
    from stream_r1_fast.toy.reward_targets import spearman

    x = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0])
    y = torch.tensor([30.0, 10.0, 25.0, 20.0, 40.0])
    # ranks by hand (ties share 1.5): x -> [3, 0, 1.5, 1.5, 4], y -> [3, 0, 2, 1, 4]
    rx, ry = torch.tensor([3, 0, 1.5, 1.5, 4.0]), torch.tensor([3, 0, 2, 1, 4.0])
    expected = float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])
    assert spearman(x, y) == pytest.approx(expected)
    assert spearman(x, x.exp()) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, torch.ones(5)) is None
    with pytest.raises(ValueError):
        spearman(x, y[:3])


def test_vq_does_not_read_the_caption_and_a_wrong_background_word_lowers_ta(clips):
    world, video, attrs = clips
    other = {"black": "gray", "gray": "brown", "brown": "black"}
    wrong_bg = [caption_of(a.objects, other[a.background]) for a in attrs]
    t0, t = _targets(world, video, attrs), _targets(world, video, attrs, wrong_bg)
    torch.testing.assert_close(t[:, VQ], t0[:, VQ])
    assert bool((t[:, TA] < t0[:, TA] - 0.1).all())
