"""Reconciliation under races and a hostile partner: what an outside review of the first version found.

A movement recorded while a run is under way is no difference; units frozen while their transfer waits do not
leave; a partner's answer or report freezes only what its transfers with this gateway moved; a descent whose
answers do not add up ends for a person; a partner's rewritten log is still compared block by block, and
resolving the run accepts the partner's log as it is now.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from pathlib import Path

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, partner_pb2, records_pb2
from gateway.demo import DEMO_AUTHORIZATION, Pair, demo_block, start_pair, wait_for_state
from gateway.domain.blocks import MAX_SERIAL, SerialSpace
from gateway.domain.errors import ResponseCode
from gateway.domain.protocol import DecisionPolicy
from gateway.domain.reconciliation import DifferenceKind, ReconciledBlock, Status
from gateway.reconciliation_wire import block_to_proto, ref_to_proto
from gateway.usecases.base import Idempotency
from gateway.usecases.reconciling import MAX_DIFFERENCES
from tests.integration.harness import (
    TERMINAL,
    Crafter,
    cancelled_with_units_home,
    operator,
    proposal_request,
    settle,
    setup_accounts,
)
from tests.integration.test_reconciliation import (
    AUDIT,
    BLOCKS,
    EMPTY_HEAD,
    ROOT,
    TOTALS,
    _listed,
    back_request,
    crafter_for,
    database,
    differences,
    finished,
    frozen,
    move,
    reconcile,
    refusal,
    reply,
    report_of,
    rewrite_log,
    send,
    three_transfers,
)

SPACE = SerialSpace("CCER", "CN-CCER")


def _report_from_che(run_id: str, status: int, **fields: object) -> partner_pb2.ReconciliationReport:
    """CHE's report, as the requester of run ``run_id``, to CHN."""
    return partner_pb2.ReconciliationReport(
        run_id=run_id,
        requester="CHE",
        responder="CHN",
        status=status,  # type: ignore[arg-type]
        requester_head=EMPTY_HEAD,
        responder_head=EMPTY_HEAD,
        **fields,  # type: ignore[arg-type]
    )


async def _awaiting_report(pair: Pair, run_id: str) -> None:
    """CHN's record of CHE's run ``run_id`` as if CHE's report had not come yet: the next report is taken."""
    async with pair.chn.store.transaction() as tx:
        kept = await tx.get_reconciliation(run_id)
        assert kept is not None and kept.report
        await tx.update_reconciliation(dataclasses.replace(kept, status=Status.RUNNING, report=b""))


