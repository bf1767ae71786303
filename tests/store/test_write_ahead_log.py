"""A database whose write-ahead log SQLite would silently ignore is refused at open, not opened without the
transactions in it; a log left by a crash opens with every transaction it holds."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.domain.records import Account, AccountType
from gateway.node import _open_store
from gateway.setup_cli import database_problems
from gateway.store.sqlite import SQLiteStore, WriteAheadLogDamaged

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


async def crash_image(folder: Path) -> Path:
    """The database file and its log as a crash leaves them: copied while the store is open, after commits that
    are in the log alone (it is checkpointed only every 10,000 pages)."""
    store = await SQLiteStore.open(folder / "live.db")
    try:
        for i in range(3):
            async with store.transaction() as tx:
                await tx.insert_account(Account(f"PO-{i}", "Owner", AccountType.PROJECT_OWNER))
        image = folder / "image"
        image.mkdir()
        for name in ("live.db", "live.db-wal"):
            shutil.copyfile(folder / name, image / name)
    finally:
        await store.close()
    assert (image / "live.db-wal").stat().st_size > 32
    return image / "live.db"


def tables(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [row[0] for row in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")]


def accounts(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [row[0] for row in db.execute("SELECT account_id FROM accounts ORDER BY account_id")]


@pytest.mark.asyncio
async def test_a_log_left_by_a_crash_opens_with_its_transactions(tmp_path: Path) -> None:
    path = await crash_image(tmp_path)
    await (await SQLiteStore.open(path)).close()
    assert accounts(path) == ["PO-0", "PO-1", "PO-2"]


def damage(path: Path, offset: int) -> None:
    wal = Path(f"{path}-wal")
    damaged = bytearray(wal.read_bytes())
    damaged[offset] ^= 0x10
    wal.write_bytes(bytes(damaged))


@pytest.mark.asyncio
@pytest.mark.parametrize("offset", [0, 12, 17, 27], ids=["magic", "checkpoint-sequence", "salt", "checksum"])
async def test_a_log_with_a_damaged_header_is_refused_in_one_line(tmp_path: Path, offset: int) -> None:
    path = await crash_image(tmp_path)
    damage(path, offset)
    with pytest.raises(ConfigError) as caught:
        await _open_store(path)
    [line] = str(caught.value).splitlines()
    assert line.startswith(f"database: {path}: its write-ahead log (live.db-wal,") and "damaged header" in line
    with pytest.raises(WriteAheadLogDamaged):
        await SQLiteStore.open_read_only(path)
    # What the refusal prevents: SQLite itself opens the file as if the log were empty, without even the tables.
    assert "accounts" not in tables(path)


@pytest.mark.asyncio
async def test_a_database_named_through_a_symbolic_link_has_its_log_checked_where_sqlite_keeps_it(
    tmp_path: Path,
) -> None:
    path = await crash_image(tmp_path)
    link = tmp_path / "gateway.db"
    link.symlink_to(path)
    await (await SQLiteStore.open(link)).close()  # a sound log, found beside the file the link names
    (tmp_path / "second").mkdir()
    image = await crash_image(tmp_path / "second")
    damage(image, 27)
    link.unlink()
    link.symlink_to(image)
    with pytest.raises(WriteAheadLogDamaged):
        await SQLiteStore.open(link)
    with pytest.raises(WriteAheadLogDamaged):
        await SQLiteStore.open_read_only(link)


def _rollback_mode_database(path: Path) -> None:
    """A database in SQLite's own journal mode (header bytes 18 and 19 are 1), where a log beside it is ignored."""
    elsewhere = path.with_name("rollback.db")  # made apart: SQLite would delete the log beside it
    with closing(sqlite3.connect(elsewhere)) as db:
        db.execute("CREATE TABLE t (x)")
    shutil.copyfile(elsewhere, path)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda path: path.unlink(), "is missing"),
        (lambda path: path.write_bytes(b""), "is empty"),
        (_rollback_mode_database, "is not in WAL mode"),
    ],
    ids=["database missing", "database empty", "database not in WAL mode"],
)
async def test_a_log_left_without_its_database_is_refused_not_deleted(
    tmp_path: Path, change: Callable[[Path], None], problem: str
) -> None:
    path = await crash_image(tmp_path)
    log = Path(f"{path}-wal").read_bytes()
    change(path)
    with pytest.raises(ConfigError) as caught:
        await _open_store(path)
    [line] = str(caught.value).splitlines()
    assert line.startswith(f"database: {path} {problem}, but its write-ahead log (live.db-wal,"), line
    assert database_problems(path, "CHN") == [line]  # config check says the same
    assert Path(f"{path}-wal").read_bytes() == log  # the books are still there to put back


@pytest.mark.asyncio
async def test_an_open_that_fails_after_the_migrations_leaves_the_file_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.store import sqlite as store_sqlite

    path = tmp_path / "g.db"
    await (await SQLiteStore.open(path)).close()
    # A step of the start after the migrations fails (a backup holding the file, say).
    monkeypatch.setattr(store_sqlite, "AUTHORIZATION_USAGE_REBUILD", ("SELECT * FROM no_such_table",))
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        await SQLiteStore.open(path, alone=True)
    monkeypatch.undo()
    # Nothing of the failed open holds the file: another open of a serve process takes it.
    await (await SQLiteStore.open(path, alone=True)).close()
