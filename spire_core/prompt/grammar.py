"""The restoration-prompt grammar, as data.

Everything that decides how a restoration prompt reads lives here: the verbs, the canonical
templates, the accepted variants, the number formats, the valid ranges and the clause order. The
paper shows "Deblur with sigma 0.4; Denoise with sigma 0.08" and "Remove all degradation"; the
Upsample and Dejpeg wordings are the project's guesses (spire-paper.md section 10, #10) and can be
corrected here alone. Changing anything a trained adaptor could have learned (wording, formats,
ranges, order) must bump ``GRAMMAR_VERSION``: the version is written into adaptor metadata at
training time so a mismatch can be reported when an adaptor is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

GRAMMAR_VERSION = 1
"""Version of the grammar below; stored in adaptor metadata as ``spire.prompt_grammar_version``."""

BLIND_PROMPT = "Remove all degradation"
"""The blind restoration prompt: restore whatever degradation the image has."""

SEPARATOR = "; "
"""Canonical clause separator (paper figures)."""

ACCEPTED_SEPARATORS = (";", ",", "\n")
"""Separators ``parse`` accepts between clauses (any run of them, with any spacing)."""

NUMBER_PATTERN = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
"""A decimal number as written in a prompt: ``4``, ``4.0``, ``.5``; no exponent."""


@dataclass(frozen=True)
class Clause:
    """One restoration operation in the grammar.

    Attributes:
        key: field name in ``RestorationRequest`` ("upsample", "deblur", "denoise", "dejpeg").
        verb: canonical capitalised verb starting the clause.
        template: canonical wording; ``{value}`` is formatted with ``fmt``.
        fmt: format spec of the number (precision printed in the canonical prompt).
        integer: the number must be an integer (JPEG quality).
        minimum, maximum: valid range of the number, inclusive unless ``min_exclusive``.
        min_exclusive: the minimum itself is not valid (a sigma of 0 means "leave alone": omit it).
        patterns: accepted variants (regular expressions, matched case-insensitively against the
            whole clause with runs of spaces collapsed); each has one ``{num}`` slot.
        meaning: one line for error messages and tooltips, with units.
    """

    key: str
    verb: str
    template: str
    fmt: str
    integer: bool
    minimum: float
    maximum: float
    min_exclusive: bool
    patterns: tuple[str, ...]
    meaning: str

    def canonical(self, value: float) -> str:
        """The canonical clause for ``value`` (no range check; see ``render``)."""
        return self.template.format(value=format(value, self.fmt))

    def range_text(self) -> str:
        lo = "(" if self.min_exclusive else "["
        return f"{lo}{self.minimum:g}, {self.maximum:g}]"

    def example(self) -> str:
        return self.canonical(_EXAMPLES[self.key])


_EXAMPLES = {"upsample": 4.0, "deblur": 1.5, "denoise": 0.08, "dejpeg": 50}

CLAUSES: tuple[Clause, ...] = (
    Clause(
        key="upsample",
        verb="Upsample",
        template="Upsample by {value}x",
        fmt=".1f",
        integer=False,
        minimum=1.0,
        maximum=64.0,
        min_exclusive=True,
        patterns=(r"upsample by {num} ?x", r"upsample by {num}", r"upsample {num} ?x", r"upsample x ?{num}"),
        meaning="the total factor by which the image was downscaled (restore the lost detail)",
    ),
    Clause(
        key="deblur",
        verb="Deblur",
        template="Deblur with sigma {value}",
        fmt=".1f",
        integer=False,
        minimum=0.0,
        maximum=64.0,
        min_exclusive=True,
        patterns=(r"deblur with sigma ?=? ?{num}", r"deblur sigma ?=? ?{num}", r"deblur {num}"),
        meaning="the blur's effective Gaussian sigma, in pixels of the image as given",
    ),
    Clause(
        key="denoise",
        verb="Denoise",
        template="Denoise with sigma {value}",
        fmt=".2f",
        integer=False,
        minimum=0.0,
        maximum=1.0,
        min_exclusive=True,
        patterns=(r"denoise with sigma ?=? ?{num}", r"denoise sigma ?=? ?{num}", r"denoise {num}"),
        meaning="the noise standard deviation on the [0, 1] intensity scale",
    ),
    Clause(
        key="dejpeg",
        verb="Dejpeg",
        template="Dejpeg with quality {value}",
        fmt="d",
        integer=True,
        minimum=1,
        maximum=100,
        min_exclusive=False,
        patterns=(r"dejpeg with quality ?=? ?{num}", r"dejpeg quality ?=? ?{num}", r"dejpeg {num}"),
        meaning="the JPEG quality (1..100, as libjpeg understands it) the image was saved with",
    ),
)
"""The clauses, in canonical order (Upsample, Deblur, Denoise, Dejpeg: the order of the paper's figures)."""

CLAUSE_BY_KEY: dict[str, Clause] = {c.key: c for c in CLAUSES}

BLIND_PATTERNS: tuple[str, ...] = (r"remove all degradations?", r"remove all the degradations?")
"""Accepted spellings of the blind prompt."""


def accepted_forms() -> str:
    """A human-readable list of what a restoration prompt may contain, for error messages."""
    lines = [f'  "{c.example()}"  ({c.verb}: {c.meaning}; number in {c.range_text()})' for c in CLAUSES]
    lines.append(f'  "{BLIND_PROMPT}"  (blind restoration; stands alone)')
    return (
        "Accepted clauses, separated by ';' (',' or new lines also work), in any order, case-insensitive:\n"
        + "\n".join(lines)
    )
