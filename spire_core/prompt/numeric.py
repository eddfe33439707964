"""The numeric side channel's input: a restoration prompt's numbers as a fixed feature vector.

CLIP splits "0.08" into the tokens ``0 . 0 8`` and reads magnitudes poorly, so an adaptor with a numeric channel
also gets the parsed request: ``restoration_features`` turns each prompt into ``NUMERIC_FEATURES`` numbers that a
small MLP in the adaptor (``spire_core.models.numeric``) maps to a few extra cross-attention tokens. The features
are fixed (no weights), the same for training, the diffusers pipeline and the ComfyUI nodes.

Per clause (upsample, deblur, denoise, dejpeg, in canonical order), ``2 + 2 * FOURIER_FREQUENCIES`` values:

- a present flag (1 when the clause is named, else 0);
- the value on a sensible scale ``v`` (``CLAUSE_SCALES``: about [0, 1] over the range training draws);
- ``sin(2^k pi v)`` and ``cos(2^k pi v)`` for k = 0 .. FOURIER_FREQUENCIES - 1 (fixed Fourier features).

A clause that is not named has all its values 0. Then three flags: blind ("Remove all degradation"), unparsed
(text that is not in the grammar: the adaptor relies on CLIP alone, never an error) and numbers (at least one
clause named). Changing any of this changes what trained adaptors read: bump ``NUMERIC_FEATURES_VERSION``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .grammar import CLAUSES
from .request_text import RestorationPromptError, RestorationRequest, parse

if TYPE_CHECKING:
    import torch

NUMERIC_FEATURES_VERSION = 1
"""Version of the feature layout below; stored in adaptor metadata as ``spire.numeric_features_version``."""

FOURIER_FREQUENCIES = 4
"""Sine/cosine pairs per clause value (frequencies pi, 2 pi, 4 pi, 8 pi on the scaled value)."""

CLAUSE_SCALES = {
    "upsample": lambda f: math.log2(f) / 4.0,  # 16x -> 1
    "deblur": lambda s: s / 8.0,  # 8 px -> 1 (the paper preset draws up to 6 px)
    "denoise": lambda s: s / 0.3,  # 0.3 -> 1 (the paper preset draws up to 0.25)
    "dejpeg": lambda q: (100.0 - q) / 100.0,  # quality 100 -> 0, quality 1 -> 0.99
}
"""Clause value -> the scaled value ``v`` the features carry."""

PER_CLAUSE = 2 + 2 * FOURIER_FREQUENCIES
FLAGS = ("blind", "unparsed", "numbers")
NUMERIC_FEATURES = len(CLAUSES) * PER_CLAUSE + len(FLAGS)
"""Length of one prompt's feature vector (43)."""


def request_features(request: RestorationRequest | None) -> list[float]:
    """The feature vector of a parsed request (``None``: unparsed text)."""
    out: list[float] = []
    for clause in CLAUSES:
        value = None if request is None else getattr(request, clause.key)
        if value is None:
            out += [0.0] * PER_CLAUSE
            continue
        v = CLAUSE_SCALES[clause.key](float(value))
        out += [1.0, v]
        for k in range(FOURIER_FREQUENCIES):
            angle = (2**k) * math.pi * v
            out += [math.sin(angle), math.cos(angle)]
    blind = request is not None and request.blind
    named = request is not None and bool(request.named())
    out += [float(blind), float(request is None), float(named)]
    return out


def parse_or_none(text: str) -> RestorationRequest | None:
    """The parsed request, or ``None`` when the text is not in the grammar (free text)."""
    try:
        return parse(text)
    except RestorationPromptError:
        return None


def restoration_features(prompts: Sequence[str | RestorationRequest | None]) -> torch.Tensor:
    """(N, NUMERIC_FEATURES) float32 features of N restoration prompts (texts, parsed requests or ``None``).

    Text is parsed with the grammar; text the grammar rejects is not an error here: its features say "unparsed"
    and carry no numbers (the adaptor then reads the prompt through CLIP alone).
    """
    rows = []
    for prompt in prompts:
        request = parse_or_none(prompt) if isinstance(prompt, str) else prompt
        if request is not None and not isinstance(request, RestorationRequest):
            raise TypeError(f"restoration_features takes prompt texts or RestorationRequests, got {type(prompt)}")
        rows.append(request_features(request))
    import torch  # here, so that the grammar and its constants import without torch

    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), NUMERIC_FEATURES)


__all__ = [
    "CLAUSE_SCALES",
    "FOURIER_FREQUENCIES",
    "NUMERIC_FEATURES",
    "NUMERIC_FEATURES_VERSION",
    "parse_or_none",
    "request_features",
    "restoration_features",
]
