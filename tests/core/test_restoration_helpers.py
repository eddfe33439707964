"""The pure restoration helpers the node and the pipeline share: padding to the VAE's multiple and up to
the smallest latent side (cropped back by the callers), the settings checked once, overlapping tiles blended,
and a batch's restoration prompts parsed once."""

from __future__ import annotations

import pytest
import torch

from spire_core.prompt import BLIND_PROMPT, restoration_batch, restoration_features
from spire_core.restoration import RestoreSettings, output_size, pad_to_multiple, tile_windows, tiled_predict


@pytest.mark.parametrize(
    ("size", "multiple", "minimum", "padded"),
    [
        ((64, 64), 8, 32, (64, 64)),  # already fine: untouched
        ((45, 61), 8, 0, (48, 64)),
        ((45, 61), 8, 32, (48, 64)),
        ((8, 8), 8, 32, (32, 32)),  # too small for the model: padded up to the minimum
        ((1, 1), 8, 32, (32, 32)),
        ((5, 40), 8, 32, (32, 40)),
        ((33, 7), 8, 36, (40, 40)),  # a minimum that is no multiple rounds up to one
    ],
)
def test_padding_reaches_the_multiple_and_the_minimum(size, multiple, minimum, padded):
    image = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    out = pad_to_multiple(image, multiple, minimum)
    assert tuple(out.shape[-2:]) == padded
    assert torch.equal(out[..., : size[0], : size[1]], image)  # the photo itself is unchanged, top left
    if padded == size:
        assert out is image


def test_padding_reflects_where_it_can_and_replicates_where_it_cannot():
    image = torch.arange(12.0).view(1, 1, 3, 4)
    reflected = pad_to_multiple(image, 2)  # 3 -> 4 rows: the row above the last, mirrored
    assert torch.equal(reflected[0, 0, 3], image[0, 0, 1])
    replicated = pad_to_multiple(image, 2, minimum=8)  # 5 rows more than a 3-row image can mirror
    assert torch.equal(replicated[0, 0, 7, :4], image[0, 0, 2]) and torch.equal(
        replicated[0, 0, 0, 7], image[0, 0, 0, 3]
    )


# --- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "steps must be at least 1, got 0"),
        ({"denoise": 0.0}, r"denoise must be in \(0, 1\]"),
        ({"denoise": float("nan")}, "denoise=nan: expected a finite number"),
        ({"semantic_scale": float("inf")}, "semantic_scale=inf: expected a finite number"),
        ({"color_fix": "sepia"}, "color_fix 'sepia' is unknown"),
        ({"tile_size": -8}, r"tile_size \(-8\) and tile_overlap \(64\) must not be negative"),
        (
            {"tile_size": 16, "tile_overlap": 4},
            r"tile_size \(16\) must be 0 \(the whole image at once\) or at least 32",
        ),
        ({"tile_size": 64, "tile_overlap": 32}, r"tile_overlap \(32\) must be less than half of tile_size \(64\)"),
    ],
)
def test_settings_refuse_what_cannot_run_before_any_model_does(changes, message):
    with pytest.raises(ValueError, match=message):
        RestoreSettings(**changes).validate(8)


def test_settings_give_tiles_in_latent_cells():
    assert RestoreSettings().validate() == RestoreSettings()
    assert RestoreSettings().latent_tiles(8) == (0, 0)
    assert RestoreSettings(tile_size=512, tile_overlap=64).validate(8).latent_tiles(8) == (64, 8)


# --- tiles -----------------------------------------------------------------------------------------


def test_tile_windows_cover_the_image_with_the_overlap():
    assert tile_windows(10, 16, 4) == [0]
    starts = tile_windows(100, 32, 8)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 32 - 8 for a, b in zip(starts, starts[1:]))  # neighbours share at least the overlap


def test_tiled_predict_of_a_pointwise_model_is_the_untiled_prediction():
    x = torch.randn(2, 4, 37, 53, generator=torch.Generator().manual_seed(0))
    windows = []

    def model(latent, window):
        windows.append(window)
        assert window is None or (latent.shape[-2] <= 16 and latent.shape[-1] <= 16)
        return torch.tanh(latent) * 3

    out = tiled_predict(model, x, 16, 4)
    assert torch.allclose(out, torch.tanh(x) * 3, atol=1e-6)  # the blend weights sum to one everywhere
    assert len(windows) == len(tile_windows(37, 16, 4)) * len(tile_windows(53, 16, 4)) > 1
    assert all(w[4:] == (37, 53) for w in windows)
    windows.clear()
    assert torch.equal(tiled_predict(model, x, 64, 4), torch.tanh(x) * 3) and windows == [None]
    assert torch.equal(tiled_predict(model, x, 0, 0), torch.tanh(x) * 3)


def test_tiles_blend_across_the_overlap_and_not_beyond():
    x = torch.zeros(1, 1, 8, 24)

    def by_tile(latent, window):  # each tile predicts its own left offset: the blend shows the weights
        return torch.full_like(latent, float(window[1]))

    out = tiled_predict(by_tile, x, 8, 4)
    starts = tile_windows(24, 8, 4)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 0, -1] == starts[-1]  # outer edges: one tile alone
    row = out[0, 0, 0]
    assert torch.all(row[1:] >= row[:-1])  # a ramp between neighbours, never a jump back


# --- a batch's restoration prompts ------------------------------------------------------------------


def test_a_batch_of_prompts_is_parsed_once_into_texts_and_requests():
    prompts = restoration_batch("deblur with sigma 1.53\n\n  Denoise with sigma 0.1; upsample by 2x  ", 2)
    assert prompts.texts == ("Deblur with sigma 1.5", "Upsample by 2.0x; Denoise with sigma 0.10")
    assert prompts.requests[0].deblur == 1.5 and prompts.requests[1].upsample == 2.0
    assert torch.equal(prompts.features(), restoration_features(list(prompts.texts)))
    assert prompts.upsample_factors() == {1.0, 2.0}
    one = restoration_batch([BLIND_PROMPT], 3)
    assert one.texts == (BLIND_PROMPT,) and output_size(30, 40, one) == (30, 40, 1.0)
    assert output_size(30, 40, restoration_batch("Upsample by 2x")) == (60, 80, 2.0)
    with pytest.raises(ValueError, match="different upsample factors"):
        output_size(30, 40, prompts)


@pytest.mark.parametrize(
    ("prompts", "batch", "message"),
    [
        ("", 1, "restoration_prompt is empty"),
        ("Deblur with sigma 1\nMake it pretty", 2, "restoration_prompt line 2 \\('Make it pretty'\\)"),
        (["Deblur with sigma 1", "Make it pretty"], 2, "restoration prompt 2 \\('Make it pretty'\\)"),
        ("Make it pretty", 1, "^restoration_prompt \\('Make it pretty'\\)"),
        ("Deblur with sigma 1\nDenoise with sigma 0.1", 3, "has 2 lines but the image batch has 3 images"),
        (["Deblur with sigma 1", BLIND_PROMPT], 3, "holds 2 prompts but the image batch has 3 images"),
    ],
)
def test_a_batch_of_prompts_names_what_is_wrong(prompts, batch, message):
    with pytest.raises(ValueError, match=message):
        restoration_batch(prompts, batch)
