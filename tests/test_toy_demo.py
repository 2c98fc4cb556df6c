"""The toy demo runs end to end on the shipped weights in well under a minute."""

import time

import torch

from stream_r1_fast.toy import demo


def test_demo_runs_quickly(tmp_path, capsys):
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        demo.main(["--seed", "3", "--steps", "12", "--out", str(tmp_path), "--threads", "2"])
    finally:
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    assert elapsed < 60, elapsed
    for name in ("video.mp4", "video.gif", "contact_sheet.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "oracle:" in out and "frames/s" in out and "reward:" in out
