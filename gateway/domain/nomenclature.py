"""The closed lists of unit kinds, issuing registries and issuances, and the one canonical spelling of each.

Two blocks overlap only within one serial space, so a serial space must have exactly one name. Unit kinds,
issuing registries and issuances are codes from configured lists (DESIGN.md section 4, "What same means"):
at every edge (operator request, partner statement, adapter) a spelling is put in canonical form and looked
up, and an unknown code is refused, never stored. ``ccer``, ``CCER`` and ``"CCER "`` therefore all name the
configured ``CCER``, while a code that is not configured is refused with `ResponseCode.UNKNOWN_SERIAL_SPACE`.

Each registry also says which Party keeps it as registry of record (DESIGN.md section 4, "Provenance"): a
gateway issues the serial spaces of its own Party's registries, and units of a space another Party issues
reach it only by transfer.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import re2

from gateway.domain.blocks import SerialSpace
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.records import PARTY_PATTERN
from gateway.domain.text import quoted

CODE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
"""How a configured unit-kind or registry code, or an issuance code, may be spelled."""


def fold(value: str) -> str:
    """The spelling-insensitive form of a code: NFKC, surrounding white space removed, case folded."""
    return unicodedata.normalize("NFKC", value).strip().casefold()


class NomenclatureError(ValueError):
    """A configured list of codes is malformed (raised while loading configuration)."""


@dataclass(frozen=True, slots=True)
class IssuingRegistry:
    """A registry that issues units, as configured.

    ``code`` is its one canonical spelling. ``unit_kinds`` are the canonical unit kinds it issues. ``party``
    is the Party whose gateway is this registry's registry of record ("" for a registry outside the network
    of gateways, such as an independent standard's). ``issuance_pattern`` is empty when the registry numbers
    its units continuously; when its serials restart per issuance it is a regular expression that every
    issuance code must match in full.
    """

    code: str
    unit_kinds: tuple[str, ...]
    party: str = ""
    issuance_pattern: str = ""

    def __post_init__(self) -> None:
        if not CODE_PATTERN.fullmatch(self.code):
            raise NomenclatureError(f"registry code {self.code!r} is not a code ({CODE_PATTERN.pattern})")
        if not self.unit_kinds:
            raise NomenclatureError(f"registry {self.code}: list at least one unit kind")
        for kind in self.unit_kinds:
            if not CODE_PATTERN.fullmatch(kind):
                raise NomenclatureError(f"registry {self.code}: unit kind {kind!r} is not a code")
        if len({fold(k) for k in self.unit_kinds}) != len(self.unit_kinds):
            raise NomenclatureError(f"registry {self.code}: a unit kind is listed twice {list(self.unit_kinds)}")
        if self.party and not PARTY_PATTERN.fullmatch(self.party):
            raise NomenclatureError(f"registry {self.code}: party {self.party!r} is not an ISO 3166-1 alpha-3 code")
        if self.issuance_pattern:
            try:
                issuance_matcher(self.issuance_pattern)
            except re2.error as exc:
                problem = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc
                raise NomenclatureError(
                    f"registry {self.code}: issuance_pattern {quoted(self.issuance_pattern, 80)} is not one RE2 can"
                    f" match in linear time: {problem}. RE2 takes Python's re syntax except backreferences, lookaround,"
                    " possessive and atomic groups, verbose mode (?x) and \\N{...}, and repeats at most 1,000 times"
                    " in all ({1,64} inside {1,64} is 4,096: write + instead, as issuance codes are at most 64"
                    " characters)"
                ) from None


@functools.lru_cache(maxsize=256)
def issuance_matcher(pattern: str) -> Any:
    """``pattern``, in Python's ``re`` syntax, compiled by RE2, which matches in time linear in the code's length
    whatever the pattern: a pattern such as ``(A+)+$`` cannot make one issuance code hold the gateway for ever,
    as Python's re would. What the two read alike is passed on (`_as_re2`); what RE2 lacks is refused with
    ``re2.error``."""
    options = re2.Options()
    options.log_errors = False  # a pattern that does not compile is refused with its reason, not logged too
    return re2.compile(_as_re2(pattern), options)


_REPEAT = re.compile(r"\{([0-9]*)(,?)([0-9]*)\}")
MAX_REPEAT = 1000
"""The largest count of a repeat RE2 takes. RE2 reads a larger count that does not fit its integers as text
(``a{99999999999999999999}`` would match those characters), where Python's re refuses it: both are refused."""


