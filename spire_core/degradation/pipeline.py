"""``degrade``: the deterministic multi-stage pipeline over the operations (``blur``, ``resize``, ``noise``,
``jpeg``); the prompt a degradation implies is ``implied.prompt_for``.

Images are BCHW float tensors in [0, 1] on any device (design.md section 4.1). Items of a batch
carry their own params; items that share a size are processed together, and a batch splits into
size groups where resizes send items to different sizes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .blur import apply_blur, cpu_blur_method
from .implied import prompt_for
from .jpeg import apply_jpeg
from .jpeg_codecs import resolve_jpeg_codec
from .kernels import gaussian_1d, make_kernel
from .memo import byte_bounded
from .noise import apply_noise
from .params import BlurParams, DegradationParams
from .resize import apply_resize, resized_size
from .scratch import advise_huge_pages, release_free_heap, trim_scratch
from .workers import cpu_path, start_lanes


def validate_images(images: torch.Tensor, name: str = "images") -> None:
    """Raise a clear error unless ``images`` is a (B, C, H, W) float tensor with C in {1, 3, 4},
    B >= 1 and every value finite and within [0, 1]. Nothing is clipped or converted silently."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, C, H, W) float in [0, 1], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have 4 dims (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"{name} is empty (shape {tuple(images.shape)}); expected at least one 1x1 image")
    if c not in (1, 3, 4):
        raise ValueError(
            f"{name} has {c} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA: alpha is kept unchanged). "
            "Images are BCHW; a BHWC tensor (as ComfyUI's IMAGE) must be permuted first."
        )
    if not images.is_floating_point():
        raise TypeError(
            f"{name} has dtype {images.dtype}; expected floating point in [0, 1] (divide 8-bit images by 255)"
        )
    lo_t, hi_t = torch.aminmax(images)  # NaN propagates into both, so one pass checks everything
    lo, hi = float(lo_t), float(hi_t)
    if math.isnan(lo) or math.isnan(hi):
        bad = int(torch.isnan(images).sum())
        raise ValueError(f"{name} contains {bad} NaN values; expected finite values in [0, 1]")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} has values in [{lo:.4g}, {hi:.4g}]; expected [0, 1] (nothing is clipped silently)")


@byte_bounded(8 * 2**20)  # at most 16 KB a kernel (63 x 63 float32)
def _kernel(params: BlurParams) -> torch.Tensor:
    """The kernel as ``apply_blur`` takes it: 1-D taps for the separable isotropic Gaussian."""
    if params.kernel == "iso":
        return gaussian_1d(params.sigma_x, params.size)
    return make_kernel(params)


@dataclass(frozen=True)
class DegradationResult:
    """A degraded batch and the params that made it (item i of ``images`` used ``params[i]``)."""

    images: torch.Tensor
    params: tuple[DegradationParams, ...]

    def prompts(self) -> list[str]:
        """The restoration prompt of each item (see ``prompt_for``)."""
        return [prompt_for(p) for p in self.params]


class _Group:
    """Batch items that currently share a spatial size; ``owned`` when their tensor is the pipeline's
    own (not the caller's images nor a view of them), so that it may be written in place."""

    __slots__ = ("index", "images", "owned")

    def __init__(self, index: list[int], images: torch.Tensor, owned: bool = False) -> None:
        self.index = index
        self.images = images
        self.owned = owned

    def update(self, images: torch.Tensor) -> None:
        """Take an operation's result (a new tensor, or the same one when nothing was done)."""
        self.owned = self.owned or images is not self.images
        self.images = images

    def split(self, keys: list[object]) -> list[_Group]:
        order: dict[object, list[int]] = {}
        for pos, key in enumerate(keys):
            order.setdefault(key, []).append(pos)
        if len(order) == 1:
            return [self]
        return [_Group([self.index[p] for p in pos], self.images[pos], owned=True) for pos in order.values()]


