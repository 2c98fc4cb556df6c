"""Training configs from the command line: ``key=value`` overrides checked by the config schema,
packaged recipes by name, the resolved config saved beside the run (and a warning when a
resume changes it), prompt files (.txt / .jsonl) with errors naming file:line, the preflight
(fast, naming key and path), checkpoint retention (``train.keep_last``), the learning-rate
columns, the progress bar's ``gen=`` and the TensorBoard sample videos."""

from __future__ import annotations

import csv
import json
import sys
import time
import types
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import stream_r1_fast.rewards.video_reward  # noqa: F401  (imported once here, not inside the timed preflight)
from stream_r1_fast.cli import main
from stream_r1_fast.training import checkpoint as ckpt
from stream_r1_fast.training.config import (
    PACKAGED_CONFIGS, ConfigError, ConfigWarning, TrainConfig, apply_overrides, packaged_configs, preflight,
    read_prompt_file, resolve_config_path,
)
from training_helpers import tiny_config, tiny_trainer

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("tiny_wan_smoke", "toy2_dmd", "toy_dmd", "toy_re_dmd", "toy_stream_r1", "toy_stream_r1_inter", "toy_stream_r1_intra",
           "wan2.1_1.3b_stream_r1")


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------ overrides


def test_overrides_are_typed_by_yaml_and_checked_by_the_schema():
    cfg = TrainConfig.from_yaml("toy_stream_r1", [
        "optim.lr_generator=1e-5",          # no dot: PyYAML alone would read a string
        "weighting.mode=re_dmd",
        "train.steps=10",
        "rollout.steps=[1000, 500]",
        "train.progress=false",
        "train.device=null",
        "train.output_dir=2024-01-01",      # YAML would read a date; a string field takes the text
        "reward.kwargs.path=/data/reward",  # nested into a dict field
        "reward.kwargs.fps=2",
        "data.negative_prompt=static: blurry",
    ])
    assert cfg.optim.lr_generator == 1e-5 and isinstance(cfg.optim.lr_generator, float)
    assert cfg.weighting.mode == "re_dmd" and cfg.train.steps == 10 and cfg.rollout.steps == [1000, 500]
    assert cfg.train.progress is False and cfg.train.device is None and cfg.train.output_dir == "2024-01-01"
    assert cfg.reward.kwargs == {"path": "/data/reward", "fps": 2}
    assert cfg.data.negative_prompt == "static: blurry"
    # the file is untouched by them
    assert TrainConfig.from_yaml("toy_stream_r1").optim.lr_generator == 5e-5
    # later overrides win; (key, value) pairs are accepted
    cfg = TrainConfig.from_yaml("toy_dmd", ["train.steps=3", ("train.steps", 7)])
    assert cfg.train.steps == 7


def test_yaml_files_read_exponents_without_a_dot_as_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr_generator: 1e-5\n  lr_critic: 3E-7\n")
    cfg = TrainConfig.from_yaml(path)
    assert cfg.optim.lr_generator == 1e-5 and cfg.optim.lr_critic == 3e-7


@pytest.mark.parametrize("item, says", [
    ("optim.lr_gen=1", r"unknown config key 'optim\.lr_gen'; valid keys: \[.*'lr_generator'"),
    ("trian.steps=1", r"unknown config key 'trian'; valid keys: \['data', 'dmd'"),
    ("train.steps=abc", r"config key 'train\.steps' must be int, got 'abc'"),
    ("optim.betas=0.5", r"config key 'optim\.betas' must be list"),
    ("rollout.num_chunks=0", r"'rollout\.num_chunks' must be >= 1"),
    ("train.steps", r"must be KEY=VALUE"),
    ("=3", r"must be KEY=VALUE"),
    ("optim..lr=3", r"must be KEY=VALUE"),
    ("optim.lr_generator.x=1", r"'optim\.lr_generator' is a value, not a section"),
    ("rollout.steps=[1000,", r"not valid YAML"),
    ("weighting.mode=grpo", r"weighting\.mode"),
])
def test_bad_overrides_name_the_key(item, says):
    with pytest.raises(ConfigError, match=says):
        TrainConfig.from_yaml("toy_dmd", [item])


