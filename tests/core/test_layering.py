"""design.md section 2: spire_core never imports ComfyUI; importing the pack outside ComfyUI does nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[2]

BLOCKED = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution")

_PROBE = r"""
import importlib, pkgutil, sys
BLOCKED = {blocked!r}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"spire_core imported {{name}}")
        return None

sys.meta_path.insert(0, Block())
import spire_core
names = [m.name for m in pkgutil.walk_packages(spire_core.__path__, "spire_core.")]
for name in names:
    if name.endswith("__main__"):
        continue
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print(len(names))
"""


def test_spire_core_imports_without_comfyui():
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(blocked=BLOCKED)],
        cwd=PACK_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 10  # every module was walked, not an empty package


def test_pack_import_outside_comfyui_exports_nothing():
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('spire_pack', {str(PACK_DIR / '__init__.py')!r},"
        f" submodule_search_locations=[{str(PACK_DIR)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['spire_pack'] = m; spec.loader.exec_module(m)\n"
        "assert m.__all__ == [] and not hasattr(m, 'comfy_entrypoint'), dir(m)\n"
        "assert 'spire_pack.nodes' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


LIGHT_MODULES = (
    "spire_core.models.safetensors_header",
    "spire_core.models.config",
    "spire_core.models.checkpoint",
    "spire_core.models.comfy_layout",
    "spire_core.models.numeric",
    "spire_core.models.file_layout",
    "spire_core.models.modulation",
    "spire_core.prompt",
    "spire_core.degradation",
    "spire_core.restoration",
    "spire_core.restoration.plan",
    "spire_core.restoration.guidance",
    "spire_core.restoration.tiles",
    "spire_core.eval.metrics",
    "spire_core.restoration.color",
)
"""What the ComfyUI nodes import: none may bring in diffusers (ComfyUI does not ship it)."""


def _imports_after(code: str) -> list[str]:
    probe = (
        code
        + "\nimport json, sys\n"
        + "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'torch'})))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PACK_DIR, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_modules_the_nodes_use_never_import_diffusers():
    for module in LIGHT_MODULES:
        assert "diffusers" not in _imports_after(f"import {module}"), module
    # the models package itself resolves its names on use: the light ones stay light
    assert "diffusers" not in _imports_after("from spire_core.models import AdaptorConfig, read_adaptor_file")
    assert "diffusers" in _imports_after("from spire_core.models import SpireAdaptor")


def test_the_models_command_answers_help_without_torch():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['spire_core.models', '--help']\n"
        "try:\n"
        "    runpy.run_module('spire_core.models', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
    )
    assert _imports_after(code) == []


def test_restoration_evaluation_and_models_never_import_training():
    """The frozen base parts live in models/: restoring (pipeline, CLI), evaluating and the model files do not
    reach into the training package."""
    probe = (
        "import sys\n"
        "import spire_core.restoration.pipeline, spire_core.restoration.__main__, spire_core.eval.benchmark_set\n"
        "import spire_core.eval.control\n"
        "import spire_core.models.components, spire_core.models.checkpoint\n"
        "print(sorted(m for m in sys.modules if m.startswith('spire_core.training')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PACK_DIR, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
