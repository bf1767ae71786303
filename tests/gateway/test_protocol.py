"""The protocol's decisions: initiating-side authorization checks, acquiring-side checks, policy, ledger."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.ledger import ActionContext, record_arrival, record_departure
from gateway.domain.protocol import (
    ACCEPT_ALL,
    DecisionPolicy,
    DecisionRule,
    Verdict,
    check_acquisition,
    check_authorization,
    validate_terms,
)
from gateway.domain.records import (
    Account,
    AccountType,
    ActionType,
    AdjustmentMethod,
    Authorization,
    FirstTransferDefinition,
    Purpose,
    TransferTerms,
)

SPACE = SerialSpace("CCER", "CN-CCER")
BLOCK = UnitBlock(SPACE, 1, 400, vintage=2025)
TERMS = TransferTerms(
    transferring_party="CHN",
    acquiring_party="CHE",
    source_account="PO",
    acquiring_account="PH",
    cooperative_approach="CA0001",
    authorization_id="A-1",
    purpose=Purpose.NDC,
    adjustment_method=AdjustmentMethod.AVERAGING,
    blocks=(BLOCK,),
)
AUTH = Authorization(
    authorization_id="A-1",
    date=dt.date(2026, 1, 1),
    version="1.0",
    cooperative_approach="CA0001",
    metric="GHG",
    purposes=frozenset({Purpose.NDC}),
    authorized_quantity=1000,
    timeframe_start=2021,
    timeframe_end=2030,
    first_transfer_definition=FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER,
    expires=dt.date(2030, 12, 31),
)
TODAY = dt.date(2026, 11, 28)


def codes(rejections: list[object]) -> list[ResponseCode]:
    return [r.code for r in rejections]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("case", "authorization", "already", "expected"),
    [
        ("valid", AUTH, 0, []),
        ("missing", None, 0, [ResponseCode.AUTHORIZATION_MISSING]),
        ("exceeded by one", AUTH, 601, [ResponseCode.AUTHORIZATION_EXCEEDED]),
        ("exactly the authorized quantity", AUTH, 600, []),
    ],
    ids=["valid", "missing", "exceeded by one", "exactly the authorized quantity"],
)
def test_authorization_presence_and_quantity(
    case: str, authorization: Authorization | None, already: int, expected: list[ResponseCode]
) -> None:
    assert codes(check_authorization(authorization, TERMS, first_transferred_before=already, today=TODAY)) == expected  # type: ignore[arg-type]


def test_authorization_expiry_timeframe_purpose_and_approach() -> None:
    import dataclasses

    expired = dataclasses.replace(AUTH, expires=dt.date(2026, 1, 1))
    assert codes(check_authorization(expired, TERMS, first_transferred_before=0, today=TODAY)) == [  # type: ignore[arg-type]
        ResponseCode.AUTHORIZATION_EXPIRED
    ]
    old = dataclasses.replace(TERMS, blocks=(UnitBlock(SPACE, 1, 10, vintage=2019),))
    result = check_authorization(AUTH, old, first_transferred_before=0, today=TODAY)
    assert codes(result) == [ResponseCode.AUTHORIZATION_EXPIRED]  # type: ignore[arg-type]
    assert result[0].blocks == old.blocks
    oimp = dataclasses.replace(TERMS, purpose=Purpose.OIMP)
    assert codes(check_authorization(AUTH, oimp, first_transferred_before=0, today=TODAY)) == [  # type: ignore[arg-type]
        ResponseCode.PURPOSE_NOT_ALLOWED
    ]
    other = dataclasses.replace(TERMS, cooperative_approach="CA0002")
    assert codes(check_authorization(AUTH, other, first_transferred_before=0, today=TODAY)) == [  # type: ignore[arg-type]
        ResponseCode.AUTHORIZATION_MISSING
    ]


HOLDER = Account("PH", "Holder", AccountType.PARTY_HOLDING)


@pytest.mark.parametrize(
    ("case", "account", "known", "expected"),
    [
        ("clean", HOLDER, [], []),
        ("unknown account", None, [], [ResponseCode.UNKNOWN_ACCOUNT]),
        ("retirement account", Account("R", "R", AccountType.RETIREMENT), [], [ResponseCode.ACCOUNT_NOT_ELIGIBLE]),
        ("overlap", HOLDER, [UnitBlock(SPACE, 400, 500, vintage=2025)], [ResponseCode.BLOCK_OVERLAP]),
    ],
    ids=["clean", "unknown account", "retirement account", "overlap"],
)
def test_acquisition_checks(
    case: str, account: Account | None, known: list[UnitBlock], expected: list[ResponseCode]
) -> None:
    result = check_acquisition(TERMS, self_party="CHE", account=account, known_overlapping=known)
    assert codes(result) == expected  # type: ignore[arg-type]
    if known:
        assert result[0].blocks == (BLOCK,)


def test_validate_terms_names_the_field() -> None:
    import dataclasses

    with pytest.raises(GatewayError) as caught:
        validate_terms(dataclasses.replace(TERMS, cooperative_approach="CA01"))
    assert caught.value.field == "cooperative_approach"
    with pytest.raises(GatewayError) as caught:
        validate_terms(dataclasses.replace(TERMS, acquiring_party="CHN"))
    assert caught.value.code is ResponseCode.INVALID_ARGUMENT
    overlapping = (BLOCK, UnitBlock(SPACE, 400, 401, vintage=2025))
    with pytest.raises(GatewayError) as caught:
        validate_terms(dataclasses.replace(TERMS, blocks=overlapping))
    assert caught.value.code is ResponseCode.BLOCK_OVERLAP


POLICY = DecisionPolicy(
    (
        DecisionRule(Verdict.REJECT, partner="SGP"),
        DecisionRule(Verdict.ACCEPT, partner="CHN", purpose=Purpose.NDC, max_quantity=400),
    )
)


@pytest.mark.parametrize(
    ("case", "partner", "quantity", "verdict"),
    [
        ("matching rule", "CHN", 400, Verdict.ACCEPT),
        ("over the maximum: no rule matches, held", "CHN", 401, Verdict.HOLD),
        ("rejected partner", "SGP", 1, Verdict.REJECT),
        ("unknown partner: held", "JPN", 1, Verdict.HOLD),
    ],
    ids=["matching rule", "over the maximum", "rejected partner", "unknown partner"],
)
def test_decision_policy(case: str, partner: str, quantity: int, verdict: Verdict) -> None:
    import dataclasses

    terms = dataclasses.replace(TERMS, blocks=(UnitBlock(SPACE, 1, quantity, vintage=2025),))
    assert POLICY.decide(partner, terms) is verdict
    assert ACCEPT_ALL.decide(partner, terms) is Verdict.ACCEPT


def test_completion_entries_first_transfer_once_then_transfer() -> None:
    import dataclasses

    at = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    leaving = ActionContext("t", at, "CHN", TERMS.purpose, transferring_party="CHN", acquiring_party="CHE")
    fresh = [e for b in TERMS.blocks for e in record_departure(leaving, b, AUTH).entries]
    assert [(e.action_type, e.quantity, e.first_transferring_party) for e in fresh] == [
        (ActionType.FIRST_TRANSFER, 400, "CHN")
    ]
    onward = dataclasses.replace(BLOCK, first_transferred=True)
    again = record_departure(leaving, onward, AUTH).entries
    assert [e.action_type for e in again] == [ActionType.TRANSFER]
    arriving = dataclasses.replace(leaving, party="CHE")
    acquired = [record_arrival(arriving, b) for b in TERMS.blocks]
    assert [e.action_type for e in acquired] == [ActionType.ACQUISITION]
