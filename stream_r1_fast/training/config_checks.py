"""Cross-field checks of a training config (:func:`validate`): ranges, choices and kinds of
every key, each message naming its key. Run by ``TrainConfig.__post_init__``, so a file, an
override and a config built in code are checked alike; what the config names outside itself
(paths, factories) is :func:`~stream_r1_fast.training.preflight.preflight`'s job.
"""

from __future__ import annotations

import dataclasses
import math

from stream_r1_fast.training.errors import ConfigError

ROLLOUT_CACHES = ("full", "ema_sink")
ROLLOUT_CACHE_IMPLS = ("fused", "rotated")
CRITIC_SAMPLES = ("fresh", "reuse")
PROMPT_FACTORY_KEYS = ("factory", "kwargs")


def validate(cfg) -> None:
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
    _check_model_factory(cfg.model.factory, need)
    p = cfg.data.prompts
    if isinstance(p, dict):
        _check_prompt_factory(p, need)
    need(bool(p.strip()) if isinstance(p, str) else isinstance(p, dict) or all(isinstance(x, str) for x in p),
         "data.prompts", "must be a list of strings, a prompt file or {factory: 'module:callable', kwargs: {...}}", p)
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



def _check_model_factory(spec, need) -> None:
    need(isinstance(spec, str) and ":" in spec, "model.factory", "must be 'module:callable'", spec)


def _check_prompt_factory(p: dict, need) -> None:
    """``data.prompts`` as a factory: ``{factory: 'module:callable', kwargs: {...}}``."""
    unknown = sorted(set(p) - set(PROMPT_FACTORY_KEYS), key=str)
    need(not unknown, f"data.prompts.{unknown[0] if unknown else ''}",
         f"is not a key of a prompt factory (valid keys: {list(PROMPT_FACTORY_KEYS)})", p)
    spec = p.get("factory")
    need(isinstance(spec, str) and ":" in spec, "data.prompts.factory", "must be 'module:callable'", spec)
    need(isinstance(p.get("kwargs", {}), dict), "data.prompts.kwargs", "must be a mapping", p.get("kwargs"))


__all__ = ["CRITIC_SAMPLES", "PROMPT_FACTORY_KEYS", "ROLLOUT_CACHES", "ROLLOUT_CACHE_IMPLS", "validate"]
