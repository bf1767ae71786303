"""``cadt-v2-*``: the CAD Trust v2 data model in its JSON shape (snake_case fields, one object per record).

* ``cadt-v2-units``: units (``unit_serial_id``, ``unit_start_block``, ``unit_end_block``, ``unit_count``,
  ``unit_vintage_year``, ``unit_status``, ...). The serial ID is parsed by grammar; the start and end
  blocks and the count must agree with it.
* ``cadt-v2-aef-t1`` ... ``cadt-v2-aef-t5``: the AEF tables, keyed as CAD Trust keys them (field names,
  typos included, are CAD Trust's own; see `adapters.aef_columns`). CAD Trust's T5 holds only an entity's ID
  and country of incorporation: mapping a full AEF row to it reports the other columns lost.

CAD Trust bookkeeping fields (its own row IDs, foreign keys, timestamps) are accepted and reported as
dropped: the gateway's records do not hold them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from adapters import tabular
from adapters.aef_codec import cadt_key, held_blocks, parse_row, render_row
from adapters.aef_columns import CADT_TABLES, RECORD_TYPES, Kind, Table, columns
from adapters.base import AdapterInfo, RawRecord, Rendered, schemas
from adapters.context import MappingContext
from adapters.fields import MAX_DIGITS, FieldReader
from adapters.flat import block_losses
from adapters.serials import SerialError, grammar_for_block, grammars_with, parse_block, spell_block
from gateway.domain.blocks import UnitBlock
from gateway.domain.canonical import RegistryUnit
from gateway.domain.mapping import IssueCode, RecordRejected

_DECIMAL_ZERO = re.compile(r"(0|[1-9][0-9]*)\.0+")
_BOOKKEEPING = frozenset(
    {
        "created_at",
        "updated_at",
        "cad_trust_unit_id",
        "cad_trust_project_id",
        "cad_trust_aef_t1_submission_id",
        "cad_trust_aef_t2_authorizations_id",
        "cad_trust_aef_t5_authorized_entities_id",
        "cad_trust_issuance_id",
        "org_uid",
    }
)

UNITS_NAME = "cadt-v2-units"
_UNIT_TEXT = {
    "unit_type": "unit_type",
    "unit_status": "status",
    "unit_status_reason": "status_reason",
    "unit_retirement_detail": "retirement_detail",
    "unit_retirement_beneficiary": "retirement_beneficiary",
    "unit_retirement_beneficiary_id": "retirement_beneficiary_id",
    "unit_link": "link",
    "unit_metric": "metric",
    "unit_current_owner": "current_owner",
    "unit_itmos_reference_id": "itmo_reference_id",
    "marketplace": "marketplace",
    "marketplace_link": "marketplace_link",
    "marketplace_identifier": "marketplace_identifier",
    "cad_trust_unit_id": "record_id",
    "org_uid": "org_uid",
    "cad_trust_issuance_id": "issuance_record_id",
}
UNIT_FIELDS = (
    "cad_trust_unit_id",
    "org_uid",
    "unit_serial_id",
    "unit_start_block",
    "unit_end_block",
    "unit_count",
    "unit_type",
    "unit_vintage_year",
    "unit_status",
    "unit_status_reason",
    "unit_status_date",
    "unit_retirement_detail",
    "unit_retirement_beneficiary",
    "unit_retirement_beneficiary_id",
    "unit_link",
    "unit_metric",
    "unit_current_owner",
    "unit_itmos_reference_id",
    "marketplace",
    "marketplace_link",
    "marketplace_identifier",
    "cad_trust_issuance_id",
)
_UNIT_WIRE = {
    "block.start": "unit_start_block",
    "block.end": "unit_end_block",
    "block.vintage": "unit_vintage_year",
    "block": "unit_serial_id",
    "status_date": "unit_status_date",
    **{v: k for k, v in _UNIT_TEXT.items()},
}


def _json_only(adapter: str, fmt: str) -> None:
    if fmt != "json":
        raise tabular.unsupported(adapter, fmt, ("json",))


def _normalise_decimal(value: object) -> object:
    """CAD Trust stores counts as decimals: ``"100.00"`` is the whole number 100."""
    if isinstance(value, str) and _DECIMAL_ZERO.fullmatch(value):
        whole = value.split(".")[0]
        return int(whole) if len(whole) <= MAX_DIGITS else whole  # too long: the field reader says so
    return value


class CadtUnitsAdapter:
    """CAD Trust v2 units (see the module docstring)."""

    info = AdapterInfo(
        name=UNITS_NAME,
        description="CAD Trust v2 units (unit_serial_id, unit_start_block, unit_end_block, unit_count, ...)",
        reads=schemas(UNITS_NAME, ("json",)),
        writes=schemas(UNITS_NAME, ("json",)),
        record="RegistryUnit",
    )
    record_type: type[Any] = RegistryUnit

    def decode(self, data: bytes, fmt: str) -> list[RawRecord]:
        """A JSON array of unit objects."""
        _json_only(self.info.name, fmt)
        return tabular.read_json_records(data)

    def parse(self, raw: RawRecord, ctx: MappingContext) -> RegistryUnit:
        """A `RegistryUnit` whose block comes from ``unit_serial_id``, checked against the other block fields."""
        r = FieldReader({k: _normalise_decimal(v) if k == "unit_count" else v for k, v in raw.items()})
        r.forbid_unknown(frozenset(UNIT_FIELDS))
        serial = r.text("unit_serial_id")
        start_text = r.text("unit_start_block")
        end_text = r.text("unit_end_block")
        count = r.quantity("unit_count")
        vintage = r.year("unit_vintage_year")
        status_date = r.date_iso("unit_status_date", required=False)
        texts = {field: r.text(key, required=False) for key, field in _UNIT_TEXT.items()}
        block: UnitBlock | None = None
        if serial and vintage is not None:
            try:
                block = parse_block(
                    serial,
                    vintage=vintage,  # the unit's own: the context's is for serials that carry none
                    grammars=grammars_with(ctx.cea_format, ctx.ccer_format),
                )
            except SerialError as error:
                r.fail("unit_serial_id", str(error), IssueCode.BAD_PATTERN)
        if block is not None:
            if block.vintage != vintage:
                r.fail(
                    "unit_vintage_year",
                    f"{vintage} differs from the serial's vintage {block.vintage}",
                    IssueCode.INCONSISTENT,
                )
            for key, text, want in (
                ("unit_start_block", start_text, block.start),
                ("unit_end_block", end_text, block.end),
            ):
                if text and text != str(want):
                    r.fail(key, f"{text!r} differs from the serial's {want}", IssueCode.INCONSISTENT)
            if count is not None and count != block.quantity:
                r.fail(
                    "unit_count",
                    f"{count} differs from the {block.quantity} units the serial names",
                    IssueCode.QUANTITY_MISMATCH,
                )
        r.check()
        assert block is not None
        return RegistryUnit(block=block, status_date=status_date, **texts)

    def render(self, record: RegistryUnit, ctx: MappingContext) -> Rendered:
        """A unit object; block facts its registry's serial cannot spell are reported lost."""
        block = record.block
        grammars = grammars_with(ctx.cea_format, ctx.ccer_format)
        try:
            serial = spell_block(block, grammars)
            carried = grammar_for_block(block, grammars).carried(block)
        except SerialError as error:
            raise RecordRejected.one("unit_serial_id", str(error), IssueCode.NO_MAPPING) from None
        row: dict[str, object] = {
            "unit_serial_id": serial,
            "unit_start_block": str(block.start),
            "unit_end_block": str(block.end),
            "unit_count": block.quantity,
            "unit_vintage_year": block.vintage,
            "unit_status_date": record.status_date.isoformat() if record.status_date else None,
        }
        for key, field in _UNIT_TEXT.items():
            value = getattr(record, field)
            row[key] = value or None
        ordered = {key: row.get(key) for key in UNIT_FIELDS}
        return Rendered(ordered, tuple(block_losses(block, carried)))

    def encode(self, rows: Sequence[RawRecord], fmt: str) -> bytes:
        """A JSON array."""
        _json_only(self.info.name, fmt)
        return tabular.write_json_records(rows)

    def wire_name(self, field: str) -> str:
        """Canonical path to CAD Trust field."""
        return _UNIT_WIRE.get(field, field)

    def dropped(self, raw: RawRecord) -> tuple[str, ...]:
        """Nothing: every unit field is held."""
        return ()

    def blocks(self, record: RegistryUnit) -> tuple[tuple[str, UnitBlock], ...]:
        """The unit's block."""
        return (("unit_serial_id", record.block),)


