"""Degradation specifications (ranges and probabilities) and the named presets.

A spec says what ``sample_params`` may draw; params (``params.py``) say what was drawn. Ranges are
closed intervals ``(low, high)`` sampled uniformly; probabilities are in [0, 1]. Units are those of
``params.py``. The ``"paper"`` preset is SPIRE's two-stage pipeline (spire-paper.md sections 3 and
10): Real-ESRGAN's second-order Blur -> Resize -> Noise -> JPEG with the first-stage resize skipped
with probability 0.5, blur sigma widened to 6 px and noise sigma to 0.25 to cover the values in the
paper's figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .params import INTERPOLATIONS, KERNEL_TYPES

Range = tuple[float, float]


def _check_range(name: str, value: Range, low: float = -math.inf, high: float = math.inf) -> None:
    lo, hi = value
    if not (low <= lo <= hi <= high):
        raise ValueError(f"{name} must be a range (low, high) with {low:g} <= low <= high <= {high:g}, got {value}")


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


def _check_choices(name: str, choices: tuple[tuple[str, float], ...], allowed: tuple[str, ...]) -> None:
    if not choices:
        raise ValueError(f"{name} must list at least one choice")
    for key, weight in choices:
        if key not in allowed:
            raise ValueError(f"{name}: {key!r} is unknown; expected some of {allowed}")
        if weight < 0:
            raise ValueError(f"{name}: weight of {key!r} must be >= 0, got {weight}")
    if sum(w for _, w in choices) <= 0:
        raise ValueError(f"{name}: the weights must not all be zero")


@dataclass(frozen=True)
class BlurSpec:
    """Blur: applied with ``prob``; kernel type drawn from ``kernels`` (relative weights).

    ``sigma`` bounds the Gaussian-family sigmas (each axis drawn independently for anisotropic
    kernels, angle uniform in [0, 180) degrees); ``beta_generalized`` / ``beta_plateau`` the shape;
    ``sinc_cutoff`` the sinc cutoff in radians per pixel; ``motion_length`` the motion path in pixels.
    """

    prob: float = 1.0
    kernels: tuple[tuple[str, float], ...] = (("iso", 1.0),)
    sigma: Range = (0.2, 3.0)
    beta_generalized: Range = (0.5, 4.0)
    beta_plateau: Range = (1.0, 2.0)
    sinc_cutoff: Range = (math.pi / 3, math.pi)
    motion_length: Range = (3.0, 15.0)

    def __post_init__(self) -> None:
        _check_prob("blur prob", self.prob)
        _check_choices("blur kernels", self.kernels, KERNEL_TYPES)
        _check_range("blur sigma", self.sigma, low=1e-3, high=10.0)
        _check_range("blur beta_generalized", self.beta_generalized, low=0.05)
        _check_range("blur beta_plateau", self.beta_plateau, low=0.05)
        _check_range("blur sinc_cutoff", self.sinc_cutoff, low=0.1, high=math.pi)
        _check_range("blur motion_length", self.motion_length, low=0.5, high=60.0)


@dataclass(frozen=True)
class ResizeSpec:
    """Resize: applied with ``prob``; direction drawn from ``directions`` ("up", "down", "keep") with
    the scale uniform in [max(1, scale[0]), scale[1]] for "up" and [scale[0], min(1, scale[1])] for
    "down" ("keep" leaves the size alone); filter drawn from ``interpolations``."""

    prob: float = 1.0
    directions: tuple[tuple[str, float], ...] = (("up", 0.2), ("down", 0.7), ("keep", 0.1))
    scale: Range = (0.15, 1.5)
    interpolations: tuple[tuple[str, float], ...] = (("area", 1.0), ("bilinear", 1.0), ("bicubic", 1.0))

    def __post_init__(self) -> None:
        _check_prob("resize prob", self.prob)
        _check_choices("resize directions", self.directions, ("up", "down", "keep"))
        _check_range("resize scale", self.scale, low=1e-3, high=16.0)
        _check_choices("resize interpolations", self.interpolations, INTERPOLATIONS)


@dataclass(frozen=True)
class NoiseSpec:
    """Noise: applied with ``prob``; Gaussian with probability ``gaussian_prob`` (sigma in ``sigma``)
    else Poisson (multiplier in ``poisson_scale``); one grey field for all channels with ``gray_prob``."""

    prob: float = 1.0
    gaussian_prob: float = 0.5
    sigma: Range = (1 / 255, 30 / 255)
    poisson_scale: Range = (0.05, 3.0)
    gray_prob: float = 0.4

    def __post_init__(self) -> None:
        _check_prob("noise prob", self.prob)
        _check_prob("noise gaussian_prob", self.gaussian_prob)
        _check_prob("noise gray_prob", self.gray_prob)
        _check_range("noise sigma", self.sigma, low=0.0, high=1.0)
        _check_range("noise poisson_scale", self.poisson_scale, low=0.0, high=20.0)


@dataclass(frozen=True)
class JpegSpec:
    """JPEG: applied with ``prob``; integer quality uniform in ``quality`` (inclusive)."""

    prob: float = 1.0
    quality: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        _check_prob("jpeg prob", self.prob)
        _check_range("jpeg quality", self.quality, low=1, high=100)
        if any(int(q) != q for q in self.quality):
            raise ValueError(f"jpeg quality bounds must be integers, got {self.quality}")


@dataclass(frozen=True)
class StageSpec:
    """One Blur -> Resize -> Noise -> JPEG stage; an operation set to ``None`` never happens."""

    blur: BlurSpec | None = None
    resize: ResizeSpec | None = None
    noise: NoiseSpec | None = None
    jpeg: JpegSpec | None = None


@dataclass(frozen=True)
class DegradationSpec:
    """What ``sample_params`` draws from: stages in order, then a resize back to the input size with a
    filter drawn from ``final_interpolations``."""

    stages: tuple[StageSpec, ...] = field(default_factory=tuple)
    final_interpolations: tuple[tuple[str, float], ...] = (("area", 1.0), ("bilinear", 1.0), ("bicubic", 1.0))
    name: str = "custom"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if not all(isinstance(s, StageSpec) for s in self.stages):
            raise ValueError("DegradationSpec.stages must hold StageSpec")
        _check_choices("final_interpolations", self.final_interpolations, INTERPOLATIONS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DegradationSpec:
        """Inverse of ``to_dict`` (lists are accepted where tuples are expected, as JSON gives them)."""
        subtypes = {"blur": BlurSpec, "resize": ResizeSpec, "noise": NoiseSpec, "jpeg": JpegSpec}
        stages = []
        for raw in data.get("stages", []):
            ops = {}
            for op, cls_ in subtypes.items():
                if raw.get(op) is not None:
                    ops[op] = cls_(**{k: _tupleize(v) for k, v in raw[op].items()})
            stages.append(StageSpec(**ops))
        return cls(
            stages=tuple(stages),
            final_interpolations=_tupleize(data.get("final_interpolations", DegradationSpec.final_interpolations)),
            name=data.get("name", "custom"),
        )

    def renamed(self, name: str) -> DegradationSpec:
        return replace(self, name=name)


def _tupleize(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupleize(v) for v in value)
    return value


REALESRGAN_KERNELS: tuple[tuple[str, float], ...] = (
    ("iso", 0.45 * 0.9),
    ("aniso", 0.25 * 0.9),
    ("generalized_iso", 0.12 * 0.9),
    ("generalized_aniso", 0.03 * 0.9),
    ("plateau_iso", 0.12 * 0.9),
    ("plateau_aniso", 0.03 * 0.9),
    ("sinc", 0.1),
)
"""Real-ESRGAN's kernel mix: six Gaussian-family kernels, and the sinc kernel with probability 0.1."""

