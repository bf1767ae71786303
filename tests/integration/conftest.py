"""Fixtures that start two real gateways (gRPC on port 0), and the store backends every test here runs on.

Each test runs twice: on SQLite files in a temporary folder, and on PostgreSQL (a fresh database per gateway,
on the server named by ``CARBON_GATEWAY_TEST_POSTGRES``, dropped after the test). A test that opens the SQLite
file itself (to corrupt it, or to read it behind the gateway's back) is marked ``sqlite_only`` with a reason
and runs on SQLite alone; a test marked ``postgres`` (replicas sharing a database) runs on PostgreSQL alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway import harness
from gateway.demo import Pair, start_pair
from tests import postgres

BACKENDS = ("sqlite", "postgresql")


SHARED_NETWORKS = frozenset({"gateways", "partners"})
"""Module-scoped fixtures (in test_bad_input.py) whose gateways serve every test of the module. They are started
once, under the backend of the first test that asks for them, and outlive the per-test databases: the tests that
use them run on SQLite alone (each store API they reach is run on PostgreSQL by the other tests)."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("sqlite_only") is not None or SHARED_NETWORKS & set(
        metafunc.fixturenames
    ):
        backends = ["sqlite"]
    elif metafunc.definition.get_closest_marker("postgres") is not None:
        backends = ["postgresql"]  # replicas share one database: a server's, never a file
    else:
        backends = list(BACKENDS)
    metafunc.parametrize("store_backend", backends, indirect=True)


@pytest.fixture(autouse=True)
def store_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend `gateway.harness.start_network` opens every gateway's store on, for this test."""
    backend: str = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        harness.use_databases(None)
        yield backend
        return
    admin = postgres.admin_url()
    created: dict[tuple[Path, str], str] = {}

    async def locate(workdir: Path, party: str) -> str | Path:
        key = (workdir, party)
        if key not in created:
            created[key] = await postgres.create_database(admin, party)
        return created[key]

    harness.use_databases(locate)
    try:
        yield backend
    finally:
        harness.use_databases(None)
        asyncio.run(postgres.drop_databases(admin, list(created.values())))


@pytest_asyncio.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """A CHN gateway and a CHE gateway that trust each other, accepting every proposal that passes checks."""
    started = await start_pair(tmp_path)
    try:
        yield started
    finally:
        await started.stop()
