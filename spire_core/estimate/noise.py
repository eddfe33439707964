"""Noise sigma of a photo without its clean original.

The finest detail a photo has is, in its flattest places, mostly its noise. Each colour plane is filtered by
Immerkaer's 3x3 mask (the second difference across both axes, scaled to unit gain for white noise: it cancels
every plane and every ramp along either axis, so smooth shading leaves almost nothing); the filtered planes are cut
into ``NOISE_BLOCK``-pixel blocks and each block's root mean square is one reading of the noise, inflated by
whatever texture the block has. The ``NOISE_QUANTILE`` of the readings over the image comes from its flattest
blocks; on pure white noise that quantile reads a known fraction of the sigma (measured once by simulation,
``_quantile_gain``), which is divided out. Blocks whose tones lie near 0 or 1 are left out where the noise would
have clipped, and what clipping remains is corrected with the exact standard deviation of a clipped normal.

JPEG removes part of the noise before anyone can read it, and the prompt names the sigma *before* the JPEG (as
the degradation pipeline's training pairs do). When a JPEG quality is known (``estimate_jpeg_quality``) the
reading is taken inside the 8x8 blocks only (block boundaries carry JPEG's own artefacts) and mapped back through
the same reading of simulated noise passed through the real codec at that quality (``jpeg_response``).

Poisson (shot) noise is read as the sigma of the flattest tones it finds; the prompt's Poisson convention is the
sigma at mid-grey, which the two agree on for mid tones.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ..degradation.jpeg import jpeg_roundtrip_uint8
from .common import Estimate

NOISE_BLOCK = 16
"""Side of the blocks whose RMS filter response is one noise reading (pixels)."""

NOISE_QUANTILE = 0.1
"""Quantile of the block readings taken as the noise (the flattest tenth of the image)."""

NOISE_NAMED = 0.02
"""Noise below this sigma is not named (a clean photo's own grain and fine texture read up to about 0.02)."""

MIN_BLOCKS = 16
"""Block readings needed for a confident estimate."""

_MASK = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], dtype=torch.float64) / 6.0

SIMULATION_SEED = 20240601
"""Seed of the simulations that calibrate the quantile gain and the JPEG response (fixed: results are exact)."""

JPEG_SIGMAS = (0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3)
"""Noise sigmas the JPEG response is simulated at."""


def _filtered(planes: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, H-2, W-2): Immerkaer's mask, unit gain for white noise (output (i, j) centres on pixel
    (i + 1, j + 1))."""
    return F.conv2d(planes.unsqueeze(1), _MASK.view(1, 1, 3, 3).to(planes)).squeeze(1)


def block_readings(planes: torch.Tensor, grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(readings, tones): per ``NOISE_BLOCK`` block of each plane, the RMS filter response and the mean tone.

    With ``grid`` (the JPEG 8x8 grid's row and column offset) only responses whose 3x3 support lies inside one
    JPEG block count.
    """
    response = _filtered(planes)
    weight = torch.ones_like(response[:1])
    if grid is not None:
        rows = (torch.arange(response.shape[-2]) + 1 - grid[0]) % 8
        cols = (torch.arange(response.shape[-1]) + 1 - grid[1]) % 8
        inside = ((rows >= 1) & (rows <= 6)).view(-1, 1) & ((cols >= 1) & (cols <= 6)).view(1, -1)
        weight = inside.to(response).unsqueeze(0)
    b = NOISE_BLOCK
    h, w = response.shape[-2] // b * b, response.shape[-1] // b * b
    energy = F.avg_pool2d((response[:, :h, :w] ** 2 * weight[:, :h, :w]).unsqueeze(1), b).flatten(1)
    count = F.avg_pool2d(weight[:, :h, :w].unsqueeze(1), b).flatten(1)
    tones = F.avg_pool2d(planes[:, 1 : h + 1, 1 : w + 1].unsqueeze(1), b).flatten(1)
    return (energy / count.clamp_min(1e-12)).sqrt().flatten(), tones.flatten()


@lru_cache(maxsize=4)
def _quantile_gain(grid: bool) -> float:
    """What ``NOISE_QUANTILE`` of the block readings of pure white noise of sigma 1 reads (simulated, seeded)."""
    generator = torch.Generator().manual_seed(SIMULATION_SEED)
    noise = torch.randn(4, 256, 256, generator=generator, dtype=torch.float64)
    readings, _ = block_readings(noise, (0, 0) if grid else None)
    return float(torch.quantile(readings, NOISE_QUANTILE))


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def clipped_std_ratio(tones: torch.Tensor, sigma: float) -> torch.Tensor:
    """Standard deviation of ``clip(t + sigma * Z, 0, 1)`` over ``sigma`` for each tone t (Z standard normal)."""
    if sigma <= 0:
        return torch.ones_like(tones)
    a, b = (0 - tones) / sigma, (1 - tones) / sigma
    pa, pb = _normal_cdf(a), _normal_cdf(b)
    da, db = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi), torch.exp(-0.5 * b * b) / math.sqrt(2 * math.pi)
    inside = pb - pa
    mean = (1 - pb) + tones * inside + sigma * (da - db)
    square = (1 - pb) + tones**2 * inside + 2 * tones * sigma * (da - db) + sigma**2 * (inside + a * da - b * db)
    return (square - mean**2).clamp_min(0).sqrt() / sigma


