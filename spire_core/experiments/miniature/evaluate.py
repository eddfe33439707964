"""Evaluating the miniature's arms: PSNR with full prompts, the control benchmark, the denoise-start sweep."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ...degradation import DegradationSpec, degrade, prompt_for, sample_params
from ...eval.control import (
    ControlInputs,
    ControlSetting,
    OracleRestorer,
    Restorer,
    control_inputs,
    run_control,
    strip_outputs,
    variant_name,
    write_control_report,
)
from ...eval.metrics import psnr_per_image
from ...models import SpireAdaptor
from ...models.components import FrozenComponents
from ...progress import progress
from ...training.seeds import generator_for
from ...training.validation import restore, save_grid
from ..minicodec import LappedGrainCodec
from .config import DEFAULT_ARM, MiniatureConfig
from .phases import mean_psnr


def arm_restorer(
    components: FrozenComponents,
    adaptor: SpireAdaptor,
    config: MiniatureConfig,
    device: torch.device,
    steps: int | None = None,
    denoise: float = 1.0,
    restoration_scale: float = 1.0,
) -> Restorer:
    """The arm as a control-benchmark restorer: DDIM (``config.ddim_steps`` unless ``steps``) from pure noise
    (seeded by ``config.restoration_seed``; ``denoise`` below 1: from the noised input), no semantic guidance,
    restoration guidance ``restoration_scale`` (1: none), the adaptor's weights as they are (the EMA weights after
    training)."""

    def restorer(degraded: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        out = restore(
            components,
            adaptor,
            degraded.to(device),
            list(prompts),
            [""] * len(prompts),
            steps=steps or config.ddim_steps,
            guidance_scale=1.0,
            seed=config.restoration_seed,
            denoise=denoise,
            restoration_scale=restoration_scale,
        )
        return out.cpu()

    return restorer


DENOISE_STARTS = (1.0, 0.7, 0.5)
"""Starts of the denoise sweep: pure noise (the paper), and the degraded image's latent noised to 0.7 and 0.5."""

DENOISE_STEPS = (5, 10, 25)
"""Sampling steps of the denoise sweep (model calls per image = steps)."""


def denoise_sweep(
    components: FrozenComponents,
    adaptor: SpireAdaptor,
    degraded: torch.Tensor,
    clean: torch.Tensor,
    prompts: Sequence[str],
    config: MiniatureConfig,
    device: torch.device,
) -> list[dict[str, Any]]:
    """PSNR and wall time of restoring the held-out crops with each start (``DENOISE_STARTS``) and number of
    steps (``DENOISE_STEPS``): what a denoise start buys (fewer model calls for the same quality, or better
    quality for the same calls)."""
    rows = []
    for steps in DENOISE_STEPS:
        for start in DENOISE_STARTS:
            restorer = arm_restorer(components, adaptor, config, device, steps=steps, denoise=start)
            tick = time.perf_counter()
            out = restorer(degraded, prompts)
            seconds = time.perf_counter() - tick
            rows.append(
                {"denoise": start, "steps": steps, "psnr_db": round(mean_psnr(out, clean), 3),
                 "seconds": round(seconds, 2)}
            )  # fmt: skip
    return rows


