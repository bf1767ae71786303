"""Reconciliation of two ledgers of a million blocks each, against a naive comparison by full dump.

Two gateways, ``CHN`` and ``CHE``, each run as ``carbon-gateway serve`` in a process of its own, with the
production settings (SQLite in WAL mode with durable commits, every statement and receipt signed and
verified, the transactional outbox). Their ledgers record the same completed transfers from ``CHN`` to
``CHE``: 1,000 transfers of 1,000 blocks, ``First transfer`` (to another Party) or ``Transfer`` entries at
``CHN`` and ``Acquisition`` entries at ``CHE``, over two serial spaces, five vintages and two purposes. ``CHE``'s
side differs in exactly 100 blocks of 100 different transfers: 25 with another last serial, 25 with another
vintage, 25 missing and 25 recorded twice. Only the ledgers are filled: neither side holds the transfers
themselves (their terms, their messages), so phase 3 finds each differing transfer unknown on both sides.

Setup (not timed): both databases are opened with `SQLiteStore.open`, the ledger rows go in with
``executemany`` (`gateway.store.codec.ledger_row` of each `LedgerEntry`), and both reconciliation trees and
log trees are folded completely with the store's own `fold_reconciliation` and `fold_log_tree`. The two sides
are built in two processes at once; at a million blocks that takes about seven minutes on two cores, most of
it the fold (150 to 230 µs a ledger entry, pure Python). The result is kept in a cache directory keyed by a
hash of the block count, the source of the functions that build it, the product's store and domain modules and
the SQLite and Python versions, so a later run with the same code copies it (seconds) instead of building it
again; set ``CARBON_GATEWAY_BENCH_RECONCILE_CACHE=off`` to build it every time (or to a directory to keep it there).

- Ours: ``RunReconciliation`` on ``CHN`` for partner ``CHE`` over the operator API, then ``GetReconciliation``
  every 20 ms until the run is no longer ``RUNNING``. The report must name the 100 differences by kind.
  Bytes exchanged: the envelopes of the reconciliation statements and of their receipts, both directions, as
  ``CHN``'s message log holds them (it logs its outgoing statements and incoming receipts, and the incoming
  statements and outgoing receipts).
- Naive: a bench-only process on ``CHE``'s side reads every block ``CHE`` would reconcile (its stored leaves),
  turns each into a ``partner_pb2.ReconciledBlock`` and streams them over gRPC in DSSE-signed chunks of at most
  1 MB (the default envelope cap); a bench-only process on ``CHN``'s side verifies each chunk's signature,
  parses and checks each block (`gateway.reconciliation_wire.block_from_proto`) and compares the two multisets
  of canonical block encodings, then pairs what differs the way a run does. Both sides read their stored
  leaves, as the run does, and work at once (the receiver's channel reads ahead, so the dump never waits for
  the comparison): with both processes busy, the naive time is sensitive to other load on the machine. Time:
  from the request to the comparison's result; bytes: the chunks' envelopes.
- Peak memory: ``VmHWM`` of each gateway process after the run (the processes start with the trees folded).

Targets: at most half the naive time, under 400 MB per gateway process, at most 1% of the dump's bytes.
``CARBON_GATEWAY_BENCH_RECONCILE_BLOCKS`` sets a smaller size (at least 100 blocks) to try the benchmark
quickly; the bytes a run exchanges hardly depend on the size while the dump's grow with it, so below a million
blocks the bytes figure misses its target by design (at 100,000: some 390 KB against 108 KB).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import inspect
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, partner_pb2
from gateway import wire
from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.canonical import ActionSubtype
from gateway.domain.reconciliation import (
    DifferenceKind,
    ReconciledBlock,
    Status,
    pair_differences,
    repeated_difference,
)
from gateway.domain.records import ActionType, LedgerEntry, Purpose
from gateway.harness import self_signed_trust_document
from gateway.reconciliation_wire import block_from_proto, block_to_proto
from gateway.store import codec
from gateway.store.sqlite import SQLiteStore
from signing import PublicKey, generate_key, sign_envelope, signer_from_uri, verify_envelope
from tests.bench.common import Figure
from tests.bench.transfer import _child, _wait_serving
from tests.processes import free_port

BLOCKS = 1_000_000
BLOCKS_PER_TRANSFER = 1_000
DIFFERENCES = 100
ENV_BLOCKS = "CARBON_GATEWAY_BENCH_RECONCILE_BLOCKS"
ENV_CACHE = "CARBON_GATEWAY_BENCH_RECONCILE_CACHE"
TIME_TARGET = 1.0
"""Ours over half the naive time."""
MEMORY_LIMIT_MB = 400.0
BYTES_SHARE = 0.01
POLL_SECONDS = 0.02
CHUNK_BYTES = 1 << 20
"""The naive dump's envelopes stay within the default envelope cap (``limits.max_envelope_bytes``)."""
DUMP_PAYLOAD_TYPE = "application/vnd.carbon-gateway.bench.block-dump.v1+protobuf"
ROOT = Path(__file__).resolve().parents[2]

