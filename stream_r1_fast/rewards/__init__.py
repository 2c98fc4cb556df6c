"""Reward models behind one interface (:class:`RewardModel`)."""

from stream_r1_fast.rewards.base import AXES, RewardModel, RewardOutput, check_video, normalize
from stream_r1_fast.rewards.video_reward import (VideoRewardConfig, VideoRewardModel, load_video_reward,
                                                 preprocess_video)


def __getattr__(name: str):
    # lazy, so that `python -m stream_r1_fast.rewards.videoalign` runs the module only once
    if name in ("convert_videoalign_release", "load_videoalign_release"):
        from stream_r1_fast.rewards import videoalign

        return getattr(videoalign, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AXES", "RewardModel", "RewardOutput", "VideoRewardConfig", "VideoRewardModel", "check_video",
           "convert_videoalign_release", "load_video_reward", "load_videoalign_release", "normalize",
           "preprocess_video"]
