"""The miniature control check end to end with a tiny budget (structure and finiteness, never the outcome), and
its codecs: the seam-free, grain-carrying codec keeps a chosen noise and blur, the old block codec does not."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from spire_core.degradation import degrade, manual_params
from spire_core.eval.estimators import residual_blur_sigma, residual_noise
from spire_core.experiments.miniature import PhotoCrops, main
from spire_core.experiments.miniature.config import RECIPE_ARMS, TRUNK_ARMS, MiniatureConfig
from spire_core.experiments.miniature.run import evaluate_run
from spire_core.experiments.miniature.weights import MiniatureWeightsError, load_weights, run_id_of, save_weights
from spire_core.experiments.minicodec import LappedGrainCodec, PatchPCACodec
from spire_core.models.checkpoint import TRAINING_STEP_KEY, read_adaptor_file
from spire_core.models.safetensors_header import read_safetensors_header


def _numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)


@pytest.fixture(scope="module")
def photo_crops():
    """(training crops in [-1, 1], held-out crops in [0, 1]) of the bundled photos."""
    config = MiniatureConfig()
    crops = PhotoCrops(config.images, 64, 128, seed=0)
    return crops.train("codec-crop", range(256)).float() / 127.5 - 1, crops.heldout(8)


def test_block_codec_is_exact_on_its_range_and_has_sd_latent_shape():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 32, 32, generator=generator) * 2 - 1
    codec = PatchPCACodec.fit(images)
    z = codec.encode(images).latent_dist.mean
    assert z.shape == (8, 4, 4, 4)
    torch.testing.assert_close(codec.encode(codec.decode(z).sample).latent_dist.mean, z, atol=1e-4, rtol=1e-4)
    assert 2 ** (len(codec.config.block_out_channels) - 1) == 8  # what FrozenComponents.vae_downscale reads
    assert torch.equal(codec.encode(images).latent_dist.std, torch.zeros_like(z))


def test_grain_codec_keeps_noise_and_blur_without_seams(photo_crops, one_thread):
    fit, clean = photo_crops
    codec = LappedGrainCodec.fit(fit, refine=1)
    z = codec.encode(clean * 2 - 1).latent_dist.mean
    assert z.shape == (8, 4, 8, 8) and codec.config.latent_channels == 4
    assert torch.equal(codec.decode(z).sample, codec.decode(z).sample)  # deterministic
    reference = ((codec.decode(z, grain=False).sample + 1) / 2).clamp(0, 1)
    # no seams: steps across 8-pixel cell boundaries are like steps inside cells
    steps = (reference[..., 1:] - reference[..., :-1]).abs().mean((0, 1, 2))
    at_boundaries = steps[7::8].mean() / steps[[i for i in range(63) if i % 8 != 7]].mean()
    assert float(at_boundaries) < 1.25
    block = PatchPCACodec.fit(fit)
    blocky = block.roundtrip(clean)
    block_steps = (blocky[..., 1:] - blocky[..., :-1]).abs().mean((0, 1, 2))
    assert float(block_steps[7::8].mean() / block_steps[[i for i in range(63) if i % 8 != 7]].mean()) > 2
    # noise passes through at its level; the block codec drops most of it
    noisy = degrade(reference, [manual_params(noise_sigma=0.1, seed=i) for i in range(8)]).images
    kept = float(residual_noise(codec.roundtrip(noisy), reference).mean())
    assert 0.08 < kept < 0.12, kept
    assert float(residual_noise(block.roundtrip(noisy), block.roundtrip(reference)).mean()) < 0.03
    # a 3 px blur of the representable image survives the round trip
    blurred = degrade(reference, manual_params(blur_sigma=3.0)).images
    assert 2.4 < float(residual_blur_sigma(codec.roundtrip(blurred), reference).mean()) < 3.6


EVALUATION = ["--eval-crops", "3", "--ddim-steps", "2", "--restoration-scales", "2.5", "--control-starts", "0.5"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, one_thread):
    """A tiny miniature run through the CLI: its output folder."""
    out = tmp_path_factory.mktemp("miniature") / "mini"
    caps = ["--backbone-steps", "2", "--adaptor-steps", "2", *EVALUATION]
    assert main(["--out", str(out), "--budget-minutes", "0.5", "--seed", "3", "--threads", "1", *caps]) == 0
    return out


def _without_seconds(value):
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def test_miniature_cli_writes_every_number(trained_run):
    out = trained_run
    result = json.loads((out / "miniature.json").read_text())

    assert result["config"]["seed"] == 3 and "--seed 3" in result["command"]
    assert result["backbone"]["steps"] >= 1 and result["adaptors"]["steps"] == 2
    assert (
        list(result["adaptors"]["per_arm"])
        == list(RECIPE_ARMS)
        == ["modulation_numeric", "modulation_clip", "additive_numeric"]
    )
    assert result["adaptors"]["per_arm"]["modulation_clip"]["numeric_tokens"] == 0
    psnr = result["restoration"]["psnr_db"]
    assert set(psnr) == {"degraded", *RECIPE_ARMS, "codec_roundtrip_clean", "codec_roundtrip_degraded"}
    assert (
        result["restoration"]["crops"] == 3 and len(result["restoration"]["psnr_per_crop_db"]["additive_numeric"]) == 3
    )
    control = result["control"]["restorers"]
    variants = ["modulation_numeric w_r=2.5", "modulation_numeric start=0.5", "modulation_numeric w_r=2.5 start=0.5"]
    assert list(control) == [*RECIPE_ARMS, *variants, "codec(exact targets)"]
    assert result["config"]["restoration_scales"] == [2.5] and result["config"]["control_starts"] == [0.5]
    # the blind prompt is the null prompt of restoration guidance: blind restoration is the unguided arm's
    guided, unguided = control["modulation_numeric w_r=2.5"], control["modulation_numeric"]
    assert abs(guided["blind"]["psnr_restored_db"] - unguided["blind"]["psnr_restored_db"]) < 1e-3
    # a start from the noised input is another restoration (the guidance's effect: test_eval's pass-through test)
    started = control["modulation_numeric start=0.5"]
    assert started["blind"]["psnr_restored_db"] != unguided["blind"]["psnr_restored_db"]
    for name, entry in control.items():
        assert entry["crops"] == 3 and len(entry["noise_ladder"]["points"]) == 5, name
        assert isinstance(entry["met"]["noise_monotonic"], bool)
    assert result["codec"]["roundtrip_psnr_db"] > 20 and result["codec"]["block_codec_roundtrip_psnr_db"] > 20
    for section in ("wall_seconds", "codec", "backbone", "adaptors", "restoration", "control"):
        numbers = list(_numbers(result[section]))
        assert numbers and all(math.isfinite(v) for v in numbers), section
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["cpu"]
    table = (out / "miniature.md").read_text()
    assert "| restored, modulation_numeric |" in table and "**Noise ladder**" in table
    sweep = result["restoration"]["denoise_start"]
    assert sweep["arm"] == "modulation_numeric"
    assert {(row["steps"], row["denoise"]) for row in sweep["rows"]} == {
        (s, d) for s in (5, 10, 25) for d in (1.0, 0.7, 0.5)
    }
    assert "| steps | start 1 | start 0.7 | start 0.5 |" in table
    for name in ("eval.png", "ladder.png", "control.json", "control.md", "ladder_noise.png", "ladder_blur.png"):
        assert (out / name).is_file(), name
    # the trained weights: each arm's EMA weights as an adaptor file with its training step
    assert (
        result["weights"] == {"saved": "weights", "run_id": run_id_of(out)} and len(result["weights"]["run_id"]) == 32
    )
    assert sorted(p.name for p in (out / "weights").iterdir()) == sorted(
        ["run.json", "codec.safetensors", "backbone.safetensors", *(f"{arm}.safetensors" for arm in RECIPE_ARMS)]
    )
    config, state = read_adaptor_file(out / "weights" / "additive_numeric.safetensors")
    assert config.fusion == "additive" and config.numeric_tokens == 4 and state
    assert read_safetensors_header(out / "weights" / "additive_numeric.safetensors").metadata[TRAINING_STEP_KEY] == "2"


def test_a_trained_run_evaluates_again_to_the_same_numbers(trained_run, tmp_path):
    again = tmp_path / "again"
    # the evaluation options not given (crops, DDIM steps, control starts) are the run's
    argv = ["--out", str(again), "--evaluate-from", str(trained_run), "--threads", "1"]
    assert main([*argv, "--restoration-scales", "2.5", "4"]) == 0
    first = json.loads((trained_run / "miniature.json").read_text())
    result = json.loads((again / "miniature.json").read_text())
    assert result["config"]["restoration_scales"] == [2.5, 4.0]
    assert (result["config"]["eval_crops"], result["config"]["ddim_steps"], result["config"]["control_starts"]) == (
        3,
        2,
        [0.5],
    )
    assert result["evaluated_from"]["run"] == str(trained_run) and result["evaluated_from"]["date"] == first["date"]
    for section in ("codec", "backbone", "adaptors"):
        assert result[section] == first[section], section
    # bit for bit the run's own evaluation (only the wall times differ), plus the new scale
    assert _without_seconds(result["restoration"]) == _without_seconds(first["restoration"])
    restorers = result["control"]["restorers"]
    assert list(restorers) == [
        *RECIPE_ARMS,
        "modulation_numeric w_r=2.5",
        "modulation_numeric w_r=4",
        "modulation_numeric start=0.5",
        "modulation_numeric w_r=2.5 start=0.5",
        "modulation_numeric w_r=4 start=0.5",
        "codec(exact targets)",
    ]
    for name, entry in first["control"]["restorers"].items():
        assert restorers[name] == entry, name
    assert restorers["modulation_numeric w_r=4"] != restorers["modulation_numeric w_r=2.5"]
    assert (again / "eval.png").read_bytes() == (trained_run / "eval.png").read_bytes()
    assert (
        "from the weights of the run `python -m spire_core.experiments.miniature --out"
        in (again / "miniature.md").read_text()
    )


def test_evaluating_again_refuses_what_it_cannot_reproduce_before_any_work(trained_run, tmp_path, capsys):
    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "out"), "--threads", "1", *argv])
        return capsys.readouterr().err

    run = str(trained_run)
    assert "--seed, --adaptor-steps: decided by the trained run" in refused(
        "--evaluate-from", run, "--seed", "3", "--adaptor-steps", "2"
    )
    assert "has no trained weights" in refused("--evaluate-from", str(tmp_path))
    assert "got an empty path" in refused("--evaluate-from", "")
    with pytest.raises(MiniatureWeightsError, match="holds a trained run"):
        evaluate_run(tmp_path, trained_run)
    with pytest.raises(ValueError, match="expected at least 1 of each"):
        MiniatureConfig(ddim_steps=0)
    with pytest.raises(MiniatureWeightsError, match="its reports would be overwritten"):
        evaluate_run(trained_run, trained_run)
    with pytest.raises(ValueError, match="preset: decided by the trained run"):
        evaluate_run(trained_run, tmp_path / "out", preset="paper")
    samples = MiniatureConfig().images
    assert "is not the astronaut.png the run was trained" in refused("--evaluate-from", run, "--images", *samples[::-1])
    assert "the run cropped 2 photos" in refused("--evaluate-from", run, "--images", samples[0])
    assert "expected values between 0 and 1" in refused("--evaluate-from", run, "--control-starts", "1.5")

    damaged = tmp_path / "damaged"
    shutil.copytree(trained_run, damaged)
    codec = damaged / "weights" / "codec.safetensors"
    tensors = load_file(codec)
    tensors["kernels"][0, 0, 0, 0] = float("nan")
    save_file(tensors, codec, {"spire.miniature.kind": "codec", "grain": "1", "grain_seed": "0"})
    assert "codec.safetensors holds NaN or Inf values in 1 tensors (kernels)" in refused(
        "--evaluate-from", str(damaged)
    )
    save_file(tensors, codec, {"grain": "1"})
    assert "holds 'no kind', expected the miniature's 'codec' weights" in refused("--evaluate-from", str(damaged))
    (damaged / "weights" / "modulation_clip.safetensors").unlink()
    shutil.copy(trained_run / "weights" / "codec.safetensors", codec)
    assert "modulation_clip.safetensors is missing: the run trained the arm modulation_clip" in refused(
        "--evaluate-from", str(damaged)
    )
    arm_file = trained_run / "weights" / "modulation_clip.safetensors"
    arm_tensors = load_file(arm_file)
    first_key = sorted(arm_tensors)[0]
    arm_tensors[first_key].view(-1)[0] = float("inf")
    save_file(arm_tensors, damaged / "weights" / arm_file.name, read_safetensors_header(arm_file).metadata)
    message = refused("--evaluate-from", str(damaged))
    assert "the arm modulation_clip's weights cannot be used:" in message and "holds 1 NaN or Inf values" in message
    shutil.copy(arm_file, damaged / "weights")
    report = json.loads((trained_run / "miniature.json").read_text())
    report["weights"]["run_id"] = "another run"  # a folder reused by a later run that saved no weights
    (damaged / "miniature.json").write_text(json.dumps(report))
    assert "is not the report of the run that saved" in refused("--evaluate-from", str(damaged))
    (damaged / "miniature.json").write_text("{}")
    assert "miniature.json is not a miniature report" in refused("--evaluate-from", str(damaged))
    assert not (tmp_path / "out").exists()  # nothing was evaluated

    # a diverged run's weights are not written (its report still is: run_miniature records why)
    config, components, adaptors = load_weights(trained_run)
    with torch.no_grad():
        next(adaptors["modulation_clip"].parameters()).view(-1)[0] = float("inf")
    with pytest.raises(
        MiniatureWeightsError,
        match=r"not saving the weights: NaN or Inf values in modulation_clip \(training diverged\)",
    ):
        save_weights(tmp_path / "diverged", config, components, adaptors, 2, "id")
    assert not (tmp_path / "diverged").exists()


def test_another_sampling_seed_redraws_only_the_starting_noise(trained_run, tmp_path):
    """--sampling-seed: the same crops, degradations and benchmark noise, other starting noise; a run saved before
    the setting existed (its config lacks it) is evaluated as with its own seed, and a saved config lacking a training
    field is still refused."""
    first = json.loads((trained_run / "miniature.json").read_text())
    assert first["config"]["sampling_seed"] is None
    redrawn = tmp_path / "redrawn"
    argv = ["--out", str(redrawn), "--evaluate-from", str(trained_run), "--threads", "1", "--sampling-seed", "1"]
    assert main(argv) == 0
    result = json.loads((redrawn / "miniature.json").read_text())
    assert result["config"]["sampling_seed"] == 1 and result["config"]["seed"] == 3
    assert result["restoration"]["prompts"] == first["restoration"]["prompts"]
    assert result["restoration"]["psnr_per_crop_db"]["degraded"] == first["restoration"]["psnr_per_crop_db"]["degraded"]
    for arm in RECIPE_ARMS:
        assert result["restoration"]["psnr_per_crop_db"][arm] != first["restoration"]["psnr_per_crop_db"][arm], arm
    exact = "codec(exact targets)"  # no sampling: the same
    assert result["control"]["restorers"][exact] == first["control"]["restorers"][exact]
    assert "DDIM 2 steps, sampling seed 1." in (redrawn / "miniature.md").read_text()

    older = tmp_path / "older"
    shutil.copytree(trained_run, older)
    record_path = older / "weights" / "run.json"
    record = json.loads(record_path.read_text())
    del record["config"]["sampling_seed"]
    record_path.write_text(json.dumps(record))
    again = tmp_path / "again"
    assert main(["--out", str(again), "--evaluate-from", str(older), "--threads", "1"]) == 0
    assert json.loads((again / "miniature.json").read_text())["control"] == first["control"]
    del record["config"]["seed"]
    record_path.write_text(json.dumps(record))
    with pytest.raises(MiniatureWeightsError, match="does not hold this version's miniature config"):
        load_weights(older)
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="sampling_seed"):
            MiniatureConfig(sampling_seed=bad)


def test_an_error_during_an_evaluation_again_is_not_a_usage_error(trained_run, tmp_path, monkeypatch):
    """Only the checks before any work become usage errors (exit 2 with the message); a failure while evaluating
    reaches the caller as itself, with its traceback."""
    from spire_core.experiments.miniature import run as run_module

    def failing_evaluate(*args, **kwargs):
        raise ValueError("failed while evaluating")

    monkeypatch.setattr(run_module, "evaluate", failing_evaluate)
    with pytest.raises(ValueError, match="failed while evaluating"):
        main(["--out", str(tmp_path / "out"), "--threads", "1", "--evaluate-from", str(trained_run)])


def test_restoration_scales_and_control_starts_are_checked_before_any_work(capsys):
    for scales, message in (
        ((1.0,), "other than 1"),
        ((2.0, 2.0), "distinct to 6 significant digits"),
        ((2.0, 2.0000001), "distinct to 6 significant digits"),  # both would be named w_r=2
        ((1.0000001,), "other than 1"),
        ((float("nan"),), "finite"),
        ((-1.0,), "at least 0"),
    ):
        with pytest.raises(ValueError, match=message):
            MiniatureConfig(restoration_scales=scales)
    for starts in ((1.0,), (0.0,), (0.5, 0.5), (float("inf"),)):
        with pytest.raises(ValueError, match="expected values between 0 and 1, exclusive"):
            MiniatureConfig(control_starts=starts)
    with pytest.raises(ValueError, match="modulation_numeric, which is not trained"):
        MiniatureConfig(arms=("modulation_clip",), control_starts=(0.5,))
    config = MiniatureConfig(restoration_scales=(2.0, 3.0), control_starts=(0.5,))
    assert config.control_variants() == [(2.0, 1.0), (3.0, 1.0), (1.0, 0.5), (2.0, 0.5), (3.0, 0.5)]
    with pytest.raises(SystemExit):
        main(["--out", "unused", "--restoration-scales", "1"])
    assert "other than 1" in capsys.readouterr().err


def test_trunk_arms_need_three_distinct_widths():
    config = MiniatureConfig(arms=TRUNK_ARMS, backbone_width=64, backbone_norm_groups=16)
    assert [config.trunk_width(arm) for arm in TRUNK_ARMS] == [64, 32, 16]
    with pytest.raises(ValueError, match="both have a trunk of 32 channels"):
        MiniatureConfig(arms=TRUNK_ARMS)  # the default backbone: 32 wide, 32 groups
    with pytest.raises(ValueError, match="not a multiple of backbone_norm_groups"):
        MiniatureConfig(backbone_width=40, backbone_norm_groups=16)


def test_miniature_compares_trunk_sizes(tmp_path, one_thread):
    out = tmp_path / "trunks"
    caps = ["--backbone-steps", "1", "--adaptor-steps", "2", "--eval-crops", "2", "--ddim-steps", "2"]
    wide = ["--backbone-width", "64", "--backbone-norm-groups", "16", "--arms", *TRUNK_ARMS]
    assert main(["--out", str(out), "--budget-minutes", "0.5", "--threads", "1", *wide, *caps]) == 0
    result = json.loads((out / "miniature.json").read_text())
    assert result["config"]["backbone_channels"] == [64, 128] and result["config"]["backbone_norm_groups"] == 16
    per_arm = result["adaptors"]["per_arm"]
    assert list(per_arm) == list(TRUNK_ARMS)
    assert [per_arm[arm]["trunk_channels"] for arm in TRUNK_ARMS] == [[64, 128], [32, 64], [16, 32]]
    sizes = [per_arm[arm]["parameters"] for arm in TRUNK_ARMS]
    assert sizes[0] > 2 * sizes[1] and sizes[1] > 1.5 * sizes[2]  # measured: 2.15 M, 0.87 M, 0.52 M
    # the same first micro-batch for every arm, and every arm starts as an exact identity on the backbone
    assert len({per_arm[arm]["loss_first"] for arm in TRUNK_ARMS}) == 1
    assert set(result["control"]["restorers"]) == {*TRUNK_ARMS, "codec(exact targets)"}
    assert "trunk quarter 16/32 channels" in (out / "miniature.md").read_text()
