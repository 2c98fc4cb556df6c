"""Fit the toy codec (PCA of causal 4x4x4 patches of world clips) and save it.

    python scripts/toy/fit_codec.py --clips 256 --seed 0 --out stream_r1_fast/toy/weights/codec.safetensors
"""

from __future__ import annotations

import argparse
import time

import torch

from stream_r1_fast.toy.codec import WEIGHTS, ToyCodec
from stream_r1_fast.toy.world import ToyWorld


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=256, help="world clips to fit on")
    ap.add_argument("--channels", type=int, default=16, help="latent channels")
    ap.add_argument("--spatial-factor", type=int, default=4, help="pixels per latent pixel, each way")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(WEIGHTS / "codec.safetensors"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    world = ToyWorld()
    video, _ = world.batch(args.clips, seed=args.seed)
    x = video.permute(0, 2, 1, 3, 4) * 2 - 1
    codec = ToyCodec.fit(x, args.channels, args.spatial_factor)
    test, _ = world.batch(32, seed=args.seed + 1)
    xt = test.permute(0, 2, 1, 3, 4) * 2 - 1
    mse = ((codec.decode(codec.encode(xt)) - xt) ** 2).mean()
    psnr = 10 * torch.log10(4.0 / mse)
    codec.save(args.out)
    print(f"codec: {args.channels} channels, held-out PSNR {psnr:.2f} dB, {time.time() - start:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
