"""The ledger's rules outside the arithmetic: authorization versions over time, finality, the form in which a
delivered block is kept, and the holdings replayed from the ledger (DESIGN.md sections 2 and 3).

The arithmetic of each action is in ``test_ledger_cases.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.blocks import SerialSpace, UnitBlock, find_overlaps
from gateway.domain.canonical import ActionSubtype
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.ledger import (
    ActionContext,
    Event,
    Holdings,
    LockedPeriod,
    acquired_for,
    authorizes,
    authorizing_parties,
    check_acquired_for,
    check_in_force,
    check_lock,
    check_new_version,
    check_not_locked,
    delivered_form,
    holdings_at,
    moves_holdings,
    record_arrival,
    record_departure,
    record_tie,
    still_unresolved,
    version_in_force,
    versions_ever_in_force,
    year_end,
)
from gateway.domain.records import ActionType, Authorization, FirstTransferDefinition, LedgerEntry, Purpose

CHN, CHE, SGP = "CHN", "CHE", "SGP"
SPACE = SerialSpace("CCER", "CN-CCER")
OTHER_SPACE = SerialSpace("CCER", "CN-CCER", "issuance-2")
D = dt.date.fromisoformat


def version(
    label: str,
    date: str,
    *,
    authorization_id: str = "CHN-A6-0001",
    approach: str = "CA0001",
    expires: str | None = None,
    revoked: bool = False,
    definition: FirstTransferDefinition = FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER,
) -> Authorization:
    return Authorization(
        authorization_id=authorization_id,
        date=D(date),
        version=label,
        cooperative_approach=approach,
        metric="GHG",
        purposes=frozenset({Purpose.NDC}),
        authorized_quantity=10_000,
        timeframe_start=2021,
        timeframe_end=2030,
        first_transfer_definition=definition,
        expires=D(expires) if expires else None,
        revoked=revoked,
    )


# --------------------------------------------------------------------------------------------------------
# Versions over time: registered 2024-06-01, amended 2025-01-01 (expiring end of June), amended again the
# same day to expire at the end of 2025 instead, revoked 2026-01-01.

V1 = version("1", "2024-06-01")
V2 = version("2", "2025-01-01", expires="2025-06-30")
V3 = version("2.1", "2025-01-01", expires="2025-12-31")
REVOKED = version("3", "2026-01-01", revoked=True)
HISTORY = (V1, V2, V3, REVOKED)


@pytest.mark.parametrize(
    ("on", "expected"),
    [
        pytest.param("2024-05-31", None, id="before-the-first-version-none"),
        pytest.param("2024-06-01", V1, id="on-its-date-the-first-version"),
        pytest.param("2024-12-31", V1, id="day-before-the-amendment-the-first-version"),
        pytest.param("2025-01-01", V3, id="two-versions-one-day-the-last-recorded"),
        pytest.param("2025-09-01", V3, id="after-the-amendments-the-latest"),
        pytest.param("2026-01-01", REVOKED, id="on-the-revocation-date-the-revocation"),
        pytest.param("2030-01-01", REVOKED, id="long-after-the-revocation"),
    ],
)
def test_version_in_force(on: str, expected: Authorization | None) -> None:
    assert version_in_force(HISTORY, D(on)) is expected


def test_version_in_force_of_no_versions() -> None:
    assert version_in_force((), D("2025-01-01")) is None


class Refusal(NamedTuple):
    code: ResponseCode
    field: str


def refusal_of(call: object) -> Refusal | None:
    assert callable(call)
    try:
        call()
    except GatewayError as exc:
        return Refusal(exc.code, exc.field)
    return None


@pytest.mark.parametrize(
    ("versions", "new", "expected"),
    [
        pytest.param(
            (),
            V1,
            Refusal(ResponseCode.AUTHORIZATION_MISSING, "authorization.authorization_id"),
            id="unknown-authorization-register-it-first",
        ),
        pytest.param((V1,), V2, None, id="amendment-later-with-a-new-label"),
        pytest.param((V1,), version("1a", "2024-06-01"), None, id="amendment-the-same-day"),
        pytest.param((V1,), REVOKED, None, id="revocation"),
        pytest.param((V1, V2), version("2.2", "2025-07-01"), None, id="second-amendment"),
        pytest.param(
            (V1, V2),
            version("3", "2024-12-31"),
            Refusal(ResponseCode.INVALID_ARGUMENT, "authorization.date"),
            id="dated-before-the-latest-version",
        ),
        pytest.param(
            (V1, V2),
            version("3", "2024-07-01"),
            Refusal(ResponseCode.INVALID_ARGUMENT, "authorization.date"),
            id="dated-between-earlier-versions",
        ),
        pytest.param(
            (V1,),
            version("1", "2025-01-01"),
            Refusal(ResponseCode.INVALID_ARGUMENT, "authorization.version"),
            id="label-of-the-latest-version-again",
        ),
        pytest.param(
            (V1, V2),
            version("1", "2025-07-01"),
            Refusal(ResponseCode.INVALID_ARGUMENT, "authorization.version"),
            id="label-of-an-older-version-again",
        ),
        pytest.param(
            (V1,),
            version("2", "2025-01-01", approach="CA0002"),
            Refusal(ResponseCode.INVALID_ARGUMENT, "authorization.cooperative_approach"),
            id="moved-to-another-cooperative-approach",
        ),
        pytest.param(
            (V1, REVOKED),
            version("4", "2026-02-01"),
            Refusal(ResponseCode.INVALID_STATE, "authorization.authorization_id"),
            id="amendment-after-revocation",
        ),
        pytest.param(
            (V1, REVOKED),
            version("4", "2026-02-01", revoked=True),
            Refusal(ResponseCode.INVALID_STATE, "authorization.authorization_id"),
            id="second-revocation",
        ),
        pytest.param(
            (V1, REVOKED),
            version("3", "2025-01-01", approach="CA0002"),
            Refusal(ResponseCode.INVALID_STATE, "authorization.authorization_id"),
            id="after-revocation-nothing-else-is-looked-at",
        ),
        pytest.param(
            (V1,),
            version("2", "2025-01-01", authorization_id="CHN-A6-0002"),
            Refusal(ResponseCode.INVALID_ARGUMENT, "authorization.authorization_id"),
            id="another-authorizations-id",
        ),
    ],
)
def test_check_new_version(versions: Sequence[Authorization], new: Authorization, expected: Refusal | None) -> None:
    """A new version keeps the ID and the cooperative approach, has a label of its own, is dated no earlier
    than the latest version, and none follows a revocation."""
    assert refusal_of(lambda: check_new_version(versions, new, D("2030-01-01"))) == expected


AHEAD = version("9", "2099-12-31")
"""An amendment dated far ahead, by mistake: it is not in force until then."""


@pytest.mark.parametrize(
    ("versions", "new", "expected"),
    [
        pytest.param((V1, AHEAD), version("10", "2026-12-07", revoked=True), None, id="revoked-now"),
        pytest.param((V1, AHEAD), version("10", "2026-12-07"), None, id="amended-now"),
        pytest.param(
            (V1, AHEAD),
            version("10", "2026-12-06", revoked=True),
            Refusal(ResponseCode.INVALID_ARGUMENT, "authorization.date"),
            id="back-before-today",
        ),
        pytest.param(
            (V1, AHEAD),
            version("10", "2024-05-31", revoked=True),
            Refusal(ResponseCode.INVALID_ARGUMENT, "authorization.date"),
            id="before-the-version-in-force",
        ),
        pytest.param(
            (version("1", "2027-01-01"),),
            version("2", "2026-12-06"),
            Refusal(ResponseCode.INVALID_ARGUMENT, "authorization.date"),
            id="none-in-force-yet-before-today",
        ),
        pytest.param((version("1", "2027-01-01"),), version("2", "2026-12-07"), None, id="none-in-force-yet-today"),
        pytest.param(
            (V1, version("9", "2026-12-07")),
            version("10", "2026-12-06", revoked=True),
            Refusal(ResponseCode.INVALID_ARGUMENT, "authorization.date"),
            id="the-latest-is-in-force-today",
        ),
    ],
)
def test_a_version_may_come_before_versions_not_yet_in_force(
    versions: Sequence[Authorization], new: Authorization, expected: Refusal | None
) -> None:
    """On 2026-12-07, a version may be dated before versions that are not in force yet, from today on: an
    amendment dated years ahead by mistake no longer stops a revocation until its date, and what was in force
    until today stays so."""
    assert refusal_of(lambda: check_new_version(versions, new, D("2026-12-07"))) == expected


def test_a_version_recorded_before_versions_still_to_come_supersedes_them_from_its_date() -> None:
    revoked = version("10", "2026-12-07", revoked=True)
    history = (V1, AHEAD, revoked)
    assert [version_in_force(history, D(on)) for on in ("2026-12-06", "2026-12-07", "2099-12-31", "2200-01-01")] == [
        V1,
        revoked,
        revoked,
        revoked,
    ]


def test_a_version_superseded_before_its_date_never_comes_into_force() -> None:
    revoked = version("10", "2026-12-07", revoked=True)
    other = version("1", "2030-01-01", authorization_id="CHN-A6-0002")
    amended = version("2", "2029-01-01", authorization_id="CHN-A6-0002")
    assert versions_ever_in_force([V1, other, AHEAD, amended, revoked]) == [V1, amended, revoked]
    assert versions_ever_in_force([V1, AHEAD]) == [V1, AHEAD]


@given(
    st.lists(
        st.tuples(st.sampled_from(["CHN-A6-0001", "CHN-A6-0002"]), st.dates(D("2024-01-01"), D("2024-01-10"))),
        max_size=8,
    )
)
def test_the_versions_ever_in_force_are_those_version_in_force_finds_on_some_day(
    recorded: list[tuple[str, dt.date]],
) -> None:
    versions = [
        version(str(i), d.isoformat(), authorization_id=authorization_id)
        for i, (authorization_id, d) in enumerate(recorded)
    ]
    found = [
        v
        for v in versions
        if any(
            version_in_force([w for w in versions if w.authorization_id == v.authorization_id], u.date) is v
            for u in versions
        )
    ]
    assert versions_ever_in_force(versions) == found


@pytest.mark.parametrize(
    ("on", "expected"),
    [
        pytest.param("2024-05-31", ResponseCode.AUTHORIZATION_MISSING, id="before-the-authorization"),
        pytest.param("2024-06-01", "1", id="from-its-date"),
        pytest.param("2025-01-01", "2.1", id="the-amendment-of-the-day"),
        pytest.param("2025-12-31", "2.1", id="on-the-expiry-date-still-in-force"),
        pytest.param("2026-01-01", ResponseCode.AUTHORIZATION_EXPIRED, id="revoked-from-its-date"),
        pytest.param("2027-01-01", ResponseCode.AUTHORIZATION_EXPIRED, id="revoked-for-good"),
    ],
)
def test_check_in_force_over_the_history(on: str, expected: str | ResponseCode) -> None:
    """What an action dated ``on`` finds: the version in force, or a refusal naming the field given."""
    try:
        found = check_in_force(version_in_force(HISTORY, D(on)), V1.authorization_id, D(on), "authorization_id")
    except GatewayError as exc:
        assert exc.code is expected
        assert exc.field == "authorization_id"
        return
    assert found.version == expected


@pytest.mark.parametrize(
    ("authorization", "on", "expected"),
    [
        pytest.param(None, "2025-01-01", ResponseCode.AUTHORIZATION_MISSING, id="none-in-force"),
        pytest.param(V1, "2025-01-01", None, id="no-expiry"),
        pytest.param(V2, "2025-06-30", None, id="on-the-expiry-date"),
        pytest.param(V2, "2025-07-01", ResponseCode.AUTHORIZATION_EXPIRED, id="the-day-after-expiry"),
        pytest.param(REVOKED, "2026-01-01", ResponseCode.AUTHORIZATION_EXPIRED, id="revoked"),
    ],
)
def test_check_in_force(authorization: Authorization | None, on: str, expected: ResponseCode | None) -> None:
    if expected is None:
        assert check_in_force(authorization, "CHN-A6-0001", D(on), "f") is authorization
        return
    with pytest.raises(GatewayError) as raised:
        check_in_force(authorization, "CHN-A6-0001", D(on), "f")
    assert (raised.value.code, raised.value.field) == (expected, "f")
    assert "CHN-A6-0001" in raised.value.message


# --------------------------------------------------------------------------------------------------------
# Finality


@pytest.mark.parametrize(
    ("first", "last", "today", "refused"),
    [
        pytest.param(2021, 2024, "2025-06-30", False, id="past-period"),
        pytest.param(2024, 2024, "2025-01-01", False, id="last-year-on-new-years-day"),
        pytest.param(2021, 2025, "2025-12-31", True, id="the-current-year-on-its-last-day"),
        pytest.param(2025, 2025, "2025-06-30", True, id="the-current-year-alone"),
        pytest.param(2021, 2026, "2025-06-30", True, id="ends-in-the-future"),
        pytest.param(2024, 2023, "2026-01-01", True, id="ends-before-it-starts"),
    ],
)
def test_check_lock(first: int, last: int, today: str, refused: bool) -> None:
    """Only a period that has ended can be locked: entries dated today must stay possible."""
    expected = Refusal(ResponseCode.INVALID_ARGUMENT, "last_year") if refused else None
    assert refusal_of(lambda: check_lock(first, last, D(today))) == expected


LOCKS = (
    LockedPeriod(2021, 2023, dt.datetime(2025, 3, 1, tzinfo=dt.UTC), "BTR1 review"),
    LockedPeriod(2025, 2025, dt.datetime(2026, 3, 1, tzinfo=dt.UTC), "BTR2 review"),
)


@pytest.mark.parametrize(
    ("year", "locked_by"),
    [
        pytest.param(2020, None, id="before-every-lock"),
        pytest.param(2021, "2021-2023", id="first-year-of-a-lock"),
        pytest.param(2022, "2021-2023", id="inside-a-lock"),
        pytest.param(2023, "2021-2023", id="last-year-of-a-lock"),
        pytest.param(2024, None, id="between-locks"),
        pytest.param(2025, "2025-2025", id="one-year-lock"),
        pytest.param(2026, None, id="after-every-lock"),
    ],
)
def test_check_not_locked(year: int, locked_by: str | None) -> None:
    if locked_by is None:
        check_not_locked(LOCKS, year, "year_of_use", "the year of use")
        return
    with pytest.raises(GatewayError) as raised:
        check_not_locked(LOCKS, year, "year_of_use", "the year of use")
    assert (raised.value.code, raised.value.field) == (ResponseCode.PERIOD_LOCKED, "year_of_use")
    assert locked_by in raised.value.message
    assert str(year) in raised.value.message


def test_check_not_locked_without_locks() -> None:
    check_not_locked((), 2021, "year", "the year")


# --------------------------------------------------------------------------------------------------------
# The acquiring side's view of a delivered block


def block(
    start: int = 100,
    end: int = 199,
    *,
    first_transferred: bool = False,
    party: str = "",
    approach: str = "",
    authorization: str = "",
) -> UnitBlock:
    """Vintage 2024 units of one CCER project, with the tie and first-transfer state given."""
    return UnitBlock(
        SPACE,
        start,
        end,
        2024,
        project_id="N0101-0001",
        attributes=(("methodology", "CCER-14-001-V01"),),
        first_transferred=first_transferred,
        first_transferring_party=party,
        cooperative_approach=approach,
        authorization_id=authorization,
    )


def chn_tied(b: UnitBlock) -> UnitBlock:
    """``b`` tied to CHN's authorization CHN-A6-0001 of cooperative approach CA0001."""
    return dataclasses.replace(
        b, first_transferring_party=CHN, cooperative_approach="CA0001", authorization_id="CHN-A6-0001"
    )


