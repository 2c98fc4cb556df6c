"""``stream-r1 generate`` on hostile input: every error is one line naming the option, exit
status 2, no traceback (``--debug`` re-raises); everything that can be checked without the
weights is checked before the model loads; a failing mp4 write is a failure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from cli_helpers import model_dir, no_loading, run  # noqa: F401  (fixtures)
from tiny_wan import tiny_transformer

from stream_r1_fast import cli
from stream_r1_fast.cli import main
from stream_r1_fast.inference import StreamingPipeline

pytest.importorskip("imageio_ffmpeg")

ARGS = ["--height", "16", "--width", "24", "--dtype", "fp32", "--quiet"]


def generate(model_dir, tmp_path, *extra, prompt=("--prompt", "a red circle")):
    argv = ["generate", "--model", str(model_dir), *prompt, "--seconds", "1", "--output", str(tmp_path / "o.mp4"),
            "--device", "cpu", *ARGS]
    return argv + list(extra)  # later options win


def assert_one_line_error(rc, err, *names):
    assert rc == 2, err
    lines = [line for line in err.strip().splitlines() if "stream-r1" in line]
    assert len(lines) == 1 and lines[0].startswith("stream-r1 generate: error: "), err
    assert err.strip().splitlines()[-1] == lines[0]  # the last word, after any library's log lines
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, err)


def broken_copy(model_dir, tmp_path, edit):
    root = tmp_path / "model"
    shutil.copytree(model_dir, root)
    edit(root)
    return root


@pytest.mark.parametrize(
    "extra, names",
    [
        (["--seconds", "inf"], ["--seconds", "inf"]),
        (["--seconds", "nan"], ["--seconds"]),
        (["--seconds", "-1"], ["--seconds"]),
        (["--height", "20"], ["--height", "multiple of 8"]),
        (["--height", "0"], ["--height"]),
        (["--width", "-24"], ["--width"]),
        (["--window", "2"], ["--window", "must hold a chunk"]),
        (["--sink", "-1"], ["--sink"]),
        (["--alpha", "1.5"], ["--alpha"]),
        (["--alpha", "nan"], ["--alpha"]),
        (["--shift", "0"], ["--shift"]),
        (["--steps", "500", "750"], ["--steps", "strictly decreasing"]),
        (["--steps", "2000"], ["--steps"]),
        (["--seed", "-1"], ["--seed"]),
        (["--seed", str(2**64)], ["--seed"]),
        (["--device", "banana"], ["--device banana"]),
        (["--device", "cuda:99"], ["--device cuda:99"]),
        (["--output", "x.avi"], ["--output", "must end in .mp4"]),
        (["--checkpoint", "/nonexistent/rf.pt"], ["--checkpoint /nonexistent/rf.pt", "no such file"]),
        (["--model", "/nonexistent/model"], ["--model /nonexistent/model", "no such model folder"]),
    ],
)
def test_bad_options_fail_before_loading(model_dir, tmp_path, capsys, no_loading, extra, names):
    assert_one_line_error(*run(generate(model_dir, tmp_path, *extra), capsys)[::2], *names)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(model_dir, tmp_path, capsys, no_loading):
    rc, _, err = run(generate(model_dir, tmp_path, "--device", "cuda"), capsys)
    assert_one_line_error(rc, err, "--device cuda", "no CUDA device")


@pytest.mark.parametrize("prompt", ["", "   ", "\t\n"])
def test_empty_prompt(model_dir, tmp_path, capsys, no_loading, prompt):
    rc, _, err = run(generate(model_dir, tmp_path, prompt=("--prompt", prompt)), capsys)
    assert_one_line_error(rc, err, "--prompt is empty")


@pytest.mark.parametrize(
    "entries, names",
    [
        ([{"at": 0, "prompt": "a red circle"}, {"at": 0.8, "prompt": "  "}], ["entry 1", "non-empty"]),
        ([{"at": 0, "prompt": "a red circle"}, {"at": 1.2, "prompt": 7}], ["entry 1", "non-empty string"]),
        ([{"at": 0, "prompt": "a red circle"}, {"at": "soon", "prompt": "a blue square"}], ["entry 1", "'soon'"]),
        ([{"at": 0, "prompt": "a red circle"}, {"at": float("inf"), "prompt": "a blue square"}], ["finite"]),
        ([{"at": 0, "prompt": "a red circle"}, {"at": float("nan"), "prompt": "a blue square"}], ["finite"]),
        ([{"at": 1, "prompt": "a red circle"}], ["must start at 0"]),
        ({"at": 0, "prompt": "a red circle"}, ["JSON list"]),
    ],
)
def test_bad_schedule_entries_fail_before_loading(model_dir, tmp_path, capsys, no_loading, entries, names):
    sched = tmp_path / "s.json"
    sched.write_text(json.dumps(entries))
    rc, _, err = run(generate(model_dir, tmp_path, prompt=("--prompt-schedule", str(sched))), capsys)
    assert_one_line_error(rc, err, "--prompt-schedule", *names)


@pytest.mark.parametrize(
    "content, names",
    [
        ("0 a red circle\n0.8\n", [":2:", "non-empty"]),  # a time without a prompt
        ("0 a red circle\nlater a blue square\n", [":2:", "SECONDS PROMPT"]),
        ("# nothing\n", ["holds no prompts"]),
        (b"0 a red \xff circle\n", ["UTF-8"]),
    ],
)
def test_bad_schedule_text_files(model_dir, tmp_path, capsys, no_loading, content, names):
    sched = tmp_path / "s.txt"
    sched.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc, _, err = run(generate(model_dir, tmp_path, prompt=("--prompt-schedule", str(sched))), capsys)
    assert_one_line_error(rc, err, "--prompt-schedule", *names)


def test_schedule_that_is_a_folder(model_dir, tmp_path, capsys, no_loading):
    rc, _, err = run(generate(model_dir, tmp_path, prompt=("--prompt-schedule", str(tmp_path))), capsys)
    assert_one_line_error(rc, err, "--prompt-schedule", "not a file")


def test_tab_separated_schedule_lines(tmp_path):
    txt = tmp_path / "s.txt"
    txt.write_text("0\ta red circle\n1.5\t a blue square\n")
    assert cli.read_prompt_schedule(txt, 0.75) == {0: "a red circle", 2: "a blue square"}


@pytest.mark.parametrize(
    "edit, names",
    [
        (lambda r: (r / "transformer" / "config.json").write_text("{not json"), ["transformer/config.json"]),
        (lambda r: (r / "transformer" / "config.json").write_text("[1, 2]"), ["must hold a JSON object"]),
        (lambda r: (r / "transformer" / "config.json").write_text(json.dumps({"num_layers": "two", "patch_size": 3})),
         ["does not describe a Wan transformer"]),
        (lambda r: (r / "vae" / "config.json").write_text("{"), ["vae/config.json"]),
        (lambda r: shutil.rmtree(r / "vae"), ["not a diffusers Wan model folder", "vae/"]),
        (lambda r: shutil.rmtree(r / "tokenizer"), ["tokenizer/"]),
        (lambda r: (r / "text_encoder" / "config.json").unlink(), ["text_encoder/config.json"]),
        (lambda r: [p.unlink() for p in (r / "transformer").glob("*.safetensors")], ["no transformer weights"]),
        (lambda r: (r / "text_encoder" / "config.json").write_text(json.dumps({"d_model": 64})), ["text_dim"]),
    ],
)
def test_broken_model_folders_fail_before_loading(model_dir, tmp_path, capsys, no_loading, edit, names):
    root = broken_copy(model_dir, tmp_path, edit)
    rc, _, err = run(generate(model_dir, tmp_path, "--model", str(root)), capsys)
    assert_one_line_error(rc, err, f"--model {root}", *names)


def test_model_path_that_is_a_file(model_dir, tmp_path, capsys, no_loading):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    rc, _, err = run(generate(model_dir, tmp_path, "--model", str(f)), capsys)
    assert_one_line_error(rc, err, f"--model {f}", "not a folder")


def test_checkpoint_of_unknown_type(model_dir, tmp_path, capsys, no_loading):
    f = tmp_path / "rf.txt"
    f.write_text("weights")
    rc, _, err = run(generate(model_dir, tmp_path, "--checkpoint", str(f)), capsys)
    assert_one_line_error(rc, err, f"--checkpoint {f}", "unknown checkpoint type")


@pytest.mark.parametrize(
    "where, names",
    [
        (lambda t: t / "a_file" / "sub" / "o.mp4", ["--output", "cannot write"]),  # a file where a folder should be
        (lambda t: t / "dir.mp4", ["--output", "is a folder"]),
        (lambda t: "/proc/stream_r1_test.mp4", ["--output /proc/stream_r1_test.mp4", "cannot write"]),
    ],
)
def test_unwritable_output_fails_before_loading(model_dir, tmp_path, capsys, no_loading, where, names):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "dir.mp4").mkdir()
    out = where(tmp_path)
    rc, _, err = run(generate(model_dir, tmp_path, "--output", str(out)), capsys)
    assert_one_line_error(rc, err, *names)


class _SilentFFmpegWriter:
    """What imageio's writer does when ffmpeg cannot open its output: takes frames, writes nothing."""

    def append_data(self, frame):
        pass

    def close(self):
        pass


