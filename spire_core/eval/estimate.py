"""Accuracy of the reference-free degradation estimates (``spire_core.estimate``) on our own degradations.

Clean photos are centre-cropped, degraded with seeded random parameters from the single-type presets (noise, blur,
jpeg, downsample), the two-stage paper preset and a blur + noise + JPEG mix (``mixed``: the hard case for noise),
and read back without their originals. The truth is what the training pairs name (``effective_request``). Per
degradation type: the median absolute relative error (JPEG: the absolute error in quality steps) over the cases
whose truth is in the targeted range, how often a present degradation is named and an absent one is not, and for
the noise, ``skimage.restoration.estimate_sigma`` on the same images side by side (when PyWavelets is installed).
JPEG qualities are also read from the file's own quantisation tables (the degraded crop saved by the real codec).

    python -m spire_core.eval estimate --out results/estimate-accuracy.json --plot docs/estimate_accuracy.png
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..degradation import degrade, effective_request, get_preset, manual_params, sample_params
from ..degradation.jpeg import jpeg_encode
from ..estimate import estimate_one, quality_from_tables

REPORT_FORMAT = "spire-estimate-accuracy/1"

SETS = ("noise", "blur", "jpeg", "downsample", "mixed", "paper")
"""Degradation sets: the single-type presets, the blur + noise + JPEG mix, the two-stage paper preset."""

TARGETS = {
    "denoise": {"min_truth": 0.02, "median_rel_error": 0.15},
    "deblur": {"min_truth": 1.0, "median_rel_error": 0.25},
    "dejpeg": {"max_abs_error": 8},
    "upsample": {"median_rel_error": 0.20},
    "clean": {"nothing_named": 0.9},
}
"""The issue's targets on the single-type presets (each type on its own preset)."""

SINGLE = {"noise": "denoise", "blur": "deblur", "jpeg": "dejpeg", "downsample": "upsample"}
"""Single-type set -> the clause it degrades."""

MIXED_RANGES = {"blur": (0.5, 2.5), "noise": (0.02, 0.15), "jpeg": (30, 90)}
"""The ``mixed`` set: isotropic blur, colour Gaussian noise, then JPEG, uniform in these ranges."""


CLEAN_SKIMAGE = ("chelsea", "camera", "moon", "brick", "gravel")
"""scikit-image photos used. Its coins, grass and immunohistochemistry PNGs are left out: they are decoded JPEGs
(their luma sits on the lattice of libjpeg's tables at quality 85, 90 and 74), so they are not clean."""


def bundled_photos(root: Path | None = None) -> dict[str, torch.Tensor]:
    """The bundled samples (docs/samples) and scikit-image's clean PNG photos, (1, C, H, W) float in [0, 1]."""
    from ..imageio import load_image

    root = root or Path(__file__).resolve().parents[2] / "docs" / "samples"
    photos = {p.stem: load_image(p) for p in sorted(root.glob("*.png"))}
    try:
        import skimage.data
    except ImportError:
        return photos
    for name in CLEAN_SKIMAGE:
        array = getattr(skimage.data, name)()
        array = array[..., None] if array.ndim == 2 else array[..., :3]
        photos[name] = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div(255).unsqueeze(0)
    return photos


def centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    side = min(size, h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[..., top : top + side, left : left + side].contiguous()


def _mixed_params(generator: torch.Generator, seed: int):  # noqa: ANN202
    u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
    (b0, b1), (n0, n1), (q0, q1) = MIXED_RANGES["blur"], MIXED_RANGES["noise"], MIXED_RANGES["jpeg"]
    return manual_params(
        blur_sigma=b0 + u[0] * (b1 - b0),
        noise_sigma=n0 + u[1] * (n1 - n0),
        jpeg_quality=int(round(q0 + u[2] * (q1 - q0))),
        seed=seed,
    )


def _skimage_sigma(image: torch.Tensor) -> float | None:
    try:
        from skimage.restoration import estimate_sigma
    except ImportError:
        return None
    array = image.permute(1, 2, 0).double().numpy()
    try:
        if array.shape[-1] == 1:
            return float(estimate_sigma(array[..., 0]))
        return float(estimate_sigma(array, channel_axis=-1, average_sigmas=True))
    except ImportError:  # PyWavelets missing
        return None


def run_cases(
    photos: dict[str, torch.Tensor],
    sets: Sequence[str] = SETS,
    per_photo: int = 2,
    crop: int = 256,
    seed: int = 0,
    anchor: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """One record per degraded (and per clean) crop: the truth, every estimate, and the anchors."""
    records = []
    names = sorted(photos)
    for set_index, set_name in enumerate(("clean", *sets)):
        for photo_index, name in enumerate(names):
            clean = centre_crop(photos[name], crop)
            draws = 1 if set_name == "clean" else per_photo
            generator = torch.Generator().manual_seed(seed * 1_000_003 + set_index * 1009 + photo_index)
            if set_name == "clean":
                params = [manual_params()]
            elif set_name == "mixed":
                params = [_mixed_params(generator, seed * 7919 + photo_index * 31 + k) for k in range(draws)]
            else:
                params = list(sample_params(get_preset(set_name), generator, draws))
            degraded = degrade(clean.expand(draws, -1, -1, -1).contiguous(), params).images
            for k in range(draws):
                truth = effective_request(params[k])
                estimates = estimate_one(degraded[k].double())
                record = {
                    "set": set_name,
                    "photo": name,
                    "draw": k,
                    "truth": {key: getattr(truth, key) for key in ("upsample", "deblur", "denoise", "dejpeg")},
                    "estimate": estimates.to_dict(),
                }
                if anchor and set_name in ("clean", "noise", "mixed"):
                    record["skimage_sigma"] = _skimage_sigma(degraded[k])
                if set_name == "jpeg":
                    record["file_quality"] = _quality_of_file(clean, params[k])
                records.append(record)
            if log:
                log(f"{set_name}: {name} done")
    return records


def _quality_of_file(clean: torch.Tensor, params) -> int:  # noqa: ANN001
    """Write the single JPEG step of a ``jpeg``-preset degradation as a real file and read its quality back from
    the file's quantisation tables."""
    from PIL import Image

    quality = params.stages[0].jpeg.quality
    pixels = (clean[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    with Image.open(io.BytesIO(jpeg_encode(pixels, quality))) as image:
        return int(quality_from_tables(image.quantization).value)


def _error(key: str, estimate: float, truth: float) -> float:
    if key == "dejpeg":
        return abs(estimate - truth)
    return abs(estimate / truth - 1.0)


def _estimate_value(record: dict, key: str) -> float:
    """The estimate as the prompt would carry it: the value when named, else 'none' (0; 1x; quality 100)."""
    e = record["estimate"][key]
    return e["value"]


def summarize(records: list[dict]) -> dict:
    """Per set and clause: cases, median error over the targeted range, named rates; the noise anchor."""
    out: dict = {}
    for set_name in sorted({r["set"] for r in records}, key=lambda s: ("clean", *SETS).index(s)):
        rows = [r for r in records if r["set"] == set_name]
        entry: dict = {"cases": len(rows)}
        if set_name == "clean":
            nothing = sum(not any(r["estimate"][k]["present"] for k in r["estimate"]) for r in rows)
            entry["nothing_named"] = nothing / len(rows)
            entry["named"] = {k: sum(r["estimate"][k]["present"] for r in rows) for k in rows[0]["estimate"]}
            out[set_name] = entry
            continue
        for key in ("upsample", "deblur", "denoise", "dejpeg"):
            present = [r for r in rows if r["truth"][key] is not None]
            absent = [r for r in rows if r["truth"][key] is None]
            stats: dict = {"present": len(present)}
            if present:
                stats["named_when_present"] = sum(r["estimate"][key]["present"] for r in present) / len(present)
                low = TARGETS.get(key, {}).get("min_truth", 0.0)
                scored = [r for r in present if r["truth"][key] >= low]
                errors = [_error(key, _estimate_value(r, key), r["truth"][key]) for r in scored]
                if errors:
                    stats["scored"] = len(errors)
                    stats["median_abs_error" if key == "dejpeg" else "median_rel_error"] = float(np.median(errors))
                    if key == "dejpeg":
                        stats["within_8"] = float(np.mean([e <= 8 for e in errors]))
                if key == "denoise" and all(r.get("skimage_sigma") is not None for r in scored) and scored:
                    anchor = [abs(r["skimage_sigma"] / r["truth"][key] - 1.0) for r in scored]
                    stats["skimage_median_rel_error"] = float(np.median(anchor))
                if key == "dejpeg" and all("file_quality" in r for r in present):
                    stats["file_exact"] = float(np.mean([r["file_quality"] == r["truth"][key] for r in present]))
            if absent:
                stats["named_when_absent"] = sum(r["estimate"][key]["present"] for r in absent) / len(absent)
            entry[key] = stats
        out[set_name] = entry
    return out


def check_targets(summary: dict) -> dict[str, bool]:
    """Whether each of the issue's targets holds (single-type presets and the clean photos)."""
    held = {}
    for set_name, key in SINGLE.items():
        stats = summary.get(set_name, {}).get(key)
        if not stats or "scored" not in stats:
            continue
        if key == "dejpeg":
            held["dejpeg_pixels_within_8"] = stats["median_abs_error"] <= TARGETS[key]["max_abs_error"]
            held["dejpeg_file_exact"] = stats.get("file_exact") == 1.0
        else:
            held[key] = stats["median_rel_error"] <= TARGETS[key]["median_rel_error"]
    if "clean" in summary:
        held["clean_nothing_named"] = summary["clean"]["nothing_named"] >= TARGETS["clean"]["nothing_named"]
    noise = summary.get("noise", {}).get("denoise", {})
    if "skimage_median_rel_error" in noise:
        held["noise_at_least_skimage"] = noise["median_rel_error"] <= noise["skimage_median_rel_error"]
    mixed = summary.get("mixed", {}).get("denoise", {})
    if "skimage_median_rel_error" in mixed:
        held["noise_better_than_skimage_mixed"] = mixed["median_rel_error"] <= 0.5 * mixed["skimage_median_rel_error"]
    return held


def markdown(summary: dict) -> str:
    """The accuracy table: one row per set and degradation type."""
    lines = [
        "| set | type | cases (scored) | median error | named when present | named when absent | skimage |",
        "|---|---|---|---|---|---|---|",
    ]
    for set_name, entry in summary.items():
        if set_name == "clean":
            lines.append(f"| clean | (any) | {entry['cases']} | | | {1 - entry['nothing_named']:.0%} | |")
            continue
        for key in ("upsample", "deblur", "denoise", "dejpeg"):
            stats = entry.get(key, {})
            if not stats.get("present") and not stats.get("named_when_absent"):
                continue
            if "median_abs_error" in stats:
                error = f"{stats['median_abs_error']:.1f} steps"
                if "file_exact" in stats:
                    error += f" (file: {stats['file_exact']:.0%} exact)"
            elif "median_rel_error" in stats:
                error = f"{stats['median_rel_error']:.1%}"
            else:
                error = ""
            named = f"{stats['named_when_present']:.0%}" if "named_when_present" in stats else ""
            absent = f"{stats['named_when_absent']:.0%}" if "named_when_absent" in stats else ""
            anchor = f"{stats['skimage_median_rel_error']:.1%}" if "skimage_median_rel_error" in stats else ""
            cases = f"{stats.get('present', 0)} ({stats.get('scored', 0)})"
            lines.append(f"| {set_name} | {key} | {cases} | {error} | {named} | {absent} | {anchor} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: str | Path) -> Path:
    """Scatter of estimate against truth, one panel per degradation type, one colour per set."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(14, 3.6), dpi=100)
    axes = figure.subplots(1, 4)
    colours = dict(zip(SETS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:grey")))
    for ax, (key, label) in zip(axes, (("denoise", "noise sigma"), ("deblur", "blur sigma (px)"),
                                       ("dejpeg", "JPEG quality"), ("upsample", "upsample factor"))):  # fmt: skip
        top = 0.0
        for set_name in SETS:
            rows = [r for r in records if r["set"] == set_name and r["truth"][key] is not None]
            if not rows:
                continue
            truth = [r["truth"][key] for r in rows]
            estimate = [r["estimate"][key]["value"] for r in rows]
            top = max(top, *truth, *estimate)
            ax.scatter(truth, estimate, s=10, alpha=0.7, color=colours[set_name], label=set_name)
        ax.plot([0, top], [0, top], color="black", linewidth=0.8)
        ax.set_xlabel(f"true {label}")
        ax.set_ylabel("estimate")
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


__all__ = ["SETS", "TARGETS", "bundled_photos", "check_targets", "markdown", "plot", "run_cases", "summarize"]
