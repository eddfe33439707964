"""A miniature run's trained weights on disk, so that the run can be evaluated again without training it again.

``<run>/weights/`` holds:

- ``run.json``: the run's ``MiniatureConfig`` (photo paths as given) and the SHA-256 of each photo (the held-out
  crops are cut from them: evaluating with other photos would measure other crops);
- ``codec.safetensors``: the fitted codec's analysis and synthesis tensors (its grain field is redrawn from its
  seed, exactly);
- ``backbone.safetensors``: the frozen backbone's EMA weights (its architecture follows from the config);
- ``<arm>.safetensors`` per adaptor arm: its EMA weights in the adaptor file format (``python -m spire_core.models
  inspect`` reads them; their base is the miniature's backbone, not a Stable Diffusion checkpoint).

The text encoder is not saved: it is the tiny random one, drawn again from the run's seed and checked against
the SHA-256 of its state that ``run.json`` records. ``run.json`` also records an id that the run's
``miniature.json`` repeats, so that weights and report of different runs are never paired. About 13 MB with the
default arms. Loading checks the files' kinds, tensor names and finiteness (the backbone and the adaptors also
load strictly by shape) before any evaluation starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ...models import SpireAdaptor, load_adaptor, save_adaptor
from ...models.checkpoint import TRAINING_STEP_KEY, non_finite, write_safetensors
from ...models.components import FrozenComponents
from ...models.safetensors_header import AdaptorFileError
from ..minicodec import LappedGrainCodec
from .config import ARMS, EVALUATION_SETTINGS, SAMPLES_DIR, MiniatureConfig

WEIGHTS = "weights"
"""The folder of a run's weights, inside its output folder."""

RUN_FILE = "run.json"
KIND_KEY = "spire.miniature.kind"
_CODEC_TENSORS = ("patch_mean", "basis", "scale", "kernels")


class MiniatureWeightsError(ValueError):
    """A run's weights are missing, damaged or do not belong to the photos or config they are used with."""


def photo_digest(path: str | Path) -> str:
    """SHA-256 of a photo file (hex)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def state_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and values): the run's text encoder is drawn again from
    its seed, not saved, and must come out the same."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.view(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def run_id_of(run: str | Path) -> str | None:
    """The id in ``run/weights/run.json`` (``None``: no readable weights record)."""
    try:
        record = json.loads((Path(run) / WEIGHTS / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("run_id") if isinstance(record, dict) else None


def _write(tensors: Mapping[str, torch.Tensor], path: Path, kind: str, extra: Mapping[str, str]) -> None:
    write_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path, {KIND_KEY: kind, **extra})


def save_weights(
    out: str | Path,
    config: MiniatureConfig,
    components: FrozenComponents,
    adaptors: Mapping[str, SpireAdaptor],
    adaptor_steps: int,
    run_id: str,
) -> Path:
    """Write the weights of a trained run (codec ``components.vae``, backbone ``components.unet``, each adaptor as
    it is: the EMA weights after training) and ``run.json`` to ``out/weights``; returns that folder. ``run_id``
    ties the weights to the run's report (``miniature.json`` records the same id).

    Raises:
        MiniatureWeightsError: a weight is NaN or Inf (the run diverged); nothing is written.
    """
    models = {"codec": components.vae, "backbone": components.unet, **adaptors}
    bad = [name for name, model in models.items() if non_finite(model.state_dict())]
    if bad:
        raise MiniatureWeightsError(
            f"not saving the weights: NaN or Inf values in {', '.join(bad)} (training diverged)"
        )
    folder = Path(out) / WEIGHTS
    folder.mkdir(parents=True, exist_ok=True)
    codec = components.vae
    codec_meta = {"grain": str(int(codec.grain)), "grain_seed": str(codec.grain_seed)}
    _write({name: getattr(codec, name) for name in _CODEC_TENSORS}, folder / "codec.safetensors", "codec", codec_meta)
    _write(components.unet.state_dict(), folder / "backbone.safetensors", "backbone", {})
    for arm, adaptor in adaptors.items():
        save_adaptor(adaptor, folder / f"{arm}.safetensors", {TRAINING_STEP_KEY: str(adaptor_steps)})
    record = {
        "run_id": run_id,
        "config": asdict(config),
        "photo_sha256": [photo_digest(p) for p in config.images],
        "text_encoder_sha256": state_digest(components.text_encoder),
    }
    (folder / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return folder


def _read(path: Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of one of a run's files, refused unless it is a finite ``kind`` file."""
    if not path.is_file():
        raise MiniatureWeightsError(f"{path} is missing: the run's weights folder is incomplete; train the run again")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    except Exception as error:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise MiniatureWeightsError(
            f"{path} is not a readable safetensors file ({error}); train the run again"
        ) from None
    if metadata.get(KIND_KEY) != kind:
        found = metadata.get(KIND_KEY, "no kind")
        raise MiniatureWeightsError(f"{path} holds {found!r}, expected the miniature's {kind!r} weights")
    bad = sorted(non_finite(tensors))
    if bad:
        raise MiniatureWeightsError(
            f"{path} holds NaN or Inf values in {len(bad)} tensors ({', '.join(bad[:5])}): the run diverged or the "
            "file is damaged; train the run again"
        )
    return tensors, metadata


