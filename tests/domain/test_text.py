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


NEW_IDENTIFIERS = {
    "ASCII": ("CN PO-0001", None),
    "Chinese": ("\u4e2d\u56fd-\u8d26\u6237-1", None),
    "a Chinese company, fullwidth brackets": (
        "\u817e\u8baf\u79d1\u6280\uff08\u6df1\u5733\uff09\u6709\u9650\u516c\u53f8",
        None,
    ),
    "Thai, sara am": ("\u0e2a\u0e33\u0e19\u0e31\u0e01\u0e07\u0e32\u0e19-1", None),
    "Myanmar, four marks": ("\u101b\u103d\u103e\u1036\u1037-0001", None),
    "Greek": ("\u0395\u03bb\u03bb\u03ac\u03b4\u03b1-1", None),
    "Devanagari with a virama": ("\u0915\u094d\u0937-1", None),
    "Hebrew with a maqaf": ("\u05d0\u05be\u05d1", None),
    "a numero sign": ("\u2116 5", None),
    "a subscript": ("CO\u2082-1", None),
    "three diacritics on one letter": ("x\u0301\u0302\u0303", None),
    "fullwidth letters": ("\uff23\uff2e-PO-0001", "U+FF23 FULLWIDTH LATIN CAPITAL LETTER C, drawn like 'C'"),
    "mathematical letters": ("\U0001d402\U0001d40d-1", "drawn like 'C'"),
    "a circled letter": ("\u24b8N-1", "drawn like 'C'"),
    "a ligature": ("\ufb01rm-1", "drawn like 'fi'"),
    "a Roman numeral": ("PO-\u216b", "drawn like 'XII'"),
    "a non-breaking hyphen": ("CN\u2011PO-0001", "U+2011 NON-BREAKING HYPHEN"),
    "a hyphen": ("CN\u2010PO-0001", "U+2010 HYPHEN"),
    "an en dash": ("CN\u2013PO-0001", "U+2013 EN DASH"),
    "a minus sign": ("CN\u2212PO-0001", "U+2212 MINUS SIGN"),
    "a box-drawing line": ("CN\u2500PO-0001", "U+2500"),
    "Latin with a Cyrillic letter": ("CN-\u0420O-0001", "mixes letters of the Cyrillic and Latin scripts"),
    "Latin with a Greek letter": ("CN-P\u039f-0001", "mixes letters of the Greek and Latin scripts"),
    "Cyrillic with Greek": ("\u041c\u043e\u0441-\u03a3", "mixes letters of the Cyrillic and Greek scripts"),
    "Latin with Han": ("CN-\u78b3-0001", None),
    "Latin with Han and kana": ("JP-\u6771\u4eac-\u30c6\u30b9\u30c8", None),
    "Latin with Hangul": ("KR-\ud55c\uad6d-1", None),
    "Cyrillic alone": ("\u041c\u043e\u0441\u043a\u0432\u0430-1", None),
    "Latin with diacritics": ("\u00e9clair-\u00df", None),
    "Katakana with the prolonged sound mark": ("JP-\u30ab\u30fc\u30dc\u30f3-001", None),
    "Latin with ordinal indicators": ("Cuenta-N\u00ba-1\u00aa", None),
    "Latin with a micro sign": ("\u00b5g-1", None),
    "Armenian with Latin": ("CN-P\u0555-1", "mixes letters of the Armenian and Latin scripts"),
    "two spaces": ("CN  PO-0001", "two spaces in a row"),
    "two spaces among letters of another script": ("\u4e2d  \u56fd", "two spaces in a row"),
    "four diacritics on one letter": ("\u00e0\u0301\u0301\u0301\u0301", "diacritics"),
    "a Hangul filler": ("CN-PO-0001\u3164", "U+3164 HANGUL FILLER, which shows nothing"),
    "a Braille blank": ("\u2800", "U+2800"),
    "a variation selector": ("CN-PO-0001\ufe0f", "U+FE0F"),
    "a Khitan filler": ("CN-PO-0001\U00016fe4", "U+16FE4"),
    "a null notehead": ("CN-PO-0001\U0001d159", "U+1D159"),
    "an object replacement character": ("CN-PO-0001\ufffc", "U+FFFC"),
}


@pytest.mark.parametrize("case", list(NEW_IDENTIFIERS))
def test_a_new_identifier_may_not_look_like_another(case: str) -> None:
    value, refusal = NEW_IDENTIFIERS[case]
    if refusal is None:
        assert text.check_new_identifier(value, "account_id") == value
        return
    with pytest.raises(GatewayError) as refused:
        text.check_new_identifier(value, "account_id")
    assert refusal in refused.value.message and refused.value.field == "account_id"
    # What an earlier version recorded, or another Party named, is still taken where it is looked up.
    assert text.check_identifier(value, "account_id") == value
