"""Score restored images against a benchmark and write the report: per-image CSV, summary JSON, a Markdown
table and plots of each metric against the prompted strengths.

Metrics (``spire_core.eval.metrics``), each for the restored image and, as the baseline, the degraded one:

- PSNR (dB, RGB, [0, 1] scale) and SSIM (scikit-image's Gaussian-window SSIM, averaged over RGB): always.
- LPIPS (AlexNet, v0.1): only with ``lpips=`` a local ``lpips_alex.safetensors`` (layout and conversion:
  ``metrics.LPIPS_CONVERSION``). Without it the report says how to get it.
- FID: this module runs no Inception network. It computes the Frechet distance between two sets of Inception
  features or their statistics made elsewhere (``load_fid_statistics``: pytorch-fid's ``--save-stats`` files,
  or (N, D) feature arrays) and says so in the report; without them FID is left out with that explanation.

Files written to ``report_dir``: ``metrics.csv``, ``summary.json``, ``summary.md`` and ``plot_<clause>.png``
for every prompted clause (deblur, denoise, upsample, dejpeg) some image names.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import progress
from .benchmark_set import PROMPTED_KEYS, BenchmarkError, Manifest, load_manifest, match_outputs
from .metrics import LPIPS_FILENAME, load_lpips, psnr_per_image, ssim

SCORES_FORMAT = "spire-benchmark-scores/1"
METRIC_NAMES = ("psnr", "ssim", "lpips")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
ABSENT_VALUE = {"upsample": 1.0, "deblur": 0.0, "denoise": 0.0, "dejpeg": 100}
"""Where an image whose prompt does not name a clause sits on that clause's plot axis (no such degradation)."""
AXIS_LABELS = {
    "upsample": "prompted upsample factor (x)",
    "deblur": "prompted deblur sigma (pixels)",
    "denoise": "prompted denoise sigma ([0, 1] scale)",
    "dejpeg": "prompted JPEG quality",
}

LPIPS_MISSING = (
    f"LPIPS not computed: give --lpips PATH to a local {LPIPS_FILENAME} (nothing is downloaded; how to make the "
    "file from the official weights: spire_core.eval.metrics.LPIPS_CONVERSION, or docs/evaluation.md)"
)
FID_MISSING = (
    "FID not computed: this tool runs no Inception network. Compute Inception features or statistics of clean/ "
    "and of the restored images elsewhere (e.g. pytorch-fid --save-stats) and pass them with --fid-features "
    "CLEAN RESTORED"
)
FID_SMALL = "FID over fewer than 2048 images has a rank-deficient covariance and is biased high; compare like with like"


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between two Gaussians: ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``.

    In float64. ``tr((S1 S2)^(1/2))`` is computed as ``tr((S1^(1/2) S2 S1^(1/2))^(1/2))`` (the same eigenvalues)
    from symmetric eigendecompositions, with rounding-level negative eigenvalues clipped to 0: stable for the
    singular covariances of small sets, and equal to pytorch-fid's ``scipy.linalg.sqrtm`` route up to rounding.

    Raises:
        ValueError: shapes that do not match (statistics from different feature extractors).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"FID statistics do not match: means {mu1.shape} and {mu2.shape}, covariances {sigma1.shape} and "
            f"{sigma2.shape}; both sets must come from the same feature extractor"
        )
    diff = mu1 - mu2
    root = _psd_sqrt(sigma1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sigma2 @ root), 0, None)).sum()
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * cross)


def load_fid_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(mean, covariance, number of images or None) from a features or statistics file.

    Accepted: ``.npz`` with ``mu`` and ``sigma`` (pytorch-fid ``--save-stats``); ``.npz`` with ``features``
    (or a single array) of shape (N, D); ``.npy`` of shape (N, D). Covariances of features use N - 1.

    Raises:
        FileNotFoundError: no file; ValueError: none of the layouts above.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID features file {path} does not exist")
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if "mu" in data.files and "sigma" in data.files:
                return np.asarray(data["mu"]), np.asarray(data["sigma"]), None
            key = "features" if "features" in data.files else (data.files[0] if len(data.files) == 1 else None)
            if key is None:
                raise ValueError(f"{path}: expected arrays 'mu' and 'sigma', or 'features', found {data.files}")
            features = np.asarray(data[key])
    else:
        features = np.asarray(data)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"{path}: features must be an (N, D) array with N >= 2, got shape {features.shape}")
    features = features.astype(np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False), int(features.shape[0])


def _read(path: Path) -> torch.Tensor:
    from ..imageio import load_image

    return load_image(path)


