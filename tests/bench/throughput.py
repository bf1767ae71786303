"""Throughput under load: completed transfers per second with 32 concurrent operator clients, and one batched
proposal of 1,000 blocks, each against the echo calls per second the same clients reach in the same run.

Every gateway is a ``carbon-gateway serve`` child process (``CHE`` once, ``CHN`` once per replica), with the
production durability of its store (SQLite: commits synced before they return), the outbox, and every
statement and receipt signed and verified; the echo server (`tests.bench.servers`) is a child process too.
This process only drives the clients and watches for completions.

A transfer counts as completed when both registries' books say so: when ``CHE`` has completed it. ``CHE``
completes a transfer only on ``CHN``'s signed Completion, which ``CHN`` queues in the transaction that completes
it on its own side, and ``CHE`` commits durably before anything else sees it. One watcher follows ``CHE``'s
change feed (``WatchChanges``, transfers only) for all clients, so a completion is seen as it commits, with no
polling. The run ends by checking that both gateways hold every transfer ``COMPLETED`` and that neither has
dead-lettered a message.

Backends: SQLite always. PostgreSQL (``database = "postgresql://..."``, replicas = several ``CHN`` serve
processes sharing one database, clients spread over them, ``CHE`` sending to the first) when
``CARBON_GATEWAY_BENCH_POSTGRES`` names a server DSN and this checkout has the PostgreSQL store; its figures are
reported with no target.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import os
import statistics
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, records_pb2
from gateway.demo import DEMO_AUTHORIZATION, demo_block
from gateway.domain.text import MAX_BLOCKS_PER_TRANSFER
from gateway.harness import self_signed_trust_document
from signing import generate_key, signer_from_uri
from tests.bench.common import Figure
from tests.bench.transfer import _child, _wait_serving
from tests.crash_invariants import every_page
from tests.processes import free_port

POSTGRES_ENV = "CARBON_GATEWAY_BENCH_POSTGRES"
"""A PostgreSQL server DSN (e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``); the bench creates and drops
its own databases on that server."""

TEST_POSTGRES_ENV = "CARBON_GATEWAY_TEST_POSTGRES"
"""The tests' PostgreSQL server, used when `POSTGRES_ENV` is not set."""

CLIENTS = 32
UNITS_PER_TRANSFER = 10
CLIENT_SPAN = 10**7
"""Serial numbers each client's own issuance block spans: client ``c`` holds ``c * CLIENT_SPAN + 1`` onwards."""
BATCH_BASE = CLIENTS * CLIENT_SPAN
"""Where the batched proposals' blocks start, past every client's block."""
BATCH_STRIDE = 20
"""Each batch block is 10 units every 20 serial numbers: separate blocks, never adjacent."""
ECHO_PAYLOAD = b"x" * 600

# The configuration of every gateway in the bench, in one place. The operator table is where a line such as
# `unauthenticated_loopback = true` goes once the operator API requires authentication.
OPERATOR_TABLE = """
[operator]
listen = "127.0.0.1:{operator_port}"
unauthenticated_loopback = true
"""

GATEWAY_CONFIG = """
party = "{party}"
database = "{database}"
signer = "file:{key}"
trust_document = "{trust}"
{operator_table}
[partner]
listen = "127.0.0.1:{partner_port}"

[[partners]]
party = "{peer}"
address = "127.0.0.1:{peer_partner_port}"
trust_document = "{peer_trust}"

[policy]
rules = [{{ verdict = "accept" }}]
"""


@dataclass(frozen=True)
class Backend:
    """The store the gateways run on, and how many ``CHN`` serve processes share it."""

    name: str
    replicas: int = 1
    server_dsn: str = ""
    """PostgreSQL only: the server to create the bench's databases on."""

    @property
    def postgres(self) -> bool:
        """Whether the gateways run on PostgreSQL."""
        return bool(self.server_dsn)

    def label(self) -> str:
        """How figures name the backend."""
        if not self.postgres:
            return self.name
        return f"{self.name}, {self.replicas} CHN replica{'s' if self.replicas > 1 else ''}"


