"""An operator call while the gateway's database cannot be used (SQLite: another process holds the file's write
lock past the busy timeout; PostgreSQL: the server refuses connections and ends the gateway's, as in a restart or
a failover) is refused with UNAVAILABLE, which clients retry, and logged in one line, not as a bug; once the
database is back the same call goes through."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import sqlite3
import urllib.parse
from pathlib import Path

import aiohttp
import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from carbon_gateway.v1 import operator_pb2, partner_pb2, records_pb2
from gateway import harness, wire
from gateway.demo import Pair
from gateway.domain.errors import ResponseCode
from gateway.domain.protocol import DecisionPolicy
from gateway.http.app import DELIVER_PATH
from gateway.rpc.errors import read_error_detail
from gateway.store import postgres as pg
from gateway.store.base import Transaction
from signing import Envelope
from tests import postgres
from tests.integration.harness import Crafter, operator, proposal_request, setup_accounts
from tests.integration.test_batches import deliver_batch_raw


def open_account() -> operator_pb2.OpenAccountRequest:
    return operator_pb2.OpenAccountRequest(
        idempotency_key="while-down",
        account=records_pb2.Account(account_id="PO-DOWN", holder_name="Owner", account_type="project owner"),
    )


async def _shut_out(admin: asyncpg.Connection, name: str) -> None:
    """Make the server refuse new connections to the database ``name`` and end those it has, as a restart or a
    failover does."""
    await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name
    )


@pytest.mark.asyncio
async def test_a_call_while_the_database_cannot_be_used_is_unavailable_and_goes_through_later(
    pair: Pair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    location = await harness.database_location(tmp_path, "CHN")
    blocker: sqlite3.Connection | None = None
    admin: asyncpg.Connection | None = None
    name = ""
    if isinstance(location, Path):
        blocker = sqlite3.connect(location, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
    else:
        name = urllib.parse.urlsplit(location).path.lstrip("/")
        admin = await asyncpg.connect(postgres.admin_url())
        await _shut_out(admin, name)
    caplog.set_level(logging.WARNING)
    try:
        async with operator(pair.chn) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.OpenAccount(open_account(), timeout=30)
    finally:
        if blocker is not None:
            blocker.rollback()
            blocker.close()
        if admin is not None:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value.details()
    detail = read_error_detail(caught.value.trailing_metadata())
    assert detail is not None and ResponseCode(detail.code) is ResponseCode.INTERNAL_ERROR
    assert "could not do this now" in detail.message and "same idempotency key" in detail.message
    # One line in the log, no traceback: the database, not a bug.
    said = [r for r in caplog.records if "OpenAccount" in r.getMessage()]
    assert said and all(r.levelno == logging.WARNING and r.exc_info is None for r in said), said
    async with operator(pair.chn) as stub:
        opened = await stub.OpenAccount(open_account(), timeout=30)
    assert opened.account_id == "PO-DOWN"


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_closing_a_store_whose_server_does_not_answer_ends_within_its_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.store import postgres as store_module
    from gateway.store.postgres import PostgresStore

    admin = postgres.admin_url()
    url = await postgres.create_database(admin, "close")
    try:
        store = await PostgresStore.open(url)
        pool = store._pool

        class Unanswered:
            """The pool as a partition leaves it: a graceful close waits for ever."""

            terminated = False

            async def close(self) -> None:
                await asyncio.Event().wait()

            def terminate(self) -> None:
                self.terminated = True
                pool.terminate()

        unanswered = Unanswered()
        monkeypatch.setattr(store, "_pool", unanswered)
        monkeypatch.setattr(store_module, "CLOSE_SECONDS", 0.2)
        caplog.set_level(logging.WARNING)
        await asyncio.wait_for(store.close(), 5)
        assert unanswered.terminated
        assert any("closing its connections at once" in r.getMessage() for r in caplog.records)
    finally:
        await postgres.drop_databases(admin, [url])


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_a_write_waits_for_the_write_lock_in_turns_and_takes_it_when_it_is_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.domain.records import Account, AccountType
    from gateway.store import postgres as store_module
    from gateway.store.postgres import PostgresStore

    # Turns far shorter than the time the lock is held: the waiting write goes through many of them.
    monkeypatch.setattr(store_module, "WRITE_LOCK_WAIT", "50ms")
    admin = postgres.admin_url()
    url = await postgres.create_database(admin, "turns")
    holder, waiter = await PostgresStore.open(url), await PostgresStore.open(url)
    try:
        held = asyncio.Event()

        async def hold() -> None:
            async with holder.transaction() as tx:
                await tx.insert_account(Account("PO-1", "Owner", AccountType.PROJECT_OWNER))
                held.set()
                await asyncio.sleep(0.6)

        async def write() -> float:
            await held.wait()
            began = asyncio.get_running_loop().time()
            async with waiter.transaction() as tx:
                await tx.insert_account(Account("PO-2", "Owner", AccountType.PROJECT_OWNER))
            return asyncio.get_running_loop().time() - began

        _, waited = await asyncio.wait_for(asyncio.gather(hold(), write()), 30)
        assert waited >= 0.4  # it did wait for the holder, through its turns, not past it
        async with waiter.read() as tx:
            assert await tx.get_account("PO-1") is not None and await tx.get_account("PO-2") is not None
    finally:
        await holder.close()
        await waiter.close()
        await postgres.drop_databases(admin, [url])


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_the_background_work_of_a_gateway_whose_database_is_down_logs_lines_not_tracebacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The sweep, the trust refresh and the reconciliation upkeep look at the database every few seconds, and so
    # meet it down at each look while PostgreSQL restarts or fails over: each says so in a line, as the outbox
    # worker does, not with an ERROR and a traceback as for a bug. Transfers waiting on their partner keep the sweep
    # busy (CHE holds every proposal for its operator); the status queries come due at once.
    network = await harness.start_network(
        tmp_path, ("CHN", "CHE"), policy=DecisionPolicy(), status_query_after=dt.timedelta(seconds=0.5)
    )
    admin = await asyncpg.connect(postgres.admin_url())
    name = urllib.parse.urlsplit(str(await harness.database_location(tmp_path, "CHN"))).path.lstrip("/")
    try:
        pair = Pair(network["CHN"], network["CHE"])
        block = await setup_accounts(pair)
        async with operator(pair.chn) as stub:
            for i in range(3):
                await stub.ProposeTransfer(proposal_request(block, 10 * i + 1, 10 * i + 5, f"t-{i}"))
        caplog.set_level(logging.WARNING)
        await _shut_out(admin, name)
        await asyncio.sleep(4.5)  # two trust refreshes, many sweeps
        # On a loaded machine the refreshes and sweeps may come later: wait for a line of each, up to a minute.
        async with asyncio.timeout(60):
            while not all(
                any(what in r.getMessage() for r in caplog.records if r.name == "gateway.core")
                for what in ("CHN: the sweep failed", "CHN: reading trust documents")
            ):
                await asyncio.sleep(0.1)
        said = [r for r in caplog.records if r.name == "gateway.core" and r.getMessage().startswith("CHN:")]
        assert any("the sweep failed" in r.getMessage() for r in said), [r.getMessage() for r in said]
        assert any("reading trust documents" in r.getMessage() for r in said), [r.getMessage() for r in said]
        assert all(r.levelno == logging.WARNING and r.exc_info is None for r in said), [r.getMessage() for r in said]
        assert "could not do it now" in said[0].getMessage()
        swept = [r for r in caplog.records if "the sweep failed on transfer" in r.getMessage()]
        assert not swept, [r.getMessage() for r in swept]
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await network.stop()


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_a_batch_delivered_while_the_database_is_down_is_refused_for_now_in_a_line_not_a_traceback_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A partner's run of statements arrives while PostgreSQL ends the gateway's connections and refuses new ones.
    # Every envelope is answered INTERNAL_ERROR naming the database (the sender sends the run again), and the log
    # says so in lines, not with a traceback for each envelope as for a bug; once the database is back, the same
    # run is taken in.
    network = await harness.start_network(tmp_path, ("CHN", "CHE"))
    admin = await asyncpg.connect(postgres.admin_url())
    name = urllib.parse.urlsplit(str(await harness.database_location(tmp_path, "CHE"))).path.lstrip("/")
    try:
        pair = Pair(network["CHN"], network["CHE"])
        await setup_accounts(pair)
        async with pair.chn.store.read() as tx:
            channel = await tx.outgoing_channel("CHE")
        crafter = Crafter(signer=pair.chn.signer, sender="CHN", receiver="CHE", channel=channel)
        envelopes = []
        for i in range(16):
            payload, _ = crafter.statement(status_query=partner_pb2.StatusQuery(transfer_id=f"unknown-{i}"))
            envelopes.append(wire.envelope_to_bytes(crafter.envelope(payload)))
        caplog.set_level(logging.INFO)
        await _shut_out(admin, name)
        refused = await deliver_batch_raw(pair.che.partner_address, envelopes)
        assert [(ResponseCode(r.code), r.taken_in) for r in refused] == [(ResponseCode.INTERNAL_ERROR, False)] * 16
        assert all("database" in r.detail for r in refused), refused[0].detail
        said = [r for r in caplog.records if r.name == "gateway.exchange"]
        assert said and all(r.exc_info is None for r in said), [r.getMessage() for r in said]
        assert all(r.levelno == logging.WARNING for r in said), [r.getMessage() for r in said]
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        taken = await deliver_batch_raw(pair.che.partner_address, envelopes)
        assert all(r.taken_in for r in taken)
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await network.stop()


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_a_transfer_whose_row_stays_locked_does_not_keep_the_sweep_from_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A lock wait that runs out is transient, but it is this transfer's, not the database's: a row held by a
    # repair by hand must not keep the sweep (deadlines, status queries) from every transfer after it.
    monkeypatch.setattr(pg, "LOCK_TIMEOUT", "300ms")
    network = await harness.start_network(
        tmp_path, ("CHN", "CHE"), policy=DecisionPolicy(), status_query_after=dt.timedelta(seconds=0.2)
    )
    url = str(await harness.database_location(tmp_path, "CHN"))
    repair = await asyncpg.connect(url)
    try:
        pair = Pair(network["CHN"], network["CHE"])
        block = await setup_accounts(pair)
        async with operator(pair.chn) as stub:
            for i in range(2):
                await stub.ProposeTransfer(proposal_request(block, 10 * i + 1, 10 * i + 5, f"t-{i}"))
        first, second = [r[0] for r in await repair.fetch("SELECT transfer_id FROM transfers ORDER BY created_at")]
        await repair.execute("BEGIN")
        await repair.execute("SELECT 1 FROM transfers WHERE transfer_id = $1 FOR UPDATE", first)
        await asyncio.sleep(1)  # both wait on CHE longer than status_query_after; a sweep under way ends
        reset = await asyncpg.connect(url)
        try:
            await reset.execute("UPDATE transfers SET status_queried_at = '' WHERE transfer_id = $1", second)
        finally:
            await reset.close()
        caplog.set_level(logging.WARNING)
        await network["CHN"].core.gateway.sweep()
        queried = await repair.fetchval("SELECT status_queried_at FROM transfers WHERE transfer_id = $1", second)
        assert queried, "the sweep stopped at the locked transfer and never asked about the next one"
        said = [r for r in caplog.records if first in r.getMessage()]
        assert said and all(r.exc_info is None for r in said), [r.getMessage() for r in said]
    finally:
        await repair.close()
        await network.stop()


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_health_checks_say_not_serving_while_the_database_does_not_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A load balancer checks /healthz or gRPC's Check to learn whether the gateway can do its work; without its
    # database it can take no statement in and serve no operator. The checks say so (503 with a short reason, and
    # NOT_SERVING on both ports), in a line in the log, not a traceback; once the database is back, serving again.
    network = await harness.start_network(tmp_path, ("CHN", "CHE"), http=True)
    admin = await asyncpg.connect(postgres.admin_url())
    name = urllib.parse.urlsplit(str(await harness.database_location(tmp_path, "CHE"))).path.lstrip("/")
    node = network["CHE"]

    async def health() -> tuple[int, dict[str, str], str | None, list[int]]:
        async with aiohttp.ClientSession() as session, session.get(node.http_url + "/healthz") as response:
            answer = (response.status, await response.json(), response.headers.get("Retry-After"))
        statuses = []
        for address in (node.operator_address, node.partner_address):
            async with grpc.aio.insecure_channel(address) as channel:
                checked = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=30
                )
                statuses.append(checked.status)
        return (*answer, statuses)

    async def settled(status: int) -> tuple[int, dict[str, str], str | None, list[int]]:
        """The checks' answers once every one says ``status`` (or its gRPC counterpart)."""
        serving = (
            health_pb2.HealthCheckResponse.SERVING if status == 200 else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        async with asyncio.timeout(30):
            while (answer := await health())[0] != status or answer[3] != [serving] * 2:
                await asyncio.sleep(0.2)
        return answer

    try:
        status, body, _, statuses = await health()
        assert (status, body["status"]) == (200, "serving")
        assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 2
        caplog.set_level(logging.INFO)
        await _shut_out(admin, name)
        # An answer serves the checks of the next second (`PROBE_FRESH_SECONDS`): not serving after it.
        status, body, retry_after, statuses = await settled(503)
        assert (status, body["status"], body["party"], retry_after) == (503, "not serving", "CHE", "1")
        assert body["reason"] == "the database cannot be used now", body
        assert statuses == [health_pb2.HealthCheckResponse.NOT_SERVING] * 2
        said = [r for r in caplog.records if r.name == "gateway.store.base"]
        assert len(said) == 1 and said[0].levelno == logging.WARNING, [r.getMessage() for r in said]
        # (asyncpg's pool logs its own failures to reconnect, with tracebacks: the library's, not the gateway's.)
        assert not [r for r in caplog.records if r.name.startswith("gateway") and r.exc_info is not None]
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        status, body, _, statuses = await settled(200)
        assert (status, body["status"]) == (200, "serving")
        assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 2
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await network.stop()


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_a_json_delivery_the_receiver_fails_on_is_answered_503_to_retry_not_a_4xx(tmp_path: Path) -> None:
    # The receiver's database refuses connections: its failure, not the sender's input. The gRPC path answers
    # the receipt INTERNAL_ERROR, which the sender retries; the HTTP path answered it 422, which tells an HTTP
    # client its request was bad and not to send it again. It answers 503 with Retry-After, the receipt still
    # the body; once the database is back, the same envelope is taken in.
    network = await harness.start_network(tmp_path, ("CHN", "CHE"), http=True)
    admin = await asyncpg.connect(postgres.admin_url())
    name = urllib.parse.urlsplit(str(await harness.database_location(tmp_path, "CHE"))).path.lstrip("/")
    try:
        pair = Pair(network["CHN"], network["CHE"])
        await setup_accounts(pair)
        async with pair.chn.store.read() as tx:
            channel = await tx.outgoing_channel("CHE")
        crafter = Crafter(signer=pair.chn.signer, sender="CHN", receiver="CHE", channel=channel)
        payload, _ = crafter.statement(status_query=partner_pb2.StatusQuery(transfer_id="unknown-1"))
        body = crafter.envelope(payload).to_json()

        async def deliver() -> tuple[int, str | None, partner_pb2.Receipt]:
            async with (
                aiohttp.ClientSession() as session,
                session.post(pair.che.http_url + DELIVER_PATH, data=body) as response,
            ):
                answer = await response.read()
                receipt = partner_pb2.Receipt.FromString(Envelope.from_json(answer).payload)
                return response.status, response.headers.get("Retry-After"), receipt

        await _shut_out(admin, name)
        status, retry_after, receipt = await deliver()
        assert (status, retry_after) == (503, "1")
        assert (ResponseCode(receipt.code), receipt.taken_in) == (ResponseCode.INTERNAL_ERROR, False)
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        # As a sender does, after each 503: the pool's first use of a connection the server ended may fail once
        # more (asyncpg: "another operation is in progress"), a transient failure answered 503 in its turn.
        async with asyncio.timeout(30):
            while (answer := await deliver())[0] == 503:
                assert ResponseCode(answer[2].code) is ResponseCode.INTERNAL_ERROR and not answer[2].taken_in
                await asyncio.sleep(0.2)
        status, retry_after, receipt = answer
        assert (status, retry_after, receipt.taken_in) == (200, None, True), receipt
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await network.stop()


@pytest.mark.asyncio
async def test_health_checks_asked_in_a_loop_read_the_database_about_once_a_second(tmp_path: Path) -> None:
    # /healthz and Check need no credentials: a caller asking them in a loop, one after the other, must not make
    # the gateway read its database once per check (one read at a time is still a read for every check); an
    # answer serves the checks of the next second.
    network = await harness.start_network(tmp_path, ("CHN", "CHE"), http=True)
    node = network["CHE"]
    async with node.core.store.read() as tx:
        transaction = type(tx)
    get_setting = transaction.get_setting
    probes: list[str] = []

    async def counted(self: Transaction, name: str) -> str | None:
        if name == "health":
            probes.append(name)
        answer: str | None = await get_setting(self, name)
        return answer

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(transaction, "get_setting", counted)
            started = asyncio.get_running_loop().time()
            async with aiohttp.ClientSession() as session:
                for _ in range(200):
                    async with session.get(node.http_url + "/healthz") as response:
                        assert response.status == 200
            async with grpc.aio.insecure_channel(node.partner_address) as channel:
                for _ in range(100):
                    checked = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=30
                    )
                    assert checked.status == health_pb2.HealthCheckResponse.SERVING
            took = asyncio.get_running_loop().time() - started
        assert 1 <= len(probes) <= took + 2, (len(probes), took)
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_a_stopping_gateway_tells_its_health_watchers_not_serving_first(tmp_path: Path) -> None:
    # The README says Watch streams NOT_SERVING as the gateway stops: a load balancer watching health learns it
    # before the ports close, and sends callers elsewhere. The stop never set it: the watch just ended.
    network = await harness.start_network(tmp_path, ("CHN", "CHE"))
    node = network["CHE"]
    stopping: asyncio.Task[None] | None = None
    try:
        async with (
            grpc.aio.insecure_channel(node.operator_address) as operator_channel,
            grpc.aio.insecure_channel(node.partner_address) as partner_channel,
        ):
            watches = [
                health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
                for channel in (operator_channel, partner_channel)
            ]
            for watch in watches:
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            stopping = asyncio.create_task(node.stop())
            for watch in watches:
                answer = await watch.read()
                assert isinstance(answer, health_pb2.HealthCheckResponse), answer  # not the stream's end
                assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
                watch.cancel()
            await stopping
    finally:
        if stopping is None:
            await node.stop()
        else:
            with contextlib.suppress(Exception):
                await stopping
        await network["CHN"].stop()


