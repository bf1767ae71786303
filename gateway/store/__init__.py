"""Storage: one interface (`gateway.store.base.Store`), an SQLite and a PostgreSQL implementation, versioned
migrations, and `open_store`, which picks the implementation from the database's location.

A location with a URL scheme names a server (``postgresql://user@host:5432/dbname``; ``postgres://`` too); any
other is an SQLite file's path. Each backend registers an opener per scheme in ``BACKENDS`` (a small registry,
as securesystemslib keeps its signers), so a new backend is one entry; the backends' modules are imported only
when a location names them.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.store.base import Store


class UnsupportedDatabase(ValueError):
    """A database location whose URL scheme no backend serves."""


async def _open_postgres(location: str, read_only: bool) -> Store:
    from gateway.store.postgres import PostgresStore

    if read_only:
        return await PostgresStore.open_read_only(location)
    return await PostgresStore.open(location)


async def _open_sqlite(location: str, read_only: bool) -> Store:
    from gateway.store.sqlite import SQLiteStore

    if read_only:
        return await SQLiteStore.open_read_only(location)
    return await SQLiteStore.open(location)


Opener = Callable[[str, bool], Awaitable[Store]]

BACKENDS: dict[str, Opener] = {
    "postgresql": _open_postgres,
    "postgres": _open_postgres,
    "": _open_sqlite,
}
"""Openers by URL scheme; ``""`` is a plain path (an SQLite file)."""


def scheme_of(location: str | Path) -> str:
    """The URL scheme of ``location`` ("" for a file path, a Windows drive letter included)."""
    text = str(location)
    if "://" not in text:
        return ""
    return urllib.parse.urlsplit(text).scheme.lower()


def is_url(location: str | Path) -> bool:
    """Whether ``location`` names a database server rather than a file."""
    return bool(scheme_of(location))


async def open_store(location: str | Path, *, read_only: bool = False) -> Store:
    """Open the store at ``location``: migrated and ready for writes, or with ``read_only`` as it is, for reading
    (nothing created or migrated; a schema of another version is refused)."""
    scheme = scheme_of(location)
    opener = BACKENDS.get(scheme)
    if opener is None:
        known = ", ".join(f"{s}://" for s in sorted(BACKENDS) if s)
        raise UnsupportedDatabase(f"{scheme}:// is not a database this gateway can use; use {known} or a file path")
    return await opener(str(location), read_only)
