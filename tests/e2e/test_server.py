"""The pack in a real ComfyUI server: start-up, /object_info, executing the shipped degradation
workflow over HTTP, and a bad prompt that fails cleanly while the server keeps serving."""

from __future__ import annotations

import json
import re

from spire_test_support.workflows import API_DIR


def test_pack_imports_without_failure(server):
    log = server.log()
    assert not re.search(r"Cannot import .*spire_restoration", log), log
    assert "IMPORT FAILED" not in "\n".join(line for line in log.splitlines() if "spire" in line.lower())
    assert server.process.poll() is None


def test_object_info_describes_the_degrade_node(server):
    info = server.get("/object_info/SPIRE_DegradeImage")["SPIRE_DegradeImage"]
    assert info["category"] == "SPIRE/degradation"
    assert info["display_name"] == "Degrade Image (SPIRE)"
    assert "restoration prompt" in info["description"]
    required = info["input"]["required"]
    assert list(required) == ["image", "seed", "preset", "blur_sigma", "downscale", "noise_sigma", "jpeg_quality"]
    assert required["seed"][1]["control_after_generate"] is True
    assert "paper" in required["preset"][1]["options"] or "paper" in required["preset"][0]
    assert info["output"] == ["IMAGE", "STRING", "STRING"]
    assert info["output_name"] == ["degraded", "restoration_prompt", "params_json"]
    assert all(spec[1].get("tooltip") for spec in required.values())


def test_degradation_workflow_runs_through_the_server(server):
    prompt = json.loads((API_DIR / "spire_degradation_preview.json").read_text())
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = entry["outputs"]
    image = outputs["3"]["images"][0]
    png = server.get(f"/view?filename={image['filename']}&type={image['type']}&subfolder={image['subfolder']}")
    assert isinstance(png, bytes) and png[:8] == b"\x89PNG\r\n\x1a\n"
    text = outputs["4"]["text"][0]
    assert re.fullmatch(
        r"(Upsample by \d+\.\dx; )?(Deblur with sigma \d+\.\d; )?Denoise with sigma \d\.\d\d; "
        r"Dejpeg with quality \d+",
        text,
    ), text
    params = json.loads(outputs["5"]["text"][0])
    assert len(params) == 1 and len(params[0]["stages"]) == 2


def test_bad_prompt_fails_cleanly_and_the_server_keeps_serving(server):
    prompt = {
        "1": {"class_type": "SPIRE_ParseRestorationPrompt", "inputs": {"restoration_prompt": "Sharpen with sigma 2"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "error"
    errors = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and 'unknown clause "Sharpen with sigma 2"' in errors[0][1]["exception_message"]
    assert server.get("/system_stats")["system"]["comfyui_version"]
    assert server.process.poll() is None


def restore_prompt(adaptor: str, steps: int = 3, image: str = "spire_e2e.png") -> dict:
    return {
        "1": {"class_type": "SPIRETest_TinyCheckpointLoader", "inputs": {"ckpt_name": "tiny_sd1"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "SPIRE_AdaptorLoader", "inputs": {"adaptor_name": adaptor}},
        "4": {
            "class_type": "SPIRE_Restore",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "vae": ["1", 2],
                "control_net": ["3", 0],
                "image": ["2", 0],
                "semantic_prompt": "a cat",
                "restoration_prompt": "Remove all degradation",
                "steps": steps,
                "sampler_name": "euler",
                "scheduler": "normal",
                "semantic_scale": 4.0,
                "restoration_scale": 1.0,
                "seed": 0,
                "strength": 1.0,
                "color_fix": "none",
                "tile_size": 0,
                "tile_overlap": 64,
            },
        },
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "e2e"}},
    }


def write_models(server) -> None:
    """A fresh tiny SD1 adaptor and a few wrong files in the server's models/spire, a small photo in input/."""
    import torch
    from diffusers import UNet2DConditionModel
    from PIL import Image
    from safetensors.torch import save_file

    from spire_core.models import SpireAdaptor, save_adaptor, tiny_unet_config

    folder = server.base / "models" / "spire"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_adaptor(
        SpireAdaptor.from_unet(UNet2DConditionModel(**tiny_unet_config("sd1"))), folder / "e2e_other.safetensors"
    )
    (folder / "e2e_pickle.ckpt").write_bytes(b"\x80\x04\x95" + b"\x00" * 32)
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 32, 3, 3)}, str(folder / "e2e_ckpt.safetensors"))
    Image.new("RGB", (48, 40), (120, 90, 60)).save(server.base / "input" / "spire_e2e.png")


