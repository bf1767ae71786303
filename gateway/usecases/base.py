"""What every use case shares: the gateway's settings, idempotency, state changes and block bookkeeping."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from carbon_gateway.v1 import partner_pb2
from gateway import wire
from gateway.domain import text
from gateway.domain.adjustments import AdjustmentSettings
from gateway.domain.blocks import SerialSpace, UnitBlock, merge, ranges_by_space
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.ledger import authorizing_parties, check_in_force, version_in_force
from gateway.domain.nomenclature import DEFAULT_NOMENCLATURE, Nomenclature
from gateway.domain.protocol import Deadlines, DecisionPolicy, Rejection
from gateway.domain.records import Account, Authorization, TransferTerms
from gateway.domain.transfer import Transfer, TransferRole, TransferState, advance
from gateway.exchange import Exchange, new_uuid
from gateway.store.base import BlockStatus, IdempotentResult, OutboxKind, Store, StoredBlock, Transaction

log = logging.getLogger("gateway.service")

DEFAULT_STATUS_QUERY_AFTER = dt.timedelta(minutes=15)
"""How long a transfer waits for the partner's next message before this gateway asks for its status."""


@dataclass(frozen=True, slots=True)
class Idempotency:
    """An operator write's idempotency key, scoped to the caller and the method, and its request's hash."""

    caller: str
    method: str
    key: str
    request_hash: str


@dataclass(frozen=True, slots=True)
class LedgerOptions:
    """The ledger's settings: how adjustments are computed, and what the AEF report names that the ledger
    does not (the configuration's ``[ledger]`` table)."""

    adjustments: AdjustmentSettings | None = None
    """The NDC period, the adjustment method chosen once for it, and the averaging divisor. Unset, the summary
    lists the ledger's groups but no structured-summary rows."""
    party_registry: str = ""
    """The Party ITMO registry ID (alpha-3 and 2 digits, e.g. ``CHN01``), needed by the AEF report."""
    underlying_registry_codes: tuple[tuple[str, str], ...] = ()
    """AEF underlying unit registry IDs per issuing registry code, e.g. ``(("CN-CCER", "CCER"),)``."""
    gwp_values: str = ""
    """The AEF "Applicable GWP value(s)" of the Party's reports, e.g. ``AR5``; needed by the AEF report."""


