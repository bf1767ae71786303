"""Mapping throughput, CCER records to AEF Actions rows, against raw construction of the row messages.

The limit is measured in the same run, right before each measurement (`tests.bench.common.paired`):
constructing the `carbon_gateway.v1.MappedRow` messages the mapping RPCs return (27 column values and the
lost fields) from keyword arguments. Each figure is the round with the median ratio of five.

- In process, canonical CCER credits to AEF Actions records (`ccer_to_aef_actions`); target at least 45%.
- In process, raw ``cn-ccer`` JSON to AEF Actions rows of text (`map_rows`, every row read): the work the
  RPCs do before protobuf; target at least 45%.
- Over gRPC: the streaming RPC with a mapping server in its own process; the client streams batches of raw
  ``cn-ccer`` JSON records (each decoded and checked on arrival) and reads back the rows; target at least 20%.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc

from adapters.context import ActionFacts, ItmoSerialSource, MappingContext
from adapters.mapping import ccer_to_aef_actions
from adapters.serials.domestic import CCER_FORMAT
from carbon_gateway.v1 import mapping_pb2, mapping_pb2_grpc
from gateway.domain.blocks import UnitBlock
from gateway.domain.canonical import ActionSubtype, CcerCredit, MitigationType
from gateway.domain.records import ActionType
from tests.adapters.strategies import ACTION_CONTEXT_JSON
from tests.bench.common import Figure, paired, rate
from tests.processes import free_port

BATCH = 2_000
TARGET = 0.45
ROUNDS = 5


def _credits(count: int) -> list[CcerCredit]:
    credits = []
    for i in range(count):
        block = UnitBlock(
            CCER_FORMAT.space(),
            i * 1000 + 1,
            i * 1000 + 1000,
            2021 + i % 4,
            f"P-{i % 97}",
            "CCER-14-001-V01",
            MitigationType.REMOVALS.value,
            registry_reference=f"CCER-{i}",
        )
        credits.append(
            CcerCredit(
                "Afforestation project", "N0101", "Guangdong", dt.date(2021, 1, 1), dt.date(2021, 12, 31), 1000, block
            )
        )
    return credits


def _context() -> MappingContext:
    facts = ActionFacts(
        action_type=ActionType.FIRST_TRANSFER,
        action_subtype=ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY,
        action_date=dt.datetime(2025, 3, 1, 8, tzinfo=dt.UTC),
        cooperative_approach="CA0001",
        authorization_id="CHN-CHE-2025-001",
        first_transferring_party="CHN",
        party_registry="CHN01",
        gwp_values="AR5",
        acquiring_party="CHE",
    )
    return MappingContext(facts=facts, extension_codes=(("CN-CCER", "CCER"),), itmo_serials=ItmoSerialSource.UNDERLYING)


def _row_message_rate(seconds: float) -> float:
    """Raw construction of the MappedRow messages the RPCs return, from precomputed values."""
    from adapters.rows import map_rows

    mapped = map_rows("cn-ccer", "aef-actions", _json_batch(0, 1), source_format="json", context=_context())
    values, lost = mapped.rows[0].values, mapped.rows[0].lost_fields
    row = mapping_pb2.MappedRow
    counter = iter(range(1 << 62))

    def construct() -> object:
        return row(position=next(counter), values=values, lost_fields=lost)

    return rate(construct, seconds=seconds, min_calls=1000)


def _json_batch(first: int, count: int) -> bytes:
    records = []
    for credit in _credits(first + count)[first:]:
        b = credit.block
        records.append(
            {
                "ccer_id": b.registry_reference,
                "project_id": b.project_id,
                "project_name": credit.project_name,
                "project_type_code": credit.project_type_code,
                "methodology_code": b.methodology_code,
                "province": credit.province,
                "monitoring_period_start": credit.monitoring_period_start.isoformat(),
                "monitoring_period_end": credit.monitoring_period_end.isoformat(),
                "vintage": b.vintage,
                "certified_quantity": credit.certified_quantity,
                "block_start": b.start,
                "block_end": b.end,
                "mitigation_type": b.mitigation_type,
            }
        )
    return json.dumps(records).encode()


async def _stream_rate(port: int, batches: list[bytes], per_batch: int) -> float:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        stub = mapping_pb2_grpc.MappingServiceStub(channel)
        await stub.ListAdapters(mapping_pb2.ListAdaptersRequest(), wait_for_ready=True, timeout=30)

        async def requests() -> AsyncIterator[mapping_pb2.MapRecordsRequest]:
            for i, payload in enumerate(batches):
                if i == 0:
                    yield mapping_pb2.MapRecordsRequest(
                        source="cn-ccer",
                        target="aef-actions",
                        source_format="json",
                        payload=payload,
                        context_json=json.dumps(ACTION_CONTEXT_JSON).encode(),
                    )
                else:
                    yield mapping_pb2.MapRecordsRequest(payload=payload)

        start = time.perf_counter()
        rows = 0
        async for response in stub.StreamMapRecords(requests()):
            if not response.applied:
                raise RuntimeError(f"a batch was refused: {response.issues[:3]}")
            rows += len(response.rows)
        elapsed = time.perf_counter() - start
    if rows != per_batch * len(batches):
        raise RuntimeError(f"{rows} rows came back for {per_batch * len(batches)} records")
    return rows / elapsed


def run_grpc() -> list[Figure]:
    """The streaming RPC against raw construction of the same row messages."""
    port = free_port()
    per_batch, count = 2_000, 10
    batches = [_json_batch(i * per_batch, per_batch) for i in range(count)]
    root = Path(__file__).resolve().parents[2]
    server = subprocess.Popen([sys.executable, "-m", "tests.bench.servers", "mapping", str(port)], cwd=root)
    try:
        asyncio.run(_stream_rate(port, batches[:2], per_batch))  # connection, imports and first batches
        streamed, baseline = paired(
            lambda: asyncio.run(_stream_rate(port, batches, per_batch)),
            lambda: _row_message_rate(0.3),
            rounds=ROUNDS,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return [
        Figure(
            name="mapping CCER JSON records to AEF Actions rows over the streaming RPC",
            value=streamed,
            unit="records/s",
            limit_name="raw construction of the MappedRow messages",
            limit=baseline,
            target=0.20,
            direction="min",
        )
    ]


def run() -> list[Figure]:
    """Every mapping figure."""
    return run_in_process() + run_grpc() + run_commits_while_mapping()


MAPPING_CALLS = 4
"""Mapping calls kept running while commits are timed: one caller's most."""


