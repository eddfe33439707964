"""Shared benchmark helpers: machine description, timing, JSON results."""

from __future__ import annotations

import json
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
