"""Read a safetensors header without loading tensors, and tell what kind of model file it is.

Safetensors layout: 8 bytes little-endian header length n, then n bytes of JSON (tensor name ->
``{"dtype", "shape", "data_offsets"}`` plus an optional ``"__metadata__"`` of strings), then the tensor
bytes. Reading the header ourselves lets us reject pickles, foreign and truncated files with a clear
message before anything is loaded; nothing here ever unpickles.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

WHERE_FILES_GO = (
    "SPIRE adaptors go in ComfyUI/models/spire, base Stable Diffusion checkpoints in ComfyUI/models/checkpoints, "
    "plain ControlNets in ComfyUI/models/controlnet, LPIPS weights (lpips_alex.safetensors) in ComfyUI/models/spire."
)
"""Appended to file errors so users know where each kind of file belongs."""

MAX_HEADER_BYTES = 100_000_000
"""The safetensors format caps the JSON header at 100 MB; a larger length means "not safetensors"."""

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
"""Safetensors dtypes a model weight may have."""

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_DTYPE_BYTES.update({"U64": 8, "U32": 4, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1})

# Kinds of model file ``identify`` distinguishes.
SPIRE_ADAPTOR = "spire_adaptor"
SPIRE_WITHOUT_METADATA = "spire_adaptor_without_metadata"
SD_CHECKPOINT = "sd_checkpoint"
CONTROLNET = "controlnet"
DIFFUSERS_UNET = "diffusers_unet"
OTHER = "other"

_BASE_PREFIXES = {
    "model.diffusion_model.": "UNet",
    "first_stage_model.": "VAE",
    "cond_stage_model.": "text encoder",
    "conditioner.": "text encoder",
}
_LDM_CONTROLNET_PREFIXES = ("control_model.", "zero_convs.", "input_hint_block.", "middle_block_out.")


class ModelFileError(ValueError):
    """A model file is not what was expected; the message says what it is, what was expected, and where
    the right file goes."""


class AdaptorFileError(ModelFileError):
    """A file given as a SPIRE adaptor is not a valid SPIRE adaptor."""


class BaseModelFileError(ModelFileError):
    """A file or folder given as a base Stable Diffusion model cannot be loaded as one."""


@dataclass
class SafetensorsHeader:
    """A parsed safetensors header.

    Attributes:
        path: the file.
        tensors: name -> ``{"dtype": str, "shape": list[int], "data_offsets": [begin, end]}``.
        metadata: the ``__metadata__`` strings (empty dict when absent).
        file_size: size of the file in bytes.
    """

    path: Path
    tensors: dict[str, dict]
    metadata: dict[str, str] = field(default_factory=dict)
    file_size: int = 0

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape."""
        return {name: tuple(info["shape"]) for name, info in self.tensors.items()}

    def parameter_count(self, prefix: str = "") -> int:
        """Number of elements in tensors whose name starts with ``prefix``."""
        return sum(math.prod(info["shape"]) for name, info in self.tensors.items() if name.startswith(prefix))


def _sniff(head: bytes) -> str:
    if head.startswith(b"PK\x03\x04"):
        return (
            "a zip archive: most likely a PyTorch pickle checkpoint (.ckpt/.pt/.pth saved by torch.save). "
            "SPIRE never unpickles files (they can run arbitrary code); use the .safetensors version"
        )
    if head[:1] == b"\x80":
        return "a Python pickle (e.g. an old .ckpt/.pt/.bin); SPIRE never unpickles files, use a .safetensors file"
    return "not a safetensors file (it does not start with a safetensors header)"


