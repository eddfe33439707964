"""SPIRE guidance and the one-node restorer in real ComfyUI (tiny SD1 eps model, tiny VAE and CLIP):
the guider's formula and its reduction to CFG, exact output sizes, upsampling, tiling without seams and
with bounded memory, colour fix, and clear errors."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from PIL import Image
from spire_test_support import tiny_comfy
from spire_test_support.adaptors import randomize_heads
from torch.utils._python_dispatch import TorchDispatchMode

from spire_core.models import SpireAdaptor, load_base_unet, save_adaptor

ADAPTOR = "restore_sd1.safetensors"


@pytest.fixture(scope="module")
def setup(comfy, tmp_path_factory):
    import skimage.data

    Image.fromarray(skimage.data.astronaut()).resize((61, 45), Image.Resampling.BICUBIC).save(
        comfy.input_dir / "spire_odd.png"
    )
    checkpoint = tiny_comfy.save_checkpoint(tmp_path_factory.mktemp("restore") / "sd1.safetensors", "sd1")
    unet, info = load_base_unet(checkpoint)
    adaptor = SpireAdaptor.from_unet(unet, base_family="sd1", prediction_type=info.prediction_type)
    randomize_heads(adaptor, seed=1, scale=0.1, attention_gain=10.0)
    save_adaptor(adaptor, comfy.models_dir("spire") / ADAPTOR)
    return comfy


def node(comfy, node_id: str):
    return comfy.nodes.NODE_CLASS_MAPPINGS[node_id]


def load_control(comfy):
    return node(comfy, "SPIRE_AdaptorLoader").execute(ADAPTOR).result[0]


def restore(comfy, image: torch.Tensor, model=None, **overrides) -> torch.Tensor:  # noqa: ANN001 - a MODEL
    values = {
        "semantic_prompt": "an astronaut",
        "restoration_prompt": "Remove all degradation",
        "steps": 3,
        "sampler_name": "euler",
        "scheduler": "normal",
        "semantic_scale": 4.0,
        "restoration_scale": 1.0,
        "seed": 7,
        "strength": 1.0,
        "color_fix": "none",
        "tile_size": 0,
        "tile_overlap": 16,
        **overrides,
    }
    model = tiny_comfy.tiny_model("sd1") if model is None else model
    clip, vae = tiny_comfy.tiny_clip("sd1"), tiny_comfy.tiny_vae()
    return node(comfy, "SPIRE_Restore").execute(model, clip, vae, load_control(comfy), image, **values).result[0]


def photo(height: int, width: int, seed: int = 0) -> torch.Tensor:
    import skimage.data

    source = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()][seed % 3]
    resized = Image.fromarray(source).resize((width, height), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(resized)).float().div(255).unsqueeze(0)


def one_call(comfy, guider, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """What ``guider`` predicts for the noisy latent ``x`` at ``sigma`` (a real sampling run of one call)."""
    import comfy.samplers

    seen = {}

    def sampler(model_k, x_in, sigmas, extra_args=None, callback=None, disable=None):
        seen["out"] = model_k(x_in, sigmas[0] * x_in.new_ones(x_in.shape[0]), **(extra_args or {}))
        return seen["out"]

    sigmas = torch.tensor([sigma, 0.0])
    guider.sample(x / sigma, torch.zeros_like(x), comfy.samplers.KSAMPLER(sampler), sigmas, disable_pbar=True, seed=0)
    return seen["out"]


def conditioning(comfy, image: torch.Tensor, restoration: str = "Deblur with sigma 2"):
    clip = tiny_comfy.tiny_clip("sd1")
    encode = node(comfy, "CLIPTextEncode")()
    positive = encode.encode(clip, "an astronaut")[0]
    negative = encode.encode(clip, "")[0]
    apply = node(comfy, "SPIRE_ApplyAdaptor")
    return apply.execute(positive, negative, load_control(comfy), clip, image, restoration, 1.0, 0.0, 1.0).result


def test_guider_with_restoration_scale_one_is_exactly_cfg(setup):
    import comfy.samplers

    comfy_ = setup
    image = photo(48, 64)
    positive, negative = conditioning(comfy_, image)
    model, clip = tiny_comfy.tiny_model("sd1"), tiny_comfy.tiny_clip("sd1")
    x = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(0)) * 2
    spire = node(comfy_, "SPIRE_RestorationGuider").execute(model, positive, negative, clip, 4.5, 1.0).result[0]
    cfg = comfy.samplers.CFGGuider(model)
    cfg.set_conds(positive, negative)
    cfg.set_cfg(4.5)
    assert torch.equal(one_call(comfy_, spire, x, 2.0), one_call(comfy_, cfg, x, 2.0))


def pack_module(name: str):
    import sys

    return next(m for key, m in sys.modules.items() if key.endswith(f"spire_restoration.nodes.{name}"))


def test_guider_formula_with_separate_scales(setup):
    import comfy.samplers

    comfy_ = setup
    guidance = pack_module("guidance")
    image = photo(48, 64)
    positive, negative = conditioning(comfy_, image)
    model, clip = tiny_comfy.tiny_model("sd1"), tiny_comfy.tiny_clip("sd1")
    x = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(1)) * 2
    null = guidance.null_restoration_conds(negative, lambda control: guidance.encode_null(clip, control))

    def single(conds):  # one branch alone: CFG 1 evaluates only the positive conditioning
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(conds, negative)
        guider.set_cfg(1.0)
        return one_call(comfy_, guider, x, 2.0)

    p_s, p_empty, p_null = single(positive), single(negative), single(null)
    assert float((p_empty - p_null).abs().max()) > 1e-4  # the null restoration prompt really differs
    w_s, w_r = 3.0, 2.5
    guider = node(comfy_, "SPIRE_RestorationGuider").execute(model, positive, negative, clip, w_s, w_r).result[0]
    expected = p_null + w_r * (p_empty - p_null) + w_s * (p_s - p_empty)
    got = one_call(comfy_, guider, x, 2.0)
    assert float((got - expected).abs().max()) <= 5e-6
    cfg_only = p_empty + w_s * (p_s - p_empty)
    assert float((got - cfg_only).abs().max()) > 20 * 5e-6  # and the restoration scale is not a no-op
    with pytest.raises(ValueError, match="negative has no SPIRE adaptor"):
        plain = node(comfy_, "CLIPTextEncode")().encode(clip, "")[0]
        node(comfy_, "SPIRE_RestorationGuider").execute(model, positive, plain, clip, w_s, w_r)


def test_other_nodes_cfg_patches_apply_whatever_the_restoration_scale(setup):
    """A post-CFG function (what PerpNeg-style nodes install) and a sampler CFG function (RescaleCFG's kind) act
    on the semantic guidance with the restoration scale off 1 too (the three-branch step goes through ComfyUI's
    cfg_function)."""
    import comfy.samplers

    comfy_ = setup
    guidance = pack_module("guidance")
    positive, negative = conditioning(comfy_, photo(48, 64))
    model, clip = tiny_comfy.tiny_model("sd1"), tiny_comfy.tiny_clip("sd1")
    x = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(2)) * 2
    null = guidance.null_restoration_conds(negative, lambda control: guidance.encode_null(clip, control))

    def single(conds):
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(conds, negative)
        guider.set_cfg(1.0)
        return one_call(comfy_, guider, x, 2.0)

    p_s, p_empty, p_null = single(positive), single(negative), single(null)
    w_s, w_r = 3.0, 2.5
    seen = []

    def post_cfg(args):
        seen.append(args["cond_scale"])
        return 0.5 * args["denoised"] + 0.1

    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(post_cfg)
    guider = node(comfy_, "SPIRE_RestorationGuider").execute(patched, positive, negative, clip, w_s, w_r).result[0]
    got = one_call(comfy_, guider, x, 2.0)
    expected = 0.5 * (p_empty + w_s * (p_s - p_empty)) + 0.1 + (w_r - 1) * (p_empty - p_null)
    assert seen == [w_s]
    assert float((got - expected).abs().max()) <= 5e-6
    # a sampler CFG function (what RescaleCFG and similar nodes install) replaces the semantic CFG step: this
    # one returns the unconditional branch (ComfyUI works with x - prediction here), so w_s drops out
    replaced = model.clone()
    replaced.set_model_sampler_cfg_function(lambda args: args["uncond"])
    guider = node(comfy_, "SPIRE_RestorationGuider").execute(replaced, positive, negative, clip, w_s, w_r).result[0]
    expected = p_empty + (w_r - 1) * (p_empty - p_null)
    assert float((one_call(comfy_, guider, x, 2.0) - expected).abs().max()) <= 5e-6


def test_restore_keeps_any_size_and_upsamples_by_the_prompt(setup):
    odd = photo(45, 61)
    out = restore(setup, odd)
    assert out.shape == (1, 45, 61, 3) and float(out.min()) >= 0 and float(out.max()) <= 1
    up = restore(setup, odd, restoration_prompt="Upsample by 2.0x; Denoise with sigma 0.05")
    assert up.shape == (1, 90, 122, 3)
    kept = restore(setup, odd, restoration_prompt="Upsample by 2.0x; Denoise with sigma 0.05", upsample=False)
    assert kept.shape == (1, 45, 61, 3)


def test_restore_is_ksampler_with_the_adaptor(setup):
    """The one-node restorer equals the graph a user would wire with core nodes (same seed and settings)."""
    comfy_ = setup
    image = photo(48, 64)
    ours = restore(comfy_, image)
    model, vae = tiny_comfy.tiny_model("sd1"), tiny_comfy.tiny_vae()
    positive, negative = conditioning(comfy_, image, "Remove all degradation")
    latent = node(comfy_, "EmptyLatentImage")().generate(64, 48, 1)[0]
    sampled = node(comfy_, "KSampler")().sample(model, 7, 3, 4.0, "euler", "normal", positive, negative, latent)[0]
    decoded = node(comfy_, "VAEDecode")().decode(vae, sampled)[0]
    assert torch.equal(ours, decoded.clamp(0, 1))


@pytest.mark.parametrize("denoise", [0.5, 0.75])
def test_a_denoise_start_is_ksampler_denoise_from_the_encoded_photo(setup, denoise):
    """denoise < 1 starts from the degraded photo's latent noised to that level: exactly VAEEncode -> KSampler
    with the same denoise (how much closer to the photo it stays is measured in the miniature: random tiny
    models here reconstruct nothing)."""
    comfy_ = setup
    image = photo(48, 64)
    ours = restore(comfy_, image, steps=4, denoise=denoise)
    model, vae = tiny_comfy.tiny_model("sd1"), tiny_comfy.tiny_vae()
    positive, negative = conditioning(comfy_, image, "Remove all degradation")
    latent = node(comfy_, "VAEEncode")().encode(vae, image)[0]
    ksampler = node(comfy_, "KSampler")()
    sampled = ksampler.sample(model, 7, 4, 4.0, "euler", "normal", positive, negative, latent, denoise=denoise)[0]
    decoded = node(comfy_, "VAEDecode")().decode(vae, sampled)[0]
    assert torch.equal(ours, decoded.clamp(0, 1))
    assert float((ours - restore(comfy_, image, steps=4)).abs().max()) > 1e-3  # not the pure-noise start
    with pytest.raises(ValueError, match=r"denoise must be in \(0, 1\]"):
        restore(comfy_, image, denoise=0.0)
    with pytest.raises(ValueError, match="denoise"):
        restore(comfy_, image, denoise=float("nan"))


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storages newly allocated inside model forwards (activations); outputs that alias an
    input (in-place ops, weight casts written into existing buffers) are not new memory and are not counted."""

    def __init__(self):
        super().__init__()
        self.inside = 0
        self.live = 0
        self.peak = 0
        self.tracked: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.inside:
            inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
            for tensor in _tensors(out):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key in inputs or key in self.tracked or storage.nbytes() == 0:
                    continue
                self.tracked.add(key)
                self.live += storage.nbytes()
                weakref.finalize(storage, self._free, key, storage.nbytes())
            self.peak = max(self.peak, self.live)
        return out

    def _free(self, key, size):
        self.tracked.discard(key)
        self.live -= size


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def measure(comfy, image, **overrides) -> tuple[torch.Tensor, LiveBytes]:
    """Restore ``image`` while tracking activations of the UNet and the VAE decoder."""
    tracker = LiveBytes()

    def enter(module, args):
        tracker.inside += 1

    def leave(module, args, output):
        tracker.inside -= 1

    modules = [tiny_comfy.tiny_model("sd1").model.diffusion_model, tiny_comfy.tiny_vae().first_stage_model.decoder]
    handles = [h for m in modules for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with tracker:
            out = restore(comfy, image, **overrides)
    finally:
        for handle in handles:
            handle.remove()
    return out, tracker


def test_tiling_bounds_activation_memory_by_the_tile(setup):
    small, tracked_small = measure(setup, photo(64, 64), tile_size=32, tile_overlap=8)
    large, tracked_large = measure(setup, photo(128, 128), tile_size=32, tile_overlap=8)
    assert large.shape == (1, 128, 128, 3)
    assert tracked_small.peak > 0
    assert tracked_large.peak <= 1.2 * tracked_small.peak, (tracked_small.peak, tracked_large.peak)
    _, untiled = measure(setup, photo(128, 128), tile_size=0)
    assert untiled.peak > 2 * tracked_small.peak  # without tiles the same photo needs far more


def test_tiles_leave_no_seam_on_a_smooth_image(setup):
    ramp = torch.linspace(0.2, 0.8, 128)
    smooth = torch.stack(
        [
            ramp[None, :].expand(96, 128),
            ramp[:, None].expand(128, 96).T[:96, :128] * 0 + 0.5,
            ramp.flip(0)[None, :].expand(96, 128),
        ],
        dim=-1,
    ).unsqueeze(0)
    out = restore(setup, smooth, tile_size=64, tile_overlap=24)[0]
    steps = (out[:, 1:] - out[:, :-1]).abs().mean(dim=(0, 2))  # mean step between neighbouring columns
    borders = [63, 64, 39, 40]  # tile edges (tiles start at 0, 40, 64 pixels along x)
    inside = [i for i in range(steps.shape[0]) if all(abs(i - b) > 4 for b in borders)]
    assert float(steps[borders].max()) <= float(steps[inside].max())
    # same size as one tile: tiling is a no-op
    whole = restore(setup, photo(64, 64))
    assert torch.equal(restore(setup, photo(64, 64), tile_size=64, tile_overlap=16), whole)


def test_color_fix_matches_the_degraded_colours(setup):
    image = photo(48, 64, seed=1)
    plain = restore(setup, image)
    fixed = restore(setup, image, color_fix="adain")
    means = image.mean(dim=(1, 2))
    assert float((fixed.mean(dim=(1, 2)) - means).abs().max()) < float((plain.mean(dim=(1, 2)) - means).abs().max())
    assert float((fixed.mean(dim=(1, 2)) - means).abs().max()) <= 0.02


@pytest.mark.parametrize(
    ("overrides", "image", "message"),
    [
        ({"tile_size": 64, "tile_overlap": 40}, (48, 64), "tile_overlap (40) must be less than half of tile_size (64)"),
        (
            {"tile_size": 16, "tile_overlap": 0},
            (48, 64),
            "tile_size (16) must be 0 (the whole image at once) or at least 32",
        ),
        ({"tile_size": -8}, (48, 64), "tile_size (-8) and tile_overlap (16) must not be negative"),
        ({"restoration_prompt": "Make it pretty"}, (48, 64), "restoration_prompt"),
        ({}, (0, 0), "image is an empty batch"),
    ],
)
def test_bad_input_is_named(setup, overrides, image, message):
    tensor = photo(48, 64)[:0] if image == (0, 0) else photo(*image)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        restore(setup, tensor, **overrides)


def counting_model(calls: list):
    """The tiny model with a UNet wrapper that counts model calls (and can act on the first)."""
    model = tiny_comfy.tiny_model("sd1").clone()

    def wrapper(apply_model, args):
        calls.append(tuple(args["input"].shape))
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(wrapper)
    return model


def test_bad_tiles_fail_before_any_model_call(setup):
    calls: list = []
    model = counting_model(calls)
    for tile_size in (8, 16, 24, 31):  # once failed in the tiled decode, after all the sampling
        with pytest.raises(ValueError, match=rf"tile_size \({tile_size}\) must be 0"):
            restore(setup, photo(96, 96), model=model, steps=2, tile_size=tile_size, tile_overlap=0)
    assert calls == []
    out = restore(setup, photo(96, 96), model=model, steps=2, tile_size=32, tile_overlap=0)
    assert out.shape == (1, 96, 96, 3) and len(calls) > 0


@pytest.mark.parametrize(("tile_size", "tile_overlap"), [(32, 8), (40, 16), (72, 32)])
def test_small_tiles_with_wide_overlaps_decode(setup, tile_size, tile_overlap):
    # 40/16 and 72/32 once divided by zero in the decoder's half-width tiles
    out = restore(setup, photo(96, 112), tile_size=tile_size, tile_overlap=tile_overlap)
    assert out.shape == (1, 96, 112, 3) and bool(torch.isfinite(out).all())
    assert 0.05 < float(out.std()) and float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (5, 13), (31, 9)])
