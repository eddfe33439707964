"""How much noise and how much blur a restoration left, measured against the noise-free reference.

Both estimators take BCHW float images in [0, 1] of the same shape and return one number per image (a float64
tensor of shape (B,) on the CPU), in the units of the restoration prompt: a noise standard deviation on the
[0, 1] scale and a Gaussian blur sigma in pixels.

- ``residual_noise(output, reference)``: the standard deviation of the white noise in ``output - reference``,
  read on its finest diagonal wavelet band (HH of a stride-1 Haar transform, which carries a white noise of
  standard deviation s at exactly s and little of any smooth difference), by the median absolute value
  (``1.4826 * MAD``, robust to the few large values of edges and lost detail), over the flat half of the image
  (pixels whose reference has the least local gradient) away from clipped tones. A plain residual standard
  deviation would count lost detail and colour shifts as noise.
- ``residual_blur_sigma(output, reference)``: the sigma of the isotropic Gaussian blur (the degradation
  pipeline's own sampled kernels) that best maps the reference onto the output, by least squares on image
  gradients (insensitive to a colour offset) over a grid of sigmas, refined by a parabola. Independent noise adds
  the same amount to every candidate's squared error, so it does not move the minimum. A loss of contrast reads
  as a little blur (10 % less contrast: about 0.4 px); a reference shared noise pattern (the same grain in the
  output and the reference) pulls it towards 0, so the reference must be free of it.

Validated on known operations before use (``tests/core/test_control.py``, on real photos, 128-pixel crops):
adding Gaussian noise of sigma s in [0.02, 0.25] to a photo blurred by up to 3 px reads s within 5 %, and
blurring by s in [0.8, 4] px reads s within 10 % under added noise of sigma 0.05.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..degradation.kernels import gaussian_1d, kernel_size_for

MAD_TO_SIGMA = 1.4826
"""Standard deviation of a normal distribution per unit of median absolute value."""

FLAT_FRACTION = 0.5
"""Share of each image (the flattest by the reference's local gradient) the noise is read on."""

CLIP_MARGIN = 0.02
"""Pixels whose reference is within this of 0 or 1 are always left out (noise there was clipped)."""

MIN_SHARE = 0.1
"""Share of the flat pixels the noise is read on at least, when the clipping margin leaves fewer."""

BLUR_GRID = tuple(round(0.25 * k, 2) for k in range(0, 41))
"""Coarse candidate blur sigmas in pixels: 0 to 10 px in steps of 0.25; refined in steps of 0.025 around the
best one, then by a parabola."""

BLUR_FINE_STEP = 0.025


def _check(output: torch.Tensor, reference: torch.Tensor, name: str) -> None:
    if not isinstance(output, torch.Tensor) or not isinstance(reference, torch.Tensor):
        raise TypeError(f"{name}: output and reference must be torch tensors (B, C, H, W) in [0, 1]")
    if output.dim() != 4 or output.shape != reference.shape:
        raise ValueError(
            f"{name}: output {tuple(output.shape)} and reference {tuple(reference.shape)} must be (B, C, H, W) "
            "batches of the same shape"
        )
    if min(output.shape[-2:]) < 16:
        raise ValueError(f"{name}: images of {tuple(output.shape[-2:])} px are too small; need at least 16 px")
    if not (torch.isfinite(output).all() and torch.isfinite(reference).all()):
        raise ValueError(f"{name}: output and reference must be finite")


def _smooth(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with the degradation pipeline's sampled taps, reflect padding (BCHW float64)."""
    if sigma <= 0:
        return images
    taps = gaussian_1d(sigma, kernel_size_for("iso", sigma=sigma)).to(images)
    radius = taps.numel() // 2
    channels = images.shape[1]
    pad_h, pad_w = min(radius, images.shape[-2] - 1), min(radius, images.shape[-1] - 1)
    out = F.pad(images, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    if pad_w < radius or pad_h < radius:  # tiny images: replicate what reflection cannot reach
        out = F.pad(out, (radius - pad_w, radius - pad_w, radius - pad_h, radius - pad_h), mode="replicate")
    out = F.conv2d(out, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _haar_hh(images: torch.Tensor) -> torch.Tensor:
    """Stride-1 diagonal Haar detail (x[i,j] - x[i+1,j] - x[i,j+1] + x[i+1,j+1]) / 2: unit gain for white noise."""
    return (images[..., :-1, :-1] - images[..., 1:, :-1] - images[..., :-1, 1:] + images[..., 1:, 1:]) / 2


def flat_mask(reference: torch.Tensor, fraction: float = FLAT_FRACTION) -> torch.Tensor:
    """(B, 1, H-1, W-1) bool: the ``fraction`` of each image with the least local gradient of the reference (its
    mean over channels, smoothed over 2 px), away from tones within ``CLIP_MARGIN`` of 0 or 1."""
    ref = reference.double()
    grey = ref.mean(1, keepdim=True)
    gx = grey[..., :, 1:] - grey[..., :, :-1]
    gy = grey[..., 1:, :] - grey[..., :-1, :]
    gradient = gx[..., :-1, :].abs() + gy[..., :, :-1].abs()
    activity = _smooth(gradient, 2.0)
    tones = ref[..., :-1, :-1]
    usable = ((tones > CLIP_MARGIN) & (tones < 1 - CLIP_MARGIN)).all(1, keepdim=True)
    masks = []
    for b in range(ref.shape[0]):
        values = activity[b][usable[b]]
        if values.numel() < 16:
            raise ValueError("residual_noise: the reference has almost no unclipped pixels to read the noise on")
        threshold = torch.quantile(values, fraction)
        masks.append((activity[b] <= threshold) & usable[b])
    return torch.stack(masks)


def _unclipped(mask: torch.Tensor, tones: torch.Tensor, margin: float) -> torch.Tensor:
    """The part of ``mask`` whose tones (every channel) lie at least ``margin`` from 0 and 1; at least
    ``MIN_SHARE`` of the mask (the pixels whose tones are nearest mid-grey) when fewer qualify."""
    distance = torch.minimum(tones, 1 - tones).amin(0, keepdim=True)  # (1, H-1, W-1)
    keep = mask & (distance >= margin)
    need = max(16, int(MIN_SHARE * int(mask.sum())))
    if int(keep.sum()) >= need:
        return keep
    candidates = torch.where(mask, distance, torch.full_like(distance, -1.0))
    threshold = torch.topk(candidates.flatten(), need).values[-1]
    return mask & (distance >= threshold)


def residual_noise(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B,) the standard deviation of the noise ``output`` carries relative to the noise-free ``reference``.

    How: on the stride-1 diagonal Haar band (unit gain for white noise), ``HH(output) = a * HH(reference) + r``
    is fitted by least squares over the flattest half of the image (``a`` near 1 for a sharp output, near 0 for
    one that lost the reference's fine detail or grain, so lost detail is not read as noise; independent noise
    does not bias ``a``); the noise is ``1.4826 * median |r|`` (robust to the few large values of edges). A second
    pass leaves out pixels whose reference tone lies within twice that noise of 0 or 1, where added noise was
    clipped (keeping at least ``MIN_SHARE`` of the flat half, nearest mid-grey first).

    Args:
        output: (B, C, H, W) float in [0, 1]: a restoration (or any image of the reference's content).
        reference: (B, C, H, W) float in [0, 1]: the noise-free image (for a restoration asked to keep some blur,
            the sharp clean image: the estimator does not count blur as noise).

    Returns:
        float64 (B,) on the CPU, [0, 1] units.
    """
    _check(output, reference, "residual_noise")
    out_hh = _haar_hh(output.double().cpu())
    ref = reference.double().cpu()
    ref_hh = _haar_hh(ref)
    tones = ref[..., :-1, :-1]
    masks = flat_mask(ref)
    result = []
    for b in range(out_hh.shape[0]):
        mask = masks[b]
        for _ in range(2):  # the second pass leaves out tones the noise could have clipped
            where = mask.expand_as(out_hh[b])
            o, r = out_hh[b][where], ref_hh[b][where]
            gain = float((o * r).sum() / (r * r).sum().clamp_min(1e-20))
            sigma = MAD_TO_SIGMA * float((o - gain * r).abs().median())
            mask = _unclipped(masks[b], tones[b], max(CLIP_MARGIN, 2.0 * sigma))
        result.append(sigma)
    return torch.tensor(result, dtype=torch.float64)


def _gradients(images: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor]:
    gx = images[..., :, 1:] - images[..., :, :-1]
    gy = images[..., 1:, :] - images[..., :-1, :]
    if margin:
        gx = gx[..., margin:-margin, margin:-margin]
        gy = gy[..., margin:-margin, margin:-margin]
    return gx, gy


def blur_fit_errors(output: torch.Tensor, reference: torch.Tensor, grid: tuple[float, ...] = BLUR_GRID) -> torch.Tensor:
    """(B, len(grid)) mean squared gradient error between ``output`` and the reference blurred by each sigma
    (gradients: a colour offset does not count; independent noise adds the same amount for every sigma)."""
    _check(output, reference, "residual_blur_sigma")
    out = output.double().cpu()
    ref = reference.double().cpu()
    margin = min(8, min(out.shape[-2:]) // 8)  # reflect padding at the borders is not the pipeline's
    ox, oy = _gradients(out, margin)
    errors = []
    for sigma in grid:
        bx, by = _gradients(_smooth(ref, sigma), margin)
        errors.append((bx - ox).pow(2).flatten(1).mean(1) + (by - oy).pow(2).flatten(1).mean(1))
    return torch.stack(errors, dim=1)


def residual_blur_sigma(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B,) the Gaussian blur sigma (pixels) that best explains how ``output`` is blurred relative to ``reference``.

    Args:
        output: (B, C, H, W) float in [0, 1]; noise in it does not bias the estimate.
        reference: (B, C, H, W) float in [0, 1]: the sharp image.

    Returns:
        float64 (B,) on the CPU; 0 when no blur fits better than none, at most ``BLUR_GRID[-1]``.
    """
    coarse = blur_fit_errors(output, reference, BLUR_GRID)
    out = []
    for b in range(output.shape[0]):
        best = float(coarse[b].min())
        k = int(torch.nonzero(coarse[b] <= best * (1 + 1e-9) + 1e-15)[0])
        low, high = BLUR_GRID[max(k - 1, 0)], BLUR_GRID[min(k + 1, len(BLUR_GRID) - 1)]
        steps = round((high - low) / BLUR_FINE_STEP)
        grid = tuple(low + BLUR_FINE_STEP * i for i in range(steps + 1))
        row = blur_fit_errors(output[b : b + 1], reference[b : b + 1], grid)[0]
        best = float(row.min())
        k = int(torch.nonzero(row <= best * (1 + 1e-9) + 1e-15)[0])  # ties (kernels too small to act): the least
        sigma = grid[k]
        if 0 < k < len(grid) - 1:  # parabola through the minimum and its neighbours
            left, mid, right = float(row[k - 1]), float(row[k]), float(row[k + 1])
            curvature = left - 2 * mid + right
            if curvature > 0:
                sigma += 0.5 * BLUR_FINE_STEP * (left - right) / curvature
        out.append(max(0.0, sigma))
    return torch.tensor(out, dtype=torch.float64)


def ideal_residual(present: float, named: float) -> float:
    """The level a request leaves: ``sqrt(present^2 - named^2)`` (noise and Gaussian blur both compose so)."""
    return math.sqrt(max(present * present - named * named, 0.0))


__all__ = [
    "BLUR_GRID",
    "blur_fit_errors",
    "flat_mask",
    "ideal_residual",
    "residual_blur_sigma",
    "residual_noise",
]
