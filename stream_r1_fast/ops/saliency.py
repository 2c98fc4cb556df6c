"""Stream-R1 Intra-Perplexity weights: reward-gradient saliency -> loss weights on the latent
grid (docs/method.md, section 5, "Intra-Perplexity saliency weights"). Semantics:
:mod:`stream_r1_fast.ops.saliency_ref`."""

from __future__ import annotations

import torch

from stream_r1_fast._backend import backend_info, use_kernel
from stream_r1_fast.ops._checks import FLOAT_DTYPES, check_int, check_unit_interval
from stream_r1_fast.ops.saliency_ref import latent_grid, saliency_weights_ref

__all__ = ["axis_weights_from_rewards", "saliency_weights"]

_OP = "saliency_weights"
_MODES = ("vae", "trilinear")
_KERNEL_DTYPES = FLOAT_DTYPES


def axis_weights_from_rewards(rewards: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Axis weights ``softmax(-r / temperature)`` over the last dim: the weaker axis gets more say.

    ``rewards``: normalised rewards [A] or [B, A] (A = 3: VQ, MQ, TA). Returns the same shape,
    summing to 1 over the last dim; detached (the weights are constants of the loss).
    """
    if not isinstance(rewards, torch.Tensor) or not rewards.is_floating_point():
        raise TypeError(f"rewards must be a floating-point tensor, got {_describe(rewards)}")
    if rewards.dim() not in (1, 2) or rewards.shape[-1] == 0:
        raise ValueError(f"rewards must have shape [A] or [B, A] with A >= 1, got {tuple(rewards.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(-rewards.detach() / temperature, dim=-1)


def saliency_weights(
    saliency: torch.Tensor,
    axis_weights: torch.Tensor | None = None,
    *,
    mode: str = "vae",
    temporal_factor: int = 4,
    spatial_factor: int = 8,
    tau_floor: float = 0.2,
    sigma_floor: float = 0.15,
    gamma_t: float = 1.0,
    gamma_s: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Factor reward-gradient saliency into temporal and spatial loss weights on the latent grid.

    Args:
        saliency: per-axis reward gradients w.r.t. the pixels [A, B, T, C, H, W] (A reward
            axes, e.g. VQ/MQ/TA; C colour channels), or an already fused saliency map
            [B, T, H, W]. float32, float16 or bfloat16 (float64 runs the reference), contiguous.
        axis_weights: [A] or [B, A] weights of the axes in ``S = sum_m w_m ||g_m||_2``, e.g.
            :func:`axis_weights_from_rewards`; ``None`` = equal weights 1/A. Ignored for a
            fused map (but, as every tensor argument, on the device of ``saliency``).
        mode: how S reaches the latent grid: ``"vae"`` averages over the VAE's causal groups
            (frame 0 alone, then ``temporal_factor`` frames; ``spatial_factor``^2 pixels);
            ``"trilinear"`` resamples like ``F.interpolate(..., mode="trilinear")``.
        temporal_factor, spatial_factor: the VAE's compression (Wan: 4 and 8), ints in
            [1, 2^63 - 1]. The latent grid is F = 1 + ceil((T - 1) / temporal_factor),
            h = ceil(H / spatial_factor), w = ceil(W / spatial_factor).
        gamma_t, gamma_s: strengths in [0, 1]: the min-max normalised temporal / spatial
            profile becomes ``(1 - gamma) + gamma * profile`` (0 = uniform) ...
        tau_floor, sigma_floor: ... and is then floored, ``max(that, floor)`` (Stream-R1's
            order: mix, then floor), before division by its mean.

    Returns:
        ``(weights [B, F, h, w], tau [B, F], sigma [B, F, h, w])``, float32 (float64 for a
        float64 input), detached: ``weights = tau * sigma`` normalised to mean 1 per sample;
        tau has mean 1 over F, sigma mean 1 over (h, w) per frame. Constant, zero or
        non-finite saliency gives uniform weights. Malformed arguments raise TypeError /
        ValueError naming the argument.
    """
    check_inputs(saliency, axis_weights, mode, temporal_factor, spatial_factor,
                 tau_floor, sigma_floor, gamma_t, gamma_s)
    saliency = saliency.detach()
    if saliency.dim() == 4:
        axis_weights = saliency.new_empty(0, dtype=torch.float32)
    elif axis_weights is None:
        axis_weights = saliency.new_full((saliency.shape[0],), 1.0 / saliency.shape[0], dtype=torch.float32)
    else:
        axis_weights = axis_weights.detach()
    args = (mode, int(temporal_factor), int(spatial_factor), float(tau_floor), float(sigma_floor),
            float(gamma_t), float(gamma_s))
    if saliency.dtype in _KERNEL_DTYPES and use_kernel(_OP, saliency.device.type):
        return torch.ops.stream_r1_fast.saliency_weights(saliency, axis_weights, *args)
    out = saliency_weights_ref(saliency, axis_weights, *args)
    if saliency.dtype == torch.float64:
        return out
    return tuple(t.float() for t in out)


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__}"


