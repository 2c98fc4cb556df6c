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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

FPS = 16  # Wan2.1's frame rate

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


class UsageError(Exception):
    """A bad option or input file, found before or while running: :func:`main` prints it as one
    line naming the option and returns 2 (``--debug``: with the traceback)."""


# What main reports as one line with exit status 2; anything else is a bug and keeps its traceback.
_USER_ERRORS = (UsageError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
_MODEL_PARTS = ("transformer", "vae", "text_encoder", "tokenizer")
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
CHUNK_FRAMES = 3  # latent frames per chunk (the pipeline's default)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def chunk_start_seconds(n: int, chunk_seconds: float, first_chunk_seconds: float) -> float:
    """When chunk ``n`` starts in the video: chunk 0 at 0, chunk 1 after the first chunk's
    ``first_chunk_seconds`` (Wan: 9 frames), every later one ``chunk_seconds`` (12 frames) on."""
    return 0.0 if n == 0 else first_chunk_seconds + (n - 1) * chunk_seconds


def read_prompt_schedule(path: str | Path, chunk_seconds: float,
                         first_chunk_seconds: float | None = None) -> dict[int, str]:
    """A schedule file -> ``{chunk: prompt}``. JSON: ``[{"at": seconds, "prompt": str}, ...]``;
    text: one ``SECONDS<whitespace>PROMPT`` per line (``#`` comments). A switch takes effect at
    the first chunk starting at or after its time (chunk 0 lasts ``first_chunk_seconds``,
    default ``chunk_seconds``; see :func:`chunk_start_seconds`). Every entry is checked (a
    finite time >= 0, a non-empty prompt; the first at 0 s): a ValueError names the file (and
    line) of a bad one."""
    first = chunk_seconds if first_chunk_seconds is None else first_chunk_seconds
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt schedule {path} does not exist")
    if not path.is_file():
        raise IsADirectoryError(f"prompt schedule {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text: {exc}") from None
    entries: list[tuple[str, object, object]] = []  # (where, seconds, prompt)
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(e, dict) and {"at", "prompt"} <= e.keys() for e in data):
            raise ValueError(f'{path}: expected a JSON list of {{"at": seconds, "prompt": text}}')
        entries = [(f"{path}: entry {n}", e["at"], e["prompt"]) for n, e in enumerate(data)]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            head, *rest = line.split(None, 1)
            try:
                at = float(head)
            except ValueError:
                raise ValueError(f"{path}:{n}: expected 'SECONDS PROMPT', got {line!r}") from None
            entries.append((f"{path}:{n}", at, rest[0].strip() if rest else ""))
    if not entries:
        raise ValueError(f"{path} holds no prompts")
    for where, at, prompt in entries:
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at) or at < 0:
            raise ValueError(f"{where}: the time must be a finite number of seconds >= 0, got {at!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: the prompt must be a non-empty string, got {prompt!r}")
    schedule: dict[int, str] = {}
    for _, at, prompt in sorted(entries, key=lambda e: e[1]):  # equal times: the later line wins
        chunk = 0 if at <= 0 else 1 + max(0, math.ceil((at - first) / chunk_seconds - 1e-9))
        schedule[chunk] = prompt
    if 0 not in schedule:
        raise ValueError(f"{path}: the first prompt must start at 0 seconds")
    return schedule


def contact_sheet_indices(num_frames: int, count: int = 24) -> list[int]:
    """The ``count`` frame indices (fewer for a shorter video) spread evenly over ``num_frames``,
    first and last included."""
    t, n = num_frames, min(count, num_frames)
    return sorted({round(i * (t - 1) / max(n - 1, 1)) for i in range(n)})


