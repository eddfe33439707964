"""The README's benchmark table quotes the committed result files (``results/``), number for number."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

PACK_DIR = Path(__file__).resolve().parents[2]
README = (PACK_DIR / "README.md").read_text(encoding="utf-8")
RESULTS = PACK_DIR / "results"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _interval(ratio: dict) -> str:
    low, high = ratio["ci95"]
    return f"95 % CI {low:.2f}-{high:.2f}"


def test_sampling_row_quotes_results_sampling_cpu():
    result = _load("sampling-cpu.json")
    batch = result["time"]["batches"]["1"]
    spire_cn, spire_bare = batch["spire_over_controlnet"], batch["spire_over_bare"]
    memory = result["memory"]["1"]["spire_over_controlnet"]
    quoted = [
        f"{result['time']['latent']}² latent",
        f"SPIRE / ControlNet time **{spire_cn['median']:.2f}** ({_interval(spire_cn)}, {spire_cn['rounds']} rounds; "
        f"FLOP ratio {spire_cn['flop_ratio']:.2f}); peak memory {memory:.2f}",
        f"SPIRE / bare UNet time {spire_bare['median']:.2f} ({_interval(spire_bare)}) beside the FLOP ratio "
        f"{spire_bare['flop_ratio']:.2f}",
    ]
    for text in quoted:
        assert text in README, text
    assert spire_cn["within_bound"] and spire_bare["within_bound"]  # the quoted spreads are within +-10 %


def test_training_row_quotes_results_training_cpu():
    result = _load("training-cpu.json")
    for size, case in result["cases"].items():
        ratio = case["ratio"]
        text = (
            f"SPIRE / plain diffusers ControlNet time **{ratio['median']:.2f}** ({_interval(ratio)}, "
            f"{ratio['rounds']} rounds); peak-memory increase {case['memory']['memory_ratio']:.2f}"
        )
        assert text in README, (size, text)
        assert f"{case['resolution_px']}², batch {result['batch']}" in README


def test_gpu_figures_appear_only_with_a_gpu_result():
    runs = sorted(RESULTS.glob("gpu-*.json"))
    if not runs:
        assert "No GPU run has happened yet" in README
    for path in runs:
        assert _load(path.name)["device"] in README, path.name


def test_projection_row_quotes_results_training_memory_projection():
    result = _load("training-memory-projection.json")
    sd15, sdxl = result["cases"]["sd15/quarter"], result["cases"]["sdxl/quarter"]
    text = (
        f"SD 1.5 quarter trunk **{sd15['projected_batch4_gib']:.1f} GiB**, SDXL quarter trunk "
        f"**{sdxl['projected_batch4_gib']:.1f} GiB** (fixed parts {sd15['fixed_gib']:.1f} and {sdxl['fixed_gib']:.1f}"
    )
    assert text in README
    assert result["target"]["met"] and sd15["fits_24gb"] and sdxl["fits_24gb"]
    docs = (PACK_DIR / "docs" / "training.md").read_text(encoding="utf-8")
    for case in result["cases"].values():
        if case.get("projected_batch4_gib") is not None:
            assert f"| {case['projected_batch1_gib']:.1f} | {case['projected_batch4_gib']:.1f} |" in docs


def test_sdxl_sampling_row_quotes_results_per_trunk_size():
    for trunk in ("full", "half", "quarter"):
        result = _load(f"sampling-sdxl-{trunk}-cpu.json")
        assert (result["size"], result["trunk"], result["dtype"]) == ("sdxl", trunk, "bfloat16")
        assert result["time"]["latent"] == 128  # SDXL's native size, as the target names it
        batch = result["time"]["batches"]["1"]
        cn, bare = batch["spire_over_controlnet"], batch["spire_over_bare"]
        memory = result["memory"]["1"]["spire_over_controlnet"]
        text = (
            f"{trunk}: SPIRE / ControlNet **{cn['median']:.2f}** ({_interval(cn)}, FLOP ratio {cn['flop_ratio']:.2f}), "
            f"SPIRE / bare {bare['median']:.2f} ({_interval(bare)}, FLOP ratio {bare['flop_ratio']:.2f}), "
            f"peak memory {memory:.2f}"
        )
        assert text in README, text
        assert result["targets"]["time_met"] and result["targets"]["spire_over_bare_near_flop_ratio"]
        assert result["targets"]["memory_met"] and cn["within_bound"] and bare["within_bound"]


def test_trunk_comparison_table_quotes_the_trunk_miniature_results():
    """``docs/miniature.md``, Trunk sizes: every row of its table is the committed run's numbers."""
    doc = (PACK_DIR / "docs" / "miniature.md").read_text(encoding="utf-8")
    for seed in (0, 1):
        result = _load(f"trunk-miniature-seed{seed}.json")
        assert result["config"]["seed"] == seed and result["config"]["backbone_channels"] == [64, 128]
        psnr = result["restoration"]["psnr_db"]
        for arm, entry in result["adaptors"]["per_arm"].items():
            control = result["control"]["restorers"][arm]
            noise = [p["measured"] for p in control["noise_ladder"]["points"]]
            blur = [p["measured"] for p in control["blur_ladder"]["points"]]
            row = (
                f"| {seed} | {entry['trunk']} | {entry['loss_last100_mean']:.3f} | {psnr[arm]:.2f} | "
                f"{noise[0]:.3f} -> {noise[-1]:.3f} ({noise[0] - noise[-1]:.3f}) | "
                f"{blur[0]:.2f} -> {blur[-1]:.2f} ({blur[0] - blur[-1]:.2f}) | "
                f"{100 * control['decoupling']['deblur_only']['kept']:.0f} % | {control['blind']['gain_db']:+.2f} |"
            )
            assert row in doc, row


