"""The production store: PostgreSQL through asyncpg, with a connection pool; several replicas may share it.

Concurrency. The use cases were written for SQLite's single writer: ``BEGIN IMMEDIATE`` serializes write
transactions, so a reservation, a channel's next sequence number, a high-water mark or a deadline sweep reads
what every earlier write left and nothing changes under it until it commits. Here every write transaction
(`PostgresStore.transaction`) takes ``pg_advisory_xact_lock(WRITE_LOCK)`` as its first statement, at READ
COMMITTED, so each of its statements sees every write transaction that committed before it got the lock: the
write transactions of every process sharing the database (every replica of one Party) run one at a time,
exactly as SQLite's do, and the same code stays correct across replicas. Correctness first: the price is that
writes do not run in parallel even when they touch unrelated rows, so one database's write throughput is that
of one writer (each write transaction a few round trips plus a commit). Reads (`PostgresStore.read`) take no
lock: each is a REPEATABLE READ READ ONLY transaction, a consistent snapshot that runs beside the writers.
``durable=False`` is ``SET LOCAL synchronous_commit = off``: the commit does not wait for the WAL flush (a
crash may lose it, never corrupt anything), for bookkeeping whose loss is harmless.

Migrations (`gateway.store.pg_migrations`) run at open under a session advisory lock (``MIGRATION_LOCK``), so
replicas starting at once do not both migrate: the second waits, then finds nothing left to do.

Timestamps are kept as the same UTC text the SQLite store keeps (`gateway.store.codec.to_text`), and text
columns compare byte for byte (``COLLATE "C"``), so both stores order every listing the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

import asyncpg

from gateway.domain import merkle, ranges, reconciliation
from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.canonical import ActionSubtype
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
from gateway.store.migrations import AUTHORIZATION_USAGE_REBUILD, LEDGER_TOTAL_COLUMNS
from gateway.store.pg_migrations import LEDGER_TOTALS_REBUILD, PG_MIGRATIONS, TOTALS_AGREE, WRITE_LOCK

Record = Any  # asyncpg.Record: a row read by column name or position


MIGRATION_LOCK = 0x6361_7262_6F6E_0002
"""The advisory lock held while migrations are checked and applied."""

SCHEMES = ("postgresql", "postgres")
"""The URL schemes that name a PostgreSQL database."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.QueryCanceledError,
    # A connection the server ended under it (a restart, a failover, pg_terminate_backend) can leave asyncpg's
    # protocol mid-operation; the transaction then ends it, and the pool opens another.
    asyncpg.exceptions.InternalClientError,
    TimeoutError,
    ConnectionError,
)
"""What says the database could not do a transaction's work now, not that the work is wrong."""

NOT_TRANSIENT: tuple[type[BaseException], ...] = (
    ValueError,  # the driver's DataError: a value it cannot encode, such as an integer beyond 64 bits
    asyncpg.exceptions.ClientConfigurationError,
    asyncpg.exceptions.UnsupportedClientFeatureError,
    asyncpg.exceptions.UnsupportedServerFeatureError,
)
"""The `asyncpg.InterfaceError` kinds that say the work is wrong, not that the database could not do it now."""


class DatabaseUnavailable(Exception):
    """The database cannot be reached or used; the message names it without its password."""


class ConnectFailed(ConnectionError):
    """No connection to the database could be opened for a transaction (the server down, restarting, refusing
    connections): transient, like a connection lost in one."""


MAX_URL_SHOWN = 200
"""Characters of a database URL a message repeats, the password already masked."""


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, cut to `MAX_URL_SHOWN` characters: safe to print or
    log, on one line."""
    shown = _masked(url)
    return shown if len(shown) <= MAX_URL_SHOWN else f"{shown[:MAX_URL_SHOWN]}... ({len(url)} characters)"


def _masked(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<an unparseable URL>"
    if parts.password is None:
        # A password may also come as a query parameter.
        query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
        return urllib.parse.urlunsplit(parts._replace(query=query))
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}", query=query))


@lru_cache(maxsize=1024)
def _pg(sql: str) -> str:
    """SQLite-style ``?`` placeholders as PostgreSQL's ``$1``, ``$2``, ... (no statement here has a literal ``?``)."""
    count = 0

    def number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return re.sub(r"\?", number, sql)


def _storable(params: Sequence[Any]) -> list[Any]:
    """``params`` with U+0000 in text replaced by U+FFFD: PostgreSQL text cannot hold it. The edges refuse control
    characters in every identifier and name, so only free text a partner wrote (the detail of a refusal, kept
    as an outbox message's last error) can carry one; refusing to store it would stop that message for good."""
    return [p.replace("\x00", "\ufffd") if isinstance(p, str) and "\x00" in p else p for p in params]


