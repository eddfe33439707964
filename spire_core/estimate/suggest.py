"""``suggest_prompt``: read every degradation off a photo and write the restoration prompt that names them.

Order matters, because the degradations hide one another: the JPEG quality is read first (and where its 8x8 grid
lies), then the upsample factor (leaving the JPEG block period out), then the noise (inside the JPEG blocks and
corrected back to its level before the JPEG), then the blur (edges standing out of that noise, less the softness an
upsampling by the found factor brings by itself). Only levels that are confidently present and above the level a
prompt would name make it into the prompt; every estimate is returned with its confidence either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch

from ..degradation.resize import apply_resize, resized_size
from ..prompt import RestorationRequest, quantize, render
from .blur import EDGE_QUANTILE, edge_sigmas, estimate_blur
from .common import Estimate, check_image
from .jpeg import estimate_jpeg_quality
from .noise import estimate_noise
from .resize import estimate_upsample

KEYS = ("upsample", "deblur", "denoise", "dejpeg")
"""The estimates, by restoration-prompt clause."""


@dataclass(frozen=True)
class Estimates:
    """What one photo reads as: one ``Estimate`` per restoration-prompt clause."""

    upsample: Estimate
    deblur: Estimate
    denoise: Estimate
    dejpeg: Estimate

    def request(self, noise_scale: float = 1.0, blur_scale: float = 1.0) -> RestorationRequest:
        """The restoration request naming the present levels (noise and blur multiplied by their scales; a level
        that rounds to nothing is left out), at printed precision."""
        values = {}
        if self.upsample.present and round(self.upsample.value, 1) > 1.0:
            values["upsample"] = self.upsample.value
        if self.deblur.present and round(self.deblur.value * blur_scale, 1) > 0:
            values["deblur"] = self.deblur.value * blur_scale
        if self.denoise.present and round(self.denoise.value * noise_scale, 2) > 0:
            values["denoise"] = min(self.denoise.value * noise_scale, 1.0)
        if self.dejpeg.present:
            values["dejpeg"] = int(round(self.dejpeg.value))
        return quantize(RestorationRequest(**values))

    def to_dict(self) -> dict:
        return {key: getattr(self, key).to_dict() for key in KEYS}

    def summary(self) -> str:
        """One short line per clause, for a preview."""
        lines = []
        for key, unit in zip(KEYS, ("x", " px", "", "")):
            e = getattr(self, key)
            state = "present" if e.present else "not named"
            lines.append(f"{key}: {e.value:.3g}{unit} ({state}, confidence {e.confidence:.2f}) {e.note}".rstrip())
        return "\n".join(lines)


def _synthetic_edges(size: int = 256, seed: int = 7) -> torch.Tensor:
    """(1, 1, size, size) float: random axis-aligned rectangles of random grey levels (ideal step edges)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.full((size, size), 0.5, dtype=torch.float64)
    for _ in range(40):
        y0, x0 = torch.randint(0, size - 16, (2,), generator=generator).tolist()
        h, w = torch.randint(12, size // 2, (2,), generator=generator).tolist()
        image[y0 : y0 + h, x0 : x0 + w] = float(torch.rand(1, generator=generator)) * 0.8 + 0.1
    return image.view(1, 1, size, size)


@lru_cache(maxsize=64)
def resize_softness(factor: float) -> float:
    """The blur (px, as ``estimate_blur`` reads it on ideal steps) that shrinking by ``factor`` and enlarging back
    brings by itself: measured on seeded synthetic step edges with the degradation pipeline's own resize, the
    softest of its filter pairs (so an upsampling alone is not also named as blur)."""
    if factor <= 1.0:
        return 0.0
    edges = _synthetic_edges().float()
    softest = 0.0
    for down in ("area", "bilinear", "bicubic"):
        small = apply_resize(edges, resized_size(256, 256, 1.0 / factor), down)
        for up in ("bilinear", "bicubic"):
            back = apply_resize(small, (256, 256), up).clamp(0, 1).double()[0]
            sigmas = edge_sigmas(back)
            if sigmas.numel():
                softest = max(softest, float(torch.quantile(sigmas, EDGE_QUANTILE)))
    return softest


def estimate_one(image: torch.Tensor) -> Estimates:
    """The ``Estimates`` of one (C, H, W) float64 image in [0, 1] (C = 1 or 3), at least 32 px a side."""
    jpeg, grid = estimate_jpeg_quality(image)
    upsample = estimate_upsample(image, jpeg_grid=jpeg.present)
    noise = estimate_noise(image, int(jpeg.value) if jpeg.present else None, grid)
    known = resize_softness(round(upsample.value, 1)) if upsample.present else 0.0
    blur = estimate_blur(image, noise_sigma=noise.value, known_sigma=known)
    return Estimates(upsample=upsample, deblur=blur, denoise=noise, dejpeg=jpeg)


def estimate_degradation(images: torch.Tensor, name: str = "image") -> list[Estimates]:
    """The ``Estimates`` of each image of a (B, C, H, W) batch in [0, 1] (C = 1, 3 or 4: alpha is ignored).

    Raises:
        TypeError, ValueError: naming ``name``: not a BCHW float tensor, a NaN, infinite or out-of-range value, or
            a side under 32 px.
    """
    batch = check_image(images, name)
    return [estimate_one(image) for image in batch]


def suggest_prompt(
    image: torch.Tensor, noise_scale: float = 1.0, blur_scale: float = 1.0, name: str = "image"
) -> tuple[str, Estimates]:
    """(restoration prompt, estimates) for one photo, a (1, C, H, W) or (C, H, W) float tensor in [0, 1].

    The prompt names exactly the confidently present degradations in canonical wording (``render``); it is ``""``
    when the photo reads as clean. ``noise_scale`` and ``blur_scale`` multiply the suggested noise and blur sigmas
    (below 1 keeps some grain or softness).
    """
    if isinstance(image, torch.Tensor) and image.dim() == 3:
        image = image.unsqueeze(0)
    if isinstance(image, torch.Tensor) and image.dim() == 4 and image.shape[0] != 1:
        raise ValueError(f"{name}: suggest_prompt takes one image, got a batch of {image.shape[0]}")
    for label, value in (("noise_scale", noise_scale), ("blur_scale", blur_scale)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
    estimates = estimate_degradation(image, name)[0]
    request = estimates.request(noise_scale, blur_scale)
    return ("" if request.is_empty() else render(request)), estimates


def suggest_for_file(path: str | Path, noise_scale: float = 1.0, blur_scale: float = 1.0) -> tuple[str, Estimates]:
    """``suggest_prompt`` for an image file; a JPEG file's quality is read exactly from its quantisation tables
    (and replaces the pixel reading, which then only decides the noise correction)."""
    from ..imageio import load_image
    from .jpeg import quality_from_file

    image = load_image(path)
    _, estimates = suggest_prompt(image, noise_scale, blur_scale, name=str(path))
    try:
        exact = quality_from_file(path)
    except ValueError:  # not a JPEG file
        exact = None
    if exact is not None and exact.confidence >= 0.5:
        estimates = replace(estimates, dejpeg=exact)
    request = estimates.request(noise_scale, blur_scale)
    return ("" if request.is_empty() else render(request)), estimates


__all__ = ["Estimates", "estimate_degradation", "estimate_one", "resize_softness", "suggest_for_file", "suggest_prompt"]