SQLITE = Backend("SQLite")


@dataclass(frozen=True)
class Measured:
    """What one backend's run measured."""

    transfers: int
    transfers_per_second: float
    p50: float
    p99: float
    echo_calls_per_second: float
    echo_p50: float
    echo_p99: float
    batch_blocks: int
    batch_seconds: tuple[float, ...]
    cpu_per_transfer: float | None = None
    """CPU seconds the gateway processes (every CHN replica and CHE; not the PostgreSQL server) used per
    completed transfer, the change feed included; None where /proc cannot say. Unlike the rates, the load of other
    programs barely moves it."""
    cpu_per_block: float | None = None
    """The same per block of the batched proposals."""
    echo_cpu_per_call: float | None = None
    """CPU seconds the echo server used per call."""

    @property
    def blocks_per_second(self) -> float:
        """Blocks transferred per second by the batched proposal, the median run."""
        return self.batch_blocks / statistics.median(self.batch_seconds)


@dataclass
class _Gateways:
    chn_operators: list[str]
    che_operator: str
    echo: str


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


class _CPU:
    """CPU seconds (user and system) the child processes have used so far, by role, read from /proc."""

    def __init__(self) -> None:
        self.pids: dict[str, list[int]] = {"chn": [], "che": [], "echo": []}
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def read(self) -> dict[str, float] | None:
        """Seconds by role (the CHN replicas summed), or None where /proc cannot say."""
        used: dict[str, float] = {}
        try:
            for role, pids in self.pids.items():
                used[role] = 0.0
                for pid in pids:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    used[role] += (int(fields[11]) + int(fields[12])) / self.tick
        except (OSError, IndexError, ValueError):
            return None
        return used

    @staticmethod
    def spent(before: dict[str, float] | None, after: dict[str, float] | None, *roles: str) -> float | None:
        """Seconds ``roles`` used between two readings; None if either is missing."""
        if before is None or after is None:
            return None
        return sum(after[role] - before[role] for role in roles)


class _Watcher:
    """Follows ``CHE``'s change feed (``WatchChanges``, transfers only) for every client at once: a transfer is
    completed on both sides when ``CHE`` reports it ``COMPLETED``."""

    def __init__(self, che: operator_pb2_grpc.OperatorServiceAsyncStub) -> None:
        self.che = che
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.ended: dict[str, float | Exception] = {}
        """Transfers that ended before their client asked (its ProposeTransfer answer was still on its way)."""

    def completion(self, transfer_id: str) -> asyncio.Future[float]:
        """A future set to the ``time.perf_counter()`` at which the transfer was seen completed on both sides."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if transfer_id in self.ended:
            self._set(future, self.ended.pop(transfer_id))
        else:
            self.waiting[transfer_id] = future
        return future

    async def run(self) -> None:
        """Follow the feed until cancelled; a failed watch fails every transfer still waiting."""
        request = operator_pb2.WatchChangesRequest(kinds=[operator_pb2.TRANSFER])
        try:
            async for change in self.che.WatchChanges(request):
                transfer = change.transfer
                if transfer.state == records_pb2.COMPLETED:
                    self._end(transfer.transfer_id, time.perf_counter())
                elif transfer.state in (records_pb2.REJECTED, records_pb2.CANCELLED, records_pb2.TERMINATED):
                    state = records_pb2.TransferState.Name(transfer.state)
                    self._end(transfer.transfer_id, RuntimeError(f"transfer {transfer.transfer_id} is {state}"))
        except Exception as exc:
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(RuntimeError(f"the completion watcher failed: {exc!r}"))
            raise

    def _end(self, transfer_id: str, outcome: float | Exception) -> None:
        future = self.waiting.pop(transfer_id, None)
        if future is None:
            self.ended[transfer_id] = outcome
        else:
            self._set(future, outcome)

    @staticmethod
    def _set(future: asyncio.Future[float], outcome: float | Exception) -> None:
        if future.done():  # the client gave up waiting
            return
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


async def _echo_rate(channels: Sequence[grpc.aio.Channel], seconds: float) -> tuple[float, list[float]]:
    """Echo calls per second with one sequential caller per channel, and every call's latency."""
    calls = [channel.unary_unary("/bench.Echo/Echo", None, None) for channel in channels]
    for call in calls:
        for _ in range(20):
            await call(ECHO_PAYLOAD)
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds

    async def client(call: Callable[[bytes], Awaitable[Any]]) -> None:
        while time.perf_counter() < deadline:
            begin = time.perf_counter()
            await call(ECHO_PAYLOAD)
            latencies.append(time.perf_counter() - begin)

    await asyncio.gather(*(client(call) for call in calls))
    return len(latencies) / (time.perf_counter() - start), latencies