@pytest.mark.parametrize(
    ("sent", "transferring", "expected"),
    [
        pytest.param(
            block(),
            CHN,
            chn_tied(block(first_transferred=True)),
            id="old-style-untied-from-its-first-transferring-party",
        ),
        # An old-style block already first transferred was first transferred before this transfer, by a Party
        # the old wire form does not name: its tie is unknown and is not guessed from the transfer's terms.
        pytest.param(
            block(first_transferred=True),
            CHN,
            block(first_transferred=True),
            id="old-style-untied-marked-first-transferred",
        ),
        pytest.param(
            block(first_transferred=True, party=SGP),
            CHN,
            block(first_transferred=True, party=SGP),
            id="old-style-untied-keeps-the-first-transferring-party-it-names",
        ),
        pytest.param(
            chn_tied(block(first_transferred=True)),
            SGP,
            chn_tied(block(first_transferred=True)),
            id="tied-kept-as-sent-even-through-another-party",
        ),
        pytest.param(
            chn_tied(block(first_transferred=False)),
            CHN,
            chn_tied(block(first_transferred=False)),
            id="tied-not-yet-first-transferred-stays-so",
        ),
        pytest.param(
            block(
                first_transferred=True,
                party=SGP,
                approach="CA0009",
                authorization="SGP-A-9",
            ),
            CHN,
            block(
                first_transferred=True,
                party=SGP,
                approach="CA0009",
                authorization="SGP-A-9",
            ),
            id="tied-to-another-authorization-than-the-terms-kept",
        ),
    ],
)
def test_delivered_form(sent: UnitBlock, transferring: str, expected: UnitBlock) -> None:
    """A block carrying a tie is kept as sent; one without comes from a gateway that predates ties, and the
    transfer was its first transfer, under the terms' authorization."""
    assert delivered_form(sent, transferring, "CHN-A6-0001", "CA0001") == expected


