"""Start-up as an operator meets it: real ``carbon-gateway serve`` processes, and the one line a failed start ends with.

Issue 8, defect 15 ("Two gateways on one port") and defect 16 ("Start-up problems end in tracebacks"). A start that
cannot succeed must exit with status 2 after ONE line on stderr that names the setting or the file at fault, never
a traceback, and must leave a gateway already running untouched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, records_pb2
from gateway.harness import self_signed_trust_document
from gateway.node import ADJUSTMENT_SETTING, PARTY_SETTING
from gateway.store.sqlite import SQLiteStore
from signing import generate_key, signer_from_uri
from tests.processes import free_port, free_ports

SERVE = [sys.executable, "-m", "gateway.cli", "serve"]
TIMEOUT = 30.0
"""Seconds a failing ``serve`` may take; a second gateway that binds a taken port would serve on and time out."""


def _keys(folder: Path) -> Path:
    """Keys and trust documents for CHN (this gateway) and CHE (its partner), and a key no document lists."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("chn", "che", "stranger"):
        generate_key(folder / name)
    for party, name in (("CHN", "chn"), ("CHE", "che")):
        signer = signer_from_uri(str(folder / f"{name}.key"))
        (folder / f"{name}.trust.json").write_bytes(self_signed_trust_document(party, signer).to_json())
    return folder


def _config(
    folder: Path,
    *,
    database: str = "chn.db",
    signer: str = "file:chn.key",
    trust_document: str = "chn.trust.json",
    operator: str = "127.0.0.1:0",
    partner: str = "127.0.0.1:0",
    http: str | None = None,
    partner_trust_document: str = "che.trust.json",
    tail: str = "",
    name: str = "chn.toml",
    operator_settings: str = "unauthenticated_loopback = true\n",
) -> Path:
    """Write a configuration file like the README's; ``tail`` is TOML appended at the end."""

    def text(value: str) -> str:
        return json.dumps(value)  # a JSON string is a TOML basic string

    http_table = f"[http]\nlisten = {text(http)}\n" if http is not None else ""
    config = folder / name
    config.write_text(
        f"party = 'CHN'\ndatabase = {text(database)}\nsigner = {text(signer)}\n"
        f"trust_document = {text(trust_document)}\n\n"
        f"[operator]\nlisten = {text(operator)}\n{operator_settings}\n"
        f"[partner]\nlisten = {text(partner)}\n\n{http_table}\n"
        f"[[partners]]\nparty = 'CHE'\naddress = '127.0.0.1:9'\ntrust_document = {text(partner_trust_document)}\n\n"
        f"{tail}\n",
        encoding="utf-8",
    )
    return config


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE, str(config)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _assert_one_line_naming(result: subprocess.CompletedProcess[str], *names: str) -> str:
    """The start failed with status 2 and one line on stderr that names each of ``names``; return the line."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("carbon-gateway serve: "), line
    assert line.startswith(f"carbon-gateway serve: {result.args[-1]}"), line  # the file, then the setting
    for name in names:
        assert name in line, f"{name!r} not in {line!r}"
    assert result.returncode == 2, result.stderr
    return line


# Defect 15: two gateways on one port


def _health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    status: int = response.status
    return status


def _open_account(port: int, account_id: str) -> None:
    """Open an account over a fresh connection (a port shared with another process would split these)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        operator_pb2_grpc.OperatorServiceStub(channel).OpenAccount(
            operator_pb2.OpenAccountRequest(
                idempotency_key=f"open-{account_id}",
                account=records_pb2.Account(account_id=account_id, holder_name="Owner", account_type="project owner"),
            ),
            timeout=10,
        )


def _accounts(database: Path) -> set[str]:
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT account_id FROM accounts")}


