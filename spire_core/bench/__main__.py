"""Performance benchmarks; each writes a JSON result.

python -m spire_core.bench degradation [--device cpu|cuda] [--batch 16] [--size 512] [--out results/]
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
    args = parser.parse_args(argv)

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
