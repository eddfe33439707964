"""Noise: Gaussian and Poisson (shot) noise fields drawn from each item's own seed (``apply_noise``).

Poisson counts are drawn by table inversion from 31-bit uniform integers (``sample_poisson_counts``), the same
numbers on every device; a graded noise is the sum of a residual and a named field (``noise_field``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from . import workers
from .params import NoiseParams
from .scratch import scratch_tensor

POISSON_PEAK = 255.0
"""Photon count of a white pixel for Poisson (shot) noise: the image is treated as 8-bit counts."""

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma, used for grey (luma-only) Poisson noise on colour images."""


_POISSON_K = 512
"""Counts per rate in the tables: P(X >= 512) for X ~ Poisson(255) is far below 2^-31."""

_POISSON_BITS = 31
"""Each draw is a uniform integer ``b`` in [0, 2^31) (see ``_uniform_draws``); ``u = b / 2^31``."""

_POISSON_BUCKET_SHIFT = 20
"""Guide-table bucket of a draw: its top 11 bits, ``b >> 20`` (2048 buckets per rate)."""

_POISSON_BUCKETS = 1 << (_POISSON_BITS - _POISSON_BUCKET_SHIFT)

_AMBIGUOUS = 4096.0
"""Guide entry of a bucket that two or more counts share (no ``count - rate`` comes near it)."""


