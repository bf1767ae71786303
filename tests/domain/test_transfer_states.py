"""The transfer state machine (DESIGN.md section 4): DES codes, transitions per role, termination."""

from __future__ import annotations

from collections import deque

import pytest

from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.transfer import (
    ALLOWED_TRANSITIONS,
    FINAL_STATES,
    Step,
    TransferRole,
    TransferState,
    advance,
    on_partner_view,
)

S = TransferState
INITIATING = TransferRole.INITIATING
ACQUIRING = TransferRole.ACQUIRING

# --------------------------------------------------------------------------------------------------------
# DESIGN.md section 4: the state table with its Kyoto DES integer codes
# --------------------------------------------------------------------------------------------------------

DES_STATE_CODES: dict[str, int] = {
    "PROPOSED": 1,
    "CHECKED": 2,
    "CHECKED_DISCREPANCY": 3,
    "COMPLETED": 4,
    "TERMINATED": 5,
    "REJECTED": 6,
    "CANCELLED": 7,
    "ACCEPTED": 8,
}

FINAL: frozenset[TransferState] = frozenset({S.CHECKED_DISCREPANCY, S.COMPLETED, S.TERMINATED, S.REJECTED, S.CANCELLED})
"""States no transfer leaves: a failed check, completion, termination, rejection and cancellation."""

ENTRY_STATE: dict[TransferRole, TransferState] = {
    INITIATING: S.PROPOSED,  # the initiating gateway accepts the proposal
    ACQUIRING: S.CHECKED,  # the acquiring side learns of a transfer already checked
}


@pytest.mark.parametrize(("name", "code"), list(DES_STATE_CODES.items()), ids=list(DES_STATE_CODES))
def test_state_code_matches_the_design_table(name: str, code: int) -> None:
    assert TransferState[name].value == code
    assert TransferState(code).name == name


def test_there_are_exactly_the_states_of_the_design_table() -> None:
    assert {state.name: state.value for state in TransferState} == DES_STATE_CODES
    assert {name: s.value for name, s in TransferState.__members__.items()} == DES_STATE_CODES  # no aliases


@pytest.mark.parametrize("state", list(TransferState), ids=lambda s: s.name)
def test_final_states(state: TransferState) -> None:
    assert state.is_final == (state in FINAL)
    assert (state in FINAL_STATES) == (state in FINAL)


# --------------------------------------------------------------------------------------------------------
# Transitions per role
# --------------------------------------------------------------------------------------------------------

Transition = tuple[TransferRole, TransferState, TransferState]

ALLOWED: list[Transition] = [
    # Initiating side: proposal, own checks, the partner's decision, completion.
    (INITIATING, S.PROPOSED, S.CHECKED),
    (INITIATING, S.PROPOSED, S.CHECKED_DISCREPANCY),
    (INITIATING, S.PROPOSED, S.CANCELLED),
    (INITIATING, S.CHECKED, S.ACCEPTED),
    (INITIATING, S.CHECKED, S.REJECTED),
    (INITIATING, S.CHECKED, S.CANCELLED),
    (INITIATING, S.CHECKED, S.TERMINATED),
    (INITIATING, S.ACCEPTED, S.COMPLETED),
    (INITIATING, S.ACCEPTED, S.TERMINATED),
    # Acquiring side: starts at CHECKED.
    (ACQUIRING, S.CHECKED, S.ACCEPTED),
    (ACQUIRING, S.CHECKED, S.REJECTED),
    (ACQUIRING, S.CHECKED, S.CANCELLED),
    (ACQUIRING, S.CHECKED, S.TERMINATED),
    (ACQUIRING, S.ACCEPTED, S.COMPLETED),
    (ACQUIRING, S.ACCEPTED, S.CANCELLED),  # a Cancel sent before the initiating side learnt of acceptance
    (ACQUIRING, S.ACCEPTED, S.TERMINATED),
    # The initiating side arbitrates crossing messages: its cancellation or termination replaces a rejection
    # the acquiring side sent meanwhile (DESIGN.md section 4, "Crossing messages").
    (ACQUIRING, S.REJECTED, S.CANCELLED),
    (ACQUIRING, S.REJECTED, S.TERMINATED),
]

