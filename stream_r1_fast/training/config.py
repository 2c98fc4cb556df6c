"""Training configuration: dataclasses read from YAML, with errors that name the bad key.

Sections: ``model``, ``reward``, ``data``, ``rollout``, ``dmd``, ``optim``, ``weighting``
(:class:`~stream_r1_fast.training.weighting.WeightingConfig`), ``train``. Defaults are the
papers' Wan2.1-1.3B recipe (docs/method.md); ``configs/`` holds complete files.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

from stream_r1_fast.training.weighting import WeightingConfig

WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


ROLLOUT_CACHES = ("full", "ema_sink")
CRITIC_SAMPLES = ("fresh", "reuse")


class ConfigError(ValueError):
    """A bad configuration; the message names the key (``section.key``)."""


@dataclasses.dataclass
class ModelConfig:
    """dir: diffusers Wan folder (vae/, text_encoder/, tokenizer/, transformer/), ``toy`` (the
    toy world shipped in the package: :func:`stream_r1_fast.toy.distill.build_toy_trainer`), or
    None (random ``preset`` models, for smoke runs). student / teacher / critic: a transformer to load
    (diffusers folder, original-layout or Self-Forcing ``.pt``), a preset name (random weights),
    or None (student: ``dir``/transformer; teacher: the student; critic: a copy of the student).
    """

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
    """prompts: a list of prompts, a text file with one prompt per line, or ``toy-world:N``
    (the captions of N random toy-world clips, seed 0)."""

    prompts: list | str = dataclasses.field(default_factory=lambda: ["a red circle moves left"])
    negative_prompt: str = WAN_NEGATIVE_PROMPT


@dataclasses.dataclass
class RolloutConfig:
    """The Self-Forcing rollout of the generator during training.

    cache: ``full`` (the official recipe of Self-Forcing, Reward Forcing and Stream-R1: the
    cache holds the whole rollout, so nothing is evicted or folded while training) or
    ``ema_sink`` (the inference cache in training: ``sink_frames`` + ``window_frames`` slots,
    evicted frames folded into the sink with ``alpha``). ``sink_frames``, ``window_frames`` and
    ``alpha`` are used by ``ema_sink`` only.
    """

    cache: str = "full"
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
    generator. ``fresh`` (the official order, Self-Forcing's trainer): a new no-grad rollout of
    the *updated* generator, with its own noise and exit step; ``reuse``: the generator step's
    own (pre-update) rollout, detached — one rollout cheaper per generator step."""

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
        return _build(cls, data or {}, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
            raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a UTF-8 text file ({exc})") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        return cls.from_dict(data or {})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def prompt_list(self) -> list[str]:
        p = self.data.prompts
        if isinstance(p, str) and p.startswith("toy-world:"):
            count = p.partition(":")[2]
            if not count.isdigit() or int(count) < 1:
                raise ConfigError(f"data.prompts {p!r}: 'toy-world:N' needs a positive count N")
            from stream_r1_fast.toy.distill import toy_captions

            return toy_captions(int(count))
        if isinstance(p, str):
            lines = [line.strip() for line in Path(p).read_text().splitlines()]
            p = [line for line in lines if line and not line.startswith("#")]
        if not p:
            raise ConfigError("data.prompts holds no prompts")
        return list(p)


def _build(cls, data, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys: {sorted(fields)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(value, hint, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_type(value, hint, name: str):
    """Loose YAML typing: ints pass as floats; ``X | None`` takes None; lists and dicts by kind."""
    args = typing.get_args(hint)
    options = args if args else (hint,)
    for opt in options:
        if opt is type(None) and value is None:
            return value
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if opt is bool and isinstance(value, bool):
            return value
        if opt is str and isinstance(value, str):
            return value
        if typing.get_origin(opt) in (list, dict) or opt in (list, dict):
            kind = typing.get_origin(opt) or opt
            if isinstance(value, kind):
                return value
    names = [getattr(o, "__name__", str(o)) for o in options]
    raise ConfigError(f"config key {name!r} must be {' or '.join(names)}, got {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Cross-field checks; every message names its key."""

    def need(cond: bool, key: str, what: str, value):
        if not cond:
            raise ConfigError(f"config key {key!r} {what}, got {value!r}")

    _check_numbers(cfg)  # every number finite, list entries numbers: before the range checks
    r, o, d, t = cfg.rollout, cfg.optim, cfg.dmd, cfg.train
    for key, v in (("rollout.num_chunks", r.num_chunks), ("rollout.chunk_frames", r.chunk_frames),
                   ("optim.generator_every", o.generator_every), ("optim.grad_accum", o.grad_accum),
                   ("optim.batch_size", o.batch_size), ("train.save_every", t.save_every),
                   ("train.log_every", t.log_every), ("rollout.window_frames", r.window_frames)):
        need(v >= 1, key, "must be >= 1", v)
    need(t.steps >= 0, "train.steps", "must be >= 0", t.steps)
    need(r.sink_frames >= 0, "rollout.sink_frames", "must be >= 0", r.sink_frames)
    need(r.window_frames >= r.chunk_frames, "rollout.window_frames", "must hold a chunk (>= rollout.chunk_frames)",
         r.window_frames)
    need(0.0 <= r.alpha <= 1.0, "rollout.alpha", "must be in [0, 1]", r.alpha)
    need(r.cache in ROLLOUT_CACHES, "rollout.cache", f"must be one of {ROLLOUT_CACHES}", r.cache)
    need(d.critic_samples in CRITIC_SAMPLES, "dmd.critic_samples", f"must be one of {CRITIC_SAMPLES}",
         d.critic_samples)
    need(len(r.steps) >= 1 and all(isinstance(s, (int, float)) and 0 < s <= 1000 for s in r.steps),
         "rollout.steps", "must be a non-empty list of numbers in (0, 1000]", r.steps)
    need(0.0 <= d.min_t < d.max_t <= 1000.0, "dmd.min_t", "must satisfy 0 <= dmd.min_t < dmd.max_t <= 1000", d.min_t)
    need(d.timestep_shift > 0, "dmd.timestep_shift", "must be > 0", d.timestep_shift)
    need(len(o.betas) == 2 and all(_is_number(b) and 0.0 <= b < 1.0 for b in o.betas), "optim.betas", "must be two numbers in [0, 1)",
         o.betas)
    need(o.lr_generator > 0, "optim.lr_generator", "must be > 0", o.lr_generator)
    need(o.lr_critic > 0, "optim.lr_critic", "must be > 0", o.lr_critic)
    need(o.grad_clip > 0, "optim.grad_clip", "must be > 0", o.grad_clip)
    need(0.0 <= o.ema_decay < 1.0, "optim.ema_decay", "must be in [0, 1)", o.ema_decay)
    need(t.mixed_precision in ("bf16", "none"), "train.mixed_precision", "must be 'bf16' or 'none'", t.mixed_precision)
    need(cfg.model.dtype in ("fp32", "bf16"), "model.dtype", "must be 'fp32' or 'bf16'", cfg.model.dtype)
    need(cfg.weighting.mode == "dmd" or cfg.reward.factory is not None, "reward.factory",
         f"is needed for weighting.mode {cfg.weighting.mode!r}", cfg.reward.factory)
    if cfg.reward.factory is not None:
        need(":" in cfg.reward.factory, "reward.factory", "must be 'module:callable'", cfg.reward.factory)
    # Ranges of the remaining numbers, and strings that must not be empty.
    for key, v in (("rollout.height", r.height), ("rollout.width", r.width),
                   ("model.text_max_length", cfg.model.text_max_length)):
        need(v >= 1, key, "must be a positive int", v)
    need(r.shift > 0, "rollout.shift", "must be > 0", r.shift)
    need(d.guidance_scale >= 0, "dmd.guidance_scale", "must be >= 0", d.guidance_scale)
    need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0", o.weight_decay)
    need(o.ema_start >= 0, "optim.ema_start", "must be >= 0", o.ema_start)
    need(t.seed >= 0, "train.seed", "must be >= 0", t.seed)
    need(bool(t.output_dir.strip()), "train.output_dir", "must be a non-empty path", t.output_dir)
    need(cfg.model.dir is None or bool(cfg.model.dir.strip()), "model.dir", "must be a non-empty path or null",
         cfg.model.dir)
    p = cfg.data.prompts
    need(bool(p.strip()) if isinstance(p, str) else all(isinstance(x, str) for x in p), "data.prompts",
         "must be a list of strings, a prompt file or 'toy-world:N'", p)
    if t.device is not None:
        import torch

        try:
            torch.device(t.device)
        except (RuntimeError, ValueError):
            need(False, "train.device", "must be a torch device ('cpu', 'cuda', 'cuda:1', ...)", t.device)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_numbers(cfg) -> None:
    """Every float field of every section finite, every number in a list field finite (the
    lists of numbers: ``optim.betas``, ``rollout.steps``); the message names the key."""
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(sub):
            continue
        for f in dataclasses.fields(sub):
            key, v = f"{section.name}.{f.name}", getattr(sub, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"config key {key!r} must be a finite number, got {v!r}")
            if isinstance(v, list) and key in ("optim.betas", "rollout.steps"):
                for x in v:
                    if not _is_number(x) or not math.isfinite(x):
                        raise ConfigError(f"config key {key!r} must hold finite numbers, got {v!r}")


_PRESETS = ("wan2.1-1.3b", "wan2.1-14b", "tiny")
_WAN_FOLDERS = ("transformer", "vae", "text_encoder", "tokenizer")


def resolve_factory(spec: str):
    """``module:attr.attr`` -> the object; ConfigError (one line, naming ``reward.factory``)
    when the module does not import or the attribute is missing or not callable."""
    import importlib

    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise ConfigError(f"config key 'reward.factory' {spec!r}: cannot import module {module!r} "
                          f"({type(exc).__name__}: {exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"config key 'reward.factory' {spec!r}: {getattr(obj, '__name__', obj)!r} "
                              f"has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"config key 'reward.factory' {spec!r} is not callable")
    return obj


def preflight(cfg: TrainConfig) -> None:
    """What the config names outside itself, checked before any model loads (ConfigError naming
    the key): ``model.dir`` is a Wan folder (or ``toy``), the ``model.student / teacher /
    critic`` paths exist, a prompt file exists, ``reward.factory`` imports."""
    m = cfg.model
    if m.dir is None:
        raise ConfigError("config key 'model.dir' must name a diffusers Wan folder (transformer/, vae/, "
                          "text_encoder/, tokenizer/) or 'toy', got None")
    if m.dir != "toy":
        root = Path(m.dir)
        if not root.is_dir():
            raise ConfigError(f"config key 'model.dir': no such folder {m.dir!r} (expected a diffusers Wan folder "
                              "with transformer/, vae/, text_encoder/, tokenizer/)")
        missing = [f"{sub}/" for sub in _WAN_FOLDERS if not (root / sub).is_dir()]
        if missing:
            raise ConfigError(f"config key 'model.dir': {m.dir!r} has no {', '.join(missing)} (a diffusers Wan "
                              "folder has transformer/, vae/, text_encoder/, tokenizer/)")
    for key in ("student", "teacher", "critic"):
        spec = getattr(m, key)
        if spec is None or (m.dir != "toy" and spec.lower() in _PRESETS):
            continue
        if not Path(spec).exists():
            raise ConfigError(f"config key 'model.{key}': no such file or folder {spec!r}")
    p = cfg.data.prompts
    if isinstance(p, str) and not p.startswith("toy-world:") and not Path(p).is_file():
        raise ConfigError(f"config key 'data.prompts': no such prompt file {p!r}")
    if cfg.reward.factory is not None:
        resolve_factory(cfg.reward.factory)
