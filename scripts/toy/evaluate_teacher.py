"""Oracle metrics and reward-model scores of the shipped teacher's samples, beside ground truth.

    python scripts/toy/evaluate_teacher.py --clips 32 --steps 24 --cfg 1.0 --seed 4242

Captions come from fresh world clips (``--seed``); the teacher samples each caption once
(bidirectional, Euler, guidance); the same clips rendered by the world are the reference row.
"""

from __future__ import annotations

import argparse
import time

import torch

from stream_r1_fast.toy.codec import ToyCodec
from stream_r1_fast.toy.models import load_teacher
from stream_r1_fast.toy.oracle import score_videos
from stream_r1_fast.toy.reward import ToyRewardModel
from stream_r1_fast.toy.sampling import euler_sample
from stream_r1_fast.toy.text import ToyTextEncoder
from stream_r1_fast.toy.world import ToyWorld


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    world, codec, text = ToyWorld(), ToyCodec.pretrained(), ToyTextEncoder()
    truth, attrs = world.batch(args.clips, seed=args.seed)
    captions = [a.caption for a in attrs]
    s = codec.spatial_factor
    noise = torch.randn(args.clips, codec.latent_channels, 9, world.height // s, world.width // s,
                        generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    x0 = euler_sample(load_teacher(), text(captions), text([""] * args.clips), noise, steps=args.steps, cfg=args.cfg)
    seconds = time.perf_counter() - start
    samples = codec.decode_frames(x0)
    recon = codec.round_trip(truth)
    reward = ToyRewardModel.pretrained()
    rows = {"ground truth": truth, "codec round trip": recon, f"teacher ({args.steps} steps, cfg {args.cfg})": samples}
    print(f"{args.clips} captions (seed {args.seed}); teacher sampling {seconds:.1f} s "
          f"({args.clips * world.num_frames / seconds:.0f} frames/s on {torch.get_num_threads()} threads)")
    for name, video in rows.items():
        m = score_videos(video, captions)
        with torch.no_grad():
            r = reward.rewards(video, captions).normalized.mean(0)
        print(f"{name:28s} " + " ".join(f"{k} {v:.3f}" for k, v in m.items())
              + "  | reward " + " ".join(f"{k} {v:+.2f}" for k, v in zip(("VQ", "MQ", "TA"), r.tolist())))


if __name__ == "__main__":
    main()
