"""Load a base model's UNet offline, from a diffusers folder or a single-file SD1.x/SD2.x/SDXL checkpoint.

Nothing is downloaded: diffusers folders load with ``local_files_only=True`` and safetensors weights only;
single files get their diffusers config rebuilt from tensor shapes (``ldm.unet_config_from_ldm``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .config import PREDICTION_TYPES, check_unet_supported, infer_base_family
from .ldm import LDM_UNET_PREFIX, ldm_to_diffusers_unet, unet_config_from_ldm
from .safetensors_header import (
    DIFFUSERS_UNET,
    SD_CHECKPOINT,
    SPIRE_ADAPTOR,
    WHERE_FILES_GO,
    BaseModelFileError,
    identify,
    read_safetensors_header,
)

_PREDICTION_ALIASES = {
    "epsilon": "epsilon",
    "eps": "epsilon",
    "v": "v_prediction",
    "v_prediction": "v_prediction",
    "v-prediction": "v_prediction",
}
_WEIGHTS = "diffusion_pytorch_model"


@dataclass
class BaseModelInfo:
    """Where a base UNet came from and what it is.

    Attributes:
        path: the folder or file given.
        source: ``"diffusers"`` (folder) or ``"single_file"`` (original-layout ``.safetensors``).
        base_family: ``"sd1"``, ``"sd2"``, ``"sdxl"`` or ``"custom"`` (``config.infer_base_family``).
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        prediction_type_source: ``"argument"``, ``"scheduler config"``, ``"metadata"``, ``"v_pred key"`` or
            ``"default"``: how the prediction type was decided.
        unet_config: the diffusers UNet config (plain dict).
    """

    path: Path
    source: str
    base_family: str
    prediction_type: str
    prediction_type_source: str
    unet_config: dict[str, Any] = field(default_factory=dict)


def _normalise_prediction(value: str, where: str) -> str:
    normalised = _PREDICTION_ALIASES.get(str(value).strip().lower())
    if normalised is None:
        raise BaseModelFileError(f"{where}: unknown prediction type {value!r}; expected one of {PREDICTION_TYPES}")
    return normalised


def _diffusers_unet_folder(path: Path) -> tuple[Path, str | None]:
    """(folder holding the model, subfolder) for a pipeline folder or a bare UNet folder."""
    if (path / "unet" / "config.json").is_file():
        return path, "unet"
    if (path / "config.json").is_file():
        return path, None
    raise BaseModelFileError(
        f"{path} is a folder but not a diffusers model: expected unet/config.json (a pipeline folder) or "
        f"config.json (a UNet folder). {WHERE_FILES_GO}"
    )


def _load_diffusers(path: Path) -> tuple[Any, str | None]:
    from diffusers import UNet2DConditionModel

    root, subfolder = _diffusers_unet_folder(path)
    folder = root / subfolder if subfolder else root
    variant = None
    if not (folder / f"{_WEIGHTS}.safetensors").is_file():
        variants = sorted(p.name for p in folder.glob(f"{_WEIGHTS}.*.safetensors"))
        if variants:
            variant = variants[0].split(".")[1]
        else:
            raise BaseModelFileError(
                f"{folder} has no {_WEIGHTS}.safetensors: SPIRE loads safetensors weights only (never pickled "
                ".bin files). Convert the model to safetensors first."
            )
    try:
        unet = UNet2DConditionModel.from_pretrained(
            str(root), subfolder=subfolder, local_files_only=True, use_safetensors=True, variant=variant
        )
    except (OSError, ValueError) as error:
        raise BaseModelFileError(f"{folder}: cannot load the diffusers UNet offline: {error}") from None
    scheduler = root / "scheduler" / "scheduler_config.json"
    prediction = None
    if scheduler.is_file():
        prediction = json.loads(scheduler.read_text(encoding="utf-8")).get("prediction_type")
    return unet, prediction


def _load_single_file(path: Path) -> tuple[Any, dict[str, str], bool]:
    from diffusers import UNet2DConditionModel

    header = read_safetensors_header(path, error=BaseModelFileError)
    kind, description = identify(header)
    unet_keys = [key for key in header.tensors if key.startswith(LDM_UNET_PREFIX)]
    if kind != SD_CHECKPOINT or not unet_keys:
        advice = {
            SPIRE_ADAPTOR: "Load it with the SPIRE adaptor loader, and give the base checkpoint it was trained from.",
            DIFFUSERS_UNET: "Give the diffusers model folder (the one containing unet/config.json) instead.",
        }.get(kind, "")
        raise BaseModelFileError(
            f"{path} is {description}, not a base Stable Diffusion checkpoint with UNet weights "
            f"(model.diffusion_model.*). {advice} {WHERE_FILES_GO}".replace("  ", " ")
        )
    shapes = {key[len(LDM_UNET_PREFIX) :]: info["shape"] for key, info in header.tensors.items() if key in unet_keys}
    try:
        config = unet_config_from_ldm(shapes)
        check_unet_supported(config)
    except ValueError as error:  # LdmLayoutError included
        raise BaseModelFileError(f"{path}: the UNet is not an SD1.x/SD2.x/SDXL UNet: {error}") from None
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in unet_keys}
    converted = ldm_to_diffusers_unet(tensors, config)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    try:
        unet.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as error:
        raise BaseModelFileError(f"{path}: UNet weights do not match the inferred architecture: {error}") from None
    return unet, header.metadata, "v_pred" in header.tensors


def load_base_unet(
    path: str | os.PathLike,
    prediction_type: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Any, BaseModelInfo]:
    """Load the UNet of a base SD1.x/SD2.x/SDXL model, offline.

    Args:
        path: a diffusers folder (``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors``, or the
            ``unet`` folder itself) or a single-file original-layout ``.safetensors`` checkpoint.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` to override detection (SD 2.x 768-v models are
            v-prediction and single files rarely say so). Otherwise: the scheduler config (folders), the
            ``modelspec.prediction_type``/``prediction_type`` metadata or a ``v_pred`` tensor (single files),
            else ``"epsilon"``.
        device: where to put the UNet (default CPU).
        dtype: floating dtype (default: as stored).

    Returns:
        (``UNet2DConditionModel`` in eval mode, ``BaseModelInfo``).

    Raises:
        BaseModelFileError: the path is missing, not safetensors, truncated, or not a base model (an adaptor,
            a ControlNet, a pickle), with what it is and where it belongs.
    """
    path = Path(path)
    found, source_of_prediction = None, "default"
    if path.is_dir():
        unet, found = _load_diffusers(path)
        source, found_source = "diffusers", "scheduler config"
    else:
        unet, metadata, v_pred_key = _load_single_file(path)
        source, found_source = "single_file", "metadata"
        found = metadata.get("modelspec.prediction_type") or metadata.get("prediction_type")
        if found is None and v_pred_key:
            found, found_source = "v", "v_pred key"
    if prediction_type is not None:
        resolved, source_of_prediction = _normalise_prediction(prediction_type, "prediction_type argument"), "argument"
    elif found is not None:
        resolved, source_of_prediction = _normalise_prediction(found, str(path)), found_source
    else:
        resolved = "epsilon"
    unet = (unet.to(device=device, dtype=dtype) if dtype is not None else unet.to(device=device)).eval()
    config = json.loads(json.dumps(dict(unet.config), default=str))
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    info = BaseModelInfo(
        path=path,
        source=source,
        base_family=infer_base_family(config),
        prediction_type=resolved,
        prediction_type_source=source_of_prediction,
        unet_config=config,
    )
    return unet, info