def _guidance_row(name: str, control: dict) -> str:
    """A row of ``docs/miniature.md``'s restoration guidance tables."""
    noise = [p["measured"] for p in control["noise_ladder"]["points"]]
    blur = [p["measured"] for p in control["blur_ladder"]["points"]]
    decoupling = control["decoupling"]
    return (
        f"| `{name}` | "
        + " / ".join(f"{v:.3f}" for v in noise)
        + f" | {control['noise_ladder']['max_calibration_error']:.3f} | {blur[0]:.2f} -> {blur[-1]:.2f} | "
        f"{100 * decoupling['deblur_only']['kept']:.0f} % | {100 * decoupling['denoise_only']['kept']:.0f} % | "
        f"{control['blind']['gain_db']:+.2f} |"
    )


def test_guidance_table_quotes_the_guidance_miniature_results():
    """``docs/miniature.md``, Restoration guidance, and the README's paragraph: the committed run's numbers."""
    doc = (PACK_DIR / "docs" / "miniature.md").read_text(encoding="utf-8")
    result = _load("control-guidance-miniature.json")
    assert result["config"]["restoration_scales"] == [2.0, 3.0, 4.0] and result["config"]["control_starts"] == [0.5]
    assert result["backbone"]["steps"] == 2638 and result["adaptors"]["steps"] == 2817
    restorers = result["control"]["restorers"]
    for name in ("modulation_numeric", "modulation_numeric w_r=2", "modulation_numeric w_r=3",
                 "modulation_numeric w_r=4", "modulation_numeric start=0.5", "modulation_numeric w_r=2 start=0.5",
                 "codec(exact targets)"):  # fmt: skip
        row = _guidance_row(name, restorers[name])
        assert row in doc, row
    plain, guided = restorers["modulation_numeric"], restorers["modulation_numeric w_r=2"]
    # what the prose claims: decoupling met at w_r 2 only by guidance, blind unchanged, calibration nowhere
    assert guided["met"]["decoupled"] and not plain["met"]["decoupled"]
    assert guided["blind"]["gain_db"] == plain["blind"]["gain_db"]
    arms = [name for name in restorers if name.startswith("modulation_numeric")]
    assert not any(restorers[n]["met"]["noise_calibrated"] or restorers[n]["met"]["blur_calibrated"] for n in arms)
    kept = (plain["noise_ladder"]["points"][0]["measured"], guided["noise_ladder"]["points"][0]["measured"])
    quoted = (
        f'none is named ({kept[0]:.3f} to {kept[1]:.3f} of 0.12) and meets the decoupling target ("Deblur only" '
        f"keeps {100 * guided['decoupling']['deblur_only']['kept']:.0f} % of the noise,\n"
        f"{100 * plain['decoupling']['deblur_only']['kept']:.0f} % unguided)"
    )
    assert quoted in README, quoted


