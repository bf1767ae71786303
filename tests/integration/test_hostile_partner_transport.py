"""A real ``serve`` process delivering to a partner that misbehaves on the wire.

``CHN`` dials a gRPC server in the test process that stands for ``CHE``'s partner port: it forwards the raw
calls to a real ``CHE``, or answers them itself as a hostile or broken partner would. What the sending side
must do whatever the answer: keep the message until a valid receipt says it was taken in, keep what the partner
wrote out of its logs and its operator's view unless made safe, and go back to its normal pace once the partner
is sane again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, partner_pb2
from gateway.rpc.partner import DELIVER_BATCH_METHOD, DELIVER_METHOD, SERVICE_NAME
from tests.crash_invariants import propose, set_up_books, transfer_request
from tests.processes import ServeProcess, write_pair

pytestmark = pytest.mark.sqlite_only(reason="real serve processes on SQLite files (tests/processes.py)")

Answer = Callable[[str, bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]
"""How the hostile partner answers one call: the method, the raw request and the call's context."""


@dataclass
class HostilePartner:
    """A partner port that forwards to the real partner at ``target``, or answers with ``answer`` when set."""

    target: str = ""
    answer: Answer | None = None
    calls: list[tuple[str, int]] = field(default_factory=list)
    """Each call's method and, for ``DeliverBatch``, how many envelopes it carried (1 for ``Deliver``)."""
    _server: grpc.aio.Server | None = None
    _channel: grpc.aio.Channel | None = None

    async def start(self) -> str:
        """Serve on a free loopback port; return the address the sender dials."""
        handlers = {
            "Deliver": grpc.unary_unary_rpc_method_handler(self._handler(DELIVER_METHOD)),
            "DeliverBatch": grpc.unary_unary_rpc_method_handler(self._handler(DELIVER_BATCH_METHOD)),
        }
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return f"127.0.0.1:{port}"

    async def forward(self, method: str, request: bytes) -> bytes:
        """The real partner's answer to the call."""
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.target)
        answer: bytes = await self._channel.unary_unary(method, None, None)(request, timeout=10)
        return answer

    def _handler(self, method: str) -> Any:
        async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            batch = method == DELIVER_BATCH_METHOD
            self.calls.append((method, len(partner_pb2.DeliveryBatch.FromString(request).envelopes) if batch else 1))
            if self.answer is not None:
                return await self.answer(method, request, context)
            return await self.forward(method, request)

        return handle

    async def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            await self._server.stop(None)
        if self._channel is not None:
            await self._channel.close(None)


async def _outbox(stub: Any) -> list[operator_pb2.OutboxEntry]:
    listed = await stub.ListOutbox(operator_pb2.ListOutboxRequest(), timeout=10)
    return list(listed.entries)


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g} s")
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_a_partner_s_status_message_reaches_the_outbox_and_the_log_made_safe(tmp_path: Path) -> None:
    """The partner fails every call with a status message of 6,000 characters holding line breaks (a forged
    log line among them). ListOutbox shows the message's last error on one line, cut short, and the log holds
    no line the partner wrote."""
    partner = HostilePartner()
    forged = "2026-01-01 00:00:00,000 ERROR gateway: FORGED"

    async def hostile(method: str, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"busy\n{forged}\r\n" + "A" * 6000)
        raise AssertionError("abort returns no answer")

    partner.answer = hostile
    chn, che = write_pair(tmp_path, chn_dials=await partner.start())
    partner.target = che.partner_address
    chn.log_level = "INFO"  # where each failed delivery is logged
    try:
        chn.start()
        che.start()
        await asyncio.gather(chn.wait_serving(), che.wait_serving())
        async with chn.channel() as chn_channel, che.channel() as che_channel:
            chn_stub, che_stub = ServeProcess.stub(chn_channel), ServeProcess.stub(che_channel)
            await set_up_books(chn_stub, che_stub)
            await propose(chn_stub, transfer_request(0), until=time.monotonic() + 30)

            async def failed() -> bool:
                return any(e.attempts >= 2 for e in await _outbox(chn_stub))

            await _until(failed, "the proposal was not tried twice")
            (entry,) = await _outbox(chn_stub)
            assert entry.state == "pending" and entry.last_error.startswith("CHE: UNAVAILABLE: busy\\n"), entry
            assert "\n" not in entry.last_error and "\r" not in entry.last_error, entry.last_error
            assert len(entry.last_error) < 400, len(entry.last_error)
            partner.answer = None  # sane again: the proposal goes through

            async def delivered() -> bool:
                return not await _outbox(chn_stub)

            await _until(delivered, "the proposal was not delivered once the partner was sane")
    finally:
        await partner.close()
        for gateway in (chn, che):
            if gateway.running:
                gateway.stop()
    assert not any(line.startswith(forged) for line in chn.log.read_text().splitlines()), chn.log_tail()


