"""Colour-fix and metrics nodes inside the real ComfyUI (library mode), checked against the library with numbers.

The node classes are taken from the pack module ComfyUI loaded (``<pack>.nodes.quality``). Most tests call
their ``execute`` directly; the graph tests register them for the duration of this module only where
ComfyUI has not registered them already, and remove exactly what they added.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from spire_core.eval.metrics import LPIPS_CHANNELS, LPIPS_FILENAME, load_lpips, psnr_per_image, ssim
from spire_core.restoration.color import adain_color_fix, wavelet_color_fix

PACK_NODES = Path(__file__).resolve().parents[2] / "nodes"
NODE_IDS = ("SPIRE_ColorFix", "SPIRE_ImageMetrics", "SPIRE_SaveMetrics")
NO_WEIGHTS = "n/a (no weights: put lpips_alex.safetensors in ComfyUI/models/spire)"


@pytest.fixture(scope="module")
def quality(comfy):
    """The pack's ``nodes.quality`` module as ComfyUI loaded it (imported through the loaded pack if needed)."""
    loaded = [m for name, m in sys.modules.items() if name.endswith("nodes.quality")]
    if loaded:
        return loaded[0]
    packages = [
        name
        for name, m in sys.modules.items()
        if name.endswith(".nodes") and Path(getattr(m, "__file__", "") or "").resolve() == PACK_NODES / "__init__.py"
    ]
    assert packages, "the pack's nodes package is not loaded"
    return importlib.import_module(packages[0] + ".quality")


@pytest.fixture(scope="module")
def nodes_by_id(quality):
    return {cls.GET_SCHEMA().node_id: cls for cls in quality.NODES}


@pytest.fixture(scope="module")
def registered(comfy, nodes_by_id):
    """The quality nodes in ComfyUI's registry for graph tests; only what was missing is added, then removed."""
    mappings, names = comfy.nodes.NODE_CLASS_MAPPINGS, comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS
    added = [node_id for node_id in NODE_IDS if node_id not in mappings]
    for node_id in added:
        mappings[node_id] = nodes_by_id[node_id]
        names[node_id] = nodes_by_id[node_id].GET_SCHEMA().display_name
    yield
    for node_id in added:
        mappings.pop(node_id, None)
        names.pop(node_id, None)


def to_image(bchw: torch.Tensor) -> torch.Tensor:
    return bchw.movedim(1, -1).contiguous()


def to_bchw(image: torch.Tensor) -> torch.Tensor:
    return image.movedim(-1, 1)


def noisy(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def photos():
    import skimage.data

    def load(name):
        return torch.from_numpy(getattr(skimage.data, name)()[:128, :160]).permute(2, 0, 1).float().div(255)[None]

    return load("coffee"), load("chelsea")


@pytest.fixture(scope="module")
def lpips_weights(comfy):
    """Random LPIPS weights in ComfyUI's ``models/spire`` folder, in the documented layout."""
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for index, cin, cout, k in ((0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3), (8, 384, 256, 3), (10, 256, 256, 3)):
        tensors[f"features.{index}.weight"] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2 / (cin * k * k))
        tensors[f"features.{index}.bias"] = torch.zeros(cout)
    for i, ch in enumerate(LPIPS_CHANNELS):
        tensors[f"lin.{i}.weight"] = torch.rand(1, ch, 1, 1, generator=g) / ch
    path = comfy.models_dir("spire") / LPIPS_FILENAME
    save_file(tensors, str(path))
    yield path
    path.unlink()


def test_schemas_follow_the_pack_conventions(nodes_by_id):
    assert set(nodes_by_id) == set(NODE_IDS)
    for node_id, cls in nodes_by_id.items():
        schema = cls.GET_SCHEMA()
        assert schema.description and len(schema.description) > 40, node_id
        assert schema.category == "SPIRE/quality" and schema.display_name.endswith("(SPIRE)"), node_id
        assert list(inspect.signature(cls.execute).parameters) == [i.id for i in schema.inputs], node_id
        for inp in schema.inputs:
            assert inp.tooltip, f"{node_id}.{inp.id} has no tooltip"
            if inp.get_io_type() in ("INT", "FLOAT"):
                assert inp.min is not None and inp.max is not None and inp.min <= inp.default <= inp.max
    assert nodes_by_id["SPIRE_SaveMetrics"].GET_SCHEMA().is_output_node


