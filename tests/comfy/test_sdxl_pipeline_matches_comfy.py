"""SDXL: ``SpirePipeline`` gives the same image as ComfyUI's 'Restore (SPIRE)' node (tiny SDXL models).

The SD1 proof (``test_pipeline_matches_comfy.py``: schedules, noise, the "sharpened" checkpoint) carries over; what
SDXL adds is checked here too:

- Two text encoders, exported from ComfyUI's tiny ``SDXLClipModel`` (``spire_test_support.export``): CLIP-L as a
  transformers ``CLIPTextModel`` (quick GELU, padded with the end token), CLIP-G as a ``CLIPTextModelWithProjection``
  (exact GELU, its ``text_projection``, padded with token 0 as ComfyUI's ``pad_with_end=False`` tokenizer does).
  Both are read at the penultimate layer without the final layer norm, side by side; the pooled embedding is
  CLIP-G's final-layer-normed first end token, projected. Checked against ComfyUI's cond and pooled to 1e-5 (and
  the token ids exactly) before any image is compared.
- Added conditioning: the UNet's ``y`` = the semantic prompt's pooled embedding + the six size ids of the padded
  latent (ComfyUI's ``SDXL.encode_adm``); the adaptor's = the restoration prompt's pooled embedding + the same ids
  (``SpireControl._added_conditioning``), in every branch (the null restoration branch its own pooled embedding).
- SDXL's latent scale (0.13025), in the exported VAE config.

The checkpoint is sharpened as SD1's, and the first layer of its pooled-text and size embedding (``label_emb``,
which the adaptor's trunk copies) is scaled by 10 as well: without it, another restoration pooled embedding moved
pixels by only 1e-3, ten times the tolerance. With it, the semantic and the restoration prompts' pooled
embeddings and the size ids each move pixels by 5e-3 to 1.3e-2 (asserted > 10 x the tolerance), so a mismatch in
any of them would show. Those the encoders are checked for move the cond a lot: CLIP-G padded with the end token
changes the cond by 2.1, quick GELU in CLIP-G by 2e-2, the last layer instead of the penultimate by 2.6.

Measured on these models: the encoders agree with ComfyUI to 6.6e-7 (cond) and 4.2e-7 (pooled), the images to
0.9e-6 to 3.1e-6 max abs pixel difference over the cases below; asserted <= 1e-4 (``TOLERANCE``).
"""

from __future__ import annotations

import pytest
import torch
from spire_test_support import tiny_comfy
from spire_test_support.export import (
    RESTORE_SETTINGS,
    SHARPEN,
    assert_case_matches,
    ddim_simple,
    match_setup,
    photo,
    restore_both,
)
from spire_test_support.prompts import LONG_PROMPT, PROMPT_TEXTS

from spire_core.models.prompt_windows import prompt_windows
from spire_core.restoration import pipeline as pipeline_module
from spire_core.restoration.pipeline import COMFY_SIMPLE_SCHEDULE

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ADAPTOR = "pipeline_match_sdxl.safetensors"
SHARPEN_SDXL = {**SHARPEN, "model.diffusion_model.label_emb.0.0.": 10.0}
"""SD1's factors, and the first layer of the pooled-text/size embedding (see the module docstring)."""
TOLERANCE = 1e-4
"""Max abs pixel difference (images in [0, 1], float32) allowed between the pipeline and the node."""
TEXTS = ("Remove all degradation", "Deblur with sigma 2.0; Denoise with sigma 0.05", *PROMPT_TEXTS)


@pytest.fixture(scope="module")
def setup(comfy, tmp_path_factory):
    """(comfy, pipeline, control, model): the same UNet, VAE, CLIPs and adaptor on both sides."""
    setup = match_setup(comfy, tmp_path_factory.mktemp("sdxl_pipeline_match"), "sdxl", SHARPEN_SDXL, ADAPTOR)
    pipe = setup[1]
    assert pipe.components.sdxl and pipe.adaptor.config.text_encoder_layer == "penultimate"
    assert pipe.components.info.base_family == "sdxl"  # inferred from the single-file checkpoint
    return setup


