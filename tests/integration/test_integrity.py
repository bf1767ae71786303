"""The integrity defects of issue 8, one test (or a few) named for each, on real gateways.

Each test reproduces what was found on the earlier main and asserts the behaviour DESIGN.md section 4 now
requires ("What same means", "Provenance", "Poison messages", "Crossing messages").
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, partner_pb2, records_pb2
from gateway import wire
from gateway.demo import DEMO_AUTHORIZATION, Pair, demo_block, wait_for_state
from gateway.domain.errors import ResponseCode
from gateway.domain.protocol import Deadlines
from gateway.exchange import FAILED_STATEMENT_ATTEMPTS, EnvelopeForm, ExchangeSettings
from gateway.harness import Network, start_network
from gateway.node import GatewayNode
from gateway.outbox import PartnerTransport
from gateway.rpc.errors import read_error_detail
from gateway.store.base import BlockStatus, LogKind, OutboxState
from gateway.usecases.initiating import Initiating
from signing import CryptoSigner, Role, Signer, TrustDocument, TrustedParty, sign_envelope, sign_trust_document
from tests.integration.harness import (
    TERMINAL,
    Crafter,
    deliver_raw,
    error_code,
    operator,
    proposal_request,
    settle,
    setup_accounts,
    transfer,
)


class Clock:
    """A clock tests move; every gateway reading it sees the same time."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


async def crafter(node: GatewayNode, receiver: str, signer: Signer | None = None) -> Crafter:
    """A crafter that continues ``node``'s real channel to ``receiver``."""
    async with node.store.read() as tx:
        channel = await tx.outgoing_channel(receiver)
    return Crafter(signer=signer or node.signer, sender=node.party, receiver=receiver, channel=channel)


def proposal(
    transfer_id: str,
    ranges: list[tuple[int, int]],
    *,
    sender: str = "CHN",
    receiver: str = "CHE",
    source: str = "CN-PO-0001",
    account: str = "CH-PH-0001",
    unit_kind: str = "CCER",
    registry: str = "CN-CCER",
    first_transferred: bool = False,
) -> partner_pb2.Proposal:
    """A Proposal as a partner would send it, for the demo's CCER units."""
    blocks = []
    for start, end in ranges:
        block = demo_block(start, end)
        block.space.unit_kind, block.space.issuing_registry = unit_kind, registry
        block.first_transferred = first_transferred
        blocks.append(block)
    return partner_pb2.Proposal(
        transfer_id=transfer_id,
        blocks=blocks,
        source_account=records_pb2.AccountRef(party=sender, account_id=source),
        acquiring_account=records_pb2.AccountRef(party=receiver, account_id=account),
        cooperative_approach="CA0001",
        authorization_id="CHN-A-0001",
        purpose="NDC",
        adjustment_method="single-year averaging",
    )


async def send(
    node: GatewayNode, receiver: GatewayNode, signer: Signer | None = None, **body: object
) -> partner_pb2.Receipt:
    """Deliver one statement on ``node``'s real channel to ``receiver`` and return the receipt."""
    c = await crafter(node, receiver.party, signer)
    payload, _ = c.statement(**body)
    receipt = await deliver_raw(receiver, wire.envelope_to_bytes(c.envelope(payload)))
    if receipt.taken_in:
        async with node.store.transaction() as tx:  # keep the real channel in step with what was delivered
            await tx.set_outgoing_channel(receiver.party, c.channel)
    return receipt


async def decisions_from(node: GatewayNode, transfer_id: str) -> list[partner_pb2.Decision]:
    """The Decisions ``node`` sent about ``transfer_id``, read from its message log (one per statement)."""
    found: dict[str, partner_pb2.Decision] = {}
    async with node.store.read() as tx:
        log = await tx.list_log()
    for entry in log:
        if entry.direction != "out" or entry.kind is not LogKind.STATEMENT:
            continue
        statement = partner_pb2.Statement()
        statement.ParseFromString(wire.envelope_from_bytes(entry.envelope).payload)
        if statement.WhichOneof("body") == "decision" and statement.decision.transfer_id == transfer_id:
            found[statement.header.message_id] = statement.decision
    return list(found.values())


async def state_of(node: GatewayNode, transfer_id: str) -> int:
    async with operator(node) as stub:
        return (await stub.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))).state


async def holdings(node: GatewayNode) -> list[tuple[int, int, str, str]]:
    async with node.store.read() as tx:
        return [
            (b.block.start, b.block.end, b.status.value, b.block.space.unit_kind)
            for b in await tx.list_blocks(statuses=(BlockStatus.HELD, BlockStatus.RESERVED, BlockStatus.PENDING))
        ]


async def wait_until(check: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the condition did not hold in time")
        await asyncio.sleep(0.01)


async def dead_letters(node: GatewayNode) -> list[operator_pb2.OutboxEntry]:
    async with operator(node) as stub:
        return list((await stub.ListDeadLetters(operator_pb2.ListDeadLettersRequest())).entries)


async def issue(node: GatewayNode, start: int, end: int, key: str, **space: str) -> operator_pb2.Holding:
    block = demo_block(start, end)
    for name, value in space.items():
        setattr(block.space, name, value)
    async with operator(node) as stub:
        return await stub.RegisterIssuance(
            operator_pb2.RegisterIssuanceRequest(idempotency_key=key, account_id="CN-PO-0001", block=block)
        )


# 1. Serial-space spelling ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit_kind", "registry"), [("ccer", "CN-CCER"), ("CCER ", "cn-ccer"), ("ＣＣＥＲ", "CN-CCER")]
)
@pytest.mark.asyncio
async def test_defect_01_a_respelled_serial_space_cannot_bring_held_units_in_twice(
    pair: Pair, unit_kind: str, registry: str
) -> None:
    block = await setup_accounts(pair)
    await transfer(pair, block, 1, 400, "t1")
    before = await holdings(pair.che)
    receipt = await send(
        pair.chn, pair.che, proposal=proposal("respelled", [(1, 400)], unit_kind=unit_kind, registry=registry)
    )
    assert receipt.taken_in
    await settle(pair.chn, pair.che)
    assert await holdings(pair.che) == before  # nothing pending: the units are CHE's once, in one spelling
    [decision] = await decisions_from(pair.che, "respelled")
    assert not decision.accepted
    assert [ResponseCode(r.code) for r in decision.rejections] == [ResponseCode.BLOCK_OVERLAP]


