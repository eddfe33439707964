"""The tiny SDXL family of ``tiny_comfy`` inside the real ComfyUI: the UNet's shape, the two-encoder CLIP through
ComfyUI's public CLIP API, SDXL's pooled-text and size conditioning, and deterministic sampling."""

from __future__ import annotations

import pytest
import torch
from spire_test_support import tiny_comfy

from spire_core.models import load_base_unet
from spire_core.models.ldm import unet_config_from_ldm
from spire_core.models.tiny import tiny_unet_config

PROMPT = "a photograph of an astronaut riding a horse"


def conditioning(clip, text: str):
    """What CLIPTextEncode gives: [[cond, {"pooled_output": pooled}]]."""
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled}]]


def test_unet_is_sdxl_shaped(comfy):
    import comfy.model_base as model_base

    model = tiny_comfy.tiny_model("sdxl")
    assert type(model.model) is model_base.SDXL
    assert model.model.model_type == model_base.ModelType.EPS
    state = model.model.diffusion_model.state_dict()
    assert tuple(state["label_emb.0.0.weight"].shape) == (256, 32 + 6 * 256)  # time embedding 4 x 64, adm 1568
    assert tuple(state["input_blocks.0.0.weight"].shape) == (64, 4, 3, 3)
    assert tuple(state["input_blocks.3.1.proj_in.weight"].shape) == (128, 128)  # linear projections
    assert tuple(state["input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight"].shape) == (128, 64)
    assert not any(k.startswith("input_blocks.1.1.") for k in state)  # no attention at the first level
    for prefix, depth in (("input_blocks.3.1.", 2), ("middle_block.1.", 2), ("output_blocks.0.1.", 2)):
        blocks = {k[len(prefix) :].split(".")[1] for k in state if k.startswith(prefix + "transformer_blocks.")}
        assert len(blocks) == depth, prefix
    assert not any(k.startswith(("output_blocks.2.1.", "output_blocks.3.1.")) for k in state)
    assert model.model.diffusion_model.num_head_channels == 64


def test_unet_is_the_twin_of_the_diffusers_tiny_config(comfy):
    """Read back from its tensors the way spire_core reads a single-file checkpoint, the ComfyUI UNet is the tiny
    diffusers SDXL config (so ``save_checkpoint(..., "sdxl")`` loads into diffusers as the same network)."""
    shapes = {k: tuple(v.shape) for k, v in tiny_comfy.tiny_model("sdxl").model.diffusion_model.state_dict().items()}
    ours = unet_config_from_ldm(shapes)
    twin = tiny_unet_config("sdxl", cross_attention_dim=64)
    for key in sorted(set(twin) - {"sample_size"}):
        assert ours[key] == twin[key], key


def test_saved_checkpoint_loads_into_diffusers_as_the_same_network(comfy, tmp_path):
    """``save_checkpoint(..., "sdxl")`` read by spire_core gives the denoised output ComfyUI's model gives, with
    SDXL's pooled text and size ids (ComfyUI: ``pooled_output``/``width``/``height``; diffusers: ``text_embeds``
    and ``time_ids``)."""
    import comfy.samplers as samplers

    model = tiny_comfy.tiny_model("sdxl")
    unet, info = load_base_unet(tiny_comfy.save_checkpoint(tmp_path / "tiny_sdxl.safetensors", "sdxl"))
    assert (info.base_family, info.prediction_type) == ("sdxl", "epsilon")
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 8, 8, generator=g) * 3.0, torch.randn(1, 77, 64, generator=g)
    pooled = torch.randn(1, 32, generator=g)
    sigma = torch.full((1,), 2.5)
    seen = {}

    def one_call(model_k, x_in, sigmas, extra_args=None, callback=None, disable=None):
        seen["out"] = model_k(x_in, sigmas[0] * x_in.new_ones(x_in.shape[0]), **(extra_args or {}))
        return seen["out"]

    guider = samplers.CFGGuider(model)
    guider.set_conds([[context, {"pooled_output": pooled, "width": 64, "height": 48}]], [])
    guider.set_cfg(1.0)
    noise = x / sigma  # a zero latent noised at sigma is exactly x
    guider.sample(noise, torch.zeros_like(x), samplers.KSAMPLER(one_call), torch.cat([sigma, sigma * 0]), seed=0)
    sampling = model.model.model_sampling
    time_ids = torch.tensor([[48.0, 64.0, 0.0, 0.0, 48.0, 64.0]])  # height, width, crops, target height, width
    eps = unet.float()(
        sampling.calculate_input(sigma, x),
        sampling.timestep(sigma).float(),
        encoder_hidden_states=context,
        added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
    ).sample
    ours = sampling.calculate_denoised(sigma, eps, x)
    assert float((ours - seen["out"]).abs().max()) <= 1e-4


