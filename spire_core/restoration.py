"""Pure helpers shared by the ComfyUI Restore node and ``SpirePipeline``: output size, padding, the guidance
combination, colour fix.

Kept light (torch and the prompt grammar only) so the ComfyUI adapter can import it without the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .prompt import parse

COLOR_FIXES = ("none", "wavelet", "adain")
"""Colour corrections against the degraded input (``spire_core.color``)."""


def output_size(height: int, width: int, prompts: Sequence[str]) -> tuple[int, int, float]:
    """(height, width, factor) of the restoration: N times the input for "Upsample by Nx" (one N per batch)."""
    factors = {parse(p).upsample or 1.0 for p in prompts}
    if len(factors) > 1:
        raise ValueError(
            f"the restoration prompts ask for different upsample factors {sorted(factors)} within one batch; one "
            "batch has one output size"
        )
    factor = factors.pop()
    return max(1, round(height * factor)), max(1, round(width * factor)), factor


MIN_LATENT_SIDE = 4
"""Smallest latent side restoration samples and decodes (32 px under an 8x VAE): smaller images are padded
up to it (``pad_to_multiple``'s ``minimum``) and the result is cropped back; smaller tiles are refused.
Below it the decoder's tiles and a narrow UNet's normalisation layers have nothing left to work on."""


def pad_to_multiple(image: torch.Tensor, multiple: int, minimum: int = 0) -> torch.Tensor:
    """(B, C, H, W) padded at the bottom and right by reflection (replicate where too small) to multiples
    of ``multiple`` of at least ``minimum`` pixels per side."""
    height, width = image.shape[-2:]
    pad_h = max(minimum, height + (-height) % multiple) - height
    pad_w = max(minimum, width + (-width) % multiple) - width
    pad_h += (-(height + pad_h)) % multiple
    pad_w += (-(width + pad_w)) % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


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


def apply_color_fix(restored: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """(B, C, H, W) colour correction of ``restored`` against ``reference``: ``"none"``, ``"wavelet"``, ``"adain"``."""
    if method == "none":
        return restored
    from . import color

    fixes = {"wavelet": color.wavelet_color_fix, "adain": color.adain_color_fix}
    if method not in fixes:
        raise ValueError(f"color_fix {method!r} is unknown; expected one of {COLOR_FIXES}")
    return fixes[method](restored, reference)
