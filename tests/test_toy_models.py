"""The shipped toy weights: they load, fit the size budget, and the reward model ranks as trained."""

import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from stream_r1_fast.rewards import RewardModel
from stream_r1_fast.toy.codec import WEIGHTS
from stream_r1_fast.toy.corruptions import corrupt_motion, corrupt_visual, mismatch_caption
from stream_r1_fast.toy.models import TEACHER_CONFIG, load_teacher, load_transformer_file
from stream_r1_fast.toy.reward import ToyRewardModel
from stream_r1_fast.toy.text import ToyTextEncoder
from stream_r1_fast.toy.world import ToyWorld

FRESH_SEED = 777_777  # never used by the training scripts


@pytest.fixture(scope="module")
def reward():
    return ToyRewardModel.pretrained()


@pytest.fixture(scope="module")
def fresh():
    world = ToyWorld()
    _, attrs = world.batch(12, seed=FRESH_SEED)
    return world, attrs


STUDENTS = ("ode", "dmd", "re_dmd", "stream_r1")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shipped_weights_fit_the_budget():
    files = sorted(WEIGHTS.glob("*.safetensors"))
    shipped = {"codec.safetensors", "teacher.safetensors", "reward.safetensors"}
    shipped |= {f"student_{name}.safetensors" for name in STUDENTS}
    assert shipped <= {f.name for f in files}
    assert sum(f.stat().st_size for f in files) <= 25 * 2**20


def test_all_shipped_weights_fit_the_package_budget():
    """v1 and, while it is being trained, v2 (weights/v2/) together stay within 30 MiB."""
    files = sorted(WEIGHTS.rglob("*.safetensors"))
    assert sum(f.stat().st_size for f in files) <= 30 * 2**20, [(f.name, f.stat().st_size) for f in files]


def test_the_shipped_v2_teacher_loads_with_its_codec_and_world():
    from stream_r1_fast.toy.kits import toy_kit

    kit = toy_kit("v2")
    if not (kit.weights / "teacher.safetensors").is_file():
        pytest.skip("no v2 teacher shipped")
    teacher, codec = load_transformer_file(kit.weights / "teacher.safetensors"), kit.codec()
    assert teacher.config.in_channels == codec.latent_channels and teacher.config.text_dim == 32
    world = kit.world(num_frames=9)
    video, attrs = world.batch(1, seed=0)
    x0 = codec.encode(video.permute(0, 2, 1, 3, 4) * 2 - 1)
    v = teacher(x0, 500.0, kit.text_encoder()([attrs[0].caption])).sample
    assert v.shape == x0.shape and bool(torch.isfinite(v).all())


def test_teacher_loads_and_predicts():
    model = load_teacher()
    assert model.config.num_layers == TEACHER_CONFIG["num_layers"]
    assert model.config.attention_head_dim in (64, 128)
    x = torch.randn(1, 16, 3, 16, 16)
    v = model(x, 500.0, ToyTextEncoder()(["a small red circle moving left fast on a black background"])).sample
    assert v.shape == x.shape and torch.isfinite(v).all()


def _metadata(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


@pytest.mark.parametrize("name", STUDENTS)
def test_shipped_students_load_and_stream(name):
    """Each shipped student has the teacher's architecture, says how it was made, and streams."""
    from stream_r1_fast.inference import StreamingPipeline
    from stream_r1_fast.toy.codec import ToyCodec
    from stream_r1_fast.training.config import TrainConfig

    path = WEIGHTS / f"student_{name}.safetensors"
    student, teacher = load_transformer_file(path), load_teacher()
    assert dict(student.config) == dict(teacher.config)
    meta = _metadata(path)
    if name == "ode":
        assert meta["kind"].startswith("causal student, ODE-regression") and meta["seed"] == "0"
    else:
        recipe = TrainConfig.from_yaml(CONFIGS / f"toy_{name}.yaml")
        assert meta["method"] == name and meta["init"] == "student_ode.safetensors" and meta["seed"] == "0"
        assert int(meta["steps"]) == recipe.train.steps
    pipe = StreamingPipeline(student, ToyCodec.pretrained(), ToyTextEncoder())
    frames = pipe.generate(["a small red circle moving left fast on a black background"], 9, height=32, width=32,
                           seed=[0])
    assert frames.shape == (1, 9, 32, 32, 3) and frames.dtype == torch.uint8
    assert int(frames.max()) > int(frames.min()), "a blank video"


def test_shipped_students_are_trained():
    """ODE regression moved the student off the teacher, and every distillation moved it off the
    ODE initialisation (by more than weight decay: relative change of the whole weight vector)."""
    def flat(path):
        return torch.cat([p.flatten() for p in load_transformer_file(path).state_dict().values()])

    teacher, ode = flat(WEIGHTS / "teacher.safetensors"), flat(WEIGHTS / "student_ode.safetensors")
    assert float((ode - teacher).norm() / teacher.norm()) > 1e-2
    for name in STUDENTS[1:]:
        student = flat(WEIGHTS / f"student_{name}.safetensors")
        assert float((student - ode).norm() / ode.norm()) > 1e-3, name


def test_reward_interface_and_pixel_gradient(reward, fresh):
    world, attrs = fresh
    assert isinstance(reward, RewardModel)
    video = world.render(attrs[0])[None].requires_grad_(True)
    out = reward.rewards(video, [attrs[0].caption])
    assert out.raw.shape == out.normalized.shape == (1, 3)
    for k in range(3):
        (g,) = torch.autograd.grad(out.raw[0, k], video, retain_graph=True)
        assert float(g.abs().sum()) > 0


def _axis(reward, videos, captions, k):
    with torch.no_grad():
        return reward.rewards(torch.stack(videos), captions).normalized[:, k]


def test_reward_ranks_clean_above_corrupted(reward, fresh):
    world, attrs = fresh
    rng = random.Random(1)
    clean = [world.render(a) for a in attrs]
    bad = [corrupt_visual(v, kind, rng) for v, kind in zip(clean, ["noise", "blur", "color_shift", "blocky"] * 3)]
    caps = [a.caption for a in attrs]
    c, b = _axis(reward, clean, caps, 0), _axis(reward, bad, caps, 0)
    assert float((c > b).float().mean()) >= 0.75, (c, b)
    assert float(c.mean()) > float(b.mean()) + 0.5


def test_reward_ranks_smooth_above_jittery(reward, fresh):
    world, attrs = fresh
    rng = random.Random(2)
    smooth = [world.render(a) for a in attrs]
    bad = [corrupt_motion(world, a, kind, rng) for a, kind in zip(attrs, ["jitter", "frozen", "teleport"] * 4)]
    caps = [a.caption for a in attrs]
    s, b = _axis(reward, smooth, caps, 1), _axis(reward, bad, caps, 1)
    assert float((s > b).float().mean()) >= 0.75, (s, b)
    assert float(s.mean()) > float(b.mean()) + 0.5


def test_reward_ranks_matched_above_mismatched_captions(reward, fresh):
    world, attrs = fresh
    rng = random.Random(3)
    videos = [world.render(a) for a in attrs]
    good = _axis(reward, videos, [a.caption for a in attrs], 2)
    wrong = [mismatch_caption(a, attrs[(i + 5) % len(attrs)], rng) for i, a in enumerate(attrs)]
    bad = _axis(reward, videos, wrong, 2)
    assert float(good.mean()) > float(bad.mean()), (good, bad)
