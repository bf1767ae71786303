"""``carbon-gateway ledger ...``: the ledger's books from the command line, through a running gateway's
operator API (its address from the configuration)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

EXIT_REFUSED = 1
EXIT_USAGE = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ledger`` commands."""
    ledger = commands.add_parser("ledger", help="the corresponding-adjustment ledger")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True)
    summary = ledger_commands.add_parser("summary", help="print the adjustment summary of a running gateway")
    summary.add_argument("--config", required=True, help="the gateway's configuration file")
    summary.set_defaults(func=_summary)


def fail(command: str, message: str, code: int = EXIT_REFUSED) -> int:
    print(f"carbon-gateway {command}: {' '.join(message.split())}", file=sys.stderr)
    return code


def _summary(args: argparse.Namespace) -> int:
    import grpc

    from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc
    from gateway.config import ConfigError, load_config

    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        return fail("ledger summary", str(exc), EXIT_USAGE)

    async def call() -> operator_pb2.LedgerSummary:
        async with grpc.aio.insecure_channel(config.operator_listen) as channel:
            stub = operator_pb2_grpc.OperatorServiceStub(channel)
            return await stub.GetLedgerSummary(operator_pb2.GetLedgerSummaryRequest(), timeout=30)

    try:
        summary = asyncio.run(call())
    except grpc.aio.AioRpcError as exc:
        return fail("ledger summary", f"{config.operator_listen}: {exc.code().name}: {exc.details()}")
    print(format_summary(summary))
    return 0


def format_summary(summary: object) -> str:
    """The summary as text: the settings, the groups, the structured summary's rows and what is unresolved."""
    from carbon_gateway.v1 import operator_pb2

    assert isinstance(summary, operator_pb2.LedgerSummary)
    lines = [f"method: {summary.method}", f"averaging divisor: {summary.averaging_divisor}"]
    lines.append(f"convention: {summary.convention}")
    lines.append("")
    lines.append("approach  sectors  partner  vintage  tied  first-transferred  acquired  used  cancelled  adjusted")
    for g in summary.groups:
        lines.append(
            f"{g.cooperative_approach}  {g.sectors or '-'}  {g.partner or '-'}  {g.vintage}  {g.authorized}"
            f"  {g.first_transferred}  {g.acquired}  {g.used}  {g.cancelled}  {g.adjusted}"
        )
    if summary.years:
        lines.append("")
        lines.append("year  FT-NDC  FT-OIMP-only  used-NDC  averaging  adjustment  running-total  emissions  balance")
        for y in summary.years:
            lines.append(
                f"{y.year}  {y.first_transferred_ndc}  {y.first_transferred_oimp_only}  {y.used_ndc}"
                f"  {y.annual_adjustment_averaging or '-'}  {y.total_adjustment}  {y.running_total}"
                f"  {y.reported_emissions or '-'}  {y.emissions_balance or '-'}"
            )
    if summary.cumulative_adjustment:
        lines.append(f"cumulative adjustment at the end of the period: {summary.cumulative_adjustment}")
    for e in summary.unresolved:
        lines.append(
            f"unresolved: {e.quantity} units to {e.acquiring_party} on {e.action_date.ToJsonString()} (transfer"
            f" {e.transfer_id}): their first transfer is yet to come; counted in no row"
        )
    return "\n".join(lines)
