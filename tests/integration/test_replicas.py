"""Replicas: several gateways of one Party sharing one PostgreSQL database, each with its own operator API,
partner endpoint, outbox worker and sweep, racing each other on purpose.

What must hold whichever replica an operator or a partner reaches: units are reserved once (one proposal of
the same units wins, the others are refused with UNIT_NOT_HELD), a statement takes effect once and is answered
with one receipt, a deadline is enforced once, and each channel's sequence numbers stay 1, 2, 3, ... with
no gap and no repeat although every replica's worker sends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, partner_pb2, records_pb2
from gateway import wire
from gateway.demo import DEMO_LEDGER, Pair, wait_for_state
from gateway.domain.errors import ResponseCode
from gateway.domain.protocol import Deadlines, DecisionPolicy
from gateway.domain.reconciliation import Status
from gateway.harness import Network, start_network
from gateway.node import GatewayNode
from gateway.rpc.partner import DELIVER_METHOD, SERVICE_NAME
from gateway.store.base import LogKind, OutboxKind, OutboxState
from signing import Role, Signer, TrustDocument, generate_key, sign_trust_document, signer_from_uri
from tests.integration.harness import (
    TERMINAL,
    Crafter,
    deliver_raw,
    error_code,
    operator,
    proposal_request,
    settle,
    setup_accounts,
)

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio]


async def replicated(tmp_path: Path, party: str, count: int, **options: object) -> tuple[Network, list[GatewayNode]]:
    """A CHN and CHE network in which ``party`` runs ``count`` gateways on its one database."""
    network = await start_network(tmp_path, ("CHN", "CHE"), ledger=lambda _: DEMO_LEDGER, **options)  # type: ignore[arg-type]
    try:
        for _ in range(count - 1):
            await network.add_replica(party)
    except BaseException:
        await network.stop()
        raise
    return network, [network[party], *network.replicas.get(party, [])]


async def propose(node: GatewayNode, block: records_pb2.UnitBlock, start: int, end: int, key: str) -> str | int:
    """Propose at ``node``: the transfer ID, or the response code of the refusal."""
    async with operator(node) as stub:
        try:
            return (await stub.ProposeTransfer(proposal_request(block, start, end, key))).transfer_id
        except grpc.aio.AioRpcError as exc:
            return error_code(exc)


async def held_quantity(node: GatewayNode) -> int:
    async with operator(node) as stub:
        holdings = (await stub.ListHoldings(operator_pb2.ListHoldingsRequest())).holdings
    return sum(h.block.end - h.block.start + 1 for h in holdings if h.status == "held")


async def sequences_to(node: GatewayNode, receiver: str) -> list[int]:
    """The sequence numbers of the statements ``node``'s database sent ``receiver`` and saw taken in, in order."""
    async with node.store.read() as tx:
        sent = await tx.list_outbox(receiver=receiver, states=(OutboxState.DELIVERED,))
    return sorted(m.sequence for m in sent if m.kind is not OutboxKind.TRUST)


