"""``carbon-gateway report aef``: the AEF report of a year, written from the gateway's database.

It reads the database directly, read-only, so that a report of a million actions never crosses the API. The
report streams: the ledger is read once, and the rows are written batch by batch as they are read
(`gateway.usecases.reporting.Reporting.aef_report_into` into `adapters.aef.AefFiles`), so memory does not grow
with the year's actions. All or nothing: the files are written under temporary names beside ``--out`` and put
in place only when every row was accepted; a refused report writes nothing, prints one line naming the first
problems (``<table>[<row>].<column>`` or the ledger entry) and exits 1. Bad arguments exit 2 with one line.
The workbook is stamped with the submission date, so exporting a past year again gives the same bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import errno
import os
import re
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.ledger_cli import EXIT_USAGE, OneLineParser, fail, whole_number

if TYPE_CHECKING:
    from adapters.context import MappingContext
    from gateway.config import GatewayConfig
    from gateway.usecases.reporting import AefSink


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` commands."""
    report = commands.add_parser("report", help="reports a Party submits")
    report_commands = report.add_subparsers(dest="report_command", required=True, parser_class=OneLineParser)
    aef = report_commands.add_parser("aef", help="write the AEF report of a year from the gateway's ledger")
    aef.add_argument("--config", required=True, help="the gateway's configuration file")
    aef.add_argument("--year", required=True, type=whole_number, help="the reported year")
    aef.add_argument("--out", required=True, help="the XLSX file (or, with --format csv, the folder) to write")
    aef.add_argument("--format", choices=["xlsx", "csv"], default="xlsx")
    aef.add_argument("--version", default="1.0", dest="submission_version", help="the submission's version (X.Y)")
    aef.add_argument("--date", default="", help="the date of submission (YYYY-MM-DD; default today, UTC)")
    aef.set_defaults(func=_report_aef)


