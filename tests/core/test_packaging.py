"""Registry metadata and install files stay consistent."""

from __future__ import annotations

from pathlib import Path

import tomllib

PACK_DIR = Path(__file__).resolve().parents[2]


def test_pyproject_registry_fields_and_requirements_agree():
    data = tomllib.loads((PACK_DIR / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()
    assert project["version"].count(".") == 2
    assert project["license"] == {"file": "LICENSE"} and (PACK_DIR / "LICENSE").read_text().startswith(
        "                    GNU GENERAL PUBLIC LICENSE"
    )
    assert project["urls"]["Repository"].startswith("https://")
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert comfy[key], key
    lines = (PACK_DIR / "requirements.txt").read_text().splitlines()
    requirements = [line for line in lines if line and not line.startswith("#")]
    assert requirements == project["dependencies"]
    assert not any(r.lower().startswith("torch") for r in requirements)
