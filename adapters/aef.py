"""``aef-*``: the five UNFCCC AEF tables as CSV and XLSX, and the whole report as one workbook.

One adapter per table (``aef-submission``, ``aef-authorizations``, ``aef-actions``, ``aef-holdings``,
``aef-authorized-entities``); all of them read and write through `adapters.aef_columns`. A file's header
must hold the nomenclature's columns, in the nomenclature's order. `write_workbook` and `read_workbook`
handle a report of all five tables, one sheet per table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapters import tabular
from adapters.aef_codec import parse_row, render_row
from adapters.aef_columns import RECORD_TYPES, Table, columns, headers
from adapters.base import AdapterInfo, RawRecord, Rendered, schemas
from adapters.context import MappingContext
from gateway.domain.blocks import UnitBlock
from gateway.domain.canonical import AefReport
from gateway.domain.mapping import IssueCode, MappingIssue, Problem, RecordRejected

FORMATS = ("csv", "xlsx")
SCHEMA_NAMES: dict[Table, str] = {
    Table.SUBMISSION: "aef-submission",
    Table.AUTHORIZATIONS: "aef-authorizations",
    Table.ACTIONS: "aef-actions",
    Table.HOLDINGS: "aef-holdings",
    Table.AUTHORIZED_ENTITIES: "aef-authorized-entities",
}
_REPORT_FIELDS: dict[Table, str] = {
    Table.SUBMISSION: "submission",
    Table.AUTHORIZATIONS: "authorizations",
    Table.ACTIONS: "actions",
    Table.HOLDINGS: "holdings",
    Table.AUTHORIZED_ENTITIES: "authorized_entities",
}


class AefTableAdapter:
    """One AEF table as CSV or a one-sheet XLSX workbook."""

    def __init__(self, table: Table) -> None:
        self.table = table
        name = SCHEMA_NAMES[table]
        self.info = AdapterInfo(
            name=name,
            description=f"UNFCCC AEF table '{table.value}' ({len(columns(table))} nomenclature columns)",
            reads=schemas(name, FORMATS),
            writes=schemas(name, FORMATS),
            record=RECORD_TYPES[table].__name__,
        )
        self.record_type: type[Any] = RECORD_TYPES[table]
        self._fields = {c.field: c.header for c in columns(table) if c.field}
        self._fields["timeframe_end"] = self._fields.get("timeframe_start", "timeframe_end")

    def decode(self, data: bytes, fmt: str) -> list[RawRecord]:
        """Rows of a CSV file or of the table's sheet (or the only sheet) of a workbook."""
        if fmt == "csv":
            header, rows = tabular.read_csv_table(data)
            body: Sequence[Sequence[object]] = rows
        elif fmt == "xlsx":
            header, body = tabular.read_xlsx_sheet(data, self.table.value)
        else:
            raise tabular.unsupported(self.info.name, fmt, FORMATS)
        tabular.check_header(header, headers(self.table), exact_order=True)
        return tabular.records_from_table(header, body)

    def parse(self, raw: RawRecord, ctx: MappingContext) -> Any:
        """The canonical row."""
        record, _ = parse_row(self.table, raw, ctx)
        return record

    def render(self, record: Any, ctx: MappingContext) -> Rendered:
        """The row keyed by header; nomenclature extensions are noted."""
        row, lost, notes = render_row(self.table, record, ctx)
        return Rendered(row, lost, notes)

    def encode(self, rows: Sequence[RawRecord], fmt: str) -> bytes:
        """CSV, or a workbook with one sheet named after the table."""
        cols = headers(self.table)
        matrix = [[row.get(h) for h in cols] for row in rows]
        if fmt == "csv":
            return tabular.write_csv_table(cols, matrix)
        if fmt == "xlsx":
            return tabular.write_xlsx([(self.table.value, cols, matrix)])
        raise tabular.unsupported(self.info.name, fmt, FORMATS)

    def dropped(self, raw: RawRecord) -> tuple[str, ...]:
        """Nothing: every accepted field is held."""
        return ()

    def wire_name(self, field: str) -> str:
        """Canonical field to nomenclature header."""
        return self._fields.get(field, field)

    def blocks(self, record: Any) -> tuple[tuple[str, UnitBlock], ...]:
        """AEF rows name ITMO blocks by serial; duplicates are found by `check_report`, not per batch."""
        return ()


