"""``aef-*``: the five UNFCCC AEF tables as CSV and XLSX, and the whole report as one workbook.

One adapter per table (``aef-submission``, ``aef-authorizations``, ``aef-actions``, ``aef-holdings``,
``aef-authorized-entities``); all of them read and write through `adapters.aef_columns`. A file's header
must hold the nomenclature's columns, in the nomenclature's order. `write_workbook` and `read_workbook`
handle a report of all five tables, one sheet per table.

A report of a million actions is written as it comes (`AefFiles`, `AefTables`): rows are rendered batch by
batch straight into the workbook's sheets (`adapters.tabular.XlsxWriter`) or the CSV files, never held whole.
Writing is all-or-nothing: every row is checked as it is rendered, the files are written under temporary names
beside their targets, and only a report with no refused row is put in place (renamed); a refused report leaves
nothing behind and raises `RecordRejected` naming each problem ``<table>[<row>].<column>``.

Rendering a row through `render_row` reads it back (so that nothing the reader would refuse is written), which
costs far more than writing it. The Actions and Holdings rows of one block-independent part (an action's
header less its date; a holding's approach, authorization, registries, metric and GWP values) differ only in
the block's columns, so `_BlockRows` renders the first row of each such part through `render_row`, checks that
spelling the block's columns into it gives the same row, and from then on spells the block's columns (and the
action date) into a copy of it, checking what the read-back would check of them (serial order, quantity,
vintage, whole milliseconds); anything else goes the full way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol

from adapters import tabular
from adapters.aef_codec import header_key, held_blocks, parse_row, render_row
from adapters.aef_columns import BLOCK_FIELDS, RECORD_TYPES, Table, columns, headers
from adapters.base import AdapterInfo, RawRecord, Rendered, schemas
from adapters.context import MappingContext
from adapters.serials.itmo import first_last_id_formatter
from gateway.domain.blocks import MAX_SERIAL, UnitBlock
from gateway.domain.canonical import ActionHeader, AefAction, AefAuthorization, AefHolding, AefReport, MitigationType
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
        """The ITMOs of a Holdings row (`adapters.aef_codec.held_blocks`); none for the other tables."""
        return held_blocks(self.table, record, header_key)


ADAPTERS: dict[Table, AefTableAdapter] = {table: AefTableAdapter(table) for table in Table}
SUBMISSION = ADAPTERS[Table.SUBMISSION]
AUTHORIZATIONS = ADAPTERS[Table.AUTHORIZATIONS]
ACTIONS = ADAPTERS[Table.ACTIONS]
HOLDINGS = ADAPTERS[Table.HOLDINGS]
AUTHORIZED_ENTITIES = ADAPTERS[Table.AUTHORIZED_ENTITIES]


def write_workbook(report: AefReport, ctx: MappingContext | None = None) -> bytes:
    """The report as one XLSX workbook, a sheet per table in nomenclature order, every row checked.

    The same report gives the same bytes: the workbook is stamped with the submission's date (see
    `adapters.tabular.XlsxWriter`)."""
    out = io.BytesIO()
    workbook = tabular.XlsxWriter(out, created=_created(report))
    try:
        _write_report(report, AefTables({t: workbook.sheet(t.value, headers(t)) for t in Table}, ctx))
        workbook.close()
    finally:
        workbook.discard()
    return out.getvalue()


def write_csv_tables(report: AefReport, ctx: MappingContext | None = None) -> dict[Table, bytes]:
    """The report as five CSV files, one per table, every row checked (all-or-nothing, like the workbook)."""
    outs = {table: io.BytesIO() for table in Table}
    writers = {table: tabular.CsvWriter(out, headers(table)) for table, out in outs.items()}
    _write_report(report, AefTables(writers, ctx))
    for writer in writers.values():
        writer.close()
    return {table: out.getvalue() for table, out in outs.items()}


def _write_report(report: AefReport, tables: AefTables) -> None:
    for table in Table:
        tables.add(_REPORT_FIELDS[table], getattr(report, _REPORT_FIELDS[table]))
    tables.check()


def _created(report: AefReport) -> dt.datetime | None:
    if len(report.submission) != 1:
        return None
    return submission_instant(report.submission[0].submission_date)


def submission_instant(date: dt.date) -> dt.datetime:
    """The time a report submitted on ``date`` is stamped with: midnight UTC of that day."""
    return dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC)


def rendered_rows(table: Table, records: Sequence[Any], ctx: MappingContext | None = None) -> list[list[object]]:
    """The cells of ``records``' rows, in the table's column order, as the AEF files hold them (every row checked
    by reading it back, or spelled as `_BlockRows` says); refuses with every problem named ``table[row].column``."""
    problems: list[Problem] = []
    rows = _renderer(table, ctx or MappingContext()).rows(records, 1, problems)
    if problems:
        raise RecordRejected(problems)
    return rows


class Appender(Protocol):
    """Where the rows of one table go (an XLSX sheet, a CSV file)."""

    def append(self, rows: Sequence[Sequence[object]]) -> None:
        """Write ``rows`` after those written before."""


_PARTS: dict[str, Table] = {field: table for table, field in _REPORT_FIELDS.items()}


class AefTables:
    """An AEF report rendered table by table, batch by batch, into one `Appender` per table.

    ``add`` takes the rows of a table under its `AefReport` field name (``"actions"``), so that it is an
    `gateway.usecases.reporting.AefSink`. Every problem is kept, named ``<table>[<row>].<column>``; once there is
    one, nothing more is written (the output is to be discarded) but the rest is still checked. `check` raises
    them.
    """

    def __init__(self, writers: Mapping[Table, Appender], ctx: MappingContext | None = None) -> None:
        ctx = ctx or MappingContext()
        self._writers = writers
        self._renderers = {table: _renderer(table, ctx) for table in Table}
        self._counts = dict.fromkeys(Table, 0)
        self.problems: list[Problem] = []

    def add(self, part: str, records: Sequence[Any]) -> None:
        """Render and write the next ``records`` of the table named ``part``."""
        table = _PARTS[part]
        first = self._counts[table] + 1
        self._counts[table] += len(records)
        problems = self.problems
        rows = self._renderers[table].rows(records, first, problems)
        if not problems:
            try:
                self._writers[table].append(rows)
            except RecordRejected as rejected:
                problems.extend(rejected.problems)

    def count(self, table: Table) -> int:
        """Rows given for ``table`` so far."""
        return self._counts[table]

    def check(self) -> None:
        """Raise every problem found, if any."""
        if self.problems:
            raise RecordRejected(self.problems)


CSV_MANIFEST = "aef-report.sha256"
"""The file a CSV report writes last in its folder: the SHA-256 of each of its five files, in the form
``sha256sum -c`` checks. Five files cannot be replaced at once: the manifest goes first and comes back last, so
a folder whose report was stopped half way holds none, or one its files do not match."""


class AefFiles:
    """An AEF report written to files as it comes, all or nothing: one XLSX workbook at ``target``, or (``csv``)
    five CSV files in the folder ``target`` (``submission.csv``, ``authorizations.csv``, ``actions.csv``,
    ``holdings.csv``, ``authorized_entities.csv``) and their `CSV_MANIFEST`.

    Use it as a context manager; ``add`` takes the rows (an `gateway.usecases.reporting.AefSink`), `commit`
    puts the files in place. Until then they are temporary files beside their targets; leaving the block
    without a commit (a refused report, any error) removes them, and the folder if it made it, so a refused
    report writes nothing. A workbook is stamped with ``created`` (the submission's date), so that the same
    report gives the same bytes.
    """

    def __init__(
        self, target: Path, fmt: str, ctx: MappingContext | None = None, *, created: dt.datetime | None = None
    ) -> None:
        if fmt not in FORMATS:
            raise tabular.unsupported("aef", fmt, FORMATS)
        self._moves: list[tuple[Path, Path]] = []
        self._handles: list[BinaryIO] = []
        self._made_folder: Path | None = None
        self._workbook: tabular.XlsxWriter | None = None
        self._csv: list[tabular.CsvWriter] = []
        self._done = False
        try:
            writers: dict[Table, Appender] = {}
            if fmt == "xlsx":
                self._workbook = tabular.XlsxWriter(self._partial(target), created=created)
                for table in Table:
                    writers[table] = self._workbook.sheet(table.value, headers(table))
            else:
                if not target.is_dir():
                    target.mkdir(parents=True)
                    self._made_folder = target
                for table in Table:
                    writer = tabular.CsvWriter(self._partial(target / f"{table.name.lower()}.csv"), headers(table))
                    self._csv.append(writer)
                    writers[table] = writer
            self.tables = AefTables(writers, ctx)
        except BaseException:
            self.discard()
            raise

    def _partial(self, final: Path) -> BinaryIO:
        handle, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial")
        os.fchmod(handle, 0o666 & ~_umask())  # as an ordinary new file would be, not mkstemp's 0600
        self._moves.append((Path(name), final))
        self._handles.append(os.fdopen(handle, "wb"))
        return self._handles[-1]

    def __enter__(self) -> AefFiles:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if not self._done:
            self.discard()

    def add(self, part: str, records: Sequence[Any]) -> None:
        """Render and write the next ``records`` of the table named ``part`` (an `AefReport` field name)."""
        self.tables.add(part, records)

    def commit(self) -> list[Path]:
        """Put the files in place, or raise `RecordRejected` with every problem found (and write nothing)."""
        self.tables.check()
        if self._workbook is not None:
            self._workbook.close()
        for writer in self._csv:
            writer.close()
        for handle in self._handles:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        manifest = self._moves[0][1].parent / CSV_MANIFEST if self._csv else None
        for final in [*(final for _, final in self._moves), *([manifest] if manifest else [])]:
            # Checked before the first file is replaced: one that failed halfway would leave two reports mixed.
            if final.exists() and not final.is_file():
                raise IsADirectoryError(
                    errno.EISDIR, "is not a regular file the report may replace; nothing was written", str(final)
                )
        sums = "".join(f"{_sha256(partial)}  {final.name}\n" for partial, final in self._moves) if manifest else ""
        if manifest is not None:
            manifest.unlink(missing_ok=True)
            _sync_folder(manifest.parent)
        for partial, final in self._moves:
            os.replace(partial, final)
        written = [final for _, final in self._moves]
        if manifest is not None:
            with self._partial(manifest) as handle:
                handle.write(sums.encode("ascii"))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(self._moves[-1][0], manifest)
            written.append(manifest)
        self._done = True
        folders = {final.parent for _, final in self._moves}
        if self._made_folder is not None:
            folders.add(self._made_folder.absolute().parent)
        for folder in folders:
            _sync_folder(folder)
        return written

    def discard(self) -> None:
        """Remove what was written (done on leaving the block without `commit`)."""
        self._done = True
        if self._workbook is not None:
            self._workbook.discard()
        for handle in self._handles:
            handle.close()
        for partial, _ in self._moves:
            partial.unlink(missing_ok=True)
        if self._made_folder is not None:
            with contextlib.suppress(OSError):  # not empty: something else was put there meanwhile
                self._made_folder.rmdir()


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _sync_folder(folder: Path) -> None:
    """Put a folder's new names on disk with their files, where the file system can (some cannot sync a folder,
    and the files are in place already: as SQLite does, that is not a failure)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _Rows:
    """The rows of one table, each through `render_row`."""

    def __init__(self, table: Table, ctx: MappingContext) -> None:
        self.table = table
        self.ctx = ctx
        self.headers = headers(table)

    def full(self, record: Any) -> list[object]:
        """The row through `render_row`: checked by reading it back."""
        row, _, _ = render_row(self.table, record, self.ctx)
        return [row.get(h) for h in self.headers]

    row = full

    def rows(self, records: Sequence[Any], first: int, problems: list[Problem]) -> list[list[object]]:
        """The rows of ``records`` (record ``first`` onwards, 1-based, for naming problems)."""
        out: list[list[object]] = []
        add = out.append
        row = self.row
        for index, record in enumerate(records, start=first):
            try:
                add(row(record))
            except RecordRejected as rejected:
                which = _which(record)
                problems.extend(
                    Problem(f"{self.table.value}[{index}].{p.field}", f"{p.message}{which}", p.code)
                    for p in rejected.problems
                )
        return out


