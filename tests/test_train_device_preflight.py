"""`train.device` names a device this machine has, checked before any model loads."""

import pytest
import torch

from stream_r1_fast.cli import main
from stream_r1_fast.training.config import ConfigError, TrainConfig, preflight

TOY_MODELS = "stream_r1_fast.toy.recipe:build_models"  # a model builder without a Wan folder to check


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_gpu_is_a_config_error(tmp_path, capsys):
    cfg = TrainConfig.from_dict({"model": {"factory": TOY_MODELS}, "train": {"device": "cuda", "output_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match="train.device.*no CUDA device"):
        preflight(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {{factory: '{TOY_MODELS}'}}\ntrain: {{device: cuda, steps: 1, output_dir: {tmp_path / 'out'}}}\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.device" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_cpu_device_passes(tmp_path):
    preflight(TrainConfig.from_dict({"model": {"factory": TOY_MODELS}, "train": {"device": "cpu", "output_dir": str(tmp_path)}}))
