"""Setting up a Party from the command line: `init`, `trust next`, `keys generate --out` into new folders,
and `call`, the generic operator client, against a real gateway."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import shutil
import stat
import sys
import time
import tomllib
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc
from gateway.cli import main
from gateway.config import load_config
from gateway.demo import demo_block
from gateway.node import GatewayNode
from gateway.setup_cli import _staging_prefix
from signing import Envelope, Role, TrustDocument, TrustedParty, sign_trust_document, signer_from_uri

NOW = dt.datetime.now(dt.UTC)


def _init(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["init", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_a_gateway_that_the_loader_accepts_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "new" / "chn"
    code, out, err = _init(
        capsys, "--party", "CHN", "--partner", "CHE=127.0.0.1:50062", "--accept-from", "CHE",
        "--operator-listen", "127.0.0.1:50061", str(folder),
    )  # fmt: skip
    assert (code, err) == (0, "")
    key = folder / "keys" / "chn.key"
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _mode(key) == 0o600 and _mode(folder / "keys") == 0o700
    trusted = TrustedParty.bootstrap(Envelope.from_json((folder / "chn.trust.json").read_bytes()), NOW)
    keyid = signer_from_uri(f"file:{key}").keyid
    assert (trusted.party, trusted.version) == ("CHN", 1)
    assert list(trusted.document.keys) == [keyid]
    assert {name: (role.keyids, role.threshold) for name, role in trusted.document.roles.items()} == {
        "trust": ((keyid,), 1),
        "transfer": ((keyid,), 1),
    }
    config = load_config(folder / "gateway.toml")
    assert config.party == "CHN"
    assert config.signer == f"file:{folder.resolve() / 'keys' / 'chn.key'}"
    assert config.operator_listen == "127.0.0.1:50061"
    assert [(p.party, p.address, p.trust_document) for p in config.partners] == [
        ("CHE", "127.0.0.1:50062", folder.resolve() / "partners" / "che.trust.json")
    ]
    assert [(r.verdict.value, r.partner) for r in config.policy.rules] == [("accept", "CHE"), ("hold", "")]
    assert config.tls is None
    # The next steps name the file to publish and the commands to run.
    assert f"Publish {folder / 'chn.trust.json'}" in out
    assert f"carbon-gateway config check {folder / 'gateway.toml'}" in out
    assert keyid in out
    assert not [p for p in tmp_path.joinpath("new").iterdir() if p.name != "chn"]  # no staging folder left


def test_init_writes_optional_settings_only_as_comments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _init(capsys, "--party", "CHE", str(tmp_path / "che"))[0] == 0
    text = (tmp_path / "che" / "gateway.toml").read_text()
    # On a loopback operator listen, callers on this machine are admitted without credentials, and it says so.
    assert "unauthenticated_loopback = true" in text.splitlines()
    assert load_config(tmp_path / "che" / "gateway.toml").operator_access.unauthenticated_loopback
    for setting in ("postgresql://", "[operator.tls]", "[[operator.callers]]", "[tls]"):
        lines = [line for line in text.splitlines() if setting in line]
        assert lines, setting
        assert all(line.startswith("#") for line in lines), lines
    # Every section that is written is explained by a comment above it.
    text = text.replace("unauthenticated_loopback = true", "")
    for section in ("[operator]", "[partner]", "[policy]"):
        before = text.splitlines()[text.splitlines().index(section) - 1]
        assert before.startswith("#") or text.splitlines()[text.splitlines().index(section) + 1].startswith("#")


def test_init_s_ledger_example_uncommented_gives_everything_the_aef_report_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator who uncomments the [ledger] lines init wrote can write the AEF report, which needs
    gwp_values as well as the NDC period, the method and party_registry."""
    assert _init(capsys, "--party", "CHE", str(tmp_path / "che"))[0] == 0
    path = tmp_path / "che" / "gateway.toml"
    lines = path.read_text().splitlines()
    start = lines.index("# [ledger]")
    end = lines.index("", start)
    path.write_text("\n".join(lines[:start] + [line[2:] for line in lines[start:end]] + lines[end:]) + "\n")
    ledger = load_config(path).ledger
    assert ledger.adjustments is not None
    assert (ledger.party_registry, ledger.gwp_values) == ("CHE01", "AR5")


