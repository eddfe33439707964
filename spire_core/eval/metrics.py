"""Full-reference image metrics that run offline: PSNR and SSIM on BCHW float images in [0, 1]."""

from __future__ import annotations

import math

import torch


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """PSNR in dB between two images (or batches) on the [0, ``peak``] scale; ``inf`` when identical."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)
