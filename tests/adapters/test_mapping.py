"""Batch mapping: loss accounting, strict mode, all-or-nothing batches, context facts and the fast path."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.cn_ccer import ADAPTER as CCER
from adapters.context import MappingContext, context_from_json
from adapters.mapping import ccer_to_aef_actions, encode_outputs, map_batch
from gateway.domain.canonical import CcerCredit, MitigationType
from gateway.domain.mapping import IssueCode, MappingError, RecordRejected
from gateway.domain.records import ActionType, Purpose
from tests.adapters import strategies as s

ADAPTERS = s.built_in_adapters()
CTX = s.action_context()
CCER_ONLY = {
    "ccer_id",
    "project_id",
    "project_name",
    "project_type_code",
    "methodology_code",
    "province",
    "monitoring_period_start",
    "monitoring_period_end",
    "certified_quantity",
}

distinct_credits = st.lists(s.ccer_credits(), min_size=1, max_size=6).map(
    lambda cs: [
        dataclasses.replace(
            c,
            block=c.block.with_range(
                i * 10**7 + c.block.start % 10**6, i * 10**7 + c.block.start % 10**6 + c.block.end - c.block.start
            ),
        )
        for i, c in enumerate(cs)
    ]
)


def _rows(credits: list[CcerCredit]) -> list[dict[str, object]]:
    return [CCER.render(c, MappingContext()).row for c in credits]


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(distinct_credits)
def test_ccer_to_actions_lists_exactly_the_fields_the_target_cannot_carry(credits: list[CcerCredit]) -> None:
    result = map_batch("cn-ccer", "aef-actions", _rows(credits), context=CTX, adapters=ADAPTERS)
    assert result.ok and result.applied
    for record, credit in zip(result.records, credits, strict=True):
        assert set(record.lost_fields) == CCER_ONLY
        row = record.output.row if record.output else {}
        assert row["Quantity (t CO2 eq)"] == credit.block.quantity
        assert row["First unit ID"] == f"CN-CCER/{credit.vintage}/{credit.block.start}-{credit.block.start}"
        assert row["Vintage"] == credit.vintage
        assert row["Mitigation type"] == (credit.block.mitigation_type or MitigationType.REMOVALS.value)
    assert [n.code for n in result.notes] == [IssueCode.NOMENCLATURE_EXTENSION] * len(credits)


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(distinct_credits)
def test_fast_path_equals_the_general_mapping(credits: list[CcerCredit]) -> None:
    general = map_batch("cn-ccer", "aef-actions", _rows(credits), context=CTX, adapters=ADAPTERS)
    assert ccer_to_aef_actions(credits, CTX) == [m.record for m in general.outputs]


@settings(max_examples=20, suppress_health_check=[HealthCheck.too_slow])
@given(distinct_credits)
def test_ccer_to_cad_trust_units_and_to_holdings(credits: list[CcerCredit]) -> None:
    units = map_batch("cn-ccer", "cadt-v2-units", _rows(credits), context=CTX, adapters=ADAPTERS)
    assert units.ok
    assert [m.row["unit_serial_id"] for m in units.outputs] == [
        f"CN-CCER/{c.vintage}/{c.block.start}-{c.block.end}" for c in credits
    ]
    back = map_batch("cadt-v2-units", "cn-ccer", [m.row for m in units.outputs], adapters=ADAPTERS)
    assert [i.code for i in back.issues] == [IssueCode.NO_MAPPING], "no invented project facts"
    holdings = map_batch("cn-ccer", "aef-holdings", _rows(credits), context=CTX, adapters=ADAPTERS)
    assert holdings.ok and set(holdings.lost_fields) == CCER_ONLY


def test_strict_refuses_lossy_mappings_and_says_which_fields() -> None:
    credits = [CCER.parse(_good(), MappingContext())]
    result = map_batch("cn-ccer", "aef-actions", _rows(credits), context=CTX, adapters=ADAPTERS, strict=True)
    assert not result.applied
    (issue,) = result.issues
    assert issue.code is IssueCode.LOSSY_MAPPING and issue.position == 1
    assert all(name in issue.field for name in CCER_ONLY)


def _good(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "ccer_id": "CCER-2024-001",
        "project_id": "P-1",
        "project_name": "Mangrove restoration",
        "project_type_code": "N0102",
        "methodology_code": "CCER-14-002-V01",
        "province": "Hainan",
        "monitoring_period_start": "2023-01-01",
        "monitoring_period_end": "2023-12-31",
        "vintage": 2023,
        "certified_quantity": 1000,
        "block_start": 1,
        "block_end": 1000,
    }
    base.update(changes)
    return base


def test_unconfigured_facts_are_refused_not_invented() -> None:
    result = map_batch("cn-ccer", "aef-actions", [_good()], adapters=ADAPTERS)
    fields = {i.field for i in result.issues}
    assert {
        "context.facts.cooperative_approach",
        "context.facts.gwp_values",
        "context.itmo_serials",
        "context.extension_codes.CN-CCER",
    } <= fields
    assert all(i.code is IssueCode.UNCONFIGURED for i in result.issues)


def test_context_facts_must_obey_the_action_type_rules() -> None:
    ctx = s.action_context(ActionType.ACQUISITION)
    result = map_batch("cn-ccer", "aef-actions", [_good()], context=ctx, adapters=ADAPTERS)
    assert {(i.field, i.code) for i in result.issues} >= {
        ("Acquiring participating Party ID", IssueCode.NOT_APPLICABLE),
        ("Transferring participating Party ID", IssueCode.MISSING_FIELD),
    }
    use = s.action_context(ActionType.USE, acquiring_party=None, purpose=Purpose.NDC, ndc_year_of_use=2025)
    assert map_batch("cn-ccer", "aef-actions", [_good()], context=use, adapters=ADAPTERS).ok


def test_per_issuance_serials_cannot_serve_as_itmo_serials() -> None:
    from adapters.serials.domestic import DomesticFormat

    ctx = dataclasses.replace(CTX, ccer_format=DomesticFormat("CCER", "CN-CCER", "CN-CCER", per_issuance=True))
    result = map_batch("cn-ccer", "aef-actions", [_good()], context=ctx, adapters=ADAPTERS)
    assert [(i.field, i.code) for i in result.issues] == [("block.space.issuance", IssueCode.UNSUPPORTED)]


def test_fast_path_refuses_duplicates_and_bad_records_all_or_nothing() -> None:
    good = CCER.parse(_good(), MappingContext())
    overlapping = dataclasses.replace(good, block=good.block.with_range(500, 1500))
    with pytest.raises(MappingError) as refused:
        ccer_to_aef_actions([good, overlapping], CTX)
    assert [(i.position, i.code) for i in refused.value.issues] == [(2, IssueCode.DUPLICATE_SERIAL)]
    no_facts = dataclasses.replace(CTX, facts=dataclasses.replace(CTX.facts, mitigation_type=None))
    with pytest.raises(MappingError) as refused:
        ccer_to_aef_actions([good], no_facts)
    assert [(i.field, i.code) for i in refused.value.issues] == [
        ("context.facts.mitigation_type", IssueCode.UNCONFIGURED)
    ]
    stated = dataclasses.replace(good, block=dataclasses.replace(good.block, mitigation_type="Removals"))
    unstated = dataclasses.replace(good, block=good.block.with_range(2001, 2100))
    with pytest.raises(MappingError) as refused:
        ccer_to_aef_actions([stated, unstated], no_facts)
    assert [(i.position, i.field) for i in refused.value.issues] == [(2, "context.facts.mitigation_type")]
    assert ccer_to_aef_actions([], CTX) == []


def test_serial_lists_map_to_cad_trust_units_and_report_unspellable_facts() -> None:
    serials = (
        b"19385-941467007-941467431-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1\n"
        b"GS1-1-UG-GS11236-16-2024-30307-1-19149\n"
    )
    result = map_batch("serial-vcs", "cadt-v2-units", serials, source_format="text", adapters=ADAPTERS)
    assert [(i.position, i.field, i.code) for i in result.issues] == [(2, "serial", IssueCode.BAD_PATTERN)]
    ok = map_batch(
        "serial-vcs",
        "cadt-v2-units",
        serials.splitlines()[0] + b"\n",
        source_format="text",
        adapters=ADAPTERS,
        strict=True,
    )
    assert ok.ok and ok.outputs[0].row["unit_count"] == 425


VCS_SERIAL = "19385-941467007-941467431-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1"
KYOTO_SERIAL = "CN-5-0-1001-2000-2-2-0-1234-0"


def test_the_context_vintage_serves_only_serials_that_carry_none() -> None:
    kyoto_vintage = context_from_json({"vintage": 2012})
    # a VCS serial carries its vintage (2020): the context's, for Kyoto blocks, is no claim about it
    vcs = map_batch("serial-vcs", "serial-vcs", [{"serial": VCS_SERIAL}], context=kyoto_vintage, adapters=ADAPTERS)
    assert vcs.ok, vcs.issues
    kyoto = map_batch(
        "serial-kyoto",
        "serial-kyoto",
        f"{KYOTO_SERIAL}\n".encode(),
        source_format="text",
        context=kyoto_vintage,
        adapters=ADAPTERS,
    )
    assert kyoto.ok and [m.row for m in kyoto.outputs] == [{"serial": KYOTO_SERIAL, "vintage": 2012}]
    # a CAD Trust unit states its own vintage, for a Kyoto block too: the record's is the block's
    units = [
        {"unit_serial_id": VCS_SERIAL, "unit_start_block": "941467007", "unit_end_block": "941467431",
         "unit_count": 425, "unit_vintage_year": 2020},
        {"unit_serial_id": KYOTO_SERIAL, "unit_start_block": "1001", "unit_end_block": "2000", "unit_count": 1000,
         "unit_vintage_year": 2010},
    ]  # fmt: skip
    mapped = map_batch("cadt-v2-units", "cadt-v2-units", units, context=kyoto_vintage, adapters=ADAPTERS)
    assert mapped.ok, mapped.issues
    assert [m.row["unit_vintage_year"] for m in mapped.outputs] == [2020, 2010]


@pytest.mark.parametrize(
    ("name", "says"),
    [
        (" ccer_id", "has characters around the name 'ccer_id'"),
        ("ccer_\u0456d", "holds U+0456, which only look like the characters of 'ccer_id'"),
        ("ccer_idd", "did you mean 'ccer_id'?"),
        ("colour", "is not a field of this schema (check its spelling)"),
    ],
)
def test_a_member_that_names_no_field_is_told_what_it_resembles(name: str, says: str) -> None:
    record = {(name if key == "ccer_id" else key): value for key, value in _good().items()}
    refused = map_batch("cn-ccer", "cn-ccer", [record], adapters=ADAPTERS)
    unknown = [i for i in refused.issues if i.code is IssueCode.UNKNOWN_FIELD]
    assert [i.field for i in unknown] == [name] and says in unknown[0].message


def test_a_serial_list_in_text_refuses_to_drop_a_vintage_its_serials_do_not_carry() -> None:
    """A Kyoto serial carries no vintage: the text format would lose it, so only JSON is written; serials that
    carry their vintage are written as text."""
    kyoto = b'[{"serial": "CN-5-0-1001-2000-2-2-0-1234-0", "vintage": 2012}]'
    result = map_batch("serial-kyoto", "serial-kyoto", kyoto, source_format="json", adapters=ADAPTERS)
    target = ADAPTERS["serial-kyoto"]
    with pytest.raises(RecordRejected) as refused:
        encode_outputs(result, target, "text")
    [problem] = refused.value.problems
    assert (problem.field, problem.code) == ("vintage", IssueCode.NO_MAPPING) and "of vintage 2012" in problem.message
    assert json.loads(encode_outputs(result, target, "json")) == json.loads(kyoto)
    ccer = map_batch(
        "serial-cn-ccer", "serial-cn-ccer", b"CN-CCER/2025/1-10\n", source_format="text", adapters=ADAPTERS
    )
    assert encode_outputs(ccer, ADAPTERS["serial-cn-ccer"], "text") == b"CN-CCER/2025/1-10\n"


def test_unknown_schema_and_missing_bridge_are_batch_problems() -> None:
    unknown = map_batch("cn-xyz", "aef-actions", [], adapters=ADAPTERS)
    assert [(i.position, i.code) for i in unknown.issues] == [(0, IssueCode.NO_MAPPING)]
    no_bridge = map_batch("aef-submission", "cn-ccer", [], adapters=ADAPTERS)
    assert "no mapping" in no_bridge.issues[0].message


def test_context_from_json_checks_every_field() -> None:
    good = {
        "facts": {
            "action_type": "Use",
            "action_date": "2025-03-01T08:00:00.000Z",
            "purpose": "NDC",
            "ndc_year_of_use": 2025,
            "party_registry": "CHN01",
        },
        "extension_codes": {"CN-CCER": "CCER"},
        "itmo_serials": "underlying",
    }
    ctx = context_from_json(good)
    assert ctx.facts.action_type is ActionType.USE and ctx.extension_code("CN-CCER") == "CCER"
    bad: dict[str, Any] = json.loads(json.dumps(good))
    bad["facts"].update(action_type="Sale", action_date="2025-03-01", party_registry="CHN1")
    bad["extension_codes"]["CN-CEA"] = "VCS"
    bad["colour"] = "blue"
    with pytest.raises(RecordRejected) as refused:
        context_from_json(bad)
    assert {p.field for p in refused.value.problems} == {
        "context.facts.action_type",
        "context.facts.action_date",
        "context.facts.party_registry",
        "context.extension_codes.CN-CEA",
        "context.colour",
    }


@pytest.mark.parametrize(
    ("codes", "field", "says"),
    [
        ({"CN-CCER": "CN", "CN-CEA": "CN"}, "context.extension_codes.CN-CEA", "already the extension code of CN-CCER"),
        ({"CN-CCER": "CCER", "VCS": "VERRA"}, "context.extension_codes.VCS", "nomenclature's own"),
    ],
)
def test_extension_codes_that_are_ambiguous_or_never_apply_are_refused(
    codes: dict[str, str], field: str, says: str
) -> None:
    with pytest.raises(RecordRejected) as refused:
        context_from_json({"extension_codes": codes})
    assert [p.field for p in refused.value.problems] == [field]
    assert says in refused.value.problems[0].message


@pytest.mark.parametrize(("source", "fmt"), [("cn-ccer", "json"), ("cn-cea", "json"), ("serial-vcs", "json")])
@pytest.mark.parametrize("nesting", [b"[" * 100_000, b"[" + b'{"a":' * 100_000])
def test_a_file_nested_too_deeply_is_refused_as_malformed(source: str, fmt: str, nesting: bytes) -> None:
    result = map_batch(source, source, nesting, source_format=fmt, context=CTX, adapters=ADAPTERS)
    assert not result.applied
    assert [(i.position, i.field, i.code) for i in result.issues] == [(0, "file", IssueCode.MALFORMED_FILE)]
    assert "too deeply" in result.issues[0].message
