"""Original (LDM / CompVis) single-file UNet layout <-> diffusers ``UNet2DConditionModel``, offline.

A single-file SD1.x/SD2.x/SDXL checkpoint stores the UNet under ``model.diffusion_model.`` with the original
``input_blocks`` / ``middle_block`` / ``output_blocks`` names and no config. ``unet_config_from_ldm`` rebuilds
the diffusers config from tensor shapes alone; ``ldm_to_diffusers_unet`` converts keys with diffusers'
own ``convert_ldm_unet_checkpoint``; ``diffusers_to_ldm_unet`` is the inverse (for writing test models and
for handing diffusers-trained UNets to tools that expect the original layout).

The number of attention heads is not visible in the weights; real checkpoints follow a family rule:
SD 1.x (convolutional ``proj_in``) uses 8 heads everywhere, SD 2.x and SDXL (linear ``proj_in``) use 64
channels per head. SDXL is told apart by its ``label_emb`` (pooled text and size conditioning). GroupNorm
always has 32 groups in the original code, so that is what the config says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .config import SD_NORM_GROUPS

LDM_UNET_PREFIX = "model.diffusion_model."
"""Prefix of UNet tensors in a single-file Stable Diffusion checkpoint."""

SD1_NUM_HEADS = 8
"""SD 1.x: attention heads per transformer (diffusers ``attention_head_dim=8``)."""

SD2_HEAD_CHANNELS = 64
"""SD 2.x: channels per attention head (diffusers ``attention_head_dim = channels // 64`` per level)."""

SDXL_TIME_EMBED = 256
"""SDXL: sinusoidal values per size/crop id (six ids) in its added conditioning."""

LDM_NORM_GROUPS = SD_NORM_GROUPS
"""GroupNorm groups in the original UNet (``normalization()`` in ldm): Stable Diffusion's 32."""

_RESNET_RENAMES = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's pooled-text and size conditioning
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


class LdmLayoutError(ValueError):
    """The tensors do not form an SD1.x/SD2.x/SDXL-style UNet in the original layout."""


def _depth(shapes: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"transformer_blocks\.(\d+)\.")
    found = {int(m.group(1)) for key in shapes if (m := pattern.match(key))}
    return len(found)


def unet_config_from_ldm(shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """A diffusers ``UNet2DConditionModel`` config for an original-layout UNet, from tensor shapes alone.

    Args:
        shapes: tensor name (without ``model.diffusion_model.``) -> shape (a tensor or a sequence of ints).

    Returns:
        Config kwargs for ``UNet2DConditionModel.from_config`` (unlisted fields: diffusers defaults, which
        match Stable Diffusion).

    Raises:
        LdmLayoutError: naming what is missing or unsupported (class-conditioned UNets, odd layouts,
            channel counts that the family head rule cannot divide).
    """
    shapes = {key: tuple(value.shape if isinstance(value, torch.Tensor) else value) for key, value in shapes.items()}
    if "input_blocks.0.0.weight" not in shapes or "out.2.weight" not in shapes:
        raise LdmLayoutError("no input_blocks.0.0.weight / out.2.weight: not an original-layout UNet")
    added: dict[str, Any] = {}
    if any(key.startswith("label_emb.") for key in shapes):
        adm = shapes.get("label_emb.0.0.weight")
        if adm is None or "label_emb.0.2.weight" not in shapes or adm[1] <= 6 * SDXL_TIME_EMBED:
            raise LdmLayoutError(
                "the UNet has a label_emb that is not SDXL's pooled-text and size conditioning (SD2 upscaler, "
                "unCLIP or class-conditioned); only SD1.x/SD2.x/SDXL text-to-image UNets are supported"
            )
        added = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": SDXL_TIME_EMBED,
            "projection_class_embeddings_input_dim": adm[1],
        }
    indices = {int(key.split(".")[1]) for key in shapes if key.startswith("input_blocks.")}
    num_inputs = max(indices) + 1
    ops = sorted(i for i in indices if f"input_blocks.{i}.0.op.weight" in shapes)
    layers = ops[0] - 1 if ops else num_inputs - 1
    levels = len(ops) + 1
    if (
        layers < 1
        or num_inputs != 1 + levels * layers + len(ops)
        or ops != [1 + level * (layers + 1) + layers for level in range(levels - 1)]
    ):
        raise LdmLayoutError(
            f"input_blocks do not form levels of equal depth (blocks {num_inputs}, downsamplers {ops})"
        )

    def first(level: int) -> str:
        return f"input_blocks.{1 + level * (layers + 1)}."

    channels = [shapes[f"{first(level)}0.in_layers.2.weight"][0] for level in range(levels)]
    attention = [f"{first(level)}1.proj_in.weight" in shapes for level in range(levels)]
    for level in range(levels):
        up_index = (levels - 1 - level) * (layers + 1)
        if (f"output_blocks.{up_index}.1.proj_in.weight" in shapes) != attention[level]:
            raise LdmLayoutError(f"output block {up_index} does not mirror input level {level} (attention differs)")
    if added and attention[0]:
        raise LdmLayoutError(
            "the UNet has a label_emb and attention at its first level: an SD 2.x unCLIP UNet, not SDXL (whose "
            "first level has no attention); only SD1.x/SD2.x/SDXL text-to-image UNets are supported"
        )
    if "middle_block.1.proj_in.weight" not in shapes:
        raise LdmLayoutError(
            "the middle block has no attention; SD1.x/SD2.x/SDXL UNets have a cross-attention middle block"
        )
    proj_in = shapes["middle_block.1.proj_in.weight"]
    linear = len(proj_in) == 2
    context = shapes["middle_block.1.transformer_blocks.0.attn2.to_k.weight"][1]
    mid_depth = _depth(shapes, "middle_block.1.")
    depths = [_depth(shapes, f"{first(level)}1.") if attention[level] else 1 for level in range(levels)]
    if not attention[-1]:
        depths[-1] = mid_depth  # diffusers takes the middle block's depth from the last level
    elif depths[-1] != mid_depth:
        raise LdmLayoutError(f"the deepest level has {depths[-1]} transformer layers but the middle block {mid_depth}")

    if linear:
        bad = [c for c in channels if c % SD2_HEAD_CHANNELS]
        if bad:
            raise LdmLayoutError(
                f"linear attention projections mean SD2-style heads of {SD2_HEAD_CHANNELS} channels, "
                "but channel counts "
                f"{bad} are not multiples of {SD2_HEAD_CHANNELS}"
            )
        heads: int | list[int] = [c // SD2_HEAD_CHANNELS for c in channels]
    else:
        bad = [c for c, a in zip(channels, attention) if a and c % SD1_NUM_HEADS]
        if bad or channels[-1] % SD1_NUM_HEADS:
            raise LdmLayoutError(f"SD1-style attention uses {SD1_NUM_HEADS} heads; channels {channels} do not divide")
        heads = SD1_NUM_HEADS
    if any(c % LDM_NORM_GROUPS for c in channels):
        raise LdmLayoutError(f"channels {channels} are not multiples of the {LDM_NORM_GROUPS} GroupNorm groups")

    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)]
    return {
        "sample_size": 128 if added else 64,  # latent side: SDXL 1024 px, SD 512 px
        "in_channels": shapes["input_blocks.0.0.weight"][1],
        "out_channels": shapes["out.2.weight"][0],
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": channels,
        "layers_per_block": layers,
        "cross_attention_dim": context,
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "transformer_layers_per_block": depths[0] if len(set(depths)) == 1 else depths,
        "norm_num_groups": LDM_NORM_GROUPS,
        **added,
    }


