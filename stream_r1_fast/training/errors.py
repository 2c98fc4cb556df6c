"""The configuration's error and warning types (kept apart so every config module can raise
them without importing the dataclasses)."""


class ConfigError(ValueError):
    """A bad configuration; the message names the key (``section.key``)."""


class ConfigWarning(UserWarning):
    """A run whose config differs from the one saved in its output folder (a resume)."""


__all__ = ["ConfigError", "ConfigWarning"]