def _transfer_request(key: str, selections: Sequence[tuple[int, int]]) -> operator_pb2.ProposeTransferRequest:
    space = demo_block().space
    return operator_pb2.ProposeTransferRequest(
        idempotency_key=key,
        source_account="PO",
        selections=[operator_pb2.BlockSelection(space=space, start=a, end=b) for a, b in selections],
        acquiring_account=records_pb2.AccountRef(party="CHE", account_id="PH"),
        cooperative_approach="CA0001",
        authorization_id=DEMO_AUTHORIZATION.authorization_id,
        purpose="NDC",
        adjustment_method="single-year averaging",
    )


def _batch_ranges(run: int, blocks: int) -> list[tuple[int, int]]:
    first = BATCH_BASE + run * blocks * BATCH_STRIDE
    return [(first + j * BATCH_STRIDE + 1, first + j * BATCH_STRIDE + UNITS_PER_TRANSFER) for j in range(blocks)]


async def _setup(
    chn: Sequence[operator_pb2_grpc.OperatorServiceAsyncStub],
    che: operator_pb2_grpc.OperatorServiceAsyncStub,
    batch_runs: int,
    batch_blocks: int,
) -> None:
    """Accounts, an authorization large enough for everything, a block per client and the batch blocks."""
    await chn[0].OpenAccount(
        operator_pb2.OpenAccountRequest(
            idempotency_key="po",
            account=records_pb2.Account(account_id="PO", holder_name="Owner", account_type="project owner"),
        )
    )
    await che.OpenAccount(
        operator_pb2.OpenAccountRequest(
            idempotency_key="ph",
            account=records_pb2.Account(account_id="PH", holder_name="Holder", account_type="Party holding"),
        )
    )
    authorization = records_pb2.Authorization()
    authorization.CopyFrom(DEMO_AUTHORIZATION)
    authorization.authorized_quantity = 10**12
    await chn[0].RegisterAuthorization(
        operator_pb2.RegisterAuthorizationRequest(idempotency_key="auth", authorization=authorization)
    )
    ranges = [(c * CLIENT_SPAN + 1, (c + 1) * CLIENT_SPAN) for c in range(CLIENTS)]
    for run in range(batch_runs):
        ranges.extend(_batch_ranges(run, batch_blocks))
    queue = iter(enumerate(ranges))

    async def register(stub: operator_pb2_grpc.OperatorServiceAsyncStub) -> None:
        for i, (start, end) in queue:
            await stub.RegisterIssuance(
                operator_pb2.RegisterIssuanceRequest(
                    idempotency_key=f"issue-{i}", account_id="PO", block=demo_block(start, end)
                )
            )

    await asyncio.gather(*(register(chn[c % len(chn)]) for c in range(CLIENTS)))


