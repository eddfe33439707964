"""SDXL bases in spire_core.models: the family, the trunk with SDXL's added conditioning, the file format, the
single-file layout and ComfyUI's cldm layout, on tiny SDXL-shaped models and real-size meta-device ones."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors import safe_open

from spire_core.bench.common import SDXL_DIFFUSERS_UNET as SDXL
from spire_core.models import (
    AdaptorConfig,
    SpireAdaptor,
    check_fits_unet,
    check_unet_supported,
    controlnet_config_from_unet,
    diffusers_to_ldm_unet,
    infer_base_family,
    ldm_to_diffusers_unet,
    load_adaptor,
    load_base_unet,
    save_adaptor,
    tiny_unet_config,
    unet_config_from_ldm,
)
from spire_core.models.__main__ import main as cli_main
from spire_core.models.comfy_layout import cldm_kwargs, to_cldm_state_dict
from spire_core.models.components import sdxl_time_ids
from spire_core.models.file_layout import adaptor_file_shapes
from spire_core.models.fusion import predict_noise
from spire_core.models.safetensors_header import AdaptorFileError
from spire_core.models.tiny import SDXL_TINY_POOLED

CONTEXT = 64


@functools.cache
def sdxl_config() -> dict:
    """SDXL's full diffusers UNet config (defaults filled in by building it on the meta device)."""
    with torch.device("meta"):
        return dict(UNet2DConditionModel(**SDXL).config)


def tiny_sdxl(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**tiny_unet_config("sdxl", cross_attention_dim=CONTEXT)).eval().requires_grad_(False)


def randomize_heads(adaptor: SpireAdaptor, seed: int, scale: float = 0.05) -> SpireAdaptor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adaptor.head_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return adaptor


def inputs(batch: int = 2, size: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, size, size, generator=g)
    semantic = torch.randn(batch, 7, CONTEXT, generator=g)
    restoration = torch.randn(batch, 5, CONTEXT, generator=g)
    hint = torch.rand(batch, 3, 8 * size, 8 * size, generator=g)
    time_ids = sdxl_time_ids(8 * size, 8 * size).expand(batch, -1)
    semantic_added = {"text_embeds": torch.randn(batch, SDXL_TINY_POOLED, generator=g), "time_ids": time_ids}
    restoration_added = {"text_embeds": torch.randn(batch, SDXL_TINY_POOLED, generator=g), "time_ids": time_ids}
    return sample, torch.tensor([10, 500][:batch]), semantic, restoration, hint, semantic_added, restoration_added


def test_sdxl_is_a_family_and_its_unets_are_supported():
    assert infer_base_family(SDXL) == "sdxl"
    assert infer_base_family(tiny_unet_config("sdxl")) == "sdxl"  # the structure decides, not the size
    assert infer_base_family({**SDXL, "addition_embed_type": None}) == "custom"
    check_unet_supported(SDXL)
    with pytest.raises(ValueError, match="addition_embed_type='image'"):
        check_unet_supported({**SDXL, "addition_embed_type": "image"})
    config = AdaptorConfig(controlnet_config_from_unet(sdxl_config()), base_family="sdxl")
    assert config.added_conditioning and config.text_encoder_layer == "penultimate"  # as SDXL's own pipelines
    assert config.num_skips == 9
    assert AdaptorConfig.from_metadata(config.to_metadata()) == config


def test_controlnet_config_matches_diffusers_from_unet():
    unet = tiny_sdxl()
    built = ControlNetModel.from_unet(unet)
    expected = {k: v for k, v in built.config.items() if not k.startswith("_")}
    assert AdaptorConfig(controlnet_config_from_unet(unet.config)).controlnet_config == (
        AdaptorConfig(dict(expected)).controlnet_config
    )
    assert expected["addition_embed_type"] == "text_time"
    assert expected["projection_class_embeddings_input_dim"] == SDXL_TINY_POOLED + 6 * 256


