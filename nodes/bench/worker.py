"""Sampling benchmark worker (runs inside a ComfyUI process; started by ``python -m spire_core.bench sampling``).

Per CFG step (one ``comfy.samplers.calc_cond_batch`` over positive + negative, as KSampler does it) on a real
SD1.5-architecture UNet with random weights:

- ``bare``: the UNet alone;
- ``controlnet``: the UNet with a standard ComfyUI ControlNet (``comfy.controlnet.ControlNet`` around a
  ``comfy.cldm.cldm.ControlNet`` with the same trunk as the adaptor);
- ``spire``: the UNet with the SPIRE adaptor (modulation heads, ``SpireControl``).

``time`` mode times the three interleaved in one process; ``memory`` mode measures one variant in a fresh
process (peak RSS on the CPU, ``max_memory_allocated`` on CUDA) so variants do not share a high-water mark.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from ...spire_core.bench.common import SD15_DIFFUSERS_UNET, SDXL_DIFFUSERS_UNET, SDXL_POOLED
from ...spire_core.models.tiny import SDXL_TINY_POOLED, tiny_unet_config

SD15_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
"""ComfyUI's UNet config of Stable Diffusion 1.5 (as its model detection produces it)."""


TINY_UNET = {
    **SD15_UNET,
    "model_channels": 32,
    "context_dim": 32,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "transformer_depth": [1, 0],
    "transformer_depth_output": [0, 0, 1, 1],
}
"""A toy UNet of SD1.5's structure (two levels, attention at the first): checks the harness in seconds."""

TINY_DIFFUSERS = {
    **SD15_DIFFUSERS_UNET,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
}
"""The same toy UNet in diffusers terms."""

SDXL_UNET = {
    **SD15_UNET,
    "adm_in_channels": 2816,
    "num_classes": "sequential",
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
}
"""ComfyUI's UNet config of SDXL 1.0 (as its model detection produces it)."""

TINY_SDXL_UNET = {
    **SDXL_UNET,
    "adm_in_channels": SDXL_TINY_POOLED + 6 * 256,
    "model_channels": 64,
    "num_res_blocks": [1, 1],
    "transformer_depth": [0, 2],
    "channel_mult": [1, 2],
    "transformer_depth_middle": 2,
    "context_dim": 64,
    "transformer_depth_output": [0, 0, 2, 2],
}
"""A toy UNet of SDXL's structure (``spire_core.models.tiny_unet_config("sdxl")``): checks the harness in seconds."""

SIZES = {
    "sd15": (SD15_UNET, SD15_DIFFUSERS_UNET),
    "tiny": (TINY_UNET, TINY_DIFFUSERS),
    "sdxl": (SDXL_UNET, SDXL_DIFFUSERS_UNET),
    "tiny_sdxl": (TINY_SDXL_UNET, tiny_unet_config("sdxl", cross_attention_dim=64)),
}
"""Benchmark sizes: (ComfyUI UNet config, diffusers config)."""

POOLED = {"sdxl": SDXL_POOLED, "tiny_sdxl": SDXL_TINY_POOLED}
"""SDXL sizes: width of the pooled text embedding (the model's and the adaptor's added conditioning)."""

VARIANTS = ("bare", "controlnet", "spire")


def _fill(module: torch.nn.Module, seed: int) -> None:
    """Random weights (ComfyUI's ops leave them uninitialised; garbage could contain denormals or NaNs)."""
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:  # drawn where the weight lives (a GPU draws a billion numbers in milliseconds)
                g = generators.setdefault(p.device, torch.Generator(device=p.device).manual_seed(seed))
                p.copy_((torch.randn(p.shape, generator=g, device=p.device) * 0.02).to(p.dtype))


