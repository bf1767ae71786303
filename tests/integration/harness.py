"""Helpers for integration tests: operator stubs, crafted partner statements, raw deliveries."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, partner_pb2, records_pb2
from gateway import wire
from gateway.demo import DEMO_AUTHORIZATION, Pair, demo_block, wait_for_state
from gateway.domain.statements import GENESIS_HASH, ChannelState, Header
from gateway.node import GatewayNode
from gateway.rpc.errors import read_error_detail
from gateway.rpc.partner import DELIVER_METHOD
from gateway.usecases.watching import ChangeFeed
from signing import Envelope, Signer, sign_envelope


@asynccontextmanager
async def operator(node: GatewayNode) -> AsyncIterator[operator_pb2_grpc.OperatorServiceAsyncStub]:
    """An operator stub connected to ``node``."""
    channel = grpc.aio.insecure_channel(node.operator_address)
    try:
        yield operator_pb2_grpc.OperatorServiceStub(channel)
    finally:
        await channel.close(None)


async def deliver_raw(node: GatewayNode, envelope: bytes, *, timeout: float = 10) -> partner_pb2.Receipt:
    """Deliver raw envelope bytes to ``node``'s partner exchange; return the (unverified) receipt payload."""
    async with grpc.aio.insecure_channel(node.partner_address) as channel:
        raw: bytes = await channel.unary_unary(DELIVER_METHOD, None, None)(envelope, timeout=timeout)
    receipt = partner_pb2.Receipt()
    receipt.ParseFromString(wire.envelope_from_bytes(raw).payload)
    return receipt


@dataclass
class Crafter:
    """Builds statements on a channel as a given sender would, for tests that play a partner."""

    signer: Signer
    sender: str
    receiver: str
    channel: ChannelState = field(default_factory=ChannelState)
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    lifetime: dt.timedelta = dt.timedelta(hours=1)

    def statement(self, **body: object) -> tuple[bytes, Header]:
        """The payload of the next statement on the channel, and its header (the channel advances)."""
        now = self.clock()
        header = Header(
            message_id=str(uuid.uuid4()),
            sender=self.sender,
            receiver=self.receiver,
            sequence=self.channel.last_sequence + 1,
            previous_hash=self.channel.last_hash,
            issued_at=now,
            expires_at=now + self.lifetime,
        )
        payload = partner_pb2.Statement(header=wire.header_to_proto(header), **body).SerializeToString()  # type: ignore[arg-type]
        self.channel = self.channel.advance(payload)
        return payload, header

    def envelope(self, payload: bytes, payload_type: str = wire.STATEMENT_PAYLOAD_TYPE) -> Envelope:
        """``payload`` signed by this crafter's signer."""
        return sign_envelope(payload_type, payload, [self.signer])


def scripted_receipt(
    signer: Signer,
    envelope: bytes,
    *,
    code: int,
    taken_in: bool,
    resend_from: int = 0,
    message_id: str = "",
    detail: str = "",
    sender: str = "EVL",
) -> bytes:
    """The receipt a scripted partner (``sender``, EVL unless named) signs for CHN's statement ``envelope``
    (protobuf form)."""
    parsed = wire.envelope_from_bytes(envelope)
    statement = partner_pb2.Statement.FromString(parsed.payload)
    receipt = partner_pb2.Receipt(
        message_id=message_id or f"r-{statement.header.message_id}",
        sender=sender,
        receiver="CHN",
        in_reply_to=statement.header.message_id,
        payload_sha256=hashlib.sha256(parsed.payload).digest(),
        code=code,  # type: ignore[arg-type]
        resend_from=resend_from,
        taken_in=taken_in,
        envelope_sha256=hashlib.sha256(envelope).digest(),
        detail=detail,
    )
    return wire.envelope_to_bytes(sign_envelope(wire.RECEIPT_PAYLOAD_TYPE, receipt.SerializeToString(), [signer]))


GENESIS = ChannelState(0, GENESIS_HASH)

TERMINAL = {records_pb2.COMPLETED, records_pb2.REJECTED, records_pb2.TERMINATED, records_pb2.CANCELLED}


async def setup_accounts(pair: Pair) -> records_pb2.UnitBlock:
    """Open the demo accounts on both sides, register the authorization and a CCER issuance at CHN."""
    async with operator(pair.chn) as chn, operator(pair.che) as che:
        await chn.OpenAccount(
            operator_pb2.OpenAccountRequest(
                idempotency_key="open-chn",
                account=records_pb2.Account(account_id="CN-PO-0001", holder_name="Owner", account_type="project owner"),
            )
        )
        await che.OpenAccount(
            operator_pb2.OpenAccountRequest(
                idempotency_key="open-che",
                account=records_pb2.Account(
                    account_id="CH-PH-0001", holder_name="Holder", account_type="Party holding"
                ),
            )
        )
        await chn.RegisterAuthorization(
            operator_pb2.RegisterAuthorizationRequest(idempotency_key="auth", authorization=DEMO_AUTHORIZATION)
        )
        holding = await chn.RegisterIssuance(
            operator_pb2.RegisterIssuanceRequest(idempotency_key="issue", account_id="CN-PO-0001", block=demo_block())
        )
    return holding.block


