"""Atomic, checksummed training checkpoints.

A checkpoint is a folder ``step_XXXXXXXX/`` under ``<output_dir>/checkpoints``:

* ``generator.safetensors``, ``generator_ema.safetensors``, ``critic.safetensors`` — weights;
* ``optimizers.pt`` — both optimiser state dicts (tensors and plain values only, so it loads
  with ``torch.load(weights_only=True)``);
* ``rng_rank{r}.pt`` — each rank's torch CPU / CUDA RNG states (uint8 tensors);
* ``state.json`` — step, the reward-balance history, python and numpy RNG states, the config;
* ``COMPLETE`` — the step, written after everything above;
* ``manifest.json`` — written last: ``{"format": "stream-r1-checkpoint", "version": 1,
  "step": N, "files": {name: {"size": bytes, "sha256": hex}}}`` for every other file of the
  folder (itself written to a temporary name, fsynced and renamed).

Everything is written into ``step_XXXXXXXX.tmp/``, every file fsynced, the folder renamed (an
atomic rename on POSIX) and the parent fsynced: a run killed at any point leaves either a
complete checkpoint or a ``.tmp`` folder that the readers ignore.

Reading (:func:`load_checkpoint`) verifies the folder before trusting it: the manifest's sizes
and sha256 checksums, then that every file loads (safetensors, ``torch.load(weights_only=True)``,
JSON), that ``state.json`` holds the expected keys and a step (an int >= 0) equal to the
folder's, that the weights are finite, and that this rank's RNG file is there (unless the
caller accepts an inexact resume). Any failure raises :class:`CorruptCheckpoint` saying which
file and why; :func:`checkpoint_candidates` lists the folders to try, newest first, so a resume
can fall back to the newest checkpoint that verifies (see ``Trainer.resume``).

Checkpoints written before manifests existed (no ``manifest.json``) are accepted when every
file loads and passes the checks above, with a :class:`CheckpointWarning` that their bytes are
not checksummed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from stream_r1_fast.models.loading import CheckpointError

MARKER = "COMPLETE"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "stream-r1-checkpoint"
MANIFEST_VERSION = 1
STEP_DIR = re.compile(r"^step_(\d+)$")
BASE_STATE_KEYS = ("step", "world_size", "host_rng")


class CorruptCheckpoint(CheckpointError):
    """A checkpoint folder that fails verification; the message names the file and the reason."""


class CheckpointWarning(UserWarning):
    """A checkpoint skipped or accepted with a caveat (no manifest, no RNG file)."""


class NonFiniteWeights(ValueError):
    """Refusal to write a checkpoint whose weights hold NaN or inf values."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 1 << 23) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"torch_cuda_{i}"] = s
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def host_rng_state() -> dict:
    """python and numpy RNG states as JSON values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def set_host_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def first_nonfinite(sd: dict[str, torch.Tensor]) -> str | None:
    """The first key of ``sd`` whose floating-point tensor holds NaN or inf, or None."""
    for key, value in sd.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def write_manifest(folder: str | Path, step: int) -> Path:
    """Checksum every file of ``folder`` (but the manifest) into ``manifest.json``, atomically."""
    folder = Path(folder)
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name not in (MANIFEST, MANIFEST + ".tmp"):
            files[p.name] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "step": step,
                               "files": files}, indent=1))
    _fsync_file(tmp)
    os.replace(tmp, folder / MANIFEST)
    _fsync_dir(folder)
    return folder / MANIFEST


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    weights: dict[str, dict[str, torch.Tensor]] | None,
    optimizers: dict | None,
    state: dict | None,
    rank: int = 0,
    world_size: int = 1,
    barrier=lambda: None,
) -> Path:
    """Write checkpoint ``step`` atomically. Rank 0 writes weights, optimisers and state (the
    caller gathers full state dicts first); every rank writes its RNG file; rank 0 writes the
    marker and the manifest last. ``barrier`` is called between phases
    (``torch.distributed.barrier`` under torchrun). Raises :class:`NonFiniteWeights` (before
    writing anything) if a weight holds NaN or inf."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be an int >= 0, got {step!r}")
    for name, sd in (weights or {}).items():
        bad = first_nonfinite(sd)
        if bad is not None:
            raise NonFiniteWeights(f"refusing to save checkpoint step {step}: {name} weight {bad!r} is not finite")
    root = Path(root)
    final = checkpoint_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    rng_path = tmp / f"rng_rank{rank}.pt"
    torch.save(rng_state(), rng_path)
    _fsync_file(rng_path)
    if rank == 0:
        for name, sd in (weights or {}).items():
            path = tmp / f"{name}.safetensors"
            save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(path))
            _fsync_file(path)
        opt_path = tmp / "optimizers.pt"
        torch.save(optimizers or {}, opt_path)
        _fsync_file(opt_path)
        meta = {"step": step, "world_size": world_size, "host_rng": host_rng_state(), **(state or {})}
        (tmp / "state.json").write_text(json.dumps(meta))
        _fsync_file(tmp / "state.json")
    barrier()
    if rank == 0:
        (tmp / MARKER).write_text(str(step))
        _fsync_file(tmp / MARKER)
        write_manifest(tmp, step)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    barrier()
    return final


