"""The CSV and text-line readers: a file is read as written, or refused naming the row; never read as other text."""

from __future__ import annotations

import csv
import io

import pytest

from adapters import tabular
from adapters.mapping import encode_outputs, map_batch
from gateway.domain.mapping import IssueCode, RecordRejected
from tests.adapters import strategies as s
from tests.adapters.test_domestic import GOOD

ADAPTERS = s.built_in_adapters()


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        pytest.param(b'a,b\r\n"Hai"nan,x\r\n', "row 1", "line 2: ',' expected after '\"'", id="text after a quote"),
        pytest.param(b'a,b\r\n"x" ,y\r\n', "row 1", "line 2: ',' expected after '\"'", id="a space after a quote"),
        pytest.param(
            b'a,b\r\nx,y\r\n"unclosed,x\r\n1,2\r\n', "row 2", "line 3: unexpected end of data", id="an unclosed quote"
        ),
        pytest.param(b'a,b\r\n\r\nx,y\r\n"q"r,s\r\n', "row 2", "line 4:", id="after a blank line"),
        pytest.param(b'"a"b,c\r\nx,y\r\n', "header", "line 1:", id="in the header"),
    ],
)
def test_quoting_rfc_4180_does_not_allow_is_refused_naming_the_row(data: bytes, field: str, says: str) -> None:
    """Python's reader took ``"Hai"nan`` as ``Hainan``, and an unclosed quote as a cell holding the rest of the
    file (refused, if at all, as a row with too few cells)."""
    with pytest.raises(RecordRejected) as refused:
        tabular.read_csv_table(data)
    [problem] = refused.value.problems
    assert (problem.field, problem.code) == (field, IssueCode.MALFORMED_FILE)
    assert f"is not valid CSV ({says}" in problem.message and 'written twice ("")' in problem.message


def test_a_cell_past_the_size_limit_is_refused_naming_the_row_and_the_limit() -> None:
    data = b"a,b\r\nx,y\r\n" + b"z" * 200_000 + b",w\r\n"
    with pytest.raises(RecordRejected) as refused:
        tabular.read_csv_table(data)
    [problem] = refused.value.problems
    assert (problem.field, problem.code) == ("row 2", IssueCode.MALFORMED_FILE)
    assert "a cell may hold at most 131,072 characters" in problem.message


def test_a_cell_the_reader_would_refuse_is_refused_when_written_and_one_at_the_limit_reads_back() -> None:
    limit = csv.field_size_limit()
    at_the_limit = ['"' * limit, "z" * limit]
    assert tabular.read_csv_table(tabular.write_csv_table(["a", "b"], [at_the_limit])) == (["a", "b"], [at_the_limit])
    with pytest.raises(RecordRejected) as refused:
        tabular.write_csv_table(["a", "b"], [["x", "y"], ["x", "z" * (limit + 1)]])
    [problem] = refused.value.problems
    assert (problem.field, problem.code) == ("row 2.b", IssueCode.BAD_VALUE)
    # what map reads from JSON and cannot write as CSV it refuses to write, rather than write what it cannot read
    result = map_batch("cn-ccer", "cn-ccer", [{**GOOD, "project_name": "p" * (limit + 1)}], adapters=ADAPTERS)
    assert result.ok
    with pytest.raises(RecordRejected, match=r"row 1\.project_name: holds 131,073 characters"):
        encode_outputs(result, ADAPTERS["cn-ccer"], "csv")


@pytest.mark.parametrize(
    ("name", "field", "says"),
    [
        ("", "column 3", "has no name"),
        (" ", "column 3", "has no name"),
        (" b", " b", "\" b\" (column 3) has characters around the name 'b'"),
        ("\ufeffb", "\\ufeffb", "(column 3) has characters around the name 'b'"),
        ("c", "c", '"c" (column 3) is not a column of this table (check its spelling)'),
        ("\u0432", "\u0432", "(check its spelling)"),
        ("\uff42", "\uff42", "holds U+FF42, which only look like the characters of 'b'"),
        ("Action\u00a0date", "Action\u00a0date", "holds U+00A0, which only look like the characters of 'Action date'"),
        ("Acti\u043en date", "Acti\u043en date", "holds U+043E, which only look like the characters of 'Action date'"),
        ("Actoin date", "Actoin date", "did you mean 'Action date'?"),
    ],
)
def test_a_header_cell_that_names_no_column_says_what_a_reader_cannot_see(name: str, field: str, says: str) -> None:
    with pytest.raises(RecordRejected) as refused:
        tabular.check_header(["a", "x", name], ["a", "x", "b", "Action date"], exact_order=False)
    unknown = [p for p in refused.value.problems if p.code is IssueCode.UNKNOWN_FIELD]
    assert [p.field for p in unknown] == [field]
    assert says in unknown[0].message