def test_clip_gives_sdxl_conditioning(comfy):
    clip = tiny_comfy.tiny_clip("sdxl")
    tokens = clip.tokenize(PROMPT)
    assert set(tokens) == {"l", "g"}  # ComfyUI's SDXL tokenizer: one token stream per encoder
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    assert tuple(cond.shape) == (1, 77, 64)  # CLIP-L (32) and CLIP-G (32) hidden states side by side
    assert tuple(pooled.shape) == (1, 32)  # CLIP-G's pooled projection
    assert torch.isfinite(cond).all() and torch.isfinite(pooled).all()
    other, _ = clip.encode_from_tokens(clip.tokenize("an empty room"), return_pooled=True)
    assert float((other - cond).abs().max()) > 1e-3  # the text matters
    again, pooled_again = clip.encode_from_tokens(clip.tokenize(PROMPT), return_pooled=True)
    assert torch.equal(again, cond) and torch.equal(pooled_again, pooled)


def test_extra_conds_carry_pooled_text_and_size(comfy):
    model = tiny_comfy.tiny_model("sdxl")
    clip = tiny_comfy.tiny_clip("sdxl")
    _, pooled = clip.encode_from_tokens(clip.tokenize(PROMPT), return_pooled=True)
    noise = torch.zeros(1, 4, 8, 8)
    conds = model.model.extra_conds(pooled_output=pooled, width=64, height=64, noise=noise, device=noise.device)
    y = conds["y"].cond
    assert tuple(y.shape) == (1, 1568)
    assert torch.equal(y[:, :32], pooled)
    larger = model.model.extra_conds(pooled_output=pooled, width=128, height=64, noise=noise, device=noise.device)
    assert not torch.equal(larger["y"].cond[:, 32:], y[:, 32:])  # the size ids reach y


def sample(seed: int = 0, pooled_scale: float = 1.0) -> torch.Tensor:
    """Core KSampler (euler, 2 steps, CFG 5) at 64 x 64 px with CLIPTextEncode-style conditioning."""
    import nodes

    clip = tiny_comfy.tiny_clip("sdxl")
    positive, negative = conditioning(clip, PROMPT), conditioning(clip, "blurry")
    for entry in positive + negative:
        entry[1]["pooled_output"] = entry[1]["pooled_output"] * pooled_scale
    latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    model = tiny_comfy.tiny_model("sdxl")
    out = nodes.common_ksampler(model, seed, 2, 5.0, "euler", "normal", positive, negative, latent)
    return out[0]["samples"]


def test_ksampler_runs_and_is_deterministic(comfy):
    first = sample()
    assert tuple(first.shape) == (1, 4, 8, 8)
    assert torch.isfinite(first).all()
    assert torch.equal(sample(), first)
    assert not torch.equal(sample(seed=1), first)
    assert float((sample(pooled_scale=0.0) - first).abs().max()) > 1e-4  # the pooled text reaches the UNet (y)


@pytest.mark.parametrize(
    ("name", "family"),
    [("tiny_sdxl", "sdxl"), ("juggernautXL_v9", "sdxl"), ("sd_xl_base_1.0.safetensors", "sdxl"), ("tiny_sd2", "sd2")],
)
def test_family_of(name, family):
    assert tiny_comfy.family_of(name) == family
    assert tiny_comfy.family_of("v1-5-pruned-emaonly-fp16.safetensors") == "sd1"


def test_save_checkpoint_writes_the_sdxl_unet(comfy, tmp_path):
    from safetensors import safe_open

    path = tiny_comfy.save_checkpoint(tmp_path / "tiny_sdxl.safetensors", "sdxl")
    with safe_open(str(path), framework="pt") as f:
        metadata, keys = f.metadata(), set(f.keys())
        adm = f.get_tensor("model.diffusion_model.label_emb.0.0.weight")
    assert metadata == {"test.tiny_family": "sdxl", "prediction_type": "epsilon"}
    assert all(k.startswith("model.diffusion_model.") for k in keys)
    assert len(keys) == len(tiny_comfy.tiny_model("sdxl").model.diffusion_model.state_dict())
    assert tuple(adm.shape) == (256, 1568)
