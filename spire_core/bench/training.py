"""Training-step cost: SPIRE's modulation adaptor vs a plain diffusers ControlNet on the same trunk.

One training step = forward of the adaptor trunk and the frozen UNet, MSE loss against noise, backward into
the adaptor, AdamW step. The two candidates:

- ``spire``: ``SpireAdaptor`` (modulation fusion) through ``spire_core.models.predict_noise`` (forward hooks on
  the UNet's up blocks and middle block apply ``f * (1 + gamma) + beta`` to the skips);
- ``controlnet``: diffusers ``ControlNetModel.from_unet`` whose residuals go to
  ``unet(down_block_additional_residuals=..., mid_block_additional_residual=...)``.

Times are measured in one process, the candidates alternating step by step, sharing one frozen UNet and one
trunk (the same module objects, so the comparison isolates the fusion; one AdamW holds all parameters and
steps those that received gradients). Peak memory is measured per candidate in its own subprocess: on CUDA
``torch.cuda.max_memory_allocated`` during the steps minus what was allocated before them; on the CPU the
peak resident set during the steps (Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``)
minus the resident set before them. Zero-initialised layers (SPIRE heads, ControlNet zero convolutions) get
small random weights so neither side multiplies by exact zeros.

Sizes: ``tiny`` (``spire_core.models.tiny_unet_config``, 64 px), ``sd15`` (the Stable Diffusion 1.5 UNet
config with random weights, built in code, latent 64x64 = 512 px), ``tiny_sdxl`` and ``sdxl`` (the SDXL UNet, latent
128x128 = 1024 px), SDXL sizes with their added conditioning (pooled text and size ids) on both candidates.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..degradation.scratch import release_free_heap
from ..models import SpireAdaptor, predict_noise, tiny_unet_config
from ..models.components import sdxl_time_ids
from ..progress import progress
from .common import (
    SD15_DIFFUSERS_UNET,
    SDXL_DIFFUSERS_UNET,
    SDXL_POOLED,
    describe_device,
    interleaved,
    ratio_report,
    summarize,
)

TARGET_RATIO = 1.10
"""SPIRE's training step may cost at most 10% more time than plain ControlNet's on the same trunk."""

CANDIDATES = ("spire", "controlnet")

MEMORY_STEPS = 3
"""Steps of each peak-memory run (the optimiser's state exists from the first step on; more add time only)."""

SD15_UNET_CONFIG: dict[str, Any] = {**SD15_DIFFUSERS_UNET, "sample_size": 64}
"""The Stable Diffusion 1.5 UNet (diffusers ``unet/config.json`` of SD 1.5, structural fields)."""

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"unet": tiny_unet_config("sd1", cross_attention_dim=32), "latent": 8, "text_dim": 32},
    "sd15": {"unet": SD15_UNET_CONFIG, "latent": 64, "text_dim": 768},
    "tiny_sdxl": {"unet": tiny_unet_config("sdxl", cross_attention_dim=64), "latent": 8, "text_dim": 64, "pooled": 32},
    "sdxl": {
        "unet": {**SDXL_DIFFUSERS_UNET, "sample_size": 128},
        "latent": 128,
        "text_dim": 2048,
        "pooled": SDXL_POOLED,
    },
}
"""Benchmark sizes: UNet config, latent side (pixels = 8x), text-embedding width, SDXL's pooled width."""

_TOKENS = 77
PACK_DIR = Path(__file__).resolve().parents[2]


def _randomize_zero_layers(module: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) * 1e-3)


def _inputs(size: str, batch: int, device: torch.device, latent: int | None = None) -> dict[str, torch.Tensor]:
    spec, g = SIZES[size], torch.Generator().manual_seed(0)
    latent, dim = latent or spec["latent"], spec["text_dim"]
    tensors = {
        "sample": torch.randn(batch, 4, latent, latent, generator=g),
        "timestep": torch.randint(0, 1000, (batch,), generator=g),
        "semantic": torch.randn(batch, _TOKENS, dim, generator=g),
        "restoration": torch.randn(batch, _TOKENS, dim, generator=g),
        "hint": torch.rand(batch, 3, 8 * latent, 8 * latent, generator=g),
        "target": torch.randn(batch, 4, latent, latent, generator=g),
        **_added(spec, batch, latent, g),
    }

    def to(value: Any) -> Any:
        return {k: v.to(device) for k, v in value.items()} if isinstance(value, dict) else value.to(device)

    return {name: to(t) for name, t in tensors.items()}


