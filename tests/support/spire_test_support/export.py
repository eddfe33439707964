"""The tiny ComfyUI models of ``tiny_comfy`` as the files ``SpirePipeline`` loads: a single-file UNet checkpoint
(optionally "sharpened") and a diffusers components folder (VAE, text encoder(s), tokenizer(s), scheduler), and the
photo and node call of the tests that prove the pipeline gives ComfyUI's image (tests/comfy/
test_pipeline_matches_comfy.py, test_sdxl_pipeline_matches_comfy.py). Import only inside a ComfyUI process.

- VAE: the ComfyUI ``AutoencoderKL`` state dict (LDM names) converted with diffusers' ``convert_ldm_vae_checkpoint``
  into a diffusers ``AutoencoderKL`` of the same shape, with the family's latent scale (ComfyUI's latent format).
- Text encoders: ComfyUI's CLIPs hold transformers-named CLIP text models (``<name>.transformer.``); their weights
  (stored in float16 by ComfyUI, computed in float32) load unchanged into transformers ``CLIPTextModel`` /
  ``CLIPTextModelWithProjection``. The config is the one ComfyUI builds the encoder from: its JSON file
  (``sd1_clip_config.json`` for CLIP-L, quick GELU; ``clip_config_bigg.json`` for CLIP-G, exact GELU) with the
  tiny overrides of ``tiny_comfy``.
- Tokenizers: transformers ``CLIPTokenizer`` from ComfyUI's own vocabulary files (``comfy/sd1_tokenizer``, which
  SD1's, SDXL's CLIP-L and CLIP-G tokenizers all read), 77 tokens, padded as ComfyUI pads for that encoder: with
  the end token (``pad_with_end=True``: SD1, SDXL's CLIP-L) or with token 0, ``"!"`` (``pad_with_end=False``:
  SDXL's CLIP-G), so the token ids are equal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import tiny_comfy

LATENT_SCALE = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
"""ComfyUI's latent format scale per family (``comfy.latent_formats.SD15`` / ``SDXL``)."""

SHARPEN = {".attn2.to_k.": 10.0, ".attn2.to_v.": 10.0, "model.diffusion_model.out.2.": 30.0}
"""Factors applied to the tiny UNet's checkpoint tensors whose key contains the pattern: the random tiny UNet's
noise predictions are so small next to the noise that the restored image hardly depends on the prompts or the
adaptor; these make them matter (``sharpened_checkpoint``)."""

END_TOKEN = 49407
PAD_TOKENS = {"end": END_TOKEN, "zero": 0}
"""ComfyUI's ``SDTokenizer`` pads with the end token when ``pad_with_end`` (the default), else with token 0."""


def export_vae(folder: Path, family: str = "sd1") -> None:
    """The tiny ComfyUI VAE as a diffusers ``AutoencoderKL`` folder (LDM keys converted by diffusers)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ddconfig = tiny_comfy.VAE_DDCONFIG
    config = {
        "in_channels": ddconfig["in_channels"],
        "out_channels": ddconfig["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * len(ddconfig["ch_mult"]),
        "up_block_types": ["UpDecoderBlock2D"] * len(ddconfig["ch_mult"]),
        "block_out_channels": [ddconfig["ch"] * m for m in ddconfig["ch_mult"]],
        "layers_per_block": ddconfig["num_res_blocks"],
        "latent_channels": ddconfig["z_channels"],
        "norm_num_groups": 32,  # LDM's Normalize
        "sample_size": ddconfig["resolution"],
        "scaling_factor": LATENT_SCALE[family],
    }
    vae = AutoencoderKL(**config)
    state = convert_ldm_vae_checkpoint(tiny_comfy.tiny_vae().first_stage_model.state_dict(), config)
    vae.load_state_dict(state, strict=True)
    vae.save_pretrained(folder, safe_serialization=True)


def comfy_text_config(json_name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The config ComfyUI builds a CLIP text encoder from: its JSON file in ``comfy/`` with ``overrides`` (the
    ``<name>_model_config`` model option) applied, as ``comfy.sd1_clip.SDClipModel`` does."""
    import comfy.sd1_clip

    config = json.loads((Path(comfy.sd1_clip.__file__).parent / json_name).read_text(encoding="utf-8"))
    return {**config, **overrides}


