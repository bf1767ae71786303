"""The adjustment ledger at a million entries: the summary, and the AEF export of a year.

One SQLite ledger of 1,000,000 entries, all dated in 2025, is filled with ``executemany`` through a store
opened the production way (`SQLiteStore.open`: WAL, durable commits). The rows are realistic: units tied
to CHN's authorizations (NDC ones first transferred abroad, units of an OIMP one cancelled to deliver OMGE),
units acquired from five partners under five cooperative approaches then used towards the NDC (for 2024 or
2025), transferred onward or cancelled, or held; vintages 2021-2025, CCER and VCS units, a few transfers whose
first transfer is still to come.

- The adjustment summary (`Gateway.ledger_summary`: `ledger_totals`, the Python grouping, the structured
  summary) against a bare SQL aggregate over the same table on the same connection; target at most 2x. Each
  figure is the round with the median ratio of three (the way `tests.bench.common.paired` picks it), or of one
  when a summary takes more than ten seconds.
- The AEF export of 2025 to XLSX the way ``carbon-gateway report aef`` does it (the command run in process:
  the configuration, the store, `Reporting.aef_report_into` streaming into `adapters.aef.AefFiles`), against
  openpyxl's write-only mode writing the same rows (the same five sheets, the same cell values) directly;
  target at most 1.5x. openpyxl takes about 230 s for a million rows on this machine class, so it writes every
  fifth row of each table (the rows themselves rendered beforehand, outside the timing) and its time is
  multiplied by five: openpyxl's write-only mode costs the same per row whatever the row count.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openpyxl

from adapters import aef
from adapters.aef_columns import Table, headers
from adapters.context import MappingContext
from gateway.config import load_config
from gateway.domain.canonical import ActionSubtype, MitigationType
from gateway.domain.protocol import DecisionPolicy
from gateway.domain.records import ActionType, Authorization, FirstTransferDefinition, Purpose
from gateway.report_cli import write_report
from gateway.service import Gateway
from gateway.store.migrations import LEDGER_COLUMNS
from gateway.store.sqlite import SQLiteStore
from gateway.usecases.reporting import PARTS
from tests.bench.common import Figure

ENTRIES = 1_000_000
YEAR = 2025
ROUNDS = 3
ROUND_SECONDS = 10.0
"""A summary round that takes longer than this is the only one: the median of three is for noise, and a
summary of many seconds has little."""
SAMPLE_EVERY = 10
"""The openpyxl baseline writes every tenth row of each table; its time is multiplied by this."""
PARTY = "CHN"
PARTNERS = ("CHE", "SGP", "JPN", "SWE", "GHA")
APPROACHES = {partner: f"CA000{i}" for i, partner in enumerate(PARTNERS, start=1)}
SPACES = (("CCER", "CN-CCER"), ("CCER", "CN-CCER"), ("VCU", "VCS"))
MITIGATION = tuple(m.value for m in MitigationType)
SUMMARY_TARGET = 2.0
EXPORT_TARGET = 1.5

CONFIG = """
party = "CHN"
database = "ledger.db"
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

COLUMNS = LEDGER_COLUMNS[1:]
"""The stored ledger columns but the entry ID, which SQLite assigns."""


def authorizations() -> list[Authorization]:
    """CHN's authorizations: per partner an NDC one (first international transfer), and one OIMP one whose
    first transfer is the use or cancellation."""
    found = []
    for partner in PARTNERS:
        approach = APPROACHES[partner]
        found.append(
            Authorization(
                authorization_id=f"CHN-{partner}-NDC",
                date=dt.date(2024, 3, 1),
                version="1.0",
                cooperative_approach=approach,
                metric="GHG",
                purposes=frozenset({Purpose.NDC}),
                authorized_quantity=10**12,
                timeframe_start=2021,
                timeframe_end=2030,
                first_transfer_definition=FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER,
                sectors=("Energy generation", "Forestry and land use"),
                activity_types=("Offshore wind", "Afforestation"),
                authorized_parties=(PARTY, partner),
            )
        )
        found.append(
            Authorization(
                authorization_id=f"CHN-{partner}-OIMP",
                date=dt.date(2024, 6, 1),
                version="1.0",
                cooperative_approach=approach,
                metric="GHG",
                purposes=frozenset({Purpose.OIMP}),
                authorized_quantity=10**12,
                timeframe_start=2021,
                timeframe_end=2030,
                first_transfer_definition=FirstTransferDefinition.USE_OR_CANCELLATION,
                sectors=("Energy generation",),
                activity_types=("Solar thermal",),
                authorized_parties=(PARTY, partner),
            )
        )
    return found


