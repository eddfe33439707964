"""Deterministic degradation operations on batches: BCHW float32 in [0, 1], any device.

Each ``apply_*`` takes a batch and one setting per batch item (``None`` leaves that item alone) and
returns a new tensor on the same device; inputs are never modified. Randomness enters only through
the noise seeds carried by the params.
"""

from __future__ import annotations

import ctypes
import io
import math
import os
import sys
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .jpeg_codecs import jpeg_codec_for, jpeg_roundtrip_batched, resolve_jpeg_codec, to_uint8, torchvision_codec
from .memo import byte_bounded
from .params import JpegParams, NoiseParams

POISSON_PEAK = 255.0
"""Photon count of a white pixel for Poisson (shot) noise: the image is treated as 8-bit counts."""

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma, used for grey (luma-only) Poisson noise on colour images."""


def _cpu_path(device: torch.device) -> bool:
    """Whether tensors on ``device`` take the CPU algorithms (item by item, pocketfft, Pillow, numpy's
    generator) rather than the batched device ones. One predicate, so that tests can run the device
    algorithms on CPU tensors."""
    return device.type == "cpu"


# --------------------------------------------------------------------------------------------------
# Scratch memory
# --------------------------------------------------------------------------------------------------

_SCRATCH = threading.local()
_SCRATCH_LOCK = threading.Lock()


class _Buffers(dict):
    """One thread's scratch: ``(slot,)`` -> byte buffer, and ``(slot, dtype, shape)`` -> a view of it.
    Compared and hashed by identity (it lives in a WeakSet)."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__


_SCRATCH_DICTS: weakref.WeakSet[_Buffers] = weakref.WeakSet()
"""Every live thread's scratch (a thread's goes when the thread ends)."""

SCRATCH_KEEP_BYTES = 64 * 2**20
"""Scratch memory a thread keeps once a ``degrade`` call is over (about 25 MB serve 512 x 512
training crops); a thread holding more (after a larger image) lets it go (``trim_scratch``)."""


def enable_scratch() -> None:
    """Let the calling thread keep its large temporaries between operations (see ``_scratch``).

    For the CPU workers of ``degrade``: a buffer freed back to the C allocator is often handed back
    to the OS and page-faulted in again on its next use, which costs more than the work done in it.
    The buffers go with the thread, or at ``trim_scratch``."""
    if not hasattr(_SCRATCH, "buffers"):
        _SCRATCH.buffers = _Buffers()
        with _SCRATCH_LOCK:
            _SCRATCH_DICTS.add(_SCRATCH.buffers)


def trim_scratch(keep_bytes: int = SCRATCH_KEEP_BYTES) -> None:
    """Drop the scratch buffers of every thread that holds more than ``keep_bytes`` (safe while they
    are in use: a buffer lives on until its last view is gone)."""
    with _SCRATCH_LOCK:
        for buffers in list(_SCRATCH_DICTS):
            held = [t for key, t in list(buffers.items()) if len(key) == 1]  # the buffers, not their views
            if sum(t.numel() * t.element_size() for t in held) > keep_bytes:
                buffers.clear()


