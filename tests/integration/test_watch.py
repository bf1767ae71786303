"""WatchChanges on real gateways (gRPC on port 0, SQLite files): a registry of record follows every transfer and
ledger change in commit order, resumes after a disconnect with no gap and no repeat, sees changes live, and
is refused a position or a filter that makes no sense."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, records_pb2
from gateway import harness
from gateway.demo import Pair, start_pair
from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.records import AdjustmentMethod, Purpose, TransferTerms
from gateway.domain.transfer import Transfer, TransferRole, TransferState
from gateway.node import GatewayNode
from gateway.rpc.errors import read_error_detail
from gateway.store import open_store
from tests.integration.harness import (
    operator,
    proposal_request,
    settle,
    setup_accounts,
    transfer,
    watches_reach,
)

if TYPE_CHECKING:
    Call = grpc.aio.UnaryStreamCall[operator_pb2.WatchChangesRequest, operator_pb2.Change]


def watch(
    stub: operator_pb2_grpc.OperatorServiceAsyncStub, after: int = 0, kinds: Sequence[int] = (), digest: bytes = b""
) -> Call:
    # Any number: the hostile cases send kinds the enum does not have.
    request = operator_pb2.WatchChangesRequest(after_position=after, kinds=kinds, after_digest=digest)  # type: ignore[arg-type]
    return stub.WatchChanges(request)


async def take(call: Call, count: int, timeout: float = 10.0) -> list[operator_pb2.Change]:
    """The next ``count`` changes of a watch."""
    got: list[operator_pb2.Change] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            message = await call.read()
            assert isinstance(message, operator_pb2.Change), "the watch ended"
            got.append(message)
    return got


async def take_until(call: Call, position: int, timeout: float = 10.0) -> list[operator_pb2.Change]:
    """The changes of a watch up to and including ``position``."""
    got: list[operator_pb2.Change] = []
    async with asyncio.timeout(timeout):
        while not got or got[-1].position < position:
            message = await call.read()
            assert isinstance(message, operator_pb2.Change), "the watch ended"
            got.append(message)
    return got


async def last_position(node: GatewayNode) -> int:
    async with node.store.read() as tx:
        return await tx.last_change_position()


async def replay(node: GatewayNode, after: int = 0, digest: bytes = b"") -> list[operator_pb2.Change]:
    """Every change after ``after``, read by a watch of its own."""
    last = await last_position(node)
    async with operator(node) as stub:
        call = watch(stub, after, digest=digest)
        try:
            return await take_until(call, last) if last > after else []
        finally:
            call.cancel()


def summary(changes: Sequence[operator_pb2.Change]) -> list[tuple[str, str, int | str]]:
    """Each change as (kind, subject, state or action type)."""
    rows: list[tuple[str, str, int | str]] = []
    for c in changes:
        kind = operator_pb2.ChangeKind.Name(c.kind)
        if c.HasField("transfer"):
            rows.append((kind, c.transfer.transfer_id, records_pb2.TransferState.Name(c.transfer.state)))
        else:
            rows.append((kind, c.ledger_entry.transfer_id, c.ledger_entry.action_type))
    return rows


def assert_ordered(changes: Sequence[operator_pb2.Change]) -> None:
    positions = [c.position for c in changes]
    assert positions == sorted(set(positions)), positions
    times = [c.time.ToDatetime() for c in changes]
    assert times == sorted(times)


@pytest.mark.asyncio
async def test_a_watcher_sees_every_change_of_a_full_transfer_in_order(pair: Pair) -> None:
    block = await setup_accounts(pair)
    transfer_id = await transfer(pair, block, 1, 400, "t1")
    for node, role in ((pair.chn, "initiating"), (pair.che, "acquiring")):
        changes = await replay(node)
        assert_ordered(changes)
        # Nothing else wrote changes: the positions are exactly 1, 2, 3, ...
        assert [c.position for c in changes] == list(range(1, len(changes) + 1))
        async with operator(node) as stub:
            final = await stub.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))
            ledger = await stub.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())
        transfers = [c.transfer for c in changes if c.kind == operator_pb2.TRANSFER]
        assert all(t.transfer_id == transfer_id and t.role == role for t in transfers)
        assert transfers[-1] == final
        states = [records_pb2.TransferState.Name(t.state) for t in transfers]
        entries = [c.ledger_entry for c in changes if c.kind == operator_pb2.LEDGER_ENTRY]
        assert entries == list(ledger.entries)
        # Each side stores the proposal once checked, then the acceptance, its side's ledger entry and the
        # completion: nothing more, nothing twice.
        action = "First transfer" if role == "initiating" else "Acquisition"
        assert [(kind, what) for kind, _, what in summary(changes)] == [
            ("TRANSFER", "CHECKED"),
            ("TRANSFER", "ACCEPTED"),
            ("LEDGER_ENTRY", action),
            ("TRANSFER", "COMPLETED"),
        ]
        assert states == ["CHECKED", "ACCEPTED", "COMPLETED"]


@pytest.mark.asyncio
async def test_live_changes_reach_two_watchers_and_a_resumed_watch_has_no_gap_and_no_repeat(pair: Pair) -> None:
    async with operator(pair.chn) as first_stub, operator(pair.chn) as second_stub:
        first, second = watch(first_stub), watch(second_stub)
        try:
            # Accounts, an authorization and an issuance: none is a transfer or ledger change.
            block = await setup_accounts(pair)
            async with operator(pair.chn) as chn:
                proposed = await chn.ProposeTransfer(proposal_request(block, 1, 100, "live"))
            # Live: the proposal's change arrives without a new call.
            live = await take(first, 1, timeout=5.0)
            assert (live[0].kind, live[0].transfer.transfer_id) == (operator_pb2.TRANSFER, proposed.transfer_id)
            assert live[0].transfer.state == records_pb2.CHECKED
            await transfer(pair, block, 101, 200, "second")
            last = await last_position(pair.chn)
            seen_first = [*live, *await take_until(first, last)]
            seen_second = await take_until(second, last)
        finally:
            first.cancel()
            second.cancel()
    full = await replay(pair.chn)
    assert seen_first == seen_second == full
    assert_ordered(full)
    assert {c.transfer.transfer_id for c in full if c.HasField("transfer")} >= {proposed.transfer_id}

    # Disconnect after a few changes, resume from the last one received: the two parts are the whole.
    for cut in (1, 3, len(full) - 1):
        async with operator(pair.chn) as stub:
            call = watch(stub)
            head = await take(call, cut)
            call.cancel()
        tail = await replay(pair.chn, head[-1].position, head[-1].digest)
        assert [*head, *tail] == full
    # Resuming from the very last position: nothing until something new commits.
    assert await replay(pair.chn, full[-1].position) == []


@pytest.mark.asyncio
async def test_the_kind_filter_gives_the_same_changes_at_the_same_positions(pair: Pair) -> None:
    block = await setup_accounts(pair)
    await transfer(pair, block, 1, 50, "f1")
    full = await replay(pair.chn)
    last = full[-1].position
    async with operator(pair.chn) as stub:
        for kinds in ([operator_pb2.TRANSFER], [operator_pb2.LEDGER_ENTRY, operator_pb2.LEDGER_ENTRY_REMOVED]):
            expected = [c for c in full if c.kind in kinds]
            call = watch(stub, 0, kinds)
            try:
                got = await take(call, len(expected))
                # The filter skips the rest without sending them, and the next change is a new one.
                async with operator(pair.chn) as chn:
                    await chn.ProposeTransfer(proposal_request(block, 51 + len(kinds), 51 + len(kinds), f"k{kinds}"))
                if operator_pb2.TRANSFER in kinds:
                    [after] = await take(call, 1, timeout=5.0)
                    assert after.position > last
            finally:
                call.cancel()
            assert got == expected


@pytest.mark.asyncio
async def test_a_change_another_process_commits_to_the_shared_database_arrives_by_polling(
    pair: Pair, tmp_path: Path
) -> None:
    await setup_accounts(pair)
    before = await last_position(pair.chn)
    async with operator(pair.chn) as stub:
        call = watch(stub, before)
        try:
            await asyncio.sleep(0.5)  # the watch has read everything and waits
            # Another replica's connection to the same database: this process is never told of its commit, so
            # only the watch's polling can find it.
            replica = await open_store(await harness.database_location(tmp_path, "CHN"))
            try:
                async with replica.transaction() as tx:
                    await tx.insert_transfer(REPLICA_TRANSFER)
            finally:
                await replica.close()
            [change] = await take(call, 1, timeout=5.0)
        finally:
            call.cancel()
    assert change.position == before + 1
    assert (change.kind, change.transfer.transfer_id) == (operator_pb2.TRANSFER, "replica-1")


@pytest.mark.sqlite_only(reason="edits the SQLite file behind the gateway's back; the PostgreSQL triggers are the same")
@pytest.mark.asyncio
async def test_a_ledger_entry_rewritten_or_deleted_by_hand_is_reported_as_such(pair: Pair, tmp_path: Path) -> None:
    block = await setup_accounts(pair)
    await transfer(pair, block, 1, 100, "t1")
    async with operator(pair.che) as che:
        [acquisition] = (await che.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())).entries
        call = watch(che, await last_position(pair.che))
        try:
            await asyncio.sleep(0.5)  # the watch has read everything and waits
            # A repair, or damage, by another program writing CHE's database.
            with sqlite3.connect(tmp_path / "che.db") as db:
                db.execute(
                    "UPDATE ledger SET block = json_set(block, '$.end', 60) WHERE entry_id = ?", (acquisition.entry_id,)
                )
            with sqlite3.connect(tmp_path / "che.db") as db:
                db.execute("DELETE FROM ledger WHERE entry_id = ?", (acquisition.entry_id,))
            changed, removed = await take(call, 2, timeout=5.0)
        finally:
            call.cancel()
        assert (await che.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())).entries == []
    shortened = records_pb2.LedgerEntry()
    shortened.CopyFrom(acquisition)
    shortened.block.end, shortened.quantity = 60, 60
    assert (changed.kind, changed.ledger_entry) == (operator_pb2.LEDGER_ENTRY_CHANGED, shortened)
    assert (removed.kind, removed.ledger_entry) == (operator_pb2.LEDGER_ENTRY_REMOVED, shortened)
    assert removed.position == changed.position + 1


T0 = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
REPLICA_TRANSFER = Transfer(
    "replica-1",
    TransferRole.INITIATING,
    TransferState.PROPOSED,
    TransferTerms(
        transferring_party="CHN",
        acquiring_party="CHE",
        source_account="CN-PO-0001",
        acquiring_account="CH-PH-0001",
        cooperative_approach="CA0001",
        authorization_id="CHN-A-0001",
        purpose=Purpose.NDC,
        adjustment_method=AdjustmentMethod.AVERAGING,
        blocks=(UnitBlock(SerialSpace("CCER", "CN-CCER"), 5001, 5002, vintage=2025),),
    ),
    (),
    T0,
    T0,
)


@pytest.mark.asyncio
async def test_a_refused_write_records_no_change(pair: Pair) -> None:
    block = await setup_accounts(pair)
    await transfer(pair, block, 1, 10, "r")
    before = await replay(pair.chn)
    assert before
    async with operator(pair.chn) as chn:
        with pytest.raises(grpc.aio.AioRpcError):
            # Serials 900-1100: the last hundred are not held.
            await chn.ProposeTransfer(proposal_request(block, 900, 1100, "refused"))
    await settle(pair.chn, pair.che)
    assert await replay(pair.chn) == before


@pytest.mark.asyncio
async def test_a_watcher_that_does_not_read_holds_no_transaction(pair: Pair) -> None:
    """Thousands of changes wait for a watcher that reads nothing: gRPC flow control holds them back, and
    every write of the gateway still commits meanwhile."""
    count = 3000
    async with pair.chn.store.transaction() as tx:
        for i in range(count):
            await tx.insert_transfer(dataclasses.replace(REPLICA_TRANSFER, transfer_id=f"bulk-{i}"))
    async with operator(pair.chn) as stub:
        stalled = watch(stub)
        try:
            await take(stalled, 1)
            await asyncio.sleep(0.5)  # the feed sends until flow control stops it
            async with asyncio.timeout(10):
                await setup_accounts(pair)
                async with pair.chn.store.transaction() as tx:
                    await tx.insert_transfer(dataclasses.replace(REPLICA_TRANSFER, transfer_id="after-stall"))
            last = await last_position(pair.chn)
            rest = await take_until(stalled, last, timeout=30)
        finally:
            stalled.cancel()
    assert [c.position for c in rest] == list(range(2, last + 1))
    assert rest[-1].transfer.transfer_id == "after-stall"


def refusal(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, ResponseCode, str]:
    detail = read_error_detail(error.trailing_metadata())
    assert detail is not None, error
    return error.code(), ResponseCode(detail.code), detail.field


@pytest.mark.asyncio
async def test_hostile_positions_and_filters_are_refused_naming_the_field(pair: Pair) -> None:
    await transfer(pair, await setup_accounts(pair), 1, 10, "h")
    last = await last_position(pair.chn)
    assert last > 0
    cases: list[tuple[int, list[int] | bytes, str]] = [
        (-1, [], "after_position"),
        (-(2**63), [], "after_position"),
        (last + 1, [], "after_position"),
        (2**63 - 1, [], "after_position"),
        (0, [operator_pb2.CHANGE_KIND_UNSPECIFIED], "kinds[0]"),
        (0, [operator_pb2.TRANSFER, 99], "kinds[1]"),
        (0, [-5], "kinds[0]"),
        (0, [operator_pb2.TRANSFER] * 5, "kinds"),
    ]
    [first, second] = (await replay(pair.chn))[:2]
    digests: list[tuple[int, bytes, str]] = [
        (0, first.digest, "after_digest"),  # position 0 names no change
        (-1, first.digest, "after_position"),
        (1, first.digest[:31], "after_digest"),
        (1, first.digest + b"\x00", "after_digest"),
        (1, second.digest, "after_digest"),  # another change's digest
        (last + 1, first.digest, "after_position"),
    ]
    async with operator(pair.chn) as stub:
        for after, kinds_or_digest, field in [*cases, *digests]:
            if isinstance(kinds_or_digest, bytes):
                call = watch(stub, after, digest=kinds_or_digest)
            else:
                call = watch(stub, after, kinds_or_digest)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            expected = (grpc.StatusCode.INVALID_ARGUMENT, ResponseCode.INVALID_ARGUMENT, field)
            assert refusal(caught.value) == expected, (after, kinds_or_digest)
        # The last position itself is fine: the watch waits for the next change.
        call = watch(stub, last)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                await call.read()
        call.cancel()


@pytest.mark.asyncio
async def test_a_watch_ends_with_unavailable_when_the_gateway_stops(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        await transfer(pair, await setup_accounts(pair), 1, 10, "s")
        async with operator(pair.chn) as stub:
            call = watch(stub)
            await take(call, 1)
            await pair.chn.stop(grace=30)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await take(call, 100)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "after_position" in (caught.value.details() or "")
    finally:
        await pair.che.stop()


@pytest.mark.asyncio
async def test_watches_beyond_the_limit_are_refused_and_a_closed_one_frees_its_place(pair: Pair) -> None:
    await transfer(pair, await setup_accounts(pair), 1, 10, "w")
    pair.chn.changes.max_watchers = 2
    async with operator(pair.chn) as stub:
        first, second = watch(stub), watch(stub)
        await take(first, 1)
        await take(second, 1)
        third = watch(stub)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await third.read()
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the most it serves at once" in (caught.value.details() or "")
        detail = read_error_detail(caught.value.trailing_metadata())
        assert detail is not None and ResponseCode(detail.code) is ResponseCode.TOO_MANY_WATCHES
        assert pair.chn.changes.watchers == 2
        first.cancel()
        await watches_reach(pair.chn.changes, 1)  # once the server has seen the cancellation
        fourth = watch(stub)
        assert len(await take(fourth, 1)) == 1
        second.cancel()
        fourth.cancel()


@pytest.mark.asyncio
async def test_one_caller_holds_at_most_its_share_of_the_watches(pair: Pair) -> None:
    feed = pair.chn.changes
    feed.max_watchers_per_caller = 2

    async def consume(caller: str) -> None:
        async for _ in feed.follow(0, caller=caller):
            pass

    registry = [asyncio.create_task(consume("registry")) for _ in range(2)]
    others: list[asyncio.Task[None]] = []
    try:
        await watches_reach(feed, 2)
        with pytest.raises(GatewayError) as caught:
            await consume("registry")
        assert caught.value.code is ResponseCode.TOO_MANY_WATCHES
        assert "this caller follows 2 watches already" in caught.value.message
        # Another caller has its own share; a watch that ends gives its place back.
        others.append(asyncio.create_task(consume("auditor")))
        await watches_reach(feed, 3)
        registry[0].cancel()
        await watches_reach(feed, 2)
        others.append(asyncio.create_task(consume("registry")))
        await watches_reach(feed, 3)
    finally:
        for task in (*registry, *others):
            task.cancel()
        await asyncio.gather(*registry, *others, return_exceptions=True)
    assert feed.watchers == 0


@pytest.mark.asyncio
async def test_a_frozen_client_s_watch_ends_when_it_stops_answering_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import subprocess
    import sys

    from gateway import node

    monkeypatch.setattr(node, "KEEPALIVE_SECONDS", 1.0)
    monkeypatch.setattr(node, "KEEPALIVE_TIMEOUT_SECONDS", 1.0)
    pair = await start_pair(tmp_path)
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import grpc\n"
            "from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc\n"
            f"channel = grpc.insecure_channel({pair.chn.operator_address!r})\n"
            "stream = operator_pb2_grpc.OperatorServiceStub(channel).WatchChanges(operator_pb2.WatchChangesRequest())\n"
            "print('watching', flush=True)\n"
            "for _ in stream: pass\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert client.stdout is not None and client.stdout.readline() == b"watching\n"
        await watches_reach(pair.chn.changes, 1)  # the client's call may reach the server seconds later
        client.send_signal(signal.SIGSTOP)  # alive, connected, and answering nothing: a frozen process
        for _ in range(1500):
            if pair.chn.changes.watchers == 0:
                break
            await asyncio.sleep(0.01)
        assert pair.chn.changes.watchers == 0, "the frozen client's watch still holds its place"
    finally:
        client.kill()
        client.wait()
        if client.stdout is not None:
            client.stdout.close()
        await pair.stop()
