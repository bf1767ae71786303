"""Configured issuance patterns: matched by RE2, in time linear in the code whatever the pattern."""

from __future__ import annotations

import time

import pytest

from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.nomenclature import IssuingRegistry, Nomenclature, NomenclatureError, issuance_matcher


def _nomenclature(pattern: str) -> Nomenclature:
    return Nomenclature.of([IssuingRegistry(code="XX-REG", unit_kinds=("VCU",), issuance_pattern=pattern)])


def test_an_issuance_code_matching_the_pattern_names_its_serial_space() -> None:
    space = _nomenclature("I[0-9]{4}-[0-9]+").canonical("vcu", "xx-reg", " i2025-7 ", field="block.space")
    assert (space.unit_kind, space.issuing_registry, space.issuance) == ("VCU", "XX-REG", "I2025-7")


def test_a_pattern_that_backtracks_exponentially_in_python_answers_at_once() -> None:
    nomenclature = _nomenclature("(A+)+$")
    begin = time.perf_counter()
    with pytest.raises(GatewayError) as refused:
        nomenclature.canonical("VCU", "XX-REG", "A" * 63 + "B", field="block.space")
    assert time.perf_counter() - begin < 1  # Python's re takes longer than the age of the universe
    assert (refused.value.code, refused.value.field) == (ResponseCode.UNKNOWN_SERIAL_SPACE, "block.space.issuance")
    assert nomenclature.canonical("VCU", "XX-REG", "A" * 64, field="f").issuance == "A" * 64


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        (r"(I)\1", "invalid escape sequence"),
        (r"I(?=[0-9])", "invalid perl operator"),
        (r"(?:[A-Z0-9]{1,64}-?){1,64}", "invalid repetition size"),
        ("I[0-9", "missing ]"),
        # RE2 reads a count too large for its integers as text, where Python's re raises OverflowError
        ("a{99999999999999999999}", "invalid repetition size: {99999999999999999999}"),
        ("A{," + "9" * 5000 + "}", "invalid repetition size: {,999"),
    ],
)
def test_a_pattern_re2_cannot_compile_is_refused_with_its_reason(pattern: str, says: str) -> None:
    with pytest.raises(NomenclatureError) as refused:
        _nomenclature(pattern)
    assert "is not one RE2 can match in linear time" in str(refused.value)
    assert says in str(refused.value)


PATTERNS = [
    r"CCER-\d{,6}",
    r"\A\d{4}-\d{2}\Z",
    r"I[0-9]{4}-[0-9]+",
    r"(?i)v[a-z]{2}\d{,3}",
    r"[^]A]{,3}",
    r"[]A]+",
    r"\u0049\d+",
    r"[\u0041-\u005A]{2}/\d{4}",
    r"X{,}",
    r"A\{,3}",
    r"(?P<year>\d{4})-(?:[A-Z]+|\d+)",
    r"I\d{04}-\d{1,06}",
    r"[[]?A{,3}",
    r"[A-Z[]+\Z",
    r"(?a)I\d+",
    r"(?ai)v[a-z]{2}\d{,3}",
    r"I(?#the year)\d{4}",
    r"[\w[]+-[.]",
]
CODES = [
    "CCER-12",
    "CCER-1234567",
    "2025-01",
    "I2025-7",
    "I2025",
    "VCU12",
    "B",
    "]]A",
    "I12",
    "AB/2025",
    "XXX",
    "AAA",
    "[A",
    "A{,3}",
    "AB[-.",
    "",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_pattern_matches_under_re2_as_python_s_re_reads_it(pattern: str) -> None:
    import re
    import warnings

    matcher = issuance_matcher(pattern)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "possible nested set": [[ as Python reads it today
        python = re.compile(pattern)
    assert [c for c in CODES if matcher.fullmatch(c)] == [c for c in CODES if python.fullmatch(c)]


@pytest.mark.parametrize("pattern", ["[[:digit:]]+", "I[[:alpha:]]"])
def test_a_posix_class_which_python_s_re_reads_otherwise_is_refused(pattern: str) -> None:
    with pytest.raises(NomenclatureError, match=r"POSIX class such as \[\[:digit:\]\] means another thing"):
        _nomenclature(pattern)