@pytest.mark.asyncio
async def test_defect_01_an_unknown_serial_space_is_refused_not_stored(pair: Pair) -> None:
    block = await setup_accounts(pair)
    await transfer(pair, block, 1, 10, "t1")
    before = await holdings(pair.che)
    receipt = await send(pair.chn, pair.che, proposal=proposal("unknown-kind", [(1, 400)], unit_kind="CCER2"))
    assert receipt.taken_in
    assert ResponseCode(receipt.code) is ResponseCode.UNKNOWN_SERIAL_SPACE
    await settle(pair.chn, pair.che)
    assert await holdings(pair.che) == before
    [decision] = await decisions_from(pair.che, "unknown-kind")
    assert [ResponseCode(r.code) for r in decision.rejections] == [ResponseCode.UNKNOWN_SERIAL_SPACE]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await issue(pair.chn, 5000, 5010, "unknown", unit_kind="CCER", issuing_registry="CN-CCER-2")
    assert error_code(caught.value) == ResponseCode.UNKNOWN_SERIAL_SPACE
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert read_field(caught.value) == "block.space.issuing_registry"


@pytest.mark.asyncio
async def test_defect_01_register_issuance_puts_a_respelled_space_in_canonical_form_and_refuses_the_overlap(
    pair: Pair,
) -> None:
    await setup_accounts(pair)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await issue(pair.chn, 1, 400, "again", unit_kind="ccer", issuing_registry=" cn-ccer")
    assert error_code(caught.value) == ResponseCode.BLOCK_OVERLAP
    stored = await issue(pair.chn, 2001, 2400, "new", unit_kind="ccer", issuing_registry="cn-ccer ")
    assert (stored.block.space.unit_kind, stored.block.space.issuing_registry) == ("CCER", "CN-CCER")


# 2. Units that left come back from nowhere ----------------------------------------------------------


@pytest.mark.asyncio
async def test_units_tied_here_come_back_only_for_a_purpose_their_authorization_authorizes(pair: Pair) -> None:
    block = await setup_accounts(pair)
    await transfer(pair, block, 1, 100, "out")
    # CHE's copy of CHN's authorization says OIMP, where CHN's own (DEMO_AUTHORIZATION) says NDC alone.
    copy = records_pb2.Authorization()
    copy.CopyFrom(DEMO_AUTHORIZATION)
    del copy.purposes[:]
    copy.purposes.append("OIMP")
    copy.first_transfer_definition = "Use or Cancellation"  # the first international transfer is for NDC alone
    back = proposal_request(block, 1, 100, "back")
    back.source_account = "CH-PH-0001"
    back.acquiring_account.party, back.acquiring_account.account_id = "CHN", "CN-PO-0001"
    back.purpose = "OIMP"
    async with operator(pair.che) as che, operator(pair.chn) as chn:
        await che.RegisterAuthorization(
            operator_pb2.RegisterAuthorizationRequest(idempotency_key="copy", authorization=copy)
        )
        proposed = await che.ProposeTransfer(back)
        await wait_for_state(che, proposed.transfer_id, TERMINAL)
        at_chn = await wait_for_state(chn, proposed.transfer_id, TERMINAL)
        ledger = await chn.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())
    assert at_chn.state == records_pb2.REJECTED
    assert [ResponseCode(r.code) for r in at_chn.rejections] == [ResponseCode.PURPOSE_NOT_ALLOWED]
    assert "CHN's authorization 'CHN-A-0001' (NDC)" in at_chn.rejections[0].message
    assert await state_of(pair.che, proposed.transfer_id) == records_pb2.REJECTED
    await settle(pair.chn, pair.che)
    assert await holdings(pair.che) == [(1, 100, "held", "CCER")]  # released at CHE, never acquired at CHN
    assert [e.action_type for e in ledger.entries if e.transfer_id == proposed.transfer_id] == []


@pytest.mark.asyncio
async def test_a_copy_of_another_partys_authorization_keeps_the_id_that_party_chose(pair: Pair) -> None:
    # Another Party's ID is its own spelling, even one this gateway would not choose for a new account.
    copy = records_pb2.Authorization()
    copy.CopyFrom(DEMO_AUTHORIZATION)
    copy.authorization_id = "CHN\u00a0A-0002"
    async with operator(pair.che) as che:
        await che.RegisterAuthorization(
            operator_pb2.RegisterAuthorizationRequest(idempotency_key="c", authorization=copy)
        )
        listed = await che.ListAuthorizations(
            operator_pb2.ListAuthorizationsRequest(authorization_id=copy.authorization_id)
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await che.OpenAccount(
                operator_pb2.OpenAccountRequest(
                    idempotency_key="a",
                    account=records_pb2.Account(
                        account_id="CH\u00a0PH", holder_name="Holder", account_type="Party holding"
                    ),
                )
            )
    assert [v.authorization_id for v in listed.versions] == [copy.authorization_id]
    assert error_code(caught.value) == ResponseCode.INVALID_ARGUMENT


@pytest.mark.asyncio
async def test_units_first_transferred_under_a_version_come_back_for_its_purpose_after_an_amendment(
    pair: Pair,
) -> None:
    block = await setup_accounts(pair)
    await transfer(pair, block, 1, 100, "out")  # for NDC, under version 1.0
    amended = records_pb2.Authorization()
    amended.CopyFrom(DEMO_AUTHORIZATION)
    amended.version, amended.date = "2.0", dt.date.today().isoformat()
    del amended.purposes[:]
    amended.purposes.append("OIMP")
    amended.first_transfer_definition = "Use or Cancellation"  # the first international transfer is for NDC alone
    back = proposal_request(block, 1, 100, "back")
    back.source_account = "CH-PH-0001"
    back.acquiring_account.party, back.acquiring_account.account_id = "CHN", "CN-PO-0001"
    async with operator(pair.che) as che, operator(pair.chn) as chn:
        await chn.AmendAuthorization(
            operator_pb2.AmendAuthorizationRequest(idempotency_key="v2", authorization=amended)
        )
        await che.RegisterAuthorization(
            operator_pb2.RegisterAuthorizationRequest(idempotency_key="copy", authorization=DEMO_AUTHORIZATION)
        )
        proposed = await che.ProposeTransfer(back)
        at_chn = await wait_for_state(chn, proposed.transfer_id, TERMINAL)
    assert at_chn.state == records_pb2.COMPLETED, list(at_chn.rejections)


@pytest.mark.asyncio
async def test_defect_02_units_that_left_cannot_be_registered_again(pair: Pair) -> None:
    block = await setup_accounts(pair)
    await transfer(pair, block, 1, 400, "t1")
    for start, end in ((1, 400), (400, 401), (1, 1)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await issue(pair.chn, start, end, f"again-{start}-{end}")
        assert error_code(caught.value) == ResponseCode.BLOCK_OVERLAP
    async with operator(pair.chn) as chn:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await chn.ProposeTransfer(proposal_request(block, 1, 400, "second first transfer"))
    assert error_code(refused.value) == ResponseCode.UNIT_NOT_HELD


@pytest.mark.asyncio
async def test_defect_02_a_partner_cannot_send_back_units_of_our_issue_that_never_left(pair: Pair) -> None:
    block = await setup_accounts(pair)
    await transfer(pair, block, 1, 400, "t1")
    before = await holdings(pair.chn)
    cases = {
        "never issued": [(5000, 5100)],
        "issued, never sent": [(900, 950)],
        "partly abroad": [(350, 450)],
    }
    for transfer_id, ranges in cases.items():
        receipt = await send(
            pair.che,
            pair.chn,
            proposal=proposal(
                transfer_id,
                ranges,
                sender="CHE",
                receiver="CHN",
                source="CH-PH-0001",
                account="CN-PO-0001",
                first_transferred=True,
            ),
        )
        assert receipt.taken_in
    await settle(pair.chn, pair.che)
    assert await holdings(pair.chn) == before
    for transfer_id in cases:
        [decision] = await decisions_from(pair.chn, transfer_id)
        assert not decision.accepted
        assert ResponseCode.PROVENANCE_REFUSED in [ResponseCode(r.code) for r in decision.rejections], transfer_id


@pytest.mark.asyncio
async def test_defect_02_units_that_left_come_back_once_and_then_are_home(tmp_path: Path) -> None:
    network = await start_network(tmp_path, ("CHN", "CHE"))
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        async with operator(pair.che) as che:
            await che.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="auth", authorization=DEMO_AUTHORIZATION)
            )
        await transfer(pair, block, 1, 400, "out")
        returned = await send(
            pair.che,
            pair.chn,
            proposal=proposal(
                "back",
                [(1, 400)],
                sender="CHE",
                receiver="CHN",
                source="CH-PH-0001",
                account="CN-PO-0001",
                first_transferred=True,
            ),
        )
        assert returned.taken_in and ResponseCode(returned.code) is ResponseCode.OK
        await settle(pair.chn, pair.che)
        [accepted] = await decisions_from(pair.chn, "back")
        assert accepted.accepted
        # CHE (played by the test) completes; the units are home at CHN, first transferred, and only once.
        completion = partner_pb2.Completion(transfer_id="back", completed_at=wire.timestamp(dt.datetime.now(dt.UTC)))
        assert ResponseCode((await send(pair.che, pair.chn, completion=completion)).code) is ResponseCode.OK
        assert (1, 400, "held", "CCER") in await holdings(pair.chn)
        again = await send(
            pair.che,
            pair.chn,
            proposal=proposal(
                "back-twice",
                [(1, 400)],
                sender="CHE",
                receiver="CHN",
                source="CH-PH-0001",
                account="CN-PO-0001",
                first_transferred=True,
            ),
        )
        assert again.taken_in
        await settle(pair.chn, pair.che)
        [refused] = await decisions_from(pair.chn, "back-twice")
        codes = {ResponseCode(r.code) for r in refused.rejections}
        assert codes == {ResponseCode.BLOCK_OVERLAP, ResponseCode.PROVENANCE_REFUSED}
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_defect_02_a_partner_cannot_register_units_of_a_space_another_party_issues(pair: Pair) -> None:
    await setup_accounts(pair)
    block = demo_block(1, 10)
    async with operator(pair.che) as che:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await che.RegisterIssuance(
                operator_pb2.RegisterIssuanceRequest(idempotency_key="foreign", account_id="CH-PH-0001", block=block)
            )
    assert error_code(caught.value) == ResponseCode.PROVENANCE_REFUSED
    assert "CHN" in (caught.value.details() or "")


