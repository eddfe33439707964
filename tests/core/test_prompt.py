"""Restoration-prompt grammar: canonical rendering, tolerant parsing, clear errors, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spire_core.prompt import (
    BLIND_PROMPT,
    CLAUSES,
    GRAMMAR_VERSION,
    RestorationPromptError,
    RestorationRequest,
    canonicalize,
    parse,
    quantize,
    render,
)


def test_paper_strings_parse():
    assert parse("Deblur with sigma 0.4; Denoise with sigma 0.08") == RestorationRequest(deblur=0.4, denoise=0.08)
    assert parse("Denoise with sigma 0.24") == RestorationRequest(denoise=0.24)
    assert parse("Remove all degradation") == RestorationRequest(blind=True)
    assert BLIND_PROMPT == "Remove all degradation"


def test_canonical_wording_and_order():
    text = render(RestorationRequest(upsample=4, deblur=1.5, denoise=0.08, dejpeg=50))
    assert text == "Upsample by 4.0x; Deblur with sigma 1.5; Denoise with sigma 0.08; Dejpeg with quality 50"
    assert render(denoise=0.24) == "Denoise with sigma 0.24"
    assert render(blind=True) == BLIND_PROMPT
    assert [c.verb for c in CLAUSES] == ["Upsample", "Deblur", "Denoise", "Dejpeg"]
    assert isinstance(GRAMMAR_VERSION, int) and GRAMMAR_VERSION >= 1


@pytest.mark.parametrize(
    "text",
    [
        "denoise with sigma 0.08; deblur with sigma 0.4",
        "DEBLUR WITH SIGMA 0.40 , Denoise  with   sigma .08",
        "Deblur with sigma 0.4\nDenoise with sigma 0.08.",
        " Denoise sigma=0.08;; deblur 0.4 ",
    ],
)
def test_parse_tolerates_case_spacing_separators_order(text):
    assert canonicalize(text) == "Deblur with sigma 0.4; Denoise with sigma 0.08"


def test_parse_variants_of_upsample_and_dejpeg():
    assert parse("upsample by 4x").upsample == 4.0
    assert parse("Upsample 2.5 x").upsample == 2.5
    assert parse("upsample x3").upsample == 3.0
    assert parse("dejpeg quality=30").dejpeg == 30
    assert parse("remove all degradations.").blind


def test_unknown_clause_names_the_clause_and_lists_forms():
    with pytest.raises(RestorationPromptError) as err:
        parse("Deblur with sigma 1.0; Sharpen with amount 3")
    message = str(err.value)
    assert 'unknown clause "Sharpen with amount 3"' in message
    for clause in CLAUSES:
        assert clause.example() in message
    assert BLIND_PROMPT in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Denoise with sigma 1.5", "Denoise value 1.5 is out of range (0, 1]"),
        ("Deblur with sigma 0", "Deblur value 0 is out of range (0, 64]"),
        ("Dejpeg with quality 0", "Dejpeg value 0 is out of range [1, 100]"),
        ("Dejpeg with quality 101", "out of range [1, 100]"),
        ("Upsample by 1x", "Upsample value 1 is out of range (1, 64]"),
        ("Dejpeg with quality 50.5", "needs an integer"),
        ("Deblur by 2", 'Write it as "Deblur with sigma 1.5"'),
        ("Deblur with sigma 1; deblur with sigma 2", "Deblur is given twice"),
        ("Remove all degradation; Denoise with sigma 0.1", "stands alone"),
        ("  ;  ", "empty"),
    ],
)
def test_bad_prompts_get_teaching_errors(text, fragment):
    with pytest.raises(RestorationPromptError) as err:
        parse(text)
    assert fragment in str(err.value)


def test_render_rejects_values_that_print_out_of_range():
    with pytest.raises(RestorationPromptError, match="prints as 0.0"):
        render(deblur=0.04)
    with pytest.raises(RestorationPromptError, match="nothing to ask for"):
        render(RestorationRequest())
    with pytest.raises(RestorationPromptError, match="stands alone"):
        render(RestorationRequest(blind=True, denoise=0.1))


def _printable(lo: float, hi: float, decimals: int):
    """Floats whose printed value is inside (lo, hi]."""
    step = 10**-decimals
    return st.floats(min_value=lo + step, max_value=hi, allow_nan=False).filter(lambda v: round(v, decimals) > lo)


requests = st.builds(
    RestorationRequest,
    upsample=st.none() | _printable(1.0, 64.0, 1),
    deblur=st.none() | _printable(0.0, 64.0, 1),
    denoise=st.none() | _printable(0.0, 1.0, 2),
    dejpeg=st.none() | st.integers(min_value=1, max_value=100),
).filter(lambda r: not r.is_empty()) | st.just(RestorationRequest(blind=True))


@settings(max_examples=10_000, deadline=None, database=None)
@given(requests)
def test_render_parse_round_trip(request):
    text = render(request)
    parsed = parse(text)
    assert parsed == quantize(request)
    assert render(parsed) == text
