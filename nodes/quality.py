"""Quality nodes: colour correction against a reference, and PSNR/SSIM/LPIPS metrics saved to the output folder."""

from __future__ import annotations

import json
import os
from functools import lru_cache

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..spire_core.eval.metrics import (
    LPIPS_FILENAME,
    image_metrics,
    load_lpips,
    report_table,
    save_report,
    validate_report,
)
from ..spire_core.restoration.color import adain_color_fix, wavelet_color_fix
from .convert import bchw_to_image, image_to_bchw, require_finite
from .paths import MODEL_FOLDER

NO_LPIPS = "none"
LPIPS_MISSING = f"n/a (no weights: put {LPIPS_FILENAME} in ComfyUI/models/spire)"
COLOR_METHODS = {"wavelet": wavelet_color_fix, "adain": adain_color_fix}


class ColorFix(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPIRE_ColorFix",
            display_name="Color Fix (SPIRE)",
            category="SPIRE/quality",
            description=(
                "Give restored images the colours of a reference (usually the degraded input) while keeping their "
                "detail. 'wavelet' (StableSR) keeps the image's fine detail and takes the reference's coarse "
                "colour and shading; 'adain' matches each channel's mean and contrast. A reference of another size "
                "is resized (antialiased bilinear) first; one reference can serve a whole batch. Alpha is kept."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The restored images to correct."),
                io.Image.Input(
                    "reference",
                    tooltip="Where the colours come from: one image for the batch or one per image, any size.",
                ),
                io.Combo.Input(
                    "method",
                    options=list(COLOR_METHODS),
                    default="wavelet",
                    tooltip="wavelet: image detail + reference low frequencies (5 levels). "
                    "adain: per-channel mean and standard deviation of the reference.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Blend between the image (0) and the fully corrected image (1).",
                ),
            ],
            outputs=[io.Image.Output("corrected", display_name="image", tooltip="The colour-corrected images.")],
        )

    @classmethod
    def execute(cls, image, reference, method, strength) -> io.NodeOutput:
        require_finite(strength=strength)
        if method not in COLOR_METHODS:
            raise ValueError(f"method must be one of {list(COLOR_METHODS)}, got {method!r}")
        images = image_to_bchw(image, "image")
        refs = image_to_bchw(reference, "reference")[:, :3]
        colour, alpha = images[:, :3], images[:, 3:]
        fixed = COLOR_METHODS[method](colour, refs)
        fixed = colour + strength * (fixed - colour) if strength < 1.0 else fixed
        return io.NodeOutput(bchw_to_image(torch.cat([fixed, alpha], dim=1)))


@lru_cache(maxsize=2)
def _lpips_cached(path: str, mtime_ns: int, size: int):
    import comfy.ops

    return load_lpips(path, operations=comfy.ops.disable_weight_init)  # the file's weights replace any init


def lpips_network(name: str):
    """The LPIPS network for a file name of the ``spire`` model folder; ``None`` for ``"none"``."""
    if name == NO_LPIPS:
        return None
    path = folder_paths.get_full_path(MODEL_FOLDER, name)
    if path is None:
        raise ValueError(
            f"lpips_weights {name!r} is not in ComfyUI/models/spire; put {LPIPS_FILENAME} there or choose 'none'"
        )
    stat = os.stat(path)
    return _lpips_cached(path, stat.st_mtime_ns, stat.st_size)


class ImageMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPIRE_ImageMetrics",
            display_name="Image Metrics (SPIRE)",
            category="SPIRE/quality",
            description=(
                "Compare images with a ground-truth reference: PSNR (dB), SSIM (Gaussian window, as scikit-image) "
                f"and, with {LPIPS_FILENAME} in ComfyUI/models/spire, LPIPS (AlexNet). Shows a table per image and "
                "outputs the means and the full results as JSON for 'Save Metrics (SPIRE)'. Image and reference "
                "must have the same size (nothing is resized); one reference can serve a whole batch."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The images to score, e.g. restored outputs."),
                io.Image.Input(
                    "reference",
                    tooltip="The ground truth, same size as the images: one for the batch or one per image.",
                ),
                io.Combo.Input(
                    "lpips_weights",
                    options=[NO_LPIPS, *folder_paths.get_filename_list(MODEL_FOLDER)],
                    default=NO_LPIPS,
                    optional=True,
                    tooltip=f"LPIPS weights ({LPIPS_FILENAME}) in ComfyUI/models/spire, or 'none' to skip LPIPS.",
                ),
            ],
            outputs=[
                io.Float.Output("psnr", display_name="psnr", tooltip="Mean PSNR in dB (inf if all images are equal)."),
                io.Float.Output("ssim", display_name="ssim", tooltip="Mean SSIM (1 = identical)."),
                io.Float.Output(
                    "lpips", display_name="lpips", tooltip="Mean LPIPS (0 = identical); NaN without LPIPS weights."
                ),
                io.String.Output("table", display_name="table", tooltip="The per-image results as a text table."),
                io.String.Output(
                    "metrics_json", display_name="metrics_json", tooltip="All results as JSON, for Save Metrics."
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image, reference, lpips_weights=NO_LPIPS) -> io.NodeOutput:
        network = lpips_network(lpips_weights)
        report = image_metrics(image_to_bchw(image, "image"), image_to_bchw(reference, "reference"), network)
        report["lpips_weights"] = None if network is None else lpips_weights
        mean = {k: float("nan") if v is None else float(v) for k, v in report["mean"].items()}
        table = report_table(report, missing=LPIPS_MISSING)
        return io.NodeOutput(
            mean["psnr"], mean["ssim"], mean["lpips"], table, json.dumps(report), ui=ui.PreviewText(table)
        )


class SaveMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPIRE_SaveMetrics",
            display_name="Save Metrics (SPIRE)",
            category="SPIRE/quality",
            description=(
                "Save the results of 'Image Metrics (SPIRE)' into ComfyUI's output folder as a CSV (one row per "
                "image, then the mean) and a JSON file, numbered like saved images (prefix_00001_.csv/.json)."
            ),
            inputs=[
                io.String.Input(
                    "metrics_json",
                    force_input=True,
                    tooltip="The metrics_json output of Image Metrics (SPIRE).",
                ),
                io.String.Input(
                    "filename_prefix",
                    default="spire/metrics",
                    tooltip="File name prefix inside the output folder; may include a subfolder (spire/metrics).",
                ),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, metrics_json, filename_prefix) -> io.NodeOutput:
        try:
            report = validate_report(json.loads(metrics_json))
        except (TypeError, ValueError) as error:  # JSONDecodeError is a ValueError
            raise ValueError(
                f"metrics_json must be the metrics_json output of Image Metrics (SPIRE), unchanged: {error}"
            ) from None
        table = report_table(report, missing=LPIPS_MISSING)
        output_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
        stem = f"{filename}_{counter:05}_"
        save_report(report, folder, stem)
        where = os.path.join(subfolder, stem) if subfolder else stem
        saved = f"saved {where}.csv and {where}.json in the output folder"
        text = f"{table}\n\n{saved}"
        return io.NodeOutput(ui=ui.PreviewText(text))


NODES = [ColorFix, ImageMetrics, SaveMetrics]
