"""Crash safety: a state change and its message commit together, and an interrupted transfer finishes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, partner_pb2, records_pb2
from gateway import wire
from gateway.demo import Pair, start_pair, wait_for_state
from gateway.domain.protocol import ACCEPT_ALL
from gateway.node import GatewayNode, PartnerSpec
from gateway.rpc.auth import LOOPBACK_ADMINISTRATOR
from gateway.store.base import OutboxState
from gateway.store.sqlite import SQLiteStore
from signing import Envelope
from tests.integration.harness import TERMINAL, operator, proposal_request, settle, setup_accounts, snapshot
from tests.integration.test_integrity import dead_letters


@pytest.mark.asyncio
async def test_a_failure_while_enqueueing_the_proposal_rolls_back_the_reservation(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = await setup_accounts(pair)
    before = await snapshot(pair.chn)

    async def broken_enqueue(*args: object, **kwargs: object) -> str:
        raise OSError("disk gone while writing the outbox")

    monkeypatch.setattr(pair.chn.exchange, "enqueue", broken_enqueue)
    async with operator(pair.chn) as chn:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert await snapshot(pair.chn) == before


@pytest.mark.asyncio
async def test_an_unreachable_partner_is_retried_until_the_transfer_completes(pair: Pair) -> None:
    block = await setup_accounts(pair)
    real = pair.che.partner_address
    pair.chn.set_partner_address("CHE", "127.0.0.1:9")  # nothing listens on the discard port
    async with operator(pair.chn) as chn, operator(pair.che) as che:
        proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
        async with pair.chn.store.transaction() as tx:
            queued = await tx.list_outbox(states=(OutboxState.PENDING,))
        assert [m.receiver for m in queued] == ["CHE"]
        pair.chn.set_partner_address("CHE", real)
        pair.chn.outbox.wake()
        done = await wait_for_state(chn, proposed.transfer_id, TERMINAL, timeout=30)
        assert done.state == records_pb2.COMPLETED
        assert (await wait_for_state(che, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED


async def restart_chn(pair: Pair, tmp_path: Path) -> GatewayNode:
    """Start CHN again on the SQLite file of ``start_pair`` (CHN stopped before), and point CHE at it."""
    restarted = GatewayNode(
        party="CHN",
        store=await SQLiteStore.open(tmp_path / "chn.db"),
        signer=pair.chn.signer,
        own_trust=Envelope.from_json((tmp_path / "chn.trust.json").read_bytes()),
        partners=[
            PartnerSpec(
                party="CHE",
                address=pair.che.partner_address,
                trust_envelope=Envelope.from_json((tmp_path / "che.trust.json").read_bytes()),
            )
        ],
        operator_access=LOOPBACK_ADMINISTRATOR,
        policy=ACCEPT_ALL,
    )
    await restarted.start()
    pair.che.set_partner_address("CHN", restarted.partner_address)
    pair.chn = restarted
    return restarted


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
async def test_a_gateway_restarted_after_a_crash_delivers_what_it_had_committed(pair: Pair, tmp_path: Path) -> None:
    block = await setup_accounts(pair)
    await pair.chn.outbox.stop()  # the crash comes after the proposal committed, before delivery
    async with operator(pair.chn) as chn:
        proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
    await pair.chn.stop()
    restarted = await restart_chn(pair, tmp_path)
    async with operator(restarted) as chn, operator(pair.che) as che:
        assert (await wait_for_state(chn, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        assert (await wait_for_state(che, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        ledger = (await chn.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())).entries
    assert [(e.action_type, e.quantity) for e in ledger] == [("First transfer", 10)]
    await settle(restarted, pair.che)


class MovableClock:
    """The real clock plus an offset the test moves forward; every gateway of a network reads it."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


