"""Evaluation: the fixed benchmark (deterministic build), scoring (numbers equal direct metric calls, report files,
plots, LPIPS/FID only from local files, ComfyUI output naming) and restoring it with SpirePipeline on a tiny
diffusers base."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from spire_test_support.adaptors import randomize_heads

from spire_core.eval.__main__ import main
from spire_core.eval.benchmark_set import (
    MANIFEST,
    BenchmarkError,
    build_benchmark,
    check_captions,
    load_manifest,
    match_outputs,
    prompts_for,
    restore_benchmark,
)
from spire_core.eval.metrics import LPIPS_FILENAME, load_lpips, psnr_per_image, ssim
from spire_core.eval.report import FID_MISSING, LPIPS_MISSING, frechet_distance, load_fid_statistics
from spire_core.imageio import load_image, save_image
from spire_core.prompt import BLIND_PROMPT, parse

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SIZE = 64
PHOTOS = ("astronaut", "coffee", "chelsea")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three photos of different sizes and formats, and a COCO captions file naming two of them."""
    import skimage.data

    folder = tmp_path_factory.mktemp("photos")
    for name, suffix in zip(PHOTOS, (".png", ".jpg", ".png")):
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}{suffix}")
    (folder / "notes.md").write_text("not an image")
    coco = {
        "images": [{"id": 1, "file_name": "astronaut.png"}, {"id": 2, "file_name": "coffee.jpg"}],
        "annotations": [
            {"image_id": 1, "caption": " an astronaut in a white suit "},
            {"image_id": 1, "caption": "a woman"},
            {"image_id": 2, "caption": "a cup of coffee"},
        ],
    }
    (folder.parent / "captions.json").write_text(json.dumps(coco))
    return folder