def test_old_style_block_acquired_then_sent_on_is_not_first_transferred_again() -> None:
    """CHE acquires an untied block from a CHN gateway that predates ties and sends it on to SGP: the
    acquisition and the onward transfer are a plain ``Acquisition`` and ``Transfer``."""
    auth = version("1", "2024-06-01")
    arrived = delivered_form(block(), CHN, auth.authorization_id, auth.cooperative_approach)
    when = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    acquired = record_arrival(
        ActionContext("t1", when, CHE, Purpose.NDC, transferring_party=CHN, acquiring_party=CHE), arrived
    )
    onward = record_departure(
        ActionContext("t2", when, CHE, Purpose.NDC, transferring_party=CHE, acquiring_party=SGP), arrived, auth
    )
    assert (acquired.action_type, acquired.action_subtype, acquired.first_transferring_party) == (
        ActionType.ACQUISITION,
        "",
        CHN,
    )
    assert [(e.action_type, e.action_subtype, e.first_transferring_party) for e in onward.entries] == [
        (ActionType.TRANSFER, "", CHN)
    ]
    assert onward.block == arrived


# --------------------------------------------------------------------------------------------------------
# Only the authorization a block is tied to decides its first transfer


def test_an_authorization_the_block_is_not_tied_to_decides_nothing() -> None:
    """A block tied to an authorization whose first transfer is its use or cancellation is not first
    transferred by a transfer under another authorization that defines first transfer as issuance:
    `record_departure` already declines to first-transfer it as that other authorization's movement, and
    `record_tie` must not do it either."""
    tied_to = version("1", "2024-06-01", definition=FirstTransferDefinition.USE_OR_CANCELLATION)
    other = version("1", "2024-06-01", authorization_id="CHN-A6-0002", definition=FirstTransferDefinition.ISSUANCE)
    units = block(party=CHN, approach="CA0001", authorization=tied_to.authorization_id)
    when = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    ctx = ActionContext("t", when, CHN, Purpose.OIMP, transferring_party=CHN, acquiring_party=CHE)
    assert record_tie(ctx, units, other, Event.INTERNATIONAL_TRANSFER).entries == ()
    departed = record_departure(ctx, units, other)
    assert [(e.action_type, e.action_subtype) for e in departed.entries] == [
        (ActionType.TRANSFER, ActionSubtype.NOT_YET_DEFINED.value)
    ]
    assert not departed.block.first_transferred