# 3. One bad message stops a channel ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_defect_03_a_header_sequence_beyond_64_bits_is_refused_and_the_channel_goes_on(pair: Pair) -> None:
    await setup_accounts(pair)
    c = await crafter(pair.chn, "CHE")
    for sequence in (2**63, 2**64 - 1):
        payload, _header = c.statement(status_query=partner_pb2.StatusQuery(transfer_id="x"))
        statement = partner_pb2.Statement()
        statement.ParseFromString(payload)
        statement.header.sequence = sequence
        bad = statement.SerializeToString()
        receipt = await deliver_raw(pair.che, wire.envelope_to_bytes(c.envelope(bad)))
        assert ResponseCode(receipt.code) is ResponseCode.MALFORMED_PAYLOAD
        assert not receipt.taken_in
        c.channel = dataclasses.replace(c.channel, last_sequence=c.channel.last_sequence - 1)
    receipt = await send(pair.chn, pair.che, status_query=partner_pb2.StatusQuery(transfer_id="after"))
    assert receipt.taken_in and ResponseCode(receipt.code) is ResponseCode.OK


@pytest.mark.asyncio
async def test_defect_03_values_beyond_64_bits_are_refused_and_the_channel_goes_on(pair: Pair) -> None:
    block = await setup_accounts(pair)
    largest = proposal("largest-serial", [(2**63 - 2, 2**63 - 1)])
    overflow = proposal("total-overflow", [(0, 2**63 - 2)])
    other = demo_block(0, 5)
    other.space.unit_kind, other.space.issuing_registry = "CEA", "CN-CEA"
    overflow.blocks.append(other)  # 2^63 - 1 + 6 units: the total does not fit 64 bits
    for poison in (largest, overflow):
        receipt = await send(pair.chn, pair.che, proposal=poison)
        assert receipt.taken_in
        await settle(pair.chn, pair.che)
        [decision] = await decisions_from(pair.che, poison.transfer_id)
        assert not decision.accepted
        assert [ResponseCode(r.code) for r in decision.rejections] == [ResponseCode.INVALID_ARGUMENT]
    await settle(pair.chn, pair.che)
    assert await holdings(pair.che) == []
    done = await transfer(pair, block, 1, 10, "after-poison")
    assert await state_of(pair.che, done) == records_pb2.COMPLETED


async def send_until_taken_in(node: GatewayNode, receiver: GatewayNode, **body: object) -> list[partner_pb2.Receipt]:
    """Deliver one statement on ``node``'s real channel to ``receiver`` again and again, as its sender would, until
    it is taken in: every receipt."""
    c = await crafter(node, receiver.party)
    payload, _ = c.statement(**body)
    envelope = wire.envelope_to_bytes(c.envelope(payload))
    receipts = [await deliver_raw(receiver, envelope)]
    while not receipts[-1].taken_in and len(receipts) <= FAILED_STATEMENT_ATTEMPTS:
        receipts.append(await deliver_raw(receiver, envelope))
    async with node.store.transaction() as tx:
        await tx.set_outgoing_channel(receiver.party, c.channel)
    return receipts