@pytest.mark.parametrize("size", ["tiny", "real"])
def test_the_file_layout_written_out_is_the_one_diffusers_builds(size):
    unet_config = dict(tiny_sdxl().config) if size == "tiny" else sdxl_config()
    for fusion in ("modulation", "additive"):
        for numeric_tokens in (0, 4):
            config = AdaptorConfig(
                controlnet_config=controlnet_config_from_unet(unet_config), fusion=fusion, numeric_tokens=numeric_tokens
            )
            with torch.device("meta"):
                built = {key: tuple(value.shape) for key, value in SpireAdaptor(config).file_state_dict().items()}
            assert adaptor_file_shapes(config) == built, (fusion, numeric_tokens)
            time_dim = 4 * unet_config["block_out_channels"][0]
            adm = unet_config["projection_class_embeddings_input_dim"]
            assert built["add_embedding.linear_1.weight"] == (time_dim, adm)
    if size == "real":  # SDXL's full encoder copy: about 1.25 B parameters, as the paper's recipe has it
        trunk = sum(torch.Size(s).numel() for k, s in built.items() if not k.startswith("spire_"))
        assert 1.2e9 < trunk < 1.3e9


@pytest.mark.parametrize("fusion", ["modulation", "additive"])
def test_fresh_adaptor_is_an_exact_identity(fusion):
    unet = tiny_sdxl()
    adaptor = SpireAdaptor.from_unet(unet, fusion=fusion)
    assert adaptor.config.base_family == "sdxl" and adaptor.num_skips == 4
    sample, timestep, semantic, restoration, hint, semantic_added, restoration_added = inputs()
    with torch.no_grad():
        bare = unet(sample, timestep, encoder_hidden_states=semantic, added_cond_kwargs=semantic_added).sample
        got = predict_noise(
            unet,
            adaptor,
            sample,
            timestep,
            semantic,
            restoration,
            hint,
            unet_kwargs={"added_cond_kwargs": semantic_added},
            restoration_added_cond=restoration_added,
        )
    assert torch.equal(got, bare)  # bit-identical
    assert float(bare.abs().max()) > 0.01


def test_the_trunk_reads_the_restoration_prompts_pooled_embedding_and_the_size_ids():
    unet = tiny_sdxl()
    adaptor = randomize_heads(SpireAdaptor.from_unet(unet), seed=3)
    sample, timestep, _, restoration, hint, _, restoration_added = inputs()
    with torch.no_grad():
        base = adaptor(sample, timestep, restoration, hint, added_cond=restoration_added)
        pooled = {**restoration_added, "text_embeds": restoration_added["text_embeds"] + 1.0}
        other_text = adaptor(sample, timestep, restoration, hint, added_cond=pooled)
        sizes = {**restoration_added, "time_ids": sdxl_time_ids(1024, 768)}
        other_size = adaptor(sample, timestep, restoration, hint, added_cond=sizes)
        one = {key: value[:1] for key, value in restoration_added.items()}
        broadcast = adaptor(sample, timestep, restoration, hint, added_cond=one)
    for changed in (other_text, other_size):
        assert float((changed.gamma_mid - base.gamma_mid).abs().max()) > 1e-4
    assert torch.equal(broadcast.gamma_down[0][0], base.gamma_down[0][0])  # batch 1 is broadcast
    with pytest.raises(ValueError, match="needs added_cond=.*pooled embedding of the restoration prompt"):
        adaptor(sample, timestep, restoration, hint)
    with pytest.raises(ValueError, match=r"expects \(B, 32\) and \(B, 6\)"):
        adaptor(sample, timestep, restoration, hint, added_cond={**restoration_added, "time_ids": torch.zeros(2, 5)})
    sd1 = SpireAdaptor.from_unet(UNet2DConditionModel(**tiny_unet_config("sd1", cross_attention_dim=CONTEXT)))
    with pytest.raises(ValueError, match="takes no added conditioning"):
        sd1(sample, timestep, restoration, hint, added_cond=restoration_added)


def test_an_sdxl_adaptor_is_refused_on_an_sd1_base_and_back(tmp_path):
    sdxl_unet = tiny_sdxl()
    sd1_unet = UNet2DConditionModel(**tiny_unet_config("sd1", cross_attention_dim=CONTEXT))
    sdxl_adaptor = SpireAdaptor.from_unet(sdxl_unet)
    sd1_adaptor = SpireAdaptor.from_unet(sd1_unet)
    with pytest.raises(AdaptorFileError, match="made for an SDXL base, the base model is a custom one"):
        check_fits_unet(sdxl_adaptor.config, sd1_unet.config)
    with pytest.raises(AdaptorFileError, match="made for a custom base, the base model is an SDXL one"):
        check_fits_unet(sd1_adaptor.config, sdxl_unet.config)
    check_fits_unet(sdxl_adaptor.config, sdxl_unet.config)


