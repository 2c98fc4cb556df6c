"""``stream-r1 generate --prompts FILE --num-samples K --output-dir D``: VBench's
``{prompt}-{i}.mp4`` layout, seeds, batches of streams, resuming, errors before loading; the
single video written at constant host memory; ``--fps``; ``--recache`` for schedules."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from cli_helpers import model_dir, no_loading, run  # noqa: F401  (fixtures)

from stream_r1_fast import cli
from stream_r1_fast.commands import generate as generate_cmd
from stream_r1_fast.cli import ContactSheet, contact_sheet, main, plan_samples, sample_stem
from stream_r1_fast.inference import StreamingPipeline
from stream_r1_fast.prompts import PromptEntry

pytest.importorskip("imageio_ffmpeg")

ARGS = ["--height", "16", "--width", "24", "--dtype", "fp32", "--device", "cpu", "--quiet"]
P1, P2 = "a red circle moves left", "a blue square on white background"


def batch(model_dir, prompts, out, *extra):
    return ["generate", "--model", str(model_dir), "--prompts", str(prompts), "--output-dir", str(out),
            "--seconds", "1", "--fps", "8", *ARGS, *extra]


def frames(path):
    return np.stack(imageio.mimread(str(path)))


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------- the batch run


def test_batch_writes_every_sample_and_resumes(model_dir, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"# two prompts\n{P1}\n\n{P2}\n")
    out = tmp_path / "out"
    rc, text, err = run(batch(model_dir, prompts, out, "--num-samples", "3", "--batch-size", "2", "--seed", "4"), capsys)
    assert rc == 0, err
    want = [f"{p}-{i}.mp4" for p in (P2, P1) for i in range(3)]
    assert listing(out) == sorted(want)  # nothing else: no contact sheets, no partial files
    for name in want:
        v = frames(out / name)
        assert v.shape == (8, 16, 24, 3)  # 1 s at --fps 8
    assert imageio.get_reader(str(out / want[0])).get_meta_data()["fps"] == 8
    assert "wrote 6 videos" in text and "0 already there" in text
    # sample i of a prompt is seed + i: the same video as --prompt with that seed (alone: batch 1)
    single = tmp_path / "single.mp4"
    assert main(["generate", "--model", str(model_dir), "--prompt", P1, "--seed", "6", "--seconds", "1", "--fps", "8",
                 "--output", str(single), *ARGS]) == 0
    alone = frames(single)
    assert np.abs(frames(out / f"{P1}-2.mp4").astype(int) - alone).mean() < 0.5  # batched: up to rounding
    assert np.abs(frames(out / f"{P1}-1.mp4").astype(int) - alone).mean() > 2  # another seed, another video
    out1 = tmp_path / "out1"
    assert run(batch(model_dir, prompts, out1, "--num-samples", "3", "--seed", "4"), capsys)[0] == 0
    np.testing.assert_array_equal(frames(out1 / f"{P1}-2.mp4"), alone)  # batch 1: the same stream exactly

    # resume: everything there -> nothing loaded; one missing -> only that one is made
    with monkeypatch.context() as m:
        m.setattr(StreamingPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded with nothing to do"))
        rc, text, _ = run(batch(model_dir, prompts, out, "--num-samples", "3", "--batch-size", "2", "--seed", "4"),
                          capsys)
        assert rc == 0 and "nothing to do: all 6 videos" in text
    (out / f"{P2}-1.mp4").unlink()
    (out / f".{P2}-1.123.partial.mp4").write_bytes(b"half")  # a killed run's leftover never counts
    before = {n: os.stat(out / n).st_mtime_ns for n in listing(out) if not n.startswith(".")}
    made = []
    real = StreamingPipeline.stream

    def spy(self, prompt, **kw):
        made.append((list(prompt), list(kw["seed"])))
        return real(self, prompt, **kw)

    monkeypatch.setattr(StreamingPipeline, "stream", spy)
    rc, text, err = run(batch(model_dir, prompts, out, "--num-samples", "3", "--batch-size", "2", "--seed", "4"), capsys)
    assert rc == 0 and "wrote 1 videos" in text and "5 already there" in text
    assert made == [([P2], [5])]
    assert (out / f"{P2}-1.mp4").is_file()
    assert all(os.stat(out / n).st_mtime_ns == t for n, t in before.items())


def test_interrupted_batch_leaves_only_complete_videos(model_dir, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"{P1}\n{P2}\n")
    out = tmp_path / "out"
    real = StreamingPipeline.stream
    calls = []

    def dies_in_second_batch(self, prompt, **kw):
        calls.append(prompt)
        gen = real(self, prompt, **kw)
        if len(calls) == 2:
            def broken():
                yield next(gen)
                raise KeyboardInterrupt
            return broken()
        return gen

    monkeypatch.setattr(StreamingPipeline, "stream", dies_in_second_batch)
    argv = batch(model_dir, prompts, out, "--num-samples", "2", "--batch-size", "2", "--seconds", "2")
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert listing(out) == [f"{P1}-0.mp4", f"{P1}-1.mp4"]  # the unfinished batch left nothing behind
    monkeypatch.setattr(StreamingPipeline, "stream", real)
    assert run(argv, capsys)[0] == 0
    assert listing(out) == sorted(f"{p}-{i}.mp4" for p in (P1, P2) for i in range(2))


def test_jsonl_extended_prompt_and_seed(model_dir, tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "fox", "extended_prompt": P1, "seed": 100},
        {"prompt": "a/b", "other": 1},
    ]) + "\n")
    seen = []
    real = StreamingPipeline.stream

    def spy(self, prompt, **kw):
        seen.append((list(prompt), list(kw["seed"])))
        return real(self, prompt, **kw)

    monkeypatch.setattr(StreamingPipeline, "stream", spy)
    out = tmp_path / "out"
    assert run(batch(model_dir, prompts, out, "--num-samples", "2", "--batch-size", "3", "--seed", "7"), capsys)[0] == 0
    assert listing(out) == ["a_b-0.mp4", "a_b-1.mp4", "fox-0.mp4", "fox-1.mp4"]
    assert seen == [([P1, P1, "a/b"], [100, 101, 7]), (["a/b"], [8])]  # the last batch is smaller


# ---------------------------------------------------------------------- the naming rule


def test_sample_names():
    assert sample_stem("  a red fox, running; 'fast'!  ") == "a red fox, running; 'fast'!"
    assert sample_stem("left/right\\up\ndown\tnow\x00") == "left_right_up_down_now_"
    long = "é" * 200  # 400 bytes of UTF-8
    stem = sample_stem(long)
    assert len(stem.encode()) <= cli.MAX_NAME_BYTES and stem.startswith("é" * 85) and stem[-9] == "~"
    assert sample_stem(long + "x") != stem and sample_stem(long) == stem  # stable, and apart when the ends differ
    assert len(f".{stem}-99.{2**22}.partial.mp4".encode()) < 255

    entries = [PromptEntry("a/b"), PromptEntry("a_b"), PromptEntry("x"), PromptEntry("a/b", seed=50)]
    samples = plan_samples(entries, 2, 10, Path("d"))
    names = [s.path.name for s in samples]
    assert names[:2] == ["a_b-0.mp4", "a_b-1.mp4"]
    assert names[2].startswith("a_b~") and names[2].endswith("-0.mp4") and names[3] == names[2][:-5] + "1.mp4"
    assert names[4:6] == ["x-0.mp4", "x-1.mp4"]
    assert names[6:] == ["a_b-2.mp4", "a_b-3.mp4"]  # the same prompt again continues the numbering
    assert [s.seed for s in samples] == [10, 11, 10, 11, 10, 11, 52, 53]
    assert len(set(names)) == len(names)


# ---------------------------------------------------------------------- errors before loading


@pytest.mark.parametrize("content, extra, says", [
    (None, [], "--prompts: no such prompt file"),
    ('{"prompt": "a"}\n{"prompt": 3}\n', [], r"p.jsonl:2: 'prompt' must be a non-empty string"),
    ('{"prompt": "a"}\n\n{bad\n', [], "p.jsonl:3: not valid JSON"),
    ('{"prompt": "a", "seed": -1}\n', [], "p.jsonl:1: 'seed' must be an int >= 0"),
    ("\n\n", [], "holds no prompts"),
    ('{"prompt": "a"}\n', ["--num-samples", "0"], "--num-samples must be >= 1"),
    ('{"prompt": "a"}\n', ["--batch-size", "0"], "--batch-size must be >= 1"),
    ('{"prompt": "a"}\n', ["--output", "x.mp4"], "with --prompts give --output-dir"),
    ('{"prompt": "a"}\n', ["--recache"], "--recache acts at prompt switches"),
    ('{"prompt": "a"}\n', ["--fps", "0"], "--fps must be in"),
    ('{"prompt": "a", "seed": 18446744073709551615}\n', ["--num-samples", "2"], "past 2**64 - 1"),
])
def test_batch_errors_before_loading(model_dir, tmp_path, capsys, no_loading, content, extra, says):
    prompts = tmp_path / "p.jsonl"
    if content is not None:
        prompts.write_text(content)
    rc, _, err = run(batch(model_dir, prompts, tmp_path / "out", *extra), capsys)
    assert rc == 2, err
    lines = [line for line in err.strip().splitlines() if "stream-r1" in line]
    assert len(lines) == 1 and lines[0].startswith("stream-r1 generate: error: ") and says in lines[0], err


def test_option_combinations_before_loading(model_dir, tmp_path, capsys, no_loading):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    base = ["generate", "--model", str(model_dir), *ARGS]
    cases = [
        (["--prompts", str(prompts)], "--prompts needs --output-dir"),
        (["--prompt", "a", "--output-dir", str(tmp_path)], "--output-dir goes with --prompts"),
        (["--prompt", "a", "--output", str(tmp_path / "o.mp4"), "--num-samples", "2"], "--num-samples goes with --prompts"),
        (["--prompt", "a"], "--output is required"),
        (["--prompt", "a", "--output", str(tmp_path / "o.mp4"), "--recache"], "goes with --prompt-schedule"),
    ]
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases.append((["--prompts", str(prompts), "--output-dir", str(blocker)], "is not a folder"))
    for extra, says in cases:
        rc, _, err = run(base + extra, capsys)
        assert rc == 2 and says in err, (extra, err)


# ---------------------------------------------------------------------- one long video


def test_long_video_at_constant_host_memory(model_dir, tmp_path, monkeypatch):
    """The frames go to the mp4 chunk by chunk and the contact sheet keeps only its frames:
    the peak of traced host memory is the same for a video 3x longer (keeping the frames of
    the 96-frame video would add 64 x 18 KB = 1.2 MB)."""
    sheets = []

    class Recording(ContactSheet):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.most = 0
            sheets.append(self)

        def offer(self, first, frames):
            super().offer(first, frames)
            self.most = max(self.most, self.held)

    monkeypatch.setattr(generate_cmd, "ContactSheet", Recording)  # the sheet `stream-r1 generate` makes
    size = ["--height", "64", "--width", "96", "--dtype", "fp32", "--device", "cpu", "--quiet"]
    peaks = {}
    for secs in ("2", "6"):
        out = tmp_path / f"v{secs}.mp4"
        tracemalloc.start()
        try:
            assert main(["generate", "--model", str(model_dir), "--prompt", P1, "--seconds", secs, "--output", str(out),
                         *size]) == 0
            peaks[secs] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(imageio.mimread(str(out), memtest=False)) == 16 * int(secs)
    assert [s.most for s in sheets] == [24, 24]
    assert peaks["6"] - peaks["2"] < 0.3e6, peaks


def test_contact_sheet_from_sampled_frames_equals_the_whole_video(tmp_path):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (100, 4, 6, 3), dtype=np.uint8)
    contact_sheet(video, tmp_path / "whole.png")
    sheet = ContactSheet(100)
    for at in range(0, 100, 12):  # as the chunks pass
        sheet.offer(at, video[at : at + 12])
    assert sheet.held == 24
    sheet.save(tmp_path / "parts.png")
    np.testing.assert_array_equal(imageio.imread(tmp_path / "whole.png"), imageio.imread(tmp_path / "parts.png"))
    assert cli.contact_sheet_indices(100)[:3] == [0, 4, 9] and cli.contact_sheet_indices(5) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------- --recache


def test_recache_flag_changes_the_frames_after_the_switch(model_dir, tmp_path):
    sched = tmp_path / "s.txt"
    sched.write_text(f"0 {P1}\n1.4 {P2}\n")  # chunk 3 at 16 fps (2.0625 s): after evictions into the sink
    outs = {}
    for flag in ((), ("--recache",)):
        out = tmp_path / f"r{len(flag)}.mp4"
        assert main(["generate", "--model", str(model_dir), "--prompt-schedule", str(sched), "--seconds", "3",
                     "--output", str(out), *ARGS, *flag]) == 0
        outs[bool(flag)] = frames(out).astype(int)
    first = 1 + 8 + 12 + 12  # video frames before chunk 3: 33
    assert np.abs(outs[True][:first] - outs[False][:first]).max() <= 1  # the same until the switch (mp4 rounding)
    assert np.abs(outs[True][first:] - outs[False][first:]).mean() > 1
