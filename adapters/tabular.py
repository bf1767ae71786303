"""File formats shared by the adapters: JSON arrays, CSV, XLSX (openpyxl) and text lines.

Readers refuse a file they cannot read with a ``RecordRejected`` whose field names the column or the
place; the batch engine reports it as a batch-level problem (position 0).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence

import openpyxl

from gateway.domain.mapping import IssueCode, Problem, RecordRejected

FORMATS = ("json", "csv", "xlsx", "text")


def unsupported(adapter: str, fmt: str, supported: Sequence[str]) -> RecordRejected:
    """The refusal of a format an adapter does not handle."""
    return RecordRejected.one(
        "format", f"{adapter} does not handle {fmt!r}: use one of {', '.join(supported)}", IssueCode.UNSUPPORTED
    )


def read_json(data: bytes) -> object:
    """A JSON document (UTF-8, with or without a byte-order mark)."""
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
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
    """The header and the data rows of a CSV file; refuses ragged rows."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RecordRejected.one("file", f"is not UTF-8 text: {error}", IssueCode.MALFORMED_FILE) from None
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise RecordRejected.one("file", f"is not valid CSV: {error}", IssueCode.MALFORMED_FILE) from None
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
    """A CSV file (RFC 4180, UTF-8). ``None`` is written as an empty cell."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue().encode("utf-8")


def records_from_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[Mapping[str, object]]:
    """Rows as mappings keyed by header."""
    return [dict(zip(header, row, strict=True)) for row in rows]


def check_header(header: Sequence[str], expected: Sequence[str], *, exact_order: bool) -> None:
    """Refuse a missing, unknown, duplicated or (when ``exact_order``) reordered column."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for name in header:
        if name in seen:
            problems.append(Problem(name, "the column appears twice", IssueCode.MALFORMED_FILE))
        seen.add(name)
        if name not in expected:
            problems.append(
                Problem(name, "is not a column of this table (check its spelling)", IssueCode.UNKNOWN_FIELD)
            )
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


def write_xlsx(sheets: Sequence[tuple[str, Sequence[str], Sequence[Sequence[object]]]]) -> bytes:
    """A workbook with one sheet per ``(title, header, rows)``. Text is always stored as text, never a formula."""
    workbook = openpyxl.Workbook()
    default = workbook.active
    for title, header, rows in sheets:
        sheet = workbook.create_sheet(title=title)
        sheet.append(list(header))
        for r, row in enumerate(rows, start=2):
            for c, value in enumerate(row, start=1):
                if value is None or value == "":
                    continue
                cell = sheet.cell(row=r, column=c, value=value)
                if isinstance(value, str):
                    cell.data_type = "s"
    if default is not None:
        workbook.remove(default)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def read_xlsx(data: bytes) -> dict[str, tuple[list[str], list[list[object]]]]:
    """Every sheet of a workbook as ``title -> (header, rows)``; trailing empty rows are dropped."""
    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as error:  # openpyxl raises many types for a bad file
        raise RecordRejected.one(
            "file", f"is not a readable XLSX workbook: {error}", IssueCode.MALFORMED_FILE
        ) from None
    sheets: dict[str, tuple[list[str], list[list[object]]]] = {}
    try:
        for sheet in workbook.worksheets:
            rows = [list(row) for row in sheet.iter_rows(values_only=True)]
            while rows and all(v is None or v == "" for v in rows[-1]):
                rows.pop()
            if not rows:
                sheets[sheet.title] = ([], [])
                continue
            header = ["" if v is None else str(v) for v in rows[0]]
            while header and header[-1] == "":
                header.pop()
            body = [
                [None if v == "" else v for v in row[: len(header)]] + [None] * (len(header) - len(row))
                for row in rows[1:]
            ]
            sheets[sheet.title] = (header, body)
    finally:
        workbook.close()
    return sheets


def read_xlsx_sheet(data: bytes, title: str | None) -> tuple[list[str], list[list[object]]]:
    """One sheet: the named one, or the only one."""
    sheets = read_xlsx(data)
    if title is not None and title in sheets:
        return sheets[title]
    if len(sheets) == 1:
        return next(iter(sheets.values()))
    names = ", ".join(sheets) or "none"
    raise RecordRejected.one(
        "sheet", f"the workbook has no sheet {title!r} (sheets: {names})", IssueCode.MALFORMED_FILE
    )


def read_text_lines(data: bytes, key: str) -> list[Mapping[str, object]]:
    """One record ``{key: line}`` per non-blank line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RecordRejected.one("file", f"is not UTF-8 text: {error}", IssueCode.MALFORMED_FILE) from None
    return [{key: line.strip()} for line in text.splitlines() if line.strip()]


def write_text_lines(rows: Sequence[Mapping[str, object]], key: str) -> bytes:
    """One line per record."""
    return "".join(f"{row[key]}\n" for row in rows).encode()