def _wait_until_serving(process: subprocess.Popen[bytes], log: Path, operator_port: int, http_port: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert process.poll() is None, f"the first gateway exited during its start: {log.read_text()}"
        try:
            assert _health(operator_port) == health_pb2.HealthCheckResponse.SERVING
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as response:
                assert response.status == 200
            return
        except (grpc.RpcError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def _serving(config: Path, log: Path, operator_port: int, http_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A ``serve`` process of ``config``, its standard error in ``log``, once it serves; killed at the end if
    the test has not stopped it."""
    with log.open("wb") as stderr:
        process = subprocess.Popen([*SERVE, str(config)], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_until_serving(process, log, operator_port, http_port)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_defect_15_a_second_gateway_on_a_taken_port_stops_with_a_clear_error(tmp_path: Path) -> None:
    folder = _keys(tmp_path)
    operator_port, partner_port, http_port = free_ports(3)
    first_config = _config(
        folder,
        database="first.db",
        operator=f"127.0.0.1:{operator_port}",
        partner=f"127.0.0.1:{partner_port}",
        http=f"127.0.0.1:{http_port}",
        name="first.toml",
    )
    with _serving(first_config, tmp_path / "first.log", operator_port, http_port) as first:
        _open_account(operator_port, "CN-FIRST-0001")

        # A second gateway with its own database and one port of the first, each setting on its own; the other
        # ports are free (0).
        seconds = {
            "operator.listen": ("operator", f"127.0.0.1:{operator_port}"),
            "partner.listen": ("partner", f"127.0.0.1:{partner_port}"),
            "http.listen": ("http", f"127.0.0.1:{http_port}"),
        }
        configs = {
            setting: _config(folder, database=f"second-{setting}.db", name=f"second-{setting}.toml", **{key: address})
            for setting, (key, address) in seconds.items()
        }
        with ThreadPoolExecutor(len(configs)) as pool:
            results = dict(zip(configs, pool.map(_serve, configs.values()), strict=True))

        for setting, result in results.items():
            line = _assert_one_line_naming(result, setting, seconds[setting][1])
            assert "in use" in line, line
        # The first gateway serves on, and every call, each on a fresh connection, lands in its database.
        assert first.poll() is None
        assert _health(operator_port) == health_pb2.HealthCheckResponse.SERVING
        for i in range(2, 6):
            _open_account(operator_port, f"CN-FIRST-000{i}")
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as response:
            assert response.status == 200
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=TIMEOUT) == 0
    assert _accounts(folder / "first.db") == {f"CN-FIRST-000{i}" for i in range(1, 6)}
    for setting in seconds:  # refused before its database was opened: nothing to mistake for the first's
        assert not (folder / f"second-{setting}.db").exists()


def test_a_second_gateway_on_the_same_sqlite_file_stops_with_a_clear_error(tmp_path: Path) -> None:
    folder = _keys(tmp_path)
    operator_port, http_port = free_ports(2)
    first_config = _config(
        folder, operator=f"127.0.0.1:{operator_port}", http=f"127.0.0.1:{http_port}", name="first.toml"
    )
    with _serving(first_config, tmp_path / "first.log", operator_port, http_port) as first:
        _open_account(operator_port, "CN-FIRST-0001")
        # Its own ports, the first one's database: it would take the first's outbox leases for its own.
        second = _serve(_config(folder, name="second.toml"))
        line = _assert_one_line_naming(second, "database", "chn.db", "in use by another carbon-gateway serve")
        assert "PostgreSQL" in line
        assert first.poll() is None
        _open_account(operator_port, "CN-FIRST-0002")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=TIMEOUT) == 0
    assert _accounts(folder / "chn.db") == {"CN-FIRST-0001", "CN-FIRST-0002"}
    # Once the first has stopped, the file is free again.
    with _serving(first_config, tmp_path / "again.log", operator_port, http_port) as again:
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=TIMEOUT) == 0


# Defect 16: start-up problems end in one line, not a traceback


@dataclass(frozen=True)
class Case:
    """A broken start: ``prepare`` writes the files into a fresh folder and returns the configuration to serve."""

    name: str
    prepare: Callable[[Path, int], Path]
    """Called with the folder (keys and trust documents in place) and a port another socket listens on."""
    names: tuple[str, ...]
    """What the one line of error must name: the setting, and the file or the value at fault."""


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _two_signature_document(folder: Path) -> Path:
    """CHN's document with a second transfer key and a transfer threshold of 2: more than the gateway signs with."""
    import datetime as dt

    from signing import Role, TrustDocument, sign_trust_document

    chn, stranger = (signer_from_uri(str(folder / f"{name}.key")) for name in ("chn", "stranger"))
    document = TrustDocument(
        party="CHN",
        version=1,
        expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=30),
        keys={s.public_key.keyid: s.public_key for s in (chn, stranger)},
        roles={"trust": Role((chn.keyid,), 1), "transfer": Role((chn.keyid, stranger.keyid), 2)},
    )
    return _write(folder / "two.trust.json", sign_trust_document(document, [chn]).to_json())


def _foreign_database(folder: Path) -> Path:
    """A configuration whose database is another program's SQLite file, with a table of the gateway's name."""
    with closing(sqlite3.connect(folder / "other-app.db")) as db:
        db.execute("CREATE TABLE accounts (owner BLOB)")
    return _config(folder, database="other-app.db")


def _recorded(path: Path, name: str, value: str) -> None:
    """Record the store setting ``name`` in a new database at ``path``, as a gateway's first start does."""

    async def record() -> None:
        store = await SQLiteStore.open(path)
        try:
            async with store.transaction() as tx:
                await tx.put_setting(name, value, dt.datetime.now(dt.UTC))
        finally:
            await store.close()

    asyncio.run(record())


def _another_partys_database(folder: Path) -> Path:
    """A configuration of CHN's whose database CHE's gateway started on first."""
    _recorded(folder / "che.db", PARTY_SETTING, "CHE")
    return _config(folder, database="che.db")


def _another_adjustment_method(folder: Path) -> Path:
    """A configuration whose ledger method differs from the one its database was kept under."""
    _recorded(folder / "chn.db", ADJUSTMENT_SETTING, "multi-year, NDC 2021-2030")
    ledger = '[ledger]\nndc_first_year = 2021\nndc_last_year = 2030\nadjustment_method = "single-year trajectory"'
    return _config(folder, tail=ledger)


def _newer_database(folder: Path) -> Path:
    """A configuration whose database a later version migrated past every version this one knows."""
    with closing(sqlite3.connect(folder / "newer.db")) as db:
        db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, description TEXT)")
        db.execute("INSERT INTO schema_migrations VALUES (1000, 'from the future')")
        db.commit()
    return _config(folder, database="newer.db")


CASES = [
    Case(
        "config_not_utf8",
        lambda f, _: _write(f / "latin1.toml", "party = 'CHN' # Zürich\n".encode("latin-1")),
        ("latin1.toml", "UTF-8"),
    ),
    Case("config_is_a_folder", lambda f, _: _folder(f / "folder.toml"), ("folder.toml",)),
    Case("config_missing", lambda f, _: f / "absent.toml", ("absent.toml",)),
    Case("config_not_toml", lambda f, _: _write(f / "broken.toml", b"party = \n"), ("broken.toml", "TOML")),
    Case(
        "own_trust_document_missing",
        lambda f, _: _config(f, trust_document="absent.trust.json"),
        ("trust_document", "absent.trust.json"),
    ),
    Case(
        "own_trust_document_garbage",
        lambda f, _: _config(f, trust_document=_write(f / "garbage.json", b"{not json").name),
        ("trust_document", "garbage.json"),
    ),
    Case(
        "own_trust_document_is_a_partners",
        lambda f, _: _config(f, trust_document="che.trust.json"),
        ("trust_document", "che.trust.json"),
    ),
    Case(
        "partner_trust_document_missing",
        lambda f, _: _config(f, partner_trust_document="absent.trust.json"),
        ("partners[0].trust_document", "absent.trust.json"),
    ),
    Case(
        "partner_trust_document_garbage",
        lambda f, _: _config(f, partner_trust_document=_write(f / "binary.json", b"\xff\xfe\x00garbage").name),
        ("partners[0].trust_document", "binary.json"),
    ),
    Case(
        "partner_trust_document_is_ours",
        lambda f, _: _config(f, partner_trust_document="chn.trust.json"),
        ("partners[0].trust_document", "chn.trust.json"),
    ),
    Case("signer_key_missing", lambda f, _: _config(f, signer="file:absent.key"), ("signer", "absent.key")),
    Case("signer_is_a_public_key", lambda f, _: _config(f, signer="file:chn.pub"), ("signer", "chn.pub")),
    Case("signer_not_in_the_trust_document", lambda f, _: _config(f, signer="stranger.key"), ("signer",)),
    Case(
        "own_trust_document_needs_two_signatures",
        lambda f, _: _config(f, trust_document=_two_signature_document(f).name),
        ("trust_document", "threshold to 2"),
    ),
    Case("operator_listen_nonsense", lambda f, _: _config(f, operator="nonsense"), ("operator.listen", "nonsense")),
    Case(
        "partner_listen_port_out_of_range",
        lambda f, _: _config(f, partner="127.0.0.1:99999"),
        ("partner.listen", "127.0.0.1:99999"),
    ),
    Case(
        "operator_listen_not_an_ipv4_address",
        lambda f, _: _config(f, operator="999.1.1.1:5000"),
        ("operator.listen", "999.1.1.1:5000"),
    ),
    Case(
        "partner_listen_not_an_ipv4_address",
        lambda f, _: _config(f, partner="999.1.1.1:5000"),
        ("partner.listen", "999.1.1.1:5000"),
    ),
    Case(
        "partner_listen_not_this_machine",
        lambda f, _: _config(f, partner="192.0.2.1:5000"),  # TEST-NET-1: never an address of this machine
        ("partner.listen", "192.0.2.1:5000"),
    ),
    Case("http_listen_nonsense", lambda f, _: _config(f, http="nonsense"), ("http.listen", "nonsense")),
    Case(
        "http_listen_not_an_ipv4_address",
        lambda f, _: _config(f, http="999.1.1.1:5000"),
        ("http.listen", "999.1.1.1:5000"),
    ),
    Case(
        "http_port_in_use",
        lambda f, busy: _config(f, http=f"127.0.0.1:{busy}"),
        ("http.listen", "in use"),
    ),
    Case(
        "operator_port_in_use",
        lambda f, busy: _config(f, operator=f"127.0.0.1:{busy}"),
        ("operator.listen", "in use"),
    ),
    Case(
        "database_in_a_missing_folder",
        lambda f, _: _config(f, database="absent/chn.db"),
        ("database", "absent"),
    ),
    Case(
        "database_is_a_text_file",
        lambda f, _: _config(f, database=_write(f / "notes.txt", b"not a database\n" * 100).name),
        ("database", "notes.txt"),
    ),
    Case(
        "database_of_another_program",
        lambda f, _: _foreign_database(f),
        ("database", "other-app.db"),
    ),
    Case("database_is_a_folder", lambda f, _: _config(f, database=_folder(f / "db").name), ("database",)),
    Case(
        "database_of_another_party",
        lambda f, _: _another_partys_database(f),
        ("database", "it keeps CHE's books", "this gateway is CHN's"),
    ),
    Case(
        "database_of_a_newer_version",
        lambda f, _: _newer_database(f),
        ("database", "newer.db", "schema version 1000", "newer version"),
    ),
    Case(
        "limits_size_is_a_string",
        lambda f, _: _config(f, tail='[limits]\nmax_envelope_bytes = "big"'),
        ("limits.max_envelope_bytes", "big"),
    ),
    Case(
        "limits_seconds_is_a_string",
        lambda f, _: _config(f, tail='[limits]\nclock_skew_seconds = "5 minutes"'),
        ("limits.clock_skew_seconds",),
    ),
    Case(
        "policy_rule_is_not_a_table",
        lambda f, _: _config(f, tail='[policy]\nrules = ["accept everything"]'),
        ("policy.rules[0]",),
    ),
    Case(
        "policy_rule_unknown_verdict",
        lambda f, _: _config(f, tail='[policy]\nrules = [{ verdict = "maybe" }]'),
        ("policy.rules[0].verdict",),
    ),
    Case(
        "policy_rule_verdict_is_a_list",
        lambda f, _: _config(f, tail='[policy]\nrules = [{ verdict = ["accept"] }]'),
        ("policy.rules[0].verdict",),
    ),
    Case(
        "policy_rule_max_quantity_is_a_string",
        lambda f, _: _config(f, tail='[policy]\nrules = [{ verdict = "accept", max_quantity = "lots" }]'),
        ("policy.rules[0].max_quantity",),
    ),
    Case(
        "policy_rule_unknown_purpose",
        lambda f, _: _config(f, tail='[policy]\nrules = [{ verdict = "accept", purpose = "PROFIT" }]'),
        ("policy.rules[0].purpose",),
    ),
    Case("policy_rules_not_a_list", lambda f, _: _config(f, tail='[policy]\nrules = "accept"'), ("policy.rules",)),
    Case(
        "reconciliation_every_is_a_string",
        lambda f, _: _config(f, tail='[reconciliation]\nevery_seconds = "daily"'),
        ("reconciliation.every_seconds", "daily"),
    ),
    Case(
        "reconciliation_every_too_often",
        lambda f, _: _config(f, tail="[reconciliation]\nevery_seconds = 5"),
        ("reconciliation.every_seconds", "60"),
    ),
    Case(
        "reconciliation_unknown_setting",
        lambda f, _: _config(f, tail="[reconciliation]\nhourly = true"),
        ("reconciliation.hourly", "every_seconds"),
    ),
]


@pytest.fixture(scope="module")
def broken_starts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every case's ``serve``, run in parallel while one socket holds a port the busy cases configure."""
    root = tmp_path_factory.mktemp("broken-starts")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        configs = {case.name: case.prepare(_keys(root / case.name), port) for case in CASES}
        with ThreadPoolExecutor(8) as pool:
            return dict(zip(configs, pool.map(_serve, configs.values()), strict=True))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_defect_16_a_start_up_problem_ends_in_one_line_naming_it(
    case: Case, broken_starts: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    _assert_one_line_naming(broken_starts[case.name], *case.names)


# `config check` refuses what `serve` refuses at start: the same checks of the files the configuration names

CHECK = [sys.executable, "-m", "gateway.cli", "config", "check"]


def _certificates(folder: Path) -> None:
    """A demo CA and certificates for CHN and CHE in ``folder``: ``ca.crt``, ``chn.crt``/``chn.key``, ``che.*``."""
    from gateway.tls import create_ca, issue_certificate

    ca_cert, ca_key = create_ca("test CA")
    _write(folder / "ca.crt", ca_cert)
    for name in ("chn", "che"):
        cert, key = issue_certificate(ca_cert, ca_key, name.upper())
        _write(folder / f"{name}.crt", cert)
        _write(folder / f"{name}.tls.key", key)


def _operator_tls(folder: Path, *, operator_settings: str = "", **files: str) -> Path:
    _certificates(folder)
    settings = {"certificate": "chn.crt", "private_key": "chn.tls.key", "client_ca": "ca.crt", **files}
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    # No unauthenticated_loopback: with client_ca it could never apply (config check warns of it).
    return _config(folder, tail=f"[operator.tls]\n{lines}", operator_settings=operator_settings)


def _partner_tls(folder: Path, **files: str) -> Path:
    _certificates(folder)
    settings = {"certificate": "chn.crt", "private_key": "chn.tls.key", "ca_certificate": "ca.crt", **files}
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    return _config(folder, tail=f"[tls]\n{lines}")


def _caller_named_as_the_gateways_certificate(folder: Path) -> Path:
    """[tls] with a certificate named chn-gateway-1, not the Party code, and an operator caller of that name."""
    from gateway.tls import create_ca, issue_certificate

    _certificates(folder)
    ca_cert, ca_key = create_ca("gateway CA")
    _write(folder / "gw-ca.crt", ca_cert)
    cert, key = issue_certificate(ca_cert, ca_key, "chn-gateway-1")
    _write(folder / "gw.crt", cert)
    _write(folder / "gw.key", key)
    caller = '[[operator.callers]]\nname = "ops"\nrole = "operator"\ncertificate_common_name = "chn-gateway-1"\n'
    tls = '[tls]\ncertificate = "gw.crt"\nprivate_key = "gw.key"\nca_certificate = "gw-ca.crt"\n'
    operator_tls = '[operator.tls]\ncertificate = "chn.crt"\nprivate_key = "chn.tls.key"\nclient_ca = "ca.crt"\n'
    return _config(folder, operator_settings=caller, tail=tls + operator_tls)


def _same_listen(folder: Path) -> Path:
    address = f"127.0.0.1:{free_port()}"
    return _config(folder, operator=address, partner=address)


CHECKED_LIKE_SERVE = [
    Case(
        "operator_caller_named_as_the_gateways_own_certificate",
        lambda f, _: _caller_named_as_the_gateways_certificate(f),
        ("operator.callers[0].certificate_common_name", "chn-gateway-1", "gw.crt", "a partner's credential"),
    ),
    Case(
        "operator_tls_certificate_missing",
        lambda f, _: _operator_tls(f, certificate="absent.crt"),
        ("operator.tls.certificate", "absent.crt"),
    ),
    Case(
        "operator_tls_certificate_not_pem",
        lambda f, _: _operator_tls(f, certificate=_write(f / "text.crt", b"not a certificate\n").name),
        ("operator.tls.certificate", "text.crt", "not a PEM certificate"),
    ),
    Case(
        "operator_tls_key_not_the_certificates",
        lambda f, _: _operator_tls(f, private_key="che.tls.key"),
        ("operator.tls.private_key", "che.tls.key", "not the key of the certificate"),
    ),
    Case(
        "operator_tls_client_ca_missing",
        lambda f, _: _operator_tls(f, client_ca="absent-ca.crt"),
        ("operator.tls.client_ca", "absent-ca.crt"),
    ),
    Case(
        "operator_tls_client_ca_is_a_folder",
        lambda f, _: _operator_tls(f, client_ca=_folder(f / "ca-folder").name),
        ("operator.tls.client_ca", "ca-folder"),
    ),
    Case(
        "operator_tls_client_ca_not_pem",
        lambda f, _: _operator_tls(f, client_ca=_write(f / "text-ca.crt", b"not a certificate\n").name),
        ("operator.tls.client_ca", "text-ca.crt", "not a PEM certificate"),
    ),
    Case(
        "operator_tls_client_ca_is_no_ca",
        lambda f, _: _operator_tls(f, client_ca="chn.crt"),
        ("operator.tls.client_ca", "chn.crt", "no CA's"),
    ),
    Case(
        "tls_certificate_not_pem",
        lambda f, _: _partner_tls(f, certificate=_write(f / "text.crt", b"not a certificate\n").name),
        ("tls.certificate", "text.crt", "not a PEM certificate"),
    ),
    Case(
        "tls_key_not_the_certificates",
        lambda f, _: _partner_tls(f, private_key="che.tls.key"),
        ("tls.private_key", "che.tls.key", "not the key of the certificate"),
    ),
    Case(
        "tls_certificate_is_the_partners",
        lambda f, _: _partner_tls(f, certificate="che.crt", private_key="che.tls.key"),
        ("tls.certificate", "che.crt", "CHE's identity"),
    ),
    Case(
        "tls_ca_certificate_is_no_ca",
        lambda f, _: _partner_tls(f, ca_certificate="chn.crt"),
        ("tls.ca_certificate", "chn.crt", "no CA's"),
    ),
    Case("database_names_a_folder", lambda f, _: _config(f, database=_folder(f / "db").name), ("database", "folder")),
    Case(
        "own_trust_document_needs_two_signatures",
        lambda f, _: _config(f, trust_document=_two_signature_document(f).name),
        ("trust_document", "the own trust document (version 1) sets the transfer role's threshold to 2"),
    ),
    Case("operator_listen_is_partner_listen", lambda f, _: _same_listen(f), ("partner.listen", "operator.listen")),
    # What serve learns from an existing database once it has opened it, config check reads without changing it.
    Case(
        "ledger_method_other_than_recorded",
        lambda f, _: _another_adjustment_method(f),
        ("ledger", "was kept under 'multi-year, NDC 2021-2030'", "the configuration now says 'single-year"),
    ),
    Case(
        "database_of_a_newer_version",
        lambda f, _: _newer_database(f),
        ("database", "newer.db", "schema version 1000", "newer version"),
    ),
    # Every file the configuration names is a regular file of bounded size, checked before it is read: a device
    # would be read for ever, and a FIFO without a writer would block the start.
    Case("config_is_dev_zero", lambda f, _: Path("/dev/zero"), ("/dev/zero", "not a regular file")),
    Case("config_is_a_fifo", lambda f, _: _fifo(f / "fifo.toml"), ("fifo.toml", "not a regular file")),
    Case(
        "config_too_large",
        lambda f, _: _write(f / "huge.toml", b"# " + b"x" * (2 << 20) + b"\n"),
        ("huge.toml", "larger than"),
    ),
    Case("signer_is_dev_zero", lambda f, _: _config(f, signer="file:/dev/zero"), ("signer", "/dev/zero")),
    Case(
        "signer_is_a_fifo",
        lambda f, _: _config(f, signer=f"file:{_fifo(f / 'fifo.key').name}"),
        ("signer", "fifo.key", "not a regular file"),
    ),
    Case(
        "signer_passphrase_file_is_a_fifo",
        lambda f, _: _config(f, signer=f"file:chn.key?passphrase-file={_fifo(f / 'fifo.pass')}"),
        ("signer", "fifo.pass", "not a regular file"),
    ),
    Case(
        "trust_document_is_dev_zero",
        lambda f, _: _config(f, trust_document="/dev/zero"),
        ("trust_document", "/dev/zero", "not a regular file"),
    ),
    Case(
        "partner_trust_document_is_a_fifo",
        lambda f, _: _config(f, partner_trust_document=_fifo(f / "fifo.json").name),
        ("partners[0].trust_document", "fifo.json", "not a regular file"),
    ),
    Case(
        "trust_document_too_large",
        lambda f, _: _config(f, trust_document=_write(f / "huge.json", b" " * (5 << 20) + b"{}").name),
        ("trust_document", "huge.json", "larger than"),
    ),
    Case(
        "tls_certificate_is_dev_zero",
        lambda f, _: _partner_tls(f, certificate="/dev/zero"),
        ("tls.certificate", "/dev/zero"),
    ),
]


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("case", CHECKED_LIKE_SERVE, ids=[case.name for case in CHECKED_LIKE_SERVE])
def test_config_check_refuses_in_one_line_what_serve_refuses(case: Case, tmp_path: Path) -> None:
    config = case.prepare(_keys(tmp_path), 0)
    _assert_one_line_naming(_serve(config), *case.names)
    check = subprocess.run([*CHECK, str(config)], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert check.returncode == 2 and check.stdout == "", check
    assert "Traceback" not in check.stderr and check.stderr.count("\n") == 1, check.stderr
    for name in case.names:
        assert name in check.stderr, check.stderr


def _secp256k1_certificate(folder: Path) -> tuple[str, str]:
    """A self-signed certificate for CHN with its key on secp256k1, which `cryptography` and Python's `ssl` read and
    gRPC's TLS library does not; return the file names of the certificate and the key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256K1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CHN")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))  # no expiry warning beside the refusal
        .sign(key, hashes.SHA256())
    )
    _write(folder / "k1.crt", certificate.public_bytes(serialization.Encoding.PEM))
    _write(
        folder / "k1.key",
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return "k1.crt", "k1.key"


@pytest.mark.parametrize("section", ["tls", "operator.tls"])
def test_certificate_files_grpc_cannot_use_are_refused_naming_them_not_the_port(section: str, tmp_path: Path) -> None:
    # config check said OK, and serve stopped with "partner.listen: cannot listen on ...: gRPC could not bind it
    # (the port was taken meanwhile ...)" for a free port.
    folder = _keys(tmp_path)
    certificate, key = _secp256k1_certificate(folder)
    if section == "tls":
        config = _partner_tls(folder, certificate=certificate, private_key=key)
    else:
        config = _operator_tls(folder, certificate=certificate, private_key=key)
    expected = f"{config}: {section}: gRPC cannot use the certificate and private key files"
    served = _serve(config)
    assert served.returncode == 2 and "Traceback" not in served.stderr, served.stderr
    # gRPC logs why in lines of its own before the gateway's one line.
    assert served.stderr.strip().splitlines()[-1].startswith(f"carbon-gateway serve: {expected}"), served.stderr
    assert "listen" not in served.stderr.strip().splitlines()[-1], served.stderr
    check = subprocess.run([*CHECK, str(config)], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert check.returncode == 2 and check.stdout == "", check
    assert "Traceback" not in check.stderr and check.stderr.strip().splitlines()[-1].startswith(expected), check


@pytest.mark.parametrize("section", ["tls", "operator.tls"])
def test_usable_certificate_files_are_taken_whatever_the_temporary_folder(section: str, tmp_path: Path) -> None:
    """The check that gRPC takes the TLS files adds a port on a socket file in a temporary folder: under a TMPDIR
    whose path leaves no room for a socket file's name (107 bytes), gRPC refused that address, and config check
    and serve blamed good certificate files ("gRPC cannot use the certificate and private key files")."""
    folder = _keys(tmp_path / "gw")
    config = _partner_tls(folder) if section == "tls" else _operator_tls(folder)
    long_tmp = tmp_path / ("t" * 100)
    long_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(long_tmp), "PYTHONUNBUFFERED": "1"}
    check = subprocess.run([*CHECK, str(config)], capture_output=True, text=True, timeout=TIMEOUT, check=False, env=env)
    assert check.returncode == 0 and "cannot use" not in check.stderr, check
    assert "Failed to add port" not in check.stderr, check.stderr
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([*SERVE, str(config)], stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "gateway serving" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        process.kill()
        process.wait()
    # Files gRPC cannot use are still refused there.
    certificate, key = _secp256k1_certificate(folder)
    files = {"certificate": certificate, "private_key": key}
    config = _partner_tls(folder, **files) if section == "tls" else _operator_tls(folder, **files)
    check = subprocess.run([*CHECK, str(config)], capture_output=True, text=True, timeout=TIMEOUT, check=False, env=env)
    assert check.returncode == 2, check
    assert check.stderr.strip().splitlines()[-1].startswith(f"{config}: {section}: gRPC cannot use"), check.stderr


def _log_once_serving(config: Path, log: Path) -> str:
    """What ``serve`` with ``config`` logs until it says it is serving; it is then killed."""
    with log.open("wb") as stderr:
        process = subprocess.Popen([*SERVE, str(config)], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "gateway serving" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        return log.read_text()
    finally:
        process.kill()
        process.wait()


def test_a_signing_key_others_can_read_is_warned_of_by_config_check_and_serve_which_starts(tmp_path: Path) -> None:
    """A private key file (or its passphrase file) of mode 0644 let every user of the machine sign as the Party,
    and neither config check nor serve said so."""
    folder = _keys(tmp_path)
    (folder / "chn.key").chmod(0o644)
    config = _config(folder)
    check = subprocess.run([*CHECK, str(config)], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    said = f"signer: the private key file {folder / 'chn.key'} has mode 0644: users other than its owner can read"
    assert check.returncode == 0 and f"{config}: warning: {said}" in check.stderr, check
    assert f"chmod 600 {folder / 'chn.key'}" in check.stderr, check.stderr
    assert f"WARNING gateway: {config}: {said}" in _log_once_serving(config, tmp_path / "serve.log")
    (folder / "chn.key").chmod(0o600)
    check = subprocess.run([*CHECK, str(config)], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert check.returncode == 0 and "warning" not in check.stderr, check


def test_a_setting_without_effect_is_warned_of_by_config_check_and_serve_which_starts(tmp_path: Path) -> None:
    """unauthenticated_loopback with [operator.tls] client_ca (init writes the first beside the second commented
    out) can never apply: config check passes the file with a warning, and serve starts, logging it."""
    config = _operator_tls(_keys(tmp_path), operator_settings="unauthenticated_loopback = true\n")
    check = subprocess.run([*CHECK, str(config)], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    said = "operator.unauthenticated_loopback: [operator.tls] client_ca makes every connection present"
    assert check.returncode == 0 and f"{config}: warning: {said}" in check.stderr, check
    assert f"WARNING gateway: {config}: {said}" in _log_once_serving(config, tmp_path / "serve.log")


@pytest.mark.parametrize("table", ["notes", "accounts"])
def test_another_programs_sqlite_database_is_refused_and_left_as_it_was(table: str, tmp_path: Path) -> None:
    """``serve`` took another program's SQLite file for a new gateway database: it filled it with the gateway's
    tables and switched it to WAL, and one whose table had a gateway table's name, though refused, was left with a
    ``schema_migrations`` table and WAL. ``config check`` said OK of the first."""
    folder = _keys(tmp_path)
    database = folder / "other-app.db"
    with closing(sqlite3.connect(database)) as db:
        db.execute(f"CREATE TABLE {table} (owner TEXT)")
        db.execute(f"INSERT INTO {table} VALUES ('someone')")
        db.commit()
    before = database.read_bytes()
    config = _config(folder, database=database.name)
    _assert_one_line_naming(_serve(config), "database", "other-app.db", table, "not a gateway's database")
    check = subprocess.run([*CHECK, str(config)], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert check.returncode == 2 and "not a gateway's database" in check.stderr, check
    assert database.read_bytes() == before
    assert not Path(f"{database}-wal").exists()


def _gateway_database(path: Path) -> Path:
    """A gateway's database at ``path``, closed cleanly (its write-ahead log folded in), as after a stop."""
    _recorded(path, PARTY_SETTING, "CHN")
    return path


def test_a_full_disk_at_start_is_named_as_such_not_as_the_wrong_file(tmp_path: Path) -> None:
    """A start whose migration met a full disk said "name this gateway's database file, or a new path": the file
    was the right one, and the disk wanted space."""
    import resource

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (32768, 32768))  # as a full disk: writes past it fail

    config = _config(_keys(tmp_path))
    result = subprocess.run(
        [*SERVE, str(config)], capture_output=True, text=True, timeout=TIMEOUT, check=False, preexec_fn=small_files
    )
    line = _assert_one_line_naming(result, "database", "chn.db", "full or failing", "free space")
    assert "new path" not in line


def test_a_database_this_process_cannot_open_is_named_as_such_by_serve_and_report(tmp_path: Path) -> None:
    """A database SQLite could not open for want of its -shm file (a read-only file system, a folder the user may
    not write) was "not a gateway database" to ``report`` and a wrong path to ``serve``."""
    folder = _keys(tmp_path)
    database = _gateway_database(folder / "chn.db")
    Path(f"{database}-shm").symlink_to(tmp_path / "absent" / "chn.db-shm")  # cannot be created, as on a read-only disk
    config = _config(folder)
    line = _assert_one_line_naming(_serve(config), "database", "chn.db", "cannot open it for writing")
    assert "new path" not in line
    out = str(tmp_path / "aef.xlsx")
    report = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "report", "aef", "--config", str(config), "--year", "2026", "--out", out],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert report.returncode == 1 and "Traceback" not in report.stderr, report.stderr
    assert "cannot be opened for reading" in report.stderr and "not a gateway database" not in report.stderr


def test_a_write_ahead_log_that_cannot_be_read_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A folder where the database's write-ahead log belongs ended ``serve`` and ``config check`` in a traceback
    (IsADirectoryError from the check of the log's header)."""
    folder = _keys(tmp_path)
    database = _gateway_database(folder / "chn.db")
    Path(f"{database}-wal").mkdir()
    config = _config(folder)
    _assert_one_line_naming(_serve(config), "database", "chn.db-wal", "cannot be read")
    check = subprocess.run([*CHECK, str(config)], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert check.returncode == 2 and "Traceback" not in check.stderr, check.stderr
    assert check.stderr.count("\n") == 1 and "chn.db-wal" in check.stderr, check.stderr


@pytest.mark.parametrize("kind", ["device", "pipe"])
def test_a_database_path_that_is_no_regular_file_is_named_as_such(kind: str, tmp_path: Path) -> None:
    """SQLite answers "disk I/O error" for a device or a pipe, which the start took for a full or failing disk;
    ``config check`` said what it is."""
    folder = _keys(tmp_path)
    database = "/dev/null" if kind == "device" else str(_fifo(folder / "pipe.db"))
    line = _assert_one_line_naming(_serve(_config(folder, database=database)), "database", "not a regular file")
    assert "full or failing" not in line


def test_a_database_another_process_holds_locked_is_named_as_such(tmp_path: Path) -> None:
    """A start that waited in vain for another process's write lock (an sqlite3 shell in a transaction) was told
    to "name this gateway's database file, or a new path": the file was the right one."""
    folder = _keys(tmp_path)
    database = _gateway_database(folder / "chn.db")
    with closing(sqlite3.connect(database, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        line = _assert_one_line_naming(_serve(_config(folder)), "database", "database is locked", "another process")
        other.execute("ROLLBACK")
    assert "new path" not in line
