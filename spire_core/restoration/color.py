"""Colour correction of restored images against a reference (e.g. the degraded input).

Diffusion restorers tend to drift in colour. Both corrections here keep the restored image's detail
and take its colour from a reference:

- :func:`wavelet_color_fix` (StableSR): the image's high frequencies + the reference's low frequencies,
  split with an a trous (dilated) wavelet pyramid.
- :func:`adain_color_fix`: per image and channel, the mean and standard deviation of the reference.

Shapes and ranges: ``image`` is (B, C, H, W) float in [0, 1]; ``reference`` is (B, C, h, w) or
(1, C, h, w) float in [0, 1]. A reference of another size is resized to the image's size with
antialiased bilinear interpolation; a reference batch of 1 serves the whole image batch. The result
has the image's shape, dtype and device and is clamped to [0, 1]. Inputs are never modified.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["adain_color_fix", "match_reference", "wavelet_color_fix", "wavelet_decompose"]

ADAIN_EPS = 1e-5
"""Added to the variance before the square root (as StableSR), so a flat channel does not divide by zero."""


def match_reference(image: torch.Tensor, reference: torch.Tensor, name: str = "color fix") -> torch.Tensor:
    """``reference`` brought to ``image``'s batch, size, dtype and device.

    The spatial size is matched with antialiased bilinear interpolation (``align_corners=False``); a
    reference batch of 1 is expanded to the image batch.

    Args:
        image: (B, C, H, W) float.
        reference: (B, C, h, w) or (1, C, h, w) float.
        name: what to call the operation in error messages.

    Raises:
        ValueError: a tensor that is not 4-D or is empty, channel counts that differ, or a reference batch
            that is neither 1 nor the image's batch (naming both sizes).
    """
    for label, t in (("image", image), ("reference", reference)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: {label} must be a (B, C, H, W) tensor, got {shape}")
        if t.shape[0] == 0 or t.shape[2] == 0 or t.shape[3] == 0:
            raise ValueError(f"{name}: {label} is empty, shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name}: {label} must be float in [0, 1], got {t.dtype}")
    b, c, h, w = image.shape
    if reference.shape[1] != c:
        raise ValueError(
            f"{name}: image has {c} channels but reference has {reference.shape[1]}; give both the same colour layout"
        )
    if reference.shape[0] not in (1, b):
        raise ValueError(
            f"{name}: image batch has {b} images but reference batch has {reference.shape[0]}; "
            "give one reference for all images or one per image"
        )
    reference = reference.to(device=image.device, dtype=image.dtype)
    if reference.shape[-2:] != (h, w):
        reference = F.interpolate(reference, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return reference.expand(b, -1, -1, -1)


def _wavelet_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    # The 3x3 kernel is the outer product of [1/4, 1/2, 1/4], so blur the two axes separately with shifted
    # slices (much faster than a dilated depthwise convolution on the CPU). Replicate borders like StableSR;
    # a dilation larger than the image only repeats the edge pixels.
    d = dilation
    x = F.pad(x, (d, d, d, d), mode="replicate")
    x = 0.25 * x[..., : -2 * d, :] + 0.5 * x[..., d:-d, :] + 0.25 * x[..., 2 * d :, :]
    return 0.25 * x[..., : -2 * d] + 0.5 * x[..., d:-d] + 0.25 * x[..., 2 * d :]


def wavelet_decompose(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (B, C, H, W) images into (high, low) frequencies with ``levels`` a trous blurs.

    Level ``i`` blurs the previous low-pass with the 3x3 binomial kernel dilated by ``2**i``; ``high`` is
    the sum of the details removed at every level, so ``high + low == x`` (up to rounding).
    """
    if levels < 1:
        raise ValueError(f"wavelet_decompose: levels must be >= 1, got {levels}")
    high = torch.zeros_like(x)
    low = x
    for level in range(levels):
        blurred = _wavelet_blur(low, 2**level)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_color_fix(image: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """StableSR's wavelet colour fix: ``image``'s high frequencies + ``reference``'s low frequencies.

    Args:
        image: (B, C, H, W) float in [0, 1], the restored images whose detail is kept.
        reference: (B, C, h, w) or (1, C, h, w) float in [0, 1], whose colours (low frequencies) are taken.
            A different size is resized to (H, W) with antialiased bilinear interpolation first.
        levels: a trous levels; the split lies at a blur radius of about ``2**levels`` pixels.

    Returns:
        (B, C, H, W) in [0, 1] (clamped), with ``image``'s dtype and device.

    Raises:
        ValueError: see :func:`match_reference`; ``levels`` < 1.
    """
    reference = match_reference(image, reference, "wavelet_color_fix")
    high, _ = wavelet_decompose(image, levels)
    _, low = wavelet_decompose(reference, levels)
    return (high + low).clamp(0.0, 1.0)


def adain_color_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """AdaIN colour fix: each image channel normalised, then given the reference channel's mean and std.

    Statistics are per image and per channel over all pixels (population standard deviation, with
    :data:`ADAIN_EPS` added to the image's variance).

    Args:
        image: (B, C, H, W) float in [0, 1].
        reference: (B, C, h, w) or (1, C, h, w) float in [0, 1]; a different size is resized to (H, W) with
            antialiased bilinear interpolation first (this changes its statistics only slightly).

    Returns:
        (B, C, H, W) in [0, 1] (clamped), with ``image``'s dtype and device.

    Raises:
        ValueError: see :func:`match_reference`.
    """
    reference = match_reference(image, reference, "adain_color_fix")
    var, mean = torch.var_mean(image, dim=(2, 3), keepdim=True, correction=0)
    ref_std, ref_mean = torch.std_mean(reference, dim=(2, 3), keepdim=True, correction=0)
    return ((image - mean) / torch.sqrt(var + ADAIN_EPS) * ref_std + ref_mean).clamp(0.0, 1.0)
