"""Guards of a training run: every number of a config checked (finite, in range) before any
model loads, with errors naming the key; ``stream-r1 train`` answers bad configs with one line
and status 2; a diverging run stops naming the step and the config keys to check, before a
checkpoint of non-finite weights is written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from stream_r1_fast.cli import main
from stream_r1_fast.training import checkpoint as ckpt
from stream_r1_fast.training.config import PACKAGED_CONFIGS, ConfigError, TrainConfig
from stream_r1_fast.training.trainer import TrainingDiverged
from training_helpers import tiny_config, tiny_trainer

CONFIGS = PACKAGED_CONFIGS  # stream_r1_fast/configs (configs/ in the clone links there)


@pytest.mark.parametrize("section, key, value", [
    ("optim", "lr_generator", math.inf),
    ("optim", "weight_decay", -0.1),
    ("optim", "grad_clip", math.inf),
    ("optim", "betas", ["a", 0.9]),
    ("optim", "ema_start", -1),
    ("dmd", "guidance_scale", math.nan),
    ("dmd", "guidance_scale", -1.0),
    ("dmd", "timestep_shift", math.inf),
    ("rollout", "height", 0),
    ("rollout", "height", -16),
    ("rollout", "width", 0),
    ("rollout", "shift", 0.0),
    ("weighting", "beta", math.inf),
    ("model", "text_max_length", 0),
    ("train", "seed", -1),
    ("train", "output_dir", ""),
    ("train", "output_dir", "  "),
    ("train", "device", "gpu0"),
    ("model", "dir", ""),
])
def test_bad_numbers_and_paths_name_the_key(section, key, value):
    with pytest.raises(ConfigError, match=rf"'{section}\.{key}'"):
        TrainConfig.from_dict({section: {key: value}})


def test_yaml_nan_and_inf_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr_generator: .inf\n")
    with pytest.raises(ConfigError, match="'optim.lr_generator' must be a finite number, got inf"):
        TrainConfig.from_yaml(path)
    path.write_text("dmd:\n  guidance_scale: .nan\n")
    with pytest.raises(ConfigError, match="'dmd.guidance_scale' must be a finite number"):
        TrainConfig.from_yaml(path)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr_generator: 1e-4\n  betas: [0.0, 0.999\ntrain:\n  steps: 3\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+:\d+: YAML syntax error"):
        TrainConfig.from_yaml(path)


# ------------------------------------------------------------------ stream-r1 train


def _smoke_yaml(tmp_path, **changes) -> Path:
    data = yaml.safe_load((CONFIGS / "tiny_wan_smoke.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})[key] = value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _empty_wan_dir(tmp_path) -> Path:
    root = tmp_path / "wan"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer"):
        (root / sub).mkdir(parents=True)
    return root


def _train_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_cli_config_errors_are_one_line_with_status_2(tmp_path, capsys):
    bad = tmp_path / "syntax.yaml"
    bad.write_text("model:\n  dir: x\n   dtype: fp32\n")
    assert f"{bad}:3:" in _train_error(capsys, ["train", "--config", str(bad)])
    assert "'optim.lr_gen'" in _train_error(capsys, ["train", "--config", str(_smoke_yaml(tmp_path, optim__lr_gen=1))])
    cfg = _smoke_yaml(tmp_path, optim__lr_generator=math.inf)
    assert "'optim.lr_generator' must be a finite number" in _train_error(capsys, ["train", "--config", str(cfg)])
    cfg = _smoke_yaml(tmp_path, model__dir=str(tmp_path / "no_such_model"))
    err = _train_error(capsys, ["train", "--config", str(cfg)])
    assert "'model.dir'" in err and "no such folder" in err and "hub" not in err.lower()
    (tmp_path / "half").mkdir()
    cfg = _smoke_yaml(tmp_path, model__dir=str(tmp_path / "half"))
    assert "has no transformer/, vae/" in _train_error(capsys, ["train", "--config", str(cfg)])
    cfg = _smoke_yaml(tmp_path, model__dir=str(_empty_wan_dir(tmp_path)), data__prompts=str(tmp_path / "none.txt"))
    assert "'data.prompts'" in _train_error(capsys, ["train", "--config", str(cfg)])
    assert "does not exist" in _train_error(capsys, ["train", "--config", str(tmp_path / "missing.yaml")])


def test_cli_prompt_file_errors_name_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "a fox"}\n{"prompt": "a cat", "seed": -1}\n')
    cfg = _smoke_yaml(tmp_path, model__dir=str(_empty_wan_dir(tmp_path)), data__prompts=str(bad))
    err = _train_error(capsys, ["train", "--config", str(cfg)])
    assert f"'data.prompts': {bad}:2: 'seed' must be an int >= 0" in err
    bad.write_text("")
    assert "holds no prompts" in _train_error(capsys, ["train", "--config", str(cfg)])


def test_cli_overrides_go_through_the_same_checks(tmp_path, capsys):
    cfg = str(_smoke_yaml(tmp_path))
    assert "'optim.lr_generator' must be a finite number" in _train_error(
        capsys, ["train", "--config", cfg, "optim.lr_generator=.inf"])
    err = _train_error(capsys, ["train", "--config", cfg, "train.keep_last=-1"])
    assert "'train.keep_last' must be >= 0" in err
    err = _train_error(capsys, ["train", "--config", cfg, "--steps", "2", "weighting.mode=stream_r1"])
    assert "'reward.factory' is needed for weighting.mode 'stream_r1'" in err


def test_cli_checks_the_reward_factory_before_loading_models(tmp_path, capsys):
    # The model folder's subfolders are empty: loading any model from it would fail differently.
    model_dir = _empty_wan_dir(tmp_path)
    for factory, says in (("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
                          ("stream_r1_fast.rewards:NoSuchReward", "has no attribute 'NoSuchReward'")):
        cfg = _smoke_yaml(tmp_path, model__dir=str(model_dir), reward__factory=factory, weighting__mode="stream_r1")
        err = _train_error(capsys, ["train", "--config", str(cfg)])
        assert "'reward.factory'" in err and says in err, err


def test_cli_debug_prints_the_traceback(tmp_path, capsys):
    cfg = _smoke_yaml(tmp_path, optim__lr_generator=math.nan)
    assert main(["train", "--config", str(cfg), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "optim.lr_generator" in err


@pytest.mark.parametrize("flag, value", [("--steps", "-5"), ("--output-dir", ""),
                                         ("--output-dir", " ")])
def test_cli_rejects_bad_overrides(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(_smoke_yaml(tmp_path)), flag, value])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


# ------------------------------------------------------------------ divergence


def _run(tmp_path, **train):
    return tiny_trainer(tiny_config("dmd", str(tmp_path / "run"), train={"steps": 4, "save_every": 1, **train}))


def _saved(tmp_path) -> list[str]:
    root = tmp_path / "run" / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_infinite_generator_lr_stops_before_saving(tmp_path):
    trainer = _run(tmp_path)
    for group in trainer.student_opt.param_groups:  # as `optim.lr_generator: .inf` did before the config check
        group["lr"] = math.inf
    with pytest.raises(TrainingDiverged, match=r"generator's weights are not finite after training step 0; "
                                               r"check optim\.lr_generator / dmd\.guidance_scale") as exc:
        trainer.fit()
    assert exc.value.step == 0 and "last checkpoint is none" in str(exc.value)
    assert _saved(tmp_path) == []


def test_divergence_mid_run_stops_at_the_step_it_happens(tmp_path):
    trainer = _run(tmp_path)

    def poison(logs):
        if logs["step"] == 1:
            for group in trainer.student_opt.param_groups:
                group["lr"] = math.inf

    with pytest.raises(TrainingDiverged, match=r"after training step 2; check optim\.lr_generator / "
                                               r"dmd\.guidance_scale") as exc:
        trainer.fit(on_step=poison)
    assert "step_00000002" in str(exc.value)
    assert _saved(tmp_path) == ["step_00000001", "step_00000002"]  # nothing of step 3
    for name in _saved(tmp_path):
        assert ckpt.verify_manifest(tmp_path / "run" / "checkpoints" / name)


def test_diverging_critic_names_its_learning_rate(tmp_path):
    trainer = _run(tmp_path)
    for group in trainer.critic_opt.param_groups:
        group["lr"] = math.inf
    with pytest.raises(TrainingDiverged, match=r"critic's weights are not finite after training step 0; "
                                               r"check optim\.lr_critic"):
        trainer.fit()
    assert _saved(tmp_path) == []


def test_save_refuses_non_finite_weights(tmp_path):
    trainer = _run(tmp_path)
    with torch.no_grad():
        next(trainer.critic.parameters()).view(-1)[0] = math.inf
    with pytest.raises(ckpt.NonFiniteWeights, match="critic weight .* is not finite"):
        trainer.save()
    assert _saved(tmp_path) == []
