"""The CPU machinery behind ``degrade``: scratch buffers, the long-lived workers, the FFT and JPEG
paths it picks for speed. Each is checked against the plain computation it stands in for."""

from __future__ import annotations

import gc
import io
import multiprocessing
import sys
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spire_core.degradation import (
    PRESETS,
    BlurParams,
    degrade,
    get_preset,
    make_kernel,
    pipeline,
    sample_params,
)
from spire_core.degradation import blur as blur_ops
from spire_core.degradation import jpeg as jpeg_ops
from spire_core.degradation import scratch as scratch_ops
from spire_core.degradation import workers as workers_ops
from spire_core.eval.metrics import psnr

PACK_ROOT = Path(__file__).resolve().parents[2]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fresh_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every scratch request a new tensor, as without scratch memory."""

    def fresh(name, shape, dtype, device):  # noqa: ANN001, ANN202
        return torch.empty(shape, dtype=dtype, device=device)

    takers = [m for name, m in list(sys.modules.items()) if name.startswith("spire_core.degradation.")]
    takers = [
        m for m in takers if m is not scratch_ops and getattr(m, "scratch_tensor", None) is scratch_ops.scratch_tensor
    ]
    assert {m.__name__.rsplit(".", 1)[1] for m in takers} >= {"blur", "jpeg", "noise"}
    for module in takers:  # every module that takes scratch tensors, by its own binding
        monkeypatch.setattr(module, "scratch_tensor", fresh)


def test_scratch_memory_changes_no_bit_and_results_own_their_memory(astronaut, monkeypatch):
    crops = torch.cat([astronaut[..., :256, :256], astronaut[..., 256:, 256:], astronaut[..., 100:356, :256]])
    first_params = sample_params(PRESETS["paper"], gen(21), 3)
    second_params = sample_params(PRESETS["heavy"], gen(22), 3)
    first = degrade(crops, first_params).images
    kept = first.clone()
    degrade(crops, second_params)  # the workers reuse their buffers for other sizes and operations
    assert torch.equal(first, kept)  # nothing returned lives in a worker's scratch memory
    fresh_scratch(monkeypatch)
    assert torch.equal(degrade(crops, first_params).images, first)


def test_inference_mode_and_normal_calls_share_the_workers(astronaut):
    """ComfyUI runs nodes under inference_mode, training does not: the workers' buffers serve both."""
    crops = torch.cat([astronaut[..., :128, :128], astronaut[..., 128:256, :128]])
    params = sample_params(PRESETS["paper"], gen(31), 2)
    scratch_ops.trim_scratch(keep_bytes=0)  # the buffers are made afresh, under inference_mode
    with torch.inference_mode():
        inside = degrade(crops, params).images
    outside = degrade(crops, params).images
    with torch.inference_mode():
        again = degrade(crops, params).images
    assert torch.equal(inside, outside) and torch.equal(outside, again)
    assert not outside.is_inference()


def test_scratch_views_and_trim():
    seen = {}

    def worker() -> None:
        scratch_ops.enable_scratch()
        cpu = torch.device("cpu")
        a = scratch_ops.scratch_tensor("t", (4, 5), torch.float32, cpu)
        b = scratch_ops.scratch_tensor("t", (4, 5), torch.float32, cpu)
        c = scratch_ops.scratch_tensor("t", (2, 3), torch.float32, cpu)
        seen["same view"] = a is b
        seen["same memory"] = c.data_ptr() == a.data_ptr()
        big = scratch_ops.scratch_tensor("t", (1000, 1000), torch.float32, cpu)  # grows: a new buffer
        seen["grown"] = big.numel() == 10**6 and big.data_ptr() != a.data_ptr()
        seen["old views dropped"] = (
            scratch_ops.scratch_tensor("t", (4, 5), torch.float32, cpu).data_ptr() == big.data_ptr()
        )
        big.fill_(2.0)
        scratch_ops.trim_scratch(keep_bytes=10**6)  # this thread holds 4 MB: dropped
        seen["trimmed"] = len(scratch_ops._SCRATCH.buffers) == 0
        seen["a live view outlives the trim"] = float(big.sum()) == 2.0e6
        scratch_ops.scratch_tensor("u", (10,), torch.float32, cpu)  # 40 bytes: below the limit
        scratch_ops.trim_scratch(keep_bytes=10**6)
        seen["small scratch kept"] = len(scratch_ops._SCRATCH.buffers) > 0
        mine.append(weakref.ref(scratch_ops._SCRATCH.buffers))

    mine = []
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == dict.fromkeys(seen, True), seen
    gc.collect()
    assert mine[0]() is None  # a thread's scratch goes with it (and so leaves the WeakSet)


