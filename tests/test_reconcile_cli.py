"""``carbon-gateway reconcile ...`` against real gateways: a consistent run, a discrepancy that freezes units,
the signed report written to a file, the list, a resolution that unfreezes them, and the count of the log
entries a partner's reply had no room for."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from pathlib import Path

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, partner_pb2, records_pb2
from gateway.cli import main
from gateway.demo import start_pair, wait_for_state
from gateway.domain.errors import ResponseCode
from gateway.domain.reconciliation import Status
from gateway.node import utc_now
from gateway.rpc.errors import read_error_detail
from gateway.usecases.base import Idempotency
from signing import Envelope
from tests.integration.harness import TERMINAL, open_account, operator, proposal_request, setup_accounts


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.asyncio
async def test_reconcile_run_list_show_and_resolve_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = await start_pair(tmp_path)
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            for i, (start, end) in enumerate(((1, 100), (101, 200))):
                transfer = await chn.ProposeTransfer(proposal_request(block, start, end, f"t{i}"))
                assert (await wait_for_state(chn, transfer.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
                assert (await wait_for_state(che, transfer.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        chn_address = pair.chn.operator_address
        code, out, err = await cli(capsys, "reconcile", "--partner", "CHE", "--address", chn_address)
        assert code == 0, err
        assert "status: CONSISTENT" in out and "difference" not in out

        # CHE's record of serials 101-200 is damaged: CHN's next run finds exactly that, and freezes them.
        with sqlite3.connect(tmp_path / "che.db") as db:
            db.execute(
                "UPDATE ledger SET block = json_set(block, '$.end', 150) WHERE action_type = 'Acquisition'"
                " AND json_extract(block, '$.start') = 101"
            )
        report_file = tmp_path / "report.json"
        code, out, err = await cli(
            capsys, "reconcile", "--partner", "CHE", "--address", chn_address, "--out", str(report_file)
        )
        assert code == 3, (out, err)
        assert "status: BLOCKS_INCONSISTENT" in out
        assert out.count("\ndifference ") == 1 and "difference QUANTITY" in out and "(serial_end)" in out
        assert "CHN: CCER/CN-CCER [101, 200]" in out and "CHE: CCER/CN-CCER [101, 150]" in out
        envelope = Envelope.from_json(report_file.read_bytes())
        report = partner_pb2.ReconciliationReport.FromString(envelope.payload)
        assert report.status == partner_pb2.BLOCKS_INCONSISTENT and len(report.differences) == 1
        assert envelope.signatures[0].keyid == pair.chn.core.signer.keyid
        run_id = report.run_id

        code, out, _ = await cli(capsys, "reconcile", "list", "--address", chn_address)
        assert code == 0 and out.splitlines()[0].startswith(f"{run_id}  CHE  requester  BLOCKS_INCONSISTENT")
        code, out, _ = await cli(capsys, "reconcile", "show", run_id, "--address", chn_address)
        assert code == 3 and "difference QUANTITY" in out
        # The gateway, --out and --key may come before the subcommand too; --config and --address together are not.
        shown = tmp_path / "shown.json"
        code, printed, err = await cli(
            capsys, "reconcile", "--address", chn_address, "--out", str(shown), "show", run_id
        )
        assert code == 3 and printed.startswith(out), err
        assert Envelope.from_json(shown.read_bytes()).payload == envelope.payload
        code, listed, err = await cli(capsys, "reconcile", "--address", chn_address, "list")
        assert code == 0 and listed.splitlines()[0].startswith(f"{run_id}  CHE"), err
        code, listed, err = await cli(capsys, "reconcile", "--partner", "SGP", "--address", chn_address, "list")
        assert (code, listed) == (0, "no reconciliation runs yet\n"), err
        code, _, err = await cli(capsys, "reconcile", "--address", chn_address, "show", run_id, "--config", "x.toml")
        assert code == 2 and "give one of --config FILE or --address HOST:PORT" in err
        code, _, err = await cli(capsys, "reconcile", "show", run_id)
        assert code == 2 and "give one of --config FILE or --address HOST:PORT" in err
        code, _, err = await cli(capsys, "reconcile", "resolve", run_id, "--reason", "r", "--address", chn_address)
        assert code == 2 and "--key" in err
        # --out writes a new file only: not over a configuration, nor through a link to one.
        precious = tmp_path / "gateway.toml"
        precious.write_text('party = "CHN"\n')
        (tmp_path / "link.json").symlink_to(precious)
        for target in (precious, tmp_path / "link.json", report_file):
            before = target.read_bytes()
            code, _, err = await cli(
                capsys, "reconcile", "show", run_id, "--address", chn_address, "--out", str(target)
            )
            assert code == 2 and "refusing to overwrite" in err and target.read_bytes() == before, (target, err)

        # CHE keeps the report and freezes the units too: they cannot go back until CHE's operator resolves it.
        che_address = pair.che.operator_address
        code, out, _ = await cli(capsys, "reconcile", "show", run_id, "--address", che_address)
        assert code == 3 and "(responder)" in out and "difference QUANTITY" in out
        back = proposal_request(block, 150, 160, "back")
        back.source_account = "CH-PH-0001"
        back.acquiring_account.party, back.acquiring_account.account_id = "CHN", "CN-PO-0001"
        async with operator(pair.che) as che:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await che.ProposeTransfer(back)
            detail = read_error_detail(caught.value.trailing_metadata())
            assert detail is not None and ResponseCode(detail.code) is ResponseCode.BLOCK_FROZEN
            assert detail.field == "selections[0]" and run_id in detail.message
        code, out, err = await cli(
            capsys, "reconcile", "resolve", run_id, "--reason", " ", "--key", "r0", "--address", chn_address
        )
        assert code == 1 and "INVALID_ARGUMENT" in err and "(field reason)" in err
        for address in (chn_address, che_address):
            code, out, err = await cli(
                capsys, "reconcile", "resolve", run_id, "--reason", "CHE repaired its record", "--key", "r1",
                "--address", address,
            )  # fmt: skip
            assert code == 0 and "resolved: CHE repaired its record" in out, err
        code, out, _ = await cli(capsys, "reconcile", "show", run_id, "--address", chn_address)
        assert code == 0 and "status: RESOLVED" in out
        async with operator(pair.che) as che:
            await open_account(che, "CH-USE-0001", "use", key="use")
            used = await che.UseUnits(
                operator_pb2.UseUnitsRequest(
                    idempotency_key="use-1",
                    source_account="CH-PH-0001",
                    use_account="CH-USE-0001",
                    action="use towards the NDC",
                    year_of_use=2025,
                    selections=[operator_pb2.BlockSelection(space=block.space, start=150, end=160)],
                )
            )
            assert [(h.block.start, h.block.end, h.status) for h in used.retired] == [(150, 160, "used")]
        # Usage errors say what to give.
        code, _, err = await cli(capsys, "reconcile", "--address", chn_address)
        assert code == 2 and "--partner" in err
        code, _, err = await cli(capsys, "reconcile", "--partner", "FRA", "--address", chn_address)
        assert code == 1 and "UNKNOWN_PARTNER" in err
    finally:
        await pair.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize(("cap", "listed"), [(2048, True), (1600, False)], ids=["some listed", "none listed"])
async def test_reconcile_says_how_many_log_entries_the_partner_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cap: int, listed: bool
) -> None:
    pair = await start_pair(tmp_path)
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            transfer = await chn.ProposeTransfer(proposal_request(block, 1, 100, "t0"))
            assert (await wait_for_state(chn, transfer.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            assert (await wait_for_state(che, transfer.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
        with sqlite3.connect(tmp_path / "che.db") as db:
            db.execute("UPDATE ledger SET block = json_set(block, '$.end', 50) WHERE action_type = 'Acquisition'")
        # CHE's replies to CHN have room for the transfer's state, but not for every log entry CHE holds for it.
        found = pair.che.partners.get("CHN")
        assert found is not None
        found.max_envelope_bytes = cap
        report_file = tmp_path / "report.json"
        code, out, err = await cli(
            capsys, "reconcile", "--partner", "CHE", "--address", pair.chn.operator_address, "--out", str(report_file)
        )
        assert code == 3, (out, err)
        report = partner_pb2.ReconciliationReport.FromString(Envelope.from_json(report_file.read_bytes()).payload)
        (difference,) = report.differences
        theirs, ours = difference.responder_evidence, difference.requester_evidence
        assert theirs.messages_omitted > 0 and bool(theirs.messages) is listed
        assert ours.messages_omitted == 0 and ours.messages
        (che_line,) = [line for line in out.splitlines() if line.startswith("  CHE holds: ")]
        if listed:
            first = theirs.messages[0]
            assert che_line.startswith(f"  CHE holds: COMPLETED; messages #{first.log_index} {first.direction} "), out
            assert che_line.endswith(f" and {theirs.messages_omitted} more left out for lack of room"), out
        else:
            assert che_line == (
                f"  CHE holds: COMPLETED; messages none listed, {theirs.messages_omitted} left out for lack of room"
            ), out
        (chn_line,) = [line for line in out.splitlines() if line.startswith("  CHN holds: ")]
        assert "left out" not in chn_line and chn_line.count("#") == len(ours.messages), out
    finally:
        await pair.stop()


@pytest.mark.parametrize("where", ["a folder", "a missing folder", "a full device"])
def test_a_signed_report_that_cannot_be_written_is_one_line_and_exit_status_2(tmp_path: Path, where: str) -> None:
    from types import SimpleNamespace

    from gateway.ledger_cli import UsageError
    from gateway.reconcile_cli import _write_report

    out = {"a folder": str(tmp_path), "a missing folder": str(tmp_path / "no" / "r.json"), "a full device": "/dev/full"}
    # What is there already is never written over, a device included.
    message = "cannot write the signed report there" if where == "a missing folder" else "refusing to overwrite"
    with pytest.raises(UsageError, match=message):
        _write_report(SimpleNamespace(run_id="r", signed_report=b"{}"), out[where])


def test_a_run_that_ended_without_a_report_says_so_instead_of_empty_log_heads() -> None:
    from gateway.reconcile_cli import format_run

    run = operator_pb2.Reconciliation(
        run_id="r-1", partner="CHE", role="responder", status=partner_pb2.MANUAL_INTERVENTION_REQUIRED
    )
    text = format_run(run)
    assert "log heads" not in text
    assert text.splitlines()[-1] == "no report: the run ended before the two sides compared their books"
    run.report.requester, run.report.responder = "CHE", "CHN"
    run.report.requester_head.tree_size = 3
    assert format_run(run).splitlines()[-1].startswith("log heads: CHE 3 entries")


@pytest.mark.parametrize("subcommand", [[], ["show", "some-run"]])
def test_an_out_file_that_is_there_is_refused_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], subcommand: list[str]
) -> None:
    """A run was started, and its report printed, before --out was found taken: the run took effect and the
    command ended with the usage error's status instead of the run's (3 for a discrepancy). Nothing answers at
    127.0.0.1:1, so reaching the gateway at all would end with exit status 1."""
    taken = tmp_path / "report.json"
    taken.write_text("kept")
    argv = ["reconcile", "--partner", "CHE", "--address", "127.0.0.1:1", "--out", str(taken), *subcommand]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and err.count("\n") == 1, err
    assert taken.read_text() == "kept"


@pytest.mark.asyncio
async def test_an_abandoned_run_is_no_result_not_a_discrepancy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run the partner never answered gives way to a later one: `show` says ABANDONED with exit status 5, not the
    3 of a discrepancy, since nothing was compared."""
    now = [utc_now()]
    pair = await start_pair(tmp_path, clock=lambda: now[0])
    try:
        await pair.chn.outbox.stop()  # CHN's request waits in its outbox: the run stays running
        gateway = pair.chn.core.gateway
        first = await gateway.start_reconciliation(Idempotency("t", "r", "k1", "h1"), "CHE")
        now[0] += dt.timedelta(hours=2)
        await gateway.start_reconciliation(Idempotency("t", "r", "k2", "h2"), "CHE")
        assert (await gateway.get_reconciliation(first.run_id)).status is Status.ABANDONED
        code, out, err = await cli(capsys, "reconcile", "show", first.run_id, "--address", pair.chn.operator_address)
        assert code == 5 and "status: ABANDONED" in out, (out, err)
    finally:
        await pair.stop()
