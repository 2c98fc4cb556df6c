"""The toy demo runs end to end on the shipped weights in well under a minute."""

import time

import pytest
import torch

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


def test_contact_sheet_shows_the_caption_legibly_above_ground_truth_and_generated():
    import numpy as np

    caption = "a large yellow diamond moving down fast and a small red circle moving left slow on a black background"
    truth = demo.ground_truth(caption, seed=1, num_frames=9)
    # The reference is the caption's own clip: the oracle scores it as following the caption.
    from stream_r1_fast.toy.oracle import score_clip

    m = score_clip(truth, caption)
    assert m["count"] == m["color"] == 1.0 and m["direction"] >= 0.5
    font = demo.caption_font(15)
    assert font.getlength("fast and") > font.getlength("fastand") + 2  # words are separated
    generated = torch.zeros_like(truth)
    sheet = np.asarray(demo.contact_sheet([("ground truth", truth), ("generated", generated)], caption, scale=4))
    one = np.asarray(demo.contact_sheet([("generated", generated)], caption, scale=4))
    assert sheet.shape[0] - one.shape[0] >= 4 * 32  # a second row of frames
    assert sheet.shape[1] == 8 * 4 * 32 + 7 * 2  # 8 frames a row
    # The first row shows the truth's frames (its yellow), the generated row is black.
    yellow = (sheet[..., 0] > 200) & (sheet[..., 1] > 200) & (sheet[..., 2] < 80)
    rows_with_yellow = np.nonzero(yellow.any(1))[0]
    assert rows_with_yellow.max() < one.shape[0]  # only above the generated row's frames


def test_demo_in_world_v2_follows_its_grammar(tmp_path, capsys):
    caption = "a green triangle moving right fast on a gray background"
    demo.main(["--world", "v2", "--generator", "teacher", "--steps", "4", "--frames", "9", "--prompt", caption,
               "--out", str(tmp_path), "--threads", "1"])
    out = capsys.readouterr().out
    assert f"prompt:    {caption}" in out and "video:     9 frames of 32x32" in out
    assert "ghost_rate" in out  # v2's oracle
    truth = demo.ground_truth(caption, seed=0, num_frames=9, world="v2")
    from stream_r1_fast.toy.kits import toy_kit

    m = toy_kit("v2").score_clip(truth, caption)
    assert m["count"] == m["color"] == m["shape"] == m["direction"] == 1.0
    with pytest.raises(demo.DemoError, match="'small' not in the v2 toy vocabulary"):
        demo.check_caption("a small green triangle moving right fast on a gray background", "v2")
    with pytest.raises(demo.DemoError, match="distinct colours"):
        demo.check_caption("a red square moving up slow and a red diamond moving left fast on a black background", "v2")
    assert "a <colour> <shape> moving <direction> <speed>" in demo.grammar("v2")
