"""The limits on every string, number and list that crosses an edge, and the checks that enforce them.

Operator requests, partner statements and configuration files are all hostile input. Each string field has a
documented maximum length and a character rule; each list has a maximum count. A value that breaks a rule is
refused with `ResponseCode.INVALID_ARGUMENT`, naming the field, before anything is stored or sent.

Character rules:

- **identifiers** (account, authorization, transfer, project IDs; codes; references): not blank, no leading or
  trailing white space, in Unicode normal form NFC, and no control, format (bidirectional overrides, zero
  widths, byte-order marks), surrogate, private-use, unassigned, line or paragraph separator characters; a new
  one must also not look like another (`check_new_identifier`);
- **names** (account holder names): as identifiers, except that the zero-width joiner and non-joiner, which some
  scripts need, are allowed;
- **text** (reasons, explanations): may be empty and may contain inner spaces, otherwise as names; a reason a
  person must give shows at least one letter, number, punctuation mark or symbol (`check_saying`);
- **codes** looked up in a configured list (unit kinds, issuing registries, issuances): as identifiers, except
  that surrounding white space is folded away by the lookup rather than refused, and an unknown code is
  `ResponseCode.UNKNOWN_SERIAL_SPACE`.

Refusal messages quote at most `MAX_QUOTED` characters of an offending value.
"""

from __future__ import annotations

import decimal
import enum
import re
import unicodedata
from collections.abc import Sized
from typing import TypeVar

from gateway.domain.errors import GatewayError, ResponseCode

Choice = TypeVar("Choice", bound=enum.StrEnum)

MAX_IDENTIFIER_LENGTH = 128
"""Account, authorization, transfer, project, methodology and registry-reference IDs, and other codes."""
MAX_NAME_LENGTH = 256
"""Account holder names."""
MAX_TEXT_LENGTH = 1000
"""Free text: reasons, rejection messages."""
MAX_ATTRIBUTES = 32
"""Further source attributes carried on one block."""
MAX_ATTRIBUTE_NAME_LENGTH = 64
MAX_ATTRIBUTE_VALUE_LENGTH = 256
MAX_BLOCKS_PER_TRANSFER = 1000
"""Blocks (selections) in one transfer; the partner's envelope size cap may allow fewer."""
MAX_LIST_ITEMS = 64
"""Items in a list field of a record: purposes, sectors, activity types, rejections."""
MIN_YEAR = 1000
MAX_YEAR = 9999
"""Vintages, timeframes and calendar years are four-digit years."""
MAX_INT64 = 2**63 - 1
AEF_LIST_SEPARATOR = "; "
"""How multi-valued AEF cells (sectors, activity types, Parties, entities) join their values: no value may hold
it, or a report would read back as more values than were recorded."""
MAX_QUOTED = 40
"""Characters of an offending value quoted back in a refusal message."""

_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_JOINERS = frozenset({"\u200c", "\u200d"})
_BLANK_LOOKING = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u2800\u3164\uffa0\ufffc"
    "\U00016fe4\U0001bc9d\U0001d159"
    + "".join(chr(c) for c in range(0xFE00, 0xFE10))
    + "".join(chr(c) for c in range(0xE0100, 0xE01F0))
)
"""Characters that show nothing but are not formatting characters (category ``Cf``): the Hangul and Khitan
fillers, the Braille blank, the combining grapheme joiner, the Khmer inherent vowels, the variation selectors,
the Duployan thick letter selector (Unicode's default-ignorable code points outside ``Cf``, and U+2800), the
musical null notehead and the object replacement character. A new identifier holding one would look like
another without it (`check_new_identifier`); a required reason of them alone says nothing (`check_saying`)."""

_DASH_LOOK_ALIKES = frozenset(
    "\u02d7\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\u23af\u2500\u2796\ufe58\ufe63\uff0d"
)
"""Characters taken for the ASCII hyphen-minus: the Unicode hyphens and dashes, minus signs, a hyphen bullet and
horizontal lines. The hyphens of other scripts (the Hebrew maqaf, the Armenian hyphen, the wave dash) are not
taken for it, and are not among them."""

