"""The walking-skeleton demonstration: two gateways on loopback move part of a CCER block across a border.

`start_pair` is also what the integration tests and the benchmark use to start two real gateways.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, partner_pb2, records_pb2
from gateway.domain.adjustments import AdjustmentSettings, AveragingDivisor
from gateway.domain.protocol import ACCEPT_ALL, DecisionPolicy
from gateway.domain.records import AdjustmentMethod
from gateway.harness import start_network
from gateway.node import GatewayNode, utc_now
from gateway.usecases.base import LedgerOptions

DEMO_CCER_REGISTRY_CODE = "CN-CCER"
"""The issuing-registry code the demo configures for CCER units (the nomenclature has none; see README)."""


@dataclass
class Pair:
    """A CHN gateway and a CHE gateway that trust each other."""

    chn: GatewayNode
    che: GatewayNode

    async def stop(self) -> None:
        """Stop both gateways."""
        await asyncio.gather(self.chn.stop(), self.che.stop())


DEMO_LEDGER = LedgerOptions(
    adjustments=AdjustmentSettings(
        method=AdjustmentMethod.AVERAGING,
        first_year=2021,
        last_year=2030,
        averaging_divisor=AveragingDivisor.ELAPSED_YEARS,
    )
)
"""The demo's NDC period and method: a single-year NDC for 2030, averaging over the elapsed years."""


async def start_pair(
    workdir: Path,
    *,
    policy: DecisionPolicy = ACCEPT_ALL,
    clock: Callable[[], dt.datetime] = utc_now,
    ledger: LedgerOptions = DEMO_LEDGER,
) -> Pair:
    """Start a CHN and a CHE gateway on loopback port 0, each with a fresh SQLite file and a PEM key."""
    network = await start_network(workdir, ("CHN", "CHE"), policy=policy, clock=clock, ledger=lambda _: ledger)
    return Pair(network["CHN"], network["CHE"])


def demo_block(start: int = 1, end: int = 1000) -> records_pb2.UnitBlock:
    """The demo's CCER issuance block."""
    return records_pb2.UnitBlock(
        space=records_pb2.SerialSpace(unit_kind="CCER", issuing_registry=DEMO_CCER_REGISTRY_CODE),
        start=start,
        end=end,
        vintage=2025,
        project_id="DEMO-P-0001",
        methodology_code="CCER-14-002-V01",
        mitigation_type="Removals",
        registry_reference="demo-issuance-0001",
    )


DEMO_AUTHORIZATION = records_pb2.Authorization(
    authorization_id="CHN-A-0001",
    date="2026-01-15",
    version="1.0",
    cooperative_approach="CA0001",
    metric="GHG",
    purposes=["NDC"],
    authorized_quantity=5000,
    timeframe_start=2021,
    timeframe_end=2030,
    first_transfer_definition="First international transfer",
    sectors=["Forestry and land use"],
    activity_types=["Afforestation and reforestation"],
    authorized_parties=["CHN", "CHE"],
)


