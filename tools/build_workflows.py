"""Write the shipped workflows (UI format, ``example_workflows/``) and their API twins (``tests/workflows_api/``)
from one compact description each, so the two can never disagree. From the pack's folder:

    python -m tools.build_workflows        (or: python tools/build_workflows.py)

Thumbnails (same-name .jpg) are made by ``tools.thumbnails`` from real runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACK_DIR = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = PACK_DIR / "example_workflows"
"""The shipped UI-format workflows (ComfyUI's workflow templates folder of a custom node pack)."""
API_DIR = PACK_DIR / "tests" / "workflows_api"
"""Their API-format twins, which the tests run."""

SAMPLE_IMAGE = "example.png"
"""ComfyUI ships input/example.png, so the workflows open ready to run in a fresh install."""


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    size: tuple[int, int] = (320, 120)
    widgets: list[tuple[str, Any, list[Any]]] = field(default_factory=list)  # (name, value, extra stored values)
    inputs: list[tuple[str, str, tuple[int, int] | None]] = field(default_factory=list)  # (name, type, (src, slot))
    outputs: list[tuple[str, str]] = field(default_factory=list)
    title: str | None = None


TITLE_HEIGHT = 30
"""Height of a node's title bar in ComfyUI's frontend (``LiteGraph.NODE_TITLE_HEIGHT``), drawn above ``pos``."""

GAP = 30
"""Free space kept between stacked nodes."""

VIEW = (1536, 922)
"""The canvas a 1600 x 1000 browser window gives ComfyUI's frontend (its menu and sidebar take the rest): the
saved view (``extra.ds``) shows the whole graph there, so it does on any larger screen too."""

VIEW_MARGIN = 20


def settle(nodes: list[Node]) -> dict[int, tuple[int, int]]:
    """Each node's position with the nodes of a column (same x) stacked top to bottom in their written
    order of y, each title bar at least ``GAP`` below the node above it: no node covers another's widgets."""
    placed = {}
    columns: dict[int, list[Node]] = {}
    for node in nodes:
        columns.setdefault(node.pos[0], []).append(node)
    for x, column in columns.items():
        bottom = None
        for node in sorted(column, key=lambda n: n.pos[1]):
            y = node.pos[1] if bottom is None else max(node.pos[1], bottom + GAP + TITLE_HEIGHT)
            placed[node.id] = (x, y)
            bottom = y + node.size[1]
    return placed


def boxes(nodes: list[Node], placed: dict[int, tuple[int, int]]) -> dict[int, tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each node on the canvas, title bar included."""
    return {
        n.id: (
            placed[n.id][0],
            placed[n.id][1] - TITLE_HEIGHT,
            placed[n.id][0] + n.size[0],
            placed[n.id][1] + n.size[1],
        )
        for n in nodes
    }


def fit_view(extent: tuple[float, float, float, float]) -> dict[str, Any]:
    """The ``extra.ds`` view (screen = (canvas + offset) * scale) that shows ``extent`` whole in ``VIEW``."""
    left, top, right, bottom = extent
    room_w, room_h = VIEW[0] - 2 * VIEW_MARGIN, VIEW[1] - 2 * VIEW_MARGIN
    scale = min(1.0, int(100 * min(room_w / (right - left), room_h / (bottom - top))) / 100)
    return {"scale": scale, "offset": [round(VIEW_MARGIN / scale - left, 1), round(VIEW_MARGIN / scale - top, 1)]}


@dataclass
class Graph:
    name: str
    nodes: list[Node]
    notes: str = ""

    def ui(self) -> dict[str, Any]:
        links: list[list[Any]] = []
        out_links: dict[tuple[int, int], list[int]] = {}
        in_links: dict[tuple[int, str], int] = {}
        by_id = {n.id: n for n in self.nodes}
        for node in self.nodes:
            for slot, (name, kind, src) in enumerate(node.inputs):
                if src is None:
                    continue
                link_id = len(links) + 1
                links.append([link_id, src[0], src[1], node.id, slot, kind])
                out_links.setdefault(src, []).append(link_id)
                in_links[(node.id, name)] = link_id
                assert by_id[src[0]].outputs[src[1]][1] in (kind, "*") or kind == "*", (self.name, node.id, name)
        placed = settle(self.nodes)
        extents = boxes(self.nodes, placed).values()
        extent = tuple(f(e[i] for e in extents) for i, f in enumerate((min, min, max, max)))
        nodes = []
        for order, node in enumerate(self.nodes):
            entry: dict[str, Any] = {
                "id": node.id,
                "type": node.type,
                "pos": list(placed[node.id]),
                "size": list(node.size),
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": [
                    {"name": name, "type": kind, "link": in_links.get((node.id, name))}
                    | ({"widget": {"name": name}} if name in {w[0] for w in node.widgets} else {})
                    for name, kind, _ in node.inputs
                ],
                "outputs": [
                    {"name": name, "type": kind, "links": out_links.get((node.id, slot), []), "slot_index": slot}
                    for slot, (name, kind) in enumerate(node.outputs)
                ],
                "properties": {"Node name for S&R": node.type},
                "widgets_values": [v for _, value, extra in node.widgets for v in (value, *extra)],
            }
            if node.title:
                entry["title"] = node.title
            nodes.append(entry)
        return {
            "last_node_id": max(n.id for n in self.nodes),
            "last_link_id": len(links),
            "nodes": nodes,
            "links": links,
            "groups": [],
            "config": {},
            "extra": {"ds": fit_view(extent), "spire": {"notes": self.notes}},
            "version": 0.4,
        }

    def api(self) -> dict[str, Any]:
        prompt = {}
        for node in self.nodes:
            inputs: dict[str, Any] = {name: value for name, value, _ in node.widgets}
            for name, _, src in node.inputs:
                if src is not None:
                    inputs[name] = [str(src[0]), src[1]]
            prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs}
        return prompt


def load_image(node_id: int, pos: tuple[int, int]) -> Node:
    return Node(
        node_id,
        "LoadImage",
        pos,
        (320, 360),
        widgets=[("image", SAMPLE_IMAGE, ["image"])],
        outputs=[("IMAGE", "IMAGE"), ("MASK", "MASK")],
    )


def degradation_preview() -> Graph:
    return Graph(
        "spire_degradation_preview",
        notes="Load an image, degrade it with SPIRE's paper pipeline, preview it and its restoration prompt.",
        nodes=[
            load_image(1, (40, 80)),
            degrade_node(2, (400, 80), (1, 0)),
            Node(3, "PreviewImage", (780, 80), (400, 420), inputs=[("images", "IMAGE", (2, 0))], title="Degraded"),
            Node(4, "PreviewAny", (780, 540), (400, 120), inputs=[("source", "*", (2, 1))], title="Restoration prompt"),
            Node(
                5,
                "PreviewAny",
                (400, 400),
                (340, 200),
                inputs=[("source", "*", (2, 2))],
                title="Degradation params (JSON)",
            ),
        ],
    )


CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
"""The SD1.5 checkpoint the restore workflows name (users pick theirs from the list)."""
ADAPTOR = "spire_sd15.safetensors"
"""The adaptor file the restore workflows name (in ComfyUI/models/spire)."""
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
"""The SDXL checkpoint the SDXL workflows name."""
SDXL_ADAPTOR = "spire_sdxl.safetensors"
"""The SDXL adaptor file the SDXL workflows name (trained from an SDXL checkpoint; in ComfyUI/models/spire)."""


def checkpoint(node_id: int, pos: tuple[int, int], name: str = CHECKPOINT) -> Node:
    return Node(
        node_id,
        "CheckpointLoaderSimple",
        pos,
        (320, 100),
        widgets=[("ckpt_name", name, [])],
        outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    )


def text_encode(node_id: int, pos: tuple[int, int], text: str, clip: tuple[int, int], title: str) -> Node:
    return Node(
        node_id,
        "CLIPTextEncode",
        pos,
        (380, 140),
        widgets=[("text", text, [])],
        inputs=[("clip", "CLIP", clip)],
        outputs=[("CONDITIONING", "CONDITIONING")],
        title=title,
    )


def adaptor_loader(node_id: int, pos: tuple[int, int], name: str = ADAPTOR) -> Node:
    return Node(
        node_id,
        "SPIRE_AdaptorLoader",
        pos,
        (340, 80),
        widgets=[("adaptor_name", name, [])],
        outputs=[("control_net", "CONTROL_NET")],
    )


def spire_restore() -> Graph:
    return Graph(
        "spire_restore",
        notes=(
            "Restore a photo with SPIRE: the semantic prompt goes to the checkpoint, the restoration prompt and the "
            "degraded image to the SPIRE adaptor, which modulates the model's skip features. Put the adaptor in "
            "ComfyUI/models/spire and pick the SD checkpoint it was trained from."
        ),
        nodes=[
            load_image(1, (40, 360)),
            checkpoint(2, (40, 80)),
            text_encode(3, (400, 40), "a sharp, detailed photo", (2, 1), "Semantic prompt"),
            text_encode(4, (400, 220), "blurry, noisy, jpeg artifacts, low quality", (2, 1), "Negative prompt"),
            adaptor_loader(5, (400, 400)),
            apply_adaptor(6, (820, 80), "Remove all degradation", 3, 4),
            vae_encode(7, (820, 420), (1, 0)),
            ksampler(8, (1220, 80), ((6, 0), (6, 1)), (7, 0), steps=30, cfg=5.0, denoise=1.0),
            vae_decode(9, (1220, 400), (8, 0)),
            save(10, (1580, 80), (9, 0), "spire_restore"),
        ],
    )


def restore_node(
    node_id: int,
    pos: tuple[int, int],
    image: tuple[int, int],
    semantic: str = "",
    restoration: str = "Remove all degradation",
    tile_size: int = 0,
    tile_overlap: int = 64,
    color_fix: str = "wavelet",
    title: str | None = None,
    restoration_link: tuple[int, int] | None = None,
    upsample: bool = True,
) -> Node:
    inputs = [
        ("model", "MODEL", (2, 0)),
        ("clip", "CLIP", (2, 1)),
        ("vae", "VAE", (2, 2)),
        ("control_net", "CONTROL_NET", (5, 0)),
        ("image", "IMAGE", image),
    ]
    if restoration_link is not None:
        inputs.append(("restoration_prompt", "STRING", restoration_link))
    return Node(
        node_id,
        "SPIRE_Restore",
        pos,
        (360, 520),
        widgets=[
            ("semantic_prompt", semantic, []),
            ("restoration_prompt", restoration, []),
            ("steps", 50, []),
            ("sampler_name", "ddim", []),
            ("scheduler", "ddim_uniform", []),
            ("semantic_scale", 5.0, []),
            ("restoration_scale", 1.0, []),
            ("seed", 0, ["fixed"]),
            ("strength", 1.0, []),
            ("color_fix", color_fix, []),
            ("tile_size", tile_size, []),
            ("tile_overlap", tile_overlap, []),
            ("upsample", upsample, []),
            ("denoise", 1.0, []),
        ],
        inputs=inputs,
        outputs=[("IMAGE", "IMAGE")],
        title=title,
    )


def save(node_id: int, pos: tuple[int, int], image: tuple[int, int], prefix: str) -> Node:
    return Node(
        node_id,
        "SaveImage",
        pos,
        (400, 440),
        widgets=[("filename_prefix", prefix, [])],
        inputs=[("images", "IMAGE", image)],
    )


def apply_adaptor(node_id: int, pos: tuple[int, int], restoration: str, positive: int, negative: int) -> Node:
    """'Apply Adaptor (SPIRE)' on the conditioning of nodes ``positive`` and ``negative``, with the checkpoint (2),
    the adaptor (5) and the photo (1)."""
    return Node(
        node_id,
        "SPIRE_ApplyAdaptor",
        pos,
        (360, 300),
        widgets=[
            ("restoration_prompt", restoration, []),
            ("strength", 1.0, []),
            ("start_percent", 0.0, []),
            ("end_percent", 1.0, []),
        ],
        inputs=[
            ("positive", "CONDITIONING", (positive, 0)),
            ("negative", "CONDITIONING", (negative, 0)),
            ("control_net", "CONTROL_NET", (5, 0)),
            ("clip", "CLIP", (2, 1)),
            ("image", "IMAGE", (1, 0)),
        ],
        outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
    )


def ksampler(
    node_id: int,
    pos: tuple[int, int],
    conditioning: tuple[tuple[int, int], tuple[int, int]],
    latent: tuple[int, int],
    steps: int,
    cfg: float,
    denoise: float,
) -> Node:
    """KSampler (dpmpp_2m, karras, seed 0) on the checkpoint's model (2)."""
    positive, negative = conditioning
    return Node(
        node_id,
        "KSampler",
        pos,
        (320, 270),
        widgets=[
            ("seed", 0, ["fixed"]),
            ("steps", steps, []),
            ("cfg", cfg, []),
            ("sampler_name", "dpmpp_2m", []),
            ("scheduler", "karras", []),
            ("denoise", denoise, []),
        ],
        inputs=[
            ("model", "MODEL", (2, 0)),
            ("positive", "CONDITIONING", positive),
            ("negative", "CONDITIONING", negative),
            ("latent_image", "LATENT", latent),
        ],
        outputs=[("LATENT", "LATENT")],
    )


def vae_encode(
    node_id: int, pos: tuple[int, int], pixels: tuple[int, int], width: int = 220, title: str | None = None
) -> Node:
    """VAEEncode with the checkpoint's VAE (2)."""
    return Node(
        node_id,
        "VAEEncode",
        pos,
        (width, 60),
        inputs=[("pixels", "IMAGE", pixels), ("vae", "VAE", (2, 2))],
        outputs=[("LATENT", "LATENT")],
        title=title,
    )


def vae_decode(node_id: int, pos: tuple[int, int], samples: tuple[int, int]) -> Node:
    """VAEDecode with the checkpoint's VAE (2)."""
    return Node(
        node_id,
        "VAEDecode",
        pos,
        (220, 60),
        inputs=[("samples", "LATENT", samples), ("vae", "VAE", (2, 2))],
        outputs=[("IMAGE", "IMAGE")],
    )


def degrade_node(node_id: int, pos: tuple[int, int], image: tuple[int, int]) -> Node:
    """'Degrade Image (SPIRE)' with the paper preset, seed 0, no fixed levels."""
    return Node(
        node_id,
        "SPIRE_DegradeImage",
        pos,
        (340, 260),
        widgets=[
            ("seed", 0, ["fixed"]),
            ("preset", "paper", []),
            ("blur_sigma", 0.0, []),
            ("downscale", 1.0, []),
            ("noise_sigma", 0.0, []),
            ("jpeg_quality", 0, []),
        ],
        inputs=[("image", "IMAGE", image)],
        outputs=[("degraded", "IMAGE"), ("restoration_prompt", "STRING"), ("params_json", "STRING")],
    )


def image_metrics(node_id: int, pos: tuple[int, int], image: tuple[int, int], title: str) -> Node:
    """'Image Metrics (SPIRE)' of ``image`` against the loaded photo (1), without LPIPS weights."""
    return Node(
        node_id,
        "SPIRE_ImageMetrics",
        pos,
        (320, 200),
        widgets=[("lpips_weights", "none", [])],
        inputs=[("image", "IMAGE", image), ("reference", "IMAGE", (1, 0))],
        outputs=[
            ("psnr", "FLOAT"),
            ("ssim", "FLOAT"),
            ("lpips", "FLOAT"),
            ("table", "STRING"),
            ("metrics_json", "STRING"),
        ],
        title=title,
    )


def image_stitch(node_id: int, pos: tuple[int, int], image1: tuple[int, int], image2: tuple[int, int]) -> Node:
    """ImageStitch: ``image2`` right of ``image1``, 8 white pixels between."""
    return Node(
        node_id,
        "ImageStitch",
        pos,
        (300, 170),
        widgets=[
            ("direction", "right", []),
            ("match_image_size", True, []),
            ("spacing_width", 8, []),
            ("spacing_color", "white", []),
        ],
        inputs=[("image1", "IMAGE", image1), ("image2", "IMAGE", image2)],
        outputs=[("IMAGE", "IMAGE")],
    )


def spire_blind_restore() -> Graph:
    return Graph(
        "spire_blind_restore",
        notes="Blind restoration in one node: no semantic prompt, 'Remove all degradation', wavelet colour fix.",
        nodes=[
            load_image(1, (40, 300)),
            checkpoint(2, (40, 80)),
            adaptor_loader(5, (40, 200)),
            restore_node(6, (420, 80), (1, 0)),
            save(7, (820, 80), (6, 0), "spire_blind"),
        ],
    )


def spire_suggested_restore() -> Graph:
    return Graph(
        "spire_suggested_restore",
        notes=(
            "Restore with the restoration prompt read off the photo: 'Suggest Restoration Prompt (SPIRE)' estimates "
            "noise, blur, JPEG quality and upsample factor and names what is confidently present. Its estimates show "
            "in the preview; to edit the prompt, copy it into Restore's restoration_prompt and remove the link, or "
            "lower noise_scale / blur_scale to keep some grain or softness."
        ),
        nodes=[
            load_image(1, (40, 300)),
            checkpoint(2, (40, 80)),
            adaptor_loader(5, (40, 200)),
            Node(
                3,
                "SPIRE_SuggestRestorationPrompt",
                (420, 80),
                (340, 150),
                widgets=[
                    ("noise_scale", 1.0, []),
                    ("blur_scale", 1.0, []),
                    ("when_clean", "Remove all degradation", []),
                ],
                inputs=[("image", "IMAGE", (1, 0))],
                outputs=[("restoration_prompt", "STRING"), ("estimates_json", "STRING"), ("summary", "STRING")],
            ),
            Node(4, "PreviewAny", (420, 300), (340, 260), inputs=[("source", "*", (3, 2))], title="Estimates"),
            restore_node(6, (800, 80), (1, 0), restoration_link=(3, 0)),
            save(7, (1200, 80), (6, 0), "spire_suggested"),
        ],
    )


def spire_semantic_restore() -> Graph:
    return Graph(
        "spire_semantic_restore",
        notes=(
            "Semantic + restoration prompts with separate guidance scales: 'Apply Adaptor (SPIRE)' attaches the "
            "adaptor, 'Restoration Guider (SPIRE)' weighs the semantic prompt (CFG) and the restoration prompt "
            "against 'Remove all degradation', SamplerCustomAdvanced samples, and the colour is matched to the input."
        ),
        nodes=[
            load_image(1, (40, 420)),
            checkpoint(2, (40, 80)),
            text_encode(3, (400, 40), "a portrait photo of a woman, detailed skin, natural light", (2, 1), "Semantic"),
            text_encode(4, (400, 220), "", (2, 1), "Empty (the unconditional branch)"),
            adaptor_loader(5, (400, 400)),
            apply_adaptor(6, (820, 40), "Deblur with sigma 1.5; Denoise with sigma 0.05", 3, 4),
            Node(
                7,
                "SPIRE_RestorationGuider",
                (1220, 40),
                (320, 160),
                widgets=[("semantic_scale", 5.0, []), ("restoration_scale", 1.5, [])],
                inputs=[
                    ("model", "MODEL", (2, 0)),
                    ("positive", "CONDITIONING", (6, 0)),
                    ("negative", "CONDITIONING", (6, 1)),
                    ("clip", "CLIP", (2, 1)),
                ],
                outputs=[("GUIDER", "GUIDER")],
            ),
            Node(
                8,
                "RandomNoise",
                (1220, 240),
                (300, 90),
                widgets=[("noise_seed", 0, ["fixed"])],
                outputs=[("NOISE", "NOISE")],
            ),
            Node(
                9,
                "KSamplerSelect",
                (1220, 360),
                (300, 60),
                widgets=[("sampler_name", "ddim", [])],
                outputs=[("SAMPLER", "SAMPLER")],
            ),
            Node(
                10,
                "BasicScheduler",
                (1220, 450),
                (300, 110),
                widgets=[("scheduler", "ddim_uniform", []), ("steps", 50, []), ("denoise", 1.0, [])],
                inputs=[("model", "MODEL", (2, 0))],
                outputs=[("SIGMAS", "SIGMAS")],
            ),
            # the frontend widens it to fit the title
            vae_encode(11, (820, 380), (1, 0), 370, "Latent of the input's size (sampling starts from noise)"),
            Node(
                12,
                "SamplerCustomAdvanced",
                (1580, 40),
                (300, 330),
                inputs=[
                    ("noise", "NOISE", (8, 0)),
                    ("guider", "GUIDER", (7, 0)),
                    ("sampler", "SAMPLER", (9, 0)),
                    ("sigmas", "SIGMAS", (10, 0)),
                    ("latent_image", "LATENT", (11, 0)),
                ],
                outputs=[("output", "LATENT"), ("denoised_output", "LATENT")],
            ),
            vae_decode(13, (1580, 420), (12, 0)),
            Node(
                14,
                "SPIRE_ColorFix",
                (1580, 520),
                (300, 120),
                widgets=[("method", "wavelet", []), ("strength", 1.0, [])],
                inputs=[("image", "IMAGE", (13, 0)), ("reference", "IMAGE", (1, 0))],
                outputs=[("image", "IMAGE")],
            ),
            save(15, (1920, 40), (14, 0), "spire_semantic"),
        ],
    )


def spire_strength_sweep() -> Graph:
    prompts = ["Denoise with sigma 0.02", "Denoise with sigma 0.05", "Denoise with sigma 0.1"]
    nodes = [load_image(1, (40, 300)), checkpoint(2, (40, 80)), adaptor_loader(5, (40, 200))]
    for i, prompt in enumerate(prompts):
        nodes.append(
            restore_node(
                10 + i, (420 + 380 * i, 80), (1, 0), restoration=prompt, color_fix="none", title=f"Restore: {prompt}"
            )
        )
    nodes.append(image_stitch(20, (420, 660), (10, 0), (11, 0)))
    nodes.append(image_stitch(21, (760, 660), (20, 0), (12, 0)))
    nodes.append(save(22, (1100, 660), (21, 0), "spire_sweep"))
    return Graph(
        "spire_strength_sweep",
        notes="One image, three restoration prompts of rising denoise strength, results side by side.",
        nodes=nodes,
    )


def spire_degrade_restore_metrics() -> Graph:
    return Graph(
        "spire_degrade_restore_metrics",
        notes=(
            "Benchmark one clean photo: degrade it with the paper pipeline, restore it with the prompt the "
            "degradation wrote, and measure PSNR/SSIM (LPIPS with local weights) of degraded and restored images "
            "against the clean one; the metrics are saved as CSV and JSON."
        ),
        nodes=[
            load_image(1, (40, 300)),
            checkpoint(2, (40, 80)),
            adaptor_loader(5, (40, 200)),
            degrade_node(3, (420, 300), (1, 0)),
            restore_node(6, (800, 80), (3, 0), color_fix="wavelet", restoration_link=(3, 1), upsample=False),
            image_metrics(7, (1200, 80), (6, 0), "Restored vs clean"),
            image_metrics(8, (1200, 320), (3, 0), "Degraded vs clean"),
            Node(
                9,
                "SPIRE_SaveMetrics",
                (1560, 80),
                (320, 120),
                widgets=[("filename_prefix", "spire/restored_metrics", [])],
                inputs=[("metrics_json", "STRING", (7, 4))],
            ),
            save(10, (1560, 260), (6, 0), "spire_benchmark"),
        ],
    )


def spire_restore_to_generation() -> Graph:
    return Graph(
        "spire_restore_to_generation",
        notes="Restore, upscale 1.5x, then a light img2img pass with the semantic prompt for extra detail.",
        nodes=[
            load_image(1, (40, 300)),
            checkpoint(2, (40, 80)),
            adaptor_loader(5, (40, 200)),
            restore_node(6, (420, 80), (1, 0), semantic="a detailed photo of a cat"),
            Node(
                7,
                "ImageScaleBy",
                (820, 80),
                (300, 90),
                widgets=[("upscale_method", "lanczos", []), ("scale_by", 1.5, [])],
                inputs=[("image", "IMAGE", (6, 0))],
                outputs=[("IMAGE", "IMAGE")],
            ),
            vae_encode(8, (820, 220), (7, 0)),
            text_encode(9, (820, 320), "a detailed photo of a cat, sharp focus", (2, 1), "Generation prompt"),
            text_encode(10, (820, 500), "blurry, low quality", (2, 1), "Negative"),
            ksampler(11, (1240, 80), ((9, 0), (10, 0)), (8, 0), steps=25, cfg=6.0, denoise=0.35),
            vae_decode(12, (1240, 400), (11, 0)),
            save(13, (1600, 80), (12, 0), "spire_generation"),
        ],
    )


def spire_large_photo_tiled() -> Graph:
    return Graph(
        "spire_large_photo_tiled",
        notes=(
            "Large photos: restore in 512-pixel tiles overlapping by 64 pixels, blended so no seam shows; memory "
            "follows the tile size, not the photo size."
        ),
        nodes=[
            load_image(1, (40, 300)),
            checkpoint(2, (40, 80)),
            adaptor_loader(5, (40, 200)),
            restore_node(6, (420, 80), (1, 0), tile_size=512, title="Restore (SPIRE), tiled"),
            save(7, (820, 80), (6, 0), "spire_tiled"),
        ],
    )


def spire_sdxl_blind_restore() -> Graph:
    return Graph(
        "spire_sdxl_blind_restore",
        notes=(
            "Blind restoration with an SDXL checkpoint: the SPIRE adaptor trained from it, 'Remove all degradation', "
            "no semantic prompt, wavelet colour fix (SDXL works best at about 1024 pixels). Core 'Apply ControlNet' "
            "cannot carry SDXL's pooled embedding: use 'Restore (SPIRE)' or 'Apply Adaptor (SPIRE)'."
        ),
        nodes=[
            load_image(1, (40, 300)),
            checkpoint(2, (40, 80), SDXL_CHECKPOINT),
            adaptor_loader(5, (40, 200), SDXL_ADAPTOR),
            restore_node(6, (420, 80), (1, 0), title="Restore (SPIRE), SDXL"),
            save(7, (820, 80), (6, 0), "spire_sdxl_blind"),
        ],
    )


def spire_sdxl_large_photo_tiled() -> Graph:
    return Graph(
        "spire_sdxl_large_photo_tiled",
        notes=(
            "Large photos with SDXL (a 2048-pixel photo, say): restore in 1024-pixel tiles, SDXL's native size, "
            "overlapping by 128 pixels and blended so no seam shows; memory follows the tile, not the photo."
        ),
        nodes=[
            load_image(1, (40, 300)),
            checkpoint(2, (40, 80), SDXL_CHECKPOINT),
            adaptor_loader(5, (40, 200), SDXL_ADAPTOR),
            restore_node(6, (420, 80), (1, 0), tile_size=1024, tile_overlap=128, title="Restore (SPIRE), SDXL, tiled"),
            save(7, (820, 80), (6, 0), "spire_sdxl_tiled"),
        ],
    )


GRAPHS = [
    degradation_preview,
    spire_restore,
    spire_blind_restore,
    spire_suggested_restore,
    spire_semantic_restore,
    spire_strength_sweep,
    spire_degrade_restore_metrics,
    spire_restore_to_generation,
    spire_large_photo_tiled,
    spire_sdxl_blind_restore,
    spire_sdxl_large_photo_tiled,
]


def main() -> None:
    WORKFLOW_DIR.mkdir(exist_ok=True)
    API_DIR.mkdir(parents=True, exist_ok=True)
    for make in GRAPHS:
        graph = make()
        (WORKFLOW_DIR / f"{graph.name}.json").write_text(json.dumps(graph.ui(), indent=2) + "\n", encoding="utf-8")
        (API_DIR / f"{graph.name}.json").write_text(json.dumps(graph.api(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {graph.name}")


if __name__ == "__main__":
    main()
