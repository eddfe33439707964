"""An adaptor file in ComfyUI's ``cldm`` layout: the ``ControlNet`` constructor arguments and tensor names.

ComfyUI runs ControlNets with ``comfy.cldm.cldm.ControlNet`` (original ControlNet layout: ``input_blocks``,
``middle_block``, ``input_hint_block``, ``zero_convs``, ``middle_block_out``). A SPIRE adaptor file stores a
diffusers ``ControlNetModel`` trunk whose config is in the file's metadata, so both the constructor
arguments and the key names can be derived for *any* UNet shape (tiny test models included) without
ComfyUI's shape-based detection, which only knows released checkpoints. Nothing here imports ComfyUI.

Modulation heads keep their file names (``spire_gamma_down.{j}.weight`` ...): the ComfyUI module carries
attributes of the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .config import ADDED_CONDITIONING, HEAD_PREFIX, HINT_ENCODER_CHANNELS, SD_NORM_GROUPS, AdaptorConfig
from .ldm import diffusers_to_ldm_unet

_REQUIRED = {
    "norm_num_groups": SD_NORM_GROUPS,
    "act_fn": "silu",
    "resnet_time_scale_shift": "default",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "class_embed_type": None,
    "global_pool_conditions": False,
}
_CROSS_ATTENTION_DOWN = "CrossAttnDownBlock2D"
_PLAIN_DOWN = "DownBlock2D"
_CROSS_ATTENTION_MID = "UNetMidBlock2DCrossAttn"


class ComfyLayoutError(ValueError):
    """The adaptor's trunk has a structure ComfyUI's ``cldm.ControlNet`` cannot express."""


def _per_level(value: Any, levels: int) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def cldm_kwargs(config: AdaptorConfig) -> dict[str, Any]:
    """Keyword arguments for ``comfy.cldm.cldm.ControlNet`` that build this adaptor's trunk.

    Args:
        config: the adaptor's config (its ``controlnet_config`` is a diffusers ``ControlNetModel`` config).

    Returns:
        JSON-like kwargs (``model_channels``, ``channel_mult``, ``num_res_blocks``, ``transformer_depth`` per
        encoder resnet, ``transformer_depth_middle``, ``num_heads``/``num_head_channels``, ``context_dim``,
        ``use_linear_in_transformer``, ``hint_channels``, for SDXL-family trunks ``adm_in_channels`` with
        ``num_classes="sequential"``, ...) plus ``upcast_attention`` (bool; the caller
        maps it to ComfyUI's ``attn_precision``). The caller adds ``dtype``, ``device`` and ``operations``.

    Raises:
        ComfyLayoutError: for settings ComfyUI's ControlNet cannot mirror (naming the setting).
    """
    cn = config.controlnet_config
    bad = [f"{key}={cn[key]!r} (needs {want!r})" for key, want in _REQUIRED.items() if key in cn and cn[key] != want]
    if list(cn.get("conditioning_embedding_out_channels", HINT_ENCODER_CHANNELS)) != list(HINT_ENCODER_CHANNELS):
        bad.append(
            f"conditioning_embedding_out_channels={cn['conditioning_embedding_out_channels']} "
            f"(needs {list(HINT_ENCODER_CHANNELS)})"
        )
    if cn.get("mid_block_type", _CROSS_ATTENTION_MID) != _CROSS_ATTENTION_MID:
        bad.append(f"mid_block_type={cn['mid_block_type']!r} (needs {_CROSS_ATTENTION_MID!r})")
    if cn.get("addition_embed_type") not in (None, ADDED_CONDITIONING):
        bad.append(f"addition_embed_type={cn['addition_embed_type']!r} (needs None or {ADDED_CONDITIONING!r})")
    if not isinstance(cn.get("cross_attention_dim"), int):
        bad.append(f"cross_attention_dim={cn.get('cross_attention_dim')!r} (needs one integer)")
    channels = list(cn["block_out_channels"])
    levels = len(channels)
    types = list(cn["down_block_types"])
    unknown = [t for t in types if t not in (_CROSS_ATTENTION_DOWN, _PLAIN_DOWN)]
    if unknown:
        bad.append(f"down_block_types {unknown} (needs {_CROSS_ATTENTION_DOWN} or {_PLAIN_DOWN})")
    if any(c % channels[0] for c in channels):
        bad.append(f"block_out_channels={channels} (each must be a multiple of the first)")
    layers = cn["layers_per_block"]
    if not isinstance(layers, int):
        bad.append(f"layers_per_block={layers!r} (needs one integer)")
    # diffusers quirk: ``attention_head_dim`` is the number of heads unless num_attention_heads is given
    heads = _per_level(cn.get("num_attention_heads") or cn.get("attention_head_dim") or 8, levels)
    depth = _per_level(cn.get("transformer_layers_per_block", 1), levels)
    if any(not isinstance(d, int) for d in depth):
        bad.append(f"transformer_layers_per_block={depth!r} (needs one integer per level)")
    if bad:
        raise ComfyLayoutError(
            "this adaptor's trunk cannot be built as a ComfyUI ControlNet: "
            + "; ".join(bad)
            + ". SPIRE adaptors are made for SD1.x/SD2.x/SDXL-style UNets."
        )
    num_heads, head_channels = -1, -1
    if len(set(heads)) == 1:
        num_heads = heads[0]
    elif len({c // h for c, h in zip(channels, heads)}) == 1 and all(c % h == 0 for c, h in zip(channels, heads)):
        head_channels = channels[0] // heads[0]
    else:
        raise ComfyLayoutError(
            f"this adaptor's trunk has attention heads {heads} for channels {channels}: ComfyUI needs either the "
            "same number of heads or the same channels per head at every level"
        )
    only_cross = _per_level(cn.get("only_cross_attention", False), levels)
    return {
        "image_size": 32,  # unused by the model; ComfyUI's constructor requires it
        "in_channels": cn["in_channels"],
        "model_channels": channels[0],
        "hint_channels": cn.get("conditioning_channels", config.hint_channels),
        "num_res_blocks": [layers] * levels,
        "channel_mult": [c // channels[0] for c in channels],
        "transformer_depth": [
            d if t == _CROSS_ATTENTION_DOWN else 0 for t, d in zip(types, depth) for _ in range(layers)
        ],
        "transformer_depth_middle": depth[-1],
        "num_heads": num_heads,
        "num_head_channels": head_channels,
        "context_dim": cn["cross_attention_dim"],
        "use_linear_in_transformer": bool(cn.get("use_linear_projection", False)),
        "disable_self_attentions": [bool(x) for x in only_cross] if any(only_cross) else None,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": cn["projection_class_embeddings_input_dim"] if config.added_conditioning else None,
        "num_classes": "sequential" if config.added_conditioning else None,
        "upcast_attention": bool(cn.get("upcast_attention", False)),
    }


def level_heads(kwargs: Mapping[str, Any]) -> list[int]:
    """Attention heads per level implied by ``num_heads``/``num_head_channels`` of a ComfyUI UNet or ControlNet
    config (for comparing an adaptor with a base model)."""
    channels = [m * kwargs["model_channels"] for m in kwargs["channel_mult"]]
    if kwargs.get("num_head_channels", -1) not in (-1, None):
        return [c // kwargs["num_head_channels"] for c in channels]
    return [kwargs["num_heads"]] * len(channels)


def to_cldm_state_dict(state: Mapping[str, torch.Tensor], config: AdaptorConfig) -> dict[str, torch.Tensor]:
    """Rename an adaptor file's tensors (diffusers ``ControlNetModel`` names + ``spire_*`` heads) to the
    names of a ``comfy.cldm.cldm.ControlNet`` carrying the heads as attributes of the same name.

    Args:
        state: the file's tensors (``checkpoint.read_adaptor_file``).
        config: its config.

    Returns:
        A new dict; tensors are not copied.
    """
    out: dict[str, torch.Tensor] = {}
    trunk: dict[str, torch.Tensor] = {}
    hint_blocks = 1 + max(
        (int(k.split(".")[2]) + 1 for k in state if k.startswith("controlnet_cond_embedding.blocks.")), default=0
    )
    for key, value in state.items():
        if key.startswith(HEAD_PREFIX):
            out[key] = value
        elif key.startswith("controlnet_cond_embedding."):
            name, _, rest = key[len("controlnet_cond_embedding.") :].rpartition(".")
            if name == "conv_in":
                index = 0
            elif name == "conv_out":
                index = hint_blocks
            else:
                index = int(name.split(".")[1]) + 1
            out[f"input_hint_block.{2 * index}.{rest}"] = value
        elif key.startswith("controlnet_down_blocks."):
            _, index, rest = key.split(".", 2)
            out[f"zero_convs.{index}.0.{rest}"] = value
        elif key.startswith("controlnet_mid_block."):
            out[f"middle_block_out.0.{key.rsplit('.', 1)[1]}"] = value
        else:
            trunk[key] = value
    layout = {"layers_per_block": config.controlnet_config["layers_per_block"], "up_block_types": []}
    out.update(diffusers_to_ldm_unet(trunk, layout))
    return out
