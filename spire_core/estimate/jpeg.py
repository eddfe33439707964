"""JPEG quality: from the pixels (quantisation traces in the 8x8 block DCT), or exactly from the file's tables.

From pixels: a decoded JPEG's luma, cut on the codec's 8x8 grid and transformed by the same orthonormal DCT, has
every coefficient near an integer multiple of its quantisation step (up to the rounding of the decoded 8-bit RGB,
about 0.3 in coefficient units). For every candidate quality the libjpeg luma table at that quality is tested by the
lattice consistency ``mean cos(2 pi c / Q)`` over the coefficients that candidate would not quantise to zero
(``|c| > Q / 2``, AC terms only): about 1 on the true table, about 0 on any other that is not a divisor of it,
and about 0 for every candidate when the image never went through JPEG. Tables whose steps divide the true ones
fit as well, so the coarsest well-fitting table is chosen: the lowest quality within ``JPEG_TIE`` of the best
consistency. The grid offset is searched among the most blocky positions mod 8 (``grid_candidates``): noise can
hide the blockiness, never the lattice.

From the file: ``quality_from_tables`` inverts libjpeg's quality scaling of the standard luma table exactly.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import torch

from .common import Estimate, luma

STANDARD_LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
"""The JPEG standard's (Annex K) luma quantisation table, natural (row-major) order, as libjpeg uses it."""

JPEG_DETECT = 0.5
"""Lattice consistency above which an image is read as JPEG-compressed (clean photos score near 0)."""

JPEG_TIE = 0.05
"""Candidates within this of the best consistency count as fitting (the coarsest of them is chosen)."""

MIN_COEFFICIENTS = 64
"""A candidate quality needs at least this many coefficients it does not quantise to zero to be judged."""

GRID_CANDIDATES = 3
"""Grid offsets tested per axis (the most blocky ones): noise can hide the blockiness, not the lattice."""

OFFSET_BLOCKS = 256
"""Blocks (spread over the image) the grid offsets are compared on."""

HIGHEST_NAMED_QUALITY = 95
"""Above this quality JPEG leaves nothing worth a Dejpeg clause (and its steps of 1-2 drown in rounding)."""


@cache
def luma_table(quality: int) -> tuple[int, ...]:
    """libjpeg's luma quantisation table at ``quality`` (1..100, ``jpeg_quality_scaling``, baseline-clamped)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(min(max((q * scale + 50) // 100, 1), 255) for q in STANDARD_LUMA_TABLE)


def quality_from_tables(tables: dict | list | tuple) -> Estimate:
    """The libjpeg quality whose luma table is the file's first quantisation table (Pillow's ``.quantization``,
    natural order). Exact for files written by libjpeg with the standard tables (confidence 1); otherwise the
    nearest quality by the steps' log ratio, with a confidence that falls with the mismatch."""
    first = (
        tables[0] if isinstance(tables, dict) else tables[0] if tables and not isinstance(tables[0], int) else tables
    )
    steps = [int(v) for v in first]
    if len(steps) != 64 or min(steps) < 1:
        raise ValueError(f"a JPEG luma quantisation table has 64 steps >= 1, got {len(steps)} values")
    best, best_error = 100, math.inf
    for quality in range(1, 101):
        error = sum(abs(math.log(a / b)) for a, b in zip(steps, luma_table(quality))) / 64
        if error < best_error - 1e-12:
            best, best_error = quality, error
    exact = best_error == 0.0
    note = "exact, from the file's quantisation tables" if exact else "nearest libjpeg table (non-standard tables)"
    confidence = 1.0 if exact else max(0.0, 1.0 - best_error / 0.3)
    return Estimate(float(best), confidence, best <= HIGHEST_NAMED_QUALITY, note)