def _added(spec: dict[str, Any], batch: int, latent: int, g: torch.Generator) -> dict[str, Any]:
    """SDXL sizes: the UNet's and the adaptor's added conditioning (pooled text, the output's size ids)."""
    if "pooled" not in spec:
        return {}
    ids = sdxl_time_ids(8 * latent, 8 * latent).expand(batch, -1)
    return {
        "unet_added": {"text_embeds": torch.randn(batch, spec["pooled"], generator=g), "time_ids": ids},
        "restoration_added": {"text_embeds": torch.randn(batch, spec["pooled"], generator=g), "time_ids": ids},
    }


def _built_on(device: torch.device):  # noqa: ANN202 - a context manager
    """Build modules directly on a GPU (their random initialisation there takes milliseconds, not the seconds
    a CPU takes for a billion parameters); on the CPU, as before."""
    return torch.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _unet(size: str, device: torch.device) -> nn.Module:
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]), _built_on(device):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SIZES[size]["unet"])
    return unet.to(device).eval().requires_grad_(False)


def _spire(unet: nn.Module, device: torch.device, trunk: str = "full") -> SpireAdaptor:
    with _built_on(device):
        adaptor = SpireAdaptor.from_unet(unet, trunk=trunk)
    adaptor = adaptor.to(device).train()
    _randomize_zero_layers(adaptor, torch.Generator().manual_seed(1))
    return adaptor


def _controlnet(unet: nn.Module, device: torch.device, share: SpireAdaptor | None = None) -> nn.Module:
    from diffusers import ControlNetModel

    with _built_on(device):
        controlnet = ControlNetModel.from_unet(unet)
    controlnet = controlnet.to(device).train()
    if share is not None:  # same trunk modules as the SPIRE adaptor; only the zero convolutions are its own
        trunk = share.controlnet
        for name in ("conv_in", "time_proj", "time_embedding", "controlnet_cond_embedding", "down_blocks", "mid_block"):
            setattr(controlnet, name, getattr(trunk, name))
    for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        _randomize_zero_layers(block, torch.Generator().manual_seed(2))
    return controlnet


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Training precisions: fp32, or autocast to bf16/fp16 with fp32 weights (what ``train.mixed_precision`` does)."""


def _autocast(device: torch.device, precision: str):  # noqa: ANN202 - a context manager
    """The autocast context of ``train.mixed_precision``: accelerate's, as the trainer uses it (one accelerator
    state per process; the benchmark's processes each run one precision)."""
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return _accelerator(device.type, precision).autocast()


@functools.cache
def _accelerator(device_type: str, precision: str):  # noqa: ANN202 - an accelerate.Accelerator
    from accelerate import Accelerator

    return Accelerator(mixed_precision=precision, cpu=device_type == "cpu")


def _checkpointing(unet: nn.Module, model: nn.Module, enabled: bool) -> None:
    """Gradient checkpointing of the trunk and of the frozen UNet, as ``train.gradient_checkpointing`` and
    ``train.unet_gradient_checkpointing`` switch it on (the same diffusers switches on both candidates)."""
    if enabled:
        unet.enable_gradient_checkpointing()
        trunk = model.controlnet if isinstance(model, SpireAdaptor) else model
        trunk.enable_gradient_checkpointing()


