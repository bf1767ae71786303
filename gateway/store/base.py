"""The storage interface. Every state change and the message it causes are written in one transaction."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import hashlib
import logging
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from gateway.domain import ranges
from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.ledger import FirstTransferRange, LockedPeriod
from gateway.domain.ranges import Range
from gateway.domain.reconciliation import (
    GroupKey,
    NodeRef,
    ReconciledBlock,
    Status,
    Totals,
    books_first_transfer_abroad,
    reconciled_block,
)
from gateway.domain.records import Account, Authorization, LedgerEntry
from gateway.domain.statements import ChannelState
from gateway.domain.summary import LedgerTotal
from gateway.domain.transfer import Transfer, TransferRole, TransferState

_log = logging.getLogger(__name__)


class BlockStatus(enum.StrEnum):
    """Where a stored block stands. Only ``held``, ``reserved`` and ``pending`` blocks are current holdings."""

    HELD = "held"
    RESERVED = "reserved"  # taken out by an outgoing transfer, not yet debited
    PENDING = "pending"  # named by an accepted incoming transfer, not yet credited
    DEBITED = "debited"  # left by a completed transfer; the acquiring side has not yet been told
    TRANSFERRED = "transferred"  # left by a completed transfer, and the acquiring side has been told
    SUPERSEDED = "superseded"  # split or merged into other blocks
    DROPPED = "dropped"  # a pending acquisition that was cancelled, terminated or rejected
    USED = "used"  # used towards an NDC or for other international mitigation purposes: never moves again
    CANCELLED = "cancelled"  # cancelled (voluntarily or not): never moves again


CURRENT_STATUSES = (BlockStatus.HELD, BlockStatus.RESERVED, BlockStatus.PENDING)
"""The blocks a gateway lists as its holdings."""

GUARDED_STATUSES = (
    BlockStatus.HELD,
    BlockStatus.RESERVED,
    BlockStatus.PENDING,
    BlockStatus.DEBITED,
    BlockStatus.USED,
    BlockStatus.CANCELLED,
)
"""The blocks no incoming or registered block may overlap: what this gateway holds, has reserved, has pending,
still owes a partner the news of (DESIGN.md section 4), or has used or cancelled for good. Within one gateway
these never overlap each other."""


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """A block as the gateway keeps it."""

    block_id: int
    account_id: str
    status: BlockStatus
    transfer_id: str
    parent_id: int | None
    block: UnitBlock


@dataclass(frozen=True, slots=True)
class TransferHead:
    """What a transfer is, without its blocks: enough to decide about thousands of transfers at once."""

    transfer_id: str
    role: TransferRole
    state: TransferState
    partner: str
    """The Party on the other side (`Transfer.partner`)."""
    purpose: str
    """The transfer's purpose as its terms spell it."""


SerialRange = tuple[SerialSpace, int, int]
"""A serial space and a range of serials in it, first and last."""


BlockPosition = tuple[str, str, str, int, int]
"""Where a block stands in `Transaction.list_blocks`' order: its serial space's three codes, its first serial and
its ID (`gateway.store.codec.block_position`)."""


@dataclass(frozen=True, slots=True)
class NewBlock:
    """A block to store (`Transaction.insert_blocks`), with what `Transaction.insert_block` takes."""

    block: UnitBlock
    account_id: str
    status: BlockStatus
    transfer_id: str = ""
    parent_id: int | None = None


class OutboxState(enum.StrEnum):
    """Delivery state of an outbox message."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"  # refused by the partner for a reason a retry cannot cure; waits for an operator
    ABANDONED = "abandoned"  # an operator gave up on a dead letter


class OutboxKind(enum.StrEnum):
    """What an outbox message carries: a statement body, or a trust document pushed to a partner."""

    PROPOSAL = "proposal"
    DECISION = "decision"
    COMPLETION = "completion"
    CANCEL = "cancel"
    STATUS_QUERY = "status_query"
    STATUS_REPORT = "status_report"
    RECONCILIATION_REQUEST = "reconciliation_request"
    RECONCILIATION_REPLY = "reconciliation_reply"
    RECONCILIATION_REPORT = "reconciliation_report"
    TRUST = "trust"
    LEGACY = "legacy"  # a statement signed in full when it was queued, by a version before signing at send


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message for a partner. A statement's header (sequence, previous hash, validity window) and signature
    are made when it is sent, so ``body`` is the serialized `Statement` with only its message ID, sender and
    receiver set; a trust push's body is the signed trust document in JSON form."""

    outbox_id: int
    receiver: str
    message_id: str
    kind: OutboxKind
    transfer_id: str
    body: bytes
    state: OutboxState
    sequence: int  # the channel sequence number it was last sent with; 0 before it is first sent
    attempts: int
    next_attempt_at: dt.datetime
    last_code: int
    last_error: str
    created_at: dt.datetime
    settled_at: dt.datetime | None
    payload_digest: bytes  # SHA-256 of the payload the partner took in; empty until then
    sealed: bytes = b""  # the envelope of the last attempt, reused while it is still valid


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A statement received and taken in, with the receipt that answered it (for step 6: a message ID seen
    again gets this receipt back, unchanged)."""

    direction: str  # "in"
    peer: str
    message_id: str
    envelope: bytes
    receipt: bytes
    recorded_at: dt.datetime


class LogKind(enum.StrEnum):
    """What a message-log entry holds."""

    STATEMENT = "statement"
    RECEIPT = "receipt"
    TRUST = "trust"


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One envelope in the append-only message log, byte for byte as it travelled."""

    index: int
    direction: str  # "in" or "out"
    peer: str
    message_id: str  # the statement's ID; for a receipt, the statement it answers; "" when unknown
    kind: LogKind
    form: str  # "protobuf" or "json"
    envelope: bytes
    recorded_at: dt.datetime


