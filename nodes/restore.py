"""Restoration nodes: the SPIRE guider (core GUIDER type) and the one-node restorer for artists."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..spire_core.prompt import BLIND_PROMPT, restoration_batch
from ..spire_core.restoration.plan import (
    COLOR_FIXES,
    MIN_LATENT_SIDE,
    RestoreSettings,
    apply_color_fix,
    output_size,
    pad_to_multiple,
)
from .adaptor import PROMPT_TOOLTIP, attach, encode_restoration
from .convert import require_finite
from .guidance import make_guider
from .spire_control import SpireControl

FORMULA = (
    "out = pred(empty, null) + restoration_scale * [pred(empty, r) - pred(empty, null)] "
    "+ semantic_scale * [pred(semantic, r) - pred(empty, r)], where r is the restoration prompt and null is "
    f"'{BLIND_PROMPT}'. restoration_scale 1 is ordinary CFG over the semantic prompt (two predictions per step)."
)


def _scale_inputs() -> list:
    return [
        io.Float.Input(
            "semantic_scale",
            default=5.0,
            min=0.0,
            max=30.0,
            step=0.1,
            round=0.01,
            tooltip="w_s: guidance over the semantic prompt (CFG scale). 1 = no semantic guidance.",
        ),
        io.Float.Input(
            "restoration_scale",
            default=1.0,
            min=0.0,
            max=10.0,
            step=0.1,
            round=0.01,
            tooltip="w_r: guidance over the restoration prompt against the null one. 1 = unguided "
            "(the paper's setting); above 1 pushes harder towards what the prompt asks: try 1.5 to 2 when the result "
            "removes degradation the prompt did not name or named only partly (a third prediction per step).",
        ),
    ]


class RestorationGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPIRE_RestorationGuider",
            display_name="Restoration Guider (SPIRE)",
            category="SPIRE/sampling",
            description="Guider for SamplerCustomAdvanced with separate semantic and restoration scales. " + FORMULA,
            inputs=[
                io.Model.Input("model", tooltip="The base model."),
                io.Conditioning.Input("positive", tooltip="Semantic prompt with the SPIRE adaptor applied."),
                io.Conditioning.Input("negative", tooltip="Empty prompt with the SPIRE adaptor applied."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP: encodes the null restoration prompt."),
                *_scale_inputs(),
            ],
            outputs=[io.Guider.Output("guider", display_name="GUIDER")],
        )

    @classmethod
    def execute(cls, model, positive, negative, clip, semantic_scale, restoration_scale) -> io.NodeOutput:
        require_finite(semantic_scale=semantic_scale, restoration_scale=restoration_scale)
        return io.NodeOutput(make_guider(model, positive, negative, clip, semantic_scale, restoration_scale))


def restore(
    model,
    clip,
    vae,
    control_net,
    image,
    semantic_prompt,
    restoration_prompt,
    steps,
    sampler_name,
    scheduler,
    semantic_scale,
    restoration_scale,
    seed,
    strength,
    color_fix_method="none",
    tile_size=0,
    tile_overlap=64,
    upsample=True,
    denoise=1.0,
) -> torch.Tensor:
    """The whole SPIRE restoration of a ComfyUI IMAGE batch (B, H, W, C) -> IMAGE at the requested size.

    ``denoise`` below 1 starts from the degraded image's latent noised to that level (KSampler's denoise: the
    last ``steps`` of ``int(steps / denoise)``) instead of from pure noise."""
    if not isinstance(control_net, SpireControl):
        raise ValueError("control_net must be a SPIRE adaptor from 'Load Adaptor (SPIRE)'")
    if image.shape[0] == 0:
        raise ValueError("image is an empty batch; connect the degraded image")
    ratio = vae.spacial_compression_decode()
    settings = RestoreSettings(
        steps=steps,
        semantic_scale=semantic_scale,
        restoration_scale=restoration_scale,
        seed=seed,
        strength=strength,
        sampler=sampler_name,
        color_fix=color_fix_method,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
        upsample=upsample,
        denoise=denoise,
    ).validate(ratio)
    prompts = restoration_batch(restoration_prompt, image.shape[0])
    height, width, _ = output_size(image.shape[1], image.shape[2], prompts)
    if not upsample:  # the image is already at its final size (e.g. a synthetic degradation resized back)
        height, width = image.shape[1], image.shape[2]
    degraded = image.movedim(-1, 1)[:, :3].float()
    hint = degraded
    if (height, width) != tuple(degraded.shape[-2:]):  # "Upsample by Nx": the degraded image at the output size
        hint = comfy.utils.common_upscale(degraded, width, height, "bicubic", "disabled").clamp(0, 1)
    padded = pad_to_multiple(hint, ratio, MIN_LATENT_SIDE * ratio)  # tiny photos padded up, cropped back below
    channels = model.get_model_object("latent_format").latent_channels
    latent = torch.zeros(image.shape[0], channels, padded.shape[-2] // ratio, padded.shape[-1] // ratio)

    def encode(text: str):
        tokens = clip.tokenize(text)
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    embedding, pooled = encode_restoration(clip, prompts.texts, control_net.info.get("text_encoder_layer"))
    control = control_net.copy().set_cond_hint(padded, strength, (0.0, 1.0))
    control.set_restoration(embedding, pooled, prompts.features())
    cache: dict = {}
    positive = attach(encode(semantic_prompt), control, embedding, cache)
    negative = attach(encode(""), control, embedding, cache)
    tile, tile_cells_overlap = settings.latent_tiles(ratio)
    guider = make_guider(model, positive, negative, clip, semantic_scale, restoration_scale, tile, tile_cells_overlap)
    sampler = comfy.samplers.sampler_object(sampler_name)
    total = steps if denoise >= 1.0 else max(steps, int(steps / denoise))  # as KSampler counts denoise
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, total).cpu()
    sigmas = sigmas[-(steps + 1) :]
    if denoise < 1.0:  # the sampler adds the noise of the first sigma to the degraded image's latent
        pixels = padded.movedim(1, -1)
        if tile:  # the encoder's half-width tiles must be wider than their overlap, as the decoder's
            overlap = min(max(8, tile_overlap), tile_size // 2 - 8)
            latent = vae.encode_tiled(pixels, tile_x=tile_size, tile_y=tile_size, overlap=overlap)
        else:
            latent = vae.encode(pixels)
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, seed)
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1, {})
    samples = guider.sample(
        noise, latent, sampler, sigmas, callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed
    )
    samples = samples.to(comfy.model_management.intermediate_device())
    if tile and (samples.shape[-2] > tile or samples.shape[-1] > tile):
        # the decoder also runs half-width tiles, which must be wider than their overlap
        overlap = min(max(1, tile_overlap // ratio), tile // 2 - 1)
        pixels = vae.decode_tiled(samples, tile_x=tile, tile_y=tile, overlap=overlap)
    else:
        pixels = vae.decode(samples)
    pixels = pixels.reshape(-1, *pixels.shape[-3:])[..., :height, :width, :3]  # exactly the requested size
    restored = apply_color_fix(pixels.movedim(-1, 1).float(), hint.to(pixels.device), color_fix_method)
    return restored.clamp(0, 1).movedim(1, -1)


class Restore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPIRE_Restore",
            display_name="Restore (SPIRE)",
            category="SPIRE/sampling",
            description=(
                "Restore a degraded image in one node: semantic prompt to the model, restoration prompt and the "
                "image to the SPIRE adaptor, sampled with ComfyUI's samplers (progress, previews and cancel as in "
                "KSampler). Any size: the output has exactly the input's size, or N times it for 'Upsample by Nx'. "
                "Large photos: set tile_size to restore in overlapping, blended tiles (memory follows the tile, not "
                "the photo). Guidance: " + FORMULA
            ),
            inputs=[
                io.Model.Input("model", tooltip="The base model (the checkpoint the adaptor was trained from)."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE."),
                io.ControlNet.Input("control_net", tooltip="The SPIRE adaptor from 'Load Adaptor (SPIRE)'."),
                io.Image.Input("image", tooltip="The degraded image (batch allowed)."),
                io.String.Input(
                    "semantic_prompt",
                    default="",
                    multiline=True,
                    tooltip="What the image shows (empty = blind semantic).",
                ),
                io.String.Input("restoration_prompt", default=BLIND_PROMPT, multiline=True, tooltip=PROMPT_TOOLTIP),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Sampling steps (the paper's default: 50)."),
                io.Combo.Input(
                    "sampler_name",
                    options=comfy.samplers.KSampler.SAMPLERS,
                    default="ddim",
                    tooltip="ComfyUI sampler (default DDIM, the paper's).",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=comfy.samplers.KSampler.SCHEDULERS,
                    default="ddim_uniform",
                    tooltip="ComfyUI scheduler.",
                ),
                *_scale_inputs(),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Noise seed."
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.0,
                    max=10.0,
                    step=0.01,
                    tooltip="Adaptor strength s in f*(1+s*gamma)+s*beta; 0 = the base model alone.",
                ),
                io.Combo.Input(
                    "color_fix",
                    options=list(COLOR_FIXES),
                    default="none",
                    tooltip="Match colours to the degraded input: wavelet (low frequencies) or AdaIN "
                    "(channel mean and spread).",
                ),
                io.Int.Input(
                    "tile_size",
                    default=0,
                    min=0,
                    max=8192,
                    step=8,
                    tooltip="Pixels per tile side for large photos (e.g. 512; at least 32); 0 = the whole image.",
                ),
                io.Int.Input(
                    "tile_overlap",
                    default=64,
                    min=0,
                    max=4096,
                    step=8,
                    tooltip="Pixels tiles share, blended smoothly; less than half of tile_size.",
                ),
                io.Boolean.Input(
                    "upsample",
                    default=True,
                    optional=True,  # added after the first workflows shipped: older prompts still validate
                    tooltip="'Upsample by Nx' in the prompt makes the output N times the input size. Off: keep the "
                    "input's size (the image was already resized back, as 'Degrade Image (SPIRE)' does).",
                ),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.01,
                    max=1.0,
                    step=0.01,
                    optional=True,  # added after the first workflows shipped: older prompts still validate
                    tooltip="1 = start from pure noise (the paper). Lower starts from the degraded image noised to "
                    "that level, as KSampler's denoise: fewer model calls, closer to the input.",
                ),
            ],
            outputs=[io.Image.Output("restored", display_name="IMAGE", tooltip="The restored image.")],
        )

    @classmethod
    def execute(
        cls,
        model,
        clip,
        vae,
        control_net,
        image,
        semantic_prompt,
        restoration_prompt,
        steps,
        sampler_name,
        scheduler,
        semantic_scale,
        restoration_scale,
        seed,
        strength,
        color_fix,
        tile_size,
        tile_overlap,
        upsample=True,
        denoise=1.0,
    ) -> io.NodeOutput:
        return io.NodeOutput(
            restore(
                model,
                clip,
                vae,
                control_net,
                image,
                semantic_prompt,
                restoration_prompt,
                steps,
                sampler_name,
                scheduler,
                semantic_scale,
                restoration_scale,
                seed,
                strength,
                color_fix,
                tile_size,
                tile_overlap,
                upsample,
                denoise,
            )
        )


NODES = [RestorationGuider, Restore]
