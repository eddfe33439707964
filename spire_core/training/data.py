"""Training data: a folder of images with captions, read as an endless, reproducible stream of random crops.

Captions come from a COCO captions JSON, sidecar ``.txt`` files, or nowhere (empty semantic prompt). The
stream visits the images epoch by epoch in a seeded random order; position k of the stream always yields
the same crop and caption (``seeds.seed_for``), so a run can be resumed from its position alone and every
process of a multi-GPU run takes its own disjoint slice of each global batch.

Bad data never crashes an epoch in ``on_bad="skip"`` mode: the folder scan leaves out files that are not
readable images, images too small for the crop and images without a caption (``ScanReport`` counts them);
an image that fails to decode later is replaced by the next one in the epoch order and counted per batch.
With ``on_bad="error"`` the first bad file stops the run with a ``DataError`` naming it.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..captions import read_coco_captions
from ..models.prompt_windows import PromptTextError, parse_weights, prompt_windows
from .config import DataConfig
from .seeds import generator_for, seed_for

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
"""File extensions the scan treats as images (case-insensitive)."""

BAD_REASONS = ("unreadable", "too_small", "missing_caption", "bad_caption")
"""Why an image was left out: not a decodable image, smaller than the crop allows, no caption, or a caption the
prompt reader refuses (``spire_core.models.prompt_windows``: a non-finite weight, a textual-inversion embedding)."""

_EXAMPLES = 5  # bad files named per reason in logs and errors
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


class DataError(ValueError):
    """Training data is unusable (or bad, with ``data.on_bad="error"``); the message names the file."""


@dataclass(frozen=True)
class ImageRecord:
    """One usable training image.

    Attributes:
        path: the image file.
        captions: alternative semantic prompts (one is drawn per sample); empty: the empty prompt.
        width, height: size in pixels as stored.
    """

    path: Path
    captions: tuple[str, ...]
    width: int
    height: int


@dataclass
class ScanReport:
    """What a folder scan found.

    Attributes:
        records: usable images, sorted by path.
        caption_source: ``"coco"``, ``"txt"`` or ``"none"`` (``"auto"`` resolved).
        skipped: reason (``BAD_REASONS``) -> files left out for it.
    """

    records: list[ImageRecord]
    caption_source: str
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Reason -> number of files left out (every reason present, zeros included)."""
        return {reason: len(self.skipped.get(reason, [])) for reason in BAD_REASONS}

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary for the log: counts and a few example files per reason."""
        return {
            "images": len(self.records),
            "caption_source": self.caption_source,
            "skipped": self.counts(),
            "examples": {reason: paths[:_EXAMPLES] for reason, paths in self.skipped.items() if paths},
        }


def load_coco_captions(path: str | Path) -> dict[str, list[str]]:
    """File name -> captions from a COCO captions JSON (``spire_core.captions.read_coco_captions``)."""
    return read_coco_captions(path, DataError, "data.captions_file")


def read_sidecar(image: Path) -> list[str] | None:
    """Captions in ``image``'s sidecar ``.txt`` (one per non-empty line), or ``None`` when there is none."""
    sidecar = image.with_suffix(".txt")
    if not sidecar.is_file():
        return None
    try:
        lines = sidecar.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return [line.strip() for line in lines if line.strip()]


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, hidden files and folders skipped)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(root) / name)
    return sorted(found)


def _too_small(width: int, height: int, config: DataConfig) -> bool:
    if config.resize == "short_side":
        return min(width, height) * config.max_upscale < config.resolution
    return min(width, height) < config.resolution


def _resolve_caption_source(config: DataConfig, images: list[Path]) -> str:
    if config.captions != "auto":
        return config.captions
    if config.captions_file:
        return "coco"
    return "txt" if any(p.with_suffix(".txt").is_file() for p in images) else "none"


MAX_CAPTION_WINDOWS = 4
"""The most 77-token windows a training caption may take (300 tokens): a batch of captions of 1 to 4 windows
always shares one context length within ``spire_core.models.prompt_windows.TILE_LIMIT``."""


def refuse_long_captions(report: ScanReport, tokenizer: Any, on_bad: str = "skip") -> ScanReport:
    """``report`` less the images with a caption of more than ``MAX_CAPTION_WINDOWS`` windows (``bad_caption``),
    counted like the scan's own. Needs the base's tokenizer, so it runs once the base is loaded; captions of at
    most 75 bytes (one window: every token covers at least one byte) are not tokenized.

    Raises:
        DataError: with ``on_bad="error"``, the first such image.
    """
    records, skipped = [], {reason: list(paths) for reason, paths in report.skipped.items()}
    for record in report.records:
        long = [c for c in record.captions if len(c.encode("utf-8")) > 75]
        windows = max((prompt_windows(tokenizer, c).ids.shape[0] for c in long), default=1)
        if windows <= MAX_CAPTION_WINDOWS:
            records.append(record)
            continue
        detail = (
            f"a caption takes {windows} windows of 75 tokens; training captions take at most {MAX_CAPTION_WINDOWS} "
            f"({MAX_CAPTION_WINDOWS * 75} tokens)"
        )
        if on_bad == "error":
            raise DataError(
                f"{record.path}: {detail} (data.on_bad='error'; set data.on_bad='skip' to leave such files out)"
            )
        skipped.setdefault("bad_caption", []).append(str(record.path))
    if not records:
        raise DataError(f"no usable training image: every caption is over {MAX_CAPTION_WINDOWS * 75} tokens")
    return ScanReport(records, report.caption_source, skipped)