def test_init_refuses_an_operator_listen_off_loopback_that_serve_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Off loopback, serve needs [operator.tls] and [[operator.callers]], which init does not write.
    code, out, err = _init(capsys, "--party", "CHE", "--operator-listen", "0.0.0.0:50071", str(tmp_path / "che"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--operator-listen 0.0.0.0:50071 is not a loopback address" in err
    assert "[operator.tls] and [[operator.callers]]" in err
    assert not (tmp_path / "che").exists()


def test_init_with_demo_tls_issues_certificates_from_one_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _init(capsys, "--party", "CHN", "--demo-tls", str(tmp_path / "chn"))[0] == 0
    code, _, err = _init(
        capsys, "--party", "CHE", "--demo-tls", "--demo-tls-ca", str(tmp_path / "chn" / "tls"), str(tmp_path / "che")
    )
    assert (code, err) == (0, "")
    from cryptography import x509

    ca = x509.load_pem_x509_certificate((tmp_path / "chn" / "tls" / "ca.crt").read_bytes())
    for party in ("chn", "che"):
        config = load_config(tmp_path / party / "gateway.toml")
        assert config.tls is not None and config.tls.certificate.is_file() and config.tls.private_key.is_file()
        assert _mode(config.tls.private_key) == 0o600
        cert = x509.load_pem_x509_certificate(config.tls.certificate.read_bytes())
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)
        assert config.tls.ca_certificate.read_bytes() == (tmp_path / "chn" / "tls" / "ca.crt").read_bytes()
    # The CA's private key stays where the CA is, and is not copied to the gateway that borrowed it.
    assert (tmp_path / "chn" / "tls" / "ca.key").is_file()
    assert sorted(p.name for p in (tmp_path / "che" / "tls").iterdir()) == ["ca.crt", "che.crt", "che.key"]


def test_init_with_a_pkcs11_signer_uses_the_token_key_and_writes_no_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.signing.softhsm import create_softhsm_key, require_softhsm

    require_softhsm()
    key = create_softhsm_key(tmp_path / "hsm", token_label="chn-gateway")
    code, out, err = _init(capsys, "--party", "CHN", "--signer", key.uri, str(tmp_path / "chn"))
    assert (code, err) == (0, "")
    assert not (tmp_path / "chn" / "keys").exists()
    trusted = TrustedParty.bootstrap(Envelope.from_json((tmp_path / "chn" / "chn.trust.json").read_bytes()), NOW)
    assert list(trusted.document.keys) == [key.public_key.keyid]
    assert load_config(tmp_path / "chn" / "gateway.toml").signer == key.uri
    assert f"signer {key.uri}" in out


def test_init_writes_a_pkcs11_signer_s_relative_paths_as_the_configuration_resolves_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.signing.softhsm import create_softhsm_key, require_softhsm

    require_softhsm()
    key = create_softhsm_key(tmp_path / "hsm", token_label="chn-gateway")
    monkeypatch.chdir(tmp_path)
    uri = key.uri.split("?")[0] + "?module-path=hsm/libsofthsm2.so&pin-source=file:hsm/user.pin"
    code, _, err = _init(capsys, "--party", "CHN", "--signer", uri, "gw/chn")
    assert (code, err) == (0, "")
    written = tomllib.loads((tmp_path / "gw" / "chn" / "gateway.toml").read_text(encoding="utf-8"))["signer"]
    assert written.endswith(f"?module-path={tmp_path}/hsm/libsofthsm2.so&pin-source=file:{tmp_path}/hsm/user.pin")
    monkeypatch.chdir("/")
    config = load_config(tmp_path / "gw" / "chn" / "gateway.toml")
    assert signer_from_uri(config.signer).public_key.keyid == key.public_key.keyid


def test_init_names_the_staging_folders_an_init_killed_outright_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    left = tmp_path / ".gw.init-k1ll3d00"
    (left / "keys").mkdir(parents=True)
    (left / "keys" / "chn.key").write_text("a private key")
    (tmp_path / ".other.init-abcdefgh").mkdir()  # another folder's: not this init's to name
    code, _, err = _init(capsys, "--party", "CHN", str(tmp_path / "gw"))
    assert code == 0
    assert err.count("\n") == 1 and str(left) in err and "private keys" in err and ".other" not in err
    assert left.exists()  # named, not removed: another init might still be writing it
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gw.init-k1ll3d00", ".other.init-abcdefgh", "gw"]


def test_init_writes_into_a_folder_whose_name_is_as_long_as_the_file_system_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its hidden staging folder beside it takes a name cut short, not the folder's name and more; file systems
    count a name's bytes (a 4-byte character is 4 of them)."""
    for name in ("g" * 250, "\U0001f331" * 63):
        folder = tmp_path / name
        code, _, err = _init(capsys, "--party", "CHN", str(folder))
        assert (code, err) == (0, ""), name
        assert (folder / "gateway.toml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["g" * 250, "\U0001f331" * 63])
    # A name that is not UTF-8 is cut as the bytes it is (os.fsdecode keeps them), not refused.
    odd = os.fsdecode(b"g\xff" * 40)
    assert os.fsencode(_staging_prefix(odd)) == b".%s.init-" % (b"g\xff" * 32)


@pytest.mark.parametrize(
    ("uri", "configured"),
    [
        ("pkcs11:token=T?module-path=lib/m.so&pin-env=P", "pkcs11:token=T?module-path={tmp}/lib/m.so&pin-env=P"),
        (
            "PKCS11:token=T?pin-source=file:gw/pin&module-path=/abs/m.so",
            "PKCS11:token=T?pin-source=file:pin&module-path=/abs/m.so",
        ),
        ("pkcs11:token=T?module-path=gw/a%20b/m.so", "pkcs11:token=T?module-path=a%20b/m.so"),
        ("pkcs11:token=T?pin-source=file:", "pkcs11:token=T?pin-source=file:"),
        ("pkcs11:token=T", "pkcs11:token=T"),
    ],
)
def test_a_pkcs11_uri_s_relative_paths_are_spelled_against_the_configuration_s_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uri: str, configured: str
) -> None:
    from gateway.setup_cli import _as_configured

    monkeypatch.chdir(tmp_path)
    assert _as_configured(uri, tmp_path / "gw" / "gateway.toml") == configured.format(tmp=tmp_path)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--party", "chn"], "--party 'chn' is not an ISO 3166-1 alpha-3 code in capitals; write CHN"),
        (["--party", "China"], "--party 'China' is not an ISO 3166-1 alpha-3 code"),
        (["--party", "XXX"], "--party 'XXX' is not an ISO 3166-1 alpha-3 code in capitals, e.g. CHN"),
        (["--party", "chf"], "--party 'chf' is not an ISO 3166-1 alpha-3 code in capitals, e.g. CHN"),
        (["--party", "CHN", "--partner", "CHF=127.0.0.1:1"], "--partner 'CHF' is not an ISO 3166-1 alpha-3 code"),
        (["--party", "CHN", "--partner", "CHE"], "--partner 'CHE' is not PARTY=HOST:PORT"),
        (["--party", "CHN", "--partner", "CHN=127.0.0.1:1"], "CHN is this gateway's own Party"),
        (["--party", "CHN", "--partner", "CHE=localhost"], "--partner CHE: 'localhost' is not HOST:PORT"),
        (["--party", "CHN", "--partner", "CHE=che.example:0"], "--partner CHE: 'che.example:0' is not HOST:PORT"),
        (["--party", "CHN", "--accept-from", "CHE"], "--accept-from CHE: name it as a partner too"),
        (["--party", "CHN", "--operator-listen", "300.1.1.1:5"], "--operator-listen: '300.1.1.1' in"),
        (["--party", "CHN", "--operator-listen", "a b:5"], "--operator-listen: 'a b' in 'a b:5' is not a host name"),
        (["--party", "CHN", "--partner-listen", "a b:5"], "--partner-listen: 'a b' in 'a b:5' is not a host name"),
        (["--party", "CHN", "--partner", "CHE=a\tb:5"], "--partner CHE: 'a\\tb' in 'a\\tb:5' is not a host name"),
        (["--party", "CHN", "--signer", "file:x.key"], "--signer 'file:x.key' is not a pkcs11: URI"),
        (["--party", "CHN", "--days", "0"], "--days 0 is not in 1..3650"),
        (
            ["--party", "CHN", "--operator-listen", "127.0.0.1:7000", "--partner-listen", "127.0.0.1:7000"],
            "--partner-listen: '127.0.0.1:7000' is also --operator-listen; give each server its own port",
        ),
        (
            ["--party", "CHN", "--operator-listen", "127.0.0.1:7000", "--partner-listen", "0.0.0.0:7000"],
            "--partner-listen: '0.0.0.0:7000' is also --operator-listen ('127.0.0.1:7000': the same port, on an"
            " overlapping address)",
        ),
        (
            ["--party", "CHN", "--operator-listen", "localhost:7000", "--partner-listen", "127.0.0.1:7000"],
            "('localhost:7000': the same port, on an overlapping address)",
        ),
        (["--party", "CHN", "--demo-tls-ca", "x"], "--demo-tls-ca needs --demo-tls"),
    ],
)
def test_init_refuses_a_bad_argument_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    code, out, err = _init(capsys, *argv, str(tmp_path / "gw"))
    assert code == 2 and out == ""
    assert err.startswith("carbon-gateway init: ") and err.count("\n") == 1
    assert expected in err
    assert not (tmp_path / "gw").exists()


