"""Fixtures that start two real gateways (gRPC on port 0, SQLite files in a temporary folder)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from gateway.demo import Pair, start_pair


@pytest_asyncio.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """A CHN gateway and a CHE gateway that trust each other, accepting every proposal that passes checks."""
    started = await start_pair(tmp_path)
    try:
        yield started
    finally:
        await started.stop()
