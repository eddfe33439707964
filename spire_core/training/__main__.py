"""Command line for SPIRE adaptor training.

    python -m spire_core.training --config train.toml [--resume latest|CHECKPOINT] [section.field=value ...]
    accelerate launch [--multi_gpu --num_processes N ...] -m spire_core.training --config train.toml
    python -m spire_core.training export CHECKPOINT --out adaptor.safetensors [--weights ema|raw]
    python -m spire_core.training show-config [--config train.toml] [section.field=value ...]
    python -m spire_core.training write-tiny-base FOLDER [--family sd1|sd2]

Exit codes: 0 success; 2 a configuration, data, model-file or checkpoint error (the message says what to fix).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .config import ConfigError
from .configfile import load_config

_COMMANDS = ("export", "show-config", "write-tiny-base")


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spire_core.training",
        description="Train a SPIRE adaptor. Other commands: " + ", ".join(_COMMANDS) + " (see --help of each).",
    )
    parser.add_argument("--config", required=True, help="training config (.toml or .json); see docs/training.md")
    parser.add_argument(
        "--resume",
        default=None,
        metavar="latest|CHECKPOINT",
        help="continue from the newest checkpoint in train.output_dir ('latest') or from a checkpoint folder",
    )
    parser.add_argument("overrides", nargs="*", help="section.field=value, e.g. train.steps=30 optim.lr=1e-4")
    return parser


def _setup_logging() -> None:
    main = os.environ.get("RANK", "0") in ("", "0")
    logging.basicConfig(
        level=logging.INFO if main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _train(argv: list[str]) -> int:
    args = _train_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"train.resume={args.resume}")
    config = load_config(args.config, overrides)
    from .trainer import run_training

    trainer = run_training(config)
    last = trainer.history[-1] if trainer.history else None
    if trainer.is_main:
        print(json.dumps({"step": trainer.step, "last": last, "output_dir": str(trainer.output_dir)}))
    return 0


def _export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m spire_core.training export")
    parser.add_argument("checkpoint", help="a checkpoint folder (output_dir/checkpoints/step-XXXXXXXX)")
    parser.add_argument("--out", required=True, help="the adaptor .safetensors to write")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema")
    args = parser.parse_args(argv)
    from .checkpoints import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, args.weights)
    print(f"wrote {path} ({args.weights} weights of {args.checkpoint})")
    return 0


def _show_config(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m spire_core.training show-config")
    parser.add_argument("--config", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    from .config import SECTIONS
    from .configfile import config_from_dict

    if args.config is None:
        # Defaults only: show them even though model.base and data.folder are still empty.
        data = config_from_dict({}, validate=False).to_dict()
        print(json.dumps({name: data[name] for name in SECTIONS}, indent=2))
        return 0
    print(json.dumps(load_config(args.config, args.overrides).to_dict(), indent=2))
    return 0


def _write_tiny_base(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m spire_core.training write-tiny-base")
    parser.add_argument("folder")
    parser.add_argument("--family", choices=("sd1", "sd2"), default="sd1")
    parser.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default="epsilon")
    args = parser.parse_args(argv)
    from .tiny import write_tiny_base

    print(f"wrote {write_tiny_base(args.folder, args.family, args.prediction_type)} (tiny random weights)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    from ..models import ModelFileError
    from .checkpoints import CheckpointError
    from .data import DataError
    from .trainer import TrainingDiverged

    commands = {"export": _export, "show-config": _show_config, "write-tiny-base": _write_tiny_base}
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return _train(argv)
    except (
        ConfigError,
        DataError,
        ModelFileError,
        CheckpointError,
        FileExistsError,
        TrainingDiverged,
        ValueError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
