"""What every estimator shares: the result type, input checks, luma and Gaussian smoothing.

Images are BCHW float tensors in [0, 1] (design.md section 4.1); the estimators work on the CPU in float64, one
image at a time, and read the colour channels only (an alpha channel is dropped: it is not part of the photo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..degradation import validate_images
from ..degradation.kernels import gaussian_1d

MIN_SIDE = 32
"""Smallest image side the estimators read (four JPEG blocks; smaller images carry too few statistics)."""

LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights, as libjpeg's RGB -> YCbCr conversion uses them."""


@dataclass(frozen=True)
class Estimate:
    """One estimated degradation level.

    Attributes:
        value: the level in the restoration prompt's units (noise sigma on the [0, 1] scale, blur sigma in pixels,
            JPEG quality 1..100, upsample factor >= 1); 0 (1.0 for upsample, 100 for JPEG) when none was found.
        confidence: in [0, 1]: how well the image supports the reading (0: nothing to read it on).
        present: the level is confidently present and above the level a prompt would name
            (``suggest_prompt`` names exactly the present ones).
        note: a short reason, for the preview text and the JSON.
    """

    value: float
    confidence: float
    present: bool
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "value": round(float(self.value), 4),
            "confidence": round(float(self.confidence), 3),
            "present": bool(self.present),
            "note": self.note,
        }


def check_image(images: torch.Tensor, name: str = "image") -> torch.Tensor:
    """The colour channels of a valid (B, C, H, W) batch as float64 on the CPU; raises naming ``name`` otherwise.

    Accepts C = 1 (grey), 3 (RGB) or 4 (RGBA: the alpha channel is dropped), values finite and within [0, 1],
    sides of at least ``MIN_SIDE`` pixels.
    """
    validate_images(images, name)
    height, width = images.shape[-2:]
    if min(height, width) < MIN_SIDE:
        raise ValueError(
            f"{name} is {width}x{height} px; estimating its degradation needs at least {MIN_SIDE}x{MIN_SIDE} px"
        )
    colour = images[:, :3] if images.shape[1] == 4 else images
    return colour.detach().to("cpu", torch.float64)


def luma(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (H, W): BT.601 luma of an RGB image, the plane itself for a grey one (same scale)."""
    if image.shape[0] == 1:
        return image[0]
    weights = torch.tensor(LUMA, dtype=image.dtype).view(3, 1, 1)
    return (image * weights).sum(0)


def smooth(planes: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, H, W) planes blurred by a sampled Gaussian of ``sigma`` px (separable, reflect borders), float64."""
    if sigma <= 0:
        return planes
    radius = max(1, math.ceil(3 * sigma))
    taps = gaussian_1d(sigma, 2 * radius + 1).to(planes)
    x = planes.unsqueeze(1)
    pad_h, pad_w = min(radius, x.shape[-2] - 1), min(radius, x.shape[-1] - 1)
    x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    if pad_w < radius or pad_h < radius:
        x = F.pad(x, (radius - pad_w, radius - pad_w, radius - pad_h, radius - pad_h), mode="replicate")
    x = F.conv2d(x, taps.view(1, 1, 1, -1))
    x = F.conv2d(x, taps.view(1, 1, -1, 1))
    return x.squeeze(1)