async def _throughput(
    chn: Sequence[operator_pb2_grpc.OperatorServiceAsyncStub],
    watcher: _Watcher,
    *,
    warmup: int,
    transfers: int,
    seconds: float,
) -> tuple[int, float, list[float]]:
    """``(completed, elapsed seconds, latencies)`` of the clients' transfers after ``warmup`` each."""
    next_unit = [c * CLIENT_SPAN + 1 for c in range(CLIENTS)]
    started = 0
    latencies: list[float] = []

    async def transfer(client: int, key: str) -> float:
        start = next_unit[client]
        next_unit[client] += UNITS_PER_TRANSFER
        request = _transfer_request(key, [(start, start + UNITS_PER_TRANSFER - 1)])
        begin = time.perf_counter()
        proposed = await chn[client % len(chn)].ProposeTransfer(request)
        done = await asyncio.wait_for(watcher.completion(proposed.transfer_id), timeout=120)
        return done - begin

    async def warm(client: int) -> None:
        for i in range(warmup):
            await transfer(client, f"warm-{client}-{i}")

    await asyncio.gather(*(warm(c) for c in range(CLIENTS)))
    begin = time.perf_counter()
    deadline = begin + seconds

    async def measured(client: int) -> None:
        nonlocal started
        i = 0
        while started < transfers and time.perf_counter() < deadline:
            started += 1
            latencies.append(await transfer(client, f"t-{client}-{i}"))
            i += 1

    await asyncio.gather(*(measured(c) for c in range(CLIENTS)))
    return len(latencies), time.perf_counter() - begin, latencies


async def _batched(chn: operator_pb2_grpc.OperatorServiceAsyncStub, watcher: _Watcher, run: int, blocks: int) -> float:
    """Seconds from proposing one transfer of ``blocks`` separate blocks to its completion on both sides."""
    request = _transfer_request(f"batch-{run}", _batch_ranges(run, blocks))
    begin = time.perf_counter()
    proposed = await chn.ProposeTransfer(request)
    if len(proposed.blocks) != blocks:
        raise RuntimeError(f"the batched transfer holds {len(proposed.blocks)} blocks, not {blocks}")
    done = await asyncio.wait_for(watcher.completion(proposed.transfer_id), timeout=600)
    return done - begin


def _transfers_page(
    stub: operator_pb2_grpc.OperatorServiceAsyncStub, token: str
) -> Awaitable[operator_pb2.ListTransfersResponse]:
    return stub.ListTransfers(operator_pb2.ListTransfersRequest(page_token=token), timeout=60)


async def _check_both_sides(
    chn: operator_pb2_grpc.OperatorServiceAsyncStub, che: operator_pb2_grpc.OperatorServiceAsyncStub, expected: int
) -> None:
    """Every transfer is COMPLETED at both gateways and no message was dead-lettered."""
    for party, stub in (("CHN", chn), ("CHE", che)):
        dead = await stub.ListDeadLetters(operator_pb2.ListDeadLettersRequest())
        if dead.entries:
            raise RuntimeError(f"{party} dead-lettered {len(dead.entries)} messages: {dead.entries[0].last_error}")
        listed = await every_page(
            functools.partial(_transfers_page, stub),
            lambda page: page.transfers,
            until=time.monotonic() + 120,
            what=party,
        )
        states = [t.state for t in listed]
        if len(states) != expected or any(s != records_pb2.COMPLETED for s in states):
            raise RuntimeError(
                f"{party} holds {len(states)} transfers, {states.count(records_pb2.COMPLETED)} completed;"
                f" expected {expected} completed"
            )


