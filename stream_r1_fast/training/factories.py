"""``module:callable`` specs: the one way a config names code to run.

``model.factory`` (the models a run trains: :mod:`~stream_r1_fast.training.build`),
``data.prompts`` as ``{factory: ..., kwargs: {...}}`` (the training prompts) and
``reward.factory`` (the reward model) are all resolved here, from the config's string at run
time. A factory may carry a ``preflight`` attribute: a callable that checks, without loading
anything large, what the factory will need (:func:`factory_preflight`).
"""

from __future__ import annotations

import importlib
from typing import Callable

from stream_r1_fast.training.errors import ConfigError


def resolve_factory(spec: str, key: str = "reward.factory") -> Callable:
    """``module:attr.attr`` -> the callable it names. ConfigError (one line, naming the config
    ``key``) when the spec has no ``:``, the module does not import, or the attribute is
    missing or not callable."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"config key {key!r} must be 'module:callable', got {spec!r}")
    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise ConfigError(f"config key {key!r} {spec!r}: cannot import module {module!r} "
                          f"({type(exc).__name__}: {exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"config key {key!r} {spec!r}: {getattr(obj, '__name__', obj)!r} "
                              f"has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"config key {key!r} {spec!r} is not callable")
    return obj


def factory_preflight(factory: Callable) -> Callable | None:
    """The factory's own check (its ``preflight`` attribute), or None when it has none."""
    check = getattr(factory, "preflight", None)
    return check if callable(check) else None


__all__ = ["factory_preflight", "resolve_factory"]