def _block(story: int, tie: tuple[str, str, str], first_transferred: bool) -> tuple[str, int, int]:
    """The block JSON (as `gateway.store.codec.block_to_dict` spells it) of a story, its quantity and vintage."""
    unit_kind, registry = SPACES[story % len(SPACES)]
    start = story * 100 + 1
    quantity = 1 + story * 7919 % 100
    vintage = 2021 + story % 5
    party, approach, authorization = tie
    data = {
        "attributes": [],
        "authorization_id": authorization,
        "cooperative_approach": approach,
        "end": start + quantity - 1,
        "first_transferred": first_transferred,
        "first_transferring_party": party,
        "issuance": "",
        "issuing_registry": registry,
        "methodology_code": "CCER-14-001-V01" if registry == "CN-CCER" else "VM0007",
        "mitigation_type": MITIGATION[story % len(MITIGATION)],
        "project_id": f"P-{story % 997:04d}",
        "registry_reference": f"{registry}-{story}",
        "start": start,
        "unit_kind": unit_kind,
        "vintage": vintage,
    }
    return json.dumps(data, sort_keys=True), quantity, vintage


def ledger_rows(count: int, year: int = YEAR) -> list[tuple[Any, ...]]:
    """``count`` ledger rows (`COLUMNS`), in stories of one to three entries per block, dated through ``year``."""
    rows: list[tuple[Any, ...]] = []
    start = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    step = dt.timedelta(days=365) / count
    story = 0
    while len(rows) < count:
        partner = PARTNERS[story % len(PARTNERS)]
        onward = PARTNERS[(story + 1) % len(PARTNERS)]
        approach = APPROACHES[partner]
        kind = story % 10
        transfer = f"T-{story:07d}"
        entries: list[tuple[ActionType, str, dict[str, Any]]] = []
        if kind in (0, 1, 2, 3, 8):
            ndc = kind != 3
            tie = (PARTY, approach, f"CHN-{partner}-{'NDC' if ndc else 'OIMP'}")
            purpose = Purpose.NDC if ndc else Purpose.OIMP
            entries.append((ActionType.AUTHORIZATION, "", {"tie": tie, "first": False, "purpose": purpose}))
            if kind == 3:
                entries.append(
                    (
                        ActionType.CANCELLATION,
                        ActionSubtype.OMGE_CANCELLATION.value,
                        {"tie": tie, "first": False, "purpose": purpose, "using": PARTY},
                    )
                )
            elif kind != 8:
                entries.append(
                    (
                        ActionType.FIRST_TRANSFER,
                        ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY.value,
                        {"tie": tie, "first": True, "purpose": purpose, "from": PARTY, "to": partner},
                    )
                )
            elif story % 1000 == 998:  # units whose first transfer is yet to come abroad
                entries.append(
                    (
                        ActionType.TRANSFER,
                        ActionSubtype.NOT_YET_DEFINED.value,
                        {"tie": tie, "first": False, "purpose": purpose, "from": PARTY, "to": partner},
                    )
                )
        else:
            tie = (partner, approach, f"{partner}-A-{story % 3 + 1:04d}")
            base = {"tie": tie, "first": True, "purpose": Purpose.NDC}
            entries.append((ActionType.ACQUISITION, "", {**base, "from": partner, "to": PARTY}))
            if kind in (4, 5):
                entries.append((ActionType.USE, "", {**base, "using": PARTY, "year": 2024 + story % 2}))
            elif kind == 6:
                entries.append((ActionType.TRANSFER, "", {**base, "from": PARTY, "to": onward}))
            elif kind == 9:
                note = "cancelled for a company's voluntary claim"
                entries.append((ActionType.VOLUNTARY_CANCELLATION, "", {**base, "using": PARTY, "note": note}))
        for action, subtype, facts in entries:
            block, quantity, vintage = _block(story, facts["tie"], facts["first"])
            party, approach_id, authorization = facts["tie"]
            instant = start + step * len(rows)
            instant = instant.replace(microsecond=instant.microsecond // 1000 * 1000)
            rows.append(
                (
                    instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    action.value,
                    transfer,
                    block,
                    quantity,
                    vintage,
                    approach_id,
                    authorization,
                    party,
                    facts.get("from", ""),
                    facts.get("to", ""),
                    facts["purpose"].value,
                    subtype,
                    facts.get("year"),
                    facts.get("using", ""),
                    "",
                    facts.get("note", ""),
                )
            )
        story += 1
    return rows[:count]


async def fill(path: Path, count: int) -> None:
    """A gateway database at ``path`` holding CHN's authorizations and ``count`` ledger entries."""
    store = await SQLiteStore.open(path)
    try:
        async with store.transaction() as tx:
            for authorization in authorizations():
                await tx.insert_authorization(authorization)
        rows = ledger_rows(count)
        db = store._db  # the production connection: WAL, durable commits
        insert = f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        for at in range(0, len(rows), 100_000):
            db.execute("BEGIN IMMEDIATE")
            db.executemany(insert, rows[at : at + 100_000])
            db.execute("COMMIT")
    finally:
        await store.close()


def _gateway(store: SQLiteStore, folder: Path) -> Gateway:
    config = load_config(folder / "chn.toml")
    return Gateway(
        party=config.party,
        store=store,
        policy=DecisionPolicy(),
        clock=lambda: dt.datetime.now(dt.UTC),
        nomenclature=config.nomenclature,
        ledger_options=config.ledger,
    )


def run_summary(folder: Path, entries: int) -> Figure:
    """The adjustment summary against a bare SQL aggregate over the same table, on the same connection."""

    async def measure() -> tuple[float, float]:
        store = await SQLiteStore.open(folder / "ledger.db")
        try:
            gateway = _gateway(store, folder)
            db = store._db

            def bare() -> float:
                began = time.perf_counter()
                db.execute(
                    "SELECT action_type, vintage, SUM(quantity) FROM ledger GROUP BY action_type, vintage"
                ).fetchall()
                return time.perf_counter() - began

            async def summary() -> float:
                began = time.perf_counter()
                await gateway.ledger_summary()
                return time.perf_counter() - began

            bare()  # the table into the page cache
            pairs: list[tuple[float, float]] = []
            while len(pairs) < ROUNDS and sum(value for value, _ in pairs) < ROUND_SECONDS:
                base = bare()
                pairs.append((await summary(), base))
            pairs.sort(key=lambda pair: pair[0] / pair[1])
            return pairs[len(pairs) // 2]
        finally:
            await store.close()

    value, limit = asyncio.run(measure())
    return Figure(
        name=f"adjustment summary (Gateway.ledger_summary) over a SQLite ledger of {entries:,} entries",
        value=value,
        unit="s",
        limit_name="bare SQL aggregate (action type, vintage, SUM) over the same table",
        limit=limit,
        target=SUMMARY_TARGET,
        direction="max",
    )


class _Sample:
    """Keeps every n-th record of each table on its way to the files."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.seen = dict.fromkeys(PARTS, 0)
        self.records: dict[str, list[Any]] = {part: [] for part in PARTS}

    def __call__(self, part: str, records: Sequence[Any]) -> None:
        skip = -self.seen[part] % self.every
        self.records[part].extend(records[skip :: self.every])
        self.seen[part] += len(records)

    def rows(self, ctx: MappingContext) -> dict[Table, list[list[object]]]:
        """The kept records' rows, rendered as the export renders them."""
        return {
            table: aef.rendered_rows(table, self.records[part], ctx) for part, table in zip(PARTS, Table, strict=True)
        }


def _openpyxl_write_only(rows: dict[Table, list[list[object]]], path: Path) -> float:
    began = time.perf_counter()
    workbook = openpyxl.Workbook(write_only=True)
    for table in Table:
        sheet = workbook.create_sheet(title=table.value)
        sheet.append(list(headers(table)))
        for row in rows[table]:
            sheet.append(row)
    workbook.save(path)
    return time.perf_counter() - began


def _export(folder: Path, out: Path, sample: _Sample) -> float:
    began = time.perf_counter()
    config = load_config(folder / "chn.toml")
    write_report(config, YEAR, out, "xlsx", version="1.0", submitted=dt.date(YEAR + 1, 4, 15), tap=sample)
    return time.perf_counter() - began


def _check_same_cells(out: Path, rows: list[list[object]], every: int) -> None:
    """The exported workbook holds the rows the baseline wrote (the first 2,000 of them compared)."""
    workbook = openpyxl.load_workbook(out, read_only=True)
    try:
        sheet = workbook[Table.ACTIONS.value]
        cells = sheet.iter_rows(min_row=2, max_row=1 + every * 2_000, values_only=True)
        width = len(headers(Table.ACTIONS))  # openpyxl's reader leaves out a row's trailing empty cells
        written = [[*row, *[None] * (width - len(row))] for i, row in enumerate(cells) if i % every == 0]
        assert written == rows[: len(written)], "the export and the baseline wrote different cells"
    finally:
        workbook.close()


def run_export(folder: Path) -> Figure:
    """The export of a year of a million actions against openpyxl's write-only mode writing the same rows."""
    sample = _Sample(SAMPLE_EVERY)
    value = _export(folder, folder / "aef.xlsx", sample)
    rows = sample.rows(
        MappingContext(extension_codes=load_config(folder / "chn.toml").ledger.underlying_registry_codes)
    )
    limit = _openpyxl_write_only(rows, folder / "baseline.xlsx") * SAMPLE_EVERY
    _check_same_cells(folder / "aef.xlsx", rows[Table.ACTIONS], SAMPLE_EVERY)
    actions = sample.seen["actions"]
    return Figure(
        name=f"AEF export of a year of {actions:,} actions to XLSX (carbon-gateway report aef, streaming)",
        value=value,
        unit="s",
        limit_name=f"openpyxl write-only writing the same rows (every {SAMPLE_EVERY}th, time x{SAMPLE_EVERY})",
        limit=limit,
        target=EXPORT_TARGET,
        direction="max",
    )


def run(entries: int = ENTRIES) -> list[Figure]:
    """Both ledger figures over one database of a million entries."""
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as name:
        folder = Path(name)
        (folder / "chn.toml").write_text(CONFIG)
        began = time.perf_counter()
        asyncio.run(fill(folder / "ledger.db", entries))
        print(f"(ledger of {entries:,} entries filled in {time.perf_counter() - began:.1f} s)", flush=True)
        return [run_summary(folder, entries), run_export(folder)]