def test_ffmpeg_that_writes_nothing_is_a_failure(model_dir, tmp_path, capsys, monkeypatch):
    import imageio.v2

    monkeypatch.setattr(imageio.v2, "get_writer", lambda *a, **k: _SilentFFmpegWriter())
    out = tmp_path / "o.mp4"
    rc, stdout, err = run(generate(model_dir, tmp_path), capsys)
    assert_one_line_error(rc, err, f"--output {out}", "ffmpeg wrote nothing")
    assert "wrote" not in stdout and not out.exists()
    assert list(tmp_path.iterdir()) == []  # no partial file left beside it


def test_ffmpeg_write_error_is_a_failure(model_dir, tmp_path, capsys, monkeypatch):
    import imageio.v2

    class Broken(_SilentFFmpegWriter):
        def append_data(self, frame):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(imageio.v2, "get_writer", lambda *a, **k: Broken())
    out = tmp_path / "o.mp4"
    rc, stdout, err = run(generate(model_dir, tmp_path), capsys)
    assert_one_line_error(rc, err, f"--output {out}", "Broken pipe")
    assert "wrote" not in stdout and not out.exists()


def test_corrupt_checkpoint_is_one_line(model_dir, tmp_path, capsys):
    bad = tmp_path / "student.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    rc, _, err = run(generate(model_dir, tmp_path, "--checkpoint", str(bad)), capsys)
    assert_one_line_error(rc, err, f"--checkpoint {bad}")


