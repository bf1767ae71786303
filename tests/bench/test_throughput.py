"""The throughput bench runs end to end at tiny counts and returns sane figures (no timing is asserted).

It starts the real processes the bench starts (two ``carbon-gateway serve`` and the echo server), so a broken
configuration, a transfer that never completes on both sides, or a figure computed from the wrong counts fails
here rather than in the middle of ``make bench``.
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

import pytest

from tests.bench import throughput
from tests.bench.common import Figure
from tests.services import require_service


def test_a_tiny_sqlite_run_completes_every_transfer_and_reports_each_figure() -> None:
    measured = throughput.measure(warmup=1, transfers=5, seconds=60, echo_seconds=0.3, batch_blocks=10, batch_runs=2)
    # measure() itself refuses a run in which any transfer is not COMPLETED at both gateways or any message
    # was dead-lettered; here the counts it reports are the ones asked for.
    assert measured.transfers == 5
    assert measured.batch_blocks == 10
    assert len(measured.batch_seconds) == 2
    assert 0 < measured.p50 <= measured.p99
    assert 0 < measured.echo_p50 <= measured.echo_p99
    for value in (measured.transfers_per_second, measured.echo_calls_per_second, measured.blocks_per_second):
        assert math.isfinite(value) and value > 0

    # On Linux /proc tells each process's CPU: the gateways worked for every transfer and block, the echo
    # server for every call.
    # (A few 10-block proposals may take less than one clock tick of CPU: that one may be 0.)
    assert measured.cpu_per_transfer is not None and measured.cpu_per_transfer > 0
    assert measured.echo_cpu_per_call is not None and measured.echo_cpu_per_call > 0
    assert measured.cpu_per_block is not None and measured.cpu_per_block >= 0

    figures = throughput.figures(throughput.SQLITE, measured, with_targets=True)
    assert [f.unit for f in figures] == ["/s", "ms", "ms", "/s", "ms", "ms"]
    assert [f.target for f in figures] == [0.05, None, None, 2.0, None, None]
    assert figures[4].value == pytest.approx(measured.cpu_per_transfer * 1e3)
    assert figures[0].value == measured.transfers_per_second
    assert figures[0].limit == figures[3].limit == measured.echo_calls_per_second
    assert figures[3].value == pytest.approx(10 / statistics.median(measured.batch_seconds))
    assert all("SQLite" in f.name for f in figures)


def test_reported_figures_have_no_target_to_miss() -> None:
    measured = throughput.Measured(
        transfers=3,
        transfers_per_second=1.0,
        p50=0.2,
        p99=0.4,
        echo_calls_per_second=100.0,
        echo_p50=0.01,
        echo_p99=0.02,
        batch_blocks=10,
        batch_seconds=(1.0, 4.0, 2.0),
    )
    backend = throughput.Backend("PostgreSQL", replicas=2, server_dsn="postgresql://bench@127.0.0.1/postgres")
    figures = throughput.figures(backend, measured, with_targets=False)
    assert len(figures) == 4  # no CPU figures where /proc said nothing
    assert all(f.target is None and f.met for f in figures)
    assert all(f.as_json()["target_met"] is None for f in figures)
    assert all("(reported, no target)" in f.line() and "2 CHN replicas" in f.name for f in figures)
    assert figures[3].value == 5.0  # 10 blocks over the median of 1, 2 and 4 seconds
    judged: Figure = throughput.figures(throughput.SQLITE, measured, with_targets=True)[0]
    assert judged.ratio == 0.01 and not judged.met and "MISSED" in judged.line()


def test_postgres_is_skipped_with_a_reason_when_no_dsn_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(throughput.POSTGRES_ENV, raising=False)
    monkeypatch.delenv(throughput.TEST_POSTGRES_ENV, raising=False)
    chosen, skipped = throughput.backends()
    assert chosen == [throughput.SQLITE]
    assert throughput.POSTGRES_ENV in skipped


def test_postgres_is_measured_with_one_and_two_replicas_when_a_dsn_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(throughput.TEST_POSTGRES_ENV, raising=False)
    monkeypatch.setenv(throughput.POSTGRES_ENV, "postgresql://postgres@127.0.0.1:5432/postgres")
    chosen, skipped = throughput.backends()
    assert [b.replicas for b in chosen] == [1, 1, 2] and [b.postgres for b in chosen] == [False, True, True]
    assert skipped == ""


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_the_postgres_backend_creates_its_own_databases_and_drops_them(tmp_path: Path) -> None:
    dsn = os.environ.get("CARBON_GATEWAY_TEST_POSTGRES", "")
    require_service(bool(dsn), "CARBON_GATEWAY_TEST_POSTGRES is not set (a PostgreSQL DSN)")
    import asyncpg

    backend = throughput.Backend("PostgreSQL", server_dsn=dsn)
    async with throughput._databases(backend, tmp_path) as databases:
        assert sorted(databases) == ["che", "chn"]
        names = [url.rsplit("/", 1)[1] for url in databases.values()]
        assert len(set(names)) == 2 and all(name.startswith("bench_") for name in names)
        for url in databases.values():
            connection = await asyncpg.connect(url)
            try:
                assert await connection.fetchval("SELECT current_database()") == url.rsplit("/", 1)[1]
            finally:
                await connection.close()
    admin = await asyncpg.connect(dsn)
    try:
        left = await admin.fetch("SELECT datname FROM pg_database WHERE datname = ANY($1::text[])", names)
    finally:
        await admin.close()
    assert left == []