@pytest.fixture(scope="module")
def bench(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    build_benchmark(photos, out, captions=photos.parent / "captions.json", seed=5, size=SIZE)
    return out


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_writes_a_deterministic_benchmark(photos, bench, tmp_path):
    manifest = json.loads((bench / MANIFEST).read_text())
    assert manifest["count"] == 3 and [e["name"] for e in manifest["images"]] == sorted(PHOTOS)
    entries = {e["name"]: e for e in manifest["images"]}
    assert entries["astronaut"]["caption"] == "an astronaut in a white suit"  # first COCO caption, stripped
    assert entries["coffee"]["caption"] == "a cup of coffee" and entries["chelsea"]["caption"] == ""
    for entry in manifest["images"]:
        clean, degraded = load_image(bench / entry["clean"]), load_image(bench / entry["degraded"])
        assert clean.shape == degraded.shape == (1, 3, SIZE, SIZE)
        assert float((clean - degraded).abs().mean()) > 0.01
        request = parse(entry["restoration_prompt"])
        assert {k: getattr(request, k) for k in ("upsample", "deblur", "denoise", "dejpeg")} == entry["prompted"]
    # the same inputs and seed give byte-identical files; another seed gives other degradations
    again = build_benchmark(photos, tmp_path / "again", captions=photos.parent / "captions.json", seed=5, size=SIZE)
    assert files(tmp_path / "again") == files(bench)
    assert len(again.images) == 3
    other = build_benchmark(photos, tmp_path / "other", captions=photos.parent / "captions.json", seed=6, size=SIZE)
    assert [i.params for i in other.images] != [e["params"] for e in manifest["images"]]
    # an image's draw depends on (seed, name) only: a folder without one photo leaves the others unchanged
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for name in ("astronaut.png", "chelsea.png"):
        shutil.copy(photos / name, fewer / name)
    subset = build_benchmark(fewer, tmp_path / "subset", seed=5, size=SIZE)
    for image in subset.images:
        assert image.params == entries[image.name]["params"]
        assert (tmp_path / "subset" / image.degraded).read_bytes() == (bench / image.degraded).read_bytes()


def test_build_refuses_bad_input(photos, tmp_path):
    with pytest.raises(BenchmarkError, match="not a folder"):
        build_benchmark(tmp_path / "missing", tmp_path / "out")
    twins = tmp_path / "twins"
    twins.mkdir()
    shutil.copy(photos / "astronaut.png", twins / "a.png")
    shutil.copy(photos / "coffee.jpg", twins / "a.jpg")
    with pytest.raises(BenchmarkError, match="share the name 'a'"):
        build_benchmark(twins, tmp_path / "out")
    with pytest.raises(BenchmarkError, match="has no manifest.json"):
        load_manifest(tmp_path)


def perturbed_outputs(bench: Path, folder: Path) -> Path:
    """Restored stand-ins: each clean image plus a little seeded noise, saved as NAME.png."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for image in load_manifest(bench).images:
        clean = load_image(bench / image.clean)
        save_image((clean + 0.03 * torch.randn(clean.shape, generator=g)).clamp(0, 1)[0], folder / f"{image.name}.png")
    return folder


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    import csv

    with path.open() as f:
        return {row["name"]: row for row in csv.DictReader(f)}


def test_score_equals_direct_metric_calls_and_writes_the_report(bench, tmp_path):
    outputs = perturbed_outputs(bench, tmp_path / "outputs")
    assert main(["score", "--bench", str(bench), "--outputs", str(outputs), "--report", str(tmp_path / "r")]) == 0
    rows = read_csv(tmp_path / "r" / "metrics.csv")
    psnrs, ssims = [], []
    for image in load_manifest(bench).images:
        clean = load_image(bench / image.clean)
        restored = load_image(outputs / f"{image.name}.png")
        degraded = load_image(bench / image.degraded)
        row = rows[image.name]
        assert float(row["psnr"]) == pytest.approx(float(psnr_per_image(restored, clean)[0]), abs=1e-9)
        assert float(row["ssim"]) == pytest.approx(float(ssim(restored, clean)[0]), abs=1e-9)
        assert float(row["psnr_degraded"]) == pytest.approx(float(psnr_per_image(degraded, clean)[0]), abs=1e-9)
        assert float(row["ssim_degraded"]) == pytest.approx(float(ssim(degraded, clean)[0]), abs=1e-9)
        assert row["lpips"] == "" and row["restoration_prompt"] == image.restoration_prompt
        assert row["deblur"] == ("" if image.prompted["deblur"] is None else str(image.prompted["deblur"]))
        psnrs.append(float(row["psnr"]))
        ssims.append(float(row["ssim"]))
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["count"] == 3
    assert summary["metrics"]["psnr"]["restored"] == pytest.approx(sum(psnrs) / 3, abs=1e-9)
    assert summary["metrics"]["ssim"]["restored"] == pytest.approx(sum(ssims) / 3, abs=1e-9)
    assert summary["metrics"]["psnr"]["restored"] > summary["metrics"]["psnr"]["degraded"] + 5
    assert summary["metrics"]["lpips"] is None and summary["fid"] is None
    assert LPIPS_MISSING in summary["notes"] and FID_MISSING in summary["notes"]
    markdown = (tmp_path / "r" / "summary.md").read_text()
    assert (
        f"| PSNR (dB), higher is better | {summary['metrics']['psnr']['degraded']:.2f} | {sum(psnrs) / 3:.2f} |"
        in markdown
    )
    assert "LPIPS not computed" in markdown and "FID not computed" in markdown
    plots = sorted(p.name for p in (tmp_path / "r").glob("plot_*.png"))
    named = {k for image in load_manifest(bench).images for k, v in image.prompted.items() if v is not None}
    assert plots == sorted(f"plot_{k}.png" for k in named) and {"plot_deblur.png", "plot_denoise.png"} <= set(plots)
    for plot in plots:
        data = (tmp_path / "r" / plot).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
        with Image.open(tmp_path / "r" / plot) as opened:
            assert opened.size[0] > 300 and opened.size[1] > 200
    assert set(summary["files"]) == {"metrics.csv", "summary.json", "summary.md", *plots}


def test_restored_equal_to_clean_scores_inf_and_one(bench, tmp_path):
    outputs = tmp_path / "same"
    outputs.mkdir()
    for image in load_manifest(bench).images:
        shutil.copy(bench / image.clean, outputs / f"{image.name}.png")
    assert main(["score", "--bench", str(bench), "--outputs", str(outputs)]) == 0
    rows = read_csv(outputs / "metrics.csv")
    assert all(row["psnr"] == "inf" and float(row["ssim"]) == 1.0 for row in rows.values())
    summary = json.loads((outputs / "summary.json").read_text())
    assert summary["metrics"]["psnr"]["restored"] == "inf" and math.isinf(float(summary["metrics"]["psnr"]["restored"]))
    assert summary["metrics"]["ssim"]["restored"] == 1.0
    assert "| PSNR (dB), higher is better |" in (outputs / "summary.md").read_text()


def test_lpips_only_from_a_local_file(bench, tmp_path, capsys):
    outputs = perturbed_outputs(bench, tmp_path / "outputs")
    missing = tmp_path / LPIPS_FILENAME
    args = ["score", "--bench", str(bench), "--outputs", str(outputs), "--lpips", str(missing)]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert f"LPIPS needs its weights at {missing}" in error and "LPIPS_CONVERSION" in error
    assert not (outputs / "metrics.csv").exists()
    # with a file in the documented layout (random weights here) LPIPS is scored and equals a direct call
    from spire_core.eval.metrics import _expected_shapes

    g = torch.Generator().manual_seed(0)
    save_file({k: torch.rand(s, generator=g) * 0.1 for k, s in _expected_shapes().items()}, str(missing))
    assert main(args) == 0
    network = load_lpips(missing)
    rows = read_csv(outputs / "metrics.csv")
    for image in load_manifest(bench).images:
        clean, restored = load_image(bench / image.clean), load_image(outputs / f"{image.name}.png")
        assert float(rows[image.name]["lpips"]) == pytest.approx(float(network(restored, clean)[0]), abs=1e-9)
    summary = json.loads((outputs / "summary.json").read_text())
    assert summary["metrics"]["lpips"]["restored"] > 0 and LPIPS_MISSING not in summary["notes"]


def test_comfyui_numbered_outputs_are_matched_in_manifest_order(bench, tmp_path):
    outputs = perturbed_outputs(bench, tmp_path / "named")
    comfy = tmp_path / "comfy"
    comfy.mkdir()
    names = [image.name for image in load_manifest(bench).images]
    for counter, name in enumerate(names, start=7):
        shutil.copy(outputs / f"{name}.png", comfy / f"spire_benchmark_{counter:05d}_.png")
    (comfy / "other_00001_.png").write_bytes((outputs / f"{names[0]}.png").read_bytes())
    matched = match_outputs(load_manifest(bench), comfy)
    assert [matched[name].name for name in names] == [f"spire_benchmark_{c:05d}_.png" for c in (7, 8, 9)]
    assert main(["score", "--bench", str(bench), "--outputs", str(comfy), "--report", str(tmp_path / "r")]) == 0
    assert main(["score", "--bench", str(bench), "--outputs", str(outputs), "--report", str(tmp_path / "n")]) == 0
    by_order, by_name = read_csv(tmp_path / "r" / "metrics.csv"), read_csv(tmp_path / "n" / "metrics.csv")
    assert all(by_order[n]["psnr"] == by_name[n]["psnr"] for n in names)
    (comfy / "spire_benchmark_00009_.png").unlink()
    with pytest.raises(BenchmarkError, match="no single ComfyUI prefix_00001_.png series has exactly 3 files"):
        match_outputs(load_manifest(bench), comfy)


def test_outputs_of_another_size_need_resize(bench, tmp_path, capsys):
    outputs = perturbed_outputs(bench, tmp_path / "outputs")
    big = load_image(outputs / "coffee.png").repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
    save_image(big[0], outputs / "coffee.png")  # what ComfyUI's Restore gives for "Upsample by 2.0x"
    args = ["score", "--bench", str(bench), "--outputs", str(outputs)]
    assert main(args) == 2
    assert "pass --resize" in capsys.readouterr().err
    assert main([*args, "--resize"]) == 0
    rows = read_csv(outputs / "metrics.csv")
    assert rows["coffee"]["resized_from"] == f"{2 * SIZE}x{2 * SIZE}" and rows["astronaut"]["resized_from"] == ""
    assert float(rows["coffee"]["psnr"]) > 20


def test_frechet_distance_and_feature_files(bench, tmp_path):
    # 1-D Gaussians N(0, 1) and N(1, 4): (0 - 1)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 2
    assert frechet_distance(np.zeros(1), np.eye(1), np.ones(1), 4 * np.eye(1)) == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 4)), rng.normal(loc=0.5, size=(300, 4))
    assert frechet_distance(a.mean(0), np.cov(a, rowvar=False), a.mean(0), np.cov(a, rowvar=False)) == pytest.approx(
        0.0, abs=1e-6
    )
    np.savez(tmp_path / "clean_stats.npz", mu=a.mean(0), sigma=np.cov(a, rowvar=False))  # pytorch-fid --save-stats
    np.save(tmp_path / "restored_features.npy", b)
    mu, sigma, count = load_fid_statistics(tmp_path / "restored_features.npy")
    assert count == 300 and np.allclose(mu, b.mean(0)) and np.allclose(sigma, np.cov(b, rowvar=False))
    expected = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert expected > 0.5  # the means differ by 0.5 in each of 4 dimensions
    outputs = perturbed_outputs(bench, tmp_path / "outputs")
    fid = ["--fid-features", str(tmp_path / "clean_stats.npz"), str(tmp_path / "restored_features.npy")]
    assert main(["score", "--bench", str(bench), "--outputs", str(outputs), *fid]) == 0
    summary = json.loads((outputs / "summary.json").read_text())
    assert summary["fid"] == pytest.approx(expected) and FID_MISSING not in summary["notes"]
    assert any("fewer than 2048 images" in note for note in summary["notes"])
    assert f"| FID, lower is better | | {expected:.2f} | |" in (outputs / "summary.md").read_text()
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


# ------------------------------------------------------------------------ restoring with SpirePipeline


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny diffusers base and a fresh adaptor file for it (an exact identity) plus one with random heads."""
    from spire_core.models import SpireAdaptor, load_base_unet, save_adaptor
    from spire_core.training import write_tiny_base

    folder = tmp_path_factory.mktemp("tiny")
    base = write_tiny_base(folder / "base")
    unet, info = load_base_unet(base)
    fresh = SpireAdaptor.from_unet(unet, prediction_type=info.prediction_type)
    save_adaptor(fresh, folder / "fresh.safetensors")
    save_adaptor(randomize_heads(fresh, seed=3, scale=0.2), folder / "random.safetensors")
    return base, folder / "fresh.safetensors", folder / "random.safetensors"


def test_restore_benchmark_refuses_a_caption_before_restoring_anything(bench, tmp_path, capsys):
    """A caption that cannot be encoded (here a weight of inf) stops ``restore`` before any model loads or any
    image is written, naming the image; the same benchmark in the blind setting (no captions) is not refused."""
    from spire_core.models.prompt_windows import PromptTextError

    manifest = json.loads((bench / MANIFEST).read_text())
    manifest["images"][1]["caption"] = "a cup of (coffee:inf)"
    edited = tmp_path / "edited"
    shutil.copytree(bench, edited)
    (edited / MANIFEST).write_text(json.dumps(manifest))
    out = tmp_path / "restored"
    name = manifest["images"][1]["name"]
    with pytest.raises(PromptTextError, match=rf"{name}'s caption: prompt weight 'inf' .* not a finite number"):
        restore_benchmark(None, edited, out, setting="full")  # no pipeline is needed to refuse it
    assert not out.exists() or not any(out.iterdir())
    args = ["restore", "--bench", str(edited), "--base", "missing", "--adaptor", "missing", "--out", str(out)]
    assert main(args) == 2 and "not a finite number" in capsys.readouterr().err
    check_captions(load_manifest(edited), "blind")  # blind: the caption is not used, nothing is refused


def test_restore_benchmark_end_to_end_with_the_pipeline(bench, tiny_models, tmp_path):
    base, fresh, _ = tiny_models
    two = tmp_path / "two"
    two.mkdir()
    manifest = json.loads((bench / MANIFEST).read_text())
    manifest["images"], manifest["count"] = manifest["images"][:2], 2
    (two / MANIFEST).write_text(json.dumps(manifest))
    for entry in manifest["images"]:
        for key in ("clean", "degraded"):
            (two / entry[key]).parent.mkdir(exist_ok=True)
            shutil.copy(bench / entry[key], two / entry[key])
    out = tmp_path / "restored"
    args = ["restore", "--bench", str(two), "--base", str(base), "--adaptor", str(fresh), "--out", str(out)]
    assert main([*args, "--steps", "2", "--seed", "4"]) == 0
    names = [e["name"] for e in manifest["images"]]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{n}.png" for n in names)
    settings = json.loads((out / "restore.json").read_text())
    assert settings["steps"] == 2 and settings["setting"] == "full" and settings["sampler"] == "ddim"
    from spire_core.eval.__main__ import SCHEDULES
    from spire_core.restoration.pipeline import COMFY_SIMPLE_SCHEDULE, SpirePipeline

    assert SCHEDULES["comfyui-simple"] == COMFY_SIMPLE_SCHEDULE

    pipe = SpirePipeline.load(base, fresh)
    for entry in manifest["images"]:
        written = load_image(out / f"{entry['name']}.png")
        assert written.shape == (1, 3, SIZE, SIZE)  # "Upsample by Nx" does not enlarge benchmark images
        restoration, semantic = prompts_for(load_manifest(two).images[names.index(entry["name"])], "full")
        assert restoration == entry["restoration_prompt"] and semantic == entry["caption"]
        direct = pipe.restore(
            load_image(two / entry["degraded"]), semantic, restoration, steps=2, seed=4, upsample=False
        )
        assert float((direct - written).abs().max()) <= 0.5 / 255 + 1e-6  # the PNG holds the same image, 8-bit
    assert main(["score", "--bench", str(two), "--outputs", str(out)]) == 0
    assert len(read_csv(out / "metrics.csv")) == 2


def test_pipeline_sizes_noise_and_samplers(tiny_models, coffee):
    from spire_core.restoration.pipeline import COMFY_SIMPLE_SCHEDULE, SpirePipeline

    base, fresh, random = tiny_models
    pipe = SpirePipeline.load(base, random)
    image = torch.nn.functional.interpolate(coffee, size=(27, 37), mode="area")  # odd size: padded, cropped back
    kwargs = {"steps": 2, "seed": 11, "semantic_scale": 3.0}
    out = pipe.restore(image, "a photo", "Deblur with sigma 1.0", **kwargs)
    assert out.shape == (1, 3, 27, 37) and float(out.min()) >= 0 and float(out.max()) <= 1
    # the default noise is torch.randn from a CPU Generator seeded with `seed` (= ComfyUI's prepare_noise)
    noise = torch.randn(pipe.noise_shape(1, 32, 40), generator=torch.Generator().manual_seed(11))
    assert torch.equal(
        pipe.restore(image, "a photo", "Deblur with sigma 1.0", **{**kwargs, "seed": 0}, noise=noise), out
    )
    up = pipe.restore(image, "", "Upsample by 2.0x; Denoise with sigma 0.05", steps=1)
    assert up.shape == (1, 3, 54, 74)
    assert pipe.restore(image, "", "Upsample by 2.0x", steps=1, upsample=False).shape == (1, 3, 27, 37)
    # DDIM (eta 0) and Euler are one method in two coordinate systems: same result on the same timesteps
    ddim = pipe.restore(
        image, "a photo", BLIND_PROMPT, sampler="ddim", scheduler_options=COMFY_SIMPLE_SCHEDULE, **kwargs
    )
    euler = pipe.restore(
        image, "a photo", BLIND_PROMPT, sampler="euler", scheduler_options=COMFY_SIMPLE_SCHEDULE, **kwargs
    )
    assert float((ddim - euler).abs().max()) <= 1e-4
    # the adaptor acts: another restoration prompt, or strength 0, changes the result
    assert float((pipe.restore(image, "a photo", BLIND_PROMPT, **kwargs) - out).abs().max()) > 1e-3
    assert (
        float((pipe.restore(image, "a photo", "Deblur with sigma 1.0", strength=0.0, **kwargs) - out).abs().max())
        > 1e-3
    )
    # a fresh adaptor is an exact identity: strength does not matter
    identity = SpirePipeline.load(base, fresh)
    assert torch.equal(identity.restore(image, **kwargs), identity.restore(image, strength=0.0, **kwargs))
    with pytest.raises(ValueError, match="restoration_prompt"):
        pipe.restore(image, restoration_prompt="Make it pretty", steps=1)
    with pytest.raises(ValueError, match="sampler 'heun' is unknown"):
        pipe.restore(image, steps=1, sampler="heun")
    with pytest.raises(ValueError, match="noise has shape"):
        pipe.restore(image, steps=1, noise=torch.zeros(1, 4, 3, 3))


def test_pipeline_tiles_like_the_node(tiny_models, coffee):
    """``tile_size`` cuts every model call into overlapping latent tiles with the degraded image cropped to each
    (``spire_core.restoration.tiles``, the node's own helper); a tile as large as the image changes nothing."""
    from spire_core.restoration.pipeline import SpirePipeline

    base, _, random = tiny_models
    pipe = SpirePipeline.load(base, random)
    image = torch.nn.functional.interpolate(coffee, size=(96, 128), mode="area")
    kwargs = {"steps": 2, "seed": 5, "semantic_scale": 2.0}
    whole = pipe.restore(image, "a photo", "Deblur with sigma 1.0", **kwargs)
    assert torch.equal(
        pipe.restore(image, "a photo", "Deblur with sigma 1.0", tile_size=128, tile_overlap=16, **kwargs), whole
    )
    calls = []
    predict = pipe._predict

    def recording(latents, t, scheduler, conditions, hint, *rest):  # noqa: ANN001, ANN002
        calls.append((tuple(latents.shape[-2:]), tuple(hint.shape[-2:])))
        return predict(latents, t, scheduler, conditions, hint, *rest)

    pipe._predict = recording
    tiled = pipe.restore(image, "a photo", "Deblur with sigma 1.0", tile_size=64, tile_overlap=16, **kwargs)
    assert tiled.shape == whole.shape and bool(torch.isfinite(tiled).all())
    # a 12 x 16 latent in tiles of 8 cells overlapping by 2: 2 x 3 tiles per step, each with its 64 px hint
    assert calls == [((8, 8), (64, 64))] * (2 * 6)
    assert float((tiled - whole).abs().mean()) > 0  # the tiles saw less context than the whole image
    with pytest.raises(ValueError, match="tile_overlap"):
        pipe.restore(image, steps=1, tile_size=64, tile_overlap=32)


def test_training_validation_restores_through_the_pipeline(tiny_models, coffee):
    """Validation has no sampler of its own: it is ``SpirePipeline.restore`` with the validation noise stream."""
    from spire_core.models import load_adaptor
    from spire_core.models.components import load_components
    from spire_core.restoration.pipeline import SpirePipeline
    from spire_core.training.seeds import generator_for
    from spire_core.training.validation import restore

    base, _, random = tiny_models
    components, adaptor = load_components(base), load_adaptor(random)
    image = torch.nn.functional.interpolate(coffee, size=(32, 48), mode="area").repeat(2, 1, 1, 1)
    prompts, semantic = ["Deblur with sigma 1.0", "Upsample by 2.0x"], ["a photo", ""]
    adaptor.train()
    out = restore(components, adaptor, image, prompts, semantic, steps=2, guidance_scale=3.0, seed=7)
    assert adaptor.training and all(p.requires_grad for p in adaptor.parameters())  # the run's adaptor untouched
    pipe = SpirePipeline(components, adaptor)
    noise = torch.randn(pipe.noise_shape(2, 32, 48), generator=generator_for(7, "validation-noise"))
    direct = pipe.restore(image, semantic, prompts, steps=2, semantic_scale=3.0, noise=noise, upsample=False)
    assert torch.equal(out, direct) and out.shape == image.shape
    # restoration guidance passes through to the pipeline, and it changes the restoration
    guided = restore(components, adaptor, image, prompts, semantic, steps=2, guidance_scale=3.0, seed=7,
                     restoration_scale=2.5)  # fmt: skip
    direct = pipe.restore(
        image, semantic, prompts, steps=2, semantic_scale=3.0, restoration_scale=2.5, noise=noise, upsample=False
    )
    assert torch.equal(guided, direct) and float((guided - out).abs().mean()) > 1e-4


def test_pipeline_load_errors_teach(tiny_models, tmp_path):
    from spire_core.models import BaseModelFileError
    from spire_core.restoration.pipeline import SpirePipeline

    base, fresh, _ = tiny_models
    with pytest.raises(BaseModelFileError, match="does not exist"):
        SpirePipeline.load(tmp_path / "missing.safetensors", fresh)
    single = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(1)}, str(single))
    with pytest.raises(BaseModelFileError, match="components= \\(--components\\) is needed"):
        SpirePipeline.load(single, fresh)
    with pytest.raises(ValueError, match="not a SPIRE adaptor"):
        SpirePipeline.load(base, base / "unet" / "diffusion_pytorch_model.safetensors")


