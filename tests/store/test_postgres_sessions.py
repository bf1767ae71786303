"""The PostgreSQL store's sessions, on the tests' server: a replica frozen in the middle of a write transaction
(its process stopped, or cut off from the server) holds the other replicas' writes up for the idle timeout at
most, since the server then ends its session, and with it the store's write lock."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time

import asyncpg
import pytest

from gateway.config import ConfigError
from gateway.domain.transfer import Transfer, TransferRole, TransferState
from gateway.node import _open_store
from gateway.store import postgres as pg
from gateway.store.pg_migrations import WRITE_LOCK
from gateway.store.postgres import PostgresStore
from tests import postgres
from tests.gateway.test_change_feed import TERMS
from tests.store.test_store_contract import entry

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.asyncio
async def test_a_replica_frozen_mid_transaction_holds_the_others_up_for_the_idle_timeout_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = postgres.admin_url()
    monkeypatch.setattr(pg, "IDLE_IN_TRANSACTION_TIMEOUT", "1s")
    url = await postgres.create_database(admin, "idle")
    frozen = await PostgresStore.open(url)
    live = await PostgresStore.open(url)
    entered, thawed = asyncio.Event(), asyncio.Event()

    async def freezes() -> None:
        async with frozen.transaction() as tx:
            await tx.put_setting("frozen", "written", NOW)
            entered.set()
            await thawed.wait()  # no statement comes, as from a stopped process

    try:
        stuck = asyncio.create_task(freezes())
        await entered.wait()
        began = time.monotonic()
        async with asyncio.timeout(30):
            async with live.transaction() as tx:
                await tx.put_setting("live", "written", NOW)
        waited = time.monotonic() - began
        assert 0.5 < waited < 20, waited  # held up by the frozen transaction's lock, then let through
        thawed.set()
        with pytest.raises(Exception) as caught:
            await stuck
        # The frozen replica learns its transaction is gone as a transient failure, to do again.
        assert frozen.is_transient(caught.value), repr(caught.value)
        async with live.read() as tx:
            assert (await tx.get_setting("frozen"), await tx.get_setting("live")) == (None, "written")
    finally:
        await frozen.close()
        await live.close()
        await postgres.drop_databases(admin, [url])


@pytest.mark.asyncio
async def test_a_value_the_driver_cannot_encode_is_a_bug_not_a_failure_to_retry() -> None:
    admin = postgres.admin_url()
    url = await postgres.create_database(admin, "encode")
    store = await PostgresStore.open(url)
    try:
        with pytest.raises(Exception) as caught:
            async with store.read() as tx:
                await tx.list_ledger(after=2**70, limit=1)
        # Retrying would meet it again for ever (an operator call would be UNAVAILABLE, a partner's statement
        # never taken in): a bug, not the database failing now.
        assert not store.is_transient(caught.value), repr(caught.value)
        # The same for the driver's own refusals of what it is given, while a connection it lost is transient.
        assert not store.is_transient(asyncpg.exceptions.ClientConfigurationError("a setting it cannot take"))
        assert store.is_transient(asyncpg.InterfaceError("cannot perform operation: connection is closed"))
        assert store.is_transient(ConnectionResetError("the server went away"))
    finally:
        await store.close()
        await postgres.drop_databases(admin, [url])


@pytest.mark.asyncio
async def test_a_replica_that_cannot_take_the_write_lock_at_start_is_told_to_start_again_not_to_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another replica holds the write lock (a migration, a long transaction), and this start must sum the totals
    # again (a repair bypassed their triggers): it runs out of time waiting. The database is this gateway's; the
    # refusal says to start again, not to name another database.
    admin = postgres.admin_url()
    url = await postgres.create_database(admin, "locked")
    store = await PostgresStore.open(url)
    async with store.transaction() as tx:
        await tx.append_ledger([entry(1, 10)])
    await store.close()
    monkeypatch.setattr(pg, "LOCK_TIMEOUT", "1s")
    holder = await asyncpg.connect(url)
    try:
        await holder.execute("TRUNCATE ledger")
        await holder.execute("SELECT pg_advisory_lock($1)", WRITE_LOCK)
        with pytest.raises(ConfigError) as refused:
            await _open_store(url)
        message = str(refused.value)
        assert "start this one again later" in message and "name a database of its own" not in message
        assert "LockNotAvailableError" in message
        await holder.execute("SELECT pg_advisory_unlock($1)", WRITE_LOCK)
        await (await _open_store(url)).close()  # the lock released, the same database starts
    finally:
        await holder.close()
        await postgres.drop_databases(admin, [url])


@pytest.mark.asyncio
async def test_a_replica_starts_without_the_write_lock_unless_the_totals_need_summing_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Summing the totals again holds every replica's writes up for as long as it takes (the whole ledger): a start
    # does it only when the totals differ from their rows. While another session holds the write lock, a start
    # whose totals agree goes through, with totals of every kind, a group of the summary (its partner, years and
    # authorization as well as its sums) and a usage the triggers brought back to nought among them; one whose
    # totals a repair broke, in either direction, waits for the lock, then mends them.
    caplog.set_level(logging.WARNING, logger="gateway.store.postgres")  # whatever an earlier test left
    admin = postgres.admin_url()
    url = await postgres.create_database(admin, "totals")
    store = await PostgresStore.open(url)
    proposed = Transfer("t-1", TransferRole.INITIATING, TransferState.CHECKED, TERMS, (), NOW, NOW)
    async with store.transaction() as tx:
        await tx.append_ledger([entry(1, 10), entry(11, 30)])
        await tx.insert_transfer(proposed)
        await tx.insert_transfer(dataclasses.replace(proposed, transfer_id="t-2"))
        await tx.update_transfer(dataclasses.replace(proposed, transfer_id="t-2", state=TransferState.CANCELLED))
        await tx.add_authorization_tie("A-1", "use-1", 7, NOW)

    async def kept(opened: PostgresStore) -> tuple[object, ...]:
        async with opened.read() as tx:
            return (
                await tx.ledger_totals(),
                await tx.first_transfer_quantity_used(TERMS.authorization_id),
                await tx.first_transfer_quantity_used("A-1"),
            )

    expected = await kept(store)
    await store.close()
    assert expected[1] == TERMS.quantity and expected[2] == 7  # t-2's usage went back to nought
    holder = await asyncpg.connect(url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", WRITE_LOCK)
        started = await asyncio.wait_for(PostgresStore.open(url), 10)
        await started.close()
        assert "summing them again" not in caplog.text
        for repair in (
            "TRUNCATE ledger_totals",
            "UPDATE ledger_totals SET low = low + 1",
            "UPDATE ledger_totals SET partner = 'XXX'",
            "UPDATE ledger_totals SET year_of_use = 1999",
            "INSERT INTO authorization_usage VALUES ('A-9', 5)",
            "UPDATE authorization_usage SET first_quantity = first_quantity + 1",
            "DELETE FROM authorization_usage",
            "INSERT INTO authorization_tie_totals VALUES ('A-9', 5)",
            "DELETE FROM authorization_tie_totals",
        ):
            async with holder.transaction():  # as a repair with the triggers off would leave them
                await holder.execute("SET LOCAL session_replication_role = replica")
                await holder.execute(repair)
            starting = asyncio.create_task(PostgresStore.open(url))
            await asyncio.sleep(0.5)
            assert not starting.done(), repair  # it waits for the write lock
            await holder.execute("SELECT pg_advisory_unlock($1)", WRITE_LOCK)
            started = await asyncio.wait_for(starting, 10)
            try:
                assert await kept(started) == expected, repair
            finally:
                await started.close()
            assert "summing them again" in caplog.text, repair
            caplog.clear()
            await holder.execute("SELECT pg_advisory_lock($1)", WRITE_LOCK)
    finally:
        await holder.close()
        await postgres.drop_databases(admin, [url])


@pytest.mark.asyncio
async def test_a_ledger_repair_by_hand_waits_for_the_gateway_s_writer_without_a_deadlock() -> None:
    # Every ledger trigger takes the write lock before it touches a row of its own: a session repairing the
    # ledger by hand queues behind the gateway's writer, which then writes those rows itself without waiting.
    admin = postgres.admin_url()
    url = await postgres.create_database(admin, "repair")
    store = await PostgresStore.open(url)
    hand, looking = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        async with store.transaction() as tx:
            [first] = await tx.append_ledger([entry(1, 10)])
        async with store.transaction() as tx:  # holds the write lock until it commits
            repair = asyncio.create_task(hand.execute("UPDATE ledger SET note = 'by hand' WHERE entry_id = $1", first))
            waiting = "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            while not await looking.fetchval(waiting):
                assert not repair.done(), repair
                await asyncio.sleep(0.01)
            [second] = await tx.append_ledger([entry(11, 30)])  # the same Party, action type and serial space
        await asyncio.wait_for(repair, 10)
        async with store.read() as tx:
            assert [(e.entry_id, e.note) for e in await tx.list_ledger()] == [(first, "by hand"), (second, "")]
            assert [t.quantity for t in await tx.ledger_totals()] == [30]
    finally:
        await hand.close()
        await looking.close()
        await store.close()
        await postgres.drop_databases(admin, [url])


@pytest.mark.asyncio
async def test_reads_go_on_while_more_writers_than_the_pool_holds_wait_for_another_replica_s_write_lock() -> None:
    # Another replica holds the write lock (a long transfer, or a process frozen mid-transaction) while this one has
    # more write calls waiting than its pool has connections. Reads take no lock: they must still be answered at
    # once, not queue for a connection behind writers that cannot run anyway.
    admin = postgres.admin_url()
    url = await postgres.create_database(admin, "starved")
    store = await PostgresStore.open(url, max_size=4)
    holder = await asyncpg.connect(url)
    writers: list[asyncio.Task[None]] = []

    async def write(index: int) -> None:
        async with store.transaction() as tx:
            await tx.put_setting(f"writer-{index}", "written", NOW)

    try:
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
        writers = [asyncio.create_task(write(i)) for i in range(12)]
        await asyncio.sleep(0.5)  # every writer is waiting
        async with asyncio.timeout(3), store.read() as tx:
            assert await tx.get_setting("writer-0") is None
        assert not any(writer.done() for writer in writers)
        await holder.execute("ROLLBACK")
        async with asyncio.timeout(30):
            await asyncio.gather(*writers)
        async with store.read() as tx:
            assert [await tx.get_setting(f"writer-{i}") for i in range(12)] == ["written"] * 12
    finally:
        for writer in writers:
            writer.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        await holder.close()
        await store.close()
        await postgres.drop_databases(admin, [url])