def test_apply_overrides_copies_and_refuses_unknown_pairs():
    raw = {"optim": {"lr_generator": 1.0}}
    out = apply_overrides(raw, ["optim.lr_critic=2"])
    assert raw == {"optim": {"lr_generator": 1.0}} and out["optim"] == {"lr_generator": 1.0, "lr_critic": 2}
    with pytest.raises(ConfigError, match="unknown config key 'train.stepz'"):
        apply_overrides(raw, [("train.stepz", 1)])


# ------------------------------------------------------------------ packaged recipes


def test_packaged_recipes_by_name_and_the_configs_link():
    assert tuple(packaged_configs()) == RECIPES
    assert PACKAGED_CONFIGS == REPO / "stream_r1_fast" / "configs"
    for name in RECIPES:
        assert resolve_config_path(name) == PACKAGED_CONFIGS / f"{name}.yaml"
        # configs/ in a clone is the same folder (kept for existing commands and scripts)
        assert (REPO / "configs" / f"{name}.yaml").resolve() == (PACKAGED_CONFIGS / f"{name}.yaml").resolve()
        assert TrainConfig.from_yaml(name).to_dict() == TrainConfig.from_yaml(REPO / "configs" / f"{name}.yaml").to_dict()
    with pytest.raises(FileNotFoundError, match=r"'toy_dmdd' is not a packaged recipe \(packaged: tiny_wan_smoke"):
        resolve_config_path("toy_dmdd")
    with pytest.raises(FileNotFoundError, match="config file toy_dmd.yaml does not exist$"):
        resolve_config_path("toy_dmd.yaml")  # a file name is a path, not a recipe name


def test_an_existing_path_wins_over_a_recipe_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("toy_dmd").write_text("train:\n  steps: 5\n")
    assert resolve_config_path("toy_dmd") == Path("toy_dmd")
    assert TrainConfig.from_yaml("toy_dmd").train.steps == 5


