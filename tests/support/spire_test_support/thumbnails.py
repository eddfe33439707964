"""Thumbnails (same-name .jpg) for the shipped workflows, made from real runs of the library.

PYTHONPATH=.:tests/support python -m spire_test_support.thumbnails [COMFYUI_DIR]
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from spire_core.degradation import PRESETS, degrade, sample_params
from spire_core.imageio import load_image, to_pil

from .workflows import PACK_DIR, WORKFLOW_DIR


def caption(image: Image.Image, text: str, width: int) -> Image.Image:
    lines = textwrap.wrap(text, width=max(20, width // 7))
    band = 14 * len(lines) + 10
    out = Image.new("RGB", (image.width, image.height + band), (24, 24, 24))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((6, image.height + 5 + 14 * i), line, fill=(235, 235, 235))
    return out


def degradation_preview(source: Path) -> Image.Image:
    clean = load_image(source)
    result = degrade(clean, sample_params(PRESETS["paper"], torch.Generator().manual_seed(0), 1))
    side = 256
    left = to_pil(clean).resize((side, side), Image.Resampling.LANCZOS)
    right = to_pil(result.images).resize((side, side), Image.Resampling.LANCZOS)
    pair = Image.new("RGB", (2 * side, side))
    pair.paste(left, (0, 0))
    pair.paste(right, (side, 0))
    return caption(pair, "SPIRE degradation: " + result.prompts()[0], 2 * side)


def spire_restore(source: Path) -> Image.Image:
    """The degraded input the workflow restores, with the graph it runs (no weights ship, so no result)."""
    clean = load_image(source)
    result = degrade(clean, sample_params(PRESETS["paper"], torch.Generator().manual_seed(1), 1))
    side = 256
    picture = to_pil(result.images).resize((2 * side, 2 * side), Image.Resampling.LANCZOS).crop((0, 0, 2 * side, side))
    text = (
        "SPIRE restore: Load Image -> Apply Adaptor (SPIRE) with 'Remove all degradation' + semantic prompt -> "
        "KSampler -> Save Image"
    )
    return caption(picture, text, 2 * side)


def main() -> None:
    comfy = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / "comfy" / "ComfyUI"
    source = comfy / "input" / "example.png"
    if not source.is_file():
        source = PACK_DIR / "docs" / "samples" / "astronaut.png"
    degradation_preview(source).save(WORKFLOW_DIR / "spire_degradation_preview.jpg", quality=88)
    spire_restore(source).save(WORKFLOW_DIR / "spire_restore.jpg", quality=88)
    print("wrote spire_degradation_preview.jpg, spire_restore.jpg")


if __name__ == "__main__":
    main()
