"""Units enter the ledger only with serials that can serve as ITMO serials.

The AEF names an ITMO by `<cooperative approach>-<Party ITMO registry>-<first transferring Party>-<serial>-<vintage>`,
which cannot tell apart the units of two issuances of a registry whose serials restart per issuance
(``issuance_pattern``): the report refuses every ledger entry and holding of such a block, and an entry is never
changed, so one such entry would leave its year's AEF report, and every later one, impossible to write. Such units
stay registrable and held, and are refused at each edge where they would enter the ledger: a proposal (ours or a
partner's), a registration under an authorization, a use or a cancellation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from carbon_gateway.v1 import operator_pb2, records_pb2
from gateway.demo import DEMO_LEDGER, Pair, demo_block, wait_for_state
from gateway.domain.errors import ResponseCode
from gateway.domain.mapping import RecordRejected
from gateway.domain.nomenclature import DEFAULT_REGISTRIES, IssuingRegistry, Nomenclature
from gateway.domain.protocol import ACCEPT_ALL, DecisionPolicy
from gateway.harness import start_network
from gateway.rpc.errors import read_error_detail
from tests.integration.harness import TERMINAL, open_account, operator, proposal_request, setup_accounts, snapshot
from tests.integration.test_transfer import (
    _next_crafter,
    _rogue_proposal,
    decisions_on_a_proposal_che_records_nothing_of,
)

NOMENCLATURE = Nomenclature.of(
    (
        *DEFAULT_REGISTRIES,
        IssuingRegistry(code="CN-VER", unit_kinds=("VCU",), party="CHN", issuance_pattern="[A-Z0-9-]+"),
    )
)
"""The demo's registries and one of CHN's whose serials restart per issuance."""


@pytest_asyncio.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """CHN and CHE, both knowing the per-issuance registry, with what the AEF report needs configured."""
    async with _pair(tmp_path, ACCEPT_ALL) as started:
        yield started


@pytest_asyncio.fixture
async def holding_pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """The same, with CHE holding every proposal for its operator."""
    async with _pair(tmp_path, DecisionPolicy()) as started:
        yield started


@contextlib.asynccontextmanager
async def _pair(tmp_path: Path, policy: DecisionPolicy) -> AsyncIterator[Pair]:
    ledger = dataclasses.replace(DEMO_LEDGER, gwp_values="AR5")
    network = await start_network(
        tmp_path,
        ("CHN", "CHE"),
        policy=policy,
        nomenclature=NOMENCLATURE,
        ledger=lambda party: dataclasses.replace(ledger, party_registry=f"{party}01"),
    )
    try:
        yield Pair(network["CHN"], network["CHE"])
    finally:
        await network.stop()


def _per_issuance(start: int, end: int, issuance: str = "ISS-1") -> records_pb2.UnitBlock:
    block = demo_block(start, end)
    block.space.CopyFrom(records_pb2.SerialSpace(unit_kind="VCU", issuing_registry="CN-VER", issuance=issuance))
    return block


def _refusal(error: grpc.aio.AioRpcError) -> tuple[ResponseCode, str, str]:
    detail = read_error_detail(error.trailing_metadata())
    assert detail is not None, f"no ErrorDetail in {error}"
    return ResponseCode(detail.code), detail.field, detail.message


@pytest.mark.asyncio
async def test_units_whose_serials_restart_per_issuance_are_held_but_neither_leave_nor_are_tied_nor_used(
    pair: Pair,
) -> None:
    await setup_accounts(pair)
    async with operator(pair.chn) as chn:
        # Registered without an authorization, the units are only held: no ledger entry, no report row.
        held = await chn.RegisterIssuance(
            operator_pb2.RegisterIssuanceRequest(
                idempotency_key="held", account_id="CN-PO-0001", block=_per_issuance(1, 100)
            )
        )
        space = held.block.space
        await open_account(chn, "CN-CAN-0001", "cancellation", key="open-can")
        before = await snapshot(pair.chn)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.RegisterIssuance(
                operator_pb2.RegisterIssuanceRequest(
                    idempotency_key="tied",
                    account_id="CN-PO-0001",
                    block=_per_issuance(1, 100, "ISS-2"),
                    authorization_id="CHN-A-0001",
                )
            )
        code, field, message = _refusal(caught.value)
        assert (code, field) == (ResponseCode.INVALID_ARGUMENT, "block.space.issuance")
        assert "ISS-2" in message and "ITMO serials" in message and "issuance_pattern" in message
        assert await snapshot(pair.chn) == before

        request = proposal_request(held.block, 1, 10, "propose")
        request.selections.insert(0, operator_pb2.BlockSelection(space=demo_block().space, start=1, end=10))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.ProposeTransfer(request)
        assert _refusal(caught.value)[:2] == (ResponseCode.INVALID_ARGUMENT, "selections[1].space.issuance")
        assert await snapshot(pair.chn) == before

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.UseUnits(
                operator_pb2.UseUnitsRequest(
                    idempotency_key="use",
                    source_account="CN-PO-0001",
                    use_account="CN-CAN-0001",
                    authorization_id="CHN-A-0001",
                    action="use towards the NDC",
                    year_of_use=2025,
                    selections=[operator_pb2.BlockSelection(space=space, start=1, end=10)],
                )
            )
        # A use account is what a use needs: the account is refused before the units are looked at.
        assert _refusal(caught.value)[0] is ResponseCode.ACCOUNT_NOT_ELIGIBLE
        await open_account(chn, "CN-USE-0001", "use", key="open-use")
        before = await snapshot(pair.chn)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.UseUnits(
                operator_pb2.UseUnitsRequest(
                    idempotency_key="use-2",
                    source_account="CN-PO-0001",
                    use_account="CN-USE-0001",
                    authorization_id="CHN-A-0001",
                    action="use towards the NDC",
                    year_of_use=2025,
                    selections=[
                        operator_pb2.BlockSelection(space=demo_block().space, start=1, end=10),
                        operator_pb2.BlockSelection(space=space, start=1, end=10),
                    ],
                )
            )
        assert _refusal(caught.value)[:2] == (ResponseCode.INVALID_ARGUMENT, "selections[1].space.issuance")
        assert await snapshot(pair.chn) == before

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.CancelUnits(
                operator_pb2.CancelUnitsRequest(
                    idempotency_key="cancel",
                    source_account="CN-PO-0001",
                    cancellation_account="CN-CAN-0001",
                    authorization_id="CHN-A-0001",
                    subtype="Other cancellations",
                    selections=[operator_pb2.BlockSelection(space=space, start=11, end=20)],
                )
            )
        assert _refusal(caught.value)[:2] == (ResponseCode.INVALID_ARGUMENT, "selections[0].space.issuance")
        assert await snapshot(pair.chn) == before

        # Units with ITMO serials still leave, and the year's report is written.
        accepted = await chn.ProposeTransfer(proposal_request(demo_block(), 1, 10, "stated"))
    assert accepted.quantity == 10
    year = dt.datetime.now(dt.UTC).year
    await pair.chn.core.gateway.aef_report(year, version="1.0", submission_date=dt.date(year, 12, 31))  # not refused


@pytest.mark.asyncio
async def test_a_partners_proposal_of_units_whose_serials_restart_per_issuance_is_refused_and_nothing_recorded(
    pair: Pair,
) -> None:
    block = await setup_accounts(pair)
    crafter = await _next_crafter(pair)
    proposal = _rogue_proposal(block, 500, 510, "per-issuance-from-partner")
    proposal.blocks[0].space.CopyFrom(_per_issuance(500, 510).space)  # type: ignore[attr-defined]
    decisions = await decisions_on_a_proposal_che_records_nothing_of(pair, crafter, proposal)
    assert [(d.accepted, [ResponseCode(r.code) for r in d.rejections]) for d in decisions] == [
        (False, [ResponseCode.INVALID_ARGUMENT])
    ]
    assert "ITMO serials" in decisions[0].rejections[0].message


@pytest.mark.asyncio
async def test_units_tied_before_the_check_existed_are_cancelled_out_of_every_later_years_holdings(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway without `check_itmo_serials` tied units whose serials restart per issuance: they are in the
    ledger, and every later year's Holdings table lists them, which the report refuses. Refusing their
    cancellation too left them there for good; cancelled, they leave the holdings of every later year."""
    from gateway.usecases import registration

    await setup_accounts(pair)
    async with operator(pair.chn) as chn:
        await open_account(chn, "CN-CAN-0001", "cancellation", key="open-can")
        with monkeypatch.context() as earlier:  # the gateway as it was before the check
            earlier.setattr(registration, "check_itmo_serials", lambda block, field: None)
            tied = await chn.RegisterIssuance(
                operator_pb2.RegisterIssuanceRequest(
                    idempotency_key="tied-earlier",
                    account_id="CN-PO-0001",
                    block=_per_issuance(1, 100),
                    authorization_id="CHN-A-0001",
                )
            )
        assert tied.block.authorization_id == "CHN-A-0001"
        year = dt.datetime.now(dt.UTC).year
        with pytest.raises(RecordRejected, match="serials restarting per issuance"):
            await pair.chn.core.gateway.aef_report(year + 1, version="1.0", submission_date=dt.date(year + 1, 12, 31))
        await chn.CancelUnits(
            operator_pb2.CancelUnitsRequest(
                idempotency_key="cancel-earlier",
                source_account="CN-PO-0001",
                cancellation_account="CN-CAN-0001",
                authorization_id="CHN-A-0001",
                subtype="Other cancellations",
                selections=[operator_pb2.BlockSelection(space=tied.block.space, start=1, end=100)],
            )
        )
    # The year they were tied and cancelled in keeps its rows; the next year holds none of them.
    later = await pair.chn.core.gateway.aef_report(year + 1, version="1.0", submission_date=dt.date(year + 1, 12, 31))
    assert later.holdings == ()


