"""The five AEF tables: CSV and XLSX round trips, the workbook, and every rule on the columns."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
from typing import Any

import openpyxl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import aef
from adapters.aef_codec import parse_row, render_row
from adapters.aef_columns import COLUMNS, Table, headers
from adapters.context import MappingContext
from adapters.fields import FieldReader
from adapters.mapping import encode_outputs, map_batch
from adapters.serials.itmo import FirstIdStyle
from gateway.domain.blocks import MAX_SERIAL
from gateway.domain.canonical import AefAction, AefReport
from gateway.domain.mapping import IssueCode, RecordRejected
from gateway.domain.records import ActionType, Purpose
from tests.adapters import strategies as s

CTX = MappingContext(extension_codes=(("CN-CCER", "CCER"),))
ADAPTERS = s.built_in_adapters()
TABLE_RECORDS = {
    Table.SUBMISSION: s.aef_submissions(),
    Table.AUTHORIZATIONS: s.aef_authorizations(),
    Table.ACTIONS: s.aef_actions(),
    Table.HOLDINGS: s.aef_holdings(),
    Table.AUTHORIZED_ENTITIES: s.aef_entities(),
}


def test_column_counts_match_the_nomenclature() -> None:
    counts = {table: len(headers(table)) for table in Table}
    assert counts == {
        Table.SUBMISSION: 9,
        Table.AUTHORIZATIONS: 19,
        Table.ACTIONS: 27,
        Table.HOLDINGS: 16,
        Table.AUTHORIZED_ENTITIES: 8,
    }
    assert len({(c.table, c.header) for c in COLUMNS}) == len(COLUMNS), "no header twice in a table"


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
@pytest.mark.parametrize("table", list(Table), ids=lambda t: t.value)
def test_tables_round_trip_field_by_field(table: Table, fmt: str) -> None:
    adapter = aef.ADAPTERS[table]

    @settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(TABLE_RECORDS[table], min_size=1, max_size=4))
    def check(records: list[Any]) -> None:
        rendered = [adapter.render(r, CTX) for r in records]
        assert all(not r.lost for r in rendered)
        data = adapter.encode([r.row for r in rendered], fmt)
        back = [adapter.parse(raw, CTX) for raw in adapter.decode(data, fmt)]
        for before, after in zip(records, back, strict=True):
            names = (
                dataclasses.fields(before)
                if not isinstance(before, AefAction)
                else [f for f in dataclasses.fields(before.header)] + list(dataclasses.fields(before))[1:]
            )
            for f in names:
                assert getattr(after, f.name) == getattr(before, f.name), f.name

    check()


@given(s.aef_actions(), s.aef_holdings(), s.aef_submissions(), s.aef_authorizations(), s.aef_entities())
@settings(max_examples=20, suppress_health_check=[HealthCheck.too_slow])
def test_workbook_opens_with_nomenclature_headers_and_reads_back(
    action: AefAction, holding: Any, submission: Any, authorization: Any, entity: Any
) -> None:
    report = AefReport((submission,), (authorization,), (action,), (holding,), (entity,))
    data = aef.write_workbook(report, CTX)
    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    try:
        assert workbook.sheetnames == [t.value for t in Table]
        for table in Table:
            first = next(workbook[table.value].iter_rows(min_row=1, max_row=1, values_only=True))
            assert list(first) == list(headers(table))
    finally:
        workbook.close()
    assert aef.read_workbook(data, CTX) == report


def _action_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "Action date": "2025-03-01T08:00:00.000Z",
        "Action type": "First transfer",
        "Action subtype": "First transfer to another Party",
        "Cooperative approach ID": "CA0001",
        "Authorization ID": "CHN-CHE-2025-001",
        "First transferring participating Party ID": "CHN",
        "Party ITMO registry ID": "CHN01",
        "First ID": "CA0001-CHN01-CHN-1001-2024",
        "Last ID": "CA0001-CHN01-CHN-2000-2024",
        "Underlying unit registry ID": "VCS",
        "First unit ID": "u-1001",
        "Last unit ID": "u-2000",
        "Metric": "GHG",
        "Applicable GWP value(s)": "AR5",
        "Applicable non-GHG metric": "",
        "Quantity (t CO2 eq)": "1000",
        "Quantity (in non-GHG metric)": "",
        "Mitigation type": "Emission reductions",
        "Vintage": "2024",
        "Transferring participating Party ID": "",
        "Acquiring participating Party ID": "CHE",
        "Purpose for which the ITMO has been used towards or cancelled for OIMP": "",
        "Using/cancelling participating Party ID": "",
        "Using/cancelling authorized entity ID": "",
        "Calendar year for which the ITMOs are used towards the Party's NDC": "",
        "Result of the consistency checks": "",
        "Additional explanatory information": "",
    }
    row.update(changes)
    return row


def test_a_valid_action_row_parses() -> None:
    record, notes = parse_row(Table.ACTIONS, _action_row(), CTX)
    assert (record.quantity, record.itmo_first_serial, record.acquiring_party) == (1000, 1001, "CHE")
    assert notes == ()


RULES = [
    ({"Transferring participating Party ID": "CHE"}, "Transferring participating Party ID", IssueCode.NOT_APPLICABLE),
    (
        {
            "Action type": "Acquisition",
            "Acquiring participating Party ID": "",
            "Transferring participating Party ID": "",
        },
        "Transferring participating Party ID",
        IssueCode.MISSING_FIELD,
    ),
    (
        {"Action type": "Acquisition", "Transferring participating Party ID": "CHE"},
        "Acquiring participating Party ID",
        IssueCode.NOT_APPLICABLE,
    ),
    ({"Acquiring participating Party ID": ""}, "Acquiring participating Party ID", IssueCode.MISSING_FIELD),
    (
        {"Calendar year for which the ITMOs are used towards the Party's NDC": "2025"},
        "Calendar year for which the ITMOs are used towards the Party's NDC",
        IssueCode.NOT_APPLICABLE,
    ),
    (
        {
            "Action type": "Use",
            "Acquiring participating Party ID": "",
            "Purpose for which the ITMO has been used towards or cancelled for OIMP": "NDC",
        },
        "Calendar year for which the ITMOs are used towards the Party's NDC",
        IssueCode.MISSING_FIELD,
    ),
    (
        {"Purpose for which the ITMO has been used towards or cancelled for OIMP": "NDC"},
        "Purpose for which the ITMO has been used towards or cancelled for OIMP",
        IssueCode.NOT_APPLICABLE,
    ),
    (
        {"Using/cancelling authorized entity ID": "E-1"},
        "Using/cancelling authorized entity ID",
        IssueCode.NOT_APPLICABLE,
    ),
    ({"Result of the consistency checks": "consistent"}, "Result of the consistency checks", IssueCode.PLATFORM_COLUMN),
    ({"Metric": "non-GHG"}, "Metric", IssueCode.UNSUPPORTED),
    ({"Applicable non-GHG metric": "MWh"}, "Applicable non-GHG metric", IssueCode.UNSUPPORTED),
    ({"Action type": "Transfer out"}, "Action type", IssueCode.BAD_VALUE),
    ({"Action subtype": "Issued"}, "Action subtype", IssueCode.BAD_VALUE),
    ({"Mitigation type": "Avoidance"}, "Mitigation type", IssueCode.BAD_VALUE),
    ({"Cooperative approach ID": "CA001"}, "Cooperative approach ID", IssueCode.BAD_PATTERN),
    ({"Party ITMO registry ID": "CHN1"}, "Party ITMO registry ID", IssueCode.BAD_PATTERN),
    ({"Party ITMO registry ID": "XXX01"}, "Party ITMO registry ID", IssueCode.BAD_VALUE),
    ({"Acquiring participating Party ID": "CH"}, "Acquiring participating Party ID", IssueCode.BAD_VALUE),
    ({"Action date": "2025-03-01"}, "Action date", IssueCode.BAD_DATE),
    ({"Action date": "2025-02-30T08:00:00.000Z"}, "Action date", IssueCode.BAD_DATE),
    ({"Quantity (t CO2 eq)": "-1000"}, "Quantity (t CO2 eq)", IssueCode.BAD_QUANTITY),
    ({"Quantity (t CO2 eq)": "999.5"}, "Quantity (t CO2 eq)", IssueCode.BAD_QUANTITY),
    ({"Quantity (t CO2 eq)": "999"}, "Quantity (t CO2 eq)", IssueCode.QUANTITY_MISMATCH),
    ({"Last ID": "CA0001-CHN01-CHN-1000-2024"}, "Last ID", IssueCode.BLOCK_ORDER),
    ({"First ID": "CA0001-CHN01-CHN-0-2024"}, "Quantity (t CO2 eq)", IssueCode.QUANTITY_MISMATCH),
    ({"First ID": "0", "Last ID": "4"}, "Quantity (t CO2 eq)", IssueCode.QUANTITY_MISMATCH),
    ({"First ID": "CA0002-CHN01-CHN-1001-2024"}, "First ID", IssueCode.BAD_PATTERN),
    ({"Underlying unit registry ID": "CCER-X"}, "Underlying unit registry ID", IssueCode.BAD_VALUE),
    ({"Last unit ID": ""}, "Last unit ID", IssueCode.INCONSISTENT),
]


@pytest.mark.parametrize(("changes", "field", "code"), RULES, ids=[f"{r[1]}-{r[2]}" for r in RULES])
def test_action_rules_and_vocabularies_are_enforced(changes: dict[str, object], field: str, code: IssueCode) -> None:
    with pytest.raises(RecordRejected) as refused:
        parse_row(Table.ACTIONS, _action_row(**changes), CTX)
    assert (field, code) in [(p.field, p.code) for p in refused.value.problems]


def test_a_cell_that_does_not_apply_is_told_to_be_na_as_the_format_writes_it() -> None:
    with pytest.raises(RecordRejected) as refused:
        parse_row(Table.ACTIONS, _action_row(**{"Transferring participating Party ID": "na"}), CTX)
    [problem] = [p for p in refused.value.problems if p.code is IssueCode.NOT_APPLICABLE]
    assert "it must be NA (or blank) for" in problem.message
    record, _ = parse_row(Table.ACTIONS, _action_row(**{"Transferring participating Party ID": "NA"}), CTX)
    assert record.transferring_party == ""


def test_itmo_serials_from_zero_are_read_and_checked_against_the_quantity() -> None:
    record, _ = parse_row(
        Table.ACTIONS,
        _action_row(**{"First ID": "CA0001-CHN01-CHN-0-2024", "Last ID": "CA0001-CHN01-CHN-999-2024"}),
        CTX,
    )
    assert (record.itmo_first_serial, record.itmo_last_serial, record.quantity) == (0, 999, 1000)


def test_bare_serial_first_ids_are_read_and_the_style_is_one_setting() -> None:
    record, _ = parse_row(Table.ACTIONS, _action_row(**{"First ID": "1001", "Last ID": "2000"}), CTX)
    assert (record.itmo_first_serial, record.itmo_last_serial) == (1001, 2000)
    full, _, _ = render_row(Table.ACTIONS, record, CTX)
    bare, _, _ = render_row(Table.ACTIONS, record, dataclasses.replace(CTX, first_id_style=FirstIdStyle.BARE_SERIAL))
    assert (full["First ID"], bare["First ID"]) == ("CA0001-CHN01-CHN-1001-2024", "1001")


@pytest.mark.parametrize("target", ["aef-actions", "aef-holdings", "serial-itmo", "cadt-v2-units"])
def test_an_itmo_serial_past_the_largest_is_refused_naming_its_column_whatever_the_target(target: str) -> None:
    top = MAX_SERIAL
    itmo_only = {"Underlying unit registry ID": "NA", "First unit ID": "NA", "Last unit ID": "NA"}

    def rows(first: int, last: int) -> list[dict[str, object]]:
        ids = {"First ID": str(first), "Last ID": str(last), "Quantity (t CO2 eq)": str(last - first + 1)}
        return [_action_row(**itmo_only, **ids)]

    past = map_batch("aef-actions", target, rows(top - 8, top + 1), context=CTX, adapters=ADAPTERS)
    assert not past.applied
    assert [(i.position, i.field, i.code) for i in past.issues] == [(1, "Last ID", IssueCode.BAD_PATTERN)]
    assert str(MAX_SERIAL) in past.issues[0].message
    at_the_top = map_batch("aef-actions", target, rows(top - 9, top), context=CTX, adapters=ADAPTERS)
    assert at_the_top.ok and at_the_top.applied


VCS_UNITS = {
    "Underlying unit registry ID": "VCS",
    "First unit ID": "19385-941467007-941467007-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1",
    "Last unit ID": "19385-941467431-941467431-VCS-VCU-1507-VER-ET-14-1340-01012020-31122020-1",
    "Vintage": "2020",
    "First ID": "CA0001-CHN01-CHN-1-2020",
    "Last ID": "CA0001-CHN01-CHN-425-2020",
    "Quantity (t CO2 eq)": "425",
}
NO_BLOCK = [
    ({"First unit ID": "u-1"}, "First unit ID", "aef_t3_actions_unit_first_id"),
    ({"Last unit ID": "u-425"}, "Last unit ID", "aef_t3_actions_unit_last_id"),
    (
        {"Quantity (t CO2 eq)": "424", "Last ID": "CA0001-CHN01-CHN-424-2020"},
        "Quantity (t CO2 eq)",
        "aef_t3_actions_quantity_t_co2",
    ),
]


@pytest.mark.parametrize(("changes", "header", "cadt"), NO_BLOCK, ids=[case[1] for case in NO_BLOCK])
def test_a_row_whose_units_name_no_block_is_refused_naming_the_column_of_the_source(
    changes: dict[str, object], header: str, cadt: str
) -> None:
    assert map_batch("aef-actions", "serial-vcs", [_action_row(**VCS_UNITS)], context=CTX, adapters=ADAPTERS).ok
    row = _action_row(**{**VCS_UNITS, **changes})
    refused = map_batch("aef-actions", "serial-vcs", [row], context=CTX, adapters=ADAPTERS)
    assert [(i.position, i.field) for i in refused.issues] == [(1, header)]
    as_cadt = map_batch("aef-actions", "cadt-v2-aef-t3", [row], context=CTX, adapters=ADAPTERS)
    [cadt_row] = [m.row for m in as_cadt.outputs]
    refused = map_batch("cadt-v2-aef-t3", "serial-vcs", [cadt_row], context=CTX, adapters=ADAPTERS)
    assert [(i.position, i.field) for i in refused.issues] == [(1, cadt)]


@pytest.mark.parametrize(
    ("code", "first", "last"),
    [
        ("GS", VCS_UNITS["First unit ID"], VCS_UNITS["Last unit ID"]),
        ("VCS", "CN-CCER/2020/1-1", "CN-CCER/2020/425-425"),
        ("CCER", VCS_UNITS["First unit ID"], VCS_UNITS["Last unit ID"]),
    ],
)
def test_an_underlying_registry_id_the_units_contradict_is_refused_when_the_row_becomes_a_block(
    code: str, first: str, last: str
) -> None:
    row = _action_row(
        **{**VCS_UNITS, "Underlying unit registry ID": code, "First unit ID": first, "Last unit ID": last}
    )
    assert map_batch("aef-actions", "aef-actions", [row], context=CTX, adapters=ADAPTERS).ok, "read as written"
    for target in ("serial-vcs", "serial-cn-ccer", "cadt-v2-units"):
        refused = map_batch("aef-actions", target, [row], context=CTX, adapters=ADAPTERS)
        assert [(i.field, i.code) for i in refused.issues] == [("Underlying unit registry ID", IssueCode.INCONSISTENT)]


def test_ccer_units_come_back_from_their_aef_row_as_the_same_block() -> None:
    context = s.action_context()
    serial = "CN-CCER/2020/1-425"
    row = map_batch("serial-cn-ccer", "aef-actions", [{"serial": serial}], context=context, adapters=ADAPTERS)
    [mapped] = [m.row for m in row.outputs]
    assert mapped["Underlying unit registry ID"] == "CCER"
    back = map_batch("aef-actions", "serial-cn-ccer", [mapped], context=context, adapters=ADAPTERS)
    assert [m.row for m in back.outputs] == [{"serial": serial}]


@pytest.mark.parametrize("target", ["serial-vcs", "serial-itmo", "cadt-v2-units"])
@pytest.mark.parametrize("source", ["aef-actions", "aef-holdings"])
def test_a_row_mapped_to_a_block_lists_its_mitigation_type_as_lost(source: str, target: str) -> None:
    itmo_only = {"Underlying unit registry ID": "NA", "First unit ID": "NA", "Last unit ID": "NA"}
    row = _action_row(**VCS_UNITS) if target == "serial-vcs" else _action_row(**{**VCS_UNITS, **itmo_only})
    if source == "aef-holdings":
        row = {h: row[h] for h in headers(Table.HOLDINGS)}
    mapped = map_batch(source, target, [row], context=CTX, adapters=ADAPTERS)
    assert mapped.ok, mapped.issues
    assert "Mitigation type" in mapped.records[0].lost_fields
    strict = map_batch(source, target, [row], context=CTX, adapters=ADAPTERS, strict=True)
    assert [i.code for i in strict.issues] == [IssueCode.LOSSY_MAPPING]
    assert "Mitigation type" in strict.issues[0].field


def test_a_holdings_batch_naming_one_itmo_twice_is_refused_and_an_actions_batch_is_not() -> None:
    action = _action_row(**{"Underlying unit registry ID": "NA", "First unit ID": "NA", "Last unit ID": "NA"})
    holding = {h: action[h] for h in headers(Table.HOLDINGS)}
    later = {"First ID": "CA0001-CHN01-CHN-3001-2024", "Last ID": "CA0001-CHN01-CHN-4000-2024"}
    assert map_batch("aef-holdings", "aef-holdings", [holding, {**holding, **later}], context=CTX).ok
    for target in ("aef-holdings", "serial-itmo", "cadt-v2-units"):
        twice = map_batch("aef-holdings", target, [holding, dict(holding)], context=CTX, adapters=ADAPTERS)
        assert not twice.applied
        assert [(i.position, i.field, i.code) for i in twice.issues] == [(2, "First ID", IssueCode.DUPLICATE_SERIAL)]
    as_cadt = map_batch("aef-holdings", "cadt-v2-aef-t4", [holding], context=CTX, adapters=ADAPTERS)
    [cadt_row] = [m.row for m in as_cadt.outputs]
    twice = map_batch("cadt-v2-aef-t4", "cadt-v2-aef-t4", [cadt_row, dict(cadt_row)], context=CTX, adapters=ADAPTERS)
    assert [(i.position, i.code) for i in twice.issues] == [(2, IssueCode.DUPLICATE_SERIAL)]
    # the same ITMOs first transferred, then used: one Actions row each
    used = _action_row(
        **{
            "Action type": "Use",
            "Acquiring participating Party ID": "",
            "Purpose for which the ITMO has been used towards or cancelled for OIMP": "NDC",
            "Using/cancelling participating Party ID": "CHE",
            "Calendar year for which the ITMOs are used towards the Party's NDC": "2025",
        }
    )
    actions = map_batch("aef-actions", "aef-actions", [action, used], context=CTX, adapters=ADAPTERS)
    assert actions.ok, actions.issues


def test_records_that_name_the_same_units_only_in_the_target_are_refused_as_duplicates() -> None:
    context = s.action_context()
    # An ITMO block and a CCER block never overlap; but with ITMO serials taken from the underlying serials, the
    # CCER units 1-100 become ITMOs 1-100 of CHN01, which the ITMO block's 1-10 already are.
    units = [
        {"unit_serial_id": "CA0001-CHN01-CHN-1-2023..CA0001-CHN01-CHN-10-2023", "unit_start_block": "1",
         "unit_end_block": "10", "unit_count": 10, "unit_vintage_year": 2023},
        {"unit_serial_id": "CN-CCER/2023/1-100", "unit_start_block": "1", "unit_end_block": "100", "unit_count": 100,
         "unit_vintage_year": 2023},
    ]  # fmt: skip
    assert map_batch("cadt-v2-units", "cadt-v2-units", units, context=context, adapters=ADAPTERS).ok
    for target in ("aef-actions", "aef-holdings", "cadt-v2-aef-t3"):
        twice = map_batch("cadt-v2-units", target, units, context=context, adapters=ADAPTERS)
        assert [(i.position, i.field, i.code) for i in twice.issues] == [
            (2, "unit_serial_id", IssueCode.DUPLICATE_SERIAL)
        ], target
    # one ITMO first transferred, then used: two Actions rows, but one block of a serial list, one holding
    itmo_only = {"Underlying unit registry ID": "NA", "First unit ID": "NA", "Last unit ID": "NA"}
    used = {
        "Action type": "Use",
        "Acquiring participating Party ID": "",
        "Purpose for which the ITMO has been used towards or cancelled for OIMP": "NDC",
        "Using/cancelling participating Party ID": "CHE",
        "Calendar year for which the ITMOs are used towards the Party's NDC": "2025",
    }
    actions = [_action_row(**itmo_only), _action_row(**itmo_only, **used)]
    assert map_batch("aef-actions", "aef-actions", actions, context=CTX, adapters=ADAPTERS).ok
    for target in ("serial-itmo", "cadt-v2-units", "aef-holdings"):
        twice = map_batch("aef-actions", target, actions, context=CTX, adapters=ADAPTERS)
        assert [(i.position, i.field, i.code) for i in twice.issues] == [(2, "First ID", IssueCode.DUPLICATE_SERIAL)]


def test_extension_code_is_reported_never_passed_silently() -> None:
    row = _action_row(**{"Underlying unit registry ID": "CCER"})
    _, notes = parse_row(Table.ACTIONS, row, CTX)
    assert [(n.field, n.code) for n in notes] == [("Underlying unit registry ID", IssueCode.NOMENCLATURE_EXTENSION)]
    report = AefReport(actions=(parse_row(Table.ACTIONS, row, CTX)[0],))
    assert [i.code for i in aef.check_nomenclature(report, CTX)] == [IssueCode.NOMENCLATURE_EXTENSION]
    assert aef.check_nomenclature(report, CTX, strict=False) == []
    with pytest.raises(RecordRejected, match="not in the nomenclature"):
        parse_row(Table.ACTIONS, row, MappingContext())


def test_authorization_oimp_columns_follow_the_purpose() -> None:
    base = {
        "Authorization ID": "A-1",
        "Date of authorization": "15/01/2025",
        "Cooperative approach ID": "CA0001",
        "Version of the authorization": "1",
        "Authorized quantity": "100000",
        "Metric": "GHG",
        "Applicable GWP value(s)": "AR5",
        "Applicable non-GHG metric": "",
        "Sector(s)": "Forestry and land use; Energy generation",
        "Activity type(s)": "Afforestation",
        "Purposes for authorization": "NDC and OIMP",
        "Authorized Party(ies) ID": "CHN; CHE",
        "Authorized entity(ies) ID": "",
        "OIMP authorized by the Party": "CORSIA",
        "Authorized timeframe": "2021 - 2030",
        "Authorization terms and conditions": "",
        "Authorization documentation": "",
        "First transfer definition for OIMP": "Authorisation",
        "Additional explanatory information": "",
    }
    record, _ = parse_row(Table.AUTHORIZATIONS, base, CTX)
    assert record.purposes is Purpose.NDC_AND_OIMP and len(record.sectors) == 2
    cases = [
        ({"Purposes for authorization": "NDC"}, "First transfer definition for OIMP", IssueCode.NOT_APPLICABLE),
        ({"First transfer definition for OIMP": ""}, "First transfer definition for OIMP", IssueCode.MISSING_FIELD),
        (
            {"First transfer definition for OIMP": "First international transfer"},
            "First transfer definition for OIMP",
            IssueCode.BAD_VALUE,
        ),
        ({"Date of authorization": "2025-01-15"}, "Date of authorization", IssueCode.BAD_DATE),
        ({"Authorized timeframe": "2030 - 2021"}, "Authorized timeframe", IssueCode.BLOCK_ORDER),
        ({"Authorized timeframe": "2021-2030"}, "Authorized timeframe", IssueCode.BAD_PATTERN),
        ({"Sector(s)": "Forestry"}, "Sector(s)", IssueCode.BAD_VALUE),
        ({"Purposes for authorization": "CORSIA"}, "Purposes for authorization", IssueCode.BAD_VALUE),
        ({"Authorized Party(ies) ID": "CHN; XYZ"}, "Authorized Party(ies) ID", IssueCode.BAD_VALUE),
    ]
    for changes, field, code in cases:
        with pytest.raises(RecordRejected) as refused:
            parse_row(Table.AUTHORIZATIONS, {**base, **changes}, CTX)
        assert (field, code) in [(p.field, p.code) for p in refused.value.problems], changes


def test_submission_version_and_platform_columns() -> None:
    base = {
        "Party": "CHN",
        "Version": "1.0",
        "Reported year": "2025",
        "Date of submission": "14/04/2026",
        "Review status of the initial report": "",
        "Result of the consistency check of this AEF submission": "",
        "First year of the NDC implementation period": "2021",
        "Last year of the NDC implementation period": "2030",
        "Reference to the Article 6 technical expert review report of the initial report": "",
    }
    assert parse_row(Table.SUBMISSION, base, CTX)[0].version == "1.0"
    for changes, field, code in [
        ({"Version": "1"}, "Version", IssueCode.BAD_PATTERN),
        (
            {"Review status of the initial report": "reviewed"},
            "Review status of the initial report",
            IssueCode.PLATFORM_COLUMN,
        ),
        (
            {"Last year of the NDC implementation period": "2020"},
            "Last year of the NDC implementation period",
            IssueCode.BLOCK_ORDER,
        ),
        ({"Date of submission": "31/04/2026"}, "Date of submission", IssueCode.BAD_DATE),
    ]:
        with pytest.raises(RecordRejected) as refused:
            parse_row(Table.SUBMISSION, {**base, **changes}, CTX)
        assert (field, code) in [(p.field, p.code) for p in refused.value.problems]


def test_csv_with_missing_or_reordered_columns_is_refused_by_name() -> None:
    cols = list(headers(Table.HOLDINGS))
    missing = ",".join(c for c in cols if c != "Vintage").encode() + b"\n"
    result = map_batch("aef-holdings", "aef-holdings", missing, source_format="csv", adapters=ADAPTERS)
    assert [(i.position, i.field, i.code) for i in result.issues] == [(0, "Vintage", IssueCode.MISSING_FIELD)]
    reordered = ",".join([cols[1], cols[0], *cols[2:]]).encode() + b"\n"
    result = map_batch("aef-holdings", "aef-holdings", reordered, source_format="csv", adapters=ADAPTERS)
    assert [(i.field, i.code) for i in result.issues] == [("header", IssueCode.MALFORMED_FILE)]


def test_bad_row_in_an_xlsx_batch_refuses_the_whole_batch() -> None:
    rows = [_action_row(), _action_row(**{"Action type": "Use"}), _action_row()]
    data = aef.ACTIONS.encode(rows, "xlsx")
    result = map_batch("aef-actions", "cadt-v2-aef-t3", data, source_format="xlsx", adapters=ADAPTERS, context=CTX)
    assert not result.applied and result.outputs == ()
    assert {(i.position, i.field) for i in result.issues} == {
        (2, "Acquiring participating Party ID"),
        (2, "Purpose for which the ITMO has been used towards or cancelled for OIMP"),
    }  # with no purpose, whether the use is towards the NDC (and needs its year) cannot be told


@pytest.mark.parametrize("date", ["0001-01-01T00:00:00.000Z", "0999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"])
@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_an_action_date_of_any_four_digit_year_is_written_back_as_it_was_read(date: str, fmt: str) -> None:
    result = map_batch("aef-actions", "aef-actions", [_action_row(**{"Action date": date})], context=CTX)
    assert result.ok, result.issues
    back = map_batch("aef-actions", "aef-actions", encode_outputs(result, aef.ACTIONS, fmt), source_format=fmt)
    assert back.ok, back.issues
    assert [m.row["Action date"] for m in back.outputs] == [date]
    assert aef.rendered_rows(Table.ACTIONS, [m.record for m in back.outputs], CTX)[0][0] == date


@pytest.mark.parametrize("timeframe", ["0999 - 2030", "0001 - 0002"])
def test_a_timeframe_year_before_1000_is_refused_where_it_is_read(timeframe: str) -> None:
    row = {h: "" for h in headers(Table.AUTHORIZATIONS)}
    row.update(
        {
            "Authorization ID": "A-1",
            "Date of authorization": "15/01/2025",
            "Cooperative approach ID": "CA0001",
            "Version of the authorization": "1",
            "Authorized quantity": "100000",
            "Metric": "GHG",
            "Applicable GWP value(s)": "AR5",
            "Sector(s)": "Forestry and land use",
            "Activity type(s)": "Afforestation",
            "Purposes for authorization": "NDC",
            "Authorized Party(ies) ID": "CHN; CHE",
            "Authorized timeframe": "2021 - 2030",
        }
    )
    assert map_batch("aef-authorizations", "aef-authorizations", [row], context=CTX).ok
    refused = map_batch("aef-authorizations", "aef-authorizations", [{**row, "Authorized timeframe": timeframe}])
    assert [(i.position, i.field, i.code) for i in refused.issues] == [(1, "Authorized timeframe", IssueCode.BAD_VALUE)]
    assert "cannot be written" not in refused.issues[0].message


def test_the_action_date_must_be_whole_milliseconds_utc() -> None:
    record, _ = parse_row(Table.ACTIONS, _action_row(), CTX)
    header = dataclasses.replace(record.header, action_date=record.action_date.replace(microsecond=1))
    with pytest.raises(RecordRejected, match="milliseconds"):
        render_row(Table.ACTIONS, dataclasses.replace(record, header=header), CTX)


def test_action_types_cover_the_rules() -> None:
    assert {c.header for c in COLUMNS if c.only_for and ActionType.ACQUISITION.value in c.only_for} == {
        "Transferring participating Party ID"
    }


def _sheet_claiming(rows: int, columns: int, *, dimension: bool) -> bytes:
    """A workbook of a few kilobytes: a header, and one more row at row ``rows``, in a sheet that declares
    ``columns`` columns (or declares no size at all)."""
    import re
    import zipfile

    from openpyxl.utils import get_column_letter

    book = openpyxl.Workbook()
    book.active.append(["Action date", "Action type"])
    book.active.append(["x", "y"])
    written = io.BytesIO()
    book.save(written)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(written.getvalue())) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                size = f'<dimension ref="A1:{get_column_letter(columns)}{rows}"/>' if dimension else ""
                data = re.sub(rb'<dimension ref="[^"]*" ?/>', size.encode(), data)
                data = data.replace(b'r="2"', f'r="{rows}"'.encode())
                data = data.replace(b'r="A2"', f'r="A{rows}"'.encode()).replace(b'r="B2"', f'r="B{rows}"'.encode())
            target.writestr(item, data)
    return out.getvalue()


@pytest.mark.parametrize(
    ("rows", "columns", "dimension", "says"),
    [
        pytest.param(1_048_576, 100, True, "declares 1,048,576 rows of 100 columns", id="a declared size"),
        pytest.param(1_048_576, 2, False, "runs past row 9,999", id="rows without a declared size"),
    ],
)
def test_a_few_kilobytes_of_xlsx_cannot_claim_millions_of_cells(
    rows: int, columns: int, dimension: bool, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters import tabular

    data = _sheet_claiming(rows, columns, dimension=dimension)
    assert len(data) < 10_000
    if not dimension:
        # Without a declared size the sheet is refused as it is read, at a cap small enough to keep this quick.
        monkeypatch.setattr(tabular, "MAX_XLSX_CELLS", 10_000)
    with pytest.raises(RecordRejected) as refused:
        tabular.read_xlsx(data)
    [problem] = refused.value.problems
    assert problem.code is IssueCode.MALFORMED_FILE
    assert says in problem.message and f"{tabular.MAX_XLSX_CELLS:,} cells" in problem.message
    # Within the cap, the gap reads as empty rows.
    header, body = tabular.read_xlsx_sheet(_sheet_claiming(1000, 2, dimension=dimension), None)
    assert header == ["Action date", "Action type"] and len(body) == 999 and body[-1] == ["x", "y"]


def _workbook_with(
    sheet_data: bytes = b"",
    shared: bytes | None = None,
    sheets: int = 1,
    *,
    doctype: bool = False,
    dimension: str | None = None,
) -> bytes:
    """A workbook whose first sheet's data, shared strings, list of sheets and declared size (``dimension``,
    ``""`` for none) are written by hand."""
    import re
    import zipfile

    book = openpyxl.Workbook()
    book.active.append(["Action date", "Action type"])
    written = io.BytesIO()
    book.save(written)
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(written.getvalue())) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml" and sheet_data:
                data = re.sub(
                    rb"<sheetData>.*</sheetData>", b"<sheetData>" + sheet_data + b"</sheetData>", data, flags=re.S
                )
            if item.filename == "xl/worksheets/sheet1.xml" and dimension is not None:
                size = f'<dimension ref="{dimension}"/>' if dimension else ""
                data = re.sub(rb'<dimension ref="[^"]*" ?/>', size.encode(), data)
            if item.filename == "xl/worksheets/sheet1.xml" and doctype:
                data = b'<!DOCTYPE worksheet [<!ENTITY a "<c/><c/>">]>' + data
            if item.filename == "xl/workbook.xml" and sheets > 1:
                entry = re.search(rb"<sheet [^>]*/>", data)
                assert entry is not None
                data = data.replace(entry.group(0), entry.group(0) * sheets)
            if item.filename == "[Content_Types].xml" and shared is not None:
                data = data.replace(b"</Types>", _SHARED_STRINGS_TYPE + b"</Types>")
            target.writestr(item.filename, data)
        if shared is not None:
            target.writestr("xl/sharedStrings.xml", _SHARED_STRINGS_TABLE + shared + b"</sst>")
    return out.getvalue()


_SHARED_STRINGS_TYPE = (
    b'<Override PartName="/xl/sharedStrings.xml"'
    b' ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
)
_SHARED_STRINGS_TABLE = b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'


def _with_value_rewritten(workbook: bytes, old: str, new: str) -> bytes:
    """``workbook`` with the one cell value written ``old`` in its sheets written ``new`` instead, as no
    spreadsheet would write it."""
    import re
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(workbook)) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            part = source.read(item.filename)
            if item.filename.startswith("xl/worksheets/"):
                part, count = re.subn(f"<v>{re.escape(old)}</v>".encode(), f"<v>{new}</v>".encode(), part)
                assert count == 1
            target.writestr(item, part)
    return out.getvalue()


def _renamed(workbook: bytes) -> bytes:
    """``workbook`` with its sheet part moved to where only the package's relationships name it."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(workbook)) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            name = "xl/data/table.xml" if item.filename == "xl/worksheets/sheet1.xml" else item.filename
            target.writestr(name, data.replace(b"worksheets/sheet1.xml", b"data/table.xml"))
    return out.getvalue()


