"""Quieting third-party libraries while our loaders run (:func:`quiet_loading`)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import warnings


def _user_wants_library_logs() -> bool:
    return os.environ.get("STREAM_R1_FAST_VERBOSE", "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def quiet_loading():
    """Silence diffusers' / transformers' / accelerate's / peft's warnings and progress bars
    while our loaders run, through those libraries' own verbosity switches, and restore every
    setting afterwards. Left alone: everything when ``STREAM_R1_FAST_VERBOSE=1``; a library
    whose verbosity the user chose (its ``DIFFUSERS_VERBOSITY`` / ``TRANSFORMERS_VERBOSITY``
    variable set, or a level other than its default WARNING set in code)."""
    if _user_wants_library_logs():
        yield
        return
    restore = []
    for lib, env in (("diffusers", "DIFFUSERS_VERBOSITY"), ("transformers", "TRANSFORMERS_VERBOSITY")):
        try:
            lg = importlib.import_module(f"{lib}.utils.logging")
        except ImportError:
            continue
        level, bars = lg.get_verbosity(), lg.is_progress_bar_enabled()
        if env in os.environ or level != logging.WARNING:
            continue  # the user's own choice
        lg.set_verbosity_error()
        lg.disable_progress_bar()
        restore.append((lg, level, bars))
    plain = []
    for name in ("accelerate", "peft", "huggingface_hub"):
        logger = logging.getLogger(name)
        if logger.level in (logging.NOTSET, logging.WARNING):
            plain.append((logger, logger.level))
            logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for lib in ("diffusers", "transformers", "accelerate", "peft", "huggingface_hub", "torch.nn.modules.module"):
                warnings.filterwarnings("ignore", module=re.escape(lib) + r"(\.|$)")
            yield
    finally:
        for lg, level, bars in restore:
            lg.set_verbosity(level)
            (lg.enable_progress_bar if bars else lg.disable_progress_bar)()
        for logger, level in plain:
            logger.setLevel(level)


__all__ = ["quiet_loading"]
