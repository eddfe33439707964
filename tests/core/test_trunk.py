"""Trunk sizes: narrower adaptor trunks whose modulation heads map their width onto the base's (format 3), from the
widths they get to the file layout, the identity of a fresh adaptor, the metadata and the command line."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open

from spire_core.bench.common import SD15_DIFFUSERS_UNET as SD15
from spire_core.bench.common import SDXL_DIFFUSERS_UNET as SDXL
from spire_core.models import (
    AdaptorConfig,
    SpireAdaptor,
    check_fits_unet,
    controlnet_config_from_unet,
    load_adaptor,
    predict_noise,
    save_adaptor,
    tiny_unet_config,
)
from spire_core.models.__main__ import main as cli_main
from spire_core.models.comfy_layout import ComfyLayoutError, cldm_kwargs
from spire_core.models.components import sdxl_time_ids
from spire_core.models.config import narrow_controlnet_config, trunk_channels, trunk_granularity
from spire_core.models.file_layout import adaptor_file_shapes
from spire_core.models.safetensors_header import AdaptorFileError


@functools.cache
def full_config(name: str) -> dict:
    with torch.device("meta"):
        return dict(UNet2DConditionModel(**{"sd15": SD15, "sdxl": SDXL}[name]).config)


def adaptor_config(name: str, trunk: str | int) -> AdaptorConfig:
    full = controlnet_config_from_unet(full_config(name))
    narrow = narrow_controlnet_config(full, trunk)
    base = None if narrow == full else full["block_out_channels"]
    return AdaptorConfig(narrow, base_block_out_channels=base, numeric_tokens=4)


def test_trunk_widths():
    assert trunk_channels([320, 640, 1280, 1280], "full") == [320, 640, 1280, 1280]
    assert trunk_channels([320, 640, 1280, 1280], "half") == [160, 320, 640, 640]
    assert trunk_channels([320, 640, 1280, 1280], "quarter") == [96, 192, 384, 384]  # 80 -> nearest multiple of 32
    assert trunk_channels([320, 640, 1280], 64) == [64, 128, 256]
    assert trunk_channels([64, 128], "quarter") == [32, 64]  # never below 32
    for bad in (48, 352, 0, "tiny", True, 1.5):
        with pytest.raises(ValueError):
            trunk_channels([320, 640, 1280], bad)


def test_a_custom_base_with_fewer_norm_groups_has_a_finer_step():
    # every level must split into the base's GroupNorm groups and into the trunk's 8 heads
    assert [trunk_granularity(g) for g in (32, 16, 8, 4, 12)] == [32, 16, 8, 8, 24]
    assert trunk_channels([64, 128], "half", 16) == [32, 64]
    assert trunk_channels([64, 128], "quarter", 16) == [16, 32]
    assert trunk_channels([64, 128], "quarter") == [32, 64]  # Stable Diffusion's 32 groups: the default
    with pytest.raises(ValueError, match="multiple of 16"):
        trunk_channels([64, 128], 24, 16)
    with pytest.raises(ValueError, match="norm_num_groups must be a positive integer"):
        trunk_granularity(0)
    torch.manual_seed(0)
    config = {**tiny_unet_config("sd1"), "block_out_channels": [64, 128], "norm_num_groups": 16}
    unet = UNet2DConditionModel(**config).eval().requires_grad_(False)
    adaptor = SpireAdaptor.from_unet(unet, trunk="quarter")
    trunk = adaptor.config.controlnet_config
    assert trunk["block_out_channels"] == [16, 32] and trunk["norm_num_groups"] == 16
    g = torch.Generator().manual_seed(2)
    sample, hint = torch.randn(1, 4, 8, 8, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    semantic, restoration = torch.randn(1, 7, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        bare = unet(sample, torch.tensor([300]), encoder_hidden_states=semantic).sample
        got = predict_noise(unet, adaptor, sample, torch.tensor([300]), semantic, restoration, hint)
    assert torch.equal(got, bare)
    # ComfyUI builds only Stable Diffusion's 32 groups: such an adaptor is refused by name, not built wrong
    with pytest.raises(ComfyLayoutError, match="norm_num_groups=16 \\(needs 32\\)"):
        cldm_kwargs(adaptor.config)


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
@pytest.mark.parametrize("trunk", ["half", "quarter"])
def test_real_size_layouts_are_what_diffusers_builds(name, trunk):
    config = adaptor_config(name, trunk)
    assert config.narrow and config.format_version == 3
    with torch.device("meta"):
        built = {key: tuple(value.shape) for key, value in SpireAdaptor(config).file_state_dict().items()}
    assert adaptor_file_shapes(config) == built
    width = config.controlnet_config["block_out_channels"]
    assert built["spire_gamma_down.0.weight"] == (320, width[0], 1, 1)  # trunk width -> base width
    assert built["spire_beta_mid.weight"] == (config.base_channels[-1], width[-1], 1, 1)


def parameters(name: str, trunk: str) -> int:
    return sum(math.prod(shape) for shape in adaptor_file_shapes(adaptor_config(name, trunk)).values())


def test_parameter_counts_per_trunk_size():
    """The counts docs/training.md quotes (Memory): a quarter trunk is about a tenth of the full adaptor."""
    counts = {
        (name, trunk): parameters(name, trunk) for name in ("sd15", "sdxl") for trunk in ("full", "half", "quarter")
    }
    assert 3.5e8 < counts["sd15", "full"] < 3.8e8
    assert 1.2e9 < counts["sdxl", "full"] < 1.3e9
    for name in ("sd15", "sdxl"):
        assert 0.24 < counts[name, "half"] / counts[name, "full"] < 0.30  # channels halved: about a quarter
        assert 0.09 < counts[name, "quarter"] / counts[name, "full"] < 0.15  # 96 channels of 320
    print({key: f"{value / 1e6:.0f} M" for key, value in counts.items()})


def tiny(family: str) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**tiny_unet_config(family, cross_attention_dim=64)).eval().requires_grad_(False)


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_a_fresh_narrow_adaptor_is_an_exact_identity_and_acts_once_trained(family):
    unet = tiny(family)
    adaptor = SpireAdaptor.from_unet(unet, trunk="half")
    assert adaptor.config.controlnet_config["block_out_channels"] == [32, 64]
    assert adaptor.config.base_block_out_channels == [64, 128] and adaptor.config.trunk_name == "32/64 channels"
    # channel-sliced from the full copy of the encoder
    full = SpireAdaptor.from_unet(unet)
    assert torch.equal(adaptor.controlnet.conv_in.weight, full.controlnet.conv_in.weight[:32])
    g = torch.Generator().manual_seed(1)
    sample, hint = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    semantic, restoration = torch.randn(2, 7, 64, generator=g), torch.randn(2, 5, 64, generator=g)
    kwargs, added = {}, None
    if family == "sdxl":
        time_ids = sdxl_time_ids(64, 64).expand(2, -1)
        kwargs = {"added_cond_kwargs": {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": time_ids}}
        added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": time_ids}
    timestep = torch.tensor([10, 500])

    def predict() -> torch.Tensor:
        return predict_noise(
            unet,
            adaptor,
            sample,
            timestep,
            semantic,
            restoration,
            hint,
            unet_kwargs=kwargs,
            restoration_added_cond=added,
        )

    with torch.no_grad():
        bare = unet(sample, timestep, encoder_hidden_states=semantic, **kwargs).sample
        assert torch.equal(predict(), bare)
        for p in adaptor.head_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        acted = predict()
    assert float((acted - bare).abs().max()) > 1e-3


def test_narrow_trunks_need_modulation_and_are_checked(tmp_path):
    unet = tiny("sd2")
    with pytest.raises(ValueError, match="needs modulation fusion"):
        SpireAdaptor.from_unet(unet, fusion="additive", trunk="half")
    adaptor = SpireAdaptor.from_unet(unet, trunk="half")
    config = adaptor.config
    with pytest.raises(ValueError, match="format 3 is the format of narrower trunks"):
        AdaptorConfig(config.controlnet_config, base_block_out_channels=[64, 128], format_version=2, numeric_tokens=4)
    with pytest.raises(ValueError, match="narrower than the base, in modulation fusion"):
        AdaptorConfig(config.controlnet_config, base_block_out_channels=[32, 64])
    for bad, why in (
        ([64.5, 128], "positive integers"),
        ([32, 64], "narrower than the base, in modulation"),
        ([48, 128], "the same ratios"),
        ([16, 32], "at least as wide"),
    ):
        with pytest.raises(ValueError, match=why):
            AdaptorConfig(config.controlnet_config, base_block_out_channels=bad, numeric_tokens=4)
    check_fits_unet(config, unet.config)  # it fits the base it was made for
    with pytest.raises(AdaptorFileError, match="block_out_channels: adaptor \\[64, 128\\], base \\[32, 64\\]"):
        check_fits_unet(config, tiny("sd1").config)
    path = save_adaptor(adaptor, tmp_path / "half.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["spire.format_version"] == "3" and metadata["spire.base_block_out_channels"] == "[64, 128]"
    assert load_adaptor(path).config == config
    assert AdaptorConfig.from_metadata(config.to_metadata()) == config


def test_cli_init_with_a_trunk_size(tmp_path, capsys):
    unet = tiny("sdxl")
    unet.save_pretrained(tmp_path / "base" / "unet", safe_serialization=True)
    out = tmp_path / "quarter.safetensors"
    assert cli_main(["init", "--base", str(tmp_path / "base"), "--out", str(out), "--trunk", "32"]) == 0
    assert "trunk 32/64 channels" in capsys.readouterr().out
    assert cli_main(["inspect", str(out)]) == 0
    assert "trunk 32/64 channels" in capsys.readouterr().out
    bad = tmp_path / "bad.safetensors"
    assert cli_main(["init", "--base", str(tmp_path / "base"), "--out", str(bad), "--trunk", "48"]) == 2
    assert "a trunk of 48 channels does not fit" in capsys.readouterr().err
