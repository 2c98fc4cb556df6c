"""VideoAlign's VideoReward on transformers 5: a Qwen2-VL backbone and a bias-free linear head
read at three special tokens (VQ, MQ, TA); see docs/method.md, section 5.

:class:`VideoRewardModel` gives ``rewards(video, prompts) -> RewardOutput`` for the whole batch;
its pixels go through :func:`~stream_r1_fast.rewards.preprocessing.preprocess_video`.

Checkpoint directory read by :meth:`VideoRewardModel.from_pretrained`::

    config.json, model*.safetensors   Qwen2-VL (Qwen2VLModel or Qwen2VLForConditionalGeneration
                                      layout), vocabulary already holding the 3 special tokens
    tokenizer.json, tokenizer_config.json, ...   the matching tokenizer
    reward_head.safetensors           "weight" [3, hidden] (VideoAlign's "rm_head.weight" too)
    reward_config.json                VideoRewardConfig fields; normalisation as "mean"/"std"
                                      lists or VideoAlign's "VQ_mean", "VQ_std", ... keys

VideoAlign ships its checkpoint as a LoRA over Qwen2-VL-2B-Instruct; that release folder is read
by :mod:`stream_r1_fast.rewards.videoalign`, which builds this model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from stream_r1_fast.rewards.base import AXES, RewardOutput, check_video, normalize
from stream_r1_fast.rewards.preprocessing import CLIP_MEAN, CLIP_STD, preprocess_video

SPECIAL_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")

# The text the Qwen2-VL chat template renders for one user turn [video, text] with its default
# system prompt, followed by the assistant prefix (add_generation_prompt). "{video}" is replaced
# by vision_start + N video tokens + vision_end, "{text}" by the filled prompt template.
QWEN2_VL_CHAT_FORMAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                        "{video}{text}<|im_end|>\n<|im_start|>assistant\n")

# The user text: "{caption}" is the prompt; each special token appears exactly once. A real
# checkpoint must use the wording it was trained with (reward_config.json "prompt_template").
DEFAULT_PROMPT_TEMPLATE = (
    "Judge this generated video. It was generated from the caption: \"{caption}\". "
    "Visual quality: <|VQ_reward|> Motion quality: <|MQ_reward|> Text alignment: <|TA_reward|>"
)

REWARD_CONFIG_NAME = "reward_config.json"
REWARD_HEAD_NAME = "reward_head.safetensors"

# The dtype names the loaders accept.
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


@dataclasses.dataclass
class VideoRewardConfig:
    """Everything besides the weights. ``mean``/``std``: the per-axis normalisation statistics
    (VQ, MQ, TA) of the checkpoint — required. Preprocessing knobs: see :func:`preprocess_video`.
    ``chat_format``: "{video}" and "{text}" placeholders; None uses the tokenizer's chat template."""

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    special_tokens: tuple[str, str, str] = SPECIAL_TOKENS
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    chat_format: str | None = QWEN2_VL_CHAT_FORMAT
    video_token: str = "<|video_pad|>"
    vision_start_token: str = "<|vision_start|>"
    vision_end_token: str = "<|vision_end|>"
    source_fps: float | None = 16.0
    fps: float | None = 2.0
    num_frames: int | None = None
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 448 * 448
    resample: str = "bicubic"
    antialias: bool = True
    uint8: bool = True
    clamp: bool = True
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self):
        if self.mean is None or self.std is None:
            raise ValueError("VideoRewardConfig needs the normalisation statistics 'mean' and 'std' (3 values each, "
                             "VQ, MQ, TA), e.g. VideoAlign's inference_config VQ_mean/VQ_std/...")
        self.mean, self.std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (VQ, MQ, TA), got {self.mean}, {self.std}")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")
        self.special_tokens = tuple(self.special_tokens)
        self.image_mean, self.image_std = tuple(map(float, self.image_mean)), tuple(map(float, self.image_std))
        if len(self.special_tokens) != 3 or len(set(self.special_tokens)) != 3:
            raise ValueError(f"special_tokens needs 3 distinct tokens (VQ, MQ, TA), got {self.special_tokens}")
        if "{caption}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{caption}'")
        for tok in self.special_tokens:
            if self.prompt_template.count(tok) != 1:
                raise ValueError(f"prompt_template must contain {tok} exactly once")
        if self.chat_format is not None and not ("{video}" in self.chat_format and "{text}" in self.chat_format):
            raise ValueError("chat_format must contain '{video}' and '{text}'")
        if self.resample not in ("bicubic", "bilinear"):
            raise ValueError(f"resample must be 'bicubic' or 'bilinear', got {self.resample!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "VideoRewardConfig":
        """Also reads VideoAlign's keys: ``VQ_mean``... (flat or under ``inference_config``),
        ``data_config.fps`` / ``max_frame_pixels`` / ``num_frames``."""
        data = dict(data)
        infer = data.pop("inference_config", None) or {}
        dc = data.pop("data_config", None) or {}
        for src, dst in (("fps", "fps"), ("max_frame_pixels", "max_pixels"), ("num_frames", "num_frames")):
            if dc.get(src) is not None:
                data.setdefault(dst, dc[src])
        flat = {**infer, **data}
        for stat in ("mean", "std"):
            if stat not in data and all(f"{a}_{stat}" in flat for a in AXES):
                data[stat] = [flat[f"{a}_{stat}"] for a in AXES]
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def preprocess_kwargs(self) -> dict:
        names = ("source_fps", "fps", "num_frames", "min_frames", "max_frames", "min_pixels", "max_pixels",
                 "resample", "antialias", "uint8", "clamp", "image_mean", "image_std")
        return {n: getattr(self, n) for n in names}


class VideoRewardModel(nn.Module):
    """VideoReward: ``rewards(video [B, T, 3, H, W] in [0, 1], prompts) -> RewardOutput`` with
    raw [B, 3] (VQ, MQ, TA) and normalised ``(raw - mean) / std``, differentiable to the pixels.

    ``backbone``: a ``Qwen2VLModel`` or ``Qwen2VLForConditionalGeneration`` (only its
    ``.model`` is kept: the LM head is not needed). ``head``: ``nn.Linear(hidden, 3, bias=False)``;
    axis k is head output k at the hidden state of special token k. Parameters are frozen.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear, tokenizer, config: VideoRewardConfig):
        super().__init__()
        from transformers import Qwen2VLModel

        model = getattr(backbone, "model", backbone)
        if not isinstance(model, Qwen2VLModel):
            raise TypeError(f"backbone must be a Qwen2VLModel or Qwen2VLForConditionalGeneration, got "
                            f"{type(backbone).__name__}")
        hidden = model.config.text_config.hidden_size
        if not isinstance(head, nn.Linear) or head.bias is not None or tuple(head.weight.shape) != (3, hidden):
            raise ValueError(f"head must be nn.Linear({hidden}, 3, bias=False), got {head}")
        self.model, self.head, self.tokenizer, self.config = model, head, tokenizer, config
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32), persistent=False)

        ids = {}
        for name in (*config.special_tokens, config.video_token, config.vision_start_token, config.vision_end_token):
            tid = tokenizer.convert_tokens_to_ids(name)
            if tid is None or tid == tokenizer.unk_token_id or tid >= model.config.text_config.vocab_size:
                raise ValueError(f"token {name!r} is not in the tokenizer/model vocabulary (got id {tid})")
            ids[name] = tid
        self.special_token_ids = [ids[t] for t in config.special_tokens]
        self.video_token_id = ids[config.video_token]
        if self.video_token_id != model.config.video_token_id:
            raise ValueError(f"tokenizer's {config.video_token} is id {self.video_token_id}, the model's "
                             f"video_token_id is {model.config.video_token_id}")
        vc = model.config.vision_config
        self.patch_size, self.temporal_patch_size, self.merge_size = (vc.patch_size, vc.temporal_patch_size,
                                                                      vc.spatial_merge_size)
        self.requires_grad_(False)
        self.eval()

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | str | None = None,
                        device: torch.device | str | None = None, attn_implementation: str | None = None,
                        **config_overrides) -> "VideoRewardModel":
        """Load a local directory (layout in the module docstring). ``config_overrides`` replace
        fields of reward_config.json (e.g. ``fps=2``, ``source_fps=16``, ``max_pixels=...``)."""
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, Qwen2VLModel

        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"VideoReward checkpoint directory {root} does not exist")
        for name in ("config.json", REWARD_CONFIG_NAME, REWARD_HEAD_NAME):
            if not (root / name).is_file():
                raise FileNotFoundError(f"{root} has no {name} (expected: Qwen2-VL config.json + model*.safetensors, "
                                        f"tokenizer files, {REWARD_HEAD_NAME}, {REWARD_CONFIG_NAME})")
        if not any(root.glob("*.safetensors")) or not [p for p in root.glob("*.safetensors")
                                                          if p.name != REWARD_HEAD_NAME]:
            raise FileNotFoundError(f"{root} has no Qwen2-VL model*.safetensors weights")
        data = json.loads((root / REWARD_CONFIG_NAME).read_text())
        data.update(config_overrides)
        config = VideoRewardConfig.from_dict(data)

        if isinstance(dtype, str):
            dtype = DTYPES[dtype]
        kwargs = {"dtype": dtype or torch.float32}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = Qwen2VLModel.from_pretrained(str(root), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(root))

        state = load_file(str(root / REWARD_HEAD_NAME))
        key = next((k for k in ("weight", "rm_head.weight", "head.weight") if k in state), None)
        if key is None:
            raise KeyError(f"{root / REWARD_HEAD_NAME} has no 'weight' (or 'rm_head.weight') tensor; keys: "
                           f"{sorted(state)}")
        hidden = model.config.text_config.hidden_size
        if tuple(state[key].shape) != (3, hidden):
            raise ValueError(f"reward head weight has shape {tuple(state[key].shape)}, expected (3, {hidden})")
        head = nn.Linear(hidden, 3, bias=False)
        with torch.no_grad():
            head.weight.copy_(state[key])
        out = cls(model, head.to(kwargs["dtype"]), tokenizer, config)
        return out.to(device) if device is not None else out

    def save_pretrained(self, path: str | Path) -> None:
        """Write the directory :meth:`from_pretrained` reads."""
        from safetensors.torch import save_file

        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(root))
        self.tokenizer.save_pretrained(str(root))
        save_file({"weight": self.head.weight.detach().float().cpu().contiguous()}, str(root / REWARD_HEAD_NAME))
        (root / REWARD_CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2))

    # ---- inputs ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def preprocess(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, 3, H, W] in [0, 1] -> (pixel_values_videos, video_grid_thw)."""
        return preprocess_video(video, patch_size=self.patch_size, temporal_patch_size=self.temporal_patch_size,
                                merge_size=self.merge_size, **self.config.preprocess_kwargs())

    def build_text(self, prompt: str, num_video_tokens: int) -> str:
        """The full conversation of one sample, video placeholders expanded."""
        cfg = self.config
        text = cfg.prompt_template.replace("{caption}", prompt)
        video = cfg.vision_start_token + cfg.video_token * num_video_tokens + cfg.vision_end_token
        if cfg.chat_format is not None:
            return cfg.chat_format.replace("{text}", text).replace("{video}", video)
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if rendered.count(cfg.video_token) != 1:
            raise ValueError(f"the tokenizer's chat template rendered {rendered.count(cfg.video_token)} "
                             f"{cfg.video_token} tokens for one video")
        return rendered.replace(cfg.vision_start_token + cfg.video_token + cfg.vision_end_token, video)

    def tokenize(self, prompts: Sequence[str], num_video_tokens: int) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask (right padding), mm_token_type_ids, reward_positions [B, 3]."""
        for i, p in enumerate(prompts):
            bad = [tok for tok in (*self.config.special_tokens, self.config.video_token,
                                   self.config.vision_start_token, self.config.vision_end_token) if tok in p]
            if bad:
                raise ValueError(f"prompt {i} contains the reserved token(s) {bad}")
        texts = [self.build_text(p, num_video_tokens) for p in prompts]
        enc = self.tokenizer(texts, padding="longest", padding_side="right", add_special_tokens=False,
                             return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        positions = []
        for k, tid in enumerate(self.special_token_ids):
            hit = ids == tid
            counts = hit.sum(1)
            if not bool((counts == 1).all()):
                raise ValueError(f"every sample needs {self.config.special_tokens[k]} exactly once in its tokens, "
                                 f"got counts {counts.tolist()}")
            positions.append(hit.int().argmax(1))
        n_video = (ids == self.video_token_id).sum(1)
        if not bool((n_video == num_video_tokens).all()):
            raise ValueError(f"expected {num_video_tokens} video tokens per sample, got {n_video.tolist()}")
        mm_types = torch.where(ids == self.video_token_id, 2, 0).to(torch.int32)
        return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": mm_types,
                "reward_positions": torch.stack(positions, 1)}

    # ---- scoring -----------------------------------------------------------------------------

    def rewards(self, video: torch.Tensor, prompts: Sequence[str]) -> RewardOutput:
        check_video(video, prompts)
        with torch.no_grad():
            lo, hi = float(video.min()), float(video.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"video values must be in [0, 1], got [{lo:.3f}, {hi:.3f}]"
                             + (" (looks like [-1, 1]: pass (video + 1) / 2)" if lo < -1e-3 else "")
                             + (" (looks like [0, 255]: pass video / 255)" if hi > 2 else ""))
        pixel_values, grid = self.preprocess(video.to(self.device))
        num_tokens = int(grid[0].prod()) // self.merge_size ** 2
        enc = {k: v.to(self.device) for k, v in self.tokenize(list(prompts), num_tokens).items()}
        positions = enc.pop("reward_positions")
        out = self.model(**enc, pixel_values_videos=pixel_values.to(self.dtype), video_grid_thw=grid,
                         use_cache=False)
        hidden = out.last_hidden_state  # [B, L, D] after the final norm
        rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1)
        picked = hidden[rows, positions]  # [B, 3, D]: axis k's token
        raw = self.head(picked.to(self.head.weight.dtype)).diagonal(dim1=1, dim2=2).float()  # [B, 3]
        return RewardOutput(raw, normalize(raw, self.mean, self.std))

    def forward(self, video: torch.Tensor, prompts: Sequence[str]) -> RewardOutput:
        return self.rewards(video, prompts)


__all__ = ["DEFAULT_PROMPT_TEMPLATE", "DTYPES", "QWEN2_VL_CHAT_FORMAT", "REWARD_CONFIG_NAME", "REWARD_HEAD_NAME",
           "SPECIAL_TOKENS", "VideoRewardConfig", "VideoRewardModel"]
