"""Restoration-prompt nodes: build a canonical prompt from numbers, validate/parse text, suggest one from a photo."""

from __future__ import annotations

import json

from comfy_api.latest import io, ui

from ..spire_core.estimate import MIN_SIDE, estimate_degradation
from ..spire_core.prompt import BLIND_PROMPT, RestorationRequest, parse, quantize, render
from .convert import image_to_bchw, require_finite

FORMS = (
    '"Upsample by 4.0x", "Deblur with sigma 1.5", "Denoise with sigma 0.08", "Dejpeg with quality 50", '
    f'joined by "; ", or "{BLIND_PROMPT}"'
)


class RestorationPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPIRE_RestorationPrompt",
            display_name="Restoration Prompt (SPIRE)",
            category="SPIRE/prompt",
            description=(
                "Build a restoration prompt in SPIRE's canonical wording from numbers: what to remove and how "
                "strongly. Each value has an 'off' setting that leaves that degradation alone. 'blind' gives "
                f'"{BLIND_PROMPT}" and ignores the numbers.'
            ),
            inputs=[
                io.Float.Input(
                    "upsample",
                    default=1.0,
                    min=1.0,
                    max=64.0,
                    step=0.1,
                    round=0.1,
                    tooltip="Total factor the image was shrunk by (restore the lost detail). 1.0 = off.",
                ),
                io.Float.Input(
                    "deblur_sigma",
                    default=0.0,
                    min=0.0,
                    max=64.0,
                    step=0.1,
                    round=0.1,
                    tooltip="Blur to remove: effective Gaussian sigma in pixels of the input. 0 = off.",
                ),
                io.Float.Input(
                    "denoise_sigma",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    round=0.01,
                    tooltip="Noise to remove: standard deviation on the [0, 1] scale (0.08 is strong). 0 = off.",
                ),
                io.Int.Input(
                    "dejpeg_quality",
                    default=0,
                    min=0,
                    max=100,
                    tooltip="JPEG artefacts to remove: the quality the image was saved with (1..100). 0 = off.",
                ),
                io.Boolean.Input(
                    "blind",
                    default=False,
                    tooltip=f'Ignore the numbers and ask to "{BLIND_PROMPT}".',
                ),
            ],
            outputs=[
                io.String.Output(
                    "restoration_prompt", display_name="restoration_prompt", tooltip="The canonical restoration prompt."
                )
            ],
        )

    @classmethod
    def execute(cls, upsample, deblur_sigma, denoise_sigma, dejpeg_quality, blind) -> io.NodeOutput:
        require_finite(upsample=upsample, deblur_sigma=deblur_sigma, denoise_sigma=denoise_sigma)
        if blind:
            return io.NodeOutput(BLIND_PROMPT)
        request = RestorationRequest(
            upsample=upsample if upsample > 1.0 else None,
            deblur=deblur_sigma if deblur_sigma > 0 else None,
            denoise=denoise_sigma if denoise_sigma > 0 else None,
            dejpeg=dejpeg_quality if dejpeg_quality > 0 else None,
        )
        if request.is_empty():
            raise ValueError(
                "Restoration Prompt (SPIRE): every value is off, so there is nothing to ask for. "
                "Set at least one of upsample > 1, deblur_sigma > 0, denoise_sigma > 0, dejpeg_quality > 0, "
                f'or switch on blind for "{BLIND_PROMPT}".'
            )
        return io.NodeOutput(render(request))


class ParseRestorationPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPIRE_ParseRestorationPrompt",
            display_name="Parse Restoration Prompt (SPIRE)",
            category="SPIRE/prompt",
            description=(
                "Check a restoration prompt against SPIRE's grammar and return its canonical form and numbers. "
                "Case, spacing, separators (; , new line) and clause order are free; an unknown clause or an "
                f"out-of-range number stops the workflow with a message that says what is accepted: {FORMS}."
            ),
            inputs=[
                io.String.Input(
                    "restoration_prompt",
                    multiline=True,
                    default=BLIND_PROMPT,
                    tooltip=f"The prompt to check, e.g. {FORMS}.",
                ),
            ],
            outputs=[
                io.String.Output(
                    "canonical", display_name="canonical", tooltip="The prompt in canonical wording and order."
                ),
                io.Float.Output("upsample", display_name="upsample", tooltip="Upsample factor (1.0 when not named)."),
                io.Float.Output(
                    "deblur_sigma", display_name="deblur_sigma", tooltip="Deblur sigma in pixels (0 when not named)."
                ),
                io.Float.Output(
                    "denoise_sigma",
                    display_name="denoise_sigma",
                    tooltip="Denoise sigma on the [0, 1] scale (0 when not named).",
                ),
                io.Int.Output(
                    "dejpeg_quality", display_name="dejpeg_quality", tooltip="JPEG quality (0 when not named)."
                ),
                io.Boolean.Output("blind", display_name="blind", tooltip=f'True for "{BLIND_PROMPT}".'),
            ],
        )

    @classmethod
    def execute(cls, restoration_prompt) -> io.NodeOutput:
        request = quantize(parse(restoration_prompt))
        return io.NodeOutput(
            render(request),
            request.upsample or 1.0,
            request.deblur or 0.0,
            request.denoise or 0.0,
            request.dejpeg or 0,
            request.blind,
        )