class CadtAefAdapter:
    """One AEF table in CAD Trust v2's JSON shape."""

    def __init__(self, table: Table, number: int) -> None:
        self.table = table
        name = f"cadt-v2-aef-t{number}"
        self.info = AdapterInfo(
            name=name,
            description=f"CAD Trust v2 AEF table T{number} ({table.value}) in CAD Trust's JSON shape",
            reads=schemas(name, ("json",)),
            writes=schemas(name, ("json",)),
            record=RECORD_TYPES[table].__name__,
        )
        self.record_type: type[Any] = RECORD_TYPES[table]
        self._own_id = f"cad_trust_{CADT_TABLES[table]}_id"
        self._quantities = frozenset(c.cadt for c in columns(table) if c.kind is Kind.QUANTITY and c.cadt)
        self._keys = frozenset(c.cadt for c in columns(table) if c.cadt)
        self._wire = {c.field: c.cadt for c in columns(table) if c.field and c.cadt}

    def decode(self, data: bytes, fmt: str) -> list[RawRecord]:
        """A JSON array of row objects."""
        _json_only(self.info.name, fmt)
        return tabular.read_json_records(data)

    def _row(self, raw: Mapping[str, object]) -> dict[str, object]:
        return {
            k: _normalise_decimal(v) if k in self._quantities else v
            for k, v in raw.items()
            if k not in _BOOKKEEPING and k != self._own_id
        }

    def parse(self, raw: RawRecord, ctx: MappingContext) -> Any:
        """The canonical row."""
        record, _ = parse_row(self.table, self._row(raw), ctx, key_of=cadt_key, iso_dates=True)
        return record

    def render(self, record: Any, ctx: MappingContext) -> Rendered:
        """A CAD Trust row; columns CAD Trust lacks are reported lost."""
        row, lost, notes = render_row(self.table, record, ctx, key_of=cadt_key, iso_dates=True)
        return Rendered(row, lost, notes)

    def encode(self, rows: Sequence[RawRecord], fmt: str) -> bytes:
        """A JSON array."""
        _json_only(self.info.name, fmt)
        return tabular.write_json_records(rows)

    def wire_name(self, field: str) -> str:
        """Canonical field to CAD Trust key."""
        return self._wire.get(field, field)

    def dropped(self, raw: RawRecord) -> tuple[str, ...]:
        """CAD Trust bookkeeping fields present in ``raw``."""
        return tuple(
            sorted(k for k, v in raw.items() if (k in _BOOKKEEPING or k == self._own_id) and v not in (None, ""))
        )

    def blocks(self, record: Any) -> tuple[tuple[str, UnitBlock], ...]:
        """The ITMOs of a T4 (Holdings) row (`adapters.aef_codec.held_blocks`); none for the other tables."""
        return held_blocks(self.table, record, cadt_key)


UNITS = CadtUnitsAdapter()
T1 = CadtAefAdapter(Table.SUBMISSION, 1)
T2 = CadtAefAdapter(Table.AUTHORIZATIONS, 2)
T3 = CadtAefAdapter(Table.ACTIONS, 3)
T4 = CadtAefAdapter(Table.HOLDINGS, 4)
T5 = CadtAefAdapter(Table.AUTHORIZED_ENTITIES, 5)
