"""The toy causal student's ODE-regression initialisation (stream_r1_fast/training/ode_regression.py).

    python scripts/toy/ode_init.py --pairs 512 --steps 600 --seed 0
    python scripts/toy/ode_init.py --world v2 --teacher runs/v2/teacher.safetensors --out runs/v2/student_ode.safetensors

1. ``--pairs`` teacher ODE solutions (24 Euler steps, shift 3, no guidance) from fresh noise for
   captions of random clips of ``--world`` (v1 or v2), keeping the states at the student's 4 timesteps;
2. ``--steps`` steps of regressing the student (initialised from the teacher's weights) onto the
   clean ends, chunk by chunk through its EMA-Sink KV cache, each chunk at a random student step.
CPU, one thread by default; reproducible from the seed.
"""

from __future__ import annotations

import argparse
import time

import torch

from stream_r1_fast.cache import CachePolicy
from stream_r1_fast.toy.distill import CHUNK_FRAMES, NUM_CHUNKS, student_sampler
from stream_r1_fast.toy.fit import Fitter, warmup_cosine
from stream_r1_fast.toy.kits import KITS, toy_kit
from stream_r1_fast.toy.models import load_transformer_file, save_transformer
from stream_r1_fast.training.ode_regression import ode_regression_loss, teacher_ode_pairs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=512, help="teacher ODE solutions to regress on")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--world", choices=sorted(KITS), default="v1", help="the toy world (default v1)")
    ap.add_argument("--teacher", help="default: the world's shipped teacher")
    ap.add_argument("--out", help="default: the world's shipped student_ode.safetensors")
    args = ap.parse_args(argv)
    kit = toy_kit(args.world)
    args.teacher = args.teacher or str(kit.weights / "teacher.safetensors")
    args.out = args.out or str(kit.weights / "student_ode.safetensors")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()

    teacher, text, codec = load_transformer_file(args.teacher), kit.text_encoder(), kit.codec()
    timesteps = student_sampler().timesteps
    captions = kit.captions(args.pairs, seed=1000 + args.seed)
    world = kit.world()
    grid = world.height // codec.spatial_factor, world.width // codec.spatial_factor
    g = torch.Generator().manual_seed(args.seed)
    frames = CHUNK_FRAMES * NUM_CHUNKS
    states, ends = [], []
    for i in range(0, args.pairs, 32):
        batch = captions[i:i + 32]
        noise = torch.randn(len(batch), codec.latent_channels, frames, *grid, generator=g)
        s, x0 = teacher_ode_pairs(teacher, text(batch), None, noise, student_timesteps=timesteps)
        states.append(s)
        ends.append(x0)
    states, ends = torch.cat(states, 1), torch.cat(ends)
    print(f"{args.pairs} teacher ODE solutions in {time.time() - start:.0f} s", flush=True)

    student = load_transformer_file(args.teacher).train().requires_grad_(True)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    fit = Fitter(student, opt, warmup_cosine(opt, min(50, args.steps // 10 + 1), args.steps), args.steps)
    policy = CachePolicy()
    for step in range(args.steps):
        pick = torch.randint(0, args.pairs, (args.batch,), generator=g)
        chunk_steps = torch.randint(0, len(timesteps), (args.batch, NUM_CHUNKS), generator=g)
        loss = ode_regression_loss(student, text([captions[i] for i in pick.tolist()]), states[:, pick], ends[pick],
                                   chunk_steps, timesteps=timesteps, chunk_frames=CHUNK_FRAMES, policy=policy)
        fit.step(step, loss)
    student.eval()
    save_transformer(student, args.out, kind="causal student, ODE-regression initialisation", world=args.world,
                     pairs=args.pairs,
                     steps=args.steps, seed=args.seed, final_loss_ema=f"{fit.ema:.4f}",
                     train_seconds=f"{time.time() - start:.0f}")
    print(f"ODE-initialised student: {args.steps} steps, loss (EMA) {fit.ema:.4f}, {time.time() - start:.0f} s "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
