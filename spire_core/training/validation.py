"""Validation restorations: a fixed set of degraded images restored with a short DDIM run and saved as a grid.

The set is fixed for a run (centre crops, degradations drawn from ``validation.seed``, full restoration
prompts, captions as semantic prompts), so grids from different steps are comparable. Sampling is DDIM
(eta 0) from pure Gaussian noise (paper #16) with classifier-free guidance over the semantic prompt only
(paper #17): ``eps = eps(z, y, c_r, "") + w * (eps(z, y, c_r, c_s) - eps(z, y, c_r, ""))``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..degradation import DegradationSpec, degrade, prompt_for, sample_params
from ..imageio import save_image
from ..models import SpireAdaptor, predict_noise
from ..models.components import FrozenComponents, encode_prompts
from ..prompt import restoration_features
from ..restoration import combine_guidance
from .config import DataConfig
from .data import ImageRecord, choose_caption, decode_crop
from .seeds import generator_for


@dataclass
class ValidationSet:
    """Fixed validation inputs.

    Attributes:
        clean: (N, 3, R, R) float32 in [0, 1], CPU.
        degraded: (N, 3, R, R) float32 in [0, 1], CPU.
        restoration_prompts, semantic_prompts: N each.
        names: N file names.
    """

    clean: torch.Tensor
    degraded: torch.Tensor
    restoration_prompts: list[str]
    semantic_prompts: list[str]
    names: list[str]


def build_validation_set(
    records: list[ImageRecord], data: DataConfig, spec: DegradationSpec, seed: int, count: int
) -> ValidationSet:
    """Centre crops of the first ``count`` decodable records, degraded with params drawn from ``seed``."""
    crops, captions, names = [], [], []
    for record in records:
        if len(crops) == count:
            break
        try:
            crop = decode_crop(record, data, generator_for(seed, "validation-crop"), center=True)
        except (OSError, ValueError, SyntaxError):
            continue
        crops.append(crop)
        captions.append(choose_caption(record, generator_for(seed, "validation-caption", len(names))))
        names.append(record.path.name)
    if not crops:
        raise ValueError("no validation image could be decoded")
    clean = torch.stack(crops).float() / 255
    params = sample_params(spec, generator_for(seed, "validation-degradation"), len(crops))
    degraded = degrade(clean, params).images
    prompts = [prompt_for(p) for p in params]
    return ValidationSet(clean, degraded, prompts, captions, names)


@torch.no_grad()
def restore(
    components: FrozenComponents,
    adaptor: SpireAdaptor,
    degraded: torch.Tensor,
    restoration_prompts: list[str],
    semantic_prompts: list[str],
    steps: int = 20,
    guidance_scale: float = 5.0,
    seed: int = 0,
    autocast: torch.autocast | None = None,
    denoise: float = 1.0,
) -> torch.Tensor:
    """Restore a batch with the adaptor: DDIM sampling, then VAE decoding.

    Args:
        components: frozen UNet, VAE, text encoder and noise-schedule config (on their devices).
        adaptor: the adaptor (eval weights in place).
        degraded: (N, 3, H, W) in [0, 1], H and W multiples of the VAE downscale.
        restoration_prompts, semantic_prompts: N each.
        steps: DDIM steps.
        guidance_scale: CFG over the semantic prompt; 1 disables it.
        seed: initial noise.
        autocast: an autocast context for mixed precision (``None``: run in the models' dtypes).
        denoise: 1 starts from pure noise; below 1 from the degraded images' latents noised to the level of
            the last ``steps`` of ``int(steps / denoise)`` timesteps (as ``SpirePipeline.restore``).

    Returns:
        (N, 3, H, W) float32 in [0, 1] on ``degraded``'s device.
    """
    from contextlib import nullcontext

    from diffusers import DDIMScheduler

    unet: nn.Module = components.unet
    device = next(unet.parameters()).device
    scheduler = DDIMScheduler.from_config({**components.scheduler_config, "clip_sample": False})
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    total = steps if denoise >= 1.0 else max(steps, int(steps / denoise))
    scheduler.set_timesteps(total, device=device)
    timesteps = scheduler.timesteps[total - steps :]
    n, _, height, width = degraded.shape
    factor = components.vae_downscale
    shape = (n, components.latent_channels, height // factor, width // factor)
    noise = torch.randn(shape, generator=generator_for(seed, "validation-noise")).to(device)
    hint = degraded.to(device)
    if total > steps:
        encoded = components.vae.encode(hint * 2 - 1).latent_dist.mean.float() * components.scaling_factor
        latents = scheduler.add_noise(encoded, noise, timesteps[:1])
    else:
        latents = noise * scheduler.init_noise_sigma
    layer = adaptor.config.text_encoder_layer
    restoration = encode_prompts(components, restoration_prompts, layer, device)
    features = restoration_features(restoration_prompts).to(device)
    semantic = encode_prompts(components, semantic_prompts, "family", device)
    guided = guidance_scale != 1.0
    if guided:
        empty = encode_prompts(components, [""] * n, "family", device)
        semantic = torch.cat([empty, semantic])
        restoration, hint = torch.cat([restoration, restoration]), torch.cat([hint, hint])
        features = torch.cat([features, features])
    with autocast or nullcontext():
        for t in timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents, latents]) if guided else latents, t)
            out = predict_noise(
                unet, adaptor, model_in, t, semantic, restoration, hint, restoration_features=features
            ).float()
            if guided:
                uncond, cond = out.chunk(2)
                out = combine_guidance(cond, uncond, None, guidance_scale, 1.0)
            latents = scheduler.step(out, t, latents).prev_sample
    vae = components.vae
    images = vae.decode(latents.float() / components.scaling_factor).sample
    return ((images.float() + 1) / 2).clamp(0, 1).to(degraded.device)


def psnr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per-image PSNR in dB of two (N, C, H, W) batches in [0, 1]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return [round(10 * math.log10(1 / max(float(m), 1e-12)), 3) for m in mse]


def save_grid(rows: list[torch.Tensor], path: str | Path) -> Path:
    """Save a grid image: each entry of ``rows`` is a (N, 3, H, W) batch laid out left to right, one row per entry
    (e.g. ``[degraded, restored, clean]``)."""
    lines = [torch.cat(list(row.float().cpu()), dim=-1) for row in rows]
    return save_image(torch.cat(lines, dim=-2), path)


def save_validation(fixed: ValidationSet, restored: torch.Tensor, folder: str | Path, step: int) -> tuple[Path, float]:
    """Write ``folder/step-XXXXXXXX.png`` (rows degraded / restored / clean) and a ``.json`` beside it with the
    prompts and per-image PSNR (dB, against the clean crops).

    Returns:
        (image path, mean PSNR of the restorations).
    """
    path = save_grid([fixed.degraded, restored, fixed.clean], Path(folder) / f"step-{step:08d}.png")
    scores = psnr(restored, fixed.clean)
    details = {
        "step": step,
        "images": fixed.names,
        "restoration_prompts": fixed.restoration_prompts,
        "semantic_prompts": fixed.semantic_prompts,
        "psnr_restored": scores,
        "psnr_degraded": psnr(fixed.degraded, fixed.clean),
    }
    path.with_suffix(".json").write_text(json.dumps(details, indent=2) + "\n", encoding="utf-8")
    return path, round(sum(scores) / len(scores), 3)
