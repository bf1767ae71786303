"""What the API and partners take in, the AEF report can write.

Every authorization version stays in the Authorizations table of every later report, and every ledger entry in
the Actions table of its year's; none is ever changed or removed. One the report could not write would leave
its year's report, and every later one, impossible to write. So what each door accepts must render through the
report's own row builders and renderer, which read each row back, into cells an XLSX workbook holds:
authorization versions (RegisterAuthorization, AmendAuthorization, RevokeAuthorization), blocks (a partner's
Proposal, RegisterIssuance) and uses and cancellations (UseUnits, CancelUnits).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.aef_codec import render_row
from adapters.aef_columns import Table
from adapters.context import MappingContext
from adapters.tabular import _unwritable
from carbon_gateway.v1 import partner_pb2, records_pb2
from gateway import wire
from gateway.domain import text
from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.errors import GatewayError
from gateway.domain.ledger import (
    ActionContext,
    CancellationSubtype,
    Retirement,
    check_definition,
    parse_cancellation_subtype,
    parse_retirement,
    record_arrival,
    record_departure,
    record_retirement,
)
from gateway.domain.mapping import Problem
from gateway.domain.nomenclature import IssuingRegistry, Nomenclature
from gateway.domain.protocol import check_itmo_serials, check_mitigation_type, parse_purpose, validate_terms
from gateway.domain.records import FirstTransferDefinition, LedgerEntry, Purpose
from gateway.store.base import BlockStatus, StoredBlock
from gateway.usecases.acquiring import Acquiring
from gateway.usecases.authorizations import check_revocation, revoking_version
from gateway.usecases.initiating import BlockSelection
from gateway.usecases.reporting import _Rows, aef_authorization
from gateway.usecases.retiring import RetirementRequest, Retiring

CTX = MappingContext()

_TEXTS = ["", "NA", " NA ", "na", "N/A", "x", "a|b", "a; b", "é", "\u202e", "a\nb", "\x00", "x" * 1025]

GOOD: dict[str, object] = {
    "authorization_id": "CHN-A-1",
    "date": "2026-01-15",
    "version": "1.0",
    "cooperative_approach": "CA0001",
    "metric": "GHG",
    "purposes": ["NDC"],
    "authorized_quantity": 5000,
    "timeframe_start": 2021,
    "timeframe_end": 2030,
    "first_transfer_definition": "First international transfer",
    "sectors": ["Energy generation"],
    "activity_types": ["Solar"],
    "authorized_parties": ["CHN", "CHE"],
    "authorized_entities": [],
    "oimp_authorized": "",
    "terms_and_conditions": "",
    "documentation": "",
    "note": "",
    "expires": "",
}
"""A version the report writes."""

_PURPOSE_SETS: list[list[str]] = [[p.value] for p in Purpose] + [
    ["NDC", "OIMP"],
    ["NDC", "IMP"],
    ["NDC", "OP"],
    ["OIMP", "IMP"],
    [],
]
_LISTS: list[list[str]] = [[], *([v] for v in _TEXTS), ["a", "a"]]

OTHER: dict[str, Sequence[object]] = {
    "authorization_id": ["NA", "a b", "", "x" * 200],
    "date": ["2026-02-30", "0001-01-01", "9999-12-31", ""],
    "version": ["NA", "v 2", "2.0\u00e9", ""],
    "cooperative_approach": ["CA1", "NA", ""],
    "metric": ["non-GHG", ""],
    "purposes": _PURPOSE_SETS,
    "authorized_quantity": [1, 2**63 - 1, 0],
    "timeframe_start": [1990, 2031, 0],
    "timeframe_end": [2100, 2020, 9999],
    "first_transfer_definition": [*(d.value for d in FirstTransferDefinition), "", "Authorization"],
    "sectors": [["Energy"], ["NA"], [], ["Energy generation", "Forestry and land use"]],
    "activity_types": _LISTS,
    "authorized_parties": [["XXX"], ["chn"], ["NA"], [], ["CHN", "CHN"], ["SGP"]],
    "authorized_entities": _LISTS,
    "oimp_authorized": ["CORSIA", *_TEXTS],
    "terms_and_conditions": ["see the letter", *_TEXTS],
    "documentation": ["https://example.org/a", *_TEXTS],
    "note": ["amended", *_TEXTS],
    "expires": ["2027-01-01", "2020-01-01", "2026-01-15"],
}
"""Other values of each field, good and bad."""


@st.composite
def _authorizations(draw: st.DrawFn) -> records_pb2.Authorization:
    """The good version with one to three fields given another value: alike but for any of its values."""
    values = dict(GOOD)
    for name in draw(st.lists(st.sampled_from(sorted(OTHER)), min_size=1, max_size=3, unique=True)):
        values[name] = draw(st.sampled_from(OTHER[name]))
    return records_pb2.Authorization(**values)  # type: ignore[arg-type]


def _render(table: Table, record: object) -> None:
    """Render ``record`` as the report does, reading the row back (which raises what the report would refuse),
    and check that an XLSX cell holds each value."""
    row, _, _ = render_row(table, record, CTX)
    unwritable = {key: why for key, value in row.items() if (why := _unwritable(value))}
    assert unwritable == {}, unwritable


def _writes(authorization: object) -> None:
    problems: list[Problem] = []
    assert not isinstance(authorization, records_pb2.Authorization)
    row = aef_authorization(authorization, "AR5", problems)  # type: ignore[arg-type]
    assert problems == [] and row is not None, problems
    _render(Table.AUTHORIZATIONS, row)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_authorizations())
def test_every_authorization_version_the_api_takes_in_the_aef_report_writes(msg: records_pb2.Authorization) -> None:
    try:
        authorization = wire.authorization_from_proto(msg)
        check_definition(authorization, "authorization.first_transfer_definition")
    except GatewayError:
        return  # refused at the door, with the field named: nothing recorded
    _writes(authorization)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["revoked-1", "NA", "3.0 \u00e9"]),
    st.sampled_from(["withdrawn by the national authority", "NA", "a|b", "\u00e9", "x" * 1000]),
)
def test_every_revoking_version_the_api_takes_in_the_aef_report_writes(version: str, reason: str) -> None:
    base = wire.authorization_from_proto(
        records_pb2.Authorization(
            authorization_id="CHN-A-1",
            date="2026-01-15",
            version="1.0",
            cooperative_approach="CA0001",
            metric="GHG",
            purposes=["NDC"],
            authorized_quantity=5000,
            timeframe_start=2021,
            timeframe_end=2030,
            first_transfer_definition="First international transfer",
            sectors=["Energy generation"],
            activity_types=["Solar"],
            authorized_parties=["CHN"],
        )
    )
    try:
        check_revocation(version, reason)
    except GatewayError:
        return
    _writes(revoking_version(base, version, dt.date(2026, 6, 1), reason))


_NOMENCLATURE = Nomenclature.of(
    (
        IssuingRegistry(code="CN-CCER", unit_kinds=("CCER",), party="CHN"),
        IssuingRegistry(code="XX-REG", unit_kinds=("VCU",), issuance_pattern="I[0-9]+"),
    )
)

_NEVER_HELD_HERE = Acquiring.__new__(Acquiring)
"""The acquiring side's door, with only what it reads for units with no history here: its Party."""
_NEVER_HELD_HERE.party = "CHN"

