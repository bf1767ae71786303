"""The connection settings an SQLite store runs under, each of which some guarantee or figure depends on."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.store.sqlite import PAGE_CACHE_KIB, SQLiteStore


@pytest.mark.asyncio
async def test_an_opened_store_logs_ahead_checks_references_keeps_journals_and_pages_in_memory(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "store.db")
    try:
        settings = {
            name: store._db.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("journal_mode", "foreign_keys", "temp_store", "busy_timeout", "cache_size")
        }
    finally:
        await store.close()
    # temp_store 2 is MEMORY: a statement's undo journal is not a temporary file written page by page.
    # A negative cache_size is in KiB.
    assert settings == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "temp_store": 2,
        "busy_timeout": 5000,
        "cache_size": -PAGE_CACHE_KIB,
    }