async def _unavailable(method: str, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "down for maintenance")
    raise AssertionError("abort returns no answer")


async def _settled(*stubs: Any) -> None:
    async def empty() -> bool:
        return not [entry for stub in stubs for entry in await _outbox(stub)]

    await _until(empty, "the outboxes did not empty")


@pytest.mark.asyncio
async def test_an_answer_too_large_to_read_does_not_stop_batches_to_the_partner(tmp_path: Path) -> None:
    """The partner answers a DeliverBatch of two proposals with 5 MB, more than the sender reads in one answer.
    The proposals go one per call and are delivered; then four more proposals queued together still go in one
    DeliverBatch: the sender's own limit on answers is not the partner's refusal of batches that large."""
    partner = HostilePartner(answer=_unavailable)
    huge = {"left": 1}

    async def too_large_once(method: str, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        if method == DELIVER_BATCH_METHOD and huge["left"]:
            huge["left"] -= 1
            return b"\0" * (5 * 1024 * 1024)
        return await partner.forward(method, request)

    chn, che = write_pair(tmp_path, chn_dials=await partner.start())
    partner.target = che.partner_address
    try:
        chn.start()
        che.start()
        await asyncio.gather(chn.wait_serving(), che.wait_serving())
        async with chn.channel() as chn_channel, che.channel() as che_channel:
            chn_stub, che_stub = ServeProcess.stub(chn_channel), ServeProcess.stub(che_channel)
            await set_up_books(chn_stub, che_stub)
            for index in range(2):
                await propose(chn_stub, transfer_request(index), until=time.monotonic() + 30)
            partner.answer = too_large_once
            await _settled(chn_stub, che_stub)
            assert huge["left"] == 0, partner.calls
            partner.answer = _unavailable
            for index in range(2, 6):
                await propose(chn_stub, transfer_request(index), until=time.monotonic() + 30)
            sane_from = len(partner.calls)
            partner.answer = None
            await _settled(chn_stub, che_stub)
            batches = [n for method, n in partner.calls[sane_from:] if method == DELIVER_BATCH_METHOD]
            assert batches and batches[0] >= 4, partner.calls[sane_from:]
    finally:
        await partner.close()
        for gateway in (chn, che):
            if gateway.running:
                gateway.stop()


@pytest.mark.asyncio
async def test_a_publisher_s_http_reason_phrase_reaches_the_operator_made_safe(tmp_path: Path) -> None:
    """CHE's trust publication answers 503 with a reason phrase of terminal escapes, a bell, a right-to-left
    override and 7,000 more characters. RefreshPartnerTrust says the publisher answered 503, with that phrase
    escaped and cut short: nothing the partner wrote reaches the operator's terminal as a control."""

    async def publisher(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        reason = "\x1b[31mEVIL\x07 \u202e".encode() + b"R" * 7000
        writer.write(b"HTTP/1.1 503 " + reason + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(publisher, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    chn, _ = write_pair(tmp_path)
    configured = chn.config.read_text()
    line = 'trust_document = "che.trust.json"\n'
    chn.config.write_text(configured.replace(line, f'{line}http_url = "http://127.0.0.1:{port}"\n'))
    try:
        chn.start()
        await chn.wait_serving()
        async with chn.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await ServeProcess.stub(channel).RefreshPartnerTrust(
                    operator_pb2.RefreshPartnerTrustRequest(party="CHE"), timeout=60
                )
    finally:
        server.close()
        if chn.running:
            chn.stop()
    details = failed.value.details() or ""
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE and "answered HTTP 503 \\x1b[31mEVIL\\x07" in details
    assert "\\u202e" in details and not any(ord(c) < 0x20 or c in "\x7f\u202e" for c in details), repr(details)
    assert len(details) < 500, len(details)