REFUSED: list[Transition] = [
    # Initiating side
    (INITIATING, S.PROPOSED, S.PROPOSED),
    (INITIATING, S.PROPOSED, S.ACCEPTED),  # acceptance before the own checks
    (INITIATING, S.PROPOSED, S.REJECTED),
    (INITIATING, S.PROPOSED, S.COMPLETED),
    (INITIATING, S.CHECKED, S.PROPOSED),
    (INITIATING, S.CHECKED, S.CHECKED_DISCREPANCY),
    (INITIATING, S.CHECKED, S.COMPLETED),  # debit before the partner accepted
    (INITIATING, S.ACCEPTED, S.CANCELLED),  # the operator cancels only before acceptance
    (INITIATING, S.ACCEPTED, S.REJECTED),
    (INITIATING, S.ACCEPTED, S.CHECKED),
    (INITIATING, S.CHECKED_DISCREPANCY, S.CHECKED),
    (INITIATING, S.COMPLETED, S.TERMINATED),
    (INITIATING, S.REJECTED, S.ACCEPTED),
    (INITIATING, S.CANCELLED, S.PROPOSED),
    (INITIATING, S.TERMINATED, S.COMPLETED),
    # Acquiring side
    (ACQUIRING, S.PROPOSED, S.CHECKED),  # the acquiring side never holds a PROPOSED transfer
    (ACQUIRING, S.PROPOSED, S.CHECKED_DISCREPANCY),
    (ACQUIRING, S.PROPOSED, S.CANCELLED),
    (ACQUIRING, S.CHECKED, S.CHECKED),
    (ACQUIRING, S.CHECKED, S.COMPLETED),  # credit before acceptance
    (ACQUIRING, S.CHECKED, S.CHECKED_DISCREPANCY),
    (ACQUIRING, S.ACCEPTED, S.REJECTED),
    (ACQUIRING, S.ACCEPTED, S.CHECKED),
    (ACQUIRING, S.COMPLETED, S.CANCELLED),
    (ACQUIRING, S.REJECTED, S.ACCEPTED),
    (ACQUIRING, S.CANCELLED, S.ACCEPTED),
    (ACQUIRING, S.TERMINATED, S.COMPLETED),
]


def transition_id(t: Transition) -> str:
    role, current, target = t
    return f"{role.value}:{current.name}->{target.name}"


def graph(role: TransferRole) -> dict[TransferState, set[TransferState]]:
    edges: dict[TransferState, set[TransferState]] = {state: set() for state in TransferState}
    for current, target in ALLOWED_TRANSITIONS[role]:
        edges[current].add(target)
    return edges


