"""The tensor names and shapes of a SPIRE adaptor file, from its config alone (no diffusers, no model built).

An adaptor file holds a diffusers ``ControlNetModel`` trunk under that class's own parameter names, the
``spire_`` modulation heads and, in format 2, the numeric side channel (``checkpoint.py``). Validating a
file's header needs the names and shapes its metadata implies. Building the diffusers model (even on the
meta device) would import diffusers, which ComfyUI does not ship; so the layout is written out here from
the architecture's arithmetic, for the SD1.x/SD2.x/SDXL-style trunks ``config.check_unet_supported`` admits,
and a test pins it, key for key and shape for shape, to the model diffusers builds.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import ADDED_CONDITIONING, HEAD_PREFIX, NUMERIC_NAME, AdaptorConfig

Shapes = dict[str, tuple[int, ...]]

_CONTROLNET_OUTPUTS = ("controlnet_down_blocks.", "controlnet_mid_block.")


def _with_bias(shapes: Shapes, name: str, weight: tuple[int, ...]) -> None:
    shapes[f"{name}.weight"] = weight
    shapes[f"{name}.bias"] = (weight[0],)


def _norm(shapes: Shapes, name: str, channels: int) -> None:
    _with_bias(shapes, name, (channels,))


def _resnet(shapes: Shapes, name: str, c_in: int, c_out: int, time_dim: int, scale_shift: bool) -> None:
    _norm(shapes, f"{name}.norm1", c_in)
    _with_bias(shapes, f"{name}.conv1", (c_out, c_in, 3, 3))
    _with_bias(shapes, f"{name}.time_emb_proj", (2 * c_out if scale_shift else c_out, time_dim))
    _norm(shapes, f"{name}.norm2", c_out)
    _with_bias(shapes, f"{name}.conv2", (c_out, c_out, 3, 3))
    if c_in != c_out:
        _with_bias(shapes, f"{name}.conv_shortcut", (c_out, c_in, 1, 1))


def _transformer(shapes: Shapes, name: str, c: int, depth: int, context: int, linear: bool, only_cross: bool) -> None:
    projection = (c, c) if linear else (c, c, 1, 1)
    _norm(shapes, f"{name}.norm", c)
    _with_bias(shapes, f"{name}.proj_in", projection)
    for k in range(depth):
        block = f"{name}.transformer_blocks.{k}"
        for attention, keys in (("attn1", context if only_cross else c), ("attn2", context)):
            shapes[f"{block}.{attention}.to_q.weight"] = (c, c)
            shapes[f"{block}.{attention}.to_k.weight"] = (c, keys)
            shapes[f"{block}.{attention}.to_v.weight"] = (c, keys)
            _with_bias(shapes, f"{block}.{attention}.to_out.0", (c, c))
        for norm in ("norm1", "norm2", "norm3"):
            _norm(shapes, f"{block}.{norm}", c)
        _with_bias(shapes, f"{block}.ff.net.0.proj", (8 * c, c))  # GEGLU: value and gate of 4c each
        _with_bias(shapes, f"{block}.ff.net.2", (c, 4 * c))
    _with_bias(shapes, f"{name}.proj_out", projection)


def _per_block(value: Any, blocks: int) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * blocks


def trunk_file_shapes(controlnet_config: dict[str, Any]) -> tuple[Shapes, list[int]]:
    """The ``ControlNetModel`` parameters for ``controlnet_config`` (name -> shape), and the channels of the
    encoder skips it outputs, in order (the 1x1 ``controlnet_down_blocks``; the middle block comes after)."""
    channels = list(controlnet_config["block_out_channels"])
    blocks = len(channels)
    layers = _per_block(controlnet_config["layers_per_block"], blocks)
    depths = _per_block(controlnet_config.get("transformer_layers_per_block", 1), blocks)
    only_cross = _per_block(controlnet_config.get("only_cross_attention", False), blocks)
    context = controlnet_config["cross_attention_dim"]
    linear = bool(controlnet_config.get("use_linear_projection", False))
    scale_shift = controlnet_config.get("resnet_time_scale_shift", "default") == "scale_shift"
    time_dim = 4 * channels[0]
    shapes: Shapes = {}
    _with_bias(shapes, "conv_in", (channels[0], controlnet_config["in_channels"], 3, 3))
    _with_bias(shapes, "time_embedding.linear_1", (time_dim, channels[0]))
    _with_bias(shapes, "time_embedding.linear_2", (time_dim, time_dim))
    if controlnet_config.get("addition_embed_type") == ADDED_CONDITIONING:  # SDXL: pooled text + size ids
        _with_bias(
            shapes, "add_embedding.linear_1", (time_dim, controlnet_config["projection_class_embeddings_input_dim"])
        )
        _with_bias(shapes, "add_embedding.linear_2", (time_dim, time_dim))
    hint = list(controlnet_config["conditioning_embedding_out_channels"])
    _with_bias(shapes, "controlnet_cond_embedding.conv_in", (hint[0], controlnet_config["conditioning_channels"], 3, 3))
    for i in range(len(hint) - 1):
        _with_bias(shapes, f"controlnet_cond_embedding.blocks.{2 * i}", (hint[i], hint[i], 3, 3))
        _with_bias(shapes, f"controlnet_cond_embedding.blocks.{2 * i + 1}", (hint[i + 1], hint[i], 3, 3))
    _with_bias(shapes, "controlnet_cond_embedding.conv_out", (channels[0], hint[-1], 3, 3))
    skips = [channels[0]]  # conv_in's output is the first skip
    c_in = channels[0]
    for i, (block_type, c_out) in enumerate(zip(controlnet_config["down_block_types"], channels)):
        for j in range(layers[i]):
            _resnet(shapes, f"down_blocks.{i}.resnets.{j}", c_in if j == 0 else c_out, c_out, time_dim, scale_shift)
            if block_type.startswith("CrossAttn"):
                name = f"down_blocks.{i}.attentions.{j}"
                _transformer(shapes, name, c_out, depths[i], context, linear, only_cross[i])
            skips.append(c_out)
        if i < blocks - 1:
            _with_bias(shapes, f"down_blocks.{i}.downsamplers.0.conv", (c_out, c_out, 3, 3))
            skips.append(c_out)
        c_in = c_out
    middle = channels[-1]
    _resnet(shapes, "mid_block.resnets.0", middle, middle, time_dim, scale_shift)
    _transformer(shapes, "mid_block.attentions.0", middle, depths[-1], context, linear, False)
    _resnet(shapes, "mid_block.resnets.1", middle, middle, time_dim, scale_shift)
    for k, c in enumerate(skips):
        _with_bias(shapes, f"controlnet_down_blocks.{k}", (c, c, 1, 1))
    _with_bias(shapes, "controlnet_mid_block", (middle, middle, 1, 1))
    return shapes, skips


def head_channels(config: AdaptorConfig) -> list[tuple[int, int]]:
    """(trunk channels, base channels) of each modulation head: one per encoder skip, then the middle block's. Equal
    pairs for a full trunk; a narrower trunk's heads map its width onto the base's."""
    _, trunk = trunk_file_shapes(config.controlnet_config)
    _, base = trunk_file_shapes({**config.controlnet_config, "block_out_channels": config.base_channels})
    middle = (config.controlnet_config["block_out_channels"][-1], config.base_channels[-1])
    return [*zip(trunk, base), middle]


def adaptor_file_shapes(config: AdaptorConfig) -> Shapes:
    """File key -> tensor shape of an adaptor with this config: the trunk, the modulation heads (modulation
    fusion) and the numeric side channel (``numeric_tokens > 0``)."""
    shapes, _ = trunk_file_shapes(config.controlnet_config)
    if config.fusion == "modulation":  # the heads take the place of ControlNet's 1x1 output convolutions
        shapes = {key: shape for key, shape in shapes.items() if not key.startswith(_CONTROLNET_OUTPUTS)}
        *skips, (middle_in, middle_out) = head_channels(config)
        for head in ("gamma", "beta"):
            for k, (c_in, c_out) in enumerate(skips):
                _with_bias(shapes, f"{HEAD_PREFIX}{head}_down.{k}", (c_out, c_in, 1, 1))
            _with_bias(shapes, f"{HEAD_PREFIX}{head}_mid", (middle_out, middle_in, 1, 1))
    if config.numeric_tokens:
        from .numeric import NumericTokens  # plain torch

        with torch.device("meta"):
            numeric = NumericTokens(config.numeric_tokens, config.controlnet_config["cross_attention_dim"])
        for key, value in numeric.state_dict().items():
            shapes[f"{HEAD_PREFIX}{NUMERIC_NAME}.{key}"] = tuple(value.shape)
    return shapes
