"""Training configuration: dataclasses read from YAML, with errors that name the bad key.

Sections: ``model``, ``reward``, ``data``, ``rollout``, ``dmd``, ``optim``, ``weighting``
(:class:`~stream_r1_fast.training.weighting.WeightingConfig`), ``train``. Defaults are the
papers' Wan2.1-1.3B recipe (docs/method.md); the package ships complete recipes
(``stream_r1_fast/configs/*.yaml``, also reachable as ``configs/`` in a clone), addressable by
name: :func:`resolve_config_path` (``toy_stream_r1`` -> the packaged file), :func:`packaged_configs`.

Overrides (``stream-r1 train --config cfg.yaml optim.lr_generator=1e-5 train.steps=10``):
:func:`apply_overrides` sets dotted keys on the *raw* mapping read from the YAML file, so the
one schema (:meth:`TrainConfig.from_dict`, the dataclasses and :func:`validate`) checks file
and overrides alike and every error names the key. Values are YAML scalars, lists or mappings
(``rollout.steps=[1000,500]``, ``train.device=null``); a string field takes the text as given
when YAML would read it as something else (``train.output_dir=2024-01-01``). This is a
small parser on top of ``yaml.safe_load`` rather than OmegaConf: OmegaConf's dotlist merge
would add a dependency and a second type system (its structured configs raise their own
errors, which do not list the valid keys), while the only thing it would save here is the
``a.b.c=value`` split. PyYAML reads ``1e-5`` (no dot) as a string; the loader used here
(:func:`yaml_load`) reads it as a float, as YAML 1.2 does.

Before any weights load, :func:`preflight` checks what the config names outside itself (every
path, the prompt file's contents, the reward folder, the output folder, the sizes); prompt
files are read by :func:`read_prompt_file` (``.txt``: one per line; ``.jsonl``: one JSON
object per line).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import typing
from pathlib import Path

from stream_r1_fast.prompts import PromptEntry
from stream_r1_fast.prompts import read_prompt_file as _read_prompt_file
from stream_r1_fast.training.weighting import WeightingConfig

WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


ROLLOUT_CACHES = ("full", "ema_sink")
ROLLOUT_CACHE_IMPLS = ("fused", "rotated")
CRITIC_SAMPLES = ("fresh", "reuse")


class ConfigError(ValueError):
    """A bad configuration; the message names the key (``section.key``)."""


class ConfigWarning(UserWarning):
    """A run whose config differs from the one saved in its output folder (a resume)."""


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
    """prompts: a list of prompts, a prompt file (:func:`read_prompt_file`: ``.txt``, one
    prompt per line; ``.jsonl``, ``{"prompt": ..., "extended_prompt"?: ..., "seed"?: int}`` per
    line), or ``toy-world:N`` (the captions of N random toy-world clips, seed 0)."""

    prompts: list | str = dataclasses.field(default_factory=lambda: ["a red circle moves left"])
    negative_prompt: str = WAN_NEGATIVE_PROMPT


@dataclasses.dataclass
class RolloutConfig:
    """The Self-Forcing rollout of the generator during training.

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
    # Checkpoints kept (the newest N; 0 = all). The newest one that verifies is never
    # deleted, and older ones only once the new checkpoint is complete.
    keep_last: int = 3
    # A sample video of the EMA generator (first prompt) to TensorBoard every N steps; 0 = off.
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
        return _build(cls, data or {}, "")

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

    def prompt_entries(self) -> list["PromptEntry"]:
        """The prompts as :class:`PromptEntry` (a file's carry their line and seed)."""
        p = self.data.prompts
        if isinstance(p, str) and not p.startswith("toy-world:"):
            return read_prompt_file(p)
        return [PromptEntry(text) for text in self.prompt_list()]

    def prompt_list(self) -> list[str]:
        p = self.data.prompts
        if isinstance(p, str) and p.startswith("toy-world:"):
            count = p.partition(":")[2]
            if not count.isdigit() or int(count) < 1:
                raise ConfigError(f"data.prompts {p!r}: 'toy-world:N' needs a positive count N")
            from stream_r1_fast.toy.distill import toy_captions

            return toy_captions(int(count))
        if isinstance(p, str):
            return [e.text for e in read_prompt_file(p)]
        if not p:
            raise ConfigError("data.prompts holds no prompts")
        return list(p)


