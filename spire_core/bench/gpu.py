"""One command that proves the pack on a CUDA GPU: ``python -m spire_core.bench gpu``.

    python -m spire_core.bench gpu [--out results/] [--budget 480] [--comfyui DIR] [--wheels DIR] [--tiny]

On a machine with one CUDA GPU it runs, within ``--budget`` seconds (8 minutes by default), each section in its
own process with its own share of the time (a section that overruns is stopped and named; the time it did not
use passes on to the next), and rewrites the JSON after every section, so a run cut short keeps what it
measured:

1. ``tests_gpu``: the tests marked ``gpu`` (CUDA degradation against the CPU path, the GPU JPEG codec,
   mixed-precision training and resume, ComfyUI's low-VRAM modes restoring what normal VRAM restores) with
   ``python -m pytest --gpu``;
2. ``degradation``: degradation throughput on the device at 512 px, batch 64, paper preset, with the JPEG codec
   the device gets (``degrade``'s default) and with libjpeg forced, and how far that codec's output is from
   libjpeg's; target 1,000 img/s on an H100/H200-class GPU;
3. ``sampling``: one ComfyUI CFG step of the SD 1.5 architecture (random weights) at fp16: SPIRE over core
   ControlNet (time and peak memory, target at most 1.05) and SPIRE over the bare UNet next to the counted FLOP
   ratio (target within 10 %) (``spire_core.bench.sampling``);
4. ``training_step``: one training step at bf16, SD 1.5 architecture, 512 px, batch 4, gradient checkpointing:
   SPIRE over a plain diffusers ControlNet (target at most 1.10) and the measured peak memory next to the
   projection in ``docs/training.md`` (``spire_core.bench.training``);
5. ``training_run``: 50 real ``Trainer`` steps (tiny random base, bf16, on the GPU) with a checkpoint at step 25
   and a resume from it: every loss finite, the resumed losses equal to the uninterrupted run's;
6. ``sampling_sdxl``, ``sampling_sdxl_quarter``: the sampling benchmark for the SDXL architecture at its native
   128x128 latent, fp16, with the full and with the quarter SPIRE trunk against core ControlNet (full): time,
   peak memory, FLOP ratios (one section each, so that one cut short leaves the other);
7. ``tests_comfy``: the whole comfy tier with ComfyUI on CUDA in library mode (``python -m pytest --gpu
   tests/comfy``), in the time left.

It writes ``results/gpu-<device name>.json`` and a short ``results/gpu-<device name>.log`` and prints one line
naming what could not run and why.

A GPU machine without network: ``--wheels DIR`` installs each wheel in DIR whose distribution is not installed
(into a private folder, never over installed packages), and ComfyUI is found like the tests find it or given
with ``--comfyui``. Where PyAV is missing (ComfyUI imports it at start for its video types and nothing of this
pack uses them), an import stub stands in; the JSON says so.

``--tiny`` runs every section at toy shapes in seconds (on the CPU where there is no GPU): the core tier runs it
to check the script itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from .gpu_env import PACK_DIR, device_slug, prepare_environment, versions

SECTIONS: dict[str, float] = {
    "tests_gpu": 60.0,
    "degradation": 35.0,
    "sampling": 70.0,
    "training_step": 80.0,
    "training_run": 45.0,
    "sampling_sdxl": 75.0,
    "sampling_sdxl_quarter": 75.0,
    "tests_comfy": 0.0,
}
"""Sections in the order they run, with their planned seconds (``tests_comfy`` gets what is left)."""

TINY_SECTIONS: dict[str, float] = {name: 120.0 for name in SECTIONS}


# ------------------------------------------------------------------------------------------------ pytest sections


def gpu_test_files() -> list[str]:
    """The test files holding tests marked ``gpu`` (found by their marker, so a new one is never left out)."""
    files = []
    for path in sorted((PACK_DIR / "tests").rglob("test_*.py")):
        if "e2e" in path.parts:
            continue
        if re.search(r"^\s*@pytest\.mark\.gpu\b", path.read_text(encoding="utf-8"), re.MULTILINE):
            files.append(str(path.relative_to(PACK_DIR)))
    return files


def junit_summary(path: Path) -> dict[str, Any]:
    """Counts and the failed tests (with the first line of their message) from a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = []
    for case in suite.iter("testcase"):
        for kind in ("failure", "error"):
            node = case.find(kind)
            if node is not None:
                message = (node.get("message") or node.text or "").strip().splitlines()
                name = f"{case.get('classname')}::{case.get('name')}"
                trace = (node.text or "").strip()[-1500:]  # the end of the traceback: where and what failed
                failed.append({"test": name, kind: (message[0] if message else "")[:300], "trace": trace})
    counts["failed"] = failed
    counts["seconds"] = round(float(suite.get("time", 0.0)), 1)
    return counts


