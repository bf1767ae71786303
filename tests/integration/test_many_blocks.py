"""A transfer of many separate blocks, the batched proposal of the throughput bench, end to end.

The debit and the credit change the status of a transfer's blocks in one statement, and the ledger records
the longest block per serial space in one upsert per space; this checks that every block still ends where it
must on both sides, and that the longest span survives entries recorded after it.
"""

from __future__ import annotations

from typing import Any

import pytest

from carbon_gateway.v1 import operator_pb2, records_pb2
from gateway.demo import Pair, ledgers_agree
from gateway.store.base import BlockStatus
from gateway.store.postgres import PostgresTransaction
from gateway.store.sqlite import SQLiteTransaction
from tests.integration.harness import operator, proposal_request, settle, setup_accounts


@pytest.mark.asyncio
async def test_a_transfer_of_many_separate_blocks_moves_each_of_them_on_both_sides(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = await setup_accounts(pair)
    status_updates = 0

    def counting(kind: type[SQLiteTransaction] | type[PostgresTransaction], method: str) -> Any:
        real: Any = getattr(kind, method)

        async def counted(self: Any, *args: object, **kwargs: object) -> None:
            nonlocal status_updates
            status_updates += 1
            await real(self, *args, **kwargs)

        return counted

    for kind in (SQLiteTransaction, PostgresTransaction):
        for method in ("set_block_status", "set_blocks_status"):
            monkeypatch.setattr(kind, method, counting(kind, method))
    # The long block first, then 200 single units: the longest span recorded must stay the long block's.
    request = proposal_request(block, 501, 900, "many")
    request.selections.extend(operator_pb2.BlockSelection(space=block.space, start=i, end=i) for i in range(1, 400, 2))
    selected = sorted([(501, 900)] + [(i, i) for i in range(1, 400, 2)])
    async with operator(pair.chn) as chn, operator(pair.che) as che:
        proposed = await chn.ProposeTransfer(request)
        await settle(pair.chn, pair.che)
        request_id = operator_pb2.GetTransferRequest(transfer_id=proposed.transfer_id)
        chn_transfer = await chn.GetTransfer(request_id)
        che_transfer = await che.GetTransfer(request_id)
        chn_ledger = (await chn.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())).entries
        che_ledger = (await che.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())).entries
    assert chn_transfer.state == che_transfer.state == records_pb2.COMPLETED
    assert chn_transfer.quantity == che_transfer.quantity == 600
    assert len(chn_transfer.blocks) == 201
    # One held block split once at the reservation (one call, for all held blocks split); the debit and the
    # credit went by transfer, not by block.
    assert status_updates == 1

    async with pair.chn.store.read() as tx:
        sent = await tx.blocks_of_transfer(proposed.transfer_id, BlockStatus.TRANSFERRED)
        reserved = await tx.blocks_of_transfer(proposed.transfer_id, BlockStatus.RESERVED)
        debited = await tx.blocks_of_transfer(proposed.transfer_id, BlockStatus.DEBITED)
        space = sent[0].block.space
        abroad = await tx.abroad_ranges(space, 1, 1000)
        left = [(b.block.start, b.block.end) for b in await tx.list_blocks() if b.status is BlockStatus.HELD]
    assert sorted((b.block.start, b.block.end) for b in sent) == selected
    assert reserved == debited == []
    assert abroad == selected  # every unit of CHN's issue that left is on record as abroad, and no other
    assert sum(end - start + 1 for start, end in left) == 1000 - 600

    async with pair.che.store.read() as tx:
        held = await tx.list_blocks("CH-PH-0001")
        pending = await tx.blocks_of_transfer(proposed.transfer_id, BlockStatus.PENDING)
        # A serial deep inside the long block: found only if the longest span recorded is the long block's.
        deep = await tx.ledger_of_units("CHN", space, 800, 800)
    assert sorted((b.block.start, b.block.end) for b in held) == selected
    assert {b.status for b in held} == {BlockStatus.HELD}
    assert pending == []
    assert [(e.action_type, e.block.start, e.block.end) for e in deep] == [("Acquisition", 501, 900)]

    assert sorted((e.action_type, e.block.start, e.block.end) for e in chn_ledger) == [
        ("First transfer", start, end) for start, end in selected
    ]
    assert len(che_ledger) == 201
    assert ledgers_agree(chn_ledger, che_ledger)
