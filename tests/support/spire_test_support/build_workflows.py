"""Write the shipped workflows (UI format, ``workflows/``) and their API twins (``tests/workflows_api/``)
from one compact description each, so the two can never disagree.

    PYTHONPATH=tests/support python -m spire_test_support.build_workflows

Thumbnails (same-name .jpg) are made by ``spire_test_support.thumbnails`` from real runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .workflows import API_DIR, WORKFLOW_DIR

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
        nodes = []
        for order, node in enumerate(self.nodes):
            entry: dict[str, Any] = {
                "id": node.id,
                "type": node.type,
                "pos": list(node.pos),
                "size": list(node.size),
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": [
                    {"name": name, "type": kind, "link": in_links.get((node.id, name))} for name, kind, _ in node.inputs
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
            "extra": {"ds": {"scale": 0.9, "offset": [0, 0]}, "spire": {"notes": self.notes}},
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
            Node(
                2,
                "SPIRE_DegradeImage",
                (400, 80),
                (340, 260),
                widgets=[
                    ("seed", 0, ["fixed"]),
                    ("preset", "paper", []),
                    ("blur_sigma", 0.0, []),
                    ("downscale", 1.0, []),
                    ("noise_sigma", 0.0, []),
                    ("jpeg_quality", 0, []),
                ],
                inputs=[("image", "IMAGE", (1, 0))],
                outputs=[("degraded", "IMAGE"), ("restoration_prompt", "STRING"), ("params_json", "STRING")],
            ),
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


def checkpoint(node_id: int, pos: tuple[int, int]) -> Node:
    return Node(
        node_id,
        "CheckpointLoaderSimple",
        pos,
        (320, 100),
        widgets=[("ckpt_name", CHECKPOINT, [])],
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
            Node(
                5,
                "SPIRE_AdaptorLoader",
                (400, 400),
                (340, 80),
                widgets=[("adaptor_name", ADAPTOR, [])],
                outputs=[("control_net", "CONTROL_NET")],
            ),
            Node(
                6,
                "SPIRE_ApplyAdaptor",
                (820, 80),
                (360, 300),
                widgets=[
                    ("restoration_prompt", "Remove all degradation", []),
                    ("strength", 1.0, []),
                    ("start_percent", 0.0, []),
                    ("end_percent", 1.0, []),
                ],
                inputs=[
                    ("positive", "CONDITIONING", (3, 0)),
                    ("negative", "CONDITIONING", (4, 0)),
                    ("control_net", "CONTROL_NET", (5, 0)),
                    ("clip", "CLIP", (2, 1)),
                    ("image", "IMAGE", (1, 0)),
                ],
                outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
            ),
            Node(
                7,
                "VAEEncode",
                (820, 420),
                (220, 60),
                inputs=[("pixels", "IMAGE", (1, 0)), ("vae", "VAE", (2, 2))],
                outputs=[("LATENT", "LATENT")],
            ),
            Node(
                8,
                "KSampler",
                (1220, 80),
                (320, 270),
                widgets=[
                    ("seed", 0, ["fixed"]),
                    ("steps", 30, []),
                    ("cfg", 5.0, []),
                    ("sampler_name", "dpmpp_2m", []),
                    ("scheduler", "karras", []),
                    ("denoise", 1.0, []),
                ],
                inputs=[
                    ("model", "MODEL", (2, 0)),
                    ("positive", "CONDITIONING", (6, 0)),
                    ("negative", "CONDITIONING", (6, 1)),
                    ("latent_image", "LATENT", (7, 0)),
                ],
                outputs=[("LATENT", "LATENT")],
            ),
            Node(
                9,
                "VAEDecode",
                (1220, 400),
                (220, 60),
                inputs=[("samples", "LATENT", (8, 0)), ("vae", "VAE", (2, 2))],
                outputs=[("IMAGE", "IMAGE")],
            ),
            Node(
                10,
                "SaveImage",
                (1580, 80),
                (400, 440),
                widgets=[("filename_prefix", "spire_restore", [])],
                inputs=[("images", "IMAGE", (9, 0))],
            ),
        ],
    )


GRAPHS = [degradation_preview, spire_restore]


def main() -> None:
    WORKFLOW_DIR.mkdir(exist_ok=True)
    API_DIR.mkdir(parents=True, exist_ok=True)
    for make in GRAPHS:
        graph = make()
        (WORKFLOW_DIR / f"{graph.name}.json").write_text(json.dumps(graph.ui(), indent=2) + "\n")
        (API_DIR / f"{graph.name}.json").write_text(json.dumps(graph.api(), indent=2) + "\n")
        print(f"wrote {graph.name}")


if __name__ == "__main__":
    main()
