"""``carbon-gateway report aef`` against a PostgreSQL database: the same workbook, byte for byte, as from an
SQLite file holding the same ledger; read-only, so an empty or foreign database is refused and left as it was."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from gateway.domain.records import Authorization, LedgerEntry
from gateway.store import open_store
from tests import postgres
from tests.test_report_cli import AUTHORIZATION, CONFIG, HEADERS, LEDGER_2025, ROWS, one_line, report, sheets


async def _append(location: str | Path, entries: list[LedgerEntry], authorizations: list[Authorization]) -> None:
    store = await open_store(location)
    try:
        async with store.transaction() as tx:
            for authorization in authorizations:
                await tx.insert_authorization(authorization)
            await tx.append_ledger(entries)
    finally:
        await store.close()


async def _tables(url: str) -> list[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return sorted(r[0] for r in rows)
    finally:
        await connection.close()


def _folder(path: Path, database: str) -> Path:
    path.mkdir()
    (path / "chn.toml").write_text(CONFIG.replace('database = "chn.db"', f"database = {database!r}"))
    return path


def test_the_report_from_postgresql_is_the_report_from_sqlite(tmp_path: Path) -> None:
    admin = postgres.admin_url()
    url = asyncio.run(postgres.create_database(admin, "report"))
    try:
        on_sqlite = _folder(tmp_path / "sqlite", "chn.db")
        on_postgres = _folder(tmp_path / "postgres", url)
        asyncio.run(_append(on_sqlite / "chn.db", LEDGER_2025, [AUTHORIZATION]))
        asyncio.run(_append(url, LEDGER_2025, [AUTHORIZATION]))
        assert report(on_sqlite, on_sqlite / "aef.xlsx") == 0
        assert report(on_postgres, on_postgres / "aef.xlsx") == 0
        found = sheets((on_postgres / "aef.xlsx").read_bytes())
        for title in HEADERS:
            assert found[title][1:] == ROWS[title], title
        assert (on_postgres / "aef.xlsx").read_bytes() == (on_sqlite / "aef.xlsx").read_bytes()
    finally:
        asyncio.run(postgres.drop_databases(admin, [url]))


def test_an_empty_database_is_refused_and_left_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    admin = postgres.admin_url()
    url = asyncio.run(postgres.create_database(admin, "empty"))
    try:
        folder = _folder(tmp_path / "gateway", url)
        assert report(folder, folder / "aef.xlsx") == 1
        line = one_line(capsys.readouterr().err)
        assert "is not a gateway database" in line, line
        assert asyncio.run(_tables(url)) == []
        assert not (folder / "aef.xlsx").exists()
    finally:
        asyncio.run(postgres.drop_databases(admin, [url]))


@pytest.mark.parametrize("date", ["9999-the-end", "2025-12-32T00:00:00.000000Z", "2025-12-31T24:00:00.000000Z"])
def test_an_entry_dated_with_no_instant_is_refused_naming_it_not_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], date: str
) -> None:
    # Dates are compared as text: one that is no instant but sorts after every year fell out of every report.
    admin = postgres.admin_url()
    url = asyncio.run(postgres.create_database(admin, "report"))
    try:
        folder = _folder(tmp_path / "postgres", url)
        asyncio.run(_append(url, LEDGER_2025, [AUTHORIZATION]))

        async def misdate() -> None:
            connection = await asyncpg.connect(url)
            try:
                await connection.execute("UPDATE ledger SET action_date = $1 WHERE entry_id = 2", date)
            finally:
                await connection.close()

        asyncio.run(misdate())
        capsys.readouterr()
        assert report(folder, folder / "aef.xlsx") == 1
        line = one_line(capsys.readouterr().err)
        assert f"ledger[entry 2].action_date: {date!r} is no instant this version writes" in line, line
        assert not (folder / "aef.xlsx").exists()
    finally:
        asyncio.run(postgres.drop_databases(admin, [url]))
