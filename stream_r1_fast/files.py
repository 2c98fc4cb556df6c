"""Small readers of input files, shared by the command line and the model loaders."""

from __future__ import annotations

import json
from pathlib import Path


def read_json_object(path: str | Path, error: type[Exception] = ValueError) -> dict:
    """The JSON object held by the UTF-8 file ``path``. A file that cannot be read or parsed,
    or that holds anything but an object, raises ``error`` (a ValueError by default) with a
    message naming ``path``: ``cannot read PATH: ...`` or ``PATH must hold a JSON object, got
    list``. Callers put their own context (an option, an argument) in front of it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"cannot read {path}: {' '.join(str(exc).split()) or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data
