"""The restoration prompts of an image batch, parsed once: what the ComfyUI nodes and ``SpirePipeline`` read from
their restoration-prompt input (one prompt for the whole batch, or one per image)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .grammar import BLIND_PROMPT
from .request_text import RestorationPromptError, RestorationRequest, parse, quantize, render

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PromptBatch:
    """Canonical texts and their parsed requests (quantised to the canonical precision), one per prompt given:
    1 for the whole batch or one per image."""

    texts: tuple[str, ...]
    requests: tuple[RestorationRequest, ...]

    def features(self) -> torch.Tensor:
        """(N, NUMERIC_FEATURES) numeric features of the requests (no second parse)."""
        from .numeric import restoration_features

        return restoration_features(self.requests)

    def upsample_factors(self) -> set[float]:
        """The distinct "Upsample by Nx" factors asked for (1.0 where none is)."""
        return {request.upsample or 1.0 for request in self.requests}


def restoration_batch(prompts: str | Sequence[str], batch: int | None = None) -> PromptBatch:
    """Parse the restoration prompts of a batch once.

    Args:
        prompts: a text (each non-empty line is one prompt, as in the ComfyUI nodes) or a sequence of prompts.
        batch: number of images (None: any count).

    Raises:
        ValueError: no prompt, a prompt the grammar rejects (naming its line or position, with the parser's
            message), or a count that is neither 1 nor ``batch``.
    """
    text = isinstance(prompts, str)
    lines = [line.strip() for line in prompts.splitlines()] if text else [str(p).strip() for p in prompts]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"restoration_prompt is empty; write what to restore, or '{BLIND_PROMPT}'")
    requests = []
    for number, line in enumerate(lines, 1):
        try:
            requests.append(quantize(parse(line)))
        except RestorationPromptError as error:
            where = "restoration_prompt"
            if len(lines) > 1:
                where = f"restoration_prompt line {number}" if text else f"restoration prompt {number}"
            raise ValueError(f"{where} ({line!r}): {error}") from None
    if batch is not None and len(requests) not in (1, batch):
        given = f"has {len(requests)} lines" if text else f"holds {len(requests)} prompts"
        raise ValueError(
            f"restoration_prompt {given} but the image batch has {batch} images: give one for the whole batch or "
            "one per image (join clauses of one prompt with ';', not new lines)"
        )
    return PromptBatch(texts=tuple(render(r) for r in requests), requests=tuple(requests))


__all__ = ["PromptBatch", "restoration_batch"]