ADAPTERS: dict[Table, AefTableAdapter] = {table: AefTableAdapter(table) for table in Table}
SUBMISSION = ADAPTERS[Table.SUBMISSION]
AUTHORIZATIONS = ADAPTERS[Table.AUTHORIZATIONS]
ACTIONS = ADAPTERS[Table.ACTIONS]
HOLDINGS = ADAPTERS[Table.HOLDINGS]
AUTHORIZED_ENTITIES = ADAPTERS[Table.AUTHORIZED_ENTITIES]


def write_workbook(report: AefReport, ctx: MappingContext | None = None) -> bytes:
    """The report as one XLSX workbook, a sheet per table in nomenclature order, every row checked."""
    return tabular.write_xlsx(_sheets(report, ctx or MappingContext()))


def write_csv_tables(report: AefReport, ctx: MappingContext | None = None) -> dict[Table, bytes]:
    """The report as five CSV files, one per table, every row checked (all-or-nothing, like the workbook)."""
    return {
        Table(title): tabular.write_csv_table(cols, rows)
        for title, cols, rows in _sheets(report, ctx or MappingContext())
    }


def _sheets(report: AefReport, ctx: MappingContext) -> list[tuple[str, tuple[str, ...], list[list[object]]]]:
    sheets = []
    problems: list[Problem] = []
    for table in Table:
        cols = headers(table)
        matrix: list[list[object]] = []
        for index, record in enumerate(getattr(report, _REPORT_FIELDS[table]), start=1):
            try:
                row, _, _ = render_row(table, record, ctx)
            except RecordRejected as rejected:
                problems.extend(
                    Problem(f"{table.value}[{index}].{p.field}", p.message, p.code) for p in rejected.problems
                )
                continue
            matrix.append([row.get(h) for h in cols])
        sheets.append((table.value, cols, matrix))
    if problems:
        raise RecordRejected(problems)
    return sheets


def read_workbook(data: bytes, ctx: MappingContext | None = None) -> AefReport:
    """A report from a workbook with one sheet per table; every problem is named by sheet, row and column."""
    ctx = ctx or MappingContext()
    sheets = tabular.read_xlsx(data)
    problems: list[Problem] = []
    tables: dict[str, tuple[Any, ...]] = {}
    for table in Table:
        if table.value not in sheets:
            problems.append(Problem(table.value, "the workbook has no sheet for this table", IssueCode.MISSING_FIELD))
            continue
        header, body = sheets[table.value]
        try:
            tabular.check_header(header, headers(table), exact_order=True)
        except RecordRejected as rejected:
            problems.extend(Problem(f"{table.value}.{p.field}", p.message, p.code) for p in rejected.problems)
            continue
        records = []
        for index, raw in enumerate(tabular.records_from_table(header, body), start=1):
            try:
                record, _ = parse_row(table, raw, ctx)
            except RecordRejected as rejected:
                problems.extend(
                    Problem(f"{table.value}[{index}].{p.field}", p.message, p.code) for p in rejected.problems
                )
                continue
            records.append(record)
        tables[_REPORT_FIELDS[table]] = tuple(records)
    if problems:
        raise RecordRejected(problems)
    return AefReport(**tables)


def check_nomenclature(
    report: AefReport, ctx: MappingContext | None = None, *, strict: bool = True
) -> list[MappingIssue]:
    """Strict nomenclature checking: every value outside the nomenclature, extension codes included.

    Each finding is a `MappingIssue` whose position is the 1-based row and whose field is
    ``<table>.<column>``. With ``strict`` False only refusals are returned (extensions are not).
    """
    ctx = ctx or MappingContext()
    found: list[MappingIssue] = []
    for table in Table:
        for index, record in enumerate(getattr(report, _REPORT_FIELDS[table]), start=1):
            try:
                _, _, notes = render_row(table, record, ctx)
            except RecordRejected as rejected:
                found.extend(
                    MappingIssue(index, f"{table.value}.{p.field}", p.message, p.code) for p in rejected.problems
                )
                continue
            if strict:
                found.extend(MappingIssue(index, f"{table.value}.{n.field}", n.message, n.code) for n in notes)
    return found
