"""Unknown configuration keys are errors everywhere, and `carbon-gateway config check` names every problem.

A misspelt setting used to fall back to its default in silence (``max_envelope_byte = 4096`` left the cap at
1 MiB). Now every table refuses a key no setting uses, with a "did you mean" for a near miss, and all of them
are reported at once; `serve` refuses them too, because it uses the same loader.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import sqlite3
import subprocess
import sys
import urllib.parse
from pathlib import Path

import asyncpg
import pytest

from gateway.cli import main
from gateway.config import UnknownKeysError, load_config, settings_without_effect
from gateway.harness import self_signed_trust_document
from gateway.store.pg_migrations import WRITE_LOCK
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore
from signing import (
    Envelope,
    Role,
    TrustDocument,
    TrustedParty,
    generate_key,
    sign_trust_document,
    signer_from_uri,
)
from signing.files import MAX_FILE_BYTES
from tests.postgres import admin_url, create_database, drop_databases

CLI = [sys.executable, "-m", "gateway.cli"]

GOOD = """
party = "CHN"
database = "chn.db"
signer = "file:chn.key"
trust_document = "chn.trust.json"

[signers]
next = "file:chn.key"

[operator]
listen = "127.0.0.1:0"

[partner]
listen = "127.0.0.1:0"

[http]
listen = "127.0.0.1:0"

[[partners]]
party = "CHE"
address = "127.0.0.1:9"
trust_document = "che.trust.json"

[[registries]]
code = "CN-CCER"
unit_kinds = ["CCER"]
party = "CHN"

[policy]
rules = [{ verdict = "accept", partner = "CHE" }, { verdict = "hold" }]

[limits]
max_envelope_bytes = 65536

[ledger]
ndc_first_year = 2021
ndc_last_year = 2030
adjustment_method = "multi-year"

[ledger.underlying_registry_codes]
CN-CCER = "CCER"

