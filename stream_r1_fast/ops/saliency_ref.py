"""PyTorch definition of ``saliency_weights`` (Stream-R1's Intra-Perplexity weights,
arXiv 2605.03849; docs/method.md, section 5, "Intra-Perplexity saliency weights").

From per-axis reward gradients w.r.t. pixels g[A, B, T, C, H, W]:
1. saliency per axis ``S_m = ||g_m||_2`` over the colour channels, fused
   ``S = sum_m w_m S_m`` with axis weights w [A] or [B, A];
2. mapped to the latent grid [F, h, w], F = 1 + ceil((T-1)/tf), h = ceil(H/sf),
   w = ceil(W/sf): ``vae`` averages over the VAE's causal groups (frame 0 alone, then groups
   of tf frames; sf x sf pixels; partial groups at the edges average what they hold), or
   ``trilinear`` resamples (``F.interpolate``, align_corners=False);
3. temporal ``p_f = mean_{h,w} L[f]``, min-max normalised over f, mixed with uniform by the
   strength, ``(1-gamma_t) + gamma_t*p_hat``, THEN floored, ``tau = max(that, tau_floor)``
   (Stream-R1's order: mix, then floor), divided by its mean over f;
4. spatial per frame: min-max over (h, w), mixed with ``gamma_s``, then floored,
   ``sigma = max((1-gamma_s) + gamma_s*S_hat, sigma_floor)``, divided by its mean over (h, w);
5. ``W = tau_f * sigma_f[h, w]``, divided by its mean over (F, h, w).

A min-max over a constant yields 1 everywhere, so constant or zero saliency and one-frame
videos give uniform weights, never NaN. "Constant" means a range that is not finite or at most
``RANGE_RTOL`` times the largest magnitude: pooling a constant map leaves float rounding
differences between cells (partial blocks average fewer entries), and a min-max must not
stretch that noise to [0, 1]. All math in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Relative range below which a min-max counts as constant (csrc/saliency/saliency.h: kRangeRtol).
RANGE_RTOL = 1e-4


def latent_grid(t: int, h: int, w: int, temporal_factor: int, spatial_factor: int) -> tuple[int, int, int]:
    """Latent grid (F, h, w) of a T x H x W video under the VAE's causal compression."""
    # Integer ceilings: exact for any size, and traceable with symbolic sizes.
    return (
        1 + (t - 1 + temporal_factor - 1) // temporal_factor,
        (h + spatial_factor - 1) // spatial_factor,
        (w + spatial_factor - 1) // spatial_factor,
    )


def fuse_saliency(saliency: torch.Tensor, axis_weights: torch.Tensor) -> torch.Tensor:
    """[A, B, T, C, H, W] gradients (or a [B, T, H, W] map) -> fused map [B, T, H, W]."""
    cd = torch.float64 if saliency.dtype == torch.float64 else torch.float32
    if saliency.dim() == 4:
        return saliency.to(cd)
    norms = torch.linalg.vector_norm(saliency.to(cd), dim=3)  # [A, B, T, H, W]
    w = axis_weights.to(cd)
    w = w[:, None] if w.dim() == 1 else w.transpose(0, 1)  # [A, B] / [A, 1]
    return (w[:, :, None, None, None] * norms).sum(0)


def to_latent_grid(
    s: torch.Tensor, mode: str, temporal_factor: int, spatial_factor: int
) -> torch.Tensor:
    """[B, T, H, W] -> [B, F, h, w]."""
    b, t, h, w = s.shape
    size = latent_grid(t, h, w, temporal_factor, spatial_factor)
    if mode == "trilinear":
        return F.interpolate(s[:, None], size=size, mode="trilinear", align_corners=False)[:, 0]
    if mode != "vae":
        raise ValueError(f"mode must be 'vae' or 'trilinear', got {mode!r}")
    # Frame 0 alone, then groups of temporal_factor: pad the front so that frame 0 fills a
    # group by itself, and divide by the count of real entries per cell.
    # A factor beyond the input's extent groups what a factor of that extent groups (one
    # temporal group after frame 0; one cell per row / column): clamped, the padding stays
    # the input's size for any factor up to 2^63 - 1.
    tf, sf = min(temporal_factor, max(t - 1, 1)), min(spatial_factor, max(h, w))
    f_lat, h_lat, w_lat = size
    padded = s.new_zeros(b, 1 + (f_lat - 1) * tf, h_lat * sf, w_lat * sf)
    count = s.new_zeros(1, *padded.shape[1:])
    padded[:, :1, :h, :w] = s[:, :1]
    padded[:, 1 : t, :h, :w] = s[:, 1:]
    count[:, :t, :h, :w] = 1
    def pool(x: torch.Tensor) -> torch.Tensor:
        first = x[:, :1].reshape(x.shape[0], 1, h_lat, sf, w_lat, sf).sum((3, 5))
        rest = x[:, 1:].reshape(x.shape[0], f_lat - 1, tf, h_lat, sf, w_lat, sf).sum((2, 4, 6))
        return torch.cat([first, rest], dim=1)
    return pool(padded) / pool(count)


def _minmax_mix_floor(x: torch.Tensor, dims: tuple[int, ...], floor: float, gamma: float) -> torch.Tensor:
    """Min-max over ``dims``, strength mix ``(1 - gamma) + gamma * hat``, then the floor, then
    division by the mean (csrc/saliency/saliency.h: minmax_mix)."""
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    rng = hi - lo
    ok = torch.isfinite(rng) & (rng > RANGE_RTOL * torch.maximum(lo.abs(), hi.abs()))
    hat = torch.where(ok, (x - lo) / torch.where(ok, rng, torch.ones_like(rng)), torch.ones_like(x))
    mixed = ((1.0 - gamma) + gamma * hat).clamp_min(floor)
    return mixed / mixed.mean(dim=dims, keepdim=True)


def saliency_weights_ref(
    saliency: torch.Tensor,
    axis_weights: torch.Tensor,
    mode: str = "vae",
    temporal_factor: int = 4,
    spatial_factor: int = 8,
    tau_floor: float = 0.2,
    sigma_floor: float = 0.15,
    gamma_t: float = 1.0,
    gamma_s: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference. Returns (weights [B, F, h, w], tau [B, F], sigma [B, F, h, w]), float32
    (float64 for float64 input)."""
    fused = fuse_saliency(saliency, axis_weights)
    lat = to_latent_grid(fused, mode, temporal_factor, spatial_factor)
    tau = _minmax_mix_floor(lat.mean(dim=(2, 3)), (1,), tau_floor, gamma_t)
    sigma = _minmax_mix_floor(lat, (2, 3), sigma_floor, gamma_s)
    weights = tau[:, :, None, None] * sigma
    weights = weights / weights.mean(dim=(1, 2, 3), keepdim=True)
    return weights, tau, sigma