@pytest.mark.asyncio
async def test_defect_03_a_failure_while_applying_a_statement_is_sent_again_then_refused_and_the_channel_goes_on(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup_accounts(pair)

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in a handler")

    # Not taken in while the sender sends it again, so that a failure that passes loses nothing; then taken in
    # refused, so that it cannot stop the channel.
    failing = [(ResponseCode.INTERNAL_ERROR.name, False)] * (FAILED_STATEMENT_ATTEMPTS - 1)
    refused = [*failing, (ResponseCode.INTERNAL_ERROR.name, True)]
    monkeypatch.setattr(pair.che.gateway, "_on_status_query", broken)
    receipts = await send_until_taken_in(pair.chn, pair.che, status_query=partner_pb2.StatusQuery(transfer_id="q"))
    assert [(ResponseCode(r.code).name, r.taken_in) for r in receipts] == refused
    monkeypatch.undo()
    receipt = await send(pair.chn, pair.che, status_query=partner_pb2.StatusQuery(transfer_id="q2"))
    assert receipt.taken_in and ResponseCode(receipt.code) is ResponseCode.OK
    # A proposal whose handling fails is still answered, so the initiating side releases its units.
    monkeypatch.setattr(pair.che.gateway, "_on_proposal", broken)
    receipts = await send_until_taken_in(pair.chn, pair.che, proposal=proposal("crashing", [(1, 10)]))
    assert [(ResponseCode(r.code).name, r.taken_in) for r in receipts] == refused
    await settle(pair.chn, pair.che)
    [decision] = await decisions_from(pair.che, "crashing")
    assert not decision.accepted


@pytest.mark.asyncio
async def test_defect_03_a_statement_the_receiver_failed_on_for_a_while_is_applied_when_sent_again(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = await setup_accounts(pair)
    gateway = pair.che.gateway
    complete = gateway._on_completion
    failures: list[str] = []

    async def fails_twice(tx: Any, partner: str, completion: partner_pb2.Completion) -> None:
        if len(failures) < 2:
            failures.append(completion.transfer_id)
            raise RuntimeError("a failure that passes")
        await complete(tx, partner, completion)

    monkeypatch.setattr(gateway, "_on_completion", fails_twice)
    done = await transfer(pair, block, 1, 10, "passes")
    # CHN's outbox sent the Completion again after its backoff, and CHE applied it: nothing was lost.
    assert failures == [done, done]
    assert await state_of(pair.che, done) == await state_of(pair.chn, done) == records_pb2.COMPLETED


@pytest.mark.asyncio
async def test_defect_03_a_sweep_goes_on_past_a_transfer_it_cannot_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deadlines = Deadlines(hold=dt.timedelta(seconds=60), decision=dt.timedelta(milliseconds=200))
    network = await start_network(tmp_path, ("CHN", "CHE"), deadlines=deadlines)
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        pair.chn.set_partner_address("CHE", "127.0.0.1:9")
        async with operator(pair.chn) as chn:
            first = await chn.ProposeTransfer(proposal_request(block, 1, 10, "first"))
            second = await chn.ProposeTransfer(proposal_request(block, 11, 20, "second"))
        real = pair.chn.gateway._release

        async def release(tx: object, transfer_id: str) -> None:
            if transfer_id == first.transfer_id:
                raise OverflowError("a poisoned transfer")
            await real(tx, transfer_id)  # type: ignore[arg-type]

        monkeypatch.setattr(pair.chn.gateway, "_release", release)
        async with operator(pair.chn) as chn:
            ended = await wait_for_state(chn, second.transfer_id, TERMINAL)
        assert ended.state == records_pb2.TERMINATED
        assert await state_of(pair.chn, first.transfer_id) == records_pb2.CHECKED
    finally:
        await network.stop()


# 4. Retries that can never succeed, dead letters, trust pushes, status queries ---------------------------


@pytest.mark.asyncio
async def test_defect_04_a_refusal_no_retry_can_cure_moves_to_the_dead_letter_list_and_can_be_retried(
    pair: Pair,
) -> None:
    block = await setup_accounts(pair)
    real = _distrust(pair.che, "CHN")  # CHE no longer knows CHN's key
    async with operator(pair.chn) as chn:
        proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
        await wait_until(lambda: _dead(pair.chn, 1))
        [letter] = await dead_letters(pair.chn)
        assert (letter.kind, letter.transfer_id, letter.receiver) == ("proposal", proposed.transfer_id, "CHE")
        assert ResponseCode(letter.last_code) is ResponseCode.KEY_UNKNOWN_OR_REVOKED
        assert letter.attempts == 1  # not retried every 30 s: one attempt, then the list
        assert list((await chn.ListOutbox(operator_pb2.ListOutboxRequest())).entries) == []
        pair.che.core.exchange.partners.replace("CHN", real)
        retried = await chn.RetryDeadLetter(
            operator_pb2.RetryDeadLetterRequest(idempotency_key="r", message_id=letter.message_id)
        )
        assert retried.state == "pending"
        done = await wait_for_state(chn, proposed.transfer_id, TERMINAL)
    assert done.state == records_pb2.COMPLETED
    assert await dead_letters(pair.chn) == []


def _distrust(node: GatewayNode, party: str) -> TrustedParty:
    """Make ``node`` trust, for ``party``, a document of the same version listing a key nobody holds: every
    statement ``party`` signs is then refused for good (a key the receiver does not know). Returns what it
    trusted before, for the test to put back."""
    partner = node.core.exchange.partners.get(party)
    assert partner is not None
    before = partner.trusted
    stranger = CryptoSigner.generate()
    document = TrustDocument(
        party=party,
        version=before.version,
        expires=before.document.expires,
        keys={stranger.keyid: stranger.public_key},
        roles={"trust": Role((stranger.keyid,), 1), "transfer": Role((stranger.keyid,), 1)},
    )
    node.core.exchange.partners.replace(party, TrustedParty.restore(sign_trust_document(document, [stranger])))
    return before


async def _dead(node: GatewayNode, count: int) -> bool:
    return len(await dead_letters(node)) >= count


@pytest.mark.asyncio
async def test_defect_04_abandoning_a_dead_proposal_terminates_the_transfer_and_releases_its_units(pair: Pair) -> None:
    block = await setup_accounts(pair)
    real = _distrust(pair.che, "CHN")
    async with operator(pair.chn) as chn:
        await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
        await wait_until(lambda: _dead(pair.chn, 1))
        [letter] = await dead_letters(pair.chn)
        pair.che.core.exchange.partners.replace("CHN", real)
        answer = await chn.AbandonDeadLetter(
            operator_pb2.AbandonDeadLetterRequest(idempotency_key="a", message_id=letter.message_id, reason="wrong key")
        )
        assert answer.entry.state == "abandoned"
        assert answer.transfer.state == records_pb2.TERMINATED
        assert "released" in answer.consequence
        again = await chn.AbandonDeadLetter(
            operator_pb2.AbandonDeadLetterRequest(idempotency_key="a", message_id=letter.message_id, reason="wrong key")
        )
        assert again == answer
    assert await holdings(pair.chn) == [(1, 1000, "held", "CCER")]
    await settle(pair.chn, pair.che)
    # The Cancel that follows reaches CHE, which never knew the transfer: nothing is recorded there.
    assert await holdings(pair.che) == []


@pytest.mark.asyncio
async def test_defect_04_a_sender_clock_ahead_of_the_receiver_is_a_dead_letter_not_a_loop(pair: Pair) -> None:
    block = await setup_accounts(pair)
    clock = pair.chn.outbox.clock
    pair.chn.outbox.clock = lambda: clock() + dt.timedelta(hours=2)
    async with operator(pair.chn) as chn:
        await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
        await wait_until(lambda: _dead(pair.chn, 1))
    [letter] = await dead_letters(pair.chn)
    assert ResponseCode(letter.last_code) is ResponseCode.MESSAGE_EXPIRED
    assert letter.attempts == 1


@pytest.mark.parametrize("behind", [1, 3])
@pytest.mark.asyncio
async def test_defect_04_a_sender_that_fell_behind_its_partner_catches_up_instead_of_looping(
    pair: Pair, behind: int
) -> None:
    # As after lost receipts, or a sender restored from a backup: the partner has taken in statements the
    # sender no longer knows it sent. Its REPLAY refusal says where it stands, and the sender continues there.
    block = await setup_accounts(pair)
    async with pair.che.store.transaction() as tx:
        channel = await tx.incoming_channel("CHN")
        await tx.set_incoming_channel("CHN", dataclasses.replace(channel, last_sequence=channel.last_sequence + behind))
    async with operator(pair.chn) as chn:
        proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
        assert (await wait_for_state(chn, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
    async with operator(pair.che) as che:  # the Completion reaches CHE after CHN completed
        assert (await wait_for_state(che, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
    await settle(pair.chn, pair.che)  # and CHN records CHE's receipt of it after that
    assert await dead_letters(pair.chn) == []
    async with pair.chn.store.read() as tx:
        assert (await tx.outgoing_channel("CHE")).last_sequence == channel.last_sequence + behind + 2


@pytest.mark.asyncio
async def test_defect_04_a_trust_push_missed_during_an_outage_is_delivered_through_the_outbox(tmp_path: Path) -> None:
    from tests.integration.test_trust import next_document

    network = await start_network(tmp_path, ("CHN", "CHE"))
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        reachable = pair.chn.partners.parties()["CHE"].address
        pair.chn.set_partner_address("CHE", "127.0.0.1:9")  # CHE is unreachable during the rotation
        old, new = network.signers["CHN"], CryptoSigner.generate()
        envelope = sign_trust_document(next_document(network, "CHN", 2, new), [old, new])
        network.configure_signer("CHN", "next", new)
        async with operator(pair.chn) as chn:
            status = await chn.RotateTrustDocument(
                operator_pb2.RotateTrustDocumentRequest(
                    idempotency_key="rot", envelope_json=envelope.to_json(), signer="next"
                )
            )
            assert status.version == 2
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "after"))
            for _ in range(1000):  # until the worker has tried the unreachable partner once
                pending = list((await chn.ListOutbox(operator_pb2.ListOutboxRequest())).entries)
                if pending and pending[0].attempts:
                    break
                await asyncio.sleep(0.01)
            assert [e.kind for e in pending][:1] == ["trust"] and "proposal" in [e.kind for e in pending]
            assert pending[0].attempts >= 1 and pending[0].last_error
            pair.chn.set_partner_address("CHE", reachable)
            pair.chn.outbox.wake()
            done = await wait_for_state(chn, proposed.transfer_id, TERMINAL, timeout=30)
        assert done.state == records_pb2.COMPLETED
        assert pair.che.partners.parties()["CHN"].trusted.version == 2
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_defect_04_a_lost_decision_is_recovered_by_a_status_query_and_both_sides_complete(tmp_path: Path) -> None:
    network = await start_network(tmp_path, ("CHN", "CHE"), status_query_after=dt.timedelta(milliseconds=300))
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        settings = pair.chn.exchange.settings
        pair.chn.exchange.settings = dataclasses.replace(settings, max_envelope_bytes=100)  # refuses a Decision
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
            await wait_for_state(che, proposed.transfer_id, {records_pb2.ACCEPTED})
            await wait_until(lambda: _dead(pair.che, 1))
            [letter] = await dead_letters(pair.che)
            assert (letter.kind, ResponseCode(letter.last_code)) == ("decision", ResponseCode.ENVELOPE_TOO_LARGE)
            pair.chn.exchange.settings = settings
            answer = await che.AbandonDeadLetter(
                operator_pb2.AbandonDeadLetterRequest(idempotency_key="a", message_id=letter.message_id, reason="lost")
            )
            assert "status" in answer.consequence
            # CHN waits for a Decision, asks for the status, learns ACCEPTED, completes, and CHE credits.
            assert (
                await wait_for_state(chn, proposed.transfer_id, TERMINAL, timeout=30)
            ).state == records_pb2.COMPLETED
            assert (
                await wait_for_state(che, proposed.transfer_id, TERMINAL, timeout=30)
            ).state == records_pb2.COMPLETED
        # Both sides wait on the other, so whichever side's status query goes first recovers the transfer (on a
        # slower store CHE's, asking whether its Completion comes, can).
        kinds = []
        for node in (pair.chn, pair.che):
            async with node.store.read() as tx:
                kinds += [m.kind.value for m in await tx.list_outbox()]
        assert "status_query" in kinds
        assert (1, 10, "held", "CCER") in await holdings(pair.che)
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_defect_04_a_status_query_on_the_dead_letter_list_is_not_joined_by_another(tmp_path: Path) -> None:
    from gateway.domain.protocol import DecisionPolicy

    network = await start_network(
        tmp_path, ("CHN", "CHE"), policy=DecisionPolicy(), status_query_after=dt.timedelta(milliseconds=200)
    )
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
            await wait_for_state(che, proposed.transfer_id, {records_pb2.CHECKED})
        settings = pair.che.exchange.settings
        pair.che.exchange.settings = dataclasses.replace(settings, max_envelope_bytes=100)  # refuses the query
        await wait_until(lambda: _dead(pair.chn, 1))
        await asyncio.sleep(1.0)  # five times the query interval: the sweep runs many times meanwhile
        async with pair.chn.store.read() as tx:
            queries = [m for m in await tx.list_outbox() if m.kind.value == "status_query"]
        assert [m.state for m in queries] == [OutboxState.DEAD]
    finally:
        await network.stop()


class CompletionRefused:
    """CHN's transport to CHE, except that CHE refuses every Completion for good (as too large)."""

    def __init__(self, real: PartnerTransport, che: GatewayNode) -> None:
        self.real = real
        self.che = che

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        statement = partner_pb2.Statement.FromString(wire.envelope_from_bytes(envelope).payload)
        if statement.WhichOneof("body") != "completion":
            return await self.real.deliver(party, envelope)
        receipt = partner_pb2.Receipt(
            message_id="refused",
            sender="CHE",
            receiver="CHN",
            in_reply_to=statement.header.message_id,
            code=records_pb2.ENVELOPE_TOO_LARGE,
            envelope_sha256=hashlib.sha256(envelope).digest(),
        )
        return wire.envelope_to_bytes(
            sign_envelope(wire.RECEIPT_PAYLOAD_TYPE, receipt.SerializeToString(), [self.che.exchange.signer])
        )


@pytest.mark.asyncio
async def test_defect_04_a_dead_decision_does_not_stop_the_status_query_that_recovers_from_it(tmp_path: Path) -> None:
    network = await start_network(tmp_path, ("CHN", "CHE"), status_query_after=dt.timedelta(milliseconds=300))
    pair = Pair(network["CHN"], network["CHE"])
    pair.chn.outbox.transport = CompletionRefused(pair.chn.outbox.transport, pair.che)
    try:
        block = await setup_accounts(pair)
        settings = pair.chn.exchange.settings
        pair.chn.exchange.settings = dataclasses.replace(settings, max_envelope_bytes=100)  # CHE's Decision dies
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
            await wait_for_state(che, proposed.transfer_id, {records_pb2.ACCEPTED})
            await wait_until(lambda: _dead(pair.che, 1))
            pair.chn.exchange.settings = settings
            # CHN learns the acceptance by its query and completes; its Completion then dies on the way to CHE.
            assert (
                await wait_for_state(chn, proposed.transfer_id, TERMINAL, timeout=30)
            ).state == records_pb2.COMPLETED
            await wait_until(lambda: _dead(pair.chn, 1))
            # CHE, with its own Decision dead, still asks, learns COMPLETED and credits.
            assert (
                await wait_for_state(che, proposed.transfer_id, TERMINAL, timeout=30)
            ).state == records_pb2.COMPLETED
        assert (1, 10, "held", "CCER") in await holdings(pair.che)
    finally:
        await network.stop()


# 5. The two sides end in different states ------------------------------------------------------------


@pytest.mark.parametrize("ending", ["cancelled", "terminated"])
@pytest.mark.asyncio
async def test_defect_05_the_initiating_sides_final_state_wins_over_a_crossing_rejection(
    tmp_path: Path, ending: str
) -> None:
    decision = dt.timedelta(milliseconds=300) if ending == "terminated" else dt.timedelta(hours=1)
    network = await start_network(tmp_path, ("CHN", "CHE"), deadlines=Deadlines(decision=decision))
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        reachable = pair.chn.partners.parties()["CHE"].address
        pair.chn.set_partner_address("CHE", "127.0.0.1:9")  # CHE is down
        request = proposal_request(block, 1, 10, "k")
        request.acquiring_account.account_id = "NO-SUCH-ACCOUNT"  # CHE will reject it when it sees it
        async with operator(pair.chn) as chn:
            proposed = await chn.ProposeTransfer(request)
            if ending == "cancelled":
                await chn.CancelTransfer(
                    operator_pb2.CancelTransferRequest(idempotency_key="c", transfer_id=proposed.transfer_id)
                )
            final = await wait_for_state(chn, proposed.transfer_id, TERMINAL)
        expected = records_pb2.CANCELLED if ending == "cancelled" else records_pb2.TERMINATED
        assert final.state == expected
        pair.chn.set_partner_address("CHE", reachable)
        pair.chn.outbox.wake()
        await wait_until(lambda: _in_state(pair.che, proposed.transfer_id, expected))
        await settle(pair.chn, pair.che)
        assert await state_of(pair.chn, proposed.transfer_id) == expected
        assert await state_of(pair.che, proposed.transfer_id) == expected
        assert await holdings(pair.che) == []
        assert await holdings(pair.chn) == [(1, 1000, "held", "CCER")]
        assert await dead_letters(pair.chn) == [] and await dead_letters(pair.che) == []
    finally:
        await network.stop()


async def _in_state(node: GatewayNode, transfer_id: str, state: int) -> bool:
    try:
        return await state_of(node, transfer_id) == state
    except grpc.aio.AioRpcError:
        return False


# 6. An envelope the partner cannot take wedges the channel --------------------------------------------


@pytest.mark.asyncio
async def test_defect_06_a_proposal_the_partner_cannot_take_is_refused_at_the_operator_api(pair: Pair) -> None:
    await setup_accounts(pair)
    block = demo_block(10_000, 20_000)
    block.attributes.extend(records_pb2.Attribute(name=f"note-{i}", value="x" * 256) for i in range(32))
    async with operator(pair.chn) as chn:
        await chn.RegisterIssuance(
            operator_pb2.RegisterIssuanceRequest(idempotency_key="big", account_id="CN-PO-0001", block=block)
        )
        request = proposal_request(block, 10_000, 10_000, "too-big")
        del request.selections[:]
        request.selections.extend(
            operator_pb2.BlockSelection(space=block.space, start=10_000 + 2 * i, end=10_000 + 2 * i)
            for i in range(1000)
        )
        before = await holdings(pair.chn)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.ProposeTransfer(request)
    assert error_code(caught.value) == ResponseCode.ENVELOPE_TOO_LARGE
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    detail = read_error_detail(caught.value.trailing_metadata())
    assert detail is not None and detail.field == "selections"  # fewer of them make a smaller Proposal
    assert await holdings(pair.chn) == before  # nothing reserved


@pytest.mark.asyncio
async def test_defect_06_an_envelope_the_partner_refuses_as_too_large_is_a_dead_letter_not_a_replay(
    tmp_path: Path,
) -> None:
    def settings(party: str) -> ExchangeSettings:
        return ExchangeSettings(self_party=party, max_envelope_bytes=8192 if party == "CHE" else 1 << 20)

    network = await start_network(tmp_path, ("CHN", "CHE"), settings=settings)
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        large = proposal_request(block, 1, 1, "large")
        del large.selections[:]
        large.selections.extend(
            operator_pb2.BlockSelection(space=block.space, start=2 * i + 1, end=2 * i + 1) for i in range(100)
        )
        async with operator(pair.chn) as chn:
            first = await chn.ProposeTransfer(large)
            await wait_until(lambda: _dead(pair.chn, 1))
            [letter] = await dead_letters(pair.chn)
            assert ResponseCode(letter.last_code) is ResponseCode.ENVELOPE_TOO_LARGE
            assert "REPLAY" not in letter.last_error
            later = await chn.ProposeTransfer(proposal_request(block, 500, 510, "later"))
            assert (await wait_for_state(chn, later.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            assert await state_of(pair.chn, first.transfer_id) == records_pb2.CHECKED
    finally:
        await network.stop()


# 7. A large selection list stalls the whole gateway --------------------------------------------------


@pytest.mark.asyncio
async def test_defect_07_selections_split_each_held_block_once(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    block = await setup_accounts(pair)
    lookups = 0
    real = Initiating._holding_block

    async def counted(self: Initiating, *args: object, **kwargs: object) -> object:
        nonlocal lookups
        lookups += 1
        return await real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Initiating, "_holding_block", counted)
    request = proposal_request(block, 1, 1, "many")
    del request.selections[:]
    request.selections.extend(operator_pb2.BlockSelection(space=block.space, start=i, end=i) for i in range(1, 1000, 2))
    async with operator(pair.chn) as chn:
        proposed = await chn.ProposeTransfer(request)
    assert proposed.quantity == 500
    assert lookups == 1  # one held block: one lookup, whatever the number of selections
    held = [h for h in await holdings(pair.chn) if h[2] == "held"]
    assert sum(end - start + 1 for start, end, _, _ in held) == 500


# 8. A short message lifetime loops for ever ---------------------------------------------------------


@pytest.mark.asyncio
async def test_defect_08_a_statement_waiting_out_an_outage_is_signed_afresh_when_sent(tmp_path: Path) -> None:
    clock = Clock()

    def settings(party: str) -> ExchangeSettings:
        return ExchangeSettings(self_party=party, message_lifetime=dt.timedelta(seconds=4))

    network = await start_network(tmp_path, ("CHN", "CHE"), settings=settings, clock=clock)
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        reachable = pair.chn.partners.parties()["CHE"].address
        pair.chn.set_partner_address("CHE", "127.0.0.1:9")
        async with operator(pair.chn) as chn:
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "k"))
            await wait_until(lambda: _attempted(pair.chn))
            clock.now += dt.timedelta(hours=1)  # far beyond the 4 s lifetime and the 5 min skew
            pair.chn.set_partner_address("CHE", reachable)
            async with pair.chn.store.transaction() as tx:  # skip the backoff
                for message in await tx.list_outbox(states=(OutboxState.PENDING,)):
                    await tx.reschedule(message.outbox_id, code=0, error="", next_attempt_at=clock.now)
            pair.chn.outbox.wake()
            done = await wait_for_state(chn, proposed.transfer_id, TERMINAL)
        assert done.state == records_pb2.COMPLETED
        assert await dead_letters(pair.chn) == []
    finally:
        await network.stop()


async def _attempted(node: GatewayNode) -> bool:
    async with node.store.read() as tx:
        return any(m.attempts for m in await tx.list_outbox(states=(OutboxState.PENDING,)))


# 9. A keyid hint decides the partner -----------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["keyid hints", "mTLS"])
@pytest.mark.asyncio
async def test_defect_09_another_partner_listing_the_same_key_does_not_capture_its_messages(
    tmp_path: Path, tls: bool
) -> None:
    network = await start_network(tmp_path, ("CHN", "CHE", "ARG"), tls=tls)
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        # ARG's document, as CHE trusts it, also lists CHN's key: a keyid hint alone would name ARG first.
        arg, chn_key = network.signers["ARG"], network.signers["CHN"].public_key
        document = TrustDocument(
            party="ARG",
            version=2,
            expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=30),
            keys={arg.keyid: arg.public_key, chn_key.keyid: chn_key},
            roles={"trust": Role((arg.keyid,), 1), "transfer": Role((arg.keyid, chn_key.keyid), 1)},
        )
        pushed = await pair.che.exchange.receive(
            wire.envelope_to_bytes(sign_trust_document(document, [arg])), form=EnvelopeForm.PROTOBUF
        )
        assert pushed.taken_in
        assert [p.party for p in pair.che.partners.by_keyids([chn_key.keyid])] == ["ARG", "CHN"]
        done = await transfer(pair, block, 1, 10, "t")
        assert await state_of(pair.chn, done) == records_pb2.COMPLETED
        assert await state_of(pair.che, done) == records_pb2.COMPLETED
        async with pair.che.store.read() as tx:
            assert {e.peer for e in await tx.list_log() if e.kind is LogKind.STATEMENT} == {"CHN"}
    finally:
        await network.stop()


# 10. Signature flood -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_defect_10_an_envelope_with_more_signatures_than_the_role_has_keys_is_refused_unverified(
    pair: Pair,
) -> None:
    await setup_accounts(pair)
    c = await crafter(pair.chn, "CHE")
    payload, _ = c.statement(status_query=partner_pb2.StatusQuery(transfer_id="q"))
    signed = sign_envelope(wire.STATEMENT_PAYLOAD_TYPE, payload, [pair.chn.signer])
    flood = dataclasses.replace(signed, signatures=signed.signatures * 2)
    receipt = await deliver_raw(pair.che, wire.envelope_to_bytes(flood))
    assert ResponseCode(receipt.code) is ResponseCode.SIGNATURE_INVALID
    assert "signature" in receipt.detail
    receipt = await deliver_raw(pair.che, repeat_signature(wire.envelope_to_bytes(signed), 17))
    assert ResponseCode(receipt.code) is ResponseCode.MALFORMED_PAYLOAD
    ok = await send(pair.chn, pair.che, status_query=partner_pb2.StatusQuery(transfer_id="q"))
    assert ok.taken_in


def repeat_signature(envelope: bytes, count: int) -> bytes:
    from carbon_gateway.v1 import envelope_pb2

    message = envelope_pb2.Envelope()
    message.ParseFromString(envelope)
    first = message.signatures[0]
    del message.signatures[:]
    message.signatures.extend(envelope_pb2.Signature(sig=first.sig, keyid=first.keyid) for _ in range(count))
    return message.SerializeToString()


# 11. Authorization bookkeeping ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_defect_11_units_that_came_back_can_be_sent_again_under_a_full_authorization(tmp_path: Path) -> None:
    network = await start_network(tmp_path, ("CHN", "CHE"))
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        small = records_pb2.Authorization()
        small.CopyFrom(DEMO_AUTHORIZATION)
        small.authorization_id, small.authorized_quantity = "CHN-A-400", 400
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            for stub in (chn, che):
                await stub.RegisterAuthorization(
                    operator_pb2.RegisterAuthorizationRequest(idempotency_key="a4", authorization=small)
                )
            request = proposal_request(block, 1, 400, "out")
            request.authorization_id = "CHN-A-400"
            first = await chn.ProposeTransfer(request)
            assert (await wait_for_state(chn, first.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            # CHE holds the units once the Completion reaches it, which may be a moment after CHN completes.
            assert (await wait_for_state(che, first.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            back = operator_pb2.ProposeTransferRequest()
            back.CopyFrom(request)
            back.idempotency_key, back.source_account = "back", "CH-PH-0001"
            back.acquiring_account.party, back.acquiring_account.account_id = "CHN", "CN-PO-0001"
            returned = await che.ProposeTransfer(back)
            assert (await wait_for_state(che, returned.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            await settle(pair.chn, pair.che)
            again = operator_pb2.ProposeTransferRequest()
            again.CopyFrom(request)
            again.idempotency_key = "again"
            resent = await chn.ProposeTransfer(again)
            assert (await wait_for_state(chn, resent.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            ledger = (await chn.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())).entries
        assert [(e.action_type, e.quantity) for e in ledger] == [
            ("First transfer", 400),
            ("Acquisition", 400),
            ("Transfer", 400),
        ]
        # The authorization is used by first transfers only: 400 of 400, so a new first transfer is refused.
        fresh = proposal_request(block, 401, 401, "fresh")
        fresh.authorization_id = "CHN-A-400"
        async with operator(pair.chn) as chn:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.ProposeTransfer(fresh)
        assert error_code(caught.value) == ResponseCode.AUTHORIZATION_EXCEEDED
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_defect_11_an_authorization_is_not_in_force_before_its_date(pair: Pair) -> None:
    block = await setup_accounts(pair)
    future = records_pb2.Authorization()
    future.CopyFrom(DEMO_AUTHORIZATION)
    future.authorization_id = "CHN-A-FUTURE"
    future.date = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    async with operator(pair.chn) as chn:
        await chn.RegisterAuthorization(
            operator_pb2.RegisterAuthorizationRequest(idempotency_key="f", authorization=future)
        )
        request = proposal_request(block, 1, 10, "early")
        request.authorization_id = "CHN-A-FUTURE"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.ProposeTransfer(request)
    assert error_code(caught.value) == ResponseCode.AUTHORIZATION_EXPIRED
    assert "not in force" in (caught.value.details() or "")


@pytest.mark.asyncio
async def test_defect_11_a_vintage_must_be_a_year_inside_the_authorized_timeframe(pair: Pair) -> None:
    await setup_accounts(pair)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        block = demo_block(2000, 2010)
        block.vintage = -7
        async with operator(pair.chn) as chn:
            await chn.RegisterIssuance(
                operator_pb2.RegisterIssuanceRequest(idempotency_key="v", account_id="CN-PO-0001", block=block)
            )
    assert error_code(caught.value) == ResponseCode.INVALID_ARGUMENT
    assert read_field(caught.value) == "block.vintage"
    old = demo_block(3000, 3010)
    old.vintage = 2019  # the demo authorization covers 2021-2030
    async with operator(pair.chn) as chn:
        await chn.RegisterIssuance(
            operator_pb2.RegisterIssuanceRequest(idempotency_key="old", account_id="CN-PO-0001", block=old)
        )
        with pytest.raises(grpc.aio.AioRpcError) as outside:
            await chn.ProposeTransfer(proposal_request(old, 3000, 3010, "outside"))
    assert error_code(outside.value) == ResponseCode.AUTHORIZATION_EXPIRED
    assert "2019" in (outside.value.details() or "")


def read_field(exc: grpc.aio.AioRpcError) -> str:
    from gateway.rpc.errors import read_error_detail

    detail = read_error_detail(exc.trailing_metadata())
    assert detail is not None
    return detail.field


# 12. The operator API opens what the caller names --------------------------------------------------------


@pytest.mark.asyncio
async def test_defect_12_rotate_trust_document_takes_a_configured_signer_name_never_a_uri(
    pair: Pair, tmp_path: Path
) -> None:
    await setup_accounts(pair)
    key = tmp_path / "chn.key"  # a real PEM key the harness wrote
    assert key.exists()
    async with operator(pair.chn) as chn:
        for named in (f"file:{key}", str(key), "pkcs11:token=x;object=y?module-path=/tmp/evil.so", "env:HOME"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.RotateTrustDocument(
                    operator_pb2.RotateTrustDocumentRequest(
                        idempotency_key=named[:60], envelope_json=b"{}", signer=named
                    )
                )
            assert error_code(caught.value) == ResponseCode.INVALID_ARGUMENT
    # A valid document but a signer name that is not configured is refused before anything changes.
    from tests.integration.test_trust import next_document

    network = Network(tmp_path, {"CHN": pair.chn, "CHE": pair.che})
    new = CryptoSigner.generate()
    document = sign_trust_document(next_document(network, "CHN", 2, new), [pair.chn.signer, new])
    async with operator(pair.chn) as chn:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.RotateTrustDocument(
                operator_pb2.RotateTrustDocumentRequest(
                    idempotency_key="n", envelope_json=document.to_json(), signer="next"
                )
            )
    assert read_field(caught.value) == "signer"
    assert pair.chn.trust.own.version == 1


# 13. The message log is not append-only ----------------------------------------------------------------


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
async def test_defect_13_every_envelope_is_kept_verbatim_and_the_log_refuses_rewrites(tmp_path: Path) -> None:
    import aiohttp

    from gateway.http.app import DELIVER_PATH

    network = await start_network(tmp_path, ("CHN", "CHE"), http=True)
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        await transfer(pair, block, 1, 10, "t")
        async with pair.chn.store.read() as tx:
            before = await tx.list_log()
        # A JSON delivery over HTTP is kept as the bytes that arrived, not re-encoded.
        c = await crafter(pair.chn, "CHE")
        payload, header = c.statement(status_query=partner_pb2.StatusQuery(transfer_id="q"))
        body = c.envelope(payload).to_json().replace(b'"payload"', b'"payload" ')
        async with (
            aiohttp.ClientSession() as session,
            session.post(pair.che.http_url + DELIVER_PATH, data=body) as response,
        ):
            assert response.status == 200
        async with pair.chn.store.transaction() as tx:  # CHN's channel now continues after the crafted statement
            await tx.set_outgoing_channel("CHE", c.channel)
        async with pair.che.store.read() as tx:
            kept = [e for e in await tx.list_log() if e.message_id == header.message_id and e.kind is LogKind.STATEMENT]
        assert [(e.form, e.envelope) for e in kept] == [("json", body)]
        # A rotation appends the trust document and what is signed after it; nothing before is rewritten.
        from tests.integration.test_trust import rotate

        await rotate(network, "CHN", 2)
        await transfer(pair, block, 11, 20, "t2")
        async with pair.chn.store.read() as tx:
            after = await tx.list_log()
        assert after[: len(before)] == before
        assert any(e.kind is LogKind.TRUST and e.direction == "out" for e in after[len(before) :])
        async with pair.che.store.read() as tx:
            assert any(e.kind is LogKind.TRUST and e.direction == "in" for e in await tx.list_log())
    finally:
        await network.stop()
    db = sqlite3.connect(tmp_path / "chn.db")
    try:
        for statement in ("UPDATE message_log SET envelope = x'00'", "DELETE FROM message_log"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(statement)
    finally:
        db.close()
