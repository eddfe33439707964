"""A per-image reference of the degradation pipeline, written the way BasicSR / Real-ESRGAN data
loaders work: one image at a time, HWC float32 numpy, OpenCV for the blur and JPEG, Pillow for the
antialiased resize, numpy's global-style RandomState for the noise.

It performs the same operations with the same params as ``spire_core.degradation.degrade`` and is
used by ``python -m spire_core.bench degradation`` (throughput) and by the tests (equality).
OpenCV is a benchmark/test dependency, not a library one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from ..degradation.kernels import make_kernel
from ..degradation.noise import LUMA_WEIGHTS, POISSON_PEAK
from ..degradation.params import DegradationParams, NoiseParams
from ..degradation.resize import PIL_FILTERS, resized_size

NoiseFn = Callable[[NoiseParams, np.ndarray], np.ndarray]
"""(params, HWC float32 image) -> additive noise broadcastable to the image."""


def numpy_noise(params: NoiseParams, image: np.ndarray) -> np.ndarray:
    """BasicSR-style noise: ``np.random.RandomState(seed)``, ``randn`` in float64 then float32;
    ``poisson`` on the rounded 8-bit counts. Same distribution as the library's, another realisation."""
    rs = np.random.RandomState(params.seed % 2**32)
    h, w, c = image.shape
    channels = 1 if params.gray else c
    if params.kind == "gaussian":
        return np.float32(rs.randn(h, w, channels)) * np.float32(params.sigma)
    if params.gray and c == 3:
        value = (image * np.asarray(LUMA_WEIGHTS, dtype=np.float32)).sum(axis=2, keepdims=True)
    else:
        value = image[..., :1] if params.gray else image
    rates = np.round(np.clip(value, 0, 1) * POISSON_PEAK)
    counts = rs.poisson(rates)
    return np.float32((counts - rates) * (params.scale / POISSON_PEAK))


def _resize(image: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    h, w = size
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F").resize((w, h), PIL_FILTERS[interpolation])
        )
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=-1)


def reference_degrade_one(image: np.ndarray, params: DegradationParams, noise: NoiseFn = numpy_noise) -> np.ndarray:
    """Degrade one HWC float32 image in [0, 1] (C = 1 or 3) per ``params``; returns HWC float32."""
    import cv2  # benchmark/test dependency only

    img = np.ascontiguousarray(image, dtype=np.float32)
    height, width = img.shape[:2]
    for stage in params.stages:
        if stage.blur is not None:
            kernel = make_kernel(stage.blur).numpy().astype(np.float32)
            img = cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
            if img.ndim == 2:
                img = img[..., None]
        if stage.resize is not None:
            size = resized_size(img.shape[0], img.shape[1], stage.resize.scale)
            if size != img.shape[:2]:
                img = _resize(img, size, stage.resize.interpolation)
        if stage.noise is not None:
            img = np.clip(img + noise(stage.noise, img), 0, 1)
        if stage.jpeg is not None:
            pixels = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
            colour = pixels.shape[2] == 3
            ok, encoded = cv2.imencode(
                ".jpg",
                pixels[..., ::-1] if colour else pixels[..., 0],
                [cv2.IMWRITE_JPEG_QUALITY, int(stage.jpeg.quality)],
            )
            if not ok:
                raise RuntimeError("OpenCV could not encode the JPEG")
            decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
            img = (decoded[..., ::-1] if colour else decoded[..., None]).astype(np.float32) / 255.0
    if img.shape[:2] != (height, width):
        img = _resize(img, (height, width), params.final_interpolation)
    return np.clip(img, 0, 1)
