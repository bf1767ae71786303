"""Reconciliation end to end between two real gateways."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from carbon_gateway.v1 import records_pb2
from gateway.demo import Pair, start_pair, wait_for_state
from gateway.domain.reconciliation import Status
from gateway.node import GatewayNode
from gateway.store.base import ReconciliationRun
from gateway.usecases.base import Idempotency
from tests.integration.harness import TERMINAL, operator, proposal_request, setup_accounts


async def reconcile(node: GatewayNode, partner: str, key: str) -> ReconciliationRun:
    gateway = node.core.gateway
    run = await gateway.start_reconciliation(Idempotency("test", "reconcile", key, key), partner)
    for _ in range(2000):
        found = await gateway.get_reconciliation(run.run_id)
        if found.status is not Status.RUNNING:
            return found
        await asyncio.sleep(0.005)
    raise TimeoutError(f"run {run.run_id} did not finish")


async def transfer(pair: Pair, block: records_pb2.UnitBlock, start: int, end: int, key: str) -> str:
    async with operator(pair.chn) as chn, operator(pair.che) as che:
        proposed = await chn.ProposeTransfer(proposal_request(block, start, end, key))
        assert (await wait_for_state(chn, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        assert (await wait_for_state(che, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        return proposed.transfer_id


@pytest.mark.asyncio
async def test_consistent_then_quantity_differs(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        block = await setup_accounts(pair)
        for i in range(3):
            await transfer(pair, block, 1 + 100 * i, 50 + 100 * i, f"t{i}")
        run = await reconcile(pair.chn, "CHE", "r1")
        assert run.status is Status.CONSISTENT, run.detail
        path = tmp_path / "che.db"
        with sqlite3.connect(path) as db:
            db.execute(
                "UPDATE ledger SET block = json_set(block, '$.end', 49) WHERE entry_id ="
                " (SELECT MIN(entry_id) FROM ledger WHERE action_type = 'Acquisition')"
            )
        run = await reconcile(pair.chn, "CHE", "r2")
        assert run.status is Status.BLOCKS_INCONSISTENT, run.detail
        print(run)
    finally:
        await pair.stop()
