"""Damaged checkpoints: a resume verifies the newest one (manifest sizes and sha256, then every
file's contents) and falls back to the previous one that verifies, naming what it skipped and
why; stray folders are ignored; metrics.csv holds each step once after kills and resumes;
SIGTERM / Ctrl-C during fit save a checkpoint that a resume continues from."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stream_r1_fast.models.loading import CheckpointError
from stream_r1_fast.training import checkpoint as ckpt
from stream_r1_fast.training.trainer import CSV_COLUMNS, TrainingInterrupted
from training_helpers import tiny_config, tiny_trainer

def _config(out, **train):
    return tiny_config("dmd", str(out), train={"steps": 2, "save_every": 1, **train})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-step run with checkpoints step_1 and step_2 (copied by every test)."""
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    tiny_trainer(_config(out)).fit()
    return out


def _copy(run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _latest(out) -> Path:
    return out / "checkpoints" / "step_00000002"


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x10  # inside the tensor data: safetensors still parses it
    path.write_bytes(bytes(data))


class Pickled:
    """Not a tensor: ``torch.load(weights_only=True)`` refuses to build it."""


def _edit_state(folder: Path, **changes) -> None:
    state = json.loads((folder / "state.json").read_text())
    for k, v in changes.items():
        if v is None:
            state.pop(k)
        else:
            state[k] = v
    (folder / "state.json").write_text(json.dumps(state))


CORRUPTIONS = {
    "truncated generator": lambda d: _truncate(d / "generator.safetensors"),
    "bit-flipped generator": lambda d: _flip(d / "generator.safetensors"),
    "truncated optimizers": lambda d: _truncate(d / "optimizers.pt"),
    "missing critic": lambda d: (d / "critic.safetensors").unlink(),
    "garbage state.json": lambda d: (d / "state.json").write_text("{not json at all"),
    "negative step": lambda d: _edit_state(d, step=-1),
    "missing rng": lambda d: (d / "rng_rank0.pt").unlink(),
    "garbage manifest": lambda d: (d / ckpt.MANIFEST).write_text("\x00\x01garbage"),
    "refused pickle": lambda d: torch.save({"generator": Pickled()}, d / "optimizers.pt"),
}
# What the skip message must name, with the manifest in place (it catches the change first)...
BY_MANIFEST = {
    "truncated generator": r"generator\.safetensors: \d+ bytes, manifest\.json says \d+",
    "bit-flipped generator": r"generator\.safetensors: sha256 differs",
    "truncated optimizers": r"optimizers\.pt: \d+ bytes, manifest\.json says",
    "missing critic": r"critic\.safetensors: missing",
    "garbage state.json": r"state\.json: \d+ bytes, manifest\.json says|state\.json: sha256 differs",
    "negative step": r"state\.json: (\d+ bytes, manifest\.json says|sha256 differs)",
    "missing rng": r"rng_rank0\.pt: missing, so the resume would not be exact .*resume_inexact",
    "garbage manifest": r"manifest\.json: unreadable manifest",
    "refused pickle": r"optimizers\.pt: (\d+ bytes, manifest\.json says|sha256 differs)",
}
# ... and with the manifest re-written over the damaged files (the content checks alone).
BY_CONTENT = {
    "truncated generator": r"generator\.safetensors: cannot read as safetensors",
    "truncated optimizers": r"optimizers\.pt: cannot read with torch\.load\(weights_only=True\)",
    "missing critic": r"missing critic\.safetensors",
    "garbage state.json": r"state\.json: not valid JSON",
    "negative step": r"state\.json: 'step' must be an int >= 0, got -1",
    "missing rng": r"rng_rank0\.pt: missing, so the resume would not be exact .*resume_inexact",
    "refused pickle": r"optimizers\.pt: cannot read with torch\.load\(weights_only=True\) \(UnpicklingError",
}


def _resume_expecting_fallback(out, reason: str, **train):
    trainer = tiny_trainer(_config(out, **train))
    with pytest.warns(ckpt.CheckpointWarning) as record:
        path = trainer.resume()
    assert path is not None and path.name == "step_00000001"
    assert trainer.step == 1
    messages = [str(w.message) for w in record]
    skipped = [m for m in messages if m.startswith("skipping checkpoint") and "step_00000002" in m]
    assert len(skipped) == 1, messages
    assert re.search(reason, skipped[0]), skipped[0]
    assert [p.name for p, _ in trainer.resume_skipped] == ["step_00000002"]
    return trainer


@pytest.mark.parametrize("fault", sorted(CORRUPTIONS))
def test_damaged_latest_checkpoint_falls_back_to_the_previous(run, tmp_path, fault):
    out = _copy(run, tmp_path)
    CORRUPTIONS[fault](_latest(out))
    _resume_expecting_fallback(out, BY_MANIFEST[fault])


@pytest.mark.parametrize("fault", sorted(BY_CONTENT))
def test_damage_under_a_consistent_manifest_is_still_caught(run, tmp_path, fault):
    out = _copy(run, tmp_path)
    CORRUPTIONS[fault](_latest(out))
    ckpt.write_manifest(_latest(out), 2)  # the manifest now agrees with the damaged files
    assert ckpt.verify_manifest(_latest(out))
    _resume_expecting_fallback(out, BY_CONTENT[fault])


@pytest.mark.parametrize("change, reason", [
    ({"step": 1}, r"'step' is 1 but the folder is step 2"),
    ({"step": "2"}, r"'step' must be an int >= 0, got '2'"),
    ({"exit_rng": None}, r"missing keys \['exit_rng'\]"),
    ({"host_rng": {"python": [1]}}, r"'host_rng' must hold"),
    ({"exit_rng": [3, [1, 2], None]}, r"bad RNG state"),
    ({"weighting": {"balance": {"history": "x"}}}, r"bad 'weighting' state"),
])
def test_bad_state_json_is_skipped(run, tmp_path, change, reason):
    out = _copy(run, tmp_path)
    _edit_state(_latest(out), **change)
    ckpt.write_manifest(_latest(out), 2)
    _resume_expecting_fallback(out, reason)


def test_fallback_resume_is_exact(run, tmp_path):
    """Falling back to step 1 and training one step gives the uninterrupted run's step 2."""
    out = _copy(run, tmp_path)
    _truncate(_latest(out) / "generator.safetensors")
    trainer = _resume_expecting_fallback(out, BY_MANIFEST["truncated generator"])
    trainer.fit()
    expected = load_file(str(_latest(run) / "generator.safetensors"))
    got = load_file(str(_latest(out) / "generator.safetensors"))
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    assert ckpt.verify_manifest(_latest(out))


def test_stray_folders_are_ignored(run, tmp_path):
    out = _copy(run, tmp_path)
    root = out / "checkpoints"
    (root / "step_final").mkdir()
    (root / "step_final" / "COMPLETE").write_text("final")
    (root / "step_abc.tmp").mkdir()
    (root / "step_00000009.tmp").mkdir()
    (root / "junk").mkdir()
    (root / "step_00000007").write_text("a file, not a folder")
    trainer = tiny_trainer(_config(out))
    with pytest.warns(ckpt.CheckpointWarning, match="ignoring .*step_final") as record:
        assert trainer.resume().name == "step_00000002"
    assert trainer.step == 2 and trainer.resume_skipped == []
    assert not any("skipping" in str(w.message) for w in record)


def test_missing_rng_resumes_inexactly_only_when_asked(run, tmp_path):
    out = _copy(run, tmp_path)
    for step in (1, 2):
        (out / "checkpoints" / f"step_{step:08d}" / "rng_rank0.pt").unlink()
    with pytest.raises(CheckpointError, match=r"no checkpoint under .* verifies .*rng_rank0\.pt: missing"):
        tiny_trainer(_config(out)).resume()
    for trainer, kwargs in ((tiny_trainer(_config(out, resume_inexact=True)), {}),
                            (tiny_trainer(_config(out)), {"inexact": True})):
        with pytest.warns(ckpt.CheckpointWarning, match="resuming inexactly"):
            assert trainer.resume(**kwargs).name == "step_00000002"
        assert trainer.step == 2


def test_no_checkpoint_verifies_is_an_error_not_a_fresh_start(run, tmp_path):
    out = _copy(run, tmp_path)
    for step in (1, 2):
        _flip(out / "checkpoints" / f"step_{step:08d}" / "critic.safetensors")
    trainer = tiny_trainer(_config(out))
    with pytest.warns(ckpt.CheckpointWarning), pytest.raises(CheckpointError, match="--no-resume"):
        trainer.resume()
    assert trainer.step == 0


def test_old_checkpoint_without_manifest_is_accepted_with_a_warning(run, tmp_path):
    out = _copy(run, tmp_path)
    (_latest(out) / ckpt.MANIFEST).unlink()
    trainer = tiny_trainer(_config(out))
    with pytest.warns(ckpt.CheckpointWarning, match="no manifest.json .* not checksummed"):
        assert trainer.resume().name == "step_00000002"
    # An old checkpoint whose files do not load is skipped like any other.
    _truncate(_latest(out) / "critic.safetensors")
    _resume_expecting_fallback(out, r"critic\.safetensors: cannot read as safetensors")


def test_manifest_lists_every_file_with_size_and_sha256(run):
    folder = _latest(run)
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())
    assert manifest["format"] == "stream-r1-checkpoint" and manifest["version"] == 1 and manifest["step"] == 2
    names = sorted(p.name for p in folder.iterdir() if p.name != ckpt.MANIFEST)
    assert sorted(manifest["files"]) == names
    assert {"generator.safetensors", "generator_ema.safetensors", "critic.safetensors", "optimizers.pt",
            "state.json", "rng_rank0.pt", "COMPLETE"} <= set(names)
    for name, entry in manifest["files"].items():
        assert entry["size"] == (folder / name).stat().st_size
        assert entry["sha256"] == ckpt.sha256_file(folder / name)