# --------------------------------------------------------------------------------------------------------
# Holdings


def entry(
    action: ActionType,
    held: UnitBlock,
    when: dt.datetime,
    subtype: str = "",
    entry_id: int = 0,
) -> LedgerEntry:
    return LedgerEntry(
        entry_id=entry_id,
        action_date=when,
        action_type=action,
        transfer_id=f"a{entry_id}",
        block=held,
        cooperative_approach="CA0001",
        authorization_id="CHN-A6-0001",
        first_transferring_party=CHN,
        transferring_party="",
        acquiring_party="",
        purpose=Purpose.NDC,
        action_subtype=subtype,
    )


MOVES = [
    (ActionType.AUTHORIZATION, "", 1),
    (ActionType.ACQUISITION, "", 1),
    (ActionType.TRANSFER, "", -1),
    (ActionType.TRANSFER, ActionSubtype.NOT_YET_DEFINED.value, -1),
    (ActionType.USE, "", -1),
    (ActionType.CANCELLATION, ActionSubtype.OMGE_CANCELLATION.value, -1),
    (ActionType.VOLUNTARY_CANCELLATION, "", -1),
    (ActionType.FIRST_TRANSFER, ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY.value, -1),
    (ActionType.FIRST_TRANSFER, ActionSubtype.AUTHORIZATION.value, 0),
    (ActionType.FIRST_TRANSFER, ActionSubtype.ISSUANCE.value, 0),
    (ActionType.FIRST_TRANSFER, ActionSubtype.USE_OR_CANCELLATION.value, 0),
]


