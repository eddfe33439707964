"""Validation restorations: a fixed set of degraded images restored with a short DDIM run and saved as a grid.

The set is fixed for a run (centre crops, degradations drawn from ``validation.seed``, full restoration
prompts, captions as semantic prompts), so grids from different steps are comparable. Restoration goes through
``SpirePipeline`` (``spire_core.restoration``): DDIM (eta 0) from pure Gaussian noise (paper #16) with
classifier-free guidance over the semantic prompt only (paper #17).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..degradation import DegradationSpec, degrade, prompt_for, sample_params
from ..imageio import save_image
from ..models import SpireAdaptor
from ..models.components import FrozenComponents
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
    restoration_scale: float = 1.0,
) -> torch.Tensor:
    """Restore a batch with the adaptor through ``SpirePipeline`` (DDIM, the paper's sampler; no second sampler):
    the pipeline over the training run's own models, left as they are (no freezing, no moving).

    Args:
        components: frozen UNet, VAE, text encoder and noise-schedule config (on their devices).
        adaptor: the adaptor (eval weights in place).
        degraded: (N, 3, H, W) in [0, 1], already at their final size ("Upsample by Nx" does not enlarge them).
        restoration_prompts, semantic_prompts: N each.
        steps: DDIM steps.
        guidance_scale: CFG over the semantic prompt; 1 disables it.
        seed: the initial noise's stream (``seeds.generator_for(seed, "validation-noise")``).
        autocast: an autocast context for mixed precision (``None``: run in the models' dtypes).
        denoise: 1 starts from pure noise; below 1 from the degraded images' latents noised to that level
            (``SpirePipeline.restore``).
        restoration_scale: w_r, guidance of the restoration prompts against "Remove all degradation" (1: none).

    Returns:
        (N, 3, H, W) float32 in [0, 1] on ``degraded``'s device.
    """
    from contextlib import nullcontext

    from ..restoration.pipeline import SpirePipeline

    pipe = SpirePipeline(components, adaptor, freeze=False)
    n, _, height, width = degraded.shape
    noise = torch.randn(pipe.noise_shape(n, height, width), generator=generator_for(seed, "validation-noise"))
    with autocast or nullcontext():
        return pipe.restore(
            degraded,
            semantic_prompt=list(semantic_prompts),
            restoration_prompt=list(restoration_prompts),
            steps=steps,
            semantic_scale=guidance_scale,
            restoration_scale=restoration_scale,
            noise=noise,
            upsample=False,
            denoise=denoise,
        )


def psnr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per-image PSNR in dB of two (N, C, H, W) batches in [0, 1] (``eval.metrics.psnr_per_image``, rounded),
    capped at 120 dB so that identical pairs stay plain JSON numbers."""
    from ..eval.metrics import psnr_per_image

    return [round(min(float(v), 120.0), 3) for v in psnr_per_image(a.float(), b.float())]


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
