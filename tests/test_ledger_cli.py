"""``carbon-gateway ledger ...`` against real gateways: uses, cancellations, emissions, locks and the summary,
with idempotent retries and one-line refusals."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from carbon_gateway.v1 import operator_pb2, records_pb2
from gateway.cli import main
from gateway.demo import start_pair, wait_for_state
from gateway.domain.adjustments import AdjustmentSettings
from gateway.domain.records import AdjustmentMethod
from gateway.ledger_cli import _print_retirement
from gateway.usecases.base import LedgerOptions
from tests.integration.harness import TERMINAL, operator, proposal_request, setup_accounts

UNITS = "CCER/CN-CCER:{}-{}"


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.asyncio
async def test_use_cancel_emissions_lock_and_summary_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = await start_pair(tmp_path)
    pair.che.core.gateway.ledger_options = LedgerOptions(
        adjustments=AdjustmentSettings(method=AdjustmentMethod.TRAJECTORY, first_year=2021, last_year=2030)
    )
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            transfer = await chn.ProposeTransfer(proposal_request(block, 1, 400, "t1"))
            assert (await wait_for_state(che, transfer.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            for account, kind in (("CH-USE-0001", "use"), ("CH-CAN-0001", "cancellation")):
                await che.OpenAccount(
                    operator_pb2.OpenAccountRequest(
                        idempotency_key=account,
                        account=records_pb2.Account(account_id=account, holder_name="Registry", account_type=kind),
                    )
                )
        che_address = pair.che.operator_address
        use = ("ledger", "use", "--address", che_address, "--key", "u1", "--account", "CH-PH-0001")
        code, out, _ = await cli(capsys, *use, "--to", "CH-USE-0001", "--units", UNITS.format(1, 60), "--year", "2025")
        assert code == 0
        assert "[1, 60] used in CH-USE-0001" in out and "ledger: Use of 60 units, vintage 2025" in out
        action = out.splitlines()[0]
        # The same key again: the same action, nothing used twice.
        code, again, _ = await cli(
            capsys, *use, "--to", "CH-USE-0001", "--units", UNITS.format(1, 60), "--year", "2025"
        )
        assert code == 0 and again.splitlines()[0] == action
        # Used units never move again: a new key is refused, in one line naming the code and the field.
        code, out, err = await cli(
            capsys, "ledger", "use", "--address", che_address, "--key", "u2", "--account", "CH-PH-0001",
            "--to", "CH-USE-0001", "--units", UNITS.format(1, 60), "--year", "2025",
        )  # fmt: skip
        assert (code, out) == (1, "")
        assert err.startswith("carbon-gateway ledger use: UNIT_NOT_HELD:") and err.count("\n") == 1
        code, out, err = await cli(
            capsys, "ledger", "cancel", "--address", che_address, "--key", "c1", "--account", "CH-PH-0001",
            "--to", "CH-CAN-0001", "--units", UNITS.format(61, 70), "--voluntary", "--purpose", "NDC",
        )  # fmt: skip
        assert code == 0 and "ledger: Voluntary Cancellation of 10 units" in out, err
        code, out, _ = await cli(
            capsys, "ledger", "emissions", "--address", che_address, "--key", "e1", "--year", "2025",
            "--quantity", "1000",
        )  # fmt: skip
        assert (code, out) == (0, "reported emissions 2025: 1000 t CO2e\n")
        code, out, _ = await cli(
            capsys, "ledger", "lock", "--address", che_address, "--key", "l1", "--from", "2021", "--to", "2025",
            "--reason", "BTR review",
        )  # fmt: skip
        assert code == 0 and out.startswith("locked 2021-2025 at ")
        code, out, err = await cli(
            capsys, "ledger", "emissions", "--address", che_address, "--key", "e2", "--year", "2025",
            "--quantity", "999",
        )  # fmt: skip
        assert code == 1 and "PERIOD_LOCKED" in err and "(field year)" in err
        code, out, _ = await cli(capsys, "ledger", "summary", "--address", che_address)
        assert code == 0
        row_2025 = next(line for line in out.splitlines() if line.startswith("2025  "))
        # Trajectory: nothing first transferred here, 60 used for 2025, emissions 1000: balance 1000 - 60.
        assert row_2025.split() == ["2025", "0", "0", "60", "-", "-60", "-60", "1000", "940"]
    finally:
        await pair.stop()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--units", "CCER:1-2", "--year", "2025"), "is not KIND/REGISTRY[/ISSUANCE]:START-END"),
        (("--units", "CCER/CN-CCER:1-99999999999999999999", "--year", "2025"), "serials are at most 2^63 - 2"),
        (("--units", "CCER/CN-CCER:1-9223372036854775807", "--year", "2025"), "serials are at most 2^63 - 2"),
        (("--units", "CCER/CN-CCER:1-2", "--year", "2025", "--oimp", "OIMP"), "not both"),
        (("--units", "CCER/CN-CCER:1-2", "--year", "0"), "--year 0: the year of use is not in 1990..2100"),
        (("--units", "CCER/CN-CCER:1-2", "--year", "abc"), "argument --year: "),
        (("--units", "CCER/CN-CCER:1-2", "--year", "2025", "--note", "-x"), "argument --note: expected one argument"),
    ],
    ids=[
        "units-shape",
        "units-beyond-int64",
        "units-beyond-the-largest-serial",
        "year-and-oimp",
        "year-zero",
        "year-not-a-number",
        "note-taken-for-an-option",
    ],
)
def test_bad_use_arguments_are_one_line_without_calling_the_gateway(
    argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["ledger", "use", "--address", "127.0.0.1:1", "--key", "k", "--account", "A", "--to", "B"]
    code: int | str | None
    try:
        code = main([*base, *argv])
    except SystemExit as exited:  # argparse's own refusals
        code = exited.code
    _, err = capsys.readouterr()
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_an_unreachable_gateway_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["ledger", "summary", "--address", "127.0.0.1:1"])
    _, err = capsys.readouterr()
    assert (
        code == 1 and err.startswith("carbon-gateway ledger summary: 127.0.0.1:1: UNAVAILABLE") and err.count("\n") == 1
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ("ledger", "emissions", "--key", "k", "--year", "2025", "--quantity", "99999999999999999999"),
            "--quantity 99999999999999999999: out of range",
        ),
        (("ledger", "emissions", "--key", "k", "--year", "99999999999", "--quantity", "1"), "--year 99999999999"),
        (
            ("ledger", "lock", "--key", "k", "--from", "99999999999", "--to", "2020", "--reason", "r"),
            "--from 99999999999: out of range",
        ),
        (
            (
                "ledger",
                "cancel",
                "--key",
                "k",
                "--account",
                "\udced",
                "--to",
                "B",
                "--units",
                "CCER/CN-CCER:1-2",
                "--voluntary",
            ),
            "--account: not UTF-8 text",
        ),
    ],
    ids=["quantity-beyond-int64", "year-beyond-int32", "lock-year-beyond-int32", "account-not-utf8"],
)
def test_arguments_no_request_can_carry_are_one_line(
    argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*argv[:2], "--address", "127.0.0.1:1", *argv[2:]])
    _, err = capsys.readouterr()
    assert code == 2 and message in err and err.count("\n") == 1


def test_the_summary_text_says_how_many_unresolved_transfers_it_does_not_show() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    from gateway.ledger_cli import format_summary

    shown = records_pb2.LedgerEntry(quantity=10, acquiring_party="CHE", transfer_id="t0", action_date=Timestamp())
    text = format_summary(operator_pb2.LedgerSummary(unresolved=[shown], unresolved_total=1_501))
    assert "unresolved: 10 units to CHE" in text
    assert "unresolved: 1,500 more, not shown here" in text
    assert "more, not shown" not in format_summary(operator_pb2.LedgerSummary(unresolved=[shown], unresolved_total=1))


def test_the_summary_text_names_the_divisor_once_and_the_locked_periods() -> None:
    from gateway.ledger_cli import format_summary

    locked = operator_pb2.LockedPeriod(first_year=2021, last_year=2022, locked_at="2026-01-05T00:00:00Z", reason="BTR")
    for divisor, line in (
        ("averaging divisor: elapsed years (decision 2/CMA.3)", "averaging divisor: elapsed years (decision 2/CMA.3)"),
        ("not configured", "averaging divisor: not configured"),
    ):
        lines = format_summary(operator_pb2.LedgerSummary(averaging_divisor=divisor, locked=[locked])).splitlines()
        assert lines[1] == line
        assert "locked: 2021-2022 since 2026-01-05T00:00:00Z: BTR" in lines


@pytest.mark.asyncio
async def test_a_command_with_a_configuration_refuses_another_party_s_gateway_answering_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = await start_pair(tmp_path)
    try:

        def configuration(name: str, operator_address: str) -> str:
            path = tmp_path / name
            path.write_text(
                'party = "CHN"\ndatabase = "unused.db"\nsigner = "file:chn.key"\ntrust_document = "chn.trust.json"\n'
                f'[operator]\nlisten = "{operator_address}"\nunauthenticated_loopback = true\n'
                '[partner]\nlisten = "127.0.0.1:0"\n'
                '[[partners]]\nparty = "CHE"\naddress = "127.0.0.1:9"\ntrust_document = "che.trust.json"\n',
                encoding="utf-8",
            )
            return str(path)

        # By mistake, CHN's configuration names the port of CHE's gateway on the same machine.
        wrong = configuration("wrong.toml", pair.che.operator_address)
        code, out, err = await cli(capsys, "ledger", "summary", "--config", wrong)
        assert (code, out) == (2, "") and err.count("\n") == 1, err
        assert f"the gateway at {pair.che.operator_address} is CHE's" in err and "configures CHN's" in err
        right = configuration("right.toml", pair.chn.operator_address)
        code, out, err = await cli(capsys, "ledger", "summary", "--config", right)
        assert (code, err) == (0, "")
    finally:
        await pair.stop()


@pytest.mark.parametrize(
    "units",
    ["CCER/CN-CCER:" + "1" * 5000 + "-1", "CCER/CN-CCER:1-\u0661\u0662", "CCER/CN-CCER:9223372036854775808-9"],
    ids=["5000 digits", "Arabic-Indic digits", "past 2^63 - 1"],
)
def test_a_selection_s_serials_are_ascii_digits_within_64_bits(units: str) -> None:
    from gateway.ledger_cli import UsageError, _selections

    with pytest.raises(UsageError, match=r"serials .*at most 2\^63 - 2"):
        _selections([units])


def test_retired_blocks_are_printed_with_their_issuance(capsys: pytest.CaptureFixture[str]) -> None:
    block = records_pb2.UnitBlock(
        space=records_pb2.SerialSpace(unit_kind="CEA", issuing_registry="CN-CEA", issuance="2025-A"), start=1, end=5
    )
    result = operator_pb2.RetirementResult(
        action_id="a1", retired=[operator_pb2.Holding(block=block, status="used", account_id="CH-USE-0001")]
    )
    _print_retirement(result)
    out, _ = capsys.readouterr()
    assert "  CEA/CN-CEA/2025-A [1, 5] used in CH-USE-0001\n" in out


def test_the_summary_text_shows_each_groups_onward_transfers() -> None:
    from carbon_gateway.v1 import operator_pb2
    from gateway.ledger_cli import format_summary

    group = operator_pb2.SummaryGroup(
        cooperative_approach="CA0003", partner="CHE", vintage=2025, acquired="200", transferred="155", used="10"
    )
    lines = format_summary(operator_pb2.LedgerSummary(groups=[group])).splitlines()
    header = lines.index(next(line for line in lines if line.startswith("approach")))
    columns, values = lines[header].split("  "), lines[header + 1].split("  ")
    assert columns[-1] == "transferred" and dict(zip(columns, values, strict=True))["transferred"] == "155"
