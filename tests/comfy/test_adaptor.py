"""The SPIRE adaptor inside the real ComfyUI: identity at init, equivalence with the diffusers path, gating,
batching, chaining, and the transformer_options/model_options contracts (tiny SD1 eps / SD2 v models)."""

from __future__ import annotations

import copy

import pytest
import torch
from spire_test_support import tiny_comfy

from spire_core.models import SpireAdaptor, load_base_unet, predict_noise, save_adaptor
from spire_core.prompt import restoration_features

FAMILIES = ("sd1", "sd2")
FUSIONS = ("modulation", "additive")


def randomize(adaptor: SpireAdaptor, seed: int, scale: float = 0.05) -> SpireAdaptor:
    """Non-zero heads (modulation) or zero convs (additive), and numeric channel, so the adaptor really acts."""
    modules = (
        [adaptor.gamma_down, adaptor.beta_down, adaptor.gamma_mid, adaptor.beta_mid]
        if adaptor.fusion == "modulation"
        else [adaptor.controlnet.controlnet_down_blocks, adaptor.controlnet.controlnet_mid_block]
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        for p in adaptor.numeric_parameters():  # tokens of the order of the prompt's own embedding
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if adaptor.numeric is not None:  # the tiny trunk's cross-attention is too weak to read a few tokens
            for name, p in adaptor.controlnet.named_parameters():
                if ".attn2.to_" in name:
                    p.mul_(10.0)
    return adaptor


@pytest.fixture(scope="module")
def adaptors(comfy, tmp_path_factory):
    """(family, fusion, random?) -> (diffusers UNet, diffusers adaptor, file name in models/spire); random ones with
    the numeric channel, and (family, fusion, "plain") random without it (a format-1 adaptor, CLIP only)."""
    folder = comfy.models_dir("spire")
    work = tmp_path_factory.mktemp("adaptor_models")
    made = {}
    for family in FAMILIES:
        checkpoint = tiny_comfy.save_checkpoint(work / f"tiny_{family}.safetensors", family)
        unet, info = load_base_unet(checkpoint, prediction_type="epsilon" if family == "sd1" else "v_prediction")
        unet = unet.float().eval().requires_grad_(False)
        for fusion in FUSIONS:
            for random in (False, True):
                adaptor = SpireAdaptor.from_unet(
                    unet, fusion=fusion, base_family=family, prediction_type=info.prediction_type
                ).eval()
                if random:
                    randomize(adaptor, seed=len(made))
                name = f"{family}_{fusion}_{'random' if random else 'fresh'}.safetensors"
                save_adaptor(adaptor, folder / name)
                made[family, fusion, random] = (unet, adaptor, name)
            plain = SpireAdaptor.from_unet(
                unet, fusion=fusion, base_family=family, prediction_type=info.prediction_type, numeric_tokens=0
            ).eval()
            randomize(plain, seed=len(made))
            name = f"{family}_{fusion}_plain.safetensors"
            save_adaptor(plain, folder / name)
            made[family, fusion, "plain"] = (unet, plain, name)
    return made


def load_control(name: str):
    import nodes  # ComfyUI's registry: the loader node exactly as ComfyUI registered it

    return nodes.NODE_CLASS_MAPPINGS["SPIRE_AdaptorLoader"].execute(name).result[0]


def comfy_denoised(
    model,
    control,
    x,
    sigma,
    semantic,
    restoration,
    hint,
    strength=1.0,
    percent=(0.0, 1.0),
    extra_conds=None,
    features=None,
):
    """One real ComfyUI model call through CFGGuider (cfg 1) and a one-call KSAMPLER: the denoised output at
    ``sigma`` for the noisy latent ``x`` (the sampler sees exactly ``x``; the guider loads models, prepares
    the controls and cleans them up as in any sampling run). With ``features`` the control carries the
    restoration embedding and its numeric features itself, as 'Apply Adaptor (SPIRE)' sets them."""
    import comfy.samplers

    cond_options = {"cross_attn_controlnet": restoration}
    if control is not None:
        cond_options["control"] = control.copy().set_cond_hint(hint, strength, percent)
        if features is not None:
            cond_options["control"].restoration_embedding = restoration
            cond_options["control"].restoration_features = features
    cond_options.update(extra_conds or {})
    seen = {}

    def one_call(model_k, x_in, sigmas, extra_args=None, callback=None, disable=None):
        seen["x"] = x_in.clone()
        seen["out"] = model_k(x_in, sigmas[0] * x_in.new_ones(x_in.shape[0]), **(extra_args or {}))
        return seen["out"]

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds([[semantic, cond_options]], [])
    guider.set_cfg(1.0)
    sigmas = torch.tensor([float(sigma), 0.0])
    noise = x / float(sigma)  # EPS/V noise scaling at sigma with a zero latent gives exactly x
    guider.sample(noise, torch.zeros_like(x), comfy.samplers.KSAMPLER(one_call), sigmas, disable_pbar=True, seed=0)
    torch.testing.assert_close(seen["x"], x, rtol=0, atol=1e-5)
    return seen["out"]


def diffusers_denoised(model, unet, adaptor, x, sigma, semantic, restoration, hint, strength=1.0, features=None):
    """The diffusers path (spire_core.models.predict_noise) mapped to ComfyUI's denoised output."""
    sampling = model.model.model_sampling
    sigma_t = torch.full((x.shape[0],), float(sigma))
    timestep = sampling.timestep(sigma_t).float()
    x_in = sampling.calculate_input(sigma_t, x)
    with torch.no_grad():
        if adaptor is None:
            out = unet(x_in, timestep, encoder_hidden_states=semantic).sample
        else:
            out = predict_noise(
                unet,
                adaptor,
                x_in,
                timestep,
                semantic,
                restoration,
                hint,
                strength=strength,
                restoration_features=features,
            )
    return sampling.calculate_denoised(sigma_t, out, x)


def inputs(family: str, batch: int = 1, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dim = tiny_comfy.UNET_CONFIGS[family]["context_dim"]
    x = torch.randn(batch, 4, size, size, generator=g) * 3.0
    semantic = torch.randn(batch, 77, dim, generator=g)
    restoration = torch.randn(batch, 77, dim, generator=g)
    hint = torch.rand(batch, 3, 8 * size, 8 * size, generator=g)
    return x, semantic, restoration, hint


@pytest.mark.parametrize("family", FAMILIES)
def test_base_unet_conversion_matches_comfy(comfy, adaptors, family):
    """Sanity for everything below: the single-file checkpoint loads into diffusers with the same output."""
    model = tiny_comfy.tiny_model(family)
    unet = adaptors[family, "modulation", False][0]
    x, semantic, _, _ = inputs(family)
    ours = diffusers_denoised(model, unet, None, x, 2.5, semantic, None, None)
    theirs = comfy_denoised(model, None, x, 2.5, semantic, None, None)
    assert float((ours - theirs).abs().max()) <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("channel", ["numeric", "plain"])
def test_diffusers_and_comfy_paths_give_the_same_prediction(comfy, adaptors, family, fusion, channel):
    model = tiny_comfy.tiny_model(family)
    unet, adaptor, name = adaptors[family, fusion, True if channel == "numeric" else "plain"]
    control = load_control(name)
    assert (control.adaptor.spire_numeric is not None) == (channel == "numeric")
    x, semantic, restoration, hint = inputs(family, batch=2, seed=3)
    features = restoration_features(["Denoise with sigma 0.05", "Deblur with sigma 2.5; Denoise with sigma 0.20"])
    for sigma in (0.3, 5.0):
        base = comfy_denoised(model, None, x, sigma, semantic, restoration, hint)
        for given in (None, features):  # numbers unknown (core Apply ControlNet) and given (Apply Adaptor)
            ours = diffusers_denoised(model, unet, adaptor, x, sigma, semantic, restoration, hint, features=given)
            theirs = comfy_denoised(model, control, x, sigma, semantic, restoration, hint, features=given)
            difference = float((ours - theirs).abs().max())
            assert difference <= 1e-4, (family, fusion, sigma, difference)
            assert float((theirs - base).abs().max()) > 100 * max(difference, 1e-6)  # the adaptor really acts
        if channel == "numeric":  # the numbers steer, the same way in both worlds
            other = features.flip(0)
            ours_other = diffusers_denoised(model, unet, adaptor, x, sigma, semantic, restoration, hint, features=other)
            theirs_other = comfy_denoised(model, control, x, sigma, semantic, restoration, hint, features=other)
            assert float((ours_other - theirs_other).abs().max()) <= 1e-4
            assert float((theirs_other - theirs).abs().max()) > 100 * max(difference, 1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_adaptor_and_strength_zero_are_exact_identities(comfy, adaptors, family):
    model = tiny_comfy.tiny_model(family)
    x, semantic, restoration, hint = inputs(family, seed=4)
    base = comfy_denoised(model, None, x, 1.7, semantic, restoration, hint)
    fresh = comfy_denoised(
        model, load_control(adaptors[family, "modulation", False][2]), x, 1.7, semantic, restoration, hint
    )
    assert torch.equal(fresh, base)
    random = load_control(adaptors[family, "modulation", True][2])
    assert torch.equal(comfy_denoised(model, random, x, 1.7, semantic, restoration, hint, strength=0.0), base)
    assert not torch.equal(comfy_denoised(model, random, x, 1.7, semantic, restoration, hint, strength=1.0), base)


def test_start_and_end_percent_gate_by_sigma(comfy, adaptors):
    model = tiny_comfy.tiny_model("sd1")
    control = load_control(adaptors["sd1", "modulation", True][2])
    sampling = model.model.model_sampling
    x, semantic, restoration, hint = inputs("sd1", seed=5)
    high, low = float(sampling.percent_to_sigma(0.1)), float(sampling.percent_to_sigma(0.9))
    for sigma, active in ((high, False), (low, True)):  # acting only for percent in [0.5, 1.0]
        base = comfy_denoised(model, None, x, sigma, semantic, restoration, hint)
        gated = comfy_denoised(model, control, x, sigma, semantic, restoration, hint, percent=(0.5, 1.0))
        assert torch.equal(gated, base) is (not active), sigma


def test_batch_items_use_their_own_hint_and_prompt(comfy, adaptors):
    model = tiny_comfy.tiny_model("sd2")
    control = load_control(adaptors["sd2", "modulation", True][2])
    x, semantic, restoration, hint = inputs("sd2", batch=2, seed=6)
    restoration = restoration * 30  # tiny random trunk: make the prompt's effect stand well above rounding
    both = comfy_denoised(model, control, x, 1.0, semantic, restoration, hint)
    swapped = comfy_denoised(model, control, x, 1.0, semantic, restoration.flip(0), hint.flip(0))
    for i in range(2):
        alone = comfy_denoised(
            model, control, x[i : i + 1], 1.0, semantic[i : i + 1], restoration[i : i + 1], hint[i : i + 1]
        )
        other = comfy_denoised(
            model, control, x[i : i + 1], 1.0, semantic[i : i + 1], restoration[1 - i : 2 - i], hint[1 - i : 2 - i]
        )
        assert float((both[i] - alone[0]).abs().max()) <= 2e-6
        assert float((swapped[i] - other[0]).abs().max()) <= 2e-6
        assert (
            float((alone - other).abs().max()) > 2e-5
        )  # 10x the tolerance above: hint and prompt of the other item change the result


def test_transformer_options_reach_the_unet_and_model_options_are_not_mutated(comfy, adaptors):
    """get_control must receive the very transformer_options dict the UNet then sees (the patch travels in
    it), and the sampler's model_options (with a patch of its own) must come out unchanged."""
    model = tiny_comfy.tiny_model("sd1").clone()
    seen = []

    def own_patch(h, hsp, transformer_options):
        seen.append(transformer_options)
        return h, hsp

    model.set_model_output_block_patch(own_patch)
    before = copy.copy(model.model_options["transformer_options"]["patches"]["output_block_patch"])
    snapshot = repr(model.model_options)  # model_options reach the sampler as the guider's model_options
    control = load_control(adaptors["sd1", "modulation", True][2])
    x, semantic, restoration, hint = inputs("sd1", seed=7)
    comfy_denoised(model, control, x, 1.0, semantic, restoration, hint)
    patches = seen[0]["patches"]["output_block_patch"]
    assert [type(p).__name__ for p in patches] == ["function", "SpireModulationPatch"]
    assert model.model_options["transformer_options"]["patches"]["output_block_patch"] == before
    assert repr(model.model_options) == snapshot


def test_numbers_unknown_on_the_core_controlnet_path_are_read_as_unparsed_with_a_warning(comfy, adaptors, caplog):
    """A prompt that reaches a numeric adaptor only as a CLIP embedding (core 'Apply ControlNet') samples as
    "numbers unknown" (the unparsed features), never an error, and says so once in the log."""
    import logging
    import sys

    # the pack's module as ComfyUI loaded it
    spire_control = next(m for k, m in sys.modules.items() if k.endswith("spire_restoration.nodes.spire_control"))

    model = tiny_comfy.tiny_model("sd1")
    unet, adaptor, name = adaptors["sd1", "modulation", True]
    control = load_control(name)
    x, semantic, restoration, hint = inputs("sd1", seed=8)
    spire_control._warned.clear()
    with caplog.at_level(logging.WARNING):
        theirs = comfy_denoised(model, control, x, 1.0, semantic, restoration, hint)
        comfy_denoised(model, control, x, 1.0, semantic, restoration, hint)
    warnings = [r.getMessage() for r in caplog.records if "numeric channel" in r.getMessage()]
    assert len(warnings) == 1 and "Apply Adaptor (SPIRE)" in warnings[0]
    unparsed = restoration_features([None])
    ours = diffusers_denoised(model, unet, adaptor, x, 1.0, semantic, restoration, hint, features=unparsed)
    assert float((ours - theirs).abs().max()) <= 1e-4


def test_a_skip_already_fused_upstream_is_a_clear_error(comfy, adaptors):
    """An output-block patch that fused the skip itself (hsp=None, as core's SUPIR patch since ComfyUI 0.20) leaves
    nothing to modulate: SPIRE says so instead of passing silently or crashing inside the UNet."""
    model = tiny_comfy.tiny_model("sd1").clone()

    def fuse(h, hsp, transformer_options):
        return h, None

    model.set_model_output_block_patch(fuse)
    control = load_control(adaptors["sd1", "modulation", True][2])
    x, semantic, restoration, hint = inputs("sd1", seed=9)
    with pytest.raises(RuntimeError, match="already fused them into the features \\(it passed hsp=None"):
        comfy_denoised(model, control, x, 1.0, semantic, restoration, hint)


def test_a_patch_that_never_reaches_the_unet_is_an_error_not_a_silent_no_op(comfy, adaptors):
    """If ComfyUI ever copied ``transformer_options`` before get_control, the modulation would never run; the next
    get_control of the run says so. Simulated by calling get_control twice without a UNet call in between."""
    model = tiny_comfy.tiny_model("sd1")
    control = load_control(adaptors["sd1", "modulation", True][2])
    x, _, restoration, hint = inputs("sd1", seed=10)
    control = control.copy().set_cond_hint(hint, 1.0, (0.0, 1.0))
    control.restoration_embedding = restoration
    control.pre_run(model.model, model.model.model_sampling.percent_to_sigma)
    sigma = torch.tensor([1.0])
    first = {"patches": {}}
    assert control.get_control(x, sigma, {}, 1, first) is None and len(first["patches"]["output_block_patch"]) == 1
    with pytest.raises(RuntimeError, match="never reached the model.*no longer passes the options"):
        control.get_control(x, sigma, {}, 1, {"patches": {}})
    # once any patch of the run has run (as caching nodes that skip later UNet calls allow), it is no error
    patch = first["patches"]["output_block_patch"][0]
    h, hsp = torch.zeros(patch.gamma_mid.shape), torch.zeros(patch.gammas[-1].shape)
    patch(h, hsp, {"block": ("output", 0)})  # what the UNet's first output block does
    control.get_control(x, sigma, {}, 1, {"patches": {}})
    control.get_control(x, sigma, {}, 1, {"patches": {}})
    control.cleanup()


def test_multi_gpu_clone_has_its_own_adaptor_and_gives_the_same_prediction(comfy, adaptors):
    """ComfyUI 0.23+ multi-GPU work units deep-clone every control per device; SPIRE's clone owns a copy of the
    adaptor and a patcher on that device (CPU devices here, through the same call core makes)."""
    model = tiny_comfy.tiny_model("sd2")
    control = load_control(adaptors["sd2", "modulation", True][2])
    device = torch.device("cpu")
    clone = control.deepclone_multigpu(device, autoregister=True)
    assert control.multigpu_clones[device] is clone and clone.adaptor is not control.adaptor
    assert clone.adaptor_patcher is not control.adaptor_patcher and clone.adaptor_patcher.load_device == device
    assert clone.adaptor_patcher.model is clone.adaptor
    for (name, a), b in zip(control.adaptor.state_dict().items(), clone.adaptor.state_dict().values()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    x, semantic, restoration, hint = inputs("sd2", seed=11)
    features = restoration_features(["Denoise with sigma 0.05"])
    original = comfy_denoised(model, control, x, 2.0, semantic, restoration, hint, features=features)
    cloned = comfy_denoised(model, clone, x, 2.0, semantic, restoration, hint, features=features)
    assert torch.equal(original, cloned)


def test_the_adaptor_patcher_is_the_class_core_uses_for_its_controls(comfy, adaptors, monkeypatch):
    """CoreModelPatcher where ComfyUI has it (resolved when the adaptor loads: main.py rebinds it on CUDA), the
    legacy ModelPatcher on 0.3.64; a fresh adaptor is an exact identity through either."""
    import comfy.model_patcher

    model = tiny_comfy.tiny_model("sd1")
    x, semantic, restoration, hint = inputs("sd1", seed=12)
    base = comfy_denoised(model, None, x, 1.3, semantic, restoration, hint)
    name = adaptors["sd1", "modulation", False][2]
    core = getattr(comfy.model_patcher, "CoreModelPatcher", None)
    legacy = load_control(name)
    assert type(legacy.adaptor_patcher) is (core or comfy.model_patcher.ModelPatcher)

    class Rebound(comfy.model_patcher.ModelPatcher):  # what main.py's rebinding looks like to the pack
        pass

    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", Rebound, raising=False)
    rebound = load_control(name)
    assert type(rebound.adaptor_patcher) is Rebound
    for control in (legacy, rebound):
        assert torch.equal(comfy_denoised(model, control, x, 1.3, semantic, restoration, hint), base)
