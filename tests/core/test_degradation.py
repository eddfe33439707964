"""Degradation synthesis on real photos: each operation against an independent implementation,
determinism, batching, odd inputs, the prompt each degradation implies, and partial requests."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image

from spire_core.degradation import (
    JPEG_CODECS,
    KERNEL_TYPES,
    PRESETS,
    BlurParams,
    DegradationParams,
    JpegParams,
    NoiseParams,
    ResizeParams,
    StageParams,
    apply_jpeg,
    degrade,
    degrade_partial,
    effective_request,
    get_preset,
    jpeg_codec_distance,
    jpeg_codec_for,
    jpeg_codecs,
    kernel_sigma,
    kernel_size_for,
    make_kernel,
    manual_params,
    params_list_from_json,
    params_list_to_json,
    prompt_for,
    sample_params,
    torchvision_jpeg_problem,
)
from spire_core.degradation import jpeg as jpeg_ops
from spire_core.degradation.blur import apply_blur
from spire_core.degradation.jpeg import jpeg_encode, jpeg_roundtrip_uint8
from spire_core.degradation.jpeg_codecs import to_uint8
from spire_core.degradation.noise import POISSON_PEAK, sample_poisson_counts
from spire_core.degradation.resize import apply_resize, resize_matrix
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


# --- JPEG codecs ------------------------------------------------------------------------------------
# The "torchvision" codec runs the batched path (quantise, one encode per quality, one decode, reassemble)
# that nvjpeg takes on CUDA. It is tested on the CPU through torchvision's own codec where its image
# extension loads, and everywhere through libjpeg-by-Pillow behind the same interface (``stand_in``),
# which must then give the libjpeg path's bytes exactly.


def _pillow_encode(images: list[torch.Tensor], quality: int) -> list[torch.Tensor]:
    return [
        torch.frombuffer(bytearray(jpeg_encode(image.permute(1, 2, 0).cpu().numpy(), quality)), dtype=torch.uint8)
        for image in images
    ]


def _pillow_decode(data: list[torch.Tensor], grey: bool, device: torch.device) -> list[torch.Tensor]:
    out = []
    for item in data:
        with Image.open(io.BytesIO(item.numpy().tobytes())) as image:
            if grey:
                image.draft("L", image.size)  # libjpeg's luma plane, as torchvision's GRAY mode
            pixels = np.array(image)
        out.append(torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1)).permute(2, 0, 1).to(device))
    return out


@pytest.fixture(params=["stand_in", "torchvision"])
def cpu_codec(request, monkeypatch) -> str:
    """Which codec stands behind ``codec="torchvision"`` on the CPU for this test."""
    if request.param == "torchvision":
        problem = torchvision_jpeg_problem("cpu")
        if problem is not None:
            pytest.skip(f"torchvision's CPU JPEG codec is not usable here: {problem}")
    else:
        monkeypatch.setattr(jpeg_codecs, "_probe", lambda device: None)
        monkeypatch.setattr(jpeg_ops, "torchvision_codec", lambda: (_pillow_encode, _pillow_decode))
    return request.param


def _crops(photo: torch.Tensor) -> torch.Tensor:
    """Four different 256 px crops of a 512 px photo, so that a mix-up of items shows."""
    return torch.cat([photo[..., :256, :256], photo[..., 256:, 256:], photo[..., :256, 256:], photo[..., 256:, :256]])


def test_quantisation_matches_the_libjpeg_path():
    """The batched path rounds to 8 bits exactly as the Pillow path does: ties, overshoot and all."""
    values = torch.rand(3, 64, 256, generator=gen(0)) * 1.2 - 0.1
    values[:, 0] = torch.arange(256.0) / 255
    values[:, 1] = (torch.arange(256.0) + 0.5) / 255
    ours = to_uint8(values).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, np.asarray(jpeg_ops._to_pil(values)))


def test_torchvision_codec_keeps_order_and_quality_per_item(astronaut, cpu_codec):
    crops = _crops(astronaut)
    settings = [JpegParams(quality=30), JpegParams(quality=90), None, JpegParams(quality=30)]
    out = apply_jpeg(crops, settings, codec="torchvision")
    assert out.dtype == torch.float32 and out.shape == crops.shape
    assert torch.equal(out[2], crops[2])  # no setting: untouched
    for i in (0, 1, 3):
        assert torch.equal(out[i], apply_jpeg(crops[i : i + 1], [settings[i]], codec="torchvision")[0])
    libjpeg = apply_jpeg(crops, settings, codec="libjpeg")
    for i in (0, 1, 3):
        assert psnr(out[i : i + 1], libjpeg[i : i + 1]) > 40
    assert psnr(out[1:2], crops[1:2]) > psnr(apply_jpeg(crops[1:2], [settings[0]], codec="torchvision"), crops[1:2])
    assert psnr(out[0:1], crops[0:1]) < psnr(apply_jpeg(crops[0:1], [settings[1]], codec="torchvision"), crops[0:1])
    if cpu_codec == "stand_in":
        assert torch.equal(out, libjpeg)


def test_torchvision_path_encodes_once_per_quality_and_decodes_once(astronaut, monkeypatch):
    calls = []

    def encode(images, quality):
        calls.append(("encode", quality, len(images)))
        return _pillow_encode(images, quality)

    def decode(data, grey, device):
        calls.append(("decode", grey, len(data)))
        return _pillow_decode(data, grey, device)

    monkeypatch.setattr(jpeg_codecs, "_probe", lambda device: None)
    monkeypatch.setattr(jpeg_ops, "torchvision_codec", lambda: (encode, decode))
    crops = _crops(astronaut)
    settings = [JpegParams(quality=30), JpegParams(quality=90), None, JpegParams(quality=30)]
    out = apply_jpeg(crops, settings, codec="torchvision")
    assert calls == [("encode", 30, 2), ("encode", 90, 1), ("decode", False, 3)]
    assert torch.equal(out, apply_jpeg(crops, settings, codec="libjpeg"))


@pytest.mark.parametrize("quality", [10, 50, 95])
def test_torchvision_codec_matches_libjpeg_on_photos(quality, astronaut, camera, cpu_codec):
    out = apply_jpeg(astronaut, [JpegParams(quality=quality)], codec="torchvision")
    libjpeg = apply_jpeg(astronaut, [JpegParams(quality=quality)], codec="libjpeg")
    assert psnr(out, libjpeg) > 40
    assert abs(psnr(out, astronaut) - psnr(libjpeg, astronaut)) < 0.5
    grey = apply_jpeg(camera, [JpegParams(quality=quality)], codec="torchvision")
    assert grey.shape == camera.shape
    assert psnr(grey, apply_jpeg(camera, [JpegParams(quality=quality)], codec="libjpeg")) > 40
    if cpu_codec == "stand_in":  # grey coded as three equal channels, read back as luma: libjpeg's grey bytes
        assert torch.equal(out, libjpeg)
        assert torch.equal(grey, apply_jpeg(camera, [JpegParams(quality=quality)], codec="libjpeg"))


def test_jpeg_codec_choice_and_errors(astronaut, monkeypatch):
    assert JPEG_CODECS == ("auto", "libjpeg", "torchvision", "nvjpeg")
    assert jpeg_codec_for(torch.device("cpu")) == "libjpeg" and jpeg_codec_for("cpu") == "libjpeg"
    if not torch.cuda.is_available():
        assert jpeg_codec_for("cuda") == "libjpeg"
    settings = [JpegParams(quality=40)]
    assert torch.equal(apply_jpeg(astronaut, settings), apply_jpeg(astronaut, settings, codec="libjpeg"))
    params = manual_params(jpeg_quality=40)
    assert torch.equal(degrade(astronaut, params).images, degrade(astronaut, params, jpeg_codec="libjpeg").images)
    with pytest.raises(ValueError, match="'nvjpeg' needs the images on a CUDA device, but they are on cpu"):
        apply_jpeg(astronaut, settings, codec="nvjpeg")
    with pytest.raises(ValueError, match="'nvjpeg' needs the images on a CUDA device"):
        degrade(astronaut, params, jpeg_codec="nvjpeg")
    with pytest.raises(ValueError, match="unknown JPEG codec 'mozjpeg'; expected one of 'auto', 'libjpeg'"):
        apply_jpeg(astronaut, settings, codec="mozjpeg")
    with pytest.raises(ValueError, match="degrade: unknown JPEG codec"):
        degrade(astronaut, params, jpeg_codec="mozjpeg")
    with pytest.raises(ValueError, match="unknown JPEG codec"):  # checked even when no item is coded
        apply_jpeg(astronaut, [None], codec="mozjpeg")
    monkeypatch.setattr(jpeg_codecs, "_probe", lambda device: "its image extension did not load")
    with pytest.raises(RuntimeError, match="'torchvision' cannot run on cpu: its image extension did not load"):
        apply_jpeg(astronaut, settings, codec="torchvision")
    assert jpeg_codec_for("cpu") == "libjpeg"


def test_degrade_with_the_torchvision_codec_differs_only_in_the_jpeg_step(astronaut, cpu_codec):
    crops = _crops(astronaut)[:2]
    params = [manual_params(blur_sigma=1.5, noise_sigma=0.05, jpeg_quality=q, seed=i) for i, q in enumerate((35, 80))]
    without = [dataclasses.replace(p, stages=(dataclasses.replace(p.stages[0], jpeg=None),)) for p in params]
    before = degrade(crops, without).images
    assert torch.equal(degrade(crops, without, jpeg_codec="torchvision").images, before)
    ours = degrade(crops, params, jpeg_codec="torchvision").images
    jpegs = [p.stages[0].jpeg for p in params]
    assert torch.equal(ours, apply_jpeg(before, jpegs, codec="torchvision"))
    default = degrade(crops, params).images
    assert torch.equal(default, apply_jpeg(before, jpegs, codec="libjpeg"))
    assert psnr(ours, default) > 40
    part = degrade_partial(crops, params, ["denoise"], jpeg_codec="torchvision")
    assert torch.equal(part.degraded, ours)


def test_jpeg_codec_distance(astronaut, cpu_codec):
    crops = _crops(astronaut)[:2]
    report = jpeg_codec_distance(crops, (20, 80), "torchvision")
    assert report["codec"] == "torchvision" and report["images"] == 2 and report["device"] == "cpu"
    assert set(report["per_quality"]) == {20, 80}
    for entry in report["per_quality"].values():
        assert entry["psnr_to_libjpeg_db"] > 40 and entry["max_abs_diff_8bit"] <= 16
        assert 20 < entry["codec_psnr_to_input_db"] < 60 and 20 < entry["libjpeg_psnr_to_input_db"] < 60
    low, high = report["per_quality"][20], report["per_quality"][80]
    assert low["libjpeg_psnr_to_input_db"] < high["libjpeg_psnr_to_input_db"]
    assert low["codec_psnr_to_input_db"] < high["codec_psnr_to_input_db"]
    assert report["min_psnr_to_libjpeg_db"] == min(low["psnr_to_libjpeg_db"], high["psnr_to_libjpeg_db"])
    same = jpeg_codec_distance(crops, [50], "libjpeg")["per_quality"][50]
    assert same["psnr_to_libjpeg_db"] == math.inf and same["max_abs_diff_8bit"] == 0
    assert math.isfinite(same["codec_psnr_to_input_db"])
    assert jpeg_codec_distance(crops, [50])["codec"] == "libjpeg"  # "auto" on the CPU


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
    # libjpeg forced: the CUDA default codec (nvjpeg) differs from it by design (test_nvjpeg_on_cuda)
    gpu_out = degrade(astronaut.to(cuda), params, jpeg_codec="libjpeg").images
    assert gpu_out.device.type == "cuda"
    assert psnr(gpu_out.cpu(), cpu_out) > 45
    assert psnr(degrade(astronaut.to(cuda), params).images.cpu(), cpu_out) > 30
    noisy = degrade(astronaut.to(cuda), manual_params(noise_sigma=0.1, seed=3)).images
    assert torch.equal(noisy, degrade(astronaut.to(cuda), manual_params(noise_sigma=0.1, seed=3)).images)


@pytest.mark.gpu
def test_nvjpeg_on_cuda(astronaut, camera):
    """nvjpeg is the CUDA default and codes each item at its own quality, near libjpeg. It keeps full
    chroma (4:4:4) where libjpeg subsamples (4:2:0), which alone puts these crops 31.8-39 dB from libjpeg's
    output at qualities 30-90 (measured with libjpeg 4:4:4 against 4:2:0); the bounds leave room."""
    cuda = torch.device("cuda")
    assert jpeg_codec_for(cuda) == "nvjpeg", torchvision_jpeg_problem(cuda)
    crops = _crops(astronaut).to(cuda)
    settings = [JpegParams(quality=30), JpegParams(quality=90), None, JpegParams(quality=30)]
    out = apply_jpeg(crops, settings)
    assert out.device == crops.device and out.dtype == torch.float32
    assert torch.equal(out[2], crops[2])
    libjpeg = apply_jpeg(crops, settings, codec="libjpeg").cpu()
    for i in (0, 1, 3):
        alone = apply_jpeg(crops[i : i + 1], [settings[i]], codec="nvjpeg")[0]
        assert (alone - out[i]).abs().max() <= 1.5 / 255  # the same item whatever the batch
        assert psnr(out[i : i + 1].cpu(), libjpeg[i : i + 1]) > 26
        gain = psnr(out[i : i + 1].cpu(), crops[i : i + 1].cpu()) - psnr(libjpeg[i : i + 1], crops[i : i + 1].cpu())
        assert -3 < gain < 5  # a JPEG of about libjpeg's strength (full chroma: +0.6 to +2.3 dB in libjpeg)
    assert psnr(out[1:2], crops[1:2]) > psnr(apply_jpeg(crops[1:2], [settings[0]], codec="nvjpeg"), crops[1:2])
    grey = camera.to(cuda)
    coded = apply_jpeg(grey, [JpegParams(quality=50)], codec="nvjpeg")
    assert coded.shape == grey.shape
    assert psnr(coded.cpu(), apply_jpeg(camera, [JpegParams(quality=50)], codec="libjpeg")) > 35
    report = jpeg_codec_distance(crops, (30, 60, 90), "nvjpeg")
    assert report["codec"] == "nvjpeg" and 26 < report["min_psnr_to_libjpeg_db"] < math.inf
    for entry in report["per_quality"].values():
        assert -3 < entry["codec_psnr_to_input_db"] - entry["libjpeg_psnr_to_input_db"] < 5
    if torchvision_jpeg_problem("cpu") is None:  # torchvision's CPU codec, where its extension loads
        cpu_crops = crops.cpu()
        assert psnr(apply_jpeg(cpu_crops, settings, codec="torchvision"), libjpeg) > 40


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
