"""A third-party linter agrees that every API workflow we ship is valid: ``comfy-lint`` (PyPI) checks
each API twin against the live test server's ``/object_info`` (node types, required inputs, enum
values, links and their types), with the model-file pickers listing the file names the workflows use
(the test server has no model files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from spire_test_support.workflows import API_DIR

FILE_PICKERS = {("CheckpointLoaderSimple", "ckpt_name"), ("SPIRE_AdaptorLoader", "adaptor_name")}
"""Combo inputs whose choices are the files in a model folder: the schema lists what the workflows use."""


def _choices_slot(spec: list) -> list:
    """The list that holds a combo input's choices in either spelling of /object_info."""
    return spec[0] if isinstance(spec[0], list) else spec[1].setdefault("options", [])


def schema_with_model_names(server, twins: list[Path]) -> dict:
    schema = server.get("/object_info")
    for twin in twins:
        for node in json.loads(twin.read_text(encoding="utf-8")).values():
            for name, value in node["inputs"].items():
                if (node["class_type"], name) in FILE_PICKERS:
                    section = schema[node["class_type"]]["input"]
                    spec = section.get("required", {}).get(name) or section.get("optional", {}).get(name)
                    choices = _choices_slot(spec)
                    if value not in choices:
                        choices.append(value)
    return schema


def comfy_lint(files: list[Path], schema: Path) -> tuple[int, dict]:
    run = subprocess.run(
        [sys.executable, "-m", "comfy_lint.cli", *map(str, files), "--schema-cache", str(schema), "--strict", "--json"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    return run.returncode, json.loads(run.stdout)


def test_comfy_lint_finds_every_api_twin_valid(server, tmp_path):
    twins = sorted(API_DIR.glob("*.json"))
    assert len(twins) >= 8
    schema = tmp_path / "object_info.json"
    schema.write_text(json.dumps(schema_with_model_names(server, twins)), encoding="utf-8")
    code, report = comfy_lint(twins, schema)
    problems = [(f["path"], d) for f in report["files"] for d in f["diagnostics"]]
    assert problems == [] and code == 0, problems
    assert report["summary"]["files"] == len(twins) and report["summary"]["unreadable"] == 0
    # the linter does check: a twin with a wrong link, a misspelt sampler and a missing input is refused
    broken = json.loads((API_DIR / "spire_blind_restore.json").read_text(encoding="utf-8"))
    restore = next(node for node in broken.values() if node["class_type"] == "SPIRE_Restore")
    loader = next(key for key, node in broken.items() if node["class_type"] == "CheckpointLoaderSimple")
    restore["inputs"]["clip"] = [loader, 0]  # MODEL into a CLIP input
    restore["inputs"]["sampler_name"] = "eulr"
    del restore["inputs"]["steps"]
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps(broken), encoding="utf-8")
    code, report = comfy_lint([bad], schema)
    rules = sorted(d["rule"] for d in report["files"][0]["diagnostics"])
    assert code == 1 and rules == ["invalid-enum", "missing-required", "type-mismatch"], rules
