"""Every shipped workflow: parses, uses only registered core + SPIRE nodes, has widget counts that
match the schemas, equals its API twin, and the twin executes in the real ComfyUI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from spire_test_support.adaptors import randomize_heads
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


SMALL_PHOTO = "spire_wf_small.png"
"""A 96x72 photo the restore twins load instead of ComfyUI's 768x768 example (tiny models attend over every
latent cell; at 768x768 one step would take minutes on a CPU)."""


def tiny_twin(name: str) -> dict:
    """A shipped workflow's API twin with the tiny test checkpoint loader in place of the real one and a
    small photo in place of the example image."""
    prompt = json.loads(api_twin(shipped_workflows()[0].with_name(f"{name}.json")).read_text())
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["class_type"] = "SPIRETest_TinyCheckpointLoader"
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = SMALL_PHOTO
    return prompt


@pytest.fixture(scope="module")
def small_photo(comfy):
    import skimage.data

    Image.fromarray(skimage.data.chelsea()).resize((96, 72), Image.Resampling.BICUBIC).save(
        comfy.input_dir / SMALL_PHOTO
    )
    return comfy.input_dir / SMALL_PHOTO


@pytest.fixture(scope="module")
def tiny_adaptor(comfy, tmp_path_factory):
    """Write the adaptor a restore workflow names, made from the tiny checkpoint of a family (SD1 unless told);
    fresh or trained-like."""
    from spire_test_support import tiny_comfy

    from spire_core.models import SpireAdaptor, load_base_unet, save_adaptor

    folder = tmp_path_factory.mktemp("wf")
    bases = {}

    def write(name: str, random: bool, family: str = "sd1") -> None:
        if family not in bases:
            bases[family] = load_base_unet(tiny_comfy.save_checkpoint(folder / f"tiny_{family}.safetensors", family))
        unet, info = bases[family]
        adaptor = SpireAdaptor.from_unet(unet, base_family=family, prediction_type=info.prediction_type)
        if random:
            randomize_heads(adaptor, seed=0, scale=0.1, attention_gain=10.0)
        save_adaptor(adaptor, comfy.models_dir("spire") / name)

    return write


def saved_image(comfy, outputs, node: str) -> np.ndarray:
    images = outputs[node]["images"]
    assert len(images) == 1
    info = images[0]
    path = comfy.output_dir / info.get("subfolder", "") / info["filename"]
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_restore_twin_executes_with_tiny_models(comfy, small_photo, tiny_adaptor):
    prompt = tiny_twin("spire_restore")
    adaptor_name = prompt["5"]["inputs"]["adaptor_name"]
    tiny_adaptor(adaptor_name, random=False)
    fresh = saved_image(comfy, comfy.run(prompt), "10")
    assert fresh.shape == (72, 96, 3)
    # the same graph without the adaptor: a fresh adaptor changes nothing
    base_prompt = tiny_twin("spire_restore")
    base_prompt["8"]["inputs"]["positive"] = ["3", 0]
    base_prompt["8"]["inputs"]["negative"] = ["4", 0]
    for key in ("5", "6"):
        del base_prompt[key]
    base = saved_image(comfy, comfy.run(base_prompt), "10")
    assert np.array_equal(fresh, base)
    tiny_adaptor("trained_" + adaptor_name, random=True)  # a new name: ComfyUI caches loader outputs by name
    prompt["5"]["inputs"]["adaptor_name"] = "trained_" + adaptor_name
    trained = saved_image(comfy, comfy.run(prompt), "10")
    # a non-zero adaptor changes the restoration (tiny random models: by a few 8-bit levels on many pixels)
    changed = np.abs(trained - base)
    assert changed.mean() > 0.05 and (changed > 0).mean() > 0.05


RESTORE_TWINS = {
    "spire_blind_restore": ("7", (72, 96)),
    "spire_semantic_restore": ("15", (72, 96)),
    "spire_strength_sweep": ("22", (72, 3 * 96 + 2 * 8)),
    "spire_degrade_restore_metrics": ("10", (72, 96)),
    "spire_restore_to_generation": ("13", (104, 144)),  # 1.5x is 108 high; core VAEEncode crops to 8s
    "spire_large_photo_tiled": ("7", (72, 96)),
    "spire_sdxl_blind_restore": ("7", (72, 96)),
    "spire_sdxl_large_photo_tiled": ("7", (72, 96)),
}
"""Restore workflows: the SaveImage node and the (height, width) it must write for the 96x72 test photo."""


def family(prompt: dict) -> str:
    """The tiny family that stands for the checkpoint a twin names (an SDXL checkpoint: the tiny SDXL models)."""
    from spire_test_support import tiny_comfy

    (name,) = {n["inputs"]["ckpt_name"] for n in prompt.values() if "ckpt_name" in n["inputs"]}
    return tiny_comfy.family_of(name)


def quick(prompt: dict) -> dict:
    """Fewer steps (4), for tiled nodes 32-pixel tiles so the small test photo is really tiled, and the
    trained-like adaptor of the checkpoint's family."""
    adaptor = f"wf_random_{family(prompt)}.safetensors"
    for node in prompt.values():
        inputs = node["inputs"]
        if "steps" in inputs and not isinstance(inputs["steps"], list):
            inputs["steps"] = 4
        if node["class_type"] == "SPIRE_Restore" and inputs.get("tile_size"):
            inputs["tile_size"], inputs["tile_overlap"] = 32, 8
        if node["class_type"] == "SPIRE_AdaptorLoader":
            inputs["adaptor_name"] = adaptor
    return prompt


@pytest.mark.parametrize("name", sorted(RESTORE_TWINS))
def test_restore_workflow_twins_execute(comfy, small_photo, tiny_adaptor, name):
    prompt = quick(tiny_twin(name))
    if "sdxl" in name:  # the tiny SDXL models with an SDXL adaptor (an adaptor of another family is refused)
        assert family(prompt) == "sdxl"
    tiny_adaptor(f"wf_random_{family(prompt)}.safetensors", random=True, family=family(prompt))
    node, (height, width) = RESTORE_TWINS[name]
    outputs = comfy.run(prompt)
    image = saved_image(comfy, outputs, node)
    assert image.shape == (height, width, 3)
    assert 5 < image.mean() < 250 and image.std() > 1  # a real picture, not a constant
    if name == "spire_strength_sweep":  # three panels, three different restorations (tiny CLIP: small changes)
        panels = [image[:, i * 104 : i * 104 + 96] for i in range(3)]
        assert all(np.abs(panels[i] - panels[j]).max() >= 1 for i, j in ((0, 1), (1, 2), (0, 2)))
        assert (image[:, 96:104] == 255).all()  # the white spacing between panels
    if name == "spire_degrade_restore_metrics":
        saved = sorted((comfy.output_dir / "spire").glob("restored_metrics_*.json"))
        report = json.loads(saved[-1].read_text())
        rows = sorted((comfy.output_dir / "spire").glob("restored_metrics_*.csv"))[-1].read_text().strip().splitlines()
        assert len(rows) == 3  # header, one image, the mean
        assert 3.0 < float(report["mean"]["psnr"]) < 60.0 and -1.0 <= float(report["mean"]["ssim"]) <= 1.0