REQUESTER, RESPONDER = "CHN", "CHE"
SPACES = (("CCER", "CN-CCER"), ("VCU", "VCS"))
VINTAGES = (2021, 2022, 2023, 2024, 2025)
APPROACH = "CA0001"
EXPECTED_KINDS = (
    DifferenceKind.QUANTITY,
    DifferenceKind.VINTAGE,
    DifferenceKind.MISSING_AT_RESPONDER,
    DifferenceKind.ADJUSTED_TWICE,
)
"""The difference each changed block of ``CHE``'s side makes, in turn."""

CONFIG = """
party = "{party}"
database = "{db}.db"
signer = "file:{db}.key"
trust_document = "{db}.trust.json"

[operator]
listen = "127.0.0.1:{operator}"
unauthenticated_loopback = true

[partner]
listen = "127.0.0.1:{partner}"

[[partners]]
party = "{other}"
address = "127.0.0.1:{other_partner}"
trust_document = "{other_db}.trust.json"

[policy]
rules = [{{ verdict = "accept" }}]

[reconciliation]
every_seconds = 0
"""


# the ledgers


@dataclass(frozen=True)
class Plan:
    """The blocks of both ledgers and where ``CHE``'s side differs."""

    blocks: int

    @property
    def per_transfer(self) -> int:
        """Blocks per transfer: 1,000, fewer for a small run so that 100 transfers can differ."""
        return min(BLOCKS_PER_TRANSFER, self.blocks // DIFFERENCES)

    @property
    def transfers(self) -> int:
        """Number of transfers."""
        return self.blocks // self.per_transfer

    def changed(self) -> dict[int, DifferenceKind]:
        """Block index -> the difference ``CHE``'s side makes there: one block in each of 100 transfers."""
        found = {}
        for d in range(DIFFERENCES):
            transfer = d * self.transfers // DIFFERENCES
            found[transfer * self.per_transfer + (d * 7919 + 13) % self.per_transfer] = EXPECTED_KINDS[
                d % len(EXPECTED_KINDS)
            ]
        return found

    def expected(self) -> Counter[str]:
        """The differences a comparison must find, by kind."""
        return Counter(kind.name for kind in self.changed().values())

    def transfer_id(self, transfer: int) -> str:
        """A transfer's ID, a UUID as the gateway makes them."""
        return str(uuid.UUID(int=(0xB1 << 120) | transfer, version=4))


def _entry(plan: Plan, party: str, index: int) -> LedgerEntry:
    """Block ``index`` as ``party`` records its movement from ``CHN`` to ``CHE``."""
    transfer = index // plan.per_transfer
    unit_kind, registry = SPACES[transfer % len(SPACES)]
    start = index * 100 + 1
    quantity = 2 + index * 7919 % 98
    vintage = VINTAGES[(index * 31 + transfer) % len(VINTAGES)]
    ndc = transfer % 5 != 4
    authorization = f"CHN-CHE-{'NDC' if ndc else 'OIMP'}"
    block = UnitBlock(
        space=SerialSpace(unit_kind, registry, ""),
        start=start,
        end=start + quantity - 1,
        vintage=vintage,
        project_id=f"P-{transfer % 97:04d}",
        methodology_code="CCER-14-001-V01" if registry == "CN-CCER" else "VM0007",
        mitigation_type="Removal" if transfer % 3 == 0 else "Reduction",
        registry_reference=f"{registry}-{index}",
        first_transferred=True,
        first_transferring_party=REQUESTER,
        cooperative_approach=APPROACH,
        authorization_id=authorization,
    )
    if party == REQUESTER:
        first = transfer % 10 < 7
        action = ActionType.FIRST_TRANSFER if first else ActionType.TRANSFER
        subtype = ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY.value if first else ""
    else:
        action, subtype = ActionType.ACQUISITION, ""
    return LedgerEntry(
        entry_id=0,
        action_date=dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=transfer),
        action_type=action,
        transfer_id=plan.transfer_id(transfer),
        block=block,
        cooperative_approach=APPROACH,
        authorization_id=authorization,
        first_transferring_party=REQUESTER,
        transferring_party=REQUESTER,
        acquiring_party=RESPONDER,
        purpose=Purpose.NDC if ndc else Purpose.OIMP,
        action_subtype=subtype,
    )