def test_pipeline_with_a_v_prediction_base(tmp_path):
    from spire_core.models import SpireAdaptor, load_base_unet
    from spire_core.restoration.pipeline import COMFY_SIMPLE_SCHEDULE, SpirePipeline
    from spire_core.training import write_tiny_base

    base = write_tiny_base(tmp_path / "sd2v", family="sd2", prediction_type="v_prediction")
    unet, info = load_base_unet(base)
    assert info.prediction_type == "v_prediction"
    adaptor = SpireAdaptor.from_unet(unet, prediction_type=info.prediction_type)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adaptor.head_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    pipe = SpirePipeline.load(base, adaptor)
    image = torch.rand(1, 3, 32, 32, generator=g)
    simple = {"steps": 2, "seed": 1, "scheduler_options": COMFY_SIMPLE_SCHEDULE}
    ddim = pipe.restore(image, "a photo", "Denoise with sigma 0.10", sampler="ddim", **simple)
    euler = pipe.restore(image, "a photo", "Denoise with sigma 0.10", sampler="euler", **simple)
    assert ddim.shape == (1, 3, 32, 32) and float((ddim - euler).abs().max()) <= 1e-4


def test_progress_bars_leave_build_and_score_output_unchanged(photos, bench, tmp_path, monkeypatch, capsys):
    outputs = perturbed_outputs(bench, tmp_path / "outputs")
    build = ["build", "--images", str(photos), "--captions", str(photos.parent / "captions.json"), "--seed", "5"]
    build += ["--size", str(SIZE), "--out", str(tmp_path / "bench")]
    score = ["score", "--bench", str(bench), "--outputs", str(outputs), "--report", str(tmp_path / "report")]
    runs = {}
    for forced in ("0", "1"):
        monkeypatch.setenv("SPIRE_PROGRESS", forced)
        capsys.readouterr()
        assert main(build) == 0
        built = capsys.readouterr()
        assert main(score) == 0
        scored = capsys.readouterr()
        runs[forced] = (built, scored, files(tmp_path / "bench"), files(tmp_path / "report"))
    (built_off, scored_off, bench_off, report_off), (built_on, scored_on, bench_on, report_on) = runs["0"], runs["1"]
    assert built_on.out == built_off.out and scored_on.out == scored_off.out  # stdout byte for byte
    lines = built_on.out.splitlines()
    assert len(lines) == 4 and lines[-1] == f"wrote 3 images and manifest.json to {tmp_path / 'bench'}"
    assert bench_on == bench_off == files(bench)  # the same benchmark files as the fixture's
    assert report_on == report_off and {"metrics.csv", "summary.json", "summary.md"} <= set(report_on)
    assert re.search(r"build: 100%\|#+\| 3/3 \[", built_on.err)  # one count per image, on stderr
    assert re.search(r"score: 100%\|#+\| 3/3 \[", scored_on.err)
    assert "build:" not in built_off.err and "score:" not in scored_off.err