def test_cli_lists_the_packaged_recipes(capsys):
    assert main(["train", "--list-configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(RECIPES)
    assert all(len(line.split()) > 3 for line in lines)  # each with its description


def test_the_wheel_ships_the_recipes():
    pathutil = pytest.importorskip("scikit_build_core.build._pathutil")
    try:
        mapping = pathutil.packages_to_file_mapping(
            packages={"stream_r1_fast": str(REPO / "stream_r1_fast")}, platlib_dir=Path("/platlib"), include=[],
            src_exclude=[], target_exclude=[], build_dir="build/x", mode="default")
    except TypeError:
        pytest.skip("this scikit-build-core's file mapping has another signature")
    shipped = {Path(target).name for target in mapping.values() if "/stream_r1_fast/configs/" in target}
    assert shipped == {f"{name}.yaml" for name in RECIPES}


def test_cli_overrides_unknown_key_is_one_line(capsys):
    assert main(["train", "--config", "wan2.1_1.3b_stream_r1", "optim.lr_gen=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config key 'optim.lr_gen'; valid keys:" in err and "'lr_generator'" in err
    assert main(["train", "--config", "no_such_recipe"]) == 2
    assert "not a packaged recipe" in capsys.readouterr().err


# ------------------------------------------------------------------ the resolved config beside the run


def _smoke_cli(tmp_path, *extra):
    from tiny_wan import write_pipeline_dir

    model = write_pipeline_dir(tmp_path / "model")
    return ["train", "--config", "tiny_wan_smoke", f"model.dir={model}", "rollout.num_chunks=1",
            "rollout.chunk_frames=1", "rollout.height=16", "rollout.width=16", "rollout.sink_frames=1",
            "rollout.window_frames=1", "optim.generator_every=1", "train.save_every=1", "train.progress=false",
            f"train.output_dir={tmp_path / 'run'}", *extra]


def test_cli_overrides_reach_the_run_and_the_saved_config(tmp_path, capsys):
    assert main(_smoke_cli(tmp_path, "optim.lr_generator=3e-5", "--steps", "1", "train.keep_last=1")) == 0
    assert "done: 1 steps" in capsys.readouterr().out
    saved = tmp_path / "run" / "config.yaml"
    cfg = TrainConfig.from_yaml(saved)
    assert cfg.optim.lr_generator == 3e-5 and cfg.train.steps == 1 and cfg.rollout.height == 16
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert float(rows[0]["lr_generator"]) == 3e-5


def test_resolved_config_saved_and_a_changed_resume_warns(tmp_path):
    out = str(tmp_path / "run")
    first = tiny_trainer(tiny_config("dmd", out, train={"steps": 1, "save_every": 1}))
    first.fit()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved == first.config.to_dict()
    assert TrainConfig.from_yaml(tmp_path / "run" / "config.yaml").to_dict() == first.config.to_dict()

    # more steps only (a run-control key): resumes quietly
    again = tiny_trainer(tiny_config("dmd", out, train={"steps": 2, "save_every": 1}))
    assert again.resume() is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        again.fit()

    changed = tiny_trainer(tiny_config("dmd", out, optim={"lr_generator": 5e-5}, train={"steps": 3, "save_every": 1}))
    assert changed.resume() is not None
    with pytest.warns(ConfigWarning, match=r"resuming at step 2 with a config that differs .*config\.yaml: "
                                           r"optim\.lr_generator: 0\.0001 -> 5e-05") as record:
        changed.fit()
    assert "train.steps: 2 -> 3" in str(record[0].message)
    assert TrainConfig.from_yaml(tmp_path / "run" / "config.yaml").optim.lr_generator == 5e-5


# ------------------------------------------------------------------ prompt files


def test_txt_prompt_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# VidProM, filtered\n\na red fox runs\n   \n  a cat sleeps  \n#another comment\n")
    entries = read_prompt_file(path)
    assert [e.text for e in entries] == ["a red fox runs", "a cat sleeps"]
    assert [e.where for e in entries] == [f"{path}:3", f"{path}:5"]
    cfg = tiny_config("dmd", str(tmp_path / "run"), data={"prompts": str(path)})
    assert cfg.prompt_list() == ["a red fox runs", "a cat sleeps"]


def test_jsonl_prompt_file_uses_the_extended_prompt(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [{"prompt": "a fox", "extended_prompt": "A red fox runs through deep snow at dusk.", "seed": 7},
             {"prompt": "a cat", "other": 1}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    entries = read_prompt_file(path)
    assert [e.text for e in entries] == ["A red fox runs through deep snow at dusk.", "a cat"]
    assert [e.prompt for e in entries] == ["a fox", "a cat"] and [e.seed for e in entries] == [7, None]
    trainer = tiny_trainer(tiny_config("dmd", str(tmp_path / "run"), data={"prompts": str(path)}))
    assert trainer.prompts == ["A red fox runs through deep snow at dusk.", "a cat"]
    assert trainer._sample_seed == 7


@pytest.mark.parametrize("name, text, says", [
    ("p.jsonl", '{"prompt": "a"}\n{"prompt": "b",}\n', r"p\.jsonl:2: not valid JSON"),
    ("p.jsonl", '{"prompt": "a"}\n\n["a list"]\n', r"p\.jsonl:3: expected a JSON object"),
    ("p.jsonl", '{"text": "a"}\n', r"p\.jsonl:1: 'prompt' must be a non-empty string"),
    ("p.jsonl", '{"prompt": "  "}\n', r"p\.jsonl:1: 'prompt' must be a non-empty string"),
    ("p.jsonl", '{"prompt": "a", "extended_prompt": 3}\n', r"p\.jsonl:1: 'extended_prompt' must be"),
    ("p.jsonl", '{"prompt": "a"}\n{"prompt": "b", "seed": "7"}\n', r"p\.jsonl:2: 'seed' must be an int >= 0"),
    ("p.jsonl", '{"prompt": "a", "seed": true}\n', r"p\.jsonl:1: 'seed'"),
    ("p.txt", "# only comments\n\n", r"p\.txt holds no prompts"),
    ("p.json", '[{"prompt": "a"}]', r"\.json prompt file is not read; use \.jsonl"),
])
def test_bad_prompt_files_name_the_file_and_line(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"^config key 'data\.prompts': .*" + says):
        read_prompt_file(path)


def test_non_utf8_prompt_file_names_the_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"a fox\nb \xff cat\n")
    with pytest.raises(ConfigError, match=r"p\.txt:2: not UTF-8"):
        read_prompt_file(path)


# ------------------------------------------------------------------ preflight


def _wan_folder(tmp_path) -> Path:
    """The layout and the small JSON files of a Wan folder (no weights: the preflight reads none)."""
    root = tmp_path / "wan"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "vae" / "config.json").write_text(json.dumps({"dim_mult": [1, 2, 4, 4],
                                                          "temperal_downsample": [False, True, True]}))
    (root / "transformer" / "config.json").write_text(json.dumps({"patch_size": [1, 2, 2]}))
    return root


def _wan_recipe(tmp_path, **changes) -> TrainConfig:
    root = _wan_folder(tmp_path)
    (tmp_path / "ode_init.pt").write_bytes(b"")
    reward = tmp_path / "VideoReward"
    reward.mkdir(exist_ok=True)
    (reward / "model_config.json").write_text("{}")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"prompt {i}", "extended_prompt": f"an extended prompt {i}"})
                               + "\n" for i in range(20000)))
    overrides = {"model.dir": str(root), "model.student": str(tmp_path / "ode_init.pt"),
                 "model.teacher": str(root / "transformer"), "model.critic": str(root / "transformer"),
                 "reward.kwargs.path": str(reward), "data.prompts": str(prompts),
                 "train.output_dir": str(tmp_path / "runs" / "wan"), **changes}
    return TrainConfig.from_yaml("wan2.1_1.3b_stream_r1", list(overrides.items()))


