"""The ITMO unique identifier, kept in this one place.

The format was reconstructed from validators (DESIGN.md section 2); the primary text was not available::

    <cooperative approach>-<Party ITMO registry>-<first transferring Party>-<serial>-<vintage>
    e.g. CA0001-CHN01-CHN-1234-2025

A block of ITMOs is named by the identifiers of its first and last unit (the AEF First ID and Last ID). The
gateway spells such a pair ``<first ID>..<last ID>``; a single identifier names a one-unit block.

Choices documented here, each a one-line change:

* `FIRST_ID_STYLE`: whether the AEF First ID / Last ID columns hold full identifiers or bare serials.
  Sources disagree; the gateway writes full identifiers and reads either.
* Serial space: a Party ITMO registry numbers its ITMOs once, whatever the approach, so the space is
  ``ITMO/<Party ITMO registry>``; approach and first transferring Party are attributes of the block.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

from adapters.serials.base import (
    Digits,
    SerialError,
    carried_fields,
    check_vintage,
    make_block,
    parse_serial_int,
    prefixed,
    require_attributes,
)
from gateway.domain.blocks import SerialSpace, UnitBlock

UNIT_KIND = "ITMO"
UNIT_ID = (
    r"(?P<{p}ca>CA[0-9]{{4}})-(?P<{p}registry>[A-Z]{{3}}[0-9]{{2}})-(?P<{p}party>[A-Z]{{3}})"
    r"-(?P<{p}serial>[0-9]+)-(?P<{p}vintage>[1-9][0-9]{{3}})"
)
UNIT_ID_PATTERN = re.compile(UNIT_ID.format(p=""))
BLOCK_PATTERN = re.compile(UNIT_ID.format(p="") + r"(?:\.\.(?P<last>" + UNIT_ID.format(p="last_") + r"))?")
BARE_SERIAL_PATTERN = re.compile(r"0|[1-9][0-9]*")


class FirstIdStyle(enum.StrEnum):
    """How the AEF First ID and Last ID columns spell an ITMO."""

    FULL_IDENTIFIER = "full identifier"
    BARE_SERIAL = "bare serial"


FIRST_ID_STYLE = FirstIdStyle.FULL_IDENTIFIER
"""The gateway's documented choice for writing First ID / Last ID (reading accepts both)."""


def format_unit_id(cooperative_approach: str, registry: str, party: str, serial: int, vintage: int) -> str:
    """The ITMO unique identifier of one unit."""
    return unit_id_formatter(cooperative_approach, registry, party)(serial, vintage)


def unit_id_formatter(cooperative_approach: str, registry: str, party: str) -> Callable[[Digits, Digits], str]:
    """``(serial, vintage) ->`` the ITMO unique identifier, with the parts that name the units' approach,
    registry and first transferring Party bound once: the one place the identifier is spelled."""
    head = f"{cooperative_approach}-{registry}-{party}-"
    return lambda serial, vintage: f"{head}{serial}-{vintage}"


@dataclass(frozen=True, slots=True)
class ItmoBlockId:
    """A block of ITMOs named by its first and last identifiers (which share every part but the serial)."""

    cooperative_approach: str
    registry: str
    first_transferring_party: str
    start: int
    end: int
    vintage: int
    ranged: bool = True
    """False for a single identifier; a ``first..last`` pair always names two or more units."""

    @property
    def first_id(self) -> str:
        """The identifier of the first unit."""
        return format_unit_id(
            self.cooperative_approach, self.registry, self.first_transferring_party, self.start, self.vintage
        )

    @property
    def last_id(self) -> str:
        """The identifier of the last unit."""
        return format_unit_id(
            self.cooperative_approach, self.registry, self.first_transferring_party, self.end, self.vintage
        )


