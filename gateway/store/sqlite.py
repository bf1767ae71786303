"""The embedded store: one SQLite file per gateway, in WAL mode, with durable commits.

Statements and commits run on the event loop's thread: a statement takes microseconds. The sync that makes a
commit durable does not: it runs in a worker thread, shared by the commits that wait for it (`GroupSync`).
An asyncio lock serializes transactions on the one connection. PostgreSQL, the production store, is
asynchronous throughout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import struct
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.domain import merkle, ranges, reconciliation
from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.ledger import FirstTransferRange, LockedPeriod
from gateway.domain.protocol import first_transfer_quantity
from gateway.domain.ranges import Range
from gateway.domain.reconciliation import (
    LIMBS,
    GroupKey,
    NodeRef,
    ReconciledBlock,
    Status,
    Totals,
    bucket_range,
    digest_of,
    digest_of_limbs,
    limbs,
    log_leaf,
    node_prefix,
)
from gateway.domain.records import Account, AccountType, ActionType, Authorization, LedgerEntry, Purpose
from gateway.domain.statements import ChannelState
from gateway.domain.summary import LedgerTotal
from gateway.domain.transfer import Transfer
from gateway.store import codec
from gateway.store.base import (
    CURRENT_STATUSES,
    BlockPosition,
    BlockStatus,
    Change,
    ChangeKind,
    CommitSignal,
    IdempotentResult,
    LogEntry,
    LogKind,
    NewBlock,
    OutboxKind,
    OutboxMessage,
    OutboxState,
    PartnerLogHead,
    PrunedChanges,
    ReconciliationRun,
    RunRole,
    SerialRange,
    StoreConflict,
    StoredBlock,
    StoredMessage,
    TransferHead,
    change_digest,
    check_abroad_added,
    check_abroad_removed,
    check_gateway_tables,
    check_schema_known,
    reconciled_blocks,
)
from gateway.store.migrations import (
    AUTHORIZATION_USAGE_REBUILD,
    DATA_STEPS,
    LEDGER_ACTION_SPAN,
    LEDGER_APPENDED,
    LEDGER_TOTAL_COLUMNS,
    LEDGER_TOTALS_REBUILD,
    MIGRATIONS,
)


class WriteAheadLogDamaged(sqlite3.DatabaseError):
    """The file's write-ahead log holds transactions SQLite would silently ignore: its header is damaged, or the
    database file beside it is missing, empty or not in WAL mode."""


_WAL_MAGIC = (0x377F0682, 0x377F0683)  # checksums little-endian, big-endian
_WAL_VERSION = 3007000
_WAL_HEADER = 32
_WAL_FRAME_HEADER = 24

PAGE_CACHE_KIB = 65536
"""The page cache of a serve process's connection, in KiB: 64 MiB, against a 100 MB database a tenth less CPU
for writing a thousand blocks and their ledger entries than SQLite's default of 2 MiB."""


def _wal_checksum(data: bytes, *, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes), from zero (https://sqlite.org/fileformat.html,
    section 4.1)."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    s0 = s1 = 0
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def check_write_ahead_log(path: Path | str) -> None:
    """Refuse (`WriteAheadLogDamaged`) a database whose write-ahead log holds at least one frame after a damaged
    header: SQLite would open the file as if the log were empty, and every transaction in it since the last
    checkpoint (all of a young gateway's books) would be gone without a word. A log with no frame, or none, is
    fine; damage further into the log cannot be told from a transaction cut short by a crash, and SQLite keeps
    the transactions before it.

    A log with frames beside a database file that is missing, empty or not in WAL mode is refused too: SQLite
    would start a new database, or open the file in its own journal mode, and delete the log."""
    # SQLite keeps the log beside the file a symbolic link names, not beside the link.
    wal = Path(f"{os.path.realpath(path)}-wal")
    try:
        with wal.open("rb") as log:
            header = log.read(_WAL_HEADER)
            size = os.fstat(log.fileno()).st_size
    except FileNotFoundError:
        return
    except OSError as exc:  # a folder, say: SQLite would fail on it after the checks below
        raise WriteAheadLogDamaged(
            f"{path}: its write-ahead log, {wal}, cannot be read ({exc.strerror or exc}); SQLite keeps the newest"
            " transactions there: make it a file this user may read and write, or move what is there aside if it is"
            " not this database's log"
        ) from None
    if len(header) < _WAL_HEADER:
        return
    if size >= _WAL_HEADER + _WAL_FRAME_HEADER + 512:
        _check_log_has_its_database(path, wal, size)
    magic, version, page_size = struct.unpack(">3I", header[:12])
    sound = (
        magic in _WAL_MAGIC
        and version == _WAL_VERSION
        and 512 <= page_size <= 65536
        and page_size & (page_size - 1) == 0
        and _wal_checksum(header[:24], big_endian=magic & 1 == 1) == struct.unpack(">2I", header[24:])
    )
    if sound or size < _WAL_HEADER + _WAL_FRAME_HEADER + 512:
        return
    raise WriteAheadLogDamaged(
        f"{path}: its write-ahead log ({wal.name}, {size} bytes) has a damaged header, so SQLite would ignore the"
        " transactions in it and the gateway would start without them. Restore the database from a backup (see"
        ' "Restoring a backup" in the README); move the log aside only if you know it holds nothing needed'
    )


def _check_log_has_its_database(path: Path | str, wal: Path, size: int) -> None:
    try:
        with open(os.path.realpath(path), "rb") as database:
            head = database.read(100)
    except FileNotFoundError:
        head = None
    except OSError:
        return  # not a file this check can read: opening it says what is wrong
    if head is None or not head:
        problem = "is missing" if head is None else "is empty"
    elif len(head) == 100 and head.startswith(b"SQLite format 3\x00") and head[18:20] != b"\x02\x02":
        problem = "is not in WAL mode"
    else:
        return
    raise WriteAheadLogDamaged(
        f"{path} {problem}, but its write-ahead log ({wal.name}, {size} bytes) holds transactions: SQLite would"
        " start without them and delete the log. Put the database file back beside its log (a young gateway"
        ' keeps all its books in the log), or restore from a backup (see "Restoring a backup" in the README);'
        " move the log aside only if you know it holds nothing needed"
    )


def sqlite_advice(error: sqlite3.Error) -> str:
    """What to do about ``error``, met opening or migrating an SQLite database, by SQLite's code for it. A failed
    migration was rolled back: the file is as the last migration that completed left it."""
    name = str(getattr(error, "sqlite_errorname", ""))
    if name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR"):
        return (
            "the disk holding it is full or failing (or the process may write no larger a file): free space on it,"
            " or check the disk, and start again; the migration under way was undone"
        )
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH")):
        return (
            "this process cannot open it for writing: make the file, its -wal and -shm files and its folder (where"
            " SQLite creates them) writable by the gateway's user, on a file system mounted read-write"
        )
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return (
            "another process held a lock on it for longer than the gateway waits (an sqlite3 shell in a"
            " transaction, a copy being written into it): end that, and start again"
        )
    # A file that is not SQLite ("file is not a database"), another program's tables (a migration fails).
    return "name this gateway's database file, or a new path to create one"


def schema_tables(db: sqlite3.Connection) -> set[str]:
    """The names of the tables and views in ``db`` but SQLite's own (``sqlite_*``): a program's, or the gateway's."""
    rows = db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
    return {str(row[0]) for row in rows if not str(row[0]).startswith("sqlite_")}


class DatabaseInUse(sqlite3.OperationalError):
    """Another gateway process serves from the same SQLite file."""


