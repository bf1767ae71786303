"""Reconciliation end to end between two real gateways (gRPC on port 0, SQLite files in a temporary folder).

Honest ledgers reconcile from either side; each kind of store corruption is found as exactly one difference of
its kind; differing units are frozen on both sides until an operator resolves the run; small size caps split
the replies without losing a difference; a rewritten message log stops the run; and no reply or request a
partner could sign makes a run end in anything but a result a person can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import re
import sqlite3
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, partner_pb2, records_pb2
from gateway import wire
from gateway.demo import DEMO_AUTHORIZATION, Pair, start_pair, wait_for_state
from gateway.domain import merkle
from gateway.domain import reconciliation as tree
from gateway.domain.blocks import SerialSpace
from gateway.domain.errors import ResponseCode
from gateway.domain.reconciliation import (
    DifferenceKind,
    GroupKey,
    NodeRef,
    ReconciledBlock,
    Status,
    Totals,
    reconciled_block,
)
from gateway.domain.records import ActionType, LedgerEntry
from gateway.exchange import ENVELOPE_MARGIN_BYTES, ExchangeSettings
from gateway.harness import start_network
from gateway.node import GatewayNode
from gateway.reconciliation_wire import block_to_proto, group_to_proto, ref_to_proto, totals_to_proto
from gateway.rpc.errors import read_error_detail
from gateway.store.base import OutboxKind, OutboxState, ReconciliationRun, RunRole
from gateway.usecases import reconciling
from gateway.usecases.base import Idempotency
from gateway.usecases.reconciling import REPORT_PAYLOAD_TYPE
from signing import Envelope, verify_envelope
from tests.integration.harness import (
    TERMINAL,
    Crafter,
    deliver_raw,
    open_account,
    operator,
    proposal_request,
    settle,
    setup_accounts,
)

SPACE = SerialSpace("CCER", "CN-CCER")
GROUP = GroupKey("CCER", "CN-CCER", 2025, "CHN->CHE", "NDC")
"""The group every CHN->CHE movement of these tests counts in."""
EMPTY_HEAD = partner_pb2.TreeHead(tree_size=0, root_hash=merkle.EMPTY_ROOT)
TOTALS, BLOCKS, AUDIT = (
    partner_pb2.RECONCILIATION_PHASE_TOTALS,
    partner_pb2.RECONCILIATION_PHASE_BLOCKS,
    partner_pb2.RECONCILIATION_PHASE_AUDIT,
)


# -- helpers ----------------------------------------------------------------------------------------------


async def reconcile(node: GatewayNode, partner: str, key: str) -> ReconciliationRun:
    """Start a run at ``node`` and wait for its result."""
    gateway = node.core.gateway
    run = await gateway.start_reconciliation(Idempotency("test", "reconcile", key, key), partner)
    return await finished(node, run.run_id)


async def finished(node: GatewayNode, run_id: str, timeout: float = 10.0) -> ReconciliationRun:
    """The run ``run_id`` at ``node`` once it has a result (a responder has one once the report is in)."""
    deadline = time.monotonic() + timeout
    while True:
        async with node.store.read() as tx:
            found = await tx.get_reconciliation(run_id)
        if found is not None and found.status is not Status.RUNNING:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not finish at {node.party}: {found}")
        await asyncio.sleep(0.005)


async def both_sides(pair: Pair, requester: GatewayNode, key: str) -> tuple[ReconciliationRun, ReconciliationRun]:
    """A run from ``requester`` and the responder's record of it, once both have the result."""
    responder = pair.che if requester is pair.chn else pair.chn
    run = await reconcile(requester, responder.party, key)
    kept = await finished(responder, run.run_id)
    await settle(pair.chn, pair.che)
    return run, kept


def report_of(run: ReconciliationRun, signer_of: GatewayNode | None = None) -> partner_pb2.ReconciliationReport:
    """The report a run keeps: the requester's is a signed DSSE envelope, the responder's the bare message."""
    report = partner_pb2.ReconciliationReport()
    if run.role is RunRole.REQUESTER:
        envelope = Envelope.from_json(run.report)
        assert envelope.payload_type == REPORT_PAYLOAD_TYPE
        if signer_of is not None:
            verify_envelope(envelope, [signer_of.exchange.signer.public_key], 1)
        report.ParseFromString(envelope.payload)
    else:
        report.ParseFromString(run.report)
    return report


Found = tuple[DifferenceKind, str, tuple[str, ...]]


def differences(report: partner_pb2.ReconciliationReport) -> list[Found]:
    return [(DifferenceKind(d.kind), d.transfer_id, tuple(d.fields)) for d in report.differences]