def test_names_too_long_and_a_passphrase_too_long_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = str(tmp_path / ("x" * 300))
    code, out, err = _init(capsys, "--party", "CHN", long)
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith(f"carbon-gateway init: DIR {long}: ") and err.endswith("File name too long\n"), err
    for prefix in (long, f"{long}/chn"):
        assert main(["keys", "generate", "--out", prefix]) == 2
        err = capsys.readouterr().err
        assert err == f"carbon-gateway keys generate: --out {prefix}: File name too long\n", err
    passphrase = tmp_path / "passphrase"
    passphrase.write_bytes(b"p" * 1024 + b"\n")
    key = tmp_path / "k"
    argv = ["keys", "generate", "--algorithm", "ecdsa-p256-sha256", "--passphrase-file", str(passphrase)]
    assert main([*argv, "--out", str(key)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("carbon-gateway keys generate: --passphrase-file ") and err.count("\n") == 1, err
    assert "1024 bytes; at most 1023" in err and not key.with_suffix(".key").exists()
    passphrase.write_bytes(b"p" * 1023 + b"\n")
    assert main([*argv, "--out", str(key)]) == 0
    assert signer_from_uri(f"file:{key}.key?passphrase-file={passphrase}").public_key.keyid


def test_init_refuses_a_folder_that_holds_anything_and_leaves_it_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init(capsys, "--party", "CHN", str(tmp_path / "chn"))[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "chn").rglob("*") if p.is_file()}
    code, _, err = _init(capsys, "--party", "CHN", str(tmp_path / "chn"))
    assert code == 2 and "already holds a gateway" in err and "gateway.toml" in err
    assert {p: p.read_bytes() for p in (tmp_path / "chn").rglob("*") if p.is_file()} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, err = _init(capsys, "--party", "CHN", str(tmp_path / "other"))
    assert code == 2 and "is not empty (notes.txt)" in err
    (tmp_path / "file").write_text("x")
    code, _, err = _init(capsys, "--party", "CHN", str(tmp_path / "file"))
    assert code == 2 and "is not a folder" in err


def test_init_that_fails_half_way_leaves_nothing_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The key and the trust document are written before the demo CA is found missing.
    code, _, err = _init(
        capsys, "--party", "CHN", "--demo-tls", "--demo-tls-ca", str(tmp_path / "no-ca"), str(tmp_path / "chn")
    )
    assert code == 2 and "--demo-tls-ca: " in err and "does not exist" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_init_from_a_borrowed_demo_ca_folder_says_which_folder_holds_the_ca_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A third Party pointing --demo-tls-ca at the second gateway's tls folder (which has ca.crt, not ca.key)
    is told to name the first gateway's folder, not only that a file cannot be read."""
    assert _init(capsys, "--party", "CHN", "--demo-tls", str(tmp_path / "chn"))[0] == 0
    borrowed = ("--demo-tls", "--demo-tls-ca", str(tmp_path / "chn" / "tls"))
    assert _init(capsys, "--party", "CHE", *borrowed, str(tmp_path / "che"))[0] == 0
    code, _, err = _init(
        capsys, "--party", "SGP", "--demo-tls", "--demo-tls-ca", str(tmp_path / "che" / "tls"), str(tmp_path / "sgp")
    )
    assert code == 2 and "the gateway whose init created the demo CA" in err and err.count("\n") == 1, err
    assert not (tmp_path / "sgp").exists()


def test_init_fills_an_empty_folder_that_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gw").mkdir()
    assert _init(capsys, "--party", "CHN", str(tmp_path / "gw"))[0] == 0
    assert load_config(tmp_path / "gw" / "gateway.toml").party == "CHN"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gw"]


def test_init_reports_a_folder_it_cannot_create(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plain-file").write_text("x")
    code, _, err = _init(capsys, "--party", "CHN", str(tmp_path / "plain-file" / "chn"))
    assert code == 2 and err.startswith("carbon-gateway init: cannot create") and err.count("\n") == 1
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = _init(capsys, "--party", "CHN", str(locked / "chn"))
        assert code == 2 and "cannot create" in err and "Permission denied" in err


# -- keys generate --------------------------------------------------------------------------------------


def test_keys_generate_creates_missing_key_folders_privately(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "generate", "--out", str(tmp_path / "keys" / "deep" / "che")]) == 0
    assert (tmp_path / "keys" / "deep" / "che.key").is_file()
    assert _mode(tmp_path / "keys") == 0o700 and _mode(tmp_path / "keys" / "deep") == 0o700
    (tmp_path / "blocker").write_text("x")
    assert main(["keys", "generate", "--out", str(tmp_path / "blocker" / "che")]) == 2
    assert "blocker exists and is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("out", "says"),
    [
        ("keys/", "names a folder"),
        ("keys", "names a folder"),
        ("a\nb", "control"),
        ("keys/che.key", "takes a file prefix, not the key's file name"),
        ("keys/che.pub", "takes a file prefix, not the key's file name"),
    ],
)
def test_keys_generate_refuses_a_prefix_that_is_a_folder_or_holds_a_control_character(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str, says: str
) -> None:
    (tmp_path / "keys").mkdir()
    before = sorted(tmp_path.rglob("*"))
    assert main(["keys", "generate", "--out", str(tmp_path / out)]) == 2
    assert says in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written beside the folder


