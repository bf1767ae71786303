"""Single-transfer latency, propose to completed on both sides, against a bare gRPC echo round trip.

The transfer goes the production way: the operator call over gRPC, SQLite with ``synchronous=FULL``, the
transactional outbox, and every statement and receipt signed and verified.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, records_pb2
from gateway.demo import DEMO_AUTHORIZATION, demo_block, start_pair
from gateway.exchange import EnvelopeForm, Received
from tests.bench.common import Figure


class Echo:
    """A bare gRPC unary echo server and client on loopback, in the same process and event loop as the
    gateways, so that each echo sample sees the same machine state as the transfer measured next to it."""

    async def start(self) -> None:
        async def echo(request: bytes, context: Any) -> bytes:
            return request

        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),)
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.call = self.channel.unary_unary("/bench.Echo/Echo", None, None)
        self.samples: list[float] = []
        await self.sample(50)
        self.samples.clear()

    async def sample(self, rounds: int) -> None:
        payload = b"x" * 600
        for _ in range(rounds):
            start = time.perf_counter()
            await self.call(payload)
            self.samples.append(time.perf_counter() - start)

    async def stop(self) -> None:
        await self.channel.close(None)
        await self.server.stop(None)


async def transfer_p50(workdir: Path, transfers: int, echo: Echo) -> float:
    """p50 seconds from ProposeTransfer to the acquiring side's committed completion.

    Between transfers, ``echo`` takes ten round-trip samples, interleaving the two measurements.
    """
    pair = await start_pair(workdir)
    completed: dict[str, asyncio.Event] = {}
    original = pair.che.exchange.receive

    async def observed(raw: bytes, *, form: EnvelopeForm, peer_identity: str | None = None) -> Received:
        received = await original(raw, form=form, peer_identity=peer_identity)
        for transfer_id, event in completed.items():
            if not event.is_set():
                transfer = await pair.che.gateway.get_transfer(transfer_id) if await _known(pair, transfer_id) else None
                if transfer is not None and transfer.state.name == "COMPLETED":
                    event.set()
        return received

    pair.che.exchange.receive = observed  # type: ignore[method-assign]
    try:
        async with (
            grpc.aio.insecure_channel(pair.chn.operator_address) as chn_channel,
            grpc.aio.insecure_channel(pair.che.operator_address) as che_channel,
        ):
            chn = operator_pb2_grpc.OperatorServiceStub(chn_channel)
            che = operator_pb2_grpc.OperatorServiceStub(che_channel)
            await chn.OpenAccount(
                operator_pb2.OpenAccountRequest(
                    idempotency_key="a",
                    account=records_pb2.Account(account_id="PO", holder_name="Owner", account_type="project owner"),
                )
            )
            await che.OpenAccount(
                operator_pb2.OpenAccountRequest(
                    idempotency_key="b",
                    account=records_pb2.Account(account_id="PH", holder_name="Holder", account_type="Party holding"),
                )
            )
            authorization = records_pb2.Authorization()
            authorization.CopyFrom(DEMO_AUTHORIZATION)
            authorization.authorized_quantity = 10**12
            await chn.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="c", authorization=authorization)
            )
            block = demo_block(1, 10**9)
            await chn.RegisterIssuance(
                operator_pb2.RegisterIssuanceRequest(idempotency_key="d", account_id="PO", block=block)
            )
            samples = []
            for i in range(transfers):
                request = operator_pb2.ProposeTransferRequest(
                    idempotency_key=f"t{i}",
                    source_account="PO",
                    selections=[operator_pb2.BlockSelection(space=block.space, start=i * 10 + 1, end=i * 10 + 10)],
                    acquiring_account=records_pb2.AccountRef(party="CHE", account_id="PH"),
                    cooperative_approach="CA0001",
                    authorization_id=DEMO_AUTHORIZATION.authorization_id,
                    purpose="NDC",
                    adjustment_method="single-year averaging",
                )
                start = time.perf_counter()
                proposed = await chn.ProposeTransfer(request)
                event = completed.setdefault(proposed.transfer_id, asyncio.Event())
                await asyncio.wait_for(event.wait(), timeout=10)
                samples.append(time.perf_counter() - start)
                initiating = await chn.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=proposed.transfer_id))
                if initiating.state != records_pb2.COMPLETED:
                    raise RuntimeError(f"transfer {proposed.transfer_id} is not completed at CHN")
                completed.pop(proposed.transfer_id)
                await _settle(pair)  # no trailing gateway work may slow the echo samples
                await echo.sample(10)
    finally:
        await pair.stop()
    return statistics.median(samples)


async def _settle(pair: Any) -> None:
    far = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    for node in (pair.chn, pair.che):
        while True:
            async with node.store.read() as tx:
                if not await tx.due_messages(far, 1):
                    break
            await asyncio.sleep(0.001)


async def _known(pair: Any, transfer_id: str) -> bool:
    async with pair.che.store.read() as tx:
        return await tx.get_transfer(transfer_id) is not None


async def _measure(transfers: int) -> tuple[float, float]:
    echo = Echo()
    await echo.start()
    try:
        with tempfile.TemporaryDirectory(prefix="carbon-gateway-bench-") as folder:
            latency = await transfer_p50(Path(folder), transfers, echo)
    finally:
        await echo.stop()
    return statistics.median(echo.samples), latency


def run(transfers: int = 200) -> list[Figure]:
    """Transfer p50 latency vs one echo round trip, measured in the same run."""
    echo, latency = asyncio.run(_measure(transfers))
    return [
        Figure(
            name="single transfer p50 latency (propose to completed on both sides)",
            value=latency * 1e3,
            unit="ms",
            limit_name="bare gRPC unary echo round trip p50",
            limit=echo * 1e3,
            target=20.0,
            direction="max",
        )
    ]
