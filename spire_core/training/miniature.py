"""The miniature science check: modulation vs additive fusion on a tiny latent-diffusion stack, on a 2-core CPU.

    python -m spire_core.training.miniature --out runs/miniature [--budget-minutes 25] [--seed 0]

What it does, all on the two bundled sample photos (``docs/samples``), in one process and one thread:

1. **Codec** (the stack's "VAE"): a fixed linear patch codec fitted in about a second (``PatchPCACodec``).
   A tiny diffusers ``AutoencoderKL`` trained for four CPU minutes reconstructs held-out crops at about 20 dB,
   below a sigma-0.1 noisy input (21 dB), so every restoration would be capped by the VAE; the patch codec
   keeps the shapes of Stable Diffusion's latent space (4 channels at 1/8 of the image size, so the adaptor's
   hint stays the 8x larger RGB image) and reconstructs at about 27 dB.
2. **Backbone**: the tiny SD1-shaped UNet (``tiny_unet_config``) trained on codec latents of clean 64 px crops
   with the empty semantic prompt, Stable Diffusion's noise schedule and **v-prediction** (as SD 2.x 768-v; the
   trainer supports it); its EMA weights are then frozen. With epsilon-prediction (SD 1.x, SD 2.1-base) a few
   CPU minutes are not enough: the small epsilon errors left at the noisiest timesteps are amplified about 15x
   in the x0 estimate, and DDIM samples drift (latent std about 1.6 instead of 1, channel means off by up to
   0.8); ``--prediction-type epsilon`` runs that variant.
3. **Adaptors**: a modulation and an additive ``SpireAdaptor.from_unet``, identically initialised, trained
   **interleaved on the same micro-batches** (same steps, batch, learning rate, seed, noise and timesteps)
   with the trainer's own pieces: ``make_training_batch`` (degradations and prompts drawn exactly as the
   trainer draws them, trainer default ``PromptConfig``) and ``diffusion_loss``; AdamW, gradient clipping, EMA.
4. **Evaluation** on crops of a held-out strip (the rightmost ``holdout`` columns of each photo, never
   cropped in training), degraded with fixed seeds, restored with ``validation.restore`` (DDIM from pure
   noise, no guidance, the EMA weights): PSNR of the degraded input, of each restoration and between the two;
   and the **noise ladder**: the same crops with noise sigma ``ladder_sigma`` restored with prompts
   ``"Denoise with sigma X"`` for each X of ``ladder``, the output's residual noise measured two ways
   (``residual_noise``), and whether it falls monotonically as X grows.

Phases stop at time deadlines (fractions of the budget) or step caps; the steps actually done are recorded.
Results: ``<out>/miniature.json``, ``<out>/miniature.md`` (the tables), ``<out>/eval.png`` and
``<out>/ladder.png``. It is a miniature: two photos, a sub-million-parameter backbone and minutes of training;
it checks that the machinery measures the right things, not which fusion wins at scale.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..degradation import DegradationSpec, degrade, get_preset, manual_params, prompt_for, sample_params
from ..eval.metrics import psnr_per_image
from ..models import SpireAdaptor
from ..prompt import BLIND_PROMPT, render
from .components import FrozenComponents, encode_prompts, make_noise_scheduler
from .config import PromptConfig
from .ema import EMA
from .loss import diffusion_loss, make_training_batch
from .seeds import generator_for, seed_for
from .validation import restore, save_grid

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "docs" / "samples"
SAMPLE_PHOTOS = ("astronaut.png", "coffee.png")
FUSION_ORDER = ("modulation", "additive")


@dataclass
class MiniatureConfig:
    """Everything that decides a miniature run (recorded in the JSON).

    Attributes:
        budget_minutes: wall-clock budget: training stops at ``adaptors_until`` of it, evaluation (about a minute
            with the defaults) follows.
        seed: every random draw is a function of it (``seeds``).
        preset: degradation preset of the adaptor training and the held-out evaluation.
        crop: crop size in pixels (latents are crop/8).
        holdout: width in pixels of the right-hand strip of each photo kept for evaluation.
        codec_fit_crops: random training crops the patch codec is fitted on.
        backbone_batch, backbone_lr, backbone_steps: backbone training (``None`` steps: until its deadline).
        adaptor_batch, adaptor_lr, adaptor_steps: per adaptor, identical for both fusions.
        prediction_type: what the backbone (and so the adaptors) predict: ``"v_prediction"`` or ``"epsilon"``.
        ema_decay: EMA of the backbone and of each adaptor (evaluation uses the EMA weights).
        max_grad_norm: gradient clipping (adaptors).
        backbone_until, adaptors_until: phase deadlines as fractions of the budget (cumulative).
        eval_crops: held-out crops used (``None``: all of them, 28 with the defaults).
        ddim_steps: sampling steps of every restoration.
        ladder_sigma: true noise sigma of the ladder inputs.
        ladder: prompted sigmas X of the ladder, ascending.
        device: torch device.
        images: the photos to crop (default: the two bundled samples).
    """

    budget_minutes: float = 25.0
    seed: int = 0
    preset: str = "noise"
    crop: int = 64
    holdout: int = 128
    codec_fit_crops: int = 1024
    backbone_batch: int = 32
    backbone_lr: float = 2e-3
    backbone_steps: int | None = None
    adaptor_batch: int = 8
    adaptor_lr: float = 1e-3
    adaptor_steps: int | None = None
    prediction_type: str = "v_prediction"
    ema_decay: float = 0.99
    max_grad_norm: float = 1.0
    backbone_until: float = 0.33
    adaptors_until: float = 0.94
    eval_crops: int | None = None
    ddim_steps: int = 25
    ladder_sigma: float = 0.1
    ladder: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
    device: str = "cpu"
    images: tuple[str, ...] = field(default_factory=lambda: tuple(str(SAMPLES_DIR / n) for n in SAMPLE_PHOTOS))


# --------------------------------------------------------------------------------------------- codec


@dataclass(frozen=True)
class CodecConfig:
    """The ``AutoencoderKL`` config fields ``spire_core.training`` reads: 4 latent channels, four "levels"
    (``vae_downscale = 2**3 = 8``) and the latent scaling factor."""

    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (192, 192, 192, 192)
    scaling_factor: float = 1.0


@dataclass
class _Posterior:
    """A deterministic "posterior": ``mean`` is the code, ``std`` is zero (so training samples are exact)."""

    mean: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


@dataclass
class _Encoded:
    latent_dist: _Posterior


@dataclass
class _Decoded:
    sample: torch.Tensor


class PatchPCACodec(nn.Module):
    """A fixed linear "VAE" with Stable Diffusion's latent shape: 8x8 space-to-depth (192 values per patch),
    the top-4 principal directions of training patches, each whitened to unit variance.

    ``encode(x).latent_dist.mean``: (B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8), zero mean and unit variance per
    channel on the training patches. ``decode(z).sample`` is the exact inverse on the codec's range (an
    orthogonal projection onto 4 patch components per 8x8 block), so ``decode(encode(x))`` is the best
    4-component linear reconstruction of each block.
    """

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor, explained: float) -> None:
        super().__init__()
        self.config = CodecConfig(latent_channels=basis.shape[0])
        self.register_buffer("patch_mean", mean.float())
        self.register_buffer("basis", basis.float())
        self.register_buffer("scale", scale.float())
        self.explained_variance = explained

    @classmethod
    def fit(cls, images: torch.Tensor, channels: int = 4) -> PatchPCACodec:
        """Fit on (N, 3, H, W) images in [-1, 1] (H, W multiples of 8)."""
        patches = F.pixel_unshuffle(images.double(), 8).permute(0, 2, 3, 1).reshape(-1, 3 * 64)
        mean = patches.mean(0)
        _, singular, vh = torch.linalg.svd(patches - mean, full_matrices=False)
        variance = singular.pow(2) / (patches.shape[0] - 1)
        explained = float(variance[:channels].sum() / variance.sum())
        return cls(mean, vh[:channels], variance[:channels].sqrt(), explained)

    @property
    def dtype(self) -> torch.dtype:
        return self.basis.dtype

    def encode(self, x: torch.Tensor) -> _Encoded:
        patches = F.pixel_unshuffle(x.float(), 8).permute(0, 2, 3, 1)
        codes = (patches - self.patch_mean) @ self.basis.T / self.scale
        return _Encoded(_Posterior(codes.permute(0, 3, 1, 2).contiguous()))

    def decode(self, z: torch.Tensor) -> _Decoded:
        codes = z.float().permute(0, 2, 3, 1) * self.scale
        patches = codes @ self.basis + self.patch_mean
        return _Decoded(F.pixel_shuffle(patches.permute(0, 3, 1, 2).contiguous(), 8))

    def roundtrip(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] through the codec and back, clamped to [0, 1]."""
        return ((self.decode(self.encode(images * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)


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


# --------------------------------------------------------------------------------------------- measures


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def residual_noise(images: torch.Tensor, clean: torch.Tensor, blur_sigma: float = 2.0) -> dict[str, float]:
    """Two residual-noise measures of restorations, averaged over the batch (both in [0, 1] units).

    - ``flat_highpass_std``: RMS of ``image - gaussian_blur(image, blur_sigma)`` over the flattest half of each
      crop (pixels whose clean local detail is at most the crop's median), where texture is absent and what is
      left is noise (or blotches the sampler left behind);
    - ``error_std``: standard deviation of ``image - clean`` over all pixels (noise plus any other error).

    Args:
        images, clean: (N, 3, H, W) float in [0, 1].
    """
    detail = _gaussian_blur((clean - _gaussian_blur(clean, blur_sigma)).abs().mean(1, keepdim=True), blur_sigma)
    flat = detail <= detail.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)
    high = (images - _gaussian_blur(images, blur_sigma)).pow(2).mean(1, keepdim=True)
    per_image = ((high * flat).flatten(1).sum(1) / flat.flatten(1).sum(1)).sqrt()
    error = (images - clean).flatten(1).std(dim=1)
    return {"flat_highpass_std": float(per_image.mean()), "error_std": float(error.mean())}


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when either side is constant."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / norm if norm > 0 else 0.0


def _mean_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(psnr_per_image(a.clamp(0, 1), b.clamp(0, 1)).mean())


# --------------------------------------------------------------------------------------------- phases


def train_backbone(
    components: FrozenComponents, crops: PhotoCrops, config: MiniatureConfig, deadline: float, device: torch.device
) -> dict[str, Any]:
    """Train ``components.unet`` as a denoiser (the scheduler config's prediction type) on codec latents of clean
    crops with the empty prompt, then load its EMA weights and freeze it. Stops at ``config.backbone_steps`` or
    ``deadline`` (at least one step)."""
    unet, codec = components.unet, components.vae
    scheduler = make_noise_scheduler(components.scheduler_config)
    empty = encode_prompts(components, [""], "family", device)
    unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.backbone_lr, weight_decay=0.0)
    ema = EMA(unet, config.ema_decay)
    batch, losses, step, started = config.backbone_batch, [], 0, time.perf_counter()
    while step < (config.backbone_steps or sys.maxsize) and (step == 0 or time.perf_counter() < deadline):
        images = crops.train("backbone-crop", range(step * batch, (step + 1) * batch)).to(device).float() / 127.5 - 1
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
    with torch.no_grad():
        for parameter, shadow in zip(ema.params, ema.shadow):
            parameter.copy_(shadow)
    components.freeze()
    tail = losses[-min(100, len(losses)) :]
    return {
        "steps": step,
        "batch": batch,
        "lr": config.backbone_lr,
        "seconds": round(time.perf_counter() - started, 1),
        "loss_first": round(losses[0], 5),
        "loss_last100_mean": round(sum(tail) / len(tail), 5),
        "parameters": sum(p.numel() for p in unet.parameters()),
    }


def build_adaptors(components: FrozenComponents, seed: int) -> dict[str, SpireAdaptor]:
    """One fresh adaptor per fusion, trunks copied from the frozen UNet, hint encoders drawn from one seed."""
    adaptors = {}
    for fusion in FUSION_ORDER:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(seed, "adaptor-init"))
            adaptors[fusion] = SpireAdaptor.from_unet(
                components.unet, fusion=fusion, base_family="custom", prediction_type=components.info.prediction_type
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
    """Train both adaptors step by step on the same micro-batches (equal budgets by construction). Stops at
    ``config.adaptor_steps`` or ``deadline`` (at least one step each)."""
    scheduler = make_noise_scheduler(components.scheduler_config)
    prompts = PromptConfig()
    optimizers, emas = {}, {}
    for fusion, adaptor in adaptors.items():
        adaptor.to(device).train()
        optimizers[fusion] = torch.optim.AdamW(adaptor.parameters(), lr=config.adaptor_lr, weight_decay=0.0)
        emas[fusion] = EMA(adaptor, config.ema_decay)
    batch, step, started = config.adaptor_batch, 0, time.perf_counter()
    losses: dict[str, list[float]] = {f: [] for f in adaptors}
    seconds = dict.fromkeys(adaptors, 0.0)
    kinds: dict[str, int] = {}
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
        for fusion, adaptor in adaptors.items():
            tick = time.perf_counter()
            loss = diffusion_loss(data, components, adaptor, scheduler)
            optimizers[fusion].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adaptor.parameters(), config.max_grad_norm)
            optimizers[fusion].step()
            emas[fusion].update()
            losses[fusion].append(loss.item())
            seconds[fusion] += time.perf_counter() - tick
        step += 1
    summary = {
        "steps": step,
        "batch": batch,
        "lr": config.adaptor_lr,
        "prompt_kinds": kinds,
        "seconds": round(time.perf_counter() - started, 1),
        "per_fusion": {},
    }
    for fusion, adaptor in adaptors.items():
        tail = losses[fusion][-min(100, step) :]
        summary["per_fusion"][fusion] = {
            "parameters": sum(p.numel() for p in adaptor.parameters()),
            "loss_first": round(losses[fusion][0], 5),
            "loss_last100_mean": round(sum(tail) / len(tail), 5),
            "train_seconds": round(seconds[fusion], 1),
        }
        adaptor.eval()
    return summary, emas


