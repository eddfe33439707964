"""The miniature control check: does the restoration prompt steer what is removed and how much, on a CPU?

    python -m spire_core.experiments.miniature --out runs/miniature [--budget-minutes 30] [--seed 0]

The whole SPIRE recipe at toy scale, in one process on the two bundled sample photos (``docs/samples``):

1. **Codec** (the stack's "VAE", ``minicodec.LappedGrainCodec``): seam-free lapped analysis and synthesis with
   Stable Diffusion's latent shape (4 channels at 1/8 of the image size, so the adaptor's hint stays the 8x larger
   RGB image): three content channels and one channel holding the local noise level, from which the decoder
   re-synthesises grain (as SD's decoder re-synthesises texture). Outputs can therefore keep a chosen amount of
   noise and of blur, which a ladder must be able to show. The old block codec (``PatchPCACodec``: 8x8 blocks, 4
   components, visible seams, ~8 % of an input's noise kept) is fitted too, for its round-trip PSNR.
2. **Backbone**: the tiny SD1-shaped UNet (``tiny_unet_config``) trained on codec latents of 64 px crops, half of
   them clean and half degraded by the preset (as SD saw noisy and soft photos among its training images, so its
   prior covers the targets graded prompts ask for), empty semantic prompt, SD's noise schedule,
   **v-prediction**; its EMA weights are then frozen.
3. **Adaptors, three arms with equal budgets**, trained **interleaved on the same micro-batches** (steps, batch,
   learning rate, seed, degradations, prompts, noise and timesteps) with the trainer's own
   ``make_training_batch`` and ``diffusion_loss``: ``modulation_numeric`` (SPIRE's modulation and the numeric side
   channel, the default), ``modulation_clip`` (modulation, the prompt through CLIP alone) and ``additive_numeric``
   (plain ControlNet residuals with the numeric channel). Preset ``control``: isotropic Gaussian blur and Gaussian
   noise, each present 80 % of the time; the trainer's default ``PromptConfig`` draws full, partial, graded and
   blind samples (graded targets keep the residual of each named level, ``degradation.degrade_graded``).
4. **Evaluation** on crops of a held-out strip (the rightmost ``holdout`` columns of each photo, never cropped in
   training), restored by ``validation.restore`` (DDIM from pure noise, no guidance, EMA weights): PSNR with the
   full prompts of the preset, and the **control benchmark** (``spire_core.eval.control``: noise and blur
   ladders, decoupling, blind) for each arm, next to the exact graded targets passed through the codec (the best
   the stack could output) and the degraded input.

Phases stop at time deadlines (fractions of the budget) or step caps; the steps actually done are recorded.
Results: ``<out>/miniature.json``, ``<out>/miniature.md``, ``<out>/control.json``/``control.md`` with the ladder
plots, ``<out>/eval.png`` and ``<out>/ladder.png``. It is a miniature: two photos, a sub-million-parameter
backbone and minutes of training; it checks that the recipe can teach control and measures it, not what the
paper's scale reaches.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..degradation import DegradationSpec, degrade, get_preset, prompt_for, sample_params
from ..eval.control import (
    ControlInputs,
    ControlSetting,
    OracleRestorer,
    Restorer,
    control_inputs,
    control_markdown,
    run_control,
    strip_outputs,
    write_control_report,
)
from ..eval.metrics import psnr_per_image
from ..models import NUMERIC_TOKENS_DEFAULT, SpireAdaptor
from ..models.components import FrozenComponents, encode_prompts, make_noise_scheduler
from ..progress import progress
from ..training.config import PromptConfig
from ..training.ema import EMA
from ..training.loss import diffusion_loss, make_training_batch
from ..training.seeds import generator_for, seed_for
from ..training.validation import restore, save_grid
from .minicodec import LappedGrainCodec, PatchPCACodec

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "docs" / "samples"
SAMPLE_PHOTOS = ("astronaut.png", "coffee.png")

ARMS: dict[str, tuple[str, int]] = {
    "modulation_numeric": ("modulation", NUMERIC_TOKENS_DEFAULT),
    "modulation_clip": ("modulation", 0),
    "additive_numeric": ("additive", NUMERIC_TOKENS_DEFAULT),
}
"""Arm -> (fusion, numeric tokens). ``modulation_numeric`` is the default recipe."""

DEFAULT_ARM = "modulation_numeric"


@dataclass
class MiniatureConfig:
    """Everything that decides a miniature run (recorded in the JSON).

    Attributes:
        budget_minutes: wall-clock budget: training stops at ``adaptors_until`` of it, evaluation (about four
            minutes with the defaults) follows.
        seed: every random draw is a function of it (``seeds``).
        preset: degradation preset of the backbone's degraded half, the adaptor training and the held-out
            restoration (default ``control``: Gaussian blur and Gaussian noise).
        crop: crop size in pixels (latents are crop/8).
        holdout: width in pixels of the right-hand strip of each photo kept for evaluation.
        codec_fit_crops: random training crops the codecs are fitted on.
        backbone_batch, backbone_lr, backbone_steps: backbone training (``None`` steps: until its deadline).
        backbone_degraded: share of each backbone batch degraded by the preset (the rest clean).
        adaptor_batch, adaptor_lr, adaptor_steps: per adaptor, identical for every arm.
        arms: which of ``ARMS`` to train (default all three).
        prediction_type: what the backbone (and so the adaptors) predict: ``"v_prediction"`` or ``"epsilon"``.
        ema_decay: EMA of the backbone and of each adaptor (evaluation uses the EMA weights).
        max_grad_norm: gradient clipping (adaptors).
        backbone_until, adaptors_until: phase deadlines as fractions of the budget (cumulative).
        eval_crops: held-out crops used (``None``: all of them, 28 with the defaults).
        ddim_steps: sampling steps of every restoration.
        control_noise, control_blur: present levels of the control benchmark's ladders.
        device: torch device.
        images: the photos to crop (default: the two bundled samples).
    """

    budget_minutes: float = 30.0
    seed: int = 0
    preset: str = "control"
    crop: int = 64
    holdout: int = 128
    codec_fit_crops: int = 1024
    backbone_batch: int = 32
    backbone_lr: float = 2e-3
    backbone_steps: int | None = None
    backbone_degraded: float = 0.5
    adaptor_batch: int = 8
    adaptor_lr: float = 1e-3
    adaptor_steps: int | None = None
    arms: tuple[str, ...] = tuple(ARMS)
    prediction_type: str = "v_prediction"
    ema_decay: float = 0.99
    max_grad_norm: float = 1.0
    backbone_until: float = 0.27
    adaptors_until: float = 0.83
    eval_crops: int | None = None
    ddim_steps: int = 25
    control_noise: float = 0.12
    control_blur: float = 2.0
    device: str = "cpu"
    images: tuple[str, ...] = field(default_factory=lambda: tuple(str(SAMPLES_DIR / n) for n in SAMPLE_PHOTOS))

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"miniature arms {unknown or '()'} unknown; expected some of {tuple(ARMS)}")


# --------------------------------------------------------------------------------------------- data


class PhotoCrops:
    """Training crops from the photos minus their held-out strips, and the fixed grid of held-out crops.

    Every crop is a pure function of (seed, purpose, index); ``train`` returns uint8 (B, 3, crop, crop) as the
    trainer's data loader does.
    """

    def __init__(self, paths: tuple[str, ...], crop: int, holdout: int, seed: int) -> None:
        from ..imageio import load_image

        self.photos = []
        for path in paths:
            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"miniature: photo {path} not found; it uses the sample photos in docs/samples of the "
                    "repository (pass --images to use others)"
                )
            photo = load_image(path)[0]
            if photo.shape[1] < crop or photo.shape[2] < holdout + 2 * crop or holdout < crop:
                raise ValueError(f"{path} is {tuple(photo.shape[1:])}; needs >= {crop} rows and a wider training part")
            self.photos.append((photo * 255).round().to(torch.uint8))
        self.crop, self.holdout, self.seed = crop, holdout, seed

    def train(self, purpose: str, indices: range, flip: bool = True) -> torch.Tensor:
        out = []
        for k in indices:
            generator = generator_for(self.seed, purpose, k)
            photo = self.photos[int(torch.randint(len(self.photos), (), generator=generator))]
            height, width = photo.shape[1:]
            y = int(torch.randint(height - self.crop + 1, (), generator=generator))
            x = int(torch.randint(width - self.holdout - self.crop + 1, (), generator=generator))
            crop = photo[:, y : y + self.crop, x : x + self.crop]
            if flip and bool(torch.rand((), generator=generator) < 0.5):
                crop = crop.flip(-1)
            out.append(crop)
        return torch.stack(out)

    def heldout(self, limit: int | None = None) -> torch.Tensor:
        """Non-overlapping crops tiling the held-out strip of each photo, float (N, 3, crop, crop) in [0, 1]."""
        out = []
        for photo in self.photos:
            height, width = photo.shape[1:]
            for y in range(0, height - self.crop + 1, self.crop):
                for x in range(width - self.holdout, width - self.crop + 1, self.crop):
                    out.append(photo[:, y : y + self.crop, x : x + self.crop])
        crops = torch.stack(out).float() / 255
        if limit is not None:
            # Spread a subset over both photos rather than taking the first photo's top rows.
            crops = crops[torch.linspace(0, len(crops) - 1, min(limit, len(crops))).round().long()]
        return crops


# --------------------------------------------------------------------------------------------- phases


def _show_loss(bar: Any, loss: float, steps: int | None, deadline: float) -> None:
    """Count one step on a phase's progress bar and show the latest loss; a phase without a step cap runs to its
    deadline, so its bar has no total and shows the seconds left instead."""
    left = "" if steps else f", left={max(0.0, deadline - time.perf_counter()):.0f}s"
    bar.set_postfix_str(f"loss={loss:.5f}{left}", refresh=False)
    bar.update(1)


def _mean_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(psnr_per_image(a.clamp(0, 1), b.clamp(0, 1)).clamp(max=99).mean())


def backbone_images(crops: PhotoCrops, spec: DegradationSpec, config: MiniatureConfig, step: int) -> torch.Tensor:
    """Backbone batch ``step``: (B, 3, crop, crop) in [-1, 1], the first ``backbone_degraded`` share degraded by
    ``spec`` (seeded by the step), the rest clean."""
    batch = config.backbone_batch
    clean = crops.train("backbone-crop", range(step * batch, (step + 1) * batch)).float() / 255
    degraded = round(config.backbone_degraded * batch)
    if degraded:
        params = sample_params(spec, generator_for(config.seed, "backbone-degrade", step), degraded)
        clean[:degraded] = degrade(clean[:degraded], params).images
    return clean * 2 - 1


def train_backbone(
    components: FrozenComponents,
    crops: PhotoCrops,
    spec: DegradationSpec,
    config: MiniatureConfig,
    deadline: float,
    device: torch.device,
) -> dict[str, Any]:
    """Train ``components.unet`` as a denoiser (the scheduler config's prediction type) on codec latents of crops
    (``backbone_images``) with the empty prompt, then load its EMA weights and freeze it. Stops at
    ``config.backbone_steps`` or ``deadline`` (at least one step)."""
    unet, codec = components.unet, components.vae
    scheduler = make_noise_scheduler(components.scheduler_config)
    empty = encode_prompts(components, [""], "family", device)
    unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.backbone_lr, weight_decay=0.0)
    ema = EMA(unet, config.ema_decay)
    batch, losses, step, started = config.backbone_batch, [], 0, time.perf_counter()
    bar = progress(total=config.backbone_steps, desc="backbone", unit="step")
    while step < (config.backbone_steps or sys.maxsize) and (step == 0 or time.perf_counter() < deadline):
        images = backbone_images(crops, spec, config, step).to(device)
        with torch.no_grad():
            latents = codec.encode(images).latent_dist.mean * components.scaling_factor
        generator = generator_for(config.seed, "backbone-diffusion", step)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator).to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        prediction = unet(noisy, timesteps, encoder_hidden_states=empty.expand(batch, -1, -1)).sample
        loss = F.mse_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update()
        losses.append(loss.item())
        step += 1
        _show_loss(bar, losses[-1], config.backbone_steps, deadline)
    bar.close()
    with torch.no_grad():
        for parameter, shadow in zip(ema.params, ema.shadow):
            parameter.copy_(shadow)
    components.freeze()
    tail = losses[-min(100, len(losses)) :]
    return {
        "steps": step,
        "batch": batch,
        "degraded_share": config.backbone_degraded,
        "lr": config.backbone_lr,
        "seconds": round(time.perf_counter() - started, 1),
        "loss_first": round(losses[0], 5),
        "loss_last100_mean": round(sum(tail) / len(tail), 5),
        "parameters": sum(p.numel() for p in unet.parameters()),
    }


def build_adaptors(components: FrozenComponents, arms: tuple[str, ...], seed: int) -> dict[str, SpireAdaptor]:
    """One fresh adaptor per arm, trunks copied from the frozen UNet, hint encoders (and numeric channels) drawn
    from one seed: every arm starts from the same weights where they share a part."""
    adaptors = {}
    for arm in arms:
        fusion, tokens = ARMS[arm]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(seed, "adaptor-init"))
            adaptors[arm] = SpireAdaptor.from_unet(
                components.unet,
                fusion=fusion,
                base_family="custom",
                prediction_type=components.info.prediction_type,
                numeric_tokens=tokens,
            )
    return adaptors


def train_adaptors(
    components: FrozenComponents,
    adaptors: dict[str, SpireAdaptor],
    crops: PhotoCrops,
    spec: DegradationSpec,
    config: MiniatureConfig,
    deadline: float,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, EMA]]:
    """Train every arm step by step on the same micro-batches (equal budgets by construction). Stops at
    ``config.adaptor_steps`` or ``deadline`` (at least one step each)."""
    scheduler = make_noise_scheduler(components.scheduler_config)
    prompts = PromptConfig()
    optimizers, emas = {}, {}
    for arm, adaptor in adaptors.items():
        adaptor.to(device).train()
        optimizers[arm] = torch.optim.AdamW(adaptor.parameters(), lr=config.adaptor_lr, weight_decay=0.0)
        emas[arm] = EMA(adaptor, config.ema_decay)
    batch, step, started = config.adaptor_batch, 0, time.perf_counter()
    losses: dict[str, list[float]] = {arm: [] for arm in adaptors}
    seconds = dict.fromkeys(adaptors, 0.0)
    kinds: dict[str, int] = {}
    bar = progress(total=config.adaptor_steps, desc="adaptors", unit="step")
    while step < (config.adaptor_steps or sys.maxsize) and (step == 0 or time.perf_counter() < deadline):
        positions = list(range(step * batch, (step + 1) * batch))
        loaded = {
            "images": crops.train("adaptor-crop", positions),
            "captions": [""] * batch,
            "positions": positions,
            "skipped": [],
        }
        data = make_training_batch(loaded, device, spec, prompts, config.seed, components, 1000)
        for kind in data.synth.kinds:
            kinds[kind] = kinds.get(kind, 0) + 1
        for arm, adaptor in adaptors.items():
            tick = time.perf_counter()
            loss = diffusion_loss(data, components, adaptor, scheduler)
            optimizers[arm].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adaptor.parameters(), config.max_grad_norm)
            optimizers[arm].step()
            emas[arm].update()
            losses[arm].append(loss.item())
            seconds[arm] += time.perf_counter() - tick
        step += 1
        mean_loss = sum(losses[arm][-1] for arm in adaptors) / len(adaptors)  # over the arms
        _show_loss(bar, mean_loss, config.adaptor_steps, deadline)
    bar.close()
    summary = {
        "steps": step,
        "batch": batch,
        "lr": config.adaptor_lr,
        "prompt_kinds": kinds,
        "prompts": asdict(prompts),
        "seconds": round(time.perf_counter() - started, 1),
        "per_arm": {},
    }
    for arm, adaptor in adaptors.items():
        tail = losses[arm][-min(100, step) :]
        fusion, tokens = ARMS[arm]
        summary["per_arm"][arm] = {
            "fusion": fusion,
            "numeric_tokens": tokens,
            "parameters": sum(p.numel() for p in adaptor.parameters()),
            "loss_first": round(losses[arm][0], 5),
            "loss_last100_mean": round(sum(tail) / len(tail), 5),
            "train_seconds": round(seconds[arm], 1),
        }
        adaptor.eval()
    return summary, emas


def arm_restorer(
    components: FrozenComponents,
    adaptor: SpireAdaptor,
    ema: EMA,
    config: MiniatureConfig,
    device: torch.device,
    steps: int | None = None,
    denoise: float = 1.0,
) -> Restorer:
    """The arm as a control-benchmark restorer: DDIM (``config.ddim_steps`` unless ``steps``) from pure noise
    (seeded; ``denoise`` below 1: from the noised input), no guidance, EMA weights."""

    def restorer(degraded: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        with ema.swapped():
            out = restore(
                components,
                adaptor,
                degraded.to(device),
                list(prompts),
                [""] * len(prompts),
                steps=steps or config.ddim_steps,
                guidance_scale=1.0,
                seed=config.seed,
                denoise=denoise,
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
    ema: EMA,
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
            restorer = arm_restorer(components, adaptor, ema, config, device, steps=steps, denoise=start)
            tick = time.perf_counter()
            out = restorer(degraded, prompts)
            seconds = time.perf_counter() - tick
            rows.append(
                {"denoise": start, "steps": steps, "psnr_db": round(_mean_psnr(out, clean), 3),
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
    emas: dict[str, EMA],
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
    restorers = {arm: arm_restorer(components, a, emas[arm], config, device) for arm, a in adaptors.items()}
    # one bar over the restoration runs: each arm on the held-out crops, then each arm and the codec ceiling
    # through the control benchmark
    bar = progress(total=2 * len(restorers) + 1, desc="evaluate", unit="run")
    restored = {}
    for arm, restorer in restorers.items():
        restored[arm] = restorer(degraded, prompts)
        bar.update(1)
    with torch.no_grad():
        ceiling = codec.roundtrip(clean.to(device)).cpu()
        lowpass = codec.roundtrip(degraded.to(device)).cpu()
    psnr = {
        "degraded": _mean_psnr(degraded, clean),
        **{arm: _mean_psnr(image, clean) for arm, image in restored.items()},
        "codec_roundtrip_clean": _mean_psnr(ceiling, clean),
        "codec_roundtrip_degraded": _mean_psnr(lowpass, clean),
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
            "rows": denoise_sweep(
                components, adaptors[DEFAULT_ARM], emas[DEFAULT_ARM], degraded, clean, prompts, config, device
            ),
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
        "reference_vs_photo_psnr_db": round(_mean_psnr(representable, clean), 3),
        "ladder_png": "rows: degraded input, each restorer (noise ladder left, blur ladder right), reference",
    }
    return restoration, control


# --------------------------------------------------------------------------------------------- run


def _machine(device: torch.device) -> dict[str, Any]:
    import diffusers

    from ..bench.common import describe_device

    return {**describe_device(device), "diffusers": diffusers.__version__}


def fit_codecs(crops: PhotoCrops, clean: torch.Tensor, config: MiniatureConfig) -> tuple[LappedGrainCodec, dict]:
    """The miniature's codec, and the round trip of both codecs on the held-out crops (the old block codec for
    comparison)."""
    fit = crops.train("codec-crop", range(config.codec_fit_crops)).float() / 127.5 - 1
    tick = time.perf_counter()
    codec = LappedGrainCodec.fit(fit)
    seconds = time.perf_counter() - tick
    block = PatchPCACodec.fit(fit)
    with torch.no_grad():
        info = {
            "kind": "lapped-grain (3 content channels + noise level)",
            "latent": f"{codec.config.latent_channels} x crop/8 x crop/8",
            "fit_crops": config.codec_fit_crops,
            "fit_seconds": round(seconds, 1),
            "roundtrip_psnr_db": round(_mean_psnr(codec.roundtrip(clean), clean), 3),
            "block_codec_roundtrip_psnr_db": round(_mean_psnr(block.roundtrip(clean), clean), 3),
            "block_codec_explained_variance": round(block.explained_variance, 4),
        }
    return codec, info


def run_miniature(out: str | Path, config: MiniatureConfig | None = None, command: str | None = None) -> dict:
    """Run the whole miniature and write ``out/miniature.json``, ``out/miniature.md``, the control report and
    two grids.

    Args:
        out: output folder (created).
        config: the settings (default ``MiniatureConfig()``).
        command: the command line to record (default: the module's CLI with this config's budget and seed).

    Returns:
        The result dict written to ``miniature.json``.
    """
    from ..training.tiny import build_tiny_components

    config = config or MiniatureConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device)
    started = time.perf_counter()
    budget = config.budget_minutes * 60
    spec = get_preset(config.preset)
    crops = PhotoCrops(config.images, config.crop, config.holdout, config.seed)
    clean = crops.heldout(config.eval_crops)
    wall: dict[str, float] = {}

    tick = time.perf_counter()
    codec, codec_info = fit_codecs(crops, clean, config)
    codec = codec.to(device)
    components = replace(build_tiny_components(prediction_type=config.prediction_type, seed=config.seed), vae=codec)
    nn.Module.to(components.unet, device)
    nn.Module.to(components.text_encoder, device)
    wall["setup_and_codec"] = round(time.perf_counter() - tick, 1)

    backbone = train_backbone(components, crops, spec, config, started + config.backbone_until * budget, device)
    wall["backbone"] = backbone["seconds"]
    adaptors = build_adaptors(components, config.arms, config.seed)
    training, emas = train_adaptors(
        components, adaptors, crops, spec, config, started + config.adaptors_until * budget, device
    )
    wall["adaptors"] = training["seconds"]

    tick = time.perf_counter()
    restoration, control = evaluate(components, adaptors, emas, clean, spec, config, device, out)
    wall["evaluation"] = round(time.perf_counter() - tick, 1)
    wall["total"] = round(time.perf_counter() - started, 1)

    result = {
        "what": "SPIRE miniature control check: three adaptor arms, equal budgets, tiny latent-diffusion stack on CPU",
        "command": command
        or f"python -m spire_core.experiments.miniature --out {out} --budget-minutes {config.budget_minutes:g} "
        f"--seed {config.seed}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(device),
        "config": {**asdict(config), "images": [Path(p).name for p in config.images]},
        "prompts": "trainer defaults (PromptConfig: partial 0.3, graded 0.3, blind 0.3 of the rest); semantic empty",
        "wall_seconds": wall,
        "codec": codec_info,
        "backbone": backbone,
        "adaptors": training,
        "restoration": restoration,
        "control": control,
    }
    (out / "miniature.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "miniature.md").write_text(markdown(result), encoding="utf-8")
    return result


def markdown(result: dict) -> str:
    """The result tables in Markdown (codec, restoration PSNR, control benchmark, run facts)."""
    psnr = result["restoration"]["psnr_db"]
    n = result["restoration"]["crops"]
    codec = result["codec"]
    arms = list(result["adaptors"]["per_arm"])
    lines = [
        f"Codec round trip of the held-out crops: {codec['roundtrip_psnr_db']:.2f} dB (the block codec it "
        f"replaces: {codec['block_codec_roundtrip_psnr_db']:.2f} dB).",
        "",
        f"Held-out crops: {n} ({result['config']['crop']} px, preset `{result['config']['preset']}`, full prompts); "
        "PSNR in dB against the clean crop (mean over crops).",
        "",
        "| image | PSNR (dB) |",
        "|---|---:|",
        f"| degraded input | {psnr['degraded']:.2f} |",
        f"| codec round trip of the clean crop (ceiling) | {psnr['codec_roundtrip_clean']:.2f} |",
        f"| codec round trip of the degraded input | {psnr['codec_roundtrip_degraded']:.2f} |",
        *(f"| restored, {arm} | {psnr[arm]:.2f} |" for arm in arms),
        "",
    ]
    sweep = result["restoration"].get("denoise_start")
    if sweep:
        starts = sorted({row["denoise"] for row in sweep["rows"]}, reverse=True)
        table = {(row["steps"], row["denoise"]): row for row in sweep["rows"]}
        lines += [
            f"Denoise start ({sweep['arm']}, same crops and prompts): PSNR in dB (seconds for all crops) against "
            "sampling steps; 1.0 starts from pure noise, lower from the degraded input noised to that level.",
            "",
            "| steps | " + " | ".join(f"start {start:g}" for start in starts) + " |",
            "|---:|" + "---:|" * len(starts),
            *(
                f"| {steps} | "
                + " | ".join(
                    f"{table[steps, start]['psnr_db']:.2f} ({table[steps, start]['seconds']:.1f} s)" for start in starts
                )
                + " |"
                for steps in sorted({row["steps"] for row in sweep["rows"]})
            ),
            "",
        ]
    lines.append(control_markdown(result["control"]["restorers"]))
    machine, wall = result["machine"], result["wall_seconds"]
    training, backbone = result["adaptors"], result["backbone"]
    lines += [
        f"Run: {result['date']}, {machine['cpu']} ({machine['torch_threads']} threads), torch {machine['torch']}; "
        f"wall time {wall['total'] / 60:.1f} min. Backbone {backbone['steps']} steps x {backbone['batch']}; "
        f"adaptors {training['steps']} steps x {training['batch']} each ({len(arms)} arms); DDIM "
        f"{result['config']['ddim_steps']} steps.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spire_core.experiments.miniature",
        description="Miniature SPIRE control check on the CPU: tiny backbone, three adaptor arms, control benchmark.",
    )
    parser.add_argument("--out", required=True, help="output folder (miniature.json, miniature.md, control report)")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=MiniatureConfig.budget_minutes,
        help="wall-clock budget; training stops at 83%% of it, evaluation (about four minutes) follows",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default=MiniatureConfig.preset, help="degradation preset (default: control)")
    parser.add_argument("--arms", nargs="+", choices=tuple(ARMS), default=list(ARMS), help="arms to train")
    parser.add_argument(
        "--prediction-type", default="v_prediction", choices=("v_prediction", "epsilon"), help="backbone objective"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", nargs="+", help="photos to crop (default: the two bundled samples)")
    smoke = parser.add_argument_group("step caps for smoke runs (default: phases run until their deadlines)")
    smoke.add_argument("--backbone-steps", type=int)
    smoke.add_argument("--adaptor-steps", type=int)
    smoke.add_argument("--eval-crops", type=int, help="held-out crops to use (default: all)")
    smoke.add_argument("--ddim-steps", type=int, default=MiniatureConfig.ddim_steps)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = MiniatureConfig(
        budget_minutes=args.budget_minutes,
        seed=args.seed,
        preset=args.preset,
        arms=tuple(args.arms),
        prediction_type=args.prediction_type,
        device=args.device,
        backbone_steps=args.backbone_steps,
        adaptor_steps=args.adaptor_steps,
        eval_crops=args.eval_crops,
        ddim_steps=args.ddim_steps,
    )
    if args.images:
        config = replace(config, images=tuple(args.images))
    command = "python -m spire_core.experiments.miniature " + " ".join(sys.argv[1:] if argv is None else argv)
    result = run_miniature(args.out, config, command=command)
    print(markdown(result))
    print(f"wrote {Path(args.out) / 'miniature.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