# -- trust next -----------------------------------------------------------------------------------------


def _gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert (
        _init(
            capsys,
            "--party",
            "CHN",
            "--operator-listen",
            "127.0.0.1:0",
            "--partner-listen",
            "127.0.0.1:0",
            str(tmp_path / "chn"),
        )[0]
        == 0
    )
    assert main(["keys", "generate", "--out", str(tmp_path / "chn" / "keys" / "chn-2")]) == 0
    capsys.readouterr()
    return tmp_path / "chn" / "gateway.toml"


def test_trust_next_drafts_the_version_partners_holding_version_1_accept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _gateway(tmp_path, capsys)
    new_key = tmp_path / "chn" / "keys" / "chn-2.key"
    assert main(["trust", "next", "--config", str(config), "--new-key", f"file:{new_key}", "--days", "30"]) == 0
    out = capsys.readouterr().out
    v1 = TrustedParty.bootstrap(Envelope.from_json((tmp_path / "chn" / "chn.trust.json").read_bytes()), NOW)
    draft = tmp_path / "chn" / "chn.trust.v2.json"
    v2 = v1.update(Envelope.from_json(draft.read_bytes()), NOW)
    old, new = v1.document.roles["trust"].keyids[0], signer_from_uri(f"file:{new_key}").keyid
    assert (v2.party, v2.version) == ("CHN", 2)
    assert set(v2.document.keys) == {old, new}
    assert v2.document.roles["trust"].keyids == v2.document.roles["transfer"].keyids == (old, new)
    assert (
        dt.timedelta(days=30) - dt.timedelta(minutes=5) < v2.expires - dt.datetime.now(dt.UTC) <= dt.timedelta(days=30)
    )
    assert f"wrote {draft}" in out and "[signers]" in out and "RotateTrustDocument" in out
    # Again: the files are never overwritten.
    assert main(["trust", "next", "--config", str(config), "--new-key", f"file:{new_key}"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    # A folder is not a file to write.
    folder = str(tmp_path / "chn")
    assert main(["trust", "next", "--config", str(config), "--new-key", f"file:{new_key}", "--out", folder]) == 2
    assert f"--out: {folder} is a folder; name the file to write" in capsys.readouterr().err


def test_trust_next_retire_old_leaves_only_the_new_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _gateway(tmp_path, capsys)
    new_key = tmp_path / "chn" / "keys" / "chn-2.key"
    out = tmp_path / "v2.json"
    assert (
        main(["trust", "next", "--config", str(config), "--new-key", str(new_key), "--retire-old", "--out", str(out)])
        == 0
    )
    v1 = TrustedParty.bootstrap(Envelope.from_json((tmp_path / "chn" / "chn.trust.json").read_bytes()), NOW)
    v2 = v1.update(Envelope.from_json(out.read_bytes()), NOW)
    new = signer_from_uri(str(new_key)).keyid
    assert list(v2.document.keys) == [new]
    assert v2.document.roles["trust"].keyids == v2.document.roles["transfer"].keyids == (new,)
    request = json.loads((tmp_path / "v2.rotate.json").read_text())
    assert base64.b64decode(request["envelope_json"]) == out.read_bytes()
    assert request["signer"] == "next"


def test_trust_next_prints_the_new_key_as_the_configuration_resolves_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _gateway(tmp_path, capsys)
    monkeypatch.chdir(tmp_path)
    argv = ["trust", "next", "--config", "chn/gateway.toml", "--new-key", "file:chn/keys/chn-2.key"]
    assert main([*argv, "--out", "v2.json"]) == 0
    # The configuration's paths resolve against its own folder, not the folder trust next ran in.
    line = 'next = "file:keys/chn-2.key"'
    assert f"under [signers]: {line}," in capsys.readouterr().out
    config.write_text(config.read_text() + f"\n[signers]\n{line}\n")
    configured = signer_from_uri(load_config(config).signers["next"])
    assert configured.keyid == signer_from_uri(str(tmp_path / "chn" / "keys" / "chn-2.key")).keyid
    # A key outside the configuration's folder is printed as an absolute path.
    assert main(["keys", "generate", "--out", "n3"]) == 0
    capsys.readouterr()
    argv = ["trust", "next", "--config", "chn/gateway.toml", "--new-key", "n3.key", "--signer-name", "n3"]
    assert main([*argv, "--out", "v2b.json"]) == 0
    assert f'under [signers]: n3 = "{tmp_path.resolve() / "n3.key"}",' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--new-key", "nothere.key"], "--new-key 'nothere.key':"),
        (["--new-key", "CURRENT"], "is already in version 1"),
        (["--new-key", "NEW", "--days", "9999"], "--days 9999 is not in 1..3650"),
        (["--new-key", "NEW", "--current", "gateway.toml"], "--current: "),
        (["--new-key", "NEW", "--out", "/nonexistent-folder/v2.json"], "cannot write /nonexistent-folder/v2.json"),
        (["--new-key", "NEW", "--out", "LONG.json"], "--out: cannot write LONG.json: File name too long"),
        (["--new-key", "NEW", "--signer-name", ""], "--signer-name '': use 1 to 64 letters, digits"),
        (["--new-key", "NEW", "--signer-name", "a\nb"], "--signer-name 'a\\nb': use 1 to 64 letters"),
        (["--new-key", "NEW", "--signer-name", 'x"y'], "--signer-name 'x\"y': use 1 to 64 letters"),
        (
            ["--new-key", "NEW", "--signer-name", "default"],
            "gateway.toml already gives signer another key",
        ),
    ],
)
def test_trust_next_refuses_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    config = _gateway(tmp_path, capsys)
    keys = tmp_path / "chn" / "keys"
    names = {"CURRENT": str(keys / "chn.key"), "NEW": str(keys / "chn-2.key"), "gateway.toml": str(config)}
    argv = [names.get(a, a).replace("LONG", str(tmp_path / ("x" * 300))) for a in argv]
    assert main(["trust", "next", "--config", str(config), *argv]) == 2
    err = capsys.readouterr().err.replace(str(tmp_path / ("x" * 300)), "LONG")
    assert err.startswith("carbon-gateway trust next: ") and err.count("\n") == 1
    assert expected in err


