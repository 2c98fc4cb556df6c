"""Reward models behind one interface (:class:`RewardModel`); this file only re-exports.

Modules, each importing only those listed before it: ``base`` (the interface), ``preprocessing``
(VideoReward's differentiable pixel pipeline), ``model`` (:class:`VideoRewardModel`),
``release_config`` and ``release_weights`` (reading VideoAlign's release), ``videoalign`` (the
release loader and its command line), ``video_reward`` (:func:`load_video_reward`, the factory).
"""

from stream_r1_fast.rewards.base import AXES, RewardModel, RewardOutput, check_video, normalize
from stream_r1_fast.rewards.model import VideoRewardConfig, VideoRewardModel
from stream_r1_fast.rewards.preprocessing import preprocess_video
from stream_r1_fast.rewards.video_reward import load_video_reward


def __getattr__(name: str):
    # Re-exported lazily, so that `python -m stream_r1_fast.rewards.videoalign` finds the module
    # unimported and runs it only once.
    if name in ("convert_videoalign_release", "load_videoalign_release"):
        from stream_r1_fast.rewards import videoalign

        return getattr(videoalign, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AXES", "RewardModel", "RewardOutput", "VideoRewardConfig", "VideoRewardModel", "check_video",
           "convert_videoalign_release", "load_video_reward", "load_videoalign_release", "normalize",
           "preprocess_video"]
