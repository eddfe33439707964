"""The one on-disk adaptor format: ``.safetensors`` with diffusers ``ControlNetModel`` keys plus SPIRE heads.

Keys: the ``ControlNetModel`` state-dict keys without prefix (``conv_in.weight``,
``controlnet_cond_embedding.conv_in.weight``, ``time_embedding.linear_1.weight``, ``down_blocks.0...``,
``mid_block...``; ``controlnet_down_blocks.*`` and ``controlnet_mid_block.*`` only for additive fusion)
plus, for modulation fusion, ``spire_gamma_down.{j}.weight|bias``, ``spire_beta_down.{j}.weight|bias``,
``spire_gamma_mid.weight|bias`` and ``spire_beta_mid.weight|bias``. Metadata (strings): ``format: pt`` and
the ``spire.*`` keys of ``AdaptorConfig.to_metadata``. Reading validates everything against the config
before any tensor is loaded.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import stat
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from .config import HEAD_PREFIX, NUMERIC_NAME, AdaptorConfig, infer_base_family
from .file_layout import adaptor_file_shapes
from .safetensors_header import (
    FLOAT_DTYPES,
    SD_CHECKPOINT,
    SPIRE_ADAPTOR,
    WHERE_FILES_GO,
    AdaptorFileError,
    SafetensorsHeader,
    identify,
    read_safetensors_header,
)

if TYPE_CHECKING:
    from .adaptor import SpireAdaptor

_LISTED = 5  # how many offending keys an error message names
_NUMERIC_PREFIX = f"{HEAD_PREFIX}{NUMERIC_NAME}."


def save_adaptor(
    adaptor: SpireAdaptor, path: str | os.PathLike, extra_metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``adaptor`` atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        adaptor: the adaptor; tensors are written in their current dtype.
        path: destination ``.safetensors`` file.
        extra_metadata: more string metadata (e.g. training step); may not override ``format`` or ``spire.*``
            keys written from the config.

    Returns:
        The path written.

    Raises:
        AdaptorFileError: a weight is NaN or Inf (nothing is written: no one could load it).
    """
    path = Path(path)
    metadata = {"format": "pt", **adaptor.config.to_metadata()}
    for key, value in (extra_metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"extra_metadata must map str to str; got {key!r}: {type(value).__name__}")
        if key in metadata:
            raise ValueError(f"extra_metadata may not override {key!r} (it is written from the adaptor's config)")
        metadata[key] = value
    tensors = {key: value.detach().contiguous().cpu() for key, value in adaptor.file_state_dict().items()}
    try:
        check_finite(tensors, path)
    except AdaptorFileError as error:  # refuse to write what no one could load
        raise AdaptorFileError(f"not writing the adaptor: {error}".replace(" holds ", " would hold ")) from None
    return write_safetensors(tensors, path, metadata)


