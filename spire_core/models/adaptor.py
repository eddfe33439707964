"""``SpireAdaptor``: a ControlNet-like trunk whose features modulate the frozen UNet's skip features.

The trunk is a diffusers ``ControlNetModel`` (copy of the base UNet's encoder and middle block, the
pixel-space hint encoder for the degraded image y, cross-attention fed with the restoration prompt).
With ``fusion="modulation"`` (SPIRE) the trunk's own zero convolutions are replaced by identities so
``ControlNetModel.forward`` returns the raw trunk features f_con; zero-initialised 1x1 heads turn them
into gamma_j and beta_j for each encoder skip j and for the middle block, which then act on the frozen
UNet as ``f_j <- f_j * (1 + s*gamma_j) + s*beta_j`` (see ``fusion.py``). A fresh adaptor is an exact
identity. With ``fusion="additive"`` the standard ControlNet zero convolutions stay and their outputs
are residuals added to the skips (plain ControlNet, for ablations).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import ControlNetModel
from torch import nn

from ..prompt import GRAMMAR_VERSION
from .config import (
    DEFAULT_HINT_CHANNELS,
    HEAD_NAMES,
    HEAD_PREFIX,
    NUMERIC_NAME,
    NUMERIC_TOKENS_DEFAULT,
    AdaptorConfig,
    check_unet_supported,
    infer_base_family,
    narrow_controlnet_config,
)
from .file_layout import head_channels
from .numeric import NumericTokens, numeric_context


@dataclass
class SpireControlOutput:
    """What the adaptor computed for one UNet call.

    Attributes:
        fusion: ``"modulation"`` or ``"additive"``: which fields are set.
        gamma_down, beta_down: modulation only; one (B, C_j, H_j, W_j) tensor per encoder skip j, in the
            order diffusers collects ``down_block_res_samples`` (conv_in first).
        gamma_mid, beta_mid: modulation only; (B, C_mid, H_mid, W_mid) for the middle-block output.
        down_residuals, mid_residual: additive only; ControlNet residuals in the same order/shapes.
    """

    fusion: str
    gamma_down: list[torch.Tensor] | None = None
    beta_down: list[torch.Tensor] | None = None
    gamma_mid: torch.Tensor | None = None
    beta_mid: torch.Tensor | None = None
    down_residuals: list[torch.Tensor] | None = None
    mid_residual: torch.Tensor | None = None

    @property
    def num_skips(self) -> int:
        """Number of encoder skips this output acts on."""
        return len(self.gamma_down if self.fusion == "modulation" else self.down_residuals)


def _zero_conv(channels: int, out_channels: int | None = None, operations: Any = nn) -> nn.Conv2d:
    """A zero-initialised 1x1 convolution (a modulation head), ``channels`` -> ``out_channels`` (default the same).
    ``operations`` supplies the layer classes: ``torch.nn`` here, or ComfyUI's ``comfy.ops`` variants where ComfyUI
    manages weights and dtypes."""
    conv = operations.Conv2d(channels, out_channels or channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _as_batch(tensor: torch.Tensor, batch: int, name: str, shape_doc: str) -> torch.Tensor:
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    raise ValueError(f"{name} has batch {tensor.shape[0]} but sample has batch {batch}; expected {shape_doc}")


def _added_cond(
    added_cond: Mapping[str, torch.Tensor] | None, batch: int, controlnet_config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Check SDXL's added conditioning against the trunk and broadcast batch 1 (see ``SpireAdaptor.forward``)."""
    if added_cond is None or set(added_cond) != {"text_embeds", "time_ids"}:
        got = "nothing" if added_cond is None else sorted(added_cond)
        raise ValueError(
            "this SDXL-family adaptor needs added_cond={'text_embeds': pooled embedding of the restoration prompt "
            f"(B, P), 'time_ids': size/crop ids (B, 6)}}; got {got}"
        )
    time_ids = _as_batch(added_cond["time_ids"], batch, "added_cond['time_ids']", "(B, 6)")
    text_embeds = _as_batch(added_cond["text_embeds"], batch, "added_cond['text_embeds']", "(B, P)")
    width = (
        controlnet_config["projection_class_embeddings_input_dim"] - 6 * controlnet_config["addition_time_embed_dim"]
    )
    if time_ids.dim() != 2 or time_ids.shape[1] != 6 or text_embeds.dim() != 2 or text_embeds.shape[1] != width:
        raise ValueError(
            f"added_cond has text_embeds {tuple(text_embeds.shape)} and time_ids {tuple(time_ids.shape)}; this adaptor "
            f"expects (B, {width}) and (B, 6)"
        )
    return {"text_embeds": text_embeds, "time_ids": time_ids}


