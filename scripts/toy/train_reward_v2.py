"""Train the v2 toy world's reward model on generated clips against the world's own targets.

    python scripts/toy/train_reward_v2.py --teacher runs/v2/teacher.safetensors \\
        --student runs/v2/student_ode.safetensors --student runs/v2/dmd/student_dmd.safetensors \\
        --captions 256 --seed 0 --data runs/v2/reward_data --out stream_r1_fast/toy/weights/v2/reward.safetensors

The v1 reward model learned "true vs corrupted" and had never seen a generated clip; on the
clips it was used to weight it ranked against the oracle. This one is trained on what it will
score, against :mod:`stream_r1_fast.toy.reward_targets` (TA: the caption attributes the clip
shows; MQ: speed match x steadiness; VQ: background error x off-palette pixels):

1. **data** (cached in ``--data``, one file per split and generator; existing files are reused,
   so an interrupted run continues where it stopped): for each caption of a split, one clip
   from every generator: the world's clip (``truth``), its codec round trip (``codec``), codec
   round trips with a visual corruption (``visual:<kind>``) or re-rendered with a motion
   corruption (``motion:<kind>``), the true clip under a caption with one word swapped
   (``swap``), each ``--teacher`` at every ``--teacher-steps`` x ``--teacher-cfg``
   (``teacher<i>:<steps>:<cfg>``), each ``--student`` streamed (``student<i>``). Train and
   evaluation captions and noise come from disjoint seeds (``--seed``, ``--seed + 50000``).
2. **training**: batches of ``--groups`` captions with all their generators' clips; loss =
   binary cross-entropy of each axis's logit against its target (soft labels) + a pairwise
   logistic loss within each caption (the clip with the higher target must get the higher
   logit, pairs closer than 0.05 skipped), AdamW + warm-up/cosine.
3. **evaluation** on the held-out split: Spearman correlation of each axis's logit with its
   target over all clips, and within each generator (mean over the generators whose targets
   vary), per generator too; the logits' mean / std there become the normalisation statistics.
   -> ``--out`` (safetensors, the figures in its metadata) and ``--out``.json.

A generator's codec is the ``codec.safetensors`` beside its weights when there is one (the
motion pilots'), else ``--codec`` (default: the v2 world's shipped codec), which also makes the
codec round trips. CPU, ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stream_r1_fast.toy.codec import ToyCodec
from stream_r1_fast.toy.corruptions import MOTION, VISUAL, corrupt_motion, corrupt_visual
from stream_r1_fast.toy.fit import Fitter, warmup_cosine
from stream_r1_fast.toy.kits import toy_kit
from stream_r1_fast.toy.reward import ToyRewardModel
from stream_r1_fast.toy.reward_targets import TARGET_AXES, reward_targets_v2_batch, spearman
from stream_r1_fast.toy.world2 import ATTRIBUTE_GROUPS, ToyWorldV2

SPLIT_SEEDS = {"train": 0, "eval": 50_000}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", action="append", default=[], help="a teacher's weights (repeatable)")
    ap.add_argument("--teacher-steps", type=int, nargs="+", default=[4, 8, 24], help="Euler steps of its samples")
    ap.add_argument("--teacher-cfg", type=float, nargs="+", default=[1.0, 3.0], help="guidance of its samples")
    ap.add_argument("--student", action="append", default=[], help="a causal student's weights (repeatable)")
    ap.add_argument("--codec", help="the codec of generators without one beside them (default: the v2 world's)")
    ap.add_argument("--objects", type=int, default=2, help="at most this many objects per clip (the generators' world)")
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--captions", type=int, default=256, help="training captions (one clip per generator each)")
    ap.add_argument("--eval-captions", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--groups", type=int, default=4, help="captions per batch (with all their generators' clips)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--pair-weight", type=float, default=1.0, help="weight of the within-caption pairwise loss")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default="runs/v2/reward_data", help="cache of the generated clips and targets")
    ap.add_argument("--out", default="runs/v2/reward.safetensors")
    args = ap.parse_args(argv)
    for path in args.teacher + args.student + ([args.codec] if args.codec else []):
        if not Path(path).is_file():
            ap.error(f"{path} does not exist")
    if min(args.captions, args.eval_captions, args.steps, args.groups) < 1:
        ap.error("--captions, --eval-captions, --steps and --groups must be >= 1")
    return args


def random_swap(attrs, rng: random.Random) -> str:
    """The caption with one attribute of one object (or the background) changed at random."""
    from stream_r1_fast.toy.world2 import swap_alternatives, swapped_caption

    group = rng.choice(list(ATTRIBUTE_GROUPS) + ["background"])
    index = 0 if group == "background" else rng.randrange(len(attrs.objects))
    return swapped_caption(attrs, group, index, rng.choice(swap_alternatives(attrs, group, index)))


def generators(args) -> list[str]:
    names = ["truth", "codec", "swap"] + [f"visual:{k}" for k in VISUAL] + [f"motion:{k}" for k in MOTION]
    names += [f"teacher{i}:{s}:{c:g}" for i in range(len(args.teacher)) for s in args.teacher_steps
              for c in args.teacher_cfg]
    return names + [f"student{i}" for i in range(len(args.student))]


@torch.no_grad()
def make_split(name: str, split: str, count: int, args, world: ToyWorldV2, codec: ToyCodec) -> dict:
    """One generator's clips of one split: {"video": uint8 [N, T, 3, H, W], "captions", "targets" [N, 3]}."""
    from stream_r1_fast.toy.evaluate import sample_teacher, stream_student
    from stream_r1_fast.toy.models import load_transformer_file

    seed = args.seed + SPLIT_SEEDS[split]
    truth, attrs = world.batch(count, seed=seed)
    captions = [a.caption for a in attrs]
    rng = random.Random(f"{seed}:{name}")
    kind = name.split(":")
    kit = toy_kit("v2")
    if name == "truth":
        video = truth
    elif name == "codec":
        video = codec.round_trip(truth)
    elif name == "swap":
        video, captions = truth, [random_swap(a, rng) for a in attrs]
    elif kind[0] == "visual":
        video = torch.stack([corrupt_visual(v, kind[1], rng) for v in codec.round_trip(truth)])
    elif kind[0] == "motion":
        bad = torch.stack([corrupt_motion(world, a, kind[1], rng) for a in attrs])
        video = codec.round_trip(bad)
    elif kind[0].startswith("teacher"):
        path = args.teacher[int(kind[0][len("teacher"):])]
        video, _ = sample_teacher(load_transformer_file(path), captions, seed + 7, num_frames=args.frames,
                                  steps=int(kind[1]), cfg=float(kind[2]), kit=kit, codec=codec_of(path, codec))
    elif kind[0].startswith("student"):
        path = args.student[int(kind[0][len("student"):])]
        video, _ = stream_student(load_transformer_file(path), captions, seed + 7, num_frames=args.frames,
                                  kit=kit, codec=codec_of(path, codec))
    else:
        raise ValueError(f"unknown generator {name!r}")
    targets = reward_targets_v2_batch(video, captions, world=world)
    return {"video": (video.clamp(0, 1) * 255).round().to(torch.uint8), "captions": captions, "targets": targets}


