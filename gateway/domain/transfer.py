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