@contextlib.contextmanager
def database(path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection to a gateway's SQLite file, as someone tampering with it would open one."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        yield db
        db.commit()


def selections(ranges: list[tuple[int, int]]) -> list[operator_pb2.BlockSelection]:
    space = records_pb2.SerialSpace(unit_kind=SPACE.unit_kind, issuing_registry=SPACE.issuing_registry)
    return [operator_pb2.BlockSelection(space=space, start=s, end=e) for s, e in ranges]


async def move(
    pair: Pair, ranges: list[tuple[int, int]], key: str, *, back: bool = False, state: int = records_pb2.COMPLETED
) -> str:
    """Move ``ranges`` CHN->CHE (or CHE->CHN with ``back``); wait until both sides reach ``state``."""
    request = proposal_request(records_pb2.UnitBlock(), 0, 0, key)
    del request.selections[:]
    request.selections.extend(selections(ranges))
    if back:
        request.source_account = "CH-PH-0001"
        request.acquiring_account.party, request.acquiring_account.account_id = "CHN", "CN-PO-0001"
    initiating, acquiring = (pair.che, pair.chn) if back else (pair.chn, pair.che)
    async with operator(initiating) as first, operator(acquiring) as second:
        proposed = await first.ProposeTransfer(request)
        assert (await wait_for_state(first, proposed.transfer_id, TERMINAL)).state == state
        if state == records_pb2.COMPLETED:
            assert (await wait_for_state(second, proposed.transfer_id, TERMINAL)).state == state
    await settle(pair.chn, pair.che)
    return proposed.transfer_id


async def three_transfers(pair: Pair) -> list[str]:
    """Accounts, the authorization and issuance at CHN, and three completed transfers of 50 units to CHE."""
    await setup_accounts(pair)
    return [await move(pair, [(1 + 100 * i, 50 + 100 * i)], f"t{i}") for i in range(3)]


def refusal(error: grpc.aio.AioRpcError) -> tuple[ResponseCode, str]:
    detail = read_error_detail(error.trailing_metadata())
    assert detail is not None, error
    return ResponseCode(detail.code), detail.field


async def frozen(node: GatewayNode, start: int, end: int) -> list[str]:
    async with node.store.read() as tx:
        return await tx.frozen_by(SPACE, start, end)


# -- 1. honest ledgers ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_first_transfer_for_another_purpose_than_its_authorization_s_first_is_consistent(
    tmp_path: Path,
) -> None:
    """A first transfer is booked under its authorization's NDC purpose while the transfer, and the acquiring
    side, book the transfer's own purpose (OIMP here): reconciliation compares the transfer's purpose on both
    sides. (An authorization for NDC and OIMP defines another first transfer than the international transfer:
    here its authorisation, booked in the transfer's action.)"""
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        both = records_pb2.Authorization()
        both.CopyFrom(DEMO_AUTHORIZATION)
        both.authorization_id = "CHN-A-0002"
        both.purposes[:] = ["NDC", "OIMP"]
        both.first_transfer_definition = "Authorisation"  # the first international transfer is for NDC alone
        async with operator(pair.chn) as chn:
            await chn.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="both", authorization=both)
            )
        request = proposal_request(records_pb2.UnitBlock(), 0, 0, "oimp")
        del request.selections[:]
        request.selections.extend(selections([(501, 510)]))
        request.authorization_id, request.purpose = "CHN-A-0002", "OIMP"
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            proposed = await chn.ProposeTransfer(request)
            assert (await wait_for_state(chn, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            assert (await wait_for_state(che, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        await settle(pair.chn, pair.che)
        booked = {}
        for node in (pair.chn, pair.che):
            async with node.store.read() as tx:
                entries = await tx.ledger_of_action(proposed.transfer_id)
            booked[node.party] = [(e.action_type, e.purpose.value) for e in entries]
        assert booked == {
            "CHN": [(ActionType.FIRST_TRANSFER, "NDC"), (ActionType.TRANSFER, "OIMP")],
            "CHE": [(ActionType.ACQUISITION, "OIMP")],
        }
        for requester in (pair.chn, pair.che):
            run, kept = await both_sides(pair, requester, f"from-{requester.party}")
            assert (run.status, kept.status) == (Status.CONSISTENT, Status.CONSISTENT), run.detail
        for node in (pair.chn, pair.che):
            assert await frozen(node, 1, 1000) == []
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_honest_ledgers_reconcile_from_either_side(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        async with operator(pair.che) as che:
            # CHE sends CHN's units back under CHN's authorization, which it knows too.
            await che.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="auth", authorization=DEMO_AUTHORIZATION)
            )
        out = [await move(pair, [(1 + 100 * i, 50 + 100 * i), (61 + 100 * i, 70 + 100 * i)], f"t{i}") for i in range(3)]
        rejected = proposal_request(records_pb2.UnitBlock(), 0, 0, "rejected")
        del rejected.selections[:]
        rejected.selections.extend(selections([(401, 410)]))
        rejected.acquiring_account.account_id = "CH-XX-9999"  # no such account at CHE
        async with operator(pair.chn) as chn:
            refused = await chn.ProposeTransfer(rejected)
            assert (await wait_for_state(chn, refused.transfer_id, TERMINAL)).state == records_pb2.REJECTED
        back = await move(pair, [(101, 120)], "back", back=True)
        await settle(pair.chn, pair.che)

        for requester, responder in ((pair.chn, pair.che), (pair.che, pair.chn)):
            run, kept = await both_sides(pair, requester, f"from-{requester.party}")
            assert (run.status, run.detail, run.role, run.partner) == (
                Status.CONSISTENT,
                "",
                RunRole.REQUESTER,
                responder.party,
            )
            assert (kept.status, kept.role, kept.partner) == (Status.CONSISTENT, RunRole.RESPONDER, requester.party)
            report = report_of(run, requester)
            assert report_of(kept) == report, "the responder keeps the report the requester signed"
            assert (report.requester, report.responder, report.status) == (requester.party, responder.party, 2)
            assert (list(report.groups), list(report.differences), list(report.in_flight)) == ([], [], [])
            assert report.differences_omitted == 0
            # The responder lists the run among its own, as responder.
            async with operator(responder) as stub:
                listed = await stub.ListReconciliations(
                    operator_pb2.ListReconciliationsRequest(partner=requester.party)
                )
            mine = [r for r in listed.runs if r.run_id == run.run_id]
            assert [(r.role, Status(r.status), r.signed_report) for r in mine] == [
                ("responder", Status.CONSISTENT, b"")
            ]
            assert not mine[0].HasField("report"), "the list leaves reports out"
            async with operator(responder) as stub:
                got = await stub.GetReconciliation(operator_pb2.GetReconciliationRequest(run_id=run.run_id))
            assert got.report == report
        # Both sides count the same movements: the outgoing ones, the one that came back; nothing frozen.
        for node in (pair.chn, pair.che):
            async with node.store.read() as tx:
                totals = await tx.reconciliation_totals("CHE" if node is pair.chn else "CHN")
            assert {g.action: t.blocks for g, t in totals.items()} == {"CHN->CHE": 6, "CHE->CHN": 1}
            assert await frozen(node, 1, 1000) == []
        assert len({*out, back, refused.transfer_id}) == 5
    finally:
        await pair.stop()


# -- 2. each kind of difference -----------------------------------------------------------------------------


def _acquisition(db: sqlite3.Connection, transfer_id: str, assignments: str, *params: object) -> None:
    changed = db.execute(
        f"UPDATE ledger SET {assignments} WHERE action_type = 'Acquisition' AND transfer_id = ?", (*params, transfer_id)
    ).rowcount
    assert changed == 1


def _departure(db: sqlite3.Connection, transfer_id: str, assignments: str, *params: object) -> None:
    changed = db.execute(
        f"UPDATE ledger SET {assignments} WHERE action_type = 'First transfer' AND transfer_id = ?",
        (*params, transfer_id),
    ).rowcount
    assert changed == 1


def delete_acquisition(db: sqlite3.Connection, transfer_id: str) -> None:
    assert (
        db.execute("DELETE FROM ledger WHERE action_type = 'Acquisition' AND transfer_id = ?", (transfer_id,)).rowcount
        == 1
    )


def delete_departure(db: sqlite3.Connection, transfer_id: str) -> None:
    assert (
        db.execute(
            "DELETE FROM ledger WHERE action_type = 'First transfer' AND transfer_id = ?", (transfer_id,)
        ).rowcount
        == 1
    )


def duplicate_acquisition(db: sqlite3.Connection, transfer_id: str) -> None:
    # Every stored column but the key; the generated columns (hidden 2 or 3) follow from the block.
    columns = [r[1] for r in db.execute("PRAGMA table_xinfo(ledger)") if r[6] == 0 and r[1] != "entry_id"]
    names = ", ".join(columns)
    db.execute(
        f"INSERT INTO ledger ({names}) SELECT {names} FROM ledger"
        " WHERE action_type = 'Acquisition' AND transfer_id = ?",
        (transfer_id,),
    )


def terminate_at_che(db: sqlite3.Connection, transfer_id: str) -> None:
    delete_acquisition(db, transfer_id)
    assert db.execute("UPDATE transfers SET state = 5 WHERE transfer_id = ?", (transfer_id,)).rowcount == 1


@dataclass(frozen=True)
class Corruption:
    """A change to one side's store, the side that asks, and the one difference the run must report."""

    name: str
    database: str  # "chn.db" or "che.db"
    change: Callable[[sqlite3.Connection, str], None]
    kind: DifferenceKind
    fields: tuple[str, ...]
    requester: str = "CHN"
    blocks: tuple[int, int] = (1, 1)  # records of the block at the requester and at the responder
    che_state: int = records_pb2.COMPLETED  # CHE's state of the transfer


CORRUPTIONS = [
    Corruption(
        "missing at the responder", "che.db", delete_acquisition, DifferenceKind.MISSING_AT_RESPONDER, (), blocks=(1, 0)
    ),
    Corruption(
        "missing at the requester", "chn.db", delete_departure, DifferenceKind.MISSING_AT_REQUESTER, (), blocks=(0, 1)
    ),
    Corruption(
        "missing at the requester, asked by CHE",
        "che.db",
        delete_acquisition,
        DifferenceKind.MISSING_AT_REQUESTER,
        (),
        requester="CHE",
        blocks=(0, 1),
    ),
    Corruption(
        "quantity",
        "che.db",
        lambda db, t: _acquisition(db, t, "block = json_set(block, '$.end', 149), quantity = 49"),
        DifferenceKind.QUANTITY,
        ("serial_end",),
    ),
    Corruption(
        "vintage",
        "che.db",
        lambda db, t: _acquisition(db, t, "block = json_set(block, '$.vintage', 2024), vintage = 2024"),
        DifferenceKind.VINTAGE,
        ("vintage",),
    ),
    Corruption(
        "adjusted twice",
        "che.db",
        duplicate_acquisition,
        DifferenceKind.ADJUSTED_TWICE,
        ("times recorded",),
        blocks=(1, 2),
    ),
    Corruption(
        "first transfer recorded by the requester only",
        "che.db",
        lambda db, t: _acquisition(db, t, "block = json_set(block, '$.first_transferred', json('false'))"),
        DifferenceKind.FIRST_TRANSFER,
        ("first_transferred",),
    ),
    Corruption(
        "first transfer recorded by the responder only",
        "chn.db",
        lambda db, t: _departure(
            db,
            t,
            "action_type = 'Transfer', action_subtype = '',"
            " block = json_set(block, '$.first_transferred', json('false'))",
        ),
        DifferenceKind.FIRST_TRANSFER,
        ("first_transferred",),
    ),
    Corruption(
        "attributes",
        "che.db",
        lambda db, t: _acquisition(db, t, "cooperative_approach = 'CA0002'"),
        DifferenceKind.ATTRIBUTES,
        ("cooperative_approach",),
    ),
    Corruption(
        "completed here, terminated there",
        "che.db",
        terminate_at_che,
        DifferenceKind.STATE,
        ("state",),
        blocks=(1, 0),
        che_state=records_pb2.TERMINATED,
    ),
]


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
@pytest.mark.parametrize("case", CORRUPTIONS, ids=[c.name for c in CORRUPTIONS])
async def test_each_kind_of_difference_is_found_and_nothing_else(tmp_path: Path, case: Corruption) -> None:
    pair = await start_pair(tmp_path)
    try:
        transfers = await three_transfers(pair)
        requester = pair.chn if case.requester == "CHN" else pair.che
        responder = pair.che if requester is pair.chn else pair.chn
        run, kept = await both_sides(pair, requester, "before")
        assert (run.status, kept.status) == (Status.CONSISTENT, Status.CONSISTENT), run.detail
        with database(tmp_path / case.database) as db:
            case.change(db, transfers[1])

        run, kept = await both_sides(pair, requester, "after")
        assert run.status is Status.BLOCKS_INCONSISTENT, run.detail
        report = report_of(run, requester)
        assert differences(report) == [(case.kind, transfers[1], case.fields)]
        assert Status(report.status) is Status.BLOCKS_INCONSISTENT and report.differences_omitted == 0
        assert list(report.in_flight) == []
        (difference,) = report.differences
        assert (len(difference.requester_blocks), len(difference.responder_blocks)) == case.blocks
        assert {b.serial_start for b in [*difference.requester_blocks, *difference.responder_blocks]} == {101}
        assert report.groups and all(g.requester != g.responder for g in report.groups)
        # Each side's evidence: its state of the transfer and the messages it logged for it.
        states: dict[str, int] = {"CHN": records_pb2.COMPLETED, "CHE": case.che_state}
        for evidence, party in ((difference.requester_evidence, requester), (difference.responder_evidence, responder)):
            assert (evidence.transfer_id, evidence.known, evidence.state) == (transfers[1], True, states[party.party])
            assert evidence.messages and all(m.message_id for m in evidence.messages)
        # The responder keeps the same report and the same result; both freeze the block, and only it.
        assert kept.status is Status.BLOCKS_INCONSISTENT
        assert report_of(kept) == report
        for node in (pair.chn, pair.che):
            assert await frozen(node, 101, 150) == [run.run_id], node.party
            assert await frozen(node, 1, 50) == await frozen(node, 201, 250) == []
    finally:
        await pair.stop()


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
async def test_a_block_in_flight_is_not_a_difference(tmp_path: Path) -> None:
    """A transfer CHN completed whose Completion CHE has not taken in yet is listed as in flight, not as a
    difference, and nothing is frozen."""
    pair = await start_pair(tmp_path)
    try:
        transfers = await three_transfers(pair)
        with database(tmp_path / "che.db") as db:
            delete_acquisition(db, transfers[2])
            assert db.execute("UPDATE transfers SET state = 8 WHERE transfer_id = ?", (transfers[2],)).rowcount == 1
        run, kept = await both_sides(pair, pair.chn, "in-flight")
        assert (run.status, kept.status) == (Status.CONSISTENT, Status.CONSISTENT), run.detail
        report = report_of(run, pair.chn)
        assert (differences(report), list(report.in_flight)) == ([], [transfers[2]])
        assert await frozen(pair.chn, 1, 1000) == await frozen(pair.che, 1, 1000) == []
    finally:
        await pair.stop()


# -- 2g. rewritten message logs ------------------------------------------------------------------------------


def rewrite_log(path: Path) -> None:
    """Change an early entry of a gateway's append-only message log, and have its tree rebuilt."""
    with database(path) as db:
        db.execute("DROP TRIGGER message_log_no_update")
        db.execute("DROP TRIGGER message_log_no_delete")
        (envelope,) = db.execute("SELECT envelope FROM message_log WHERE log_index = 2").fetchone()
        changed = bytearray(envelope)
        changed[-1] ^= 0x01
        db.execute("UPDATE message_log SET envelope = ? WHERE log_index = 2", (bytes(changed),))
        db.execute("DELETE FROM log_tree")


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
async def test_a_responder_that_rewrote_its_message_log_stops_the_run(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        await three_transfers(pair)
        run, _ = await both_sides(pair, pair.chn, "first")
        assert run.status is Status.CONSISTENT, run.detail
        rewrite_log(tmp_path / "che.db")

        run = await reconcile(pair.chn, "CHE", "second")
        assert run.status is Status.MANUAL_INTERVENTION_REQUIRED
        assert run.detail.startswith("CHE's message log was rewritten"), run.detail
        report = report_of(run, pair.chn)
        assert (Status(report.status), report.detail, list(report.differences)) == (run.status, run.detail, [])
        kept = await finished(pair.che, run.run_id)
        assert (kept.status, kept.detail) == (run.status, f"CHN reports: {run.detail}")
        # The next run finds the same: the rewritten log is not accepted as a new starting point.
        again = await reconcile(pair.chn, "CHE", "third")
        assert again.status is Status.MANUAL_INTERVENTION_REQUIRED
        assert "CHE's message log was rewritten" in again.detail
    finally:
        await pair.stop()


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
async def test_a_requester_that_rewrote_its_message_log_is_recorded_by_the_responder(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        await three_transfers(pair)
        run, _ = await both_sides(pair, pair.chn, "first")
        assert run.status is Status.CONSISTENT, run.detail
        rewrite_log(tmp_path / "chn.db")

        run = await reconcile(pair.chn, "CHE", "second")
        kept = await finished(pair.che, run.run_id)
        for _ in range(1000):  # CHE found the rewrite at the first request; CHN's report follows
            if kept.report:
                break
            await asyncio.sleep(0.005)
            kept = await pair.che.core.gateway.get_reconciliation(run.run_id)
        assert kept.status is Status.MANUAL_INTERVENTION_REQUIRED
        assert kept.detail.startswith("CHN's message log was rewritten"), kept.detail
        async with operator(pair.che) as che:
            listed = await che.GetReconciliation(operator_pb2.GetReconciliationRequest(run_id=run.run_id))
        assert (listed.role, Status(listed.status)) == ("responder", Status.MANUAL_INTERVENTION_REQUIRED)
        # CHE keeps CHN's report beside its own finding.
        assert report_of(kept).run_id == run.run_id
        # CHE asking CHN finds the same.
        mirrored = await reconcile(pair.che, "CHN", "from-che")
        assert mirrored.status is Status.MANUAL_INTERVENTION_REQUIRED
        assert "CHN's message log was rewritten" in mirrored.detail
    finally:
        await pair.stop()


# -- 3. freezing --------------------------------------------------------------------------------------------


def back_request(ranges: list[tuple[int, int]], key: str) -> operator_pb2.ProposeTransferRequest:
    request = proposal_request(records_pb2.UnitBlock(), 0, 0, key)
    del request.selections[:]
    request.selections.extend(selections(ranges))
    request.source_account = "CH-PH-0001"
    request.acquiring_account.party, request.acquiring_account.account_id = "CHN", "CN-PO-0001"
    return request


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
async def test_differing_units_are_frozen_on_both_sides_until_resolved(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        transfers = await three_transfers(pair)
        async with operator(pair.che) as che:
            await che.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="auth", authorization=DEMO_AUTHORIZATION)
            )
            await open_account(che, "CH-USE-0001", "use", key="open-use")
        with database(tmp_path / "che.db") as db:
            _acquisition(db, transfers[0], "block = json_set(block, '$.end', 49), quantity = 49")
        run, kept = await both_sides(pair, pair.chn, "freeze")
        assert (run.status, kept.status) == (Status.BLOCKS_INCONSISTENT, Status.BLOCKS_INCONSISTENT)
        for node in (pair.chn, pair.che):
            assert await frozen(node, 10, 10) == [run.run_id]
            assert await frozen(node, 51, 1000) == []

        async with operator(pair.che) as che, operator(pair.chn) as chn:
            # CHE holds the units of the frozen block: it can neither send them back nor use them.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.ProposeTransfer(back_request([(10, 20)], "frozen-back"))
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert refusal(caught.value) == (ResponseCode.BLOCK_FROZEN, "selections[0]")
            assert run.run_id in (caught.value.details() or "")
            use = operator_pb2.UseUnitsRequest(
                idempotency_key="use-frozen",
                source_account="CH-PH-0001",
                use_account="CH-USE-0001",
                action="use towards the NDC",
                year_of_use=2025,
                selections=selections([(1, 5)]),
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.UseUnits(use)
            assert refusal(caught.value)[0] is ResponseCode.BLOCK_FROZEN
            # Other units still move, both ways, and are still used.
            await move(pair, [(301, 310)], "other-out")
            await move(pair, [(111, 120)], "other-back", back=True)
            use.idempotency_key, use.selections[0].start, use.selections[0].end = "use-other", 201, 205
            await che.UseUnits(use)

            # A resolution needs a reason.
            for reason in ("", "   "):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await che.ResolveReconciliation(
                        operator_pb2.ResolveReconciliationRequest(
                            idempotency_key=f"resolve-{len(reason)}", run_id=run.run_id, reason=reason
                        )
                    )
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "reason")
            assert (await pair.che.core.gateway.get_reconciliation(run.run_id)).status is Status.BLOCKS_INCONSISTENT
            assert await frozen(pair.che, 1, 50) == [run.run_id]

            # CHE resolves its side: its units move again, but CHN, which has not resolved, refuses them.
            reason = "CHE's acquisition of 1-50 was mistyped as 1-49; corrected by hand"
            resolved = await che.ResolveReconciliation(
                operator_pb2.ResolveReconciliationRequest(
                    idempotency_key="resolve-che", run_id=run.run_id, reason=reason
                )
            )
            assert (Status(resolved.status), resolved.resolved_reason, resolved.role) == (
                Status.RESOLVED,
                reason,
                "responder",
            )
            assert resolved.HasField("resolved_at")
            assert await frozen(pair.che, 1, 50) == [] and await frozen(pair.chn, 1, 50) == [run.run_id]
            proposed = await che.ProposeTransfer(back_request([(10, 20)], "back-to-frozen"))
            rejected = await wait_for_state(che, proposed.transfer_id, TERMINAL)
            assert rejected.state == records_pb2.REJECTED
            assert [r.code for r in rejected.rejections] == [records_pb2.BLOCK_FROZEN]
            await settle(pair.chn, pair.che)

            # CHN resolves too: the units come back.
            resolved = await chn.ResolveReconciliation(
                operator_pb2.ResolveReconciliationRequest(
                    idempotency_key="resolve-chn", run_id=run.run_id, reason=reason
                )
            )
            assert (Status(resolved.status), resolved.resolved_reason, resolved.role) == (
                Status.RESOLVED,
                reason,
                "requester",
            )
            assert resolved.signed_report, "the signed report is kept after the resolution"
            assert await frozen(pair.chn, 1, 50) == []
            await move(pair, [(10, 20)], "back-after", back=True)
            use.idempotency_key, use.selections[0].start, use.selections[0].end = "use-after", 1, 5
            await che.UseUnits(use)

            # A resolved run is not resolved again; its reason stays.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.ResolveReconciliation(
                    operator_pb2.ResolveReconciliationRequest(
                        idempotency_key="again", run_id=run.run_id, reason="again"
                    )
                )
            assert refusal(caught.value)[0] is ResponseCode.INVALID_STATE
            kept = await pair.chn.core.gateway.get_reconciliation(run.run_id)
            assert (kept.status, kept.resolved_reason) == (Status.RESOLVED, reason)
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_proposal_naming_units_frozen_at_the_acquiring_side_is_rejected(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        async with pair.che.store.transaction() as tx:
            await tx.freeze("run-by-hand", [(SPACE, 45, 55)])
        async with operator(pair.chn) as chn:
            space = records_pb2.SerialSpace(unit_kind=SPACE.unit_kind, issuing_registry=SPACE.issuing_registry)
            proposed = await chn.ProposeTransfer(proposal_request(records_pb2.UnitBlock(space=space), 50, 60, "frozen"))
            transfer = await wait_for_state(chn, proposed.transfer_id, TERMINAL)
        assert transfer.state == records_pb2.REJECTED
        assert [r.code for r in transfer.rejections] == [records_pb2.BLOCK_FROZEN]
        await move(pair, [(56, 60)], "beside")  # units beside the frozen range move
    finally:
        await pair.stop()


@contextlib.asynccontextmanager
async def capped_pair(tmp_path: Path, cap: int) -> AsyncIterator[Pair]:
    """Two gateways where CHN takes in envelopes of at most ``cap`` bytes, and CHE knows it."""

    def settings(party: str) -> ExchangeSettings:
        return ExchangeSettings(self_party=party, max_envelope_bytes=cap if party == "CHN" else 1 << 20)

    network = await start_network(tmp_path, ("CHN", "CHE"), settings=settings)
    pair = Pair(network["CHN"], network["CHE"])
    try:
        found_partner = pair.che.partners.get("CHN")
        assert found_partner is not None
        found_partner.max_envelope_bytes = cap
        yield pair
    finally:
        await network.stop()


async def exchanged(
    pair: Pair,
) -> tuple[list[partner_pb2.ReconciliationRequest], list[partner_pb2.ReconciliationReply]]:
    """CHN's reconciliation requests to CHE and CHE's replies, each in the order sent."""
    async with pair.chn.store.read() as tx:
        requests = [
            partner_pb2.Statement.FromString(m.body).reconciliation_request
            for m in await tx.list_outbox("CHE")
            if m.kind is OutboxKind.RECONCILIATION_REQUEST
        ]
    async with pair.che.store.read() as tx:
        replies = [
            partner_pb2.Statement.FromString(m.body).reconciliation_reply
            for m in await tx.list_outbox("CHN")
            if m.kind is OutboxKind.RECONCILIATION_REPLY
        ]
    return requests, replies


# -- 4. replies split by a small size cap ----------------------------------------------------------------------


@pytest.mark.sqlite_only(reason="opens the SQLite file itself")
@pytest.mark.asyncio
@pytest.mark.parametrize("cap", [4096, 6 * 1024])
async def test_a_small_size_cap_splits_the_replies_and_every_difference_is_found(tmp_path: Path, cap: int) -> None:
    async with capped_pair(tmp_path, cap) as pair:
        await setup_accounts(pair)
        # Three transfers of 20 blocks each; CHE's record of 40 of the 60 blocks is one unit short.
        transfers = [
            await move(pair, [(1 + 10 * i + 200 * t, 5 + 10 * i + 200 * t) for i in range(20)], f"many-{t}")
            for t in range(3)
        ]
        with database(tmp_path / "che.db") as db:
            rows = db.execute(
                "SELECT entry_id FROM ledger WHERE action_type = 'Acquisition' ORDER BY serial_start"
            ).fetchall()
            assert len(rows) == 60
            changed = [r[0] for i, r in enumerate(rows) if i % 3 != 2][:40]
            for entry_id in changed:
                db.execute(
                    "UPDATE ledger SET block = json_set(block, '$.end', json_extract(block, '$.end') - 1),"
                    " quantity = quantity - 1 WHERE entry_id = ?",
                    (entry_id,),
                )
        started = await pair.chn.core.gateway.start_reconciliation(Idempotency("test", "r", "split", ""), "CHE")
        deadline = time.monotonic() + 10
        while True:
            run = await pair.chn.core.gateway.get_reconciliation(started.run_id)
            async with pair.che.store.read() as tx:
                dead = await tx.list_outbox("CHN", states=(OutboxState.DEAD,))
            if run.status is not Status.RUNNING or dead or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.005)
        assert [(m.kind, m.last_error) for m in dead] == [], "CHN refused a reply for good"
        assert run.status is Status.BLOCKS_INCONSISTENT, run.detail
        kept = await finished(pair.che, run.run_id)
        report = report_of(run, pair.chn)
        found = differences(report)
        assert len(found) == 40 and report.differences_omitted == 0
        assert {f[0] for f in found} == {DifferenceKind.QUANTITY} and {f[2] for f in found} == {("serial_end",)}
        assert {f[1] for f in found} == set(transfers)
        starts = sorted(d.requester_blocks[0].serial_start for d in report.differences)
        async with pair.che.store.read() as tx:
            acquired = [e for e in await tx.list_ledger() if e.action_type.value == "Acquisition"]
        expected = sorted(e.block.start for e in acquired if e.block.quantity == 4)
        assert starts == expected and len(expected) == 40
        assert report_of(kept) == report
        for node in (pair.chn, pair.che):
            for start in expected:
                assert await frozen(node, start, start) == [run.run_id], (node.party, start)

        # The replies were split: some answered fewer nodes or transfers than were asked.
        requests, replies = await exchanged(pair)
        requests = [r for r in requests if r.run_id == run.run_id]
        replies = [r for r in replies if r.run_id == run.run_id]
        assert len(requests) == len(replies) >= 4
        asked_and_answered = list(zip(requests, replies, strict=True))
        assert all(a.refusal == 0 and a.phase == q.phase for q, a in asked_and_answered)
        assert any(len(a.nodes) < len(q.nodes) for q, a in asked_and_answered if q.phase == BLOCKS)
        # A transfer's listed messages give way first, so that its state fits beside the others.
        assert any(
            len(a.transfers) < len(q.transfer_ids) or any(e.messages_omitted for e in a.transfers)
            for q, a in asked_and_answered
            if q.phase == AUDIT
        )
        assert all(a.ByteSize() <= cap - ENVELOPE_MARGIN_BYTES - 512 for a in replies)


def crowded_bucket(template: LedgerEntry, count: int, transfer_ids: Sequence[str] = ()) -> list[LedgerEntry]:
    """``count`` acquisitions like ``template``, each of one unit and of a transfer of its own (``transfer_ids``
    where given, else new ones), whose blocks all fall in one bucket of the tree. Each block's serial is tried
    until it lands there: 65,536 tries a block on average, so the identity hash of the tries shares the state of
    its prefix."""
    space = template.block.space
    entries: list[LedgerEntry] = []
    target: int | None = None
    serial = 1_000_000
    while len(entries) < count:
        transfer_id = transfer_ids[len(entries)] if transfer_ids else str(uuid.UUID(int=len(entries) + 1))
        identity = [transfer_id, space.unit_kind, space.issuing_registry, space.issuance]
        prefix = hashlib.sha256(tree._KEY_DOMAIN + tree._encode_strings(identity))
        while True:
            serial += 1
            text = str(serial).encode()
            key = prefix.copy()
            key.update(struct.pack(">I", len(text)) + text)
            bucket = int.from_bytes(key.digest()[:4], "big") >> (32 - tree.BUCKET_BITS)
            target = bucket if target is None else target
            if bucket == target:
                break
        block = dataclasses.replace(template.block, start=serial, end=serial)
        entries.append(dataclasses.replace(template, entry_id=0, transfer_id=transfer_id, block=block))
    return entries


async def unsent_acquisitions(pair: Pair, count: int) -> NodeRef:
    """One transfer, then ``count`` acquisitions at CHE that CHN never sent, all in one bucket; that bucket."""
    await setup_accounts(pair)
    await move(pair, [(1, 5)], "t0")
    async with pair.che.store.transaction() as tx:
        (acquired,) = [e for e in await tx.list_ledger() if e.action_type is ActionType.ACQUISITION]
        crowded = crowded_bucket(acquired, count)
        await tx.append_ledger(crowded)
    blocks = [found[1] for found in (reconciled_block(e, "CHE") for e in crowded) if found is not None]
    (bucket,) = {NodeRef(b.group, tree.DEPTH, b.bucket) for b in blocks}
    assert len(blocks) == count
    return bucket


@pytest.mark.asyncio
async def test_a_bucket_that_cannot_fit_beside_its_transfers_states_stops_the_run_at_once(tmp_path: Path) -> None:
    cap = 4096

    async with capped_pair(tmp_path, cap) as pair:
        # The bucket's view fits in one reply to CHN, and so do the states of its 24 transfers, but not both: a
        # reply has room for the bucket only beside the states, which CHN needs read with it.
        bucket = await unsent_acquisitions(pair, 24)
        run = await reconcile(pair.chn, "CHE", "crowded")
        assert run.status is Status.MANUAL_INTERVENTION_REQUIRED, run.detail
        assert f"bucket {bucket.prefix} of group CCER CN-CCER 2025 CHN->CHE NDC" in run.detail, run.detail
        assert "the states of its 24 transfers" in run.detail and "max_envelope_bytes" in run.detail, run.detail
        assert run.detail.startswith("CHE refused to answer: "), run.detail
        sizes = re.search(r"takes (\d+) bytes and a reconciliation message to CHN has room for (\d+)", run.detail)
        assert sizes is not None and int(sizes[1]) > int(sizes[2]), run.detail
        report = report_of(run, pair.chn)
        assert (Status(report.status), list(report.differences)) == (run.status, [])
        assert await frozen(pair.chn, 1, 2_000_000) == []

        # The bucket was asked once: CHE refused it, as the same request would get the same answer.
        requests, replies = await exchanged(pair)
        audit = [(q, a) for q, a in zip(requests, replies, strict=True) if q.phase == AUDIT]
        assert [(len(q.nodes), len(q.transfer_ids)) for q, _ in audit] == [(1, 24)]
        assert [ResponseCode(a.refusal) for _, a in audit] == [ResponseCode.ENVELOPE_TOO_LARGE]


@pytest.mark.asyncio
async def test_a_bucket_of_more_transfers_than_a_request_may_name_stops_the_run_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconciling, "MAX_TRANSFERS_PER_REQUEST", 3)
    async with capped_pair(tmp_path, 1 << 20) as pair:
        # Asking the states of the bucket's 4 transfers with it takes more than one request may name.
        bucket = await unsent_acquisitions(pair, 4)
        run = await reconcile(pair.chn, "CHE", "crowded")
        assert run.status is Status.TOTALS_INCONSISTENT, run.detail
        assert f"bucket {bucket.prefix} of group CCER CN-CCER 2025 CHN->CHE NDC" in run.detail, run.detail
        assert "differing blocks of 4 transfers" in run.detail and "3 at the most" in run.detail, run.detail
        report = report_of(run, pair.chn)
        assert (Status(report.status), list(report.differences)) == (run.status, [])
        assert await frozen(pair.chn, 1, 2_000_000) == []
        requests, replies = await exchanged(pair)
        assert [q.phase for q in requests if q.phase == AUDIT] == [], "a request the partner must refuse was sent"
        assert all(a.refusal == 0 for a in replies)


@pytest.mark.asyncio
async def test_a_bucket_asked_alone_comes_with_every_state_when_their_messages_give_way(tmp_path: Path) -> None:
    cap = 6144

    async with capped_pair(tmp_path, cap) as pair:
        await setup_accounts(pair)
        # Sixteen real transfers, whose statements and receipts CHE's log holds, and at CHE one acquisition more
        # of each, all in one bucket: the bucket and the sixteen states fit in a reply to CHN only if most of
        # their listed messages give way.
        transfer_ids = [await move(pair, [(10 * i + 1, 10 * i + 1)], f"t{i}") for i in range(16)]
        async with pair.che.store.transaction() as tx:
            acquired = next(e for e in await tx.list_ledger() if e.action_type is ActionType.ACQUISITION)
            crowded = crowded_bucket(acquired, len(transfer_ids), transfer_ids)
            await tx.append_ledger(crowded)
        blocks = [reconciled_block(e, "CHE") for e in crowded]
        assert len({b[1].bucket for b in blocks if b is not None}) == 1
        run = await reconcile(pair.chn, "CHE", "lone-bucket")
        assert run.status is Status.BLOCKS_INCONSISTENT, run.detail
        report = report_of(run, pair.chn)
        assert len(report.differences) == len(crowded)

        requests, replies = await exchanged(pair)
        lone = [
            a
            for q, a in zip(requests, replies, strict=True)
            if q.phase == AUDIT and len(q.nodes) == 1 and len(q.transfer_ids) == len(transfer_ids)
        ]
        assert lone, "the bucket was never asked alone with its transfers"
        answer = lone[-1]
        assert (answer.refusal, len(answer.nodes), len(answer.transfers)) == (0, 1, len(transfer_ids))
        assert any(e.messages_omitted for e in answer.transfers)
        # Messages come back in order, as many as the room holds: the first transfers keep theirs.
        assert answer.transfers[0].messages
        assert all(a.ByteSize() <= cap - ENVELOPE_MARGIN_BYTES - 512 for a in replies)


def _trail(transfer_id: str, messages: int) -> partner_pb2.TransferEvidence:
    evidence = partner_pb2.TransferEvidence(transfer_id=transfer_id, known=True, state=records_pb2.COMPLETED)
    for i in range(messages):
        evidence.messages.append(
            partner_pb2.LoggedMessage(
                log_index=i + 1,
                kind="statement",
                message_id=f"m-{i}",
                envelope_sha256=bytes(32),
                inclusion_proof=[bytes(32)] * 10,
            )
        )
    return evidence


def test_a_transfers_messages_give_way_to_fit_its_state_in_the_room_left() -> None:
    # Two transfers whose trails do not fit one reply together: the requester takes a bucket only with the
    # states of all its transfers in one reply, so answering only the first would get the same request for ever.
    first, second = _trail("t-1", 6), _trail("t-2", 6)
    reply = partner_pb2.ReconciliationReply(run_id="run", phase=AUDIT)
    reply.transfers.append(first)
    room = second.ByteSize() // 2
    reconciling._leave_out_messages(second, room)
    assert 0 < len(second.messages) < 6 and second.messages_omitted == 6 - len(second.messages)
    assert second.ByteSize() <= room and len(first.messages) == 6  # the earlier trail stays whole
    # The most it keeps: one message more would not fit.
    fuller = _trail("t-2", len(second.messages) + 1)
    fuller.messages_omitted = second.messages_omitted - 1
    assert fuller.ByteSize() + 2 + 6 > room
    # No room even for the bare state: every message is left out, and counted.
    bare = _trail("t-3", 6)
    reconciling._leave_out_messages(bare, 10)
    assert (len(bare.messages), bare.messages_omitted) == (0, 6)


# -- 5. hostile replies and requests ----------------------------------------------------------------------------


async def crafter_for(pair: Pair) -> Crafter:
    """A crafter that plays CHE, with CHE's real key, continuing the channel from where CHN stands."""
    async with pair.chn.store.read() as tx:
        channel = await tx.incoming_channel("CHE")
    return Crafter(signer=pair.che.exchange.signer, sender="CHE", receiver="CHN", channel=channel)


async def send(pair: Pair, crafter: Crafter, **body: object) -> partner_pb2.Receipt:
    payload, _ = crafter.statement(**body)
    return await deliver_raw(pair.chn, wire.envelope_to_bytes(crafter.envelope(payload)))


def reply(run_id: str, phase: int, **fields: object) -> partner_pb2.ReconciliationReply:
    return partner_pb2.ReconciliationReply(run_id=run_id, phase=phase, head=EMPTY_HEAD, **fields)  # type: ignore[arg-type]


@dataclass
class Hostile:
    """Crafted replies to a run at CHN: all but the last leave it running; the last stops it, saying ``says``."""

    name: str
    replies: Callable[[str, list[ReconciledBlock]], list[partner_pb2.ReconciliationReply]]
    says: str


ROOT = NodeRef(GROUP, 0, 0)


def _totals(digest: bytes = bytes(32), quantity: str = "50") -> partner_pb2.GroupTotals:
    return partner_pb2.GroupTotals(
        group=group_to_proto(GROUP), totals=partner_pb2.ReconciliationTotals(blocks=1, quantity=quantity, digest=digest)
    )


def _listed(
    blocks: list[ReconciledBlock], totals: Totals | None = None, ref: NodeRef = ROOT
) -> partner_pb2.TreeNodeView:
    return partner_pb2.TreeNodeView(
        ref=ref_to_proto(ref),
        totals=totals_to_proto(Totals.of(blocks) if totals is None else totals),
        listed=True,
        blocks=[block_to_proto(b) for b in blocks],
    )


def _to_audit(run_id: str) -> list[partner_pb2.ReconciliationReply]:
    """Replies that take a run to phase 3: CHE says it has nothing, so every block of CHN's differs."""
    return [reply(run_id, TOTALS), reply(run_id, BLOCKS, nodes=[_listed([])])]


def _evidence(transfer_id: str, **fields: object) -> partner_pb2.TransferEvidence:
    return partner_pb2.TransferEvidence(transfer_id=transfer_id, known=True, state=records_pb2.COMPLETED, **fields)  # type: ignore[arg-type]


def _message(**fields: object) -> partner_pb2.LoggedMessage:
    base: dict[str, object] = {
        "log_index": 1,
        "direction": "in",
        "kind": "statement",
        "message_id": "m-1",
        "envelope_sha256": bytes(32),
    }
    return partner_pb2.LoggedMessage(**{**base, **fields})  # type: ignore[arg-type]


HOSTILE = [
    Hostile(
        "malformed digest",
        lambda run, _: [reply(run, TOTALS, totals=[_totals(digest=b"\x01" * 5)])],
        "reconciliation_reply.totals[0].totals.digest: 5 bytes, not 32",
    ),
    Hostile(
        "quantity not a number",
        lambda run, _: [reply(run, TOTALS, totals=[_totals(quantity="-50")])],
        "reconciliation_reply.totals[0].totals.quantity",
    ),
    Hostile(
        "group with a control character",
        lambda run, _: [
            reply(
                run,
                TOTALS,
                totals=[
                    partner_pb2.GroupTotals(
                        group=partner_pb2.ReconciliationGroup(unit_kind="a\x1fb"), totals=_totals().totals
                    )
                ],
            )
        ],
        "reconciliation_reply.totals[0].group.unit_kind",
    ),
    Hostile(
        "head root of the wrong size",
        lambda run, _: [
            partner_pb2.ReconciliationReply(
                run_id=run, phase=TOTALS, head=partner_pb2.TreeHead(tree_size=3, root_hash=b"x")
            )
        ],
        "reconciliation_reply.head.root_hash",
    ),
    Hostile(
        "consistency proof too long",
        lambda run, _: [reply(run, TOTALS, consistency_proof=[bytes(32)] * 65)],
        "reconciliation_reply.consistency_proof",
    ),
    Hostile("phase mismatch", lambda run, _: [reply(run, BLOCKS)], "CHE answered phase 2 while phase 1 was asked"),
    Hostile(
        "refusal",
        lambda run, _: [reply(run, TOTALS, refusal=records_pb2.INVALID_ARGUMENT, detail="not today")],
        "CHE refused to answer: not today",
    ),
    Hostile(
        "listed blocks that do not add up",
        lambda run, mine: [reply(run, TOTALS), reply(run, BLOCKS, nodes=[_listed(mine, Totals(1, 50, bytes(32)))])],
        "reconciliation_reply.nodes[0].totals: the totals are not those of the blocks listed",
    ),
    Hostile(
        "listed block outside the node",
        lambda run, mine: [
            reply(run, TOTALS),
            reply(run, BLOCKS, nodes=[_listed([dataclasses.replace(mine[0], vintage=1999)])]),
        ],
        "reconciliation_reply.nodes[0].blocks[0]: the block does not lie under the node",
    ),
    Hostile(
        "listed block with serials reversed",
        lambda run, mine: [
            reply(run, TOTALS),
            reply(
                run,
                BLOCKS,
                nodes=[
                    _listed([dataclasses.replace(mine[0], serial_start=50, serial_end=1)], Totals(1, 50, bytes(32)))
                ],
            ),
        ],
        "reconciliation_reply.nodes[0].blocks[0]: serial_end 1 precedes serial_start 50",
    ),
    Hostile(
        "node not asked",
        lambda run, _: [reply(run, TOTALS), reply(run, BLOCKS, nodes=[_listed([], ref=NodeRef(GROUP, 1, 3))])],
        "CHE answered for a node not asked",
    ),
    Hostile(
        "node that does not exist",
        lambda run, _: [
            reply(run, TOTALS),
            reply(
                run,
                BLOCKS,
                nodes=[
                    partner_pb2.TreeNodeView(
                        ref=partner_pb2.TreeNodeRef(group=group_to_proto(GROUP), level=9, prefix=2**32 - 1)
                    )
                ],
            ),
        ],
        "reconciliation_reply.nodes[0].ref: level 9 is outside 0..4",
    ),
    Hostile(
        "bucket not listed",
        lambda run, _: [
            reply(run, TOTALS),
            reply(
                run,
                BLOCKS,
                nodes=[
                    partner_pb2.TreeNodeView(
                        ref=ref_to_proto(ROOT),
                        totals=totals_to_proto(Totals()),
                        children=[partner_pb2.ChildTotals(prefix=99, totals=totals_to_proto(Totals()))],
                    )
                ],
            ),
        ],
        "reconciliation_reply.nodes[0].children[0].prefix",
    ),
    Hostile(
        "no node answered",
        lambda run, _: [reply(run, TOTALS), reply(run, BLOCKS)],
        "CHE answered none of the 1 nodes asked",
    ),
    Hostile(
        "transfer not asked",
        lambda run, _: [*_to_audit(run), reply(run, AUDIT, transfers=[_evidence("t-unasked")])],
        "CHE answered for a transfer not asked: 't-unasked'",
    ),
    Hostile(
        "malformed message digest",
        lambda run, mine: [
            *_to_audit(run),
            reply(run, AUDIT, transfers=[_evidence(mine[0].transfer_id, messages=[_message(envelope_sha256=b"abc")])]),
        ],
        "reconciliation_reply.transfers[0].messages[0].envelope_sha256 is not 32 bytes",
    ),
    Hostile(
        "message outside the signed log head",
        lambda run, mine: [
            *_to_audit(run),
            reply(run, AUDIT, transfers=[_evidence(mine[0].transfer_id, messages=[_message()])]),
        ],
        "is not in the log head of 0 entries it signed",
    ),
    Hostile(
        # What a partner of an earlier version answers when a bucket asked alone does not fit beside the states.
        "lone bucket left out",
        lambda run, mine: [*_to_audit(run), reply(run, AUDIT, transfers=[_evidence(mine[0].transfer_id)])],
        "CHE left out bucket ",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
async def test_a_hostile_reply_ends_the_run_for_a_person_to_read(
    tmp_path: Path, case: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        await move(pair, [(1, 50)], "t0")
        async with pair.chn.store.transaction() as tx:
            await tx.fold_reconciliation("CHN")
            mine = await tx.reconciliation_blocks("CHE", ROOT)
        assert len(mine) == 1
        # CHN's requests wait in its outbox: only the crafted replies answer them.
        await pair.chn.outbox.stop()
        crafter = await crafter_for(pair)

        stray = await send(pair, crafter, reconciliation_reply=reply("no-such-run", TOTALS))
        assert (ResponseCode(stray.code), stray.taken_in) == (ResponseCode.INVALID_ARGUMENT, True)
        assert "no reconciliation run 'no-such-run'" in stray.detail

        gateway = pair.chn.core.gateway
        run = await gateway.start_reconciliation(Idempotency("test", "reconcile", "hostile", ""), "CHE")
        replies = case.replies(run.run_id, mine)
        for i, answer in enumerate(replies):
            receipt = await send(pair, crafter, reconciliation_reply=answer)
            assert (ResponseCode(receipt.code), receipt.taken_in) == (ResponseCode.OK, True), receipt.detail
            status = (await gateway.get_reconciliation(run.run_id)).status
            assert status is (Status.RUNNING if i < len(replies) - 1 else Status.MANUAL_INTERVENTION_REQUIRED), i
        ended = await gateway.get_reconciliation(run.run_id)
        assert case.says in ended.detail
        report = report_of(ended, pair.chn)
        assert (Status(report.status), report.detail, list(report.differences)) == (ended.status, ended.detail, [])
        assert await frozen(pair.chn, 1, 1000) == []
        # A late reply to the ended run is taken in and ignored; the channel goes on.
        late = await send(pair, crafter, reconciliation_reply=reply(run.run_id, TOTALS))
        assert (ResponseCode(late.code), late.taken_in) == (ResponseCode.OK, True), late.detail
        assert (await gateway.get_reconciliation(run.run_id)).status is Status.MANUAL_INTERVENTION_REQUIRED
        assert not [r for r in caplog.records if r.exc_info is not None]
    finally:
        await pair.stop()


@dataclass
class HostileRequest:
    name: str
    request: Callable[[partner_pb2.ReconciliationRequest], None]
    code: ResponseCode
    says: str


def _nodes(*refs: partner_pb2.TreeNodeRef) -> Callable[[partner_pb2.ReconciliationRequest], None]:
    def build(request: partner_pb2.ReconciliationRequest) -> None:
        request.phase = BLOCKS
        request.nodes.extend(refs)

    return build


def _many_nodes(request: partner_pb2.ReconciliationRequest) -> None:
    request.phase = BLOCKS
    request.nodes.extend(partner_pb2.TreeNodeRef() for _ in range(100_000))


def _many_transfers(request: partner_pb2.ReconciliationRequest) -> None:
    request.phase = AUDIT
    request.transfer_ids.extend(f"t-{i}" for i in range(201))


def _audit(*refs: NodeRef, transfer_ids: Sequence[str] = ()) -> Callable[[partner_pb2.ReconciliationRequest], None]:
    def build(request: partner_pb2.ReconciliationRequest) -> None:
        request.phase = AUDIT
        request.nodes.extend(ref_to_proto(r) for r in refs)
        request.transfer_ids.extend(transfer_ids)

    return build


def _bad_transfer_id(request: partner_pb2.ReconciliationRequest) -> None:
    request.phase = AUDIT
    request.transfer_ids.append("a b\n")


def _set(**fields: object) -> Callable[[partner_pb2.ReconciliationRequest], None]:
    def build(request: partner_pb2.ReconciliationRequest) -> None:
        for name, value in fields.items():
            if isinstance(value, partner_pb2.TreeHead):
                getattr(request, name).CopyFrom(value)
            else:
                setattr(request, name, value)

    return build


HOSTILE_REQUESTS = [
    HostileRequest(
        "huge level",
        _nodes(partner_pb2.TreeNodeRef(group=group_to_proto(GROUP), level=2**32 - 1, prefix=0)),
        ResponseCode.MALFORMED_PAYLOAD,
        "reconciliation_request.nodes[0]: level 4294967295 is outside 0..4",
    ),
    HostileRequest(
        "huge prefix",
        _nodes(ref_to_proto(ROOT), partner_pb2.TreeNodeRef(group=group_to_proto(GROUP), level=1, prefix=2**32 - 1)),
        ResponseCode.MALFORMED_PAYLOAD,
        "reconciliation_request.nodes[1]: prefix 4294967295 does not exist at level 1",
    ),
    HostileRequest("100k node refs", _many_nodes, ResponseCode.INVALID_ARGUMENT, "more than 2000 nodes asked at once"),
    HostileRequest(
        "201 transfers", _many_transfers, ResponseCode.INVALID_ARGUMENT, "more than 200 transfers asked at once"
    ),
    HostileRequest(
        "audit of the root",
        _audit(ROOT, transfer_ids=["t-1"]),
        ResponseCode.INVALID_ARGUMENT,
        f"the audit phase asks for buckets (level {tree.DEPTH} of the tree), not a node of level 0",
    ),
    HostileRequest(
        "audit of a bucket twice",
        _audit(NodeRef(GROUP, tree.DEPTH, 5), NodeRef(GROUP, tree.DEPTH, 5)),
        ResponseCode.INVALID_ARGUMENT,
        "a bucket is asked twice (field reconciliation_request.nodes[1])",
    ),
    HostileRequest(
        "audit of a transfer twice",
        _audit(NodeRef(GROUP, tree.DEPTH, 5), transfer_ids=["t-1", "t-2", "t-1"]),
        ResponseCode.INVALID_ARGUMENT,
        "a transfer is asked twice (field reconciliation_request.transfer_ids[2])",
    ),
    HostileRequest("unknown phase", _set(phase=7), ResponseCode.MALFORMED_PAYLOAD, "unknown phase 7"),
    HostileRequest(
        "malformed head",
        _set(head=partner_pb2.TreeHead(tree_size=1, root_hash=b"short")),
        ResponseCode.MALFORMED_PAYLOAD,
        "reconciliation_request.head.root_hash",
    ),
    *(
        HostileRequest(
            f"consistency from {value}",
            _set(consistency_from=value),
            ResponseCode.MALFORMED_PAYLOAD,
            f"reconciliation_request.consistency_from: {value} is beyond 2**63 - 1",
        )
        for value in (2**63, 2**64 - 1)
    ),
    HostileRequest(
        "transfer ID not an identifier",
        _bad_transfer_id,
        ResponseCode.INVALID_ARGUMENT,
        "the identifier contains U+000A (a control character)",
    ),
]


@pytest.mark.asyncio
async def test_hostile_requests_are_answered_with_a_refusal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        await move(pair, [(1, 50)], "t0")
        await pair.chn.outbox.stop()  # CHN's answers wait in its outbox, to be read there
        crafter = await crafter_for(pair)
        for i, case in enumerate(HOSTILE_REQUESTS):
            request = partner_pb2.ReconciliationRequest(run_id=f"hostile-{i}", phase=TOTALS, head=EMPTY_HEAD)
            case.request(request)
            receipt = await send(pair, crafter, reconciliation_request=request)
            assert (ResponseCode(receipt.code), receipt.taken_in) == (ResponseCode.OK, True), (
                case.name,
                receipt.detail,
            )
            async with pair.chn.store.read() as tx:
                answers = [
                    partner_pb2.Statement.FromString(m.body).reconciliation_reply
                    for m in await tx.list_outbox("CHE")
                    if m.kind is OutboxKind.RECONCILIATION_REPLY
                ]
            (answer,) = [a for a in answers if a.run_id == request.run_id]
            assert (ResponseCode(answer.refusal), answer.phase) == (case.code, request.phase), case.name
            assert case.says in answer.detail, (case.name, answer.detail)
            assert (list(answer.totals), list(answer.nodes), list(answer.transfers)) == ([], [], [])
            assert len(answer.head.root_hash) == 32
        # A sound request on the same channel is still answered.
        request = partner_pb2.ReconciliationRequest(run_id="sound", phase=TOTALS, head=EMPTY_HEAD)
        receipt = await send(pair, crafter, reconciliation_request=request)
        assert ResponseCode(receipt.code) is ResponseCode.OK
        async with pair.chn.store.read() as tx:
            answers = [
                partner_pb2.Statement.FromString(m.body).reconciliation_reply
                for m in await tx.list_outbox("CHE")
                if m.kind is OutboxKind.RECONCILIATION_REPLY
            ]
        (sound,) = [a for a in answers if a.run_id == "sound"]
        assert sound.refusal == 0 and [t.totals.blocks for t in sound.totals] == [1]
        assert not [r for r in caplog.records if r.exc_info is not None]
    finally:
        await pair.stop()


# -- a product bug: runs from both sides at once -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_runs_started_by_both_sides_at_once_stay_consistent(tmp_path: Path) -> None:
    pair = await start_pair(tmp_path)
    try:
        await three_transfers(pair)
        run, _ = await both_sides(pair, pair.chn, "first")
        assert run.status is Status.CONSISTENT
        # CHN's run reaches CHE, whose answer waits in its outbox; CHE starts its own run meanwhile. Then CHN gets
        # CHE's answer and finishes its run: its report reaches CHE before CHN's answer to CHE's run does.
        await pair.che.outbox.stop()
        from_chn = await pair.chn.core.gateway.start_reconciliation(Idempotency("test", "r", "chn", ""), "CHE")
        deadline = time.monotonic() + 10
        while True:
            async with pair.che.store.read() as tx:
                if await tx.get_reconciliation(from_chn.run_id) is not None:
                    break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        from_che = await pair.che.core.gateway.start_reconciliation(Idempotency("test", "r", "che", ""), "CHN")
        pair.che.outbox.start()
        pair.che.outbox.wake()
        che_run = await finished(pair.che, from_che.run_id)
        chn_run = await finished(pair.chn, from_chn.run_id)
        assert (che_run.status, che_run.detail) == (Status.CONSISTENT, "")
        assert (chn_run.status, chn_run.detail) == (Status.CONSISTENT, "")
    finally:
        await pair.stop()


# -- what a partner may not decide about a run here -------------------------------------------------------------


def _report(run_id: str, status: int, **fields: object) -> partner_pb2.ReconciliationReport:
    sides: dict[str, object] = {"requester": "CHE", "responder": "CHN"}
    return partner_pb2.ReconciliationReport(
        run_id=run_id,
        status=status,  # type: ignore[arg-type]
        requester_head=EMPTY_HEAD,
        responder_head=EMPTY_HEAD,
        **{**sides, **fields},  # type: ignore[arg-type]
    )


@pytest.mark.asyncio
async def test_a_partner_cannot_reopen_rewrite_or_resolve_a_run_here(tmp_path: Path) -> None:
    """CHN answers CHE's runs. A run with its report, or resolved by CHN's operator, stays as decided: a request
    reusing its ID, or a late report, is refused naming the run ID. A report says a result, never RESOLVED or
    ABANDONED, which are CHN's own decisions. Each receipt names the field."""
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        moved = await move(pair, [(1, 50)], "t0")
        honest = await reconcile(pair.che, "CHN", "r1")
        assert honest.status is Status.CONSISTENT
        await settle(pair.chn, pair.che)

        async def told(**statement: object) -> tuple[ResponseCode, str]:
            receipt = await send(pair, await crafter_for(pair), **statement)
            assert receipt.taken_in
            return ResponseCode(receipt.code), receipt.detail

        async def status(run_id: str) -> Status:
            async with pair.chn.store.read() as tx:
                found = await tx.get_reconciliation(run_id)
            assert found is not None
            return found.status

        async with pair.chn.store.read() as tx:
            known = await tx.partner_log_head("CHE")
        assert known is not None
        rewritten = partner_pb2.ReconciliationRequest(
            phase=TOTALS,
            head=partner_pb2.TreeHead(tree_size=known.tree_size + 3, root_hash=b"\x07" * 32),
            consistency_from=known.tree_size,
            consistency_proof=[b"\x01" * 32],
        )
        # A finished run's ID again, with a head that is no extension of the one CHE showed: the run keeps its result.
        again = partner_pb2.ReconciliationRequest()
        again.CopyFrom(rewritten)
        again.run_id = honest.run_id
        assert (await told(reconciliation_request=again))[0] is ResponseCode.OK  # a request is answered by a reply
        async with pair.chn.store.read() as tx:
            [answer] = [m for m in await tx.list_outbox("CHE") if m.kind is OutboxKind.RECONCILIATION_REPLY][-1:]
        refused = partner_pb2.Statement.FromString(answer.body).reconciliation_reply
        assert refused.run_id == honest.run_id and ResponseCode(refused.refusal) is ResponseCode.INVALID_STATE
        assert refused.detail.endswith("(field reconciliation_request.run_id)"), refused.detail
        assert await status(honest.run_id) is Status.CONSISTENT

        # A report may not say RESOLVED or ABANDONED.
        same_head = partner_pb2.TreeHead(tree_size=known.tree_size, root_hash=known.root_hash)
        opening = partner_pb2.ReconciliationRequest(
            run_id="new", phase=TOTALS, head=same_head, consistency_from=known.tree_size
        )
        assert (await told(reconciliation_request=opening))[0] is ResponseCode.OK
        for decided in (Status.RESOLVED, Status.ABANDONED, Status.RUNNING):
            code, detail = await told(reconciliation_report=_report("new", decided))
            assert code is ResponseCode.MALFORMED_PAYLOAD, detail
            assert detail.endswith("(field reconciliation_report.status)"), detail
        assert await status("new") is Status.RUNNING
        code, detail = await told(reconciliation_report=_report("new", Status.CONSISTENT, requester="EVL"))
        assert detail.endswith("(field reconciliation_report.requester)"), detail

        # A run CHN's operator resolved stays resolved: a late report neither reopens it nor freezes units again.
        rewritten.run_id = "rewritten"
        await told(reconciliation_request=rewritten)
        assert await status("rewritten") is Status.MANUAL_INTERVENTION_REQUIRED
        async with operator(pair.chn) as chn:
            await chn.ResolveReconciliation(
                operator_pb2.ResolveReconciliationRequest(idempotency_key="k", run_id="rewritten", reason="a restore")
            )
        block = ReconciledBlock(
            moved, "CHN", "CHE", "CCER", "CN-CCER", "", 1, 50, 2025, "CA0001", "CHN-A-0001", "NDC", True, "CHN"
        )
        difference = partner_pb2.BlockDifference(
            kind=partner_pb2.QUANTITY, transfer_id=moved, requester_blocks=[block_to_proto(block)]
        )
        code, detail = await told(
            reconciliation_report=_report("rewritten", Status.BLOCKS_INCONSISTENT, differences=[difference])
        )
        assert code is ResponseCode.INVALID_STATE and "was resolved by an operator" in detail, detail
        assert await status("rewritten") is Status.RESOLVED
        assert await frozen(pair.chn, 1, 50) == []
    finally:
        await pair.stop()
