"""The checks of ``stream-r1 generate``'s inputs that need no weights: the model folder (either
Wan layout) and ``--checkpoint``, the prompts against the tokenizer, ``--device``, the output
file or folder and ffmpeg. Each raises :class:`UsageError` naming the option."""

from __future__ import annotations

import sys
from pathlib import Path

from stream_r1_fast.commands.errors import UsageError, one_line
from stream_r1_fast.files import read_json_object

_MODEL_PARTS = ("transformer", "vae", "text_encoder", "tokenizer")
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


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
        try:
            configs[part] = read_json_object(root / part / "config.json")
        except ValueError as exc:
            raise UsageError(f"{opt}: {exc}") from None
    cfg = {k: v for k, v in configs["transformer"].items() if not k.startswith("_")}
    try:
        with torch.device("meta"):
            patch = tuple(CausalWanTransformer.from_config(cfg).config.patch_size)
        assert len(patch) == 3 and all(isinstance(p, int) and p > 0 for p in patch), f"patch_size {patch}"
    except Exception as exc:  # any failure to build from it is the file's fault
        raise UsageError(f"{opt}: transformer/config.json does not describe a Wan transformer: {one_line(exc)}") from None
    vae = configs["vae"]
    dims, down = vae.get("dim_mult"), vae.get("temperal_downsample")
    if not (isinstance(dims, list) and dims and isinstance(down, list)):
        raise UsageError(f"{opt}: vae/config.json needs the lists dim_mult and temperal_downsample (a Wan VAE)")
    _check_latent_channels(opt, vae, cfg)
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
    return _pixel_multiples(down, dims, patch)


def _check_latent_channels(opt: str, vae: dict, cfg: dict) -> None:
    if vae.get("z_dim") not in (None, cfg.get("in_channels")):
        raise UsageError(f"{opt}: the VAE's z_dim {vae.get('z_dim')} is not the transformer's in_channels {cfg.get('in_channels')}")


def _pixel_multiples(temperal_downsample, dim_mult, patch) -> tuple[int, int, int]:
    """-> (VAE temporal factor, pixels per token in height, in width)."""
    from stream_r1_fast.inference.vae import wan_vae_factors

    temporal, spatial = wan_vae_factors(temperal_downsample, dim_mult)
    return temporal, spatial * patch[1], spatial * patch[2]


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
        raise UsageError(f"{opt}: {one_line(exc)}") from None
    _check_latent_channels(opt, vae, cfg)
    if text_dim != cfg.get("text_dim"):
        raise UsageError(f"{opt}: the text encoder's width {text_dim} is not the transformer's text_dim {cfg.get('text_dim')}")
    if checkpoint is not None and not Path(checkpoint).exists():
        raise UsageError(f"--checkpoint {checkpoint}: no such file or folder")
    return _pixel_multiples(vae.get("temperal_downsample", [False, True, True]), vae.get("dim_mult", [1, 2, 4, 4]), patch)


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
        raise UsageError(f"--model {model}: {_tokenizer_dir(model).name}/ does not load: {one_line(exc)}") from None
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
    check_output_folder(output.parent, f"--output {output}")
    check_ffmpeg(f"--output {output}")


def check_output_folder(folder: Path, option: str) -> None:
    """``folder`` exists or can be made, and can be written in."""
    from stream_r1_fast.outputs import check_writable_folder

    try:
        check_writable_folder(folder, option)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_ffmpeg(option: str) -> None:
    """imageio's ffmpeg is there to write mp4."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise UsageError(f"{option}: writing mp4 needs ffmpeg (pip install imageio-ffmpeg): {one_line(exc)}") from None