def _run(
    images: torch.Tensor,
    params: Sequence[DegradationParams],
    out: torch.Tensor | None = None,
    jpeg_codec: str = "auto",
) -> torch.Tensor:
    height, width = images.shape[-2:]
    groups = [_Group(list(range(images.shape[0])), images)]
    n_stages = max(len(p.stages) for p in params)
    for s in range(n_stages):
        stage = [p.stages[s] if s < len(p.stages) else None for p in params]
        next_groups = []
        for g in groups:
            st = [stage[i] for i in g.index]
            # 1. blur, each item with its own kernel
            kernels = [None if x is None or x.blur is None else _kernel(x.blur) for x in st]
            g.update(apply_blur(g.images, kernels))
            # 2. resize: items may go to different sizes, so the group splits by target size
            h, w = g.images.shape[-2:]
            targets = [
                (h, w, "")
                if x is None or x.resize is None
                else (*resized_size(h, w, x.resize.scale), x.resize.interpolation)
                for x in st
            ]
            for sub in g.split(targets):
                th, tw, mode = targets[g.index.index(sub.index[0])]
                if mode:
                    sub.update(apply_resize(sub.images, (th, tw), mode))
                next_groups.append(sub)
        for g in next_groups:
            st = [stage[i] for i in g.index]
            # 3. noise, each item from its own seed (added in place to a tensor of the pipeline's own)
            g.update(apply_noise(g.images, [None if x is None else x.noise for x in st], inplace=g.owned))
            # 4. JPEG, each item at its own quality
            g.update(apply_jpeg(g.images, [None if x is None else x.jpeg for x in st], codec=jpeg_codec))
        groups = next_groups
    # 5. back to the input size, each item with its own final filter
    out = torch.empty_like(images) if out is None else out
    for g in groups:
        for sub in g.split([params[i].final_interpolation for i in g.index]):
            resized = apply_resize(sub.images, (height, width), params[sub.index[0]].final_interpolation)
            if len(sub.index) == out.shape[0]:
                torch.clamp(resized, 0, 1, out=out)
            else:
                out[sub.index] = resized.clamp(0, 1)
    return out


def _item_cost(params: DegradationParams, height: int, width: int) -> float:
    """Rough single-thread CPU time of one three-channel item (about nanoseconds, from per-operation
    timings on a 2-core x86 machine), to start the longest items first: the last item to finish then
    leaves the other workers idle for a shorter while."""
    cost, h, w = 0.0, height, width
    for stage in params.stages:
        if stage.blur is not None:
            k = stage.blur.size
            method = cpu_blur_method(stage.blur.kernel == "iso", k)  # iso kernels go as 1-D taps (_kernel)
            if method == "shift":
                cost += 0.2 * k * h * w
            elif method == "taps":
                cost += 0.12 * k * k * h * w
            else:
                cost += 9.0 * (h + k) * (w + k)
        if stage.resize is not None:
            h, w = resized_size(h, w, stage.resize.scale)
            cost += 4.0 * h * w
        if stage.noise is not None:
            per_pixel = 4.0 if stage.noise.kind == "gaussian" else 9.0
            cost += per_pixel * h * w / (3 if stage.noise.gray else 1)
        if stage.jpeg is not None:
            cost += 4.0 * h * w
    if (h, w) != (height, width):
        cost += 4.0 * height * width
    return 3.0 * cost