def _differing(entry: LedgerEntry, kind: DifferenceKind) -> list[LedgerEntry]:
    """``CHE``'s entries for a block where its side differs in ``kind``."""
    block = entry.block
    if kind is DifferenceKind.QUANTITY:
        return [replace(entry, block=replace(block, end=block.end - 1))]
    if kind is DifferenceKind.VINTAGE:
        return [replace(entry, block=replace(block, vintage=VINTAGES[(block.vintage - VINTAGES[0] + 1) % 5]))]
    if kind is DifferenceKind.MISSING_AT_RESPONDER:
        return []
    return [entry, entry]


def _rows(plan: Plan, party: str, batch: int = 50_000) -> Iterator[list[tuple[Any, ...]]]:
    """``party``'s ledger rows, in batches."""
    changed = plan.changed() if party == RESPONDER else {}
    rows: list[tuple[Any, ...]] = []
    for index in range(plan.blocks):
        entry = _entry(plan, party, index)
        kind = changed.get(index)
        for kept in [entry] if kind is None else _differing(entry, kind):
            rows.append(tuple(codec.ledger_row(kept).values()))
        if len(rows) >= batch:
            yield rows
            rows = []
    if rows:
        yield rows


async def _fill(path: Path, plan: Plan, party: str) -> tuple[float, float]:
    """``party``'s database at ``path``: the ledger, then both trees folded completely; return the seconds the
    rows took to make and insert, and the seconds the fold took."""
    began = time.perf_counter()
    store = await SQLiteStore.open(path)
    try:
        db = store._db  # the production connection: WAL, durable commits
        columns = list(codec.ledger_row(_entry(plan, party, 0)))
        insert = f"INSERT INTO ledger ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        for rows in _rows(plan, party):
            db.execute("BEGIN IMMEDIATE")
            db.executemany(insert, rows)
            db.execute("COMMIT")
        filled = time.perf_counter()
        while True:
            async with store.transaction() as tx:
                folded = await tx.fold_reconciliation(party, 50_000)
                await tx.fold_log_tree()
            if not folded:
                break
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return filled - began, time.perf_counter() - filled
    finally:
        await store.close()


def _build_side(path: str, blocks: int, party: str) -> tuple[float, float]:
    """Build one side's database (in a process of its own): `_fill`."""
    return asyncio.run(_fill(Path(path), Plan(blocks), party))