@pytest.mark.asyncio
async def test_trust_next_drafts_exactly_what_rotate_trust_document_installs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = _gateway(tmp_path, capsys)
    new_key = tmp_path / "chn" / "keys" / "chn-2.key"
    assert main(["trust", "next", "--config", str(config_path), "--new-key", f"file:{new_key}"]) == 0
    capsys.readouterr()
    # The operator adds the new key under [signers], as the printed next steps say, and starts the gateway.
    text = config_path.read_text().replace("# [signers]\n# next = ", "[signers]\nnext = ")
    config_path.write_text(text)
    node = await GatewayNode.from_config(load_config(config_path))
    await node.start()
    try:
        request = json.loads((tmp_path / "chn" / "chn.trust.v2.rotate.json").read_text())
        async with grpc.aio.insecure_channel(node.operator_address) as channel:
            stub = operator_pb2_grpc.OperatorServiceStub(channel)
            status = await stub.RotateTrustDocument(
                operator_pb2.RotateTrustDocumentRequest(
                    idempotency_key=request["idempotency_key"],
                    envelope_json=base64.b64decode(request["envelope_json"]),
                    signer=request["signer"],
                )
            )
        assert status.version == 2
        assert node.core.exchange.signer.keyid == signer_from_uri(f"file:{new_key}").keyid
    finally:
        await node.stop()
    # The document still lists the old key (no --retire-old), and the configuration still names it as signer: a
    # restart signs with the key the rotation chose, not the old one.
    old_key = signer_from_uri(load_config(config_path).signer).keyid
    restarted = await GatewayNode.from_config(load_config(config_path))
    await restarted.start()
    try:
        assert old_key in restarted.core.trust.own.document.roles["transfer"].keyids
        assert restarted.core.exchange.signer.keyid == signer_from_uri(f"file:{new_key}").keyid != old_key
    finally:
        await restarted.stop()
    # A later version installed from the configuration, with its own signer: the rotation's choice was for version
    # 2, and the configured signer of version 3 signs.
    third_key = tmp_path / "chn" / "keys" / "chn-3.key"
    assert main(["keys", "generate", "--out", str(third_key.with_suffix(""))]) == 0
    current = tmp_path / "chn" / "chn.trust.v2.json"
    argv = ["--current", str(current), "--new-key", f"file:{third_key}", "--signer-name", "third"]
    assert main(["trust", "next", "--config", str(config_path), *argv]) == 0
    capsys.readouterr()
    text = config_path.read_text().replace('trust_document = "chn.trust.json"', 'trust_document = "chn.trust.v3.json"')
    config_path.write_text(text.replace('signer = "file:keys/chn.key"', 'signer = "file:keys/chn-3.key"'))
    third = await GatewayNode.from_config(load_config(config_path))
    await third.start()
    try:
        listed = third.core.trust.own.document.roles["transfer"].keyids
        assert third.core.trust.own.version == 3 and signer_from_uri(f"file:{new_key}").keyid in listed
        assert third.core.exchange.signer.keyid == signer_from_uri(f"file:{third_key}").keyid
    finally:
        await third.stop()


