"""Colour correction (wavelet, AdaIN) and image metrics (PSNR, SSIM against scikit-image, LPIPS) with numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from skimage.metrics import structural_similarity

from spire_core.eval.metrics import (
    LPIPS_CHANNELS,
    LPIPS_CONVERSION,
    LPIPS_FILENAME,
    image_metrics,
    load_lpips,
    lpips_state_dict_from_official,
    psnr,
    psnr_per_image,
    report_csv,
    report_table,
    save_report,
    ssim,
    validate_report,
)
from spire_core.restoration.color import adain_color_fix, match_reference, wavelet_color_fix, wavelet_decompose


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """An independent separable Gaussian blur (reflect borders) used to look at frequency bands."""
    r = int(3.5 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = (g / g.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def noisy(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)


def channel_affine(x: torch.Tensor, gain, offset) -> torch.Tensor:
    return x * torch.tensor(gain).view(1, -1, 1, 1) + torch.tensor(offset).view(1, -1, 1, 1)


@pytest.fixture(scope="module")
def small_astronaut(astronaut):
    return astronaut[..., ::2, ::2].contiguous()  # (1, 3, 256, 256)


# --------------------------------------------------------------------------------------------------
# Colour correction
# --------------------------------------------------------------------------------------------------


def test_adain_gives_each_channel_the_reference_mean_and_std(small_astronaut, coffee):
    # A low-contrast reference with a colour cast, so the matched image stays inside [0, 1] (no clamping).
    reference = channel_affine(coffee[..., :256, :256], (0.30, 0.25, 0.20), (0.45, 0.35, 0.30))
    out = adain_color_fix(small_astronaut, reference)
    assert out.shape == small_astronaut.shape and out.dtype == torch.float32
    assert 0 < out.min() and out.max() < 1
    ref_std, ref_mean = torch.std_mean(reference, dim=(2, 3), correction=0)
    out_std, out_mean = torch.std_mean(out, dim=(2, 3), correction=0)
    assert torch.allclose(out_mean, ref_mean, atol=1e-4) and torch.allclose(out_std, ref_std, atol=1e-4)
    # Structure is the image's: per channel, the output is an increasing affine map of the input.
    for c in range(3):
        corr = np.corrcoef(out[0, c].flatten().numpy(), small_astronaut[0, c].flatten().numpy())[0, 1]
        assert corr > 0.9999


def test_adain_per_image_statistics_and_reference_broadcast(small_astronaut, coffee):
    images = torch.cat([small_astronaut, coffee[..., :256, :256]])
    reference = channel_affine(coffee[..., 100:356, 100:356], (0.2, 0.2, 0.2), (0.5, 0.4, 0.3))
    out = adain_color_fix(images, reference)
    for i in range(2):
        assert torch.allclose(out[i].mean(dim=(1, 2)), reference[0].mean(dim=(1, 2)), atol=1e-4)
        assert torch.allclose(out[i : i + 1], adain_color_fix(images[i : i + 1], reference), atol=1e-6)


def test_wavelet_fix_takes_low_frequencies_from_reference_and_detail_from_image(small_astronaut):
    # The reference is what a restorer gets: blurred, with a colour cast.
    reference = channel_affine(gaussian_blur(small_astronaut, 3.0), (0.8, 0.7, 1.1), (0.1, 0.15, -0.05)).clamp(0, 1)
    out = wavelet_color_fix(small_astronaut, reference)
    assert out.shape == small_astronaut.shape and 0 <= out.min() and out.max() <= 1

    def crop(t):
        return t[..., 32:-32, 32:-32]

    def low(t):
        return crop(gaussian_blur(t, 24.0))

    def high(t):
        return crop(t - gaussian_blur(t, 1.0))

    low_err = (low(out) - low(reference)).abs().mean()
    assert low_err < 0.15 * (low(small_astronaut) - low(reference)).abs().mean()
    high_err = (high(out) - high(small_astronaut)).abs().mean()
    assert high_err < 0.02 * (high(reference) - high(small_astronaut)).abs().mean()


def test_wavelet_decomposition_is_exact_and_fix_is_image_high_plus_reference_low(small_astronaut, coffee):
    high, low = wavelet_decompose(small_astronaut)
    assert torch.allclose(high + low, small_astronaut, atol=1e-5)

    def variation(t):
        return (t[..., 1:, :] - t[..., :-1, :]).abs().mean()

    assert variation(low) < 0.15 * variation(small_astronaut)  # the low band holds no detail
    reference = coffee[..., :256, :256]
    expected = (high + wavelet_decompose(reference)[1]).clamp(0, 1)
    assert torch.allclose(wavelet_color_fix(small_astronaut, reference), expected, atol=1e-6)
    # The same image as its own reference comes back unchanged.
    assert torch.allclose(wavelet_color_fix(small_astronaut, small_astronaut), small_astronaut, atol=1e-5)


@pytest.mark.parametrize("fix", [wavelet_color_fix, adain_color_fix])
def test_reference_of_another_size_is_resized_with_antialiased_bilinear(fix, small_astronaut, coffee):
    reference = coffee[..., :200, :300]
    resized = F.interpolate(reference, size=(256, 256), mode="bilinear", align_corners=False, antialias=True)
    out = fix(small_astronaut, reference)
    assert out.shape == small_astronaut.shape
    assert torch.equal(out, fix(small_astronaut, resized))
    assert torch.equal(match_reference(small_astronaut, reference), resized)


@pytest.mark.parametrize("fix", [wavelet_color_fix, adain_color_fix])
def test_batch_broadcast_and_mismatch(fix, small_astronaut, coffee):
    images = torch.cat([small_astronaut, noisy(small_astronaut, 0.1, 1), coffee[..., :256, :256]])
    reference = coffee[..., 50:306, 50:306]
    before = (images.clone(), reference.clone())
    out = fix(images, reference)
    assert torch.equal(images, before[0]) and torch.equal(reference, before[1])  # inputs untouched
    for i in range(3):
        assert torch.allclose(out[i : i + 1], fix(images[i : i + 1], reference), atol=1e-6)
    per_image = fix(images, reference.repeat(3, 1, 1, 1))
    assert torch.allclose(out, per_image, atol=1e-6)
    with pytest.raises(ValueError, match=r"image batch has 3 images but reference batch has 2"):
        fix(images, reference.repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match=r"image has 3 channels but reference has 1"):
        fix(images, reference[:, :1])
    with pytest.raises(ValueError, match="empty"):
        fix(images[:0], reference)


def test_wavelet_fix_works_on_tiny_images_and_float64():
    image = torch.rand(2, 3, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = wavelet_color_fix(image, image[:1].flip(-1))
    assert out.shape == image.shape and out.dtype == torch.float64
    with pytest.raises(ValueError, match="levels"):
        wavelet_color_fix(image, image, levels=0)


# --------------------------------------------------------------------------------------------------
# PSNR and SSIM
# --------------------------------------------------------------------------------------------------


def test_psnr_known_values_and_per_image():
    a = torch.zeros(3, 3, 16, 16)
    b = torch.stack([torch.full((3, 16, 16), v) for v in (0.1, 0.01, 0.0)])
    assert psnr(a[:1], b[:1]) == pytest.approx(20.0)  # MSE 0.01 -> 20 dB
    per = psnr_per_image(a, b)
    assert per.dtype == torch.float64 and per.shape == (3,)
    assert per[0].item() == pytest.approx(20.0) and per[1].item() == pytest.approx(40.0) and math.isinf(per[2])
    assert psnr_per_image(a[:1] + 25, b[:1] + 25, peak=255.0).item() == pytest.approx(20 + 20 * math.log10(255))


def test_psnr_per_image_matches_the_batch_psnr_of_each_item(coffee):
    batch = torch.cat([noisy(coffee, s, i) for i, s in enumerate((0.02, 0.05, 0.1))])
    per = psnr_per_image(batch, coffee.expand(3, -1, -1, -1))
    assert per.tolist() == pytest.approx([psnr(batch[i : i + 1], coffee) for i in range(3)], abs=1e-9)
    assert per[0] > per[1] > per[2]


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = a.permute(1, 2, 0).double().numpy(), b.permute(1, 2, 0).double().numpy()
    return structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "camera"])
def test_ssim_matches_scikit_image(name, request):
    clean = request.getfixturevalue(name)[..., :211, :173]  # odd sizes
    batch = torch.cat([noisy(clean, s, 3) for s in (0.01, 0.05, 0.2)] + [clean.flip(-1)])
    ours = ssim(batch, clean.expand(4, -1, -1, -1))
    assert ours.dtype == torch.float64 and ours.shape == (4,)
    for i in range(4):
        assert abs(ours[i].item() - _skimage_ssim(batch[i], clean[0])) <= 1e-4
    assert ours[0] > ours[1] > ours[2]
    assert ssim(clean, clean).item() == pytest.approx(1.0, abs=1e-12)


def test_ssim_rejects_small_and_mismatched_images():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 10, 40), torch.rand(1, 3, 10, 40))
    with pytest.raises(ValueError, match=r"\(1, 3, 32, 32\) vs \(1, 3, 32, 33\)"):
        ssim(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 33))
    with pytest.raises(ValueError, match="empty"):
        ssim(torch.rand(0, 3, 32, 32), torch.rand(0, 3, 32, 32))


# --------------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------------


def random_lpips_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """LPIPS-layout tensors with random values: He-scaled convolutions, non-negative linear layers."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for index, cin, cout, k in ((0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3), (8, 384, 256, 3), (10, 256, 256, 3)):
        tensors[f"features.{index}.weight"] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2 / (cin * k * k))
        tensors[f"features.{index}.bias"] = torch.randn(cout, generator=g) * 0.01
    for i, ch in enumerate(LPIPS_CHANNELS):
        tensors[f"lin.{i}.weight"] = torch.rand(1, ch, 1, 1, generator=g) / ch  # official weights are >= 0
    return tensors


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lpips") / LPIPS_FILENAME
    save_file(random_lpips_tensors(), str(path))
    return path


