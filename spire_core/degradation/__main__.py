"""Degrade an image with SPIRE's pipeline and print the restoration prompt it implies.

python -m spire_core.degradation --image docs/samples/astronaut.png --seed 0 --out degraded.png
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..imageio import load_image, save_image
from . import DEFAULT_PRESET, PRESETS, degrade, get_preset, manual_params, sample_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spire_core.degradation", description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="clean input image (any format Pillow reads)")
    parser.add_argument("--out", help="where to write the degraded image (PNG recommended)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=[*PRESETS, "manual"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blur-sigma", type=float, default=0.0, help="manual: Gaussian blur sigma in px")
    parser.add_argument("--downscale", type=float, default=1.0, help="manual: shrink factor (then back up)")
    parser.add_argument("--noise-sigma", type=float, default=0.0, help="manual: Gaussian noise sigma, [0, 1] scale")
    parser.add_argument("--jpeg-quality", type=int, default=0, help="manual: JPEG quality (0 = off)")
    parser.add_argument("--params-out", help="write the drawn params as JSON here")
    args = parser.parse_args(argv)

    image = load_image(args.image)
    if args.preset == "manual":
        params = [
            manual_params(
                blur_sigma=args.blur_sigma,
                downscale=args.downscale,
                noise_sigma=args.noise_sigma,
                jpeg_quality=args.jpeg_quality,
                seed=args.seed,
            )
        ]
    else:
        params = sample_params(get_preset(args.preset), torch.Generator().manual_seed(args.seed), 1)
    result = degrade(image, params)
    if args.out:
        save_image(result.images, args.out)
    if args.params_out:
        with open(args.params_out, "w", encoding="utf-8") as f:
            json.dump(params[0].to_dict(), f, indent=2)
    sys.stdout.write(result.prompts()[0] + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
