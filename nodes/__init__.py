"""ComfyUI V3 adapter for SPIRE: the only code in the pack that imports ComfyUI.

Each ``nodes/<area>.py`` ends with an explicit ``NODES`` list; this module gathers them into one
``ComfyExtension``. The only start-up side effect is registering the ``spire`` model folder.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import adaptor, degradation, prompt, quality, restore
from .paths import register_model_folder


class SpireExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*degradation.NODES, *prompt.NODES, *adaptor.NODES, *restore.NODES, *quality.NODES]


async def comfy_entrypoint() -> SpireExtension:
    register_model_folder()
    return SpireExtension()