# ---------------------------------------------------------------- metrics.csv after kills


def _metric_rows(out) -> list[dict]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _kill_at(step):
    def boom(logs):
        if logs["step"] == step:  # after the row is logged, before the step's checkpoint
            raise KeyboardInterrupt
    return boom


def test_metrics_have_each_step_once_after_kills_and_resumes(tmp_path):
    steps = dict(steps=5, save_every=2)
    full = tmp_path / "full"
    tiny_trainer(_config(full, **steps)).fit()
    out = tmp_path / "killed"
    for kill in (2, 3):  # the last checkpoint is step 2 both times: rows 2 (and 3) are logged twice
        trainer = tiny_trainer(_config(out, **steps))
        trainer.resume()
        with pytest.raises(KeyboardInterrupt):
            trainer.fit(on_step=_kill_at(kill))
    with open(out / "metrics.csv", "a") as f:
        f.write("4,2,0.1")  # a row cut short by a kill
    trainer = tiny_trainer(_config(out, **steps))
    assert trainer.resume().name == "step_00000002"
    trainer.fit()
    rows, ref = _metric_rows(out), _metric_rows(full)
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4"]
    for a, b in zip(ref, rows):  # the same values as the uninterrupted run, time aside
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    assert (out / "metrics.csv").read_text().startswith("step,exit_step,")


