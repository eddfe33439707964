"""One training micro-batch and its loss: synthesis, VAE latents, noising, and the controlled UNet's prediction.

``make_training_batch`` turns loaded crops into a ``TrainingBatch`` (degradations and prompts from
``synth``, timesteps and noise from ``seeds``: all a function of the samples' stream positions).
``diffusion_loss`` computes the standard diffusion objective on it:

    z0  = (mu + sigma * n) * scaling_factor        VAE posterior sample of the target image
    z_t = sqrt(abar_t) * z0 + sqrt(1 - abar_t) * eps
    L   = MSE(prediction, eps)                     epsilon bases
    L   = MSE(prediction, sqrt(abar_t) * eps - sqrt(1 - abar_t) * z0)     v-prediction bases

where the prediction is the frozen UNet on (z_t, t, semantic prompt) controlled by the adaptor on
(z_t, t, restoration prompt and, for its numeric channel, the prompt's parsed numbers, degraded image).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..degradation import DegradationSpec
from ..models import SpireAdaptor, additive_unet_kwargs, apply_to_unet
from ..models.components import FrozenComponents, added_conditioning, encode_prompts
from ..prompt import restoration_features
from .config import PromptConfig
from .seeds import generator_for
from .synth import SynthBatch, draw_sample, synthesize


@dataclass
class TrainingBatch:
    """One micro-batch, ready for the loss.

    Attributes:
        synth: degraded inputs, targets and prompts.
        timesteps: (B,) int64 DDPM timesteps.
        noise: (B, C_lat, h, w) float32 diffusion noise eps.
        posterior_noise: (B, C_lat, h, w) float32 noise for sampling the VAE posterior.
        positions: B data-stream positions.
        skipped: (file, reason) of images replaced while loading this batch.
    """

    synth: SynthBatch
    timesteps: torch.Tensor
    noise: torch.Tensor
    posterior_noise: torch.Tensor
    positions: list[int]
    skipped: list[tuple[str, str]]


def controlled_prediction(
    unet: nn.Module,
    adaptor: SpireAdaptor,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    semantic_embedding: torch.Tensor,
    restoration_embedding: torch.Tensor,
    hint: torch.Tensor,
    forward: nn.Module | None = None,
    restoration_features: torch.Tensor | None = None,
    semantic_added: dict[str, torch.Tensor] | None = None,
    restoration_added: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``spire_core.models.predict_noise`` (strength 1) with the adaptor called through ``forward``.

    SDXL bases: ``semantic_added`` is the UNet's added conditioning (the semantic prompt's pooled embedding and
    the size ids), ``restoration_added`` the adaptor's (the restoration prompt's pooled embedding, same ids);
    ``None`` for other bases (``components.added_conditioning``).

    ``forward`` is the module accelerate prepared (a ``DistributedDataParallel`` wrapper in multi-GPU runs, whose
    forward must run for gradients to be all-reduced); ``None`` calls ``adaptor`` itself. Shapes as in
    ``predict_noise``; returns (B, C_lat, h, w) in the UNet's dtype.
    """
    dtype = adaptor.controlnet.dtype
    if restoration_added is not None:
        restoration_added = {key: value.to(dtype) for key, value in restoration_added.items()}
    control = (forward or adaptor)(
        sample.to(dtype),
        timestep,
        restoration_embedding.to(dtype),
        hint.to(dtype),
        restoration_features,
        restoration_added,
    )
    kwargs = {} if semantic_added is None else {"added_cond_kwargs": semantic_added}
    if control.fusion == "additive":
        kwargs.update(additive_unet_kwargs(control))
        return unet(sample, timestep, encoder_hidden_states=semantic_embedding, **kwargs).sample
    with apply_to_unet(unet, control):
        return unet(sample, timestep, encoder_hidden_states=semantic_embedding, **kwargs).sample