def _sliced(full: nn.Module, narrow: nn.Module) -> nn.Module:
    """``narrow`` with every tensor set to the leading block of ``full``'s tensor of the same name."""
    source = full.state_dict()
    with torch.no_grad():
        for name, tensor in narrow.state_dict().items():
            tensor.copy_(source[name][tuple(slice(0, n) for n in tensor.shape)])
    return narrow.float().cpu()


class SpireAdaptor(nn.Module):
    """The trainable SPIRE adaptor (trunk + modulation heads).

    Attributes:
        config: the ``AdaptorConfig`` it was built from.
        controlnet: the diffusers ``ControlNetModel`` trunk. In modulation fusion its
            ``controlnet_down_blocks`` and ``controlnet_mid_block`` are ``nn.Identity`` (no weights).
        gamma_down, beta_down: modulation only; ``nn.ModuleList`` of zero-initialised 1x1 convs, C_j -> C_j,
            one per encoder skip.
        gamma_mid, beta_mid: modulation only; zero-initialised 1x1 convs on the middle-block features.
        numeric: the numeric side channel (``NumericTokens``, zero output at init), or ``None``.
    """

    def __init__(self, config: AdaptorConfig, controlnet: ControlNetModel | None = None) -> None:
        """Build an adaptor from ``config``: a random trunk (or ``controlnet``, a ``ControlNetModel`` built
        from ``config.controlnet_config`` with its zero convs still in place) and zero heads. See
        ``from_unet`` for a trunk copied from a base UNet and ``checkpoint.load_adaptor`` for trained weights."""
        super().__init__()
        self.config = config
        self.controlnet = ControlNetModel.from_config(config.controlnet_config) if controlnet is None else controlnet
        self.numeric = None
        if config.numeric_tokens:
            self.numeric = NumericTokens(config.numeric_tokens, config.controlnet_config["cross_attention_dim"])
        self._setup_fusion()

    def _setup_fusion(self) -> None:
        if self.config.fusion != "modulation":
            return
        *skips, middle = head_channels(self.config)  # (trunk, base) channels: equal unless the trunk is narrower
        # Identity "zero convs" make ControlNetModel.forward return the raw trunk features f_con.
        self.controlnet.controlnet_down_blocks = nn.ModuleList(nn.Identity() for _ in skips)
        self.controlnet.controlnet_mid_block = nn.Identity()
        self.gamma_down = nn.ModuleList(_zero_conv(*pair) for pair in skips)
        self.beta_down = nn.ModuleList(_zero_conv(*pair) for pair in skips)
        self.gamma_mid = _zero_conv(*middle)
        self.beta_mid = _zero_conv(*middle)

    @classmethod
    def from_unet(
        cls,
        unet: nn.Module,
        fusion: str = "modulation",
        base_family: str | None = None,
        prediction_type: str = "epsilon",
        text_encoder_layer: str | None = None,
        prompt_grammar_version: int = GRAMMAR_VERSION,
        hint_channels: int = DEFAULT_HINT_CHANNELS,
        numeric_tokens: int = NUMERIC_TOKENS_DEFAULT,
        trunk: str | int = "full",
    ) -> SpireAdaptor:
        """A fresh adaptor whose trunk copies ``unet``'s weights (``ControlNetModel.from_unet``); zero heads.

        A narrower ``trunk`` (``"half"``, ``"quarter"`` or a first-level width, ``config.trunk_channels``; modulation
        fusion) is initialised channel-sliced from that copy: every tensor keeps the leading entries of each of its
        dimensions (the first channels of each layer, all of the text and added-conditioning inputs): a subset of the
        base's weights rather than random ones. It does not compute the base's features restricted to its width
        (GroupNorm groups fewer channels together, the heads split differently, the dropped input channels change
        every convolution); it is a starting point that training adapts.

        Args:
            unet: a diffusers ``UNet2DConditionModel`` (SD1.x/SD2.x/SDXL style); it is not modified.
            fusion: ``"modulation"`` (SPIRE) or ``"additive"`` (plain ControlNet).
            base_family: ``"sd1"``, ``"sd2"``, ``"sdxl"`` or ``"custom"``; ``None`` infers it from the UNet config.
            prediction_type: what ``unet`` predicts (``"epsilon"`` or ``"v_prediction"``).
            text_encoder_layer: CLIP layer for the restoration prompt; ``None``: the family default.
            prompt_grammar_version: restoration-prompt grammar version the adaptor will be trained with.
            hint_channels: channels of the hint image.
            numeric_tokens: tokens of the numeric side channel (0: none; the prompt is read through CLIP alone).
            trunk: ``"full"`` (the paper's copy of the encoder), ``"half"``, ``"quarter"`` or a width.

        Returns:
            The adaptor in float32 on the CPU (move it with ``.to``); an exact identity on the UNet.
        """
        check_unet_supported(unet.config)
        controlnet = ControlNetModel.from_unet(unet, conditioning_channels=hint_channels).float().cpu()
        base_channels = None
        if trunk != "full":
            full = {k: v for k, v in dict(controlnet.config).items() if not k.startswith("_")}
            narrow = narrow_controlnet_config(full, trunk)
            if narrow["block_out_channels"] != full["block_out_channels"]:
                if fusion != "modulation":
                    raise ValueError(
                        "a narrower trunk needs modulation fusion (plain ControlNet residuals are full width)"
                    )
                base_channels = full["block_out_channels"]
                controlnet = _sliced(controlnet, ControlNetModel.from_config(narrow))
        config = AdaptorConfig(
            controlnet_config=dict(controlnet.config),  # private "_..." keys are dropped by AdaptorConfig
            fusion=fusion,
            base_family=base_family or infer_base_family(unet.config),
            prediction_type=prediction_type,
            text_encoder_layer=text_encoder_layer,
            prompt_grammar_version=prompt_grammar_version,
            hint_channels=hint_channels,
            numeric_tokens=numeric_tokens,
            base_block_out_channels=base_channels,
        )
        return cls(config, controlnet)

    @property
    def fusion(self) -> str:
        """``"modulation"`` or ``"additive"``."""
        return self.config.fusion

    @property
    def num_skips(self) -> int:
        """Number of encoder skips the adaptor acts on (12 for SD1/SD2)."""
        return len(self.controlnet.controlnet_down_blocks)

    @property
    def hint_downscale(self) -> int:
        """How much smaller the latent is than the hint: 2 ** (number of hint-encoder stages - 1) (8)."""
        return 2 ** (len(self.controlnet.config.conditioning_embedding_out_channels) - 1)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the modulation heads (none in additive fusion)."""
        for name in HEAD_NAMES:
            module = getattr(self, name, None)
            if module is not None:
                yield from module.parameters()

    def numeric_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the numeric side channel (none without one)."""
        if self.numeric is not None:
            yield from self.numeric.parameters()

    def trunk_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the ControlNet trunk (in additive fusion, including its zero convs)."""
        return self.controlnet.parameters()

    def file_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict with on-disk key names: trunk keys as ``ControlNetModel.state_dict()`` (no prefix),
        head and numeric-channel keys prefixed ``spire_`` (``spire_gamma_down.0.weight``,
        ``spire_numeric.fc1.weight``)."""
        state = {key: value for key, value in self.controlnet.state_dict().items()}
        for name in (*HEAD_NAMES, NUMERIC_NAME):
            module = getattr(self, name, None)
            if module is not None:
                state.update({f"{HEAD_PREFIX}{name}.{k}": v for k, v in module.state_dict().items()})
        return state

    def load_file_state_dict(self, state: dict[str, torch.Tensor], assign: bool = False) -> None:
        """Load a state dict with on-disk key names (see ``file_state_dict``); strict on keys and shapes."""
        module_state = {
            (key[len(HEAD_PREFIX) :] if key.startswith(HEAD_PREFIX) else f"controlnet.{key}"): value
            for key, value in state.items()
        }
        self.load_state_dict(module_state, strict=True, assign=assign)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        restoration_embedding: torch.Tensor,
        hint: torch.Tensor,
        restoration_features: torch.Tensor | None = None,
        added_cond: Mapping[str, torch.Tensor] | None = None,
    ) -> SpireControlOutput:
        """Run the trunk (and heads) for one UNet call.

        Args:
            sample: (B, C_in, h, w) noisy latent exactly as the UNet sees it (C_in = 4 for SD).
            timestep: UNet timestep units (0..999 for SD): a scalar or a (B,) tensor.
            restoration_embedding: (B, T, D) CLIP hidden states of the restoration prompt (T = 77, D = the
                base's cross-attention dim); batch 1 is broadcast.
            hint: (B, 3, 8h, 8w) degraded image, float in [0, 1], in the trunk's dtype; batch 1 is broadcast.
            restoration_features: (B or 1, F) ``spire_core.prompt.restoration_features`` of the restoration
                prompts, for the numeric channel (ignored without one); ``None`` reads as unparsed text.
            added_cond: SDXL-family trunks only (``config.added_conditioning``), required there:
                ``{"text_embeds": (B or 1, P), "time_ids": (B or 1, 6)}``, the pooled embedding of the
                *restoration* prompt (never the semantic one) and the same size/crop ids the UNet gets
                (``components.sdxl_time_ids``); batch 1 is broadcast.

        Returns:
            ``SpireControlOutput`` with per-skip gamma/beta (modulation) or residuals (additive), each with
            the shape of the corresponding UNet skip feature.
        """
        batch, _, height, width = sample.shape
        restoration_embedding = _as_batch(restoration_embedding, batch, "restoration_embedding", "(B, T, D)")
        restoration_embedding = numeric_context(self.numeric, restoration_embedding, restoration_features)
        hint = _as_batch(hint, batch, "hint", "(B, 3, 8h, 8w)")
        factor = self.hint_downscale
        if hint.dim() != 4 or tuple(hint.shape[2:]) != (height * factor, width * factor):
            raise ValueError(
                f"hint has shape {tuple(hint.shape)} but the latent is {height}x{width}; expected "
                f"(B, {self.config.hint_channels}, {height * factor}, {width * factor}): the degraded image at "
                f"the output resolution ({factor}x the latent size)"
            )
        extra = {}
        if self.config.added_conditioning:
            extra["added_cond_kwargs"] = _added_cond(added_cond, batch, self.config.controlnet_config)
        elif added_cond is not None:
            raise ValueError(
                f"added_cond was given, but this adaptor (base family {self.config.base_family!r}) takes no added "
                "conditioning; it is for SDXL-family adaptors"
            )
        down, mid = self.controlnet(
            sample,
            timestep,
            encoder_hidden_states=restoration_embedding,
            controlnet_cond=hint,
            return_dict=False,
            **extra,
        )
        if self.fusion == "additive":
            return SpireControlOutput(fusion="additive", down_residuals=list(down), mid_residual=mid)
        return SpireControlOutput(
            fusion="modulation",
            gamma_down=[head(f) for head, f in zip(self.gamma_down, down)],
            beta_down=[head(f) for head, f in zip(self.beta_down, down)],
            gamma_mid=self.gamma_mid(mid),
            beta_mid=self.beta_mid(mid),
        )
