"""The default ``model.factory``: student, teacher and critic, text encoder and VAE from a
diffusers Wan folder (``model.dir``: transformer/, vae/, text_encoder/, tokenizer/), and its
preflight (:func:`preflight_wan_models`, attached as ``build_wan_models.preflight``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from stream_r1_fast.training.build import TrainingModels
from stream_r1_fast.training.errors import ConfigError
from stream_r1_fast.training.preflight import check_model_paths

PRESETS = ("wan2.1-1.3b", "wan2.1-14b", "tiny")  # random weights of that size (smoke runs)
WAN_FOLDERS = ("transformer", "vae", "text_encoder", "tokenizer")


def build_wan_models(config) -> TrainingModels:
    """``model.student`` (default: ``model.dir``/transformer) as the student; ``model.teacher``
    and ``model.critic`` default to the student's weights (separate copies). Each may be a
    diffusers folder, an original-layout or Self-Forcing ``.pt`` file, or a preset name."""
    from diffusers import AutoencoderKLWan

    from stream_r1_fast.inference.text import PromptEncoder
    from stream_r1_fast.models import CausalWanTransformer, preset
    from stream_r1_fast.models.loading import load_transformer

    m = config.model
    if m.dir is None:
        raise ValueError("config key 'model.dir' must name a diffusers Wan folder (vae/, text_encoder/, tokenizer/)")
    root = Path(m.dir)
    device = torch.device(config.train.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if m.dtype == "bf16" else torch.float32
    torch.manual_seed(config.train.seed)
    student_cfg = dict(CausalWanTransformer.load_config(str(root / "transformer")))

    def load(spec: str | None, default: str | None):
        spec = spec or default
        if spec is None:
            return None
        if spec.lower() in PRESETS:
            return CausalWanTransformer(**preset(spec)).to(device, dtype)
        cfg = None if Path(spec).is_dir() and (Path(spec) / "config.json").is_file() else student_cfg
        return load_transformer(spec, cfg, dtype=dtype, device=device)

    student = load(m.student, str(root))
    teacher = load(m.teacher, None) or load(m.student, str(root))
    critic = load(m.critic, None) or load(m.student, str(root))
    encoder = PromptEncoder.from_pretrained(root, dtype=dtype, device=device, max_length=m.text_max_length)
    vae = AutoencoderKLWan.from_pretrained(str(root / "vae"), torch_dtype=torch.float32).to(device)
    return TrainingModels(student=student, teacher=teacher, critic=critic, text_encoder=encoder, vae=vae,
                          device=device)


def preflight_wan_models(cfg):
    """``model.dir`` is a diffusers Wan folder; ``model.student / teacher / critic`` exist or
    are presets. Returns the second check, which preflight runs after its own:
    ``rollout.height`` / ``width`` are multiples of the VAE's downsampling x the patch (read
    from the folder's vae/ and transformer/ ``config.json``)."""
    m = cfg.model
    if m.dir is None:
        raise ConfigError("config key 'model.dir' must name a diffusers Wan folder (transformer/, vae/, "
                          "text_encoder/, tokenizer/), or model.factory another model builder, got None")
    root = Path(m.dir)
    if not root.is_dir():
        raise ConfigError(f"config key 'model.dir': no such folder {m.dir!r} (expected a diffusers Wan folder "
                          "with transformer/, vae/, text_encoder/, tokenizer/; set it in the config or as "
                          "model.dir=PATH on the command line)")
    missing = [f"{sub}/" for sub in WAN_FOLDERS if not (root / sub).is_dir()]
    if missing:
        raise ConfigError(f"config key 'model.dir': {m.dir!r} has no {', '.join(missing)} (a diffusers Wan "
                          "folder has transformer/, vae/, text_encoder/, tokenizer/)")
    check_model_paths(m, PRESETS)
    return lambda: _check_sizes(cfg, root)


build_wan_models.preflight = preflight_wan_models


def _read_small_json(path: Path, key: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config key {key!r}: {str(path)!r} is missing") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config key {key!r}: {str(path)!r} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config key {key!r}: {str(path)!r} does not hold a JSON object")
    return data


def _check_sizes(cfg, root: Path) -> None:
    """rollout.height / width against the VAE's spatial factor x the transformer's patch."""
    vae = _read_small_json(root / "vae" / "config.json", "model.dir")
    transformer = _read_small_json(root / "transformer" / "config.json", "model.dir")
    dim_mult = vae.get("dim_mult")
    patch = transformer.get("patch_size")
    if not isinstance(dim_mult, list) or not dim_mult:
        return  # not a Wan VAE config this check knows; the loader reports it
    spatial = 2 ** (len(dim_mult) - 1)
    step = spatial * (patch[1] if isinstance(patch, list) and len(patch) == 3 and isinstance(patch[1], int) else 2)
    r = cfg.rollout
    for key, v in (("rollout.height", r.height), ("rollout.width", r.width)):
        if v % step:
            raise ConfigError(f"config key {key!r} must be a multiple of {step} pixels (the VAE's {spatial}x "
                              f"downsampling x the patch, from {root}), got {v}")


__all__ = ["PRESETS", "build_wan_models", "preflight_wan_models"]