@pytest.mark.parametrize(
    ("action", "subtype", "move"), [pytest.param(*m, id=f"{m[0].value}/{m[1] or '-'}") for m in MOVES]
)
def test_moves_holdings(action: ActionType, subtype: str, move: int) -> None:
    """Ties and acquisitions bring ITMOs in; everything that sends, uses or cancels them takes them out; a first
    transfer that is not itself the transfer abroad leaves them where they are."""
    when = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    assert moves_holdings(entry(action, block(), when, subtype)) == move


T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
SERIALS = 48

op = st.tuples(
    st.sampled_from(MOVES),
    st.sampled_from([SPACE, OTHER_SPACE]),
    st.integers(0, SERIALS - 1),
    st.integers(0, 12),
    st.booleans(),
    st.integers(0, 600),
)
"""(action, subtype, move), serial space, start, length - 1, first transferred, minutes after T0."""


def entries_of(
    ops: Sequence[tuple[tuple[ActionType, str, int], SerialSpace, int, int, bool, int]],
) -> list[LedgerEntry]:
    out = []
    for index, ((action, subtype, _), space, start, length, first_transferred, minutes) in enumerate(ops):
        end = min(start + length, SERIALS - 1)
        units = UnitBlock(
            space, start, end, 2021 + index % 10, project_id=f"entry-{index}", first_transferred=first_transferred
        )
        when = T0 + dt.timedelta(minutes=minutes)
        out.append(entry(action, units, when, subtype, entry_id=index))
    return out


