"""A database that cannot do the work now (a lost connection, a lock wait that ran out) never turns a partner's
statement into one taken in with no effect: the statement is refused whole, and the sender's retry applies it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

import asyncpg
import pytest

from carbon_gateway.v1 import operator_pb2, records_pb2
from gateway import outbox
from gateway.demo import Pair
from gateway.domain.errors import GatewayError
from gateway.store.sqlite import SQLiteStore
from tests.integration.harness import operator, setup_accounts, transfer


def _transient_error(store: Any) -> BaseException:
    if isinstance(store, SQLiteStore):
        return sqlite3.OperationalError("database is locked")
    error: BaseException = asyncpg.exceptions.LockNotAvailableError("canceling statement due to lock timeout")
    return error


@pytest.mark.asyncio
async def test_a_statement_the_database_could_not_apply_now_is_applied_by_the_retry(pair: Pair) -> None:
    block = await setup_accounts(pair)
    exchange = pair.che.exchange
    applied = exchange.handler
    failures: list[str] = []

    async def fails_once(
        tx: Any, partner: str, header: Any, statement: Any, *, final_attempt: bool
    ) -> GatewayError | None:
        if not failures:
            failures.append(header.message_id)
            raise _transient_error(pair.che.store)
        return await applied(tx, partner, header, statement, final_attempt=final_attempt)

    assert pair.che.store.is_transient(_transient_error(pair.che.store))
    assert not pair.che.store.is_transient(ValueError("a bug"))
    exchange.handler = fails_once
    transfer_id = await transfer(pair, block, 1, 100, "transient-1")
    assert len(failures) == 1
    async with operator(pair.chn) as chn, operator(pair.che) as che:
        at_chn = await chn.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))
        at_che = await che.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))
    # The Proposal that failed once was not taken in as an INTERNAL_ERROR with no effect: its retry was applied.
    assert at_chn.state == at_che.state == records_pb2.COMPLETED


@pytest.mark.asyncio
async def test_a_transient_error_inside_the_statement_is_not_answered_as_taken_in(pair: Pair) -> None:
    block = await setup_accounts(pair)
    gateway = pair.che.core.gateway
    dispatch = gateway._dispatch
    failures: list[str] = []

    async def fails_once(tx: Any, partner: str, statement: Any) -> None:
        if not failures and statement.WhichOneof("body") == "proposal":
            failures.append(statement.proposal.transfer_id)
            raise _transient_error(pair.che.store)
        await dispatch(tx, partner, statement)

    gateway._dispatch = fails_once  # type: ignore[method-assign]
    transfer_id = await transfer(pair, block, 1, 100, "transient-2")
    assert failures == [transfer_id]
    async with operator(pair.chn) as chn, operator(pair.che) as che:
        at_chn = await chn.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))
        at_che = await che.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))
    # Not refused as INTERNAL_ERROR (a rejection back to CHN): the retry of the same Proposal was applied.
    assert at_chn.state == at_che.state == records_pb2.COMPLETED


@pytest.mark.asyncio
async def test_an_outbox_worker_that_cannot_use_the_database_says_so_in_a_line_and_looks_again(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    worker = pair.chn.core.outbox
    failures = 0
    drain = worker.drain

    async def failing_once() -> int:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise _transient_error(pair.chn.store)
        return await drain()

    await worker.stop()
    monkeypatch.setattr(worker, "drain", failing_once)
    monkeypatch.setattr(outbox, "DATABASE_RETRY_SECONDS", 0.05)
    caplog.set_level(logging.WARNING, logger="gateway.outbox")
    worker.start()
    await transfer(pair, await setup_accounts(pair), 1, 10, "after-a-failure")  # sent once the worker looks again
    assert failures == 1
    [warned] = [r for r in caplog.records if r.name == "gateway.outbox"]
    assert warned.levelname == "WARNING" and warned.exc_info is None
    assert "could not use the database" in warned.getMessage()


@pytest.mark.asyncio
async def test_on_a_shared_database_the_worker_looks_often_but_waits_its_retry_after_a_failure(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = pair.chn.core.outbox
    attempts = 0

    async def failing() -> int:
        nonlocal attempts
        attempts += 1
        raise _transient_error(pair.chn.store)

    await worker.stop()
    monkeypatch.setattr(type(pair.chn.store), "shared", property(lambda self: True))
    monkeypatch.setattr(worker, "drain", failing)
    monkeypatch.setattr(outbox, "SHARED_POLL_SECONDS", 0.02)  # the look of a worker that found nothing
    monkeypatch.setattr(outbox, "DATABASE_RETRY_SECONDS", 5.0)
    worker.start()
    try:
        await asyncio.sleep(0.5)
    finally:
        await worker.stop()
    assert attempts == 1  # not once per look: a database that failed is given its retry time


@pytest.mark.asyncio
async def test_a_stopping_worker_does_not_wait_for_ever_on_a_database_cut_off(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from contextlib import asynccontextmanager

    worker = pair.chn.core.outbox
    store = pair.chn.store

    @asynccontextmanager
    async def unanswered(*, durable: bool = True) -> Any:  # a database that no longer answers
        await asyncio.Event().wait()
        yield None

    monkeypatch.setattr(type(store), "shared", property(lambda self: True))
    monkeypatch.setattr(store, "transaction", unanswered)
    monkeypatch.setattr(outbox, "RELEASE_SECONDS", 0.1)
    caplog.set_level(logging.WARNING, logger="gateway.outbox")
    await asyncio.wait_for(worker.stop(), 5)
    assert any("could not end its leases as it stopped (TimeoutError)" in r.getMessage() for r in caplog.records)