def test_finer_guidance_table_quotes_the_run_evaluated_again_from_its_weights():
    """``docs/miniature.md``, Restoration guidance, finer scales, and the README's sentence: the committed numbers
    of a trained run evaluated again from its saved weights."""
    doc = (PACK_DIR / "docs" / "miniature.md").read_text(encoding="utf-8")
    result = _load("control-guidance-fine-miniature.json")
    trained = result["evaluated_from"]
    assert "--evaluate-from" in result["command"] and "--budget-minutes 30 --seed 0" in trained["command"]
    assert result["config"]["restoration_scales"] == [1.5, 2.0, 2.5]
    assert (result["backbone"]["steps"], result["adaptors"]["steps"]) == (3210, 3129)
    assert "27.9 min on an Intel Xeon" in doc and trained["wall_seconds"]["total"] / 60 == pytest.approx(27.9, abs=0.05)
    restorers = result["control"]["restorers"]
    names = ["modulation_numeric", *(f"modulation_numeric w_r={w}" for w in ("1.5", "2", "2.5"))]
    for name in names:
        row = _guidance_row(name, restorers[name])
        assert row in doc, row
    low, two = restorers["modulation_numeric w_r=1.5"], restorers["modulation_numeric w_r=2"]
    # what the prose claims: 1.5 decouples, 2 overshoots, four of five noise points of w_r=2 within 0.03, no
    # calibration, the blur ladder of w_r=2 not monotonic
    assert low["met"]["decoupled"] and two["decoupling"]["deblur_only"]["kept"] > 1
    errors = [abs(p["measured"] - p["ideal"]) for p in two["noise_ladder"]["points"]]
    assert sum(e <= 0.03 for e in errors) == 4 and errors[-1] > 0.03
    assert not two["met"]["blur_monotonic"]
    assert not any(restorers[n]["met"]["noise_calibrated"] or restorers[n]["met"]["blur_calibrated"] for n in names)
    sentence = (
        f"1.5 kept {100 * low['decoupling']['deblur_only']['kept']:.0f} % there and 2\n"
        f"overshot ({100 * two['decoupling']['deblur_only']['kept']:.0f} %)"
    )
    assert sentence in README, sentence


def test_per_crop_table_quotes_the_run_evaluated_again_from_its_weights():
    """``docs/miniature.md``, "Per crop: a switch, not a dial": counts and shares from the committed per-crop
    readings, the nesting of the crops that keep their noise, and the blur ladder's quartiles."""
    doc = (PACK_DIR / "docs" / "miniature.md").read_text(encoding="utf-8")
    restorers = _load("control-guidance-fine-miniature.json")["control"]["restorers"]
    for name in ("modulation_numeric", "modulation_numeric w_r=2"):
        points = restorers[name]["noise_ladder"]["points"]
        per_crop = [p["measured_per_crop"] for p in points]
        assert all(len(values) == 28 for values in per_crop)
        keeping = [{i for i, v in enumerate(values) if v > 0.06} for values in per_crop]
        between = [sum(0.02 <= v <= 0.06 for v in values) for values in per_crop]
        within = [sum(abs(v - p["ideal"]) <= 0.03 for v in values) / len(values) for p, values in zip(points, per_crop)]
        row = (
            f"| `{name}` | "
            + " / ".join(str(len(s)) for s in keeping)
            + " | "
            + " / ".join(str(n) for n in between)
            + " | "
            + " / ".join(f"{100 * w:.0f}" for w in within)
            + " % |"
        )
        assert row in doc, row
        assert all(later <= earlier for earlier, later in zip(keeping, keeping[1:]))  # nested
    assert len([i for i, v in enumerate(restorers["modulation_numeric"]["noise_ladder"]["points"][-1]
                                        ["measured_per_crop"]) if v > 0.06]) == 4  # fmt: skip
    plain = [p["measured_per_crop"] for p in restorers["modulation_numeric"]["noise_ladder"]["points"]]
    between = [sum(0.02 <= v <= 0.06 for v in values) for values in plain]
    assert max(between[2:]) <= 3 and [round(n / 28, 2) for n in between[:2]] == [0.29, 0.25]  # "about a quarter"
    assert sum(v >= 0.11 for v in plain[0]) == 3 and sum(v > 0.06 for v in plain[0]) == 11
    guided = restorers["modulation_numeric w_r=2"]["noise_ladder"]["points"][0]["measured_per_crop"]
    assert sum(v > 0.12 for v in guided) == 19 and sum(v > 0.06 for v in guided) == 22
    blur = restorers["modulation_numeric"]["blur_ladder"]["points"]
    quartiles = [statistics.quantiles(p["measured_per_crop"], n=4, method="inclusive") for p in blur]  # as torch's
    assert f"median {quartiles[0][1]:.2f} -> {quartiles[-1][1]:.2f} px" in doc
    spans = [q[2] - q[0] for q in quartiles]
    assert 0.5 <= min(spans) and max(spans) <= 1.0, spans
    per_crop = list(zip(*(p["measured_per_crop"] for p in blur)))
    drops = [crop[0] - crop[-1] for crop in per_crop]
    assert f"a median of\n{statistics.median(drops):.2f} px where 2 px were asked" in doc
    falling = sum(all(b <= a for a, b in zip(crop, crop[1:])) for crop in per_crop)
    assert f"monotonically for {falling} of the 28 crops" in doc