@pytest.mark.parametrize("text", TEXTS)
def test_exported_encoders_give_comfyui_s_tokens_cond_and_pooled(setup, text):
    """Token ids of both tokenizers exactly (CLIP-G padded with 0, CLIP-L with the end token; every window of a
    long prompt), then the concatenated penultimate hidden states (weights applied) and CLIP-G's projected pooled
    embedding of the first window to 1e-5."""
    pipe = setup[1]
    clip = tiny_comfy.tiny_clip("sdxl")
    tokens = clip.tokenize(text)
    parts = pipe.components
    for key, tokenizer, pad in (("l", parts.tokenizer, 49407), ("g", parts.tokenizer_2, 0)):
        theirs = [[pair[0] for pair in window] for window in tokens[key]]  # (token, weight) pairs per window
        ours = prompt_windows(tokenizer, text).ids.tolist()
        assert ours == theirs, (key, text)
        assert ours[-1][-1] == pad  # the padding differs between the two, as in ComfyUI
    ours, ours_pooled = pipe.encode_prompts([text], pipe.adaptor.config.text_encoder_layer)
    theirs, theirs_pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    assert ours.shape == theirs.shape == (1, 77 * len(tokens["g"]), 64)
    assert ours_pooled.shape == theirs_pooled.shape == (1, 32)
    assert float((ours - theirs).abs().max()) <= 1e-5, text
    assert float((ours_pooled - theirs_pooled).abs().max()) <= 1e-5, text
    family, _ = pipe.encode_prompts([text])  # the semantic prompt's layer is the same one for SDXL
    assert torch.equal(family, ours)


def test_exported_vae_decodes_with_sdxl_s_latent_scale(setup):
    import comfy.latent_formats

    pipe = setup[1]
    assert pipe.components.scaling_factor == comfy.latent_formats.SDXL().scale_factor
    latent = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = ((pipe.components.vae.decode(latent / pipe.components.scaling_factor).sample + 1) / 2).clamp(0, 1)
        theirs = tiny_comfy.tiny_vae().decode(latent / pipe.components.scaling_factor).movedim(-1, 1)
    assert float((ours - theirs).abs().max()) <= 1e-5


CASES = {
    # node sampler/scheduler -> pipeline sampler + scheduler options; odd size, blind prompt, CFG (two branches)
    "blind-ddim-simple": ({"sampler_name": "ddim", "scheduler": "simple"}, "ddim", COMFY_SIMPLE_SCHEDULE, {}),
    "blind-euler-normal": (
        {"sampler_name": "euler", "scheduler": "normal"},
        "euler",
        {"timestep_spacing": "linspace"},
        {},
    ),
    # a graded prompt with restoration guidance: three branches, the null prompt's pooled embedding in the third
    "graded-three-branches": (
        {"sampler_name": "ddim", "scheduler": "simple"},
        "ddim",
        COMFY_SIMPLE_SCHEDULE,
        {"restoration_prompt": "Deblur with sigma 2.0; Denoise with sigma 0.05", "restoration_scale": 2.5},
    ),
    # "Upsample by 2.0x": the size ids of the doubled (padded) output, a colour fix, adaptor strength
    "upsample-colorfix": (
        {"sampler_name": "euler", "scheduler": "simple"},
        "euler",
        COMFY_SIMPLE_SCHEDULE,
        {"restoration_prompt": "Upsample by 2.0x; Denoise with sigma 0.05", "color_fix": "adain", "strength": 0.7},
    ),
    # a denoise start: the degraded photo's latent at SDXL's latent scale, noised to the 5th of 8 timesteps
    "denoise-euler": (
        {"sampler_name": "euler", "scheduler": "simple"},
        "euler",
        COMFY_SIMPLE_SCHEDULE,
        {"denoise": 0.5, "restoration_scale": 2.0},
    ),
    # a weighted semantic prompt of three windows (its first window's pooled embedding) beside the empty prompt
    "long-weighted-semantic": (
        {"sampler_name": "ddim", "scheduler": "simple"},
        "ddim",
        COMFY_SIMPLE_SCHEDULE,
        {"semantic_prompt": LONG_PROMPT},
    ),
}

