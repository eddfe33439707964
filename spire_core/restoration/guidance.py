"""SPIRE's guidance combination: the one place the formula lives (the ComfyUI guider, ``SpirePipeline`` and
training validation all call it)."""

from __future__ import annotations

from collections.abc import Callable

import torch

Guide = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
"""``(cond, uncond, scale) -> guided``: classifier-free guidance of one prediction pair."""


def plain_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


def combine_guidance(
    semantic: torch.Tensor,
    empty: torch.Tensor,
    null: torch.Tensor | None,
    semantic_scale: float,
    restoration_scale: float,
    cfg: Guide = plain_cfg,
) -> torch.Tensor:
    """SPIRE's guided prediction from its branches, the one place the formula lives:

        out = pred("", c_r0) + w_r * [pred("", c_r) - pred("", c_r0)] + w_s * [pred(c_s, c_r) - pred("", c_r)]
            = cfg(pred(c_s, c_r), pred("", c_r), w_s) + (w_r - 1) * [pred("", c_r) - pred("", c_r0)]

    written as the second line so that the semantic part is ordinary classifier-free guidance: ComfyUI passes
    its own ``cfg_function`` as ``cfg``, so other nodes' CFG patches (RescaleCFG, post-CFG functions) apply to
    it whatever the restoration scale.

    Args:
        semantic: pred(c_s, c_r).
        empty: pred("", c_r).
        null: pred("", c_r0); needed only when ``restoration_scale`` is not 1.
        semantic_scale, restoration_scale: w_s and w_r.
        cfg: how a prediction pair and a scale become the guided prediction (default: :func:`plain_cfg`).
    """
    out = cfg(semantic, empty, semantic_scale)
    if restoration_scale != 1.0:
        if null is None:
            raise ValueError("the null-restoration prediction is needed when restoration_scale is not 1")
        out = out + (restoration_scale - 1.0) * (empty - null)
    return out
