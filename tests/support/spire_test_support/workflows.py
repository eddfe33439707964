"""Workflow files: the UI format the frontend loads and the API format the server executes.

``ui_to_api`` converts the way the frontend's graph-to-prompt does (positional ``widgets_values`` in
input order, plus the extra value the frontend stores after a seed's "control after generate"
widget and after an image-upload combo), using each node's input spec (``INPUT_TYPES()`` in library
mode, ``/object_info`` over HTTP). Tests use it to check that a shipped UI workflow and its API
twin describe the same graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
PACK_DIR = Path(__file__).resolve().parents[3]
WORKFLOW_DIR = PACK_DIR / "example_workflows"
API_DIR = PACK_DIR / "tests" / "workflows_api"


def _ordered_inputs(spec: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    out = []
    for section in ("required", "optional"):
        for name, value in (spec.get(section) or {}).items():
            kind = value[0]
            opts = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            out.append((name, kind, opts))
    return out


def is_widget(kind: Any, opts: dict[str, Any]) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(kind, (list, tuple)) or str(kind) in WIDGET_TYPES


def widget_slots(spec: dict[str, Any]) -> list[tuple[str, int]]:
    """(input name, number of extra stored values after it) for every widget, in order."""
    slots = []
    for name, kind, opts in _ordered_inputs(spec):
        if is_widget(kind, opts):
            extra = int(bool(opts.get("control_after_generate"))) + int(bool(opts.get("image_upload")))
            slots.append((name, extra))
    return slots


def expected_widget_count(spec: dict[str, Any]) -> int:
    return sum(1 + extra for _, extra in widget_slots(spec))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def ui_to_api(workflow: dict[str, Any], specs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """API-format prompt of a UI-format workflow; ``specs`` maps node type -> input spec."""
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, Any] = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):  # muted / bypassed nodes are not sent
            continue
        spec = specs[node["type"]]
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values") or [])
        position = 0
        for name, extra in widget_slots(spec):
            if position >= len(values):
                raise ValueError(f"node {node['id']} ({node['type']}): too few widgets_values for {name!r}")
            inputs[name] = values[position]
            position += 1 + extra
        if position != len(values):
            raise ValueError(
                f"node {node['id']} ({node['type']}): {len(values)} widgets_values, the schema expects {position}"
            )
        for socket in node.get("inputs") or []:
            if socket.get("link") is not None:
                link = links[socket["link"]]
                inputs[socket["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def shipped_workflows() -> list[Path]:
    return sorted(WORKFLOW_DIR.glob("*.json"))


def api_twin(workflow_path: Path) -> Path:
    return API_DIR / workflow_path.name
