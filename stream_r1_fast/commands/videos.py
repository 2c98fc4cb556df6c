"""What ``stream-r1 generate`` writes: the mp4 (written under a hidden name and renamed once
complete) and the contact sheet (only its frames are kept while the video streams past)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from stream_r1_fast.commands.errors import UsageError, one_line


def contact_sheet_indices(num_frames: int, count: int = 24) -> list[int]:
    """The ``count`` frame indices (fewer for a shorter video) spread evenly over ``num_frames``,
    first and last included."""
    t, n = num_frames, min(count, num_frames)
    return sorted({round(i * (t - 1) / max(n - 1, 1)) for i in range(n)})


class ContactSheet:
    """A contact sheet of a video of known length, collected as its frames pass: only the
    frames of :func:`contact_sheet_indices` are kept (copied), so memory is ``count`` frames
    whatever the length."""

    def __init__(self, num_frames: int, count: int = 24, columns: int = 6):
        self.wanted = contact_sheet_indices(num_frames, count)
        self.columns = columns
        self.frames: dict[int, object] = {}

    def offer(self, first: int, frames) -> None:
        """Frames ``first, first + 1, ...`` of the video (uint8 [T, H, W, 3])."""
        import numpy as np

        for i in self.wanted:
            if first <= i < first + len(frames):
                self.frames[i] = np.array(frames[i - first], copy=True)

    @property
    def held(self) -> int:
        return len(self.frames)

    def save(self, path: Path) -> None:
        import numpy as np
        from PIL import Image

        missing = [i for i in self.wanted if i not in self.frames]
        if missing:
            raise ValueError(f"the contact sheet lacks frames {missing[:4]}... (the video is shorter than announced)")
        rows = math.ceil(len(self.wanted) / self.columns)
        h, w = self.frames[self.wanted[0]].shape[:2]
        sheet = np.zeros((rows * h, self.columns * w, 3), dtype=np.uint8)
        for n, i in enumerate(self.wanted):
            r, c = divmod(n, self.columns)
            sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = self.frames[i]
        Image.fromarray(sheet).save(path)


def contact_sheet(frames, path: Path, columns: int = 6, count: int = 24) -> None:
    """A PNG grid of ``count`` frames sampled evenly from uint8 [T, H, W, 3]."""
    sheet = ContactSheet(frames.shape[0], count, columns)
    sheet.offer(0, frames)
    sheet.save(path)


class VideoFile:
    """The mp4, written by imageio's ffmpeg into a hidden file beside ``path`` and moved onto
    ``path`` once ffmpeg has produced it: any failure (including ffmpeg's silent ones, when it
    cannot open its output) is a :class:`UsageError` naming ``path``, and ``path`` is never left
    half written."""

    def __init__(self, path: Path, fps: int, option: str = "--output"):
        import imageio.v2 as imageio

        self.path, self.option = path, option
        self.tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial.mp4")
        self._writer = None
        self._writer = self._do(lambda: imageio.get_writer(str(self.tmp), fps=fps, codec="libx264", quality=8,
                                                           macro_block_size=1))

    def _do(self, fn):
        try:
            return fn()
        except (OSError, RuntimeError, ValueError) as exc:
            self.discard()
            raise UsageError(f"{self.option} {self.path}: writing the video failed: {one_line(exc)}") from exc

    def append(self, frame) -> None:
        self._do(lambda: self._writer.append_data(frame))

    def close(self) -> None:
        self._do(self._writer.close)
        self._writer = None
        if not (self.tmp.is_file() and self.tmp.stat().st_size > 0):
            self.discard()
            raise UsageError(f"{self.option} {self.path}: writing the video failed: ffmpeg wrote nothing "
                             "(its message is above)")
        self._do(lambda: os.replace(self.tmp, self.path))

    def discard(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # already failing: the first error is the one reported
                pass
        self.tmp.unlink(missing_ok=True)