def _step_fn(  # noqa: ANN202
    name: str, unet: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, x: dict, precision: str = "fp32"
):
    device = x["sample"].device
    unet_kwargs = {"added_cond_kwargs": x["unet_added"]} if "unet_added" in x else {}
    trunk_kwargs = {"added_cond_kwargs": x["restoration_added"]} if "restoration_added" in x else {}

    def spire() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            pred = predict_noise(
                unet,
                model,
                x["sample"],
                x["timestep"],
                x["semantic"],
                x["restoration"],
                x["hint"],
                unet_kwargs=unet_kwargs,
                restoration_added_cond=x.get("restoration_added"),
            )
        F.mse_loss(pred.float(), x["target"]).backward()
        optimizer.step()

    def controlnet() -> None:
        optimizer.zero_grad(set_to_none=True)
        cond = {"encoder_hidden_states": x["restoration"], "controlnet_cond": x["hint"], "return_dict": False}
        cond.update(trunk_kwargs)
        with _autocast(device, precision):
            down, mid = model(x["sample"], x["timestep"], **cond)
            pred = unet(
                x["sample"],
                x["timestep"],
                encoder_hidden_states=x["semantic"],
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
                **unet_kwargs,
            ).sample
        F.mse_loss(pred.float(), x["target"]).backward()
        optimizer.step()

    return {"spire": spire, "controlnet": controlnet}[name]


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def time_steps(
    size: str,
    batch: int,
    steps: int,
    device: torch.device,
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    latent: int | None = None,
) -> dict[str, Any]:
    """Step times of both candidates on a shared UNet and trunk, alternating round by round (see the module
    docstring); ``steps`` rounds, each timing one step of each. The time ratio is the median of the per-round
    ratios (``common.ratio_report``), with its spread."""
    unet = _unet(size, device)
    spire = _spire(unet, device)
    controlnet = _controlnet(unet, device, share=spire)
    _checkpointing(unet, spire, gradient_checkpointing)
    _checkpointing(unet, controlnet, gradient_checkpointing)
    params = {id(p): p for p in [*spire.parameters(), *controlnet.parameters()]}
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-5)
    x = _inputs(size, batch, device, latent)
    models = {"spire": spire, "controlnet": controlnet}
    fns = {name: _step_fn(name, unet, model, optimizer, x, precision) for name, model in models.items()}
    times = interleaved(fns, device, repeats=steps, warmup=1, desc=f"training {size}")
    result = {name: summarize(times[name], batch) for name in CANDIDATES}
    result["ratio"] = ratio_report(times["spire"], times["controlnet"])
    result["time_ratio"] = result["ratio"]["median"]
    result["parameters"] = {
        "unet": _parameters(unet),
        "trunk": _parameters(spire.controlnet),
        "spire_heads": sum(p.numel() for p in spire.head_parameters()),
        "controlnet_zero_convs": _parameters(controlnet.controlnet_down_blocks)
        + _parameters(controlnet.controlnet_mid_block),
    }
    return result