def _refused_caption(captions: list[str]) -> str | None:
    """Why the prompt reader refuses one of ``captions`` (the first such), or ``None``."""
    for caption in captions:
        try:
            parse_weights(caption)
        except PromptTextError as error:
            return f"caption {caption!r} cannot be encoded: {error}"
    return None


def scan_folder(config: DataConfig) -> ScanReport:
    """Find usable images and their captions; never decodes pixels (headers only).

    Raises:
        DataError: the folder is missing or holds no usable image; with ``on_bad="error"``, any bad file.
    """
    folder = Path(config.folder)
    if not folder.is_dir():
        raise DataError(f"data.folder {folder} is not a folder; expected a folder of training images")
    images = list_images(folder)
    source = _resolve_caption_source(config, images)
    coco = load_coco_captions(config.captions_file) if source == "coco" else {}
    records: list[ImageRecord] = []
    skipped: dict[str, list[str]] = {reason: [] for reason in BAD_REASONS}

    def bad(reason: str, path: Path, detail: str) -> None:
        if config.on_bad == "error":
            raise DataError(f"{path}: {detail} (data.on_bad='error'; set data.on_bad='skip' to leave such files out)")
        skipped[reason].append(str(path))

    for path in images:
        if source == "coco":
            captions = coco.get(path.relative_to(folder).as_posix(), coco.get(path.name))
        elif source == "txt":
            captions = read_sidecar(path)
        else:
            captions = []
        if captions is None or (source != "none" and not captions):
            what = f"no caption in {config.captions_file}" if source == "coco" else f"no caption in {path.stem}.txt"
            bad("missing_caption", path, what)
            continue
        refused = _refused_caption(captions)
        if refused:
            bad("bad_caption", path, refused)
            continue
        try:
            with Image.open(path) as image:
                width, height = image.size
        except _DECODE_ERRORS as error:
            bad("unreadable", path, f"not a readable image ({type(error).__name__}: {error})")
            continue
        if _too_small(width, height, config):
            need = f"a short side of at least {math.ceil(config.resolution / config.max_upscale)} px"
            if config.resize == "none":
                need = f"at least {config.resolution}x{config.resolution} px"
            bad("too_small", path, f"{width}x{height} px is too small for {config.resolution} px crops; need {need}")
            continue
        records.append(ImageRecord(path=path, captions=tuple(captions), width=width, height=height))
    if not records:
        report = ScanReport(records, source, {k: v for k, v in skipped.items() if v})
        raise DataError(
            f"data.folder {folder} has no usable training image ({len(images)} image files found; left out: "
            f"{report.counts()}). Expected images of at least {config.resolution} px with captions from "
            f"{source!r}."
        )
    return ScanReport(records=records, caption_source=source, skipped={k: v for k, v in skipped.items() if v})


def decode_crop(
    record: ImageRecord, config: DataConfig, generator: torch.Generator, center: bool = False
) -> torch.Tensor:
    """Decode one image and take a crop of ``config.resolution`` pixels.

    Args:
        record: the image.
        config: resolution, resize mode and flip.
        generator: draws the crop position and the flip (CPU generator).
        center: take the centre crop without flipping (validation).

    Returns:
        (3, R, R) uint8 RGB crop.

    Raises:
        OSError, ValueError, ...: the file cannot be decoded (see ``_DECODE_ERRORS``).
    """
    size = config.resolution
    with Image.open(record.path) as image:
        image.load()
        image = image.convert("RGB")
    width, height = image.size
    if config.resize == "short_side" and min(width, height) != size:
        scale = size / min(width, height)
        width, height = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    if width < size or height < size:
        raise ValueError(f"{record.path} decodes to {width}x{height} px, smaller than the {size} px crop")
    if center:
        left, top, flip = (width - size) // 2, (height - size) // 2, False
    else:
        left = int(torch.randint(0, width - size + 1, (), generator=generator))
        top = int(torch.randint(0, height - size + 1, (), generator=generator))
        flip = config.hflip and bool(torch.rand((), generator=generator) < 0.5)
    crop = np.asarray(image.crop((left, top, left + size, top + size)))
    tensor = torch.from_numpy(crop.copy()).permute(2, 0, 1).contiguous()
    return tensor.flip(-1) if flip else tensor


