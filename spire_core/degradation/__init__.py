"""Degradation synthesis (design.md section 4.1): spec -> sampled params -> deterministic batched ops.

    spec = PRESETS["paper"]
    params = sample_params(spec, torch.Generator().manual_seed(0), batch_size=images.shape[0])
    result = degrade(images, params)          # images: BCHW float in [0, 1], any device
    result.images, result.prompts()           # degraded batch, one restoration prompt per item

``sample_params`` is the only function that draws random numbers; ``degrade`` is a pure function of
(images, params) and its JPEG codec: libjpeg on the CPU, nvjpeg by default on CUDA where it works
(``jpeg_codec_for``; ``degrade(..., jpeg_codec="libjpeg")`` gives libjpeg's bytes on any device).
``degrade_graded`` makes training pairs for graded prompts (each named level removed down to its residual)
and ``degrade_partial`` for partial ones (a subset of the degradations removed in full).

Modules: ``spec``/``sample``/``params`` (what to draw, drawing it, the drawn values), ``pipeline`` (``degrade``),
one module per operation (``blur``, ``resize``, ``noise``, ``jpeg`` with ``jpeg_codecs``; ``kernels`` makes the blur
kernels), ``implied`` (the restoration prompt a degradation implies), ``graded`` (training targets of graded and
partial prompts), and the CPU machinery the operations share (``scratch`` memory, ``workers`` threads, ``memo``
byte-bounded caches).
"""

from .blur import apply_blur
from .graded import (
    GradedDegradation,
    PartialDegradation,
    degrade_graded,
    degrade_partial,
    gradable,
    graded_params,
    graded_request,
)
from .implied import CLAUSE_KEYS, effective_request, noise_sigma, prompt_for, restrict
from .jpeg import apply_jpeg, jpeg_codec_distance, jpeg_roundtrip_uint8
from .jpeg_codecs import JPEG_CODECS, jpeg_codec_for, torchvision_jpeg_problem
from .kernels import kernel_sigma, kernel_size_for, make_kernel
from .noise import apply_noise
from .params import (
    INTERPOLATIONS,
    KERNEL_TYPES,
    NOISE_TYPES,
    OPERATIONS,
    BlurParams,
    DegradationParams,
    JpegParams,
    NoiseParams,
    ResizeParams,
    StageParams,
    params_list_from_json,
    params_list_to_json,
)
from .pipeline import DegradationResult, degrade, validate_images
from .resize import apply_resize, resize_matrix
from .sample import manual_params, sample_params
from .spec import (
    DEFAULT_PRESET,
    PRESETS,
    BlurSpec,
    DegradationSpec,
    JpegSpec,
    NoiseSpec,
    ResizeSpec,
    StageSpec,
    get_preset,
)

__all__ = [
    "CLAUSE_KEYS",
    "DEFAULT_PRESET",
    "INTERPOLATIONS",
    "JPEG_CODECS",
    "KERNEL_TYPES",
    "NOISE_TYPES",
    "OPERATIONS",
    "PRESETS",
    "BlurParams",
    "BlurSpec",
    "DegradationParams",
    "DegradationResult",
    "DegradationSpec",
    "GradedDegradation",
    "JpegParams",
    "JpegSpec",
    "NoiseParams",
    "NoiseSpec",
    "PartialDegradation",
    "ResizeParams",
    "ResizeSpec",
    "StageParams",
    "StageSpec",
    "apply_blur",
    "apply_jpeg",
    "apply_noise",
    "apply_resize",
    "degrade",
    "degrade_graded",
    "degrade_partial",
    "effective_request",
    "get_preset",
    "gradable",
    "graded_params",
    "graded_request",
    "jpeg_codec_distance",
    "jpeg_codec_for",
    "jpeg_roundtrip_uint8",
    "kernel_sigma",
    "kernel_size_for",
    "make_kernel",
    "manual_params",
    "noise_sigma",
    "params_list_from_json",
    "params_list_to_json",
    "prompt_for",
    "resize_matrix",
    "restrict",
    "sample_params",
    "torchvision_jpeg_problem",
    "validate_images",
]