def _cache_key(blocks: int) -> str:
    """What the built databases depend on: the plan, the code that builds them, the store and domain code."""
    digest = hashlib.sha256(f"{blocks} {sqlite3.sqlite_version} {sys.version}".encode())
    for function in (Plan, _entry, _differing, _rows, _fill):
        digest.update(inspect.getsource(function).encode())
    for path in sorted([*ROOT.glob("gateway/store/*.py"), *ROOT.glob("gateway/domain/*.py")]):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:20]


def _build(folder: Path, blocks: int) -> None:
    """Both databases in ``folder``, built at once in two processes."""
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        futures = {
            party: pool.submit(_build_side, str(folder / f"{party.lower()}.db"), blocks, party)
            for party in (REQUESTER, RESPONDER)
        }
        for party, future in futures.items():
            filled, folded = future.result()
            print(
                f"({party}'s ledger of {blocks:,} blocks made and inserted in {filled:.1f} s, its trees folded"
                f" (fold_reconciliation, fold_log_tree) in {folded:.1f} s)",
                flush=True,
            )


def _prepare(workdir: Path, blocks: int) -> tuple[float, bool]:
    """Both databases in ``workdir``, from the cache or built; return the seconds it took and whether the cache
    served them."""
    began = time.perf_counter()
    setting = os.environ.get(ENV_CACHE, "")
    if setting.lower() in ("off", "0", "no", "false"):
        _build(workdir, blocks)
        return time.perf_counter() - began, False
    cache = Path(setting) if setting else Path(tempfile.gettempdir()) / "carbon-gateway-bench"
    prefix = f"reconciliation-{blocks}-"
    kept = cache / (prefix + _cache_key(blocks))
    hit = (kept / "complete").is_file()
    if not hit:
        cache.mkdir(parents=True, exist_ok=True)
        for stale in cache.glob(prefix + "*"):
            shutil.rmtree(stale, ignore_errors=True)  # an older build of the same size, or an interrupted one
        building = cache / f"{prefix}building-{os.getpid()}"
        building.mkdir()
        _build(building, blocks)
        (building / "complete").write_text(json.dumps({"blocks": blocks, "built_at": time.time()}))
        building.rename(kept)
    for party in (REQUESTER, RESPONDER):
        copy = shutil.copyfile(kept / f"{party.lower()}.db", workdir / f"{party.lower()}.db")
        with copy.open("rb+") as file:
            os.fsync(file.fileno())  # written back now, not while the gateways wait for their own syncs
    return time.perf_counter() - began, hit


# the two gateways


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _quiet(paths: list[Path]) -> tuple[int, ...]:
    """Pending outbox messages of each database, and the length of each message log."""
    found = []
    for path in paths:
        with contextlib.closing(_ro(path)) as db:
            found.append(db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0])
            found.append(db.execute("SELECT COALESCE(MAX(log_index), 0) FROM message_log").fetchone()[0])
    return tuple(found)


async def _settle(paths: list[Path], timeout: float = 60.0) -> None:
    """Wait until neither gateway has anything to send and the message logs stay put for half a second."""
    deadline = time.monotonic() + timeout
    last: tuple[int, ...] = ()
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        now = _quiet(paths)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif not any(now[0::2]) and time.monotonic() - stable_since >= 0.5:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the gateways did not settle within {timeout} s: {last}")


