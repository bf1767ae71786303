"""Gold Standard serial numbers.

::

    GS<registry>-<unit code>-<country>-GS<project>-<scope>-<vintage>-<issuance>-<start>-<end>
    e.g. GS1-1-UG-GS11236-16-2024-30307-1-19149

Gold Standard numbers units from 1 within each issuance (the ``<issuance>`` part), so the serial space is
``GS<registry>-<unit code>/GS/<issuance>``: equal integers in two issuances are different units.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapters.serials.base import (
    SerialError,
    carried_fields,
    check_vintage,
    make_block,
    parse_range,
    parse_serial_int,
    prefixed,
    require_attributes,
)
from gateway.domain.blocks import SerialSpace, UnitBlock

ISSUING_REGISTRY = "GS"
PATTERN = re.compile(
    r"GS(?P<registry>[0-9]+)-(?P<unit_code>[0-9]+)-(?P<country>[A-Z]{2})-(?P<project>GS[0-9]+)-(?P<scope>[0-9]{1,2})"
    r"-(?P<vintage>[1-9][0-9]{3})-(?P<issuance>[0-9]+)-(?P<start>[0-9]+)-(?P<end>[0-9]+)"
)
_ATTRS = ("registry", "unit_code", "country", "scope")


@dataclass(frozen=True, slots=True)
class GoldStandardSerial:
    """A parsed Gold Standard serial."""

    registry: str
    unit_code: str
    country: str
    project: str
    scope: str
    vintage: int
    issuance: str
    start: int
    end: int

    @property
    def space(self) -> SerialSpace:
        """The per-issuance serial space."""
        return SerialSpace(f"GS{self.registry}-{self.unit_code}", ISSUING_REGISTRY, self.issuance)


class GoldStandardGrammar:
    """Parses and formats Gold Standard serials (see the module docstring)."""

    name = "gold-standard"
    description = "Gold Standard serial numbers (GS<registry>-<unit>-<country>-GS<project>-...)"

    def matches(self, text: str) -> bool:
        """True for text shaped like a Gold Standard serial."""
        return PATTERN.fullmatch(text) is not None

    def parse(self, text: str) -> GoldStandardSerial:
        """Parse a Gold Standard serial."""
        match = PATTERN.fullmatch(text)
        if match is None:
            raise SerialError(
                f"{text!r} is not a Gold Standard serial: expected "
                "GS<registry>-<unit code>-<country>-GS<project>-<scope>-<vintage>-<issuance>-<start>-<end>"
            )
        parts = match.groupdict()
        # The registry and unit code name the serial space, like the issuance: a padded spelling of one of them
        # would put the same units in a second space, where no overlap with the first is ever found.
        parse_serial_int(parts["registry"], "the registry number", text)
        parse_serial_int(parts["unit_code"], "the unit code", text)
        parse_serial_int(parts["issuance"], "the issuance number", text)
        start, end = parse_range(parts, text)
        return GoldStandardSerial(
            registry=parts["registry"],
            unit_code=parts["unit_code"],
            country=parts["country"],
            project=parts["project"],
            scope=parts["scope"],
            vintage=int(parts["vintage"]),
            issuance=parts["issuance"],
            start=start,
            end=end,
        )

    def format(self, value: GoldStandardSerial) -> str:
        """The serial string."""
        return (
            f"GS{value.registry}-{value.unit_code}-{value.country}-{value.project}-{value.scope}"
            f"-{value.vintage}-{value.issuance}-{value.start}-{value.end}"
        )

    def to_block(self, value: GoldStandardSerial, *, vintage: int | None = None) -> UnitBlock:
        """A block in the issuance's serial space."""
        text = self.format(value)
        attrs = {name: getattr(value, name) for name in _ATTRS}
        return make_block(
            text,
            space=value.space,
            start=value.start,
            end=value.end,
            vintage=check_vintage(text, value.vintage, vintage),
            project_id=value.project,
            attributes=prefixed("gs", attrs),
        )

    def from_block(self, block: UnitBlock) -> GoldStandardSerial:
        """The serial of a block parsed from (or split from) a Gold Standard serial."""
        if not self.handles(block):
            raise SerialError(f"{block.describe()} is not a Gold Standard block")
        attrs = require_attributes(block, "gs", _ATTRS, "Gold Standard")
        value = GoldStandardSerial(
            project=block.project_id,
            vintage=block.vintage,
            issuance=block.space.issuance,
            start=block.start,
            end=block.end,
            **attrs,
        )
        if value.space != block.space:
            raise SerialError(f"{block.describe()} has a serial space that its gs.* attributes contradict")
        return value

    def handles(self, block: UnitBlock) -> bool:
        """True for blocks issued by Gold Standard."""
        return block.space.issuing_registry == ISSUING_REGISTRY and bool(block.space.issuance)

    def carried(self, block: UnitBlock) -> frozenset[str]:
        """Range, issuance, vintage, project and the ``gs.*`` attributes."""
        return carried_fields(block, "gs", ("project_id",))


GRAMMAR = GoldStandardGrammar()