def _rowcount(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3`` or ``INSERT 0 1``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


log = logging.getLogger(__name__)

WRITE_LOCK_WAIT = "5s"
"""One turn of a write transaction's wait for the write lock (see `PostgresStore.transaction`)."""

CLOSE_SECONDS = 10.0
"""How long closing the store waits for its connections to end their work and say goodbye to the server."""

LOCK_TIMEOUT = "60s"
"""How long a statement waits for a row lock (held, say, by a hand-made repair) before it fails."""

IDLE_IN_TRANSACTION_TIMEOUT = "60s"
"""How long the server lets a gateway's transaction sit idle (its process frozen, or cut off from the server)
before it ends the session, and with it the transaction and the store's write lock: a replica that stops mid-
transaction holds every other replica's writes up for this long at most. A live gateway never waits so long
between two statements of one transaction."""


async def _init_connection(connection: Any) -> None:
    # Stored text is UTC ISO text, never a server-side timestamp: the session time zone is irrelevant, but
    # a statement that runs too long on a stuck lock is not.
    await connection.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")


class PostgresStore:
    """A gateway's database in PostgreSQL (see the module docstring for how replicas share it)."""

    def __init__(self, pool: Any, *, read_only: bool = False) -> None:
        self._pool = pool
        self.read_only = read_only
        self._commits = CommitSignal()
        self._enqueued = CommitSignal()
        self._writer = asyncio.Lock()
        """This process's writers wait for the write lock one at a time, on one connection: the others of the pool
        stay free for reads, which take no lock and must not queue behind writers that could not run anyway."""

    @asynccontextmanager
    async def synced_once(self) -> AsyncIterator[None]:
        """Each commit is durable when it returns (the server groups the syncs of concurrent commits itself)."""
        yield

    def is_transient(self, error: BaseException) -> bool:
        """A connection lost or closed, a lock wait that ran out or a deadlock broken by the server, a query
        cancelled (an administrator's ``pg_cancel_backend``, the command timeout), or a timeout on our side. Not
        the driver's own refusals of what it was given (a value it cannot encode, a setting or feature it does
        not support): those are bugs, and a retry would meet them again for ever."""
        return isinstance(error, TRANSIENT_ERRORS) and not isinstance(error, NOT_TRANSIENT)

    @property
    def shared(self) -> bool:
        """Replicas of one gateway share a PostgreSQL database."""
        return True

    @property
    def commits(self) -> CommitSignal:
        """Notified after every write transaction this process commits (other replicas' commits are not seen:
        watchers also poll)."""
        return self._commits

    @property
    def enqueued(self) -> CommitSignal:
        """Notified after every write transaction of this process that put a message in the outbox commits."""
        return self._enqueued

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresStore:
        """Connect to the database at ``url`` and apply pending migrations (under ``MIGRATION_LOCK``)."""
        pool = await _pool(url, min_size=min_size, max_size=max_size)
        try:
            async with pool.acquire() as connection:
                await migrate(connection)
                # One snapshot: the triggers change each total in the transaction that changes its rows. Summing
                # again takes the write lock, and holds every replica's writes up for as long as it takes.
                async with connection.transaction(isolation="repeatable_read", readonly=True):
                    agree = [bool(await connection.fetchval(statement)) for statement in TOTALS_AGREE]
                if not all(agree):
                    log.warning(
                        "the stored totals (authorization usage and ties, ledger summary) differ from their rows: a"
                        " repair by hand bypassed the triggers that keep them; summing them again"
                    )
                    async with connection.transaction():
                        await connection.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
                        for statement in (*AUTHORIZATION_USAGE_REBUILD, *LEDGER_TOTALS_REBUILD):
                            await connection.execute(statement)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    @classmethod
    async def open_read_only(cls, url: str) -> PostgresStore:
        """Connect for reading only: nothing is created or migrated, and every transaction is read-only (a
        write fails), so a reader (a report) never changes a running gateway's database. Refuses a database
        whose schema is not this version's."""
        pool = await _pool(url, min_size=1, max_size=2, read_only=True)
        try:
            async with pool.acquire() as connection:
                exists = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
                found = (
                    {int(r[0]) for r in await connection.fetch("SELECT version FROM schema_migrations")}
                    if exists
                    else set()
                )
        except BaseException:
            await pool.close()
            raise
        expected = {version for version, _, _ in PG_MIGRATIONS}
        if not found:
            await pool.close()
            raise DatabaseUnavailable(f"{redact(url)} is not a gateway database: it has no schema_migrations table")
        if found != expected:
            await pool.close()
            raise DatabaseUnavailable(
                f"{redact(url)} has schema versions up to {max(found)}, this version reads {max(expected)}: "
                + (
                    "use the carbon-gateway version that migrated it"
                    if max(found) > max(expected)
                    else "start the gateway of this version once, which migrates it"
                )
            )
        return cls(pool, read_only=True)

    @asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[PostgresTransaction]:
        """Begin a write transaction; commit on normal exit, roll back on an exception.

        Its first statement waits for ``WRITE_LOCK``, held until it ends: write transactions of every process
        on this database run one at a time. ``durable=False`` does not wait for the WAL flush at commit.
        """
        # The write lock is waited for in turns of `WRITE_LOCK_WAIT`, each a new place in the server's queue,
        # with no limit on the turns (a large transfer on another replica may hold the lock for minutes; a
        # caller's deadline cancels the wait). A process frozen while it waits (stopped, cut off) thus loses its
        # place within a turn, and never takes the lock to sit on it; the session's limit on row locks applies
        # once the lock is held.
        begin = (
            f"BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{WRITE_LOCK_WAIT}';"
            f" SELECT pg_advisory_xact_lock({WRITE_LOCK}); SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"
        )
        if not durable:
            begin += "; SET LOCAL synchronous_commit = off"
        async with self._writer, self._write(begin) as tx:
            yield tx

    @asynccontextmanager
    async def _write(self, begin: str) -> AsyncIterator[PostgresTransaction]:
        """The write transaction of `transaction`, opened with ``begin``, once this process's other writers are done."""
        tx: PostgresTransaction | None = None
        announce = False
        try:
            while True:
                opened = contextlib.AsyncExitStack()
                try:
                    connection = await opened.enter_async_context(self._acquire())
                    await opened.enter_async_context(_transaction(connection, begin))
                except asyncpg.LockNotAvailableError:
                    await opened.aclose()
                    continue  # another turn in the queue for the write lock
                except BaseException:
                    await opened.aclose()
                    raise
                break
            async with opened:
                tx = PostgresTransaction(connection)
                yield tx
            announce = True
        except asyncio.CancelledError:
            # The caller may have been cancelled at COMMIT, which the server may have carried out all the same:
            # a wake-up for nothing costs a look, a missed one leaves a queued statement until its next due time.
            announce = True
            raise
        finally:
            if announce and tx is not None:
                self._commits.notify()
                if tx.enqueued:
                    self._enqueued.notify()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[PostgresTransaction]:
        """Begin a transaction for reads: a consistent snapshot (REPEATABLE READ READ ONLY), no lock taken."""
        async with (
            self._acquire() as connection,
            _transaction(connection, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        ):
            yield PostgresTransaction(connection)

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the pool; a failure to open one is `ConnectFailed`, whatever the driver raised."""
        try:
            connection = await self._pool.acquire()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        try:
            yield connection
        finally:
            await self._pool.release(connection)

    async def close(self) -> None:
        """Close every connection of the pool: gracefully for up to `CLOSE_SECONDS`, then at once. A connection
        the server no longer answers on (a network partition) would otherwise keep a stopping gateway for ever."""
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await self._pool.close()
        except TimeoutError:
            log.warning(
                "the database did not answer within %g s while closing; closing its connections at once", CLOSE_SECONDS
            )
            self._pool.terminate()


class CommitFailed(Exception):
    """PostgreSQL rolled a transaction back at COMMIT: a statement in it had failed."""


@asynccontextmanager
async def _transaction(connection: Any, begin: str) -> AsyncIterator[None]:
    """Run ``begin`` (one round trip: BEGIN and the statements that must open the transaction), then COMMIT on
    normal exit or ROLLBACK on an exception. A COMMIT that PostgreSQL turns into a rollback (a statement failed
    and the caller went on) raises: nothing may pass for written that was not."""
    try:
        await connection.execute(begin)  # a write waits here for the lock: it may be cancelled meanwhile
        yield
    except BaseException:
        try:
            await connection.execute("ROLLBACK")
        except Exception:
            # The connection is unusable (the server may have ended it already); the server rolls back when it
            # goes. What the caller hears is what failed first.
            with contextlib.suppress(Exception):
                connection.terminate()
        raise
    status = await connection.execute("COMMIT")
    if status != "COMMIT":
        raise CommitFailed(f"the transaction was rolled back at commit ({status}): a statement in it failed")


async def _no_reset(connection: Any) -> None:
    """Connections go back to the pool as they are: every transaction here ends itself and sets only LOCAL
    settings, so asyncpg's reset query would be one more round trip per transaction for nothing."""


async def _pool(url: str, *, min_size: int, max_size: int, read_only: bool = False) -> Any:
    settings = {
        "application_name": "carbon-gateway",
        "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT,
    }
    if read_only:
        settings["default_transaction_read_only"] = "on"
    try:
        return await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_no_reset,
            server_settings=settings,
            timeout=10,
            command_timeout=300,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        # The exception's text may quote the URL; say what failed without it.
        raise DatabaseUnavailable(f"{redact(url)}: {type(exc).__name__}: {_without(str(exc), url)}") from None


def _without(text: str, url: str) -> str:
    """``text`` with any password of ``url`` taken out."""
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return text
    if password:
        text = text.replace(password, "***").replace(urllib.parse.unquote(password), "***")
    return text.replace(url, redact(url))


SCHEMA_TABLES = (
    "SELECT c.relname FROM pg_class c WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')"
    " AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
    " AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid"
    " AND d.deptype = 'e')"
)
"""The tables and views of the schema the gateway's tables go into (the first of the search path that exists),
but an extension's (``CREATE EXTENSION pg_stat_statements`` puts views there): a program's, or the gateway's."""


async def migrate(connection: Any) -> int:
    """Apply the migrations not yet applied, under ``MIGRATION_LOCK``; return the schema version."""
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        # As it is before anything is created in it: another program's tables are left as they are.
        tables = await connection.fetch(SCHEMA_TABLES)
        check_gateway_tables("the PostgreSQL database", {str(row[0]) for row in tables})
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL)"
        )
        applied = {int(r[0]) for r in await connection.fetch("SELECT version FROM schema_migrations")}
        check_schema_known("the PostgreSQL database", applied, max(v for v, _, _ in PG_MIGRATIONS))
        for version, description, statements in PG_MIGRATIONS:
            if version in applied:
                continue
            async with connection.transaction():
                for statement in statements:
                    await connection.execute(statement)
                await connection.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, description)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return max(v for v, _, _ in PG_MIGRATIONS)


def _placeholders(values: Sequence[Any]) -> str:
    return ",".join("?" for _ in values)


