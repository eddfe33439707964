"""SPIRE restoration outside ComfyUI, with the semantics of the ComfyUI 'Restore (SPIRE)' node.

    pipe = SpirePipeline.load("sd15.safetensors", "models/spire/my_adaptor.safetensors", components="sd15-diffusers/")
    restored = pipe.restore(degraded, semantic_prompt="a zebra", restoration_prompt="Deblur with sigma 2.0")

``degraded`` is (B, 3, H, W) float in [0, 1]; the result has the same layout, at exactly H x W, or N times that
for "Upsample by Nx" (the input is then the low-resolution photo; the degraded image is resized to the output
size with bicubic interpolation before it reaches the adaptor). Inside, the image is padded at the bottom and
right by reflection to a multiple of the VAE's downscale and the output cropped back, as the node does.

Guidance: ``spire_core.restoration.guidance.combine_guidance`` (the formula, shared with the ComfyUI guider) over the
predictions for (c_s, c_r), ("", c_r) and ("", c_r0), with c_s the semantic prompt, c_r the restoration prompt
and c_r0 = "Remove all degradation" the null restoration prompt.
With ``restoration_scale`` w_r = 1 this is ordinary classifier-free guidance over c_s (two predictions per
step; one when w_s is 1 too). The semantic prompt is encoded at the text encoder's own layer for the base family,
the restoration prompts at the adaptor's ``text_encoder_layer``.

Sampling starts from pure Gaussian noise drawn on the CPU from ``torch.Generator().manual_seed(seed)`` with shape
(B, 4, h, w): the same numbers as ComfyUI's ``comfy.sample.prepare_noise`` for that seed. Samplers are diffusers
schedulers built from the base's noise schedule (``scheduler/scheduler_config.json``, else Stable Diffusion's):

- ``"ddim"``: ``DDIMScheduler`` (eta 0) on the variance-preserving latent; the start is the noise itself.
- ``"euler"``: ``EulerDiscreteScheduler`` on the variance-exploding latent; the start is the noise times
  sqrt(1 + sigma_first^2), the same point as DDIM's start (diffusers' own ``init_noise_sigma`` drops the "+1"
  for "trailing"/"linspace" spacings; ComfyUI keeps it whenever sampling starts at the largest sigma).

DDIM with eta 0 and Euler are the same method written in two coordinate systems, so for the same timesteps they
agree up to rounding, provided DDIM's last step also lands on the clean latent (``set_alpha_to_one=True``).
``scheduler_options`` overrides the scheduler config; ``COMFY_SIMPLE_SCHEDULE`` gives exactly the sigmas of
ComfyUI's "simple" scheduler (and Euler with ``{"timestep_spacing": "linspace"}`` those of "normal" whenever
999 / (steps - 1) is a whole number). docs/evaluation.md lists the correspondences.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..models import (
    BaseModelFileError,
    SpireAdaptor,
    check_fits_unet,
    load_adaptor,
    predict_noise,
)
from ..models.components import FrozenComponents, added_conditioning, encode_prompts, load_components
from ..models.prompt_windows import tile_contexts
from ..prompt import BLIND_PROMPT, restoration_batch, restoration_features
from .guidance import combine_guidance
from .plan import HINT_RESIZE, MIN_LATENT_SIDE, RestoreSettings, apply_color_fix, output_size, pad_to_multiple
from .tiles import tiled_predict

SAMPLERS = ("ddim", "euler")
"""Samplers of ``SpirePipeline.restore``: DDIM (eta 0) and Euler, both deterministic."""


NULL_RESTORATION_PROMPT = BLIND_PROMPT
"""The restoration prompt the restoration scale measures against ("Remove all degradation")."""

COMFY_SIMPLE_SCHEDULE: dict[str, Any] = {"timestep_spacing": "trailing", "set_alpha_to_one": True}
"""``scheduler_options`` under which both samplers visit exactly the timesteps of ComfyUI's "simple" scheduler
(999, 999 - 1000/steps, ..., then the clean latent), so ``sampler="ddim"`` or ``"euler"`` here reproduces the
ComfyUI node with sampler "ddim" or "euler" and scheduler "simple"."""

_DIFFUSERS_SAMPLERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler"}


class SpirePipeline:
    """A base Stable Diffusion model (frozen UNet, VAE, text encoder, tokenizer) plus a SPIRE adaptor.

    Build it with ``SpirePipeline.load`` (files) or directly from loaded parts. Everything runs under
    ``torch.no_grad`` on the models' device; nothing is downloaded.

    Attributes:
        components: the frozen base parts and the noise-schedule config (``models.components.FrozenComponents``).
        adaptor: the ``SpireAdaptor``.
    """

    def __init__(self, components: FrozenComponents, adaptor: SpireAdaptor, freeze: bool = True) -> None:
        """``freeze``: put the adaptor in eval mode without gradients (False: use it as it is, e.g. a training
        run's adaptor restoring its validation set between steps)."""
        info = components.info
        check_fits_unet(adaptor.config, info.unet_config)
        if adaptor.config.prediction_type != info.prediction_type:
            raise ValueError(
                f"the adaptor was made for a {adaptor.config.prediction_type} base but this base predicts "
                f"{info.prediction_type}; use the base model the adaptor was trained from"
            )
        self.components = components
        self.adaptor = adaptor.eval().requires_grad_(False) if freeze else adaptor

    @classmethod
    def load(
        cls,
        base: str | os.PathLike,
        adaptor: str | os.PathLike | SpireAdaptor,
        components: str | os.PathLike | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        prediction_type: str | None = None,
    ) -> SpirePipeline:
        """Load a base model and an adaptor, offline.

        Args:
            base: a diffusers Stable Diffusion folder, or a single-file SD1.x/SD2.x/SDXL ``.safetensors`` checkpoint
                (its UNet is used; see ``spire_core.models.load_base_unet``).
            adaptor: a SPIRE adaptor ``.safetensors`` file (validated before loading), or a ``SpireAdaptor`` (used
                in place: cast to ``dtype``, put in eval mode and moved with the pipeline).
            components: a diffusers folder of the same model family holding ``vae/``, ``text_encoder/``,
                ``tokenizer/`` (and optionally ``scheduler/``); required for a single-file ``base``, defaults to
                ``base`` for a folder.
            device: where the models run (default CPU).
            dtype: dtype of the UNet, text encoder and adaptor (default float32; the VAE always runs in float32).
            prediction_type: override the base's prediction type (``"epsilon"`` or ``"v_prediction"``).

        Raises:
            BaseModelFileError, AdaptorFileError: a file that is missing or is not what it should be, with what was
                expected and where it belongs; ValueError: an adaptor that does not fit the base.
        """
        base = Path(base)
        if not base.exists():
            raise BaseModelFileError(
                f"base model {base} does not exist: give a diffusers Stable Diffusion folder or a single-file "
                "SD1.x/SD2.x/SDXL .safetensors checkpoint"
            )
        if components is None and not base.is_dir():
            raise BaseModelFileError(
                f"{base} is a single-file checkpoint, so components= (--components) is needed: a diffusers folder "
                "of the same model family with vae/, text_encoder/ and tokenizer/ subfolders"
            )
        dtype = dtype or torch.float32
        parts = load_components(base, components, prediction_type=prediction_type, dtype=dtype)
        if isinstance(adaptor, SpireAdaptor):
            spire = adaptor.to(dtype=dtype)
        else:
            spire = load_adaptor(adaptor, dtype=dtype)
        pipe = cls(parts, spire)
        return pipe.to(device) if device is not None else pipe

    def to(self, device: torch.device | str) -> SpirePipeline:
        """Move every model to ``device``; returns ``self``."""
        parts = self.components
        for model in (parts.unet, parts.vae, *parts.text_encoders, self.adaptor):
            model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.components.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.components.unet.parameters()).dtype

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], layer: str = "family") -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, T, D) text-encoder hidden states and (N, P) pooled embeddings (SDXL bases; ``None`` for others);
        ``layer`` is ``"family"`` (the base's own) or the adaptor's ``"last"``/``"penultimate"`` (see
        ``spire_core.models.components.encode_prompts``)."""
        return encode_prompts(self.components, list(prompts), layer, self.device, pooled=True)

    def make_scheduler(self, sampler: str = "ddim", options: Mapping[str, Any] | None = None):  # noqa: ANN201
        """A fresh diffusers scheduler for ``sampler`` from the base's noise schedule plus ``options``."""
        import diffusers

        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is unknown; expected one of {SAMPLERS}")
        config = {**self.components.scheduler_config, "clip_sample": False, **dict(options or {})}
        config["prediction_type"] = self.components.info.prediction_type
        return getattr(diffusers, _DIFFUSERS_SAMPLERS[sampler]).from_config(config)

    def noise_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Shape of the initial noise for ``batch`` images padded to ``height`` x ``width`` pixels."""
        factor = self.components.vae_downscale
        return batch, self.components.latent_channels, math.ceil(height / factor), math.ceil(width / factor)

    def _predict(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        scheduler,  # noqa: ANN001 - diffusers type
        conditions: tuple,
        hint: torch.Tensor,
        scales: tuple[float, float],
        strength: float,
    ) -> torch.Tensor:
        """One guided model output for ``latents`` at timestep ``t``; ``conditions`` holds the semantic and
        restoration embeddings, the restoration prompts' numeric features and, for SDXL bases, the UNet's and the
        adaptor's added conditioning (else ``None``) of k = 1, 2 or 3 branches stacked along the batch (see
        ``restore``)."""
        semantic, restoration, features, semantic_added, restoration_added = conditions
        count = semantic.shape[0] // latents.shape[0]
        model_in = scheduler.scale_model_input(latents, t).to(self.dtype)
        out = predict_noise(
            self.components.unet,
            self.adaptor,
            torch.cat([model_in] * count),
            t,
            semantic,
            restoration,
            torch.cat([hint] * count),
            strength,
            unet_kwargs=None if semantic_added is None else {"added_cond_kwargs": semantic_added},
            restoration_features=features,
            restoration_added_cond=restoration_added,
        ).float()
        if count == 1:
            return out
        parts = out.chunk(count)
        return combine_guidance(parts[1], parts[0], parts[2] if count == 3 else None, *scales)

    @torch.no_grad()
    def restore(
        self,
        image: torch.Tensor,
        semantic_prompt: str | Sequence[str] = "",
        restoration_prompt: str | Sequence[str] = BLIND_PROMPT,
        steps: int = 50,
        semantic_scale: float = 5.0,
        restoration_scale: float = 1.0,
        seed: int = 0,
        strength: float = 1.0,
        sampler: str = "ddim",
        color_fix: str = "none",
        *,
        noise: torch.Tensor | None = None,
        scheduler_options: Mapping[str, Any] | None = None,
        upsample: bool = True,
        denoise: float = 1.0,
        tile_size: int = 0,
        tile_overlap: int = 64,
        settings: RestoreSettings | None = None,
    ) -> torch.Tensor:
        """Restore a batch of degraded images.

        Args:
            image: (B, 3, H, W) float in [0, 1] (a 4th, alpha channel is ignored), any device.
            semantic_prompt: what the images show; one string for all, or B strings. ``""``: blind.
            restoration_prompt: SPIRE grammar; one prompt for all, or one per image (a list, or one per line).
            steps: sampling steps (the paper's default 50).
            semantic_scale: w_s, guidance over the semantic prompt (1: none).
            restoration_scale: w_r, guidance of the restoration prompt against "Remove all degradation" (1: none).
            seed: seeds the initial noise (ignored when ``noise`` is given).
            strength: adaptor strength s in f*(1 + s*gamma) + s*beta; 0 gives the base model alone.
            sampler: ``"ddim"`` or ``"euler"``.
            color_fix: ``"none"``, ``"wavelet"`` or ``"adain"`` against the (resized) degraded input.
            noise: (B, 4, h, w) unit Gaussian noise to start from instead of drawing it (h, w: the padded size
                divided by 8, see ``noise_shape``).
            scheduler_options: overrides of the scheduler config (e.g. ``COMFY_SIMPLE_SCHEDULE``,
                ``{"timestep_spacing": "trailing"}``).
            upsample: when a prompt says "Upsample by Nx", make the output N times the input (the input is the
                low-resolution photo). False keeps the input size: for inputs already resized back to the target
                size, as the degradation pipeline and the evaluation benchmark produce them.
            denoise: in (0, 1]. 1 starts from pure noise (the paper). Below 1, restoration starts from the
                degraded image's latent noised to that level: the last ``steps`` of ``int(steps / denoise)``
                timesteps, as ComfyUI's KSampler counts its ``denoise``; fewer model calls, closer to the input.
            tile_size: pixels per tile side for large photos (0: the whole image at once): each model call is made
                per overlapping tile with the degraded image cropped to it and the predictions blended
                (``spire_core.restoration.tiles``, as the ComfyUI node); memory follows the tile.
            tile_overlap: pixels neighbouring tiles share, less than half of ``tile_size``.
            settings: a ``RestoreSettings`` holding all of the above (steps ... tile_overlap); when given, it
                replaces those keywords.

        Returns:
            (B, 3, H', W') float32 in [0, 1] on ``image``'s device: H' x W' is H x W, or N times that.

        Raises:
            ValueError: an empty or malformed batch, prompts the grammar rejects, mismatched prompt counts, an
                unknown sampler or colour fix, or noise of the wrong shape.
        """
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] not in (3, 4):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a (B, 3, H, W) float tensor in [0, 1], got {shape}")
        if image.shape[0] == 0:
            raise ValueError("image is an empty batch; give at least one degraded image")
        if settings is None:
            settings = RestoreSettings(
                steps=steps,
                semantic_scale=semantic_scale,
                restoration_scale=restoration_scale,
                seed=seed,
                strength=strength,
                sampler=sampler,
                color_fix=color_fix,
                tile_size=tile_size,
                tile_overlap=tile_overlap,
                upsample=upsample,
                denoise=denoise,
            )
        ratio = self.components.vae_downscale
        settings.validate(ratio)
        steps, seed, strength, sampler = settings.steps, settings.seed, settings.strength, settings.sampler
        semantic_scale, restoration_scale = settings.semantic_scale, settings.restoration_scale
        color_fix, upsample, denoise = settings.color_fix, settings.upsample, settings.denoise
        batch = image.shape[0]
        prompts = restoration_batch(restoration_prompt, batch)
        semantic_prompts = [semantic_prompt] if isinstance(semantic_prompt, str) else list(semantic_prompt)
        if len(semantic_prompts) not in (1, batch):
            raise ValueError(f"{len(semantic_prompts)} semantic prompts for {batch} images; give 1 or {batch}")
        device = self.device
        degraded = image[:, :3].to(device=device, dtype=torch.float32)
        height, width = degraded.shape[-2:]
        if upsample:
            height, width, _ = output_size(height, width, prompts)
        hint = degraded
        if (height, width) != tuple(degraded.shape[-2:]):
            hint = F.interpolate(degraded, size=(height, width), mode=HINT_RESIZE, align_corners=False).clamp(0, 1)
        padded = pad_to_multiple(hint, ratio, MIN_LATENT_SIDE * ratio)  # tiny photos padded up, cropped back
        shape = self.noise_shape(batch, padded.shape[-2], padded.shape[-1])
        if noise is None:
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {shape} for this image batch")

        def repeat(encoded: tuple[torch.Tensor, torch.Tensor | None]) -> list[torch.Tensor | None]:
            return [e if e is None or e.shape[0] != 1 else e.expand(batch, *e.shape[1:]) for e in encoded]

        def stack(*parts: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
            # contexts (a long semantic prompt's windows beside the empty prompt's one) repeated to one length
            return [
                None if p[0] is None else torch.cat(tile_contexts(p) if p[0].dim() == 3 else p) for p in zip(*parts)
            ]

        layer = self.adaptor.config.text_encoder_layer
        restoration = repeat(self.encode_prompts(prompts.texts, layer))
        features = repeat((prompts.features().to(device),))[0]
        semantic = repeat(self.encode_prompts(semantic_prompts))
        # Branches, batched into one model call: ("", c_r), (c_s, c_r) and, for w_r != 1, ("", c_r0).
        if restoration_scale != 1.0:
            empty = repeat(self.encode_prompts([""]))
            null = repeat(self.encode_prompts([NULL_RESTORATION_PROMPT], layer))
            null_features = repeat((restoration_features([NULL_RESTORATION_PROMPT]).to(device),))[0]
            semantic, restoration = stack(empty, semantic, empty), stack(restoration, restoration, null)
            features = torch.cat([features, features, null_features])
        elif semantic_scale != 1.0:
            empty = repeat(self.encode_prompts([""]))
            semantic, restoration = stack(empty, semantic), stack(restoration, restoration)
            features = torch.cat([features, features])
        # SDXL: the size ids of the whole padded output, for every tile (as ComfyUI encodes them once per run)
        size = padded.shape[-2:]
        semantic_added = added_conditioning(self.components, semantic[1], *size)
        restoration_added = added_conditioning(self.components, restoration[1], *size)
        if semantic_added is not None:
            semantic_added = {key: value.to(self.dtype) for key, value in semantic_added.items()}
        conditions = (
            semantic[0].to(self.dtype),
            restoration[0].to(self.dtype),
            features,
            semantic_added,
            restoration_added,
        )

        scheduler = self.make_scheduler(sampler, scheduler_options)
        total = steps if denoise >= 1.0 else max(steps, int(steps / denoise))  # as KSampler counts denoise
        scheduler.set_timesteps(total, device=device)
        timesteps = scheduler.timesteps[total - steps :]
        noise = noise.to(device=device, dtype=torch.float32)
        if total > steps:  # the degraded image's latent, noised to the first timestep kept
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(total - steps)
            encoded = self.components.vae.encode((2 * padded - 1).to(self.components.vae.dtype)).latent_dist.mode()
            start_latent = encoded.float() * self.components.scaling_factor
            latents = scheduler.add_noise(start_latent, noise, timesteps[:1])
        elif sampler == "euler":
            latents = noise * float(torch.sqrt(1 + scheduler.sigmas[0].double() ** 2))
        else:
            latents = noise * float(scheduler.init_noise_sigma)
        hint_in, scales = padded.to(self.dtype), (semantic_scale, restoration_scale)
        tile, overlap = settings.latent_tiles(ratio)
        for t in timesteps:

            def predict(latent: torch.Tensor, window: tuple[int, ...] | None, t: torch.Tensor = t) -> torch.Tensor:
                hint_tile = hint_in
                if window is not None:  # the degraded image cropped to the tile
                    top, left, h, w = (ratio * v for v in window[:4])
                    hint_tile = hint_in[..., top : top + h, left : left + w]
                return self._predict(latent, t, scheduler, conditions, hint_tile, scales, strength)

            out = tiled_predict(predict, latents, tile, overlap)
            latents = scheduler.step(out, t, latents).prev_sample
        vae = self.components.vae
        pixels = vae.decode(latents.float() / self.components.scaling_factor).sample
        pixels = ((pixels.float() + 1) / 2).clamp(0, 1)[..., :height, :width]
        restored = apply_color_fix(pixels, hint, color_fix)
        return restored.clamp(0, 1).to(image.device)
