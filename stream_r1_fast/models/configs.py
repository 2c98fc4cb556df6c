"""Configurations of the Wan2.1 text-to-video transformer, as keyword arguments of
:class:`~stream_r1_fast.models.CausalWanTransformer` (the keys of diffusers'
``WanTransformer3DModel`` config, so a diffusers ``config.json`` is one of these too)."""

from __future__ import annotations

_COMMON = dict(
    patch_size=(1, 2, 2),
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)

PRESETS: dict[str, dict] = {
    # Wan2.1-T2V-1.3B: 30 blocks, width 1536 = 12 heads x 128, FFN 8960.
    "wan2.1-1.3b": dict(_COMMON, num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960),
    # Wan2.1-T2V-14B: 40 blocks, width 5120 = 40 heads x 128, FFN 13824.
    "wan2.1-14b": dict(_COMMON, num_layers=40, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824),
    # For tests and smoke runs on a CPU: 2 blocks, width 128 = 2 heads x 64 (64 is the smallest
    # head dim the sink-attention kernels take), 4 latent channels, 32-d text.
    "tiny": dict(
        _COMMON,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=64,
        ffn_dim=256,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=32,
    ),
}


def preset(name: str, **overrides) -> dict:
    """A copy of the named configuration (``wan2.1-1.3b``, ``wan2.1-14b``, ``tiny``) with overrides."""
    key = name.lower()
    if key not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return {**PRESETS[key], **overrides}
