"""A fixed, reproducible degraded benchmark (spire-paper.md section 10, #19) and restoring it with the pipeline.

``build_benchmark`` turns a folder of clean photos (and optional COCO captions) into::

    BENCH/clean/NAME.png       centre crop of the photo, resized to size x size
    BENCH/degraded/NAME.png    the crop degraded with parameters drawn from (seed, NAME)
    BENCH/manifest.json        per image: files, caption, restoration prompt, params, prompted values

Each image's draw depends only on the seed and its name (``image_seed``), so adding
or removing photos leaves the other images unchanged, and the same inputs and seed give byte-identical files.
The degraded image keeps the clean image's size (the degradation resizes back), so "Upsample by Nx" in its
prompt describes a loss of detail, not a size change.

``restore_benchmark`` restores every degraded image with a ``SpirePipeline`` and writes ``OUT/NAME.png``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..captions import read_coco_captions as _read_coco
from ..models.prompt_windows import PromptTextError, parse_weights
from ..progress import progress
from ..restoration.plan import RestoreSettings

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "spire-benchmark/1"
CLEAN_DIR = "clean"
DEGRADED_DIR = "degraded"
RESTORE_SETTINGS = "restore.json"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
"""Files of the source folder taken as photos (case-insensitive; the folder's top level only)."""

PROMPTED_KEYS = ("upsample", "deblur", "denoise", "dejpeg")
"""The numbers a restoration prompt carries, in canonical clause order (``None`` when the clause is absent)."""

SETTINGS = {
    "full": ("prompt", "caption"),
    "blind": ("blind", "empty"),
    "semantic": ("blind", "caption"),
    "restoration": ("prompt", "empty"),
}
"""Evaluation settings -> (restoration prompt, semantic prompt): the image's own prompt or the blind one, its
caption or the empty prompt. ``full`` is c_r + c_s, ``blind`` neither (the paper's blind mode)."""

COMFY_NAME = re.compile(r"^(?P<prefix>.*?)_(?P<counter>\d{5,})_\.png$")
"""Files ComfyUI's SaveImage writes: ``prefix_00001_.png``."""


class BenchmarkError(ValueError):
    """A benchmark folder, manifest or output folder is unusable; the message says what and how to fix it."""


@dataclass(frozen=True)
class BenchmarkImage:
    """One manifest entry.

    Attributes:
        name: image name (file stem; files are ``clean/NAME.png`` and ``degraded/NAME.png``).
        source: the photo's file name in the source folder.
        caption: semantic prompt (first COCO caption, the sidecar ``.txt``'s first line, or ``""``).
        restoration_prompt: canonical prompt naming every applied degradation (blind when none is nameable).
        params: ``DegradationParams.to_dict()``.
        prompted: the prompt's numbers (``PROMPTED_KEYS``; ``None`` when a clause is absent).
    """

    name: str
    source: str
    caption: str
    restoration_prompt: str
    params: dict[str, Any]
    prompted: dict[str, float | int | None]

    @property
    def clean(self) -> str:
        return f"{CLEAN_DIR}/{self.name}.png"

    @property
    def degraded(self) -> str:
        return f"{DEGRADED_DIR}/{self.name}.png"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "clean": self.clean,
            "degraded": self.degraded,
            "source": self.source,
            "caption": self.caption,
            "restoration_prompt": self.restoration_prompt,
            "prompted": dict(self.prompted),
            "params": self.params,
        }


@dataclass
class Manifest:
    """A benchmark: how it was built and its images in a fixed order (sorted by name)."""

    root: Path
    seed: int
    preset: str
    size: int
    images: list[BenchmarkImage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "seed": self.seed,
            "preset": self.preset,
            "size": self.size,
            "count": len(self.images),
            "images": [image.to_dict() for image in self.images],
        }


def load_manifest(bench: str | os.PathLike) -> Manifest:
    """Read ``BENCH/manifest.json``.

    Raises:
        BenchmarkError: no manifest, or not one written by ``build_benchmark``.
    """
    root = Path(bench)
    path = root / MANIFEST
    if not path.is_file():
        raise BenchmarkError(
            f"{root} has no {MANIFEST}; build the benchmark first: python -m spire_core.eval build --images DIR "
            f"--out {root}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        images = [
            BenchmarkImage(
                name=str(entry["name"]),
                source=str(entry["source"]),
                caption=str(entry["caption"]),
                restoration_prompt=str(entry["restoration_prompt"]),
                params=dict(entry["params"]),
                prompted={key: entry["prompted"].get(key) for key in PROMPTED_KEYS},
            )
            for entry in data["images"]
        ]
        return Manifest(root, int(data["seed"]), str(data["preset"]), int(data["size"]), images)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise BenchmarkError(f"{path} is not a SPIRE benchmark manifest: {error}") from None