def test_preflight_of_the_wan_recipe_is_fast(tmp_path):
    cfg = _wan_recipe(tmp_path)
    t0 = time.perf_counter()
    preflight(cfg)
    assert time.perf_counter() - t0 < 1.0
    assert not (tmp_path / "runs").exists()  # nothing created


@pytest.mark.parametrize("changes, says", [
    ({"model.dir": "/no/such/Wan"}, r"'model\.dir': no such folder '/no/such/Wan'.*model\.dir=PATH"),
    ({"model.student": "/no/ode.pt"}, r"'model\.student': no such file or folder '/no/ode\.pt'"),
    ({"data.prompts": "/no/prompts.txt"}, r"'data\.prompts': no such prompt file '/no/prompts\.txt'"),
    ({"reward.kwargs.path": "/no/reward"}, r"'reward\.kwargs\.path': no such file or folder '/no/reward'"),
    ({"reward.kwargs.base_model": "/no/qwen"}, r"'reward\.kwargs\.base_model': no such folder '/no/qwen'"),
    ({"rollout.height": 472}, r"'rollout\.height' must be a multiple of 16 pixels .*got 472"),
    ({"reward.factory": "no_such_module_q:f"}, r"'reward\.factory'.*cannot import module"),
])
def test_preflight_errors_name_the_key_and_the_path(tmp_path, changes, says):
    cfg = _wan_recipe(tmp_path, **changes)
    with pytest.raises(ConfigError, match=says):
        preflight(cfg)


def test_preflight_checks_the_reward_folder_layout(tmp_path):
    cfg = _wan_recipe(tmp_path)
    reward = Path(cfg.reward.kwargs["path"])
    (reward / "model_config.json").unlink()
    with pytest.raises(ConfigError, match=r"'reward\.kwargs\.path': '.*VideoReward' is not a VideoReward folder: it "
                                          r"has neither reward_config\.json .* nor model_config\.json"):
        preflight(cfg)
    (reward / "reward_config.json").write_text("{}")  # the merged layout
    preflight(cfg)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"'reward\.kwargs\.path': '.*file' is not a folder"):
        preflight(_wan_recipe(tmp_path, **{"reward.kwargs.path": str(tmp_path / "file")}))