_LOOK_ALIKE_FORMS = ("<wide>", "<narrow>", "<font>", "<circle>", "<square>")
"""Compatibility decompositions (`unicodedata.decomposition`) of letters and digits drawn like ASCII ones:
fullwidth, halfwidth, mathematical, circled and squared forms."""

_INHERITED_MARKS = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))
"""The combining marks of no script of their own (diacritics put on any letter); the marks of a script (Thai,
Myanmar, Devanagari) stack as its spelling needs."""

_VISIBLE_CATEGORIES = frozenset("LNPS")
"""The general categories (by first letter) of characters that show something: letters, numbers, punctuation
and symbols."""


def _invalid(field: str, message: str) -> GatewayError:
    return GatewayError(ResponseCode.INVALID_ARGUMENT, message, field=field)


def _bad_character(value: str, allow_joiners: bool, *, ascii_space_only: bool = False) -> str | None:
    # The only refused ASCII characters are the controls (category Cc), which are exactly the ASCII characters
    # that are not printable: most values are decided by two scans in C.
    if value.isascii() and value.isprintable():
        return None
    for char in value:
        if char in _JOINERS and allow_joiners:
            continue
        category = unicodedata.category(char)
        if category in _REFUSED_CATEGORIES or (ascii_space_only and category == "Zs" and char != " "):
            return char
    return None


