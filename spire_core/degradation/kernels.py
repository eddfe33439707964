"""Blur-kernel synthesis (pure, deterministic) and each kernel's effective sigma.

Kernels follow the Real-ESRGAN definitions, written for torch. With ``q = x^T C^-1 x`` for a pixel
offset ``x`` (pixels) and covariance ``C = R diag(sigma_x^2, sigma_y^2) R^T`` (``R`` rotates by
``angle`` degrees):

- Gaussian (iso/aniso):       ``k = exp(-q / 2)``
- generalized (iso/aniso):    ``k = exp(-q^beta / 2)``
- plateau (iso/aniso):        ``k = 1 / (1 + q^beta)``
- sinc (circular low-pass):   ``k(r) = cutoff * J1(cutoff * r) / (2 pi r)``, ``k(0) = cutoff^2 / (4 pi)``
- motion:                     a line segment of ``length`` pixels through the centre at ``angle``
  degrees, rasterised with bilinear weights (sub-pixel accurate, point-symmetric)

Every kernel is sampled on a ``size x size`` integer grid centred on the middle pixel and normalised
to sum 1. Blurring means correlating the image with the kernel with reflect-101 borders (what
``cv2.filter2D`` does by default); all kernels here are point-symmetric, so correlation and
convolution agree.
"""

from __future__ import annotations

import math

import torch

from .params import GAUSSIAN_KERNELS, GENERALIZED_KERNELS, PLATEAU_KERNELS, BlurParams

MAX_KERNEL_SIZE = 63
"""Largest kernel side the size rules produce (sigma ~10 px for a Gaussian)."""

GAUSSIAN_SUPPORT = 3.0
"""Gaussian-family kernels extend ``GAUSSIAN_SUPPORT * max(sigma_x, sigma_y)`` pixels from the centre."""


def kernel_size_for(params_kernel: str, sigma: float = 0.0, cutoff: float = 0.0, length: float = 0.0) -> int:
    """The odd kernel size adapted to the blur strength (the rule ``sample_params`` uses).

    Gaussian family: ``2 * ceil(3 * sigma) + 1`` for the largest sigma. Sinc: ``2 * ceil(3 pi / cutoff) + 1``
    (three main-lobe widths). Motion: the smallest odd size holding the whole segment plus one pixel of
    bilinear spread. All clamped to [3, ``MAX_KERNEL_SIZE``].
    """
    if params_kernel == "sinc":
        half = math.ceil(3 * math.pi / cutoff)
    elif params_kernel == "motion":
        half = math.ceil(length / 2) + 1
    else:
        half = math.ceil(GAUSSIAN_SUPPORT * sigma)
    return int(min(max(2 * half + 1, 3), MAX_KERNEL_SIZE))


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return xx, yy


def _quadratic_form(params: BlurParams, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    theta = math.radians(params.angle)
    c, s = math.cos(theta), math.sin(theta)
    # coordinates in the kernel's own (rotated) frame
    u = c * xx + s * yy
    v = -s * xx + c * yy
    return (u / params.sigma_x) ** 2 + (v / params.sigma_y) ** 2


def _motion(params: BlurParams) -> torch.Tensor:
    size = params.size
    centre = (size - 1) / 2
    theta = math.radians(params.angle)
    # Dense, symmetric samples along the segment; each splats bilinearly onto its 4 neighbours.
    n = max(int(math.ceil(params.length * 8)), 2) | 1
    t = torch.linspace(-params.length / 2, params.length / 2, n, dtype=torch.float64)
    x = centre + t * math.cos(theta)
    y = centre + t * math.sin(theta)
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    kernel = torch.zeros(size, size, dtype=torch.float64)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi = (x0 + dx).long()
        yi = (y0 + dy).long()
        inside = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        kernel.index_put_((yi[inside], xi[inside]), w[inside], accumulate=True)
    # symmetrise exactly (floating-point splatting is symmetric only up to rounding)
    return (kernel + kernel.flip(0, 1)) / 2


def make_kernel(params: BlurParams) -> torch.Tensor:
    """The normalised ``size x size`` kernel for ``params``, float64 on the CPU (rows are y, columns x)."""
    xx, yy = _grid(params.size)
    if params.kernel in GAUSSIAN_KERNELS:
        kernel = torch.exp(-0.5 * _quadratic_form(params, xx, yy))
    elif params.kernel in GENERALIZED_KERNELS:
        kernel = torch.exp(-0.5 * _quadratic_form(params, xx, yy) ** params.beta)
    elif params.kernel in PLATEAU_KERNELS:
        kernel = 1.0 / (1.0 + _quadratic_form(params, xx, yy) ** params.beta)
    elif params.kernel == "sinc":
        r = torch.sqrt(xx**2 + yy**2)
        wc = params.cutoff
        safe_r = torch.where(r == 0, torch.ones_like(r), r)
        kernel = wc * torch.special.bessel_j1(wc * safe_r) / (2 * math.pi * safe_r)
        kernel = torch.where(r == 0, torch.full_like(r, wc**2 / (4 * math.pi)), kernel)
    elif params.kernel == "motion":
        kernel = _motion(params)
    else:  # BlurParams validates the name; this is unreachable
        raise ValueError(f"unknown kernel {params.kernel!r}")
    return kernel / kernel.sum()


def _generalized_moment_factor(beta: float) -> float:
    # For k = exp(-q^beta / 2) in 2-D, E[q] = 2^(1/beta) Gamma(2/beta) / Gamma(1/beta) (= 2 for beta = 1).
    return 2 ** (1 / beta) * math.exp(math.lgamma(2 / beta) - math.lgamma(1 / beta))


def kernel_sigma(params: BlurParams) -> float:
    """The blur's effective Gaussian sigma in pixels: the single number a "Deblur with sigma" clause carries.

    Rule (one place, documented in the README):
    - Gaussian: ``sqrt((sigma_x^2 + sigma_y^2) / 2)``, the RMS per-axis spread (= sigma when isotropic).
    - generalized Gaussian: the same RMS per-axis spread of the untruncated kernel,
      ``sqrt((sigma_x^2 + sigma_y^2) / 2 * E[q] / 2)``.
    - plateau: the RMS per-axis spread of the kernel as sampled (its untruncated variance is infinite
      for beta <= 2): ``sqrt(sum k(x) |x|^2 / 2)``.
    - sinc: the Gaussian with the same half-power frequency, ``sqrt(2 ln 2) / cutoff``.
    - motion: the RMS per-axis spread of a uniform segment, ``length / sqrt(24)``.
    """
    mean_sq = (params.sigma_x**2 + params.sigma_y**2) / 2
    if params.kernel in GAUSSIAN_KERNELS:
        return math.sqrt(mean_sq)
    if params.kernel in GENERALIZED_KERNELS:
        return math.sqrt(mean_sq * _generalized_moment_factor(params.beta) / 2)
    if params.kernel in PLATEAU_KERNELS:
        kernel = make_kernel(params)
        xx, yy = _grid(params.size)
        return float(torch.sqrt((kernel * (xx**2 + yy**2)).sum() / 2))
    if params.kernel == "sinc":
        return math.sqrt(2 * math.log(2)) / params.cutoff
    if params.kernel == "motion":
        return params.length / math.sqrt(24)
    raise ValueError(f"unknown kernel {params.kernel!r}")


def gaussian_1d(sigma: float, size: int) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (float64): the separable factor of an isotropic Gaussian kernel."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-0.5 * (r / sigma) ** 2)
    return taps / taps.sum()
