"""Every shipped workflow loaded in ComfyUI's real frontend, in Debian's headless chromium driven by
Playwright (system browser, nothing downloaded): no missing-node or missing-model dialog, every node type
known to the frontend, SPIRE nodes showing their widgets with the workflow's values. Screenshots are kept
in ``test-artifacts/screenshots`` (the README's pictures come from there)."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from spire_test_support.workflows import WIDGET_TYPES, load, shipped_workflows

from spire_core.models import LDM_UNET_PREFIX, SpireAdaptor, diffusers_to_ldm_unet, save_adaptor, tiny_unet_config
from tools.build_workflows import ADAPTOR, CHECKPOINT, SDXL_ADAPTOR, SDXL_CHECKPOINT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def frontend(server):
    """The server with the models the workflows name, and a chromium page on its frontend."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in requirements-dev.txt")
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (.ci/run installs it: apt-get install chromium)"
    checkpoints = server.base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for family, checkpoint, adaptor, width in (
        ("sd1", CHECKPOINT, ADAPTOR, 32),
        ("sdxl", SDXL_CHECKPOINT, SDXL_ADAPTOR, 64),
    ):
        torch.manual_seed(0)
        config = tiny_unet_config(family, cross_attention_dim=width)
        unet = UNet2DConditionModel(**config)
        converted = diffusers_to_ldm_unet(unet.state_dict(), config)
        save_file({LDM_UNET_PREFIX + k: v.contiguous() for k, v in converted.items()}, str(checkpoints / checkpoint))
        save_adaptor(SpireAdaptor.from_unet(unet), server.base / "models" / "spire" / adaptor)
    settings = {
        "Comfy.TutorialCompleted": True,
        "Comfy.Workflow.ShowMissingNodesWarning": True,
        "Comfy.Workflow.ShowMissingModelsWarning": True,
    }
    request = urllib.request.Request(
        server.url + "/settings", data=json.dumps(settings).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        messages: list[str] = []
        page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        page.goto(server.url, wait_until="domcontentloaded")
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        yield page, messages
        browser.close()


def notices(page) -> list[str]:  # noqa: ANN001 - a playwright Page
    """Visible texts of the frontend's dialogs, plus the page's text lines that say something is missing (older
    frontends report missing nodes in a dialog, newer ones in a toast: "Missing node: TYPE")."""
    dialogs = page.evaluate(
        "() => [...document.querySelectorAll('.p-dialog, [role=dialog], .p-toast-message')]"
        ".filter(d => d.offsetParent !== null).map(d => d.innerText)"
    )
    lines = page.evaluate("() => document.body.innerText").splitlines()
    return [*dialogs, *(line for line in lines if "missing" in line.lower())]


def widget_names(spec: dict) -> list[str]:
    names = []
    for section in ("required", "optional"):
        for name, value in (spec["input"].get(section) or {}).items():
            kind, opts = value[0], value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            if (isinstance(kind, list) or kind in WIDGET_TYPES or kind == "COMBO") and not opts.get("forceInput"):
                names.append(name)
    return names


@pytest.mark.parametrize("path", shipped_workflows(), ids=lambda p: p.stem)
def test_workflow_loads_in_the_real_frontend(server, frontend, path):
    page, _ = frontend
    workflow = load(path)
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(1500)
    dialogs = notices(page)
    page.screenshot(path=str(ARTIFACTS / f"{path.stem}.png"))
    assert not [d for d in dialogs if "missing" in d.lower()], dialogs
    graph = page.evaluate(
        "() => window.app.graph._nodes.map(n => ({id: n.id, type: n.type,"
        " known: !!window.LiteGraph.registered_node_types[n.type],"
        " widgets: (n.widgets || []).map(w => [w.name, typeof w.value === 'object' ? null : w.value])}))"
    )
    assert len(graph) == len(workflow["nodes"])
    assert all(node["known"] for node in graph), [n["type"] for n in graph if not n["known"]]
    by_id = {str(n["id"]): n for n in workflow["nodes"]}  # newer frontends report node ids as strings
    for node in graph:
        if not node["type"].startswith("SPIRE_"):
            continue
        spec = server.get(f"/object_info/{node['type']}")[node["type"]]
        shown = dict(node["widgets"])
        expected = widget_names(spec)
        assert expected and all(name in shown for name in expected), (node["type"], expected, list(shown))
        values = by_id[str(node["id"])]["widgets_values"]
        first = expected[0]
        assert shown[first] == values[0], (node["type"], first, shown[first], values[0])
    check_layout(page, path.stem)


def check_layout(page, name: str) -> None:  # noqa: ANN001 - a playwright Page
    """With the sizes the real frontend gives the nodes (title bars included): no node covers another, and
    the view the workflow opens with shows every node whole on the page's canvas."""
    view = page.evaluate(
        "() => ({scale: window.app.canvas.ds.scale, offset: [...window.app.canvas.ds.offset],"
        " canvas: [window.app.canvas.canvas.clientWidth, window.app.canvas.canvas.clientHeight],"
        " boxes: window.app.graph._nodes.map(n => [String(n.id), ...n.getBounding()])})"
    )
    boxes = {key: (x, y, x + w, y + h) for key, x, y, w, h in view["boxes"]}
    overlaps = [
        (a, b)
        for a in boxes
        for b in boxes
        if a < b
        and min(boxes[a][2], boxes[b][2]) > max(boxes[a][0], boxes[b][0])
        and min(boxes[a][3], boxes[b][3]) > max(boxes[a][1], boxes[b][1])
    ]
    assert overlaps == [], (name, overlaps, boxes)
    scale, (dx, dy), (width, height) = view["scale"], view["offset"], view["canvas"]
    outside = {
        key: [round((v + d) * scale) for v, d in zip(box, (dx, dy, dx, dy))]
        for key, box in boxes.items()
        if not (0 <= (box[0] + dx) * scale and (box[2] + dx) * scale <= width)
        or not (0 <= (box[1] + dy) * scale and (box[3] + dy) * scale <= height)
    }
    assert outside == {}, (name, (width, height), outside)


def test_a_missing_node_type_is_noticed(frontend):
    """The check above can fail: a workflow with an unknown node type raises the frontend's dialog."""
    page, _ = frontend
    workflow = load(shipped_workflows()[0])
    workflow["nodes"][1]["type"] = "SPIRE_NoSuchNode"
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(1500)
    dialogs = notices(page)
    assert any("SPIRE_NoSuchNode" in d for d in dialogs), dialogs
    page.keyboard.press("Escape")
    page.evaluate("() => document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click())")


def test_the_layout_check_can_fail(frontend):
    """Load Adaptor moved onto Load Checkpoint's widget, then a node moved off screen: each is found."""
    page, _ = frontend
    workflow = load(shipped_workflows()[0].with_name("spire_blind_restore.json"))
    nodes = {node["type"]: node for node in workflow["nodes"]}
    nodes["SPIRE_AdaptorLoader"]["pos"] = [
        nodes["CheckpointLoaderSimple"]["pos"][0],
        nodes["CheckpointLoaderSimple"]["pos"][1] + 60,
    ]
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(1000)
    with pytest.raises(AssertionError, match=r"'overlapping', \[\('2', '5'\)\]"):
        check_layout(page, "overlapping")
    workflow = load(shipped_workflows()[0].with_name("spire_blind_restore.json"))
    workflow["nodes"][-1]["pos"] = [5000, 80]
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(1000)
    with pytest.raises(AssertionError, match=r"'off_screen', \(\d+, \d+\), \{'7': "):
        check_layout(page, "off_screen")


def test_screenshots_were_kept(frontend):
    pictures = sorted(ARTIFACTS.glob("*.png"))
    assert {p.stem for p in pictures} >= {p.stem for p in shipped_workflows()}
    assert all(p.stat().st_size > 10_000 for p in pictures)
    json.dumps([p.name for p in pictures])
