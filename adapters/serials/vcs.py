"""Verra VCS serial numbers, in the current form and the older (pre-Verra-registry) form.

Current form (Verra Registry)::

    <batch>-<start>-<end>-VCS-VCU-<code>-VER-<country>-<scope>-<project>-<vintage start>-<vintage end>-<flag>
    e.g. 19385-941467007-941467431-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1

Older form, where the registry code names the operator of the time (APX, MER or CDC)::

    <batch>-<start>-<end>-VCU-<code>-<registry>-<country>-<scope>-<project>-<vintage start>-<vintage end>-<flag>
    e.g. 240-7863589-7889021-VCU-003-APX-IN-1-101-01042006-18032007-0

Verra numbers its units once across the registry (the serials of the two forms continue one another), so
every VCU lies in the single serial space ``VCU/VCS``: two serials overlap when their integer ranges
intersect, however they are spelled. The vintage is the year of the vintage end date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapters.serials.base import (
    SerialError,
    carried_fields,
    check_vintage,
    make_block,
    parse_ddmmyyyy,
    parse_serial_int,
    prefixed,
    require_attributes,
)
from gateway.domain.blocks import SerialSpace, UnitBlock

SPACE = SerialSpace(unit_kind="VCU", issuing_registry="VCS")
CURRENT_REGISTRY = "VER"

_TAIL = (
    r"-(?P<country>[A-Z]{2})-(?P<scope>[0-9]{1,2})-(?P<project>[0-9]+)"
    r"-(?P<vintage_start>[0-9]{8})-(?P<vintage_end>[0-9]{8})-(?P<flag>[0-9])"
)
CURRENT = re.compile(
    r"(?P<batch>[0-9]+)-(?P<start>[0-9]+)-(?P<end>[0-9]+)-VCS-VCU-(?P<code>[0-9]+)-(?P<registry>VER)" + _TAIL
)
OLDER = re.compile(
    r"(?P<batch>[0-9]+)-(?P<start>[0-9]+)-(?P<end>[0-9]+)-VCU-(?P<code>[0-9]+)-(?P<registry>APX|MER|CDC)" + _TAIL
)
_ATTRS = ("batch", "code", "registry", "country", "scope", "vintage_start", "vintage_end", "flag")


@dataclass(frozen=True, slots=True)
class VcsSerial:
    """A parsed VCS serial. Text parts keep their exact spelling (e.g. the zero-padded ``code``)."""

    batch: str
    start: int
    end: int
    code: str
    registry: str
    country: str
    scope: str
    project: str
    vintage_start: str
    vintage_end: str
    flag: str

    @property
    def current_form(self) -> bool:
        """True for the Verra Registry form (``VCS-VCU-...-VER-...``)."""
        return self.registry == CURRENT_REGISTRY

    @property
    def vintage(self) -> int:
        """The year of the vintage end date."""
        return int(self.vintage_end[4:])


class VcsGrammar:
    """Parses and formats VCS serials (see the module docstring)."""

    name = "vcs"
    description = "Verra VCS serial numbers (current VER form and older APX/MER/CDC form)"

    def matches(self, text: str) -> bool:
        """True for text shaped like either form."""
        return CURRENT.fullmatch(text) is not None or OLDER.fullmatch(text) is not None

    def parse(self, text: str) -> VcsSerial:
        """Parse either form."""
        match = CURRENT.fullmatch(text) or OLDER.fullmatch(text)
        if match is None:
            raise SerialError(
                f"{text!r} is not a VCS serial: expected "
                "<batch>-<start>-<end>-VCS-VCU-<code>-VER-<country>-<scope>-<project>-<ddmmyyyy>-<ddmmyyyy>-<flag>"
                " or the older <batch>-<start>-<end>-VCU-<code>-APX|MER|CDC-... form"
            )
        parts = match.groupdict()
        parse_serial_int(parts["batch"], "the batch number", text)
        start = parse_serial_int(parts["start"], "the block start", text)
        end = parse_serial_int(parts["end"], "the block end", text)
        first = parse_ddmmyyyy(parts["vintage_start"], "the vintage start", text)
        last = parse_ddmmyyyy(parts["vintage_end"], "the vintage end", text)
        if last < first:
            raise SerialError(f"the vintage end {parts['vintage_end']} precedes its start in {text!r}")
        if end < start:
            raise SerialError(f"the block end {end} precedes its start {start} in {text!r}")
        return VcsSerial(
            batch=parts["batch"],
            start=start,
            end=end,
            code=parts["code"],
            registry=parts["registry"],
            country=parts["country"],
            scope=parts["scope"],
            project=parts["project"],
            vintage_start=parts["vintage_start"],
            vintage_end=parts["vintage_end"],
            flag=parts["flag"],
        )

    def format(self, value: VcsSerial) -> str:
        """The serial in the form its registry code implies."""
        head = f"{value.batch}-{value.start}-{value.end}"
        unit = f"VCS-VCU-{value.code}" if value.current_form else f"VCU-{value.code}"
        tail = f"{value.country}-{value.scope}-{value.project}-{value.vintage_start}-{value.vintage_end}-{value.flag}"
        return f"{head}-{unit}-{value.registry}-{tail}"

    def to_block(self, value: VcsSerial, *, vintage: int | None = None) -> UnitBlock:
        """A block in the ``VCU/VCS`` space."""
        text = self.format(value)
        attrs = {name: getattr(value, name) for name in _ATTRS}
        return make_block(
            text,
            space=SPACE,
            start=value.start,
            end=value.end,
            vintage=check_vintage(text, value.vintage, vintage),
            project_id=value.project,
            attributes=prefixed("vcs", attrs),
        )

    def from_block(self, block: UnitBlock) -> VcsSerial:
        """The serial of a block parsed from (or split from) a VCS serial."""
        if not self.handles(block):
            raise SerialError(f"{block.describe()} is not in the VCS serial space {SPACE}")
        attrs = require_attributes(block, "vcs", _ATTRS, "VCS")
        value = VcsSerial(start=block.start, end=block.end, project=block.project_id, **attrs)
        if value.vintage != block.vintage:
            raise SerialError(
                f"{block.describe()} has vintage {block.vintage} but its VCS vintage end is {value.vintage_end}"
            )
        return value

    def handles(self, block: UnitBlock) -> bool:
        """True for VCUs."""
        return block.space == SPACE

    def carried(self, block: UnitBlock) -> frozenset[str]:
        """Range, vintage, project and the ``vcs.*`` attributes."""
        return carried_fields(block, "vcs", ("project_id",))


GRAMMAR = VcsGrammar()
