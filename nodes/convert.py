"""Conversions between ComfyUI types and spire_core types."""

from __future__ import annotations

import math

import torch


def require_finite(**values: float) -> None:
    """Raise ``ValueError`` naming every number that is NaN or infinite (a JSON ``NaN`` in an API prompt passes
    ComfyUI's own validation: read as a setting it would give a black image or a silent "off")."""
    bad = [
        f"{name}={value!r}" for name, value in values.items() if isinstance(value, float) and not math.isfinite(value)
    ]
    if bad:
        raise ValueError(f"{', '.join(bad)}: expected a finite number; NaN and infinity are not settings")


def image_to_bchw(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) float in [0, 1] -> spire_core (B, C, H, W) float32 (a view when possible)."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name}: expected a ComfyUI IMAGE batch (B, H, W, C), got {shape}")
    if image.shape[0] == 0:
        raise ValueError(f"{name}: the image batch is empty")
    return image.movedim(-1, 1).to(torch.float32)


def bchw_to_image(images: torch.Tensor) -> torch.Tensor:
    """spire_core (B, C, H, W) -> ComfyUI IMAGE (B, H, W, C), contiguous float32 on the CPU-or-same device."""
    return images.movedim(1, -1).contiguous().to(torch.float32)