def _per_crop_row(name: str, control: dict) -> str:
    """A row of ``docs/miniature.md``'s denoise-start table: the noise ladder's means, its largest error, and per
    crop the counts above 0.06 and between 0.02 and 0.06 and the share within the tolerance."""
    points = control["noise_ladder"]["points"]
    per_crop = [p["measured_per_crop"] for p in points]
    return (
        f"| `{name}` | "
        + " / ".join(f"{p['measured']:.3f}" for p in points)
        + f" | {control['noise_ladder']['max_calibration_error']:.3f} | "
        + " / ".join(str(sum(v > 0.06 for v in values)) for values in per_crop)
        + " | "
        + " / ".join(str(sum(0.02 <= v <= 0.06 for v in values)) for values in per_crop)
        + " | "
        + " / ".join(f"{100 * p['crops_within_tolerance']:.0f}" for p in points)
        + f" % | {100 * control['decoupling']['deblur_only']['kept']:.0f} % | {control['blind']['gain_db']:+.2f} |"
    )


def test_denoise_start_table_quotes_the_run_evaluated_again_from_its_weights():
    """``docs/miniature.md``, Per crop, "From the noised input": the committed numbers and what the prose claims."""
    doc = (PACK_DIR / "docs" / "miniature.md").read_text(encoding="utf-8")
    result = _load("control-starts-miniature.json")
    assert "--evaluate-from runs/miniature-weights" in result["command"]
    assert result["config"]["control_starts"] == [0.7, 0.8, 0.9] and result["config"]["restoration_scales"] == [1.5]
    assert f"{result['wall_seconds']['evaluation'] / 60:.1f} min, no training" in doc
    restorers = result["control"]["restorers"]
    fine = _load("control-guidance-fine-miniature.json")["control"]["restorers"]
    # the same weights: the plain arm's numbers are the fine run's own, crop for crop
    plain, before = restorers["modulation_numeric"], fine["modulation_numeric"]
    assert (plain["decoupling"], plain["blind"], plain["met"]) == (before["decoupling"], before["blind"], before["met"])
    for kind in ("noise_ladder", "blur_ladder"):
        for mine, theirs in zip(plain[kind]["points"], before[kind]["points"]):
            assert mine["measured_per_crop"] == theirs["measured_per_crop"]
    names = ["modulation_numeric", *(f"modulation_numeric start={d}" for d in ("0.9", "0.8", "0.7"))]
    for name in [*names, "modulation_numeric w_r=1.5 start=0.9"]:
        row = _per_crop_row(name, restorers[name])
        assert row in doc, row
    near = restorers["modulation_numeric start=0.9"]
    errors = [abs(p["measured"] - p["ideal"]) for p in near["noise_ladder"]["points"]]
    assert all(e <= 0.03 for e in errors[:4]) and errors[-1] > 0.03
    assert ", ".join(f"{e:.3f}" for e in errors[:4]) in doc
    assert (
        f"asked\nto remove all of the noise it leaves {near['noise_ladder']['points'][-1]['measured']:.3f}." in README
    )
    shares = [p["crops_within_tolerance"] for p in near["noise_ladder"]["points"][:4]]
    assert f"per crop, {100 * min(shares):.0f}-{100 * max(shares):.0f} % of the crops are" in doc
    assert near["met"]["decoupled"] and near["blind"]["gain_db"] >= 2
    assert not any(restorers[n]["met"]["noise_calibrated"] for n in restorers if n.startswith("modulation_numeric"))
    unguided = {n: restorers[n]["noise_ladder"]["max_calibration_error"] for n in names}
    assert min(unguided, key=unguided.get) == "modulation_numeric start=0.9"
    arms = [r for n, r in restorers.items() if n != "codec(exact targets)"]
    closest = fine["modulation_numeric w_r=2"]["noise_ladder"]["max_calibration_error"]
    assert closest < min(r["noise_ladder"]["max_calibration_error"] for r in arms)
    between = [sum(0.02 <= v <= 0.06 for v in restorers[n]["noise_ladder"]["points"][-1]["measured_per_crop"])
               for n in ("modulation_numeric", "modulation_numeric start=0.9")]  # fmt: skip
    assert f'({between[1]} at "remove all", {between[0]} from pure noise)' in doc
    assert (
        f"({restorers['modulation_numeric start=0.7']['noise_ladder']['points'][-1]['measured']:.3f} left at 0.7)"
        in doc
    )