def _report_aef(args: argparse.Namespace) -> int:
    import sqlite3

    from adapters import vocab
    from gateway.config import ConfigError, load_config
    from gateway.domain.errors import GatewayError
    from gateway.domain.mapping import RecordRejected
    from gateway.store.postgres import DatabaseUnavailable
    from gateway.wire import ISO_DATE

    try:
        config = load_config(Path(args.config))
    except ConfigError as exc:
        return fail("report aef", str(exc), EXIT_USAGE)
    if not 1990 <= args.year <= 2100:
        return fail("report aef", f"--year {args.year} is not in 1990..2100", EXIT_USAGE)
    try:
        if args.date and not ISO_DATE.fullmatch(args.date):
            raise ValueError(args.date)
        submitted = dt.date.fromisoformat(args.date) if args.date else dt.datetime.now(dt.UTC).date()
    except ValueError:
        return fail("report aef", f"--date {args.date!r} is not a date (YYYY-MM-DD)", EXIT_USAGE)
    if submitted < dt.date(args.year, 1, 1):
        return fail(
            "report aef",
            f"--date {submitted} is before the reported year {args.year} begins; give the date of submission",
            EXIT_USAGE,
        )
    if not vocab.SUBMISSION_VERSION.fullmatch(args.submission_version) or args.submission_version.startswith("0."):
        return fail("report aef", f"--version {args.submission_version!r} is not X.Y (the first is 1.0)", EXIT_USAGE)
    if isinstance(config.database, Path) and not config.database.exists():
        return fail("report aef", f"{config.database}: no such database; start the gateway once first", EXIT_USAGE)
    if isinstance(config.database, Path) and not config.database.is_file():
        # SQLite would say only "disk I/O error" (a folder) or "file is not a database" (a device).
        return fail(
            "report aef",
            f"{config.database} is not a database file (a folder, a device?); check database in {args.config}",
            EXIT_USAGE,
        )

    if not args.out.strip():
        # An --out "$DIR" whose variable is unset would otherwise write into the working folder.
        return fail("report aef", "--out is empty; name the XLSX file (or, with --format csv, the folder)", EXIT_USAGE)
    out = Path(args.out)
    if out.is_symlink():
        try:  # written where the link points, as a shell's > would (a folder made there for CSV): the link stays
            out = Path(os.path.realpath(out, strict=False))
            if out.is_symlink():
                raise OSError(errno.ELOOP, "a loop of symbolic links")
        except OSError as exc:
            return fail("report aef", f"--out {args.out}: {exc.strerror or exc}", EXIT_USAGE)
    if args.format == "xlsx" and out.is_dir():
        return fail("report aef", f"--out {out} is a folder; name the XLSX file to write", EXIT_USAGE)
    if args.format == "xlsx" and out.exists() and not out.is_file():
        return fail(
            "report aef", f"--out {out} is not a regular file (a device or a pipe); name the file to write", EXIT_USAGE
        )
    if args.format == "xlsx" and out.is_file() and not _replaceable_workbook(out):
        return fail(
            "report aef",
            f"--out {out} exists and is not an XLSX workbook (a configuration, a key, an archive?); name a new file,"
            " or an earlier report to replace",
            EXIT_USAGE,
        )
    if args.format == "csv" and out.is_file():
        return fail("report aef", f"--out {out} is a file; --format csv writes five files into a folder", EXIT_USAGE)
    if args.format == "csv" and out.exists() and not out.is_dir():
        return fail(
            "report aef",
            f"--out {out} is not a folder (a device or a pipe); --format csv writes five files into a folder",
            EXIT_USAGE,
        )
    if not out.parent.is_dir():
        return fail("report aef", f"--out {out}: the folder {out.parent} does not exist", EXIT_USAGE)
    foreign = _foreign_csv_file(out) if args.format == "csv" and out.is_dir() else None
    if foreign is not None:
        return fail(
            "report aef",
            f"--out {out} holds {foreign.name}, which is not a file of an earlier AEF report; name a new folder,"
            " or the folder of an earlier report to replace",
            EXIT_USAGE,
        )

    entities = _Entities()
    try:
        written = write_report(
            config, args.year, out, args.format, version=args.submission_version, submitted=submitted, tap=entities
        )
    except GatewayError as exc:
        return fail("report aef", f"{exc.code.name}: {exc.message} ({exc.field})")
    except RecordRejected as exc:
        shown = "; ".join(f"{p.field}: {p.message}" for p in exc.problems[:5])
        more = f" (and {len(exc.problems) - 5} more)" if len(exc.problems) > 5 else ""
        return fail("report aef", f"the ledger cannot be reported as it stands: {shown}{more}")
    except (sqlite3.Error, DatabaseUnavailable) as exc:
        return fail("report aef", f"the gateway's database cannot be read: {exc}")
    except OSError as exc:
        return fail("report aef", _write_failure(exc, args.out))
    if args.format == "xlsx":
        print(f"wrote {out}")
    else:
        print(f"wrote {len(written) - 1} files and their SHA-256 sums ({written[-1].name}) to {out}")
    if entities.named:
        named = sorted(entities.named)
        shown = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
        print(
            f"note: the report names {len(named)} authorized entit{'y' if len(named) == 1 else 'ies'} ({shown}), and"
            " its Authorized entities table has no rows: the gateway keeps no entity's name, country of"
            " incorporation or conditions; add their rows before submitting"
        )
    return 0


class _Entities:
    """A `Tap` that gathers the authorized entity IDs the report names (in the Authorizations and Actions
    tables), whose rows of the Authorized entities table the gateway cannot write."""

    def __init__(self) -> None:
        self.named: set[str] = set()

    def __call__(self, part: str, records: Sequence[Any]) -> None:
        if part == "authorizations":
            for authorization in records:
                self.named.update(authorization.authorized_entities)
        elif part == "actions":
            self.named.update(action.header.using_entity for action in records if action.header.using_entity)


_PARTIAL = re.compile(r"\.(?P<name>.+)\.[^./]+\.partial")
"""The hidden file a report writes first (`adapters.aef.AefFiles`): ``.<name>.<random>.partial``."""


def _write_failure(exc: OSError, given: str) -> str:
    """The one line of a report that could not write its files: the file the operator named, not the hidden
    file the report writes first (``/reports/.aef.xlsx.k2j4.partial: Permission denied`` names nothing they
    gave)."""
    said = exc.strerror or str(exc)
    if not exc.filename:
        return f"--out {given}: {said}"
    path = Path(os.fsdecode(exc.filename))
    partial = _PARTIAL.fullmatch(path.name)
    if partial is None:
        return f"{path}: {said}"
    return f"--out {given}: cannot write {partial['name']} in {path.parent}: {said}"


def _replaceable_workbook(path: Path) -> bool:
    """Whether a report may replace the file at ``path``: an empty file, or a workbook (a ZIP archive holding
    ``xl/workbook.xml``, as every XLSX file does), such as an earlier report of the year. A mistyped --out must
    not replace a configuration, a key, or another ZIP archive (a backup, a document) with a workbook."""
    import zipfile

    try:
        with path.open("rb") as file:
            if file.read(4) == b"":
                return True
            file.seek(0)
            with zipfile.ZipFile(file) as archive:
                archive.getinfo("xl/workbook.xml")
    except OSError:
        return True  # the write names what is wrong with the file
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, NotImplementedError):
        return False  # NotImplementedError: an archive of a later ZIP version, no workbook a report wrote
    return True


