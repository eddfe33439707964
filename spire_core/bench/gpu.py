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
6. ``tests_comfy``: the whole comfy tier with ComfyUI on CUDA in library mode (``python -m pytest --gpu
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

import argparse
import importlib.metadata
import importlib.util
import json
import math
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

PACK_DIR = Path(__file__).resolve().parents[2]

SECTIONS: dict[str, float] = {
    "tests_gpu": 60.0,
    "degradation": 35.0,
    "sampling": 90.0,
    "training_step": 80.0,
    "training_run": 45.0,
    "tests_comfy": 0.0,
}
"""Sections in the order they run, with their planned seconds (``tests_comfy`` gets what is left)."""

TINY_SECTIONS: dict[str, float] = {name: 120.0 for name in SECTIONS}

TARGETS = {
    "degradation_images_per_s_min": 1000.0,
    "sampling_spire_over_controlnet_max": 1.05,
    "sampling_spire_over_bare_within_flop_ratio": 0.10,
    "training_spire_over_controlnet_max": 1.10,
}

RUN_STEPS, RUN_CHECKPOINT = 50, 25
"""The training run's steps and the step it checkpoints at and resumes from."""

PROJECTION_FIXED_GB, PROJECTION_PER_IMAGE_GB = 9.8, 1.8
"""``docs/training.md``'s memory projection at 512 px (fp32, no checkpointing, an upper estimate for bf16):
fixed part plus activations per image."""

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


# ------------------------------------------------------------------------------------------------ environment


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


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("torch", "torchvision", "diffusers", "transformers", "accelerate", "safetensors", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------------------------------------ the sections


def section_degradation(device: str, tiny: bool) -> dict[str, Any]:
    import torch

    from ..degradation import degrade, get_preset, jpeg_codec_distance, jpeg_codec_for, sample_params
    from .common import describe_device, interleaved, summarize
    from .degradation import benchmark_images

    batch, size, repeats = (4, 64, 2) if tiny else (64, 512, 5)
    dev = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    images = benchmark_images(batch, size, generator)
    params = sample_params(get_preset("paper"), generator, batch)
    resident = images.to(dev)  # the batch already on the device, as a GPU data pipeline hands it over
    codec = jpeg_codec_for(dev)
    candidates = {
        f"paper_{codec}": lambda: degrade(resident, params),
        "paper_libjpeg": lambda: degrade(resident, params, jpeg_codec="libjpeg"),
    }
    times = interleaved(candidates, dev, repeats, warmup=1, desc="degradation")
    throughput = {name: summarize(t, batch) for name, t in times.items()}
    best = throughput[f"paper_{codec}"]["items_per_s"]
    qualities = (10, 30, 50, 70, 90)
    distance = jpeg_codec_distance(resident[: min(8, batch)], qualities, codec) if codec != "libjpeg" else None
    return {
        "machine": describe_device(dev),
        "config": {"batch": batch, "size": size, "preset": "paper", "repeats": repeats, "images_on_device": True},
        "jpeg_codec": codec,
        "throughput": throughput,
        "images_per_s": best,
        "jpeg_codec_distance_from_libjpeg": distance,
        "target_images_per_s": TARGETS["degradation_images_per_s_min"],
        "target_met": best >= TARGETS["degradation_images_per_s_min"],
    }


def section_sampling(device: str, tiny: bool) -> dict[str, Any]:
    from .sampling import find_comfyui, run

    if find_comfyui() is None:
        return {"status": "skipped", "reason": "no ComfyUI (set COMFYUI_DIR or pass --comfyui)"}
    if tiny:
        return run(device=device, batches=(1,), repeats=3, dtype="float32", latent=8, size="tiny", memory=False)
    dtype = "float16" if device.startswith("cuda") else "float32"
    return run(device=device, batches=(1, 2), repeats=20, dtype=dtype, latent=64, inner=5, memory_batches=(1,))


def section_training_step(device: str, tiny: bool) -> dict[str, Any]:
    from .training import run

    precision = "bf16"
    if tiny:
        result = run(sizes=("tiny",), batch=2, steps=2, device=device, precision=precision, gradient_checkpointing=True)
    else:
        result = run(sizes=("sd15",), batch=4, steps=8, device=device, precision=precision, gradient_checkpointing=True)
    case = next(iter(result["cases"].values()))
    if tiny:  # the projection is of the SD 1.5 size
        return result
    projection_gb = PROJECTION_FIXED_GB + result["batch"] * PROJECTION_PER_IMAGE_GB * (case["resolution_px"] / 512) ** 2
    measured = {c: case["memory"][c]["peak_mib"] * 2**20 / 1e9 for c in ("spire", "controlnet")}
    result["memory_against_projection"] = {
        "projection_gb": round(projection_gb, 2),
        "projection": "docs/training.md: fixed 9.8 GB + 1.8 GB per 512 px image (fp32, no checkpointing; upper "
        "estimate); the measurement holds the UNet, the adaptor, its gradients and AdamW moments and the step's "
        "activations, not the VAE and text encoder",
        "measured_peak_gb": {c: round(v, 2) for c, v in measured.items()},
        "measured_over_projection": round(measured["spire"] / projection_gb, 3),
    }
    return result


def section_training_run(device: str, tiny: bool, work: Path) -> dict[str, Any]:
    import torch

    from ..imageio import load_image, save_image
    from ..training import Trainer, TrainingConfig, config_from_dict, latest_checkpoint, write_tiny_base

    steps, at = (4, 2) if tiny else (RUN_STEPS, RUN_CHECKPOINT)
    base = write_tiny_base(work / "base")
    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(sorted((PACK_DIR / "docs" / "samples").glob("*.png"))):
        image = load_image(path)
        for j in range(2):
            crop = image[..., 64 * j : 64 * j + 192, 64 * j : 64 * j + 192]
            save_image(crop, photos / f"photo{i}{j}.png")
            (photos / f"photo{i}{j}.txt").write_text("a photo\n", encoding="utf-8")
    precision = "bf16" if device.startswith("cuda") else "no"

    def config(out: Path, resume: Path | None = None) -> TrainingConfig:
        raw = {
            "model": {"base": str(base)},
            "data": {"folder": str(photos), "resolution": 64, "num_workers": 0},
            "degradation": {"preset": "paper"},
            "train": {
                "output_dir": str(out),
                "steps": steps,
                "batch_size": 4,
                "gradient_accumulation_steps": 1,
                "mixed_precision": precision,
                "device": "auto" if device.startswith("cuda") else "cpu",
                "gradient_checkpointing": True,
                **({"resume": str(resume)} if resume else {}),
            },
            "optim": {"lr": 1e-4},
            "checkpoint": {"every": at},
            "validation": {"every": 0},
            "logging": {"every": 1, "tensorboard": "off"},
        }
        return config_from_dict(raw)

    start = time.perf_counter()
    whole = [r["loss"] for r in Trainer(config(work / "run")).train()]
    checkpoint = latest_checkpoint(work / "run" / "checkpoints")
    first = sorted((work / "run" / "checkpoints").glob("step-*"))[0]
    _reset_accelerate()
    rest = [r["loss"] for r in Trainer(config(work / "resumed", resume=first)).train()]
    seconds = time.perf_counter() - start
    tail = whole[at:]
    worst = max((abs(a - b) / max(abs(b), 1e-12) for a, b in zip(rest, tail)), default=math.inf)
    return {
        "base": "tiny random SD1-structured base (spire_core.training.write_tiny_base), 64 px crops, batch 4",
        "device": str(torch.device(device)),
        "mixed_precision": precision,
        "steps": steps,
        "checkpoint_at": at,
        "resumed_from": first.name,
        "last_checkpoint": checkpoint.name if checkpoint else None,
        "losses": [round(x, 6) for x in whole],
        "resumed_losses": [round(x, 6) for x in rest],
        "all_finite": all(math.isfinite(x) for x in whole + rest),
        "resumed_steps": len(rest),
        "resume_max_relative_difference": round(worst, 6),
        "resume_matches": len(rest) == len(tail) and worst <= 1e-3,
        "seconds": round(seconds, 1),
    }


def _reset_accelerate() -> None:
    """Let a second ``Trainer`` in this process build its own accelerate state."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


SECTION_FUNCTIONS = {
    "degradation": section_degradation,
    "sampling": section_sampling,
    "training_step": section_training_step,
}


def _section_main(argv: list[str]) -> int:
    """``python -m spire_core.bench.gpu SECTION --json FILE --device DEV [--tiny] [--work DIR]``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("section", choices=[*SECTION_FUNCTIONS, "training_run"])
    parser.add_argument("--json", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--work", default=None)
    args = parser.parse_args(argv)
    if args.section == "training_run":
        with tempfile.TemporaryDirectory(dir=args.work) as work:
            result = section_training_run(args.device, args.tiny, Path(work))
    else:
        result = SECTION_FUNCTIONS[args.section](args.device, args.tiny)
    Path(args.json).write_text(json.dumps(result, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return 0


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
            "environment": {**report, "python": sys.version.split()[0], "versions": _versions()},
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
            command = [sys.executable, "-m", "spire_core.bench.gpu", name, "--json", str(output)]
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


if __name__ == "__main__":
    raise SystemExit(_section_main(sys.argv[1:]))
