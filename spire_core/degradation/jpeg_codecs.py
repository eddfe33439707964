"""Which JPEG codec ``apply_jpeg`` uses, and the batched torchvision codec (nvjpeg on CUDA).

``apply_jpeg`` (jpeg.py) takes ``codec``:

- ``"libjpeg"``: libjpeg through Pillow on the CPU, one image at a time; the same bytes on every
  device and machine. Images on a GPU make a round trip through host memory.
- ``"torchvision"``: ``torchvision.io.encode_jpeg`` / ``decode_jpeg`` on the images' own device: its
  bundled libjpeg on the CPU, nvjpeg on CUDA. One encode call per distinct quality, one decode call
  for the batch.
- ``"nvjpeg"``: the ``"torchvision"`` path, with the images required to be on a CUDA device.
- ``"auto"`` (the default): nvjpeg when the images are on a CUDA device where torchvision's CUDA JPEG
  codec works (``jpeg_codec_for``), else libjpeg. CPU results are therefore libjpeg's, bit for bit.

nvjpeg's output differs slightly from libjpeg's at the same quality: a different DCT and rounding,
and torchvision's nvjpeg encoder keeps full-resolution chroma (4:4:4) where libjpeg here subsamples
it (4:2:0), so colour edges survive better. ``jpeg_codec_distance`` (jpeg.py) measures the gap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import torch

JPEG_CODECS = ("auto", "libjpeg", "torchvision", "nvjpeg")
"""The values ``apply_jpeg``'s ``codec`` (and ``degrade``'s ``jpeg_codec``) accepts."""

Encoder = Callable[[list[torch.Tensor], int], list[torch.Tensor]]
"""(list of (3, H, W) uint8 images on one device, quality) -> list of 1-D uint8 JPEG byte tensors."""

Decoder = Callable[[list[torch.Tensor], bool, torch.device], list[torch.Tensor]]
"""(list of 1-D uint8 CPU byte tensors, grey, device) -> list of (3, H, W) uint8 images, or (1, H, W)
luma planes when ``grey``, on ``device``."""


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 as the libjpeg path quantises them (``jpeg._to_pil``): times 255
    in the input's dtype, rounded half to even, clipped to [0, 255]."""
    return torch.mul(images, 255).round_().clamp_(0, 255).to(torch.uint8)


def _synchronize(device: torch.device) -> None:
    """Drain ``device`` before and after the CUDA codec. torchvision's nvjpeg calls work on their own
    streams and do not always order themselves after the caller's pending kernels (an encode could
    read pixels not yet written; a decode could be handed memory that queued kernels still read)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def jpeg_roundtrip_batched(
    images: torch.Tensor, qualities: Sequence[int], encode: Encoder, decode: Decoder
) -> torch.Tensor:
    """Encode item i of ``images`` at ``qualities[i]`` and decode it, on the images' device.

    Args:
        images: (N, C, H, W) float in [0, 1], C = 1 or 3.
        qualities: N JPEG qualities (1..100).
        encode, decode: the codec (``torchvision_codec()``); grey images are encoded as three equal
            channels and decoded as their luma plane, which libjpeg makes equal to the grey value, so
            a codec that only takes colour still codes grey like a one-channel encode does.

    Returns:
        (N, C, H, W) float32 in [0, 1] on ``images.device``, each value ``byte / 255`` as the libjpeg
        path computes it.
    """
    if images.dim() != 4:
        raise ValueError(f"jpeg_roundtrip_batched: images have shape {tuple(images.shape)}; expected (N, C, H, W)")
    n, channels = images.shape[:2]
    if len(qualities) != n:
        raise ValueError(f"jpeg_roundtrip_batched: {len(qualities)} qualities for a batch of {n}")
    if channels not in (1, 3):
        raise ValueError(f"jpeg_roundtrip_batched: images have {channels} channels; expected 1 (grey) or 3 (RGB)")
    device = images.device
    grey = channels == 1
    pixels = to_uint8(images)
    # each item's planes one after another, as nvjpeg reads them
    pixels = pixels.expand(-1, 3, -1, -1).contiguous() if grey else pixels.contiguous()
    by_quality: dict[int, list[int]] = {}
    for i, quality in enumerate(qualities):
        by_quality.setdefault(int(quality), []).append(i)
    _synchronize(device)
    coded: dict[int, torch.Tensor] = {}
    for quality, index in by_quality.items():
        coded.update(zip(index, encode([pixels[i] for i in index], quality), strict=True))
    _synchronize(device)
    # the decoder reads bytes from host memory: one copy for the whole batch, in item order
    encoded = [coded[i] for i in range(n)]
    sizes = [int(data.numel()) for data in encoded]
    host = torch.cat(encoded).cpu()
    decoded = decode(list(torch.split(host, sizes)), grey, device)
    if len(decoded) != n:
        raise RuntimeError(f"jpeg_roundtrip_batched: the decoder returned {len(decoded)} images for {n}")
    out = torch.stack(decoded).to(torch.float32)
    if out.shape != images.shape:
        raise RuntimeError(f"jpeg_roundtrip_batched: decoded shape {tuple(out.shape)}, expected {tuple(images.shape)}")
    # a 0-dim tensor divisor, not a Python number: CUDA turns division by a scalar into multiplication
    # by its reciprocal, which is off by one unit in the last place for some bytes
    return out.div_(torch.full((), 255.0, device=device))


def torchvision_codec() -> tuple[Encoder, Decoder]:
    """torchvision.io's JPEG encoder and decoder (libjpeg on the CPU, nvjpeg on CUDA).

    Raises:
        ImportError: torchvision is not installed.
    """
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    def encode(images: list[torch.Tensor], quality: int) -> list[torch.Tensor]:
        return list(encode_jpeg(images, quality=quality))

    def decode(data: list[torch.Tensor], grey: bool, device: torch.device) -> list[torch.Tensor]:
        mode = ImageReadMode.GRAY if grey else ImageReadMode.RGB
        return list(decode_jpeg(data, mode=mode, device=device))

    return encode, decode


def _canonical(device: torch.device | str) -> torch.device:
    """``cuda`` -> ``cuda:<current>``, so that a cache entry is one physical device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def torchvision_jpeg_problem(device: torch.device | str) -> str | None:
    """Why torchvision's JPEG codec cannot run on ``device``, or None when it can.

    Found once per device (then cached) by coding a small test image: importing torchvision, loading
    its image extension, and on CUDA a torchvision built with nvjpeg (0.19 or later for batched
    encoding) can each fail.
    """
    device = _canonical(device)
    if device.type not in ("cpu", "cuda"):
        return f"torchvision codes JPEG on the CPU or on CUDA only, not on {device.type}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available to this torch build"
    return _probe(device)


