"""Shared benchmark helpers: machine description, timing, JSON results."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..progress import progress

RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"

SD15_DIFFUSERS_UNET: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "use_linear_projection": False,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "only_cross_attention": False,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "class_embed_type": None,
    "num_class_embeds": None,
    "projection_class_embeddings_input_dim": None,
    "num_attention_heads": None,
}
"""The Stable Diffusion 1.5 UNet in diffusers terms (``unet/config.json`` of SD 1.5, its structural fields),
built with random weights by the sampling and training benchmarks."""

SDXL_DIFFUSERS_UNET: dict[str, Any] = {
    **SD15_DIFFUSERS_UNET,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
"""The SDXL base UNet in diffusers terms (``unet/config.json`` of SDXL 1.0, its structural fields)."""

SDXL_POOLED = 1280
"""Width of SDXL's pooled text embedding (its second text encoder's projection)."""


def describe_device(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_name(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call (device work included)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(
    candidates: dict[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
    desc: str = "timing",
) -> dict[str, list[float]]:
    """Time several candidates side by side in one run, alternating them so drift hits all alike.

    A progress bar (``spire_core.progress``, labelled ``desc``) counts the calls, warm-up included; it is
    updated between timed calls, never inside one.
    """
    with progress(total=(warmup + repeats) * len(candidates), desc=desc, unit="call") as bar:
        for _ in range(warmup):
            for fn in candidates.values():
                fn()
                bar.update(1)
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(repeats):
            for name, fn in candidates.items():
                times[name].append(time_call(fn, device))
                bar.update(1)
    return times


def median_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median (binomial order statistics).

    With ``n`` values sorted, the interval runs from the ``j``-th to the ``k``-th value, the widest pair of
    order statistics symmetric about the middle whose coverage reaches ``confidence`` (with fewer than 6
    values no pair reaches 95 %, and the interval is the full range).
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median_ci: no values")
    pmf = [math.comb(n, i) / 2**n for i in range(n + 1)]
    lo = 0
    while lo + 1 < n - 1 - lo and 1 - 2 * sum(pmf[: lo + 2]) >= confidence:
        lo += 1
    return ordered[lo], ordered[n - 1 - lo]


def ratio_report(
    numerator: list[float], denominator: list[float], flop_ratio: float | None = None, bound: float = 0.10
) -> dict[str, Any]:
    """Per-round ratios of two candidates timed round by round (the same round's times divided), with their
    median, min-max and a 95 % confidence interval of the median (``median_ci``).

    ``within_bound`` says whether the interval lies within ``+-bound`` of the median (the benchmark's
    precision target). With ``flop_ratio`` (the candidates' counted floating-point operations, divided the
    same way), ``below_flop_bound`` flags a median ratio under it: on compute-bound work that means the
    measurement, not the code, made the difference, and such a ratio is not quoted as a win.
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"ratio_report: {len(numerator)} and {len(denominator)} rounds; expected equal, non-zero")
    ratios = [a / b for a, b in zip(numerator, denominator)]
    median = statistics.median(ratios)
    low, high = median_ci(ratios)
    report: dict[str, Any] = {
        "rounds": len(ratios),
        "per_round": [round(r, 4) for r in ratios],
        "median": round(median, 4),
        "min": round(min(ratios), 4),
        "max": round(max(ratios), 4),
        "ci95": [round(low, 4), round(high, 4)],
        "ci95_halfwidth_pct": round(100 * max(median - low, high - median) / median, 2),
    }
    report["within_bound"] = report["ci95_halfwidth_pct"] <= 100 * bound
    if flop_ratio is not None:
        report["flop_ratio"] = round(flop_ratio, 4)
        report["below_flop_bound"] = median < flop_ratio
    return report


def summarize(seconds: list[float], items: int) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {
        "seconds": [round(s, 4) for s in seconds],
        "median_s": round(median, 4),
        "items_per_s": round(items / median, 2),
    }


def write_result(name: str, result: dict[str, Any], out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path
