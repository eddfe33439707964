"""The plan of a restoration, shared by the ComfyUI Restore node and ``SpirePipeline``: the settings
(``RestoreSettings``), output size, padding, the hint's resize, colour fix.

Kept light (torch and the prompt grammar only) so the ComfyUI adapter can import it without the pipeline.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from ..prompt import PromptBatch

COLOR_FIXES = ("none", "wavelet", "adain")
"""Colour corrections against the degraded input (``spire_core.restoration.color``)."""

HINT_RESIZE = "bicubic"
"""How the degraded image is resized to the output size for "Upsample by Nx" (the node and the pipeline)."""


def output_size(height: int, width: int, prompts: PromptBatch) -> tuple[int, int, float]:
    """(height, width, factor) of the restoration: N times the input for "Upsample by Nx" (one N per batch)."""
    factors = prompts.upsample_factors()
    if len(factors) > 1:
        raise ValueError(
            f"the restoration prompts ask for different upsample factors {sorted(factors)} within one batch; one "
            "batch has one output size"
        )
    factor = factors.pop()
    return max(1, round(height * factor)), max(1, round(width * factor)), factor


MIN_LATENT_SIDE = 4
"""Smallest latent side restoration samples and decodes (32 px under an 8x VAE): smaller images are padded
up to it (``pad_to_multiple``'s ``minimum``) and the result is cropped back; smaller tiles are refused.
Below it the decoder's tiles and a narrow UNet's normalisation layers have nothing left to work on."""


def pad_to_multiple(image: torch.Tensor, multiple: int, minimum: int = 0) -> torch.Tensor:
    """(B, C, H, W) padded at the bottom and right by reflection (replicate where too small) to multiples
    of ``multiple`` of at least ``minimum`` pixels per side."""
    height, width = image.shape[-2:]
    pad_h = max(minimum, height + (-height) % multiple) - height
    pad_w = max(minimum, width + (-width) % multiple) - width
    pad_h += (-(height + pad_h)) % multiple
    pad_w += (-(width + pad_w)) % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


def apply_color_fix(restored: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """(B, C, H, W) colour correction of ``restored`` against ``reference``: ``"none"``, ``"wavelet"``, ``"adain"``."""
    if method == "none":
        return restored
    from . import color

    fixes = {"wavelet": color.wavelet_color_fix, "adain": color.adain_color_fix}
    if method not in fixes:
        raise ValueError(f"color_fix {method!r} is unknown; expected one of {COLOR_FIXES}")
    return fixes[method](restored, reference)


@dataclass(frozen=True)
class RestoreSettings:
    """What a restoration is asked to do, checked in one place (``validate``) for the ComfyUI Restore node,
    ``SpirePipeline.restore`` and the command line.

    Attributes:
        steps: sampling steps (the paper's default 50).
        semantic_scale: w_s, guidance over the semantic prompt (1: none).
        restoration_scale: w_r, guidance of the restoration prompt against "Remove all degradation" (1: none).
        seed: seeds the initial noise.
        strength: adaptor strength s in f*(1 + s*gamma) + s*beta; 0 gives the base model alone.
        sampler: the caller's sampler name (``SpirePipeline``: "ddim"/"euler"; ComfyUI: any of its samplers).
        color_fix: ``COLOR_FIXES``.
        tile_size: pixels per tile side (0: the whole image at once); at least ``MIN_LATENT_SIDE`` latent cells.
        tile_overlap: pixels neighbouring tiles share, blended; less than half of ``tile_size``.
        upsample: "Upsample by Nx" makes the output N times the input (False: keep the input's size).
        denoise: in (0, 1]; 1 starts from pure noise (the paper), less from the degraded image noised to that
            level (KSampler's denoise).
    """

    steps: int = 50
    semantic_scale: float = 5.0
    restoration_scale: float = 1.0
    seed: int = 0
    strength: float = 1.0
    sampler: str = "ddim"
    color_fix: str = "none"
    tile_size: int = 0
    tile_overlap: int = 64
    upsample: bool = True
    denoise: float = 1.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | argparse.Namespace) -> RestoreSettings:
        """The settings named in ``options`` (a mapping or parsed command-line arguments with the fields' names;
        other entries are ignored, missing fields keep their defaults)."""
        values = options if isinstance(options, Mapping) else vars(options)
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def validate(self, downscale: int = 8) -> RestoreSettings:
        """Raise ``ValueError`` saying what is wrong and what would do (before any model runs); returns ``self``.

        Args:
            downscale: the VAE's pixels per latent cell (tile sizes are checked in latent cells).
        """
        numbers = {
            "semantic_scale": self.semantic_scale,
            "restoration_scale": self.restoration_scale,
            "strength": self.strength,
            "denoise": self.denoise,
        }
        bad = [f"{name}={value!r}" for name, value in numbers.items() if not math.isfinite(value)]
        if bad:
            raise ValueError(f"{', '.join(bad)}: expected a finite number; NaN and infinity are not settings")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if not 0.0 < self.denoise <= 1.0:
            raise ValueError(f"denoise must be in (0, 1] (1: start from pure noise, the paper), got {self.denoise}")
        if self.color_fix not in COLOR_FIXES:
            raise ValueError(f"color_fix {self.color_fix!r} is unknown; expected one of {COLOR_FIXES}")
        if self.tile_size < 0 or self.tile_overlap < 0:
            raise ValueError(
                f"tile_size ({self.tile_size}) and tile_overlap ({self.tile_overlap}) must not be negative"
            )
        if self.tile_size and self.tile_size < MIN_LATENT_SIDE * downscale:
            raise ValueError(
                f"tile_size ({self.tile_size}) must be 0 (the whole image at once) or at least "
                f"{MIN_LATENT_SIDE * downscale} pixels ({MIN_LATENT_SIDE} latent cells of this VAE); e.g. tile_size "
                "512 with tile_overlap 64"
            )
        if self.tile_size and self.tile_overlap * 2 >= self.tile_size:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be less than half of tile_size ({self.tile_size}); e.g. "
                "tile_size 512 with tile_overlap 64"
            )
        return self

    def latent_tiles(self, downscale: int = 8) -> tuple[int, int]:
        """(tile, overlap) in latent cells; (0, 0) without tiling."""
        if not self.tile_size:
            return 0, 0
        return self.tile_size // downscale, self.tile_overlap // downscale