def test_metrics_of_an_older_layout_are_rewritten_under_todays_columns(run, tmp_path):
    out = _copy(run, tmp_path)
    (out / "metrics.csv").write_text("step,critic_loss,old_column\n0,0.5,x\n1,0.25,y\n")
    trainer = tiny_trainer(_config(out))
    assert trainer.resume().name == "step_00000002"
    trainer.fit(steps=3)
    rows = _metric_rows(out)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [r["step"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["critic_loss"] == "0.5" and rows[1]["critic_loss"] == "0.25" and rows[0]["exit_step"] == ""
    assert float(rows[2]["critic_loss"]) > 0


# ---------------------------------------------------------------- signals


def test_ctrl_c_finishes_the_step_saves_and_restores_the_handler(tmp_path):
    out = tmp_path / "run"
    trainer = tiny_trainer(_config(out, steps=50, save_every=100))
    before = signal.getsignal(signal.SIGINT)

    def interrupt(logs):
        if logs["step"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match=r"^interrupted at step 2; checkpoint saved to .*step_00000002$") as exc:
        trainer.fit(on_step=interrupt)
    assert exc.value.signum == signal.SIGINT and exc.value.step == 2
    assert signal.getsignal(signal.SIGINT) is before
    assert ckpt.verify_manifest(out / "checkpoints" / "step_00000002")
    resumed = tiny_trainer(_config(out, steps=3, save_every=100))
    assert resumed.resume().name == "step_00000002"
    assert [lg["step"] for lg in resumed.fit()] == [2]


def _train_until_signalled(out: str) -> None:
    """The forked child: a long fit; exits 128 + the signal once fit saved and stopped."""
    torch.set_num_threads(1)
    try:
        tiny_trainer(tiny_config("dmd", out, train={"steps": 500, "save_every": 1000})).fit()
    except TrainingInterrupted as exc:
        os._exit(128 + exc.signum)
    os._exit(0)


def test_sigterm_in_a_subprocess_saves_a_checkpoint_that_resumes(tmp_path, capfd):
    import multiprocessing

    out = tmp_path / "run"
    child = multiprocessing.get_context("fork").Process(target=_train_until_signalled, args=(str(out),))
    child.start()
    try:
        deadline = time.monotonic() + 120
        metrics = out / "metrics.csv"
        while time.monotonic() < deadline and child.is_alive():
            if metrics.is_file() and metrics.read_text().count("\n") >= 2:  # header + a finished step
                break
            time.sleep(0.05)
        assert child.is_alive()
        os.kill(child.pid, signal.SIGTERM)
        child.join(120)
    finally:
        if child.is_alive():
            child.kill()
    err = capfd.readouterr().err
    assert child.exitcode == 128 + signal.SIGTERM, err
    m = re.search(r"interrupted at step (\d+); checkpoint saved to (\S+)", err)
    assert m, err
    step, path = int(m.group(1)), Path(m.group(2))
    assert step >= 1 and path == out / "checkpoints" / f"step_{step:08d}"
    assert ckpt.verify_manifest(path)
    resumed = tiny_trainer(_config(out, steps=step + 1, save_every=1000))
    assert resumed.resume() == path and resumed.step == step
    assert [lg["step"] for lg in resumed.fit()] == [step]
    assert [int(r["step"]) for r in _metric_rows(out)] == list(range(step + 1))
