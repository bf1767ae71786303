"""CAD Trust v2: units and the AEF tables T1-T5 in its JSON shape, in both directions."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import cadt
from adapters.aef_columns import Table
from adapters.context import MappingContext
from adapters.mapping import map_batch
from adapters.serials import gold_standard, vcs
from gateway.domain.blocks import ranges_disjoint
from gateway.domain.canonical import AefAction, AefHolding, RegistryUnit
from gateway.domain.mapping import IssueCode
from tests.adapters import strategies as s

CTX = MappingContext(extension_codes=(("CN-CCER", "CCER"),))
ADAPTERS = s.built_in_adapters()
PAIRS = [
    (Table.SUBMISSION, "aef-submission", "cadt-v2-aef-t1", s.aef_submissions()),
    (Table.AUTHORIZATIONS, "aef-authorizations", "cadt-v2-aef-t2", s.aef_authorizations()),
    (Table.ACTIONS, "aef-actions", "cadt-v2-aef-t3", s.aef_actions()),
    (Table.HOLDINGS, "aef-holdings", "cadt-v2-aef-t4", s.aef_holdings()),
]


def _holding_no_itmo_twice(records: list[Any]) -> bool:
    """A batch of holdings names each ITMO once (a batch that names one twice is refused as a duplicate)."""
    held = [(r.itmo_first_serial, r.itmo_last_serial) for r in records if isinstance(r, AefHolding)]
    return ranges_disjoint(held)


@pytest.mark.parametrize(("table", "aef_name", "cadt_name", "strategy"), PAIRS, ids=[p[2] for p in PAIRS])
def test_aef_rows_map_to_cad_trust_and_back_unchanged(
    table: Table, aef_name: str, cadt_name: str, strategy: st.SearchStrategy[Any]
) -> None:
    @settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(strategy, min_size=1, max_size=3).filter(_holding_no_itmo_twice))
    def check(records: list[Any]) -> None:
        source = ADAPTERS[aef_name]
        csv = source.encode([source.render(r, CTX).row for r in records], "csv")
        there = map_batch(aef_name, cadt_name, csv, source_format="csv", context=CTX, adapters=ADAPTERS, strict=True)
        assert there.ok and there.lost_fields == ()
        payload = ADAPTERS[cadt_name].encode([m.row for m in there.outputs], "json")
        back = map_batch(
            cadt_name, aef_name, payload, source_format="json", context=CTX, adapters=ADAPTERS, strict=True
        )
        assert back.ok
        assert [m.record for m in back.outputs] == records

    check()


@given(s.aef_entities())
def test_cad_trust_t5_reports_the_entity_columns_it_cannot_carry(entity: Any) -> None:
    result = map_batch(
        "aef-authorized-entities",
        "cadt-v2-aef-t5",
        [ADAPTERS["aef-authorized-entities"].render(entity, CTX).row],
        adapters=ADAPTERS,
    )
    expected = {"Date of the authorization", "Name", "Cooperative approach ID"}
    expected |= {
        h
        for h, f in (
            ("Conditions", "conditions"),
            ("Change and revocation conditions", "change_and_revocation_conditions"),
            ("Additional explanatory information", "additional_information"),
        )
        if getattr(entity, f)
    }
    assert set(result.lost_fields) == expected
    assert result.outputs[0].row == {
        "aef_t5_authorized_entities_id": entity.identification_number,
        "aef_t5_authorized_entities_incorporation_country": entity.country_of_incorporation,
    }
    strict = map_batch(
        "aef-authorized-entities",
        "cadt-v2-aef-t5",
        [ADAPTERS["aef-authorized-entities"].render(entity, CTX).row],
        adapters=ADAPTERS,
        strict=True,
    )
    assert [i.code for i in strict.issues] == [IssueCode.LOSSY_MAPPING] and not strict.applied


def _unit(value: Any, grammar: Any, **extra: object) -> RegistryUnit:
    return RegistryUnit(block=grammar.to_block(value), **extra)  # type: ignore[arg-type]


@given(
    st.one_of(
        s.vcs_serials().map(lambda v: _unit(v, vcs.GRAMMAR)),
        s.gold_standard_serials().map(lambda v: _unit(v, gold_standard.GRAMMAR)),
    ),
    st.sampled_from(["", "Held", "Retired"]),
    st.one_of(st.none(), s.date),
)
def test_units_round_trip_field_by_field(unit: RegistryUnit, status: str, when: Any) -> None:
    unit = dataclasses.replace(unit, status=status, status_date=when, current_owner="Acme" if status else "")
    rendered = cadt.UNITS.render(unit, CTX)
    assert rendered.lost == ()
    row = json.loads(cadt.UNITS.encode([rendered.row], "json"))[0]
    assert row["unit_count"] == unit.block.quantity and row["unit_start_block"] == str(unit.block.start)
    back = cadt.UNITS.parse(row, CTX)
    for f in dataclasses.fields(RegistryUnit):
        assert getattr(back, f.name) == getattr(unit, f.name), f.name


GOOD_UNIT = {
    "unit_serial_id": "GS1-1-KE-GS11603-16-2025-30256-110-5463",
    "unit_start_block": "110",
    "unit_end_block": "5463",
    "unit_count": "5354.00",
    "unit_vintage_year": 2025,
    "unit_status": "Retired",
}


@pytest.mark.parametrize(
    ("changes", "field", "code"),
    [
        ({"unit_end_block": "5462"}, "unit_end_block", IssueCode.INCONSISTENT),
        ({"unit_count": 5355}, "unit_count", IssueCode.QUANTITY_MISMATCH),
        ({"unit_count": "5354.5"}, "unit_count", IssueCode.BAD_QUANTITY),
        ({"unit_serial_id": "GS1-1-KE-GS11603-16-2025-30256-5463-110"}, "unit_serial_id", IssueCode.BAD_PATTERN),
        ({"unit_vintage_year": 2024}, "unit_serial_id", IssueCode.BAD_PATTERN),
        ({"unit_status_date": "10/04/2026"}, "unit_status_date", IssueCode.BAD_DATE),
        ({"unit_colour": "green"}, "unit_colour", IssueCode.UNKNOWN_FIELD),
    ],
)
def test_bad_units_are_refused_by_field(changes: dict[str, object], field: str, code: IssueCode) -> None:
    rows = [dict(GOOD_UNIT), {**GOOD_UNIT, **changes}]
    result = map_batch(
        "cadt-v2-units", "cadt-v2-units", json.dumps(rows).encode(), source_format="json", adapters=ADAPTERS
    )
    assert (2, field, code) in [(i.position, i.field, i.code) for i in result.issues]
    assert not result.applied


def test_cad_trust_bookkeeping_fields_are_reported_dropped() -> None:
    row = {
        "cad_trust_aef_t1_submission_id": "uuid-1",
        "created_at": "2026-01-01",
        "aef_t1_submission_party": "CHN",
        "aef_t1_submission_version": "1.0",
        "aef_t1_submission_report_year": 2025,
        "aef_t1_submission_submission_date": "2026-04-14",
        "aef_t1_submission_ndc_first_year": 2021,
        "aef_t1_submission_ndc_last_year": 2030,
    }
    result = map_batch("cadt-v2-aef-t1", "aef-submission", [row], adapters=ADAPTERS)
    assert result.ok and result.lost_fields == ("cad_trust_aef_t1_submission_id", "created_at")
    assert result.outputs[0].row["Date of submission"] == "14/04/2026"


def test_cad_trust_actions_keep_cad_trusts_own_field_names() -> None:
    names = set(cadt.T3._keys)
    assert "aef_t3_actions_coopoerative_approach_id" in names and "aef_t3_actions_itmo_used_year" in names
    assert cadt.T3.record_type is AefAction


def test_reading_cad_trust_t5_refuses_rather_than_invent_the_missing_columns() -> None:
    row = {
        "aef_t5_authorized_entities_id": "91440000MA4UXXXX",
        "aef_t5_authorized_entities_incorporation_country": "CHN",
    }
    result = map_batch("cadt-v2-aef-t5", "aef-authorized-entities", [row], adapters=ADAPTERS)
    assert {(i.field, i.code) for i in result.issues} == {
        ("authorization_date", IssueCode.NO_MAPPING),
        ("name", IssueCode.NO_MAPPING),
        ("cooperative_approach", IssueCode.NO_MAPPING),
    }
