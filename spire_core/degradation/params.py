"""Concrete degradation parameters: one draw per batch item, serialisable to and from JSON.

Units (design.md section 4.1): blur sizes and sigmas in pixels of the image the stage works on,
angles in degrees, resize as a scale factor (< 1 shrinks), noise sigma as a standard deviation on the
[0, 1] scale, JPEG quality 1..100 as libjpeg understands it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

PARAMS_VERSION = 1
"""Version of the serialised form; written by ``to_dict`` and checked by ``from_dict``."""

GAUSSIAN_KERNELS = ("iso", "aniso")
GENERALIZED_KERNELS = ("generalized_iso", "generalized_aniso")
PLATEAU_KERNELS = ("plateau_iso", "plateau_aniso")
KERNEL_TYPES = (*GAUSSIAN_KERNELS, *GENERALIZED_KERNELS, *PLATEAU_KERNELS, "sinc", "motion")
"""Blur kernels: the Real-ESRGAN set (Gaussian, generalized Gaussian and plateau, isotropic or
anisotropic, and the sinc low-pass) plus linear motion blur."""

INTERPOLATIONS = ("area", "bilinear", "bicubic")
"""Resampling filters; all antialiased when shrinking (box, triangle and Keys a=-0.5 cubic)."""

NOISE_TYPES = ("gaussian", "poisson")

OPERATIONS = ("blur", "resize", "noise", "jpeg")
"""Operations of one stage, in the order they are applied."""

OPERATION_OF_CLAUSE = {"upsample": "resize", "deblur": "blur", "denoise": "noise", "dejpeg": "jpeg"}
"""Restoration-prompt clause key -> the degradation operation it undoes."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class BlurParams:
    """One blur kernel, fully determined.

    Attributes:
        kernel: one of ``KERNEL_TYPES``.
        size: odd kernel side length in pixels.
        sigma_x, sigma_y: Gaussian-family standard deviations in pixels along the kernel's own axes
            (equal for the isotropic kernels).
        angle: rotation of the kernel's x axis (Gaussian family) or direction of motion, degrees.
        beta: shape of the generalized (exp(-0.5 q^beta)) and plateau (1 / (1 + q^beta)) kernels.
        cutoff: sinc low-pass cutoff frequency, radians per pixel, in (0, pi].
        length: motion-blur path length in pixels.
    """

    kernel: str
    size: int
    sigma_x: float = 0.0
    sigma_y: float = 0.0
    angle: float = 0.0
    beta: float = 1.0
    cutoff: float = 0.0
    length: float = 0.0

    def __post_init__(self) -> None:
        _require(self.kernel in KERNEL_TYPES, f"blur kernel {self.kernel!r} is unknown; expected one of {KERNEL_TYPES}")
        _require(
            isinstance(self.size, int) and self.size >= 1 and self.size % 2 == 1,
            f"blur kernel size must be a positive odd integer, got {self.size!r}",
        )
        if self.kernel in (*GAUSSIAN_KERNELS, *GENERALIZED_KERNELS, *PLATEAU_KERNELS):
            _require(
                self.sigma_x > 0 and self.sigma_y > 0,
                f"{self.kernel} blur needs sigma_x > 0 and sigma_y > 0, got {self.sigma_x}, {self.sigma_y}",
            )
            if self.kernel.endswith("_iso") or self.kernel == "iso":
                _require(self.sigma_x == self.sigma_y, f"{self.kernel} blur needs sigma_x == sigma_y")
        if self.kernel in (*GENERALIZED_KERNELS, *PLATEAU_KERNELS):
            _require(self.beta > 0, f"{self.kernel} blur needs beta > 0, got {self.beta}")
        if self.kernel == "sinc":
            _require(0 < self.cutoff <= math.pi, f"sinc blur needs 0 < cutoff <= pi, got {self.cutoff}")
        if self.kernel == "motion":
            _require(self.length > 0, f"motion blur needs length > 0, got {self.length}")