def checkpoint_candidates(root: str | Path) -> tuple[list[Path], list[Path]]:
    """(``step_N`` folders under ``root``, newest first; other ``step_*`` entries that are not
    checkpoints, e.g. ``step_final``). ``.tmp`` folders (interrupted saves) are in neither."""
    root = Path(root)
    if not root.is_dir():
        return [], []
    found, ignored = [], []
    for p in root.iterdir():
        if p.name.endswith(".tmp") and STEP_DIR.match(p.name[:-4]):
            continue
        m = STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
        elif p.name.startswith("step_"):
            ignored.append(p)
    found.sort(key=lambda sp: (sp[0], sp[1].name), reverse=True)
    return [p for _, p in found], sorted(ignored)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The ``step_N`` folder with the highest step that has its ``COMPLETE`` marker, or None
    (unverified: :func:`load_checkpoint` verifies)."""
    for p in checkpoint_candidates(root)[0]:
        if (p / MARKER).is_file():
            return p
    return None


def verify_manifest(path: str | Path, may_miss=lambda name: False) -> bool:
    """Check ``path``'s files against its manifest; False if it has none (an old checkpoint).
    Raises :class:`CorruptCheckpoint` naming the first file that differs; listed files for
    which ``may_miss(name)`` is true may be absent."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        return False
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError("not a checkpoint manifest")
        entries = [(str(name), int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpoint(f"{mpath}: unreadable manifest ({type(exc).__name__}: {exc})") from None
    entries = [e for e in entries if (path / e[0]).is_file() or not may_miss(e[0])]
    for name, size, digest in entries:
        f = path / name
        if not f.is_file():
            raise CorruptCheckpoint(f"{f}: missing (listed in {MANIFEST})")
        actual = f.stat().st_size
        if actual != size:
            raise CorruptCheckpoint(f"{f}: {actual} bytes, {MANIFEST} says {size} (truncated or overwritten)")
    for name, size, digest in entries:
        if sha256_file(path / name) != digest:
            raise CorruptCheckpoint(f"{path / name}: sha256 differs from {MANIFEST} (corrupted bytes)")
    return True


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError (truncated, empty, huge header), OSError
        raise CorruptCheckpoint(f"{path}: cannot read as safetensors ({type(exc).__name__}: {exc})") from None


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, refused pickle
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CorruptCheckpoint(
            f"{path}: cannot read with torch.load(weights_only=True) ({type(exc).__name__}: {first})"
        ) from None


def check_state(state, step: int, path: Path, required: tuple[str, ...] = ()) -> dict:
    """``state.json``'s contents: a dict with ``BASE_STATE_KEYS`` and ``required``, ``step`` an
    int >= 0 equal to the folder's ``step``."""
    where = path / "state.json"
    if not isinstance(state, dict):
        raise CorruptCheckpoint(f"{where}: expected a JSON object, got {type(state).__name__}")
    missing = [k for k in (*BASE_STATE_KEYS, *required) if k not in state]
    if missing:
        raise CorruptCheckpoint(f"{where}: missing keys {missing}")
    s = state["step"]
    if isinstance(s, bool) or not isinstance(s, int) or s < 0:
        raise CorruptCheckpoint(f"{where}: 'step' must be an int >= 0, got {s!r}")
    if s != step:
        raise CorruptCheckpoint(f"{where}: 'step' is {s} but the folder is step {step}")
    host = state["host_rng"]
    if not (isinstance(host, dict) and {"python", "numpy"} <= host.keys()):
        raise CorruptCheckpoint(f"{where}: 'host_rng' must hold 'python' and 'numpy' states")
    return state


def load_checkpoint(
    path: str | Path,
    rank: int = 0,
    *,
    require_rng: bool = True,
    required_weights: tuple[str, ...] = (),
    required_state: tuple[str, ...] = (),
    required_optimizers: tuple[str, ...] = (),
) -> dict:
    """Everything of a verified checkpoint: ``weights`` {name: state dict}, ``optimizers``,
    ``state`` (state.json), ``rng`` (this rank's torch RNG states, or None when it is missing
    and ``require_rng`` is False), ``notes`` (caveats: no manifest, no RNG file).

    Raises :class:`CorruptCheckpoint` naming the file when the folder fails verification (see
    the module docstring); ``required_*`` name what the caller needs in it."""
    path = Path(path)
    m = STEP_DIR.match(path.name)
    if not m:
        raise CorruptCheckpoint(f"{path}: not a step_N checkpoint folder")
    step = int(m.group(1))
    if not (path / MARKER).is_file():
        raise CorruptCheckpoint(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    rng_path = path / f"rng_rank{rank}.pt"
    if require_rng and not rng_path.is_file():
        raise CorruptCheckpoint(
            f"{rng_path}: missing, so the resume would not be exact (set train.resume_inexact: true, "
            "or pass --resume-inexact, to resume without it)"
        )
    notes = []
    if not verify_manifest(path, lambda name: not require_rng and re.fullmatch(r"rng_rank\d+\.pt", name)):
        notes.append(f"{path} has no {MANIFEST} (written before manifests): accepted because every file loads, "
                     "but its bytes are not checksummed")
    files = {p.stem: p for p in sorted(path.glob("*.safetensors"))}
    missing = [f"{n}.safetensors" for n in required_weights if n not in files]
    if missing:
        raise CorruptCheckpoint(f"{path}: missing {', '.join(missing)}")
    weights = {}
    for name, p in files.items():
        weights[name] = sd = _load_safetensors(p)
        bad = first_nonfinite(sd)
        if bad is not None:
            raise CorruptCheckpoint(f"{p}: weight {bad!r} holds NaN or inf values")
    opt_path = path / "optimizers.pt"
    if not opt_path.is_file():
        raise CorruptCheckpoint(f"{opt_path}: missing")
    optimizers = _torch_load(opt_path)
    if not isinstance(optimizers, dict) or any(k not in optimizers for k in required_optimizers):
        have = sorted(optimizers) if isinstance(optimizers, dict) else type(optimizers).__name__
        raise CorruptCheckpoint(f"{opt_path}: expected optimiser states {list(required_optimizers)}, got {have}")
    state_path = path / "state.json"
    if not state_path.is_file():
        raise CorruptCheckpoint(f"{state_path}: missing")
    try:
        state = json.loads(state_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptCheckpoint(f"{state_path}: not valid JSON ({exc})") from None
    check_state(state, step, path, required_state)
    rng = None
    if rng_path.is_file():
        rng = _torch_load(rng_path)
        if not (isinstance(rng, dict) and isinstance(rng.get("torch_cpu"), torch.Tensor)
                and rng["torch_cpu"].dtype == torch.uint8):
            raise CorruptCheckpoint(f"{rng_path}: expected {{'torch_cpu': uint8 tensor, ...}}")
    else:
        notes.append(f"{rng_path} is missing: resuming inexactly (the torch RNG state is not restored)")
    return {"weights": weights, "optimizers": optimizers, "state": state, "rng": rng, "notes": notes}


def warn(message: str) -> None:
    warnings.warn(message, CheckpointWarning, stacklevel=3)


__all__ = [
    "CheckpointWarning", "CorruptCheckpoint", "MANIFEST", "MARKER", "NonFiniteWeights", "checkpoint_candidates",
    "checkpoint_dir", "latest_checkpoint", "load_checkpoint", "save_checkpoint", "verify_manifest",
    "write_manifest",
]
