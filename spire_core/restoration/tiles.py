"""Tiled model calls (MultiDiffusion-style), framework-agnostic: the ComfyUI guider and ``SpirePipeline`` both
cut the latent into overlapping tiles, predict each (with the degraded image cropped to it) and blend the
predictions with weights that ramp linearly across the overlap, so no tile border shows and the memory of a
model call follows the tile, not the image."""

from __future__ import annotations

from collections.abc import Callable

import torch

Window = tuple[int, int, int, int, int, int]
"""A tile: (top, left, height, width, full height, full width), in latent cells."""


def tile_windows(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` covering ``size`` with at least ``overlap`` between neighbours."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def ramp(length: int, start: int, tile: int, size: int, overlap: int, device, dtype) -> torch.Tensor:  # noqa: ANN001
    """1-D blend weights of a tile: rising linearly over ``overlap`` cells at edges that face another tile."""
    weights = torch.ones(length, device=device, dtype=dtype)
    if overlap <= 0:
        return weights
    steps = torch.arange(1, overlap + 1, device=device, dtype=dtype) / (overlap + 1)
    n = min(overlap, length)
    if start > 0:
        weights[:n] = torch.minimum(weights[:n], steps[:n])
    if start + tile < size:
        weights[-n:] = torch.minimum(weights[-n:], steps[:n].flip(0))
    return weights


def tiled_predict(
    predict: Callable[[torch.Tensor, Window | None], torch.Tensor], x: torch.Tensor, tile: int, overlap: int
) -> torch.Tensor:
    """``predict`` over overlapping tiles of the (..., H, W) latent ``x``, blended.

    Args:
        predict: ``(latent tile, window) -> prediction`` of the tile's shape; called once with ``(x, None)``
            when no tiling is needed (``tile`` 0, or at least the latent's size).
        x: the latent.
        tile: tile side in latent cells (0: no tiling).
        overlap: cells shared by neighbouring tiles, blended.
    """
    height, width = x.shape[-2:]
    if tile <= 0 or (tile >= height and tile >= width):
        return predict(x, None)
    out = torch.zeros_like(x)
    total = torch.zeros((1, 1, height, width), device=x.device, dtype=x.dtype)
    tile_h, tile_w = min(tile, height), min(tile, width)
    for top in tile_windows(height, tile_h, overlap):
        for left in tile_windows(width, tile_w, overlap):
            window = (..., slice(top, top + tile_h), slice(left, left + tile_w))
            prediction = predict(x[window], (top, left, tile_h, tile_w, height, width))
            wy = ramp(tile_h, top, tile_h, height, overlap, x.device, x.dtype)
            wx = ramp(tile_w, left, tile_w, width, overlap, x.device, x.dtype)
            weight = (wy[:, None] * wx[None, :])[None, None]
            out[window] += prediction * weight
            total[window] += weight
    return out / total
