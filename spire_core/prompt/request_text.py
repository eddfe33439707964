"""Render restoration requests to text and parse text back (design.md section 4.2).

``render`` and ``parse`` are inverses up to the printed precision: ``parse(render(r))`` equals ``r``
with every number rounded as printed, and ``render(parse(t)) == t`` for every canonical ``t``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from .grammar import (
    ACCEPTED_SEPARATORS,
    BLIND_PATTERNS,
    BLIND_PROMPT,
    CLAUSE_BY_KEY,
    CLAUSES,
    GRAMMAR_VERSION,
    NUMBER_PATTERN,
    SEPARATOR,
    Clause,
    accepted_forms,
)


class RestorationPromptError(ValueError):
    """A restoration prompt (or request) that the grammar does not accept; the message says why."""


@dataclass(frozen=True)
class RestorationRequest:
    """What a restoration prompt asks for.

    A ``None`` field means "leave that degradation alone" (its clause is omitted). ``blind`` means
    "Remove all degradation" and excludes every other field.

    Attributes:
        upsample: total downscale factor the image suffered (> 1), restored at full detail.
        deblur: effective Gaussian blur sigma in pixels of the image as given (> 0).
        denoise: noise standard deviation on the [0, 1] scale (> 0).
        dejpeg: JPEG quality 1..100 the image was saved with.
        blind: restore everything, with no numbers.
    """

    upsample: float | None = None
    deblur: float | None = None
    denoise: float | None = None
    dejpeg: int | None = None
    blind: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> RestorationRequest:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RestorationPromptError(f"unknown request fields {unknown}; expected some of {sorted(known)}")
        return cls(**values)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def named(self) -> tuple[str, ...]:
        """Keys of the clauses this request names, in canonical order."""
        return tuple(c.key for c in CLAUSES if getattr(self, c.key) is not None)

    def is_empty(self) -> bool:
        return not self.blind and not self.named()


BLIND_REQUEST = RestorationRequest(blind=True)


def _check_value(clause: Clause, value: float, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RestorationPromptError(f"{where}: {clause.verb} needs a finite number, got {value!r}. {accepted_forms()}")
    if clause.integer and value != int(value):
        raise RestorationPromptError(
            f'{where}: {clause.verb} needs an integer ({clause.meaning}), got {value!r}. Example: "{clause.example()}".'
        )
    too_low = value <= clause.minimum if clause.min_exclusive else value < clause.minimum
    if too_low or value > clause.maximum:
        hint = " To leave that degradation alone, omit the clause." if clause.min_exclusive else ""
        raise RestorationPromptError(
            f"{where}: {clause.verb} value {value:g} is out of range {clause.range_text()} "
            f'({clause.meaning}).{hint} Example: "{clause.example()}".'
        )
    return value


def quantize(request: RestorationRequest) -> RestorationRequest:
    """The request with every number rounded to its printed precision (what ``parse(render(r))`` gives)."""
    if request.blind:
        return BLIND_REQUEST
    values: dict[str, object] = {}
    for clause in CLAUSES:
        value = getattr(request, clause.key)
        if value is not None:
            values[clause.key] = int(value) if clause.integer else float(format(value, clause.fmt))
    return RestorationRequest(**values)  # type: ignore[arg-type]


def render(request: RestorationRequest | Mapping[str, object] | None = None, /, **values: object) -> str:
    """Render a request as a canonical restoration prompt.

    Args:
        request: a ``RestorationRequest``, a mapping of its fields, or None to use ``values``.
        **values: fields of a ``RestorationRequest`` (``upsample=4.0, denoise=0.08``).

    Returns:
        The canonical prompt, e.g. ``"Upsample by 4.0x; Deblur with sigma 1.5; Denoise with sigma 0.08"``,
        clauses in the order Upsample, Deblur, Denoise, Dejpeg; ``BLIND_PROMPT`` for a blind request.

    Raises:
        RestorationPromptError: a number out of range (after rounding to its printed precision),
            blind combined with clauses, or an empty request (nothing to restore has no prompt).
    """
    if request is None:
        request = RestorationRequest.from_mapping(values)
    elif values:
        raise TypeError("render() takes a request or keyword values, not both")
    elif not isinstance(request, RestorationRequest):
        request = RestorationRequest.from_mapping(request)
    if request.blind:
        if request.named():
            raise RestorationPromptError(
                f'"{BLIND_PROMPT}" stands alone; this request also names {list(request.named())}.'
            )
        return BLIND_PROMPT
    parts = []
    for clause in CLAUSES:
        value = getattr(request, clause.key)
        if value is None:
            continue
        _check_value(clause, value, "render")
        printed = int(value) if clause.integer else float(format(value, clause.fmt))
        _check_value(clause, printed, f"render ({value!r} prints as {format(printed, clause.fmt)})")
        parts.append(clause.canonical(printed))
    if not parts:
        raise RestorationPromptError(
            "render: the request names no degradation and is not blind; there is nothing to ask for. "
            f'Use "{BLIND_PROMPT}" to restore everything.'
        )
    return SEPARATOR.join(parts)


_SPLIT_RE = re.compile("[" + re.escape("".join(ACCEPTED_SEPARATORS)) + "]+")
_BLIND_RES = tuple(re.compile(p, re.IGNORECASE) for p in BLIND_PATTERNS)
_CLAUSE_RES: tuple[tuple[Clause, tuple[re.Pattern[str], ...]], ...] = tuple(
    (c, tuple(re.compile(p.format(num=f"(?P<num>{NUMBER_PATTERN})"), re.IGNORECASE) for p in c.patterns))
    for c in CLAUSES
)


def _normalise(part: str) -> str:
    return re.sub(r"\s+", " ", part).strip().rstrip(".").strip()


def parse(text: str) -> RestorationRequest:
    """Parse a restoration prompt.

    Tolerates case, spacing, a trailing period, ';' ',' or new-line separators and any clause order.

    Args:
        text: e.g. ``"Deblur with sigma 0.4; Denoise with sigma 0.08"`` or ``"Remove all degradation"``.

    Returns:
        The request; numbers are taken as written (``render`` prints them at canonical precision).

    Raises:
        RestorationPromptError: empty text, an unknown clause, a repeated clause, a number out of
            range, or the blind prompt mixed with clauses. The message names the offending clause
            and lists the accepted forms.
    """
    if not isinstance(text, str):
        raise RestorationPromptError(f"a restoration prompt must be text, got {type(text).__name__}")
    parts = [p for p in (_normalise(s) for s in _SPLIT_RE.split(text)) if p]
    if not parts:
        raise RestorationPromptError(f"the restoration prompt is empty. {accepted_forms()}")
    values: dict[str, float | int] = {}
    blind = False
    for part in parts:
        if any(r.fullmatch(part) for r in _BLIND_RES):
            blind = True
            continue
        for clause, regexes in _CLAUSE_RES:
            match = next((m for m in (r.fullmatch(part) for r in regexes) if m), None)
            if match is None:
                continue
            if clause.key in values:
                raise RestorationPromptError(f'clause "{part}": {clause.verb} is given twice.')
            number = float(match.group("num"))
            if clause.integer:
                if number != int(number):
                    _check_value(clause, number, f'clause "{part}"')
                number = int(number)
            values[clause.key] = _check_value(clause, number, f'clause "{part}"')
            break
        else:
            verb = part.split(" ", 1)[0].lower()
            known = CLAUSE_BY_KEY.get(verb)
            if known is not None:
                problem = (
                    f'clause "{part}": {known.verb} is known but this wording is not. Write it as "{known.example()}".'
                )
            else:
                problem = f'unknown clause "{part}".'
            raise RestorationPromptError(f"{problem}\n{accepted_forms()}")
    if blind and values:
        raise RestorationPromptError(
            f'"{BLIND_PROMPT}" stands alone, but the prompt also has {sorted(values)}; '
            "drop it to name the degradations, or drop the other clauses for blind restoration."
        )
    return BLIND_REQUEST if blind else RestorationRequest(**values)  # type: ignore[arg-type]


def canonicalize(text: str) -> str:
    """Parse then render: the canonical form of a valid prompt (raises like ``parse``)."""
    return render(quantize(parse(text)))


__all__ = [
    "BLIND_PROMPT",
    "BLIND_REQUEST",
    "GRAMMAR_VERSION",
    "RestorationPromptError",
    "RestorationRequest",
    "canonicalize",
    "parse",
    "quantize",
    "render",
]
