"""The Store API's contract, run on both backends: an SQLite file and a fresh PostgreSQL database per test.

Each test states what a caller relies on (ordering, conflicts that leave the transaction usable, rollback,
64-bit values, a gap-free message log, leases, write transactions that never interleave) and checks that both
stores keep it. The PostgreSQL cases use the server named by ``CARBON_GATEWAY_TEST_POSTGRES``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from gateway.domain import ranges
from gateway.domain.blocks import MAX_SERIAL, SerialSpace, UnitBlock
from gateway.domain.canonical import ActionSubtype
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.reconciliation import Status
from gateway.domain.records import (
    Account,
    AccountType,
    ActionType,
    LedgerEntry,
    Purpose,
)
from gateway.domain.statements import ChannelState
from gateway.domain.transfer import Transfer, TransferRole, TransferState
from gateway.store import codec, open_store
from gateway.store.base import (
    BlockStatus,
    ChangeKind,
    IdempotentResult,
    LogKind,
    NewBlock,
    OutboxKind,
    OutboxState,
    PrunedChanges,
    ReconciliationRun,
    RunRole,
    SchemaTooNew,
    Store,
    StoreConflict,
    Transaction,
    TransferHead,
)
from gateway.store.migrations import LEDGER_COLUMNS, MIGRATIONS
from gateway.store.pg_migrations import PG_MIGRATIONS
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import APPENDED_TOGETHER_FROM
from tests import postgres
from tests.domain.test_ledger_cases import ledger_totals as ledger_sums
from tests.gateway.test_change_feed import TERMS

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
SPACE = SerialSpace("CCER", "CN-CCER", "")
SPACE2 = SerialSpace("CCER", "CN-CCER", "second")
BIG = 2**61  # serials and quantities are 64-bit on both backends
TOP = 2**63 - 2  # the largest serial

Opener = Callable[[], Awaitable[Store]]


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens (again) one store: the same SQLite file, or the same fresh PostgreSQL database."""
    if request.param == "sqlite":
        location: str | Path = tmp_path / "store.db"
        yield lambda: open_store(location)
        return
    admin = postgres.admin_url()
    url = await postgres.create_database(admin, "contract")
    try:
        yield lambda: open_store(url)
    finally:
        await postgres.drop_databases(admin, [url])


@pytest_asyncio.fixture
async def store(opener: Opener) -> AsyncIterator[Store]:
    opened = await opener()
    try:
        yield opened
    finally:
        await opened.close()


def block(start: int, end: int, space: SerialSpace = SPACE, **extra: object) -> UnitBlock:
    return UnitBlock(space=space, start=start, end=end, vintage=2025, project_id="P-1", **extra)  # type: ignore[arg-type]


def entry(start: int, end: int, space: SerialSpace = SPACE) -> LedgerEntry:
    return LedgerEntry(
        entry_id=0,
        action_date=NOW,
        action_type=ActionType.FIRST_TRANSFER,
        transfer_id=f"t-{start}",
        block=block(start, end, space, first_transferred=True, first_transferring_party="CHN"),
        cooperative_approach="CA-1",
        authorization_id="A-1",
        first_transferring_party="CHN",
        transferring_party="CHN",
        acquiring_party="CHE",
        purpose=Purpose.NDC,
    )


@pytest.mark.asyncio
async def test_a_conflict_is_reported_and_the_transaction_goes_on(store: Store) -> None:
    """A duplicate raises StoreConflict, and the same transaction still commits what came before and after
    (on PostgreSQL a failed statement would abort the whole transaction)."""
    async with store.transaction() as tx:
        await tx.insert_account(Account("acc-1", "Owner", AccountType.PROJECT_OWNER))
        with pytest.raises(StoreConflict):
            await tx.insert_account(Account("acc-1", "Other", AccountType.PROJECT_OWNER))
        await tx.insert_account(Account("acc-2", "Second", AccountType.COMPLIANCE_ENTITY))
    async with store.read() as tx:
        assert await tx.get_account("acc-1") == Account("acc-1", "Owner", AccountType.PROJECT_OWNER)
        assert await tx.get_account("acc-2") == Account("acc-2", "Second", AccountType.COMPLIANCE_ENTITY)


