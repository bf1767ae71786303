"""The gateway's use cases: operator writes and reads, and the effects of partner statements.

Each use case runs in one store transaction: its state change and the message it causes commit together
(the transactional outbox). Decisions come from `gateway.domain`; this module orders reads and writes.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from carbon_gateway.v1 import partner_pb2
from gateway import wire
from gateway.domain.blocks import SerialSpace, UnitBlock, merge, split
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.protocol import (
    Deadlines,
    DecisionPolicy,
    Rejection,
    Verdict,
    check_acquisition,
    check_authorization,
    completion_entries,
    parse_adjustment_method,
    parse_purpose,
    validate_terms,
)
from gateway.domain.records import Account, Authorization, LedgerEntry, TransferTerms
from gateway.domain.statements import Header
from gateway.domain.transfer import Transfer, TransferRole, TransferState, advance, overdue
from gateway.exchange import Exchange
from gateway.store.base import BlockStatus, IdempotentResult, Store, StoreConflict, StoredBlock, Transaction

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Idempotency:
    """An operator write's idempotency key, scoped to the caller and the method, and its request's hash."""

    caller: str
    method: str
    key: str
    request_hash: str


@dataclass(frozen=True, slots=True)
class BlockSelection:
    """A serial range to take out of the blocks held in an account."""

    space: SerialSpace
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """An operator's request to transfer units to another Party's account."""

    source_account: str
    selections: tuple[BlockSelection, ...]
    acquiring_party: str
    acquiring_account: str
    cooperative_approach: str
    authorization_id: str
    purpose: str
    adjustment_method: str


class Gateway:
    """One jurisdiction's gateway: its store, its exchange with partners, and its decision policy."""

    def __init__(
        self,
        *,
        party: str,
        store: Store,
        policy: DecisionPolicy,
        clock: Callable[[], dt.datetime],
        deadlines: Deadlines | None = None,
    ) -> None:
        self.party = party
        self.store = store
        self.policy = policy
        self.deadlines = deadlines or Deadlines()
        self.clock = clock
        self.exchange: Exchange | None = None

    def attach(self, exchange: Exchange) -> None:
        """Connect the exchange this gateway sends its statements through."""
        self.exchange = exchange

    @property
    def _exchange(self) -> Exchange:
        if self.exchange is None:
            raise RuntimeError("the gateway has no exchange attached")
        return self.exchange

    # idempotency

    async def _replay(self, tx: Transaction, idem: Idempotency) -> str | None:
        """The resource ID a previous call with this key produced, or None for a first call."""
        stored = await tx.get_idempotent(idem.caller, idem.method, idem.key)
        if stored is None:
            return None
        if stored.request_hash != idem.request_hash:
            raise GatewayError(
                ResponseCode.IDEMPOTENCY_KEY_REUSED,
                f"idempotency key {idem.key!r} was used for a different {idem.method} request; use a new key",
                field="idempotency_key",
            )
        return stored.response.decode()

    @staticmethod
    def _require_key(idem: Idempotency) -> None:
        if not idem.key:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT, "every operator write needs an idempotency key", field="idempotency_key"
            )

    # accounts and authorizations

    async def _create_once(
        self,
        idem: Idempotency,
        resource_id: str,
        *,
        what: str,
        field: str,
        insert: Callable[[Transaction], Awaitable[None]],
        find: Callable[[Transaction, str], Awaitable[T | None]],
    ) -> T:
        """Insert a resource under an idempotency key; a retry returns what the first call created."""
        self._require_key(idem)
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is None:
                try:
                    await insert(tx)
                except StoreConflict:
                    raise GatewayError(
                        ResponseCode.INVALID_ARGUMENT, f"{what} {resource_id!r} already exists", field=field
                    ) from None
                await tx.put_idempotent(
                    idem.caller, idem.method, idem.key, IdempotentResult(idem.request_hash, resource_id.encode())
                )
                previous = resource_id
            found = await find(tx, previous)
        assert found is not None
        return found

    async def open_account(self, idem: Idempotency, account: Account) -> Account:
        """Open an account at this gateway."""
        return await self._create_once(
            idem,
            account.account_id,
            what="account",
            field="account.account_id",
            insert=lambda tx: tx.insert_account(account),
            find=lambda tx, key: tx.get_account(key),
        )

    async def register_authorization(self, idem: Idempotency, authorization: Authorization) -> Authorization:
        """Record a Party's authorization, which transfers then name."""
        return await self._create_once(
            idem,
            authorization.authorization_id,
            what="authorization",
            field="authorization.authorization_id",
            insert=lambda tx: tx.insert_authorization(authorization),
            find=lambda tx, key: tx.get_authorization(key),
        )

    async def register_issuance(self, idem: Idempotency, account_id: str, block: UnitBlock) -> StoredBlock:
        """Record units issued into, or held in, one of this gateway's accounts by the registry of record."""
        self._require_key(idem)
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is not None:
                return await self._block(tx, int(previous))
            account = await tx.get_account(account_id)
            if account is None:
                raise GatewayError(
                    ResponseCode.UNKNOWN_ACCOUNT, f"account {account_id!r} is not known here", field="account_id"
                )
            if not account.can_hold:
                raise GatewayError(
                    ResponseCode.ACCOUNT_NOT_ELIGIBLE,
                    f"account {account_id!r} is a {account.account_type.value} account and cannot hold units",
                    field="account_id",
                )
            known = await tx.overlapping_blocks(block.space, block.start, block.end)
            if known:
                raise GatewayError(
                    ResponseCode.BLOCK_OVERLAP,
                    f"{block.describe()} overlaps " + ", ".join(k.block.describe() for k in known),
                    field="block",
                    blocks=[block, *(k.block for k in known)],
                )
            block_id = await tx.insert_block(block, account_id=account_id, status=BlockStatus.HELD)
            await tx.put_idempotent(
                idem.caller, idem.method, idem.key, IdempotentResult(idem.request_hash, str(block_id).encode())
            )
            return await self._block(tx, block_id)

    @staticmethod
    async def _block(tx: Transaction, block_id: int) -> StoredBlock:
        found = await tx.get_block(block_id)
        assert found is not None
        return found

    # transfers, initiating side

    async def propose_transfer(self, idem: Idempotency, request: TransferRequest) -> Transfer:
        """Reserve the selected units and send a Proposal to the acquiring Party's gateway.

        The initiating side's checks (ownership, authorization, purpose, quantity) run in the same transaction.
        A proposal failing them is refused with its response code and leaves nothing behind.
        """
        self._require_key(idem)
        exchange = self._exchange
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is not None:
                found = await tx.get_transfer(previous)
                assert found is not None
                return found
            if exchange.partners.get(request.acquiring_party) is None:
                raise GatewayError(
                    ResponseCode.UNKNOWN_PARTNER,
                    f"no partner gateway is configured for {request.acquiring_party!r}",
                    field="acquiring_account.party",
                )
            account = await tx.get_account(request.source_account)
            if account is None:
                raise GatewayError(
                    ResponseCode.UNKNOWN_ACCOUNT,
                    f"account {request.source_account!r} is not known here",
                    field="source_account",
                )
            if not request.selections:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT, "select at least one serial range", field="selections"
                )
            transfer_id = str(uuid.uuid4())
            # Each selection is split and written before the next is looked up, so that two selections
            # from one held block see each other; a refusal further down rolls the whole transaction back.
            taken_blocks: list[UnitBlock] = []
            for index, selection in enumerate(request.selections):
                held = await self._holding_block(tx, request.source_account, selection, f"selections[{index}]")
                parts = split(held.block, selection.start, selection.end)
                await tx.set_block_status(held.block_id, BlockStatus.SUPERSEDED)
                await tx.insert_block(
                    parts.taken,
                    account_id=held.account_id,
                    status=BlockStatus.RESERVED,
                    transfer_id=transfer_id,
                    parent_id=held.block_id,
                )
                for rest in parts.remainder:
                    await tx.insert_block(
                        rest, account_id=held.account_id, status=BlockStatus.HELD, parent_id=held.block_id
                    )
                taken_blocks.append(parts.taken)
            terms = TransferTerms(
                transferring_party=self.party,
                acquiring_party=request.acquiring_party,
                source_account=request.source_account,
                acquiring_account=request.acquiring_account,
                cooperative_approach=request.cooperative_approach,
                authorization_id=request.authorization_id,
                purpose=parse_purpose(request.purpose),
                adjustment_method=parse_adjustment_method(request.adjustment_method),
                blocks=tuple(taken_blocks),
            )
            validate_terms(terms)
            rejections = check_authorization(
                await tx.get_authorization(terms.authorization_id),
                terms,
                already_transferred=await tx.authorized_quantity_used(terms.authorization_id),
                today=self.clock().date(),
            )
            if rejections:
                first = rejections[0]
                raise GatewayError(first.code, first.message, field="authorization_id", blocks=first.blocks)
            now = self.clock()
            transfer = Transfer(
                transfer_id=transfer_id,
                role=TransferRole.INITIATING,
                state=advance(TransferRole.INITIATING, TransferState.PROPOSED, TransferState.CHECKED),
                terms=terms,
                rejections=(),
                created_at=now,
                updated_at=now,
            )
            await tx.insert_transfer(transfer)
            await exchange.enqueue(tx, terms.acquiring_party, proposal=wire.proposal_to_proto(transfer_id, terms))
            await tx.put_idempotent(
                idem.caller, idem.method, idem.key, IdempotentResult(idem.request_hash, transfer_id.encode())
            )
        exchange.on_enqueued()
        return transfer

    @staticmethod
    async def _holding_block(tx: Transaction, account_id: str, selection: BlockSelection, field: str) -> StoredBlock:
        """The one free block held in ``account_id`` that contains the selected range."""
        probe = UnitBlock(space=selection.space, start=selection.start, end=selection.end, vintage=0)
        found = await tx.overlapping_blocks(selection.space, selection.start, selection.end)
        for stored in found:
            if (
                stored.status is BlockStatus.HELD
                and stored.account_id == account_id
                and stored.block.start <= selection.start
                and selection.end <= stored.block.end
            ):
                return stored
        where = "; ".join(f"{s.block.describe()} is {s.status.value} in {s.account_id!r}" for s in found)
        raise GatewayError(
            ResponseCode.UNIT_NOT_HELD,
            f"{probe.describe()} is not held, free and whole, in account {account_id!r}"
            + (f" ({where})" if where else ""),
            field=field,
            blocks=[probe],
        )

    async def cancel_transfer(self, idem: Idempotency, transfer_id: str, reason: str) -> Transfer:
        """Cancel an outgoing transfer before the acquiring side accepts it; the reserved units are released."""
        self._require_key(idem)
        exchange = self._exchange
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is not None:
                found = await tx.get_transfer(previous)
                assert found is not None
                return found
            transfer = await tx.get_transfer(transfer_id)
            if transfer is None:
                raise GatewayError(
                    ResponseCode.UNKNOWN_TRANSFER, f"transfer {transfer_id!r} is not known here", field="transfer_id"
                )
            if transfer.role is not TransferRole.INITIATING:
                raise GatewayError(
                    ResponseCode.INVALID_STATE,
                    "only the initiating side cancels a transfer; the acquiring side rejects it",
                    field="transfer_id",
                )
            transfer = await self._set_state(tx, transfer, TransferState.CANCELLED)
            await self._release(tx, transfer_id)
            await exchange.enqueue(
                tx, transfer.partner, cancel=partner_pb2.Cancel(transfer_id=transfer_id, reason=reason)
            )
            await tx.put_idempotent(
                idem.caller, idem.method, idem.key, IdempotentResult(idem.request_hash, transfer_id.encode())
            )
        exchange.on_enqueued()
        return transfer

    async def _set_state(
        self, tx: Transaction, transfer: Transfer, state: TransferState, rejections: Sequence[Rejection] = ()
    ) -> Transfer:
        updated = replace(
            transfer,
            state=advance(transfer.role, transfer.state, state),
            rejections=tuple(rejections) or transfer.rejections,
            updated_at=self.clock(),
        )
        await tx.update_transfer(updated)
        return updated

    async def _release(self, tx: Transaction, transfer_id: str) -> None:
        """Return a transfer's reserved blocks to their accounts, merged with adjacent free blocks."""
        for stored in await tx.blocks_of_transfer(transfer_id, BlockStatus.RESERVED):
            neighbours = [
                n
                for n in await tx.overlapping_blocks(
                    stored.block.space, max(stored.block.start - 1, 0), stored.block.end + 1, (BlockStatus.HELD,)
                )
                if n.account_id == stored.account_id and n.block.same_attributes(stored.block)
            ]
            await tx.set_block_status(stored.block_id, BlockStatus.SUPERSEDED)
            for n in neighbours:
                await tx.set_block_status(n.block_id, BlockStatus.SUPERSEDED)
            for block in merge([stored.block, *(n.block for n in neighbours)]):
                await tx.insert_block(
                    block, account_id=stored.account_id, status=BlockStatus.HELD, parent_id=stored.block_id
                )

    # partner statements

    async def on_statement(
        self, tx: Transaction, partner: str, header: Header, statement: partner_pb2.Statement
    ) -> None:
        """Apply a verified, in-order statement from ``partner`` (see `gateway.exchange.StatementHandler`)."""
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
            log.info(
                "status of %s at %s: %s", statement.status_report.transfer_id, partner, statement.status_report.state
            )
        else:
            raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, f"unknown statement body {kind!r}", field="body")

    async def _transfer_with(self, tx: Transaction, partner: str, transfer_id: str, role: TransferRole) -> Transfer:
        transfer = await tx.get_transfer(transfer_id)
        if transfer is None or transfer.role is not role or transfer.partner != partner:
            raise GatewayError(
                ResponseCode.UNKNOWN_TRANSFER, f"no {role.value} transfer {transfer_id!r} with {partner} is known here"
            )
        return transfer

    async def _on_proposal(self, tx: Transaction, partner: str, proposal: partner_pb2.Proposal) -> None:
        """Acquiring side: check the proposal, decide by policy, and answer with a Decision."""
        if await tx.get_transfer(proposal.transfer_id) is not None:
            raise GatewayError(
                ResponseCode.INVALID_STATE,
                f"transfer {proposal.transfer_id!r} is already known here",
                field="transfer_id",
            )
        try:
            terms = wire.proposal_from_proto(proposal)
            if terms.transferring_party != partner:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT,
                    f"a proposal from {partner} names {terms.transferring_party} as the transferring Party",
                    field="proposal.source_account.party",
                )
        except GatewayError as exc:
            # Unreadable terms cannot be recorded as a transfer, but the initiating side must still hear
            # the answer, or its units would stay reserved: reject by transfer ID, and record nothing.
            if not proposal.transfer_id:
                raise
            rejection = Rejection(exc.code, f"{exc.message} ({exc.field})" if exc.field else exc.message, exc.blocks)
            decision = partner_pb2.Decision(
                transfer_id=proposal.transfer_id, accepted=False, rejections=[wire.rejection_to_proto(rejection)]
            )
            await self._exchange.enqueue(tx, partner, decision=decision)
            return
        rejections: list[Rejection]
        try:
            validate_terms(terms)
        except GatewayError as exc:
            rejections = [Rejection(exc.code, exc.message, exc.blocks)]
        else:
            known: list[UnitBlock] = []
            for block in terms.blocks:
                known.extend(s.block for s in await tx.overlapping_blocks(block.space, block.start, block.end))
            rejections = check_acquisition(
                terms,
                self_party=self.party,
                account=await tx.get_account(terms.acquiring_account),
                known_overlapping=known,
            )
        verdict = Verdict.REJECT if rejections else self.policy.decide(partner, terms)
        if verdict is Verdict.REJECT and not rejections:
            rejections = [
                Rejection(ResponseCode.ACCOUNT_NOT_ELIGIBLE, "refused by the acquiring side's decision policy")
            ]
        now = self.clock()
        transfer = Transfer(
            transfer_id=proposal.transfer_id,
            role=TransferRole.ACQUIRING,
            state=TransferState.CHECKED,
            terms=terms,
            rejections=(),
            created_at=now,
            updated_at=now,
        )
        await tx.insert_transfer(transfer)
        if verdict is Verdict.REJECT:
            await self._set_state(tx, transfer, TransferState.REJECTED, rejections)
            await self._decide(tx, transfer, accepted=False, rejections=rejections)
            return
        # Accepted or held: the units are pending here, so that no overlapping proposal can be accepted too.
        # They are stored as they will be credited: first transferred, once this transfer completes.
        for block in terms.blocks:
            await tx.insert_block(
                replace(block, first_transferred=True),
                account_id=terms.acquiring_account,
                status=BlockStatus.PENDING,
                transfer_id=transfer.transfer_id,
            )
        if verdict is Verdict.ACCEPT:
            await self._set_state(tx, transfer, TransferState.ACCEPTED)
            await self._decide(tx, transfer, accepted=True, rejections=())

    async def _decide(
        self, tx: Transaction, transfer: Transfer, *, accepted: bool, rejections: Sequence[Rejection]
    ) -> None:
        decision = partner_pb2.Decision(
            transfer_id=transfer.transfer_id,
            accepted=accepted,
            rejections=[wire.rejection_to_proto(r) for r in rejections],
        )
        await self._exchange.enqueue(tx, transfer.partner, decision=decision)

    async def decide_held_transfer(self, idem: Idempotency, transfer_id: str, accept: bool, reason: str) -> Transfer:
        """An acquiring operator's decision on a proposal that the policy held for a person."""
        self._require_key(idem)
        exchange = self._exchange
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is not None:
                found = await tx.get_transfer(previous)
                assert found is not None
                return found
            transfer = await tx.get_transfer(transfer_id)
            if transfer is None or transfer.role is not TransferRole.ACQUIRING:
                raise GatewayError(
                    ResponseCode.UNKNOWN_TRANSFER,
                    f"no incoming transfer {transfer_id!r} is known here",
                    field="transfer_id",
                )
            if accept:
                transfer = await self._set_state(tx, transfer, TransferState.ACCEPTED)
                await self._decide(tx, transfer, accepted=True, rejections=())
            else:
                rejection = Rejection(ResponseCode.ACCOUNT_NOT_ELIGIBLE, reason or "rejected by the acquiring operator")
                transfer = await self._set_state(tx, transfer, TransferState.REJECTED, [rejection])
                await self._drop_pending(tx, transfer_id)
                await self._decide(tx, transfer, accepted=False, rejections=[rejection])
            await tx.put_idempotent(
                idem.caller, idem.method, idem.key, IdempotentResult(idem.request_hash, transfer_id.encode())
            )
        exchange.on_enqueued()
        return transfer

    async def _on_decision(self, tx: Transaction, partner: str, decision: partner_pb2.Decision) -> None:
        """Initiating side: on acceptance debit and complete; on rejection release the reserved units."""
        transfer = await self._transfer_with(tx, partner, decision.transfer_id, TransferRole.INITIATING)
        if transfer.state is not TransferState.CHECKED:
            raise GatewayError(
                ResponseCode.INVALID_STATE,
                f"transfer {transfer.transfer_id!r} is {transfer.state.name}; a decision is no longer expected",
            )
        if not decision.accepted:
            rejections = [
                wire.rejection_from_proto(r, f"decision.rejections[{i}]") for i, r in enumerate(decision.rejections)
            ]
            await self._set_state(tx, transfer, TransferState.REJECTED, rejections)
            await self._release(tx, transfer.transfer_id)
            return
        transfer = await self._set_state(tx, transfer, TransferState.ACCEPTED)
        for stored in await tx.blocks_of_transfer(transfer.transfer_id, BlockStatus.RESERVED):
            await tx.set_block_status(stored.block_id, BlockStatus.TRANSFERRED)
        now = self.clock()
        await tx.append_ledger(
            completion_entries(
                transfer.terms,
                transfer_id=transfer.transfer_id,
                role_initiating=True,
                action_date=now,
            )
        )
        transfer = await self._set_state(tx, transfer, TransferState.COMPLETED)
        await self._exchange.enqueue(
            tx,
            partner,
            completion=partner_pb2.Completion(transfer_id=transfer.transfer_id, completed_at=wire.timestamp(now)),
        )

    async def _on_completion(self, tx: Transaction, partner: str, completion: partner_pb2.Completion) -> None:
        """Acquiring side: the initiating side has debited; credit the pending units and record the acquisition."""
        transfer = await self._transfer_with(tx, partner, completion.transfer_id, TransferRole.ACQUIRING)
        if transfer.state is not TransferState.ACCEPTED:
            raise GatewayError(
                ResponseCode.INVALID_STATE, f"transfer {transfer.transfer_id!r} is {transfer.state.name}, not ACCEPTED"
            )
        for stored in await tx.blocks_of_transfer(transfer.transfer_id, BlockStatus.PENDING):
            await tx.set_block_status(stored.block_id, BlockStatus.HELD)
        entries = completion_entries(
            transfer.terms, transfer_id=transfer.transfer_id, role_initiating=False, action_date=self.clock()
        )
        await tx.append_ledger(entries)
        await self._set_state(tx, transfer, TransferState.COMPLETED)

    async def _drop_pending(self, tx: Transaction, transfer_id: str) -> None:
        for stored in await tx.blocks_of_transfer(transfer_id, BlockStatus.PENDING):
            await tx.set_block_status(stored.block_id, BlockStatus.DROPPED)

    async def _on_cancel(self, tx: Transaction, partner: str, cancel: partner_pb2.Cancel) -> None:
        """Acquiring side: the initiating side cancelled; drop the pending acquisition."""
        transfer = await self._transfer_with(tx, partner, cancel.transfer_id, TransferRole.ACQUIRING)
        ended = TransferState.TERMINATED if cancel.terminated else TransferState.CANCELLED
        await self._set_state(tx, transfer, ended)
        await self._drop_pending(tx, transfer.transfer_id)

    async def _on_status_query(self, tx: Transaction, partner: str, query: partner_pb2.StatusQuery) -> None:
        """Either side: answer a partner's question about a transfer's state."""
        transfer = await tx.get_transfer(query.transfer_id)
        known = transfer is not None and transfer.partner == partner
        report = partner_pb2.StatusReport(
            transfer_id=query.transfer_id,
            state=int(transfer.state) if transfer is not None and known else 0,  # type: ignore[arg-type]
            known=known,
        )
        await self._exchange.enqueue(tx, partner, status_report=report)

    # deadlines

    async def expire_overdue(self) -> list[Transfer]:
        """End every transfer waiting past its deadline; return them in their new state.

        Each is ended in its own transaction with the message that tells the partner: a terminated
        outgoing transfer releases its units and sends a Cancel marked terminated; a held incoming
        proposal is rejected with DECISION_DEADLINE_PASSED and its pending units dropped.
        """
        async with self.store.read() as tx:
            waiting = [t for t in await tx.list_transfers() if overdue(t, self.clock(), self.deadlines)]
        ended = []
        for candidate in waiting:
            async with self.store.transaction() as tx:
                transfer = await tx.get_transfer(candidate.transfer_id)
                target = overdue(transfer, self.clock(), self.deadlines) if transfer else None
                if transfer is None or target is None:
                    continue
                if target is TransferState.TERMINATED:
                    transfer = await self._set_state(tx, transfer, target)
                    await self._release(tx, transfer.transfer_id)
                    reason = f"no decision within {self.deadlines.decision}"
                    cancel = partner_pb2.Cancel(transfer_id=transfer.transfer_id, reason=reason, terminated=True)
                    await self._exchange.enqueue(tx, transfer.partner, cancel=cancel)
                else:
                    rejection = Rejection(
                        ResponseCode.DECISION_DEADLINE_PASSED,
                        f"held for an operator's decision longer than {self.deadlines.hold}",
                    )
                    transfer = await self._set_state(tx, transfer, target, [rejection])
                    await self._drop_pending(tx, transfer.transfer_id)
                    await self._decide(tx, transfer, accepted=False, rejections=[rejection])
            log.warning(
                "%s transfer %s passed its deadline: %s", transfer.role.value, transfer.transfer_id, target.name
            )
            ended.append(transfer)
        if ended:
            self._exchange.on_enqueued()
        return ended

    # reads

    async def get_transfer(self, transfer_id: str) -> Transfer:
        """A transfer by ID."""
        async with self.store.read() as tx:
            transfer = await tx.get_transfer(transfer_id)
        if transfer is None:
            raise GatewayError(
                ResponseCode.UNKNOWN_TRANSFER, f"transfer {transfer_id!r} is not known here", field="transfer_id"
            )
        return transfer

    async def list_transfers(self) -> list[Transfer]:
        """Every transfer this gateway knows, oldest first."""
        async with self.store.read() as tx:
            return await tx.list_transfers()

    async def list_ledger(self) -> list[LedgerEntry]:
        """The corresponding-adjustment ledger, in the order entries were recorded."""
        async with self.store.read() as tx:
            return await tx.list_ledger()

    async def list_holdings(self, account_id: str = "") -> list[StoredBlock]:
        """Current blocks (held, reserved, pending), optionally of one account."""
        async with self.store.read() as tx:
            return await tx.list_blocks(account_id)
