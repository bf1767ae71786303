"""Runs of statements in one ``DeliverBatch`` call: the sender seals a lane's next statements together and
sends them in one call; the receiver applies consecutive statements in one transaction and answers each with
the receipt a separate ``Deliver`` call would have given. What is not delivered stops the run, and a partner without
``DeliverBatch`` gets the run one envelope per call."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from carbon_gateway.v1 import operator_pb2, partner_pb2, records_pb2
from gateway import exchange as exchange_module
from gateway import wire
from gateway.demo import Pair
from gateway.domain.errors import ResponseCode
from gateway.domain.statements import ChannelState
from gateway.exchange import FAILED_STATEMENT_ATTEMPTS, ExchangeSettings
from gateway.harness import start_network
from gateway.outbox import MAX_RUN, BatchesUnsupported, TransportError
from gateway.partners import Partner, PartnerDirectory
from gateway.rpc.partner import DELIVER_BATCH_METHOD, DELIVER_METHOD, SERVICE_NAME, GrpcPartnerTransport
from gateway.store.base import LogKind, OutboxKind, OutboxState
from gateway.store.sqlite import PAGE_CACHE_KIB
from signing import CryptoSigner, Role, TrustDocument, sign_trust_document
from tests.integration.harness import Crafter, error_code, operator, scripted_receipt, setup_accounts, transfer
from tests.integration.test_channels import gateway_before


def status_queries(count: int) -> list[dict[str, object]]:
    return [{"status_query": partner_pb2.StatusQuery(transfer_id=f"q{i}")} for i in range(count)]


async def enqueue_queries(pair: Pair, count: int) -> None:
    async with pair.chn.store.transaction() as tx:
        for body in status_queries(count):
            await pair.chn.core.exchange.enqueue(tx, "CHE", **body)


async def deliver_batch_raw(address: str, envelopes: list[bytes]) -> list[partner_pb2.Receipt]:
    """Send ``envelopes`` in one DeliverBatch call; return the receipts' payloads, in order."""
    async with grpc.aio.insecure_channel(address) as channel:
        raw: bytes = await channel.unary_unary(DELIVER_BATCH_METHOD, None, None)(
            partner_pb2.DeliveryBatch(envelopes=envelopes).SerializeToString(), timeout=10
        )
    receipts = []
    for envelope in partner_pb2.ReceiptBatch.FromString(raw).receipts:
        receipt = partner_pb2.Receipt()
        receipt.ParseFromString(wire.envelope_from_bytes(envelope).payload)
        receipts.append(receipt)
    return receipts


async def crafter_for(pair: Pair) -> Crafter:
    """Plays CHN on its real channel to CHE."""
    async with pair.chn.store.read() as tx:
        channel = await tx.outgoing_channel("CHE")
    return Crafter(signer=pair.chn.signer, sender="CHN", receiver="CHE", channel=channel)


@pytest.mark.asyncio
async def test_a_lane_of_statements_goes_in_one_call_and_each_gets_its_own_receipt(pair: Pair) -> None:
    transport = pair.chn.transport
    assert isinstance(transport, GrpcPartnerTransport)
    calls: list[tuple[str, int]] = []
    batch, single = transport.deliver_batch, transport.deliver

    async def spy_batch(party: str, envelopes: list[bytes]) -> list[bytes]:
        calls.append(("DeliverBatch", len(envelopes)))
        return await batch(party, envelopes)

    async def spy_single(party: str, envelope: bytes) -> bytes:
        calls.append(("Deliver", 1))
        return await single(party, envelope)

    transport.deliver_batch = spy_batch  # type: ignore[method-assign]
    transport.deliver = spy_single  # type: ignore[method-assign]
    await enqueue_queries(pair, 10)
    await pair.chn.outbox.drain()
    assert calls == [("DeliverBatch", 10)]
    async with pair.chn.store.read() as tx:
        sent = [m for m in await tx.list_outbox("CHE") if m.kind.value == "status_query"]
        receipts = [e for e in await tx.list_log() if e.direction == "in" and e.kind is LogKind.RECEIPT]
        ours = await tx.outgoing_channel("CHE")
    assert [m.state for m in sent] == [OutboxState.DELIVERED] * 10
    assert [m.sequence for m in sent] == list(range(1, 11))
    assert sorted(e.message_id for e in receipts) == sorted(m.message_id for m in sent)
    async with pair.che.store.read() as tx:
        theirs = await tx.incoming_channel("CHN")
        for message in sent:
            assert await tx.get_message("in", "CHN", message.message_id) is not None
    assert theirs == ours and ours.last_sequence == 10


