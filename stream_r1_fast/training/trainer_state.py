"""Checkpoint save / load / resume of a :class:`~stream_r1_fast.training.trainer.Trainer`
(:class:`CheckpointMixin`), on top of the file format of
:mod:`~stream_r1_fast.training.checkpoint`: full (unsharded) state dicts of the student, its
EMA and the critic, both optimisers, the weighting's balance history and every RNG, with
verification before anything is loaded and ``train.keep_last`` retention."""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.distributed as dist

import stream_r1_fast.training.checkpoint as ckpt
from stream_r1_fast.training.sharding import distributed, flag_device, full_tensor

# On-disk names: the checkpoint's files and optimiser entries call the student "generator"
# (generator.safetensors, generator_ema.safetensors, optimizers.pt["generator"]); kept so that
# existing runs resume.
STUDENT_FILE, STUDENT_EMA_FILE = "generator", "generator_ema"
CHECKPOINT_WEIGHTS = (STUDENT_FILE, STUDENT_EMA_FILE, "critic")


def _py_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _py_unstate(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])



class CheckpointMixin:
    """The checkpoint methods of the Trainer (it provides ``student``, ``critic``, ``ema``,
    ``student_opt``, ``critic_opt``, ``weighting``, ``exit_rng``, ``step``, ``rank``, ``world``,
    ``device``, ``config``, ``output_dir`` and ``_verified``)."""

    def _full_state(self, model) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _full_optim(self, model, opt) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save(self) -> Path:
        """Checkpoint the current step (see :mod:`~stream_r1_fast.training.checkpoint`). Refuses
        (:class:`~stream_r1_fast.training.checkpoint.NonFiniteWeights`) to write NaN / inf weights."""
        weights = {
            STUDENT_FILE: self._full_state(self.student),
            STUDENT_EMA_FILE: {n: full_tensor(t).cpu() for n, t in self.ema.items()},
            "critic": self._full_state(self.critic),
        }
        optimizers = {STUDENT_FILE: self._full_optim(self.student, self.student_opt),
                      "critic": self._full_optim(self.critic, self.critic_opt)}
        state = {"weighting": self.weighting.state_dict(), "exit_rng": _py_state(self.exit_rng),
                 "config": self.config.to_dict()}
        path = ckpt.save_checkpoint(
            self.output_dir / "checkpoints", self.step, weights=weights if self.rank == 0 else None,
            optimizers=optimizers if self.rank == 0 else None, state=state, rank=self.rank, world_size=self.world,
            barrier=dist.barrier if distributed() else (lambda: None),
        )
        self._verified.discard(str(path))  # a rewritten folder is checked afresh
        self.prune_checkpoints()
        return path

    def _checkpoint_verifies(self, path: Path) -> bool:
        """A complete checkpoint whose manifest matches its files (sizes and sha256; a folder
        written before manifests counts when it has its marker). Cached per folder: each
        checkpoint is checksummed once, the first time retention has to decide on it."""
        if str(path) in self._verified:
            return True
        try:
            ok = (path / ckpt.MARKER).is_file() and (ckpt.verify_manifest(path) or (path / "state.json").is_file())
        except ckpt.CorruptCheckpoint as exc:
            ckpt.warn(f"checkpoint {path} does not verify ({exc}); it does not count as the newest good one")
            return False
        if ok:
            self._verified.add(str(path))
        return ok

    def prune_checkpoints(self) -> list[Path]:
        """``train.keep_last`` retention (rank 0; 0 keeps everything): deletes the ``step_N``
        folders beyond the newest ``keep_last``, never the newest one that verifies (so with a
        corrupt newest checkpoint the previous good one stays). Called by :meth:`save` once the
        new checkpoint is complete. Other entries (``step_final``, ``.tmp``) are left alone.
        Returns the folders deleted."""
        import shutil

        keep = self.config.train.keep_last
        if keep == 0 or self.rank != 0:
            return []
        candidates, _ = ckpt.checkpoint_candidates(self.output_dir / "checkpoints")
        if len(candidates) <= keep:
            return []
        kept = set(candidates[:keep])
        for path in candidates:
            if self._checkpoint_verifies(path):
                kept.add(path)
                break
        else:
            return []  # nothing verifies: delete nothing (a resume will say why)
        removed = []
        for path in candidates:
            if path not in kept:
                shutil.rmtree(path, ignore_errors=True)
                self._verified.discard(str(path))
                removed.append(path)
        return removed

    def _read_checkpoint(self, path: Path, inexact: bool) -> dict:
        """Read and verify ``path`` (no trainer state changes); CheckpointError says why not."""
        from stream_r1_fast.models.loading import check_state_dict

        data = ckpt.load_checkpoint(path, self.rank, require_rng=not inexact, required_weights=CHECKPOINT_WEIGHTS,
                                    required_state=("weighting", "exit_rng"),
                                    required_optimizers=(STUDENT_FILE, "critic"))
        for name, model in ((STUDENT_FILE, self.student), ("critic", self.critic)):
            check_state_dict(model, data["weights"][name], source=str(path / f"{name}.safetensors"))
        ema, params = data["weights"][STUDENT_EMA_FILE], dict(self.student.named_parameters())
        if set(ema) != set(params) or any(tuple(ema[n].shape) != tuple(p.shape) for n, p in params.items()):
            raise ckpt.CorruptCheckpoint(f"{path / (STUDENT_EMA_FILE + '.safetensors')}: does not match the generator's "
                                         "parameters (names or shapes)")
        state = data["state"]
        try:  # on scratch RNGs: a bad state must not half-load
            random.Random().setstate(_py_unstate(state["exit_rng"]))
            random.Random().setstate(_py_unstate(state["host_rng"]["python"]))
            host = state["host_rng"]["numpy"]
            import numpy as np

            np.random.RandomState().set_state((host[0], np.asarray(host[1], dtype=np.uint32), *host[2:]))
        except (TypeError, ValueError, IndexError, OverflowError) as exc:
            raise ckpt.CorruptCheckpoint(f"{path / 'state.json'}: bad RNG state ({exc})") from None
        balance = getattr(self.weighting, "balance", None)
        if balance is not None:
            import copy

            try:
                copy.deepcopy(balance).load_state_dict(state["weighting"]["balance"])
            except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
                raise ckpt.CorruptCheckpoint(f"{path / 'state.json'}: bad 'weighting' state "
                                             f"({type(exc).__name__}: {exc})") from None
        return data

    def _apply(self, path: Path, data: dict) -> None:
        from stream_r1_fast.models.loading import CheckpointError

        try:
            self._apply_checkpoint(path, data)
        except Exception as exc:
            raise CheckpointError(f"{path} verified but could not be loaded into the trainer "
                                  f"({type(exc).__name__}: {exc})") from exc

    def _apply_checkpoint(self, path: Path, data: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, set_model_state_dict, set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        for name, model in ((STUDENT_FILE, self.student), ("critic", self.critic)):
            set_model_state_dict(model, data["weights"][name], options=opts)
        set_optimizer_state_dict(self.student, self.student_opt, data["optimizers"][STUDENT_FILE], options=opts)
        set_optimizer_state_dict(self.critic, self.critic_opt, data["optimizers"]["critic"], options=opts)
        ema = data["weights"][STUDENT_EMA_FILE]
        for n, p in self.student.named_parameters():
            full = ema[n].to(self.device, torch.float32)
            if hasattr(p, "device_mesh"):
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full, p.device_mesh, p.placements)
            self.ema[n] = full
        state = data["state"]
        self.step = int(state["step"])
        self.weighting.load_state_dict(state["weighting"])
        self.exit_rng.setstate(_py_unstate(state["exit_rng"]))
        ckpt.set_host_rng_state(state["host_rng"])
        if data["rng"] is not None:
            ckpt.set_rng_state(data["rng"])

    def _inexact(self, inexact: bool | None) -> bool:
        return bool(self.config.train.resume_inexact if inexact is None else inexact)

    def load(self, path: str | Path, *, inexact: bool | None = None) -> None:
        """Load checkpoint ``path`` after verifying it (raises CheckpointError naming the file
        if it fails). ``inexact`` (default ``train.resume_inexact``): accept a missing RNG file."""
        path = Path(path)
        data = self._read_checkpoint(path, self._inexact(inexact))
        if self.rank == 0:
            for note in data["notes"]:
                ckpt.warn(note)
        self._apply(path, data)

    def resume(self, *, inexact: bool | None = None) -> Path | None:
        """Load the newest checkpoint of the output folder that verifies, if any.

        Newer ones that fail verification (manifest size / sha256, unreadable files, a bad
        ``state.json``, a missing RNG file unless ``inexact`` / ``train.resume_inexact``) are
        skipped with a :class:`~stream_r1_fast.training.checkpoint.CheckpointWarning` naming the
        folder and the reason (also in ``self.resume_skipped``); folders that are not ``step_N``
        (``step_final``...) are ignored. Raises CheckpointError when checkpoints exist but none
        verifies (rather than silently starting over)."""
        from stream_r1_fast.models.loading import CheckpointError

        inexact = self._inexact(inexact)
        root = self.output_dir / "checkpoints"
        candidates, ignored = ckpt.checkpoint_candidates(root)
        if self.rank == 0:
            for p in ignored:
                ckpt.warn(f"ignoring {p}: not a checkpoint folder (step_N)")
        self.resume_skipped = []
        for path in candidates:
            reason = None
            try:
                data = self._read_checkpoint(path, inexact)
            except CheckpointError as exc:
                reason = str(exc)
            if distributed():  # every rank must take the same checkpoint
                flag = torch.tensor([0.0 if reason is None else 1.0], device=flag_device(self.device))
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                if reason is None and float(flag) > 0:
                    reason = "it does not verify on every rank"
            if reason is not None:
                self.resume_skipped.append((path, reason))
                if self.rank == 0 or "every rank" not in reason:
                    ckpt.warn(f"skipping checkpoint {path}: {reason}; trying the previous one")
                continue
            if self.rank == 0:
                for note in data["notes"]:
                    ckpt.warn(note)
            self._apply(path, data)
            return path
        if candidates:
            why = "; ".join(f"{p.name}: {r}" for p, r in self.resume_skipped)
            raise CheckpointError(f"no checkpoint under {root} verifies ({why}); repair or move them away, "
                                  "or start fresh with --no-resume")
        return None



__all__ = ["CHECKPOINT_WEIGHTS", "CheckpointMixin"]
