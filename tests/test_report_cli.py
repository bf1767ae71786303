"""``carbon-gateway report aef`` run for real, against a database and a configuration made here: the five
tables as the nomenclature heads them, rows written out by hand, CSV, the same bytes for a past year after later
activity, a refused report that writes nothing, and bad arguments that get one line."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import errno
import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import aef, tabular
from adapters.aef_codec import render_row
from adapters.aef_columns import Table, headers
from adapters.context import MappingContext
from adapters.fields import FieldReader
from gateway.cli import main
from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.canonical import AefAction, AefHolding, MitigationType
from gateway.domain.mapping import RecordRejected
from gateway.domain.records import (
    ActionType,
    Authorization,
    FirstTransferDefinition,
    LedgerEntry,
    Purpose,
)
from gateway.node import PARTY_SETTING
from gateway.store.sqlite import SQLiteStore
from tests.adapters import strategies as s

CONFIG = """
party = "CHN"
database = "chn.db"
signer = "file:chn.key"
trust_document = "chn.trust.json"

[ledger]
ndc_first_year = 2021
ndc_last_year = 2030
adjustment_method = "single-year averaging"
averaging_divisor = "elapsed years"
party_registry = "CHN01"
gwp_values = "AR5"
underlying_registry_codes = { "CN-CCER" = "CCER", "VCS" = "VCS" }
"""

CCER = SerialSpace("CCER", "CN-CCER")
VCS = SerialSpace("VCU", "VCS")
OWN = UnitBlock(
    CCER,
    1001,
    2000,
    2024,
    project_id="P-0001",
    methodology_code="CCER-14-001-V01",
    mitigation_type="Removals",
    first_transferring_party="CHN",
    cooperative_approach="CA0001",
    authorization_id="CHN-A-0001",
)
ACQUIRED = UnitBlock(
    VCS,
    5001,
    5100,
    2023,
    project_id="VCS-981",
    mitigation_type="Emission reductions",
    first_transferred=True,
    first_transferring_party="CHE",
    cooperative_approach="CA0002",
    authorization_id="CHE-A-0007",
)
AUTHORIZATION = Authorization(
    authorization_id="CHN-A-0001",
    date=dt.date(2024, 3, 1),
    version="1.0",
    cooperative_approach="CA0001",
    metric="GHG",
    purposes=frozenset({Purpose.NDC}),
    authorized_quantity=100_000,
    timeframe_start=2021,
    timeframe_end=2030,
    first_transfer_definition=FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER,
    sectors=("Forestry and land use",),
    activity_types=("Afforestation",),
    authorized_parties=("CHN",),
)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def entry(when: str, action: ActionType, block: UnitBlock, **fields: object) -> LedgerEntry:
    values: dict[str, object] = {
        "entry_id": 0,
        "action_date": at(when),
        "action_type": action,
        "transfer_id": f"T-{when}",
        "block": block,
        "cooperative_approach": block.cooperative_approach,
        "authorization_id": block.authorization_id,
        "first_transferring_party": block.first_transferring_party,
        "transferring_party": "",
        "acquiring_party": "",
        "purpose": Purpose.NDC,
    }
    values.update(fields)
    return LedgerEntry(**values)  # type: ignore[arg-type]


LEDGER_2025 = [
    entry("2025-02-01T09:00:00", ActionType.AUTHORIZATION, OWN),
    # The ledger keeps microseconds; the AEF reports the millisecond.
    entry(
        "2025-03-01T08:00:00.123456",
        ActionType.FIRST_TRANSFER,
        dataclasses.replace(OWN.with_range(1001, 1400), first_transferred=True),
        transferring_party="CHN",
        acquiring_party="CHE",
        action_subtype="First transfer to another Party",
    ),
    entry("2025-04-02T10:30:00", ActionType.ACQUISITION, ACQUIRED, transferring_party="CHE", acquiring_party="CHN"),
    entry("2025-05-05T12:00:00", ActionType.USE, ACQUIRED.with_range(5001, 5050), year_of_use=2025, using_party="CHN"),
    entry(
        "2025-06-06T06:06:06",
        ActionType.CANCELLATION,
        OWN.with_range(1401, 1450),
        action_subtype="Mandatory and Voluntary cancellation to deliver OMGE",
        using_party="CHN",
        note="OMGE for the 2025 share",
    ),
]
LATER = [entry("2026-01-10T10:00:00", ActionType.TRANSFER, ACQUIRED.with_range(5051, 5100), acquiring_party="SGP")]

# The nomenclature's columns, word for word as the gateway writes them (`adapters.aef_columns`).
HEADERS: dict[str, list[str]] = {
    "Submission": [
        "Party",
        "Version",
        "Reported year",
        "Date of submission",
        "Review status of the initial report",
        "Result of the consistency check of this AEF submission",
        "First year of the NDC implementation period",
        "Last year of the NDC implementation period",
        "Reference to the Article 6 technical expert review report of the initial report",
    ],
    "Authorizations": [
        "Authorization ID",
        "Date of authorization",
        "Cooperative approach ID",
        "Version of the authorization",
        "Authorized quantity",
        "Metric",
        "Applicable GWP value(s)",
        "Applicable non-GHG metric",
        "Sector(s)",
        "Activity type(s)",
        "Purposes for authorization",
        "Authorized Party(ies) ID",
        "Authorized entity(ies) ID",
        "OIMP authorized by the Party",
        "Authorized timeframe",
        "Authorization terms and conditions",
        "Authorization documentation",
        "First transfer definition for OIMP",
        "Additional explanatory information",
    ],
    "Actions": [
        "Action date",
        "Action type",
        "Action subtype",
        "Cooperative approach ID",
        "Authorization ID",
        "First transferring participating Party ID",
        "Party ITMO registry ID",
        "First ID",
        "Last ID",
        "Underlying unit registry ID",
        "First unit ID",
        "Last unit ID",
        "Metric",
        "Applicable GWP value(s)",
        "Applicable non-GHG metric",
        "Quantity (t CO2 eq)",
        "Quantity (in non-GHG metric)",
        "Mitigation type",
        "Vintage",
        "Transferring participating Party ID",
        "Acquiring participating Party ID",
        "Purpose for which the ITMO has been used towards or cancelled for OIMP",
        "Using/cancelling participating Party ID",
        "Using/cancelling authorized entity ID",
        "Calendar year for which the ITMOs are used towards the Party's NDC",
        "Result of the consistency checks",
        "Additional explanatory information",
    ],
    "Holdings": [
        "Cooperative approach ID",
        "Authorization ID",
        "First transferring participating Party ID",
        "Party ITMO registry ID",
        "First ID",
        "Last ID",
        "Underlying unit registry ID",
        "First unit ID",
        "Last unit ID",
        "Metric",
        "Applicable GWP value(s)",
        "Applicable non-GHG metric",
        "Quantity (t CO2 eq)",
        "Quantity (in non-GHG metric)",
        "Mitigation type",
        "Vintage",
    ],
    "Authorized entities": [
        "Date of the authorization",
        "Name",
        "Country of incorporation",
        "Identification number",
        "Cooperative approach ID",
        "Conditions",
        "Change and revocation conditions",
        "Additional explanatory information",
    ],
}

BLANK = None
"""A cell left empty: a column the UNFCCC platform fills."""
NA = "NA"
"""A cell that does not apply to the row, or for which nothing was given (DESIGN.md section 2)."""
ROWS: dict[str, list[list[object]]] = {
    "Submission": [["CHN", "1.0", 2025, "15/04/2026", BLANK, BLANK, 2021, 2030, BLANK]],  # platform columns
    "Authorizations": [
        [
            "CHN-A-0001",
            "01/03/2024",
            "CA0001",
            "1.0",
            100000,
            "GHG",
            "AR5",
            NA,
            "Forestry and land use",
            "Afforestation",
            "NDC",
            "CHN",
            NA,
            NA,
            "2021 - 2030",
            NA,
            NA,
            NA,
            NA,
        ]
    ],
    "Actions": [
        # date, type, subtype, approach, authorization, first transferring Party, registry, First ID, Last ID,
        # underlying registry, first unit, last unit, metric, GWP, non-GHG metric, quantity, non-GHG quantity,
        # mitigation type, vintage, transferring, acquiring, purpose, using Party, using entity, year of use,
        # consistency check, additional information
        [
            "2025-02-01T09:00:00.000Z",
            "Authorization",
            "Not yet defined",
            "CA0001",
            "CHN-A-0001",
            "CHN",
            "CHN01",
            "CA0001-CHN01-CHN-1001-2024",
            "CA0001-CHN01-CHN-2000-2024",
            "CCER",
            "1001",
            "2000",
            "GHG",
            "AR5",
            NA,
            1000,
            NA,
            "Removals",
            2024,
            NA,
            NA,
            NA,
            NA,
            NA,
            NA,
            BLANK,
            NA,
        ],
        [
            "2025-03-01T08:00:00.123Z",
            "First transfer",
            "First transfer to another Party",
            "CA0001",
            "CHN-A-0001",
            "CHN",
            "CHN01",
            "CA0001-CHN01-CHN-1001-2024",
            "CA0001-CHN01-CHN-1400-2024",
            "CCER",
            "1001",
            "1400",
            "GHG",
            "AR5",
            NA,
            400,
            NA,
            "Removals",
            2024,
            NA,
            "CHE",
            NA,
            NA,
            NA,
            NA,
            BLANK,
            NA,
        ],
        [
            "2025-04-02T10:30:00.000Z",
            "Acquisition",
            "Not yet defined",
            "CA0002",
            "CHE-A-0007",
            "CHE",
            "CHN01",
            "CA0002-CHN01-CHE-5001-2023",
            "CA0002-CHN01-CHE-5100-2023",
            "VCS",
            "5001",
            "5100",
            "GHG",
            "AR5",
            NA,
            100,
            NA,
            "Emission reductions",
            2023,
            "CHE",
            NA,
            NA,
            NA,
            NA,
            NA,
            BLANK,
            NA,
        ],
        [
            "2025-05-05T12:00:00.000Z",
            "Use",
            "Not yet defined",
            "CA0002",
            "CHE-A-0007",
            "CHE",
            "CHN01",
            "CA0002-CHN01-CHE-5001-2023",
            "CA0002-CHN01-CHE-5050-2023",
            "VCS",
            "5001",
            "5050",
            "GHG",
            "AR5",
            NA,
            50,
            NA,
            "Emission reductions",
            2023,
            NA,
            NA,
            "NDC",
            "CHN",
            NA,
            2025,
            BLANK,
            NA,
        ],
        [
            "2025-06-06T06:06:06.000Z",
            "Cancellation",
            "Mandatory and Voluntary cancellation to deliver OMGE",
            "CA0001",
            "CHN-A-0001",
            "CHN",
            "CHN01",
            "CA0001-CHN01-CHN-1401-2024",
            "CA0001-CHN01-CHN-1450-2024",
            "CCER",
            "1401",
            "1450",
            "GHG",
            "AR5",
            NA,
            50,
            NA,
            "Removals",
            2024,
            NA,
            NA,
            "NDC",
            "CHN",
            NA,
            NA,
            BLANK,
            "OMGE for the 2025 share",
        ],
    ],
    # Held on 31 December 2025 23:59:59.999 UTC: what was tied and kept, and what was acquired and not used.
    "Holdings": [
        [
            "CA0001",
            "CHN-A-0001",
            "CHN",
            "CHN01",
            "CA0001-CHN01-CHN-1451-2024",
            "CA0001-CHN01-CHN-2000-2024",
            "CCER",
            "1451",
            "2000",
            "GHG",
            "AR5",
            NA,
            550,
            NA,
            "Removals",
            2024,
        ],
        [
            "CA0002",
            "CHE-A-0007",
            "CHE",
            "CHN01",
            "CA0002-CHN01-CHE-5051-2023",
            "CA0002-CHN01-CHE-5100-2023",
            "VCS",
            "5051",
            "5100",
            "GHG",
            "AR5",
            NA,
            50,
            NA,
            "Emission reductions",
            2023,
        ],
    ],
    "Authorized entities": [],
}
CSV_NAMES = ["submission.csv", "authorizations.csv", "actions.csv", "holdings.csv", "authorized_entities.csv"]


async def _append(database: Path, entries: list[LedgerEntry], authorizations: list[Authorization]) -> None:
    store = await SQLiteStore.open(database)
    try:
        async with store.transaction() as tx:
            for authorization in authorizations:
                await tx.insert_authorization(authorization)
            await tx.append_ledger(entries)
    finally:
        await store.close()


@pytest.fixture
def gateway_dir(tmp_path: Path) -> Path:
    (tmp_path / "chn.toml").write_text(CONFIG)
    asyncio.run(_append(tmp_path / "chn.db", LEDGER_2025, [AUTHORIZATION]))
    return tmp_path


def report(folder: Path, out: Path, *more: str, year: str = "2025") -> int:
    args = ["report", "aef", "--config", str(folder / "chn.toml"), "--year", year, "--out", str(out)]
    return main([*args, "--date", "2026-04-15", *more])


def sheets(data: bytes) -> dict[str, list[list[object]]]:
    """Every sheet's rows, each as wide as its header."""
    workbook = openpyxl.load_workbook(io.BytesIO(data))
    found = {}
    for sheet in workbook.worksheets:
        rows = [list(r) for r in sheet.iter_rows(values_only=True)]
        width = len(rows[0])
        found[sheet.title] = [[*row, *[None] * (width - len(row))] for row in rows]
    return found


