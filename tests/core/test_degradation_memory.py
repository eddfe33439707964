"""Memory of a long-running process that degrades images of random sizes: the operators' tables are
cached under byte bounds, resampling never builds dense matrices on the hot path, freed heap memory
goes back to the OS, and the process's resident memory stays flat over 200 calls."""

from __future__ import annotations

import os
import random
import sys

import pytest
import torch

from spire_core.degradation import PRESETS, degrade, get_preset, pipeline, sample_params
from spire_core.degradation import blur as blur_ops
from spire_core.degradation import resize as resize_ops
from spire_core.degradation import scratch as scratch_ops
from spire_core.degradation import workers as workers_ops
from spire_core.degradation.memo import byte_bounded, tensor_bytes
from spire_core.degradation.resize import apply_resize, resize_matrix
from spire_core.degradation.scratch import HEAP_KEEP_BYTES, SCRATCH_KEEP_BYTES, release_free_heap

BYTE_BOUNDED_CACHES = {
    "resize_ops._banded": resize_ops._banded,
    "blur_ops._dft_matrices": blur_ops._dft_matrices,
    "blur_ops._reflect101_index_cpu": blur_ops._reflect101_index_cpu,
    "pipeline._kernel": pipeline._kernel,
}


def test_a_byte_bounded_cache_keeps_the_most_recent_entries_under_its_bound():
    calls = []

    @byte_bounded(1000)
    def table(n: int) -> tuple[torch.Tensor, int]:
        calls.append(n)
        return torch.zeros(n, dtype=torch.float32), n  # 4 n bytes; the int counts nothing

    for n in (100, 50, 100):  # 400 + 200 bytes; the third is a hit
        table(n)
    assert calls == [100, 50]
    info = table.cache_info()
    assert (info.hits, info.misses, info.entries, info.bytes, info.max_bytes) == (1, 2, 2, 600, 1000)
    table(120)  # 480 more bytes: the least recently used (50) goes
    assert table.cache_info().bytes == 880 and table.cache_info().entries == 2
    table(50)
    assert calls == [100, 50, 120, 50]
    table(300)  # 1200 bytes: larger than the whole cache, computed but never kept
    table(300)
    assert calls[-2:] == [300, 300] and table.cache_info().bytes <= 1000
    table.cache_clear()
    assert table.cache_info() == (0, 0, 0, 0, 1000)
    assert tensor_bytes((torch.zeros(3, dtype=torch.float64), [torch.zeros(2, dtype=torch.int8)], "x")) == 26
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        byte_bounded(0)


@pytest.mark.parametrize("mode", ["area", "bilinear", "bicubic"])
def test_resampling_taps_are_the_matrix_rows_without_building_the_matrix(mode, monkeypatch):
    pairs = [(1, 1), (1, 7), (7, 1), (21, 20), (20, 21), (61, 20), (47, 150), (300, 37), (2048, 2047), (999, 3000)]
    taps = {pair: resize_ops._banded(*pair, mode) for pair in pairs}
    for (n_in, n_out), pair_taps in taps.items():
        dense = torch.zeros(n_out, n_in, dtype=torch.float32)
        for index, weight in pair_taps:
            dense.scatter_add_(1, index.unsqueeze(1), weight.unsqueeze(1))
        assert torch.equal(dense, resize_matrix(n_in, n_out, mode).to(torch.float32)), (n_in, n_out)
        # a few values per output pixel: the table is tiny next to the dense (n_out, n_in) matrix
        width = max(1.0, n_in / n_out) * {"area": 1, "bilinear": 2, "bicubic": 4}[mode] + 2
        assert tensor_bytes(pair_taps) <= 12 * n_out * width
    resize_ops._banded.cache_clear()
    resize_ops._is_nearest_exact.cache_clear()

    def dense_matrix(*args):
        raise AssertionError("a dense resampling matrix was built")

    monkeypatch.setattr(resize_ops, "resize_matrix", dense_matrix)
    monkeypatch.setattr(workers_ops, "cpu_path", lambda device: False)  # the device algorithms take taps
    x = torch.rand(1, 2, 61, 47, generator=torch.Generator().manual_seed(0))
    for size in [(20, 31), (122, 94), (183, 47)]:
        assert apply_resize(x, size, mode).shape == (1, 2, *size)