def codec_ceiling(codec: LappedGrainCodec, inputs: ControlInputs) -> Restorer:
    """The exact graded target of each prompt (``OracleRestorer``) passed through the codec: the best the stack
    can output."""
    oracle = OracleRestorer(inputs)

    def restorer(degraded: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            return codec.roundtrip(oracle(degraded, prompts))

    return restorer


def evaluate(
    components: FrozenComponents,
    adaptors: dict[str, SpireAdaptor],
    clean: torch.Tensor,
    spec: DegradationSpec,
    config: MiniatureConfig,
    device: torch.device,
    out: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Held-out PSNR with full prompts and the control benchmark for every arm (see the module docstring); writes
    the grids and the control report."""
    codec = components.vae
    n = clean.shape[0]
    params = sample_params(spec, generator_for(config.seed, "miniature-eval"), n)
    degraded = degrade(clean, params).images
    prompts = [prompt_for(p) for p in params]
    restorers = {arm: arm_restorer(components, a, config, device) for arm, a in adaptors.items()}
    # one bar over the restoration runs: each arm on the held-out crops, then each arm and the codec ceiling
    # through the control benchmark
    variants = config.control_variants()
    bar = progress(total=2 * len(restorers) + 1 + len(variants), desc="evaluate", unit="run")
    restored = {}
    for arm, restorer in restorers.items():
        restored[arm] = restorer(degraded, prompts)
        bar.update(1)
    with torch.no_grad():
        ceiling = codec.roundtrip(clean.to(device)).cpu()
        lowpass = codec.roundtrip(degraded.to(device)).cpu()
    psnr = {
        "degraded": mean_psnr(degraded, clean),
        **{arm: mean_psnr(image, clean) for arm, image in restored.items()},
        "codec_roundtrip_clean": mean_psnr(ceiling, clean),
        "codec_roundtrip_degraded": mean_psnr(lowpass, clean),
    }
    restoration = {
        "crops": n,
        "prompts": prompts,
        "psnr_db": {k: round(v, 3) for k, v in psnr.items()},
        "psnr_per_crop_db": {
            "degraded": [round(float(v), 3) for v in psnr_per_image(degraded, clean)],
            **{arm: [round(float(v), 3) for v in psnr_per_image(r, clean)] for arm, r in restored.items()},
        },
    }
    shown = slice(0, min(n, 8))
    save_grid([degraded[shown], *(r[shown] for r in restored.values()), clean[shown]], out / "eval.png")
    if DEFAULT_ARM in adaptors:
        restoration["denoise_start"] = {
            "arm": DEFAULT_ARM,
            "rows": denoise_sweep(components, adaptors[DEFAULT_ARM], degraded, clean, prompts, config, device),
        }

    # The control benchmark's clean crops are what the stack can represent: the held-out crops through the codec
    # without its grain (the codec blurs the photos by about 2 px at 64 px, and a grain shared by reference and
    # output would read as sharpness), so that it measures control, not the codec.
    with torch.no_grad():
        latents = codec.encode(clean.to(device) * 2 - 1).latent_dist.mean
        representable = ((codec.decode(latents, grain=False).sample + 1) / 2).clamp(0, 1).cpu()
    setting = ControlSetting(noise=config.control_noise, blur=config.control_blur, seed=config.seed)
    inputs = control_inputs(representable, setting)
    results = {}
    for arm, restorer in restorers.items():
        results[arm] = run_control(restorer, representable, setting)
        bar.update(1)
    for scale, start in variants:  # the default arm guided away from the blind prompt, or from the noised input
        variant = arm_restorer(
            components, adaptors[DEFAULT_ARM], config, device, denoise=start, restoration_scale=scale
        )
        results[variant_name(DEFAULT_ARM, scale, start)] = run_control(variant, representable, setting)
        bar.update(1)
    results["codec(exact targets)"] = run_control(codec_ceiling(codec, inputs), representable, setting)
    bar.update(1)
    bar.close()
    files = write_control_report(results, out, setting=asdict(setting))
    rows = []
    for result in results.values():  # first crop: the noise ladder, then the blur ladder, per restorer
        outputs = result["_outputs"]
        rows.append(torch.cat([*(o[:1] for o in outputs["noise"]), *(o[:1] for o in outputs["blur"])]))
    first = inputs.ladder[:1].expand(rows[0].shape[0], -1, -1, -1)
    save_grid([first, *rows, representable[:1].expand_as(first)], out / "ladder.png")
    control = {
        "restorers": {name: strip_outputs(result) for name, result in results.items()},
        "files": [p.name for p in files],
        "reference": "held-out crops through the codec without grain (what the stack can represent)",
        "reference_vs_photo_psnr_db": round(mean_psnr(representable, clean), 3),
        "ladder_png": "rows: degraded input, each restorer (noise ladder left, blur ladder right), reference",
    }
    return restoration, control
