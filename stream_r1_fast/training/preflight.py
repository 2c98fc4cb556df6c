"""Preflight: everything a training config names outside itself, checked before any weights
load (in well under a second: nothing is loaded but small JSON files and the prompt file).

:func:`preflight` resolves the factories (``model.factory``, a prompt factory in
``data.prompts``, ``reward.factory``) and runs each one's own ``preflight`` check when it has
one (the default model builder's checks the diffusers Wan folder and the sizes:
:func:`stream_r1_fast.training.wan_models.preflight_wan_models`); the prompt file, the reward
folder, the output folder and the device are checked here. Every error is a ConfigError naming
the key and the path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from stream_r1_fast.training.errors import ConfigError
from stream_r1_fast.training.factories import factory_preflight, resolve_factory
from stream_r1_fast.training.prompt_source import check_prompt_source

_REWARD_FOLDER_FILES = ("reward_config.json", "model_config.json")  # merged layout; VideoAlign's release


def preflight(cfg) -> None:
    """Check, before any model loads, what the config ``cfg`` (a TrainConfig) names:

    * ``model.factory`` imports and is callable, and its own ``preflight(cfg)`` passes (the
      default Wan builder's: ``model.dir`` is a diffusers Wan folder, ``model.student /
      teacher / critic`` exist (or are presets)). It may return a callable: a second check,
      run after all the others (the Wan builder's: ``rollout.height`` / ``width`` fit the VAE
      and the patch, read from the folder's config files);
    * ``data.prompts``: a prompt file is read and every line checked, a prompt factory resolves
      and passes its own check, a list is not empty;
    * ``reward.factory`` imports and is callable; ``reward.kwargs.path`` exists and, for the
      VideoReward loaders, holds ``reward_config.json`` (the merged layout) or
      ``model_config.json`` (VideoAlign's release); ``reward.kwargs.base_model`` /
      ``prompt_template_file`` exist;
    * ``train.output_dir`` is (or can be made) a writable folder; ``train.device`` exists."""
    model_check = factory_preflight(resolve_factory(cfg.model.factory, "model.factory"))
    deferred = model_check(cfg) if model_check is not None else None
    check_prompt_source(cfg.data.prompts)
    _preflight_reward(cfg.reward)
    _preflight_output(cfg.train.output_dir)
    _preflight_device(cfg.train.device)
    if callable(deferred):  # the builder's checks that read its files (sizes...), after the rest
        deferred()


def check_model_paths(model, presets: Iterable[str] = ()) -> None:
    """``model.student / teacher / critic`` (of the ModelConfig ``model``): None, one of
    ``presets`` (any case), or an existing file or folder."""
    presets = {p.lower() for p in presets}
    for key in ("student", "teacher", "critic"):
        spec = getattr(model, key)
        if spec is None or spec.lower() in presets:
            continue
        if not Path(spec).exists():
            raise ConfigError(f"config key 'model.{key}': no such file or folder {spec!r}")


def _preflight_device(device: str | None) -> None:
    """``train.device`` names a device this machine has (None: CUDA if present, else the CPU)."""
    from stream_r1_fast.devices import resolve_device

    try:
        resolve_device(device, f"config key 'train.device' {device!r}")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _preflight_reward(r) -> None:
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


__all__ = ["check_model_paths", "preflight"]