WHEN_CLEAN = (BLIND_PROMPT, "empty")
"""What the suggestion says for a photo where no degradation is confidently present."""


class SuggestRestorationPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPIRE_SuggestRestorationPrompt",
            display_name="Suggest Restoration Prompt (SPIRE)",
            category="SPIRE/prompt",
            description=(
                "Read the degradation off a photo, without its original, and write the restoration prompt that names "
                "it: noise sigma, blur sigma, JPEG quality and upsample factor, each with a confidence; only what is "
                "confidently present is named. Start from the suggestion, then dial noise_scale or blur_scale down to "
                "keep some grain or softness. No model is needed. One prompt line per image of the batch."
            ),
            inputs=[
                io.Image.Input(
                    "image", tooltip=f"The photo(s) to read, at least {MIN_SIDE}x{MIN_SIDE} px; alpha is ignored."
                ),
                io.Float.Input(
                    "noise_scale",
                    default=1.0,
                    min=0.0,
                    max=2.0,
                    step=0.05,
                    tooltip="Multiplies the suggested noise sigma: below 1 keeps some grain, 0 leaves the noise alone.",
                ),
                io.Float.Input(
                    "blur_scale",
                    default=1.0,
                    min=0.0,
                    max=2.0,
                    step=0.05,
                    tooltip="Multiplies the suggested blur sigma: below 1 keeps some softness, 0 leaves the blur "
                    "alone.",
                ),
                io.Combo.Input(
                    "when_clean",
                    options=list(WHEN_CLEAN),
                    default=BLIND_PROMPT,
                    tooltip=f'The prompt for a photo where nothing is confidently degraded: "{BLIND_PROMPT}", or an '
                    "empty line (restoring then stops with a message: there is nothing to restore).",
                ),
            ],
            outputs=[
                io.String.Output(
                    "restoration_prompt",
                    display_name="restoration_prompt",
                    tooltip="The suggested prompt, one line per image, e.g. 'Deblur with sigma 1.5; Denoise with "
                    "sigma 0.05'.",
                ),
                io.String.Output(
                    "estimates_json",
                    display_name="estimates_json",
                    tooltip="Every estimate per image as JSON: value (prompt units), confidence 0..1, present, note.",
                ),
                io.String.Output("summary", display_name="summary", tooltip="The estimates as short text."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image, noise_scale, blur_scale, when_clean) -> io.NodeOutput:
        require_finite(noise_scale=noise_scale, blur_scale=blur_scale)
        if when_clean not in WHEN_CLEAN:
            raise ValueError(f"when_clean must be one of {list(WHEN_CLEAN)}, got {when_clean!r}")
        estimates = estimate_degradation(image_to_bchw(image), "image")
        prompts, texts = [], []
        for index, item in enumerate(estimates):
            request = item.request(noise_scale, blur_scale)
            prompt = render(request) if not request.is_empty() else (BLIND_PROMPT if when_clean == BLIND_PROMPT else "")
            prompts.append(prompt)
            texts.append(f"image {index}: {prompt or '(nothing to restore)'}\n{item.summary()}")
        data = [{"prompt": p, **e.to_dict()} for p, e in zip(prompts, estimates)]
        summary = "\n\n".join(texts)
        return io.NodeOutput("\n".join(prompts), json.dumps(data), summary, ui=ui.PreviewText(summary))


NODES = [RestorationPrompt, ParseRestorationPrompt, SuggestRestorationPrompt]