@dataclass(frozen=True, slots=True)
class IdempotentResult:
    """The first result of an operator write, kept for retries with the same key."""

    request_hash: str
    response: bytes


class RunRole(enum.StrEnum):
    """Which side of a reconciliation run this gateway is on."""

    REQUESTER = "requester"
    RESPONDER = "responder"


@dataclass(frozen=True, slots=True)
class ReconciliationRun:
    """A reconciliation run with one partner, as this gateway keeps it."""

    run_id: str
    partner: str
    role: RunRole
    status: Status
    snapshot_at: dt.datetime
    started_at: dt.datetime
    updated_at: dt.datetime
    detail: str = ""
    progress: bytes = b""  # the requester's state between phases (opaque to the store)
    report: bytes = b""  # the signed report: the envelope of the statement that carried it
    resolved_reason: str = ""
    resolved_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class PartnerLogHead:
    """The last head of a partner's message log this gateway verified, and the size of this gateway's own
    head the partner last saw (the size its next consistency proof starts from)."""

    tree_size: int
    root_hash: bytes
    seen_at: dt.datetime
    partner_saw: int = 0


class ChangeKind(enum.StrEnum):
    """What a change-feed row records (migration 7's triggers write them)."""

    TRANSFER = "transfer"  # a transfer was created or changed: the row holds its new state
    LEDGER_ENTRY = "ledger_entry"  # a ledger entry was appended
    LEDGER_ENTRY_CHANGED = "ledger_entry_changed"  # a ledger entry was rewritten in place: its new content
    LEDGER_ENTRY_REMOVED = "ledger_entry_removed"  # a ledger entry was deleted: its last content


@dataclass(frozen=True, slots=True)
class Change:
    """One row of the change feed: what changed, as it stood right after the change."""

    position: int
    kind: ChangeKind
    recorded_at: dt.datetime  # the database's clock when the change was written
    digest: bytes  # `change_digest` of the stored row: tells this change from another at the same position
    transfer: Transfer | None = None  # for TRANSFER
    entry: LedgerEntry | None = None  # for the LEDGER_ENTRY kinds


def change_digest(position: int, kind: str, recorded_at: str, body: str) -> bytes:
    """SHA-256 of a change-feed row as stored (its columns as text, each on a line). A database restored from a
    backup hands out positions again; the changes it records there have other times and bodies, so other
    digests, and a watcher resuming with the digest it received is not silently led past what it missed."""
    return hashlib.sha256(f"{position}\n{kind}\n{recorded_at}\n{body}".encode()).digest()


@dataclass(frozen=True, slots=True)
class PrunedChanges:
    """How far the change feed was pruned (migration 11): the position of the last change removed, 0 if none,
    and that change's digest, so that a watcher that received it can still resume there."""

    through: int
    digest: bytes


class CommitSignal:
    """Wakes those waiting for changes after a write transaction commits in this process.

    A commit by another process sharing the database is not seen here: waiters also poll.
    """

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()

    def notify(self) -> None:
        """Wake every waiter (called after each commit of a write transaction)."""
        for waiter in self._waiters:
            waiter.set()

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Event]:
        """An event set after each later commit, for as long as the block runs; clear it before each read."""
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            yield waiter
        finally:
            self._waiters.discard(waiter)


class StoreConflict(Exception):
    """A write conflicts with a row already stored (a bug or a race the caller must handle)."""


class SchemaTooNew(Exception):
    """The database was migrated by a newer version of the gateway, whose rows this version would misread."""

    def __init__(self, where: str, newest: int, known: int) -> None:
        super().__init__(
            f"{where} was migrated by a newer version of the gateway (schema version {newest}; this version knows"
            f" versions up to {known}), and this version would misread what it wrote: run that version or a later"
            " one (every replica of one database runs the same version), or restore a backup taken before the"
            " upgrade"
        )


class NotAGatewayDatabase(Exception):
    """The database holds tables but no record of the gateway's migrations: another program's, which migrating
    would fill with the gateway's tables."""