def ldm_to_diffusers_unet(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename original-layout UNet tensors to diffusers names (diffusers' ``convert_ldm_unet_checkpoint``).

    Args:
        state_dict: a whole checkpoint (only ``model.diffusion_model.*`` is used) or UNet tensors without prefix.
        config: the diffusers UNet config (``unet_config_from_ldm``).
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    if any(key.startswith(LDM_UNET_PREFIX) for key in state_dict):
        prefixed = {key: value for key, value in state_dict.items() if key.startswith(LDM_UNET_PREFIX)}
    else:
        prefixed = {LDM_UNET_PREFIX + key: value for key, value in state_dict.items()}
    return convert_ldm_unet_checkpoint(prefixed, dict(config))


def _resnet(suffix: str) -> str:
    head, _, rest = suffix.partition(".")
    for new, old in _RESNET_RENAMES:
        if head == new:
            return f"{old}.{rest}"
    raise LdmLayoutError(f"unknown resnet tensor {suffix!r}")


def diffusers_to_ldm_unet(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``UNet2DConditionModel`` state dict to the original layout (no prefix).

    Args:
        state_dict: ``unet.state_dict()`` of an SD1.x/SD2.x/SDXL-style UNet (cross-attention middle block).
        config: its config (``layers_per_block`` and ``up_block_types`` are used).

    Returns:
        Tensors under original names (``input_blocks.1.0.in_layers.0.weight`` ...); prefix them with
        ``LDM_UNET_PREFIX`` to write a single-file checkpoint.
    """
    layers = config["layers_per_block"]
    up_has_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        base = ".".join(parts[:-1])
        if base in _TOP_LEVEL:
            out[f"{_TOP_LEVEL[base]}.{parts[-1]}"] = value
            continue
        match = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
        if match:
            side, level, kind, index, rest = match.groups()
            level, index = int(level), int(index)
            if side == "down":
                block = 1 + level * (layers + 1) + (layers if kind == "downsamplers" else index)
                prefix = f"input_blocks.{block}"
            else:
                block = level * (layers + 1) + (layers if kind == "upsamplers" else index)
                prefix = f"output_blocks.{block}"
            if kind == "resnets":
                out[f"{prefix}.0.{_resnet(rest)}"] = value
            elif kind == "attentions":
                out[f"{prefix}.1.{rest}"] = value
            elif kind == "downsamplers":
                out[f"{prefix}.0.op.{rest.removeprefix('conv.')}"] = value
            else:
                out[f"{prefix}.{2 if up_has_attention[level] else 1}.{rest}"] = value
            continue
        match = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
        if match:
            kind, index, rest = match.groups()
            if kind == "resnets":
                out[f"middle_block.{2 * int(index)}.{_resnet(rest)}"] = value
            else:
                out[f"middle_block.1.{rest}"] = value
            continue
        raise LdmLayoutError(f"no original-layout name for diffusers tensor {key!r}")
    return out
