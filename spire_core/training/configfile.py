"""Reading training configs: JSON or TOML files plus ``section.field=value`` command-line overrides.

The value of an override is read as JSON when it parses, else as a plain string: ``train.steps=30``,
``optim.lr=1e-4``, ``train.gradient_checkpointing=true``, ``model.components=null``,
``model.base=/models/sd15``, ``data.on_bad=error``. Relative paths in a file are resolved against the file's
folder, relative paths in overrides against the current working directory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import PATH_FIELDS, SECTIONS, ConfigError, TrainingConfig

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = None


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"train.steps=30"`` -> ``("train", "steps", 30)``; the value is JSON when it parses, else a string."""
    key, sep, raw = text.partition("=")
    if not sep or key.count(".") != 1:
        raise ConfigError(f"override {text!r} must look like section.field=value (e.g. train.steps=30)")
    section, name = (part.strip() for part in key.split("."))
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return section, name, value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The nested dict in a ``.json`` or ``.toml`` config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no config file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from None
    if suffix == ".toml":
        if tomllib is None:  # pragma: no cover - Python 3.10
            raise ConfigError(f"{path}: TOML configs need Python 3.11 or newer; use a JSON config instead")
        try:
            return tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path} is not valid TOML: {error}") from None
    raise ConfigError(f"{path}: config files must be .json or .toml; got {suffix or 'no extension'}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainingConfig:
    """Read a config file (JSON or TOML), apply ``section.field=value`` overrides, validate.

    Args:
        path: the config file; ``None``: defaults plus overrides only.
        overrides: e.g. ``["train.steps=30", "data.on_bad=error"]``; relative override paths are resolved
            against the current working directory.

    Returns:
        A validated ``TrainingConfig``.
    """
    data: dict[str, Any] = {}
    base_dir = None
    if path is not None:
        data = read_config_file(path)
        base_dir = Path(path).resolve().parent
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a table/object of sections")
        # Resolve file paths first, so overrides stay relative to the working directory.
        data = TrainingConfig.from_dict(data, base_dir=base_dir, validate=False).to_dict()
    for text in overrides:
        section, name, value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"override {text!r}: unknown section {section!r}; expected one of {list(SECTIONS)}")
        is_path = f"{section}.{name}" in PATH_FIELDS or (section, name) == ("train", "resume")
        if is_path and isinstance(value, str) and value not in ("", "latest"):
            value = str(Path(value).expanduser().resolve())
        data.setdefault(section, {})[name] = value
    return TrainingConfig.from_dict(data)
