"""The restoration prompt a degradation implies: one clause per degradation type, with the numbers training names.

``effective_request`` collapses a multi-stage degradation into one request, ``prompt_for`` renders it (the blind
prompt when nothing nameable is degraded: the one decision for a degradation that changes nothing), and
``restrict`` keeps a subset of its clauses (partial requests).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..prompt import BLIND_PROMPT, RestorationRequest, render
from .kernels import kernel_sigma
from .noise import POISSON_PEAK
from .params import OPERATION_OF_CLAUSE, DegradationParams, NoiseParams

CLAUSE_KEYS = tuple(OPERATION_OF_CLAUSE)
"""Restoration-prompt clause keys a partial request may name: upsample, deblur, denoise, dejpeg."""


def noise_sigma(params: NoiseParams) -> float:
    """Standard deviation of a noise setting on the [0, 1] scale; for Poisson noise, at mid-grey (0.5). A noise
    with a named part (graded requests) counts both parts: their variances add up."""
    if params.kind == "gaussian":
        return math.hypot(params.sigma, params.named_sigma)
    return math.hypot(params.scale, params.named_scale) * math.sqrt(0.5 / POISSON_PEAK)


def effective_request(params: DegradationParams) -> RestorationRequest:
    """Collapse all stages into one clause per degradation type: the numbers the prompt carries.

    The collapsing rule, in one place:
    - upsample: the product of all resize scales, inverted (total shrink factor). Named when it
      prints above 1.0.
    - deblur: ``sqrt(sum_k (sigma_k / s_k)^2)`` where ``sigma_k`` is stage k's effective kernel sigma
      (``kernel_sigma``) and ``s_k`` the product of the resize scales before stage k, so every blur
      is measured in pixels of the input (Gaussian blurs compose by adding variances).
    - denoise: ``sqrt(sum_k sigma_k^2)`` of the stages' noise sigmas (``noise_sigma``), in [0, 1] units,
      ignoring the attenuation later stages apply.
    - dejpeg: the lowest (worst) quality of all JPEG steps.
    Clauses whose printed number would be 0 (or 1.0x) are omitted: "leave alone".
    """
    scale = 1.0
    blur_var = 0.0
    noise_var = 0.0
    quality: int | None = None
    for stage in params.stages:
        if stage.blur is not None:
            blur_var += (kernel_sigma(stage.blur) / scale) ** 2
        if stage.resize is not None:
            scale *= stage.resize.scale
        if stage.noise is not None:
            noise_var += noise_sigma(stage.noise) ** 2
        if stage.jpeg is not None:
            quality = stage.jpeg.quality if quality is None else min(quality, stage.jpeg.quality)
    upsample = 1.0 / scale
    deblur = math.sqrt(blur_var)
    denoise = math.sqrt(noise_var)
    return RestorationRequest(
        upsample=upsample if round(upsample, 1) > 1.0 else None,
        deblur=deblur if round(deblur, 1) > 0.0 else None,
        denoise=denoise if round(denoise, 2) > 0.0 else None,
        dejpeg=quality,
    )


def restrict(request: RestorationRequest, named: Iterable[str]) -> RestorationRequest:
    """The request with only the ``named`` clauses kept (keys from ``CLAUSE_KEYS``)."""
    named = set(named)
    unknown = named - set(CLAUSE_KEYS)
    if unknown:
        raise ValueError(f"unknown clause names {sorted(unknown)}; expected some of {CLAUSE_KEYS}")
    return RestorationRequest(**{k: getattr(request, k) if k in named else None for k in CLAUSE_KEYS})


def prompt_for(params: DegradationParams) -> str:
    """The canonical restoration prompt naming every degradation in ``params``; the blind prompt
    ``"Remove all degradation"`` when they degrade nothing that a prompt can name (the one decision for a
    degradation that changes nothing: what training pairs such an image with, and what validation, the
    benchmarks and the Degrade Image node say)."""
    request = effective_request(params)
    return BLIND_PROMPT if request.is_empty() else render(request)
