"""spire_core.models: adaptor config, identity at init, the diffusers behaviour the hooks rely on, fusion maths,
strength and gradients (tiny random diffusers models on the CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from spire_core.models import (
    NUMERIC_TOKENS_DEFAULT,
    AdaptorConfig,
    NumericTokens,
    SpireAdaptor,
    SpireControlOutput,
    additive_unet_kwargs,
    apply_to_unet,
    check_unet_supported,
    controlnet_config_from_unet,
    numeric_context,
    predict_noise,
    skip_indices,
    tiny_unet_config,
)
from spire_core.prompt import GRAMMAR_VERSION, NUMERIC_FEATURES, restoration_features


def make_unet(family: str = "sd1", seed: int = 0, **overrides) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**tiny_unet_config(family), **overrides}).eval().requires_grad_(False)


def three_level_unet() -> UNet2DConditionModel:
    """Three levels, two resnets per level: 1 + 2 + 1 + 2 + 1 + 2 = 9 skips over 3 up blocks of 3."""
    return make_unet(
        block_out_channels=[32, 32, 64],
        layers_per_block=2,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    )


def inputs(unet: UNet2DConditionModel, batch: int = 2, size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    dim = unet.config.cross_attention_dim
    sample = torch.randn(batch, 4, size, size, generator=g)
    semantic = torch.randn(batch, 7, dim, generator=g)
    restoration = torch.randn(batch, 5, dim, generator=g)
    hint = torch.rand(batch, 3, 8 * size, 8 * size, generator=g)
    timestep = torch.tensor([10, 500][:batch] + [900] * max(0, batch - 2))
    return sample, timestep, semantic, restoration, hint


def randomize(modules, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def base_output(unet, sample, timestep, semantic):
    return unet(sample, timestep, encoder_hidden_states=semantic).sample


def capture_skips(unet, run):
    """Run ``run()`` and return, per up block, the res_hidden_states_tuple it received."""
    received = {}

    def hook(index):
        def fn(module, args, kwargs):
            received[index] = kwargs["res_hidden_states_tuple"]

        return fn

    handles = [b.register_forward_pre_hook(hook(i), with_kwargs=True) for i, b in enumerate(unet.up_blocks)]
    try:
        output = run()
    finally:
        for h in handles:
            h.remove()
    flat = {}
    for i, skips in received.items():
        for feature, j in zip(skips, skip_indices(unet)[i]):
            flat[j] = feature
    return [flat[j] for j in sorted(flat)], output


# --- config ---------------------------------------------------------------------------------------------


def test_config_defaults_validation_and_metadata_round_trip():
    unet = make_unet()
    cn_config = controlnet_config_from_unet(unet.config)
    config = AdaptorConfig(controlnet_config=cn_config, base_family="sd2")
    assert config.text_encoder_layer == "penultimate" and config.prompt_grammar_version == GRAMMAR_VERSION
    assert AdaptorConfig(controlnet_config=cn_config, base_family="sd1").text_encoder_layer == "last"
    assert config.num_skips == 4 and config.controlnet_config["block_out_channels"] == [32, 64]
    metadata = config.to_metadata()
    assert all(isinstance(v, str) for v in metadata.values())
    assert AdaptorConfig.from_metadata(metadata) == config
    assert hash(AdaptorConfig.from_metadata(metadata)) == hash(config)
    with pytest.raises(ValueError, match="fusion must be one of modulation, additive; got 'sum'"):
        AdaptorConfig(controlnet_config=cn_config, fusion="sum")
    with pytest.raises(ValueError, match="prediction_type"):
        AdaptorConfig(controlnet_config=cn_config, prediction_type="sample")
    with pytest.raises(ValueError, match="format version 4 is not supported"):
        AdaptorConfig(controlnet_config=cn_config, format_version=4)
    with pytest.raises(ValueError, match="format 1 has no numeric channel"):
        AdaptorConfig(controlnet_config=cn_config, format_version=1, numeric_tokens=4)
    assert config.format_version == 1 and "spire.numeric_tokens" not in metadata  # no channel: format 1, as before
    channel = AdaptorConfig(controlnet_config=cn_config, numeric_tokens=3)
    assert channel.format_version == 2 and channel.to_metadata()["spire.numeric_tokens"] == "3"
    assert AdaptorConfig.from_metadata(channel.to_metadata()) == channel
    with pytest.raises(ValueError, match="does not accept: \\['bogus'\\]"):
        AdaptorConfig(controlnet_config={**cn_config, "bogus": 1})
    with pytest.raises(ValueError, match="hint_channels=4 but controlnet_config.conditioning_channels=3"):
        AdaptorConfig(controlnet_config=cn_config, hint_channels=4)
    with pytest.raises(ValueError, match="lacks spire.fusion"):
        AdaptorConfig.from_metadata({k: v for k, v in metadata.items() if k != "spire.fusion"})


def test_controlnet_config_matches_diffusers_from_unet():
    for family in ("sd1", "sd2"):
        unet = make_unet(family)
        built = ControlNetModel.from_unet(unet)
        expected = {k: v for k, v in built.config.items() if not k.startswith("_")}
        ours = controlnet_config_from_unet(unet.config)
        assert AdaptorConfig(ours).controlnet_config == AdaptorConfig(dict(expected)).controlnet_config


def test_unsupported_unets_are_refused():
    with pytest.raises(ValueError, match="addition_embed_type='image' \\(supported: None or 'text_time'\\)"):
        check_unet_supported({**tiny_unet_config(), "addition_embed_type": "image"})
    with pytest.raises(ValueError, match="time_cond_proj_dim=256"):
        check_unet_supported({**tiny_unet_config(), "time_cond_proj_dim": 256})


# --- structure and identity ------------------------------------------------------------------------------


NUMERIC_KEYS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


def test_adaptor_structure_per_fusion():
    unet = make_unet()
    modulation = SpireAdaptor.from_unet(unet)
    assert modulation.num_skips == 4 and len(modulation.gamma_down) == 4 and len(modulation.beta_down) == 4
    assert [c.in_channels for c in modulation.gamma_down] == [32, 32, 32, 64] and modulation.gamma_mid.in_channels == 64
    assert all(isinstance(m, nn.Identity) for m in modulation.controlnet.controlnet_down_blocks)
    assert all(float(p.detach().abs().sum()) == 0 for p in modulation.head_parameters())
    keys = modulation.file_state_dict()
    assert not any(k.startswith(("controlnet_down_blocks", "controlnet_mid_block")) for k in keys)
    assert "spire_gamma_down.3.weight" in keys and "spire_beta_mid.bias" in keys and "conv_in.weight" in keys
    assert keys["spire_gamma_down.0.weight"].shape == (32, 32, 1, 1)
    # the trunk is a copy of the base encoder and middle block
    assert torch.equal(
        keys["down_blocks.0.attentions.0.proj_in.weight"], unet.down_blocks[0].attentions[0].proj_in.weight
    )
    assert torch.equal(keys["mid_block.resnets.1.conv2.weight"], unet.mid_block.resnets[1].conv2.weight)

    additive = SpireAdaptor.from_unet(unet, fusion="additive")
    keys = additive.file_state_dict()
    assert not hasattr(additive, "gamma_down") and list(additive.head_parameters()) == []
    assert "controlnet_down_blocks.3.weight" in keys and "controlnet_mid_block.bias" in keys
    assert [k for k in keys if k.startswith("spire_")] == [f"spire_numeric.{n}" for n in NUMERIC_KEYS]
    bare = SpireAdaptor.from_unet(unet, fusion="additive", numeric_tokens=0).file_state_dict()
    assert not any(k.startswith("spire_") for k in bare)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
@pytest.mark.parametrize("fusion", ["modulation", "additive"])
def test_fresh_adaptor_is_an_exact_identity(family, fusion):
    unet = make_unet(family)
    adaptor = SpireAdaptor.from_unet(unet, fusion=fusion)
    sample, timestep, semantic, restoration, hint = inputs(unet)
    with torch.no_grad():
        expected = base_output(unet, sample, timestep, semantic)
        got = predict_noise(unet, adaptor, sample, timestep, semantic, restoration, hint, strength=1.0)
    assert torch.equal(got, expected)  # bit-identical, not merely close
    assert float((got - base_output(unet, sample * 1.01, timestep, semantic)).abs().max()) > 1e-4  # inputs matter


# --- pinned diffusers behaviour --------------------------------------------------------------------------


def test_unet_passes_down_block_res_samples_to_up_blocks_as_assumed():
    """diffusers' UNet2DConditionModel collects (conv_in output, each down block's res_samples...) and hands
    up block i the last len(resnets) of what is left, by keyword res_hidden_states_tuple. The hooks rely on it."""
    unet = three_level_unet()
    sample, timestep, semantic, _, _ = inputs(unet)
    walk = []
    handles = [unet.conv_in.register_forward_hook(lambda m, a, out: walk.append(out))]
    handles += [b.register_forward_hook(lambda m, a, out: walk.extend(out[1])) for b in unet.down_blocks]
    try:
        skips, _ = capture_skips(unet, lambda: base_output(unet, sample, timestep, semantic))
    finally:
        for h in handles:
            h.remove()
    assert skip_indices(unet) == [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
    assert len(walk) == len(skips) == 9
    assert all(received is walked for received, walked in zip(skips, walk))  # the very same tensors
    assert [tuple(s.shape[1:]) for s in skips] == [(32, 8, 8)] * 3 + [(32, 4, 4)] * 3 + [(32, 2, 2)] + [(64, 2, 2)] * 2


def test_trunk_with_identity_zero_convs_returns_raw_features():
    unet = make_unet()
    adaptor = SpireAdaptor.from_unet(unet)
    randomize([adaptor.gamma_down, adaptor.gamma_mid], seed=3)
    sample, timestep, _, restoration, hint = inputs(unet)
    cn = adaptor.controlnet
    walk, mids = [], []
    handles = [cn.controlnet_cond_embedding.register_forward_hook(lambda m, a, out: walk.append(out))]
    handles += [b.register_forward_hook(lambda m, a, out: walk.extend(out[1])) for b in cn.down_blocks]
    handles.append(cn.mid_block.register_forward_hook(lambda m, a, out: mids.append(out)))
    try:
        control = adaptor(sample, timestep, restoration, hint)
    finally:
        for h in handles:
            h.remove()
    walk[0] = cn.conv_in(sample) + walk[0]  # skip 0 = conv_in(z_t) + hint encoder(y)
    for head, feature, gamma in zip(adaptor.gamma_down, walk, control.gamma_down):
        torch.testing.assert_close(gamma, head(feature), rtol=0, atol=1e-6)
    torch.testing.assert_close(control.gamma_mid, adaptor.gamma_mid(mids[0]), rtol=0, atol=1e-6)
    assert all(float(b.abs().max()) == 0 for b in control.beta_down)  # beta heads still zero


# --- fusion maths ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_modulation_with_zero_gamma_and_beta_r_equals_additive_residual_r(strength):
    unet = make_unet()
    additive = SpireAdaptor.from_unet(unet, fusion="additive")
    randomize([additive.controlnet.controlnet_down_blocks, additive.controlnet.controlnet_mid_block], seed=5)
    sample, timestep, semantic, restoration, hint = inputs(unet)
    with torch.no_grad():
        residual = additive(sample, timestep, restoration, hint)
        assert all(float(r.abs().max()) > 1e-3 for r in residual.down_residuals)
        expected = unet(sample, timestep, semantic, **additive_unet_kwargs(residual, strength)).sample
        as_modulation = SpireControlOutput(
            fusion="modulation",
            gamma_down=[torch.zeros_like(r) for r in residual.down_residuals],
            beta_down=residual.down_residuals,
            gamma_mid=torch.zeros_like(residual.mid_residual),
            beta_mid=residual.mid_residual,
        )
        with apply_to_unet(unet, as_modulation, strength):
            got = base_output(unet, sample, timestep, semantic)
    assert float((got - base_output(unet, sample, timestep, semantic)).abs().max()) > 1e-3
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_gamma_minus_one_zeroes_every_skip_and_the_middle_output():
    unet = make_unet()
    sample, timestep, semantic, _, _ = inputs(unet)
    mids = []
    handle = unet.mid_block.register_forward_hook(lambda m, a, out: mids.append(out))
    clean, _ = capture_skips(unet, lambda: base_output(unet, sample, timestep, semantic))
    handle.remove()
    control = SpireControlOutput(
        fusion="modulation",
        gamma_down=[-torch.ones_like(f) for f in clean],
        beta_down=[torch.zeros_like(f) for f in clean],
        gamma_mid=-torch.ones_like(mids[0]),
        beta_mid=torch.zeros_like(mids[0]),
    )
    with apply_to_unet(unet, control):
        skips, got = capture_skips(unet, lambda: base_output(unet, sample, timestep, semantic))
    assert all(float(f.abs().max()) == 0 for f in skips)
    # independent route: diffusers' own residual path cancelling every skip and the middle output
    cancel = {"down_block_additional_residuals": [-f for f in clean], "mid_block_additional_residual": -mids[0]}
    expected = unet(sample, timestep, semantic, **cancel).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_modulating_one_skip_changes_that_skip_only():
    unet = make_unet()
    sample, timestep, semantic, _, _ = inputs(unet)
    clean, base = capture_skips(unet, lambda: base_output(unet, sample, timestep, semantic))
    g = torch.Generator().manual_seed(7)
    for j in range(len(clean)):
        gamma = [torch.zeros_like(f) for f in clean]
        gamma[j] = torch.randn(clean[j].shape, generator=g)
        zero = [torch.zeros_like(f) for f in clean]
        mid = torch.zeros(1, *clean[-1].shape[1:])  # the deepest skip has the middle block's shape
        control = SpireControlOutput("modulation", gamma, zero, mid, mid)
        with apply_to_unet(unet, control, strength=0.5):
            skips, out = capture_skips(unet, lambda: base_output(unet, sample, timestep, semantic))
        changed = [k for k in range(len(clean)) if not torch.equal(skips[k], clean[k])]
        assert changed == [j]
        torch.testing.assert_close(skips[j], clean[j] * (1 + 0.5 * gamma[j]), rtol=0, atol=1e-6)
        assert float((out - base).abs().max()) > 1e-4


@pytest.mark.parametrize("fusion", ["modulation", "additive"])
def test_strength_zero_gives_the_base_unet_exactly(fusion):
    unet = make_unet()
    adaptor = SpireAdaptor.from_unet(unet, fusion=fusion)
    randomize(
        [adaptor.gamma_down, adaptor.beta_down, adaptor.gamma_mid, adaptor.beta_mid]
        if fusion == "modulation"
        else [adaptor.controlnet.controlnet_down_blocks, adaptor.controlnet.controlnet_mid_block],
        seed=11,
    )
    sample, timestep, semantic, restoration, hint = inputs(unet)
    with torch.no_grad():
        base = base_output(unet, sample, timestep, semantic)
        controlled = predict_noise(unet, adaptor, sample, timestep, semantic, restoration, hint, strength=1.0)
        off = predict_noise(unet, adaptor, sample, timestep, semantic, restoration, hint, strength=0.0)
    assert float((controlled - base).abs().max()) > 1e-3
    assert torch.equal(off, base)


def test_hooks_are_removed_on_exit_and_on_error():
    unet = make_unet()
    adaptor = SpireAdaptor.from_unet(unet)
    sample, timestep, semantic, restoration, hint = inputs(unet)
    control = adaptor(sample, timestep, restoration, hint)

    def hook_count():
        blocks = [unet, unet.mid_block, *unet.up_blocks]
        return sum(len(b._forward_pre_hooks) + len(b._forward_hooks) for b in blocks)

    assert hook_count() == 0
    with pytest.raises(KeyError):
        with apply_to_unet(unet, control):
            assert hook_count() == 5  # two up blocks, the middle block, and the UNet's own pre/post check pair
            raise KeyError("boom")
    assert hook_count() == 0


def test_mismatches_are_reported():
    unet = make_unet()
    adaptor = SpireAdaptor.from_unet(unet)
    sample, timestep, semantic, restoration, hint = inputs(unet)
    control = adaptor(sample, timestep, restoration, hint)
    with pytest.raises(ValueError, match="4 skip modulations but this UNet has 9 skips"):
        with apply_to_unet(three_level_unet(), control):
            pass
    with pytest.raises(ValueError, match="additive_unet_kwargs"):
        with apply_to_unet(unet, SpireControlOutput("additive", down_residuals=[], mid_residual=None)):
            pass
    with pytest.raises(
        ValueError, match=r"hint has shape \(2, 3, 32, 32\) but the latent is 8x8; expected \(B, 3, 64, 64\)"
    ):
        adaptor(sample, timestep, restoration, hint[:, :, :32, :32])
    with pytest.raises(
        ValueError,
        match=r"gamma for the middle block has shape \(2, 64, 4, 4\) but the UNet feature .* \(2, 64, 8, 8\)",
    ):
        with apply_to_unet(unet, control):
            base_output(unet, torch.randn(2, 4, 16, 16), timestep, semantic)


def test_batch_one_prompt_and_hint_broadcast():
    unet = make_unet()
    adaptor = SpireAdaptor.from_unet(unet)
    randomize([adaptor.gamma_down, adaptor.beta_mid], seed=2)
    sample, timestep, semantic, restoration, hint = inputs(unet)
    one = predict_noise(unet, adaptor, sample, timestep, semantic, restoration[:1], hint[:1])
    full = predict_noise(
        unet, adaptor, sample, timestep, semantic, restoration[:1].repeat(2, 1, 1), hint[:1].repeat(2, 1, 1, 1)
    )
    torch.testing.assert_close(one, full, rtol=0, atol=1e-6)


# --- training --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["modulation", "additive"])
def test_gradients_reach_heads_then_trunk_and_never_the_unet(fusion):
    unet = make_unet()
    adaptor = SpireAdaptor.from_unet(unet, fusion=fusion).train()
    sample, timestep, semantic, restoration, hint = inputs(unet)
    target = torch.randn(sample.shape, generator=torch.Generator().manual_seed(9))
    zero_convs = (
        [*adaptor.head_parameters()]
        if fusion == "modulation"
        else [
            *adaptor.controlnet.controlnet_down_blocks.parameters(),
            *adaptor.controlnet.controlnet_mid_block.parameters(),
        ]
    )
    zero_ids = {id(p) for p in zero_convs}
    inner = [p for p in adaptor.parameters() if id(p) not in zero_ids]
    optimizer = torch.optim.SGD(adaptor.parameters(), lr=0.1)
    for step in range(2):
        optimizer.zero_grad()
        prediction = predict_noise(unet, adaptor, sample, timestep, semantic, restoration, hint)
        torch.nn.functional.mse_loss(prediction, target).backward()
        head_grad = sum(float(p.grad.abs().sum()) for p in zero_convs)
        trunk_grad = sum(float(p.grad.abs().sum()) for p in inner if p.grad is not None)
        assert head_grad > 0  # zero-initialised heads still receive gradient
        if step == 0:
            assert trunk_grad == 0  # ...while the trunk is gated by the zero heads, exactly as in ControlNet
        else:
            assert trunk_grad > 0  # one step later the heads are non-zero and the trunk learns
        optimizer.step()
    assert all(p.grad is None for p in unet.parameters())


# --- the numeric side channel -----------------------------------------------------------------------------


def test_restoration_features_read_the_parsed_numbers():
    features = restoration_features(
        ["Deblur with sigma 2.0; Denoise with sigma 0.15", "Remove all degradation", "make it pretty", None]
    )
    assert features.shape == (4, NUMERIC_FEATURES) == (4, 43) and features.dtype == torch.float32
    per_clause = 10  # present flag, scaled value, 4 sine/cosine pairs
    upsample, deblur, denoise, dejpeg = (features[:, i * per_clause : (i + 1) * per_clause] for i in range(4))
    flags = features[:, 4 * per_clause :]  # blind, unparsed, numbers
    assert torch.equal(upsample[0], torch.zeros(10)) and torch.equal(dejpeg[0], torch.zeros(10))
    assert deblur[0, 0] == 1 and torch.isclose(deblur[0, 1], torch.tensor(2.0 / 8))
    assert denoise[0, 0] == 1 and torch.isclose(denoise[0, 1], torch.tensor(0.15 / 0.3))
    assert torch.allclose(denoise[0, 2:4], torch.tensor([math.sin(math.pi * 0.5), math.cos(math.pi * 0.5)]))
    assert torch.allclose(denoise[0, 8:10], torch.tensor([math.sin(8 * math.pi * 0.5), math.cos(8 * math.pi * 0.5)]))
    assert flags.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 0]]  # free text and None: unparsed
    assert torch.equal(features[1, :40], torch.zeros(40)) and torch.equal(features[2], features[3])
    # different numbers, different features; the features are a function of the parsed request, not the wording
    again = restoration_features(["denoise 0.15 , DEBLUR WITH SIGMA 2", "Denoise with sigma 0.05"])
    assert torch.equal(again[0], features[0]) and not torch.equal(again[1], features[0])


@pytest.mark.parametrize("fusion", ["modulation", "additive"])
def test_numeric_channel_is_zero_at_init_and_steers_once_trained(fusion):
    unet = make_unet()
    adaptor = SpireAdaptor.from_unet(unet, fusion=fusion)
    assert adaptor.config.numeric_tokens == NUMERIC_TOKENS_DEFAULT == 4 and adaptor.numeric is not None
    sample, timestep, semantic, restoration, hint = inputs(unet)
    features = restoration_features(["Denoise with sigma 0.05", "Denoise with sigma 0.20"])
    context = numeric_context(adaptor.numeric, restoration, features)
    assert context.shape == (2, 5 + 4, 32) and torch.equal(context[:, :5], restoration)
    assert torch.equal(context[:, 5:], torch.zeros(2, 4, 32))  # zero tokens at init
    with torch.no_grad():
        base = base_output(unet, sample, timestep, semantic)
        fresh = predict_noise(
            unet, adaptor, sample, timestep, semantic, restoration, hint, restoration_features=features
        )
    assert torch.equal(fresh, base)  # a fresh adaptor with the channel is still an exact identity
    randomize([adaptor.numeric, *([adaptor.gamma_down, adaptor.beta_down] if fusion == "modulation" else [])], 5)
    if fusion == "additive":
        randomize([adaptor.controlnet.controlnet_down_blocks], 6)
    with torch.no_grad():
        low = predict_noise(unet, adaptor, sample, timestep, semantic, restoration, hint, restoration_features=features)
        swapped = features.flip(0)
        high = predict_noise(unet, adaptor, sample, timestep, semantic, restoration, hint, restoration_features=swapped)
        unknown = predict_noise(unet, adaptor, sample, timestep, semantic, restoration, hint)
    assert float((low - high).abs().max()) > 1e-5  # the numbers now change the prediction
    unparsed = restoration_features([None]).expand(2, -1)
    with torch.no_grad():
        same = predict_noise(
            unet, adaptor, sample, timestep, semantic, restoration, hint, restoration_features=unparsed
        )
    assert torch.equal(unknown, same)  # no features = unparsed text
    # gradients reach the channel through the trunk
    adaptor.requires_grad_(True)
    out = predict_noise(unet, adaptor, sample, timestep, semantic, restoration, hint, restoration_features=features)
    out.pow(2).mean().backward()
    assert (
        float(adaptor.numeric.fc2.weight.grad.abs().sum()) > 0
        and float(adaptor.numeric.fc1.weight.grad.abs().sum()) > 0
    )


def test_adaptor_without_the_channel_ignores_features():
    unet = make_unet()
    adaptor = SpireAdaptor.from_unet(unet, numeric_tokens=0)
    randomize([adaptor.gamma_down, adaptor.beta_down], 3)
    sample, timestep, semantic, restoration, hint = inputs(unet)
    features = restoration_features(["Denoise with sigma 0.05", "Deblur with sigma 3.0"])
    with torch.no_grad():
        plain = predict_noise(unet, adaptor, sample, timestep, semantic, restoration, hint)
        given = predict_noise(
            unet, adaptor, sample, timestep, semantic, restoration, hint, restoration_features=features
        )
    assert adaptor.numeric is None and adaptor.config.format_version == 1 and torch.equal(plain, given)
    with pytest.raises(ValueError, match="numeric features have shape"):
        NumericTokens(2, 32)(torch.zeros(1, 5))
