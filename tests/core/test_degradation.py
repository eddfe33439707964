"""Degradation synthesis on real photos: each operation against an independent implementation,
determinism, batching, odd inputs, the prompt each degradation implies, and partial requests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image

from spire_core.degradation import (
    KERNEL_TYPES,
    PRESETS,
    BlurParams,
    DegradationParams,
    JpegParams,
    NoiseParams,
    ResizeParams,
    StageParams,
    degrade,
    degrade_partial,
    effective_request,
    get_preset,
    kernel_sigma,
    kernel_size_for,
    make_kernel,
    manual_params,
    params_list_from_json,
    params_list_to_json,
    prompt_for,
    sample_params,
)
from spire_core.degradation.ops import (
    POISSON_PEAK,
    apply_blur,
    apply_resize,
    jpeg_roundtrip_uint8,
    resize_matrix,
    sample_poisson_counts,
)
from spire_core.eval.metrics import psnr


def one_stage(**ops) -> DegradationParams:
    return DegradationParams(stages=(StageParams(**ops),))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- noise ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.02, 0.08, 0.12])
@pytest.mark.parametrize("gray", [False, True])
def test_gaussian_noise_std_matches_sigma(sigma, gray):
    grey_image = torch.full((1, 3, 384, 384), 0.5)  # mid-grey: no clipping below 4 sigma
    out = degrade(grey_image, one_stage(noise=NoiseParams(kind="gaussian", seed=7, sigma=sigma, gray=gray))).images
    residual = out - grey_image
    assert abs(residual.std().item() - sigma) / sigma < 0.05
    assert abs(residual.mean().item()) < 0.05 * sigma
    if gray:
        assert torch.equal(residual[:, 0], residual[:, 1]) and torch.equal(residual[:, 1], residual[:, 2])
    else:
        assert not torch.equal(residual[:, 0], residual[:, 1])


def test_noise_on_a_real_photo_unclipped_region(astronaut):
    sigma = 0.05
    out = degrade(astronaut, one_stage(noise=NoiseParams(kind="gaussian", seed=3, sigma=sigma))).images
    # only pixels at least 4 sigma away from 0 and 1 are free of clipping
    safe = (astronaut > 4 * sigma) & (astronaut < 1 - 4 * sigma)
    residual = (out - astronaut)[safe]
    assert abs(residual.std().item() - sigma) / sigma < 0.05


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_poisson_noise_std_follows_intensity(scale):
    levels = torch.tensor([0.1, 0.3, 0.5, 0.7])
    image = levels.view(1, 1, 4, 1, 1).expand(1, 1, 4, 128, 512).reshape(1, 1, 512, 512).repeat(1, 3, 1, 1).contiguous()
    out = degrade(image, one_stage(noise=NoiseParams(kind="poisson", seed=11, scale=scale))).images
    residual = out - image
    for i, v in enumerate(levels.tolist()):
        band = residual[:, :, i * 128 : (i + 1) * 128]
        expected = scale * math.sqrt(v / POISSON_PEAK)
        assert abs(band.std().item() - expected) / expected < 0.05, (v, band.std().item(), expected)


def test_poisson_sampler_matches_the_poisson_pmf():
    for rate in (1, 4, 30, 200):
        counts = sample_poisson_counts(torch.full((400_000,), rate, dtype=torch.int32), gen(rate))
        observed = torch.bincount(counts.long(), minlength=400)[:400].double() / counts.numel()
        k = torch.arange(400, dtype=torch.float64)
        expected = torch.exp(k * math.log(rate) - rate - torch.lgamma(k + 1))
        # 6 standard errors of a binomial proportion
        tolerance = 6 * torch.sqrt(expected * (1 - expected) / counts.numel()) + 1e-6
        assert bool(((observed - expected).abs() <= tolerance).all()), rate
        assert abs(counts.double().mean().item() - rate) < 0.02 * rate + 0.01


# --- blur -------------------------------------------------------------------------------------------


BLUR_CASES = [
    BlurParams(kernel="iso", size=kernel_size_for("iso", sigma=2.0), sigma_x=2.0, sigma_y=2.0),
    BlurParams(kernel="iso", size=kernel_size_for("iso", sigma=6.0), sigma_x=6.0, sigma_y=6.0),
    BlurParams(kernel="aniso", size=kernel_size_for("aniso", sigma=3.0), sigma_x=3.0, sigma_y=1.0, angle=30.0),
    BlurParams(kernel="generalized_iso", size=15, sigma_x=2.0, sigma_y=2.0, beta=0.7),
    BlurParams(kernel="generalized_aniso", size=25, sigma_x=3.5, sigma_y=1.2, angle=100.0, beta=2.5),
    BlurParams(kernel="plateau_iso", size=13, sigma_x=1.5, sigma_y=1.5, beta=1.5),
    BlurParams(kernel="plateau_aniso", size=31, sigma_x=4.0, sigma_y=2.0, angle=60.0, beta=1.2),
    BlurParams(kernel="sinc", size=kernel_size_for("sinc", cutoff=1.2), cutoff=1.2),
    BlurParams(kernel="motion", size=kernel_size_for("motion", length=9.0), length=9.0, angle=35.0),
]


def test_every_kernel_type_is_covered():
    assert {case.kernel for case in BLUR_CASES} == set(KERNEL_TYPES)


@pytest.mark.parametrize("blur", BLUR_CASES, ids=lambda b: f"{b.kernel}-{b.size}")
def test_blur_equals_correlation_with_the_documented_kernel(blur, coffee):
    kernel = make_kernel(blur)
    assert kernel.shape == (blur.size, blur.size)
    assert abs(kernel.sum().item() - 1) < 1e-12
    assert torch.allclose(kernel, kernel.flip(0, 1))  # point-symmetric: correlation == convolution
    out = degrade(coffee, one_stage(blur=blur)).images[0]
    k = kernel.numpy()
    expected = np.stack([scipy.ndimage.correlate(coffee[0, c].double().numpy(), k, mode="mirror") for c in range(3)])
    expected = np.clip(expected, 0, 1)
    assert np.abs(out.double().numpy() - expected).max() < 2e-5


def test_gaussian_kernel_shape_follows_sigma():
    iso = make_kernel(BLUR_CASES[0])
    r = torch.arange(iso.shape[0], dtype=torch.float64) - iso.shape[0] // 2
    taps = torch.exp(-0.5 * (r / 2.0) ** 2)
    assert torch.allclose(iso, torch.outer(taps, taps) / torch.outer(taps, taps).sum())
    assert kernel_size_for("iso", sigma=6.0) == 37 and kernel_size_for("iso", sigma=0.2) == 3


@pytest.mark.parametrize(
    ("blur", "expected"),
    [
        (BLUR_CASES[0], 2.0),
        (BLUR_CASES[2], math.sqrt((9 + 1) / 2)),
        (BlurParams(kernel="generalized_iso", size=41, sigma_x=2.0, sigma_y=2.0, beta=1.0), 2.0),
        (BLUR_CASES[7], math.sqrt(2 * math.log(2)) / 1.2),
        (BLUR_CASES[8], 9 / math.sqrt(24)),
    ],
)
def test_kernel_sigma_rule(blur, expected):
    assert kernel_sigma(blur) == pytest.approx(expected, rel=1e-9)


def test_generalized_and_plateau_sigma_are_measured_spreads():
    # generalized: analytic spread of the untruncated kernel == measured spread of a wide sampling
    wide = BlurParams(kernel="generalized_iso", size=63, sigma_x=2.0, sigma_y=2.0, beta=2.0)
    k = make_kernel(wide)
    r = torch.arange(63, dtype=torch.float64) - 31
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    measured = math.sqrt(float((k * (xx**2 + yy**2)).sum()) / 2)
    assert kernel_sigma(wide) == pytest.approx(measured, rel=1e-3)  # grid sampling vs the integral
    plateau = BLUR_CASES[5]
    kp = make_kernel(plateau)
    r = torch.arange(plateau.size, dtype=torch.float64) - plateau.size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    assert kernel_sigma(plateau) == pytest.approx(math.sqrt(float((kp * (xx**2 + yy**2)).sum()) / 2), rel=1e-9)


# --- resize -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["area", "bilinear", "bicubic"])
def test_resize_matches_pillow_antialiased(mode, chelsea):
    pil_filter = {
        "area": Image.Resampling.BOX,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
    }[mode]
    for size in [(97, 143), (300, 451), (420, 700), (337, 507), (600, 902)]:  # shrink, same, enlarge
        out = apply_resize(chelsea, size, mode)[0]
        assert out.shape == (3, *size)
        for c in range(3):
            ref = Image.fromarray(chelsea[0, c].numpy(), mode="F").resize(size[::-1], pil_filter)
            assert np.abs(out[c].numpy() - np.asarray(ref)).max() < 1e-5


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_torch_antialias_equals_the_resize_matrices(mode):
    x = torch.rand(1, 1, 61, 47, dtype=torch.float64, generator=gen(2))
    for size in [(20, 31), (61, 47), (150, 90)]:
        ours = resize_matrix(61, size[0], mode) @ x[0, 0] @ resize_matrix(47, size[1], mode).T
        assert torch.allclose(apply_resize(x, size, mode)[0, 0], ours, atol=1e-12)


def test_resize_stage_sizes_and_back_to_input(coffee):
    scale = 0.25
    params = one_stage(resize=ResizeParams(scale=scale, interpolation="bicubic"))
    out = degrade(coffee, params).images
    assert out.shape == coffee.shape
    small = apply_resize(coffee, (100, 150), "bicubic")
    assert torch.allclose(out, apply_resize(small, (400, 600), "bicubic").clamp(0, 1), atol=1e-6)
    # a 4x shrink and back loses detail: the result is far from the photo, but still the photo
    assert 20 < psnr(out, coffee) < 35


# --- JPEG -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", [10, 50, 95])
def test_jpeg_matches_an_independent_libjpeg_encode(quality, astronaut):
    import cv2

    out = degrade(astronaut, one_stage(jpeg=JpegParams(quality=quality))).images[0]
    pixels = np.clip(np.round(astronaut[0].permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", pixels[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    independent = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255
    ours = out.permute(1, 2, 0).numpy()
    assert psnr(torch.from_numpy(ours), torch.from_numpy(independent)) > 50
    assert np.abs(ours * 255 - independent * 255).max() <= 2
    # and it is a real lossy codec: lower quality, lower fidelity
    assert psnr(out.unsqueeze(0), astronaut) < 45


def test_jpeg_clips_overshoot_before_the_8_bit_cast():
    """A sinc blur rings past 0 and 1 at hard edges; with no noise stage to clip, JPEG must clip (as the
    reference does) rather than wrap the 8-bit samples."""
    from spire_core.bench.reference import reference_degrade_one

    edges = torch.zeros(1, 3, 64, 64)
    edges[..., 16:48, 16:48] = 1.0
    params = one_stage(blur=BlurParams(kernel="sinc", size=21, cutoff=0.6), jpeg=JpegParams(quality=95))
    raw = apply_blur(edges, [make_kernel(params.stages[0].blur)])
    assert raw.min() < -0.02 and raw.max() > 1.02  # the ringing really leaves [0, 1]
    out = degrade(edges, params).images[0].permute(1, 2, 0)
    ref = torch.from_numpy(reference_degrade_one(edges[0].permute(1, 2, 0).numpy(), params))
    assert psnr(out, ref) > 50


def test_jpeg_quality_is_per_item(astronaut):
    batch = astronaut.repeat(3, 1, 1, 1)
    params = [one_stage(jpeg=JpegParams(quality=q)) for q in (10, 50, 95)]
    out = degrade(batch, params).images
    fidelity = [psnr(out[i : i + 1], astronaut) for i in range(3)]
    assert fidelity[0] < fidelity[1] < fidelity[2]
    single = jpeg_roundtrip_uint8(
        np.clip(np.round(astronaut[0].permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8), 50
    )
    assert np.array_equal((out[1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), single)


# --- determinism, batching, presets ----------------------------------------------------------------


def test_same_seed_same_params_and_bytes(astronaut):
    batch = astronaut.repeat(4, 1, 1, 1)
    a = sample_params(PRESETS["paper"], gen(123), 4)
    b = sample_params(PRESETS["paper"], gen(123), 4)
    assert a == b
    out_a = degrade(batch, a).images
    out_b = degrade(batch, b).images
    assert torch.equal(out_a, out_b)
    c = sample_params(PRESETS["paper"], gen(124), 4)
    assert c != a


def test_batch_items_get_different_params_and_match_single_runs(astronaut, coffee):
    crop = coffee[..., :256, :256]
    batch = torch.cat([astronaut[..., :256, :256], crop, crop])
    params = sample_params(PRESETS["paper"], gen(5), 3)
    assert len({p.to_json() for p in params}) == 3
    out = degrade(batch, params).images
    for i in range(3):
        assert torch.equal(out[i : i + 1], degrade(batch[i : i + 1], params[i]).images)
    assert not torch.equal(out[1], out[2])  # same image, different params


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bytes_do_not_depend_on_the_thread_count(astronaut, restore_threads):
    """CPU items run side by side with the intra-op threads shared out among them, so one item may be
    computed on 1 thread in a batch and on several alone: every operation must give the same bits."""
    crops = torch.cat([astronaut[..., :256, :256], astronaut[..., 256:, 256:], astronaut[..., :256, 256:]])
    params = sample_params(PRESETS["paper"], gen(11), 3)
    # and one draw through every operation whose kernels might split work by thread
    params.append(
        DegradationParams(
            stages=(
                StageParams(
                    blur=BlurParams(kernel="aniso", size=5, sigma_x=1.5, sigma_y=0.5, angle=20.0),
                    resize=ResizeParams(scale=1.3, interpolation="area"),
                    noise=NoiseParams(kind="poisson", scale=1.5, gray=False, seed=4),
                    jpeg=JpegParams(quality=70),
                ),
                StageParams(
                    blur=BlurParams(kernel="sinc", size=11, cutoff=1.5),
                    resize=ResizeParams(scale=0.5, interpolation="bicubic"),
                    noise=NoiseParams(kind="gaussian", sigma=0.05, gray=True, seed=5),
                ),
            ),
            final_interpolation="bilinear",
        )
    )
    crops = torch.cat([crops, astronaut[..., 100:356, 50:306]])
    torch.set_num_threads(1)
    expected = degrade(crops, params).images
    for threads in (2, 3, 4):
        torch.set_num_threads(threads)
        assert torch.equal(degrade(crops, params).images, expected), threads
        for i in (0, 3):
            assert torch.equal(degrade(crops[i : i + 1], params[i]).images, expected[i : i + 1]), (threads, i)
    assert torch.get_num_threads() == 4  # the caller's setting survives the call


def test_params_json_round_trip():
    params = sample_params(PRESETS["heavy"], gen(9), 8)
    assert params_list_from_json(params_list_to_json(params)) == params
    for p in params:
        assert DegradationParams.from_json(p.to_json()) == p
    with pytest.raises(ValueError, match="version"):
        DegradationParams.from_dict({"version": 99, "stages": []})
    with pytest.raises(ValueError, match="unknown operations"):
        DegradationParams.from_dict({"version": 1, "stages": [{"sharpen": {}}]})


def test_presets_exist_and_paper_is_two_stage():
    for name in ("paper", "light", "heavy", "blur", "noise", "jpeg", "downsample", "motion_blur", "blur_noise"):
        assert get_preset(name).name == name
    paper = PRESETS["paper"]
    assert len(paper.stages) == 2
    assert paper.stages[0].resize.prob == 0.5
    with pytest.raises(ValueError, match="expected one of"):
        get_preset("nope")


def test_paper_preset_statistics():
    params = sample_params(PRESETS["paper"], gen(0), 2000)
    skipped = sum(p.stages[0].resize is None for p in params) / len(params)
    # skipped with P = 0.5, plus "keep" draws (0.1 of the remaining half)
    assert 0.52 < skipped < 0.58
    kernels = [p.stages[0].blur.kernel for p in params]
    assert 0.07 < kernels.count("sinc") / len(kernels) < 0.13
    sigmas = [p.stages[0].blur.sigma_x for p in params if p.stages[0].blur.kernel == "iso"]
    assert max(sigmas) > 5.5 and min(sigmas) < 0.5
    noise = [p.stages[0].noise.sigma for p in params if p.stages[0].noise.kind == "gaussian"]
    assert max(noise) > 0.23


def test_every_paper_draw_renders_a_valid_prompt():
    from spire_core.prompt import parse

    for p in sample_params(PRESETS["paper"], gen(77), 500):
        text = prompt_for(p)
        assert text  # noise and JPEG always happen in the paper preset
        parse(text)


# --- odd inputs ------------------------------------------------------------------------------------


def test_odd_sizes_tiny_grey_and_rgba(coffee, camera):
    params = sample_params(PRESETS["paper"], gen(1), 1)[0]
    odd = coffee[..., :333, :517].contiguous()
    assert degrade(odd, params).images.shape == (1, 3, 333, 517)
    tiny = coffee[..., :8, :8].contiguous()
    out = degrade(tiny, sample_params(PRESETS["heavy"], gen(2), 1)).images
    assert out.shape == tiny.shape and bool(torch.isfinite(out).all())
    grey = degrade(camera, params).images
    assert grey.shape == camera.shape and 15 < psnr(grey, camera) < 40
    alpha = torch.linspace(0, 1, 333 * 517).view(1, 1, 333, 517)
    rgba = torch.cat([odd, alpha], dim=1)
    out = degrade(rgba, params).images
    assert out.shape == rgba.shape
    assert torch.equal(out[:, 3:], alpha)
    assert torch.equal(out[:, :3], degrade(odd, params).images)


def test_dtype_and_input_untouched(astronaut):
    params = sample_params(PRESETS["paper"], gen(1), 1)
    before = astronaut.clone()
    half = degrade(astronaut.double(), params).images
    assert half.dtype == torch.float64
    assert torch.equal(astronaut, before)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.linspace(0.5, 1.5, 192).view(1, 3, 8, 8), r"values in \[0.5, 1.5\]"),
        (torch.full((1, 3, 8, 8), -0.1), "expected \\[0, 1\\]"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.zeros(1, 8, 8, 3), "has 8 channels"),
        (torch.zeros(3, 8, 8), "4 dims"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "divide 8-bit images by 255"),
        (torch.zeros(0, 3, 8, 8), "empty"),
    ],
)
def test_bad_images_raise_clear_errors(images, message):
    params = manual_params(noise_sigma=0.1)
    with pytest.raises((ValueError, TypeError), match=message):
        degrade(images, params)


def test_wrong_number_of_params(astronaut):
    with pytest.raises(ValueError, match="2 params for a batch of 1"):
        degrade(astronaut, [manual_params(noise_sigma=0.1)] * 2)


# --- the prompt each degradation implies -----------------------------------------------------------


def test_manual_params_prompt_names_exactly_the_numbers():
    p = manual_params(blur_sigma=1.5, downscale=4.0, noise_sigma=0.08, jpeg_quality=40, seed=1)
    assert prompt_for(p) == "Upsample by 4.0x; Deblur with sigma 1.5; Denoise with sigma 0.08; Dejpeg with quality 40"
    assert prompt_for(manual_params(noise_sigma=0.24)) == "Denoise with sigma 0.24"
    assert prompt_for(manual_params()) == "Remove all degradation"  # nothing to name: blind, as in training


def test_collapsing_rule_over_two_stages():
    g1 = BlurParams(kernel="iso", size=13, sigma_x=2.0, sigma_y=2.0)
    g2 = BlurParams(kernel="iso", size=5, sigma_x=0.75, sigma_y=0.75)
    params = DegradationParams(
        stages=(
            StageParams(
                blur=g1,
                resize=ResizeParams(scale=0.5),
                noise=NoiseParams(kind="gaussian", seed=1, sigma=0.06),
                jpeg=JpegParams(quality=70),
            ),
            StageParams(
                blur=g2,
                resize=ResizeParams(scale=0.5),
                noise=NoiseParams(kind="gaussian", seed=2, sigma=0.08),
                jpeg=JpegParams(quality=40),
            ),
        )
    )
    request = effective_request(params)
    assert request.upsample == pytest.approx(4.0)
    # the second blur acts at half resolution: 0.75 px there is 1.5 px of the input
    assert request.deblur == pytest.approx(math.sqrt(2.0**2 + 1.5**2))
    assert request.denoise == pytest.approx(0.1)
    assert request.dejpeg == 40
    assert (
        prompt_for(params) == "Upsample by 4.0x; Deblur with sigma 2.5; Denoise with sigma 0.10; Dejpeg with quality 40"
    )


def test_upscaling_and_negligible_strengths_are_not_named():
    params = one_stage(resize=ResizeParams(scale=1.3), noise=NoiseParams(kind="gaussian", seed=0, sigma=0.001))
    assert effective_request(params).is_empty()


# --- partial requests ------------------------------------------------------------------------------


def test_partial_request_target_keeps_unnamed_degradations(astronaut):
    params = [manual_params(blur_sigma=2.0, noise_sigma=0.1, seed=4)]
    part = degrade_partial(astronaut, params, ["denoise"])
    assert part.prompts == ("Denoise with sigma 0.10",)
    blurred_only = degrade(astronaut, manual_params(blur_sigma=2.0)).images
    assert torch.equal(part.target, blurred_only)
    assert torch.equal(part.degraded, degrade(astronaut, params).images)
    part = degrade_partial(astronaut, params, ["deblur"])
    assert part.prompts == ("Deblur with sigma 2.0",)
    # the target keeps exactly the same noise field the input has (same seed), without the blur
    noisy_only = degrade(astronaut, manual_params(noise_sigma=0.1, seed=4)).images
    assert torch.equal(part.target, noisy_only)
    part = degrade_partial(astronaut, params, ["deblur", "denoise"])
    assert torch.equal(part.target, astronaut)


def test_partial_request_per_item_and_errors(astronaut):
    batch = astronaut[..., :128, :128].repeat(2, 1, 1, 1)
    params = [manual_params(blur_sigma=1.0, jpeg_quality=30), manual_params(noise_sigma=0.05, seed=2)]
    part = degrade_partial(batch, params, [["dejpeg"], ["denoise"]])
    assert part.prompts == ("Dejpeg with quality 30", "Denoise with sigma 0.05")
    assert part.named == (("dejpeg",), ("denoise",))
    with pytest.raises(ValueError, match="none of the named clauses"):
        degrade_partial(batch, params, ["upsample"])
    with pytest.raises(ValueError, match="unknown clause names"):
        degrade_partial(batch, params, ["sharpen"])


# --- devices ---------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_matches_cpu_except_noise(astronaut):
    cuda = torch.device("cuda")
    params = [manual_params(blur_sigma=2.0, downscale=2.0, jpeg_quality=60)]
    cpu_out = degrade(astronaut, params).images
    gpu_out = degrade(astronaut.to(cuda), params).images
    assert gpu_out.device.type == "cuda"
    assert psnr(gpu_out.cpu(), cpu_out) > 45
    noisy = degrade(astronaut.to(cuda), manual_params(noise_sigma=0.1, seed=3)).images
    assert torch.equal(noisy, degrade(astronaut.to(cuda), manual_params(noise_sigma=0.1, seed=3)).images)


def test_pipeline_equals_the_per_image_reference():
    """The batched pipeline and the BasicSR-style per-image reference (OpenCV blur and JPEG, Pillow
    resize) agree on paper-preset draws, with the library's noise fields fed to both."""
    from spire_core.bench.degradation import benchmark_images, check_equality

    generator = gen(3)
    images = benchmark_images(6, 192, generator)
    params = sample_params(PRESETS["paper"], generator, 6)
    report = check_equality(images, params)
    assert report["equal"], report
    assert report["without_jpeg"]["min_psnr_db"] >= 80
