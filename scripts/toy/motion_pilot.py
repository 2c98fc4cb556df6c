"""Motion pilot of the v2 toy world: can a small teacher learn direction, shape and colour here?

    python scripts/toy/motion_pilot.py --speeds 1 2 --patch 2 --frames 33 --objects 1 \\
        --steps 3000 --seed 0 --out runs/pilot/s12_p2

Trains a small bidirectional teacher (toy/models.py's TEACHER_CONFIG, with the v2 text encoder's
width and the given ``--patch``) by flow matching on v2 world clips captioned through
:class:`~stream_r1_fast.toy.text2.ObjectTokenEncoder`, with the loss of
scripts/toy/train_teacher.py (``|| v - (eps - x0) ||^2``, shift-3 timesteps, caption dropped 10%
of the time) and its optimiser (AdamW, warm-up + cosine, grad clip 1). The codec is a
:class:`~stream_r1_fast.toy.codec.ToyCodec` fitted on v2 clips at the start (seconds; saved in
``--out``). A checkpoint (model, optimiser, schedule, RNG, step) is written every
``--ckpt-every`` steps and at the end; ``--resume`` continues from it and gives the same weights
as an uninterrupted run (``--stop-after N`` stops early, as if interrupted).

Then ``--clips`` captions (fresh clips of ``--eval-seed``) are sampled (Euler, ``--sample-steps``,
``--cfg``, default 1: no guidance) and scored by the v2 oracle, beside the codec round trip of the true clips; and the
word-swap test: for each attribute group (colour, shape, direction, speed, background), the
mean change of the teacher's v-prediction error on the true clips when one word of that group
in the caption is swapped for another value. It must be > 0 for every group for the text to be
routed (v1's teacher: exactly 0 for direction and speed). Results -> ``--out``/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from stream_r1_fast.models import CausalWanTransformer
from stream_r1_fast.scheduling import add_noise, velocity
from stream_r1_fast.toy.codec import ToyCodec
from stream_r1_fast.toy.fit import Fitter, flow_matching_loss, warmup_cosine
from stream_r1_fast.toy.models import TEACHER_CONFIG, load_transformer_file, save_transformer
from stream_r1_fast.toy.oracle2 import score_videos_v2
from stream_r1_fast.toy.sampling import euler_sample
from stream_r1_fast.toy.text2 import ObjectTokenEncoder
from stream_r1_fast.toy.world2 import ATTRIBUTE_GROUPS, ToyWorldV2, swapped_caption

SWAP_GROUPS = tuple(ATTRIBUTE_GROUPS) + ("background",)
SWAP_TIMESTEPS = (150.0, 350.0, 550.0, 750.0, 950.0)
# Arguments that define the run: a resumed run must agree on them.
RUN_ARGS = ("speeds", "patch", "frames", "objects", "half_extent", "wrap", "seed", "steps", "batch", "lr",
            "shift", "ema_decay", "spatial_factor", "channels", "codec_clips", "frame_noise", "blocks", "heads",
            "image_ratio", "whiten", "init")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speeds", type=float, nargs=2, default=(1.0, 2.0), metavar=("SLOW", "FAST"),
                    help="px/frame at 32x32 (default 1 2)")
    ap.add_argument("--patch", type=int, default=2, help="transformer patch (latent pixels, each way)")
    ap.add_argument("--frames", type=int, default=33, help="video frames per clip (1 + 4k)")
    ap.add_argument("--objects", type=int, default=1, help="at most this many objects per clip (1-3)")
    ap.add_argument("--half-extent", type=float, default=6.0, help="object half-extent, px at 32x32")
    ap.add_argument("--wrap", action=argparse.BooleanOptionalAction, default=True, help="wrap (default) or bounce")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--shift", type=float, default=3.0,
                    help="timestep shift of the training loss (3: Wan's; 1: uniform noise levels)")
    ap.add_argument("--frame-noise", type=float, default=0.0,
                    help="fraction of training clips with an independent noise level per latent frame (default 0)")
    ap.add_argument("--image-ratio", type=int, default=0,
                    help="R: R of every R + 1 steps train on single frames (images; as many frames as a video "
                         "step's latent frames, so the same tokens), the other on clips (default 0: clips only)")
    ap.add_argument("--blocks", type=int, default=TEACHER_CONFIG["num_layers"], help="transformer blocks")
    ap.add_argument("--heads", type=int, default=TEACHER_CONFIG["num_attention_heads"],
                    help="attention heads of 64 channels each (the width is 64 x heads)")
    ap.add_argument("--ema-decay", type=float, default=0.999,
                    help="decay of the weights' exponential moving average, which is what is evaluated and saved")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--spatial-factor", type=int, default=4, help="codec pixels per latent pixel")
    ap.add_argument("--channels", type=int, default=16, help="codec latent channels")
    ap.add_argument("--whiten", action="store_true",
                    help="codec latents scaled to unit variance per channel (default: one factor for all)")
    ap.add_argument("--codec-clips", type=int, default=64, help="v2 clips the codec is fitted on")
    ap.add_argument("--init", help="start from these weights (a teacher.safetensors of an earlier stage, with its "
                                   "codec.safetensors beside it) instead of a random initialisation")
    ap.add_argument("--ship", help="also write the EMA teacher (float16), its codec and results.json into this "
                                   "directory (e.g. stream_r1_fast/toy/weights/v2)")
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--resume", action="store_true", help="continue from --out/ckpt.pt")
    ap.add_argument("--evaluate-checkpoint", action="store_true",
                    help="evaluate the EMA weights of --out/ckpt.pt where they are (same arguments as the run; no "
                         "training) -> results_step<N>.json, samples_step<N>.png")
    ap.add_argument("--stop-after", type=int, help="stop after this many steps in total (checkpointed)")
    ap.add_argument("--clips", type=int, default=32, help="captions sampled and scored")
    ap.add_argument("--sample-steps", type=int, default=24)
    ap.add_argument("--cfg", type=float, default=1.0,
                    help="guidance of the evaluation samples (default 1 = none: the shipped v2 teacher follows its "
                         "captions best unguided, see scripts/toy/teacher_sampling.py)")
    ap.add_argument("--swap-clips", type=int, default=16, help="clips of the word-swap test")
    ap.add_argument("--sheet-clips", type=int, default=6, help="captions drawn in --out/samples.png")
    ap.add_argument("--eval-seed", type=int, default=4242)
    ap.add_argument("--out", default="runs/toy_pilot")
    args = ap.parse_args(argv)
    ToyWorldV2(num_frames=args.frames, max_objects=args.objects, half_extent=args.half_extent,
               speeds=tuple(args.speeds), wrap=args.wrap)  # validates
    if not 0 <= args.frame_noise <= 1:
        ap.error(f"--frame-noise is a fraction in [0, 1], got {args.frame_noise}")
    if args.image_ratio < 0:
        ap.error(f"--image-ratio must be >= 0, got {args.image_ratio}")
    if args.blocks < 1 or args.heads < 1:
        ap.error(f"--blocks and --heads must be >= 1, got {args.blocks}, {args.heads}")
    if args.patch < 1 or (32 // args.spatial_factor) % args.patch:
        ap.error(f"--patch {args.patch} must divide the {32 // args.spatial_factor}x{32 // args.spatial_factor} latent grid")
    return args


def run_of(args) -> dict:
    """The arguments that define a run (RUN_ARGS), as stored in its checkpoint."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k in RUN_ARGS}


