"""Reading typed values out of raw records, collecting every problem of a record before refusing it.

Raw values come from JSON (str, int, float, bool, None), CSV (str) or XLSX (str, int, float, datetime).
A value is *empty* when it is None or blank text. Text is kept verbatim (not stripped), so that a record
that maps back is byte-for-byte the one that came in.
"""

from __future__ import annotations

import datetime as dt
import difflib
import enum
import math
import re
import unicodedata
from collections.abc import Collection, Mapping
from typing import TypeVar

from adapters import vocab
from gateway.domain.mapping import IssueCode, Problem, RecordRejected
from gateway.domain.text import MAX_INT64, InexactNumber, escaped, quoted

E = TypeVar("E", bound=enum.Enum)

MAX_SHOWN = 200
"""Characters of a raw value a problem quotes: a value of megabytes is not echoed back whole."""


def shown(value: object) -> str:
    """A raw value as a problem quotes it: its ``repr``, cut to about `MAX_SHOWN` characters and marked when cut."""
    if isinstance(value, str):
        return quoted(value, MAX_SHOWN)
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"


_DIGITS = re.compile(r"0|[1-9][0-9]*")
MAX_DIGITS = 19
"""Digits of the longest whole number a field is read as: 2^63 - 1 has 19."""
_DMY = re.compile(r"([0-9]{2})/([0-9]{2})/([0-9]{4})")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ISO_MS = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{3})Z")


def unknown_name(name: str, known: Collection[str], what: str) -> str:
    """Why ``name`` is not ``what`` (one of ``known``), saying what a reader cannot see in it: spaces or invisible
    characters around a known name, characters that only look like a known name's, or a near spelling."""
    bare = "".join(char for char in name if unicodedata.category(char) != "Cf").strip()
    if bare in known and bare != name:
        return f"has characters around the name {bare!r}: remove them"
    near = difflib.get_close_matches(unicodedata.normalize("NFKC", bare), list(known), n=1, cutoff=0.8)
    others = sorted({f"U+{ord(char):04X}" for char in name if not char.isascii()})
    if near and others:
        return (
            f"is not {what}: it holds {', '.join(others[:5])}, which only look like the characters of {near[0]!r};"
            " type the name again"
        )
    if near:
        return f"is not {what}: did you mean {near[0]!r}?"
    return f"is not {what} (check its spelling)"


def is_empty(value: object) -> bool:
    """True for None and blank text."""
    return value is None or (isinstance(value, str) and not value.strip())


def format_dmy(value: dt.date) -> str:
    """``dd/mm/yyyy``, the AEF's date form for authorizations and submissions."""
    return f"{value.day:02d}/{value.month:02d}/{value.year:04d}"


def format_iso_ms(value: dt.datetime) -> str:
    """ISO 8601 UTC with milliseconds, the AEF's action date form, e.g. ``2025-03-01T08:00:00.000Z``."""
    # Every part spelled by hand: strftime's %Y leaves a year before 1000 unpadded on Linux ("999-01-01..."),
    # which no reader of the form takes back.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
        f".{value.microsecond // 1000:03d}Z"
    )


def parse_iso_date(value: object) -> dt.date:
    """The date a ``YYYY-MM-DD`` value names; raises ``ValueError`` saying what is wrong with it."""
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a date of the form YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as error:
        raise ValueError(f"{shown(value)} is not a real date ({error})") from None


def check_action_instant(value: dt.datetime) -> str | None:
    """Why ``value`` cannot be an AEF action date, or None."""
    if value.tzinfo is None or value.utcoffset() != dt.timedelta(0):
        return "must be a UTC instant"
    if value.microsecond % 1000:
        return "must be whole milliseconds (the AEF keeps three decimals)"
    return None


