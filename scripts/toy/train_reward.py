"""Train the toy world's reward model (VQ, MQ, TA heads) on freshly rendered, labelled clips.

    python scripts/toy/train_reward.py --steps 700 --seed 0

Each clip independently gets, with probability 1/2 each: a visual corruption (VQ label 0), a
motion corruption (MQ label 0), a mismatched caption (TA label 0). Half of the clean clips are
passed through the toy codec first, so codec reconstructions count as clean. Loss: binary
cross-entropy per axis. Afterwards the raw logits' mean and std per axis on a held-out half
clean / half corrupted set are stored as the normalisation statistics, and held-out
accuracies are printed. Reproducible from the seed; CPU, one thread by default.
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F

from stream_r1_fast.toy.codec import ToyCodec
from stream_r1_fast.toy.fit import Fitter, warmup_cosine
from stream_r1_fast.toy.corruptions import MOTION, VISUAL, corrupt_motion, corrupt_visual, mismatch_caption
from stream_r1_fast.toy.reward import WEIGHTS, ToyRewardModel
from stream_r1_fast.toy.world import ToyWorld


def labelled_batch(world: ToyWorld, codec: ToyCodec, batch: int, rng: random.Random, g: torch.Generator):
    """(video [B, T, 3, H, W], captions, labels [B, 3] in {0, 1} for VQ, MQ, TA)."""
    attrs = [world.sample_attributes(g) for _ in range(batch)]
    videos, captions, labels = [], [], []
    for i, a in enumerate(attrs):
        good = [rng.random() < 0.5 for _ in range(3)]
        video = world.render(a) if good[1] else corrupt_motion(world, a, rng.choice(MOTION), rng)
        if good[0] and rng.random() < 0.5:
            with torch.no_grad():
                x = codec.decode(codec.encode(video.permute(1, 0, 2, 3)[None] * 2 - 1))
            video = ((x[0].permute(1, 0, 2, 3) + 1) / 2).clamp(0, 1)
        if not good[0]:
            video = corrupt_visual(video, rng.choice(VISUAL), rng)
        caption = a.caption if good[2] else mismatch_caption(a, attrs[(i + 1) % batch], rng)
        videos.append(video)
        captions.append(caption)
        labels.append([float(x) for x in good])
    return torch.stack(videos), captions, torch.tensor(labels)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-batches", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--codec", default=str(WEIGHTS / "codec.safetensors"))
    ap.add_argument("--out", default=str(WEIGHTS / "reward.safetensors"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng, g = random.Random(args.seed), torch.Generator().manual_seed(args.seed)

    world, codec = ToyWorld(), ToyCodec.from_file(args.codec)
    model = ToyRewardModel().train()
    # The palette term of the TA head has 4 parameters on log-scale inputs: a 10x learning rate
    # lets it settle within the run (at the common rate it had barely moved after 800 steps).
    palette = list(model.ta_palette.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("ta_palette.")]
    opt = torch.optim.AdamW([{"params": rest}, {"params": palette, "lr": 10 * args.lr}], lr=args.lr, weight_decay=0.01)
    fit = Fitter(model, opt, warmup_cosine(opt, 50, args.steps), args.steps)
    for step in range(args.steps):
        video, captions, labels = labelled_batch(world, codec, args.batch, rng, g)
        raw = model(video, model.text(captions))
        fit.step(step, F.binary_cross_entropy_with_logits(raw, labels))

    # Held-out statistics (fresh seed): normalisation and accuracy per axis.
    model.eval()
    rng_e, g_e = random.Random(args.seed + 10_000), torch.Generator().manual_seed(args.seed + 10_000)
    raws, labs = [], []
    with torch.no_grad():
        for _ in range(args.eval_batches):
            video, captions, labels = labelled_batch(world, codec, args.batch, rng_e, g_e)
            raws.append(model(video, model.text(captions)))
            labs.append(labels)
    raw, lab = torch.cat(raws), torch.cat(labs)
    model.mean.copy_(raw.mean(0))
    model.std.copy_(raw.std(0).clamp_min(1e-3))
    acc = ((raw > 0).float() == lab).float().mean(0)
    model.save(args.out, steps=args.steps, seed=args.seed, final_loss_ema=f"{fit.ema:.4f}",
               heldout_accuracy=",".join(f"{a:.3f}" for a in acc.tolist()))
    print(f"reward model: {sum(p.numel() for p in model.parameters()) / 1e3:.0f} k parameters, {args.steps} steps, "
          f"loss (EMA) {fit.ema:.4f}; held-out accuracy VQ {acc[0]:.3f} MQ {acc[1]:.3f} TA {acc[2]:.3f} "
          f"({len(raw)} clips); {fit.elapsed:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