_AUTHORIZATION = wire.authorization_from_proto(records_pb2.Authorization(**GOOD))  # type: ignore[arg-type]

BLOCK: dict[str, object] = {
    "space": ("CCER", "CN-CCER", ""),
    "start": 1001,
    "end": 2000,
    "vintage": 2025,
    "mitigation_type": "Removals",
    "tie": ("", "", ""),
    "first_transferred": False,
}
"""A block whose first transfer the report writes."""

BLOCK_OTHER: dict[str, Sequence[object]] = {
    "space": [("VCU", "XX-REG", "I1"), ("ccer", " cn-ccer ", ""), ("CCER", "CN-CCER", "I1")],
    "start": [0, 2**63 - 2, -1],
    "end": [1001, 2**63 - 1, 2**63 - 2],
    "vintage": [0, 1, 999, 1000, 9999, 10000, 2031, 2020],
    "mitigation_type": ["", "removals", "Emission reductions", "Emission reductions and removals", "NA"],
    "tie": [
        ("CHN", "CA0001", "CHN-A-1"),
        ("ZZZ", "CA0001", "CHN-A-1"),
        ("CHE", "CA0001", "CHN-A-1"),
        ("CHE", "CA0001", "NA"),
        ("CHE", "NA", "CHE-A-1"),
        ("NA", "CA0001", "CHE-A-1"),
    ],
    "first_transferred": [True],
}


