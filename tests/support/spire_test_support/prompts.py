"""Semantic prompts in ComfyUI's prompt language for the tests that prove ``spire_core.models.prompt_windows``
reads them as ComfyUI does: emphasis, escapes, brackets that do not pair up, and prompts over one 77-token
window (with short weighted groups at a window's edge, which move whole to the next window)."""

from __future__ import annotations

import random

WEIGHTED_PROMPT = "an (astronaut:1.4) in a ((white suit)) on (grass:0.6), \\(not weighted\\)"
"""Emphasis, nested emphasis, a weight below 1 and escaped brackets, in one window."""

LONG_PROMPT = ", ".join(["a photo of an astronaut in a white suit"] * 15) + " (riding a brown horse:1.3)," * 3
"""Three windows: 149 plain tokens (split at the first window's edge), then short weighted groups; the first group
that does not fit in the second window moves whole into the third."""

PROMPT_TEXTS = (
    "",
    "an astronaut",
    WEIGHTED_PROMPT,
    LONG_PROMPT,
    "a (cat:bad) on a mat",  # a weight that does not parse: 1.1 and the colon text stay
    "a) ((b)) (c",  # a closing bracket first, an opening one never closed
    " ".join(["supercalifragilisticexpialidocious"] * 12),  # long words split at the window's edge
)

_PIECES = (
    "a", "photo", "of", "an", "astronaut", "riding", "horse", "(", ")", ":", "1.3", "0.7", "\\(", "\\)", ",",
    "supercalifragilisticexpialidocious", "ab:c", " ", "x1.2", "((", "))",
)  # fmt: skip


def fuzz_prompts(count: int, seed: int = 0) -> list[str]:
    """``count`` random prompts of 0 to 120 pieces (words, brackets, colons, weights, escapes); about two in
    three need more than one window."""
    rng = random.Random(seed)
    return [
        "".join(rng.choice(_PIECES) + rng.choice(("", " ")) for _ in range(rng.randint(0, 120))) for _ in range(count)
    ]
