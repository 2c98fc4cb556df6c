"""``stream-r1``: command-line streaming generation and training.

    stream-r1 generate --model Wan2.1-T2V-1.3B-Diffusers --checkpoint rf.pt \\
        --prompt "a red fox runs through snow" --seconds 10 --seed 0 --output fox.mp4

writes ``fox.mp4`` and a contact sheet ``fox.png``, and ends with one line giving the time to
first frame and the sustained frame rate, saying what each includes. Frames go to the mp4 as
each chunk is made and the contact sheet keeps only its 24 frames, so host memory does not grow
with the video's length.

    stream-r1 generate --model ... --prompts vbench.txt --num-samples 5 --output-dir out/ --batch-size 4

writes ``out/{prompt}-{i}.mp4`` for every prompt of the file and i in 0..4 (VBench's layout;
:func:`plan_samples` gives the naming rule), ``--batch-size`` streams at a time, and skips the
videos that already exist, so an interrupted run resumes where it stopped. Whatever can be checked
without the weights (the model folder, the checkpoint path, every prompt, sizes, the device,
the output folder, ffmpeg) is checked before the model loads; a bad option or input, or a
failed write, is one line naming the option and exit status 2 (``--debug``: the traceback).

    stream-r1 train --config wan2.1_1.3b_stream_r1 model.dir=/ckpt/Wan2.1-T2V-1.3B-Diffusers ...

trains with the YAML config (a file, or the name of a packaged recipe: ``stream-r1 train
--list-configs``) and ``KEY=VALUE`` overrides (DMD, Re-DMD or Stream-R1; also under torchrun),
resuming from the last complete checkpoint of its output folder.

This module is the parser, its subcommand table and the error handling; each job has its
module in :mod:`stream_r1_fast.commands`: ``generate`` (options, checks, one video), ``batch``
(``--prompts``), ``checks`` (model folder, tokenizer, device, outputs), ``schedule``
(``--prompt-schedule`` files), ``videos`` (mp4 and contact sheet), ``train``, ``errors``.
``stream-r1 serve`` is :mod:`stream_r1_fast.serve.cli`.
"""

from __future__ import annotations

import argparse
import sys

from stream_r1_fast.commands.batch import MAX_NAME_BYTES, Sample, plan_samples, sample_stem
from stream_r1_fast.commands.checks import check_device, check_model_dir, check_output, check_prompt_tokens
from stream_r1_fast.commands.errors import USER_ERRORS, UsageError, one_line
from stream_r1_fast.commands.generate import FPS, add_generate_parser, check_generate_args
from stream_r1_fast.commands.schedule import chunk_start_seconds, read_prompt_schedule
from stream_r1_fast.commands.train import add_train_parser
from stream_r1_fast.commands.videos import ContactSheet, contact_sheet, contact_sheet_indices

__all__ = [
    "FPS", "MAX_NAME_BYTES", "ContactSheet", "Sample", "UsageError", "build_parser", "check_device",
    "check_generate_args", "check_model_dir", "check_output", "check_prompt_tokens", "chunk_start_seconds",
    "contact_sheet", "contact_sheet_indices", "main", "plan_samples", "read_prompt_schedule", "sample_stem",
]


def build_parser() -> argparse.ArgumentParser:
    """``stream-r1``'s parser: the subcommands ``generate``, ``train`` and ``serve``."""
    parser = argparse.ArgumentParser(prog="stream-r1", description="Streaming autoregressive video generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_generate_parser(sub)
    add_train_parser(sub)
    from stream_r1_fast.serve.cli import add_serve_parser  # argparse only: FastAPI is imported when serving

    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:  # a bad option or input: one line, status 2; any other error is a bug
        if getattr(args, "debug", False):
            raise
        print(f"stream-r1 {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m stream_r1_fast.cli (e.g. under torchrun)
    sys.exit(main())
