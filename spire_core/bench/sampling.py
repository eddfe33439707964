"""Sampling benchmark: per-step time and peak memory of the bare UNet, the UNet with a standard ComfyUI
ControlNet of the same trunk, and the UNet with the SPIRE adaptor (real SD1.5 architecture, random weights,
64x64 latent, batch 1 and 2).

The measurement needs ComfyUI, which ``spire_core`` never imports: this module finds a ComfyUI checkout
(``COMFYUI_DIR``, the ComfyUI containing the pack, or ``~/comfy/ComfyUI``) and runs the pack's worker
(``nodes/bench/worker.py``) in child processes: one that times the three variants interleaved, and one per
variant and batch size for peak memory, so that no variant inherits another's high-water mark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ..progress import progress
from .common import describe_device

PACK_DIR = Path(__file__).resolve().parents[2]
VARIANTS = ("bare", "controlnet", "spire")

BOOT_SCRIPT = PACK_DIR / "nodes" / "bench" / "boot.py"
"""The ComfyUI-side starter of the worker (the only part of the benchmark that imports ComfyUI)."""


def find_comfyui() -> Path | None:
    """The ComfyUI checkout to run in, or None."""
    candidates = [os.environ.get("COMFYUI_DIR"), str(PACK_DIR.parents[1]), str(Path.home() / "comfy" / "ComfyUI")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "comfy" / "samplers.py").is_file():
            return Path(candidate)
    return None


def _worker(root: Path, device: str, *argv: str, timeout: float = 3600) -> dict[str, Any]:
    command = [sys.executable, str(BOOT_SCRIPT), str(root), str(PACK_DIR), device, *argv, "--device", device]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=str(root))
    for line in done.stdout.splitlines():
        if line.startswith("SPIRE_BENCH_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"benchmark worker failed ({done.returncode}):\n{done.stderr[-4000:]}")


ARCHITECTURES = {
    "sd15": "SD1.5-architecture",
    "tiny": "toy SD1.5-structured",
    "sdxl": "SDXL-architecture",
    "tiny_sdxl": "toy SDXL-structured",
}


def run(
    device: str = "cpu",
    batches: tuple[int, ...] = (1, 2),
    repeats: int = 3,
    dtype: str = "float32",
    latent: int = 64,
    inner: int = 1,
    size: str = "sd15",
    memory: bool = True,
    memory_batches: tuple[int, ...] | None = None,
    trunk: str = "full",
) -> dict:
    """Run the benchmark; returns the JSON-ready result.

    Args:
        device, dtype: where and in which precision the models run.
        batches: batch sizes (each: ``repeats`` rounds of the three variants side by side).
        repeats: rounds per batch size; each round times ``inner`` consecutive steps of each variant.
        latent: latent side (64 = 512 px; 32 makes the full-width UNet affordable on a small CPU).
        size: ``"sd15"`` or ``"sdxl"`` (the real architectures) or ``"tiny"``/``"tiny_sdxl"`` (toys of their
            structure, for checking the harness).
        trunk: the SPIRE adaptor's width (``"full"``, ``"half"``, ``"quarter"``); the core ControlNet is full.
        memory: also measure each variant's peak memory in a fresh process per variant and batch size.
        memory_batches: the batch sizes whose memory is measured (default: ``batches``).

    Ratios are medians of per-round ratios with their spread (``common.ratio_report``); SPIRE / ControlNet
    targets at most 1.05 in time and memory, and each time ratio is set beside the counted FLOP ratio.
    """
    root = find_comfyui()
    if root is None:
        raise RuntimeError(
            "the sampling benchmark runs inside ComfyUI: set COMFYUI_DIR to a ComfyUI checkout (or install the pack "
            "in ComfyUI/custom_nodes)"
        )
    batch_list = ",".join(str(b) for b in batches)
    shape = ("--latent", str(latent), "--size", size, "--dtype", dtype, "--trunk", trunk)
    # one bar over the worker processes: the timing one, then one per variant and batch size
    memory_list = (memory_batches or batches) if memory else ()
    bar = progress(total=1 + len(memory_list) * len(VARIANTS), desc="sampling", unit="process")
    timing = _worker(
        root, device, "time", "--batches", batch_list, "--repeats", str(repeats), "--inner", str(inner), *shape
    )
    bar.update(1)
    memory_result: dict[str, dict[str, Any]] = {}
    for batch in memory_list:
        per_variant = {}
        for v in VARIANTS:
            per_variant[v] = _worker(root, device, "memory", "--variant", v, "--batches", str(batch), *shape)
            bar.update(1)
        peaks = {v: r["peak_bytes"] for v, r in per_variant.items()}
        memory_result[str(batch)] = {
            "peak_bytes": peaks,
            "step_peak_over_resident_bytes": {v: r["step_peak_over_resident_bytes"] for v, r in per_variant.items()},
            "spire_over_controlnet": round(peaks["spire"] / peaks["controlnet"], 4),
            "spire_over_bare": round(peaks["spire"] / peaks["bare"], 4),
        }
    bar.close()
    ratios = [timing["batches"][str(b)]["spire_over_controlnet"]["median"] for b in batches]
    memory_ratios = [m["spire_over_controlnet"] for m in memory_result.values()]
    flop_ratio = timing["flop_ratio_unet_plus_trunk_over_unet"]
    over_bare = [timing["batches"][str(b)]["spire_over_bare"]["median"] for b in batches]
    return {
        "benchmark": "sampling",
        "what": (
            f"one CFG step (positive + negative through comfy.samplers.calc_cond_batch) of an "
            f"{ARCHITECTURES[size]} UNet with random weights at a {latent}x{latent} latent: bare UNet, + standard "
            f"ComfyUI ControlNet (the full copy of the encoder), + SPIRE adaptor ({trunk} trunk); "
            "the three timed side by side, round by round, in one process (ratios are medians of per-round ratios "
            "with a 95% confidence interval); peak memory in one fresh process per variant"
        ),
        "machine": describe_device(torch.device(device)),
        "comfyui": _comfy_version(root),
        "dtype": dtype,
        "size": size,
        "trunk": trunk,
        "time": timing,
        "memory": memory_result,
        "targets": {
            "time_spire_over_controlnet_max": 1.05,
            "memory_spire_over_controlnet_max": 1.05,
            "spire_over_bare_within_of_flop_ratio": 0.10,
            "time_met": all(r <= 1.05 for r in ratios),
            "memory_met": all(r <= 1.05 for r in memory_ratios) if memory_ratios else None,
            "spire_over_bare_near_flop_ratio": all(abs(r / flop_ratio - 1) <= 0.10 for r in over_bare),
        },
    }


def _comfy_version(root: Path) -> str:
    try:
        text = (root / "comfyui_version.py").read_text()
        return text.split("=", 1)[1].strip().strip("\"'")
    except (OSError, IndexError):
        return "unknown"
