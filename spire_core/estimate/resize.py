"""Upsample factor of a photo that was shrunk and enlarged back: the period of its interpolation.

An image enlarged by a factor f with an interpolating filter (bilinear, bicubic) is, between the old samples, a
fixed weighting of them: its second differences grow and shrink with the position of each new pixel relative to
the old grid, a pattern of period f pixels along each axis (Gallagher, "Detection of linear and cubic interpolation
in JPEG compressed images", 2005). The mean absolute second difference per column (and per row) is therefore
periodic with period f, and its spectrum has a line at the frequency 1/f cycles per pixel. The line is looked for
on the sum of both axes' spectra, refined by a parabola, and must stand ``PERIOD_PEAK_RATIO`` times above the
median of the spectrum around it (a smooth spectrum, as blur leaves, has no such line). JPEG's 8x8 blocks are
periodic too (1/8 and its harmonics): those frequencies are left out when the image reads as JPEG. A factor f
below 2 aliases to the frequency ``1 - 1/f`` and reads as ``1 / (1 - 1/f)``: factors from 2 up are read right.
Blind spot: exactly 2x with half-pixel-centred filters puts every new pixel a quarter pixel from the old grid, all
of them mirror images of one another, so there is no period and nothing is found (2.1x and 1.9x are found).
"""

from __future__ import annotations

import math

import torch

from .common import Estimate, luma

PERIOD_PEAK_RATIO = 8.0
"""A period counts when its spectral line stands this many times above the median of the spectrum around it."""

MAX_FACTOR = 16.0
"""Largest factor looked for (the lowest frequency searched is 1 / MAX_FACTOR)."""

UPSAMPLE_NAMED = 1.5
"""Factors below this are not named."""


def _profile(plane: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean absolute second difference along ``dim``, per position along it (length n - 2)."""
    second = plane.diff(n=2, dim=dim).abs()
    return second.mean(1 - dim)


def period_spectrum(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequencies in cycles per pixel, magnitude): the summed spectra of both axes' second-difference profiles,
    on a common grid of 1/2048 cycles per pixel up to 0.5."""
    plane = luma(image)
    n_fft = 4096
    total = torch.zeros(n_fft // 2 + 1, dtype=torch.float64)
    for dim in (0, 1):
        profile = _profile(plane, dim)
        profile = (profile - profile.mean()) / profile.mean().clamp_min(1e-12)
        window = torch.hann_window(profile.numel(), periodic=False, dtype=torch.float64)
        spectrum = torch.fft.rfft(profile * window, n=n_fft).abs() / window.sum()
        total += spectrum
    frequencies = torch.fft.rfftfreq(n_fft, dtype=torch.float64)
    return frequencies, total


def estimate_upsample(image: torch.Tensor, jpeg_grid: bool = False) -> Estimate:
    """The factor by which one (C, H, W) float64 image in [0, 1] was shrunk and enlarged back (1.0: none found).

    Args:
        image: the photo.
        jpeg_grid: the image reads as JPEG on an intact 8x8 grid: the block period's frequencies are ignored.

    Returns:
        An ``Estimate``; ``present`` when a period stands out and the factor is at least ``UPSAMPLE_NAMED``.
    """
    frequencies, magnitude = period_spectrum(image)
    usable = frequencies >= 1.0 / MAX_FACTOR
    resolution = 2.0 / min(image.shape[-2:])  # the main lobe's half-width of the Hann window
    if jpeg_grid:
        for k in range(1, 5):
            usable &= (frequencies - k / 8).abs() > resolution
    if not bool(usable.any()):
        return Estimate(1.0, 0.0, False, "image too small for a period search")
    lobe = max(2, math.ceil(resolution / float(frequencies[1])))  # bins of the Hann main lobe
    best, k, ratio = -1.0, 0, 0.0
    peaks = usable.clone()
    peaks[1:-1] &= (magnitude[1:-1] >= magnitude[:-2]) & (magnitude[1:-1] >= magnitude[2:])
    for index in torch.nonzero(peaks).flatten().tolist():
        if magnitude[index] <= best:
            continue
        # against its own neighbourhood (a smooth spectrum, as blur gives, has no line standing out of it)
        f = float(frequencies[index])
        near = (
            (frequencies >= 0.75 * f)
            & (frequencies <= 1.33 * f)
            & ((torch.arange(magnitude.numel()) - index).abs() > 2 * lobe)
        )
        if int(near.sum()) < 4:
            continue
        local = float(magnitude[near].median())
        score = float(magnitude[index]) / max(local, 1e-12)
        if score >= PERIOD_PEAK_RATIO and float(magnitude[index]) > best:
            best, k, ratio = float(magnitude[index]), index, score
        elif best < 0 and score > ratio:
            ratio = score
    if best < 0:
        confidence = min(1.0, max(0.0, 1.0 - ratio / PERIOD_PEAK_RATIO))
        return Estimate(1.0, confidence, False, f"no interpolation period (best line {ratio:.1f}x its surroundings)")
    frequency = float(frequencies[k])
    if 0 < k < magnitude.numel() - 1:
        left, mid, right = float(magnitude[k - 1]), float(magnitude[k]), float(magnitude[k + 1])
        curvature = left - 2 * mid + right
        if curvature < 0:
            frequency += 0.5 * (left - right) / curvature * float(frequencies[1])
    factor = 1.0 / max(frequency, 1e-9)
    confidence = min(1.0, (ratio - PERIOD_PEAK_RATIO) / PERIOD_PEAK_RATIO + 0.5)
    present = factor >= UPSAMPLE_NAMED and math.isfinite(factor)
    return Estimate(
        factor, confidence, present, f"interpolation period {factor:.2f} px (line {ratio:.0f}x its surroundings)"
    )


__all__ = ["UPSAMPLE_NAMED", "estimate_upsample", "period_spectrum"]
