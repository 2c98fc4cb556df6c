"""Assembling a :class:`~stream_r1_fast.training.trainer.Trainer` from a config.

``model.factory`` (a ``module:callable`` spec, :mod:`~stream_r1_fast.training.factories`) is
called with the config and returns a :class:`TrainingModels`: the student to train, the frozen
teacher, the critic, the text encoder, the codec that decodes rollouts and the device they live
on. The default is the diffusers Wan builder
(:func:`stream_r1_fast.training.wan_models.build_wan_models`); a recipe may name any other
builder. ``reward.factory`` builds the reward model (:func:`build_reward`), the same for
every model builder.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from stream_r1_fast.training.factories import resolve_factory
from stream_r1_fast.training.preflight import preflight
from stream_r1_fast.training.trainer import Trainer

DEFAULT_MODEL_FACTORY = "stream_r1_fast.training.wan_models:build_wan_models"


@dataclasses.dataclass
class TrainingModels:
    """What a model factory returns.

    student: the causal transformer being distilled; teacher: the real score (frozen by the
    trainer); critic: the fake score (trainable, usually a copy of the teacher's or the
    student's initial weights); text_encoder: ``prompts -> embeddings [B, L, text_dim]``;
    vae: a diffusers ``AutoencoderKLWan`` or a codec with ``temporal_factor``,
    ``spatial_factor`` and ``streaming_decoder()`` (None only for ``weighting.mode: dmd``);
    device: where training runs.
    """

    student: torch.nn.Module
    teacher: torch.nn.Module
    critic: torch.nn.Module
    text_encoder: Callable
    vae: object = None
    device: torch.device | str | None = None


def build_reward(config, device):
    """The reward model of ``reward.factory`` called with ``reward.kwargs`` (None without a
    factory). A reward that is a module is put on ``device``, in eval mode, frozen: its
    saliency maps are gradients with respect to the video, never to its own weights."""
    r = config.reward
    if r.factory is None:
        return None
    reward = resolve_factory(r.factory, "reward.factory")(**r.kwargs)
    if isinstance(reward, torch.nn.Module):
        reward = reward.to(device).eval().requires_grad_(False)
    return reward


def assemble_trainer(config, models: TrainingModels) -> Trainer:
    """A Trainer on ``models`` with the reward model of ``reward.factory`` (no preflight)."""
    device = torch.device(models.device or config.train.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Trainer(config, student=models.student, teacher=models.teacher, critic=models.critic,
                   text_encoder=models.text_encoder, vae=models.vae, reward_model=build_reward(config, device),
                   device=device)


def build_trainer(config) -> Trainer:
    """:func:`~stream_r1_fast.training.preflight.preflight` (paths, prompts and factories
    checked before any weights load), then ``model.factory(config)``, then the Trainer."""
    preflight(config)
    models = resolve_factory(config.model.factory, "model.factory")(config)
    if not isinstance(models, TrainingModels):
        raise TypeError(f"model.factory {config.model.factory!r} returned {type(models).__name__}, "
                        "not a TrainingModels")
    return assemble_trainer(config, models)


__all__ = ["DEFAULT_MODEL_FACTORY", "TrainingModels", "assemble_trainer", "build_reward", "build_trainer"]
