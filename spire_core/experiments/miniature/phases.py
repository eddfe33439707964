"""The miniature's training phases: the frozen backbone, then the adaptor arms on shared micro-batches."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from ...degradation import DegradationSpec, degrade, sample_params
from ...eval.metrics import psnr_per_image
from ...models import SpireAdaptor
from ...models.components import FrozenComponents, encode_prompts, make_noise_scheduler
from ...progress import progress
from ...training.config import PromptConfig
from ...training.ema import EMA
from ...training.loss import diffusion_loss, make_training_batch
from ...training.seeds import generator_for, seed_for
from .config import ARMS, MiniatureConfig
from .data import PhotoCrops


def _show_loss(bar: Any, loss: float, steps: int | None, deadline: float) -> None:
    """Count one step on a phase's progress bar and show the latest loss; a phase without a step cap runs to its
    deadline, so its bar has no total and shows the seconds left instead."""
    left = "" if steps else f", left={max(0.0, deadline - time.perf_counter()):.0f}s"
    bar.set_postfix_str(f"loss={loss:.5f}{left}", refresh=False)
    bar.update(1)


def mean_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
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
    ema.copy_to_module()
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
        fusion, tokens, trunk = ARMS[arm]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(seed, "adaptor-init"))
            adaptors[arm] = SpireAdaptor.from_unet(
                components.unet,
                fusion=fusion,
                base_family="custom",
                prediction_type=components.info.prediction_type,
                numeric_tokens=tokens,
                trunk=trunk,
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
) -> dict[str, Any]:
    """Train every arm step by step on the same micro-batches (equal budgets by construction). Stops at
    ``config.adaptor_steps`` or ``deadline`` (at least one step each); each adaptor then holds its EMA weights,
    in eval mode."""
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
        fusion, tokens, trunk = ARMS[arm]
        summary["per_arm"][arm] = {
            "fusion": fusion,
            "numeric_tokens": tokens,
            "trunk": trunk,
            "trunk_channels": list(adaptor.config.controlnet_config["block_out_channels"]),
            "parameters": sum(p.numel() for p in adaptor.parameters()),
            "loss_first": round(losses[arm][0], 5),
            "loss_last100_mean": round(sum(tail) / len(tail), 5),
            "train_seconds": round(seconds[arm], 1),
        }
        emas[arm].copy_to_module()
        adaptor.eval()
    return summary
