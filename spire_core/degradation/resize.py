"""Resize: antialiased down/up-sampling with Pillow's filters (``apply_resize``, ``resize_matrix``).

The one-axis operators are banded matrices (``_banded``); the CPU applies them tap by tap, devices use torch's
antialiased interpolation, which computes the same weights. Which sizes a resize by nearest pixels reproduces
exactly is decided by arithmetic (``_is_nearest_exact``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import workers
from .memo import byte_bounded


def _box(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x <= 0.5)).to(x.dtype)


def _triangle(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(1 - x.abs(), min=0)


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    ax = x.abs()
    near = ((a + 2) * ax - (a + 3)) * ax * ax + 1
    far = ((a * ax - 5 * a) * ax + 8 * a) * ax - 4 * a
    return torch.where(ax < 1, near, torch.where(ax < 2, far, torch.zeros_like(ax)))


_FILTERS = {"area": (_box, 0.5), "bilinear": (_triangle, 1.0), "bicubic": (_cubic, 2.0)}


RESIZE_TABLE_BYTES = 16 * 2**20
"""Most bytes the cached per-axis resampling taps (``_banded``) hold together; an entry is a few
float32 and int64 values per output pixel (about 200 KB for a 2048 px axis with five taps)."""


def _resize_band(n_in: int, n_out: int, interpolation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The nonzero band of ``resize_matrix``: per output pixel, the first input pixel its filter may
    reach (n_out,) int64 and the normalised float64 weights of that pixel and the next ``width - 1``
    (n_out, width), zero past the image or the filter's reach. O(n_out * taps) memory, where the
    dense matrix takes O(n_out * n_in)."""
    filt, support = _FILTERS[interpolation]
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = support * stretch
    centres = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    lo = torch.clamp((centres - support + 0.5).trunc(), min=0).long()
    hi = torch.clamp((centres + support + 0.5).trunc(), max=n_in).long()
    width = max(1, int((hi - lo).max()))
    x = lo.unsqueeze(1) + torch.arange(width).unsqueeze(0)  # (n_out, width) input pixels
    weights = filt((x.to(torch.float64) - centres.unsqueeze(1) + 0.5) / stretch)
    weights = torch.where(x < hi.unsqueeze(1), weights, torch.zeros_like(weights))
    total = weights.sum(dim=1, keepdim=True)
    return lo, weights / torch.where(total == 0, torch.ones_like(total), total)


def resize_matrix(n_in: int, n_out: int, interpolation: str) -> torch.Tensor:
    """(n_out, n_in) float64 resampling matrix for one axis (dense: a reference, never cached).

    Pillow's antialiased resampling: output pixel ``i`` is centred at input coordinate
    ``(i + 0.5) * n_in / n_out``; the filter (box, triangle or Keys a=-0.5 cubic) is stretched by the
    shrink factor when shrinking; taps falling outside the image are dropped and the rest
    renormalised. Hence "area" averages pixel areas exactly when shrinking.
    """
    lo, weights = _resize_band(n_in, n_out, interpolation)
    index = (lo.unsqueeze(1) + torch.arange(weights.shape[1]).unsqueeze(0)).clamp(max=n_in - 1)
    matrix = torch.zeros((n_out, n_in), dtype=torch.float64)
    # past the image the weights are zero and the clamped index repeats the last pixel: adding keeps it
    return matrix.scatter_add_(1, index, weights)


@byte_bounded(RESIZE_TABLE_BYTES)
def _banded(n_in: int, n_out: int, interpolation: str) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """``resize_matrix`` as taps: per tap j, the source index of each output pixel (n_out,) and its
    weight (n_out,) in float32, from each row's first nonzero weight; rows with fewer nonzero
    weights than the widest get zero-weight taps."""
    lo, weights = _resize_band(n_in, n_out, interpolation)
    nonzero = weights != 0
    skip = nonzero.to(torch.int8).argmax(dim=1)  # leading zero weights of each row
    last = weights.shape[1] - nonzero.flip(1).to(torch.int8).argmax(dim=1)
    width = max(1, int((last - skip).max()))
    first = lo + skip
    taps = []
    for j in range(width):
        column = (skip + j).clamp(max=weights.shape[1] - 1)
        weight = weights.gather(1, column.unsqueeze(1)).squeeze(1)
        weight = torch.where(skip + j < weights.shape[1], weight, torch.zeros_like(weight))
        taps.append(((first + j).clamp(max=n_in - 1), weight.to(torch.float32)))
    return tuple(taps)


