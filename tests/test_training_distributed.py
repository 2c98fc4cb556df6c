"""FSDP2 on CPU with gloo: 2 processes x batch 1 give the losses of 1 process x batch 2."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training_helpers import tiny_config, tiny_trainer

SECTIONS = dict(optim={"generator_every": 2}, train={"steps": 3, "save_every": 3})


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = tiny_config("stream_r1", out, optim={"generator_every": 2, "batch_size": 1},
                          train={"steps": 3, "save_every": 3})
        logs = tiny_trainer(cfg).fit()
        if rank == 0:
            with open(os.path.join(out, "logs.json"), "w") as f:
                json.dump(logs, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_ranks_match_one_process(tmp_path):
    torch.set_num_threads(1)
    single = tiny_trainer(tiny_config("stream_r1", str(tmp_path / "single"), optim={"generator_every": 2,
                                      "batch_size": 2}, train={"steps": 3, "save_every": 3}))
    ref = single.fit()
    out = str(tmp_path / "dist")
    os.makedirs(out)
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    with open(os.path.join(out, "logs.json")) as f:
        got = json.load(f)
    assert [g["exit_step"] for g in got] == [r["exit_step"] for r in ref]
    for r, g in zip(ref, got):
        for key in ("critic_loss", "generator_loss", "reward_MQ", "w_inter", "grad_norm_critic"):
            if key in r:
                assert g[key] == pytest.approx(r[key], rel=1e-4, abs=1e-6), key
    # The gathered full weights of the sharded run equal the single-process ones.
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "single" / "checkpoints" / "step_00000003" / "generator.safetensors"))
    b = load_file(os.path.join(out, "checkpoints", "step_00000003", "generator.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
