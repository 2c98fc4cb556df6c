"""``stream-r1 generate``: its options, every check of them that needs no weights (in the
order of their cost), and the run: the model loaded, the video streamed to the mp4 and the
contact sheet, one line of timings at the end (``--prompts``: :mod:`stream_r1_fast.commands.batch`)."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

from stream_r1_fast.commands.batch import check_batch_args, generate_batch
from stream_r1_fast.commands.checks import check_device, check_model_dir, check_output, check_prompt_tokens
from stream_r1_fast.commands.errors import UsageError, one_line
from stream_r1_fast.commands.schedule import chunk_start_seconds, read_prompt_schedule
from stream_r1_fast.commands.videos import ContactSheet, VideoFile
from stream_r1_fast.outputs import VIDEO_FPS

FPS = VIDEO_FPS

DTYPES = ("bf16", "fp16", "fp32")  # --dtype: names StreamingPipeline.from_pretrained reads as they are


@contextlib.contextmanager
def _library_progress_bars(enabled: bool):
    """diffusers' and transformers' loading bars off inside (``--quiet``), as they were after."""
    if enabled:
        yield
        return
    import diffusers
    import transformers

    libs = [diffusers.utils.logging, transformers.utils.logging]
    before = [lib.is_progress_bar_enabled() for lib in libs]
    for lib in libs:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was in zip(libs, before):
            if was:
                lib.enable_progress_bar()



def _check_batch_options(args) -> None:
    """Which options go with which prompt source (cheap: before anything is read)."""
    batch_only = [o for o, v in (("--output-dir", args.output_dir), ("--num-samples", args.num_samples),
                                 ("--batch-size", args.batch_size)) if v is not None]
    if args.prompts is None:
        if batch_only:
            raise UsageError(f"{batch_only[0]} goes with --prompts (batch generation from a prompt file)")
        if args.output is None:
            raise UsageError("--output is required with --prompt / --prompt-schedule (the .mp4 to write)")
        if args.recache and args.prompt_schedule is None:
            raise UsageError("--recache acts at prompt switches: it goes with --prompt-schedule")
        return
    if args.output is not None:
        raise UsageError("--output writes one video; with --prompts give --output-dir (videos {prompt}-{i}.mp4)")
    if args.output_dir is None:
        raise UsageError("--prompts needs --output-dir (where the videos {prompt}-{i}.mp4 go)")
    if args.recache:
        raise UsageError("--recache acts at prompt switches: it goes with --prompt-schedule, not --prompts")
    for name, value in (("--num-samples", args.num_samples), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")


def check_generate_args(args) -> dict:
    """Every check of ``generate``'s options that needs no weights, in the order of the options'
    cost; raises :class:`UsageError` naming the option. -> what the run needs from them."""
    from stream_r1_fast.cache import CachePolicy
    from stream_r1_fast.inference import FlowMatchSampler
    from stream_r1_fast.inference.pipeline import CHUNK_FRAMES, chunks_for_frames

    _check_batch_options(args)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UsageError(f"--seconds must be a finite number > 0, got {args.seconds}")
    if not 1 <= args.fps <= 1000:
        raise UsageError(f"--fps must be in [1, 1000], got {args.fps}")
    if not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be in [0, 2**64), got {args.seed}")
    if args.sink < 0:
        raise UsageError(f"--sink must be >= 0, got {args.sink}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    try:  # with --sink and --alpha good, what is left to fail is --window (it must hold a chunk)
        policy = CachePolicy(args.sink, args.window, 1.0 if args.static_sink else args.alpha)
        policy.check_chunk(CHUNK_FRAMES)
    except ValueError as exc:
        raise UsageError(f"--window {args.window}: {exc}") from None
    if not (math.isfinite(args.shift) and args.shift > 0):
        raise UsageError(f"--shift must be a finite number > 0, got {args.shift}")
    if not all(math.isfinite(s) and 0 < s <= 1000 for s in args.steps):
        raise UsageError(f"--steps must be numbers in (0, 1000], got {args.steps}")
    try:
        sampler = FlowMatchSampler.from_steps(args.steps, args.shift)
    except ValueError as exc:
        raise UsageError(f"--steps {' '.join(f'{s:g}' for s in args.steps)}: {exc}") from None
    if args.prompt is not None and not args.prompt.strip():
        raise UsageError(f"--prompt is empty: {args.prompt!r}")
    t_factor, mult_h, mult_w = check_model_dir(args.model, args.checkpoint)
    if args.lora is not None and not Path(args.lora).exists():
        raise UsageError(f"--lora {args.lora}: no such file or folder")
    if args.lora_alpha is not None and (args.lora is None or not math.isfinite(args.lora_alpha) or args.lora_alpha <= 0):
        raise UsageError(f"--lora-alpha needs --lora and a finite value > 0, got {args.lora_alpha}")
    for name, value, mult in (("--height", args.height, mult_h), ("--width", args.width, mult_w)):
        if value <= 0 or value % mult:
            raise UsageError(f"{name} must be a positive multiple of {mult} pixels for this model, got {value}")
    fps = args.fps
    num_frames = max(1, round(args.seconds * fps))
    chunks = chunks_for_frames(num_frames, t_factor, CHUNK_FRAMES)
    prompt = args.prompt
    if args.prompts:
        return check_batch_args(args, dict(sampler=sampler, policy=policy, num_frames=num_frames, fps=fps))
    if args.prompt_schedule:
        try:
            chunk_s, first_s = CHUNK_FRAMES * t_factor / fps, (1 + (CHUNK_FRAMES - 1) * t_factor) / fps
            prompt = read_prompt_schedule(args.prompt_schedule, chunk_s, first_s)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--prompt-schedule: {one_line(exc)}") from None
        if not args.quiet:
            for k in sorted(prompt)[1:]:
                print(f"stream-r1 generate: the prompt switch to {prompt[k]!r} takes effect at chunk {k} "
                      f"({chunk_start_seconds(k, chunk_s, first_s):.3f} s: switches happen at chunk boundaries)",
                      file=sys.stderr)
        late = sorted(k for k in prompt if k >= chunks)
        if late:
            print(f"stream-r1 generate: warning: --prompt-schedule: {len(late)} prompt(s) start after the video "
                  f"ends ({args.seconds:g} s) and are not used: {prompt[late[0]]!r}...", file=sys.stderr)
    check_prompt_tokens(args.model, [prompt] if isinstance(prompt, str) else list(prompt.values()),
                        "--prompt-schedule" if args.prompt_schedule else "--prompt")
    device = check_device(args.device)
    output = Path(args.output)
    check_output(output)
    return dict(sampler=sampler, policy=policy, num_frames=num_frames, prompt=prompt, device=device, output=output,
                fps=fps)



def _generate(args) -> int:
    """``stream-r1 generate``: the checks, the model loaded, then one video (``--prompt`` /
    ``--prompt-schedule``) or the batch run (``--prompts``)."""
    import torch
    from safetensors import SafetensorError
    from tqdm import tqdm

    from stream_r1_fast.inference import StreamingPipeline
    from stream_r1_fast.models.loading import CheckpointError

    run = check_generate_args(args)  # everything that can be checked without the weights
    if args.prompts and not run["todo"]:
        print(f"nothing to do: all {len(run['samples'])} videos are in {run['output_dir']}")
        return 0
    num_frames, sampler, fps = run["num_frames"], run["sampler"], run["fps"]
    t_load = time.perf_counter()
    try:
        with _library_progress_bars(enabled=not args.quiet):
            pipe = StreamingPipeline.from_pretrained(
                args.model, checkpoint=args.checkpoint, dtype=args.dtype,
                device=run["device"], sampler=sampler, lora=args.lora, lora_alpha=args.lora_alpha,
                offload_text_encoder=args.offload_text_encoder, cache_impl=args.cache_impl,
            )
    except CheckpointError as exc:
        where = f"--checkpoint {args.checkpoint}" if args.checkpoint else f"--model {args.model}"
        raise UsageError(f"{where}: {one_line(exc)}") from exc
    except (OSError, SafetensorError) as exc:  # unreadable weights or configs: the message names the file
        ours = isinstance(exc, SafetensorError) or str(args.checkpoint) in str(exc)  # raw: the transformer's weights
        where = f"--checkpoint {args.checkpoint}" if args.checkpoint and ours else f"--model {args.model}"
        raise UsageError(f"{where}: cannot load: {one_line(exc)}") from exc
    load_s = time.perf_counter() - t_load
    chunks = pipe.chunks_for_frames(num_frames)
    if args.prompts:
        return generate_batch(args, run, pipe, chunks, load_s)
    output = run["output"]

    video = VideoFile(output, fps)
    sheet = ContactSheet(num_frames)  # its frames only: host memory does not grow with the video
    kept, written = 0, 0
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    first_s, gen_s = None, 0.0
    try:
        stream = pipe.stream(run["prompt"], num_chunks=chunks, height=args.height, width=args.width, seed=args.seed,
                             policy=run["policy"], recache=args.recache)
        with tqdm(total=num_frames, unit="frame", desc="generating", disable=args.quiet) as bar:
            t_chunk = time.perf_counter()
            for chunk in stream:
                frames = chunk.frames[0].numpy()  # on the host: the chunk is done
                sync()
                now = time.perf_counter()
                if first_s is None:
                    first_s = now - t0
                else:
                    gen_s += now - t_chunk
                frames = frames[: num_frames - written]
                for f in frames:
                    video.append(f)
                sheet.offer(written, frames)
                written += len(frames)
                bar.update(len(frames))
                if chunk.index == 0:
                    kept = len(frames)
                t_chunk = time.perf_counter()
        video.close()
    finally:
        video.discard()  # after a failure or an interrupt: no partial file left behind

    sheet_path = output.with_suffix(".png")
    try:
        sheet.save(sheet_path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--output {output}: writing the contact sheet {sheet_path} failed: {one_line(exc)}") from exc
    later = written - kept
    rate = f"{later / gen_s:.2f} FPS over {later} frames after the first chunk" if later and gen_s > 0 else "n/a (one chunk)"
    print(f"wrote {output} ({written} frames, {written / fps:.2f} s at {fps} fps) and {sheet_path}")
    print(
        f"time to first frame {first_s:.2f} s (text encoding + first chunk's {sampler.forwards_per_chunk} "
        f"transformer forwards + VAE decode, model loading ({load_s:.1f} s) excluded); sustained {rate} "
        f"(denoising + refresh + VAE decode + copy to host; mp4 encoding excluded) on {pipe.device}"
    )
    return 0


def add_generate_parser(sub) -> None:
    """``stream-r1 generate``'s options, on the subcommand table ``sub``."""
    g = sub.add_parser("generate", help="generate a video from a prompt or a prompt schedule, or the videos "
                       "of a prompt file (--prompts)")
    g.add_argument("--model", required=True, help="Wan model folder: diffusers (transformer/, vae/, text_encoder/, tokenizer/) "
                   "or Wan-AI's original (config.json + diffusion_pytorch_model*.safetensors, Wan2.1_VAE.pth, "
                   "models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/)")
    g.add_argument("--checkpoint", help="student weights replacing the transformer's (.pt with generator[_ema], original or diffusers layout)")
    g.add_argument("--lora", help="a LoRA on the generator, merged at load: a peft adapter folder, a .safetensors of "
                   "peft keys, or a LongLive lora.pt")
    g.add_argument("--lora-alpha", type=float, default=None, help="the LoRA's alpha when its file does not say (default: its rank)")
    g.add_argument("--cache-impl", choices=["fused", "rotated"], default="fused",
                   help="KV cache storage (same video up to rounding): fused ops on pre-RoPE K/V (default), or "
                   "keys cached rotated with one dense attention call per block")
    g.add_argument("--offload-text-encoder", action="store_true",
                   help="keep the UMT5 text encoder on the CPU; it moves to the device only to encode a new prompt")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt")
    src.add_argument("--prompt-schedule", help="file of timed prompts: JSON [{at, prompt}] or lines 'SECONDS PROMPT'")
    src.add_argument("--prompts", help="batch generation: a prompt file (.txt: one per line, # comments; .jsonl: "
                     '{"prompt", "extended_prompt"?, "seed"?} per line) -> OUTPUT_DIR/{prompt}-{i}.mp4')
    g.add_argument("--seconds", type=float, default=5.0, help="video length in seconds at --fps (default 5)")
    g.add_argument("--fps", type=int, default=FPS, help=f"frame rate of the mp4 (default {FPS}, Wan2.1's); "
                   "--seconds and schedule times count in it")
    g.add_argument("--seed", type=int, default=0, help="the noise seed (with --prompts: sample i gets seed + i)")
    g.add_argument("--output", help="output .mp4 (a .png contact sheet is written beside it)")
    g.add_argument("--output-dir", help="with --prompts: the folder of the videos {prompt}-{i}.mp4; those "
                   "already there are skipped (a rerun resumes)")
    g.add_argument("--num-samples", type=int, default=None, help="with --prompts: videos per prompt (default 1)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="with --prompts: videos generated together as one batch of streams (default 1)")
    g.add_argument("--recache", action="store_true",
                   help="with --prompt-schedule: at each switch re-encode the cached frames under the new prompt "
                        "(LongLive's KV recache)")
    g.add_argument("--height", type=int, default=480)
    g.add_argument("--width", type=int, default=832)
    g.add_argument("--sink", type=int, default=3, help="sink latent frames (0: none)")
    g.add_argument("--window", type=int, default=3, help="sliding-window latent frames")
    g.add_argument("--alpha", type=float, default=0.999, help="EMA-Sink alpha")
    g.add_argument("--static-sink", action="store_true", help="keep the first frames as the sink (alpha 1)")
    g.add_argument("--steps", type=float, nargs="+", default=[1000, 750, 500, 250], help="denoising steps before the shift")
    g.add_argument("--shift", type=float, default=5.0)
    g.add_argument("--dtype", choices=DTYPES, default="bf16")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its line")
    g.set_defaults(func=_generate)
