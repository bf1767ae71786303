"""What follows a delivery: the units' bookkeeping once a partner is told, and the operator's dead letters.

A statement the partner refused for good sits on the dead-letter list (`gateway.outbox`). An operator can
retry it (after fixing what made it fail, such as trust) or abandon it; abandoning says what happens to the
transfer the statement concerned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.domain import text
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.protocol import Rejection
from gateway.domain.transfer import Transfer, TransferRole, TransferState
from gateway.store.base import BlockStatus, OutboxKind, OutboxMessage, OutboxState, Transaction
from gateway.usecases.base import Idempotency, log
from gateway.usecases.initiating import Initiating


@dataclass(frozen=True, slots=True)
class Abandoned:
    """A dead letter given up for good, and what became of its transfer."""

    message: OutboxMessage
    consequence: str
    transfer: Transfer | None


class Deliveries(Initiating):
    """The delivery hook and the dead-letter operations."""

    async def on_delivered(self, tx: Transaction, message: OutboxMessage) -> None:
        """A partner took a statement in: once it is told a transfer completed, the debited units are settled.

        Until then the units are *debited*: they have left, but the acquiring side has not heard, so this side
        still refuses any block that overlaps them (DESIGN.md section 4, "what its history shows it still owes").
        """
        if message.kind is OutboxKind.COMPLETION or (
            message.kind is OutboxKind.STATUS_REPORT and self._reports_completed(message)
        ):
            await tx.set_transfer_blocks_status(message.transfer_id, BlockStatus.DEBITED, BlockStatus.TRANSFERRED)

    def _reports_completed(self, message: OutboxMessage) -> bool:
        report = self._exchange.statement_of(message).status_report
        return report.known and report.state == int(TransferState.COMPLETED)

    async def list_outbox(self, party: str = "", states: Sequence[OutboxState] = ()) -> list[OutboxMessage]:
        """The outbox, optionally one partner's and some states', in queue order."""
        async with self.store.read() as tx:
            return await tx.list_outbox(party, states)

    async def _dead_letter(self, tx: Transaction, message_id: str) -> OutboxMessage:
        text.check_identifier(message_id, "message_id", what="message ID")
        message = await tx.get_outbox(message_id)
        if message is None:
            raise GatewayError(
                ResponseCode.UNKNOWN_MESSAGE, f"no outbox message {message_id!r} is known here", field="message_id"
            )
        if message.state is not OutboxState.DEAD:
            raise GatewayError(
                ResponseCode.INVALID_STATE,
                f"message {message_id} is {message.state.value}, not a dead letter",
                field="message_id",
            )
        return message

    async def retry_dead_letter(self, idem: Idempotency, message_id: str) -> OutboxMessage:
        """Put a dead letter back on its channel, in its original order, for another delivery attempt."""
        exchange = self._exchange
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is None:
                message = await self._dead_letter(tx, message_id)
                if message.kind is OutboxKind.PROPOSAL:
                    transfer = await tx.get_transfer(message.transfer_id)
                    if transfer is not None and transfer.state is not TransferState.CHECKED:
                        raise GatewayError(
                            ResponseCode.INVALID_STATE,
                            f"the transfer this Proposal concerns is {transfer.state.name}: abandon the letter instead",
                            field="message_id",
                        )
                await tx.retry_outbox(message.outbox_id, self.clock())
                await self._remember(tx, idem, message_id)
                previous = message_id
            found = await tx.get_outbox(previous)
        assert found is not None
        exchange.on_enqueued()
        return found

    async def abandon_dead_letter(self, idem: Idempotency, message_id: str, reason: str) -> Abandoned:
        """Give up on a dead letter for good, and settle what that means for its transfer."""
        exchange = self._exchange
        # Recorded with the letter, and sent to the partner with the cancellation of an abandoned Proposal.
        text.check_saying(reason, "reason", what="reason", why="the letter is abandoned")
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is None:
                message = await self._dead_letter(tx, message_id)
                await tx.settle(
                    message.outbox_id,
                    OutboxState.ABANDONED,
                    code=message.last_code,
                    error=text.truncate(f"abandoned by an operator: {reason}; {message.last_error}"),
                    now=self.clock(),
                )
                ended = await self._abandon_effect(tx, message, reason)
                await self._remember(tx, idem, f"{message_id} {int(ended)}")
                previous = f"{message_id} {int(ended)}"
            message_id, ended_here = previous.rsplit(" ", 1)[0], previous.endswith(" 1")
            found = await tx.get_outbox(message_id)
            assert found is not None
            transfer = await tx.get_transfer(found.transfer_id) if found.transfer_id else None
        exchange.on_enqueued()
        return Abandoned(found, self._consequence(found, transfer, ended_here), transfer)

    async def _abandon_effect(self, tx: Transaction, message: OutboxMessage, reason: str) -> bool:
        """Settle what abandoning ``message`` means; True when it ended a transfer here."""
        if message.kind is not OutboxKind.PROPOSAL:
            return False
        transfer = await tx.get_transfer(message.transfer_id)
        if (
            transfer is None
            or transfer.role is not TransferRole.INITIATING
            or transfer.state is not TransferState.CHECKED
        ):
            return False
        abandoned = Rejection(ResponseCode.TRANSFER_ENDED, text.truncate(f"the Proposal was abandoned: {reason}"))
        transfer = await self._set_state(tx, transfer, TransferState.TERMINATED, [abandoned])
        await self._release(tx, transfer.transfer_id)
        # The partner refused this copy, but may hold an earlier one: the Cancel settles it either way.
        await self._send_final(tx, transfer, abandoned.message)
        log.warning("abandoned the Proposal of %s: the transfer is TERMINATED", transfer.transfer_id)
        return True

    def _consequence(self, message: OutboxMessage, transfer: Transfer | None, ended_here: bool) -> str:
        partner = message.receiver
        if message.kind is OutboxKind.TRUST:
            return (
                f"{partner} keeps trusting the trust document version it has until it fetches the newer one from this"
                " gateway's published URL (RefreshPartnerTrust on its side)"
            )
        if transfer is None:
            return "no transfer is concerned; nothing else changes"
        state = transfer.state.name
        if message.kind is OutboxKind.PROPOSAL and ended_here:
            return (
                f"transfer {transfer.transfer_id} is {state}; its reserved units are released, and a Cancel tells"
                f" {partner} in case it took an earlier copy of the Proposal in"
            )
        if message.kind is OutboxKind.PROPOSAL:
            return (
                f"transfer {transfer.transfer_id} had already moved on and stays {state}: {partner} took an earlier"
                " copy of the Proposal in, or the transfer ended before"
            )
        if message.kind is OutboxKind.DECISION:
            return (
                f"transfer {transfer.transfer_id} stays {state} here; {partner} learns the decision when it asks for"
                " the transfer's status, or ends the transfer at its own deadline"
            )
        if message.kind is OutboxKind.COMPLETION:
            return (
                f"transfer {transfer.transfer_id} stays {state} here and its units stay debited; {partner} credits"
                " them when it asks for the transfer's status"
            )
        if message.kind is OutboxKind.CANCEL:
            return (
                f"transfer {transfer.transfer_id} stays {state} here; {partner} adopts that state when the transfer"
                " is next reported to it"
            )
        return f"transfer {transfer.transfer_id} stays {state}; a later status query asks again if it still waits"
