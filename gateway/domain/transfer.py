"""The transfer state machine (DESIGN.md section 4), with the Kyoto DES integer codes."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.protocol import Deadlines, Rejection
from gateway.domain.records import TransferTerms


class TransferState(enum.IntEnum):
    """Transfer states. The values are the DES codes and appear on the wire: never renumber them."""

    PROPOSED = 1
    CHECKED = 2
    CHECKED_DISCREPANCY = 3
    COMPLETED = 4
    TERMINATED = 5
    REJECTED = 6
    CANCELLED = 7
    ACCEPTED = 8

    @property
    def is_final(self) -> bool:
        """True for states no transfer leaves."""
        return self in FINAL_STATES


class TransferRole(enum.StrEnum):
    """Which side of a transfer this gateway is on."""

    INITIATING = "initiating"
    ACQUIRING = "acquiring"


FINAL_STATES = frozenset(
    {
        TransferState.CHECKED_DISCREPANCY,
        TransferState.COMPLETED,
        TransferState.TERMINATED,
        TransferState.REJECTED,
        TransferState.CANCELLED,
    }
)

OPEN_STATES = tuple(state for state in TransferState if state not in FINAL_STATES)
"""The states a transfer may still leave, in code order."""

USES_AUTHORIZED_QUANTITY = frozenset(
    {TransferState.PROPOSED, TransferState.CHECKED, TransferState.ACCEPTED, TransferState.COMPLETED}
)
"""An outgoing transfer in these states counts against its authorization's quantity; refused, cancelled or
terminated transfers give the quantity back."""

ALLOWED_TRANSITIONS: dict[TransferRole, frozenset[tuple[TransferState, TransferState]]] = {
    TransferRole.INITIATING: frozenset(
        {
            (TransferState.PROPOSED, TransferState.CHECKED),
            (TransferState.PROPOSED, TransferState.CHECKED_DISCREPANCY),
            (TransferState.PROPOSED, TransferState.CANCELLED),
            (TransferState.CHECKED, TransferState.ACCEPTED),
            (TransferState.CHECKED, TransferState.REJECTED),
            (TransferState.CHECKED, TransferState.CANCELLED),
            (TransferState.CHECKED, TransferState.TERMINATED),
            (TransferState.ACCEPTED, TransferState.COMPLETED),
            (TransferState.ACCEPTED, TransferState.TERMINATED),
        }
    ),
    # The acquiring side learns of a transfer already checked by the initiating side.
    TransferRole.ACQUIRING: frozenset(
        {
            (TransferState.CHECKED, TransferState.ACCEPTED),
            (TransferState.CHECKED, TransferState.REJECTED),
            (TransferState.CHECKED, TransferState.CANCELLED),
            (TransferState.CHECKED, TransferState.TERMINATED),
            (TransferState.ACCEPTED, TransferState.COMPLETED),
            (TransferState.ACCEPTED, TransferState.CANCELLED),
            (TransferState.ACCEPTED, TransferState.TERMINATED),
            # The initiating side arbitrates: its cancellation or termination wins over a rejection this side
            # sent while the two messages crossed (DESIGN.md section 4, "Crossing messages").
            (TransferState.REJECTED, TransferState.CANCELLED),
            (TransferState.REJECTED, TransferState.TERMINATED),
        }
    ),
}


def overdue(transfer: Transfer, now: dt.datetime, deadlines: Deadlines) -> TransferState | None:
    """The state a transfer waiting past its deadline moves to, or None while it may still wait.

    Only a transfer still waiting for a decision can be overdue: an initiating one is terminated, a held
    incoming one is rejected. An accepted incoming transfer never times out here, because the initiating
    side may already have debited the units and its Completion is on its way.
    """
    if transfer.state is not TransferState.CHECKED:
        return None
    if transfer.role is TransferRole.INITIATING and now - transfer.created_at > deadlines.decision:
        return TransferState.TERMINATED
    if transfer.role is TransferRole.ACQUIRING and now - transfer.created_at > deadlines.hold:
        return TransferState.REJECTED
    return None


class Step(enum.StrEnum):
    """What one side does when it learns the other side's view of a transfer (a StatusReport, or a message
    that crossed one of its own). The initiating side arbitrates (DESIGN.md section 4, "Crossing messages"):
    the first final state it records is the transfer's state, and the acquiring side adopts it."""

    NOTHING = "nothing"
    COMPLETE = "complete"  # initiating: the partner accepted; debit and complete
    REJECT = "reject"  # initiating: the partner rejected; release the reserved units
    TERMINATE = "terminate"  # initiating: the partner never took the proposal in; end it and release
    FOLLOW_END = "follow end"  # initiating: the partner holds an end only this side decides; take it and release
    RESEND_FINAL = "resend final"  # initiating: tell the partner the final state again (Completion or Cancel)
    CREDIT = "credit"  # acquiring: the initiating side completed; credit the pending units
    ADOPT = "adopt"  # acquiring: take the initiating side's final state and drop the pending units
    RESEND_DECISION = "resend decision"  # acquiring: the initiating side still waits for this side's decision