def build(
    device: torch.device,
    dtype: torch.dtype,
    size: str = "sd15",
    variants: tuple[str, ...] = VARIANTS,
    trunk: str = "full",
):
    """(model patcher, {variant: control or None}, adaptor config) with random weights; controls are built only
    for the ``variants`` asked for (the others map to None). ``trunk``: the SPIRE adaptor's width (the core
    ControlNet is always the full copy of the encoder)."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_base
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models

    from ...spire_core.models.comfy_layout import cldm_kwargs
    from ...spire_core.models.config import AdaptorConfig, controlnet_config_from_unet, narrow_controlnet_config
    from ..adaptor_model import ComfyAdaptor
    from ..spire_control import SpireControl

    unet_config, diffusers_config = SIZES[size]
    sdxl = size in POOLED
    cfg = (comfy.supported_models.SDXL if sdxl else comfy.supported_models.SD15)(dict(unet_config))
    cfg.set_inference_dtype(dtype, None)
    base = (comfy.model_base.SDXL if sdxl else comfy.model_base.BaseModel)(cfg, device=device)
    _fill(base.diffusion_model, 0)
    model = comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)
    ops = comfy.ops.disable_weight_init
    with torch.device("meta"):  # diffusers' defaults for the fields a config leaves out
        from diffusers import UNet2DConditionModel

        full_config = dict(UNet2DConditionModel(**diffusers_config).config)
    family = "sdxl" if sdxl else "sd1"
    full = controlnet_config_from_unet(full_config)
    config = AdaptorConfig(controlnet_config=full, base_family=family)
    narrow = narrow_controlnet_config(full, trunk)
    spire_config = config
    if narrow != full:
        spire_config = AdaptorConfig(narrow, base_family=family, base_block_out_channels=full["block_out_channels"])
    kwargs = cldm_kwargs(config)
    kwargs.pop("upcast_attention")
    controls = dict.fromkeys(VARIANTS)
    if "controlnet" in variants:
        trunk = comfy.cldm.cldm.ControlNet(**kwargs, dtype=dtype, device=device, operations=ops)
        _fill(trunk, 1)
        controls["controlnet"] = comfy.controlnet.ControlNet(trunk, load_device=device)
    if "spire" in variants:
        adaptor = ComfyAdaptor(spire_config, dtype=dtype, device=device, operations=ops)
        _fill(adaptor, 1)
        controls["spire"] = SpireControl(adaptor, load_device=device, info={"text_encoder_layer": "last"})
    return model, controls, config


def make_step(model, control, batch: int, device: torch.device, dtype: torch.dtype, seed: int = 0, latent: int = 64):
    """A closure running one CFG step (positive + negative through calc_cond_batch), and its cleanup."""
    import comfy.model_management as mm
    import comfy.sampler_helpers
    import comfy.samplers

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, latent, latent, generator=g).to(device, dtype) * 3
    hint = torch.rand(batch, 3, 8 * latent, 8 * latent, generator=g)
    width = model.model.model_config.unet_config["context_dim"]
    sem_p, sem_n, rest = (torch.randn(batch, 77, width, generator=g) for _ in range(3))
    pooled_width = model.model.model_config.unet_config.get("adm_in_channels")
    pooled_width = pooled_width - 6 * 256 if pooled_width else None  # SDXL: pooled text, then six size ids
    names = ("positive", "negative", "restoration") if pooled_width else ()
    pooled = {n: torch.randn(batch, pooled_width, generator=g) for n in names}
    conds = {}
    attached = None
    if control is not None:
        attached = control.copy().set_cond_hint(hint, 1.0, (0.0, 1.0))
        if pooled_width and hasattr(attached, "set_restoration"):
            attached.set_restoration(rest, pooled["restoration"], None)
    for name, semantic in (("positive", sem_p), ("negative", sem_n)):
        options = {"cross_attn_controlnet": rest}
        if pooled_width:
            options["pooled_output"] = pooled[name]
        if attached is not None:
            options["control"] = attached
        conds[name] = comfy.sampler_helpers.convert_cond([[semantic, options]])
    mm.load_models_gpu([model] + (attached.get_models() if attached is not None else []))
    conds = comfy.samplers.process_conds(model.model, x, conds, device, seed=seed)
    sigma = torch.full((batch,), 3.0, device=device)
    model.model.current_patcher = model

    def step():
        with torch.inference_mode():
            return comfy.samplers.calc_cond_batch(
                model.model, [conds["positive"], conds["negative"]], x, sigma, model.model_options
            )

    def cleanup():
        if attached is not None:
            attached.cleanup()

    return step, cleanup


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def flops(model, controls, device, dtype, latent: int = 64) -> dict[str, float]:
    """Floating-point operations of one CFG step (batch 1), counted by torch on the real architecture."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    for variant in VARIANTS:
        step, cleanup = make_step(model, controls[variant], 1, device, dtype, latent=latent)
        with FlopCounterMode(display=False) as counter:
            step()
        cleanup()
        counts[variant] = float(counter.get_total_flops())
    return counts