def check_gateway_tables(where: str, tables: Collection[str]) -> None:
    """Refuse (`NotAGatewayDatabase`) a database whose ``tables`` (every table and view in it) include others
    but no ``schema_migrations``: every gateway's database has that table before it has any other."""
    others = sorted(t for t in tables if t != "schema_migrations")
    if not others or "schema_migrations" in tables:
        return
    shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
    raise NotAGatewayDatabase(
        f"{where} holds tables ({shown}) but no schema_migrations: it is not a gateway's database, and is left as"
        " it is; name this gateway's database, or a new (empty) one for it to create its tables in"
    )


def check_schema_known(where: str, applied: set[int], known: int) -> None:
    """Refuse (`SchemaTooNew`) a database with a migration applied that this version does not know."""
    if applied and max(applied) > known:
        raise SchemaTooNew(where, max(applied), known)


def check_abroad_added(present: Sequence[Range], added: Sequence[Range]) -> None:
    """Refuse (`StoreConflict`) ranges ``added`` to the abroad ranges ``present`` (those they overlap or touch)
    if a serial of them is abroad already or named twice: a unit is in one place."""
    clash = ranges.first_overlap([*present, *added])
    if clash is not None:
        start, end = clash[1] if clash[1] in added else clash[0]
        raise StoreConflict(f"[{start}, {end}] is already abroad in part")


