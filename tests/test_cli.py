"""``stream-r1 generate`` end to end on a tiny random model folder."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import pytest
from PIL import Image
from cli_helpers import model_dir  # noqa: F401  (fixture)

from stream_r1_fast.cli import chunk_start_seconds, main, read_prompt_schedule

# mp4 writing needs the ffmpeg binary of imageio-ffmpeg (a dependency; absent on the offline GPU box).
pytest.importorskip("imageio_ffmpeg")

ARGS = ["--height", "16", "--width", "24", "--dtype", "fp32", "--device", "cpu", "--quiet"]


def test_generate_writes_mp4_and_contact_sheet(model_dir, tmp_path, capsys):
    out = tmp_path / "v" / "out.mp4"
    rc = main(["generate", "--model", str(model_dir), "--prompt", "a red circle", "--seconds", "2", "--seed", "1",
               "--output", str(out), *ARGS])
    assert rc == 0
    frames = imageio.mimread(str(out))
    assert len(frames) == 32 and frames[0].shape == (16, 24, 3)
    assert Image.open(out.with_suffix(".png")).size[0] == 6 * 24
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "time to first frame" in last and "FPS" in last and "excluded" in last


def test_prompt_schedule(model_dir, tmp_path):
    sched = tmp_path / "s.json"
    sched.write_text(json.dumps([{"at": 0, "prompt": "a red circle"}, {"at": 1.5, "prompt": "a blue square"}]))
    assert read_prompt_schedule(sched, chunk_seconds=0.75) == {0: "a red circle", 2: "a blue square"}
    txt = tmp_path / "s.txt"
    txt.write_text("# timed prompts\n0 a red circle\n0.8 a blue square\n")
    assert read_prompt_schedule(txt, chunk_seconds=0.75) == {0: "a red circle", 2: "a blue square"}
    out = tmp_path / "s.mp4"
    assert main(["generate", "--model", str(model_dir), "--prompt-schedule", str(txt), "--seconds", "2",
                 "--output", str(out), *ARGS]) == 0
    assert out.is_file()


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--seconds", "0"], "--seconds must be a finite number > 0"),
        (["--output", "x.avi"], "must end in .mp4"),
        (["--model", "/nonexistent/model"], "no such model folder"),
        (["--prompt-schedule", "/nonexistent.txt"], "does not exist"),
        (["--window", "2"], "must hold a chunk"),
    ],
)
def test_bad_inputs_give_clear_errors(model_dir, tmp_path, capsys, extra, match):
    base = {"--model": str(model_dir), "--output": str(tmp_path / "o.mp4"), "--seconds": "1"}
    argv = ["generate"]
    over = dict(zip(extra[::2], extra[1::2]))
    if "--prompt-schedule" not in over:
        argv += ["--prompt", "a"]
    for k, v in {**base, **over}.items():
        argv += [k, v]
    assert main(argv + ARGS) == 2
    assert match in capsys.readouterr().err


def test_bad_schedule_file(tmp_path):
    bad = tmp_path / "b.txt"
    bad.write_text("soon a red circle\n")
    with pytest.raises(ValueError, match="expected 'SECONDS PROMPT'"):
        read_prompt_schedule(bad, 0.75)
    late = tmp_path / "l.txt"
    late.write_text("1 a red circle\n")
    with pytest.raises(ValueError, match="must start at 0"):
        read_prompt_schedule(late, 0.75)


def test_cli_requires_a_prompt(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--model", "m", "--output", "o.mp4"])
    assert "--prompt" in capsys.readouterr().err


def test_prompt_schedule_counts_the_shorter_first_chunk(tmp_path):
    """Wan's first chunk decodes to 9 frames, the others to 12: at 16 fps chunk 1 starts at
    0.5625 s and chunk 2 at 1.3125 s. A switch at 1.4 s takes effect at chunk 3 (2.0625 s), the
    first chunk that starts at or after it (counting every chunk as 12 frames would give chunk 2,
    which starts before the time asked for)."""
    txt = tmp_path / "s.txt"
    txt.write_text("0 a red circle\n0.5 a blue square\n1.4 a green circle\n")
    sched = read_prompt_schedule(txt, 0.75, 0.5625)
    assert sched == {0: "a red circle", 1: "a blue square", 3: "a green circle"}
    for k in sched:
        assert chunk_start_seconds(k, 0.75, 0.5625) >= {0: 0, 1: 0.5, 3: 1.4}[k]
    assert chunk_start_seconds(2, 0.75, 0.5625) == 1.3125
