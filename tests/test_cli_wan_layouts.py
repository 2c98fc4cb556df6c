"""`stream-r1 generate --model` takes Wan-AI's original folder as well as the diffusers one
(same video), with --lora and --offload-text-encoder; a broken original folder is a one-line
error before anything loads."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from stream_r1_fast.cli import main
from stream_r1_fast.inference import StreamingPipeline
from test_wan_layouts import folders, parts  # noqa: F401  (module fixtures: tiny models in both layouts)

pytest.importorskip("imageio_ffmpeg")


def _generate(model, out, *extra):
    return main(["generate", "--model", str(model), "--prompt", "a red circle", "--seconds", "1", "--output", str(out),
                 "--device", "cpu", "--height", "32", "--width", "32", "--dtype", "fp32", "--quiet", *extra])


def test_original_folder_gives_the_diffusers_folders_video(folders, tmp_path):  # noqa: F811
    original, diffusers = folders
    assert _generate(original, tmp_path / "a.mp4") == 0
    assert _generate(diffusers, tmp_path / "b.mp4", "--offload-text-encoder") == 0
    assert _generate(diffusers, tmp_path / "r.mp4", "--cache-impl", "rotated") == 0
    # The rotated cache equals the fused one to float tolerance (tests/test_rotated_cache.py);
    # through a lossy h264 encode a last-bit difference can flip a pixel's rounding and the
    # encoder's choices after it (a few levels here and there, which CPU differs by machine),
    # so the videos are compared on average.
    r = iio.imread(tmp_path / "r.mp4")
    diff = np.abs(r.astype(int) - iio.imread(tmp_path / "b.mp4").astype(int))
    assert r.shape[0] == 16 and diff.mean() <= 0.25 and np.percentile(diff, 99) <= 2, (diff.mean(), diff.max())
    a, b = iio.imread(tmp_path / "a.mp4"), iio.imread(tmp_path / "b.mp4")
    assert a.shape == b.shape and a.shape[0] == 16
    np.testing.assert_array_equal(a, b)


def test_broken_original_folder_and_missing_lora_fail_before_loading(folders, tmp_path, monkeypatch, capsys):  # noqa: F811
    original, _ = folders

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was reported")

    broken = tmp_path / "broken"
    broken.mkdir()
    for p in original.iterdir():
        if p.name != "Wan2.1_VAE.pth":
            (broken / p.name).symlink_to(p)
    monkeypatch.setattr(StreamingPipeline, "from_pretrained", refuse)
    assert _generate(broken, tmp_path / "c.mp4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stream-r1 generate: error: --model") and "Wan2.1_VAE.pth" in err[0]
    monkeypatch.undo()
    assert _generate(original, tmp_path / "d.mp4", "--lora", str(tmp_path / "missing_lora.pt")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stream-r1 generate: error: --lora ") and "missing_lora.pt" in err[-1]
    assert not (tmp_path / "d.mp4").exists()