def make_training_batch(
    loaded: dict[str, Any],
    device: torch.device,
    spec: DegradationSpec,
    prompts: PromptConfig,
    seed: int,
    components: FrozenComponents,
    num_train_timesteps: int,
) -> TrainingBatch:
    """Synthesise a micro-batch on ``device``.

    Args:
        loaded: ``data.collate`` output: (B, 3, H, W) uint8 crops, captions, stream positions, skipped files.
        device: the training device (degradations run there).
        spec, prompts, seed: what ``synth.draw_sample`` draws from.
        components: for the latent shape (channels, VAE downscale).
        num_train_timesteps: timesteps are uniform in ``[0, num_train_timesteps)``.
    """
    positions = loaded["positions"]
    clean = loaded["images"].to(device, non_blocking=True).float().div_(255)
    draws = [draw_sample(spec, prompts, seed, k) for k in positions]
    synth = synthesize(clean, draws, loaded["captions"])
    factor = components.vae_downscale
    shape = (components.latent_channels, clean.shape[-2] // factor, clean.shape[-1] // factor)
    timesteps, noise, posterior = [], [], []
    for k in positions:
        generator = generator_for(seed, "diffusion", k)
        timesteps.append(torch.randint(0, num_train_timesteps, (), generator=generator))
        noise.append(torch.randn(shape, generator=generator))
        posterior.append(torch.randn(shape, generator=generator))
    return TrainingBatch(
        synth=synth,
        timesteps=torch.stack(timesteps).to(device),
        noise=torch.stack(noise).to(device),
        posterior_noise=torch.stack(posterior).to(device),
        positions=list(positions),
        skipped=list(loaded["skipped"]),
    )


def diffusion_loss(
    batch: TrainingBatch,
    components: FrozenComponents,
    adaptor: SpireAdaptor,
    noise_scheduler: Any,
    forward: nn.Module | None = None,
    autocast: AbstractContextManager | None = None,
) -> torch.Tensor:
    """The diffusion loss of the controlled UNet on ``batch`` (see the module docstring).

    Args:
        batch: from ``make_training_batch``.
        components: the frozen models (their devices and dtypes as set up for training).
        adaptor: the (unwrapped) adaptor.
        noise_scheduler: a diffusers ``DDPMScheduler`` whose ``prediction_type`` is the base's.
        forward: the module to call the adaptor through (accelerate's prepared model); ``None``: ``adaptor``.
        autocast: mixed-precision context for the UNet and adaptor (``None``: none).

    Returns:
        Scalar float32 loss, differentiable with respect to the adaptor's parameters only.
    """
    device = batch.noise.device
    with torch.no_grad():
        target_pixels = batch.synth.target.to(torch.float32) * 2 - 1
        posterior = components.vae.encode(target_pixels).latent_dist
        latents = (posterior.mean + posterior.std * batch.posterior_noise) * components.scaling_factor
        semantic, semantic_pooled = encode_prompts(components, batch.synth.semantic_prompts, "family", device, True)
        layer = adaptor.config.text_encoder_layer
        restoration, restoration_pooled = encode_prompts(
            components, batch.synth.restoration_prompts, layer, device, True
        )
        height, width = batch.synth.target.shape[-2:]
        semantic_added = added_conditioning(components, semantic_pooled, height, width)
        restoration_added = added_conditioning(components, restoration_pooled, height, width)
        features = restoration_features(batch.synth.restoration_prompts).to(device)
        noisy = noise_scheduler.add_noise(latents, batch.noise, batch.timesteps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, batch.noise, batch.timesteps)
        else:
            target = batch.noise
    with autocast or nullcontext():
        prediction = controlled_prediction(
            components.unet,
            adaptor,
            noisy,
            batch.timesteps,
            semantic,
            restoration,
            batch.synth.degraded,
            forward=forward,
            restoration_features=features,
            semantic_added=semantic_added,
            restoration_added=restoration_added,
        )
    return F.mse_loss(prediction.float(), target.float())