def reference_lpips(tensors: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS written out from the paper, layer by layer over torchvision's AlexNet ``features`` Sequential
    (index: layer), as a cross-check of our network and of the key layout (``features.N`` are that
    Sequential's indices)."""
    convs = {0: (4, 2), 3: (1, 2), 6: (1, 1), 8: (1, 1), 10: (1, 1)}  # index: (stride, padding)
    relus = (1, 4, 7, 9, 11)  # the max-pools are 2, 5 and 12

    def features(x: torch.Tensor, index: int) -> torch.Tensor:
        if index in convs:
            stride, padding = convs[index]
            weight, bias = tensors[f"features.{index}.weight"], tensors[f"features.{index}.bias"]
            return F.conv2d(x, weight, bias, stride=stride, padding=padding)
        return F.relu(x) if index in relus else F.max_pool2d(x, 3, 2)

    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(x):
        x, out = (2 * x - 1 - shift) / scale, []
        for i in range(13):
            x = features(x, i)
            if i in relus:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    with torch.no_grad():
        total = 0
        for i, (fa, fb) in enumerate(zip(taps(a), taps(b))):
            total = total + ((fa - fb) ** 2 * tensors[f"lin.{i}.weight"]).sum(dim=1).mean(dim=(1, 2))
    return total.double()


def test_lpips_is_zero_for_identical_images_and_grows_with_noise(lpips_file, coffee, astronaut):
    net = load_lpips(lpips_file)
    for clean in (coffee[..., 100:300, 200:456], astronaut[..., :160, 100:300]):
        assert net(clean, clean).item() == 0.0
        distances = [net(noisy(clean, s, 7), clean).item() for s in (0.02, 0.08, 0.25)]
        assert 0 < distances[0] < distances[1] < distances[2], distances


def test_lpips_matches_an_independent_alexnet_sequential(lpips_file, coffee, chelsea):
    net = load_lpips(lpips_file)
    a = torch.cat([coffee[..., :256, :256], chelsea[..., :256, :256]])
    b = torch.cat([noisy(a[:1], 0.1, 0), chelsea[..., 44:300, 100:356]])
    ours = net(a, b)
    assert ours.shape == (2,) and ours.dtype == torch.float64
    assert torch.allclose(ours, reference_lpips(random_lpips_tensors(), a, b), rtol=1e-4, atol=1e-7)
    assert torch.allclose(ours[1:], net(a[1:], b[1:]), rtol=1e-5)  # per item, independent of the batch


def test_lpips_missing_file_says_where_and_how(tmp_path):
    missing = tmp_path / "models" / LPIPS_FILENAME
    with pytest.raises(FileNotFoundError) as err:
        load_lpips(missing)
    message = str(err.value)
    assert message.startswith(f"LPIPS needs its weights at {missing}; put {LPIPS_FILENAME} there, made with")
    assert "lpips_state_dict_from_official" in message and "alex.pth" in message


def test_lpips_refuses_a_file_in_another_layout(tmp_path):
    tensors = random_lpips_tensors()
    tensors["lin.0.model.1.weight"] = tensors.pop("lin.0.weight")
    tensors["features.3.weight"] = tensors["features.3.weight"][:, :32].contiguous()
    path = tmp_path / "wrong.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError) as err:
        load_lpips(path)
    message = str(err.value)
    assert "not an LPIPS AlexNet weight file" in message and "missing ['lin.0.weight']" in message
    assert "unexpected ['lin.0.model.1.weight']" in message and "features.3.weight is (192, 32, 5, 5)" in message


def test_lpips_conversion_from_the_official_layout(tmp_path, lpips_file, coffee):
    ours = random_lpips_tensors()
    alexnet = {k: v for k, v in ours.items() if k.startswith("features.")}
    alexnet["classifier.1.weight"] = torch.zeros(4, 9216)  # torchvision's classifier is ignored
    lins = {f"lin{i}.model.1.weight": ours[f"lin.{i}.weight"] for i in range(5)}
    converted = lpips_state_dict_from_official(alexnet, lins)
    assert converted.keys() == ours.keys() and all(torch.equal(converted[k], ours[k]) for k in ours)
    path = tmp_path / LPIPS_FILENAME
    save_file(converted, str(path))
    coffee = coffee[..., :128, :128]
    image = noisy(coffee, 0.05, 2)
    assert load_lpips(path)(image, coffee).item() == load_lpips(lpips_file)(image, coffee).item()
    # The conversion recipe is the same in the module constant and in load_lpips's docstring.
    doc = " ".join(load_lpips.__doc__.split())
    recipe = [line for line in LPIPS_CONVERSION.split("run once:")[1].splitlines() if line.strip()]
    assert len(recipe) == 6
    for line in recipe:
        assert line.strip() in doc, line


def test_lpips_input_checks(lpips_file):
    net = load_lpips(lpips_file)
    with pytest.raises(ValueError, match="at least 31x31"):
        net(torch.rand(1, 3, 30, 64), torch.rand(1, 3, 30, 64))
    with pytest.raises(ValueError, match="3 channels"):
        net(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64))
    assert net(torch.rand(1, 3, 31, 31), torch.rand(1, 3, 31, 31)).item() > 0


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def test_image_metrics_report_equals_the_functions(lpips_file, coffee):
    net = load_lpips(lpips_file)
    coffee = coffee[..., 100:228, 200:392]
    images = torch.cat([noisy(coffee, s, 5) for s in (0.02, 0.1)] + [coffee])
    report = image_metrics(images, coffee, net)
    refs = coffee.expand(3, -1, -1, -1)
    assert report["count"] == 3 and (report["height"], report["width"]) == (128, 192)
    assert [r["psnr"] for r in report["images"][:2]] == psnr_per_image(images, refs)[:2].tolist()
    assert report["images"][2]["psnr"] == "inf" and report["mean"]["psnr"] == "inf"
    assert [r["ssim"] for r in report["images"]] == ssim(images, refs).tolist()
    assert [r["lpips"] for r in report["images"]] == net(images, refs).tolist()
    assert report["mean"]["ssim"] == pytest.approx(ssim(images, refs).mean().item(), abs=1e-12)
    csv = report_csv(report).splitlines()
    assert csv[0] == "image,psnr,ssim,lpips" and len(csv) == 5 and csv[3] == "2,inf,1.0,0.0"
    assert [float(x) for x in csv[1].split(",")[1:]] == [report["images"][0][m] for m in ("psnr", "ssim", "lpips")]
    assert csv[4].startswith("mean,inf,")


def test_image_metrics_without_lpips_and_errors(coffee):
    report = image_metrics(noisy(coffee, 0.05, 1), coffee)
    assert report["mean"]["lpips"] is None and all(r["lpips"] is None for r in report["images"])
    assert report_csv(report).splitlines()[1].endswith(",")
    table = report_table(report, missing="n/a (no weights)").splitlines()
    assert table[0].split() == ["image", "PSNR", "(dB)", "SSIM", "LPIPS"]
    assert table[1].endswith("n/a (no weights)") and table[-1].startswith("mean")
    with pytest.raises(ValueError, match=r"image is 600x400 \(WxH\) but reference is 300x200"):
        image_metrics(coffee, coffee[..., ::2, ::2])
    with pytest.raises(ValueError, match="image batch is empty"):
        image_metrics(coffee[:0], coffee)
    with pytest.raises(ValueError, match="image batch has 3 images but reference batch has 2"):
        image_metrics(coffee.repeat(3, 1, 1, 1), coffee.repeat(2, 1, 1, 1))


def edited(report: dict, change) -> dict:
    copy = json.loads(json.dumps(report))
    change(copy)
    return copy


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("mean"), "mean must be an object with psnr, ssim, lpips; got None"),
        (lambda r: r["mean"].pop("psnr"), "mean has no 'psnr'"),
        (lambda r: r["mean"].update(ssim="high"), "mean.ssim is 'high'; expected a finite number"),
        (
            lambda r: r["images"][1].update(psnr=float("nan")),
            r"images\[1\].psnr is nan; expected a finite number or \"inf\"",
        ),
        (lambda r: r["images"][0].update(lpips="inf"), r"images\[0\].lpips is 'inf'; expected a finite number or null"),
        (lambda r: r["images"][0].update(ssim=True), r"images\[0\].ssim is True"),
        (lambda r: r.update(count=5), "count is 5 but it lists 2 images"),
        (lambda r: r.update(images=[]), "images must be a non-empty list"),
        (lambda r: r["images"][0].pop("index"), r"images\[0\] must be an object with an integer index"),
        (lambda r: r.update(format="other/1"), "not an image-metrics report"),
    ],
)
def test_hand_edited_reports_are_named_and_nothing_is_written(coffee, tmp_path, change, message):
    report = image_metrics(torch.cat([noisy(coffee, 0.05, 1), coffee]), coffee)
    assert validate_report(report) is report
    bad = edited(report, change)
    for call in (validate_report, report_csv, report_table, lambda r: save_report(r, tmp_path / "out", "m")):
        with pytest.raises(ValueError, match=message):
            call(bad)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_reports_are_saved_whole_or_not_at_all(coffee, tmp_path, monkeypatch):
    import os

    report = image_metrics(torch.cat([noisy(coffee, 0.05, 1), coffee]), coffee)
    csv_path, json_path = save_report(report, tmp_path, "m_00001_")
    assert csv_path.read_text(encoding="utf-8") == report_csv(report)
    assert json.loads(json_path.read_text(encoding="utf-8")) == report
    # the second move fails (a full disk, a permission): the first file is taken back, no temporary is left
    real_replace, moves = os.replace, []

    def failing_replace(source, target):
        moves.append(target)
        if len(moves) == 2:
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        save_report(report, tmp_path, "m_00002_")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_00001_.csv", "m_00001_.json"]


