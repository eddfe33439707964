"""Per-sample training pairs: degradation parameters, restoration prompt, target, and prompt dropout.

For each sample (drawn from its stream position, see ``seeds``):

- degradation parameters from the spec (``spire_core.degradation.sample_params``);
- with ``partial_prob`` a **partial** sample (paper #11): the restoration prompt names a random non-empty proper
  subset of the degradations present, each in full, and the target keeps the unnamed ones; needs at least two
  degradations present;
- else with ``graded_prob`` a **graded** sample: the prompt names a random non-empty subset of the degradations
  present, each at a level drawn level-balanced (a uniform fraction of the level present,
  ``spire_core.degradation.graded_request``), and the target keeps the residual of every named level and every
  unnamed degradation (``spire_core.degradation.degrade_graded``);
- otherwise a **full** sample: the prompt names everything present and the target is the clean crop; with
  ``blind_prob`` its prompt becomes ``"Remove all degradation"`` (paper #12). A sample whose degradations
  are all too weak to print gets the blind prompt too (its target is the clean crop);
- independently, with ``empty_semantic_prob`` the semantic prompt becomes ``""`` (paper #13).

``synthesize`` then degrades the whole batch on the images' device, full items in one batched call and partial
and graded items in another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..degradation import (
    DegradationParams,
    DegradationSpec,
    degrade,
    degrade_graded,
    effective_request,
    graded_request,
    restrict,
    sample_params,
)
from ..prompt import BLIND_PROMPT, RestorationRequest, quantize, render
from .config import PromptConfig
from .seeds import generator_for

KINDS = ("full", "partial", "graded", "blind")
"""What a sample's restoration prompt is: every degradation, a subset in full (the target keeps the rest), a subset
at drawn levels (the target keeps the residuals and the rest), or blind."""


@dataclass(frozen=True)
class SampleDraw:
    """The random choices for one sample.

    Attributes:
        params: its degradation.
        kind: one of ``KINDS``.
        named: clause keys the restoration prompt names.
        restoration_prompt: the text given to the adaptor.
        drop_semantic: replace the semantic prompt by ``""``.
        request: partial and graded samples: the levels named (what ``degrade_graded`` removes); else ``None``.
    """

    params: DegradationParams
    kind: str
    named: tuple[str, ...]
    restoration_prompt: str
    drop_semantic: bool
    request: RestorationRequest | None = None


@dataclass
class SynthBatch:
    """A degraded batch and what the model is asked to produce.

    Attributes:
        degraded: (B, 3, H, W) float32 in [0, 1]: the adaptor's hint y.
        target: (B, 3, H, W) float32 in [0, 1]: the clean crop, or for partial and graded samples the crop
            degraded by what the prompt leaves (unnamed degradations and residual levels).
        restoration_prompts: B restoration prompts.
        semantic_prompts: B semantic prompts (captions after dropout).
        kinds: B of ``KINDS``.
    """

    degraded: torch.Tensor
    target: torch.Tensor
    restoration_prompts: list[str]
    semantic_prompts: list[str]
    kinds: list[str]


def _subset(present: tuple[str, ...], generator: torch.Generator, proper: bool) -> tuple[str, ...]:
    """A uniform non-empty subset of ``present`` (a proper one when ``proper``): a bit mask."""
    top = 2 ** len(present) - (1 if proper else 0)
    mask = int(torch.randint(1, top, (), generator=generator))
    return tuple(key for bit, key in enumerate(present) if mask >> bit & 1)


def draw_sample(spec: DegradationSpec, prompts: PromptConfig, seed: int, position: int) -> SampleDraw:
    """The random choices for the sample at stream ``position`` (a pure function of its arguments)."""
    generator = generator_for(seed, "synth", position)
    params = sample_params(spec, generator, 1)[0]
    u_kind, u_blind, u_semantic = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
    request = effective_request(params)
    present = request.named()
    drop_semantic = u_semantic < prompts.empty_semantic_prob
    if u_kind < prompts.partial_prob and len(present) >= 2:
        named = _subset(present, generator, proper=True)
        chosen = restrict(quantize(request), named)
        return SampleDraw(params, "partial", named, render(chosen), drop_semantic, chosen)
    if u_kind < prompts.partial_prob + prompts.graded_prob and present:
        named = _subset(present, generator, proper=False)
        # fractions in (0, 1]: uniform fractions of each level present (level-balanced)
        fractions = (1.0 - torch.rand(len(named), generator=generator, dtype=torch.float64)).tolist()
        chosen = graded_request(params, dict(zip(named, fractions)))
        return SampleDraw(params, "graded", named, render(chosen), drop_semantic, chosen)
    if not present or u_blind < prompts.blind_prob:
        return SampleDraw(params, "blind", present, BLIND_PROMPT, drop_semantic)
    return SampleDraw(params, "full", present, render(request), drop_semantic)


def synthesize(clean: torch.Tensor, draws: Sequence[SampleDraw], captions: Sequence[str]) -> SynthBatch:
    """Degrade a batch according to its draws, on ``clean``'s device.

    Args:
        clean: (B, 3, H, W) float in [0, 1].
        draws: one ``SampleDraw`` per item.
        captions: one caption per item (before semantic dropout).

    Returns:
        The ``SynthBatch``; ``degraded`` and ``target`` have ``clean``'s shape, dtype and device.
    """
    if len(draws) != clean.shape[0] or len(captions) != clean.shape[0]:
        raise ValueError(f"synthesize: {len(draws)} draws and {len(captions)} captions for {clean.shape[0]} images")
    degraded = torch.empty_like(clean)
    target = clean.clone()
    full = [i for i, d in enumerate(draws) if d.request is None]
    named = [i for i, d in enumerate(draws) if d.request is not None]
    if full:
        degraded[full] = degrade(clean[full], [draws[i].params for i in full]).images
    if named:
        pair = degrade_graded(clean[named], [draws[i].params for i in named], [draws[i].request for i in named])
        degraded[named] = pair.degraded
        target[named] = pair.target
    return SynthBatch(
        degraded=degraded,
        target=target,
        restoration_prompts=[d.restoration_prompt for d in draws],
        semantic_prompts=["" if d.drop_semantic else c for d, c in zip(draws, captions)],
        kinds=[d.kind for d in draws],
    )
