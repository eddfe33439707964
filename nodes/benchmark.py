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

SD15_DIFFUSERS = {
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
"""The same UNet in diffusers terms (for the adaptor's config)."""

VARIANTS = ("bare", "controlnet", "spire")


def _fill(module: torch.nn.Module, seed: int) -> None:
    """Random weights (ComfyUI's ops leave them uninitialised; garbage could contain denormals or NaNs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.dtype))


def build(device: torch.device, dtype: torch.dtype):
    """(model patcher, {variant: control or None}, adaptor config) with random weights."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_base
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models

    from ..spire_core.models.comfy_layout import cldm_kwargs
    from ..spire_core.models.config import AdaptorConfig, controlnet_config_from_unet
    from .adaptor_model import ComfyAdaptor
    from .spire_control import SpireControl

    cfg = comfy.supported_models.SD15(dict(SD15_UNET))
    cfg.set_inference_dtype(dtype, None)
    base = comfy.model_base.BaseModel(cfg, device=device)
    _fill(base.diffusion_model, 0)
    model = comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)
    ops = comfy.ops.disable_weight_init
    config = AdaptorConfig(controlnet_config=controlnet_config_from_unet(SD15_DIFFUSERS), base_family="sd1")
    kwargs = cldm_kwargs(config)
    kwargs.pop("upcast_attention")
    trunk = comfy.cldm.cldm.ControlNet(**kwargs, dtype=dtype, device=device, operations=ops)
    _fill(trunk, 1)
    plain = comfy.controlnet.ControlNet(trunk, load_device=device)
    adaptor = ComfyAdaptor(config, dtype=dtype, device=device, operations=ops)
    _fill(adaptor, 1)
    spire = SpireControl(adaptor, load_device=device, info={"text_encoder_layer": "last"})
    return model, {"bare": None, "controlnet": plain, "spire": spire}, config


def make_step(model, control, batch: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A closure running one CFG step (positive + negative through calc_cond_batch), and its cleanup."""
    import comfy.model_management as mm
    import comfy.sampler_helpers
    import comfy.samplers

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 64, 64, generator=g).to(device, dtype) * 3
    hint = torch.rand(batch, 3, 512, 512, generator=g)
    sem_p, sem_n, rest = (torch.randn(batch, 77, 768, generator=g) for _ in range(3))
    conds = {}
    attached = None
    if control is not None:
        attached = control.copy().set_cond_hint(hint, 1.0, (0.0, 1.0))
    for name, semantic in (("positive", sem_p), ("negative", sem_n)):
        options = {"cross_attn_controlnet": rest}
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


def flops(model, controls, device, dtype) -> dict[str, float]:
    """Floating-point operations of one CFG step (batch 1), counted by torch on the real architecture."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    for variant in ("bare", "spire"):
        step, cleanup = make_step(model, controls[variant], 1, device, dtype)
        with FlopCounterMode(display=False) as counter:
            step()
        cleanup()
        counts[variant] = float(counter.get_total_flops())
    return counts


def run_time(device: torch.device, dtype: torch.dtype, batches: list[int], repeats: int) -> dict:
    model, controls, _ = build(device, dtype)
    result: dict = {"batches": {}}
    for batch in batches:
        steps, cleanups = {}, []
        for variant in VARIANTS:
            steps[variant], cleanup = make_step(model, controls[variant], batch, device, dtype)
            cleanups.append(cleanup)
        for fn in steps.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(repeats):
            for variant, fn in steps.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[variant].append(time.perf_counter() - start)
        for cleanup in cleanups:
            cleanup()
        medians = {v: statistics.median(t) for v, t in times.items()}
        result["batches"][str(batch)] = {
            "seconds": {v: [round(s, 4) for s in t] for v, t in times.items()},
            "median_s": {v: round(m, 4) for v, m in medians.items()},
            "spire_over_controlnet": round(medians["spire"] / medians["controlnet"], 4),
            "spire_over_bare": round(medians["spire"] / medians["bare"], 4),
            "controlnet_over_bare": round(medians["controlnet"] / medians["bare"], 4),
        }
    counted = flops(model, controls, device, dtype)
    result["flops_per_step_batch1"] = counted
    result["flop_ratio_unet_plus_trunk_over_unet"] = round(counted["spire"] / counted["bare"], 4)
    return result


def run_memory(device: torch.device, dtype: torch.dtype, variant: str, batch: int) -> dict:
    model, controls, _ = build(device, dtype)
    for name in VARIANTS:  # keep only what this variant uses
        if name != variant:
            controls[name] = None
    step, cleanup = make_step(model, controls[variant], batch, device, dtype)
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
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    batches = [int(b) for b in args.batches.split(",")]
    if args.mode == "time":
        out = run_time(device, dtype, batches, args.repeats)
    else:
        out = run_memory(device, dtype, args.variant, batches[0])
    print("SPIRE_BENCH_RESULT " + json.dumps(out))
