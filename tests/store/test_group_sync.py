"""SQLite durable commits share syncs of the write-ahead log (`gateway.store.sqlite.GroupSync`).

The disk is the boundary here: ``os.fsync`` is replaced by one that waits until
the test lets it finish, so a test can see what returns before the log is on disk and what waits for it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.store.base import OutboxKind
from gateway.store.sqlite import SQLiteStore, SyncFailed

NOW = dt.datetime(2026, 12, 4, tzinfo=dt.UTC)


class HeldDisk:
    """``os.fsync`` that blocks (in the worker thread) until released, and counts its calls."""

    def __init__(self, real: Callable[[int], None]) -> None:
        self.real = real
        self.armed = False
        """Off while a store opens (it syncs its folder): only the log's syncs are held and counted."""
        self.release = threading.Event()
        self.calls = 0
        self.fail = False

    def fsync(self, fd: int) -> None:
        if not self.armed:
            self.real(fd)
            return
        self.calls += 1
        self.release.wait(timeout=10)
        if self.fail:
            raise OSError(5, "Input/output error")


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldDisk]:
    held = HeldDisk(os.fsync)
    monkeypatch.setattr(os, "fsync", held.fsync)
    yield held
    held.release.set()


@pytest_asyncio.fixture
async def store(tmp_path: Path, disk: HeldDisk) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore.open(tmp_path / "gateway.db")
    disk.armed = True
    try:
        yield opened
    finally:
        disk.release.set()
        await opened.close()


async def write(store: SQLiteStore, name: str, *, durable: bool = True) -> None:
    async with store.transaction(durable=durable) as tx:
        await tx.put_setting(name, "1", NOW)


async def read(store: SQLiteStore, name: str) -> str | None:
    async with store.read() as tx:
        return await tx.get_setting(name)


async def settle() -> None:
    """Let every task run as far as it can."""
    for _ in range(20):
        await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_a_durable_commit_returns_only_once_the_log_is_synced(store: SQLiteStore, disk: HeldDisk) -> None:
    committing = asyncio.create_task(write(store, "a"))
    await settle()
    assert not committing.done()
    assert disk.calls == 1
    disk.release.set()
    await asyncio.wait_for(committing, 5)


@pytest.mark.asyncio
async def test_a_read_of_an_unsynced_durable_commit_waits_for_its_sync(store: SQLiteStore, disk: HeldDisk) -> None:
    committing = asyncio.create_task(write(store, "a"))
    await settle()
    reading = asyncio.create_task(read(store, "a"))
    bookkeeping = asyncio.create_task(write(store, "b", durable=False))
    await settle()
    # Both saw the commit, so neither may hand on what it read before the disk has it.
    assert not reading.done() and not bookkeeping.done()
    disk.release.set()
    assert await asyncio.wait_for(reading, 5) == "1"
    await asyncio.wait_for(asyncio.gather(committing, bookkeeping), 5)


@pytest.mark.asyncio
async def test_work_that_saw_no_unsynced_durable_commit_does_not_wait(store: SQLiteStore, disk: HeldDisk) -> None:
    await asyncio.wait_for(write(store, "b", durable=False), 5)
    assert await asyncio.wait_for(read(store, "b"), 5) == "1"
    assert disk.calls == 0


@pytest.mark.asyncio
async def test_commits_waiting_together_share_one_sync(store: SQLiteStore, disk: HeldDisk) -> None:
    first = asyncio.create_task(write(store, "first"))
    await settle()
    assert disk.calls == 1
    others = [asyncio.create_task(write(store, f"k{i}")) for i in range(10)]
    await settle()
    assert disk.calls == 1  # the ten wait for the sync after the one running
    disk.release.set()
    await asyncio.wait_for(asyncio.gather(first, *others), 5)
    assert disk.calls == 2


@pytest.mark.asyncio
async def test_synced_once_waits_for_the_disk_once_at_the_end_of_the_block(store: SQLiteStore, disk: HeldDisk) -> None:
    reached: list[str] = []

    async def batch() -> None:
        async with store.synced_once():
            for name in ("a", "b", "c"):
                await write(store, name)
                assert await read(store, name) == "1"
                reached.append(name)

    task = asyncio.create_task(batch())
    await settle()
    assert reached == ["a", "b", "c"]  # no commit or read inside the block waited for the disk
    assert not task.done()  # its end does
    outside = asyncio.create_task(read(store, "a"))
    await settle()
    assert not outside.done()  # another task reading those commits waits as always
    disk.release.set()
    await asyncio.wait_for(asyncio.gather(task, outside), 5)


@pytest.mark.asyncio
async def test_a_failed_sync_is_final(store: SQLiteStore, disk: HeldDisk) -> None:
    disk.fail = True
    disk.release.set()
    with pytest.raises(SyncFailed, match="check it and restart the gateway"):
        await asyncio.wait_for(write(store, "a"), 5)
    # The next sync might succeed (the kernel may have dropped what it could not write): nothing after the
    # failure is trusted as durable, so every transaction is refused until a restart.
    disk.fail = False
    with pytest.raises(SyncFailed):
        await write(store, "b", durable=False)
    with pytest.raises(SyncFailed):
        await read(store, "a")
    assert disk.calls == 1