@contextlib.asynccontextmanager
async def _databases(backend: Backend, workdir: Path) -> AsyncIterator[dict[str, str]]:
    """The ``database`` setting of each gateway: SQLite files, or PostgreSQL databases created and dropped here."""
    if not backend.postgres:
        yield {"chn": str(workdir / "chn.db"), "che": str(workdir / "che.db")}
        return
    asyncpg: Any = importlib.import_module("asyncpg")
    names = {party: f"bench_{party}_{uuid.uuid4().hex[:12]}" for party in ("chn", "che")}
    admin = await asyncpg.connect(backend.server_dsn)
    try:
        for name in names.values():
            await admin.execute(f'CREATE DATABASE "{name}"')
        server = urllib.parse.urlsplit(backend.server_dsn)
        yield {party: server._replace(path=f"/{name}").geturl() for party, name in names.items()}
    finally:
        for name in names.values():
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _write_configs(workdir: Path, databases: dict[str, str], replicas: int) -> tuple[list[Path], Path, _Gateways]:
    """Keys, trust documents and TOML files for ``replicas`` CHN processes and one CHE process."""
    for party in ("chn", "che"):
        generate_key(workdir / party)
        trust = self_signed_trust_document(party.upper(), signer_from_uri(str(workdir / f"{party}.key")))
        (workdir / f"{party}.trust.json").write_bytes(trust.to_json())
    chn_ports = [(free_port(), free_port()) for _ in range(replicas)]
    che_operator, che_partner = free_port(), free_port()

    def config(party: str, peer: str, operator_port: int, partner_port: int, peer_partner_port: int) -> str:
        return GATEWAY_CONFIG.format(
            party=party.upper(),
            database=databases[party],
            key=f"{party}.key",
            trust=f"{party}.trust.json",
            operator_table=OPERATOR_TABLE.format(operator_port=operator_port),
            partner_port=partner_port,
            peer=peer.upper(),
            peer_partner_port=peer_partner_port,
            peer_trust=f"{peer}.trust.json",
        )

    chn_configs = []
    for i, (operator_port, partner_port) in enumerate(chn_ports):
        path = workdir / f"chn-{i}.toml"
        path.write_text(config("chn", "che", operator_port, partner_port, che_partner))
        chn_configs.append(path)
    # CHE sends to the first replica; any of them would do, since they share one database.
    che_config = workdir / "che.toml"
    che_config.write_text(config("che", "chn", che_operator, che_partner, chn_ports[0][1]))
    addresses = _Gateways(
        chn_operators=[f"127.0.0.1:{operator}" for operator, _ in chn_ports],
        che_operator=f"127.0.0.1:{che_operator}",
        echo=f"127.0.0.1:{free_port()}",
    )
    return chn_configs, che_config, addresses


async def _measure(
    backend: Backend,
    workdir: Path,
    *,
    warmup: int,
    transfers: int,
    seconds: float,
    echo_seconds: float,
    batch_blocks: int,
    batch_runs: int,
) -> Measured:
    async with _databases(backend, workdir) as databases:
        chn_configs, che_config, addresses = _write_configs(workdir, databases, backend.replicas)
        root = Path(__file__).resolve().parents[2]
        serve = ("-m", "gateway.cli", "serve")
        cpu = _CPU()
        async with contextlib.AsyncExitStack() as stack:
            echo = await stack.enter_async_context(
                _child("-m", "tests.bench.servers", "echo", addresses.echo.rsplit(":", 1)[1], cwd=root)
            )
            cpu.pids["echo"].append(echo.pid)
            che = await stack.enter_async_context(_child(*serve, str(che_config), "--log-level", "ERROR", cwd=workdir))
            cpu.pids["che"].append(che.pid)
            for path in chn_configs:
                chn = await stack.enter_async_context(_child(*serve, str(path), "--log-level", "ERROR", cwd=workdir))
                cpu.pids["chn"].append(chn.pid)
            for address in [*addresses.chn_operators, addresses.che_operator]:
                await _wait_serving(address)
            await _wait_serving(addresses.echo, echo=True)
            return await _drive(
                addresses,
                cpu,
                warmup=warmup,
                transfers=transfers,
                seconds=seconds,
                echo_seconds=echo_seconds,
                batch_blocks=batch_blocks,
                batch_runs=batch_runs,
            )


