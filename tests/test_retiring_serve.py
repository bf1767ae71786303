"""Uses and cancellations against real ``carbon-gateway serve`` processes: what a use may take, and for what.

Two partner gateways (``CHN`` and ``CHE``, SQLite, `tests.processes`) with an NDC period (``[ledger]``), driven
through their operator APIs as an operator's client does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, records_pb2
from gateway.demo import wait_for_state
from gateway.domain.errors import ResponseCode
from gateway.rpc.errors import read_error_detail
from tests.processes import ServeProcess, write_pair

pytestmark = pytest.mark.asyncio

LEDGER = (
    "[ledger]\nndc_first_year = 2021\nndc_last_year = 2030\n"
    'adjustment_method = "single-year averaging"\naveraging_divisor = "elapsed years"\n\n'
)
"""The NDC period both gateways keep their books for: a use towards the NDC needs one."""

SPACE = records_pb2.SerialSpace(unit_kind="CCER", issuing_registry="CN-CCER")


def _with_ledger(process: ServeProcess) -> None:
    text = process.config.read_text(encoding="utf-8")
    process.config.write_text(text.replace("[[partners]]", LEDGER + "[[partners]]", 1), encoding="utf-8")


@pytest_asyncio.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[ServeProcess, ServeProcess]]:
    """``CHN`` and ``CHE`` serving, ``CHE`` accepting every proposal."""
    chn, che = write_pair(tmp_path)
    for process in (chn, che):
        _with_ledger(process)
        process.start()
    try:
        for process in (chn, che):
            await process.wait_serving()
        yield chn, che
    finally:
        for process in (chn, che):
            if process.running:
                process.stop()


def _authorization(
    authorization_id: str, purposes: list[str], definition: str, *, party: str = ""
) -> records_pb2.Authorization:
    return records_pb2.Authorization(
        authorization_id=authorization_id,
        party=party,
        date="2026-01-15",
        version="1.0",
        cooperative_approach="CA0001",
        metric="GHG",
        purposes=purposes,
        authorized_quantity=5000,
        timeframe_start=2021,
        timeframe_end=2030,
        first_transfer_definition=definition,
        sectors=["Forestry and land use"],
        activity_types=["Afforestation and reforestation"],
        authorized_parties=["CHN", "CHE"],
    )


async def _open(stub: operator_pb2_grpc.OperatorServiceAsyncStub, account_id: str, account_type: str) -> None:
    await stub.OpenAccount(
        operator_pb2.OpenAccountRequest(
            idempotency_key=f"open-{account_id}",
            account=records_pb2.Account(account_id=account_id, holder_name="Holder", account_type=account_type),
        )
    )


def _refusal(error: grpc.aio.AioRpcError) -> tuple[ResponseCode, str]:
    detail = read_error_detail(error.trailing_metadata())
    assert detail is not None, error
    return ResponseCode(detail.code), detail.field


async def _che_holds_chn_units(
    chn_stub: operator_pb2_grpc.OperatorServiceAsyncStub, che_stub: operator_pb2_grpc.OperatorServiceAsyncStub
) -> None:
    """CHE holds units 1-100 that CHN first transferred to it under CHN's authorization ``A-0001`` (OIMP only),
    acquired for OIMP."""
    await _open(chn_stub, "CN-PO-0001", "project owner")
    await _open(che_stub, "CH-PH-0001", "Party holding")
    await _open(che_stub, "CH-USE-0001", "use")
    await chn_stub.RegisterAuthorization(
        operator_pb2.RegisterAuthorizationRequest(
            idempotency_key="auth", authorization=_authorization("A-0001", ["OIMP"], "Issuance")
        )
    )
    await chn_stub.RegisterIssuance(
        operator_pb2.RegisterIssuanceRequest(
            idempotency_key="issue",
            account_id="CN-PO-0001",
            authorization_id="A-0001",
            block=records_pb2.UnitBlock(
                space=SPACE,
                start=1,
                end=1000,
                vintage=2025,
                project_id="P-0001",
                methodology_code="CCER-14-002-V01",
                mitigation_type="Removals",
                registry_reference="issuance-0001",
            ),
        )
    )
    proposed = await chn_stub.ProposeTransfer(
        operator_pb2.ProposeTransferRequest(
            idempotency_key="transfer",
            source_account="CN-PO-0001",
            selections=[operator_pb2.BlockSelection(space=SPACE, start=1, end=100)],
            acquiring_account=records_pb2.AccountRef(party="CHE", account_id="CH-PH-0001"),
            cooperative_approach="CA0001",
            authorization_id="A-0001",
            purpose="OIMP",
            adjustment_method="single-year averaging",
        )
    )
    final = {records_pb2.COMPLETED, records_pb2.REJECTED, records_pb2.CANCELLED, records_pb2.TERMINATED}
    assert (await wait_for_state(che_stub, proposed.transfer_id, final, timeout=60)).state == records_pb2.COMPLETED


async def test_acquired_units_are_not_used_under_this_party_s_own_authorization_of_the_same_id(
    pair: tuple[ServeProcess, ServeProcess],
) -> None:
    """CHE holds ITMOs CHN first transferred under CHN's authorization ``A-0001`` (OIMP only), acquired for OIMP.
    CHE then registers an authorization of its own that happens to carry the same ID, for NDC use. A use towards
    CHE's NDC of CHN's units was taken on the word of CHE's authorization: CHN booked them first transferred for
    OIMP only, and CHE subtracted them from its NDC balance, a double claim. CHE's authorization is not theirs:
    they go only for the purpose they were acquired for, as with no copy of CHN's authorization here."""
    chn, che = pair
    async with chn.channel() as chn_channel, che.channel() as che_channel:
        chn_stub, che_stub = ServeProcess.stub(chn_channel), ServeProcess.stub(che_channel)
        await _che_holds_chn_units(chn_stub, che_stub)

        def use(key: str) -> operator_pb2.UseUnitsRequest:
            return operator_pb2.UseUnitsRequest(
                idempotency_key=key,
                source_account="CH-PH-0001",
                use_account="CH-USE-0001",
                action="use towards the NDC",
                year_of_use=2025,
                selections=[operator_pb2.BlockSelection(space=SPACE, start=1, end=10)],
            )

        with pytest.raises(grpc.aio.AioRpcError) as before:
            await che_stub.UseUnits(use("use-before"))
        assert _refusal(before.value) == (ResponseCode.AUTHORIZATION_MISSING, "action")

        own = _authorization("A-0001", ["NDC"], "First international transfer", party="CHE")
        await che_stub.RegisterAuthorization(
            operator_pb2.RegisterAuthorizationRequest(idempotency_key="own", authorization=own)
        )
        with pytest.raises(grpc.aio.AioRpcError) as after:
            await che_stub.UseUnits(use("use-after"))
        assert _refusal(after.value) == (ResponseCode.AUTHORIZATION_MISSING, "action")

        # For the purpose they were acquired for, they are used as before.
        used = await che_stub.UseUnits(
            operator_pb2.UseUnitsRequest(
                idempotency_key="use-oimp",
                source_account="CH-PH-0001",
                use_account="CH-USE-0001",
                action="use for other international mitigation purposes",
                purpose="OIMP",
                selections=[operator_pb2.BlockSelection(space=SPACE, start=1, end=10)],
            )
        )
        assert [(h.block.start, h.block.end, h.status) for h in used.retired] == [(1, 10, "used")]
        summary = await che_stub.GetLedgerSummary(operator_pb2.GetLedgerSummaryRequest())
        assert all(year.used_ndc == "0" for year in summary.years)


