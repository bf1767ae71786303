"""The change feed's triggers (migration 7) on a real SQLite file: every transfer insert and change, every ledger
insert, update and delete is recorded in its own transaction, in position order; what is rolled back is not."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.protocol import Rejection
from gateway.domain.records import ActionType, AdjustmentMethod, LedgerEntry, Purpose, TransferTerms
from gateway.domain.transfer import Transfer, TransferRole, TransferState
from gateway.store.base import Change, ChangeKind
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite import SQLiteStore, SQLiteTransaction
from gateway.usecases.watching import TRANSFER_BATCH, ChangeFeed, FeedClosed

T0 = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
BLOCK = UnitBlock(SerialSpace("CCER", "CN-CCER"), 1, 400, vintage=2025)
TERMS = TransferTerms(
    transferring_party="CHN",
    acquiring_party="CHE",
    source_account="CN-PO-0001",
    acquiring_account="CH-PH-0001",
    cooperative_approach="CA0001",
    authorization_id="CHN-A-0001",
    purpose=Purpose.NDC,
    adjustment_method=AdjustmentMethod.AVERAGING,
    blocks=(BLOCK,),
)
TRANSFER = Transfer("t-1", TransferRole.INITIATING, TransferState.PROPOSED, TERMS, (), T0, T0)
ENTRY = LedgerEntry(
    entry_id=0,
    action_date=T0,
    action_type=ActionType.FIRST_TRANSFER,
    transfer_id="t-1",
    block=BLOCK,
    cooperative_approach="CA0001",
    authorization_id="CHN-A-0001",
    first_transferring_party="CHN",
    transferring_party="CHN",
    acquiring_party="CHE",
    purpose=Purpose.NDC,
    action_subtype="First transfer to another Party",
)


async def everything(store: SQLiteStore) -> list[Change]:
    async with store.read() as tx:
        return await tx.changes_after(0, 1000)


@pytest.mark.asyncio
async def test_transfer_inserts_and_changes_are_recorded_with_the_new_state(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "g.db")
    try:
        async with store.transaction() as tx:
            await tx.insert_transfer(TRANSFER)
        accepted = dataclasses.replace(TRANSFER, state=TransferState.ACCEPTED, updated_at=T0 + dt.timedelta(1))
        rejection = Rejection(ResponseCode.UNIT_NOT_HELD, "gone", (BLOCK,))
        rejected = dataclasses.replace(accepted, state=TransferState.REJECTED, rejections=(rejection,))
        async with store.transaction() as tx:
            await tx.update_transfer(accepted)
            await tx.update_transfer(rejected)
        async with store.transaction() as tx:
            # Neither is a change of the transfer as GetTransfer shows it: no row.
            await tx.update_transfer(rejected)
            await tx.set_status_queried_at("t-1", T0 + dt.timedelta(2))
        changes = await everything(store)
        assert [c.position for c in changes] == [1, 2, 3]
        assert [c.kind for c in changes] == [ChangeKind.TRANSFER] * 3
        assert [c.transfer for c in changes] == [TRANSFER, accepted, rejected]
        assert all(c.entry is None for c in changes)
        async with store.read() as tx:
            assert await tx.last_change_position() == 3
            assert [c.position for c in await tx.changes_after(1, 1)] == [2]
            assert await tx.changes_after(3, 10) == []
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_ledger_inserts_updates_and_deletes_are_recorded_with_the_content(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = await SQLiteStore.open(path)
    try:
        async with store.transaction() as tx:
            [first, second] = await tx.append_ledger([ENTRY, dataclasses.replace(ENTRY, transfer_id="t-2")])
        # Repair or corruption, as reconciliation finds it: a row rewritten, one renumbered, one deleted.
        with sqlite3.connect(path) as db:
            db.execute("UPDATE ledger SET block = json_set(block, '$.end', 150) WHERE entry_id = ?", (first,))
        with sqlite3.connect(path) as db:
            db.execute("UPDATE ledger SET entry_id = 77 WHERE entry_id = ?", (second,))
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM ledger WHERE entry_id = ?", (first,))
        changes = await everything(store)
    finally:
        await store.close()
    inserted = [
        dataclasses.replace(ENTRY, entry_id=first),
        dataclasses.replace(ENTRY, entry_id=second, transfer_id="t-2"),
    ]
    shortened = dataclasses.replace(inserted[0], block=BLOCK.with_range(1, 150))
    assert [(c.position, c.kind, c.entry) for c in changes] == [
        (1, ChangeKind.LEDGER_ENTRY, inserted[0]),
        (2, ChangeKind.LEDGER_ENTRY, inserted[1]),
        (3, ChangeKind.LEDGER_ENTRY_CHANGED, shortened),
        (4, ChangeKind.LEDGER_ENTRY_REMOVED, inserted[1]),
        (5, ChangeKind.LEDGER_ENTRY_CHANGED, dataclasses.replace(inserted[1], entry_id=77)),
        (6, ChangeKind.LEDGER_ENTRY_REMOVED, shortened),
    ]
    assert all(c.transfer is None for c in changes)
    assert [c.recorded_at for c in changes] == sorted(c.recorded_at for c in changes)


def _recorded(path: Path) -> tuple[list[str], list[int]]:
    """The ledger entries the change feed names as inserted, and those marked for reconciliation."""
    with sqlite3.connect(path) as db:
        named = [
            r[0] for r in db.execute("SELECT subject_id FROM changes WHERE kind = 'ledger_entry' ORDER BY position")
        ]
        dirty = [r[0] for r in db.execute("SELECT entry_id FROM reconciliation_dirty ORDER BY entry_id")]
    return named, dirty


@pytest.mark.asyncio
async def test_ledger_rows_appended_or_inserted_by_hand_are_each_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = await SQLiteStore.open(path)
    try:
        async with store.transaction() as tx:
            ids = await tx.append_ledger([dataclasses.replace(ENTRY, transfer_id=f"t-{i}") for i in range(4)])
        # A repair by hand, outside the gateway: the trigger records it.
        with sqlite3.connect(path) as db:
            db.execute(
                "INSERT INTO ledger (entry_id, action_date, action_type, transfer_id, block, quantity, vintage,"
                " cooperative_approach, authorization_id, first_transferring_party, transferring_party,"
                " acquiring_party, purpose) SELECT 50, action_date, action_type, 'by-hand', block, quantity, vintage,"
                " cooperative_approach, authorization_id, first_transferring_party, transferring_party,"
                " acquiring_party, purpose FROM ledger WHERE entry_id = ?",
                (ids[0],),
            )
        async with store.transaction() as tx:
            [after] = await tx.append_ledger([ENTRY])
        changes = await everything(store)
    finally:
        await store.close()
    assert ids == [1, 2, 3, 4] and after == 51
    assert _recorded(path) == (["1", "2", "3", "4", "50", "51"], [1, 2, 3, 4, 50, 51])
    assert [c.entry.transfer_id for c in changes if c.entry is not None] == [
        "t-0",
        "t-1",
        "t-2",
        "t-3",
        "by-hand",
        "t-1",
    ]
    # The four entries appended together named themselves for the triggers only while they were written.
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM ledger_appending").fetchone() == (0,)


@pytest.mark.asyncio
async def test_a_rolled_back_transaction_or_savepoint_leaves_no_change(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "g.db")
    try:
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.insert_transfer(TRANSFER)
                await tx.append_ledger([ENTRY])
                raise RuntimeError("the use case failed after writing")
        assert await everything(store) == []
        async with store.transaction() as tx:
            await tx.insert_transfer(TRANSFER)
            with pytest.raises(RuntimeError):
                async with tx.savepoint():
                    await tx.append_ledger([ENTRY])
                    raise RuntimeError("a refused statement is rolled back alone")
        changes = await everything(store)
        # The rolled-back positions are never seen: the one change that committed is the first position.
        assert [(c.position, c.kind) for c in changes] == [(1, ChangeKind.TRANSFER)]
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_the_filter_and_the_feed_is_append_only(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = await SQLiteStore.open(path)
    try:
        async with store.transaction() as tx:
            await tx.insert_transfer(TRANSFER)
            await tx.append_ledger([ENTRY])
            await tx.update_transfer(dataclasses.replace(TRANSFER, state=TransferState.ACCEPTED))
        async with store.read() as tx:
            ledger_only = await tx.changes_after(0, 10, [ChangeKind.LEDGER_ENTRY, ChangeKind.LEDGER_ENTRY_REMOVED])
            transfers_after_1 = await tx.changes_after(1, 10, [ChangeKind.TRANSFER])
        assert [c.position for c in ledger_only] == [2]
        assert [c.position for c in transfers_after_1] == [3]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        for statement in ("UPDATE changes SET kind = 'x'", "DELETE FROM changes"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement)


@pytest.mark.asyncio
async def test_migration_7_starts_the_feed_with_what_an_older_database_holds(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = await SQLiteStore.open(path)
    try:
        async with store.transaction() as tx:
            await tx.insert_transfer(TRANSFER)
            await tx.append_ledger([ENTRY])
    finally:
        await store.close()
    # Wind the file back to version 6, as an older version left it, then open it again: migration 7 runs.
    with sqlite3.connect(path) as db:
        [(version, _, _)] = [m for m in MIGRATIONS if m[0] == 7]
        triggers = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
        for name in triggers:
            if "change" in name:
                db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP TABLE changes")
        db.execute("DELETE FROM schema_migrations WHERE version = ?", (version,))
    store = await SQLiteStore.open(path)
    try:
        changes = await everything(store)
    finally:
        await store.close()
    assert [(c.position, c.kind) for c in changes] == [(1, ChangeKind.TRANSFER), (2, ChangeKind.LEDGER_ENTRY)]
    assert changes[0].transfer == TRANSFER
    assert changes[1].entry == dataclasses.replace(ENTRY, entry_id=1)


@pytest.mark.asyncio
async def test_after_a_restore_a_watcher_resuming_with_its_digest_is_refused_not_led_past_changes(
    tmp_path: Path,
) -> None:
    path, backup = tmp_path / "g.db", tmp_path / "backup.db"
    store = await SQLiteStore.open(path)
    async with store.transaction() as tx:
        await tx.insert_transfer(TRANSFER)
    with sqlite3.connect(path) as source, sqlite3.connect(backup) as target:
        source.backup(target)
    async with store.transaction() as tx:
        await tx.update_transfer(dataclasses.replace(TRANSFER, state=TransferState.ACCEPTED))
    received = await everything(store)
    await store.close()
    assert [c.position for c in received] == [1, 2]
    assert len({c.digest for c in received}) == 2 and all(len(c.digest) == 32 for c in received)

    # The backup comes back (the file alone: no write-ahead log of the later state); the gateway records
    # another change, at position 2 again.
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    backup.replace(path)
    store = await SQLiteStore.open(path)
    try:
        async with store.transaction() as tx:
            await tx.update_transfer(dataclasses.replace(TRANSFER, state=TransferState.CANCELLED))
        [again, other] = await everything(store)
        assert again == received[0] and other.position == 2 and other.digest != received[1].digest
        feed = ChangeFeed(store, poll_seconds=0.05)
        # By position alone the watcher would wait for position 3 and never hear of the cancellation.
        with pytest.raises(GatewayError) as caught:
            await anext(feed.follow(2, after_digest=received[1].digest))
        assert (caught.value.code, caught.value.field) == (ResponseCode.INVALID_ARGUMENT, "after_digest")
        # From the last change both sides share, it gets what it has not seen.
        changes = feed.follow(1, after_digest=received[0].digest)
        assert await anext(changes) == other
        await changes.aclose()
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_commit_wakes_a_waiting_watcher_without_waiting_for_the_poll(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "g.db")
    try:
        feed = ChangeFeed(store, poll_seconds=3600)
        changes = feed.follow(0)
        waiting = asyncio.ensure_future(anext(changes))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        async with store.transaction() as tx:
            await tx.insert_transfer(TRANSFER)
        change = await asyncio.wait_for(waiting, 10)
        assert (change.position, change.transfer) == (1, TRANSFER)
        # Closing the feed (the gateway stops) ends a waiting watch at once.
        waiting = asyncio.ensure_future(anext(changes))
        await asyncio.sleep(0.2)
        feed.close()
        with pytest.raises(FeedClosed):
            await asyncio.wait_for(waiting, 10)
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_watch_of_some_kinds_reads_the_feed_in_spans_at_once_and_misses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await SQLiteStore.open(tmp_path / "g.db")
    read: list[tuple[int, int | None]] = []
    changes_after = SQLiteTransaction.changes_after

    async def spied(
        tx: SQLiteTransaction,
        position: int,
        limit: int,
        kinds: Sequence[ChangeKind] = (),
        *,
        through: int | None = None,
    ) -> list[Change]:
        read.append((position, through))
        return await changes_after(tx, position, limit, kinds, through=through)

    monkeypatch.setattr(SQLiteTransaction, "changes_after", spied)
    accepted = dataclasses.replace(TRANSFER, state=TransferState.ACCEPTED, updated_at=T0 + dt.timedelta(1))
    try:
        async with store.transaction() as tx:
            await tx.append_ledger([dataclasses.replace(ENTRY, transfer_id=f"before-{i}") for i in range(40)])
            await tx.insert_transfer(TRANSFER)
            await tx.append_ledger([dataclasses.replace(ENTRY, transfer_id=f"after-{i}") for i in range(40)])
            await tx.update_transfer(accepted)
        # A poll that never comes: the spans are read one after another, not one per wake-up.
        feed = ChangeFeed(store, filtered_span=7, poll_seconds=3600)
        watched = feed.follow(0, [ChangeKind.TRANSFER])
        first, second = [await asyncio.wait_for(anext(watched), 10) for _ in range(2)]
        assert [(c.position, c.transfer) for c in (first, second)] == [(41, TRANSFER), (82, accepted)]
        spans = [(position, through) for position, through in read if position > 0 or through is not None]
        assert spans and all(through is not None and through - position <= 7 for position, through in spans)
        assert len(spans) >= 82 // 7
        # At the end of the feed, the watch waits for the next commit, and reads it.
        waiting = asyncio.ensure_future(anext(watched))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        async with store.transaction() as tx:
            await tx.append_ledger([ENTRY])
            await tx.update_transfer(dataclasses.replace(accepted, state=TransferState.COMPLETED))
        third = await asyncio.wait_for(waiting, 10)
        assert third.position == 84 and third.transfer is not None
        assert third.transfer.state is TransferState.COMPLETED
        await watched.aclose()
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_watcher_that_does_not_read_holds_a_few_large_transfers_not_a_batch_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transfer change carries up to a thousand blocks (some 0.7 MB once read, some 20 ms to read): a watch
    reads few of them at a time, so a watcher that takes one change and reads no more holds a few, not hundreds
    (a caller's sixteen watches held gigabytes), and a read never holds the event loop for seconds. Read in
    smaller batches, the feed still gives every change once, in order, across full batches of either kind."""
    store = await SQLiteStore.open(tmp_path / "g.db")
    transfers_read: list[int] = []
    changes_after = SQLiteTransaction.changes_after

    async def spied(
        tx: SQLiteTransaction,
        position: int,
        limit: int,
        kinds: Sequence[ChangeKind] = (),
        *,
        through: int | None = None,
    ) -> list[Change]:
        found = await changes_after(tx, position, limit, kinds, through=through)
        transfers_read.append(sum(1 for change in found if change.kind is ChangeKind.TRANSFER))
        return found

    space = SerialSpace("CCER", "CN-CCER")
    try:
        async with store.transaction() as tx:
            for i in range(40):
                blocks = tuple(
                    UnitBlock(space, 10_000 * i + 2 * j + 1, 10_000 * i + 2 * j + 1, vintage=2025) for j in range(1000)
                )
                terms = dataclasses.replace(TERMS, blocks=blocks)
                await tx.insert_transfer(dataclasses.replace(TRANSFER, transfer_id=f"large-{i}", terms=terms))
                await tx.append_ledger([dataclasses.replace(ENTRY, transfer_id=f"large-{i}")] * (30 if i % 9 else 1))
        changes = await everything(store)
        monkeypatch.setattr(SQLiteTransaction, "changes_after", spied)

        stalled = ChangeFeed(store, poll_seconds=3600).follow(0)
        assert await anext(stalled) == changes[0]
        assert 0 < sum(transfers_read) <= TRANSFER_BATCH <= 16
        await stalled.aclose()

        for batch, transfer_batch, kinds in (
            (256, 8, ()),
            (5, 2, ()),
            (7, 3, (ChangeKind.TRANSFER, ChangeKind.LEDGER_ENTRY)),
        ):
            transfers_read.clear()
            feed = ChangeFeed(store, batch=batch, transfer_batch=transfer_batch, poll_seconds=3600)
            following = feed.follow(0, kinds)
            got = [await asyncio.wait_for(anext(following), 10) for _ in range(len(changes))]
            assert got == changes, (batch, transfer_batch)
            assert max(transfers_read) <= transfer_batch
            await following.aclose()
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_change_the_store_cannot_decode_is_refused_by_position_after_every_change_before_it(
    tmp_path: Path,
) -> None:
    """A repair by hand writes a ledger row this gateway cannot read: its change fails to decode. The watcher
    still receives every change before it (the batch holding it is read again one change at a time), and then a
    refusal naming where it stopped, not an internal error with nothing delivered."""
    path = tmp_path / "g.db"
    store = await SQLiteStore.open(path)
    try:
        async with store.transaction() as tx:
            await tx.insert_transfer(TRANSFER)
            [entry_id] = await tx.append_ledger([ENTRY])
            await tx.insert_transfer(dataclasses.replace(TRANSFER, transfer_id="t-2"))
        with sqlite3.connect(path) as db:
            db.execute("UPDATE ledger SET action_type = 'Bogus' WHERE entry_id = ?", (entry_id,))
        async with store.transaction() as tx:
            await tx.insert_transfer(dataclasses.replace(TRANSFER, transfer_id="t-3"))
        feed = ChangeFeed(store, poll_seconds=3600)
        for kinds in ((), (ChangeKind.TRANSFER, ChangeKind.LEDGER_ENTRY_CHANGED)):
            watched = feed.follow(0, kinds)
            got = [await asyncio.wait_for(anext(watched), 10) for _ in range(3 if not kinds else 2)]
            assert [c.position for c in got] == ([1, 2, 3] if not kinds else [1, 3])
            with pytest.raises(GatewayError) as caught:
                await asyncio.wait_for(anext(watched), 10)
            assert caught.value.code is ResponseCode.INTERNAL_ERROR
            assert "first change after position 3 cannot be read" in caught.value.message
            assert "'Bogus' is not a valid ActionType" in caught.value.message
            assert feed.watchers == 0
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_watch_of_some_kinds_receives_the_changes_before_a_transfer_change_it_cannot_decode(
    tmp_path: Path,
) -> None:
    """A transfer row changed by hand so that its change cannot be decoded, after a ledger change: a watch of
    transfers and ledger entries receives the ledger change before it too, not only the changes before the
    first transfer. The read one change at a time looked for the next transfer across the whole span of a
    filtered read, hit the undecodable one, and refused the lot, the ledger change before it with it."""
    path = tmp_path / "g.db"
    store = await SQLiteStore.open(path)
    try:
        async with store.transaction() as tx:
            await tx.insert_transfer(TRANSFER)
            await tx.append_ledger([ENTRY])
        with sqlite3.connect(path) as db:
            db.execute("UPDATE transfers SET role = 'Bogus' WHERE transfer_id = ?", (TRANSFER.transfer_id,))
        feed = ChangeFeed(store, poll_seconds=3600)
        for kinds in ((), (ChangeKind.TRANSFER, ChangeKind.LEDGER_ENTRY)):
            watched = feed.follow(0, kinds)
            got = [await asyncio.wait_for(anext(watched), 10) for _ in range(2)]
            assert [(c.position, c.kind) for c in got] == [(1, ChangeKind.TRANSFER), (2, ChangeKind.LEDGER_ENTRY)]
            with pytest.raises(GatewayError) as caught:
                await asyncio.wait_for(anext(watched), 10)
            assert caught.value.code is ResponseCode.INTERNAL_ERROR
            assert "first change after position 2 cannot be read" in caught.value.message
            assert feed.watchers == 0
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_transfer_change_whose_terms_are_gone_is_refused_by_position_after_every_change_before_it(
    tmp_path: Path,
) -> None:
    """A repair by hand deletes a transfer's row of ``transfer_terms``: its changes, which leave their terms to
    that table, cannot be read (the store refuses them with INTERNAL_ERROR, not a ValueError). The watcher still
    receives every change before the first of them, then the refusal naming where it stopped; it received none
    of the batch, on every resume."""
    path = tmp_path / "g.db"
    store = await SQLiteStore.open(path)
    try:
        async with store.transaction() as tx:
            await tx.insert_transfer(TRANSFER)
            await tx.append_ledger([ENTRY])
            await tx.insert_transfer(dataclasses.replace(TRANSFER, transfer_id="t-2"))
        with sqlite3.connect(path) as db:
            assert db.execute("DELETE FROM transfer_terms WHERE transfer_id = 't-2'").rowcount == 1
        feed = ChangeFeed(store, poll_seconds=3600)
        for kinds in ((), (ChangeKind.TRANSFER, ChangeKind.LEDGER_ENTRY)):
            watched = feed.follow(0, kinds)
            got = [await asyncio.wait_for(anext(watched), 10) for _ in range(2)]
            assert [c.position for c in got] == [1, 2]
            with pytest.raises(GatewayError) as caught:
                await asyncio.wait_for(anext(watched), 10)
            assert caught.value.code is ResponseCode.INTERNAL_ERROR
            assert "first change after position 2 cannot be read" in caught.value.message
            assert "transfer 't-2' has no terms" in caught.value.message
            assert feed.watchers == 0
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_watcher_resuming_after_a_change_since_damaged_receives_the_changes_after_it(tmp_path: Path) -> None:
    """A watcher received the change of transfer t-2, and its digest; then a repair by hand damaged that
    transfer's terms, so the change cannot be read any more. Resuming after it with its digest still works: the
    digest is checked from the row as stored, and the changes after it arrive; the check used to read the change
    itself, and refused the resume, for good."""
    path = tmp_path / "g.db"
    store = await SQLiteStore.open(path)
    try:
        async with store.transaction() as tx:
            await tx.insert_transfer(TRANSFER)
            await tx.insert_transfer(dataclasses.replace(TRANSFER, transfer_id="t-2"))
            await tx.append_ledger([ENTRY])
        received = await everything(store)
        assert [c.position for c in received] == [1, 2, 3]
        with sqlite3.connect(path) as db:
            assert db.execute("UPDATE transfer_terms SET terms = '{' WHERE transfer_id = 't-2'").rowcount == 1
        feed = ChangeFeed(store, poll_seconds=3600)
        resumed = feed.follow(2, (), after_digest=received[1].digest)
        after = await asyncio.wait_for(anext(resumed), 10)
        assert (after.position, after.digest) == (3, received[2].digest)
        with pytest.raises(GatewayError) as caught:  # a digest of another change is still refused
            await anext(feed.follow(2, (), after_digest=received[2].digest))
        assert caught.value.field == "after_digest"
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_watcher_left_behind_by_a_prune_is_refused_not_led_past_the_pruned_changes(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "g.db")
    try:
        async with store.transaction() as tx:
            for i in range(3):
                await tx.insert_transfer(dataclasses.replace(TRANSFER, transfer_id=f"t-{i}"))
        changes = await everything(store)
        feed = ChangeFeed(store, batch=1, poll_seconds=3600)
        behind = feed.follow(0)
        assert (await anext(behind)).position == 1
        async with store.transaction() as tx:
            await tx.prune_changes(2, 100)
        # Its next read finds position 2 gone: refused, naming where to continue.
        with pytest.raises(GatewayError) as caught:
            await anext(behind)
        assert (caught.value.code, caught.value.field) == (ResponseCode.CHANGES_PRUNED, "after_position")
        assert "watch from position 2" in caught.value.message
        # A watcher that had received position 2 resumes after it, with its digest, which the prune kept.
        at_cut = feed.follow(2, after_digest=changes[1].digest)
        assert await anext(at_cut) == changes[2]
        await at_cut.aclose()
        for after, digest, code, field in (
            (0, b"", ResponseCode.CHANGES_PRUNED, "after_position"),
            (1, changes[0].digest, ResponseCode.CHANGES_PRUNED, "after_position"),
            (2, changes[0].digest, ResponseCode.INVALID_ARGUMENT, "after_digest"),
        ):
            with pytest.raises(GatewayError) as caught:
                await anext(feed.follow(after, after_digest=digest))
            assert (caught.value.code, caught.value.field) == (code, field), after
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_an_append_that_fails_partway_leaves_no_entry_behind_in_a_transaction_that_goes_on(
    tmp_path: Path,
) -> None:
    """A failure among entries appended together rolls back those already written, with nothing named for the
    triggers to stand aside from: the transaction that caught it goes on and commits a ledger, feed and marks
    that agree."""
    path = tmp_path / "g.db"
    store = await SQLiteStore.open(path)
    try:
        with sqlite3.connect(path) as db:
            db.execute(
                "CREATE TRIGGER refuse_third BEFORE INSERT ON ledger WHEN NEW.transfer_id = 't-2'"
                " BEGIN SELECT RAISE(ABORT, 'refused by hand'); END"
            )
        async with store.transaction() as tx:
            with pytest.raises(sqlite3.IntegrityError):
                await tx.append_ledger([dataclasses.replace(ENTRY, transfer_id=f"t-{i}") for i in range(4)])
            [kept] = await tx.append_ledger([dataclasses.replace(ENTRY, transfer_id="t-kept")])
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT entry_id, transfer_id FROM ledger").fetchall() == [(kept, "t-kept")]
            assert db.execute("SELECT COUNT(*) FROM ledger_appending").fetchone() == (0,)
        assert _recorded(path) == ([str(kept)], [kept])
    finally:
        await store.close()
