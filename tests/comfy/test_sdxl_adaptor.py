"""SDXL adaptors inside the real ComfyUI (tiny SDXL model): the ComfyUI adaptor equals the diffusers one, a fresh
adaptor is an exact identity in KSampler, the restoration prompt's pooled embedding (not the semantic one) reaches
the trunk, SDXL and SD1 adaptors are refused on each other's checkpoints, and Restore (SPIRE) runs."""

from __future__ import annotations

import pytest
import torch
from spire_test_support import tiny_comfy

from spire_core.models import SpireAdaptor, load_base_unet, predict_noise, save_adaptor, sdxl_time_ids
from spire_core.prompt import restoration_features

POOLED = 32
CONTEXT = tiny_comfy.UNET_CONFIGS["sdxl"]["context_dim"]


def randomize(adaptor: SpireAdaptor, seed: int, scale: float = 0.05) -> SpireAdaptor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*adaptor.head_parameters(), *adaptor.numeric_parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        if adaptor.fusion == "additive":
            cn = adaptor.controlnet
            for p in [*cn.controlnet_down_blocks.parameters(), *cn.controlnet_mid_block.parameters()]:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return adaptor


@pytest.fixture(scope="module")
def adaptors(comfy, tmp_path_factory):
    """fusion, "fresh" or "half" (a narrower trunk) -> (diffusers UNet, diffusers adaptor, file in models/spire)."""
    folder = comfy.models_dir("spire")
    work = tmp_path_factory.mktemp("sdxl_adaptors")
    checkpoint = tiny_comfy.save_checkpoint(work / "tiny_sdxl.safetensors", "sdxl")
    unet, info = load_base_unet(checkpoint)
    assert info.base_family == "sdxl"
    unet = unet.float().eval().requires_grad_(False)
    made = {}
    for key, fusion in (
        ("fresh", "modulation"),
        ("modulation", "modulation"),
        ("additive", "additive"),
        ("half", "modulation"),
    ):
        trunk = "half" if key == "half" else "full"  # a narrower trunk: 32 channels for the tiny base's 64
        adaptor = SpireAdaptor.from_unet(unet, fusion=fusion, trunk=trunk).eval()
        if key != "fresh":
            randomize(adaptor, seed=len(made))
        name = f"sdxl_{key}.safetensors"
        save_adaptor(adaptor, folder / name)
        made[key] = (unet, adaptor, name)
    return made


def load_control(name: str):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS["SPIRE_AdaptorLoader"].execute(name).result[0]


def inputs(batch: int = 2, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, 4, size, size, generator=g) * 3.0,
        "semantic": torch.randn(batch, 77, CONTEXT, generator=g),
        "semantic_pooled": torch.randn(batch, POOLED, generator=g),
        "restoration": torch.randn(batch, 77, CONTEXT, generator=g),
        "restoration_pooled": torch.randn(batch, POOLED, generator=g),
        "hint": torch.rand(batch, 3, 8 * size, 8 * size, generator=g),
        "features": restoration_features(["Denoise with sigma 0.05", "Deblur with sigma 2.5"])[:batch],
    }


def comfy_denoised(model, control, sigma, data, strength=1.0):
    """One real ComfyUI model call (CFGGuider, cfg 1, a one-call sampler) on ``data["x"]`` at ``sigma``, the SDXL
    size conditioning built by ComfyUI from the semantic pooled embedding and the latent's size."""
    import comfy.samplers

    options = {"pooled_output": data["semantic_pooled"]}
    if control is not None:
        options["control"] = control.copy().set_cond_hint(data["hint"], strength, (0.0, 1.0))
        options["control"].set_restoration(data["restoration"], data["restoration_pooled"], data["features"])
    seen = {}

    def one_call(model_k, x_in, sigmas, extra_args=None, callback=None, disable=None):
        seen["out"] = model_k(x_in, sigmas[0] * x_in.new_ones(x_in.shape[0]), **(extra_args or {}))
        return seen["out"]

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds([[data["semantic"], options]], [])
    guider.set_cfg(1.0)
    x = data["x"]
    sigmas = torch.tensor([float(sigma), 0.0])
    guider.sample(x / float(sigma), torch.zeros_like(x), comfy.samplers.KSAMPLER(one_call), sigmas, seed=0)
    return seen["out"]


def diffusers_denoised(model, unet, adaptor, sigma, data, strength=1.0):
    sampling = model.model.model_sampling
    x = data["x"]
    sigma_t = torch.full((x.shape[0],), float(sigma))
    timestep = sampling.timestep(sigma_t).float()
    x_in = sampling.calculate_input(sigma_t, x)
    time_ids = sdxl_time_ids(8 * x.shape[-2], 8 * x.shape[-1]).expand(x.shape[0], -1)
    unet_added = {"text_embeds": data["semantic_pooled"], "time_ids": time_ids}
    with torch.no_grad():
        out = predict_noise(
            unet,
            adaptor,
            x_in,
            timestep,
            data["semantic"],
            data["restoration"],
            data["hint"],
            strength=strength,
            unet_kwargs={"added_cond_kwargs": unet_added},
            restoration_features=data["features"],
            restoration_added_cond={"text_embeds": data["restoration_pooled"], "time_ids": time_ids},
        )
    return sampling.calculate_denoised(sigma_t, out, x)


