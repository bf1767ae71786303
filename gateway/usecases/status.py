"""Keeping both sides of a transfer in step: deadlines, status queries, and arbitration of crossing messages.

A sweep runs over the transfers that are not final, each on its own (one that fails is logged and the rest
go on):

- a transfer waiting past its deadline ends (`gateway.domain.transfer.overdue`): an outgoing one is
  terminated and its units released, a held incoming one is rejected;
- a transfer waiting on the partner longer than ``status_query_after`` asks it for its status. The answer
  (a StatusReport) is settled by `gateway.domain.transfer.on_partner_view`: the initiating side arbitrates,
  and both sides end in its state.
"""

from __future__ import annotations

from carbon_gateway.v1 import partner_pb2
from gateway.domain import text
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.protocol import Rejection
from gateway.domain.transfer import (
    Step,
    Transfer,
    TransferState,
    on_partner_view,
    overdue,
    waits_for_partner,
)
from gateway.store.base import OutboxKind, OutboxState, Transaction, database_could_not, failure_line
from gateway.usecases.acquiring import Acquiring, reported_end
from gateway.usecases.base import log
from gateway.usecases.initiating import Initiating


class StatusKeeping(Initiating, Acquiring):
    """Deadlines, status queries and reports."""

    async def _on_status_query(self, tx: Transaction, partner: str, query: partner_pb2.StatusQuery) -> None:
        """Either side: answer a partner's question about a transfer's state."""
        text.check_identifier(query.transfer_id, "status_query.transfer_id", what="transfer ID")
        transfer = await tx.get_transfer(query.transfer_id)
        known = transfer is not None and transfer.partner == partner
        report = partner_pb2.StatusReport(
            transfer_id=query.transfer_id,
            state=int(transfer.state) if transfer is not None and known else 0,  # type: ignore[arg-type]
            known=known,
        )
        await self._exchange.enqueue(tx, partner, status_report=report)

    async def _on_status_report(self, tx: Transaction, partner: str, report: partner_pb2.StatusReport) -> None:
        """Either side: the partner's view of a transfer this side asked about; converge on one state."""
        text.check_identifier(report.transfer_id, "status_report.transfer_id", what="transfer ID")
        transfer = await tx.get_transfer(report.transfer_id)
        if transfer is None or transfer.partner != partner:
            raise GatewayError(
                ResponseCode.UNKNOWN_TRANSFER, f"no transfer {report.transfer_id[:128]!r} with {partner} is known here"
            )
        reported: TransferState | None = None
        if report.known:
            try:
                reported = TransferState(report.state)
            except ValueError:
                raise GatewayError(
                    ResponseCode.MALFORMED_PAYLOAD, f"the report names an unknown state {report.state}", field="state"
                ) from None
        step = on_partner_view(transfer.role, transfer.state, report.known, reported)
        if (
            step is Step.NOTHING
            and transfer.state is TransferState.COMPLETED
            and reported not in (TransferState.COMPLETED, TransferState.ACCEPTED)
        ):
            # Nothing the protocol can do: the books of the two sides disagree about units that moved.
            log.warning(
                "%s reports transfer %s %s while it is COMPLETED here: run a reconciliation with %s",
                partner,
                transfer.transfer_id,
                reported.name if reported else "unknown to it",
                partner,
            )
        elif step is not Step.NOTHING:
            log.warning(
                "%s reports transfer %s %s while it is %s here: %s",
                partner,
                transfer.transfer_id,
                reported.name if reported else "unknown",
                transfer.state.name,
                step.value,
            )
        await self._take_step(tx, transfer, step, reported)

    async def _take_step(self, tx: Transaction, transfer: Transfer, step: Step, reported: TransferState | None) -> None:
        partner = transfer.partner
        if step is Step.COMPLETE:
            await self._accepted(tx, transfer)
        elif step is Step.REJECT:
            rejection = Rejection(ResponseCode.INVALID_STATE, f"{partner} reports that it rejected the transfer")
            await self._reject(tx, transfer, [rejection])
        elif step is Step.TERMINATE:
            if await tx.outbox_has_for_transfer(transfer.transfer_id, (OutboxKind.PROPOSAL,)):
                return  # the Proposal has not reached the partner yet; nothing is wrong
            unknown = Rejection(ResponseCode.UNKNOWN_TRANSFER, f"{partner} does not know the transfer")
            transfer = await self._set_state(tx, transfer, TransferState.TERMINATED, [unknown])
            await self._release(tx, transfer.transfer_id)
            await self._send_final(tx, transfer, unknown.message)
        elif step is Step.FOLLOW_END:
            assert reported is not None
            ended = Rejection(
                ResponseCode.TRANSFER_ENDED,
                f"{partner} reports the transfer {reported.name}, which only this side decides: the record of ending"
                " it was lost here (a store restored from a backup?); reconcile with the partner",
            )
            transfer = await self._set_state(tx, transfer, reported, [ended])
            await self._release(tx, transfer.transfer_id)
        elif step is Step.RESEND_FINAL:
            await self._send_final(tx, transfer, f"the transfer is {transfer.state.name} at {self.party}")
        elif step is Step.CREDIT:
            await self._acquire(tx, transfer)
        elif step is Step.ADOPT:
            if reported is None:
                unknown = Rejection(ResponseCode.TRANSFER_ENDED, f"{partner} does not know the transfer")
                await self._adopt(tx, transfer, TransferState.TERMINATED, unknown)
            else:
                await self._adopt(tx, transfer, reported, reported_end(partner, reported))
        elif step is Step.RESEND_DECISION:
            if await tx.outbox_has_for_transfer(transfer.transfer_id, (OutboxKind.DECISION,)):
                return
            accepted = transfer.state is TransferState.ACCEPTED
            await self._send_decision(
                tx, transfer, accepted=accepted, rejections=() if accepted else transfer.rejections
            )

    async def sweep(self) -> list[Transfer]:
        """End the transfers past their deadline and ask about the ones waiting too long; return those that
        changed state. Each transfer is handled in its own transaction, and a failure is confined to it; a database
        that cannot be used now ends the sweep (raised), to be taken up again by the next."""
        async with self.store.read() as tx:
            waiting = await tx.open_transfers()
        changed: list[Transfer] = []
        for candidate in waiting:
            try:
                ended = await self._sweep_one(candidate.transfer_id)
            except Exception as exc:
                if database_could_not(self.store, exc):
                    if not await self._answers(candidate.transfer_id):
                        # The database, not this transfer: the others would fail on it too, each with its
                        # traceback. The next sweep takes them all up again.
                        raise
                    # This transfer's own (a row lock held past the lock timeout, a deadlock broken, a statement
                    # cancelled): the transfers after it must not wait for it.
                    log.warning(
                        "%s: the sweep could not handle transfer %s now (%s); it goes on, and the next sweep takes"
                        " the transfer up again",
                        self.party,
                        candidate.transfer_id,
                        failure_line(exc),
                    )
                    continue
                log.exception("%s: the sweep failed on transfer %s; it goes on", self.party, candidate.transfer_id)
                continue
            if ended is not None:
                changed.append(ended)
        return changed

    async def _answers(self, transfer_id: str) -> bool:
        """Whether the database answers a read of ``transfer_id`` now: after a transient failure on the transfer,
        whether the failure was the transfer's own or the database's."""
        try:
            async with self.store.read() as tx:
                await tx.get_transfer(transfer_id)
        except Exception:
            return False
        return True

    async def expire_overdue(self) -> list[Transfer]:
        """The transfers the sweep ended (kept for callers that only want the deadlines)."""
        return await self.sweep()

    async def _sweep_one(self, transfer_id: str) -> Transfer | None:
        """The transfer if it passed its deadline and ended here; None otherwise (a status query may be queued)."""
        async with self.store.transaction() as tx:
            transfer = await tx.get_transfer(transfer_id)
            if transfer is None:
                return None
            now = self.clock()
            target = overdue(transfer, now, self.deadlines)
            if target is TransferState.TERMINATED:
                transfer = await self._terminate_overdue(tx, transfer)
            elif target is TransferState.REJECTED:
                rejection = Rejection(
                    ResponseCode.DECISION_DEADLINE_PASSED,
                    f"held for an operator's decision longer than {self.deadlines.hold}",
                )
                transfer = await self._set_state(tx, transfer, target, [rejection])
                await self._drop_pending(tx, transfer.transfer_id)
                await self._send_decision(tx, transfer, accepted=False, rejections=[rejection])
            if target is not None:
                log.warning(
                    "%s transfer %s passed its deadline: %s", transfer.role.value, transfer.transfer_id, target.name
                )
                return transfer
            if not waits_for_partner(transfer):
                return None
            last = await tx.status_queried_at(transfer.transfer_id) or transfer.updated_at
            if now - max(last, transfer.updated_at) < self.status_query_after:
                return None
            await tx.set_status_queried_at(transfer.transfer_id, now)
            if await tx.outbox_has_for_transfer(transfer.transfer_id, tuple(OutboxKind)):
                return None  # something for this transfer is still on its way to the partner
            if await tx.outbox_has_for_transfer(transfer.transfer_id, (OutboxKind.STATUS_QUERY,), (OutboxState.DEAD,)):
                # An earlier query is on the dead-letter list: another would only join it there. A dead statement
                # of another kind does not stop the query, which is how this side recovers from it.
                return None
            await self._exchange.enqueue(
                tx, transfer.partner, status_query=partner_pb2.StatusQuery(transfer_id=transfer.transfer_id)
            )
            log.info("asked %s for the status of transfer %s", transfer.partner, transfer.transfer_id)
            return None