@dataclass(frozen=True)
class ResizeParams:
    """Resize by ``scale`` (new side = max(1, round(side * scale))) with ``interpolation``."""

    scale: float
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        _require(self.scale > 0 and math.isfinite(self.scale), f"resize scale must be > 0, got {self.scale}")
        _require(
            self.interpolation in INTERPOLATIONS,
            f"interpolation {self.interpolation!r} is unknown; expected one of {INTERPOLATIONS}",
        )


@dataclass(frozen=True)
class NoiseParams:
    """Additive noise.

    Attributes:
        kind: "gaussian" (standard deviation ``sigma``) or "poisson" (shot noise of an image whose
            white level is ``POISSON_PEAK`` photons, scaled by ``scale``).
        sigma: Gaussian standard deviation on the [0, 1] scale.
        scale: Poisson noise multiplier.
        gray: one noise field shared by all colour channels (luma noise) instead of one per channel.
        seed: seed of the noise field; the same seed gives the same field on the same device.
        named_seed: ``None`` (one field), or the seed of a second, independent field of the same kind added
            to the first: the *named* part of a noise that a graded request removes only partly
            (``graded.py``). ``sigma``/``scale`` are then the residual part's, ``named_sigma``/``named_scale``
            the named part's, and the two variances add up to the noise level.
        named_sigma, named_scale: the named part's Gaussian sigma or Poisson multiplier.
    """

    kind: str
    seed: int
    sigma: float = 0.0
    scale: float = 0.0
    gray: bool = False
    named_seed: int | None = None
    named_sigma: float = 0.0
    named_scale: float = 0.0

    def __post_init__(self) -> None:
        _require(self.kind in NOISE_TYPES, f"noise kind {self.kind!r} is unknown; expected one of {NOISE_TYPES}")
        _require(
            isinstance(self.seed, int) and 0 <= self.seed < 2**63,
            f"noise seed must be in [0, 2**63), got {self.seed!r}",
        )
        if self.kind == "gaussian":
            _require(self.sigma >= 0, f"gaussian noise sigma must be >= 0, got {self.sigma}")
        else:
            _require(self.scale >= 0, f"poisson noise scale must be >= 0, got {self.scale}")
        if self.named_seed is not None:
            _require(
                isinstance(self.named_seed, int) and 0 <= self.named_seed < 2**63,
                f"noise named_seed must be in [0, 2**63) or None, got {self.named_seed!r}",
            )
        _require(
            self.named_sigma >= 0 and self.named_scale >= 0,
            f"noise named_sigma and named_scale must be >= 0, got {self.named_sigma}, {self.named_scale}",
        )

    def parts(self) -> tuple[NoiseParams, NoiseParams | None]:
        """(residual part, named part): the one or two independent fields whose sum is this noise."""
        if self.named_seed is None:
            return self, None
        residual = replace(self, named_seed=None, named_sigma=0.0, named_scale=0.0)
        named = NoiseParams(
            kind=self.kind, seed=self.named_seed, sigma=self.named_sigma, scale=self.named_scale, gray=self.gray
        )
        return residual, named


@dataclass(frozen=True)
class JpegParams:
    """JPEG compression at ``quality`` (1..100): libjpeg with 4:2:0 chroma subsampling for colour, unless
    ``degrade`` is given another codec (``jpeg_codecs``; nvjpeg by default on CUDA)."""

    quality: int

    def __post_init__(self) -> None:
        _require(
            isinstance(self.quality, int) and 1 <= self.quality <= 100,
            f"JPEG quality must be an integer in 1..100, got {self.quality!r}",
        )


@dataclass(frozen=True)
class StageParams:
    """One Blur -> Resize -> Noise -> JPEG stage; a ``None`` operation is skipped."""

    blur: BlurParams | None = None
    resize: ResizeParams | None = None
    noise: NoiseParams | None = None
    jpeg: JpegParams | None = None

    def without(self, operations: set[str] | frozenset[str]) -> StageParams:
        return replace(self, **{op: None for op in operations})

    def is_identity(self) -> bool:
        return all(getattr(self, op) is None for op in OPERATIONS)