async def _held_before_the_check(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> str:
    """A proposal of per-issuance units that a version without `check_itmo_serials` made, and CHE holds."""
    from gateway.domain import protocol

    await setup_accounts(pair)
    async with operator(pair.chn) as chn, operator(pair.che) as che:
        with monkeypatch.context() as earlier:
            earlier.setattr(protocol, "check_itmo_serials", lambda block, field: None)
            held = await chn.RegisterIssuance(
                operator_pb2.RegisterIssuanceRequest(
                    idempotency_key="held", account_id="CN-PO-0001", block=_per_issuance(1, 100)
                )
            )
            proposed = await chn.ProposeTransfer(proposal_request(held.block, 1, 10, "before-the-check"))
            await wait_for_state(che, proposed.transfer_id, {records_pb2.CHECKED})
    return proposed.transfer_id


@pytest.mark.asyncio
async def test_a_proposal_held_before_the_check_cannot_be_accepted_and_is_rejected_instead(
    holding_pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = holding_pair
    transfer_id = await _held_before_the_check(pair, monkeypatch)
    async with operator(pair.chn) as chn, operator(pair.che) as che:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await che.DecideTransfer(
                operator_pb2.DecideTransferRequest(idempotency_key="accept", transfer_id=transfer_id, accept=True)
            )
        code, field, message = _refusal(caught.value)
        assert (code, field) == (ResponseCode.INVALID_ARGUMENT, "accept")
        assert "ITMO serials" in message and "reject it" in message
        await che.DecideTransfer(
            operator_pb2.DecideTransferRequest(idempotency_key="reject", transfer_id=transfer_id, accept=False)
        )
        assert (await wait_for_state(chn, transfer_id, TERMINAL)).state == records_pb2.REJECTED
        assert (await wait_for_state(che, transfer_id, TERMINAL)).state == records_pb2.REJECTED
        held = (await chn.ListHoldings(operator_pb2.ListHoldingsRequest(account_id="CN-PO-0001"))).holdings
    assert any(h.block.space.issuance == "ISS-1" and (h.block.start, h.block.end) == (1, 100) for h in held)
    for node in (pair.chn, pair.che):
        async with node.store.read() as tx:
            assert [e for e in await tx.list_ledger() if e.transfer_id == transfer_id] == []


@pytest.mark.asyncio
async def test_a_transfer_accepted_before_the_check_is_cancelled_at_completion_and_its_units_stay_home(
    holding_pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.usecases import acquiring

    pair = holding_pair
    transfer_id = await _held_before_the_check(pair, monkeypatch)
    async with operator(pair.chn) as chn, operator(pair.che) as che:
        with monkeypatch.context() as earlier:  # CHE accepts as a version before the check did
            earlier.setattr(acquiring, "check_blocks_enter_ledger", lambda blocks: None)
            await che.DecideTransfer(
                operator_pb2.DecideTransferRequest(idempotency_key="accept", transfer_id=transfer_id, accept=True)
            )
            assert (await wait_for_state(chn, transfer_id, TERMINAL)).state == records_pb2.CANCELLED
        assert (await wait_for_state(che, transfer_id, TERMINAL)).state == records_pb2.CANCELLED
        held = (await chn.ListHoldings(operator_pb2.ListHoldingsRequest(account_id="CN-PO-0001"))).holdings
    assert sum(h.block.end - h.block.start + 1 for h in held if h.block.space.issuance == "ISS-1") == 100
    for node in (pair.chn, pair.che):
        async with node.store.read() as tx:
            assert [e for e in await tx.list_ledger() if e.transfer_id == transfer_id] == []
