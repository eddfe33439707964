"""Performance benchmarks; each writes a JSON result.

python -m spire_core.bench degradation [--device cpu|cuda] [--batch 16] [--size 512] [--out results/]
python -m spire_core.bench sampling [--device cpu|cuda] [--batches 1,2] [--repeats 3] [--dtype float32]
python -m spire_core.bench training [--device cpu|cuda] [--sizes tiny,sd15] [--batch 1] [--steps 3]
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
    smp.add_argument("--out", default=None, help="results folder (default: the repository's results/)")
    trn = sub.add_parser("training", help="training step: SPIRE adaptor vs plain diffusers ControlNet, same trunk")
    trn.add_argument("--device", default="cpu")
    trn.add_argument("--sizes", default="tiny,sd15")
    trn.add_argument("--batch", type=int, default=1)
    trn.add_argument("--steps", type=int, default=3)
    trn.add_argument("--no-memory", action="store_true", help="skip the per-candidate peak-memory subprocesses")
    trn.add_argument("--out", default=None, help="results folder (default: the repository's results/)")
    args = parser.parse_args(argv)

    if args.benchmark == "training":
        from .training import run as run_training

        result = run_training(
            sizes=tuple(args.sizes.split(",")),
            batch=args.batch,
            steps=args.steps,
            device=args.device,
            memory=not args.no_memory,
        )
        path = write_result(f"training-{args.device.split(':')[0]}", result, args.out)
        sys.stdout.write(json.dumps(result, indent=2) + f"\nwrote {path}\n")
        return 0

    if args.benchmark == "sampling":
        from .sampling import run as run_sampling

        batches = tuple(int(b) for b in args.batches.split(","))
        result = run_sampling(device=args.device, batches=batches, repeats=args.repeats, dtype=args.dtype)
        path = write_result(f"sampling-{args.device.split(':')[0]}", result, args.out)
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
