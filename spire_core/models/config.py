"""``AdaptorConfig``: everything needed to rebuild a SPIRE adaptor, and how it is written as metadata.

The adaptor trunk is a diffusers ``ControlNetModel``; ``controlnet_config`` holds the keyword arguments
that rebuild it with ``ControlNetModel.from_config`` (derived from the base UNet's config exactly as
``ControlNetModel.from_unet`` derives them). The remaining fields record how the adaptor was trained
(base family, prediction type, text-encoder layer for the restoration prompt, prompt-grammar version)
so that a loader can check them. Project defaults are in ``reference/spire-paper.md`` section 10.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..prompt import GRAMMAR_VERSION, NUMERIC_FEATURES_VERSION

FORMAT_VERSION = 3
"""Newest on-disk adaptor format (``spire.format_version``). Format 2 adds the numeric side channel; format 3 a
trunk narrower than the base (``spire.base_block_out_channels``, the heads then map the trunk's width onto the
base's) and SDXL's added conditioning (an SDXL adaptor is always format 3, so that packs from before SDXL refuse it
with a message to update rather than a puzzling one). An adaptor is written in the oldest format that holds it (an
SD 1.x/2.x full trunk without the channel: format 1, which every version of the pack reads). Readers refuse
versions they do not know (``READABLE_FORMAT_VERSIONS``) with a message to update the pack."""

READABLE_FORMAT_VERSIONS = (1, 2, 3)

TRUNK_SIZES = {"full": 1.0, "half": 0.5, "quarter": 0.25}
"""Trunk widths as fractions of the base's channels: ``full`` is the paper's copy of the base encoder; narrower
trunks (``narrow_controlnet_config``) train on smaller GPUs, their heads map each skip onto the base's width."""

NARROW_TRUNK_HEADS = 8
"""Attention heads of every level of a narrower trunk (SD 1.x's rule, which divides any multiple of 32)."""

SD_NORM_GROUPS = 32
"""GroupNorm groups of every Stable Diffusion UNet (diffusers' default ``norm_num_groups``; the only count the
original layout and ComfyUI build)."""

FUSIONS = ("modulation", "additive")
"""``modulation``: SPIRE, ``f <- f * (1 + s*gamma) + s*beta``; ``additive``: plain ControlNet residuals."""

BASE_FAMILIES = ("sd1", "sd2", "sdxl", "custom")
"""Base model families: SD 1.x (CLIP ViT-L, 768-d context), SD 2.x (OpenCLIP ViT-H, 1024-d), SDXL (CLIP ViT-L and
OpenCLIP ViT-bigG, 2048-d context, pooled text and size conditioning), anything else."""

PREDICTION_TYPES = ("epsilon", "v_prediction")
"""What the base UNet predicts (diffusers scheduler names)."""

TEXT_ENCODER_LAYERS = ("last", "penultimate")
"""Which CLIP hidden state encodes the restoration prompt: the last layer, or the one before it."""

DEFAULT_TEXT_ENCODER_LAYER = {"sd1": "last", "sd2": "penultimate", "sdxl": "penultimate", "custom": "last"}
"""The text-encoder layer each family's own pipelines use for prompts (SD2 and SDXL use the penultimate layer)."""

ADDED_CONDITIONING = "text_time"
"""The only ``addition_embed_type`` a trunk may have: SDXL's pooled text embedding plus size/crop ids
(``AdaptorConfig.added_conditioning``)."""

DEFAULT_HINT_CHANNELS = 3
"""The degraded image y enters as RGB in [0, 1]."""

HINT_ENCODER_CHANNELS = (16, 32, 96, 256)
"""Channels of the pixel-space hint encoder (diffusers ``ControlNetConditioningEmbedding``; paper section 10, #4)."""

META_PREFIX = "spire."
"""Prefix of every SPIRE metadata key in the safetensors header."""

# UNet config fields ControlNetModel.from_unet copies (same names on both sides).
_COPIED_FROM_UNET = (
    "in_channels",
    "flip_sin_to_cos",
    "freq_shift",
    "down_block_types",
    "only_cross_attention",
    "block_out_channels",
    "layers_per_block",
    "downsample_padding",
    "mid_block_scale_factor",
    "act_fn",
    "norm_num_groups",
    "norm_eps",
    "cross_attention_dim",
    "attention_head_dim",
    "num_attention_heads",
    "use_linear_projection",
    "class_embed_type",
    "num_class_embeds",
    "upcast_attention",
    "resnet_time_scale_shift",
    "projection_class_embeddings_input_dim",
    "mid_block_type",
)
_COPIED_IF_PRESENT = {
    "transformer_layers_per_block": 1,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
}

# UNet features an adaptor trunk cannot mirror; value = the supported settings.
_UNSUPPORTED_UNET_SETTINGS = {
    "addition_embed_type": (None, ADDED_CONDITIONING),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "encoder_hid_dim_type": (None,),
    "time_embedding_type": ("positional",),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "dual_cross_attention": (False,),
    "center_input_sample": (False,),
}


def _jsonable(value: Any) -> Any:
    """A JSON round trip: tuples become lists, anything non-serialisable raises TypeError."""
    return json.loads(json.dumps(value))


def _controlnet_init_params() -> set[str]:
    from diffusers import ControlNetModel

    return set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}