def test_tiny_images_are_padded_up_and_cropped_back(setup, size):
    out = restore(setup, photo(*size))  # 8 x 8 and smaller once failed deep in torch
    assert out.shape == (1, *size, 3) and bool(torch.isfinite(out).all())
    up = restore(setup, photo(*size), restoration_prompt="Upsample by 2.0x")
    assert up.shape == (1, 2 * size[0], 2 * size[1], 3)


def test_cancel_stops_between_tiles(setup):
    import comfy.model_management as mm

    calls: list = []
    model = counting_model(calls)
    first = model.model_options["model_function_wrapper"]

    def interrupting(apply_model, args):
        out = first(apply_model, args)
        mm.interrupt_current_processing(True)  # the user presses Cancel during the first tile
        return out

    model.set_model_unet_function_wrapper(interrupting)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            restore(setup, photo(128, 128), model=model, steps=5, tile_size=32, tile_overlap=8)
    finally:
        mm.interrupt_current_processing(False)
    # 16 tiles a step and 5 steps: one model call, then the next tile checks and stops
    assert len(calls) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["LOW_VRAM", "NO_VRAM"])
def test_low_vram_restore_matches_normal_vram(setup, monkeypatch, mode):
    """ComfyUI's low-VRAM modes (``--lowvram``; ``--novram`` streams every weight from the CPU per layer) restore
    what normal VRAM restores: the adaptor is built with ``comfy.ops``, so partial loading and weight casting
    reach it like any ControlNet. Runs with ``--gpu`` on CUDA (on the CPU there is nothing to offload)."""
    import comfy.model_management as mm

    image = photo(96, 128, seed=1)
    mm.unload_all_models()
    normal = restore(setup, image)
    mm.unload_all_models()
    monkeypatch.setattr(mm, "vram_state", getattr(mm.VRAMState, mode))
    monkeypatch.setattr(mm, "lowvram_available", True)
    low = restore(setup, image)
    if mode == "NO_VRAM":  # the weights stayed on the CPU: the mode was in force (pins ComfyUI's attribute)
        partial = [m for m in mm.loaded_models() if getattr(m.model, "model_lowvram", False)]
        assert partial, "no model was loaded partially under NO_VRAM"
    mm.unload_all_models()
    assert low.shape == normal.shape
    assert (low - normal).abs().max().item() <= 2e-3