def choose_caption(record: ImageRecord, generator: torch.Generator) -> str:
    """One of the record's captions, uniformly; ``""`` when it has none."""
    if not record.captions:
        return ""
    return record.captions[int(torch.randint(0, len(record.captions), (), generator=generator))]


class CropStream(torch.utils.data.Dataset):
    """Map-style dataset over the endless stream: item k -> the crop at stream position k.

    Position k is sample ``k % N`` of epoch ``k // N`` (N usable images, each epoch a seeded permutation).
    An image that fails to decode is replaced by the next one of the epoch order (``on_bad="skip"``) and
    reported in the item's ``skipped`` list.
    """

    def __init__(self, records: list[ImageRecord], config: DataConfig, seed: int) -> None:
        if not records:
            raise DataError("CropStream needs at least one image")
        self.records = records
        self.config = config
        self.seed = seed
        self._order: tuple[int, torch.Tensor] | None = None
        self._failed: set[int] = set()

    def __len__(self) -> int:  # the stream is endless; DataLoader only needs a length for samplers it builds
        return 2**62

    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of record indices for ``epoch``."""
        if self._order is None or self._order[0] != epoch:
            generator = generator_for(self.seed, "epoch", epoch)
            self._order = (epoch, torch.randperm(len(self.records), generator=generator))
        return self._order[1]

    def __getitem__(self, position: int) -> dict[str, Any]:
        """{"image": (3, R, R) uint8, "caption": str, "position": int, "skipped": [(path, reason), ...]}."""
        n = len(self.records)
        epoch, offset = divmod(int(position), n)
        order = self.order(epoch)
        skipped: list[tuple[str, str]] = []
        for attempt in range(n):
            index = int(order[(offset + attempt) % n])
            record = self.records[index]
            if index in self._failed:
                continue
            try:
                image = decode_crop(record, self.config, generator_for(self.seed, "crop", position, attempt))
            except _DECODE_ERRORS as error:
                if self.config.on_bad == "error":
                    raise DataError(
                        f"{record.path}: cannot decode image ({type(error).__name__}: {error}) "
                        "(data.on_bad='error'; set data.on_bad='skip' to leave such files out)"
                    ) from None
                self._failed.add(index)
                skipped.append((str(record.path), "unreadable"))
                continue
            caption = choose_caption(record, generator_for(self.seed, "caption", position))
            return {"image": image, "caption": caption, "position": int(position), "skipped": skipped}
        raise DataError(f"none of the {n} training images could be decoded; see the skipped files in the log")


def collate(items: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack stream items: {"images": (B, 3, R, R) uint8, "captions", "positions", "skipped"}."""
    return {
        "images": torch.stack([item["image"] for item in items]),
        "captions": [item["caption"] for item in items],
        "positions": [item["position"] for item in items],
        "skipped": [entry for item in items for entry in item["skipped"]],
    }


def micro_batch_positions(micro_batch: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """Stream positions of one process's share of global micro-batch ``micro_batch``.

    Global micro-batch m covers positions ``[m*B*W, (m+1)*B*W)``; process r takes the r-th slice of B.
    """
    start = (micro_batch * world_size + rank) * batch_size
    return list(range(start, start + batch_size))


class StreamBatchSampler(torch.utils.data.Sampler):
    """Endless batch sampler: this process's positions for micro-batches ``start, start + 1, ...``."""

    def __init__(self, batch_size: int, rank: int, world_size: int, start: int = 0) -> None:
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        micro_batch = self.start
        while True:
            yield micro_batch_positions(micro_batch, self.batch_size, self.rank, self.world_size)
            micro_batch += 1


def make_loader(
    stream: CropStream, batch_size: int, rank: int, world_size: int, start: int, num_workers: int, pin: bool
) -> torch.utils.data.DataLoader:
    """A DataLoader over this process's micro-batches from micro-batch ``start`` on."""
    return torch.utils.data.DataLoader(
        stream,
        batch_sampler=StreamBatchSampler(batch_size, rank, world_size, start),
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin,
        worker_init_fn=_quiet_worker,
    )


def _quiet_worker(worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding is per-image; threads would only fight the training process


def skipped_counts(entries: list[tuple[str, str]]) -> dict[str, int]:
    """Reason -> count for a batch's ``skipped`` list."""
    return dict(Counter(reason for _, reason in entries))


__all__ = [
    "BAD_REASONS",
    "IMAGE_EXTENSIONS",
    "CropStream",
    "DataError",
    "ImageRecord",
    "ScanReport",
    "StreamBatchSampler",
    "choose_caption",
    "collate",
    "decode_crop",
    "list_images",
    "load_coco_captions",
    "make_loader",
    "micro_batch_positions",
    "read_sidecar",
    "scan_folder",
    "seed_for",
    "skipped_counts",
]