def list_photos(folder: str | os.PathLike) -> list[Path]:
    """Image files at the top level of ``folder``, sorted by name; hidden files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkError(f"--images {folder} is not a folder; expected a folder of clean photos")
    found = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS)


def center_crop(path: Path, size: int) -> torch.Tensor:
    """The photo's centre square (side = its short side) resized to ``size`` (Pillow bicubic, antialiased when
    shrinking), as a (1, 3, size, size) float32 tensor in [0, 1] quantised to 8 bits (what ``clean/`` stores)."""
    import numpy as np

    with Image.open(path) as photo:
        photo.load()
        photo = photo.convert("RGB")
    width, height = photo.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = photo.crop((left, top, left + side, top + side))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(square, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255).unsqueeze(0)


def read_coco_captions(path: str | os.PathLike) -> dict[str, list[str]]:
    """Photo file name (without folders) -> captions, in file order, from a COCO captions JSON.

    Raises:
        BenchmarkError: no such file, or not that layout.
    """
    captions: dict[str, list[str]] = {}
    for name, texts in _read_coco(path, BenchmarkError, "--captions").items():
        captions.setdefault(Path(name).name, []).extend(texts)
    return captions


def captions_for(photos: Sequence[Path], captions_file: str | os.PathLike | None) -> dict[str, str]:
    """Photo file name -> caption: the first caption in a COCO captions JSON, else the first non-empty line of a
    sidecar ``NAME.txt`` next to the photo, else ``""``."""
    coco = read_coco_captions(captions_file) if captions_file else {}
    out = {}
    for photo in photos:
        if captions_file:
            found = coco.get(photo.name, [])
        else:
            sidecar = photo.with_suffix(".txt")
            text = sidecar.read_text(encoding="utf-8", errors="replace") if sidecar.is_file() else ""
            found = [line.strip() for line in text.splitlines() if line.strip()]
        out[photo.name] = found[0] if found else ""
    return out


def image_seed(seed: int, name: str) -> int:
    """The 63-bit seed of one benchmark image's degradation draw: a hash of (seed, name), stable everywhere."""
    digest = hashlib.blake2b(f"spire-benchmark\x1f{seed}\x1f{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def prompted_values(params: Any) -> tuple[str, dict[str, float | int | None]]:
    """(restoration prompt, its numbers) for ``DegradationParams``; blind when nothing nameable was applied."""
    from ..degradation import effective_request
    from ..prompt import BLIND_PROMPT, quantize, render

    request = effective_request(params)
    if request.is_empty():
        return BLIND_PROMPT, dict.fromkeys(PROMPTED_KEYS)
    printed = quantize(request)
    return render(request), {key: getattr(printed, key) for key in PROMPTED_KEYS}


def build_benchmark(
    images: str | os.PathLike,
    out: str | os.PathLike,
    captions: str | os.PathLike | None = None,
    seed: int = 0,
    preset: str = "paper",
    size: int = 512,
    log: Callable[[str], None] | None = None,
) -> Manifest:
    """Build the fixed degraded set (see the module docstring).

    Args:
        images: folder of clean photos (top level; ``IMAGE_EXTENSIONS``).
        out: benchmark folder to write (created; existing files of the same names are overwritten).
        captions: COCO captions JSON; ``None``: sidecar ``.txt`` files where present, else empty captions.
        seed: benchmark seed; each image's degradation is drawn from ``image_seed(seed, NAME)``.
        preset: ``spire_core.degradation.PRESETS`` name.
        size: side of the square crops in pixels.
        log: called with one line per image (e.g. ``print``).

    Returns:
        The manifest (also written to ``out/manifest.json``).

    Raises:
        BenchmarkError: no photos, two photos with the same name stem, an unreadable photo or a bad size.
    """
    from ..degradation import degrade, get_preset, sample_params
    from ..imageio import save_image

    if size < 16:
        raise BenchmarkError(f"--size must be at least 16 pixels, got {size}")
    spec = get_preset(preset)
    photos = list_photos(images)
    if not photos:
        raise BenchmarkError(f"{images} holds no photos ({', '.join(IMAGE_EXTENSIONS)})")
    stems: dict[str, str] = {}
    for photo in photos:
        if photo.stem in stems:
            raise BenchmarkError(f"{photo.name} and {stems[photo.stem]} share the name {photo.stem!r}; rename one")
        stems[photo.stem] = photo.name
    texts = captions_for(photos, captions)
    root = Path(out)
    manifest = Manifest(root, seed, preset, size)
    for photo in progress(photos, desc="build", unit="image"):
        try:
            clean = center_crop(photo, size)
        except (OSError, ValueError, SyntaxError) as error:
            raise BenchmarkError(f"{photo} cannot be read as an image: {error}") from None
        params = sample_params(spec, torch.Generator().manual_seed(image_seed(seed, photo.stem)), 1)
        degraded = degrade(clean, params).images
        prompt, prompted = prompted_values(params[0])
        entry = BenchmarkImage(photo.stem, photo.name, texts[photo.name], prompt, params[0].to_dict(), prompted)
        save_image(clean[0], root / entry.clean)
        save_image(degraded[0], root / entry.degraded)
        manifest.images.append(entry)
        if log:
            log(f"{entry.name}: {prompt}")
    (root / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    return manifest


def prompts_for(image: BenchmarkImage, setting: str) -> tuple[str, str]:
    """(restoration prompt, semantic prompt) of ``image`` under an evaluation ``setting`` (``SETTINGS``)."""
    from ..prompt import BLIND_PROMPT

    if setting not in SETTINGS:
        raise ValueError(f"setting {setting!r} is unknown; expected one of {tuple(SETTINGS)}")
    restoration, semantic = SETTINGS[setting]
    return (
        image.restoration_prompt if restoration == "prompt" else BLIND_PROMPT,
        image.caption if semantic == "caption" else "",
    )


def check_captions(manifest: Manifest, setting: str = "full") -> None:
    """Refuse, before anything is restored, a semantic prompt of ``setting`` that the prompt reader cannot
    encode (``spire_core.models.prompt_windows``: a non-finite weight, a textual-inversion embedding).

    Raises:
        PromptTextError: naming the manifest and the image.
    """
    for image in manifest.images:
        try:
            parse_weights(prompts_for(image, setting)[1])
        except PromptTextError as error:
            raise PromptTextError(f"{manifest.root / MANIFEST}: {image.name}'s caption: {error}") from None


def restore_benchmark(
    pipeline: Any,
    bench: str | os.PathLike,
    out: str | os.PathLike,
    setting: str = "full",
    settings: RestoreSettings | None = None,
    scheduler_options: dict[str, Any] | None = None,
    skip_existing: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Restore every degraded image of a benchmark with ``pipeline`` (a ``spire_core.restoration.SpirePipeline``).

    Each image is restored alone with noise from ``settings.seed`` (so an image's result does not depend on the
    others), at the degraded image's own size (``upsample`` off: the benchmark's degraded images are already at
    the clean size). Writes ``out/NAME.png`` and ``out/restore.json`` (the settings).

    Args:
        settings: how to restore (``RestoreSettings``; default: its defaults, the paper's).

    Returns:
        The written (or, with ``skip_existing``, kept) image paths in manifest order.

    Raises:
        PromptTextError: a caption the prompt reader refuses (``spire_core.models.prompt_windows``), before any
            image is restored; the message names the image.
    """
    from ..imageio import load_image, save_image

    manifest = load_manifest(bench)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = replace(settings or RestoreSettings(), upsample=False).validate()
    record = {
        "bench": str(manifest.root),
        "setting": setting,
        **{k: v for k, v in asdict(settings).items() if k != "upsample"},
        "scheduler_options": dict(scheduler_options or {}),
    }
    check_captions(manifest, setting)
    (out / RESTORE_SETTINGS).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    written = []
    for image in progress(manifest.images, desc="restore", unit="image"):
        target = out / f"{image.name}.png"
        written.append(target)
        if skip_existing and target.is_file():
            continue
        restoration, semantic = prompts_for(image, setting)
        degraded = load_image(manifest.root / image.degraded)
        restored = pipeline.restore(
            degraded, semantic, restoration, scheduler_options=scheduler_options, settings=settings
        )
        save_image(restored[0], target)
        if log:
            log(f"{image.name}: restored ({restoration!r}, semantic {semantic!r})")
    return written


def match_outputs(manifest: Manifest, outputs: str | os.PathLike) -> dict[str, Path]:
    """Benchmark image name -> restored file in ``outputs``.

    Two layouts are accepted: ``NAME.png`` for every image (what ``restore`` writes), or exactly one ComfyUI
    ``SaveImage`` file per image (``prefix_00001_.png``, ``prefix_00002_.png``, ... with one prefix), which are
    matched to the manifest's images in order (the manifest is sorted by name; restore the degraded images in
    that order, one per queue run).

    Raises:
        BenchmarkError: neither layout fits; the message names what is missing.
    """
    folder = Path(outputs)
    if not folder.is_dir():
        raise BenchmarkError(f"--outputs {folder} is not a folder of restored images")
    by_name = {image.name: folder / f"{image.name}.png" for image in manifest.images}
    missing = [name for name, path in by_name.items() if not path.is_file()]
    if not missing:
        return by_name
    numbered: dict[str, list[tuple[int, Path]]] = {}
    for path in folder.iterdir():
        found = COMFY_NAME.match(path.name)
        if found and path.is_file():
            numbered.setdefault(found["prefix"], []).append((int(found["counter"]), path))
    fitting = [files for files in numbered.values() if len(files) == len(manifest.images)]
    if len(fitting) == 1:
        ordered = [path for _, path in sorted(fitting[0])]
        return {image.name: path for image, path in zip(manifest.images, ordered)}
    shown = ", ".join(f"{name}.png" for name in missing[:5]) + (" ..." if len(missing) > 5 else "")
    found_comfy = ", ".join(f"{prefix}_* ({len(files)} files)" for prefix, files in sorted(numbered.items()))
    raise BenchmarkError(
        f"{folder} does not hold one restored image per benchmark image: {len(missing)} of {len(manifest.images)} "
        f"NAME.png files are missing ({shown}), and no single ComfyUI prefix_00001_.png series has exactly "
        f"{len(manifest.images)} files{f' (found {found_comfy})' if found_comfy else ''}"
    )
