"""Tiny SD1.x/SD2.x-shaped UNet configs for tests and smoke runs (CPU, well under a second per call).

They follow the same rules as real checkpoints, so they survive a round trip through the original
single-file layout (``ldm.unet_config_from_ldm``): 32 GroupNorm groups, SD1-style 8 heads with
convolutional projections, SD2-style 64-channel heads with linear projections.
"""

from __future__ import annotations

from typing import Any

TINY_FAMILIES = ("sd1", "sd2")
"""Families ``tiny_unet_config`` can mimic."""


def tiny_unet_config(family: str = "sd1", cross_attention_dim: int = 32, sample_size: int = 8) -> dict[str, Any]:
    """A diffusers ``UNet2DConditionModel`` config with SD1.x or SD2.x structure at toy size.

    Two levels (attention at the first, none at the second, as SD's deepest level), one resnet per level,
    a cross-attention middle block: 4 encoder skips.

    Args:
        family: ``"sd1"`` (channels 32/64, 8 heads, convolutional projections) or ``"sd2"`` (channels
            64/128, 64 channels per head, linear projections).
        cross_attention_dim: text-embedding width D of the (tiny) text encoder.
        sample_size: default latent size (only used by pipelines for defaults).

    Returns:
        Kwargs for ``UNet2DConditionModel(**config)``; build it under ``torch.manual_seed`` for determinism.
    """
    if family not in TINY_FAMILIES:
        raise ValueError(f"family must be one of {TINY_FAMILIES}; got {family!r}")
    sd2 = family == "sd2"
    channels = [64, 128] if sd2 else [32, 64]
    return {
        "sample_size": sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": channels,
        "layers_per_block": 1,
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": [c // 64 for c in channels] if sd2 else 8,
        "use_linear_projection": sd2,
        "norm_num_groups": 32,
    }