@pytest.mark.parametrize("method, fix", [("wavelet", wavelet_color_fix), ("adain", adain_color_fix)])
def test_color_fix_equals_the_library(nodes_by_id, photos, method, fix):
    node = nodes_by_id["SPIRE_ColorFix"]
    coffee, chelsea = photos
    images = torch.cat([coffee, noisy(coffee, 0.1, 0)])
    reference = chelsea[..., ::2, ::2]  # another size: resized by the library
    expected = fix(images, reference)
    out = node.execute(to_image(images), to_image(reference), method, 1.0).args[0]
    assert out.shape == (2, 128, 160, 3) and out.dtype == torch.float32
    assert torch.equal(to_bchw(out), expected)
    half = to_bchw(node.execute(to_image(images), to_image(reference), method, 0.5).args[0])
    assert torch.allclose(half, (images + expected) / 2, atol=1e-6)
    assert torch.equal(to_bchw(node.execute(to_image(images), to_image(reference), method, 0.0).args[0]), images)


def test_color_fix_keeps_alpha_and_reports_batch_mismatch(nodes_by_id, photos):
    node = nodes_by_id["SPIRE_ColorFix"]
    coffee, chelsea = photos
    rgba = torch.cat([coffee, torch.full_like(coffee[:, :1], 0.25)], dim=1)
    out = to_bchw(node.execute(to_image(rgba), to_image(chelsea), "adain", 1.0).args[0])
    assert out.shape == (1, 4, 128, 160) and torch.equal(out[:, 3], rgba[:, 3])
    assert torch.equal(out[:, :3], adain_color_fix(coffee, chelsea))
    with pytest.raises(ValueError, match="image batch has 3 images but reference batch has 2"):
        node.execute(to_image(coffee.repeat(3, 1, 1, 1)), to_image(chelsea.repeat(2, 1, 1, 1)), "wavelet", 1.0)
    with pytest.raises(ValueError, match="empty"):
        node.execute(to_image(coffee[:0]), to_image(chelsea), "wavelet", 1.0)


def test_image_metrics_without_lpips_weights(nodes_by_id, photos):
    node = nodes_by_id["SPIRE_ImageMetrics"]
    coffee, _ = photos
    images = torch.cat([noisy(coffee, s, 3) for s in (0.02, 0.1)])
    result = node.execute(to_image(images), to_image(coffee), "none")
    mean_psnr, mean_ssim, mean_lpips, table, metrics_json = result.args
    refs = coffee.expand(2, -1, -1, -1)
    assert mean_psnr == pytest.approx(psnr_per_image(images, refs).mean().item(), abs=1e-9)
    assert mean_ssim == pytest.approx(ssim(images, refs).mean().item(), abs=1e-9)
    assert math.isnan(mean_lpips)
    report = json.loads(metrics_json)
    assert [r["psnr"] for r in report["images"]] == psnr_per_image(images, refs).tolist()
    assert [r["ssim"] for r in report["images"]] == ssim(images, refs).tolist()
    assert report["lpips_weights"] is None and report["mean"]["lpips"] is None
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].split()[:4] == ["image", "PSNR", "(dB)", "SSIM"]
    assert lines[-1].startswith("mean") and lines[-1].endswith(NO_WEIGHTS)
    assert f"{psnr_per_image(images, refs)[0].item():.2f}" in lines[1]
    assert result.ui.as_dict() == {"text": (table,)}


def test_image_metrics_with_lpips_weights(nodes_by_id, photos, lpips_weights):
    node = nodes_by_id["SPIRE_ImageMetrics"]
    options = next(i for i in node.GET_SCHEMA().inputs if i.id == "lpips_weights").options
    assert options[0] == "none" and LPIPS_FILENAME in options
    coffee, _ = photos
    images = torch.cat([noisy(coffee, s, 4) for s in (0.02, 0.1)] + [coffee])
    _, _, mean_lpips, table, metrics_json = node.execute(to_image(images), to_image(coffee), LPIPS_FILENAME).args
    expected = load_lpips(lpips_weights)(images, coffee.expand(3, -1, -1, -1))
    report = json.loads(metrics_json)
    assert [r["lpips"] for r in report["images"]] == expected.tolist()
    assert expected[2].item() == 0.0 and 0 < expected[0] < expected[1]
    assert mean_lpips == pytest.approx(expected.mean().item(), abs=1e-12)
    assert report["lpips_weights"] == LPIPS_FILENAME and "n/a" not in table
    assert report["images"][2]["psnr"] == "inf"


