"""Deadlines: an outgoing transfer with no decision is terminated, a held incoming proposal is rejected."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, partner_pb2, records_pb2
from gateway import wire
from gateway.demo import Pair, wait_for_state
from gateway.domain.errors import ResponseCode
from gateway.domain.protocol import Deadlines, DecisionPolicy
from gateway.harness import start_network
from gateway.rpc.errors import read_error_detail
from gateway.store.base import OutboxKind
from tests.integration.harness import (
    TERMINAL,
    Crafter,
    deliver_raw,
    operator,
    proposal_request,
    settle,
    setup_accounts,
)
from tests.integration.test_batches import crafter_for


async def held_at_che(
    chn: operator_pb2_grpc.OperatorServiceAsyncStub,
    che: operator_pb2_grpc.OperatorServiceAsyncStub,
    block: records_pb2.UnitBlock,
    start: int,
    end: int,
    key: str,
) -> str:
    """Propose serials ``start``-``end`` of ``block`` from CHN; the ID of the transfer once CHE holds it."""
    proposed = await chn.ProposeTransfer(proposal_request(block, start, end, key))
    await wait_for_state(che, proposed.transfer_id, {records_pb2.CHECKED})
    return proposed.transfer_id


@contextlib.asynccontextmanager
async def held_pair(tmp_path: Path) -> AsyncIterator[tuple[Pair, records_pb2.UnitBlock]]:
    """CHN and CHE with the demo accounts, CHE holding every proposal for its operator; CHN's block."""
    network = await start_network(tmp_path, ("CHN", "CHE"), policy=DecisionPolicy())
    pair = Pair(network["CHN"], network["CHE"])
    try:
        yield pair, await setup_accounts(pair)
    finally:
        await network.stop()


async def as_che(pair: Pair, *statements: partner_pb2.Decision) -> None:
    """Deliver Decisions to CHN as CHE signs them, in order, on CHE's real channel (once the outboxes settled)."""
    async with pair.che.store.read() as tx:
        channel = await tx.outgoing_channel("CHN")
    crafter = Crafter(signer=pair.che.signer, sender="CHE", receiver="CHN", channel=channel)
    for decision in statements:
        payload, _ = crafter.statement(decision=decision)
        assert (await deliver_raw(pair.chn, wire.envelope_to_bytes(crafter.envelope(payload)))).taken_in