def check_abroad_removed(present: Sequence[Range], removed: Sequence[Range]) -> None:
    """Refuse (`StoreConflict`) ranges ``removed`` from the abroad ranges ``present`` (those they overlap)
    unless every serial of them is abroad, and named once."""
    twice = ranges.first_overlap(removed)
    short = twice[1] if twice is not None else ranges.first_uncovered(present, removed)
    if short is not None:
        raise StoreConflict(f"[{short[0]}, {short[1]}] is not abroad in full")


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
    async def first_transfer_quantity_used(self, authorization_id: str) -> int:
        """The quantity tied to an authorization by this gateway: registered, used or cancelled under it, or
        transferred (or reserved for a transfer) under it for the first time."""
        ...

    async def authorization_versions(
        self, authorization_id: str, *, recorded_by: dt.datetime | None = None
    ) -> list[Authorization]:
        """Every version of an authorization, in the order they were recorded (which is date order); with
        ``recorded_by``, those recorded at that instant or before it (the versions that existed then)."""
        ...

    async def record_proposed_version(self, transfer_id: str, version: str) -> None:
        """Record the version of its authorization a transfer was proposed under (the initiating side, in the
        transaction that records the transfer): its completion books the units under that version."""
        ...

    async def proposed_version(self, transfer_id: str) -> str | None:
        """The version `record_proposed_version` recorded for a transfer; None for one proposed before versions
        were recorded."""
        ...

    async def insert_authorization_version(self, authorization: Authorization, now: dt.datetime) -> None:
        """Record an amendment or a revocation of an authorization already registered."""
        ...

    async def list_authorization_versions(self) -> list[Authorization]:
        """Every version of every authorization, in the order they were recorded."""
        ...

    async def page_authorization_versions(
        self, authorization_id: str, *, after: int, limit: int
    ) -> list[tuple[int, Authorization]]:
        """Up to ``limit`` versions of every authorization (or, with ``authorization_id``, of one) recorded after
        the one at position ``after`` (0: from the first), each with its position, in the order they were
        recorded. Positions only grow: a version recorded later is always further on."""
        ...

    async def add_authorization_tie(
        self, authorization_id: str, action_id: str, quantity: int, now: dt.datetime
    ) -> None:
        """Count units tied to an authorization outside a transfer (registered, used or cancelled under it)."""
        ...

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
    async def insert_blocks(self, blocks: Sequence[NewBlock]) -> None:
        """`insert_block` of each of ``blocks``, in order (their IDs increase), in one statement."""
        ...

    async def get_block(self, block_id: int) -> StoredBlock | None: ...
    async def set_block_status(self, block_id: int, status: BlockStatus, *, transfer_id: str | None = None) -> None: ...
    async def set_blocks_status(self, block_ids: Sequence[int], status: BlockStatus) -> None:
        """`set_block_status` of each of ``block_ids``, in one statement."""
        ...

    async def guarded_blocks(
        self, space: SerialSpace, start: int, end: int, *, limit: int | None = None
    ) -> list[StoredBlock]:
        """The guarded blocks (`GUARDED_STATUSES`) that share a serial with ``[start, end]``, in serial order
        (the first ``limit`` of them, when given)."""
        ...

    async def blocks_of_transfer(self, transfer_id: str, status: BlockStatus) -> list[StoredBlock]: ...
    async def ranges_of_transfers(
        self, transfer_ids: Collection[str], statuses: Collection[BlockStatus]
    ) -> dict[str, list[SerialRange]]:
        """The serial ranges of the blocks of each of ``transfer_ids`` in one of ``statuses``, by transfer ID
        (transfers with none left out), in no particular order: `blocks_of_transfer` for many transfers."""
        ...

    async def set_transfer_blocks_status(self, transfer_id: str, old: BlockStatus, new: BlockStatus) -> int: ...
    async def move_transfer_blocks(self, transfer_id: str, old: BlockStatus, new: BlockStatus) -> list[StoredBlock]:
        """Set the blocks of ``transfer_id`` in status ``old`` to ``new``; return them as they now stand, by block
        ID: one statement, where reading them first and then setting them took two passes over a thousand."""
        ...

    async def list_blocks(
        self,
        account_id: str = "",
        statuses: Sequence[BlockStatus] = CURRENT_STATUSES,
        *,
        after: BlockPosition | None = None,
        limit: int | None = None,
    ) -> list[StoredBlock]:
        """Blocks in ``statuses`` (of one account, if given) by serial space, serial and ID: those after ``after``
        (a block's `block_position`), ``limit`` at the most."""
        ...

    # provenance: every range this gateway registered or received, and those of its own issue now abroad
    async def guarded_blocks_each(
        self, space: SerialSpace, wanted: Sequence[tuple[int, int]], *, limit: int | None = None
    ) -> list[list[StoredBlock]]:
        """`guarded_blocks` of each range of ``wanted`` (all of ``space``), in order: the blocks of a transfer
        of a thousand are looked up at once, not one query each."""
        ...

    async def known_ranges(self, space: SerialSpace, start: int, end: int) -> list[tuple[int, int]]:
        """The ranges ever registered or received here that share a serial with ``[start, end]``."""
        ...

    async def known_ranges_each(
        self, space: SerialSpace, wanted: Sequence[tuple[int, int]]
    ) -> list[list[tuple[int, int]]]:
        """`known_ranges` of each range of ``wanted``, in order, at once."""
        ...

    async def add_known(self, space: SerialSpace, added: Sequence[tuple[int, int]]) -> None:
        """Record the ranges ``added`` as known, merged with the known ranges they overlap or touch."""
        ...

    async def abroad_ranges(self, space: SerialSpace, start: int, end: int) -> list[tuple[int, int]]:
        """The ranges of this Party's own issue now abroad that share a serial with ``[start, end]``."""
        ...

    async def abroad_ranges_each(
        self, space: SerialSpace, wanted: Sequence[tuple[int, int]]
    ) -> list[list[tuple[int, int]]]:
        """`abroad_ranges` of each range of ``wanted``, in order, at once."""
        ...

    async def add_abroad(self, space: SerialSpace, added: Sequence[tuple[int, int]]) -> None:
        """Record the ranges ``added`` as abroad; `StoreConflict` (and nothing recorded) if a serial of them is
        abroad already or named twice."""
        ...

    async def remove_abroad(self, space: SerialSpace, removed: Sequence[tuple[int, int]]) -> None:
        """The ranges ``removed`` are home again; `StoreConflict` (and nothing changed) unless every serial of
        them is abroad, and named once."""
        ...

    # transfers and the ledger
    async def insert_transfer(self, transfer: Transfer) -> None: ...
    async def update_transfer(self, transfer: Transfer) -> None: ...
    async def get_transfer(self, transfer_id: str) -> Transfer | None: ...
    async def transfer_heads(self, transfer_ids: Collection[str]) -> dict[str, TransferHead]:
        """`TransferHead` of each of ``transfer_ids`` recorded here, by transfer ID (those unknown left out), read
        from the terms' text without making a block of each. A transfer whose terms are missing is refused like
        `get_transfer` refuses it (`GatewayError`, ``INTERNAL_ERROR``)."""
        ...

    async def transfer_ranges(self, transfer_ids: Collection[str]) -> dict[str, list[SerialRange]]:
        """The serial ranges of the blocks each of ``transfer_ids`` names in its terms, in the terms' order, by
        transfer ID (those unknown left out): what `Transfer.terms` says moved, without decoding the blocks."""
        ...

    async def list_transfers(self, *, after: tuple[str, str] | None = None, limit: int | None = None) -> list[Transfer]:
        """Transfers, oldest first (by creation instant as stored, then ID): those after ``after`` (a transfer's
        `transfer_position`), ``limit`` at the most."""
        ...

    async def open_transfers(self) -> list[Transfer]:
        """Transfers not yet in a final state, oldest first."""
        ...

    async def status_queried_at(self, transfer_id: str) -> dt.datetime | None: ...
    async def set_status_queried_at(self, transfer_id: str, now: dt.datetime) -> None: ...
    async def append_ledger(self, entries: Sequence[LedgerEntry]) -> list[int]: ...
    async def list_ledger(self, *, after: int = 0, limit: int | None = None) -> list[LedgerEntry]:
        """Ledger entries by ID: those after entry ``after``, ``limit`` at the most."""
        ...

    async def ledger_of_action(self, action_id: str) -> list[LedgerEntry]:
        """The entries one transfer, use or cancellation recorded, in order."""
        ...

    def ledger_until(self, instant: dt.datetime, batch: int = 10_000) -> AsyncIterator[LedgerEntry]:
        """The entries dated at or before ``instant``, in recording order, read in batches."""
        ...

    def ledger_between(self, start: dt.datetime, end: dt.datetime, batch: int = 10_000) -> AsyncIterator[LedgerEntry]:
        """The entries dated in ``[start, end]``, in recording order, read in batches."""
        ...

    async def ledger_misdated_after(self, instant: dt.datetime) -> tuple[int, str] | None:
        """The first entry (its ID and its ``action_date`` as stored) whose date, compared as the store compares
        dates, falls after ``instant`` but is no instant the gateway writes: `ledger_until` leaves such an entry
        out of every report without a word, so a report asks for one first."""
        ...

    async def ledger_unresolved(self, party: str) -> list[LedgerEntry]:
        """The transfers abroad of units ``party`` tied whose first transfer was yet to come (subtype ``Not yet
        defined``); `gateway.domain.ledger.still_unresolved` trims those first transferred since."""
        ...

    async def ledger_of_units(
        self, party: str, space: SerialSpace, start: int, end: int, *, since: int = 0
    ) -> list[LedgerEntry]:
        """The entries, with ``party`` as first transferring Party, that share a unit with ``[start, end]``; those
        starting before serial ``since`` are not looked at (the caller knows none there can)."""
        ...

    async def acquisitions_of_units_each(
        self, party: str, space: SerialSpace, wanted: Sequence[tuple[int, int]]
    ) -> list[list[LedgerEntry]]:
        """For each range of ``wanted``, the ``Acquisition`` entries with ``party`` as first transferring Party
        that share a unit with it, in entry order: `ledger_of_units` of one action type, for many ranges in one
        statement."""
        ...

    async def recorded_approaches(self, authorization_id: str) -> list[str]:
        """The cooperative approaches the ledger's entries record ``authorization_id`` under, in code order."""
        ...

    async def ledger_parties(self, space: SerialSpace) -> list[str]:
        """The first transferring Parties of the entries of units of ``space``, in code order: the Parties
        `ledger_of_units` finds entries for there."""
        ...

    async def first_transfers_overlapping(
        self, party: str, space: SerialSpace, start: int, end: int
    ) -> list[FirstTransferRange]:
        """The ``First transfer`` entries of ``party`` that share a unit with ``[start, end]``: entry ID, serial
        space and range. A unit is first transferred once, so they never overlap each other."""
        ...

    async def ledger_totals(self) -> list[LedgerTotal]:
        """The ledger summed per group that the adjustment summary needs (one SQL aggregate)."""
        ...

    # reported emissions, locked periods and settings
    async def reported_emissions(self) -> dict[int, int]: ...
    async def set_reported_emissions(self, year: int, quantity: int, now: dt.datetime) -> None: ...
    async def locked_periods(self) -> list[LockedPeriod]: ...
    async def insert_locked_period(self, lock: LockedPeriod) -> None: ...
    async def get_setting(self, name: str) -> str | None: ...
    async def put_setting(self, name: str, value: str, now: dt.datetime) -> None: ...

    # the partner exchange: channels and the outbox
    async def outgoing_channel(self, receiver: str) -> ChannelState: ...
    async def set_outgoing_channel(self, receiver: str, state: ChannelState) -> None: ...
    async def incoming_channel(self, sender: str) -> ChannelState: ...
    async def set_incoming_channel(self, sender: str, state: ChannelState) -> None: ...
    async def enqueue(
        self,
        *,
        receiver: str,
        message_id: str,
        kind: OutboxKind,
        transfer_id: str,
        body: bytes,
        now: dt.datetime,
    ) -> int: ...
    async def lane_heads(
        self, now: dt.datetime, limit: int, *, only: Collection[str] | None = None
    ) -> list[OutboxMessage]:
        """Per partner, the first pending message (trust documents first, then in queue order), if it is due; with
        ``only``, just the lanes of those receivers."""
        ...

    async def next_due_at(
        self, *, skip: Collection[str] = (), only: Collection[str] | None = None
    ) -> dt.datetime | None:
        """When the earliest pending lane head is due (or, if another replica holds its lease, when that ends),
        leaving out the lanes of the receivers in ``skip`` and, with ``only``, those of receivers not in it."""
        ...

    async def claim_lane_heads(
        self,
        now: dt.datetime,
        limit: int,
        *,
        owner: str,
        until: dt.datetime,
        skip: Collection[str] = (),
        only: Collection[str] | None = None,
    ) -> list[OutboxMessage]:
        """Lease to ``owner`` until ``until`` the lane heads (as `lane_heads`) that are due and that no other
        replica holds an unexpired lease on, leaving out the lanes of the receivers in ``skip`` (those ``owner``
        is sending) and, with ``only``, those of receivers not in it (those ``owner`` cannot send to); return
        them. Heads another transaction has locked are skipped, not waited for. A lane's later messages are never
        claimed past its head, so each lane stays in order."""
        ...

    async def claim_followers(
        self, head: OutboxMessage, limit: int, *, now: dt.datetime, owner: str, until: dt.datetime
    ) -> list[OutboxMessage]:
        """Lease to ``owner`` until ``until`` up to ``limit`` statements that follow ``head`` (a statement whose
        lane ``owner`` has just claimed) in its lane, in order; return them. The run stops before the first one
        that is not due or that another owner holds an unexpired lease on, so that what is sent is always the
        lane's next statements, with no hole among them."""
        ...

    async def holds_lease(self, outbox_id: int, owner: str) -> bool:
        """Whether ``owner`` still holds the lease on the message (no other replica took it over)."""
        ...

    async def release_lease(self, outbox_id: int, owner: str) -> None:
        """End ``owner``'s lease on the message (nothing happens if another replica holds it)."""
        ...

    async def release_leases_of(self, owner: str) -> int:
        """End every lease ``owner`` holds (its worker stopped); return how many there were. Only messages still
        to send hold leases: settling a message ends its lease in the same transaction."""
        ...

    async def trust_pending(self, receiver: str) -> bool:
        """Whether a trust document waits in the outbox to go to ``receiver`` (queued, not yet delivered)."""
        ...

    async def get_outbox(self, message_id: str) -> OutboxMessage | None: ...
    async def list_outbox(self, receiver: str = "", states: Sequence[OutboxState] = ()) -> list[OutboxMessage]: ...
    async def outbox_has_for_transfer(
        self, transfer_id: str, kinds: Sequence[OutboxKind], states: Sequence[OutboxState] = (OutboxState.PENDING,)
    ) -> bool:
        """Whether a statement of one of ``kinds`` about the transfer is in the outbox in one of ``states``."""
        ...

    async def mark_attempt(self, outbox_id: int, sequence: int, sealed: bytes) -> None:
        """Record the sequence and the signed envelope of the attempt about to be sent."""
        ...

    async def mark_delivered(
        self, outbox_id: int, payload_digest: bytes, now: dt.datetime, *, sequence: int | None = None
    ) -> None:
        """Record the message taken in, with its payload's digest and the channel sequence it was taken at."""
        ...

    async def settle(self, outbox_id: int, state: OutboxState, *, code: int, error: str, now: dt.datetime) -> None: ...
    async def reschedule(self, outbox_id: int, *, code: int, error: str, next_attempt_at: dt.datetime) -> None: ...
    async def retry_outbox(self, outbox_id: int, now: dt.datetime) -> None: ...
    async def requeue_from(self, receiver: str, sequence: int, now: dt.datetime) -> int: ...
    async def delivered_digest(self, receiver: str, sequence: int) -> bytes | None: ...
    async def highest_sequence_sent(self, receiver: str) -> int:
        """The highest channel sequence this store ever sealed a statement to ``receiver`` with (0 if none)."""
        ...

    # the append-only message log, and the index of statements taken in
    async def append_log(
        self,
        *,
        direction: str,
        peer: str,
        message_id: str,
        kind: LogKind,
        form: str,
        envelope: bytes,
        now: dt.datetime,
        transfer_id: str = "",
    ) -> int: ...
    async def list_log(self) -> list[LogEntry]: ...
    async def logged(self, peer: str, message_id: str) -> list[LogEntry]:
        """The log entries of one message exchanged with ``peer``, in order."""
        ...

    async def record_message(self, message: StoredMessage) -> None: ...
    async def get_message(self, direction: str, peer: str, message_id: str) -> StoredMessage | None: ...
    async def list_messages(self) -> list[StoredMessage]: ...

    # trust documents and held statements
    async def put_trust_document(self, party: str, version: int, envelope: bytes, now: dt.datetime) -> None: ...
    async def latest_trust_document(self, party: str) -> tuple[int, bytes] | None: ...
    async def trust_document(self, party: str, version: int) -> bytes | None: ...
    async def trust_documents(self, party: str) -> list[tuple[int, bytes]]:
        """Every stored version of ``party``'s trust document (JSON envelopes), oldest first."""
        ...

    async def settle_superseded_trust(self, receiver: str, outbox_id: int, now: dt.datetime) -> int:
        """Mark delivered the trust pushes to ``receiver`` queued before ``outbox_id``: a later push carries
        every version they did."""
        ...

    async def hold_statement(self, sender: str, sequence: int, envelope: bytes, now: dt.datetime) -> None: ...
    async def held_statement(self, sender: str, sequence: int) -> bytes | None: ...
    async def release_held(self, sender: str, up_to: int) -> None: ...
    async def count_held(self) -> int: ...

    # reconciliation: the tree kept as the ledger changes, runs, frozen ranges
    async def fold_reconciliation(self, party: str, limit: int = 10_000) -> int:
        """Bring the reconciliation tree up to date with up to ``limit`` ledger entries written, changed or
        removed since the last fold (a trigger notes each); return how many were folded."""
        ...

    async def reconciliation_pending(self) -> int:
        """How many ledger entries wait to be folded into the reconciliation tree."""
        ...

    async def reconciliation_totals(self, partner: str) -> dict[GroupKey, Totals]:
        """Per group, the totals of the blocks that passed between this gateway and ``partner``."""
        ...

    async def reconciliation_nodes(self, partner: str, refs: Sequence[NodeRef]) -> dict[NodeRef, Totals]:
        """The totals of the given nodes (empty nodes are left out)."""
        ...

    async def reconciliation_children(self, partner: str, ref: NodeRef) -> dict[int, Totals]:
        """The totals of the non-empty children of a node, by child prefix."""
        ...

    async def reconciliation_blocks(self, partner: str, ref: NodeRef) -> list[ReconciledBlock]:
        """The blocks under a node, each as often as the ledger records it."""
        ...

    async def insert_reconciliation(self, run: ReconciliationRun) -> None: ...
    async def update_reconciliation(self, run: ReconciliationRun) -> None: ...
    async def get_reconciliation(self, run_id: str) -> ReconciliationRun | None: ...
    async def list_reconciliations(
        self, partner: str = "", limit: int = 100, *, role: RunRole | None = None
    ) -> list[ReconciliationRun]:
        """The latest runs (with ``partner``, in ``role``, where given), newest first."""
        ...

    async def running_reconciliations(
        self, role: RunRole, last_step_before: dt.datetime, limit: int
    ) -> list[ReconciliationRun]:
        """Runs in ``role`` still running whose last step was at or before ``last_step_before``, oldest first."""
        ...

    async def freeze(self, run_id: str, ranges: Sequence[tuple[SerialSpace, int, int]]) -> None:
        """Freeze units: no transfer, use or cancellation may move them until ``run_id`` is resolved."""
        ...

    async def unfreeze(self, run_id: str) -> None: ...
    async def frozen_by(self, space: SerialSpace, start: int, end: int) -> list[str]:
        """The runs whose frozen ranges share a unit with ``[start, end]``, the latest first."""
        ...

    async def frozen_spaces(self) -> frozenset[SerialSpace]:
        """The serial spaces that hold frozen units: only blocks of these need `frozen_by`, so that a transfer
        of a thousand blocks asks once, not a thousand times, when nothing is frozen."""
        ...

    # the message log as a Merkle tree, and the heads partners showed
    async def fold_log_tree(self) -> int:
        """Add the log entries not yet in the Merkle tree; return the tree's size (the number of entries)."""
        ...

    async def log_tree_pending(self) -> int:
        """How many log entries are not in the Merkle tree yet."""
        ...

    async def log_tree_nodes(self, coordinates: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """The stored complete-subtree hashes at the given (level, index) coordinates."""
        ...

    async def log_of_transfer(self, transfer_id: str) -> list[LogEntry]:
        """The log entries of the statements and receipts exchanged about one transfer, in order."""
        ...

    async def partner_log_head(self, partner: str) -> PartnerLogHead | None: ...
    async def set_partner_log_head(self, partner: str, head: PartnerLogHead) -> None:
        """Keep ``head`` as the partner's latest, and among the heads it showed (`partner_log_root`)."""
        ...

    async def partner_log_root(self, partner: str, tree_size: int) -> bytes | None:
        """The root of the partner's head of ``tree_size`` entries, if it ever showed one here."""
        ...

    # the change feed (migration 7)
    async def changes_after(
        self, position: int, limit: int, kinds: Sequence[ChangeKind] = (), *, through: int | None = None
    ) -> list[Change]:
        """Up to ``limit`` changes after ``position``, in position order; only those of ``kinds`` when given, and
        none past position ``through`` when given."""
        ...

    async def change_digest_at(self, position: int) -> bytes | None:
        """The digest of the change at ``position`` (`change_digest`), read from its row without decoding it; None
        where there is none."""
        ...

    async def last_change_position(self) -> int:
        """The position of the latest change (0 if none); a pruned change still counts."""
        ...

    async def changes_pruned(self) -> PrunedChanges:
        """How far the feed was pruned."""
        ...

    async def prune_changes(self, through: int, limit: int) -> tuple[PrunedChanges, int]:
        """Remove the oldest changes still kept at ``through`` or below, at most ``limit`` of them; return how far
        the feed is now pruned and how many this removed. Never removes a change above ``through``."""
        ...

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

    def synced_once(self) -> AbstractAsyncContextManager[None]:
        """Inside the block, this task's durable commits do not each wait for the disk: the block's end waits
        once for all of them. For work whose result leaves the gateway only after the block (the receipts of a
        batch of statements); what other tasks read of those commits still waits for the disk as always."""
        ...

    def read(self) -> AbstractAsyncContextManager[Transaction]:
        """Begin a transaction for reads only (a consistent snapshot)."""
        ...

    def is_transient(self, error: BaseException) -> bool:
        """Whether ``error``, raised by this store inside a transaction, says the database could not do the work
        now (a lost connection, a lock it waited too long for, a cancelled query) rather than that the work is
        wrong: the transaction is then rolled back and retried as a whole, never recorded as done."""
        ...

    @property
    def shared(self) -> bool:
        """Whether other processes (replicas) may write this database. Their commits notify none of this
        object's signals, so whoever waits for what they write looks again now and then as well."""
        ...

    @property
    def commits(self) -> CommitSignal:
        """Notified after every write transaction this store object commits (see `CommitSignal`)."""
        ...

    @property
    def enqueued(self) -> CommitSignal:
        """Notified as soon as a write transaction of this store object that put a message in the outbox
        commits, which may be before the commit is durable (SQLite syncs its log after): the outbox worker
        claims the message meanwhile, and what it sends waits for the disk as every transaction does."""
        ...

    async def close(self) -> None:
        """Close the database."""
        ...


async def reconciled_blocks(
    tx: Transaction, party: str, entries: Sequence[LedgerEntry]
) -> list[tuple[LedgerEntry, str, ReconciledBlock]]:
    """The entries of ``entries`` that count in reconciliation, each with its partner and block: what both stores
    fold into their reconciliation trees. A ``First transfer`` to another Party is compared under its transfer's
    purpose, read from this side's record of the transfer (`reconciled_block`)."""
    heads = await tx.transfer_heads({e.transfer_id for e in entries if books_first_transfer_abroad(e)})
    found = []
    for entry in entries:
        head = heads.get(entry.transfer_id) if books_first_transfer_abroad(entry) else None
        block = reconciled_block(entry, party, None if head is None else head.purpose)
        if block is not None:
            found.append((entry, *block))
    return found


def database_could_not(store: Store, error: BaseException) -> bool:
    """Whether ``error`` says the database could not do the work now (what ``store`` calls transient, or the
    operating system's refusal: a disk, a socket), not that the work or the code is wrong: worth one line in the
    log and another try, not a traceback."""
    return isinstance(error, OSError) or store.is_transient(error)


def failure_line(error: BaseException) -> str:
    """``error``'s type and text on one line, cut to 300 characters: for a log line about such a failure."""
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]