def _hold_alone(path: Path | str) -> int:
    """An open descriptor of the database file holding an exclusive ``flock`` on it, for as long as it stays
    open; `DatabaseInUse` when another process holds one. SQLite's own locks are POSIX record locks, which a
    ``flock`` neither takes nor meets: readers (a report) and SQLite itself go on as before."""
    fd = os.open(os.path.realpath(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUse(
            f"{path} is in use by another carbon-gateway serve process: one SQLite file has one gateway process."
            " Stop the other one, or give this gateway a database of its own (replicas share a PostgreSQL"
            " database)"
        ) from None
    except OSError:
        os.close(fd)
        raise
    return fd


class SQLiteStore:
    """A gateway's database in one SQLite file."""

    def __init__(
        self, connection: sqlite3.Connection, wal: GroupSync | None = None, *, held_alone: int | None = None
    ) -> None:
        self._db = connection
        self._lock = asyncio.Lock()
        self._commits = CommitSignal()
        self._enqueued = CommitSignal()
        self._wal = wal
        self._held_alone = held_alone

    def is_transient(self, error: BaseException) -> bool:
        """A wait for another process's lock on the file that ran out (``busy_timeout``), a full disk, and a
        transaction SQLite rolled back by itself (`TransactionLost`): nothing of it was kept."""
        return isinstance(error, TransactionLost) or (
            isinstance(error, sqlite3.OperationalError)
            and str(error).startswith(("database is locked", "database is busy", "database or disk is full"))
        )

    @property
    def shared(self) -> bool:
        """One process uses an SQLite file (`open` with ``alone`` holds it to that)."""
        return False

    @property
    def commits(self) -> CommitSignal:
        """Notified after every write transaction this store commits."""
        return self._commits

    @property
    def enqueued(self) -> CommitSignal:
        """Notified after every write transaction that put a message in the outbox commits, before its sync."""
        return self._enqueued

    @classmethod
    async def open(cls, path: Path | str, *, alone: bool = False) -> SQLiteStore:
        """Open (creating if needed) the database file at ``path`` and apply pending migrations.

        With ``alone`` (a ``serve`` process), refuse (`DatabaseInUse`) a file another process opened so, and
        keep others from opening it so until this store is closed: the store takes every lease in the file for
        its own at start, and keeps its syncs, wake-ups and counters in this process."""
        check_write_ahead_log(path)
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        held_alone: int | None = None
        wal: GroupSync | None = None
        try:
            if alone:
                held_alone = _hold_alone(path)
            db.row_factory = sqlite3.Row
            # Before anything is written, the log mode included: another program's database is left as it is.
            check_gateway_tables(f"{path}", schema_tables(db))
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=5000")
            migrate(db)
            # One process uses an SQLite file: leases a crashed run of this gateway held are nobody's now.
            # Pending messages only, through outbox_state: a settled message's lease ended with its settling.
            db.execute(
                "UPDATE outbox SET lease_owner = '', lease_until = '' WHERE state = 'pending' AND lease_owner != ''"
            )
            db.execute("BEGIN IMMEDIATE")
            for statement in (*AUTHORIZATION_USAGE_REBUILD, *LEDGER_TOTALS_REBUILD):
                db.execute(statement)
            db.execute("COMMIT")
            # A statement that changes many rows inside a transaction keeps an undo record of its own (the
            # statement journal), in a temporary file by default: half the time of a thousand ledger entries.
            # Set after the migrations, whose index builds may sort a whole table; reports read through their
            # own read-only connection (`open_read_only`), whose sorts still spill to files.
            db.execute("PRAGMA temp_store=MEMORY")
            # SQLite's default page cache (2 MiB) holds less than one transfer of a thousand blocks writes, and
            # less than the indexes it searches in a database of some size: pages are read again within it.
            db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
            try:
                wal = GroupSync(os.open(f"{path}-wal", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return cls(db, held_alone=held_alone)  # no write-ahead log file to sync: each durable commit syncs
            _sync_folder(Path(path).resolve().parent)  # the log file's own name, which SQLite syncs only once
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=10000")
            return cls(db, wal, held_alone=held_alone)
        except BaseException:
            # Whatever failed, nothing of this open stays behind: not the connection, nor the lock on the file.
            if wal is not None:
                wal.close()
            db.close()
            if held_alone is not None:
                os.close(held_alone)
            raise

    @classmethod
    async def open_read_only(cls, path: Path | str) -> SQLiteStore:
        """Open an existing database for reading only: nothing is created or migrated, so a reader (a report)
        never changes a running gateway's file. Refuses a file whose schema is not this version's."""
        check_write_ahead_log(path)
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=5000")
        try:
            found = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
        except sqlite3.DatabaseError as exc:
            db.close()
            if str(getattr(exc, "sqlite_errorname", "")) not in ("SQLITE_ERROR", "SQLITE_NOTADB"):
                # Not the file's content but the means to read it: a WAL database is read only where its -shm
                # file can be opened or created beside it (not on a read-only file system, say).
                raise sqlite3.DatabaseError(
                    f"{path} cannot be opened for reading ({exc}): make its folder and its -wal and -shm files"
                    " readable and writable by this user, or read a backup copy"
                ) from None
            raise sqlite3.DatabaseError(f"{path} is not a gateway database: {exc}") from None
        expected = {version for version, _, _ in MIGRATIONS}
        if found != expected:
            db.close()
            newest = max(found, default=0)
            advice = (
                "use the carbon-gateway version that migrated it"
                if newest > max(expected)
                else "start the gateway of this version once, which migrates it"
            )
            raise sqlite3.DatabaseError(
                f"{path} has schema versions up to {newest}, this version reads {max(expected)}: {advice}"
            )
        return cls(db)

    @asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[SQLiteTransaction]:
        """Begin a write transaction; commit on normal exit, roll back on an exception.

        A durable commit returns once the write-ahead log holding it is on disk. ``durable=False`` is for
        bookkeeping whose loss in a crash is harmless, such as marking an outbox message delivered: a message
        whose mark is lost is sent again and the partner answers it from its stored receipt. The next durable
        commit makes such writes durable too.

        Durable commits share their syncs (`GroupSync`): each commits without waiting for the disk, lets the
        next transaction in, and waits, off the event loop, for a sync of the log begun after it committed. No
        transaction, durable or not, returns before the durable commits it could have read are on disk, so
        nothing leaves the gateway (a receipt, a statement, an answer) that a crash could take back.
        """
        wal = self._wal
        seen = 0
        try:
            async with self._lock:
                if wal is not None:
                    wal.check()
                seen = 0 if wal is None else wal.durable
                if wal is None and not durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    changes = self._db.total_changes
                    try:
                        yield (tx := SQLiteTransaction(self._db))
                    except BaseException:
                        if self._db.in_transaction:
                            self._db.execute("ROLLBACK")
                        raise
                    if not self._db.in_transaction:
                        raise TransactionLost
                    wrote = self._db.total_changes != changes
                    try:
                        self._db.execute("COMMIT")
                    except BaseException:
                        if self._db.in_transaction:
                            self._db.execute("ROLLBACK")
                        raise
                    # A transaction that changed no row is a read: nothing of its own to sync or to announce.
                    if wal is not None and wrote:
                        seen = wal.committed(durable=durable)
                    if wrote:
                        self._commits.notify()
                        if tx.enqueued:
                            self._enqueued.notify()
                finally:
                    if wal is None and not durable:
                        self._db.execute("PRAGMA synchronous=FULL")
        finally:
            if wal is not None and wal.synced < seen:
                await _wait_or_defer(wal, seen)

    @asynccontextmanager
    async def synced_once(self) -> AsyncIterator[None]:
        """Inside the block, this task's durable commits wait for the disk once, at its end (see `Store`)."""
        deferred: list[int] = []
        token = _DEFERRED_SYNC.set((asyncio.current_task(), deferred))
        try:
            yield
        finally:
            _DEFERRED_SYNC.reset(token)
            if self._wal is not None and deferred and self._wal.synced < max(deferred):
                await self._wal.wait(max(deferred))

    @asynccontextmanager
    async def read(self) -> AsyncIterator[SQLiteTransaction]:
        """Begin a transaction for reads: a consistent snapshot. It returns once every durable commit it could
        have read is on disk (normally at once)."""
        wal = self._wal
        seen = 0
        try:
            async with self._lock:
                if wal is not None:
                    wal.check()
                    seen = wal.durable
                self._db.execute("BEGIN")
                try:
                    yield SQLiteTransaction(self._db)
                finally:
                    if self._db.in_transaction:
                        self._db.execute("COMMIT")
        finally:
            if wal is not None and wal.synced < seen:
                await _wait_or_defer(wal, seen)

    async def close(self) -> None:
        """Close the database (after syncing what was committed)."""
        async with self._lock:
            try:
                if self._wal is not None and self._wal.failed is None:
                    await self._wal.wait(self._wal.written)
            finally:
                if self._wal is not None:
                    self._wal.close()
                self._db.close()
                if self._held_alone is not None:
                    os.close(self._held_alone)
                    self._held_alone = None


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _wait_or_defer(wal: GroupSync, number: int) -> None:
    """Wait for commit ``number`` to be synced, or leave the wait to the `SQLiteStore.synced_once` block around."""
    deferring = _DEFERRED_SYNC.get()
    # Only the task that opened the block defers: a task it started inherits the variable, not the promise.
    if deferring is None or deferring[0] is not asyncio.current_task():
        await wal.wait(number)
    else:
        deferring[1].append(number)


class TransactionLost(sqlite3.OperationalError):
    """SQLite rolled the transaction back by itself (a full disk, an I/O error, memory): what it wrote is gone,
    and nothing more may run in it, or each later statement would commit on its own."""

    def __init__(self) -> None:
        super().__init__("SQLite rolled this transaction back after an error; it is retried whole")


class _GuardedConnection:
    """The connection as a transaction uses it: every statement first checks that the transaction is still
    open (`TransactionLost` otherwise)."""

    __slots__ = ("_db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def _open(self) -> sqlite3.Connection:
        if not self._db.in_transaction:
            raise TransactionLost
        return self._db

    def execute(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        """`sqlite3.Connection.execute`, inside the open transaction only."""
        return self._open().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any] | Mapping[str, Any]]) -> sqlite3.Cursor:
        """`sqlite3.Connection.executemany`, inside the open transaction only."""
        return self._open().executemany(sql, parameters)

    @property
    def in_transaction(self) -> bool:
        """Whether the transaction is still open."""
        return self._db.in_transaction


class SyncFailed(OSError):
    """The database's write-ahead log could not be synced: recent commits may not be on disk."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(
            cause.errno,
            f"the database's disk failed a sync ({cause.strerror or cause}); check it and restart the gateway",
        )


class GroupSync:
    """Syncs of one SQLite write-ahead log, shared by the durable commits that wait for them.

    The connection runs with ``synchronous=NORMAL``: a commit writes its frames to the log and does not wait
    for the disk. Durability comes from ``fsync`` on the log file, run in a worker thread; one sync covers every
    commit written before it began, so the commits that arrive while one sync runs all wait for the next one,
    together. This is SQLite's ``synchronous=FULL`` guarantee (the log synced before a durable commit is
    reported) with one sync per group of commits instead of one per commit, and with the event loop free
    while the disk works. Another process reading the file (``carbon-gateway report``) may see a commit a few
    milliseconds before its sync completes.

    A failed sync is final (`SyncFailed`): the kernel may have dropped the pages it could not write and report
    the next sync as a success, so no later commit is trusted as durable. Every later transaction is refused
    until the gateway is restarted, after the disk is checked.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        # A thread of its own: in the loop's shared executor a sync would queue behind whatever else runs there.
        self._syncer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal-sync")
        self.failed: OSError | None = None
        self.written = 0
        """Commits so far, numbered from 1."""
        self.durable = 0
        """The number of the latest durable commit."""
        self.synced = 0
        """Every commit up to this number is on disk."""
        self._flush: asyncio.Future[None] | None = None

    def committed(self, *, durable: bool) -> int:
        """Count a commit; return the number a reader of what it wrote must see synced."""
        self.written += 1
        if durable:
            self.durable = self.written
        return self.written if durable else self.durable

    def check(self) -> None:
        """Raise `SyncFailed` if a sync of the log has ever failed."""
        if self.failed is not None:
            raise SyncFailed(self.failed)

    async def wait(self, number: int) -> None:
        """Return once commit ``number`` is on disk; raise `SyncFailed` when a sync failed."""
        while self.synced < number:
            self.check()
            flush = self._flush
            if flush is None or flush.done():
                # Handed to the worker thread now, not when a task first runs: the tasks this commit woke (the
                # outbox worker) run while the disk works rather than before it starts.
                syncing = asyncio.get_running_loop().run_in_executor(self._syncer, os.fsync, self._fd)
                flush = self._flush = asyncio.ensure_future(self._sync(syncing, self.written))
            await asyncio.shield(flush)

    async def _sync(self, syncing: asyncio.Future[None], upto: int) -> None:
        try:
            await syncing
        except OSError as exc:
            log.critical(
                "syncing the database's write-ahead log failed (%s): recent commits may not be on disk. This"
                " gateway refuses every transaction from now on; check the disk, then restart it",
                exc,
            )
            self.failed = exc
            raise SyncFailed(exc) from exc
        self.synced = max(self.synced, upto)

    def close(self) -> None:
        """Close the log file's descriptor (once: a number closed twice may name another file by then). The
        sync thread closes it, after the sync it may still be running on it, so that the event loop never
        waits for a disk that does not answer."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            self._syncer.submit(os.close, fd)
        self._syncer.shutdown(wait=False)


def migrate(db: sqlite3.Connection) -> int:
    """Apply the migrations not yet applied; return the schema version."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, description TEXT)")
    applied = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
    check_schema_known("the SQLite database", applied, max(v for v, _, _ in MIGRATIONS))
    for version, description, script in MIGRATIONS:
        if version in applied:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                db.execute(statement)
            if version in DATA_STEPS:
                _DATA_STEPS[version](db)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, description))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return max(v for v, _, _ in MIGRATIONS)