async def open_account(
    stub: operator_pb2_grpc.OperatorServiceAsyncStub, account_id: str, account_type: str, *, key: str
) -> records_pb2.Account:
    """Open ``account_id`` of ``account_type`` (a ``use`` or ``cancellation`` account, say) under idempotency
    key ``key``."""
    account = records_pb2.Account(account_id=account_id, holder_name="Registry", account_type=account_type)
    return await stub.OpenAccount(operator_pb2.OpenAccountRequest(idempotency_key=key, account=account))


def proposal_request(
    block: records_pb2.UnitBlock, start: int, end: int, key: str
) -> operator_pb2.ProposeTransferRequest:
    """A ProposeTransfer request for serials ``start``-``end`` of ``block`` to CHE/CH-PH-0001."""
    return operator_pb2.ProposeTransferRequest(
        idempotency_key=key,
        source_account="CN-PO-0001",
        selections=[operator_pb2.BlockSelection(space=block.space, start=start, end=end)],
        acquiring_account=records_pb2.AccountRef(party="CHE", account_id="CH-PH-0001"),
        cooperative_approach="CA0001",
        authorization_id="CHN-A-0001",
        purpose="NDC",
        adjustment_method="single-year averaging",
    )


async def transfer(pair: Pair, block: records_pb2.UnitBlock, start: int, end: int, key: str) -> str:
    """Propose a transfer at CHN and wait until both sides reach a final state; return the transfer ID."""
    async with operator(pair.chn) as chn, operator(pair.che) as che:
        proposed = await chn.ProposeTransfer(proposal_request(block, start, end, key))
        await wait_for_state(chn, proposed.transfer_id, TERMINAL)
        await wait_for_state(che, proposed.transfer_id, TERMINAL)
    await settle(pair.chn, pair.che)
    return proposed.transfer_id


async def cancelled_with_units_home(pair: Pair, transfer_id: str) -> None:
    """Both sides ended ``transfer_id`` CANCELLED: CHN holds all 1,000 units of `setup_accounts` at home
    again, CHE none."""
    async with operator(pair.chn) as chn, operator(pair.che) as che:
        assert (await wait_for_state(chn, transfer_id, TERMINAL)).state == records_pb2.CANCELLED
        assert (await wait_for_state(che, transfer_id, TERMINAL)).state == records_pb2.CANCELLED
        held = (await chn.ListHoldings(operator_pb2.ListHoldingsRequest(account_id="CN-PO-0001"))).holdings
        assert sum(h.block.end - h.block.start + 1 for h in held if h.status == "held") == 1000
        assert (await che.ListHoldings(operator_pb2.ListHoldingsRequest())).holdings == []


def error_code(exc: grpc.aio.AioRpcError) -> int:
    """The stable response code in a failed call's ErrorDetail."""
    detail = read_error_detail(exc.trailing_metadata())
    assert detail is not None, f"no ErrorDetail in {exc}"
    return detail.code


async def snapshot(node: GatewayNode) -> tuple[object, ...]:
    """Everything a gateway has recorded: transfers, blocks, ledger, message log, channels and outbox."""
    from gateway.store.base import BlockStatus

    async with node.store.read() as tx:
        channels = []
        for party in node.partners.parties():
            channels.append((await tx.incoming_channel(party), await tx.outgoing_channel(party)))
        return (
            await tx.list_transfers(),
            await tx.list_blocks(statuses=tuple(BlockStatus)),
            await tx.list_ledger(),
            await tx.list_log(),
            channels,
            await tx.list_outbox(),
            await tx.list_messages(),
        )


async def settle(*nodes: GatewayNode, timeout: float = 10.0) -> None:
    """Wait until no gateway among ``nodes`` has an undelivered message in its outbox."""
    import asyncio
    import time

    from gateway.store.base import OutboxState

    deadline = time.monotonic() + timeout
    while True:
        pending = 0
        for node in nodes:
            async with node.store.read() as tx:
                pending += len(await tx.list_outbox(states=(OutboxState.PENDING,)))
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("outboxes did not drain")
        await asyncio.sleep(0.005)


async def watches_reach(feed: ChangeFeed, count: int) -> None:
    """Wait until ``feed`` follows ``count`` watches; fail if it does not within 30 s (a bound on a hang only: a
    loaded machine may take seconds to start or end a watch)."""
    deadline = time.monotonic() + 30
    while feed.watchers != count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert feed.watchers == count