@lru_cache(maxsize=1024)  # a bool per pair of sizes: about 100 bytes an entry
def _is_nearest_exact(n_in: int, n_out: int) -> bool:
    """Whether the box filter on this axis is a single unit tap per output pixel that picks exactly
    the pixel torch's ``nearest-exact`` picks (true when enlarging, barring float rounding of the
    source coordinate, which this checks on the indices themselves; when shrinking only where float
    rounding drops a window's second pixel, as for 21 -> 20). Decided on the taps alone: a few
    values per output pixel, never the dense matrix."""
    if n_out == n_in:
        return True
    taps = _banded(n_in, n_out, "area")
    if len(taps) != 1 or not bool((taps[0][1] == 1).all()):
        return False
    source = torch.arange(n_in, dtype=torch.float32)
    picked = F.interpolate(source.view(1, 1, n_in, 1), size=(n_out, 1), mode="nearest-exact").flatten()
    across = F.interpolate(source.view(1, 1, 1, n_in), size=(1, n_out), mode="nearest-exact").flatten()
    return torch.equal(picked.long(), taps[0][0]) and torch.equal(across.long(), taps[0][0])


def _apply_banded(images: torch.Tensor, taps: tuple[tuple[torch.Tensor, torch.Tensor], ...], dim: int) -> torch.Tensor:
    """Apply a banded one-axis operator (``_banded``) along ``dim`` (-1 or -2): a weighted sum of
    gathered pixels, in float32 on the images' device."""
    shape = (-1,) if dim == -1 else (-1, 1)
    out = None
    for index, weight in taps:
        index = index.to(images.device)
        # advanced indexing gathers along the last axis faster than index_select does
        term = images[..., index] if dim == -1 else images.index_select(dim, index)
        term.mul_(weight.to(images.device, images.dtype).view(shape))
        out = term if out is None else out.add_(term)
    return out


PIL_FILTERS = {
    "area": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
"""Pillow's antialiased filter for each interpolation name (the filters ``resize_matrix`` follows)."""


def _resize_pillow(images: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """``apply_resize`` through Pillow's resampling of 32-bit float planes (the same filters, summed
    in double precision; on CPUs twice as fast as gathering box taps in torch), plane by plane."""
    b, c = images.shape[:2]
    out = torch.empty((b, c, *size), dtype=torch.float32)
    source = images.detach().to(torch.float32).numpy()
    target = out.numpy()
    for i in range(b):
        for j in range(c):
            plane = Image.fromarray(source[i, j], mode="F").resize((size[1], size[0]), PIL_FILTERS[interpolation])
            target[i, j] = np.asarray(plane)
    return out


def resized_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Output size of a resize by ``scale``: ``max(1, round(side * scale))`` per side."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def apply_resize(images: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Resize a batch to ``size`` = (H', W') with an antialiased filter (see ``resize_matrix``)."""
    h, w = images.shape[-2:]
    if (h, w) == tuple(size):
        return images
    if interpolation == "area":
        if _is_nearest_exact(h, size[0]) and _is_nearest_exact(w, size[1]):
            return F.interpolate(images, size=tuple(size), mode="nearest-exact")
        if workers.cpu_path(images.device):
            return _resize_pillow(images, size, interpolation)
        # box weights are a handful of equal taps per output pixel: gathering them is several times
        # cheaper than multiplying by the mostly-zero resize matrices
        if size[0] != h:
            images = _apply_banded(images, _banded(h, size[0], "area"), -2)
        if size[1] != w:
            images = _apply_banded(images, _banded(w, size[1], "area"), -1)
        return images
    # torch's antialiased kernels compute exactly resize_matrix's weights (checked in the tests), faster;
    # when enlarging, the triangle filter is not stretched and plain bilinear is the same sum, faster still
    if interpolation == "bilinear" and size[0] >= h and size[1] >= w:
        # channels as batch items: this kernel then gives the same bits whatever the thread count
        planes = images.reshape(-1, 1, h, w)
        out = F.interpolate(planes, size=tuple(size), mode="bilinear", antialias=False, align_corners=False)
        return out.reshape(*images.shape[:-2], *size)
    return F.interpolate(images, size=tuple(size), mode=interpolation, antialias=True, align_corners=False)