@lru_cache(maxsize=8)
def _poisson_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Per integer rate 0..255: the inversion thresholds, two guide tables and the number of bisection
    steps that settles any bucket.

    ``threshold`` (int64, flattened 256 x K) holds ``ceil(CDF_rate(k) * 2^31)`` from a float64 CDF, so
    that for a draw ``b`` the count is ``min{k : b < threshold[k]}``, i.e. ``min{k : CDF(k) > b / 2^31}``.
    Guide entry j of a rate covers the draws ``b >> 20 == j``: ``delta`` (float32) holds ``count - rate``
    when one count covers the whole bucket, else ``_AMBIGUOUS``; ``span`` (int32) holds ``lo | hi << 16``,
    the counts of the bucket's first and last draw (the answer lies in [lo, hi])."""
    rates = torch.arange(int(POISSON_PEAK) + 1, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(_POISSON_K, dtype=torch.float64).unsqueeze(0)
    pmf = torch.exp(k * torch.log(rates.clamp(min=1e-300)) - rates - torch.lgamma(k + 1))
    pmf[0] = 0.0
    pmf[0, 0] = 1.0
    cdf = torch.cumsum(pmf, dim=1).clamp(max=1.0)
    cdf[:, -1] = 1.0  # every draw lands below the last threshold
    threshold = torch.ceil(cdf * 2.0**_POISSON_BITS).to(torch.int64).contiguous()
    step = 1 << _POISSON_BUCKET_SHIFT
    first_draw = torch.arange(_POISSON_BUCKETS, dtype=torch.int64) * step
    edges = torch.stack([first_draw, first_draw + (step - 1)]).T.reshape(1, -1).expand(cdf.shape[0], -1)
    counts = torch.searchsorted(threshold, edges.contiguous(), right=True).view(cdf.shape[0], _POISSON_BUCKETS, 2)
    lo, hi = counts[..., 0], counts[..., 1]
    delta = torch.where(hi == lo, lo - rates, _AMBIGUOUS)
    span = (lo | (hi << 16)).to(torch.int32)
    steps = max(1, math.ceil(math.log2(int((hi - lo).max()) + 1)))
    return (
        threshold.reshape(-1).to(device),
        delta.to(torch.float32).reshape(-1).to(device),
        span.reshape(-1).to(device),
        steps,
    )


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Positions of the true elements of a 1-D bool tensor (int64)."""
    if workers.cpu_path(mask.device):
        return torch.from_numpy(np.flatnonzero(mask.numpy()))  # several times faster than torch.nonzero
    return mask.nonzero().squeeze(1)


def _uniform_draws(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` uniform 31-bit integers (int32 in [0, 2^31)) from ``generator``.

    On a CPU, one 63-bit seed from ``generator`` starts numpy's PCG64, whose raw 64-bit outputs give
    two draws each: about twice as fast as torch's Mersenne twister. Elsewhere, ``random_`` on the
    device. Either way the generator advances, and the same state gives the same draws."""
    device = generator.device
    out = scratch_tensor("e", (n,), torch.int32, device)
    if not workers.cpu_path(device):
        return out.random_(generator=generator)
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    raw = np.random.PCG64(seed).random_raw((n + 1) // 2).view(np.int32)[:n]
    return torch.bitwise_and(torch.from_numpy(raw), 0x7FFFFFFF, out=out)


def _poisson_deltas(rates: torch.Tensor, generator: torch.Generator, out: torch.Tensor | None = None) -> torch.Tensor:
    """``Poisson(rate) - rate`` as float32 for int32 ``rates`` in [0, 255], by inversion
    (``k = min{k : CDF_rate(k) > u}``, one 31-bit uniform draw per element): a guide table answers
    about 97% of the elements outright, and a fixed-length bisection settles the rest. Written to
    ``out`` (float32, ``rates.numel()`` elements) when given."""
    threshold, delta, span, steps = _poisson_tables(rates.device)
    flat = rates.reshape(-1)
    n, device = flat.numel(), flat.device
    draws = _uniform_draws(n, generator)
    cell = torch.bitwise_right_shift(draws, _POISSON_BUCKET_SHIFT, out=scratch_tensor("b", (n,), torch.int32, device))
    cell.add_(flat, alpha=_POISSON_BUCKETS)
    out = torch.index_select(delta, 0, cell, out=torch.empty(n, device=device) if out is None else out.view(n))
    todo = _flat_nonzero(torch.gt(out, _AMBIGUOUS / 2, out=scratch_tensor("c", (n,), torch.bool, device)))
    if todo.numel():
        code = span.index_select(0, cell.index_select(0, todo))
        lo, hi = code & 0xFFFF, code >> 16
        draw = draws.index_select(0, todo).to(torch.int64)
        rate = flat.index_select(0, todo)
        base = rate * _POISSON_K
        # most ambiguous buckets hold two counts: one comparison settles them (a draw below the
        # first threshold is the first count, whatever the bucket's width)
        above = threshold.index_select(0, base + lo) <= draw
        lo += above.to(torch.int32)
        wide = _flat_nonzero(above & (hi > lo))
        if wide.numel():
            l, h, w_base, w_draw = lo[wide], hi[wide], base[wide], draw[wide]
            # bisection for the first k in [l, h] with threshold(k) > draw, as deep as the widest bucket needs
            for _ in range(min(steps, int(h.sub(l).max()).bit_length())):
                mid = (l + h) >> 1
                above = threshold.index_select(0, w_base + mid) <= w_draw
                l = torch.where(above, mid + 1, l)
                h = torch.where(above, h, mid)
            lo[wide] = l
        out.index_copy_(0, todo, (lo - rate).to(torch.float32))
    return out.reshape(rates.shape)


def sample_poisson_counts(rates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Exact Poisson draws for integer rates in [0, 255] by inversion: ``k = min{k : CDF_rate(k) > u}``.

    One uniform draw per element (see ``_poisson_deltas``); several times faster than ``torch.poisson``
    on a CPU; on a given device, the same generator state gives the same counts.

    Args:
        rates: integer tensor of rates in [0, 255] (any shape).
        generator: the source of the uniforms, on ``rates.device``.

    Returns:
        int32 counts, shape of ``rates``.
    """
    rates = rates.to(torch.int32)
    return _poisson_deltas(rates, generator).to(torch.int32).add_(rates)


def _unit_noise(params: NoiseParams, image: torch.Tensor, temporary: bool = False) -> tuple[torch.Tensor, float]:
    """``(field, multiplier)`` with ``noise_field == field * multiplier`` (kept apart so the multiply
    can be folded into the addition). A ``temporary`` field may live in this thread's scratch memory
    (see ``scratch_tensor``): use it before the next operation. A noise with a named part (graded requests)
    is the sum of its two parts' fields, each computed exactly as ``noise_field`` computes it alone."""
    residual, named = params.parts()
    if named is not None:
        first, m1 = _unit_noise(residual, image)
        second, m2 = _unit_noise(named, image)
        return torch.add(first.mul_(m1), second.mul_(m2)), 1.0
    c, h, w = image.shape
    device = image.device
    generator = torch.Generator(device=device).manual_seed(params.seed)
    channels = 1 if params.gray else c
    field = scratch_tensor("a", (channels, h, w), torch.float32, device) if temporary else None
    if params.kind == "gaussian":
        field = torch.randn((channels, h, w), generator=generator, device=device, dtype=torch.float32, out=field)
        return field, params.sigma
    if params.gray and c == 3:
        weights = torch.tensor(LUMA_WEIGHTS, device=device, dtype=image.dtype).view(3, 1, 1)
        weighted = torch.mul(image, weights, out=scratch_tensor("b", (3, h, w), image.dtype, device))
        value = torch.sum(weighted, 0, keepdim=True, out=scratch_tensor("c", (1, h, w), image.dtype, device))
    else:
        value = image[:1] if params.gray else image
    scaled = torch.mul(value, POISSON_PEAK, out=scratch_tensor("b", value.shape, value.dtype, device))
    scaled.clamp_(0, POISSON_PEAK).round_()
    rates = scratch_tensor("d", value.shape, torch.int32, device).copy_(scaled)
    return _poisson_deltas(rates, generator, out=field), params.scale / POISSON_PEAK


def noise_field(params: NoiseParams, image: torch.Tensor) -> torch.Tensor:
    """The additive noise for one image (C, H, W), drawn from ``params.seed`` on the image's device.

    Gaussian: ``sigma * N(0, 1)``. Poisson (shot noise of 8-bit photon counts): with
    ``n = round(PEAK * v)`` for the pixel value ``v`` (its luma when ``gray``), the noise is
    ``scale * (Poisson(n) - n) / PEAK``: zero mean, standard deviation ``scale * sqrt(v / PEAK)``.
    A grey field has one channel and broadcasts over colour.
    """
    field, multiplier = _unit_noise(params, image)
    return field.mul_(multiplier)


def apply_noise(images: torch.Tensor, noises: Sequence[NoiseParams | None], inplace: bool = False) -> torch.Tensor:
    """Add each item's noise field (``noise_field``) and clip to [0, 1]; into ``images`` itself when
    ``inplace`` (for a caller whose tensor it is: the pipeline's intermediates), else into a new one."""
    if len(noises) != images.shape[0]:
        raise ValueError(f"apply_noise: {len(noises)} settings for a batch of {images.shape[0]}")
    if all(n is None for n in noises):
        return images
    out = images if inplace else torch.empty_like(images)
    for i, params in enumerate(noises):
        if params is None:
            if not inplace:
                out[i] = images[i]
        else:
            field, multiplier = _unit_noise(params, images[i], temporary=True)
            torch.add(images[i], field, alpha=multiplier, out=out[i]).clamp_(0, 1)
    return out