def _rss_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure_memory(
    candidate: str,
    size: str,
    batch: int,
    steps: int,
    device: torch.device,
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    latent: int | None = None,
    trunk: str = "full",
) -> dict[str, Any]:
    """Peak memory of ``steps`` training steps of one candidate (run it in a fresh process; see the docstring), and
    the trained parameters (``adaptor_parameters``); ``trunk``: the SPIRE adaptor's width."""
    unet = _unet(size, device)
    model = _spire(unet, device, trunk) if candidate == "spire" else _controlnet(unet, device)
    trained = _parameters(model)
    _checkpointing(unet, model, gradient_checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x = _inputs(size, batch, device, latent)
    step = _step_fn(candidate, unet, model, optimizer, x, precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {
            "method": "cuda max_memory_allocated",
            "before_mib": before / 2**20,
            "peak_mib": peak / 2**20,
            "adaptor_parameters": trained,
        }
    method = "VmHWM after clear_refs"
    # Building a narrow trunk frees a full-width copy of the encoder; glibc keeps such freed blocks in its heap,
    # where the training step's activations would then fit without raising the resident set. Hand them back
    # first, so that the step's increase is its own.
    gc.collect()
    release_free_heap(keep_bytes=0)
    before = _rss_bytes("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak resident set (Linux >= 4.0)
    except OSError:
        method = "ru_maxrss delta (peak may include model construction)"
    if before is None:  # not Linux
        method, before = "ru_maxrss delta (peak may include model construction)", None
    start_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(steps):
        step()
    if method.startswith("VmHWM"):
        peak = _rss_bytes("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        before = start_max
    return {"method": method, "before_mib": before / 2**20, "peak_mib": peak / 2**20, "adaptor_parameters": trained}


def memory_in_subprocess(
    candidate: str,
    size: str,
    batch: int,
    steps: int,
    device: str,
    precision: str,
    checkpointing: bool,
    latent: int,
    trunk: str = "full",
) -> dict[str, Any]:
    """``measure_memory`` in a fresh Python process (its peak is then this measurement's alone)."""
    command = [sys.executable, "-m", "spire_core.bench.training", "--memory", candidate, size, str(batch), str(steps)]
    command += [device, precision, str(int(checkpointing)), str(latent), trunk]
    result = subprocess.run(command, capture_output=True, text=True, cwd=PACK_DIR, env=dict(os.environ), timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement of {candidate}/{size} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(
    sizes: tuple[str, ...] = ("tiny", "sd15"),
    batch: int = 1,
    steps: int = 3,
    device: str = "cpu",
    memory: bool = True,
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    latent: int | None = None,
) -> dict[str, Any]:
    """Benchmark both candidates at each size.

    Args:
        sizes: keys of ``SIZES``.
        batch: images per step.
        steps: timed rounds (one step of each candidate per round, after one untimed warm-up step each); the
            memory runs take ``min(steps, MEMORY_STEPS)`` steps.
        device: ``"cpu"`` or ``"cuda"``/``"cuda:N"``.
        memory: also measure peak memory (one subprocess per candidate and size).
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast (``PRECISIONS``).
        gradient_checkpointing: checkpoint the trunk and the UNet (both candidates).
        latent: latent side for every size (default: each size's own, ``SIZES``).

    Returns:
        ``{"benchmark", "machine", "batch", "steps", "target_ratio", "cases": {size: {...}}}``; each case holds
        per-candidate step times (``summarize``), ``time_ratio`` (SPIRE / ControlNet, median), parameter counts,
        and per-candidate memory with ``memory_ratio`` (SPIRE / ControlNet, peak increase during the steps).
    """
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise ValueError(f"unknown sizes {unknown}; expected some of {list(SIZES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}")
    torch_device = torch.device(device)
    cases = {}
    for size in sizes:
        side = latent or SIZES[size]["latent"]
        case = time_steps(size, batch, steps, torch_device, precision, gradient_checkpointing, side)
        case["latent"] = side
        case["resolution_px"] = 8 * side
        if memory:
            bar = progress(CANDIDATES, desc=f"memory {size}", unit="process")
            measured = {
                c: memory_in_subprocess(
                    c, size, batch, min(steps, MEMORY_STEPS), device, precision, gradient_checkpointing, side
                )
                for c in bar
            }
            for values in measured.values():
                values["increase_mib"] = round(values["peak_mib"] - values["before_mib"], 1)
                values["before_mib"], values["peak_mib"] = round(values["before_mib"], 1), round(values["peak_mib"], 1)
            spire, plain = measured["spire"]["increase_mib"], measured["controlnet"]["increase_mib"]
            measured["memory_ratio"] = round(spire / plain, 4) if plain > 0 else None
            case["memory"] = measured
        case["meets_time_target"] = case["time_ratio"] <= TARGET_RATIO
        cases[size] = case
        if torch_device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        "benchmark": "training",
        "machine": describe_device(torch_device),
        "batch": batch,
        "steps": steps,
        "precision": precision,
        "gradient_checkpointing": gradient_checkpointing,
        "target_ratio": TARGET_RATIO,
        "cases": cases,
    }


def _memory_main(argv: list[str]) -> int:
    candidate, size, batch, steps, device, precision, checkpointing, latent, trunk = argv
    if candidate not in CANDIDATES or size not in SIZES:
        raise SystemExit(
            f"usage: --memory {{{','.join(CANDIDATES)}}} {{{','.join(SIZES)}}} BATCH STEPS DEVICE PRECISION "
            "CHECKPOINTING(0|1) LATENT TRUNK"
        )
    trunk_value = int(trunk) if trunk.isdigit() else trunk
    result = measure_memory(
        candidate,
        size,
        int(batch),
        int(steps),
        torch.device(device),
        precision,
        checkpointing == "1",
        int(latent),
        trunk_value,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory":
        raise SystemExit(_memory_main(sys.argv[2:]))
    raise SystemExit(f"run the benchmark with run() (or python -m spire_core.bench training); got {sys.argv[1:]}")