# ---------------------------------------------------------------------- reading YAML


def _yaml_loader():
    """yaml.SafeLoader that also reads ``1e-5`` / ``3E+2`` (no dot) as floats, as YAML 1.2 does."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def yaml_load(text: str):
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader subclass)


PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def packaged_configs() -> dict[str, Path]:
    """``{name: path}`` of the recipes shipped in the package (``stream_r1_fast/configs``)."""
    if not PACKAGED_CONFIGS.is_dir():
        return {}
    return {p.stem: p for p in sorted(PACKAGED_CONFIGS.glob("*.yaml"))}


def describe_config(path: Path) -> str:
    """The first comment line of a recipe (its one-line description), or ''."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().rstrip(":")
            return text.split(". ")[0].rstrip(".")
        if line.strip():
            break
    return ""


def resolve_config_path(spec: str | Path) -> Path:
    """``spec`` -> the YAML file: an existing path as it is; a bare name (no ``.yaml`` / ``.yml``
    suffix, no folder) that is not a path -> the packaged recipe of that name. FileNotFoundError
    (saying which names exist) otherwise."""
    path = Path(spec)
    if path.exists():
        return path
    name = str(spec)
    packaged = packaged_configs()
    if path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        if name in packaged:
            return packaged[name]
        raise FileNotFoundError(f"config file {name} does not exist, and {name!r} is not a packaged recipe "
                                f"(packaged: {', '.join(packaged) or 'none'}; stream-r1 train --list-configs)")
    raise FileNotFoundError(f"config file {path} does not exist")


def read_yaml_config(spec: str | Path) -> dict:
    """The raw mapping of a config file (or packaged recipe name); ConfigError names the file
    (and line) of a YAML error."""
    import yaml

    path = resolve_config_path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist (it is a folder)")
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data or {}


# ---------------------------------------------------------------------- key=value overrides


def _field_hint(path: list[str]):
    """The type hint of dotted ``path`` in the schema, None past a dataclass (inside a dict
    field such as ``reward.kwargs``); ConfigError naming the key (and listing the valid keys)
    for a key the schema does not have."""
    cls = TrainConfig
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            prefix = ".".join(path[:i])
            valid = sorted(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"unknown config key '{prefix + '.' if prefix else ''}{part}'; valid keys: {valid}")
        cls = hints[part]
    return cls


def parse_override(item) -> tuple[str, object]:
    """``"a.b=value"`` -> ``("a.b", value)``: the value read as YAML (scalars, ``[lists]``,
    ``{mappings}``, ``null``); a ``(key, value)`` pair passes through."""
    import yaml

    if isinstance(item, tuple):
        return item
    key, sep, text = str(item).partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} must be KEY=VALUE with a dotted key, e.g. optim.lr_generator=1e-5")
    hint = _field_hint(key.split("."))
    try:
        value = yaml_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = _Unparsed(text)
    if hint is not None and not dataclasses.is_dataclass(hint) and _takes_str(hint):
        # A string field takes the text as written when YAML reads it as another type
        # (``train.output_dir=2024-01-01``, ``data.negative_prompt=a: b``), but ``null`` stays None.
        ok = isinstance(value, str) or (value is None and type(None) in (typing.get_args(hint) or (hint,)))
        if not ok:
            try:
                _check_type(value, hint, key)
            except ConfigError:
                value = text
    if isinstance(value, _Unparsed):
        raise ConfigError(f"override {item!r}: the value is not valid YAML")
    return key, value


class _Unparsed(str):
    pass


def _takes_str(hint) -> bool:
    return hint is str or str in typing.get_args(hint)