class PostgresTransaction:
    """The operations of one PostgreSQL transaction (see `gateway.store.base.Transaction`).

    The SQL is the SQLite store's wherever the two dialects agree, with ``?`` placeholders numbered on the way.
    A statement that fails aborts a PostgreSQL transaction, so an insert that may meet an existing row (and
    raise `StoreConflict` for the caller to handle) uses ``ON CONFLICT DO NOTHING`` and counts the rows.
    """

    def __init__(self, connection: Any) -> None:
        self.enqueued = False
        """Whether the transaction put a message in the outbox (`PostgresStore.enqueued`)."""
        self._db = connection
        self._savepoints = 0

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        await self._db.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            await self._db.execute(f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
            raise
        await self._db.execute(f"RELEASE SAVEPOINT {name}")

    async def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        return _rowcount(await self._db.execute(_pg(sql), *_storable(params)))

    async def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._db.executemany(_pg(sql), [_storable(row) for row in rows])

    async def _value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return await self._db.fetchval(_pg(sql), *_storable(params))

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> Record | None:
        return await self._db.fetchrow(_pg(sql), *_storable(params))

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Record]:
        rows: list[Record] = await self._db.fetch(_pg(sql), *_storable(params))
        return rows

    # accounts and authorizations

    async def get_account(self, account_id: str) -> Account | None:
        row = await self._one("SELECT * FROM accounts WHERE account_id = ?", (account_id,))
        return None if row is None else Account(row["account_id"], row["holder_name"], AccountType(row["account_type"]))

    async def insert_account(self, account: Account) -> None:
        if not await self._execute(
            "INSERT INTO accounts VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (account.account_id, account.holder_name, account.account_type.value),
        ):
            raise StoreConflict(f"account {account.account_id!r} exists")

    async def get_authorization(self, authorization_id: str) -> Authorization | None:
        row = await self._one(
            "SELECT body FROM authorization_versions WHERE authorization_id = ? ORDER BY seq DESC LIMIT 1",
            (authorization_id,),
        )
        return None if row is None else codec.authorization_from_json(row["body"])

    async def insert_authorization(self, authorization: Authorization) -> None:
        if not await self._execute(
            "INSERT INTO authorizations VALUES (?, ?) ON CONFLICT DO NOTHING",
            (authorization.authorization_id, codec.authorization_to_json(authorization)),
        ):
            raise StoreConflict(f"authorization {authorization.authorization_id!r} exists")
        await self._insert_version(authorization, "1970-01-01T00:00:00.000000Z")

    async def _insert_version(self, authorization: Authorization, recorded_at: str) -> None:
        if not await self._execute(
            "INSERT INTO authorization_versions (authorization_id, version, date, body, recorded_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                authorization.authorization_id,
                authorization.version,
                authorization.date.isoformat(),
                codec.authorization_to_json(authorization),
                recorded_at,
            ),
        ):
            raise StoreConflict(
                f"version {authorization.version!r} of authorization {authorization.authorization_id!r} exists"
            )

    async def insert_authorization_version(self, authorization: Authorization, now: dt.datetime) -> None:
        await self._insert_version(authorization, codec.to_text(now))

    async def authorization_versions(
        self, authorization_id: str, *, recorded_by: dt.datetime | None = None
    ) -> list[Authorization]:
        rows = await self._all(
            "SELECT body FROM authorization_versions WHERE authorization_id = ?"
            " AND (?::text IS NULL OR recorded_at <= ?::text) ORDER BY seq",
            (authorization_id, *(2 * [None if recorded_by is None else codec.to_text(recorded_by)])),
        )
        return [codec.authorization_from_json(r["body"]) for r in rows]

    async def record_proposed_version(self, transfer_id: str, version: str) -> None:
        await self._execute("INSERT INTO transfer_authorization_versions VALUES (?, ?)", (transfer_id, version))

    async def proposed_version(self, transfer_id: str) -> str | None:
        row = await self._one(
            "SELECT version FROM transfer_authorization_versions WHERE transfer_id = ?", (transfer_id,)
        )
        return None if row is None else str(row["version"])

    async def list_authorization_versions(self) -> list[Authorization]:
        rows = await self._all("SELECT body FROM authorization_versions ORDER BY seq")
        return [codec.authorization_from_json(r["body"]) for r in rows]

    async def page_authorization_versions(
        self, authorization_id: str, *, after: int, limit: int
    ) -> list[tuple[int, Authorization]]:
        # Every write holds the write lock, so versions commit in the order of their seq: a page never passes one
        # that commits later.
        rows = await self._all(
            "SELECT seq, body FROM authorization_versions WHERE seq > ? AND (? = '' OR authorization_id = ?)"
            " ORDER BY seq LIMIT ?",
            (after, authorization_id, authorization_id, limit),
        )
        return [(int(r["seq"]), codec.authorization_from_json(r["body"])) for r in rows]

    async def add_authorization_tie(
        self, authorization_id: str, action_id: str, quantity: int, now: dt.datetime
    ) -> None:
        await self._execute(
            "INSERT INTO authorization_ties VALUES (?, ?, ?, ?)",
            (authorization_id, action_id, quantity, codec.to_text(now)),
        )

    async def first_transfer_quantity_used(self, authorization_id: str) -> int:
        row = await self._one(
            "SELECT first_quantity FROM authorization_usage WHERE authorization_id = ?", (authorization_id,)
        )
        ties = await self._one(
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
        block_id: int = await self._value(
            f"INSERT INTO blocks ({codec.BLOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING block_id",
            codec.block_row(NewBlock(block, account_id, status, transfer_id, parent_id)),
        )
        return block_id

    async def insert_blocks(self, blocks: Sequence[NewBlock]) -> None:
        await self._executemany(
            f"INSERT INTO blocks ({codec.BLOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [codec.block_row(new) for new in blocks],
        )

    async def get_block(self, block_id: int) -> StoredBlock | None:
        row = await self._one("SELECT * FROM blocks WHERE block_id = ?", (block_id,))
        return None if row is None else _stored_block(row)

    async def set_block_status(self, block_id: int, status: BlockStatus, *, transfer_id: str | None = None) -> None:
        if transfer_id is None:
            await self._execute("UPDATE blocks SET status = ? WHERE block_id = ?", (status.value, block_id))
        else:
            await self._execute(
                "UPDATE blocks SET status = ?, transfer_id = ? WHERE block_id = ?",
                (status.value, transfer_id, block_id),
            )

    async def set_blocks_status(self, block_ids: Sequence[int], status: BlockStatus) -> None:
        await self._execute(
            "UPDATE blocks SET status = ? WHERE block_id = ANY(?::bigint[])",
            (status.value, [int(i) for i in block_ids]),
        )

    async def guarded_blocks(
        self, space: SerialSpace, start: int, end: int, *, limit: int | None = None
    ) -> list[StoredBlock]:
        # Guarded blocks never overlap each other, so those sharing a serial with [start, end] are the ones
        # starting inside it plus at most one starting before it: two seeks in the partial index, whatever
        # the length of the block history, in one round trip.
        key = (space.unit_kind, space.issuing_registry, space.issuance)
        where = f"unit_kind = ? AND issuing_registry = ? AND issuance = ? AND status IN ({codec.GUARDED_LITERALS})"
        rows = await self._all(
            f"(SELECT * FROM blocks WHERE {where} AND serial_start < ? ORDER BY serial_start DESC LIMIT 1)"
            f" UNION ALL (SELECT * FROM blocks WHERE {where} AND serial_start >= ? AND serial_start <= ?"
            " ORDER BY serial_start LIMIT ?)",
            (*key, start, *key, start, end, limit),
        )
        rows = sorted(rows, key=lambda r: int(r["serial_start"]))
        return [_stored_block(r) for r in rows if r["serial_start"] >= start or r["serial_end"] >= start]

    async def guarded_blocks_each(
        self, space: SerialSpace, wanted: Sequence[tuple[int, int]], *, limit: int | None = None
    ) -> list[list[StoredBlock]]:
        # `guarded_blocks`' two seeks for every range at once; the limit applies to each range's blocks.
        if len(wanted) <= 1:
            return [await self.guarded_blocks(space, start, end, limit=limit) for start, end in wanted]
        key = (space.unit_kind, space.issuing_registry, space.issuance)
        where = f"unit_kind = ? AND issuing_registry = ? AND issuance = ? AND status IN ({codec.GUARDED_LITERALS})"
        rows = await self._all(
            "SELECT q.i, b.* FROM unnest(?::bigint[], ?::bigint[]) WITH ORDINALITY AS q(lo, hi, i)"
            f" CROSS JOIN LATERAL ((SELECT * FROM blocks WHERE {where} AND serial_start < q.lo"
            f" ORDER BY serial_start DESC LIMIT 1) UNION ALL (SELECT * FROM blocks WHERE {where}"
            " AND serial_start >= q.lo AND serial_start <= q.hi ORDER BY serial_start LIMIT ?)) b"
            " WHERE b.serial_end >= q.lo",
            ([lo for lo, _ in wanted], [hi for _, hi in wanted], *key, *key, limit),
        )
        found: list[list[StoredBlock]] = [[] for _ in wanted]
        for r in rows:
            found[int(r["i"]) - 1].append(_stored_block(r))
        for each in found:
            each.sort(key=lambda stored: stored.block.start)
        return found

    async def blocks_of_transfer(self, transfer_id: str, status: BlockStatus) -> list[StoredBlock]:
        rows = await self._all(
            "SELECT * FROM blocks WHERE transfer_id = ? AND status = ? ORDER BY block_id", (transfer_id, status.value)
        )
        return [_stored_block(r) for r in rows]

    async def ranges_of_transfers(
        self, transfer_ids: Collection[str], statuses: Collection[BlockStatus]
    ) -> dict[str, list[SerialRange]]:
        found: dict[str, list[SerialRange]] = {}
        for chunk in codec.id_chunks(transfer_ids):
            rows = await self._all(
                "SELECT transfer_id, unit_kind, issuing_registry, issuance, serial_start, serial_end FROM blocks"
                " WHERE transfer_id = ANY(?::text[]) AND status = ANY(?::text[])",
                (chunk, [s.value for s in statuses]),
            )
            for r in rows:
                found.setdefault(r["transfer_id"], []).append(codec.serial_range(r))
        return found

    async def set_transfer_blocks_status(self, transfer_id: str, old: BlockStatus, new: BlockStatus) -> int:
        return await self._execute(
            "UPDATE blocks SET status = ? WHERE transfer_id = ? AND status = ?", (new.value, transfer_id, old.value)
        )

    async def move_transfer_blocks(self, transfer_id: str, old: BlockStatus, new: BlockStatus) -> list[StoredBlock]:
        rows = await self._all(
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
        sql += " ORDER BY unit_kind, issuing_registry, issuance, serial_start, block_id LIMIT ?"  # NULL: no limit
        rows = await self._all(sql, [*params, limit])
        return [_stored_block(r) for r in rows]

    # provenance

    async def _ranges(self, table: str, space: SerialSpace, start: int, end: int) -> list[tuple[int, int]]:
        # Each table holds disjoint ranges per space: the same two seeks as for guarded blocks, one round trip.
        key = (space.unit_kind, space.issuing_registry, space.issuance)
        where = "unit_kind = ? AND issuing_registry = ? AND issuance = ?"
        rows = await self._all(
            f"(SELECT serial_start, serial_end FROM {table} WHERE {where} AND serial_start < ?"
            " ORDER BY serial_start DESC LIMIT 1)"
            f" UNION ALL (SELECT serial_start, serial_end FROM {table} WHERE {where} AND serial_start >= ?"
            " AND serial_start <= ? ORDER BY serial_start)",
            (*key, start, *key, start, end),
        )
        found = sorted((int(r[0]), int(r[1])) for r in rows)
        return [(lo, hi) for lo, hi in found if lo >= start or hi >= start]

    async def _ranges_each(
        self, table: str, space: SerialSpace, wanted: Sequence[tuple[int, int]]
    ) -> list[list[Range]]:
        # `_ranges`' two seeks for every range at once: the ranges go in as two arrays, one round trip.
        if len(wanted) <= 1:
            return [await self._ranges(table, space, start, end) for start, end in wanted]
        key = (space.unit_kind, space.issuing_registry, space.issuance)
        where = "unit_kind = ? AND issuing_registry = ? AND issuance = ?"
        rows = await self._all(
            "SELECT q.i, t.serial_start, t.serial_end"
            " FROM unnest(?::bigint[], ?::bigint[]) WITH ORDINALITY AS q(lo, hi, i) CROSS JOIN LATERAL ("
            f"(SELECT serial_start, serial_end FROM {table} WHERE {where} AND serial_start < q.lo"
            " ORDER BY serial_start DESC LIMIT 1)"
            f" UNION ALL (SELECT serial_start, serial_end FROM {table} WHERE {where} AND serial_start >= q.lo"
            " AND serial_start <= q.hi)) t WHERE t.serial_end >= q.lo",
            ([lo for lo, _ in wanted], [hi for _, hi in wanted], *key, *key),
        )
        found: list[list[Range]] = [[] for _ in wanted]
        for r in rows:
            found[int(r[0]) - 1].append((int(r[1]), int(r[2])))
        return [sorted(f) for f in found]

    async def _touching(self, table: str, space: SerialSpace, wanted: Sequence[tuple[int, int]]) -> list[Range]:
        """The distinct ranges of ``table`` that overlap or touch a range of ``wanted``, in serial order."""
        near = [(max(start - 1, 0), end + 1) for start, end in wanted]
        return sorted({r for each in await self._ranges_each(table, space, near) for r in each})

    async def _replace_ranges(self, table: str, space: SerialSpace, present: list[Range], keep: list[Range]) -> None:
        """Replace the ranges ``present`` of ``table`` (just read) by ``keep``."""
        key = (space.unit_kind, space.issuing_registry, space.issuance)
        await self._executemany(
            f"DELETE FROM {table} WHERE unit_kind = ? AND issuing_registry = ? AND issuance = ? AND serial_start = ?",
            [(*key, lo) for lo, _ in present],
        )
        await self._executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?)", [(*key, lo, hi) for lo, hi in keep])

    async def known_ranges(self, space: SerialSpace, start: int, end: int) -> list[tuple[int, int]]:
        return await self._ranges("known_ranges", space, start, end)

    async def known_ranges_each(
        self, space: SerialSpace, wanted: Sequence[tuple[int, int]]
    ) -> list[list[tuple[int, int]]]:
        return await self._ranges_each("known_ranges", space, wanted)

    async def add_known(self, space: SerialSpace, added: Sequence[tuple[int, int]]) -> None:
        # Merged with every range they overlap or touch: units may arrive again after they left.
        present = await self._touching("known_ranges", space, added)
        await self._replace_ranges("known_ranges", space, present, ranges.normalize([*present, *added]))

    async def abroad_ranges(self, space: SerialSpace, start: int, end: int) -> list[tuple[int, int]]:
        return await self._ranges("abroad_ranges", space, start, end)

    async def abroad_ranges_each(
        self, space: SerialSpace, wanted: Sequence[tuple[int, int]]
    ) -> list[list[tuple[int, int]]]:
        return await self._ranges_each("abroad_ranges", space, wanted)

    async def add_abroad(self, space: SerialSpace, added: Sequence[tuple[int, int]]) -> None:
        # Neighbours that touch the ranges are merged with them, so the table stays minimal.
        present = await self._touching("abroad_ranges", space, added)
        check_abroad_added(present, added)
        await self._replace_ranges("abroad_ranges", space, present, ranges.normalize([*present, *added]))

    async def remove_abroad(self, space: SerialSpace, removed: Sequence[tuple[int, int]]) -> None:
        present = sorted({r for each in await self._ranges_each("abroad_ranges", space, removed) for r in each})
        check_abroad_removed(present, removed)
        await self._replace_ranges("abroad_ranges", space, present, ranges.difference(present, removed))

    # transfers and the ledger

    async def insert_transfer(self, transfer: Transfer) -> None:
        first_quantity = first_transfer_quantity(transfer.terms)
        if not await self._execute(
            "INSERT INTO transfers (transfer_id, role, state, terms, authorization_id, quantity, rejections,"
            " created_at, updated_at, first_quantity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
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
        ):
            raise StoreConflict(f"transfer {transfer.transfer_id!r} exists")
        await self._execute(
            "INSERT INTO transfer_terms VALUES (?, ?)", (transfer.transfer_id, codec.terms_to_json(transfer.terms))
        )

    async def update_transfer(self, transfer: Transfer) -> None:
        await self._execute(
            "UPDATE transfers SET state = ?, rejections = ?, updated_at = ? WHERE transfer_id = ?",
            (
                int(transfer.state),
                codec.rejections_to_json(transfer.rejections),
                codec.to_text(transfer.updated_at),
                transfer.transfer_id,
            ),
        )

    async def get_transfer(self, transfer_id: str) -> Transfer | None:
        row = await self._one(f"{codec.TRANSFERS} WHERE t.transfer_id = ?", (transfer_id,))
        return None if row is None else codec.transfer_from_row(row, row["kept_terms"])

    async def transfer_heads(self, transfer_ids: Collection[str]) -> dict[str, TransferHead]:
        found: dict[str, TransferHead] = {}
        for chunk in codec.id_chunks(transfer_ids):
            rows = await self._all(f"{codec.TRANSFERS} WHERE t.transfer_id = ANY(?::text[])", (chunk,))
            found.update((r["transfer_id"], codec.transfer_head(r, r["kept_terms"])) for r in rows)
        return found

    async def transfer_ranges(self, transfer_ids: Collection[str]) -> dict[str, list[SerialRange]]:
        found: dict[str, list[SerialRange]] = {}
        for chunk in codec.id_chunks(transfer_ids):
            rows = await self._all(f"{codec.TRANSFERS} WHERE t.transfer_id = ANY(?::text[])", (chunk,))
            found.update((r["transfer_id"], codec.terms_ranges(r, r["kept_terms"])) for r in rows)
        return found

    async def list_transfers(self, *, after: tuple[str, str] | None = None, limit: int | None = None) -> list[Transfer]:
        sql = codec.TRANSFERS
        params: list[Any] = []
        if after is not None:
            sql += " WHERE (t.created_at, t.transfer_id) > (?, ?)"
            params.extend(after)
        sql += " ORDER BY t.created_at, t.transfer_id LIMIT ?"  # NULL: no limit
        return [codec.transfer_from_row(r, r["kept_terms"]) for r in await self._all(sql, [*params, limit])]

    async def open_transfers(self) -> list[Transfer]:
        rows = await self._all(
            f"{codec.TRANSFERS} WHERE t.state IN ({codec.OPEN_STATE_LITERALS}) ORDER BY t.created_at, t.transfer_id"
        )
        return [codec.transfer_from_row(r, r["kept_terms"]) for r in rows]

    async def status_queried_at(self, transfer_id: str) -> dt.datetime | None:
        row = await self._one("SELECT status_queried_at FROM transfers WHERE transfer_id = ?", (transfer_id,))
        return codec.from_text(row[0]) if row is not None and row[0] else None

    async def set_status_queried_at(self, transfer_id: str, now: dt.datetime) -> None:
        await self._execute(
            "UPDATE transfers SET status_queried_at = ? WHERE transfer_id = ?", (codec.to_text(now), transfer_id)
        )

    async def append_ledger(self, entries: Sequence[LedgerEntry]) -> list[int]:
        if not entries:
            return []
        # The IDs first, from the identity's sequence, then every row in one pipelined statement: a transfer may
        # record thousands of entries, and a round trip each would dominate.
        ids = sorted(
            int(r[0])
            for r in await self._all(
                "SELECT nextval(pg_get_serial_sequence('ledger', 'entry_id')) FROM generate_series(1, ?)",
                (len(entries),),
            )
        )
        columns, rows = codec.ledger_rows(ids, entries)
        await self._executemany(f"INSERT INTO ledger ({', '.join(columns)}) VALUES ({_placeholders(columns)})", rows)
        # For replicas still at version 17 in a rolling upgrade: this version reads ledger_action_spans.
        await self._executemany(
            "INSERT INTO ledger_spans VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (first_transferring_party, unit_kind, issuing_registry, issuance) DO UPDATE"
            " SET longest = GREATEST(ledger_spans.longest, excluded.longest)",
            codec.ledger_spans(entries),
        )
        return ids

    async def list_ledger(self, *, after: int = 0, limit: int | None = None) -> list[LedgerEntry]:
        rows = await self._all("SELECT * FROM ledger WHERE entry_id > ? ORDER BY entry_id LIMIT ?", (after, limit))
        return [codec.ledger_from_row(r["entry_id"], dict(r)) for r in rows]

    async def ledger_unresolved(self, party: str) -> list[LedgerEntry]:
        rows = await self._all(
            "SELECT * FROM ledger WHERE action_type = ? AND action_subtype = ? AND first_transferring_party = ?"
            " ORDER BY entry_id",
            (ActionType.TRANSFER.value, ActionSubtype.NOT_YET_DEFINED.value, party),
        )
        return [codec.ledger_from_row(r["entry_id"], dict(r)) for r in rows]

    async def ledger_of_units(
        self, party: str, space: SerialSpace, start: int, end: int, *, since: int = 0
    ) -> list[LedgerEntry]:
        # Each action type's part of the index over its own window, as on SQLite (migration 18).
        key = (party, space.unit_kind, space.issuing_registry, space.issuance)
        spans = [(str(r[0]), int(r[1])) for r in await self._all(codec.LEDGER_ACTION_SPANS, key)]
        if not spans:
            return []
        rows = await self._all(*codec.ledger_of_units_query(party, space, start, end, since, spans))
        return [codec.ledger_from_row(r["entry_id"], dict(r)) for r in rows]

    async def acquisitions_of_units_each(
        self, party: str, space: SerialSpace, wanted: Sequence[tuple[int, int]]
    ) -> list[list[LedgerEntry]]:
        found: list[list[LedgerEntry]] = [[] for _ in wanted]
        key = (party, space.unit_kind, space.issuing_registry, space.issuance)
        spans = {str(r[0]): int(r[1]) for r in await self._all(codec.LEDGER_ACTION_SPANS, key)}
        longest = spans.get(ActionType.ACQUISITION.value)
        if not wanted or longest is None:
            return found
        # Each range's part of the index from as far back as the longest Acquisition entry, as on SQLite.
        rows = await self._all(
            "SELECT q.i AS wanted, l.* FROM unnest(?::bigint[], ?::bigint[]) WITH ORDINALITY AS q(lo, hi, i)"
            " CROSS JOIN LATERAL (SELECT * FROM ledger WHERE first_transferring_party = ? AND action_type = ?"
            " AND unit_kind = ? AND issuing_registry = ? AND issuance = ? AND serial_start >= q.lo - ?::bigint"
            " AND serial_start <= q.hi AND serial_end >= q.lo) l ORDER BY l.entry_id",
            (
                [lo for lo, _ in wanted],
                [hi for _, hi in wanted],
                party,
                ActionType.ACQUISITION.value,
                *key[1:],
                longest,
            ),
        )
        for r in rows:
            found[int(r["wanted"]) - 1].append(codec.ledger_from_row(r["entry_id"], dict(r)))
        return found

    async def recorded_approaches(self, authorization_id: str) -> list[str]:
        rows = await self._all(codec.RECORDED_APPROACHES, (authorization_id,))
        return [str(r[0]) for r in rows]

    async def ledger_parties(self, space: SerialSpace) -> list[str]:
        rows = await self._all(codec.LEDGER_PARTIES, (space.unit_kind, space.issuing_registry, space.issuance))
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
        before = await self._one(
            f"SELECT {columns} FROM ledger WHERE {where} AND serial_start < ? ORDER BY serial_start DESC LIMIT 1",
            (*key, start),
        )
        inside = await self._all(
            f"SELECT {columns} FROM ledger WHERE {where} AND serial_start >= ? AND serial_start <= ?",
            (*key, start, end),
        )
        rows = [*([before] if before is not None and before[2] >= start else []), *inside]
        return [(int(r[0]), space, int(r[1]), int(r[2])) for r in rows]

    async def ledger_of_action(self, action_id: str) -> list[LedgerEntry]:
        rows = await self._all("SELECT * FROM ledger WHERE transfer_id = ? ORDER BY entry_id", (action_id,))
        return [codec.ledger_from_row(r["entry_id"], dict(r)) for r in rows]

    async def _ledger_where(self, where: str, params: Sequence[Any], batch: int) -> AsyncIterator[LedgerEntry]:
        after = 0
        while True:
            rows = await self._all(
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
        # The digits in range too, as on SQLite: "2025-12-32T..." sorts after the last instant of its year.
        row = await self._one(
            "SELECT entry_id, action_date FROM ledger WHERE action_date > ?"
            " AND action_date !~ '^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]"
            ":[0-5][0-9][.][0-9]{6}Z$'"
            " ORDER BY entry_id LIMIT 1",
            (codec.to_text(instant),),
        )
        return None if row is None else (int(row["entry_id"]), str(row["action_date"]))

    async def ledger_totals(self) -> list[LedgerTotal]:
        # Kept as the ledger changes (migration 19), as on SQLite.
        rows = await self._all(
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
        return {
            int(r[0]): int(r[1]) for r in await self._all("SELECT year, quantity FROM reported_emissions ORDER BY year")
        }

    async def set_reported_emissions(self, year: int, quantity: int, now: dt.datetime) -> None:
        await self._execute(
            "INSERT INTO reported_emissions VALUES (?, ?, ?) ON CONFLICT (year) DO UPDATE"
            " SET quantity = excluded.quantity, recorded_at = excluded.recorded_at",
            (year, quantity, codec.to_text(now)),
        )

    async def locked_periods(self) -> list[LockedPeriod]:
        return [
            LockedPeriod(r["first_year"], r["last_year"], codec.from_text(r["locked_at"]), r["reason"])
            for r in await self._all("SELECT * FROM locked_periods ORDER BY first_year, last_year")
        ]

    async def insert_locked_period(self, lock: LockedPeriod) -> None:
        if not await self._execute(
            "INSERT INTO locked_periods VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (lock.first_year, lock.last_year, codec.to_text(lock.locked_at), lock.reason),
        ):
            raise StoreConflict(f"{lock.first_year}-{lock.last_year} is already locked")

    async def get_setting(self, name: str) -> str | None:
        row = await self._one("SELECT value FROM settings WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    async def put_setting(self, name: str, value: str, now: dt.datetime) -> None:
        await self._execute(
            "INSERT INTO settings VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
            " recorded_at = excluded.recorded_at",
            (name, value, codec.to_text(now)),
        )

    # the partner exchange

    async def _channel(self, direction: str, peer: str) -> ChannelState:
        row = await self._one("SELECT * FROM channels WHERE direction = ? AND peer = ?", (direction, peer))
        return ChannelState() if row is None else ChannelState(row["last_sequence"], bytes(row["last_hash"]))

    async def _set_channel(self, direction: str, peer: str, state: ChannelState) -> None:
        await self._execute(
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
        outbox_id: int = await self._value(
            "INSERT INTO outbox (receiver, message_id, kind, transfer_id, body, state, next_attempt_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING outbox_id",
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
        return outbox_id

    async def _heads(self, *, claim: bool = False) -> list[Record]:
        # A partner's lane is delivered one message at a time: trust documents first (a statement signed by a
        # rotated key needs the partner to know the key), then statements in the order they were queued. A claim
        # locks the heads it reads, skipping those another transaction holds.
        lock = " FOR UPDATE OF o SKIP LOCKED" if claim else ""
        return await self._all(
            "SELECT o.* FROM outbox o JOIN ("
            "  SELECT receiver, MIN(CASE WHEN kind = 'trust' THEN outbox_id - 9223372036854775807 ELSE outbox_id END)"
            "  AS rank FROM outbox WHERE state = 'pending' GROUP BY receiver"
            ") h ON o.receiver = h.receiver"
            " AND (CASE WHEN o.kind = 'trust' THEN o.outbox_id - 9223372036854775807 ELSE o.outbox_id END) = h.rank"
            " WHERE o.state = 'pending'" + lock
        )

    async def _lane_leases(self, owner: str) -> dict[str, str]:
        """The latest lease end on each lane's pending messages held by owners other than ``owner``."""
        rows = await self._all(
            "SELECT receiver, MAX(lease_until) AS until FROM outbox"
            " WHERE state = 'pending' AND lease_owner NOT IN ('', ?) GROUP BY receiver",
            (owner,),
        )
        return {r["receiver"]: r["until"] for r in rows}

    async def lane_heads(
        self, now: dt.datetime, limit: int, *, only: Collection[str] | None = None
    ) -> list[OutboxMessage]:
        due = codec.to_text(now)
        heads = [_outbox_message(r) for r in codec.of_lanes(await self._heads(), only) if r["next_attempt_at"] <= due]
        heads.sort(key=lambda m: (m.next_attempt_at, m.outbox_id))
        return heads[:limit]

    async def next_due_at(
        self, *, skip: Collection[str] = (), only: Collection[str] | None = None
    ) -> dt.datetime | None:
        heads = codec.of_lanes(await self._heads(), only)
        leases = await self._lane_leases("")
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
        leased = {receiver for receiver, until in (await self._lane_leases(owner)).items() if until > due}.union(skip)
        heads = codec.of_lanes(await self._heads(claim=True), only)
        rows = [r for r in heads if r["next_attempt_at"] <= due and r["receiver"] not in leased]
        rows.sort(key=lambda r: (r["next_attempt_at"], r["outbox_id"]))
        claimed = rows[:limit]
        await self._executemany(
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
        rows = await self._all(
            "SELECT * FROM outbox WHERE receiver = ? AND state = 'pending' AND kind != 'trust' AND outbox_id > ?"
            " ORDER BY outbox_id LIMIT ?",
            (head.receiver, head.outbox_id, limit),
        )
        run = []
        for row in rows:
            if row["next_attempt_at"] > due or (row["lease_owner"] not in ("", owner) and row["lease_until"] > due):
                break
            run.append(row)
        await self._executemany(
            "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE outbox_id = ?",
            [(owner, codec.to_text(until), r["outbox_id"]) for r in run],
        )
        return [_outbox_message(r) for r in run]

    async def holds_lease(self, outbox_id: int, owner: str) -> bool:
        found = await self._one("SELECT 1 FROM outbox WHERE outbox_id = ? AND lease_owner = ?", (outbox_id, owner))
        return found is not None

    async def trust_pending(self, receiver: str) -> bool:
        found = await self._one(
            "SELECT 1 FROM outbox WHERE receiver = ? AND state = 'pending' AND kind = 'trust' LIMIT 1", (receiver,)
        )
        return found is not None

    async def release_lease(self, outbox_id: int, owner: str) -> None:
        await self._execute(
            "UPDATE outbox SET lease_owner = '', lease_until = '' WHERE outbox_id = ? AND lease_owner = ?",
            (outbox_id, owner),
        )

    async def release_leases_of(self, owner: str) -> int:
        return await self._execute(
            "UPDATE outbox SET lease_owner = '', lease_until = '' WHERE state = 'pending' AND lease_owner = ?", (owner,)
        )

    async def get_outbox(self, message_id: str) -> OutboxMessage | None:
        row = await self._one("SELECT * FROM outbox WHERE message_id = ?", (message_id,))
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
        return [_outbox_message(r) for r in await self._all(sql + " ORDER BY outbox_id", params)]

    async def outbox_has_for_transfer(
        self, transfer_id: str, kinds: Sequence[OutboxKind], states: Sequence[OutboxState] = (OutboxState.PENDING,)
    ) -> bool:
        row = await self._one(
            f"SELECT 1 FROM outbox WHERE transfer_id = ? AND state IN ({_placeholders(states)})"
            f" AND kind IN ({_placeholders(kinds)}) LIMIT 1",
            (transfer_id, *(s.value for s in states), *(k.value for k in kinds)),
        )
        return row is not None

    async def mark_attempt(self, outbox_id: int, sequence: int, sealed: bytes) -> None:
        await self._execute(
            "UPDATE outbox SET sequence = ?, sealed = ? WHERE outbox_id = ?", (sequence, sealed, outbox_id)
        )

    async def mark_delivered(
        self, outbox_id: int, payload_digest: bytes, now: dt.datetime, *, sequence: int | None = None
    ) -> None:
        await self._execute(
            "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, last_code = 0, payload_digest = ?,"
            " settled_at = ?, sequence = COALESCE(?, sequence) WHERE outbox_id = ?",
            (payload_digest, codec.to_text(now), sequence, outbox_id),
        )

    async def settle(self, outbox_id: int, state: OutboxState, *, code: int, error: str, now: dt.datetime) -> None:
        await self._execute(
            "UPDATE outbox SET state = ?, attempts = attempts + (CASE WHEN ? = 'dead' THEN 1 ELSE 0 END),"
            " last_code = ?, last_error = ?, settled_at = ? WHERE outbox_id = ?",
            (state.value, state.value, code, error[:2000], codec.to_text(now), outbox_id),
        )

    async def reschedule(self, outbox_id: int, *, code: int, error: str, next_attempt_at: dt.datetime) -> None:
        await self._execute(
            "UPDATE outbox SET attempts = attempts + 1, last_code = ?, last_error = ?, next_attempt_at = ?"
            " WHERE outbox_id = ?",
            (code, error[:2000], codec.to_text(next_attempt_at), outbox_id),
        )

    async def retry_outbox(self, outbox_id: int, now: dt.datetime) -> None:
        await self._execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, sequence = 0, sealed = '\\x'::bytea,"
            " next_attempt_at = ?, lease_owner = '', lease_until = '',"
            " settled_at = NULL WHERE outbox_id = ?",
            (codec.to_text(now), outbox_id),
        )

    async def requeue_from(self, receiver: str, sequence: int, now: dt.datetime) -> int:
        return await self._execute(
            "UPDATE outbox SET state = 'pending', next_attempt_at = ?, settled_at = NULL"
            " WHERE receiver = ? AND state = 'delivered' AND kind != 'trust' AND sequence >= ?",
            (codec.to_text(now), receiver, sequence),
        )

    async def highest_sequence_sent(self, receiver: str) -> int:
        row = await self._one(
            "SELECT COALESCE(MAX(sequence), 0) FROM outbox WHERE receiver = ? AND kind != 'trust'", (receiver,)
        )
        assert row is not None
        return int(row[0])

    async def delivered_digest(self, receiver: str, sequence: int) -> bytes | None:
        row = await self._one(
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
        # The next index after the largest, not a sequence's: a rolled-back transaction must leave no gap in
        # 1, 2, 3, ..., which the Merkle tree over the log needs. Write transactions run one at a time.
        index: int = await self._value(
            "INSERT INTO message_log (log_index, direction, peer, message_id, kind, form, envelope, recorded_at,"
            " transfer_id) SELECT COALESCE(MAX(log_index), 0) + 1, ?, ?, ?, ?, ?, ?, ?, ? FROM message_log"
            " RETURNING log_index",
            (direction, peer, message_id, kind.value, form, envelope, codec.to_text(now), transfer_id),
        )
        return index

    async def list_log(self) -> list[LogEntry]:
        return [_log_entry(r) for r in await self._all("SELECT * FROM message_log ORDER BY log_index")]

    async def logged(self, peer: str, message_id: str) -> list[LogEntry]:
        return [
            _log_entry(r)
            for r in await self._all(
                "SELECT * FROM message_log WHERE peer = ? AND message_id = ? ORDER BY log_index", (peer, message_id)
            )
        ]

    async def record_message(self, message: StoredMessage) -> None:
        if not await self._execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                message.direction,
                message.peer,
                message.message_id,
                message.envelope,
                message.receipt,
                codec.to_text(message.recorded_at),
            ),
        ):
            raise StoreConflict(f"message {message.message_id!r} from {message.peer!r} is already recorded")

    async def get_message(self, direction: str, peer: str, message_id: str) -> StoredMessage | None:
        row = await self._one(
            "SELECT * FROM messages WHERE direction = ? AND peer = ? AND message_id = ?", (direction, peer, message_id)
        )
        return None if row is None else _message(row)

    async def list_messages(self) -> list[StoredMessage]:
        return [_message(r) for r in await self._all("SELECT * FROM messages ORDER BY recorded_at, message_id")]

    # trust documents and held statements

    async def put_trust_document(self, party: str, version: int, envelope: bytes, now: dt.datetime) -> None:
        await self._execute(
            "INSERT INTO trust_documents VALUES (?, ?, ?, ?) ON CONFLICT (party, version) DO NOTHING",
            (party, version, envelope, codec.to_text(now)),
        )

    async def latest_trust_document(self, party: str) -> tuple[int, bytes] | None:
        row = await self._one(
            "SELECT version, envelope FROM trust_documents WHERE party = ? ORDER BY version DESC LIMIT 1", (party,)
        )
        return None if row is None else (row["version"], bytes(row["envelope"]))

    async def trust_document(self, party: str, version: int) -> bytes | None:
        row = await self._one("SELECT envelope FROM trust_documents WHERE party = ? AND version = ?", (party, version))
        return None if row is None else bytes(row["envelope"])

    async def trust_documents(self, party: str) -> list[tuple[int, bytes]]:
        rows = await self._all(
            "SELECT version, envelope FROM trust_documents WHERE party = ? ORDER BY version", (party,)
        )
        return [(int(r["version"]), bytes(r["envelope"])) for r in rows]

    async def settle_superseded_trust(self, receiver: str, outbox_id: int, now: dt.datetime) -> int:
        return await self._execute(
            "UPDATE outbox SET state = 'delivered', settled_at = ?, last_error = 'superseded by a later push'"
            " WHERE receiver = ? AND kind = 'trust' AND state = 'pending' AND outbox_id < ?",
            (codec.to_text(now), receiver, outbox_id),
        )

    async def hold_statement(self, sender: str, sequence: int, envelope: bytes, now: dt.datetime) -> None:
        await self._execute(
            "INSERT INTO held_statements VALUES (?, ?, ?, ?) ON CONFLICT (sender, sequence) DO NOTHING",
            (sender, sequence, envelope, codec.to_text(now)),
        )

    async def held_statement(self, sender: str, sequence: int) -> bytes | None:
        row = await self._one(
            "SELECT envelope FROM held_statements WHERE sender = ? AND sequence = ?", (sender, sequence)
        )
        return None if row is None else bytes(row["envelope"])

    async def release_held(self, sender: str, up_to: int) -> None:
        await self._execute("DELETE FROM held_statements WHERE sender = ? AND sequence <= ?", (sender, up_to))

    async def count_held(self) -> int:
        row = await self._one("SELECT COUNT(*) FROM held_statements")
        assert row is not None
        return int(row[0])

    # reconciliation

    async def fold_reconciliation(self, party: str, limit: int = 10_000) -> int:
        ids = [
            r[0]
            for r in await self._all("SELECT entry_id FROM reconciliation_dirty ORDER BY entry_id LIMIT ?", (limit,))
        ]
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
            for row in await self._all(f"SELECT * FROM reconciliation_leaves WHERE entry_id IN ({marks})", chunk):
                add(row["partner"], row["group_key"], row["bucket"], row["quantity"], bytes(row["digest"]), -1)
            await self._execute(f"DELETE FROM reconciliation_leaves WHERE entry_id IN ({marks})", chunk)
            leaves = []
            rows = await self._all(f"SELECT * FROM ledger WHERE entry_id IN ({marks})", chunk)
            entries = [codec.ledger_from_row(row["entry_id"], dict(row)) for row in rows]
            for entry, partner, block in await reconciled_blocks(self, party, entries):
                body = block.encode()
                group, bucket, digest = block.group.text(), block.bucket, digest_of(body)
                leaves.append((entry.entry_id, partner, group, bucket, body, digest, block.quantity))
                add(partner, group, bucket, block.quantity, digest, 1)
            await self._executemany("INSERT INTO reconciliation_leaves VALUES (?, ?, ?, ?, ?, ?, ?)", leaves)
            await self._execute(f"DELETE FROM reconciliation_dirty WHERE entry_id IN ({marks})", chunk)
        limb_columns = [f"h{i}" for i in range(LIMBS)]
        columns = ["blocks", "quantity_high", "quantity_low", *limb_columns]
        await self._executemany(
            f"INSERT INTO reconciliation_nodes (partner, group_key, level, prefix, {', '.join(columns)})"
            f" VALUES ({_placeholders([0] * (4 + len(columns)))})"
            " ON CONFLICT (partner, level, group_key, prefix) DO UPDATE SET "
            + ", ".join(f"{c} = reconciliation_nodes.{c} + excluded.{c}" for c in columns),
            [(*key, *values) for key, values in deltas.items() if any(values)],
        )
        return len(ids)

    async def reconciliation_pending(self) -> int:
        row = await self._one("SELECT COUNT(*) FROM reconciliation_dirty")
        return int(row[0]) if row else 0

    async def reconciliation_totals(self, partner: str) -> dict[GroupKey, Totals]:
        rows = await self._all(
            "SELECT * FROM reconciliation_nodes WHERE partner = ? AND level = 0 AND blocks != 0", (partner,)
        )
        return {GroupKey.from_text(r["group_key"]): _totals(r) for r in rows}

    async def reconciliation_nodes(self, partner: str, refs: Sequence[NodeRef]) -> dict[NodeRef, Totals]:
        found = {}
        for ref in refs:
            row = await self._one(
                "SELECT * FROM reconciliation_nodes WHERE partner = ? AND group_key = ? AND level = ? AND prefix = ?",
                (partner, ref.group.text(), ref.level, ref.prefix),
            )
            if row is not None and row["blocks"] != 0:
                found[ref] = _totals(row)
        return found

    async def reconciliation_children(self, partner: str, ref: NodeRef) -> dict[int, Totals]:
        first = ref.prefix << FANOUT
        rows = await self._all(
            "SELECT * FROM reconciliation_nodes WHERE partner = ? AND group_key = ? AND level = ?"
            " AND prefix BETWEEN ? AND ? AND blocks != 0",
            (partner, ref.group.text(), ref.level + 1, first, first + (1 << FANOUT) - 1),
        )
        return {r["prefix"]: _totals(r) for r in rows}

    async def reconciliation_blocks(self, partner: str, ref: NodeRef) -> list[ReconciledBlock]:
        low, high = bucket_range(ref.level, ref.prefix)
        rows = await self._all(
            "SELECT body FROM reconciliation_leaves WHERE partner = ? AND group_key = ? AND bucket BETWEEN ? AND ?",
            (partner, ref.group.text(), low, high),
        )
        return sorted(ReconciledBlock.decode(bytes(r[0])) for r in rows)

    async def insert_reconciliation(self, run: ReconciliationRun) -> None:
        row = _run_row(run)
        await self._execute(
            f"INSERT INTO reconciliation_runs ({', '.join(row)}) VALUES ({_placeholders(list(row))})",
            tuple(row.values()),
        )

    async def update_reconciliation(self, run: ReconciliationRun) -> None:
        row = _run_row(run)
        del row["run_id"]
        await self._execute(
            f"UPDATE reconciliation_runs SET {', '.join(f'{c} = ?' for c in row)} WHERE run_id = ?",
            (*row.values(), run.run_id),
        )

    async def get_reconciliation(self, run_id: str) -> ReconciliationRun | None:
        row = await self._one("SELECT * FROM reconciliation_runs WHERE run_id = ?", (run_id,))
        return None if row is None else _run(row)

    async def list_reconciliations(
        self, partner: str = "", limit: int = 100, *, role: RunRole | None = None
    ) -> list[ReconciliationRun]:
        # Two statements, each read through its index in order up to the limit: one "partner = ? or any" reads
        # every run ever made and sorts them.
        in_role = "" if role is None else " AND role = ?"
        roles = () if role is None else (role.value,)
        if partner:
            rows = await self._all(
                f"SELECT * FROM reconciliation_runs WHERE partner = ?{in_role}"
                " ORDER BY started_at DESC, run_id LIMIT ?",
                (partner, *roles, limit),
            )
        else:
            rows = await self._all(
                f"SELECT * FROM reconciliation_runs WHERE TRUE{in_role} ORDER BY started_at DESC, run_id LIMIT ?",
                (*roles, limit),
            )
        return [_run(r) for r in rows]

    async def running_reconciliations(
        self, role: RunRole, last_step_before: dt.datetime, limit: int
    ) -> list[ReconciliationRun]:
        rows = await self._all(
            "SELECT * FROM reconciliation_runs WHERE status = ? AND role = ? AND updated_at <= ?"
            " ORDER BY updated_at, run_id LIMIT ?",
            (int(Status.RUNNING), role.value, codec.to_text(last_step_before), limit),
        )
        return [_run(r) for r in rows]

    async def freeze(self, run_id: str, ranges: Sequence[tuple[SerialSpace, int, int]]) -> None:
        await self._executemany(
            "INSERT INTO frozen_ranges VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(run_id, s.unit_kind, s.issuing_registry, s.issuance, start, end) for s, start, end in ranges],
        )

    async def unfreeze(self, run_id: str) -> None:
        await self._execute("DELETE FROM frozen_ranges WHERE run_id = ?", (run_id,))

    async def frozen_by(self, space: SerialSpace, start: int, end: int) -> list[str]:
        rows = await self._all(
            "SELECT f.run_id FROM frozen_ranges f LEFT JOIN reconciliation_runs r ON r.run_id = f.run_id"
            " WHERE f.unit_kind = ? AND f.issuing_registry = ? AND f.issuance = ? AND f.serial_start <= ?"
            " AND f.serial_end >= ? GROUP BY f.run_id ORDER BY MAX(r.started_at) DESC, f.run_id",
            (space.unit_kind, space.issuing_registry, space.issuance, end, start),
        )
        return [r[0] for r in rows]

    async def frozen_spaces(self) -> frozenset[SerialSpace]:
        rows = await self._all("SELECT DISTINCT unit_kind, issuing_registry, issuance FROM frozen_ranges")
        return frozenset(SerialSpace(r[0], r[1], r[2]) for r in rows)

    async def fold_log_tree(self) -> int:
        row = await self._one("SELECT COALESCE(MAX(node_index) + 1, 0) FROM log_tree WHERE level = 0")
        size = int(row[0]) if row else 0
        while True:
            rows = await self._all(
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
            await self._executemany("INSERT INTO log_tree VALUES (?, ?, ?)", added)
            size += len(leaves)

    async def log_tree_pending(self) -> int:
        row = await self._one(
            "SELECT (SELECT COALESCE(MAX(log_index), 0) FROM message_log)"
            " - (SELECT COALESCE(MAX(node_index) + 1, 0) FROM log_tree WHERE level = 0)"
        )
        return int(row[0]) if row else 0

    async def log_tree_nodes(self, coordinates: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        found = {}
        for level, index in coordinates:
            row = await self._one("SELECT hash FROM log_tree WHERE level = ? AND node_index = ?", (level, index))
            if row is not None:
                found[(level, index)] = bytes(row[0])
        return found

    async def log_of_transfer(self, transfer_id: str) -> list[LogEntry]:
        # The second condition is the partial index's own: without it the index is not used, for the query's
        # transfer ID might be the empty one it leaves out, and every message ever logged is read.
        rows = await self._all(
            "SELECT * FROM message_log WHERE transfer_id = ? AND transfer_id != '' ORDER BY log_index", (transfer_id,)
        )
        return [_log_entry(r) for r in rows]

    async def partner_log_head(self, partner: str) -> PartnerLogHead | None:
        row = await self._one("SELECT * FROM partner_log_heads WHERE partner = ?", (partner,))
        if row is None:
            return None
        return PartnerLogHead(
            row["tree_size"], bytes(row["root_hash"]), codec.from_text(row["seen_at"]), row["partner_saw"]
        )

    async def set_partner_log_head(self, partner: str, head: PartnerLogHead) -> None:
        await self._execute(
            "INSERT INTO partner_log_heads VALUES (?, ?, ?, ?, ?) ON CONFLICT (partner) DO UPDATE SET"
            " tree_size = excluded.tree_size, root_hash = excluded.root_hash, seen_at = excluded.seen_at,"
            " partner_saw = excluded.partner_saw",
            (partner, head.tree_size, head.root_hash, codec.to_text(head.seen_at), head.partner_saw),
        )
        if head.tree_size:
            await self._execute(
                "INSERT INTO partner_log_history VALUES (?, ?, ?)"
                " ON CONFLICT (partner, tree_size) DO UPDATE SET root_hash = excluded.root_hash",
                (partner, head.tree_size, head.root_hash),
            )

    async def partner_log_root(self, partner: str, tree_size: int) -> bytes | None:
        row = await self._one(
            "SELECT root_hash FROM partner_log_history WHERE partner = ? AND tree_size = ?", (partner, tree_size)
        )
        return None if row is None else bytes(row[0])

    # operator idempotency

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
            sql += " AND kind = ANY(?::text[])"
            params.append([k.value for k in kinds])
        rows = await self._all(f"{codec.CHANGES.format(sql + ' ORDER BY position LIMIT ?')}", (*params, limit))
        return [
            codec.change_from_row(r["position"], r["kind"], r["body"], r["recorded_at"], r["kept_terms"]) for r in rows
        ]

    async def change_digest_at(self, position: int) -> bytes | None:
        row = await self._one("SELECT position, kind, body, recorded_at FROM changes WHERE position = ?", (position,))
        if row is None:
            return None
        return change_digest(int(row["position"]), row["kind"], row["recorded_at"], row["body"])

    async def last_change_position(self) -> int:
        row = await self._one(
            "SELECT GREATEST((SELECT MAX(position) FROM changes), (SELECT through FROM changes_pruned)) AS last"
        )
        return int(row["last"]) if row and row["last"] is not None else 0

    async def changes_pruned(self) -> PrunedChanges:
        row = await self._one("SELECT through, digest FROM changes_pruned")
        assert row is not None
        return PrunedChanges(int(row["through"]), bytes(row["digest"]))

    async def prune_changes(self, through: int, limit: int) -> tuple[PrunedChanges, int]:
        pruned = await self.changes_pruned()
        last = await self._one(
            "SELECT position, kind, body, recorded_at FROM changes WHERE position IN (SELECT position FROM changes"
            " WHERE position > ? AND position <= ? ORDER BY position LIMIT ?) ORDER BY position DESC LIMIT 1",
            (pruned.through, through, limit),
        )
        if last is None:
            return pruned, 0
        position = int(last["position"])
        digest = change_digest(position, last["kind"], last["recorded_at"], last["body"])
        await self._execute("UPDATE changes_pruned SET through = ?, digest = ?", (position, digest))
        removed = await self._execute("DELETE FROM changes WHERE position <= ?", (position,))
        return PrunedChanges(position, digest), removed

    async def get_idempotent(self, caller: str, method: str, key: str) -> IdempotentResult | None:
        row = await self._one(
            "SELECT request_hash, response FROM idempotency WHERE caller = ? AND method = ? AND idempotency_key = ?",
            (caller, method, key),
        )
        return None if row is None else IdempotentResult(row["request_hash"], bytes(row["response"]))

    async def put_idempotent(self, caller: str, method: str, key: str, result: IdempotentResult) -> None:
        await self._execute(
            "INSERT INTO idempotency VALUES (?, ?, ?, ?, ?)",
            (caller, method, key, result.request_hash, result.response),
        )


def _stored_block(row: Record) -> StoredBlock:
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


def _totals(row: Record) -> Totals:
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


def _run(row: Record) -> ReconciliationRun:
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


def _log_entry(row: Record) -> LogEntry:
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


def _outbox_message(row: Record) -> OutboxMessage:
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


def _message(row: Record) -> StoredMessage:
    return StoredMessage(
        direction=row["direction"],
        peer=row["peer"],
        message_id=row["message_id"],
        envelope=bytes(row["envelope"]),
        receipt=bytes(row["receipt"]),
        recorded_at=codec.from_text(row["recorded_at"]),
    )