def test_outside_the_workers_scratch_requests_are_new_tensors():
    cpu = torch.device("cpu")
    a = scratch_ops.scratch_tensor("t", (8,), torch.float32, cpu)
    b = scratch_ops.scratch_tensor("t", (8,), torch.float32, cpu)
    assert a.data_ptr() != b.data_ptr()


def test_reflect_pad_into_a_buffer_equals_torch_reflect():
    x = torch.rand(2, 3, 9, 13)
    for pad in (0, 1, 4, 8):
        out = torch.full((2, 3, 9 + 2 * pad, 13 + 2 * pad), float("nan"))
        blur_ops.reflect101_pad(x, pad, out=out)
        expected = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect") if pad else x
        assert torch.equal(out, expected), pad
    out = torch.empty(2, 3, 9 + 24, 13 + 24)  # wider than the image: keeps reflecting
    assert torch.equal(blur_ops.reflect101_pad(x, 12, out=out), blur_ops.reflect101_pad(x, 12))


@pytest.mark.parametrize("n", [1, 7, 37, 361, 538, 549, 1000])
def test_fft_sizes_are_multiples_of_4_with_small_factors(n):
    m = blur_ops._fft_size(n)
    assert m >= n and m % 4 == 0
    r = m
    for p in (2, 3, 5):
        while r % p == 0:
            r //= p
    assert r == 1
    assert all(blur_ops._fft_size(k) == m for k in range(n, m + 1)), "the smallest such size"


def kernel_plane(kernel: torch.Tensor, fh: int, fw: int) -> torch.Tensor:
    p = kernel.shape[-1] // 2
    plane = torch.zeros(fh, fw, dtype=torch.float64)
    plane[: p + 1, : p + 1] = kernel[p:, p:]
    plane[: p + 1, fw - p :] = kernel[p:, :p]
    plane[fh - p :, : p + 1] = kernel[:p, p:]
    plane[fh - p :, fw - p :] = kernel[:p, :p]
    return plane


@pytest.mark.parametrize(
    "blur",
    [
        BlurParams(kernel="aniso", size=27, sigma_x=4.0, sigma_y=1.5, angle=30.0),
        BlurParams(kernel="motion", size=13, length=9.5, angle=37.0),
        BlurParams(kernel="plateau_iso", size=9, sigma_x=1.5, sigma_y=1.5, beta=1.5),
    ],
    ids=lambda b: b.kernel,
)
def test_kernel_response_is_the_conjugate_spectrum_of_the_kernel(blur):
    kernel = make_kernel(blur).to(torch.float64)
    asymmetric = kernel.clone()
    asymmetric[0, 1] += 0.01  # not point-symmetric: a complex response
    for k in (kernel, asymmetric):
        expected = torch.conj(torch.fft.rfft2(kernel_plane(k, 60, 44)))
        got = blur_ops._kernel_response(k.float(), 60, 44)
        assert got.is_complex() == (k is asymmetric)
        assert (got.to(torch.complex128) - expected).abs().max() < 2e-6


def test_pocketfft_blur_equals_direct_correlation_and_its_fallback(coffee, monkeypatch):
    import cv2

    image = coffee[..., :150, :201].contiguous()
    blur = BlurParams(kernel="generalized_aniso", size=25, sigma_x=3.5, sigma_y=1.2, angle=100.0, beta=2.5)
    kernel = make_kernel(blur).float()
    out = blur_ops.apply_blur(image, [kernel])
    hwc = image[0].permute(1, 2, 0).numpy()
    reference = cv2.filter2D(hwc, -1, kernel.numpy(), borderType=cv2.BORDER_REFLECT_101)
    assert np.abs(out[0].permute(1, 2, 0).numpy() - reference).max() < 2e-6
    fft, _ = blur_ops._pocketfft_modules()
    monkeypatch.setattr(blur_ops, "_pocketfft_modules", lambda: (fft, None))  # scipy's public functions instead
    assert (blur_ops.apply_blur(image, [kernel]) - out).abs().max() < 1e-6


def _encode_in_memory(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=0 if image.mode == "L" else 2)
    return buffer.getvalue()