class ContactSheet:
    """A contact sheet of a video of known length, collected as its frames pass: only the
    frames of :func:`contact_sheet_indices` are kept (copied), so memory is ``count`` frames
    whatever the length."""

    def __init__(self, num_frames: int, count: int = 24, columns: int = 6):
        self.wanted = contact_sheet_indices(num_frames, count)
        self.columns = columns
        self.frames: dict[int, object] = {}

    def offer(self, first: int, frames) -> None:
        """Frames ``first, first + 1, ...`` of the video (uint8 [T, H, W, 3])."""
        import numpy as np

        for i in self.wanted:
            if first <= i < first + len(frames):
                self.frames[i] = np.array(frames[i - first], copy=True)

    @property
    def held(self) -> int:
        return len(self.frames)

    def save(self, path: Path) -> None:
        import numpy as np
        from PIL import Image

        missing = [i for i in self.wanted if i not in self.frames]
        if missing:
            raise ValueError(f"the contact sheet lacks frames {missing[:4]}... (the video is shorter than announced)")
        rows = math.ceil(len(self.wanted) / self.columns)
        h, w = self.frames[self.wanted[0]].shape[:2]
        sheet = np.zeros((rows * h, self.columns * w, 3), dtype=np.uint8)
        for n, i in enumerate(self.wanted):
            r, c = divmod(n, self.columns)
            sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = self.frames[i]
        Image.fromarray(sheet).save(path)


def contact_sheet(frames, path: Path, columns: int = 6, count: int = 24) -> None:
    """A PNG grid of ``count`` frames sampled evenly from uint8 [T, H, W, 3]."""
    sheet = ContactSheet(frames.shape[0], count, columns)
    sheet.offer(0, frames)
    sheet.save(path)


# ---------------------------------------------------------------------- batch generation (--prompts)

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