@st.composite
def _blocks(draw: st.DrawFn) -> records_pb2.UnitBlock:
    values = dict(BLOCK)
    for name in draw(st.lists(st.sampled_from(sorted(BLOCK_OTHER)), min_size=1, max_size=3, unique=True)):
        values[name] = draw(st.sampled_from(BLOCK_OTHER[name]))
    msg = records_pb2.UnitBlock(
        start=values["start"],  # type: ignore[arg-type]
        end=values["end"],  # type: ignore[arg-type]
        vintage=values["vintage"],  # type: ignore[arg-type]
        mitigation_type=values["mitigation_type"],  # type: ignore[arg-type]
        first_transferred=values["first_transferred"],  # type: ignore[arg-type]
    )
    msg.space.unit_kind, msg.space.issuing_registry, msg.space.issuance = values["space"]  # type: ignore[misc]
    msg.first_transferring_party, msg.cooperative_approach, msg.authorization_id = values["tie"]  # type: ignore[misc]
    return msg


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_blocks(), st.sampled_from(["CHE-A-1", "NA", " NA"]), st.sampled_from(["CA0001", "NA"]))
def test_every_block_the_api_or_a_partner_moves_into_the_ledger_the_aef_report_writes(
    msg: records_pb2.UnitBlock, terms_authorization: str, terms_approach: str
) -> None:
    """A block taken in and passing the checks of its door to the ledger gives Actions and Holdings rows the
    report writes: a partner's Proposal (`proposal_from_proto` and `validate_terms`, its blocks credited as
    `Acquiring._as_arriving` makes them unless it refuses them), and an operator's registration (untied, not first
    transferred), moved abroad."""
    problems: list[Problem] = []
    rows = _Rows("CHN01", "AR5", {}, problems)
    recorded: list[LedgerEntry] = []
    held: list[UnitBlock] = []
    proposal = partner_pb2.Proposal(
        transfer_id="t-1",
        blocks=[msg],
        source_account=records_pb2.AccountRef(party="CHE", account_id="CH-PO-1"),
        acquiring_account=records_pb2.AccountRef(party="CHN", account_id="CN-PH-1"),
        cooperative_approach=terms_approach,
        authorization_id=terms_authorization,
        purpose="NDC",
        adjustment_method="single-year averaging",
    )
    try:
        terms = wire.proposal_from_proto(proposal, _NOMENCLATURE)
        validate_terms(terms)
    except GatewayError:
        pass
    else:
        [block] = terms.blocks
        # The acquiring side's own door, for units never held here (no history to check them against).
        door = _NEVER_HELD_HERE._as_arriving(None, terms, block, [], {})  # type: ignore[arg-type]
        arriving, refused = asyncio.run(door)
        if refused is None:
            recorded.append(record_arrival(_context("CHE", "CHN"), arriving))
            held.append(arriving)
    try:
        block = wire.block_from_proto(msg, "block", _NOMENCLATURE)
        check_mitigation_type(block, "block.mitigation_type")
        check_itmo_serials(block, "block.space.issuance")
    except GatewayError:
        return
    if not block.tied and not block.first_transferred:  # what RegisterIssuance takes in
        departure = record_departure(_context("CHN", "CHE"), block, _AUTHORIZATION)
        recorded.extend(departure.entries)
        held.append(departure.block)
    actions = [rows.action(entry) for entry in recorded]
    holdings = [rows.holding(b) for b in held]
    assert problems == [], problems
    for action in actions:
        _render(Table.ACTIONS, action)
    for holding in holdings:
        _render(Table.HOLDINGS, holding)


