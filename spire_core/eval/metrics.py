"""Full-reference image metrics that run offline: PSNR, SSIM and LPIPS on BCHW float images in [0, 1].

- :func:`psnr` (one number for a whole batch) and :func:`psnr_per_image`.
- :func:`ssim`: per image, equal to ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=...)`` (Wang et al. 2004).
- :class:`LPIPS` / :func:`load_lpips`: the LPIPS v0.1 distance with the AlexNet backbone (Zhang et al. 2018),
  defined here in plain torch and loaded only from a local ``lpips_alex.safetensors`` (see
  :data:`LPIPS_CONVERSION` for how to make that file from the official weights).
- :func:`image_metrics`: all of them for a batch, as a JSON-ready report; :func:`report_csv` and
  :func:`report_table` write it out.

Per-image functions return a float64 tensor of shape (B,) on the CPU. Images are compared as they are:
``a`` and ``b`` must have the same shape (nothing is resized).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoint import non_finite

__all__ = [
    "LPIPS",
    "LPIPS_CHANNELS",
    "LPIPS_CONVERSION",
    "LPIPS_FILENAME",
    "LPIPS_MIN_SIZE",
    "METRICS",
    "REPORT_FORMAT",
    "SSIM_MIN_SIZE",
    "image_metrics",
    "load_lpips",
    "lpips_state_dict_from_official",
    "psnr",
    "psnr_per_image",
    "report_csv",
    "report_rows",
    "report_table",
    "save_report",
    "ssim",
    "validate_report",
]


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """PSNR in dB between two images (or batches) on the [0, ``peak``] scale; ``inf`` when identical."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def _check_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    for label, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: {label} must be a (B, C, H, W) batch, got {shape}")
    if a.shape != b.shape:
        raise ValueError(
            f"{name}: the images differ in shape, {tuple(a.shape)} vs {tuple(b.shape)} (B, C, H, W); "
            "metrics compare pixel for pixel, so resize or crop one first"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{name}: the image batch is empty")


def psnr_per_image(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each image pair, (B,) float64 (``inf`` for identical pairs).

    Args:
        a, b: (B, C, H, W) float on the [0, ``peak``] scale, same shape.
    """
    _check_pair(a, b, "psnr_per_image")
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(dim=1).cpu()
    return 10 * torch.log10(peak**2 / mse)  # mse == 0 gives +inf


# --------------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------------

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
SSIM_MIN_SIZE = 2 * SSIM_RADIUS + 1
"""Smallest height and width SSIM accepts: the Gaussian window is 11x11 (as scikit-image)."""
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _gaussian_1d(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of each image pair, (B,) float64, averaged over channels.

    Equals ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range, channel_axis=-1)`` per image: an 11x11 Gaussian
    window (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, and the mean taken over the pixels
    whose window lies inside the image (scikit-image crops 5 pixels on each side after filtering, so its
    border mode never enters the mean). Computed in float64.

    Args:
        a, b: (B, C, H, W) float, same shape, H and W at least :data:`SSIM_MIN_SIZE`.
        data_range: the value range of the images (1.0 for [0, 1]).

    Raises:
        ValueError: shapes differ, an empty batch, or an image smaller than 11x11.
    """
    _check_pair(a, b, "ssim")
    _, c, h, w = a.shape
    if h < SSIM_MIN_SIZE or w < SSIM_MIN_SIZE:
        raise ValueError(f"ssim: images must be at least {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} pixels, got {h}x{w}")
    x, y = a.double(), b.double()
    g = _gaussian_1d(x.dtype, x.device).tolist()
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B, 5C, H, W)
    # Separable 'valid' filtering (exactly the region scikit-image keeps), as weighted sums of shifted slices:
    # faster than a depthwise float64 convolution on the CPU.
    k = len(g)
    stack = sum(weight * stack[..., i : h - k + 1 + i, :] for i, weight in enumerate(g))
    stack = sum(weight * stack[..., i : w - k + 1 + i] for i, weight in enumerate(g))
    ux, uy, uxx, uyy, uxy = stack.split(c, dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3)).mean(dim=1).cpu()


# --------------------------------------------------------------------------------------------------
# LPIPS (AlexNet, v0.1)
# --------------------------------------------------------------------------------------------------