def test_file_round_trip_cli_init_and_inspect(tmp_path, capsys):
    unet = tiny_sdxl()
    adaptor = randomize_heads(SpireAdaptor.from_unet(unet), seed=4)
    path = save_adaptor(adaptor, tmp_path / "xl.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["spire.base_family"] == "sdxl"
    assert json.loads(metadata["spire.controlnet_config"])["addition_embed_type"] == "text_time"
    assert metadata["spire.format_version"] == "3"  # SDXL adaptors: format 3, which packs before SDXL refuse clearly
    loaded = load_adaptor(path)
    sample, timestep, _, restoration, hint, _, restoration_added = inputs()
    with torch.no_grad():
        want = adaptor(sample, timestep, restoration, hint, added_cond=restoration_added)
        got = loaded(sample, timestep, restoration, hint, added_cond=restoration_added)
    assert all(torch.equal(a, b) for a, b in zip(want.gamma_down, got.gamma_down))

    unet.save_pretrained(tmp_path / "base" / "unet", safe_serialization=True)
    out = tmp_path / "init.safetensors"
    assert cli_main(["init", "--base", str(tmp_path / "base"), "--out", str(out)]) == 0
    assert "base family sdxl" in capsys.readouterr().out
    assert cli_main(["inspect", str(out)]) == 0
    report = capsys.readouterr().out
    assert "sdxl" in report and "UNTRAINED" in report


def test_single_file_sdxl_unet_round_trip():
    unet = tiny_sdxl()
    ldm = diffusers_to_ldm_unet(unet.state_dict(), unet.config)
    assert tuple(ldm["label_emb.0.0.weight"].shape) == (256, SDXL_TINY_POOLED + 6 * 256)
    config = unet_config_from_ldm(ldm)
    assert config["addition_embed_type"] == "text_time" and infer_base_family(config) == "sdxl"
    rebuilt = UNet2DConditionModel.from_config(config)
    rebuilt.load_state_dict(ldm_to_diffusers_unet(ldm, config), strict=True)
    sample, timestep, semantic, _, _, semantic_added, _ = inputs()
    with torch.no_grad():
        want = unet(sample, timestep, encoder_hidden_states=semantic, added_cond_kwargs=semantic_added).sample
        got = rebuilt.eval()(sample, timestep, encoder_hidden_states=semantic, added_cond_kwargs=semantic_added).sample
    assert torch.equal(got, want)
    with pytest.raises(Exception, match="not SDXL's pooled-text and size conditioning"):
        unet_config_from_ldm({**ldm, "label_emb.0.0.weight": torch.zeros(256, 12)})


def test_the_refiner_unclip_and_mismatched_families_are_refused():
    refiner = {**sdxl_config(), "projection_class_embeddings_input_dim": 1280 + 5 * 256, "cross_attention_dim": 1280}
    with pytest.raises(ValueError, match="the SDXL refiner"):
        check_unet_supported(refiner)
    # an unCLIP-style label_emb on a UNet with attention at its first level (SD 2.x unCLIP): not SDXL
    sd1 = UNet2DConditionModel(**tiny_unet_config("sd1", cross_attention_dim=CONTEXT))
    ldm = diffusers_to_ldm_unet(sd1.state_dict(), sd1.config)
    time_dim = ldm["time_embed.0.weight"].shape[0]
    unclip = {**ldm, "label_emb.0.0.weight": torch.zeros(time_dim, 2048), "label_emb.0.2.weight": torch.zeros(1, 1)}
    with pytest.raises(Exception, match="an SD 2.x unCLIP UNet, not SDXL"):
        unet_config_from_ldm(unclip)
    xl = controlnet_config_from_unet(sdxl_config())
    with pytest.raises(ValueError, match="base_family='sd1' with SDXL added conditioning"):
        AdaptorConfig(xl, base_family="sd1")
    with pytest.raises(ValueError, match="base_family='sdxl' with no added conditioning"):
        AdaptorConfig(controlnet_config_from_unet(dict(sd1.config)), base_family="sdxl")


def test_single_file_sdxl_base_loads(tmp_path):
    from safetensors.torch import save_file

    unet = tiny_sdxl()
    ldm = diffusers_to_ldm_unet(unet.state_dict(), unet.config)
    path = tmp_path / "xl.safetensors"
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in ldm.items()}, str(path))
    loaded, info = load_base_unet(path)
    assert info.base_family == "sdxl" and info.source == "single_file"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), unet.state_dict().values()))


