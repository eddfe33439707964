"""The adaptor training starts from: ``model.init_adaptor`` or a fresh copy of the frozen UNet. The frozen base
parts themselves (``FrozenComponents``, ``load_components``, ``encode_prompts``) live in
``spire_core.models.components``, shared with ``SpirePipeline``.
"""

from __future__ import annotations

import torch

from ..models import SpireAdaptor, check_fits_unet, load_adaptor
from ..models.components import FrozenComponents
from ..models.config import SD_NORM_GROUPS, trunk_channels
from .config import ConfigError, ModelConfig
from .seeds import seed_for


def build_adaptor(model: ModelConfig, components: FrozenComponents, seed: int) -> SpireAdaptor:
    """The adaptor to train, float32 on the CPU: ``model.init_adaptor`` (checked against the base) or a fresh
    ``SpireAdaptor.from_unet`` copy of the UNet.

    The fresh adaptor's hint encoder is initialised randomly (everything else is copied from the UNet or zero);
    it is drawn from ``seed`` without touching the caller's global RNG, so runs with one seed start identically.
    """
    info = components.info
    if model.init_adaptor:
        adaptor = load_adaptor(model.init_adaptor, dtype=torch.float32)
        check_fits_unet(adaptor.config, info.unet_config)
        if model.trunk != "full":  # a trunk asked for explicitly must be the one the file has
            groups = info.unet_config.get("norm_num_groups", SD_NORM_GROUPS)
            try:
                wanted = trunk_channels(adaptor.config.base_channels, model.trunk, groups)
            except ValueError as error:
                raise ConfigError(f"model.trunk: {error}") from None
            have = list(adaptor.config.controlnet_config["block_out_channels"])
            if wanted != have:
                raise ConfigError(
                    f"model.trunk = {model.trunk!r} asks for a trunk of {wanted} channels, but model.init_adaptor "
                    f"{model.init_adaptor} has {have}: remove model.trunk (the adaptor file decides) or start from "
                    "an adaptor of that size"
                )
        if adaptor.config.prediction_type != info.prediction_type:
            raise ConfigError(
                f"model.init_adaptor {model.init_adaptor} was made for a {adaptor.config.prediction_type} base but "
                f"this base predicts {info.prediction_type}"
            )
        return adaptor
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, "adaptor-init"))
        return SpireAdaptor.from_unet(
            components.unet,
            fusion=model.fusion,
            base_family=info.base_family,
            prediction_type=info.prediction_type,
            text_encoder_layer=model.text_encoder_layer,
            numeric_tokens=model.numeric_tokens,
            trunk=model.trunk,
        )
