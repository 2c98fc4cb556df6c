"""The v2 toy world: ground truth (wrap and bounce), captions, the object-token encoder, the
wrap-aware oracle on true, round-tripped and corrupted clips, and a motion-pilot smoke run."""

import dataclasses
import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_r1_fast.toy.codec import ToyCodec
from stream_r1_fast.toy.models import load_transformer_file
from stream_r1_fast.toy.oracle2 import METRICS, centroid, score_clip_v2, score_videos_v2
from stream_r1_fast.toy.text2 import GROUPS, MAX_TOKENS, TEXT_DIM, ObjectTokenEncoder
from stream_r1_fast.toy.world import area_fraction
from stream_r1_fast.toy.world2 import (
    COLORS, SHAPES, VOCABULARY, ObjectSpecV2, ToyWorldV2, caption_of, parse_caption, wrap_delta,
)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "toy"
SIZE = torch.tensor([32.0, 32.0])


def _oracle_ok(m, floor=0.95):
    for k in ("count", "color", "shape", "direction"):
        assert m[k] >= floor, (k, m)
    assert m["ghost_rate"] <= 0.02 and m["stuck_rate"] <= 0.02, m


# ---------------------------------------------------------------------- world


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 12), wrap=st.booleans(), max_objects=st.integers(1, 3),
       speeds=st.sampled_from([(1.0, 2.0), (0.5, 1.0), (1.0, 3.0)]))
def test_world_ground_truth(seed, k, wrap, max_objects, speeds):
    world = ToyWorldV2(num_frames=1 + 4 * k, max_objects=max_objects, wrap=wrap, speeds=speeds)
    video, attrs = world.batch(1, seed=seed)
    again, _ = world.batch(1, seed=seed)
    assert video.shape == (1, 1 + 4 * k, 3, 32, 32) and torch.equal(video, again)
    assert 0.0 <= float(video.min()) and float(video.max()) <= 1.0
    (at,) = attrs
    n, r = len(at.objects), world.radius
    assert 1 <= n <= max_objects and len({o.color for o in at.objects}) == n
    assert at.positions.shape == at.velocities.shape == (1 + 4 * k, n, 2)
    assert parse_caption(at.caption) == (at.objects, at.background)
    nominal = torch.tensor([world.speed_px(o.speed) for o in at.objects])
    p, v = at.positions, at.velocities
    # The recorded velocity is the (wrap-aware) step to the next frame.
    step = p[1:] - p[:-1]
    if wrap:
        step = wrap_delta(step, SIZE)
    torch.testing.assert_close(step, v[:-1], atol=1e-4, rtol=0)
    if wrap:
        assert float(p.min()) >= 0.0 and float(p.max()) < 32.0
        assert torch.equal(v, v[:1].expand_as(v))  # constant velocity
        torch.testing.assert_close(v.norm(dim=-1), nominal.expand(v.shape[:2]))
        # Always whole: the coverage area never changes, even straddling an edge.
        for i, o in enumerate(at.objects):
            area = world.object_cover(o.shape, p[:, i]).sum((1, 2))
            inside = world.object_cover(o.shape, 16.0 + torch.remainder(p[:, i], 1.0), wrap=False).sum((1, 2))
            torch.testing.assert_close(area, inside, atol=0.1, rtol=0)
            assert bool(((area / (area_fraction(o.shape) * (2 * r) ** 2) - 1).abs() < 0.05).all())  # raster vs exact
    else:
        assert float(p.min()) >= r - 1e-4 and float(p.max()) <= 32 - r + 1e-4
        speed = v.norm(dim=-1)
        assert bool((speed <= nominal + 1e-4).all())  # shorter only on a bounce


def test_wrap_draws_both_sides_and_bounce_reflects():
    spec = ObjectSpecV2(shape="square", color="red", direction="left", speed="fast")
    wrapped = ToyWorldV2(num_frames=9)
    at = wrapped.rollout([spec], "black", start=torch.tensor([[3.0, 16.0]]))
    video = wrapped.render(at)
    assert at.positions[1, 0, 0] == 1.0 and at.positions[2, 0, 0] == 31.0  # re-enters at the right
    red = video[:, 0] > 0.5
    assert bool(red[2, 16, 0]) and bool(red[2, 16, 31])  # drawn on both sides of the edge
    assert abs(centroid(video[2, 0] - 0.05, wrap=True)[0] - 31.0) < 0.1
    bounced = dataclasses.replace(wrapped, wrap=False)
    at = bounced.rollout([spec], "black", start=torch.tensor([[8.0, 16.0]]))
    assert float(at.positions[:, 0, 0].min()) >= bounced.radius and at.velocities[-1, 0, 0] > 0