def _damaged_part_first(workbook: bytes) -> bytes:
    """``workbook`` with a part ahead of the others whose compression no reader knows."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        target.writestr("junk.bin", b"junk")
        with zipfile.ZipFile(io.BytesIO(workbook)) as source:
            for item in source.infolist():
                target.writestr(item, source.read(item.filename))
    data = bytearray(out.getvalue())
    data[8:10] = (99).to_bytes(2, "little")  # the first local header's compression method
    central = data.rfind(b"PK\x01\x02junk"[:4], 0, len(data))
    first = data.find(b"PK\x01\x02")
    data[first + 10 : first + 12] = (99).to_bytes(2, "little")
    assert central >= first
    return bytes(data)


@pytest.mark.parametrize(
    ("build", "says"),
    [
        pytest.param(
            lambda: _workbook_with(b"<row><c/><c/></row>" * 600),
            "more than 1,000 cells or strings",
            id="many cells",
        ),
        pytest.param(
            lambda: _workbook_with(shared=b"<si><t>ab</t></si>" * 2_000),
            "more than 1,000 cells or strings",
            id="many shared strings",
        ),
        pytest.param(lambda: _workbook_with(sheets=65), "lists more than 64 sheets", id="many sheets"),
        pytest.param(
            lambda: _workbook_with(b'<row r="1">' + b"<c/>" * 101 + b"</row>"),
            "a row holds more than 100 cells",
            id="one wide row",
        ),
        pytest.param(
            lambda: _workbook_with(shared=b"<si>" + b"<r><t>a</t></r>" * 51 + b"</si>"),
            "a cell or string holds more than 100 elements",
            id="a string of many runs",
        ),
        pytest.param(
            lambda: _workbook_with(b'<row r="1"><c/></row>' + b"<mergeCell/>" * 1_001),
            "more than 1,000 elements of styles and structure",
            id="much structure",
        ),
        pytest.param(
            lambda: _renamed(_workbook_with(b'<row r="1">' + b"<c/>" * 101 + b"</row>")),
            "a row holds more than 100 cells",
            id="a sheet part named otherwise",
        ),
        pytest.param(
            lambda: _workbook_with(b'<row r="1"><x:c xmlns:x="urn:x"/></row>', doctype=True),
            "declares an XML document type",
            id="entities",
        ),
        pytest.param(
            lambda: _damaged_part_first(_workbook_with()),
            "part 'junk.bin' of the workbook cannot be read",
            id="a damaged part",
        ),
        pytest.param(
            lambda: _workbook_with(
                b'<row r="1"><c r="A1" t="inlineStr"><is><t>' + b"a" * 70_000 + b"</t></is></c></row>"
            ),
            "its parts unpack to more than 65,536 bytes",
            id="one huge value",
        ),
    ],
)
def test_a_workbook_too_large_to_read_is_refused_before_openpyxl_builds_it(
    build: Any, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters import tabular

    monkeypatch.setattr(tabular, "MAX_XLSX_CELLS", 1_000)
    monkeypatch.setattr(tabular, "MAX_XLSX_UNPACKED_BYTES", 64 << 10)
    monkeypatch.setattr(tabular, "MAX_XLSX_ROW_CELLS", 100)
    monkeypatch.setattr(tabular, "MAX_XLSX_ITEM_ELEMENTS", 100)
    monkeypatch.setattr(tabular, "MAX_XLSX_OTHER_ELEMENTS", 1_000)
    built: list[object] = []
    monkeypatch.setattr(openpyxl.reader.excel.ExcelReader, "read", lambda *a, **k: built.append(a))
    with pytest.raises(RecordRejected) as refused:
        tabular.read_xlsx(build())
    [problem] = refused.value.problems
    assert problem.code is IssueCode.MALFORMED_FILE and says in problem.message, problem.message
    assert built == []  # refused before openpyxl read any of it


def _inline_row(number: int, *values: str) -> bytes:
    """A row of inline-string cells from column A on."""
    from openpyxl.utils import get_column_letter

    cells = "".join(
        f'<c r="{get_column_letter(column)}{number}" t="inlineStr"><is><t>{value}</t></is></c>'
        for column, value in enumerate(values, start=1)
    )
    return f'<row r="{number}">{cells}</row>'.encode()


@pytest.mark.parametrize("dimension", ["A1:B1", "A1:A3", "A1", "", "A1:B3"])
def test_every_row_and_cell_is_read_whatever_size_the_sheet_declares(dimension: str) -> None:
    """openpyxl reads a sheet only as far as the size it declares: a sheet declaring A1:B1 lost its data rows,
    and one declaring A1:A3 its second column, without a word."""
    from adapters import tabular

    rows = _inline_row(1, "Action date", "Action type") + _inline_row(2, "x", "y") + _inline_row(3, "z", "w")
    data = _workbook_with(rows, dimension=dimension)
    assert tabular.read_xlsx(data) == {"Sheet": (["Action date", "Action type"], [["x", "y"], ["z", "w"]])}


def test_a_sheet_declaring_a_small_size_is_refused_as_soon_as_reading_it_passes_the_cell_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from adapters import tabular

    monkeypatch.setattr(tabular, "MAX_XLSX_CELLS", 10_000)
    far = b'<row r="1048576"><c r="A1048576" t="inlineStr"><is><t>x</t></is></c></row>'
    data = _workbook_with(_inline_row(1, "Action date") + far, dimension="A1:B1")
    with pytest.raises(RecordRejected) as refused:
        tabular.read_xlsx(data)
    [problem] = refused.value.problems
    assert problem.code is IssueCode.MALFORMED_FILE and "runs past row 10,000" in problem.message


def test_a_value_to_the_right_of_the_header_is_refused_naming_the_row_and_the_cell() -> None:
    """It was dropped without a word, where a CSV row with more cells than its header is refused."""
    from adapters import tabular

    header = _inline_row(1, "Action date", "Action type")
    data = _workbook_with(header + _inline_row(2, "x", "y") + _inline_row(3, "z", "w", "", "lost"))
    with pytest.raises(RecordRejected) as refused:
        tabular.read_xlsx(data)
    [problem] = refused.value.problems
    assert (problem.field, problem.code) == ("row 2", IssueCode.MALFORMED_FILE)
    assert "cell D3 of sheet 'Sheet', to the right of the header's 2 columns" in problem.message
    # Empty cells there are no values: they are read as before.
    blank = b'<c r="C2" t="inlineStr"><is><t></t></is></c><c r="D2" s="0"/></row>'
    data = _workbook_with(header + _inline_row(2, "x", "y").replace(b"</row>", blank))
    assert tabular.read_xlsx(data) == {"Sheet": (["Action date", "Action type"], [["x", "y"]])}


DISORDERED: dict[str, tuple[bytes, str]] = {
    "a-cell-before-one-left-of-it": (
        b'<row r="2"><c r="C2" t="inlineStr"><is><t>kept</t></is></c>'
        b'<c r="A2" t="inlineStr"><is><t>a</t></is></c></row>',
        "cell A2 is written after cell C2",
    ),
    "a-cell-twice": (
        _inline_row(2, "x").replace(b"</row>", b'<c r="A2" t="inlineStr"><is><t>y</t></is></c></row>'),
        "cell A2 is written after cell A2",
    ),
    "a-row-before-one-above-it": (_inline_row(3, "z") + _inline_row(2, "x"), "row 2 is written after row 3"),
    "a-row-twice": (_inline_row(2, "x") + _inline_row(2, "y"), "row 2 is written after row 2"),
}
"""Rows and cells a spreadsheet never writes out of order or twice, which openpyxl's rows drop without a word,
and what the refusal says."""


@pytest.mark.parametrize("case", list(DISORDERED))
def test_rows_and_cells_out_of_order_or_twice_are_refused_not_dropped(case: str) -> None:
    from adapters import tabular

    rows, said = DISORDERED[case]
    data = _workbook_with(_inline_row(1, "Action date", "Action type", "Note") + rows)
    with pytest.raises(RecordRejected) as refused:
        tabular.read_xlsx(data)
    [problem] = refused.value.problems
    assert problem.code is IssueCode.MALFORMED_FILE and said in problem.message, problem.message
    # In order, with gaps between cells and between rows, everything is read.
    gaps = (
        _inline_row(1, "Action date", "Action type", "Note")
        + (
            b'<row r="2"><c r="A2" t="inlineStr"><is><t>a</t></is></c>'
            b'<c r="C2" t="inlineStr"><is><t>c</t></is></c></row>'
        )
        + _inline_row(4, "d")
    )
    assert tabular.read_xlsx(_workbook_with(gaps))["Sheet"][1] == [
        ["a", None, "c"],
        [None, None, None],
        ["d", None, None],
    ]


def test_a_sheet_not_asked_for_is_not_read() -> None:
    """A cover or notes sheet beside the data (text beyond its first row's cells, an error value) never stops
    reading the sheet asked for."""
    from adapters import tabular

    book = openpyxl.Workbook()
    book.active.title = "Data"
    book.active.append(["Action date", "Action type"])
    book.active.append(["x", "y"])
    notes = book.create_sheet("Notes")
    notes["A1"] = "Prepared by the registry"
    notes["B3"] = "ops@example.org"
    notes["A4"] = "#N/A"
    written = io.BytesIO()
    book.save(written)
    data = written.getvalue()
    expected = (["Action date", "Action type"], [["x", "y"]])
    assert tabular.read_xlsx_sheet(data, "Data") == expected
    assert tabular.read_xlsx(data, ["Data", "Summary"]) == {"Data": expected}
    with pytest.raises(RecordRejected, match="sheet 'Notes'"):
        tabular.read_xlsx(data)  # every sheet, the notes too
    with pytest.raises(RecordRejected, match=r"no sheet 'Summary' \(sheets: Data, Notes\)"):
        tabular.read_xlsx_sheet(data, "Summary")


@pytest.mark.parametrize("kind", ["shared", "inline"])
@pytest.mark.parametrize(
    ("written", "text"),
    [
        ("_x0041_", "A"),
        ("_x005F_x0041_", "_x0041_"),
        ("abcx005F_def", "abcx005F_def"),
        ("note _x005F_x0041_ and abcx005F_def", "note _x0041_ and abcx005F_def"),
        ("line_x000D_end", "line\rend"),
    ],
)
def test_escaped_text_is_undone_once_in_a_shared_string_as_in_an_inline_one(kind: str, written: str, text: str) -> None:
    """openpyxl takes every ``x005F_`` out of a shared string's text, and the reader then undid the escapes: a
    second un-escaping, ``_x005F_x0041_`` read as ``A`` and ``abcx005F_def`` as ``abcdef``."""
    from adapters import tabular

    header = _inline_row(1, "Note")
    if kind == "shared":
        cell = b'<row r="2"><c r="A2" t="s"><v>0</v></c></row>'
        data = _workbook_with(header + cell, shared=f"<si><t>{written}</t></si>".encode())
    else:
        data = _workbook_with(header + _inline_row(2, written))
    assert tabular.read_xlsx(data) == {"Sheet": (["Note"], [[text]])}


def test_text_keeps_its_line_ends_through_an_xlsx_workbook() -> None:
    """A carriage return written as itself would come back a line feed (XML readers normalise line ends)."""
    from adapters import tabular

    values = ["line1\r\nline2", "a\rb", "x\ny", "\r"]
    data = tabular.write_xlsx([("Sheet", ["Note"], [[v] for v in values])])
    header, body = tabular.read_xlsx_sheet(data, None)
    assert header == ["Note"] and [row[0] for row in body] == values


def test_numbers_come_back_from_an_xlsx_workbook_as_the_same_numbers() -> None:
    """Integers past a float's 53 bits and floats needing 17 digits, written as "%.16g" spelled them, came back
    as other numbers (12345678901234567 as 12345678901234570; 2^63 - 1 past 2^63 - 1). Integers of 16 digits
    and more are written as text (a spreadsheet keeps 15), and a whole-number field reads them as written."""
    from adapters import tabular

    values: list[object] = [12345678901234567, 2**63 - 1, -(2**63), 2**53 + 1, 0, 7, 0.1, 1 / 3, 2.0**60, 1e-300]
    data = tabular.write_xlsx([("Sheet", ["Value"], [[v] for v in values])])
    header, body = tabular.read_xlsx_sheet(data, None)
    assert header == ["Value"]
    read = [row[0] for row in body]
    as_text = [str(v) if type(v) is int and abs(v) >= 10**15 else v for v in values]
    assert read == as_text
    # 0.1 and 1/3 come back as the floats written, kept as InexactNumber (a float) since no float is their text.
    assert [float if isinstance(v, float) else type(v) for v in read] == [type(v) for v in as_text]
    fields = FieldReader({"q": read[0], "r": read[1]})
    assert (fields.quantity("q"), fields.quantity("r")) == (12345678901234567, 2**63 - 1) and not fields.problems


def test_a_float_equal_to_an_integer_above_it_in_its_column_is_written_as_a_float() -> None:
    from adapters import tabular

    values: list[object] = [7, 7.0, 10**16, 1e16, True, 1]
    data = tabular.write_xlsx([("Sheet", ["Value"], [[v] for v in values])])
    _, body = tabular.read_xlsx_sheet(data, None)
    read = [row[0] for row in body]
    assert read == [7, 7.0, "10000000000000000", 1e16, True, 1]
    assert [type(v) for v in read] == [int, float, str, float, bool, int]


@pytest.mark.parametrize("value", ["x\uffffy", "\ufffe", "a\x0bb"])
def test_text_no_xml_document_can_hold_is_refused_when_written_naming_the_cell(value: str) -> None:
    from adapters import tabular

    with pytest.raises(RecordRejected) as refused:
        tabular.write_xlsx([("Sheet", ["Note"], [["fine"], [value]])])
    [problem] = refused.value.problems
    assert problem.field == "Sheet[2].Note" and "cannot hold" in problem.message


@pytest.mark.parametrize(
    ("cell", "says"),
    [
        pytest.param(b'<c r="A2" t="s"><v>x</v></c>', "ValueError", id="a shared string index that is no number"),
        pytest.param(b'<c r="A2" t="n"><v>abc</v></c>', "ValueError", id="a number that is no number"),
        pytest.param(b'<c r="A2" t="d"><v>notadate</v></c>', "ValueError", id="a date that is no date"),
    ],
)
def test_a_cell_openpyxl_cannot_read_is_refused_naming_the_sheet(cell: bytes, says: str) -> None:
    from adapters import tabular

    header = b'<row r="1"><c r="A1" t="inlineStr"><is><t>Action date</t></is></c></row>'
    data = _workbook_with(header + b'<row r="2">' + cell + b"</row>")
    with pytest.raises(RecordRejected) as refused:
        tabular.read_xlsx(data)
    [problem] = refused.value.problems
    assert problem.code is IssueCode.MALFORMED_FILE and problem.field == "file"
    assert "sheet 'Sheet' of the workbook cannot be read" in problem.message and says in problem.message


@pytest.mark.parametrize(
    ("cell", "says"),
    [
        pytest.param(b'<c r="B2" t="e"><v>#N/A</v></c>', "cell B2: holds the error '#N/A'", id="an error value"),
        pytest.param(b'<c r="B2" t="s"><v>-1</v></c>', "cell B2: names shared string -1,", id="a negative index"),
        pytest.param(b'<c r="B2" t="s"><v>2</v></c>', "cell B2: names shared string 2,", id="one past the table"),
        pytest.param(b'<c r="B2" t="s"><v>99999</v></c>', "cell B2: names shared string 99,999,", id="far past it"),
    ],
)
def test_an_error_value_or_a_shared_string_the_table_lacks_is_refused_naming_the_cell(cell: bytes, says: str) -> None:
    """An error cell was read as the text of its error, and a shared string index of -1 as the table's last
    string (a list counts a negative index from its end): values nobody wrote."""
    from adapters import tabular

    rows = _inline_row(1, "Action date", "Authorization ID") + b'<row r="2"><c r="A2" t="s"><v>0</v></c>'
    data = _workbook_with(rows + cell + b"</row>", shared=b"<si><t>2025</t></si><si><t>AUTH-REAL</t></si>")
    with pytest.raises(RecordRejected) as refused:
        tabular.read_xlsx(data)
    [problem] = refused.value.problems
    assert problem.code is IssueCode.MALFORMED_FILE
    assert problem.message.startswith(f"sheet 'Sheet' {says}"), problem.message
    if b't="s"' in cell:
        assert "the workbook holds 2 (numbered from 0)" in problem.message
    # The same cells naming strings the table holds are read.
    fine = _workbook_with(
        rows + b'<c r="B2" t="s"><v>1</v></c></row>', shared=b"<si><t>2025</t></si><si><t>AUTH-REAL</t></si>"
    )
    assert tabular.read_xlsx(fine) == {"Sheet": (["Action date", "Authorization ID"], [["2025", "AUTH-REAL"]])}


def test_a_date_no_calendar_holds_is_refused_naming_the_cell_not_read_as_an_error_text() -> None:
    """openpyxl reads a date cell whose serial no date has as the error ``#VALUE!``, which was taken as text."""

    from adapters import tabular

    book = openpyxl.Workbook()
    book.active.append(["Action date"])
    book.active.append([dt.datetime(2025, 1, 1)])
    written = io.BytesIO()
    book.save(written)
    with pytest.warns(UserWarning), pytest.raises(RecordRejected) as refused:
        tabular.read_xlsx(_with_value_rewritten(written.getvalue(), "45658", "1e10"))
    [problem] = refused.value.problems
    assert problem.code is IssueCode.MALFORMED_FILE
    assert problem.message.startswith("sheet 'Sheet' cell A2: holds the error '#VALUE!'"), problem.message


@pytest.mark.parametrize("formula", [b"<f>1+1</f>", b'<f t="shared" ref="A2:A3" si="0">1+1</f>', b"<x:f xmlns:x='u'/>"])
def test_a_formula_cell_is_refused_naming_the_cell(formula: bytes) -> None:
    """Its saved result may not be what a spreadsheet shows (the workbook may ask for recalculation)."""
    from adapters import tabular

    header = b'<row r="1"><c r="A1" t="inlineStr"><is><t>Quantity</t></is></c></row>'
    data = _workbook_with(header + b'<row r="2"><c r="A2">' + formula + b"<v>1000</v></c></row>")
    with pytest.raises(RecordRejected) as refused:
        tabular.read_xlsx(data)
    [problem] = refused.value.problems
    assert problem.code is IssueCode.MALFORMED_FILE
    assert "cell A2 of part 'xl/worksheets/sheet1.xml' holds a formula" in problem.message


def test_formula_looking_text_is_read_as_text() -> None:
    from adapters import tabular

    data = tabular.write_xlsx([("Sheet", ["Note"], [["=1+1"], ['=HYPERLINK("x")']])])
    assert tabular.read_xlsx_sheet(data, None) == (["Note"], [["=1+1"], ['=HYPERLINK("x")']])


@pytest.mark.parametrize(
    ("written", "header"),
    [
        ("1000.00000000000001", "Quantity (t CO2 eq)"),
        ("9007199254740993.0", "Quantity (t CO2 eq)"),
        ("2.0240000000000001e3", "Vintage"),
    ],
)
def test_a_number_cell_no_float_holds_is_refused_not_rounded_to_another_whole_number(written: str, header: str) -> None:
    # openpyxl read these cells as 1000.0, 9007199254740992.0 and 2024.0: whole numbers nobody wrote.

    row = _action_row(**{header: 4321})
    data = _with_value_rewritten(aef.ACTIONS.encode([row], "xlsx"), "4321", written)
    result = map_batch("aef-actions", "cadt-v2-aef-t3", data, source_format="xlsx", adapters=ADAPTERS, context=CTX)
    assert not result.applied
    [issue] = result.issues
    assert (issue.field, issue.code) == (header, IssueCode.BAD_QUANTITY)
    assert written in issue.message