def quality_from_file(path: str | Path) -> Estimate:
    """``quality_from_tables`` for the JPEG file at ``path``; raises ValueError when it is not a JPEG file."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image at {path}")
    with Image.open(path) as image:
        if image.format != "JPEG":
            raise ValueError(f"{path} is a {image.format} file, not a JPEG: its quality cannot be read from tables")
        return quality_from_tables(image.quantization)


def _dct_matrix() -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    matrix = torch.cos(math.pi * (2 * n.view(1, 8) + 1) * n.view(8, 1) / 16) * math.sqrt(2 / 8)
    matrix[0] /= math.sqrt(2)
    return matrix


def grid_candidates(plane: torch.Tensor, keep: int = GRID_CANDIDATES) -> list[tuple[int, int]]:
    """(row, column) offsets of the 8x8 block grid worth testing, most likely first: the ``keep`` positions mod 8
    along each axis where the luma steps most (block boundaries), combined, plus (0, 0) (an uncropped JPEG)."""
    ranked = []
    for dim in (0, 1):
        steps = plane.diff(dim=dim).abs().mean(1 - dim)  # step between index i and i + 1
        phase = torch.stack([steps[k::8].mean() for k in range(8)])
        ranked.append([(int(k) + 1) % 8 for k in torch.argsort(phase, descending=True)[:keep]])
    candidates = [(r, c) for r in ranked[0] for c in ranked[1]]
    return candidates + ([(0, 0)] if (0, 0) not in candidates else [])


def _coefficients(image: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
    """(N, 64) DCT coefficients of the luma (0..255 units, level-shifted) of the 8x8 blocks on the grid at
    ``offset`` that have no clipped pixel (clipping breaks the lattice)."""
    y = luma(image) * 255.0 - 128.0
    clipped = ((image <= 0.5 / 255) | (image >= 254.5 / 255)).any(0)
    oy, ox = offset
    h, w = (y.shape[0] - oy) // 8 * 8, (y.shape[1] - ox) // 8 * 8
    blocks = y[oy : oy + h, ox : ox + w].reshape(h // 8, 8, w // 8, 8).permute(0, 2, 1, 3).reshape(-1, 8, 8)
    bad = clipped[oy : oy + h, ox : ox + w].reshape(h // 8, 8, w // 8, 8).any(3).any(1).reshape(-1)
    d = _dct_matrix()
    return (d @ blocks[~bad] @ d.T).reshape(-1, 64)


def consistency(coefficients: torch.Tensor, quality: int) -> tuple[float, int]:
    """(lattice consistency of ``coefficients`` with libjpeg's luma table at ``quality``, coefficients judged)."""
    steps = torch.tensor(luma_table(quality), dtype=torch.float64)
    judged = coefficients.abs() > steps / 2
    judged[:, 0] = False  # the DC term: a flat image's mean sits on some lattice by chance
    count = int(judged.sum())
    if count == 0:
        return 0.0, 0
    phase = torch.cos(2 * math.pi * coefficients / steps)
    return float(phase[judged].mean()), count


def _scores(coefficients: torch.Tensor) -> dict[int, float]:
    scores = {}
    for quality in range(1, 101):
        score, count = consistency(coefficients, quality)
        if count >= MIN_COEFFICIENTS:
            scores[quality] = score
    return scores


def estimate_jpeg_quality(image: torch.Tensor) -> tuple[Estimate, tuple[int, int]]:
    """The JPEG quality one (C, H, W) float64 image in [0, 1] was last saved with, read from its pixels.

    Returns:
        (estimate, grid): the quality (1..100; 100 when no JPEG trace is found) with a confidence (the lattice
        consistency of the chosen table, 0..1), ``present`` when the image reads as JPEG-compressed at a quality of
        at most ``HIGHEST_NAMED_QUALITY``; and the (row, column) offset of the 8x8 grid it was read on. The grid
        must be intact: a JPEG resized afterwards reads as not JPEG.
    """
    best, grid = -math.inf, (0, 0)
    for offset in grid_candidates(luma(image)):  # which grid: judged on a spread subset of the blocks (fast)
        coefficients = _coefficients(image, offset)
        step = max(1, coefficients.shape[0] // OFFSET_BLOCKS)
        scores = _scores(coefficients[::step]) if coefficients.shape[0] >= 4 else {}
        if scores and max(scores.values()) > best:
            best, grid = max(scores.values()), offset
    coefficients = _coefficients(image, grid)
    best_scores = _scores(coefficients) if coefficients.shape[0] >= 4 else {}
    best = max(best_scores.values(), default=-math.inf)
    if not best_scores:
        return Estimate(100.0, 0.0, False, "too few unclipped, textured 8x8 blocks"), grid
    if best < JPEG_DETECT:
        confidence = min(1.0, max(0.0, 1.0 - best / JPEG_DETECT))
        return Estimate(100.0, confidence, False, "no JPEG quantisation found"), grid
    # the coarsest fitting table; qualities right above it that fit exactly as well share its table: their middle
    quality = last = min(q for q, s in best_scores.items() if s >= best - JPEG_TIE)
    while best_scores.get(last + 1, -1.0) >= best_scores[quality] - 1e-9:
        last += 1
    quality = (quality + last) // 2
    present = quality <= HIGHEST_NAMED_QUALITY
    return Estimate(float(quality), min(1.0, best), present, f"8x8 grid at offset {grid}"), grid


__all__ = [
    "STANDARD_LUMA_TABLE",
    "estimate_jpeg_quality",
    "grid_candidates",
    "luma_table",
    "quality_from_file",
    "quality_from_tables",
]