async def wait_for_state(
    stub: operator_pb2_grpc.OperatorServiceAsyncStub, transfer_id: str, states: Collection[int], timeout: float = 10.0
) -> records_pb2.Transfer:
    """Poll a gateway until the transfer reaches one of ``states``; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            transfer = await stub.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))
            if transfer.state in states:
                return transfer
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"transfer {transfer_id} did not reach {sorted(states)} in {timeout} s")
        await asyncio.sleep(0.005)


def _dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True)
    return result


async def run_slice(pair: Pair, say: Callable[[str], None]) -> dict[str, Any]:
    """Run the cross-border slice through both operator APIs; return the summary the CLI prints."""
    chn_channel = grpc.aio.insecure_channel(pair.chn.operator_address)
    che_channel = grpc.aio.insecure_channel(pair.che.operator_address)
    chn = operator_pb2_grpc.OperatorServiceStub(chn_channel)
    che = operator_pb2_grpc.OperatorServiceStub(che_channel)
    try:
        say(f"CHN gateway: operator API {pair.chn.operator_address}, partner exchange {pair.chn.partner_address}")
        say(f"CHE gateway: operator API {pair.che.operator_address}, partner exchange {pair.che.partner_address}")
        await chn.OpenAccount(
            operator_pb2.OpenAccountRequest(
                idempotency_key="demo-open-chn",
                account=records_pb2.Account(
                    account_id="CN-PO-0001", holder_name="Demo project owner", account_type="project owner"
                ),
            )
        )
        await che.OpenAccount(
            operator_pb2.OpenAccountRequest(
                idempotency_key="demo-open-che",
                account=records_pb2.Account(
                    account_id="CH-PH-0001", holder_name="Demo Party holding", account_type="Party holding"
                ),
            )
        )
        say("1. Opened account CN-PO-0001 at CHN and CH-PH-0001 at CHE.")
        await chn.RegisterAuthorization(
            operator_pb2.RegisterAuthorizationRequest(idempotency_key="demo-auth", authorization=DEMO_AUTHORIZATION)
        )
        say("2. CHN registered authorization CHN-A-0001 (CA0001, purpose NDC, 5,000 t, 2021-2030).")
        holding = await chn.RegisterIssuance(
            operator_pb2.RegisterIssuanceRequest(
                idempotency_key="demo-issue", account_id="CN-PO-0001", block=demo_block()
            )
        )
        say(f"3. CHN registered a CCER issuance: serials {holding.block.start}-{holding.block.end}, vintage 2025.")
        transfer = await chn.ProposeTransfer(
            operator_pb2.ProposeTransferRequest(
                idempotency_key="demo-transfer",
                source_account="CN-PO-0001",
                selections=[operator_pb2.BlockSelection(space=holding.block.space, start=1, end=400)],
                acquiring_account=records_pb2.AccountRef(party="CHE", account_id="CH-PH-0001"),
                cooperative_approach="CA0001",
                authorization_id="CHN-A-0001",
                purpose="NDC",
                adjustment_method="single-year averaging",
            )
        )
        say(f"4. CHN proposed transfer {transfer.transfer_id} of serials 1-400 (400 t) to CHE/CH-PH-0001.")
        say("   The signed Proposal goes out through CHN's outbox; CHE verifies it and answers with a Decision.")
        done: set[int] = {records_pb2.COMPLETED, records_pb2.REJECTED, records_pb2.TERMINATED, records_pb2.CANCELLED}
        chn_final = await wait_for_state(chn, transfer.transfer_id, done)
        che_final = await wait_for_state(che, transfer.transfer_id, done)
        say(
            f"5. Final states: CHN {records_pb2.TransferState.Name(chn_final.state)}, "
            f"CHE {records_pb2.TransferState.Name(che_final.state)}."
        )
        chn_ledger = (await chn.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())).entries
        che_ledger = (await che.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())).entries
        for name, ledger in (("CHN", chn_ledger), ("CHE", che_ledger)):
            for e in ledger:
                say(
                    f"   {name} ledger: {e.action_type} of {e.block.space.unit_kind} serials "
                    f"{e.block.start}-{e.block.end} ({e.quantity} t), transfer {e.transfer_id}"
                )
        holdings = (await chn.ListHoldings(operator_pb2.ListHoldingsRequest())).holdings
        for h in holdings:
            say(f"   CHN holds serials {h.block.start}-{h.block.end} in {h.account_id} ({h.status})")
        agree = ledgers_agree(chn_ledger, che_ledger)
        say(f"6. The two ledgers {'agree' if agree else 'DISAGREE'} on transfer {transfer.transfer_id}.")
        await che.OpenAccount(
            operator_pb2.OpenAccountRequest(
                idempotency_key="demo-open-use",
                account=records_pb2.Account(account_id="CH-USE-0001", holder_name="CHE NDC use", account_type="use"),
            )
        )
        used = await che.UseUnits(
            operator_pb2.UseUnitsRequest(
                idempotency_key="demo-use",
                source_account="CH-PH-0001",
                use_account="CH-USE-0001",
                action="use towards the NDC",
                year_of_use=2025,
                selections=[operator_pb2.BlockSelection(space=holding.block.space, start=1, end=100)],
            )
        )
        say(f"7. CHE used serials 1-100 (100 t) towards its NDC for 2025 (action {used.action_id}); they never move")
        say("   again.")
        summaries = {}
        for step, (name, stub) in enumerate((("CHN", chn), ("CHE", che)), start=8):
            summary = await stub.GetLedgerSummary(operator_pb2.GetLedgerSummaryRequest())
            summaries[name] = summary
            row = next(y for y in summary.years if y.year == 2025)
            say(
                f"{step}. {name} adjustment summary ({summary.method}): 2025 first transferred"
                f" {row.first_transferred_ndc} t, used {row.used_ndc} t, averaging figure"
                f" {row.annual_adjustment_averaging} t"
            )
        run = await chn.RunReconciliation(
            operator_pb2.RunReconciliationRequest(idempotency_key="demo-reconcile", partner="CHE")
        )
        deadline = time.monotonic() + 10
        while run.status == partner_pb2.RUNNING and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            run = await chn.GetReconciliation(operator_pb2.GetReconciliationRequest(run_id=run.run_id))
        report = run.report
        say(
            f"10. CHN reconciled with CHE (run {run.run_id}): {partner_pb2.ReconciliationStatus.Name(run.status)};"
            f" signed log heads CHN {report.requester_head.tree_size} entries, CHE {report.responder_head.tree_size}."
        )
        return {
            "transfer_id": transfer.transfer_id,
            "completed": chn_final.state == records_pb2.COMPLETED and che_final.state == records_pb2.COMPLETED,
            "ledgers_agree": agree,
            "reconciliation": partner_pb2.ReconciliationStatus.Name(run.status),
            "used": [_dict(e) for e in used.entries],
            "summaries": {name: _dict(summary) for name, summary in summaries.items()},
            "chn": {
                "state": records_pb2.TransferState.Name(chn_final.state),
                "ledger": [_dict(e) for e in chn_ledger],
            },
            "che": {
                "state": records_pb2.TransferState.Name(che_final.state),
                "ledger": [_dict(e) for e in che_ledger],
            },
        }
    finally:
        await chn_channel.close(None)
        await che_channel.close(None)


def ledgers_agree(
    initiating: Any,
    acquiring: Any,
) -> bool:
    """Two ledgers agree when, per transfer ID, the initiating side's outgoing entries and the acquiring
    side's acquisitions name the same blocks and quantity (DESIGN.md section 4)."""

    def key(entries: Any, actions: set[str]) -> dict[str, list[tuple[str, str, str, int, int]]]:
        by_transfer: dict[str, list[tuple[str, str, str, int, int]]] = {}
        for e in entries:
            if e.action_type in actions:
                s = e.block.space
                by_transfer.setdefault(e.transfer_id, []).append(
                    (s.unit_kind, s.issuing_registry, s.issuance, e.block.start, e.block.end)
                )
        return {t: sorted(v) for t, v in by_transfer.items()}

    out = key(initiating, {"First transfer", "Transfer"})
    into = key(acquiring, {"Acquisition"})
    return bool(out) and out == into


async def demo(workdir: Path, *, as_json: bool) -> int:
    """Run the demonstration; return the process exit code."""
    lines: list[str] = []

    def say(line: str) -> None:
        if as_json:
            lines.append(line)
        else:
            print(line, flush=True)

    pair = await start_pair(workdir)
    try:
        summary = await run_slice(pair, say)
    finally:
        await pair.stop()
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    ok = bool(summary["completed"] and summary["ledgers_agree"] and summary["reconciliation"] == "CONSISTENT")
    if not as_json:
        print(
            "Demo " + ("succeeded: the transfer completed and both ledgers agree and reconcile." if ok else "FAILED.")
        )
    return 0 if ok else 1
