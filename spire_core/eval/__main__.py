"""Command line for SPIRE evaluation (docs/evaluation.md).

    python -m spire_core.eval build --images DIR [--captions captions.json] [--seed 0] [--preset paper]
                                    [--size 512] --out BENCH
    python -m spire_core.eval restore --bench BENCH --base MODEL --adaptor ADAPTOR [--components FOLDER]
                                      --out OUT [--setting full|blind|semantic|restoration] [--steps 50]
                                      [--sampler ddim|euler] [--schedule base|comfyui-simple|...] ...
    python -m spire_core.eval score --bench BENCH --outputs OUT [--report DIR] [--lpips lpips_alex.safetensors]
                                    [--fid-features CLEAN RESTORED] [--resize]
    python -m spire_core.eval control --out DIR [--restorer adaptor|oracle|identity] [--base MODEL --adaptor FILE
                                      --components FOLDER] [--images PHOTO ...] [--crop 64] [--crops N]
                                      [--noise 0.12] [--blur 2.0] [--seed 0] [--steps 25]
                                      [--restoration-scale 1 2 ...] [--denoise-start 1 0.9 ...]
    python -m spire_core.eval estimate [--out results/estimate-accuracy.json] [--plot docs/estimate_accuracy.png]
                                       [--per-photo 4] [--crop 256] [--seed 0] [--sets noise blur jpeg ...]

Build, restore and score show a progress bar on stderr when it is a terminal (``spire_core.progress``;
``SPIRE_PROGRESS=0`` hides it); stdout and the files written are the same with or without it.

Exit codes: 0 success; 2 a benchmark, model-file or weights error (the message says what to fix).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..progress import echo
from .benchmark_set import SETTINGS, BenchmarkError, build_benchmark, check_captions, load_manifest, restore_benchmark

_DTYPES = ("float32", "float16", "bfloat16")
SCHEDULES = {
    "base": None,
    "comfyui-simple": {"timestep_spacing": "trailing", "set_alpha_to_one": True},
    "leading": {"timestep_spacing": "leading"},
    "trailing": {"timestep_spacing": "trailing"},
    "linspace": {"timestep_spacing": "linspace"},
}
"""``--schedule`` -> ``scheduler_options`` of ``SpirePipeline.restore``; ``comfyui-simple`` equals
``spire_core.restoration.pipeline.COMFY_SIMPLE_SCHEDULE`` (not imported here: loading the pipeline is slow,
build and score do not need it; a test keeps them equal)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spire_core.eval",
        description="Build a fixed degraded benchmark, restore it with a SPIRE adaptor, and score the results.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="centre-crop, degrade and write a fixed benchmark")
    build.add_argument("--images", required=True, help="folder of clean photos (top level)")
    build.add_argument("--captions", default=None, help="COCO captions JSON (first caption per image is c_s)")
    build.add_argument("--seed", type=int, default=0, help="benchmark seed (default 0)")
    build.add_argument("--preset", default="paper", help="degradation preset (default paper)")
    build.add_argument("--size", type=int, default=512, help="side of the square crops in pixels (default 512)")
    build.add_argument("--out", required=True, help="benchmark folder to write")

    restore = commands.add_parser("restore", help="restore a benchmark's degraded images with SpirePipeline")
    restore.add_argument("--bench", required=True, help="benchmark folder (from build)")
    restore.add_argument("--base", required=True, help="diffusers folder or single-file SD checkpoint")
    restore.add_argument("--adaptor", required=True, help="SPIRE adaptor .safetensors")
    restore.add_argument("--components", default=None, help="diffusers folder with vae/, text_encoder/, tokenizer/")
    restore.add_argument("--out", required=True, help="folder for the restored NAME.png files")
    restore.add_argument("--setting", choices=tuple(SETTINGS), default="full", help="prompts used (default full)")
    restore.add_argument("--steps", type=int, default=50)
    restore.add_argument("--sampler", choices=("ddim", "euler"), default="ddim")
    restore.add_argument(
        "--schedule",
        choices=tuple(SCHEDULES),
        default="base",
        help="timesteps: the base's scheduler config (default; SD: leading), comfyui-simple (exactly ComfyUI's "
        "'simple' scheduler), or a diffusers timestep spacing",
    )
    restore.add_argument("--semantic-scale", type=float, default=5.0)
    restore.add_argument("--restoration-scale", type=float, default=1.0)
    restore.add_argument("--strength", type=float, default=1.0)
    restore.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    restore.add_argument("--color-fix", choices=("none", "wavelet", "adain"), default="none")
    restore.add_argument("--device", default="cpu", help="torch device (default cpu)")
    restore.add_argument("--dtype", choices=_DTYPES, default="float32", help="UNet/text encoder/adaptor dtype")
    restore.add_argument("--skip-existing", action="store_true", help="keep restored images already in --out")

    score = commands.add_parser("score", help="PSNR/SSIM (LPIPS, FID when given) + CSV, JSON, Markdown, plots")
    score.add_argument("--bench", required=True, help="benchmark folder (from build)")
    score.add_argument("--outputs", required=True, help="restored images: NAME.png, or ComfyUI prefix_00001_.png")
    score.add_argument("--report", default=None, help="report folder (default: --outputs)")
    score.add_argument("--lpips", default=None, help="local lpips_alex.safetensors (LPIPS is skipped without it)")
    score.add_argument(
        "--fid-features",
        nargs=2,
        default=None,
        metavar=("CLEAN", "RESTORED"),
        help="Inception features/statistics (.npz mu+sigma, or (N, D) .npy/.npz) of clean/ and of the outputs",
    )
    score.add_argument("--resize", action="store_true", help="resize outputs of another size to the clean size")
    score.add_argument("--device", default="cpu", help="torch device for LPIPS (default cpu)")

    control = commands.add_parser(
        "control", help="the control benchmark: noise and blur ladders, decoupling and blind restoration"
    )
    control.add_argument("--out", required=True, help="folder for control.json, control.md and the ladder plots")
    control.add_argument(
        "--restorer",
        choices=("adaptor", "oracle", "identity"),
        default="adaptor",
        help="adaptor: SpirePipeline with --base/--adaptor; oracle: the exact graded targets (validates the "
        "benchmark); identity: no restoration (its floor)",
    )
    control.add_argument("--base", default=None, help="adaptor: diffusers folder or single-file SD checkpoint")
    control.add_argument("--adaptor", default=None, help="adaptor: SPIRE adaptor .safetensors")
    control.add_argument("--components", default=None, help="adaptor: diffusers folder with vae/, text_encoder/")
    control.add_argument("--images", nargs="+", default=None, help="photos to crop (default: docs/samples)")
    control.add_argument("--crop", type=int, default=64, help="crop side in pixels (default 64)")
    control.add_argument("--crops", type=int, default=None, help="crops used, spread over the photos (default all)")
    control.add_argument("--noise", type=float, default=0.12, help="present noise sigma of the ladders")
    control.add_argument("--blur", type=float, default=2.0, help="present blur sigma of the ladders (px)")
    control.add_argument("--seed", type=int, default=0)
    control.add_argument("--steps", type=int, default=25, help="adaptor: sampling steps")
    control.add_argument("--semantic-scale", type=float, default=1.0, help="adaptor: CFG (default 1: none)")
    control.add_argument(
        "--restoration-scale",
        type=float,
        nargs="+",
        default=[1.0],
        metavar="W",
        help="adaptor: restoration guidance w_r against 'Remove all degradation', one run per value (default 1: none)",
    )
    control.add_argument(
        "--denoise-start",
        type=float,
        nargs="+",
        default=[1.0],
        metavar="D",
        help="adaptor: where sampling starts, in (0, 1]: 1 from pure noise (the paper), below 1 from the degraded "
        "input's latent noised to that level (as KSampler's denoise); one run per value and scale (default 1)",
    )
    control.add_argument("--device", default="cpu", help="adaptor: torch device")

    estimate = commands.add_parser(
        "estimate", help="accuracy of the reference-free degradation estimates (suggested restoration prompts)"
    )
    estimate.add_argument("--out", default=None, help="JSON file for the records, summary and targets")
    estimate.add_argument("--plot", default=None, help="PNG scatter plot of estimate against truth")
    estimate.add_argument("--per-photo", type=int, default=4, help="degraded draws per photo and set (default 4)")
    estimate.add_argument("--crop", type=int, default=256, help="centre-crop side in pixels (default 256)")
    estimate.add_argument("--seed", type=int, default=0)
    estimate.add_argument("--sets", nargs="+", default=None, help="degradation sets (default all)")
    return parser