def test_lpips_weights_picker_says_what_a_file_is(tmp_path):
    from spire_core.models import SpireAdaptor, save_adaptor
    from spire_core.training.tiny import tiny_unet

    pickle_file = tmp_path / "pickle.safetensors"
    pickle_file.write_bytes(b"\x80\x04\x95" + bytes(64))  # a Python pickle renamed
    huge_header = tmp_path / "huge.safetensors"
    huge_header.write_bytes((10**12).to_bytes(8, "little") + b"{}")  # "header too large" in safetensors' words
    with pytest.raises(ValueError, match="is a Python pickle .* never unpickles"):
        load_lpips(pickle_file)
    with pytest.raises(ValueError, match="is not a safetensors file .* LPIPS weights \\(lpips_alex.safetensors\\) in"):
        load_lpips(huge_header)
    adaptor = tmp_path / "adaptor.safetensors"
    save_adaptor(SpireAdaptor.from_unet(tiny_unet(), base_family="sd1"), adaptor)
    with pytest.raises(ValueError, match=f"is a SPIRE adaptor, not LPIPS AlexNet weights; choose {LPIPS_FILENAME}"):
        load_lpips(adaptor)
    tensors = random_lpips_tensors()
    tensors["lin.2.weight"][0, 5] = float("nan")  # what a broken conversion writes
    nan_file = tmp_path / "nan.safetensors"
    save_file(tensors, str(nan_file))
    with pytest.raises(ValueError, match=r"holds NaN or Inf values in \['lin.2.weight'\]"):
        load_lpips(nan_file)
