"""Test tiers (design.md section 5).

- tests/core: the pure library; always runs.
- tests/comfy: the real ComfyUI in library mode; tests/e2e: a real ComfyUI server (and browser).
  ComfyUI is found through COMFYUI_DIR, else the ComfyUI that contains this pack (../.. of the pack
  when it sits in custom_nodes/), else ~/comfy/ComfyUI. When none is found those tiers are skipped
  with one loud line; they never pass vacuously. A COMFYUI_DIR that points at no ComfyUI is an error.
- Tests marked ``gpu`` run only with ``--gpu`` on a machine with CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PACK_DIR = Path(__file__).resolve().parent.parent


def _is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir() and (path / "nodes.py").is_file()


def find_comfyui() -> Path | None:
    """Where the real ComfyUI is, or None (see the module docstring for the search order)."""
    explicit = os.environ.get("COMFYUI_DIR")
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not _is_comfyui(path):
            raise pytest.UsageError(
                f"COMFYUI_DIR={explicit} is not a ComfyUI source tree (no main.py, nodes.py, comfy/)"
            )
        return path
    for candidate in (PACK_DIR.parent.parent, Path.home() / "comfy" / "ComfyUI"):
        if _is_comfyui(candidate):
            return candidate.resolve()
    return None


NO_COMFYUI = (
    "NO ComfyUI FOUND (COMFYUI_DIR, the pack's ../.., ~/comfy/ComfyUI): "
    "the comfy and e2e tiers were SKIPPED, only the core tier ran"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--gpu", action="store_true", help="run the tests marked gpu (needs CUDA)")


def pytest_configure(config: pytest.Config) -> None:
    config.comfyui_dir = find_comfyui()  # type: ignore[attr-defined]
    config.spire_cuda = _cuda_requested(config)  # type: ignore[attr-defined]


def _cuda_requested(config: pytest.Config) -> bool:
    """``--gpu`` on a machine with CUDA: the gpu tests run and the comfy tier boots ComfyUI on CUDA."""
    if not config.getoption("--gpu"):
        return False
    import torch

    return torch.cuda.is_available()


def pytest_report_header(config: pytest.Config) -> str:
    found = config.comfyui_dir  # type: ignore[attr-defined]
    return f"ComfyUI: {found}" if found else f"ComfyUI: {NO_COMFYUI}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    found = config.comfyui_dir  # type: ignore[attr-defined]
    gpu_ok = config.spire_cuda  # type: ignore[attr-defined]
    for item in items:
        parts = Path(str(item.fspath)).relative_to(PACK_DIR).parts
        tier = parts[1] if len(parts) > 2 and parts[0] == "tests" else "core"
        if tier in ("comfy", "e2e"):
            item.add_marker(getattr(pytest.mark, tier))
            if found is None:
                item.add_marker(pytest.mark.skip(reason=NO_COMFYUI))
        if item.get_closest_marker("gpu") and not gpu_ok:
            item.add_marker(pytest.mark.skip(reason="gpu test: run with --gpu on a machine with CUDA"))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if config.comfyui_dir is None:  # type: ignore[attr-defined]
        terminalreporter.write_line("!" * 100, red=True, bold=True)
        terminalreporter.write_line(NO_COMFYUI, red=True, bold=True)
        terminalreporter.write_line("!" * 100, red=True, bold=True)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module that asks for it: tiny models and small images gain nothing from intra-op
    threads, and on a busy machine OpenMP threads spinning against other processes make each step tens of times
    slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
