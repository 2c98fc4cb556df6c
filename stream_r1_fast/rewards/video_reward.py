"""The ``reward.factory`` entry point for VideoAlign's VideoReward: :func:`load_video_reward`
(``stream_r1_fast.rewards.video_reward:load_video_reward`` in the configs).

It reads either of the two folders a VideoReward comes in:

* the merged layout :meth:`~stream_r1_fast.rewards.model.VideoRewardModel.from_pretrained`
  reads (``reward_config.json``, ``reward_head.safetensors``, Qwen2-VL weights and tokenizer;
  described in :mod:`stream_r1_fast.rewards.model`);
* VideoAlign's release folder (``model_config.json`` + ``checkpoint-<step>/``, a LoRA over
  Qwen2-VL-2B-Instruct), through :mod:`stream_r1_fast.rewards.videoalign`. Converting it once
  (``python -m stream_r1_fast.rewards.videoalign RELEASE OUT --base-model DIR``) saves merging
  the LoRA at every start.

Layers, each importing only the ones before it: ``base`` (the interface), ``preprocessing``
(pixels -> Qwen2-VL patches), ``model`` (:class:`VideoRewardModel`), ``release_config`` /
``release_weights`` / ``videoalign`` (the release loader), then this module. The model's public
names are re-exported here, so ``stream_r1_fast.rewards.video_reward.VideoRewardModel`` and
friends keep working.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stream_r1_fast.rewards.model import (DEFAULT_PROMPT_TEMPLATE, QWEN2_VL_CHAT_FORMAT, REWARD_CONFIG_NAME,
                                          REWARD_HEAD_NAME, SPECIAL_TOKENS, VideoRewardConfig, VideoRewardModel)
from stream_r1_fast.rewards.release_config import RELEASE_CONFIG_NAME


def load_video_reward(path: str | Path, dtype: str | torch.dtype | None = "bf16", device: str | None = None,
                      **kwargs) -> VideoRewardModel:
    """The ``reward.factory`` entry point: :meth:`VideoRewardModel.from_pretrained` on the
    current CUDA device by default (bf16). A VideoAlign release folder (``model_config.json``,
    no ``reward_config.json``) goes through
    :func:`~stream_r1_fast.rewards.videoalign.load_videoalign_release` instead (``kwargs`` then
    take ``base_model``, ``prompt_template_file``, ...; it merges the LoRA at every start, so
    converting once is faster)."""
    if device is None:
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    root = Path(path)
    if (root / RELEASE_CONFIG_NAME).is_file() and not (root / REWARD_CONFIG_NAME).is_file():
        # imported here, not at the top: `python -m stream_r1_fast.rewards.videoalign` must find
        # videoalign unimported when the package loads (no import cycle either way: videoalign
        # never imports this module)
        from stream_r1_fast.rewards.videoalign import load_videoalign_release

        return load_videoalign_release(root, dtype=dtype, device=device, **kwargs)
    return VideoRewardModel.from_pretrained(path, dtype=dtype, device=device, **kwargs)


__all__ = ["DEFAULT_PROMPT_TEMPLATE", "QWEN2_VL_CHAT_FORMAT", "REWARD_CONFIG_NAME", "REWARD_HEAD_NAME",
           "SPECIAL_TOKENS", "VideoRewardConfig", "VideoRewardModel", "load_video_reward"]