def _restore(
    components: FrozenComponents,
    adaptor: SpireAdaptor,
    ema: EMA,
    degraded: torch.Tensor,
    prompts: list[str],
    config: MiniatureConfig,
    device: torch.device,
) -> torch.Tensor:
    with ema.swapped():
        out = restore(
            components,
            adaptor,
            degraded.to(device),
            prompts,
            [""] * len(prompts),
            steps=config.ddim_steps,
            guidance_scale=1.0,
            seed=config.seed,
        )
    return out.cpu()


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
    """Held-out restoration PSNR and the noise ladder (see the module docstring); writes the two grids."""
    codec = components.vae
    n = clean.shape[0]
    params = sample_params(spec, generator_for(config.seed, "miniature-eval"), n)
    degraded = degrade(clean, params).images
    prompts = [prompt_for(p) or BLIND_PROMPT for p in params]
    restored = {f: _restore(components, a, emas[f], degraded, prompts, config, device) for f, a in adaptors.items()}
    with torch.no_grad():
        ceiling = codec.roundtrip(clean.to(device)).cpu()
        lowpass = codec.roundtrip(degraded.to(device)).cpu()
    psnr = {
        "degraded": _mean_psnr(degraded, clean),
        "modulation": _mean_psnr(restored["modulation"], clean),
        "additive": _mean_psnr(restored["additive"], clean),
        "modulation_vs_additive": _mean_psnr(restored["modulation"], restored["additive"]),
        "codec_roundtrip_clean": _mean_psnr(ceiling, clean),
        "codec_roundtrip_degraded": _mean_psnr(lowpass, clean),
    }
    wins = psnr_per_image(restored["modulation"], clean) > psnr_per_image(restored["additive"], clean)
    restoration = {
        "crops": n,
        "prompts": prompts,
        "psnr_db": {k: round(v, 3) for k, v in psnr.items()},
        "modulation_better_on": int(wins.sum()),
        "psnr_per_crop_db": {
            "degraded": [round(float(v), 3) for v in psnr_per_image(degraded, clean)],
            **{f: [round(float(v), 3) for v in psnr_per_image(r, clean)] for f, r in restored.items()},
        },
    }
    shown = slice(0, min(n, 8))
    save_grid(
        [degraded[shown], restored["modulation"][shown], restored["additive"][shown], clean[shown]], out / "eval.png"
    )

    ladder_params = [
        manual_params(noise_sigma=config.ladder_sigma, seed=seed_for(config.seed, "ladder-noise", i)) for i in range(n)
    ]
    noisy = degrade(clean, ladder_params).images
    sigmas = list(config.ladder)
    ladder: dict[str, Any] = {
        "true_sigma": config.ladder_sigma,
        "prompted_sigmas": sigmas,
        "prompts": [render(denoise=x) for x in sigmas],
        "crops": n,
        "measure": "flat_highpass_std (primary) and error_std, see residual_noise",
        "reference": {"degraded": residual_noise(noisy, clean), "clean": residual_noise(clean, clean)},
    }
    rows = [noisy[:1]]
    for fusion, adaptor in adaptors.items():
        measures: dict[str, list[float]] = {"flat_highpass_std": [], "error_std": []}
        psnrs, images = [], []
        for prompt in ladder["prompts"]:
            output = _restore(components, adaptor, emas[fusion], noisy, [prompt] * n, config, device)
            for key, value in residual_noise(output, clean).items():
                measures[key].append(round(value, 5))
            psnrs.append(round(_mean_psnr(output, clean), 3))
            images.append(output[:1])
        rows.append(torch.cat(images))
        entry: dict[str, Any] = {"psnr_db": psnrs, **measures}
        for key in measures:
            values = measures[key]
            entry[f"spearman_{key}"] = round(spearman(sigmas, values), 3)
            entry[f"monotonic_decreasing_{key}"] = all(b < a for a, b in zip(values, values[1:]))
        ladder[fusion] = entry
    width = len(sigmas)
    save_grid([rows[0].expand(width, -1, -1, -1), *rows[1:], clean[:1].expand(width, -1, -1, -1)], out / "ladder.png")
    return restoration, ladder