def _count(digits: str, repeat: str) -> str:
    """A repeat's count written without leading zeros; ``re2.error`` over `MAX_REPEAT`, however many digits."""
    significant = digits.lstrip("0") or "0"
    if len(significant) > len(str(MAX_REPEAT)) or int(significant) > MAX_REPEAT:
        shown = repeat if len(repeat) <= 40 else f"{repeat[:40]}…"
        raise re2.error(f"invalid repetition size: {shown}".encode())
    return significant


_FLAGS = re.compile(r"\(\?([aimsux]+)\)")


def _as_re2(pattern: str) -> str:
    """``pattern`` spelled for RE2 with Python's meaning: ``\\Z`` is RE2's ``\\z``; a repeat's counts are written
    without leading zeros and ``{,n}`` as ``{0,n}`` (RE2 would read either as text); ``\\uXXXX`` and
    ``\\UXXXXXXXX`` are ``\\x{...}``; the flags ``a`` and ``u`` and ``(?#...)`` comments, which change nothing for
    ASCII codes, are dropped. A POSIX class (``[[:digit:]]``), which RE2 reads as the class and Python's re as a
    set of its characters, is refused rather than read either way."""
    out: list[str] = []
    i, in_class, class_start = 0, False, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            escaped = pattern[i + 1]
            if escaped == "Z" and not in_class:
                out.append("\\z")
            elif escaped in "uU":
                digits = 4 if escaped == "u" else 8
                out.append(f"\\x{{{pattern[i + 2 : i + 2 + digits]}}}")
                i += digits
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if char == "[" and pattern[i + 1 : i + 2] in (":", ".", "="):
                raise re2.error(b"a POSIX class such as [[:digit:]] means another thing to Python's re; write [0-9]")
            in_class = char != "]" or i == class_start  # a ] first in a class is one of its characters
        elif char == "[":
            in_class = True
            class_start = i + 2 if pattern[i + 1 : i + 2] == "^" else i + 1
            out.append(pattern[i:class_start])
            i = class_start
            continue
        elif char == "{" and (repeat := _REPEAT.match(pattern, i)) and (repeat[1] or repeat[2]):
            low = _count(repeat[1], repeat[0]) if repeat[1] else "0"
            high = _count(repeat[3], repeat[0]) if repeat[3] else ""
            out.append(f"{{{low}{repeat[2]}{high}}}")
            i = repeat.end()
            continue
        elif char == "(" and pattern.startswith("(?#", i):
            close = pattern.find(")", i)
            i = len(pattern) if close < 0 else close + 1
            continue
        elif char == "(" and (flags := _FLAGS.match(pattern, i)):
            kept = flags[1].replace("a", "").replace("u", "")
            if kept:
                out.append(f"(?{kept})")
            i = flags.end()
            continue
        out.append(char)
        i += 1
    return "".join(out)


DEFAULT_REGISTRIES = (
    IssuingRegistry(code="CN-CEA", unit_kinds=("CEA",), party="CHN"),
    IssuingRegistry(code="CN-CCER", unit_kinds=("CCER",), party="CHN"),
)
"""The codes this gateway defines for the two Chinese registries of record (README, "Identifiers the gateway
defines"). Registries with published codes are added in the configuration; none is assumed."""


