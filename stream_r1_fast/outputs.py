"""Output folders checked before any work starts (a model load can take minutes), and the frame
rate videos are written at."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Wan2.1's frame rate: what videos (mp4, GIF, TensorBoard samples) are written at unless a
# caller says otherwise.
VIDEO_FPS = 16


def check_writable_folder(folder: str | Path, where: str) -> Path:
    """``folder`` exists or is created, and a file can be written in it (a probe file is made
    and removed). Raises ValueError starting with ``where`` otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{where}: {folder} is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".stream-r1-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{where}: cannot write in {folder}: {exc.strerror or exc}") from None
    return folder
