"""Performance benchmarks; each writes a JSON result.

python -m spire_core.bench degradation [--device cpu|cuda] [--batch 16] [--size 512] [--out results/]
python -m spire_core.bench sampling [--device cpu|cuda] [--batches 1,2] [--repeats 3] [--dtype float32] [--latent 64]
python -m spire_core.bench training [--device cpu|cuda] [--sizes tiny,sd15] [--batch 1] [--steps 3] [--precision fp32]
python -m spire_core.bench gpu [--out results/] [--budget 480] [--comfyui DIR] [--wheels DIR] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import write_result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spire_core.bench")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    deg = sub.add_parser("degradation", help="batched torch degradation vs a per-image reference")
    deg.add_argument("--device", default="cpu")
    deg.add_argument("--batch", type=int, default=16)
    deg.add_argument("--size", type=int, default=512)
    deg.add_argument("--preset", default="paper")
    deg.add_argument("--seed", type=int, default=0)
    deg.add_argument("--repeats", type=int, default=5)
    deg.add_argument("--no-reference", action="store_true", help="time only the torch pipeline (e.g. on a GPU)")
    deg.add_argument("--out", default=None, help="results folder (default: the repository's results/)")
    smp = sub.add_parser("sampling", help="per-step time and peak memory: bare UNet, + ControlNet, + SPIRE adaptor")
    smp.add_argument("--device", default="cpu")
    smp.add_argument("--batches", default="1,2")
    smp.add_argument("--repeats", type=int, default=3)
    smp.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    smp.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px)")
    smp.add_argument("--inner", type=int, default=1, help="steps per timed sample")
    smp.add_argument("--size", default="sd15", choices=("sd15", "tiny", "sdxl", "tiny_sdxl"))
    smp.add_argument("--trunk", default="full", help="SPIRE adaptor width: full, half, quarter")
    smp.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory processes")
    smp.add_argument("--out", default=None, help="results folder (default: the repository's results/)")
    trn = sub.add_parser("training", help="training step: SPIRE adaptor vs plain diffusers ControlNet, same trunk")
    trn.add_argument("--device", default="cpu")
    trn.add_argument(
        "--sizes", default=None, help="comma-separated sizes (default: tiny,sd15; with --project: sd15,sdxl)"
    )
    trn.add_argument("--batch", type=int, default=1)
    trn.add_argument("--steps", type=int, default=3)
    trn.add_argument("--no-memory", action="store_true", help="skip the per-candidate peak-memory subprocesses")
    trn.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    trn.add_argument("--gradient-checkpointing", action="store_true", help="checkpoint trunk and UNet (both)")
    trn.add_argument("--latent", type=int, default=None, help="latent side for every size (default: the size's)")
    trn.add_argument(
        "--project",
        action="store_true",
        help="project peak training memory per base and trunk size (--sizes sd15,sdxl; measured at --latent, 16)",
    )
    trn.add_argument("--trunks", default="full,half,quarter", help="trunk sizes for --project")
    gpu = sub.add_parser("gpu", help="the whole GPU proof: tests on CUDA, throughput, sampling and training cost")
    gpu.add_argument("--out", default=None, help="results folder (default: the repository's results/)")
    gpu.add_argument("--budget", type=float, default=480.0, help="seconds for all sections together")
    gpu.add_argument("--comfyui", default=None, help="ComfyUI checkout (default: found like the tests find it)")
    gpu.add_argument("--wheels", default=None, help="folder of wheels to install where a package is missing")
    gpu.add_argument("--tiny", action="store_true", help="toy shapes, seconds: checks the script itself")
    trn.add_argument("--out", default=None, help="results folder (default: the repository's results/)")
    args = parser.parse_args(argv)

    if args.benchmark == "gpu":
        from .gpu import run as run_gpu

        return run_gpu(out=args.out, budget=args.budget, comfyui=args.comfyui, wheels=args.wheels, tiny=args.tiny)

    if args.benchmark == "training" and args.project:
        from .projection import project

        sizes = tuple((args.sizes or "sd15,sdxl").split(","))
        result = project(sizes=sizes, trunks=tuple(args.trunks.split(",")), latent=args.latent or 16)
        path = write_result("training-memory-projection", result, args.out)
        sys.stdout.write(json.dumps(result, indent=2) + f"\nwrote {path}\n")
        return 0

    if args.benchmark == "training":
        from .training import run as run_training

        result = run_training(
            sizes=tuple((args.sizes or "tiny,sd15").split(",")),
            batch=args.batch,
            steps=args.steps,
            device=args.device,
            memory=not args.no_memory,
            precision=args.precision,
            gradient_checkpointing=args.gradient_checkpointing,
            latent=args.latent,
        )
        path = write_result(f"training-{args.device.split(':')[0]}", result, args.out)
        sys.stdout.write(json.dumps(result, indent=2) + f"\nwrote {path}\n")
        return 0

    if args.benchmark == "sampling":
        from .sampling import run as run_sampling

        batches = tuple(int(b) for b in args.batches.split(","))
        result = run_sampling(
            device=args.device,
            batches=batches,
            repeats=args.repeats,
            dtype=args.dtype,
            latent=args.latent,
            inner=args.inner,
            size=args.size,
            memory=not args.no_memory,
            trunk=args.trunk,
        )
        name = "sampling" if args.size == "sd15" and args.trunk == "full" else f"sampling-{args.size}-{args.trunk}"
        path = write_result(f"{name}-{args.device.split(':')[0]}", result, args.out)
        sys.stdout.write(json.dumps(result, indent=2) + f"\nwrote {path}\n")
        return 0

    if args.benchmark == "degradation":
        from .degradation import run

        result = run(
            batch=args.batch,
            size=args.size,
            preset=args.preset,
            seed=args.seed,
            repeats=args.repeats,
            device=args.device,
            reference=not args.no_reference,
        )
        name = f"degradation-{result['machine']['device'].split(':')[0]}"
    path = write_result(name, result, args.out)
    sys.stdout.write(json.dumps(result, indent=2) + f"\nwrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
