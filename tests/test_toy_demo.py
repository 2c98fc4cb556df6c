"""The toy demo runs end to end on the shipped weights in well under a minute."""

import time

from stream_r1_fast.toy import demo


def test_demo_runs_quickly(tmp_path, capsys):
    # The demo sets its own thread count; conftest restores the previous one after the test.
    start = time.perf_counter()
    demo.main(["--seed", "3", "--out", str(tmp_path), "--threads", "2"])
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    assert elapsed < 60, elapsed
    for name in ("video.mp4", "video.gif", "contact_sheet.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "oracle:" in out and "frames/s" in out and "reward:" in out
    # The main command streams the shipped Stream-R1 student, and says how fast against real time.
    assert "causal student student_stream_r1.safetensors, streamed chunk by chunk" in out
    assert "x real time at 16 fps, first frames after" in out


def test_demo_can_sample_the_teacher(tmp_path, capsys):
    demo.main(["--generator", "teacher", "--steps", "4", "--frames", "9", "--out", str(tmp_path), "--threads", "1"])
    out = capsys.readouterr().out
    assert "bidirectional teacher, whole clip at once (4 Euler steps, guidance 1.0; not streaming)" in out
    assert "video:     9 frames of 32x32" in out and "real time" not in out
