"""Reward models behind one interface (:class:`RewardModel`)."""

from stream_r1_fast.rewards.base import AXES, RewardModel, RewardOutput, check_video, normalize
from stream_r1_fast.rewards.video_reward import (VideoRewardConfig, VideoRewardModel, load_video_reward,
                                                 preprocess_video)

__all__ = ["AXES", "RewardModel", "RewardOutput", "VideoRewardConfig", "VideoRewardModel", "check_video",
           "load_video_reward", "normalize", "preprocess_video"]