PROBE_SECONDS = 2.0
"""How long a health check waits for the database to answer a read before it says the gateway cannot work."""

PROBE_FRESH_SECONDS = 1.0
"""How long a probe's answer serves the health checks that come after it, before the next check reads again."""


class DatabaseProbe:
    """Whether a store answers now, for the health checks (HTTP ``/healthz``, gRPC ``Check``): a gateway whose
    database does not answer cannot take a statement in or serve an operator, and a load balancer must learn so.

    One read at a time, however many checks ask at once, and at most one a `PROBE_FRESH_SECONDS` (``fresh``):
    the checks are open to whoever reaches the port, and a crowd of them, or one caller asking in a loop, must
    not become a crowd or a stream of queries; a check within ``fresh`` of the last answer gets that answer. A
    database found not answering is one warning in the log, and its return one line, not a line (or a
    traceback) per check."""

    def __init__(self, store: Store, *, timeout: float = PROBE_SECONDS, fresh: float = PROBE_FRESH_SECONDS) -> None:
        self.store = store
        self.timeout = timeout
        self.fresh = fresh
        self._probing: asyncio.Future[str | None] | None = None
        self._answered_at: float | None = None
        self._failing = False

    async def problem(self) -> str | None:
        """None when the database answered a read within the probe's timeout; otherwise a short reason, which
        names nothing internal (hosts, file paths stay in this gateway's log)."""
        probing = self._probing
        now = asyncio.get_running_loop().time()
        stale = self._answered_at is None or now - self._answered_at >= self.fresh
        if probing is None or (probing.done() and stale):
            probing = self._probing = asyncio.ensure_future(self._probe())
            probing.add_done_callback(self._probed)
        return await asyncio.shield(probing)

    def _probed(self, probing: asyncio.Future[str | None]) -> None:
        if self._probing is not probing:
            return
        if probing.cancelled() or probing.exception() is not None:
            self._probing = None  # nothing to serve the next checks: the next reads again
        else:
            self._answered_at = asyncio.get_running_loop().time()

    async def _probe(self) -> str | None:
        try:
            async with asyncio.timeout(self.timeout):
                async with self.store.read() as tx:
                    await tx.get_setting("health")
        except TimeoutError:
            return self._failed(f"the database did not answer within {self.timeout:g} s", None)
        except Exception as exc:
            return self._failed("the database cannot be used now", exc)
        if self._failing:
            self._failing = False
            _log.info("the database answers again: health checks say serving")
        return None

    def _failed(self, reason: str, error: Exception | None) -> str:
        if not self._failing:
            self._failing = True
            why = f" ({failure_line(error)})" if error is not None else ""
            _log.warning("%s%s: health checks say not serving until it answers", reason, why)
        return reason
