"""VideoReward (stream_r1_fast.rewards.preprocessing / .model / .video_reward): patch layout equal to the HF Qwen2-VL
video processor, gradients to the pixels, per-item scoring, input errors, checkpoint round
trip, and the trainer's stream_r1 weighting with a tiny random Qwen2-VL (CPU, fp32)."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
import torch

from reward_fixtures import tiny_video_reward

from stream_r1_fast.rewards import RewardModel
from stream_r1_fast.rewards import model as rm
from stream_r1_fast.rewards import preprocessing as pre
from stream_r1_fast.rewards import video_reward as vr
from stream_r1_fast.training.weighting import Weighting, WeightingConfig

SMALL = dict(min_pixels=28 * 28, max_pixels=112 * 112)  # budgets that keep the test frames tiny


@pytest.fixture(scope="module")
def model():
    return tiny_video_reward(seed=0, source_fps=None, **SMALL)


def _hf_processor(**kw):
    pytest.importorskip("torchvision", reason="the HF Qwen2-VL video processor needs torchvision (test extra)")
    from transformers import Qwen2VLVideoProcessor

    return Qwen2VLVideoProcessor(**kw)


def _hf_patches(videos: torch.Tensor, min_pixels: int, max_pixels: int):
    """HF reference on frames [B, T, 3, H, W] (float in [0, 255] or uint8)."""
    proc = _hf_processor(min_pixels=min_pixels, max_pixels=max_pixels)
    out = proc(videos=[v for v in videos], do_sample_frames=False, cap_pixels_per_frame=False, return_tensors="pt")
    return out["pixel_values_videos"], out["video_grid_thw"]


# ---- (a) patch layout == HF processor -------------------------------------------------------


@pytest.mark.parametrize("frames", [4, 5])  # 5: temporal padding with the last frame
def test_patch_layout_equals_hf_processor_without_resize(frames):
    video = torch.rand(2, frames, 3, 56, 84, generator=torch.Generator().manual_seed(frames))
    ours, grid = pre.preprocess_video(video, source_fps=None, uint8=False, clamp=False, **SMALL)
    ref, ref_grid = _hf_patches(video * 255, **SMALL)
    assert grid.tolist() == ref_grid.tolist() == [[math.ceil(frames / 2), 4, 6]] * 2
    assert ours.shape == ref.shape == (2 * math.ceil(frames / 2) * 24, 3 * 2 * 14 * 14)
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-6)


def test_patch_layout_with_resize_float_frames():
    """Float frames: the same bicubic antialiased interpolation as torchvision -> fp32 noise."""
    video = torch.rand(2, 4, 3, 50, 90, generator=torch.Generator().manual_seed(1))
    ours, grid = pre.preprocess_video(video, source_fps=None, uint8=False, clamp=False, **SMALL)
    ref, ref_grid = _hf_patches(video * 255, **SMALL)
    assert grid.tolist() == ref_grid.tolist()
    assert pre.smart_resize(50, 90, 28, **SMALL) == (56, 84)
    err = (ours - ref).abs().max().item()
    assert err < 1e-5, err


@pytest.mark.parametrize("size", [(50, 90), (100, 60), (240, 416)])
def test_patch_layout_with_resize_uint8_frames(size):
    """uint8 frames (decoded videos): HF/torchvision resize in uint8 (two passes, each rounded
    and clipped, fixed-point weights). Our uint8 emulation: <= 2/255 (before the CLIP std) on
    <= 1% of the values, the rest equal; the plain float path is off by up to ~20/255 on noise."""
    lim = dict(min_pixels=28 * 28, max_pixels=168 * 168)
    video8 = torch.randint(0, 256, (2, 4, 3, *size), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    ref, ref_grid = _hf_patches(video8, **lim)
    ours, grid = pre.preprocess_video(video8.float() / 255, source_fps=None, uint8=True, **lim)
    assert grid.tolist() == ref_grid.tolist()
    levels = ((ours - ref) * ref.new_tensor(pre.CLIP_STD).repeat_interleave(2 * 14 * 14) * 255).abs()
    assert levels.max().item() <= 2.01, levels.max().item()
    assert (levels > 0.01).float().mean().item() < 0.01
    floaty, _ = pre.preprocess_video(video8.float() / 255, source_fps=None, uint8=False, **lim)
    float_levels = ((floaty - ref) * ref.new_tensor(pre.CLIP_STD).repeat_interleave(2 * 14 * 14) * 255).abs()
    assert float_levels.max().item() > 5


def test_uint8_without_resize_is_exact():
    video8 = torch.randint(0, 256, (1, 4, 3, 56, 84), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    ref, _ = _hf_patches(video8, **SMALL)
    noisy = (video8.float() + torch.rand(video8.shape) * 0.8 - 0.4) / 255  # rounds back to video8
    ours, _ = pre.preprocess_video(noisy, source_fps=None, uint8=True, **SMALL)
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-6)


def test_smart_resize_matches_hf():
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize as hf_smart_resize

    for h in (28, 50, 100, 240, 480, 481, 720, 1080):
        for w in (28, 64, 128, 320, 832, 1280, 1920):
            for lo, hi in ((56 * 56, 28 * 28 * 1280), (128 * 28 * 28, 448 * 448), (28 * 28, 112 * 112)):
                assert pre.smart_resize(h, w, 28, lo, hi) == hf_smart_resize(h, w, 28, lo, hi), (h, w, lo, hi)
    assert pre.smart_resize(480, 832, 28, 128 * 28 * 28, 448 * 448) == (336, 588)


def test_frame_sampling_about_fps():
    idx = pre.sample_frame_indices(81, source_fps=16, fps=2)  # Wan: 81 frames at 16 fps -> ~10 frames
    assert idx.tolist()[0] == 0 and idx.tolist()[-1] == 80 and len(idx) == 10
    assert (idx.diff() > 0).all()
    assert len(pre.sample_frame_indices(5, 16, 2)) == 4  # min_frames, capped by the clip
    assert len(pre.sample_frame_indices(3, 16, 2)) == 2  # too short: floor to the temporal patch
    assert pre.sample_frame_indices(7, None).tolist() == list(range(7))
    assert pre.sample_frame_indices(81, 16, num_frames=6).tolist() == [0, 16, 32, 48, 64, 80]


# ---- (b) gradients reach the right pixels ----------------------------------------------------


@pytest.mark.parametrize("frames", [4, 5])
def test_unpatchify_round_trip_and_patch_semantics(frames):
    b, h, w = 2, 56, 84
    video = torch.randn(b, frames, 3, h, w)
    patches, grid = pre.patchify_video(video)
    back = pre.unpatchify_video(patches, grid)
    assert torch.equal(back[:, :frames], video)
    if frames % 2:
        assert torch.equal(back[:, frames], video[:, -1])  # padding repeats the last frame
    # Independent check of the order: encode (t, y, x) in the pixels, read it back per row.
    t_ = torch.arange(frames).view(1, -1, 1, 1).expand(frames, -1, h, w)[0]
    y_ = torch.arange(h).view(1, h, 1).expand(frames, h, w)
    x_ = torch.arange(w).view(1, 1, w).expand(frames, h, w)
    coords = torch.stack([t_, y_, x_], 1).float().unsqueeze(0)  # [1, T, 3, H, W]
    rows, (gt, gh, gw) = pre.patchify_video(coords)[0], grid[0].tolist()
    rows = rows.view(gt, gh // 2, gw // 2, 2, 2, 3, 2, 14, 14)
    for t in range(gt):
        for bh in range(gh // 2):
            for bw in range(gw // 2):
                for mh in range(2):
                    for mw in range(2):
                        p = rows[t, bh, bw, mh, mw]
                        assert p[0, 0].min() == min(2 * t, frames - 1) and p[0, 1].max() == min(2 * t + 1, frames - 1)
                        assert p[1, 0, :, 0].tolist() == list(range((2 * bh + mh) * 14, (2 * bh + mh + 1) * 14))
                        assert p[2, 0, 0].tolist() == list(range((2 * bw + mw) * 14, (2 * bw + mw + 1) * 14))


def test_gradient_of_one_patch_row_lands_on_its_raster_block():
    video = torch.rand(1, 4, 3, 56, 84, requires_grad=True)
    patches, grid = pre.preprocess_video(video, source_fps=None, **SMALL)
    gt, gh, gw = grid[0].tolist()
    # merge token (t=1, block row 1, block col 2), its patch (mh=0, mw=1)
    row = ((1 * (gh // 2) + 1) * (gw // 2) + 2) * 4 + 0 * 2 + 1
    (g,) = torch.autograd.grad(patches[row].sum(), video)
    mask = torch.zeros_like(video, dtype=torch.bool)
    mask[:, 2:4, :, 28:42, 70:84] = True
    assert (g[mask] != 0).all() and (g[~mask] == 0).all()


def test_reward_gradient_is_finite_nonzero_and_only_on_sampled_frames():
    m = tiny_video_reward(seed=0, source_fps=8, fps=2, min_frames=2, **SMALL)  # 9 frames at 8 fps -> 2
    video = torch.rand(2, 9, 3, 56, 56, requires_grad=True)
    out = m.rewards(video, ["a red circle", "a blue square"])
    (g,) = torch.autograd.grad(out.raw.sum(), video)
    sampled = pre.sample_frame_indices(9, 8, 2, min_frames=2).tolist()
    assert sampled == [0, 8] and torch.isfinite(g).all()
    per_frame = g.abs().sum((0, 2, 3, 4))
    assert all(per_frame[i] > 0 for i in sampled)
    assert all(per_frame[i] == 0 for i in range(9) if i not in sampled)


def test_perturbing_a_region_changes_the_rewards_and_gradients_there(model):
    video = torch.rand(1, 4, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    bumped = video.clone()
    bumped[:, :, :, :28, :28] = 1 - bumped[:, :, :, :28, :28]

    def grad(v):
        v = v.clone().requires_grad_(True)
        out = model.rewards(v, ["a red circle"])
        return out.raw, torch.autograd.grad(out.raw.sum(), v)[0]

    r0, g0 = grad(video)
    r1, g1 = grad(bumped)
    assert not torch.allclose(r0, r1)
    assert (g1 - g0)[:, :, :, :28, :28].abs().sum() > 0


# ---- (c) every batch item scored, independently ----------------------------------------------


def test_each_item_scored_from_its_own_video(model):
    g = torch.Generator().manual_seed(4)
    videos = torch.rand(3, 4, 3, 56, 84, generator=g)
    prompts = ["a red circle moves left", "a blue square", "a green circle moves fast on black background"]
    batch = model.rewards(videos, prompts)
    alone = torch.cat([model.rewards(videos[i:i + 1], prompts[i:i + 1]).raw for i in range(3)])
    assert batch.raw.shape == batch.normalized.shape == (3, 3)
    torch.testing.assert_close(batch.raw, alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batch.raw[0], batch.raw[1])
    torch.testing.assert_close(batch.normalized, (batch.raw - model.mean) / model.std)
    # d raw[b] / d video[b'] == 0 for b' != b
    pixels = videos.clone().requires_grad_(True)
    out = model.rewards(pixels, prompts)
    (g,) = torch.autograd.grad(out.raw[1].sum(), pixels)
    assert g[1].abs().sum() > 0 and g[0].abs().sum() == 0 and g[2].abs().sum() == 0


def test_same_video_different_prompt_changes_ta_input(model):
    video = torch.rand(1, 4, 3, 56, 56).expand(2, -1, -1, -1, -1)
    out = model.rewards(video, ["a red circle", "a blue square moves up"])
    assert not torch.allclose(out.raw[0], out.raw[1])


# ---- (d) input errors ------------------------------------------------------------------------


def test_input_errors(model):
    video = torch.rand(2, 4, 3, 56, 56)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.rewards(video * 2 - 1, ["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        model.rewards(video * 255, ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        model.rewards(video[:, :, :2], ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        model.rewards(video[0], ["a", "b"])
    with pytest.raises(ValueError, match="prompts"):
        model.rewards(video, ["a"])
    with pytest.raises(ValueError, match="prompts"):
        model.rewards(video, "ab")
    with pytest.raises(TypeError):
        model.rewards((video * 255).to(torch.uint8), ["a", "b"])
    with pytest.raises(ValueError, match="reserved"):
        model.rewards(video, ["a <|TA_reward|>", "b"])


def test_config_errors():
    with pytest.raises(ValueError, match="mean"):
        rm.VideoRewardConfig()
    with pytest.raises(ValueError, match="exactly once"):
        rm.VideoRewardConfig(mean=(0, 0, 0), std=(1, 1, 1), prompt_template="{caption} <|VQ_reward|>")
    with pytest.raises(ValueError, match="std"):
        rm.VideoRewardConfig(mean=(0, 0, 0), std=(1, 0, 1))
    cfg = rm.VideoRewardConfig.from_dict({"inference_config": {"VQ_mean": 1, "VQ_std": 2, "MQ_mean": 3, "MQ_std": 4,
                                                               "TA_mean": 5, "TA_std": 6},
                                          "data_config": {"fps": 2, "max_frame_pixels": 200704, "num_frames": None}})
    assert cfg.mean == (1, 3, 5) and cfg.std == (2, 4, 6) and cfg.max_pixels == 200704


# ---- (e) checkpoint round trip ---------------------------------------------------------------


def test_from_pretrained_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = rm.VideoRewardModel.from_pretrained(tmp_path)
    assert isinstance(loaded, RewardModel)
    video = torch.rand(2, 4, 3, 56, 84)
    prompts = ["a red circle", "a blue square moves up"]
    a, b = model.rewards(video, prompts), loaded.rewards(video, prompts)
    torch.testing.assert_close(a.raw, b.raw)
    torch.testing.assert_close(a.normalized, b.normalized)
    assert loaded.config == model.config
    # config overrides (the trainer's reward.kwargs) and bf16
    half = rm.VideoRewardModel.from_pretrained(tmp_path, dtype="bf16", fps=4.0)
    assert half.config.fps == 4.0 and half.dtype == torch.bfloat16
    assert torch.isfinite(half.rewards(video, prompts).raw).all()


def test_from_pretrained_reads_a_conditional_generation_checkpoint(model, tmp_path):
    from transformers import Qwen2VLForConditionalGeneration

    full = Qwen2VLForConditionalGeneration(model.model.config)
    full.model.load_state_dict(model.model.state_dict())
    full.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path / "ours")
    for name in ("reward_head.safetensors", "reward_config.json"):
        (tmp_path / name).write_bytes((tmp_path / "ours" / name).read_bytes())
    model.tokenizer.save_pretrained(tmp_path)
    loaded = rm.VideoRewardModel.from_pretrained(tmp_path)
    video = torch.rand(1, 4, 3, 56, 56)
    torch.testing.assert_close(loaded.rewards(video, ["a"]).raw, model.rewards(video, ["a"]).raw)


def test_from_pretrained_errors(model, tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="does not exist"):
        rm.VideoRewardModel.from_pretrained(tmp_path / "nope")
    model.save_pretrained(tmp_path)
    (tmp_path / "reward_head.safetensors").rename(tmp_path / "head.bak")
    with pytest.raises(FileNotFoundError, match="reward_head.safetensors"):
        rm.VideoRewardModel.from_pretrained(tmp_path)
    save_file({"bias": torch.zeros(3)}, str(tmp_path / "reward_head.safetensors"))
    with pytest.raises(KeyError, match="weight"):
        rm.VideoRewardModel.from_pretrained(tmp_path)
    save_file({"rm_head.weight": torch.zeros(3, 16)}, str(tmp_path / "reward_head.safetensors"))
    with pytest.raises(ValueError, match="shape"):
        rm.VideoRewardModel.from_pretrained(tmp_path)
    (tmp_path / "head.bak").replace(tmp_path / "reward_head.safetensors")
    cfg = json.loads((tmp_path / "reward_config.json").read_text())
    del cfg["mean"]
    (tmp_path / "reward_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="mean"):
        rm.VideoRewardModel.from_pretrained(tmp_path)


# ---- (f) the trainer's weighting -------------------------------------------------------------


def test_stream_r1_weighting_with_video_reward(model):
    b, t, h, w = 2, 5, 56, 56
    wt = Weighting(WeightingConfig(mode="stream_r1", balance_warmup=2, balance_min_per_axis=2), model, (4, 8))
    latent = (b, 16, 1 + (t - 1) // 4, h // 8, w // 8)
    for seed in range(3):
        video = torch.rand(b, t, 3, h, w, generator=torch.Generator().manual_seed(seed))
        weights, logs = wt(video, ["a red circle moves left", "a blue square"], latent)
    assert weights.shape == (b, 1, *latent[2:]) and torch.isfinite(weights).all() and (weights > 0).all()
    assert torch.isfinite(logs["w_inter"]).all() and logs["balance_penalty"] >= 0
    assert all(p.grad is None for p in model.parameters())


def test_training_config_factory_resolves():
    from stream_r1_fast.training.config import TrainConfig

    cfg = TrainConfig.from_yaml(Path(__file__).parents[1] / "configs" / "wan2.1_1.3b_stream_r1.yaml")
    module, _, attr = cfg.reward.factory.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    assert obj is vr.load_video_reward and "path" in cfg.reward.kwargs