def test_preflight_checks_prompt_lines_and_the_output_folder(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": 3}\n')
    with pytest.raises(ConfigError, match=rf"'data\.prompts': {bad}:2: 'prompt' must be"):
        preflight(_wan_recipe(tmp_path, **{"data.prompts": str(bad)}))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"'train\.output_dir': .*a_file/run' cannot be created .* is a file"):
        preflight(_wan_recipe(tmp_path, **{"train.output_dir": str(tmp_path / "a_file" / "run")}))
    with pytest.raises(ConfigError, match=r"'train\.output_dir': .*a_file' is a file, not a folder"):
        preflight(_wan_recipe(tmp_path, **{"train.output_dir": str(tmp_path / "a_file")}))
    cfg = _wan_recipe(tmp_path)
    (tmp_path / "wan" / "vae" / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"'model\.dir': '.*vae/config\.json' is missing"):
        preflight(cfg)


def test_cli_preflight_of_the_placeholder_recipe(capsys):
    t0 = time.perf_counter()
    assert main(["train", "--config", "wan2.1_1.3b_stream_r1"]) == 2
    assert time.perf_counter() - t0 < 1.0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'model.dir': no such folder '/data/Wan2.1-T2V-1.3B-Diffusers'" in err
    assert "hub" not in err.lower()


# ------------------------------------------------------------------ keep_last, lr columns, progress


def _checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_keep_last_keeps_the_newest(tmp_path):
    out = tmp_path / "run"
    tiny_trainer(tiny_config("dmd", str(out), train={"steps": 4, "save_every": 1, "keep_last": 2})).fit()
    assert _checkpoints(out) == ["step_00000003", "step_00000004"]
    out = tmp_path / "all"
    tiny_trainer(tiny_config("dmd", str(out), train={"steps": 3, "save_every": 1, "keep_last": 0})).fit()
    assert _checkpoints(out) == ["step_00000001", "step_00000002", "step_00000003"]


def test_keep_last_never_deletes_the_newest_checkpoint_that_verifies(tmp_path, monkeypatch):
    out = tmp_path / "run"
    (out / "checkpoints" / "step_final").mkdir(parents=True)  # not a step_N folder: never touched
    save = ckpt.save_checkpoint

    def save_and_corrupt(root, step, **kwargs):  # a bad write of step 3 (same size, other bytes)
        path = save(root, step, **kwargs)
        if step == 3:
            f = path / "generator.safetensors"
            data = bytearray(f.read_bytes())
            data[-1] ^= 0xFF
            f.write_bytes(bytes(data))
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", save_and_corrupt)
    trainer = tiny_trainer(tiny_config("dmd", str(out), train={"steps": 3, "save_every": 1, "keep_last": 1}))
    with pytest.warns(ckpt.CheckpointWarning, match=r"step_00000003 does not verify .*sha256 differs"):
        trainer.fit()
    assert _checkpoints(out) == ["step_00000002", "step_00000003", "step_final"]
    resumed = tiny_trainer(tiny_config("dmd", str(out), train={"steps": 4, "save_every": 1, "keep_last": 1}))
    with pytest.warns(ckpt.CheckpointWarning, match="skipping checkpoint .*step_00000003"):
        assert resumed.resume().name == "step_00000002"
    resumed.fit()  # steps 2, 3 again; step 3 is written anew and good: the older ones go
    assert _checkpoints(out) == ["step_00000004", "step_final"]


def test_metrics_have_learning_rate_columns(tmp_path):
    out = tmp_path / "run"
    history = tiny_trainer(tiny_config("dmd", str(out), optim={"lr_generator": 2e-4, "lr_critic": 3e-4})).fit()
    assert all(h["lr_generator"] == 2e-4 and h["lr_critic"] == 3e-4 for h in history)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 3 and {float(r["lr_generator"]) for r in rows} == {2e-4}
    assert {float(r["lr_critic"]) for r in rows} == {3e-4}