async def _drive(
    addresses: _Gateways,
    cpu: _CPU,
    *,
    warmup: int,
    transfers: int,
    seconds: float,
    echo_seconds: float,
    batch_blocks: int,
    batch_runs: int,
) -> Measured:
    async with contextlib.AsyncExitStack() as stack:

        def channel(address: str) -> grpc.aio.Channel:
            options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
            opened = grpc.aio.insecure_channel(address, options=options)
            stack.push_async_callback(opened.close, None)
            return opened

        # One channel per client to its CHN replica and one to the echo server: the same 32 clients drive both.
        chn = [
            operator_pb2_grpc.OperatorServiceStub(channel(addresses.chn_operators[c % len(addresses.chn_operators)]))
            for c in range(CLIENTS)
        ]
        echo_channels = [channel(addresses.echo) for _ in range(CLIENTS)]
        che = operator_pb2_grpc.OperatorServiceStub(channel(addresses.che_operator))
        watcher = _Watcher(che)
        await _setup(chn, che, batch_runs, batch_blocks)
        watching = asyncio.create_task(watcher.run(), name="watcher")
        try:
            at = [cpu.read()]
            echo_before, echo_latencies = await _echo_rate(echo_channels, echo_seconds)
            at.append(cpu.read())
            done, elapsed, latencies = await _throughput(
                chn, watcher, warmup=warmup, transfers=transfers, seconds=seconds
            )
            at.append(cpu.read())
            echo_after, more = await _echo_rate(echo_channels, echo_seconds)
            at.append(cpu.read())
            echo_calls = len(echo_latencies) + len(more)
            echo_latencies += more
            batch_seconds = tuple([await _batched(chn[0], watcher, run, batch_blocks) for run in range(batch_runs)])
            at.append(cpu.read())
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        await _check_both_sides(chn[0], che, CLIENTS * warmup + done + batch_runs)
    return Measured(
        transfers=done,
        transfers_per_second=done / elapsed,
        p50=statistics.median(latencies),
        p99=_percentile(latencies, 0.99),
        echo_calls_per_second=(echo_before + echo_after) / 2,
        echo_p50=statistics.median(echo_latencies),
        echo_p99=_percentile(echo_latencies, 0.99),
        batch_blocks=batch_blocks,
        batch_seconds=batch_seconds,
        # The throughput phase's CPU covers its warm-up transfers too.
        cpu_per_transfer=_per(_CPU.spent(at[1], at[2], "chn", "che"), count=done + CLIENTS * warmup),
        cpu_per_block=_per(_CPU.spent(at[3], at[4], "chn", "che"), count=batch_blocks * batch_runs),
        echo_cpu_per_call=_per(_CPU.spent(at[0], at[1], "echo"), _CPU.spent(at[2], at[3], "echo"), count=echo_calls),
    )


def _per(*seconds: float | None, count: int) -> float | None:
    """The sum of ``seconds`` over ``count``; None if any is unknown."""
    known = [s for s in seconds if s is not None]
    return sum(known) / count if len(known) == len(seconds) else None


def measure(
    backend: Backend = SQLITE,
    *,
    warmup: int = 2,
    transfers: int = 1000,
    seconds: float = 30.0,
    echo_seconds: float = 3.0,
    batch_blocks: int = MAX_BLOCKS_PER_TRANSFER,
    batch_runs: int = 3,
) -> Measured:
    """Run both gateways and the echo server as child processes on ``backend`` and measure everything."""
    with tempfile.TemporaryDirectory(prefix="carbon-gateway-bench-") as folder:
        return asyncio.run(
            _measure(
                backend,
                Path(folder),
                warmup=warmup,
                transfers=transfers,
                seconds=seconds,
                echo_seconds=echo_seconds,
                batch_blocks=batch_blocks,
                batch_runs=batch_runs,
            )
        )