def reachable(edges: dict[TransferState, set[TransferState]], start: TransferState) -> set[TransferState]:
    """Every state reachable from ``start`` (including it), by breadth-first search."""
    seen = {start}
    queue = deque([start])
    while queue:
        for nxt in edges[queue.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def states_in(role: TransferRole) -> set[TransferState]:
    return {state for pair in ALLOWED_TRANSITIONS[role] for state in pair}


def test_the_named_tables_do_not_contradict_each_other() -> None:
    assert len(set(ALLOWED)) == len(ALLOWED)
    assert not set(ALLOWED) & set(REFUSED)


@pytest.mark.parametrize(("role", "current", "target"), ALLOWED, ids=[transition_id(t) for t in ALLOWED])
def test_allowed_transition(role: TransferRole, current: TransferState, target: TransferState) -> None:
    assert advance(role, current, target) is target


@pytest.mark.parametrize(("role", "current", "target"), REFUSED, ids=[transition_id(t) for t in REFUSED])
def test_refused_transition(role: TransferRole, current: TransferState, target: TransferState) -> None:
    with pytest.raises(GatewayError) as caught:
        advance(role, current, target)
    assert caught.value.code is ResponseCode.INVALID_STATE
    assert current.name in caught.value.message
    assert target.name in caught.value.message


@pytest.mark.parametrize("role", list(TransferRole), ids=lambda r: r.value)
def test_the_allowed_table_is_exactly_the_code_table(role: TransferRole) -> None:
    expected = {(current, target) for r, current, target in ALLOWED if r is role}
    assert ALLOWED_TRANSITIONS[role] == expected


@pytest.mark.parametrize("role", list(TransferRole), ids=lambda r: r.value)
def test_every_transition_outside_the_allowed_table_is_refused(role: TransferRole) -> None:
    allowed = {(current, target) for r, current, target in ALLOWED if r is role}
    for current in TransferState:
        for target in TransferState:
            if (current, target) in allowed:
                assert advance(role, current, target) is target
                continue
            with pytest.raises(GatewayError) as caught:
                advance(role, current, target)
            assert caught.value.code is ResponseCode.INVALID_STATE, (current, target)


# --------------------------------------------------------------------------------------------------------
# Termination
# --------------------------------------------------------------------------------------------------------


ADOPTED: dict[TransferRole, set[tuple[TransferState, TransferState]]] = {
    INITIATING: set(),
    # The one way out of a final state: the acquiring side adopts the initiating side's cancellation or
    # termination over a rejection it sent while the messages crossed. The initiating side never leaves one.
    ACQUIRING: {(S.REJECTED, S.CANCELLED), (S.REJECTED, S.TERMINATED)},
}


@pytest.mark.parametrize("role", list(TransferRole), ids=lambda r: r.value)
def test_no_transition_leaves_a_final_state_except_by_adopting_the_initiating_sides(role: TransferRole) -> None:
    leaving = {(c, t) for c, t in ALLOWED_TRANSITIONS[role] if c.is_final}
    assert leaving == ADOPTED[role]
    for final in FINAL:
        for target in TransferState:
            if (final, target) in ADOPTED[role]:
                assert advance(role, final, target) is target
                continue
            with pytest.raises(GatewayError):
                advance(role, final, target)


@pytest.mark.parametrize("role", list(TransferRole), ids=lambda r: r.value)
def test_every_non_final_state_of_a_role_can_reach_a_final_state(role: TransferRole) -> None:
    edges = graph(role)
    non_final = {s for s in reachable(edges, ENTRY_STATE[role]) | states_in(role) if not s.is_final}
    assert non_final, "a role with no live states"
    for state in non_final:
        assert reachable(edges, state) & FINAL, f"{role.value}: {state.name} cannot reach a final state"


def test_every_non_final_state_can_reach_a_final_state_over_both_roles() -> None:
    edges: dict[TransferState, set[TransferState]] = {state: set() for state in TransferState}
    for role in TransferRole:
        for state, targets in graph(role).items():
            edges[state] |= targets
    for state in TransferState:
        if not state.is_final:
            assert reachable(edges, state) & FINAL, f"{state.name} cannot reach a final state"


@pytest.mark.parametrize("role", list(TransferRole), ids=lambda r: r.value)
def test_every_state_of_a_role_is_reachable_from_its_entry_state(role: TransferRole) -> None:
    assert states_in(role) <= reachable(graph(role), ENTRY_STATE[role])


def test_the_acquiring_side_never_holds_a_proposed_transfer() -> None:
    assert S.PROPOSED not in states_in(ACQUIRING)
    assert S.PROPOSED in states_in(INITIATING)


@pytest.mark.parametrize("role", list(TransferRole), ids=lambda r: r.value)
def test_the_transition_graph_has_no_cycle(role: TransferRole) -> None:
    """Every transfer finishes: no sequence of allowed steps returns to a state it left."""
    edges = graph(role)
    for state in TransferState:
        for nxt in edges[state]:
            assert state not in reachable(edges, nxt), f"{role.value}: cycle through {state.name}"


OVERDUE_CASES = [
    (
        "initiating, checked, past the decision timeout",
        TransferRole.INITIATING,
        TransferState.CHECKED,
        73,
        TransferState.TERMINATED,
    ),
    ("initiating, checked, within the decision timeout", TransferRole.INITIATING, TransferState.CHECKED, 71, None),
    (
        "acquiring, held, past the hold deadline",
        TransferRole.ACQUIRING,
        TransferState.CHECKED,
        49,
        TransferState.REJECTED,
    ),
    ("acquiring, held, within the hold deadline", TransferRole.ACQUIRING, TransferState.CHECKED, 47, None),
    ("acquiring, accepted, never times out", TransferRole.ACQUIRING, TransferState.ACCEPTED, 10_000, None),
    ("initiating, completed", TransferRole.INITIATING, TransferState.COMPLETED, 10_000, None),
]


@pytest.mark.parametrize(
    ("case", "role", "state", "hours", "expected"), OVERDUE_CASES, ids=[c[0] for c in OVERDUE_CASES]
)
def test_which_transfers_are_overdue(
    case: str, role: TransferRole, state: TransferState, hours: int, expected: TransferState | None
) -> None:
    import datetime as dt

    from gateway.domain.blocks import SerialSpace, UnitBlock
    from gateway.domain.protocol import Deadlines
    from gateway.domain.records import AdjustmentMethod, Purpose, TransferTerms
    from gateway.domain.transfer import Transfer, overdue

    created = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    terms = TransferTerms(
        "CHN",
        "CHE",
        "PO",
        "PH",
        "CA0001",
        "A-1",
        Purpose.NDC,
        AdjustmentMethod.AVERAGING,
        (UnitBlock(SerialSpace("CCER", "CN-CCER"), 1, 10, vintage=2025),),
    )
    transfer = Transfer("t", role, state, terms, (), created, created)
    now = created + dt.timedelta(hours=hours)
    assert overdue(transfer, now, Deadlines(hold=dt.timedelta(hours=48), decision=dt.timedelta(hours=72))) is expected


# --------------------------------------------------------------------------------------------------------
# What a side does when its partner reports a transfer's state (a status report)
# --------------------------------------------------------------------------------------------------------

PARTNER_VIEWS: dict[str, tuple[TransferRole, TransferState, bool, TransferState | None, Step]] = {
    "waiting, unknown there: never taken in": (INITIATING, S.CHECKED, False, None, Step.TERMINATE),
    "waiting, accepted there: the Decision was lost": (INITIATING, S.CHECKED, True, S.ACCEPTED, Step.COMPLETE),
    "waiting, rejected there": (INITIATING, S.CHECKED, True, S.REJECTED, Step.REJECT),
    "waiting, still checked there": (INITIATING, S.CHECKED, True, S.CHECKED, Step.NOTHING),
    "waiting, cancelled there: this side ended it and lost the record": (
        INITIATING,
        S.CHECKED,
        True,
        S.CANCELLED,
        Step.FOLLOW_END,
    ),
    "waiting, terminated there: this side ended it and lost the record": (
        INITIATING,
        S.CHECKED,
        True,
        S.TERMINATED,
        Step.FOLLOW_END,
    ),
    "waiting, completed there: only this side completes": (INITIATING, S.CHECKED, True, S.COMPLETED, Step.NOTHING),
    "completed, accepted there: the Completion was lost": (
        INITIATING,
        S.COMPLETED,
        True,
        S.ACCEPTED,
        Step.RESEND_FINAL,
    ),
    "completed, completed there": (INITIATING, S.COMPLETED, True, S.COMPLETED, Step.NOTHING),
    "completed, cancelled there: never undone here": (INITIATING, S.COMPLETED, True, S.CANCELLED, Step.NOTHING),
    "cancelled, accepted there: the Cancel was lost": (INITIATING, S.CANCELLED, True, S.ACCEPTED, Step.RESEND_FINAL),
    "cancelled, cancelled there": (INITIATING, S.CANCELLED, True, S.CANCELLED, Step.NOTHING),
    "acquiring accepted, completed there": (ACQUIRING, S.ACCEPTED, True, S.COMPLETED, Step.CREDIT),
    "acquiring accepted, unknown there": (ACQUIRING, S.ACCEPTED, False, None, Step.ADOPT),
    "acquiring rejected, cancelled there": (ACQUIRING, S.REJECTED, True, S.CANCELLED, Step.ADOPT),
    "acquiring completed, cancelled there: never undone here": (
        ACQUIRING,
        S.COMPLETED,
        True,
        S.CANCELLED,
        Step.NOTHING,
    ),
    "acquiring accepted, still checked there: the Decision was lost": (
        ACQUIRING,
        S.ACCEPTED,
        True,
        S.CHECKED,
        Step.RESEND_DECISION,
    ),
}


@pytest.mark.parametrize(
    ("role", "current", "known", "reported", "expected"), list(PARTNER_VIEWS.values()), ids=list(PARTNER_VIEWS)
)
def test_what_a_side_does_on_its_partners_view(
    role: TransferRole, current: TransferState, known: bool, reported: TransferState | None, expected: Step
) -> None:
    assert on_partner_view(role, current, known, reported) is expected