FIRST_STAGE_RESIZE_PROB = 0.5
"""SPIRE's figure: the first-stage resize is skipped with P = 0.5 [F]."""

PAPER_BLUR_SIGMA_MAX = 6.0
"""Widened from Real-ESRGAN's 3 px to cover "Deblur with sigma 6.0" in the paper's figures."""

PAPER_NOISE_SIGMA_MAX = 0.25
"""Widened from Real-ESRGAN's 30/255 to cover "Denoise with sigma 0.24" in the paper's figures."""

_PAPER = DegradationSpec(
    name="paper",
    stages=(
        StageSpec(
            blur=BlurSpec(prob=1.0, kernels=REALESRGAN_KERNELS, sigma=(0.2, PAPER_BLUR_SIGMA_MAX)),
            resize=ResizeSpec(prob=FIRST_STAGE_RESIZE_PROB, scale=(0.15, 1.5)),
            noise=NoiseSpec(sigma=(1 / 255, PAPER_NOISE_SIGMA_MAX), poisson_scale=(0.05, 3.0)),
            jpeg=JpegSpec(quality=(30, 95)),
        ),
        StageSpec(
            blur=BlurSpec(prob=0.8, kernels=REALESRGAN_KERNELS, sigma=(0.2, 1.5)),
            resize=ResizeSpec(directions=(("up", 0.3), ("down", 0.4), ("keep", 0.3)), scale=(0.3, 1.2)),
            noise=NoiseSpec(sigma=(1 / 255, 25 / 255), poisson_scale=(0.05, 2.5)),
            jpeg=JpegSpec(quality=(30, 95)),
        ),
    ),
)

