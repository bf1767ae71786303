"""Channels under pressure: a partner that keeps asking for resends, statements held far ahead of a gap,
retries during an outage, trust pushes nobody signed, units that passed through and are registered again,
and an operator who retries a rotation."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import sqlite3
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, partner_pb2, records_pb2
from gateway import outbox as outbox_module
from gateway import wire
from gateway.core import GatewayCore, PartnerSpec, utc_now
from gateway.demo import DEMO_AUTHORIZATION, Pair, demo_block, wait_for_state
from gateway.domain.errors import ResponseCode
from gateway.domain.nomenclature import DEFAULT_REGISTRIES, IssuingRegistry, Nomenclature
from gateway.domain.protocol import ACCEPT_ALL
from gateway.domain.transfer import TransferState
from gateway.exchange import TRUST_BUNDLE_PAYLOAD_TYPE, EnvelopeForm
from gateway.harness import self_signed_trust_document, start_network
from gateway.outbox import PartnerTransport, TransportError
from gateway.store.base import LogKind, OutboxKind, OutboxState
from gateway.store.sqlite import SQLiteStore
from signing import CryptoSigner, sign_envelope
from tests.integration.harness import (
    TERMINAL,
    Crafter,
    deliver_raw,
    error_code,
    operator,
    proposal_request,
    scripted_receipt,
    settle,
    setup_accounts,
    transfer,
)

OUTSIDE = IssuingRegistry(code="XX-REG", unit_kinds=("XXU",))
"""A registry outside the network of gateways: no Party issues it, so every gateway may register its units."""


async def gateway_before(
    partner: PartnerTransport, evl: CryptoSigner, tmp_path: Path, *, clock: Callable[[], dt.datetime] = utc_now
) -> GatewayCore:
    """A CHN gateway (no servers) whose only partner, EVL, is ``partner`` answering as the transport."""
    chn = CryptoSigner.generate()
    return GatewayCore(
        party="CHN",
        store=await SQLiteStore.open(tmp_path / "chn.db"),
        signer=chn,
        own_trust=self_signed_trust_document("CHN", chn),
        partners=[PartnerSpec("EVL", "evl", self_signed_trust_document("EVL", evl))],
        policy=ACCEPT_ALL,
        transport=lambda directory: partner,
        clock=clock,
    )


class GapPartner:
    """A partner that takes the first three statements in, then asks for everything again from sequence 1."""

    def __init__(self, signer: CryptoSigner) -> None:
        self.signer = signer
        self.deliveries = 0

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        self.deliveries += 1
        sequence = partner_pb2.Statement.FromString(wire.envelope_from_bytes(envelope).payload).header.sequence
        taken = sequence <= 3 and self.deliveries <= 3
        return scripted_receipt(
            self.signer,
            envelope,
            code=records_pb2.OK if taken else records_pb2.SEQUENCE_GAP,
            taken_in=taken,
            resend_from=0 if taken else 1,
            message_id=f"r-{self.deliveries}",
        )


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
async def test_a_partner_that_keeps_asking_for_resends_cannot_keep_the_outbox_busy(tmp_path: Path) -> None:
    evl = CryptoSigner.generate()
    partner = GapPartner(evl)
    now = dt.datetime.now(dt.UTC)
    core = await gateway_before(partner, evl, tmp_path, clock=lambda: now)
    try:
        await core.load()
        async with core.store.transaction() as tx:
            for i in range(5):
                await core.exchange.enqueue(tx, "EVL", status_query=partner_pb2.StatusQuery(transfer_id=f"t{i}"))
        await core.outbox.drain()  # returns: the resend request waits for the backoff
        assert partner.deliveries == 4
        async with core.store.read() as tx:
            pending = await tx.list_outbox(states=(OutboxState.PENDING,))
            logged = len(await tx.list_log())
        assert len(pending) == 5  # the three taken in are queued again, behind the backoff
        assert pending[0].next_attempt_at > now  # the lane's head waits
        await core.outbox.drain()
        assert partner.deliveries == 4  # nothing is due until the backoff passes
        async with core.store.read() as tx:
            assert len(await tx.list_log()) == logged
    finally:
        await core.close()


class MovingPlacePartner:
    """A partner that answers every statement with REPLAY, naming each time a new place it claims the channel is
    at: each answer asks the sender to catch up from there."""

    def __init__(self, signer: CryptoSigner) -> None:
        self.signer = signer
        self.deliveries = 0

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        self.deliveries += 1
        payload = wire.envelope_from_bytes(envelope).payload
        statement = partner_pb2.Statement.FromString(payload)
        receipt = partner_pb2.Receipt(
            message_id=f"r-{self.deliveries}",
            sender="EVL",
            receiver="CHN",
            in_reply_to=statement.header.message_id,
            payload_sha256=hashlib.sha256(payload).digest(),
            code=records_pb2.REPLAY,
            taken_in=False,
            envelope_sha256=hashlib.sha256(envelope).digest(),
            last_sequence=statement.header.sequence + 1,
            last_hash=hashlib.sha256(b"%d" % self.deliveries).digest(),
        )
        return wire.envelope_to_bytes(
            sign_envelope(wire.RECEIPT_PAYLOAD_TYPE, receipt.SerializeToString(), [self.signer])
        )


@pytest.mark.asyncio
async def test_a_partner_that_keeps_naming_a_new_place_cannot_keep_the_outbox_busy(tmp_path: Path) -> None:
    evl = CryptoSigner.generate()
    partner = MovingPlacePartner(evl)
    now = dt.datetime.now(dt.UTC)
    core = await gateway_before(partner, evl, tmp_path, clock=lambda: now)
    try:
        await core.load()
        async with core.store.transaction() as tx:
            await core.exchange.enqueue(tx, "EVL", status_query=partner_pb2.StatusQuery(transfer_id="t"))
        await asyncio.wait_for(core.outbox.drain(), 10)  # returns: the second catch-up waits for the backoff
        assert partner.deliveries == 2  # the first catch-up goes at once, as after a restore from a backup
        async with core.store.read() as tx:
            [pending] = await tx.list_outbox(states=(OutboxState.PENDING,))
        assert pending.next_attempt_at > now
        await core.outbox.drain()
        assert partner.deliveries == 2
    finally:
        await core.close()


@pytest.mark.asyncio
async def test_statements_far_ahead_of_a_gap_are_not_held_and_the_held_ones_apply_without_recursion(
    pair: Pair,
) -> None:
    from gateway.exchange import MAX_HELD_AHEAD

    await setup_accounts(pair)
    async with pair.chn.store.read() as tx:
        channel = await tx.outgoing_channel("CHE")
    crafter = Crafter(signer=pair.chn.signer, sender="CHN", receiver="CHE", channel=channel)
    first, _ = crafter.statement(status_query=partner_pb2.StatusQuery(transfer_id="first"))
    statements = [crafter.statement(status_query=partner_pb2.StatusQuery(transfer_id=f"q{i}"))[0] for i in range(300)]
    for payload in statements:
        receipt = await deliver_raw(pair.che, wire.envelope_to_bytes(crafter.envelope(payload)))
        assert ResponseCode(receipt.code) is ResponseCode.SEQUENCE_GAP
    async with pair.che.store.read() as tx:
        assert await tx.count_held() == MAX_HELD_AHEAD - 1  # sequences 2 .. 256 ahead of the last (0)
    # This one call applies the 255 held statements too: on PostgreSQL that is hundreds of round trips and
    # commits, longer than the usual deadline on a busy machine. Time is not what this test is about.
    receipt = await deliver_raw(pair.che, wire.envelope_to_bytes(crafter.envelope(first)), timeout=300)
    assert receipt.taken_in
    async with pair.che.store.read() as tx:
        assert await tx.count_held() == 0
        assert (await tx.incoming_channel("CHN")).last_sequence == channel.last_sequence + MAX_HELD_AHEAD


@pytest.mark.asyncio
async def test_retries_during_an_outage_send_and_log_one_envelope_until_it_nears_expiry(pair: Pair) -> None:
    block = await setup_accounts(pair)
    pair.chn.set_partner_address("CHE", "127.0.0.1:9")
    async with operator(pair.chn) as chn:
        proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
    for _ in range(5):
        async with pair.chn.store.transaction() as tx:
            for message in await tx.list_outbox(states=(OutboxState.PENDING,)):
                await tx.reschedule(message.outbox_id, code=0, error="", next_attempt_at=dt.datetime.now(dt.UTC))
        await pair.chn.outbox.drain()
    async with pair.chn.store.read() as tx:
        [message] = await tx.list_outbox(states=(OutboxState.PENDING,))
        sent = [e for e in await tx.logged("CHE", message.message_id) if e.kind is LogKind.STATEMENT]
    assert message.attempts >= 5
    assert len(sent) == 1
    assert sent[0].envelope == message.sealed
    del proposed


@pytest.mark.asyncio
async def test_a_trust_bundle_must_be_signed_by_the_partner_and_a_push_that_changes_nothing_is_not_logged(
    pair: Pair,
) -> None:
    import json

    che = pair.che
    chn_document = pair.chn.trust.own.envelope.to_json().decode()
    payload = json.dumps({"documents": [chn_document]}).encode()
    for signer, expected in ((CryptoSigner.generate(), ResponseCode.KEY_UNKNOWN_OR_REVOKED), (pair.chn.signer, None)):
        bundle = sign_envelope(TRUST_BUNDLE_PAYLOAD_TYPE, payload, [signer])
        async with che.store.read() as tx:
            before = len(await tx.list_log())
        received = await che.exchange.receive(wire.envelope_to_bytes(bundle), form=EnvelopeForm.PROTOBUF)
        if expected is None:
            assert received.taken_in and received.code is ResponseCode.OK
        else:
            assert not received.taken_in and received.code is expected
        async with che.store.read() as tx:
            assert len(await tx.list_log()) == before  # nothing new was learnt: nothing is kept


@pytest.mark.asyncio
async def test_units_that_passed_through_a_gateway_cannot_be_registered_there_again(tmp_path: Path) -> None:
    nomenclature = Nomenclature.of((*DEFAULT_REGISTRIES, OUTSIDE))
    network = await start_network(tmp_path, ("CHN", "CHE"), nomenclature=nomenclature)
    pair = Pair(network["CHN"], network["CHE"])
    try:
        await setup_accounts(pair)
        outside = demo_block(1_000_000, 1_000_099)
        outside.space.unit_kind, outside.space.issuing_registry = "XXU", "XX-REG"
        async with operator(pair.che) as che, operator(pair.chn) as chn:
            await che.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="auth", authorization=DEMO_AUTHORIZATION)
            )
            await che.RegisterIssuance(
                operator_pb2.RegisterIssuanceRequest(idempotency_key="x", account_id="CH-PH-0001", block=outside)
            )
            there = proposal_request(outside, 1_000_000, 1_000_099, "there")
            there.source_account = "CH-PH-0001"
            there.acquiring_account.party, there.acquiring_account.account_id = "CHN", "CN-PO-0001"
            sent = await che.ProposeTransfer(there)
            assert (await wait_for_state(che, sent.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            # CHN holds the units once it has taken in the Completion, which may come a moment after.
            assert (await wait_for_state(chn, sent.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            back = proposal_request(outside, 1_000_000, 1_000_099, "back")
            returned = await chn.ProposeTransfer(back)
            assert (await wait_for_state(chn, returned.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            await settle(pair.chn, pair.che)
            # The units are at CHE again; CHN saw them pass. Registering them at CHN would make a second copy.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.RegisterIssuance(
                    operator_pb2.RegisterIssuanceRequest(
                        idempotency_key="again", account_id="CN-PO-0001", block=outside
                    )
                )
        assert error_code(caught.value) == ResponseCode.BLOCK_OVERLAP
        assert "received here before" in (caught.value.details() or "")
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_a_retried_rotation_returns_the_first_answer(pair: Pair, tmp_path: Path) -> None:
    from gateway.harness import Network
    from signing import sign_trust_document
    from tests.integration.test_trust import next_document

    await setup_accounts(pair)
    new = CryptoSigner.generate()
    pair.chn.core.signers["next"] = new
    document = sign_trust_document(next_document(Network(tmp_path), "CHN", 2, new), [pair.chn.signer, new])
    request = operator_pb2.RotateTrustDocumentRequest(
        idempotency_key="rotate-2", envelope_json=document.to_json(), signer="next"
    )
    async with operator(pair.chn) as chn:
        first = await chn.RotateTrustDocument(request)
        again = await chn.RotateTrustDocument(request)
        changed = operator_pb2.RotateTrustDocumentRequest()
        changed.CopyFrom(request)
        changed.signer = "default"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.RotateTrustDocument(changed)
    assert first == again
    assert first.version == 2
    assert error_code(caught.value) == ResponseCode.IDEMPOTENCY_KEY_REUSED


@pytest.mark.asyncio
async def test_a_receipt_names_the_place_in_the_channel_where_the_statement_was_taken_in(pair: Pair) -> None:
    block = await setup_accounts(pair)
    async with operator(pair.chn) as chn:
        proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
        await wait_for_state(chn, proposed.transfer_id, TERMINAL)
    await settle(pair.chn, pair.che)
    async with pair.chn.store.read() as tx:
        sent = [e for e in await tx.list_log() if e.direction == "out" and e.kind is LogKind.STATEMENT]
    assert sent
    for entry in sent:
        envelope = wire.envelope_from_bytes(entry.envelope)
        statement = partner_pb2.Statement()
        statement.ParseFromString(envelope.payload)
        # The partner answers a statement it already has with the receipt it kept: the place is in it.
        receipt = await deliver_raw(pair.che, entry.envelope)
        assert receipt.taken_in
        assert receipt.last_sequence == statement.header.sequence
        assert receipt.last_hash == hashlib.sha256(envelope.payload).digest()


class ForgingPartner:
    """A partner that refuses every statement for now, with a receipt whose detail holds a line of its own
    making and a bidirectional override."""

    DETAIL = "busy\n2026-12-06 03:00:00,000 CRITICAL gateway: FORGED \u202egnp."

    def __init__(self, signer: CryptoSigner) -> None:
        self.signer = signer

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        code = records_pb2.INTERNAL_ERROR
        return scripted_receipt(self.signer, envelope, code=code, taken_in=False, detail=self.DETAIL)


@pytest.mark.asyncio
async def test_a_partner_s_receipt_detail_is_kept_and_logged_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    evl = CryptoSigner.generate()
    core = await gateway_before(ForgingPartner(evl), evl, tmp_path)
    try:
        await core.load()
        async with core.store.transaction() as tx:
            await core.exchange.enqueue(tx, "EVL", status_query=partner_pb2.StatusQuery(transfer_id="t"))
        caplog.set_level("INFO")
        await core.outbox.drain()
        async with core.store.read() as tx:
            [message] = await tx.list_outbox()
        assert message.state is OutboxState.PENDING
        shown = "INTERNAL_ERROR: busy\\n2026-12-06 03:00:00,000 CRITICAL gateway: FORGED \\u202egnp."
        assert shown in message.last_error
        logged = [r.getMessage() for r in caplog.records if "FORGED" in r.getMessage()]
        assert logged and all("\n" not in m and "\u202e" not in m for m in logged)
    finally:
        await core.close()


class NewerPartner:
    """A partner of a later release, whose receipts carry a response code this version does not know: the first
    statement taken in with its effect refused under that code, the second refused under it outright."""

    UNKNOWN_CODE = max(ResponseCode) + 1

    def __init__(self, signer: CryptoSigner) -> None:
        self.signer = signer
        self.deliveries: list[str] = []

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        statement = partner_pb2.Statement.FromString(wire.envelope_from_bytes(envelope).payload)
        self.deliveries.append(statement.status_query.transfer_id)
        taken = statement.status_query.transfer_id == "taken"
        return scripted_receipt(self.signer, envelope, code=self.UNKNOWN_CODE, taken_in=taken)


@pytest.mark.asyncio
async def test_a_receipt_with_a_response_code_of_a_later_release_settles_its_statement(tmp_path: Path) -> None:
    evl = CryptoSigner.generate()
    partner = NewerPartner(evl)
    core = await gateway_before(partner, evl, tmp_path)
    try:
        await core.load()
        async with core.store.transaction() as tx:
            for topic in ("taken", "refused", "after"):
                await core.exchange.enqueue(tx, "EVL", status_query=partner_pb2.StatusQuery(transfer_id=topic))
        await core.outbox.drain()
        async with core.store.read() as tx:
            taken, refused, after = await tx.list_outbox()
        # Taken in is taken in, whatever the partner made of the effect: the channel goes on.
        assert taken.state is OutboxState.DELIVERED
        # A refusal this version cannot read is final, as a malformed one is: an operator sees it, and the
        # statements behind it are not held up.
        assert refused.state is OutboxState.DEAD
        assert f"response code {NewerPartner.UNKNOWN_CODE}, unknown to this version" in refused.last_error
        assert after.state is OutboxState.DEAD  # the same partner refuses it too, and it is not retried for ever
        assert partner.deliveries == ["taken", "refused", "after"]
    finally:
        await core.close()


class TwoPartners:
    """Two partners, EVL and SLO, as the transport meets them: the ``slow`` ones answer only once released (as
    a partner at the edge of the transport's timeout would), the ``failing`` ones cannot be reached at their
    first call."""

    def __init__(self, signers: dict[str, CryptoSigner], *, slow: set[str], failing: Collection[str] = ()) -> None:
        self.signers = signers
        self.slow = slow
        self.failing = set(failing)
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()
        self.calls: list[str] = []

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        self.calls.append(party)
        if party in self.failing:
            self.failing.discard(party)
            raise TransportError(f"{party} cannot be reached for a moment")
        if party in self.slow:
            self.waiting.set()
            await self.release.wait()
        return scripted_receipt(self.signers[party], envelope, code=records_pb2.OK, taken_in=True, sender=party)


async def two_partners(tmp_path: Path, partners: TwoPartners) -> GatewayCore:
    """A CHN gateway (no servers) whose partners are EVL and SLO, answering as ``partners``."""
    chn = CryptoSigner.generate()
    core = GatewayCore(
        party="CHN",
        store=await SQLiteStore.open(tmp_path / "chn.db"),
        signer=chn,
        own_trust=self_signed_trust_document("CHN", chn),
        partners=[PartnerSpec(p, p.lower(), self_signed_trust_document(p, s)) for p, s in partners.signers.items()],
        policy=ACCEPT_ALL,
        transport=lambda directory: partners,
    )
    await core.load()
    return core


async def _queue(core: GatewayCore, receiver: str, transfer_id: str) -> None:
    async with core.store.transaction() as tx:
        await core.exchange.enqueue(tx, receiver, status_query=partner_pb2.StatusQuery(transfer_id=transfer_id))
    core.outbox.wake()


async def _delivered(core: GatewayCore, receiver: str) -> int:
    async with core.store.read() as tx:
        return sum(1 for m in await tx.list_outbox() if m.receiver == receiver and m.state is OutboxState.DELIVERED)


async def _until_delivered(core: GatewayCore, receiver: str, count: int, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while await _delivered(core, receiver) < count:
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


def _signers() -> dict[str, CryptoSigner]:
    return {"EVL": CryptoSigner.generate(), "SLO": CryptoSigner.generate()}


@pytest.mark.asyncio
async def test_a_partner_slow_to_answer_holds_up_its_own_lane_and_no_other(tmp_path: Path) -> None:
    partners = TwoPartners(_signers(), slow={"SLO"})
    core = await two_partners(tmp_path, partners)
    try:
        async with core.store.transaction() as tx:
            for party in ("SLO", "EVL"):
                await core.exchange.enqueue(tx, party, status_query=partner_pb2.StatusQuery(transfer_id="t1"))
        draining = asyncio.create_task(core.outbox.drain())
        await asyncio.wait_for(partners.waiting.wait(), 10)
        await _until_delivered(core, "EVL", 1, "EVL's statement waited for SLO's answer")
        # What is queued for EVL while SLO still holds its answer goes too, as it is queued.
        await _queue(core, "EVL", "t2")
        await _until_delivered(core, "EVL", 2, "EVL's next statement waited for SLO's answer")
        assert not draining.done() and await _delivered(core, "SLO") == 0
        partners.release.set()
        assert await asyncio.wait_for(draining, 10) == 3
        assert (await _delivered(core, "SLO"), await _delivered(core, "EVL")) == (1, 2)
    finally:
        await core.close()


@pytest.mark.asyncio
async def test_a_lane_whose_send_failed_is_tried_again_at_its_backoff_while_another_is_slow(tmp_path: Path) -> None:
    partners = TwoPartners(_signers(), slow={"EVL"}, failing={"SLO"})
    core = await two_partners(tmp_path, partners)
    core.outbox.start()
    try:
        await _queue(core, "EVL", "t1")
        await asyncio.wait_for(partners.waiting.wait(), 10)
        await _queue(core, "SLO", "t1")  # its first send fails; the backoff is 50 ms
        await _until_delivered(core, "SLO", 1, "SLO's retry waited for EVL's answer")
        assert partners.calls == ["EVL", "SLO", "SLO"]
        # And again, with SLO's lane busy with new statements while EVL still holds its answer.
        partners.failing.add("SLO")
        for i in range(5):
            await _queue(core, "SLO", f"t{i + 2}")
            await asyncio.sleep(0.02)
        await _until_delivered(core, "SLO", 6, "SLO's statements waited for EVL's answer")
        assert await _delivered(core, "EVL") == 0
        partners.release.set()
        await _until_delivered(core, "EVL", 1, "EVL's answer was lost")
        assert partners.calls.count("EVL") == 1
    finally:
        partners.release.set()
        await core.close()


@pytest.mark.asyncio
async def test_a_claim_that_fails_while_a_lane_is_being_sent_leaves_that_send_alone(tmp_path: Path) -> None:
    partners = TwoPartners(_signers(), slow={"EVL"})
    core = await two_partners(tmp_path, partners)
    claim = core.outbox._claim
    failing: list[bool] = []  # the next claim fails, once

    async def failing_once(**kwargs: Any) -> Any:
        if failing and not failing[0]:
            failing[0] = True
            raise sqlite3.OperationalError("disk I/O error")
        return await claim(**kwargs)

    core.outbox._claim = failing_once  # type: ignore[method-assign]
    core.outbox.start()
    try:
        await _queue(core, "EVL", "t1")
        await asyncio.wait_for(partners.waiting.wait(), 10)
        failing.append(False)
        await _queue(core, "SLO", "t1")
        deadline = asyncio.get_running_loop().time() + 10
        while not failing[0]:  # the claim that would take SLO's lane fails while EVL's answer is awaited
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert partners.calls == ["EVL"]
        partners.release.set()
        await _until_delivered(core, "EVL", 1, "EVL's answer was lost")
        await _until_delivered(core, "SLO", 1, "SLO's statement was not claimed again")
        assert partners.calls.count("EVL") == 1  # EVL's send was not abandoned and sent again
    finally:
        partners.release.set()
        await core.close()


class KeptReceiptPartner:
    """A partner that has taken the statement in before, from an attempt the sender no longer has in its log (its
    store was restored from a backup): it answers with the receipt it kept, which names another payload."""

    EARLIER = hashlib.sha256(b"the payload of an earlier attempt").digest()

    def __init__(self, signer: CryptoSigner, *, place: int) -> None:
        self.signer = signer
        self.place = place

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        parsed = wire.envelope_from_bytes(envelope)
        statement = partner_pb2.Statement()
        statement.ParseFromString(parsed.payload)
        receipt = partner_pb2.Receipt(
            message_id="kept",
            sender="EVL",
            receiver="CHN",
            in_reply_to=statement.header.message_id,
            payload_sha256=self.EARLIER,
            code=records_pb2.OK,
            taken_in=True,
            envelope_sha256=hashlib.sha256(b"the earlier envelope").digest(),
            last_sequence=self.place,
            last_hash=self.EARLIER if self.place else b"",
        )
        return wire.envelope_to_bytes(
            sign_envelope(wire.RECEIPT_PAYLOAD_TYPE, receipt.SerializeToString(), [self.signer])
        )


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("place", "delivered", "expected"),
    [
        pytest.param(
            7, True, (7, KeptReceiptPartner.EARLIER), id="the receipt names its place: the channel goes there"
        ),
        pytest.param(0, True, (0, b"\x00" * 32), id="neither receipt nor log says: the channel stays for REPLAY"),
        pytest.param(2**63 - 1, False, (0, b"\x00" * 32), id="a place where no channel can be: an unusable receipt"),
    ],
)
async def test_a_sender_without_the_earlier_attempt_in_its_log_follows_the_kept_receipt(
    tmp_path: Path, place: int, delivered: bool, expected: tuple[int, bytes]
) -> None:
    from gateway.domain.statements import GENESIS_HASH

    assert GENESIS_HASH == b"\x00" * 32
    evl = CryptoSigner.generate()
    core = await gateway_before(KeptReceiptPartner(evl, place=place), evl, tmp_path)
    try:
        await core.load()
        async with core.store.transaction() as tx:
            await core.exchange.enqueue(tx, "EVL", status_query=partner_pb2.StatusQuery(transfer_id="t"))
        await core.outbox.drain()
        async with core.store.read() as tx:
            channel = await tx.outgoing_channel("EVL")
            [message] = await tx.list_outbox()
        assert message.state is (OutboxState.DELIVERED if delivered else OutboxState.PENDING)
        assert (channel.last_sequence, channel.last_hash) == expected
    finally:
        await core.close()


@pytest.mark.asyncio
async def test_a_dead_letter_retried_is_signed_again_and_an_envelope_dated_ahead_of_the_clock_is_not_reused(
    pair: Pair,
) -> None:
    pair.chn.set_partner_address("CHE", "127.0.0.1:9")
    async with pair.chn.store.transaction() as tx:
        await pair.chn.exchange.enqueue(tx, "CHE", status_query=partner_pb2.StatusQuery(transfer_id="t"))
        [message] = await tx.list_outbox(states=(OutboxState.PENDING,))
        channel = await tx.outgoing_channel("CHE")
    now = dt.datetime.now(dt.UTC)
    ahead = pair.chn.exchange.seal(message, channel, now + dt.timedelta(hours=1))
    assert pair.chn.exchange.still_valid(ahead.envelope, pair.chn.exchange.seal(message, channel, now), now) is None
    async with pair.chn.store.transaction() as tx:
        await tx.mark_attempt(message.outbox_id, ahead.sequence, ahead.envelope)
        await tx.settle(message.outbox_id, OutboxState.DEAD, code=int(ResponseCode.REPLAY), error="ahead", now=now)
    await pair.chn.outbox.stop()
    async with operator(pair.chn) as chn:
        await chn.RetryDeadLetter(
            operator_pb2.RetryDeadLetterRequest(idempotency_key="retry", message_id=message.message_id)
        )
    async with pair.chn.store.read() as tx:
        retried = await tx.get_outbox(message.message_id)
    assert retried is not None
    assert retried.state is OutboxState.PENDING
    assert retried.sealed == b""


@pytest.mark.asyncio
async def test_a_trust_document_needing_more_signatures_than_the_gateway_makes_is_refused(pair: Pair) -> None:
    from signing import Role, TrustDocument, sign_trust_document

    new, other = CryptoSigner.generate(), CryptoSigner.generate()
    pair.chn.core.signers["next"] = new
    document = TrustDocument(
        party="CHN",
        version=2,
        expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=90),
        keys={k.public_key.keyid: k.public_key for k in (new, other)},
        roles={"trust": Role((new.keyid,), 1), "transfer": Role((new.keyid, other.keyid), 2)},
    )
    envelope = sign_trust_document(document, [pair.chn.signer, new])
    async with operator(pair.chn) as chn:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.RotateTrustDocument(
                operator_pb2.RotateTrustDocumentRequest(
                    idempotency_key="rotate-2", envelope_json=envelope.to_json(), signer="next"
                )
            )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(caught.value) == ResponseCode.INVALID_ARGUMENT
    assert "threshold" in (caught.value.details() or "")
    assert pair.chn.trust.own.version == 1
    assert pair.chn.exchange.signer is pair.chn.signer
    async with pair.chn.store.read() as tx:
        assert await tx.trust_document("CHN", 2) is None


@pytest.mark.asyncio
async def test_a_failed_look_for_unknown_lanes_at_start_does_not_stop_the_worker(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The start's look for lanes of Parties this gateway does not know is a warning only: a failure in it (here
    a date past the calendar's end) is logged, and the worker delivers as ever."""
    block = await setup_accounts(pair)
    monkeypatch.setattr(outbox_module, "EVERY_HEAD", dt.timedelta(days=3_000_000))
    with caplog.at_level(logging.ERROR, logger="gateway.outbox"):
        await pair.chn.outbox.stop()
        pair.chn.outbox.start()
        transfer_id = await transfer(pair, block, 1, 10, "after-a-failed-look")
    assert any("could not look for messages to Parties" in r.getMessage() for r in caplog.records)
    async with pair.che.store.read() as tx:
        found = await tx.get_transfer(transfer_id)
    assert found is not None and found.state is TransferState.COMPLETED


@pytest.mark.asyncio
async def test_a_lane_whose_head_cannot_be_sealed_waits_alone(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """A head for a Party this gateway has no partner for is left alone, untouched, for a replica that has it, and
    named once at the worker's start; one this gateway fails to seal waits its backoff; the other lanes' runs
    still go, and the worker goes on."""
    block = await setup_accounts(pair)
    now = utc_now()
    async with pair.chn.store.transaction() as tx:
        await tx.enqueue(
            receiver="GBR", message_id="to-nobody", kind=OutboxKind.PROPOSAL, transfer_id="x", body=b"", now=now
        )
    async with operator(pair.chn) as chn, operator(pair.che) as che:
        proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "beside"))
        await wait_for_state(che, proposed.transfer_id, [records_pb2.COMPLETED])
        await wait_for_state(chn, proposed.transfer_id, [records_pb2.COMPLETED])
    await pair.chn.outbox.drain()
    async with pair.chn.store.read() as tx:
        (nobody,) = [m for m in await tx.list_outbox() if m.message_id == "to-nobody"]
    # Not pushed back by a backoff: a replica configured with GBR sends it at once.
    assert nobody.state is OutboxState.PENDING and nobody.attempts == 0 and nobody.next_attempt_at == now
    assert nobody.last_error == ""
    with caplog.at_level(logging.WARNING, logger="gateway.outbox"):
        await pair.chn.outbox.stop()
        pair.chn.outbox.start()
        async with asyncio.timeout(30):
            while not any("messages to GBR wait in the outbox" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.01)

    # A statement body this gateway cannot read: its own lane waits its backoff, and the worker goes on.
    async with pair.chn.store.transaction() as tx:
        await tx.enqueue(
            receiver="CHE",
            message_id="unreadable",
            kind=OutboxKind.PROPOSAL,
            transfer_id="y",
            body=b"\xff\x01",
            now=now,
        )
    await pair.chn.outbox.drain()
    async with pair.chn.store.read() as tx:
        (unreadable,) = [m for m in await tx.list_outbox() if m.message_id == "unreadable"]
    assert unreadable.state is OutboxState.PENDING and unreadable.attempts == 1
    assert unreadable.last_code == ResponseCode.INTERNAL_ERROR and "this gateway failed" in unreadable.last_error
    assert unreadable.sequence == 0  # nothing was sealed, logged or sent
