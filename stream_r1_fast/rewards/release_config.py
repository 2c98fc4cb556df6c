"""What a VideoAlign release's ``model_config.json`` says, checked: :func:`read_release_config`
(the fields :mod:`stream_r1_fast.rewards.videoalign` lists), and the two things it only names —
the prompt wording (:func:`resolve_prompt_template`) and the local base Qwen2-VL folder
(:func:`resolve_base_model`). Reads JSON and Python source text only; no weights, no imports
of anything the release ships.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

from stream_r1_fast.rewards.base import AXES
from stream_r1_fast.rewards.model import SPECIAL_TOKENS

RELEASE_CONFIG_NAME = "model_config.json"

# prompt_template_type -> the name of its string constant in VideoAlign's prompt_template.py.
# Only templates holding the three reward tokens can drive a "special"-token reward head.
TEMPLATE_CONSTANTS = {"detailed_special": "DETAILED_PROMPT_WITH_SPECIAL_TOKEN"}

# --------------------------------------------------------------------------------------------
# The release's config
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReleaseConfig:
    """What :func:`read_release_config` takes from ``model_config.json``."""

    path: Path
    base_model: str | None
    output_dim: int
    lora_r: int | None
    lora_alpha: float | None
    use_rslora: bool
    prompt_template_type: str | None
    prompt_template: str | None
    data: dict
    stats: dict | None


def _section(data: dict, name: str, path: Path, required: bool = True) -> dict:
    value = data.get(name)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: '{name}' must be an object, got {type(value).__name__}")
    return value


def _typed(section: dict, key: str, where: str, kinds: tuple, default=dataclasses.MISSING):
    if key not in section or section[key] is None:
        if default is dataclasses.MISSING:
            raise KeyError(f"{where}.{key} is missing")
        return default
    value = section[key]
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ValueError(f"{where}.{key} must be {'/'.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


def read_release_config(path: str | Path) -> ReleaseConfig:
    """Parse and check ``<release>/model_config.json`` (``path``: the folder or the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / RELEASE_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"VideoAlign release config {path} does not exist (expected {RELEASE_CONFIG_NAME} "
                                f"next to the checkpoint-<step>/ folder)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    mc = _section(data, "model_config", path)
    lc = _section(data, "peft_lora_config", path, required=False)
    dc = _section(data, "data_config", path, required=False)
    ic = _section(data, "inference_config", path, required=False)
    w = f"{path.name}:"

    if not _typed(mc, "use_special_tokens", f"{w}model_config", (bool,), False):
        raise ValueError(f"{w}model_config.use_special_tokens is false: this loader reads the reward at the "
                         f"three special tokens {SPECIAL_TOKENS} only")
    reward_token = _typed(mc, "reward_token", f"{w}model_config", (str,), "special")
    if reward_token != "special":
        raise ValueError(f"{w}model_config.reward_token is {reward_token!r}; only 'special' is supported")
    output_dim = _typed(mc, "output_dim", f"{w}model_config", (int,), 1)
    if output_dim not in (1, 3):
        raise ValueError(f"{w}model_config.output_dim must be 1 or 3 for a 3-token reward, got {output_dim}")
    base = _typed(mc, "model_name_or_path", f"{w}model_config", (str,), None)

    lora_enable = _typed(lc, "lora_enable", f"{w}peft_lora_config", (bool,), bool(lc))
    lora_r = lora_alpha = None
    if lora_enable:
        lora_r = _typed(lc, "lora_r", f"{w}peft_lora_config", (int,))
        lora_alpha = float(_typed(lc, "lora_alpha", f"{w}peft_lora_config", (int, float)))
        if lora_r < 1:
            raise ValueError(f"{w}peft_lora_config.lora_r must be >= 1, got {lora_r}")
    use_rslora = _typed(lc, "use_rslora", f"{w}peft_lora_config", (bool,), False)

    sample_type = _typed(dc, "sample_type", f"{w}data_config", (str,), "uniform")
    if sample_type != "uniform":
        raise ValueError(f"{w}data_config.sample_type is {sample_type!r}; only 'uniform' frame sampling is "
                         f"implemented")
    prep = {}
    for key in ("fps", "max_frame_pixels", "num_frames"):
        if dc.get(key) is not None:
            prep[key] = _typed(dc, key, f"{w}data_config", (int, float))
    stats = None
    if ic:
        missing = [f"{a}_{s}" for a in AXES for s in ("mean", "std") if f"{a}_{s}" not in ic]
        if missing:
            raise KeyError(f"{w}inference_config lacks {missing}")
        stats = {k: float(_typed(ic, k, f"{w}inference_config", (int, float))) for k in
                 (f"{a}_{s}" for a in AXES for s in ("mean", "std"))}
    return ReleaseConfig(path=path, base_model=base, output_dim=output_dim, lora_r=lora_r, lora_alpha=lora_alpha,
                         use_rslora=use_rslora,
                         prompt_template_type=_typed(dc, "prompt_template_type", f"{w}data_config", (str,), None),
                         prompt_template=_typed(dc, "prompt_template", f"{w}data_config", (str,), None),
                         data=prep, stats=stats)


# --------------------------------------------------------------------------------------------
# Prompt template and base model
# --------------------------------------------------------------------------------------------


def _python_constant(path: Path, name: str) -> str:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        else:
            targets = [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value is not None:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                raise ValueError(f"{path}: {name} is not a string literal") from None
            if not isinstance(value, str):
                raise ValueError(f"{path}: {name} is not a string")
            return value
    raise KeyError(f"{path} defines no string constant {name}")


def _as_caption_template(text: str, source: str) -> str:
    """VideoAlign's templates are ``str.format``-ed with ``text_prompt``; ours use ``{caption}``."""
    if "{caption}" in text:
        return text
    try:
        return text.format(text_prompt="{caption}")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"prompt template from {source} must have a {{text_prompt}} or {{caption}} field and no "
                         f"other ({type(e).__name__}: {e})") from e


def resolve_prompt_template(cfg: ReleaseConfig, prompt_template: str | None = None,
                            prompt_template_file: str | Path | None = None) -> str:
    """The user text around the caption (see the module docstring for the order looked in).
    The reward tokens must appear once each, in the order VQ, MQ, TA: VideoAlign assigns the
    axes by position in the sequence, :class:`VideoRewardModel` by token, and the two agree then."""
    text = _resolve_prompt_template(cfg, prompt_template, prompt_template_file)
    found = [text.find(t) for t in SPECIAL_TOKENS]
    if any(text.count(t) != 1 for t in SPECIAL_TOKENS) or found != sorted(found):
        raise ValueError(f"the prompt template must hold {', '.join(SPECIAL_TOKENS)} once each, in this order")
    return text


def _resolve_prompt_template(cfg: ReleaseConfig, prompt_template: str | None,
                             prompt_template_file: str | Path | None) -> str:
    if prompt_template is not None:
        return _as_caption_template(prompt_template, "prompt_template=")
    kind = cfg.prompt_template_type
    file = Path(prompt_template_file) if prompt_template_file is not None else None
    if file is None and cfg.prompt_template is not None:
        return _as_caption_template(cfg.prompt_template, f"{cfg.path.name}:data_config.prompt_template")
    if file is None and (cfg.path.parent / "prompt_template.py").is_file():
        file = cfg.path.parent / "prompt_template.py"
    if file is None:
        raise ValueError(f"{cfg.path.name} names data_config.prompt_template_type={kind!r} but not its wording: pass "
                         f"prompt_template=<text with {{caption}}> or prompt_template_file=<VideoAlign's "
                         f"prompt_template.py>")
    if not file.is_file():
        raise FileNotFoundError(f"prompt template file {file} does not exist")
    if file.suffix != ".py":
        return _as_caption_template(file.read_text(), str(file))
    if kind not in TEMPLATE_CONSTANTS:
        raise ValueError(f"{cfg.path.name}: data_config.prompt_template_type={kind!r} has no reward tokens "
                         f"(supported: {sorted(TEMPLATE_CONSTANTS)}); pass prompt_template= explicitly")
    return _as_caption_template(_python_constant(file, TEMPLATE_CONSTANTS[kind]), f"{file}:{TEMPLATE_CONSTANTS[kind]}")


def resolve_base_model(cfg: ReleaseConfig, base_model: str | Path | None = None) -> Path:
    """The local base Qwen2-VL folder: ``base_model``, else ``model_config.model_name_or_path``
    when that is a local folder (never the hub)."""
    if base_model is not None:
        path, what = Path(base_model), "base_model="
    elif cfg.base_model is not None and Path(cfg.base_model).is_dir():
        path, what = Path(cfg.base_model), f"{cfg.path.name}:model_config.model_name_or_path"
    else:
        raise FileNotFoundError(f"{cfg.path.name} names the base model {cfg.base_model!r} "
                                f"(model_config.model_name_or_path), which is not a local folder; pass "
                                f"base_model=<local copy of {cfg.base_model or 'Qwen2-VL-2B-Instruct'}>")
    if not path.is_dir():
        raise FileNotFoundError(f"base model folder {path} ({what}) does not exist")
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"base model folder {path} ({what}) needs config.json and *.safetensors weights")
    return path


__all__ = ["RELEASE_CONFIG_NAME", "ReleaseConfig", "TEMPLATE_CONSTANTS", "read_release_config", "resolve_base_model",
           "resolve_prompt_template"]
