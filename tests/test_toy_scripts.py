"""Each toy training script runs a few steps (--steps) and writes loadable weights."""

import importlib.util
from pathlib import Path

import pytest
import torch

from stream_r1_fast.toy.codec import ToyCodec
from stream_r1_fast.toy.models import load_transformer_file
from stream_r1_fast.toy.reward import ToyRewardModel

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "toy"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"toy_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_fit_codec(tmp_path):
    out = tmp_path / "codec.safetensors"
    _script("fit_codec").main(["--clips", "4", "--out", str(out)])
    assert ToyCodec.from_file(out).latent_channels == 16


def test_train_teacher(tmp_path):
    out = tmp_path / "teacher.safetensors"
    _script("train_teacher").main(["--steps", "2", "--batch", "2", "--out", str(out)])
    assert load_transformer_file(out).config.num_layers == 4


def test_train_reward(tmp_path):
    out = tmp_path / "reward.safetensors"
    _script("train_reward").main(["--steps", "2", "--batch", "4", "--eval-batches", "1", "--out", str(out)])
    ToyRewardModel.from_file(out)