[reconciliation]
every_seconds = 3600
"""


EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
"""The SHA-256 of the empty token."""


def _caller(name: str, digest: str) -> str:
    """An ``[[operator.callers]]`` table of a token caller with the operator role."""
    return f'[[operator.callers]]\nname = "{name}"\nrole = "operator"\ntoken_sha256 = "{digest}"\n'


def _files(folder: Path) -> None:
    for party in ("CHN", "CHE"):
        name = party.lower()
        generate_key(folder / name)
        signer = signer_from_uri(str(folder / f"{name}.key"))
        (folder / f"{name}.trust.json").write_bytes(self_signed_trust_document(party, signer).to_json())


def _write(folder: Path, text: str, name: str = "gateway.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_good_file_loads_with_every_table(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD))
    assert config.max_envelope_bytes == 65536
    assert config.ledger.underlying_registry_codes == (("CN-CCER", "CCER"),)


@pytest.mark.parametrize(
    ("old", "new", "path", "hint"),
    [
        ('party = "CHN"', 'party = "CHN"\npartys = "CHE"', "partys", "'party'"),
        (
            'listen = "127.0.0.1:0"\n\n[partner]',
            'listen = "127.0.0.1:0"\nlisen = 1\n\n[partner]',
            "operator.lisen",
            "'listen'",
        ),
        ('[http]\nlisten = "127.0.0.1:0"', '[http]\nlisten = "127.0.0.1:0"\nport = 1', "http.port", None),
        ('address = "127.0.0.1:9"', 'address = "127.0.0.1:9"\nadress = "x"', "partners[0].adress", "'address'"),
        (
            'unit_kinds = ["CCER"]',
            'unit_kinds = ["CCER"]\nunit_kind = "CCER"',
            "registries[0].unit_kind",
            "'unit_kinds'",
        ),
        ('{ verdict = "hold" }', '{ verdict = "hold", purpse = "NDC" }', "policy.rules[1].purpse", "'purpose'"),
        ("max_envelope_bytes = 65536", "max_envelope_byte = 4096", "limits.max_envelope_byte", "'max_envelope_bytes'"),
        ('adjustment_method = "multi-year"', 'adjustment_method = "multi-year"\nmethod = 1', "ledger.method", None),
        ("every_seconds = 3600", "every_second = 3600", "reconciliation.every_second", "'every_seconds'"),
        ("[policy]", "[policy]\ndefault = 'hold'", "policy.default", None),
    ],
)
def test_an_unknown_key_in_any_table_is_refused_by_name(
    tmp_path: Path, old: str, new: str, path: str, hint: str | None
) -> None:
    assert old in GOOD
    with pytest.raises(UnknownKeysError) as refused:
        load_config(_write(tmp_path, GOOD.replace(old, new, 1)))
    [problem] = refused.value.problems
    assert problem.startswith(f"{path}: unknown setting; ")
    if hint is not None:
        assert f"did you mean {hint}?" in problem
    else:
        assert "did you mean" not in problem


def test_a_tls_table_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    text = GOOD + '\n[tls]\ncertificate = "a"\nprivate_key = "b"\nca_certificate = "c"\nca_cert = "d"\n'
    with pytest.raises(UnknownKeysError, match=r"tls\.ca_cert: unknown setting; did you mean 'ca_certificate'"):
        load_config(_write(tmp_path, text))


def test_every_unknown_key_is_reported_at_once_before_any_other_problem(tmp_path: Path) -> None:
    text = GOOD.replace('party = "CHN"', 'prty = "CHN"', 1).replace("every_seconds = 3600", "every_second = 3600")
    text = text.replace('address = "127.0.0.1:9"', 'address = "127.0.0.1:9"\ntrust_doc = "x"')
    with pytest.raises(UnknownKeysError) as refused:
        load_config(_write(tmp_path, text))
    # The missing 'party' is not what is reported: its misspelling is.
    assert [p.split(":")[0] for p in refused.value.problems] == [
        "prty",
        "reconciliation.every_second",
        "partners[0].trust_doc",
    ]


def test_unknown_keys_inside_operator_tls_and_callers_are_all_reported(tmp_path: Path) -> None:
    text = GOOD.replace(
        '[operator]\nlisten = "127.0.0.1:0"',
        '[operator]\nlisten = "127.0.0.1:0"\nunauthenticated_loopback = true\n'
        '[operator.tls]\ncertificate = "a.crt"\nprivate_key = "a.key"\nclient_cert = "c.crt"\n'
        '[[operator.callers]]\nname = "alice"\nrole = "operator"\ntoken_sha = "00"',
    )
    with pytest.raises(UnknownKeysError) as refused:
        load_config(_write(tmp_path, text))
    assert [p.split(":")[0] for p in refused.value.problems] == [
        "operator.tls.client_cert",
        "operator.callers[0].token_sha",
    ]
    assert "did you mean 'client_ca'?" in str(refused.value)


def test_serve_refuses_an_unknown_key_in_one_line(tmp_path: Path) -> None:
    _files(tmp_path)
    config = _write(tmp_path, GOOD.replace("every_seconds = 3600", "every_second = 3600"))
    result = subprocess.run([*CLI, "serve", str(config)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "reconciliation.every_second: unknown setting; did you mean 'every_seconds'?" in result.stderr
    assert not (tmp_path / "chn.db").exists()


# -- config check ---------------------------------------------------------------------------------------


def test_config_check_passes_a_good_file_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _files(tmp_path)
    path = _write(tmp_path, GOOD)
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith(f"{path}: OK: CHN gateway") and "partners CHE" in out


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["config", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines and all(line.startswith(str(path)) for line in lines)
    return lines


def test_config_check_names_every_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD.replace("max_envelope_bytes = 65536", "max_envelope_byte = 4096")
    text = text.replace('{ verdict = "hold" }', '{ verdict = "hold", purpse = "NDC" }')
    lines = _check(_write(tmp_path, text), capsys)
    assert len(lines) == 2
    assert "limits.max_envelope_byte: unknown setting; did you mean 'max_envelope_bytes'?" in lines[0]
    assert "policy.rules[1].purpse: unknown setting; did you mean 'purpose'?" in lines[1]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'party = "CHN"\n[operator\n', "not valid TOML"),
        (b'party = "CH\xff"\n', "not UTF-8 text (byte 11)"),
        (
            GOOD.replace("max_envelope_bytes = 65536", 'max_envelope_bytes = "65536"').encode(),
            "limits.max_envelope_bytes: expected a whole number",
        ),
        (
            GOOD.replace('listen = "127.0.0.1:0"\n\n[partner]', "listen = 50051\n\n[partner]").encode(),
            "operator.listen: expected a non-empty string",
        ),
        (
            GOOD.replace('listen = "127.0.0.1:0"\n\n[partner]', 'listen = "a b:5"\n\n[partner]').encode(),
            "operator.listen: 'a b' in 'a b:5' is not a host name or an IP address",
        ),
        (
            GOOD.replace('listen = "127.0.0.1:0"\n\n[partner]', 'listen = "::1:46561"\n\n[partner]').encode(),
            "operator.listen: '::1' in '::1:46561' is not a host name or an IP address (an IPv6 address goes in",
        ),
        (
            GOOD.replace('{ verdict = "hold" }', '{ verdict = "maybe" }').encode(),
            "policy.rules[1].verdict: use accept, reject or hold",
        ),
        (
            GOOD.replace('party = "CHN"', 'party = "China"', 1).encode(),
            "party: 'China' is not an ISO 3166-1 alpha-3 code",
        ),
        # three capitals are not yet a Party: the AEF report writes ISO codes only, so a gateway or a partner under
        # another code would leave each year it acts in with a report that cannot be written
        (
            GOOD.replace('party = "CHN"', 'party = "XXX"', 1).encode(),
            "party: 'XXX' is not an ISO 3166-1 alpha-3 code",
        ),
        (
            GOOD.replace('party = "CHE"', 'party = "CHF"', 1).encode(),
            "partners[0].party: 'CHF' is not another Party's ISO 3166-1 alpha-3 code",
        ),
        (
            GOOD.replace('party = "CHN"\n\n[policy]', 'party = "XXX"\n\n[policy]').encode(),
            "registries[0].party: 'XXX' is not an ISO 3166-1 alpha-3 code",
        ),
        (GOOD.replace("[[partners]]", "[partners]").encode(), "partners: expected a list of tables"),
        (
            GOOD.replace('partner = "CHE"', 'partner = "XYZ"').encode(),
            "policy.rules[0].partner: 'XYZ' is not a configured partner ([[partners]]: CHE)",
        ),
        (
            GOOD.replace('address = "127.0.0.1:9"', 'address = "::::"').encode(),
            "partners[0].address: '::::' is not HOST:PORT or dns:///HOST:PORT",
        ),
        (
            GOOD.replace('address = "127.0.0.1:9"', 'address = "127.0.0.1:0"').encode(),
            "partners[0].address: '127.0.0.1:0' is not HOST:PORT with a port in 1..65535",
        ),
        *(
            (
                GOOD.replace('address = "127.0.0.1:9"', f'address = "{address}"').encode(),
                f"partners[0].address: '{address}' is not HOST:PORT or dns:///HOST:PORT (an IPv6 address goes in",
            )
            for address in ("a:b:443", "::1:443", "ipv4:10.0.0.1:443", "dns:dns:x:1")
        ),
        (
            GOOD.replace('address = "127.0.0.1:9"', 'address = "che example:50052"').encode(),
            "partners[0].address: 'che example' in 'che example:50052' is not a host name or an IP address",
        ),
        (
            GOOD.replace("max_envelope_bytes = 65536", "max_envelope_bytes = 65536\ndeliveries_at_once = 0").encode(),
            "limits.deliveries_at_once: 0 is not in 1..1024",
        ),
        (
            GOOD.replace(
                "max_envelope_bytes = 65536",
                "max_envelope_bytes = 65536\ndeliveries_at_once = 8\ndeliveries_per_address = 9",
            ).encode(),
            "limits.deliveries_per_address: 9 is not in 1..8",
        ),
        (
            GOOD.replace(
                "max_envelope_bytes = 65536", "max_envelope_bytes = 65536\ndeliveries_per_address = 32"
            ).encode(),
            "limits.deliveries_per_address: 32 is not in 1..16: the deliveries from one address are some of"
            " deliveries_at_once (16); raise deliveries_at_once to 32 or more as well",
        ),
        *(
            (
                GOOD.replace("[signers]\n", f'[signers]\n{key} = "file:other.key"\n').encode(),
                f"signers.{shown}: name a signer with 1 to 64 letters, digits, '-' or '_'",
            )
            for key, shown in (
                ('"x y"', "'x y'"),
                ('""', "''"),
                ('"k\u00e9y"', "'k\u00e9y'"),
                ("a" * 65, "'" + "a" * 65 + "'"),
            )
        ),
    ],
)
def test_config_check_names_a_malformed_file_or_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(content)
    [line] = _check(path, capsys)
    assert expected in line


def test_config_check_refuses_a_file_nested_too_deeply_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    [line] = _check(path, capsys)
    assert "nested too deeply" in line
    result = subprocess.run([*CLI, "serve", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "nested too deeply" in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD.replace("ndc_first_year = 2021", "ndc_first_year = 2031"),
            "ledger.ndc_last_year: the NDC period ends in 2030, before it starts in 2031",
        ),
        (
            GOOD.replace('adjustment_method = "multi-year"', "").replace(
                "ndc_first_year = 2021", "ndc_first_year = 2031"
            ),
            "ledger.ndc_last_year: the NDC period ends in 2030, before it starts in 2031",
        ),
        (
            GOOD.replace('address = "127.0.0.1:9"', 'address = "127.0.0.1:9"\nhttp_url = "ftp://che.example"'),
            "partners[0].http_url: 'ftp://che.example' is not an http:// or https:// URL",
        ),
        (
            GOOD.replace('address = "127.0.0.1:9"', 'address = "127.0.0.1:9"\nhttp_url = "che.example:8443"'),
            "partners[0].http_url: 'che.example:8443' is not an http:// or https:// URL",
        ),
        # a host that is no host name, a port out of range, credentials (which would reach the logs), a query or
        # a fragment (the paths of the partner's documents are added to the URL) were accepted
        *(
            (
                GOOD.replace('address = "127.0.0.1:9"', f'address = "127.0.0.1:9"\nhttp_url = "{url}"'),
                f"partners[0].http_url: {says}",
            )
            for url, says in (
                ("https://che example:8443", "'che example' in 'https://che example:8443' is not a host name or an IP"),
                ("https://999.1.1.1:8443", "'999.1.1.1' in 'https://999.1.1.1:8443' is not a host name or an IP"),
                ("https://che.example:99999", "'https://che.example:99999' does not give a port in 1..65535"),
                ("https://user:pass@che.example", "the URL holds credentials before its host (user:password@)"),
                ("https://che.example/gw?v=1", "'https://che.example/gw?v=1' has a query or a fragment"),
                ("https://che.example/#top", "'https://che.example/#top' has a query or a fragment"),
                ("https://che.example/a b", "'https://che.example/a b' holds a space or a control character"),
            )
        ),
        # the gateway's own servers on one port of overlapping addresses: the second could never bind
        *(
            (
                GOOD.replace('[partner]\nlisten = "127.0.0.1:0"', f'[partner]\nlisten = "{host}:53061"').replace(
                    '[operator]\nlisten = "127.0.0.1:0"', '[operator]\nlisten = "127.0.0.1:53061"'
                ),
                f"partner.listen: '{host}:53061' is also operator.listen ('127.0.0.1:53061': the same port",
            )
            for host in ("localhost", "0.0.0.0", "[::]")
        ),
        # a port written with a leading zero is the same port (ports were compared as text)
        (
            GOOD.replace('[partner]\nlisten = "127.0.0.1:0"', '[partner]\nlisten = "127.0.0.1:053061"').replace(
                '[operator]\nlisten = "127.0.0.1:0"', '[operator]\nlisten = "127.0.0.1:53061"'
            ),
            "partner.listen: '127.0.0.1:053061' is also operator.listen ('127.0.0.1:53061': the same port",
        ),
        # false is no number of seconds (though Python's False == 0), and so does not turn the schedule off
        (GOOD.replace("every_seconds = 3600", "every_seconds = false"), "reconciliation.every_seconds"),
        # a divisor without its method was dropped without a word, whatever its value
        (
            GOOD.replace('adjustment_method = "multi-year"', 'averaging_divisor = "garbage"'),
            "ledger.averaging_divisor: set only with adjustment_method",
        ),
        # the NDC period alone gave a summary with no structured rows, and no word why
        (
            GOOD.replace('adjustment_method = "multi-year"', ""),
            "ledger.adjustment_method: the NDC period is set but not the method",
        ),
        # another Party's registry ID would be written into every First ID of the AEF report
        (
            GOOD.replace(
                'adjustment_method = "multi-year"', 'adjustment_method = "multi-year"\nparty_registry = "USA01"'
            ),
            "ledger.party_registry: 'USA01' is not a registry of CHN: a Party ITMO registry ID starts with the Party's",
        ),
        # codes are matched as written: this one would never apply, and the report would write NA
        (
            GOOD.replace('CN-CCER = "CCER"', 'cn-ccer = "CCER"'),
            "ledger.underlying_registry_codes: 'cn-ccer' is not an issuing registry code as [[registries]] writes it;"
            " did you mean 'CN-CCER'?",
        ),
        # the report would write CCER units under Verra's nomenclature ID, as if they were VCUs
        (
            GOOD.replace('CN-CCER = "CCER"', 'CN-CCER = "VCS"'),
            "ledger.underlying_registry_codes.CN-CCER: 'VCS' is the AEF nomenclature's ID of another registry",
        ),
        # the report would write CEA and CCER units alike, and no reader could tell them apart
        (
            GOOD.replace('CN-CCER = "CCER"', 'CN-CCER = "CN"\nCN-CEA = "CN"'),
            "ledger.underlying_registry_codes.CN-CEA: 'CN' is also the code of CN-CCER",
        ),
        # identifiers never hold invisible or bidirectional-control characters: these could never match, and read
        # as another value
        (
            GOOD.replace('{ verdict = "hold" }', '{ verdict = "hold", acquiring_account = "CH-\\u202e1000" }'),
            "policy.rules[1].acquiring_account: the account ID contains U+202E RIGHT-TO-LEFT OVERRIDE",
        ),
        (
            GOOD.replace('address = "127.0.0.1:9"', 'address = "127.0.0.1:9"\ntls_identity = "CHE\\u200b"'),
            "partners[0].tls_identity: the TLS identity contains U+200B ZERO WIDTH SPACE",
        ),
        # with mTLS a certificate's name alone picks the partner: a name two partners share picked the first, and
        # every statement of the other was refused for good as sent over the first one's connection
        (
            GOOD.replace(
                'trust_document = "che.trust.json"\n',
                'trust_document = "che.trust.json"\ntls_identity = "sgp"\n\n[[partners]]\nparty = "SGP"\n'
                'address = "127.0.0.1:10"\ntrust_document = "che.trust.json"\n',
            ),
            "partners[1].party: 'SGP' is also the TLS identity of partners[0] (CHE)",
        ),
        (
            GOOD.replace(
                'trust_document = "che.trust.json"\n',
                'trust_document = "che.trust.json"\ntls_identity = "gw"\n\n[[partners]]\nparty = "SGP"\n'
                'address = "127.0.0.1:10"\ntrust_document = "che.trust.json"\ntls_identity = "GW"\n',
            ),
            "partners[1].tls_identity: 'GW' is also the TLS identity of partners[0] (CHE)",
        ),
        (
            GOOD.replace('address = "127.0.0.1:9"', 'address = "127.0.0.1:9"\ntls_identity = "CHN"'),
            "partners[0].tls_identity: 'CHN' is also party (this gateway's own Party code)",
        ),
        # one name written in two Unicode normal forms is one name
        (
            GOOD.replace(
                "\n[partner]\n",
                "\n" + _caller("Jos\u00e9", "1" * 64) + _caller("Jose\u0301", "2" * 64) + "\n[partner]\n",
            ),
            "operator.callers[1].name: 'Jose\u0301' is also the name of operator.callers[0] (written in another",
        ),
        # RE2 read a repeat count too large for its integers as text (Python's re raises OverflowError)
        (
            GOOD.replace(
                'unit_kinds = ["CCER"]', 'unit_kinds = ["CCER"]\nissuance_pattern = "a{99999999999999999999}"'
            ),
            "registries[0]: registry CN-CCER: issuance_pattern 'a{99999999999999999999}' is not one RE2 can match",
        ),
    ],
)
def test_config_check_refuses_a_value_out_of_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    [line] = _check(_write(tmp_path, text), capsys)
    assert expected in line


def test_a_huge_value_is_quoted_cut_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # (A file of 50 MB is refused for its size before it is parsed; this value fits in the 1 MiB allowed.)
    path = _write(tmp_path, GOOD.replace('party = "CHN"', f'party = "{"X" * 500_000}"', 1))
    [line] = _check(path, capsys)
    assert line.startswith(f"{path}: party: 'XXXX") and "(500000 characters)" in line
    assert len(line) < len(str(path)) + 200


def test_config_check_names_a_missing_file_and_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [line] = _check(tmp_path / "missing.toml", capsys)
    assert "no such configuration file" in line
    [line] = _check(tmp_path, capsys)
    assert "is a folder" in line


@pytest.mark.parametrize(
    "url",
    [
        "https://che.example:8443",
        "http://127.0.0.1:8080",
        "https://[2001:db8::1]:8443/carbon/",
        "https://CHE.Example",
        "https://b\u00fccher.example/gw",
        "https://che_gw.example.",
    ],
)
def test_a_partner_http_url_may_name_a_host_a_port_and_a_path(tmp_path: Path, url: str) -> None:
    text = GOOD.replace('address = "127.0.0.1:9"', f'address = "127.0.0.1:9"\nhttp_url = "{url}"')
    assert load_config(_write(tmp_path, text)).partners[0].http_url == url


def test_a_partner_http_url_with_credentials_is_refused_without_repeating_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace(
        'address = "127.0.0.1:9"', 'address = "127.0.0.1:9"\nhttp_url = "https://ops:s3cret@che.example"'
    )
    [line] = _check(_write(tmp_path, text), capsys)
    assert "partners[0].http_url: the URL holds credentials" in line and "s3cret" not in line


def test_config_check_names_the_files_serve_would_refuse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _files(tmp_path)
    (tmp_path / "che.trust.json").unlink()
    text = GOOD.replace('next = "file:chn.key"', 'next = "file:nothere.key"')
    lines = _check(_write(tmp_path, text), capsys)
    assert any("partners[0].trust_document:" in line and "no such file" in line for line in lines)
    assert any("signers.next:" in line for line in lines)
    assert len(lines) == 2


@pytest.mark.parametrize(
    "address", ["che.example:50052", "[::1]:50052", "dns:///che.example:443", "dns:che.example:443"]
)
def test_a_partner_address_may_be_a_grpc_dns_target(tmp_path: Path, address: str) -> None:
    config = load_config(_write(tmp_path, GOOD.replace('address = "127.0.0.1:9"', f'address = "{address}"')))
    assert config.partners[0].address == address


def test_config_check_names_a_signer_the_trust_document_does_not_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _files(tmp_path)
    generate_key(tmp_path / "rogue")
    text = GOOD.replace('signer = "file:chn.key"', 'signer = "file:rogue.key"').replace("chn.key", "rogue.key")
    [line] = _check(_write(tmp_path, text), capsys)
    assert "signer: the transfer role of CHN's trust document version 1" in line, line
    assert "lists none of the configured signers (signer, signers.next)" in line, line


@pytest.mark.asyncio
async def test_config_check_takes_the_later_version_a_rotation_stored_in_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _files(tmp_path)
    generate_key(tmp_path / "chn-2")
    old, new = signer_from_uri(str(tmp_path / "chn.key")), signer_from_uri(str(tmp_path / "chn-2.key"))
    document = TrustDocument(
        party="CHN",
        version=2,
        expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=90),
        keys={new.keyid: new.public_key},
        roles={"trust": Role((new.keyid,), 1), "transfer": Role((new.keyid,), 1)},
    )
    store = await SQLiteStore.open(tmp_path / "chn.db")
    try:
        async with store.transaction() as tx:
            envelope = sign_trust_document(document, [old, new]).to_json()
            await tx.put_trust_document("CHN", 2, envelope, dt.datetime.now(dt.UTC))
    finally:
        await store.close()
    # The configuration still names version 1, which lists only the retired key; the database holds version 2.
    text = GOOD.replace("chn.key", "chn-2.key")
    path = _write(tmp_path, text)
    assert main(["config", "check", str(path)]) == 0, capsys.readouterr().err
    assert "OK: CHN gateway" in capsys.readouterr().out


@pytest.mark.asyncio
async def test_config_check_refuses_a_partner_document_swapped_after_the_one_stored_as_serve_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once CHE's version 1 is stored, another CHE document configured in its place (here a version 1 of other
    keys) would replace the keys this gateway trusts: config check refuses it, in serve's words."""
    _files(tmp_path)
    store = await SQLiteStore.open(tmp_path / "chn.db")
    try:
        async with store.transaction() as tx:
            await tx.put_trust_document("CHE", 1, (tmp_path / "che.trust.json").read_bytes(), dt.datetime.now(dt.UTC))
    finally:
        await store.close()
    path = _write(tmp_path, GOOD)
    assert main(["config", "check", str(path)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    generate_key(tmp_path / "stranger")
    stranger = signer_from_uri(str(tmp_path / "stranger.key"))
    (tmp_path / "che.trust.json").write_bytes(self_signed_trust_document("CHE", stranger).to_json())
    [line] = _check(path, capsys)
    assert "partners[0].trust_document: CHE's trust document version 1 differs from the version 1" in line, line
    result = subprocess.run([*CLI, "serve", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "CHE's trust document version 1 differs" in result.stderr, result.stderr


def test_config_check_and_trust_next_read_the_trust_documents_a_postgresql_database_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As from an SQLite file: the version of CHN's own document a rotation stored is the one whose signers count
    and the one trust next drafts from, and another CHE document configured in place of the stored one is
    refused, in serve's words."""
    admin = admin_url()
    url = asyncio.run(create_database(admin, "configcheck"))
    try:
        _files(tmp_path)
        generate_key(tmp_path / "chn-2")
        old, new = signer_from_uri(str(tmp_path / "chn.key")), signer_from_uri(str(tmp_path / "chn-2.key"))
        document = TrustDocument(
            party="CHN",
            version=2,
            expires=dt.datetime.now(dt.UTC) + dt.timedelta(days=90),
            keys={new.keyid: new.public_key},
            roles={"trust": Role((new.keyid,), 1), "transfer": Role((new.keyid,), 1)},
        )

        async def store_documents() -> None:
            store = await PostgresStore.open(url)
            try:
                async with store.transaction() as tx:
                    now = dt.datetime.now(dt.UTC)
                    await tx.put_trust_document("CHN", 2, sign_trust_document(document, [old, new]).to_json(), now)
                    await tx.put_trust_document("CHE", 1, (tmp_path / "che.trust.json").read_bytes(), now)
            finally:
                await store.close()

        asyncio.run(store_documents())
        path = _write(tmp_path, GOOD.replace("chn.key", "chn-2.key").replace('"chn.db"', f'"{url}"'))
        assert main(["config", "check", str(path)]) == 0, capsys.readouterr().err
        assert "OK: CHN gateway" in capsys.readouterr().out
        generate_key(tmp_path / "chn-3")
        argv = ["trust", "next", "--config", str(path), "--new-key", str(tmp_path / "chn-3.key")]
        assert main([*argv, "--signer-name", "third", "--out", str(tmp_path / "chn.trust.v3.json")]) == 0
        assert "drafted from version 2, stored in" in capsys.readouterr().out
        v2 = TrustedParty.bootstrap(sign_trust_document(document, [old, new]), dt.datetime.now(dt.UTC))
        v3 = v2.update(Envelope.from_json((tmp_path / "chn.trust.v3.json").read_bytes()), dt.datetime.now(dt.UTC))
        assert v3.version == 3
        generate_key(tmp_path / "stranger")
        stranger = signer_from_uri(str(tmp_path / "stranger.key"))
        (tmp_path / "che.trust.json").write_bytes(self_signed_trust_document("CHE", stranger).to_json())
        [line] = _check(path, capsys)
        assert "partners[0].trust_document: CHE's trust document version 1 differs from the version 1" in line, line
        result = subprocess.run([*CLI, "serve", str(path)], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2 and "CHE's trust document version 1 differs" in result.stderr, result.stderr
    finally:
        asyncio.run(drop_databases(admin, [url]))


def test_config_check_says_a_tls_key_cannot_be_read_not_that_it_is_not_pem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _files(tmp_path)
    (tmp_path / "tls.crt").write_text("not read as PEM before the key is read\n")
    with open(tmp_path / "tls.key", "wb") as big:
        big.truncate(MAX_FILE_BYTES + 1)
    text = GOOD.replace(
        "[[partners]]",
        '[tls]\ncertificate = "tls.crt"\nprivate_key = "tls.key"\nca_certificate = "tls.crt"\n\n[[partners]]',
        1,
    )
    [line] = _check(_write(tmp_path, text), capsys)
    assert f"tls.private_key: {tmp_path / 'tls.key'} cannot be read: larger than {MAX_FILE_BYTES} bytes" in line
    assert "PEM" not in line


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        ("x" * 300 + ".db", "cannot be used as a file name: File name too long"),
        ("missing-folder/chn.db", "the folder"),
        (".", "is a folder"),
    ],
)
def test_config_check_names_a_database_file_that_cannot_be(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], database: str, expected: str
) -> None:
    _files(tmp_path)
    [line] = _check(_write(tmp_path, GOOD.replace('database = "chn.db"', f'database = "{database}"')), capsys)
    assert line.count(": database: ") == 1 and expected in line, line
    assert len(line) < 600


def _another_partys_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL, recorded_at TEXT NOT NULL)")
    db.execute("INSERT INTO settings VALUES ('party', 'CHE', '2026-01-01')")
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("another Party's", "it keeps CHE's books, and this gateway is CHN's"),
        ("not SQLite", "is not an SQLite database"),
        ("a device", "is not a regular file"),
        ("a loop of links", "is a symbolic link to nothing (or a loop of links)"),
        ("a link to nothing", "is a symbolic link to nothing (or a loop of links), refused rather than followed"),
    ],
)
def test_config_check_names_a_database_serve_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, says: str
) -> None:
    _files(tmp_path)
    database = tmp_path / "books.db"
    if where == "another Party's":
        _another_partys_database(database)
    elif where == "not SQLite":
        database.write_bytes(b"not sqlite at all")
    elif where == "a device":
        database = Path("/dev/null")
    elif where == "a link to nothing":
        database.symlink_to(tmp_path / "gone.db")
    else:
        (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
        (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
        database = tmp_path / "loop1"
    path = _write(tmp_path, GOOD.replace('database = "chn.db"', f'database = "{database}"'))
    [line] = _check(path, capsys)
    assert says in line, line
    result = subprocess.run([*CLI, "serve", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


def test_config_check_refuses_a_link_to_nothing_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _files(tmp_path)
    target = tmp_path / "books.db"
    (tmp_path / "dangling.db").symlink_to(target)
    [line] = _check(_write(tmp_path, GOOD.replace('database = "chn.db"', 'database = "dangling.db"')), capsys)
    assert f"database: {tmp_path / 'dangling.db'} is a symbolic link to nothing" in line, line
    assert "would start the books afresh" in line
    assert not target.exists()


@pytest.mark.parametrize(
    "signer",
    ["file:keys/chn.key?passphrase-file=pass.txt", "FILE:keys/plain.key", "file:keys/with%20space.key"],
    ids=["passphrase file", "upper-case scheme", "percent-encoded path"],
)
def test_signer_paths_are_resolved_against_the_configuration_s_folder_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signer: str
) -> None:
    folder = tmp_path / "gateway"
    (folder / "keys").mkdir(parents=True)
    (folder / "pass.txt").write_text("correct horse\n", encoding="utf-8")
    generate_key(folder / "keys" / "chn", passphrase=b"correct horse")
    generate_key(folder / "keys" / "plain")
    generate_key(folder / "keys" / "with space")
    _files(folder)
    path = _write(folder, GOOD.replace('next = "file:chn.key"', f"next = {json.dumps(signer)}"))
    monkeypatch.chdir(tmp_path)  # not the configuration's folder
    config = load_config(path)
    assert signer_from_uri(config.signers["next"]).public_key.keyid


def test_a_pkcs11_signer_s_relative_module_path_and_pin_file_are_resolved_against_the_configuration_s_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.signing.softhsm import create_softhsm_key, require_softhsm

    require_softhsm()
    folder = tmp_path / "gateway"
    key = create_softhsm_key(folder / "hsm", token_label="relative")
    _files(folder)
    uri = (
        f"pkcs11:token=relative;object={urllib.parse.quote(key.key_label, safe='')}"
        "?module-path=hsm/libsofthsm2.so&pin-source=file:hsm/user.pin"
    )
    path = _write(folder, GOOD.replace('next = "file:chn.key"', f"next = {json.dumps(uri)}"))
    monkeypatch.chdir(tmp_path)  # not the configuration's folder
    config = load_config(path)
    assert f"module-path={folder}/hsm/libsofthsm2.so" in config.signers["next"]
    assert signer_from_uri(config.signers["next"]).public_key.keyid == key.public_key.keyid


def test_config_check_names_a_byte_order_mark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    [line] = _check(path, capsys)
    assert "starts with a byte-order mark" in line and "save it as UTF-8 without a BOM" in line


def _expired_trust_document(folder: Path, name: str, party: str, expired: dt.datetime) -> None:
    """Replace ``name``'s trust document with version 1 signed by its key, expired at ``expired``."""
    signer = signer_from_uri(str(folder / f"{name}.key"))
    document = TrustDocument(
        party=party,
        version=1,
        expires=expired,
        keys={signer.keyid: signer.public_key},
        roles={"trust": Role((signer.keyid,), 1), "transfer": Role((signer.keyid,), 1)},
    )
    (folder / f"{name}.trust.json").write_bytes(sign_trust_document(document, [signer]).to_json())


def _expired_certificate(folder: Path, expired: dt.datetime) -> str:
    """A ``[tls]`` table whose certificate (CN=CHN, issued by a demo CA) expired at ``expired``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from gateway.tls import create_ca

    ca_pem, ca_key_pem = create_ca("test CA")
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "CHN")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(expired - dt.timedelta(days=30))
        .not_valid_after(expired)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.crt").write_bytes(ca_pem)
    (folder / "tls.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return '[tls]\ncertificate = "tls.crt"\nprivate_key = "tls.key"\nca_certificate = "ca.crt"\n\n[[partners]]'


def test_config_check_warns_of_an_expired_trust_document_or_certificate_and_still_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _files(tmp_path)
    expired = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    _expired_trust_document(tmp_path, "chn", "CHN", expired)
    _expired_trust_document(tmp_path, "che", "CHE", expired + dt.timedelta(days=1))
    path = _write(tmp_path, GOOD.replace("[[partners]]", _expired_certificate(tmp_path, expired), 1))
    assert main(["config", "check", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{path}: OK: CHN gateway") and "TLS on" in captured.out
    own, partner, certificate = captured.err.splitlines()
    assert own.startswith(f"{path}: warning: trust_document: CHN's trust document version 1 in {tmp_path}/chn.trust")
    assert "expired at 2026-01-02T03:04:05+00:00" in own and "partners refuse every statement" in own
    assert partner.startswith(f"{path}: warning: partners[0].trust_document: CHE's trust document version 1 in")
    assert "che.trust.json expired at 2026-01-03T03:04:05+00:00" in partner
    assert certificate.startswith(f"{path}: warning: tls.certificate: {tmp_path / 'tls.crt'} expired at 2026-01-02")
    # A warning does not hide a problem, nor turn it into one: the file is refused for what is wrong with it.
    path.write_text(path.read_text().replace('next = "file:chn.key"', 'next = "file:absent.key"'))
    assert main(["config", "check", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and lines[0].startswith(f"{path}: signers.next:")
    assert [line.split(": ")[2] for line in lines[1:]] == [
        "trust_document",
        "partners[0].trust_document",
        "tls.certificate",
    ]


def _dated_certificate(
    folder: Path, name: str, starts: dt.datetime, expires: dt.datetime, *, ca: bool = False, issuer: str = ""
) -> None:
    """Write ``name``.crt (and ``name``.key) valid from ``starts`` to ``expires``: a CA's when ``ca``, else one
    for CN=CHN issued by the CA ``issuer`` (written before), or self-signed without one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, f"{name} CA" if ca else "CHN")])
    signer, issuer_name = key, subject
    if issuer:
        issuer_key = serialization.load_pem_private_key((folder / f"{issuer}.key").read_bytes(), None)
        assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
        signer, issuer_name = (
            issuer_key,
            x509.load_pem_x509_certificate((folder / f"{issuer}.crt").read_bytes()).subject,
        )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(starts)
        .not_valid_after(expires)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    (folder / f"{name}.crt").write_bytes(builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def test_config_check_says_a_certificate_expiring_within_the_day_does_so_in_less_than_a_day(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _files(tmp_path)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    _dated_certificate(tmp_path, "partners-ca", now - dt.timedelta(days=300), now + dt.timedelta(hours=5), ca=True)
    _dated_certificate(
        tmp_path, "tls", now - dt.timedelta(days=1), now + dt.timedelta(days=1, hours=5), issuer="partners-ca"
    )
    tls = '[tls]\ncertificate = "tls.crt"\nprivate_key = "tls.key"\nca_certificate = "partners-ca.crt"\n\n'
    path = _write(tmp_path, GOOD.replace("[[partners]]", tls + "[[partners]]", 1))
    assert main(["config", "check", str(path)]) == 0
    err = capsys.readouterr().err
    assert "tls.crt expires at" in err and ", in 1 day;" in err
    assert "partners-ca.crt expires at" in err and ", in less than a day;" in err and "in 0 days" not in err


def test_config_check_warns_of_every_tls_and_ca_certificate_not_yet_valid_expired_or_expiring_soon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only the [tls] certificate was looked at, and only once expired: a certificate dated in the future (a
    # clock or an issuer wrong), the operator API's certificate and the CA certificates were not, nor any
    # expiry in the coming days, when there is still time to renew before the connections fail.
    _files(tmp_path)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    day, hour = dt.timedelta(days=1), dt.timedelta(hours=1)
    _dated_certificate(tmp_path, "partners-ca", now - 300 * day, now + 10 * day + hour, ca=True)
    _dated_certificate(tmp_path, "tls", now + 2 * day, now + 300 * day, issuer="partners-ca")
    _dated_certificate(tmp_path, "callers-ca", now - 300 * day, now - day, ca=True)
    _dated_certificate(tmp_path, "operator", now - 300 * day, now + 20 * day + hour)
    text = GOOD.replace(
        '[operator]\nlisten = "127.0.0.1:0"',
        '[operator]\nlisten = "127.0.0.1:0"\n'
        '[operator.tls]\ncertificate = "operator.crt"\nprivate_key = "operator.key"\nclient_ca = "callers-ca.crt"',
    ).replace(
        "[[partners]]",
        '[tls]\ncertificate = "tls.crt"\nprivate_key = "tls.key"\nca_certificate = "partners-ca.crt"\n\n[[partners]]',
        1,
    )
    path = _write(tmp_path, text)
    assert main(["config", "check", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{path}: OK: CHN gateway"), captured.err
    warned = [line.removeprefix(f"{path}: warning: ") for line in captured.err.splitlines()]
    assert [line.split(":")[0] for line in warned] == [
        "tls.certificate",
        "tls.ca_certificate",
        "operator.tls.certificate",
        "operator.tls.client_ca",
    ], warned
    future, soon, operator, expired = warned
    assert f"{tmp_path / 'tls.crt'} is not valid until {(now + 2 * day).isoformat()}" in future
    assert "partners refuse its TLS connections" in future and "check this machine's clock" in future
    assert f"{tmp_path / 'partners-ca.crt'} expires at {(now + 10 * day + hour).isoformat()}, in 10 days" in soon
    assert "install the CA's new certificate before then" in soon
    assert f"{tmp_path / 'operator.crt'} expires at " in operator and ", in 20 days" in operator
    assert "operator clients refuse" in operator
    assert f"{tmp_path / 'callers-ca.crt'} expired at {(now - day).isoformat()}; serve starts, but" in expired
    assert "the operator API refuses the callers' certificates" in expired


def test_settings_that_can_never_take_effect_are_warned_of_not_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that started before goes on starting: init writes unauthenticated_loopback beside a commented
    [operator.tls], which an operator may take up with its client_ca. config check warns, as serve logs."""
    text = GOOD.replace(
        '[operator]\nlisten = "127.0.0.1:0"',
        '[operator]\nlisten = "127.0.0.1:0"\nunauthenticated_loopback = true\n'
        '[operator.tls]\ncertificate = "a.crt"\nprivate_key = "a.key"\nclient_ca = "ca.crt"',
    ).replace("\n[partner]\n", f"\n{_caller('ops', EMPTY_SHA256.upper())}\n[partner]\n")
    path = _write(tmp_path, text)
    warned = settings_without_effect(load_config(path))
    assert [line.split(":")[0] for line in warned] == [
        "operator.unauthenticated_loopback",
        "operator.callers[0].token_sha256",
    ]
    assert "no call is admitted without credentials" in warned[0] and "the SHA-256 of the empty token" in warned[1]
    main(["config", "check", str(path)])
    err = capsys.readouterr().err
    assert f"{path}: warning: operator.unauthenticated_loopback: [operator.tls] client_ca makes" in err, err


@pytest.mark.asyncio
async def test_config_check_reads_a_postgresql_database_without_waiting_for_its_write_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A running gateway holds the write lock for as long as a large transfer takes (a replica frozen in a
    transaction, up to the idle timeout): config check only reads, and must neither wait for the lock nor take it
    from the gateway's writers."""
    admin = admin_url()
    url = await create_database(admin, "configlock")
    holder = None
    try:
        await (await PostgresStore.open(url)).close()
        _files(tmp_path)
        path = _write(tmp_path, GOOD.replace('"chn.db"', f'"{url}"'))
        holder = await asyncpg.connect(url)
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK)
        checking = asyncio.create_task(asyncio.to_thread(main, ["config", "check", str(path)]))
        done, _ = await asyncio.wait([checking], timeout=15)
        assert checking in done, "config check waited for the running gateway's write lock"
        assert checking.result() == 0, capsys.readouterr().err
    finally:
        if holder is not None:
            await holder.close()  # ends the transaction: a config check still waiting goes on and ends
        await drop_databases(admin, [url])


def test_config_check_names_a_bundle_s_certificate_whose_subject_cannot_be_read_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A CA bundle's certificates are named by their subjects in a warning; cryptography loads a certificate whose
    # subject is not valid DER text (here a UTF8String of bytes that are no UTF-8) and raises only when the
    # subject is read. config check ended in a traceback there, not a line about the file.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    _files(tmp_path)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    day = dt.timedelta(days=1)
    _dated_certificate(tmp_path, "partners-ca", now - 300 * day, now + 300 * day, ca=True)
    _dated_certificate(tmp_path, "tls", now - day, now + 300 * day, issuer="partners-ca")
    _dated_certificate(tmp_path, "old-ca", now - 300 * day, now - day, ca=True)
    der = x509.load_pem_x509_certificate((tmp_path / "old-ca.crt").read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert der.count(b"old-ca CA") == 2  # its issuer and its subject
    broken = der.replace(b"old-ca CA", b"\xff" * len(b"old-ca CA"))
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(broken) + b"-----END CERTIFICATE-----\n"
    with (tmp_path / "partners-ca.crt").open("ab") as bundle:
        bundle.write(pem)
    text = GOOD.replace(
        "[[partners]]",
        '[tls]\ncertificate = "tls.crt"\nprivate_key = "tls.key"\nca_certificate = "partners-ca.crt"\n\n[[partners]]',
        1,
    )
    path = _write(tmp_path, text)
    main(["config", "check", str(path)])
    warned = [line for line in capsys.readouterr().err.splitlines() if ": warning: tls.ca_certificate:" in line]
    assert len(warned) == 1, warned
    assert "(certificate 2 of 2, a subject that cannot be read) expired at" in warned[0], warned
