"""File formats shared by the adapters: JSON arrays, CSV, XLSX (openpyxl) and text lines.

Readers refuse a file they cannot read with a ``RecordRejected`` whose field names the column or the
place; the batch engine reports it as a batch-level problem (position 0).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, BinaryIO
from xml.parsers import expat

import openpyxl
import openpyxl.worksheet._reader
from openpyxl.cell.read_only import ReadOnlyCell
from openpyxl.cell.text import Text
from openpyxl.reader.excel import ExcelReader
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._reader import WorkSheetParser
from openpyxl.xml.constants import SHARED_STRINGS, SHEET_MAIN_NS
from openpyxl.xml.functions import iterparse

from adapters.fields import unknown_name
from gateway.domain.mapping import IssueCode, Problem, RecordRejected
from gateway.domain.text import escaped, read_float

if TYPE_CHECKING:
    from typing_extensions import Buffer

FORMATS = ("json", "csv", "xlsx", "text")


def unsupported(adapter: str, fmt: str, supported: Sequence[str]) -> RecordRejected:
    """The refusal of a format an adapter does not handle."""
    return RecordRejected.one(
        "format", f"{adapter} does not handle {fmt!r}: use one of {', '.join(supported)}", IssueCode.UNSUPPORTED
    )


MAX_INTEGER_DIGITS = 4000
"""Digits an integer in a JSON document may have (Python refuses more than 4,300, naming its own settings)."""


def _bounded_int(digits: str) -> int:
    if len(digits) > MAX_INTEGER_DIGITS:
        raise ValueError(f"a number of {len(digits)} digits, more than {MAX_INTEGER_DIGITS}")
    return int(digits)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large to be a finite number")
    return value


class RepeatedMember(ValueError):
    """A JSON object names one member twice. JSON leaves such an object's meaning to each reader, so no reader
    here takes one: the first value or the last would each be a guess about what the writer meant."""

    def __init__(self, name: str, record: int | None = None) -> None:
        self.name, self.record = escaped(name, 80), record
        where = f" of record {record}" if record is not None else ""
        super().__init__(f"the member name {json.dumps(self.name)} appears twice in one object{where}")


class _Repeating(dict[str, object]):
    """An object that named ``name`` more than once, kept until its record is known."""

    __slots__ = ("name",)
    name: str


def _parse(text: str | bytes, **options: object) -> object:
    """`json.loads` with bounded integers, marking an object with a repeated member name as `_Repeating`;
    raises `RepeatedMember` naming the top-level array item (1-based) that holds one, if any does."""
    repeated = False

    def members(pairs: list[tuple[str, object]]) -> dict[str, object]:
        nonlocal repeated
        value = dict(pairs)
        if len(value) == len(pairs):
            return value
        repeated = True
        marked = _Repeating(value)
        seen: set[str] = set()
        marked.name = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        return marked

    value = json.loads(text, parse_int=_bounded_int, object_pairs_hook=members, **options)  # type: ignore[arg-type]
    if repeated:
        items = value if isinstance(value, list) else [value]
        for position, item in enumerate(items, 1):
            name = _repeated_in(item)
            if name is not None:
                raise RepeatedMember(name, position if isinstance(value, list) else None)
    return value


def _repeated_in(value: object) -> str | None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Repeating):
            return item.name
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def loads(text: str | bytes) -> object:
    """`json.loads`, refusing (`ValueError`) integers of more than `MAX_INTEGER_DIGITS` digits by their length,
    and (`RepeatedMember`) an object that names a member twice. A record's non-finite number is left to the
    field that reads it, which names the record and the field; so is a number no float holds exactly
    (`gateway.domain.text.InexactNumber`)."""
    return _parse(text, parse_float=read_float)


def loads_finite(text: str | bytes) -> object:
    """`loads`, refusing (`ValueError`) NaN, Infinity and a number too large for a float as well: for settings,
    where no field reads them one by one."""
    return _parse(text, parse_float=_finite_float, parse_constant=_no_constant)


def read_json(data: bytes) -> object:
    """A JSON document (UTF-8, with or without a byte-order mark)."""
    try:
        return loads(data.decode("utf-8-sig"))
    except RepeatedMember as repeated:
        where = f"record {repeated.record}" if repeated.record is not None else "the file"
        raise RecordRejected.one(
            repeated.name,
            f"appears twice in one object of {where}: a member name may appear only once",
            IssueCode.MALFORMED_FILE,
        ) from None
    except (UnicodeDecodeError, ValueError) as error:
        raise RecordRejected.one("file", f"is not valid UTF-8 JSON: {error}", IssueCode.MALFORMED_FILE) from None
    except RecursionError:
        raise RecordRejected.one(
            "file", "nests arrays or objects too deeply to be a file of records", IssueCode.MALFORMED_FILE
        ) from None


def read_json_records(data: bytes) -> list[Mapping[str, object]]:
    """A JSON array of objects."""
    value = read_json(data)
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise RecordRejected.one("file", "must be a JSON array of objects, one per record", IssueCode.MALFORMED_FILE)
    return value


def write_json_records(rows: Sequence[Mapping[str, object]]) -> bytes:
    """A JSON array of objects, one per line for readable diffs."""
    body = ",\n".join(json.dumps(dict(row), ensure_ascii=False, sort_keys=False) for row in rows)
    return f"[\n{body}\n]\n".encode() if rows else b"[]\n"


def read_csv_table(data: bytes) -> tuple[list[str], list[list[str]]]:
    """The header and the data rows of a CSV file; refuses ragged rows, and quoting RFC 4180 does not allow
    (text after a quoted cell's closing quote, a quoted cell that never closes), which Python's reader would
    otherwise take as some other text: ``"Hai"nan`` as ``Hainan``, an unclosed quote as a cell holding the rest
    of the file."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RecordRejected.one("file", f"is not UTF-8 text: {error}", IssueCode.MALFORMED_FILE) from None
    rows: list[list[str]] = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 1  # where the row being read starts
    try:
        for row in reader:
            rows.append(row)
            line = reader.line_num + 1
    except csv.Error as error:
        where = f"row {sum(1 for r in rows[1:] if any(r)) + 1}" if rows else "header"
        if "field limit" in str(error):
            fix = f"a cell may hold at most {csv.field_size_limit():,} characters"
        else:
            fix = (
                "a quoted cell ends at its closing quote, right before a comma or the end of the line, and a"
                ' quote inside it is written twice ("")'
            )
        raise RecordRejected.one(
            where, f"is not valid CSV (line {line:,}: {error}): {fix}", IssueCode.MALFORMED_FILE
        ) from None
    if not rows:
        raise RecordRejected.one("header", "the file is empty: a header row is required", IssueCode.MALFORMED_FILE)
    header, body = rows[0], [r for r in rows[1:] if any(cell for cell in r)]
    for number, row in enumerate(body, start=1):
        if len(row) != len(header):
            raise RecordRejected.one(
                f"row {number}", f"has {len(row)} cells but the header has {len(header)}", IssueCode.MALFORMED_FILE
            )
    return header, body


def write_csv_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> bytes:
    """A CSV file (RFC 4180, UTF-8). ``None`` is written as an empty cell. A text longer than `read_csv_table` reads
    in one cell is refused (``RecordRejected`` naming ``row <n>.<column>``): written, the file could not be read
    back."""
    limit = csv.field_size_limit()
    problems = [
        Problem(
            f"row {number}.{header[column] if column < len(header) else column + 1}",
            f"holds {len(value):,} characters; a CSV cell holds at most {limit:,} (write JSON, which has no such"
            " limit)",
            IssueCode.BAD_VALUE,
        )
        for number, row in enumerate(rows, start=1)
        for column, value in enumerate(row)
        if isinstance(value, str) and len(value) > limit
    ]
    if problems:
        raise RecordRejected(problems)
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue().encode("utf-8")


class CsvWriter:
    """A CSV file written as its rows come: the bytes `write_csv_table` makes of the same rows."""

    def __init__(self, out: BinaryIO, header: Sequence[str]) -> None:
        self._text = io.TextIOWrapper(out, encoding="utf-8", newline="")
        self._writer = csv.writer(self._text, lineterminator="\r\n")
        self._writer.writerow(header)

    def append(self, rows: Sequence[Sequence[object]]) -> None:
        """Write ``rows`` after those written before. ``None`` is written as an empty cell."""
        self._writer.writerows(["" if v is None else v for v in row] for row in rows)

    def close(self) -> None:
        """Flush the rows to ``out`` (which stays open)."""
        self._text.flush()
        self._text.detach()


def records_from_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[Mapping[str, object]]:
    """Rows as mappings keyed by header."""
    return [dict(zip(header, row, strict=True)) for row in rows]


def check_header(header: Sequence[str], expected: Sequence[str], *, exact_order: bool) -> None:
    """Refuse a missing, unknown, duplicated or (when ``exact_order``) reordered column."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for number, name in enumerate(header, start=1):
        if name in seen:
            problems.append(Problem(name, "the column appears twice", IssueCode.MALFORMED_FILE))
        seen.add(name)
        if name not in expected:
            problems.append(_unknown_column(number, name, expected))
    for name in expected:
        if name not in seen:
            problems.append(Problem(name, "the column is missing from the header", IssueCode.MISSING_FIELD))
    if not problems and exact_order and list(header) != list(expected):
        problems.append(
            Problem(
                "header",
                "the columns are out of the nomenclature's order: expected " + ", ".join(expected),
                IssueCode.MALFORMED_FILE,
            )
        )
    if problems:
        raise RecordRejected(problems)


def _unknown_column(number: int, name: str, expected: Sequence[str]) -> Problem:
    """The refusal of a header cell that names no column, which says what a reader cannot see in it (no name at
    all; spaces or invisible characters around a column's name)."""
    if not name.strip():
        return Problem(
            f"column {number}",
            f"has no name ({name!r}): delete the empty column, or name it (a row ending in a comma adds one)",
            IssueCode.UNKNOWN_FIELD,
        )
    shown = escaped(name, 80)
    why = f'"{shown}" (column {number}) ' + unknown_name(name, expected, "a column of this table")
    return Problem(shown, why, IssueCode.UNKNOWN_FIELD)


def write_xlsx(sheets: Sequence[tuple[str, Sequence[str], Sequence[Sequence[object]]]]) -> bytes:
    """A workbook with one sheet per ``(title, header, rows)``. Text is always stored as text, never a formula;
    ``None`` and empty text leave the cell out. The same rows give the same bytes (see `XlsxWriter`)."""
    out = io.BytesIO()
    with XlsxWriter(out) as workbook:
        for title, header, rows in sheets:
            sheet = workbook.sheet(title, header)
            sheet.append(rows)
    return out.getvalue()


XLSX_EPOCH = dt.datetime(2000, 1, 1)
"""The creation time stamped in a workbook written without one: a constant, so that equal content gives
equal bytes."""
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_ILLEGAL_XLSX_TEXT = re.compile(r"[\000-\010\013\014\016-\037\ufffe\uffff]")
"""What XML 1.0 cannot carry in a cell's text (lone surrogates aside, which UTF-8 cannot either): control
characters other than tab, line feed and carriage return, and the non-characters U+FFFE and U+FFFF."""
_MAX_XLSX_TEXT = 32767
_EXACT_IN_A_SPREADSHEET = 10**15
"""Integers from here on (16 digits and more) are written as text: spreadsheets keep a number's first 15
significant digits, so 9007199254740993 or a quantity of 2^63 - 1 would be read, shown and saved as another
number. The reader takes digits in a text cell as the same integer."""
_OOXML_ESCAPE = re.compile(r"_(?=x[0-9A-Fa-f]{4}_)")
"""The underscore that starts text a spreadsheet would read as an escaped character (ECMA-376 ST_Xstring:
``_x0041_`` is ``A``): written as ``_x005F_``, the escape of the underscore itself."""
_OOXML_ESCAPED = re.compile(r"_x([0-9A-Fa-f]{4})_")
"""An escaped character in a cell's text (ECMA-376 ST_Xstring), as spreadsheets write one the XML cannot hold
(``_x000D_``) or a literal ``_xHHHH_`` (``_x005F_xHHHH_``): openpyxl leaves them as written in an inline string
and in a ``str`` cell, and `read_xlsx` reads shared strings as written too (`_WorkbookReader`)."""


def _unescaped(text: str) -> str:
    """``text`` as a cell's XML holds it, its ST_Xstring escapes (`_OOXML_ESCAPED`) undone: once, for every kind
    of text cell (inline, shared, ``str``), none of which openpyxl has un-escaped (see `_WorkbookReader`)."""
    return _OOXML_ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text) if "_x" in text else text


class XlsxWriter:
    """An XLSX workbook written as its rows come, in openpyxl's write-only form, with the same bytes every time.

    The package (workbook, styles, properties, the sheets' frames) is openpyxl's write-only workbook
    (``Workbook(write_only=True)``). The rows of each sheet are spelled by `xlsx_rows`, which writes exactly the
    XML openpyxl's write-only worksheet writes for the same values (``tests/test_report_cli.py`` compares the two
    packages byte for byte), at a fraction of openpyxl's cost per cell, into a temporary file; they are spliced
    into the sheet's frame when the package is zipped. Rows are never held: memory stays flat however many rows a
    sheet has (openpyxl's own write-only sheets are temporary files too).

    Deterministic: the document properties carry ``created`` (default `XLSX_EPOCH`) as both creation and
    modification time, and every zip entry the same fixed time stamp, so that the same rows give the same bytes.
    Text is stored as text (never a formula or an error value); a text XLSX cannot hold (a control character,
    more than 32,767 characters) is refused with ``RecordRejected`` naming ``<sheet>[<row>].<column>``.
    """

    def __init__(self, out: BinaryIO, *, created: dt.datetime | None = None) -> None:
        self._out = out
        self._workbook = openpyxl.Workbook(write_only=True)
        stamp = (created or XLSX_EPOCH).astimezone(dt.UTC).replace(tzinfo=None, microsecond=0)
        self._workbook.properties.created = stamp
        self._workbook.properties.modified = stamp
        self._sheets: list[XlsxSheet] = []

    def __enter__(self) -> XlsxWriter:
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()

    def sheet(self, title: str, header: Sequence[str]) -> XlsxSheet:
        """A new sheet, after those made before, with ``header`` as its first row."""
        sheet = XlsxSheet(title, header, self._workbook.create_sheet(title=title))
        self._sheets.append(sheet)
        return sheet

    def close(self) -> None:
        """Write the package to ``out``."""
        from openpyxl.writer.excel import ExcelWriter

        rows = {f"xl/worksheets/sheet{number}.xml": sheet for number, sheet in enumerate(self._sheets, start=1)}
        try:
            with _StampedZip(self._out, rows) as archive:
                ExcelWriter(self._workbook, archive).save()
                missing = set(rows) - archive.spliced
                if missing:  # pragma: no cover - openpyxl changed how it names the sheets' parts
                    raise RuntimeError(f"openpyxl wrote no part {sorted(missing)} to splice the rows into")
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop the rows written so far (their temporary files)."""
        for sheet in self._sheets:
            sheet.rows.close()


class XlsxSheet:
    """One sheet of an `XlsxWriter`, its header written; rows are appended in batches."""

    def __init__(self, title: str, header: Sequence[str], frame: object) -> None:
        self.title = title
        self.header = tuple(header)
        self.frame = frame
        """openpyxl's write-only worksheet: its XML, with no rows, is the frame the rows are spliced into."""
        self.rows: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by XlsxWriter.discard
        self.count = 0
        """Data rows written (the header is not counted)."""
        self._cells = XlsxCells()
        self.rows.write(xlsx_rows([self.header], 1).encode("utf-8"))

    def append(self, rows: Sequence[Sequence[object]]) -> None:
        """Write ``rows`` after those written before; a row XLSX cannot hold refuses the batch, naming it."""
        try:
            data = xlsx_rows(rows, self.count + 2, self._cells).encode("utf-8")
        except (_Unwritable, UnicodeEncodeError, TypeError):
            raise self._refusal(rows) from None
        self.rows.write(data)
        self.count += len(rows)

    def _refusal(self, rows: Sequence[Sequence[object]]) -> RecordRejected:
        problems = []
        for number, row in enumerate(rows, start=self.count + 1):
            for column, value in enumerate(row):
                name = self.header[column] if column < len(self.header) else str(column + 1)
                why = _unwritable(value)
                if why:
                    problems.append(Problem(f"{self.title}[{number}].{name}", why, IssueCode.BAD_VALUE))
        return RecordRejected(problems)


class _Unwritable(Exception):
    """A value XLSX cannot hold (see `_unwritable`)."""


def _unwritable(value: object) -> str:
    """Why an XLSX cell cannot hold ``value``, or an empty string."""
    if isinstance(value, str):
        if len(value) > _MAX_XLSX_TEXT:
            return f"holds {len(value):,} characters; an XLSX cell holds at most 32,767"
        if _ILLEGAL_XLSX_TEXT.search(value):
            return "holds a control character or U+FFFE/U+FFFF, which an XLSX cell cannot hold"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid Unicode text"
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a number an XLSX cell can hold"
    if value is not None and not isinstance(value, int | float):
        return f"{type(value).__name__} values are not written to XLSX (only text and numbers)"
    return ""


_CELL_HEADS: list[str] = []


def _cell_heads(count: int) -> list[str]:
    """``<c r="A``, ``<c r="B``, ... for the first ``count`` columns at least."""
    if len(_CELL_HEADS) < count:
        from openpyxl.utils import get_column_letter

        _CELL_HEADS[:] = [f'<c r="{get_column_letter(n)}' for n in range(1, max(count, 64) + 1)]
    return _CELL_HEADS


def xlsx_rows(rows: Sequence[Sequence[object]], first: int, cells: XlsxCells | None = None) -> str:
    """The ``<row>`` elements of ``rows``, the first numbered ``first``: the XML openpyxl's write-only worksheet
    writes for the same values (through et_xmlfile), except that text is always text (openpyxl makes ``=...``
    a formula and ``#N/A`` an error value), empty text leaves the cell out, as ``None`` does, and text a
    spreadsheet would read as an escaped character (``_x0041_``) is escaped (`_OOXML_ESCAPE`).

    ``cells`` remembers the spelling of values seen before (pass the same one for the rows of one sheet). Raises
    `_Unwritable` for text XLSX cannot hold (control characters; more than 32,767 characters, which openpyxl
    truncates silently) and for values other than text and finite numbers.
    """
    cells = cells or XlsxCells()
    heads = _cell_heads(max((len(r) for r in rows), default=0))
    known = cells.known(len(heads))
    spell = cells.spell
    parts: list[str] = []
    add = parts.append
    for number, row in enumerate(rows, start=first):
        r = str(number)
        add(f'<row r="{r}">')
        for column, value in enumerate(row):
            if value is None:
                continue
            tail = known[column].get(value)
            # Spellings are remembered for text and integers, which a bool or a float can equal (7.0 == 7).
            if tail is None or value.__class__ is bool or value.__class__ is float:
                if value == "":
                    continue
                tail = spell(column, value)
            add(heads[column])
            add(r)
            add(tail)
        add("</row>")
    return "".join(parts)


class XlsxCells:
    """The XML of the values of each column seen so far, less the cell's reference (``<c r="`` + column letter,
    then the row number, then this). Text is checked once, when first seen. Text and whole numbers are kept, at
    most `LIMIT` values per column (a column of identifiers has a new value in every row)."""

    LIMIT = 20_000

    def __init__(self) -> None:
        self._known: list[dict[object, str]] = []

    def known(self, columns: int) -> list[dict[object, str]]:
        """One mapping per column, value to spelling (text values only are looked up by the caller)."""
        while len(self._known) < columns:
            self._known.append({})
        return self._known

    def spell(self, column: int, value: object) -> str:
        """The XML of ``value`` after its cell's reference, remembered when it is text."""
        if isinstance(value, str):
            text = str(value)
            if len(text) > _MAX_XLSX_TEXT or _ILLEGAL_XLSX_TEXT.search(text):
                raise _Unwritable
            stripped = text.strip()
            preserve = bool(stripped) and len(stripped) != len(text)
            if "_x" in text:
                text = _OOXML_ESCAPE.sub("_x005F_", text)
            if "&" in text:
                text = text.replace("&", "&amp;")
            if "<" in text:
                text = text.replace("<", "&lt;")
            if ">" in text:
                text = text.replace(">", "&gt;")
            if "\r" in text:  # a reader turns a carriage return written as itself into a line feed
                text = text.replace("\r", "&#13;")
            space = ' xml:space="preserve"' if preserve else ""
            tail = f'" t="inlineStr"><is><t{space}>{text}</t></is></c>'
            if type(value) is str:
                known = self._known[column]
                if len(known) >= self.LIMIT:
                    known.clear()
                known[value] = tail
            return tail
        if type(value) is bool:
            return f'" t="b"><v>{1 if value else 0}</v></c>'
        if isinstance(value, int | float):
            if isinstance(value, float) and not math.isfinite(value):
                raise _Unwritable
            # Every digit of an integer, and the shortest text that reads back as the same float: "%.16g" wrote
            # 12345678901234567 as 1.234567890123457e+16, which reads back as another number.
            number = int.__repr__(value) if isinstance(value, int) else float.__repr__(value)
            if type(value) is int and not -_EXACT_IN_A_SPREADSHEET < value < _EXACT_IN_A_SPREADSHEET:
                tail = f'" t="inlineStr"><is><t>{number}</t></is></c>'
            else:
                tail = f'" t="n"><v>{number}</v></c>'
            if type(value) is int:  # never a bool or a float: both compare equal to some int
                known = self._known[column]
                if len(known) >= self.LIMIT:
                    known.clear()
                known[value] = tail
            return tail
        raise _Unwritable


class _StampedZip(zipfile.ZipFile):
    """The zip archive of an `XlsxWriter`: every entry stamped with one fixed time, and the rows of each sheet
    spliced into the sheet's frame as openpyxl writes it."""

    def __init__(self, out: BinaryIO, rows: dict[str, XlsxSheet]) -> None:
        super().__init__(out, "w", zipfile.ZIP_DEFLATED, allowZip64=True)
        self._rows = rows
        self.spliced: set[str] = set()

    def _entry(self, name: str, size: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o600 << 16
        info.file_size = size
        return info

    def writestr(
        self,
        zinfo_or_arcname: str | zipfile.ZipInfo,
        data: str | Buffer,
        compress_type: int | None = None,
        compresslevel: int | None = None,
    ) -> None:
        """Store ``data`` under the fixed time stamp."""
        name = zinfo_or_arcname.filename if isinstance(zinfo_or_arcname, zipfile.ZipInfo) else zinfo_or_arcname
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        super().writestr(self._entry(name, len(payload)), payload)

    def write(
        self,
        filename: str | os.PathLike[str],
        arcname: str | os.PathLike[str] | None = None,
        compress_type: int | None = None,
        compresslevel: int | None = None,
    ) -> None:
        """Store a file openpyxl wrote; a sheet's frame gets the sheet's rows spliced in."""
        name = str(arcname if arcname is not None else filename).lstrip("/")
        with open(filename, "rb") as source:
            frame = source.read()
        sheet = self._rows.get(name)
        if sheet is None:
            super().writestr(self._entry(name, len(frame)), frame)
            return
        head, close, tail = frame.rpartition(b"</sheetData>")
        if not close:  # pragma: no cover - openpyxl changed its sheet frame
            raise RuntimeError(f"openpyxl wrote {name} without a sheetData element to splice the rows into")
        size = sheet.rows.seek(0, io.SEEK_END)
        sheet.rows.seek(0)
        with self.open(self._entry(name, len(head) + size + len(close) + len(tail)), "w") as target:
            target.write(head)
            shutil.copyfileobj(sheet.rows, target, 1 << 20)
            target.write(close + tail)
        self.spliced.add(name)


MAX_XLSX_CELLS = 524_288
"""The most cells a workbook's sheets may span, the empty ones that fill a row's gaps included (a missing row
counts as one): some 17,000 rows of the AEF tables' 30 columns. openpyxl builds each row whole, some hundreds of
bytes a cell, and fills a sheet's gaps as it reads: a few kilobytes could otherwise claim billions of cells. A
sheet that declares a larger size than this is refused before it is read."""

MAX_XLSX_ELEMENTS = 2_000_000
"""The most XML elements a workbook's parts may hold in all."""

MAX_XLSX_OTHER_ELEMENTS = 200_000
"""The most elements outside rows, cells and strings (styles, names, relationships): openpyxl builds each whole."""

MAX_XLSX_ROW_CELLS = 16_384
"""The most cells one row may hold: a spreadsheet's widest row. openpyxl builds a row whole before it is read."""

MAX_XLSX_ITEM_ELEMENTS = 1_000
"""The most elements one cell or shared string may hold (runs of rich text, say)."""

MAX_XLSX_SHEETS = 64
"""The most sheets a workbook may list: each is read whole, even when several name the same part."""

MAX_XLSX_UNPACKED_BYTES = 64 << 20
"""The most a workbook's parts may unpack to, in all."""

MAX_XLSX_PARTS = 1_000
"""The most parts (files) a workbook's archive may hold."""


class _WorkbookCount:
    """What a workbook's XML holds, counted as expat reads it; each limit above is checked as it is passed."""

    def __init__(self) -> None:
        self.elements = self.other = self.cells = self.strings = self.sheets = 0
        self.row_cells = 0
        self.item_depth = self.item_elements = 0
        self.item = ""  # "c" (a cell) or "si" (a shared string) while item_depth is set
        self.cell = ""  # the reference of the cell being read, as its ``r`` attribute gives it
        self.part = ""  # the name of the part being read

    def start(self, name: str, attributes: object) -> None:
        self.elements += 1
        if self.elements > MAX_XLSX_ELEMENTS:
            raise _too_large(f"its XML holds more than {MAX_XLSX_ELEMENTS:,} elements")
        if self.item_depth:
            self.item_depth += 1
            self.item_elements += 1
            if self.item_elements > MAX_XLSX_ITEM_ELEMENTS:
                raise _too_large(f"a cell or string holds more than {MAX_XLSX_ITEM_ELEMENTS:,} elements")
            if self.item_depth == 2 and self.item == "c" and name.rpartition(":")[2] == "f":
                raise RecordRejected.one(
                    "file",
                    f"cell {self.cell or '(no reference)'} of part {self.part!r} holds a formula: cells are read as the"
                    " values saved in them, and a formula's saved result may not be what a spreadsheet shows; paste"
                    " the values over the formulas, or save the sheet as CSV",
                    IssueCode.MALFORMED_FILE,
                )
            return
        local = name.rpartition(":")[2]
        if local in ("c", "si"):
            self.item_depth, self.item_elements, self.item = 1, 0, local
            reference = attributes.get("r", "") if isinstance(attributes, dict) else ""
            self.cell = str(reference)[:16] if local == "c" else ""
            if local == "c":
                self.cells += 1
                self.row_cells += 1
                if self.row_cells > MAX_XLSX_ROW_CELLS:
                    raise _too_large(f"a row holds more than {MAX_XLSX_ROW_CELLS:,} cells")
            else:
                self.strings += 1
            if max(self.cells, self.strings) > MAX_XLSX_CELLS:
                raise _too_large(f"it holds more than {MAX_XLSX_CELLS:,} cells or strings")
        elif local == "row":
            self.row_cells = 0
        else:
            self.other += 1
            if self.other > MAX_XLSX_OTHER_ELEMENTS:
                raise _too_large(f"it holds more than {MAX_XLSX_OTHER_ELEMENTS:,} elements of styles and structure")
            if local == "sheet":
                self.sheets += 1
                if self.sheets > MAX_XLSX_SHEETS:
                    raise _too_large(f"it lists more than {MAX_XLSX_SHEETS} sheets")

    def end(self, name: str) -> None:
        if self.item_depth:
            self.item_depth -= 1


def _measure_workbook(data: bytes) -> None:
    """Refuse, before openpyxl reads any of it, a workbook past one of the limits above, with a part that cannot
    be read, or declaring an XML document type (its entities would expand as openpyxl parses). Every part is
    parsed as XML, by the parser openpyxl uses, whatever its name: openpyxl finds its parts through the package's
    relationships. A part that is not XML (an image) is no part openpyxl parses. What is not a zip archive is
    left to openpyxl to name."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    with archive:
        parts = archive.infolist()
        if len(parts) > MAX_XLSX_PARTS:
            raise _too_large(f"its archive holds {len(parts):,} parts, more than {MAX_XLSX_PARTS:,}")
        unpacked = 0
        counted = _WorkbookCount()

        def doctype(*_: object) -> None:
            raise RecordRejected.one(
                "file",
                "the workbook declares an XML document type, which no spreadsheet part has",
                IssueCode.MALFORMED_FILE,
            )

        for info in parts:
            parser = expat.ParserCreate()
            parser.StartElementHandler = counted.start
            parser.EndElementHandler = counted.end
            parser.StartDoctypeDeclHandler = doctype
            counted.item_depth = 0
            counted.part = info.filename[:100]
            xml = True
            try:
                with archive.open(info) as part:
                    while chunk := part.read(1 << 20):
                        unpacked += len(chunk)
                        if unpacked > MAX_XLSX_UNPACKED_BYTES:
                            raise _too_large(f"its parts unpack to more than {MAX_XLSX_UNPACKED_BYTES:,} bytes")
                        if xml:
                            try:
                                parser.Parse(chunk, False)
                            except expat.ExpatError:
                                xml = False  # not XML: openpyxl parses it as no part
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError) as error:
                raise RecordRejected.one(
                    "file",
                    f"part {info.filename[:100]!r} of the workbook cannot be read: {error}",
                    IssueCode.MALFORMED_FILE,
                ) from None


def _too_large(what: str) -> RecordRejected:
    return RecordRejected.one(
        "file", f"the workbook is too large to read: {what}; split it, or save it as CSV", IssueCode.MALFORMED_FILE
    )


def _cast_number(written: str) -> int | float:
    """A number cell's saved text as openpyxl reads it, except that a fraction or an exponent no float holds
    exactly (``9007199254740993.0``, ``2000.00000000000001``) is an `InexactNumber` that whole-number fields
    refuse: openpyxl took the nearest float, a whole number nobody wrote."""
    if "." in written or "E" in written or "e" in written:
        return read_float(written)
    return int(written)


# openpyxl reads every number cell through this one function (openpyxl 3.1, ``worksheet/_reader.py``); a test
# reads a workbook through it, so an openpyxl that stops calling it fails there rather than rounding again.
openpyxl.worksheet._reader._cast_number = _cast_number


_SHARED_STRING = f"{{{SHEET_MAIN_NS}}}si"


class _NoSuchString:
    """What a cell naming a shared string the table does not hold reads as, until `read_xlsx` refuses it naming
    the cell (openpyxl looks the string up while it parses the row, where no cell can be named)."""

    __slots__ = ("index", "size")

    def __init__(self, index: int, size: int) -> None:
        self.index, self.size = index, size


class _SharedStrings:
    """A workbook's shared strings, looked up by the index a cell gives: an index outside the table (a negative
    one too, which a list would count from its end) is a `_NoSuchString`, never another string."""

    __slots__ = ("strings",)

    def __init__(self, strings: list[str]) -> None:
        self.strings = strings

    def __len__(self) -> int:
        return len(self.strings)

    def __getitem__(self, index: int) -> str | _NoSuchString:
        return self.strings[index] if 0 <= index < len(self.strings) else _NoSuchString(index, len(self.strings))


class _WorkbookReader(ExcelReader):  # type: ignore[misc]
    """openpyxl's reader of a workbook (what `openpyxl.load_workbook` runs), but for its shared strings.

    openpyxl's own table of shared strings takes every ``x005F_`` out of their text, a half-way un-escaping
    that cannot be undone: ``_x005F_x0041_`` (the literal text ``_x0041_``) became ``_x0041_``, which
    `_unescaped` then read as ``A``, and ``abcx005F_def`` (no escape at all) became ``abcdef``. The table is
    read here as written, the text of each string as openpyxl takes it (its runs, not its phonetic guides), so
    that a shared string is un-escaped once, by `_unescaped`, as an inline one is."""

    def read_strings(self) -> None:
        part = self.package.find(SHARED_STRINGS)
        strings: list[str] = []
        if part is not None:
            with self.archive.open(part.PartName[1:]) as source:
                for _, node in iterparse(source):
                    if node.tag == _SHARED_STRING:
                        strings.append(Text.from_tree(node).content)
                        node.clear()
        self.shared_strings = _SharedStrings(strings)


def read_xlsx(data: bytes, titles: Collection[str] | None = None) -> dict[str, tuple[list[str], list[list[object]]]]:
    """The sheets of a workbook as ``title -> (header, rows)``: every sheet, or those of ``titles`` it holds (the
    others are not read, so that a cover or notes sheet never stops an import). Trailing empty rows are dropped.
    Every row and cell a sheet holds is read, whatever size it declares; rows or cells written out of order, or
    twice, are refused. A workbook larger than the limits above is refused before it is read
    (`_measure_workbook`), or, for the gaps in a sheet, as soon as reading passes `MAX_XLSX_CELLS`."""
    workbook = _open_workbook(data)
    sheets: dict[str, tuple[list[str], list[list[object]]]] = {}
    cells = 0
    title = ""
    try:
        for sheet in workbook.worksheets:
            title = str(sheet.title)
            if titles is not None and title not in titles:
                continue
            declared = (sheet.max_row or 0) * (sheet.max_column or 0)
            if cells + declared > MAX_XLSX_CELLS:
                raise _too_many_cells(sheet.title, f"declares {sheet.max_row:,} rows of {sheet.max_column:,} columns")
            rows: list[list[object]] = []
            for row in _sheet_rows(workbook, sheet):
                cells += len(row) or 1
                if cells > MAX_XLSX_CELLS:
                    raise _too_many_cells(sheet.title, f"runs past row {len(rows):,}")
                rows.append([None if cell is None else _cell_value(title, cell) for cell in row])
            while rows and all(v is None or v == "" for v in rows[-1]):
                rows.pop()
            if not rows:
                sheets[sheet.title] = ([], [])
                continue
            header = ["" if v is None else str(v) for v in rows[0]]
            while header and header[-1] == "":
                header.pop()
            for number, row in enumerate(rows[1:], start=1):
                _refuse_cells_past_the_header(title, number, row, len(header))
            body = [
                [None if v == "" else v for v in row[: len(header)]] + [None] * (len(header) - len(row))
                for row in rows[1:]
            ]
            sheets[sheet.title] = (header, body)
    except RecordRejected:
        raise
    except Exception as error:  # openpyxl raises many types for a cell it cannot read
        raise RecordRejected.one(
            "file",
            f"sheet {title[:64]!r} of the workbook cannot be read: {type(error).__name__}: {str(error)[:200]}",
            IssueCode.MALFORMED_FILE,
        ) from None
    finally:
        workbook.close()
    return sheets


def _sheet_rows(workbook: Any, sheet: Any) -> Iterator[list[Any]]:
    """The rows of a read-only sheet as openpyxl's parser finds them, each a list of cells (None where a row has
    none) up to its last cell, with the rows a sheet leaves out as empty lists. openpyxl's own rows stop at the
    size the sheet declares and size each row from the cell written last, dropping what lies past either; and it
    drops a row written after a later one. Here nothing is dropped: a row or cell out of order, or twice, is
    refused, naming it."""
    title = str(sheet.title)
    expected = 1
    with sheet._get_source() as source:
        parser = WorkSheetParser(
            source,
            sheet._shared_strings,
            data_only=True,
            epoch=workbook.epoch,
            date_formats=workbook._date_formats,
            timedelta_formats=workbook._timedelta_formats,
        )
        for number, parsed in parser.parse():
            if number < expected:
                raise RecordRejected.one(
                    "file",
                    f"sheet {title[:64]!r} row {number} is written after row {expected - 1}: the workbook is damaged;"
                    " save it again from the spreadsheet, or as CSV",
                    IssueCode.MALFORMED_FILE,
                )
            for _ in range(expected, number):
                yield []
            expected = number + 1
            row: list[Any] = []
            for cell in parsed:
                column = int(cell["column"])
                if column <= len(row):
                    raise RecordRejected.one(
                        "file",
                        f"sheet {title[:64]!r} cell {get_column_letter(column)}{number} is written after cell"
                        f" {get_column_letter(len(row))}{number}: the workbook is damaged; save it again from the"
                        " spreadsheet, or as CSV",
                        IssueCode.MALFORMED_FILE,
                    )
                row.extend([None] * (column - 1 - len(row)))
                row.append(ReadOnlyCell(sheet, **cell))
            yield row


def _cell_value(title: str, cell: Any) -> object:
    """The value of a cell openpyxl read, its text un-escaped; an error value, or a shared string the table
    does not hold, is refused naming the sheet and the cell: either read as text would be a value nobody
    wrote."""
    value: object = cell.value
    if type(value) is str:
        if cell.data_type != "e":
            return _unescaped(value)
        what = (
            f"holds the error {escaped(value, 40)!r}, not a value (a formula's error, or a date no calendar holds):"
            " type the value in, or leave the cell empty"
        )
    elif isinstance(value, _NoSuchString):
        what = (
            f"names shared string {value.index:,}, but the workbook holds {value.size:,} (numbered from 0): the"
            " workbook is damaged; save it again from the spreadsheet, or as CSV"
        )
    else:
        return value
    raise RecordRejected.one("file", f"sheet {title[:64]!r} cell {cell.coordinate}: {what}", IssueCode.MALFORMED_FILE)


def _refuse_cells_past_the_header(title: str, number: int, row: Sequence[object], columns: int) -> None:
    """Refuse a value to the right of the header's last column: no column names it, and dropping it would lose
    it without a word (a CSV row with more cells than its header is refused the same way)."""
    for column in range(columns, len(row)):
        if row[column] is not None and row[column] != "":
            raise RecordRejected.one(
                f"row {number}",
                f"has a value in cell {get_column_letter(column + 1)}{number + 1} of sheet {title[:64]!r}, to the"
                f" right of the header's {columns} columns: delete it, or move it under its column",
                IssueCode.MALFORMED_FILE,
            )


def _too_many_cells(title: str, what: str) -> RecordRejected:
    return RecordRejected.one(
        "file",
        f"sheet {title[:64]!r} {what}: more than the {MAX_XLSX_CELLS:,} cells a workbook may span (empty ones"
        " included); split it, or save it as CSV",
        IssueCode.MALFORMED_FILE,
    )


def read_xlsx_sheet(data: bytes, title: str | None) -> tuple[list[str], list[list[object]]]:
    """One sheet: the named one, or the only one; no other sheet is read."""
    names = xlsx_sheet_names(data)
    if title is not None and title in names:
        return read_xlsx(data, (title,))[title]
    if len(names) == 1:
        return read_xlsx(data, names)[names[0]]
    raise RecordRejected.one(
        "sheet",
        f"the workbook has no sheet {title!r} (sheets: {', '.join(names) or 'none'})",
        IssueCode.MALFORMED_FILE,
    )


def xlsx_sheet_names(data: bytes) -> list[str]:
    """The titles of a workbook's sheets, in order, read without their cells."""
    workbook = _open_workbook(data)
    try:
        return [str(sheet.title) for sheet in workbook.worksheets]
    finally:
        workbook.close()


