"""Where a run's training prompts come from (``data.prompts``): a list of prompts, a prompt
file, or a prompt factory.

* a list: the prompts as written;
* a string: a prompt file (:func:`read_prompt_file`: ``.txt``, one prompt per line;
  ``.jsonl``, one ``{"prompt": ..., "extended_prompt"?: ..., "seed"?: int}`` object per line);
* a mapping ``{factory: 'module:callable', kwargs: {...}}``: the callable (resolved by
  :func:`~stream_r1_fast.training.factories.resolve_factory`) called with ``kwargs`` returns
  the prompts (strings or :class:`~stream_r1_fast.prompts.PromptEntry`). Its optional
  ``preflight`` attribute, called with the same ``kwargs``, checks them without drawing any
  prompt (:func:`check_prompt_source`).
"""

from __future__ import annotations

import inspect
from pathlib import Path

from stream_r1_fast.prompts import PromptEntry
from stream_r1_fast.prompts import read_prompt_file as _read_prompt_file
from stream_r1_fast.training.errors import ConfigError
from stream_r1_fast.training.factories import factory_preflight, resolve_factory

KEY = "data.prompts"


def read_prompt_file(path: str | Path, key: str = KEY) -> list[PromptEntry]:
    """Every prompt of a prompt file (:func:`stream_r1_fast.prompts.read_prompt_file`: ``.txt``
    one per line, ``.jsonl`` one ``{"prompt", "extended_prompt"?, "seed"?}`` object per line),
    checked; ConfigError naming ``key``, the file and the line."""
    return _read_prompt_file(path, f"config key {key!r}", error=ConfigError)


def _prompt_factory(source: dict):
    """The factory of a ``{factory, kwargs}`` source and its kwargs, its own check passed."""
    factory = resolve_factory(source.get("factory"), f"{KEY}.factory")
    kwargs = dict(source.get("kwargs") or {})
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"config key '{KEY}.kwargs' {kwargs!r} do not fit {source['factory']!r}: {exc}") from None
    except ValueError:  # no signature to check (a builtin): the call itself will say
        pass
    check = factory_preflight(factory)
    if check is not None:
        check(**kwargs)
    return factory, kwargs


def check_prompt_source(source) -> None:
    """Preflight of ``data.prompts``: a file is read and every line checked; a factory resolves
    and passes its own check (no prompt is drawn); a list is not empty. ConfigError otherwise."""
    if isinstance(source, dict):
        _prompt_factory(source)
    elif isinstance(source, str):
        read_prompt_file(source)
    elif not source:
        raise ConfigError(f"config key {KEY!r} holds no prompts")


def prompt_entries(source) -> list[PromptEntry]:
    """The prompts of ``source`` as :class:`PromptEntry` (a file's carry their line and seed)."""
    if isinstance(source, str):
        return read_prompt_file(source)
    if isinstance(source, dict):
        factory, kwargs = _prompt_factory(source)
        made = list(factory(**kwargs))
        entries = [e if isinstance(e, PromptEntry) else PromptEntry(e) for e in made]
        if not entries or not all(isinstance(e.text, str) and e.text.strip() for e in entries):
            raise ConfigError(f"config key '{KEY}.factory' {source['factory']!r} returned no prompts or an "
                              "empty one")
        return entries
    if not source:
        raise ConfigError(f"{KEY} holds no prompts")
    return [PromptEntry(text) for text in source]


__all__ = ["check_prompt_source", "prompt_entries", "read_prompt_file"]
