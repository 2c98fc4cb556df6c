"""The toy world's factories for the training engine (stream_r1_fast/toy/recipe.py): world
captions as a prompt factory, the toy trainer for DMD, Re-DMD and Stream-R1 (also through
``stream-r1 train``), and their preflight."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from stream_r1_fast.toy.models import WEIGHTS, load_teacher, load_transformer_file, save_transformer
from stream_r1_fast.toy.recipe import build_toy_trainer
from stream_r1_fast.toy.recipe import world_captions as toy_captions
from stream_r1_fast.toy.text import ToyTextEncoder
from stream_r1_fast.toy.world import parse_caption
from stream_r1_fast.training.config import ConfigError, TrainConfig, preflight

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TEACHER_FILE = WEIGHTS / "teacher.safetensors"
TOY_MODELS = "stream_r1_fast.toy.recipe:build_models"
TOY_CAPTIONS = "stream_r1_fast.toy.recipe:world_captions"


def _captions(count, **more):
    return {"data": {"prompts": {"factory": TOY_CAPTIONS, "kwargs": {"count": count, **more}}}}


# ----------------------------------------------------------------------------- world captions


def test_toy_world_prompts():
    cfg = TrainConfig.from_dict(_captions(5))
    prompts = cfg.prompt_list()
    assert len(prompts) == 5 and all(isinstance(p, str) for p in prompts)
    for p in prompts:
        parse_caption(p)  # raises if not a toy-world caption
        ToyTextEncoder().encode_one(p)
    assert len(set(prompts)) > 1
    assert prompts == TrainConfig.from_dict(_captions(5)).prompt_list() == toy_captions(5)
    assert TrainConfig.from_dict(_captions(7)).prompt_list()[:5] == prompts
    for bad in (0, "x", None, -2, True):
        with pytest.raises(ConfigError, match=r"data\.prompts\.kwargs\.count"):
            TrainConfig.from_dict(_captions(bad)).prompt_list()


def test_prompt_factory_errors_name_the_key(tmp_path):
    """Checked by preflight, before any prompt is drawn or weights load."""
    def check(data, match):
        cfg = TrainConfig.from_dict({**data, "model": {"factory": TOY_MODELS}, "train": {"output_dir": str(tmp_path)}})
        with pytest.raises(ConfigError, match=match):
            preflight(cfg)

    check(_captions(0), r"'data\.prompts\.kwargs\.count' must be an int >= 1")
    check(_captions(2, colour="red"), r"'data\.prompts\.kwargs'.*do not fit")
    check({"data": {"prompts": {"factory": "stream_r1_fast.toy.recipe:nothing"}}},
          r"'data\.prompts\.factory'.*has no attribute 'nothing'")
    with pytest.raises(ConfigError, match=r"'data\.prompts\.factory' must be 'module:callable'"):
        TrainConfig.from_dict({"data": {"prompts": {"factory": "no_colon"}}})
    with pytest.raises(ConfigError, match=r"'data\.prompts\.count' is not a key of a prompt factory"):
        TrainConfig.from_dict({"data": {"prompts": {"factory": TOY_CAPTIONS, "count": 3}}})


def test_model_factory_preflight(tmp_path):
    cfg = TrainConfig.from_dict({"model": {"factory": TOY_MODELS, "student": str(tmp_path / "nope.safetensors")},
                                 "train": {"output_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match=r"'model\.student': no such file or folder"):
        preflight(cfg)
    cfg.model.factory = "stream_r1_fast.toy.recipe:no_builder"
    with pytest.raises(ConfigError, match=r"'model\.factory'.*has no attribute 'no_builder'"):
        preflight(cfg)
    with pytest.raises(ConfigError, match=r"'model\.factory' must be 'module:callable'"):
        TrainConfig.from_dict({"model": {"factory": "stream_r1_fast.toy.recipe"}})


def test_training_core_does_not_import_the_toy_world():
    """toy/ builds on training/, never the reverse: the recipes name toy factories by string."""
    import ast

    root = Path(__file__).resolve().parents[1] / "stream_r1_fast" / "training"
    for path in root.glob("*.py"):
        assert "toy" not in path.read_text(encoding="utf-8").lower(), path
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("stream_r1_fast.toy") for n in names), (path, names)


# ----------------------------------------------------------------------------- the toy trainer


@pytest.fixture(scope="module")
def critic_file(tmp_path_factory):
    """The teacher's weights, perturbed: with the critic equal to the teacher the DMD gradient is
    exactly zero, so a generator update would be weight decay alone."""
    model = load_teacher()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02 * (p.std() if p.numel() > 1 else 1.0))
    path = tmp_path_factory.mktemp("critic") / "critic.safetensors"
    save_transformer(model, path)
    return path


def _shrunk(name: str, out: Path) -> TrainConfig:
    cfg = TrainConfig.from_yaml(CONFIGS / f"toy_{name}.yaml")
    assert cfg.model.factory == TOY_MODELS and cfg.weighting.mode == name and cfg.dmd.guidance_scale == 0.0
    assert cfg.data.prompts["factory"] == TOY_CAPTIONS
    cfg.data.prompts["kwargs"]["count"] = 4  # 4096 captions take ~15 s to draw
    cfg.optim.batch_size = 2
    cfg.optim.generator_every = 1
    cfg.train.steps = 1
    cfg.train.output_dir = str(out)
    cfg.train.progress = False
    return cfg


@pytest.mark.parametrize("name", ["dmd", "re_dmd", "stream_r1"])
def test_toy_trainer_step(name, tmp_path, critic_file):
    cfg = _shrunk(name, tmp_path)
    cfg.model.critic = str(critic_file)
    trainer = build_toy_trainer(cfg, student=TEACHER_FILE)
    assert trainer.vae_factors == (4, 4) and trainer.latent_size == (8, 8)
    assert (trainer.weighting.reward_model is None) == (name == "dmd")
    gen0 = {n: p.detach().clone() for n, p in trainer.student.named_parameters()}
    teacher0 = {n: p.detach().clone() for n, p in trainer.teacher.state_dict().items()}
    critic0 = {n: p.detach().clone() for n, p in trainer.critic.named_parameters()}
    assert not any(p.requires_grad for p in trainer.teacher.parameters())

    teacher_calls = []
    trainer.teacher.register_forward_hook(lambda *_: teacher_calls.append(1))
    logs = trainer.train_step()
    assert len(teacher_calls) == 1, "guidance 0: the teacher scores the conditional branch only"
    for key in ("critic_loss", "generator_loss", "grad_norm_generator", "grad_norm_critic"):
        assert math.isfinite(logs[key]), key
    assert logs["generator_loss"] > 0 and logs["grad_norm_generator"] > 0 and logs["critic_loss"] > 0
    rewards = {"reward_VQ", "reward_MQ", "reward_TA", "w_inter"}
    if name == "dmd":
        assert not rewards & logs.keys()
    if name == "re_dmd":
        assert "reward_MQ" in logs and math.isfinite(logs["reward_MQ"])
    if name == "stream_r1":
        assert rewards <= logs.keys() and all(math.isfinite(logs[k]) for k in rewards) and logs["w_inter"] > 0

    # The generator moved by more than AdamW's weight decay (the first Adam step is ~lr per entry).
    decay = 1.0 - cfg.optim.lr_generator * cfg.optim.weight_decay
    moved = max(float((p.detach() - gen0[n] * decay).abs().max()) for n, p in trainer.student.named_parameters())
    assert moved > 0.1 * cfg.optim.lr_generator
    assert any(not torch.equal(p, critic0[n]) for n, p in trainer.critic.named_parameters())
    for n, p in trainer.teacher.state_dict().items():
        assert torch.equal(p, teacher0[n]), f"teacher {n} changed"


def test_toy_trainer_critic_defaults_to_the_teacher(tmp_path, critic_file):
    cfg = _shrunk("dmd", tmp_path)
    trainer = build_toy_trainer(cfg, student=critic_file)  # a student that is not the teacher
    teacher, student = load_teacher().state_dict(), load_transformer_file(critic_file).state_dict()
    for n, p in trainer.critic.state_dict().items():
        assert torch.equal(p, teacher[n]), n
    for n, p in trainer.student.state_dict().items():
        assert torch.equal(p, student[n]), n
    for n, p in trainer.teacher.state_dict().items():
        assert torch.equal(p, teacher[n]), n
    assert trainer.critic is not trainer.teacher
    assert all(p.requires_grad for p in trainer.critic.parameters())
    assert all(p.requires_grad for p in trainer.student.parameters())


def test_toy_trainer_missing_weights(tmp_path):
    cfg = _shrunk("dmd", tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.safetensors do not exist"):
        build_toy_trainer(cfg, student=tmp_path / "nope.safetensors")
    cfg.model.student = str(tmp_path / "gone.safetensors")
    with pytest.raises(FileNotFoundError, match="gone.safetensors do not exist"):
        build_toy_trainer(cfg)
    cfg.model.student, cfg.model.teacher = str(TEACHER_FILE), str(tmp_path / "no_teacher.safetensors")
    with pytest.raises(FileNotFoundError, match="no_teacher.safetensors do not exist"):
        build_toy_trainer(cfg)


def test_cli_train_on_the_toy_world(tmp_path, capsys):
    from stream_r1_fast.cli import main

    data = yaml.safe_load((CONFIGS / "toy_stream_r1.yaml").read_text())
    data["model"]["student"] = str(TEACHER_FILE)
    data["data"]["prompts"]["kwargs"]["count"] = 2
    data["optim"]["batch_size"] = 1
    data["train"].update(steps=1, output_dir=str(tmp_path / "run"), progress=False)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["train", "--config", str(path)]) == 0
    assert "done: 1 steps" in capsys.readouterr().out
    run = tmp_path / "run"
    assert (run / "checkpoints" / "step_00000001" / "COMPLETE").is_file()
    lines = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(lines) == 2 and "critic_loss" in lines[0]