_CATEGORY_NAMES = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character",
    "Cs": "a surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def _describe(char: str) -> str:
    """A refused character as a refusal names it: ``U+202E RIGHT-TO-LEFT OVERRIDE``, ``U+0000 (a control
    character)``."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X} {name}" if name else f"U+{ord(char):04X} ({_CATEGORY_NAMES[unicodedata.category(char)]})"


def _check(
    value: str,
    field: str,
    what: str,
    max_length: int,
    *,
    allow_joiners: bool,
    required: bool,
    ascii_space_only: bool = False,
) -> str:
    if not isinstance(value, str):
        raise _invalid(field, f"the {what} must be text")
    if not value:
        if required:
            raise _invalid(field, f"the {what} is empty")
        return value
    if len(value) > max_length:
        raise _invalid(field, f"the {what} has {len(value)} characters; at most {max_length} are allowed")
    bad = _bad_character(value, allow_joiners, ascii_space_only=ascii_space_only)
    if bad is not None:
        raise _invalid(field, f"the {what} contains {_describe(bad)}, which is not allowed here")
    if value != value.strip():
        raise _invalid(field, f"the {what} {quoted(value)} has leading or trailing white space")
    if not unicodedata.is_normalized("NFC", value):
        raise _invalid(field, f"the {what} {quoted(value)} is not in Unicode normal form NFC")
    return value


def check_identifier(value: str, field: str, *, what: str = "identifier", required: bool = True) -> str:
    """``value`` if it is a valid identifier of at most `MAX_IDENTIFIER_LENGTH` characters; refuse otherwise."""
    return _check(value, field, what, MAX_IDENTIFIER_LENGTH, allow_joiners=False, required=required)


MAX_MARKS_IN_A_ROW = 3
"""Diacritics of no script of their own (`_INHERITED_MARKS`) one character may carry in a new identifier."""


def _drawn_like_ascii(char: str) -> bool:
    """Whether ``char`` is a letter or digit drawn like an ASCII one: a fullwidth, mathematical, circled or squared
    form (`_LOOK_ALIKE_FORMS`), a Latin ligature or a Roman numeral, which NFKC folds to ASCII letters or digits."""
    folded = unicodedata.normalize("NFKC", char)
    if char.isascii() or not (folded.isascii() and folded.isalnum()):
        return False
    return (
        unicodedata.decomposition(char).startswith(_LOOK_ALIKE_FORMS)
        or "\ufb00" <= char <= "\ufb06"
        or "\u2160" <= char <= "\u217f"
    )


_SCRIPTS_TOGETHER = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)
"""The scripts whose letters one identifier may mix: Unicode's "highly restrictive" level (UTS 39, section 5.2).
Others (Latin with Cyrillic or Greek, say) draw letters alike: ``CN-PO`` with a Cyrillic ``Р`` looks like the
Latin one."""


_SCRIPT_NAMES = frozenset(
    [
        "LATIN",
        "GREEK",
        "COPTIC",
        "CYRILLIC",
        "ARMENIAN",
        "GEORGIAN",
        "CHEROKEE",
        "HEBREW",
        "ARABIC",
        "SYRIAC",
        "THAANA",
        "NKO",
        "DEVANAGARI",
        "BENGALI",
        "GURMUKHI",
        "GUJARATI",
        "ORIYA",
        "TAMIL",
        "TELUGU",
        "KANNADA",
        "MALAYALAM",
        "SINHALA",
        "THAI",
        "LAO",
        "TIBETAN",
        "MYANMAR",
        "KHMER",
        "MONGOLIAN",
        "ETHIOPIC",
        "HANGUL",
        "HIRAGANA",
        "KATAKANA",
        "BOPOMOFO",
        "YI",
        "OGHAM",
        "RUNIC",
        "TIFINAGH",
        "VAI",
    ]
)
"""Scripts whose letters Unicode names after them (``CYRILLIC CAPITAL LETTER ER``); ``CJK`` names Han."""


def _script(char: str) -> str | None:
    """The script of a letter, as the first word of its Unicode name says it (``HAN`` for CJK ideographs); None
    for what belongs to no one script: not a letter, a modifier letter (the prolonged sound mark ``ー`` serves
    Hiragana and Katakana), or a letter named otherwise (``ª``, ``º``, ``µ``)."""
    category = unicodedata.category(char)
    if not category.startswith("L") or category == "Lm":
        return None
    words = unicodedata.name(char, "").split()
    if words[:1] in (["HALFWIDTH"], ["FULLWIDTH"]):
        words = words[1:]
    if not words:
        return None
    if words[0] == "CJK":
        return "HAN"
    return words[0] if words[0] in _SCRIPT_NAMES else None


def _look_alike(value: str) -> str | None:
    """Why ``value`` would look like another identifier, or None: beyond its spaces (`_bad_character`), a character
    that shows nothing, a dash or a letter drawn like an ASCII one, letters of scripts that draw letters alike, two
    spaces in a row, or a stack of diacritics."""
    if "  " in value:
        return "holds two spaces in a row"
    if value.isascii():
        return None
    scripts = {script for char in value if (script := _script(char)) is not None}
    if len(scripts) > 1 and not any(scripts <= together for together in _SCRIPTS_TOGETHER):
        named = " and ".join(sorted(s.title() for s in scripts))
        return (
            f"mixes letters of the {named} scripts, which draw letters alike: write it in one script (Latin may go"
            " with Han, kana, Bopomofo or Hangul)"
        )
    marks = 0
    for char in value:
        if char in _BLANK_LOOKING:
            return f"holds {_describe(char)}, which shows nothing"
        if char in _DASH_LOOK_ALIKES:
            return f"holds {_describe(char)}: it takes the ASCII hyphen-minus alone of the dashes"
        if _drawn_like_ascii(char):
            shown = unicodedata.normalize("NFKC", char)
            return f"holds {_describe(char)}, drawn like {shown!r}: write {shown!r}"
        code = ord(char)
        marks = marks + 1 if any(low <= code <= high for low, high in _INHERITED_MARKS) else 0
        if marks > MAX_MARKS_IN_A_ROW:
            return f"holds more than {MAX_MARKS_IN_A_ROW} diacritics on one character"
    return None


def check_new_identifier(value: str, field: str, *, what: str = "identifier") -> str:
    """`check_identifier` for an identifier this gateway is about to name something new by (an account, an
    incoming transfer), which must not look like another: it takes the ASCII space alone of the spaces (a no-break
    or em space would make a look-alike) and the ASCII hyphen-minus alone of the dashes, and holds no character
    that shows nothing, no letter drawn like an ASCII one (fullwidth, mathematical), no letters of scripts that
    draw letters alike (Latin with Cyrillic, say), no two spaces in a row and no stack of diacritics
    (`_look_alike`). Identifiers recorded before these rules, and those another Party chose
    (an authorization ID), are checked by `check_identifier`."""
    _check(value, field, what, MAX_IDENTIFIER_LENGTH, allow_joiners=False, required=True, ascii_space_only=True)
    reason = _look_alike(value)
    if reason is not None:
        raise _invalid(field, f"the {what} {quoted(value)} {reason}")
    return value


def check_code(value: str, field: str, *, what: str = "code") -> str:
    """``value`` if it may be looked up as a configured code (unit kind, issuing registry, issuance); refuse
    otherwise.

    The rules are an identifier's, except that the value may be empty and may carry surrounding white space:
    `gateway.domain.nomenclature` folds a code's spelling before looking it up, and answers an unknown code
    with `ResponseCode.UNKNOWN_SERIAL_SPACE`. What no spelling can turn into a code (too long, control or
    format characters) is malformed, and refused here before it is looked up or quoted back.
    """
    if not isinstance(value, str):
        raise _invalid(field, f"the {what} must be text")
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise _invalid(field, f"the {what} has {len(value)} characters; at most {MAX_IDENTIFIER_LENGTH} are allowed")
    bad = _bad_character(value, allow_joiners=False)
    if bad is not None:
        raise _invalid(field, f"the {what} contains {_describe(bad)}, which is not allowed here")
    return value


def check_name(value: str, field: str, *, what: str = "name") -> str:
    """``value`` if it is a valid name of at most `MAX_NAME_LENGTH` characters; refuse otherwise."""
    return _check(value, field, what, MAX_NAME_LENGTH, allow_joiners=True, required=True)


def check_text(value: str, field: str, *, what: str = "text", max_length: int = MAX_TEXT_LENGTH) -> str:
    """``value`` if it is valid free text (possibly empty) of at most ``max_length`` characters."""
    return _check(value, field, what, max_length, allow_joiners=True, required=False)


def check_saying(value: str, field: str, *, what: str, why: str) -> str:
    """``value`` if it is valid text (`check_text`) that shows something: a reason a person must give is refused
    when empty, and also when it holds only spaces, joiners, fillers or combining marks, which show nothing.
    ``why`` completes the refusal ("say why ...")."""
    check_text(value, field, what=what)
    if not any(unicodedata.category(c)[0] in _VISIBLE_CATEGORIES and c not in _BLANK_LOOKING for c in value):
        shown = "empty" if not value else f"{quoted(value)}, which shows nothing"
        raise _invalid(field, f"the {what} is {shown}: say why {why}")
    return value


def check_count(items: Sized, field: str, limit: int, *, what: str = "items") -> None:
    """Refuse a list field with more than ``limit`` entries."""
    if len(items) > limit:
        raise _invalid(field, f"{len(items)} {what} given; at most {limit} are allowed")


def check_year(value: int, field: str, *, what: str = "year") -> int:
    """``value`` if it is a four-digit year; refuse otherwise."""
    if not MIN_YEAR <= value <= MAX_YEAR:
        raise _invalid(field, f"the {what} {value} is not a four-digit year ({MIN_YEAR}-{MAX_YEAR})")
    return value


def check_positive_int64(value: int, field: str, *, what: str = "quantity") -> int:
    """``value`` if it lies in 1..2^63-1; refuse otherwise."""
    if not 0 < value <= MAX_INT64:
        raise _invalid(field, f"the {what} {value} is not in 1..{MAX_INT64}")
    return value


def parse_whole_number(value: str) -> int:
    """An integer written in the ASCII digits 0-9, with an optional minus sign and at most 100 digits (its
    range is the caller's to check); else `ValueError` (``int`` also takes other scripts' digits, underscores
    and surrounding white space)."""
    digits = value[1:] if value.startswith("-") else value
    if not (0 < len(digits) <= 100 and digits.isascii() and digits.isdigit()):
        raise ValueError(f"{quoted(value)} is not a whole number in the digits 0-9")
    return int(value)


_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


def parse_seconds(value: str) -> float:
    """A number of seconds written in the ASCII digits 0-9, with an optional fraction (``2``, ``0.5``); else
    `ValueError` (``float`` also takes other scripts' digits, underscores, exponents, ``nan`` and ``inf``)."""
    if not _SECONDS.fullmatch(value):
        raise ValueError(f"{quoted(value)} is not a number of seconds in the digits 0-9, such as 30 or 0.5")
    return float(value)


def quoted(value: str, limit: int = MAX_QUOTED) -> str:
    """``value`` as a refusal message quotes it: ``repr``, cut to about ``limit`` characters and marked when cut."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"… ({len(value)} characters)"


def truncate(text: str, limit: int = MAX_TEXT_LENGTH) -> str:
    """``text`` cut to at most ``limit`` characters, marked when cut (for messages this gateway writes)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escaped(text: str, limit: int = MAX_TEXT_LENGTH) -> str:
    """Another Party's free text made safe to store, show and log, for what is kept rather than refused (a
    receipt's or a reconciliation report's detail): each character free text may not hold (controls and line
    breaks, invisible formatting such as bidirectional overrides, surrogates, private-use and unassigned code
    points) written as its Python escape (``\\n``, ``\\u202e``), the result cut to ``limit`` characters."""
    if not (text.isascii() and text.isprintable()):
        text = "".join(
            char.encode("unicode_escape").decode("ascii")
            if char not in _JOINERS and unicodedata.category(char) in _REFUSED_CATEGORIES
            else char
            for char in text
        )
    return truncate(text, limit)


def encodable(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate (which JSON's ``\\ud800`` escapes can make, and which no
    protobuf string, SQLite parameter or log line takes) written as its escape; anything else unchanged."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_choice(kind: type[Choice], value: str, field: str, *, what: str) -> Choice:
    """The member of ``kind`` spelled ``value``, or a refusal naming the field and listing every accepted value."""
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in kind)
        raise _invalid(field, f"unknown {what} {quoted(value, 80)}; use one of {allowed}") from None


NOT_APPLICABLE = "NA"
"""What an AEF cell holds where a column does not apply: never a value of its own."""


def check_not_na(value: str, field: str) -> None:
    """Refuse a value spelled ``NA``: in the AEF it means "does not apply", so it would be reported as absent."""
    if value.strip() == NOT_APPLICABLE:
        raise _invalid(field, '"NA" means "does not apply" in the AEF reports, so it cannot be a value here')


class InexactNumber(float):
    """A number read from JSON whose written value no float holds (``9007199254740993.0``, ``0.1``): the nearest
    float, with ``written``, the text as written. A reader of whole numbers refuses it rather than take the
    nearest float for what was written (`read_float`)."""

    written: str

    def __new__(cls, written: str) -> InexactNumber:
        number = super().__new__(cls, written)
        number.written = written
        return number


def read_float(written: str) -> float:
    """The float of a JSON number with a fraction or an exponent (``json.loads``' ``parse_float``): an
    `InexactNumber` when the float differs from the value written, however slightly."""
    value = float(written)
    if value != value or value in (float("inf"), float("-inf")):
        return value  # left to the field that reads it, which names it
    try:
        exact = decimal.Decimal(written) == decimal.Decimal(value)
    except decimal.InvalidOperation:  # an exponent past what a Decimal holds (0e-99999999999999999999)
        exact = False
    return value if exact else InexactNumber(written)
