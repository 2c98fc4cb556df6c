"""The Wan VAE (diffusers' ``AutoencoderKLWan``) from a diffusers ``vae/`` folder or from the
original ``Wan2.1_VAE.pth`` (:func:`load_vae`); the latter's config is read off its shapes
(:func:`vae_config_from_original`: diffusers has no such reader, its single-file loader takes
the config from the Hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from stream_r1_fast.models.quiet import quiet_loading
from stream_r1_fast.models.weight_files import CheckpointError, check_state_dict, read_weights_file


def vae_config_from_original(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """An ``AutoencoderKLWan`` config read off an original-layout Wan VAE state dict
    (``encoder.downsamples.N...``, ``decoder.upsamples.N...``). The latent statistics are not in
    the weights: they are Wan 2.1's (``AutoencoderKLWan``'s defaults), for its 16 channels."""
    import inspect

    from diffusers import AutoencoderKLWan

    sd = state_dict
    try:
        base, z_dim = sd["encoder.conv1.weight"].shape[0], sd["conv2.weight"].shape[0]
        idx = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.downsamples.")})
        resamples = [i for i in idx if f"encoder.downsamples.{i}.resample.1.weight" in sd]
        levels = len(resamples) + 1
        per_level, rest = divmod(len(idx) - len(resamples), levels)
        if rest or per_level < 1:
            raise ValueError(f"{len(idx) - len(resamples)} residual blocks do not split into {levels} levels")
        dim_mult = [sd[f"encoder.downsamples.{lvl * (per_level + 1)}.residual.6.weight"].shape[0] // base
                    for lvl in range(levels)]
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"not an original-layout Wan VAE state dict ({type(exc).__name__}: {exc})") from None
    if any(".to_qkv." in k for k in sd if k.startswith("encoder.downsamples.")):
        raise CheckpointError("a Wan VAE with attention in its down blocks (attn_scales) is not supported")
    if (levels, per_level) != (4, 2):
        # diffusers' converter (convert_wan_vae_to_diffusers) knows the decoder of Wan 2.1's VAE only
        raise CheckpointError(
            f"a Wan VAE of {levels} levels of {per_level} residual blocks: only Wan 2.1's structure "
            "(4 levels of 2) converts from the original layout"
        )
    params = inspect.signature(AutoencoderKLWan.__init__).parameters
    mean, std = params["latents_mean"].default, params["latents_std"].default
    if z_dim != len(mean):
        raise CheckpointError(
            f"a Wan VAE of {z_dim} latent channels: its latent statistics are known only for Wan 2.1's {len(mean)}"
        )
    return dict(
        base_dim=base, z_dim=z_dim, dim_mult=dim_mult, num_res_blocks=per_level, attn_scales=[],
        temperal_downsample=[f"encoder.downsamples.{i}.time_conv.weight" in sd for i in resamples],
        latents_mean=list(mean), latents_std=list(std),
    )


def load_vae(path: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
    """The Wan VAE (diffusers' ``AutoencoderKLWan``) from a diffusers ``vae/`` folder, or from
    the original ``Wan2.1_VAE.pth`` (keys renamed by diffusers'
    ``single_file_utils.convert_wan_vae_to_diffusers``, the config read off the shapes)."""
    from diffusers import AutoencoderKLWan

    path = Path(path)
    if path.is_dir():
        with quiet_loading():
            return AutoencoderKLWan.from_pretrained(str(path), torch_dtype=dtype).to(device).eval()
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    sd = read_weights_file(path)
    if "decoder.middle.0.residual.0.gamma" not in sd:
        raise CheckpointError(f"{path}: not an original-layout Wan VAE (no decoder.middle.0.residual.0.gamma)")
    try:
        cfg = vae_config_from_original(sd)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    sd = convert_wan_vae_to_diffusers(sd)
    with quiet_loading(), torch.device("meta"):
        vae = AutoencoderKLWan(**cfg)
    check_state_dict(vae, sd, source=str(path))
    vae.load_state_dict(sd, strict=True, assign=True)
    return vae.to(device=device, dtype=dtype).eval()


__all__ = ["load_vae", "vae_config_from_original"]
