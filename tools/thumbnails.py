"""Thumbnails (same-name .jpg) for the shipped workflows, made from real runs of the library.

python -m tools.thumbnails [COMFYUI_DIR]     (from the pack's folder)
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from spire_core.degradation import PRESETS, degrade, sample_params
from spire_core.imageio import load_image, to_pil

from .build_workflows import PACK_DIR, WORKFLOW_DIR


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


CARDS = {
    "spire_restore": "SPIRE restore: Load Image -> Apply Adaptor (SPIRE) with 'Remove all degradation' + semantic "
    "prompt -> KSampler -> Save Image",
    "spire_blind_restore": "SPIRE blind restoration: one 'Restore (SPIRE)' node, 'Remove all degradation', no "
    "semantic prompt, wavelet colour fix",
    "spire_semantic_restore": "SPIRE semantic + restoration prompts: Apply Adaptor -> Restoration Guider (separate "
    "scales) -> SamplerCustomAdvanced -> Color Fix",
    "spire_strength_sweep": "SPIRE strength sweep: Denoise with sigma 0.02 | 0.05 | 0.1, side by side",
    "spire_degrade_restore_metrics": "SPIRE benchmark: Degrade -> Restore with the written prompt -> PSNR/SSIM "
    "against the clean photo, saved as CSV + JSON",
    "spire_restore_to_generation": "SPIRE restore -> upscale 1.5x -> img2img with the semantic prompt",
    "spire_large_photo_tiled": "SPIRE large photo: 512 px tiles, 64 px blended overlaps, memory bounded by the tile",
    "spire_suggested_restore": "SPIRE suggested prompt: the photo's noise, blur, JPEG quality and upsample factor "
    "read off it -> Restore (SPIRE) with that prompt",
    "spire_sdxl_blind_restore": "SPIRE with SDXL: sd_xl_base_1.0 + the SDXL adaptor, one 'Restore (SPIRE)' node, "
    "'Remove all degradation', wavelet colour fix",
    "spire_sdxl_large_photo_tiled": "SPIRE with SDXL, large photo (2048 px): 1024 px tiles, 128 px blended overlaps, "
    "memory bounded by the tile",
}
"""Captions of the restore workflows' thumbnails (no SPIRE weights ship, so they show the input they work on)."""


def card(source: Path, text: str, seed: int) -> Image.Image:
    """The degraded input a workflow restores, captioned with what the workflow does."""
    clean = load_image(source)
    result = degrade(clean, sample_params(PRESETS["paper"], torch.Generator().manual_seed(seed), 1))
    side = 256
    picture = to_pil(result.images).resize((2 * side, 2 * side), Image.Resampling.LANCZOS).crop((0, 0, 2 * side, side))
    return caption(picture, text, 2 * side)


def main() -> None:
    comfy = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / "comfy" / "ComfyUI"
    source = comfy / "input" / "example.png"
    if not source.is_file():
        source = PACK_DIR / "docs" / "samples" / "astronaut.png"
    degradation_preview(source).save(WORKFLOW_DIR / "spire_degradation_preview.jpg", quality=88)
    for seed, (name, text) in enumerate(CARDS.items(), 1):
        card(source, text, seed).save(WORKFLOW_DIR / f"{name}.jpg", quality=88)
    print(f"wrote spire_degradation_preview.jpg and {len(CARDS)} restore thumbnails")


if __name__ == "__main__":
    main()
