"""Soak: many transfers between two real ``serve`` processes over a faulty network, with random crashes.

``CHN`` proposes transfers of 5 to 10 units to ``CHE`` (which accepts up to 8 and rejects the rest; one in
twenty is cancelled right after its proposal, crossing the Decision), ``CONCURRENCY`` at a time. Each
gateway's ``[[partners]].address`` points at a proxy in this process that forwards the raw partner messages
and, for ``FAULT_RATE`` of them, drops the request, loses the reply, delivers twice, delays, or holds a copy
back and delivers it late (out of order) while the sender is told it failed; a batch may also arrive shuffled
or cut short. Meanwhile a chaos task SIGKILLs one gateway or the other at random moments and restarts it,
sometimes with a random fault point armed
(`gateway.faults`). At the end the proxy heals and the kills stop; every transfer must reach the same final
state on both sides, with the invariants of `tests.crash_invariants.check_invariants`, nothing dead-lettered,
and no transfer proposed twice by a retried call.

``CARBON_GATEWAY_SOAK_TRANSFERS`` (default `DEFAULT_TRANSFERS`, 1,000) and
``CARBON_GATEWAY_SOAK_SEED`` set the size and the seed of the proxy's and the chaos task's random choices.
A run that exceeds its deadline fails with the seed, how far it got and the gateways' logs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, partner_pb2, records_pb2
from gateway.rpc.partner import DELIVER_BATCH_METHOD, DELIVER_METHOD, SERVICE_NAME
from tests.crash_invariants import (
    ISSUED,
    Stub,
    check_invariants,
    propose,
    read_transfers,
    retrying,
    set_up_books,
    transfer_request,
    unsettled,
    wait_settled,
)
from tests.processes import ServeProcess, write_pair

DEFAULT_TRANSFERS = 1000
"""How many transfers `make test` runs (``make soak`` runs as many as ``SOAK_TRANSFERS`` says)."""
TRANSFERS = int(os.environ.get("CARBON_GATEWAY_SOAK_TRANSFERS", str(DEFAULT_TRANSFERS)))
SEED = int(os.environ.get("CARBON_GATEWAY_SOAK_SEED", "20261203"))
CONCURRENCY = 24
FAULT_RATE = 0.2
DEADLINE = 120.0 + 1.0 * TRANSFERS
"""Seconds the whole run (set-up, transfers, healing, checks) may take."""
HEAL_AFTER = 0.75
"""The share of the deadline after which the network heals and the crashes stop, if not all settled before."""
ACCEPTED_UP_TO = 8
"""``CHE`` accepts a transfer of up to this many units and rejects a larger one."""
CHE_POLICY = f'  {{ verdict = "accept", max_quantity = {ACCEPTED_UP_TO} }},\n  {{ verdict = "reject" }},'
NETWORK_FAULTS = ("drop", "lose-reply", "duplicate", "delay", "reorder")
BATCH_FAULTS = ("shuffle", "partial")
"""Faults only a ``DeliverBatch`` call can suffer: its envelopes arrive in another order (the receipts go back in
the order sent), or only the first of them arrive and the call fails."""
CHAOS_POINTS = {
    "CHN": ["propose-committed", "outbox-claimed", "outbox-sent", "decision-committed"],
    "CHE": ["outbox-claimed", "outbox-sent", "proposal-committed", "completion-committed"],
}
"""The fault points the chaos task may arm at a restart, by the side that reaches them (no rotation here)."""


@dataclass
class FaultyProxy:
    """A gRPC proxy for the partner exchange (``Deliver`` and ``DeliverBatch``) that forwards raw bytes and
    misbehaves for some of the calls: a batch is dropped, duplicated, delayed or reordered as a whole."""

    name: str
    rng: random.Random
    rate: float
    target: str = ""
    healed: bool = False
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    _server: grpc.aio.Server | None = None
    _channel: grpc.aio.Channel | None = None
    _late: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> str:
        """Serve on a free loopback port; return the address the sender should dial."""
        handlers = {
            "Deliver": grpc.unary_unary_rpc_method_handler(self._handler(DELIVER_METHOD)),
            "DeliverBatch": grpc.unary_unary_rpc_method_handler(self._handler(DELIVER_BATCH_METHOD)),
        }
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return f"127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop serving and forget the messages still held back."""
        for task in self._late:
            task.cancel()
        await asyncio.gather(*self._late, return_exceptions=True)
        if self._server is not None:
            await self._server.stop(None)
        if self._channel is not None:
            await self._channel.close(None)

    async def _forward(self, method: str, request: bytes) -> bytes:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.target)
        answer: bytes = await self._channel.unary_unary(method, None, None)(request, timeout=10)
        return answer

    async def _deliver_late(self, method: str, request: bytes, delay: float) -> None:
        await asyncio.sleep(delay)
        with contextlib.suppress(grpc.aio.AioRpcError):  # the receiver was down: the copy is lost
            await self._forward(method, request)

    async def _shuffled(self, request: bytes) -> bytes:
        batch = partner_pb2.DeliveryBatch.FromString(request)
        order = list(range(len(batch.envelopes)))
        self.rng.shuffle(order)
        shuffled = partner_pb2.DeliveryBatch(envelopes=[batch.envelopes[i] for i in order])
        answer = partner_pb2.ReceiptBatch.FromString(
            await self._forward(DELIVER_BATCH_METHOD, shuffled.SerializeToString())
        )
        receipts = [b""] * len(order)
        for position, original in enumerate(order):
            receipts[original] = answer.receipts[position]
        return partner_pb2.ReceiptBatch(receipts=receipts).SerializeToString()

    def _handler(self, method: str) -> Any:
        async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            faults = NETWORK_FAULTS + BATCH_FAULTS if method == DELIVER_BATCH_METHOD else NETWORK_FAULTS
            fault = None if self.healed or self.rng.random() >= self.rate else self.rng.choice(faults)
            self.counts[fault or "forwarded"] += 1
            self.counts[method.rsplit("/", 1)[1]] += 1
            try:
                if fault == "drop":
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name}: dropped")
                if fault == "lose-reply":
                    await self._forward(method, request)
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name}: reply lost")
                if fault == "duplicate":
                    await self._forward(method, request)
                if fault == "delay":
                    await asyncio.sleep(self.rng.uniform(0.05, 1.0))
                if fault == "shuffle":
                    return await self._shuffled(request)
                if fault == "partial":
                    batch = partner_pb2.DeliveryBatch.FromString(request)
                    del batch.envelopes[self.rng.randrange(len(batch.envelopes)) :]
                    if batch.envelopes:
                        await self._forward(method, batch.SerializeToString())
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name}: only the first ones arrived")
                if fault == "reorder":
                    task = asyncio.create_task(self._deliver_late(method, request, self.rng.uniform(0.2, 2.0)))
                    self._late.add(task)
                    task.add_done_callback(self._late.discard)
                    await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name}: held back, to arrive late")
                return await self._forward(method, request)
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
                raise  # not reached: abort raises

        return handle


