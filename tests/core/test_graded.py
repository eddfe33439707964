"""Graded requests: the input keeps every level present, the target the residual of each named level, exactly."""

from __future__ import annotations

import math

import pytest
import torch

from spire_core.degradation import (
    PRESETS,
    BlurParams,
    DegradationParams,
    NoiseParams,
    ResizeParams,
    StageParams,
    degrade,
    degrade_graded,
    degrade_partial,
    effective_request,
    gradable,
    graded_params,
    graded_request,
    manual_params,
    sample_params,
)
from spire_core.degradation.noise import noise_field
from spire_core.prompt import BLIND_REQUEST, RestorationRequest, parse, render


def two_stage(blur2: BlurParams | None = None, noise_kind: str = "gaussian") -> DegradationParams:
    """A fixed two-stage degradation: Gaussian blur, shrink, noise, JPEG; then blur, noise, shrink again."""
    noise = {"sigma": 0.06} if noise_kind == "gaussian" else {"scale": 1.5}
    return DegradationParams(
        stages=(
            StageParams(
                blur=BlurParams(kernel="aniso", size=13, sigma_x=2.0, sigma_y=1.2, angle=30.0),
                resize=ResizeParams(scale=0.5, interpolation="area"),
                noise=NoiseParams(kind=noise_kind, seed=11, **noise),
                jpeg=None,
            ),
            StageParams(
                blur=blur2 or BlurParams(kernel="iso", size=7, sigma_x=0.8, sigma_y=0.8),
                resize=ResizeParams(scale=0.8, interpolation="bicubic"),
                noise=NoiseParams(kind=noise_kind, seed=12, **{k: v / 2 for k, v in noise.items()}),
            ),
        ),
        final_interpolation="bicubic",
    )


def test_noise_fields_add_up_bit_exactly(astronaut):
    params = manual_params(noise_sigma=0.1, seed=5)
    present, residual = graded_params(params, RestorationRequest(denoise=0.06))
    noise, kept = present.stages[0].noise, residual.stages[0].noise
    assert math.isclose(noise.sigma, 0.08) and math.isclose(noise.named_sigma, 0.06)  # 0.1^2 = 0.08^2 + 0.06^2
    image = astronaut[0, :, :64, :64]
    whole = noise_field(noise, image)
    residual_part, named_part = noise.parts()
    assert residual_part == kept  # the target's noise is the residual field itself
    assert torch.equal(whole, noise_field(residual_part, image) + noise_field(named_part, image))
    assert not torch.equal(noise_field(named_part, image), torch.zeros_like(image))
    # Poisson noise splits the same way
    poisson = NoiseParams(kind="poisson", seed=3, scale=2.0)
    present, _ = graded_params(
        DegradationParams(stages=(StageParams(noise=poisson),)), RestorationRequest(denoise=0.05)
    )
    noise = present.stages[0].noise
    residual_part, named_part = noise.parts()
    assert torch.equal(noise_field(noise, image), noise_field(residual_part, image) + noise_field(named_part, image))


def test_graded_target_is_the_degradation_by_the_residual_params(astronaut):
    image = astronaut[..., :96, :96]
    params = [two_stage(), two_stage(noise_kind="poisson")]
    full = [effective_request(p) for p in params]
    requests = [RestorationRequest(deblur=1.0, denoise=0.05), RestorationRequest(upsample=2.0, denoise=0.05)]
    pair = degrade_graded(image.expand(2, -1, -1, -1), params, requests)
    assert torch.equal(pair.target, degrade(image.expand(2, -1, -1, -1), pair.target_params).images)
    assert torch.equal(pair.degraded, degrade(image.expand(2, -1, -1, -1), pair.params).images)
    for item, (request, before) in enumerate(zip(requests, full)):
        after = effective_request(pair.target_params[item])
        assert parse(pair.prompts[item]) == request  # the prompt parses back to the named levels
        assert math.isclose(after.denoise, math.sqrt(before.denoise**2 - 0.05**2), rel_tol=1e-12)
        assert math.isclose(effective_request(pair.params[item]).denoise, before.denoise, rel_tol=1e-12)
        assert after.dejpeg == before.dejpeg
    # item 0: blur reduced to its residual, the shrink kept
    after = effective_request(pair.target_params[0])
    assert math.isclose(after.deblur, math.sqrt(full[0].deblur ** 2 - 1.0), rel_tol=1e-12)
    assert math.isclose(after.upsample, full[0].upsample, rel_tol=1e-12)
    # item 1: shrunk by the residual factor only, the blur kept at its size in input pixels
    after = effective_request(pair.target_params[1])
    assert math.isclose(after.upsample, full[1].upsample / 2.0, rel_tol=1e-12)
    assert math.isclose(after.deblur, full[1].deblur, rel_tol=1e-12)


def test_the_input_is_the_full_degradation(astronaut):
    image = astronaut[..., :128, :128]
    params = manual_params(blur_sigma=2.0, noise_sigma=0.1, seed=9)
    # no noise named partly: the input is degrade(params) bit for bit
    pair = degrade_graded(image, [params], RestorationRequest(deblur=1.2))
    assert torch.equal(pair.degraded, degrade(image, params).images)
    # noise named partly: two fields whose variances add up to the full level
    grey = torch.full((1, 3, 256, 256), 0.5)
    pair = degrade_graded(grey, [manual_params(noise_sigma=0.1, seed=9)], RestorationRequest(denoise=0.05))
    assert abs(float((pair.degraded - grey).std()) - 0.1) < 0.002
    assert abs(float((pair.target - grey).std()) - math.sqrt(0.1**2 - 0.05**2)) < 0.002
    # the named part is what separates them, independent of the residual
    named, residual = pair.degraded - pair.target, pair.target - grey
    assert abs(float((named * residual).mean()) / (0.05 * 0.0866)) < 0.02


