"""`map_rows`: the rows the mapping RPCs carry equal `map_batch`'s, whichever path produced them.

The fast path (`adapters.cn_ccer.read_json_checked` and the spelled rows of `adapters.rows`) must never
accept what the full path refuses, nor spell a value differently. Hypothesis feeds both paths the same
batches: clean ones, which the fast path must take, and batches with one field of one record spoiled in
one of many ways, which both paths must answer identically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import rows as rows_module
from adapters.cn_ccer import ADAPTER as CCER
from adapters.cn_ccer import read_json_checked
from adapters.context import MappingContext
from adapters.mapping import map_batch
from adapters.rows import MappedRows, Row, from_batch, map_rows
from adapters.serials.domestic import ISSUANCE_CODE, DomesticFormat
from adapters.serials.itmo import FirstIdStyle
from gateway.domain.blocks import MAX_SERIAL
from gateway.domain.canonical import MitigationType
from gateway.domain.mapping import IssueCode, RecordRejected
from tests.adapters import strategies as s
from tests.adapters.test_domestic import GOOD

CTX = s.action_context()
NO_DEFAULT_MITIGATION = s.action_context(mitigation_type=None)
BARE_IDS = dataclasses.replace(CTX, first_id_style=FirstIdStyle.BARE_SERIAL)
PER_ISSUANCE = dataclasses.replace(CTX, ccer_format=DomesticFormat("CCER", "CN-CCER", "CN-CCER", per_issuance=True))
CONTEXTS = {"default": CTX, "no default mitigation": NO_DEFAULT_MITIGATION, "bare ids": BARE_IDS}

SLOW = settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
SPOILED = settings(max_examples=12, suppress_health_check=[HealthCheck.too_slow])


def full(payload: bytes, ctx: MappingContext, *, strict: bool = False, per_record: bool = False) -> MappedRows:
    return from_batch(
        map_batch(
            "cn-ccer", "aef-actions", payload, source_format="json", context=ctx, strict=strict, per_record=per_record
        )
    )


def fast(payload: bytes, ctx: MappingContext, *, strict: bool = False, per_record: bool = False) -> MappedRows:
    return map_rows(
        "cn-ccer", "aef-actions", payload, source_format="json", context=ctx, strict=strict, per_record=per_record
    )


@st.composite
def clean_records(draw: st.DrawFn, min_size: int = 1) -> list[dict[str, Any]]:
    """Valid ``cn-ccer`` JSON records with disjoint blocks, every value of the JSON type parse takes as is."""
    n = draw(st.integers(min_size, 6))
    records = []
    for i in range(n):
        start = i * 10**7 + draw(st.integers(0, 10**6))
        end = start + draw(st.integers(0, 10**6))
        period_start = draw(s.date)
        record: dict[str, Any] = {
            "ccer_id": draw(s.words),
            "project_id": draw(s.words),
            "project_name": draw(s.text),
            "project_type_code": draw(st.from_regex(r"[A-Z][0-9]{4}", fullmatch=True)),
            "methodology_code": draw(st.from_regex(r"CCER-[0-9]{2}-[0-9]{3}-V[0-9]{2}", fullmatch=True)),
            "province": draw(s.text),
            "monitoring_period_start": period_start.isoformat(),
            "monitoring_period_end": draw(st.dates(period_start, dt.date(2045, 12, 31))).isoformat(),
            "vintage": draw(s.year),
            "certified_quantity": end - start + 1 + draw(st.integers(0, 1000)),
            "block_start": start,
            "block_end": end,
        }
        mitigation = draw(st.sampled_from(["absent", "", *(m.value for m in MitigationType)]))
        if mitigation != "absent":
            record["mitigation_type"] = mitigation
        records.append(record)
    return records


BLANKS: list[object] = ["", "   ", "\u3000", "\t\n"]  # \u3000, an ideographic space, is blank like any other
WRONG_TYPES: list[object] = [None, [], {}, True, 1.0, 7]
SPOILS: dict[str, list[object]] = {
    "ccer_id": BLANKS,
    "project_id": BLANKS,
    "project_name": BLANKS,
    "province": BLANKS,
    "project_type_code": [*BLANKS, "n0101", "N01011", "N010", " N0101", "N０１０１"],
    "methodology_code": [*BLANKS, "CCER-14-001-V1", "CCER-14-001-V01 ", "ccer-14-001-v01", "CCER-１４-001-V01"],
    "monitoring_period_start": [*BLANKS, "2021-1-01", "2021-02-29", "2021-13-01", "２０２１-０１-０１", "20210101"],
    "monitoring_period_end": ["2021-01-01T00:00:00", "2021-02-30", "1999-12-31"],
    "vintage": [999, 10000, 0, -1, 2021.0, 2021.5, "2021", "２０２１"],
    "certified_quantity": [0, -1, 100.0, "100", "-100", "100.5", 2**63, 2**64 - 1],
    "block_start": [-1, MAX_SERIAL + 1, 10**30, "1", 1.5],
    "block_end": [-1, MAX_SERIAL, MAX_SERIAL + 1, "2000", 2000.0],
    "mitigation_type": [*BLANKS, None, "Avoidance", "Removals ", "removals"],
}
"""Values of each field that are wrong, or right only in a spelling the typed fast decoder does not take."""


STRUCTURAL = ("remove a field", "unknown field", "overlap", "touch", "reverse", "oversize")
CHANGES = [
    *(pytest.param(field, value, id=f"{field}={value!r}") for field in SPOILS for value in SPOILS[field] + WRONG_TYPES),
    *(pytest.param(change, None, id=change) for change in STRUCTURAL),
]


@st.composite
def spoiled_batches(draw: st.DrawFn, change: str, value: object) -> list[dict[str, Any]]:
    """A clean batch of three or more records with one spoiled by ``change``: a field given ``value``, a field
    removed, an unknown field added, or the block overlapping (or just touching) another, reversed, or larger
    than the certified quantity."""
    records = draw(clean_records(min_size=3))
    victim = records[draw(st.integers(0, len(records) - 1))]
    other = records[0] if victim is not records[0] else records[-1]
    if change in SPOILS:
        victim[change] = value
        if change in ("block_start", "block_end") and isinstance(value, int) and not isinstance(value, bool):
            # Keep the certified quantity large enough, so that only the serial itself is wrong.
            victim["certified_quantity"] = max(1, victim["block_end"] - victim["block_start"] + 1)
    elif change == "remove a field":
        victim.pop(draw(st.sampled_from(sorted(SPOILS))), None)
    elif change == "unknown field":
        victim["block_count"] = 1
    elif change in ("overlap", "touch"):
        reach = 0 if change == "touch" else draw(st.integers(0, other["block_end"] - other["block_start"]))
        victim["block_start"] = other["block_end"] - reach
        victim["block_end"] = max(victim["block_end"], victim["block_start"])
        victim["certified_quantity"] = victim["block_end"] - victim["block_start"] + 1
    elif change == "reverse":
        victim["block_start"], victim["block_end"] = victim["block_end"] + 1, victim["block_start"]
    elif change == "oversize":
        victim["certified_quantity"] = victim["block_end"] - victim["block_start"]
    return records


def encode(records: list[dict[str, Any]]) -> bytes:
    return json.dumps(records, ensure_ascii=False).encode()


@SLOW
@given(clean_records(), st.sampled_from(sorted(CONTEXTS)), st.booleans())
def test_a_clean_batch_takes_the_fast_path_and_gives_exactly_the_full_paths_rows(
    records: list[dict[str, Any]], context: str, per_record: bool
) -> None:
    ctx = CONTEXTS[context]
    payload = encode(records)
    checked = read_json_checked(payload, ctx)
    assert checked is not None and len(checked) == len(records)
    for record, raw in zip(checked, records, strict=True):
        assert CCER.parse(record.raw(), ctx) == CCER.parse(raw, ctx)
    assert fast(payload, ctx, per_record=per_record) == full(payload, ctx, per_record=per_record)


@pytest.mark.parametrize(("change", "value"), CHANGES)
def test_a_spoiled_batch_gets_the_same_answer_from_both_paths(change: str, value: object) -> None:
    @SPOILED
    @given(spoiled_batches(change, value), st.sampled_from(sorted(CONTEXTS)), st.booleans(), st.booleans())
    def check(records: list[dict[str, Any]], context: str, strict: bool, per_record: bool) -> None:
        ctx = CONTEXTS[context]
        payload = encode(records)
        checked = read_json_checked(payload, ctx)
        if checked is not None:
            # Vouched for: the full path must accept every record, with the same values.
            for record, raw in zip(checked, records, strict=True):
                assert CCER.parse(record.raw(), ctx) == CCER.parse(raw, ctx)
        assert fast(payload, ctx, strict=strict, per_record=per_record) == full(
            payload, ctx, strict=strict, per_record=per_record
        )

    check()


@settings(max_examples=20, suppress_health_check=[HealthCheck.too_slow])
@given(clean_records())
def test_per_issuance_numbering_goes_the_full_path_and_is_refused_there(records: list[dict[str, Any]]) -> None:
    for record in records:  # CCER IDs that can name an issuance (`ISSUANCE_IDS`)
        record["ccer_id"] = f"CCER-{record['ccer_id'].upper()}"
        assert ISSUANCE_CODE.fullmatch(record["ccer_id"])
    payload = encode(records)
    mapped = fast(payload, PER_ISSUANCE)
    assert mapped == full(payload, PER_ISSUANCE)
    assert not mapped.applied and {i.code for i in mapped.issues} == {IssueCode.UNSUPPORTED}


JSON_EDGES: dict[str, bytes] = {
    "byte-order mark": b"\xef\xbb\xbf" + encode([GOOD]),
    "NaN quantity": encode([GOOD]).replace(b'"certified_quantity": 5000', b'"certified_quantity": NaN'),
    "exponent vintage": encode([GOOD]).replace(b'"vintage": 2021', b'"vintage": 2.021e3'),
    "a fraction below float precision": encode([GOOD]).replace(
        b'"block_end": 2000', b'"block_end": 2000.00000000000001'
    ),
    "an exponent past a decimal's": encode([GOOD]).replace(
        b'"block_end": 2000', b'"block_end": 2e-99999999999999999999'
    ),
    "a serial past float precision": encode([GOOD]).replace(
        b'"block_start": 1001', b'"block_start": 9007199254740993.0'
    ),
    "a key twice": encode([GOOD]).replace(b'"block_end": 2000', b'"block_end": 1500, "block_end": 2000'),
    "a value starting with a colon": encode([{**GOOD, "project_name": ": a name"}]),
    "a space before each colon": encode([GOOD]).replace(b'": ', b'" : '),
    "an escaped quote": encode([{**GOOD, "project_name": 'the "Wind" farm'}]),
    "escaped text": encode([{**GOOD, "province": "Guangdong\\u7701"}]),
    "raw control character": encode([GOOD]).replace("广东省".encode(), b"a\tb"),
    "not an array": encode(GOOD),  # type: ignore[arg-type]
    "array of arrays": b"[[1, 2]]",
    "trailing comma": encode([GOOD])[:-1] + b",]",
    "empty array": b"[]",
    "deep nesting": b"[" * 100_000,
    "not UTF-8": b"[\xff]",
}


@pytest.mark.parametrize("name", sorted(JSON_EDGES))
def test_json_edge_cases_get_the_full_paths_answer(name: str) -> None:
    payload = JSON_EDGES[name]
    assert fast(payload, CTX) == full(payload, CTX)


@pytest.mark.parametrize(
    ("written", "field"),
    [
        ("2000.00000000000001", "block_end"),
        ("9007199254740993.0", "block_start"),
        ("1.0000000000000001e3", "block_end"),
    ],
)
def test_a_number_no_float_holds_is_refused_not_rounded_to_another_whole_number(written: str, field: str) -> None:
    # json.loads would give 2000.0, 9007199254740992.0 and 1000.0: whole numbers nobody wrote.
    payload = encode([GOOD]).replace(f'"{field}": {GOOD[field]}'.encode(), f'"{field}": {written}'.encode())
    assert written.encode() in payload
    mapped = full(payload, CTX)
    assert mapped == fast(payload, CTX)
    assert not mapped.applied
    assert [(i.field, i.code) for i in mapped.issues] == [(field, IssueCode.BAD_QUANTITY)]
    assert written in mapped.issues[0].message
    exact = encode([GOOD]).replace(f'"{field}": {GOOD[field]}'.encode(), f'"{field}": {GOOD[field]}.0'.encode())
    assert full(exact, CTX).applied  # a fraction a float holds exactly is still the whole number written


REPEATED_MEMBERS = {
    "compact": b'"block_end":20000,"block_end":20100',
    "spaced": b'"block_end" : 20000, "block_end"\n:\t20100',
    "beside a value starting with a colon": b'"block_end": 20000, "block_end": 20100, "project_id": ": P"',
    "an optional member": b'"block_end": 20100, "mitigation_type": "", "mitigation_type": ""',
}


@pytest.mark.parametrize("name", sorted(REPEATED_MEMBERS))
def test_a_member_named_twice_is_refused_by_both_paths_naming_the_record(name: str) -> None:
    first, second = encode([credit(1)]), encode([credit(2)]).replace(b'"block_end": 20100', REPEATED_MEMBERS[name])
    assert second != encode([credit(2)])
    payload = first[:-1] + b", " + second[1:]
    assert read_json_checked(payload, CTX) is None
    mapped = fast(payload, CTX)
    assert mapped == full(payload, CTX)
    assert not mapped.applied
    [issue] = mapped.issues
    member = "mitigation_type" if "optional" in name else "block_end"
    assert (issue.first, issue.field, issue.code) == (0, member, IssueCode.MALFORMED_FILE)
    assert "record 2" in issue.message


def test_a_repeated_member_name_is_named_escaped_as_an_unknown_one_is() -> None:
    name = "a\nb\u001b[31m" + "x" * 100
    mapped = fast(f"[{{{json.dumps(name)}: 1, {json.dumps(name)}: 2}}]".encode(), CTX)
    [issue] = mapped.issues
    assert issue.field.startswith("a\\nb\\x1b[31mx") and "\n" not in issue.field and len(issue.field) == 80


def test_a_clean_batch_in_any_layout_is_vouched_for() -> None:
    records = [
        credit(1),
        {**credit(2), "mitigation_type": "Removals"},
        {**credit(3), "project_name": 'a "b": c\\', "province": '\\":'},
    ]
    for layout in ({}, {"indent": 2}, {"separators": (",", ":")}, {"ensure_ascii": False}):
        checked = read_json_checked(json.dumps(records, **layout).encode(), CTX)
        assert checked is not None and [r.stated_mitigation_type for r in checked] == ["", "Removals", ""]
        assert checked[2].project_name == 'a "b": c\\' and checked[2].province == '\\":'


def test_deep_nesting_is_a_malformed_file_not_a_crash() -> None:
    mapped = fast(JSON_EDGES["deep nesting"], CTX)
    assert not mapped.applied
    assert [(i.first, i.field, i.code) for i in mapped.issues] == [(0, "file", IssueCode.MALFORMED_FILE)]


def _calls_of_map_batch(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real: Callable[..., Any] = map_batch

    def counting(source: str, target: str, payload: Any, **kwargs: Any) -> Any:
        sizes.append(len(payload) if isinstance(payload, list) else -1)
        return real(source, target, payload, **kwargs)

    monkeypatch.setattr(rows_module, "map_batch", counting)
    return sizes


def credit(n: int, **changes: object) -> dict[str, object]:
    return {**GOOD, "ccer_id": f"CCER-44-2024-{n:04d}", "block_start": n * 10_000 + 1, "block_end": n * 10_000 + 100}


def test_a_large_json_batch_maps_all_but_its_first_record_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = encode([credit(n) for n in range(1, 501)])
    expected = full(payload, CTX)
    sizes = _calls_of_map_batch(monkeypatch)
    mapped = fast(payload, CTX)
    assert sizes == [1]  # only the first record went the full way
    assert mapped == expected and len(mapped.rows) == 500


def test_csv_and_numbers_written_as_text_take_the_second_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    as_text = [{k: str(v) for k, v in credit(n).items()} for n in range(1, 51)]
    payload = encode(as_text)
    assert read_json_checked(payload, CTX) is None  # "1001" is not a JSON number
    expected = full(payload, CTX)
    sizes = _calls_of_map_batch(monkeypatch)
    assert fast(payload, CTX) == expected
    assert sizes == [1]


def test_a_record_without_a_mitigation_type_or_a_default_goes_the_full_path() -> None:
    payload = encode([{**credit(1), "mitigation_type": "Removals"}, credit(2)])
    mapped = fast(payload, NO_DEFAULT_MITIGATION)
    assert mapped == full(payload, NO_DEFAULT_MITIGATION)
    assert not mapped.applied
    assert [(i.first, i.field) for i in mapped.issues] == [(2, "context.facts.mitigation_type")]


def test_a_refused_record_goes_the_full_path_and_is_named() -> None:
    bad = [GOOD, {**GOOD, "ccer_id": "CCER-44-2024-0002", "block_start": -5}]
    mapped = fast(encode(bad), CTX)
    assert not mapped.applied
    assert mapped.rows == ()
    assert [(i.first, i.last, i.field) for i in mapped.issues] == [(2, 2, "block_start")]
    assert mapped.records == 2


def test_the_notes_every_record_shares_are_one_run() -> None:
    mapped = fast(encode([credit(n) for n in range(1, 4)]), CTX)
    assert [(n.first, n.last, n.field, n.code) for n in mapped.notes] == [
        (1, 3, "Underlying unit registry ID", IssueCode.NOMENCLATURE_EXTENSION)
    ]


def test_spelled_rows_behave_as_a_sequence() -> None:
    payload = encode([credit(n) for n in range(1, 6)])
    rows = fast(payload, CTX).rows
    listed = list(rows)
    assert len(rows) == 5 and [r.position for r in listed] == [1, 2, 3, 4, 5]
    assert rows[0] == listed[0] and rows[-1] == listed[4] and rows[-5] == listed[0]
    assert list(rows[1:4]) == listed[1:4] and list(rows[::-2]) == listed[::-2]
    as_tuple: object = tuple(listed)
    assert rows == as_tuple and as_tuple == rows and rows != listed[:4]
    assert isinstance(rows[2], Row) and rows[2].values[15] == "100"
    assert rows.index(listed[3]) == 3 and listed[1] in rows
    for index in (5, -6):
        with pytest.raises(IndexError):
            rows[index]


def test_spelling_that_drifts_from_the_full_path_disables_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = encode([credit(n) for n in range(1, 4)])
    expected = full(payload, CTX)

    def drifted(**parts: object) -> Callable[[object, object], str]:
        return lambda serial, vintage: f"ITMO-{serial}"

    monkeypatch.setattr(rows_module, "first_last_id_formatter", drifted)
    sizes = _calls_of_map_batch(monkeypatch)
    assert fast(payload, CTX) == expected
    assert sizes == [1, -1]  # the fast path tried, its first row disagreed, and the whole batch went the full way


ISSUANCE_IDS = {
    "CCER-44-2024-0001": True,
    "CCER_44.2024": True,
    "ccer-44-2024-0001": False,  # the gateway spells issuance codes in upper case: one spelling, one space
    "CCER/44": False,
    "CCER 44": False,
    "CCER\u300044": False,
    "-44": False,
    "CCER-\u00e9": False,  # composed
    "CCER-e\u0301": False,  # the same decomposed: two spellings would be two issuances
    "CCER-e\u200b": False,  # invisible
    "\u0421CER-44": False,  # Cyrillic Es
    "C" * 64: True,
    "C" * 65: False,
}
"""CCER IDs and whether they can name an issuance (then a serial space) when numbering restarts per issuance."""


@pytest.mark.parametrize("ccer_id", list(ISSUANCE_IDS))
def test_per_issuance_numbering_vouches_only_for_ccer_ids_that_can_name_an_issuance(ccer_id: str) -> None:
    raw = {**GOOD, "ccer_id": ccer_id}
    checked = read_json_checked(encode([raw]), PER_ISSUANCE)
    try:
        parsed = CCER.parse(raw, PER_ISSUANCE)
    except RecordRejected as refused:
        assert not ISSUANCE_IDS[ccer_id]
        assert checked is None
        assert [p.code for p in refused.problems] == [IssueCode.BAD_PATTERN]
    else:
        assert ISSUANCE_IDS[ccer_id]
        assert checked is not None and CCER.parse(checked[0].raw(), PER_ISSUANCE) == parsed
        assert parsed.block.space.issuance == ccer_id


def test_a_column_only_a_later_record_has_is_carried_with_its_value() -> None:
    stated = {**GOOD, "block_start": 5001, "block_end": 5002, "mitigation_type": "Removals"}
    mapped = map_rows("cn-ccer", "cn-ccer", [dict(GOOD), stated])
    assert mapped.applied and mapped.columns[-1] == "mitigation_type"
    assert [row.values[-1] for row in mapped.rows] == ["", "Removals"]
    starts = [dict(zip(mapped.columns, row.values, strict=True))["block_start"] for row in mapped.rows]
    assert starts == ["1001", "5001"]