def test_nearest_exact_is_decided_on_the_taps_as_before():
    # enlarging by whole and fractional factors is a single unit tap; shrinking is not, except where
    # float rounding drops the second pixel of a window (21 -> 20, kept as the dense matrix had it)
    assert (
        resize_ops._is_nearest_exact(10, 30)
        and resize_ops._is_nearest_exact(7, 10)
        and resize_ops._is_nearest_exact(5, 5)
    )
    assert not resize_ops._is_nearest_exact(30, 10) and not resize_ops._is_nearest_exact(61, 20)
    assert resize_ops._is_nearest_exact(21, 20)


def test_freed_heap_memory_is_handed_back_and_nothing_is_done_where_that_cannot_be(monkeypatch):
    if sys.platform.startswith("linux") and scratch_ops._glibc_heap() is not None:
        held = [torch.ones(300_000) for _ in range(200)]  # about 240 MB in blocks under the mmap threshold
        del held
        free = release_free_heap(keep_bytes=0)
        assert free > 0
    monkeypatch.setattr(scratch_ops, "_glibc_heap", lambda: None)  # macOS, Windows, musl
    assert release_free_heap(keep_bytes=0) == 0
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = degrade(x, sample_params(get_preset("paper"), torch.Generator().manual_seed(0), 1)).images
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the resident size from /proc")
def test_two_hundred_calls_of_random_sizes_keep_resident_memory_flat():
    """What the Degrade Image node does on a server, call after call: a preset drawn, a new image of
    random size up to 2048 px. Resident memory is compared by its high-water mark over calls 1-20
    and over the last 20 calls (a single reading swings with the size of the last image); the last 20 calls
    repeat the first 20 (same sizes, presets and seeds), so the two marks compare the same work and their
    difference is what the 160 calls between them left behind, not which window drew the larger images."""
    rng = random.Random(0)
    presets = sorted(PRESETS)
    draws = [(rng.randint(64, 2048), rng.randint(64, 2048), rng.choice(presets), call) for call in range(180)]
    draws += draws[:20]
    resident = []
    for height, width, preset, seed in draws:
        image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))
        params = sample_params(get_preset(preset), torch.Generator().manual_seed(seed), 1)
        degrade(image, params)
        del image
        resident.append(_rss_bytes())
    first, last = max(resident[:20]), max(resident[-20:])
    growth = last / first - 1
    print(
        f"resident memory high-water: calls 1-20 {first / 2**20:.0f} MB, calls 181-200 {last / 2**20:.0f} MB "
        f"({100 * growth:+.1f} %)"
    )
    # The target is 5 %; the library keeps, by design, up to HEAP_KEEP_BYTES of freed C heap and, per thread that
    # degraded, up to SCRATCH_KEEP_BYTES of scratch between calls, so growth inside what those keeps hold now is
    # slack, not a leak (with a small process it can exceed 5 %: measured +5.5 to +6.2 % of 650-1300 MB in the full
    # suite and +9.8 % of 415 MB with this test alone, 40-70 MB; live memory besides the caches and scratch stays
    # flat, and the rest is freed heap that glibc keeps resident until the next trim).
    # The scratch counted is the scratch measured, not the bound times the thread count, so a leak grows past it.
    scratch = sum(
        t.numel() * t.element_size()
        for buffers in list(scratch_ops._SCRATCH_DICTS)
        for key, t in list(buffers.items())
        if len(key) == 1
    )
    slack = HEAP_KEEP_BYTES + scratch
    assert growth < 0.05 or last - first < slack, (growth, (last - first) / 2**20, scratch / 2**20)
    for name, cache in BYTE_BOUNDED_CACHES.items():
        info = cache.cache_info()
        assert info.bytes <= info.max_bytes, name
    assert sum(info.max_bytes for info in (c.cache_info() for c in BYTE_BOUNDED_CACHES.values())) <= 64 * 2**20
    for buffers in list(scratch_ops._SCRATCH_DICTS):
        held = sum(t.numel() * t.element_size() for key, t in list(buffers.items()) if len(key) == 1)
        assert held <= SCRATCH_KEEP_BYTES