_LIGHT = DegradationSpec(
    name="light",
    stages=(
        StageSpec(
            blur=BlurSpec(prob=0.7, kernels=(("iso", 0.7), ("aniso", 0.3)), sigma=(0.2, 1.5)),
            resize=ResizeSpec(prob=0.5, directions=(("down", 1.0),), scale=(0.5, 1.0)),
            noise=NoiseSpec(prob=0.7, sigma=(1 / 255, 10 / 255), poisson_scale=(0.05, 1.0)),
            jpeg=JpegSpec(prob=0.7, quality=(60, 95)),
        ),
    ),
)

_HEAVY = DegradationSpec(
    name="heavy",
    stages=(
        StageSpec(
            blur=BlurSpec(
                kernels=(*REALESRGAN_KERNELS, ("motion", 0.15)),
                sigma=(0.5, PAPER_BLUR_SIGMA_MAX),
                motion_length=(3.0, 21.0),
            ),
            resize=ResizeSpec(prob=0.8, directions=(("up", 0.1), ("down", 0.9)), scale=(0.15, 1.2)),
            noise=NoiseSpec(sigma=(5 / 255, PAPER_NOISE_SIGMA_MAX), poisson_scale=(0.5, 3.0)),
            jpeg=JpegSpec(quality=(20, 80)),
        ),
        StageSpec(
            blur=BlurSpec(prob=0.9, kernels=REALESRGAN_KERNELS, sigma=(0.2, 2.0)),
            resize=ResizeSpec(directions=(("up", 0.2), ("down", 0.6), ("keep", 0.2)), scale=(0.25, 1.2)),
            noise=NoiseSpec(sigma=(2 / 255, 30 / 255), poisson_scale=(0.1, 3.0)),
            jpeg=JpegSpec(quality=(20, 80)),
        ),
    ),
)

_ONLY_BILINEAR_BICUBIC = (("bilinear", 1.0), ("bicubic", 1.0))

PRESETS: dict[str, DegradationSpec] = {
    "paper": _PAPER,
    "light": _LIGHT,
    "heavy": _HEAVY,
    # Single-operation presets: one stage, one operation, the strengths of the paper's figures.
    "blur": DegradationSpec(name="blur", stages=(StageSpec(blur=BlurSpec(sigma=(0.4, PAPER_BLUR_SIGMA_MAX))),)),
    "motion_blur": DegradationSpec(
        name="motion_blur",
        stages=(StageSpec(blur=BlurSpec(kernels=(("motion", 1.0),), motion_length=(3.0, 25.0))),),
    ),
    "downsample": DegradationSpec(
        name="downsample",
        stages=(StageSpec(resize=ResizeSpec(directions=(("down", 1.0),), scale=(0.125, 0.5))),),
        final_interpolations=_ONLY_BILINEAR_BICUBIC,
    ),
    "noise": DegradationSpec(
        name="noise",
        stages=(StageSpec(noise=NoiseSpec(gaussian_prob=1.0, gray_prob=0.0, sigma=(0.02, PAPER_NOISE_SIGMA_MAX))),),
    ),
    "jpeg": DegradationSpec(name="jpeg", stages=(StageSpec(jpeg=JpegSpec(quality=(10, 90))),)),
    # The control check's two-type set: isotropic Gaussian blur and Gaussian colour noise, each present 80 % of the
    # time, at levels the control benchmark's ladders cover (the miniature trains on it; both types grade exactly).
    "control": DegradationSpec(
        name="control",
        stages=(
            StageSpec(
                blur=BlurSpec(prob=0.8, sigma=(0.5, 3.5)),
                noise=NoiseSpec(prob=0.8, gaussian_prob=1.0, gray_prob=0.0, sigma=(0.02, 0.2)),
            ),
        ),
    ),
    # The paper's prompt-walking set: isotropic Gaussian blur and Gaussian noise, one stage.
    "blur_noise": DegradationSpec(
        name="blur_noise",
        stages=(
            StageSpec(
                blur=BlurSpec(sigma=(0.4, PAPER_BLUR_SIGMA_MAX)),
                noise=NoiseSpec(gaussian_prob=1.0, gray_prob=0.0, sigma=(0.02, PAPER_NOISE_SIGMA_MAX)),
            ),
        ),
    ),
}
"""Named specs. ``"paper"`` is the default everywhere."""

DEFAULT_PRESET = "paper"


def get_preset(name: str) -> DegradationSpec:
    """The preset called ``name``; the error lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown degradation preset {name!r}; expected one of {sorted(PRESETS)}") from None
