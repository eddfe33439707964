"""Blur: correlate each image with its own kernel, reflect-101 borders (``apply_blur``).

CPUs apply small kernels tap by tap or as two 1-D passes and wide ones by pocketfft; devices bucket kernels by
size into grouped convolutions, or take the FFT (``DIRECT_BUCKETS``, ``cpu_blur_method``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from . import workers
from .memo import byte_bounded
from .scratch import scratch_tensor

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
    """``reflect101_pad(x, pad)`` in this thread's scratch slot (see ``scratch_tensor``)."""
    shape = (*x.shape[:-2], x.shape[-2] + 2 * pad, x.shape[-1] + 2 * pad)
    return reflect101_pad(x, pad, out=scratch_tensor(slot, shape, x.dtype, x.device))


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
    if workers.cpu_path(device):
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
    rows = torch.mul(
        padded[..., :, 0:w], weights[..., 0], out=scratch_tensor("b", (b, c, h + k - 1, w), x.dtype, x.device)
    )
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
    spectrum = scratch_tensor("b", (b, c, fh, fw // 2 + 1), torch.complex64, canvas.device).numpy()
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
    if workers.cpu_path(x.device):
        canvas = scratch_tensor("a", (b, c, fh, fw), x.dtype, x.device)
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