# --------------------------------------------------------------------------------------------- run


def _machine(device: torch.device) -> dict[str, Any]:
    import diffusers

    from ..bench.common import describe_device

    return {**describe_device(device), "diffusers": diffusers.__version__}


def run_miniature(out: str | Path, config: MiniatureConfig | None = None, command: str | None = None) -> dict:
    """Run the whole miniature and write ``out/miniature.json``, ``out/miniature.md`` and two grids.

    Args:
        out: output folder (created).
        config: the settings (default ``MiniatureConfig()``).
        command: the command line to record (default: the module's CLI with this config's budget and seed).

    Returns:
        The result dict written to ``miniature.json``.
    """
    from .tiny import build_tiny_components

    config = config or MiniatureConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device)
    started = time.perf_counter()
    budget = config.budget_minutes * 60
    spec = get_preset(config.preset)
    crops = PhotoCrops(config.images, config.crop, config.holdout, config.seed)
    wall: dict[str, float] = {}

    tick = time.perf_counter()
    fit = crops.train("codec-crop", range(config.codec_fit_crops)).float() / 127.5 - 1
    codec = PatchPCACodec.fit(fit).to(device)
    components = replace(build_tiny_components(prediction_type=config.prediction_type, seed=config.seed), vae=codec)
    nn.Module.to(components.unet, device)
    nn.Module.to(components.text_encoder, device)
    wall["setup_and_codec"] = round(time.perf_counter() - tick, 1)
    codec_info = {
        "kind": "patch-pca",
        "latent": f"{codec.config.latent_channels} x crop/8 x crop/8",
        "fit_crops": config.codec_fit_crops,
        "explained_variance": round(codec.explained_variance, 4),
    }

    backbone = train_backbone(components, crops, config, started + config.backbone_until * budget, device)
    wall["backbone"] = backbone["seconds"]
    adaptors = build_adaptors(components, config.seed)
    training, emas = train_adaptors(
        components, adaptors, crops, spec, config, started + config.adaptors_until * budget, device
    )
    wall["adaptors"] = training["seconds"]

    tick = time.perf_counter()
    clean = crops.heldout(config.eval_crops)
    restoration, ladder = evaluate(components, adaptors, emas, clean, spec, config, device, out)
    wall["evaluation"] = round(time.perf_counter() - tick, 1)
    wall["total"] = round(time.perf_counter() - started, 1)

    result = {
        "what": "SPIRE miniature: modulation vs additive adaptor, equal budgets, tiny latent-diffusion stack on CPU",
        "command": command
        or f"python -m spire_core.training.miniature --out {out} --budget-minutes {config.budget_minutes:g} "
        f"--seed {config.seed}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(device),
        "config": {**asdict(config), "images": [Path(p).name for p in config.images]},
        "prompts": "trainer defaults (PromptConfig: partial 0.5, blind 0.3); semantic prompt always empty",
        "wall_seconds": wall,
        "codec": codec_info,
        "backbone": backbone,
        "adaptors": training,
        "restoration": restoration,
        "noise_ladder": ladder,
    }
    (out / "miniature.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "miniature.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    """The result tables in Markdown (restoration PSNR, noise ladder, run facts)."""
    psnr = result["restoration"]["psnr_db"]
    n = result["restoration"]["crops"]
    lines = [
        f"Held-out crops: {n} ({result['config']['crop']} px, preset `{result['config']['preset']}`); "
        "PSNR in dB against the clean crop (mean over crops), last row between the two restorations.",
        "",
        "| image | PSNR (dB) |",
        "|---|---:|",
        f"| degraded input | {psnr['degraded']:.2f} |",
        f"| codec round trip of the clean crop (ceiling) | {psnr['codec_roundtrip_clean']:.2f} |",
        f"| codec round trip of the degraded input (low-pass baseline) | {psnr['codec_roundtrip_degraded']:.2f} |",
        f"| restored, modulation adaptor | {psnr['modulation']:.2f} |",
        f"| restored, additive adaptor | {psnr['additive']:.2f} |",
        f"| modulation vs additive (between the restorations) | {psnr['modulation_vs_additive']:.2f} |",
        "",
        f"Modulation beats additive on {result['restoration']['modulation_better_on']} of {n} crops.",
        "",
    ]
    ladder = result["noise_ladder"]
    sigmas = ladder["prompted_sigmas"]
    ref = ladder["reference"]
    lines += [
        f"Noise ladder: {ladder['crops']} held-out crops with Gaussian noise sigma {ladder['true_sigma']}, restored "
        "with `Denoise with sigma X`. Residual noise = RMS high-pass (image minus Gaussian blur, sigma 2 px) over "
        f"the flattest half of each crop; clean crops {ref['clean']['flat_highpass_std']:.4f}, noisy input "
        f"{ref['degraded']['flat_highpass_std']:.4f}.",
        "",
        "| adaptor | measure | " + " | ".join(f"X = {x:g}" for x in sigmas) + " | Spearman | monotonic decrease |",
        "|---|---|" + "---:|" * len(sigmas) + "---:|---|",
    ]
    for fusion in FUSION_ORDER:
        entry = ladder[fusion]
        for key, label in (("flat_highpass_std", "residual noise"), ("error_std", "std(output - clean)")):
            values = " | ".join(f"{v:.4f}" for v in entry[key])
            verdict = "yes" if entry[f"monotonic_decreasing_{key}"] else "no"
            lines.append(f"| {fusion} | {label} | {values} | {entry[f'spearman_{key}']:+.2f} | {verdict} |")
        lines.append(f"| {fusion} | PSNR (dB) | " + " | ".join(f"{v:.2f}" for v in entry["psnr_db"]) + " | | |")
    machine, wall = result["machine"], result["wall_seconds"]
    training, backbone = result["adaptors"], result["backbone"]
    lines += [
        "",
        f"Run: {result['date']}, {machine['cpu']} ({machine['torch_threads']} thread), torch {machine['torch']}; "
        f"wall time {wall['total'] / 60:.1f} min. Backbone {backbone['steps']} steps x {backbone['batch']}; "
        f"adaptors {training['steps']} steps x {training['batch']} each; DDIM {result['config']['ddim_steps']} steps.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spire_core.training.miniature",
        description="Miniature SPIRE science check on the CPU: tiny backbone, modulation vs additive adaptor.",
    )
    parser.add_argument("--out", required=True, help="output folder (miniature.json, miniature.md, grids)")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=25.0,
        help="wall-clock budget; training stops at 94%% of it, evaluation (about a minute) follows",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="noise", help="degradation preset (default: noise)")
    parser.add_argument(
        "--prediction-type", default="v_prediction", choices=("v_prediction", "epsilon"), help="backbone objective"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
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
        prediction_type=args.prediction_type,
        device=args.device,
        backbone_steps=args.backbone_steps,
        adaptor_steps=args.adaptor_steps,
        eval_crops=args.eval_crops,
        ddim_steps=args.ddim_steps,
    )
    if args.images:
        config = replace(config, images=tuple(args.images))
    command = "python -m spire_core.training.miniature " + " ".join(sys.argv[1:] if argv is None else argv)
    result = run_miniature(args.out, config, command=command)
    print(markdown(result))
    print(f"wrote {Path(args.out) / 'miniature.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
