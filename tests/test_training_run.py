"""Self-Forcing rollout, short training runs of every weighting mode, resume, configs, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from stream_r1_fast.cache import CachePolicy
from stream_r1_fast.inference import FlowMatchSampler, StreamingPipeline
from stream_r1_fast.training.config import ConfigError, TrainConfig
from stream_r1_fast.training.dmd import critic_loss
from stream_r1_fast.training.rollout import self_forcing_rollout
from tiny_wan import tiny_transformer
from training_helpers import FixedTextEncoder, tiny_config, tiny_trainer

from stream_r1_fast.training.config import PACKAGED_CONFIGS
CONFIGS = PACKAGED_CONFIGS  # stream_r1_fast/configs (configs/ in the clone links there)


def test_rollout_at_last_exit_step_equals_inference():
    model = tiny_transformer(0)
    emb = FixedTextEncoder()(["a red circle moves left"])
    policy = CachePolicy(1, 1)
    with torch.no_grad():
        x = self_forcing_rollout(model, model.encode_text(emb), num_chunks=3, chunk_frames=1, latent_size=(4, 4),
                                 exit_step=3, policy=policy, generator=torch.Generator().manual_seed(5))

    class Encoder:
        def __call__(self, prompts):
            return emb

    pipe = StreamingPipeline(model, prompt_encoder=Encoder(), chunk_frames=1)
    ref = [c.latents for c in pipe.stream("p", num_chunks=3, height=32, width=32, seed=5, policy=policy, decode=False)]
    torch.testing.assert_close(x, torch.cat(ref, dim=2))


def test_rollout_gradient_flows_only_through_the_exit_step():
    model = tiny_transformer(0).train()
    text = model.encode_text(FixedTextEncoder()(["a", "b"]))
    calls = []
    original = model.forward_chunk

    def spy(latents, t, text, cache, update_cache=False):
        calls.append((float(t), torch.is_grad_enabled(), update_cache))
        return original(latents, t, text, cache, update_cache)

    model.forward_chunk = spy
    x = self_forcing_rollout(model, text, num_chunks=2, chunk_frames=1, latent_size=(4, 4), exit_step=2,
                             policy=CachePolicy(1, 1), generator=torch.Generator().manual_seed(0))
    steps = FlowMatchSampler().timesteps
    per_chunk = [(steps[0], False, False), (steps[1], False, False), (steps[2], True, False), (0.0, False, True)]
    assert calls == per_chunk * 2
    assert x.requires_grad
    x.sum().backward()
    assert model.patch_embedding.weight.grad is not None


@pytest.mark.parametrize("mode", ["dmd", "re_dmd", "stream_r1"])
def test_three_steps_lower_the_critic_loss(mode, tmp_path):
    trainer = tiny_trainer(tiny_config(mode, str(tmp_path)))
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        emb = FixedTextEncoder()(["a red circle moves left", "a blue square moves up"])
        x = trainer._rollout(None, [g, g], 3, emb)
    t, eps = torch.tensor([300.0, 800.0]), torch.randn(x.shape, generator=g)
    fake = trainer._score(trainer.critic, emb)
    with torch.no_grad():
        before = float(critic_loss(fake, x, t=t, eps=eps)[0])
    history = trainer.fit()
    with torch.no_grad():
        after = float(critic_loss(fake, x, t=t, eps=eps)[0])
    assert len(history) == 3 and after < before
    for logs in history:
        assert all(math.isfinite(v) for v in logs.values() if isinstance(v, float))
        assert "generator_loss" in logs
    if mode != "dmd":
        assert "reward_MQ" in history[0] and history[0]["w_inter"] > 0
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 4
    assert (tmp_path / "checkpoints" / "step_00000003" / "COMPLETE").is_file()


def _params(trainer):
    return {f"{n}.{k}": v.detach().clone() for n, m in (("g", trainer.student), ("c", trainer.critic))
            for k, v in m.state_dict().items()} | {f"ema.{k}": v.clone() for k, v in trainer.ema.items()}


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    sections = dict(optim={"generator_every": 2}, train={"steps": 5, "save_every": 2})
    full = tiny_trainer(tiny_config("stream_r1", str(tmp_path / "full"), **sections))
    full_logs = full.fit()

    cfg = tiny_config("stream_r1", str(tmp_path / "crash"), **sections)
    crashed = tiny_trainer(cfg)

    def boom(logs):
        if logs["step"] == 2:  # after the 3rd step; the last checkpoint is step 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        crashed.fit(on_step=boom)
    # A half-written later checkpoint must be ignored.
    (tmp_path / "crash" / "checkpoints" / "step_00000004.tmp").mkdir()
    resumed = tiny_trainer(cfg)
    assert resumed.resume().name == "step_00000002"
    assert resumed.step == 2 and resumed.weighting.balance.steps == 1  # one generator step (0)
    logs = resumed.fit()
    assert [lg["step"] for lg in logs] == [2, 3, 4]
    for a, b in zip(full_logs[2:], logs):
        for key in ("critic_loss", "generator_loss", "w_inter", "exit_step"):
            assert a.get(key) == b.get(key), key
    pa, pb = _params(full), _params(resumed)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    state = torch.load(tmp_path / "crash" / "checkpoints" / "step_00000005" / "optimizers.pt", weights_only=True)
    assert set(state) == {"generator", "critic"}


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="optim.lr_gen"):
        TrainConfig.from_dict({"optim": {"lr_gen": 1.0}})
    with pytest.raises(ConfigError, match="rollout.num_chunks"):
        TrainConfig.from_dict({"rollout": {"num_chunks": 0}})
    with pytest.raises(ConfigError, match="optim.betas"):
        TrainConfig.from_dict({"optim": {"betas": "x"}})
    with pytest.raises(ConfigError, match="reward.factory"):
        TrainConfig.from_dict({"weighting": {"mode": "stream_r1"}})
    with pytest.raises(ConfigError, match="weighting.mode"):
        TrainConfig.from_dict({"weighting": {"mode": "grpo"}})
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        TrainConfig.from_dict({"trian": {}})


@pytest.mark.parametrize("name", ["tiny_wan_smoke.yaml", "wan2.1_1.3b_stream_r1.yaml", "toy_dmd.yaml",
                                  "toy_re_dmd.yaml", "toy_stream_r1.yaml", "toy_stream_r1_inter.yaml",
                                  "toy_stream_r1_intra.yaml"])
def test_shipped_configs_parse(name):
    cfg = TrainConfig.from_yaml(CONFIGS / name)
    if name.startswith("wan"):
        assert cfg.optim.lr_generator == 2e-6 and cfg.optim.lr_critic == 4e-7 and cfg.optim.betas == [0.0, 0.999]
        assert cfg.weighting.mode == "stream_r1" and cfg.dmd.guidance_scale == 3.0 and cfg.optim.ema_start == 200


def test_cli_train_runs_and_resumes(tmp_path, capsys):
    import yaml

    from stream_r1_fast.cli import main
    from tiny_wan import write_pipeline_dir

    model_dir = write_pipeline_dir(tmp_path / "model")
    data = yaml.safe_load((CONFIGS / "tiny_wan_smoke.yaml").read_text())
    data["model"]["dir"] = str(model_dir)
    data["rollout"].update(num_chunks=1, chunk_frames=1, height=16, width=16, sink_frames=1, window_frames=1)
    data["optim"]["generator_every"] = 1
    data["train"].update(steps=2, save_every=1, output_dir=str(tmp_path / "run"), progress=False)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    assert main(["train", "--config", str(cfg_path)]) == 0
    assert main(["train", "--config", str(cfg_path), "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "done: 3 steps" in out
    data["optim"]["lr_gen"] = 1
    cfg_path.write_text(yaml.safe_dump(data))
    assert main(["train", "--config", str(cfg_path)]) == 2
    assert "optim.lr_gen" in capsys.readouterr().err


def test_cli_train_sigterm_saves_and_exits_with_128_plus_signal(tmp_path, capsys):
    import os
    import signal
    import threading
    import time

    import yaml

    from stream_r1_fast.cli import main
    from tiny_wan import write_pipeline_dir

    model_dir = write_pipeline_dir(tmp_path / "model")
    data = yaml.safe_load((CONFIGS / "tiny_wan_smoke.yaml").read_text())
    data["model"]["dir"] = str(model_dir)
    data["rollout"].update(num_chunks=1, chunk_frames=1, height=16, width=16, sink_frames=1, window_frames=1)
    data["train"].update(steps=1000, save_every=1000, output_dir=str(tmp_path / "run"), progress=False)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    metrics, done = tmp_path / "run" / "metrics.csv", threading.Event()

    def preempt():  # as a scheduler would, once a step is done
        while not done.is_set():
            if metrics.is_file() and metrics.read_text().count("\n") >= 2:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    sender = threading.Thread(target=preempt)
    sender.start()
    try:
        status = main(["train", "--config", str(cfg_path)])
    finally:
        done.set()
        sender.join()
    assert status == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "SIGTERM received" in err and "interrupted at step" in err, err
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    assert (tmp_path / "run" / "checkpoints" / f"step_{step:08d}" / "manifest.json").is_file()
    assert main(["train", "--config", str(cfg_path), "--steps", str(step + 1)]) == 0
    assert f"(step {step})" in capsys.readouterr().out
