"""The miniature science check end to end with a tiny budget: structure and finiteness, never the outcome."""

from __future__ import annotations

import json
import math

import pytest
import torch

from spire_core.training.miniature import (
    FUSION_ORDER,
    PatchPCACodec,
    main,
    residual_noise,
    spearman,
)


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


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_codec_is_exact_on_its_range_and_has_sd_latent_shape():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, 32, 32, generator=generator) * 2 - 1
    codec = PatchPCACodec.fit(images)
    z = codec.encode(images).latent_dist.mean
    assert z.shape == (8, 4, 4, 4)
    torch.testing.assert_close(codec.encode(codec.decode(z).sample).latent_dist.mean, z, atol=1e-4, rtol=1e-4)
    assert 2 ** (len(codec.config.block_out_channels) - 1) == 8  # what FrozenComponents.vae_downscale reads
    assert torch.equal(codec.encode(images).latent_dist.std, torch.zeros_like(z))


def test_residual_noise_and_spearman():
    generator = torch.Generator().manual_seed(0)
    clean = torch.full((2, 3, 32, 32), 0.5)
    clean[..., 16:] = 0.8
    levels = [residual_noise(clean + s * torch.randn(clean.shape, generator=generator), clean) for s in (0.0, 0.05)]
    assert levels[0]["flat_highpass_std"] < 1e-6 and 0.03 < levels[1]["flat_highpass_std"] < 0.06
    assert abs(levels[1]["error_std"] - 0.05) < 0.005
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0 and spearman([1, 2, 3], [5, 5, 5]) == 0.0


def test_miniature_cli_writes_every_number(tmp_path, one_thread):
    out = tmp_path / "mini"
    caps = ["--backbone-steps", "2", "--adaptor-steps", "2", "--eval-crops", "3", "--ddim-steps", "2"]
    assert main(["--out", str(out), "--budget-minutes", "0.5", "--seed", "3", *caps]) == 0
    result = json.loads((out / "miniature.json").read_text())

    assert result["config"]["seed"] == 3 and "--seed 3" in result["command"]
    assert result["backbone"]["steps"] == 2 and result["adaptors"]["steps"] == 2
    psnr = result["restoration"]["psnr_db"]
    assert set(psnr) == {
        "degraded",
        "modulation",
        "additive",
        "modulation_vs_additive",
        "codec_roundtrip_clean",
        "codec_roundtrip_degraded",
    }
    assert result["restoration"]["crops"] == 3 and len(result["restoration"]["psnr_per_crop_db"]["additive"]) == 3
    ladder = result["noise_ladder"]
    assert ladder["prompted_sigmas"] == [0.02, 0.05, 0.1, 0.2]
    assert ladder["prompts"][0] == "Denoise with sigma 0.02"
    for fusion in FUSION_ORDER:
        assert result["adaptors"]["per_fusion"][fusion]["parameters"] > 0
        entry = ladder[fusion]
        for key in ("flat_highpass_std", "error_std", "psnr_db"):
            assert len(entry[key]) == 4
        for key in ("flat_highpass_std", "error_std"):
            assert isinstance(entry[f"monotonic_decreasing_{key}"], bool)
            assert -1.0 <= entry[f"spearman_{key}"] <= 1.0
    for section in ("wall_seconds", "codec", "backbone", "adaptors", "restoration", "noise_ladder"):
        numbers = list(_numbers(result[section]))
        assert numbers and all(math.isfinite(v) for v in numbers), section
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["cpu"]
    assert result["wall_seconds"]["total"] > 0
    table = (out / "miniature.md").read_text()
    assert "| restored, modulation adaptor |" in table and "monotonic decrease" in table
    assert (out / "eval.png").is_file() and (out / "ladder.png").is_file()