Unit = tuple[SerialSpace, int]


def model(entries: Sequence[LedgerEntry]) -> dict[Unit, tuple[str, bool]]:
    """The reference: a set of units, each with the entry that brought it in and its first-transferred flag.

    A unit is held from the last entry that brought it in until an entry takes it out; an ``Authorization``
    row brings in units that are not first transferred yet."""
    held: dict[Unit, tuple[str, bool]] = {}
    for e in entries:
        move = moves_holdings(e)
        units = [(e.block.space, s) for s in range(e.block.start, e.block.end + 1)]
        for unit in units:
            if move > 0:
                first = e.block.first_transferred and e.action_type is not ActionType.AUTHORIZATION
                held[unit] = (e.block.project_id, first)
            elif move < 0:
                held.pop(unit, None)
    return held


def units_of(blocks: Sequence[UnitBlock]) -> dict[Unit, tuple[str, bool]]:
    out: dict[Unit, tuple[str, bool]] = {}
    for b in blocks:
        for s in range(b.start, b.end + 1):
            assert (b.space, s) not in out
            out[(b.space, s)] = (b.project_id, b.first_transferred)
    return out


def check_well_formed(blocks: Sequence[UnitBlock]) -> None:
    """Blocks never overlap, and come by serial space and serial."""
    assert find_overlaps(blocks) == []
    keys = [(b.space.unit_kind, b.space.issuing_registry, b.space.issuance, b.start) for b in blocks]
    assert keys == sorted(keys)


@given(st.lists(op, max_size=40))
def test_holdings_replay_equals_a_set_of_units(
    ops: list[tuple[tuple[ActionType, str, int], SerialSpace, int, int, bool, int]],
) -> None:
    """Replaying random adds and removes gives, unit by unit, what a set-of-units model gives, every step."""
    entries = entries_of(ops)
    holdings = Holdings()
    for n, e in enumerate(entries, start=1):
        holdings.apply(e)
        blocks = holdings.blocks()
        check_well_formed(blocks)
        assert units_of(blocks) == model(entries[:n])


@given(st.lists(op, max_size=40), st.integers(-1, 601))
def test_holdings_at_ignores_entries_after_the_instant(
    ops: list[tuple[tuple[ActionType, str, int], SerialSpace, int, int, bool, int]], minutes: int
) -> None:
    """The holdings at an instant replay, in recording order, the entries dated at or before it, and nothing
    recorded after it (whatever its date) changes them."""
    entries = entries_of(ops)
    instant = T0 + dt.timedelta(minutes=minutes)
    before = [e for e in entries if e.action_date <= instant]
    got = holdings_at(entries, instant)
    check_well_formed(got)
    assert units_of(got) == model(before)
    assert got == holdings_at(before, instant)


def test_holdings_at_year_end_includes_the_last_millisecond() -> None:
    """The AEF snapshot at 31 December 23:59:59.999 UTC takes an entry dated exactly then, not one a
    millisecond later."""
    last = year_end(2025)
    assert last == dt.datetime(2025, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC)
    entries = [
        entry(ActionType.ACQUISITION, block(100, 199), last, entry_id=1),
        entry(ActionType.ACQUISITION, block(200, 299), last + dt.timedelta(milliseconds=1), entry_id=2),
        entry(ActionType.TRANSFER, block(150, 159), last + dt.timedelta(milliseconds=1), entry_id=3),
    ]
    assert [(b.start, b.end) for b in holdings_at(entries, last)] == [(100, 199)]
    assert [(b.start, b.end) for b in holdings_at(entries, year_end(2026))] == [(100, 149), (160, 199), (200, 299)]


def test_holdings_split_keeps_every_attribute() -> None:
    """A block partly taken out leaves pieces that carry every attribute of the block, tie included."""
    tied = chn_tied(block(100, 199, first_transferred=True))
    holdings = Holdings()
    holdings.apply(entry(ActionType.ACQUISITION, tied, T0, entry_id=1))
    holdings.apply(entry(ActionType.USE, block(120, 129), T0, entry_id=2))
    assert holdings.blocks() == [tied.with_range(100, 119), tied.with_range(130, 199)]


# --- still_unresolved: transfers whose first transfer came later, here ----------------------------------------

AT = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
CEA_SPACE = SerialSpace("CEA", "CN-CEA")