class GatewayBase:
    """One jurisdiction's gateway: its store, its exchange with partners, its policy and its settings."""

    def __init__(
        self,
        *,
        party: str,
        store: Store,
        policy: DecisionPolicy,
        clock: Callable[[], dt.datetime],
        deadlines: Deadlines | None = None,
        nomenclature: Nomenclature = DEFAULT_NOMENCLATURE,
        status_query_after: dt.timedelta = DEFAULT_STATUS_QUERY_AFTER,
        new_id: Callable[[], str] = new_uuid,
        ledger_options: LedgerOptions | None = None,
    ) -> None:
        self.party = party
        self.ledger_options = ledger_options or LedgerOptions()
        self.store = store
        self.policy = policy
        self.deadlines = deadlines or Deadlines()
        self.clock = clock
        self.nomenclature = nomenclature
        self.status_query_after = status_query_after
        self.new_id = new_id
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
        self._require_key(idem)
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

    @staticmethod
    async def _remember(tx: Transaction, idem: Idempotency, resource_id: str) -> None:
        await tx.put_idempotent(
            idem.caller, idem.method, idem.key, IdempotentResult(idem.request_hash, resource_id.encode())
        )

    # state changes

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

    @staticmethod
    async def _found(tx: Transaction, transfer_id: str) -> Transfer:
        found = await tx.get_transfer(transfer_id)
        assert found is not None
        return found

    @staticmethod
    async def _transfer_with(
        tx: Transaction, partner: str, transfer_id: str, role: TransferRole, field: str
    ) -> Transfer:
        """The transfer ``partner`` names in ``field``, on this side's ``role``; refuse an ID that is not an
        identifier, a transfer unknown, or another partner's."""
        text.check_identifier(transfer_id, field, what="transfer ID")
        transfer = await tx.get_transfer(transfer_id)
        if transfer is None or transfer.role is not role or transfer.partner != partner:
            raise GatewayError(
                ResponseCode.UNKNOWN_TRANSFER,
                f"no {role.value} transfer {transfer_id[:128]!r} with {partner} is known here",
            )
        return transfer

    def _is_own_space(self, block: UnitBlock) -> bool:
        """True for a block of a serial space this gateway issues (its Party keeps the registry of record)."""
        return self.nomenclature.issuer(block.space) == self.party

    # authorizations

    async def _check_ties_own(
        self, tx: Transaction, authorization_id: str, field: str, blocks: Sequence[UnitBlock]
    ) -> None:
        """Refuse to tie units held here (``blocks``, untied) to a copy of another Party's authorization: a Party
        ties its units to its own authorizations alone, and counts them against those."""
        owner = authorizing_parties(await tx.authorization_versions(authorization_id), self.party)
        party = owner.get(authorization_id, self.party)
        if party != self.party:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"authorization {authorization_id!r} is {party}'s (a copy held here): {blocks[0].describe()} is not"
                f" tied to an authorization, and units are tied only to {self.party}'s own",
                field=field,
                blocks=list(blocks[:5]),
            )

    async def _tied_here(self, tx: Transaction, authorization_id: str) -> bool:
        """Whether units of this Party's are tied to the authorization: counted against it, or in ledger entries
        naming this Party as their first transferring Party under it."""
        return bool(await tx.first_transfer_quantity_used(authorization_id)) or any(
            t.authorization_id == authorization_id and t.first_transferring_party == self.party
            for t in await tx.ledger_totals()
        )

    async def _registered_party(self, tx: Transaction, authorization_id: str, parties: dict[str, str]) -> str:
        """The Party whose authorization ``authorization_id`` is registered here as: the one its versions name,
        else this Party once units of its own are tied to it; "" for one not registered, or registered without
        its Party and tied to nothing here (a copy registered by an earlier release, perhaps). ``parties`` keeps
        the answers of one call."""
        if authorization_id not in parties:
            versions = await tx.authorization_versions(authorization_id)
            parties[authorization_id] = await self._party_of_versions(tx, authorization_id, versions)
        return parties[authorization_id]

    async def _party_of_versions(
        self, tx: Transaction, authorization_id: str, versions: Sequence[Authorization]
    ) -> str:
        """`_registered_party` from the authorization's ``versions``, already read."""
        party = next((v.party for v in reversed(versions) if v.party), "")
        if not party and versions and await self._tied_here(tx, authorization_id):
            party = self.party
        return party

    @staticmethod
    async def _authorization_on(tx: Transaction, authorization_id: str, on: dt.date) -> Authorization | None:
        """The version of an authorization in force on ``on``; before its first version, that first version
        (so that the checks say it is dated later), and None for an unknown authorization."""
        versions = await tx.authorization_versions(authorization_id)
        return version_in_force(versions, on) or (versions[0] if versions else None)

    @staticmethod
    async def _authorization_in_force(tx: Transaction, authorization_id: str, on: dt.date, field: str) -> Authorization:
        """The version of an authorization in force on ``on``; refused when there is none, or it is revoked or
        expired (for actions that tie or first transfer units under it)."""
        found = version_in_force(await tx.authorization_versions(authorization_id), on)
        return check_in_force(found, authorization_id, on, field)

    @staticmethod
    async def _holding_account(tx: Transaction, account_id: str, field: str, why: str) -> Account:
        """The holding account ``account_id``; refused when unknown or not a holding account (``why`` says what
        needs a holding account)."""
        account = await tx.get_account(account_id)
        if account is None:
            raise GatewayError(ResponseCode.UNKNOWN_ACCOUNT, f"account {account_id!r} is not known here", field=field)
        if not account.can_hold:
            raise GatewayError(
                ResponseCode.ACCOUNT_NOT_ELIGIBLE,
                f"account {account_id!r} is a {account.account_type.value} account; {why}",
                field=field,
            )
        return account

    # blocks

    async def _release(self, tx: Transaction, transfer_id: str) -> None:
        """Return a transfer's reserved blocks to their accounts, merged with adjacent free blocks."""
        for stored in await tx.blocks_of_transfer(transfer_id, BlockStatus.RESERVED):
            block = stored.block
            neighbours = [
                n
                for n in await tx.guarded_blocks(block.space, max(block.start - 1, 0), block.end + 1)
                if n.status is BlockStatus.HELD
                and n.account_id == stored.account_id
                and n.block.same_attributes(block)
                and (n.block.end + 1 == block.start or block.end + 1 == n.block.start)
            ]
            await tx.set_block_status(stored.block_id, BlockStatus.SUPERSEDED)
            for n in neighbours:
                await tx.set_block_status(n.block_id, BlockStatus.SUPERSEDED)
            for merged in merge([block, *(n.block for n in neighbours)]):
                await tx.insert_block(
                    merged, account_id=stored.account_id, status=BlockStatus.HELD, parent_id=stored.block_id
                )

    @staticmethod
    async def _drop_pending(tx: Transaction, transfer_id: str) -> None:
        await tx.set_transfer_blocks_status(transfer_id, BlockStatus.PENDING, BlockStatus.DROPPED)

    async def _credit(self, tx: Transaction, transfer: Transfer) -> list[StoredBlock]:
        """Acquiring side: credit the pending units; units of this gateway's own issue are back home.

        Returns the blocks credited. Their status changes in one statement, not one per block: a transfer may
        carry a thousand blocks.
        """
        credited = await tx.move_transfer_blocks(transfer.transfer_id, BlockStatus.PENDING, BlockStatus.HELD)
        for space, home in self._own_ranges(credited).items():
            await tx.remove_abroad(space, home)
        return credited

    async def _debit(self, tx: Transaction, transfer: Transfer) -> None:
        """Initiating side: the reserved units leave; this side owes the partner the news until it is told.

        Their status changes in one statement, not one per block, as in `_credit`.
        """
        debited = await tx.move_transfer_blocks(transfer.transfer_id, BlockStatus.RESERVED, BlockStatus.DEBITED)
        for space, leaving in self._own_ranges(debited).items():
            await tx.add_abroad(space, leaving)

    def _own_ranges(self, blocks: Sequence[StoredBlock]) -> dict[SerialSpace, list[tuple[int, int]]]:
        """The serial ranges of those of ``blocks`` this gateway issued, by serial space."""
        return ranges_by_space(s.block for s in blocks if self._is_own_space(s.block))

    # messages to the partner

    async def _send_decision(
        self, tx: Transaction, transfer: Transfer, *, accepted: bool, rejections: Sequence[Rejection]
    ) -> None:
        decision = partner_pb2.Decision(
            transfer_id=transfer.transfer_id,
            accepted=accepted,
            rejections=[wire.rejection_to_proto(r) for r in rejections],
        )
        await self._exchange.enqueue(tx, transfer.partner, decision=decision)

    @staticmethod
    async def _frozen_among(tx: Transaction, blocks: Sequence[UnitBlock]) -> tuple[UnitBlock, str] | None:
        """The first of ``blocks`` a reconciliation discrepancy froze, with the latest run that froze it."""
        frozen = await tx.frozen_spaces()
        for block in blocks:
            runs = await tx.frozen_by(block.space, block.start, block.end) if block.space in frozen else []
            if runs:
                return block, runs[0]
        return None

    async def _send_final(self, tx: Transaction, transfer: Transfer, reason: str) -> None:
        """Initiating side: tell the partner this transfer's final state (a Completion or a Cancel), unless a
        message saying so is still waiting in the outbox."""
        kinds = (OutboxKind.COMPLETION, OutboxKind.CANCEL)
        if await tx.outbox_has_for_transfer(transfer.transfer_id, kinds):
            return
        if transfer.state is TransferState.COMPLETED:
            completion = partner_pb2.Completion(
                transfer_id=transfer.transfer_id, completed_at=wire.timestamp(transfer.updated_at)
            )
            await self._exchange.enqueue(tx, transfer.partner, completion=completion)
        elif transfer.state in (TransferState.CANCELLED, TransferState.TERMINATED):
            # The recorded end, sent again whole when a crossing message or a status query asks for it again.
            why = transfer.rejections[0] if transfer.rejections else Rejection(ResponseCode.TRANSFER_ENDED, reason)
            cancel = partner_pb2.Cancel(
                transfer_id=transfer.transfer_id,
                reason=why.message,
                terminated=transfer.state is TransferState.TERMINATED,
                code=why.code,  # type: ignore[arg-type]
            )
            await self._exchange.enqueue(tx, transfer.partner, cancel=cancel)

    @staticmethod
    def _terms_summary(terms: TransferTerms) -> str:
        return f"{len(terms.blocks)} block(s), {terms.quantity} units"