@cache
def _probe(device: torch.device) -> str | None:
    try:
        encode, decode = torchvision_codec()
    except ImportError as error:
        return f"torchvision is not installed ({error})"
    except Exception as error:  # noqa: BLE001 - a broken install is a reason like any other
        return f"torchvision.io does not import ({type(error).__name__}: {error})"
    try:
        ramp = torch.linspace(0, 1, 32, device=device)
        test = torch.stack([ramp.outer(ramp), ramp.expand(32, 32), ramp.flip(0).expand(32, 32)]).unsqueeze(0)
        out = jpeg_roundtrip_batched(test, [95], encode, decode)
    except Exception as error:  # noqa: BLE001 - any failure means this codec cannot be used here
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"a test encode and decode on {device} failed ({type(error).__name__}: {message})"
    error = float((out - test).abs().max())
    if error > 16 / 255:
        return f"a test encode and decode on {device} came back wrong (largest error {error * 255:.0f}/255)"
    return None


def jpeg_codec_for(device: torch.device | str) -> str:
    """The codec ``codec="auto"`` uses for images on ``device``: ``"nvjpeg"`` on a CUDA device where
    torchvision's CUDA JPEG codec works, else ``"libjpeg"``."""
    device = _canonical(device)
    if device.type == "cuda" and torchvision_jpeg_problem(device) is None:
        return "nvjpeg"
    return "libjpeg"


def resolve_jpeg_codec(codec: str, device: torch.device, where: str = "apply_jpeg") -> str:
    """The path ``codec`` takes for images on ``device``: ``"libjpeg"`` or ``"torchvision"``.

    Raises:
        ValueError: an unknown codec, ``"nvjpeg"`` for images that are not on a CUDA device, or
            ``"torchvision"`` for images on a device other than the CPU or CUDA.
        RuntimeError: ``"nvjpeg"`` or ``"torchvision"`` where torchvision's codec does not work.
    """
    if codec not in JPEG_CODECS:
        raise ValueError(f"{where}: unknown JPEG codec {codec!r}; expected one of {', '.join(map(repr, JPEG_CODECS))}")
    if codec == "auto":
        return "torchvision" if jpeg_codec_for(device) == "nvjpeg" else "libjpeg"
    if codec == "libjpeg":
        return "libjpeg"
    if codec == "nvjpeg" and device.type != "cuda":
        raise ValueError(
            f"{where}: JPEG codec 'nvjpeg' needs the images on a CUDA device, but they are on {device}; "
            "use 'libjpeg', or 'auto' (nvjpeg on CUDA where it works, libjpeg elsewhere)"
        )
    problem = torchvision_jpeg_problem(device)
    if problem is not None and device.type not in ("cpu", "cuda"):
        raise ValueError(f"{where}: JPEG codec {codec!r} cannot run on {device}: {problem}; use codec 'libjpeg'")
    if problem is not None:
        raise RuntimeError(
            f"{where}: JPEG codec {codec!r} cannot run on {device}: {problem}. Use codec 'libjpeg' (or 'auto'), "
            "or install a torchvision build that matches this torch (with nvjpeg for CUDA)"
        )
    return "torchvision"


__all__ = [
    "JPEG_CODECS",
    "jpeg_codec_for",
    "jpeg_roundtrip_batched",
    "resolve_jpeg_codec",
    "to_uint8",
    "torchvision_codec",
    "torchvision_jpeg_problem",
]
