"""Create and inspect SPIRE adaptor files.

python -m spire_core.models init --base sd15.safetensors --out models/spire/sd15_fresh.safetensors
python -m spire_core.models inspect models/spire/sd15_fresh.safetensors

``init`` writes a fresh adaptor (trunk copied from the base UNet, zero heads: an exact identity until
trained). ``inspect`` prints an adaptor's metadata and parameter counts, or says what another model file
is. Exit codes: 0 success; 1 ``inspect`` recognised a file that is not a SPIRE adaptor; 2 error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Light imports only at the top: `--help` answers without torch or diffusers; each command imports its own.
from .config import BASE_FAMILIES, FUSIONS, NUMERIC_TOKENS_DEFAULT, PREDICTION_TYPES, TEXT_ENCODER_LAYERS
from .safetensors_header import ModelFileError


def _numeric_text(config) -> str:  # noqa: ANN001 - AdaptorConfig
    if not config.numeric_tokens:
        return "no numeric channel (the prompt's numbers are read through CLIP alone)"
    return (
        f"numeric channel: {config.numeric_tokens} tokens from the parsed numbers (features version "
        f"{config.numeric_features_version})"
    )


def _trunk(value: str) -> str | int:
    """``--trunk``: a size name, or a channel count."""
    return int(value) if value.isdigit() else value


def _init(args: argparse.Namespace) -> int:
    from .adaptor import SpireAdaptor
    from .base_unet import load_base_unet
    from .checkpoint import save_adaptor

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors (the only adaptor format); got {out.name}")
    unet, info = load_base_unet(args.base, prediction_type=args.prediction_type)
    adaptor = SpireAdaptor.from_unet(
        unet,
        fusion=args.fusion,
        base_family=args.base_family or info.base_family,
        prediction_type=info.prediction_type,
        text_encoder_layer=args.text_encoder_layer,
        numeric_tokens=args.numeric_tokens,
        trunk=_trunk(args.trunk),
    )
    save_adaptor(adaptor, out, extra_metadata={"spire.init_base": Path(args.base).name})
    trunk = sum(p.numel() for p in adaptor.trunk_parameters())
    heads = sum(p.numel() for p in adaptor.head_parameters())
    numeric = sum(p.numel() for p in adaptor.numeric_parameters())
    config = adaptor.config
    print(
        f"wrote {out}: fresh SPIRE adaptor ({config.fusion} fusion, base family {config.base_family}, "
        f"{config.prediction_type}, restoration prompt from the {config.text_encoder_layer} text-encoder layer, "
        f"{adaptor.num_skips} skips + middle block, {_numeric_text(config)}, trunk {config.trunk_name})\n"
        f"parameters: trunk {trunk:,}, heads {heads:,}, numeric {numeric:,}, total {trunk + heads + numeric:,}\n"
        f"base: {args.base} ({info.source}; prediction type from {info.prediction_type_source})\n"
        "status: UNTRAINED until trained (docs/training.md): an exact identity that ignores the photo"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .checkpoint import TRAINING_STEP_KEY, adaptor_parameter_counts, read_adaptor_file, untrained_reason
    from .ldm import LDM_UNET_PREFIX
    from .safetensors_header import (
        SD_CHECKPOINT,
        SPIRE_ADAPTOR,
        WHERE_FILES_GO,
        AdaptorFileError,
        identify,
        read_safetensors_header,
    )

    header = read_safetensors_header(args.file, error=AdaptorFileError)
    kind, description = identify(header)
    if kind != SPIRE_ADAPTOR:
        lines = [f"{header.path} is {description}, not a SPIRE adaptor."]
        lines.append(f"tensors: {len(header.tensors)}, parameters: {header.parameter_count():,}")
        if kind == SD_CHECKPOINT:
            lines.append(f"UNet parameters: {header.parameter_count(LDM_UNET_PREFIX):,}")
            lines.append("Initialise an adaptor from it with: python -m spire_core.models init --base FILE --out ...")
        lines.append(WHERE_FILES_GO)
        print("\n".join(lines))
        return 1
    config, state = read_adaptor_file(header.path)  # validated, and every value finite
    untrained = untrained_reason(config, state, header.metadata)
    counts = adaptor_parameter_counts(header.shapes())
    print(f"{header.path}: SPIRE adaptor, {len(header.tensors)} tensors, {header.file_size:,} bytes")
    for key in sorted(header.metadata):
        value = header.metadata[key]
        if key.endswith("controlnet_config"):
            value = json.dumps(json.loads(value), sort_keys=True)
        print(f"  {key}: {value}")
    print(f"skips modulated: {config.num_skips} + middle block ({config.fusion}); trunk {config.trunk_name}")
    print(f"restoration prompt: {config.text_encoder_layer} text-encoder layer, {_numeric_text(config)}")
    print(
        f"parameters: trunk {counts['trunk']:,}, heads {counts['heads']:,}, numeric {counts['numeric']:,}, "
        f"total {counts['total']:,}"
    )
    step = header.metadata.get(TRAINING_STEP_KEY)
    print(f"status: UNTRAINED, {untrained}" if untrained else f"status: trained (step {step or 'not recorded'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 ``inspect`` of a non-adaptor file, 2 error)."""
    parser = argparse.ArgumentParser(prog="python -m spire_core.models", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="write a fresh adaptor initialised from a base model's UNet")
    init.add_argument(
        "--base", required=True, help="SD1.x/SD2.x/SDXL checkpoint: single .safetensors file or diffusers folder"
    )
    init.add_argument("--out", required=True, help="adaptor file to write (.safetensors)")
    init.add_argument("--fusion", choices=FUSIONS, default="modulation", help="modulation (SPIRE) or additive")
    init.add_argument(
        "--prediction-type", choices=PREDICTION_TYPES, help="override detection (SD2 768-v: v_prediction)"
    )
    init.add_argument("--base-family", choices=BASE_FAMILIES, help="override family detection")
    init.add_argument("--text-encoder-layer", choices=TEXT_ENCODER_LAYERS, help="default: family's (SD2 penultimate)")
    init.add_argument(
        "--numeric-tokens",
        type=int,
        default=NUMERIC_TOKENS_DEFAULT,
        help=f"tokens of the numeric side channel (default {NUMERIC_TOKENS_DEFAULT}; 0: CLIP only)",
    )
    init.add_argument(
        "--trunk",
        default="full",
        help="trunk width: full (the paper's copy of the encoder), half, quarter, or a first-level channel count "
        "(a multiple of 32 for Stable Diffusion bases); narrower trunks train on smaller GPUs "
        "(docs/training.md, Memory)",
    )
    init.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    inspect = commands.add_parser("inspect", help="print an adaptor's metadata and parameter counts")
    inspect.add_argument("file", help="a .safetensors file")
    args = parser.parse_args(argv)
    try:
        return _init(args) if args.command == "init" else _inspect(args)
    except (ModelFileError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