def _fit(restored: torch.Tensor, clean: torch.Tensor, name: str, path: Path, resize: bool) -> tuple[torch.Tensor, str]:
    if restored.shape[-2:] == clean.shape[-2:]:
        return restored, ""
    (h, w), (ch, cw) = restored.shape[-2:], clean.shape[-2:]
    if not resize:
        raise BenchmarkError(
            f"{path} is {w}x{h} but the clean image {name} is {cw}x{ch}: metrics compare pixel for pixel. Outputs of "
            "the ComfyUI 'Restore (SPIRE)' node are N times larger for prompts with 'Upsample by Nx'; pass --resize "
            "to bring such outputs to the clean size (antialiased bicubic; recorded in the CSV), or restore with "
            "python -m spire_core.eval restore, which keeps the size"
        )
    fitted = F.interpolate(restored, size=(ch, cw), mode="bicubic", align_corners=False, antialias=True)
    return fitted.clamp(0, 1), f"{w}x{h}"


def _number(value: float | None) -> float | str | None:
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)


def score_benchmark(
    bench: str | os.PathLike,
    outputs: str | os.PathLike,
    report_dir: str | os.PathLike | None = None,
    lpips: str | os.PathLike | None = None,
    fid_features: tuple[str | os.PathLike, str | os.PathLike] | None = None,
    resize: bool = False,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Score the restored images in ``outputs`` against the benchmark's clean images and write the report.

    Args:
        bench: benchmark folder (``build_benchmark``).
        outputs: restored images (``NAME.png``, or a ComfyUI ``prefix_00001_.png`` series; ``match_outputs``).
        report_dir: where the report goes (default: ``outputs``).
        lpips: local ``lpips_alex.safetensors``; ``None`` leaves LPIPS out (with a note saying how to add it).
        fid_features: (clean, restored) features or statistics files (``load_fid_statistics``); ``None`` leaves
            FID out with a note.
        resize: bring restored images of another size to the clean size instead of refusing them.
        device: where LPIPS runs.

    Returns:
        The summary (also ``summary.json``): ``{"format", "count", "metrics": {metric: {"restored", "degraded",
        "change"}}, "fid", "notes", "files"}``; PSNR means are over per-image values (``"inf"`` when a pair is
        identical).

    Raises:
        BenchmarkError: a missing manifest or output, or a size mismatch without ``resize``.
        FileNotFoundError, ValueError: an LPIPS or FID file that is missing or malformed (with what was expected).
    """
    manifest = load_manifest(bench)
    matched = match_outputs(manifest, outputs)
    network = load_lpips(lpips, device=device) if lpips is not None else None
    rows = []
    for image in progress(manifest.images, desc="score", unit="image"):
        clean = _read(manifest.root / image.clean)
        degraded = _read(manifest.root / image.degraded)
        restored, resized_from = _fit(_read(matched[image.name]), clean, image.name, matched[image.name], resize)
        pair = torch.cat([restored, degraded])
        reference = torch.cat([clean, clean])
        psnr_values = psnr_per_image(pair, reference).tolist()
        ssim_values = ssim(pair, reference).tolist()
        lpips_values = network(pair, reference).tolist() if network is not None else [None, None]
        rows.append(
            {
                "name": image.name,
                "output": matched[image.name].name,
                "psnr": psnr_values[0],
                "ssim": ssim_values[0],
                "lpips": lpips_values[0],
                "psnr_degraded": psnr_values[1],
                "ssim_degraded": ssim_values[1],
                "lpips_degraded": lpips_values[1],
                **{key: image.prompted.get(key) for key in PROMPTED_KEYS},
                "restoration_prompt": image.restoration_prompt,
                "resized_from": resized_from,
            }
        )
    summary = summarise(rows, manifest)
    notes = summary["notes"]
    if network is None:
        notes.append(LPIPS_MISSING)
    if fid_features is None:
        notes.append(FID_MISSING)
    else:
        mu1, sigma1, n1 = load_fid_statistics(fid_features[0])
        mu2, sigma2, n2 = load_fid_statistics(fid_features[1])
        summary["fid"] = frechet_distance(mu1, sigma1, mu2, sigma2)
        notes.append(f"FID from the given features: {Path(fid_features[0]).name} vs {Path(fid_features[1]).name}")
        if any(n is not None and n < 2048 for n in (n1, n2)):
            notes.append(FID_SMALL)
    if any(row["resized_from"] for row in rows):
        count = sum(1 for row in rows if row["resized_from"])
        notes.append(f"{count} restored images had another size and were resized to the clean size (--resize)")
    folder = Path(report_dir) if report_dir is not None else Path(outputs)
    folder.mkdir(parents=True, exist_ok=True)
    files = write_report(rows, summary, folder)
    summary["files"] = [path.name for path in files]
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def summarise(rows: list[dict[str, Any]], manifest: Manifest) -> dict[str, Any]:
    """Means of every metric over the images, restored and degraded, and their change."""
    metrics: dict[str, Any] = {}
    for metric in METRIC_NAMES:
        if rows[0][metric] is None:
            metrics[metric] = None
            continue
        restored = sum(row[metric] for row in rows) / len(rows)
        degraded = sum(row[f"{metric}_degraded"] for row in rows) / len(rows)
        change = restored - degraded if math.isfinite(restored) and math.isfinite(degraded) else None
        metrics[metric] = {"restored": _number(restored), "degraded": _number(degraded), "change": _number(change)}
    return {
        "format": SCORES_FORMAT,
        "count": len(rows),
        "benchmark": {"seed": manifest.seed, "preset": manifest.preset, "size": manifest.size},
        "metrics": metrics,
        "fid": None,
        "notes": ["PSNR and SSIM on RGB in [0, 1]; SSIM with an 11x11 Gaussian window (sigma 1.5)"],
    }


CSV_COLUMNS = (
    "name",
    "output",
    "psnr",
    "ssim",
    "lpips",
    "psnr_degraded",
    "ssim_degraded",
    "lpips_degraded",
    *PROMPTED_KEYS,
    "restoration_prompt",
    "resized_from",
)


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    """Per-image CSV text (full precision; ``inf`` for identical pairs; empty fields for absent values)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


def _format(metric: str, value: float | str | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.2f}" if metric == "psnr" else f"{value:.4f}"


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as Markdown: a metric table (degraded, restored, change) plus FID and the notes."""
    bench = summary["benchmark"]
    lines = [
        f"# SPIRE benchmark: {summary['count']} images (preset {bench['preset']}, seed {bench['seed']}, "
        f"{bench['size']} px)",
        "",
        "| metric | degraded | restored | change |",
        "|---|---:|---:|---:|",
    ]
    names = {"psnr": "PSNR (dB), higher is better", "ssim": "SSIM, higher is better", "lpips": "LPIPS, lower is better"}
    for metric in METRIC_NAMES:
        values = summary["metrics"].get(metric)
        if values is None:
            lines.append(f"| {names[metric]} | n/a | n/a | n/a |")
            continue
        change = values["change"]
        change_text = "n/a" if change is None else (f"{change:+.2f}" if metric == "psnr" else f"{change:+.4f}")
        lines.append(
            f"| {names[metric]} | {_format(metric, values['degraded'])} | {_format(metric, values['restored'])} | "
            f"{change_text} |"
        )
    fid = summary.get("fid")
    lines.append(f"| FID, lower is better | | {'n/a' if fid is None else f'{fid:.2f}'} | |")
    lines += ["", *(f"- {note}" for note in summary["notes"])]
    return "\n".join(lines) + "\n"


def plot_metrics(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """``plot_<clause>.png`` per prompted clause that some image names: each metric against the prompted value,
    restored and degraded images as two series. Images without the clause sit at ``ABSENT_VALUE``."""
    from matplotlib.figure import Figure

    metrics = [m for m in METRIC_NAMES if rows[0][m] is not None]
    written = []
    for key in PROMPTED_KEYS:
        if all(row[key] is None for row in rows):
            continue
        x = [ABSENT_VALUE[key] if row[key] is None else row[key] for row in rows]
        figure = Figure(figsize=(4.2 * len(metrics), 3.6), layout="constrained")
        for axis, metric in zip(figure.subplots(1, len(metrics), squeeze=False)[0], metrics):
            for suffix, label, marker in (("_degraded", "degraded", "x"), ("", "restored", "o")):
                y = [row[metric + suffix] for row in rows]
                finite = [(a, b) for a, b in zip(x, y) if math.isfinite(b)]
                if finite:
                    axis.scatter(*zip(*finite), label=label, marker=marker, alpha=0.8)
            axis.set_xlabel(AXIS_LABELS[key])
            axis.set_ylabel(metric.upper() + (" (dB)" if metric == "psnr" else ""))
            axis.grid(alpha=0.3)
            axis.legend()
        figure.suptitle(f"{', '.join(m.upper() for m in metrics)} vs prompted {key}")
        path = folder / f"plot_{key}.png"
        figure.savefig(path, dpi=100)
        written.append(path)
    return written


def write_report(rows: list[dict[str, Any]], summary: dict[str, Any], folder: Path) -> list[Path]:
    """Write ``metrics.csv``, ``summary.md`` and the plots into ``folder`` (``summary.json`` is written by the
    caller once the file list is known)."""
    csv_path = folder / "metrics.csv"
    csv_path.write_text(metrics_csv(rows), encoding="utf-8")
    md_path = folder / "summary.md"
    md_path.write_text(markdown_table(summary), encoding="utf-8")
    return [csv_path, folder / "summary.json", md_path, *plot_metrics(rows, folder)]
