"""The HTTP partner path does not wait for ever on a partner's connection: a connection that never completes its
request headers is closed, a body that does not arrive in time is answered 408 with no receipt (nothing was
judged: the sender sends again), and a partner that hangs up mid-body costs one log line, not a traceback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from carbon_gateway.v1 import partner_pb2
from gateway.domain.errors import ResponseCode
from gateway.harness import Network, start_network
from gateway.http import app
from signing import Envelope

pytestmark = pytest.mark.sqlite_only(reason="the HTTP server's deadlines do not depend on the store")

DEADLINE = 0.5
"""The deadlines the gateway runs with here, in seconds."""
PATIENCE = 15.0
"""How long a test waits for the server to act on a deadline before calling it missed."""
HEADERS = b"POST /v1/partner/deliver HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest_asyncio.fixture
async def network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Network]:
    monkeypatch.setattr(app, "IDLE_SECONDS", DEADLINE)
    monkeypatch.setattr(app, "BODY_SECONDS", DEADLINE)
    started = await start_network(tmp_path, ("CHN", "CHE"), http=True)
    try:
        yield started
    finally:
        await started.stop()


async def connect(network: Network) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = urlsplit(network["CHE"].http_url)
    assert address.hostname is not None and address.port is not None
    return await asyncio.open_connection(address.hostname, address.port)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "sent", [b"", HEADERS[:20], HEADERS], ids=["nothing", "part of the request line", "headers without their end"]
)
async def test_a_connection_that_never_completes_its_headers_is_closed(network: Network, sent: bytes) -> None:
    reader, writer = await connect(network)
    try:
        writer.write(sent)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), PATIENCE)  # the end of the stream: closed by the server
    finally:
        writer.close()
    assert answer == b""


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """The status, the headers (names lower-cased) and the body of one HTTP answer."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE)
    status, *lines = head.strip().split(b"\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines)}
    body = await reader.readexactly(int(headers[b"content-length"]))
    return status.split()[1], headers, body


async def closed_by_the_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection within `PATIENCE`: the end of the stream, or a reset, which is
    how the kernel closes a connection while bytes its client sent lie unread (a client still trickling its body
    cannot help sending some)."""
    try:
        return await asyncio.wait_for(reader.read(), PATIENCE) == b""
    except ConnectionResetError:
        return True


async def metrics(network: Network) -> list[str]:
    """The lines of CHE's /metrics."""
    address = urlsplit(network["CHE"].http_url)
    assert address.hostname is not None and address.port is not None
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        _, _, body = await read_answer(reader)
    finally:
        writer.close()
    return body.decode().splitlines()


@pytest.mark.asyncio
async def test_a_body_that_does_not_arrive_in_time_is_answered_408_to_be_sent_again(network: Network) -> None:
    """No signed receipt: its code would be a final refusal, and a slow network is a reason to send again."""
    reader, writer = await connect(network)
    try:
        writer.write(HEADERS + b"Content-Length: 100000\r\n\r\n{")
        await writer.drain()
        status, headers, body = await read_answer(reader)
        closed = await asyncio.wait_for(reader.read(), PATIENCE) == b""
    finally:
        writer.close()
    assert status == b"408"
    assert headers[b"retry-after"] == b"1"
    assert headers[b"content-type"].startswith(b"text/plain")
    assert b"did not arrive within 0.5 s: nothing was judged; send again" in body
    assert closed
    counted = await metrics(network)
    assert "carbon_gateway_deliveries_timed_out_total 1" in counted
    assert not [line for line in counted if line.startswith("carbon_gateway_deliveries_total{")]  # nothing judged


@pytest.mark.asyncio
@pytest.mark.parametrize("per_tenth", [10, 300], ids=["trickled", "slow-but-steady"])
async def test_a_body_that_arrives_below_the_minimum_rate_is_refused_before_its_deadline(
    network: Network, monkeypatch: pytest.MonkeyPatch, per_tenth: int
) -> None:
    """Past the grace period, a body must arrive at the minimum rate: one trickled at 100 bytes/s is answered
    408 long before its deadline, and the connection closed; one of 3,000 bytes sent at
    3,000 bytes/s is read whole (and refused for what it holds, as garbage)."""
    monkeypatch.setattr(app, "BODY_SECONDS", 60.0)
    monkeypatch.setattr(app, "BODY_GRACE_SECONDS", 0.5)
    monkeypatch.setattr(app, "MIN_BODY_BYTES_PER_SECOND", 1000)
    monkeypatch.setattr(app, "BODY_CHECK_SECONDS", 0.1)
    reader, writer = await connect(network)
    length = 3000

    async def trickle() -> None:
        for sent in range(0, length, per_tenth):
            writer.write(b"x" * min(per_tenth, length - sent))
            await writer.drain()
            await asyncio.sleep(0.1)

    sending = asyncio.create_task(trickle())
    began = asyncio.get_running_loop().time()
    try:
        writer.write(HEADERS + f"Content-Length: {length}\r\n\r\n".encode())
        status, _, body = await read_answer(reader)
        answered = asyncio.get_running_loop().time() - began
        closed = await closed_by_the_server(reader) if per_tenth == 10 else None
    finally:
        sending.cancel()
        writer.close()
    if per_tenth == 10:
        assert status == b"408"
        assert b"a body must arrive at 1000 bytes/s or more" in body
        assert answered < 10  # 30 s at 100 bytes/s to send it all
        assert closed
    else:
        assert status == b"400"
        receipt = partner_pb2.Receipt.FromString(Envelope.from_json(body).payload)
        assert (ResponseCode(receipt.code), receipt.taken_in) == (ResponseCode.MALFORMED_PAYLOAD, False)
        assert "bytes/s" not in receipt.detail


@pytest.mark.asyncio
async def test_a_partner_that_hangs_up_mid_body_costs_one_line_not_a_traceback(
    network: Network, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, writer = await connect(network)
    writer.write(HEADERS + b'Content-Length: 1000\r\n\r\n{"payload":')
    await writer.drain()
    await asyncio.sleep(0.1)  # the handler is reading the body
    writer.close()
    await writer.wait_closed()
    for _ in range(int(PATIENCE / 0.05)):
        if any("before sending the whole request body" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    noted = [r for r in caplog.records if "before sending the whole request body" in r.getMessage()]
    assert [r.levelname for r in noted] == ["INFO"]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
