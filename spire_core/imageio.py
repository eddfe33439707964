"""Reading and writing images as BCHW float tensors in [0, 1] (Pillow; 8-bit files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def load_image(path: str | Path, mode: str = "RGB") -> torch.Tensor:
    """Read an image file as a (1, C, H, W) float32 tensor in [0, 1] (C = 3 for RGB, 1 for "L", 4 for "RGBA")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image at {path}")
    with Image.open(path) as image:
        array = np.array(image.convert(mode))
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255).unsqueeze(0)


def to_pil(image: torch.Tensor) -> Image.Image:
    """A (C, H, W) or (1, C, H, W) float tensor in [0, 1] as an 8-bit Pillow image (rounded)."""
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"to_pil takes one image, got a batch of {image.shape[0]}")
        image = image[0]
    array = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write one image (see ``to_pil``); the format follows the file extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path)
    return path