@pytest.mark.parametrize("fusion", ["modulation", "additive", "half"])
def test_diffusers_and_comfy_sdxl_adaptors_give_the_same_prediction(comfy, adaptors, fusion):
    model = tiny_comfy.tiny_model("sdxl")
    unet, adaptor, name = adaptors[fusion]
    control = load_control(name)
    assert (control.adaptor.spire_config.trunk_name == "32/64 channels") == (fusion == "half")
    data = inputs(seed=3)
    for sigma in (0.3, 5.0):
        base = comfy_denoised(model, None, sigma, data)
        ours = diffusers_denoised(model, unet, adaptor, sigma, data)
        theirs = comfy_denoised(model, control, sigma, data)
        difference = float((ours - theirs).abs().max())
        assert difference <= 1e-4, (fusion, sigma, difference)
        assert float((theirs - base).abs().max()) > 100 * max(difference, 1e-6)  # the adaptor really acts
    # the trunk reads the restoration prompt's pooled embedding, in both worlds alike
    other = {**data, "restoration_pooled": data["restoration_pooled"] + 20.0}
    ours_other = diffusers_denoised(model, unet, adaptor, 5.0, other)
    theirs_other = comfy_denoised(model, control, 5.0, other)
    other_difference = float((ours_other - theirs_other).abs().max())
    assert other_difference <= 1e-4
    assert float((theirs_other - theirs).abs().max()) > 20 * max(other_difference, difference, 1e-6)


def test_fresh_sdxl_adaptor_is_an_exact_identity_in_ksampler(comfy, adaptors):
    import nodes

    model = tiny_comfy.tiny_model("sdxl")
    clip = tiny_comfy.tiny_clip("sdxl")

    def encode(text: str):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    apply = nodes.NODE_CLASS_MAPPINGS["SPIRE_ApplyAdaptor"]
    control = load_control(adaptors["fresh"][2])
    positive, negative = apply.execute(
        encode("a photo"), encode(""), control, clip, image, "Deblur with sigma 1.5", 1.0, 0.0, 1.0
    ).result
    latent = {"samples": torch.zeros(1, 4, 8, 8)}

    def sample(pos, neg):
        return nodes.common_ksampler(model, 7, 3, 5.0, "euler", "normal", pos, neg, latent)[0]["samples"]

    bare = sample(encode("a photo"), encode(""))
    with_fresh = sample(positive, negative)
    assert torch.equal(with_fresh, bare)  # bit-identical
    random = load_control(adaptors["modulation"][2])
    positive, negative = apply.execute(
        encode("a photo"), encode(""), random, clip, image, "Deblur with sigma 1.5", 1.0, 0.0, 1.0
    ).result
    assert float((sample(positive, negative) - bare).abs().max()) > 1e-3


def test_sdxl_and_sd1_adaptors_are_refused_on_each_others_checkpoints(comfy, adaptors, tmp_path):
    import nodes

    sd1_checkpoint = tiny_comfy.save_checkpoint(tmp_path / "tiny_sd1.safetensors", "sd1")
    sd1_unet, _ = load_base_unet(sd1_checkpoint)
    save_adaptor(SpireAdaptor.from_unet(sd1_unet), comfy.models_dir("spire") / "sd1_for_refusal.safetensors")
    image = torch.rand(1, 64, 64, 3)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    apply = nodes.NODE_CLASS_MAPPINGS["SPIRE_ApplyAdaptor"]
    for family, adaptor_name, wanted in (
        ("sd1", adaptors["fresh"][2], "extra \\(ADM\\) conditioning: adaptor 1568, base model None"),
        ("sdxl", "sd1_for_refusal.safetensors", "extra \\(ADM\\) conditioning: adaptor None, base model 1568"),
    ):
        clip = tiny_comfy.tiny_clip(family)
        embedding, pooled = clip.encode_from_tokens(clip.tokenize("a photo"), return_pooled=True)
        cond = [[embedding, {"pooled_output": pooled}]]
        positive, negative = apply.execute(
            cond, cond, load_control(adaptor_name), clip, image, "Remove all degradation", 1.0, 0.0, 1.0
        ).result
        with pytest.raises(ValueError, match=wanted):
            nodes.common_ksampler(
                tiny_comfy.tiny_model(family), 0, 1, 1.0, "euler", "normal", positive, negative, latent
            )


def test_restore_node_restores_with_an_sdxl_checkpoint(comfy, adaptors):
    import nodes

    image = torch.rand(1, 64, 48, 3, generator=torch.Generator().manual_seed(2))
    model, clip, vae = tiny_comfy.tiny_model("sdxl"), tiny_comfy.tiny_clip("sdxl"), tiny_comfy.tiny_vae()
    values = {
        "semantic_prompt": "a photo",
        "restoration_prompt": "Deblur with sigma 1.5",
        "steps": 2,
        "sampler_name": "euler",
        "scheduler": "normal",
        "semantic_scale": 4.0,
        "restoration_scale": 2.0,  # the third branch: the null restoration prompt's pooled embedding too
        "seed": 7,
        "strength": 1.0,
        "color_fix": "none",
        "tile_size": 0,
        "tile_overlap": 16,
    }
    restore = nodes.NODE_CLASS_MAPPINGS["SPIRE_Restore"]

    def run(name: str, **overrides) -> torch.Tensor:
        control = load_control(adaptors[name][2])
        return restore.execute(model, clip, vae, control, image, **{**values, **overrides}).result[0]

    out = run("modulation")
    assert out.shape == image.shape and bool(torch.isfinite(out).all())
    assert float((out - run("fresh")).abs().max()) > 1e-3  # the adaptor acts through the Restore node too
    assert torch.equal(out, run("modulation"))  # and deterministically
