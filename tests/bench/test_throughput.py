"""The throughput bench runs end to end at tiny counts and returns sane figures (no timing is asserted).

It starts the real processes the bench starts (two ``carbon-gateway serve`` and the echo server), so a broken
configuration, a transfer that never completes on both sides, or a figure computed from the wrong counts fails
here rather than in the middle of ``make bench``.
"""

from __future__ import annotations

import math
import statistics

import pytest

from tests.bench import throughput
from tests.bench.common import Figure


def test_a_tiny_sqlite_run_completes_every_transfer_and_reports_each_figure() -> None:
    measured = throughput.measure(
        warmup=1, transfers=5, seconds=60, echo_seconds=0.3, batch_blocks=10, batch_runs=2, poll_interval=0.005
    )
    # measure() itself refuses a run in which any transfer is not COMPLETED at both gateways or any message
    # was dead-lettered; here the counts it reports are the ones asked for.
    assert measured.transfers == 5
    assert measured.batch_blocks == 10
    assert len(measured.batch_seconds) == 2
    assert 0 < measured.p50 <= measured.p99
    assert 0 < measured.echo_p50 <= measured.echo_p99
    for value in (measured.transfers_per_second, measured.echo_calls_per_second, measured.blocks_per_second):
        assert math.isfinite(value) and value > 0

    figures = throughput.figures(throughput.SQLITE, measured, with_targets=True)
    assert [f.unit for f in figures] == ["/s", "ms", "ms", "/s"]
    assert [f.target for f in figures] == [0.05, None, None, 2.0]
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
    assert all(f.target is None and f.met for f in figures)
    assert all(f.as_json()["target_met"] is None for f in figures)
    assert all("(reported, no target)" in f.line() and "2 CHN replicas" in f.name for f in figures)
    assert figures[3].value == 5.0  # 10 blocks over the median of 1, 2 and 4 seconds
    judged: Figure = throughput.figures(throughput.SQLITE, measured, with_targets=True)[0]
    assert judged.ratio == 0.01 and not judged.met and "MISSED" in judged.line()


def test_postgres_is_skipped_with_a_reason_when_no_dsn_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(throughput.POSTGRES_ENV, raising=False)
    chosen, skipped = throughput.backends()
    assert chosen == [throughput.SQLITE]
    assert throughput.POSTGRES_ENV in skipped


def test_postgres_is_skipped_with_a_reason_while_the_store_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(throughput.POSTGRES_ENV, "postgresql://postgres@127.0.0.1:5432/postgres")
    missing = throughput.postgres_store_missing()
    chosen, skipped = throughput.backends()
    if missing:
        assert chosen == [throughput.SQLITE] and skipped == missing
    else:
        assert [b.replicas for b in chosen] == [1, 1, 2] and [b.postgres for b in chosen] == [False, True, True]
        assert skipped == ""
