"""Kyoto Protocol unit blocks (AAU, RMU, ERU, CER, tCER, lCER), as the ITL data exchange standards define them.

A unit block carries, in this order: originating registry, unit type, supplementary unit type, unit serial
block start, unit serial block end, original commitment period, applicable commitment period, LULUCF
activity, project identifier and track, and for tCERs and lCERs an expiry date. Two forms are read and written.

**String form.** The gateway spells a block with its elements (all but the expiry date) joined by ``-``::

    <registry>-<unit type>-<supplementary type>-<start>-<end>-<original CP>-<applicable CP>-<LULUCF>-<project>-<track>
    e.g. CN-5-0-1001-2000-2-2-0-1234-0

Every position holds digits: the gateway writes ``0`` where the ITL leaves an optional element out (no LULUCF
activity, project or track; no code of those elements is 0). The string form does not carry the expiry date.

**Field form** (`from_fields`, `to_fields`): the typed fields a registry holds and the ITL exchanges, one per
data exchange standards (DES) element of a transaction unit block, all text, an absent optional one empty:

* ``originating_registry`` (DES originatingRegistryCode): ISO 3166-1 alpha-2 code, e.g. ``CN``;
* ``unit_type`` (DES unitType and suppUnitType): ``<unit type>-<supplementary type>``, e.g. ``5-0``;
* ``block_start``, ``block_end`` (DES unitSerialBlockStart, unitSerialBlockEnd): digits, start <= end;
* ``original_commitment_period``, ``applicable_commitment_period`` (DES originalCommitPeriod,
  applicableCommitPeriod): ``1`` (2008-2012) or ``2`` (2013-2020);
* ``lulucf_activity`` (DES LULUCFActivity, optional): ``1``-``7``, see `LULUCF_ACTIVITIES`;
* ``project_id`` (DES projectIdentifier, optional): a positive integer;
* ``track`` (DES track, optional): ``1`` or ``2``, the JI track, so ERUs only;
* ``expiry_date`` (DES expiryDate, optional): ISO date, tCERs and lCERs only.

Unit types: 1 AAU, 2 RMU, 3 ERU converted from an AAU, 4 ERU converted from an RMU, 5 CER, 6 tCER, 7 lCER; the
supplementary type of a Kyoto unit is 0 (registries display a CER as unit type ``5-0``). Sources, all public:
the DES element names and optionality are those of the ITL web service description published with the UK
registry (github.com/UKGovernmentBEIS/ukets-registry, commit 4e80ded9dbd9641ead1396cac212032150053991,
uk-ets-itl-commons/uk-ets-itl-ws-types/src/main/resources/wsdl/common.wsdl, type ``TransactionUnitBlock``);
the code lists are that registry's ``UnitType`` (unit type and supplementary code), ``EnvironmentalActivity``
(LULUCF codes), ``ProjectTrack`` ("the track code, according to ITL DES") and ``CommitmentPeriod`` enums in
uk-ets-app-registry/uk-ets-transaction-domain and uk-ets-app-transaction-log. The same list also has codes 0
(2005-2007) and 3 (2021-2030), periods of emissions-trading allowances rather than Kyoto commitment periods; the
field form refuses them. The stored copies of the DES text itself ("Data Exchange Standards for Registry Systems
under the Kyoto Protocol, Technical Specifications", UNFCCC) that the search reached showed only their opening
pages, not the code tables.

Serials are unique within an originating registry, so the serial space is ``KP/KP-<registry>``. A Kyoto block
carries no vintage: `KyotoGrammar.to_block` needs one from the caller. The expiry date travels in the block's
``kp.expiry_date`` attribute.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass

from adapters.serials.base import (
    SerialError,
    carried_fields,
    make_block,
    parse_range,
    parse_serial_int,
    prefixed,
    require_attributes,
)
from gateway.domain.blocks import SerialSpace, UnitBlock

UNIT_KIND = "KP"
UNIT_TYPES = {"1": "AAU", "2": "RMU", "3": "ERU", "4": "ERU", "5": "CER", "6": "tCER", "7": "lCER"}
PATTERN = re.compile(
    r"(?P<registry>[A-Z]{2,3})-(?P<unit_type>[1-7])-(?P<supplementary>[0-9]+)-(?P<start>[0-9]+)-(?P<end>[0-9]+)"
    r"-(?P<original_cp>[0-9]+)-(?P<applicable_cp>[0-9]+)-(?P<lulucf>[0-9]+)-(?P<project>[0-9]+)-(?P<track>[0-9]+)"
)
_ATTRS = ("unit_type", "supplementary", "original_cp", "applicable_cp", "lulucf", "track")
EXPIRY_ATTRIBUTE = "expiry_date"
"""The ``kp.*`` attribute that carries a tCER's or lCER's expiry date (ISO 8601)."""

ABSENT = "0"
"""What the string form writes where the ITL leaves an optional element (LULUCF activity, project, track) out."""

COMMITMENT_PERIODS = {"1": "first commitment period (2008-2012)", "2": "second commitment period (2013-2020)"}
LULUCF_ACTIVITIES = {
    "1": "afforestation and reforestation",
    "2": "deforestation",
    "3": "forest management",
    "4": "cropland management",
    "5": "grazing land management",
    "6": "revegetation",
    "7": "wetland drainage and rewetting",
}
TRACKS = {"1": "JI track 1 (a Party project)", "2": "JI track 2 (an Article 6 Supervisory Committee project)"}
ERU_TYPES = frozenset({"3", "4"})
"""Unit types that a JI track applies to."""
EXPIRING_TYPES = frozenset({"6", "7"})
"""Unit types that carry an expiry date (tCER, lCER)."""

FIELDS = {
    "originating_registry": "originatingRegistryCode",
    "unit_type": "unitType-suppUnitType",
    "block_start": "unitSerialBlockStart",
    "block_end": "unitSerialBlockEnd",
    "original_commitment_period": "originalCommitPeriod",
    "applicable_commitment_period": "applicableCommitPeriod",
    "lulucf_activity": "LULUCFActivity",
    "project_id": "projectIdentifier",
    "track": "track",
    "expiry_date": "expiryDate",
}
"""The field form's keys, in DES order, with the DES element each stands for."""

