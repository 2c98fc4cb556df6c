"""Stopping a run cleanly: :class:`TrainingInterrupted` (SIGTERM / SIGINT: the step finishes
and a checkpoint is saved), :class:`TrainingDiverged` (a NaN / inf loss, gradient norm or
weight, caught before it is checkpointed), and the trainer's checks for both
(:class:`GuardMixin`), agreed on by every rank."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist

from stream_r1_fast.training.sharding import distributed, flag_device

# The messages call the student "the generator", as its config keys do (optim.lr_generator).
DIVERGENCE_HINTS = {"student": "optim.lr_generator / dmd.guidance_scale (too large?)",
                    "critic": "optim.lr_critic (too large?), or a generator whose samples blew up "
                              "(optim.lr_generator / dmd.guidance_scale)"}


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM / SIGINT during :meth:`Trainer.fit`: the step finished and a checkpoint was saved."""

    def __init__(self, message: str, *, step: int, path: Path | None, signum: int):
        super().__init__(message)
        self.step, self.path, self.signum = step, path, signum

    def __str__(self) -> str:
        return self.args[0]


class TrainingDiverged(FloatingPointError):
    """A NaN / inf loss, gradient norm or weight; the message names the step and the config keys."""

    def __init__(self, message: str, *, step: int):
        super().__init__(message)
        self.step = step



class GuardMixin:
    """The stop / divergence checks of the Trainer (it provides ``student``, ``critic``,
    ``device``, ``rank``, ``step`` and ``_stop_signal``)."""

    def _step_flags(self, logs: dict) -> tuple[bool, str | None]:
        """(a stop was requested on some rank, what diverged or None) — the same on every rank."""
        local = [float(self._stop_signal is not None), 0.0, 0.0]
        for i, model in ((1, self.student), (2, self.critic)):
            finite = [torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all() for p in model.parameters()]
            local[i] = float(not bool(torch.stack(finite).all())) if finite else 0.0
        if distributed():
            flags = torch.tensor(local, device=flag_device(self.device))
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            local = flags.tolist()
        checks = (
            (local[1] > 0, "the generator's weights are", "student"),
            (not math.isfinite(logs.get("generator_loss", 0.0)), "generator_loss is", "student"),
            (not math.isfinite(logs.get("grad_norm_generator", 0.0)), "the generator's gradient norm is", "student"),
            (local[2] > 0, "the critic's weights are", "critic"),
            (not math.isfinite(logs.get("critic_loss", 0.0)), "critic_loss is", "critic"),
            (not math.isfinite(logs.get("grad_norm_critic", 0.0)), "the critic's gradient norm is", "critic"),
        )
        for bad, what, who in checks:
            if bad:
                return local[0] > 0, f"{what} not finite after training step {int(logs['step'])}; " \
                                     f"check {DIVERGENCE_HINTS[who]}"
        return local[0] > 0, None

    def _on_signal(self, signum, frame) -> None:
        import signal
        import sys

        if self._stop_signal is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop at once (the last checkpoint stays)
            return
        self._stop_signal = signum
        if self.rank == 0:
            print(f"\nstream-r1: {signal.Signals(signum).name} received: finishing step {self.step} and saving a "
                  "checkpoint (Ctrl-C again stops at once, without saving)", file=sys.stderr, flush=True)



__all__ = ["DIVERGENCE_HINTS", "GuardMixin", "TrainingDiverged", "TrainingInterrupted"]