@pytest.mark.asyncio
async def test_statements_that_expired_in_the_outbox_are_redated_and_the_transfer_completes(tmp_path: Path) -> None:
    clock = MovableClock()
    pair = await start_pair(tmp_path, clock=clock)
    try:
        block = await setup_accounts(pair)
        await pair.chn.outbox.stop()  # a long outage: the proposal waits in the outbox
        async with operator(pair.chn) as chn:
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
        moved_at = clock()
        clock.offset += dt.timedelta(hours=13)  # past the 12-hour lifetime of the signed proposal
        pair.chn.outbox.start()
        pair.chn.outbox.wake()
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            assert (await wait_for_state(chn, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            assert (await wait_for_state(che, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        async with pair.che.store.read() as tx:
            proposal = next(m for m in await tx.list_messages() if m.direction == "in")
        header = wire.envelope_from_bytes(proposal.envelope)
        statement = partner_pb2.Statement()
        statement.ParseFromString(header.payload)
        assert statement.header.sequence == 1
        assert wire.from_timestamp(statement.header.issued_at) > moved_at + dt.timedelta(hours=12)
    finally:
        await pair.stop()


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
async def test_a_sender_restored_from_a_backup_goes_on_from_its_partner_and_says_loudly_what_it_lost(
    pair: Pair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import sqlite3

    block = await setup_accounts(pair)
    backup = tmp_path / "chn-backup.db"
    with sqlite3.connect(tmp_path / "chn.db") as live, sqlite3.connect(backup) as copy:
        live.backup(copy)
    async with operator(pair.chn) as chn:
        after_backup = await chn.ProposeTransfer(proposal_request(block, 1, 10, "after-backup"))
        assert (await wait_for_state(chn, after_backup.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
    await settle(pair.chn, pair.che)
    await pair.chn.stop()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"chn.db{suffix}").unlink(missing_ok=True)
    backup.rename(tmp_path / "chn.db")
    caplog.set_level(logging.WARNING, logger="gateway.outbox")
    restarted = await restart_chn(pair, tmp_path)
    async with operator(restarted) as chn, operator(pair.che) as che:
        # The restored store no longer knows the transfer made after the backup: serials 1-10 look held again.
        # A transfer of other serials goes through: the channel catches up with CHE instead of looping.
        again = await chn.ProposeTransfer(proposal_request(block, 11, 20, "after-restore"))
        assert (await wait_for_state(chn, again.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        assert (await wait_for_state(che, again.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
    assert await dead_letters(restarted) == []
    [alarm] = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "restored from a backup" in alarm.getMessage()
    assert "reconciled" in alarm.getMessage()
    await settle(restarted, pair.che)


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
async def test_a_restored_initiator_takes_the_end_its_partner_holds_instead_of_waiting_for_the_deadline(
    tmp_path: Path,
) -> None:
    import sqlite3

    from gateway.domain.protocol import DecisionPolicy
    from gateway.harness import start_network

    # CHE holds every proposal for its operator; CHN asks for the status of a transfer waiting 0.3 s.
    network = await start_network(
        tmp_path, ("CHN", "CHE"), policy=DecisionPolicy(), status_query_after=dt.timedelta(milliseconds=300)
    )
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "held"))
            await wait_for_state(che, proposed.transfer_id, {records_pb2.CHECKED})
            backup = tmp_path / "chn-backup.db"
            with sqlite3.connect(tmp_path / "chn.db") as live, sqlite3.connect(backup) as copy:
                live.backup(copy)
            cancel = operator_pb2.CancelTransferRequest(idempotency_key="c", transfer_id=proposed.transfer_id)
            await chn.CancelTransfer(cancel)
            assert (await wait_for_state(che, proposed.transfer_id, TERMINAL)).state == records_pb2.CANCELLED
        await settle(pair.chn, pair.che)
        # CHN's store goes back to before the cancellation: the transfer waits there again, its units reserved.
        await pair.chn.stop()
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"chn.db{suffix}").unlink(missing_ok=True)
        backup.rename(tmp_path / "chn.db")
        restarted = GatewayNode(store=await SQLiteStore.open(tmp_path / "chn.db"), **network.options["CHN"])
        network.nodes["CHN"] = pair.chn = restarted
        await restarted.start()
        network.connect()
        async with operator(restarted) as chn, operator(pair.che) as che:
            # Its status query hears CHE hold the transfer CANCELLED, an end only CHN decides: CHN takes it and
            # releases the units, rather than terminating the transfer at its deadline, days later, in another
            # state than CHE's.
            ended = await wait_for_state(chn, proposed.transfer_id, TERMINAL, timeout=30)
            assert ended.state == records_pb2.CANCELLED
            assert ended.rejections[-1].code == records_pb2.TRANSFER_ENDED
            assert "CHE reports the transfer CANCELLED" in ended.rejections[-1].message
            held = (await chn.ListHoldings(operator_pb2.ListHoldingsRequest(account_id="CN-PO-0001"))).holdings
            assert [(h.block.start, h.block.end, h.status) for h in held] == [(1, 1000, "held")]
            assert (await che.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=proposed.transfer_id))).state == (
                records_pb2.CANCELLED
            )
        await settle(restarted, pair.che)
    finally:
        await network.stop()
