"""``carbon-gateway ledger summary`` and ``carbon-gateway report aef``: the ledger's books from the command line.

The summary asks a running gateway (its operator API, from the configuration); the AEF report reads the
gateway's database directly, read-only, so that a report of a million actions never crosses the API.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.context import MappingContext
    from gateway.config import GatewayConfig

EXIT_REFUSED = 1
EXIT_USAGE = 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ledger`` and ``report`` commands."""
    ledger = commands.add_parser("ledger", help="the corresponding-adjustment ledger")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True)
    summary = ledger_commands.add_parser("summary", help="print the adjustment summary of a running gateway")
    summary.add_argument("--config", required=True, help="the gateway's configuration file")
    summary.set_defaults(func=_summary)

    report = commands.add_parser("report", help="reports a Party submits")
    report_commands = report.add_subparsers(dest="report_command", required=True)
    aef = report_commands.add_parser("aef", help="write the AEF report of a year from the gateway's ledger")
    aef.add_argument("--config", required=True, help="the gateway's configuration file")
    aef.add_argument("--year", required=True, type=int, help="the reported year")
    aef.add_argument("--out", required=True, help="the XLSX file (or, with --format csv, the folder) to write")
    aef.add_argument("--format", choices=["xlsx", "csv"], default="xlsx")
    aef.add_argument("--version", default="1.0", dest="submission_version", help="the submission's version (X.Y)")
    aef.add_argument("--date", default="", help="the date of submission (YYYY-MM-DD; default today, UTC)")
    aef.set_defaults(func=_report_aef)


def _fail(command: str, message: str, code: int = EXIT_REFUSED) -> int:
    print(f"carbon-gateway {command}: {' '.join(message.split())}", file=sys.stderr)
    return code


def _summary(args: argparse.Namespace) -> int:
    import grpc

    from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc
    from gateway.config import ConfigError, load_config

    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        return _fail("ledger summary", str(exc), EXIT_USAGE)

    async def call() -> operator_pb2.LedgerSummary:
        async with grpc.aio.insecure_channel(config.operator_listen) as channel:
            stub = operator_pb2_grpc.OperatorServiceStub(channel)
            return await stub.GetLedgerSummary(operator_pb2.GetLedgerSummaryRequest(), timeout=30)

    try:
        summary = asyncio.run(call())
    except grpc.aio.AioRpcError as exc:
        return _fail("ledger summary", f"{config.operator_listen}: {exc.code().name}: {exc.details()}")
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


def _report_aef(args: argparse.Namespace) -> int:
    from adapters import aef
    from adapters.aef_columns import Table
    from gateway.config import ConfigError, load_config
    from gateway.domain.canonical import AefReport
    from gateway.domain.errors import GatewayError
    from gateway.domain.mapping import RecordRejected
    from gateway.domain.protocol import DecisionPolicy
    from gateway.service import Gateway
    from gateway.store.sqlite import SQLiteStore

    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        return _fail("report aef", str(exc), EXIT_USAGE)
    if not 1990 <= args.year <= 2100:
        return _fail("report aef", f"--year {args.year} is not in 1990..2100", EXIT_USAGE)
    try:
        submitted = dt.date.fromisoformat(args.date) if args.date else dt.datetime.now(dt.UTC).date()
    except ValueError:
        return _fail("report aef", f"--date {args.date!r} is not a date (YYYY-MM-DD)", EXIT_USAGE)
    if not config.database.exists():
        return _fail("report aef", f"{config.database}: no such database; start the gateway once first", EXIT_USAGE)

    async def build() -> AefReport:
        store = await SQLiteStore.open(config.database)
        try:
            gateway = Gateway(
                party=config.party,
                store=store,
                policy=DecisionPolicy(),
                clock=lambda: dt.datetime.now(dt.UTC),
                nomenclature=config.nomenclature,
                ledger_options=config.ledger,
            )
            return await gateway.aef_report(args.year, version=args.submission_version, submission_date=submitted)
        finally:
            await store.close()

    try:
        report = asyncio.run(build())
        out = Path(args.out)
        if args.format == "xlsx":
            out.write_bytes(aef.write_workbook(report, _context(config)))
        else:
            out.mkdir(parents=True, exist_ok=True)
            for table, data in aef.write_csv_tables(report, _context(config)).items():
                (out / f"{Table(table).name.lower()}.csv").write_bytes(data)
    except GatewayError as exc:
        return _fail("report aef", f"{exc.code.name}: {exc.message} ({exc.field})")
    except RecordRejected as exc:
        shown = "; ".join(f"{p.field}: {p.message}" for p in exc.problems[:5])
        return _fail("report aef", f"the ledger cannot be reported as it stands: {shown}")
    except OSError as exc:
        return _fail("report aef", f"{args.out}: {exc.strerror or exc}")
    print(f"wrote {args.out}")
    return 0


def _context(config: GatewayConfig) -> MappingContext:
    from adapters.context import MappingContext

    return MappingContext(extension_codes=tuple(config.ledger.underlying_registry_codes))
