"""The frozen parts of a Stable Diffusion base: UNet, VAE, text encoder(s), tokenizer(s) and the DDPM noise
schedule, loaded offline, for training and for restoring outside ComfyUI (``SpirePipeline``).

The UNet comes from ``load_base_unet`` (diffusers folder or single-file checkpoint). The VAE, text encoder and
tokenizer come from a diffusers folder (``vae/``, ``text_encoder/``, ``tokenizer/``) with ``local_files_only=True``
and safetensors weights only; the noise schedule from its ``scheduler/scheduler_config.json`` when present, else
Stable Diffusion's own (``SD_SCHEDULER_CONFIG``).

Prompts are encoded the way diffusers' Stable Diffusion pipelines do, ``text_encoder(ids).last_hidden_state``
over 77 padded tokens, with the prompt read as ComfyUI reads it (emphasis weights, long prompts in further
77-token windows: ``prompt_windows``), so a prompt means the same in a workflow and here. That output is each
family's own layer (SD2 diffusers folders ship OpenCLIP-H already cut to its penultimate layer), so it is used
for the semantic prompt and, unless the adaptor asks for another layer, for the restoration prompt too.

SDXL bases have a second text encoder (``text_encoder_2``, ``tokenizer_2``): prompts are encoded as diffusers'
SDXL pipelines do, the penultimate hidden states of both encoders side by side (2048 values per token) and the
second encoder's projected pooled embedding, which goes with the six size/crop ids (``sdxl_time_ids``) into the
UNet's added conditioning (``added_conditioning``). The adaptor gets the same from the *restoration* prompt.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base_unet import BaseModelInfo, load_base_unet
from .config import ADDED_CONDITIONING, DEFAULT_TEXT_ENCODER_LAYER
from .prompt_windows import encode_windows, window_length
from .safetensors_header import BaseModelFileError

LOGGER = logging.getLogger(__name__)

SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
"""Stable Diffusion 1.x/2.x training noise schedule (used when the base has no ``scheduler/`` folder)."""


@dataclass
class FrozenComponents:
    """Everything training needs besides the adaptor; all frozen.

    Attributes:
        unet: diffusers ``UNet2DConditionModel``.
        vae: diffusers ``AutoencoderKL``.
        text_encoder: transformers ``CLIPTextModel``.
        tokenizer: transformers ``CLIPTokenizer`` (or anything with the same ``__call__``).
        scheduler_config: ``DDPMScheduler`` config (prediction type set to the base's).
        info: where the UNet came from and what it predicts.
        text_encoder_2, tokenizer_2: SDXL bases only: transformers ``CLIPTextModelWithProjection`` and its
            tokenizer; ``None`` otherwise.
    """

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler_config: dict[str, Any]
    info: BaseModelInfo
    text_encoder_2: nn.Module | None = None
    tokenizer_2: Any = None

    def freeze(self) -> FrozenComponents:
        """Eval mode and ``requires_grad_(False)`` on every model; returns ``self``."""
        for model in (self.unet, self.vae, *self.text_encoders):
            model.eval().requires_grad_(False)
        return self

    @property
    def text_encoders(self) -> tuple[nn.Module, ...]:
        """The text encoder(s): one, or SDXL's two."""
        return tuple(e for e in (self.text_encoder, self.text_encoder_2) if e is not None)

    @property
    def sdxl(self) -> bool:
        """Whether the UNet takes SDXL's added conditioning (then ``text_encoder_2`` is set)."""
        return self.info.unet_config.get("addition_embed_type") == ADDED_CONDITIONING

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_downscale(self) -> int:
        """Pixels per latent cell along each side (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        """Latents are ``vae.encode(x).latent_dist * scaling_factor`` (0.18215 for SD1/SD2)."""
        return float(self.vae.config.scaling_factor)


def _variant(folder: Path, stem: str) -> str | None:
    """``None`` when ``folder/stem.safetensors`` exists, else the variant of ``stem.<variant>.safetensors``."""
    if (folder / f"{stem}.safetensors").is_file():
        return None
    variants = sorted(p.name.split(".")[-2] for p in folder.glob(f"{stem}.*.safetensors"))
    if not variants:
        raise BaseModelFileError(
            f"{folder} has no {stem}.safetensors: SPIRE loads safetensors weights only (never pickled .bin files). "
            "Convert the model to safetensors first."
        )
    return variants[0]


def _require(folder: Path, sub: str, what: str) -> Path:
    path = folder / sub
    if not (path / "config.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise BaseModelFileError(
            f"{folder} has no {sub}/ with a config: model.components must be a diffusers folder with vae/, "
            f"text_encoder/ and tokenizer/ subfolders ({what} missing). For a single-file checkpoint, point "
            "model.components at the diffusers folder of the same model family."
        )
    return path


def load_components(
    base: str | Path,
    components: str | Path | None = None,
    prediction_type: str | None = None,
    dtype: torch.dtype | None = None,
) -> FrozenComponents:
    """Load the frozen models offline.

    Args:
        base: diffusers folder or single-file SD checkpoint (for the UNet).
        components: diffusers folder for VAE, text encoder, tokenizer (and scheduler); ``None``: ``base``.
        prediction_type: override the base's prediction type.
        dtype: dtype for the UNet and text encoder (the VAE stays float32: SD's VAE overflows in fp16).

    Raises:
        BaseModelFileError: a missing folder or subfolder, non-safetensors weights, or a file that is not a base
            model, with what was expected.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    base = Path(base)
    folder = Path(components) if components is not None else base
    if not folder.is_dir():
        raise BaseModelFileError(
            f"model.components is needed: {base} is a single file, and the VAE, text encoder and tokenizer are "
            "read from a diffusers folder (vae/, text_encoder/, tokenizer/) of the same model family"
            if components is None
            else f"model.components {folder} is not a folder; expected a diffusers folder"
        )
    unet, info = load_base_unet(base, prediction_type=prediction_type, dtype=dtype)
    _require(folder, "vae", "VAE")
    _require(folder, "text_encoder", "text encoder")
    _require(folder, "tokenizer", "tokenizer")
    sdxl = unet.config.get("addition_embed_type") == ADDED_CONDITIONING
    if sdxl:
        _require(folder, "text_encoder_2", "SDXL's second text encoder")
        _require(folder, "tokenizer_2", "SDXL's second tokenizer")

    def weights(cls: Any, sub: str, stem: str) -> nn.Module:  # safetensors only, offline, any variant
        options = {"local_files_only": True, "use_safetensors": True, "variant": _variant(folder / sub, stem)}
        return cls.from_pretrained(str(folder), subfolder=sub, **options)

    text_encoder_2 = tokenizer_2 = None
    try:
        vae = weights(AutoencoderKL, "vae", "diffusion_pytorch_model")
        text_encoder = weights(CLIPTextModel, "text_encoder", "model")
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer", local_files_only=True)
        if sdxl:
            text_encoder_2 = weights(CLIPTextModelWithProjection, "text_encoder_2", "model")
            tokenizer_2 = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer_2", local_files_only=True)
    except (OSError, ValueError) as error:
        raise BaseModelFileError(f"{folder}: cannot load the VAE/text encoder/tokenizer offline: {error}") from None
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_file.is_file() and base.is_dir():
        scheduler_file = base / "scheduler" / "scheduler_config.json"
    scheduler_config = dict(SD_SCHEDULER_CONFIG)
    if scheduler_file.is_file():
        scheduler_config = {
            k: v for k, v in json.loads(scheduler_file.read_text(encoding="utf-8")).items() if not k.startswith("_")
        }
    declared = scheduler_config.get("prediction_type", info.prediction_type)
    if declared != info.prediction_type:
        LOGGER.warning(
            "%s predicts %s (%s) but %s says %s; using %s. Pass the prediction type explicitly if that is wrong "
            "(SD 2.x 768-v models are v_prediction).",
            base,
            info.prediction_type,
            info.prediction_type_source,
            scheduler_file,
            declared,
            info.prediction_type,
        )
    scheduler_config["prediction_type"] = info.prediction_type
    if dtype is not None:
        for encoder in (text_encoder, text_encoder_2):
            if encoder is not None:
                nn.Module.to(encoder, dtype=dtype)
    return FrozenComponents(
        unet, vae.float(), text_encoder, tokenizer, scheduler_config, info, text_encoder_2, tokenizer_2
    ).freeze()


def make_noise_scheduler(config: dict[str, Any]):  # noqa: ANN201 - diffusers type
    """A diffusers ``DDPMScheduler`` from a config dict (nothing is downloaded)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config)


def _encoder_at(encoder: nn.Module, layer: str, device: torch.device):  # noqa: ANN202 - a hidden-state reader
    """ids -> (hidden states at ``layer``, pooled or None) for one encoder (see ``encode_prompts``)."""

    def hidden(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = ids.to(device)
        if layer == "sdxl":  # penultimate hidden states, projected pooled embedding (CLIP-G's; CLIP-L's unused)
            out = encoder(ids, output_hidden_states=True)
            return out.hidden_states[-2], getattr(out, "text_embeds", None)
        if layer == "family":
            return encoder(ids).last_hidden_state, None
        hidden_states = encoder(ids, output_hidden_states=True).hidden_states[-2]  # clip skip, normalised
        return encoder.text_model.final_layer_norm(hidden_states), None

    return hidden


def encode_prompts(
    components: FrozenComponents,
    prompts: list[str],
    layer: str = "family",
    device: torch.device | None = None,
    pooled: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """CLIP hidden states for ``prompts`` (and, with ``pooled``, SDXL's pooled embeddings).

    Prompts are read in ComfyUI's prompt language (``prompt_windows``): ``(text:1.2)`` emphasis, and a prompt
    longer than one 77-token window continues in further windows (never cut off); prompts of different window
    counts are repeated to a common length (``tile_contexts``).

    Args:
        components: holds the tokenizer(s) and text encoder(s).
        prompts: B strings (``""`` is the empty prompt).
        layer: ``"family"`` (the folder's own output, see the module docstring), ``"last"`` or ``"penultimate"``
            in the sense of ``AdaptorConfig.text_encoder_layer`` for this base's family.
        device: where the token ids go (default: the text encoder's device).
        pooled: also return the pooled embeddings: (B, P) for SDXL bases (the first window's), ``None`` for the
            others.

    Returns:
        (B, 77 * C, D) hidden states in the text encoder's dtype (C = 1 for prompts of up to 75 tokens); with
        ``pooled``, (hidden states, pooled).

    Raises:
        PromptTextError: a prompt weight that is not a finite number, or a textual-inversion embedding.
    """
    tokenizer, encoder = components.tokenizer, components.text_encoder
    device = device or next(encoder.parameters()).device
    if components.sdxl:
        if layer not in ("family", "penultimate"):
            raise ValueError(
                f"text-encoder layer {layer!r} is not used with SDXL bases: SDXL reads both encoders at the "
                "penultimate layer (in diffusers and in ComfyUI alike); train with model.text_encoder_layer unset"
            )
        hidden_l, _ = encode_windows(tokenizer, _encoder_at(encoder, "sdxl", device), prompts)
        hidden_g, pooled_embeds = encode_windows(
            components.tokenizer_2, _encoder_at(components.text_encoder_2, "sdxl", device), prompts
        )
        if hidden_l.shape[1] != hidden_g.shape[1]:  # the two tokenizers read the prompt into different windows
            raise ValueError(
                f"SDXL's two tokenizers split these prompts into {hidden_l.shape[1] // window_length(tokenizer)} and "
                f"{hidden_g.shape[1] // window_length(tokenizer)} windows; tokenizer/ and tokenizer_2/ must share one "
                "vocabulary (CLIP's)"
            )
        hidden = torch.cat([hidden_l, hidden_g], dim=-1)
        return (hidden, pooled_embeds) if pooled else hidden
    family_layer = DEFAULT_TEXT_ENCODER_LAYER[components.info.base_family]
    if layer in ("family", family_layer):
        layer = "family"
    elif layer != "penultimate":  # a family whose own layer is the last: "penultimate" is the one before
        raise ValueError(
            f"text-encoder layer {layer!r} cannot be computed for base family {components.info.base_family!r}: its "
            f"diffusers text encoder already ends at the {family_layer} layer; train with model.text_encoder_layer "
            f"unset (= {family_layer!r})"
        )
    hidden, _ = encode_windows(tokenizer, _encoder_at(encoder, layer, device), prompts)
    return (hidden, None) if pooled else hidden


def sdxl_time_ids(
    height: int, width: int, crop_top: int = 0, crop_left: int = 0, target: tuple[int, int] | None = None
) -> torch.Tensor:
    """SDXL's six size/crop conditioning numbers for an output of ``height`` x ``width`` pixels: original size,
    crop corner, target size (``target`` defaults to the original size), as a (1, 6) float tensor (the order of
    diffusers' ``time_ids`` and of ComfyUI's SDXL ``encode_adm``)."""
    target_h, target_w = target or (height, width)
    return torch.tensor([[height, width, crop_top, crop_left, target_h, target_w]], dtype=torch.float32)


def added_conditioning(
    components: FrozenComponents, pooled: torch.Tensor | None, height: int, width: int
) -> dict[str, torch.Tensor] | None:
    """SDXL's added conditioning for a batch with these pooled embeddings and an output of ``height`` x ``width``
    pixels (no crop, target = original, as at inference): ``{"text_embeds", "time_ids"}``; ``None`` for a base
    without it. Training uses the same for its crops, so the frozen UNet is always told "uncropped, this size"."""
    if not components.sdxl:
        return None
    if pooled is None:
        raise ValueError("an SDXL base needs the prompts' pooled embeddings (encode_prompts(..., pooled=True))")
    time_ids = sdxl_time_ids(height, width).to(device=pooled.device, dtype=pooled.dtype)
    return {"text_embeds": pooled, "time_ids": time_ids.expand(pooled.shape[0], -1)}