def _peak_mb(pid: int) -> float:
    """A process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmHWM for process {pid}")


@dataclass
class Ours:
    """What the run measured."""

    seconds: float
    status: str
    kinds: Counter[str]
    transfers: set[str]
    omitted: int
    bytes: int
    messages: dict[str, list[int]]
    """Envelopes by statement body (or receipt) and direction: [count, bytes]."""
    unexpected: list[str]
    peak_mb: dict[str, float]


def _exchanged(path: Path, after: int) -> tuple[int, dict[str, list[int]], list[str]]:
    """Bytes of the reconciliation statements and their receipts logged after entry ``after``, the count and
    bytes of each kind, and what else was logged."""
    with contextlib.closing(_ro(path)) as db:
        rows = db.execute(
            "SELECT log_index, direction, peer, message_id, kind, envelope FROM message_log WHERE log_index > ?"
            " ORDER BY log_index",
            (after,),
        ).fetchall()
    statements: set[tuple[str, str]] = set()
    counted: dict[str, list[int]] = {}
    total = 0
    others = []
    for index, direction, peer, message_id, kind, envelope in rows:
        if kind != "statement":
            continue
        statement = partner_pb2.Statement()
        statement.ParseFromString(wire.envelope_from_bytes(bytes(envelope)).payload)
        body = statement.WhichOneof("body") or ""
        if body.startswith("reconciliation_"):
            statements.add((peer, message_id))
            found = counted.setdefault(f"{body} {direction}", [0, 0])
            found[0] += 1
            found[1] += len(envelope)
            total += len(envelope)
        else:
            others.append(f"log entry {index}: {direction} {kind} {body} {message_id}")
    for index, direction, peer, message_id, kind, envelope in rows:
        if kind == "statement":
            continue
        if kind == "receipt" and (peer, message_id) in statements:
            found = counted.setdefault(f"receipt {direction}", [0, 0])
            found[0] += 1
            found[1] += len(envelope)
            total += len(envelope)
        else:
            others.append(f"log entry {index}: {direction} {kind} {message_id}")
    return total, counted, others


async def _ours(folder: Path, operator: str, pids: dict[str, int]) -> Ours:
    paths = [folder / "chn.db", folder / "che.db"]
    await _settle(paths)
    with contextlib.closing(_ro(paths[0])) as db:
        before = db.execute("SELECT COALESCE(MAX(log_index), 0) FROM message_log").fetchone()[0]
    async with grpc.aio.insecure_channel(operator, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        stub = operator_pb2_grpc.OperatorServiceStub(ch)
        began = time.perf_counter()
        run = await stub.RunReconciliation(
            operator_pb2.RunReconciliationRequest(idempotency_key=str(uuid.uuid4()), partner=RESPONDER)
        )
        while run.status == int(Status.RUNNING):
            await asyncio.sleep(POLL_SECONDS)
            run = await stub.GetReconciliation(operator_pb2.GetReconciliationRequest(run_id=run.run_id))
        seconds = time.perf_counter() - began
    await _settle(paths)  # the report reaches CHE, and its receipt comes back
    total, messages, unexpected = _exchanged(paths[0], before)
    return Ours(
        seconds=seconds,
        status=Status(run.status).name,
        kinds=Counter(DifferenceKind(d.kind).name for d in run.report.differences),
        transfers={d.transfer_id for d in run.report.differences},
        omitted=run.report.differences_omitted,
        bytes=total,
        messages=messages,
        unexpected=unexpected + ([run.detail] if run.detail else []),
        peak_mb={party: _peak_mb(pid) for party, pid in pids.items()},
    )


# the naive comparison: CHE dumps every block, CHN compares


def _chunk_class() -> Any:
    """``bench.BlockDump {uint64 sequence = 1; repeated carbon_gateway.v1.ReconciledBlock blocks = 2;
    bool last = 3;}``, made at run time so that no generated code is added for the benchmark."""
    pool = descriptor_pool.Default()
    try:
        found = pool.FindMessageTypeByName("bench.BlockDump")
    except KeyError:
        field = descriptor_pb2.FieldDescriptorProto
        file = descriptor_pb2.FileDescriptorProto(
            name="bench/block_dump.proto", package="bench", syntax="proto3", dependency=[partner_pb2.DESCRIPTOR.name]
        )
        message = file.message_type.add(name="BlockDump")
        message.field.add(name="sequence", number=1, type=field.TYPE_UINT64, label=field.LABEL_OPTIONAL)
        message.field.add(
            name="blocks",
            number=2,
            type=field.TYPE_MESSAGE,
            label=field.LABEL_REPEATED,
            type_name=".carbon_gateway.v1.ReconciledBlock",
        )
        message.field.add(name="last", number=3, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
        pool.AddSerializedFile(file.SerializeToString())
        found = pool.FindMessageTypeByName("bench.BlockDump")
    return message_factory.GetMessageClass(found)


def _leaves(path: Path, partner: str) -> Iterator[bytes]:
    """The canonical encodings of the blocks this side reconciles with ``partner``, as the gateway stores them.
    The table is read in its own order (a scan, six times faster than following the partner's index)."""
    with contextlib.closing(_ro(path)) as db:
        for (body,) in db.execute("SELECT body FROM reconciliation_leaves NOT INDEXED WHERE partner = ?", (partner,)):
            yield body


def _dump_chunks(path: Path, partner: str, key_uri: str) -> Iterator[bytes]:
    """Every block of ``path`` for ``partner`` as signed envelopes of at most `CHUNK_BYTES`."""
    signer = signer_from_uri(key_uri)
    chunk_type = _chunk_class()
    budget = CHUNK_BYTES - 1024  # the envelope's header and signature
    chunk, size, sequence = chunk_type(sequence=1), 0, 1

    def sealed(last: bool) -> bytes:
        chunk.last = last
        envelope = sign_envelope(DUMP_PAYLOAD_TYPE, chunk.SerializeToString(), [signer])
        return wire.envelope_to_bytes(envelope)

    for body in _leaves(path, partner):
        block = block_to_proto(ReconciledBlock.decode(body))
        length = block.ByteSize() + 4  # tag and length prefix
        if size + length > budget:
            yield sealed(False)
            sequence += 1
            chunk, size = chunk_type(sequence=sequence), 0
        chunk.blocks.append(block)
        size += length
    yield sealed(True)


async def _compare(path: Path, partner: str, key: PublicKey, dump: str) -> dict[str, Any]:
    """Ask ``dump`` for every block, verify and check it, and compare with this side's own blocks."""
    chunk_type = _chunk_class()
    async with grpc.aio.insecure_channel(
        dump, options=[("grpc.max_receive_message_length", 4 << 20), ("grpc.http2.lookahead_bytes", 64 << 20)]
    ) as channel:
        call = channel.unary_stream("/bench.Dump/Blocks", None, None)(b"")
        mine = Counter(_leaves(path, partner))
        theirs: Counter[bytes] = Counter()
        chunks = size = 0
        last = False
        async for raw in call:
            chunks += 1
            size += len(raw)
            verified = verify_envelope(wire.envelope_from_bytes(raw), [key], 1)
            if verified.payload_type != DUMP_PAYLOAD_TYPE:
                raise RuntimeError(f"chunk {chunks} is a {verified.payload_type}")
            chunk = chunk_type()
            chunk.ParseFromString(verified.payload)
            if chunk.sequence != chunks or last:
                raise RuntimeError(f"chunk {chunk.sequence} arrived as the {chunks}th")
            last = chunk.last
            theirs.update(block_from_proto(b, "dump.blocks").encode() for b in chunk.blocks)
        if not last:
            raise RuntimeError("the dump ended without its last chunk")
    mine_only = [ReconciledBlock.decode(b) for b, n in (mine - theirs).items() if b not in theirs for _ in range(n)]
    theirs_only = [ReconciledBlock.decode(b) for b, n in (theirs - mine).items() if b not in mine for _ in range(n)]
    repeated = [(ReconciledBlock.decode(b), n, theirs[b]) for b, n in mine.items() if b in theirs and theirs[b] != n]
    differences = pair_differences(mine_only, theirs_only) + [repeated_difference(*r) for r in repeated]
    return {
        "chunks": chunks,
        "bytes": size,
        "mine": sum(mine.values()),
        "theirs": sum(theirs.values()),
        "kinds": Counter(d.kind.name for d in differences),
        "transfers": sorted({d.transfer_id for d in differences}),
    }


async def _serve_naive(kind: str, port: int, path: Path, partner: str, key: str) -> None:
    """Serve one side of the naive comparison on loopback ``port`` until SIGTERM: ``dump`` (``CHE``'s side,
    ``key`` its private key's URI) or ``compare`` (``CHN``'s side, ``key`` the path of ``CHE``'s public key)."""

    async def ping(request: bytes, context: Any) -> bytes:
        return b"ready"

    async def blocks(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for chunk in _dump_chunks(path, partner, key):
            yield chunk

    async def compare(request: bytes, context: Any) -> bytes:
        public = PublicKey.from_pem(Path(key).read_bytes())
        return json.dumps(await _compare(path, partner, public, request.decode())).encode()

    handlers = {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
    if kind == "dump":
        handlers["Blocks"] = grpc.unary_stream_rpc_method_handler(blocks)
    else:
        handlers["Compare"] = grpc.unary_unary_rpc_method_handler(compare)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Dump", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(None)


async def _wait_ping(address: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        while True:
            try:
                await channel.unary_unary("/bench.Dump/Ping", None, None)(b"", timeout=1)
                return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


@dataclass
class Naive:
    """What the naive comparison measured."""

    seconds: float
    result: dict[str, Any]
    peak_mb: dict[str, float]


async def _naive(folder: Path) -> Naive:
    ports = {"dump": free_port(), "compare": free_port()}
    module = "tests.bench.reconciliation"
    dump = ("dump", str(ports["dump"]), str(folder / "che.db"), REQUESTER, f"file:{folder / 'che.key'}")
    compare = ("compare", str(ports["compare"]), str(folder / "chn.db"), RESPONDER, str(folder / "che.pub"))
    async with _child("-m", module, *dump, cwd=ROOT) as dumper, _child("-m", module, *compare, cwd=ROOT) as comparer:
        for port in ports.values():
            await _wait_ping(f"127.0.0.1:{port}")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['compare']}") as channel:
            began = time.perf_counter()
            raw = await channel.unary_unary("/bench.Dump/Compare", None, None)(f"127.0.0.1:{ports['dump']}".encode())
            seconds = time.perf_counter() - began
        peaks = {f"{RESPONDER} dump": _peak_mb(dumper.pid), f"{REQUESTER} compare": _peak_mb(comparer.pid)}
    result = json.loads(raw)
    result["kinds"] = Counter(result["kinds"])
    return Naive(seconds, result, peaks)


# the run


async def _measure(folder: Path) -> tuple[Ours, Naive]:
    for party in (REQUESTER, RESPONDER):
        name = party.lower()
        generate_key(folder / name)
        trust = self_signed_trust_document(party, signer_from_uri(str(folder / f"{name}.key")))
        (folder / f"{name}.trust.json").write_bytes(trust.to_json())
    ports = {party: (free_port(), free_port()) for party in (REQUESTER, RESPONDER)}
    for party, other in ((REQUESTER, RESPONDER), (RESPONDER, REQUESTER)):
        (folder / f"{party.lower()}.toml").write_text(
            CONFIG.format(
                party=party,
                db=party.lower(),
                operator=ports[party][0],
                partner=ports[party][1],
                other=other,
                other_partner=ports[other][1],
                other_db=other.lower(),
            )
        )
    serve = ("-m", "gateway.cli", "serve")
    async with (
        _child(*serve, str(folder / "chn.toml"), "--log-level", "ERROR", cwd=folder) as chn,
        _child(*serve, str(folder / "che.toml"), "--log-level", "ERROR", cwd=folder) as che,
    ):
        for party in (REQUESTER, RESPONDER):
            await _wait_serving(f"127.0.0.1:{ports[party][0]}", timeout=120)
        ours = await _ours(folder, f"127.0.0.1:{ports[REQUESTER][0]}", {REQUESTER: chn.pid, RESPONDER: che.pid})
    naive = await _naive(folder)
    return ours, naive


def _check(what: str, kinds: Counter[str], transfers: set[str], plan: Plan) -> None:
    """Say loudly when a comparison did not find exactly the differences made."""
    expected = plan.expected()
    wanted = {plan.transfer_id(index // plan.per_transfer) for index in plan.changed()}
    if kinds != expected or transfers != wanted:
        print(
            f"!!! {what} found {dict(kinds)} in {len(transfers)} transfers; expected {dict(expected)} in"
            f" {len(wanted)} ({len(transfers - wanted)} unexpected transfers, {len(wanted - transfers)} missed)",
            flush=True,
        )


def run(blocks: int | None = None) -> list[Figure]:
    """Reconciliation time, peak memory per gateway and bytes exchanged, against the naive full dump."""
    blocks = blocks or int(os.environ.get(ENV_BLOCKS, BLOCKS))
    plan = Plan(blocks)
    if plan.per_transfer < 1:
        raise ValueError(f"{ENV_BLOCKS}={blocks}: at least {DIFFERENCES} blocks are needed")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="carbon-gateway-bench-") as name:
        folder = Path(name)
        setup, cached = _prepare(folder, plan.blocks)
        print(
            f"(reconciliation setup: {plan.blocks:,} blocks per side in {plan.transfers:,} transfers,"
            f" {DIFFERENCES} differences, {'copied from the cache' if cached else 'built'} in {setup:.1f} s)",
            flush=True,
        )
        ours, naive = asyncio.run(_measure(folder))
    _check("the reconciliation run", ours.kinds, ours.transfers, plan)
    _check("the naive comparison", naive.result["kinds"], set(naive.result["transfers"]), plan)
    if ours.status != Status.BLOCKS_INCONSISTENT.name or ours.omitted:
        print(f"!!! the run ended {ours.status} with {ours.omitted} differences omitted", flush=True)
    for line in ours.unexpected:
        print(f"!!! unexpected in CHN's message log after the run: {line}", flush=True)
    print(
        f"(reconciliation: {ours.seconds:.2f} s, {ours.bytes:,} bytes in"
        f" {', '.join(f'{n} {kind} ({size:,} bytes)' for kind, (n, size) in ours.messages.items())};"
        f" naive: {naive.seconds:.2f} s, {naive.result['chunks']} chunks, {naive.result['bytes']:,} bytes,"
        f" {naive.result['mine']:,} and {naive.result['theirs']:,} blocks compared, peak memory"
        f" {', '.join(f'{k} {v:.0f} MB' for k, v in naive.peak_mb.items())};"
        f" total {time.perf_counter() - began:.1f} s)",
        flush=True,
    )
    size = f"{plan.blocks:,} blocks per side, {DIFFERENCES} differences"
    memory = [
        Figure(
            name=f"reconciliation peak memory {party} ({size}; VmHWM of the gateway process)",
            value=ours.peak_mb[party],
            unit="MB",
            limit_name="the issue's cap per process",
            limit=MEMORY_LIMIT_MB,
            target=1.0,
            direction="max",
        )
        for party in (REQUESTER, RESPONDER)
    ]
    return [
        Figure(
            name=f"reconciliation time ({size}; RunReconciliation to finished, two gateway processes)",
            value=ours.seconds,
            unit="s",
            limit_name="half the naive comparison's time (CHE's full dump in signed 1 MB chunks, compared at CHN)",
            limit=naive.seconds / 2,
            target=TIME_TARGET,
            direction="max",
        ),
        *memory,
        Figure(
            name=f"reconciliation bytes exchanged ({size}; statements and receipts, both directions)",
            value=ours.bytes,
            unit="bytes",
            limit_name="1% of the naive full dump's bytes",
            limit=naive.result["bytes"] * BYTES_SHARE,
            target=1.0,
            direction="max",
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) == 6:  # a side of the naive comparison, as _naive starts it
        kind, port, path, partner, key = sys.argv[1:]
        asyncio.run(_serve_naive(kind, int(port), Path(path), partner, key))
    else:
        for figure in run():
            print(figure.line())