def test_wrong_adaptor_files_fail_with_what_they_are_and_the_server_keeps_serving(server):
    write_models(server)
    cases = {
        "e2e_pickle.ckpt": "pickle",
        "e2e_ckpt.safetensors": "base Stable Diffusion checkpoint",
        "e2e_other.safetensors": "does not fit",  # an adaptor made for another UNet shape
    }
    for name, what in cases.items():
        entry = server.run(restore_prompt(name))
        assert entry["status"]["status_str"] == "error", name
        errors = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
        assert errors and what in errors[0][1]["exception_message"], (name, errors)
        assert server.process.poll() is None
    assert server.get("/system_stats")["system"]["comfyui_version"]


def fitting_adaptor(server) -> str:
    """A fresh adaptor with the structure of the server's tiny SD1 model (both levels with attention)."""
    import torch
    from diffusers import UNet2DConditionModel

    from spire_core.models import SpireAdaptor, save_adaptor, tiny_unet_config

    config = {
        **tiny_unet_config("sd1"),
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }
    torch.manual_seed(0)
    save_adaptor(
        SpireAdaptor.from_unet(UNet2DConditionModel(**config)), server.base / "models" / "spire" / "e2e_fit.safetensors"
    )
    return "e2e_fit.safetensors"


def test_interrupt_stops_a_restoration_and_the_next_one_runs(server):
    import time
    import urllib.request

    write_models(server)
    name = fitting_adaptor(server)
    status, body = server.post("/prompt", {"prompt": restore_prompt(name, steps=1000), "client_id": "x"})
    assert status == 200
    prompt_id = body["prompt_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it is sampling
        if any(item[1] == prompt_id for item in server.get("/queue")["queue_running"]):
            break
        time.sleep(0.2)
    time.sleep(2.0)
    request = urllib.request.Request(server.url + "/interrupt", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    deadline = time.monotonic() + 120
    entry = None
    while time.monotonic() < deadline:
        history = server.get(f"/history/{prompt_id}")
        entry = history.get(prompt_id) if isinstance(history, dict) else None
        if entry and entry.get("status", {}).get("completed") is not None:
            break
        time.sleep(0.25)
    assert entry is not None, "the interrupted prompt never finished"
    events = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in events, events
    assert "5" not in entry.get("outputs", {})  # nothing was saved
    done = server.run(restore_prompt(name, steps=2))
    assert done["status"]["status_str"] == "success", done["status"]
    assert done["outputs"]["5"]["images"]


def test_templates_are_served_from_example_workflows(server):
    """ComfyUI lists a custom node pack's templates from its example_workflows/ folder (the documented name):
    every shipped workflow, by name, under the pack's folder name."""
    from spire_test_support.workflows import WORKFLOW_DIR

    templates = server.get("/workflow_templates")
    ours = next(names for pack, names in templates.items() if pack.endswith("spire_restoration"))
    expected = sorted(path.stem for path in WORKFLOW_DIR.glob("*.json"))
    assert WORKFLOW_DIR.name == "example_workflows" and len(expected) == 11
    assert sorted(ours) == expected


def test_a_suggested_prompt_through_the_server_reads_the_noise_it_was_given(server):
    """Load Image -> Degrade Image (noise sigma 0.08 only) -> Suggest Restoration Prompt -> preview, over HTTP:
    the suggestion names the noise (within 15 %) and nothing else."""
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {
            "class_type": "SPIRE_DegradeImage",
            "inputs": {
                "image": ["1", 0],
                "seed": 3,
                "preset": "manual",
                "blur_sigma": 0.0,
                "downscale": 1.0,
                "noise_sigma": 0.08,
                "jpeg_quality": 0,
            },
        },
        "3": {
            "class_type": "SPIRE_SuggestRestorationPrompt",
            "inputs": {
                "image": ["2", 0],
                "noise_scale": 1.0,
                "blur_scale": 1.0,
                "when_clean": "Remove all degradation",
            },
        },
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
    }
    entry = server.run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["outputs"]["5"]["text"][0] == "Denoise with sigma 0.08"  # what was applied
    suggested = entry["outputs"]["4"]["text"][0]
    match = re.fullmatch(r"Denoise with sigma (\d\.\d\d)", suggested)
    assert match and abs(float(match.group(1)) - 0.08) <= 0.15 * 0.08, suggested