def _run_items_cpu(images: torch.Tensor, params: Sequence[DegradationParams], jpeg_codec: str = "auto") -> torch.Tensor:
    """Degrade a CPU batch item by item, items spread over ``torch.get_num_threads()`` threads.

    Item by item is faster than batched on CPUs: per-image buffers (a few MB) are recycled, while
    batch-sized temporaries are fresh page-faulted memory every time. Much of the work is serial per
    item (random numbers, libjpeg, small tensor ops), so items run side by side, the longest first
    (``_item_cost``), on long-lived worker threads with the intra-op threads shared out among them (a
    lone image gets them all). Every operation gives the same bits whatever its thread count
    (tested), so a batch gives exactly the bytes its items give alone. The caller's thread setting is
    restored on return.
    """
    threads = torch.get_num_threads()
    inference = torch.is_inference_mode_enabled()
    workers = max(1, min(images.shape[0], threads))
    out = torch.empty_like(images)  # its pages are first touched, in parallel, by the workers
    advise_huge_pages(out)
    order = range(images.shape[0])
    if workers > 1:
        height, width = images.shape[-2:]
        order = sorted(order, key=lambda i: -_item_cost(params[i], height, width))
    pending = deque(order)

    def lane() -> None:
        """One of ``workers`` loops taking the next item until none is left."""
        torch.set_num_threads(max(1, threads // workers))  # this worker thread's intra-op pool
        with torch.inference_mode(inference), torch.no_grad():
            while True:
                try:
                    i = pending.popleft()
                except IndexError:
                    return
                try:
                    _run(images[i : i + 1], params[i : i + 1], out=out[i : i + 1], jpeg_codec=jpeg_codec)
                except BaseException:
                    pending.clear()  # the other lanes stop too
                    raise

    try:
        for lane_done in start_lanes(workers, lane):
            lane_done.result()
    finally:
        torch.set_num_threads(threads)
        trim_scratch()
        release_free_heap()
    return out


def degrade(
    images: torch.Tensor,
    params: Sequence[DegradationParams] | DegradationParams,
    *,
    jpeg_codec: str = "auto",
) -> DegradationResult:
    """Degrade a batch deterministically.

    Args:
        images: (B, C, H, W) float in [0, 1], C = 1 (grey), 3 (RGB) or 4 (RGBA; alpha passes through
            unchanged), any device. Not modified.
        params: one ``DegradationParams`` per item, or a single one used for every item.
        jpeg_codec: the JPEG steps' codec (``jpeg.apply_jpeg``): ``"auto"`` is libjpeg on the CPU (the
            same bytes everywhere) and nvjpeg on a CUDA device where torchvision's CUDA JPEG codec
            works (``jpeg_codec_for`` says which), whose output differs slightly from libjpeg's
            (another DCT and rounding, 4:4:4 chroma instead of 4:2:0); ``"libjpeg"`` forces the exact
            path on any device; ``"nvjpeg"`` requires it on CUDA; ``"torchvision"`` is torchvision.io
            on the images' device (libjpeg on the CPU, nvjpeg on CUDA).

    Returns:
        A ``DegradationResult`` whose images have the input's shape, dtype and device.

    Raises:
        TypeError, ValueError: a tensor that is not BCHW float in [0, 1] (NaN included), a params
            list of the wrong length, or an unknown codec (or ``"nvjpeg"`` for images off CUDA).
        RuntimeError: ``"nvjpeg"`` or ``"torchvision"`` where torchvision's JPEG codec does not work.
    """
    validate_images(images)
    # checked here, before any work: the JPEG steps then take the path this names
    jpeg_codec = resolve_jpeg_codec(jpeg_codec, images.device, where="degrade")
    if isinstance(params, DegradationParams):
        params = [params] * images.shape[0]
    params = tuple(params)
    if len(params) != images.shape[0]:
        raise ValueError(f"degrade: {len(params)} params for a batch of {images.shape[0]}; give one per item")
    if not all(isinstance(p, DegradationParams) for p in params):
        raise TypeError("degrade: params must be DegradationParams (see sample_params or manual_params)")
    x = images.to(torch.float32)
    colour = x[:, :3] if x.shape[1] == 4 else x
    if cpu_path(x.device):
        out = _run_items_cpu(colour, params, jpeg_codec)
    else:
        out = _run(colour, params, jpeg_codec=jpeg_codec)
    if x.shape[1] == 4:
        out = torch.cat([out, x[:, 3:]], dim=1)
    return DegradationResult(images=out.to(images.dtype), params=params)