def run_commits_while_mapping() -> list[Figure]:
    """A durable commit's latency (OpenAccount, median of 40) while one caller keeps `MAPPING_CALLS` large
    mapping calls running, against the same commit's latency with nothing else to do; the gateway in this
    process, with the interpreter settings of ``serve``. Reported, no target."""
    from gateway.cli import SWITCH_INTERVAL_SECONDS

    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    try:
        idle, loaded = asyncio.run(_commit_latencies())
    finally:
        sys.setswitchinterval(previous)
    return [
        Figure(
            name=f"OpenAccount latency p50 while {MAPPING_CALLS} calls map 8,000 CCER records each (SQLite, durable)",
            value=loaded * 1000,
            unit="ms",
            limit_name="OpenAccount latency p50 with no mapping",
            limit=idle * 1000,
            target=None,
            direction="max",
        )
    ]


async def _commit_latencies() -> tuple[float, float]:
    import statistics
    import tempfile

    from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, records_pb2
    from gateway.demo import start_pair

    # cn-ccer to cn-ccer goes record by record (the fast path is CCER to AEF Actions): CPU work throughout.
    request = mapping_pb2.MapRecordsRequest(
        source="cn-ccer", target="cn-ccer", source_format="json", payload=_json_batch(0, 8_000)
    )
    with tempfile.TemporaryDirectory(prefix="carbon-gateway-bench-") as folder:
        pair = await start_pair(Path(folder))
        try:
            options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
            async with grpc.aio.insecure_channel(pair.chn.operator_address, options=options) as channel:
                mapping = mapping_pb2_grpc.MappingServiceStub(channel)
                operator = operator_pb2_grpc.OperatorServiceStub(channel)
                if not (await mapping.MapRecords(request)).applied:
                    raise RuntimeError("the mapping batch was refused")

                async def opens(tag: str) -> float:
                    seconds = []
                    for i in range(40):
                        account = records_pb2.Account(
                            account_id=f"A-{tag}-{i}", holder_name="H", account_type="project owner"
                        )
                        begin = time.perf_counter()
                        await operator.OpenAccount(
                            operator_pb2.OpenAccountRequest(idempotency_key=f"{tag}-{i}", account=account)
                        )
                        seconds.append(time.perf_counter() - begin)
                    return statistics.median(seconds)

                idle = await opens("idle")
                stop = asyncio.Event()

                async def keep_mapping() -> None:
                    while not stop.is_set():
                        await mapping.MapRecords(request)

                mappers = [asyncio.ensure_future(keep_mapping()) for _ in range(MAPPING_CALLS)]
                await asyncio.sleep(0.5)
                loaded = await opens("loaded")
                stop.set()
                await asyncio.gather(*mappers)
        finally:
            await pair.stop()
    return idle, loaded


def _records_per_second(map_batch: Callable[[], int], seconds: float = 0.3) -> float:
    """Records per second of ``map_batch`` (which returns how many records it mapped), for about ``seconds``."""
    records = batches = 0
    start = time.perf_counter()
    while True:
        records += map_batch()
        batches += 1
        elapsed = time.perf_counter() - start
        if batches >= 3 and elapsed >= seconds:
            return records / elapsed


def run_in_process() -> list[Figure]:
    """Both in-process figures, against MappedRow constructions per second."""
    from adapters.rows import map_rows

    credits = _credits(BATCH)
    context = _context()
    assert len(ccer_to_aef_actions(credits, context)) == BATCH
    payload = _json_batch(0, BATCH)

    def canonical() -> int:
        return len(ccer_to_aef_actions(credits, context))

    def raw_json() -> int:
        mapped = map_rows("cn-ccer", "aef-actions", payload, source_format="json", context=context)
        return sum(1 for _ in mapped.rows)

    assert raw_json() == BATCH
    figures = []
    for name, mapping in (
        ("mapping canonical CCER credits to AEF Actions records in process", canonical),
        ("mapping CCER JSON records to AEF Actions rows of text in process", raw_json),
    ):
        mapped, baseline = paired(
            functools.partial(_records_per_second, mapping), lambda: _row_message_rate(0.3), rounds=ROUNDS
        )
        figures.append(
            Figure(
                name=name,
                value=mapped,
                unit="records/s",
                limit_name="raw construction of the MappedRow messages",
                limit=baseline,
                target=TARGET,
                direction="min",
            )
        )
    return figures


if __name__ == "__main__":
    for figure in run():
        print(figure.line())
