"""Chunk-by-chunk decoding with the Wan VAE (diffusers' ``AutoencoderKLWan``).

The Wan decoder is causal in time and already decodes one latent frame at a time, carrying
the last frames of every causal convolution in a feature cache. Keeping that cache across
calls (instead of clearing it per call, as ``AutoencoderKLWan.decode`` does) decodes a stream
chunk by chunk with exactly the result of decoding the whole video at once, at constant
memory: latent frame 0 gives 1 video frame, every later latent frame 4 (the temporal factor).
"""

from __future__ import annotations

import torch

# (temporal, spatial) compression of Wan2.1's VAE: what sizes are computed with when no VAE
# is loaded (a latent-only run).
WAN_VAE_FACTORS = (4, 8)


def wan_vae_factors(temperal_downsample, dim_mult) -> tuple[int, int]:
    """(temporal, spatial) compression of a Wan VAE from its config's lists (diffusers' names):
    ``temperal_downsample`` has one flag per downsampling stage (True: the stage halves time),
    ``dim_mult`` one entry per resolution level (every level after the first halves space)."""
    return 2 ** sum(bool(d) for d in temperal_downsample), 2 ** (len(dim_mult) - 1)


def codec_factors(vae) -> tuple[int, int]:
    """(temporal, spatial) compression of ``vae``: a codec that states them (``temporal_factor``
    / ``spatial_factor`` attributes: :class:`StreamingVAEDecoder`, the toy world's codec), a
    diffusers ``AutoencoderKLWan`` (read from its config), or None (Wan's, ``WAN_VAE_FACTORS``)."""
    if vae is None:
        return WAN_VAE_FACTORS
    if hasattr(vae, "temporal_factor") and hasattr(vae, "spatial_factor"):
        return int(vae.temporal_factor), int(vae.spatial_factor)
    return wan_vae_factors(vae.config.temperal_downsample, vae.config.dim_mult)


class StreamingVAEDecoder:
    """Decode latent chunks of one batch of streams in order; :meth:`reset` for a new video.

    Latents are in the generator's normalised space; they are mapped back with the VAE's
    ``latents_mean`` / ``latents_std`` before decoding.
    """

    def __init__(self, vae):
        self.vae = vae
        cfg = vae.config
        self._mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._num_convs = sum(type(m).__name__ == "WanCausalConv3d" for m in vae.decoder.modules())
        self.temporal_factor, self.spatial_factor = codec_factors(vae)
        self.reset()

    def reset(self) -> None:
        self._feat_cache: list[torch.Tensor | None] = [None] * self._num_convs
        self.frames_decoded = 0  # latent frames so far

    def video_frames(self, latent_frames: int, first: bool) -> int:
        """Video frames decoded from ``latent_frames`` (the stream's first latent frame gives 1)."""
        return self.temporal_factor * latent_frames - (self.temporal_factor - 1 if first else 0)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, z, F, h, w] (normalised) -> video [B, 3, T, H, W] in [-1, 1], float32."""
        vae = self.vae
        param = next(vae.parameters())
        if self._mean.device != latents.device:  # moved once, then resident on the latents' device
            self._mean, self._std = self._mean.to(latents.device), self._std.to(latents.device)
        z = latents.float() * self._std + self._mean
        x = vae.post_quant_conv(z.to(param.dtype))  # 1x1x1: no temporal context needed
        out = []
        for i in range(x.shape[2]):
            out.append(
                vae.decoder(
                    x[:, :, i : i + 1],
                    feat_cache=self._feat_cache,
                    feat_idx=[0],
                    first_chunk=self.frames_decoded == 0,
                )
            )
            self.frames_decoded += 1
        video = torch.cat(out, dim=2)
        if vae.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            video = unpatchify(video, patch_size=vae.config.patch_size)
        return video.float().clamp(-1.0, 1.0)


def to_uint8_video(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> uint8 [B, T, H, W, 3] on the video's device."""
    v = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(0, 2, 3, 4, 1)


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> uint8 [B, T, H, W, 3] on the CPU (what writers take);
    blocking. :class:`~stream_r1_fast.inference.host_frames.HostFrames` is the asynchronous
    form the pipeline uses."""
    return to_uint8_video(video).cpu()
