"""Training: DMD distillation with Self-Forcing rollouts, Re-DMD and Stream-R1 (docs/method.md).

``dmd`` (the losses), ``weighting`` (reward weights), ``rollout`` (backward simulation),
``trainer`` (the loop), ``checkpoint`` (atomic saves), ``config`` (YAML dataclasses).
"""

from stream_r1_fast.training.config import ConfigError, TrainConfig
from stream_r1_fast.training.dmd import critic_loss, dmd_gradient, dmd_loss, sample_timesteps
from stream_r1_fast.training.rollout import draw_exit_step, self_forcing_rollout
from stream_r1_fast.training.weighting import AdaptiveBalance, Weighting, WeightingConfig

__all__ = [
    "AdaptiveBalance",
    "ConfigError",
    "TrainConfig",
    "Weighting",
    "WeightingConfig",
    "critic_loss",
    "dmd_gradient",
    "dmd_loss",
    "draw_exit_step",
    "sample_timesteps",
    "self_forcing_rollout",
]
