"""Adaptor nodes: load a SPIRE adaptor, attach it to conditioning, encode restoration prompts."""

from __future__ import annotations

import folder_paths
import torch
from comfy_api.latest import io

from ..spire_core.prompt import BLIND_PROMPT, restoration_batch
from .adaptor_model import load_spire_adaptor
from .convert import require_finite
from .paths import MODEL_FOLDER
from .spire_control import SpireControl

PROMPT_TOOLTIP = (
    "What to restore, in SPIRE's grammar: e.g. 'Deblur with sigma 1.5; Denoise with sigma 0.08', or "
    f"'{BLIND_PROMPT}'. Several lines give one prompt per image of the batch."
)


def encode_restoration(clip, prompts: list[str], layer: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, T, D) text-encoder hidden states and (N, P) pooled embeddings of the prompts, from a clone of ``clip``
    (the pooled ones feed an SDXL adaptor's added conditioning; ``None`` where the text encoder has none).

    Args:
        clip: the checkpoint's CLIP (not modified).
        prompts: canonical restoration prompts.
        layer: ``"last"`` or ``"penultimate"`` (the adaptor's metadata); ``None`` keeps the CLIP's setting.
    """
    if clip is None:
        raise ValueError("clip is missing: connect the checkpoint's CLIP (the restoration prompt is encoded with it)")
    clip = clip.clone()
    if layer == "penultimate":
        clip.clip_layer(-2)
    elif layer == "last":
        clip.clip_layer(None)  # the encoder's own default: SD1's final, normalised layer
    encoded = [clip.encode_from_tokens(clip.tokenize(p), return_pooled=True) for p in prompts]
    length = max(e.shape[1] for e, _ in encoded)
    if any(e.shape[1] != length for e, _ in encoded):
        raise ValueError("restoration prompts of different token lengths cannot share a batch; shorten the long one")
    pooled = [p for _, p in encoded]
    pooled = None if any(p is None for p in pooled) else torch.cat(pooled, dim=0)
    return torch.cat([e for e, _ in encoded], dim=0), pooled


def attach(conditioning, control, restoration: torch.Tensor, cache: dict) -> list:
    """Copy every conditioning entry and put ``control`` on it, chained after the entry's own control.

    The control carries its restoration embedding itself, so controls earlier in the chain keep reading
    the ``cross_attn_controlnet`` they were given; an entry without one gets ours (as core
    CLIPTextEncodeControlnet would set it)."""
    out = []
    for embedding, options in conditioning:
        options = options.copy()
        previous = options.get("control")
        if previous not in cache:
            cache[previous] = control.copy().set_previous_controlnet(previous) if previous is not None else control
        options["control"] = cache[previous]
        options["control_apply_to_uncond"] = False
        options.setdefault("cross_attn_controlnet", restoration)
        out.append([embedding, options])
    return out


class AdaptorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPIRE_AdaptorLoader",
            display_name="Load Adaptor (SPIRE)",
            category="SPIRE/adaptor",
            description=(
                "Load a SPIRE adaptor (.safetensors) from ComfyUI/models/spire. It travels as a CONTROL_NET: attach it "
                "with 'Apply Adaptor (SPIRE)' (or, SD 1.x/2.x adaptors only, core 'Apply ControlNet' after 'Encode "
                "Restoration Prompt'). The file "
                "is checked before anything is loaded; base checkpoints, plain ControlNets, pickles and damaged "
                "files are refused with a message saying what they are."
            ),
            inputs=[
                io.Combo.Input(
                    "adaptor_name",
                    options=folder_paths.get_filename_list(MODEL_FOLDER),
                    tooltip="An adaptor file in ComfyUI/models/spire (`python -m spire_core.models init` starts one).",
                )
            ],
            outputs=[io.ControlNet.Output("control_net", display_name="control_net", tooltip="The SPIRE adaptor.")],
        )

    @classmethod
    def execute(cls, adaptor_name) -> io.NodeOutput:
        path = folder_paths.get_full_path(MODEL_FOLDER, adaptor_name)
        if path is None:
            raise ValueError(
                f"adaptor_name {adaptor_name!r} is not in ComfyUI/models/spire; put the adaptor file there"
            )
        return io.NodeOutput(load_spire_adaptor(path))


def _control_inputs() -> list:
    return [
        io.Float.Input(
            "strength",
            default=1.0,
            min=0.0,
            max=10.0,
            step=0.01,
            tooltip="s in f*(1+s*gamma)+s*beta. 0 gives the base model exactly; 1 as trained.",
        ),
        io.Float.Input(
            "start_percent",
            default=0.0,
            min=0.0,
            max=1.0,
            step=0.001,
            tooltip="Fraction of sampling (by sigma) at which the adaptor starts acting.",
        ),
        io.Float.Input(
            "end_percent",
            default=1.0,
            min=0.0,
            max=1.0,
            step=0.001,
            tooltip="Fraction of sampling (by sigma) after which the adaptor stops acting.",
        ),
    ]


class ApplyAdaptor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPIRE_ApplyAdaptor",
            display_name="Apply Adaptor (SPIRE)",
            category="SPIRE/adaptor",
            description=(
                "Attach a SPIRE adaptor to positive and negative conditioning: it reads the degraded image and the "
                "restoration prompt and modulates the model's skip features, f*(1+s*gamma)+s*beta. The restoration "
                "prompt is encoded with a clone of the checkpoint's CLIP at the layer the adaptor was trained with. "
                "Chains after controls already on the conditioning; the inputs are not modified."
            ),
            inputs=[
                io.Conditioning.Input("positive", tooltip="Semantic-prompt conditioning (what the image shows)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.ControlNet.Input("control_net", tooltip="A SPIRE adaptor from 'Load Adaptor (SPIRE)'."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP; a clone encodes the restoration prompt."),
                io.Image.Input("image", tooltip="The degraded image (the hint); resized to the output size if needed."),
                io.String.Input("restoration_prompt", default=BLIND_PROMPT, multiline=True, tooltip=PROMPT_TOOLTIP),
                *_control_inputs(),
            ],
            outputs=[
                io.Conditioning.Output("positive_out", display_name="positive"),
                io.Conditioning.Output("negative_out", display_name="negative"),
            ],
        )

    @classmethod
    def execute(
        cls, positive, negative, control_net, clip, image, restoration_prompt, strength, start_percent, end_percent
    ) -> io.NodeOutput:
        require_finite(strength=strength, start_percent=start_percent, end_percent=end_percent)
        if not isinstance(control_net, SpireControl):
            raise ValueError(
                f"control_net is a {type(control_net).__name__}, not a SPIRE adaptor: load it with 'Load SPIRE "
                "Adaptor' (plain ControlNets go through core 'Apply ControlNet')"
            )
        if image.shape[0] == 0:
            raise ValueError("image is an empty batch; connect the degraded image")
        if start_percent > end_percent:
            raise ValueError(f"start_percent ({start_percent}) is after end_percent ({end_percent})")
        prompts = restoration_batch(restoration_prompt, image.shape[0])
        embedding, pooled = encode_restoration(clip, prompts.texts, control_net.info.get("text_encoder_layer"))
        control = control_net.copy().set_cond_hint(image.movedim(-1, 1), strength, (start_percent, end_percent))
        control.set_restoration(embedding, pooled, prompts.features())
        cache: dict = {}
        return io.NodeOutput(attach(positive, control, embedding, cache), attach(negative, control, embedding, cache))


class EncodeRestorationPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPIRE_EncodeRestorationPrompt",
            display_name="Encode Restoration Prompt (SPIRE)",
            category="SPIRE/adaptor",
            description=(
                "Validate and canonicalise a restoration prompt, encode it with the CLIP and put it on the "
                "conditioning as the ControlNet cross-attention input (cross_attn_controlnet), for graphs that "
                "attach the SPIRE adaptor with core 'Apply ControlNet'. Text the grammar rejects stops with the "
                "parser's message. Only the CLIP embedding travels this way: an adaptor with a numeric channel "
                "then cannot read the prompt's numbers (use 'Apply Adaptor (SPIRE)' for that), and an SDXL "
                "adaptor, which also reads the prompt's pooled embedding, cannot be used this way at all."
            ),
            inputs=[
                io.Clip.Input(
                    "clip", tooltip="The checkpoint's CLIP (used as is, like core CLIPTextEncodeControlnet)."
                ),
                io.Conditioning.Input("conditioning", tooltip="Conditioning to carry the restoration prompt."),
                io.String.Input("restoration_prompt", default=BLIND_PROMPT, multiline=True, tooltip=PROMPT_TOOLTIP),
            ],
            outputs=[
                io.Conditioning.Output("conditioning_out", display_name="conditioning"),
                io.String.Output(
                    "canonical_prompt",
                    display_name="canonical_prompt",
                    tooltip="The prompt(s) as encoded, one per line.",
                ),
            ],
        )

    @classmethod
    def execute(cls, clip, conditioning, restoration_prompt) -> io.NodeOutput:
        prompts = restoration_batch(restoration_prompt).texts
        embedding, _ = encode_restoration(clip, prompts, None)  # core Apply ControlNet has no pooled input
        out = []
        for emb, options in conditioning:
            options = options.copy()
            options["cross_attn_controlnet"] = embedding
            out.append([emb, options])
        return io.NodeOutput(out, "\n".join(prompts))


NODES = [AdaptorLoader, ApplyAdaptor, EncodeRestorationPrompt]
