"""``stream-r1 generate --prompts``: every prompt of a file, ``--num-samples`` videos each,
named ``{prompt}-{i}.mp4`` (VBench's layout), ``--batch-size`` streams at a time, the videos
already there skipped."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from stream_r1_fast.commands.checks import check_device, check_ffmpeg, check_output_folder, check_prompt_tokens
from stream_r1_fast.commands.errors import UsageError
from stream_r1_fast.commands.videos import VideoFile

MAX_NAME_BYTES = 180  # of a sample's prompt part: room for "-{i}.mp4" and the hidden partial name under 255


def sample_stem(prompt: str) -> str:
    """The file-name form of a prompt: ``/``, ``\\`` and control characters (newlines, tabs,
    NUL) become ``_``, the ends are stripped of whitespace; everything else is kept as it is (so
    on POSIX a VBench prompt is its own file name). Over :data:`MAX_NAME_BYTES` bytes of UTF-8
    it is cut at a character boundary to ``MAX_NAME_BYTES - 9`` bytes and ``~`` + the first 8
    hex digits of the prompt's SHA-1 are appended (two long prompts sharing a beginning stay
    apart)."""
    import hashlib
    import unicodedata

    name = "".join("_" if c in "/\\" or unicodedata.category(c) in ("Cc", "Cs") else c for c in prompt).strip()
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        digest = hashlib.sha1(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = name.encode("utf-8")[: MAX_NAME_BYTES - 9].decode("utf-8", "ignore").rstrip() + "~" + digest
    return name


class Sample:
    """One video of a batch run: ``path`` (``{stem}-{index}.mp4``), the ``text`` generated
    from, its ``seed``, and where its prompt was read (``file:line``)."""

    def __init__(self, path: Path, text: str, seed: int, index: int, where: str):
        self.path, self.text, self.seed, self.index, self.where = path, text, seed, index, where

    def done(self) -> bool:
        """A finished video is there. Videos are written under a hidden temporary name and
        renamed only once complete, so any non-empty file of this name is a finished one."""
        return self.path.is_file() and self.path.stat().st_size > 0

    def __repr__(self) -> str:
        return f"Sample({str(self.path)!r}, seed={self.seed})"


def plan_samples(entries, num_samples: int, seed: int, output_dir: Path) -> list[Sample]:
    """Every video of ``--prompts``, in file order: prompt after prompt, samples 0..K-1 each.

    Name: ``{sample_stem(prompt)}-{i}.mp4``, ``prompt`` being the line (``.txt``) or the
    ``prompt`` field (``.jsonl``; the ``extended_prompt``, when given, is what is generated
    from). The same prompt on several lines continues the numbering (its second line's
    samples are K..2K-1), so no video is written twice; two different prompts with the same
    stem (after the character replacements or the cut) keep apart by ``~`` + 8 hex digits of
    the SHA-1 of the later one. Seeds: sample i gets ``base + i``, ``base`` the line's
    ``seed`` (``.jsonl``) or else ``--seed``."""
    import hashlib

    samples, owner, uses = [], {}, {}
    for e in entries:
        prompt = e.prompt if e.prompt is not None else e.text
        stem = sample_stem(prompt)
        if owner.setdefault(stem, prompt) != prompt:
            stem = f"{stem}~{hashlib.sha1(prompt.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
            if owner.setdefault(stem, prompt) != prompt:
                raise UsageError(f"--prompts: {e.where}: its file name {stem!r} is taken by another prompt")
        first = uses.get(stem, 0)
        uses[stem] = first + num_samples
        base = seed if e.seed is None else e.seed
        for i in range(first, first + num_samples):
            samples.append(Sample(output_dir / f"{stem}-{i}.mp4", e.text, base + i, i, e.where))
    return samples


def check_batch_args(args, run: dict) -> dict:
    """The rest of :func:`check_generate_args` for ``--prompts``: the file read and every line
    checked (errors name ``file:line``), the videos planned and the finished ones found, the
    prompts tokenized, the device and the output folder checked."""
    from stream_r1_fast.prompts import read_prompt_file

    entries = read_prompt_file(args.prompts, "--prompts", error=UsageError)
    k = 1 if args.num_samples is None else args.num_samples
    out = Path(args.output_dir)
    samples = plan_samples(entries, k, args.seed, out)
    big = max(samples, key=lambda x: x.seed)
    if big.seed >= 2**64:
        raise UsageError(f"--prompts: {big.where}: seed {big.seed} of {big.path.name} is past 2**64 - 1")
    check_prompt_tokens(args.model, [e.text for e in entries], "--prompts")
    device = check_device(args.device)
    check_output_folder(out, f"--output-dir {out}")
    check_ffmpeg(f"--output-dir {out}")
    todo = [x for x in samples if not x.done()]
    return dict(run, samples=samples, todo=todo, device=device, output_dir=out,
                batch_size=1 if args.batch_size is None else args.batch_size)



def generate_batch(args, run: dict, pipe, chunks: int, load_s: float) -> int:
    """``--prompts``: the unfinished videos, ``--batch-size`` streams at a time (one stream per
    video, each with its own seed: a stream equals itself generated alone up to rounding, see
    :meth:`StreamingPipeline.stream`). Each video is written chunk by chunk into a hidden
    temporary file renamed onto its name when complete; an error or an interrupt removes the
    unfinished batch's temporary files and leaves the finished videos, so a rerun resumes."""
    import torch
    from tqdm import tqdm

    todo, num_frames, fps, size = run["todo"], run["num_frames"], run["fps"], run["batch_size"]
    skipped = len(run["samples"]) - len(todo)
    out = run["output_dir"]
    if skipped and not args.quiet:
        print(f"stream-r1 generate: {skipped} of {len(run['samples'])} videos are already in {out}: skipped",
              file=sys.stderr)
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    t0, made = time.perf_counter(), 0
    with tqdm(total=len(todo) * num_frames, unit="frame", desc="generating", disable=args.quiet) as bar:
        for at in range(0, len(todo), size):
            group = todo[at : at + size]
            videos = []
            try:
                for x in group:
                    videos.append(VideoFile(x.path, fps, option="--output-dir"))
                stream = pipe.stream([x.text for x in group], num_chunks=chunks, height=args.height,
                                     width=args.width, seed=[x.seed for x in group], policy=run["policy"])
                written = 0
                for chunk in stream:
                    frames = chunk.frames.numpy()[:, : num_frames - written]  # [B, T, H, W, 3] on the host
                    for b, video in enumerate(videos):
                        for f in frames[b]:
                            video.append(f)
                    written += frames.shape[1]
                    bar.update(frames.shape[1] * len(group))
                for video in videos:
                    video.close()
            finally:
                for video in videos:
                    video.discard()  # the unfinished ones (a closed one has been renamed already)
            made += len(group)
    sync()
    secs = time.perf_counter() - t0
    print(f"wrote {made} videos to {out} ({num_frames} frames each, {num_frames / fps:.2f} s at {fps} fps; "
          f"{skipped} already there, skipped) in {secs:.1f} s, model loading ({load_s:.1f} s) excluded: "
          f"{made * num_frames / max(secs, 1e-9):.2f} frames/s in batches of {size} on {pipe.device}")
    return 0