@pytest.mark.asyncio
async def test_an_unanswered_transfer_is_terminated_its_units_released_and_the_partner_told(tmp_path: Path) -> None:
    deadlines = Deadlines(hold=dt.timedelta(seconds=30), decision=dt.timedelta(milliseconds=300))
    network = await start_network(tmp_path, ("CHN", "CHE"), deadlines=deadlines)
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        reachable = pair.chn.partners.parties()["CHE"].address
        pair.chn.set_partner_address("CHE", "127.0.0.1:9")  # CHE cannot be reached: no decision comes
        async with operator(pair.chn) as chn:
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 400, "k"))
            ended = await wait_for_state(chn, proposed.transfer_id, TERMINAL)
            assert ended.state == records_pb2.TERMINATED
            holdings = (await chn.ListHoldings(operator_pb2.ListHoldingsRequest())).holdings
            assert [(h.block.start, h.block.end, h.status) for h in holdings] == [(1, 1000, "held")]

        pair.chn.set_partner_address("CHE", reachable)  # CHE comes back: Proposal, then the terminating Cancel
        pair.chn.outbox.wake()
        async with operator(pair.che) as che:
            acquired = await wait_for_state(che, proposed.transfer_id, {records_pb2.TERMINATED}, timeout=30)
            assert acquired.state == records_pb2.TERMINATED
            # Both sides keep why: CHN's own record, and CHN's Cancel at CHE.
            assert [(ResponseCode(r.code), r.message) for r in ended.rejections] == [
                (ResponseCode.DECISION_DEADLINE_PASSED, "no decision within 0:00:00.300000")
            ]
            assert [(ResponseCode(r.code), r.message) for r in acquired.rejections] == [
                (ResponseCode.DECISION_DEADLINE_PASSED, "CHN: no decision within 0:00:00.300000")
            ]
            assert list((await che.ListHoldings(operator_pb2.ListHoldingsRequest())).holdings) == []
        await settle(pair.chn, pair.che)
        for node in (pair.chn, pair.che):
            async with node.store.read() as tx:
                assert await tx.list_ledger() == []
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_a_held_proposal_past_its_deadline_is_rejected_and_the_initiator_releases(tmp_path: Path) -> None:
    deadlines = Deadlines(hold=dt.timedelta(milliseconds=300), decision=dt.timedelta(seconds=30))
    network = await start_network(tmp_path, ("CHN", "CHE"), deadlines=deadlines, policy=DecisionPolicy())
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 400, "k"))
            held = await wait_for_state(che, proposed.transfer_id, {records_pb2.CHECKED, *TERMINAL})
            assert held.state in (records_pb2.CHECKED, records_pb2.REJECTED)
            rejected = await wait_for_state(che, proposed.transfer_id, TERMINAL)
            assert rejected.state == records_pb2.REJECTED
            assert [ResponseCode(r.code) for r in rejected.rejections] == [ResponseCode.DECISION_DEADLINE_PASSED]
            initiating = await wait_for_state(chn, proposed.transfer_id, TERMINAL)
            assert initiating.state == records_pb2.REJECTED
            assert [ResponseCode(r.code) for r in initiating.rejections] == [ResponseCode.DECISION_DEADLINE_PASSED]
            holdings = (await chn.ListHoldings(operator_pb2.ListHoldingsRequest())).holdings
            assert [(h.block.start, h.block.end, h.status) for h in holdings] == [(1, 1000, "held")]
            assert list((await che.ListHoldings(operator_pb2.ListHoldingsRequest())).holdings) == []
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_an_operator_accepts_a_held_proposal_and_the_transfer_completes(tmp_path: Path) -> None:
    async with held_pair(tmp_path) as (pair, block), operator(pair.chn) as chn, operator(pair.che) as che:
        proposed = await chn.ProposeTransfer(proposal_request(block, 1, 400, "k"))
        held = await wait_for_state(che, proposed.transfer_id, {records_pb2.CHECKED})
        assert [
            (h.block.start, h.status) for h in (await che.ListHoldings(operator_pb2.ListHoldingsRequest())).holdings
        ] == [(1, "pending")]
        decided = await che.DecideTransfer(
            operator_pb2.DecideTransferRequest(idempotency_key="d", transfer_id=held.transfer_id, accept=True)
        )
        assert decided.state == records_pb2.ACCEPTED
        assert (await wait_for_state(chn, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        assert (await wait_for_state(che, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED


LATE: dict[str, tuple[Deadlines, str, int, int]] = {
    "accepted-by-the-operator-past-the-hold-deadline": (
        Deadlines(hold=dt.timedelta(hours=1), decision=dt.timedelta(hours=10)),
        "refused",
        records_pb2.CHECKED,
        records_pb2.CHECKED,
    ),
    "accepted-past-the-initiators-decision-deadline": (
        Deadlines(hold=dt.timedelta(hours=10), decision=dt.timedelta(hours=1)),
        "accepted",
        records_pb2.TERMINATED,
        records_pb2.TERMINATED,
    ),
    "accepted-in-time": (
        Deadlines(hold=dt.timedelta(hours=10), decision=dt.timedelta(hours=10)),
        "accepted",
        records_pb2.COMPLETED,
        records_pb2.COMPLETED,
    ),
}
"""Deadlines both sides run with, what becomes of CHE's operator accepting a held proposal two hours after it
arrived, and the states of CHN and CHE then: the deadline decides, not when the sweep (once a minute at most)
next runs."""


@pytest.mark.parametrize("case", list(LATE))
@pytest.mark.asyncio
async def test_a_decision_past_its_deadline_does_not_complete_the_transfer(tmp_path: Path, case: str) -> None:
    deadlines, operator_answer, chn_state, che_state = LATE[case]
    shift = [dt.timedelta(0)]
    network = await start_network(
        tmp_path,
        ("CHN", "CHE"),
        deadlines=deadlines,
        policy=DecisionPolicy(),
        clock=lambda: dt.datetime.now(dt.UTC) + shift[0],
    )
    pair = Pair(network["CHN"], network["CHE"])
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            transfer_id = await held_at_che(chn, che, block, 1, 400, "k")
            shift[0] = dt.timedelta(hours=2)  # no sweep runs before the decision: they are a minute apart
            decide = operator_pb2.DecideTransferRequest(idempotency_key="d", transfer_id=transfer_id, accept=True)
            if operator_answer == "refused":
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await che.DecideTransfer(decide)
                detail = read_error_detail(caught.value.trailing_metadata())
                assert detail is not None and ResponseCode(detail.code) is ResponseCode.DECISION_DEADLINE_PASSED
                assert detail.field == "accept"
                assert (
                    await che.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))
                ).state == che_state
                return
            await che.DecideTransfer(decide)
            initiating = await wait_for_state(chn, transfer_id, TERMINAL)
            acquiring = await wait_for_state(che, transfer_id, TERMINAL, timeout=30)
            assert (initiating.state, acquiring.state) == (chn_state, che_state)
            if chn_state == records_pb2.TERMINATED:
                late = "accepted after the decision deadline (1:00:00)"
                assert [(ResponseCode(r.code), r.message) for r in initiating.rejections] == [
                    (ResponseCode.DECISION_DEADLINE_PASSED, late)
                ]
                assert [(ResponseCode(r.code), r.message) for r in acquiring.rejections] == [
                    (ResponseCode.DECISION_DEADLINE_PASSED, f"CHN: {late}")
                ]
            held = [
                (h.block.start, h.block.end)
                for h in (await chn.ListHoldings(operator_pb2.ListHoldingsRequest())).holdings
            ]
            assert held == ([(401, 1000)] if chn_state == records_pb2.COMPLETED else [(1, 1000)])
    finally:
        await network.stop()


@pytest.mark.asyncio
async def test_a_cancelled_transfer_keeps_why_on_both_sides(tmp_path: Path) -> None:
    """The initiating operator's reason is kept with the transfer on both sides; a Cancel from a version that
    sent no code is kept as TRANSFER_ENDED, with its reason escaped."""
    async with held_pair(tmp_path) as (pair, block), operator(pair.chn) as chn, operator(pair.che) as che:
        transfer_id = await held_at_che(chn, che, block, 1, 400, "k")
        await chn.CancelTransfer(
            operator_pb2.CancelTransferRequest(idempotency_key="c", transfer_id=transfer_id, reason="wrong account")
        )
        initiating = await wait_for_state(chn, transfer_id, TERMINAL)
        acquiring = await wait_for_state(che, transfer_id, TERMINAL)
        said = "cancelled by CHN's operator: wrong account"
        assert [(ResponseCode(r.code), r.message) for r in initiating.rejections] == [
            (ResponseCode.TRANSFER_ENDED, said)
        ]
        assert [(ResponseCode(r.code), r.message) for r in acquiring.rejections] == [
            (ResponseCode.TRANSFER_ENDED, f"CHN: {said}")
        ]

        # The longest reason an operator may give is kept whole as far as a message may hold it.
        long = await held_at_che(chn, che, block, 601, 700, "k4")
        await chn.CancelTransfer(
            operator_pb2.CancelTransferRequest(idempotency_key="c4", transfer_id=long, reason="r" * 1000)
        )
        for stub in (chn, che):
            [kept] = (await wait_for_state(stub, long, TERMINAL)).rejections
            assert len(kept.message) == 1000 and kept.message.endswith("r…"), len(kept.message)

        # A Cancel as an earlier version sends it: no code, and a reason holding a line break, a decomposed
        # accent and white space around it.
        second = await held_at_che(chn, che, block, 401, 500, "k2")
        # A Cancel crossing CHE's own rejection: CHE keeps both.
        third = await held_at_che(chn, che, block, 501, 600, "k3")
        await che.DecideTransfer(
            operator_pb2.DecideTransferRequest(idempotency_key="d3", transfer_id=third, accept=False, reason="closing")
        )
        await wait_for_state(chn, third, TERMINAL)
        await settle(pair.chn, pair.che)  # CHN has recorded every receipt: its channel is where CHE's is
        crafter = await crafter_for(pair)
        for cancel in (
            partner_pb2.Cancel(transfer_id=second, reason=" gone\nfor good e\u0301 \u3000"),
            partner_pb2.Cancel(transfer_id=third, reason="frozen", code=records_pb2.BLOCK_FROZEN),
        ):
            payload, _ = crafter.statement(cancel=cancel)
            receipt = await deliver_raw(pair.che, wire.envelope_to_bytes(crafter.envelope(payload)))
            assert receipt.taken_in
        ended = await che.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=second))
        assert ended.state == records_pb2.CANCELLED
        assert [(ResponseCode(r.code), r.message) for r in ended.rejections] == [
            (ResponseCode.TRANSFER_ENDED, "CHN: gone\\nfor good \u00e9")
        ]
        crossed = await che.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=third))
        assert crossed.state == records_pb2.CANCELLED
        assert [(ResponseCode(r.code), r.message) for r in crossed.rejections] == [
            (ResponseCode.TRANSFER_DECLINED, "closing"),
            (ResponseCode.BLOCK_FROZEN, "CHN: frozen"),
        ]


