"""Tiny SD1.x/SD2.x/SDXL-shaped UNet configs for tests and smoke runs (CPU, well under a second per call).

They follow the same rules as real checkpoints, so they survive a round trip through the original
single-file layout (``ldm.unet_config_from_ldm``): 32 GroupNorm groups, SD1-style 8 heads with
convolutional projections, SD2-style 64-channel heads with linear projections.
"""

from __future__ import annotations

from typing import Any

TINY_FAMILIES = ("sd1", "sd2", "sdxl")
"""Families ``tiny_unet_config`` can mimic."""

SDXL_TINY_POOLED = 32
"""Width of the pooled text embedding a tiny SDXL UNet takes (SDXL: 1280, from its second text encoder)."""

SDXL_TINY_TIME_EMBED = 256
"""Sinusoidal values per size/crop id of a tiny SDXL UNet: 256, as SDXL (ComfyUI builds the size embedding at
SDXL's width whatever the model's size)."""


def tiny_unet_config(family: str = "sd1", cross_attention_dim: int = 32, sample_size: int = 8) -> dict[str, Any]:
    """A diffusers ``UNet2DConditionModel`` config with SD1.x, SD2.x or SDXL structure at toy size.

    Two levels (SD: attention at the first, none at the second, as SD's deepest level; SDXL: none at the first,
    as SDXL's shallowest level, attention two transformer layers deep at the second), one resnet per level, a
    cross-attention middle block: 4 encoder skips.

    Args:
        family: ``"sd1"`` (channels 32/64, 8 heads, convolutional projections), ``"sd2"`` (channels
            64/128, 64 channels per head, linear projections) or ``"sdxl"`` (channels 64/128, 64 channels per
            head and linear projections as SDXL, SDXL's added conditioning: a pooled text embedding of
            ``SDXL_TINY_POOLED`` values and six size/crop ids of ``SDXL_TINY_TIME_EMBED`` sinusoidal values each).
        cross_attention_dim: text-embedding width D of the (tiny) text encoder.
        sample_size: default latent size (only used by pipelines for defaults).

    Returns:
        Kwargs for ``UNet2DConditionModel(**config)``; build it under ``torch.manual_seed`` for determinism.
    """
    if family not in TINY_FAMILIES:
        raise ValueError(f"family must be one of {TINY_FAMILIES}; got {family!r}")
    if family == "sdxl":
        return {
            "sample_size": sample_size,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [64, 128],
            "layers_per_block": 1,
            "transformer_layers_per_block": [1, 2],
            "cross_attention_dim": cross_attention_dim,
            "attention_head_dim": [1, 2],
            "use_linear_projection": True,
            "norm_num_groups": 32,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": SDXL_TINY_TIME_EMBED,
            "projection_class_embeddings_input_dim": SDXL_TINY_POOLED + 6 * SDXL_TINY_TIME_EMBED,
        }
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