def test_sampling_seed_table_quotes_the_runs_evaluated_again_with_other_starting_noise():
    """``docs/miniature.md``, Sampling seed (and Per crop's sentence on it): the committed numbers of the same weights
    restored from three draws of starting noise, and what the prose says holds and moves."""
    doc = (PACK_DIR / "docs" / "miniature.md").read_text(encoding="utf-8")
    draws = {0: _load("control-guidance-fine-miniature.json")}
    for seed in (1, 2):
        draws[seed] = _load(f"control-sampling-seed{seed}-miniature.json")
        assert draws[seed]["config"]["sampling_seed"] == seed and f"--sampling-seed {seed}" in draws[seed]["command"]
        same_run = ("run", "date", "command")  # the same trained weights
        assert [draws[seed]["evaluated_from"][k] for k in same_run] == [draws[0]["evaluated_from"][k] for k in same_run]
    minutes = [draws[seed]["wall_seconds"]["evaluation"] / 60 for seed in (1, 2)]
    assert f"no\ntraining; {minutes[0]:.1f} and {minutes[1]:.1f} min;" in doc
    errors = [draws[seed]["control"]["restorers"]["modulation_numeric"]["noise_ladder"]["max_calibration_error"]
              for seed in (1, 2)]  # fmt: skip
    assert f"other seeds gave {errors[0]:.3f} and {errors[1]:.3f}" in doc
    kept, gains, first_blur = [], [], []
    for seed, result in draws.items():
        control = result["control"]["restorers"]["modulation_numeric"]
        noise, blur = control["noise_ladder"], control["blur_ladder"]
        row = (
            f"| {seed} | "
            + " / ".join(f"{p['measured']:.3f}" for p in noise["points"])
            + f" | {noise['max_calibration_error']:.3f} | {blur['points'][0]['measured']:.2f} -> "
            f"{blur['points'][-1]['measured']:.2f} | {100 * control['decoupling']['deblur_only']['kept']:.0f} % | "
            f"{control['blind']['gain_db']:+.2f} | {result['restoration']['psnr_db']['modulation_numeric']:.2f} |"
        )
        assert row in doc, row
        kept.append(control["decoupling"]["deblur_only"]["kept"])
        gains.append(control["blind"]["gain_db"])
        first_blur.append(blur["points"][0]["measured"])
        restorers = result["control"]["restorers"]
        for arm in ("modulation_numeric", "additive_numeric"):
            assert restorers[arm]["noise_ladder"]["spearman"] == restorers[arm]["blur_ladder"]["spearman"] == -1
        assert restorers["modulation_clip"]["noise_ladder"]["spearman"] == -0.9
        for arm in ("modulation_numeric", "modulation_clip", "additive_numeric"):
            assert not (restorers[arm]["met"]["noise_calibrated"] or restorers[arm]["met"]["blur_calibrated"])
            assert restorers[arm]["blind"]["gain_db"] > 3.2
    assert max(kept) < 0.7 and f"{100 * min(kept):.0f}-{100 * max(kept):.0f} %" in doc
    assert f'"Deblur only" kept {100 * min(kept):.0f}-{100 * max(kept):.0f} % of the noise' in README
    assert f"{min(gains):+.2f} to {max(gains):+.2f} dB" in doc
    assert f"its first point {min(first_blur):.2f}-{max(first_blur):.2f} px" in doc
    keeping = {
        seed: {
            i
            for i, v in enumerate(
                r["control"]["restorers"]["modulation_numeric"]["noise_ladder"]["points"][-1]["measured_per_crop"]
            )
            if v > 0.06
        }
        for seed, r in draws.items()
    }
    assert len(keeping[0]) == 4 and [len(keeping[1] & keeping[0]), len(keeping[2] & keeping[0])] == [1, 1]
    assert f'{len(keeping[1])} and {len(keeping[2])} crops keep their noise at "remove all"' in doc