def test_jpeg_encoded_through_a_file_has_the_bytes_of_an_in_memory_encode(astronaut):
    image = astronaut[0, :, :200, :300].contiguous()
    grey = image[:1].contiguous()
    plain = {
        q: (_encode_in_memory(jpeg_ops._to_pil(image), q), _encode_in_memory(jpeg_ops._to_pil(grey), q))
        for q in (30, 90)
    }
    seen = {}

    def worker() -> None:
        scratch_ops.enable_scratch()
        for q in (30, 90, 30):
            seen.setdefault(q, []).append(
                (jpeg_ops._encode(jpeg_ops._to_pil(image), q), jpeg_ops._encode(jpeg_ops._to_pil(grey), q))
            )
        seen["file"] = jpeg_ops._jpeg_file() is not None or not hasattr(__import__("os"), "memfd_create")

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen.pop("file")
    for q, encodings in seen.items():
        assert all(e == plain[q] for e in encodings), q
    with Image.open(io.BytesIO(plain[30][0])) as decoded:
        assert decoded.format == "JPEG" and decoded.size == (300, 200) and decoded.mode == "RGB"


def test_huge_page_advice_keeps_values_and_ignores_what_it_cannot_advise():
    big = torch.empty(3 * 2**20)
    scratch_ops.advise_huge_pages(big)
    big.fill_(0.25)
    assert float(big.sum()) == 0.25 * big.numel()
    scratch_ops.advise_huge_pages(torch.zeros(10))  # smaller than a huge page
    scratch_ops.advise_huge_pages(torch.zeros(2048, 2048)[:, ::2])  # not contiguous


def test_longest_items_start_first(monkeypatch):
    params = sample_params(PRESETS["paper"], gen(4), 6)
    costs = [pipeline._item_cost(p, 64, 64) for p in params]
    assert len(set(costs)) == 6
    heavy = sample_params(PRESETS["heavy"], gen(2), 1)[0]
    light = sample_params(PRESETS["light"], gen(1), 1)[0]
    assert pipeline._item_cost(heavy, 512, 512) > pipeline._item_cost(light, 512, 512)
    started = []
    run = pipeline._run

    def recording(images, item_params, out=None, **options):  # noqa: ANN001, ANN202, ANN003
        started.append(params.index(item_params[0]))
        return run(images, item_params, out=out, **options)

    monkeypatch.setattr(pipeline, "_run", recording)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        degrade(torch.rand(6, 3, 64, 64), params)
    finally:
        torch.set_num_threads(threads)
    by_cost = sorted(range(6), key=lambda i: -costs[i])
    assert set(started[:2]) == set(by_cost[:2]) and sorted(started) == list(range(6))


def _degrade_in_child(queue) -> None:  # noqa: ANN001
    images = torch.rand(3, 3, 48, 64, generator=gen(7))
    queue.put(degrade(images, sample_params(PRESETS["paper"], gen(3), 3)).images.numpy())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this OS")
def test_a_forked_child_gets_its_own_workers():
    """Data loaders fork after the parent has used the worker threads, which do not exist in the
    child: the child must start its own instead of waiting on the parent's."""
    images = torch.rand(3, 3, 48, 64, generator=gen(7))
    expected = degrade(images, sample_params(PRESETS["paper"], gen(3), 3)).images  # the parent's pool exists now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_degrade_in_child, args=(queue,))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=30)
    assert child.exitcode == 0
    assert torch.equal(torch.from_numpy(got), expected)


def test_an_error_in_one_item_reaches_the_caller_and_the_workers_carry_on(monkeypatch):
    images = torch.rand(4, 3, 32, 32)
    params = sample_params(PRESETS["paper"], gen(8), 4)
    expected = degrade(images, params).images
    run = pipeline._run

    def failing(batch, item_params, out=None, **options):  # noqa: ANN001, ANN202, ANN003
        if item_params[0] == params[2]:
            raise RuntimeError("item 2 failed")
        return run(batch, item_params, out=out, **options)

    monkeypatch.setattr(pipeline, "_run", failing)
    with pytest.raises(RuntimeError, match="item 2 failed"):
        degrade(images, params)
    monkeypatch.setattr(pipeline, "_run", run)
    assert torch.equal(degrade(images, params).images, expected)


