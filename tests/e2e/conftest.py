"""A real ComfyUI server on 127.0.0.1 with the pack installed, started once per test session.

The server runs ComfyUI's own ``main.py`` with a temporary base directory whose ``custom_nodes``
holds a link to this pack, exactly as a user's install would, and is stopped by PID at the end.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

PACK_DIR = Path(__file__).resolve().parents[2]
PACK_NAME = "spire_restoration"
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, base: Path, port: int, log_path: Path) -> None:
        self.root = root
        self.base = base
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        cmd = [
            sys.executable,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--disable-api-nodes",
            "--base-directory",
            str(self.base),
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        # The python process itself is the child (no shell), so its PID is the server's PID.
        self.process = subprocess.Popen(cmd, cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not serve within {START_TIMEOUT_S}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # -- HTTP --------------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def run(self, prompt: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        """POST a prompt and wait for its history entry (outputs and status)."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "spire-tests"})
        if status != 200:
            raise AssertionError(f"POST /prompt answered {status}: {body}")
        prompt_id = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id) if isinstance(history, dict) else None
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout}s")


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = Path(request.config.comfyui_dir)  # type: ignore[attr-defined]
    base = tmp_path_factory.mktemp("server_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_NAME).symlink_to(PACK_DIR, target_is_directory=True)
    # Test-only nodes (tiny model loader, tensor capture) as a second custom node package.
    test_nodes = base / "custom_nodes" / "spire_test_nodes"
    test_nodes.mkdir()
    (test_nodes / "__init__.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(PACK_DIR / 'tests' / 'support')!r})\n"
        f"sys.path.insert(0, {str(PACK_DIR)!r})\n"
        "from spire_test_support.tiny_comfy import TEST_NODES as NODE_CLASS_MAPPINGS\n"
    )
    (base / "input").mkdir()
    shutil.copy(root / "input" / "example.png", base / "input" / "example.png")
    srv = Server(root, base, free_port(), base / "server.log")
    srv.start()
    yield srv
    srv.stop()