def test_batch_of_one_and_odd_frame_counts():
    for t in (1, 5, 13, 65):
        video, attrs = ToyWorldV2(num_frames=t, max_objects=3).batch(1, seed=t)
        assert video.shape == (1, t, 3, 32, 32) and attrs[0].positions.shape[0] == t
    world = ToyWorldV2(min_objects=1, max_objects=1)
    assert all(len(a.objects) == 1 for a in world.batch(8, seed=0)[1])
    assert {len(a.objects) for a in ToyWorldV2().batch(16, seed=0)[1]} == {1, 2}
    assert ToyWorldV2(width=64, height=64).radius == 12.0


def test_world_config_errors():
    for bad in (dict(num_frames=6), dict(height=20), dict(max_objects=4), dict(min_objects=2, max_objects=1),
                dict(half_extent=9.0), dict(speeds=(1.0,)), dict(speeds=(0.0, 1.0))):
        with pytest.raises(ValueError):
            ToyWorldV2(**bad)


def test_caption_grammar_and_parser_errors():
    cap = "a red diamond moving left fast and a blue square moving up slow on a black background"
    objects, bg = parse_caption(cap)
    assert caption_of(objects, bg) == cap and bg == "black" and objects[1].shape == "square"
    assert set(VOCABULARY) >= set(cap.split()) and "circle" not in VOCABULARY and "small" not in VOCABULARY
    for bad, match in (
        ("a red circle moving left fast on a black background", "circle"),
        ("a red diamond moving left fast on a black", "ends with"),
        ("a red diamond left fast on a black background", "not 'a <colour>"),
        ("a diamond red moving left fast on a black background", "not a color"),
        ("a red diamond moving left fast on a square background", "unknown background"),
        ("a red diamond moving left fast and a red square moving up slow on a black background", "distinct"),
        (" and ".join(["a red diamond moving left fast", "a blue diamond moving left fast", "a green diamond moving left fast",
                       "a yellow diamond moving left fast"]) + " on a black background", "one to three"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_caption(bad)


# ---------------------------------------------------------------------- text encoder


def test_object_token_encoder():
    enc = ObjectTokenEncoder()
    assert (enc.max_length, enc.text_dim) == (MAX_TOKENS, TEXT_DIM)
    cap = "a red diamond moving left fast and a blue square moving up slow on a gray background"
    e = enc([cap, ""])
    assert e.shape == (2, MAX_TOKENS, TEXT_DIM) and e.dtype == torch.float32
    assert torch.equal(e[1], torch.zeros(MAX_TOKENS, TEXT_DIM)) and torch.equal(enc(cap)[0], e[0])
    tok = e[0]
    assert tok[0, 1] == 1 and tok[1, 0] == 1 and tok[2, 0] == 1 and not tok[3].any()  # bg, 2 objects, padding
    assert tok[0].sum() == 2 and tok[1].sum() == tok[2].sum() == 5  # flag + 4 attribute one-hots

    def hot(token, group):
        start, values = GROUPS[group]
        return values[int(token[start:start + len(values)].argmax())]

    assert [hot(tok[1], g) for g in ("color", "shape", "direction", "speed")] == ["red", "diamond", "left", "fast"]
    assert [hot(tok[2], g) for g in ("color", "shape", "direction", "speed")] == ["blue", "square", "up", "slow"]
    assert hot(tok[0], "background") == "gray"
    # Swapping one word changes exactly that object's group.
    other = enc(cap.replace("left", "right"))[0]
    assert (other != tok).nonzero()[:, 0].unique().tolist() == [1]
    for bad in ("a red diamond moving sideways fast on a black background", "a red diamond on a black background"):
        with pytest.raises(ValueError):
            enc.check_prompt(bad)
    with pytest.raises(ValueError, match="vocabulary"):
        enc(["a crimson circle moving left fast on a black background"])
    with pytest.raises(TypeError):
        enc([])
    enc.check_prompt("")


# ---------------------------------------------------------------------- oracle


@pytest.mark.parametrize("wrap", [True, False])
def test_oracle_on_ground_truth_and_codec_round_trip(wrap):
    world = ToyWorldV2(wrap=wrap)
    video, attrs = world.batch(12, seed=3)
    captions = [a.caption for a in attrs]
    m = score_videos_v2(video, captions, wrap=wrap)
    assert set(m) == set(METRICS)
    _oracle_ok(m)
    assert m["speed"] >= 0.95 and m["frame_copy_rate"] <= 0.01 and m["background_error"] < 0.01
    # A small codec (the toy codec class) fitted on a few v2 clips keeps all of it.
    fit, _ = world.batch(12, seed=100)
    codec = ToyCodec.fit(fit.permute(0, 2, 1, 3, 4) * 2 - 1)
    recon = codec.round_trip(video)
    _oracle_ok(score_videos_v2(recon, captions, wrap=wrap))


def test_oracle_wrap_aware_tracking():
    world = ToyWorldV2(num_frames=33)
    spec = ObjectSpecV2(shape="triangle", color="green", direction="right", speed="fast")
    at = world.rollout([spec], "brown", start=torch.tensor([[20.0, 10.0]]))  # crosses the right edge at frame ~6
    video = world.render(at)
    m = score_clip_v2(video, at.caption, wrap=True)
    track = m["tracks"][0]
    assert (track["shape"], track["direction"], track["speed"]) == ("triangle", "right", "fast")
    torch.testing.assert_close(track["steps"], at.velocities[:-1, 0], atol=0.05, rtol=0)  # no teleport at the edge
    torch.testing.assert_close(track["centres"][:, 0], at.positions[:, 0, 0], atol=0.05, rtol=0)
    assert m["smoothness"] == 1.0 and m["stuck_rate"] == 0.0 and m["dynamic_degree"] == 1.0
    # Read as a bouncing world, the edge crossing is a teleport.
    naive = score_clip_v2(video, at.caption, wrap=False)
    assert float(naive["tracks"][0]["steps"][:, 0].min()) < -5.0 and naive["direction"] == 0.0  # jumps back


def _two_object_clip(wrap=True):
    world = ToyWorldV2(wrap=wrap)
    objs = [ObjectSpecV2("diamond", "red", "left", "fast"), ObjectSpecV2("square", "blue", "down", "slow")]
    return world, world.rollout(objs, "black", start=torch.tensor([[10.0, 10.0], [24.0, 20.0]]))


def test_oracle_metrics_drop_on_corrupted_clips():
    world, at = _two_object_clip()
    video, cap = world.render(at), at.caption
    good = score_clip_v2(video, cap, wrap=True)
    assert good["count"] == good["color"] == good["shape"] == good["direction"] == 1.0
    assert good["ghost_rate"] == 0.0 and good["stuck_rate"] == 0.0

    # Frame 0 repeated for the whole clip: nothing moves, the objects stay at their frame-0 footprint.
    still = score_clip_v2(video[:1].expand_as(video), cap, wrap=True)
    assert still["stuck_rate"] == 1.0 and still["ghost_rate"] == 1.0 and still["direction"] == 0.0
    assert still["dynamic_degree"] == 0.0 and still["frame_copy_rate"] == 1.0
    # Frozen from mid-clip on.
    frozen = video.clone()
    frozen[16:] = video[16]
    m = score_clip_v2(frozen, cap, wrap=True)
    assert 0.4 < m["stuck_rate"] < 0.6 and 0.4 < m["frame_copy_rate"] < 0.6 and m["smoothness"] < good["smoothness"]
    # A ghost: the moving clip, with the frame-0 objects left painted where they started.
    ghost = video.clone()
    footprint = (video[0] - video[0, :, :1, :1]).abs().amax(0) > 0.3
    ghost[:, :, footprint] = video[0][:, footprint]
    m = score_clip_v2(ghost, cap, wrap=True)
    assert m["ghost_rate"] > 0.9
    # Wrong colour: the red diamond drawn magenta.
    wrong = world.render(dataclasses.replace(at, objects=[dataclasses.replace(at.objects[0], color="magenta"), at.objects[1]]))
    m = score_clip_v2(wrong, cap, wrap=True)
    assert m["color"] == 0.5 and m["count"] == 0.0
    # An object removed.
    gone = world.render(dataclasses.replace(at, objects=at.objects[1:], positions=at.positions[:, 1:], velocities=at.velocities[:, 1:]))
    m = score_clip_v2(gone, cap, wrap=True)
    assert m["color"] == 0.5 and m["count"] == 0.0 and m["shape"] == 0.5
    # The wrong direction (same objects, the diamond moving right).
    flipped = world.render(world.rollout([dataclasses.replace(at.objects[0], direction="right"), at.objects[1]], "black",
                                         start=at.positions[0]))
    assert score_clip_v2(flipped, cap, wrap=True)["direction"] == 0.5


def test_oracle_input_errors():
    with pytest.raises(ValueError, match="T, 3, H, W"):
        score_clip_v2(torch.zeros(5, 32, 32), "a red diamond moving left fast on a black background", wrap=True)
    with pytest.raises(ValueError):
        score_clip_v2(torch.zeros(5, 3, 32, 32), "a red circle moving left fast on a black background", wrap=True)
    with pytest.raises(ValueError, match="captions for"):
        score_videos_v2(torch.zeros(2, 5, 3, 32, 32), ["x"], wrap=True)


# ---------------------------------------------------------------------- pilot


def _pilot():
    spec = importlib.util.spec_from_file_location("toy_motion_pilot", SCRIPTS / "motion_pilot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_motion_pilot_smoke_and_resume(tmp_path, capsys):
    pilot = _pilot()
    common = ["--steps", "3", "--batch", "2", "--frames", "9", "--codec-clips", "4", "--clips", "2",
              "--sample-steps", "2", "--swap-clips", "2", "--ckpt-every", "1", "--speeds", "1", "2", "--patch", "2",
              "--objects", "1", "--seed", "0", "--image-ratio", "1", "--frame-noise", "0.5"]
    res = pilot.main(common + ["--out", str(tmp_path / "a")])
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["run"]["steps"] == 3 and saved["tokens_per_latent_frame"] == 16
    for k in ("direction", "shape", "color", "ghost_rate", "stuck_rate"):
        assert 0.0 <= saved["teacher"][k] <= 1.0
    assert set(saved["word_swap"]) >= {"color", "shape", "direction", "speed", "background", "routed"}
    assert res["word_swap"]["routed"] == saved["word_swap"]["routed"]
    assert "word swap" in capsys.readouterr().out
    assert (tmp_path / "a" / "samples.png").stat().st_size > 0
    # Interrupted after 2 steps and resumed: the same weights as the uninterrupted run.
    assert pilot.main(common + ["--out", str(tmp_path / "b"), "--stop-after", "2"]) is None
    assert not (tmp_path / "b" / "results.json").exists()
    # The checkpoint evaluated where it is: step-stamped results, no teacher file, no training.
    mid = pilot.main(common + ["--out", str(tmp_path / "b"), "--evaluate-checkpoint"])
    assert mid["step"] == 2 and (tmp_path / "b" / "results_step2.json").exists()
    assert (tmp_path / "b" / "samples_step2.png").exists() and not (tmp_path / "b" / "teacher.safetensors").exists()
    assert torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)["step"] == 2
    pilot.main(common + ["--out", str(tmp_path / "b"), "--resume"])
    a = load_transformer_file(tmp_path / "a" / "teacher.safetensors").state_dict()
    b = load_transformer_file(tmp_path / "b" / "teacher.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit):
        pilot.main([*common[:1], "4", *common[2:], "--out", str(tmp_path / "b"), "--resume"])  # another run
    # A checkpoint from before an option existed resumes with that option at its default.
    ckpt = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    ckpt["run"]["frame_noise"] = 0.0
    del ckpt["run"]["blocks"]
    torch.save(ckpt, tmp_path / "b" / "ckpt.pt")
    with pytest.raises(SystemExit):  # frame_noise 0.5 now, 0 then
        pilot.main(common + ["--out", str(tmp_path / "b"), "--resume"])
    assert pilot.main([*common[:-1], "0", "--out", str(tmp_path / "b"), "--resume"]) is not None


def test_motion_pilot_continues_from_an_earlier_stage(tmp_path):
    pilot = _pilot()
    common = ["--steps", "1", "--batch", "2", "--frames", "9", "--codec-clips", "4", "--clips", "1",
              "--sample-steps", "1", "--swap-clips", "1", "--patch", "2", "--seed", "0", "--blocks", "2"]
    pilot.main(common + ["--objects", "1", "--out", str(tmp_path / "s1"), "--ship", str(tmp_path / "ship")])
    shipped = load_transformer_file(tmp_path / "ship" / "teacher.safetensors")  # float16 on disk, float32 loaded
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ship" / "teacher.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
        assert json.loads(f.metadata()["run"])["objects"] == 1
    ema = load_transformer_file(tmp_path / "s1" / "teacher.safetensors").state_dict()
    for k, v in shipped.state_dict().items():
        assert v.dtype == torch.float32 and torch.allclose(v, ema[k], rtol=1e-3, atol=1e-4)
    assert (tmp_path / "ship" / "codec.safetensors").exists() and (tmp_path / "ship" / "teacher_results.json").exists()
    first = tmp_path / "s1" / "teacher.safetensors"
    pilot.main(common + ["--objects", "2", "--init", str(first), "--steps", "2", "--out", str(tmp_path / "s2")])
    a, b = ToyCodec.from_file(tmp_path / "s1" / "codec.safetensors"), ToyCodec.from_file(tmp_path / "s2" / "codec.safetensors")
    assert torch.equal(a.basis, b.basis)  # the stage keeps the latents its weights were trained on
    w1, w2 = (load_transformer_file(tmp_path / d / "teacher.safetensors").state_dict() for d in ("s1", "s2"))
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    with pytest.raises(SystemExit, match="another model"):
        pilot.main(common[:-1] + ["3", "--init", str(first), "--out", str(tmp_path / "s3")])


def test_swapped_captions_change_one_word():
    from stream_r1_fast.toy.world2 import swap_alternatives, swapped_caption

    _, at = _two_object_clip()
    for group in _pilot().SWAP_GROUPS:
        for index in range(1 if group == "background" else len(at.objects)):
            for value in swap_alternatives(at, group, index):
                swapped = swapped_caption(at, group, index, value)
                parse_caption(swapped)
                diff = [(a, b) for a, b in zip(at.caption.split(), swapped.split()) if a != b]
                assert len(diff) == 1 and diff[0][1] == value, (group, diff)
    assert "yellow diamond" in swapped_caption(at, "color")  # the next colour not taken (blue is)
    assert not {o.color for o in at.objects} & set(swap_alternatives(at, "color", 1))
    with pytest.raises(ValueError, match="not a swap"):
        swapped_caption(at, "shape", 0, at.objects[0].shape)
    with pytest.raises(ValueError, match="group must be"):
        swap_alternatives(at, "size")
    assert set(SHAPES) == {"square", "triangle", "diamond"} and len(COLORS) == 5


class _Recorder(torch.nn.Module):
    """Stands in for the teacher: records (x_t, t) and predicts zero velocity."""

    def forward(self, x, t, text):
        self.x, self.t = x, t
        return types.SimpleNamespace(sample=torch.zeros_like(x))


def test_frame_noise_loss_draws_one_level_per_latent_frame():
    from stream_r1_fast.toy.fit import flow_matching_loss

    x0 = torch.randn(64, 2, 5, 3, 3)
    m = _Recorder()
    base = flow_matching_loss(m, x0, None, torch.Generator().manual_seed(0), shift=3.0)
    t_clip = m.t
    # frame_noise 0 is the clip-level loss: the same draws, the same value.
    same = flow_matching_loss(m, x0, None, torch.Generator().manual_seed(0), shift=3.0, frame_noise=0.0)
    assert torch.equal(base, same) and torch.equal(m.t, t_clip) and t_clip.shape == (64,)
    flow_matching_loss(m, x0, None, torch.Generator().manual_seed(0), shift=3.0, frame_noise=0.5)
    t = m.t
    assert t.shape == (64, 5) and bool(((t >= 0) & (t <= 1000)).all())
    independent = (t != t[:, :1]).any(1)
    assert 16 < int(independent.sum()) < 48  # about half the clips, independent levels per frame
    # The clips that keep one level keep the clip-level draw.
    assert torch.allclose(t[~independent, 0], t_clip[~independent])
    # x_t is built per frame with that frame's level: x0 recovered exactly where eps is known.
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    s = (t / 1000).view(64, 1, 5, 1, 1)
    assert torch.allclose(m.x, (1 - s) * x0 + s * eps, atol=1e-6)
