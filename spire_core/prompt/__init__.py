"""Restoration-prompt grammar: ``render`` requests to canonical text and ``parse`` text back.

Canonical wording (design.md section 4.2): ``Upsample by {f:.1f}x``, ``Deblur with sigma {s:.1f}``,
``Denoise with sigma {n:.2f}``, ``Dejpeg with quality {q:d}``, joined by ``"; "`` in that order;
blind: ``"Remove all degradation"``. The grammar itself is data in ``grammar.py``; ``restoration_features`` turns
prompts into the fixed numeric features an adaptor's numeric side channel reads (``numeric.py``);
``restoration_batch`` parses the prompts of an image batch once (``batch.py``).
"""

from .batch import PromptBatch, restoration_batch
from .grammar import BLIND_PROMPT, CLAUSES, GRAMMAR_VERSION, accepted_forms
from .numeric import NUMERIC_FEATURES, NUMERIC_FEATURES_VERSION, parse_or_none, restoration_features
from .request_text import (
    BLIND_REQUEST,
    RestorationPromptError,
    RestorationRequest,
    canonicalize,
    parse,
    quantize,
    render,
)

__all__ = [
    "BLIND_PROMPT",
    "BLIND_REQUEST",
    "CLAUSES",
    "GRAMMAR_VERSION",
    "NUMERIC_FEATURES",
    "NUMERIC_FEATURES_VERSION",
    "PromptBatch",
    "RestorationPromptError",
    "RestorationRequest",
    "accepted_forms",
    "canonicalize",
    "parse",
    "parse_or_none",
    "quantize",
    "render",
    "restoration_batch",
    "restoration_features",
]