def test_progress_shows_gen_only_for_generator_steps(tmp_path):
    trainer = tiny_trainer(tiny_config("dmd", str(tmp_path / "run"), optim={"generator_every": 2},
                                       train={"steps": 4}))
    seen = []
    history = trainer.fit(on_step=lambda logs: seen.append(dict(trainer.last_postfix)))
    assert [("generator_loss" in h) for h in history] == [True, False, True, False]
    assert seen[0]["gen"] == f"{history[0]['generator_loss']:.4g}"
    assert seen[1]["gen"] == f"{history[0]['generator_loss']:.4g}@0"  # the last value, marked with its step
    assert seen[2]["gen"] == f"{history[2]['generator_loss']:.4g}"
    assert seen[3]["gen"].endswith("@2") and all("nan" not in s["gen"] for s in seen)
    # resumed on a critic-only step: no generator value yet, so none is shown
    trainer.fit(steps=5)
    assert "gen" in trainer.last_postfix
    fresh = tiny_trainer(tiny_config("dmd", str(tmp_path / "other"), optim={"generator_every": 2}))
    fresh.step = 1
    fresh._postfix({"step": 1, "critic_loss": 0.5})
    assert fresh.last_postfix == {"critic": "0.5"}


# ------------------------------------------------------------------ sample videos


def _tb_images(folder: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0})
    acc.Reload()
    return {tag: acc.Images(tag) for tag in acc.Tags()["images"]}


def test_sample_videos_without_tensorboard_warn_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed (the `train` extra)
    out = tmp_path / "run"
    trainer = tiny_trainer(tiny_config("dmd", str(out), train={"steps": 2, "sample_every": 1}))
    with pytest.warns(RuntimeWarning, match="TensorBoard is not installed") as record:
        history = trainer.fit()
    assert len(history) == 2 and sum("TensorBoard" in str(w.message) for w in record) == 1
    assert (out / "metrics.csv").read_text().count("\n") == 3 and not (out / "tensorboard").exists()


def test_sample_videos_without_moviepy_warn_once_and_log_frames(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.setitem(sys.modules, "moviepy", None)  # import moviepy -> ImportError
    monkeypatch.setitem(sys.modules, "moviepy.editor", None)
    out = tmp_path / "run"
    trainer = tiny_trainer(tiny_config("dmd", str(out), train={"steps": 4, "sample_every": 2}))
    with pytest.warns(RuntimeWarning, match=r"add_video needs moviepy < 2") as record:
        trainer.fit()
    assert sum("moviepy" in str(w.message) for w in record) == 1
    images = _tb_images(out / "tensorboard")
    assert [e.step for e in images["samples/ema_frames"]] == [2, 4]


def test_sample_videos_reach_tensorboard_and_do_not_change_the_run(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from PIL import Image

    class ImageSequenceClip:  # the part of moviepy.editor that TensorBoard's add_video uses
        def __init__(self, frames, fps):
            self.frames, self.fps = frames, fps

        def write_gif(self, filename, **kwargs):
            imgs = [Image.fromarray(f) for f in self.frames]
            imgs[0].save(filename, save_all=True, append_images=imgs[1:], duration=int(1000 / self.fps))

    editor = types.ModuleType("moviepy.editor")
    editor.ImageSequenceClip = ImageSequenceClip
    moviepy = types.ModuleType("moviepy")
    moviepy.editor = editor
    monkeypatch.setitem(sys.modules, "moviepy", moviepy)
    monkeypatch.setitem(sys.modules, "moviepy.editor", editor)

    plain = tiny_trainer(tiny_config("dmd", str(tmp_path / "plain"), train={"steps": 3})).fit()
    out = tmp_path / "run"
    trainer = tiny_trainer(tiny_config("dmd", str(out), train={"steps": 3, "sample_every": 1}))
    before = {n: p.detach().clone() for n, p in trainer.student.named_parameters()}
    video = trainer.sample()
    assert video.shape[:3] == (1, 5, 3) and 0.0 <= float(video.min()) and float(video.max()) <= 1.0
    assert all(torch.equal(before[n], p) for n, p in trainer.student.named_parameters())
    sampled = trainer.fit()
    for a, b in zip(plain, sampled):
        assert a["critic_loss"] == b["critic_loss"] and a["generator_loss"] == b["generator_loss"]
    events = _tb_images(out / "tensorboard")["samples/ema"]
    assert [e.step for e in events] == [1, 2, 3]
    assert events[0].encoded_image_string[:6] in (b"GIF87a", b"GIF89a")
