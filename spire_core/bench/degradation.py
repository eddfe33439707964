"""Degradation throughput: the batched torch pipeline vs a per-image BasicSR-style reference.

Both run the same operations with the same params on the same 512x512 photos (paper preset by
default) in one process, alternating, and the result is a ratio measured side by side. Equality is
checked first, untimed: with the library's noise fields fed to the reference, outputs must agree to
float precision when JPEG is left out, and by PSNR (independent libjpeg encode) with JPEG in.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..degradation import degrade, get_preset, sample_params
from ..degradation import noise as noise_ops
from ..eval.metrics import psnr
from ..imageio import load_image
from .common import describe_device, interleaved, summarize
from .reference import numpy_noise, reference_degrade_one

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "docs" / "samples"
TARGET_CPU_RATIO = 4.0
TARGET_GPU_IMAGES_PER_S = 500.0


def benchmark_images(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` distinct size x size crops (random position, flip) of the bundled photos."""
    photos = [load_image(p) for p in sorted(SAMPLES_DIR.glob("*.png"))]
    if not photos:
        raise FileNotFoundError(f"no sample photos in {SAMPLES_DIR}")
    out = []
    for i in range(batch):
        photo = photos[i % len(photos)]
        h, w = photo.shape[-2:]
        if min(h, w) < size:
            scale = size / min(h, w)
            photo = torch.nn.functional.interpolate(
                photo, size=(math.ceil(h * scale), math.ceil(w * scale)), mode="bicubic", antialias=True
            ).clamp(0, 1)
            h, w = photo.shape[-2:]
        y = int(torch.randint(0, h - size + 1, (), generator=generator))
        x = int(torch.randint(0, w - size + 1, (), generator=generator))
        crop = photo[..., y : y + size, x : x + size]
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        out.append(crop)
    return torch.cat(out).contiguous()


@contextmanager
def _recorded_noise_fields() -> Iterator[dict[int, np.ndarray]]:
    """While active, every noise field the library adds is kept (HWC float32, keyed by its seed), so
    the reference can add exactly the same random numbers."""
    fields: dict[int, np.ndarray] = {}
    original = noise_ops._unit_noise

    def recording(params, image: torch.Tensor, **options):  # noqa: ANN001, ANN003, ANN202
        field, multiplier = original(params, image, **options)
        fields[params.seed] = (field * multiplier).permute(1, 2, 0).numpy().copy()
        return field, multiplier

    noise_ops._unit_noise = recording
    try:
        yield fields
    finally:
        noise_ops._unit_noise = original


def _replay(fields: dict[int, np.ndarray]):  # noqa: ANN202
    def noise(params, image: np.ndarray) -> np.ndarray:  # noqa: ANN001
        field = fields[params.seed]
        if field.shape[:2] != image.shape[:2]:
            raise AssertionError(f"noise stage at {image.shape[:2]} in the reference, {field.shape[:2]} in the library")
        return field

    return noise


def check_equality(images: torch.Tensor, params: list) -> dict[str, Any]:
    """Compare the torch pipeline with the reference on every item, the reference adding the very
    noise fields the library drew (recorded from its run), so that only the deterministic operations
    are compared.

    Without JPEG the two agree to float precision, hence the criteria: PSNR >= 80 dB and at most 1e-4
    of the values off by more than 1e-4. With JPEG in (OpenCV's libjpeg in the reference, Pillow's in
    the library), PSNR >= 50 dB: float rounding can move an 8-bit sample before the encode.
    """
    worst_psnr, worst_fraction, max_abs, jpeg_psnrs = math.inf, 0.0, 0.0, []
    for with_jpeg in (False, True):
        run_params = params if with_jpeg else [p.without({"jpeg"}) for p in params]
        with _recorded_noise_fields() as fields:
            ours = degrade(images, run_params).images
        for i, p in enumerate(run_params):
            hwc = images[i].permute(1, 2, 0).numpy()
            ref = torch.from_numpy(reference_degrade_one(hwc, p, noise=_replay(fields)))
            mine = ours[i].permute(1, 2, 0)
            if with_jpeg:
                jpeg_psnrs.append(psnr(mine, ref))
                continue
            diff = (mine - ref).abs()
            max_abs = max(max_abs, float(diff.max()))
            worst_fraction = max(worst_fraction, float((diff > 1e-4).float().mean()))
            worst_psnr = min(worst_psnr, psnr(mine, ref))
    return {
        "without_jpeg": {
            "min_psnr_db": round(worst_psnr, 1),
            "max_fraction_off_by_more_than_1e-4": worst_fraction,
            "max_abs_diff": max_abs,
        },
        "with_jpeg": {
            "min_psnr_db": round(min(jpeg_psnrs), 1),
            "median_psnr_db": round(float(np.median(jpeg_psnrs)), 1),
        },
        "criteria": "without JPEG: PSNR >= 80 dB and <= 1e-4 of values off by > 1e-4; with JPEG: PSNR >= 50 dB",
        "equal": worst_psnr >= 80 and worst_fraction <= 1e-4 and min(jpeg_psnrs) >= 50,
    }


def run(
    batch: int = 16,
    size: int = 512,
    preset: str = "paper",
    seed: int = 0,
    repeats: int = 5,
    device: str = "cpu",
    reference: bool = True,
) -> dict[str, Any]:
    """Measure and return the result dict (see the module docstring)."""
    dev = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    images = benchmark_images(batch, size, generator)
    params = sample_params(get_preset(preset), generator, batch)
    result: dict[str, Any] = {
        "benchmark": "degradation",
        "machine": describe_device(dev),
        "config": {"batch": batch, "size": size, "preset": preset, "seed": seed, "repeats": repeats},
    }
    candidates = {"torch_batched": lambda: degrade(images.to(dev), params)}
    if reference:
        result["equality"] = check_equality(images, params)
        hwc = [images[i].permute(1, 2, 0).numpy() for i in range(batch)]
        candidates["reference_per_image"] = lambda: [
            reference_degrade_one(hwc[i], params[i], noise=numpy_noise) for i in range(batch)
        ]
    times = interleaved(candidates, dev, repeats, desc="degradation")
    result["throughput"] = {name: summarize(t, batch) for name, t in times.items()}
    ours = result["throughput"]["torch_batched"]["items_per_s"]
    if reference:
        ratio = ours / result["throughput"]["reference_per_image"]["items_per_s"]
        result["ratio_torch_over_reference"] = round(ratio, 2)
        # each repeat times both back to back: the ratio within each pair, as drift hits both alike
        pairs = [r / t for t, r in zip(times["torch_batched"], times["reference_per_image"])]
        result["pair_ratios"] = {
            "each": [round(x, 2) for x in pairs],
            "median": round(statistics.median(pairs), 2),
            "min": round(min(pairs), 2),
            "max": round(max(pairs), 2),
        }
        if dev.type == "cpu":
            result["target"] = {"ratio": TARGET_CPU_RATIO, "met": ratio >= TARGET_CPU_RATIO}
    if dev.type == "cuda":
        result["target_gpu"] = {"images_per_s": TARGET_GPU_IMAGES_PER_S, "met": ours >= TARGET_GPU_IMAGES_PER_S}
    return result
