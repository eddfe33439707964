"""The SPIRE adaptor as a ComfyUI module: ``comfy.cldm.cldm.ControlNet`` trunk (built with ``comfy.ops``) plus
the modulation heads, loaded from the one SPIRE ``.safetensors`` format.

The trunk is ComfyUI's own ControlNet class, so lowvram, manual casting and model management treat it as
they treat a core ControlNet. In modulation fusion its zero convolutions are replaced by identities, so
the trunk returns its raw features, and 1x1 heads turn them into gamma/beta per skip and for the middle
block. In additive fusion it is exactly a plain ControlNet.
"""

from __future__ import annotations

import logging
import os

import comfy.cldm.cldm
import comfy.model_management
import comfy.ops
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential

from ..spire_core.models.checkpoint import read_adaptor_file, untrained_reason
from ..spire_core.models.comfy_layout import ComfyLayoutError, cldm_kwargs, level_heads, to_cldm_state_dict
from ..spire_core.models.config import HEAD_NAMES, AdaptorConfig
from ..spire_core.models.file_layout import head_channels
from ..spire_core.models.numeric import NumericTokens, numeric_context
from ..spire_core.models.safetensors_header import AdaptorFileError, read_safetensors_header
from .spire_control import SpireControl


class ComfyAdaptor(comfy.cldm.cldm.ControlNet):
    """ComfyUI-layout SPIRE adaptor.

    The restoration prompt's context gets the numeric channel's tokens appended (``numeric_context``, the same
    code as the diffusers adaptor) when the adaptor has one. Forward returns, in modulation fusion,
    ``{"gamma": [...], "beta": [...], "gamma_mid", "beta_mid"}`` with one
    (B, C_j, H_j, W_j) tensor per UNet input block j; in additive fusion the ControlNet dict
    ``{"output": [...], "middle": [...]}``.
    """

    def __init__(self, config: AdaptorConfig, dtype=None, device=None, operations=comfy.ops.disable_weight_init):
        kwargs = cldm_kwargs(config)
        if kwargs.pop("upcast_attention"):
            kwargs["attn_precision"] = torch.float32
        super().__init__(**kwargs, dtype=dtype, device=device, operations=operations)
        self.spire_config = config
        self.spire_kwargs = cldm_kwargs(config)
        self.fusion = config.fusion
        self.spire_numeric = None
        if config.numeric_tokens:
            self.spire_numeric = NumericTokens(
                config.numeric_tokens, kwargs["context_dim"], linear=operations.Linear, dtype=dtype, device=device
            )
        if self.fusion != "modulation":
            return
        *skips, middle = head_channels(config)  # (trunk, base) channels: equal unless the trunk is narrower
        self.zero_convs = torch.nn.ModuleList(TimestepEmbedSequential() for _ in skips)  # identities
        self.middle_block_out = TimestepEmbedSequential()

        def head(channels: tuple[int, int]):
            return operations.Conv2d(channels[0], channels[1], 1, dtype=dtype, device=device)

        self.spire_gamma_down = torch.nn.ModuleList(head(pair) for pair in skips)
        self.spire_beta_down = torch.nn.ModuleList(head(pair) for pair in skips)
        self.spire_gamma_mid = head(middle)
        self.spire_beta_mid = head(middle)

    def forward(self, x, hint, timesteps, context, y=None, numeric_features=None, **kwargs):
        context = numeric_context(self.spire_numeric, context, numeric_features)
        out = super().forward(x, hint, timesteps, context, y=y, **kwargs)
        if self.fusion != "modulation":
            return out
        features, middle = out["output"], out["middle"][0]
        return {
            "gamma": [head(f) for head, f in zip(self.spire_gamma_down, features)],
            "beta": [head(f) for head, f in zip(self.spire_beta_down, features)],
            "gamma_mid": self.spire_gamma_mid(middle),
            "beta_mid": self.spire_beta_mid(middle),
        }

    def check_fits(self, base_model) -> None:
        """Raise ``ValueError`` unless this adaptor was made for ``base_model``'s UNet (a ComfyUI BaseModel)."""
        unet = getattr(getattr(base_model, "model_config", None), "unet_config", None) or {}
        mine = self.spire_kwargs
        base = self.spire_config.base_channels  # a narrower trunk is compared by the base width it was made for
        fields = {
            "latent channels": (mine["in_channels"], unet.get("in_channels")),
            "model channels": (base[0], unet.get("model_channels")),
            "channel multipliers": ([c // base[0] for c in base], list(unet.get("channel_mult") or [])),
            "resnets per level": (list(mine["num_res_blocks"]), list(_levels(unet.get("num_res_blocks"), mine))),
            "text-embedding width": (mine["context_dim"], unet.get("context_dim")),
            "linear attention projections": (
                mine["use_linear_in_transformer"],
                bool(unet.get("use_linear_in_transformer")),
            ),
            "extra (ADM) conditioning": (mine["adm_in_channels"], unet.get("adm_in_channels")),
        }
        depth = unet.get("transformer_depth")
        if depth is not None:
            fields["attention depth per encoder block"] = (
                list(mine["transformer_depth"]),
                list(depth)[: len(mine["transformer_depth"])],
            )
        if not self.spire_config.narrow:  # a narrower trunk has attention heads of its own
            try:
                fields["attention heads per level"] = (level_heads(mine), level_heads(unet))
            except (KeyError, TypeError, ZeroDivisionError):
                fields["attention heads per level"] = (level_heads(mine), "unknown")
        wrong = [f"{name}: adaptor {a}, base model {b}" for name, (a, b) in fields.items() if a != b]
        if wrong:
            raise ValueError(
                f"This SPIRE adaptor (made for base family {self.spire_config.base_family!r}) does not fit the "
                f"checkpoint being sampled: {'; '.join(wrong)}. Use the checkpoint family the adaptor was trained "
                "from (SD1.x adaptors with SD1.x checkpoints, SD2.x with SD2.x, SDXL with SDXL)."
            )


def _levels(value, mine):
    if isinstance(value, int):
        return [value] * len(mine["channel_mult"])
    return value or []


def load_spire_adaptor(path: str | os.PathLike) -> SpireControl:
    """Validate and load a SPIRE adaptor file as a ``SpireControl`` (the core ``CONTROL_NET`` type).

    Raises:
        ValueError: for any file that is not a loadable SPIRE adaptor, saying what it is and where it goes.
    """
    try:
        config, state = read_adaptor_file(path)
        untrained = untrained_reason(config, state, read_safetensors_header(path).metadata)
        state = to_cldm_state_dict(state, config)
    except (AdaptorFileError, ComfyLayoutError) as error:
        raise ValueError(str(error)) from None
    weight_dtype = next(iter(state.values())).dtype
    load_device = comfy.model_management.get_torch_device()
    supported = [torch.float16, torch.bfloat16, torch.float32]
    unet_dtype = comfy.model_management.unet_dtype(
        model_params=-1, supported_dtypes=supported, weight_dtype=weight_dtype
    )
    manual_cast_dtype = comfy.model_management.unet_manual_cast(unet_dtype, load_device)
    operations = comfy.ops.pick_operations(unet_dtype, manual_cast_dtype, disable_fast_fp8=True)
    offload = comfy.model_management.unet_offload_device()
    with torch.device("meta"):
        module = ComfyAdaptor(config, dtype=unet_dtype, device=None, operations=operations)
    state = {k: v.to(unet_dtype) for k, v in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(
            f"{path}: the adaptor's tensors do not match the ComfyUI layout built from its metadata "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}); the file is damaged or was "
            "written by an incompatible tool"
        )
    module = module.to(offload)
    info = {"path": str(path), **{k.removeprefix("spire."): v for k, v in config.to_metadata().items()}}
    info["heads"] = ", ".join(HEAD_NAMES) if config.fusion == "modulation" else "none (additive)"
    info["numeric_channel"] = f"{config.numeric_tokens} tokens" if config.numeric_tokens else "none (CLIP only)"
    info["status"] = untrained or "trained"
    if untrained:
        logging.warning("SPIRE: adaptor %s is %s", os.path.basename(str(path)), untrained)
    return SpireControl(module, load_device=load_device, manual_cast_dtype=manual_cast_dtype, info=info)
