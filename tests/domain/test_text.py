"""The character rules: the ASCII shortcut of `_bad_character` refuses exactly what the full scan refuses."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import text
from gateway.domain.errors import GatewayError


def _scanned(value: str, allow_joiners: bool, ascii_space_only: bool = False) -> str | None:
    """The refused character `_bad_character` finds, found one character at a time."""
    for char in value:
        if char in text._JOINERS and allow_joiners:
            continue
        if unicodedata.category(char) in text._REFUSED_CATEGORIES:
            return char
        if ascii_space_only and unicodedata.category(char) == "Zs" and char != " ":
            return char
        if not allow_joiners and char in text._BLANK_LOOKING:
            return char
    return None


@given(
    st.one_of(
        st.text(),
        st.text(alphabet=st.characters(max_codepoint=0x7F)),
        st.text(alphabet=st.sampled_from(sorted(text._BLANK_LOOKING | {"a", " ", "\u200d"}))),
    ),
    st.booleans(),
    st.booleans(),
)
def test_the_ascii_shortcut_refuses_what_the_scan_refuses(value: str, allow_joiners: bool, spaces: bool) -> None:
    assert text._bad_character(value, allow_joiners, ascii_space_only=spaces) == _scanned(value, allow_joiners, spaces)


def test_a_new_identifier_takes_the_ascii_space_alone_of_the_spaces() -> None:
    assert text.check_new_identifier("CN PO 0001", "account_id") == "CN PO 0001"
    for space in ("\u00a0", "\u2003", "\u3000", "\u202f"):
        with pytest.raises(GatewayError) as refused:
            text.check_new_identifier(f"CN{space}PO", "account_id")
        assert f"U+{ord(space):04X}" in refused.value.message and refused.value.field == "account_id"
        # What an earlier version recorded is still named, and names and text keep every space.
        assert text.check_identifier(f"CN{space}PO", "account_id") == f"CN{space}PO"
        assert text.check_name(f"Holder{space}Name", "holder_name") == f"Holder{space}Name"


def test_every_ascii_character_is_judged_as_by_its_category() -> None:
    for code in range(0x80):
        char = chr(code)
        assert text._bad_character(f"a{char}b", allow_joiners=False) == _scanned(f"a{char}b", False)


@pytest.mark.parametrize(
    ("kept", "shown"),
    [
        pytest.param("plain words", "plain words", id="printable text is kept as it is"),
        pytest.param("a\n2026-12-06 CRITICAL forged", "a\\n2026-12-06 CRITICAL forged", id="a line break"),
        pytest.param("pay \u202eCHE\u202c", "pay \\u202eCHE\\u202c", id="bidirectional overrides"),
        pytest.param("nul\x00 bell\x07", "nul\\x00 bell\\x07", id="controls"),
        pytest.param("lone \udc00", "lone \\udc00", id="a surrogate"),
        pytest.param("joined a\u200db, café, 中文", "joined a\u200db, café, 中文", id="joiners and scripts stay"),
    ],
)
def test_escaped_text_holds_nothing_free_text_may_not(kept: str, shown: str) -> None:
    assert text.escaped(kept) == shown
    assert text._bad_character(text.escaped(kept), allow_joiners=True) is None


@given(st.text(), st.integers(min_value=2, max_value=300))
def test_escaped_text_is_valid_free_text_within_its_limit(value: str, limit: int) -> None:
    shown = text.escaped(value, limit)
    assert len(shown) <= limit
    assert text._bad_character(shown, allow_joiners=True) is None
    shown.encode("utf-8")


@pytest.mark.parametrize(
    "blank",
    ["\u3164", "\u115f", "\u1160", "\uffa0", "\u2800", "\u034f", "\ufe0f", "\U000e0100", "\u17b4", "\u180b"],
)
def test_an_identifier_may_not_hold_a_character_that_shows_nothing(blank: str) -> None:
    # "CN-PO-0001" and "CN-PO-0001" with a filler after it look the same: two accounts that only look alike.
    for value in (f"CN-PO-0001{blank}", f"CN{blank}PO", blank):
        with pytest.raises(GatewayError) as refused:
            text.check_identifier(value, "account_id")
        assert f"U+{ord(blank):04X}" in refused.value.message and refused.value.field == "account_id"
    # Names and text may need the variation selectors (an ideographic variant of a name's character).
    assert text.check_name(f"\u845b{blank}", "holder_name") == f"\u845b{blank}"


SAYINGS = {
    "a word": ("checked with the partner", True),
    "a number": ("42", True),
    "a symbol": ("\u2713", True),
    "another script": ("\u5df2\u6838\u5bf9", True),
    "a word with a joiner": ("\u0915\u094d\u200d\u0937", True),
    "empty": ("", False),
    "a joiner": ("\u200d", False),
    "a non-joiner": ("\u200c", False),
    "a Hangul filler": ("\u3164", False),
    "two fillers": ("\u3164\u3164", False),
    "a Braille blank": ("\u2800", False),
    "a combining mark": ("\u0301", False),
    "a variation selector": ("\ufe0f", False),
    "an inner space between fillers": ("\u3164 \u3164", False),
}


@pytest.mark.parametrize("case", list(SAYINGS))
def test_a_reason_a_person_must_give_shows_something(case: str) -> None:
    value, shows = SAYINGS[case]
    if shows:
        assert text.check_saying(value, "reason", what="reason", why="it ends") == value
        return
    with pytest.raises(GatewayError) as refused:
        text.check_saying(value, "reason", what="reason", why="it ends")
    assert refused.value.field == "reason" and refused.value.message.endswith("say why it ends")