def _context(transferring: str, acquiring: str) -> ActionContext:
    return ActionContext(
        action_id="t-1",
        action_date=dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC),
        party="CHN",
        purpose=Purpose.NDC,
        transferring_party=transferring,
        acquiring_party=acquiring,
    )


def test_a_version_the_report_cannot_write_is_named_by_its_authorization_and_version() -> None:
    """A version recorded before the doors refused it (no activity type) blocks the report: the refusal names
    the version as ListAuthorizations shows it, not only its row's position in the table."""
    from adapters import aef
    from gateway.domain.canonical import AefReport
    from gateway.domain.mapping import RecordRejected

    earlier = dataclasses.replace(_AUTHORIZATION, version="1.1", activity_types=())
    rows = [aef_authorization(a, "AR5", []) for a in (_AUTHORIZATION, earlier)]
    with pytest.raises(RecordRejected) as refused:
        aef.write_workbook(AefReport(authorizations=tuple(r for r in rows if r is not None)))
    [problem] = refused.value.problems
    assert problem.field == "Authorizations[2].Activity type(s)"
    assert "(authorization 'CHN-A-1' version '1.1')" in problem.message


_ENTITY_TEXTS = ["Entity A", "NA", "na", " NA", "a|b", "a; b", "é", "\u202e", "a\nb", "\x00", "x" * 1025]


def _acquired() -> records_pb2.UnitBlock:
    """An ITMO acquired from CHE: first transferred there, tied to CHE's authorization."""
    msg = records_pb2.UnitBlock(start=1, end=100, vintage=2025, mitigation_type="Removals", first_transferred=True)
    msg.space.unit_kind, msg.space.issuing_registry = "CCER", "CN-CCER"
    msg.first_transferring_party, msg.cooperative_approach, msg.authorization_id = "CHE", "CA0001", "CHE-A-1"
    return msg


def _domestic() -> records_pb2.UnitBlock:
    """Units registered here, not yet tied: a use or cancellation ties them to the authorization it names."""
    msg = records_pb2.UnitBlock(start=1, end=100, vintage=2025, mitigation_type="Removals")
    msg.space.unit_kind, msg.space.issuing_registry = "CCER", "CN-CCER"
    return msg


RETIREMENT: dict[str, object] = {
    "action": Retirement.USE_NDC.value,
    "purpose": "",
    "subtype": "",
    "year_of_use": 2025,
    "using_entity": "",
    "note": "",
    "authorized_entities": [],
    "acquired": True,
}
"""A use the report writes; `_retirements` turns it into a cancellation or an OIMP use with the fields they
need, and gives one to three fields other values."""

RETIREMENT_OTHER: dict[str, Sequence[object]] = {
    "action": [*(r.value for r in Retirement), "use", ""],
    "purpose": ["NDC", "OIMP", "IMP", "OP", "ndc", "NA"],
    "subtype": [*(c.value for c in CancellationSubtype), "NA", "other"],
    "year_of_use": [0, 2030, 2020, 1, 999, 1000, 9999, 10000, -1, 2**31, 2**63 - 1],
    "using_entity": _ENTITY_TEXTS,
    "note": ["used for the NDC", *_TEXTS],
    "authorized_entities": [["Entity A"], *([v] for v in _ENTITY_TEXTS)],
    "acquired": [False],
}