_SUBTYPES = {"blur": BlurParams, "resize": ResizeParams, "noise": NoiseParams, "jpeg": JpegParams}


@dataclass(frozen=True)
class DegradationParams:
    """Everything ``degrade`` needs for one image: the stages in order and the final resize back to
    the input size.

    ``degrade`` is a pure function of (image, params): the same params give the same output bytes on
    the same device. ``to_json``/``from_json`` round-trip exactly.
    """

    stages: tuple[StageParams, ...] = field(default_factory=tuple)
    final_interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        _require(all(isinstance(s, StageParams) for s in self.stages), "DegradationParams.stages must hold StageParams")
        _require(
            self.final_interpolation in INTERPOLATIONS,
            f"final interpolation {self.final_interpolation!r} is unknown; expected one of {INTERPOLATIONS}",
        )

    def without(self, operations: set[str] | frozenset[str]) -> DegradationParams:
        """These params with the given operations (names from ``OPERATIONS``) removed from every stage."""
        unknown = set(operations) - set(OPERATIONS)
        _require(not unknown, f"unknown operations {sorted(unknown)}; expected some of {OPERATIONS}")
        return replace(self, stages=tuple(s.without(frozenset(operations)) for s in self.stages))

    def applied(self) -> tuple[str, ...]:
        """Operations present in at least one stage, in ``OPERATIONS`` order."""
        return tuple(op for op in OPERATIONS if any(getattr(s, op) is not None for s in self.stages))

    def to_dict(self) -> dict[str, Any]:
        stages = []
        for stage in self.stages:
            stages.append(
                {op: None if getattr(stage, op) is None else _asdict(getattr(stage, op)) for op in OPERATIONS}
            )
        return {"version": PARAMS_VERSION, "stages": stages, "final_interpolation": self.final_interpolation}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DegradationParams:
        if not isinstance(data, dict):
            raise ValueError(f"degradation params must be a JSON object, got {type(data).__name__}")
        version = data.get("version")
        _require(
            version == PARAMS_VERSION,
            f"degradation params version {version!r} is not supported; this library reads version {PARAMS_VERSION}",
        )
        unknown = set(data) - {"version", "stages", "final_interpolation"}
        _require(not unknown, f"unknown keys in degradation params: {sorted(unknown)}")
        stages = []
        for i, raw in enumerate(data.get("stages", [])):
            _require(isinstance(raw, dict), f"stage {i} must be a JSON object")
            bad = set(raw) - set(OPERATIONS)
            _require(not bad, f"stage {i} has unknown operations {sorted(bad)}; expected some of {OPERATIONS}")
            ops = {}
            for op, sub in _SUBTYPES.items():
                value = raw.get(op)
                if value is not None:
                    known = {f.name for f in fields(sub)}
                    extra = set(value) - known
                    _require(not extra, f"stage {i} {op}: unknown fields {sorted(extra)}; expected {sorted(known)}")
                    ops[op] = sub(**value)
            stages.append(StageParams(**ops))
        return cls(stages=tuple(stages), final_interpolation=data.get("final_interpolation", "bicubic"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DegradationParams:
        return cls.from_dict(json.loads(text))


_OPTIONAL_NOISE_FIELDS = ("named_seed", "named_sigma", "named_scale")


def _asdict(obj: Any) -> dict[str, Any]:
    out = {f.name: getattr(obj, f.name) for f in fields(obj)}
    if isinstance(obj, NoiseParams) and obj.named_seed is None:  # one field: written as before graded requests
        for name in _OPTIONAL_NOISE_FIELDS:
            out.pop(name)
    return out


def params_list_to_json(params: list[DegradationParams] | tuple[DegradationParams, ...]) -> str:
    """A JSON array with one params object per batch item."""
    return json.dumps([p.to_dict() for p in params], sort_keys=True)


def params_list_from_json(text: str) -> list[DegradationParams]:
    data = json.loads(text)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError("expected a JSON array of degradation params (one object per batch item)")
    return [DegradationParams.from_dict(d) for d in data]
