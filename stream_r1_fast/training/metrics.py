"""The trainer's run log (:class:`RunLogMixin`): ``metrics.csv`` (one row per logged step,
columns :data:`CSV_COLUMNS`), TensorBoard scalars and sample videos, the progress bar's
postfix, and ``config.yaml`` (the resolved config of the run, compared on a resume)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from stream_r1_fast.outputs import VIDEO_FPS
from stream_r1_fast.training.config_parse import config_diff, yaml_load
from stream_r1_fast.training.errors import ConfigWarning

# On-disk names: metrics.csv's columns call the student "generator" (generator_loss,
# grad_norm_generator, lr_generator); kept so that resumed runs append to the same columns.
CSV_COLUMNS = ("step", "exit_step", "critic_loss", "generator_loss", "grad_norm_critic", "grad_norm_generator",
               "reward_VQ", "reward_MQ", "reward_TA", "w_inter", "balance_penalty", "seconds",
               "lr_generator", "lr_critic")
# train.* keys that steer the run but not what it computes: a resume that changes them (more
# steps, another device, other logging) is not reported as a different config.
RUN_CONTROL_KEYS = frozenset(f"train.{k}" for k in ("steps", "output_dir", "save_every", "log_every", "device",
                                                    "progress", "resume_inexact", "keep_last", "sample_every"))
SAMPLE_FPS = VIDEO_FPS  # Wan2.1's frame rate, for the TensorBoard sample videos


class RunLogMixin:
    """The logging methods of the Trainer (it provides ``config``, ``output_dir``, ``rank``,
    ``step``, ``vae``, ``sample()`` and the ``_csv`` / ``_tb`` / ``_warned`` /
    ``_last_student`` / ``last_postfix`` state)."""

    def _truncate_metrics(self, step: int) -> None:
        """Drop the rows of ``metrics.csv`` with step >= ``step`` (a resumed run logs them
        again) and rows cut short by a kill; the header stays (a file with other columns is
        rewritten under today's, its values kept by column name). Atomic (temp file + rename)."""
        import os

        path = self.output_dir / "metrics.csv"
        if self.rank != 0 or not path.is_file():
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or "step" not in rows[0]:
            return
        header, col = rows[0], rows[0].index("step")
        keep = []
        for row in rows[1:]:
            try:
                if len(row) == len(header) and int(row[col]) < step:
                    keep.append(dict(zip(header, row)))
            except ValueError:
                pass
        if len(keep) == len(rows) - 1 and tuple(header) == CSV_COLUMNS:
            return
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore", restval="")
            writer.writeheader()
            writer.writerows(keep)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def write_run_config(self) -> Path | None:
        """Save the resolved config as ``<output_dir>/config.yaml`` (rank 0; atomically). When
        the folder already holds one that differs (a resume, or a new run in an old folder) in
        more than run-control keys (``RUN_CONTROL_KEYS``: steps, device, logging...), a
        :class:`~stream_r1_fast.training.config.ConfigWarning` lists the keys that differ."""
        import os
        import warnings

        if self.rank != 0:
            return None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "config.yaml"
        new = self.config.to_dict()
        if path.is_file():
            try:
                old = yaml_load(path.read_text(encoding="utf-8"))
            except Exception as exc:  # an unreadable earlier copy: say so, then replace it
                old = None
                warnings.warn(f"{path}: the earlier run's config is unreadable ({type(exc).__name__}); replacing it",
                              ConfigWarning, stacklevel=2)
            if isinstance(old, dict):
                diff = config_diff(old, new)
                if any(key not in RUN_CONTROL_KEYS for key, _, _ in diff):
                    what = "resuming at step {} with".format(self.step) if self.step else "starting with"
                    listed = "; ".join(f"{key}: {a!r} -> {b!r}" for key, a, b in diff)
                    warnings.warn(f"{what} a config that differs from the one saved in {path}: {listed} "
                                  "(the file now holds this run's)", ConfigWarning, stacklevel=2)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("# The resolved config of this run (file + overrides), written by stream-r1 train.\n"
                       + self.config.to_yaml(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def _open_logs(self) -> None:
        if self._csv is not None:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / "metrics.csv"
        new = not path.exists() or path.stat().st_size == 0
        self._csv = open(path, "a", newline="")
        self._csv_writer = csv.DictWriter(self._csv, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new:
            self._csv_writer.writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.output_dir / "tensorboard"))
        except ImportError:
            self._tb = None

    def _warn_once(self, key: str, message: str) -> None:
        import warnings

        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _log_sample(self) -> None:
        """``train.sample_every``: a sample video of the EMA student to TensorBoard (tag
        ``samples/ema``). TensorBoard encodes videos with moviepy (``moviepy.editor``, moviepy < 2);
        without it a one-time warning says so and the first, middle and last frames are logged
        as images (``samples/ema_frames``) instead."""
        import importlib

        every = self.config.train.sample_every
        if not every or self.step % every:
            return
        if self.vae is None:
            self._warn_once("sample-vae", "train.sample_every: no VAE to decode sample videos with; none are logged")
            return
        video = self.sample()
        if self.rank != 0:
            return
        self._open_logs()
        if self._tb is None:
            self._warn_once("sample-tb", "train.sample_every: TensorBoard is not installed; sample videos are not logged")
            return
        try:
            importlib.import_module("moviepy.editor")
            has_moviepy = True
        except Exception:  # not installed, or moviepy 2 (no moviepy.editor)
            has_moviepy = False
        if has_moviepy:
            self._tb.add_video("samples/ema", video, self.step, fps=SAMPLE_FPS)
        else:
            self._warn_once("sample-moviepy", "train.sample_every: TensorBoard's add_video needs moviepy < 2 "
                            "(pip install 'moviepy<2'); logging the first, middle and last frames of each sample "
                            "as images (samples/ema_frames) instead")
            frames = video[0, [0, video.shape[1] // 2, video.shape[1] - 1]]
            self._tb.add_images("samples/ema_frames", frames, self.step)
        self._tb.flush()

    def _postfix(self, logs: dict) -> dict[str, str]:
        """The progress bar's postfix: ``gen`` is the student's loss of this step when the
        student was updated; on critic-only steps the last one, marked with its step
        (``0.123@5``); absent before the first student update."""
        post = {"critic": f"{logs['critic_loss']:.4g}"}
        if "generator_loss" in logs:
            self._last_student = (int(logs["step"]), float(logs["generator_loss"]))
            post["gen"] = f"{logs['generator_loss']:.4g}"
        elif self._last_student is not None:
            post["gen"] = f"{self._last_student[1]:.4g}@{self._last_student[0]}"
        self.last_postfix = post
        return post

    def _log(self, logs: dict[str, float]) -> None:
        if self.rank != 0:
            return
        if self._csv is None:
            self._open_logs()
        self._csv_writer.writerow({k: logs.get(k, "") for k in CSV_COLUMNS})
        self._csv.flush()
        if self._tb is not None:
            for k, v in logs.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, int(logs["step"]))



__all__ = ["CSV_COLUMNS", "RUN_CONTROL_KEYS", "RunLogMixin", "SAMPLE_FPS"]
