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
