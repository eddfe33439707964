"""Running the miniature end to end: codecs, phases, evaluation, the JSON and markdown reports, the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...degradation import get_preset
from ...eval.control import control_markdown
from ...models.components import FrozenComponents
from ...models.tiny import tiny_unet_config
from ..minicodec import LappedGrainCodec, PatchPCACodec
from .config import ARMS, RECIPE_ARMS, TRUNK_ARMS, MiniatureConfig
from .data import PhotoCrops
from .evaluate import evaluate
from .phases import build_adaptors, mean_psnr, train_adaptors, train_backbone


def _machine(device: torch.device) -> dict[str, Any]:
    import diffusers

    from ...bench.common import describe_device

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
            "roundtrip_psnr_db": round(mean_psnr(codec.roundtrip(clean), clean), 3),
            "block_codec_roundtrip_psnr_db": round(mean_psnr(block.roundtrip(clean), clean), 3),
            "block_codec_explained_variance": round(block.explained_variance, 4),
        }
    return codec, info


def backbone_components(config: MiniatureConfig, codec: nn.Module) -> FrozenComponents:
    """The tiny SD1-shaped stack with ``codec`` as its VAE and a fresh backbone of ``config.backbone_width`` and
    ``config.backbone_norm_groups`` (the defaults: ``tiny_unet_config``'s 32 and 32, as the recipe comparison
    always ran)."""
    from diffusers import UNet2DConditionModel

    from ...training.tiny import TINY_TEXT_DIM, build_tiny_components

    components = build_tiny_components(prediction_type=config.prediction_type, seed=config.seed)
    default = tiny_unet_config("sd1", cross_attention_dim=TINY_TEXT_DIM)  # what build_tiny_components built
    unet_config = {
        **default,
        "block_out_channels": config.backbone_channels,
        "norm_num_groups": config.backbone_norm_groups,
    }
    if unet_config == default:
        return replace(components, vae=codec)
    torch.manual_seed(config.seed)  # as tiny_unet draws the default backbone
    unet = UNet2DConditionModel(**unet_config).eval()
    info = replace(components.info, unet_config={k: v for k, v in dict(unet.config).items() if not k.startswith("_")})
    return replace(components, vae=codec, unet=unet, info=info).freeze()


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
    components = backbone_components(config, codec)
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
        "what": f"SPIRE miniature control check: {len(config.arms)} adaptor arms, equal budgets, tiny latent-diffusion "
        "stack on CPU",
        "command": command
        or f"python -m spire_core.experiments.miniature --out {out} --budget-minutes {config.budget_minutes:g} "
        f"--seed {config.seed}",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(device),
        "config": {
            **asdict(config),
            "backbone_channels": config.backbone_channels,
            "images": [Path(p).name for p in config.images],
        },
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
    per_arm = result["adaptors"]["per_arm"]
    lines += [
        "Arms: "
        + "; ".join(
            f"{arm} ({entry['fusion']}, {entry['numeric_tokens']} numeric tokens, trunk {entry['trunk']} "
            f"{'/'.join(map(str, entry['trunk_channels']))} channels, {entry['parameters']:,} parameters)"
            for arm, entry in per_arm.items()
        )
        + f". Backbone channels {'/'.join(map(str, result['config']['backbone_channels']))}, "
        f"{result['config']['backbone_norm_groups']} norm groups, {result['backbone']['parameters']:,} parameters.",
        "",
    ]
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
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=tuple(ARMS),
        default=list(RECIPE_ARMS),
        help=f"arms to train (default: {' '.join(RECIPE_ARMS)}; trunk sizes: {' '.join(TRUNK_ARMS)} with "
        "--backbone-width 64 --backbone-norm-groups 16)",
    )
    parser.add_argument(
        "--backbone-width", type=int, default=MiniatureConfig.backbone_width, help="backbone's first-level channels"
    )
    parser.add_argument(
        "--backbone-norm-groups",
        type=int,
        default=MiniatureConfig.backbone_norm_groups,
        help="backbone's GroupNorm groups",
    )
    parser.add_argument(
        "--prediction-type", default="v_prediction", choices=("v_prediction", "epsilon"), help="backbone objective"
    )
    parser.add_argument(
        "--restoration-scales",
        nargs="+",
        type=float,
        default=[],
        metavar="W",
        help="also run the control benchmark of modulation_numeric with restoration guidance at these scales "
        "(as the Restore node's restoration_scale; default: unguided only)",
    )
    parser.add_argument(
        "--control-starts",
        nargs="+",
        type=float,
        default=[],
        metavar="D",
        help="also run the control benchmark of modulation_numeric from the degraded input noised to these "
        "denoise starts (below 1), unguided and at each --restoration-scales (default: from pure noise only)",
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
    try:
        config = MiniatureConfig(
            budget_minutes=args.budget_minutes,
            seed=args.seed,
            preset=args.preset,
            arms=tuple(args.arms),
            backbone_width=args.backbone_width,
            backbone_norm_groups=args.backbone_norm_groups,
            prediction_type=args.prediction_type,
            device=args.device,
            backbone_steps=args.backbone_steps,
            adaptor_steps=args.adaptor_steps,
            eval_crops=args.eval_crops,
            ddim_steps=args.ddim_steps,
            restoration_scales=tuple(args.restoration_scales),
            control_starts=tuple(args.control_starts),
        )
    except ValueError as error:
        parser.error(str(error))
    if args.images:
        config = replace(config, images=tuple(args.images))
    command = "python -m spire_core.experiments.miniature " + " ".join(sys.argv[1:] if argv is None else argv)
    result = run_miniature(args.out, config, command=command)
    print(markdown(result))
    print(f"wrote {Path(args.out) / 'miniature.json'}")
    return 0
