"""Running the miniature end to end: codecs, phases, evaluation, the JSON and markdown reports, the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...degradation import get_preset
from ...eval.control import control_markdown
from ...models.components import FrozenComponents
from ...models.tiny import tiny_unet_config
from ..minicodec import LappedGrainCodec, PatchPCACodec
from .config import ARMS, EVALUATION_SETTINGS, RECIPE_ARMS, TRUNK_ARMS, MiniatureConfig
from .data import PhotoCrops
from .evaluate import evaluate
from .phases import build_adaptors, mean_psnr, train_adaptors, train_backbone
from .weights import RUN_FILE, WEIGHTS, MiniatureWeightsError, load_weights, run_id_of, save_weights, to_device

if TYPE_CHECKING:
    from ...models import SpireAdaptor


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
    """Run the whole miniature and write ``out/miniature.json``, ``out/miniature.md``, the control report, two
    grids and the trained weights (``out/weights``, ``weights.save_weights``: ``evaluate_run`` measures them
    again).

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
    (out / WEIGHTS / RUN_FILE).unlink(missing_ok=True)  # earlier weights here no longer belong to its report
    run_id = uuid.uuid4().hex
    device = torch.device(config.device)
    started = time.perf_counter()
    budget = config.budget_minutes * 60
    spec = get_preset(config.preset)
    crops = PhotoCrops(config.images, config.crop, config.holdout, config.seed)
    clean = crops.heldout(config.eval_crops)
    wall: dict[str, float] = {}

    tick = time.perf_counter()
    codec, codec_info = fit_codecs(crops, clean, config)
    components = backbone_components(config, codec)
    to_device(components, {}, device)
    wall["setup_and_codec"] = round(time.perf_counter() - tick, 1)

    backbone = train_backbone(components, crops, spec, config, started + config.backbone_until * budget, device)
    wall["backbone"] = backbone["seconds"]
    adaptors = build_adaptors(components, config.arms, config.seed)
    training = train_adaptors(
        components, adaptors, crops, spec, config, started + config.adaptors_until * budget, device
    )
    wall["adaptors"] = training["seconds"]
    try:
        folder = save_weights(out, config, components, adaptors, training["steps"], run_id)
        weights = {"saved": str(folder.relative_to(out)), "run_id": run_id}
    except MiniatureWeightsError as error:  # a diverged run still reports what it measured
        print(f"miniature: {error}", file=sys.stderr)
        weights = {"saved": None, "why": str(error)}

    tick = time.perf_counter()
    restoration, control = evaluate(components, adaptors, clean, spec, config, device, out)
    wall["evaluation"] = round(time.perf_counter() - tick, 1)
    wall["total"] = round(time.perf_counter() - started, 1)
    trained = {"codec": codec_info, "backbone": backbone, "adaptors": training, "weights": weights}
    command = command or (
        f"python -m spire_core.experiments.miniature --out {out} --budget-minutes {config.budget_minutes:g} "
        f"--seed {config.seed}"
    )
    return _write_result(out, config, device, command, wall, trained, restoration, control)


def evaluate_run(run: str | Path, out: str | Path, command: str | None = None, **settings: Any) -> dict:
    """Evaluate a trained run again from its saved weights (``run/weights``) with other evaluation settings, and
    write the same reports as ``run_miniature`` to ``out``. With the run's own settings the numbers are the
    run's, exactly.

    Args:
        run: the trained run's output folder (``miniature.json`` and ``weights/``).
        out: output folder (created); not ``run`` itself (its reports are kept).
        command: the command line to record.
        settings: evaluation settings of ``MiniatureConfig`` (``restoration_scales``, ``control_starts``,
            ``ddim_steps``, ``eval_crops``, ``device``), and ``images``: the run's photos where they moved since.

    Returns:
        The result dict written to ``out/miniature.json``: the run's codec, backbone and training sections, the
        new evaluation, and ``evaluated_from`` (the run's folder, date, command and machine).

    Raises:
        MiniatureWeightsError: the run has no (usable) weights or report, or ``out`` is the run's folder.
        ValueError: a setting that is not an evaluation setting, or an invalid value.
        Both before any work (``prepare_evaluation``).
    """
    return run_evaluation(prepare_evaluation(run, out, **settings), command)


@dataclass
class PreparedEvaluation:
    """A trained run, checked and loaded, ready to be evaluated again (``prepare_evaluation``)."""

    run: Path
    out: Path
    config: MiniatureConfig
    components: FrozenComponents
    adaptors: dict[str, SpireAdaptor]
    report: dict
    """The run's own ``miniature.json``."""
    run_id: str