def test_gaussian_blur_composes(astronaut):
    """Blurring the target by the named level gives back the input: Gaussians compose."""
    image = astronaut[..., 100:228, 100:228]
    params = DegradationParams(
        stages=(StageParams(blur=BlurParams(kernel="aniso", size=21, sigma_x=3.0, sigma_y=1.5, angle=40.0)),)
    )
    _, residual = graded_params(params, RestorationRequest(deblur=1.5))
    rho = math.sqrt(effective_request(params).deblur ** 2 - 1.5**2) / effective_request(params).deblur
    blur = residual.stages[0].blur
    assert math.isclose(blur.sigma_x, 3.0 * rho) and math.isclose(blur.sigma_y, 1.5 * rho) and blur.angle == 40.0
    rest = math.sqrt(1 - rho * rho)
    named = BlurParams(kernel="aniso", size=21, sigma_x=3.0 * rest, sigma_y=1.5 * rest, angle=40.0)
    composed = degrade(degrade(image, residual).images, DegradationParams(stages=(StageParams(blur=named),)))
    full = degrade(image, params).images
    inner = (slice(None), slice(None), slice(16, -16), slice(16, -16))
    assert float((composed.images - full)[inner].abs().max()) < 2e-3


def test_full_levels_remove_the_named_degradation(astronaut):
    image = astronaut[..., :96, :96]
    params = two_stage()
    request = effective_request(params)
    pair = degrade_graded(image, [params], RestorationRequest(denoise=round(request.denoise, 2)))
    assert torch.equal(pair.degraded, degrade(image, params).images)
    assert torch.equal(pair.target, degrade(image, params.without({"noise"})).images)
    # naming the whole shrink keeps the later stage's blur at its size in input pixels
    part = degrade_partial(image, [params], ["upsample"])
    kept = effective_request(graded_params(params, RestorationRequest(upsample=round(request.upsample, 1)))[1])
    assert kept.upsample is None and math.isclose(kept.deblur, request.deblur, rel_tol=1e-12)
    assert part.prompts == (f"Upsample by {request.upsample:.1f}x",)
    assert graded_params(params, BLIND_REQUEST)[1].stages == ()


def test_what_cannot_be_named_partly_is_refused(astronaut):
    sinc = BlurParams(kernel="sinc", size=21, cutoff=1.0)
    params = two_stage(blur2=sinc)
    assert "deblur" not in gradable(params) and {"upsample", "denoise"} <= gradable(params)
    with pytest.raises(ValueError, match="deblur can only be named in full"):
        graded_params(params, RestorationRequest(deblur=0.5))
    jpeg = manual_params(jpeg_quality=40, noise_sigma=0.05)
    with pytest.raises(ValueError, match="JPEG quality cannot be partly undone"):
        graded_params(jpeg, RestorationRequest(dejpeg=60))
    with pytest.raises(ValueError, match="more than the level present"):
        graded_params(jpeg, RestorationRequest(denoise=0.08))
    with pytest.raises(ValueError, match="not present"):
        graded_params(jpeg, RestorationRequest(deblur=1.0))
    present, residual = graded_params(jpeg, RestorationRequest(dejpeg=40))
    assert residual.stages[0].jpeg is None and residual.stages[0].noise == jpeg.stages[0].noise


@pytest.mark.parametrize("preset", ["paper", "heavy", "blur_noise"])
def test_graded_levels_on_sampled_params(preset):
    """On drawn params of every kind: the residual levels follow sqrt(E^2 - v^2) (and E / v for upsample)."""
    generator = torch.Generator().manual_seed(3)
    checked = 0
    for params in sample_params(PRESETS[preset], generator, 40):
        present = effective_request(params)
        fractions = {k: 0.25 + 0.5 * (i % 2) for i, k in enumerate(present.named())}
        if not fractions:
            continue
        request = graded_request(params, fractions)
        assert parse(render(request)) == request
        _, residual = graded_params(params, request)
        after = effective_request(residual)
        for key in present.named():
            level, named = getattr(present, key), getattr(request, key)
            printed = float(format(level, ".1f" if key in ("upsample", "deblur") else ".2f"))
            if key == "dejpeg" or named == printed or (key == "deblur" and key not in gradable(params)):
                assert getattr(after, key) is None  # named in full
            elif key == "upsample":
                assert math.isclose(1 / math.prod(s.resize.scale for s in residual.stages if s.resize), level / named)
            else:
                expected = math.sqrt(level**2 - named**2)
                assert math.isclose(getattr(after, key) or 0.0, expected, rel_tol=1e-9)
            checked += 1
        if (
            request.deblur is None
            and present.deblur is not None
            and all(
                s.blur is None or s.blur.kernel != "plateau_iso" and s.blur.kernel != "plateau_aniso"
                for s in params.stages
            )
        ):
            assert math.isclose(after.deblur, present.deblur, rel_tol=1e-6)
    assert checked > 40


def test_graded_request_levels_are_printable_and_bounded():
    params = manual_params(blur_sigma=3.0, noise_sigma=0.1, downscale=4.0, jpeg_quality=50)
    request = graded_request(params, {"deblur": 0.5, "denoise": 0.001, "upsample": 0.5, "dejpeg": 0.3})
    assert request == RestorationRequest(upsample=2.0, deblur=1.5, denoise=0.01, dejpeg=50)
    assert graded_request(params, {"denoise": 1.0}) == RestorationRequest(denoise=0.1)
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        graded_request(params, {"denoise": 0.0})
