"""Climate Action Reserve (CAR) offset credit serial numbers (CRTs and ROCs).

::

    CAR-<unit type>-<country>-<project>-<project type>-<developer>-<state>-<vintage>-<batch>-<start> to <end>
    e.g. CAR-1-US-1335-31-983-KS-2025-9205-1 to 5000

The Reserve's serial number guide (http://www.climateactionreserve.org/how/projects/serial-number-guide/)
names the parts in this order: originating registry (``CAR`` = Climate Action Reserve), unit type (``1`` =
Climate Reserve Tonne, ``ROC`` = Registry Offset Credit), project country (ISO two-letter code), project ID
("unique to the originating registry"), project type (a number, e.g. 4 = landfill gas capture/combustion,
31 = nitric acid N2O tertiary catalyst), project developer ID (a number) and project state (two-letter
abbreviation). It says CRTs "are issued to projects in 'batches,' with each batch representing a quantity of
CRTs awarded to a single project for a specific reporting period". The stored copy of the guide breaks off after the
state; the rest is read from the serials the Reserve publishes in its retirement and cancellation reports beside
their columns: a four-digit vintage (equal to the report's Vintage), the batch number, then the range
``<start> to <end>``, whose size ``end - start + 1`` equals the report's quantity, and whose project part is the
report's Project ID without its ``CAR`` prefix (project 1335 is ``CAR1335``).

Each batch is numbered from 1, so equal integers in two batches are different credits. The serial space is
``<CRT|ROC>/CAR/<project>-<vintage>-<batch>``: keyed by project and vintage as well as by batch, because the
guide does not say that batch numbers are unique across projects (in the published serials they are, and then
the extra parts change nothing). The block's project ID is the Reserve's, e.g. ``CAR1335``.
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

ISSUING_REGISTRY = "CAR"
UNIT_TYPES = {"1": "CRT", "ROC": "ROC"}
"""The guide's unit type codes and the unit kind each names: Climate Reserve Tonne, Registry Offset Credit."""
_CODES = {kind: code for code, kind in UNIT_TYPES.items()}
PATTERN = re.compile(
    r"CAR-(?P<unit_type>[0-9A-Z]+)-(?P<country>[A-Z]{2})-(?P<project>[0-9]+)-(?P<project_type>[0-9]+)"
    r"-(?P<developer>[0-9]+)-(?P<state>[A-Z]{2})-(?P<vintage>[1-9][0-9]{3})-(?P<batch>[0-9]+)"
    r"-(?P<start>[0-9]+) to (?P<end>[0-9]+)"
)
PROJECT_PREFIX = "CAR"
"""The Reserve spells its project IDs ``CAR<number>``."""
_ATTRS = ("country", "project_type", "developer", "state", "batch")


@dataclass(frozen=True, slots=True)
class CarSerial:
    """A parsed CAR serial. Text parts keep their exact spelling."""

    unit_type: str
    country: str
    project: str
    project_type: str
    developer: str
    state: str
    vintage: int
    batch: str
    start: int
    end: int

    @property
    def unit_kind(self) -> str:
        """``CRT`` or ``ROC``."""
        return UNIT_TYPES[self.unit_type]

    @property
    def project_id(self) -> str:
        """The Reserve's project ID, e.g. ``CAR1335``."""
        return f"{PROJECT_PREFIX}{self.project}"

    @property
    def space(self) -> SerialSpace:
        """The per-batch serial space."""
        return SerialSpace(self.unit_kind, ISSUING_REGISTRY, f"{self.project}-{self.vintage}-{self.batch}")


class CarGrammar:
    """Parses and formats Climate Action Reserve serials (see the module docstring)."""

    name = "car"
    description = "Climate Action Reserve serial numbers (CAR-<unit type>-<country>-<project>-...-<start> to <end>)"

    def matches(self, text: str) -> bool:
        """True for text shaped like a CAR serial."""
        return PATTERN.fullmatch(text) is not None

    def parse(self, text: str) -> CarSerial:
        """Parse a CAR serial."""
        match = PATTERN.fullmatch(text)
        if match is None:
            raise SerialError(
                f"{text!r} is not a Climate Action Reserve serial: expected CAR-<unit type>-<country>-<project>"
                "-<project type>-<developer>-<state>-<vintage>-<batch>-<start> to <end>"
            )
        parts = match.groupdict()
        if parts["unit_type"] not in UNIT_TYPES:
            raise SerialError(
                f"the unit type {parts['unit_type']!r} in {text!r} is not one the Reserve's serial number guide lists "
                "(1 = Climate Reserve Tonne, ROC = Registry Offset Credit)"
            )
        for name, what in (
            ("project", "the project ID"),
            ("project_type", "the project type"),
            ("developer", "the project developer ID"),
            ("batch", "the batch number"),
        ):
            parse_serial_int(parts[name], what, text)
        start, end = parse_range(parts, text)
        return CarSerial(
            unit_type=parts["unit_type"],
            country=parts["country"],
            project=parts["project"],
            project_type=parts["project_type"],
            developer=parts["developer"],
            state=parts["state"],
            vintage=int(parts["vintage"]),
            batch=parts["batch"],
            start=start,
            end=end,
        )

    def format(self, value: CarSerial) -> str:
        """The serial string."""
        return (
            f"CAR-{value.unit_type}-{value.country}-{value.project}-{value.project_type}-{value.developer}"
            f"-{value.state}-{value.vintage}-{value.batch}-{value.start} to {value.end}"
        )

    def to_block(self, value: CarSerial, *, vintage: int | None = None) -> UnitBlock:
        """A block in the batch's serial space."""
        text = self.format(value)
        attrs = {name: getattr(value, name) for name in _ATTRS}
        return make_block(
            text,
            space=value.space,
            start=value.start,
            end=value.end,
            vintage=check_vintage(text, value.vintage, vintage),
            project_id=value.project_id,
            attributes=prefixed("car", attrs),
        )

    def from_block(self, block: UnitBlock) -> CarSerial:
        """The serial of a block parsed from (or split from) a CAR serial."""
        if not self.handles(block):
            raise SerialError(f"{block.describe()} is not a Climate Action Reserve block")
        attrs = require_attributes(block, "car", _ATTRS, "Climate Action Reserve")
        project = block.project_id.removeprefix(PROJECT_PREFIX)
        if not block.project_id.startswith(PROJECT_PREFIX) or not (project.isascii() and project.isdigit()):
            raise SerialError(
                f"{block.describe()} has the project ID {block.project_id!r}, not a Reserve project ID CAR<number>"
            )
        value = CarSerial(
            unit_type=_CODES[block.space.unit_kind],
            project=project,
            vintage=block.vintage,
            start=block.start,
            end=block.end,
            **{name: attrs[name] for name in _ATTRS},
        )
        if value.space != block.space:
            raise SerialError(
                f"{block.describe()} has a serial space that its project, vintage and car.batch contradict"
            )
        return value

    def handles(self, block: UnitBlock) -> bool:
        """True for CRTs and ROCs issued by the Reserve."""
        space = block.space
        return space.issuing_registry == ISSUING_REGISTRY and space.unit_kind in _CODES and bool(space.issuance)

    def carried(self, block: UnitBlock) -> frozenset[str]:
        """Range, batch, vintage, project and the ``car.*`` attributes."""
        return carried_fields(block, "car", ("project_id",))


GRAMMAR = CarGrammar()