def _config(record: Mapping, path: Path) -> MiniatureConfig:
    names = {f.name for f in fields(MiniatureConfig)}
    saved = record.get("config")
    # an evaluation setting added after the run was trained takes its default; a training field must be there
    if not isinstance(saved, dict) or not names - set(EVALUATION_SETTINGS) <= set(saved) <= names:
        raise MiniatureWeightsError(
            f"{path} does not hold this version's miniature config (fields {sorted(names)}); train the run again"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
    try:
        return MiniatureConfig(**values)
    except (TypeError, ValueError) as error:
        raise MiniatureWeightsError(f"{path}: the saved config is not valid ({error})") from None


def _photos(saved: Sequence[str], digests: Sequence[str], images: Sequence[str] | None) -> tuple[str, ...]:
    """The photos to cut the held-out crops from: ``images`` if given, else the saved paths (a bundled sample is
    also found in this checkout's samples folder); each must have the digest the run recorded."""
    if images is not None and len(images) != len(saved):
        raise MiniatureWeightsError(
            f"the run cropped {len(saved)} photos ({', '.join(map(str, saved))}); got {len(images)}"
        )
    chosen = []
    for index, path in enumerate(saved):
        candidates = [Path(images[index])] if images is not None else [Path(path), SAMPLES_DIR / Path(path).name]
        name = Path(path).name
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise MiniatureWeightsError(
                f"photo {candidates[0]} of the run was not found; pass the run's photos, in its order, with --images"
            )
        if photo_digest(found) != digests[index]:
            raise MiniatureWeightsError(
                f"photo {found} is not the {name} the run was trained and evaluated on (its SHA-256 differs): its "
                "held-out crops would differ; pass the run's own photos with --images"
            )
        chosen.append(str(found))
    return tuple(chosen)


def load_weights(
    run: str | Path, images: Sequence[str] | None = None
) -> tuple[MiniatureConfig, FrozenComponents, dict[str, SpireAdaptor]]:
    """Everything a trained run evaluates with, on the CPU, checked before any evaluation.

    Args:
        run: the run's output folder (holding ``weights/``).
        images: the run's photos, in its order, where they moved since (default: the saved paths).

    Returns:
        The run's config (its photo paths as found), its frozen components (the codec as the VAE) and its
        adaptors (eval mode, EMA weights).

    Raises:
        MiniatureWeightsError: no weights, a missing, damaged or non-finite file, a photo that differs.
    """
    from .run import backbone_components  # run imports this module

    folder = Path(run) / WEIGHTS
    record_path = folder / RUN_FILE
    if not record_path.is_file():
        raise MiniatureWeightsError(
            f"{Path(run)} has no trained weights ({record_path} is missing): only runs that saved their weights can "
            "be evaluated again; train it with python -m spire_core.experiments.miniature"
        )
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MiniatureWeightsError(f"{record_path} is not readable JSON ({error})") from None
    config = _config(record, record_path)
    digests = record.get("photo_sha256")
    if not isinstance(digests, list) or len(digests) != len(config.images) or not isinstance(record.get("run_id"), str):
        raise MiniatureWeightsError(f"{record_path} lacks the run's id or one SHA-256 per photo; train the run again")
    config = MiniatureConfig(**{**asdict(config), "images": _photos(config.images, digests, images)})

    tensors, metadata = _read(folder / "codec.safetensors", "codec")
    if (
        set(tensors) != set(_CODEC_TENSORS)
        or metadata.get("grain") not in ("0", "1")
        or not metadata.get("grain_seed", "").isdigit()
    ):
        raise MiniatureWeightsError(
            f"{folder / 'codec.safetensors'} is not a lapped-grain codec (tensors {sorted(tensors)})"
        )
    codec = LappedGrainCodec(
        *(tensors[name] for name in _CODEC_TENSORS),
        grain=metadata["grain"] == "1",
        grain_seed=int(metadata["grain_seed"]),
    )
    components = backbone_components(config, codec)
    state, _ = _read(folder / "backbone.safetensors", "backbone")
    try:
        components.unet.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise MiniatureWeightsError(
            f"{folder / 'backbone.safetensors'} does not fit the run's backbone: {first}"
        ) from None
    components.freeze()
    if state_digest(components.text_encoder) != record.get("text_encoder_sha256"):
        raise MiniatureWeightsError(
            "the tiny text encoder drawn from the run's seed differs from the one the adaptors were trained with "
            "(another transformers or torch version?): its evaluation would measure something else"
        )

    adaptors = {}
    for arm in config.arms:
        path = folder / f"{arm}.safetensors"
        if not path.is_file():
            raise MiniatureWeightsError(f"{path} is missing: the run trained the arm {arm}; train the run again")
        try:
            adaptor = load_adaptor(path)
        except AdaptorFileError as error:  # damaged, non-finite or not an adaptor: this run's folder is broken
            raise MiniatureWeightsError(f"the arm {arm}'s weights cannot be used: {error}") from None
        fusion, tokens, _ = ARMS[arm]
        if (adaptor.config.fusion, adaptor.config.numeric_tokens) != (fusion, tokens):
            raise MiniatureWeightsError(
                f"{path} is a {adaptor.config.fusion} adaptor with {adaptor.config.numeric_tokens} numeric tokens, "
                f"not the arm {arm} ({fusion}, {tokens})"
            )
        adaptors[arm] = adaptor.requires_grad_(False)
    return config, components, adaptors


def to_device(components: FrozenComponents, adaptors: Mapping[str, nn.Module], device: torch.device) -> None:
    """Move the models a miniature evaluation runs (codec, backbone, text encoder, adaptors) to ``device``."""
    for model in (components.vae, components.unet, components.text_encoder, *adaptors.values()):
        nn.Module.to(model, device)