@pytest.mark.parametrize("count", [2, 3])
async def test_replicas_racing_to_propose_the_same_units_let_exactly_one_win(tmp_path: Path, count: int) -> None:
    network, chn = await replicated(tmp_path, "CHN", count)
    try:
        block = await setup_accounts(Pair(chn[0], network["CHE"]))
        rounds, size = 6, 10
        winners: list[str] = []
        for r in range(rounds):
            start = r * size + 1
            results = await asyncio.gather(
                *(propose(node, block, start, start + size - 1, f"race-{r}-{i}") for i, node in enumerate(chn))
            )
            won = [x for x in results if isinstance(x, str)]
            lost = [x for x in results if isinstance(x, int)]
            assert len(won) == 1, results
            assert lost == [int(ResponseCode.UNIT_NOT_HELD)] * (count - 1), results
            winners.extend(won)
        async with operator(chn[-1]) as chn_stub, operator(network["CHE"]) as che_stub:
            for transfer_id in winners:
                assert (await wait_for_state(chn_stub, transfer_id, TERMINAL)).state == records_pb2.COMPLETED
                assert (await wait_for_state(che_stub, transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        await settle(*chn, network["CHE"])
        # Units are conserved: what left CHN arrived at CHE, once.
        moved = rounds * size
        assert await held_quantity(chn[1]) == 1000 - moved
        assert await held_quantity(network["CHE"]) == moved
        async with chn[0].store.read() as tx:
            assert len(await tx.list_transfers()) == rounds
            assert sum(e.quantity for e in await tx.list_ledger()) == moved
        # However the replicas' workers shared the sending, the channel to CHE is 1, 2, 3, ... with no gap.
        sent = await sequences_to(chn[0], "CHE")
        assert sent == list(range(1, len(sent) + 1))
        async with network["CHE"].store.read() as tx:
            assert (await tx.incoming_channel("CHN")).last_sequence == len(sent)
    finally:
        await network.stop()


async def test_two_replicas_sending_at_once_keep_the_channel_gap_free(tmp_path: Path) -> None:
    network, chn = await replicated(tmp_path, "CHN", 2)
    try:
        block = await setup_accounts(Pair(chn[0], network["CHE"]))
        transfers = 16
        proposed = await asyncio.gather(
            *(propose(chn[i % 2], block, i * 10 + 1, i * 10 + 10, f"send-{i}") for i in range(transfers))
        )
        assert all(isinstance(p, str) for p in proposed), proposed
        async with operator(chn[1]) as stub:
            for transfer_id in proposed:
                assert isinstance(transfer_id, str)
                assert (await wait_for_state(stub, transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        await settle(*chn, network["CHE"])
        sent = await sequences_to(chn[0], "CHE")
        assert sent == list(range(1, len(sent) + 1))
        assert len(sent) >= 2 * transfers  # a Proposal and a Completion each
        async with network["CHE"].store.read() as tx:
            assert (await tx.incoming_channel("CHN")).last_sequence == len(sent)
            assert await tx.count_held() == 0
        # Each statement was sealed with one sequence number, once: no two log entries carry one message at
        # two places in the channel.
        async with chn[0].store.read() as tx:
            outgoing = [e for e in await tx.list_log() if e.direction == "out" and e.kind is LogKind.STATEMENT]
        seen: dict[str, int] = {}
        for entry in outgoing:
            envelope = wire.envelope_from_bytes(entry.envelope)
            statement = partner_pb2.Statement()
            statement.ParseFromString(envelope.payload)
            assert seen.setdefault(entry.message_id, statement.header.sequence) == statement.header.sequence
        assert sorted(seen.values()) == sent
    finally:
        await network.stop()


async def test_the_same_statement_delivered_to_two_replicas_at_once_takes_effect_once(tmp_path: Path) -> None:
    network, chn = await replicated(tmp_path, "CHN", 2)
    try:
        await setup_accounts(Pair(chn[0], network["CHE"]))
        async with chn[0].store.read() as tx:
            channel = await tx.incoming_channel("CHE")
            before = len(await tx.list_messages())
        crafter = Crafter(signer=network.signers["CHE"], sender="CHE", receiver="CHN", channel=channel)
        for i in range(8):
            payload, _ = crafter.statement(status_query=partner_pb2.StatusQuery(transfer_id=f"unknown-{i}"))
            envelope = wire.envelope_to_bytes(crafter.envelope(payload))
            first, second = await asyncio.gather(deliver_raw(chn[0], envelope), deliver_raw(chn[1], envelope))
            # One receipt: the replica that came second answers with the one the first stored.
            assert first == second
            assert first.taken_in
            assert first.last_sequence == channel.last_sequence + i + 1
        async with chn[1].store.read() as tx:
            assert (await tx.incoming_channel("CHE")).last_sequence == channel.last_sequence + 8
            received = await tx.list_messages()
        assert len(received) == before + 8  # each taken in once, with its one receipt
    finally:
        await network.stop()


async def test_deadline_sweeps_on_three_replicas_reject_each_held_proposal_once(tmp_path: Path) -> None:
    deadlines = Deadlines(hold=dt.timedelta(milliseconds=300), decision=dt.timedelta(seconds=60))
    network, che = await replicated(tmp_path, "CHE", 3, deadlines=deadlines, policy=DecisionPolicy())
    try:
        block = await setup_accounts(Pair(network["CHN"], che[0]))
        transfers = 6
        async with operator(network["CHN"]) as chn_stub:
            proposed = [
                (
                    await chn_stub.ProposeTransfer(proposal_request(block, i * 100 + 1, i * 100 + 100, f"k{i}"))
                ).transfer_id
                for i in range(transfers)
            ]
            for transfer_id in proposed:
                ended = await wait_for_state(chn_stub, transfer_id, TERMINAL, timeout=30)
                assert ended.state == records_pb2.REJECTED
                assert [ResponseCode(r.code) for r in ended.rejections] == [ResponseCode.DECISION_DEADLINE_PASSED]
        await settle(network["CHN"], *che)
        async with che[0].store.read() as tx:
            decisions = [m for m in await tx.list_outbox() if m.kind is OutboxKind.DECISION]
            assert sorted(m.transfer_id for m in decisions) == sorted(proposed)  # one Decision each, no second
            assert await tx.list_ledger() == []
            for transfer_id in proposed:
                found = await tx.get_transfer(transfer_id)
                assert found is not None and [r.code for r in found.rejections] == [
                    ResponseCode.DECISION_DEADLINE_PASSED
                ]
        assert await held_quantity(network["CHN"]) == 1000
    finally:
        await network.stop()


@pytest.mark.parametrize("old_key", ["retired", "kept"])
async def test_a_rotation_through_one_replica_is_followed_by_the_others_at_once(tmp_path: Path, old_key: str) -> None:
    """Replica A installs CHN's next trust document; replica B signs with the new key from its next send (also
    when the document still lists the old key, which B has as its signer), and trusts CHE's new key from CHE's
    first statement, without a restart."""
    network, chn = await replicated(tmp_path, "CHN", 2)
    try:
        block = await setup_accounts(Pair(chn[0], network["CHE"]))
        new_chn = _new_signer(network, "chn-v2")
        for node in chn:  # each replica's configuration lists the next signer, as [signers] would
            node.core.signers["v2"] = new_chn
        await _rotate(chn[0], "CHN", network.signers["CHN"], new_chn, keep_old=old_key == "kept")
        await chn[0].core.outbox.stop()  # replica B's worker sends everything from here on
        transfer_id = await propose(chn[1], block, 1, 100, "after-rotation")
        assert isinstance(transfer_id, str), transfer_id
        async with operator(chn[1]) as stub:
            assert (await wait_for_state(stub, transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        assert chn[1].core.signer.keyid == new_chn.keyid
        async with chn[1].store.read() as tx:
            sent = [e for e in await tx.log_of_transfer(transfer_id) if e.direction == "out"]
        assert sent
        for entry in sent:  # never the old key, which CHE would have refused once retired
            assert [sig.keyid for sig in wire.envelope_from_bytes(entry.envelope).signatures] == [new_chn.keyid]

        # CHE rotates too; its push reaches replica A only. A statement signed with CHE's new key, sent to
        # replica B first, is taken in.
        new_che = _new_signer(network, "che-v2")
        network["CHE"].core.signers["v2"] = new_che
        await _rotate(network["CHE"], "CHE", network.signers["CHE"], new_che)
        await settle(network["CHE"])
        async with chn[1].store.read() as tx:
            channel = await tx.incoming_channel("CHE")
        crafter = Crafter(signer=new_che, sender="CHE", receiver="CHN", channel=channel)
        payload, _ = crafter.statement(status_query=partner_pb2.StatusQuery(transfer_id=transfer_id))
        receipt = await deliver_raw(chn[1], wire.envelope_to_bytes(crafter.envelope(payload)))
        assert receipt.taken_in, ResponseCode(receipt.code)
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_a_replica_without_the_signer_of_a_new_trust_document_signs_nothing(tmp_path: Path) -> None:
    """Replica A installs CHN's next trust document; replica B's configuration lacks its signer. B then sends
    nothing, never with the retired key, and leaves the lanes to A."""
    network, chn = await replicated(tmp_path, "CHN", 2)
    try:
        block = await setup_accounts(Pair(chn[0], network["CHE"]))
        new_chn = _new_signer(network, "chn-v2")
        chn[0].core.signers["v2"] = new_chn  # A only
        await _rotate(chn[0], "CHN", network.signers["CHN"], new_chn)
        await chn[0].core.outbox.stop()
        await chn[1].core.outbox.stop()  # B's drains are driven by hand
        transfer_id = await propose(chn[1], block, 1, 100, "b-lacks-the-signer")
        assert isinstance(transfer_id, str), transfer_id
        assert await chn[1].core.outbox.drain() == 0
        assert not chn[1].core.trust.can_sign()
        async with chn[1].store.read() as tx:
            sent = [e for e in await tx.log_of_transfer(transfer_id) if e.direction == "out"]
            [proposal] = [m for m in await tx.list_outbox("CHE") if m.transfer_id == transfer_id]
        assert sent == []  # nothing signed with the retired key
        assert proposal.state is OutboxState.PENDING and proposal.attempts == 0
        async with chn[1].store.transaction() as tx:
            # B holds no lease on the lane: another owner claims its head (the trust push) at once.
            now = dt.datetime.now(dt.UTC)
            claimed = await tx.claim_lane_heads(now, 10, owner="another", until=now + dt.timedelta(seconds=30))
            assert [(m.receiver, m.kind) for m in claimed] == [("CHE", OutboxKind.TRUST)]
            for message in claimed:
                await tx.release_lease(message.outbox_id, "another")
        chn[0].core.outbox.start()  # A holds the signer: it sends the lane
        async with operator(chn[0]) as stub:
            assert (await wait_for_state(stub, transfer_id, TERMINAL)).state == records_pb2.COMPLETED
    finally:
        await network.stop()


def _new_signer(network: Network, name: str) -> Signer:
    prefix = network.workdir / name
    generate_key(prefix)
    return signer_from_uri(f"file:{prefix}.key")


async def _rotate(node: GatewayNode, party: str, old: Signer, new: Signer, *, keep_old: bool = False) -> None:
    """Install ``party``'s version 2, whose roles list ``new`` (and ``old`` too, with ``keep_old``), signing
    with ``new`` from now on."""
    kept = (old,) if keep_old else ()
    document = TrustDocument(
        party=party,
        version=2,
        expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=90),
        keys={s.public_key.keyid: s.public_key for s in (new, *kept)},
        roles={"trust": Role((new.keyid,), 1), "transfer": Role(tuple(s.keyid for s in (new, *kept)), 1)},
    )
    envelope = sign_trust_document(document, [old, new])
    async with operator(node) as stub:
        status = await stub.RotateTrustDocument(
            operator_pb2.RotateTrustDocumentRequest(
                idempotency_key=f"rotate-{party}", envelope_json=envelope.to_json(), signer="v2"
            )
        )
    assert status.version == 2


async def test_replicas_that_find_a_reconciliation_due_at_once_start_one_run(tmp_path: Path) -> None:
    network, chn = await replicated(tmp_path, "CHN", 3)
    try:
        await setup_accounts(Pair(chn[0], network["CHE"]))
        started = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        day = dt.timedelta(days=1)
        for _ in range(2):  # the first run of the schedule, then (once it ended) the one after it
            results = await asyncio.gather(*(node.core.gateway.reconcile_due(day - day, started) for node in chn))
            found = {run.run_id for runs in results for run in runs}
            assert len(found) == 1, results
            (run_id,) = found
            for _ in range(2000):
                if (await chn[0].core.gateway.get_reconciliation(run_id)).status is not Status.RUNNING:
                    break
                await asyncio.sleep(0.01)
        async with chn[0].store.read() as tx:
            runs = await tx.list_reconciliations("CHE")
        assert len([r for r in runs if r.role.value == "requester"]) == 2
    finally:
        await network.stop()


async def test_a_message_leased_by_a_replica_that_died_is_sent_by_another_when_the_lease_ends(tmp_path: Path) -> None:
    network, chn = await replicated(tmp_path, "CHN", 2)
    try:
        block = await setup_accounts(Pair(chn[0], network["CHE"]))
        for node in chn:
            await node.core.outbox.stop()
        transfer_id = await propose(chn[0], block, 1, 10, "orphaned")
        assert isinstance(transfer_id, str), transfer_id
        # A replica claims the Proposal and dies before sending it: its lease is all that is left of it.
        now = dt.datetime.now(dt.UTC)
        lease = dt.timedelta(seconds=2)
        async with chn[0].store.transaction() as tx:
            claimed = await tx.claim_lane_heads(now, 10, owner="a replica that died", until=now + lease)
        assert [m.transfer_id for m in claimed] == [transfer_id]
        chn[1].core.outbox.start()
        chn[1].core.outbox.wake()
        await asyncio.sleep(lease.total_seconds() / 4)
        async with chn[1].store.read() as tx:  # not sent while the lease runs
            message = await tx.get_outbox(claimed[0].message_id)
            assert message is not None and message.state is OutboxState.PENDING and message.attempts == 0
            assert await tx.holds_lease(message.outbox_id, "a replica that died")
        async with operator(chn[1]) as stub:  # then taken over, and the transfer goes through
            assert (await wait_for_state(stub, transfer_id, TERMINAL, timeout=30)).state == records_pb2.COMPLETED
        async with chn[1].store.read() as tx:
            assert not await tx.holds_lease(claimed[0].outbox_id, "a replica that died")
    finally:
        await network.stop()


async def test_a_message_queued_by_a_replica_that_died_before_sending_is_sent_by_another(tmp_path: Path) -> None:
    network, chn = await replicated(tmp_path, "CHN", 2)
    try:
        block = await setup_accounts(Pair(chn[0], network["CHE"]))
        # The first replica queues the Proposal and dies before its worker sends it. The second one's worker is
        # idle, its outbox empty when it last looked, and nothing of the first's commit wakes it.
        await chn[0].core.outbox.stop()
        await settle(chn[1])
        transfer_id = await propose(chn[0], block, 1, 10, "queued-by-the-dead")
        assert isinstance(transfer_id, str), transfer_id
        async with operator(chn[1]) as stub:
            assert (await wait_for_state(stub, transfer_id, TERMINAL, timeout=15)).state == records_pb2.COMPLETED
    finally:
        await network.stop()


async def test_a_replica_whose_worker_stops_mid_send_hands_its_leases_over_at_once(tmp_path: Path) -> None:
    network, chn = await replicated(tmp_path, "CHN", 2)
    try:
        block = await setup_accounts(Pair(chn[0], network["CHE"]))
        for node in chn:
            await node.core.outbox.stop()
        transfer_id = await propose(chn[0], block, 1, 10, "handed-over")
        assert isinstance(transfer_id, str), transfer_id
        # The first replica's worker has claimed the Proposal for a long lease and is sending it as it stops.
        worker = chn[0].core.outbox
        worker.start()
        now = dt.datetime.now(dt.UTC)
        async with chn[0].store.transaction() as tx:
            [claimed] = await tx.claim_lane_heads(now, 10, owner=worker.replica, until=now + dt.timedelta(hours=1))
        await worker.stop()
        async with chn[1].store.read() as tx:
            assert not await tx.holds_lease(claimed.outbox_id, worker.replica)
        chn[1].core.outbox.start()
        chn[1].core.outbox.wake()
        async with operator(chn[1]) as stub:  # sent by the other replica at once, not an hour later
            assert (await wait_for_state(stub, transfer_id, TERMINAL, timeout=15)).state == records_pb2.COMPLETED
    finally:
        await network.stop()


async def test_replicas_sending_one_call_per_statement_to_a_slow_partner_take_no_run_from_each_other(
    tmp_path: Path,
) -> None:
    """CHE takes no DeliverBatch and answers each Deliver after 0.4 s; the two CHN replicas lease a run for 2 s.
    Eight Proposals queued together would take 3.2 s to send one by one: a replica sends only as many as it can
    before half its lease has passed and records them, so the other replica never finds the run's lease run out
    and sends it again, dropping the first one's receipts (each replica's in turn, with nothing ever recorded)."""
    network, chn = await replicated(tmp_path, "CHN", 2)
    proxy = grpc.aio.server()
    forward = grpc.aio.insecure_channel(network["CHE"].partner_address)

    async def slow(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await asyncio.sleep(0.4)
        answer: bytes = await forward.unary_unary(DELIVER_METHOD, None, None)(request, timeout=10)
        return answer

    async def no_batches(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "an earlier version")
        raise AssertionError("abort returns no answer")

    handlers = {
        "Deliver": grpc.unary_unary_rpc_method_handler(slow),
        "DeliverBatch": grpc.unary_unary_rpc_method_handler(no_batches),
    }
    proxy.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    port = proxy.add_insecure_port("127.0.0.1:0")
    await proxy.start()
    try:
        block = await setup_accounts(Pair(chn[0], network["CHE"]))
        await settle(*chn, network["CHE"])
        for node in chn:
            await node.core.outbox.stop()
            node.set_partner_address("CHE", f"127.0.0.1:{port}")
            node.core.outbox.lease = dt.timedelta(seconds=2)
        proposed = [await propose(chn[0], block, i * 10 + 1, i * 10 + 10, f"slow-{i}") for i in range(8)]
        assert all(isinstance(p, str) for p in proposed), proposed
        for node in chn:
            node.core.outbox.start()
            node.core.outbox.wake()
        await settle(*chn, timeout=30)
        async with network["CHE"].store.read() as tx:
            assert (await tx.incoming_channel("CHN")).last_sequence == len(await sequences_to(chn[0], "CHE"))
    finally:
        await proxy.stop(None)
        await forward.close(None)
        await network.stop()
