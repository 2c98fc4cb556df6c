"""Atomic training checkpoints.

A checkpoint is a folder ``step_XXXXXXXX/`` under ``<output_dir>/checkpoints``:

* ``generator.safetensors``, ``generator_ema.safetensors``, ``critic.safetensors`` — weights;
* ``optimizers.pt`` — both optimiser state dicts (tensors and plain values only, so it loads
  with ``torch.load(weights_only=True)``);
* ``rng_rank{r}.pt`` — each rank's torch CPU / CUDA RNG states (uint8 tensors);
* ``state.json`` — step, the reward-balance history, python and numpy RNG states, the config;
* ``COMPLETE`` — written last.

Everything is written into ``step_XXXXXXXX.tmp/``, every file fsynced, the folder renamed (an
atomic rename on POSIX) and the parent fsynced: a run killed at any point leaves either a
complete checkpoint or a ``.tmp`` folder that :func:`latest_checkpoint` ignores.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    caller gathers full state dicts first); every rank writes its RNG file. ``barrier`` is
    called between phases (``torch.distributed.barrier`` under torchrun)."""
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
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    barrier()
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``root``, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp") and (p / MARKER).is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1])) if done else None


def load_checkpoint(path: str | Path, rank: int = 0) -> dict:
    """Everything of a complete checkpoint: ``weights`` {name: state dict}, ``optimizers``,
    ``state`` (state.json), ``rng`` (this rank's torch RNG states, or None)."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    weights = {p.stem: load_file(str(p)) for p in sorted(path.glob("*.safetensors"))}
    optimizers = torch.load(path / "optimizers.pt", weights_only=True)
    state = json.loads((path / "state.json").read_text())
    rng_path = path / f"rng_rank{rank}.pt"
    rng = torch.load(rng_path, weights_only=True) if rng_path.is_file() else None
    return {"weights": weights, "optimizers": optimizers, "state": state, "rng": rng}
