"""Training configuration: dataclasses read from YAML, with errors that name the bad key.

Sections: ``model``, ``reward``, ``data``, ``rollout``, ``dmd``, ``optim``, ``weighting``
(:class:`~stream_r1_fast.training.weighting.WeightingConfig`), ``train``. Defaults are the
papers' Wan2.1-1.3B recipe (docs/method.md); the package ships complete recipes
(``stream_r1_fast/configs/*.yaml``, also reachable as ``configs/`` in a clone), addressable by
name: :func:`resolve_config_path`, :func:`packaged_configs`.

The jobs around the dataclasses live in their own modules, re-exported here:
:mod:`~stream_r1_fast.training.config_parse` (reading YAML, ``key=value`` overrides, typing),
:mod:`~stream_r1_fast.training.config_checks` (:func:`validate`, the cross-field checks),
:mod:`~stream_r1_fast.training.prompt_source` (``data.prompts``: lists, prompt files,
prompt factories), :mod:`~stream_r1_fast.training.preflight` (:func:`preflight`, what the
config names outside itself, checked before any weights load) and
:mod:`~stream_r1_fast.training.factories` (:func:`resolve_factory`, the ``module:callable``
specs of ``model.factory``, ``data.prompts.factory`` and ``reward.factory``).

Some key names say ``generator`` for the student network (``optim.lr_generator``,
``optim.generator_every``): they are kept as written because saved runs (``config.yaml``,
checkpoints) and recipes use them.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import stream_r1_fast.training.config_parse as config_parse
from stream_r1_fast.prompts import PromptEntry
from stream_r1_fast.training.config_checks import CRITIC_SAMPLES, ROLLOUT_CACHE_IMPLS, ROLLOUT_CACHES, validate
from stream_r1_fast.training.config_parse import (PACKAGED_CONFIGS, build_dataclass, config_diff, describe_config,
                                                  packaged_configs, read_yaml_config, resolve_config_path,
                                                  yaml_load)
from stream_r1_fast.training.errors import ConfigError, ConfigWarning
from stream_r1_fast.training.factories import resolve_factory
from stream_r1_fast.training.preflight import preflight
from stream_r1_fast.training.prompt_source import prompt_entries, read_prompt_file
from stream_r1_fast.training.weighting import WeightingConfig

WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


# The default ``model.factory``: the diffusers Wan builder.
DEFAULT_MODEL_FACTORY = "stream_r1_fast.training.wan_models:build_wan_models"


@dataclasses.dataclass
class ModelConfig:
    """factory: ``module:callable`` called with the whole config, returning the models of the
    run (a :class:`~stream_r1_fast.training.build.TrainingModels`); may carry a ``preflight``
    attribute checked before anything loads. Default: the diffusers Wan builder
    (:func:`~stream_r1_fast.training.wan_models.build_wan_models`), which reads the keys below.

    dir: diffusers Wan folder (vae/, text_encoder/, tokenizer/, transformer/). student /
    teacher / critic: a transformer to load (diffusers folder, original-layout or Self-Forcing
    ``.pt``), a preset name (random weights), or None (student: ``dir``/transformer; teacher:
    the student; critic: a copy of the student). Other builders document what they read.
    """

    factory: str = DEFAULT_MODEL_FACTORY
    dir: str | None = None
    student: str | None = None
    teacher: str | None = None
    critic: str | None = None
    preset: str = "tiny"
    dtype: str = "fp32"
    text_max_length: int = 512

@dataclasses.dataclass
class RewardConfig:
    """factory: ``module:callable`` returning a reward model (``rewards(video, prompts)``),
    called with ``kwargs``; None for ``weighting.mode: dmd``."""

    factory: str | None = None
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DataConfig:
    """prompts: a list of prompts, a prompt file (:func:`read_prompt_file`: ``.txt``, one
    prompt per line; ``.jsonl``, ``{"prompt": ..., "extended_prompt"?: ..., "seed"?: int}`` per
    line), or a prompt factory ``{factory: 'module:callable', kwargs: {...}}``
    (:mod:`~stream_r1_fast.training.prompt_source`)."""

    prompts: list | str | dict = dataclasses.field(default_factory=lambda: ["a red circle moves left"])
    negative_prompt: str = WAN_NEGATIVE_PROMPT

@dataclasses.dataclass
class RolloutConfig:
    """The Self-Forcing rollout of the student during training.

    cache: ``full`` (the official recipe of Self-Forcing, Reward Forcing and Stream-R1: the
    cache holds the whole rollout, so nothing is evicted or folded while training) or
    ``ema_sink`` (the inference cache in training: ``sink_frames`` + ``window_frames`` slots,
    evicted frames folded into the sink with ``alpha``). ``sink_frames``, ``window_frames`` and
    ``alpha`` are used by ``ema_sink`` only. cache_impl: how the cache is stored, same semantics
    either way: ``fused`` (pre-RoPE K/V on the fused ops) or ``rotated`` (keys cached rotated,
    one dense attention call; see docs/method.md).
    """

    cache: str = "full"
    cache_impl: str = "fused"
    num_chunks: int = 7
    chunk_frames: int = 3
    height: int = 480
    width: int = 832
    steps: list = dataclasses.field(default_factory=lambda: [1000, 750, 500, 250])
    shift: float = 5.0
    sink_frames: int = 3
    window_frames: int = 3
    alpha: float = 0.999


@dataclasses.dataclass
class DMDConfig:
    """critic_samples: what the critic is trained on in a step that also updates the
    student. ``fresh`` (the official order, Self-Forcing's trainer): a new no-grad rollout of
    the *updated* student, with its own noise and exit step; ``reuse``: the student step's
    own (pre-update) rollout, detached — one rollout cheaper per student step."""

    guidance_scale: float = 3.0
    timestep_shift: float = 5.0
    min_t: float = 20.0
    max_t: float = 980.0
    critic_samples: str = "fresh"


@dataclasses.dataclass
class OptimConfig:
    lr_generator: float = 2e-6
    lr_critic: float = 4e-7
    betas: list = dataclasses.field(default_factory=lambda: [0.0, 0.999])
    weight_decay: float = 0.01
    grad_clip: float = 10.0
    ema_decay: float = 0.99
    ema_start: int = 200
    generator_every: int = 5
    grad_accum: int = 1
    batch_size: int = 1


@dataclasses.dataclass
class RunConfig:
    steps: int = 1000
    seed: int = 0
    output_dir: str = "runs/stream_r1"
    save_every: int = 100
    log_every: int = 1
    gradient_checkpointing: bool = True
    mixed_precision: str = "bf16"
    device: str | None = None
    progress: bool = True
    # Resume even when this rank's RNG file is missing from the checkpoint (the run then
    # differs from an uninterrupted one); without it such a checkpoint is skipped.
    resume_inexact: bool = False
    # Checkpoints kept (the newest N; 0 = all). The newest one that verifies is never
    # deleted, and older ones only once the new checkpoint is complete.
    keep_last: int = 3
    # A sample video of the EMA student (first prompt) to TensorBoard every N steps; 0 = off.
    sample_every: int = 0


@dataclasses.dataclass
class TrainConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    dmd: DMDConfig = dataclasses.field(default_factory=DMDConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    weighting: WeightingConfig = dataclasses.field(default_factory=WeightingConfig)
    train: RunConfig = dataclasses.field(default_factory=RunConfig)

    def __post_init__(self):
        validate(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return build_dataclass(cls, data or {}, "")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: typing.Sequence = ()) -> "TrainConfig":
        """Read ``path`` (a YAML file, or the name of a packaged recipe: see
        :func:`resolve_config_path`), apply ``overrides`` (``"key=value"`` strings or
        ``(key, value)`` pairs: :func:`apply_overrides`), then validate."""
        data = read_yaml_config(path)
        return cls.from_dict(apply_overrides(data, overrides))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML; :meth:`from_yaml` reads it back to an equal config."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
    def prompt_entries(self) -> list[PromptEntry]:
        """The prompts as :class:`PromptEntry` (a file's carry their line and seed)."""
        return prompt_entries(self.data.prompts)

    def prompt_list(self) -> list[str]:
        return [e.text for e in self.prompt_entries()]


def parse_override(item) -> tuple[str, object]:
    """``"a.b=value"`` -> ``("a.b", value)`` against the TrainConfig schema
    (:func:`stream_r1_fast.training.config_parse.parse_override`)."""
    return config_parse.parse_override(item, TrainConfig)


def apply_overrides(data: dict, overrides: typing.Sequence) -> dict:
    """A copy of the raw mapping ``data`` with each override set, checked against the
    TrainConfig schema (:func:`stream_r1_fast.training.config_parse.apply_overrides`)."""
    return config_parse.apply_overrides(data, overrides, TrainConfig)


__all__ = ["CRITIC_SAMPLES", "DEFAULT_MODEL_FACTORY", "PACKAGED_CONFIGS", "ROLLOUT_CACHES", "ROLLOUT_CACHE_IMPLS",
           "WAN_NEGATIVE_PROMPT", "ConfigError", "ConfigWarning", "DMDConfig", "DataConfig", "ModelConfig",
           "OptimConfig", "PromptEntry", "RewardConfig", "RolloutConfig", "RunConfig", "TrainConfig",
           "apply_overrides", "config_diff", "describe_config", "packaged_configs", "parse_override", "preflight",
           "read_prompt_file", "read_yaml_config", "resolve_config_path", "resolve_factory", "validate",
           "yaml_load"]
