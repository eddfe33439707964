"""The real ComfyUI in library mode (comfyui-internals.md section 3), booted once per test session.

The ``comfy`` fixture sets ComfyUI's arguments (the CPU, or CUDA with ``--gpu`` on a CUDA machine; a
temporary base directory for models, input, output and user data), imports it, initialises the built-in
nodes, loads this pack through ComfyUI's own ``nodes.load_custom_node`` (the same call ComfyUI makes at
start-up) and runs API-format prompts with ``execution.PromptExecutor``.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

PACK_DIR = Path(__file__).resolve().parents[2]
PACK_NAME = "spire_restoration"


class StubServer:
    """The part of ComfyUI's PromptServer that the executor and progress handler use."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata: dict[str, Any] = {}
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event, data, sid=None):  # noqa: ANN001
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass

    def send_progress_text(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        pass


def make_executor(execution, server):  # noqa: ANN001, ANN201 - ComfyUI's module and server
    """``execution.PromptExecutor`` built the way this ComfyUI's ``main.py`` builds it: with the classic cache, and
    with ``cache_args`` where the constructor takes them (ComfyUI 0.3.68+, which fails without)."""
    import inspect

    kwargs: dict[str, Any] = {"cache_type": execution.CacheType.CLASSIC}
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        kwargs["cache_args"] = {"lru": 0, "ram": 0, "ram_inactive": 0}
    return execution.PromptExecutor(server, **kwargs)


class ComfyError(AssertionError):
    """A prompt that ComfyUI rejected or that failed while executing; the message is ComfyUI's."""


class Comfy:
    """Handle on the booted ComfyUI: its modules, the pack's directory and a prompt runner."""

    def __init__(self, root: Path, base: Path, core_node_ids: set[str]) -> None:
        import execution
        import folder_paths

        import nodes

        self.root = root
        self.base = base
        self.core_node_ids = core_node_ids
        """Node ids ComfyUI registered itself, before the pack loaded (core + comfy_extras)."""
        self.nodes = nodes
        self.execution = execution
        self.folder_paths = folder_paths
        self.server = StubServer()
        self.executor = make_executor(execution, self.server)
        self._ids = itertools.count()

    @property
    def input_dir(self) -> Path:
        return Path(self.folder_paths.get_input_directory())

    @property
    def output_dir(self) -> Path:
        return Path(self.folder_paths.get_output_directory())

    def models_dir(self, kind: str) -> Path:
        path = Path(self.folder_paths.get_folder_paths(kind)[0])
        path.mkdir(parents=True, exist_ok=True)
        return path

    def validate(self, prompt: dict[str, Any]) -> tuple[bool, Any, list[str], dict[str, Any]]:
        return asyncio.run(self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run(self, prompt: dict[str, Any]) -> dict[str, Any]:
        """Validate and execute an API-format prompt; return ``history["outputs"]`` (UI outputs by node id)."""
        valid, error, outputs, node_errors = self.validate(prompt)
        if not valid:
            raise ComfyError(f"ComfyUI rejected the prompt: {error}; node errors: {node_errors}")
        prompt_id = f"test-{next(self._ids)}"
        self.executor.execute(prompt, prompt_id, {}, outputs)
        if not self.executor.success:
            errors = [data for event, data in self.executor.status_messages if event == "execution_error"]
            detail = errors[0] if errors else self.executor.status_messages
            if errors:
                detail = f"{errors[0]['node_type']} (node {errors[0]['node_id']}): {errors[0]['exception_message']}"
            raise ComfyError(f"execution failed: {detail}")
        return self.executor.history_result["outputs"]

    def run_error(self, prompt: dict[str, Any]) -> str:
        """Execute a prompt that must fail; return ComfyUI's error message for it."""
        with pytest.raises(ComfyError) as err:
            self.run(prompt)
        return str(err.value)


def _boot(root: Path, base: Path, cuda: bool = False) -> Comfy:
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    # The pack's own nodes/ package must not shadow ComfyUI's nodes.py.
    shadow = sys.modules.get("nodes")
    if shadow is not None and not str(getattr(shadow, "__file__", "")).startswith(str(root)):
        del sys.modules["nodes"]
    from comfy.cli_args import args

    args.cpu = not cuda  # ComfyUI on CUDA with ``--gpu`` on a CUDA machine, else on the CPU
    args.base_directory = str(base)
    args.disable_api_nodes = True
    import utils.extra_config  # noqa: F401  (ComfyUI imports it first so `utils` is its package)

    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    core_node_ids = set(nodes.NODE_CLASS_MAPPINGS)
    link = base / "custom_nodes" / PACK_NAME
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(PACK_DIR, target_is_directory=True)
    loaded = asyncio.run(nodes.load_custom_node(str(link), module_parent="custom_nodes"))
    if not loaded:
        raise RuntimeError(f"ComfyUI could not load the pack from {link}; see the log above")
    from spire_test_support.tiny_comfy import TEST_NODES

    nodes.NODE_CLASS_MAPPINGS.update(TEST_NODES)  # test-only stand-ins for model loaders (tiny random models)
    return Comfy(root, base, core_node_ids)


_BOOTED: list[Comfy] = []
"""The booted ComfyUI of this session, shut down in ``pytest_sessionfinish`` (after the last test has let go
of its fixtures: a session fixture's own teardown runs while the last test's arguments still hold models)."""


@pytest.fixture(scope="session")
def comfy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Comfy:
    root = request.config.comfyui_dir  # type: ignore[attr-defined]
    assert root is not None, "the comfy tier runs only when ComfyUI is found"
    cuda = request.config.spire_cuda  # type: ignore[attr-defined]
    booted = _boot(Path(root), tmp_path_factory.mktemp("comfy_base"), cuda)
    _BOOTED.append(booted)
    return booted


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _BOOTED:
        return
    left = _shut_down(_BOOTED.pop())
    if left and not session.testsfailed:  # a failed test's traceback may hold its models: no verdict then
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"{left} ModelPatcher objects outlive the comfy tier: something still holds a model"
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"ERROR: {message}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _shut_down(booted: Comfy) -> int:
    """Let go of every model while ComfyUI's modules still exist, as the server does when it stops, and return
    how many ModelPatchers are still alive (0 expected). A ModelPatcher left for the interpreter's exit runs its
    ``__del__`` after ComfyUI's module globals are gone, which prints a traceback per model that reads like a
    crash."""
    import gc

    import comfy.model_management as mm
    import comfy.model_patcher
    from spire_test_support import tiny_comfy

    booted.executor = None  # its caches hold the outputs of every node run, models included
    for built in (tiny_comfy.tiny_model, tiny_comfy.tiny_clip, tiny_comfy.tiny_vae):
        built.cache_clear()
    mm.unload_all_models()
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanning every object touches torch's deprecated module attributes
        return sum(isinstance(o, comfy.model_patcher.ModelPatcher) for o in gc.get_objects())


@pytest.fixture(autouse=True)
def inference_mode():
    """Tests that call nodes or samplers directly run them as ComfyUI's executor does: in inference mode
    (models a prompt loaded earlier hold inference tensors, which autograd must not see)."""
    import torch

    with torch.inference_mode():
        yield