def apply_overrides(data: dict, overrides: typing.Sequence) -> dict:
    """A copy of the raw config mapping ``data`` with each override set (later ones win):
    ``"section.key=value"`` or ``("section.key", value)``; deeper keys go into dict fields
    (``reward.kwargs.path=/data/reward``). The result is validated by :meth:`TrainConfig.from_dict`
    like a file; an unknown key raises ConfigError at once, listing the valid keys."""
    import copy

    data = copy.deepcopy(data or {})
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        _field_hint(parts)  # unknown keys: the schema's error, for pairs too
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}={value!r}: config key '{'.'.join(parts[:i + 1])}' is a value, "
                                  "not a section")
            node = child
        node[parts[-1]] = value
    return data


def config_diff(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """``[(dotted key, old value, new value)]`` of the leaves that differ between two config
    mappings (a key missing on one side counts as ``<absent>``)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, name + ".")
        elif a != b:
            out.append((name, a, b))
    return out


# ---------------------------------------------------------------------- prompt files
# The reader lives in stream_r1_fast.prompts (stream-r1 generate --prompts reads the same files);
# PromptEntry and read_prompt_file stay importable from here.


def read_prompt_file(path: str | Path, key: str = "data.prompts") -> list[PromptEntry]:
    """Every prompt of a prompt file (:func:`stream_r1_fast.prompts.read_prompt_file`: ``.txt``
    one per line, ``.jsonl`` one ``{"prompt", "extended_prompt"?, "seed"?}`` object per line),
    checked; ConfigError naming ``key``, the file and the line."""
    return _read_prompt_file(path, f"config key {key!r}", error=ConfigError)

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
    need(t.keep_last >= 0, "train.keep_last", "must be >= 0 (0 keeps every checkpoint)", t.keep_last)
    need(t.sample_every >= 0, "train.sample_every", "must be >= 0 (0: no sample videos)", t.sample_every)
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
    need(r.cache_impl in ROLLOUT_CACHE_IMPLS, "rollout.cache_impl", f"must be one of {ROLLOUT_CACHE_IMPLS}",
         r.cache_impl)
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
    if isinstance(p, list):
        empty = [i for i, x in enumerate(p) if not x.strip()]
        need(not empty, f"data.prompts[{empty[0] if empty else 0}]", "must not be empty", p[empty[0]] if empty else "")
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


_REWARD_FOLDER_FILES = ("reward_config.json", "model_config.json")  # merged layout; VideoAlign's release


def preflight(cfg: TrainConfig) -> None:
    """Everything the config names outside itself, checked before any model loads (in well
    under a second: nothing is loaded but small JSON files and the prompt file). Raises
    ConfigError naming the key and the path:

    * ``model.dir``: a diffusers Wan folder (transformer/, vae/, text_encoder/, tokenizer/) or
      ``toy``; ``model.student / teacher / critic``: existing files or folders (or presets);
    * ``data.prompts``: a prompt file is read and every line checked (:func:`read_prompt_file`),
      ``toy-world:N`` has a count, a list is not empty;
    * ``reward.factory`` imports and is callable; ``reward.kwargs.path`` exists and, for the
      VideoReward loaders, holds ``reward_config.json`` (the merged layout) or
      ``model_config.json`` (VideoAlign's release); ``reward.kwargs.base_model`` /
      ``prompt_template_file`` exist;
    * ``train.output_dir`` is (or can be made) a writable folder;
    * sizes: ``rollout.height`` / ``width`` are multiples of the VAE's downsampling x the patch
      (read from ``model.dir``'s vae/ and transformer/ ``config.json``)."""
    m = cfg.model
    if m.dir is None:
        raise ConfigError("config key 'model.dir' must name a diffusers Wan folder (transformer/, vae/, "
                          "text_encoder/, tokenizer/) or 'toy', got None")
    if m.dir != "toy":
        root = Path(m.dir)
        if not root.is_dir():
            raise ConfigError(f"config key 'model.dir': no such folder {m.dir!r} (expected a diffusers Wan folder "
                              "with transformer/, vae/, text_encoder/, tokenizer/; set it in the config or as "
                              "model.dir=PATH on the command line)")
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
    if isinstance(p, str) and p.startswith("toy-world:"):
        count = p.partition(":")[2]
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"config key 'data.prompts' {p!r}: 'toy-world:N' needs a positive count N")
    elif isinstance(p, str):
        read_prompt_file(p)
    elif not p:
        raise ConfigError("config key 'data.prompts' holds no prompts")
    _preflight_reward(cfg.reward)
    _preflight_output(cfg.train.output_dir)
    _preflight_device(cfg.train.device)
    if m.dir != "toy":
        _preflight_sizes(cfg, Path(m.dir))


def _preflight_device(device: str | None) -> None:
    """``train.device`` names a device this machine has (None: CUDA if present, else the CPU)."""
    from stream_r1_fast.devices import resolve_device

    try:
        resolve_device(device, f"config key 'train.device' {device!r}")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _preflight_reward(r: RewardConfig) -> None:
    if r.factory is None:
        return
    resolve_factory(r.factory)
    kw = r.kwargs
    for name, kind in (("path", None), ("base_model", "folder"), ("prompt_template_file", "file")):
        if name not in kw or kw[name] is None:
            continue
        value = kw[name]
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise ConfigError(f"config key 'reward.kwargs.{name}' must be a path, got {value!r}")
        path = Path(value).expanduser()
        if not path.exists():
            raise ConfigError(f"config key 'reward.kwargs.{name}': no such {kind or 'file or folder'} {str(value)!r}")
        if kind == "folder" and not path.is_dir() or kind == "file" and not path.is_file():
            raise ConfigError(f"config key 'reward.kwargs.{name}': {str(value)!r} is not a {kind}")
        if name == "path" and r.factory.partition(":")[0].startswith("stream_r1_fast.rewards."):
            if not path.is_dir():
                raise ConfigError(f"config key 'reward.kwargs.path': {str(value)!r} is not a folder (a VideoReward "
                                  "folder holds reward_config.json, or VideoAlign's release model_config.json)")
            if not any((path / f).is_file() for f in _REWARD_FOLDER_FILES):
                raise ConfigError(f"config key 'reward.kwargs.path': {str(value)!r} is not a VideoReward folder: "
                                  "it has neither reward_config.json (the merged layout) nor model_config.json "
                                  "(VideoAlign's release; README, 'The reward model')")


def _preflight_output(output_dir: str) -> None:
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"config key 'train.output_dir': {output_dir!r} is a file, not a folder")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"config key 'train.output_dir': {output_dir!r} cannot be created ({str(probe)!r} is a "
                          "file, not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"config key 'train.output_dir': {output_dir!r} is not writable (no write permission on "
                          f"{str(probe)!r})")


def _read_small_json(path: Path, key: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config key {key!r}: {str(path)!r} is missing") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config key {key!r}: {str(path)!r} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config key {key!r}: {str(path)!r} does not hold a JSON object")
    return data


def _preflight_sizes(cfg: TrainConfig, root: Path) -> None:
    """rollout.height / width against the VAE's spatial factor x the transformer's patch."""
    vae = _read_small_json(root / "vae" / "config.json", "model.dir")
    transformer = _read_small_json(root / "transformer" / "config.json", "model.dir")
    dim_mult = vae.get("dim_mult")
    patch = transformer.get("patch_size")
    if not isinstance(dim_mult, list) or not dim_mult:
        return  # not a Wan VAE config this check knows; the loader reports it
    spatial = 2 ** (len(dim_mult) - 1)
    step = spatial * (patch[1] if isinstance(patch, list) and len(patch) == 3 and isinstance(patch[1], int) else 2)
    r = cfg.rollout
    for key, v in (("rollout.height", r.height), ("rollout.width", r.width)):
        if v % step:
            raise ConfigError(f"config key {key!r} must be a multiple of {step} pixels (the VAE's {spatial}x "
                              f"downsampling x the patch, from {root}), got {v}")