def prepare_evaluation(run: str | Path, out: str | Path, **settings: Any) -> PreparedEvaluation:
    """Every check of ``evaluate_run`` and the loading of the run's weights, before any evaluation or write; the
    same arguments and errors (the command line turns these errors, and only these, into usage errors)."""
    run, out = Path(run), Path(out)
    unknown = sorted(set(settings) - {*EVALUATION_SETTINGS, "images"})
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: decided by the trained run (see {run / 'miniature.json'}); evaluating again takes "
            f"only {', '.join(EVALUATION_SETTINGS)} and the photos' place"
        )
    if out.resolve() == run.resolve():
        raise MiniatureWeightsError(
            f"{out} is the trained run's own folder: its reports would be overwritten; write elsewhere"
        )
    if (out / WEIGHTS / RUN_FILE).is_file():
        raise MiniatureWeightsError(f"{out} holds a trained run (its weights): its reports would be overwritten")
    images = settings.pop("images", None)
    config, components, adaptors = load_weights(run, images)
    report = run / "miniature.json"
    try:
        original = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MiniatureWeightsError(
            f"{report} is missing or not readable ({error}); it holds the run's training facts"
        ) from None
    if not isinstance(original, dict) or not all(key in original for key in _KEPT):
        raise MiniatureWeightsError(f"{report} is not a miniature report (it lacks some of {', '.join(_KEPT)})")
    run_id = run_id_of(run)
    recorded = original.get("weights")
    if not isinstance(recorded, dict) or recorded.get("run_id") != run_id:
        raise MiniatureWeightsError(
            f"{report} is not the report of the run that saved {run / WEIGHTS} (their run ids differ): the folder was "
            "reused or a run stopped before writing its report; train the run again"
        )
    config = replace(config, **settings)
    return PreparedEvaluation(run, out, config, components, adaptors, original, run_id)


_KEPT = ("codec", "backbone", "adaptors", "date", "command", "machine", "wall_seconds")
"""What an evaluation from saved weights repeats of the trained run's report: its training sections, then where
and how it ran."""


def run_evaluation(prepared: PreparedEvaluation, command: str | None = None) -> dict:
    """Evaluate a prepared run (``prepare_evaluation``) and write its reports; see ``evaluate_run``."""
    run, out, config, original = prepared.run, prepared.out, prepared.config, prepared.report
    device = torch.device(config.device)
    to_device(prepared.components, prepared.adaptors, device)
    out.mkdir(parents=True, exist_ok=True)
    spec = get_preset(config.preset)
    clean = PhotoCrops(config.images, config.crop, config.holdout, config.seed).heldout(config.eval_crops)
    tick = time.perf_counter()
    restoration, control = evaluate(prepared.components, prepared.adaptors, clean, spec, config, device, out)
    seconds = round(time.perf_counter() - tick, 1)
    trained = {key: original[key] for key in _KEPT[:3]}
    trained["evaluated_from"] = {
        "run": str(run),
        "run_id": prepared.run_id,
        **{key: original[key] for key in _KEPT[3:]},
    }
    wall = {"evaluation": seconds, "total": seconds}
    command = command or f"python -m spire_core.experiments.miniature --evaluate-from {run} --out {out}"
    return _write_result(out, config, device, command, wall, trained, restoration, control)