def make_world(args) -> ToyWorldV2:
    return ToyWorldV2(num_frames=args.frames, max_objects=args.objects, half_extent=args.half_extent,
                      speeds=tuple(args.speeds), wrap=args.wrap)


def model_config(args, codec: ToyCodec) -> dict:
    """TEACHER_CONFIG with the v2 text width, the pilot's patch and the codec's channels."""
    c = codec.latent_channels
    width = 64 * args.heads
    return dict(TEACHER_CONFIG, text_dim=ObjectTokenEncoder.text_dim, patch_size=(1, args.patch, args.patch),
                in_channels=c, out_channels=c, num_layers=args.blocks, num_attention_heads=args.heads,
                ffn_dim=TEACHER_CONFIG["ffn_dim"] * width // (64 * TEACHER_CONFIG["num_attention_heads"]))


@torch.no_grad()
def word_swap(model, codec, text, world, clips: int, seed: int) -> dict:
    """Per group: mean (swapped - true) v-prediction error over ``clips`` clips x SWAP_TIMESTEPS."""
    video, attrs = world.batch(clips, seed=seed)
    x0 = codec.encode_frames(video)
    g = torch.Generator().manual_seed(seed + 1)
    noises = [torch.randn(x0.shape, generator=g) for _ in SWAP_TIMESTEPS]

    def error(captions) -> torch.Tensor:  # [clips]
        emb = text(captions)
        errs = []
        for t, eps in zip(SWAP_TIMESTEPS, noises):
            v = model(add_noise(x0, eps, t), t, emb).sample.float()
            errs.append(((v - velocity(x0, eps)) ** 2).flatten(1).mean(1))
        return torch.stack(errs).mean(0)

    true = error([a.caption for a in attrs])
    out = {}
    for group in SWAP_GROUPS:
        delta = error([swapped_caption(a, group) for a in attrs]) - true
        out[group] = {"delta": float(delta.mean()), "relative": float((delta / true).mean()),
                      "positive_fraction": float((delta > 0).float().mean())}
    out["true_error"] = float(true.mean())
    out["routed"] = all(out[gr]["delta"] > 0 for gr in SWAP_GROUPS)
    return out


def save_sheet(path: Path, truth: torch.Tensor, samples: torch.Tensor, captions, clips: int) -> None:
    """The first ``clips`` captions as contact sheets (the world's clip above the teacher's),
    stacked into one PNG, to look at what the numbers measure."""
    from PIL import Image

    from stream_r1_fast.toy.demo import contact_sheet

    sheets = [contact_sheet([("world", truth[i]), ("teacher (EMA)", samples[i])], captions[i])
              for i in range(min(clips, len(captions)))]
    if not sheets:
        return
    out = Image.new("RGB", (max(s.width for s in sheets), sum(s.height for s in sheets)))
    y = 0
    for sheet in sheets:
        out.paste(sheet, (0, y))
        y += sheet.height
    out.save(path)


def _save_ckpt(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(argv=None) -> dict | None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, codec_path = out / "ckpt.pt", out / "codec.safetensors"
    world, text = make_world(args), ObjectTokenEncoder()
    run = run_of(args)
    ckpt = None
    if args.resume or args.evaluate_checkpoint:
        if not ckpt_path.exists():
            sys.exit(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, weights_only=True)  # tensors, numbers, strings: no pickled code
        # An option newer than the checkpoint has its default value there.
        saved = {**run_of(parse_args(["--out", args.out])), **ckpt["run"]}
        diff = {k: (saved[k], v) for k, v in run.items() if saved[k] != v}
        if diff:
            sys.exit(f"--resume: the checkpoint's run differs (checkpoint, now): {diff}")
        codec = ToyCodec.from_file(codec_path)
    elif args.init:
        beside = Path(args.init).with_name("codec.safetensors")
        if not Path(args.init).is_file() or not beside.is_file():
            sys.exit(f"--init: need {args.init} and its codec {beside}")
        codec = ToyCodec.from_file(beside)  # the latents the weights were trained on
        codec.save(codec_path)
    else:
        fit_video, _ = world.batch(args.codec_clips, seed=args.seed + 10_000)
        codec = ToyCodec.fit(fit_video.permute(0, 2, 1, 3, 4) * 2 - 1, args.channels, args.spatial_factor, per_channel=args.whiten)
        codec.save(codec_path)

    torch.manual_seed(args.seed)
    model = CausalWanTransformer(**model_config(args, codec)).train()
    if args.init and ckpt is None:
        start_from = load_transformer_file(args.init)
        mine, theirs = ({k: v for k, v in dict(m.config).items() if not k.startswith("_")} for m in (model, start_from))
        if mine != theirs:
            sys.exit(f"--init: {args.init} is another model than --blocks/--heads/--patch make: "
                     + ", ".join(f"{k} {theirs.get(k)} vs {v}" for k, v in mine.items() if theirs.get(k) != v))
        model.load_state_dict(start_from.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    sched = warmup_cosine(opt, min(100, args.steps // 10 + 1), args.steps)
    fit = Fitter(model, opt, sched, args.steps)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay))
    g = torch.Generator().manual_seed(args.seed)
    start_step, seconds_before = 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema_model"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        g.set_state(ckpt["generator"])
        start_step, seconds_before, fit.ema = ckpt["step"], ckpt["seconds"], ckpt["ema"]
        print(f"resumed at step {start_step} ({seconds_before:.0f} s before)", flush=True)
    stop = min(args.steps, args.stop_after if args.stop_after is not None else args.steps)
    if args.evaluate_checkpoint:
        stop = start_step

    def checkpoint(step: int) -> None:
        _save_ckpt(ckpt_path, model=model.state_dict(), ema_model=ema.state_dict(), opt=opt.state_dict(),
                   sched=sched.state_dict(),
                   generator=g.get_state(), step=step, seconds=seconds_before + fit.elapsed, ema=fit.ema, run=run)

    latent_frames = 1 + (args.frames - 1) // 4
    for step in range(start_step, stop):
        image_step = step % (args.image_ratio + 1) != 0
        clips = ([world.sample(g, num_frames=1) for _ in range(args.batch * latent_frames)] if image_step
                 else [world.sample(g) for _ in range(args.batch)])
        video = torch.stack([c for c, _ in clips])
        captions = [a.caption if torch.rand((), generator=g) > 0.1 else "" for _, a in clips]
        with torch.no_grad():
            x0 = codec.encode_frames(video)
        fit.step(step, flow_matching_loss(model, x0, text(captions), g, shift=args.shift,
                                               frame_noise=args.frame_noise))
        ema.update_parameters(model)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == stop:
            checkpoint(step + 1)
    if start_step >= stop and not ckpt_path.exists():
        checkpoint(stop)
    train_seconds = seconds_before + fit.elapsed
    if stop < args.steps and not args.evaluate_checkpoint:
        print(f"stopped at step {stop} of {args.steps}; continue with --resume", flush=True)
        return None

    raw = model.eval()
    model = ema.module.eval()
    suffix = "" if stop == args.steps else f"_step{stop}"
    if not suffix:
        save_transformer(model, out / "teacher.safetensors", ema_decay=args.ema_decay, steps=args.steps,
                         seed=args.seed, final_loss_ema=f"{fit.ema:.4f}", train_seconds=f"{train_seconds:.0f}")
    start = time.perf_counter()
    truth, attrs = world.batch(args.clips, seed=args.eval_seed)
    captions = [a.caption for a in attrs]
    s = codec.spatial_factor
    noise = torch.randn(args.clips, codec.latent_channels, latent_frames, 32 // s, 32 // s,
                        generator=torch.Generator().manual_seed(args.eval_seed))
    cond, uncond = text(captions), text([""] * args.clips)

    def sample(m) -> torch.Tensor:
        return codec.decode_frames(euler_sample(m, cond, uncond, noise, steps=args.sample_steps, cfg=args.cfg))

    with torch.no_grad():
        samples, raw_samples = sample(model), sample(raw)
        recon = codec.round_trip(truth)
    results = {
        "run": run,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_per_latent_frame": (32 // s // args.patch) ** 2,
        "step": stop,
        "sampler": {"steps": args.sample_steps, "cfg": args.cfg, "shift": 3.0},
        "train_seconds": round(train_seconds, 1),
        "final_loss_ema": fit.ema,
        "teacher": score_videos_v2(samples, captions, wrap=args.wrap, world=world),
        "teacher_raw_weights": score_videos_v2(raw_samples, captions, wrap=args.wrap, world=world),
        "codec_round_trip": score_videos_v2(recon, captions, wrap=args.wrap, world=world),
        "word_swap": word_swap(model, codec, text, world, args.swap_clips, args.eval_seed + 1),
        "eval_seconds": round(time.perf_counter() - start, 1),
    }
    (out / f"results{suffix}.json").write_text(json.dumps(results, indent=2))
    if args.ship and not suffix:
        ship = Path(args.ship)
        save_transformer(model, ship / "teacher.safetensors", dtype=torch.float16, ema_decay=args.ema_decay,
                         steps=args.steps, seed=args.seed, train_seconds=f"{train_seconds:.0f}",
                         run=json.dumps(run))
        codec.save(ship / "codec.safetensors")
        (ship / "teacher_results.json").write_text(json.dumps(results, indent=2))
        print(f"shipped -> {ship}")
    save_sheet(out / f"samples{suffix}.png", truth, samples, captions, args.sheet_clips)
    m, ws = results["teacher"], results["word_swap"]
    r = results["teacher_raw_weights"]
    print(f"raw weights: direction {r['direction']:.3f} shape {r['shape']:.3f} colour {r['color']:.3f} count {r['count']:.3f}")
    print(f"teacher, EMA weights ({args.clips} clips): direction {m['direction']:.3f} shape {m['shape']:.3f} colour {m['color']:.3f} "
          f"count {m['count']:.3f} speed {m['speed']:.3f} stuck {m['stuck_rate']:.3f} ghost {m['ghost_rate']:.3f}")
    print("word swap (error change): " + " ".join(f"{gr} {ws[gr]['delta']:+.4f}" for gr in SWAP_GROUPS)
          + f"  -> {'routed' if ws['routed'] else 'NOT routed'}")
    print(f"-> {out / f'results{suffix}.json'}")
    return results


if __name__ == "__main__":
    main()
