"""The GPU script's environment: wheels installed where missing, a PyAV import stub, versions, file names."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

PACK_DIR = Path(__file__).resolve().parents[2]

AV_STUB = '''"""Import stub for PyAV, written by python -m spire_core.bench gpu where PyAV is not installed:
ComfyUI imports av at start for its video types; nothing here can decode or encode video."""
import importlib.abc
import importlib.machinery
import sys
import types


class _Missing:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("PyAV is not installed on this machine (an import stub stands in)")


def __getattr__(name):
    return _Missing


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("av."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = __getattr__
        return module

    def exec_module(self, module):
        pass


sys.meta_path.append(_Finder())
'''


def device_slug(name: str) -> str:
    """``"NVIDIA H200"`` -> ``"nvidia-h200"`` (the result files' names)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def _distribution(wheel: Path) -> str:
    return wheel.name.split("-")[0].replace("_", "-").lower()


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def prepare_environment(wheels: str | None, work: Path) -> tuple[dict[str, Any], list[str]]:
    """Install missing distributions from ``wheels`` and stub PyAV where missing; returns (report, extra
    ``PYTHONPATH`` entries for the sections' processes)."""
    report: dict[str, Any] = {"installed_from_wheels": [], "stubbed": []}
    paths: list[str] = []
    if wheels:
        folder = Path(wheels)
        if not folder.is_dir():
            raise SystemExit(f"--wheels {folder}: no such folder (expected a folder of .whl files)")
        missing = [w for w in sorted(folder.glob("*.whl")) if not _installed(_distribution(w))]
        if missing:
            site = work / "site"
            command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
            command += ["--target", str(site), *map(str, missing)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode == 0:
                paths.append(str(site))
                report["installed_from_wheels"] = [w.name for w in missing]
            else:  # the sections that need them fail and say so; the others still run
                lines = (done.stderr or done.stdout).strip().splitlines()
                report["wheel_install_failed"] = lines[-1] if lines else f"pip exited {done.returncode}"
    if importlib.util.find_spec("av") is None:
        stub = work / "stubs" / "av"
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "__init__.py").write_text(AV_STUB, encoding="utf-8")
        paths.append(str(stub.parent))
        report["stubbed"].append("av (PyAV is not installed; ComfyUI's video types are unusable, and unused here)")
    return report, paths


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("torch", "torchvision", "diffusers", "transformers", "accelerate", "safetensors", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out