def files(folder: Path) -> list[str]:
    """The files in ``folder``, less SQLite's own -wal and -shm beside a database, which any reader of a WAL
    database may create and which belong to the database, not to the report."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm")))


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_the_workbook_holds_the_five_tables_row_by_row(gateway_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = gateway_dir / "aef-2025.xlsx"
    assert report(gateway_dir, out) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    (gateway_dir / "plain").touch()  # the report's permissions are an ordinary new file's
    assert out.stat().st_mode & 0o777 == (gateway_dir / "plain").stat().st_mode & 0o777
    found = sheets(out.read_bytes())
    assert list(found) == ["Submission", "Authorizations", "Actions", "Holdings", "Authorized entities"]
    for title, rows in found.items():
        assert rows[0] == HEADERS[title], title
        assert rows[0] == list(headers(Table(title))), title
        assert rows[1:] == ROWS[title], title


def test_csv_writes_five_files_with_the_same_rows(gateway_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = gateway_dir / "aef-2025"
    assert report(gateway_dir, out, "--format", "csv") == 0
    assert capsys.readouterr().out == f"wrote 5 files and their SHA-256 sums (aef-report.sha256) to {out}\n"
    assert sorted(p.name for p in out.iterdir()) == sorted([*CSV_NAMES, "aef-report.sha256"])
    sums = (out / "aef-report.sha256").read_text(encoding="ascii").splitlines()
    assert sums == [f"{hashlib.sha256((out / name).read_bytes()).hexdigest()}  {name}" for name in CSV_NAMES]
    for name, title in zip(CSV_NAMES, HEADERS, strict=True):
        lines = (out / name).read_bytes().decode("utf-8").split("\r\n")
        expected = [HEADERS[title], *([("" if v is None else str(v)) for v in row] for row in ROWS[title])]
        assert lines == [",".join(row) for row in expected] + [""], name


def test_a_past_year_exported_again_after_later_activity_is_the_same_bytes(gateway_dir: Path) -> None:
    first, again = gateway_dir / "first.xlsx", gateway_dir / "again.xlsx"
    assert report(gateway_dir, first) == 0
    assert report(gateway_dir, gateway_dir / "first-csv", "--format", "csv") == 0
    asyncio.run(_append(gateway_dir / "chn.db", LATER, []))
    assert report(gateway_dir, again) == 0
    assert report(gateway_dir, gateway_dir / "again-csv", "--format", "csv") == 0
    assert again.read_bytes() == first.read_bytes()
    for name in CSV_NAMES:
        assert (gateway_dir / "again-csv" / name).read_bytes() == (gateway_dir / "first-csv" / name).read_bytes()
    # The workbook is stamped with the submission date, and every zip entry with one fixed time.
    with zipfile.ZipFile(first) as archive:
        core = archive.read("docProps/core.xml").decode()
        assert core.count("2026-04-15T00:00:00Z") == 2, core
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    # The later year has its own report: the onward transfer; only the units CHN tied and kept are held.
    assert report(gateway_dir, gateway_dir / "2026.xlsx", year="2026") == 0
    later = sheets((gateway_dir / "2026.xlsx").read_bytes())
    assert [row[:2] for row in later["Actions"][1:]] == [["2026-01-10T10:00:00.000Z", "Transfer"]]
    assert later["Actions"][1][20] == "SGP"
    assert later["Holdings"][1:] == [ROWS["Holdings"][0]]


def test_a_report_refuses_another_partys_database(gateway_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def claimed_by_che() -> None:
        store = await SQLiteStore.open(gateway_dir / "chn.db")
        try:
            async with store.transaction() as tx:
                await tx.put_setting(PARTY_SETTING, "CHE", dt.datetime.now(dt.UTC))
        finally:
            await store.close()

    asyncio.run(claimed_by_che())
    before = files(gateway_dir)
    assert report(gateway_dir, gateway_dir / "aef.xlsx") == 1
    line = one_line(capsys.readouterr().err)
    assert "the database keeps CHE's books, and the configuration is CHN's" in line and "(database)" in line
    assert files(gateway_dir) == before


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_a_refused_report_writes_nothing(gateway_dir: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    odd = dataclasses.replace(OWN.with_range(3001, 3010), mitigation_type="Avoidance")
    asyncio.run(_append(gateway_dir / "chn.db", [entry("2025-07-01T00:00:00", ActionType.AUTHORIZATION, odd)], []))
    before = files(gateway_dir)
    out = gateway_dir / ("aef.xlsx" if fmt == "xlsx" else "aef")
    assert report(gateway_dir, out, "--format", fmt) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("carbon-gateway report aef: the ledger cannot be reported as it stands: ledger[6]")
    assert "mitigation_type" in line and "states no AEF mitigation type" in line
    assert files(gateway_dir) == before


def test_a_csv_report_stopped_while_its_files_are_replaced_leaves_no_sums_to_vouch_for_them(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five files cannot be replaced at once: their sums go first and come back last, so a report stopped between
    two files (here: the third replacement fails) leaves a folder whose files nothing vouches for."""
    out = gateway_dir / "aef-2025"
    assert report(gateway_dir, out, "--format", "csv") == 0
    assert (out / "aef-report.sha256").is_file()
    capsys.readouterr()
    replace, replaced = os.replace, list[object]()

    def failing(source: object, target: object) -> None:
        if len(replaced) == 2:
            raise OSError(errno.EIO, "stopped here")
        replaced.append(target)
        replace(source, target)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", failing)
    assert report(gateway_dir, out, "--format", "csv") != 0
    assert len(replaced) == 2 and not (out / "aef-report.sha256").exists()


