"""Units enter the ledger only with an AEF mitigation type.

Every ledger entry is a row of the AEF Actions table, which needs one, and an entry never changes: a block
without one, once moved abroad, tied, used or cancelled, would leave its year's AEF report impossible to write on
both sides for good. Units without one stay registrable for domestic holding, and are refused at each edge where
they would enter the ledger: a proposal (ours or a partner's), a registration under an authorization, a use.
"""

from __future__ import annotations

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, records_pb2
from gateway.demo import Pair, demo_block
from gateway.domain.errors import ResponseCode
from gateway.rpc.errors import read_error_detail
from tests.integration.harness import (
    open_account,
    operator,
    proposal_request,
    setup_accounts,
    snapshot,
)
from tests.integration.test_transfer import (
    _next_crafter,
    _rogue_proposal,
    decisions_on_a_proposal_che_records_nothing_of,
)

BARE = 5_000
"""The first serial of the block registered without a mitigation type."""


def _refusal(error: grpc.aio.AioRpcError) -> tuple[ResponseCode, str, str]:
    detail = read_error_detail(error.trailing_metadata())
    assert detail is not None, f"no ErrorDetail in {error}"
    return ResponseCode(detail.code), detail.field, detail.message


async def _register_bare(pair: Pair, key: str, start: int, authorization_id: str = "") -> records_pb2.UnitBlock:
    block = demo_block()
    block.start, block.end = start, start + 99
    block.mitigation_type = ""
    async with operator(pair.chn) as chn:
        registered = await chn.RegisterIssuance(
            operator_pb2.RegisterIssuanceRequest(
                idempotency_key=key, account_id="CN-PO-0001", block=block, authorization_id=authorization_id
            )
        )
    return registered.block


@pytest.mark.asyncio
async def test_units_without_a_mitigation_type_are_held_but_neither_leave_nor_are_tied_nor_used(pair: Pair) -> None:
    await setup_accounts(pair)
    bare = await _register_bare(pair, "bare", BARE)  # held at home: no ledger entry, no report row
    async with operator(pair.chn) as chn:
        await open_account(chn, "CN-CAN-0001", "cancellation", key="open-can")
        before = await snapshot(pair.chn)
        request = proposal_request(bare, 1, 10, "with-bare")
        request.selections.add(space=bare.space, start=BARE, end=BARE + 9)
        request.selections[0].start, request.selections[0].end = 1, 10
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.ProposeTransfer(request)
        code, field, message = _refusal(caught.value)
        assert (code, field) == (ResponseCode.INVALID_ARGUMENT, "selections[1]")
        assert "AEF mitigation type" in message and f"{BARE}" in message
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.CancelUnits(
                operator_pb2.CancelUnitsRequest(
                    idempotency_key="cancel-bare",
                    source_account="CN-PO-0001",
                    cancellation_account="CN-CAN-0001",
                    authorization_id="CHN-A-0001",
                    subtype="Other cancellations",
                    selections=[operator_pb2.BlockSelection(space=bare.space, start=BARE, end=BARE + 9)],
                )
            )
        assert _refusal(caught.value)[:2] == (ResponseCode.INVALID_ARGUMENT, "selections[0]")
        assert await snapshot(pair.chn) == before
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _register_bare(pair, "bare-tied", BARE + 1_000, authorization_id="CHN-A-0001")
        assert _refusal(caught.value)[:2] == (ResponseCode.INVALID_ARGUMENT, "block.mitigation_type")
        assert await snapshot(pair.chn) == before
        # A mitigation type stated must be the AEF's, even for units only held: such units could never move.
        typo = demo_block()
        typo.start, typo.end, typo.mitigation_type = BARE + 2_000, BARE + 2_099, "removals"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.RegisterIssuance(
                operator_pb2.RegisterIssuanceRequest(idempotency_key="typo", account_id="CN-PO-0001", block=typo)
            )
        assert _refusal(caught.value)[:2] == (ResponseCode.INVALID_ARGUMENT, "block.mitigation_type")
        assert "states mitigation type 'removals'" in _refusal(caught.value)[2]
        assert await snapshot(pair.chn) == before
        # The units stated with a mitigation type still leave.
        accepted = await chn.ProposeTransfer(proposal_request(bare, 1, 10, "stated"))
    assert accepted.quantity == 10


@pytest.mark.asyncio
async def test_a_partners_proposal_of_units_without_a_mitigation_type_is_refused_and_nothing_recorded(
    pair: Pair,
) -> None:
    block = await setup_accounts(pair)
    crafter = await _next_crafter(pair)
    proposal = _rogue_proposal(block, 500, 510, "bare-from-partner")
    proposal.blocks[0].mitigation_type = ""  # type: ignore[attr-defined]
    decisions = await decisions_on_a_proposal_che_records_nothing_of(pair, crafter, proposal)
    assert [(d.accepted, [ResponseCode(r.code) for r in d.rejections]) for d in decisions] == [
        (False, [ResponseCode.INVALID_ARGUMENT])
    ]
    assert "AEF mitigation type" in decisions[0].rejections[0].message