@pytest.mark.asyncio
async def test_a_transfer_completing_during_a_run_is_no_difference(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        async with operator(pair.che) as che:
            await che.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="auth", authorization=DEMO_AUTHORIZATION)
            )
        await move(pair, [(1, 50)], "t0")
        assert (await reconcile(pair.chn, "CHE", "first")).status is Status.CONSISTENT
        # CHE sends 10-20 back. Its Completion waits in CHE's outbox while CHN starts a run, and reaches CHN just
        # before CHE's answer: CHN records the acquisition in the middle of its own run.
        async with operator(pair.che) as che, operator(pair.chn) as chn:
            sent = await che.ProposeTransfer(back_request([(10, 20)], "back"))
            await wait_for_state(chn, sent.transfer_id, {records_pb2.ACCEPTED, records_pb2.COMPLETED})
            await pair.che.outbox.stop()
            await wait_for_state(che, sent.transfer_id, {records_pb2.COMPLETED})
            started = await pair.chn.core.gateway.start_reconciliation(Idempotency("t", "r", "k2", ""), "CHE")
            deadline = time.monotonic() + 5
            while True:
                async with pair.che.store.read() as tx:
                    if await tx.get_reconciliation(started.run_id) is not None:
                        break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            pair.che.outbox.start()
            pair.che.outbox.wake()
            done = await finished(pair.chn, started.run_id)
            assert done.status is Status.CONSISTENT, (done.detail, differences(report_of(done)))
            assert await frozen(pair.chn, 1, 1000) == []
            got = await chn.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=sent.transfer_id))
            assert got.state == records_pb2.COMPLETED
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_units_frozen_while_their_transfer_waits_do_not_leave(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        block = await setup_accounts(pair)
        await pair.chn.outbox.stop()
        async with operator(pair.chn) as chn:
            proposed = await chn.ProposeTransfer(proposal_request(block, 10, 20, "waiting"))
            async with pair.chn.store.transaction() as tx:
                await tx.freeze("run-x", [(SPACE, 1, 100)])
            pair.chn.outbox.start()
            pair.chn.outbox.wake()
        await cancelled_with_units_home(pair, proposed.transfer_id)
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_held_proposal_of_frozen_units_is_not_accepted(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path, policy=DecisionPolicy())  # no rule: every proposal is held for a person
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            proposed = await chn.ProposeTransfer(proposal_request(block, 10, 20, "held"))
            await wait_for_state(che, proposed.transfer_id, {records_pb2.CHECKED})
            async with pair.che.store.transaction() as tx:
                await tx.freeze("run-y", [(SPACE, 15, 15)])
            decide = operator_pb2.DecideTransferRequest(
                idempotency_key="d1", transfer_id=proposed.transfer_id, accept=True
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.DecideTransfer(decide)
            assert refusal(caught.value) == (ResponseCode.BLOCK_FROZEN, "accept")
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_hostile_report_freezes_only_what_the_named_transfer_moved(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        t0 = await move(pair, [(1, 50)], "t0")
        wide = ReconciledBlock(
            t0, "CHN", "CHE", "CCER", "CN-CCER", "", 1, MAX_SERIAL, 2025, "CA0001", "CHN-A-0001", "NDC", True, "CHN"
        )
        difference = partner_pb2.BlockDifference(
            kind=partner_pb2.QUANTITY, transfer_id=t0, requester_blocks=[block_to_proto(wide)]
        )

        def report(run_id: str) -> partner_pb2.ReconciliationReport:
            return _report_from_che(run_id, partner_pb2.BLOCKS_INCONSISTENT, differences=[difference])

        run = await reconcile(pair.che, "CHN", "r1")
        assert run.status is Status.CONSISTENT
        await settle(pair.chn, pair.che)  # CHE's real statements are all taken in: the crafted ones follow them
        await _awaiting_report(pair, run.run_id)
        crafter = await crafter_for(pair)
        # A report for a run this side never answered is refused, and freezes nothing.
        receipt = await send(pair, crafter, reconciliation_report=report("never-asked"))
        assert ResponseCode(receipt.code) is ResponseCode.INVALID_ARGUMENT
        assert await frozen(pair.chn, 1, MAX_SERIAL) == []
        # For a run it answered: only the units transfer t0 moved are frozen, not the range the report claims.
        receipt = await send(pair, crafter, reconciliation_report=report(run.run_id))
        assert ResponseCode(receipt.code) is ResponseCode.OK, receipt.detail
        assert await frozen(pair.chn, 1, 50) == [run.run_id]
        assert await frozen(pair.chn, 51, MAX_SERIAL) == []
        # A second report for the same run is refused: a resolved run is never frozen again by it.
        receipt = await send(pair, crafter, reconciliation_report=report(run.run_id))
        assert ResponseCode(receipt.code) is ResponseCode.INVALID_STATE
    finally:
        await pair.stop()


async def _rejected_incoming(pair: Pair, crafter: Crafter) -> str:
    """CHE proposes CHN's own units, which never left: CHN rejects the proposal and keeps its terms."""
    proposal = partner_pb2.Proposal(
        transfer_id="home-units",
        blocks=[demo_block()],
        source_account=records_pb2.AccountRef(party="CHE", account_id="CH-PH-0001"),
        acquiring_account=records_pb2.AccountRef(party="CHN", account_id="CN-PO-0001"),
        cooperative_approach="CA0001",
        authorization_id="CHN-A-0001",
        purpose="NDC",
        adjustment_method="single-year averaging",
    )
    receipt = await send(pair, crafter, proposal=proposal)
    assert ResponseCode(receipt.code) is ResponseCode.OK, receipt.detail
    return "home-units"


async def _refused_outgoing(pair: Pair, crafter: Crafter) -> str:
    """CHN proposes its units to an account CHE does not have: CHE rejects it, and the units come back home."""
    request = proposal_request(demo_block(), 1, 1000, "refused")
    request.acquiring_account.account_id = "CH-XX-9999"
    async with operator(pair.chn) as chn:
        proposed = await chn.ProposeTransfer(request)
        await wait_for_state(chn, proposed.transfer_id, TERMINAL)
    await settle(pair.chn, pair.che)
    return proposed.transfer_id


STAYED_HOME = {"a proposal CHN rejected": _rejected_incoming, "a proposal CHE rejected": _refused_outgoing}


@pytest.mark.parametrize("how", list(STAYED_HOME))
@pytest.mark.asyncio
async def test_a_hostile_report_naming_a_transfer_that_moved_nothing_freezes_nothing(tmp_path: Path, how: str) -> None:
    """A partner cannot freeze units held at home by naming, in a report, a transfer that moved nothing: a
    proposal of them it made and this side rejected (its terms are kept), or one this side made and it refused.
    Nor can it cancel this side's transfers to others that way."""
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)  # CHN holds CCER 1-1000 at home; none of it was ever abroad
        run = await reconcile(pair.che, "CHN", "r1")
        await settle(pair.chn, pair.che)
        await _awaiting_report(pair, run.run_id)
        transfer_id = await STAYED_HOME[how](pair, await crafter_for(pair))
        async with operator(pair.chn) as chn:
            stayed = await chn.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))
        assert stayed.state == records_pb2.REJECTED
        claimed = ReconciledBlock(
            transfer_id, "CHE", "CHN", "CCER", "CN-CCER", "", 1, 1000, 2025, "CA0001", "CHN-A-0001", "NDC", True, "CHN"
        )
        difference = partner_pb2.BlockDifference(
            kind=partner_pb2.MISSING_AT_RESPONDER, transfer_id=transfer_id, requester_blocks=[block_to_proto(claimed)]
        )
        report = _report_from_che(run.run_id, partner_pb2.BLOCKS_INCONSISTENT, differences=[difference])
        crafter = await crafter_for(pair)
        # More differences than a run ever lists are refused, unread.
        crowded = partner_pb2.ReconciliationReport()
        crowded.CopyFrom(report)
        crowded.differences.extend([partner_pb2.BlockDifference(transfer_id=transfer_id)] * MAX_DIFFERENCES)
        receipt = await send(pair, crafter, reconciliation_report=crowded)
        assert ResponseCode(receipt.code) is ResponseCode.INVALID_ARGUMENT
        assert "a run lists at most" in receipt.detail
        receipt = await send(pair, crafter, reconciliation_report=report)
        assert ResponseCode(receipt.code) is ResponseCode.OK, receipt.detail
        async with pair.chn.store.read() as tx:
            stored = await tx.get_reconciliation(run.run_id)
        assert stored is not None and stored.status is Status.BLOCKS_INCONSISTENT  # the report itself is kept
        assert await frozen(pair.chn, 1, 1000) == []
        assert await move(pair, [(1, 50)], "after")  # the units still leave, and the transfer completes
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_report_s_detail_is_kept_escaped_and_cannot_forge_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        await move(pair, [(1, 50)], "t0")
        run = await reconcile(pair.che, "CHN", "r1")
        await settle(pair.chn, pair.che)
        await _awaiting_report(pair, run.run_id)
        crafter = await crafter_for(pair)
        forged = "late\n2026-12-06 03:00:00,000 CRITICAL gateway: FORGED \u202egnp.\x00" + "x" * 3000
        report = _report_from_che(run.run_id, partner_pb2.TOTALS_INCONSISTENT, detail=forged)
        caplog.set_level("WARNING")
        receipt = await send(pair, crafter, reconciliation_report=report)
        assert ResponseCode(receipt.code) is ResponseCode.OK, receipt.detail
        async with pair.chn.store.read() as tx:
            stored = await tx.get_reconciliation(run.run_id)
        assert stored is not None and stored.status is Status.TOTALS_INCONSISTENT
        assert stored.detail.startswith(
            "CHE reports: late\\n2026-12-06 03:00:00,000 CRITICAL gateway: FORGED \\u202egnp.\\x00xxx"
        )
        assert len(stored.detail) <= len("CHE reports: ") + 2000
        logged = [r.getMessage() for r in caplog.records if "reports reconciliation run" in r.getMessage()]
        assert len(logged) == 1
        assert "\n" not in logged[0] and "\u202e" not in logged[0] and "\x00" not in logged[0]
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_hostile_answer_freezes_nothing_the_named_transfer_did_not_move(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        await move(pair, [(1, 50)], "t0")
        async with pair.chn.store.transaction() as tx:
            await tx.fold_reconciliation("CHN")
            mine = await tx.reconciliation_blocks("CHE", ROOT)
        await pair.chn.outbox.stop()
        crafter = await crafter_for(pair)
        gateway = pair.chn.core.gateway
        run = await gateway.start_reconciliation(Idempotency("test", "reconcile", "h", ""), "CHE")
        bogus = dataclasses.replace(mine[0], transfer_id="bogus-transfer", serial_start=1, serial_end=MAX_SERIAL)
        bucket = dataclasses.replace(ROOT, level=4, prefix=bogus.bucket)
        answers = [
            reply(run.run_id, TOTALS),
            reply(run.run_id, BLOCKS, nodes=[_listed([mine[0], bogus])]),
            reply(
                run.run_id,
                AUDIT,
                nodes=[_listed([bogus], ref=bucket)],
                transfers=[partner_pb2.TransferEvidence(transfer_id="bogus-transfer")],
            ),
        ]
        for answer in answers:
            await send(pair, crafter, reconciliation_reply=answer)
        ended = await gateway.get_reconciliation(run.run_id)
        assert ended.status is Status.BLOCKS_INCONSISTENT, ended.detail
        found = differences(report_of(ended))
        assert [(kind, transfer) for kind, transfer, _ in found] == [
            (DifferenceKind.MISSING_AT_REQUESTER, "bogus-transfer")
        ]
        assert await frozen(pair.chn, 1, MAX_SERIAL) == [], "a transfer unknown here freezes nothing here"
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_children_that_do_not_add_up_end_the_run_for_a_person(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        await move(pair, [(1, 50)], "t0")
        await pair.chn.outbox.stop()
        crafter = await crafter_for(pair)
        gateway = pair.chn.core.gateway
        run = await gateway.start_reconciliation(Idempotency("test", "reconcile", "h", ""), "CHE")
        fake = partner_pb2.ReconciliationTotals(blocks=1000, quantity="1000", digest=b"\x07" * 32)
        groups = [partner_pb2.GroupTotals(group=ref_to_proto(ROOT).group, totals=fake)]
        await send(pair, crafter, reconciliation_reply=reply(run.run_id, TOTALS, totals=groups))
        view = partner_pb2.TreeNodeView(
            ref=ref_to_proto(ROOT),
            totals=fake,
            children=[partner_pb2.ChildTotals(prefix=i, totals=fake) for i in range(16)],
        )
        await send(pair, crafter, reconciliation_reply=reply(run.run_id, BLOCKS, nodes=[view]))
        ended = await gateway.get_reconciliation(run.run_id)
        assert ended.status is Status.MANUAL_INTERVENTION_REQUIRED
        assert "do not add up" in ended.detail and "children" in ended.detail
    finally:
        await pair.stop()


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
async def test_a_rewritten_log_is_still_compared_and_resolving_accepts_it(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        transfers = await three_transfers(pair)
        assert (await reconcile(pair.chn, "CHE", "first")).status is Status.CONSISTENT
        rewrite_log(tmp_path / "che.db")
        with database(tmp_path / "che.db") as db:  # and CHE lost one acquisition, as a restored backup would
            db.execute(
                "DELETE FROM ledger WHERE entry_id = (SELECT MIN(entry_id) FROM ledger"
                " WHERE action_type = 'Acquisition' AND transfer_id = ?)",
                (transfers[0],),
            )
        run = await reconcile(pair.chn, "CHE", "second")
        assert run.status is Status.MANUAL_INTERVENTION_REQUIRED
        assert run.detail.startswith("CHE's message log was rewritten")
        found = differences(report_of(run, pair.chn))
        assert [(kind, transfer) for kind, transfer, _ in found] == [
            (DifferenceKind.MISSING_AT_RESPONDER, transfers[0])
        ]
        assert await frozen(pair.chn, 1, 1000) != []
        async with operator(pair.chn) as chn:
            await chn.ResolveReconciliation(
                operator_pb2.ResolveReconciliationRequest(
                    idempotency_key="accept", run_id=run.run_id, reason="CHE restored a backup; books compared"
                )
            )
        assert await frozen(pair.chn, 1, 1000) == []
        again = await reconcile(pair.chn, "CHE", "third")
        assert again.status is Status.BLOCKS_INCONSISTENT, again.detail  # the log is accepted; the block is not
    finally:
        await pair.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("attempt", range(3))
async def test_the_outbox_stops_right_after_a_run(tmp_path: Path, attempt: int) -> None:
    # The worker waited for its wake-up with asyncio.wait_for, which (before Python 3.12) can swallow the
    # cancellation that arrives with a wake-up: stop() then waited for ever, and so did a gateway's shutdown.
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        await move(pair, [(1, 50)], "t0")
        assert (await reconcile(pair.che, "CHN", f"r{attempt}")).status is Status.CONSISTENT
        await asyncio.wait_for(pair.che.outbox.stop(), timeout=10)
    finally:
        await pair.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize(("consistency_from", "said"), [(987_654, "a head of 987654 entries it never showed here")])
async def test_a_requester_must_prove_its_log_from_a_head_it_showed(
    tmp_path: Path, consistency_from: int, said: str
) -> None:
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        await move(pair, [(1, 50)], "t0")
        assert (await reconcile(pair.che, "CHN", "honest")).status is Status.CONSISTENT  # CHN now knows CHE's head
        await settle(pair.chn, pair.che)
        crafter = await crafter_for(pair)
        request = partner_pb2.ReconciliationRequest(
            run_id="evasive-run", phase=TOTALS, head=EMPTY_HEAD, consistency_from=consistency_from
        )
        receipt = await send(pair, crafter, reconciliation_request=request)
        assert ResponseCode(receipt.code) is ResponseCode.OK
        report = partner_pb2.ReconciliationReport(
            run_id="evasive-run",
            requester="CHE",
            responder="CHN",
            status=partner_pb2.CONSISTENT,
            requester_head=EMPTY_HEAD,
            responder_head=EMPTY_HEAD,
            consistency_from=consistency_from,
        )
        receipt = await send(pair, crafter, reconciliation_report=report)
        assert ResponseCode(receipt.code) is ResponseCode.OK, receipt.detail
        kept = await pair.chn.core.gateway.get_reconciliation("evasive-run")
        assert kept.status is Status.MANUAL_INTERVENTION_REQUIRED
        assert said in kept.detail, kept.detail
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_resolving_reaches_back_only_from_a_block_level_result(tmp_path: Path) -> None:
    from gateway.store.base import ReconciliationRun, RunRole

    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    pair = await start_pair(tmp_path, clock=lambda: now)
    try:
        gateway = pair.chn.core.gateway

        def run(run_id: str, status: Status, minutes: int, detail: str = "") -> ReconciliationRun:
            at = now - dt.timedelta(minutes=minutes)
            return ReconciliationRun(run_id, "CHE", RunRole.REQUESTER, status, at, at, at, detail=detail)

        async with pair.chn.store.transaction() as tx:
            await tx.insert_reconciliation(run("blocks", Status.BLOCKS_INCONSISTENT, 30))
            await tx.freeze("blocks", [(SPACE, 1, 10)])
            await tx.insert_reconciliation(run("totals", Status.TOTALS_INCONSISTENT, 20))
            # The partner's log was rewritten: the run went on and compared the blocks, then asked for a person.
            rewritten = "CHE's message log was rewritten: its head of 9 entries is not an extension of the head of 7"
            await tx.insert_reconciliation(run("manual", Status.MANUAL_INTERVENTION_REQUIRED, 10, rewritten))
            await tx.freeze("manual", [(SPACE, 20, 30)])
        # A run that stopped at the totals examined no block: resolving it leaves the earlier findings alone.
        await gateway.resolve_reconciliation(Idempotency("t", "r", "k1", "h1"), "totals", "totals checked")
        assert (await gateway.get_reconciliation("blocks")).status is Status.BLOCKS_INCONSISTENT
        assert await frozen(pair.chn, 1, 10) == ["blocks"]
        # The latest block-level result is the latest word: resolving it resolves the earlier one too.
        await gateway.resolve_reconciliation(Idempotency("t", "r", "k2", "h2"), "manual", "compared by hand")
        resolved = await gateway.get_reconciliation("blocks")
        assert (resolved.status, resolved.resolved_reason) == (
            Status.RESOLVED,
            "resolved with run manual: compared by hand",
        )
        assert await frozen(pair.chn, 1, 30) == []
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_snapshot_instant_out_of_range_is_refused_naming_its_field(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        crafter = await crafter_for(pair)
        request = partner_pb2.ReconciliationRequest(run_id="bad-snapshot", phase=TOTALS, head=EMPTY_HEAD)
        request.snapshot_at.seconds, request.snapshot_at.nanos = 0, -5
        receipt = await send(pair, crafter, reconciliation_request=request)
        assert ResponseCode(receipt.code) is ResponseCode.OK  # taken in, and answered with a refusal
        async with pair.chn.store.read() as tx:
            sent = await tx.list_outbox("CHE")
        replies = [partner_pb2.Statement.FromString(m.body).reconciliation_reply for m in sent]
        [reply] = [r for r in replies if r.run_id == "bad-snapshot"]
        assert ResponseCode(reply.refusal) is ResponseCode.MALFORMED_PAYLOAD
        assert reply.detail.endswith("(field reconciliation_request.snapshot_at)"), reply.detail
    finally:
        await pair.stop()
