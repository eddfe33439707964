"""Every shipped workflow: parses, uses only registered core + SPIRE nodes, has widget counts that
match the schemas, equals its API twin, and the twin executes in the real ComfyUI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from spire_test_support.workflows import api_twin, expected_widget_count, load, shipped_workflows, ui_to_api

WORKFLOWS = shipped_workflows()


def test_workflows_are_shipped_with_thumbnails():
    names = {p.stem for p in WORKFLOWS}
    assert "spire_degradation_preview" in names
    for path in WORKFLOWS:
        thumb = path.with_suffix(".jpg")
        assert thumb.is_file(), f"{path.name} has no thumbnail {thumb.name}"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and min(im.size) >= 128


def specs_for(comfy, workflow):
    return {n["type"]: comfy.nodes.NODE_CLASS_MAPPINGS[n["type"]].INPUT_TYPES() for n in workflow["nodes"]}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_nodes_widgets_and_api_twin(comfy, path):
    workflow = load(path)
    assert workflow["version"] == 0.4 and workflow["nodes"] and "links" in workflow
    missing = {n["type"] for n in workflow["nodes"]} - set(comfy.nodes.NODE_CLASS_MAPPINGS)
    assert not missing, f"{path.name} uses unregistered node types {missing}"
    custom = {n["type"] for n in workflow["nodes"]} - comfy.core_node_ids
    assert all(t.startswith("SPIRE_") for t in custom), f"{path.name} needs third-party nodes {custom}"
    specs = specs_for(comfy, workflow)
    for node in workflow["nodes"]:
        assert len(node.get("widgets_values", [])) == expected_widget_count(specs[node["type"]]), (
            f"{path.name}: node {node['id']} ({node['type']}) has a stale widget count"
        )
    assert ui_to_api(workflow, specs) == json.loads(api_twin(path).read_text())


@pytest.fixture(scope="module")
def example_png(comfy):
    """ComfyUI's own input/example.png in the test input folder (the workflows reference it)."""
    target = comfy.input_dir / "example.png"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(comfy.root / "input" / "example.png", target)
    return target


def test_degradation_preview_twin_executes(comfy, example_png):
    import torch

    from spire_core.degradation import PRESETS, degrade, sample_params

    prompt = json.loads(api_twin(shipped_workflows()[0].with_name("spire_degradation_preview.json")).read_text())
    outputs = comfy.run(prompt)
    images = outputs["3"]["images"]
    assert len(images) == 1
    saved = Image.open(comfy.folder_paths.get_temp_directory() + "/" + images[0]["filename"])
    text = outputs["4"]["text"][0]
    # the same draw through the library gives the same prompt and (to 8 bits) the same image
    with Image.open(example_png) as im:
        clean = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float().div(255).unsqueeze(0)
    params = sample_params(PRESETS["paper"], torch.Generator().manual_seed(0), 1)
    expected = degrade(clean, params)
    assert text == expected.prompts()[0] and text.startswith(("Upsample", "Deblur", "Denoise", "Dejpeg"))
    ours = np.asarray(saved.convert("RGB")).astype(int)
    ref = np.clip(np.round(expected.images[0].permute(1, 2, 0).numpy() * 255), 0, 255).astype(int)
    assert np.abs(ours - ref).max() <= 1
    params_json = json.loads(outputs["5"]["text"][0])
    assert params_json == [params[0].to_dict()]