def _statements(script: str) -> list[str]:
    """The SQL statements of a migration script, each complete (a trigger's inner ``;`` does not split it)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        raise ValueError(f"an incomplete SQL statement ends the migration: {pending!r}")
    return statements


def _fill_known_ranges(db: sqlite3.Connection) -> None:
    """Migration 4: every block ever recorded (registered, received or split from either) makes its range
    known, merged per serial space so that the ranges never overlap."""
    spaces: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
    for row in db.execute("SELECT unit_kind, issuing_registry, issuance, serial_start, serial_end FROM blocks"):
        spaces.setdefault((row[0], row[1], row[2]), []).append((int(row[3]), int(row[4])))
    for key, found in spaces.items():
        for start, end in ranges.normalize(found):
            db.execute("INSERT INTO known_ranges VALUES (?, ?, ?, ?, ?)", (*key, start, end))


def _tie_acquired_blocks(db: sqlite3.Connection) -> None:
    """Migration 5: a first-transferred block with no tie takes the tie of the ``Acquisition`` entry of the
    transfer that brought it (its own, or its nearest ancestor's), where that entry names a first transferring
    Party; blocks whose history names none stay untied rather than take a guess."""
    ties: dict[str, tuple[str, str, str]] = {}
    for row in db.execute(
        "SELECT transfer_id, first_transferring_party, cooperative_approach, authorization_id FROM ledger"
        " WHERE action_type = 'Acquisition' AND first_transferring_party != ''"
    ):
        ties[row[0]] = (row[1], row[2], row[3])
    if not ties:
        return
    lineage = {int(r[0]): (r[1], r[2]) for r in db.execute("SELECT block_id, transfer_id, parent_id FROM blocks")}
    for block_id, body in db.execute("SELECT block_id, body FROM blocks").fetchall():
        data = json.loads(body)
        if not data.get("first_transferred") or data.get("authorization_id"):
            continue
        found: tuple[str, str, str] | None = None
        at: int | None = int(block_id)
        while at is not None and found is None:
            transfer_id, parent = lineage[at]
            found = ties.get(transfer_id)
            at = None if parent is None else int(parent)
        if found is None:
            continue
        data["first_transferring_party"], data["cooperative_approach"], data["authorization_id"] = found
        db.execute("UPDATE blocks SET body = ? WHERE block_id = ?", (json.dumps(data, sort_keys=True), block_id))


_DATA_STEPS = {4: _fill_known_ranges, 5: _tie_acquired_blocks}


log = logging.getLogger(__name__)

_DEFERRED_SYNC: contextvars.ContextVar[tuple[asyncio.Task[Any] | None, list[int]] | None] = contextvars.ContextVar(
    "deferred_sync", default=None
)
"""Inside `SQLiteStore.synced_once`: the task that opened the block, and the commit numbers its end must see
synced."""


_WANTED = (
    "WITH q(i, lo, hi) AS (SELECT key, json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?4))"
)
"""The ranges a `_ranges_each` statement looks up, by index, from its fourth parameter (`_wanted_json`)."""


def _wanted_json(wanted: Sequence[tuple[int, int]]) -> str:
    return json.dumps([[int(start), int(end)] for start, end in wanted])


def _placeholders(values: Sequence[Any]) -> str:
    return ",".join("?" for _ in values)


APPENDED_TOGETHER_FROM = 4
"""How many ledger entries `SQLiteTransaction.append_ledger` writes the change feed's rows and reconciliation
marks of with set statements, not by the row triggers: from four entries on, the set statements cost less."""

_DIGIT = "[0-9]"
INSTANT_GLOB = f"{_DIGIT * 4}-{_DIGIT * 2}-{_DIGIT * 2}T{_DIGIT * 2}:{_DIGIT * 2}:{_DIGIT * 2}.{_DIGIT * 6}Z"
"""The form of every instant the gateway stores (`codec.to_text`), as a GLOB pattern."""


class SQLiteTransaction:
    """The operations of one SQLite transaction (see `gateway.store.base.Transaction`)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = _GuardedConnection(db)
        self._savepoints = 0
        self.enqueued = False
        """Whether the transaction put a message in the outbox (`SQLiteStore.enqueued`)."""

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        self._db.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._db.execute(f"ROLLBACK TO {name}")  # TransactionLost if SQLite rolled everything back
            self._db.execute(f"RELEASE {name}")
            raise
        self._db.execute(f"RELEASE {name}")

    def _one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(sql, params).fetchone()
        return row

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._db.execute(sql, params).fetchall()

    # accounts and authorizations

    async def get_account(self, account_id: str) -> Account | None:
        row = self._one("SELECT * FROM accounts WHERE account_id = ?", (account_id,))
        return None if row is None else Account(row["account_id"], row["holder_name"], AccountType(row["account_type"]))

    async def insert_account(self, account: Account) -> None:
        try:
            self._db.execute(
                "INSERT INTO accounts VALUES (?, ?, ?)",
                (account.account_id, account.holder_name, account.account_type.value),
            )
        except sqlite3.IntegrityError as exc:
            raise StoreConflict(f"account {account.account_id!r} exists") from exc

    async def get_authorization(self, authorization_id: str) -> Authorization | None:
        row = self._one(
            "SELECT body FROM authorization_versions WHERE authorization_id = ? ORDER BY seq DESC LIMIT 1",
            (authorization_id,),
        )
        return None if row is None else codec.authorization_from_json(row["body"])

    async def insert_authorization(self, authorization: Authorization) -> None:
        try:
            self._db.execute(
                "INSERT INTO authorizations VALUES (?, ?)",
                (authorization.authorization_id, codec.authorization_to_json(authorization)),
            )
        except sqlite3.IntegrityError as exc:
            raise StoreConflict(f"authorization {authorization.authorization_id!r} exists") from exc
        self._insert_version(authorization, "1970-01-01T00:00:00.000000Z")

    def _insert_version(self, authorization: Authorization, recorded_at: str) -> None:
        try:
            self._db.execute(
                "INSERT INTO authorization_versions (authorization_id, version, date, body, recorded_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    authorization.authorization_id,
                    authorization.version,
                    authorization.date.isoformat(),
                    codec.authorization_to_json(authorization),
                    recorded_at,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise StoreConflict(
                f"version {authorization.version!r} of authorization {authorization.authorization_id!r} exists"
            ) from exc

    async def insert_authorization_version(self, authorization: Authorization, now: dt.datetime) -> None:
        self._insert_version(authorization, codec.to_text(now))

    async def authorization_versions(
        self, authorization_id: str, *, recorded_by: dt.datetime | None = None
    ) -> list[Authorization]:
        rows = self._all(
            "SELECT body FROM authorization_versions WHERE authorization_id = ?1"
            " AND (?2 IS NULL OR recorded_at <= ?2) ORDER BY seq",
            (authorization_id, None if recorded_by is None else codec.to_text(recorded_by)),
        )
        return [codec.authorization_from_json(r["body"]) for r in rows]

    async def record_proposed_version(self, transfer_id: str, version: str) -> None:
        self._db.execute("INSERT INTO transfer_authorization_versions VALUES (?, ?)", (transfer_id, version))

    async def proposed_version(self, transfer_id: str) -> str | None:
        row = self._one("SELECT version FROM transfer_authorization_versions WHERE transfer_id = ?", (transfer_id,))
        return None if row is None else str(row[0])

    async def list_authorization_versions(self) -> list[Authorization]:
        rows = self._all("SELECT body FROM authorization_versions ORDER BY seq")
        return [codec.authorization_from_json(r["body"]) for r in rows]

    async def page_authorization_versions(
        self, authorization_id: str, *, after: int, limit: int
    ) -> list[tuple[int, Authorization]]:
        rows = self._all(
            "SELECT seq, body FROM authorization_versions WHERE seq > ?1 AND (?2 = '' OR authorization_id = ?2)"
            " ORDER BY seq LIMIT ?3",
            (after, authorization_id, limit),
        )
        return [(int(r["seq"]), codec.authorization_from_json(r["body"])) for r in rows]

    async def add_authorization_tie(
        self, authorization_id: str, action_id: str, quantity: int, now: dt.datetime
    ) -> None:
        self._db.execute(
            "INSERT INTO authorization_ties VALUES (?, ?, ?, ?)",
            (authorization_id, action_id, quantity, codec.to_text(now)),
        )

    async def first_transfer_quantity_used(self, authorization_id: str) -> int:
        row = self._one(
            "SELECT first_quantity FROM authorization_usage WHERE authorization_id = ?", (authorization_id,)
        )
        ties = self._one(
            "SELECT quantity FROM authorization_tie_totals WHERE authorization_id = ?", (authorization_id,)
        )
        return (0 if row is None else int(row[0])) + (0 if ties is None else int(ties[0]))

    # blocks

    async def insert_block(
        self,
        block: UnitBlock,
        *,
        account_id: str,
        status: BlockStatus,
        transfer_id: str = "",
        parent_id: int | None = None,
    ) -> int:
        cursor = self._db.execute(
            f"INSERT INTO blocks ({codec.BLOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            codec.block_row(NewBlock(block, account_id, status, transfer_id, parent_id)),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    async def insert_blocks(self, blocks: Sequence[NewBlock]) -> None:
        self._db.executemany(
            f"INSERT INTO blocks ({codec.BLOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [codec.block_row(new) for new in blocks],
        )

    async def get_block(self, block_id: int) -> StoredBlock | None:
        row = self._one("SELECT * FROM blocks WHERE block_id = ?", (block_id,))
        return None if row is None else _stored_block(row)

    async def set_block_status(self, block_id: int, status: BlockStatus, *, transfer_id: str | None = None) -> None:
        if transfer_id is None:
            self._db.execute("UPDATE blocks SET status = ? WHERE block_id = ?", (status.value, block_id))
        else:
            self._db.execute(
                "UPDATE blocks SET status = ?, transfer_id = ? WHERE block_id = ?",
                (status.value, transfer_id, block_id),
            )

    async def set_blocks_status(self, block_ids: Sequence[int], status: BlockStatus) -> None:
        # One statement: an UPDATE per block costs twice as much in statement work as in the rows it writes.
        self._db.execute(
            "UPDATE blocks SET status = ? WHERE block_id IN (SELECT value FROM json_each(?))",
            (status.value, json.dumps([int(i) for i in block_ids])),
        )

    async def guarded_blocks(
        self, space: SerialSpace, start: int, end: int, *, limit: int | None = None
    ) -> list[StoredBlock]:
        # Guarded blocks never overlap each other, so those sharing a serial with [start, end] are the ones
        # starting inside it plus at most one starting before it: two seeks in the partial index, whatever
        # the length of the block history.
        key = (space.unit_kind, space.issuing_registry, space.issuance)
        where = f"unit_kind = ? AND issuing_registry = ? AND issuance = ? AND status IN ({codec.GUARDED_LITERALS})"
        before = self._one(
            f"SELECT * FROM blocks WHERE {where} AND serial_start < ? ORDER BY serial_start DESC LIMIT 1",
            (*key, start),
        )
        inside = self._all(
            f"SELECT * FROM blocks WHERE {where} AND serial_start >= ? AND serial_start <= ? ORDER BY serial_start"
            " LIMIT ?",
            (*key, start, end, -1 if limit is None else limit),
        )
        found = [_stored_block(r) for r in inside]
        if before is not None and before["serial_end"] >= start:
            found.insert(0, _stored_block(before))
        return found

    async def guarded_blocks_each(
        self, space: SerialSpace, wanted: Sequence[tuple[int, int]], *, limit: int | None = None
    ) -> list[list[StoredBlock]]:
        # `guarded_blocks`' two seeks per range, in one statement; the limit applies to each range's blocks.
        if len(wanted) <= 1:
            return [await self.guarded_blocks(space, start, end, limit=limit) for start, end in wanted]
        same = f"unit_kind = ?1 AND issuing_registry = ?2 AND issuance = ?3 AND status IN ({codec.GUARDED_LITERALS})"
        rows = self._all(
            f"{_WANTED} SELECT q.i, b.* FROM q JOIN blocks b ON b.block_id = (SELECT block_id FROM blocks"
            f" WHERE {same} AND serial_start < q.lo ORDER BY serial_start DESC LIMIT 1) AND b.serial_end >= q.lo"
            " UNION ALL SELECT q.i, b.* FROM q JOIN blocks b ON b.block_id IN (SELECT block_id FROM blocks"
            f" WHERE {same} AND serial_start >= q.lo AND serial_start <= q.hi ORDER BY serial_start LIMIT ?5)",
            (
                space.unit_kind,
                space.issuing_registry,
                space.issuance,
                _wanted_json(wanted),
                -1 if limit is None else limit,
            ),
        )
        found: list[list[StoredBlock]] = [[] for _ in wanted]
        for r in rows:
            found[r[0]].append(_stored_block(r))
        for each in found:
            each.sort(key=lambda stored: stored.block.start)
        return found

    async def blocks_of_transfer(self, transfer_id: str, status: BlockStatus) -> list[StoredBlock]:
        rows = self._all(
            "SELECT * FROM blocks WHERE transfer_id = ? AND status = ? ORDER BY block_id", (transfer_id, status.value)
        )
        return [_stored_block(r) for r in rows]

    async def ranges_of_transfers(
        self, transfer_ids: Collection[str], statuses: Collection[BlockStatus]
    ) -> dict[str, list[SerialRange]]:
        found: dict[str, list[SerialRange]] = {}
        wanted = json.dumps([s.value for s in statuses])
        for chunk in codec.id_chunks(transfer_ids):
            rows = self._all(
                "SELECT transfer_id, unit_kind, issuing_registry, issuance, serial_start, serial_end FROM blocks"
                " WHERE transfer_id IN (SELECT value FROM json_each(?1))"
                " AND status IN (SELECT value FROM json_each(?2))",
                (json.dumps(chunk), wanted),
            )
            for r in rows:
                found.setdefault(r["transfer_id"], []).append(codec.serial_range(r))
        return found

    async def set_transfer_blocks_status(self, transfer_id: str, old: BlockStatus, new: BlockStatus) -> int:
        cursor = self._db.execute(
            "UPDATE blocks SET status = ? WHERE transfer_id = ? AND status = ?", (new.value, transfer_id, old.value)
        )
        return cursor.rowcount

    async def move_transfer_blocks(self, transfer_id: str, old: BlockStatus, new: BlockStatus) -> list[StoredBlock]:
        rows = self._all(
            "UPDATE blocks SET status = ? WHERE transfer_id = ? AND status = ? RETURNING *",
            (new.value, transfer_id, old.value),
        )
        return sorted((_stored_block(r) for r in rows), key=lambda stored: stored.block_id)

    async def list_blocks(
        self,
        account_id: str = "",
        statuses: Sequence[BlockStatus] = CURRENT_STATUSES,
        *,
        after: BlockPosition | None = None,
        limit: int | None = None,
    ) -> list[StoredBlock]:
        values = [s.value for s in statuses]
        sql = f"SELECT * FROM blocks WHERE status IN ({_placeholders(values)})"
        sql += codec.holdings_condition(account_id, statuses)
        params: list[Any] = list(values)
        if account_id:
            sql += " AND account_id = ?"
            params.append(account_id)
        if after is not None:
            sql += " AND (unit_kind, issuing_registry, issuance, serial_start, block_id) > (?, ?, ?, ?, ?)"
            params.extend(after)
        sql += " ORDER BY unit_kind, issuing_registry, issuance, serial_start, block_id LIMIT ?"
        rows = self._all(sql, [*params, -1 if limit is None else limit])
        return [_stored_block(r) for r in rows]

    # provenance

    def _ranges(self, table: str, space: SerialSpace, start: int, end: int) -> list[tuple[int, int]]:
        # Each table holds disjoint ranges per space: the same two seeks as for guarded blocks.
        key = (space.unit_kind, space.issuing_registry, space.issuance)
        where = "unit_kind = ? AND issuing_registry = ? AND issuance = ?"
        before = self._one(
            f"SELECT serial_start, serial_end FROM {table} WHERE {where} AND serial_start < ?"
            " ORDER BY serial_start DESC LIMIT 1",
            (*key, start),
        )
        inside = self._all(
            f"SELECT serial_start, serial_end FROM {table} WHERE {where} AND serial_start >= ? AND serial_start <= ?"
            " ORDER BY serial_start",
            (*key, start, end),
        )
        found = [(int(r[0]), int(r[1])) for r in inside]
        if before is not None and before[1] >= start:
            found.insert(0, (int(before[0]), int(before[1])))
        return found

    def _ranges_each(self, table: str, space: SerialSpace, wanted: Sequence[tuple[int, int]]) -> list[list[Range]]:
        # The same two seeks per range as `_ranges`, in one statement: the ranges go in as a JSON array.
        if len(wanted) <= 1:
            return [self._ranges(table, space, start, end) for start, end in wanted]
        rows = self._all(
            f"{_WANTED} SELECT q.i, t.serial_start, t.serial_end FROM q JOIN {table} t"
            " ON t.unit_kind = ?1 AND t.issuing_registry = ?2 AND t.issuance = ?3 AND t.serial_start = ("
            f"SELECT MAX(serial_start) FROM {table} WHERE unit_kind = ?1 AND issuing_registry = ?2"
            " AND issuance = ?3 AND serial_start < q.lo) AND t.serial_end >= q.lo"
            f" UNION ALL SELECT q.i, t.serial_start, t.serial_end FROM q JOIN {table} t"
            " ON t.unit_kind = ?1 AND t.issuing_registry = ?2 AND t.issuance = ?3"
            " AND t.serial_start >= q.lo AND t.serial_start <= q.hi",
            (space.unit_kind, space.issuing_registry, space.issuance, _wanted_json(wanted)),
        )
        found: list[list[Range]] = [[] for _ in wanted]
        for r in rows:
            found[r[0]].append((int(r[1]), int(r[2])))
        return [sorted(f) for f in found]

    def _touching(self, table: str, space: SerialSpace, wanted: Sequence[tuple[int, int]]) -> list[Range]:
        """The distinct ranges of ``table`` that overlap or touch a range of ``wanted``, in serial order."""
        near = [(max(start - 1, 0), end + 1) for start, end in wanted]
        return sorted({r for each in self._ranges_each(table, space, near) for r in each})

    def _replace_ranges(self, table: str, space: SerialSpace, present: list[Range], keep: list[Range]) -> None:
        """Replace the ranges ``present`` of ``table`` (just read) by ``keep``."""
        key = (space.unit_kind, space.issuing_registry, space.issuance)
        self._db.executemany(
            f"DELETE FROM {table} WHERE unit_kind = ? AND issuing_registry = ? AND issuance = ? AND serial_start = ?",
            [(*key, lo) for lo, _ in present],
        )
        self._db.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?)", [(*key, lo, hi) for lo, hi in keep])

    async def known_ranges(self, space: SerialSpace, start: int, end: int) -> list[tuple[int, int]]:
        return self._ranges("known_ranges", space, start, end)

    async def known_ranges_each(
        self, space: SerialSpace, wanted: Sequence[tuple[int, int]]
    ) -> list[list[tuple[int, int]]]:
        return self._ranges_each("known_ranges", space, wanted)

    async def add_known(self, space: SerialSpace, added: Sequence[tuple[int, int]]) -> None:
        # Merged with every range they overlap or touch: units may arrive again after they left.
        present = self._touching("known_ranges", space, added)
        self._replace_ranges("known_ranges", space, present, ranges.normalize([*present, *added]))

    async def abroad_ranges(self, space: SerialSpace, start: int, end: int) -> list[tuple[int, int]]:
        return self._ranges("abroad_ranges", space, start, end)

    async def abroad_ranges_each(
        self, space: SerialSpace, wanted: Sequence[tuple[int, int]]
    ) -> list[list[tuple[int, int]]]:
        return self._ranges_each("abroad_ranges", space, wanted)

    async def add_abroad(self, space: SerialSpace, added: Sequence[tuple[int, int]]) -> None:
        # Neighbours that touch the ranges are merged with them, so the table stays minimal.
        present = self._touching("abroad_ranges", space, added)
        check_abroad_added(present, added)
        self._replace_ranges("abroad_ranges", space, present, ranges.normalize([*present, *added]))

    async def remove_abroad(self, space: SerialSpace, removed: Sequence[tuple[int, int]]) -> None:
        present = sorted({r for each in self._ranges_each("abroad_ranges", space, removed) for r in each})
        check_abroad_removed(present, removed)
        self._replace_ranges("abroad_ranges", space, present, ranges.difference(present, removed))

    # transfers and the ledger

    async def insert_transfer(self, transfer: Transfer) -> None:
        first_quantity = first_transfer_quantity(transfer.terms)
        try:
            self._db.execute(
                "INSERT INTO transfers (transfer_id, role, state, terms, authorization_id, quantity, rejections,"
                " created_at, updated_at, first_quantity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    transfer.transfer_id,
                    transfer.role.value,
                    int(transfer.state),
                    "",
                    transfer.terms.authorization_id,
                    transfer.terms.quantity,
                    codec.rejections_to_json(transfer.rejections),
                    codec.to_text(transfer.created_at),
                    codec.to_text(transfer.updated_at),
                    first_quantity,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise StoreConflict(f"transfer {transfer.transfer_id!r} exists") from exc
        self._db.execute(
            "INSERT INTO transfer_terms VALUES (?, ?)", (transfer.transfer_id, codec.terms_to_json(transfer.terms))
        )

    async def update_transfer(self, transfer: Transfer) -> None:
        self._db.execute(
            "UPDATE transfers SET state = ?, rejections = ?, updated_at = ? WHERE transfer_id = ?",
            (
                int(transfer.state),
                codec.rejections_to_json(transfer.rejections),
                codec.to_text(transfer.updated_at),
                transfer.transfer_id,
            ),
        )

    async def get_transfer(self, transfer_id: str) -> Transfer | None:
        row = self._one(f"{codec.TRANSFERS} WHERE t.transfer_id = ?", (transfer_id,))
        return None if row is None else codec.transfer_from_row(row, row["kept_terms"])

    async def transfer_heads(self, transfer_ids: Collection[str]) -> dict[str, TransferHead]:
        found: dict[str, TransferHead] = {}
        for chunk in codec.id_chunks(transfer_ids):
            rows = self._all(
                f"{codec.TRANSFERS} WHERE t.transfer_id IN (SELECT value FROM json_each(?))", (json.dumps(chunk),)
            )
            found.update((r["transfer_id"], codec.transfer_head(r, r["kept_terms"])) for r in rows)
        return found

    async def transfer_ranges(self, transfer_ids: Collection[str]) -> dict[str, list[SerialRange]]:
        found: dict[str, list[SerialRange]] = {}
        for chunk in codec.id_chunks(transfer_ids):
            rows = self._all(
                f"{codec.TRANSFERS} WHERE t.transfer_id IN (SELECT value FROM json_each(?))", (json.dumps(chunk),)
            )
            found.update((r["transfer_id"], codec.terms_ranges(r, r["kept_terms"])) for r in rows)
        return found

    async def list_transfers(self, *, after: tuple[str, str] | None = None, limit: int | None = None) -> list[Transfer]:
        where = "" if after is None else " WHERE (t.created_at, t.transfer_id) > (?, ?)"
        rows = self._all(
            f"{codec.TRANSFERS}{where} ORDER BY t.created_at, t.transfer_id LIMIT ?",
            (*(after or ()), -1 if limit is None else limit),
        )
        return [codec.transfer_from_row(r, r["kept_terms"]) for r in rows]

    async def open_transfers(self) -> list[Transfer]:
        rows = self._all(
            f"{codec.TRANSFERS} WHERE t.state IN ({codec.OPEN_STATE_LITERALS}) ORDER BY t.created_at, t.transfer_id"
        )
        return [codec.transfer_from_row(r, r["kept_terms"]) for r in rows]

    async def status_queried_at(self, transfer_id: str) -> dt.datetime | None:
        row = self._one("SELECT status_queried_at FROM transfers WHERE transfer_id = ?", (transfer_id,))
        return codec.from_text(row[0]) if row is not None and row[0] else None

    async def set_status_queried_at(self, transfer_id: str, now: dt.datetime) -> None:
        self._db.execute(
            "UPDATE transfers SET status_queried_at = ? WHERE transfer_id = ?", (codec.to_text(now), transfer_id)
        )

    async def append_ledger(self, entries: Sequence[LedgerEntry]) -> list[int]:
        if not entries:
            return []
        # One statement for all the entries (a transfer may record thousands), their IDs numbered on from the
        # largest: what SQLite would give each row, known before the rows are written.
        row = self._one("SELECT COALESCE(MAX(entry_id), 0) FROM ledger")
        first = (int(row[0]) if row else 0) + 1
        ids = list(range(first, first + len(entries)))
        columns, rows = codec.ledger_rows(ids, entries)
        insert = f"INSERT INTO ledger ({', '.join(columns)}) VALUES ({_placeholders(columns)})"
        if len(entries) < APPENDED_TOGETHER_FROM:
            self._db.executemany(insert, rows)
        else:
            # The insert triggers leave these entries to the statements after (migration 17). In a savepoint of
            # its own: rows a failure leaves behind would have no change, mark or total.
            async with self.savepoint():
                self._db.execute("INSERT INTO ledger_appending VALUES (?, ?)", (ids[0], ids[-1]))
                self._db.executemany(insert, rows)
                for statement in LEDGER_APPENDED:
                    self._db.execute(statement, (ids[0], ids[-1]))
                self._db.executemany(LEDGER_ACTION_SPAN, codec.ledger_action_spans(entries))
                self._db.execute("DELETE FROM ledger_appending")
        return ids

    async def list_ledger(self, *, after: int = 0, limit: int | None = None) -> list[LedgerEntry]:
        rows = self._all(
            "SELECT * FROM ledger WHERE entry_id > ? ORDER BY entry_id LIMIT ?", (after, -1 if limit is None else limit)
        )
        return [codec.ledger_from_row(r["entry_id"], dict(r)) for r in rows]

    async def ledger_unresolved(self, party: str) -> list[LedgerEntry]:
        rows = self._all(
            f"SELECT * FROM ledger WHERE {codec.UNRESOLVED_CONDITION} AND first_transferring_party = ?"
            " ORDER BY entry_id",
            (party,),
        )
        return [codec.ledger_from_row(r["entry_id"], dict(r)) for r in rows]

    async def ledger_of_units(
        self, party: str, space: SerialSpace, start: int, end: int, *, since: int = 0
    ) -> list[LedgerEntry]:
        key = (party, space.unit_kind, space.issuing_registry, space.issuance)
        spans = [(str(r[0]), int(r[1])) for r in self._all(codec.LEDGER_ACTION_SPANS, key)]
        if not spans:
            return []
        rows = self._all(*codec.ledger_of_units_query(party, space, start, end, since, spans))
        return [codec.ledger_from_row(r["entry_id"], dict(r)) for r in rows]

    async def acquisitions_of_units_each(
        self, party: str, space: SerialSpace, wanted: Sequence[tuple[int, int]]
    ) -> list[list[LedgerEntry]]:
        found: list[list[LedgerEntry]] = [[] for _ in wanted]
        key = (party, space.unit_kind, space.issuing_registry, space.issuance)
        spans = {str(r[0]): int(r[1]) for r in self._all(codec.LEDGER_ACTION_SPANS, key)}
        longest = spans.get(ActionType.ACQUISITION.value)
        if not wanted or longest is None:
            return found
        # As in `ledger_of_units`: no Acquisition entry is longer than the longest, so each range's part of the
        # index is searched from that far back only.
        rows = self._all(
            f"{_WANTED} SELECT q.i AS wanted, l.* FROM q JOIN ledger l ON l.first_transferring_party = ?5"
            " AND l.action_type = ?6 AND l.unit_kind = ?1 AND l.issuing_registry = ?2 AND l.issuance = ?3"
            " AND l.serial_start >= q.lo - ?7 AND l.serial_start <= q.hi AND l.serial_end >= q.lo"
            " ORDER BY l.entry_id",
            (
                space.unit_kind,
                space.issuing_registry,
                space.issuance,
                _wanted_json(wanted),
                party,
                ActionType.ACQUISITION.value,
                longest,
            ),
        )
        for r in rows:
            found[r["wanted"]].append(codec.ledger_from_row(r["entry_id"], dict(r)))
        return found

    async def recorded_approaches(self, authorization_id: str) -> list[str]:
        rows = self._all(codec.RECORDED_APPROACHES, (authorization_id,))
        return [str(r[0]) for r in rows]

    async def ledger_parties(self, space: SerialSpace) -> list[str]:
        rows = self._all(codec.LEDGER_PARTIES, (space.unit_kind, space.issuing_registry, space.issuance))
        return [str(r[0]) for r in rows]

    async def first_transfers_overlapping(
        self, party: str, space: SerialSpace, start: int, end: int
    ) -> list[FirstTransferRange]:
        # Disjoint ranges: the one starting last before ``start`` and those starting inside, two index seeks.
        key = (party, ActionType.FIRST_TRANSFER.value, space.unit_kind, space.issuing_registry, space.issuance)
        where = (
            "first_transferring_party = ? AND action_type = ? AND unit_kind = ? AND issuing_registry = ?"
            " AND issuance = ?"
        )
        columns = "entry_id, serial_start, serial_end"
        before = self._one(
            f"SELECT {columns} FROM ledger WHERE {where} AND serial_start < ? ORDER BY serial_start DESC LIMIT 1",
            (*key, start),
        )
        inside = self._all(
            f"SELECT {columns} FROM ledger WHERE {where} AND serial_start >= ? AND serial_start <= ?",
            (*key, start, end),
        )
        rows = [*([before] if before is not None and before[2] >= start else []), *inside]
        return [(int(r[0]), space, int(r[1]), int(r[2])) for r in rows]

    async def ledger_of_action(self, action_id: str) -> list[LedgerEntry]:
        rows = self._all("SELECT * FROM ledger WHERE transfer_id = ? ORDER BY entry_id", (action_id,))
        return [codec.ledger_from_row(r["entry_id"], dict(r)) for r in rows]

    async def _ledger_where(self, where: str, params: Sequence[Any], batch: int) -> AsyncIterator[LedgerEntry]:
        after = 0
        while True:
            rows = self._all(
                f"SELECT * FROM ledger WHERE entry_id > ? AND {where} ORDER BY entry_id LIMIT ?",
                (after, *params, batch),
            )
            for r in rows:
                yield codec.ledger_from_row(r["entry_id"], dict(r))
            if len(rows) < batch:
                return
            after = rows[-1]["entry_id"]

    def ledger_until(self, instant: dt.datetime, batch: int = 10_000) -> AsyncIterator[LedgerEntry]:
        return self._ledger_where("action_date <= ?", (codec.to_text(instant),), batch)

    def ledger_between(self, start: dt.datetime, end: dt.datetime, batch: int = 10_000) -> AsyncIterator[LedgerEntry]:
        return self._ledger_where(
            "action_date >= ? AND action_date <= ?", (codec.to_text(start), codec.to_text(end)), batch
        )

    async def ledger_misdated_after(self, instant: dt.datetime) -> tuple[int, str] | None:
        # The digits in range too: "2025-12-32T..." or "2025-13-01T..." sorts after the last instant of the year
        # it names. Within range, a day its month lacks ("2025-11-31") sorts within the year, where the report
        # reads the entry and refuses it.
        row = self._one(
            "SELECT entry_id, action_date FROM ledger WHERE action_date > ? AND NOT (length(action_date) = ?"
            f" AND action_date GLOB '{INSTANT_GLOB}'"
            " AND CAST(substr(action_date, 6, 2) AS INTEGER) BETWEEN 1 AND 12"
            " AND CAST(substr(action_date, 9, 2) AS INTEGER) BETWEEN 1 AND 31"
            " AND CAST(substr(action_date, 12, 2) AS INTEGER) <= 23"
            " AND CAST(substr(action_date, 15, 2) AS INTEGER) <= 59"
            " AND CAST(substr(action_date, 18, 2) AS INTEGER) <= 59) ORDER BY entry_id LIMIT 1",
            (codec.to_text(instant), codec.TEXT_LENGTH),
        )
        return None if row is None else (int(row[0]), str(row[1]))

    async def ledger_totals(self) -> list[LedgerTotal]:
        # Kept as the ledger changes (migration 19): one row per summary group, as two sums that cannot overflow
        # (up to 2^31 entries), joined in Python: the true total may pass 2^63 - 1.
        rows = self._all(
            f"SELECT {LEDGER_TOTAL_COLUMNS}, high, low FROM ledger_totals WHERE entries > 0 ORDER BY group_key"
        )
        return [
            LedgerTotal(
                action_type=ActionType(r["action_type"]),
                action_subtype=r["action_subtype"],
                purpose=Purpose(r["purpose"]),
                vintage=r["vintage"],
                year_of_use=r["year_of_use"],
                action_year=r["action_year"],
                cooperative_approach=r["cooperative_approach"],
                authorization_id=r["authorization_id"],
                first_transferring_party=r["first_transferring_party"],
                partner=r["partner"],
                quantity=(int(r["high"]) << 32) + int(r["low"]),
            )
            for r in rows
        ]

    # reported emissions, locked periods and settings

    async def reported_emissions(self) -> dict[int, int]:
        return {int(r[0]): int(r[1]) for r in self._all("SELECT year, quantity FROM reported_emissions ORDER BY year")}

    async def set_reported_emissions(self, year: int, quantity: int, now: dt.datetime) -> None:
        self._db.execute(
            "INSERT INTO reported_emissions VALUES (?, ?, ?) ON CONFLICT (year) DO UPDATE"
            " SET quantity = excluded.quantity, recorded_at = excluded.recorded_at",
            (year, quantity, codec.to_text(now)),
        )

    async def locked_periods(self) -> list[LockedPeriod]:
        return [
            LockedPeriod(r["first_year"], r["last_year"], codec.from_text(r["locked_at"]), r["reason"])
            for r in self._all("SELECT * FROM locked_periods ORDER BY first_year, last_year")
        ]

    async def insert_locked_period(self, lock: LockedPeriod) -> None:
        try:
            self._db.execute(
                "INSERT INTO locked_periods VALUES (?, ?, ?, ?)",
                (lock.first_year, lock.last_year, codec.to_text(lock.locked_at), lock.reason),
            )
        except sqlite3.IntegrityError as exc:
            raise StoreConflict(f"{lock.first_year}-{lock.last_year} is already locked") from exc

    async def get_setting(self, name: str) -> str | None:
        row = self._one("SELECT value FROM settings WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    async def put_setting(self, name: str, value: str, now: dt.datetime) -> None:
        self._db.execute(
            "INSERT INTO settings VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
            " recorded_at = excluded.recorded_at",
            (name, value, codec.to_text(now)),
        )

    # the partner exchange

    async def _channel(self, direction: str, peer: str) -> ChannelState:
        row = self._one("SELECT * FROM channels WHERE direction = ? AND peer = ?", (direction, peer))
        return ChannelState() if row is None else ChannelState(row["last_sequence"], bytes(row["last_hash"]))

    async def _set_channel(self, direction: str, peer: str, state: ChannelState) -> None:
        self._db.execute(
            "INSERT INTO channels VALUES (?, ?, ?, ?) ON CONFLICT (direction, peer) DO UPDATE"
            " SET last_sequence = excluded.last_sequence, last_hash = excluded.last_hash",
            (direction, peer, state.last_sequence, state.last_hash),
        )

    async def outgoing_channel(self, receiver: str) -> ChannelState:
        return await self._channel("out", receiver)

    async def set_outgoing_channel(self, receiver: str, state: ChannelState) -> None:
        await self._set_channel("out", receiver, state)

    async def incoming_channel(self, sender: str) -> ChannelState:
        return await self._channel("in", sender)

    async def set_incoming_channel(self, sender: str, state: ChannelState) -> None:
        await self._set_channel("in", sender, state)

    async def enqueue(
        self,
        *,
        receiver: str,
        message_id: str,
        kind: OutboxKind,
        transfer_id: str,
        body: bytes,
        now: dt.datetime,
    ) -> int:
        self.enqueued = True
        cursor = self._db.execute(
            "INSERT INTO outbox (receiver, message_id, kind, transfer_id, body, state, next_attempt_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                receiver,
                message_id,
                kind.value,
                transfer_id,
                body,
                OutboxState.PENDING.value,
                codec.to_text(now),
                codec.to_text(now),
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _heads(self) -> list[sqlite3.Row]:
        # A partner's lane is delivered one message at a time: trust documents first (a statement signed by a
        # rotated key needs the partner to know the key), then statements in the order they were queued.
        return self._all(
            "SELECT o.* FROM outbox o JOIN ("
            "  SELECT receiver, MIN(CASE WHEN kind = 'trust' THEN outbox_id - 9223372036854775807 ELSE outbox_id END)"
            "  AS rank FROM outbox WHERE state = 'pending' GROUP BY receiver"
            ") h ON o.receiver = h.receiver"
            " AND (CASE WHEN o.kind = 'trust' THEN o.outbox_id - 9223372036854775807 ELSE o.outbox_id END) = h.rank"
            " WHERE o.state = 'pending'"
        )

    def _lane_leases(self, owner: str) -> dict[str, str]:
        """The latest lease end on each lane's pending messages held by owners other than ``owner``."""
        rows = self._all(
            "SELECT receiver, MAX(lease_until) AS until FROM outbox"
            " WHERE state = 'pending' AND lease_owner NOT IN ('', ?) GROUP BY receiver",
            (owner,),
        )
        return {r["receiver"]: r["until"] for r in rows}

    async def lane_heads(
        self, now: dt.datetime, limit: int, *, only: Collection[str] | None = None
    ) -> list[OutboxMessage]:
        due = codec.to_text(now)
        heads = [_outbox_message(r) for r in codec.of_lanes(self._heads(), only) if r["next_attempt_at"] <= due]
        heads.sort(key=lambda m: (m.next_attempt_at, m.outbox_id))
        return heads[:limit]

    async def next_due_at(
        self, *, skip: Collection[str] = (), only: Collection[str] | None = None
    ) -> dt.datetime | None:
        heads = codec.of_lanes(self._heads(), only)
        leases = self._lane_leases("")
        return min(
            (
                codec.from_text(max(r["next_attempt_at"], r["lease_until"], leases.get(r["receiver"], "")))
                for r in heads
                if r["receiver"] not in skip
            ),
            default=None,
        )

    async def claim_lane_heads(
        self,
        now: dt.datetime,
        limit: int,
        *,
        owner: str,
        until: dt.datetime,
        skip: Collection[str] = (),
        only: Collection[str] | None = None,
    ) -> list[OutboxMessage]:
        due = codec.to_text(now)
        # A lane is leased as a whole: while another replica's lease on any of its pending messages runs (the
        # head it is sending, which a trust push or a retried dead letter may since have overtaken), the lane
        # is its, and nobody else seals the lane's next sequence number or signs with a signer it may lack.
        leased = {receiver for receiver, until in (self._lane_leases(owner)).items() if until > due}.union(skip)
        rows = [
            r
            for r in codec.of_lanes(self._heads(), only)
            if r["next_attempt_at"] <= due and r["receiver"] not in leased
        ]
        rows.sort(key=lambda r: (r["next_attempt_at"], r["outbox_id"]))
        claimed = rows[:limit]
        self._db.executemany(
            "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE outbox_id = ?",
            [(owner, codec.to_text(until), r["outbox_id"]) for r in claimed],
        )
        return [_outbox_message(r) for r in claimed]

    async def claim_followers(
        self, head: OutboxMessage, limit: int, *, now: dt.datetime, owner: str, until: dt.datetime
    ) -> list[OutboxMessage]:
        if limit <= 0 or head.kind is OutboxKind.TRUST:
            return []
        due = codec.to_text(now)
        rows = self._all(
            "SELECT * FROM outbox WHERE receiver = ? AND state = 'pending' AND kind != 'trust' AND outbox_id > ?"
            " ORDER BY outbox_id LIMIT ?",
            (head.receiver, head.outbox_id, limit),
        )
        run = []
        for row in rows:
            if row["next_attempt_at"] > due or (row["lease_owner"] not in ("", owner) and row["lease_until"] > due):
                break
            run.append(row)
        self._db.executemany(
            "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE outbox_id = ?",
            [(owner, codec.to_text(until), r["outbox_id"]) for r in run],
        )
        return [_outbox_message(r) for r in run]

    async def holds_lease(self, outbox_id: int, owner: str) -> bool:
        return self._one("SELECT 1 FROM outbox WHERE outbox_id = ? AND lease_owner = ?", (outbox_id, owner)) is not None

    async def trust_pending(self, receiver: str) -> bool:
        found = self._one(
            "SELECT 1 FROM outbox WHERE receiver = ? AND state = 'pending' AND kind = 'trust' LIMIT 1", (receiver,)
        )
        return found is not None

    async def release_lease(self, outbox_id: int, owner: str) -> None:
        self._db.execute(
            "UPDATE outbox SET lease_owner = '', lease_until = '' WHERE outbox_id = ? AND lease_owner = ?",
            (outbox_id, owner),
        )

    async def release_leases_of(self, owner: str) -> int:
        cursor = self._db.execute(
            "UPDATE outbox SET lease_owner = '', lease_until = '' WHERE state = 'pending' AND lease_owner = ?", (owner,)
        )
        return cursor.rowcount

    async def get_outbox(self, message_id: str) -> OutboxMessage | None:
        row = self._one("SELECT * FROM outbox WHERE message_id = ?", (message_id,))
        return None if row is None else _outbox_message(row)

    async def list_outbox(self, receiver: str = "", states: Sequence[OutboxState] = ()) -> list[OutboxMessage]:
        sql = "SELECT * FROM outbox WHERE 1 = 1"
        params: list[Any] = []
        if receiver:
            sql += " AND receiver = ?"
            params.append(receiver)
        if states:
            sql += f" AND state IN ({_placeholders(states)})"
            params.extend(s.value for s in states)
        return [_outbox_message(r) for r in self._all(sql + " ORDER BY outbox_id", params)]

    async def outbox_has_for_transfer(
        self, transfer_id: str, kinds: Sequence[OutboxKind], states: Sequence[OutboxState] = (OutboxState.PENDING,)
    ) -> bool:
        row = self._one(
            f"SELECT 1 FROM outbox WHERE transfer_id = ? AND state IN ({_placeholders(states)})"
            f" AND kind IN ({_placeholders(kinds)}) LIMIT 1",
            (transfer_id, *(s.value for s in states), *(k.value for k in kinds)),
        )
        return row is not None

    async def mark_attempt(self, outbox_id: int, sequence: int, sealed: bytes) -> None:
        self._db.execute(
            "UPDATE outbox SET sequence = ?, sealed = ? WHERE outbox_id = ?", (sequence, sealed, outbox_id)
        )

    async def mark_delivered(
        self, outbox_id: int, payload_digest: bytes, now: dt.datetime, *, sequence: int | None = None
    ) -> None:
        self._db.execute(
            "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, last_code = 0, payload_digest = ?,"
            " settled_at = ?, sequence = COALESCE(?, sequence) WHERE outbox_id = ?",
            (payload_digest, codec.to_text(now), sequence, outbox_id),
        )

    async def settle(self, outbox_id: int, state: OutboxState, *, code: int, error: str, now: dt.datetime) -> None:
        self._db.execute(
            "UPDATE outbox SET state = ?, attempts = attempts + (CASE WHEN ? = 'dead' THEN 1 ELSE 0 END),"
            " last_code = ?, last_error = ?, settled_at = ? WHERE outbox_id = ?",
            (state.value, state.value, code, error[:2000], codec.to_text(now), outbox_id),
        )

    async def reschedule(self, outbox_id: int, *, code: int, error: str, next_attempt_at: dt.datetime) -> None:
        self._db.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_code = ?, last_error = ?, next_attempt_at = ?"
            " WHERE outbox_id = ?",
            (code, error[:2000], codec.to_text(next_attempt_at), outbox_id),
        )

    async def retry_outbox(self, outbox_id: int, now: dt.datetime) -> None:
        self._db.execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, sequence = 0, sealed = X'', next_attempt_at = ?,"
            " lease_owner = '', lease_until = '',"
            " settled_at = NULL WHERE outbox_id = ?",
            (codec.to_text(now), outbox_id),
        )

    async def requeue_from(self, receiver: str, sequence: int, now: dt.datetime) -> int:
        cursor = self._db.execute(
            "UPDATE outbox SET state = 'pending', next_attempt_at = ?, settled_at = NULL"
            " WHERE receiver = ? AND state = 'delivered' AND kind != 'trust' AND sequence >= ?",
            (codec.to_text(now), receiver, sequence),
        )
        return cursor.rowcount

    async def highest_sequence_sent(self, receiver: str) -> int:
        row = self._one(
            "SELECT COALESCE(MAX(sequence), 0) FROM outbox WHERE receiver = ? AND kind != 'trust'", (receiver,)
        )
        assert row is not None
        return int(row[0])

    async def delivered_digest(self, receiver: str, sequence: int) -> bytes | None:
        row = self._one(
            "SELECT payload_digest, kind, body FROM outbox WHERE receiver = ? AND sequence = ? AND state = 'delivered'"
            " AND kind != 'trust' ORDER BY outbox_id DESC LIMIT 1",
            (receiver, sequence),
        )
        if row is None:
            return None
        return bytes(row["payload_digest"]) or None

    # the message log

    async def append_log(
        self,
        *,
        direction: str,
        peer: str,
        message_id: str,
        kind: LogKind,
        form: str,
        envelope: bytes,
        now: dt.datetime,
        transfer_id: str = "",
    ) -> int:
        cursor = self._db.execute(
            "INSERT INTO message_log (direction, peer, message_id, kind, form, envelope, recorded_at, transfer_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (direction, peer, message_id, kind.value, form, envelope, codec.to_text(now), transfer_id),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    async def list_log(self) -> list[LogEntry]:
        return [_log_entry(r) for r in self._all("SELECT * FROM message_log ORDER BY log_index")]

    async def logged(self, peer: str, message_id: str) -> list[LogEntry]:
        return [
            _log_entry(r)
            for r in self._all(
                "SELECT * FROM message_log WHERE peer = ? AND message_id = ? ORDER BY log_index", (peer, message_id)
            )
        ]

    async def record_message(self, message: StoredMessage) -> None:
        try:
            self._db.execute(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)",
                (
                    message.direction,
                    message.peer,
                    message.message_id,
                    message.envelope,
                    message.receipt,
                    codec.to_text(message.recorded_at),
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise StoreConflict(f"message {message.message_id!r} from {message.peer!r} is already recorded") from exc

    async def get_message(self, direction: str, peer: str, message_id: str) -> StoredMessage | None:
        row = self._one(
            "SELECT * FROM messages WHERE direction = ? AND peer = ? AND message_id = ?", (direction, peer, message_id)
        )
        return None if row is None else _message(row)

    async def list_messages(self) -> list[StoredMessage]:
        return [_message(r) for r in self._all("SELECT * FROM messages ORDER BY recorded_at, message_id")]

    # trust documents and held statements

    async def put_trust_document(self, party: str, version: int, envelope: bytes, now: dt.datetime) -> None:
        self._db.execute(
            "INSERT INTO trust_documents VALUES (?, ?, ?, ?) ON CONFLICT (party, version) DO NOTHING",
            (party, version, envelope, codec.to_text(now)),
        )

    async def latest_trust_document(self, party: str) -> tuple[int, bytes] | None:
        row = self._one(
            "SELECT version, envelope FROM trust_documents WHERE party = ? ORDER BY version DESC LIMIT 1", (party,)
        )
        return None if row is None else (row["version"], bytes(row["envelope"]))

    async def trust_document(self, party: str, version: int) -> bytes | None:
        row = self._one("SELECT envelope FROM trust_documents WHERE party = ? AND version = ?", (party, version))
        return None if row is None else bytes(row["envelope"])

    async def trust_documents(self, party: str) -> list[tuple[int, bytes]]:
        rows = self._all("SELECT version, envelope FROM trust_documents WHERE party = ? ORDER BY version", (party,))
        return [(int(r["version"]), bytes(r["envelope"])) for r in rows]

    async def settle_superseded_trust(self, receiver: str, outbox_id: int, now: dt.datetime) -> int:
        cursor = self._db.execute(
            "UPDATE outbox SET state = 'delivered', settled_at = ?, last_error = 'superseded by a later push'"
            " WHERE receiver = ? AND kind = 'trust' AND state = 'pending' AND outbox_id < ?",
            (codec.to_text(now), receiver, outbox_id),
        )
        return cursor.rowcount

    async def hold_statement(self, sender: str, sequence: int, envelope: bytes, now: dt.datetime) -> None:
        self._db.execute(
            "INSERT INTO held_statements VALUES (?, ?, ?, ?) ON CONFLICT (sender, sequence) DO NOTHING",
            (sender, sequence, envelope, codec.to_text(now)),
        )

    async def held_statement(self, sender: str, sequence: int) -> bytes | None:
        row = self._one("SELECT envelope FROM held_statements WHERE sender = ? AND sequence = ?", (sender, sequence))
        return None if row is None else bytes(row["envelope"])

    async def release_held(self, sender: str, up_to: int) -> None:
        self._db.execute("DELETE FROM held_statements WHERE sender = ? AND sequence <= ?", (sender, up_to))

    async def count_held(self) -> int:
        row = self._one("SELECT COUNT(*) FROM held_statements")
        assert row is not None
        return int(row[0])

    # reconciliation

    async def fold_reconciliation(self, party: str, limit: int = 10_000) -> int:
        ids = [r[0] for r in self._all("SELECT entry_id FROM reconciliation_dirty ORDER BY entry_id LIMIT ?", (limit,))]
        deltas: dict[tuple[str, str, int, int], list[int]] = {}

        def add(partner: str, group: str, bucket: int, quantity: int, digest: bytes, sign: int) -> None:
            values = [sign, sign * (quantity >> 32), sign * (quantity & 0xFFFFFFFF), *(sign * x for x in limbs(digest))]
            for level in range(DEPTH_LEVELS):
                key = (partner, group, level, node_prefix(bucket, level))
                total = deltas.setdefault(key, [0] * (3 + LIMBS))
                for i, value in enumerate(values):
                    total[i] += value

        for chunk in _chunks(ids, 500):
            marks = _placeholders(chunk)
            for row in self._all(f"SELECT * FROM reconciliation_leaves WHERE entry_id IN ({marks})", chunk):
                add(row["partner"], row["group_key"], row["bucket"], row["quantity"], bytes(row["digest"]), -1)
            self._db.execute(f"DELETE FROM reconciliation_leaves WHERE entry_id IN ({marks})", chunk)
            leaves = []
            rows = self._all(f"SELECT * FROM ledger WHERE entry_id IN ({marks})", chunk)
            entries = [codec.ledger_from_row(row["entry_id"], dict(row)) for row in rows]
            for entry, partner, block in await reconciled_blocks(self, party, entries):
                body = block.encode()
                group, bucket, digest = block.group.text(), block.bucket, digest_of(body)
                leaves.append((entry.entry_id, partner, group, bucket, body, digest, block.quantity))
                add(partner, group, bucket, block.quantity, digest, 1)
            self._db.executemany("INSERT INTO reconciliation_leaves VALUES (?, ?, ?, ?, ?, ?, ?)", leaves)
            self._db.execute(f"DELETE FROM reconciliation_dirty WHERE entry_id IN ({marks})", chunk)
        limb_columns = [f"h{i}" for i in range(LIMBS)]
        columns = ["blocks", "quantity_high", "quantity_low", *limb_columns]
        self._db.executemany(
            f"INSERT INTO reconciliation_nodes (partner, group_key, level, prefix, {', '.join(columns)})"
            f" VALUES ({_placeholders([0] * (4 + len(columns)))}) ON CONFLICT DO UPDATE SET "
            + ", ".join(f"{c} = {c} + excluded.{c}" for c in columns),
            [(*key, *values) for key, values in deltas.items() if any(values)],
        )
        return len(ids)

    async def reconciliation_pending(self) -> int:
        row = self._one("SELECT COUNT(*) FROM reconciliation_dirty")
        return int(row[0]) if row else 0

    async def reconciliation_totals(self, partner: str) -> dict[GroupKey, Totals]:
        rows = self._all(
            "SELECT * FROM reconciliation_nodes WHERE partner = ? AND level = 0 AND blocks != 0", (partner,)
        )
        return {GroupKey.from_text(r["group_key"]): _totals(r) for r in rows}

    async def reconciliation_nodes(self, partner: str, refs: Sequence[NodeRef]) -> dict[NodeRef, Totals]:
        found = {}
        for ref in refs:
            row = self._one(
                "SELECT * FROM reconciliation_nodes WHERE partner = ? AND group_key = ? AND level = ? AND prefix = ?",
                (partner, ref.group.text(), ref.level, ref.prefix),
            )
            if row is not None and row["blocks"] != 0:
                found[ref] = _totals(row)
        return found

    async def reconciliation_children(self, partner: str, ref: NodeRef) -> dict[int, Totals]:
        first = ref.prefix << FANOUT
        rows = self._all(
            "SELECT * FROM reconciliation_nodes WHERE partner = ? AND group_key = ? AND level = ?"
            " AND prefix BETWEEN ? AND ? AND blocks != 0",
            (partner, ref.group.text(), ref.level + 1, first, first + (1 << FANOUT) - 1),
        )
        return {r["prefix"]: _totals(r) for r in rows}

    async def reconciliation_blocks(self, partner: str, ref: NodeRef) -> list[ReconciledBlock]:
        low, high = bucket_range(ref.level, ref.prefix)
        rows = self._all(
            "SELECT body FROM reconciliation_leaves WHERE partner = ? AND group_key = ? AND bucket BETWEEN ? AND ?",
            (partner, ref.group.text(), low, high),
        )
        return sorted(ReconciledBlock.decode(bytes(r[0])) for r in rows)

    async def insert_reconciliation(self, run: ReconciliationRun) -> None:
        row = _run_row(run)
        self._db.execute(
            f"INSERT INTO reconciliation_runs ({', '.join(row)}) VALUES ({_placeholders(list(row))})",
            tuple(row.values()),
        )

    async def update_reconciliation(self, run: ReconciliationRun) -> None:
        row = _run_row(run)
        del row["run_id"]
        self._db.execute(
            f"UPDATE reconciliation_runs SET {', '.join(f'{c} = ?' for c in row)} WHERE run_id = ?",
            (*row.values(), run.run_id),
        )

    async def get_reconciliation(self, run_id: str) -> ReconciliationRun | None:
        row = self._one("SELECT * FROM reconciliation_runs WHERE run_id = ?", (run_id,))
        return None if row is None else _run(row)

    async def list_reconciliations(
        self, partner: str = "", limit: int = 100, *, role: RunRole | None = None
    ) -> list[ReconciliationRun]:
        # Two statements, each read through its index in order up to the limit: one "partner = ? or any" reads
        # every run ever made and sorts them.
        in_role = "" if role is None else " AND role = ?"
        roles = () if role is None else (role.value,)
        if partner:
            rows = self._all(
                f"SELECT * FROM reconciliation_runs WHERE partner = ?{in_role}"
                " ORDER BY started_at DESC, run_id LIMIT ?",
                (partner, *roles, limit),
            )
        else:
            rows = self._all(
                f"SELECT * FROM reconciliation_runs WHERE TRUE{in_role} ORDER BY started_at DESC, run_id LIMIT ?",
                (*roles, limit),
            )
        return [_run(r) for r in rows]

    async def running_reconciliations(
        self, role: RunRole, last_step_before: dt.datetime, limit: int
    ) -> list[ReconciliationRun]:
        rows = self._all(
            "SELECT * FROM reconciliation_runs WHERE status = ? AND role = ? AND updated_at <= ?"
            " ORDER BY updated_at, run_id LIMIT ?",
            (int(Status.RUNNING), role.value, codec.to_text(last_step_before), limit),
        )
        return [_run(r) for r in rows]

    async def freeze(self, run_id: str, ranges: Sequence[tuple[SerialSpace, int, int]]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO frozen_ranges VALUES (?, ?, ?, ?, ?, ?)",
            [(run_id, s.unit_kind, s.issuing_registry, s.issuance, start, end) for s, start, end in ranges],
        )

    async def unfreeze(self, run_id: str) -> None:
        self._db.execute("DELETE FROM frozen_ranges WHERE run_id = ?", (run_id,))

    async def frozen_by(self, space: SerialSpace, start: int, end: int) -> list[str]:
        rows = self._all(
            "SELECT f.run_id FROM frozen_ranges f LEFT JOIN reconciliation_runs r ON r.run_id = f.run_id"
            " WHERE f.unit_kind = ? AND f.issuing_registry = ? AND f.issuance = ? AND f.serial_start <= ?"
            " AND f.serial_end >= ? GROUP BY f.run_id ORDER BY MAX(r.started_at) DESC, f.run_id",
            (space.unit_kind, space.issuing_registry, space.issuance, end, start),
        )
        return [r[0] for r in rows]

    async def frozen_spaces(self) -> frozenset[SerialSpace]:
        rows = self._all("SELECT DISTINCT unit_kind, issuing_registry, issuance FROM frozen_ranges")
        return frozenset(SerialSpace(r[0], r[1], r[2]) for r in rows)

    async def fold_log_tree(self) -> int:
        row = self._one("SELECT COALESCE(MAX(node_index) + 1, 0) FROM log_tree WHERE level = 0")
        size = int(row[0]) if row else 0
        while True:
            rows = self._all(
                "SELECT log_index, direction, peer, message_id, kind, envelope FROM message_log"
                " WHERE log_index > ? ORDER BY log_index LIMIT 10000",
                (size,),
            )
            if not rows:
                return size
            if rows[0]["log_index"] != size + 1 or rows[-1]["log_index"] != size + len(rows):
                raise StoreConflict(f"the message log is not numbered 1, 2, 3, ... after entry {size}")
            leaves = [
                merkle.leaf_hash(
                    log_leaf(
                        r["direction"], r["peer"], r["message_id"], r["kind"], hashlib.sha256(r["envelope"]).digest()
                    )
                )
                for r in rows
            ]
            needed = await self.log_tree_nodes(merkle.nodes_needed_for_append(size, len(leaves)))
            added = merkle.nodes_for_append(size, leaves, merkle.reader(needed))
            self._db.executemany("INSERT INTO log_tree VALUES (?, ?, ?)", added)
            size += len(leaves)

    async def log_tree_pending(self) -> int:
        row = self._one(
            "SELECT (SELECT COALESCE(MAX(log_index), 0) FROM message_log)"
            " - (SELECT COALESCE(MAX(node_index) + 1, 0) FROM log_tree WHERE level = 0)"
        )
        return int(row[0]) if row else 0

    async def log_tree_nodes(self, coordinates: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        found = {}
        for level, index in coordinates:
            row = self._one("SELECT hash FROM log_tree WHERE level = ? AND node_index = ?", (level, index))
            if row is not None:
                found[(level, index)] = bytes(row[0])
        return found

    async def log_of_transfer(self, transfer_id: str) -> list[LogEntry]:
        # The second condition is the partial index's own: without it the index is not used, for the query's
        # transfer ID might be the empty one it leaves out, and every message ever logged is read.
        rows = self._all(
            "SELECT * FROM message_log WHERE transfer_id = ? AND transfer_id != '' ORDER BY log_index", (transfer_id,)
        )
        return [_log_entry(r) for r in rows]

    async def partner_log_head(self, partner: str) -> PartnerLogHead | None:
        row = self._one("SELECT * FROM partner_log_heads WHERE partner = ?", (partner,))
        if row is None:
            return None
        return PartnerLogHead(
            row["tree_size"], bytes(row["root_hash"]), codec.from_text(row["seen_at"]), row["partner_saw"]
        )

    async def set_partner_log_head(self, partner: str, head: PartnerLogHead) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO partner_log_heads VALUES (?, ?, ?, ?, ?)",
            (partner, head.tree_size, head.root_hash, codec.to_text(head.seen_at), head.partner_saw),
        )
        if head.tree_size:
            self._db.execute(
                "INSERT OR REPLACE INTO partner_log_history VALUES (?, ?, ?)",
                (partner, head.tree_size, head.root_hash),
            )

    async def partner_log_root(self, partner: str, tree_size: int) -> bytes | None:
        row = self._one(
            "SELECT root_hash FROM partner_log_history WHERE partner = ? AND tree_size = ?", (partner, tree_size)
        )
        return None if row is None else bytes(row[0])

    # the change feed

    async def changes_after(
        self, position: int, limit: int, kinds: Sequence[ChangeKind] = (), *, through: int | None = None
    ) -> list[Change]:
        sql = "SELECT position, kind, subject_id, body, recorded_at FROM changes WHERE position > ?"
        params: list[Any] = [position]
        if through is not None:
            sql += " AND position <= ?"
            params.append(through)
        if kinds:
            sql += f" AND kind IN ({_placeholders(kinds)})"
            params.extend(k.value for k in kinds)
        rows = self._all(f"{codec.CHANGES.format(sql + ' ORDER BY position LIMIT ?')}", (*params, limit))
        return [
            codec.change_from_row(r["position"], r["kind"], r["body"], r["recorded_at"], r["kept_terms"]) for r in rows
        ]

    async def change_digest_at(self, position: int) -> bytes | None:
        row = self._one("SELECT position, kind, body, recorded_at FROM changes WHERE position = ?", (position,))
        if row is None:
            return None
        return change_digest(int(row["position"]), row["kind"], row["recorded_at"], row["body"])

    async def last_change_position(self) -> int:
        row = self._one(
            "SELECT MAX(COALESCE((SELECT MAX(position) FROM changes), 0), (SELECT through FROM changes_pruned))"
        )
        return int(row[0]) if row else 0

    async def changes_pruned(self) -> PrunedChanges:
        row = self._one("SELECT through, digest FROM changes_pruned")
        assert row is not None
        return PrunedChanges(int(row[0]), bytes(row[1]))

    async def prune_changes(self, through: int, limit: int) -> tuple[PrunedChanges, int]:
        pruned = await self.changes_pruned()
        last = self._one(
            "SELECT position, kind, body, recorded_at FROM changes WHERE position IN (SELECT position FROM changes"
            " WHERE position > ? AND position <= ? ORDER BY position LIMIT ?) ORDER BY position DESC LIMIT 1",
            (pruned.through, through, limit),
        )
        if last is None:
            return pruned, 0
        position = int(last["position"])
        digest = change_digest(position, last["kind"], last["recorded_at"], last["body"])
        self._db.execute("UPDATE changes_pruned SET through = ?, digest = ?", (position, digest))
        removed = self._db.execute("DELETE FROM changes WHERE position <= ?", (position,)).rowcount
        return PrunedChanges(position, digest), removed

    # operator idempotency

    async def get_idempotent(self, caller: str, method: str, key: str) -> IdempotentResult | None:
        row = self._one(
            "SELECT request_hash, response FROM idempotency WHERE caller = ? AND method = ? AND idempotency_key = ?",
            (caller, method, key),
        )
        return None if row is None else IdempotentResult(row["request_hash"], bytes(row["response"]))

    async def put_idempotent(self, caller: str, method: str, key: str, result: IdempotentResult) -> None:
        self._db.execute(
            "INSERT INTO idempotency VALUES (?, ?, ?, ?, ?)",
            (caller, method, key, result.request_hash, result.response),
        )


def _stored_block(row: sqlite3.Row) -> StoredBlock:
    return StoredBlock(
        block_id=row["block_id"],
        account_id=row["account_id"],
        status=BlockStatus(row["status"]),
        transfer_id=row["transfer_id"],
        parent_id=row["parent_id"],
        block=codec.block_from_json(row["body"]),
    )


DEPTH_LEVELS = reconciliation.DEPTH + 1
FANOUT = reconciliation.FANOUT_BITS


def _chunks(values: Sequence[int], size: int) -> list[list[int]]:
    return [list(values[i : i + size]) for i in range(0, len(values), size)]


def _totals(row: sqlite3.Row) -> Totals:
    return Totals(
        row["blocks"],
        (row["quantity_high"] << 32) + row["quantity_low"],
        digest_of_limbs([row[f"h{i}"] for i in range(LIMBS)]),
    )


def _run_row(run: ReconciliationRun) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "partner": run.partner,
        "role": run.role.value,
        "status": int(run.status),
        "snapshot_at": codec.to_text(run.snapshot_at),
        "started_at": codec.to_text(run.started_at),
        "updated_at": codec.to_text(run.updated_at),
        "detail": run.detail,
        "progress": run.progress,
        "report": run.report,
        "resolved_reason": run.resolved_reason,
        "resolved_at": codec.to_text(run.resolved_at) if run.resolved_at else None,
    }


def _run(row: sqlite3.Row) -> ReconciliationRun:
    return ReconciliationRun(
        run_id=row["run_id"],
        partner=row["partner"],
        role=RunRole(row["role"]),
        status=Status(row["status"]),
        snapshot_at=codec.from_text(row["snapshot_at"]),
        started_at=codec.from_text(row["started_at"]),
        updated_at=codec.from_text(row["updated_at"]),
        detail=row["detail"],
        progress=bytes(row["progress"]),
        report=bytes(row["report"]),
        resolved_reason=row["resolved_reason"],
        resolved_at=codec.from_text(row["resolved_at"]) if row["resolved_at"] else None,
    )


def _log_entry(row: sqlite3.Row) -> LogEntry:
    return LogEntry(
        index=row["log_index"],
        direction=row["direction"],
        peer=row["peer"],
        message_id=row["message_id"],
        kind=LogKind(row["kind"]),
        form=row["form"],
        envelope=bytes(row["envelope"]),
        recorded_at=codec.from_text(row["recorded_at"]),
    )


def _outbox_message(row: sqlite3.Row) -> OutboxMessage:
    settled = row["settled_at"]
    return OutboxMessage(
        outbox_id=row["outbox_id"],
        receiver=row["receiver"],
        message_id=row["message_id"],
        kind=OutboxKind(row["kind"]),
        transfer_id=row["transfer_id"],
        body=bytes(row["body"]),
        state=OutboxState(row["state"]),
        sequence=row["sequence"],
        attempts=row["attempts"],
        next_attempt_at=codec.from_text(row["next_attempt_at"]),
        last_code=row["last_code"],
        last_error=row["last_error"],
        created_at=codec.from_text(row["created_at"]),
        settled_at=codec.from_text(settled) if settled else None,
        payload_digest=bytes(row["payload_digest"]),
        sealed=bytes(row["sealed"]),
    )


def _message(row: sqlite3.Row) -> StoredMessage:
    return StoredMessage(
        direction=row["direction"],
        peer=row["peer"],
        message_id=row["message_id"],
        envelope=bytes(row["envelope"]),
        receipt=bytes(row["receipt"]),
        recorded_at=codec.from_text(row["recorded_at"]),
    )