@dataclass
class Chaos:
    """SIGKILLs and restarts the gateways at random moments until stopped."""

    gateways: list[ServeProcess]
    rng: random.Random
    kills: int = 0
    point_deaths: int = 0
    armed: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        """Kill each gateway once early on, then one at random every 1 to 3 seconds; revive any that died at an
        armed point. A gateway that ends any other way fails the soak."""
        first = self.rng.sample(self.gateways, len(self.gateways))
        next_kill = time.monotonic() + self.rng.uniform(1.0, 3.0)
        while not stop.is_set():
            for gateway in self.gateways:
                if not gateway.running:
                    code = gateway.kill()  # already ended: records how
                    assert code == -9, f"{gateway.party} ended with {code}, not at a fault point:\n{gateway.log_tail()}"
                    self.point_deaths += 1
                    await self.revive(gateway)
            if time.monotonic() >= next_kill:
                victim = first.pop(0) if first else self.rng.choice(self.gateways)
                victim.kill()
                self.kills += 1
                await asyncio.sleep(self.rng.uniform(0.0, 1.0))
                await self.revive(victim)
                next_kill = time.monotonic() + self.rng.uniform(1.0, 3.0)
            await asyncio.sleep(0.1)

    async def revive(self, gateway: ServeProcess, *, armed: bool = True) -> None:
        """Restart ``gateway``, in one start of four with a random fault point armed; unarmed if that dies at once."""
        faults = ""
        if armed and self.rng.random() < 0.25:
            faults = f"{self.rng.choice(CHAOS_POINTS[gateway.party])}@{self.rng.randint(1, 8)}"
            self.armed.append(f"{gateway.party}:{faults}")
        try:
            await gateway.restart(faults)
        except AssertionError:
            if gateway.running or not faults:
                raise
            gateway.kill()  # records how it ended
            self.point_deaths += 1
            await gateway.restart()