def on_partner_view(role: TransferRole, current: TransferState, known: bool, reported: TransferState | None) -> Step:
    """What a side in ``current`` does when the partner reports ``reported`` (``known`` False: it has no such
    transfer). Pure: the caller checks whether a message that would repeat one is still in its outbox."""
    if role is TransferRole.INITIATING:
        if current is TransferState.CHECKED:
            if not known:
                return Step.TERMINATE
            if reported is TransferState.ACCEPTED:
                return Step.COMPLETE
            if reported is TransferState.REJECTED:
                return Step.REJECT
            if reported in (TransferState.CANCELLED, TransferState.TERMINATED):
                # Only this side's Cancel (or its report) ends a transfer so there: this side ended it, and lost
                # the record (its store was restored from a backup). Waiting for the deadline would end it in
                # another state than the partner's, and keep its units reserved until then.
                return Step.FOLLOW_END
            return Step.NOTHING
        if current is TransferState.COMPLETED:
            return Step.RESEND_FINAL if known and reported is TransferState.ACCEPTED else Step.NOTHING
        if current in (TransferState.CANCELLED, TransferState.TERMINATED):
            return Step.RESEND_FINAL if known and reported is not current else Step.NOTHING
        return Step.NOTHING
    if not known:
        return Step.ADOPT if current in (TransferState.CHECKED, TransferState.ACCEPTED) else Step.NOTHING
    if reported is TransferState.COMPLETED:
        return Step.CREDIT if current is TransferState.ACCEPTED else Step.NOTHING
    if reported in (TransferState.CANCELLED, TransferState.TERMINATED):
        adoptable = (TransferState.CHECKED, TransferState.ACCEPTED, TransferState.REJECTED)
        return Step.ADOPT if current in adoptable else Step.NOTHING
    if reported is TransferState.CHECKED and current in (TransferState.ACCEPTED, TransferState.REJECTED):
        return Step.RESEND_DECISION
    return Step.NOTHING


def waits_for_partner(transfer: Transfer) -> bool:
    """True while a transfer waits on the other side: an outgoing one for a Decision, an incoming accepted one
    for the Completion. Such a transfer asks the partner for its status when it waits too long."""
    if transfer.role is TransferRole.INITIATING:
        return transfer.state is TransferState.CHECKED
    return transfer.state is TransferState.ACCEPTED


def advance(role: TransferRole, current: TransferState, target: TransferState) -> TransferState:
    """Return ``target`` if the table allows ``current -> target`` for ``role``; refuse otherwise."""
    if (current, target) not in ALLOWED_TRANSITIONS[role]:
        raise GatewayError(
            ResponseCode.INVALID_STATE,
            f"a transfer on the {role} side cannot go from {current.name} to {target.name}",
        )
    return target


@dataclass(frozen=True, slots=True)
class Transfer:
    """A transfer as one gateway keeps it. The transfer ID is the same on both sides."""

    transfer_id: str
    role: TransferRole
    state: TransferState
    terms: TransferTerms
    rejections: tuple[Rejection, ...]
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def partner(self) -> str:
        """The Party on the other side of the transfer."""
        return self.terms.acquiring_party if self.role is TransferRole.INITIATING else self.terms.transferring_party
