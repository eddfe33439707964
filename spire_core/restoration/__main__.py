"""The main job from a terminal: restore a photo with a base Stable Diffusion model and a SPIRE adaptor.

    python -m spire_core.restoration --image docs/samples/astronaut.png --out restored.png \\
        --base ../../models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors \\
        --components ../../models/diffusers/stable-diffusion-v1-5 \\
        --adaptor ../../models/spire/spire_sd15.safetensors \\
        [--semantic "a photo of an astronaut"] [--restoration "Remove all degradation"] [--steps 50] [--seed 0]

``--base`` is a single-file SD1.x/SD2.x/SDXL checkpoint or a diffusers folder; a single file needs
``--components``, a diffusers folder of the same model for the VAE, text encoder and tokenizer (a single
file lacks the tokenizer's vocabulary and the configurations, and nothing is downloaded). Run from the pack's
folder, ``ComfyUI/custom_nodes/spire_restoration``, ComfyUI's models are under ``../../models``. The
defaults come from the environment (``SPIRE_BASE``, ``SPIRE_COMPONENTS``, ``SPIRE_ADAPTOR``). When a file
is missing the command says which file goes where and exits with status 2; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..models.prompt_windows import parse_weights
from .plan import RestoreSettings

WHAT_GOES_WHERE = """\
To restore, SPIRE needs two things on disk (nothing is downloaded):
  1. the base Stable Diffusion 1.x/2.x model the adaptor was trained from:
     --base      a single .safetensors checkpoint (e.g. ComfyUI/models/checkpoints/v1-5-pruned-emaonly-fp16.safetensors)
                 or a diffusers folder (with unet/, vae/, text_encoder/, tokenizer/);
     --components  for a single-file --base: the diffusers folder of the same model (vae/, text_encoder/, tokenizer/);
                 a single file lacks the tokenizer's vocabulary and the configurations, and nothing is downloaded
  2. a SPIRE adaptor (.safetensors) trained for that base: --adaptor (e.g. ComfyUI/models/spire/spire_sd15.safetensors);
     train one with `python -m spire_core.training --config train.toml` (docs/training.md).
The same can be given as SPIRE_BASE, SPIRE_COMPONENTS and SPIRE_ADAPTOR in the environment."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spire_core.restoration", description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="the degraded photo (PNG/JPEG/...)")
    parser.add_argument("--out", required=True, help="where to write the restored PNG")
    parser.add_argument("--base", default=os.environ.get("SPIRE_BASE"), help="base model file or diffusers folder")
    parser.add_argument(
        "--components",
        default=os.environ.get("SPIRE_COMPONENTS"),
        help="diffusers folder with vae/, text_encoder/, tokenizer/ (for a single-file --base)",
    )
    parser.add_argument("--adaptor", default=os.environ.get("SPIRE_ADAPTOR"), help="SPIRE adaptor .safetensors")
    parser.add_argument("--semantic", default="", help="semantic prompt (what the photo shows); empty = blind")
    parser.add_argument(
        "--restoration",
        default="Remove all degradation",
        help="restoration prompt; 'auto': the prompt suggested from the photo itself (spire_core.estimate)",
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--semantic-scale", type=float, default=5.0)
    parser.add_argument("--restoration-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--color-fix", choices=("none", "wavelet", "adain"), default="none")
    parser.add_argument("--sampler", choices=("ddim", "euler"), default="ddim")
    parser.add_argument("--denoise", type=float, default=1.0, help="1: pure noise (the paper)")
    parser.add_argument("--tile-size", type=int, default=0, help="pixels per tile for large photos (0: whole image)")
    parser.add_argument("--tile-overlap", type=int, default=64, help="pixels neighbouring tiles share, blended")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    return parser


AUTO_RESTORATION = "auto"
"""``--restoration auto``: read the degradation off the photo and restore with the prompt that names it."""


def auto_restoration(image: str) -> str:
    """The restoration prompt suggested for the photo at ``image`` (blind when it reads as clean), printed."""
    from ..estimate import suggest_for_file
    from ..prompt import BLIND_PROMPT

    prompt, estimates = suggest_for_file(image)
    print(f"suggested restoration prompt: {prompt or BLIND_PROMPT + ' (nothing confidently degraded)'}")
    print(estimates.summary())
    return prompt or BLIND_PROMPT


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def missing_inputs(base: str | None, components: str | None, adaptor: str | None) -> list[str]:
    """What is missing for a restoration, as sentences (empty when everything is there)."""
    problems = []
    if not base:
        problems.append("no base model given (--base or SPIRE_BASE)")
    elif not Path(base).exists():
        problems.append(f"base model {base} does not exist")
    elif Path(base).is_file() and not components:
        problems.append(f"{base} is a single file: give --components, the diffusers folder of the same model")
    if components and not Path(components).is_dir():
        problems.append(f"components folder {components} does not exist")
    if not adaptor:
        problems.append("no SPIRE adaptor given (--adaptor or SPIRE_ADAPTOR)")
    elif not Path(adaptor).is_file():
        problems.append(f"adaptor {adaptor} does not exist")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 on success, 2 when inputs are missing or invalid."""
    args = _parser().parse_args(argv)
    if not Path(args.image).is_file():
        print(f"error: image {args.image} does not exist", file=sys.stderr)
        return 2
    if args.restoration.strip().lower() == AUTO_RESTORATION:
        args.restoration = auto_restoration(args.image)
    settings = RestoreSettings.from_options(args)
    try:
        settings.validate()  # before any model loads (the pipeline checks again against its VAE)
        parse_weights(args.semantic)  # a prompt ComfyUI's reader would refuse, before any model loads
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    problems = missing_inputs(args.base, args.components, args.adaptor)
    if problems:
        print("cannot restore yet: " + "; ".join(problems) + ".\n\n" + WHAT_GOES_WHERE, file=sys.stderr)
        return 2
    from ..imageio import load_image, save_image
    from ..models import ModelFileError, read_safetensors_header
    from ..models.checkpoint import untrained_reason
    from .pipeline import SpirePipeline

    try:
        pipe = SpirePipeline.load(args.base, args.adaptor, components=args.components, device=args.device)
        untrained = untrained_reason(
            pipe.adaptor.config, pipe.adaptor.file_state_dict(), read_safetensors_header(args.adaptor).metadata
        )
        if untrained:
            print(f"warning: {args.adaptor} is {untrained}", file=sys.stderr)
        restored = pipe.restore(load_image(args.image), args.semantic, args.restoration, settings=settings)
    except (ModelFileError, ValueError, OSError) as error:
        print(f"error: {error}\n\n{WHAT_GOES_WHERE}", file=sys.stderr)
        return 2
    save_image(restored, args.out)
    print(f"wrote {args.out} ({restored.shape[-1]}x{restored.shape[-2]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
