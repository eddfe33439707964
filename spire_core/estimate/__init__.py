"""Reference-free estimates of a real photo's degradation, and the restoration prompt they suggest.

    prompt, estimates = suggest_prompt(image)      # image: (1, C, H, W) float in [0, 1]
    prompt                                         # "Deblur with sigma 1.6; Denoise with sigma 0.05"
    estimates.denoise.value, .confidence, .present # sigma on the [0, 1] scale

Each estimator reads one degradation in the restoration prompt's units (design.md section 4.1) and says how sure
it is: ``estimate_noise`` (sigma, before any later JPEG), ``estimate_blur`` (Gaussian sigma, px),
``estimate_jpeg_quality`` (from pixels; ``quality_from_file`` reads a JPEG file's tables exactly) and
``estimate_upsample`` (total shrink factor). Their accuracy on the degradation pipeline's own presets is measured by
``python -m spire_core.eval estimate``.
"""

from .blur import BLUR_NAMED, estimate_blur
from .common import MIN_SIDE, Estimate, check_image
from .jpeg import estimate_jpeg_quality, luma_table, quality_from_file, quality_from_tables
from .noise import NOISE_NAMED, estimate_noise
from .resize import UPSAMPLE_NAMED, estimate_upsample
from .suggest import (
    Estimates,
    estimate_degradation,
    estimate_one,
    resize_softness,
    suggest_for_file,
    suggest_prompt,
)

__all__ = [
    "BLUR_NAMED",
    "MIN_SIDE",
    "NOISE_NAMED",
    "UPSAMPLE_NAMED",
    "Estimate",
    "Estimates",
    "check_image",
    "estimate_blur",
    "estimate_degradation",
    "estimate_jpeg_quality",
    "estimate_noise",
    "estimate_one",
    "estimate_upsample",
    "luma_table",
    "quality_from_file",
    "quality_from_tables",
    "resize_softness",
    "suggest_for_file",
    "suggest_prompt",
]