@pytest.mark.parametrize(
    ("first_transfers", "left"),
    [
        pytest.param([], [(1, 100)], id="nothing-since"),
        pytest.param([(5, SPACE, 20, 30)], [(1, 19), (31, 100)], id="a-later-first-transfer-inside"),
        pytest.param([(0, SPACE, 1, 100)], [(1, 100)], id="an-earlier-one-resolves-nothing"),
        pytest.param([(5, CEA_SPACE, 1, 100)], [(1, 100)], id="another-serial-space"),
        pytest.param([(5, SPACE, 1, 60), (6, SPACE, 61, 100)], [], id="all-resolved-in-two"),
        pytest.param(
            [(5, SPACE, 1, 10), (7, SPACE, 200, 300), (6, SPACE, 40, 50)], [(11, 39), (51, 100)], id="unsorted"
        ),
        pytest.param([(5, SPACE, 90, 200)], [(1, 89)], id="overlapping-the-end"),
    ],
)
def test_still_unresolved_trims_units_first_transferred_since(
    first_transfers: list[tuple[int, SerialSpace, int, int]], left: list[tuple[int, int]]
) -> None:
    sent = entry(
        ActionType.TRANSFER, UnitBlock(SPACE, 1, 100, vintage=2025), AT, ActionSubtype.NOT_YET_DEFINED.value, 1
    )
    found = still_unresolved([sent], first_transfers)
    assert [(e.block.start, e.block.end) for e in found] == left
    assert all(e.transfer_id == sent.transfer_id for e in found)


def _departure(entry_id: int, start: int, end: int) -> LedgerEntry:
    return entry(
        ActionType.TRANSFER,
        UnitBlock(SPACE, start, end, vintage=2025),
        AT,
        ActionSubtype.NOT_YET_DEFINED.value,
        entry_id,
    )


def test_units_that_left_came_back_and_left_again_are_listed_once_under_their_latest_departure() -> None:
    """300-349 left (entry 1), 300-309 came back, 300-304 were cancelled here (their first transfer, entry 3)
    and 305-309 left again (entry 4): 45 units are abroad with their first transfer to come, not 50."""
    found = still_unresolved([_departure(1, 300, 349), _departure(4, 305, 309)], [(3, SPACE, 300, 304)])
    assert [(e.entry_id, e.block.start, e.block.end) for e in found] == [(1, 310, 349), (4, 305, 309)]


_serials = st.tuples(st.integers(1, 40), st.integers(0, 10)).map(lambda t: (t[0], t[0] + t[1]))


@given(
    st.lists(st.tuples(st.integers(1, 30), _serials), max_size=8, unique_by=lambda t: t[0]),
    st.lists(st.tuples(st.integers(1, 30), _serials), max_size=6),
)
def test_each_unit_is_listed_once_under_its_latest_departure_unless_first_transferred_since(
    departures: list[tuple[int, tuple[int, int]]], first_transfers: list[tuple[int, tuple[int, int]]]
) -> None:
    sent = [_departure(entry_id, lo, hi) for entry_id, (lo, hi) in departures]
    # One Party's first transfers never overlap: keep the first of those that would.
    taken: list[tuple[int, SerialSpace, int, int]] = []
    for entry_id, (lo, hi) in first_transfers:
        if all(hi < a or lo > b for _, _, a, b in taken):
            taken.append((entry_id, SPACE, lo, hi))
    listed: dict[int, int] = {}
    for found in still_unresolved(sent, taken):
        for serial in range(found.block.start, found.block.end + 1):
            assert serial not in listed, f"serial {serial} listed twice"
            listed[serial] = found.entry_id
    expected: dict[int, int] = {}
    for serial in range(1, 52):
        latest = max((e.entry_id for e in sent if e.block.start <= serial <= e.block.end), default=None)
        if latest is not None and not any(i > latest and a <= serial <= b for i, _, a, b in taken):
            expected[serial] = latest
    assert listed == expected


