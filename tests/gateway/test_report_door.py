"""What the API takes in as an authorization version, the AEF report can write.

Every version of an authorization stays in the Authorizations table of every later report, and none is ever
changed or removed: one the report could not write would leave every report from its year on impossible to
write. So each value the door (`gateway.wire.authorization_from_proto` and `check_definition`, as
RegisterAuthorization and AmendAuthorization run them; `check_revocation` and `revoking_version`, as
RevokeAuthorization does) accepts must render
through the report's own row builder and renderer, which reads each row back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.aef_codec import render_row
from adapters.aef_columns import Table
from adapters.context import MappingContext
from carbon_gateway.v1 import partner_pb2, records_pb2
from gateway import wire
from gateway.domain.blocks import UnitBlock
from gateway.domain.errors import GatewayError
from gateway.domain.ledger import (
    ActionContext,
    check_definition,
    delivered_form,
    record_arrival,
    record_departure,
    untraceable,
)
from gateway.domain.mapping import Problem
from gateway.domain.nomenclature import IssuingRegistry, Nomenclature
from gateway.domain.protocol import check_itmo_serials, check_mitigation_type, validate_terms
from gateway.domain.records import FirstTransferDefinition, LedgerEntry, Purpose
from gateway.usecases.authorizations import check_revocation, revoking_version
from gateway.usecases.reporting import _Rows, aef_authorization

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


def _writes(authorization: object) -> None:
    problems: list[Problem] = []
    assert not isinstance(authorization, records_pb2.Authorization)
    row = aef_authorization(authorization, "AR5", problems)  # type: ignore[arg-type]
    assert problems == [] and row is not None, problems
    render_row(Table.AUTHORIZATIONS, row, CTX)  # reads the row back: raises what the report would refuse


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
    `delivered_form` makes them unless `untraceable`), and an operator's registration (untied, not first
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
        arriving = delivered_form(block, terms.transferring_party, terms.authorization_id, terms.cooperative_approach)
        if untraceable(arriving) is None:
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
        render_row(Table.ACTIONS, action, CTX)
    for holding in holdings:
        render_row(Table.HOLDINGS, holding, CTX)


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