SETTINGS = RESTORE_SETTINGS


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_matches_the_restore_node(setup, case):
    assert_case_matches(setup, "sdxl", case, CASES[case], TOLERANCE)


def test_pipeline_matches_the_tiled_restore_node(setup, monkeypatch):
    """Tiled sampling on both sides, three branches: every tile gets the size ids of the whole padded output. The
    node's VAE decodes whole here, as the pipeline's (see the SD1 test)."""
    pipe = setup[1]
    vae = tiny_comfy.tiny_vae()
    monkeypatch.setattr(vae, "decode_tiled", lambda samples, **_: vae.decode(samples))
    settings = {**SETTINGS, "restoration_scale": 2.0, "tile_size": 32, "tile_overlap": 8}  # 2 x 3 tiles
    image = photo(45, 61)
    ours, theirs = restore_both(setup, "sdxl", image, *ddim_simple(), **settings)
    difference = float((ours - theirs).abs().max())
    assert difference <= TOLERANCE, f"tiled: max abs pixel difference {difference:.3g}"
    whole = {**settings, "tile_size": 0}
    whole = pipe.restore(image.movedim(-1, 1), sampler="ddim", scheduler_options=COMFY_SIMPLE_SCHEDULE, **whole)
    assert float((ours - whole).abs().max()) > 10 * TOLERANCE  # the tiles changed the result: not vacuous


def test_the_match_is_not_vacuous(setup, monkeypatch):
    """Every input the match covers moves the image by far more than the tolerance, SDXL's added conditioning
    included: the semantic and the restoration prompts' pooled embeddings, and the size ids."""
    pipe = setup[1]
    image = photo(45, 61).movedim(-1, 1)

    def restore(**overrides):
        return pipe.restore(image, scheduler_options=COMFY_SIMPLE_SCHEDULE, **{**SETTINGS, **overrides})

    reference = restore()
    changes = {
        "semantic prompt": {"semantic_prompt": "a red car"},
        "semantic scale": {"semantic_scale": 9.0},
        "restoration prompt": {"restoration_prompt": "Deblur with sigma 2.0; Denoise with sigma 0.05"},
        "adaptor strength": {"strength": 0.0},
        "seed": {"seed": 8},
    }
    effects = {name: float((restore(**change) - reference).abs().max()) for name, change in changes.items()}
    graded = {"restoration_prompt": "Deblur with sigma 2.0"}
    effects["restoration scale"] = float((restore(**graded, restoration_scale=2.5) - restore(**graded)).abs().max())

    added = pipeline_module.added_conditioning  # called for the UNet (semantic), then for the adaptor

    def changed(which: int, key: str, change):
        calls = []

        def patched(components, pooled, height, width):
            out = added(components, pooled, height, width)
            calls.append(key)
            if len(calls) == which:
                out = {**out, key: change(out[key])}
            return out

        with monkeypatch.context() as m:
            m.setattr(pipeline_module, "added_conditioning", patched)
            result = restore()
        assert len(calls) == 2
        return float((result - reference).abs().max())

    effects["semantic pooled"] = changed(1, "text_embeds", lambda e: e.flip(-1))
    effects["restoration pooled"] = changed(2, "text_embeds", lambda e: e.flip(-1))
    effects["UNet size ids"] = changed(1, "time_ids", lambda ids: ids * 2)
    effects["adaptor size ids"] = changed(2, "time_ids", lambda ids: ids * 2)
    assert all(effect > 10 * TOLERANCE for effect in effects.values()), effects