def read_noise(planes: torch.Tensor, grid: tuple[int, int] | None = None) -> tuple[float, int]:
    """(sigma as read, blocks read on): the white-noise sigma of (N, H, W) planes in [0, 1] (before any JPEG
    correction), corrected for the quantile's bias and for clipping."""
    readings, tones = block_readings(planes, grid)
    gain = _quantile_gain(grid is not None)
    sigma, used = 0.0, 0
    margin = 0.02
    for _ in range(3):  # leave out tones the current sigma would clip; then correct the rest
        keep = (tones > margin) & (tones < 1 - margin)
        if int(keep.sum()) < MIN_BLOCKS:  # a dark or bright photo: its least clipped tones
            order = torch.argsort((tones - 0.5).abs())
            keep = torch.zeros_like(keep)
            keep[order[: max(MIN_BLOCKS, readings.numel() // 4)]] = True
        values = readings[keep]
        level = float(torch.quantile(values, NOISE_QUANTILE)) / gain
        flat = keep & (readings <= torch.quantile(values, NOISE_QUANTILE))
        ratio = float(clipped_std_ratio(tones[flat], level).mean()) if level > 0 else 1.0
        sigma, used = level / max(ratio, 0.2), int(keep.sum())
        margin = max(0.02, 2.0 * sigma)
    return sigma, used


@lru_cache(maxsize=128)
def jpeg_response(quality: int, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(sigmas, readings): what ``read_noise`` (inside the 8x8 blocks) reads on mid-grey carrying white noise of
    each of ``JPEG_SIGMAS`` after the real codec at ``quality`` (simulated once per quality, seeded)."""
    generator = np.random.default_rng(SIMULATION_SEED + quality)
    readings = []
    for sigma in JPEG_SIGMAS:
        image = np.clip(0.5 + sigma * generator.standard_normal((128, 128, channels)), 0, 1)
        decoded = jpeg_roundtrip_uint8(np.round(image * 255).astype(np.uint8), quality)
        planes = torch.from_numpy(decoded.astype(np.float64) / 255).permute(2, 0, 1)
        readings.append(read_noise(planes, (0, 0))[0])
    return JPEG_SIGMAS, tuple(readings)


def undo_jpeg(reading: float, quality: int, channels: int) -> tuple[float, float]:
    """(sigma before the JPEG, confidence): ``reading`` mapped back through ``jpeg_response``. The confidence
    falls where the codec left too little of the noise to tell levels apart (a flat response)."""
    sigmas, readings = jpeg_response(quality, channels)
    # the response is monotone up to simulation noise: make it so, then invert by linear interpolation
    mono = np.maximum.accumulate(np.asarray(readings))
    if reading <= mono[0]:
        return 0.0, 1.0
    if reading >= mono[-1]:
        return float(sigmas[-1] * reading / max(mono[-1], 1e-12)), 0.5
    k = int(np.searchsorted(mono, reading))
    lo, hi = mono[k - 1], mono[k]
    t = (reading - lo) / max(hi - lo, 1e-12)
    sigma = sigmas[k - 1] + t * (sigmas[k] - sigmas[k - 1])
    slope = (hi - lo) / (sigmas[k] - sigmas[k - 1])  # readings per unit of sigma; 1 without JPEG
    return float(sigma), float(min(1.0, max(0.0, slope / 0.5)))


def estimate_noise(image: torch.Tensor, jpeg_quality: int | None = None, grid: tuple[int, int] = (0, 0)) -> Estimate:
    """The noise sigma (on the [0, 1] scale) one (C, H, W) float64 image in [0, 1] carries.

    Args:
        image: the photo.
        jpeg_quality: the quality it was last JPEG-compressed with, when known: the sigma is then the one before
            that compression (the prompt's convention).
        grid: the JPEG 8x8 grid's (row, column) offset (``estimate_jpeg_quality`` finds it), used with ``jpeg_quality``.

    Returns:
        An ``Estimate``; ``present`` when the sigma is at least ``NOISE_NAMED``.
    """
    reading, blocks = read_noise(image, grid if jpeg_quality else None)
    confidence = min(1.0, blocks / (4 * MIN_BLOCKS))
    note = f"read on the flattest of {blocks} blocks"
    sigma = reading
    if jpeg_quality:
        sigma, kept = undo_jpeg(reading, int(jpeg_quality), image.shape[0])
        confidence *= kept
        note += f", corrected for JPEG quality {int(jpeg_quality)} (read {reading:.3f})"
    return Estimate(sigma, confidence, sigma >= NOISE_NAMED and confidence >= 0.3, note)


__all__ = ["NOISE_NAMED", "block_readings", "clipped_std_ratio", "estimate_noise", "jpeg_response", "read_noise"]