LPIPS_FILENAME = "lpips_alex.safetensors"
LPIPS_CHANNELS = (64, 192, 384, 256, 256)
"""Channels of the five AlexNet ReLU outputs that LPIPS compares."""
LPIPS_MIN_SIZE = 31
"""Smallest height and width the AlexNet backbone accepts (the second max-pool needs a 3x3 input)."""

_ALEX_CONVS = (  # torchvision AlexNet ``features`` index, in, out, kernel, stride, padding
    (0, 3, 64, 11, 4, 2),
    (3, 64, 192, 5, 1, 2),
    (6, 192, 384, 3, 1, 1),
    (8, 384, 256, 3, 1, 1),
    (10, 256, 256, 3, 1, 1),
)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

LPIPS_CONVERSION = """\
The file holds float32 tensors under these keys (nothing else):

    features.{0,3,6,8,10}.weight / .bias   AlexNet's five convolutions, named as in
                                           torchvision.models.alexnet().features
    lin.{0..4}.weight                      the five LPIPS v0.1 linear layers, shapes (1, C, 1, 1) for
                                           C = 64, 192, 384, 256, 256 (``lin{i}.model.1.weight`` in
                                           the official ``lpips/weights/v0.1/alex.pth``)

To make it, on any machine that has torchvision and the official ``alex.pth`` from the lpips package
(https://github.com/richzhang/PerceptualSimilarity), run once:

    import torch, torchvision
    from safetensors.torch import save_file
    from spire_core.eval.metrics import lpips_state_dict_from_official

    alexnet = torchvision.models.alexnet(weights="IMAGENET1K_V1").state_dict()
    lins = torch.load("alex.pth", map_location="cpu", weights_only=True)
    save_file(lpips_state_dict_from_official(alexnet, lins), "lpips_alex.safetensors")
"""
"""How a user turns the official LPIPS weights into ``lpips_alex.safetensors`` (also in :func:`load_lpips`)."""


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for index, cin, cout, k, _, _ in _ALEX_CONVS:
        shapes[f"features.{index}.weight"] = (cout, cin, k, k)
        shapes[f"features.{index}.bias"] = (cout,)
    for i, ch in enumerate(LPIPS_CHANNELS):
        shapes[f"lin.{i}.weight"] = (1, ch, 1, 1)
    return shapes