@pytest.mark.asyncio
async def test_an_end_told_again_carries_its_recorded_reason(tmp_path: Path) -> None:
    """A Decision that crosses CHN's cancellation makes CHN tell CHE the end again: with the code and the reason
    it recorded, not a generic text."""
    async with held_pair(tmp_path) as (pair, block), operator(pair.chn) as chn, operator(pair.che) as che:
        transfer_id = await held_at_che(chn, che, block, 1, 400, "k")
        await chn.CancelTransfer(
            operator_pb2.CancelTransferRequest(idempotency_key="c", transfer_id=transfer_id, reason="wrong account")
        )
        await wait_for_state(che, transfer_id, TERMINAL)
        await settle(pair.chn, pair.che)
        await as_che(pair, partner_pb2.Decision(transfer_id=transfer_id, accepted=True))
        async with pair.chn.store.read() as tx:
            sent = [m for m in await tx.list_outbox("CHE") if m.kind is OutboxKind.CANCEL]
        told = [partner_pb2.Statement.FromString(m.body).cancel for m in sent]
        assert [(ResponseCode(c.code), c.reason, c.terminated) for c in told] == [
            (ResponseCode.TRANSFER_ENDED, "cancelled by CHN's operator: wrong account", False)
        ] * 2


@pytest.mark.asyncio
async def test_a_cancel_after_a_status_report_puts_why_in_place_of_the_report(tmp_path: Path) -> None:
    """CHE adopts an end from CHN's status report, which says no more than that the transfer ended; CHN's Cancel,
    arriving after it, puts its code and reason in that entry's place. A second Cancel changes nothing."""
    async with held_pair(tmp_path) as (pair, block), operator(pair.chn) as chn, operator(pair.che) as che:
        transfer_id = await held_at_che(chn, che, block, 1, 400, "k")
        await settle(pair.chn, pair.che)
        crafter = await crafter_for(pair)

        async def told(**statement: object) -> list[tuple[ResponseCode, str]]:
            payload, _ = crafter.statement(**statement)
            assert (await deliver_raw(pair.che, wire.envelope_to_bytes(crafter.envelope(payload)))).taken_in
            ended = await che.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))
            assert ended.state == records_pb2.CANCELLED
            return [(ResponseCode(r.code), r.message) for r in ended.rejections]

        report = partner_pb2.StatusReport(transfer_id=transfer_id, state=records_pb2.CANCELLED, known=True)
        assert await told(status_report=report) == [(ResponseCode.TRANSFER_ENDED, "CHN reports the transfer CANCELLED")]
        frozen = partner_pb2.Cancel(transfer_id=transfer_id, reason="frozen", code=records_pb2.BLOCK_FROZEN)
        assert await told(cancel=frozen) == [(ResponseCode.BLOCK_FROZEN, "CHN: frozen")]
        again = partner_pb2.Cancel(transfer_id=transfer_id, reason="other", code=records_pb2.PERIOD_LOCKED)
        assert await told(cancel=again) == [(ResponseCode.BLOCK_FROZEN, "CHN: frozen")]