@pytest.mark.asyncio
async def test_the_receiver_takes_a_batch_in_order_and_answers_each_envelope_in_place(pair: Pair) -> None:
    crafter = await crafter_for(pair)
    payloads = [crafter.statement(**body)[0] for body in status_queries(4)]
    envelopes = [wire.envelope_to_bytes(crafter.envelope(p)) for p in payloads]
    # Out of order, with garbage among them: the receiver answers each as Deliver would have.
    sent = [envelopes[1], b"not an envelope", envelopes[0], envelopes[3], envelopes[2]]
    receipts = await deliver_batch_raw(pair.che.partner_address, sent)
    codes = [ResponseCode(r.code) for r in receipts]
    assert codes == [
        ResponseCode.SEQUENCE_GAP,  # held behind the gap
        ResponseCode.MALFORMED_PAYLOAD,
        ResponseCode.OK,  # closes the gap: the held second one applies after it
        ResponseCode.SEQUENCE_GAP,
        ResponseCode.OK,  # the held fourth follows
    ]
    assert [r.payload_sha256 for r in receipts] == [
        hashlib.sha256(p).digest() if p else b"" for p in (payloads[1], b"", payloads[0], payloads[3], payloads[2])
    ]
    async with pair.che.store.read() as tx:
        assert (await tx.incoming_channel("CHN")).last_sequence == crafter.channel.last_sequence
    # The same batch again: every statement is one already taken in, answered from its stored receipt.
    again = await deliver_batch_raw(pair.che.partner_address, envelopes)
    assert [r.taken_in for r in again] == [True] * 4


def fork(crafter: Crafter, **changes: Any) -> Crafter:
    """A second sender on the same channel position, as a partner that signs two different statements there."""
    return dataclasses.replace(crafter, **changes)


def batch_case(crafter: Crafter, names: list[str]) -> list[bytes]:
    """The envelopes a case names, crafted in order on CHN's real channel to CHE:

    ``s`` the next statement; ``again`` the previous envelope once more; ``stale`` a different statement at the
    position before the last (behind the channel once the last is in); ``expired`` the next statement, issued two
    hours ago with an hour to live (not advancing the channel: the ``s`` after it takes its place); ``junk``
    bytes that are no envelope."""
    envelopes: list[bytes] = []
    for name in names:
        if name == "s":
            payload = crafter.statement(status_query=partner_pb2.StatusQuery(transfer_id="q"))[0]
            envelopes.append(wire.envelope_to_bytes(crafter.envelope(payload)))
        elif name == "again":
            envelopes.append(envelopes[-1])
        elif name == "stale":
            before = ChannelState(crafter.channel.last_sequence - 2, b"\x00" * 32)
            payload = fork(crafter, channel=before).statement(status_query=partner_pb2.StatusQuery(transfer_id="s"))[0]
            envelopes.append(wire.envelope_to_bytes(crafter.envelope(payload)))
        elif name == "expired":
            issued = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
            payload = fork(crafter, clock=lambda issued=issued: issued).statement(
                status_query=partner_pb2.StatusQuery(transfer_id="e")
            )[0]
            envelopes.append(wire.envelope_to_bytes(crafter.envelope(payload)))
        else:
            envelopes.append(b"junk")
    return envelopes