@pytest.mark.asyncio
async def test_open_health_watches_end_at_a_stop_and_do_not_hold_it_for_its_grace_period(tmp_path: Path) -> None:
    # gRPC's own health servicer kept every Watch stream open after telling NOT_SERVING, so a stop waited out its
    # whole grace period for the load balancers' watches (5 s at each restart; 60 s here).
    network = await harness.start_network(tmp_path, ("CHN", "CHE"))
    node = network["CHE"]
    stopping: asyncio.Task[None] | None = None
    try:
        async with grpc.aio.insecure_channel(node.operator_address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            known = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)
            unknown = stub.Watch(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=120)
            assert (await known.read()).status == health_pb2.HealthCheckResponse.SERVING
            assert (await unknown.read()).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            stopping = asyncio.create_task(node.stop(grace=60))
            assert (await known.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await known.read() is grpc.aio.EOF  # type: ignore[attr-defined]
            assert await unknown.read() is grpc.aio.EOF  # type: ignore[attr-defined]
            assert await known.code() == grpc.StatusCode.OK
            assert await unknown.code() == grpc.StatusCode.OK
            # A bound on a hang only: without the fix the stop lasts its 60 s grace.
            await asyncio.wait_for(asyncio.shield(stopping), timeout=30)
    finally:
        if stopping is None:
            await node.stop()
        else:
            with contextlib.suppress(Exception):
                await stopping
        await network["CHN"].stop()


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_a_database_session_ended_mid_delivery_is_a_line_of_the_outbox_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The outbox worker logged a traceback, as for a bug, when the database ended its sessions while a message
    was being sent (a failover, an administrator's ``pg_terminate_backend``): the receipt came back and could not
    be recorded. It is a line, as when the claim meets the database down, and the message goes again."""
    network = await harness.start_network(tmp_path, ("CHN", "CHE"))
    admin = await asyncpg.connect(postgres.admin_url())
    name = urllib.parse.urlsplit(str(await harness.database_location(tmp_path, "CHN"))).path.lstrip("/")
    try:
        pair = Pair(network["CHN"], network["CHE"])
        block = await setup_accounts(pair)
        outbox = network["CHN"].core.outbox
        transport = outbox.transport
        ended: list[int] = []

        async def end_sessions() -> None:
            if not ended:  # once: the answer of the first send finds every session of CHN's gone
                rows = await admin.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
                )
                ended.append(len(rows))

        class EndingSessions:
            """The partner answers, and meanwhile the database ends the sender's sessions."""

            async def deliver(self, party: str, envelope: bytes) -> bytes:
                receipt = await transport.deliver(party, envelope)
                await end_sessions()
                return receipt

            async def deliver_batch(self, party: str, envelopes: list[bytes]) -> list[bytes]:
                receipts = await transport.deliver_batch(party, envelopes)  # type: ignore[attr-defined]
                await end_sessions()
                return list(receipts)

        outbox.transport = EndingSessions()
        caplog.set_level(logging.WARNING)
        async with operator(pair.chn) as stub:
            transfer_id = (await stub.ProposeTransfer(proposal_request(block, 1, 5, "ended-mid-send"))).transfer_id
            async with asyncio.timeout(60):
                while True:  # a read may meet a session the server ended, and is asked again
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        found = await stub.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))
                        if found.state == records_pb2.COMPLETED:
                            break
                    await asyncio.sleep(0.05)
        assert ended and ended[0] > 0
        said = [r for r in caplog.records if r.name == "gateway.outbox"]
        assert not [r.getMessage() for r in said if r.exc_info is not None]
        assert any("could not do it now" in r.getMessage() for r in said), [r.getMessage() for r in said]
    finally:
        await admin.close()
        await network.stop()