def test_image_metrics_errors(nodes_by_id, photos):
    node = nodes_by_id["SPIRE_ImageMetrics"]
    coffee, chelsea = photos
    with pytest.raises(ValueError, match=r"image is 160x128 \(WxH\) but reference is 80x64"):
        node.execute(to_image(coffee), to_image(chelsea[..., ::2, ::2]), "none")
    with pytest.raises(ValueError, match="empty"):
        node.execute(to_image(coffee[:0]), to_image(chelsea), "none")
    with pytest.raises(ValueError, match="empty"):
        node.execute(to_image(coffee), to_image(chelsea[:0]), "none")
    with pytest.raises(ValueError, match="not in ComfyUI/models/spire"):
        node.execute(to_image(coffee), to_image(chelsea), "nothing_here.safetensors")


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_save_metrics_writes_numbered_csv_and_json(comfy, nodes_by_id, photos):
    metrics, save = nodes_by_id["SPIRE_ImageMetrics"], nodes_by_id["SPIRE_SaveMetrics"]
    coffee, chelsea = photos
    images = torch.cat([noisy(coffee, 0.05, 5), chelsea])
    metrics_json = metrics.execute(to_image(images), to_image(coffee), "none").args[4]
    report = json.loads(metrics_json)
    first = save.execute(metrics_json, "spire_tests/metrics")
    second = save.execute(metrics_json, "spire_tests/metrics")
    folder = comfy.output_dir / "spire_tests"
    for counter, result in ((1, first), (2, second)):
        stem = folder / f"metrics_{counter:05}_"
        rows = read_csv(stem.with_suffix(".csv"))
        assert rows[0] == ["image", "psnr", "ssim", "lpips"] and [r[0] for r in rows[1:]] == ["0", "1", "mean"]
        for row, entry in zip(rows[1:], [*report["images"], report["mean"]]):
            assert [float(row[1]), float(row[2])] == [entry["psnr"], entry["ssim"]] and row[3] == ""
        assert json.loads(stem.with_suffix(".json").read_text()) == report
        text = result.ui.as_dict()["text"][0]
        assert f"spire_tests/metrics_{counter:05}_.csv" in text and NO_WEIGHTS in text
        assert result.args == ()
    with pytest.raises(ValueError, match="metrics_json output of Image Metrics"):
        save.execute("not json", "spire_tests/metrics")
    with pytest.raises(ValueError, match="metrics_json output of Image Metrics"):
        save.execute(json.dumps({"images": []}), "spire_tests/metrics")
    # a hand-edited report: named, and no file at all (it once left a 0-byte CSV and a bare KeyError 'mean')
    for edit, message in (
        (lambda r: r.pop("mean"), "mean must be an object"),
        (lambda r: r["images"][0].update(psnr="great"), r"images\[0\].psnr is 'great'"),
    ):
        broken = json.loads(metrics_json)
        edit(broken)
        with pytest.raises(ValueError, match=message):
            save.execute(json.dumps(broken), "spire_tests/edited")
        with pytest.raises(ValueError, match="psnr is nan"):
            save.execute(metrics_json.replace(str(report["images"][0]["psnr"]), "NaN", 1), "spire_tests/edited")
    assert sorted(p.name for p in folder.iterdir()) == [
        f"metrics_0000{i}_.{e}" for i in (1, 2) for e in ("csv", "json")
    ]


def test_quality_graph_in_comfyui(comfy, registered, photos):
    """LoadImage -> Color Fix -> Image Metrics -> Save Metrics, executed by ComfyUI's own executor."""
    coffee, chelsea = photos
    for name, t in (("spire_q_coffee.png", coffee), ("spire_q_chelsea.png", chelsea)):
        path = comfy.input_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((t[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "spire_q_coffee.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "spire_q_chelsea.png"}},
        "3": {
            "class_type": "SPIRE_ColorFix",
            "inputs": {"image": ["1", 0], "reference": ["2", 0], "method": "wavelet", "strength": 1.0},
        },
        "4": {"class_type": "SPIRE_ImageMetrics", "inputs": {"image": ["3", 0], "reference": ["1", 0]}},
        "5": {"class_type": "SPIRE_SaveMetrics", "inputs": {"metrics_json": ["4", 4], "filename_prefix": "graph"}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
    }
    outputs = comfy.run(prompt)
    fixed = wavelet_color_fix(coffee, chelsea)
    want = psnr_per_image(fixed, coffee).item()
    assert float(outputs["6"]["text"][0]) == pytest.approx(want, abs=1e-9)
    assert NO_WEIGHTS in outputs["4"]["text"][0] and "graph_00001_.csv" in outputs["5"]["text"][0]
    rows = read_csv(comfy.output_dir / "graph_00001_.csv")
    assert float(rows[1][1]) == pytest.approx(want, abs=1e-9)
    prompt["4"]["inputs"]["reference"] = ["2", 0]  # 160x128 vs a reference of another size is fine here ...
    prompt["2"]["inputs"]["image"] = "spire_q_small.png"
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(comfy.input_dir / "spire_q_small.png")
    message = comfy.run_error(prompt)  # ... but not for metrics
    assert "image is 160x128 (WxH) but reference is 80x64" in message