# Each batch's receipts are the ones the same envelopes would get in separate Deliver calls, though the
# statements that pass steps 1-5 are applied in one transaction, each under its own savepoint.
BATCH_CASES = {
    "in-order": (["s", "s", "s"], ["OK", "OK", "OK"], 3),
    "an expired statement in the middle is refused alone": (
        ["s", "expired", "s", "s"],
        ["OK", "MESSAGE_EXPIRED", "OK", "OK"],
        3,
    ),
    "a statement behind the channel is refused alone": (["s", "s", "stale", "s"], ["OK", "OK", "REPLAY", "OK"], 3),
    "a repeat is answered from its stored receipt": (["s", "again", "s"], ["OK", "OK", "OK"], 2),
    "junk splits the run": (["s", "junk", "s"], ["OK", "MALFORMED_PAYLOAD", "OK"], 2),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", list(BATCH_CASES), ids=list(BATCH_CASES))
async def test_a_batch_applied_in_one_transaction_answers_each_statement_as_alone(pair: Pair, case: str) -> None:
    names, expected, last_sequence = BATCH_CASES[case]
    crafter = await crafter_for(pair)
    start = crafter.channel.last_sequence
    envelopes = batch_case(crafter, names)
    receipts = await deliver_batch_raw(pair.che.partner_address, envelopes)
    assert [ResponseCode(r.code).name for r in receipts] == expected
    async with pair.che.store.read() as tx:
        channel = await tx.incoming_channel("CHN")
        logged = [e for e in await tx.list_log() if (e.direction, e.peer, e.kind) == ("in", "CHN", LogKind.STATEMENT)]
        kept = [await tx.get_message("in", "CHN", r.in_reply_to) for r in receipts if r.in_reply_to]
    assert channel.last_sequence == start + last_sequence
    # What was refused left nothing but its entries in the message log; what was taken in is indexed.
    assert [m is not None for m in kept] == [r.taken_in for r in receipts if r.in_reply_to]
    signed = [e for e, name in zip(envelopes, names, strict=True) if name != "junk"]
    assert [e.envelope for e in logged[-len(signed) :]] == signed


@pytest.mark.asyncio
async def test_a_statement_the_receiver_fails_on_does_not_keep_the_ones_before_it_out(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    crafter = await crafter_for(pair)
    envelopes = batch_case(crafter, ["s", "s", "s"])
    poison = partner_pb2.Statement.FromString(wire.envelope_from_bytes(envelopes[1]).payload).header.message_id
    exchange = pair.che.core.exchange
    receipt = exchange._receipt

    def failing(receiver: str, in_reply_to: str, *args: Any, **kwargs: Any) -> bytes:
        if in_reply_to == poison and kwargs.get("taken_in"):
            raise RuntimeError("a bug met while answering this statement")
        return receipt(receiver, in_reply_to, *args, **kwargs)

    monkeypatch.setattr(exchange, "_receipt", failing)
    receipts = await deliver_batch_raw(pair.che.partner_address, envelopes)
    # The run failed together, and was taken again one statement at a time: the first is in, the second is
    # answered with INTERNAL_ERROR and nothing of it kept, the third waits behind it.
    assert [(ResponseCode(r.code).name, r.taken_in) for r in receipts] == [
        ("OK", True),
        ("INTERNAL_ERROR", False),
        ("SEQUENCE_GAP", False),
    ]
    monkeypatch.undo()
    again = await deliver_batch_raw(pair.che.partner_address, envelopes[1:2])
    assert [(ResponseCode(r.code).name, r.taken_in) for r in again] == [("OK", True)]
    async with pair.che.store.read() as tx:
        # The third was held behind the gap and followed the second in.
        assert (await tx.incoming_channel("CHN")).last_sequence == crafter.channel.last_sequence


@pytest.mark.asyncio
async def test_a_statement_the_receiver_fails_on_in_a_batch_counts_one_failure_per_delivery(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    crafter = await crafter_for(pair)
    envelopes = batch_case(crafter, ["s", "s", "s"])
    poison = partner_pb2.Statement.FromString(wire.envelope_from_bytes(envelopes[1]).payload).header.message_id
    gateway = pair.che.core.gateway
    dispatch = gateway._dispatch
    tried: list[str] = []

    async def fails_on_the_second(tx: Any, partner: str, statement: partner_pb2.Statement) -> None:
        if statement.header.message_id == poison:
            tried.append(poison)
            raise RuntimeError("a bug met while applying this statement")
        await dispatch(tx, partner, statement)

    monkeypatch.setattr(gateway, "_dispatch", fails_on_the_second)
    # The sender sends the batch again from the statement not taken in, as its outbox would.
    answers = [await deliver_batch_raw(pair.che.partner_address, envelopes)]
    while not answers[-1][0].taken_in or len(answers) == 1:
        answers.append(await deliver_batch_raw(pair.che.partner_address, envelopes[1:]))
        assert len(answers) <= FAILED_STATEMENT_ATTEMPTS
    # Not taken in for four deliveries of the batch, however often a delivery applied it; taken in refused at the
    # fifth, with the statement behind it.
    first, *again, last = answers
    assert [(ResponseCode(r.code).name, r.taken_in) for r in first][:2] == [("OK", True), ("INTERNAL_ERROR", False)]
    assert len(again) == FAILED_STATEMENT_ATTEMPTS - 2
    assert all((ResponseCode(r[0].code), r[0].taken_in) == (ResponseCode.INTERNAL_ERROR, False) for r in again)
    assert [(ResponseCode(r.code).name, r.taken_in) for r in last] == [("INTERNAL_ERROR", True), ("OK", True)]
    assert len(tried) >= FAILED_STATEMENT_ATTEMPTS
    async with pair.che.store.read() as tx:
        assert (await tx.incoming_channel("CHN")).last_sequence == crafter.channel.last_sequence


@pytest.mark.sqlite_only(reason="SQLite's own rollback of a whole transaction when the disk is full")
@pytest.mark.asyncio
async def test_a_transaction_sqlite_rolls_back_by_itself_loses_no_statement_of_the_batch(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    crafter = await crafter_for(pair)
    start = crafter.channel.last_sequence
    envelopes = batch_case(crafter, ["s", "s", "s"])
    ids = [partner_pb2.Statement.FromString(wire.envelope_from_bytes(e).payload).header.message_id for e in envelopes]
    gateway = pair.che.core.gateway
    dispatch = gateway._dispatch
    filled: list[str] = []

    async def disk_fills(tx: Any, partner: str, statement: partner_pb2.Statement) -> None:
        if statement.header.message_id == ids[1] and not filled:
            filled.append(statement.header.message_id)
            # The disk fills while the second statement writes, with the page cache already spilled: SQLite
            # rolls the whole transaction back, the first statement's writes with it. Then there is room again.
            db = tx._db._db
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute("PRAGMA cache_size=10")
            db.execute(f"PRAGMA max_page_count={pages + 20}")
            try:
                await tx.append_log(
                    direction="in",
                    peer="CHN",
                    message_id="filler",
                    kind=LogKind.STATEMENT,
                    form="protobuf",
                    envelope=b"x" * 2_000_000,
                    now=dt.datetime.now(dt.UTC),
                )
            finally:
                db.execute("PRAGMA max_page_count=1073741823")
                db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        await dispatch(tx, partner, statement)

    monkeypatch.setattr(gateway, "_dispatch", disk_fills)
    receipts = await deliver_batch_raw(pair.che.partner_address, envelopes)
    assert filled
    # Nothing ran on after the rollback, statement by statement: the run was taken again one at a time, and
    # each statement is in, once, with its effect (a status report back).
    assert [(ResponseCode(r.code).name, r.taken_in) for r in receipts] == [("OK", True)] * 3
    async with pair.che.store.read() as tx:
        assert (await tx.incoming_channel("CHN")).last_sequence == start + 3
        assert all([await tx.get_message("in", "CHN", i) is not None for i in ids])
        reports = [m for m in await tx.list_outbox("CHN") if m.kind is OutboxKind.STATUS_REPORT]
    assert sorted(m.transfer_id for m in reports) == ["q", "q", "q"]


@pytest.mark.asyncio
async def test_a_trust_push_inside_a_batch_is_in_force_for_the_statements_after_it(pair: Pair) -> None:
    crafter = await crafter_for(pair)
    old = pair.chn.signer
    new = CryptoSigner.generate()
    version = pair.che.core.exchange.partners.get("CHN").trusted.version + 1  # type: ignore[union-attr]
    document = TrustDocument(
        party="CHN",
        version=version,
        expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=90),
        keys={new.public_key.keyid: new.public_key},
        roles={"trust": Role((new.keyid,), 1), "transfer": Role((new.keyid,), 1)},
    )
    push = wire.envelope_to_bytes(sign_trust_document(document, [old, new]))
    before = batch_case(crafter, ["s"])
    after_push = batch_case(fork(crafter, signer=new), ["s"])
    stale_key = batch_case(crafter, ["s"])  # the same position signed with the retired key
    receipts = await deliver_batch_raw(pair.che.partner_address, [*before, push, *after_push, *stale_key])
    assert [ResponseCode(r.code).name for r in receipts] == ["OK", "OK", "OK", "KEY_UNKNOWN_OR_REVOKED"]
    assert pair.che.core.exchange.partners.get("CHN").trusted.version == version  # type: ignore[union-attr]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("request_bytes", "detail"),
    [
        (b"\xff\xff\xff", "not a DeliveryBatch"),
        (partner_pb2.DeliveryBatch(envelopes=[b"x"] * (MAX_RUN + 1)).SerializeToString(), f"at most {MAX_RUN}"),
    ],
    ids=["not-a-batch", "too-many-envelopes"],
)
async def test_a_batch_the_receiver_cannot_read_is_refused_as_a_whole(
    pair: Pair, request_bytes: bytes, detail: str
) -> None:
    async with grpc.aio.insecure_channel(pair.che.partner_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary(DELIVER_BATCH_METHOD, None, None)(request_bytes, timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert detail in (refused.value.details() or "")
    # The stable response code a partner's engineers and gateway read, as for every other refusal.
    assert error_code(refused.value) == ResponseCode.MALFORMED_PAYLOAD


@pytest.mark.asyncio
async def test_a_batch_whose_commits_cannot_be_made_durable_is_refused_with_its_code(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    @asynccontextmanager
    async def disk_fails() -> AsyncIterator[None]:
        yield
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pair.che.core.store, "synced_once", disk_fails)
    crafter = await crafter_for(pair)
    async with grpc.aio.insecure_channel(pair.che.partner_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary(DELIVER_BATCH_METHOD, None, None)(
                partner_pb2.DeliveryBatch(envelopes=batch_case(crafter, ["s"])).SerializeToString(), timeout=10
            )
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # the sender sends the batch again
    assert error_code(refused.value) == ResponseCode.INTERNAL_ERROR


class HalfwayPartner:
    """EVL: takes in the first ``good`` statements of each call, then has a passing failure; those after it are
    held behind the gap. After ``healed`` is set, takes everything in."""

    def __init__(self, signer: CryptoSigner, good: int) -> None:
        self.signer = signer
        self.good = good
        self.healed = False
        self.calls: list[list[int]] = []
        self.taken: list[int] = []

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        return (await self.deliver_batch(party, [envelope]))[0]

    async def deliver_batch(self, party: str, envelopes: list[bytes]) -> list[bytes]:
        sequences = [
            partner_pb2.Statement.FromString(wire.envelope_from_bytes(e).payload).header.sequence for e in envelopes
        ]
        self.calls.append(sequences)
        receipts = []
        for index, (envelope, sequence) in enumerate(zip(envelopes, sequences, strict=True)):
            if self.healed or index < self.good:
                self.taken.append(sequence)
                receipts.append(scripted_receipt(self.signer, envelope, code=records_pb2.OK, taken_in=True))
            elif index == self.good:
                receipts.append(
                    scripted_receipt(self.signer, envelope, code=records_pb2.INTERNAL_ERROR, taken_in=False)
                )
            else:
                receipts.append(
                    scripted_receipt(
                        self.signer, envelope, code=records_pb2.SEQUENCE_GAP, taken_in=False, resend_from=sequence - 1
                    )
                )
        return receipts


@pytest.mark.sqlite_only(reason="a gateway core on its own SQLite file, with a scripted partner")
@pytest.mark.asyncio
async def test_a_run_stops_at_its_first_message_not_delivered_and_the_rest_go_again_behind_it(
    tmp_path: Path,
) -> None:
    evl = CryptoSigner.generate()
    partner = HalfwayPartner(evl, good=2)
    now = dt.datetime.now(dt.UTC)
    clock = [now]
    core = await gateway_before(partner, evl, tmp_path, clock=lambda: clock[0])
    try:
        await core.load()
        async with core.store.transaction() as tx:
            for body in status_queries(5):
                await core.exchange.enqueue(tx, "EVL", **body)
        await core.outbox.drain()
        assert partner.calls == [[1, 2, 3, 4, 5]]
        async with core.store.read() as tx:
            outbox = await tx.list_outbox("EVL")
            assert (await tx.outgoing_channel("EVL")).last_sequence == 2
        assert [m.state for m in outbox] == [OutboxState.DELIVERED] * 2 + [OutboxState.PENDING] * 3
        third, fourth, fifth = outbox[2:]
        assert third.last_code == ResponseCode.INTERNAL_ERROR and third.next_attempt_at > now
        # Those behind it were not refused: no attempt counted, no error, nothing to wait for but their head.
        assert (fourth.attempts, fourth.last_code, fifth.attempts) == (0, 0, 0)
        partner.healed = True
        clock[0] = now + dt.timedelta(minutes=1)
        await core.outbox.drain()
        assert partner.calls[1] == [3, 4, 5]  # the same places in the channel, in order
        async with core.store.read() as tx:
            assert [m.state for m in await tx.list_outbox("EVL")] == [OutboxState.DELIVERED] * 5
            assert (await tx.outgoing_channel("EVL")).last_sequence == 5
        assert partner.taken == [1, 2, 3, 4, 5]
    finally:
        await core.close()


class WithoutBatches(HalfwayPartner):
    """A partner of an earlier version: no DeliverBatch."""

    async def deliver_batch(self, party: str, envelopes: list[bytes]) -> list[bytes]:
        raise BatchesUnsupported("EVL does not take DeliverBatch")

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        return (await HalfwayPartner.deliver_batch(self, party, [envelope]))[0]


@pytest.mark.sqlite_only(reason="a gateway core on its own SQLite file, with a scripted partner")
@pytest.mark.asyncio
async def test_a_partner_without_batches_gets_the_run_one_envelope_per_call(tmp_path: Path) -> None:
    evl = CryptoSigner.generate()
    partner = WithoutBatches(evl, good=1)
    partner.healed = True
    core = await gateway_before(partner, evl, tmp_path)
    try:
        await core.load()
        async with core.store.transaction() as tx:
            for body in status_queries(3):
                await core.exchange.enqueue(tx, "EVL", **body)
        await core.outbox.drain()
        assert partner.calls == [[1], [2], [3]]
        async with core.store.read() as tx:
            assert [m.state for m in await tx.list_outbox("EVL")] == [OutboxState.DELIVERED] * 3
    finally:
        await core.close()


@pytest_asyncio.fixture
async def deliver_only(pair: Pair) -> AsyncIterator[tuple[str, list[str]]]:
    """A partner-exchange server of an earlier version: it serves Deliver only, forwarding to CHE."""
    calls: list[str] = []
    channel = grpc.aio.insecure_channel(pair.che.partner_address)

    async def deliver(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        calls.append("Deliver")
        answer: bytes = await channel.unary_unary(DELIVER_METHOD, None, None)(request, timeout=10)
        return answer

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Deliver": grpc.unary_unary_rpc_method_handler(deliver)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", calls
    finally:
        await server.stop(None)
        await channel.close(None)


@pytest.mark.asyncio
async def test_the_grpc_transport_learns_once_that_a_partner_lacks_deliver_batch(
    pair: Pair, deliver_only: tuple[str, list[str]]
) -> None:
    address, calls = deliver_only
    che = pair.chn.core.exchange.partners.get("CHE")
    assert che is not None
    directory = PartnerDirectory.of([Partner("CHE", address, che.trusted)])
    transport = GrpcPartnerTransport(directory)
    crafter = await crafter_for(pair)
    envelopes = [wire.envelope_to_bytes(crafter.envelope(crafter.statement(**b)[0])) for b in status_queries(2)]
    try:
        with pytest.raises(BatchesUnsupported):
            await transport.deliver_batch("CHE", envelopes)
        with pytest.raises(BatchesUnsupported):
            await transport.deliver_batch("CHE", envelopes)  # not asked again: known from the first answer
        assert calls == []
        receipt = partner_pb2.Receipt.FromString(
            wire.envelope_from_bytes(await transport.deliver("CHE", envelopes[0])).payload
        )
        assert receipt.taken_in and calls == ["Deliver"]
        with pytest.raises(TransportError, match="no partner 'GBR'"):
            await transport.deliver_batch("GBR", envelopes)
    finally:
        await transport.close()


@pytest.mark.asyncio
async def test_a_run_too_large_for_the_partners_server_goes_one_envelope_per_call(tmp_path: Path) -> None:
    # CHE takes envelopes of at most 4 KB, so its server takes messages of about 20 KB; CHN was not told and
    # assumes the default 1 MB. Forty statements of about 500 bytes fit CHE's cap each, not as one batch.
    def settings(party: str) -> ExchangeSettings:
        return ExchangeSettings(self_party=party, max_envelope_bytes=4096 if party == "CHE" else 1 << 20)

    network = await start_network(tmp_path, ("CHN", "CHE"), settings=settings)
    pair = Pair(network.nodes["CHN"], network.nodes["CHE"])
    try:
        async with pair.chn.store.transaction() as tx:
            for i in range(40):
                await pair.chn.core.exchange.enqueue(
                    tx, "CHE", status_query=partner_pb2.StatusQuery(transfer_id=f"q{i:03d}-" + "x" * 400)
                )
        await pair.chn.outbox.drain()
        async with pair.chn.store.read() as tx:
            sent = [m for m in await tx.list_outbox("CHE") if m.kind.value == "status_query"]
        assert [m.state for m in sent] == [OutboxState.DELIVERED] * 40
        async with pair.che.store.read() as tx:
            assert (await tx.incoming_channel("CHN")).last_sequence == 40
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_a_statement_taken_in_refused_in_a_batch_that_then_fails_keeps_its_count(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    crafter = await crafter_for(pair)
    envelopes = batch_case(crafter, ["s", "s"])
    first, second = (
        partner_pb2.Statement.FromString(wire.envelope_from_bytes(e).payload).header.message_id for e in envelopes
    )

    async def always_fails(tx: Any, partner: str, statement: partner_pb2.Statement) -> None:
        raise RuntimeError("a bug met while applying every statement")

    monkeypatch.setattr(pair.che.core.gateway, "_dispatch", always_fails)
    exchange = pair.che.core.exchange
    # The first is sent alone four times, then with the second, as an outbox sends a lane once more is due.
    for _ in range(FAILED_STATEMENT_ATTEMPTS - 1):
        [alone] = await deliver_batch_raw(pair.che.partner_address, envelopes[:1])
        assert (ResponseCode(alone.code), alone.taken_in) == (ResponseCode.INTERNAL_ERROR, False)
    answers = await deliver_batch_raw(pair.che.partner_address, envelopes)
    # Its fifth delivery takes it in refused, although the batch's first transaction, with the second failing in
    # it, was rolled back; the second's delivery counts once, whichever way the delivery applied it.
    assert [(ResponseCode(r.code).name, r.taken_in) for r in answers] == [
        ("INTERNAL_ERROR", True),
        ("INTERNAL_ERROR", False),
    ]
    assert (exchange._failed_attempts.get(("CHN", first)), exchange._failed_attempts.get(("CHN", second))) == (None, 1)


@pytest.mark.asyncio
async def test_a_long_run_is_applied_in_transactions_of_bounded_size_with_the_loop_free_between(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    crafter = await crafter_for(pair)
    envelopes = batch_case(crafter, ["s"] * 6)
    # Room for two of these statements in a transaction, not three.
    monkeypatch.setattr(exchange_module, "RUN_BYTES_PER_TRANSACTION", 2 * max(len(e) for e in envelopes) + 1)
    exchange = pair.che.core.exchange
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    applied: list[tuple[int, int]] = []  # statements each transaction applied, and the ticker's turns before it
    together = exchange._apply_together

    async def spy(group: Any, form: Any, *, held: bool) -> Any:
        began = turns
        outcomes, after = await together(group, form, held=held)
        applied.append((len(outcomes), began))
        return outcomes, after

    monkeypatch.setattr(exchange, "_apply_together", spy)
    ticking = asyncio.create_task(ticker())
    try:
        receipts = await deliver_batch_raw(pair.che.partner_address, envelopes)
    finally:
        ticking.cancel()
    assert [ResponseCode(r.code) for r in receipts] == [ResponseCode.OK] * 6
    assert [count for count, _ in applied] == [2, 2, 2]
    # Other tasks of the process ran between one transaction and the next.
    assert all(later > earlier for (_, earlier), (_, later) in itertools.pairwise(applied))
    async with pair.che.store.read() as tx:
        assert (await tx.incoming_channel("CHN")).last_sequence == crafter.channel.last_sequence


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("known", "state", "says"),
    [(False, 0, "unknown to it"), (True, records_pb2.REJECTED, "REJECTED")],
    ids=["unknown", "rejected"],
)
async def test_a_partner_reporting_otherwise_a_transfer_completed_here_is_logged(
    pair: Pair, caplog: pytest.LogCaptureFixture, known: bool, state: int, says: str
) -> None:
    transfer_id = await transfer(pair, await setup_accounts(pair), 1, 10, "done")
    crafter = await crafter_for(pair)
    report = partner_pb2.StatusReport(transfer_id=transfer_id, known=known, state=state)  # type: ignore[arg-type]
    payload = crafter.statement(status_report=report)[0]
    caplog.set_level(logging.WARNING, logger="gateway")
    [receipt] = await deliver_batch_raw(pair.che.partner_address, [wire.envelope_to_bytes(crafter.envelope(payload))])
    assert (ResponseCode(receipt.code), receipt.taken_in) == (ResponseCode.OK, True)
    warned = [r.getMessage() for r in caplog.records if "while it is COMPLETED here" in r.getMessage()]
    assert warned == [
        f"CHN reports transfer {transfer_id} {says} while it is COMPLETED here: run a reconciliation with CHN"
    ]
    async with operator(pair.che) as che:  # the books stay as they are
        assert (
            await che.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))
        ).state == records_pb2.COMPLETED


@pytest.mark.asyncio
async def test_a_partner_back_after_being_unreachable_is_reached_at_the_next_try(pair: Pair) -> None:
    """A channel that failed to connect answers from its last error until its own reconnection backoff has
    passed, even once the partner listens again: the next try after the partner is back must reach it."""
    from tests.processes import free_port

    address = f"127.0.0.1:{free_port()}"
    che = pair.chn.core.exchange.partners.get("CHE")
    assert che is not None
    transport = GrpcPartnerTransport(PartnerDirectory.of([Partner("CHE", address, che.trusted)]), timeout=2.0)
    answered: list[bytes] = []

    async def deliver(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        answered.append(request)
        return b"receipt"

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Deliver": grpc.unary_unary_rpc_method_handler(deliver)}),)
    )
    try:
        # Nothing listens: each failed connection lengthens the channel's backoff (1 s, 1.6 s, 2.6 s, ...).
        for _ in range(3):
            with pytest.raises(TransportError, match="UNAVAILABLE"):
                await transport.deliver("CHE", b"envelope")
            await asyncio.sleep(1.2)
        assert server.add_insecure_port(address) == int(address.rsplit(":", 1)[1])
        await server.start()
        assert await transport.deliver("CHE", b"envelope") == b"receipt"
        assert answered == [b"envelope"]
    finally:
        await transport.close()
        await server.stop(None)


@pytest.mark.asyncio
async def test_a_partner_silent_until_the_deadline_gets_a_new_channel_and_a_late_failure_keeps_the_newer(
    pair: Pair,
) -> None:
    """A call that ends at its deadline (a partner whose packets are dropped, say) drops its channel as an
    unreachable partner's does; a failure that comes back on a channel already replaced leaves the newer one."""
    che = pair.chn.core.exchange.partners.get("CHE")
    assert che is not None
    release = asyncio.Event()

    async def deliver(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await release.wait()
        return b"receipt"

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Deliver": grpc.unary_unary_rpc_method_handler(deliver)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    transport = GrpcPartnerTransport(
        PartnerDirectory.of([Partner("CHE", f"127.0.0.1:{port}", che.trusted)]), timeout=0.5
    )
    try:
        first = asyncio.create_task(transport.deliver("CHE", b"envelope"))
        await asyncio.sleep(0.1)
        [old] = transport._channels.values()
        with pytest.raises(TransportError, match="DEADLINE_EXCEEDED"):
            await first
        assert transport._channels == {}
        release.set()
        assert await transport.deliver("CHE", b"envelope") == b"receipt"
        [new] = transport._channels.values()
        assert new is not old
        late = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "late", None)
        transport._failed("CHE", old, late)  # the old channel's last call failing only now
        assert list(transport._channels.values()) == [new]
    finally:
        await transport.close()
        await server.stop(None)
