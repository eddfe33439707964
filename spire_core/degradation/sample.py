"""``sample_params``: the only code in the degradation pipeline that draws random numbers."""

from __future__ import annotations

import torch

from .kernels import kernel_size_for
from .params import (
    GAUSSIAN_KERNELS,
    GENERALIZED_KERNELS,
    PLATEAU_KERNELS,
    BlurParams,
    DegradationParams,
    JpegParams,
    NoiseParams,
    ResizeParams,
    StageParams,
)
from .spec import BlurSpec, DegradationSpec, JpegSpec, NoiseSpec, ResizeSpec, StageSpec

SEED_LIMIT = 2**53
"""Noise seeds are drawn below 2**53 so they survive JSON readers that parse numbers as doubles."""


class _Draw:
    """Scalar draws from one torch.Generator, in a fixed order."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def uniform(self, low: float, high: float) -> float:
        u = torch.rand((), generator=self.generator, dtype=torch.float64, device=self.generator.device).item()
        return low + (high - low) * u

    def bernoulli(self, p: float) -> bool:
        return self.uniform(0.0, 1.0) < p

    def choice(self, weighted: tuple[tuple[str, float], ...]) -> str:
        total = sum(w for _, w in weighted)
        u = self.uniform(0.0, total)
        acc = 0.0
        for key, weight in weighted:
            acc += weight
            if u < acc:
                return key
        return next(key for key, weight in reversed(weighted) if weight > 0)

    def integer(self, low: int, high: int) -> int:
        """Uniform integer in [low, high] inclusive."""
        return int(torch.randint(low, high + 1, (), generator=self.generator, device=self.generator.device).item())


def _sample_blur(spec: BlurSpec, draw: _Draw) -> BlurParams | None:
    if not draw.bernoulli(spec.prob):
        return None
    kernel = draw.choice(spec.kernels)
    if kernel == "sinc":
        cutoff = draw.uniform(*spec.sinc_cutoff)
        return BlurParams(kernel="sinc", size=kernel_size_for("sinc", cutoff=cutoff), cutoff=cutoff)
    if kernel == "motion":
        length = draw.uniform(*spec.motion_length)
        angle = draw.uniform(0.0, 180.0)
        return BlurParams(kernel="motion", size=kernel_size_for("motion", length=length), length=length, angle=angle)
    isotropic = kernel == "iso" or kernel.endswith("_iso")
    sigma_x = draw.uniform(*spec.sigma)
    sigma_y = sigma_x if isotropic else draw.uniform(*spec.sigma)
    angle = 0.0 if isotropic else draw.uniform(0.0, 180.0)
    if kernel in GENERALIZED_KERNELS:
        beta = draw.uniform(*spec.beta_generalized)
    elif kernel in PLATEAU_KERNELS:
        beta = draw.uniform(*spec.beta_plateau)
    else:
        assert kernel in GAUSSIAN_KERNELS
        beta = 1.0
    size = kernel_size_for(kernel, sigma=max(sigma_x, sigma_y))
    return BlurParams(kernel=kernel, size=size, sigma_x=sigma_x, sigma_y=sigma_y, angle=angle, beta=beta)


def _sample_resize(spec: ResizeSpec, draw: _Draw) -> ResizeParams | None:
    if not draw.bernoulli(spec.prob):
        return None
    direction = draw.choice(spec.directions)
    interpolation = draw.choice(spec.interpolations)
    if direction == "up":
        scale = draw.uniform(max(1.0, spec.scale[0]), spec.scale[1])
    elif direction == "down":
        scale = draw.uniform(spec.scale[0], min(1.0, spec.scale[1]))
    else:
        return None  # "keep": no resize
    return ResizeParams(scale=scale, interpolation=interpolation)


def _sample_noise(spec: NoiseSpec, draw: _Draw) -> NoiseParams | None:
    if not draw.bernoulli(spec.prob):
        return None
    gaussian = draw.bernoulli(spec.gaussian_prob)
    gray = draw.bernoulli(spec.gray_prob)
    seed = int(draw.uniform(0.0, 1.0) * SEED_LIMIT)
    if gaussian:
        return NoiseParams(kind="gaussian", seed=seed, sigma=draw.uniform(*spec.sigma), gray=gray)
    return NoiseParams(kind="poisson", seed=seed, scale=draw.uniform(*spec.poisson_scale), gray=gray)


def _sample_jpeg(spec: JpegSpec, draw: _Draw) -> JpegParams | None:
    if not draw.bernoulli(spec.prob):
        return None
    return JpegParams(quality=draw.integer(int(spec.quality[0]), int(spec.quality[1])))


def _sample_stage(spec: StageSpec, draw: _Draw) -> StageParams:
    return StageParams(
        blur=None if spec.blur is None else _sample_blur(spec.blur, draw),
        resize=None if spec.resize is None else _sample_resize(spec.resize, draw),
        noise=None if spec.noise is None else _sample_noise(spec.noise, draw),
        jpeg=None if spec.jpeg is None else _sample_jpeg(spec.jpeg, draw),
    )


def sample_params(spec: DegradationSpec, generator: torch.Generator, batch_size: int) -> list[DegradationParams]:
    """Draw one ``DegradationParams`` per batch item.

    Args:
        spec: ranges and probabilities (e.g. ``PRESETS["paper"]``).
        generator: the only source of randomness; the same generator state gives the same params.
        batch_size: number of items (>= 1).

    Returns:
        ``batch_size`` independent draws, item i drawn after item i-1.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"sample_params needs a torch.Generator, got {type(generator).__name__}")
    draw = _Draw(generator)
    out = []
    for _ in range(batch_size):
        stages = tuple(_sample_stage(stage, draw) for stage in spec.stages)
        final = draw.choice(spec.final_interpolations)
        out.append(DegradationParams(stages=stages, final_interpolation=final))
    return out


def manual_params(
    *,
    blur_sigma: float = 0.0,
    downscale: float = 1.0,
    noise_sigma: float = 0.0,
    jpeg_quality: int = 0,
    seed: int = 0,
    interpolation: str = "bicubic",
) -> DegradationParams:
    """One stage with exactly the given strengths (0, 1 or 0 = off): isotropic Gaussian blur of
    ``blur_sigma`` px, shrink by ``downscale`` (then back to the input size), colour Gaussian noise
    of ``noise_sigma``, JPEG at ``jpeg_quality``. Its prompt names exactly these numbers."""
    if blur_sigma < 0 or noise_sigma < 0 or downscale < 1 or not 0 <= jpeg_quality <= 100:
        raise ValueError(
            "manual degradation: expected blur_sigma >= 0, downscale >= 1, noise_sigma >= 0 and "
            f"jpeg_quality in 0..100 (0 = off); got {blur_sigma}, {downscale}, {noise_sigma}, {jpeg_quality}"
        )
    blur = None
    if blur_sigma > 0:
        blur = BlurParams(
            kernel="iso", size=kernel_size_for("iso", sigma=blur_sigma), sigma_x=blur_sigma, sigma_y=blur_sigma
        )
    resize = None if downscale == 1 else ResizeParams(scale=1.0 / downscale, interpolation=interpolation)
    noise = None if noise_sigma == 0 else NoiseParams(kind="gaussian", seed=int(seed) % SEED_LIMIT, sigma=noise_sigma)
    jpeg = None if jpeg_quality == 0 else JpegParams(quality=int(jpeg_quality))
    return DegradationParams(
        stages=(StageParams(blur=blur, resize=resize, noise=noise, jpeg=jpeg),), final_interpolation=interpolation
    )


__all__ = ["SEED_LIMIT", "manual_params", "sample_params"]
