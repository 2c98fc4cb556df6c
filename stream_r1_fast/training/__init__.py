"""Training: DMD distillation with Self-Forcing rollouts, Re-DMD and Stream-R1 (docs/method.md).

``dmd`` (the losses), ``weighting`` (reward weights), ``rollout`` (backward simulation),
``trainer`` (the step loop) with its mixins ``trainer_state`` (checkpoint save / resume),
``metrics`` (metrics.csv, TensorBoard, config.yaml) and ``guards`` (interrupts, divergence),
``sharding`` (FSDP2), ``checkpoint`` (the atomic, verified file format), ``build`` (a Trainer
from a config: ``model.factory``, ``reward.factory``), ``wan_models`` (the default model
builder), ``factories`` (``module:callable`` specs), ``prompt_source`` (``data.prompts``),
``config`` (the YAML dataclasses) with ``config_parse`` (reading, overrides),
``config_checks`` (validation) and ``preflight`` (checks before any weights load).
"""

from stream_r1_fast.training.build import TrainingModels, assemble_trainer, build_trainer
from stream_r1_fast.training.config import ConfigError, TrainConfig, preflight
from stream_r1_fast.training.dmd import critic_loss, dmd_gradient, dmd_loss, sample_timesteps
from stream_r1_fast.training.factories import resolve_factory
from stream_r1_fast.training.guards import TrainingDiverged, TrainingInterrupted
from stream_r1_fast.training.rollout import draw_exit_step, self_forcing_rollout
from stream_r1_fast.training.trainer import Trainer
from stream_r1_fast.training.weighting import AdaptiveBalance, Weighting, WeightingConfig

__all__ = [
    "AdaptiveBalance",
    "ConfigError",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "TrainingModels",
    "Weighting",
    "WeightingConfig",
    "assemble_trainer",
    "build_trainer",
    "critic_loss",
    "dmd_gradient",
    "dmd_loss",
    "draw_exit_step",
    "preflight",
    "resolve_factory",
    "sample_timesteps",
    "self_forcing_rollout",
]
