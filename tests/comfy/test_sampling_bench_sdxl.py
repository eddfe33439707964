"""The sampling benchmark's SDXL sizes and trunk sizes, on the toy SDXL structure in a ComfyUI worker process: the
three variants run with SDXL's added conditioning, and the counted FLOPs order as the architectures say."""

from __future__ import annotations

from spire_core.bench.sampling import run


def test_sdxl_sampling_benchmark_runs_every_variant_and_counts_a_narrow_trunk_as_cheaper(comfy, monkeypatch):
    monkeypatch.setenv("COMFYUI_DIR", str(comfy.root))
    monkeypatch.setenv("SPIRE_PROGRESS", "0")
    full = run(size="tiny_sdxl", trunk="full", latent=8, batches=(1,), repeats=2, memory=False)
    half = run(size="tiny_sdxl", trunk="half", latent=8, batches=(1,), repeats=2, memory=False)
    assert (full["size"], full["trunk"], half["trunk"]) == ("tiny_sdxl", "full", "half")
    counted_full, counted_half = full["time"]["flops_per_step_batch1"], half["time"]["flops_per_step_batch1"]
    assert counted_full["bare"] == counted_half["bare"] and counted_full["controlnet"] == counted_half["controlnet"]
    # the full adaptor costs about what the ControlNet costs; half the width, clearly less, still more than nothing
    assert 0.95 < counted_full["spire"] / counted_full["controlnet"] < 1.05
    assert counted_half["bare"] < counted_half["spire"] < 0.9 * counted_half["controlnet"]  # 0.82 here
    for result in (full, half):
        seconds = result["time"]["batches"]["1"]["seconds"]
        assert all(len(seconds[v]) == 2 and min(seconds[v]) > 0 for v in ("bare", "controlnet", "spire"))
