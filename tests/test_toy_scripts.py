"""Each toy training script runs a few steps (--steps) and writes loadable weights."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from stream_r1_fast.toy.codec import ToyCodec
from stream_r1_fast.toy.models import WEIGHTS, load_transformer_file
from stream_r1_fast.toy.reward import ToyRewardModel

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "toy"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"toy_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_ode_init(tmp_path, capsys):
    out = tmp_path / "student_ode.safetensors"
    _script("ode_init").main(["--pairs", "2", "--steps", "2", "--batch", "2", "--out", str(out)])
    student, teacher = load_transformer_file(out), load_transformer_file(WEIGHTS / "teacher.safetensors")
    assert dict(student.config) == dict(teacher.config)
    changed = [n for n, p in student.state_dict().items() if not torch.equal(p, teacher.state_dict()[n])]
    assert changed, "two regression steps must move the student off the teacher's weights"
    assert "2 teacher ODE solutions" in capsys.readouterr().out


def test_train_student(tmp_path, capsys):
    from safetensors import safe_open

    # The shipped recipe with 2 captions: its 4096 take ~15 s to draw.
    data = yaml.safe_load((SCRIPTS.parents[1] / "configs" / "toy_stream_r1.yaml").read_text())
    data["data"]["prompts"]["kwargs"]["count"] = 2
    config = tmp_path / "toy_stream_r1.yaml"
    config.write_text(yaml.safe_dump(data))
    out, run = tmp_path / "x.safetensors", tmp_path / "run"
    _script("train_student").main(["--method", "stream_r1", "--config", str(config), "--steps", "1", "--batch", "1",
                                   "--init", str(WEIGHTS / "teacher.safetensors"), "--run-dir", str(run),
                                   "--out", str(out)])
    assert load_transformer_file(out).config.num_layers == 4
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["method"] == "stream_r1" and meta["steps"] == "1" and meta["init"] == "teacher.safetensors"
    assert (run / "checkpoints" / "step_00000001" / "COMPLETE").is_file()
    assert (run / "metrics.csv").read_text().count("\n") == 2
    assert "stream_r1 student: 1 steps" in capsys.readouterr().out


def test_train_student_rejects_a_config_of_another_method(tmp_path):
    with pytest.raises(SystemExit, match="weighting.mode is 'dmd'"):
        _script("train_student").main(["--method", "stream_r1", "--config",
                                       str(SCRIPTS.parents[1] / "configs" / "toy_dmd.yaml"), "--run-dir", str(tmp_path)])


def test_compare_evaluates_runs_and_writes_the_report(tmp_path):
    """The comparison on existing runs (the shipped students standing in for one seed's; the
    shipped Stream-R1 student for the ablations too), at a tiny size: every generator and cache policy is scored, the report and plots are written."""
    import json

    from stream_r1_fast.toy.evaluate import POLICIES

    runs = tmp_path / "runs" / "seed0"
    runs.mkdir(parents=True)
    (runs / "student_ode.safetensors").symlink_to(WEIGHTS / "student_ode.safetensors")
    for m in ("dmd", "re_dmd", "stream_r1", "stream_r1_inter", "stream_r1_intra"):
        (runs / m).mkdir()
        shipped = m if m in ("dmd", "re_dmd") else "stream_r1"  # the ablations do not ship
        (runs / m / f"student_{m}.safetensors").symlink_to(WEIGHTS / f"student_{shipped}.safetensors")
    out = tmp_path / "report"
    _script("compare").main(["--seeds", "0", "--runs", str(tmp_path / "runs"), "--out", str(out), "--skip-training",
                             "--clips", "2", "--long-factor", "2", "--long-clips", "1", "--windows", "2",
                             "--threads", "1"])
    data = json.loads((out / "results.json").read_text())
    (seed,) = data["per_seed"]
    assert list(seed["generators"]) == ["teacher", "ode", "dmd", "re_dmd", "stream_r1", "stream_r1_inter",
                                        "stream_r1_intra"]
    assert seed["generators"]["stream_r1_inter"] == seed["generators"]["stream_r1"]  # the same file: the same scores
    for name, metrics in seed["generators"].items():
        assert 0.0 <= metrics["color"] <= 1.0 and 0.0 <= metrics["count"] <= 1.0, name
        assert all(math.isfinite(v) for v in metrics.values()), name
    assert list(seed["long"]) == list(POLICIES)
    for label, run in seed["long"].items():
        assert run["starts"] == [0, 33] and len(run["windows"]) == 2, label
    # Before the first eviction (the first 33 frames fill 6 cached latent frames) every sink
    # policy attends to the same frames: the first windows agree exactly.
    assert seed["long"]["EMA-Sink"]["windows"][0] == seed["long"]["static sink"]["windows"][0]
    # ... and the distilled students are not the ODE initialisation.
    assert seed["generators"]["stream_r1"] != seed["generators"]["ode"]
    md = (out / "results.md").read_text()
    assert "| Stream-R1 |" in md and "| no sink |" in md and "mean ± std" in md
    assert "| no sink | after the first |" in md and "| Stream-R1 - DMD |" in md
    gens, paired = seed["generators"], data["summary"]["paired"]
    assert paired["stream_r1 - dmd"]["reward_MQ"] == [gens["stream_r1"]["reward_MQ"] - gens["dmd"]["reward_MQ"]]
    for png in ("methods.png", "long_rollouts.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The report is a function of results.json alone.
    (out / "results.md").unlink()
    _script("compare").main(["--out", str(out), "--report-only"])
    assert (out / "results.md").read_text() == md


@pytest.fixture
def v2_weights(tmp_path, monkeypatch):
    """A v2 world kit whose weights are a freshly fitted codec and an untrained 2-block teacher
    (the v2 weights ship once trained): what ``--world v2`` loads."""
    from stream_r1_fast.models import CausalWanTransformer
    from stream_r1_fast.toy import kits
    from stream_r1_fast.toy.models import TEACHER_CONFIG, save_transformer
    from stream_r1_fast.toy.text2 import ObjectTokenEncoder

    d = tmp_path / "v2"
    d.mkdir()
    video, _ = kits.toy_kit("v2").world(num_frames=9).batch(4, seed=0)
    ToyCodec.fit(video.permute(0, 2, 1, 3, 4) * 2 - 1, 16, 4).save(d / "codec.safetensors")
    torch.manual_seed(0)
    save_transformer(CausalWanTransformer(**dict(TEACHER_CONFIG, num_layers=2, text_dim=ObjectTokenEncoder.text_dim)),
                     d / "teacher.safetensors")
    monkeypatch.setitem(kits.KITS, "v2", lambda: kits._v2(d))
    return d


def test_ode_init_and_dmd_in_the_v2_world(v2_weights, tmp_path, capsys):
    from safetensors import safe_open

    _script("ode_init").main(["--world", "v2", "--pairs", "2", "--steps", "2", "--batch", "2"])
    ode = v2_weights / "student_ode.safetensors"  # the world's default output
    student = load_transformer_file(ode)
    assert student.config.text_dim == 32 and student.config.num_layers == 2
    data = yaml.safe_load((SCRIPTS.parents[1] / "configs" / "toy2_dmd.yaml").read_text())
    data["data"]["prompts"]["kwargs"]["count"] = 2
    config = tmp_path / "toy2_dmd.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "dmd.safetensors"
    _script("train_student").main(["--world", "v2", "--method", "dmd", "--config", str(config), "--steps", "1",
                                   "--batch", "1", "--run-dir", str(tmp_path / "run"), "--out", str(out)])
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["world"] == "v2" and meta["init"] == "student_ode.safetensors" and meta["steps"] == "1"
    assert "dmd student: 1 steps" in capsys.readouterr().out
    # The evaluation streams and scores it in the v2 world (its codec, captions and oracle).
    from stream_r1_fast.toy.evaluate import sample_teacher, score, stream_student
    from stream_r1_fast.toy.kits import toy_kit

    kit = toy_kit("v2")
    caps = kit.captions(2, seed=5)
    video, fps = stream_student(load_transformer_file(out), caps, 0, num_frames=9, kit=kit)
    assert video.shape == (2, 9, 3, 32, 32) and fps > 0
    metrics = score(video, caps, kit=kit)
    assert {"ghost_rate", "stuck_rate", "direction"} <= set(metrics)
    video, _ = sample_teacher(load_transformer_file(v2_weights / "teacher.safetensors"), caps, 0, num_frames=9, steps=2,
                              kit=kit)
    assert video.shape == (2, 9, 3, 32, 32)


def test_train_student_checks_the_world_of_its_config(tmp_path):
    with pytest.raises(SystemExit, match="the v2 world's is 'stream_r1_fast.toy.recipe:build_models_v2'"):
        _script("train_student").main(["--world", "v2", "--method", "dmd", "--config",
                                       str(SCRIPTS.parents[1] / "configs" / "toy_dmd.yaml"), "--run-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="the v2 world has no stream_r1 recipe yet"):
        _script("train_student").main(["--world", "v2", "--method", "stream_r1", "--run-dir", str(tmp_path)])


def test_toy_kits_name_each_worlds_pieces():
    from stream_r1_fast.toy.kits import toy_kit
    from stream_r1_fast.toy.recipe import world_captions, world_captions_v2
    from stream_r1_fast.toy.text import ToyTextEncoder
    from stream_r1_fast.toy.text2 import ObjectTokenEncoder
    from stream_r1_fast.toy.world import ToyWorld

    v1, v2 = toy_kit("v1"), toy_kit("v2")
    assert v1.weights == WEIGHTS and v2.weights == WEIGHTS / "v2"
    assert isinstance(v1.text_encoder(), ToyTextEncoder) and isinstance(v2.text_encoder(), ObjectTokenEncoder)
    # v1's captions are those the shipped students were trained on (the same draws as before kits).
    g = torch.Generator().manual_seed(3)
    assert world_captions(4, seed=3) == [ToyWorld().sample_attributes(g).caption for _ in range(4)]
    caps = world_captions_v2(4, seed=3)
    assert len(caps) == 4 and all(" size " not in c for c in caps)
    v2.text_encoder()(caps)  # every caption parses in v2's grammar
    video, attrs = v2.world(num_frames=9).batch(1, seed=0)
    assert v2.score_clip(video[0], attrs[0].caption)["color"] == 1.0
    with pytest.raises(ValueError, match="unknown toy world 'v3'"):
        toy_kit("v3")


def test_the_v2_kit_follows_the_world_its_teacher_was_trained_on(tmp_path):
    import json

    from stream_r1_fast.models import CausalWanTransformer
    from stream_r1_fast.toy import kits
    from stream_r1_fast.toy.models import TEACHER_CONFIG, save_transformer

    assert kits._v2(tmp_path).world().max_objects == 2  # no teacher: the world's defaults
    save_transformer(CausalWanTransformer(**dict(TEACHER_CONFIG, num_layers=1, text_dim=32)),
                     tmp_path / "teacher.safetensors", run=json.dumps({"objects": 1, "speeds": [1.0, 3.0], "seed": 4}))
    world = kits._v2(tmp_path).world(num_frames=9)
    assert (world.min_objects, world.max_objects, world.speeds, world.num_frames) == (1, 1, (1.0, 3.0), 9)
    assert all(len(c.split(" and ")) == 1 for c in kits._v2(tmp_path).captions(8))


def test_train_reward_v2_caches_data_trains_and_reports_spearman(v2_weights, tmp_path, capsys):
    script = _script("train_reward_v2")
    args = ["--teacher", str(v2_weights / "teacher.safetensors"), "--teacher-steps", "2", "--teacher-cfg", "1",
            "--frames", "9", "--captions", "3", "--eval-captions", "3", "--steps", "2", "--groups", "2",
            "--data", str(tmp_path / "data"), "--out", str(tmp_path / "reward.safetensors")]
    res = script.main(args)
    names = script.generators(script.parse_args(args))
    assert names[:3] == ["truth", "codec", "swap"] and names[-1] == "teacher0:2:1"
    assert set(res["per_generator"]) == set(names)
    assert all(-1 <= v <= 1 for v in res["overall"].values() if v is not None)
    model = ToyRewardModel.from_file(tmp_path / "reward.safetensors")
    assert model.world == "v2" and float(model.std.min()) > 0
    out = model.rewards(torch.rand(2, 9, 3, 32, 32), ["a red square moving left fast on a black background"] * 2)
    assert out.raw.shape == (2, 3)
    cached = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert len(cached) == 2 * len(names) and "train_truth_3_s0.pt" in cached
    assert "held-out Spearman" in capsys.readouterr().out
    # A second run reuses every cached clip (no generator runs again).
    script.main(args)
    assert "clips in" not in capsys.readouterr().out


def test_teacher_sampling_scores_each_sampler_setting(v2_weights, tmp_path, capsys):
    mod = _script("teacher_sampling")
    out = tmp_path / "sampling.json"
    rows = mod.main(["--weights", str(v2_weights), "--clips", "2", "--frames", "9",
                     "--setting", "steps=2,cfg=1", "--setting", "steps=3,cfg=2.5,shift=1", "--out", str(out)])
    assert [r["sampler"] for r in rows] == [{"steps": 2, "cfg": 1.0, "shift": 3.0}, {"steps": 3, "cfg": 2.5, "shift": 1.0}]
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and all(0 <= r["metrics"]["count"] <= 1 for r in rows)
    assert "steps   3 cfg  2.5 shift 1.0: count" in capsys.readouterr().out
    for bad in ("steps=0", "cfg=x", "guidance=2", "steps"):
        with pytest.raises(SystemExit):
            mod.main(["--weights", str(v2_weights), "--setting", bad])
    with pytest.raises(SystemExit):
        mod.main(["--weights", str(tmp_path / "nowhere")])


def test_evaluate_students_scores_teacher_and_students_on_the_same_captions(v2_weights, tmp_path, capsys):
    import shutil

    mod = _script("evaluate_students")
    shutil.copy(v2_weights / "teacher.safetensors", v2_weights / "student_same.safetensors")
    out = tmp_path / "students.json"
    result = mod.main(["--weights", str(v2_weights), "--clips", "2", "--frames", "9", "--sample-steps", "2",
                       "--long-factor", "2", "--out", str(out)])
    rows = result["rows"]
    assert list(rows) == ["truth", "teacher", "same"]  # the shipped-beside-the-teacher default
    assert rows["truth"]["metrics"]["count"] == 1.0 and rows["truth"]["metrics"]["direction"] == 1.0
    gap = rows["same"]["minus_teacher"]
    assert set(gap) == {"count", "color", "shape", "direction"}
    assert all(abs(gap[k] - (rows["same"]["metrics"][k] - rows["teacher"]["metrics"][k])) < 1e-3 for k in gap)
    assert rows["same"]["within_margin"] == all(g >= -0.05 for g in gap.values())
    assert rows["same"]["long"]["frames"] == 17
    assert json.loads(out.read_text())["rows"]["same"]["weights"].endswith("student_same.safetensors")
    assert "  - teach." in capsys.readouterr().out
    for bad in (["--student", "x"], ["--student", f"a={tmp_path / 'none'}"], ["--frames", "8"],
                ["--world", "v1", "--weights", str(v2_weights)]):
        with pytest.raises(SystemExit):
            mod.main(["--weights", str(v2_weights), *bad])
