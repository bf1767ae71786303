"""Fresh PostgreSQL databases for tests, on the server named by ``CARBON_GATEWAY_TEST_POSTGRES``.

Each test creates its own uniquely named databases and drops them afterwards (``WITH (FORCE)``: a gateway
that a failing test left running cannot keep one alive). Without the variable, or when the server does not
answer, `require_postgres` skips the test (fails it under ``CARBON_GATEWAY_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import asyncio
import os
import urllib.parse
import uuid

import asyncpg

from tests.services import require_service

ENV = "CARBON_GATEWAY_TEST_POSTGRES"


def admin_url() -> str:
    """The server's URL from ``CARBON_GATEWAY_TEST_POSTGRES``, after skipping the test when it is unusable."""
    url = os.environ.get(ENV, "")
    require_service(bool(url), f"{ENV} names no PostgreSQL server (e.g. postgresql://postgres@127.0.0.1:5432/postgres)")
    require_service(_answers(url), f"the PostgreSQL server of {ENV} does not answer")
    return url


def _answers(url: str) -> bool:
    async def probe() -> None:
        connection = await asyncpg.connect(url, timeout=5)
        await connection.close()

    if _loop_running():
        return True  # an async caller finds out at its first connection
    try:
        asyncio.run(probe())
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    return True


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def database_url(admin: str, name: str) -> str:
    """``admin``'s URL with the database ``name`` instead."""
    parts = urllib.parse.urlsplit(admin)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


def unique_name(label: str) -> str:
    """A database name no other test (or engineer sharing the server) uses."""
    return f"cgtest_{label.lower()}_{uuid.uuid4().hex[:16]}"


async def create_database(admin: str, label: str) -> str:
    """Create a fresh, empty database; return its URL."""
    name = unique_name(label)
    connection = await asyncpg.connect(admin)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return database_url(admin, name)


async def drop_databases(admin: str, urls: list[str]) -> None:
    """Drop the databases of ``urls`` (created by `create_database`), closing what still connects to them."""
    if not urls:
        return
    connection = await asyncpg.connect(admin)
    try:
        for url in urls:
            name = urllib.parse.urlsplit(url).path.lstrip("/")
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