def read_safetensors_header(path: str | os.PathLike, error: type[ModelFileError] = ModelFileError) -> SafetensorsHeader:
    """Parse and sanity-check the header of a safetensors file without reading tensor data.

    Args:
        path: the file.
        error: exception class raised on failure (``AdaptorFileError`` or ``BaseModelFileError``).

    Raises:
        ``error`` when the file is missing, not safetensors (pickle/zip/random bytes), or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file. {WHERE_FILES_GO}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise error(f"{path} is {size} bytes long: too short to be a safetensors file. {WHERE_FILES_GO}")
        (length,) = struct.unpack("<Q", head)
        first = f.read(1)
        if length > MAX_HEADER_BYTES or first != b"{":
            raise error(f"{path} is {_sniff(head)}. {WHERE_FILES_GO}")
        if 8 + length > size:
            raise error(
                f"{path} is a truncated safetensors file: its header alone should be {length} bytes but the "
                f"file is only {size} bytes (an interrupted download or copy?). Download or copy it again."
            )
        raw = first + f.read(length - 1)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        end = 0
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, stop = info["data_offsets"]
            if not isinstance(info["shape"], list) or not isinstance(info["dtype"], str) or stop < begin:
                raise ValueError(f"bad entry for {name!r}")
            if begin != end:  # safetensors data is contiguous: no holes, no overlaps
                raise ValueError(f"{name!r} starts at byte {begin} of the data, expected {end}")
            itemsize = _DTYPE_BYTES.get(info["dtype"])
            if itemsize is not None and stop - begin != math.prod(info["shape"]) * itemsize:
                raise ValueError(
                    f"{name!r} has {stop - begin} bytes of data but dtype {info['dtype']} and shape {info['shape']} "
                    f"need {math.prod(info['shape']) * itemsize}"
                )
            end = stop
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise error(
            f"{path} is not a valid safetensors file: its header cannot be parsed ({exc}). {WHERE_FILES_GO}"
        ) from None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise error(f"{path} is not a valid safetensors file: __metadata__ must map strings to strings")
    expected = 8 + length + end
    if expected > size:
        raise error(
            f"{path} is a truncated safetensors file: its header describes {expected} bytes but the file has "
            f"only {size} (an interrupted download or copy?). Download or copy it again."
        )
    if expected < size:
        raise error(f"{path} is a corrupt safetensors file: {size - expected} unexpected bytes after the tensor data.")
    return SafetensorsHeader(path=path, tensors=header, metadata=dict(metadata), file_size=size)


def identify(header: SafetensorsHeader) -> tuple[str, str]:
    """What kind of model file this is, from its tensor names and metadata.

    Returns:
        (kind, description): kind is one of ``SPIRE_ADAPTOR``, ``SPIRE_WITHOUT_METADATA``, ``SD_CHECKPOINT``,
        ``CONTROLNET``, ``DIFFUSERS_UNET``, ``OTHER``; description is a human-readable sentence fragment.
    """
    names = list(header.tensors)
    if any(key.startswith("spire.") for key in header.metadata):
        return SPIRE_ADAPTOR, "a SPIRE adaptor"
    parts = [part for prefix, part in _BASE_PREFIXES.items() if any(n.startswith(prefix) for n in names)]
    if parts:
        found = ", ".join(dict.fromkeys(parts))
        return SD_CHECKPOINT, f"a base Stable Diffusion checkpoint (contains {found} weights in the original layout)"
    if any(n.startswith(_LDM_CONTROLNET_PREFIXES) for n in names):
        return CONTROLNET, "a plain ControlNet (original ControlNet layout: control_model/zero_convs/input_hint_block)"
    has_hint_encoder = any(n.startswith("controlnet_cond_embedding.") for n in names)
    if has_hint_encoder and any(n.startswith("spire_gamma_down.") for n in names):
        return SPIRE_WITHOUT_METADATA, "a SPIRE adaptor whose spire.* metadata was lost (re-saved by another tool?)"
    if has_hint_encoder and any(n.startswith("controlnet_down_blocks.") for n in names):
        return CONTROLNET, "a plain ControlNet (diffusers layout, no SPIRE metadata)"
    if any(n.startswith("up_blocks.") for n in names) and "conv_out.weight" in names:
        return DIFFUSERS_UNET, "a diffusers UNet weights file (part of a base model folder, not a SPIRE adaptor)"
    if any("lora" in n.lower() for n in names):
        return OTHER, "a LoRA"
    return OTHER, f"an unrecognised safetensors file ({len(names)} tensors, no SPIRE metadata)"