@pytest.mark.asyncio
async def test_close_after_a_failed_sync_still_closes(tmp_path: Path, disk: HeldDisk) -> None:
    opened = await SQLiteStore.open(tmp_path / "gateway.db")
    disk.armed = True
    disk.fail = True
    disk.release.set()
    with pytest.raises(SyncFailed):
        await write(opened, "a")
    await opened.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened._db.execute("SELECT 1")  # the connection itself, past the store's own refusal
    await opened.close()  # twice: the log's descriptor number is not closed again


@pytest.mark.asyncio
async def test_a_task_started_inside_synced_once_waits_for_its_own_commits(store: SQLiteStore, disk: HeldDisk) -> None:
    async with store.synced_once():
        child = asyncio.create_task(write(store, "child"))
        await settle()
        # The child inherited the block's context but not its promise: its commit waits for the disk.
        assert not child.done()
        disk.release.set()
        await asyncio.wait_for(child, 5)


@pytest.mark.asyncio
async def test_a_write_transaction_that_changed_no_row_is_a_read(store: SQLiteStore, disk: HeldDisk) -> None:
    with store.commits.subscribe() as woken:
        async with store.transaction() as tx:
            assert await tx.get_setting("nothing") is None
        # Nothing written: no sync to wait for, and no follower of the change feed woken to read again.
        assert disk.calls == 0
        assert not woken.is_set()
        empty_after_write = asyncio.create_task(write(store, "a"))
        await settle()
        woken.clear()

        async def look() -> None:
            async with store.transaction() as tx:
                await tx.get_setting("a")

        # It still waits for the durable commit it could read, like a read.
        looking = asyncio.create_task(look())
        await settle()
        assert not looking.done() and not woken.is_set()
        disk.release.set()
        await asyncio.wait_for(asyncio.gather(empty_after_write, looking), 5)
        assert disk.calls == 1
        await write(store, "b")
        assert woken.is_set()


@pytest.mark.asyncio
async def test_a_commit_that_queues_a_message_wakes_the_outbox_before_its_sync(
    store: SQLiteStore, disk: HeldDisk
) -> None:
    async def queue(message_id: str) -> None:
        async with store.transaction() as tx:
            await tx.enqueue(
                receiver="CHE", message_id=message_id, kind=OutboxKind.PROPOSAL, transfer_id="t", body=b"x", now=NOW
            )

    with store.enqueued.subscribe() as woken:
        await write(store, "a", durable=False)
        assert not woken.is_set()  # nothing queued
        queueing = asyncio.create_task(queue("m1"))
        await settle()
        # The outbox worker may claim and seal while the disk works...
        assert woken.is_set() and not queueing.done() and disk.calls == 1

        async def claim() -> list[str]:
            async with store.transaction(durable=False) as tx:
                heads = await tx.claim_lane_heads(NOW, 10, owner="me", until=NOW + dt.timedelta(minutes=1))
            return [h.message_id for h in heads]

        # ...but what it claimed is handed on only once the commit that queued it is durable.
        claiming = asyncio.create_task(claim())
        await settle()
        assert not claiming.done()
        disk.release.set()
        assert await asyncio.wait_for(claiming, 5) == ["m1"]
        await asyncio.wait_for(queueing, 5)


@pytest.mark.asyncio
async def test_a_durable_commit_does_not_wait_for_the_event_loop_s_shared_threads(tmp_path: Path) -> None:
    # Other work (mapping a batch, say) may hold every thread of the loop's default executor for seconds.
    loop = asyncio.get_running_loop()
    store = await SQLiteStore.open(tmp_path / "gateway.db")
    free = threading.Event()
    busy = [loop.run_in_executor(None, free.wait, 30) for _ in range(64)]
    try:
        await asyncio.wait_for(write(store, "a"), 10)
        assert not any(task.done() for task in busy)
    finally:
        free.set()
        await asyncio.gather(*busy)
        await store.close()


@pytest.mark.asyncio
async def test_closing_a_store_whose_disk_does_not_answer_never_blocks_the_event_loop(
    tmp_path: Path, disk: HeldDisk
) -> None:
    store = await SQLiteStore.open(tmp_path / "gateway.db")
    disk.armed = True
    committing = asyncio.create_task(write(store, "a"))
    await settle()
    assert disk.calls == 1  # the sync hangs
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(tick())
    begin = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.close(), 0.3)  # waits for the sync, then gives up
    await asyncio.sleep(0.1)
    elapsed = asyncio.get_running_loop().time() - begin
    assert elapsed < 2 and ticks >= 10  # the loop ran on while the disk held its sync
    ticking.cancel()
    disk.release.set()
    with pytest.raises((asyncio.CancelledError, SyncFailed, sqlite3.Error)):
        committing.cancel()
        await committing