def write_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str]
) -> Path:
    """Write a safetensors file whole or not at all: into a temporary file beside ``path``, flushed to disk, then
    moved into place (``os.replace``), so an interrupted write never leaves a partial file under the final name. The
    file gets the permissions of any new file (0666 less the umask). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = str(path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp")
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies, as for open()
    try:
        mode = stat.S_IMODE(os.stat(temporary).st_mode)
        save_file(dict(tensors), temporary, metadata=dict(metadata))
        os.chmod(temporary, mode)  # safetensors writes its files 0600
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def expected_file_shapes(config: AdaptorConfig) -> dict[str, tuple[int, ...]]:
    """File key -> tensor shape of an adaptor with this config (``file_layout``: arithmetic, no diffusers)."""
    return adaptor_file_shapes(config)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LISTED])
    return shown + (f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else "")


def validate_adaptor_header(header: SafetensorsHeader) -> AdaptorConfig:
    """Check a parsed header is a SPIRE adaptor consistent with its own metadata; no tensor is read.

    Returns:
        The adaptor's config.

    Raises:
        AdaptorFileError: saying what the file is, what was expected and where the right file goes.
    """
    kind, description = identify(header)
    if kind != SPIRE_ADAPTOR:
        advice = {
            SD_CHECKPOINT: "Load it with the checkpoint loader; a SPIRE adaptor is trained from it (or initialised "
            "with `python -m spire_core.models init --base <checkpoint> --out adaptor.safetensors`).",
        }.get(kind, "")
        raise AdaptorFileError(
            f"{header.path} is {description}, not a SPIRE adaptor: a SPIRE adaptor is a .safetensors file with "
            f"spire.* metadata and SPIRE modulation heads. {advice} {WHERE_FILES_GO}".replace("  ", " ")
        )
    try:
        config = AdaptorConfig.from_metadata(header.metadata)
    except (ValueError, TypeError) as error:
        raise AdaptorFileError(f"{header.path} has invalid SPIRE metadata: {error}") from None
    expected = expected_file_shapes(config)
    found = header.shapes()
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = [f"missing {len(missing)} keys ({_listing(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected keys ({_listing(unexpected)})"] if unexpected else []
        raise AdaptorFileError(
            f"{header.path} does not match its own SPIRE metadata (fusion={config.fusion}, base_family="
            f"{config.base_family}): {'; '.join(parts)}. The file is damaged or was written by an incompatible tool."
        )
    wrong = [f"{key}: file {found[key]}, expected {expected[key]}" for key in expected if found[key] != expected[key]]
    if wrong:
        raise AdaptorFileError(
            f"{header.path} has {len(wrong)} tensors whose shape does not match its SPIRE metadata: "
            f"{_listing(wrong)}. The file is damaged or was written by an incompatible tool."
        )
    not_float = [key for key, info in header.tensors.items() if info["dtype"] not in FLOAT_DTYPES]
    if not_float:
        raise AdaptorFileError(f"{header.path} has non-floating-point weights: {_listing(not_float)}")
    return config


def read_adaptor_file(path: str | os.PathLike) -> tuple[AdaptorConfig, dict[str, torch.Tensor]]:
    """Validate a SPIRE adaptor file, then load its tensors (on the CPU, in the stored dtypes).

    Validation happens on the header alone, before any tensor is read: the file must be safetensors (not a
    pickle, not truncated), carry ``spire.*`` metadata of a supported format version, and hold exactly the
    keys and shapes its config implies, all floating point. Then every tensor must be finite (``check_finite``).

    Returns:
        (config, state dict with file key names).

    Raises:
        AdaptorFileError: saying what the file is, what was expected and where the right file goes.
    """
    header = read_safetensors_header(path, error=AdaptorFileError)
    config = validate_adaptor_header(header)
    state = load_file(str(header.path))
    check_finite(state, header.path)
    return config, state


def non_finite(tensors: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Name -> how many NaN or Inf values, for each floating-point tensor that holds any (what a diverged training
    run leaves in its weights); empty when every value is finite."""
    return {
        key: int((~torch.isfinite(t)).sum())
        for key, t in tensors.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    }