def test_a_report_that_cannot_replace_one_of_its_files_replaces_none(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = gateway_dir / "aef-2025"
    assert report(gateway_dir, out, "--format", "csv") == 0
    capsys.readouterr()
    earlier = {name: (out / name).read_bytes() for name in CSV_NAMES}
    for name in CSV_NAMES:  # an earlier report's tables (a CSV report replaces no other files)
        (out / name).write_bytes(earlier[name].split(b"\r\n")[0] + b"\r\nan earlier report\r\n")
    (out / "holdings.csv").unlink()
    (out / "holdings.csv").mkdir()  # a folder where a file of the report goes: os.replace fails on it
    before = files(out)
    assert report(gateway_dir, out, "--format", "csv") == 1
    line = one_line(capsys.readouterr().err)
    assert f"{out / 'holdings.csv'}: is not a regular file" in line and "nothing was written" in line, line
    assert files(out) == before  # not one file replaced, no partial file left
    assert all((out / n).read_bytes().endswith(b"\r\nan earlier report\r\n") for n in CSV_NAMES if n != "holdings.csv")
    assert earlier  # the first report wrote every file


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_a_report_stopped_by_sigterm_half_way_leaves_nothing_behind(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    import os
    import signal

    from adapters import aef

    real_add = aef.AefFiles.add

    def add_then_stop(self: aef.AefFiles, part: str, records: Any) -> None:
        real_add(self, part, records)
        if part == "actions":
            os.kill(os.getpid(), signal.SIGTERM)  # as a supervisor stopping the command would

    monkeypatch.setattr(aef.AefFiles, "add", add_then_stop)
    seen: list[int] = []
    ours = signal.signal(signal.SIGTERM, lambda number, frame: seen.append(number))  # not the test run's death
    try:
        before = files(gateway_dir)
        out = gateway_dir / ("aef.xlsx" if fmt == "xlsx" else "aef")
        assert report(gateway_dir, out, "--format", fmt) == 130
        assert capsys.readouterr().err == "carbon-gateway: interrupted\n"
        assert files(gateway_dir) == before and seen == []
        assert signal.getsignal(signal.SIGTERM) is not signal.default_int_handler  # given back after the report
    finally:
        signal.signal(signal.SIGTERM, ours)


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_a_folder_the_file_system_cannot_sync_does_not_fail_a_report_whose_files_are_in_place(
    gateway_dir: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    import errno
    import os
    import stat

    real_fsync, synced = os.fsync, []

    def fsync(descriptor: int) -> None:
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):
            synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
            raise OSError(errno.EINVAL, "Invalid argument")  # as some network file systems answer
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    out = gateway_dir / "reports" / ("aef.xlsx" if fmt == "xlsx" else "aef")
    out.parent.mkdir()
    assert report(gateway_dir, out, "--format", fmt) == 0
    assert out.exists()
    # The folder a CSV report made is a new name in its parent: that folder is synced too.
    expected = {str(out.parent)} if fmt == "xlsx" else {str(out), str(out.parent)}
    assert set(synced) >= expected


def test_a_cell_xlsx_cannot_hold_refuses_the_workbook_naming_it(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bell = entry("2025-08-01T00:00:00", ActionType.AUTHORIZATION, OWN.with_range(4001, 4010), note="ring \x07")
    asyncio.run(_append(gateway_dir / "chn.db", [bell], []))
    out = gateway_dir / "aef.xlsx"
    assert report(gateway_dir, out) == 1
    line = one_line(capsys.readouterr().err)
    assert "Actions[6].Additional explanatory information: holds a control character" in line
    assert not out.exists()
    assert [p.name for p in gateway_dir.iterdir() if p.name.startswith(".")] == []


def test_bad_arguments_get_one_line(gateway_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(gateway_dir / "aef.xlsx")
    config = str(gateway_dir / "chn.toml")
    cases = [
        (["--config", config, "--year", "99999"], "--year 99999 is not in 1990..2100"),
        (["--config", str(gateway_dir / "nowhere.toml"), "--year", "2025"], "no such configuration file"),
        (["--config", config, "--year", "2025", "--version", "one"], "--version 'one' is not X.Y"),
        (["--config", config, "--year", "2025", "--version", "0.0"], "--version '0.0' is not X.Y (the first is 1.0)"),
        (["--config", config, "--year", "2025", "--date", "1900-01-01"], "--date 1900-01-01 is before the reported"),
        (["--config", config, "--year", "2025", "--date", "15/04/2026"], "is not a date"),
        (["--config", config, "--year", "2025", "--date", "20260415"], "is not a date"),
        (["--config", config, "--year", "2025", "--date", "2026-W16-3"], "is not a date"),
    ]
    for args, says in cases:
        assert main(["report", "aef", *args, "--out", out]) == 2
        assert says in one_line(capsys.readouterr().err)
    with pytest.raises(SystemExit) as exited:
        main(["report", "aef", "--config", config, "--year", "soon", "--out", out])
    assert exited.value.code == 2
    assert "argument --year: 'soon' is not a whole number in the digits 0-9" in one_line(capsys.readouterr().err)
    # A mistyped --out naming the configuration (or a key) is not replaced by a workbook.
    before = (gateway_dir / "chn.toml").read_bytes()
    assert main(["report", "aef", "--config", config, "--year", "2025", "--out", config]) == 2
    assert "exists and is not an XLSX workbook" in one_line(capsys.readouterr().err)
    assert (gateway_dir / "chn.toml").read_bytes() == before
    (gateway_dir / "chn.db").unlink()
    assert main(["report", "aef", "--config", config, "--year", "2025", "--out", out]) == 2
    assert "no such database" in one_line(capsys.readouterr().err)
    assert not (gateway_dir / "aef.xlsx").exists()


def test_an_empty_out_is_refused_not_taken_for_the_working_folder(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out "$DIR"`` with the variable unset must not write five CSV files into wherever the operator stands."""
    here = gateway_dir / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    config = str(gateway_dir / "chn.toml")
    for out, fmt in (("", "csv"), ("", "xlsx"), ("  ", "csv")):
        assert main(["report", "aef", "--config", config, "--year", "2025", "--out", out, "--format", fmt]) == 2
        assert one_line(capsys.readouterr().err).endswith(
            "--out is empty; name the XLSX file (or, with --format csv, the folder)"
        )
    assert list(here.iterdir()) == []


def test_labels_and_na_as_design_section_2_words_them(gateway_dir: Path) -> None:
    out = gateway_dir / "aef.xlsx"
    assert report(gateway_dir, out) == 0
    actions = sheets(out.read_bytes())["Actions"]
    header = actions[0]
    for label in (
        "Applicable GWP value(s)",
        "Applicable non-GHG metric",
        "Transferring participating Party ID",
        "Acquiring participating Party ID",
    ):
        assert label in header
    first_transfer = dict(zip(header, actions[2], strict=True))
    assert first_transfer["Transferring participating Party ID"] == "NA"


# The writer's fast paths, each against the full path it stands for.


def _full_rows(table: Table, records: list[object]) -> list[object]:
    """Each record's row through `render_row` (the checked way), or the fields it is refused for."""
    found: list[object] = []
    for record in records:
        try:
            row, _, _ = render_row(table, record, MappingContext())
        except RecordRejected as rejected:
            found.append(sorted(p.field for p in rejected.problems))
            continue
        found.append([row.get(h) for h in headers(table)])
    return found


def _fast_rows(table: Table, records: list[object]) -> list[object]:
    """The same through `rendered_rows`, one record at a time after the first (which teaches the template)."""
    found: list[object] = []
    for record in records:
        try:
            found.append(aef.rendered_rows(table, [records[0], record])[1])
        except RecordRejected as rejected:
            found.append(sorted(p.field.split(".", 1)[1] for p in rejected.problems))
    return found


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(s.aef_actions(), st.lists(st.tuples(s.ranges(), s.year, s.instant, st.sampled_from(list(MitigationType)))))
def test_action_rows_spelled_from_a_template_are_the_rows_render_row_writes(
    action: AefAction, blocks: list[tuple[tuple[int, int], int, dt.datetime, MitigationType]]
) -> None:
    variants: list[object] = [action]
    for (start, end), vintage, instant, mitigation in blocks:
        header = dataclasses.replace(action.header, action_date=instant)
        variants.append(dataclasses.replace(action, header=header, itmo_first_serial=start, itmo_last_serial=end))
        variants.append(dataclasses.replace(variants[-1], quantity=end - start + 1, vintage=vintage))  # type: ignore[type-var]
        variants.append(dataclasses.replace(variants[-1], mitigation_type=mitigation))  # type: ignore[type-var]
    odd = dataclasses.replace(action.header, action_date=action.action_date.replace(microsecond=1))
    variants += [
        dataclasses.replace(action, header=odd),
        dataclasses.replace(action, quantity=action.quantity + 1),
        dataclasses.replace(action, vintage=999),
        dataclasses.replace(action, last_unit_id="" if action.first_unit_id else "x"),
    ]
    assert _fast_rows(Table.ACTIONS, variants) == _full_rows(Table.ACTIONS, variants)


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(s.aef_holdings(), st.lists(st.tuples(s.ranges(), s.year)))
def test_holding_rows_spelled_from_a_template_are_the_rows_render_row_writes(
    holding: AefHolding, blocks: list[tuple[tuple[int, int], int]]
) -> None:
    variants: list[object] = [holding]
    for (start, end), vintage in blocks:
        variants.append(
            dataclasses.replace(holding, itmo_first_serial=start, itmo_last_serial=end, quantity=end - start + 1)
        )
        variants.append(dataclasses.replace(holding, vintage=vintage))
    assert _fast_rows(Table.HOLDINGS, variants) == _full_rows(Table.HOLDINGS, variants)


CELLS = st.one_of(
    st.none(),
    st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00\r"), max_size=12),
    st.sampled_from(["", " lead", "trail ", "  ", "a & b < c > d", "ü€", "#N/A"]),
    st.integers(min_value=0, max_value=2**63 - 1),
)


def _spelled_otherwise(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, int) and abs(value) >= tabular._EXACT_IN_A_SPREADSHEET:
        return True  # written as text (tested below)
    return f"{value:.16g}" != (int.__repr__(value) if isinstance(value, int) else float.__repr__(value))


@pytest.mark.skipif(bool(openpyxl.LXML), reason="openpyxl spells its XML through lxml, not et_xmlfile, here")
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(CELLS, min_size=1, max_size=6), min_size=1, max_size=6))
def test_sheet_xml_is_what_openpyxl_write_only_writes(rows: list[list[object]]) -> None:
    """Cells openpyxl would make formulas or error values, and empty text, are left out of the comparison (the
    gateway writes the first two as text and leaves empty text out, as `None`)."""
    rows = [[None if v in ("", "#N/A") or (isinstance(v, str) and v[:1] == "=") else v for v in r] for r in rows]
    # Numbers openpyxl spells as "%.16g", which reads back as another number (past 2^53, or needing 17 digits)
    # or another type (100.0 as 100): the gateway writes every digit, and compares them elsewhere.
    rows = [[None if _spelled_otherwise(v) else v for v in r] for r in rows]
    if any(isinstance(v, str) and tabular._ILLEGAL_XLSX_TEXT.search(v) for r in rows for v in r):
        return
    # Text a spreadsheet reads as an escaped character the gateway escapes, as openpyxl does not.
    rows = [[None if isinstance(v, str) and tabular._OOXML_ESCAPED.search(v) else v for v in r] for r in rows]
    ours = io.BytesIO()
    with tabular.XlsxWriter(ours) as workbook:
        workbook.sheet("Rows", ["a", "b"]).append(rows)
    theirs = openpyxl.Workbook(write_only=True)
    sheet = theirs.create_sheet("Rows")
    for row in [["a", "b"], *rows]:
        sheet.append(row)
    out = io.BytesIO()
    theirs.save(out)
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(out) as b:
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            if name != "docProps/core.xml":  # time stamps
                assert a.read(name) == b.read(name), name


@pytest.mark.parametrize(
    ("value", "as_text"),
    [
        (10**15 - 1, False),
        (-(10**15) + 1, False),
        (10**15, True),
        (2**53 + 1, True),
        (2**63 - 1, True),
        (-(2**63), True),
    ],
)
def test_integers_past_fifteen_digits_are_written_as_text_and_read_back_as_the_same_integers(
    value: int, as_text: bool
) -> None:
    """A spreadsheet keeps 15 significant digits of a number: a quantity of 2^63 - 1 written as a number would be
    read, shown and saved as 9223372036854770000. Written as text, it stays every digit."""
    data = tabular.write_xlsx([("Rows", ["q"], [[value]])])
    with zipfile.ZipFile(io.BytesIO(data)) as package:
        sheet = package.read("xl/worksheets/sheet1.xml").decode()
    written = (
        f'<c r="A2" t="inlineStr"><is><t>{value}</t></is></c>' if as_text else f'<c r="A2" t="n"><v>{value}</v></c>'
    )
    assert written in sheet
    ((_, [[read]]),) = tabular.read_xlsx(data).values()
    assert read == (str(value) if as_text else value)
    fields = FieldReader({"q": read})
    if value > 0:
        assert fields.quantity("q") == value and not fields.problems


def test_text_is_never_a_formula_and_a_workbook_is_the_same_bytes_every_time() -> None:
    rows: list[list[object]] = [["=1+1", "#N/A", 7], ["x", None, 2**40]]
    first = tabular.write_xlsx([("Rows", ["a", "b", "c"], rows)])
    assert tabular.write_xlsx([("Rows", ["a", "b", "c"], rows)]) == first
    assert tabular.read_xlsx(first) == {"Rows": (["a", "b", "c"], rows)}
    with pytest.raises(RecordRejected) as refused:
        tabular.write_xlsx([("Rows", ["a", "b"], [["ok", "x" * 32768]])])
    assert [p.field for p in refused.value.problems] == ["Rows[1].b"]


def test_the_report_reads_the_database_without_changing_it(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing is created or migrated: a file that is no gateway database, or one of another schema version,
    is refused in one line and left as it was."""
    import sqlite3

    database = gateway_dir / "chn.db"
    before = database.read_bytes()
    assert report(gateway_dir, gateway_dir / "aef.xlsx") == 0
    assert database.read_bytes() == before
    capsys.readouterr()
    database.write_bytes(b"not a database at all" * 100)
    assert report(gateway_dir, gateway_dir / "again.xlsx") == 1
    assert "is not a gateway database" in one_line(capsys.readouterr().err)
    assert database.read_bytes() == b"not a database at all" * 100
    database.unlink()
    db = sqlite3.connect(database)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, description TEXT)")
    db.executemany("INSERT INTO schema_migrations VALUES (?, '')", [(1,), (2,), (3,), (4,)])
    db.commit()
    db.close()
    older = database.read_bytes()
    assert report(gateway_dir, gateway_dir / "again.xlsx") == 1
    assert "start the gateway of this version once" in one_line(capsys.readouterr().err)
    assert database.read_bytes() == older
    assert not (gateway_dir / "again.xlsx").exists()


@pytest.mark.parametrize(
    "text",
    ["corrects _x0041_ and _x000D_ entries", "_x005F_", "a_x005F_x0041_b", "_x41_", "_X0041_", "__x0041__", "x_"],
)
def test_text_a_spreadsheet_would_read_as_an_escape_is_written_escaped_and_read_back_as_written(text: str) -> None:
    """ECMA-376 ST_Xstring: a spreadsheet reads ``_x0041_`` in a cell as ``A``; the literal text is written
    ``_x005F_x0041_`` (the underscore escaped) and read back as written."""
    data = tabular.write_xlsx([("Rows", ["a"], [[text]])])
    with zipfile.ZipFile(io.BytesIO(data)) as package:
        sheet = package.read("xl/worksheets/sheet1.xml").decode()
    escaped = {
        "corrects _x0041_ and _x000D_ entries": "corrects _x005F_x0041_ and _x005F_x000D_ entries",
        "_x005F_": "_x005F_x005F_",
        "a_x005F_x0041_b": "a_x005F_x005F_x005F_x0041_b",
        "__x0041__": "__x005F_x0041__",
    }.get(text, text)
    assert f"<t>{escaped}</t>" in sheet
    assert tabular.read_xlsx(data) == {"Rows": (["a"], [[text]])}


def test_a_spreadsheet_s_escaped_characters_are_read_as_the_characters() -> None:
    """What a spreadsheet wrote escaped (a carriage return as ``_x000D_``, a literal ``_x0041_`` as
    ``_x005F_x0041_``) is read as what it stands for."""
    written = openpyxl.Workbook()
    written.active.append(["note"])
    written.active.append(["line_x000D_end and _x005F_x0041_ and _x0041_"])
    out = io.BytesIO()
    written.save(out)
    assert tabular.read_xlsx(out.getvalue())["Sheet"] == (["note"], [["line\rend and _x0041_ and A"]])


def test_a_workbook_is_written_where_a_link_points_and_a_device_is_refused_before_the_report(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out naming a symbolic link writes the workbook where it points, as a shell's > would, and keeps the link
    (a link to nothing yet creates its target); a device or a pipe is refused at once, not after the report."""
    (gateway_dir / "reports").mkdir()
    link = gateway_dir / "latest.xlsx"
    link.symlink_to(gateway_dir / "reports" / "2025.xlsx")
    assert report(gateway_dir, link) == 0
    assert capsys.readouterr().out == f"wrote {gateway_dir / 'reports' / '2025.xlsx'}\n"
    assert link.is_symlink() and sheets(link.read_bytes())["Actions"][1:] == ROWS["Actions"]
    loop = gateway_dir / "loop.xlsx"
    loop.symlink_to(loop)
    assert report(gateway_dir, loop) == 2
    assert one_line(capsys.readouterr().err).endswith(f"--out {loop}: a loop of symbolic links")
    assert loop.is_symlink()
    fifo = gateway_dir / "pipe.xlsx"
    os.mkfifo(fifo)
    for device in (Path("/dev/null"), fifo):
        assert report(gateway_dir, device) == 2
        assert one_line(capsys.readouterr().err).endswith(
            f"--out {device} is not a regular file (a device or a pipe); name the file to write"
        )


def test_a_csv_folder_is_written_where_a_link_points_and_a_device_is_named_as_one(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--format csv --out naming a link writes the five files where it points, as the workbook is, making the
    folder a link to nothing yet names (not "File exists", exit 1); a link to a device or a pipe is refused
    as what it is, not as "a file"."""
    link = gateway_dir / "latest"
    link.symlink_to(gateway_dir / "reports-2025")
    assert report(gateway_dir, link, "--format", "csv") == 0
    target = gateway_dir / "reports-2025"
    assert capsys.readouterr().out == f"wrote 5 files and their SHA-256 sums (aef-report.sha256) to {target}\n"
    assert link.is_symlink() and sorted(p.name for p in link.iterdir()) == sorted([*CSV_NAMES, "aef-report.sha256"])
    loop = gateway_dir / "loop"
    loop.symlink_to(loop)
    assert report(gateway_dir, loop, "--format", "csv") == 2
    assert one_line(capsys.readouterr().err).endswith(f"--out {loop}: a loop of symbolic links")
    fifo = gateway_dir / "pipe"
    os.mkfifo(fifo)
    to_device = gateway_dir / "null"
    to_device.symlink_to("/dev/null")
    for device, named in ((Path("/dev/null"), "/dev/null"), (fifo, str(fifo)), (to_device, "/dev/null")):
        assert report(gateway_dir, device, "--format", "csv") == 2
        assert one_line(capsys.readouterr().err).endswith(
            f"--out {named} is not a folder (a device or a pipe); --format csv writes five files into a folder"
        )


def test_a_csv_report_replaces_only_an_earlier_report_s_files_in_its_folder(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a workbook replaces only a workbook, five CSV files go into a folder over an earlier report's files
    (or empty ones) alone: a mistyped --out naming a folder of other work keeps its actions.csv."""
    out = gateway_dir / "work"
    out.mkdir()
    assert report(gateway_dir, out, "--format", "csv") == 0
    assert report(gateway_dir, out, "--format", "csv") == 0, "an earlier report is replaced"
    capsys.readouterr()
    (out / "holdings.csv").write_bytes(b"")
    assert report(gateway_dir, out, "--format", "csv") == 0, "so is an empty file"
    capsys.readouterr()
    for name, text in (("actions.csv", "date,amount\n2025-01-01,12\n"), ("aef-report.sha256", "my notes\n")):
        other = gateway_dir / f"other-{name}"
        other.mkdir()
        (other / name).write_text(text)
        before = sorted((p.name, p.is_file() and p.read_bytes()) for p in other.iterdir())
        assert report(gateway_dir, other, "--format", "csv") == 2
        assert one_line(capsys.readouterr().err).endswith(
            f"--out {other} holds {name}, which is not a file of an earlier AEF report; name a new folder, or the"
            " folder of an earlier report to replace"
        )
        assert sorted((p.name, p.is_file() and p.read_bytes()) for p in other.iterdir()) == before


def test_an_entry_in_the_last_millisecond_of_a_year_is_reported_in_that_year(gateway_dir: Path) -> None:
    """An earlier release dated entries to the microsecond. One at 31 December 23:59:59.999500 is reported, as
    every instant is, at its millisecond (23:59:59.999): in that year's Actions and gone from its Holdings, and
    not missing from both years' reports."""
    late = entry(
        "2025-12-31T23:59:59.999600", ActionType.TRANSFER, ACQUIRED.with_range(5051, 5100), acquiring_party="SGP"
    )
    asyncio.run(_append(gateway_dir / "chn.db", [late], []))
    assert report(gateway_dir, gateway_dir / "2025.xlsx") == 0
    found = sheets((gateway_dir / "2025.xlsx").read_bytes())
    assert found["Actions"][1:-1] == ROWS["Actions"]
    assert found["Actions"][-1][:2] == ["2025-12-31T23:59:59.999Z", "Transfer"]
    assert found["Holdings"][1:] == [ROWS["Holdings"][0]]
    assert report(gateway_dir, gateway_dir / "2026.xlsx", year="2026") == 0
    later = sheets((gateway_dir / "2026.xlsx").read_bytes())
    assert later["Actions"][1:] == []
    assert later["Holdings"][1:] == [ROWS["Holdings"][0]]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            "UPDATE ledger SET action_type = 'Bogus' WHERE entry_id = 2",
            "ledger[after 1]: a ledger entry holds a value this version cannot read (ValueError: 'Bogus' is not a"
            " valid ActionType)",
        ),
        (
            "UPDATE ledger SET purpose = 'XX' WHERE entry_id = 1",
            "ledger[first]: a ledger entry holds a value this version cannot read (ValueError: 'XX' is not a valid"
            " Purpose)",
        ),
        (
            # Sorts after every instant as text: the store's date comparison left it out of every year's report.
            "UPDATE ledger SET action_date = 'yesterday' WHERE entry_id = 2",
            "ledger[entry 2].action_date: 'yesterday' is no instant this version writes, so the entry belongs to no"
            " year",
        ),
        (
            # Digits where an instant has them, but no instant: it sorts after the year's last instant, so the
            # year it names left it out of its report without a word.
            "UPDATE ledger SET action_date = '2025-12-32T00:00:00.000000Z' WHERE entry_id = 2",
            "ledger[entry 2].action_date: '2025-12-32T00:00:00.000000Z' is no instant this version writes",
        ),
        (
            "UPDATE ledger SET action_date = '2025-13-01T00:00:00.000000Z' WHERE entry_id = 2",
            "ledger[entry 2].action_date: '2025-13-01T00:00:00.000000Z' is no instant this version writes",
        ),
        (
            "UPDATE ledger SET action_date = '2025-06-01 10:00:00' WHERE entry_id = 2",
            "ledger[after 1]: a ledger entry holds a value this version cannot read",
        ),
        (
            "UPDATE authorization_versions SET body = '{}'",
            "authorizations: an authorization version holds a value this version cannot read (KeyError:"
            " 'authorization_id')",
        ),
    ],
)
def test_a_row_this_version_cannot_read_is_one_line_naming_where_not_a_traceback(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str], change: str, says: str
) -> None:
    """A reviewer's copy of a database changed by hand, or by a later version, holds a value the report cannot
    read: the report refuses it in one line naming the table and the entry (exit 1), and writes nothing."""
    import sqlite3

    with sqlite3.connect(gateway_dir / "chn.db") as db:
        db.execute(change)
    db.close()
    before = files(gateway_dir)
    assert report(gateway_dir, gateway_dir / "aef.xlsx") == 1
    line = one_line(capsys.readouterr().err)
    assert f"the ledger cannot be reported as it stands: {says}" in line, line
    assert files(gateway_dir) == before


def test_a_workbook_replaces_an_earlier_workbook_not_any_zip_archive(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every XLSX file is a ZIP archive, but not every ZIP archive is a workbook: a mistyped --out naming a
    backup.zip or a .docx keeps it, and the start of a ZIP file alone (b"PK\\x03\\x04...") is no workbook."""
    earlier = gateway_dir / "aef.xlsx"
    assert report(gateway_dir, earlier) == 0
    assert report(gateway_dir, earlier) == 0, "an earlier report is replaced"
    capsys.readouterr()
    backup = gateway_dir / "backup.zip"
    with zipfile.ZipFile(backup, "w") as archive:
        archive.writestr("chn.db", b"the books")
    torn = gateway_dir / "torn.xlsx"
    torn.write_bytes(b"PK\x03\x04 and then something else")
    for path in (backup, torn):
        before = path.read_bytes()
        assert report(gateway_dir, path) == 2
        assert one_line(capsys.readouterr().err).endswith(
            f"--out {path} exists and is not an XLSX workbook (a configuration, a key, an archive?); name a new file,"
            " or an earlier report to replace"
        )
        assert path.read_bytes() == before


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no process creates files")
def test_a_folder_the_report_cannot_write_in_is_named_with_the_out_given_not_a_hidden_file(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A report into a place it cannot write (a read-only mount; /proc here, where even root creates nothing)
    fails in one line naming the --out the operator gave and the folder, not the hidden .partial file the
    report writes first, which the operator never named."""
    for out, fmt, name in (("/proc/aef-2025.xlsx", "xlsx", "aef-2025.xlsx"), ("/proc/sys", "csv", "submission.csv")):
        assert report(gateway_dir, Path(out), "--format", fmt) == 1
        line = one_line(capsys.readouterr().err)
        folder = str(Path(out).parent) if fmt == "xlsx" else out
        assert f"report aef: --out {out}: cannot write {name} in {folder}: " in line, line
        assert ".partial" not in line, line


def test_a_database_that_is_a_folder_is_named_as_one_not_a_disk_error(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configuration whose database names a folder (a mistyped path, a volume mounted at the file's place)
    gets one line saying so and exit 2, as a database that does not exist does, not SQLite's 'disk I/O error'."""
    folder = gateway_dir / "books"
    folder.mkdir()
    config = gateway_dir / "folder.toml"
    config.write_text(CONFIG.replace('database = "chn.db"', 'database = "books"'))
    args = ["report", "aef", "--config", str(config), "--year", "2025", "--date", "2026-04-15"]
    assert main([*args, "--out", str(gateway_dir / "aef.xlsx")]) == 2
    assert one_line(capsys.readouterr().err).endswith(
        f"{folder} is not a database file (a folder, a device?); check database in {config}"
    )
    assert not (gateway_dir / "aef.xlsx").exists()


def test_a_report_naming_authorized_entities_says_their_table_is_left_to_fill(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Authorizations and uses name authorized entities by ID, but the gateway keeps no entity's name, country
    or conditions, so the Authorized entities table has no rows: a reviewer would find IDs that no row
    describes. The report says so, naming them, instead of handing over an inconsistent submission in silence."""
    assert report(gateway_dir, gateway_dir / "plain.xlsx") == 0
    assert capsys.readouterr().out == f"wrote {gateway_dir / 'plain.xlsx'}\n", "no entity, no note"
    named = dataclasses.replace(AUTHORIZATION, authorization_id="CHN-A-0002", authorized_entities=("CN-ENT-0001",))
    use = entry(
        "2025-07-07T07:00:00",
        ActionType.USE,
        ACQUIRED.with_range(5051, 5060),
        year_of_use=2025,
        using_party="CHN",
        using_entity="CN-ENT-0002",
    )
    asyncio.run(_append(gateway_dir / "chn.db", [use], [named]))
    out = gateway_dir / "aef.xlsx"
    assert report(gateway_dir, out) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {out}",
        "note: the report names 2 authorized entities (CN-ENT-0001, CN-ENT-0002), and its Authorized entities"
        " table has no rows: the gateway keeps no entity's name, country of incorporation or conditions; add"
        " their rows before submitting",
    ]
    assert sheets(out.read_bytes())["Authorized entities"][1:] == []


def test_an_archive_at_out_that_zipfile_cannot_open_is_kept_with_one_line_not_a_traceback(
    gateway_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ZIP archive made by a later archiver (its central directory asks for a ZIP version Python does not read)
    at --out: `zipfile` raises NotImplementedError, not BadZipFile, and the report ended in a traceback. It is no
    workbook this report wrote, so it is kept, with the one line of any other file that is not a workbook."""
    made = io.BytesIO()
    with zipfile.ZipFile(made, "w") as archive:
        archive.writestr("xl/workbook.xml", b"<workbook/>")
    data = bytearray(made.getvalue())
    central = data.index(b"PK\x01\x02")
    data[central + 6 : central + 8] = (202).to_bytes(2, "little")  # "version needed to extract": 20.2
    out = gateway_dir / "later.xlsx"
    out.write_bytes(bytes(data))
    assert report(gateway_dir, out) == 2
    assert one_line(capsys.readouterr().err).endswith(
        f"--out {out} exists and is not an XLSX workbook (a configuration, a key, an archive?); name a new file,"
        " or an earlier report to replace"
    )
    assert out.read_bytes() == bytes(data)