def _check_format(version: int) -> None:
    if version not in READABLE_FORMAT_VERSIONS:
        raise ValueError(
            f"adaptor format version {version} is not supported: this version of SPIRE reads formats "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}. Update the SPIRE pack to load newer adaptors."
        )


def check_unet_supported(unet_config: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if the UNet uses a feature an adaptor trunk cannot copy (SD1.x/SD2.x/SDXL-style
    UNets are supported).

    Args:
        unet_config: a diffusers ``UNet2DConditionModel`` config (``unet.config`` or its dict); missing
            keys mean diffusers' defaults.
    """
    bad = [
        f"{key}={unet_config[key]!r} (supported: {' or '.join(map(repr, allowed))})"
        for key, allowed in _UNSUPPORTED_UNET_SETTINGS.items()
        if key in unet_config and unet_config[key] not in allowed
    ]
    if bad:
        raise ValueError(
            "SPIRE adaptors are built for SD1.x/SD2.x/SDXL-style UNets (text cross-attention, positional "
            f"timestep embedding, SDXL's pooled-text and size conditioning); this UNet has {', '.join(bad)}. "
            "LCM-distilled, upscaler and class-conditioned UNets are not supported."
        )
    if unet_config.get("addition_embed_type") == ADDED_CONDITIONING:
        adm = unet_config.get("projection_class_embeddings_input_dim")
        ids = unet_config.get("addition_time_embed_dim")
        context = unet_config.get("cross_attention_dim")
        if isinstance(adm, int) and isinstance(ids, int) and adm - 5 * ids == context:
            raise ValueError(
                "this UNet reads a pooled text embedding as wide as its cross-attention and five size ids: the SDXL "
                "refiner (CLIP-G only, an aesthetic score instead of the target size). SPIRE adaptors are made for "
                "SDXL base-style UNets (two text encoders, six size ids); restore with the base checkpoint"
            )


def trunk_granularity(norm_groups: int = SD_NORM_GROUPS) -> int:
    """The step of a narrower trunk's channels for a base with ``norm_groups`` GroupNorm groups: every level must
    split into those groups and into ``NARROW_TRUNK_HEADS`` heads (32 for every Stable Diffusion base)."""
    if isinstance(norm_groups, bool) or not isinstance(norm_groups, int) or norm_groups < 1:
        raise ValueError(f"norm_num_groups must be a positive integer; got {norm_groups!r}")
    return math.lcm(norm_groups, NARROW_TRUNK_HEADS)


def trunk_channels(base_channels: list[int], trunk: str | int, norm_groups: int = SD_NORM_GROUPS) -> list[int]:
    """A trunk's channels per level for base channels ``base_channels`` and a size: ``"full"``, ``"half"``,
    ``"quarter"`` (``TRUNK_SIZES``: the first level's width times the fraction, rounded to the nearest multiple of
    the granularity, at least one granularity), or the first level's width itself (an int multiple of the
    granularity). The granularity is ``trunk_granularity(norm_groups)``: 32 for every Stable Diffusion base (its
    32 GroupNorm groups), finer only for a custom base with fewer groups. The levels keep the base's multipliers
    of the first level."""
    first = base_channels[0]
    step = trunk_granularity(norm_groups)
    if isinstance(trunk, str):
        if trunk not in TRUNK_SIZES:
            raise ValueError(f"trunk {trunk!r} is unknown; expected one of {', '.join(TRUNK_SIZES)} or a channel count")
        width = first * TRUNK_SIZES[trunk]
        channels = max(step, step * int(width / step + 0.5))
    elif isinstance(trunk, bool) or not isinstance(trunk, int):
        raise ValueError(f"trunk must be a size name or an integer channel count; got {trunk!r}")
    else:
        channels = trunk
    if channels % step or not 0 < channels <= first or any(c % first for c in base_channels):
        raise ValueError(
            f"a trunk of {channels} channels does not fit base channels {base_channels}: it must be a positive "
            f"multiple of {step} no wider than {first}, and the base's levels multiples of its first"
        )
    return [c // first * channels for c in base_channels]


def narrow_controlnet_config(controlnet_config: Mapping[str, Any], trunk: str | int) -> dict[str, Any]:
    """The ``ControlNetModel`` config of a trunk of size ``trunk`` (see ``trunk_channels``) for the full-width
    ``controlnet_config``: its channels scaled, ``NARROW_TRUNK_HEADS`` heads at every level; the rest (depths,
    block types, cross-attention and added conditioning widths) as the base's. ``"full"`` returns a copy."""
    config = dict(controlnet_config)
    groups = config.get("norm_num_groups", SD_NORM_GROUPS)
    channels = trunk_channels(list(config["block_out_channels"]), trunk, groups)
    if channels != list(config["block_out_channels"]):
        config.update(block_out_channels=channels, attention_head_dim=NARROW_TRUNK_HEADS, num_attention_heads=None)
    return _jsonable(config)


