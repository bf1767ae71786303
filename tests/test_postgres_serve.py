"""``database = "postgresql://..."`` as an operator meets it: real ``carbon-gateway serve`` processes.

A bad URL, an unreachable server or a database that does not exist ends the start with one line naming the
``database`` setting and exit status 2, never a traceback and never the password. Two ``serve`` processes of
one Party started at once on one database both come up (one migrates, the other waits for it) and serve the
same data.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, records_pb2
from tests import postgres
from tests.processes import free_ports
from tests.services import require_service
from tests.test_startup import SERVE, TIMEOUT, _assert_one_line_naming, _config, _health, _keys, _serve

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("mysql://gateway@127.0.0.1/carbon", ("database", "mysql://")),
        (f"postgresql://gateway:{SECRET}@127.0.0.1:notaport/carbon", ("database",)),
        ("postgresql://gateway@127.0.0.1:5432", ("database", "name one database")),
        # Port 1 on loopback: nothing listens there, the connection is refused at once.
        (f"postgresql://gateway:{SECRET}@127.0.0.1:1/carbon", ("database", "127.0.0.1:1", "***")),
        (f"postgres://gateway@127.0.0.1:1/carbon?password={SECRET}", ("database", "127.0.0.1:1")),
        # A URL of thousands of characters is cut short in the one line, not repeated whole.
        (f"postgresql://gateway:{SECRET}@127.0.0.1:1/{'x' * 5000}", ("database", "127.0.0.1:1", "characters)")),
    ],
)
def test_a_bad_or_unreachable_database_url_is_one_line_without_the_password(
    tmp_path: Path, url: str, names: tuple[str, ...]
) -> None:
    folder = _keys(tmp_path)
    result = _serve(_config(folder, database=url))
    _assert_one_line_naming(result, *names)
    assert SECRET not in result.stderr + result.stdout
    assert len(result.stderr) < 1000


def test_a_database_the_server_does_not_have_is_one_line_without_the_password(tmp_path: Path) -> None:
    admin = postgres.admin_url()
    absent = postgres.database_url(admin, postgres.unique_name("absent"))
    with_password = absent.replace("://postgres@", f"://postgres:{SECRET}@", 1)
    result = _serve(_config(_keys(tmp_path), database=with_password))
    _assert_one_line_naming(result, "database", "does not exist")
    assert SECRET not in result.stderr + result.stdout


def test_config_check_names_a_database_the_server_does_not_have_as_serve_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config check` said OK of a configuration whose PostgreSQL database did not exist, which `serve` then
    refused: the server's own answer (no such database, a refused login) is a problem of the file."""
    from gateway.cli import main

    admin = postgres.admin_url()
    absent = postgres.database_url(admin, postgres.unique_name("absent"))
    with_password = absent.replace("://postgres@", f"://postgres:{SECRET}@", 1)
    assert main(["config", "check", str(_config(_keys(tmp_path), database=with_password))]) == 2
    err = capsys.readouterr().err
    assert "database:" in err and "does not exist" in err and SECRET not in err
    assert err.count("\n") == 1, err


