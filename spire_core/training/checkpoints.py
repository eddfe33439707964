"""Resumable training checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint is a folder ``output_dir/checkpoints/step-00002000/`` holding

- ``tensors.safetensors``: ``adaptor/<param>`` (trained weights), ``ema/<param>`` (EMA weights),
  ``optimizer/<index>/<name>`` (AdamW moments and step counts), ``rng/<device>/<rank>`` (global torch RNG
  states, uint8);
- ``trainer_state.json``: format and version, step, data position (samples consumed), seed, the adaptor's
  config (its safetensors metadata), optimiser hyper-parameters, EMA counters, gradient-scaler state, the
  training config, and the data summary.

Both files are written into a temporary folder next to it (``.tmp-step-...``) which is then renamed with
``os.replace``: a run killed mid-write leaves a stray temporary folder (ignored, and removed by the next
write), never a half-written checkpoint. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..models import AdaptorConfig, SpireAdaptor, save_adaptor

CHECKPOINT_FORMAT = "spire-training-checkpoint"
"""``format`` field of ``trainer_state.json``."""

CHECKPOINT_VERSION = 1
"""Version of the checkpoint layout; readers refuse others."""

STATE_FILE = "trainer_state.json"
TENSOR_FILE = "tensors.safetensors"
_NAME = re.compile(r"^step-(\d{8,})$")
_TEMP_PREFIX = ".tmp-step-"


class CheckpointError(ValueError):
    """A training checkpoint is missing, damaged, or does not fit this run; the message says which and why."""


def checkpoint_name(step: int) -> str:
    """``step-00002000``: folder name of the checkpoint after ``step`` optimiser steps."""
    return f"step-{step:08d}"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint in ``directory``, oldest first; temporary folders ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and (path / STATE_FILE).is_file() and (path / TENSOR_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint folder in ``directory``, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. folders on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems without fsync on folders
        pass
    finally:
        os.close(fd)


def remove_temporary(directory: str | Path) -> int:
    """Delete temporary folders left by interrupted writes; returns how many were removed."""
    directory = Path(directory)
    removed = 0
    if directory.is_dir():
        for path in directory.iterdir():
            if path.name.startswith(_TEMP_PREFIX) and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    return removed


def write_checkpoint(
    directory: str | Path, step: int, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]
) -> Path:
    """Write a checkpoint atomically (temporary folder, fsync, ``os.replace``).

    Args:
        directory: the checkpoints folder (created if missing).
        step: optimiser steps done; names the folder.
        tensors: name -> tensor (any device; written from the CPU).
        state: JSON-serialisable rest; ``format``, ``version`` and ``step`` are added.

    Returns:
        The checkpoint folder.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_temporary(directory)
    final = directory / checkpoint_name(step)
    document = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step, **state}
    text = json.dumps(document, indent=1, sort_keys=True)  # fails before anything is written if not JSON-able
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    temporary = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{step:08d}-", dir=directory))
    try:
        save_file(cpu, str(temporary / TENSOR_FILE), metadata={"format": "pt", "content": CHECKPOINT_FORMAT})
        (temporary / STATE_FILE).write_text(text + "\n", encoding="utf-8")
        for name in (TENSOR_FILE, STATE_FILE):
            _fsync(temporary / name)
        if final.exists():  # re-writing the same step (e.g. after a resume): move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}old-", dir=directory))
            os.replace(final, old / final.name)
            os.replace(temporary, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, final)
        _fsync(directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint folder.

    Returns:
        (tensors on the CPU, state dict from ``trainer_state.json``).

    Raises:
        CheckpointError: not a checkpoint folder, a damaged file, or another format version.
    """
    path = Path(path)
    state_file, tensor_file = path / STATE_FILE, path / TENSOR_FILE
    if not state_file.is_file() or not tensor_file.is_file():
        raise CheckpointError(
            f"{path} is not a SPIRE training checkpoint: expected a folder with {STATE_FILE} and {TENSOR_FILE} "
            "(e.g. output_dir/checkpoints/step-00002000)"
        )
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{state_file} is damaged: {error}") from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{state_file} is not a SPIRE training checkpoint (format {state.get('format')!r})")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} is checkpoint version {state.get('version')}; this SPIRE reads version {CHECKPOINT_VERSION}"
        )
    try:
        tensors = load_file(str(tensor_file))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{tensor_file} is damaged: {error}") from None
    return tensors, state


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints (``keep=0``: delete none); returns the deleted folders."""
    if keep <= 0:
        return []
    deleted = []
    for _, path in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
        deleted.append(path)
    return deleted


def optimizer_to_checkpoint(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``optimizer/<index>/<name>``) and a JSON-able rest."""
    tensors, scalars = {}, {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = json.loads(json.dumps(state_dict["param_groups"]))
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_checkpoint(tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of ``optimizer_to_checkpoint``: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entry in rest.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    groups = []
    for group in rest["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def rng_state_tensors(accelerator: Any) -> dict[str, torch.Tensor]:
    """Every process's global torch RNG states as uint8 tensors ``rng/cpu/<rank>`` (and ``rng/cuda/<rank>`` on
    GPUs); a collective call in multi-process runs (every process must call it)."""
    device = accelerator.device
    local = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(device)
    out = {}
    for name, state in local.items():
        gathered = state[None]
        if accelerator.num_processes > 1:
            gathered = accelerator.gather(state.to(device)[None]).cpu()
        for rank in range(gathered.shape[0]):
            out[f"rng/{name}/{rank}"] = gathered[rank].clone()
    return out


def restore_rng_states(tensors: Mapping[str, torch.Tensor], rank: int, device: torch.device) -> None:
    """Set this process's global torch RNG states from ``rng_state_tensors`` output (missing ones are left)."""
    if f"rng/cpu/{rank}" in tensors:
        torch.set_rng_state(tensors[f"rng/cpu/{rank}"])
    if device.type == "cuda" and f"rng/cuda/{rank}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng/cuda/{rank}"], device)


def prefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{f"{prefix}/{name}": tensor}``."""
    return {f"{prefix}/{name}": tensor for name, tensor in tensors.items()}


def unprefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix/``, with the prefix removed."""
    start = len(prefix) + 1
    return {name[start:]: tensor for name, tensor in tensors.items() if name.startswith(prefix + "/")}


def adaptor_from_checkpoint(path: str | Path, weights: str = "ema") -> tuple[SpireAdaptor, dict[str, Any]]:
    """Rebuild the adaptor stored in a checkpoint, without the base model.

    Args:
        path: checkpoint folder.
        weights: ``"ema"`` or ``"raw"`` (the optimiser's current weights).

    Returns:
        (adaptor on the CPU in float32 and eval mode, checkpoint state).
    """
    tensors, state = read_checkpoint(path)
    config = AdaptorConfig.from_metadata(state["adaptor_config"])
    prefix = {"ema": "ema", "raw": "adaptor"}.get(weights)
    if prefix is None:
        raise ValueError(f"weights must be 'ema' or 'raw'; got {weights!r}")
    module_state = unprefixed(prefix, tensors)
    if not module_state:
        raise CheckpointError(f"{path} holds no {weights} weights (EMA was disabled in that run; use weights='raw')")
    with torch.device("meta"):
        adaptor = SpireAdaptor(config)
    try:
        adaptor.load_state_dict(module_state, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the stored adaptor weights do not match its config: {error}") from None
    return adaptor.float().eval(), state


def export_checkpoint(path: str | Path, out: str | Path, weights: str = "ema") -> Path:
    """Write a checkpoint's adaptor as a SPIRE adaptor file (``spire_core.models.save_adaptor``) that
    ``load_adaptor`` and the ComfyUI nodes load unchanged."""
    adaptor, state = adaptor_from_checkpoint(path, weights)
    return save_adaptor(adaptor, out, extra_metadata=export_metadata(state["step"], weights))


def export_metadata(step: int, weights: str) -> dict[str, str]:
    """Training provenance written into exported adaptors (``spire.train.*`` keys)."""
    return {"spire.train.step": str(step), "spire.train.weights": weights}