# -- call -----------------------------------------------------------------------------------------------


async def _cli(*argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *argv,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.asyncio
async def test_call_sends_json_to_any_method_and_prints_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = _gateway(tmp_path, capsys)
    node = await GatewayNode.from_config(load_config(config_path))
    await node.start()
    try:
        address = node.operator_address
        account = {"account_id": "CN-PO-0001", "holder_name": "Owner", "account_type": "project owner"}
        request = json.dumps({"idempotency_key": "k1", "account": account})
        code, out, err = await _cli("call", "OpenAccount", request, "--address", address)
        assert (code, err) == (0, "")
        assert json.loads(out) == account
        # From standard input, with the options first, and one field of the answer.
        code, out, err = await _cli("call", "ListHoldings", "--address", address, "-", stdin=b"{}")
        assert (code, out.strip(), err) == (0, "{}", "")
        code, out, _ = await _cli(
            "call", "OpenAccount", "--address", address, "--field", "account_type", "-", stdin=request.encode()
        )
        assert (code, out) == (0, "project owner\n")
        # A field the answer does not have is a usage error, refused before anything is sent (a loop waiting for
        # the field's value would otherwise spin on empty lines).
        code, out, err = await _cli(
            "call", "GetTransfer", '{"transfer_id": "t"}', "--address", address, "--field", "stat"
        )
        assert (code, out) == (2, "") and err.count("\n") == 1
        assert "--field stat: " in err and "no field 'stat'; its fields: transfer_id, role, state," in err
        # A refusal: one line with the response code and the field, exit 1.
        bad = json.dumps({"idempotency_key": "k2", "account": {**account, "account_id": "X", "account_type": "vault"}})
        code, out, err = await _cli("call", "OpenAccount", bad, "--address", address)
        assert code == 1 and out == "" and err.count("\n") == 1
        assert (
            err.startswith("carbon-gateway call OpenAccount: INVALID_ARGUMENT: ")
            and "(field account.account_type)" in err
        )
        # A list in pages: one page, or every page with --all-pages (a method without pages refuses it).
        for i in range(2, 6):
            more = json.dumps({"idempotency_key": f"k{i}", "account": {**account, "account_id": f"CN-PO-000{i}"}})
            assert (await _cli("call", "OpenAccount", more, "--address", address))[0] == 0
            issued = {"idempotency_key": f"i{i}", "account_id": f"CN-PO-000{i}", "block": _block(i)}
            assert (await _cli("call", "RegisterIssuance", json.dumps(issued), "--address", address))[0] == 0
        code, out, err = await _cli("call", "ListHoldings", '{"page_size": 2}', "--address", address)
        assert (code, err, len(json.loads(out)["holdings"])) == (0, "", 2) and json.loads(out)["next_page_token"]
        code, out, err = await _cli("call", "ListHoldings", '{"page_size": 2}', "--all-pages", "--address", address)
        pages = [json.loads(line) for line in out.splitlines()]
        assert (code, err, [len(p["holdings"]) for p in pages]) == (0, "", [2, 2])
        assert sorted(h["account_id"] for p in pages for h in p["holdings"]) == [f"CN-PO-000{i}" for i in range(2, 6)]
        code, out, err = await _cli("call", "GetTransfer", '{"transfer_id": "t"}', "--all-pages", "--address", address)
        assert (code, out) == (2, "") and "--all-pages: GetTransfer does not answer in pages" in err
        # The configuration names the address.
        code, out, _ = await _cli("call", "ListTransfers", "--config", str(config_path.with_name("running.toml")))
        assert code == 2
    finally:
        await node.stop()


def _block(i: int) -> dict[str, object]:
    return json_format.MessageToDict(demo_block(100 * i + 1, 100 * i + 10), preserving_proto_field_name=True)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["call", "OpenAcount", "--address", "127.0.0.1:9"], "has no method 'OpenAcount'; did you mean OpenAccount?"),
        (
            ["call", "GetTransfer", "{not json", "--address", "127.0.0.1:9"],
            "is not a carbon_gateway.v1.GetTransferRequest in JSON",
        ),
        (["call", "GetTransfer", '{"transfer": 1}', "--address", "127.0.0.1:9"], "(its fields: transfer_id)"),
        (["call", "GetTransfer", "{}"], "give the gateway: --config FILE or --address HOST:PORT"),
        (["call", "GetTransfer", "{}", "--address", "a:1", "--bogus"], "unrecognized arguments: --bogus"),
        (["call", "ListTransfers", "[]", "--address", "127.0.0.1:9"], "the request is an array, not a JSON object"),
        (["call", "GetTransfer", '"t1"', "--address", "127.0.0.1:9"], "the request is a string, not a JSON object"),
        *(
            (
                ["call", "ListTransfers", "--address", "127.0.0.1:9", "--timeout", timeout],
                f"argument --timeout: {timeout!r} is not a number of seconds in the digits 0-9",
            )
            for timeout in ["nan", "inf", "1e308", "-1", "\u0661", "1_0", " 5"]
        ),
        (["call", "ListTransfers", "--address", "127.0.0.1:9", "--timeout", "0"], "--timeout 0.0: "),
        (
            ["call", "ListTransfers", "--address", "127.0.0.1:9", "--field", "nosuch"],
            "--field nosuch: the answer (carbon_gateway.v1.ListTransfersResponse) has no field 'nosuch'; its fields:"
            " transfers",
        ),
        (
            ["call", "GetTransfer", "--address", "127.0.0.1:9", "--field", "blocks.start"],
            "--field blocks.start: 'blocks' is not a single message",
        ),
    ],
)
def test_call_refuses_an_unknown_method_or_bad_json_with_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert expected in captured.err


