"""The GPU script's measuring sections, each in its own process:
``python -m spire_core.bench.gpu_sections SECTION --json FILE --device DEV``."""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .gpu_env import PACK_DIR

TARGETS = {
    "degradation_images_per_s_min": 1000.0,
    "sampling_spire_over_controlnet_max": 1.05,
    "sampling_spire_over_bare_within_flop_ratio": 0.10,
    "training_spire_over_controlnet_max": 1.10,
}

RUN_STEPS, RUN_CHECKPOINT = 50, 25
"""The training run's steps and the step it checkpoints at and resumes from."""

PROJECTION_FIXED_GB, PROJECTION_PER_IMAGE_GB = 9.8, 1.8
"""``docs/training.md``'s memory projection at 512 px (fp32, no checkpointing, an upper estimate for bf16):
fixed part plus activations per image."""


def section_degradation(device: str, tiny: bool) -> dict[str, Any]:
    import torch

    from ..degradation import degrade, get_preset, jpeg_codec_distance, jpeg_codec_for, sample_params
    from .common import describe_device, interleaved, summarize
    from .degradation import benchmark_images

    batch, size, repeats = (4, 64, 2) if tiny else (64, 512, 5)
    dev = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    images = benchmark_images(batch, size, generator)
    params = sample_params(get_preset("paper"), generator, batch)
    resident = images.to(dev)  # the batch already on the device, as a GPU data pipeline hands it over
    codec = jpeg_codec_for(dev)
    candidates = {
        f"paper_{codec}": lambda: degrade(resident, params),
        "paper_libjpeg": lambda: degrade(resident, params, jpeg_codec="libjpeg"),
    }
    times = interleaved(candidates, dev, repeats, warmup=1, desc="degradation")
    throughput = {name: summarize(t, batch) for name, t in times.items()}
    best = throughput[f"paper_{codec}"]["items_per_s"]
    qualities = (10, 30, 50, 70, 90)
    distance = jpeg_codec_distance(resident[: min(8, batch)], qualities, codec) if codec != "libjpeg" else None
    return {
        "machine": describe_device(dev),
        "config": {"batch": batch, "size": size, "preset": "paper", "repeats": repeats, "images_on_device": True},
        "jpeg_codec": codec,
        "throughput": throughput,
        "images_per_s": best,
        "jpeg_codec_distance_from_libjpeg": distance,
        "target_images_per_s": TARGETS["degradation_images_per_s_min"],
        "target_met": best >= TARGETS["degradation_images_per_s_min"],
    }


def section_sampling(device: str, tiny: bool) -> dict[str, Any]:
    from .sampling import find_comfyui, run

    if find_comfyui() is None:
        return {"status": "skipped", "reason": "no ComfyUI (set COMFYUI_DIR or pass --comfyui)"}
    if tiny:
        return run(device=device, batches=(1,), repeats=3, dtype="float32", latent=8, size="tiny", memory=False)
    dtype = "float16" if device.startswith("cuda") else "float32"
    return run(device=device, batches=(1, 2), repeats=20, dtype=dtype, latent=64, inner=5, memory_batches=(1,))


def section_sampling_sdxl(device: str, tiny: bool, trunk: str = "full") -> dict[str, Any]:
    """The sampling benchmark for the SDXL architecture at its native 128x128 latent (1024 px) with a SPIRE trunk
    of size ``trunk`` against core ControlNet (tiny: the toy SDXL at an 8x8 latent, whose quarter trunk is 32
    channels wide)."""
    from .sampling import find_comfyui, run

    if find_comfyui() is None:
        return {"status": "skipped", "reason": "no ComfyUI (set COMFYUI_DIR or pass --comfyui)"}
    if tiny:
        return run(
            device=device,
            batches=(1,),
            repeats=3,
            dtype="float32",
            latent=8,
            size="tiny_sdxl",
            memory=False,
            trunk=trunk,
        )
    dtype = "float16" if device.startswith("cuda") else "float32"
    return run(device=device, batches=(1,), repeats=8, dtype=dtype, latent=128, inner=2, size="sdxl", trunk=trunk)