# --- which purposes an authorization authorizes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("purposes", "purpose", "allowed"),
    [
        pytest.param({Purpose.NDC}, Purpose.NDC, True, id="ndc-under-ndc"),
        pytest.param({Purpose.NDC_AND_OIMP}, Purpose.NDC, True, id="ndc-under-ndc-and-oimp"),
        pytest.param({Purpose.OIMP}, Purpose.NDC, False, id="ndc-under-oimp-only"),
        pytest.param({Purpose.NDC, Purpose.OIMP}, Purpose.OIMP, True, id="oimp-under-ndc-plus-oimp"),
        pytest.param({Purpose.NDC_AND_OIMP}, Purpose.OIMP, True, id="oimp-under-ndc-and-oimp"),
        pytest.param({Purpose.NDC, Purpose.OIMP}, Purpose.IMP, False, id="imp-is-not-a-part-of-oimp"),
        pytest.param({Purpose.NDC_AND_OIMP}, Purpose.IMP, False, id="imp-under-ndc-and-oimp"),
        pytest.param({Purpose.NDC_AND_IMP}, Purpose.IMP, True, id="imp-under-ndc-and-imp"),
        pytest.param({Purpose.OIMP}, Purpose.OP, False, id="op-under-oimp"),
        pytest.param({Purpose.OP}, Purpose.OP, True, id="op-under-op"),
    ],
)
def test_authorizes(purposes: set[Purpose], purpose: Purpose, allowed: bool) -> None:
    authorization = dataclasses.replace(version("1.0", "2025-01-01"), purposes=frozenset(purposes))
    assert authorizes(authorization, purpose) is allowed


# --------------------------------------------------------------------------------------------------------
# Purposes units were acquired for


def acquisition(entry_id: int, start: int, end: int, purpose: Purpose) -> LedgerEntry:
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return dataclasses.replace(
        entry(ActionType.ACQUISITION, UnitBlock(SPACE, start, end, vintage=2025), when, entry_id=entry_id),
        purpose=purpose,
    )


ACQUIRED_FOR = {
    "none": ([], set()),
    "one acquisition": ([acquisition(1, 1, 100, Purpose.OIMP)], {Purpose.OIMP}),
    # Units acquired for OIMP, sent on and acquired back for the NDC: the later acquisition is what counts.
    "the latest wins": ([acquisition(1, 1, 100, Purpose.OIMP), acquisition(5, 1, 100, Purpose.NDC)], {Purpose.NDC}),
    "a later one covering part": (
        [acquisition(1, 1, 100, Purpose.OIMP), acquisition(5, 1, 40, Purpose.NDC)],
        {Purpose.NDC, Purpose.OIMP},
    ),
    "outside the block": ([acquisition(1, 200, 300, Purpose.OIMP)], set()),
    "another action": ([dataclasses.replace(acquisition(1, 1, 100, Purpose.OIMP), action_type=ActionType.USE)], set()),
}


@pytest.mark.parametrize(("entries", "expected"), ACQUIRED_FOR.values(), ids=ACQUIRED_FOR.keys())
def test_units_were_acquired_for_the_purpose_of_their_latest_acquisition(
    entries: list[LedgerEntry], expected: set[Purpose]
) -> None:
    assert acquired_for(UnitBlock(SPACE, 1, 100, vintage=2025), entries) == expected


PURPOSES_ACQUIRED_FOR = [
    ({Purpose.NDC}, Purpose.NDC, True),
    ({Purpose.NDC_AND_OIMP}, Purpose.NDC, True),
    ({Purpose.NDC_AND_OIMP}, Purpose.OIMP, True),
    ({Purpose.OIMP}, Purpose.NDC, False),
    ({Purpose.NDC}, Purpose.OIMP, False),
    ({Purpose.OIMP}, Purpose.IMP, False),
    ({Purpose.NDC, Purpose.OIMP}, Purpose.NDC, False),
    (set(), Purpose.NDC, True),
]


@pytest.mark.parametrize(("acquired", "purpose", "allowed"), PURPOSES_ACQUIRED_FOR)
def test_units_of_an_authorization_unknown_here_go_only_for_what_they_were_acquired_for(
    acquired: set[Purpose], purpose: Purpose, allowed: bool
) -> None:
    block = UnitBlock(SPACE, 1, 100, vintage=2025)
    if allowed:
        check_acquired_for(acquired, purpose, "action", block)
        return
    with pytest.raises(GatewayError) as refused:
        check_acquired_for(acquired, purpose, "action", block)
    assert (refused.value.code, refused.value.field) == (ResponseCode.AUTHORIZATION_MISSING, "action")


def test_an_authorization_is_the_party_s_its_latest_version_naming_one_names() -> None:
    versions = [
        dataclasses.replace(version("1.0", "2026-01-01", authorization_id="A"), party=""),
        dataclasses.replace(version("1.0", "2026-01-01", authorization_id="B"), party="CHN"),
        dataclasses.replace(version("1.0", "2026-01-01", authorization_id="C"), party=""),
        dataclasses.replace(version("1.1", "2026-02-01", authorization_id="C"), party="SGP"),
        dataclasses.replace(version("1.0", "2026-01-01", authorization_id="D"), party="CHE"),
    ]
    assert authorizing_parties(versions, CHE) == {"A": CHE, "B": CHN, "C": SGP, "D": CHE}