def test_config_check_names_a_database_another_party_s_gateway_started_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config check` said OK of a PostgreSQL database that keeps another Party's books, which `serve` refuses."""
    import datetime as dt

    from gateway.cli import main
    from gateway.node import PARTY_SETTING
    from gateway.store.postgres import PostgresStore

    admin = postgres.admin_url()

    async def sgp_database() -> str:
        url = await postgres.create_database(admin, "other_party")
        store = await PostgresStore.open(url)
        try:
            async with store.transaction() as tx:  # what serve records at its first start
                await tx.put_setting(PARTY_SETTING, "SGP", dt.datetime.now(dt.UTC))
        finally:
            await store.close()
        return url

    url = asyncio.run(sgp_database())
    try:
        assert main(["config", "check", str(_config(_keys(tmp_path), database=url))]) == 2
        err = capsys.readouterr().err
        assert "database: it keeps SGP's books, and this gateway is CHN's" in err and err.count("\n") == 1, err
    finally:
        asyncio.run(postgres.drop_databases(admin, [url]))


def _open_account(port: int, account_id: str) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            operator_pb2_grpc.OperatorServiceStub(channel).OpenAccount(
                operator_pb2.OpenAccountRequest(
                    idempotency_key=f"open-{account_id}-{port}",
                    account=records_pb2.Account(
                        account_id=account_id, holder_name="Owner", account_type="project owner"
                    ),
                ),
                timeout=20,
            )
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
    return grpc.StatusCode.OK


def _wait_serving(process: subprocess.Popen[bytes], log: Path, port: int) -> None:
    deadline = time.monotonic() + TIMEOUT * 2
    while True:
        assert process.poll() is None, f"the gateway exited during its start: {log.read_text()}"
        try:
            if _health(port) == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


async def _accounts(url: str) -> set[str]:
    connection = await asyncpg.connect(url)
    try:
        return {row[0] for row in await connection.fetch("SELECT account_id FROM accounts")}
    finally:
        await connection.close()


def test_two_serve_processes_started_at_once_share_one_database(tmp_path: Path) -> None:
    admin = postgres.admin_url()
    url = asyncio.run(postgres.create_database(admin, "serve"))
    try:
        folder = _keys(tmp_path)
        distinct = free_ports(4)
        ports = [(distinct[0], distinct[1]), (distinct[2], distinct[3])]
        processes: list[subprocess.Popen[bytes]] = []
        logs = [tmp_path / f"replica-{i}.log" for i in range(2)]
        try:
            for i, (operator_port, partner_port) in enumerate(ports):
                config = _config(
                    folder,
                    database=url,
                    operator=f"127.0.0.1:{operator_port}",
                    partner=f"127.0.0.1:{partner_port}",
                    name=f"replica-{i}.toml",
                )
                with logs[i].open("wb") as stderr:
                    processes.append(subprocess.Popen([*SERVE, str(config)], stdout=subprocess.DEVNULL, stderr=stderr))
            for process, log, (operator_port, _) in zip(processes, logs, ports, strict=True):
                _wait_serving(process, log, operator_port)
            assert _open_account(ports[0][0], "CN-ONE") is grpc.StatusCode.OK
            assert _open_account(ports[1][0], "CN-TWO") is grpc.StatusCode.OK
            # The account one replica opened is the other's too: opening it again there is refused as a duplicate.
            assert _open_account(ports[1][0], "CN-ONE") is grpc.StatusCode.INVALID_ARGUMENT
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                assert process.wait(timeout=TIMEOUT) == 0
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        assert asyncio.run(_accounts(url)) == {"CN-ONE", "CN-TWO"}
        for log in logs:
            assert "Traceback" not in log.read_text()
    finally:
        asyncio.run(postgres.drop_databases(admin, [url]))


def test_another_programs_database_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """``serve`` created the gateway's tables beside another program's in its database, and ``config check`` said
    OK of it: a database with tables but no ``schema_migrations`` is refused, nothing created in it."""
    from gateway.cli import main

    admin = postgres.admin_url()
    url = asyncio.run(postgres.create_database(admin, "other_program"))

    async def tables() -> set[str]:
        connection = await asyncpg.connect(url)
        try:
            rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {str(row[0]) for row in rows}
        finally:
            await connection.close()

    async def create() -> None:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("CREATE TABLE invoices (number BIGINT PRIMARY KEY)")
        finally:
            await connection.close()

    try:
        asyncio.run(create())
        config = _config(_keys(tmp_path), database=url)
        _assert_one_line_naming(_serve(config), "database", "invoices", "not a gateway's database")
        assert main(["config", "check", str(config)]) == 2
        assert asyncio.run(tables()) == {"invoices"}
    finally:
        asyncio.run(postgres.drop_databases(admin, [url]))


async def _execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def test_a_database_with_an_extensions_views_is_taken_for_a_new_one(tmp_path: Path) -> None:
    """An extension's views in the schema (``CREATE EXTENSION pg_stat_statements`` puts two in ``public``) are no
    other program's tables: the database is still a new one, checked OK and migrated."""
    from gateway.cli import main
    from gateway.store.postgres import PostgresStore

    admin = postgres.admin_url()
    url = asyncio.run(postgres.create_database(admin, "extension"))

    async def migrated() -> int:
        await (await PostgresStore.open(url)).close()
        connection = await asyncpg.connect(url)
        try:
            return int(await connection.fetchval("SELECT max(version) FROM schema_migrations"))
        finally:
            await connection.close()

    async def available() -> bool:
        connection = await asyncpg.connect(url)
        try:
            found = await connection.fetchval(
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'"
            )
            return bool(found)
        finally:
            await connection.close()

    try:
        require_service(
            asyncio.run(available()),
            "the PostgreSQL server has no pg_stat_statements extension (its contrib package is not installed)",
        )
        asyncio.run(_execute(url, "CREATE EXTENSION pg_stat_statements"))
        assert main(["config", "check", str(_config(_keys(tmp_path), database=url))]) == 0
        assert asyncio.run(migrated()) > 1
    finally:
        asyncio.run(postgres.drop_databases(admin, [url]))


@pytest.mark.parametrize(
    "password",
    ["s3cr3t#pw", "s3cr3t/pw", "s3cr3t?pw", "s3cr3t[pw", "1/s3cr3t#pw", "1/s3cr3t", "s3@s3cr3t:pw", "s3@s3cr3t"],
)
def test_a_password_not_percent_encoded_is_never_repeated_in_part(tmp_path: Path, password: str) -> None:
    """A ``#``, ``/`` or ``?`` in a password ends the URL's host early: the message quoted the password's start as
    the port that could not be read ("Port could not be cast to integer value as 's3cr3t'"), and with a ``/`` and
    then a ``#`` (or an ``@`` after the ``/``) the URL passed, its rest taken for the database's name, and the
    failed connection repeated the whole URL, password and all."""
    url = f"postgresql://gateway:{password}@127.0.0.1:1/carbon"
    result = _serve(_config(_keys(tmp_path), database=url))
    assert "s3cr3t" not in result.stderr + result.stdout, result.stderr
    _assert_one_line_naming(result, "database", "percent-encoded")


def test_config_check_names_a_database_a_newer_version_migrated_as_serve_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config check` said OK of a PostgreSQL database a newer version had migrated, which `serve` refuses (and
    `config check` refuses in an SQLite file): the check an upgrade's rollback would run first."""
    from gateway.cli import main
    from gateway.store.postgres import PostgresStore

    admin = postgres.admin_url()

    async def newer_database() -> str:
        url = await postgres.create_database(admin, "newer")
        await (await PostgresStore.open(url)).close()
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("INSERT INTO schema_migrations VALUES (10000, 'a later version')")
        finally:
            await connection.close()
        return url

    url = asyncio.run(newer_database())
    try:
        config = _config(_keys(tmp_path), database=url)
        _assert_one_line_naming(_serve(config), "database", "schema version 10000")
        capsys.readouterr()
        assert main(["config", "check", str(config)]) == 2
        err = capsys.readouterr().err
        assert "schema version 10000" in err and "newer version" in err and err.count("\n") == 1, err
    finally:
        asyncio.run(postgres.drop_databases(admin, [url]))


def test_a_user_who_may_not_create_tables_is_told_to_get_the_privilege(tmp_path: Path) -> None:
    """A login without CREATE on the database's schema was told to "name a database of its own": the database
    was the right one, and the user lacked a grant."""
    admin = postgres.admin_url()
    url = asyncio.run(postgres.create_database(admin, "no_create"))
    role = postgres.unique_name("reader")
    try:
        asyncio.run(_execute(url, f'CREATE ROLE "{role}" LOGIN', "REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        as_reader = url.replace("://postgres@", f"://{role}:{SECRET}@", 1)
        result = _serve(_config(_keys(tmp_path), database=as_reader))
        line = _assert_one_line_naming(result, "database", "permission denied", "grant the user CREATE")
        assert SECRET not in line and "of its own" not in line
    finally:
        asyncio.run(postgres.drop_databases(admin, [url]))
        asyncio.run(_execute(admin, f'DROP ROLE IF EXISTS "{role}"'))