def codec_of(path: str, default: ToyCodec) -> ToyCodec:
    """A generator's codec: the one beside its weights, else ``default``."""
    beside = Path(path).with_name("codec.safetensors")
    return ToyCodec.from_file(beside) if beside.is_file() else default


def load_data(args, world: ToyWorldV2, codec: ToyCodec) -> dict[str, dict[str, dict]]:
    """{split: {generator: clips}}, generated where the cache has none (module doc, step 1)."""
    data_dir = Path(args.data)
    data_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, dict]] = {}
    for split, count in (("train", args.captions), ("eval", args.eval_captions)):
        out[split] = {}
        for name in generators(args):
            path = data_dir / f"{split}_{name.replace(':', '_')}_{count}_s{args.seed}.pt"
            if path.is_file():
                out[split][name] = torch.load(path, weights_only=True)
                continue
            start = time.perf_counter()
            clips = make_split(name, split, count, args, world, codec)
            torch.save(clips, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
            out[split][name] = clips
            t = clips["targets"].mean(0)
            print(f"  {split} {name}: {count} clips in {time.perf_counter() - start:.0f} s; mean targets "
                  + " ".join(f"{a} {v:.2f}" for a, v in zip(TARGET_AXES, t.tolist())), flush=True)
    return out


def stacked(split: dict[str, dict]) -> tuple[torch.Tensor, list[list[str]], torch.Tensor]:
    """video uint8 [N, G, T, 3, H, W], captions [N][G], targets [N, G, 3]: per caption, its
    clip from every generator."""
    names = list(split)
    video = torch.stack([split[n]["video"] for n in names], 1)
    targets = torch.stack([split[n]["targets"] for n in names], 1)
    captions = [[split[n]["captions"][i] for n in names] for i in range(video.shape[0])]
    return video, captions, targets


def pairwise_loss(logits: torch.Tensor, targets: torch.Tensor, margin: float = 0.05) -> torch.Tensor:
    """Logistic ranking loss within each caption: logits, targets [N, G, 3]."""
    dl = logits.unsqueeze(2) - logits.unsqueeze(1)  # [N, G, G, 3]
    dt = targets.unsqueeze(2) - targets.unsqueeze(1)
    keep = dt > margin
    if not bool(keep.any()):
        return logits.sum() * 0
    return F.softplus(-dl[keep]).mean()


@torch.no_grad()
def evaluate(model: ToyRewardModel, split: dict[str, dict]) -> tuple[dict, torch.Tensor]:
    """Spearman of each axis (overall and within generator) on a split, and its raw logits [N, 3]."""
    per_gen, logits, targets = {}, [], []
    for name, clips in split.items():
        video = clips["video"].float() / 255
        raw = torch.cat([model(video[i:i + 32], model.text(clips["captions"][i:i + 32]))
                         for i in range(0, len(video), 32)])
        logits.append(raw)
        targets.append(clips["targets"])
        per_gen[name] = {a: spearman(raw[:, k], clips["targets"][:, k]) for k, a in enumerate(TARGET_AXES)}
    raw, tgt = torch.cat(logits), torch.cat(targets)
    overall = {a: spearman(raw[:, k], tgt[:, k]) for k, a in enumerate(TARGET_AXES)}
    within = {}
    for a in TARGET_AXES:
        vals = [g[a] for g in per_gen.values() if g[a] is not None]
        within[a] = sum(vals) / len(vals) if vals else None
    return {"overall": overall, "within_generator": within, "per_generator": per_gen}, raw


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    world = ToyWorldV2(num_frames=args.frames, max_objects=args.objects)
    codec = ToyCodec.from_file(args.codec) if args.codec else toy_kit("v2").codec()
    print(f"data: {len(generators(args))} generators x ({args.captions} train + {args.eval_captions} eval) captions",
          flush=True)
    data = load_data(args, world, codec)
    video, captions, targets = stacked(data["train"])
    n, g = video.shape[:2]

    model = ToyRewardModel(world="v2").train()
    palette = list(model.ta_palette.parameters())
    rest = [p for name, p in model.named_parameters() if not name.startswith("ta_palette.")]
    opt = torch.optim.AdamW([{"params": rest}, {"params": palette, "lr": 10 * args.lr}], lr=args.lr, weight_decay=0.01)
    fit = Fitter(model, opt, warmup_cosine(opt, min(50, args.steps // 10 + 1), args.steps), args.steps)
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        pick = torch.randint(n, (args.groups,), generator=gen)
        v = video[pick].flatten(0, 1).float() / 255
        caps = [c for i in pick.tolist() for c in captions[i]]
        logits = model(v, model.text(caps)).view(args.groups, g, 3)
        t = targets[pick]
        loss = F.binary_cross_entropy_with_logits(logits, t) + args.pair_weight * pairwise_loss(logits, t)
        fit.step(step, loss)

    model.eval()
    results, raw = evaluate(model, data["eval"])
    model.mean.copy_(raw.mean(0))
    model.std.copy_(raw.std(0).clamp_min(1e-3))
    results.update(generators=generators(args), teachers=args.teacher, students=args.student, steps=args.steps,
                   seed=args.seed, captions=args.captions, eval_captions=args.eval_captions,
                   seconds=round(time.perf_counter() - start, 1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out, steps=args.steps, seed=args.seed, final_loss_ema=f"{fit.ema:.4f}",
               spearman=json.dumps(results["overall"]), spearman_within_generator=json.dumps(results["within_generator"]))
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))

    def fmt(d):
        return " ".join(f"{a} {d[a]:+.2f}" if d[a] is not None else f"{a} n/a" for a in TARGET_AXES)

    print(f"held-out Spearman, all clips: {fmt(results['overall'])}; within a generator (mean): "
          f"{fmt(results['within_generator'])}")
    for name, s in results["per_generator"].items():
        print(f"  {name:24s} {fmt(s)}")
    print(f"-> {out} ({time.perf_counter() - start:.0f} s)")
    return results


if __name__ == "__main__":
    main()