def test_comfy_layout_builds_sdxls_added_conditioning():
    config = AdaptorConfig(controlnet_config_from_unet(sdxl_config()), base_family="sdxl")
    kwargs = cldm_kwargs(config)
    assert kwargs["adm_in_channels"] == 2816 and kwargs["num_classes"] == "sequential"
    assert kwargs["transformer_depth"] == [0, 0, 2, 2, 10, 10] and kwargs["transformer_depth_middle"] == 10
    assert kwargs["num_head_channels"] == 64 and kwargs["context_dim"] == 2048
    assert kwargs["channel_mult"] == [1, 2, 4] and kwargs["use_linear_in_transformer"] is True

    unet = tiny_sdxl()
    adaptor = SpireAdaptor.from_unet(unet)
    state = adaptor.file_state_dict()
    out = to_cldm_state_dict(state, adaptor.config)
    assert out["label_emb.0.0.weight"] is state["add_embedding.linear_1.weight"]
    assert out["label_emb.0.2.bias"] is state["add_embedding.linear_2.bias"]
    assert len(out) == len(state)
    with torch.device("meta"):
        sd1_unet = UNet2DConditionModel(**tiny_unet_config("sd1"))
    sd1 = AdaptorConfig(controlnet_config_from_unet(dict(sd1_unet.config)))
    assert cldm_kwargs(sd1)["adm_in_channels"] is None and cldm_kwargs(sd1)["num_classes"] is None


def test_spire_pipeline_restores_with_an_sdxl_base():
    from spire_core.restoration import SpirePipeline
    from spire_core.training.tiny import build_tiny_components

    components = build_tiny_components("sdxl")
    fresh = SpireAdaptor.from_unet(components.unet)
    trained = randomize_heads(SpireAdaptor.from_unet(components.unet), seed=6, scale=0.5)
    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    options = {"semantic_prompt": "a photo", "restoration_prompt": "Deblur with sigma 1.5", "steps": 3}

    def restore(adaptor: SpireAdaptor, **overrides) -> torch.Tensor:
        return SpirePipeline(components, adaptor).restore(image, **{**options, **overrides})

    out = restore(trained)
    assert out.shape == image.shape and bool(torch.isfinite(out).all())
    assert torch.equal(out, restore(trained))  # deterministic
    assert torch.equal(restore(fresh), restore(trained, strength=0.0))  # both are the bare SDXL base, exactly
    assert float((out - restore(fresh)).abs().max()) > 1e-4
    # three guidance branches: the null restoration prompt brings its own pooled embedding
    both = restore(trained, restoration_scale=2.0)
    assert bool(torch.isfinite(both).all()) and float((both - out).abs().max()) > 1e-4
    # the adaptor reads the restoration prompt's pooled embedding: another prompt, another result
    assert float((restore(trained, restoration_prompt="Remove all degradation") - out).abs().max()) > 1e-4


def test_sdxl_reads_its_text_encoders_at_the_penultimate_layer_only():
    """ComfyUI's SDXL CLIP has no "last" layer for both encoders; the pipeline and training refuse it too, so an
    SDXL adaptor reads the same restoration-prompt embedding everywhere."""
    from spire_core.models import encode_prompts
    from spire_core.training.tiny import build_tiny_components

    with pytest.raises(ValueError, match="must be 'penultimate' for SDXL"):
        AdaptorConfig(controlnet_config_from_unet(sdxl_config()), base_family="sdxl", text_encoder_layer="last")
    components = build_tiny_components("sdxl")
    assert len(components.text_encoders) == 2
    with pytest.raises(ValueError, match="not used with SDXL bases"):
        encode_prompts(components, ["a photo"], "last")
