"""The GPU proof script (``python -m spire_core.bench gpu``) checked here, so that a broken script is caught on
the CPU and not on a borrowed GPU: its statistics on known inputs, its JUnit reading on a real pytest report,
and its tiny mode end to end (every section at toy shapes, on the CPU here), with the JSON it writes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spire_core.bench.common import median_ci, ratio_report
from spire_core.bench.gpu import SECTIONS, device_slug, gpu_test_files, junit_summary
from spire_core.bench.sampling import find_comfyui

PACK_DIR = Path(__file__).resolve().parents[2]


def test_median_confidence_interval_uses_binomial_order_statistics():
    # n = 10: P(B <= 1) = 11/1024, so (x(2), x(9)) covers 97.9 %; (x(3), x(8)) only 89 %
    assert median_ci(list(range(10))) == (1, 8)
    assert median_ci(list(range(20))) == (5, 14)  # the textbook 95 % pair for n = 20 (6th and 15th)
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few values for 95 %: the full range
    with pytest.raises(ValueError, match="no values"):
        median_ci([])


def test_ratio_report_divides_round_by_round_and_flags_ratios_below_the_flop_bound():
    slow = [2.0, 4.0, 2.2, 2.1, 1.9, 2.0, 2.05]
    fast = [1.0, 2.0, 1.1, 1.0, 1.0, 1.0, 1.0]  # round 2 was slow for both: its ratio is still 2
    report = ratio_report(slow, fast, flop_ratio=2.5)
    assert report["per_round"][1] == 2.0
    assert report["median"] == 2.0
    assert report["rounds"] == 7 and report["ci95"][0] <= 2.0 <= report["ci95"][1]
    assert report["below_flop_bound"] is True
    assert ratio_report(slow, fast, flop_ratio=1.5)["below_flop_bound"] is False
    wide = ratio_report([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    assert wide["ci95_halfwidth_pct"] == 50.0 and wide["within_bound"] is False
    with pytest.raises(ValueError, match="rounds"):
        ratio_report([1.0], [1.0, 2.0])


def test_junit_summary_reads_a_real_pytest_report(tmp_path):
    (tmp_path / "test_three.py").write_text(
        "import pytest\n"
        "def test_ok():\n    assert 1\n"
        "def test_bad():\n    assert 1 == 2, 'one is not two'\n"
        "@pytest.mark.skip(reason='no')\ndef test_skipped():\n    pass\n"
    )
    junit = tmp_path / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", "test_three.py"]
    subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=120)
    summary = junit_summary(junit)
    assert (summary["tests"], summary["passed"], summary["failures"], summary["skipped"]) == (3, 1, 1, 1)
    assert summary["failed"][0]["test"].endswith("test_bad")
    assert "one is not two" in summary["failed"][0]["failure"]


def test_device_names_and_the_gpu_test_files():
    assert device_slug("NVIDIA H200") == "nvidia-h200"
    assert device_slug("NVIDIA GeForce RTX 4090 (24 GB)") == "nvidia-geforce-rtx-4090-24-gb"
    files = gpu_test_files()
    assert "tests/core/test_degradation.py" in files and "tests/comfy/test_restore.py" in files
    assert "tests/core/test_gpu_script.py" not in files  # names @pytest.mark.gpu only in this text, never as a mark


def test_tiny_mode_runs_every_section_and_writes_the_report(tmp_path):
    env = {**os.environ, "SPIRE_PROGRESS": "0"}
    command = [sys.executable, "-m", "spire_core.bench", "gpu", "--tiny", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=PACK_DIR, capture_output=True, text=True, timeout=900, env=env)
    line = done.stdout.strip().splitlines()[0]
    report = json.loads(next(tmp_path.glob("gpu-*-tiny.json")).read_text())
    assert (tmp_path / next(tmp_path.glob("gpu-*-tiny.json")).name.replace(".json", ".log")).is_file()
    sections = report["sections"]
    assert list(sections) == list(SECTIONS)
    has_comfy = find_comfyui() is not None
    for name, entry in sections.items():
        expected = "skipped" if name.startswith("sampling") and not has_comfy else "ok"
        assert entry["status"] == expected, (name, entry)
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["not_run"] == line
    assert line == ("gpu: every section ran" if has_comfy else line) and line.startswith("gpu: ")

    degradation = sections["degradation"]["result"]
    assert degradation["images_per_s"] > 0 and degradation["config"]["batch"] == 4
    assert degradation["jpeg_codec"] in ("libjpeg", "nvjpeg")
    step = sections["training_step"]["result"]["cases"]["tiny"]
    assert step["ratio"]["rounds"] == 2 and math.isfinite(step["time_ratio"]) and step["time_ratio"] > 0
    assert step["memory"]["spire"]["peak_mib"] > 0 and step["memory"]["controlnet"]["peak_mib"] > 0
    run = sections["training_run"]["result"]
    assert run["all_finite"] and run["resume_matches"], run
    assert len(run["losses"]) == 4 and run["resumed_steps"] == 2 and run["resumed_from"] == "step-00000002"
    for name in ("tests_gpu", "tests_comfy"):
        tests = sections[name]["tests"]
        assert tests["tests"] >= 1 and tests["failures"] == 0 and tests["errors"] == 0, tests
    if has_comfy:
        timing = sections["sampling"]["result"]["time"]
        entry = timing["batches"]["1"]["spire_over_controlnet"]
        assert entry["rounds"] == 3 and len(entry["per_round"]) == 3 and entry["flop_ratio"] > 1.0
        assert timing["flop_ratio_unet_plus_trunk_over_unet"] > 1.0
        assert report["summary"]["sampling_b1_spire_over_controlnet"] == entry["median"]
        sdxl = {"full": sections["sampling_sdxl"]["result"], "quarter": sections["sampling_sdxl_quarter"]["result"]}
        for trunk, result in sdxl.items():
            assert result["size"] == "tiny_sdxl" and result["trunk"] == trunk
            entry = result["time"]["batches"]["1"]["spire_over_controlnet"]
            assert entry["rounds"] == 3 and all(math.isfinite(r) and r > 0 for r in entry["per_round"])
            assert report["summary"][f"sampling_sdxl_{trunk}_spire_over_controlnet"] == entry["median"]
        # the quarter trunk is narrower than core ControlNet's full copy: fewer FLOPs than it
        flops = {t: r["time"]["flops_per_step_batch1"] for t, r in sdxl.items()}
        assert flops["quarter"]["spire"] < flops["quarter"]["controlnet"] == flops["full"]["controlnet"]
    assert report["summary"]["training_run_finite"] is True


def test_wheels_install_only_what_is_missing_and_a_broken_one_is_reported(tmp_path):
    from spire_core.bench.gpu_env import prepare_environment

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-0.0.1-py3-none-any.whl").write_bytes(b"installed already: never touched")
    report, paths = prepare_environment(str(wheels), tmp_path / "work")
    assert report["installed_from_wheels"] == [] and paths == []
    (wheels / "spire_absent_package-0.1-py3-none-any.whl").write_bytes(b"not a zip")
    report, paths = prepare_environment(str(wheels), tmp_path / "work")
    assert "wheel_install_failed" in report and paths == []
    with pytest.raises(SystemExit, match="no such folder"):
        prepare_environment(str(tmp_path / "missing"), tmp_path / "work")


def test_the_pyav_stub_lets_comfyui_s_imports_through_and_refuses_use(tmp_path):
    from spire_core.bench.gpu_env import AV_STUB

    (tmp_path / "av").mkdir()
    (tmp_path / "av" / "__init__.py").write_text(AV_STUB)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import av\n"
        "from av.container import InputContainer\n"
        "from av.subtitles.stream import SubtitleStream\n"
        "assert av.__file__.startswith(sys.argv[1])\n"
        "try:\n    av.open('x.mp4')\nexcept RuntimeError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "PyAV is not installed" in done.stdout
