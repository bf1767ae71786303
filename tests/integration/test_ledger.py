"""The adjustment ledger end to end: a first transfer, an acquisition, a use towards the NDC, a cancellation,
the summary, the AEF rows, idempotency, a used unit that never moves again, and a locked period."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, partner_pb2, records_pb2
from gateway import wire
from gateway.demo import DEMO_AUTHORIZATION, Pair, demo_block, start_pair, wait_for_state
from gateway.domain.adjustments import AdjustmentSettings, AveragingDivisor
from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.errors import ResponseCode
from gateway.domain.ledger import ActionContext, record_arrival
from gateway.domain.protocol import DecisionPolicy
from gateway.domain.records import ActionType, AdjustmentMethod, LedgerEntry, Purpose
from gateway.harness import Network
from gateway.rpc import operator as operator_rpc
from gateway.rpc.errors import read_error_detail
from gateway.store.base import BlockStatus
from gateway.usecases.base import LedgerOptions
from tests.integration.harness import (
    TERMINAL,
    cancelled_with_units_home,
    open_account,
    operator,
    proposal_request,
    setup_accounts,
)

AVERAGING = AdjustmentSettings(
    method=AdjustmentMethod.AVERAGING, first_year=2021, last_year=2030, averaging_divisor=AveragingDivisor.ELAPSED_YEARS
)


def options(registry: str) -> LedgerOptions:
    return LedgerOptions(
        adjustments=AVERAGING,
        party_registry=registry,
        gwp_values="AR5",
        underlying_registry_codes=(("CN-CCER", "CCER"),),
    )


def refusal(error: grpc.aio.AioRpcError) -> tuple[ResponseCode, str]:
    detail = read_error_detail(error.trailing_metadata())
    assert detail is not None
    return ResponseCode(detail.code), detail.field


@pytest.mark.asyncio
async def test_a_cancellation_whose_answer_a_client_cannot_read_is_refused_and_nothing_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A use or cancellation whose answer would pass what gRPC clients read (4 MiB) would take effect while its
    caller, and each retry with its key, is told only RESOURCE_EXHAUSTED: it is refused first, naming the
    selections, and the units stay where they were. Here the limit is lowered to what 20 blocks' answer takes."""
    pair = await start_pair(tmp_path)
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn:
            await chn.OpenAccount(
                operator_pb2.OpenAccountRequest(
                    idempotency_key="open",
                    account=records_pb2.Account(
                        account_id="CN-CAN-0001", holder_name="Registry", account_type="cancellation"
                    ),
                )
            )

            def cancel(key: str, blocks: int, first: int = 1) -> operator_pb2.CancelUnitsRequest:
                return operator_pb2.CancelUnitsRequest(
                    idempotency_key=key,
                    source_account="CN-PO-0001",
                    cancellation_account="CN-CAN-0001",
                    authorization_id="CHN-A-0001",
                    subtype="Mandatory and Voluntary cancellation to deliver OMGE",
                    selections=[
                        operator_pb2.BlockSelection(space=block.space, start=10 * i + first, end=10 * i + first)
                        for i in range(blocks)
                    ],
                )

            before = await chn.ListHoldings(operator_pb2.ListHoldingsRequest())
            answer = await chn.CancelUnits(cancel("fits", 20))
            assert len(answer.retired) == 20
            monkeypatch.setattr(operator_rpc, "MAX_ANSWER_BYTES", answer.ByteSize(), raising=False)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.CancelUnits(cancel("too-large", 21, first=5))
            assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "selections")
            assert "nothing was done: select fewer blocks per cancellation" in (caught.value.details() or "")
            after = await chn.ListHoldings(operator_pb2.ListHoldingsRequest())
            assert (
                sum(h.block.end - h.block.start + 1 for h in after.holdings if h.status == "held")
                == sum(h.block.end - h.block.start + 1 for h in before.holdings if h.status == "held") - 20
            )
            entries = await chn.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())
            assert len([e for e in entries.entries if e.action_type == "Cancellation"]) == 20
            monkeypatch.setattr(operator_rpc, "MAX_ANSWER_BYTES", 4 << 20)
            assert len((await chn.CancelUnits(cancel("too-large", 21, first=5))).retired) == 21
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_proposal_whose_answer_a_client_cannot_read_is_refused_and_nothing_is_reserved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a proposal: a partner whose envelope cap passes 4 MiB takes Proposals whose answer no
    default client reads. Here the limit is lowered to one byte less than a first proposal's answer."""
    pair = await start_pair(tmp_path)
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn:
            answer = await chn.ProposeTransfer(proposal_request(block, 1, 100, "first"))
            monkeypatch.setattr(operator_rpc, "MAX_ANSWER_BYTES", answer.ByteSize() - 1, raising=False)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.ProposeTransfer(proposal_request(block, 101, 200, "second"))
            assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "selections")
            holdings = await chn.ListHoldings(operator_pb2.ListHoldingsRequest())
            assert [(h.block.start, h.block.end) for h in holdings.holdings if h.status == "held"] == [(101, 1000)]
            listed = await chn.ListTransfers(operator_pb2.ListTransfersRequest())
            assert [t.transfer_id for t in listed.transfers] == [answer.transfer_id]
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_use_cancel_summary_and_aef_rows(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    pair.chn.core.gateway.ledger_options = options("CHN01")
    pair.che.core.gateway.ledger_options = options("CHE01")
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            transfer = await chn.ProposeTransfer(proposal_request(block, 1, 400, "t1"))
            assert (await wait_for_state(chn, transfer.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            assert (await wait_for_state(che, transfer.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            for stub, account, kind in ((che, "CH-USE-0001", "use"), (chn, "CN-CAN-0001", "cancellation")):
                await stub.OpenAccount(
                    operator_pb2.OpenAccountRequest(
                        idempotency_key=f"open-{account}",
                        account=records_pb2.Account(account_id=account, holder_name="Registry", account_type=kind),
                    )
                )
            use = operator_pb2.UseUnitsRequest(
                idempotency_key="use-1",
                source_account="CH-PH-0001",
                use_account="CH-USE-0001",
                action="use towards the NDC",
                year_of_use=2025,
                selections=[operator_pb2.BlockSelection(space=block.space, start=1, end=100)],
            )
            used = await che.UseUnits(use)
            again = await che.UseUnits(use)
            assert again.action_id == used.action_id, "a retry with the same key is the same use"
            assert [(h.block.start, h.block.end, h.status) for h in used.retired] == [(1, 100, "used")]
            # A used unit never moves again: not back to CHN, not used twice.
            back = proposal_request(block, 1, 50, "back")
            back.source_account = "CH-PH-0001"
            back.acquiring_account.party, back.acquiring_account.account_id = "CHN", "CN-PO-0001"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.ProposeTransfer(back)
            assert refusal(caught.value)[0] is ResponseCode.UNIT_NOT_HELD
            use.idempotency_key = "use-2"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.UseUnits(use)
            assert refusal(caught.value)[0] is ResponseCode.UNIT_NOT_HELD
            cancelled = await chn.CancelUnits(
                operator_pb2.CancelUnitsRequest(
                    idempotency_key="omge-1",
                    source_account="CN-PO-0001",
                    cancellation_account="CN-CAN-0001",
                    authorization_id="CHN-A-0001",
                    subtype="Mandatory and Voluntary cancellation to deliver OMGE",
                    selections=[operator_pb2.BlockSelection(space=block.space, start=401, end=450)],
                )
            )
            assert [(h.block.start, h.block.end, h.status) for h in cancelled.retired] == [(401, 450, "cancelled")]
            chn_summary = await chn.GetLedgerSummary(operator_pb2.GetLedgerSummaryRequest())
            che_summary = await che.GetLedgerSummary(operator_pb2.GetLedgerSummaryRequest())
            # Locking a past year refuses a use for it; the summary names the lock.
            await che.LockPeriod(
                operator_pb2.LockPeriodRequest(idempotency_key="lock", first_year=2021, last_year=2025, reason="BTR")
            )
            use.idempotency_key = "use-3"
            del use.selections[:]
            use.selections.append(operator_pb2.BlockSelection(space=block.space, start=101, end=110))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.UseUnits(use)
            assert refusal(caught.value) == (ResponseCode.PERIOD_LOCKED, "year_of_use")
        report = await pair.chn.core.gateway.aef_report(2026, version="1.0", submission_date=dt.date(2027, 4, 15))
        che_report = await pair.che.core.gateway.aef_report(2026, version="1.0", submission_date=dt.date(2027, 4, 15))
    finally:
        await pair.stop()

    # CHN first transferred 400 of vintage 2025, authorized for NDC use: added in 2025 (para 8(a), by vintage).
    chn_2025 = next(y for y in chn_summary.years if y.year == 2025)
    assert (chn_2025.first_transferred_ndc, chn_2025.used_ndc) == ("400", "0")
    assert chn_summary.averaging_divisor and "elapsed" in chn_summary.averaging_divisor
    # CHE used 100 for 2025: subtracted in 2025 by year of use; its acquisition moves nothing.
    che_2025 = next(y for y in che_summary.years if y.year == 2025)
    assert (che_2025.first_transferred_ndc, che_2025.used_ndc) == ("0", "100")
    assert all(y.first_transferred_ndc == "0" for y in che_summary.years)
    cancelled_group = [g for g in chn_summary.groups if g.cancelled != "0"]
    assert [(g.cooperative_approach, g.vintage, g.cancelled, g.first_transferred) for g in cancelled_group] == [
        ("CA0001", 2025, "50", "0")
    ]

    # The AEF rows, written from the rules: CHN's first transfer to CHE and its OMGE cancellation of units
    # named under the authorization (not a first transfer: the definition is the first international transfer).
    rows = [
        (
            a.action_type.value,
            a.action_subtype.value,
            a.quantity,
            a.itmo_first_serial,
            a.itmo_last_serial,
            a.first_transferring_party,
            a.acquiring_party,
            a.transferring_party,
            a.ndc_year_of_use,
            a.party_registry,
        )
        for a in report.actions
    ]
    assert rows == [
        ("First transfer", "First transfer to another Party", 400, 1, 400, "CHN", "CHE", "", None, "CHN01"),
        (
            "Cancellation",
            "Mandatory and Voluntary cancellation to deliver OMGE",
            50,
            401,
            450,
            "CHN",
            "",
            "",
            None,
            "CHN01",
        ),
    ]
    che_rows = [
        (
            a.action_type.value,
            a.quantity,
            a.itmo_first_serial,
            a.itmo_last_serial,
            a.first_transferring_party,
            a.acquiring_party,
            a.transferring_party,
            a.ndc_year_of_use,
            a.using_party,
        )
        for a in che_report.actions
    ]
    assert che_rows == [
        ("Acquisition", 400, 1, 400, "CHN", "", "CHN", None, ""),
        ("Use", 100, 1, 100, "CHN", "", "", 2025, "CHE"),
    ]
    # CHE holds what it acquired less what it used; CHN holds no ITMO (its units were never tied and kept).
    assert [(h.itmo_first_serial, h.itmo_last_serial, h.first_transferring_party) for h in che_report.holdings] == [
        (101, 400, "CHN")
    ]
    assert report.holdings == ()


async def _vcs_network(tmp_path: Path, **options: Any) -> Network:
    """CHN and CHE knowing VCS units too, CHN with a Party holding account CN-PH-0001."""
    from gateway.domain.nomenclature import DEFAULT_REGISTRIES, IssuingRegistry, Nomenclature
    from gateway.harness import start_network

    nomenclature = Nomenclature.of((*DEFAULT_REGISTRIES, IssuingRegistry(code="VCS", unit_kinds=("VCU",))))
    network = await start_network(tmp_path, ("CHN", "CHE"), nomenclature=nomenclature, **options)
    async with operator(network["CHN"]) as stub:
        await stub.OpenAccount(
            operator_pb2.OpenAccountRequest(
                idempotency_key="open",
                account=records_pb2.Account(account_id="CN-PH-0001", holder_name="H", account_type="Party holding"),
            )
        )
    return network


async def _vcs_proposal_from_che(network: Network, transfer_id: str, under: str = "CHE-A-0001", **tie: object) -> None:
    """CHE proposes VCU serials 1-10 (of the tie given) to CHN's CN-PH-0001 under authorization ``under``, signed
    as CHE does, straight to CHN's partner door; CHN takes the statement in."""
    from tests.integration.harness import Crafter, deliver_raw

    block = records_pb2.UnitBlock(
        space=records_pb2.SerialSpace(unit_kind="VCU", issuing_registry="VCS"),
        start=1,
        end=10,
        vintage=2025,
        mitigation_type="Removals",
        **tie,  # type: ignore[arg-type]
    )
    proposal = partner_pb2.Proposal(
        transfer_id=transfer_id,
        blocks=[block],
        source_account=records_pb2.AccountRef(party="CHE", account_id="CH-PH-0001"),
        acquiring_account=records_pb2.AccountRef(party="CHN", account_id="CN-PH-0001"),
        cooperative_approach="CA0001",
        authorization_id=under,
        purpose="NDC",
        adjustment_method="single-year averaging",
    )
    crafter = Crafter(signer=network.signers["CHE"], sender="CHE", receiver="CHN")
    payload, _ = crafter.statement(proposal=proposal)
    receipt = await deliver_raw(network["CHN"], wire.envelope_to_bytes(crafter.envelope(payload)))
    assert receipt.taken_in


@pytest.mark.parametrize(
    ("tied_to", "expected"),
    [("CHN", records_pb2.REJECTED), ("", records_pb2.ACCEPTED), ("SGP", records_pb2.ACCEPTED)],
    ids=["tied-to-the-receiver", "untied", "tied-to-a-third-party"],
)
@pytest.mark.asyncio
async def test_a_partner_cannot_make_this_gateway_the_first_transferring_party_of_units_it_never_held(
    tmp_path: Path, tied_to: str, expected: int
) -> None:
    network = await _vcs_network(tmp_path)
    try:
        tie = {
            "first_transferring_party": tied_to,
            "cooperative_approach": "CA0001",
            "authorization_id": f"{tied_to}-A-0001",
        }
        await _vcs_proposal_from_che(network, "forged-tie", **(tie if tied_to else {}))
        async with operator(network["CHN"]) as stub:
            transfer = await stub.GetTransfer(operator_pb2.GetTransferRequest(transfer_id="forged-tie"))
    finally:
        await network.stop()
    assert transfer.state == expected
    if expected == records_pb2.REJECTED:
        assert [ResponseCode(r.code) for r in transfer.rejections] == [ResponseCode.PROVENANCE_REFUSED]


COPY_NAMES: dict[str, tuple[str | None, bool, bool, int, str]] = {
    "the-units-first-transferring-party": ("SGP", False, False, records_pb2.ACCEPTED, ""),
    "another-party": ("KOR", False, False, records_pb2.REJECTED, "registered here as KOR's"),
    "this-gateway-by-name": ("CHN", False, False, records_pb2.REJECTED, "registered here as CHN's"),
    "no-party-and-nothing-tied-here": ("", False, False, records_pb2.ACCEPTED, ""),
    "no-party-and-units-of-this-party-tied": ("", True, False, records_pb2.REJECTED, "registered here as CHN's"),
    "no-copy-here": (None, False, False, records_pb2.ACCEPTED, ""),
    "another-party-registered-while-held": ("KOR", False, True, records_pb2.CHECKED, "registered here as KOR's"),
}
"""What the authorization SGP-A-0001 registered at CHN names as its Party (None: CHN holds none), whether CHN
tied units of its own to it, whether CHN held the proposal for its operator and registered the authorization
meanwhile; what CHN makes of CHE's units tied to it as first transferred by SGP, and what its refusal says. One
naming no Party may be a copy registered without its Party (by an earlier release) until units are tied to it."""


@pytest.mark.parametrize("case", list(COPY_NAMES))
@pytest.mark.asyncio
async def test_units_tied_to_another_party_s_authorization_are_refused(tmp_path: Path, case: str) -> None:
    copy_party, tie_here, held, expected, said = COPY_NAMES[case]
    # With no rule, a policy holds every proposal for an operator.
    network = await _vcs_network(tmp_path, **({"policy": DecisionPolicy()} if held else {}))

    async def register(stub: operator_pb2_grpc.OperatorServiceAsyncStub) -> None:
        copy = records_pb2.Authorization()
        copy.CopyFrom(DEMO_AUTHORIZATION)
        copy.authorization_id, copy.party = "SGP-A-0001", copy_party or ""
        await stub.RegisterAuthorization(
            operator_pb2.RegisterAuthorizationRequest(idempotency_key="copy", authorization=copy)
        )

    try:
        async with operator(network["CHN"]) as stub:
            if copy_party is not None and not held:
                await register(stub)
            if tie_here:
                await stub.RegisterIssuance(
                    operator_pb2.RegisterIssuanceRequest(
                        idempotency_key="tie",
                        account_id="CN-PH-0001",
                        block=demo_block(1, 10),
                        authorization_id="SGP-A-0001",
                    )
                )
        sgp = {"first_transferring_party": "SGP", "cooperative_approach": "CA0001", "authorization_id": "SGP-A-0001"}
        await _vcs_proposal_from_che(network, "tied-to-a-copy", "SGP-A-0001", first_transferred=True, **sgp)
        async with operator(network["CHN"]) as stub:
            if held:
                await register(stub)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.DecideTransfer(
                        operator_pb2.DecideTransferRequest(
                            idempotency_key="d", transfer_id="tied-to-a-copy", accept=True
                        )
                    )
                assert refusal(caught.value) == (ResponseCode.PROVENANCE_REFUSED, "accept")
                assert said in str(caught.value.details())
            transfer = await stub.GetTransfer(operator_pb2.GetTransferRequest(transfer_id="tied-to-a-copy"))
    finally:
        await network.stop()
    assert transfer.state == expected, transfer.rejections
    if expected == records_pb2.REJECTED:
        assert [ResponseCode(r.code) for r in transfer.rejections] == [ResponseCode.PROVENANCE_REFUSED]
        assert said in transfer.rejections[0].message


@pytest.mark.parametrize(
    ("known", "approach", "expected"),
    [
        ("registered", "CA0009", records_pb2.REJECTED),
        ("booked", "CA0009", records_pb2.REJECTED),
        ("booked", "CA0001", records_pb2.ACCEPTED),
    ],
)
@pytest.mark.asyncio
async def test_units_tied_to_a_known_authorization_under_another_cooperative_approach_are_refused(
    tmp_path: Path, known: str, approach: str, expected: int
) -> None:
    """SGP-A-0001 is CHN's copy of SGP's authorization under CA0001 (``registered``), or only the approach
    CHN's ledger booked units of it under (``booked``). Units tied to it under another approach would put one
    authorization under two approaches in CHN's books, and the approach is part of every ITMO's identity."""
    network = await _vcs_network(tmp_path)
    try:
        if known == "registered":
            copy = records_pb2.Authorization()
            copy.CopyFrom(DEMO_AUTHORIZATION)
            copy.authorization_id, copy.party = "SGP-A-0001", "SGP"
            async with operator(network["CHN"]) as stub:
                await stub.RegisterAuthorization(
                    operator_pb2.RegisterAuthorizationRequest(idempotency_key="copy", authorization=copy)
                )
        else:
            earlier = UnitBlock(
                SerialSpace("VCU", "VCS"),
                101,
                110,
                2025,
                mitigation_type="Removals",
                first_transferred=True,
                first_transferring_party="SGP",
                cooperative_approach="CA0001",
                authorization_id="SGP-A-0001",
            )
            async with network["CHN"].store.transaction() as tx:
                await tx.append_ledger(
                    [
                        LedgerEntry(
                            0,
                            dt.datetime.now(dt.UTC),
                            ActionType.ACQUISITION,
                            "earlier",
                            earlier,
                            "CA0001",
                            "SGP-A-0001",
                            "SGP",
                            "CHE",
                            "CHN",
                            Purpose.NDC,
                        )
                    ]
                )
        sgp = {"first_transferring_party": "SGP", "cooperative_approach": approach, "authorization_id": "SGP-A-0001"}
        await _vcs_proposal_from_che(network, "another-approach", "SGP-A-0001", first_transferred=True, **sgp)
        async with operator(network["CHN"]) as stub:
            transfer = await stub.GetTransfer(operator_pb2.GetTransferRequest(transfer_id="another-approach"))
    finally:
        await network.stop()
    assert transfer.state == expected, transfer.rejections
    if expected == records_pb2.REJECTED:
        assert [ResponseCode(r.code) for r in transfer.rejections] == [ResponseCode.PROVENANCE_REFUSED]
        assert f"of cooperative approach CA0009, but that authorization is {known} here under CA0001" in (
            transfer.rejections[0].message
        )


_UNTIED = {
    "first_transferring_party": "",
    "cooperative_approach": "",
    "authorization_id": "",
    "first_transferred": False,
}

RETURNED: dict[str, tuple[dict[str, object], int]] = {
    "not-first-transferred-again": ({"first_transferred": False}, records_pb2.REJECTED),
    "re-tied-to-another-authorization": ({"authorization_id": "CHN-A-0002"}, records_pb2.REJECTED),
    "re-tied-to-another-cooperative-approach": ({"cooperative_approach": "CA0002"}, records_pb2.REJECTED),
    "tie-hidden-behind-the-partner": (
        {"first_transferring_party": "CHE", "authorization_id": "CHE-A-0001"},
        records_pb2.REJECTED,
    ),
    "of-another-vintage": ({"vintage": 2021}, records_pb2.REJECTED),
    "of-another-mitigation-type": ({"mitigation_type": "Emission reductions"}, records_pb2.REJECTED),
    "of-another-project": ({"project_id": "DEMO-P-0002"}, records_pb2.REJECTED),
    "untied-and-of-another-vintage": ({**_UNTIED, "vintage": 2021}, records_pb2.REJECTED),
    "untied-by-an-older-version": (_UNTIED, records_pb2.ACCEPTED),
    "as-this-gateway-recorded-them": ({}, records_pb2.ACCEPTED),
}
"""How CHE sends back units CHN first transferred to it (CHN, CA0001, CHN-A-0001, first transferred, as issued),
and what CHN makes of it."""


@pytest.mark.parametrize("case", list(RETURNED))
@pytest.mark.asyncio
async def test_units_that_come_back_keep_the_tie_and_first_transfer_this_gateway_recorded(
    tmp_path: Path, case: str
) -> None:
    """A partner returning this Party's first-transferred units cannot make it first transfer them again (a
    second adjustment, or one past the authorization's quantity), put them under a second ITMO ID (another
    cooperative approach or vintage), hide the tie or change what they were issued as; an older partner's untied
    block takes the tie from this gateway's own records."""
    from gateway.harness import start_network
    from tests.integration.harness import Crafter, deliver_raw, settle

    changes, expected = RETURNED[case]
    network = await start_network(tmp_path, ("CHN", "CHE"))
    chn, che = network["CHN"], network["CHE"]
    try:
        from gateway.demo import Pair

        block = await setup_accounts(Pair(chn, che))
        async with operator(chn) as stub:
            sent = await stub.ProposeTransfer(proposal_request(block, 1, 400, "t1"))
            assert (await wait_for_state(stub, sent.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        await settle(chn, che)
        async with che.store.read() as tx:
            channel = await tx.outgoing_channel("CHN")
        returned = records_pb2.UnitBlock()
        returned.CopyFrom(block)
        returned.start, returned.end, returned.first_transferred = 1, 400, True
        returned.first_transferring_party, returned.cooperative_approach = "CHN", "CA0001"
        returned.authorization_id = "CHN-A-0001"
        for name, value in changes.items():
            setattr(returned, name, value)
        proposal = partner_pb2.Proposal(
            transfer_id=f"back-{case}",
            blocks=[returned],
            source_account=records_pb2.AccountRef(party="CHE", account_id="CH-PH-0001"),
            acquiring_account=records_pb2.AccountRef(party="CHN", account_id="CN-PO-0001"),
            cooperative_approach="CA0001",
            authorization_id="CHN-A-0001",
            purpose="NDC",
            adjustment_method="single-year averaging",
        )
        crafter = Crafter(signer=network.signers["CHE"], sender="CHE", receiver="CHN", channel=channel)
        payload, _ = crafter.statement(proposal=proposal)
        assert (await deliver_raw(chn, wire.envelope_to_bytes(crafter.envelope(payload)))).taken_in
        async with operator(chn) as stub:
            transfer = await stub.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=f"back-{case}"))
            assert transfer.state == expected, [r.message for r in transfer.rejections]
            if expected == records_pb2.REJECTED:
                assert [ResponseCode(r.code) for r in transfer.rejections] == [ResponseCode.PROVENANCE_REFUSED]
                return
            async with chn.store.transaction() as tx:
                pending = await tx.blocks_of_transfer(f"back-{case}", BlockStatus.PENDING)
            assert [(p.block.first_transferring_party, p.block.authorization_id, p.block.first_transferred)
                    for p in pending] == [("CHN", "CHN-A-0001", True)]  # fmt: skip
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_inputs_that_would_put_the_summary_out_of_reach_are_refused_or_reported_clearly(tmp_path: Path) -> None:
    """A year the arithmetic does not cover is refused at the door; totals beyond 64 bits (which a hostile
    partner could bring) are summed and given exactly, never an internal error or a refusal."""
    import dataclasses

    from gateway.domain.blocks import SerialSpace, UnitBlock
    from gateway.domain.records import ActionType, LedgerEntry, Purpose

    pair = await start_pair(tmp_path)
    try:
        async with operator(pair.che) as che:
            for year, field in ((1500, "year"), (2101, "year")):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await che.SetReportedEmissions(
                        operator_pb2.SetReportedEmissionsRequest(idempotency_key=f"e{year}", year=year, quantity=1)
                    )
                assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, field)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.LockPeriod(
                    operator_pb2.LockPeriodRequest(idempotency_key="l", first_year=1000, last_year=2020, reason="r")
                )
            assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "first_year")
            assert (await che.GetLedgerSummary(operator_pb2.GetLedgerSummaryRequest())).groups == []
            huge = 2**63 - 2
            entry = LedgerEntry(
                entry_id=0,
                action_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                action_type=ActionType.ACQUISITION,
                transfer_id="t",
                block=UnitBlock(SerialSpace("CCER", "CN-CCER"), 0, huge - 1, vintage=1500),
                cooperative_approach="CA0001",
                authorization_id="CHN-A-0001",
                first_transferring_party="CHN",
                transferring_party="CHN",
                acquiring_party="CHE",
                purpose=Purpose.NDC,
            )
            other = dataclasses.replace(
                entry, block=dataclasses.replace(entry.block, space=SerialSpace("CEA", "CN-CEA"))
            )
            async with pair.che.store.transaction() as tx:
                await tx.append_ledger([entry, other])
            summary = await che.GetLedgerSummary(operator_pb2.GetLedgerSummaryRequest())
            # Two acquisitions of 2^63 - 2 units each: the total passes 64 bits, and is given exactly.
            assert [(g.vintage, g.acquired) for g in summary.groups] == [(1500, str(2 * huge))]
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_first_transfers_of_vintages_outside_the_ndc_period_are_named_not_dropped(tmp_path: Path) -> None:
    """Units of vintages 2018 and 2032 (the authorization's timeframe holds them, the NDC period 2021-2030 does
    not) count in the groups and in no year row: the summary names those years, and the CLI's text says so."""
    from gateway.ledger_cli import format_summary

    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        wide = records_pb2.Authorization()
        wide.CopyFrom(DEMO_AUTHORIZATION)
        wide.authorization_id, wide.timeframe_start, wide.timeframe_end = "CHN-A-0003", 2015, 2035
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            await chn.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="a3", authorization=wide)
            )
            for vintage, start in ((2018, 5001), (2032, 6001)):
                block = demo_block(start, start + 99)
                block.vintage = vintage
                await chn.RegisterIssuance(
                    operator_pb2.RegisterIssuanceRequest(
                        idempotency_key=f"i{vintage}", account_id="CN-PO-0001", block=block
                    )
                )
                request = proposal_request(block, start, start + 99, f"t{vintage}")
                request.authorization_id = "CHN-A-0003"
                proposed = await chn.ProposeTransfer(request)
                await wait_for_state(che, proposed.transfer_id, {records_pb2.COMPLETED})
            summary = await chn.GetLedgerSummary(operator_pb2.GetLedgerSummaryRequest())
        assert sorted((g.vintage, g.first_transferred) for g in summary.groups) == [(2018, "100"), (2032, "100")]
        assert sum(int(y.first_transferred_ndc) for y in summary.years) == 0
        assert list(summary.outside_period_years) == [2018, 2032]
        text = format_summary(summary)
        assert "outside the NDC period: 2018, 2032: their first transfers, acquisitions and reported" in text
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_units_whose_authorization_is_unknown_here_go_only_for_what_they_were_acquired_for(
    tmp_path: Path,
) -> None:
    """CHE holds no copy of CHN's OIMP-only authorization: units acquired for OIMP are not used towards CHE's
    NDC (only the authorization could allow it), and are used for OIMP; a copy registered at CHE decides."""
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        oimp = records_pb2.Authorization()
        oimp.CopyFrom(DEMO_AUTHORIZATION)
        oimp.authorization_id, oimp.first_transfer_definition = "CHN-A-0004", "Issuance"
        oimp.ClearField("purposes")
        oimp.purposes.append("OIMP")
        oimp.oimp_authorized = "CHN"
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            await open_account(che, "CH-USE-0001", "use", key="use")
            await chn.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="a4", authorization=oimp)
            )
            block = demo_block(7001, 7100)
            await chn.RegisterIssuance(
                operator_pb2.RegisterIssuanceRequest(
                    idempotency_key="i4", account_id="CN-PO-0001", block=block, authorization_id="CHN-A-0004"
                )
            )
            request = proposal_request(block, 7001, 7100, "t-oimp")
            request.authorization_id, request.purpose = "CHN-A-0004", "OIMP"
            proposed = await chn.ProposeTransfer(request)
            await wait_for_state(che, proposed.transfer_id, {records_pb2.COMPLETED})

            def use(key: str, start: int, end: int, **how: object) -> operator_pb2.UseUnitsRequest:
                return operator_pb2.UseUnitsRequest(
                    idempotency_key=key,
                    source_account="CH-PH-0001",
                    use_account="CH-USE-0001",
                    selections=[operator_pb2.BlockSelection(space=block.space, start=start, end=end)],
                    **how,  # type: ignore[arg-type]
                )

            towards_ndc = {"action": "use towards the NDC", "year_of_use": 2025}
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.UseUnits(use("u1", 7001, 7050, **towards_ndc))
            assert refusal(caught.value) == (ResponseCode.AUTHORIZATION_MISSING, "action")
            assert "was acquired for 'OIMP'" in str(caught.value.details())
            used = await che.UseUnits(
                use("u2", 7001, 7050, action="use for other international mitigation purposes", purpose="OIMP")
            )
            assert [(e.action_type, e.purpose, e.quantity) for e in used.entries] == [("Use", "OIMP", 50)]
            oimp_use = {"action": "use for other international mitigation purposes"}
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.UseUnits(use("u4", 7051, 7060, **oimp_use, purpose="IMP"))  # IMP is not part of OIMP
            assert refusal(caught.value) == (ResponseCode.AUTHORIZATION_MISSING, "purpose")
            await open_account(che, "CH-CAN-0001", "cancellation", key="can")

            def cancel(key: str, purpose: str) -> operator_pb2.CancelUnitsRequest:
                return operator_pb2.CancelUnitsRequest(
                    idempotency_key=key,
                    source_account="CH-PH-0001",
                    cancellation_account="CH-CAN-0001",
                    voluntary=True,
                    purpose=purpose,
                    selections=[operator_pb2.BlockSelection(space=block.space, start=7061, end=7070)],
                )

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.CancelUnits(cancel("c1", "NDC"))
            assert refusal(caught.value) == (ResponseCode.AUTHORIZATION_MISSING, "purpose")
            cancelled = await che.CancelUnits(cancel("c2", "OIMP"))
            assert [(e.purpose, e.quantity) for e in cancelled.entries] == [("OIMP", 10)]
            # Units acquired for OIMP before blocks carried their tie (an earlier release's, untied and first
            # transferred): their Acquisition entry is all that says what they may go for.
            legacy = UnitBlock(
                SerialSpace("CCER", "CN-CCER"), 9001, 9100, 2025, mitigation_type="Removals", first_transferred=True
            )
            arrived = ActionContext(
                "t-legacy", dt.datetime(2026, 3, 1, tzinfo=dt.UTC), "CHE", Purpose.OIMP, "CHN", "CHE"
            )
            async with pair.che.store.transaction() as tx:
                await tx.insert_block(legacy, account_id="CH-PH-0001", status=BlockStatus.HELD, transfer_id="t-legacy")
                await tx.append_ledger([record_arrival(arrived, legacy)])
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.UseUnits(use("u5", 9001, 9100, **towards_ndc))
            assert refusal(caught.value) == (ResponseCode.AUTHORIZATION_MISSING, "action")
            assert "acquired before blocks carried their authorization" in str(caught.value.details())
            # Both kinds in one use, each block checked against its own acquisition.
            both = use("u6", 7051, 7055, **oimp_use, purpose="OIMP")
            both.selections.append(operator_pb2.BlockSelection(space=block.space, start=9001, end=9010))
            used = await che.UseUnits(both)
            assert sorted((e.block.start, e.purpose, e.quantity) for e in used.entries) == [
                (7051, "OIMP", 5),
                (9001, "OIMP", 10),
            ]
            # With a copy of the authorization here, the authorization decides: it does not authorize the NDC.
            await che.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="a4", authorization=oimp)
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.UseUnits(use("u3", 7071, 7100, **towards_ndc))
            assert refusal(caught.value) == (ResponseCode.PURPOSE_NOT_ALLOWED, "action")
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_copy_of_another_party_s_authorization_stays_out_of_this_party_s_aef_report(tmp_path: Path) -> None:
    """CHE registers a copy of CHN's authorization naming CHN, a copy without naming it and one of its own: its
    AEF report lists those that are its own. A version naming no Party is this Party's until an amendment names
    another, which it may while no unit here is tied to it; a named Party never changes."""

    def version(authorization_id: str, label: str, party: str) -> records_pb2.Authorization:
        found = records_pb2.Authorization()
        found.CopyFrom(DEMO_AUTHORIZATION)
        found.authorization_id, found.version, found.party = authorization_id, label, party
        return found

    async def amend(
        stub: operator_pb2_grpc.OperatorServiceAsyncStub, key: str, authorization: records_pb2.Authorization
    ) -> records_pb2.Authorization:
        return await stub.AmendAuthorization(
            operator_pb2.AmendAuthorizationRequest(idempotency_key=key, authorization=authorization)
        )

    pair = await start_pair(tmp_path)
    pair.che.core.gateway.ledger_options = options("CHE01")
    try:
        async with operator(pair.che) as che:
            registered = [
                await che.RegisterAuthorization(
                    operator_pb2.RegisterAuthorizationRequest(idempotency_key=key, authorization=authorization)
                )
                for key, authorization in (
                    ("copy", version("CHN-A-0001", "1.0", "CHN")),
                    ("unnamed", version("CHN-A-0002", "1.0", "")),
                    ("own", version("CHE-A-0001", "1.0", "CHE")),
                )
            ]
            assert [a.party for a in registered] == ["CHN", "", "CHE"]
            for key, moved in (
                ("move-own", version("CHE-A-0001", "2.0", "CHN")),
                ("move-copy", version("CHN-A-0001", "2.0", "CHE")),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await amend(che, key, moved)
                assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "authorization.party")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.RegisterAuthorization(
                    operator_pb2.RegisterAuthorizationRequest(
                        idempotency_key="bad", authorization=version("XYZ-A-0001", "1.0", "XYZ")
                    )
                )
            assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "authorization.party")
            report = await pair.che.core.gateway.aef_report(2026, version="1.0", submission_date=dt.date(2027, 4, 15))
            assert sorted({a.authorization_id for a in report.authorizations}) == ["CHE-A-0001", "CHN-A-0002"]
            # Nothing here is tied to the unnamed copy: an amendment says whose it is, and later ones keep it.
            assert (await amend(che, "mark", version("CHN-A-0002", "1.1", "CHN"))).party == "CHN"
            assert (await amend(che, "again", version("CHN-A-0002", "1.2", ""))).party == "CHN"
            listed = await che.ListAuthorizations(operator_pb2.ListAuthorizationsRequest())
        assert [(a.authorization_id, a.version, a.party) for a in listed.versions] == [
            ("CHN-A-0001", "1.0", "CHN"),
            ("CHN-A-0002", "1.0", ""),
            ("CHE-A-0001", "1.0", "CHE"),
            ("CHN-A-0002", "1.1", "CHN"),
            ("CHN-A-0002", "1.2", "CHN"),
        ]
        report = await pair.che.core.gateway.aef_report(2026, version="1.0", submission_date=dt.date(2027, 4, 15))
        assert [a.authorization_id for a in report.authorizations] == ["CHE-A-0001"]
        # CHN's own authorization, registered naming no Party, has units tied to it: it stays CHN's.
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn:
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "t1"))
            assert (await wait_for_state(chn, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await amend(chn, "move", version("CHN-A-0001", "2.0", "SGP"))
            assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "authorization.party")
            assert "are tied to authorization 'CHN-A-0001'" in str(caught.value.details())
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_units_held_here_are_never_tied_to_a_copy_of_another_party_s_authorization(tmp_path: Path) -> None:
    """CHN holds a copy of SGP's authorization: none of CHN's untied units is tied to it, whether registered
    under it, proposed under it or used under it."""
    pair = await start_pair(tmp_path)
    try:
        block = await setup_accounts(pair)  # CCER 1-1000 at CHN, untied
        copy = records_pb2.Authorization()
        copy.CopyFrom(DEMO_AUTHORIZATION)
        copy.authorization_id, copy.party = "SGP-A-0001", "SGP"
        async with operator(pair.chn) as chn:
            await open_account(chn, "CN-USE-0001", "use", key="use")
            await chn.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="copy", authorization=copy)
            )
            register = operator_pb2.RegisterIssuanceRequest(
                idempotency_key="i2",
                account_id="CN-PO-0001",
                block=demo_block(2001, 2100),
                authorization_id="SGP-A-0001",
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.RegisterIssuance(register)
            assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "authorization_id")
            assert "is SGP's (a copy held here)" in str(caught.value.details())
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.ProposeTransfer(_under(proposal_request(block, 1, 10, "t-copy"), "SGP-A-0001"))
            assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "authorization_id")
            await open_account(chn, "CN-CAN-0001", "cancellation", key="can")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.CancelUnits(
                    operator_pb2.CancelUnitsRequest(
                        idempotency_key="c-copy",
                        source_account="CN-PO-0001",
                        cancellation_account="CN-CAN-0001",
                        authorization_id="SGP-A-0001",
                        subtype="Mandatory and Voluntary cancellation to deliver OMGE",
                        selections=[operator_pb2.BlockSelection(space=block.space, start=11, end=20)],
                    )
                )
            assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "authorization_id")
            # Under CHN's own authorization the same units go.
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "t-own"))
            assert (await wait_for_state(chn, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        # CHE holds CHN's ITMOs as an earlier release kept them (first transferred, no tie) and a copy of CHN's
        # authorization naming CHN: a transfer ties nothing of them, so they go home under the copy.
        copy.CopyFrom(DEMO_AUTHORIZATION)
        copy.party = "CHN"
        async with operator(pair.che) as che:
            await che.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="copy", authorization=copy)
            )
        async with pair.che.store.transaction() as tx:
            (held,) = await tx.list_blocks("CH-PH-0001")
            untied = held.block.with_tie("", "", "", first_transferred=True)
            await tx.set_block_status(held.block_id, BlockStatus.SUPERSEDED)
            await tx.insert_block(untied, account_id="CH-PH-0001", status=BlockStatus.HELD, parent_id=held.block_id)
        home = proposal_request(block, 1, 5, "home")
        home.source_account = "CH-PH-0001"
        home.acquiring_account.party, home.acquiring_account.account_id = "CHN", "CN-PO-0001"
        async with operator(pair.che) as che:
            proposed = await che.ProposeTransfer(home)
            assert (await wait_for_state(che, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
    finally:
        await pair.stop()


def _under(request: operator_pb2.ProposeTransferRequest, authorization_id: str) -> operator_pb2.ProposeTransferRequest:
    request.authorization_id = authorization_id
    return request


@pytest.mark.asyncio
async def test_a_locked_year_takes_no_first_transfer_of_its_vintage_and_ndc_only_is_first_international(
    tmp_path: Path,
) -> None:
    pair = await start_pair(tmp_path)
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn:
            await chn.LockPeriod(
                operator_pb2.LockPeriodRequest(idempotency_key="l", first_year=2021, last_year=2025, reason="BTR")
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.ProposeTransfer(proposal_request(block, 1, 10, "t-locked"))
            # The demo block's vintage is 2025: its first transfer would add to a locked year.
            assert refusal(caught.value) == (ResponseCode.PERIOD_LOCKED, "selections")
            ndc_at_issuance = records_pb2.Authorization()
            ndc_at_issuance.CopyFrom(DEMO_AUTHORIZATION)
            ndc_at_issuance.authorization_id, ndc_at_issuance.first_transfer_definition = "CHN-A-0009", "Issuance"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.RegisterAuthorization(
                    operator_pb2.RegisterAuthorizationRequest(idempotency_key="a9", authorization=ndc_at_issuance)
                )
            assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "authorization.first_transfer_definition")
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_first_transfer_waiting_when_its_vintage_is_locked_is_cancelled_not_completed(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path, policy=DecisionPolicy())  # every proposal is held for CHE's operator
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "t-waits"))
            await wait_for_state(che, proposed.transfer_id, {records_pb2.CHECKED})
            # The demo block's vintage is 2025, and this transfer is its first transfer.
            await chn.LockPeriod(
                operator_pb2.LockPeriodRequest(idempotency_key="l", first_year=2025, last_year=2025, reason="BTR")
            )
            before = await chn.GetLedgerSummary(operator_pb2.GetLedgerSummaryRequest())
            await che.DecideTransfer(
                operator_pb2.DecideTransferRequest(idempotency_key="d", transfer_id=proposed.transfer_id, accept=True)
            )
            await cancelled_with_units_home(pair, proposed.transfer_id)
            assert await chn.GetLedgerSummary(operator_pb2.GetLedgerSummaryRequest()) == before
            entries = (await chn.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())).entries
            assert [e for e in entries if e.transfer_id == proposed.transfer_id] == []
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_an_onward_transfer_waiting_when_its_vintage_is_locked_still_completes(tmp_path: Path) -> None:
    """The lock stops first transfers only: units first transferred before it move on as ``Transfer``."""
    pair = await start_pair(tmp_path, policy=DecisionPolicy())  # every proposal is held for an operator
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            await che.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="auth", authorization=DEMO_AUTHORIZATION)
            )
            first = await chn.ProposeTransfer(proposal_request(block, 11, 20, "t-first"))
            await wait_for_state(che, first.transfer_id, {records_pb2.CHECKED})
            await che.DecideTransfer(
                operator_pb2.DecideTransferRequest(idempotency_key="d1", transfer_id=first.transfer_id, accept=True)
            )
            assert (await wait_for_state(che, first.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            back = proposal_request(block, 11, 20, "t-back")
            back.source_account = "CH-PH-0001"
            back.acquiring_account.party, back.acquiring_account.account_id = "CHN", "CN-PO-0001"
            onward = await che.ProposeTransfer(back)
            await wait_for_state(chn, onward.transfer_id, {records_pb2.CHECKED})
            await che.LockPeriod(
                operator_pb2.LockPeriodRequest(idempotency_key="l", first_year=2025, last_year=2025, reason="BTR")
            )
            await chn.DecideTransfer(
                operator_pb2.DecideTransferRequest(idempotency_key="d2", transfer_id=onward.transfer_id, accept=True)
            )
            assert (await wait_for_state(che, onward.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            entries = (await che.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())).entries
            assert [e.action_type for e in entries if e.transfer_id == onward.transfer_id] == ["Transfer"]
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_the_summary_lists_the_oldest_unresolved_transfers_and_counts_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.domain.blocks import SerialSpace, UnitBlock
    from gateway.domain.canonical import ActionSubtype
    from gateway.domain.records import ActionType, LedgerEntry, Purpose
    from gateway.rpc import operator as operator_rpc

    monkeypatch.setattr(operator_rpc, "MAX_UNRESOLVED_SHOWN", 2)
    pair = await start_pair(tmp_path)
    try:
        # Units sent abroad before their first transfer: unresolved at CHN, the Party that will first transfer them.
        sent = [
            LedgerEntry(
                entry_id=0,
                action_date=dt.datetime(2026, 1, 1 + i, tzinfo=dt.UTC),
                action_type=ActionType.TRANSFER,
                transfer_id=f"t{i}",
                block=UnitBlock(SerialSpace("CCER", "CN-CCER"), 100 * i, 100 * i + 9, vintage=2025),
                cooperative_approach="CA0001",
                authorization_id="CHN-A-0001",
                first_transferring_party="CHN",
                transferring_party="CHN",
                acquiring_party="CHE",
                purpose=Purpose.NDC,
                action_subtype=ActionSubtype.NOT_YET_DEFINED.value,
            )
            for i in range(3)
        ]
        async with pair.chn.store.transaction() as tx:
            await tx.append_ledger(sent)
        async with operator(pair.chn) as chn:
            summary = await chn.GetLedgerSummary(operator_pb2.GetLedgerSummaryRequest())
        assert [e.transfer_id for e in summary.unresolved] == ["t0", "t1"]
        assert summary.unresolved_total == 3
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_authorization_versions_come_a_page_at_a_time_in_the_order_they_were_recorded(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        async with operator(pair.che) as che:
            for i in range(5):
                authorization = records_pb2.Authorization()
                authorization.CopyFrom(DEMO_AUTHORIZATION)
                authorization.authorization_id = f"CHE-A-{i:04d}"
                await che.RegisterAuthorization(
                    operator_pb2.RegisterAuthorizationRequest(idempotency_key=f"a{i}", authorization=authorization)
                )
            listed, token, pages = [], "", 0
            while True:
                page = await che.ListAuthorizations(
                    operator_pb2.ListAuthorizationsRequest(page_size=2, page_token=token)
                )
                listed += [v.authorization_id for v in page.versions]
                pages += 1
                token = page.next_page_token
                if not token:
                    break
            assert listed == [f"CHE-A-{i:04d}" for i in range(5)] and pages == 3
            whole = await che.ListAuthorizations(operator_pb2.ListAuthorizationsRequest())
            assert [v.authorization_id for v in whole.versions] == listed and not whole.next_page_token
            one = await che.ListAuthorizations(operator_pb2.ListAuthorizationsRequest(authorization_id="CHE-A-0003"))
            assert [v.authorization_id for v in one.versions] == ["CHE-A-0003"]
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_selection_across_two_held_blocks_is_refused_naming_the_parts_to_select(tmp_path: Path) -> None:
    from gateway.demo import demo_block

    pair = await start_pair(tmp_path)
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn:
            other = demo_block(1001, 1100)
            other.project_id = "DEMO-P-0002"  # adjacent, but another project's units: its own block
            await chn.RegisterIssuance(
                operator_pb2.RegisterIssuanceRequest(idempotency_key="issue-2", account_id="CN-PO-0001", block=other)
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.ProposeTransfer(proposal_request(block, 990, 1010, "across"))
            assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "selections[0]")
            assert "lies across 2 blocks held in account 'CN-PO-0001'" in (caught.value.details() or "")
            assert "select 990-1000, 1001-1010 as selections of their own" in (caught.value.details() or "")
            both = proposal_request(block, 990, 1000, "both")
            both.selections.append(operator_pb2.BlockSelection(space=block.space, start=1001, end=1010))
            proposed = await chn.ProposeTransfer(both)
            assert [(b.start, b.end) for b in proposed.blocks] == [(990, 1000), (1001, 1010)]
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_use_towards_the_ndc_is_for_a_year_of_its_period_and_an_entity_id_looks_like_no_other(
    tmp_path: Path,
) -> None:
    pair = await start_pair(tmp_path)
    pair.chn.core.gateway.ledger_options = options("CHN01")
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn:
            await open_account(chn, "CN-USE-0001", "use", key="open-use")

            def use(key: str, year: int, entity: str = "") -> operator_pb2.UseUnitsRequest:
                return operator_pb2.UseUnitsRequest(
                    idempotency_key=key,
                    source_account="CN-PO-0001",
                    use_account="CN-USE-0001",
                    action="use towards the NDC",
                    year_of_use=year,
                    authorization_id="CHN-A-0001",
                    using_entity=entity,
                    selections=[operator_pb2.BlockSelection(space=block.space, start=1, end=10)],
                )

            for key, year, entity, field in (
                ("after", 2031, "", "year_of_use"),
                ("before", 1990, "", "year_of_use"),
                ("em-space", 2025, "ENT\u2003X", "using_entity"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await chn.UseUnits(use(key, year, entity))
                assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, field)
            assert "outside the NDC period, 2021-2030" in (await _details(chn.UseUnits(use("again", 2031))))
            wrong = use("action", 2025)
            wrong.action = "Use towards the NDC"
            details = await _details(chn.UseUnits(wrong))
            assert "not 'Use towards the NDC'" in details and "voluntary cancellation" not in details
            # 2030 and an ASCII space pass those checks; CHN's own units are then refused as not yet ITMOs.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.UseUnits(use("in", 2030, "ENT X"))
            assert refusal(caught.value) == (ResponseCode.INVALID_STATE, "selections")
            # An entity the authorization itself names is taken as it spells it: the reports pair the two.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.UseUnits(use("dash", 2030, "ENT\u2013X"))
            assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "using_entity")
            amended = records_pb2.Authorization()
            amended.CopyFrom(DEMO_AUTHORIZATION)
            amended.version, amended.date = "2.0", dt.date.today().isoformat()
            amended.authorized_entities.append("ENT\u2013X")
            await chn.AmendAuthorization(
                operator_pb2.AmendAuthorizationRequest(idempotency_key="entity", authorization=amended)
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.UseUnits(use("dash-named", 2030, "ENT\u2013X"))
            assert refusal(caught.value) == (ResponseCode.INVALID_STATE, "selections")
    finally:
        await pair.stop()


async def _details(call: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.details() or ""


@pytest.mark.asyncio
async def test_a_retry_of_a_use_recorded_under_a_wider_period_is_answered_with_the_use(tmp_path: Path) -> None:
    wider = AdjustmentSettings(
        method=AdjustmentMethod.AVERAGING,
        first_year=2021,
        last_year=2035,
        averaging_divisor=AveragingDivisor.ELAPSED_YEARS,
    )
    pair = await start_pair(tmp_path)
    pair.chn.core.gateway.ledger_options = options("CHN01")
    pair.che.core.gateway.ledger_options = dataclasses.replace(options("CHE01"), adjustments=wider)
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            transfer = await chn.ProposeTransfer(proposal_request(block, 1, 100, "t1"))
            assert (await wait_for_state(che, transfer.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            await open_account(che, "CH-USE-0001", "use", key="open-use")
            use = operator_pb2.UseUnitsRequest(
                idempotency_key="use-2031",
                source_account="CH-PH-0001",
                use_account="CH-USE-0001",
                action="use towards the NDC",
                year_of_use=2031,
                selections=[operator_pb2.BlockSelection(space=block.space, start=1, end=10)],
            )
            used = await che.UseUnits(use)
            pair.che.core.gateway.ledger_options = options("CHE01")  # the NDC period is 2021-2030 from now on
            assert (await che.UseUnits(use)).action_id == used.action_id
            use.idempotency_key = "use-2031-again"
            use.selections[0].start, use.selections[0].end = 11, 20
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.UseUnits(use)
            assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "year_of_use")
    finally:
        await pair.stop()


_TIED = {"first_transferring_party": "CHN", "cooperative_approach": "CA0001", "authorization_id": "CHN-A-0001"}

AGAIN: dict[str, tuple[dict[str, object], int]] = {
    "as-recorded": ({}, records_pb2.ACCEPTED),
    "of-another-vintage": ({"vintage": 2021}, records_pb2.REJECTED),
    "of-another-project": ({"project_id": "DEMO-P-0002"}, records_pb2.REJECTED),
    "under-another-cooperative-approach": ({"cooperative_approach": "CA0002"}, records_pb2.REJECTED),
    "under-another-authorization": ({"authorization_id": "CHN-A-0002"}, records_pb2.REJECTED),
    "tied-to-another-party": (
        {"first_transferring_party": "SGP", "authorization_id": "SGP-A-0001"},
        records_pb2.REJECTED,
    ),
    "first-transfer-undone": ({"first_transferred": False}, records_pb2.REJECTED),
}
"""How CHN sends CHE, a second time, units CHE acquired from it and sent back (tied to CHN, first transferred, as
issued), and what CHE makes of it."""


async def acquired_and_sent_back(pair: Pair) -> records_pb2.UnitBlock:
    """CHN's units 1-400 of its issuance moved to CHE, then back to CHN (CHE holding a copy of CHN's
    authorization): CHE has recorded them as CHN's ITMOs. Returns CHN's issuance block."""
    from tests.integration.test_reconciliation import move

    block = await setup_accounts(pair)
    await move(pair, [(1, 400)], "out")
    async with operator(pair.che) as che:
        await che.RegisterAuthorization(
            operator_pb2.RegisterAuthorizationRequest(idempotency_key="auth", authorization=DEMO_AUTHORIZATION)
        )
    await move(pair, [(1, 400)], "back", back=True)
    return block


@pytest.mark.parametrize("case", list(AGAIN))
@pytest.mark.asyncio
async def test_units_seen_before_as_another_party_s_itmos_arrive_again_as_recorded(tmp_path: Path, case: str) -> None:
    """Units CHE recorded as CHN's ITMOs keep, whoever sends them next, the tie and what they were issued with,
    and stay first transferred: a block that says otherwise would put the same units under a second ITMO ID in
    CHE's books, and is refused with PROVENANCE_REFUSED."""
    from tests.integration.harness import deliver_raw
    from tests.integration.test_transfer import _next_crafter, _rogue_proposal

    changes, expected = AGAIN[case]
    pair = await start_pair(tmp_path)
    try:
        block = await acquired_and_sent_back(pair)
        again = records_pb2.UnitBlock()
        again.CopyFrom(block)
        again.first_transferred = True
        for name, value in {**_TIED, **changes}.items():
            setattr(again, name, value)
        proposal = _rogue_proposal(again, 1, 400, f"again-{case}")
        crafter = await _next_crafter(pair)
        payload, _ = crafter.statement(proposal=proposal)
        assert (await deliver_raw(pair.che, wire.envelope_to_bytes(crafter.envelope(payload)))).taken_in
        async with operator(pair.che) as che:
            transfer = await che.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=f"again-{case}"))
        assert transfer.state == expected, [r.message for r in transfer.rejections]
        if expected == records_pb2.REJECTED:
            assert [ResponseCode(r.code) for r in transfer.rejections] == [ResponseCode.PROVENANCE_REFUSED]
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_use_towards_the_ndc_is_refused_where_no_ndc_period_is_configured(tmp_path: Path) -> None:
    """Without [ledger] the gateway knows no NDC period: a use towards the NDC for any year would be counted in
    no year's adjustment once the period is configured, so it is refused, naming the setting; nothing is used."""
    from gateway.demo import Pair
    from gateway.harness import start_network
    from tests.integration.test_reconciliation import move

    network = await start_network(tmp_path, ("CHN", "CHE"))  # no [ledger]: LedgerOptions()
    pair = Pair(network["CHN"], network["CHE"])
    try:
        await setup_accounts(pair)
        await move(pair, [(1, 100)], "out")
        async with operator(pair.che) as che:
            await open_account(che, "CH-USE-0001", "use", key="open-use")
            use = operator_pb2.UseUnitsRequest(
                idempotency_key="use",
                source_account="CH-PH-0001",
                use_account="CH-USE-0001",
                action="use towards the NDC",
                year_of_use=2040,
                selections=[operator_pb2.BlockSelection(space=demo_block().space, start=1, end=10)],
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.UseUnits(use)
            detail = read_error_detail(caught.value.trailing_metadata())
            assert detail is not None
            assert (ResponseCode(detail.code), detail.field) == (ResponseCode.INVALID_ARGUMENT, "year_of_use")
            assert "[ledger]" in detail.message
        async with pair.che.store.read() as tx:
            assert [e.action_type.value for e in await tx.list_ledger()] == ["Acquisition"]
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_a_version_superseded_before_its_date_stays_out_of_the_aef_report(tmp_path: Path) -> None:
    """An amendment dated months ahead by mistake, then superseded by one dated today, never comes into force:
    the report of the year it was dated in lists the versions that did, not it."""
    pair = await start_pair(tmp_path)
    pair.chn.core.gateway.ledger_options = options("CHN01")
    today = dt.datetime.now(dt.UTC).date()
    ahead = today + dt.timedelta(days=200)

    def amendment(label: str, date: dt.date) -> operator_pb2.AmendAuthorizationRequest:
        found = records_pb2.Authorization()
        found.CopyFrom(DEMO_AUTHORIZATION)
        found.version, found.date = label, date.isoformat()
        return operator_pb2.AmendAuthorizationRequest(idempotency_key=label, authorization=found)

    try:
        async with operator(pair.chn) as chn:
            await chn.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="a", authorization=DEMO_AUTHORIZATION)
            )
            await chn.AmendAuthorization(amendment("2.0", ahead))
            await chn.AmendAuthorization(amendment("3.0", today))
        report = await pair.chn.core.gateway.aef_report(ahead.year, version="1.0", submission_date=ahead)
        assert [a.version for a in report.authorizations] == ["1.0", "3.0"]
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_no_version_of_this_partys_authorizations_enters_a_locked_years_report(tmp_path: Path) -> None:
    """With 2021-2025 locked, a version of CHN's own authorizations dated 2025 or earlier would appear in the
    locked report of 2025 (which lists every version dated by the year's end): refused, naming the date. A copy of
    another Party's authorization, which CHN's reports do not list, is taken."""
    pair = await start_pair(tmp_path)

    def version(authorization_id: str, date: str, party: str = "", label: str = "1") -> records_pb2.Authorization:
        found = records_pb2.Authorization()
        found.CopyFrom(DEMO_AUTHORIZATION)
        found.authorization_id, found.date, found.party, found.version = authorization_id, date, party, label
        return found

    def register(key: str, authorization: records_pb2.Authorization) -> operator_pb2.RegisterAuthorizationRequest:
        return operator_pb2.RegisterAuthorizationRequest(idempotency_key=key, authorization=authorization)

    def amend(key: str, authorization: records_pb2.Authorization) -> operator_pb2.AmendAuthorizationRequest:
        return operator_pb2.AmendAuthorizationRequest(idempotency_key=key, authorization=authorization)

    own = DEMO_AUTHORIZATION.authorization_id
    try:
        async with operator(pair.chn) as chn:
            await chn.RegisterAuthorization(register("a", DEMO_AUTHORIZATION))
            await chn.LockPeriod(
                operator_pb2.LockPeriodRequest(idempotency_key="lock", first_year=2021, last_year=2025, reason="BTR")
            )
            with pytest.raises(grpc.aio.AioRpcError) as registered:
                await chn.RegisterAuthorization(register("own-2019", version("CHN-A-0019", "2019-05-01")))
            with pytest.raises(grpc.aio.AioRpcError) as amended:
                await chn.AmendAuthorization(amend("amended-2025", version(own, "2025-06-01", label="2")))
            for caught in (registered, amended):
                assert refusal(caught.value) == (ResponseCode.PERIOD_LOCKED, "authorization.date")
                assert "the AEF report of 2025 would list it" in str(caught.value.details())
            await chn.RegisterAuthorization(register("copy", version("SGP-A-0019", "2019-05-01", party="SGP")))
            await chn.AmendAuthorization(amend("later", version(own, "2026-06-01", label="2")))
    finally:
        await pair.stop()