def controlnet_config_from_unet(
    unet_config: Mapping[str, Any], hint_channels: int = DEFAULT_HINT_CHANNELS
) -> dict[str, Any]:
    """The ``ControlNetModel`` kwargs that ``ControlNetModel.from_unet`` would use for this UNet.

    Args:
        unet_config: a diffusers ``UNet2DConditionModel`` config.
        hint_channels: channels of the hint image (3 for RGB).

    Returns:
        A JSON-serialisable dict (tuples as lists) accepted by ``ControlNetModel.from_config``.
    """
    check_unet_supported(unet_config)
    config = {key: unet_config[key] for key in _COPIED_FROM_UNET}
    config.update({key: unet_config.get(key, default) for key, default in _COPIED_IF_PRESENT.items()})
    config.update(
        controlnet_conditioning_channel_order="rgb",
        conditioning_embedding_out_channels=list(HINT_ENCODER_CHANNELS),
        conditioning_channels=hint_channels,
        global_pool_conditions=False,
        addition_embed_type_num_heads=64,
    )
    return _jsonable(config)


def infer_base_family(unet_config: Mapping[str, Any]) -> str:
    """``"sd1"``, ``"sd2"``, ``"sdxl"`` or ``"custom"`` from a diffusers UNet config.

    SD 1.x: 768-d context and convolutional transformer projections; SD 2.x: 1024-d context and linear
    projections; both with block channels (320, 640, 1280, 1280). SDXL: block channels (320, 640, 1280), 2048-d
    context and the pooled-text and size conditioning. Tiny test models with SDXL's added conditioning are
    ``"sdxl"`` too (their structure, not their size, decides what the adaptor needs); anything else is
    ``"custom"``; pass the family explicitly where it matters.
    """
    channels = list(unet_config.get("block_out_channels", ()))
    if unet_config.get("addition_embed_type") == ADDED_CONDITIONING:
        return "sdxl"
    if channels != [320, 640, 1280, 1280]:
        return "custom"
    context = unet_config.get("cross_attention_dim")
    linear = bool(unet_config.get("use_linear_projection", False))
    if context == 768 and not linear:
        return "sd1"
    if context == 1024 and linear:
        return "sd2"
    return "custom"


HEAD_PREFIX = "spire_"
"""File-key prefix of the modulation heads (``spire_gamma_down.0.weight``); trunk keys carry no prefix."""

HEAD_NAMES = ("gamma_down", "beta_down", "gamma_mid", "beta_mid")
"""Attribute names of the modulation heads on ``SpireAdaptor`` (modulation fusion only)."""

NUMERIC_NAME = "numeric"
"""Attribute name of the numeric side channel (``spire_numeric.*`` in files); present when
``config.numeric_tokens > 0``, in either fusion."""

NUMERIC_TOKENS_DEFAULT = 4
"""Tokens the numeric channel appends in adaptors made by ``models init`` and by the trainer (0: no channel)."""


