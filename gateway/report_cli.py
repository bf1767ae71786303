"""``carbon-gateway report aef``: the AEF report of a year, written from the gateway's database.

It reads the database directly, read-only, so that a report of a million actions never crosses the API.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.ledger_cli import EXIT_USAGE, fail

if TYPE_CHECKING:
    from adapters.context import MappingContext
    from gateway.config import GatewayConfig


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` commands."""
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
        return fail("report aef", str(exc), EXIT_USAGE)
    if not 1990 <= args.year <= 2100:
        return fail("report aef", f"--year {args.year} is not in 1990..2100", EXIT_USAGE)
    try:
        submitted = dt.date.fromisoformat(args.date) if args.date else dt.datetime.now(dt.UTC).date()
    except ValueError:
        return fail("report aef", f"--date {args.date!r} is not a date (YYYY-MM-DD)", EXIT_USAGE)
    if not config.database.exists():
        return fail("report aef", f"{config.database}: no such database; start the gateway once first", EXIT_USAGE)

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
        return fail("report aef", f"{exc.code.name}: {exc.message} ({exc.field})")
    except RecordRejected as exc:
        shown = "; ".join(f"{p.field}: {p.message}" for p in exc.problems[:5])
        return fail("report aef", f"the ledger cannot be reported as it stands: {shown}")
    except OSError as exc:
        return fail("report aef", f"{args.out}: {exc.strerror or exc}")
    print(f"wrote {args.out}")
    return 0


def _context(config: GatewayConfig) -> MappingContext:
    from adapters.context import MappingContext

    return MappingContext(extension_codes=tuple(config.ledger.underlying_registry_codes))
