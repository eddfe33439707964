"""SPIRE degradation and prompt nodes executed by the real ComfyUI (library mode), checked against
the library with numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from spire_core.degradation import PRESETS, degrade, manual_params, sample_params


@pytest.fixture(scope="module")
def photo(comfy):
    """A real photo in ComfyUI's input folder."""
    import skimage.data

    path = comfy.input_dir / "spire_coffee.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage.data.coffee()[:200, :300]).save(path)
    with Image.open(path) as im:
        clean = torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div(255).unsqueeze(0)
    return path.name, clean


def degrade_prompt(image_name, seed=0, preset="paper", batch=1, **manual):
    values = {"blur_sigma": 0.0, "downscale": 1.0, "noise_sigma": 0.0, "jpeg_quality": 0, **manual}
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": batch}},
        "3": {
            "class_type": "SPIRE_DegradeImage",
            "inputs": {"image": ["2", 0], "seed": seed, "preset": preset, **values},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "spire_test"}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}},
    }
    return prompt


def saved_images(comfy, outputs):
    return [
        np.array(Image.open(comfy.output_dir / im["subfolder"] / im["filename"]).convert("RGB")).astype(int)
        for im in outputs["4"]["images"]
    ]


def as_uint8(t):
    return np.clip(np.round(t.permute(1, 2, 0).numpy() * 255), 0, 255).astype(int)


def test_degrade_node_batch_matches_the_library(comfy, photo):
    name, clean = photo
    outputs = comfy.run(degrade_prompt(name, seed=42, batch=3))
    images = saved_images(comfy, outputs)
    prompts = outputs["5"]["text"][0].split("\n")
    params = sample_params(PRESETS["paper"], torch.Generator().manual_seed(42), 3)
    expected = degrade(clean.repeat(3, 1, 1, 1), params)
    assert len(images) == 3 and len(prompts) == 3
    assert prompts == expected.prompts()
    assert len(set(prompts)) == 3  # items of a batch get their own draws
    for got, want in zip(images, expected.images):
        assert got.shape == (200, 300, 3)
        assert np.abs(got - as_uint8(want)).max() <= 1
    assert json.loads(outputs["6"]["text"][0]) == [p.to_dict() for p in params]


def test_degrade_node_manual_values_and_prompt(comfy, photo):
    name, clean = photo
    outputs = comfy.run(
        degrade_prompt(name, seed=7, preset="manual", blur_sigma=1.5, downscale=2.0, noise_sigma=0.05, jpeg_quality=70)
    )
    assert outputs["5"]["text"][0] == (
        "Upsample by 2.0x; Deblur with sigma 1.5; Denoise with sigma 0.05; Dejpeg with quality 70"
    )
    want = degrade(clean, manual_params(blur_sigma=1.5, downscale=2.0, noise_sigma=0.05, jpeg_quality=70, seed=7))
    assert np.abs(saved_images(comfy, outputs)[0] - as_uint8(want.images[0])).max() <= 1


def test_degrade_node_same_seed_same_bytes(comfy, photo):
    name, _ = photo
    a = saved_images(comfy, comfy.run(degrade_prompt(name, seed=5, preset="heavy")))[0]
    b = saved_images(comfy, comfy.run(degrade_prompt(name, seed=5, preset="heavy")))[0]
    c = saved_images(comfy, comfy.run(degrade_prompt(name, seed=6, preset="heavy")))[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def prompt_builder(**values):
    inputs = {"upsample": 1.0, "deblur_sigma": 0.0, "denoise_sigma": 0.0, "dejpeg_quality": 0, "blind": False}
    inputs.update(values)
    return {
        "1": {"class_type": "SPIRE_RestorationPrompt", "inputs": inputs},
        "2": {"class_type": "SPIRE_ParseRestorationPrompt", "inputs": {"restoration_prompt": ["1", 0]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["2", 4]}},
    }


def test_prompt_builder_and_parser_round_trip(comfy):
    outputs = comfy.run(prompt_builder(upsample=4.0, deblur_sigma=1.5, denoise_sigma=0.08, dejpeg_quality=30))
    assert outputs["3"]["text"][0] == (
        "Upsample by 4.0x; Deblur with sigma 1.5; Denoise with sigma 0.08; Dejpeg with quality 30"
    )
    assert float(outputs["4"]["text"][0]) == 1.5
    assert int(outputs["5"]["text"][0]) == 30
    outputs = comfy.run(prompt_builder(blind=True, denoise_sigma=0.1))
    assert outputs["3"]["text"][0] == "Remove all degradation"


def test_prompt_builder_with_everything_off_says_what_to_do(comfy):
    message = comfy.run_error(prompt_builder())
    assert "nothing to ask for" in message and "blind" in message


def test_parser_node_rejects_bad_text_with_the_grammar_message(comfy):
    prompt = {
        "1": {"class_type": "SPIRE_ParseRestorationPrompt", "inputs": {"restoration_prompt": "Denoise with sigma 2"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    message = comfy.run_error(prompt)
    assert "Denoise value 2 is out of range (0, 1]" in message
    prompt["1"]["inputs"]["restoration_prompt"] = "denoise sigma .08\ndeblur with sigma 0.40"
    assert comfy.run(prompt)["2"]["text"][0] == "Deblur with sigma 0.4; Denoise with sigma 0.08"


def test_degrade_node_reports_out_of_range_pixels(comfy):
    """An IMAGE outside [0, 1] (e.g. from an unclamped upstream node) is an error, not a silent clip."""
    from nodes import NODE_CLASS_MAPPINGS

    node = NODE_CLASS_MAPPINGS["SPIRE_DegradeImage"]
    bad = torch.full((1, 16, 16, 3), 1.2)
    with pytest.raises(ValueError, match=r"expected \[0, 1\]"):
        node.execute(bad, 0, "paper", 0.0, 1.0, 0.0, 0)


def test_numbers_that_are_not_numbers_are_refused(comfy, photo):
    """A JSON NaN in an API prompt passes ComfyUI's validation (every comparison with the bounds is false; an
    infinity does not pass them); the nodes refuse it by name instead of reading it as 0 or "off"."""
    value = float("nan")
    message = comfy.run_error(degrade_prompt(photo[0], preset="manual", noise_sigma=value))
    assert f"noise_sigma={value!r}: expected a finite number" in message
    prompt = {
        "1": {
            "class_type": "SPIRE_RestorationPrompt",
            "inputs": {
                "upsample": 1.0,
                "deblur_sigma": value,
                "denoise_sigma": 0.05,
                "dejpeg_quality": 0,
                "blind": False,
            },
        },
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    assert f"deblur_sigma={value!r}: expected a finite number" in comfy.run_error(prompt)
    assert '"deblur_sigma": NaN' in json.dumps(prompt)  # what an API client sends
