"""Reward models behind one interface (:class:`RewardModel`)."""

from stream_r1_fast.rewards.base import AXES, RewardModel, RewardOutput, check_video, normalize

__all__ = ["AXES", "RewardModel", "RewardOutput", "check_video", "normalize"]
