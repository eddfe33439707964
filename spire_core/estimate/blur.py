"""Blur sigma of a photo without its sharp original: the re-blur gradient ratio at its edges.

At a step edge blurred by a Gaussian of sigma s, the gradient peaks at ``A / (sqrt(2 pi) s)``; blurring once more
by ``s0`` lowers the peak to ``A / (sqrt(2 pi) sqrt(s^2 + s0^2))``, so the ratio R of the two peaks gives
``s = s0 / sqrt(R^2 - 1)`` whatever the edge's contrast (Zhuo and Sim, "Defocus map estimation from a single
image", 2011). The luma is first smoothed by ``PRESMOOTH`` px (so noise and the sampling of fine edges matter
less; the known pre-smoothing is taken out again), edges are the local maxima of the gradient along its own
direction among the strongest ``EDGE_SHARE`` of the image and well above the noise, and the image's blur is a low
quantile (``EDGE_QUANTILE``) of the per-edge sigmas: the sharpest edges are the ones in focus, wider ones are
shading, shadows and out-of-focus background the photographer left there. What a sharp photo's sharpest edges
still measure (lens, demosaicing, their own shape) is ``INTRINSIC_SIGMA``; it is taken out in quadrature.
"""

from __future__ import annotations

import math

import torch

from .common import Estimate, luma, smooth

PRESMOOTH = 1.0
"""Gaussian pre-smoothing (px) before the gradients are taken."""

REBLUR = 2.0
"""The second, known blur (px) whose effect on the gradient peaks measures the first."""

EDGE_SHARE = 0.05
"""Share of the image (by gradient strength) edges are looked for in."""

EDGE_NOISE_RATIO = 8.0
"""An edge's gradient must exceed the smoothed noise's gradient standard deviation this many times."""

EDGE_QUANTILE = 0.5
"""Quantile of the per-edge sigmas taken as the image's blur (its sharpest edges)."""

MIN_EDGES = 50
"""Edge points needed for a confident estimate."""

INTRINSIC_SIGMA = 0.6
"""What the sharpest edges of an unblurred photo measure (px), taken out in quadrature (calibrated on sharp
photos: see ``tests/core/test_estimate.py``)."""

BLUR_NAMED = 0.8
"""Blur below this sigma (px) is not named: sharp photos' edges differ by that much among themselves."""

GRADIENT_NOISE_GAIN = 0.2
"""Standard deviation of the central-difference gradient of white noise of sigma 1 after ``PRESMOOTH``
(measured; see the tests)."""


def _gradient(plane: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences (H-2, W-2) of a plane (H, W), on the interior."""
    gx = (plane[1:-1, 2:] - plane[1:-1, :-2]) / 2
    gy = (plane[2:, 1:-1] - plane[:-2, 1:-1]) / 2
    return gx, gy


def edge_sigmas(image: torch.Tensor, noise_sigma: float = 0.0) -> torch.Tensor:
    """(E,) the blur sigma (px, before ``INTRINSIC_SIGMA`` is taken out) at each edge point of a (C, H, W) image."""
    plane = luma(image).unsqueeze(0)
    first = smooth(plane, PRESMOOTH)[0]
    second = smooth(plane, math.hypot(PRESMOOTH, REBLUR))[0]
    gx, gy = _gradient(first)
    magnitude = torch.hypot(gx, gy)
    hx, hy = _gradient(second)
    reblurred = torch.hypot(hx, hy)
    border = 3 + math.ceil(3 * math.hypot(PRESMOOTH, REBLUR))
    inner = magnitude[border:-border, border:-border]
    if inner.numel() == 0:
        return torch.empty(0, dtype=torch.float64)
    # local maxima along the gradient direction (quantised to 4 directions)
    angle = torch.atan2(gy, gx)
    direction = (torch.round(angle / (math.pi / 4)) % 4).long()
    offsets = ((0, 1), (1, 1), (1, 0), (1, -1))
    peak = torch.zeros_like(magnitude, dtype=torch.bool)
    padded = torch.nn.functional.pad(magnitude.unsqueeze(0), (1, 1, 1, 1)).squeeze(0)
    h, w = magnitude.shape
    for d, (dy, dx) in enumerate(offsets):
        ahead = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        behind = padded[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        peak |= (direction == d) & (magnitude >= ahead) & (magnitude > behind)
    keep = torch.zeros_like(peak)
    keep[border:-border, border:-border] = True
    threshold = max(
        float(torch.quantile(inner.flatten(), 1 - EDGE_SHARE)),
        EDGE_NOISE_RATIO * GRADIENT_NOISE_GAIN * noise_sigma,
        1e-3,
    )
    keep &= peak & (magnitude > threshold)
    ratio = magnitude[keep] / reblurred[keep].clamp_min(1e-12)
    ratio = ratio[ratio > 1.0 + 1e-6]
    measured = REBLUR / torch.sqrt(ratio * ratio - 1)  # the pre-smoothed edge's sigma
    return torch.sqrt((measured * measured - PRESMOOTH**2).clamp_min(0))


def estimate_blur(image: torch.Tensor, noise_sigma: float = 0.0, known_sigma: float = 0.0) -> Estimate:
    """The Gaussian blur sigma (pixels) of one (C, H, W) float64 image in [0, 1].

    Args:
        image: the photo.
        noise_sigma: its noise sigma, when known: edges must stand out of it.
        known_sigma: blur already explained by another degradation (an upsampling's own softness), taken out in
            quadrature like the photo's intrinsic sharpness.

    Returns:
        An ``Estimate``; ``present`` when the sigma is at least ``BLUR_NAMED``.
    """
    sigmas = edge_sigmas(image, noise_sigma)
    if sigmas.numel() < 8:
        return Estimate(0.0, 0.0, False, "no edges to read the blur on")
    edge = float(torch.quantile(sigmas, EDGE_QUANTILE))
    sigma = math.sqrt(max(edge * edge - INTRINSIC_SIGMA**2 - known_sigma**2, 0.0))
    confidence = min(1.0, sigmas.numel() / MIN_EDGES)
    note = f"sharpest edges {edge:.2f} px over {sigmas.numel()} edge points"
    return Estimate(sigma, confidence, sigma >= BLUR_NAMED and confidence >= 0.3, note)


__all__ = ["BLUR_NAMED", "edge_sigmas", "estimate_blur"]