def section_training_step(device: str, tiny: bool) -> dict[str, Any]:
    from .training import run

    precision = "bf16"
    if tiny:
        result = run(sizes=("tiny",), batch=2, steps=2, device=device, precision=precision, gradient_checkpointing=True)
    else:
        result = run(sizes=("sd15",), batch=4, steps=8, device=device, precision=precision, gradient_checkpointing=True)
    case = next(iter(result["cases"].values()))
    if tiny:  # the projection is of the SD 1.5 size
        return result
    projection_gb = PROJECTION_FIXED_GB + result["batch"] * PROJECTION_PER_IMAGE_GB * (case["resolution_px"] / 512) ** 2
    measured = {c: case["memory"][c]["peak_mib"] * 2**20 / 1e9 for c in ("spire", "controlnet")}
    result["memory_against_projection"] = {
        "projection_gb": round(projection_gb, 2),
        "projection": "docs/training.md: fixed 9.8 GB + 1.8 GB per 512 px image (fp32, no checkpointing; upper "
        "estimate); the measurement holds the UNet, the adaptor, its gradients and AdamW moments and the step's "
        "activations, not the VAE and text encoder",
        "measured_peak_gb": {c: round(v, 2) for c, v in measured.items()},
        "measured_over_projection": round(measured["spire"] / projection_gb, 3),
    }
    return result


def section_training_run(device: str, tiny: bool, work: Path) -> dict[str, Any]:
    import torch

    from ..imageio import load_image, save_image
    from ..training import Trainer, TrainingConfig, config_from_dict, latest_checkpoint, write_tiny_base

    steps, at = (4, 2) if tiny else (RUN_STEPS, RUN_CHECKPOINT)
    base = write_tiny_base(work / "base")
    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(sorted((PACK_DIR / "docs" / "samples").glob("*.png"))):
        image = load_image(path)
        for j in range(2):
            crop = image[..., 64 * j : 64 * j + 192, 64 * j : 64 * j + 192]
            save_image(crop, photos / f"photo{i}{j}.png")
            (photos / f"photo{i}{j}.txt").write_text("a photo\n", encoding="utf-8")
    precision = "bf16" if device.startswith("cuda") else "no"

    def config(out: Path, resume: Path | None = None) -> TrainingConfig:
        raw = {
            "model": {"base": str(base)},
            "data": {"folder": str(photos), "resolution": 64, "num_workers": 0},
            "degradation": {"preset": "paper"},
            "train": {
                "output_dir": str(out),
                "steps": steps,
                "batch_size": 4,
                "gradient_accumulation_steps": 1,
                "mixed_precision": precision,
                "device": "auto" if device.startswith("cuda") else "cpu",
                "gradient_checkpointing": True,
                **({"resume": str(resume)} if resume else {}),
            },
            "optim": {"lr": 1e-4},
            "checkpoint": {"every": at},
            "validation": {"every": 0},
            "logging": {"every": 1, "tensorboard": "off"},
        }
        return config_from_dict(raw)

    start = time.perf_counter()
    whole = [r["loss"] for r in Trainer(config(work / "run")).train()]
    checkpoint = latest_checkpoint(work / "run" / "checkpoints")
    first = sorted((work / "run" / "checkpoints").glob("step-*"))[0]
    _reset_accelerate()
    rest = [r["loss"] for r in Trainer(config(work / "resumed", resume=first)).train()]
    seconds = time.perf_counter() - start
    tail = whole[at:]
    worst = max((abs(a - b) / max(abs(b), 1e-12) for a, b in zip(rest, tail)), default=math.inf)
    return {
        "base": "tiny random SD1-structured base (spire_core.training.write_tiny_base), 64 px crops, batch 4",
        "device": str(torch.device(device)),
        "mixed_precision": precision,
        "steps": steps,
        "checkpoint_at": at,
        "resumed_from": first.name,
        "last_checkpoint": checkpoint.name if checkpoint else None,
        "losses": [round(x, 6) for x in whole],
        "resumed_losses": [round(x, 6) for x in rest],
        "all_finite": all(math.isfinite(x) for x in whole + rest),
        "resumed_steps": len(rest),
        "resume_max_relative_difference": round(worst, 6),
        "resume_matches": len(rest) == len(tail) and worst <= 1e-3,
        "seconds": round(seconds, 1),
    }


def _reset_accelerate() -> None:
    """Let a second ``Trainer`` in this process build its own accelerate state."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


SECTION_FUNCTIONS = {
    "degradation": section_degradation,
    "sampling": section_sampling,
    "sampling_sdxl": section_sampling_sdxl,
    "sampling_sdxl_quarter": functools.partial(section_sampling_sdxl, trunk="quarter"),
    "training_step": section_training_step,
}


def _section_main(argv: list[str]) -> int:
    """``python -m spire_core.bench.gpu_sections SECTION --json FILE --device DEV [--tiny] [--work DIR]``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("section", choices=[*SECTION_FUNCTIONS, "training_run"])
    parser.add_argument("--json", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--work", default=None)
    args = parser.parse_args(argv)
    if args.section == "training_run":
        with tempfile.TemporaryDirectory(dir=args.work) as work:
            result = section_training_run(args.device, args.tiny, Path(work))
    else:
        result = SECTION_FUNCTIONS[args.section](args.device, args.tiny)
    Path(args.json).write_text(json.dumps(result, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(_section_main(sys.argv[1:]))
