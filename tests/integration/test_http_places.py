"""The HTTP partner path handles only so many deliveries at once (`gateway.http.app.BODIES_AT_ONCE`, and
`BODIES_PER_ADDRESS` from one address): senders that stall in their bodies cannot take the gateway's memory, and
one address cannot shut out the others. A delivery beyond them is answered 503, unread, and a place comes back
when its delivery ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from gateway.harness import Network, start_network
from gateway.http import app

pytestmark = pytest.mark.sqlite_only(reason="the HTTP server's places do not depend on the store")

PATIENCE = 15.0
"""How long a test waits for the server to take or give back a place before calling it missed."""
HEADERS = b"POST /v1/partner/deliver HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
STALLED = HEADERS + b"Content-Length: 1000000\r\n\r\n" + b'{"payload": "' + b"A" * 60_000
"""The start of a large body that never ends (within the test)."""
WHOLE = HEADERS + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
"""A whole delivery, read and refused (400, a signed receipt) when it has a place."""


@pytest_asyncio.fixture
async def network(tmp_path: Path) -> AsyncIterator[Network]:
    started = await start_network(tmp_path, ("CHN", "CHE"), http=True)
    try:
        yield started
    finally:
        await started.stop()


async def connect(network: Network, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = urlsplit(network["CHE"].http_url)
    assert address.hostname is not None and address.port is not None
    return await asyncio.open_connection(address.hostname, address.port, local_addr=(source, 0))


async def stall(network: Network, source: str) -> asyncio.StreamWriter:
    """A delivery from ``source`` whose body stops part of the way; the writer, to close it."""
    _, writer = await connect(network, source)
    writer.write(STALLED)
    await writer.drain()
    return writer


async def deliver(network: Network, source: str) -> tuple[int, bytes, bytes]:
    """``(status, head, body)`` of a whole delivery from ``source``."""
    reader, writer = await connect(network, source)
    try:
        writer.write(WHOLE)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), PATIENCE)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, body


async def until(network: Network, source: str, wanted: int) -> tuple[int, bytes, bytes]:
    """Deliver from ``source`` until the status is ``wanted`` (places are taken and given back as the server
    gets to the connections, in no set order)."""
    for _ in range(int(PATIENCE / 0.05)):
        outcome = await deliver(network, source)
        if outcome[0] == wanted:
            return outcome
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {wanted} within {PATIENCE} s; the last was {outcome[0]}")


async def get(network: Network, path: str) -> bytes:
    reader, writer = await connect(network, "127.0.0.1")
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(), PATIENCE)
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_one_address_has_only_so_many_deliveries_in_hand(network: Network) -> None:
    stalled = [await stall(network, "127.0.0.1") for _ in range(app.BODIES_PER_ADDRESS)]
    try:
        _, head, body = await until(network, "127.0.0.1", 503)
        assert b"\r\nretry-after: 1" in head.lower()
        assert b"are being handled" in body and b"nothing was read" in body
        # Another address has places of its own; health and metrics are not deliveries.
        assert (await deliver(network, "127.0.0.2"))[0] == 400
        assert b" 200 OK" in await get(network, "/healthz")
        metrics = await get(network, "/metrics")
        assert b"carbon_gateway_deliveries_busy_total " in metrics
        assert b"carbon_gateway_deliveries_busy_total 0\n" not in metrics
    finally:
        for writer in stalled:
            writer.close()
    # The stalled deliveries end with their connections, and give their places back.
    assert (await until(network, "127.0.0.1", 400))[0] == 400


@pytest.mark.asyncio
async def test_all_addresses_together_have_only_so_many_deliveries_in_hand(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "BODIES_AT_ONCE", 2)
    stalled = [await stall(network, "127.0.0.1"), await stall(network, "127.0.0.2")]
    try:
        assert (await until(network, "127.0.0.3", 503))[0] == 503
    finally:
        for writer in stalled:
            writer.close()
    assert (await until(network, "127.0.0.3", 400))[0] == 400
