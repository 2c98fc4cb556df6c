"""The end-to-end streaming benchmark stays runnable, and its Reward-Forcing-style baseline
computes the same video as our engine (so its speed-up compares like with like)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_e2e_streaming_tiny_on_cpu(tmp_path):
    cmd = [
        sys.executable, str(ROOT / "bench" / "e2e_streaming.py"), "--config", "tiny", "--device", "cpu",
        "--dtype", "float32", "--height", "32", "--width", "48", "--chunks", "4", "--warmup", "2",
        "--keep-output", "--out", str(tmp_path),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((tmp_path / "e2e_streaming_cpu.json").read_text())
    modes = {r["mode"]: r for r in data["results"]}
    assert set(modes) == {"ours", "baseline"}
    for r in modes.values():
        assert r["sustained_fps"] > 0 and r["time_to_first_frame_s"] > 0
        assert r["frames_measured"] == 4 * 12  # 3 latent frames -> 12 video frames per chunk
    # 6 chunks: sink fill, window fill, then evictions with EMA folds into the sink.
    assert data["summary"]["max_abs_diff_latents"] < 1e-4