class ItmoGrammar:
    """Parses and formats ITMO identifiers and ``first..last`` pairs (see the module docstring)."""

    name = "itmo"
    description = "ITMO unique identifiers (<approach>-<Party registry>-<first transferring Party>-<serial>-<vintage>)"

    def matches(self, text: str) -> bool:
        """True for one identifier or a ``first..last`` pair."""
        return BLOCK_PATTERN.fullmatch(text) is not None

    def parse(self, text: str) -> ItmoBlockId:
        """Parse an identifier or a pair; the two ends of a pair must agree on every part but the serial."""
        match = BLOCK_PATTERN.fullmatch(text)
        if match is None:
            raise SerialError(
                f"{text!r} is not an ITMO identifier: expected "
                "<CA + 4 digits>-<Party ITMO registry, e.g. CHN01>-<first transferring Party>-<serial>-<vintage>,"
                " or two such identifiers joined by '..'"
            )
        parts = match.groupdict()
        start = parse_serial_int(parts["serial"], "the ITMO serial", text)
        end = start
        if parts["last"] is not None:
            for name in ("ca", "registry", "party", "vintage"):
                if parts[name] != parts[f"last_{name}"]:
                    raise SerialError(
                        f"the first and last identifiers of {text!r} differ in their {name}: "
                        "a block's identifiers differ only in the serial"
                    )
            end = parse_serial_int(parts["last_serial"], "the last ITMO serial", text)
            if end == start:
                raise SerialError(f"{text!r} names one unit twice: write a one-unit block as a single identifier")
            if end < start:
                raise SerialError(f"the last serial {end} precedes the first serial {start} in {text!r}")
        return ItmoBlockId(
            cooperative_approach=parts["ca"],
            registry=parts["registry"],
            first_transferring_party=parts["party"],
            start=start,
            end=end,
            vintage=int(parts["vintage"]),
            ranged=parts["last"] is not None,
        )

    def format(self, value: ItmoBlockId) -> str:
        """One identifier, or ``first..last``."""
        return f"{value.first_id}..{value.last_id}" if value.ranged else value.first_id

    def to_block(self, value: ItmoBlockId, *, vintage: int | None = None) -> UnitBlock:
        """A block in the Party ITMO registry's serial space."""
        text = self.format(value)
        attrs = {
            "cooperative_approach": value.cooperative_approach,
            "first_transferring_party": value.first_transferring_party,
        }
        return make_block(
            text,
            space=SerialSpace(UNIT_KIND, value.registry),
            start=value.start,
            end=value.end,
            vintage=check_vintage(text, value.vintage, vintage),
            first_transferred=True,
            attributes=prefixed("itmo", attrs),
        )

    def from_block(self, block: UnitBlock) -> ItmoBlockId:
        """The identifiers of a block parsed from (or split from) ITMO identifiers."""
        if not self.handles(block):
            raise SerialError(f"{block.describe()} is not a block of ITMOs")
        attrs = require_attributes(block, "itmo", ("cooperative_approach", "first_transferring_party"), "ITMO")
        return ItmoBlockId(
            cooperative_approach=attrs["cooperative_approach"],
            registry=block.space.issuing_registry,
            first_transferring_party=attrs["first_transferring_party"],
            start=block.start,
            end=block.end,
            vintage=block.vintage,
            ranged=block.start != block.end,
        )

    def handles(self, block: UnitBlock) -> bool:
        """True for ITMO blocks."""
        return block.space.unit_kind == UNIT_KIND

    def carried(self, block: UnitBlock) -> frozenset[str]:
        """Range, registry, vintage, first-transferred flag and the ``itmo.*`` attributes."""
        return carried_fields(block, "itmo", ("first_transferred",))


def parse_first_last_id(text: str, *, cooperative_approach: str, registry: str, party: str, vintage: int) -> int:
    """The serial in an AEF First ID / Last ID cell, written in either `FirstIdStyle`.

    A full identifier must agree with the row's approach, registry, first transferring Party and vintage.
    """
    if BARE_SERIAL_PATTERN.fullmatch(text):
        return parse_serial_int(text, "the serial", text)
    match = UNIT_ID_PATTERN.fullmatch(text)
    if match is None:
        raise SerialError(
            f"{text!r} is neither an ITMO identifier "
            "(<approach>-<Party registry>-<first transferring Party>-<serial>-<vintage>) nor a bare serial"
        )
    expected = {"ca": cooperative_approach, "registry": registry, "party": party, "vintage": str(vintage)}
    for name, want in expected.items():
        if match.group(name) != want:
            raise SerialError(f"the identifier {text!r} names {name} {match.group(name)!r}, but the row says {want!r}")
    return parse_serial_int(match.group("serial"), "the ITMO serial", text)


def format_first_last_id(
    serial: int, *, cooperative_approach: str, registry: str, party: str, vintage: int, style: FirstIdStyle
) -> str:
    """An AEF First ID / Last ID cell in the given style."""
    return first_last_id_formatter(
        cooperative_approach=cooperative_approach, registry=registry, party=party, style=style
    )(serial, vintage)


def first_last_id_formatter(
    *, cooperative_approach: str, registry: str, party: str, style: FirstIdStyle
) -> Callable[[Digits, Digits], str]:
    """``(serial, vintage) ->`` the AEF First ID / Last ID cell: `format_first_last_id` with the fixed parts
    bound once, for writing many rows."""
    if style is FirstIdStyle.BARE_SERIAL:
        return lambda serial, vintage: str(serial)
    return unit_id_formatter(cooperative_approach, registry, party)


GRAMMAR = ItmoGrammar()
