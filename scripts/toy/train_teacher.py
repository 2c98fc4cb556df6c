"""Train the toy world's bidirectional teacher by flow matching on freshly rendered world clips.

    python scripts/toy/train_teacher.py --steps 1500 --seed 0 --out stage1.safetensors
    python scripts/toy/train_teacher.py --steps 1200 --seed 1 --lr 5e-4 --init stage1.safetensors

CPU, one thread by default; reproducible from the seed (model init, clips, noise, timesteps).
Loss: ``|| v_theta(x_s, s, c) - (eps - x0) ||^2`` with ``s`` uniform warped by shift 3 (as the
sampler's grid), the caption dropped (empty prompt) 10% of the time for guidance.
"""

from __future__ import annotations

import argparse

import torch

from stream_r1_fast.models import CausalWanTransformer
from stream_r1_fast.toy.codec import ToyCodec
from stream_r1_fast.toy.fit import Fitter, flow_matching_loss, warmup_cosine
from stream_r1_fast.toy.models import TEACHER_CONFIG, WEIGHTS, load_transformer_file, save_transformer
from stream_r1_fast.toy.text import ToyTextEncoder
from stream_r1_fast.toy.world import ToyWorld


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", help="start from these weights (a second stage) instead of a fresh init")
    ap.add_argument("--codec", default=str(WEIGHTS / "codec.safetensors"))
    ap.add_argument("--out", default=str(WEIGHTS / "teacher.safetensors"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    world, codec, text = ToyWorld(), ToyCodec.from_file(args.codec), ToyTextEncoder()
    model = CausalWanTransformer(**TEACHER_CONFIG).train()
    if args.init:
        model.load_state_dict(load_transformer_file(args.init).state_dict())
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    warmup = min(100, args.steps // 10 + 1)
    fit = Fitter(model, opt, warmup_cosine(opt, warmup, args.steps), args.steps)
    g = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        clips = [world.sample(g) for _ in range(args.batch)]
        video = torch.stack([c for c, _ in clips]).permute(0, 2, 1, 3, 4) * 2 - 1
        captions = [a.caption if torch.rand((), generator=g) > 0.1 else "" for _, a in clips]
        with torch.no_grad():
            x0 = codec.encode(video)
        fit.step(step, flow_matching_loss(model, x0, text(captions), g))
    model.eval()
    save_transformer(model, args.out, steps=args.steps, seed=args.seed, final_loss_ema=f"{fit.ema:.4f}",
                     train_seconds=f"{fit.elapsed:.0f}")
    print(f"teacher: {params / 1e6:.2f} M parameters, {args.steps} steps, loss (EMA) {fit.ema:.4f}, "
          f"{fit.elapsed:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