RATIOS = (("spire", "controlnet"), ("spire", "bare"), ("controlnet", "bare"))
"""The reported time ratios (numerator, denominator)."""


def run_time(
    device: torch.device,
    dtype: torch.dtype,
    batches: list[int],
    repeats: int,
    latent: int = 64,
    inner: int = 1,
    size: str = "sd15",
    trunk: str = "full",
) -> dict:
    """``repeats`` rounds per batch size; each round times ``inner`` consecutive steps of each variant in turn,
    so the per-round ratios divide times taken side by side (``common.ratio_report``)."""
    from ...spire_core.bench.common import ratio_report

    model, controls, _ = build(device, dtype, size, trunk=trunk)
    counted = flops(model, controls, device, dtype, latent)
    result: dict = {"latent": latent, "steps_per_sample": inner, "batches": {}}
    for batch in batches:
        steps, cleanups = {}, []
        for variant in VARIANTS:
            steps[variant], cleanup = make_step(model, controls[variant], batch, device, dtype, latent=latent)
            cleanups.append(cleanup)
        for fn in steps.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(repeats):
            for variant, fn in steps.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                for _ in range(inner):
                    fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[variant].append((time.perf_counter() - start) / inner)
        for cleanup in cleanups:
            cleanup()
        medians = {v: statistics.median(t) for v, t in times.items()}
        entry = {
            "seconds": {v: [round(s, 5) for s in t] for v, t in times.items()},
            "median_s": {v: round(m, 5) for v, m in medians.items()},
        }
        for a, b in RATIOS:
            entry[f"{a}_over_{b}"] = ratio_report(times[a], times[b], flop_ratio=counted[a] / counted[b])
        result["batches"][str(batch)] = entry
    result["flops_per_step_batch1"] = counted
    result["flop_ratio_unet_plus_trunk_over_unet"] = round(counted["spire"] / counted["bare"], 4)
    return result


def run_memory(
    device: torch.device,
    dtype: torch.dtype,
    variant: str,
    batch: int,
    latent: int = 64,
    size: str = "sd15",
    trunk: str = "full",
) -> dict:
    model, controls, _ = build(device, dtype, size, variants=(variant,), trunk=trunk)
    step, cleanup = make_step(model, controls[variant], batch, device, dtype, latent=latent)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        out = {"peak_bytes": peak, "resident_before_step_bytes": before}
    else:
        before = _rss_bytes()
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        out = {"peak_bytes": peak, "resident_before_step_bytes": before}
    cleanup()
    out["step_peak_over_resident_bytes"] = out["peak_bytes"] - out["resident_before_step_bytes"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("time", "memory"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--inner", type=int, default=1)
    parser.add_argument("--size", choices=tuple(SIZES), default="sd15")
    parser.add_argument("--trunk", default="full")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    batches = [int(b) for b in args.batches.split(",")]
    if args.mode == "time":
        out = run_time(device, dtype, batches, args.repeats, args.latent, args.inner, args.size, args.trunk)
    else:
        out = run_memory(device, dtype, args.variant, batches[0], args.latent, args.size, args.trunk)
    print("SPIRE_BENCH_RESULT " + json.dumps(out))
