"""JPEG: compress each item at its own quality and decode it back (``apply_jpeg``).

libjpeg through Pillow on the CPU (items on parallel threads, in-memory files), or torchvision's codec on the
images' device (``jpeg_codecs``); ``jpeg_codec_distance`` measures how far a codec is from libjpeg.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from .jpeg_codecs import jpeg_codec_for, jpeg_roundtrip_batched, resolve_jpeg_codec, to_uint8, torchvision_codec
from .params import JpegParams
from .scratch import scratch_tensor
from .workers import cpu_workers

_JPEG_FILES = threading.local()
"""Each thread's in-memory file for encoding (``_jpeg_file``)."""


def _to_pil(image: torch.Tensor) -> Image.Image:
    """(C, H, W) float in [0, 1], C = 1 or 3 -> 8-bit Pillow image (rounding half to even, clipped)."""
    image = image.detach().cpu()
    scaled = torch.mul(image, 255, out=scratch_tensor("a", image.shape, image.dtype, image.device))
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
    file = getattr(_JPEG_FILES, "file", None)
    if file is None:
        try:
            file = _JPEG_FILES.file = open(os.memfd_create("spire-jpeg", os.MFD_CLOEXEC), "w+b")  # noqa: SIM115
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
            with ThreadPoolExecutor(max_workers=cpu_workers(len(active))) as pool:
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
