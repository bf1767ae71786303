"""The character rules: the ASCII shortcut of `_bad_character` refuses exactly what the full scan refuses."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import text


def _scanned(value: str, allow_joiners: bool) -> str | None:
    """The refused character `_bad_character` finds, found one character at a time."""
    for char in value:
        if char in text._JOINERS and allow_joiners:
            continue
        if unicodedata.category(char) in text._REFUSED_CATEGORIES:
            return char
    return None


@given(st.one_of(st.text(), st.text(alphabet=st.characters(max_codepoint=0x7F))), st.booleans())
def test_the_ascii_shortcut_refuses_what_the_scan_refuses(value: str, allow_joiners: bool) -> None:
    assert text._bad_character(value, allow_joiners) == _scanned(value, allow_joiners)


def test_every_ascii_character_is_judged_as_by_its_category() -> None:
    for code in range(0x80):
        char = chr(code)
        assert text._bad_character(f"a{char}b", allow_joiners=False) == _scanned(f"a{char}b", False)
