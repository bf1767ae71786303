"""Single-transfer latency, propose to completed on both sides, against a bare gRPC echo round trip.

Two jurisdictions never share a process, so neither do the two gateways here: ``CHE`` runs as
``carbon-gateway serve`` in a child process and ``CHN`` in this one; the echo server runs in a child process
too. The transfer goes the production way: the operator call over gRPC, SQLite with durable commits,
the transactional outbox, and every statement and receipt signed and verified. A transfer counts as
completed on both sides when ``CHN`` has completed it and holds ``CHE``'s signed receipt for the Completion,
which ``CHE`` issues only after committing its side. Echo round trips are sampled between transfers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, records_pb2
from gateway.demo import DEMO_AUTHORIZATION, demo_block
from gateway.domain.delivery import Outcome
from gateway.domain.protocol import ACCEPT_ALL
from gateway.domain.transfer import TransferState
from gateway.harness import self_signed_trust_document
from gateway.node import GatewayNode, PartnerSpec
from gateway.rpc.auth import LOOPBACK_ADMINISTRATOR
from gateway.store.base import OutboxMessage, OutboxState
from gateway.store.sqlite import SQLiteStore
from signing import generate_key, signer_from_uri
from tests.bench.common import Figure
from tests.processes import free_port

CHE_CONFIG = """
party = "CHE"
database = "che.db"
signer = "file:che.key"
trust_document = "che.trust.json"

[operator]
listen = "127.0.0.1:{operator}"
unauthenticated_loopback = true

[partner]
listen = "127.0.0.1:{partner}"

[[partners]]
party = "CHN"
address = "127.0.0.1:{chn_partner}"
trust_document = "chn.trust.json"

[policy]
rules = [{{ verdict = "accept" }}]
"""


async def _wait_serving(address: str, timeout: float = 30.0, *, echo: bool = False) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        while True:
            try:
                if echo:
                    await channel.unary_unary("/bench.Echo/Echo", None, None)(b"ready", timeout=1)
                else:
                    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _child(*args: str, cwd: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, *args], cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _measure(workdir: Path, transfers: int) -> tuple[float, float]:
    for party in ("chn", "che"):
        generate_key(workdir / party)
        trust = self_signed_trust_document(party.upper(), signer_from_uri(str(workdir / f"{party}.key")))
        (workdir / f"{party}.trust.json").write_bytes(trust.to_json())
    ports = {name: free_port() for name in ("operator", "partner", "chn_partner", "echo")}
    (workdir / "che.toml").write_text(CHE_CONFIG.format(**ports))
    root = Path(__file__).resolve().parents[2]
    async with (
        _child("-m", "gateway.cli", "serve", str(workdir / "che.toml"), "--log-level", "ERROR", cwd=workdir),
        _child("-m", "tests.bench.servers", "echo", str(ports["echo"]), cwd=root),
    ):
        from signing import Envelope

        chn = GatewayNode(
            party="CHN",
            store=await SQLiteStore.open(workdir / "chn.db"),
            signer=signer_from_uri(str(workdir / "chn.key")),
            own_trust=Envelope.from_json((workdir / "chn.trust.json").read_bytes()),
            partners=[
                PartnerSpec(
                    party="CHE",
                    address=f"127.0.0.1:{ports['partner']}",
                    trust_envelope=Envelope.from_json((workdir / "che.trust.json").read_bytes()),
                )
            ],
            policy=ACCEPT_ALL,
            operator_access=LOOPBACK_ADMINISTRATOR,
            partner_listen=f"127.0.0.1:{ports['chn_partner']}",
        )
        await chn.start()
        try:
            await _wait_serving(f"127.0.0.1:{ports['operator']}")
            await _wait_serving(f"127.0.0.1:{ports['echo']}", echo=True)
            return await _run(chn, ports, transfers)
        finally:
            await chn.stop()


async def _run(chn: GatewayNode, ports: dict[str, int], transfers: int) -> tuple[float, float]:
    completed = asyncio.Event()
    watched: list[str] = []
    deliver = chn.outbox._deliver

    async def observed(run: list[OutboxMessage]) -> list[Outcome]:
        delivered = await deliver(run)
        if watched and Outcome.DELIVERED in delivered:
            async with chn.store.read() as tx:
                transfer = await tx.get_transfer(watched[0])
                drained = not await tx.list_outbox(states=(OutboxState.PENDING,))
            if transfer is not None and transfer.state is TransferState.COMPLETED and drained:
                completed.set()
        return delivered

    chn.outbox._deliver = observed  # type: ignore[method-assign]
    async with (
        grpc.aio.insecure_channel(chn.operator_address) as chn_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['operator']}") as che_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['echo']}") as echo_channel,
    ):
        chn_stub = operator_pb2_grpc.OperatorServiceStub(chn_channel)
        che_stub = operator_pb2_grpc.OperatorServiceStub(che_channel)
        echo = echo_channel.unary_unary("/bench.Echo/Echo", None, None)
        await chn_stub.OpenAccount(
            operator_pb2.OpenAccountRequest(
                idempotency_key="a",
                account=records_pb2.Account(account_id="PO", holder_name="Owner", account_type="project owner"),
            )
        )
        await che_stub.OpenAccount(
            operator_pb2.OpenAccountRequest(
                idempotency_key="b",
                account=records_pb2.Account(account_id="PH", holder_name="Holder", account_type="Party holding"),
            )
        )
        authorization = records_pb2.Authorization()
        authorization.CopyFrom(DEMO_AUTHORIZATION)
        authorization.authorized_quantity = 10**12
        await chn_stub.RegisterAuthorization(
            operator_pb2.RegisterAuthorizationRequest(idempotency_key="c", authorization=authorization)
        )
        block = demo_block(1, 10**9)
        await chn_stub.RegisterIssuance(
            operator_pb2.RegisterIssuanceRequest(idempotency_key="d", account_id="PO", block=block)
        )
        payload = b"x" * 600
        for _ in range(50):
            await echo(payload)
        latencies: list[float] = []
        echoes: list[float] = []
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
            completed.clear()
            start = time.perf_counter()
            proposed = await chn_stub.ProposeTransfer(request)
            watched[:] = [proposed.transfer_id]
            await asyncio.wait_for(completed.wait(), timeout=10)
            latencies.append(time.perf_counter() - start)
            acquired = await che_stub.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=proposed.transfer_id))
            if acquired.state != records_pb2.COMPLETED:
                raise RuntimeError(f"transfer {proposed.transfer_id} is not completed at CHE")
            for _ in range(10):
                begin = time.perf_counter()
                await echo(payload)
                echoes.append(time.perf_counter() - begin)
    return statistics.median(echoes), statistics.median(latencies)


def run(transfers: int = 200) -> list[Figure]:
    """Transfer p50 latency vs one echo round trip, measured in the same run."""
    with tempfile.TemporaryDirectory(prefix="carbon-gateway-bench-") as folder:
        echo, latency = asyncio.run(_measure(Path(folder), transfers))
    return [
        Figure(
            name="single transfer p50 latency (propose to completed on both sides)",
            value=latency * 1e3,
            unit="ms",
            limit_name="bare gRPC unary echo round trip p50 (echo server in its own process)",
            limit=echo * 1e3,
            target=20.0,
            direction="max",
        )
    ]


if __name__ == "__main__":
    for figure in run():
        print(figure.line())
