"""The toy demo on bad arguments: one line on stderr, exit status 2, before anything runs; it
keeps torch's thread count unless asked; ``--help`` gives the caption grammar."""

from __future__ import annotations

import pytest
import torch

import cli_helpers

from stream_r1_fast.toy import demo

PROG = "python -m stream_r1_fast.toy.demo: error: "


def run(argv, capsys):
    return cli_helpers.run(argv, capsys, main=demo.main)


@pytest.fixture
def nothing_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the demo generated a video before reporting the bad argument")

    monkeypatch.setattr(demo, "generate", refuse)


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--prompt", "a small red elephant moving left fast on a black background"], ["--prompt", "'elephant'", "vocabulary"]),
        (["--prompt", "a red circle"], ["--prompt", "on a <background> background"]),  # in vocabulary, not a caption
        (["--prompt", "a small red circle moving left fast on a pink background"], ["--prompt", "'pink'"]),
        (["--prompt", "a red small circle moving left fast on a black background"], ["--prompt", "unknown size 'red'"]),
        (["--prompt", "a small red circle moving left fast and a large red square moving up slow on a black background"],
         ["--prompt", "distinct colours"]),
        (["--prompt", "   "], ["--prompt is empty"]),
        (["--frames", "0"], ["--frames", "got 0"]),
        (["--frames", "-3"], ["--frames"]),
        (["--frames", "10"], ["--frames", "1 + 4k"]),
        (["--frames", "1"], ["--frames"]),  # the reward model needs more than one latent frame
        (["--threads", "0"], ["--threads must be >= 1"]),
        (["--threads", "-2"], ["--threads"]),
        (["--steps", "0"], ["--steps"]),
        (["--cfg", "nan"], ["--cfg"]),
        (["--seed", "-1"], ["--seed"]),
        (["--generator", "/nonexistent/student.safetensors"], ["--generator /nonexistent/student.safetensors"]),
    ],
)
def test_bad_arguments_are_one_line(capsys, nothing_runs, tmp_path, argv, names):
    rc, out, err = run([*argv, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PROG) and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, err)
    assert out == ""


@pytest.mark.parametrize("where", ["file", "proc"])
def test_unwritable_out(capsys, nothing_runs, tmp_path, where):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "demo" if where == "file" else "/proc/toy_demo_test"
    rc, _, err = run(["--out", str(out)], capsys)
    assert rc == 2 and err.startswith(f"{PROG}--out {out}: cannot write") and len(err.strip().splitlines()) == 1, err


def test_broken_generator_file(capsys, tmp_path):
    bad = tmp_path / "student.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    rc, _, err = run(["--generator", str(bad), "--frames", "5", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and err.startswith(f"{PROG}--generator {bad}: cannot load it") and "Traceback" not in err, err


def test_help_gives_the_caption_grammar(capsys):
    rc, out, _ = run(["--help"], capsys)
    assert rc == 0
    assert "a <size> <colour> <shape> moving <direction> <speed> [and a ...] on a <background> background" in out
    for word in ("small | large", "circle | square | triangle | diamond", "purple gradient"):
        assert word in out


def test_thread_count_is_torchs_unless_asked(capsys, tmp_path):
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 would
        assert run(["--frames", "5", "--out", str(tmp_path)], capsys)[0] == 0
        assert torch.get_num_threads() == 1  # not overridden by a default
    finally:
        torch.set_num_threads(previous)


def test_thread_count_is_printed(capsys, tmp_path, monkeypatch):
    previous = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(1)
        rc, out, _ = run(["--frames", "5", "--out", str(tmp_path)], capsys)
        assert rc == 0 and "on 1 CPU threads (torch's default; --threads to change)" in out
        rc, out, _ = run(["--frames", "5", "--out", str(tmp_path), "--threads", "2"], capsys)
        assert rc == 0 and "on 2 CPU threads (--threads)" in out and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
