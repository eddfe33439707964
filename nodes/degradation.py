"""Degradation nodes: synthesise degraded images together with the restoration prompt they imply."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..spire_core.degradation import (
    DEFAULT_PRESET,
    PRESETS,
    degrade,
    get_preset,
    manual_params,
    params_list_to_json,
    sample_params,
)
from .convert import bchw_to_image, image_to_bchw, require_finite

MANUAL = "manual"
SEED_MAX = 2**53 - 1


class DegradeImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        presets = [DEFAULT_PRESET, *[p for p in PRESETS if p != DEFAULT_PRESET], MANUAL]
        return io.Schema(
            node_id="SPIRE_DegradeImage",
            display_name="Degrade Image (SPIRE)",
            category="SPIRE/degradation",
            description=(
                "Degrade images with SPIRE's parameterised pipeline and write the restoration prompt each one "
                "implies. 'paper' is the paper's two-stage Blur -> Resize -> Noise -> JPEG pipeline (first-stage "
                "resize skipped half the time); other presets are lighter, heavier or single operations; 'manual' "
                "applies exactly the four values below. Output size equals input size. The prompt output has one "
                "line per batch item; the params output is the exact draw as JSON (reproducible)."
            ),
            inputs=[
                io.Image.Input("image", tooltip="Clean images to degrade (any size; RGB, grey or RGBA, alpha kept)."),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=SEED_MAX,
                    control_after_generate=True,
                    tooltip="Seed of the parameter draw and the noise. Same seed, same output.",
                ),
                io.Combo.Input(
                    "preset",
                    options=presets,
                    default=DEFAULT_PRESET,
                    tooltip="Which degradations to draw. 'manual' uses the values below instead of drawing.",
                ),
                io.Float.Input(
                    "blur_sigma",
                    default=0.0,
                    min=0.0,
                    max=10.0,
                    step=0.1,
                    round=0.01,
                    tooltip="manual only: isotropic Gaussian blur sigma in pixels (0 = off).",
                ),
                io.Float.Input(
                    "downscale",
                    default=1.0,
                    min=1.0,
                    max=8.0,
                    step=0.1,
                    round=0.01,
                    tooltip="manual only: shrink by this factor, then resize back (1 = off).",
                ),
                io.Float.Input(
                    "noise_sigma",
                    default=0.0,
                    min=0.0,
                    max=0.5,
                    step=0.01,
                    round=0.001,
                    tooltip="manual only: Gaussian noise standard deviation on the [0, 1] scale (0 = off).",
                ),
                io.Int.Input(
                    "jpeg_quality",
                    default=0,
                    min=0,
                    max=100,
                    tooltip="manual only: JPEG quality 1..100 (0 = off).",
                ),
            ],
            outputs=[
                io.Image.Output(
                    "degraded", display_name="degraded", tooltip="The degraded images, same size as the input."
                ),
                io.String.Output(
                    "restoration_prompt",
                    display_name="restoration_prompt",
                    tooltip="One restoration prompt per batch item, one per line ('Remove all degradation' if "
                    "nothing was applied).",
                ),
                io.String.Output(
                    "params_json", display_name="params_json", tooltip="The exact parameters of every item, as JSON."
                ),
            ],
        )

    @classmethod
    def execute(cls, image, seed, preset, blur_sigma, downscale, noise_sigma, jpeg_quality) -> io.NodeOutput:
        require_finite(blur_sigma=blur_sigma, downscale=downscale, noise_sigma=noise_sigma)
        images = image_to_bchw(image)
        batch = images.shape[0]
        if preset == MANUAL:
            params = [
                manual_params(
                    blur_sigma=blur_sigma,
                    downscale=downscale,
                    noise_sigma=noise_sigma,
                    jpeg_quality=jpeg_quality,
                    seed=seed + i,
                )
                for i in range(batch)
            ]
        else:
            params = sample_params(get_preset(preset), torch.Generator().manual_seed(seed), batch)
        result = degrade(images, params)
        return io.NodeOutput(
            bchw_to_image(result.images), "\n".join(result.prompts()), params_list_to_json(list(result.params))
        )


NODES = [DegradeImage]