@pytest.mark.asyncio
async def test_an_exception_rolls_everything_back_and_a_savepoint_alone(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.insert_account(Account("gone", "Owner", AccountType.PROJECT_OWNER))
            raise RuntimeError("abandon")
    async with store.transaction() as tx:
        await tx.insert_account(Account("kept", "Owner", AccountType.PROJECT_OWNER))
        with pytest.raises(RuntimeError):
            async with tx.savepoint():
                await tx.insert_account(Account("inner", "Owner", AccountType.PROJECT_OWNER))
                raise RuntimeError("inner only")
    async with store.read() as tx:
        assert await tx.get_account("gone") is None
        assert await tx.get_account("inner") is None
        assert await tx.get_account("kept") is not None


@pytest.mark.asyncio
async def test_blocks_keep_64_bit_serials_and_are_listed_in_serial_order(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.insert_account(Account("acc", "Owner", AccountType.PROJECT_OWNER))
        late = await tx.insert_block(block(BIG, BIG + 99), account_id="acc", status=BlockStatus.HELD)
        early = await tx.insert_block(block(1, 10), account_id="acc", status=BlockStatus.RESERVED, transfer_id="t")
        await tx.insert_block(block(11, 20), account_id="acc", status=BlockStatus.SUPERSEDED, parent_id=early)
    async with store.read() as tx:
        listed = await tx.list_blocks()
        assert [(b.block.start, b.block.end, b.status) for b in listed] == [
            (1, 10, BlockStatus.RESERVED),
            (BIG, BIG + 99, BlockStatus.HELD),
        ]
        assert (await tx.get_block(late)) == listed[1]
        # The guarded block that starts before the range and reaches into it is found, as are those inside.
        guarded = await tx.guarded_blocks(SPACE, 5, BIG)
        assert [b.block_id for b in guarded] == [early, late]
        assert [b.block_id for b in await tx.guarded_blocks(SPACE, 5, BIG, limit=0)] == [early]
        assert [b.block_id for b in await tx.blocks_of_transfer("t", BlockStatus.RESERVED)] == [early]
    async with store.transaction() as tx:
        assert await tx.set_transfer_blocks_status("t", BlockStatus.RESERVED, BlockStatus.DEBITED) == 1


@pytest.mark.asyncio
async def test_ledger_sums_past_the_64_bit_range_and_finds_overlapping_units(store: Store) -> None:
    async with store.transaction() as tx:
        ids = await tx.append_ledger(
            [entry(1, BIG), entry(BIG + 1, 2 * BIG), entry(2 * BIG + 1, 2 * BIG + 10), entry(1, TOP, SPACE2)]
        )
    assert ids == sorted(ids) and len(set(ids)) == 4
    async with store.read() as tx:
        totals = await tx.ledger_totals()
        assert [t.quantity for t in totals] == [2 * BIG + 10 + TOP]  # more than 2^63 - 1
        assert totals[0].partner == "CHE" and totals[0].action_year == 2026
        found = await tx.ledger_of_units("CHN", SPACE, BIG, BIG + 5)
        assert [(e.block.start, e.block.end) for e in found] == [(1, BIG), (BIG + 1, 2 * BIG)]
        overlapping = await tx.first_transfers_overlapping("CHN", SPACE, 2 * BIG, 2 * BIG + 1)
        assert [(s, e) for _, _, s, e in overlapping] == [(BIG + 1, 2 * BIG), (2 * BIG + 1, 2 * BIG + 10)]
        assert [e.entry_id async for e in tx.ledger_until(NOW, batch=2)] == ids
        assert await tx.reconciliation_pending() == 4  # the trigger noted every new entry


@pytest.mark.asyncio
async def test_the_message_log_is_numbered_without_gaps_and_refuses_rewrites(store: Store) -> None:
    def append(tx_index: int) -> dict[str, object]:
        return dict(
            direction="out",
            peer="CHE",
            message_id=f"m{tx_index}",
            kind=LogKind.STATEMENT,
            form="protobuf",
            envelope=bytes([tx_index]),
            now=NOW,
        )

    async with store.transaction() as tx:
        assert await tx.append_log(**append(1)) == 1  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.append_log(**append(2))  # type: ignore[arg-type]
            raise RuntimeError("rolled back")
    async with store.transaction() as tx:
        assert await tx.append_log(**append(3)) == 2  # type: ignore[arg-type]
        assert await tx.fold_log_tree() == 2
    async with store.read() as tx:
        assert [e.message_id for e in await tx.list_log()] == ["m1", "m3"]
        assert await tx.log_tree_pending() == 0


@pytest.mark.asyncio
async def test_a_commit_that_queues_a_message_is_announced_to_the_outbox_and_no_other_is(store: Store) -> None:
    with store.enqueued.subscribe() as enqueued, store.commits.subscribe() as committed:
        async with store.transaction() as tx:
            await tx.put_setting("a", "1", NOW)
        assert committed.is_set() and not enqueued.is_set()
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.enqueue(
                    receiver="CHE", message_id="gone", kind=OutboxKind.PROPOSAL, transfer_id="t", body=b"x", now=NOW
                )
                raise RuntimeError("rolled back")
        assert not enqueued.is_set()  # nothing was queued after all
        async with store.transaction() as tx:
            await tx.enqueue(
                receiver="CHE", message_id="kept", kind=OutboxKind.PROPOSAL, transfer_id="t", body=b"x", now=NOW
            )
        assert enqueued.is_set()


@pytest.mark.asyncio
async def test_a_postgresql_commit_whose_caller_was_cancelled_meanwhile_is_announced_all_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # SQLite commits and announces with no await between; a PostgreSQL COMMIT is a round trip, during which
    # the caller (an operator call past its deadline) may be cancelled after the server has committed.
    admin = postgres.admin_url()
    url = await postgres.create_database(admin, "cancelled")
    store = await open_store(url)
    real = asyncpg.connection.Connection.execute
    cancelling = False

    async def execute(self: asyncpg.Connection, query: str, *args: object, **kwargs: object) -> str:
        done: str = await real(self, query, *args, **kwargs)
        if query == "COMMIT" and cancelling:
            raise asyncio.CancelledError
        return done

    try:
        monkeypatch.setattr(asyncpg.connection.Connection, "execute", execute)
        with store.enqueued.subscribe() as enqueued:
            with pytest.raises(asyncio.CancelledError):
                async with store.transaction() as tx:
                    await tx.enqueue(
                        receiver="CHE", message_id="m", kind=OutboxKind.PROPOSAL, transfer_id="t", body=b"x", now=NOW
                    )
                    cancelling = True
            cancelling = False
            async with store.read() as tx:
                assert [m.message_id for m in await tx.list_outbox()] == ["m"]  # the server committed it
            assert enqueued.is_set()
    finally:
        await store.close()
        await postgres.drop_databases(admin, [url])


@pytest.mark.asyncio
async def test_outbox_lanes_of_receivers_not_named_are_left_unread_and_unleased(store: Store) -> None:
    """``only`` leaves out the lanes of other receivers: a replica that lacks a partner neither sees nor leases
    its lane, which another replica then claims at once."""
    later = NOW + dt.timedelta(seconds=30)
    async with store.transaction() as tx:
        await tx.enqueue(
            receiver="CHE", message_id="che-0", kind=OutboxKind.PROPOSAL, transfer_id="t", body=b"x", now=NOW
        )
        await tx.enqueue(
            receiver="GBR", message_id="gbr-0", kind=OutboxKind.PROPOSAL, transfer_id="", body=b"", now=NOW
        )
    async with store.transaction() as tx:
        assert [m.message_id for m in await tx.lane_heads(NOW, 10, only={"CHE"})] == ["che-0"]
        assert await tx.lane_heads(NOW, 10, only=()) == []
        assert await tx.next_due_at(only={"SGP"}) is None
        assert await tx.next_due_at(only={"GBR"}) == NOW
        claimed = await tx.claim_lane_heads(NOW, 10, owner="replica-a", until=later, only={"CHE"})
        assert [m.message_id for m in claimed] == ["che-0"]
    async with store.transaction() as tx:
        [gbr] = await tx.claim_lane_heads(NOW, 10, owner="replica-b", until=later)
        assert gbr.message_id == "gbr-0" and gbr.attempts == 0


@pytest.mark.asyncio
async def test_outbox_lanes_put_trust_first_and_leases_keep_a_head_to_one_replica(store: Store) -> None:
    later = NOW + dt.timedelta(seconds=30)
    async with store.transaction() as tx:
        for i, kind in enumerate([OutboxKind.PROPOSAL, OutboxKind.TRUST, OutboxKind.DECISION]):
            await tx.enqueue(receiver="CHE", message_id=f"che-{i}", kind=kind, transfer_id="t", body=b"x", now=NOW)
        await tx.enqueue(
            receiver="GBR", message_id="gbr-0", kind=OutboxKind.PROPOSAL, transfer_id="", body=b"", now=NOW
        )
    async with store.transaction() as tx:
        assert sorted(m.message_id for m in await tx.lane_heads(NOW, 10)) == ["che-1", "gbr-0"]
        # A lane the claimer names as its own in flight is left out, and left unleased.
        assert [
            m.message_id for m in await tx.claim_lane_heads(NOW, 10, owner="replica-a", until=later, skip={"CHE"})
        ] == ["gbr-0"]
        assert [
            m.message_id for m in await tx.claim_lane_heads(NOW, 10, owner="replica-b", until=NOW, skip={"GBR"})
        ] == ["che-1"]
        claimed = await tx.claim_lane_heads(NOW, 10, owner="replica-a", until=later)
        assert sorted(m.message_id for m in claimed) == ["che-1", "gbr-0"]
    async with store.transaction() as tx:
        # The heads are replica A's until its lease ends: B gets nothing, not the lanes' later messages.
        assert await tx.claim_lane_heads(NOW, 10, owner="replica-b", until=later) == []
        assert await tx.next_due_at() == later
        assert await tx.holds_lease(claimed[0].outbox_id, "replica-a")
        assert not await tx.holds_lease(claimed[0].outbox_id, "replica-b")
    async with store.transaction() as tx:
        # An expired lease is taken over; then A's lease is gone and its release changes nothing.
        taken = await tx.claim_lane_heads(later, 10, owner="replica-b", until=later + dt.timedelta(seconds=30))
        assert sorted(m.message_id for m in taken) == ["che-1", "gbr-0"]
        await tx.release_lease(taken[0].outbox_id, "replica-a")
        assert await tx.holds_lease(taken[0].outbox_id, "replica-b")
        await tx.release_lease(taken[0].outbox_id, "replica-b")
        assert not await tx.holds_lease(taken[0].outbox_id, "replica-b")
    async with store.transaction() as tx:
        # A worker that stops ends every lease it holds, and no other replica's.
        assert await tx.release_leases_of("replica-b") == 1
        assert await tx.release_leases_of("replica-b") == 0
        assert not await tx.holds_lease(taken[1].outbox_id, "replica-b")


@pytest.mark.asyncio
async def test_a_lane_stays_with_the_replica_sending_it_when_a_trust_push_overtakes_its_head(store: Store) -> None:
    later = NOW + dt.timedelta(seconds=30)
    async with store.transaction() as tx:
        await tx.enqueue(
            receiver="CHE", message_id="m1", kind=OutboxKind.COMPLETION, transfer_id="t", body=b"x", now=NOW
        )
        [sending] = await tx.claim_lane_heads(NOW, 10, owner="replica-a", until=later)
    async with store.transaction() as tx:
        # A rotation through replica B queues a trust push, which ranks ahead of statements: it is the lane's
        # head now, but A is still sending m1 on that lane.
        await tx.enqueue(receiver="CHE", message_id="t1", kind=OutboxKind.TRUST, transfer_id="", body=b"{}", now=NOW)
        assert [m.message_id for m in await tx.lane_heads(NOW, 10)] == ["t1"]
        assert await tx.claim_lane_heads(NOW, 10, owner="replica-b", until=later) == []
        assert await tx.next_due_at() == later
        # A itself goes on with its lane.
        assert [m.message_id for m in await tx.claim_lane_heads(NOW, 10, owner="replica-a", until=later)] == ["t1"]
    async with store.transaction() as tx:
        await tx.release_lease(sending.outbox_id, "replica-a")
        assert [m.message_id for m in await tx.claim_lane_heads(later, 10, owner="replica-b", until=later)] == ["t1"]


@pytest.mark.asyncio
async def test_a_run_follows_its_head_in_order_up_to_a_statement_not_due_or_leased_elsewhere(store: Store) -> None:
    later = NOW + dt.timedelta(seconds=30)
    async with store.transaction() as tx:
        for i in range(6):
            await tx.enqueue(
                receiver="CHE", message_id=f"m{i}", kind=OutboxKind.PROPOSAL, transfer_id="t", body=b"x", now=NOW
            )
        await tx.enqueue(receiver="GBR", message_id="g0", kind=OutboxKind.PROPOSAL, transfer_id="", body=b"", now=NOW)
        listed = {m.message_id: m for m in await tx.list_outbox()}
        # m4 waits for its backoff: the run stops before it, and m5 stays behind it.
        await tx.reschedule(listed["m4"].outbox_id, code=0, error="", next_attempt_at=later)
    async with store.transaction() as tx:
        [head] = [m for m in await tx.claim_lane_heads(NOW, 10, owner="a", until=later) if m.receiver == "CHE"]
        assert head.message_id == "m0"
        run = await tx.claim_followers(head, 10, now=NOW, owner="a", until=later)
        assert [m.message_id for m in run] == ["m1", "m2", "m3"]  # one lane only, in order, none past m4
        assert all([await tx.holds_lease(m.outbox_id, "a") for m in run])
        assert [m.message_id for m in await tx.claim_followers(head, 2, now=NOW, owner="a", until=later)] == [
            "m1",
            "m2",
        ]
        assert await tx.claim_followers(head, 0, now=NOW, owner="a", until=later) == []
    async with store.transaction() as tx:
        # B leases m2 (as after taking over a lane whose holder died): A's run from m0 stops before it.
        await tx.release_lease(listed["m2"].outbox_id, "a")
        await tx.claim_followers(listed["m1"], 1, now=NOW, owner="b", until=later)
        assert await tx.holds_lease(listed["m2"].outbox_id, "b")
        assert [m.message_id for m in await tx.claim_followers(head, 10, now=NOW, owner="a", until=later)] == ["m1"]


@pytest.mark.asyncio
async def test_no_statement_follows_a_trust_push_in_its_run(store: Store) -> None:
    later = NOW + dt.timedelta(seconds=30)
    async with store.transaction() as tx:
        await tx.enqueue(receiver="CHE", message_id="s1", kind=OutboxKind.PROPOSAL, transfer_id="t", body=b"x", now=NOW)
        await tx.enqueue(receiver="CHE", message_id="t1", kind=OutboxKind.TRUST, transfer_id="", body=b"{}", now=NOW)
        await tx.enqueue(receiver="CHE", message_id="s2", kind=OutboxKind.PROPOSAL, transfer_id="t", body=b"x", now=NOW)
    async with store.transaction() as tx:
        [head] = await tx.claim_lane_heads(NOW, 10, owner="a", until=later)
        assert head.message_id == "t1"  # sent alone: the statements after it may need the key it announces
        assert await tx.claim_followers(head, 10, now=NOW, owner="a", until=later) == []
        statement = next(m for m in await tx.list_outbox() if m.message_id == "s1")
        # Nor does a trust push ride behind a statement.
        assert [m.message_id for m in await tx.claim_followers(statement, 10, now=NOW, owner="a", until=later)] == [
            "s2"
        ]


@pytest.mark.asyncio
async def test_channels_settings_trust_and_idempotency_round_trip(store: Store) -> None:
    async with store.transaction(durable=False) as tx:
        await tx.set_outgoing_channel("CHE", ChannelState(BIG, b"h" * 32))
        await tx.set_outgoing_channel("CHE", ChannelState(BIG + 1, b"i" * 32))
        await tx.put_setting("method", "a", NOW)
        await tx.put_setting("method", "b", NOW)
        await tx.put_trust_document("CHE", 2, b"two", NOW)
        await tx.put_trust_document("CHE", 1, b"one", NOW)
        await tx.put_trust_document("CHE", 1, b"changed", NOW)  # a version is kept as first stored
        await tx.put_idempotent("op", "OpenAccount", "k", IdempotentResult("hash", b"\x00\xff"))
    async with store.read() as tx:
        assert await tx.outgoing_channel("CHE") == ChannelState(BIG + 1, b"i" * 32)
        assert await tx.incoming_channel("CHE") == ChannelState()
        assert await tx.get_setting("method") == "b"
        assert await tx.trust_documents("CHE") == [(1, b"one"), (2, b"two")]
        assert await tx.latest_trust_document("CHE") == (2, b"two")
        assert await tx.get_idempotent("op", "OpenAccount", "k") == IdempotentResult("hash", b"\x00\xff")


@pytest.mark.asyncio
async def test_the_version_a_transfer_was_proposed_under_is_kept(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.record_proposed_version("t-1", "2.0 \u00e9\U0001f600")
    async with store.read() as tx:
        assert await tx.proposed_version("t-1") == "2.0 \u00e9\U0001f600"
        assert await tx.proposed_version("t-2") is None  # proposed before versions were recorded


@pytest.mark.asyncio
async def test_reopening_migrates_nothing_twice_and_both_backends_know_the_same_versions(opener: Opener) -> None:
    assert [v for v, _, _ in PG_MIGRATIONS] == [v for v, _, _ in MIGRATIONS]
    assert [d for _, d, _ in PG_MIGRATIONS] == [d for _, d, _ in MIGRATIONS]
    first = await opener()
    async with first.transaction() as tx:
        await tx.put_setting("kept", "yes", NOW)
    await first.close()
    again = await opener()
    try:
        async with again.read() as tx:
            assert await tx.get_setting("kept") == "yes"
    finally:
        await again.close()


@pytest.mark.asyncio
async def test_write_transactions_never_interleave_even_from_two_stores(opener: Opener) -> None:
    """Read-modify-write in many concurrent write transactions, through two stores on one PostgreSQL database
    (two replicas; one SQLite file has one process): no increment is lost, as write transactions run one at a
    time."""
    stores = [await opener()]
    if isinstance(stores[0], PostgresStore):
        stores.append(await opener())

    async def increment(store: Store) -> None:
        async with store.transaction() as tx:
            value = int(await tx.get_setting("counter") or "0")
            await asyncio.sleep(0)  # give the other writers every chance to interleave
            await tx.put_setting("counter", str(value + 1), NOW)

    try:
        await asyncio.gather(*(increment(stores[i % len(stores)]) for i in range(40)))
        async with stores[0].read() as tx:
            assert await tx.get_setting("counter") == "40"
    finally:
        for opened in stores:
            await opened.close()


@pytest.mark.asyncio
async def test_a_partners_error_text_with_a_nul_character_is_stored(store: Store) -> None:
    """Free text a partner wrote may hold U+0000, which PostgreSQL text cannot: it is kept as U+FFFD there (and
    as written on SQLite), rather than failing the write that records a delivery attempt."""
    async with store.transaction() as tx:
        outbox_id = await tx.enqueue(
            receiver="CHE", message_id="m", kind=OutboxKind.PROPOSAL, transfer_id="t", body=b"", now=NOW
        )
        await tx.reschedule(outbox_id, code=3, error="refused: a\x00b", next_attempt_at=NOW)
    async with store.read() as tx:
        kept = await tx.get_outbox("m")
    assert kept is not None and kept.last_error in ("refused: a\x00b", "refused: a\ufffdb")
    assert kept.attempts == 1


@pytest.mark.asyncio
async def test_the_change_feed_records_each_committed_write_in_order_and_nothing_rolled_back(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.append_ledger([entry(1, 10)])
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.append_ledger([entry(11, 20)])
            raise RuntimeError("rolled back")
    async with store.transaction() as tx:
        await tx.append_ledger([entry(21, 30), entry(31, 40)])
    async with store.read() as tx:
        changes = await tx.changes_after(0, 100)
        last = await tx.last_change_position()
        after_first = await tx.changes_after(changes[0].position, 100)
        only_one = await tx.changes_after(0, 1)
        up_to_second = await tx.changes_after(0, 100, through=changes[1].position if len(changes) > 1 else 0)
        none_of_the_kind = await tx.changes_after(0, 100, [ChangeKind.TRANSFER], through=last)
        digests = [await tx.change_digest_at(c.position) for c in changes]
        beyond = await tx.change_digest_at(last + 1)
    assert digests == [c.digest for c in changes] and beyond is None
    assert [(c.kind, c.entry.block.start if c.entry else None) for c in changes] == [
        (ChangeKind.LEDGER_ENTRY, 1),
        (ChangeKind.LEDGER_ENTRY, 21),
        (ChangeKind.LEDGER_ENTRY, 31),
    ]
    positions = [c.position for c in changes]
    assert positions == sorted(set(positions)) and last == positions[-1]
    assert after_first == changes[1:] and only_one == changes[:1]
    assert up_to_second == changes[:2] and none_of_the_kind == []
    assert len({c.digest for c in changes}) == 3


@pytest.mark.asyncio
async def test_a_writer_cancelled_while_it_waits_for_another_leaves_nothing_behind(opener: Opener) -> None:
    """A write transaction waits while another runs (on PostgreSQL for the advisory lock, perhaps held by
    another replica); cancelled there, as a caller's deadline does, it writes nothing and the store goes on."""
    first = await opener()
    second = await opener() if isinstance(first, PostgresStore) else first
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with first.transaction() as tx:
            await tx.put_setting("holder", "yes", NOW)
            holding.set()
            await release.wait()

    async def wait_behind() -> None:
        async with second.transaction() as tx:
            await tx.put_setting("cancelled", "written", NOW)

    try:
        holder = asyncio.create_task(hold())
        await holding.wait()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(wait_behind(), 0.5)
        release.set()
        await holder
        async with second.transaction() as tx:
            await tx.put_setting("after", "yes", NOW)
        async with second.read() as tx:
            assert await tx.get_setting("cancelled") is None
            assert (await tx.get_setting("holder"), await tx.get_setting("after")) == ("yes", "yes")
    finally:
        await first.close()
        if second is not first:
            await second.close()


@pytest.mark.asyncio
async def test_replicas_opening_a_fresh_postgresql_database_at_once_migrate_it_once() -> None:
    """Three stores open one empty database together: one migrates under the advisory lock, the others wait and
    find nothing left to do; each version is recorded once and every store works."""
    admin = postgres.admin_url()
    url = await postgres.create_database(admin, "migrate")
    try:
        stores = await asyncio.gather(*(open_store(url) for _ in range(3)))
        try:
            async with stores[0].read() as tx:
                assert await tx.get_setting("none") is None
            for i, opened in enumerate(stores):
                async with opened.transaction() as tx:
                    await tx.put_setting(f"replica-{i}", "up", NOW)
        finally:
            for opened in stores:
                await opened.close()
        connection = await asyncpg.connect(url)
        try:
            versions = [r[0] for r in await connection.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        finally:
            await connection.close()
        assert versions == [v for v, _, _ in PG_MIGRATIONS]
    finally:
        await postgres.drop_databases(admin, [url])


@pytest.mark.asyncio
async def test_abroad_ranges_merge_with_their_neighbours_and_refuse_double_counts(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.add_abroad(SPACE, [(10, 19)])
        await tx.add_abroad(SPACE, [(30, 39)])
        await tx.add_abroad(SPACE, [(20, 29)])  # touches both: one range remains
        await tx.add_abroad(SPACE2, [(20, 29)])  # another space: its own range
        await tx.add_abroad(SPACE, [(50, TOP)])
        assert await tx.abroad_ranges(SPACE, 0, TOP) == [(10, 39), (50, TOP)]
        assert await tx.abroad_ranges(SPACE2, 0, TOP) == [(20, 29)]
        for start, end in ((39, 45), (5, 10), (60, 70)):
            with pytest.raises(StoreConflict, match="already abroad"):
                async with tx.savepoint():
                    await tx.add_abroad(SPACE, [(start, end)])
        await tx.remove_abroad(SPACE, [(15, 24)])  # from the middle: two ranges remain
        await tx.remove_abroad(SPACE, [(10, 14)])
        await tx.remove_abroad(SPACE, [(50, 50)])
        with pytest.raises(StoreConflict, match="not abroad in full"):
            async with tx.savepoint():
                await tx.remove_abroad(SPACE, [(35, 45)])
        assert await tx.abroad_ranges(SPACE, 0, TOP) == [(25, 39), (51, TOP)]
        assert await tx.abroad_ranges(SPACE, 26, 30) == [(25, 39)]
        await tx.add_abroad(SPACE, [(40, 50)])  # fills the gap up to the last range
        assert await tx.abroad_ranges(SPACE, 0, TOP) == [(25, TOP)]
    async with store.read() as tx:
        assert await tx.abroad_ranges(SPACE, 0, TOP) == [(25, TOP)]
        assert await tx.abroad_ranges(SPACE2, 0, TOP) == [(20, 29)]


@pytest.mark.asyncio
async def test_frozen_spaces_name_exactly_the_spaces_with_frozen_units_until_unfrozen(store: Store) -> None:
    async with store.transaction() as tx:
        assert await tx.frozen_spaces() == frozenset()
        await tx.freeze("run-1", [(SPACE, 10, 19), (SPACE, 40, 49)])
        await tx.freeze("run-2", [(SPACE2, 1, 1)])
        assert await tx.frozen_spaces() == {SPACE, SPACE2}
        assert await tx.frozen_by(SPACE, 15, 45) == ["run-1"]
    async with store.transaction() as tx:
        await tx.unfreeze("run-2")
        assert await tx.frozen_spaces() == {SPACE}
        await tx.unfreeze("run-1")
    async with store.read() as tx:
        assert await tx.frozen_spaces() == frozenset()


@pytest.mark.asyncio
async def test_ledger_ids_returned_are_the_stored_ones_in_order_after_earlier_entries(store: Store) -> None:
    async with store.transaction() as tx:
        earlier = await tx.append_ledger([entry(1, 10)])
        assert await tx.append_ledger([]) == []
    async with store.transaction() as tx:
        ids = await tx.append_ledger([entry(100 + 10 * i, 105 + 10 * i) for i in range(50)])
    assert len(set(ids)) == 50 and min(ids) > earlier[0]
    async with store.read() as tx:
        stored = {e.entry_id: e.block.start for e in await tx.list_ledger()}
        assert [stored[i] for i in ids] == [100 + 10 * i for i in range(50)]
        feed = await tx.changes_after(0, 100, [ChangeKind.LEDGER_ENTRY])
        assert [c.entry.entry_id for c in feed if c.entry is not None] == [*earlier, *ids]


def random_ranges(rng: random.Random, count: int, top: int = 400) -> list[tuple[int, int]]:
    starts = [rng.randrange(0, top) for _ in range(count)]
    return [(s, s + rng.randrange(0, 12)) for s in starts]


@pytest.mark.asyncio
async def test_each_lookup_finds_what_one_lookup_per_range_finds(store: Store) -> None:
    rng = random.Random(7)
    statuses = [BlockStatus.HELD, BlockStatus.RESERVED, BlockStatus.SUPERSEDED, BlockStatus.TRANSFERRED]
    async with store.transaction() as tx:
        await tx.insert_account(Account("acc", "Owner", AccountType.PROJECT_OWNER))
        # Disjoint blocks every 10 serials (some not guarded), one at the top of the serial range.
        await tx.insert_blocks(
            [NewBlock(block(s, s + rng.randrange(0, 9)), "acc", rng.choice(statuses)) for s in range(0, 400, 10)]
            + [NewBlock(block(TOP - 5, TOP), "acc", BlockStatus.HELD)]
        )
        await tx.add_known(SPACE, random_ranges(rng, 30))
        await tx.add_abroad(SPACE, ranges.normalize(random_ranges(rng, 30)))
        for _ in range(5):
            wanted = [*random_ranges(rng, 40), (0, TOP), (TOP, TOP), (TOP - 7, TOP - 6)]
            for limit in (None, 0, 2):
                each = await tx.guarded_blocks_each(SPACE, wanted, limit=limit)
                one = [await tx.guarded_blocks(SPACE, s, e, limit=limit) for s, e in wanted]
                assert each == one
            assert await tx.known_ranges_each(SPACE, wanted) == [await tx.known_ranges(SPACE, s, e) for s, e in wanted]
            assert await tx.abroad_ranges_each(SPACE, wanted) == [
                await tx.abroad_ranges(SPACE, s, e) for s, e in wanted
            ]
            assert await tx.known_ranges_each(SPACE2, wanted) == [[] for _ in wanted]
        assert await tx.guarded_blocks_each(SPACE, []) == []


@pytest.mark.asyncio
async def test_many_ranges_join_the_known_and_abroad_sets_at_once_or_not_at_all(store: Store) -> None:
    rng = random.Random(11)
    async with store.transaction() as tx:
        known: list[tuple[int, int]] = []
        for _ in range(4):
            added = random_ranges(rng, 25)
            await tx.add_known(SPACE, added)
            known = ranges.normalize([*known, *added])
            assert await tx.known_ranges(SPACE, 0, TOP) == known
        await tx.add_abroad(SPACE, [(10, 19), (30, 39)])
        await tx.add_abroad(SPACE, [(20, 29), (40, 40), (60, 69)])  # touch each other and those there
        assert await tx.abroad_ranges(SPACE, 0, TOP) == [(10, 40), (60, 69)]
        for refused in ([(45, 50), (50, 55)], [(70, 75), (5, 10)], [(41, 41), (41, 41)]):
            with pytest.raises(StoreConflict, match="already abroad"):
                async with tx.savepoint():
                    await tx.add_abroad(SPACE, refused)
        for refused in ([(12, 14), (14, 16)], [(61, 62), (35, 45)], [(1, 1)]):
            with pytest.raises(StoreConflict, match="not abroad in full"):
                async with tx.savepoint():
                    await tx.remove_abroad(SPACE, refused)
        assert await tx.abroad_ranges(SPACE, 0, TOP) == [(10, 40), (60, 69)]
        await tx.remove_abroad(SPACE, [(10, 10), (15, 20), (40, 40), (60, 69)])
        assert await tx.abroad_ranges(SPACE, 0, TOP) == [(11, 14), (21, 39)]
    async with store.transaction() as tx:
        await tx.set_blocks_status([], BlockStatus.HELD)
        await tx.insert_blocks([])
        await tx.add_known(SPACE2, [])
        assert await tx.known_ranges(SPACE2, 0, TOP) == []


@pytest.mark.asyncio
async def test_the_status_of_many_blocks_changes_in_one_call_and_no_other(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.insert_account(Account("acc", "Owner", AccountType.PROJECT_OWNER))
        ids = [
            await tx.insert_block(block(10 * i + 1, 10 * i + 5), account_id="acc", status=BlockStatus.HELD)
            for i in range(40)
        ]
        chosen = ids[3:37:3]
        await tx.set_blocks_status(chosen, BlockStatus.SUPERSEDED)
        for block_id in ids:
            stored = await tx.get_block(block_id)
            assert stored is not None
            assert stored.status is (BlockStatus.SUPERSEDED if block_id in chosen else BlockStatus.HELD)


@pytest.mark.asyncio
async def test_a_transfers_blocks_move_to_another_status_and_come_back_as_they_stand(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.insert_account(Account("acc", "Owner", AccountType.PROJECT_OWNER))
        ids = {}
        placed = [
            (BlockStatus.RESERVED, "t"),
            (BlockStatus.RESERVED, "other"),
            (BlockStatus.HELD, ""),
            (BlockStatus.RESERVED, "t"),
            (BlockStatus.DEBITED, "t"),
            (BlockStatus.RESERVED, "t"),
        ]
        for i, (status, transfer_id) in enumerate(placed):
            ids[i] = await tx.insert_block(
                block(100 - 10 * i, 105 - 10 * i), account_id="acc", status=status, transfer_id=transfer_id
            )
        moved = await tx.move_transfer_blocks("t", BlockStatus.RESERVED, BlockStatus.DEBITED)
        assert [m.block_id for m in moved] == [ids[0], ids[3], ids[5]]
        assert all(m.status is BlockStatus.DEBITED and m.transfer_id == "t" for m in moved)
        assert [m.block for m in moved] == [block(100, 105), block(70, 75), block(50, 55)]
        assert [(await tx.get_block(i)).status for i in ids.values()] == [  # type: ignore[union-attr]
            BlockStatus.DEBITED,
            BlockStatus.RESERVED,
            BlockStatus.HELD,
            BlockStatus.DEBITED,
            BlockStatus.DEBITED,
            BlockStatus.DEBITED,
        ]
        assert await tx.move_transfer_blocks("t", BlockStatus.RESERVED, BlockStatus.DEBITED) == []


async def raw(store: Store, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Rows of ``sql`` run on the store's own database, bypassing the Store API (``?`` placeholders)."""
    if isinstance(store, PostgresStore):
        count = iter(range(1, 100))
        async with store._pool.acquire() as connection:
            return [tuple(r) for r in await connection.fetch(re.sub(r"\?", lambda _: f"${next(count)}", sql), *args)]
    return [tuple(r) for r in store._db.execute(sql, args).fetchall()]  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_first_transfer_abroad_folds_into_reconciliation_under_its_transfer_s_purpose(store: Store) -> None:
    """Its entry is booked under the authorization's purpose (NDC), the acquiring side books the transfer's
    (OIMP): the tree both sides compare holds the transfer's."""
    terms = dataclasses.replace(TERMS, purpose=Purpose.OIMP, blocks=(block(1, 10),))
    transfer = Transfer("t-1", TransferRole.INITIATING, TransferState.COMPLETED, terms, (), NOW, NOW)
    first = dataclasses.replace(
        entry(1, 10), action_subtype=ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY.value, transfer_id="t-1"
    )
    plain = dataclasses.replace(
        entry(11, 20), action_type=ActionType.TRANSFER, action_subtype="", transfer_id="t-unknown"
    )
    async with store.transaction() as tx:
        await tx.insert_transfer(transfer)
        await tx.append_ledger([first, plain])
        await tx.fold_reconciliation("CHN")
    async with store.read() as tx:
        totals = await tx.reconciliation_totals("CHE")
    assert sorted((g.purpose, t.blocks) for g, t in totals.items()) == [("NDC", 1), ("OIMP", 1)]


@pytest.mark.asyncio
async def test_a_transfers_terms_are_written_once_and_read_back_with_every_state(store: Store) -> None:
    terms = dataclasses.replace(TERMS, blocks=tuple(block(20 * i + 1, 20 * i + 10) for i in range(300)))
    new = Transfer("t-new", TransferRole.INITIATING, TransferState.PROPOSED, terms, (), NOW, NOW)
    old = dataclasses.replace(new, transfer_id="t-old", terms=dataclasses.replace(terms, blocks=terms.blocks[:2]))
    async with store.transaction() as tx:
        await tx.insert_transfer(new)
        for state in (TransferState.CHECKED, TransferState.ACCEPTED):
            await tx.update_transfer(dataclasses.replace(new, state=state))
    # A transfer as a version before the terms were kept apart wrote it: its terms in its row.
    await raw(
        store,
        "INSERT INTO transfers (transfer_id, role, state, terms, authorization_id, quantity, rejections, created_at,"
        " updated_at, first_quantity) VALUES (?, 'initiating', ?, ?, 'CHN-A-0001', 20, '[]', ?, ?, 0)",
        "t-old",
        int(TransferState.PROPOSED),
        codec.terms_to_json(old.terms),
        codec.to_text(NOW),
        codec.to_text(NOW),
    )
    async with store.transaction() as tx:
        await tx.update_transfer(dataclasses.replace(old, state=TransferState.CHECKED))
    async with store.read() as tx:
        assert await tx.get_transfer("t-new") == dataclasses.replace(new, state=TransferState.ACCEPTED)
        assert await tx.get_transfer("t-old") == dataclasses.replace(old, state=TransferState.CHECKED)
        assert {t.transfer_id: t.terms for t in await tx.list_transfers()} == {"t-new": terms, "t-old": old.terms}
        assert [t.terms for t in await tx.open_transfers()] == [terms, old.terms]
        feed = [c.transfer for c in await tx.changes_after(0, 100, [ChangeKind.TRANSFER]) if c.transfer]
    assert [(t.transfer_id, t.state, t.terms) for t in feed] == [
        ("t-new", TransferState.PROPOSED, terms),
        ("t-new", TransferState.CHECKED, terms),
        ("t-new", TransferState.ACCEPTED, terms),
        ("t-old", TransferState.PROPOSED, old.terms),
        ("t-old", TransferState.CHECKED, old.terms),
    ]
    # The new transfer's terms are stored once: not in its row, nor in any of its changes.
    stored = len(codec.terms_to_json(terms))
    assert [r[0] for r in await raw(store, "SELECT terms FROM transfers WHERE transfer_id = 't-new'")] == [""]
    sizes = await raw(store, "SELECT length(body) FROM changes WHERE subject_id = 't-new'")
    assert len(sizes) == 3 and all(int(str(size)) < stored / 20 for (size,) in sizes)


@pytest.mark.asyncio
async def test_many_transfers_heads_and_ranges_are_read_at_once_as_one_by_one(store: Store) -> None:
    """`transfer_heads`, `transfer_ranges` and `ranges_of_transfers` say what `get_transfer` and
    `blocks_of_transfer` say of each transfer, for more transfers than one statement names."""
    far = SerialSpace("CCER", "CN-CCER", "far")
    transfers = []
    for i in range(1_003):
        blocks = (block(20 * i + 1, 20 * i + 10), block(TOP - 20 * i - 9, TOP - 20 * i, space=far))
        terms = dataclasses.replace(TERMS, purpose=(Purpose.NDC, Purpose.OIMP)[i % 2], blocks=blocks)
        if i % 3 == 0:  # this side acquires: its partner is the transferring Party
            terms = dataclasses.replace(terms, transferring_party="CHE", acquiring_party="CHN")
        if i == 7:  # text an earlier version took in: PostgreSQL's JSON functions refuse the escaped NUL
            terms = dataclasses.replace(terms, source_account="CN\x00PO")
        role = TransferRole.ACQUIRING if i % 3 == 0 else TransferRole.INITIATING
        transfers.append(Transfer(f"t-{i}", role, list(TransferState)[i % len(TransferState)], terms, (), NOW, NOW))
    async with store.transaction() as tx:
        await tx.insert_account(Account("acc", "Owner", AccountType.PROJECT_OWNER))
        for transfer in transfers:
            await tx.insert_transfer(transfer)
        statuses = (BlockStatus.RESERVED, BlockStatus.DEBITED, BlockStatus.HELD)
        for i, transfer in enumerate(transfers[:40]):
            for b in transfer.terms.blocks:
                await tx.insert_block(b, account_id="acc", status=statuses[i % 3], transfer_id=transfer.transfer_id)
    wanted = [t.transfer_id for t in transfers] + ["t-unknown", "t-5"]  # one unknown, one asked twice
    async with store.read() as tx:
        heads = await tx.transfer_heads(wanted)
        moved = await tx.transfer_ranges(wanted)
        left = await tx.ranges_of_transfers(wanted, [BlockStatus.RESERVED, BlockStatus.DEBITED])
        expected_left = {}
        for transfer in transfers[:40]:
            found = []
            for status in (BlockStatus.RESERVED, BlockStatus.DEBITED):
                found += [
                    (s.block.space, s.block.start, s.block.end)
                    for s in await tx.blocks_of_transfer(transfer.transfer_id, status)
                ]
            if found:
                expected_left[transfer.transfer_id] = sorted(found, key=repr)
        assert await tx.transfer_heads([]) == {}
        assert await tx.transfer_ranges([]) == {}
    assert heads == {
        t.transfer_id: TransferHead(t.transfer_id, t.role, t.state, t.partner, t.terms.purpose.value) for t in transfers
    }
    assert moved == {t.transfer_id: [(b.space, b.start, b.end) for b in t.terms.blocks] for t in transfers}
    assert {k: sorted(v, key=repr) for k, v in left.items()} == expected_left
    assert len(expected_left) == 27  # the reserved and debited two thirds of the 40 with blocks


@pytest.mark.asyncio
async def test_a_database_a_newer_version_migrated_is_refused_and_left_as_it_is(opener: Opener) -> None:
    store = await opener()
    try:
        await raw(store, "INSERT INTO schema_migrations VALUES (?, 'from a later version')", 10_000)
    finally:
        await store.close()
    with pytest.raises(SchemaTooNew, match="schema version 10000; this version knows versions up to"):
        await opener()
    with pytest.raises(SchemaTooNew):  # refused again: nothing was migrated or marked meanwhile
        await opener()


@pytest.mark.asyncio
async def test_a_transfer_whose_kept_terms_are_gone_is_refused_by_name_not_misread(store: Store) -> None:
    kept = Transfer("t-kept", TransferRole.INITIATING, TransferState.PROPOSED, TERMS, (), NOW, NOW)
    async with store.transaction() as tx:
        await tx.insert_transfer(kept)
        await tx.insert_transfer(dataclasses.replace(kept, transfer_id="t-lost"))
    await raw(store, "DELETE FROM transfer_terms WHERE transfer_id = 't-lost'")
    async with store.read() as tx:
        assert await tx.get_transfer("t-kept") == kept
        with pytest.raises(GatewayError, match="transfer 't-lost' has no terms") as refused:
            await tx.get_transfer("t-lost")
        assert refused.value.code is ResponseCode.INTERNAL_ERROR
        assert [c.transfer for c in await tx.changes_after(0, 1)] == [kept]
        with pytest.raises(GatewayError, match="the change at position 2: transfer 't-lost' has no terms"):
            await tx.changes_after(0, 10)
        for read_many in (tx.transfer_heads, tx.transfer_ranges):
            with pytest.raises(GatewayError, match="transfer 't-lost' has no terms"):
                await read_many(["t-kept", "t-lost"])


@pytest.mark.asyncio
async def test_pruning_removes_the_oldest_changes_a_chunk_at_a_time_and_positions_never_come_back(
    store: Store,
) -> None:
    async with store.transaction() as tx:
        for i in range(7):
            await tx.insert_transfer(
                Transfer(f"t-{i}", TransferRole.INITIATING, TransferState.PROPOSED, TERMS, (), NOW, NOW)
            )
    async with store.read() as tx:
        before = await tx.changes_after(0, 100)
        assert await tx.changes_pruned() == PrunedChanges(0, b"")
    assert len(before) == 7
    # Two at a time up to the fifth, never past it; each step keeps the digest of the last change it removed.
    for expected, count in ((1, 2), (3, 2), (4, 1), (4, 0)):
        async with store.transaction() as tx:
            pruned, removed = await tx.prune_changes(before[4].position, 2)
        assert (pruned, removed) == (PrunedChanges(before[expected].position, before[expected].digest), count)
    async with store.read() as tx:
        assert await tx.changes_after(0, 100) == before[5:]
        assert await tx.changes_pruned() == pruned
        assert await tx.last_change_position() == before[-1].position
    # Everything: the latest position still counts, and the next change comes after it.
    async with store.transaction() as tx:
        assert (await tx.prune_changes(before[-1].position, 100))[1] == 2
    async with store.read() as tx:
        assert await tx.changes_after(0, 100) == []
        assert await tx.last_change_position() == before[-1].position
    async with store.transaction() as tx:
        await tx.insert_transfer(
            Transfer("t-new", TransferRole.INITIATING, TransferState.PROPOSED, TERMS, (), NOW, NOW)
        )
    async with store.read() as tx:
        [new] = await tx.changes_after(0, 100)
    assert new.position > before[-1].position
    # Only a prune removes changes: a delete of one above the pruned position is refused.
    with pytest.raises(Exception, match="append-only"):
        await raw(store, "DELETE FROM changes")


async def _rows_read(store: Store, tx: Transaction, look: Callable[[Transaction], Awaitable[object]]) -> int:
    """How much ``look`` reads of the tables the gateway looks up again and again: on PostgreSQL the rows and index
    entries its scans returned (the transaction's own statistics), on SQLite its virtual machine's steps, in
    hundreds."""
    if isinstance(store, PostgresStore):
        counted = (
            "SELECT COALESCE(SUM(pg_stat_get_xact_tuples_returned(oid) + pg_stat_get_xact_tuples_fetched(oid)), 0)"
            " FROM pg_class WHERE oid IN (SELECT unnest(ARRAY[indrelid, indexrelid]) FROM pg_index"
            " WHERE indrelid IN ('outbox'::regclass, 'transfers'::regclass, 'transfer_terms'::regclass,"
            " 'message_log'::regclass, 'blocks'::regclass, 'reconciliation_runs'::regclass,"
            " 'authorization_ties'::regclass, 'authorization_tie_totals'::regclass))"
        )
        before = int(await tx._db.fetchval(counted))  # type: ignore[attr-defined]
        await look(tx)
        return int(await tx._db.fetchval(counted)) - before  # type: ignore[attr-defined]
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    store._db.set_progress_handler(step, 100)  # type: ignore[attr-defined]
    try:
        await look(tx)
    finally:
        store._db.set_progress_handler(None, 100)  # type: ignore[attr-defined]
    return steps[0]


def _finished_run(run_id: str, at: dt.datetime) -> ReconciliationRun:
    return ReconciliationRun(run_id, "CHE", RunRole.RESPONDER, Status.CONSISTENT, at, at, at)


@pytest.mark.asyncio
async def test_running_runs_are_found_by_role_and_last_step_oldest_first(store: Store) -> None:
    def run(run_id: str, role: RunRole, status: Status, hours: int) -> ReconciliationRun:
        at = NOW - dt.timedelta(hours=hours)
        return ReconciliationRun(run_id, "CHE", role, status, at, at, at)

    async with store.transaction() as tx:
        for found in [
            run("stale-2", RunRole.RESPONDER, Status.RUNNING, 2),
            run("stale-5", RunRole.RESPONDER, Status.RUNNING, 5),
            run("recent", RunRole.RESPONDER, Status.RUNNING, 0),
            run("requester", RunRole.REQUESTER, Status.RUNNING, 5),
            run("finished", RunRole.RESPONDER, Status.CONSISTENT, 5),
        ]:
            await tx.insert_reconciliation(found)
    async with store.read() as tx:
        before = NOW - dt.timedelta(hours=1)
        assert [r.run_id for r in await tx.running_reconciliations(RunRole.RESPONDER, before, 10)] == [
            "stale-5",
            "stale-2",
        ]
        assert [r.run_id for r in await tx.running_reconciliations(RunRole.RESPONDER, before, 1)] == ["stale-5"]
        assert [r.run_id for r in await tx.running_reconciliations(RunRole.REQUESTER, before, 10)] == ["requester"]
        assert [r.run_id for r in await tx.list_reconciliations(limit=2)] == ["recent", "stale-2"]
        # Newest first; runs started at the same instant in run ID order.
        assert [r.run_id for r in await tx.list_reconciliations("CHE", limit=10)] == [
            "recent",
            "stale-2",
            "finished",
            "requester",
            "stale-5",
        ]
        assert await tx.list_reconciliations("GBR") == []


async def _log(tx: Transaction, message_id: str, transfer_id: str) -> None:
    await tx.append_log(
        direction="out",
        peer="CHE",
        message_id=message_id,
        kind=LogKind.STATEMENT,
        form="protobuf",
        envelope=b"signed",
        now=NOW,
        transfer_id=transfer_id,
    )


ISSUED = 2 * 10**9
"""Where the long entry of `test_what_the_gateway_looks_up_again_and_again_reads_no_more_as_its_history_grows`
starts, past every other block of the test."""


@pytest.mark.asyncio
async def test_what_the_gateway_looks_up_again_and_again_reads_no_more_as_its_history_grows(
    store: Store,
) -> None:
    history = 1500
    later = NOW + dt.timedelta(seconds=30)

    async def heads(tx: Transaction) -> None:
        assert len(await tx.lane_heads(NOW, 10)) == 2

    async def due(tx: Transaction) -> None:
        assert await tx.next_due_at() is not None

    async def claim(tx: Transaction) -> None:
        assert len(await tx.claim_lane_heads(NOW, 10, owner="replica-a", until=later)) == 2

    async def stop(tx: Transaction) -> None:
        assert await tx.release_leases_of("replica-stopped") == 0

    async def dead_letters(tx: Transaction) -> None:
        assert await tx.list_outbox("", (OutboxState.DEAD,)) == []

    async def pending(tx: Transaction) -> None:
        assert len(await tx.list_outbox("", (OutboxState.PENDING,))) == 3

    async def sweep(tx: Transaction) -> None:
        assert [t.transfer_id for t in await tx.open_transfers()] == ["t-open"]

    async def evidence(tx: Transaction) -> None:
        assert [e.message_id for e in await tx.log_of_transfer("t-open")] == ["pending-0"]

    async def holdings(tx: Transaction) -> None:
        assert [b.block.start for b in await tx.list_blocks("acc", limit=10)] == [10**9]

    async def runs(tx: Transaction) -> None:
        # What the sweep asks every few seconds, and the operator's listings.
        assert await tx.running_reconciliations(RunRole.RESPONDER, NOW, 10) == []
        assert len(await tx.list_reconciliations(limit=2)) == 2
        assert len(await tx.list_reconciliations("CHE", limit=2)) == 2

    async def proposal(tx: Transaction) -> None:
        # What every proposal asks of its authorization.
        assert await tx.first_transfer_quantity_used("A-tied") == 10 + 10 * tied

    async def resend(tx: Transaction) -> None:
        # What a partner's receipt asking for statements again sets off.
        assert await tx.highest_sequence_sent("GBR") >= 2
        assert await tx.delivered_digest("GBR", 2) == b"digest"
        assert await tx.requeue_from("GBR", 10**9, NOW) == 0

    async def units(tx: Transaction) -> None:
        # What each arriving block whose units were here before asks: their history, deep inside one long entry.
        found = await tx.ledger_of_units("CHN", SPACE, ISSUED + 5 * 10**6, ISSUED + 5 * 10**6 + 9)
        assert [e.action_type for e in found] == [ActionType.AUTHORIZATION]

    async def summary(tx: Transaction) -> None:
        # What every GetLedgerSummary asks.
        assert ActionType.AUTHORIZATION in {t.action_type for t in await tx.ledger_totals()}
        assert [e.transfer_id for e in await tx.ledger_unresolved("CHN")] == ["t-unresolved"]

    # What the outbox worker, the sweep, the operator's listings, reconciliation's evidence, arriving blocks and
    # the summary ask each time.
    looks = [heads, due, claim, stop, dead_letters, pending, sweep, evidence, holdings, resend, runs, proposal, units]
    looks.append(summary)

    async def read_by_each() -> dict[str, int]:
        read = {}
        for look in looks:
            async with store.transaction() as tx:
                read[look.__name__] = await _rows_read(store, tx, look)
        return read

    proposed = Transfer("t-open", TransferRole.INITIATING, TransferState.PROPOSED, TERMS, (), NOW, NOW)
    async with store.transaction() as tx:
        for i, receiver in enumerate(("CHE", "CHE", "GBR")):
            await tx.enqueue(
                receiver=receiver,
                message_id=f"pending-{i}",
                kind=OutboxKind.PROPOSAL,
                transfer_id="",
                body=b"",
                now=NOW,
            )
        await tx.insert_transfer(proposed)
        await _log(tx, "pending-0", "t-open")
        await tx.insert_account(Account("acc", "Owner", AccountType.PROJECT_OWNER))
        await tx.insert_block(block(10**9, 10**9 + 9), account_id="acc", status=BlockStatus.HELD)
        sent = await tx.enqueue(
            receiver="GBR", message_id="sent", kind=OutboxKind.PROPOSAL, transfer_id="", body=b"", now=NOW
        )
        await tx.mark_delivered(sent, b"digest", NOW, sequence=2)
        for i in range(2):
            await tx.insert_reconciliation(_finished_run(f"run-{i}", NOW))
        await tx.add_authorization_tie("A-tied", "issued-first", 10, NOW)
        # Ten million units registered under an authorization: one long entry.
        await tx.append_ledger(
            [dataclasses.replace(entry(ISSUED, ISSUED + 10**7), action_type=ActionType.AUTHORIZATION)]
        )
        # Units whose first transfer is yet to come abroad.
        await tx.append_ledger(
            [
                dataclasses.replace(
                    entry(1, 9),
                    action_type=ActionType.TRANSFER,
                    action_subtype=ActionSubtype.NOT_YET_DEFINED.value,
                    transfer_id="t-unresolved",
                )
            ]
        )
    tied = 0
    young = await read_by_each()
    async with store.transaction() as tx:
        for i in range(history):
            sent = await tx.enqueue(
                receiver=("CHE", "GBR")[i % 2],
                message_id=f"sent-{i}",
                kind=OutboxKind.PROPOSAL,
                transfer_id="",
                body=b"",
                now=NOW,
            )
            await tx.mark_delivered(sent, b"", NOW, sequence=i + 10)
            await _log(tx, f"sent-{i}", f"t-{i:05}")
            await tx.insert_transfer(
                dataclasses.replace(proposed, transfer_id=f"t-{i:05}", state=TransferState.COMPLETED)
            )
            await tx.insert_reconciliation(_finished_run(f"old-run-{i}", NOW - dt.timedelta(days=1, seconds=i)))
            await tx.add_authorization_tie("A-tied", f"issued-{i}", 10, NOW)
        tied = history
        # Small parts of them sent away since, each a short entry of another action type.
        await tx.append_ledger(
            [
                dataclasses.replace(entry(ISSUED + 10 * i, ISSUED + 10 * i + 9), action_type=ActionType.TRANSFER)
                for i in range(history)
            ]
        )
        # Blocks split, and parts sent away, before the one still held; and another account's used and cancelled.
        await tx.insert_account(Account("retired", "Owner", AccountType.PROJECT_OWNER))
        await tx.insert_blocks(
            [
                NewBlock(
                    block(10 * i + 1, 10 * i + 10), "acc", (BlockStatus.SUPERSEDED, BlockStatus.TRANSFERRED)[i % 2]
                )
                for i in range(history)
            ]
            + [
                NewBlock(
                    block(10**8 + 10 * i + 1, 10**8 + 10 * i + 10),
                    "retired",
                    (BlockStatus.USED, BlockStatus.CANCELLED)[i % 2],
                )
                for i in range(history)
            ]
        )
    if isinstance(store, PostgresStore):
        # What autovacuum does for a table that grew: statistics for the planner, and the index entries of the
        # messages' versions before delivery gone.
        await raw(store, "VACUUM ANALYZE")
    old = await read_by_each()
    # A look reading every delivered message, ended transfer or logged message reads a multiple of the history
    # more; one through an index reads about what it read before.
    grew = {name: (young[name], old[name]) for name in old if old[name] > 2 * young[name] + 10}
    assert grew == {}, f"(before, after) by look: {grew}"


@pytest.mark.asyncio
async def test_entries_appended_together_are_fed_and_marked_as_the_triggers_feed_and_mark_one_by_hand(
    store: Store,
) -> None:
    """On SQLite, `Transaction.append_ledger` writes the change feed's rows and the reconciliation marks of
    several entries in set statements, and the insert triggers stand aside for those entries only: the feed
    says the same as for a row inserted by hand, once each, and a later insert by hand, even of an ID inside an
    earlier append's run, is fed by the triggers. On PostgreSQL the triggers write them all."""
    appended = [entry(10 * i + 1, 10 * i + 5) for i in range(APPENDED_TOGETHER_FROM)]
    async with store.transaction() as tx:
        ids = await tx.append_ledger(appended)
    copied = (
        "INSERT INTO ledger (entry_id, action_date, action_type, transfer_id, block, quantity, vintage,"
        " cooperative_approach, authorization_id, first_transferring_party, transferring_party, acquiring_party,"
        " purpose) SELECT ?, action_date, action_type, transfer_id, block, quantity, vintage, cooperative_approach,"
        " authorization_id, first_transferring_party, transferring_party, acquiring_party, purpose FROM ledger"
        " WHERE entry_id = ?"
    )
    await raw(store, "DELETE FROM ledger WHERE entry_id = ?", ids[1])
    await raw(store, copied, ids[1], ids[0])  # the ID of the removed entry, inside the append's run
    await raw(store, copied, 1000, ids[-1])
    async with store.transaction() as tx:
        with pytest.raises(RuntimeError):
            async with tx.savepoint():
                await tx.append_ledger([entry(1, 1)])
                raise RuntimeError("rolled back alone")
        [after] = await tx.append_ledger([entry(900, 905)])
    async with store.read() as tx:
        feed = await tx.changes_after(0, 100, [ChangeKind.LEDGER_ENTRY, ChangeKind.LEDGER_ENTRY_REMOVED])
    assert [(c.kind, c.entry.entry_id if c.entry else None) for c in feed] == [
        (ChangeKind.LEDGER_ENTRY, ids[0]),
        (ChangeKind.LEDGER_ENTRY, ids[1]),
        *((ChangeKind.LEDGER_ENTRY, entry_id) for entry_id in ids[2:]),
        (ChangeKind.LEDGER_ENTRY_REMOVED, ids[1]),
        (ChangeKind.LEDGER_ENTRY, ids[1]),
        (ChangeKind.LEDGER_ENTRY, 1000),
        (ChangeKind.LEDGER_ENTRY, after),
    ]
    bodies = {
        str(r[0]): str(r[1])
        for r in await raw(store, "SELECT subject_id, body FROM changes WHERE kind = 'ledger_entry'")
    }
    # Entry 1000 is a copy of the last entry appended, made by hand: the triggers wrote its body.
    by_hand = json.loads(bodies["1000"])
    appended_body = json.loads(bodies[str(ids[-1])])
    assert (by_hand.pop("entry_id"), appended_body.pop("entry_id")) == (1000, ids[-1])
    assert appended_body == by_hand
    marked = {r[0] for r in await raw(store, "SELECT entry_id FROM reconciliation_dirty")}
    assert marked == {*ids, 1000, after}


@pytest.mark.asyncio
async def test_the_history_of_units_is_every_entry_that_meets_them_whatever_the_lengths_of_others(
    store: Store,
) -> None:
    """`Transaction.ledger_of_units` against a plain filter of the whole ledger: entries of several action types
    and very different lengths, appended one at a time and together, one inserted by hand and one lengthened by
    hand (both counted by the triggers)."""
    rng = random.Random(18)
    types = [ActionType.AUTHORIZATION, ActionType.TRANSFER, ActionType.ACQUISITION, ActionType.FIRST_TRANSFER]
    other = SerialSpace("CCER", "CN-CCER", "other")

    def random_entry() -> LedgerEntry:
        start = rng.randrange(1, 10**6)
        length = rng.choice([0, 9, 99, rng.randrange(10**5)])
        space = other if rng.random() < 0.1 else SPACE
        return dataclasses.replace(entry(start, start + length, space), action_type=rng.choice(types))

    async with store.transaction() as tx:
        for _ in range(20):
            await tx.append_ledger([random_entry()])
        ids = await tx.append_ledger([random_entry() for _ in range(200)])
    copied = (
        "INSERT INTO ledger (entry_id, action_date, action_type, transfer_id, block, quantity, vintage,"
        " cooperative_approach, authorization_id, first_transferring_party, transferring_party, acquiring_party,"
        " purpose) SELECT ?, action_date, 'Use', transfer_id, block, quantity, vintage, cooperative_approach,"
        " authorization_id, first_transferring_party, transferring_party, acquiring_party, purpose FROM ledger"
        " WHERE entry_id = ?"
    )
    async with store.read() as tx:
        appended = [e for e in await tx.list_ledger() if e.entry_id in ids and e.block.space == SPACE]
    copy, lengthened = appended[0].entry_id, appended[1].entry_id
    await raw(store, copied, 10**6, copy)
    lengthened_block = codec.block_to_dict(appended[1].block.with_range(1, 999_999))
    await raw(store, "UPDATE ledger SET block = ? WHERE entry_id = ?", json.dumps(lengthened_block), lengthened)
    async with store.read() as tx:
        everything = await tx.list_ledger()
        for _ in range(150):
            start = rng.randrange(1, 10**6)
            end = start + rng.choice([0, 9, 1000])
            since = rng.choice([0, max(0, start - rng.randrange(10**5))])
            expected = [
                e.entry_id
                for e in everything
                if e.first_transferring_party == "CHN"
                and e.block.space == SPACE
                and since <= e.block.start <= end
                and e.block.end >= start
            ]
            found = await tx.ledger_of_units("CHN", SPACE, start, end, since=since)
            assert [e.entry_id for e in found] == expected, (start, end, since)
        # The entry lengthened by hand reaches the start of the space; the one inserted by hand is found too.
        assert lengthened in [e.entry_id for e in await tx.ledger_of_units("CHN", SPACE, 2, 2)]
        by_hand = next(e for e in everything if e.entry_id == 10**6)
        assert by_hand.action_type is ActionType.USE
        end = by_hand.block.end
        assert 10**6 in [e.entry_id for e in await tx.ledger_of_units("CHN", SPACE, end, end)]


@pytest.mark.asyncio
async def test_the_acquisitions_of_many_ranges_are_those_a_plain_filter_finds_for_each(store: Store) -> None:
    """`Transaction.acquisitions_of_units_each` against a plain filter of the whole ledger, for many ranges at
    once: only Acquisition entries of the Party and space, whatever the lengths of other entries, one inserted
    and one lengthened by hand; ranges that repeat, meet nothing, or reach the last serial."""
    rng = random.Random(20)
    types = [ActionType.ACQUISITION, ActionType.ACQUISITION, ActionType.TRANSFER, ActionType.USE]
    other = SerialSpace("CCER", "CN-CCER", "other")
    top = MAX_SERIAL

    def random_entry() -> LedgerEntry:
        start = rng.randrange(1, 10**6)
        length = rng.choice([0, 9, 99, rng.randrange(10**5)])
        space = other if rng.random() < 0.1 else SPACE
        made = dataclasses.replace(entry(start, start + length, space), action_type=rng.choice(types))
        if rng.random() < 0.1:
            made = dataclasses.replace(made, first_transferring_party="KOR")
        return made

    async with store.transaction() as tx:
        assert await tx.acquisitions_of_units_each("CHN", SPACE, [(1, 10)]) == [[]]
        for _ in range(10):
            await tx.append_ledger([random_entry()])
        ids = await tx.append_ledger([*(random_entry() for _ in range(200)), entry(top - 5, top, SPACE)])
        await tx.append_ledger([dataclasses.replace(entry(top - 5, top, SPACE), action_type=ActionType.ACQUISITION)])
    copied = (
        "INSERT INTO ledger (entry_id, action_date, action_type, transfer_id, block, quantity, vintage,"
        " cooperative_approach, authorization_id, first_transferring_party, transferring_party, acquiring_party,"
        " purpose) SELECT ?, action_date, 'Acquisition', transfer_id, block, quantity, vintage,"
        " cooperative_approach, authorization_id, first_transferring_party, transferring_party, acquiring_party,"
        " purpose FROM ledger WHERE entry_id = ?"
    )
    async with store.read() as tx:
        appended = [e for e in await tx.list_ledger() if e.entry_id in ids and e.block.space == SPACE]
    await raw(store, copied, 10**6, appended[0].entry_id)
    lengthened = next(e for e in appended if e.action_type is ActionType.ACQUISITION)
    lengthened_block = codec.block_to_dict(lengthened.block.with_range(1, 999_999))
    await raw(
        store, "UPDATE ledger SET block = ? WHERE entry_id = ?", json.dumps(lengthened_block), lengthened.entry_id
    )
    async with store.read() as tx:
        everything = await tx.list_ledger()
        by_hand = appended[0].block.start
        wanted = [(2, 2), (top, top), (0, 0), (1, 1), (by_hand, by_hand)]
        for _ in range(300):
            start = rng.randrange(1, 10**6)
            wanted.append((start, start + rng.choice([0, 9, 1000])))
        wanted.append(wanted[10])
        found = await tx.acquisitions_of_units_each("CHN", SPACE, wanted)
        assert len(found) == len(wanted)
        for (start, end), entries in zip(wanted, found, strict=True):
            expected = [
                e.entry_id
                for e in everything
                if e.first_transferring_party == "CHN"
                and e.action_type is ActionType.ACQUISITION
                and e.block.space == SPACE
                and e.block.start <= end
                and e.block.end >= start
            ]
            assert [e.entry_id for e in entries] == expected, (start, end)
        assert lengthened.entry_id in [e.entry_id for e in found[0]]
        assert 10**6 in [e.entry_id for e in found[4]]
        assert [e.block.end for e in found[1]] == [top]
        assert sum(map(len, found)) > 300
        assert await tx.acquisitions_of_units_each("CHN", SPACE, []) == []
        assert await tx.acquisitions_of_units_each("USA", SPACE, [(1, 10**6)]) == [[]]


@pytest.mark.asyncio
async def test_the_summary_totals_kept_as_the_ledger_changes_are_the_sums_of_the_ledger(store: Store) -> None:
    """`Transaction.ledger_totals` reads totals kept as entries are appended (one at a time, and together),
    and as rows are inserted, changed and removed by hand: they equal the sums of the ledger as it stands,
    past the 64-bit range too."""
    rng = random.Random(19)

    def random_entry() -> LedgerEntry:
        start = rng.choice([1, BIG])
        used = rng.random() < 0.3
        return dataclasses.replace(
            entry(start, start + rng.choice([0, 9, BIG // 2])),
            action_type=ActionType.USE if used else rng.choice([ActionType.TRANSFER, ActionType.ACQUISITION]),
            year_of_use=2030 if used else None,
            purpose=rng.choice([Purpose.NDC, Purpose.OIMP]),
            transferring_party=rng.choice(["CHN", "CHE"]),
            acquiring_party=rng.choice(["CHE", "GBR"]),
        )

    async def expected() -> Counter[tuple[object, ...]]:
        async with store.read() as tx:
            return Counter(dataclasses.astuple(t) for t in ledger_sums(await tx.list_ledger()))

    async def kept() -> Counter[tuple[object, ...]]:
        async with store.read() as tx:
            return Counter(dataclasses.astuple(t) for t in await tx.ledger_totals())

    async with store.transaction() as tx:
        for _ in range(12):
            await tx.append_ledger([random_entry()])
        ids = await tx.append_ledger([random_entry() for _ in range(60)])
        # One group past the 64-bit range, one entry at a time.
        for space in (SPACE, SPACE2):
            await tx.append_ledger([entry(1, TOP, space)])
    assert await kept() == await expected()
    async with store.read() as tx:
        assert max(t.quantity for t in await tx.ledger_totals()) >= 2 * TOP > 2**63
    await raw(store, "DELETE FROM ledger WHERE entry_id = ?", ids[0])
    await raw(store, "UPDATE ledger SET purpose = 'OIMP', transferring_party = 'GBR' WHERE entry_id = ?", ids[1])
    await raw(
        store,
        "UPDATE ledger SET block = ?, quantity = 100 WHERE entry_id = ?",
        codec.block_to_json(block(5, 104)),
        ids[2],
    )
    await raw(
        store,
        "INSERT INTO ledger (entry_id, action_date, action_type, transfer_id, block, quantity, vintage,"
        " cooperative_approach, authorization_id, first_transferring_party, transferring_party, acquiring_party,"
        " purpose) SELECT 99999, action_date, 'Cancellation', transfer_id, block, quantity, vintage,"
        " cooperative_approach, authorization_id, first_transferring_party, transferring_party, acquiring_party,"
        " purpose FROM ledger WHERE entry_id = ?",
        ids[3],
    )
    # Every entry of a group removed: the group is gone from the totals.
    await raw(store, "DELETE FROM ledger WHERE action_type = 'Use'")
    after = await kept()
    assert after == await expected() and ActionType.USE not in {t[0] for t in after}


@pytest.mark.asyncio
async def test_a_repair_that_bypasses_the_totals_triggers_is_undone_at_the_next_start(opener: Opener) -> None:
    """``INSERT OR REPLACE`` on SQLite removes the row it replaces without its delete triggers, and
    ``TRUNCATE`` on PostgreSQL fires no row trigger: the totals are summed from the ledger again at every
    start."""
    store = await opener()
    try:
        async with store.transaction() as tx:
            ids = await tx.append_ledger([entry(1, 10), entry(11, 30)])
        if isinstance(store, PostgresStore):
            await raw(store, "TRUNCATE ledger")
        else:
            columns = ", ".join(LEDGER_COLUMNS)
            await raw(store, f"REPLACE INTO ledger ({columns}) SELECT {columns} FROM ledger WHERE entry_id = ?", ids[0])
        async with store.read() as tx:
            bypassed = [t.quantity for t in await tx.ledger_totals()]
    finally:
        await store.close()
    # What the triggers missed: the truncated entries, or the replaced one, still counted.
    assert bypassed == ([30] if isinstance(store, PostgresStore) else [40])
    again = await opener()
    try:
        async with again.read() as tx:
            expected = sum(e.quantity for e in await tx.list_ledger())
            assert [t.quantity for t in await tx.ledger_totals()] == ([expected] if expected else [])
    finally:
        await again.close()


@pytest.mark.asyncio
async def test_the_parties_of_a_space_s_entries_are_every_first_transferring_party_there(store: Store) -> None:
    """`Transaction.ledger_parties`: each first transferring Party with an entry of the space, once, in code order,
    whether the entries were appended one at a time or together; none of another space's."""
    other = SerialSpace("CCER", "CN-CCER", "other")
    async with store.transaction() as tx:
        assert await tx.ledger_parties(SPACE) == []
        await tx.append_ledger([dataclasses.replace(entry(1, 10), first_transferring_party="SGP")])
        await tx.append_ledger(
            [
                dataclasses.replace(entry(i * 10 + 1, i * 10 + 10), first_transferring_party=party)
                for i, party in enumerate(["CHN", "CHE", "CHN"] * 400)
            ]
        )
        await tx.append_ledger([dataclasses.replace(entry(1, 10, other), first_transferring_party="KOR")])
    async with store.read() as tx:
        assert await tx.ledger_parties(SPACE) == ["CHE", "CHN", "SGP"]
        assert await tx.ledger_parties(other) == ["KOR"]
        assert await tx.ledger_parties(SerialSpace("CEA", "CN-CEA")) == []