@dataclass(frozen=True)
class Nomenclature:
    """The configured issuing registries, by canonical code."""

    registries: Mapping[str, IssuingRegistry] = field(default_factory=dict)
    _by_fold: Mapping[str, IssuingRegistry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_fold: dict[str, IssuingRegistry] = {}
        for code, registry in self.registries.items():
            if code != registry.code:
                raise NomenclatureError(f"registry listed under {code!r} has code {registry.code!r}")
            key = fold(code)
            if key in by_fold:
                raise NomenclatureError(f"registry codes {by_fold[key].code!r} and {code!r} differ only in spelling")
            by_fold[key] = registry
        object.__setattr__(self, "registries", MappingProxyType(dict(self.registries)))
        object.__setattr__(self, "_by_fold", MappingProxyType(by_fold))

    @classmethod
    def of(cls, registries: Iterable[IssuingRegistry]) -> Nomenclature:
        """A nomenclature of the given registries; a code listed twice is refused."""
        listed: dict[str, IssuingRegistry] = {}
        for registry in registries:
            if registry.code in listed:
                raise NomenclatureError(f"registry {registry.code!r} is listed twice")
            listed[registry.code] = registry
        return cls(listed)

    def registry(self, space: SerialSpace) -> IssuingRegistry:
        """The registry of a canonical serial space (one `canonical` returned)."""
        return self.registries[space.issuing_registry]

    def issuer(self, space: SerialSpace) -> str:
        """The Party whose gateway issues ``space`` ("" for a registry outside the network)."""
        registry = self.registries.get(space.issuing_registry)
        return registry.party if registry is not None else ""

    def canonical(self, unit_kind: str, issuing_registry: str, issuance: str, *, field: str) -> SerialSpace:
        """The serial space these codes name, in canonical spelling; refuse unknown codes.

        ``field`` is the dotted path of the space in the request (``selections[3].space``), so that a refusal
        names the exact subfield.
        """
        registry = self._by_fold.get(fold(issuing_registry)) if isinstance(issuing_registry, str) else None
        if registry is None:
            known = ", ".join(sorted(self.registries)) or "none"
            raise GatewayError(
                ResponseCode.UNKNOWN_SERIAL_SPACE,
                f"issuing registry {issuing_registry!r} is not configured here (configured: {known})",
                field=f"{field}.issuing_registry",
            )
        kinds = {fold(k): k for k in registry.unit_kinds}
        kind = kinds.get(fold(unit_kind)) if isinstance(unit_kind, str) else None
        if kind is None:
            raise GatewayError(
                ResponseCode.UNKNOWN_SERIAL_SPACE,
                f"unit kind {unit_kind!r} is not one {registry.code} issues here "
                f"(configured: {', '.join(registry.unit_kinds)})",
                field=f"{field}.unit_kind",
            )
        return SerialSpace(kind, registry.code, self._issuance(registry, issuance, f"{field}.issuance"))

    @staticmethod
    def _issuance(registry: IssuingRegistry, issuance: str, field: str) -> str:
        spelled = unicodedata.normalize("NFKC", issuance).strip().upper() if isinstance(issuance, str) else None
        if not registry.issuance_pattern:
            if spelled:
                raise GatewayError(
                    ResponseCode.UNKNOWN_SERIAL_SPACE,
                    f"{registry.code} numbers its units continuously: give no issuance (got {issuance!r})",
                    field=field,
                )
            return ""
        matches = issuance_matcher(registry.issuance_pattern).fullmatch
        if not spelled or not CODE_PATTERN.fullmatch(spelled) or matches(spelled) is None:
            raise GatewayError(
                ResponseCode.UNKNOWN_SERIAL_SPACE,
                f"{registry.code} restarts its serials per issuance: the issuance {issuance!r} does not match "
                f"the configured pattern {registry.issuance_pattern!r}",
                field=field,
            )
        return spelled


DEFAULT_NOMENCLATURE = Nomenclature.of(DEFAULT_REGISTRIES)
