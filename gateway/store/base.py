"""The storage interface. Every state change and the message it causes are written in one transaction."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.records import Account, Authorization, LedgerEntry
from gateway.domain.statements import ChannelState
from gateway.domain.transfer import Transfer


class BlockStatus(enum.StrEnum):
    """Where a stored block stands. Only ``held``, ``reserved`` and ``pending`` blocks are current."""

    HELD = "held"
    RESERVED = "reserved"  # taken out by an outgoing transfer, not yet debited
    PENDING = "pending"  # named by an accepted incoming transfer, not yet credited
    TRANSFERRED = "transferred"  # debited: left this gateway by a completed transfer
    SUPERSEDED = "superseded"  # split or merged into other blocks
    DROPPED = "dropped"  # a pending acquisition that was cancelled or terminated


CURRENT_STATUSES = (BlockStatus.HELD, BlockStatus.RESERVED, BlockStatus.PENDING)


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """A block as the gateway keeps it."""

    block_id: int
    account_id: str
    status: BlockStatus
    transfer_id: str
    parent_id: int | None
    block: UnitBlock


class OutboxState(enum.StrEnum):
    """Delivery state of an outbox message."""

    PENDING = "pending"
    DELIVERED = "delivered"


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A signed message waiting for delivery to a partner."""

    outbox_id: int
    receiver: str
    sequence: int
    message_id: str
    envelope: bytes
    attempts: int
    next_attempt_at: dt.datetime


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message kept verbatim, with the receipt that answered it."""

    direction: str  # "in" or "out"
    peer: str
    message_id: str
    envelope: bytes
    receipt: bytes
    recorded_at: dt.datetime


@dataclass(frozen=True, slots=True)
class IdempotentResult:
    """The first result of an operator write, kept for retries with the same key."""

    request_hash: str
    response: bytes


class StoreConflict(Exception):
    """A write conflicts with a row already stored (a bug or a race the caller must handle)."""


class Transaction(Protocol):
    """One database transaction. Every method runs inside it; nothing is visible until commit."""

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A nested scope whose writes are rolled back, alone, if it exits with an exception."""
        ...

    # accounts and authorizations
    async def get_account(self, account_id: str) -> Account | None: ...
    async def insert_account(self, account: Account) -> None: ...
    async def get_authorization(self, authorization_id: str) -> Authorization | None: ...
    async def insert_authorization(self, authorization: Authorization) -> None: ...
    async def authorized_quantity_used(self, authorization_id: str) -> int: ...

    # blocks
    async def insert_block(
        self,
        block: UnitBlock,
        *,
        account_id: str,
        status: BlockStatus,
        transfer_id: str = "",
        parent_id: int | None = None,
    ) -> int: ...
    async def get_block(self, block_id: int) -> StoredBlock | None: ...
    async def set_block_status(self, block_id: int, status: BlockStatus, *, transfer_id: str | None = None) -> None: ...
    async def overlapping_blocks(
        self, space: SerialSpace, start: int, end: int, statuses: Sequence[BlockStatus] = CURRENT_STATUSES
    ) -> list[StoredBlock]: ...
    async def blocks_of_transfer(self, transfer_id: str, status: BlockStatus) -> list[StoredBlock]: ...
    async def list_blocks(
        self, account_id: str = "", statuses: Sequence[BlockStatus] = CURRENT_STATUSES
    ) -> list[StoredBlock]: ...

    # transfers and the ledger
    async def insert_transfer(self, transfer: Transfer) -> None: ...
    async def update_transfer(self, transfer: Transfer) -> None: ...
    async def get_transfer(self, transfer_id: str) -> Transfer | None: ...
    async def list_transfers(self) -> list[Transfer]: ...
    async def append_ledger(self, entries: Sequence[LedgerEntry]) -> list[int]: ...
    async def list_ledger(self) -> list[LedgerEntry]: ...

    # the partner exchange
    async def outgoing_channel(self, receiver: str) -> ChannelState: ...
    async def set_outgoing_channel(self, receiver: str, state: ChannelState) -> None: ...
    async def incoming_channel(self, sender: str) -> ChannelState: ...
    async def set_incoming_channel(self, sender: str, state: ChannelState) -> None: ...
    async def enqueue(
        self, *, receiver: str, sequence: int, message_id: str, envelope: bytes, now: dt.datetime
    ) -> int: ...
    async def due_messages(self, now: dt.datetime, limit: int) -> list[OutboxMessage]: ...
    async def pending_outbox(self) -> list[OutboxMessage]: ...
    async def outbox_message(self, receiver: str, sequence: int) -> OutboxMessage | None: ...
    async def replace_outbox_envelope(
        self, outbox_id: int, receiver: str, message_id: str, envelope: bytes
    ) -> None: ...
    async def mark_delivered(self, outbox_id: int, receipt: bytes, now: dt.datetime) -> None: ...
    async def requeue_from(self, receiver: str, sequence: int, now: dt.datetime) -> int: ...
    async def reschedule(self, outbox_id: int, *, error: str, next_attempt_at: dt.datetime) -> None: ...
    async def record_message(self, message: StoredMessage) -> None: ...
    async def get_message(self, direction: str, peer: str, message_id: str) -> StoredMessage | None: ...
    async def list_messages(self) -> list[StoredMessage]: ...

    # trust documents and held statements
    async def put_trust_document(self, party: str, version: int, envelope: bytes, now: dt.datetime) -> None: ...
    async def latest_trust_document(self, party: str) -> tuple[int, bytes] | None: ...
    async def trust_document(self, party: str, version: int) -> bytes | None: ...
    async def hold_statement(self, sender: str, sequence: int, envelope: bytes, now: dt.datetime) -> None: ...
    async def held_statement(self, sender: str, sequence: int) -> bytes | None: ...
    async def release_held(self, sender: str, up_to: int) -> None: ...
    async def count_held(self) -> int: ...

    # operator idempotency
    async def get_idempotent(self, caller: str, method: str, key: str) -> IdempotentResult | None: ...
    async def put_idempotent(self, caller: str, method: str, key: str, result: IdempotentResult) -> None: ...


class Store(Protocol):
    """A gateway's database."""

    def transaction(self, *, durable: bool = True) -> AbstractAsyncContextManager[Transaction]:
        """Begin a write transaction; it commits when the block exits normally and rolls back otherwise.

        ``durable=False`` may skip waiting for the disk: only for writes whose loss in a crash is harmless.
        """
        ...

    def read(self) -> AbstractAsyncContextManager[Transaction]:
        """Begin a transaction for reads only (a consistent snapshot)."""
        ...

    async def close(self) -> None:
        """Close the database."""
        ...
