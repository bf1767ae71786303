"""``cn-ccer`` and ``cn-cea``: round trips in JSON and CSV, and bad input in each format."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.cn_ccer import ADAPTER as CCER
from adapters.cn_cea import ADAPTER as CEA
from adapters.context import MappingContext
from adapters.mapping import map_batch
from adapters.serials.domestic import DomesticFormat
from gateway.domain.canonical import CcerCredit, CeaAllowance
from gateway.domain.mapping import IssueCode
from tests.adapters import strategies as s

CTX = MappingContext()
ADAPTERS = s.built_in_adapters()


def _rows(records: list[Any], adapter: Any) -> list[Mapping[str, object]]:
    return [adapter.render(r, CTX).row for r in records]


@pytest.mark.parametrize("fmt", ["json", "csv"])
@given(credits=st.lists(s.ccer_credits(), min_size=1, max_size=5))
def test_ccer_round_trip_field_by_field(fmt: str, credits: list[CcerCredit]) -> None:
    data = CCER.encode(_rows(credits, CCER), fmt)
    parsed = [CCER.parse(raw, CTX) for raw in CCER.decode(data, fmt)]
    for before, after in zip(credits, parsed, strict=True):
        for name in (
            "project_name",
            "project_type_code",
            "province",
            "monitoring_period_start",
            "monitoring_period_end",
            "certified_quantity",
            "ccer_id",
            "project_id",
            "methodology_code",
            "vintage",
        ):
            assert getattr(after, name) == getattr(before, name), name
        assert after.block == before.block
    assert all(not CCER.render(c, CTX).lost for c in credits)


@pytest.mark.parametrize("fmt", ["json", "csv"])
@given(holdings=st.lists(s.cea_allowances(), min_size=1, max_size=5))
def test_cea_round_trip_field_by_field(fmt: str, holdings: list[CeaAllowance]) -> None:
    data = CEA.encode(_rows(holdings, CEA), fmt)
    parsed = [CEA.parse(raw, CTX) for raw in CEA.decode(data, fmt)]
    assert parsed == holdings


@given(credits=st.lists(s.ccer_credits(), min_size=1, max_size=4, unique_by=lambda c: c.block.start))
def test_ccer_json_to_csv_and_back_through_map_batch(credits: list[CcerCredit]) -> None:
    data = CCER.encode(_rows(credits, CCER), "json")
    first = map_batch("cn-ccer", "cn-ccer", data, source_format="json", adapters=ADAPTERS, per_record=True)
    kept = [r.output.record for r in first.records if r.output is not None]
    rows = [r.output.row for r in first.records if r.output is not None]
    back = map_batch("cn-ccer", "cn-ccer", CCER.encode(rows, "csv"), source_format="csv", adapters=ADAPTERS)
    assert [m.record for m in back.outputs] == kept
    assert back.lost_fields == ()


GOOD = {
    "ccer_id": "CCER-44-2024-0001",
    "project_id": "P-440001",
    "project_name": "广东某林业碳汇项目",
    "project_type_code": "N0101",
    "methodology_code": "CCER-14-001-V01",
    "province": "广东省",
    "monitoring_period_start": "2021-01-01",
    "monitoring_period_end": "2021-12-31",
    "vintage": 2021,
    "certified_quantity": 5000,
    "block_start": 1001,
    "block_end": 2000,
}


def _csv(rows: list[dict[str, object]], drop: str = "") -> bytes:
    fields = [f for f in [*GOOD, "mitigation_type"] if f != drop]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def _second(**changes: object) -> dict[str, object]:
    return {**GOOD, "ccer_id": "CCER-44-2024-0002", "block_start": 5001, "block_end": 5100, **changes}


BAD = [
    ("methodology_code", {"methodology_code": "CCER-14-1-V1"}, IssueCode.BAD_PATTERN),
    ("project_type_code", {"project_type_code": "afforestation"}, IssueCode.BAD_PATTERN),
    ("mitigation_type", {"mitigation_type": "Avoidance"}, IssueCode.BAD_VALUE),
    ("monitoring_period_start", {"monitoring_period_start": "2021/01/01"}, IssueCode.BAD_DATE),
    ("monitoring_period_end", {"monitoring_period_end": "2021-02-30"}, IssueCode.BAD_DATE),
    ("certified_quantity", {"certified_quantity": "-100"}, IssueCode.BAD_QUANTITY),
    ("certified_quantity", {"certified_quantity": "100.5"}, IssueCode.BAD_QUANTITY),
    ("block_end", {"block_end": 5000}, IssueCode.BLOCK_ORDER),
    ("block_start", {"block_start": 1500, "block_end": 1600}, IssueCode.DUPLICATE_SERIAL),
    ("block_end", {"certified_quantity": 10}, IssueCode.QUANTITY_MISMATCH),
    ("province", {"province": ""}, IssueCode.MISSING_FIELD),
    ("block_start", {"block_start": "9" * 5000}, IssueCode.BAD_QUANTITY),
    ("certified_quantity", {"certified_quantity": "1" * 20}, IssueCode.BAD_QUANTITY),
    ("block_start", {"block_start": "5\uff10\uff10\uff11"}, IssueCode.BAD_QUANTITY),
    ("vintage", {"vintage": "\u0662\u0660\u0662\u0661"}, IssueCode.BAD_QUANTITY),
    ("block_end", {"block_end": 2**63 - 1}, IssueCode.BAD_VALUE),
    ("block_end", {"block_end": 2**63}, IssueCode.BAD_QUANTITY),
    ("certified_quantity", {"certified_quantity": 10**25}, IssueCode.BAD_QUANTITY),
    ("certified_quantity", {"certified_quantity": 2**63}, IssueCode.BAD_QUANTITY),
]


@pytest.mark.parametrize("fmt", ["json", "csv"])
@pytest.mark.parametrize(("field", "change", "code"), BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_bad_ccer_input_names_record_and_field_and_nothing_is_applied(
    fmt: str, field: str, change: dict[str, object], code: IssueCode
) -> None:
    rows = [dict(GOOD), _second(**change), _second(ccer_id="C3", block_start=9001, block_end=9002)]
    data = json.dumps(rows).encode() if fmt == "json" else _csv(rows)
    result = map_batch("cn-ccer", "cn-ccer", data, source_format=fmt, adapters=ADAPTERS)
    assert not result.applied and result.outputs == ()
    assert [(i.position, i.field, i.code) for i in result.issues] == [(2, field, code)]
    assert str(result.issues[0]).startswith(f"record 2, field {field!r}")
    per_record = map_batch("cn-ccer", "cn-ccer", data, source_format=fmt, adapters=ADAPTERS, per_record=True)
    assert [r.position for r in per_record.records if r.output is not None] == [1, 3]


@pytest.mark.parametrize("field", ["project_name", "ccer_id", "province"])
def test_a_lone_surrogate_in_text_is_refused_naming_the_field(field: str) -> None:
    data = json.dumps([dict(GOOD), _second(**{field: "a\ud800b"})]).encode()
    result = map_batch("cn-ccer", "cn-ccer", data, source_format="json", adapters=ADAPTERS)
    assert [(i.position, i.field, i.code) for i in result.issues] == [(2, field, IssueCode.BAD_VALUE)]
    assert "U+D800" in result.issues[0].message


def test_missing_csv_column_is_a_batch_problem_naming_the_column() -> None:
    result = map_batch("cn-ccer", "cn-ccer", _csv([GOOD], drop="province"), source_format="csv", adapters=ADAPTERS)
    assert [(i.position, i.field, i.code) for i in result.issues] == [(0, "province", IssueCode.MISSING_FIELD)]
    assert not result.applied


def test_unknown_json_field_is_refused_not_dropped() -> None:
    result = map_batch(
        "cn-ccer", "cn-ccer", json.dumps([{**GOOD, "provnce": "x"}]).encode(), source_format="json", adapters=ADAPTERS
    )
    assert [(i.field, i.code) for i in result.issues] == [("provnce", IssueCode.UNKNOWN_FIELD)]


def test_cea_quantity_must_match_its_block_and_sector_is_a_vocabulary() -> None:
    row = {
        "holder_account": "ACC-1",
        "compliance_entity": "Huaneng Power",
        "sector": "power",
        "allocation_year": 2023,
        "quantity": 100,
        "registry_reference": "REF-1",
        "block_start": 1,
        "block_end": 100,
    }
    assert CEA.parse(row, CTX).quantity == 100
    bad = [row, {**row, "block_start": 101, "block_end": 200, "quantity": 99, "sector": "chemicals"}]
    result = map_batch("cn-cea", "cn-cea", json.dumps(bad).encode(), source_format="json", adapters=ADAPTERS)
    assert {(i.position, i.field, i.code) for i in result.issues} == {
        (2, "quantity", IssueCode.QUANTITY_MISMATCH),
        (2, "sector", IssueCode.BAD_VALUE),
    }


def test_per_issuance_numbering_keeps_equal_ranges_apart() -> None:
    fmt = DomesticFormat("CCER", "CN-CCER", "CN-CCER", per_issuance=True)
    ctx = MappingContext(ccer_format=fmt)
    rows = [dict(GOOD, block_start=1, block_end=100), _second(block_start=1, block_end=100)]
    result = map_batch("cn-ccer", "serial-cn-ccer", rows, context=ctx, adapters=ADAPTERS)
    assert result.ok
    assert [m.row["serial"] for m in result.outputs] == [
        "CN-CCER/CCER-44-2024-0001/2021/1-100",
        "CN-CCER/CCER-44-2024-0002/2021/1-100",
    ]
    continuous = map_batch("cn-ccer", "serial-cn-ccer", rows, adapters=ADAPTERS)
    assert [i.code for i in continuous.issues] == [IssueCode.DUPLICATE_SERIAL]


def test_a_json_number_too_long_to_read_is_a_malformed_file_not_a_failure() -> None:
    data = json.dumps([GOOD]).replace('"block_start": 1001', '"block_start": ' + "9" * 5000).encode()
    result = map_batch("cn-ccer", "cn-ccer", data, source_format="json", adapters=ADAPTERS)
    assert [(i.position, i.field, i.code) for i in result.issues] == [(0, "file", IssueCode.MALFORMED_FILE)]
    assert "is not valid UTF-8 JSON" in str(result.issues[0])


def test_an_infinite_quantity_is_named_as_such_not_as_fractional() -> None:
    # JSON's 1e400 is read as an infinite float.
    data = json.dumps([dict(GOOD)]).replace('"certified_quantity": 5000', '"certified_quantity": 1e400').encode()
    assert b"1e400" in data
    result = map_batch("cn-ccer", "cn-ccer", data, source_format="json", adapters=ADAPTERS)
    [issue] = result.issues
    assert (issue.field, issue.code) == ("certified_quantity", IssueCode.BAD_QUANTITY)
    assert "inf is not a finite number" in issue.message
