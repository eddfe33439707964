"""Restoring a photo: one home for what the ComfyUI nodes, the diffusers pipeline, the command line and
training validation share.

- ``plan``: output size, padding, the hint's resize, colour fix, and ``RestoreSettings`` (what a restoration
  is asked to do, checked once);
- ``guidance``: SPIRE's guidance combination (the formula, once);
- ``tiles``: overlapping tiles and their blending (the ComfyUI guider and the pipeline alike);
- ``color``: wavelet and AdaIN colour correction;
- ``pipeline``: ``SpirePipeline``, restoration outside ComfyUI (diffusers models and schedulers);
- ``__main__``: the command line, ``python -m spire_core.restoration``.

The light modules (torch and the prompt grammar only) are what the ComfyUI adapter imports; ``SpirePipeline``
is imported on first use.
"""

from __future__ import annotations

from typing import Any

from .guidance import Guide, combine_guidance, plain_cfg
from .plan import (
    COLOR_FIXES,
    HINT_RESIZE,
    MIN_LATENT_SIDE,
    RestoreSettings,
    apply_color_fix,
    output_size,
    pad_to_multiple,
)
from .tiles import ramp, tile_windows, tiled_predict

_LAZY = {"SpirePipeline": "pipeline", "COMFY_SIMPLE_SCHEDULE": "pipeline", "SAMPLERS": "pipeline"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "COLOR_FIXES",
    "COMFY_SIMPLE_SCHEDULE",
    "HINT_RESIZE",
    "MIN_LATENT_SIDE",
    "SAMPLERS",
    "Guide",
    "RestoreSettings",
    "SpirePipeline",
    "apply_color_fix",
    "combine_guidance",
    "output_size",
    "pad_to_multiple",
    "plain_cfg",
    "ramp",
    "tile_windows",
    "tiled_predict",
]