async def _transfer(chn: Stub, index: int, rng: random.Random, until: float) -> str:
    request = transfer_request(index, units=rng.randint(5, 10))
    transfer_id = await propose(chn, request, until=until)
    if rng.random() < 0.05:
        cancel = operator_pb2.CancelTransferRequest(
            idempotency_key=f"cancel-{index}", transfer_id=transfer_id, reason="soak"
        )
        try:
            await retrying(lambda: chn.CancelTransfer(cancel, timeout=10), until=until, what=f"cancel {index}")
        except grpc.aio.AioRpcError as exc:
            # The Decision came first: a transfer already completed or rejected is not cancelled.
            assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION, exc
    return transfer_id


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_reason(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


@pytest.mark.sqlite_only(
    reason="real serve processes on SQLite files (tests/processes.py); run on PostgreSQL too, these minutes-long"
    " cases would double the suite's longest file"
)
@pytest.mark.asyncio
async def test_soak_transfers_survive_a_faulty_network_and_random_crashes(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    to_che = FaultyProxy("proxy to CHE", random.Random(rng.random()), FAULT_RATE)
    to_chn = FaultyProxy("proxy to CHN", random.Random(rng.random()), FAULT_RATE)
    chn_dials, che_dials = await to_che.start(), await to_chn.start()
    chn, che = write_pair(tmp_path, chn_dials=chn_dials, che_dials=che_dials, che_policy=CHE_POLICY)
    to_che.target, to_chn.target = che.partner_address, chn.partner_address
    chaos = Chaos([chn, che], random.Random(rng.random()))
    began = time.monotonic()
    until = began + DEADLINE
    progress: dict[str, int] = {"proposed": 0}
    transfer_ids: list[str] = []
    try:
        chn.start()
        che.start()
        await asyncio.gather(chn.wait_serving(), che.wait_serving())
        async with chn.channel() as chn_channel, che.channel() as che_channel:
            chn_stub, che_stub = ServeProcess.stub(chn_channel), ServeProcess.stub(che_channel)
            async with asyncio.timeout(DEADLINE):
                await set_up_books(chn_stub, che_stub)
                stop = asyncio.Event()
                work = iter(range(TRANSFERS))
                choices = random.Random(rng.random())

                async def worker() -> None:
                    for index in work:
                        transfer_ids.append(await _transfer(chn_stub, index, choices, until))
                        progress["proposed"] += 1

                # A failure of the chaos task (a gateway that died of something else) ends the soak at once.
                async with asyncio.TaskGroup() as group:
                    group.create_task(chaos.run(stop))
                    await asyncio.gather(*(group.create_task(worker()) for _ in range(CONCURRENCY)))
                    proposed_in = time.monotonic() - began
                    # The faults and crashes go on while the partner messages flow, mostly after the proposals.
                    heal_at = began + HEAL_AFTER * DEADLINE
                    while time.monotonic() < heal_at:
                        transfers = (
                            await read_transfers(chn_stub, until=until, party="CHN"),
                            await read_transfers(che_stub, until=until, party="CHE"),
                        )
                        if not unsettled(*transfers, transfer_ids) and chaos.kills >= 2:
                            break
                        await asyncio.sleep(3.0)
                    settled_faulty = time.monotonic() < heal_at
                    stop.set()
                to_che.healed = to_chn.healed = True
                books = await wait_settled(
                    chn_stub,
                    che_stub,
                    transfer_ids,
                    timeout=until - time.monotonic(),
                    context=f"seed {SEED}: ",
                    poll=1.0,
                )
            check_invariants(*books, issued=ISSUED.end - ISSUED.start + 1)
            assert len(books[0].transfers) == TRANSFERS, "a retried proposal made a second transfer"
            for stub in (chn_stub, che_stub):
                dead = await retrying(
                    lambda: stub.ListDeadLetters(operator_pb2.ListDeadLettersRequest(), timeout=10),  # noqa: B023
                    until=time.monotonic() + 30,
                    what="ListDeadLetters",
                )
                assert not dead.entries, f"seed {SEED}: dead letters: {dead.entries}"
    except TimeoutError:
        raise AssertionError(
            f"seed {SEED}: the soak exceeded its deadline of {DEADLINE:.0f} s with {progress['proposed']} of"
            f" {TRANSFERS} transfers proposed, {chaos.kills} kills.\nCHN:\n{chn.log_tail(15)}\nCHE:\n{che.log_tail(15)}"
        ) from None
    except (AssertionError, grpc.aio.AioRpcError, ExceptionGroup) as exc:
        raise AssertionError(
            f"seed {SEED} (replay: make soak CARBON_GATEWAY_SOAK_SEED={SEED} SOAK_TRANSFERS={TRANSFERS}):"
            f" {_reason(exc)}"
            f"\nCHN:\n{chn.log_tail(15)}\nCHE:\n{che.log_tail(15)}"
        ) from exc
    finally:
        await to_che.close()
        await to_chn.close()
        for gateway in (chn, che):
            if gateway.running:
                gateway.stop()
    states = collections.Counter(records_pb2.TransferState.Name(t.state) for t in books[0].transfers.values())
    healing = "before" if settled_faulty else "after"
    print(
        f"\nsoak seed {SEED}: {TRANSFERS} transfers proposed in {proposed_in:.0f} s, all settled after"
        f" {time.monotonic() - began:.0f} s ({healing} healing); {dict(states)}; {chaos.kills} kills,"
        f" {chaos.point_deaths} deaths at armed points {chaos.armed}; proxy to CHE {dict(to_che.counts)},"
        f" to CHN {dict(to_chn.counts)}"
    )
    assert states["COMPLETED"] > 0 and states["REJECTED"] > 0
    assert chaos.kills >= 2
    assert to_che.counts["DeliverBatch"] > 0  # runs of statements went through the faults too
