"""The toy world: captions, determinism, and ground truth the oracle scores almost perfectly."""

import random

import pytest
import torch

from stream_r1_fast.toy.corruptions import corrupt_motion
from stream_r1_fast.toy.oracle import score_clip, score_videos
from stream_r1_fast.toy.text import MAX_TOKENS, TEXT_DIM, ToyTextEncoder
from stream_r1_fast.toy.world import ToyWorld, parse_caption


def test_clips_are_seeded_and_shaped():
    world = ToyWorld()
    a, attrs = world.batch(3, seed=5)
    b, _ = world.batch(3, seed=5)
    assert a.shape == (3, 33, 3, 32, 32) and torch.equal(a, b)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    for at in attrs:
        assert at.positions.shape == at.velocities.shape == (33, len(at.objects), 2)
        assert len({o.color for o in at.objects}) == len(at.objects)  # distinct colours
        objects, bg = parse_caption(at.caption)
        assert objects == at.objects and bg == at.background


def test_bounces_keep_objects_inside():
    world = ToyWorld(num_frames=129)
    _, attrs = world.batch(4, seed=1)
    for at in attrs:
        for i in range(len(at.objects)):
            r = at.half_extent(i)
            p = at.positions[:, i]
            assert float(p.min()) >= r - 1e-4 and float(p.max()) <= 32 - r + 1e-4
            # Displacement per frame is the nominal speed, shorter only on frames with a bounce.
            speed = at.velocities[:, i].norm(dim=-1)
            nominal = float(speed.median())
            assert float(speed.max()) <= nominal + 1e-4 and float((speed > nominal - 1e-4).float().mean()) > 0.85


@pytest.mark.parametrize("bad", ["a red circle", "a small red blob moving left fast on a black background"])
def test_bad_captions_are_named(bad):
    with pytest.raises(ValueError):
        parse_caption(bad)


def test_text_encoder():
    enc = ToyTextEncoder()
    _, attrs = ToyWorld().batch(2, seed=0)
    emb = enc([attrs[0].caption, ""])
    assert emb.shape == (2, MAX_TOKENS, TEXT_DIM)
    assert float(emb[1].abs().sum()) == 0.0  # the unconditional prompt
    assert float(emb[0].sum()) == 2 * len(attrs[0].caption.split())  # word and slot one-hots
    with pytest.raises(ValueError, match="vocabulary"):
        enc(["a purple elephant"])


def test_oracle_scores_ground_truth_almost_perfectly():
    video, attrs = ToyWorld().batch(16, seed=2024)
    m = score_videos(video, [a.caption for a in attrs])
    for key in ("count", "color", "shape"):
        assert m[key] >= 0.95, m
    assert m["direction"] >= 0.9 and m["speed"] >= 0.9, m
    assert m["smoothness"] >= 0.93 and m["dynamic_degree"] >= 0.95, m
    assert m["frame_copy_rate"] <= 0.01 and m["background_error"] < 0.01, m


def test_oracle_sees_motion_corruptions():
    world = ToyWorld()
    rng = random.Random(0)
    _, attrs = world.batch(4, seed=11)
    clean = [score_clip(world.render(a), a.caption) for a in attrs]
    frozen = [score_clip(corrupt_motion(world, a, "frozen", rng), a.caption) for a in attrs]
    jitter = [score_clip(corrupt_motion(world, a, "jitter", rng), a.caption) for a in attrs]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    assert mean(frozen, "frame_copy_rate") > 0.05 > mean(clean, "frame_copy_rate")
    assert mean(jitter, "smoothness") < mean(clean, "smoothness") - 0.3


def test_oracle_long_rollout_has_no_drift():
    world = ToyWorld(num_frames=161)
    video, attrs = world.batch(2, seed=3)
    m = score_videos(video, [a.caption for a in attrs])
    assert m["drift"] < 0.1 and m["count"] == 1.0, m