@dataclass(frozen=True)
class AdaptorConfig:
    """How to rebuild and how to use a SPIRE adaptor; written into the checkpoint's metadata.

    Attributes:
        controlnet_config: ``ControlNetModel.from_config`` kwargs (JSON-serialisable; tuples become lists).
        fusion: ``"modulation"`` (SPIRE) or ``"additive"`` (plain ControlNet, for ablations).
        base_family: ``"sd1"``, ``"sd2"``, ``"sdxl"`` or ``"custom"``.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``: what the base UNet it was trained with predicts.
        text_encoder_layer: ``"last"`` or ``"penultimate"``: CLIP layer encoding the restoration prompt;
            ``None`` picks the family default (SD1 last, SD2 penultimate).
        prompt_grammar_version: ``spire_core.prompt.GRAMMAR_VERSION`` the adaptor was trained with.
        hint_channels: channels of the hint image (3: RGB in [0, 1]).
        numeric_tokens: tokens of the numeric side channel appended behind the restoration prompt's CLIP tokens
            (``spire_core.models.numeric``); 0: no channel (the adaptor reads the prompt through CLIP alone).
        numeric_features_version: ``spire_core.prompt.NUMERIC_FEATURES_VERSION`` of the features the channel
            reads (only meaningful with a channel).
        base_block_out_channels: the base UNet's channels per level when the trunk is narrower
            (``narrow_controlnet_config``; modulation fusion only), else ``None`` (the trunk is as wide as the base).
        format_version: on-disk format version: 1 without the numeric channel, 2 with it, 3 with a narrower trunk
            or SDXL's added conditioning (set from the other fields when omitted).
    """

    controlnet_config: dict[str, Any]
    fusion: str = "modulation"
    base_family: str = "custom"
    prediction_type: str = "epsilon"
    text_encoder_layer: str | None = None
    prompt_grammar_version: int = GRAMMAR_VERSION
    hint_channels: int = DEFAULT_HINT_CHANNELS
    numeric_tokens: int = 0
    numeric_features_version: int = NUMERIC_FEATURES_VERSION
    base_block_out_channels: list[int] | None = None
    format_version: int | None = None

    def __post_init__(self) -> None:
        def choose(name: str, value: Any, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise ValueError(f"AdaptorConfig.{name} must be one of {', '.join(allowed)}; got {value!r}")

        choose("fusion", self.fusion, FUSIONS)
        choose("base_family", self.base_family, BASE_FAMILIES)
        choose("prediction_type", self.prediction_type, PREDICTION_TYPES)
        added = isinstance(self.controlnet_config, Mapping) and (
            self.controlnet_config.get("addition_embed_type") == ADDED_CONDITIONING
        )
        if added != (self.base_family == "sdxl") and self.base_family != "custom":
            raise ValueError(
                f"AdaptorConfig: base_family={self.base_family!r} with "
                f"{'SDXL' if added else 'no'} added conditioning (controlnet_config.addition_embed_type="
                f"{self.controlnet_config.get('addition_embed_type')!r}): SDXL adaptors have SDXL's pooled-text and "
                "size conditioning, SD 1.x/2.x adaptors do not"
            )
        sdxl = self.base_family == "sdxl" or added  # SDXL-shaped (a custom base with added conditioning too)
        if self.text_encoder_layer is None:
            default = "penultimate" if sdxl else DEFAULT_TEXT_ENCODER_LAYER[self.base_family]
            object.__setattr__(self, "text_encoder_layer", default)
        choose("text_encoder_layer", self.text_encoder_layer, TEXT_ENCODER_LAYERS)
        if sdxl and self.text_encoder_layer != "penultimate":
            raise ValueError(
                "AdaptorConfig.text_encoder_layer must be 'penultimate' for SDXL: SDXL reads both of its text encoders "
                "there, and ComfyUI's SDXL CLIP offers no other layer for both"
            )
        base = self.base_block_out_channels
        if base is not None:
            if not isinstance(base, (list, tuple)) or not all(
                isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in base
            ):
                raise ValueError(f"AdaptorConfig.base_block_out_channels must be positive integers; got {base!r}")
            object.__setattr__(self, "base_block_out_channels", list(base))
        needs_3 = base is not None or added
        if self.format_version is None:
            object.__setattr__(self, "format_version", 3 if needs_3 else 2 if self.numeric_tokens else 1)
        for name in ("prompt_grammar_version", "hint_channels", "format_version", "numeric_features_version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AdaptorConfig.{name} must be a positive integer; got {value!r}")
        _check_format(self.format_version)
        tokens = self.numeric_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= 64:
            raise ValueError(f"AdaptorConfig.numeric_tokens must be an integer in 0..64; got {tokens!r}")
        if self.format_version < 3 and (tokens > 0) != (self.format_version >= 2):
            raise ValueError(
                f"AdaptorConfig: format version {self.format_version} with numeric_tokens={tokens}: format 1 has no "
                "numeric channel and format 2 always has one"
            )
        if needs_3 != (self.format_version >= 3):
            raise ValueError(
                f"AdaptorConfig: format version {self.format_version} with base_block_out_channels="
                f"{self.base_block_out_channels} and {'SDXL' if added else 'no'} added conditioning: format 3 is "
                "the format of narrower trunks and of SDXL adaptors, and only it has them"
            )
        if tokens and self.numeric_features_version != NUMERIC_FEATURES_VERSION:
            raise ValueError(
                f"this adaptor's numeric channel reads features version {self.numeric_features_version}; this "
                f"version of SPIRE computes version {NUMERIC_FEATURES_VERSION}. Use the SPIRE version it was "
                "trained with, or retrain it."
            )
        self._check_controlnet_config()

    def _check_controlnet_config(self) -> None:
        if not isinstance(self.controlnet_config, Mapping):
            raise ValueError(
                f"AdaptorConfig.controlnet_config must be a dict of ControlNetModel kwargs; got "
                f"{type(self.controlnet_config).__name__}"
            )
        try:
            config = _jsonable({k: v for k, v in self.controlnet_config.items() if not k.startswith("_")})
        except TypeError as error:
            raise ValueError(f"AdaptorConfig.controlnet_config must be JSON-serialisable: {error}") from None
        unknown = sorted(set(config) - _controlnet_init_params())
        if unknown:
            raise ValueError(f"AdaptorConfig.controlnet_config has keys ControlNetModel does not accept: {unknown}")
        required = ("block_out_channels", "down_block_types", "layers_per_block", "cross_attention_dim")
        missing = [key for key in required if key not in config]
        if missing:
            raise ValueError(f"AdaptorConfig.controlnet_config lacks required keys {missing}")
        if len(config["block_out_channels"]) != len(config["down_block_types"]):
            raise ValueError(
                "AdaptorConfig.controlnet_config: block_out_channels and down_block_types differ in length "
                f"({config['block_out_channels']} vs {config['down_block_types']})"
            )
        base = self.base_block_out_channels
        if base is not None:
            if base == list(config["block_out_channels"]) or self.fusion != "modulation":
                raise ValueError(
                    f"AdaptorConfig: base_block_out_channels={base} with a trunk of {config['block_out_channels']} in "
                    f"{self.fusion} fusion: it is for trunks narrower than the base, in modulation fusion (plain "
                    "ControlNet residuals must have the base's width)"
                )
            trunk = list(config["block_out_channels"])
            if len(base) != len(trunk):
                raise ValueError(f"AdaptorConfig: base_block_out_channels={base} has another number of levels")
            if any(b < t for b, t in zip(base, trunk)) or any(b * trunk[0] != t * base[0] for b, t in zip(base, trunk)):
                raise ValueError(
                    f"AdaptorConfig: base_block_out_channels={base} does not fit a trunk of {trunk}: the base must be "
                    "at least as wide at every level, with the same ratios between levels"
                )
        channels = config.setdefault("conditioning_channels", self.hint_channels)
        if channels != self.hint_channels:
            raise ValueError(
                f"AdaptorConfig: hint_channels={self.hint_channels} but controlnet_config.conditioning_channels="
                f"{channels}; they must agree"
            )
        object.__setattr__(self, "controlnet_config", config)

    def __hash__(self) -> int:  # controlnet_config is a dict; hash its canonical JSON instead
        return hash((json.dumps(self.to_metadata(), sort_keys=True), self.format_version))

    @property
    def narrow(self) -> bool:
        """Whether the trunk is narrower than the base (its heads then map the trunk's width onto the base's)."""
        return self.base_block_out_channels is not None

    @property
    def base_channels(self) -> list[int]:
        """The base UNet's channels per level (the trunk's when it is full width)."""
        return list(self.base_block_out_channels or self.controlnet_config["block_out_channels"])

    @property
    def trunk_name(self) -> str:
        """``"full"`` or, for a narrower trunk, its width against the base's (``"160/320 channels"``)."""
        if not self.narrow:
            return "full"
        return f"{self.controlnet_config['block_out_channels'][0]}/{self.base_block_out_channels[0]} channels"

    @property
    def added_conditioning(self) -> bool:
        """Whether the trunk takes SDXL's added conditioning (a pooled text embedding and six size/crop ids)."""
        return self.controlnet_config.get("addition_embed_type") == ADDED_CONDITIONING

    @property
    def num_skips(self) -> int:
        """Number of encoder skip features (12 for SD1/SD2): conv_in, then per level its layers and downsampler."""
        levels = len(self.controlnet_config["block_out_channels"])
        return 1 + levels * self.controlnet_config["layers_per_block"] + (levels - 1)

    def to_metadata(self) -> dict[str, str]:
        """The ``spire.*`` safetensors metadata (all values strings); the numeric-channel keys only with a channel,
        so a format-1 file reads as before."""
        channel = {
            f"{META_PREFIX}numeric_tokens": str(self.numeric_tokens),
            f"{META_PREFIX}numeric_features_version": str(self.numeric_features_version),
        }
        narrow = {f"{META_PREFIX}base_block_out_channels": json.dumps(self.base_block_out_channels)}
        return {
            **(channel if self.numeric_tokens else {}),
            **(narrow if self.narrow else {}),
            f"{META_PREFIX}format_version": str(self.format_version),
            f"{META_PREFIX}fusion": self.fusion,
            f"{META_PREFIX}base_family": self.base_family,
            f"{META_PREFIX}prediction_type": self.prediction_type,
            f"{META_PREFIX}text_encoder_layer": str(self.text_encoder_layer),
            f"{META_PREFIX}prompt_grammar_version": str(self.prompt_grammar_version),
            f"{META_PREFIX}controlnet_config": json.dumps(self.controlnet_config, sort_keys=True),
            f"{META_PREFIX}hint_channels": str(self.hint_channels),
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> AdaptorConfig:
        """Parse ``to_metadata`` output; raise ``ValueError`` naming the missing or malformed key."""
        required = ("format_version", "fusion", "base_family", "prediction_type", "controlnet_config")
        missing = [f"{META_PREFIX}{key}" for key in required if f"{META_PREFIX}{key}" not in metadata]
        if missing:
            raise ValueError(f"metadata lacks {', '.join(missing)}")

        def integer(key: str, default: int | None = None) -> int:
            text = metadata.get(f"{META_PREFIX}{key}")
            if text is None and default is not None:
                return default
            try:
                return int(str(text))
            except ValueError:
                raise ValueError(f"metadata {META_PREFIX}{key}={text!r} is not an integer") from None

        version = integer("format_version")
        _check_format(version)  # checked first: a newer format may name its fields differently

        def parsed(key: str) -> Any:
            text = metadata.get(f"{META_PREFIX}{key}")
            try:
                return None if text is None else json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"metadata {META_PREFIX}{key} is not valid JSON: {error}") from None

        controlnet_config, base_channels = parsed("controlnet_config"), parsed("base_block_out_channels")
        if base_channels is not None and (
            not isinstance(base_channels, list) or not all(isinstance(c, int) and c > 0 for c in base_channels)
        ):
            raise ValueError(f"metadata {META_PREFIX}base_block_out_channels={base_channels!r} is not a list of widths")
        return cls(
            controlnet_config=controlnet_config,
            fusion=metadata[f"{META_PREFIX}fusion"],
            base_family=metadata[f"{META_PREFIX}base_family"],
            prediction_type=metadata[f"{META_PREFIX}prediction_type"],
            text_encoder_layer=metadata.get(f"{META_PREFIX}text_encoder_layer"),
            prompt_grammar_version=integer("prompt_grammar_version", GRAMMAR_VERSION),
            hint_channels=integer("hint_channels", DEFAULT_HINT_CHANNELS),
            numeric_tokens=integer("numeric_tokens", 0) if f"{META_PREFIX}numeric_tokens" in metadata else 0,
            numeric_features_version=integer("numeric_features_version", NUMERIC_FEATURES_VERSION),
            base_block_out_channels=base_channels,
            format_version=version,
        )
