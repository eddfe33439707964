"""Projected peak training memory per base and trunk size, from measured fp32 training steps on the CPU.

    python -m spire_core.bench training --project [--sizes sd15,sdxl] [--trunks full,half,quarter] [--latent 16]

For each base and trunk size, SPIRE training steps (fp32, batch 1, gradient checkpointing of the trunk and the UNet,
as a memory-bound run uses) run in their own process at two small latents (``latent`` and twice it); the peak
resident set they add, minus the adaptor's gradients and AdamW moments (12 bytes per trained parameter, allocated
during the first step), is the activation memory of one image at that size. Part of it does not grow with the image
(workspaces, the allocator's own), so the two sizes give a line in the pixel count, ``a + b * pixels``, read at the
base's native resolution. The projected GPU peak there, at batch 4:

    frozen base: UNet and text encoders in bf16, VAE in fp32
  + adaptor weights, gradients, AdamW moments and EMA in fp32 (16 bytes per trained parameter)
  + batch x activations per image at the native resolution (the line above)

The fp32 activations are an upper estimate for bf16 autocast; the CUDA context and the allocator's slack (1-2 GB)
are not included. A base and trunk whose fixed part alone exceeds this machine's memory is not stepped (its
``activations_gib`` is ``None``); its fixed part is still reported.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.config import TRUNK_SIZES
from .common import describe_device
from .training import SIZES, memory_in_subprocess

NATIVE_LATENT = {"sd15": 64, "sdxl": 128, "tiny": 8, "tiny_sdxl": 8}
"""Each base's native training resolution in latent cells (SD 1.5: 512 px, SDXL: 1024 px)."""

FROZEN_EXTRA_BYTES = {
    "sd15": 123_060_480 * 2 + 83_653_863 * 4,
    "sdxl": (123_060_480 + 694_659_840) * 2 + 83_653_863 * 4,
    "tiny": 0,
    "tiny_sdxl": 0,
}
"""The frozen text encoder(s) in bf16 and the VAE in fp32, beside the UNet (SD 1.5: CLIP ViT-L; SDXL: CLIP ViT-L and
OpenCLIP ViT-bigG with its projection; both the SD VAE)."""

PROJECTED_BATCH = 4
TARGET_GIB = 24.0
"""An SD 1.5 quarter trunk and an SDXL quarter trunk must each project under this at batch 4, native resolution."""
SMALL_GPU_GIB = 12.0

_STATE_BYTES = 16  # fp32 weights, gradients, two AdamW moments, EMA
_STEP_STATE_BYTES = 12  # gradients and AdamW moments: allocated during the measured steps


def _gib(n: float) -> float:
    return round(n / 2**30, 2)


def _adaptor_parameters(size: str, trunk: str) -> tuple[int, int]:
    """Trained parameters of a SPIRE adaptor for ``size`` and ``trunk`` (from the file layout) and the UNet's, both
    counted on the meta device (nothing allocated)."""
    import math

    from diffusers import UNet2DConditionModel

    from ..models import AdaptorConfig, controlnet_config_from_unet
    from ..models.config import narrow_controlnet_config
    from ..models.file_layout import adaptor_file_shapes

    with torch.device("meta"):
        unet_config = dict(UNet2DConditionModel(**SIZES[size]["unet"]).config)
        unet_parameters = sum(p.numel() for p in UNet2DConditionModel(**SIZES[size]["unet"]).parameters())
    full = controlnet_config_from_unet(unet_config)
    narrow = narrow_controlnet_config(full, trunk)
    base = None if narrow == full else full["block_out_channels"]
    config = AdaptorConfig(narrow, base_block_out_channels=base, numeric_tokens=4)
    return sum(math.prod(s) for s in adaptor_file_shapes(config).values()), unet_parameters


def project(
    sizes: tuple[str, ...] = ("sd15", "sdxl"),
    trunks: tuple[str, ...] = tuple(TRUNK_SIZES),
    latent: int = 16,
    steps: int = 2,
    memory_limit_gib: float = 20.0,
) -> dict[str, Any]:
    """Measure and project (see the module docstring). ``memory_limit_gib``: cases whose fp32 weights and optimiser
    state alone would exceed it here are projected without a step."""
    cases: dict[str, Any] = {}
    for size in sizes:
        native = NATIVE_LATENT[size]
        for trunk in trunks:
            adaptor, unet = _adaptor_parameters(size, trunk)
            fixed = unet * 2 + FROZEN_EXTRA_BYTES[size] + adaptor * _STATE_BYTES
            case: dict[str, Any] = {
                "size": size,
                "trunk": trunk,
                "adaptor_parameters": adaptor,
                "unet_parameters": unet,
                "native_resolution_px": 8 * native,
                "fixed_gib": _gib(fixed),
                "measured_latents": [latent, 2 * latent],
            }
            cpu_bytes = unet * 4 + adaptor * (_STATE_BYTES - 4)  # what the fp32 step holds here, before activations
            if cpu_bytes / 2**30 > memory_limit_gib:
                case.update(activations_gib=None, note=f"not stepped: {_gib(cpu_bytes)} GiB of fp32 state here")
            else:
                activations = {}
                for side in (latent, 2 * latent):
                    measured = memory_in_subprocess("spire", size, 1, steps, "cpu", "fp32", True, side, trunk)
                    increase = (measured["peak_mib"] - measured["before_mib"]) * 2**20
                    activations[side] = max(0.0, increase - _STEP_STATE_BYTES * measured["adaptor_parameters"])
                slope = (activations[2 * latent] - activations[latent]) / (3 * latent**2)  # bytes per latent cell
                per_image = max(activations[2 * latent], activations[latent] + slope * (native**2 - latent**2))
                case.update(
                    activations_gib={8 * side: _gib(value) for side, value in activations.items()},
                    activations_per_native_image_gib=_gib(per_image),
                    method=measured["method"],
                )
                for batch in (1, PROJECTED_BATCH):
                    case[f"projected_batch{batch}_gib"] = _gib(fixed + batch * per_image)
                projected = case[f"projected_batch{PROJECTED_BATCH}_gib"]
                case["fits_24gb"] = projected < TARGET_GIB
                case["fits_12gb"] = projected < SMALL_GPU_GIB
            cases[f"{size}/{trunk}"] = case
    quarter = [c for c in cases.values() if c["trunk"] == "quarter"]  # one not measured does not meet it
    return {
        "benchmark": "training_memory_projection",
        "machine": describe_device(torch.device("cpu")),
        "projected_batch": PROJECTED_BATCH,
        "precision_assumed": "bf16 frozen base, fp32 adaptor state, fp32 activations (upper estimate)",
        "gradient_checkpointing": True,
        "target": {
            "quarter_trunks_under_gib": TARGET_GIB,
            "met": bool(quarter) and all(c.get("fits_24gb") is True for c in quarter),
        },
        "cases": cases,
    }