def test_checkpoint_that_does_not_fit_is_one_line(model_dir, tmp_path, capsys):
    from safetensors.torch import save_file

    ck = tmp_path / "small.safetensors"
    save_file(tiny_transformer(num_layers=1).state_dict(), str(ck))  # the model has 2 blocks
    rc, _, err = run(generate(model_dir, tmp_path, "--checkpoint", str(ck)), capsys)
    assert_one_line_error(rc, err, f"--checkpoint {ck}", "does not fit the model", "missing keys")


def test_debug_shows_the_traceback(model_dir, tmp_path, no_loading):
    with pytest.raises(cli.UsageError, match="--seconds"):
        main(generate(model_dir, tmp_path, "--seconds", "inf", "--debug"))


def test_unexpected_errors_keep_their_traceback(model_dir, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("a bug, not a bad option")

    monkeypatch.setattr(StreamingPipeline, "from_pretrained", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        main(generate(model_dir, tmp_path))


def test_console_exit_status_and_no_traceback(model_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "stream_r1_fast.cli", *generate(model_dir, tmp_path, "--seconds", "inf")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "stream-r1 generate: error: --seconds must be a finite number > 0, got inf"
    ]


def test_words_the_tokenizer_does_not_know_are_a_warning(model_dir, tmp_path, capsys):
    sched = tmp_path / "s.txt"
    sched.write_text("0 a red circle\n0.8 a purple circle\n")
    rc, _, err = run(generate(model_dir, tmp_path, prompt=("--prompt-schedule", str(sched))), capsys)
    assert rc == 0, err
    assert "stream-r1 generate: warning: --prompt-schedule: the tokenizer knows 'purple' only as <unk>" in err


def test_tokenizer_that_does_not_load(model_dir, tmp_path, capsys, no_loading):
    root = broken_copy(model_dir, tmp_path, lambda r: (r / "tokenizer" / "tokenizer.json").write_text("{broken"))
    rc, _, err = run(generate(model_dir, tmp_path, "--model", str(root)), capsys)
    assert_one_line_error(rc, err, f"--model {root}", "tokenizer/ does not load")
