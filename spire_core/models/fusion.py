"""Apply a ``SpireControlOutput`` to a diffusers ``UNet2DConditionModel`` without copying its forward.

Modulation (SPIRE) uses hooks, removed on exit even on error:

- a forward pre-hook (``with_kwargs=True``) on each ``unet.up_blocks[i]`` replaces its
  ``res_hidden_states_tuple`` keyword with ``f_j * (1 + s*gamma_j) + s*beta_j`` for the skips j it receives;
- a forward hook on ``unet.mid_block`` turns its output h into ``h * (1 + s*gamma_mid) + s*beta_mid``.

Which skips an up block receives (diffusers ``UNet2DConditionModel.forward``): the encoder collects
``down_block_res_samples`` = (conv_in output, then each down block's ``res_samples`` in order); up block i
takes the last ``len(up_blocks[i].resnets)`` of what is left and the list is shortened by that many. So
the deepest up block receives the deepest skips, in ascending index order inside the tuple. A test pins
this against a real UNet. Additive fusion goes through diffusers' own ``down_block_additional_residuals``
and ``mid_block_additional_residual`` (which add the mid residual after the middle block, exactly where
the modulation hook acts).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .adaptor import SpireAdaptor, SpireControlOutput
from .modulation import modulate


def skip_indices(unet: nn.Module) -> list[list[int]]:
    """For each ``unet.up_blocks[i]``, the indices j (into ``down_block_res_samples``) of the skips it
    receives, in the order of its ``res_hidden_states_tuple``.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.

    Returns:
        One ascending list per up block, e.g. ``[[9, 10, 11], [6, 7, 8], [3, 4, 5], [0, 1, 2]]`` for SD1/SD2.
    """
    counts = [len(block.resnets) for block in unet.up_blocks]
    end = sum(counts)
    result = []
    for count in counts:
        result.append(list(range(end - count, end)))
        end -= count
    if end != 0:  # pragma: no cover - a UNet always consumes exactly what its encoder produced
        raise RuntimeError(f"up blocks consume {sum(counts)} skips but the indices do not start at 0 ({end})")
    return result


def num_unet_skips(unet: nn.Module) -> int:
    """Number of skip features the UNet's decoder consumes (12 for SD1/SD2)."""
    return sum(len(block.resnets) for block in unet.up_blocks)


def _check_shape(name: str, control: torch.Tensor, feature: torch.Tensor) -> None:
    if control.shape[1:] != feature.shape[1:] or control.shape[0] not in (1, feature.shape[0]):
        raise ValueError(
            f"{name} has shape {tuple(control.shape)} but the UNet feature it modulates has shape "
            f"{tuple(feature.shape)}: the adaptor was built for a different base model, or its sample/hint "
            "were not the ones given to the UNet"
        )