def export_text_encoder(
    folder: Path, state: dict, prefix: str, config: dict[str, Any], pad: str, projection: bool = False
) -> None:
    """A ComfyUI CLIP text encoder (``state``'s keys under ``prefix``: ``text_model.*``, ``text_projection.*``) as a
    transformers ``CLIPTextModel`` folder, or ``CLIPTextModelWithProjection`` with ``projection`` (float32)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    keys = (
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_hidden_layers",
        "projection_dim",
        "hidden_act",
        "max_position_embeddings",
        "vocab_size",
        "layer_norm_eps",
    )
    text_config = CLIPTextConfig(
        **{key: config[key] for key in keys},
        bos_token_id=49406,
        eos_token_id=END_TOKEN,  # the pooled token: the first end token, as ComfyUI's num_tokens - 1
        pad_token_id=PAD_TOKENS[pad],
    )
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(text_config)
    # ComfyUI: <prefix>text_model.*, <prefix>text_projection.weight; transformers names the plain model's text
    # model's weights with or without "text_model." depending on its version
    names = {key: prefix + key if prefix + key in state else prefix + "text_model." + key for key in model.state_dict()}
    model.load_state_dict({key: state[name].float() for key, name in names.items()}, strict=True)
    model.save_pretrained(folder, safe_serialization=True)


def export_tokenizer(folder: Path, pad: str = "end") -> None:
    """A transformers ``CLIPTokenizer`` from ComfyUI's own vocabulary files, limited to 77 tokens, padding with the
    end token (``"end"``) or with token 0 (``"zero"``, ``"!"``)."""
    import comfy.sd1_clip
    from transformers import CLIPTokenizer

    source = Path(comfy.sd1_clip.__file__).parent / "sd1_tokenizer"
    options = {"model_max_length": 77}
    if pad == "zero":
        options["pad_token"] = "!"
    tokenizer = CLIPTokenizer.from_pretrained(str(source), **options)
    assert tokenizer.pad_token_id == PAD_TOKENS[pad], (pad, tokenizer.pad_token_id)
    tokenizer.save_pretrained(folder)


TEXT_ENCODERS = {
    # family -> (subfolder suffix, ComfyUI prefix, config JSON, tiny overrides, padding, with projection)
    "sd1": [("", "clip_l.transformer.", "sd1_clip_config.json", tiny_comfy.CLIP_CONFIGS["sd1"], "end", False)],
    "sdxl": [
        ("", "clip_l.transformer.", "sd1_clip_config.json", tiny_comfy.SDXL_CLIP_CONFIGS["clip_l"], "end", False),
        ("_2", "clip_g.transformer.", "clip_config_bigg.json", tiny_comfy.SDXL_CLIP_CONFIGS["clip_g"], "zero", True),
    ],
}
"""How ``comfy.sd1_clip.SD1ClipModel`` / ``comfy.sdxl_clip.SDXLClipModel`` build their encoders and tokenizers."""


def export_components(folder: Path, family: str = "sd1") -> Path:
    """A diffusers components folder for the tiny ComfyUI models of ``family``: ``vae/``, ``text_encoder/`` and
    ``tokenizer/`` (and ``text_encoder_2/``, ``tokenizer_2/`` for SDXL), ``scheduler/`` (Stable Diffusion's noise
    schedule, which ComfyUI's SD1 and SDXL models share). Returns ``folder``."""
    from diffusers import DDPMScheduler

    from spire_core.models.components import SD_SCHEDULER_CONFIG

    export_vae(folder / "vae", family)
    state = tiny_comfy.tiny_clip(family).cond_stage_model.state_dict()
    for suffix, prefix, json_name, overrides, pad, projection in TEXT_ENCODERS[family]:
        config = comfy_text_config(json_name, overrides)
        export_text_encoder(folder / f"text_encoder{suffix}", state, prefix, config, pad, projection)
        export_tokenizer(folder / f"tokenizer{suffix}", pad)
    DDPMScheduler.from_config(SD_SCHEDULER_CONFIG).save_config(folder / "scheduler")
    return folder


def sharpened_checkpoint(folder: Path, family: str = "sd1", sharpen: dict[str, float] = SHARPEN):
    """``tiny_comfy.save_checkpoint``'s file with the ``sharpen`` factors applied, and the ComfyUI MODEL running it:
    (path, ModelPatcher)."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    from safetensors import safe_open
    from safetensors.torch import save_file

    source = tiny_comfy.save_checkpoint(folder / f"tiny_{family}.safetensors", family)
    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata()
        state = {key: f.get_tensor(key) for key in f.keys()}
    for key in state:
        for pattern, factor in sharpen.items():
            if pattern in key:
                state[key] = state[key] * factor
    path = folder / f"sharp_{family}.safetensors"
    save_file(state, str(path), metadata=metadata)
    model_class = comfy.model_base.SDXL if family == "sdxl" else comfy.model_base.BaseModel
    model_type = comfy.model_base.ModelType.V_PREDICTION if family == "sd2" else comfy.model_base.ModelType.EPS
    base = model_class(tiny_comfy.model_config(family), model_type=model_type, device=mm.unet_offload_device())
    prefix = "model.diffusion_model."
    base.diffusion_model.load_state_dict({k[len(prefix) :]: v for k, v in state.items()}, strict=True)
    model = comfy.model_patcher.ModelPatcher(
        base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )
    return path, model


def photo(height: int, width: int):  # noqa: ANN201 - torch.Tensor
    """The astronaut photo resized to ``height`` x ``width``: a (1, H, W, 3) ComfyUI IMAGE in [0, 1]."""
    import numpy as np
    import skimage.data
    import torch
    from PIL import Image

    resized = Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(resized).copy()).float().div(255).unsqueeze(0)


def node_restore(comfy, family: str, model, control, image, **values):  # noqa: ANN001, ANN201
    """The 'Restore (SPIRE)' node as ComfyUI registered it, with ``model`` and the tiny CLIP of ``family`` and tiny
    VAE; tiles off unless ``values`` say otherwise. Returns (B, 3, H, W)."""
    import torch

    clip, vae = tiny_comfy.tiny_clip(family), tiny_comfy.tiny_vae()
    values = {"tile_size": 0, "tile_overlap": 16, **values}
    with torch.no_grad():  # as ComfyUI's executor runs nodes
        out = comfy.nodes.NODE_CLASS_MAPPINGS["SPIRE_Restore"].execute(model, clip, vae, control, image, **values)
    return out.result[0].movedim(-1, 1)


RESTORE_SETTINGS = {
    "semantic_prompt": "an astronaut",
    "restoration_prompt": "Remove all degradation",
    "steps": 4,
    "semantic_scale": 4.0,
    "restoration_scale": 1.0,
    "seed": 7,
    "strength": 1.0,
    "color_fix": "none",
}
"""The settings both pipeline-vs-node proofs start from (each case overrides some)."""


def ddim_simple() -> tuple[dict, str, dict]:
    """``restore_both``'s sampling arguments for DDIM on ComfyUI's "simple" schedule, on both sides."""
    from spire_core.restoration.pipeline import COMFY_SIMPLE_SCHEDULE

    return {"sampler_name": "ddim", "scheduler": "simple"}, "ddim", COMFY_SIMPLE_SCHEDULE


def restore_both(setup, family: str, image, node_sampling: dict, sampler: str, options: dict, **settings):  # noqa: ANN001, ANN201
    """(pipeline's image, node's image), each (B, 3, H, W), for one photo and one set of settings: the node with
    ``node_sampling`` (its sampler and scheduler names), the pipeline with ``sampler`` and ``options``
    (``scheduler_options``). ``setup`` is the tests' (comfy, pipeline, control, model) fixture."""
    comfy, pipe, control, model = setup
    theirs = node_restore(comfy, family, model, control, image, **node_sampling, **settings)
    ours = pipe.restore(image.movedim(-1, 1), sampler=sampler, scheduler_options=options, **settings)
    return ours, theirs


def assert_case_matches(setup, family: str, case: str, spec: tuple, tolerance: float) -> None:  # noqa: ANN001
    """One case of a pipeline-vs-node proof: ``spec`` = (node sampling, pipeline sampler, scheduler options,
    setting overrides) on the 45 x 61 photo (not a multiple of 8: padded by reflection, cropped back on both
    sides); the images have the size the prompt asks for and differ by at most ``tolerance`` anywhere."""
    node_sampling, sampler, options, overrides = spec
    settings = {**RESTORE_SETTINGS, **overrides}
    ours, theirs = restore_both(setup, family, photo(45, 61), node_sampling, sampler, options, **settings)
    factor = 2 if "Upsample" in settings["restoration_prompt"] else 1
    assert ours.shape == theirs.shape == (1, 3, 45 * factor, 61 * factor)
    difference = float((ours - theirs).abs().max())
    assert difference <= tolerance, f"{case}: max abs pixel difference {difference:.3g}"


def match_setup(comfy, work: Path, family: str, sharpen: dict[str, float], adaptor_name: str):  # noqa: ANN001, ANN201
    """The pipeline-vs-node proofs' fixture: a sharpened tiny checkpoint of ``family`` and its components folder
    in ``work``, an adaptor made from its UNet with visibly acting heads saved as ``adaptor_name`` in ComfyUI's
    spire folder, the ``SpirePipeline`` on them and the adaptor as ComfyUI's loader loads it. Returns (comfy,
    pipeline, control, model): the same UNet, VAE, CLIP(s) and adaptor on both sides."""
    from spire_core.models import SpireAdaptor, load_base_unet, save_adaptor
    from spire_core.restoration.pipeline import SpirePipeline

    from .adaptors import randomize_heads

    checkpoint, model = sharpened_checkpoint(work, family, sharpen)
    components = export_components(work / "components", family)
    unet, info = load_base_unet(checkpoint)
    adaptor = SpireAdaptor.from_unet(unet, base_family=family, prediction_type=info.prediction_type)
    randomize_heads(adaptor, seed=1, scale=0.1, attention_gain=10.0)
    save_adaptor(adaptor, comfy.models_dir("spire") / adaptor_name)
    pipe = SpirePipeline.load(checkpoint, comfy.models_dir("spire") / adaptor_name, components=components)
    control = comfy.nodes.NODE_CLASS_MAPPINGS["SPIRE_AdaptorLoader"].execute(adaptor_name).result[0]
    return comfy, pipe, control, model