def _read_json(path: Path, option: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{option}: cannot read {path}: {_one_line(exc)}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{option}: {path} must hold a JSON object, got {type(data).__name__}")
    return data


def check_model_dir(model: str, checkpoint: str | None) -> tuple[int, int, int]:
    """What can be checked of a diffusers Wan folder (and ``--checkpoint``) without loading
    weights: the layout, the three configs (the transformer's is built on the meta device), that
    the parts fit each other. -> (VAE temporal factor, pixels per token in height, in width)."""
    import torch

    from stream_r1_fast.models.wan import CausalWanTransformer

    root, opt = Path(model), f"--model {model}"
    if not root.exists():
        raise UsageError(f"{opt}: no such model folder")
    if not root.is_dir():
        raise UsageError(f"{opt}: not a folder (expected a diffusers Wan model folder)")
    if not (root / "transformer").is_dir() and (root / "config.json").is_file():
        return _check_original_model_dir(model, checkpoint)
    missing = [f"{p}/" for p in _MODEL_PARTS if not (root / p).is_dir()]
    if missing:
        raise UsageError(f"{opt}: not a diffusers Wan model folder: no {', '.join(missing)} "
                         f"(it needs {', '.join(p + '/' for p in _MODEL_PARTS)})")
    configs = {}
    for part in ("transformer", "vae", "text_encoder"):
        if not (root / part / "config.json").is_file():
            raise UsageError(f"{opt}: no {part}/config.json")
        configs[part] = _read_json(root / part / "config.json", opt)
    cfg = {k: v for k, v in configs["transformer"].items() if not k.startswith("_")}
    try:
        with torch.device("meta"):
            patch = tuple(CausalWanTransformer.from_config(cfg).config.patch_size)
        assert len(patch) == 3 and all(isinstance(p, int) and p > 0 for p in patch), f"patch_size {patch}"
    except Exception as exc:  # any failure to build from it is the file's fault
        raise UsageError(f"{opt}: transformer/config.json does not describe a Wan transformer: {_one_line(exc)}") from None
    vae = configs["vae"]
    dims, down = vae.get("dim_mult"), vae.get("temperal_downsample")
    if not (isinstance(dims, list) and dims and isinstance(down, list)):
        raise UsageError(f"{opt}: vae/config.json needs the lists dim_mult and temperal_downsample (a Wan VAE)")
    if vae.get("z_dim") not in (None, cfg.get("in_channels")):
        raise UsageError(f"{opt}: the VAE's z_dim {vae.get('z_dim')} is not the transformer's in_channels {cfg.get('in_channels')}")
    d_model = configs["text_encoder"].get("d_model")
    if d_model not in (None, cfg.get("text_dim")):
        raise UsageError(f"{opt}: the text encoder's d_model {d_model} is not the transformer's text_dim {cfg.get('text_dim')}")
    if not any((root / "tokenizer").iterdir()):
        raise UsageError(f"{opt}: tokenizer/ is empty")
    if checkpoint is None:
        if not any((root / "transformer").glob("*.safetensors")):
            raise UsageError(f"{opt}: no transformer weights (transformer/*.safetensors)")
    else:
        ck, copt = Path(checkpoint), f"--checkpoint {checkpoint}"
        if not ck.exists():
            raise UsageError(f"{copt}: no such file or folder")
        if ck.is_dir():
            if not any(ck.glob("*.safetensors")) and not any((ck / "transformer").glob("*.safetensors")):
                raise UsageError(f"{copt}: a folder without *.safetensors weights (nor transformer/*.safetensors)")
        elif ck.suffix not in _CHECKPOINT_SUFFIXES:
            raise UsageError(f"{copt}: unknown checkpoint type (expected a folder or {', '.join(_CHECKPOINT_SUFFIXES)})")
    spatial = 2 ** (len(dims) - 1)
    return 2 ** sum(bool(d) for d in down), spatial * patch[1], spatial * patch[2]


def _check_original_model_dir(model: str, checkpoint: str | None) -> tuple[int, int, int]:
    """:func:`check_model_dir` for Wan-AI's original folder (config.json +
    diffusion_pytorch_model*.safetensors, Wan2.1_VAE.pth, the T5 .pth, google/umt5-xxl/): the
    sizes come from the configs and the tensor shapes (memory-mapped; no weight data is read)."""
    import torch

    from stream_r1_fast.models.loading import CheckpointError, find_wan_folder
    from stream_r1_fast.models.wan import CausalWanTransformer

    opt = f"--model {model}"
    try:
        folder = find_wan_folder(model, "--model", transformer_weights=checkpoint is None)
        cfg = folder.transformer_config()
        with torch.device("meta"):
            patch = tuple(CausalWanTransformer.from_config(cfg).config.patch_size)
        vae, text_dim = folder.vae_config(), folder.text_dim()
    except (OSError, CheckpointError, ValueError, TypeError) as exc:
        raise UsageError(f"{opt}: {_one_line(exc)}") from None
    if vae.get("z_dim") not in (None, cfg.get("in_channels")):
        raise UsageError(f"{opt}: the VAE's z_dim {vae.get('z_dim')} is not the transformer's in_channels {cfg.get('in_channels')}")
    if text_dim != cfg.get("text_dim"):
        raise UsageError(f"{opt}: the text encoder's width {text_dim} is not the transformer's text_dim {cfg.get('text_dim')}")
    if checkpoint is not None and not Path(checkpoint).exists():
        raise UsageError(f"--checkpoint {checkpoint}: no such file or folder")
    dims, down = vae.get("dim_mult", [1, 2, 4, 4]), vae.get("temperal_downsample", [False, True, True])
    spatial = 2 ** (len(dims) - 1)
    return 2 ** sum(bool(d) for d in down), spatial * patch[1], spatial * patch[2]


def _tokenizer_dir(model: str) -> Path:
    """The tokenizer folder of either Wan layout (tokenizer/, or the original google/umt5-xxl/)."""
    root = Path(model)
    if (root / "tokenizer").is_dir() or (root / "transformer").is_dir():
        return root / "tokenizer"
    from stream_r1_fast.models.loading import ORIGINAL_TOKENIZER

    return root / ORIGINAL_TOKENIZER


def check_prompt_tokens(model: str, prompts: list[str], option: str, max_length: int = 512) -> None:
    """Tokenize every prompt with the model's tokenizer (cheap next to the weights): a tokenizer
    that does not load is an error; words it only knows as its unknown token, and prompts longer
    than the text encoder reads, are warnings (the model still runs)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(_tokenizer_dir(model)))
    except Exception as exc:  # any failure to build it is the folder's fault
        raise UsageError(f"--model {model}: {_tokenizer_dir(model).name}/ does not load: {_one_line(exc)}") from None
    for p in dict.fromkeys(prompts):
        unknown = [w for w in dict.fromkeys(p.split())
                   if tok.unk_token_id is not None and tok.unk_token_id in tok(w, add_special_tokens=False).input_ids]
        if unknown:
            print(f"stream-r1 generate: warning: {option}: the tokenizer knows {', '.join(map(repr, unknown))} "
                  f"only as {tok.unk_token} (in {p!r:.80})", file=sys.stderr)
        n = len(tok(p).input_ids)
        if n > max_length:
            print(f"stream-r1 generate: warning: {option}: {p[:40]!r}... is {n} tokens; the text encoder reads "
                  f"the first {max_length}", file=sys.stderr)


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


def check_device(name: str | None):
    """``--device`` -> a torch.device that is present (default: cuda if available, else cpu)."""
    from stream_r1_fast.devices import resolve_device

    try:
        return resolve_device(name, f"--device {name}")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_output(output: Path) -> None:
    """``--output``: an .mp4 whose folder exists or can be made and can be written, and ffmpeg."""
    if output.suffix.lower() != ".mp4":
        raise UsageError(f"--output {output}: must end in .mp4 (the only format written)")
    for p in (output, output.with_suffix(".png")):
        if p.is_dir():
            raise UsageError(f"--output {output}: {p} is a folder")
    _check_writable_folder(output.parent, f"--output {output}")
    _check_ffmpeg(f"--output {output}")


def _check_writable_folder(folder: Path, option: str) -> None:
    from stream_r1_fast.outputs import check_writable_folder

    try:
        check_writable_folder(folder, option)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_ffmpeg(option: str) -> None:
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise UsageError(f"{option}: writing mp4 needs ffmpeg (pip install imageio-ffmpeg): {_one_line(exc)}") from None


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

    _check_batch_options(args)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UsageError(f"--seconds must be a finite number > 0, got {args.seconds}")
    if not 1 <= args.fps <= 1000:
        raise UsageError(f"--fps must be in [1, 1000], got {args.fps}")
    if not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be in [0, 2**64), got {args.seed}")
    if args.sink < 0:
        raise UsageError(f"--sink must be >= 0, got {args.sink}")
    if args.window < CHUNK_FRAMES:
        raise UsageError(f"--window {args.window}: the cache window must hold a chunk ({CHUNK_FRAMES} latent frames)")
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    if not (math.isfinite(args.shift) and args.shift > 0):
        raise UsageError(f"--shift must be a finite number > 0, got {args.shift}")
    if not all(math.isfinite(s) and 0 < s <= 1000 for s in args.steps):
        raise UsageError(f"--steps must be numbers in (0, 1000], got {args.steps}")
    try:
        sampler = FlowMatchSampler.from_steps(args.steps, args.shift)
    except ValueError as exc:
        raise UsageError(f"--steps {' '.join(f'{s:g}' for s in args.steps)}: {exc}") from None
    policy = CachePolicy(args.sink, args.window, 1.0 if args.static_sink else args.alpha)
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
    chunks = math.ceil((1 + math.ceil((num_frames - 1) / t_factor)) / CHUNK_FRAMES)
    prompt = args.prompt
    if args.prompts:
        return _check_batch_args(args, dict(sampler=sampler, policy=policy, num_frames=num_frames, fps=fps))
    if args.prompt_schedule:
        try:
            chunk_s, first_s = CHUNK_FRAMES * t_factor / fps, (1 + (CHUNK_FRAMES - 1) * t_factor) / fps
            prompt = read_prompt_schedule(args.prompt_schedule, chunk_s, first_s)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--prompt-schedule: {_one_line(exc)}") from None
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


def _check_batch_args(args, run: dict) -> dict:
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
    _check_writable_folder(out, f"--output-dir {out}")
    _check_ffmpeg(f"--output-dir {out}")
    todo = [x for x in samples if not x.done()]
    return dict(run, samples=samples, todo=todo, device=device, output_dir=out,
                batch_size=1 if args.batch_size is None else args.batch_size)


class _VideoFile:
    """The mp4, written by imageio's ffmpeg into a hidden file beside ``path`` and moved onto
    ``path`` once ffmpeg has produced it: any failure (including ffmpeg's silent ones, when it
    cannot open its output) is a :class:`UsageError` naming ``path``, and ``path`` is never left
    half written."""

    def __init__(self, path: Path, fps: int, option: str = "--output"):
        import imageio.v2 as imageio

        self.path, self.option = path, option
        self.tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial.mp4")
        self._writer = None
        self._writer = self._do(lambda: imageio.get_writer(str(self.tmp), fps=fps, codec="libx264", quality=8,
                                                           macro_block_size=1))

    def _do(self, fn):
        try:
            return fn()
        except (OSError, RuntimeError, ValueError) as exc:
            self.discard()
            raise UsageError(f"{self.option} {self.path}: writing the video failed: {_one_line(exc)}") from exc

    def append(self, frame) -> None:
        self._do(lambda: self._writer.append_data(frame))

    def close(self) -> None:
        self._do(self._writer.close)
        self._writer = None
        if not (self.tmp.is_file() and self.tmp.stat().st_size > 0):
            self.discard()
            raise UsageError(f"{self.option} {self.path}: writing the video failed: ffmpeg wrote nothing "
                             "(its message is above)")
        self._do(lambda: os.replace(self.tmp, self.path))

    def discard(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # already failing: the first error is the one reported
                pass
        self.tmp.unlink(missing_ok=True)


def _generate(args) -> int:
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
                args.model, checkpoint=args.checkpoint, dtype=getattr(torch, _DTYPES[args.dtype]),
                device=run["device"], sampler=sampler, lora=args.lora, lora_alpha=args.lora_alpha,
                offload_text_encoder=args.offload_text_encoder, cache_impl=args.cache_impl,
            )
    except CheckpointError as exc:
        where = f"--checkpoint {args.checkpoint}" if args.checkpoint else f"--model {args.model}"
        raise UsageError(f"{where}: {_one_line(exc)}") from exc
    except (OSError, SafetensorError) as exc:  # unreadable weights or configs: the message names the file
        ours = isinstance(exc, SafetensorError) or str(args.checkpoint) in str(exc)  # raw: the transformer's weights
        where = f"--checkpoint {args.checkpoint}" if args.checkpoint and ours else f"--model {args.model}"
        raise UsageError(f"{where}: cannot load: {_one_line(exc)}") from exc
    load_s = time.perf_counter() - t_load
    chunks = pipe.chunks_for_frames(num_frames)
    if args.prompts:
        return _generate_batch(args, run, pipe, chunks, load_s)
    output = run["output"]

    video = _VideoFile(output, fps)
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
        raise UsageError(f"--output {output}: writing the contact sheet {sheet_path} failed: {_one_line(exc)}") from exc
    later = written - kept
    rate = f"{later / gen_s:.2f} FPS over {later} frames after the first chunk" if later and gen_s > 0 else "n/a (one chunk)"
    print(f"wrote {output} ({written} frames, {written / fps:.2f} s at {fps} fps) and {sheet_path}")
    print(
        f"time to first frame {first_s:.2f} s (text encoding + first chunk's {sampler.forwards_per_chunk} "
        f"transformer forwards + VAE decode, model loading ({load_s:.1f} s) excluded); sustained {rate} "
        f"(denoising + refresh + VAE decode + copy to host; mp4 encoding excluded) on {pipe.device}"
    )
    return 0


def _generate_batch(args, run: dict, pipe, chunks: int, load_s: float) -> int:
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
                    videos.append(_VideoFile(x.path, fps, option="--output-dir"))
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
    from stream_r1_fast.training.trainer import TrainingDiverged, TrainingInterrupted, build_trainer

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stream-r1", description="Streaming autoregressive video generation.")
    sub = parser.add_subparsers(dest="command", required=True)
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
    g.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its line")
    g.set_defaults(func=_generate)

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

    from stream_r1_fast.serve.cli import add_serve_parser  # argparse only: FastAPI is imported when serving

    add_serve_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _USER_ERRORS as exc:  # a bad option or input: one line, status 2; any other error is a bug
        if getattr(args, "debug", False):
            raise
        print(f"stream-r1 {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
