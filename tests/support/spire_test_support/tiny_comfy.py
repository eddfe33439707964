"""Tiny random Stable-Diffusion-shaped models built with ComfyUI's own classes (comfyui-internals.md
section 7), for the comfy and e2e tiers. Import only inside a ComfyUI process.

- ``sd1``: SD1.x-shaped, epsilon prediction, 8 heads per attention (SD1's rule), CLIP ``last`` layer.
- ``sd2``: SD2.x-shaped, v-prediction, 64 channels per head and linear projections (SD2's rule),
  OpenCLIP-style text encoder read at the penultimate layer.
- ``sdxl``: SDXL-shaped (``spire_core.models.tiny_unet_config("sdxl", cross_attention_dim=64)``), epsilon
  prediction, no attention at the first level, pooled-text and size conditioning (``y``, 32 + 6 x 256 values),
  two text encoders (CLIP-L at the penultimate layer and CLIP-G, 32 wide each, CLIP-G's pooled projection 32).

Weights are drawn from a fixed seed, so every call returns the same model. ``save_checkpoint`` writes a
single-file LDM checkpoint (``model.diffusion_model.*`` keys), the layout real SD checkpoints use.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import torch

FAMILIES = ("sd1", "sd2", "sdxl")

_UNET_BASE: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
    "image_size": 32,
    "use_checkpoint": False,
}

UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd1": {**_UNET_BASE, "model_channels": 32, "context_dim": 32, "use_linear_in_transformer": False},
    "sd2": {**_UNET_BASE, "model_channels": 64, "context_dim": 64, "use_linear_in_transformer": True},
    # comfy.supported_models.SDXL adds num_head_channels=64 (SDXL's rule, and the diffusers twin's heads [1, 2]).
    "sdxl": {
        **_UNET_BASE,
        "model_channels": 64,
        "context_dim": 64,
        "use_linear_in_transformer": True,
        "transformer_depth": [0, 2],  # per encoder resnet: none at the first level, two layers at the second
        "transformer_depth_output": [0, 0, 2, 2],  # per decoder resnet (layers + 1 per level), shallowest first
        "transformer_depth_middle": 2,
        "num_classes": "sequential",
        "adm_in_channels": 32 + 6 * 256,  # CLIP-G's pooled projection + six size/crop ids of 256 values
    },
}

CLIP_CONFIGS = {
    "sd1": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "projection_dim": 32,
    },
    "sd2": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_hidden_layers": 3,
        "projection_dim": 64,
    },
}

SDXL_CLIP_CONFIGS = {
    # Both read at the penultimate layer (ComfyUI asserts |layer_idx| < layers, hence 3 layers); the hidden
    # states are concatenated (32 + 32 = the UNet's context_dim 64) and CLIP-G's projection gives the pooled 32.
    "clip_l": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 3,
        "projection_dim": 32,
    },
    "clip_g": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 3,
        "projection_dim": 32,
    },
}

VAE_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 64,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def _fill(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(
                (
                    "norm.weight",
                    "norm1.weight",
                    "norm2.weight",
                    "norm3.weight",
                    "norm_out.weight",
                    "layer_norm1.weight",
                    "layer_norm2.weight",
                    "final_layer_norm.weight",
                    "ln_final.weight",
                )
            ):
                p.fill_(1.0)
            elif p.dim() == 1 and "norm" in name:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.dtype) * std)


def model_config(family: str):
    import comfy.supported_models as sm

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; expected one of {FAMILIES}")
    cfg = {"sd1": sm.SD15, "sd2": sm.SD20, "sdxl": sm.SDXL}[family](dict(UNET_CONFIGS[family]))
    cfg.set_inference_dtype(torch.float32, None)
    return cfg


@cache
def tiny_model(family: str = "sd1", seed: int = 0):
    """A ComfyUI MODEL (ModelPatcher around a BaseModel) with random weights."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher

    cfg = model_config(family)
    model_type = comfy.model_base.ModelType.V_PREDICTION if family == "sd2" else comfy.model_base.ModelType.EPS
    model_class = comfy.model_base.SDXL if family == "sdxl" else comfy.model_base.BaseModel
    base = model_class(cfg, model_type=model_type, device=mm.unet_offload_device())
    _fill(base.diffusion_model, seed, std=0.02)
    return comfy.model_patcher.ModelPatcher(
        base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


@cache
def tiny_clip(family: str = "sd1", seed: int = 1):
    """A ComfyUI CLIP with the real SD tokenizer(s) and tiny random text transformer(s)."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models_base
    from comfy.text_encoders import sd2_clip

    if family == "sd1":
        target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
        options = {"clip_l_model_config": dict(CLIP_CONFIGS["sd1"])}
    elif family == "sdxl":  # each encoder reads "<model_name>_model_config" (clip_l, clip_g) from model_options
        target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
        options = {f"{name}_model_config": dict(config) for name, config in SDXL_CLIP_CONFIGS.items()}
    elif family == "sd2":
        target = comfy.supported_models_base.ClipTarget(sd2_clip.SD2Tokenizer, sd2_clip.SD2ClipModel)
        options = {"clip_h_model_config": dict(CLIP_CONFIGS["sd2"])}
    else:
        raise ValueError(f"unknown tiny family {family!r}; expected one of {FAMILIES}")
    clip = comfy.sd.CLIP(target=target, model_options=options)
    _fill(clip.cond_stage_model, seed, std=0.1)
    return clip


@cache
def tiny_vae(seed: int = 2):
    """A ComfyUI VAE (8x spatial compression, 4 latent channels) with random weights."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    params = {"embed_dim": 4, "ddconfig": dict(VAE_DDCONFIG)}
    net = AutoencoderKL(**params)
    _fill(net, seed, std=0.05)
    return comfy.sd.VAE(sd=net.state_dict(), config={"params": params}, dtype=torch.float32)


def family_of(name: str) -> str:
    """Which tiny family a checkpoint name stands for in a workflow twin ("...xl..." -> sdxl, "...sd2..." or
    "...v2..." -> sd2, anything else -> sd1)."""
    lowered = name.lower()
    if "xl" in lowered:
        return "sdxl"
    return "sd2" if ("sd2" in lowered or "v2" in lowered or "2.1" in lowered) else "sd1"


def save_checkpoint(path: Path, family: str = "sd1") -> Path:
    """Write the tiny UNet as a single-file LDM checkpoint (``model.diffusion_model.*``)."""
    from safetensors.torch import save_file

    model = tiny_model(family)
    state = {
        f"model.diffusion_model.{k}": v.detach().contiguous()
        for k, v in model.model.diffusion_model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    prediction = "v" if family == "sd2" else "epsilon"
    save_file(state, str(path), metadata={"test.tiny_family": family, "prediction_type": prediction})
    return path


class TinyCheckpointLoader:
    """Test-only stand-in for CheckpointLoaderSimple: same input name, tiny models out."""

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802  (ComfyUI V1 API)
        return {"required": {"ckpt_name": ("STRING", {"default": "tiny_sd1"})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, ckpt_name):
        family = family_of(ckpt_name)
        return tiny_model(family), tiny_clip(family), tiny_vae()


TEST_NODES = {"SPIRETest_TinyCheckpointLoader": TinyCheckpointLoader}


CAPTURED: dict[str, Any] = {}
"""What ``SPIRETest_Capture`` nodes received in the last run, by key (full-precision tensors, not 8-bit PNGs)."""


class Capture:
    """Test-only output node: keeps a LATENT's samples or an IMAGE tensor in ``CAPTURED[key]``."""

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802  (ComfyUI V1 API)
        return {"required": {"value": ("*",), "key": ("STRING", {"default": "out"})}}

    @classmethod
    def VALIDATE_INPUTS(cls, input_types):  # noqa: N802  (accept any connected type)
        return True

    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def capture(self, value, key):
        CAPTURED[key] = value["samples"].clone() if isinstance(value, dict) else value.clone()
        return {}


TEST_NODES["SPIRETest_Capture"] = Capture
