"""Distil the toy teacher into a causal student by DMD, Re-DMD or Stream-R1 (or one of
Stream-R1's two levels alone: ``stream_r1_inter``, ``stream_r1_intra``).

    python scripts/toy/train_student.py --method stream_r1 --seed 0 \
        --init runs/toy/seed0/student_ode.safetensors --run-dir runs/toy/seed0/stream_r1

The recipe is ``configs/toy_<method>.yaml`` run by the training engine (the same
:class:`~stream_r1_fast.training.Trainer` as ``stream-r1 train``; checkpoints, metrics.csv
and TensorBoard logs under ``--run-dir``, an interrupted run resumes from its last complete
checkpoint). The generator starts from ``--init`` (the ODE-initialised student); what is saved
to ``--out`` is its EMA weights, as a toy transformer file (config in the metadata).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stream_r1_fast.toy.kits import KITS, toy_kit
from stream_r1_fast.toy.models import save_transformer
from stream_r1_fast.toy.recipe import build_toy_trainer
from stream_r1_fast.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# world -> (config file prefix, the model factory its configs name)
WORLD_CONFIGS = {"v1": ("toy_", "stream_r1_fast.toy.recipe:build_models"),
                 "v2": ("toy2_", "stream_r1_fast.toy.recipe:build_models_v2")}
# recipe (configs/toy_<recipe>.yaml) -> the weighting.mode it must have
RECIPES = {"dmd": "dmd", "re_dmd": "re_dmd", "stream_r1": "stream_r1", "stream_r1_inter": "stream_r1",
           "stream_r1_intra": "stream_r1"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=list(RECIPES), required=True)
    ap.add_argument("--world", choices=sorted(KITS), default="v1", help="the toy world (default v1)")
    ap.add_argument("--config", help="default: configs/toy_<method>.yaml (v1), configs/toy2_<method>.yaml (v2)")
    ap.add_argument("--steps", type=int, help="default: the config's train.steps")
    ap.add_argument("--batch", type=int, help="rollouts per step (default: the config's optim.batch_size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", help="the ODE-initialised student (default: the world's shipped one)")
    ap.add_argument("--run-dir", help="checkpoints and logs (default: the config's train.output_dir + /seed<seed>)")
    ap.add_argument("--out", help="the EMA student (default: <run-dir>/student_<method>.safetensors)")
    ap.add_argument("--progress", action="store_true", help="a tqdm bar (default: a line every 50 steps)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    prefix, factory = WORLD_CONFIGS[args.world]
    args.config = args.config or str(CONFIGS / f"{prefix}{args.method}.yaml")
    if not Path(args.config).is_file():
        raise SystemExit(f"no config {args.config} (the {args.world} world has no {args.method} recipe yet)")
    args.init = args.init or str(toy_kit(args.world).weights / "student_ode.safetensors")
    config = TrainConfig.from_yaml(args.config)
    if config.model.factory != factory:
        raise SystemExit(f"{args.config}: model.factory is {config.model.factory!r}; the {args.world} world's is {factory!r}")
    if config.weighting.mode != RECIPES[args.method]:
        raise SystemExit(f"{args.config}: weighting.mode is {config.weighting.mode!r}, not {RECIPES[args.method]!r}")
    config.train.seed = args.seed
    if args.steps is not None:
        config.train.steps = args.steps
    if args.batch is not None:
        if args.batch < 1:
            raise SystemExit(f"--batch must be >= 1, got {args.batch}")
        config.optim.batch_size = args.batch
    config.train.output_dir = args.run_dir or f"{config.train.output_dir}/seed{args.seed}"
    config.train.progress = args.progress
    trainer = build_toy_trainer(config, student=args.init, world=args.world)
    resumed = trainer.resume()
    if resumed is not None:
        print(f"resumed from {resumed} (step {trainer.step})", flush=True)

    def report(logs: dict) -> None:
        step = int(logs["step"]) + 1
        if not args.progress and (step % 50 == 0 or step == config.train.steps):
            rewards = " ".join(f"{k[7:]} {logs[k]:+.2f}" for k in ("reward_VQ", "reward_MQ", "reward_TA") if k in logs)
            print(f"step {step:5d}  critic {logs['critic_loss']:.4f}  {rewards}  {logs['seconds']:.2f} s/step",
                  flush=True)

    trainer.fit(on_step=report)
    model = trainer.student
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(trainer.ema[name].to(p.dtype))
    out = Path(args.out or Path(config.train.output_dir) / f"student_{args.method}.safetensors")
    save_transformer(model.eval(), out, kind=f"causal student, {args.method} (EMA weights)", method=args.method,
                     world=args.world,
                     steps=trainer.step, seed=args.seed, init=Path(args.init).name)
    print(f"{args.method} student: {trainer.step} steps -> {out}")


if __name__ == "__main__":
    main()
