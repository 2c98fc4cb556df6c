"""The toy world's factories for the training engine: what ``configs/toy_*.yaml`` name.

* ``model.factory: stream_r1_fast.toy.recipe:build_models`` (:func:`build_models`): the shipped
  toy models as a :class:`~stream_r1_fast.training.build.TrainingModels`: the ODE-initialised
  student, the teacher as the real score, a copy of the teacher as the critic (the fake score
  starts where the real one is, as in DMD2), the caption encoder and the toy codec;
* ``data.prompts: {factory: stream_r1_fast.toy.recipe:world_captions, kwargs: {count: N}}``
  (:func:`world_captions`): the captions of N random world clips, the distribution the teacher
  was trained on;
* ``reward.factory: stream_r1_fast.toy.reward:ToyRewardModel.pretrained``, the toy reward model
  of the reward-weighted modes;
* ``build_models_v2`` / ``world_captions_v2``: the same in toy world v2 (:mod:`~stream_r1_fast.toy.kits`).

So ``stream-r1 train --config toy_stream_r1`` runs DMD, Re-DMD or Stream-R1 on a CPU
(docs/method.md, docs/toy_world.md). :func:`build_toy_trainer` is the same Trainer built in code
(``scripts/toy/train_student.py``), with the student's initial weights given as an argument.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stream_r1_fast.training.build import TrainingModels, assemble_trainer
from stream_r1_fast.training.errors import ConfigError
from stream_r1_fast.training.preflight import check_model_paths


def build_models(config, *, student: str | Path | None = None, world: str = "v1") -> TrainingModels:
    """The toy models of a run in toy world ``world`` (:mod:`~stream_r1_fast.toy.kits`).
    ``model.student`` (or ``student``): the student's initial weights (default: the world's
    shipped ODE-initialised student, ``<weights>/student_ode.safetensors``); ``model.teacher``:
    the real score (default: the world's shipped teacher); ``model.critic``: the critic's initial
    weights (default: the teacher's). ``train.device`` defaults to the CPU. FileNotFoundError
    names a weights file that does not exist."""
    from stream_r1_fast.toy.kits import toy_kit
    from stream_r1_fast.toy.models import load_transformer_file

    kit = toy_kit(world)
    m = config.model
    device = torch.device(config.train.device or "cpu")
    dtype = torch.bfloat16 if m.dtype == "bf16" else torch.float32
    torch.manual_seed(config.train.seed)

    def load(spec, default: Path) -> torch.nn.Module:
        path = Path(spec) if spec else default
        if not path.is_file():
            raise FileNotFoundError(f"toy model weights {path} do not exist (see scripts/toy/ for how to make them)")
        return load_transformer_file(path, dtype).to(device).requires_grad_(True)

    teacher_file = kit.weights / "teacher.safetensors"
    return TrainingModels(
        student=load(student or m.student, kit.weights / "student_ode.safetensors"),
        teacher=load(m.teacher, teacher_file).requires_grad_(False),
        critic=load(m.critic, Path(m.teacher) if m.teacher else teacher_file),
        text_encoder=kit.text_encoder(device),
        vae=kit.codec().to(device),
        device=device,
    )


def build_models_v2(config, *, student: str | Path | None = None) -> TrainingModels:
    """:func:`build_models` in toy world v2 (``model.factory`` of ``configs/toy2_*.yaml``)."""
    return build_models(config, student=student, world="v2")


def preflight_models(config) -> None:
    """``model.student / teacher / critic``: existing files when given (the toy builder has no
    presets)."""
    check_model_paths(config.model)


build_models.preflight = preflight_models
build_models_v2.preflight = preflight_models


def world_captions(count: int, seed: int = 0) -> list[str]:
    """``count`` captions of random world clips (seed ``seed``)."""
    from stream_r1_fast.toy.kits import toy_kit

    check_captions(count, seed)
    return toy_kit("v1").captions(count, seed)


def world_captions_v2(count: int, seed: int = 0) -> list[str]:
    """``count`` captions of random v2 world clips (seed ``seed``)."""
    from stream_r1_fast.toy.kits import toy_kit

    check_captions(count, seed)
    return toy_kit("v2").captions(count, seed)


def check_captions(count=None, seed: int = 0) -> None:
    """The kwargs of :func:`world_captions` in a config: a positive ``count``, a seed >= 0."""
    for key, value, low in (("count", count, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"config key 'data.prompts.kwargs.{key}' must be an int >= {low} "
                              f"(world_captions: {key}), got {value!r}")


world_captions.preflight = check_captions
world_captions_v2.preflight = check_captions


def build_toy_trainer(config, *, student: str | Path | None = None, world: str = "v1"):
    """A :class:`~stream_r1_fast.training.Trainer` on :func:`build_models` (``student``: the
    student's initial weights instead of ``model.student``) in toy world ``world``, with the
    reward model of ``reward.factory``. No preflight: missing weights raise FileNotFoundError."""
    return assemble_trainer(config, build_models(config, student=student, world=world))


__all__ = ["build_models", "build_models_v2", "build_toy_trainer", "check_captions", "preflight_models",
           "world_captions", "world_captions_v2"]
