"""Tiny components for the training tests: a differentiable toy reward model, a fixed text
encoder and a Trainer of tiny random Wan models (CPU, fp32, seconds per step)."""

from __future__ import annotations

import hashlib

import torch
import torch.nn as nn

from stream_r1_fast.rewards.base import RewardOutput, check_video, normalize
from stream_r1_fast.training.config import TrainConfig
from stream_r1_fast.training.trainer import Trainer
from tiny_wan import TEXT_DIM, tiny_transformer, tiny_vae


class TinyReward(nn.Module):
    """A 3-D conv over pixels, tanh, mean pool, linear -> raw [B, 3]; fixed normalisation."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv3d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 3, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.register_buffer("mean", torch.tensor([0.1, -0.2, 0.3]))
        self.register_buffer("std", torch.tensor([0.5, 1.5, 1.0]))
        self.requires_grad_(False)

    def rewards(self, video: torch.Tensor, prompts) -> RewardOutput:
        check_video(video, prompts)
        h = torch.tanh(self.conv(video.permute(0, 2, 1, 3, 4) * 2 - 1))
        raw = self.head((h * h).mean((2, 3, 4)))
        return RewardOutput(raw, normalize(raw, self.mean, self.std))


class FixedTextEncoder:
    """prompt -> a deterministic random [8, TEXT_DIM] embedding (stands in for UMT5)."""

    def __call__(self, prompts):
        out = []
        for p in prompts:
            seed = int(hashlib.sha256(p.encode()).hexdigest()[:8], 16)
            out.append(torch.randn(8, TEXT_DIM, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(out)


PROMPTS = ["a red circle moves left", "a blue square moves up", "a green circle moves fast",
           "a white square on black background"]


def tiny_config(mode: str = "dmd", output_dir: str = "runs/test", **sections) -> TrainConfig:
    data = {
        "reward": {"factory": "training_helpers:TinyReward"} if mode != "dmd" else {},
        "data": {"prompts": PROMPTS, "negative_prompt": "static blurry"},
        "rollout": {"num_chunks": 2, "chunk_frames": 1, "height": 16, "width": 16, "sink_frames": 1,
                    "window_frames": 1},
        "optim": {"lr_generator": 1e-4, "lr_critic": 1e-3, "generator_every": 1, "ema_start": 1},
        "weighting": {"mode": mode, "balance_warmup": 2, "balance_min_per_axis": 2},
        "train": {"steps": 3, "output_dir": output_dir, "save_every": 100, "gradient_checkpointing": False,
                  "mixed_precision": "none", "device": "cpu", "progress": False},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return TrainConfig.from_dict(data)


def _gentle(model, scale: float = 0.25):
    """Smaller weights (std 0.05) than tiny_wan's: a critic that can learn in a few steps."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.train()


def tiny_trainer(config: TrainConfig) -> Trainer:
    """Student and critic from the same tiny init, a different tiny teacher."""
    student, critic = _gentle(tiny_transformer(0)), _gentle(tiny_transformer(0))
    teacher = tiny_transformer(1)
    reward = TinyReward() if config.weighting.mode != "dmd" else None
    return Trainer(config, student=student, teacher=teacher, critic=critic, text_encoder=FixedTextEncoder(),
                   vae=tiny_vae(0), reward_model=reward, device="cpu")
