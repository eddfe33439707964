"""Command line for SPIRE evaluation (docs/evaluation.md).

    python -m spire_core.eval build --images DIR [--captions captions.json] [--seed 0] [--preset paper]
                                    [--size 512] --out BENCH
    python -m spire_core.eval restore --bench BENCH --base MODEL --adaptor ADAPTOR [--components FOLDER]
                                      --out OUT [--setting full|blind|semantic|restoration] [--steps 50]
                                      [--sampler ddim|euler] [--schedule base|comfyui-simple|...] ...
    python -m spire_core.eval score --bench BENCH --outputs OUT [--report DIR] [--lpips lpips_alex.safetensors]
                                    [--fid-features CLEAN RESTORED] [--resize]

Exit codes: 0 success; 2 a benchmark, model-file or weights error (the message says what to fix).
"""

from __future__ import annotations

import argparse
import json
import sys

from .benchmark import SETTINGS, BenchmarkError, build_benchmark, restore_benchmark

_DTYPES = ("float32", "float16", "bfloat16")
SCHEDULES = {
    "base": None,
    "comfyui-simple": {"timestep_spacing": "trailing", "set_alpha_to_one": True},
    "leading": {"timestep_spacing": "leading"},
    "trailing": {"timestep_spacing": "trailing"},
    "linspace": {"timestep_spacing": "linspace"},
}
"""``--schedule`` -> ``scheduler_options`` of ``SpirePipeline.restore``; ``comfyui-simple`` equals
``spire_core.pipeline.COMFY_SIMPLE_SCHEDULE`` (not imported here: loading the pipeline is slow, build and score
do not need it; a test keeps them equal)."""


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
    return parser


def _build(args: argparse.Namespace) -> int:
    manifest = build_benchmark(args.images, args.out, args.captions, args.seed, args.preset, args.size, log=print)
    print(f"wrote {len(manifest.images)} images and manifest.json to {args.out}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    import torch

    from ..pipeline import SpirePipeline

    pipe = SpirePipeline.load(
        args.base, args.adaptor, args.components, device=args.device, dtype=getattr(torch, args.dtype)
    )
    options = SCHEDULES[args.schedule]
    written = restore_benchmark(
        pipe,
        args.bench,
        args.out,
        setting=args.setting,
        steps=args.steps,
        semantic_scale=args.semantic_scale,
        restoration_scale=args.restoration_scale,
        seed=args.seed,
        strength=args.strength,
        sampler=args.sampler,
        color_fix=args.color_fix,
        scheduler_options=options,
        skip_existing=args.skip_existing,
        log=print,
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"build": _build, "restore": _restore, "score": _score}[args.command](args)
    except (BenchmarkError, FileNotFoundError, ValueError) as error:  # model-file errors are ValueErrors too
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
