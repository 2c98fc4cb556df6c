"""The end-to-end streaming benchmark stays runnable, and its Reward-Forcing-style baseline
computes the same video as our engine (so its speed-up compares like with like)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *extra):
    cmd = [
        sys.executable, str(ROOT / "bench" / "e2e_streaming.py"), "--config", "tiny", "--device", "cpu",
        "--dtype", "float32", "--height", "32", "--width", "48", "--chunks", "4", "--warmup", "2",
        "--out", str(tmp_path), *extra,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((tmp_path / "e2e_streaming_cpu.json").read_text())


def test_e2e_streaming_tiny_on_cpu(tmp_path):
    data = _run(tmp_path, "--keep-output", "--repeats", "3", "--cuda-graphs")
    modes = {r["mode"]: r for r in data["results"]}
    assert set(modes) == {"ours", "baseline", "ours+graphs"}
    for r in modes.values():
        assert r["sustained_fps"] > 0 and r["time_to_first_frame_s"] > 0
        assert r["frames_measured"] == 4 * 12  # 3 latent frames -> 12 video frames per chunk
        assert r["chunks_measured"] == 4 and r["repeats"] == 3 and len(r["runs"]) == 3
        lo, hi = r["sustained_fps_spread"]
        assert lo <= r["sustained_fps"] <= hi
        assert 0 < r["step_ms_median"] <= r["chunk_ms_median"]
    assert "cuda_graphs_status" not in modes["ours"] and "compile_stream_s" not in modes["ours"]
    assert modes["baseline"]["denoise_ms_median"] > 0 and modes["baseline"]["refresh_ms_median"] > 0
    # Off CUDA the graph column is the compiled step, and says why it is not graphs.
    graphs = modes["ours+graphs"]
    assert graphs["cuda_graphs_status"].startswith("off: CUDA graphs need a CUDA device")
    assert graphs["compile_stream_s"] > 0
    # 6 chunks: sink fill, window fill, then evictions with EMA folds into the sink.
    assert data["summary"]["max_abs_diff_latents"] < 1e-4
    assert data["summary"]["max_abs_diff_latents_graphs"] < 1e-4


def test_e2e_streaming_without_vae_counts_video_frames(tmp_path):
    """--no-vae counts the video frames the measured chunks decode to (12 per chunk), not the
    latents' channel count."""
    data = _run(tmp_path, "--no-vae", "--repeats", "1", "--modes", "ours")
    (r,) = data["results"]
    assert r["frames_measured"] == 4 * 12


def test_video_frames_per_chunk():
    sys.path.insert(0, str(ROOT / "bench"))
    from e2e_streaming import video_frames

    assert [video_frames(i, 3) for i in range(3)] == [9, 12, 12]
    assert video_frames(0, 1) == 1 and video_frames(5, 1) == 4
