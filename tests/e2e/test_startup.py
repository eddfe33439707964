"""ComfyUI's own start-up (``main.py``, ``--quick-test-for-ci``: load everything, then exit) with the pack in
``custom_nodes``: the pack loads, registers its nodes and never imports diffusers, which ComfyUI does not ship
(a missing or broken diffusers must not take the pack down at start-up)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from .conftest import PACK_DIR, PACK_NAME

HEAVY = (
    "diffusers",
    "accelerate",
    "spire_core.models.adaptor",
    "spire_core.training",
    "spire_core.restoration.pipeline",
)


def start_comfyui_and_list_modules(root, base) -> dict:  # noqa: ANN001 - paths
    """Run ComfyUI's main.py to the end of its start-up in a fresh interpreter and report what was imported."""
    code = (
        "import json, runpy, sys\n"
        "sys.argv = ['main.py', '--cpu', '--quick-test-for-ci', '--disable-api-nodes', '--base-directory', "
        f"{str(base)!r}]\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        "try:\n"
        "    runpy.run_path('main.py', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    code = stop.code\n"
        "import nodes\n"
        "spire = sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith('SPIRE_'))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'diffusers' or m == 'accelerate'"
        " or any(m.endswith(h) for h in " + repr(HEAVY[2:]) + "))\n"
        "print('RESULT ' + json.dumps({'exit': code, 'spire_nodes': spire, 'heavy': heavy}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture
def base_with_pack(tmp_path):
    (tmp_path / "custom_nodes").mkdir()
    (tmp_path / "custom_nodes" / PACK_NAME).symlink_to(PACK_DIR, target_is_directory=True)
    return tmp_path


def test_comfyui_starts_with_the_pack_without_importing_diffusers(request, base_with_pack):
    result = start_comfyui_and_list_modules(request.config.comfyui_dir, base_with_pack)
    assert result["exit"] in (0, None)
    declared = sorted(
        set(
            re.findall(
                r'node_id="(SPIRE_\w+)"', "".join(p.read_text(encoding="utf-8") for p in PACK_DIR.glob("nodes/*.py"))
            )
        )
    )
    assert len(declared) >= 11 and result["spire_nodes"] == declared
    assert result["heavy"] == [], result["heavy"]
