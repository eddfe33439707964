"""Suggest Restoration Prompt inside the real ComfyUI: the node equals the library, per batch item, and runs in a
graph through ComfyUI's own executor (LoadImage -> suggestion -> preview), with clear errors for bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spire_core.degradation import degrade, manual_params
from spire_core.estimate import suggest_prompt
from spire_core.prompt import BLIND_PROMPT, parse

PACK_NODES = Path(__file__).resolve().parents[2] / "nodes"


@pytest.fixture(scope="module")
def node(comfy):
    loaded = [m for name, m in sys.modules.items() if name.endswith("nodes.prompt") and hasattr(m, "NODES")]
    assert loaded, "the pack's nodes.prompt module is not loaded"
    return {cls.GET_SCHEMA().node_id: cls for cls in loaded[0].NODES}["SPIRE_SuggestRestorationPrompt"]


@pytest.fixture(scope="module")
def photos():
    import skimage.data

    coffee = torch.from_numpy(skimage.data.coffee()[100:292, 200:392]).permute(2, 0, 1).float().div(255)[None]
    degraded = degrade(coffee, manual_params(blur_sigma=2.0, noise_sigma=0.06, jpeg_quality=70, seed=2)).images
    return coffee, degraded


def test_schema(node):
    schema = node.GET_SCHEMA()
    assert schema.category == "SPIRE/prompt" and schema.display_name.endswith("(SPIRE)") and schema.is_output_node
    for inp in schema.inputs:
        assert inp.tooltip, inp.id
        if inp.get_io_type() == "FLOAT":
            assert inp.min == 0.0 and inp.max == 2.0 and inp.default == 1.0


def test_node_equals_the_library_per_item(node, photos):
    clean, degraded = photos
    batch = torch.cat([degraded, clean]).movedim(1, -1).contiguous()
    out = node.execute(batch, 0.5, 1.0, BLIND_PROMPT)
    prompts, data, summary = out.args
    lines = prompts.split("\n")
    assert len(lines) == 2
    expected, estimates = suggest_prompt(degraded, noise_scale=0.5)
    assert lines[0] == expected and parse(expected).dejpeg == 70 and parse(expected).denoise is not None
    assert lines[1] == BLIND_PROMPT  # the clean photo: nothing named, the chosen fallback
    items = json.loads(data)
    assert items[0]["denoise"]["value"] == pytest.approx(round(estimates.denoise.value, 4))
    assert not any(items[1][k]["present"] for k in ("upsample", "deblur", "denoise", "dejpeg"))
    assert "image 1: Remove all degradation" in summary
    assert node.execute(batch[1:], 1.0, 1.0, "empty").args[0] == ""


def test_bad_input_is_named(node, photos):
    clean, _ = photos
    bad = clean.movedim(1, -1).clone()
    bad[0, 5, 5, 0] = float("nan")
    with pytest.raises(ValueError, match="image contains 1 NaN"):
        node.execute(bad, 1.0, 1.0, BLIND_PROMPT)
    with pytest.raises(ValueError, match="image is 8x8 px"):
        node.execute(torch.zeros(1, 8, 8, 3), 1.0, 1.0, BLIND_PROMPT)
    with pytest.raises(ValueError, match="noise_scale"):
        node.execute(clean.movedim(1, -1), float("nan"), 1.0, BLIND_PROMPT)


def test_graph_in_comfyui(comfy, photos):
    _, degraded = photos
    path = comfy.input_dir / "spire_suggest.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((degraded[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "spire_suggest.png"}},
        "2": {
            "class_type": "SPIRE_SuggestRestorationPrompt",
            "inputs": {"image": ["1", 0], "noise_scale": 1.0, "blur_scale": 1.0, "when_clean": BLIND_PROMPT},
        },
        "3": {"class_type": "SPIRE_ParseRestorationPrompt", "inputs": {"restoration_prompt": ["2", 0]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 4]}},
    }
    outputs = comfy.run(prompt)
    assert int(outputs["4"]["text"][0]) == 70  # the PNG holds the degraded pixels exactly: JPEG quality read back
    assert "dejpeg: 70" in outputs["2"]["text"][0]
