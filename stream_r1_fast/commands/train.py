"""``stream-r1 train``: its options (``KEY=VALUE`` overrides anywhere among them) and the run,
with its exit statuses."""

from __future__ import annotations

import argparse
import sys


def _train(args) -> int:
    """``stream-r1 train``. ``--config``: a YAML file or a packaged recipe's name; then
    ``KEY=VALUE`` overrides (``optim.lr_generator=1e-5``), validated with the file; ``--steps``,
    ``--output-dir``, ``--device`` are overrides of ``train.*`` applied last. ``--list-configs``
    prints the packaged recipes. A bad config (YAML syntax, unknown key, bad value, a missing
    path or prompt file, an unimportable ``reward.factory``: all checked by the preflight before
    any model loads) prints one line naming the key and returns 2; a diverged run or unusable
    checkpoints return 1; SIGTERM / Ctrl-C save a checkpoint and return 128 + the signal number.
    ``--debug`` adds the traceback."""
    import os
    import traceback

    import torch.distributed as dist

    from stream_r1_fast.models.loading import CheckpointError
    from stream_r1_fast.training.config import (
        ConfigError, TrainConfig, describe_config, packaged_configs, preflight, validate,
    )
    from stream_r1_fast.training import TrainingDiverged, TrainingInterrupted, build_trainer

    def fail(exc: BaseException, status: int) -> int:
        if args.debug:
            traceback.print_exc()
        text = str(exc)
        if isinstance(exc, ConfigError):
            text = " ".join(text.split("\n"))
        print(f"stream-r1 train: error: {text}", file=sys.stderr)
        return status

    if args.list_configs:
        for name, path in packaged_configs().items():
            print(f"{name:24s} {describe_config(path)}")
        return 0
    if args.config is None:
        print("stream-r1 train: error: --config is required (a YAML file or a packaged recipe: --list-configs)",
              file=sys.stderr)
        return 2
    try:
        flags = {"train.steps": args.steps, "train.output_dir": args.output_dir, "train.device": args.device}
        overrides = [*args.overrides, *((k, v) for k, v in flags.items() if v is not None)]
        if args.resume_inexact:
            overrides.append(("train.resume_inexact", True))
        config = TrainConfig.from_yaml(args.config, overrides)
        validate(config)
        preflight(config)
    except (ConfigError, FileNotFoundError) as exc:
        return fail(exc, 2)
    started = False
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        import torch

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            config.train.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        dist.init_process_group(backend)
        started = True
    try:
        trainer = build_trainer(config)
        resumed = trainer.resume() if not args.no_resume else None
        if resumed is not None and trainer.rank == 0:
            print(f"resumed from {resumed} (step {trainer.step})")
        trainer.fit()
        if trainer.rank == 0:
            print(f"done: {trainer.step} steps; checkpoints and metrics in {trainer.output_dir}")
    except TrainingInterrupted as exc:  # fit printed "interrupted at step N; checkpoint saved to ..."
        return 128 + exc.signum
    except (TrainingDiverged, CheckpointError) as exc:
        return fail(exc, 1)
    except ConfigError as exc:
        return fail(exc, 2)
    finally:
        if started:
            dist.destroy_process_group()
    return 0


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


class _IntermixedParser(argparse.ArgumentParser):
    """``stream-r1 train``'s parser: positionals (the overrides) may be split by options
    (``a=1 --steps 3 b=2``), as :meth:`~argparse.ArgumentParser.parse_known_intermixed_args` reads them."""

    _intermixed = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixed:
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False


def add_train_parser(sub) -> None:
    """``stream-r1 train``'s options, on the subcommand table ``sub``."""
    t = sub.add_parser("train", help="DMD / Re-DMD / Stream-R1 distillation (under torchrun for several GPUs)")
    t.add_argument("--config", help="YAML training config: a file, or a packaged recipe's name (--list-configs)")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, values as YAML (optim.lr_generator=1e-5 weighting.mode=re_dmd "
                        "rollout.steps=[1000,500]); checked like the file")
    t.add_argument("--list-configs", action="store_true", help="list the packaged recipes and exit")
    t.__class__ = _IntermixedParser  # KEY=VALUE overrides before, between and after the options
    t.add_argument("--steps", type=_count, help="override train.steps (>= 0)")
    t.add_argument("--output-dir", type=_nonempty, help="override train.output_dir")
    t.add_argument("--device", type=_nonempty, help="override train.device")
    t.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    t.add_argument("--resume-inexact", action="store_true",
                   help="resume even from a checkpoint without this rank's RNG file (train.resume_inexact)")
    t.add_argument("--debug", action="store_true", help="print tracebacks with errors")
    t.set_defaults(func=_train)
