"""The gateway's use cases, gathered: operator writes and reads, and the effects of partner statements.

Each use case lives in a module of `gateway.usecases` and runs in one store transaction: its state change and
the message it causes commit together (the transactional outbox).
"""

from __future__ import annotations

from carbon_gateway.v1 import partner_pb2
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.records import LedgerEntry
from gateway.domain.statements import Header
from gateway.domain.text import check_identifier
from gateway.domain.transfer import Transfer
from gateway.exchange import HandlerFailed
from gateway.store.base import BlockPosition, StoredBlock, Transaction
from gateway.usecases.authorizations import AuthorizationKeeping
from gateway.usecases.base import Idempotency, LedgerOptions, log
from gateway.usecases.deliveries import Abandoned, Deliveries
from gateway.usecases.feed import FeedKeeping
from gateway.usecases.initiating import BlockSelection, TransferRequest
from gateway.usecases.ledger import LedgerKeeping, LedgerSummary
from gateway.usecases.reconciling import Reconciling
from gateway.usecases.registration import Registration
from gateway.usecases.reporting import Reporting
from gateway.usecases.retiring import RetirementRequest, RetirementResult, Retiring
from gateway.usecases.status import StatusKeeping

__all__ = [
    "Abandoned",
    "BlockSelection",
    "Gateway",
    "Idempotency",
    "LedgerOptions",
    "LedgerSummary",
    "RetirementRequest",
    "RetirementResult",
    "TransferRequest",
]


class Gateway(
    Registration,
    AuthorizationKeeping,
    Retiring,
    LedgerKeeping,
    Reporting,
    Reconciling,
    Deliveries,
    StatusKeeping,
    FeedKeeping,
):
    """One jurisdiction's gateway: its store, its exchange with partners, and its decision policy."""

    async def on_statement(
        self,
        tx: Transaction,
        partner: str,
        header: Header,
        statement: partner_pb2.Statement,
        *,
        final_attempt: bool = True,
    ) -> GatewayError | None:
        """Apply a verified, in-order statement from ``partner`` (see `gateway.exchange.StatementHandler`).

        No statement can stop its channel: whatever goes wrong is rolled back and becomes a refusal with a
        response code. A failure of this gateway's own (a bug, or data it cannot read) is first left untaken,
        for the sender to send again, unless this is the ``final_attempt``. A Proposal that cannot be taken up
        is still answered with a rejection, so that the initiating side releases its units.
        """
        try:
            async with tx.savepoint():
                await self._dispatch(tx, partner, statement)
        except GatewayError as exc:
            refusal = exc
        except Exception as exc:
            if self.store.is_transient(exc):
                raise  # the database could not do it now: nothing is taken in, and the sender sends it again
            kind = statement.WhichOneof("body")
            if not final_attempt:
                log.exception("failed while applying a %s from %s; it is not taken in, to be sent again", kind, partner)
                raise HandlerFailed(f"the receiver failed while applying it: {exc!r}") from exc
            log.exception("failed while applying a %s from %s; it is taken in refused", kind, partner)
            refusal = GatewayError(ResponseCode.INTERNAL_ERROR, f"the receiver failed while applying it: {exc!r}")
        else:
            return None
        await self._answer_refused_proposal(tx, partner, statement, refusal)
        return refusal

    async def _dispatch(self, tx: Transaction, partner: str, statement: partner_pb2.Statement) -> None:
        kind = statement.WhichOneof("body")
        if kind == "proposal":
            await self._on_proposal(tx, partner, statement.proposal)
        elif kind == "decision":
            await self._on_decision(tx, partner, statement.decision)
        elif kind == "completion":
            await self._on_completion(tx, partner, statement.completion)
        elif kind == "cancel":
            await self._on_cancel(tx, partner, statement.cancel)
        elif kind == "status_query":
            await self._on_status_query(tx, partner, statement.status_query)
        elif kind == "status_report":
            await self._on_status_report(tx, partner, statement.status_report)
        elif kind == "reconciliation_request":
            await self._on_reconciliation_request(tx, partner, statement.reconciliation_request)
        elif kind == "reconciliation_reply":
            await self._on_reconciliation_reply(tx, partner, statement.reconciliation_reply)
        elif kind == "reconciliation_report":
            await self._on_reconciliation_report(tx, partner, statement.reconciliation_report)
        else:
            raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, f"unknown statement body {kind!r}", field="body")

    async def _answer_refused_proposal(
        self, tx: Transaction, partner: str, statement: partner_pb2.Statement, refusal: GatewayError
    ) -> None:
        if statement.WhichOneof("body") != "proposal":
            return
        transfer_id = statement.proposal.transfer_id
        try:
            check_identifier(transfer_id, "proposal.transfer_id")
        except GatewayError:
            return  # nothing the initiating side could match an answer to
        if await tx.get_transfer(transfer_id) is not None:
            return  # this transfer ID is already known here: the refusal is about that, not about the proposal
        await self.reject_unreadable_proposal(tx, partner, transfer_id, refusal)

    # reads

    async def get_transfer(self, transfer_id: str) -> Transfer:
        """A transfer by ID."""
        async with self.store.read() as tx:
            transfer = await tx.get_transfer(transfer_id)
        if transfer is None:
            raise GatewayError(
                ResponseCode.UNKNOWN_TRANSFER, f"transfer {transfer_id[:128]!r} is not known here", field="transfer_id"
            )
        return transfer

    async def list_transfers(self, *, after: tuple[str, str] | None = None, limit: int | None = None) -> list[Transfer]:
        """The transfers this gateway knows, oldest first: after ``after``, ``limit`` at the most."""
        async with self.store.read() as tx:
            return await tx.list_transfers(after=after, limit=limit)

    async def list_ledger(self, *, after: int = 0, limit: int | None = None) -> list[LedgerEntry]:
        """The corresponding-adjustment ledger, in the order entries were recorded: after entry ``after``,
        ``limit`` at the most."""
        async with self.store.read() as tx:
            return await tx.list_ledger(after=after, limit=limit)

    async def list_holdings(
        self, account_id: str = "", *, after: BlockPosition | None = None, limit: int | None = None
    ) -> list[StoredBlock]:
        """Current blocks (held, reserved, pending), optionally of one account (refused when unknown here): after
        ``after``, ``limit`` at the most."""
        async with self.store.read() as tx:
            if account_id and await tx.get_account(account_id) is None:
                raise GatewayError(
                    ResponseCode.UNKNOWN_ACCOUNT, f"account {account_id!r} is not known here", field="account_id"
                )
            return await tx.list_blocks(account_id, after=after, limit=limit)
