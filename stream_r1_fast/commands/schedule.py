"""``--prompt-schedule``: a file of timed prompts read into ``{chunk: prompt}``, and when a
chunk starts in the video."""

from __future__ import annotations

import json
import math
from pathlib import Path


def chunk_start_seconds(n: int, chunk_seconds: float, first_chunk_seconds: float) -> float:
    """When chunk ``n`` starts in the video: chunk 0 at 0, chunk 1 after the first chunk's
    ``first_chunk_seconds`` (Wan: 9 frames), every later one ``chunk_seconds`` (12 frames) on."""
    return 0.0 if n == 0 else first_chunk_seconds + (n - 1) * chunk_seconds


def read_prompt_schedule(path: str | Path, chunk_seconds: float,
                         first_chunk_seconds: float | None = None) -> dict[int, str]:
    """A schedule file -> ``{chunk: prompt}``. JSON: ``[{"at": seconds, "prompt": str}, ...]``;
    text: one ``SECONDS<whitespace>PROMPT`` per line (``#`` comments). A switch takes effect at
    the first chunk starting at or after its time (chunk 0 lasts ``first_chunk_seconds``,
    default ``chunk_seconds``; see :func:`chunk_start_seconds`). Every entry is checked (a
    finite time >= 0, a non-empty prompt; the first at 0 s): a ValueError names the file (and
    line) of a bad one."""
    first = chunk_seconds if first_chunk_seconds is None else first_chunk_seconds
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt schedule {path} does not exist")
    if not path.is_file():
        raise IsADirectoryError(f"prompt schedule {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text: {exc}") from None
    entries: list[tuple[str, object, object]] = []  # (where, seconds, prompt)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(e, dict) and {"at", "prompt"} <= e.keys() for e in data):
            raise ValueError(f'{path}: expected a JSON list of {{"at": seconds, "prompt": text}}')
        entries = [(f"{path}: entry {n}", e["at"], e["prompt"]) for n, e in enumerate(data)]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            head, *rest = line.split(None, 1)
            try:
                at = float(head)
            except ValueError:
                raise ValueError(f"{path}:{n}: expected 'SECONDS PROMPT', got {line!r}") from None
            entries.append((f"{path}:{n}", at, rest[0].strip() if rest else ""))
    if not entries:
        raise ValueError(f"{path} holds no prompts")
    for where, at, prompt in entries:
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at) or at < 0:
            raise ValueError(f"{where}: the time must be a finite number of seconds >= 0, got {at!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: the prompt must be a non-empty string, got {prompt!r}")
    schedule: dict[int, str] = {}
    for _, at, prompt in sorted(entries, key=lambda e: e[1]):  # equal times: the later line wins
        chunk = 0 if at <= 0 else 1 + max(0, math.ceil((at - first) / chunk_seconds - 1e-9))
        schedule[chunk] = prompt
    if 0 not in schedule:
        raise ValueError(f"{path}: the first prompt must start at 0 seconds")
    return schedule