def test_call_reports_an_unreachable_gateway_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["call", "ListTransfers", "--address", "127.0.0.1:9", "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("carbon-gateway call ListTransfers: 127.0.0.1:9: UNAVAILABLE") and err.count("\n") == 1


def test_call_with_config_waits_for_a_gateway_no_longer_than_its_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --config, the Party check before the call keeps to --timeout too, and a gateway that never answers
    is reported with what to do."""
    from tests.processes import free_port

    folder = tmp_path / "chn"
    assert _init(capsys, "--party", "CHN", "--operator-listen", f"127.0.0.1:{free_port()}", str(folder))[0] == 0
    started = time.monotonic()
    code = main(["call", "ListTrust", "--wait", "--timeout", "2", "--config", str(folder / "gateway.toml")])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1 and elapsed < 15, elapsed
    assert "DEADLINE_EXCEEDED" in err and "carbon-gateway serve" in err and err.count("\n") == 1


def test_trust_next_refuses_a_key_a_partner_s_trust_document_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init(capsys, "--party", "CHE", str(tmp_path / "che"))[0] == 0
    assert _init(capsys, "--party", "CHN", "--partner", "CHE=127.0.0.1:50062", str(tmp_path / "chn"))[0] == 0
    shutil.copyfile(tmp_path / "che" / "che.trust.json", tmp_path / "chn" / "partners" / "che.trust.json")
    capsys.readouterr()
    config = tmp_path / "chn" / "gateway.toml"
    argv = ["trust", "next", "--config", str(config), "--new-key", str(tmp_path / "che" / "keys" / "che.key")]
    assert main([*argv, "--out", str(tmp_path / "v2.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("carbon-gateway trust next: --new-key: the key ") and err.count("\n") == 1, err
    assert "is CHE's" in err and "CHE could sign as CHN" in err
    assert not (tmp_path / "v2.json").exists()


def test_trust_next_refuses_a_current_document_at_the_last_version_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _gateway(tmp_path, capsys)
    key = signer_from_uri(str(tmp_path / "chn" / "keys" / "chn.key"))
    last = TrustDocument(
        party="CHN",
        version=2**63 - 1,
        expires=NOW + dt.timedelta(days=30),
        keys={key.keyid: key.public_key},
        roles={"trust": Role((key.keyid,), 1), "transfer": Role((key.keyid,), 1)},
    )
    current = tmp_path / "last.trust.json"
    current.write_bytes(sign_trust_document(last, [key]).to_json())
    argv = ["--current", str(current), "--new-key", str(tmp_path / "chn" / "keys" / "chn-2.key")]
    assert main(["trust", "next", "--config", str(config), *argv, "--out", str(tmp_path / "next.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"carbon-gateway trust next: --current: {current} is version {2**63 - 1}")
    assert "no next version" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "next.json").exists()


@pytest.mark.asyncio
async def test_trust_next_drafts_from_the_version_a_rotation_stored_in_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = _gateway(tmp_path, capsys)
    folder = tmp_path / "chn"
    assert main(["trust", "next", "--config", str(config_path), "--new-key", str(folder / "keys" / "chn-2.key")]) == 0
    config_path.write_text(config_path.read_text().replace("# [signers]\n# next = ", "[signers]\nnext = "))
    capsys.readouterr()
    node = await GatewayNode.from_config(load_config(config_path))
    await node.start()
    try:
        request = json.loads((folder / "chn.trust.v2.rotate.json").read_text())
        async with grpc.aio.insecure_channel(node.operator_address) as channel:
            status = await operator_pb2_grpc.OperatorServiceStub(channel).RotateTrustDocument(
                operator_pb2.RotateTrustDocumentRequest(
                    idempotency_key=request["idempotency_key"],
                    envelope_json=base64.b64decode(request["envelope_json"]),
                    signer=request["signer"],
                )
            )
        assert status.version == 2
    finally:
        await node.stop()
    # The operator loses the draft of version 2; the configuration still names version 1's file.
    stored = TrustedParty.restore(Envelope.from_json((folder / "chn.trust.v2.json").read_bytes()))
    (folder / "chn.trust.v2.json").unlink()
    third = folder / "keys" / "chn-3.key"
    assert main(["keys", "generate", "--out", str(third.with_suffix(""))]) == 0
    capsys.readouterr()
    argv = ["trust", "next", "--config", str(config_path), "--new-key", str(third), "--signer-name", "third"]
    # Naming version 1's file as the current one is refused: the database holds version 2.
    v1 = folder / "chn.trust.json"
    assert main([*argv, "--current", str(v1), "--out", str(tmp_path / "stale.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"carbon-gateway trust next: --current: {v1} is version 1, but the gateway's database")
    assert "holds version 2" in err and err.count("\n") == 1
    assert not (tmp_path / "stale.json").exists()
    # Without --current, the draft follows the stored version 2, not the configured version 1.
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "drafted from version 2, stored in" in out and "is version 1" in out
    v3 = stored.update(Envelope.from_json((folder / "chn.trust.v3.json").read_bytes()), NOW)
    assert v3.version == 3 and signer_from_uri(str(third)).keyid in v3.document.roles["transfer"].keyids
    assert not (folder / "chn.trust.v2.json").exists()
