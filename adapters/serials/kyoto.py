"""Kyoto Protocol unit blocks (AAU, RMU, ERU, CER, tCER, lCER), as the ITL data exchange standards define them.

A unit block carries, in this order: originating registry, unit type, supplementary unit type, unit serial
block start, unit serial block end, original commitment period, applicable commitment period, LULUCF
activity, project identifier and track. The gateway spells a block with these elements joined by ``-``::

    <registry>-<unit type>-<supplementary type>-<start>-<end>-<original CP>-<applicable CP>-<LULUCF>-<project>-<track>
    e.g. CN-5-0-1001-2000-2-2-0-1234-0

Unit types: 1 AAU, 2 RMU, 3 ERU converted from an AAU, 4 ERU converted from an RMU, 5 CER, 6 tCER, 7 lCER.
Serials are unique within an originating registry, so the serial space is ``KP/KP-<registry>``. A Kyoto block
carries no vintage: `KyotoGrammar.to_block` needs one from the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapters.serials.base import (
    SerialError,
    carried_fields,
    make_block,
    parse_serial_int,
    prefixed,
    require_attributes,
)
from gateway.domain.blocks import SerialSpace, UnitBlock

UNIT_KIND = "KP"
UNIT_TYPES = {"1": "AAU", "2": "RMU", "3": "ERU", "4": "ERU", "5": "CER", "6": "tCER", "7": "lCER"}
PATTERN = re.compile(
    r"(?P<registry>[A-Z]{2,3})-(?P<unit_type>[1-7])-(?P<supplementary>\d+)-(?P<start>\d+)-(?P<end>\d+)"
    r"-(?P<original_cp>\d+)-(?P<applicable_cp>\d+)-(?P<lulucf>\d+)-(?P<project>\d+)-(?P<track>\d+)"
)
_ATTRS = ("unit_type", "supplementary", "original_cp", "applicable_cp", "lulucf", "track")


@dataclass(frozen=True, slots=True)
class KyotoBlock:
    """A parsed Kyoto unit block."""

    registry: str
    unit_type: str
    supplementary: str
    start: int
    end: int
    original_cp: str
    applicable_cp: str
    lulucf: str
    project: str
    track: str

    @property
    def unit_name(self) -> str:
        """The unit's name, e.g. ``CER``."""
        return UNIT_TYPES[self.unit_type]


class KyotoGrammar:
    """Parses and formats Kyoto unit blocks (see the module docstring)."""

    name = "kyoto"
    description = "Kyoto Protocol / CDM unit blocks (ITL data exchange standards elements)"

    def matches(self, text: str) -> bool:
        """True for text shaped like a Kyoto unit block."""
        return PATTERN.fullmatch(text) is not None

    def parse(self, text: str) -> KyotoBlock:
        """Parse a Kyoto unit block."""
        match = PATTERN.fullmatch(text)
        if match is None:
            raise SerialError(
                f"{text!r} is not a Kyoto unit block: expected <registry>-<unit type 1-7>-<supplementary type>"
                "-<start>-<end>-<original CP>-<applicable CP>-<LULUCF activity>-<project>-<track>"
            )
        parts = match.groupdict()
        start = parse_serial_int(parts["start"], "the block start", text)
        end = parse_serial_int(parts["end"], "the block end", text)
        if end < start:
            raise SerialError(f"the block end {end} precedes its start {start} in {text!r}")
        for name in ("supplementary", "original_cp", "applicable_cp", "lulucf", "project", "track"):
            parse_serial_int(parts[name], f"the {name.replace('_', ' ')}", text)
        return KyotoBlock(start=start, end=end, **{k: v for k, v in parts.items() if k not in ("start", "end")})

    def format(self, value: KyotoBlock) -> str:
        """The unit block string."""
        return (
            f"{value.registry}-{value.unit_type}-{value.supplementary}-{value.start}-{value.end}"
            f"-{value.original_cp}-{value.applicable_cp}-{value.lulucf}-{value.project}-{value.track}"
        )

    def to_block(self, value: KyotoBlock, *, vintage: int | None = None) -> UnitBlock:
        """A block in the originating registry's serial space; ``vintage`` is required."""
        text = self.format(value)
        if vintage is None:
            raise SerialError(
                f"the Kyoto unit block {text!r} carries no vintage: give the vintage of its units "
                "(e.g. from the issuance record) to convert it to a block"
            )
        attrs = {name: getattr(value, name) for name in _ATTRS}
        return make_block(
            text,
            space=SerialSpace(UNIT_KIND, f"KP-{value.registry}"),
            start=value.start,
            end=value.end,
            vintage=vintage,
            project_id=value.project,
            attributes=prefixed("kp", attrs),
        )

    def from_block(self, block: UnitBlock) -> KyotoBlock:
        """The unit block of a block parsed from (or split from) one."""
        if not self.handles(block):
            raise SerialError(f"{block.describe()} is not a Kyoto block")
        attrs = require_attributes(block, "kp", _ATTRS, "Kyoto")
        registry = block.space.issuing_registry.removeprefix("KP-")
        return KyotoBlock(registry=registry, start=block.start, end=block.end, project=block.project_id, **attrs)

    def handles(self, block: UnitBlock) -> bool:
        """True for Kyoto units."""
        return block.space.unit_kind == UNIT_KIND and block.space.issuing_registry.startswith("KP-")

    def carried(self, block: UnitBlock) -> frozenset[str]:
        """Range, registry, project and the ``kp.*`` attributes (not the vintage: the block spells none)."""
        return carried_fields(block, "kp", ("project_id",)) - {"vintage"}


GRAMMAR = KyotoGrammar()