def _write_result(
    out: Path,
    config: MiniatureConfig,
    device: torch.device,
    command: str,
    wall: dict[str, float],
    trained: dict[str, Any],
    restoration: dict[str, Any],
    control: dict[str, Any],
) -> dict:
    """Assemble the result dict (``trained``: the codec, backbone and adaptors sections, and ``evaluated_from``
    for a run evaluated again) and write ``miniature.json`` and ``miniature.md``."""
    result = {
        "what": f"SPIRE miniature control check: {len(config.arms)} adaptor arms, equal budgets, tiny latent-diffusion "
        "stack on CPU",
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(device),
        "config": {
            **asdict(config),
            "backbone_channels": config.backbone_channels,
            "images": [Path(p).name for p in config.images],
        },
        "prompts": "trainer defaults (PromptConfig: partial 0.3, graded 0.3, blind 0.3 of the rest); semantic empty",
        "wall_seconds": wall,
        **trained,
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
    steps = (
        f"Backbone {backbone['steps']} steps x {backbone['batch']}; adaptors {training['steps']} steps x "
        f"{training['batch']} each ({len(arms)} arms); DDIM {result['config']['ddim_steps']} steps"
    )
    sampling_seed = result["config"]["sampling_seed"]
    steps += "." if sampling_seed is None else f", sampling seed {sampling_seed}."
    run = f"{machine['cpu']} ({machine['torch_threads']} threads), torch {machine['torch']}"
    source = result.get("evaluated_from")
    if source:
        trained_on = source["machine"]
        lines += [
            f"Evaluated {result['date']} on {run}, wall time {wall['total'] / 60:.1f} min, from the weights of the "
            f"run `{source['command']}` (trained {source['date']} on {trained_on['cpu']}, "
            f"{source['wall_seconds']['total'] / 60:.1f} min). {steps}",
            "",
        ]
    else:
        lines += [f"Run: {result['date']}, {run}; wall time {wall['total'] / 60:.1f} min. {steps}", ""]
    return "\n".join(lines)


TRAINING_OPTIONS = {
    "budget_minutes": "--budget-minutes",
    "seed": "--seed",
    "preset": "--preset",
    "arms": "--arms",
    "backbone_width": "--backbone-width",
    "backbone_norm_groups": "--backbone-norm-groups",
    "prediction_type": "--prediction-type",
    "backbone_steps": "--backbone-steps",
    "adaptor_steps": "--adaptor-steps",
}
"""Config field -> the option that sets it, for the options that decide training (``None`` unless given, so that
``--evaluate-from`` can refuse them: the trained run decided them)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spire_core.experiments.miniature",
        description="Miniature SPIRE control check on the CPU: tiny backbone, three adaptor arms, control benchmark. "
        "With --evaluate-from, evaluate a trained run again from its saved weights (no training).",
    )
    parser.add_argument("--out", required=True, help="output folder (miniature.json, miniature.md, control report)")
    parser.add_argument(
        "--evaluate-from",
        metavar="RUN",
        help="a trained run's output folder: evaluate its saved weights (RUN/weights) again with the evaluation "
        "options below (--restoration-scales, --control-starts, --ddim-steps, --eval-crops, --sampling-seed, "
        "--images where the photos moved) instead of training; training options are refused",
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        help=f"wall-clock budget (default {MiniatureConfig.budget_minutes:g}); training stops at 83%% of it, "
        "evaluation (about four minutes) follows",
    )
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--preset", help=f"degradation preset (default: {MiniatureConfig.preset})")
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=tuple(ARMS),
        help=f"arms to train (default: {' '.join(RECIPE_ARMS)}; trunk sizes: {' '.join(TRUNK_ARMS)} with "
        "--backbone-width 64 --backbone-norm-groups 16)",
    )
    parser.add_argument(
        "--backbone-width", type=int, help=f"backbone's first-level channels (default {MiniatureConfig.backbone_width})"
    )
    parser.add_argument(
        "--backbone-norm-groups",
        type=int,
        help=f"backbone's GroupNorm groups (default {MiniatureConfig.backbone_norm_groups})",
    )
    parser.add_argument(
        "--prediction-type",
        choices=("v_prediction", "epsilon"),
        help=f"backbone objective (default {MiniatureConfig.prediction_type})",
    )
    parser.add_argument(
        "--restoration-scales",
        nargs="+",
        type=float,
        metavar="W",
        help="also run the control benchmark of modulation_numeric with restoration guidance at these scales "
        "(as the Restore node's restoration_scale; default: unguided only; with --evaluate-from: the run's)",
    )
    parser.add_argument(
        "--control-starts",
        nargs="+",
        type=float,
        metavar="D",
        help="also run the control benchmark of modulation_numeric from the degraded input noised to these "
        "denoise starts (below 1), unguided and at each --restoration-scales (default: from pure noise only; with "
        "--evaluate-from: the run's)",
    )
    parser.add_argument(
        "--sampling-seed",
        type=int,
        metavar="N",
        help="seed of every restoration's starting noise (default: --seed; with --evaluate-from: the run's); the "
        "crops, their degradations and the benchmark's noise stay those of --seed",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", nargs="+", help="photos to crop (default: the two bundled samples)")
    smoke = parser.add_argument_group("step caps for smoke runs (default: phases run until their deadlines)")
    smoke.add_argument("--backbone-steps", type=int)
    smoke.add_argument("--adaptor-steps", type=int)
    smoke.add_argument(
        "--eval-crops", type=int, help="held-out crops to use (default: all; with --evaluate-from: the run's)"
    )
    smoke.add_argument(
        "--ddim-steps", type=int, help=f"default {MiniatureConfig.ddim_steps}; with --evaluate-from: the run's"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m spire_core.experiments.miniature " + " ".join(sys.argv[1:] if argv is None else argv)
    evaluation = {
        "restoration_scales": args.restoration_scales and tuple(args.restoration_scales),
        "control_starts": args.control_starts and tuple(args.control_starts),
        "ddim_steps": args.ddim_steps,
        "eval_crops": args.eval_crops,
        "sampling_seed": args.sampling_seed,
    }
    evaluation = {field: value for field, value in evaluation.items() if value is not None}  # given ones only
    evaluation["device"] = args.device
    training = {field: getattr(args, field) for field in TRAINING_OPTIONS if getattr(args, field) is not None}
    if args.evaluate_from is not None:
        if not args.evaluate_from:
            parser.error("--evaluate-from: expected a trained run's output folder, got an empty path")
        if training:
            given = ", ".join(TRAINING_OPTIONS[field] for field in training)
            parser.error(f"{given}: decided by the trained run; --evaluate-from takes only evaluation options")
        try:
            images = {"images": tuple(args.images)} if args.images else {}
            prepared = prepare_evaluation(args.evaluate_from, args.out, **evaluation, **images)
        except ValueError as error:  # MiniatureWeightsError included: nothing was evaluated
            parser.error(str(error))
        result = run_evaluation(prepared, command)  # an error from here on is not a usage error
    else:
        if "arms" in training:
            training["arms"] = tuple(training["arms"])
        if args.images:
            training["images"] = tuple(args.images)
        try:
            config = MiniatureConfig(**training, **evaluation)
        except ValueError as error:
            parser.error(str(error))
        result = run_miniature(args.out, config, command=command)
    print(markdown(result))
    print(f"wrote {Path(args.out) / 'miniature.json'}")
    return 0