async def test_acquired_units_do_not_move_on_under_this_party_s_own_authorization_of_the_same_id(
    pair: tuple[ServeProcess, ServeProcess],
) -> None:
    """As for a use: CHE's own authorization ``A-0001`` is not CHN's, whose units it holds. A proposal of them
    onward under it (for CHE's NDC, which CHN's never allowed) is refused, naming ``authorization_id``; it was
    checked against CHE's authorization and went through."""
    chn, che = pair
    async with chn.channel() as chn_channel, che.channel() as che_channel:
        chn_stub, che_stub = ServeProcess.stub(chn_channel), ServeProcess.stub(che_channel)
        await _che_holds_chn_units(chn_stub, che_stub)
        own = _authorization("A-0001", ["NDC"], "First international transfer", party="CHE")
        await che_stub.RegisterAuthorization(
            operator_pb2.RegisterAuthorizationRequest(idempotency_key="own", authorization=own)
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await che_stub.ProposeTransfer(
                operator_pb2.ProposeTransferRequest(
                    idempotency_key="onward",
                    source_account="CH-PH-0001",
                    selections=[operator_pb2.BlockSelection(space=SPACE, start=50, end=60)],
                    acquiring_account=records_pb2.AccountRef(party="CHN", account_id="CN-PO-0001"),
                    cooperative_approach="CA0001",
                    authorization_id="A-0001",
                    purpose="NDC",
                    adjustment_method="single-year averaging",
                )
            )
        assert _refusal(refused.value) == (ResponseCode.AUTHORIZATION_MISSING, "authorization_id")
        assert "registered here is CHE's" in (refused.value.details() or "")
        listed = await che_stub.ListTransfers(operator_pb2.ListTransfersRequest())
        assert [t.state for t in listed.transfers] == [records_pb2.COMPLETED]  # only the one CHE acquired
