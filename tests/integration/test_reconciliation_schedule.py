"""The reconciliation schedule: a run with each partner once the period since the last run (or since the start)
has passed, and none before; and the tree folded in the background between runs."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from gateway.demo import start_pair
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.reconciliation import Status
from gateway.store.base import ReconciliationRun, RunRole
from gateway.usecases.base import Idempotency
from tests.integration.harness import setup_accounts, transfer


@pytest.mark.asyncio
async def test_a_run_starts_when_due_and_not_before(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 12, 1, tzinfo=dt.UTC)]
    pair = await start_pair(tmp_path, clock=lambda: now[0])
    try:
        gateway = pair.chn.core.gateway
        started = now[0]
        day = dt.timedelta(days=1)
        assert await gateway.reconcile_due(day, started) == []
        now[0] += day
        (run,) = await gateway.reconcile_due(day, started)
        assert run.partner == "CHE" and run.snapshot_at == now[0]
        async with asyncio.timeout(30):  # bounds a hang only: a loaded machine may take seconds over the run
            while (await gateway.get_reconciliation(run.run_id)).status is Status.RUNNING:
                await asyncio.sleep(0.005)
        assert (await gateway.get_reconciliation(run.run_id)).status is Status.CONSISTENT
        # The next is due a period after this run started, whatever the start of the gateway.
        now[0] += day - dt.timedelta(seconds=1)
        assert await gateway.reconcile_due(day, started) == []
        now[0] += dt.timedelta(seconds=1)
        assert [r.partner for r in await gateway.reconcile_due(day, started)] == ["CHE"]
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_second_run_waits_for_the_first_then_abandons_it(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 12, 1, tzinfo=dt.UTC)]
    pair = await start_pair(tmp_path, clock=lambda: now[0])
    try:
        await pair.che.stop()  # CHE never answers
        gateway = pair.chn.core.gateway
        first = await gateway.start_reconciliation(Idempotency("t", "r", "k1", "h1"), "CHE")
        with pytest.raises(GatewayError) as refused:
            await gateway.start_reconciliation(Idempotency("t", "r", "k2", "h2"), "CHE")
        assert refused.value.code is ResponseCode.INVALID_STATE and "still waiting" in refused.value.message
        now[0] += dt.timedelta(hours=1)
        second = await gateway.start_reconciliation(Idempotency("t", "r", "k3", "h3"), "CHE")
        assert (await gateway.get_reconciliation(first.run_id)).status is Status.ABANDONED
        assert (await gateway.get_reconciliation(second.run_id)).status is Status.RUNNING
    finally:
        await pair.chn.stop()


@pytest.mark.asyncio
async def test_the_tree_is_folded_as_the_ledger_changes(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        block = await setup_accounts(pair)
        await transfer(pair, block, 1, 10, "t1")
        async with pair.chn.store.read() as tx:
            assert await tx.reconciliation_pending() > 0
        assert await pair.chn.core.gateway.fold_trees() > 0
        async with pair.chn.store.read() as tx:
            assert await tx.reconciliation_pending() == 0
            totals = await tx.reconciliation_totals("CHE")
        assert [(t.blocks, t.quantity) for t in totals.values()] == [(1, 10)]
        assert await pair.chn.core.gateway.fold_trees() == 0
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_run_whose_requester_went_away_is_closed_on_the_responder(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 12, 1, tzinfo=dt.UTC)]
    pair = await start_pair(tmp_path, clock=lambda: now[0])
    try:
        await pair.che.outbox.stop()  # CHE answers, but its answer never leaves: CHN's run waits, then gives up
        run = await pair.chn.core.gateway.start_reconciliation(Idempotency("t", "r", "k1", "h1"), "CHE")
        async with asyncio.timeout(30):  # bounds a hang only: a loaded machine may take seconds over the request
            while True:
                async with pair.che.store.read() as tx:
                    if await tx.get_reconciliation(run.run_id) is not None:
                        break
                await asyncio.sleep(0.005)
        responder = pair.che.core.gateway
        assert (await responder.get_reconciliation(run.run_id)).status is Status.RUNNING
        # More runs since, all finished: the stale one is not among the 1,000 newest, and is closed all the same.
        async with pair.che.store.transaction() as tx:
            for i in range(1200):
                at = now[0] + dt.timedelta(seconds=i + 1)
                later = ReconciliationRun(f"later-{i}", "CHN", RunRole.RESPONDER, Status.CONSISTENT, at, at, at)
                await tx.insert_reconciliation(later)
        now[0] += dt.timedelta(hours=1)
        assert await responder.close_stale_runs() == []
        now[0] += dt.timedelta(hours=1)
        (closed,) = await responder.close_stale_runs()
        assert (closed.run_id, closed.status) == (run.run_id, Status.ABANDONED)
        assert "sent no report" in closed.detail
    finally:
        await pair.stop()