def check_inputs(saliency, axis_weights, mode, temporal_factor, spatial_factor,
                 tau_floor, sigma_floor, gamma_t, gamma_s, *, op: bool = False) -> None:
    """The user-facing checks of ``saliency_weights``, run by the wrapper and the fake kernel
    (direct torch.ops calls, through the compiled or the NVRTC kernels, are kept memory safe
    by prepare of csrc/saliency/saliency_torch.h).
    ``axis_weights`` may be None (the wrapper's default); ``op``: the arguments of the op
    itself, whose kernels take no float64. TypeError / ValueError naming the argument."""
    if not isinstance(saliency, torch.Tensor):
        raise TypeError(f"saliency must be a tensor, got {_describe(saliency)}")
    if axis_weights is not None:
        if not isinstance(axis_weights, torch.Tensor):
            raise TypeError(f"axis_weights must be a floating-point tensor, got {_describe(axis_weights)}")
        # Every tensor on one device (the ignored axis_weights of a fused map too): a call that
        # mixes meta with real tensors runs the fake kernel, which must refuse it.
        if axis_weights.device != saliency.device:
            raise ValueError(
                f"axis_weights must be on the device of saliency ({saliency.device}), "
                f"got {axis_weights.device}"
            )
    if saliency.dim() not in (4, 6):
        raise ValueError(
            "saliency must be per-axis gradients [A, B, T, C, H, W] or a fused map [B, T, H, W], "
            f"got shape {tuple(saliency.shape)}"
        )
    dtypes = _KERNEL_DTYPES if op else _KERNEL_DTYPES + (torch.float64,)
    if saliency.dtype not in dtypes:
        names = "float32, float16 or bfloat16" if op else "float32, float16, bfloat16 or float64"
        raise TypeError(f"saliency must be {names}, got {saliency.dtype}")
    if saliency.numel() == 0:
        raise ValueError(f"saliency must have no empty dimension, got shape {tuple(saliency.shape)}")
    if not saliency.is_contiguous():
        raise ValueError("saliency must be contiguous (call .contiguous() first)")
    if saliency.dim() == 6 and axis_weights is not None:
        if not axis_weights.is_floating_point():
            raise TypeError(f"axis_weights must be a floating-point tensor, got {_describe(axis_weights)}")
        a, b = saliency.shape[0], saliency.shape[1]
        if tuple(axis_weights.shape) not in ((a,), (b, a)):
            raise ValueError(
                f"axis_weights must have shape [A] = [{a}] or [B, A] = [{b}, {a}] for saliency of "
                f"shape {tuple(saliency.shape)}, got {tuple(axis_weights.shape)}"
            )
    if not isinstance(mode, str):
        raise TypeError(f"mode must be 'vae' or 'trilinear', got {_describe(mode)}")
    if mode not in _MODES:
        raise ValueError(f"mode must be 'vae' or 'trilinear', got {mode!r}")
    # Any factor up to 2^63 - 1: the latent grid is computed without overflow (latent_grid
    # here, ceil_div in csrc/saliency/saliency.h).
    check_int("temporal_factor", temporal_factor, 1)
    check_int("spatial_factor", spatial_factor, 1)
    for name, value in (("tau_floor", tau_floor), ("sigma_floor", sigma_floor),
                        ("gamma_t", gamma_t), ("gamma_s", gamma_s)):
        check_unit_interval(name, value)


_check_args = check_inputs  # the older name


if backend_info().name == "extension":

    @torch.library.register_fake("stream_r1_fast::" + _OP)
    def _saliency_weights_fake(saliency, axis_weights, mode, temporal_factor, spatial_factor,
                               tau_floor, sigma_floor, gamma_t, gamma_s):
        # The op's checks: a traced call fails as an eager one would, and a direct call that
        # mixes meta with real tensors (which lands here) is refused.
        check_inputs(saliency, axis_weights, mode, temporal_factor, spatial_factor, tau_floor,
                     sigma_floor, gamma_t, gamma_s, op=True)
        b, t, h, w = (saliency.shape[i] for i in ((0, 1, 2, 3) if saliency.dim() == 4 else (1, 2, 4, 5)))
        # The kernels' own sizes (ceil_div of csrc/saliency/saliency.h, exact for any factor).
        f_lat, h_lat, w_lat = latent_grid(t, h, w, temporal_factor, spatial_factor)
        weights = saliency.new_empty((b, f_lat, h_lat, w_lat), dtype=torch.float32)
        return weights, saliency.new_empty((b, f_lat), dtype=torch.float32), torch.empty_like(weights)
