"""Load VideoAlign's released VideoReward checkpoint into :class:`VideoRewardModel`.

Reward Forcing and Stream-R1 score videos with VideoAlign's VideoReward (KwaiVGI / KlingTeam
"VideoReward" on the Hugging Face hub): Qwen2-VL-2B-Instruct fine-tuned with a LoRA on the
language model, a fully trained vision tower, three added special tokens and a bias-free
reward head. :func:`load_videoalign_release` reads that folder (local paths only, no hub) and
returns our :class:`~stream_r1_fast.rewards.video_reward.VideoRewardModel` with the LoRA merged
in; :func:`convert_videoalign_release` (also ``python -m stream_r1_fast.rewards.videoalign``)
writes it once into the merged layout that ``VideoRewardModel.from_pretrained`` and the
trainer's ``reward.factory`` read.

Release layout read (as VideoAlign's ``train_reward.py`` / ``trainer.py`` write it)::

    <release>/model_config.json       {"data_config", "training_args", "model_config",
                                       "peft_lora_config", "inference_config"}
    <release>/checkpoint-<step>/      the highest step unless ``checkpoint_step`` is given, with
        model.pth                     EITHER the whole PeftModel state dict (the published
                                      release): "base_model.model.model.layers.N.self_attn.q_proj
                                      .base_layer.weight", "....lora_A.default.weight",
                                      "base_model.model.visual.*", "base_model.model.rm_head.weight"
        adapter_model.safetensors     OR the LoRA alone ("....q_proj.lora_A.weight", no adapter name)
        non_lora_state_dict.pth         + the trained non-LoRA tensors (vision tower, resized
                                      embed_tokens holding the 3 tokens, rm_head.weight)
        tokenizer/                    optional: the base tokenizer + the 3 added tokens

Fields used: ``model_config``: ``model_name_or_path`` (the base Qwen2-VL; a hub id there needs
``base_model=``), ``use_special_tokens`` and ``reward_token`` (must be true / "special"),
``output_dim`` (1 in the release: one head row scored at each of the 3 tokens; 3: one row per
token). ``peft_lora_config``: ``lora_r``, ``lora_alpha``, ``use_rslora`` (the LoRA's target
modules are the ones its weights name). ``data_config``: ``fps``, ``max_frame_pixels``,
``num_frames``, ``sample_type`` (must be "uniform"), ``prompt_template_type``.
``inference_config``: ``VQ_mean``, ``VQ_std``, ``MQ_mean``, ``MQ_std``, ``TA_mean``, ``TA_std``.

Differences from VideoAlign's own loading code, deliberate:

* The pickles are read with ``torch.load(weights_only=True)`` only; anything but tensors is refused.
* Keys are mapped from transformers 4.45's Qwen2-VL (``model.layers``, ``visual``, ``lm_head``)
  to transformers 5's ``Qwen2VLModel`` (``language_model.layers``, ``visual``); ``lm_head`` is
  dropped (the reward reads hidden states, not logits). Every other key must land on a
  parameter, and every parameter the LoRA names must exist; no silent ``strict=False``.
* The LoRA is merged (peft ``merge_and_unload``, in float32) instead of kept live.
* A missing ``checkpoint-<step>`` is an error, not a fall-back to the latest one.
* The prompt wording is not in ``model_config.json`` (only ``prompt_template_type``, e.g.
  "detailed_special"); it lives in VideoAlign's ``prompt_template.py``. It is taken from
  ``prompt_template=`` (text with ``{caption}`` or VideoAlign's ``{text_prompt}``),
  ``prompt_template_file=`` (a ``.py`` read with ``ast``, never imported or run: the string
  constant for the type, e.g. ``DETAILED_PROMPT_WITH_SPECIAL_TOKEN``; any other file: its text),
  ``data_config.prompt_template`` or a ``prompt_template.py`` next to ``model_config.json``.
  The merged layout stores the resolved text, so this is needed once, at conversion.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import pickle
import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from stream_r1_fast.rewards.base import AXES
from stream_r1_fast.rewards.video_reward import SPECIAL_TOKENS, VideoRewardConfig, VideoRewardModel

RELEASE_CONFIG_NAME = "model_config.json"
FULL_STATE_NAME = "model.pth"
ADAPTER_NAME = "adapter_model.safetensors"
NON_LORA_NAME = "non_lora_state_dict.pth"
TOKENIZER_DIR = "tokenizer"

# prompt_template_type -> the name of its string constant in VideoAlign's prompt_template.py.
# Only templates holding the three reward tokens can drive a "special"-token reward head.
TEMPLATE_CONSTANTS = {"detailed_special": "DETAILED_PROMPT_WITH_SPECIAL_TOKEN"}

_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)(?:\.(?P<adapter>[^.]+))?\.weight$")
_LORA_EMB_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_embedding_A|lora_embedding_B)(?:\.(?P<adapter>[^.]+))?$")
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


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
# Files
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReleaseFiles:
    """The files :func:`find_release_files` located; ``weights``: model.pth alone, or the adapter
    and the non-LoRA pickle."""

    root: Path
    config: Path
    checkpoint: Path
    weights: tuple[Path, ...]
    tokenizer: Path | None


def find_release_files(path: str | Path, checkpoint_step: int | None = None) -> ReleaseFiles:
    """Locate model_config.json and a ``checkpoint-<step>`` folder's weights (``path``: the
    release folder, or one of its ``checkpoint-<step>`` folders)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"VideoAlign release folder {root} does not exist")
    if root.name.startswith("checkpoint-") and not (root / RELEASE_CONFIG_NAME).is_file():
        if checkpoint_step is not None and root.name != f"checkpoint-{checkpoint_step}":
            raise ValueError(f"{root} is not checkpoint-{checkpoint_step}")
        ckpt, root = root, root.parent
    else:
        ckpt = None
    config = root / RELEASE_CONFIG_NAME
    if not config.is_file():
        raise FileNotFoundError(f"{root} has no {RELEASE_CONFIG_NAME} (VideoAlign's training configs)")
    if ckpt is None:
        steps = {}
        for p in root.glob("checkpoint-*"):
            suffix = p.name[len("checkpoint-"):]
            if p.is_dir() and suffix.isdigit():
                steps[int(suffix)] = p
        if not steps:
            raise FileNotFoundError(f"{root} has no checkpoint-<step>/ folder")
        if checkpoint_step is None:
            ckpt = steps[max(steps)]
        elif int(checkpoint_step) in steps:
            ckpt = steps[int(checkpoint_step)]
        else:
            raise FileNotFoundError(f"{root} has no checkpoint-{checkpoint_step}/ (found steps {sorted(steps)})")
    full, adapter, non_lora = ckpt / FULL_STATE_NAME, ckpt / ADAPTER_NAME, ckpt / NON_LORA_NAME
    if full.is_file():
        weights = (full,)
    elif adapter.is_file() and non_lora.is_file():
        weights = (adapter, non_lora)
    else:
        have = sorted(p.name for p in ckpt.iterdir())
        raise FileNotFoundError(f"{ckpt} holds neither {FULL_STATE_NAME} nor both {ADAPTER_NAME} and {NON_LORA_NAME} "
                                f"(found: {have})")
    tok = ckpt / TOKENIZER_DIR
    return ReleaseFiles(root=root, config=config, checkpoint=ckpt, weights=weights,
                        tokenizer=tok if tok.is_dir() else None)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` file: safetensors, or a torch pickle read with ``weights_only=True``
    (a pickle that holds anything else is refused, never executed)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"{path}: refused by torch.load(weights_only=True); it must hold only tensors "
                             f"({str(e).splitlines()[0]})") from e
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise ValueError(f"{path} is not a readable torch file: {e}") from e
            try:  # legacy (non-zip) serialization cannot be memory-mapped
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e2:
                raise ValueError(f"{path}: refused by torch.load(weights_only=True); it must hold only tensors "
                                 f"({str(e2).splitlines()[0]})") from e2
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{path} must hold a dict of name -> tensor, got {type(state).__name__}")
    return state


# --------------------------------------------------------------------------------------------
# Key mapping: VideoAlign (PeftModel over transformers-4.45 Qwen2-VL) -> our Qwen2VLModel
# --------------------------------------------------------------------------------------------

_PREFIXES = (("model.language_model.", "language_model."), ("model.visual.", "visual."),
             ("model.", "language_model."), ("visual.", "visual."), ("language_model.", "language_model."),
             ("rm_head.", "rm_head."), ("lm_head.", "lm_head."))


def map_module_name(name: str) -> str:
    """A VideoAlign parameter/module name -> the name in transformers 5's ``Qwen2VLModel``
    (``rm_head``/``lm_head`` kept as they are). Raises KeyError for anything else."""
    n = name[len("base_model.model."):] if name.startswith("base_model.model.") else name
    for old, new in _PREFIXES:
        if n.startswith(old):
            return new + n[len(old):]
    raise KeyError(name)


def split_state(state: dict[str, torch.Tensor], source: Path):
    """-> (lora {module: {"A": t, "B": t, "embedding": bool}}, other {our name: t}), names mapped.
    Drops peft's ``original_module`` copies, unwraps ``base_layer`` and ``modules_to_save``."""
    lora: dict[str, dict] = {}
    other: dict[str, torch.Tensor] = {}
    adapters = set()
    for key, tensor in state.items():
        m = _LORA_KEY.match(key) or _LORA_EMB_KEY.match(key)
        if m:
            adapters.add(m["adapter"])
            try:
                module = map_module_name(m["module"])
            except KeyError:
                raise KeyError(f"{source}: LoRA key {key!r} names no Qwen2-VL module") from None
            entry = lora.setdefault(module, {"embedding": m["kind"].startswith("lora_embedding")})
            entry[m["kind"][-1]] = tensor
            continue
        if ".lora_" in key:
            raise ValueError(f"{source}: unsupported peft tensor {key!r} (plain LoRA only: lora_A/lora_B)")
        if ".original_module." in key:
            continue
        plain = re.sub(r"\.modules_to_save\.[^.]+\.", ".", key).replace(".base_layer.", ".")
        try:
            name = map_module_name(plain)
        except KeyError:
            raise KeyError(f"{source}: key {key!r} names no Qwen2-VL parameter (expected base_model.model."
                           f"{{model,visual,rm_head,lm_head}}.*)") from None
        other[name] = tensor
    if len(adapters) > 1:
        raise ValueError(f"{source}: LoRA weights of several adapters {sorted(map(str, adapters))}")
    for module, entry in lora.items():
        if "A" not in entry or "B" not in entry:
            raise KeyError(f"{source}: LoRA of {module} lacks lora_{'A' if 'A' not in entry else 'B'}")
    return lora, other


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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _merge_lora(model: nn.Module, lora: dict[str, dict], cfg: ReleaseConfig, source: str) -> nn.Module:
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    if cfg.lora_r is None:
        raise ValueError(f"{source} holds LoRA weights but {cfg.path.name} has no enabled peft_lora_config "
                         f"(lora_enable, lora_r, lora_alpha)")
    modules = dict(model.named_modules())
    for name, entry in sorted(lora.items()):
        mod = modules.get(name)
        kinds = (nn.Embedding,) if entry["embedding"] else (nn.Linear,)
        if not isinstance(mod, kinds):
            raise KeyError(f"{source}: the LoRA targets {name!r}, which is "
                           f"{'missing' if mod is None else type(mod).__name__} in the Qwen2-VL model")
        rank = entry["A"].shape[0]  # lora_A [r, in], lora_embedding_A [r, num_embeddings]
        if rank != cfg.lora_r:
            raise ValueError(f"{source}: the LoRA of {name} has rank {rank}, {cfg.path.name} says "
                             f"peft_lora_config.lora_r={cfg.lora_r}")
    peft_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, use_rslora=cfg.use_rslora, lora_dropout=0.0,
                          bias="none", target_modules=sorted(lora))
    peft_model = get_peft_model(model, peft_cfg)
    state = {}
    for name, entry in lora.items():
        a, b = ("lora_embedding_A", "lora_embedding_B") if entry["embedding"] else ("lora_A.weight", "lora_B.weight")
        state[f"base_model.model.{name}.{a}"] = entry["A"].float()
        state[f"base_model.model.{name}.{b}"] = entry["B"].float()
    try:
        result = set_peft_model_state_dict(peft_model, state)
    except RuntimeError as e:
        raise ValueError(f"{source}: the LoRA weights do not fit the model: {e}") from e
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise KeyError(f"{source}: LoRA keys not loaded {list(result.unexpected_keys)[:5]}, LoRA parameters left "
                       f"unset {missing[:5]}")
    return peft_model.merge_and_unload(safe_merge=True)


def load_videoalign_release(path: str | Path, base_model: str | Path | None = None, *,
                            checkpoint_step: int | None = None, prompt_template: str | None = None,
                            prompt_template_file: str | Path | None = None, dtype: torch.dtype | str | None = None,
                            device: torch.device | str | None = None, attn_implementation: str | None = None,
                            **config_overrides) -> VideoRewardModel:
    """VideoAlign's released VideoReward folder -> :class:`VideoRewardModel` (LoRA merged).

    ``path``: the release folder (model_config.json + checkpoint-<step>/) or a checkpoint folder.
    ``base_model``: the local Qwen2-VL-2B-Instruct folder (config.json, *.safetensors, tokenizer);
    needed when model_config.json names it by hub id. ``prompt_template``/``prompt_template_file``:
    see the module docstring. ``config_overrides``: VideoRewardConfig fields (e.g. ``source_fps``;
    ``mean``/``std`` replace inference_config). Weights are merged in float32, then cast to ``dtype``.
    Everything is validated (files, config fields, base folder, template) before weights are read.
    """
    from transformers import AutoTokenizer, Qwen2VLModel

    files = find_release_files(path, checkpoint_step)
    cfg = read_release_config(files.config)
    template = resolve_prompt_template(cfg, prompt_template, prompt_template_file)
    base = resolve_base_model(cfg, base_model)
    if cfg.stats is None and not ("mean" in config_overrides and "std" in config_overrides):
        raise KeyError(f"{files.config} has no inference_config (VQ_mean, VQ_std, MQ_mean, MQ_std, TA_mean, TA_std); "
                       f"pass mean=/std= to use other normalisation statistics")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    reward_config = VideoRewardConfig.from_dict({"data_config": {
        "fps": cfg.data.get("fps"), "max_frame_pixels": cfg.data.get("max_frame_pixels"),
        "num_frames": cfg.data.get("num_frames")}, "inference_config": cfg.stats or {},
        "prompt_template": template, "special_tokens": SPECIAL_TOKENS, **config_overrides})

    # tokenizer: the checkpoint's own, else the base one with VideoAlign's three tokens appended
    if files.tokenizer is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(files.tokenizer))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(base))
        tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})

    # weights
    lora, other = {}, {}
    for f in files.weights:
        lo, ot = split_state(load_tensors(f), f)
        if set(lo) & set(lora) or set(ot) & set(other):
            raise ValueError(f"{f} repeats tensors of {files.weights[0]}")
        lora.update(lo)
        other.update(ot)
    source = " + ".join(str(f) for f in files.weights)
    head_w = other.pop("rm_head.weight", None)
    other.pop("lm_head.weight", None)
    if head_w is None:
        raise KeyError(f"{source}: no reward head 'rm_head.weight'")
    if head_w.dim() != 2 or head_w.shape[0] != cfg.output_dim:
        raise ValueError(f"{source}: rm_head.weight has shape {tuple(head_w.shape)}, expected "
                         f"({cfg.output_dim}, hidden) from model_config.output_dim={cfg.output_dim}")
    kwargs = {"dtype": torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report flags the unused lm_head; checked below instead
    try:
        model, info = Qwen2VLModel.from_pretrained(str(base), output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    if info["missing_keys"] or info["mismatched_keys"] or [k for k in info["unexpected_keys"]
                                                           if not k.startswith("lm_head.")]:
        raise ValueError(f"base model {base} does not load as Qwen2-VL: missing {sorted(info['missing_keys'])[:5]}, "
                         f"unexpected {sorted(info['unexpected_keys'])[:5]}, mismatched {info['mismatched_keys'][:5]}")
    emb_key = "language_model.embed_tokens.weight"
    if emb_key not in other:
        raise KeyError(f"{source}: no embed_tokens weight; the trained embeddings of {SPECIAL_TOKENS} must come from "
                       f"the checkpoint")
    rows = other[emb_key].shape[0]
    if rows != len(tokenizer):
        raise ValueError(f"{source}: embed_tokens has {rows} rows but the tokenizer "
                         f"({files.tokenizer or base}) has {len(tokenizer)} tokens")
    if rows != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows, mean_resizing=False)
    params = dict(model.state_dict())
    unknown = sorted(k for k in other if k not in params)
    if unknown:
        raise KeyError(f"{source}: tensors with no counterpart in Qwen2VLModel: {unknown[:8]}")
    bad = [(k, tuple(v.shape), tuple(params[k].shape)) for k, v in other.items() if v.shape != params[k].shape]
    if bad:
        raise ValueError(f"{source}: shape mismatch (key, checkpoint, model): {bad[:5]}")
    with torch.no_grad():
        for k, v in other.items():
            params[k].copy_(v.to(params[k].dtype))
    if lora:
        model = _merge_lora(model, lora, cfg, source)

    hidden = model.config.text_config.hidden_size
    if tuple(head_w.shape) != (cfg.output_dim, hidden):
        raise ValueError(f"{source}: rm_head.weight has shape {tuple(head_w.shape)}, expected "
                         f"({cfg.output_dim}, {hidden}) from model_config.output_dim={cfg.output_dim}")
    head = nn.Linear(hidden, 3, bias=False)
    with torch.no_grad():  # output_dim 1: the one row scores each of the three tokens
        head.weight.copy_(head_w.float().expand(3, hidden))
    if dtype is not None:  # before wrapping: the normalisation buffers stay float32
        model, head = model.to(dtype), head.to(dtype)
    out = VideoRewardModel(model, head, tokenizer, reward_config)
    return out.to(device) if device is not None else out


def convert_videoalign_release(path: str | Path, out: str | Path, base_model: str | Path | None = None,
                               dtype: torch.dtype | str | None = "bf16", **kwargs) -> VideoRewardModel:
    """:func:`load_videoalign_release` then ``save_pretrained(out)`` (the merged layout, in
    ``dtype``; bf16 by default, the release's own precision)."""
    model = load_videoalign_release(path, base_model, dtype=dtype, **kwargs)
    model.save_pretrained(out)
    return model


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m stream_r1_fast.rewards.videoalign",
                                description="Merge VideoAlign's released VideoReward (LoRA + head) into the merged "
                                            "layout VideoRewardModel.from_pretrained reads.")
    p.add_argument("release", help="the release folder (model_config.json, checkpoint-<step>/)")
    p.add_argument("out", help="output folder")
    p.add_argument("--base-model", help="local Qwen2-VL-2B-Instruct folder")
    p.add_argument("--step", type=int, help="checkpoint step (default: the highest)")
    p.add_argument("--prompt-template-file", help="VideoAlign's prompt_template.py (read, not run) or a text file")
    p.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES))
    a = p.parse_args(argv)
    convert_videoalign_release(a.release, a.out, a.base_model, dtype=a.dtype, checkpoint_step=a.step,
                               prompt_template_file=a.prompt_template_file)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()


__all__ = ["ReleaseConfig", "ReleaseFiles", "convert_videoalign_release", "find_release_files",
           "load_tensors", "load_videoalign_release", "map_module_name", "read_release_config",
           "resolve_base_model", "resolve_prompt_template", "split_state"]