@st.composite
def _retirements(draw: st.DrawFn) -> dict[str, object]:
    values = dict(RETIREMENT)
    kind = draw(st.sampled_from(list(Retirement)))
    values["action"] = kind.value
    if kind is not Retirement.USE_NDC:
        values["year_of_use"] = 0
    if kind is Retirement.USE_OIMP:
        values["purpose"] = "OIMP"
    if kind is Retirement.CANCELLATION:
        values["subtype"] = CancellationSubtype.OTHER.value
    for name in draw(st.lists(st.sampled_from(sorted(RETIREMENT_OTHER)), min_size=1, max_size=3, unique=True)):
        values[name] = draw(st.sampled_from(RETIREMENT_OTHER[name]))
    return values


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_retirements())
def test_every_use_and_cancellation_the_api_takes_in_the_aef_report_writes(values: dict[str, object]) -> None:
    """A use or cancellation as UseUnits and CancelUnits check it (`parse_retirement`, `parse_purpose`,
    `parse_cancellation_subtype`, `Retiring._check_request`, an entity ID that looks like no other unless the
    authorization names it, the purpose `Retiring._purpose` records) gives Actions rows the report writes: the
    year of use, using Party and entity and the note are cells of the use's row."""
    action, purpose_text, subtype_text = str(values["action"]), str(values["purpose"]), str(values["subtype"])
    year_of_use, using_entity, note = int(values["year_of_use"]), str(values["using_entity"]), str(values["note"])  # type: ignore[call-overload]
    authorized_entities, acquired = values["authorized_entities"], bool(values["acquired"])
    try:
        authorization = wire.authorization_from_proto(
            records_pb2.Authorization(**{**GOOD, "authorized_entities": authorized_entities})  # type: ignore[arg-type]
        )
        check_definition(authorization, "authorization.first_transfer_definition")
    except GatewayError:
        return  # an authorization the API does not take in: no use can name it
    try:
        retirement = parse_retirement(action, "action")
        text.check_identifier(purpose_text, "purpose", what="purpose", required=False)
        purpose = parse_purpose(purpose_text) if purpose_text else None
        subtype = parse_cancellation_subtype(subtype_text, "subtype") if subtype_text else None
        request = RetirementRequest(
            retirement=retirement,
            source_account="CN-PH-1",
            selections=(BlockSelection(SerialSpace("CCER", "CN-CCER"), 1, 100),),
            target_account="CN-USE-1",
            authorization_id=authorization.authorization_id,
            year_of_use=year_of_use or None,
            purpose=purpose,
            subtype=subtype,
            using_entity=using_entity,
            note=note,
        )
        Retiring._check_request(request)
        if using_entity and using_entity not in authorization.authorized_entities:
            text.check_new_identifier(using_entity, "using_entity", what="entity ID")
        block = wire.block_from_proto(_acquired() if acquired else _domestic(), "block", _NOMENCLATURE)
        # The acquired units' authorization is CHE's, not known here: the use records the purpose named, or NDC.
        known = None if acquired else authorization
        recorded_purpose = Retiring._purpose(
            request, known, StoredBlock(1, "CN-PH-1", BlockStatus.RESERVED, "u-1", None, block)
        )
        context = ActionContext(
            action_id="u-1",
            action_date=dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC),
            party="CHN",
            purpose=recorded_purpose,
            year_of_use=request.year_of_use,
            using_entity=using_entity,
            note=note,
        )
        recorded = record_retirement(context, block, known, retirement, subtype)
    except GatewayError:
        return  # refused at the door, with the field named: nothing recorded
    problems: list[Problem] = []
    rows = _Rows("CHN01", "AR5", {}, problems)
    actions = [rows.action(entry) for entry in recorded.entries]
    assert problems == [], problems
    for row in actions:
        _render(Table.ACTIONS, row)