def _scratch(slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor for a temporary that dies within the calling operation: a view of this
    thread's byte buffer ``slot`` when the thread keeps scratch memory (``enable_scratch``), else a
    new tensor. Never return it, nor a view of it.

    Slots are shared by temporaries that are never alive together (one operation runs at a time in
    a thread); the temporaries alive together in an operation take different slots (``SLOTS``)."""
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None or device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    view = buffers.get((slot, dtype, shape))  # the same request again: the view made last time
    if view is not None:
        return view
    size = math.prod(shape) * dtype.itemsize
    # buffers and views are made as normal tensors whatever the caller's mode: one made under
    # inference_mode could not be written in place by a later call outside it
    with torch.inference_mode(False):
        buffer = buffers.get((slot,))
        if buffer is None or buffer.numel() < size:
            for key in [key for key in buffers if key[0] == slot]:
                del buffers[key]  # the buffer being replaced and its views
            buffer = buffers[(slot,)] = torch.empty(size, dtype=torch.uint8)
            advise_huge_pages(buffer)  # long-lived: fewer TLB misses, and a few faults to fill it
        if len(buffers) > 512:  # many image sizes seen: forget the views (never the buffers)
            for key in [key for key in buffers if len(key) == 3]:
                del buffers[key]
        view = buffers[(slot, dtype, shape)] = buffer[:size].view(dtype).view(shape)
    return view


SLOTS = {
    "a": "reflect-padded image (blur); FFT canvas; noise field; JPEG's 8-bit scaling",
    "b": "row pass (separable blur); FFT spectrum; luma weights, then scaled rates, then bucket indices (noise)",
    "c": "luma, then the ambiguous-bucket mask (Poisson noise)",
    "d": "integer rates (Poisson noise)",
    "e": "uniform draws (Poisson noise)",
}
"""The scratch slots and what takes them, operation by operation."""


_HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14


@lru_cache(maxsize=1)
def _madvise() -> object | None:
    """libc's ``madvise`` on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


def advise_huge_pages(tensor: torch.Tensor) -> None:
    """Ask Linux to back a large, not yet touched CPU tensor with transparent huge pages (as numpy
    does for its large arrays): its first touch then takes a few dozen page faults instead of one
    per 4 KiB, several times faster. Only the 2 MiB-aligned part of the tensor's own memory is
    advised; a refusal (or another OS) changes nothing."""
    madvise = _madvise()
    if madvise is None or tensor.device.type != "cpu" or not tensor.is_contiguous():
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // _HUGE_PAGE) * _HUGE_PAGE, end // _HUGE_PAGE * _HUGE_PAGE
    if last > first:
        madvise(first, last - first, _MADV_HUGEPAGE)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@lru_cache(maxsize=1)
def _glibc_heap() -> tuple[object, object] | None:
    """glibc's ``mallinfo2`` and ``malloc_trim`` (Linux with glibc 2.33 or later), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        info, trim = libc.mallinfo2, libc.malloc_trim
    except (OSError, AttributeError):  # another C library (musl), or an older glibc
        return None
    info.argtypes, info.restype = (), _Mallinfo2
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return info, trim


HEAP_KEEP_BYTES = 64 * 2**20
"""Free C-heap memory the process may keep after a ``degrade`` call before it is handed back."""


def release_free_heap(keep_bytes: int = HEAP_KEEP_BYTES) -> int:
    """Hand the C heap's free memory back to the OS when it holds more than ``keep_bytes`` free;
    return the bytes it held free (0 where this cannot be known).

    glibc serves allocations below its mmap threshold (which grows up to 32 MB as large blocks are
    freed) from heaps that it rarely shrinks: after many images of different sizes, a long-running
    process keeps hundreds of MB of freed, fragmented temporaries. ``malloc_trim`` returns their
    pages. Elsewhere (macOS, Windows, musl) the C library manages this itself and nothing is done."""
    heap = _glibc_heap()
    if heap is None:
        return 0
    info, trim = heap
    free = int(info().fordblks)
    if free > keep_bytes:
        trim(0)
    return free


# --------------------------------------------------------------------------------------------------
# Borders
# --------------------------------------------------------------------------------------------------


@byte_bounded(4 * 2**20)  # int64 indices: 33 KB for a 4096 px side
def _reflect101_index_cpu(n: int, pad: int) -> torch.Tensor:
    idx = torch.arange(-pad, n + pad)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * n - 2
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


def reflect101_pad(x: torch.Tensor, pad: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pad the last two dims by ``pad`` with reflect-101 borders (``dcb|abcd|cba``), for any ``pad``.

    Unlike ``F.pad(mode="reflect")`` this works when ``pad`` exceeds the image side (it keeps
    reflecting), which tiny images with large kernels need. With ``out`` (shape ``(..., H + 2 pad,
    W + 2 pad)``), the padded image is written there and ``out`` is returned.
    """
    h, w = x.shape[-2:]
    if pad >= min(h, w):
        ih = _reflect101_index_cpu(h, pad).to(x.device)
        iw = _reflect101_index_cpu(w, pad).to(x.device)
        padded = x.index_select(-2, ih).index_select(-1, iw)
        return padded if out is None else out.copy_(padded)
    if out is None:
        return x if pad == 0 else F.pad(x, (pad, pad, pad, pad), mode="reflect")  # torch's "reflect" is reflect-101
    out[..., pad : pad + h, pad : pad + w] = x
    if pad:
        out[..., :pad, pad : pad + w] = x[..., 1 : pad + 1, :].flip(-2)
        out[..., pad + h :, pad : pad + w] = x[..., h - pad - 1 : h - 1, :].flip(-2)
        out[..., :pad] = out[..., pad + 1 : 2 * pad + 1].flip(-1)
        out[..., pad + w :] = out[..., w - 1 : w + pad - 1].flip(-1)
    return out


def _padded_scratch(slot: str, x: torch.Tensor, pad: int) -> torch.Tensor:
    """``reflect101_pad(x, pad)`` in this thread's scratch slot (see ``_scratch``)."""
    shape = (*x.shape[:-2], x.shape[-2] + 2 * pad, x.shape[-1] + 2 * pad)
    return reflect101_pad(x, pad, out=_scratch(slot, shape, x.dtype, x.device))


# --------------------------------------------------------------------------------------------------
# Blur
# --------------------------------------------------------------------------------------------------


DIRECT_BUCKETS = (7, 13, 21)
"""On GPUs, kernels up to 21 px are applied by direct convolution, padded up to the next of these
sizes so a batch runs in a few grouped convolutions; wider kernels go through the FFT, whose cost
does not grow with the kernel. Separable kernels (1-D taps) run as two 1-D passes."""

CPU_DIRECT_MAX = 7
"""On CPUs, 2-D kernels up to this size are applied tap by tap (one multiply-add of a shifted view
per nonzero tap), wider ones by the FFT (whose cost does not grow with the kernel): at 512 x 512 a
7 x 7 kernel costs half an FFT, a 9 x 9 kernel about as much."""

CPU_SEPARABLE_MAX = 31
"""On CPUs, 1-D taps up to this length run as two shift-and-add passes, longer ones by the FFT."""


def cpu_blur_method(separable: bool, size: int) -> str:
    """How a CPU applies a kernel of side ``size`` (1-D taps when ``separable``): "shift", "taps" or
    "fft" (see ``CPU_SEPARABLE_MAX`` and ``CPU_DIRECT_MAX``)."""
    if separable:
        return "shift" if size <= CPU_SEPARABLE_MAX else "fft"
    return "taps" if size <= CPU_DIRECT_MAX else "fft"


def _method(kernel: torch.Tensor, device: torch.device) -> tuple[str, int]:
    """(method, padded kernel size) for one kernel: items sharing both run together."""
    size = kernel.shape[-1]
    if _cpu_path(device):
        # a CPU batch is degraded item by item (see ``degrade``): no bucketing, exact sizes
        return cpu_blur_method(kernel.dim() == 1, size), size
    if kernel.dim() == 1:
        return "separable", next((b for b in (*DIRECT_BUCKETS, 41) if size <= b), size)
    if size <= DIRECT_BUCKETS[-1]:
        return "direct", next(b for b in DIRECT_BUCKETS if size <= b)
    return "fft", 0


def _embed(kernel: torch.Tensor, size: int) -> torch.Tensor:
    pad = (size - kernel.shape[-1]) // 2
    if not pad:
        return kernel
    return F.pad(kernel, (pad, pad) if kernel.dim() == 1 else (pad, pad, pad, pad))


def _fft_size(n: int) -> int:
    """Smallest m >= n that is a multiple of 4 with no prime factor above 5: real FFTs of such lengths
    are fast (an odd length costs about twice as much per sample)."""
    m = n + (-n) % 4
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 4


def apply_blur(images: torch.Tensor, kernels: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Correlate each image with its own kernel, reflect-101 borders (as ``cv2.filter2D``).

    Args:
        images: (B, C, H, W) float32.
        kernels: per item None (no blur), a (k, k) kernel, or 1-D taps (k,) standing for the separable
            kernel ``outer(taps, taps)``; k odd, any float dtype and device.

    Returns:
        (B, C, H, W) float32, same device.
    """
    if len(kernels) != images.shape[0]:
        raise ValueError(f"apply_blur: {len(kernels)} kernels for a batch of {images.shape[0]}")
    buckets: dict[tuple[str, int], list[int]] = {}
    kernels = list(kernels)
    for i, k in enumerate(kernels):
        if k is None:
            continue
        size = k.shape[-1]
        if size % 2 == 0 or k.dim() not in (1, 2) or (k.dim() == 2 and k.shape[0] != size):
            raise ValueError(f"apply_blur: kernel {i} has shape {tuple(k.shape)}; expected (k,) or (k, k), k odd")
        method = _method(k, images.device)
        if method[0] == "fft" and k.dim() == 1:
            kernels[i] = torch.outer(k, k)  # long taps: their outer-product kernel through the FFT
        buckets.setdefault(method, []).append(i)
    if not buckets:
        return images
    out = images.clone() if sum(len(v) for v in buckets.values()) < images.shape[0] else torch.empty_like(images)
    for (method, bucket), index in buckets.items():
        size = bucket or max(kernels[i].shape[-1] for i in index)
        stack = torch.stack([_embed(kernels[i].to(torch.float64), size) for i in index])
        stack = stack.to(images.device, torch.float32)
        sub = images[index] if len(index) < images.shape[0] else images
        result = _BLUR_METHODS[method](sub, stack)
        if len(index) == images.shape[0]:
            out = result
        else:
            out[index] = result
    return out


def _blur_shift(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable correlation as two passes of shifted multiply-adds (cache-friendly on CPUs)."""
    b, c, h, w = x.shape
    k = taps.shape[-1]
    padded = _padded_scratch("a", x, k // 2)
    weights = taps.view(b, 1, 1, 1, k)
    rows = torch.mul(padded[..., :, 0:w], weights[..., 0], out=_scratch("b", (b, c, h + k - 1, w), x.dtype, x.device))
    for j in range(1, k):
        rows.addcmul_(padded[..., :, j : j + w], weights[..., j])
    out = rows[..., 0:h, :] * weights[..., 0]
    for j in range(1, k):
        out.addcmul_(rows[..., j : j + h, :], weights[..., j])
    return out


def _blur_taps(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """2-D correlation as one multiply-add of a shifted view per nonzero tap (one item)."""
    if kernels.shape[0] != 1:
        return torch.cat([_blur_taps(x[i : i + 1], kernels[i : i + 1]) for i in range(kernels.shape[0])])
    h, w = x.shape[-2:]
    k = kernels.shape[-1]
    padded = _padded_scratch("a", x, k // 2)
    out = None
    for i, row in enumerate(kernels[0].tolist()):
        for j, weight in enumerate(row):
            if weight == 0.0:
                continue  # motion kernels are mostly zeros
            window = padded[..., i : i + h, j : j + w]
            out = window * weight if out is None else out.add_(window, alpha=weight)
    return out if out is not None else torch.zeros_like(x)


def _blur_separable(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    k = taps.shape[-1]
    padded = reflect101_pad(x, k // 2).reshape(1, b * c, h + k - 1, w + k - 1)
    # channels-last makes oneDNN's depthwise convolution several times faster on CPUs
    padded = padded.contiguous(memory_format=torch.channels_last)
    weights = taps.repeat_interleave(c, dim=0)
    cols = F.conv2d(padded, weights.view(b * c, 1, k, 1), groups=b * c)
    out = F.conv2d(cols, weights.view(b * c, 1, 1, k), groups=b * c)
    return out.reshape(b, c, h, w).contiguous()


def _blur_direct(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    k = kernels.shape[-1]
    padded = reflect101_pad(x, k // 2).reshape(1, b * c, h + k - 1, w + k - 1)
    weight = kernels.repeat_interleave(c, dim=0).unsqueeze(1)
    return F.conv2d(padded, weight, groups=b * c).reshape(b, c, h, w)


DFT_TABLE_BYTES = 32 * 2**20
"""Most bytes the cached DFT tables of ``_kernel_response`` hold together (about 4 MB for a 4096 px
FFT side and a 61-tap kernel)."""


@byte_bounded(DFT_TABLE_BYTES)
def _dft_matrices(n: int, half: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For frequencies f in [0, n) and offsets t in [-half, half], with ``C = cos(2 pi f t / n)`` and
    ``S = sin(...)`` (from float64, as float32): ``[C; S]`` stacked by rows (2n, k) and, for the
    ``rfft`` frequencies only, ``[C, -S]`` and ``[S, C]`` side by side (n // 2 + 1, 2k)."""
    f = torch.arange(n, dtype=torch.int64).unsqueeze(1)
    t = torch.arange(-half, half + 1, dtype=torch.int64).unsqueeze(0)
    angle = torch.remainder(f * t, n).to(torch.float64) * (2 * math.pi / n)  # reduced exactly first
    cos, sin = torch.cos(angle), torch.sin(angle)
    rows = torch.cat([cos, sin]).to(torch.float32)
    half_spectrum = slice(0, n // 2 + 1)
    real = torch.cat([cos[half_spectrum], -sin[half_spectrum]], dim=1).to(torch.float32)
    imag = torch.cat([sin[half_spectrum], cos[half_spectrum]], dim=1).to(torch.float32)
    return rows, real, imag


def _kernel_response(kernel: torch.Tensor, fh: int, fw: int) -> torch.Tensor:
    """The conjugate spectrum of a (k, k) kernel centred on the origin of an (fh, fw) grid, on the
    ``rfft2`` frequencies (fh, fw // 2 + 1): what an image spectrum is multiplied by to correlate it
    with the kernel. Two small matrix products instead of one more FFT plane:
    ``conj(DFT) = (C k C' - S k S') + i (S k C' + C k S')``; real for a point-symmetric kernel (all
    of this package's kernels)."""
    k = kernel.shape[-1]
    rows, _, _ = _dft_matrices(fh, k // 2)
    _, real_w, imag_w = _dft_matrices(fw, k // 2)
    kernel = kernel.to(torch.float32).cpu()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a threaded matrix product sums in another order: other bits
    try:
        ck_sk = (rows @ kernel).view(2, fh, k).transpose(0, 1).reshape(fh, 2 * k)  # [C k, S k]
        real = ck_sk @ real_w.T
        if torch.equal(kernel, kernel.flip(-1, -2)):
            return real  # the imaginary part is zero
        return torch.complex(real, ck_sk @ imag_w.T)
    finally:
        torch.set_num_threads(threads)


@lru_cache(maxsize=1)
def _pocketfft_modules() -> tuple[object, object | None]:
    """``scipy.fft`` and its low-level pocketfft binding (transforms with ``out=``; private, present
    since scipy 1.4), or None for the latter. Imported on first use: scipy.fft alone takes about
    0.2 s to import, which would otherwise slow every ComfyUI start."""
    import scipy.fft

    try:
        from scipy.fft._pocketfft import pypocketfft
    except ImportError:  # pragma: no cover - an older or newer scipy: the public functions serve
        pypocketfft = None
    return scipy.fft, pypocketfft


def _correlate_pocketfft(canvas: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Circular correlation of each (B, C, fh, fw) canvas with its kernel, through pocketfft
    (scipy's FFT): about 1.4x faster than torch's on CPUs, and with scipy's low-level functions the
    spectrum lives in a scratch buffer and is transformed back in place (no fresh temporaries, whose
    page faults cost as much as the transforms). Each 1-D transform is computed whole by one thread,
    so the bits do not depend on the thread count."""
    b, c, fh, fw = canvas.shape
    threads = torch.get_num_threads()
    responses = [_kernel_response(kernels[i], fh, fw) for i in range(b)]
    fft, pocketfft = _pocketfft_modules()
    if pocketfft is None:  # scipy without its low-level module: the public functions, which allocate
        spectrum = fft.rfft2(canvas.numpy(), workers=threads)
        for i in range(b):
            spectrum[i] *= responses[i].numpy()
        return torch.from_numpy(fft.irfft2(spectrum, s=(fh, fw), workers=threads, overwrite_x=True))
    spectrum = _scratch("b", (b, c, fh, fw // 2 + 1), torch.complex64, canvas.device).numpy()
    pocketfft.r2c(canvas.numpy(), (2, 3), True, 0, spectrum, threads)
    for i in range(b):
        spectrum[i] *= responses[i].mul_(1.0 / (fh * fw)).numpy()  # the inverse's scaling folded in
    pocketfft.c2c(spectrum, (2,), False, 0, spectrum, threads)
    out = torch.empty((b, c, fh, fw), dtype=torch.float32)
    pocketfft.c2r(spectrum, (3,), fw, False, 0, out.numpy(), threads)
    return out


def _blur_fft(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    k = kernels.shape[-1]
    p = k // 2
    # Circular correlation on a zero-extended canvas equals linear correlation inside the crop: the
    # crop only reads taps within the reflect pad, which is as wide as the kernel's half-width.
    fh, fw = _fft_size(h + 2 * p), _fft_size(w + 2 * p)
    if _cpu_path(x.device):
        canvas = _scratch("a", (b, c, fh, fw), x.dtype, x.device)
        canvas[..., h + 2 * p :, :] = 0
        canvas[..., : h + 2 * p, w + 2 * p :] = 0
        reflect101_pad(x, p, out=canvas[..., : h + 2 * p, : w + 2 * p])
        return _correlate_pocketfft(canvas, kernels)[..., p : p + h, p : p + w]
    # On GPUs the kernels ride along as one more plane of the canvas, centred on the origin, so
    # one batched forward transform on the device serves images and kernels alike.
    canvas = x.new_zeros((b, c + 1, fh, fw))
    reflect101_pad(x, p, out=canvas[:, :c, : h + 2 * p, : w + 2 * p])
    plane = canvas[:, c]
    plane[:, : p + 1, : p + 1] = kernels[:, p:, p:]
    plane[:, : p + 1, fw - p :] = kernels[:, p:, :p]
    plane[:, fh - p :, : p + 1] = kernels[:, :p, p:]
    plane[:, fh - p :, fw - p :] = kernels[:, :p, :p]
    spectrum = torch.fft.rfft2(canvas)
    response = spectrum[:, c:]
    response = response.real if torch.equal(kernels, kernels.flip(-1, -2)) else torch.conj(response)
    image = spectrum[:, :c]
    image *= response
    return torch.fft.irfft2(image, s=(fh, fw))[..., p : p + h, p : p + w]


_BLUR_METHODS = {
    "shift": _blur_shift,
    "taps": _blur_taps,
    "separable": _blur_separable,
    "direct": _blur_direct,
    "fft": _blur_fft,
}


# --------------------------------------------------------------------------------------------------
# Resize
# --------------------------------------------------------------------------------------------------


def _box(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x <= 0.5)).to(x.dtype)


def _triangle(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(1 - x.abs(), min=0)


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    ax = x.abs()
    near = ((a + 2) * ax - (a + 3)) * ax * ax + 1
    far = ((a * ax - 5 * a) * ax + 8 * a) * ax - 4 * a
    return torch.where(ax < 1, near, torch.where(ax < 2, far, torch.zeros_like(ax)))


_FILTERS = {"area": (_box, 0.5), "bilinear": (_triangle, 1.0), "bicubic": (_cubic, 2.0)}


RESIZE_TABLE_BYTES = 16 * 2**20
"""Most bytes the cached per-axis resampling taps (``_banded``) hold together; an entry is a few
float32 and int64 values per output pixel (about 200 KB for a 2048 px axis with five taps)."""


def _resize_band(n_in: int, n_out: int, interpolation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The nonzero band of ``resize_matrix``: per output pixel, the first input pixel its filter may
    reach (n_out,) int64 and the normalised float64 weights of that pixel and the next ``width - 1``
    (n_out, width), zero past the image or the filter's reach. O(n_out * taps) memory, where the
    dense matrix takes O(n_out * n_in)."""
    filt, support = _FILTERS[interpolation]
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = support * stretch
    centres = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    lo = torch.clamp((centres - support + 0.5).trunc(), min=0).long()
    hi = torch.clamp((centres + support + 0.5).trunc(), max=n_in).long()
    width = max(1, int((hi - lo).max()))
    x = lo.unsqueeze(1) + torch.arange(width).unsqueeze(0)  # (n_out, width) input pixels
    weights = filt((x.to(torch.float64) - centres.unsqueeze(1) + 0.5) / stretch)
    weights = torch.where(x < hi.unsqueeze(1), weights, torch.zeros_like(weights))
    total = weights.sum(dim=1, keepdim=True)
    return lo, weights / torch.where(total == 0, torch.ones_like(total), total)


def resize_matrix(n_in: int, n_out: int, interpolation: str) -> torch.Tensor:
    """(n_out, n_in) float64 resampling matrix for one axis (dense: a reference, never cached).

    Pillow's antialiased resampling: output pixel ``i`` is centred at input coordinate
    ``(i + 0.5) * n_in / n_out``; the filter (box, triangle or Keys a=-0.5 cubic) is stretched by the
    shrink factor when shrinking; taps falling outside the image are dropped and the rest
    renormalised. Hence "area" averages pixel areas exactly when shrinking.
    """
    lo, weights = _resize_band(n_in, n_out, interpolation)
    index = (lo.unsqueeze(1) + torch.arange(weights.shape[1]).unsqueeze(0)).clamp(max=n_in - 1)
    matrix = torch.zeros((n_out, n_in), dtype=torch.float64)
    # past the image the weights are zero and the clamped index repeats the last pixel: adding keeps it
    return matrix.scatter_add_(1, index, weights)


@byte_bounded(RESIZE_TABLE_BYTES)
def _banded(n_in: int, n_out: int, interpolation: str) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """``resize_matrix`` as taps: per tap j, the source index of each output pixel (n_out,) and its
    weight (n_out,) in float32, from each row's first nonzero weight; rows with fewer nonzero
    weights than the widest get zero-weight taps."""
    lo, weights = _resize_band(n_in, n_out, interpolation)
    nonzero = weights != 0
    skip = nonzero.to(torch.int8).argmax(dim=1)  # leading zero weights of each row
    last = weights.shape[1] - nonzero.flip(1).to(torch.int8).argmax(dim=1)
    width = max(1, int((last - skip).max()))
    first = lo + skip
    taps = []
    for j in range(width):
        column = (skip + j).clamp(max=weights.shape[1] - 1)
        weight = weights.gather(1, column.unsqueeze(1)).squeeze(1)
        weight = torch.where(skip + j < weights.shape[1], weight, torch.zeros_like(weight))
        taps.append(((first + j).clamp(max=n_in - 1), weight.to(torch.float32)))
    return tuple(taps)


@lru_cache(maxsize=1024)  # a bool per pair of sizes: about 100 bytes an entry
def _is_nearest_exact(n_in: int, n_out: int) -> bool:
    """Whether the box filter on this axis is a single unit tap per output pixel that picks exactly
    the pixel torch's ``nearest-exact`` picks (true when enlarging, barring float rounding of the
    source coordinate, which this checks on the indices themselves; when shrinking only where float
    rounding drops a window's second pixel, as for 21 -> 20). Decided on the taps alone: a few
    values per output pixel, never the dense matrix."""
    if n_out == n_in:
        return True
    taps = _banded(n_in, n_out, "area")
    if len(taps) != 1 or not bool((taps[0][1] == 1).all()):
        return False
    source = torch.arange(n_in, dtype=torch.float32)
    picked = F.interpolate(source.view(1, 1, n_in, 1), size=(n_out, 1), mode="nearest-exact").flatten()
    across = F.interpolate(source.view(1, 1, 1, n_in), size=(1, n_out), mode="nearest-exact").flatten()
    return torch.equal(picked.long(), taps[0][0]) and torch.equal(across.long(), taps[0][0])


def _apply_banded(images: torch.Tensor, taps: tuple[tuple[torch.Tensor, torch.Tensor], ...], dim: int) -> torch.Tensor:
    """Apply a banded one-axis operator (``_banded``) along ``dim`` (-1 or -2): a weighted sum of
    gathered pixels, in float32 on the images' device."""
    shape = (-1,) if dim == -1 else (-1, 1)
    out = None
    for index, weight in taps:
        index = index.to(images.device)
        # advanced indexing gathers along the last axis faster than index_select does
        term = images[..., index] if dim == -1 else images.index_select(dim, index)
        term.mul_(weight.to(images.device, images.dtype).view(shape))
        out = term if out is None else out.add_(term)
    return out


PIL_FILTERS = {
    "area": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
"""Pillow's antialiased filter for each interpolation name (the filters ``resize_matrix`` follows)."""


def _resize_pillow(images: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """``apply_resize`` through Pillow's resampling of 32-bit float planes (the same filters, summed
    in double precision; on CPUs twice as fast as gathering box taps in torch), plane by plane."""
    b, c = images.shape[:2]
    out = torch.empty((b, c, *size), dtype=torch.float32)
    source = images.detach().to(torch.float32).numpy()
    target = out.numpy()
    for i in range(b):
        for j in range(c):
            plane = Image.fromarray(source[i, j], mode="F").resize((size[1], size[0]), PIL_FILTERS[interpolation])
            target[i, j] = np.asarray(plane)
    return out


def resized_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Output size of a resize by ``scale``: ``max(1, round(side * scale))`` per side."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def apply_resize(images: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Resize a batch to ``size`` = (H', W') with an antialiased filter (see ``resize_matrix``)."""
    h, w = images.shape[-2:]
    if (h, w) == tuple(size):
        return images
    if interpolation == "area":
        if _is_nearest_exact(h, size[0]) and _is_nearest_exact(w, size[1]):
            return F.interpolate(images, size=tuple(size), mode="nearest-exact")
        if _cpu_path(images.device):
            return _resize_pillow(images, size, interpolation)
        # box weights are a handful of equal taps per output pixel: gathering them is several times
        # cheaper than multiplying by the mostly-zero resize matrices
        if size[0] != h:
            images = _apply_banded(images, _banded(h, size[0], "area"), -2)
        if size[1] != w:
            images = _apply_banded(images, _banded(w, size[1], "area"), -1)
        return images
    # torch's antialiased kernels compute exactly resize_matrix's weights (checked in the tests), faster;
    # when enlarging, the triangle filter is not stretched and plain bilinear is the same sum, faster still
    if interpolation == "bilinear" and size[0] >= h and size[1] >= w:
        # channels as batch items: this kernel then gives the same bits whatever the thread count
        planes = images.reshape(-1, 1, h, w)
        out = F.interpolate(planes, size=tuple(size), mode="bilinear", antialias=False, align_corners=False)
        return out.reshape(*images.shape[:-2], *size)
    return F.interpolate(images, size=tuple(size), mode=interpolation, antialias=True, align_corners=False)


# --------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------


_POISSON_K = 512
"""Counts per rate in the tables: P(X >= 512) for X ~ Poisson(255) is far below 2^-31."""

_POISSON_BITS = 31
"""Each draw is a uniform integer ``b`` in [0, 2^31) (see ``_uniform_draws``); ``u = b / 2^31``."""

_POISSON_BUCKET_SHIFT = 20
"""Guide-table bucket of a draw: its top 11 bits, ``b >> 20`` (2048 buckets per rate)."""

_POISSON_BUCKETS = 1 << (_POISSON_BITS - _POISSON_BUCKET_SHIFT)

_AMBIGUOUS = 4096.0
"""Guide entry of a bucket that two or more counts share (no ``count - rate`` comes near it)."""


@lru_cache(maxsize=8)
def _poisson_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Per integer rate 0..255: the inversion thresholds, two guide tables and the number of bisection
    steps that settles any bucket.

    ``threshold`` (int64, flattened 256 x K) holds ``ceil(CDF_rate(k) * 2^31)`` from a float64 CDF, so
    that for a draw ``b`` the count is ``min{k : b < threshold[k]}``, i.e. ``min{k : CDF(k) > b / 2^31}``.
    Guide entry j of a rate covers the draws ``b >> 20 == j``: ``delta`` (float32) holds ``count - rate``
    when one count covers the whole bucket, else ``_AMBIGUOUS``; ``span`` (int32) holds ``lo | hi << 16``,
    the counts of the bucket's first and last draw (the answer lies in [lo, hi])."""
    rates = torch.arange(int(POISSON_PEAK) + 1, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(_POISSON_K, dtype=torch.float64).unsqueeze(0)
    pmf = torch.exp(k * torch.log(rates.clamp(min=1e-300)) - rates - torch.lgamma(k + 1))
    pmf[0] = 0.0
    pmf[0, 0] = 1.0
    cdf = torch.cumsum(pmf, dim=1).clamp(max=1.0)
    cdf[:, -1] = 1.0  # every draw lands below the last threshold
    threshold = torch.ceil(cdf * 2.0**_POISSON_BITS).to(torch.int64).contiguous()
    step = 1 << _POISSON_BUCKET_SHIFT
    first_draw = torch.arange(_POISSON_BUCKETS, dtype=torch.int64) * step
    edges = torch.stack([first_draw, first_draw + (step - 1)]).T.reshape(1, -1).expand(cdf.shape[0], -1)
    counts = torch.searchsorted(threshold, edges.contiguous(), right=True).view(cdf.shape[0], _POISSON_BUCKETS, 2)
    lo, hi = counts[..., 0], counts[..., 1]
    delta = torch.where(hi == lo, lo - rates, _AMBIGUOUS)
    span = (lo | (hi << 16)).to(torch.int32)
    steps = max(1, math.ceil(math.log2(int((hi - lo).max()) + 1)))
    return (
        threshold.reshape(-1).to(device),
        delta.to(torch.float32).reshape(-1).to(device),
        span.reshape(-1).to(device),
        steps,
    )


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Positions of the true elements of a 1-D bool tensor (int64)."""
    if _cpu_path(mask.device):
        return torch.from_numpy(np.flatnonzero(mask.numpy()))  # several times faster than torch.nonzero
    return mask.nonzero().squeeze(1)


def _uniform_draws(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` uniform 31-bit integers (int32 in [0, 2^31)) from ``generator``.

    On a CPU, one 63-bit seed from ``generator`` starts numpy's PCG64, whose raw 64-bit outputs give
    two draws each: about twice as fast as torch's Mersenne twister. Elsewhere, ``random_`` on the
    device. Either way the generator advances, and the same state gives the same draws."""
    device = generator.device
    out = _scratch("e", (n,), torch.int32, device)
    if not _cpu_path(device):
        return out.random_(generator=generator)
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    raw = np.random.PCG64(seed).random_raw((n + 1) // 2).view(np.int32)[:n]
    return torch.bitwise_and(torch.from_numpy(raw), 0x7FFFFFFF, out=out)


def _poisson_deltas(rates: torch.Tensor, generator: torch.Generator, out: torch.Tensor | None = None) -> torch.Tensor:
    """``Poisson(rate) - rate`` as float32 for int32 ``rates`` in [0, 255], by inversion
    (``k = min{k : CDF_rate(k) > u}``, one 31-bit uniform draw per element): a guide table answers
    about 97% of the elements outright, and a fixed-length bisection settles the rest. Written to
    ``out`` (float32, ``rates.numel()`` elements) when given."""
    threshold, delta, span, steps = _poisson_tables(rates.device)
    flat = rates.reshape(-1)
    n, device = flat.numel(), flat.device
    draws = _uniform_draws(n, generator)
    cell = torch.bitwise_right_shift(draws, _POISSON_BUCKET_SHIFT, out=_scratch("b", (n,), torch.int32, device))
    cell.add_(flat, alpha=_POISSON_BUCKETS)
    out = torch.index_select(delta, 0, cell, out=torch.empty(n, device=device) if out is None else out.view(n))
    todo = _flat_nonzero(torch.gt(out, _AMBIGUOUS / 2, out=_scratch("c", (n,), torch.bool, device)))
    if todo.numel():
        code = span.index_select(0, cell.index_select(0, todo))
        lo, hi = code & 0xFFFF, code >> 16
        draw = draws.index_select(0, todo).to(torch.int64)
        rate = flat.index_select(0, todo)
        base = rate * _POISSON_K
        # most ambiguous buckets hold two counts: one comparison settles them (a draw below the
        # first threshold is the first count, whatever the bucket's width)
        above = threshold.index_select(0, base + lo) <= draw
        lo += above.to(torch.int32)
        wide = _flat_nonzero(above & (hi > lo))
        if wide.numel():
            l, h, w_base, w_draw = lo[wide], hi[wide], base[wide], draw[wide]
            # bisection for the first k in [l, h] with threshold(k) > draw, as deep as the widest bucket needs
            for _ in range(min(steps, int(h.sub(l).max()).bit_length())):
                mid = (l + h) >> 1
                above = threshold.index_select(0, w_base + mid) <= w_draw
                l = torch.where(above, mid + 1, l)
                h = torch.where(above, h, mid)
            lo[wide] = l
        out.index_copy_(0, todo, (lo - rate).to(torch.float32))
    return out.reshape(rates.shape)


def sample_poisson_counts(rates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Exact Poisson draws for integer rates in [0, 255] by inversion: ``k = min{k : CDF_rate(k) > u}``.

    One uniform draw per element (see ``_poisson_deltas``); several times faster than ``torch.poisson``
    on a CPU; on a given device, the same generator state gives the same counts.

    Args:
        rates: integer tensor of rates in [0, 255] (any shape).
        generator: the source of the uniforms, on ``rates.device``.

    Returns:
        int32 counts, shape of ``rates``.
    """
    rates = rates.to(torch.int32)
    return _poisson_deltas(rates, generator).to(torch.int32).add_(rates)


def _unit_noise(params: NoiseParams, image: torch.Tensor, temporary: bool = False) -> tuple[torch.Tensor, float]:
    """``(field, multiplier)`` with ``noise_field == field * multiplier`` (kept apart so the multiply
    can be folded into the addition). A ``temporary`` field may live in this thread's scratch memory
    (see ``_scratch``): use it before the next operation. A noise with a named part (graded requests)
    is the sum of its two parts' fields, each computed exactly as ``noise_field`` computes it alone."""
    residual, named = params.parts()
    if named is not None:
        first, m1 = _unit_noise(residual, image)
        second, m2 = _unit_noise(named, image)
        return torch.add(first.mul_(m1), second.mul_(m2)), 1.0
    c, h, w = image.shape
    device = image.device
    generator = torch.Generator(device=device).manual_seed(params.seed)
    channels = 1 if params.gray else c
    field = _scratch("a", (channels, h, w), torch.float32, device) if temporary else None
    if params.kind == "gaussian":
        field = torch.randn((channels, h, w), generator=generator, device=device, dtype=torch.float32, out=field)
        return field, params.sigma
    if params.gray and c == 3:
        weights = torch.tensor(LUMA_WEIGHTS, device=device, dtype=image.dtype).view(3, 1, 1)
        weighted = torch.mul(image, weights, out=_scratch("b", (3, h, w), image.dtype, device))
        value = torch.sum(weighted, 0, keepdim=True, out=_scratch("c", (1, h, w), image.dtype, device))
    else:
        value = image[:1] if params.gray else image
    scaled = torch.mul(value, POISSON_PEAK, out=_scratch("b", value.shape, value.dtype, device))
    scaled.clamp_(0, POISSON_PEAK).round_()
    rates = _scratch("d", value.shape, torch.int32, device).copy_(scaled)
    return _poisson_deltas(rates, generator, out=field), params.scale / POISSON_PEAK


def noise_field(params: NoiseParams, image: torch.Tensor) -> torch.Tensor:
    """The additive noise for one image (C, H, W), drawn from ``params.seed`` on the image's device.

    Gaussian: ``sigma * N(0, 1)``. Poisson (shot noise of 8-bit photon counts): with
    ``n = round(PEAK * v)`` for the pixel value ``v`` (its luma when ``gray``), the noise is
    ``scale * (Poisson(n) - n) / PEAK``: zero mean, standard deviation ``scale * sqrt(v / PEAK)``.
    A grey field has one channel and broadcasts over colour.
    """
    field, multiplier = _unit_noise(params, image)
    return field.mul_(multiplier)


def apply_noise(images: torch.Tensor, noises: Sequence[NoiseParams | None], inplace: bool = False) -> torch.Tensor:
    """Add each item's noise field (``noise_field``) and clip to [0, 1]; into ``images`` itself when
    ``inplace`` (for a caller whose tensor it is: the pipeline's intermediates), else into a new one."""
    if len(noises) != images.shape[0]:
        raise ValueError(f"apply_noise: {len(noises)} settings for a batch of {images.shape[0]}")
    if all(n is None for n in noises):
        return images
    out = images if inplace else torch.empty_like(images)
    for i, params in enumerate(noises):
        if params is None:
            if not inplace:
                out[i] = images[i]
        else:
            field, multiplier = _unit_noise(params, images[i], temporary=True)
            torch.add(images[i], field, alpha=multiplier, out=out[i]).clamp_(0, 1)
    return out


# --------------------------------------------------------------------------------------------------
# JPEG
# --------------------------------------------------------------------------------------------------


def _to_pil(image: torch.Tensor) -> Image.Image:
    """(C, H, W) float in [0, 1], C = 1 or 3 -> 8-bit Pillow image (rounding half to even, clipped)."""
    image = image.detach().cpu()
    scaled = torch.mul(image, 255, out=_scratch("a", image.shape, image.dtype, image.device))
    scaled.round_().clamp_(0, 255)
    # numpy casts float32 to uint8 several times faster than torch does on CPUs
    planes = scaled.numpy().astype(np.uint8)
    if planes.shape[0] == 1:
        return Image.fromarray(planes[0], mode="L")
    # planar -> interleaved inside Pillow is cheaper than a byte transpose in torch
    return Image.merge("RGB", [Image.fromarray(plane, mode="L") for plane in planes])


def _jpeg_file() -> io.BufferedRandom | None:
    """This thread's in-memory file for JPEG encoding (Linux ``memfd``; closed when the thread ends),
    or None where there is none."""
    if not hasattr(os, "memfd_create"):
        return None
    file = getattr(_SCRATCH, "jpeg_file", None)
    if file is None:
        try:
            file = _SCRATCH.jpeg_file = open(os.memfd_create("spire-jpeg", os.MFD_CLOEXEC), "w+b")  # noqa: SIM115
        except OSError:
            return None
    return file


def _encode(image: Image.Image, quality: int) -> bytes:
    """JPEG bytes of ``image`` (libjpeg through Pillow).

    Pillow encodes into a file descriptor without holding the GIL, but into a BytesIO while holding
    it, which stalls every other thread for the whole encode; so each thread encodes into its own
    in-memory file (``_jpeg_file``) where it can. The bytes are the same either way."""
    options = {"format": "JPEG", "quality": int(quality), "subsampling": 0 if image.mode == "L" else 2}
    file = _jpeg_file()
    if file is None:
        buffer = io.BytesIO()
        image.save(buffer, **options)
        return buffer.getvalue()
    file.seek(0)
    file.truncate()
    image.save(file, **options)
    file.flush()
    fd = file.fileno()
    return os.pread(fd, os.lseek(fd, 0, os.SEEK_END), 0)


def jpeg_encode(pixels: np.ndarray, quality: int) -> bytes:
    """Encode (H, W, C) uint8 pixels (C = 1 or 3) with libjpeg at ``quality``.

    Colour uses 4:2:0 chroma subsampling and the baseline (islow DCT, non-optimised, non-progressive)
    settings libjpeg defaults to, so any libjpeg encode at the same quality gives the same bytes.
    """
    grey = pixels.shape[-1] == 1
    return _encode(Image.fromarray(pixels[..., 0] if grey else pixels, mode="L" if grey else "RGB"), quality)


def jpeg_decode(data: bytes) -> np.ndarray:
    """Decode JPEG bytes to (H, W, C) uint8 (C = 1 or 3)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        out = np.asarray(image)
    return out[..., None] if out.ndim == 2 else out


def jpeg_roundtrip_uint8(pixels: np.ndarray, quality: int) -> np.ndarray:
    """Encode (H, W, C) uint8 pixels with libjpeg at ``quality`` (see ``jpeg_encode``) and decode them."""
    return jpeg_decode(jpeg_encode(pixels, quality))


def _jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """One (C, H, W) float image through ``jpeg_encode`` and ``jpeg_decode``, as (C, H, W) float32
    on the CPU. Planes go to Pillow without an 8-bit HWC copy, and come back one band at a time,
    each divided by 255 straight into its float plane."""
    out = torch.empty(image.shape, dtype=torch.float32)
    planes = out.numpy()
    with Image.open(io.BytesIO(_encode(_to_pil(image), quality))) as decoded:
        decoded.load()
        height, width = planes.shape[1:]
        for c, band in enumerate("L" if planes.shape[0] == 1 else "RGB"):
            pixels = np.frombuffer(decoded.tobytes("raw", band), dtype=np.uint8).reshape(height, width)
            np.divide(pixels, np.float32(255), out=planes[c])  # float32 division, as torch's
    return out


def _workers(n: int) -> int:
    return max(1, min(n, os.cpu_count() or 1, torch.get_num_threads()))


def apply_jpeg(images: torch.Tensor, settings: Sequence[JpegParams | None], *, codec: str = "auto") -> torch.Tensor:
    """JPEG-compress each item at its own quality.

    The image is rounded to 8 bits first (JPEG stores 8-bit samples; values are clipped to [0, 1]
    there); the result is the decoded 8-bit image as float32 in [0, 1] on the input's device.

    ``codec`` (see ``jpeg_codecs``): ``"libjpeg"`` codes through Pillow on the CPU, items in parallel
    threads (Pillow releases the GIL while coding), the same bytes on every device; ``"torchvision"``
    codes with torchvision.io on the images' own device (libjpeg on the CPU, nvjpeg on CUDA), one
    encode call per distinct quality; ``"nvjpeg"`` is that with the images required on CUDA;
    ``"auto"`` is nvjpeg for images on a CUDA device where it works, else libjpeg. On CUDA the
    default therefore differs slightly from libjpeg (another DCT and rounding, 4:4:4 chroma instead of
    4:2:0); pass ``"libjpeg"`` for the exact path.

    Raises:
        ValueError: a settings list of the wrong length, an unknown codec, or ``"nvjpeg"`` for images
            that are not on a CUDA device.
        RuntimeError: ``"nvjpeg"`` or ``"torchvision"`` where torchvision's JPEG codec does not work.
    """
    if len(settings) != images.shape[0]:
        raise ValueError(f"apply_jpeg: {len(settings)} settings for a batch of {images.shape[0]}")
    path = resolve_jpeg_codec(codec, images.device)
    active = [i for i, s in enumerate(settings) if s is not None]
    if not active:
        return images

    if path == "torchvision":
        subset = images if len(active) == images.shape[0] else images[active]
        batch = jpeg_roundtrip_batched(subset, [settings[i].quality for i in active], *torchvision_codec())
    else:

        def one(i: int) -> torch.Tensor:
            return _jpeg_roundtrip(images[i], settings[i].quality)

        if len(active) == 1:
            coded = [one(active[0])]
        else:
            with ThreadPoolExecutor(max_workers=_workers(len(active))) as pool:
                coded = list(pool.map(one, active))
        batch = (coded[0].unsqueeze(0) if len(coded) == 1 else torch.stack(coded)).to(images.device)
    if len(active) == images.shape[0]:
        return batch
    out = images.clone()
    out[active] = batch
    return out


def _psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [0, 1] tensors over all their values (inf when equal)."""
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def jpeg_codec_distance(images: torch.Tensor, qualities: Sequence[int], codec: str = "auto") -> dict:
    """How far ``codec``'s JPEG round trip is from libjpeg's, on the same 8-bit images.

    Args:
        images: (B, C, H, W) float in [0, 1] (C = 1 or 3) on the device ``codec`` runs on; they are
            rounded to 8 bits first, as ``apply_jpeg`` does, and that 8-bit batch is "the input".
        qualities: JPEG qualities (1..100) to compare at; every image is coded at each.
        codec: any ``apply_jpeg`` codec (``"auto"`` resolves as ``jpeg_codec_for`` says).

    Returns:
        ``{"codec", "device", "images", "per_quality", "min_psnr_to_libjpeg_db"}``; ``per_quality``
        maps each quality to ``psnr_to_libjpeg_db`` (codec's output against libjpeg's; inf when they
        are equal), ``codec_psnr_to_input_db``, ``libjpeg_psnr_to_input_db``, ``max_abs_diff_8bit`` and
        ``mean_abs_diff_8bit`` (codec against libjpeg, in 8-bit steps). PSNRs pool the squared errors of
        the whole batch, for a peak of 1.
    """
    resolve_jpeg_codec(codec, images.device, where="jpeg_codec_distance")
    quantised = to_uint8(images).to(torch.float32).div_(255)
    per_quality: dict[int, dict[str, float]] = {}
    for quality in qualities:
        settings = [JpegParams(quality=int(quality))] * images.shape[0]
        ours = apply_jpeg(quantised, settings, codec=codec)
        libjpeg = apply_jpeg(quantised, settings, codec="libjpeg")
        steps = (ours - libjpeg).abs().mul_(255).round_()
        per_quality[int(quality)] = {
            "psnr_to_libjpeg_db": _psnr_db(ours, libjpeg),
            "codec_psnr_to_input_db": _psnr_db(ours, quantised),
            "libjpeg_psnr_to_input_db": _psnr_db(libjpeg, quantised),
            "max_abs_diff_8bit": int(steps.max()),
            "mean_abs_diff_8bit": float(steps.mean()),
        }
    name = jpeg_codec_for(images.device) if codec == "auto" else codec
    return {
        "codec": name,
        "device": str(images.device),
        "images": int(images.shape[0]),
        "per_quality": per_quality,
        "min_psnr_to_libjpeg_db": min((q["psnr_to_libjpeg_db"] for q in per_quality.values()), default=math.inf),
    }
