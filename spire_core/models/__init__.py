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

from .adaptor import HEAD_NAMES, HEAD_PREFIX, SpireAdaptor, SpireControlOutput
from .base import BaseModelInfo, load_base_unet
from .checkpoint import (
    adaptor_parameter_counts,
    check_fits_unet,
    expected_file_shapes,
    load_adaptor,
    read_adaptor_file,
    save_adaptor,
    validate_adaptor_header,
)
from .config import (
    BASE_FAMILIES,
    DEFAULT_TEXT_ENCODER_LAYER,
    FORMAT_VERSION,
    FUSIONS,
    PREDICTION_TYPES,
    TEXT_ENCODER_LAYERS,
    AdaptorConfig,
    check_unet_supported,
    controlnet_config_from_unet,
    infer_base_family,
)
from .files import (
    AdaptorFileError,
    BaseModelFileError,
    ModelFileError,
    SafetensorsHeader,
    identify,
    read_safetensors_header,
)
from .fusion import additive_unet_kwargs, apply_to_unet, modulate, num_unet_skips, predict_noise, skip_indices
from .ldm import LDM_UNET_PREFIX, LdmLayoutError, diffusers_to_ldm_unet, ldm_to_diffusers_unet, unet_config_from_ldm
from .numeric import NUMERIC_TOKENS_DEFAULT, NumericTokens, numeric_context
from .tiny import tiny_unet_config

__all__ = [
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