_REGISTRY = re.compile(r"[A-Z]{2}")
_UNIT_TYPE = re.compile(r"(?P<unit_type>[1-7])-(?P<supplementary>0|[1-9][0-9]*)")
_POSITIVE = re.compile(r"[1-9][0-9]*")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True, slots=True)
class KyotoBlock:
    """A parsed Kyoto unit block. Codes keep the spelling of the string form (``0`` for an absent element)."""

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
    expiry: dt.date | None = None
    """The expiry date of a tCER or lCER block; the string form does not carry it."""

    @property
    def unit_name(self) -> str:
        """The unit's name, e.g. ``CER``."""
        return UNIT_TYPES[self.unit_type]


def _field_error(name: str, value: object, problem: str) -> SerialError:
    return SerialError(f"the Kyoto field {name} (DES {FIELDS[name]}) is {value!r}: {problem}")


def _code(name: str, value: str, codes: Mapping[str, str]) -> str:
    if value not in codes:
        listed = "; ".join(f"{code} {meaning}" for code, meaning in codes.items())
        raise _field_error(name, value, f"it must be one of the codes {listed}")
    return value


def _optional_code(name: str, value: str, codes: Mapping[str, str]) -> str:
    return ABSENT if value == "" else _code(name, value, codes)


def from_fields(fields: Mapping[str, str]) -> KyotoBlock:
    """The block named by a Kyoto field form (see the module docstring); a `SerialError` names a bad field."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise SerialError(f"unknown Kyoto field(s) {', '.join(unknown)}: the fields are {', '.join(FIELDS)}")
    missing = [name for name in FIELDS if name not in fields]
    if missing:
        raise SerialError(
            f"the Kyoto field(s) {', '.join(missing)} are missing (an optional element is given as an empty string)"
        )
    for name in FIELDS:
        if not isinstance(fields[name], str):
            raise _field_error(name, fields[name], "every field is text")
    registry = fields["originating_registry"]
    if not _REGISTRY.fullmatch(registry):
        raise _field_error("originating_registry", registry, "it must be an ISO 3166-1 alpha-2 code, e.g. CN")
    unit = _UNIT_TYPE.fullmatch(fields["unit_type"])
    if unit is None:
        raise _field_error(
            "unit_type",
            fields["unit_type"],
            "it must be <unit type 1-7>-<supplementary type>, e.g. 5-0 for a CER (1 AAU, 2 RMU, 3 ERU from an AAU, "
            "4 ERU from an RMU, 5 CER, 6 tCER, 7 lCER)",
        )
    unit_type = unit["unit_type"]
    ends: dict[str, int] = {}
    for name in ("block_start", "block_end"):
        try:
            ends[name] = parse_serial_int(fields[name], name, fields[name])
        except SerialError:
            raise _field_error(name, fields[name], "it must be digits without leading zeros") from None
    if ends["block_end"] < ends["block_start"]:
        raise _field_error("block_end", fields["block_end"], f"it precedes the block start {ends['block_start']}")
    original = _code("original_commitment_period", fields["original_commitment_period"], COMMITMENT_PERIODS)
    applicable = _code("applicable_commitment_period", fields["applicable_commitment_period"], COMMITMENT_PERIODS)
    lulucf = _optional_code("lulucf_activity", fields["lulucf_activity"], LULUCF_ACTIVITIES)
    project = fields["project_id"]
    if project and not _POSITIVE.fullmatch(project):
        raise _field_error("project_id", project, "it must be a positive integer without leading zeros, or empty")
    track = _optional_code("track", fields["track"], TRACKS)
    if track != ABSENT and unit_type not in ERU_TYPES:
        raise _field_error("track", track, f"a JI track applies to ERUs (unit type 3 or 4), not unit type {unit_type}")
    expiry = _expiry(fields["expiry_date"], unit_type)
    return KyotoBlock(
        registry=registry,
        unit_type=unit_type,
        supplementary=unit["supplementary"],
        start=ends["block_start"],
        end=ends["block_end"],
        original_cp=original,
        applicable_cp=applicable,
        lulucf=lulucf,
        project=project or ABSENT,
        track=track,
        expiry=expiry,
    )


def _expiry(text: str, unit_type: str) -> dt.date | None:
    if text == "":
        return None
    if not _ISO_DATE.fullmatch(text):
        raise _field_error("expiry_date", text, "it must be an ISO date YYYY-MM-DD, or empty")
    try:
        expiry = dt.date.fromisoformat(text)
    except ValueError:
        raise _field_error("expiry_date", text, "it is not a valid date") from None
    if unit_type not in EXPIRING_TYPES:
        raise _field_error(
            "expiry_date", text, f"only tCERs and lCERs (unit type 6 or 7) expire, not unit type {unit_type}"
        )
    return expiry


def to_fields(value: KyotoBlock) -> dict[str, str]:
    """The field form of a block; a `SerialError` names a field the block cannot fill (e.g. a 3-letter registry)."""
    fields = {
        "originating_registry": value.registry,
        "unit_type": f"{value.unit_type}-{value.supplementary}",
        "block_start": str(value.start),
        "block_end": str(value.end),
        "original_commitment_period": value.original_cp,
        "applicable_commitment_period": value.applicable_cp,
        "lulucf_activity": "" if value.lulucf == ABSENT else value.lulucf,
        "project_id": "" if value.project == ABSENT else value.project,
        "track": "" if value.track == ABSENT else value.track,
        "expiry_date": value.expiry.isoformat() if value.expiry is not None else "",
    }
    if from_fields(fields) != value:
        raise SerialError(
            f"the Kyoto block {GRAMMAR.format(value)!r} has no exact field form (a code is not canonical)"
        )
    return fields


class KyotoGrammar:
    """Parses and formats Kyoto unit blocks in the string form (see the module docstring)."""

    name = "kyoto"
    description = "Kyoto Protocol / CDM unit blocks (ITL data exchange standards elements)"

    def matches(self, text: str) -> bool:
        """True for text shaped like a Kyoto unit block."""
        return PATTERN.fullmatch(text) is not None

    def parse(self, text: str) -> KyotoBlock:
        """Parse a Kyoto unit block (its expiry date, which the string does not carry, is None)."""
        match = PATTERN.fullmatch(text)
        if match is None:
            raise SerialError(
                f"{text!r} is not a Kyoto unit block: expected <registry>-<unit type 1-7>-<supplementary type>"
                "-<start>-<end>-<original CP>-<applicable CP>-<LULUCF activity>-<project>-<track>"
            )
        parts = match.groupdict()
        start, end = parse_range(parts, text)
        for name in ("supplementary", "original_cp", "applicable_cp", "lulucf", "project", "track"):
            parse_serial_int(parts[name], f"the {name.replace('_', ' ')}", text)
        return KyotoBlock(
            registry=parts["registry"],
            unit_type=parts["unit_type"],
            supplementary=parts["supplementary"],
            start=start,
            end=end,
            original_cp=parts["original_cp"],
            applicable_cp=parts["applicable_cp"],
            lulucf=parts["lulucf"],
            project=parts["project"],
            track=parts["track"],
        )

    def format(self, value: KyotoBlock) -> str:
        """The unit block string (without the expiry date)."""
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
        if value.expiry is not None:
            attrs[EXPIRY_ATTRIBUTE] = value.expiry.isoformat()
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
        """The unit block of a block parsed from (or split from) one, with its expiry date if it has one."""
        if not self.handles(block):
            raise SerialError(f"{block.describe()} is not a Kyoto block")
        attrs = require_attributes(block, "kp", _ATTRS, "Kyoto")
        registry = block.space.issuing_registry.removeprefix("KP-")
        value = KyotoBlock(
            registry=registry,
            unit_type=attrs["unit_type"],
            supplementary=attrs["supplementary"],
            start=block.start,
            end=block.end,
            original_cp=attrs["original_cp"],
            applicable_cp=attrs["applicable_cp"],
            lulucf=attrs["lulucf"],
            project=block.project_id,
            track=attrs["track"],
        )
        expiry = attrs.get(EXPIRY_ATTRIBUTE)
        if expiry is None:
            return value
        try:
            return dataclasses.replace(value, expiry=dt.date.fromisoformat(expiry))
        except ValueError:
            raise SerialError(
                f"{block.describe()} has the attribute kp.{EXPIRY_ATTRIBUTE} {expiry!r}, which is not an ISO date"
            ) from None

    def handles(self, block: UnitBlock) -> bool:
        """True for Kyoto units."""
        return block.space.unit_kind == UNIT_KIND and block.space.issuing_registry.startswith("KP-")

    def carried(self, block: UnitBlock) -> frozenset[str]:
        """Range, registry, project and the ``kp.*`` attributes, but not the vintage or the expiry date."""
        carried = carried_fields(block, "kp", ("project_id",)) - {"vintage"}
        return carried - {f"attributes.kp.{EXPIRY_ATTRIBUTE}"}


GRAMMAR = KyotoGrammar()
