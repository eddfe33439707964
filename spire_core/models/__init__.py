"""The SPIRE adaptor in diffusers terms (design.md section 4.3).

    unet, info = load_base_unet("sd15.safetensors")                  # offline; folder or single file
    adaptor = SpireAdaptor.from_unet(unet, base_family=info.base_family, prediction_type=info.prediction_type)
    eps = predict_noise(unet, adaptor, latents, t, semantic_emb, restoration_emb, degraded, strength=1.0)
    save_adaptor(adaptor, "models/spire/my_adaptor.safetensors")
    adaptor = load_adaptor("models/spire/my_adaptor.safetensors")      # validated before building

The adaptor is a diffusers ``ControlNetModel`` trunk plus zero-initialised 1x1 heads giving gamma_j and
beta_j per encoder skip j and for the middle block; the frozen UNet's skips become
``f_j * (1 + s*gamma_j) + s*beta_j`` (``fusion="modulation"``), or receive plain ControlNet residuals
(``fusion="additive"``). An optional numeric side channel (``numeric.py``) appends tokens computed from the
restoration prompt's parsed numbers to the adaptor's cross-attention context. A fresh adaptor is an exact identity.
"""

import importlib
from typing import Any

_EXPORTS = {
    "SD_SCHEDULER_CONFIG": "components",
    "FrozenComponents": "components",
    "encode_prompts": "components",
    "added_conditioning": "components",
    "sdxl_time_ids": "components",
    "load_components": "components",
    "make_noise_scheduler": "components",
    "PromptTextError": "prompt_windows",
    "parse_weights": "prompt_windows",
    "HEAD_NAMES": "config",
    "HEAD_PREFIX": "config",
    "SpireAdaptor": "adaptor",
    "SpireControlOutput": "adaptor",
    "BaseModelInfo": "base_unet",
    "load_base_unet": "base_unet",
    "adaptor_parameter_counts": "checkpoint",
    "check_fits_unet": "checkpoint",
    "expected_file_shapes": "checkpoint",
    "load_adaptor": "checkpoint",
    "read_adaptor_file": "checkpoint",
    "save_adaptor": "checkpoint",
    "validate_adaptor_header": "checkpoint",
    "BASE_FAMILIES": "config",
    "DEFAULT_TEXT_ENCODER_LAYER": "config",
    "FORMAT_VERSION": "config",
    "FUSIONS": "config",
    "PREDICTION_TYPES": "config",
    "TEXT_ENCODER_LAYERS": "config",
    "AdaptorConfig": "config",
    "check_unet_supported": "config",
    "controlnet_config_from_unet": "config",
    "infer_base_family": "config",
    "AdaptorFileError": "safetensors_header",
    "BaseModelFileError": "safetensors_header",
    "ModelFileError": "safetensors_header",
    "SafetensorsHeader": "safetensors_header",
    "identify": "safetensors_header",
    "read_safetensors_header": "safetensors_header",
    "additive_unet_kwargs": "fusion",
    "apply_to_unet": "fusion",
    "modulate": "modulation",
    "num_unet_skips": "fusion",
    "predict_noise": "fusion",
    "skip_indices": "fusion",
    "LDM_UNET_PREFIX": "ldm",
    "LdmLayoutError": "ldm",
    "diffusers_to_ldm_unet": "ldm",
    "ldm_to_diffusers_unet": "ldm",
    "unet_config_from_ldm": "ldm",
    "NUMERIC_TOKENS_DEFAULT": "config",
    "NumericTokens": "numeric",
    "numeric_context": "numeric",
    "tiny_unet_config": "tiny",
}
"""Public name -> submodule. Resolved on first use (PEP 562), so that importing one light submodule (the
file format, the config, the ComfyUI layout: what the ComfyUI nodes use) never imports diffusers, which
ComfyUI does not ship."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "SD_SCHEDULER_CONFIG",
    "FrozenComponents",
    "encode_prompts",
    "added_conditioning",
    "sdxl_time_ids",
    "load_components",
    "make_noise_scheduler",
    "PromptTextError",
    "parse_weights",
    "BASE_FAMILIES",
    "DEFAULT_TEXT_ENCODER_LAYER",
    "FORMAT_VERSION",
    "FUSIONS",
    "HEAD_NAMES",
    "HEAD_PREFIX",
    "LDM_UNET_PREFIX",
    "PREDICTION_TYPES",
    "TEXT_ENCODER_LAYERS",
    "AdaptorConfig",
    "AdaptorFileError",
    "BaseModelFileError",
    "BaseModelInfo",
    "LdmLayoutError",
    "NUMERIC_TOKENS_DEFAULT",
    "NumericTokens",
    "ModelFileError",
    "SafetensorsHeader",
    "SpireAdaptor",
    "SpireControlOutput",
    "adaptor_parameter_counts",
    "additive_unet_kwargs",
    "apply_to_unet",
    "check_fits_unet",
    "check_unet_supported",
    "controlnet_config_from_unet",
    "diffusers_to_ldm_unet",
    "expected_file_shapes",
    "identify",
    "infer_base_family",
    "ldm_to_diffusers_unet",
    "load_adaptor",
    "load_base_unet",
    "modulate",
    "num_unet_skips",
    "numeric_context",
    "predict_noise",
    "read_adaptor_file",
    "read_safetensors_header",
    "save_adaptor",
    "skip_indices",
    "tiny_unet_config",
    "unet_config_from_ldm",
    "validate_adaptor_header",
]
