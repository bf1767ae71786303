"""The gateway's canonical block identifiers for CEA allowances and CCER credits, defined in this one place.

The Chinese registries publish no serial format (DESIGN.md section 2). The gateway therefore numbers the
units of each kind itself and spells a block::

    <prefix>/<vintage>/<start>-<end>                 e.g. CN-CCER/2025/1001-1500
    <prefix>/<issuance>/<vintage>/<start>-<end>      when numbering restarts per issuance

The registry's own opaque IDs (CCER ID, CEA holding reference) are kept beside the block as its
``registry_reference``; they are references, never serials. The defaults below number units continuously
per kind (like Verra). An operator whose registry of record numbers per issuance sets ``per_issuance``;
a different prefix or registry code is a new `DomesticFormat` value, passed in the mapping context.
A one-unit block spells an underlying unit ID (AEF First unit ID / Last unit ID), e.g. ``CN-CCER/2025/1001-1001``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from adapters.serials.base import Digits, SerialError, carried_fields, check_vintage, make_block, parse_serial_int
from gateway.domain.blocks import SerialSpace, UnitBlock

ISSUANCE_CODE = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,63}")
"""How an issuance is spelled in an identifier where numbering restarts per issuance: upper-case ASCII letters,
digits, '.', '_' and '-', as the gateway spells issuance codes (`gateway.domain.nomenclature`), so that no two
spellings of one issuance (letter case, composed and decomposed accents, invisible or look-alike characters)
name two serial spaces."""
ISSUANCE_SHAPE = "1 to 64 upper-case ASCII letters, digits, '.', '_' or '-', from a letter or digit"


@dataclass(frozen=True, slots=True)
class DomesticFormat:
    """How the gateway numbers and spells one kind of Chinese unit."""

    unit_kind: str
    issuing_registry: str
    prefix: str
    per_issuance: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _space: SerialSpace = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z][A-Z0-9-]*", self.prefix):
            raise ValueError(f"identifier prefix {self.prefix!r} must be upper-case letters, digits and '-'")
        issuance = f"(?P<issuance>{ISSUANCE_CODE.pattern})/" if self.per_issuance else ""
        pattern = re.compile(
            re.escape(self.prefix) + "/" + issuance + r"(?P<vintage>[1-9][0-9]{3})/(?P<start>[0-9]+)-(?P<end>[0-9]+)"
        )
        object.__setattr__(self, "pattern", pattern)
        object.__setattr__(self, "_space", SerialSpace(self.unit_kind, self.issuing_registry))

    def space(self, issuance: str = "") -> SerialSpace:
        """The serial space of this kind (per issuance when so configured)."""
        if not self.per_issuance or not issuance:
            return self._space if not self.per_issuance else SerialSpace(self.unit_kind, self.issuing_registry)
        return SerialSpace(self.unit_kind, self.issuing_registry, issuance)

    def spell(self, vintage: int, start: int, end: int, issuance: str = "") -> str:
        """The identifier of a block."""
        return self.speller(issuance)(vintage, start, end)

    def speller(self, issuance: str = "") -> Callable[[Digits, Digits, Digits], str]:
        """``(vintage, start, end) ->`` the identifier of a block (of ``issuance`` where numbering restarts per
        issuance), with the fixed parts bound once: the one place the identifier is spelled."""
        head = f"{self.prefix}/{issuance}/" if self.per_issuance else f"{self.prefix}/"
        return lambda vintage, start, end: f"{head}{vintage}/{start}-{end}"


CEA_FORMAT = DomesticFormat(unit_kind="CEA", issuing_registry="CN-CEA", prefix="CN-CEA")
"""Default: CEA allowances, numbered continuously, spelled ``CN-CEA/<allocation year>/<start>-<end>``."""

CCER_FORMAT = DomesticFormat(unit_kind="CCER", issuing_registry="CN-CCER", prefix="CN-CCER")
"""Default: CCER credits, numbered continuously, spelled ``CN-CCER/<vintage>/<start>-<end>``."""


@dataclass(frozen=True, slots=True)
class DomesticSerial:
    """A parsed canonical CEA or CCER identifier."""

    format: DomesticFormat
    vintage: int
    start: int
    end: int
    issuance: str = ""


class DomesticGrammar:
    """Parses and formats one `DomesticFormat`."""

    def __init__(self, fmt: DomesticFormat, name: str) -> None:
        self.format_spec = fmt
        self.name = name
        self.description = (
            f"the gateway's canonical {fmt.unit_kind} block identifier ({fmt.prefix}/"
            + ("<issuance>/" if fmt.per_issuance else "")
            + "<vintage>/<start>-<end>)"
        )

    def matches(self, text: str) -> bool:
        """True for text shaped like this identifier."""
        return self.format_spec.pattern.fullmatch(text) is not None

    def parse(self, text: str) -> DomesticSerial:
        """Parse an identifier."""
        fmt = self.format_spec
        match = fmt.pattern.fullmatch(text)
        if match is None:
            shape = f"{fmt.prefix}/" + ("<issuance>/" if fmt.per_issuance else "") + "<vintage>/<start>-<end>"
            raise SerialError(f"{text!r} is not a canonical {fmt.unit_kind} identifier: expected {shape}")
        start = parse_serial_int(match.group("start"), "the block start", text)
        end = parse_serial_int(match.group("end"), "the block end", text)
        if end < start:
            raise SerialError(f"the block end {end} precedes its start {start} in {text!r}")
        issuance = match.group("issuance") if fmt.per_issuance else ""
        return DomesticSerial(fmt, int(match.group("vintage")), start, end, issuance)

    def format(self, value: DomesticSerial) -> str:
        """The identifier string."""
        return value.format.spell(value.vintage, value.start, value.end, value.issuance)

    def to_block(self, value: DomesticSerial, *, vintage: int | None = None) -> UnitBlock:
        """A block in this kind's serial space."""
        text = self.format(value)
        return make_block(
            text,
            space=value.format.space(value.issuance),
            start=value.start,
            end=value.end,
            vintage=check_vintage(text, value.vintage, vintage),
        )

    def from_block(self, block: UnitBlock) -> DomesticSerial:
        """The identifier of a block of this kind."""
        if not self.handles(block):
            raise SerialError(f"{block.describe()} is not a {self.format_spec.unit_kind} block")
        return DomesticSerial(self.format_spec, block.vintage, block.start, block.end, block.space.issuance)

    def handles(self, block: UnitBlock) -> bool:
        """True for blocks in this kind's serial space."""
        space, fmt = block.space, self.format_spec
        return (
            space.unit_kind == fmt.unit_kind
            and space.issuing_registry == fmt.issuing_registry
            and bool(space.issuance) == fmt.per_issuance
        )

    def carried(self, block: UnitBlock) -> frozenset[str]:
        """Range, vintage and (per issuance) the issuance."""
        return carried_fields(block, "\0", ())


CEA_GRAMMAR = DomesticGrammar(CEA_FORMAT, "cn-cea")
CCER_GRAMMAR = DomesticGrammar(CCER_FORMAT, "cn-ccer")