def _surrogate(value: str) -> str:
    """The first lone surrogate in ``value`` as ``U+D800``, or "" (JSON's ``\\ud800`` escapes make them)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"U+{ord(value[error.start]):04X}"
    return ""


class FieldReader:
    """Typed access to one raw record. Each getter records a problem and returns None on failure."""

    __slots__ = ("problems", "raw")

    def __init__(self, raw: Mapping[str, object]) -> None:
        self.raw = raw
        self.problems: list[Problem] = []

    def fail(self, field: str, message: str, code: IssueCode) -> None:
        """Record a problem."""
        self.problems.append(Problem(field, message, code))

    def check(self) -> None:
        """Raise `RecordRejected` with every problem found so far."""
        if self.problems:
            raise RecordRejected(self.problems)

    def present(self, key: str) -> bool:
        """True when the field has a non-empty value."""
        return not is_empty(self.raw.get(key))

    def _get(self, key: str, required: bool) -> object | None:
        value = self.raw.get(key)
        if is_empty(value):
            if required:
                self.fail(key, "is required but missing or empty", IssueCode.MISSING_FIELD)
            return None
        return value

    def text(self, key: str, *, required: bool = True, pattern: re.Pattern[str] | None = None, shape: str = "") -> str:
        """Text, optionally matching ``pattern`` (described by ``shape``). Missing optional text is ``""``."""
        value = self._get(key, required)
        if value is None:
            return ""
        if not isinstance(value, str):
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, f"must be text, not {type(value).__name__}", IssueCode.BAD_VALUE)
                return ""
            value = str(value)
        surrogate = "" if value.isascii() else _surrogate(value)
        if surrogate:
            self.fail(
                key,
                f"holds {surrogate}: a lone surrogate is not Unicode text, and no output can carry it",
                IssueCode.BAD_VALUE,
            )
            return ""
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(key, f"{shown(value)} does not have the form {shape}", IssueCode.BAD_PATTERN)
            return ""
        return value

    def integer(self, key: str, *, required: bool = True, what: str = "a whole number", minimum: int = 0) -> int | None:
        """A non-negative (or ``>= minimum``) integer; refuses signs, fractions and padding."""
        value = self._get(key, required)
        if value is None:
            return None
        number: int | None = None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, int):
            number = value
        elif isinstance(value, InexactNumber):
            self.fail(
                key,
                f"{escaped(value.written, 60)} is not exactly any floating-point number, so the whole number meant"
                f" cannot be told: {what} is required, written as digits alone",
                IssueCode.BAD_QUANTITY,
            )
            return None
        elif isinstance(value, float):
            if value.is_integer():
                number = int(value)
            else:
                problem = "is fractional" if math.isfinite(value) else "is not a finite number"
                self.fail(key, f"{shown(value)} {problem}: {what} is required", IssueCode.BAD_QUANTITY)
                return None
        elif isinstance(value, str):
            if len(value) > MAX_DIGITS and _DIGITS.fullmatch(value):
                self.fail(
                    key, f"has {len(value)} digits: {what} of at most {MAX_DIGITS} is required", IssueCode.BAD_QUANTITY
                )
                return None
            if _DIGITS.fullmatch(value):
                number = int(value)
            else:
                problem = (
                    "is negative"
                    if value.lstrip().startswith("-")
                    else (
                        "is fractional"
                        if re.fullmatch(r"-?[0-9]*\.[0-9]+|-?[0-9]+\.[0-9]*", value)
                        else "is not a number"
                    )
                )
                self.fail(key, f"{shown(value)} {problem}: {what} is required", IssueCode.BAD_QUANTITY)
                return None
        if number is None:
            self.fail(key, f"{shown(value)} is not {what}", IssueCode.BAD_QUANTITY)
            return None
        if number < minimum:
            self.fail(key, f"{shown(number)} is below {minimum}: {what} is required", IssueCode.BAD_QUANTITY)
            return None
        if number > MAX_INT64:
            written = f"{len(str(number))} digits" if number >= 10**MAX_DIGITS else str(number)
            self.fail(
                key,
                f"{written} is past 2^63 - 1: {what} of at most {MAX_DIGITS} digits is required",
                IssueCode.BAD_QUANTITY,
            )
            return None
        return number

    def quantity(self, key: str, *, required: bool = True) -> int | None:
        """A positive whole number of t CO2e."""
        return self.integer(key, required=required, what="a positive whole number of t CO2e", minimum=1)

    def year(self, key: str, *, required: bool = True) -> int | None:
        """A four-digit year."""
        value = self.integer(key, required=required, what="a four-digit year", minimum=1000)
        if value is not None and value > 9999:
            self.fail(key, f"{value} is not a four-digit year", IssueCode.BAD_VALUE)
            return None
        return value

    def date_dmy(self, key: str, *, required: bool = True) -> dt.date | None:
        """A ``dd/mm/yyyy`` date (an XLSX date cell is accepted too)."""
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        match = _DMY.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            self.fail(key, f"{shown(value)} is not a date of the form dd/mm/yyyy", IssueCode.BAD_DATE)
            return None
        try:
            return dt.date(int(match[3]), int(match[2]), int(match[1]))
        except ValueError as error:
            self.fail(key, f"{shown(value)} is not a real date ({error})", IssueCode.BAD_DATE)
            return None

    def date_iso(self, key: str, *, required: bool = True) -> dt.date | None:
        """A ``YYYY-MM-DD`` date."""
        value = self._get(key, required)
        if value is None:
            return None
        try:
            return parse_iso_date(value)
        except ValueError as error:
            self.fail(key, str(error), IssueCode.BAD_DATE)
            return None

    def instant(self, key: str, *, required: bool = True) -> dt.datetime | None:
        """An ISO 8601 UTC instant with milliseconds, ``YYYY-MM-DDTHH:MM:SS.sssZ``."""
        value = self._get(key, required)
        if value is None:
            return None
        match = _ISO_MS.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            self.fail(
                key,
                f"{shown(value)} is not an ISO 8601 UTC time with milliseconds (YYYY-MM-DDTHH:MM:SS.sssZ)",
                IssueCode.BAD_DATE,
            )
            return None
        y, mo, d, h, mi, s, ms = (int(g) for g in match.groups())
        try:
            return dt.datetime(y, mo, d, h, mi, s, ms * 1000, tzinfo=dt.UTC)
        except ValueError as error:
            self.fail(key, f"{shown(value)} is not a real time ({error})", IssueCode.BAD_DATE)
            return None

    def choice(self, key: str, kind: type[E], *, required: bool = True) -> E | None:
        """A value of a controlled vocabulary (an enum of strings)."""
        value = self._get(key, required)
        if value is None:
            return None
        for member in kind:
            if member.value == value:
                return member
        allowed = "; ".join(repr(m.value) for m in kind)
        self.fail(key, f"{shown(value)} is not in the vocabulary: use one of {allowed}", IssueCode.BAD_VALUE)
        return None

    def choices(self, key: str, kind: type[E], *, required: bool = True) -> tuple[E, ...]:
        """A ``"; "``-separated list of vocabulary values."""
        value = self.text(key, required=required)
        if not value:
            return ()
        found: list[E] = []
        for item in value.split(vocab.LIST_SEPARATOR):
            match = next((m for m in kind if m.value == item), None)
            if match is None:
                allowed = "; ".join(repr(m.value) for m in kind)
                self.fail(
                    key,
                    f"{shown(item)} is not in the vocabulary: use values from {allowed}, "
                    f"separated by {vocab.LIST_SEPARATOR!r}",
                    IssueCode.BAD_VALUE,
                )
                return ()
            found.append(match)
        return tuple(found)

    def texts(self, key: str, *, required: bool = True) -> tuple[str, ...]:
        """A ``"; "``-separated list of free texts."""
        value = self.text(key, required=required)
        return tuple(value.split(vocab.LIST_SEPARATOR)) if value else ()

    def party(self, key: str, *, required: bool = True) -> str:
        """A Party code (ISO 3166-1 alpha-3)."""
        value = self.text(key, required=required)
        if value and value not in vocab.PARTY_CODES:
            self.fail(
                key, f"{shown(value)} is not an ISO 3166-1 alpha-3 Party code (e.g. CHN, CHE, SGP)", IssueCode.BAD_VALUE
            )
            return ""
        return value

    def parties(self, key: str, *, required: bool = True) -> tuple[str, ...]:
        """A ``"; "``-separated list of Party codes."""
        values = self.texts(key, required=required)
        bad = [v for v in values if v not in vocab.PARTY_CODES]
        if bad:
            self.fail(key, f"{', '.join(map(repr, bad))} is not an ISO 3166-1 alpha-3 Party code", IssueCode.BAD_VALUE)
            return ()
        return values

    def cooperative_approach(self, key: str, *, required: bool = True) -> str:
        """A cooperative approach ID, ``CA`` followed by four digits."""
        return self.text(key, required=required, pattern=vocab.COOPERATIVE_APPROACH, shape="CA + 4 digits (CA0001)")

    def party_registry(self, key: str, *, required: bool = True) -> str:
        """A Party ITMO registry ID: a Party code followed by two digits (``CHN01``)."""
        value = self.text(key, required=required, pattern=vocab.PARTY_REGISTRY, shape="Party code + 2 digits (CHN01)")
        if value and value[:3] not in vocab.PARTY_CODES:
            self.fail(key, f"{shown(value)} does not start with an ISO 3166-1 alpha-3 Party code", IssueCode.BAD_VALUE)
            return ""
        return value

    def forbid_unknown(self, known: frozenset[str]) -> None:
        """Refuse fields the schema does not define (a misspelt column would otherwise be dropped)."""
        for key in self.raw:
            if key not in known:
                self.fail(escaped(key), unknown_name(key, known, "a field of this schema"), IssueCode.UNKNOWN_FIELD)