def check_finite(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raise ``AdaptorFileError`` if any tensor holds NaN or Inf (what a diverged training run exports).

    Args:
        state: file key -> tensor.
        path: the file, for the message.
    """
    bad = non_finite(state)
    if bad:
        total = sum(bad.values())
        raise AdaptorFileError(
            f"{path} holds {total:,} NaN or Inf values in {len(bad)} of its {len(state)} tensors "
            f"({_listing(sorted(bad))}): the training run that made it diverged, and it cannot restore anything "
            "(it would return black images). Use an earlier checkpoint of that run (python -m spire_core.training "
            "export), or train again with a lower learning rate or bf16 instead of fp16."
        )


TRAINING_STEP_KEY = "spire.train.step"
"""Metadata key the trainer's exports carry (the optimiser step); ``models init`` files have none."""


def untrained_reason(config: AdaptorConfig, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """``""`` for an adaptor that acts on the model, else why it is an exact identity (``models init`` writes one):
    every tensor that feeds the UNet (modulation heads; additive zero convolutions) is zero.

    Args:
        config: the adaptor's config.
        state: file key -> tensor.
        metadata: the file's metadata (for the training step).
    """
    if config.fusion == "modulation":
        outputs = [t for k, t in state.items() if k.startswith(HEAD_PREFIX) and not k.startswith(_NUMERIC_PREFIX)]
        what = "modulation heads"
    else:
        outputs = [t for k, t in state.items() if k.startswith(("controlnet_down_blocks.", "controlnet_mid_block."))]
        what = "output convolutions"
    if any(bool(t.any()) for t in outputs):
        return ""
    step = metadata.get(TRAINING_STEP_KEY)
    origin = "no training step in its metadata" if step is None else f"exported at training step {step}"
    return (
        f"untrained: its {what} are all zero ({origin}), so it is an exact identity: restoring with it returns "
        "what the base model makes from the semantic prompt alone, and ignores the photo and the restoration "
        "prompt. Restoring photos needs a trained adaptor (docs/training.md)."
    )


def load_adaptor(
    path: str | os.PathLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> SpireAdaptor:
    """Validate and load a SPIRE adaptor file.

    Args:
        path: the ``.safetensors`` adaptor.
        device: where to put it (default CPU).
        dtype: floating dtype to cast to (default: as stored).

    Returns:
        The ``SpireAdaptor`` in eval mode.
    """
    from .adaptor import SpireAdaptor  # diffusers: imported only to build a model

    config, state = read_adaptor_file(path)
    with torch.device("meta"):
        adaptor = SpireAdaptor(config)
    adaptor.load_file_state_dict(state, assign=True)
    leftover = [name for name, t in [*adaptor.named_parameters(), *adaptor.named_buffers()] if t.is_meta]
    if leftover:  # pragma: no cover - every parameter is in the validated file; buffers would need init
        raise RuntimeError(f"adaptor tensors were not loaded: {leftover[:_LISTED]}")
    return adaptor.to(device=device, dtype=dtype).eval()


def _per_level(value: Any, levels: int) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * levels


def _unet_defaults() -> dict[str, Any]:
    from diffusers import UNet2DConditionModel

    signature = inspect.signature(UNet2DConditionModel.__init__)
    return {name: p.default for name, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}


def _structure(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    def get(key: str) -> Any:
        return config[key] if key in config else defaults.get(key)

    levels = len(get("block_out_channels"))
    heads = get("num_attention_heads") or get("attention_head_dim")
    return {
        "in_channels": get("in_channels"),
        "block_out_channels": list(get("block_out_channels")),
        "layers_per_block": get("layers_per_block"),
        "down_block_types": list(get("down_block_types")),
        "mid_block_type": get("mid_block_type"),
        "cross_attention_dim": get("cross_attention_dim"),
        "transformer_layers_per_block": _per_level(get("transformer_layers_per_block"), levels),
        "attention heads": _per_level(heads, levels),
        "use_linear_projection": bool(get("use_linear_projection")),
        "only_cross_attention": _per_level(get("only_cross_attention"), levels),
        "norm_num_groups": get("norm_num_groups"),
        "class_embed_type": get("class_embed_type"),
        "addition_embed_type": get("addition_embed_type"),
    }


def check_fits_unet(config: AdaptorConfig, unet_config: Mapping[str, Any]) -> None:
    """Raise ``AdaptorFileError`` unless the adaptor's trunk has the structure of this base UNet.

    Args:
        config: the adaptor's config.
        unet_config: a diffusers ``UNet2DConditionModel`` config (``unet.config`` or a dict; missing keys mean
            diffusers' defaults).

    Raises:
        AdaptorFileError: naming every mismatching field (channels, layers, block types, cross-attention
            dim, transformer depth, attention heads, projection type, ...).
    """
    defaults = _unet_defaults()
    # a narrower trunk is compared by the base's width it was made for; its own attention heads are its own
    adaptor = _structure({**config.controlnet_config, "block_out_channels": config.base_channels}, defaults)
    base = _structure(json.loads(json.dumps(dict(unet_config), default=str)), defaults)
    if config.narrow:
        del adaptor["attention heads"], base["attention heads"]
    mismatches = [f"{key}: adaptor {adaptor[key]}, base {base[key]}" for key in adaptor if adaptor[key] != base[key]]
    if mismatches:
        family = infer_base_family(unet_config)
        xl = {"sdxl": "an SDXL", "sd1": "an SD 1.x", "sd2": "an SD 2.x"}
        if "sdxl" in (family, config.base_family) and family != config.base_family:  # the common mistake, first
            mismatches.insert(
                0,
                f"the adaptor was made for {xl.get(config.base_family, 'a custom')} base, the base model is "
                f"{xl.get(family, 'a custom')} one",
            )
        raise AdaptorFileError(
            f"this SPIRE adaptor (base family {config.base_family!r}) does not fit the base model's UNet: "
            f"{'; '.join(mismatches)}. Use the base checkpoint the adaptor was trained from (or one of the same "
            "family and architecture)."
        )


def adaptor_parameter_counts(header_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """{"trunk", "heads", "numeric", "total"} parameter counts from file key -> shape (heads: the modulation heads;
    numeric: the numeric side channel)."""
    numeric = sum(math.prod(s) for k, s in header_shapes.items() if k.startswith(_NUMERIC_PREFIX))
    heads = sum(math.prod(s) for k, s in header_shapes.items() if k.startswith(HEAD_PREFIX)) - numeric
    total = sum(math.prod(s) for s in header_shapes.values())
    return {"trunk": total - heads - numeric, "heads": heads, "numeric": numeric, "total": total}
