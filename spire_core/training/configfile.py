"""Reading training configs: JSON or TOML files plus ``section.field=value`` command-line overrides, turned
into the section dataclasses of ``config`` with every value checked against its field's type.

The value of an override is read as JSON when it parses, else as a plain string: ``train.steps=30``,
``optim.lr=1e-4``, ``train.gradient_checkpointing=true``, ``model.components=null``,
``model.base=/models/sd15``, ``data.on_bad=error``. Relative paths in a file are resolved against the file's
folder, relative paths in overrides against the current working directory.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import fields
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


def config_from_dict(
    data: Mapping[str, Any], base_dir: str | Path | None = None, validate: bool = True
) -> TrainingConfig:
    """Build (and validate) a ``TrainingConfig`` from nested dicts (as read from JSON/TOML).

    Args:
        data: ``{"model": {...}, "train": {...}, ...}``; missing sections and fields take their defaults.
        base_dir: relative paths are resolved against it (``None``: left as given).
        validate: run ``check`` (off while overrides are still to come).

    Raises:
        ConfigError: an unknown section or field, or a value of the wrong type.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a training config must be a table/object of sections; got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config sections {unknown}; expected some of {list(SECTIONS)}")
    sections = {}
    for name, section_cls in SECTIONS.items():
        raw = data.get(name, {})
        if not isinstance(raw, Mapping):
            raise ConfigError(f"config section [{name}] must be a table/object; got {type(raw).__name__}")
        sections[name] = _build_section(name, section_cls, raw)
    config = TrainingConfig(**sections)
    if base_dir is not None:
        for dotted in PATH_FIELDS:
            _resolve_path(config, dotted, Path(base_dir))
        if config.train.resume not in (None, "latest"):
            config.train.resume = str(Path(base_dir) / Path(config.train.resume).expanduser())
    return config.check() if validate else config


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
        data = config_from_dict(data, base_dir=base_dir, validate=False).to_dict()
    for text in overrides:
        section, name, value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"override {text!r}: unknown section {section!r}; expected one of {list(SECTIONS)}")
        is_path = f"{section}.{name}" in PATH_FIELDS or (section, name) == ("train", "resume")
        if is_path and isinstance(value, str) and value not in ("", "latest"):
            value = str(Path(value).expanduser().resolve())
        data.setdefault(section, {})[name] = value
    return config_from_dict(data)


def _resolve_path(config: TrainingConfig, dotted: str, base_dir: Path) -> None:
    section, name = dotted.split(".")
    value = getattr(getattr(config, section), name)
    if value:
        setattr(getattr(config, section), name, str(base_dir / Path(value).expanduser()))


def _coerce(where: str, annotation: Any, value: Any) -> Any:
    """Check ``value`` against a field's type annotation (ints widen to floats); raise ``ConfigError``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(where, option, value)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {annotation}")
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table/object; got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer; got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number; got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string; got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {annotation}")  # pragma: no cover


def _build_section(name: str, section_cls: type, raw: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(section_cls)
    known = [f.name for f in fields(section_cls)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown fields {unknown} in [{name}]; accepted: {known}")
    values = {key: _coerce(f"{name}.{key}", hints[key], value) for key, value in raw.items()}
    return section_cls(**values)
