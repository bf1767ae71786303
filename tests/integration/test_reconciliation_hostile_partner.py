"""Reconciliation against a hostile or unlucky partner, and an unlucky database:

- the runs a partner starts here do not hide this side's run under way from the schedule or the next start;
- resolving a run that compared no block leaves earlier findings frozen;
- a request this side's database could not answer now is answered when it comes again, not refused;
- this side's requests and reports fit the envelope cap the partner declares, however small.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from carbon_gateway.v1 import partner_pb2, records_pb2
from gateway.demo import start_pair
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.reconciliation import DEPTH, GroupKey, NodeRef, Status, Totals
from gateway.node import utc_now
from gateway.store.base import OutboxKind, OutboxState
from gateway.usecases import reconciling
from gateway.usecases.base import Idempotency
from tests.integration.harness import setup_accounts
from tests.integration.test_reconciliation import (
    AUDIT,
    BLOCKS,
    EMPTY_HEAD,
    GROUP,
    ROOT,
    TOTALS,
    _evidence,
    _listed,
    capped_pair,
    crafter_for,
    database,
    delete_acquisition,
    finished,
    frozen,
    move,
    reconcile,
    reply,
    report_of,
    send,
)
from tests.integration.test_transient_store_errors import _transient_error


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


@pytest.mark.asyncio
async def test_runs_a_partner_starts_here_do_not_make_the_schedule_run_again_early(tmp_path: Path) -> None:
    """CHN's run with CHE has finished; then CHE starts 25 runs at CHN (CHN's newest runs with CHE). The schedule
    still counts its period from CHN's own run: the partner's runs do not make CHN start one early."""
    now = [utc_now() - dt.timedelta(minutes=10)]
    pair = await start_pair(tmp_path, clock=lambda: now[0])
    try:
        gateway = pair.chn.core.gateway
        started = now[0] - dt.timedelta(days=3)
        day = dt.timedelta(days=1)
        first = await gateway.start_reconciliation(Idempotency("t", "r", "k1", "h1"), "CHE")
        assert (await finished(pair.chn, first.run_id, timeout=60)).status is Status.CONSISTENT
        crafter = await crafter_for(pair)
        now[0] = utc_now()
        for i in range(25):
            request = partner_pb2.ReconciliationRequest(run_id=f"from-che-{i}", phase=TOTALS, head=EMPTY_HEAD)
            receipt = await send(pair, crafter, reconciliation_request=request)
            assert ResponseCode(receipt.code) is ResponseCode.OK, receipt.detail
        assert first.run_id not in {r.run_id for r in await gateway.list_reconciliations("CHE", limit=20)}
        assert await gateway.reconcile_due(day, started) == []
        now[0] = first.started_at + day
        [again] = await gateway.reconcile_due(day, started)
        assert again.partner == "CHE" and again.run_id != first.run_id
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_resolving_a_run_that_compared_no_block_leaves_earlier_findings_frozen(tmp_path: Path) -> None:
    """A first run finds CHN's block missing at CHE and freezes it. CHE refuses to answer the next run, which ends
    for a person having compared nothing. Resolving that run (CHE's operator says it was a glitch) resolves it
    alone: the first run's finding stands, its units stay frozen, until a run that compares the blocks says
    otherwise or a person resolves the first run itself."""
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        moved = await move(pair, [(1, 50)], "t0")
        async with pair.chn.store.transaction() as tx:
            await tx.fold_reconciliation("CHN")
            (mine,) = await tx.reconciliation_blocks("CHE", ROOT)
        await pair.chn.outbox.stop()  # CHN's requests wait in its outbox: only the crafted replies answer them
        crafter = await crafter_for(pair)
        gateway = pair.chn.core.gateway
        bucket = NodeRef(GROUP, DEPTH, mine.bucket)

        async def answer(*replies: partner_pb2.ReconciliationReply) -> None:
            for answer in replies:
                receipt = await send(pair, crafter, reconciliation_reply=answer)
                assert (ResponseCode(receipt.code), receipt.taken_in) == (ResponseCode.OK, True), receipt.detail

        first = await gateway.start_reconciliation(Idempotency("t", "r", "k1", "h1"), "CHE")
        await answer(
            reply(first.run_id, TOTALS),
            reply(first.run_id, BLOCKS, nodes=[_listed([])]),
            reply(first.run_id, AUDIT, transfers=[_evidence(moved)], nodes=[_listed([], ref=bucket)]),
        )
        found = await gateway.get_reconciliation(first.run_id)
        assert found.status is Status.BLOCKS_INCONSISTENT, found.detail
        assert await frozen(pair.chn, 1, 50) == [first.run_id]

        second = await gateway.start_reconciliation(Idempotency("t", "r", "k2", "h2"), "CHE")
        await answer(reply(second.run_id, TOTALS, refusal=records_pb2.INTERNAL_ERROR, detail="try again"))
        refused = await gateway.get_reconciliation(second.run_id)
        assert refused.status is Status.MANUAL_INTERVENTION_REQUIRED, refused.detail

        await gateway.resolve_reconciliation(Idempotency("t", "resolve", "k3", "h3"), second.run_id, "a glitch")
        assert (await gateway.get_reconciliation(second.run_id)).status is Status.RESOLVED
        assert (await gateway.get_reconciliation(first.run_id)).status is Status.BLOCKS_INCONSISTENT
        assert await frozen(pair.chn, 1, 50) == [first.run_id]
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_request_the_database_could_not_answer_now_is_answered_by_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """CHE's database cannot read its totals once (a lock wait ran out, a connection was lost) while it answers
    CHN's request. The request is not taken in, CHN sends it again, and the run ends CONSISTENT: not refused with
    INTERNAL_ERROR, which ended CHN's run for a person to read, with a traceback in CHE's log."""
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        await move(pair, [(1, 50)], "t0")
        async with pair.che.store.read() as tx:
            transaction = type(tx)
        totals = transaction.reconciliation_totals
        failures: list[str] = []

        async def fails_once(self: Any, partner: str) -> dict[GroupKey, Totals]:
            if not failures:
                failures.append(partner)
                raise _transient_error(pair.che.store)
            return await totals(self, partner)

        monkeypatch.setattr(transaction, "reconciliation_totals", fails_once)
        run = await reconcile(pair.chn, "CHE", "r1")
        assert failures == ["CHN"]
        assert (run.status, run.detail) == (Status.CONSISTENT, "")
        assert not [r for r in caplog.records if r.exc_info is not None and "reconciliation" in r.getMessage()]
    finally:
        await pair.stop()


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
async def test_requests_are_split_to_fit_the_partner_s_cap(tmp_path: Path) -> None:
    """CHN takes envelopes of 4 KiB at most. CHE lost its record of 500 blocks it acquired from CHN, in 25
    transfers, and asks: the descent asks a hundred nodes and more, the audit hundreds of buckets and 25 transfers. Each
    request fits CHN's cap, and the run ends with every difference found on both sides: a request beyond it was
    refused by CHN for good, put on CHE's dead-letter list, and the run waited for an answer that never came."""
    async with capped_pair(tmp_path, 4096) as pair:
        await setup_accounts(pair)
        for t in range(25):
            await move(pair, [(1 + 2 * i + 40 * t, 1 + 2 * i + 40 * t) for i in range(20)], f"t{t}")
        with database(tmp_path / "che.db") as db:
            assert db.execute("DELETE FROM ledger WHERE action_type = 'Acquisition'").rowcount == 500
        started = await pair.che.core.gateway.start_reconciliation(Idempotency("t", "r", "split", ""), "CHN")
        run = await finished(pair.che, started.run_id, timeout=60)
        async with pair.che.store.read() as tx:
            assert await tx.list_outbox("CHN", states=(OutboxState.DEAD,)) == []
            sent = [m.body for m in await tx.list_outbox("CHN") if m.kind is OutboxKind.RECONCILIATION_REQUEST]
        assert run.status is Status.BLOCKS_INCONSISTENT, run.detail
        report = report_of(run, pair.che)
        assert len(report.differences) + report.differences_omitted == 500
        assert all(d.kind == partner_pb2.MISSING_AT_REQUESTER for d in report.differences)
        kept = await finished(pair.chn, run.run_id)
        assert kept.status is Status.BLOCKS_INCONSISTENT and report_of(kept) == report
        requests = [partner_pb2.Statement.FromString(body).reconciliation_request for body in sent]
        assert max(len(r.nodes) for r in requests if r.phase == BLOCKS) > 1
        assert len([r for r in requests if r.phase == AUDIT]) > 1


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
async def test_a_report_of_many_transfers_in_flight_still_fits_the_partner_s_cap(tmp_path: Path) -> None:
    """CHN takes envelopes of 4 KiB at most. CHE asks while 90 of its transfers from CHN are still open there
    (their Completions on their way): each is in flight, listed in the report, and no difference. The report
    leaves out the in-flight transfers it has no room for, and says so, instead of going over CHN's cap: CHN
    refused it for good, CHE's outbox put it on the dead-letter list, and CHN's record of the run never got its
    result."""
    async with capped_pair(tmp_path, 4096) as pair:
        await setup_accounts(pair)
        moved = [await move(pair, [(1 + 5 * i, 5 + 5 * i)], f"t{i}") for i in range(90)]
        with database(tmp_path / "che.db") as db:
            for transfer_id in moved:
                delete_acquisition(db, transfer_id)
                db.execute("UPDATE transfers SET state = 8 WHERE transfer_id = ?", (transfer_id,))
        run = await reconcile(pair.che, "CHN", "many-in-flight")
        assert (run.status, run.detail) == (Status.CONSISTENT, ""), run.detail
        report = report_of(run, pair.che)
        assert list(report.differences) == []
        listed = list(report.in_flight)
        assert 0 < len(listed) < len(moved) and set(listed) <= set(moved)
        assert f"{len(moved) - len(listed)} more transfers in flight" in report.detail, report.detail
        kept = await finished(pair.chn, run.run_id)
        assert kept.status is Status.CONSISTENT
        async with pair.che.store.read() as tx:
            assert await tx.list_outbox("CHN", states=(OutboxState.DEAD,)) == []


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
async def test_a_run_that_needs_too_many_requests_names_the_partner_s_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A descent that a small cap spreads over more requests than a run may send ends for a person, and says the
    cap may be why, not only the partner's answers."""
    monkeypatch.setattr(reconciling, "MAX_REQUESTS_PER_RUN", 3)
    async with capped_pair(tmp_path, 4096) as pair:
        await setup_accounts(pair)
        for t in range(25):
            await move(pair, [(1 + 2 * i + 40 * t, 1 + 2 * i + 40 * t) for i in range(20)], f"t{t}")
        with database(tmp_path / "che.db") as db:
            assert db.execute("DELETE FROM ledger WHERE action_type = 'Acquisition'").rowcount == 500
        started = await pair.che.core.gateway.start_reconciliation(Idempotency("t", "r", "many", ""), "CHN")
        run = await finished(pair.che, started.run_id, timeout=60)
        assert run.status is Status.MANUAL_INTERVENTION_REQUIRED, run.detail
        assert "more than 3 requests" in run.detail and "(4096 bytes, [[partners]] max_envelope_bytes)" in run.detail