_MANIFEST_LINE = re.compile(rb"[0-9a-f]{64}  [a-z_]+\.csv")


def _foreign_csv_file(folder: Path) -> Path | None:
    """The first file in ``folder`` that a CSV report would replace and may not: one of the report's names that is
    not an empty file or that table of an earlier report (its header row), or sums that are not a report's. A
    report into a folder of other work must not replace an ``actions.csv`` of someone else's."""
    import csv
    import io

    from adapters import aef
    from adapters.aef_columns import Table, headers

    expected: dict[str, bytes] = {}
    for table in Table:
        line = io.StringIO()
        csv.writer(line, lineterminator="\r\n").writerow(headers(table))
        expected[f"{table.name.lower()}.csv"] = line.getvalue().encode("utf-8")
    expected[aef.CSV_MANIFEST] = b""
    for name, header in expected.items():
        path = folder / name
        if not os.path.lexists(path):
            continue
        if path.is_symlink() or not path.is_file():
            continue  # replaced itself, never written through (a folder there fails the report, naming it)
        try:
            with path.open("rb") as file:
                start = file.read(max(len(header), 4096))
        except OSError:
            continue  # the write names what is wrong with the file
        if not start:
            continue
        if name == aef.CSV_MANIFEST:
            if len(start) < 4096 and all(_MANIFEST_LINE.fullmatch(line) for line in start.splitlines()):
                continue
            return path
        if not start.startswith(header):
            return path
    return None


Tap = Callable[[str, Sequence[Any]], None]
"""Sees each batch of records on its way to the files (the benchmark keeps a sample of them)."""


def write_report(
    config: GatewayConfig, year: int, out: Path, fmt: str, *, version: str, submitted: dt.date, tap: Tap | None = None
) -> list[Path]:
    """Write the AEF report of ``year`` from the database of ``config`` to ``out`` (a workbook, or with ``fmt``
    ``csv`` a folder of five files), all or nothing; the files written. Raises `GatewayError` (the configuration
    lacks what the report needs, or names another Party's database), `RecordRejected` (the ledger cannot be
    reported) or `OSError`."""
    from adapters import aef
    from gateway.domain.errors import GatewayError, ResponseCode
    from gateway.domain.protocol import DecisionPolicy
    from gateway.node import PARTY_SETTING
    from gateway.service import Gateway
    from gateway.store import open_store

    async def export() -> list[Path]:
        # Read-only: an SQLite file opened ?mode=ro, or PostgreSQL sessions whose every transaction is read-only.
        store = await open_store(config.database, read_only=True)
        try:
            async with store.read() as tx:
                owner = await tx.get_setting(PARTY_SETTING)
            if owner is not None and owner != config.party:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT,
                    f"the database keeps {owner}'s books, and the configuration is {config.party}'s: a report of"
                    f" {config.party} reads {config.party}'s database",
                    field="database",
                )
            gateway = Gateway(
                party=config.party,
                store=store,
                policy=DecisionPolicy(),
                clock=lambda: dt.datetime.now(dt.UTC),
                nomenclature=config.nomenclature,
                ledger_options=config.ledger,
            )
            created = aef.submission_instant(submitted)
            with aef.AefFiles(out, fmt, _context(config), created=created) as files:
                sink: AefSink = files if tap is None else _Tapped(files, tap)
                await gateway.aef_report_into(sink, year, version=version, submission_date=submitted)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the files go into place all together, or none
                return files.commit()
        finally:
            await store.close()

    # SIGTERM ends the report as Ctrl-C does, through the files' cleanup: a report stopped half way leaves
    # nothing behind (SIGKILL, which no process sees, leaves its hidden .partial files).
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return asyncio.run(export())
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Tapped:
    def __init__(self, sink: AefSink, tap: Tap) -> None:
        self.sink, self.tap = sink, tap

    def add(self, part: str, records: Sequence[Any]) -> None:
        self.tap(part, records)
        self.sink.add(part, records)


def _context(config: GatewayConfig) -> MappingContext:
    from adapters.context import MappingContext

    return MappingContext(extension_codes=tuple(config.ledger.underlying_registry_codes))
