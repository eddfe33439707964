"""The training-memory projection per base and trunk size (``python -m spire_core.bench training --project``) on
tiny SDXL-shaped models: its measurement sees the optimiser state it subtracts, and its arithmetic adds up."""

from __future__ import annotations

import sys

import pytest

from spire_core.bench.projection import FROZEN_EXTRA_BYTES, PROJECTED_BATCH, project
from spire_core.bench.training import memory_in_subprocess


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak resident set from /proc")
def test_the_measured_step_holds_at_least_the_optimiser_state_it_subtracts():
    measured = memory_in_subprocess("spire", "tiny_sdxl", 1, 2, "cpu", "fp32", True, 8, "full")
    assert measured["method"] == "VmHWM after clear_refs"
    increase = (measured["peak_mib"] - measured["before_mib"]) * 2**20
    state = 12 * measured["adaptor_parameters"]  # fp32 gradients and two AdamW moments, made in the first step
    assert increase >= 0.9 * state, (increase, state)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak resident set from /proc")
def test_projection_of_tiny_sdxl_trunks():
    result = project(sizes=("tiny_sdxl",), trunks=("full", "half"), latent=8, steps=2)
    full, half = result["cases"]["tiny_sdxl/full"], result["cases"]["tiny_sdxl/half"]
    assert half["adaptor_parameters"] < 0.5 * full["adaptor_parameters"]
    assert FROZEN_EXTRA_BYTES["tiny_sdxl"] == 0
    for case in (full, half):
        fixed = (2 * case["unet_parameters"] + 16 * case["adaptor_parameters"]) / 2**30
        assert case["fixed_gib"] == pytest.approx(fixed, abs=0.006)
        small, large = case["activations_gib"].values()  # at 64 and 128 px
        assert 0 < small and large > 0
        projected = case["fixed_gib"] + PROJECTED_BATCH * case["activations_per_native_image_gib"]
        assert case[f"projected_batch{PROJECTED_BATCH}_gib"] == pytest.approx(projected, abs=0.03)  # each rounded
        assert case["fits_24gb"] and case["fits_12gb"]
    assert result["target"]["met"] is False  # no quarter trunk was projected: the target is not claimed
