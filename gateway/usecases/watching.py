"""Following the change feed (WatchChanges): the changes after a position, then each new one as it commits.

The feed is the ``changes`` table that triggers fill in the transaction of each change (store migration 7), so
a watcher reads it and never a transaction's private state. It reads in batches, each in a short read
transaction that ends before anything is sent: a slow watcher holds no transaction and no lock, and gRPC flow
control holds the next batch back until the watcher has taken the last. Between batches it waits for a commit
in this process (`gateway.store.base.CommitSignal`) or, at the latest, `POLL_SECONDS`: another process
sharing the database (a replica) writes changes this process is not told of.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence

from gateway.domain import text
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.places import Places, PlacesFull
from gateway.store.base import Change, ChangeKind, Store, Transaction

log = logging.getLogger(__name__)

BATCH = 256
"""Changes read per read transaction."""
TRANSFER_BATCH = 8
"""Of those, the most transfer changes. Each carries its transfer's whole terms, up to a thousand blocks: some
0.7 MB once read, and some 20 ms of the event loop to read. A batch waits in memory until its watcher has taken
it, so a watcher that reads nothing would otherwise hold `BATCH` of them (some 180 MB, one caller's
`MAX_WATCHERS_PER_CALLER` watches some 3 GB), and each read would hold the event loop for seconds. Ledger changes
are small, and are read `BATCH` at a time between them."""
FILTERED_SPAN = 4096
"""The most positions one read of a watch for some kinds of change looks through: a watch of a rare kind resumed
far back reads the feed in spans, letting the process's other work run between them, instead of reading on to
the end of the feed in one statement for want of enough changes of its kinds."""
POLL_SECONDS = 1.0
"""The longest a watcher waits before reading again when no commit in this process woke it."""

MAX_WATCHERS = 64
"""The most watches one gateway process follows at once. Each wakes at every commit and reads the feed, so a
caller opening streams without end would otherwise turn every commit into that many reads."""
MAX_WATCHERS_PER_CALLER = 16
"""The most of them one caller may hold: a caller that opens watches and never reads them cannot take every
place and shut out the registry of record."""
KEPT_WATCHERS = 16
"""Of `MAX_WATCHERS`, the places read-only callers leave to operators and administrators (the registry of
record following the gateway): several read-only callers together cannot shut it out either."""


class FeedClosed(Exception):
    """The gateway is stopping: the watcher should call again, from the last position it received."""


class ChangeFeed:
    """The change feed of one gateway's store, for any number of watchers."""

    def __init__(
        self,
        store: Store,
        *,
        batch: int = BATCH,
        transfer_batch: int = TRANSFER_BATCH,
        filtered_span: int = FILTERED_SPAN,
        poll_seconds: float = POLL_SECONDS,
        max_watchers: int = MAX_WATCHERS,
        max_watchers_per_caller: int = MAX_WATCHERS_PER_CALLER,
        kept_watchers: int = KEPT_WATCHERS,
    ) -> None:
        self.store = store
        self.batch = batch
        self.transfer_batch = transfer_batch
        self.filtered_span = filtered_span
        self.poll_seconds = poll_seconds
        self.places = Places(max_watchers, max_watchers_per_caller, kept_watchers)
        self._closed = False

    @property
    def watchers(self) -> int:
        """Watches following the feed now."""
        return self.places.taken

    @property
    def max_watchers(self) -> int:
        """Watches the feed serves at once."""
        return self.places.total

    @max_watchers.setter
    def max_watchers(self, value: int) -> None:
        self.places.total = value

    @property
    def max_watchers_per_caller(self) -> int:
        """Of those, the watches one caller may follow."""
        return self.places.per_holder

    @max_watchers_per_caller.setter
    def max_watchers_per_caller(self, value: int) -> None:
        self.places.per_holder = value

    def close(self) -> None:
        """End every watch (each raises `FeedClosed`) and refuse new ones: the gateway is stopping."""
        self._closed = True
        self.store.commits.notify()

    async def follow(
        self,
        after: int,
        kinds: Sequence[ChangeKind] = (),
        after_digest: bytes = b"",
        *,
        caller: str = "",
        may_take_kept: bool = True,
    ) -> AsyncGenerator[Change, None]:
        """The changes after position ``after`` (of ``kinds`` only, when given), then each new one, for ever.

        A position below 0 or beyond the latest is refused before anything is returned, and so is a digest
        that is not the one of the change at ``after`` (the database was restored, or is another gateway's).
        A watch beyond `max_watchers`, beyond `max_watchers_per_caller` of ``caller``, or into the places kept
        for callers who may take them (``may_take_kept`` False), is refused with ``TOO_MANY_WATCHES``.
        """
        try:
            self.places.take(caller, may_take_kept=may_take_kept)
        except PlacesFull as full:
            if full.by_holder:
                message = f"this caller follows {full.held} watches already, the most one caller may: close one"
            elif full.kept:
                message = (
                    f"{full.held} watches follow this gateway's changes already; the places left are kept for"
                    " operators and administrators: close one"
                )
            else:
                message = (
                    f"{full.held} watches follow this gateway's changes already, the most it serves at once: close one"
                )
            raise GatewayError(ResponseCode.TOO_MANY_WATCHES, f"{message}, or call again later") from None
        try:
            async with contextlib.aclosing(self._follow(after, kinds, after_digest)) as changes:
                async for change in changes:
                    yield change
        finally:
            self.places.give_back(caller)

    async def _follow(
        self, after: int, kinds: Sequence[ChangeKind], after_digest: bytes
    ) -> AsyncGenerator[Change, None]:
        with self.store.commits.subscribe() as woken:
            woken.clear()
            if after < 0:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT,
                    f"position {after} is negative: give 0 to start from the beginning, or the position of the"
                    " last change received",
                    field="after_position",
                )
            _check_digest_form(after, after_digest)
            async with self.store.read() as tx:
                latest = await tx.last_change_position()
                pruned = await tx.changes_pruned()
                # The digest alone, from the row as stored: a change there this version cannot read (damaged, or
                # written by hand) was given already, and must not keep its watcher from the changes after it.
                at = await tx.change_digest_at(after) if after_digest and pruned.through < after <= latest else None
            if after > latest:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT,
                    f"position {after} is beyond the latest change ({latest}): this gateway never recorded it"
                    " (a position from another gateway's feed, or from a database since restored from a backup?)",
                    field="after_position",
                )
            if after < pruned.through:
                raise _pruned(after, pruned.through)
            # The change at a pruned position is gone, but its digest was kept.
            known = pruned.digest if after == pruned.through else at or b""
            if after_digest and known != after_digest:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT,
                    f"the change at position {after} is not the one with this digest: the database was restored"
                    " from a backup since (or this is another gateway's feed), and positions after its latest"
                    " change were handed out again; resume from an earlier change whose digest matches",
                    field="after_digest",
                )
            position = after
            while True:
                if self._closed:
                    raise FeedClosed
                woken.clear()
                async with self.store.read() as tx:
                    batch, full, through = await self._read(tx, position, kinds)
                    # Read in the same snapshot: every change up to it (and up to ``through``) was in the batch or
                    # filtered out.
                    latest = 0 if full else await tx.last_change_position()
                    pruned_through = (await tx.changes_pruned()).through
                if pruned_through > position:  # pruned while this watcher was behind: the batch may lack changes
                    raise _pruned(position, pruned_through)
                for change in batch:
                    yield change
                    position = change.position
                if full:
                    continue
                seen = min(latest, through)
                position = max(position, seen)
                if seen < latest:
                    await asyncio.sleep(0)  # the next span at once, after the loop's other work
                    continue
                if self._closed:
                    raise FeedClosed
                try:
                    async with asyncio.timeout(self.poll_seconds):
                        await woken.wait()
                except TimeoutError:
                    pass

    async def _read(
        self, tx: Transaction, position: int, kinds: Sequence[ChangeKind]
    ) -> tuple[list[Change], bool, int]:
        """`_read_batch`, `batch` changes at a time. A change the store cannot decode (a row written by hand, or
        damaged) fails the read of its whole batch: the changes before it are then read one at a time, so that
        the watcher receives every one of them, and the change itself is refused naming the position before it.
        A watch of some kinds reads them over ever shorter spans (halved at each failure): the next transfer
        change of a span may lie past ledger changes that the watcher must receive first.
        """
        try:
            return await self._read_batch(tx, position, kinds, self.batch)
        except UNDECODABLE:
            pass
        span = self.filtered_span if kinds else 1
        while True:
            try:
                return await self._read_batch(tx, position, kinds, 1, span)
            except UNDECODABLE as exc:
                if span > 1:
                    span //= 2
                    continue
                error = text.truncate(f"{type(exc).__name__}: {exc}", 300)
                log.error("the change feed cannot decode the first change after position %d: %s", position, error)
                raise GatewayError(
                    ResponseCode.INTERNAL_ERROR,
                    f"the first change after position {position} cannot be read ({error}): the database holds a"
                    " change-feed row this gateway cannot decode, written by hand or damaged. Repair the record it"
                    f" is about, or prune the feed past it (PruneChanges); every change up to position {position}"
                    " was given",
                ) from None

    async def _read_batch(
        self, tx: Transaction, position: int, kinds: Sequence[ChangeKind], batch: int, span: int = 0
    ) -> tuple[list[Change], bool, int]:
        """The changes after ``position`` (of ``kinds``, when given) up to a position it returns, in order; whether
        a batch was full (the changes after the last one returned are still to be read); and the position through
        which every change was read or filtered out when none was.

        Transfer changes are read `transfer_batch` at a time, then the ledger changes up to the last of them,
        `batch` at a time, in the same snapshot: a full batch of either ends what is returned at its last change
        (transfers past a full batch of ledger changes are read again next time). A read reaches at most
        `filtered_span` positions past ``position`` for a watch of some kinds (a rare kind is not looked for to the
        end of the feed in one statement), and `batch` positions for a watch of every kind; ``span`` positions
        when given.
        """
        wanted = list(dict.fromkeys(kinds or ChangeKind))
        ledger = [k for k in wanted if k is not ChangeKind.TRANSFER]
        through = min(position + (span or (self.filtered_span if kinds else batch)), text.MAX_INT64)
        full = False
        found: list[Change] = []
        if ChangeKind.TRANSFER in wanted:
            limit = min(self.transfer_batch, batch)
            found += await tx.changes_after(position, limit, [ChangeKind.TRANSFER], through=through)
            if len(found) == limit:
                full, through = True, found[-1].position
        if ledger:
            entries = await tx.changes_after(position, batch, ledger, through=through)
            if len(entries) == batch:
                full, through = True, entries[-1].position
            found += entries
        found.sort(key=lambda change: change.position)
        return [change for change in found if change.position <= through], full, through


def _pruned(position: int, through: int) -> GatewayError:
    return GatewayError(
        ResponseCode.CHANGES_PRUNED,
        f"the changes up to position {through} were pruned (PruneChanges), and position {position} is before it:"
        " read the current transfers and ledger entries (ListTransfers, ListLedgerEntries), then watch from"
        f" position {through}. Each change carries the whole record, so one the lists showed already does no harm",
        field="after_position",
    )


UNDECODABLE = (ValueError, KeyError, TypeError, GatewayError)
"""What decoding a stored change raises when its row is not one the store's triggers write, or (GatewayError,
INTERNAL_ERROR) when the terms a transfer change leaves to ``transfer_terms`` are gone from it. Nothing else in a
read of the feed raises a GatewayError: a database that fails raises its own errors."""

DIGEST_BYTES = 32


def _check_digest_form(after: int, digest: bytes) -> None:
    if not digest:
        return
    if len(digest) != DIGEST_BYTES:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"a change's digest is {DIGEST_BYTES} bytes (SHA-256), not {len(digest)}: give it back as received",
            field="after_digest",
        )
    if after <= 0:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"position {after} names no change: give after_digest only with the position of a change received",
            field="after_digest",
        )
