"""Reading and writing AEF rows from the column table, for the AEF files and the CAD Trust JSON alike.

A row is read column by column as `adapters.aef_columns.COLUMNS` says, then checked as a whole: the
action-type rules, the underlying-unit columns (all or none), the ITMO identifiers against the row, and the
quantity against the ITMO serial range. Writing builds the row and reads it back, so that nothing the
reader would refuse is ever written.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import fields as dataclass_fields
from typing import Any

from adapters import vocab
from adapters.aef_columns import DISCRIMINATOR, NOT_APPLICABLE, RECORD_TYPES, Column, Kind, Table, columns
from adapters.context import MappingContext
from adapters.fields import FieldReader, check_action_instant, format_dmy, format_iso_ms
from adapters.serials.base import SerialError
from adapters.serials.itmo import GRAMMAR as ITMO_GRAMMAR
from adapters.serials.itmo import ItmoBlockId, format_first_last_id, parse_first_last_id
from gateway.domain.blocks import UnitBlock
from gateway.domain.canonical import (
    ACTION_FIELDS,
    ActionSubtype,
    AefAction,
    AefHolding,
    AefSector,
    Metric,
    MitigationType,
)
from gateway.domain.mapping import IssueCode, Problem, RecordRejected
from gateway.domain.records import ActionType, FirstTransferDefinition, Purpose

KeyOf = Callable[[Column], str]
_TIMEFRAME = re.compile(r"([0-9]{4}) - ([0-9]{4})")
_ACTION_NAMES = frozenset(ACTION_FIELDS)
OIMP_DEFINITIONS = frozenset(FirstTransferDefinition) - {FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER}


def held_blocks(table: Table, record: Any, key_of: KeyOf) -> tuple[tuple[str, UnitBlock], ...]:
    """The ITMOs a Holdings row holds, for the batch's duplicate check: a snapshot of holdings names each unit
    once, so two rows naming one ITMO would count it twice. An Actions row names none (the same ITMOs are
    first transferred, then used: one row each), nor does a row of the other tables."""
    if table is not Table.HOLDINGS or not isinstance(record, AefHolding):
        return ()
    block = itmo_block(record)
    if block is None:  # pragma: no cover - the row's reader refused such serials
        return ()
    first_id = next(c for c in columns(table) if c.field == "itmo_first_serial")
    return ((key_of(first_id), block),)


def itmo_block_id(record: AefAction | AefHolding) -> ItmoBlockId:
    """The ITMO identifiers an Actions or Holdings row names by its First ID and Last ID, with their approach,
    registry, first transferring Party and vintage."""
    return ItmoBlockId(
        record.cooperative_approach,
        record.party_registry,
        record.first_transferring_party,
        record.itmo_first_serial,
        record.itmo_last_serial,
        record.vintage,
    )


def itmo_block(record: AefAction | AefHolding) -> UnitBlock | None:
    """The block of ITMOs an Actions or Holdings row names by its First ID and Last ID (None if it names none)."""
    try:
        return ITMO_GRAMMAR.to_block(itmo_block_id(record))
    except SerialError:
        return None


def header_key(column: Column) -> str:
    """Rows of the AEF files are keyed by nomenclature header."""
    return column.header


def cadt_key(column: Column) -> str:
    """Rows of the CAD Trust JSON are keyed by CAD Trust field."""
    return column.cadt


def parse_row(
    table: Table,
    raw: Mapping[str, object],
    ctx: MappingContext,
    *,
    key_of: KeyOf = header_key,
    iso_dates: bool = False,
    build: bool = True,
) -> tuple[Any, tuple[Problem, ...]]:
    """The canonical record of one row (None when not ``build``ing, only checking), and its notes."""
    cols = tuple(c for c in columns(table) if key_of(c))
    if key_of is header_key:
        raw = _without_na(raw, cols)
    r = FieldReader(raw)
    r.forbid_unknown(frozenset(key_of(c) for c in cols))
    discriminator = _discriminator(table, cols, r, key_of)
    values: dict[str, object] = {}
    notes: list[Problem] = []
    deferred: list[Column] = []
    for col in cols:
        key = key_of(col)
        required = col.required
        if col.only_for is not None:
            if discriminator is None:
                required = False
            elif discriminator not in col.only_for:
                if r.present(key):
                    limit = ", ".join(sorted(col.only_for))
                    r.fail(
                        key,
                        f"applies only when {DISCRIMINATOR[table].replace('_', ' ')} is {limit}; "
                        f"it must be NA (or blank) for {discriminator!r}",
                        IssueCode.NOT_APPLICABLE,
                    )
                if col.field:
                    values[col.field] = None if col.kind in (Kind.PURPOSE, Kind.YEAR, Kind.FIRST_TRANSFER) else ""
                continue
        if col.kind in (Kind.ITMO_FIRST, Kind.ITMO_LAST):
            deferred.append(col)
            continue
        _read(col, key, required, r, values, notes, ctx, iso_dates)
    parsed = {col.field for col in deferred if _read_itmo(col, key_of(col), r, values)}
    _check_row(table, cols, key_of, r, values, parsed)
    r.check()
    if not build:
        return None, tuple(notes)
    record_type = RECORD_TYPES[table]
    absent = [c.field for c in columns(table) if c.field and c.required and not c.only_for and not key_of(c)]
    if absent:
        raise RecordRejected(
            Problem(
                name,
                f"this schema has no column for {name.replace('_', ' ')}, which a {table.value} row "
                "requires; map from a schema that carries it",
                IssueCode.NO_MAPPING,
            )
            for name in absent
        )
    if record_type is AefAction:
        return AefAction.of(**{k: v for k, v in values.items() if k in _ACTION_NAMES}), tuple(notes)
    names = {f.name for f in dataclass_fields(record_type)}
    return record_type(**{k: v for k, v in values.items() if k in names}), tuple(notes)


def render_row(
    table: Table, record: Any, ctx: MappingContext, *, key_of: KeyOf = header_key, iso_dates: bool = False
) -> tuple[dict[str, object], tuple[str, ...], tuple[Problem, ...]]:
    """The row of a canonical record (checked by reading it back), the fields lost, and the notes."""
    row: dict[str, object] = {}
    lost: list[str] = []
    for col in columns(table):
        key = key_of(col)
        value = _render_value(col, record, ctx, iso_dates) if col.field else None
        if not key:
            if value not in (None, "", ()):
                lost.append(col.field)
            continue
        row[key] = (
            NOT_APPLICABLE if key_of is header_key and value in (None, "") and col.kind is not Kind.PLATFORM else value
        )
    try:
        _, notes = parse_row(table, row, ctx, key_of=key_of, iso_dates=iso_dates, build=False)
    except RecordRejected as rejected:
        raise RecordRejected(
            Problem(p.field, f"the {table.value} row cannot be written: {p.message}", p.code) for p in rejected.problems
        ) from None
    return row, tuple(lost), notes


def _without_na(raw: Mapping[str, object], cols: tuple[Column, ...]) -> Mapping[str, object]:
    """``raw`` with the cells that say ``NA`` (does not apply) emptied; the platform columns keep theirs, which
    the reader then refuses (they stay blank)."""
    platform = {header_key(c) for c in cols if c.kind is Kind.PLATFORM}
    return {k: (None if v == NOT_APPLICABLE and k not in platform else v) for k, v in raw.items()}


def _discriminator(table: Table, cols: tuple[Column, ...], r: FieldReader, key_of: KeyOf) -> str | None:
    name = DISCRIMINATOR.get(table)
    col = next((c for c in cols if c.field == name), None)
    if col is None:
        return None
    value = r.raw.get(key_of(col))
    kind = ActionType if col.kind is Kind.ACTION_TYPE else Purpose
    return value if isinstance(value, str) and value in {m.value for m in kind} else None


def _read(
    col: Column,
    key: str,
    required: bool,
    r: FieldReader,
    values: dict[str, object],
    notes: list[Problem],
    ctx: MappingContext,
    iso_dates: bool,
) -> None:
    kind = col.kind
    value: object
    if kind is Kind.PLATFORM:
        if r.present(key):
            r.fail(key, "is filled by the UNFCCC platform: leave it blank", IssueCode.PLATFORM_COLUMN)
        return
    if kind is Kind.NON_GHG:
        if r.present(key):
            r.fail(
                key,
                "non-GHG metrics are out of scope (decision 2/CMA.3 annex para 9): leave it blank",
                IssueCode.UNSUPPORTED,
            )
        return
    if kind is Kind.TEXT or kind is Kind.UNDERLYING_UNIT:
        value = r.text(key, required=required)
    elif kind is Kind.TEXTS:
        value = r.texts(key, required=required)
    elif kind is Kind.PARTY:
        value = r.party(key, required=required)
    elif kind is Kind.PARTIES:
        value = r.parties(key, required=required)
    elif kind is Kind.COOPERATIVE_APPROACH:
        value = r.cooperative_approach(key, required=required)
    elif kind is Kind.PARTY_REGISTRY:
        value = r.party_registry(key, required=required)
    elif kind is Kind.VERSION:
        value = r.text(key, required=required, pattern=vocab.SUBMISSION_VERSION, shape="X.Y (the first is 1.0)")
    elif kind is Kind.YEAR:
        value = r.year(key, required=required)
    elif kind is Kind.QUANTITY:
        value = r.quantity(key, required=required)
    elif kind is Kind.DATE:
        value = r.date_iso(key, required=required) if iso_dates else r.date_dmy(key, required=required)
    elif kind is Kind.INSTANT:
        value = r.instant(key, required=required)
    elif kind is Kind.ACTION_TYPE:
        value = r.choice(key, ActionType, required=required)
    elif kind is Kind.ACTION_SUBTYPE:
        value = r.choice(key, ActionSubtype, required=required)
    elif kind is Kind.PURPOSE:
        value = r.choice(key, Purpose, required=required)
    elif kind is Kind.MITIGATION_TYPE:
        value = r.choice(key, MitigationType, required=required)
    elif kind is Kind.SECTORS:
        value = r.choices(key, AefSector, required=required)
    elif kind is Kind.METRIC:
        value = r.choice(key, Metric, required=required)
        if value is Metric.NON_GHG:
            r.fail(
                key,
                "non-GHG metrics are out of scope (decision 2/CMA.3 annex para 9); only GHG is supported",
                IssueCode.UNSUPPORTED,
            )
    elif kind is Kind.FIRST_TRANSFER:
        value = r.choice(key, FirstTransferDefinition, required=required)
        if value is FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER:
            allowed = "; ".join(repr(d.value) for d in OIMP_DEFINITIONS)
            r.fail(key, f"an OIMP authorization defines first transfer as one of {allowed}", IssueCode.BAD_VALUE)
    elif kind is Kind.TIMEFRAME:
        text = r.text(key, required=required, pattern=_TIMEFRAME, shape="YYYY - YYYY")
        match = _TIMEFRAME.fullmatch(text)
        first, last = (int(match[1]), int(match[2])) if match else (0, 0)
        if match and min(first, last) < 1000:
            # As every year the AEF columns hold (`FieldReader.year`): 0999 would be spelled back as 999.
            r.fail(key, f"{text!r} holds a year before 1000: a year is four digits from 1000", IssueCode.BAD_VALUE)
        elif match and last < first:
            r.fail(key, f"the timeframe ends ({last}) before it starts ({first})", IssueCode.BLOCK_ORDER)
        values["timeframe_start"], values["timeframe_end"] = first, last
        return
    elif kind is Kind.UNDERLYING_REGISTRY:
        value = r.text(key, required=required)
        if value and value not in vocab.NOMENCLATURE_UNDERLYING_REGISTRIES:
            if value in dict(ctx.extension_codes).values():
                notes.append(
                    Problem(
                        key,
                        f"{value!r} is a configured extension code, not an underlying registry of the AEF nomenclature",
                        IssueCode.NOMENCLATURE_EXTENSION,
                    )
                )
            else:
                allowed = ", ".join(sorted(vocab.NOMENCLATURE_UNDERLYING_REGISTRIES))
                r.fail(
                    key,
                    f"{value!r} is not in the nomenclature ({allowed}); configure it as an extension code "
                    "if the units come from a registry the nomenclature lacks",
                    IssueCode.BAD_VALUE,
                )
    else:  # pragma: no cover - every kind is handled above
        raise AssertionError(kind)
    values[col.field] = value


def _read_itmo(col: Column, key: str, r: FieldReader, values: dict[str, object]) -> bool:
    """Read an ITMO first or last ID into its serial (0 when it cannot be read); whether it was read."""
    text = r.text(key)
    parts = {
        "cooperative_approach": values.get("cooperative_approach"),
        "registry": values.get("party_registry"),
        "party": values.get("first_transferring_party"),
        "vintage": values.get("vintage"),
    }
    values[col.field] = 0
    if not text or not all(parts.values()):
        return False
    try:
        values[col.field] = parse_first_last_id(text, **parts)  # type: ignore[arg-type]
    except SerialError as error:
        r.fail(key, str(error), IssueCode.BAD_PATTERN)
        return False
    return True


def _check_row(
    table: Table,
    cols: tuple[Column, ...],
    key_of: KeyOf,
    r: FieldReader,
    values: dict[str, object],
    parsed_itmo: set[str],
) -> None:
    """The checks across a row's fields; ``parsed_itmo`` are the ITMO serial fields read from their IDs (0 stands
    for the others, and serial 0 is a serial)."""
    by_field = {c.field: key_of(c) for c in cols if c.field}
    if table in (Table.ACTIONS, Table.HOLDINGS):
        trio = ("underlying_registry", "first_unit_id", "last_unit_id")
        given = [f for f in trio if values.get(f)]
        if given and len(given) < 3:
            for name in trio:
                if name not in given and name in by_field:
                    r.fail(
                        by_field[name],
                        "the underlying-unit columns are all filled or all blank",
                        IssueCode.INCONSISTENT,
                    )
        first, last, quantity = values.get("itmo_first_serial"), values.get("itmo_last_serial"), values.get("quantity")
        if (
            isinstance(first, int)
            and isinstance(last, int)
            and {"itmo_first_serial", "itmo_last_serial"} <= parsed_itmo
        ):
            if last < first:
                r.fail(
                    by_field["itmo_last_serial"],
                    f"the last ITMO serial {last} precedes the first {first}",
                    IssueCode.BLOCK_ORDER,
                )
            elif isinstance(quantity, int) and quantity != last - first + 1:
                r.fail(
                    by_field["quantity"],
                    f"{quantity} differs from the {last - first + 1} ITMOs from serial {first} to {last}",
                    IssueCode.QUANTITY_MISMATCH,
                )
    if table is Table.SUBMISSION:
        first_year, last_year = values.get("ndc_first_year"), values.get("ndc_last_year")
        if isinstance(first_year, int) and isinstance(last_year, int) and last_year < first_year:
            r.fail(
                by_field["ndc_last_year"],
                f"the NDC period ends ({last_year}) before it starts ({first_year})",
                IssueCode.BLOCK_ORDER,
            )
    if table is Table.ACTIONS:
        _check_applies(r, by_field, values)
        instant = values.get("action_date")
        if isinstance(instant, dt.datetime) and (why := check_action_instant(instant)):
            r.fail(by_field["action_date"], why, IssueCode.BAD_DATE)


def _check_applies(r: FieldReader, by_field: Mapping[str, str], values: Mapping[str, object]) -> None:
    """The acquiring Party of a transfer or a first transfer to another Party, and the year of a use towards the
    NDC, are required; a first transfer with no other Party, or a use for another purpose, has none."""
    action, subtype, purpose = values.get("action_type"), values.get("action_subtype"), values.get("purpose")
    to_a_party = action is ActionType.TRANSFER or (
        action is ActionType.FIRST_TRANSFER and subtype is ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY
    )
    rules = (
        ("acquiring_party", action in (ActionType.TRANSFER, ActionType.FIRST_TRANSFER), to_a_party,
         "a transfer or a first transfer to another Party"),
        ("ndc_year_of_use", action is ActionType.USE, purpose is Purpose.NDC, "a use towards the NDC (purpose NDC)"),
    )  # fmt: skip
    for name, limited, needed, what in rules:
        key = by_field.get(name)
        if key is None or not limited:
            continue
        given = values.get(name) not in (None, "")
        if needed and not given:
            r.fail(key, f"is required for {what}", IssueCode.MISSING_FIELD)
        elif given and not needed:
            r.fail(key, f"applies only to {what}: it must be NA here", IssueCode.NOT_APPLICABLE)


def _render_value(col: Column, record: Any, ctx: MappingContext, iso_dates: bool) -> object:
    kind = col.kind
    value = getattr(record, col.field)
    if value is None or value == "" or value == ():
        return None
    if kind in (Kind.ITMO_FIRST, Kind.ITMO_LAST):
        return format_first_last_id(
            value,
            cooperative_approach=record.cooperative_approach,
            registry=record.party_registry,
            party=record.first_transferring_party,
            vintage=record.vintage,
            style=ctx.first_id_style,
        )
    if kind is Kind.DATE:
        return value.isoformat() if iso_dates else format_dmy(value)
    if kind is Kind.INSTANT:
        return format_iso_ms(value) if check_action_instant(value) is None else value.isoformat()
    if kind is Kind.TIMEFRAME:
        return f"{record.timeframe_start:04d} - {record.timeframe_end:04d}"
    if kind in (Kind.TEXTS, Kind.PARTIES, Kind.SECTORS):
        return vocab.LIST_SEPARATOR.join(str(v) for v in value)
    if isinstance(value, str):
        return str(value)
    return value
