"""VideoReward's differentiable preprocessing: raster pixels [B, T, 3, H, W] in [0, 1] ->
``pixel_values_videos`` [B * t * h * w, 3 * 2 * 14 * 14] and ``video_grid_thw`` [B, 3].

:func:`preprocess_video` reproduces the patch layout of the Hugging Face
``Qwen2VLVideoProcessor``: frame sampling at about ``fps`` (:func:`sample_frame_indices`),
:func:`smart_resize` to multiples of 28, the resize of decoded uint8 frames
(:func:`resize_frames`), CLIP mean/std, temporal patch 2 padded with the last frame, patch 14,
and the 2x2-merge order the vision tower's merger expects (:func:`patchify_video`).
:func:`unpatchify_video` is the exact inverse (tests, debugging saliency maps). Nothing here
knows the model; :mod:`stream_r1_fast.rewards.model` calls it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """Target (height, width) of the Qwen2-VL processors: both multiples of ``factor``, the
    aspect ratio kept as well as possible, ``min_pixels <= h * w <= max_pixels``."""
    if min(height, width) <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be < 200, got {height}x{width}")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    return h, w


def sample_frame_indices(total: int, source_fps: float | None, fps: float | None = 2.0,
                         num_frames: int | None = None, min_frames: int = 4, max_frames: int = 768,
                         frame_factor: int = 2) -> torch.Tensor:
    """Indices of the frames the reward model sees, spread uniformly over the clip (first and
    last frame included, like qwen-vl-utils' reader that VideoReward was trained with).

    ``num_frames`` wins over ``fps``; with neither (or no ``source_fps``) every frame is kept.
    From ``fps``: ``n = total / source_fps * fps`` rounded to a multiple of ``frame_factor``,
    clamped to [min_frames, max_frames] and to ``total`` (then floored to the factor).
    """
    if total < 1:
        raise ValueError("the video has no frames")
    if num_frames is None:
        if fps is None or source_fps is None:
            return torch.arange(total)
        if not (fps > 0 and source_fps > 0):
            raise ValueError(f"fps and source_fps must be > 0, got {fps}, {source_fps}")
        n = round(total / source_fps * fps / frame_factor) * frame_factor
        n = min(max(n, min_frames), max_frames)
        if n > total:
            n = max(total // frame_factor * frame_factor, 1)
    else:
        n = int(num_frames)
        if not 1 <= n <= total:
            raise ValueError(f"num_frames must be in [1, {total}], got {num_frames}")
    return torch.linspace(0, total - 1, n).round().long()


def patchify_video(frames: torch.Tensor, patch_size: int = 14, temporal_patch_size: int = 2,
                   merge_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised frames [B, T, C, H, W] (H, W multiples of ``patch_size * merge_size``) ->
    (patches [B * t * h * w, C * temporal_patch_size * patch_size^2], grid [B, 3] = (t, h, w)).

    Row order per video: temporal patch, then merge-block row, merge-block column, then the
    ``merge_size x merge_size`` patches inside a block (row-major) — the vision merger
    concatenates each run of ``merge_size^2`` consecutive rows into one LLM token. Column order
    inside a row: channel, frame within the temporal patch, pixel row, pixel column. Time is
    padded to a multiple of ``temporal_patch_size`` by repeating the last frame.
    """
    b, t, c, height, width = frames.shape
    block = patch_size * merge_size
    if height % block or width % block:
        raise ValueError(f"frame size {height}x{width} is not a multiple of {block}")
    pad = -t % temporal_patch_size
    if pad:
        frames = torch.cat([frames, frames[:, -1:].expand(b, pad, c, height, width)], dim=1)
    gt, gh, gw = (t + pad) // temporal_patch_size, height // patch_size, width // patch_size
    # axes: b, gt, tp, c, bh, mh, ph, bw, mw, pw
    x = frames.reshape(b, gt, temporal_patch_size, c, gh // merge_size, merge_size, patch_size,
                       gw // merge_size, merge_size, patch_size)
    # -> b, gt, bh, bw, mh, mw | c, tp, ph, pw
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    patches = x.reshape(b * gt * gh * gw, c * temporal_patch_size * patch_size * patch_size)
    grid = torch.tensor([[gt, gh, gw]] * b, dtype=torch.long)
    return patches, grid


def unpatchify_video(patches: torch.Tensor, grid: torch.Tensor, channels: int = 3, patch_size: int = 14,
                     temporal_patch_size: int = 2, merge_size: int = 2) -> torch.Tensor:
    """Inverse of :func:`patchify_video` for B videos of one grid: -> [B, t * tp, C, H, W]
    (the temporal padding frames included)."""
    grid = torch.as_tensor(grid).reshape(-1, 3)
    if not bool((grid == grid[0]).all()):
        raise ValueError("unpatchify_video needs videos of one grid")
    gt, gh, gw = (int(v) for v in grid[0])
    b = grid.shape[0]
    x = patches.reshape(b, gt, gh // merge_size, gw // merge_size, merge_size, merge_size, channels,
                        temporal_patch_size, patch_size, patch_size)
    # b, gt, bh, bw, mh, mw, c, tp, ph, pw -> b, gt, tp, c, bh, mh, ph, bw, mw, pw
    x = x.permute(0, 1, 7, 6, 2, 4, 8, 3, 5, 9)
    return x.reshape(b, gt * temporal_patch_size, channels, gh * patch_size, gw * patch_size)


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to multiples of 1/255 with a straight-through gradient."""
    return x + ((x * 255).round() / 255 - x).detach()


def resize_frames(frames: torch.Tensor, size: tuple[int, int], resample: str = "bicubic", antialias: bool = True,
                  uint8: bool = True, clamp: bool = True) -> torch.Tensor:
    """Frames [N, C, H, W] in [0, 1] -> [N, C, *size], differentiable.

    ``uint8=True`` reproduces what torchvision (the HF processor, qwen-vl-utils) computes on uint8
    frames: the input rounded to 1/255, a width pass, clamp + round to 1/255, a height pass,
    clamp + round (rounding with straight-through gradients). Residual vs torchvision's
    fixed-point uint8 kernel: <= 2/255 on ~0.5% of the pixels, 0 elsewhere (measured on noise).
    ``uint8=False`` is torchvision's float path, ``F.interpolate`` on the 2-D frame (then clamped
    to [0, 1] if ``clamp``): equal to the HF processor on float frames to fp32 rounding.
    """
    mode = dict(mode=resample, align_corners=False, antialias=antialias and resample in ("bilinear", "bicubic"))
    if not uint8:
        out = F.interpolate(frames, size=tuple(size), **mode)
        return out.clamp(0.0, 1.0) if clamp else out
    x = _quantize(frames.clamp(0.0, 1.0))
    x = _quantize(F.interpolate(x, size=(x.shape[-2], size[1]), **mode).clamp(0.0, 1.0))
    return _quantize(F.interpolate(x, size=tuple(size), **mode).clamp(0.0, 1.0))


def preprocess_video(video: torch.Tensor, *, source_fps: float | None = 16.0, fps: float | None = 2.0,
                     num_frames: int | None = None, min_frames: int = 4, max_frames: int = 768,
                     min_pixels: int = 128 * 28 * 28, max_pixels: int = 448 * 448, patch_size: int = 14,
                     temporal_patch_size: int = 2, merge_size: int = 2, resample: str = "bicubic",
                     antialias: bool = True, uint8: bool = True, clamp: bool = True,
                     image_mean: Sequence[float] = CLIP_MEAN,
                     image_std: Sequence[float] = CLIP_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """Raster video [B, T, 3, H, W] in [0, 1] -> (pixel_values_videos, video_grid_thw), the
    inputs ``Qwen2VLModel`` takes, differentiable w.r.t. ``video``.

    Frames: :func:`sample_frame_indices`; size: :func:`smart_resize` with factor
    ``patch_size * merge_size``; resize: :func:`resize_frames` (``uint8``: as the HF processor
    resizes decoded uint8 videos, which is what VideoReward was trained on; without a resize the
    frames are only rounded to 1/255); then CLIP mean/std and :func:`patchify_video`.
    """
    if video.dim() != 5:
        raise ValueError(f"video must have shape [B, T, C, H, W], got {tuple(video.shape)}")
    b, t, c, height, width = video.shape
    idx = sample_frame_indices(t, source_fps, fps, num_frames, min_frames, max_frames, temporal_patch_size)
    frames = video if idx.numel() == t and bool((idx == torch.arange(t)).all()) else video[:, idx.to(video.device)]
    th, tw = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    if (th, tw) != (height, width):
        flat = resize_frames(frames.reshape(-1, c, height, width), (th, tw), resample, antialias, uint8, clamp)
        frames = flat.reshape(b, -1, c, th, tw)
    elif uint8:
        frames = _quantize(frames.clamp(0.0, 1.0))
    mean = torch.tensor(image_mean, dtype=frames.dtype, device=frames.device).view(1, 1, c, 1, 1)
    std = torch.tensor(image_std, dtype=frames.dtype, device=frames.device).view(1, 1, c, 1, 1)
    frames = (frames - mean) / std
    patches, grid = patchify_video(frames, patch_size, temporal_patch_size, merge_size)
    return patches, grid.to(video.device)


__all__ = ["CLIP_MEAN", "CLIP_STD", "patchify_video", "preprocess_video", "resize_frames", "sample_frame_indices",
           "smart_resize", "unpatchify_video"]