def _pytest_command(section: str, tiny: bool, junit: Path) -> list[str]:
    command = [sys.executable, "-m", "pytest", "--gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    command += ["--continue-on-collection-errors", "-o", "addopts="]
    if section == "tests_gpu":
        files = ["tests/core/test_degradation.py"] if tiny else gpu_test_files()
        return [*command, "-m", "gpu", *files]
    if tiny:
        return [*command, "-m", "gpu", "tests/comfy/test_restore.py", "-k", "low_vram"]
    return [*command, "tests/comfy"]


# ------------------------------------------------------------------------------------------------ the driver


class Run:
    """One GPU proof run: environment, sections, the JSON and the log."""

    def __init__(self, out: Path, budget: float, tiny: bool, env: dict[str, str], report: dict[str, Any]) -> None:
        import torch

        self.tiny = tiny
        self.budget = budget
        self.started = time.monotonic()
        self.env = env
        cuda = torch.cuda.is_available()
        self.device = "cuda" if cuda else "cpu"
        name = torch.cuda.get_device_name(0) if cuda else "cpu"
        stem = f"gpu-{device_slug(name)}" + ("-tiny" if tiny else "")
        out.mkdir(parents=True, exist_ok=True)
        self.json_path, self.log_path = out / f"{stem}.json", out / f"{stem}.log"
        self.log_lines: list[str] = []
        self.result: dict[str, Any] = {
            "benchmark": "gpu",
            "device": name,
            "cuda": torch.version.cuda if cuda else None,
            "tiny": tiny,
            "budget_s": budget,
            "environment": {**report, "python": sys.version.split()[0], "versions": versions()},
            "comfyui": env.get("COMFYUI_DIR"),
            "sections": {},
        }
        if cuda:
            props = torch.cuda.get_device_properties(0)
            self.result["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        if not cuda:
            self.log("no CUDA device: every section runs on the CPU" + (" (tiny mode)" if tiny else ""))

    def log(self, line: str) -> None:
        stamp = f"[{time.monotonic() - self.started:6.1f}s] "
        self.log_lines.append(stamp + line)
        sys.stderr.write(stamp + line + "\n")
        sys.stderr.flush()

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.json_path.write_text(json.dumps(self.result, indent=2, allow_nan=True) + "\n", encoding="utf-8")
        self.log_path.write_text("\n".join(self.log_lines) + "\n", encoding="utf-8")

    def _child(self, command: list[str], timeout: float, work: Path) -> tuple[str, str]:
        """Run ``command``; returns (status, detail): ok, failed (exit code and the last error line) or timeout.

        At the timeout the process gets SIGINT first (pytest then stops, reports what ran and writes its
        JUnit file), and is killed 20 s later if it has not ended."""
        out, err = work / "stdout.txt", work / "stderr.txt"
        with out.open("w", encoding="utf-8") as stdout, err.open("w", encoding="utf-8") as stderr:
            process = subprocess.Popen(command, cwd=PACK_DIR, env=self.env, stdout=stdout, stderr=stderr, text=True)
            try:
                code = process.wait(timeout=max(timeout, 1.0))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                return "timeout", f"stopped after {timeout:.0f} s"
        if code != 0:
            text = err.read_text(encoding="utf-8", errors="replace") or out.read_text(
                encoding="utf-8", errors="replace"
            )
            lines = [x for x in text.strip().splitlines() if x.strip()]
            return "failed", f"exit {code}: {lines[-1][:400] if lines else ''}"
        return "ok", ""

    def section(self, name: str, planned: float, last: bool, work: Path) -> None:
        timeout = self.left() if last else min(planned, self.left())
        entry: dict[str, Any] = {"planned_s": round(planned, 1), "timeout_s": round(timeout, 1)}
        self.result["sections"][name] = entry
        if timeout < 5:
            entry.update(status="skipped", reason="no time left in the budget")
            self.log(f"{name}: skipped (no time left)")
            self.save()
            return
        self.log(f"{name}: start (up to {timeout:.0f} s)")
        begun = time.monotonic()
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        if name.startswith("tests_"):
            junit = folder / "junit.xml"
            status, detail = self._child(_pytest_command(name, self.tiny, junit), timeout, folder)
            if junit.is_file():
                entry["tests"] = junit_summary(junit)
                if status == "failed" and entry["tests"]["failures"] + entry["tests"]["errors"] > 0:
                    status, detail = "ok", ""  # the tests ran; their failures are the result, listed
                elif status == "timeout":
                    entry["tests"]["interrupted"] = (
                        f"at the section's time limit ({timeout:.0f} s); the rest did not run"
                    )
            elif status == "ok":
                status, detail = "failed", "pytest wrote no report"
        else:
            output = folder / "result.json"
            command = [sys.executable, "-m", "spire_core.bench.gpu_sections", name, "--json", str(output)]
            command += ["--device", self.device, "--work", str(folder)] + (["--tiny"] if self.tiny else [])
            status, detail = self._child(command, timeout, folder)
            if status == "ok":
                data = json.loads(output.read_text(encoding="utf-8"))
                if data.get("status") == "skipped":
                    status, detail = "skipped", data.get("reason", "")
                else:
                    entry["result"] = data
        entry["status"] = status
        if detail:
            entry["reason"] = detail
        entry["seconds"] = round(time.monotonic() - begun, 1)
        if status != "ok":
            texts = [(folder / f).read_text(errors="replace") for f in ("stderr.txt", "stdout.txt")]
            entry["output_tail"] = next((t for t in texts if t.strip()), "").strip().splitlines()[-20:]
        self.log(f"{name}: {status} in {entry['seconds']} s" + (f" ({detail})" if detail else ""))
        self.save()

    def summarize(self) -> str:
        sections = self.result["sections"]
        summary: dict[str, Any] = {}
        deg = sections.get("degradation", {}).get("result")
        if deg:
            summary["degradation_images_per_s"] = deg["images_per_s"]
            summary["degradation_jpeg_codec"] = deg["jpeg_codec"]
            summary["degradation_target_met"] = deg["target_met"]
        smp = sections.get("sampling", {}).get("result")
        if smp:
            for batch, entry in smp["time"]["batches"].items():
                summary[f"sampling_b{batch}_spire_over_controlnet"] = entry["spire_over_controlnet"]["median"]
                summary[f"sampling_b{batch}_spire_over_bare"] = entry["spire_over_bare"]["median"]
            summary["sampling_flop_ratio_spire_over_bare"] = smp["time"]["flop_ratio_unet_plus_trunk_over_unet"]
            summary["sampling_memory"] = {b: m["spire_over_controlnet"] for b, m in smp["memory"].items()}
            summary["sampling_targets"] = smp["targets"]
        for name in ("sampling_sdxl", "sampling_sdxl_quarter"):
            entry = sections.get(name, {}).get("result")
            if not entry:
                continue
            trunk = entry["trunk"]
            batch = entry["time"]["batches"]["1"]
            summary[f"sampling_sdxl_{trunk}_spire_over_controlnet"] = batch["spire_over_controlnet"]["median"]
            summary[f"sampling_sdxl_{trunk}_spire_over_bare"] = batch["spire_over_bare"]["median"]
            summary[f"sampling_sdxl_{trunk}_flop_ratio_spire_over_bare"] = batch["spire_over_bare"]["flop_ratio"]
            if entry.get("memory"):
                summary[f"sampling_sdxl_{trunk}_memory"] = entry["memory"]["1"]["spire_over_controlnet"]
        trn = sections.get("training_step", {}).get("result")
        if trn:
            case = next(iter(trn["cases"].values()))
            summary["training_spire_over_controlnet"] = case["time_ratio"]
            summary["training_target_met"] = case["meets_time_target"]
            summary["training_memory"] = trn.get("memory_against_projection")
        run = sections.get("training_run", {}).get("result")
        if run:
            summary["training_run_finite"] = run["all_finite"]
            summary["training_run_resume_matches"] = run["resume_matches"]
        for name in ("tests_gpu", "tests_comfy"):
            tests = sections.get(name, {}).get("tests")
            if tests:
                summary[name] = {k: tests[k] for k in ("passed", "failures", "errors", "skipped")}
        self.result["summary"] = summary
        missing = [
            f"{name} ({entry['status']}: {entry.get('reason', '')})".replace(": )", ")")
            for name, entry in sections.items()
            if entry["status"] != "ok"
        ]
        line = "gpu: could not run: " + "; ".join(missing) if missing else "gpu: every section ran"
        self.result["not_run"] = line
        self.save()
        return line


def run(
    out: str | None = None,
    budget: float = 480.0,
    comfyui: str | None = None,
    wheels: str | None = None,
    tiny: bool = False,
) -> int:
    """Run every section; returns 1 when one failed or overran, else 0 (skipped sections, say without ComfyUI,
    and failed tests are listed in the JSON and the printed line)."""
    from .common import RESULTS_DIR

    with tempfile.TemporaryDirectory(prefix="spire-gpu-") as tmp:
        work = Path(tmp)
        report, paths = prepare_environment(wheels, work)
        for path in reversed(paths):
            sys.path.insert(0, path)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([*paths, str(PACK_DIR), *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("SPIRE_PROGRESS", "0")
        env["PYTHONUNBUFFERED"] = "1"
        if comfyui:
            env["COMFYUI_DIR"] = str(Path(comfyui).resolve())
        else:
            from .sampling import find_comfyui

            found = find_comfyui()
            if found is not None:
                env["COMFYUI_DIR"] = str(found)
        runner = Run(Path(out) if out else RESULTS_DIR, budget, tiny, env, report)
        plan = TINY_SECTIONS if tiny else SECTIONS
        names = list(plan)
        for i, name in enumerate(names):
            runner.section(name, plan[name], last=i == len(names) - 1, work=work)
        line = runner.summarize()
    print(line)
    print(f"wrote {runner.json_path} and {runner.log_path}")
    failed = [n for n, e in runner.result["sections"].items() if e["status"] in ("failed", "timeout")]
    return 1 if failed else 0