def _open_workbook(data: bytes) -> Any:
    """The workbook, read-only, its cells not yet read; refused when it passes the limits above or openpyxl
    cannot open it."""
    _measure_workbook(data)
    try:
        reader = _WorkbookReader(io.BytesIO(data), read_only=True, data_only=True)
        reader.read()
    except Exception as error:  # openpyxl raises many types for a bad file
        raise RecordRejected.one(
            "file", f"is not a readable XLSX workbook: {error}", IssueCode.MALFORMED_FILE
        ) from None
    return reader.wb


def read_text_lines(data: bytes, key: str) -> list[Mapping[str, object]]:
    """One record ``{key: line}`` per non-blank line, without the whitespace around it. Lines end at a line
    feed (CR LF or LF) only: ``str.splitlines`` also ended them at a lone CR, U+2028, U+2029, U+0085, form and
    vertical tabs and the separators U+001C to U+001E, making two records of one line that holds one;
    inside a line, such a character is the record's, for its field to refuse."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RecordRejected.one("file", f"is not UTF-8 text: {error}", IssueCode.MALFORMED_FILE) from None
    return [{key: line.strip()} for line in text.split("\n") if line.strip()]


def write_text_lines(rows: Sequence[Mapping[str, object]], key: str) -> bytes:
    """One line per record."""
    return "".join(f"{row[key]}\n" for row in rows).encode()
