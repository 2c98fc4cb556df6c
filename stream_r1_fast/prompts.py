"""Prompt files, read by training (``data.prompts``) and by ``stream-r1 generate --prompts``.

``.txt`` (or any suffix but ``.jsonl``): one prompt per line; blank lines and lines starting with
``#`` are skipped. ``.jsonl``: one JSON object per (non-blank) line,
``{"prompt": str, "extended_prompt"?: str, "seed"?: int >= 0}`` (other fields are ignored); with
``extended_prompt`` that text is the one generated from / trained on (Self-Forcing, LongLive and
VBench's augmented prompt lists ship extended prompts), while ``prompt`` names the sample.
``.json`` is refused (write one object per line as ``.jsonl``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


class PromptFileError(ValueError):
    """A prompt file that cannot be read or holds a bad line; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class PromptEntry:
    """One prompt of a prompt file. ``text``: what the model is conditioned on (a ``.jsonl``
    line's ``extended_prompt`` when it has one, else its ``prompt``); ``prompt``: the line's
    ``prompt`` (what a sample is named after); ``seed``: the line's ``seed`` (None when not
    given); ``where``: ``file:line``."""

    text: str
    prompt: str | None = None
    seed: int | None = None
    where: str = ""


def read_prompt_file(path: str | Path, what: str = "prompt file",
                     error: type[Exception] = PromptFileError) -> list[PromptEntry]:
    """Every prompt of a prompt file (the formats of this module), checked: a bad file or line
    raises ``error`` with a message starting ``"{what}: "`` and naming the file and the line."""
    path = Path(path)
    head = what
    if not path.exists():
        raise error(f"{head}: no such prompt file {str(path)!r}")
    if not path.is_file():
        raise error(f"{head}: {str(path)!r} is a folder, not a prompt file (.txt or .jsonl)")
    if path.suffix.lower() == ".json":
        raise error(f"{head}: {path}: a .json prompt file is not read; use .jsonl (one "
                    '{"prompt": ...} object per line) or .txt (one prompt per line)')
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise error(f"{head}: {path}:{line}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise error(f"{head}: cannot read {path} ({exc.strerror or exc})") from None
    entries = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise error(f"{head}: {where}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
            if not isinstance(obj, dict):
                raise error(f'{head}: {where}: expected a JSON object {{"prompt": ...}}, '
                            f"got {type(obj).__name__}")
            prompt, ext, seed = obj.get("prompt"), obj.get("extended_prompt"), obj.get("seed")
            if not isinstance(prompt, str) or not prompt.strip():
                raise error(f"{head}: {where}: 'prompt' must be a non-empty string, got {prompt!r}")
            if ext is not None and (not isinstance(ext, str) or not ext.strip()):
                raise error(f"{head}: {where}: 'extended_prompt' must be a non-empty string when given, "
                            f"got {ext!r}")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
                raise error(f"{head}: {where}: 'seed' must be an int >= 0 when given, got {seed!r}")
            entries.append(PromptEntry((ext or prompt).strip(), prompt.strip(), seed, where))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                entries.append(PromptEntry(line, line, None, f"{path}:{n}"))
    if not entries:
        raise error(f"{head}: {path} holds no prompts")
    return entries
