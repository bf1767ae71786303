"""What a hostile or unlucky partner can do to this gateway's own reconciliation runs: the runs it starts here
do not hide this side's run under way from the schedule or from the next start."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from carbon_gateway.v1 import partner_pb2
from gateway.demo import start_pair
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.reconciliation import Status
from gateway.node import utc_now
from gateway.usecases.base import Idempotency
from tests.integration.test_reconciliation import EMPTY_HEAD, TOTALS, crafter_for, send


@pytest.mark.asyncio
async def test_runs_a_partner_starts_here_do_not_hide_this_side_s_own_run(tmp_path: Path) -> None:
    """CHE starts 25 runs at CHN after CHN's own run (CHN answers each: they are CHN's newest runs with CHE).
    CHN's run is still the one the schedule and the next start see: no second run starts beside it, the
    schedule waits a period after it, and an hour later a new run abandons it."""
    now = [utc_now() - dt.timedelta(minutes=10)]
    pair = await start_pair(tmp_path, clock=lambda: now[0])
    try:
        await pair.chn.outbox.stop()  # CHN's requests and answers wait in its outbox: its run stays running
        gateway = pair.chn.core.gateway
        started = now[0] - dt.timedelta(days=3)
        day = dt.timedelta(days=1)
        first = await gateway.start_reconciliation(Idempotency("t", "r", "k1", "h1"), "CHE")
        crafter = await crafter_for(pair)
        now[0] = utc_now()  # the crafted statements are issued now
        for i in range(25):
            request = partner_pb2.ReconciliationRequest(run_id=f"from-che-{i}", phase=TOTALS, head=EMPTY_HEAD)
            receipt = await send(pair, crafter, reconciliation_request=request)
            assert ResponseCode(receipt.code) is ResponseCode.OK, receipt.detail
        assert await gateway.reconcile_due(day, started) == []
        with pytest.raises(GatewayError) as refused:
            await gateway.start_reconciliation(Idempotency("t", "r", "k2", "h2"), "CHE")
        assert refused.value.code is ResponseCode.INVALID_STATE and first.run_id in refused.value.message
        now[0] += dt.timedelta(hours=1)
        second = await gateway.start_reconciliation(Idempotency("t", "r", "k3", "h3"), "CHE")
        assert (await gateway.get_reconciliation(first.run_id)).status is Status.ABANDONED
        assert (await gateway.get_reconciliation(second.run_id)).status is Status.RUNNING
        now[0] += day - dt.timedelta(seconds=1)
        assert await gateway.reconcile_due(day, started) == []
    finally:
        await pair.stop()