def _which(record: object) -> str:
    """What the gateway's own records call the row's source, for an operator to find it: its position in the
    table alone does not say."""
    if isinstance(record, AefAuthorization):
        return f" (authorization {record.authorization_id!r} version {record.version!r})"
    if isinstance(record, AefAction | AefHolding):
        return f" (ITMO serials {record.itmo_first_serial}-{record.itmo_last_serial})"
    return ""


_ACTION_PART = attrgetter(*(name for name in ActionHeader.__dataclass_fields__ if name != "action_date"))
_HOLDING_PART = attrgetter(
    *(name for name in AefHolding.__dataclass_fields__ if name not in BLOCK_FIELDS and name != "underlying_registry"),
    "underlying_registry",
)
_Template = tuple[list[object], Callable[[str, str], str]]
_UNKNOWN: Any = object()


class _BlockRows(_Rows):
    """The Actions or Holdings rows: the block's columns spelled into a checked row of the same part (see the
    module docstring); `full` for anything the spelling does not cover."""

    TEMPLATES = 4096
    """Parts remembered at most (a ledger whose notes differ on every entry has as many parts as rows)."""

    def __init__(self, table: Table, ctx: MappingContext) -> None:
        super().__init__(table, ctx)
        place = {c.field: i for i, c in enumerate(columns(table)) if c.field}
        self._places = tuple(place[name] for name in BLOCK_FIELDS)
        self._date = place.get("action_date")
        self._type: Any = AefAction if table is Table.ACTIONS else AefHolding
        self._templates: dict[tuple[object, ...], _Template | None] = {}

    def row(self, record: Any) -> list[object]:
        """The row of ``record``."""
        if type(record) is not self._type:
            return self.full(record)
        part = _ACTION_PART(record.header) if self._date is not None else _HOLDING_PART(record)
        key = (part, not record.first_unit_id)
        template = self._templates.get(key, _UNKNOWN)
        if template is _UNKNOWN:
            return self._learn(key, record)
        if template is not None:
            spelled = self._spell(template, record)
            if spelled is not None:
                return spelled
        return self.full(record)

    def _learn(self, key: tuple[object, ...], record: Any) -> list[object]:
        row = self.full(record)  # a refused record teaches nothing
        if len(self._templates) >= self.TEMPLATES:
            self._templates.clear()
        itmo_id = first_last_id_formatter(
            cooperative_approach=record.cooperative_approach,
            registry=record.party_registry,
            party=record.first_transferring_party,
            style=self.ctx.first_id_style,
        )
        template: _Template = (row, itmo_id)
        self._templates[key] = template if self._spell(template, record) == row else None
        return row

    def _spell(self, template: _Template, record: Any) -> list[object] | None:
        """The row of ``record`` from the template of its part, or None where the read-back could refuse it."""
        row, itmo_id = template
        first, last, quantity, vintage = (
            record.itmo_first_serial,
            record.itmo_last_serial,
            record.quantity,
            record.vintage,
        )
        mitigation, first_unit, last_unit = record.mitigation_type, record.first_unit_id, record.last_unit_id
        if not (
            type(first) is int
            and type(last) is int
            and 0 < first <= last <= MAX_SERIAL
            and type(quantity) is int
            and quantity == last - first + 1
            and type(vintage) is int
            and 1000 <= vintage <= 9999
            and type(mitigation) is MitigationType
            and type(first_unit) is str
            and type(last_unit) is str
            and bool(first_unit) == bool(last_unit)
        ):
            return None
        values = row.copy()
        if self._date is not None:
            instant = record.header.action_date
            if (
                type(instant) is not dt.datetime
                or instant.tzinfo is not dt.UTC
                or instant.microsecond % 1000
                or instant.year < 1000
            ):
                return None
            values[self._date] = instant.isoformat(timespec="milliseconds")[:-6] + "Z"  # format_iso_ms, faster
        digits = str(vintage)
        p_first, p_last, p_first_unit, p_last_unit, p_quantity, p_mitigation, p_vintage = self._places
        values[p_first] = itmo_id(str(first), digits)
        values[p_last] = itmo_id(str(last), digits)
        if first_unit:
            values[p_first_unit] = first_unit
            values[p_last_unit] = last_unit
        values[p_quantity] = quantity
        values[p_mitigation] = mitigation.value
        values[p_vintage] = vintage
        return values


def _renderer(table: Table, ctx: MappingContext) -> _Rows:
    return _BlockRows(table, ctx) if table in (Table.ACTIONS, Table.HOLDINGS) else _Rows(table, ctx)


def read_workbook(data: bytes, ctx: MappingContext | None = None) -> AefReport:
    """A report from a workbook with one sheet per table; every problem is named by sheet, row and column."""
    ctx = ctx or MappingContext()
    sheets = tabular.read_xlsx(data, [table.value for table in Table])
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
