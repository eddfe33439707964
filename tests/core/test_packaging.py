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


def test_pip_install_builds_the_pure_library_and_it_works_installed(tmp_path):
    """`pip install .` of the project installs `spire_core` (never `nodes`, which would shadow ComfyUI's
    nodes.py, nor the tests); the installed library degrades an image from another folder."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "__init__.py"):
        shutil.copy(PACK_DIR / name, source / name)
    for folder in ("spire_core", "nodes"):
        shutil.copytree(PACK_DIR / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheels"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "wheels").glob("spire_restoration-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"spire_core"}, tops
    packaged = {name for name in names if name.endswith(".py")}
    expected = {p.relative_to(PACK_DIR).as_posix() for p in (PACK_DIR / "spire_core").rglob("*.py")}
    assert packaged == expected
    site = tmp_path / "site"
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    check = (
        "import spire_core, torch; from spire_core.degradation import degrade, manual_params;"
        "x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0));"
        "r = degrade(x, manual_params(blur_sigma=1.0, noise_sigma=0.05));"
        "print(spire_core.__file__); print(r.prompts()[0])"
    )
    run = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    where, prompt = run.stdout.splitlines()
    assert Path(where).is_relative_to(site) and prompt == "Deblur with sigma 1.0; Denoise with sigma 0.05"


def test_the_registry_icon_exists_and_is_a_square_png():
    from PIL import Image

    data = tomllib.loads((PACK_DIR / "pyproject.toml").read_text(encoding="utf-8"))
    icon = data["tool"]["comfy"]["Icon"]
    assert icon.endswith("/main/docs/icon.png")
    with Image.open(PACK_DIR / "docs" / "icon.png") as image:
        assert image.format == "PNG" and image.size[0] == image.size[1] >= 128


def test_comfy_test_syntax_level_passes(tmp_path):
    """comfy-test's static level (PyPI, what the registry's test matrix runs first): every file cp1252-safe for
    Windows consoles and no pattern that breaks ComfyUI-native loading (raw nn layers, hard-coded CUDA, ...)."""
    import json
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "comfy_test", "lint", "--check", "syntax", "--json", str(PACK_DIR)],
        capture_output=True, text=True, encoding="utf-8", timeout=300, cwd=tmp_path, check=False,
    )  # fmt: skip
    start = run.stdout.index("{")
    report = json.loads(run.stdout[start:])
    assert report["results"]["syntax"] == {"passed": True, "error": None, "details": None}, run.stdout[-3000:]
    assert run.returncode == 0