@pytest.mark.asyncio
async def test_a_watch_writing_serving_as_the_stop_begins_still_tells_not_serving_before_it_ends(
    tmp_path: Path,
) -> None:
    # A watch that read SERVING just before the stop set the flag, and the stop's NOT_SERVING still to come (it
    # waits for the watch's lock): the watch saw the flag and ended, its last word SERVING.
    network = await harness.start_network(tmp_path, ("CHN", "CHE"))
    node = network["CHE"]
    servicer = node._health[0]  # the operator port's
    stopping: asyncio.Task[None] | None = None
    try:
        async with grpc.aio.insecure_channel(node.operator_address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            condition = servicer._server_watchers[""]
            async with condition:  # the watch waits for it, as it would behind another watch's write
                watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
                reading = asyncio.create_task(watch.read())
                for _ in range(500):
                    if servicer._watcher_count_by_service.get("") == 1:
                        break
                    await asyncio.sleep(0.01)
                assert servicer._watcher_count_by_service.get("") == 1
                stopping = asyncio.create_task(servicer.enter_graceful_shutdown())
                for _ in range(500):
                    if servicer._gracefully_shutting_down:
                        break
                    await asyncio.sleep(0.01)
                assert servicer._gracefully_shutting_down
            statuses = [(await reading).status]
            while (answer := await watch.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]
                statuses.append(answer.status)
            await stopping
        assert statuses == [health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING]
    finally:
        if stopping is not None:
            with contextlib.suppress(Exception):
                await stopping
        await node.stop()
        await network["CHN"].stop()