def figures(backend: Backend, measured: Measured, *, with_targets: bool) -> list[Figure]:
    """The figures of one backend's run; without targets they are reported only."""
    where = backend.label()
    echo = f"bare gRPC unary echo calls/s, the same {CLIENTS} clients, echo server in its own process"
    return [
        Figure(
            name=f"completed transfers/s, {CLIENTS} concurrent operator clients, CHN and CHE as serve processes"
            f" ({where})",
            value=measured.transfers_per_second,
            unit="/s",
            limit_name=echo,
            limit=measured.echo_calls_per_second,
            target=0.05 if with_targets else None,
            direction="min",
        ),
        Figure(
            name=f"transfer latency p50 under {CLIENTS} clients, propose to completed on both sides ({where})",
            value=measured.p50 * 1e3,
            unit="ms",
            limit_name=f"echo call p50 under the same {CLIENTS} clients",
            limit=measured.echo_p50 * 1e3,
            target=None,
            direction="max",
        ),
        Figure(
            name=f"transfer latency p99 under {CLIENTS} clients, propose to completed on both sides ({where})",
            value=measured.p99 * 1e3,
            unit="ms",
            limit_name=f"echo call p99 under the same {CLIENTS} clients",
            limit=measured.echo_p99 * 1e3,
            target=None,
            direction="max",
        ),
        Figure(
            name=f"blocks transferred/s, one ProposeTransfer of {measured.batch_blocks:,} blocks, propose to"
            f" completed on both sides, median of {len(measured.batch_seconds)} ({where})",
            value=measured.blocks_per_second,
            unit="/s",
            limit_name=echo,
            limit=measured.echo_calls_per_second,
            target=2.0 if with_targets else None,
            direction="min",
        ),
        *_cpu_figures(where, measured),
    ]


def _cpu_figures(where: str, measured: Measured) -> list[Figure]:
    """CPU per unit of work, reported: what a loaded machine changes least. No figures where /proc cannot say."""
    if measured.cpu_per_transfer is None or measured.cpu_per_block is None or not measured.echo_cpu_per_call:
        return []
    echo = "echo server CPU per echo call"
    return [
        Figure(
            name=f"CPU per completed transfer, CHN and CHE serve processes together, change feed included ({where})",
            value=measured.cpu_per_transfer * 1e3,
            unit="ms",
            limit_name=echo,
            limit=measured.echo_cpu_per_call * 1e3,
            target=None,
            direction="max",
        ),
        Figure(
            name=f"CPU per block of the batched proposal, CHN and CHE together ({where})",
            value=measured.cpu_per_block * 1e3,
            unit="ms",
            limit_name=echo,
            limit=measured.echo_cpu_per_call * 1e3,
            target=None,
            direction="max",
        ),
    ]


def backends() -> tuple[list[Backend], str]:
    """The backends to measure, and why PostgreSQL is skipped (``""`` if it is not)."""
    dsn = os.environ.get(POSTGRES_ENV, "") or os.environ.get(TEST_POSTGRES_ENV, "")
    if not dsn:
        return [SQLITE], f"neither {POSTGRES_ENV} nor {TEST_POSTGRES_ENV} is set (a PostgreSQL server DSN)"
    postgres = Backend("PostgreSQL", server_dsn=dsn)
    return [SQLITE, postgres, dataclasses.replace(postgres, replicas=2)], ""


def run(**options: Any) -> list[Figure]:
    """SQLite figures against their targets; PostgreSQL (1 and 2 CHN replicas) reported, or a skipped line."""
    chosen, skipped = backends()
    result: list[Figure] = []
    for backend in chosen:
        if not backend.postgres:
            result += figures(backend, measure(backend, **options), with_targets=True)
            continue
        # Reported figures only: a PostgreSQL run that fails says so and leaves the other figures standing.
        try:
            result += figures(backend, measure(backend, **options), with_targets=False)
        except Exception as exc:
            print(f"throughput on {backend.label()} failed: {exc!r}", flush=True)
    if skipped:
        print(f"throughput on PostgreSQL skipped: {skipped}", flush=True)
    return result


if __name__ == "__main__":
    for figure in run():
        print(figure.line())