@pytest.mark.asyncio
async def test_a_rejection_keeps_a_reason_even_when_the_partner_gives_none_or_too_long_a_one(tmp_path: Path) -> None:
    """A rejecting Decision with no rejections still leaves why on record; a rejection whose code this gateway
    does not know is kept within the length of a message."""
    async with held_pair(tmp_path) as (pair, block), operator(pair.chn) as chn, operator(pair.che) as che:
        silent = await held_at_che(chn, che, block, 1, 100, "k1")
        unknown = await held_at_che(chn, che, block, 101, 200, "k2")
        await settle(pair.chn, pair.che)
        odd = records_pb2.Rejection(code=999, message="y" * 1000)  # type: ignore[arg-type]
        await as_che(
            pair,
            partner_pb2.Decision(transfer_id=silent, accepted=False),
            partner_pb2.Decision(transfer_id=unknown, accepted=False, rejections=[odd]),
        )
        rejected = [await chn.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=t)) for t in (silent, unknown)]
    assert [t.state for t in rejected] == [records_pb2.REJECTED] * 2
    assert [(ResponseCode(r.code), r.message) for r in rejected[0].rejections] == [
        (ResponseCode.TRANSFER_DECLINED, "CHE rejected the transfer and gave no reason")
    ]
    [kept] = rejected[1].rejections
    assert kept.message.startswith("response code 999, unknown to this gateway: yyy") and len(kept.message) == 1000