def test_quoted_commas_quotes_and_line_breaks_a_bom_and_nul_are_read_as_written() -> None:
    data = (
        b'\xef\xbb\xbfa,b,c\r\n"x, y","say ""hi""",\r\n"l1\nl2","l1\r\nl2","l1\rl2"\r\nab"c,\x00,""\n\r\nlast,row,here'
    )
    assert tabular.read_csv_table(data) == (
        ["a", "b", "c"],
        [["x, y", 'say "hi"', ""], ["l1\nl2", "l1\r\nl2", "l1\rl2"], ['ab"c', "\x00", ""], ["last", "row", "here"]],
    )


def test_what_the_csv_writer_writes_reads_back_as_the_same_cells() -> None:
    values = ['"', '""', "a,b", "\r", "\n", "\r\n", " lead", "trail ", '"quoted"', "x\x00y", "\u2028", ""]
    data = tabular.write_csv_table(["v", "w"], [[v, v] for v in values])
    assert tabular.read_csv_table(data) == (["v", "w"], [[v, v] for v in values if v])


SEPARATORS = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\r"]


def test_text_lines_end_at_a_line_feed_only() -> None:
    """``str.splitlines`` also ended a line at each of `SEPARATORS`: one line, two records."""
    inside = "".join(f"{n}{c}" for n, c in enumerate(SEPARATORS))
    data = f"\ufeffA\r\n\n  B \t\r\n{inside}9\nC".encode()
    assert tabular.read_text_lines(data, "serial") == [
        {"serial": "A"},
        {"serial": "B"},
        {"serial": inside + "9"},
        {"serial": "C"},
    ]


@pytest.mark.parametrize("separator", SEPARATORS)
def test_a_serial_holding_a_line_separator_is_one_record_refused_by_its_grammar(separator: str) -> None:
    serial = "19385-941467007-941467431-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1"
    data = f"{serial}\n{serial[:20]}{separator}{serial[20:]}\n".encode()
    result = map_batch("serial-vcs", "cadt-v2-units", data, source_format="text", adapters=ADAPTERS)
    assert [(i.position, i.field, i.code) for i in result.issues] == [(2, "serial", IssueCode.BAD_PATTERN)]
    assert len(result.records) == 2


FORMULA_LEADS = ["=1+1", '=HYPERLINK("http://example.com","x")', "+41 22", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]
"""Text a spreadsheet opening the file would take for a formula (OWASP, CSV injection): it begins with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return."""


def test_formula_looking_text_is_a_text_cell_in_xlsx_and_exact_text_in_csv() -> None:
    # XLSX: each is an inline string, never a formula (no <f>), and a negative number written as a number stays
    # a number cell; both read back as written. CSV carries each text exactly (README, "Adapters"): our reader,
    # and any program, reads back what the registry recorded.
    import zipfile

    rows: list[list[object]] = [[v, -5] for v in FORMULA_LEADS]
    data = tabular.write_xlsx([("Sheet", ["Note", "Quantity"], rows)])
    with zipfile.ZipFile(io.BytesIO(data)) as package:
        sheet = package.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in sheet and "<f " not in sheet
    assert sheet.count('t="inlineStr"') == 2 + len(FORMULA_LEADS) and sheet.count('t="n"><v>-5</v>') == len(rows)
    assert tabular.read_xlsx_sheet(data, None) == (["Note", "Quantity"], rows)
    assert tabular.read_csv_table(tabular.write_csv_table(["Note"], [[v] for v in FORMULA_LEADS])) == (
        ["Note"],
        [[v] for v in FORMULA_LEADS],
    )
