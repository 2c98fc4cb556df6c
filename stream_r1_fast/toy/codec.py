"""The toy world's codec: a fixed linear causal 3-D patch codec (PCA), in place of the Wan VAE.

Why linear: at 32x32 a convolutional VAE buys little, and a linear code is exact to reason
about. A latent frame covers a causal group of video frames (frame 0 alone, then groups of 4,
like Wan's VAE) and each latent pixel a ``4 x 4`` patch of it: the group's
``4 x 4 x 4 x 3 = 192`` values are projected onto the 16 leading principal components of world
clips (frame 0 is repeated 4 times to fill its group). Decoding is the transpose projection;
a latent frame decodes on its own, so streaming decode chunk by chunk equals decoding the
whole video, with no cache at all. Latents are scaled by one global factor to unit variance
(the per-component spectrum is kept, so the coarse components dominate the diffusion loss).
32x32 video -> 16 x 8 x 8 latents, held-out PSNR ~26 dB. Why x4 and not x2 (31.8 dB): the
teacher's tokens (2x2 latent patches) then carry 64 values for a width of 128; with x2 latents
the same token count needs 4x4 patches of 256 values, more than the width, and the sampled
videos keep visible noise (the model cannot carry the noise it has to remove).

The basis is fitted by ``scripts/toy/fit_codec.py`` (closed form, from a seed) and shipped as
``weights/codec.safetensors``. Video layout follows the Wan VAE: ``[B, 3, T, H, W]`` in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

WEIGHTS = Path(__file__).parent / "weights"


class ToyCodec(nn.Module):
    """Linear causal codec: ``temporal_factor`` 4, ``spatial_factor`` s (4), ``latent_channels`` C.

    Buffers: ``basis`` [C, D] (orthonormal rows), ``mean`` [D], ``scale`` [] or [C] with
    D = 4 * s * s * 3 laid out as (frame, row, col, rgb).
    """

    temporal_factor = 4

    def __init__(self, latent_channels: int = 16, spatial_factor: int = 4):
        super().__init__()
        self.spatial_factor = spatial_factor
        d = self.temporal_factor * spatial_factor * spatial_factor * 3
        if not 1 <= latent_channels <= d:
            raise ValueError(f"latent_channels must be in [1, {d}], got {latent_channels}")
        self.register_buffer("basis", torch.eye(d)[:latent_channels].clone())
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("scale", torch.ones(()))

    @property
    def latent_channels(self) -> int:
        return self.basis.shape[0]

    # ------------------------------------------------------------------ layout

    def _groups(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] (T = 1 + 4k) -> group vectors [B, F, H/s, W/s, D]."""
        b, c, t, h, w = video.shape
        s, tf = self.spatial_factor, self.temporal_factor
        if c != 3 or (t - 1) % tf or h % s or w % s:
            raise ValueError(f"video must be [B, 3, 1 + {tf}k, H, W] with H, W multiples of {s}, got {tuple(video.shape)}")
        first = video[:, :, :1].expand(b, 3, tf, h, w)
        x = torch.cat([first, video[:, :, 1:]], dim=2)  # [B, 3, 4F, H, W]
        f = x.shape[2] // tf
        x = x.reshape(b, 3, f, tf, h // s, s, w // s, s)
        return x.permute(0, 2, 4, 6, 3, 5, 7, 1).flatten(4)

    def _ungroup(self, g: torch.Tensor, first: bool) -> torch.Tensor:
        """[B, F, h, w, D] -> video [B, 3, T, H, W]; with ``first`` the first group is frame 0
        (its 4 reconstructions averaged)."""
        b, f, h, w, _ = g.shape
        s, tf = self.spatial_factor, self.temporal_factor
        x = g.view(b, f, h, w, tf, s, s, 3).permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, 3, f, tf, h * s, w * s)
        if not first:
            return x.flatten(2, 3)
        head = x[:, :, :1].mean(dim=3)
        return torch.cat([head, x[:, :, 1:].flatten(2, 3)], dim=2)

    # ------------------------------------------------------------------ codec

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, T, H, W] in [-1, 1] -> latents [B, C, F, H/s, W/s], F = 1 + (T - 1) / 4."""
        g = self._groups(video.float())
        z = (g - self.mean) @ self.basis.T / self.scale
        return z.permute(0, 4, 1, 2, 3)

    def decode(self, latents: torch.Tensor, first: bool = True) -> torch.Tensor:
        """latents [B, C, F, h, w] -> video [B, 3, T, H, W] in [-1, 1] (clamped), float32.
        ``first``: the latents start the video (their first frame decodes to one frame)."""
        if latents.dim() != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, F, h, w], got {tuple(latents.shape)}")
        g = latents.float().permute(0, 2, 3, 4, 1) * self.scale @ self.basis + self.mean
        return self._ungroup(g, first).clamp(-1.0, 1.0)

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """Clips as the toy worlds make them, [B, T, 3, H, W] in [0, 1] -> latents (as :meth:`encode`)."""
        return self.encode(video.permute(0, 2, 1, 3, 4) * 2 - 1)

    def decode_frames(self, latents: torch.Tensor, first: bool = True) -> torch.Tensor:
        """latents -> clips in the worlds' layout, [B, T, 3, H, W] in [0, 1] (the inverse of :meth:`encode_frames`)."""
        return ((self.decode(latents, first).permute(0, 2, 1, 3, 4) + 1) / 2).clamp(0, 1)

    def round_trip(self, video: torch.Tensor) -> torch.Tensor:
        """Clips [B, T, 3, H, W] in [0, 1] through the codec and back: what a perfect generator could show."""
        return self.decode_frames(self.encode_frames(video))

    def streaming_decoder(self) -> "ToyStreamingDecoder":
        return ToyStreamingDecoder(self)

    # ------------------------------------------------------------------ fitting and files

    @classmethod
    @torch.no_grad()
    def fit(cls, videos: torch.Tensor, latent_channels: int = 16, spatial_factor: int = 4,
            per_channel: bool = False) -> "ToyCodec":
        """PCA of the group vectors of ``videos`` [N, 3, T, H, W] in [-1, 1]. ``per_channel``:
        each latent channel scaled to unit variance (as the Wan VAE's per-channel latent
        statistics do), instead of one factor for all (the spectrum kept)."""
        codec = cls(latent_channels, spatial_factor)
        g = codec._groups(videos.float()).reshape(-1, codec.mean.numel()).double()
        mean = g.mean(0)
        _, _, vh = torch.linalg.svd(g - mean, full_matrices=False)
        basis = vh[:latent_channels]
        # Fix each component's sign so the fit is reproducible across LAPACK builds.
        basis = basis * torch.sign(basis[torch.arange(latent_channels), basis.abs().argmax(1)])[:, None]
        codec.basis.copy_(basis.float())
        codec.mean.copy_(mean.float())
        z = (g - mean) @ basis.T
        if per_channel:
            codec.scale = z.std(0).float()
        else:
            codec.scale.copy_(z.std().float())
        return codec

    def save(self, path: str | Path) -> None:
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path),
                  metadata={"spatial_factor": str(self.spatial_factor)})

    @classmethod
    def from_file(cls, path: str | Path) -> "ToyCodec":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
        codec = cls(state["basis"].shape[0], int(meta.get("spatial_factor", 4)))
        codec.scale = torch.ones_like(state["scale"])  # [] (one factor) or [C] (per channel)
        codec.load_state_dict(state)
        return codec.eval()

    @classmethod
    def pretrained(cls) -> "ToyCodec":
        """The shipped codec (``weights/codec.safetensors``)."""
        return cls.from_file(WEIGHTS / "codec.safetensors")


class ToyStreamingDecoder:
    """Chunk-by-chunk decoding with :class:`ToyCodec` (the interface of
    :class:`stream_r1_fast.inference.StreamingVAEDecoder`): equals decoding the whole video."""

    def __init__(self, codec: ToyCodec):
        self.codec = codec
        self.reset()

    def reset(self) -> None:
        self.frames_decoded = 0  # latent frames so far

    @property
    def spatial_factor(self) -> int:
        return self.codec.spatial_factor

    @property
    def temporal_factor(self) -> int:
        return self.codec.temporal_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, F, h, w] -> video [B, 3, T, H, W] in [-1, 1]."""
        video = self.codec.decode(latents, first=self.frames_decoded == 0)
        self.frames_decoded += latents.shape[2]
        return video