def _estimate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .estimate import REPORT_FORMAT, SETS, bundled_photos, check_targets, markdown, plot, run_cases, summarize

    sets = tuple(args.sets or SETS)
    unknown = set(sets) - set(SETS)
    if unknown:
        raise ValueError(f"unknown sets {sorted(unknown)}; expected some of {SETS}")
    photos = bundled_photos()
    records = run_cases(photos, sets, per_photo=args.per_photo, crop=args.crop, seed=args.seed, log=print)
    summary = summarize(records)
    targets = check_targets(summary)
    print(markdown(summary), end="")
    print(json.dumps({"targets": targets}))
    if args.out:
        report = {
            "format": REPORT_FORMAT,
            "command": args.command_line,
            "photos": sorted(photos),
            "summary": summary,
            "targets": targets,
            "records": records,
        }
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.plot:
        plot(records, args.plot)
    return 0


def _build(args: argparse.Namespace) -> int:
    manifest = build_benchmark(args.images, args.out, args.captions, args.seed, args.preset, args.size, log=echo)
    print(f"wrote {len(manifest.images)} images and manifest.json to {args.out}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    import torch

    from ..restoration.pipeline import SpirePipeline
    from ..restoration.plan import RestoreSettings

    check_captions(load_manifest(args.bench), args.setting)  # before any model loads
    pipe = SpirePipeline.load(
        args.base, args.adaptor, args.components, device=args.device, dtype=getattr(torch, args.dtype)
    )
    options = SCHEDULES[args.schedule]
    written = restore_benchmark(
        pipe,
        args.bench,
        args.out,
        setting=args.setting,
        settings=RestoreSettings.from_options(args),
        scheduler_options=options,
        skip_existing=args.skip_existing,
        log=echo,
    )
    print(f"wrote {len(written)} restored images to {args.out}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from .report import markdown_table, score_benchmark

    summary = score_benchmark(
        args.bench,
        args.outputs,
        report_dir=args.report,
        lpips=args.lpips,
        fid_features=tuple(args.fid_features) if args.fid_features else None,
        resize=args.resize,
        device=args.device,
    )
    print(markdown_table(summary), end="")
    print(json.dumps({"report": args.report or args.outputs, "files": summary["files"]}))
    return 0


def _control(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .control import (
        ControlSetting,
        OracleRestorer,
        control_inputs,
        control_markdown,
        identity_restorer,
        labels_are_distinct,
        photo_crops,
        run_control,
        variant_name,
        write_control_report,
    )

    setting = ControlSetting(noise=args.noise, blur=args.blur, seed=args.seed)
    scales = list(args.restoration_scale)
    if any(not math.isfinite(w) or w < 0 for w in scales) or not labels_are_distinct(scales):
        raise ValueError(
            f"--restoration-scale {scales}: expected finite values of at least 0, distinct to 6 significant digits "
            "(the report names each run by its value)"
        )
    starts = list(args.denoise_start)
    if any(not 0 < d <= 1 for d in starts) or not labels_are_distinct(starts):  # NaN fails 0 < d
        raise ValueError(
            f"--denoise-start {starts}: expected values in (0, 1], distinct to 6 significant digits (the report names "
            "each run by its value)"
        )
    if scales != [1.0] and args.restorer != "adaptor":
        raise ValueError("--restoration-scale applies to --restorer adaptor only")
    if starts != [1.0] and args.restorer != "adaptor":
        raise ValueError("--denoise-start applies to --restorer adaptor only")
    samples = Path(__file__).resolve().parents[2] / "docs" / "samples"
    images = args.images or [str(samples / "astronaut.png"), str(samples / "coffee.png")]
    clean = photo_crops(images, args.crop, args.crops)
    if args.restorer == "identity":
        restorers = {"identity": identity_restorer}
    elif args.restorer == "oracle":
        restorers = {"oracle": OracleRestorer(control_inputs(clean, setting))}
    else:
        if not args.base or not args.adaptor:
            raise ValueError("--restorer adaptor needs --base and --adaptor (and --components for a single file)")
        from ..restoration.pipeline import SpirePipeline

        pipe = SpirePipeline.load(args.base, args.adaptor, args.components, device=args.device)

        def guided(scale: float, start: float):  # noqa: ANN202
            def restorer(degraded, prompts):  # noqa: ANN001, ANN202
                return pipe.restore(
                    degraded,
                    restoration_prompt=list(prompts),
                    steps=args.steps,
                    semantic_scale=args.semantic_scale,
                    restoration_scale=scale,
                    seed=args.seed,
                    upsample=False,
                    denoise=start,
                )

            return restorer

        restorers = {variant_name("adaptor", w, d): guided(w, d) for d in starts for w in scales}
    results = {name: run_control(restorer, clean, setting) for name, restorer in restorers.items()}
    files = write_control_report(results, args.out, command=args.command_line, images=[Path(p).name for p in images])
    print(control_markdown(results), end="")
    print(json.dumps({"files": [str(f) for f in files]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.command_line = "python -m spire_core.eval " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        commands = {"build": _build, "restore": _restore, "score": _score, "control": _control, "estimate": _estimate}
        return commands[args.command](args)
    except (BenchmarkError, FileNotFoundError, ValueError) as error:  # model-file errors are ValueErrors too
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