@contextmanager
def apply_to_unet(
    unet: nn.Module, control: SpireControlOutput, strength: float | torch.Tensor = 1.0
) -> Iterator[nn.Module]:
    """Context manager: while active, every call of ``unet`` has its skips and middle-block output modulated.

    Args:
        unet: a diffusers ``UNet2DConditionModel``; not modified beyond temporary hooks.
        control: a modulation ``SpireControlOutput`` computed for the same sample/timestep batch.
        strength: s in ``f * (1 + s*gamma) + s*beta``; 0 gives the base UNet exactly.

    Yields:
        ``unet``. Each UNet call inside the block raises ``RuntimeError`` if the hooks did not all fire
        (a diffusers change would otherwise silently leave the output unmodulated).

    Raises:
        ValueError: for additive control (pass ``additive_unet_kwargs(control)`` to the UNet instead) or a
            skip count that does not match the UNet.
    """
    if control.fusion != "modulation":
        raise ValueError(
            "apply_to_unet takes modulation control; additive (plain ControlNet) control is passed to the UNet "
            "as keyword arguments: unet(..., **additive_unet_kwargs(control, strength)), or use predict_noise"
        )
    mapping = skip_indices(unet)
    if control.num_skips != num_unet_skips(unet) or unet.mid_block is None:
        raise ValueError(
            f"the adaptor produced {control.num_skips} skip modulations but this UNet has "
            f"{num_unet_skips(unet)} skips: the adaptor does not fit this base model"
        )
    fired: set[str] = set()
    expected = {f"up{i}" for i in range(len(mapping))} | {"mid"}

    def up_hook(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
            skips = kwargs.get("res_hidden_states_tuple")
            if skips is None or len(skips) != len(mapping[index]):
                raise RuntimeError(
                    f"up block {index} was not called with keyword res_hidden_states_tuple holding "
                    f"{len(mapping[index])} skips; this diffusers version passes skips differently and SPIRE's "
                    "modulation cannot be applied"
                )
            modulated = []
            for feature, j in zip(skips, mapping[index]):
                gamma, beta = control.gamma_down[j], control.beta_down[j]
                _check_shape(f"gamma for skip {j}", gamma, feature)
                modulated.append(modulate(feature, gamma, beta, strength))
            fired.add(f"up{index}")
            return args, {**kwargs, "res_hidden_states_tuple": tuple(modulated)}

        return hook

    def mid_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        _check_shape("gamma for the middle block", control.gamma_mid, output)
        fired.add("mid")
        return modulate(output, control.gamma_mid, control.beta_mid, strength)

    def unet_pre_hook(module: nn.Module, args: tuple) -> None:
        fired.clear()

    def unet_post_hook(module: nn.Module, args: tuple, output: Any) -> None:
        missing = expected - fired
        if missing:
            raise RuntimeError(
                f"SPIRE modulation hooks {sorted(missing)} did not run during the UNet call; the UNet output is "
                "unmodulated. This diffusers version calls its blocks differently than SPIRE expects."
            )

    handles = [block.register_forward_pre_hook(up_hook(i), with_kwargs=True) for i, block in enumerate(unet.up_blocks)]
    try:
        handles.append(unet.mid_block.register_forward_hook(mid_hook))
        handles.append(unet.register_forward_pre_hook(unet_pre_hook))
        handles.append(unet.register_forward_hook(unet_post_hook))
        yield unet
    finally:
        for handle in handles:
            handle.remove()


def additive_unet_kwargs(control: SpireControlOutput, strength: float | torch.Tensor = 1.0) -> dict[str, Any]:
    """UNet keyword arguments for additive (plain ControlNet) control; ``{}`` for modulation control.

    Returns:
        ``{"down_block_additional_residuals": [s*r_j ...], "mid_block_additional_residual": s*r_mid}``.
    """
    if control.fusion != "additive":
        return {}
    return {
        "down_block_additional_residuals": [strength * r for r in control.down_residuals],
        "mid_block_additional_residual": strength * control.mid_residual,
    }


def predict_noise(
    unet: nn.Module,
    adaptor: SpireAdaptor,
    sample: torch.Tensor,
    timestep: torch.Tensor | float | int,
    semantic_embedding: torch.Tensor,
    restoration_embedding: torch.Tensor,
    hint: torch.Tensor,
    strength: float | torch.Tensor = 1.0,
    unet_kwargs: dict[str, Any] | None = None,
    restoration_features: torch.Tensor | None = None,
    restoration_added_cond: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The controlled UNet's prediction for either fusion; differentiable (used for training).

    Args:
        unet: the frozen diffusers ``UNet2DConditionModel``.
        adaptor: the ``SpireAdaptor``.
        sample: (B, 4, h, w) noisy latent (scaled as the UNet expects).
        timestep: UNet timestep units, scalar or (B,).
        semantic_embedding: (B, T, D) CLIP hidden states of the semantic prompt c_s (to the UNet).
        restoration_embedding: (B or 1, T, D) CLIP hidden states of the restoration prompt c_r (to the adaptor).
        hint: (B or 1, 3, 8h, 8w) degraded image in [0, 1].
        strength: control strength s.
        unet_kwargs: extra keyword arguments for the UNet call (e.g. ``cross_attention_kwargs``; for SDXL bases
            ``added_cond_kwargs`` with the *semantic* prompt's pooled embedding and the size/crop ids).
        restoration_features: (B or 1, F) ``spire_core.prompt.restoration_features`` of the restoration prompts,
            for an adaptor with a numeric channel (``None``: unknown numbers, read as unparsed text).
        restoration_added_cond: SDXL-family adaptors only: ``{"text_embeds", "time_ids"}`` with the *restoration*
            prompt's pooled embedding (``SpireAdaptor.forward``).

    Returns:
        (B, 4, h, w) UNet output (epsilon or v, as the base predicts), in the UNet's dtype.
    """
    dtype = adaptor.controlnet.dtype
    added = None
    if restoration_added_cond is not None:
        added = {key: value.to(dtype) for key, value in restoration_added_cond.items()}
    control = adaptor(
        sample.to(dtype), timestep, restoration_embedding.to(dtype), hint.to(dtype), restoration_features, added
    )
    kwargs = dict(unet_kwargs or {})
    if control.fusion == "additive":
        kwargs.update(additive_unet_kwargs(control, strength))
        return unet(sample, timestep, encoder_hidden_states=semantic_embedding, **kwargs).sample
    with apply_to_unet(unet, control, strength):
        return unet(sample, timestep, encoder_hidden_states=semantic_embedding, **kwargs).sample