def lpips_state_dict_from_official(
    alexnet: dict[str, torch.Tensor], lins: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Our ``lpips_alex.safetensors`` tensors from the official pieces (see :data:`LPIPS_CONVERSION`).

    Args:
        alexnet: torchvision AlexNet state dict (keys ``features.N.weight``; the classifier is ignored).
        lins: the LPIPS v0.1 ``alex.pth`` state dict (keys ``lin{i}.model.1.weight``).

    Returns:
        Contiguous float32 CPU tensors under the keys :class:`LPIPS` loads.
    """
    out = {}
    for key in _expected_shapes():
        source = alexnet[key] if key.startswith("features.") else lins[f"lin{key.split('.')[1]}.model.1.weight"]
        out[key] = source.detach().to("cpu", torch.float32).contiguous()
    return out


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with the AlexNet backbone, as ``lpips.LPIPS(net="alex")``.

    Both images are mapped from [0, 1] to [-1, 1], shifted and scaled per channel, passed through
    AlexNet's five conv+ReLU stages; each stage's features are unit-normalised along channels, their
    squared difference weighted by that stage's linear layer, averaged over space, and the five stage
    values summed. Eval mode only (the official dropout before each linear layer is inactive at test time).
    Build it with :func:`load_lpips`.
    """

    def __init__(self, operations: Any = nn) -> None:
        """``operations`` supplies the layer classes: ``torch.nn``, or ComfyUI's ``comfy.ops`` variants
        (which skip the random initialisation that the loaded weights replace anyway)."""
        super().__init__()
        conv = operations.Conv2d
        self.features = nn.ModuleDict(
            {str(i): conv(cin, cout, k, stride=s, padding=p) for i, cin, cout, k, s, p in _ALEX_CONVS}
        )
        self.lin = nn.ModuleList(conv(ch, 1, 1, bias=False) for ch in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((2 * x - 1) - self.shift) / self.scale
        outs = []
        for index, _, _, _, _, _ in _ALEX_CONVS:
            if index in (3, 6):  # torchvision's max-pools sit before features.3 and features.6
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = F.relu(self.features[str(index)](x))
            outs.append(x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + 1e-10))
        return outs

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS distance of each pair: (B, 3, H, W) floats in [0, 1], same shape -> (B,) float64 on the CPU.

        Inputs are moved to the network's device and dtype. 0 for identical images.

        Raises:
            ValueError: shapes differ, an empty batch, not 3 channels, or images smaller than 31x31.
        """
        _check_pair(a, b, "lpips")
        if a.shape[1] != 3:
            raise ValueError(f"lpips: needs RGB images (3 channels), got {a.shape[1]}; repeat grey to 3 channels")
        if min(a.shape[-2:]) < LPIPS_MIN_SIZE:
            h, w = a.shape[-2:]
            raise ValueError(f"lpips: images must be at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} pixels, got {h}x{w}")
        weight = self.lin[0].weight
        a = a.to(device=weight.device, dtype=weight.dtype)
        b = b.to(device=weight.device, dtype=weight.dtype)
        n = a.shape[0]
        total = torch.zeros(n, dtype=torch.float64, device=weight.device)
        # One pass over both batches, so identical images give bit-identical features (a distance of exactly 0).
        for lin, features in zip(self.lin, self._stages(torch.cat([a, b]))):
            total += lin((features[:n] - features[n:]) ** 2).mean(dim=(1, 2, 3)).double()
        return total.cpu()


def load_lpips(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    operations: Any = nn,
) -> LPIPS:
    """The LPIPS (AlexNet) network with its weights from a local ``lpips_alex.safetensors``.

    Nothing is downloaded: the file must exist. Its layout, and how to make it from the official weights:

    The file holds float32 tensors under these keys (nothing else): ``features.{0,3,6,8,10}.weight`` and
    ``.bias`` (AlexNet's five convolutions, named as in ``torchvision.models.alexnet().features``) and
    ``lin.{0..4}.weight`` (the five LPIPS v0.1 linear layers, shapes (1, C, 1, 1) for C = 64, 192, 384,
    256, 256; ``lin{i}.model.1.weight`` in the official ``lpips/weights/v0.1/alex.pth``). On a machine
    with torchvision and the lpips package's ``alex.pth``, run once::

        import torch, torchvision
        from safetensors.torch import save_file
        from spire_core.eval.metrics import lpips_state_dict_from_official

        alexnet = torchvision.models.alexnet(weights="IMAGENET1K_V1").state_dict()
        lins = torch.load("alex.pth", map_location="cpu", weights_only=True)
        save_file(lpips_state_dict_from_official(alexnet, lins), "lpips_alex.safetensors")

    Args:
        path: the .safetensors file.
        device, dtype: where and in which precision the network runs.
        operations: the layer classes (``torch.nn``, or ComfyUI's ``comfy.ops`` variants).

    Raises:
        FileNotFoundError: no file at ``path`` (the message says how to make it).
        ValueError: the file is not in the layout above (missing, unexpected or mis-shaped keys).
    """
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"LPIPS needs its weights at {path}; put {LPIPS_FILENAME} there, made with the conversion documented "
            "in spire_core.eval.metrics.LPIPS_CONVERSION (torchvision's AlexNet features + the official LPIPS v0.1 "
            "alex.pth linear layers, saved as safetensors by lpips_state_dict_from_official)"
        )
    from ..models.safetensors_header import identify, read_safetensors_header  # header only: nothing is loaded yet

    header = read_safetensors_header(path)  # pickles, zips, truncated or foreign files: said plainly
    shapes = header.shapes()
    expected = _expected_shapes()
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in expected if k in shapes and shapes[k] != expected[k])
    if missing and not set(expected) & set(shapes):  # another kind of model file altogether
        raise ValueError(
            f"{path} is {identify(header)[1]}, not LPIPS AlexNet weights; choose {LPIPS_FILENAME} (or 'none'). "
            f"Expected layout and conversion:\n{LPIPS_CONVERSION}"
        )
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
        if wrong:
            details.append(", ".join(f"{k} is {shapes[k]}, expected {expected[k]}" for k in wrong[:6]))
        raise ValueError(
            f"{path} is not an LPIPS AlexNet weight file ({'; '.join(details)}). Expected layout and conversion:\n"
            + LPIPS_CONVERSION
        )
    tensors = load_file(path)
    bad = sorted(non_finite(tensors))
    if bad:
        raise ValueError(
            f"{path} holds NaN or Inf values in {bad[:6]}: the LPIPS weights are corrupt; convert them again"
        )
    model = LPIPS(operations)
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=True)
    return model.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Reports: every metric for a batch, as JSON-ready data, CSV and a text table
# --------------------------------------------------------------------------------------------------

REPORT_FORMAT = "spire-image-metrics/1"
METRICS = ("psnr", "ssim", "lpips")


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # strict JSON has no inf; "inf" reads back via float()


def image_metrics(image: torch.Tensor, reference: torch.Tensor, lpips: LPIPS | None = None) -> dict:
    """PSNR, SSIM and (with a network) LPIPS of each image against its reference, as a JSON-ready report.

    Args:
        image: (B, C, H, W) float in [0, 1], e.g. restored images.
        reference: (B, C, H, W) or (1, C, H, W) float in [0, 1], the ground truth; a batch of 1 is compared
            with every image. Never resized. A 4th (alpha) channel of either is ignored; grey images are
            repeated to RGB for LPIPS only.
        lpips: an :class:`LPIPS` network, or ``None`` to leave LPIPS out (``null`` in the report).

    Returns:
        ``{"format", "count", "height", "width", "images": [{"index", "psnr", "ssim", "lpips"}, ...],
        "mean": {"psnr", "ssim", "lpips"}}``. Numbers are floats (PSNR in dB; the mean PSNR is the mean
        of the per-image values), ``"inf"`` for the PSNR of identical images, ``None`` for LPIPS without
        a network.

    Raises:
        ValueError: an empty batch, sizes that differ (naming both), channel counts that differ, or a
            reference batch that is neither 1 nor the image batch.
    """
    for label, t in (("image", image), ("reference", reference)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"image metrics: {label} must be a (B, C, H, W) batch, got {shape}")
        if t.shape[0] == 0:
            raise ValueError(f"image metrics: the {label} batch is empty; give at least one image")
    if image.shape[-2:] != reference.shape[-2:]:
        (h, w), (rh, rw) = image.shape[-2:], reference.shape[-2:]
        raise ValueError(
            f"image metrics: image is {w}x{h} (WxH) but reference is {rw}x{rh}; metrics compare pixel for pixel "
            "and never resize, so give both the same size (e.g. upscale the input before restoring, or crop)"
        )
    image, reference = image[:, :3], reference[:, :3]
    if image.shape[1] != reference.shape[1]:
        raise ValueError(
            f"image metrics: image has {image.shape[1]} colour channels but reference has {reference.shape[1]}"
        )
    batch = image.shape[0]
    if reference.shape[0] not in (1, batch):
        raise ValueError(
            f"image metrics: image batch has {batch} images but reference batch has {reference.shape[0]}; "
            "give one reference for all images or one per image"
        )
    reference = reference.to(image.device).expand(batch, -1, -1, -1)
    scores = {"psnr": psnr_per_image(image, reference).tolist(), "ssim": ssim(image, reference).tolist()}
    if lpips is not None:
        rgb = (lambda t: t.expand(-1, 3, -1, -1)) if image.shape[1] == 1 else (lambda t: t)
        scores["lpips"] = lpips(rgb(image), rgb(reference)).tolist()
    rows = [
        {"index": i, **{m: (_json_number(scores[m][i]) if m in scores else None) for m in METRICS}}
        for i in range(batch)
    ]
    mean = {m: (_json_number(sum(scores[m]) / batch) if m in scores else None) for m in METRICS}
    h, w = image.shape[-2:]
    return {"format": REPORT_FORMAT, "count": batch, "height": h, "width": w, "images": rows, "mean": mean}


def _cell(value: float | str | None, digits: int, missing: str) -> str:
    if value is None:
        return missing
    return str(value) if isinstance(value, str) else f"{value:.{digits}f}"


_DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4}


def _check_value(value: Any, metric: str, where: str) -> None:
    if value is None and metric == "lpips":
        return  # scored without LPIPS weights
    if value == "inf" and metric == "psnr":
        return  # identical images
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        allowed = {"psnr": 'a finite number or "inf"', "ssim": "a finite number", "lpips": "a finite number or null"}
        raise ValueError(f"the metrics report's {where}.{metric} is {value!r}; expected {allowed[metric]}")


def validate_report(report: Any) -> dict:
    """``report`` itself when it is an image-metrics report as :func:`image_metrics` makes it (extra keys
    allowed); else ValueError naming the first thing that is wrong (a hand-edited or truncated report)."""
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise ValueError(f"not an image-metrics report (expected a JSON object with format {REPORT_FORMAT!r})")
    images, mean = report.get("images"), report.get("mean")
    if not isinstance(images, list) or not images:
        raise ValueError("the metrics report's images must be a non-empty list of per-image results")
    if report.get("count") != len(images):
        raise ValueError(f"the metrics report's count is {report.get('count')!r} but it lists {len(images)} images")
    if not isinstance(mean, dict):
        raise ValueError(f"the metrics report's mean must be an object with {', '.join(METRICS)}; got {mean!r}")
    for i, entry in enumerate(images):
        if (
            not isinstance(entry, dict)
            or isinstance(entry.get("index"), bool)
            or not isinstance(entry.get("index"), int)
        ):
            raise ValueError(f"the metrics report's images[{i}] must be an object with an integer index")
    for where, entry in [*((f"images[{i}]", e) for i, e in enumerate(images)), ("mean", mean)]:
        for metric in METRICS:
            if metric not in entry:
                raise ValueError(f"the metrics report's {where} has no {metric!r}; expected {', '.join(METRICS)}")
            _check_value(entry[metric], metric, where)
    return report


def report_rows(report: dict, missing: str = "n/a") -> list[list[str]]:
    """The report as string rows: a header, one row per image, then the mean (``missing`` for absent values)."""
    validate_report(report)
    rows = [["image", "psnr_db", "ssim", "lpips"]]
    entries = [(str(r["index"]), r) for r in report["images"]] + [("mean", report["mean"])]
    for label, entry in entries:
        rows.append([label, *(_cell(entry[m], _DIGITS[m], missing) for m in METRICS)])
    return rows


def report_csv(report: dict) -> str:
    """The report as CSV text: header ``image,psnr,ssim,lpips``, one line per image, then ``mean``.

    Full precision; ``inf`` for identical images, an empty field for LPIPS without a network."""
    validate_report(report)
    lines = ["image,psnr,ssim,lpips"]
    entries = [(str(r["index"]), r) for r in report["images"]] + [("mean", report["mean"])]
    for label, entry in entries:
        lines.append(",".join([label, *("" if entry[m] is None else str(entry[m]) for m in METRICS)]))
    return "\n".join(lines) + "\n"


def report_table(report: dict, missing: str = "n/a") -> str:
    """The report as an aligned text table (PSNR in dB to 0.01, SSIM and LPIPS to 0.0001)."""
    rows = report_rows(report, missing)
    rows[0] = ["image", "PSNR (dB)", "SSIM", "LPIPS"]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]).rstrip() for row in rows
    )


def save_report(report: dict, folder: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    """Write ``report`` as ``folder/stem.csv`` and ``folder/stem.json``, whole or not at all.

    The report is validated and both texts are built before anything is written; each file is written
    to a temporary file beside it and moved into place, so an error leaves neither a partial file nor
    one file without the other (only a process killed between the two moves leaves the CSV alone).

    Returns:
        The CSV and JSON paths.

    Raises:
        ValueError: the report is not an image-metrics report (see :func:`validate_report`).
    """
    validate_report(report)
    texts = {
        Path(folder) / f"{stem}.csv": report_csv(report),
        Path(folder) / f"{stem}.json": json.dumps(report, indent=2, allow_nan=False) + "\n",
    }
    Path(folder).mkdir(parents=True, exist_ok=True)
    temporaries: dict[Path, str] = {}
    try:
        for path, text in texts.items():
            fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temporaries[path] = temporary
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.write(text)
        placed = []
        try:
            for path, temporary in temporaries.items():
                os.replace(temporary, path)
                placed.append(path)
        except BaseException:
            for path in placed:  # this call's own new file: not one without the other
                path.unlink(missing_ok=True)
            raise
    finally:
        for temporary in temporaries.values():
            if os.path.exists(temporary):
                os.remove(temporary)
    csv_path, json_path = texts
    return csv_path, json_path