def test_the_device_algorithms_agree_with_the_cpu_ones(astronaut, coffee, monkeypatch):
    """The batched algorithms that GPUs run (grouped and bucketed convolutions, FFT with kernel
    planes, gathered box taps, one batch through every stage, the device generator), run here on
    CPU tensors: without noise they give the CPU path's result to float precision, and with noise
    the same bytes for the same seeds."""
    crops = torch.cat([astronaut[..., :160, :160], coffee[..., :160, :160], astronaut[..., 200:360, 100:260]])
    crops = torch.cat([crops, crops.flip(-1)])
    params = sample_params(PRESETS["heavy"], gen(41), 6) + sample_params(PRESETS["paper"], gen(42), 6)
    images = torch.cat([crops, crops])
    quiet = [p.without({"noise", "jpeg"}) for p in params]
    cpu_quiet = degrade(images, quiet).images
    cpu_noisy = degrade(images, params).images
    monkeypatch.setattr(workers_ops, "cpu_path", lambda device: False)
    device_quiet = degrade(images, quiet).images
    assert (device_quiet - cpu_quiet).abs().max() < 1e-5
    device_noisy = degrade(images, params).images
    assert torch.equal(device_noisy, degrade(images, params).images)
    assert not torch.equal(device_noisy, cpu_noisy)  # another generator: other noise
    for i in range(len(params)):  # but the same degradation, up to the noise realisation
        assert (
            abs(
                psnr(device_noisy[i : i + 1], crops[i % 6 : i % 6 + 1])
                - psnr(cpu_noisy[i : i + 1], crops[i % 6 : i % 6 + 1])
            )
            < 0.5
        )


def test_concurrent_calls_share_the_workers_safely(astronaut, coffee):
    """Two threads degrading at once (a data loader and a preview, say) share the worker pool, and a
    one-image call may grow it while a batch runs: every result equals its call made alone."""
    batches = [
        (torch.cat([astronaut[..., :128, :128], coffee[..., :128, :128], astronaut[..., 128:256, :128]]), 51),
        (coffee[..., 100:300, 50:250].contiguous(), 52),
        (torch.cat([coffee[..., :96, :160], astronaut[..., :96, :160]]), 53),
    ]
    jobs = [(images, sample_params(PRESETS["paper"], gen(seed), images.shape[0])) for images, seed in batches]
    expected = [degrade(images, params).images for images, params in jobs]
    results: dict[int, torch.Tensor] = {}
    workers_ops._forget_pool()  # as if new: the first call makes a one-thread pool, a batch grows it

    def call(k: int) -> None:
        for _ in range(3):
            results[k] = degrade(*jobs[k]).images

    threads = [threading.Thread(target=call, args=(k,)) for k in (1, 0, 2)]  # the one-image call first
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    torch.set_num_threads(torch_threads)
    assert all(torch.equal(results[k], expected[k]) for k in range(len(jobs)))


def test_the_degradation_benchmark_reports_equal_outputs_and_side_by_side_ratios():
    """The benchmark itself (tiny, untimed assertions): the equality check passes, and each repeat
    contributes one ratio measured back to back."""
    from spire_core.bench.degradation import run

    result = run(batch=3, size=64, repeats=2)
    assert result["equality"]["equal"], result["equality"]
    assert result["equality"]["without_jpeg"]["max_fraction_off_by_more_than_1e-4"] == 0.0
    assert len(result["pair_ratios"]["each"]) == 2
    assert result["pair_ratios"]["min"] <= result["pair_ratios"]["median"] <= result["pair_ratios"]["max"]
    assert result["target"]["ratio"] == 4.0 and result["machine"]["device"] == "cpu"


def test_without_the_linux_speed_paths_degradation_gives_the_same_bits(astronaut, monkeypatch):
    """Windows and macOS have no memfd, madvise, glibc heap trimming or fork hooks: the same calls run
    without them (simulated here by removing each) and give exactly the same images."""
    import os
    import subprocess
    import sys

    params = sample_params(get_preset("paper"), torch.Generator().manual_seed(3), 2)
    images = astronaut[..., :160, :200].repeat(2, 1, 1, 1).contiguous()
    linux = degrade(images, params).images
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(scratch_ops, "_madvise", lambda: None)
    monkeypatch.setattr(scratch_ops, "_glibc_heap", lambda: None)
    assert jpeg_ops._jpeg_file() is None
    assert torch.equal(degrade(images, params).images, linux)
    # and the module itself imports where os has no register_at_fork
    code = (
        "import os, torch\n"
        "del os.register_at_fork\n"
        "from spire_core.degradation import degrade, manual_params\n"
        "x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))\n"
        "print(degrade(x, manual_params(blur_sigma=1.0, noise_sigma=0.05, jpeg_quality=60)).prompts()[1])\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False, cwd=PACK_ROOT
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "Deblur with sigma 1.0; Denoise with sigma 0.05; Dejpeg with quality 60"
