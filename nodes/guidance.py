"""SPIRE guidance: separate semantic and restoration scales, and tiled (overlap-blended) model calls.

Each model call gives up to three predictions (semantic + restoration prompt, empty + restoration prompt, empty
+ null restoration prompt "Remove all degradation") combined by ``spire_core.restoration.guidance.combine_guidance``
(the formula, once). With w_r = 1 it is ordinary classifier-free guidance over c_s with the adaptor on both
branches, and the guider then runs exactly ComfyUI's own CFG (same code path, two predictions per step); with
w_r != 1 its semantic part still goes through ComfyUI's ``cfg_function``, so other nodes' CFG patches apply.

Tiling (MultiDiffusion-style, ``spire_core.restoration.tiles``, shared with ``SpirePipeline``): each model call
is made per overlapping latent tile, with the degraded image cropped to the tile (``TILE_KEY``), and the tiles'
predictions are blended with weights that ramp linearly across the overlap, so no tile border shows. Memory of a
model call is bounded by the tile size, not the image size.
"""

from __future__ import annotations

import comfy.model_management
import comfy.samplers
import torch

from ..spire_core.prompt import BLIND_PROMPT, restoration_features
from ..spire_core.restoration.guidance import combine_guidance
from ..spire_core.restoration.tiles import tiled_predict
from .spire_control import SpireControl

TILE_KEY = "spire_tile"
"""``transformer_options`` key carrying the current tile: (top, left, height, width, full_h, full_w) in latent units."""


def with_restoration(control, encoded: tuple[torch.Tensor, torch.Tensor | None], features: torch.Tensor | None):
    """A copy of a control chain in which every SPIRE adaptor reads ``encoded`` (embedding and pooled embedding,
    ``adaptor.encode_restoration``) and, for its numeric channel, ``features`` as its restoration prompt.

    Returns:
        (new chain, number of SPIRE adaptors found).
    """
    if control is None:
        return None, 0
    previous, found = with_restoration(control.previous_controlnet, encoded, features)
    copy = control.copy()
    copy.set_previous_controlnet(previous)
    if isinstance(control, SpireControl):
        copy.set_restoration(*encoded, features)
        found += 1
    return copy, found


def null_restoration_conds(negative: list, encode) -> list:
    """The negative conditioning with every SPIRE adaptor switched to the null restoration prompt.

    Args:
        negative: conditioning list from 'Apply Adaptor (SPIRE)'.
        encode: callable(control) -> ((1, T, D) embedding, (1, P) pooled embedding or None) of the null prompt for
            that adaptor's text layer.
    """
    out, cache, total = [], {}, 0
    for embedding, options in negative:
        control = options.get("control")
        if control not in cache:
            spire = _first_spire(control)
            if spire is None:
                cache[control] = (control, 0)
            else:
                cache[control] = with_restoration(control, encode(spire), restoration_features([BLIND_PROMPT]))
        new_control, found = cache[control]
        total += found
        options = {**options, "control": new_control}
        out.append([embedding, options])
    if total == 0:
        raise ValueError(
            "negative has no SPIRE adaptor: connect the conditioning from 'Apply Adaptor (SPIRE)' (the restoration "
            "scale compares the restoration prompt with the null one through the adaptor)"
        )
    return out


def _first_spire(control):
    while control is not None:
        if isinstance(control, SpireControl):
            return control
        control = control.previous_controlnet
    return None


class SpireGuider(comfy.samplers.CFGGuider):
    """CFGGuider with a restoration scale and optional tiling (see the module docstring)."""

    def __init__(self, model_patcher, restoration_scale: float = 1.0, tile: int = 0, overlap: int = 0):
        super().__init__(model_patcher)
        self.restoration_scale = float(restoration_scale)
        self.tile = int(tile)  # latent cells; 0 = no tiling
        self.overlap = int(overlap)

    def set_spire_conds(self, positive, negative, null=None) -> None:
        conds = {"positive": positive, "negative": negative}
        if null is not None:
            conds["null_restoration"] = null
        self.inner_set_conds(conds)

    def _predict(self, x, timestep, model_options, seed):
        if self.restoration_scale == 1.0 or "null_restoration" not in self.conds:
            return comfy.samplers.sampling_function(
                self.inner_model,
                x,
                timestep,
                self.conds.get("negative"),
                self.conds.get("positive"),
                self.cfg,
                model_options=model_options,
                seed=seed,
            )
        conds = [self.conds["positive"], self.conds["negative"], self.conds["null_restoration"]]
        positive, negative, null = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)

        def cfg(cond_pred: torch.Tensor, uncond_pred: torch.Tensor, scale: float) -> torch.Tensor:
            # ComfyUI's own CFG step: other nodes' CFG patches (RescaleCFG, post-CFG functions) apply here
            return comfy.samplers.cfg_function(
                self.inner_model, cond_pred, uncond_pred, scale, x, timestep, model_options, conds[0], conds[1]
            )

        return combine_guidance(positive, negative, null, self.cfg, self.restoration_scale, cfg)

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006  (ComfyUI's signature)
        def one(latent: torch.Tensor, window) -> torch.Tensor:  # noqa: ANN001 - a tiles.Window or None
            if window is None:
                return self._predict(latent, timestep, model_options, seed)
            comfy.model_management.throw_exception_if_processing_interrupted()  # Cancel stops between tiles
            options = dict(model_options)
            transformer = dict(options.get("transformer_options", {}))
            transformer[TILE_KEY] = window
            options["transformer_options"] = transformer
            return self._predict(latent, timestep, options, seed)

        return tiled_predict(one, x, self.tile, self.overlap)


def encode_null(clip, control: SpireControl, prompt: str = BLIND_PROMPT) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, T, D) embedding and (1, P) pooled embedding of the null restoration prompt at ``control``'s text-encoder
    layer."""
    from .adaptor import encode_restoration

    return encode_restoration(clip, [prompt], control.info.get("text_encoder_layer"))


def make_guider(model, positive, negative, clip, semantic_scale, restoration_scale, tile=0, overlap=0):
    """A ``SpireGuider`` over conditioning from 'Apply Adaptor (SPIRE)' (the null branch only when w_r != 1)."""
    guider = SpireGuider(model, restoration_scale, tile, overlap)
    guider.set_cfg(semantic_scale)
    null = None
    if restoration_scale != 1.0:
        if clip is None:
            raise ValueError("clip is needed when restoration_scale is not 1 (it encodes the null restoration prompt)")
        null = null_restoration_conds(negative, lambda control: encode_null(clip, control))
    guider.set_spire_conds(positive, negative, null)
    return guider
