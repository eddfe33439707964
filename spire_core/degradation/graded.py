"""Graded requests: name each degradation at a level up to the level present; the target keeps the residual.

A graded request is a ``RestorationRequest`` whose numbers are levels to *remove*, each at most the level
present (``effective_request`` of the params, as printed). The input y is the full degradation; the target is
the same degradation with every named level reduced to its residual, every random field shared. Partial
requests (a subset of the clauses, each named in full) are the special case where every named level is the
full one (``degrade_partial``).

Design, exact in the two-stage paper pipeline (Blur -> Resize -> Noise -> JPEG, twice, then back to the
input size), clause by clause. ``E`` is the exact present level (the collapsing rule of
``effective_request``), ``P`` the printed one, ``v`` the named level (``0 < v <= P``); ``v == P`` names the
clause in full (the target has none of it), ``v < P`` names it partly:

- **denoise** (Gaussian and Poisson noise): the residual level is ``r = sqrt(E^2 - v^2)``. Every stage's noise
  is split in the same proportion ``rho = r / E`` into two independent fields of its own kind: the residual
  part (``rho`` times the stage's sigma or Poisson multiplier, drawn from the stage's own seed) and the named
  part (``sqrt(1 - rho^2)`` times it, drawn from a seed derived from the stage's seed, so both come from the
  item's own generator stream). y adds both fields (``NoiseParams.named_seed``); the target adds the residual
  field alone, bit for bit the field y carries. The variances add up: the residual params' denoise level is
  ``r`` and y's is ``E``.
- **deblur**: Gaussian kernels (``iso``, ``aniso``) compose exactly, ``G(s) = G(rho s) * G(sqrt(1 - rho^2) s)``
  (same orientation), so every Gaussian kernel's sigmas are multiplied by ``rho = beta / E`` with the residual
  ``beta = sqrt(E^2 - v^2)``: the residual params' deblur level is ``beta``. Kernels that do not compose
  (generalized Gaussian, plateau, sinc, motion) are only ever named in full: a request naming deblur partly on
  params that hold one is refused.
- **upsample**: the residual factor is ``R = E / v``. Every resize scale ``s`` becomes ``s ** a`` with
  ``a = log(R) / log(E)``, so the target is shrunk by ``R`` in total and resized back; the kernels of later
  stages are rescaled spatially by the change of the total scale before them, so every blur keeps its size in
  input pixels (the deblur level is unchanged when deblur is not named; plateau kernels, measured as sampled,
  to within their truncation). A sinc kernel whose cutoff would pass pi keeps pi (not exact; only reachable
  when a stage enlarges the image before a sinc blur).
- **dejpeg**: named in full or not at all (a quality cannot be partly undone): the target has no JPEG step.

y is exactly ``degrade(params)`` unless a noise is named partly; its noise is then the sum of the two fields,
whose variances add up to the full level (the same distribution as ``degrade(params)``, other bits).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from ..prompt import RestorationRequest, quantize, render
from ..prompt.grammar import CLAUSE_BY_KEY
from .implied import CLAUSE_KEYS, effective_request, restrict
from .kernels import kernel_size_for
from .params import GAUSSIAN_KERNELS, BlurParams, DegradationParams, NoiseParams, StageParams
from .pipeline import degrade

_SEED_MASK = 2**53 - 1


def named_part_seed(seed: int) -> int:
    """The seed of the named part of a noise drawn from ``seed`` (a fixed SplitMix64 step, below 2**53 like
    the seeds ``sample_params`` draws)."""
    z = (seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & _SEED_MASK


def print_step(key: str) -> float:
    """The smallest printed change of a clause's number (0.1 for upsample and deblur, 0.01 for denoise, 1 for
    dejpeg)."""
    clause = CLAUSE_BY_KEY[key]
    if clause.integer:
        return 1.0
    return 10.0 ** -int(clause.fmt.strip(".f"))


def gradable(params: DegradationParams) -> frozenset[str]:
    """Clauses present in ``params`` that a request may name partly: denoise always, deblur when every blur
    kernel is Gaussian (``iso``/``aniso``), upsample always; dejpeg never."""
    present = set(effective_request(params).named())
    ok = {"denoise", "upsample"}
    if all(s.blur is None or s.blur.kernel in GAUSSIAN_KERNELS for s in params.stages):
        ok.add("deblur")
    return frozenset(present & ok)


def _check_request(params: DegradationParams, request: RestorationRequest, where: str) -> RestorationRequest:
    """The request quantised to its printed precision, checked against the levels present."""
    if not isinstance(request, RestorationRequest):
        raise TypeError(f"{where}: a graded request is a RestorationRequest, got {type(request).__name__}")
    if request.blind:
        return request
    if request.is_empty():
        raise ValueError(f"{where}: the request names no degradation; nothing to restore")
    request = quantize(request)
    printed = quantize(effective_request(params))
    partly_ok = gradable(params)
    for key in request.named():
        value, present = getattr(request, key), getattr(printed, key)
        if present is None:
            raise ValueError(
                f"{where}: {key} is named but not present in its degradation (present: {list(printed.named())})"
            )
        if key == "dejpeg" and value != present:
            raise ValueError(
                f"{where}: dejpeg can only be named in full (quality {present}), got {value}: a JPEG quality cannot "
                "be partly undone"
            )
        if value > present:
            raise ValueError(f"{where}: {key} {value:g} is more than the level present ({present:g})")
        if value < present and key not in partly_ok:
            why = (
                "a JPEG quality cannot be partly undone"
                if key == "dejpeg"
                else "its blur kernels are not all Gaussian (only Gaussians compose)"
            )
            raise ValueError(f"{where}: {key} can only be named in full ({present:g}), got {value:g}: {why}")
    return request


def _scaled_blur(blur: BlurParams, factor: float) -> BlurParams:
    """The kernel enlarged spatially by ``factor`` (its sigma, length or 1/cutoff multiplied by it)."""
    if factor == 1.0:
        return blur
    if blur.kernel == "sinc":
        cutoff = min(math.pi, blur.cutoff / factor)
        return replace(blur, cutoff=cutoff, size=kernel_size_for("sinc", cutoff=cutoff))
    if blur.kernel == "motion":
        length = blur.length * factor
        return replace(blur, length=length, size=kernel_size_for("motion", length=length))
    sx, sy = blur.sigma_x * factor, blur.sigma_y * factor
    return replace(blur, sigma_x=sx, sigma_y=sy, size=kernel_size_for(blur.kernel, sigma=max(sx, sy)))


def _split_noise(noise: NoiseParams, rho: float) -> tuple[NoiseParams, NoiseParams]:
    """(present, residual): the noise as two independent fields with the residual share ``rho`` (0 < rho < 1)."""
    named = math.sqrt(1.0 - rho * rho)
    if noise.kind == "gaussian":
        residual = replace(noise, sigma=noise.sigma * rho)
        present = replace(residual, named_seed=named_part_seed(noise.seed), named_sigma=noise.sigma * named)
    else:
        residual = replace(noise, scale=noise.scale * rho)
        present = replace(residual, named_seed=named_part_seed(noise.seed), named_scale=noise.scale * named)
    return present, residual


def graded_params(
    params: DegradationParams, request: RestorationRequest
) -> tuple[DegradationParams, DegradationParams]:
    """The params of the input and of the target for a graded request (see the module docstring).

    Args:
        params: one item's degradation, as ``sample_params`` draws it (no noise already split).
        request: levels to remove, each at most the printed level present (``quantize`` is applied).

    Returns:
        ``(present, residual)``: ``degrade(images, present)`` is the input y (``params`` itself unless a noise
        is named partly), ``degrade(images, residual)`` the target. A blind request gives ``(params, clean)``
        where ``clean`` degrades nothing.

    Raises:
        ValueError: a clause named that is not present, a level above the level present, or a partial level
            for a clause that can only be named in full.
    """
    if any(s.noise is not None and s.noise.named_seed is not None for s in params.stages):
        raise ValueError("graded_params: these params already have a named noise part; pass the params as drawn")
    request = _check_request(params, request, "graded request")
    if request.blind:
        return params, DegradationParams(stages=(), final_interpolation=params.final_interpolation)
    exact = effective_request(params)
    printed = quantize(exact)
    full = {k for k in request.named() if getattr(request, k) == getattr(printed, k)}

    def residual_share(key: str) -> float | None:
        """None: not named; 0: named in full; else the residual share of the level."""
        if key not in request.named():
            return None
        if key in full:
            return 0.0
        level, named = getattr(exact, key), getattr(request, key)
        if key == "upsample":
            return math.log(level / named) / math.log(level)  # the exponent a of the resize scales
        return math.sqrt(max(level * level - named * named, 0.0)) / level

    upsample, deblur, denoise = (residual_share(k) for k in ("upsample", "deblur", "denoise"))
    dejpeg = "dejpeg" in request.named()
    present_stages, residual_stages = [], []
    total, new_total = 1.0, 1.0  # the total resize scale before this stage, as drawn and in the residual
    for stage in params.stages:
        blur, resize, noise, jpeg = stage.blur, stage.resize, stage.noise, stage.jpeg
        present_noise = noise
        if blur is not None:
            blur = None if deblur == 0.0 else _scaled_blur(blur, new_total / total)
            if blur is not None and deblur is not None:
                blur = replace(
                    blur,
                    sigma_x=blur.sigma_x * deblur,
                    sigma_y=blur.sigma_y * deblur,
                    size=kernel_size_for(blur.kernel, sigma=max(blur.sigma_x, blur.sigma_y) * deblur),
                )
        if resize is not None:
            total *= resize.scale
            if upsample is not None:
                resize = None if upsample == 0.0 else replace(resize, scale=resize.scale**upsample)
            new_total *= 1.0 if resize is None else resize.scale
        if noise is not None and denoise is not None:
            if denoise == 0.0:
                noise = None
            else:
                present_noise, noise = _split_noise(noise, denoise)
        if dejpeg:
            jpeg = None
        present_stages.append(replace(stage, noise=present_noise))
        residual_stages.append(StageParams(blur=blur, resize=resize, noise=noise, jpeg=jpeg))
    present = replace(params, stages=tuple(present_stages))
    residual = replace(params, stages=tuple(residual_stages))
    return present, residual


@dataclass(frozen=True)
class GradedDegradation:
    """A training pair for graded (and partial) restoration prompts.

    Attributes:
        degraded: the input y, degraded at every level present.
        target: the same degradation with each named level reduced to its residual (every random field shared).
        prompts: per item, the canonical prompt of its request (it parses back to the named levels).
        requests: per item, the request as named (quantised to the printed precision).
        params: per item, the params y was degraded with (``graded_params``'s ``present``).
        target_params: per item, the params the target was degraded with (``residual``).
    """

    degraded: torch.Tensor
    target: torch.Tensor
    prompts: tuple[str, ...]
    requests: tuple[RestorationRequest, ...]
    params: tuple[DegradationParams, ...]
    target_params: tuple[DegradationParams, ...]


def degrade_graded(
    images: torch.Tensor,
    params: Sequence[DegradationParams],
    requests: Sequence[RestorationRequest] | RestorationRequest,
    *,
    jpeg_codec: str = "auto",
) -> GradedDegradation:
    """Degrade a batch fully and make targets that keep the residual of every named level.

    Args:
        images: (B, C, H, W) float in [0, 1], any device.
        params: one per item, as drawn.
        requests: one per item, or one for every item (levels to remove; see ``graded_params``).
        jpeg_codec: the JPEG codec of both degradations (see ``degrade``; ``"auto"`` is nvjpeg on CUDA
            where it works, libjpeg elsewhere).

    Returns:
        A ``GradedDegradation`` whose images have the input's shape, dtype and device.

    Raises:
        ValueError: see ``graded_params``; a request count that is neither 1 nor the batch size.
    """
    params = tuple(params)
    if isinstance(requests, RestorationRequest):
        requests = [requests] * len(params)
    requests = list(requests)
    if len(requests) != len(params):
        raise ValueError(f"degrade_graded: {len(requests)} requests for {len(params)} items")
    pairs = [graded_params(p, r) for p, r in zip(params, requests)]
    quantized = tuple(r if r.blind else quantize(r) for r in requests)
    present = tuple(p for p, _ in pairs)
    residual = tuple(r for _, r in pairs)
    return GradedDegradation(
        degraded=degrade(images, present, jpeg_codec=jpeg_codec).images,
        target=degrade(images, residual, jpeg_codec=jpeg_codec).images,
        prompts=tuple(render(r) for r in quantized),
        requests=quantized,
        params=present,
        target_params=residual,
    )


def graded_request(params: DegradationParams, fractions: Mapping[str, float]) -> RestorationRequest:
    """A request naming each clause of ``fractions`` at that fraction of its level present, printable.

    Args:
        params: the item's degradation.
        fractions: clause key -> fraction in (0, 1]. denoise and deblur name ``fraction * E``; upsample names
            ``E ** fraction`` (a fraction of the factor's logarithm: the factor itself starts at 1). Each level
            is rounded to its printed precision, at least one print step and at most the printed level
            present. Clauses that can only be named in full (``gradable``) are named in full.

    Returns:
        The request (empty when ``fractions`` is).
    """
    exact = effective_request(params)
    printed = quantize(exact)
    partly = gradable(params)
    values: dict[str, float | int] = {}
    for key, fraction in fractions.items():
        if key not in CLAUSE_KEYS:
            raise ValueError(f"unknown clause {key!r}; expected one of {CLAUSE_KEYS}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"{key}: a fraction of the level present is in (0, 1], got {fraction}")
        present = getattr(printed, key)
        if present is None:
            raise ValueError(f"{key} is not present in this degradation (present: {list(printed.named())})")
        if key not in partly or fraction == 1.0:
            values[key] = present
            continue
        step = print_step(key)
        level = getattr(exact, key)
        named = level**fraction if key == "upsample" else level * fraction
        floor = 1.0 + step if key == "upsample" else step
        named = min(max(round(named / step) * step, floor), present)
        values[key] = float(format(named, CLAUSE_BY_KEY[key].fmt))
    return RestorationRequest(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PartialDegradation:
    """A training pair for a partial restoration prompt (spire-paper.md section 10, #11).

    Attributes:
        degraded: the input y, degraded by every operation.
        target: the same images with the named clauses removed in full and every other degradation kept at its
            level (``graded_params`` with every named level the full one).
        prompts: per item, the canonical prompt naming only the chosen clauses.
        named: per item, the clause keys named.
        params: per item, the full params.
    """

    degraded: torch.Tensor
    target: torch.Tensor
    prompts: tuple[str, ...]
    named: tuple[tuple[str, ...], ...]
    params: tuple[DegradationParams, ...]


def degrade_partial(
    images: torch.Tensor,
    params: Sequence[DegradationParams],
    named: Iterable[str] | Sequence[Iterable[str]],
    *,
    jpeg_codec: str = "auto",
) -> PartialDegradation:
    """Degrade a batch fully, and make targets that keep every degradation the prompt leaves unnamed.

    Args:
        images: (B, C, H, W) float in [0, 1].
        params: one per item.
        named: clause keys (``"upsample"``, ``"deblur"``, ``"denoise"``, ``"dejpeg"``) to name in full, either
            one collection for every item or one per item.
        jpeg_codec: the JPEG codec of both degradations (see ``degrade``).

    Raises:
        ValueError: an unknown clause key, or an item for which none of its named clauses is present
            in its params (its prompt would be empty).
    """
    params = tuple(params)
    named_list = list(named) if not isinstance(named, str) else [named]
    if named_list and all(isinstance(n, str) for n in named_list):
        per_item = [tuple(named_list)] * len(params)
    else:
        per_item = [tuple(n) for n in named_list]
    if len(per_item) != len(params):
        raise ValueError(f"degrade_partial: {len(per_item)} named sets for {len(params)} items")
    requests = []
    for i, (p, keys) in enumerate(zip(params, per_item)):
        request = restrict(quantize(effective_request(p)), keys)
        if request.is_empty():
            raise ValueError(
                f"item {i}: none of the named clauses {list(keys)} is present in its degradation "
                f"(present: {list(effective_request(p).named())}); nothing to name"
            )
        requests.append(request)
    pair = degrade_graded(images, params, requests, jpeg_codec=jpeg_codec)
    return PartialDegradation(
        degraded=pair.degraded,
        target=pair.target,
        prompts=pair.prompts,
        named=tuple(tuple(k for k in CLAUSE_KEYS if k in keys) for keys in per_item),
        params=params,
    )


__all__ = [
    "GradedDegradation",
    "PartialDegradation",
    "degrade_partial",
    "degrade_graded",
    "gradable",
    "graded_params",
    "graded_request",
    "named_part_seed",
    "print_step",
]
