"""The partner engineers' tools (`gateway.tools`): keys, envelope signing and verification, demo certificates."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.tools import EXIT_INVALID, EXIT_OK, EXIT_USAGE, register
from gateway.wire import envelope_to_bytes
from signing import (
    Algorithm,
    CryptoSigner,
    Envelope,
    PublicKey,
    Role,
    Signer,
    TrustDocument,
    sign_envelope,
    sign_trust_document,
    signer_from_uri,
)

PAYLOAD_TYPE = "application/vnd.carbon-gateway.statement.v1+protobuf"
PAYLOAD = b"\x0a\x03CHN\x12\x03CHE statement bytes \x00\xff"


@dataclass(frozen=True)
class Outcome:
    """What one command returned and printed."""

    code: int
    out: str
    err: str


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Outcome:
    """Parse ``argv`` with a parser holding only the tools, run the command in-process, capture its output."""
    parser = argparse.ArgumentParser(prog="carbon-gateway")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    capsys.readouterr()
    code = args.func(args)
    assert isinstance(code, int)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def trust_document(
    party: str, signers: Sequence[Signer], *, transfer_threshold: int = 1, expires_in: timedelta = timedelta(days=30)
) -> bytes:
    """A trust document in which ``signers`` hold both roles, signed by all of them, as JSON envelope bytes."""
    keys = {s.public_key.keyid: s.public_key for s in signers}
    document = TrustDocument(
        party=party,
        version=1,
        expires=datetime.now(UTC).replace(microsecond=0) + expires_in,
        keys=keys,
        roles={"trust": Role(tuple(keys), 1), "transfer": Role(tuple(keys), transfer_threshold)},
    )
    return sign_trust_document(document, list(signers)).to_json()


@pytest.fixture
def chn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    """A CHN key made with ``keys generate`` (path of the private key, keyid) and ``chn.trust.json`` beside it."""
    outcome = run(capsys, "keys", "generate", "--out", str(tmp_path / "chn"))
    assert outcome.code == EXIT_OK, outcome.err
    key = tmp_path / "chn.key"
    (tmp_path / "chn.trust.json").write_bytes(trust_document("CHN", [signer_from_uri(str(key))]))
    return key, outcome.out.strip()


def sign(capsys: pytest.CaptureFixture[str], key: str, payload_file: Path, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """Run ``envelope sign`` and return the printed envelope."""
    outcome = run(capsys, "envelope", "sign", "--key", key, "--type", payload_type, str(payload_file))
    assert outcome.code == EXIT_OK, outcome.err
    assert outcome.err == ""
    return outcome.out.encode("ascii")


def lines(text: str) -> dict[str, str]:
    """The ``name: value`` lines of a command's output."""
    return dict(line.split(": ", 1) for line in text.splitlines())


# -- keys generate -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [a.value for a in Algorithm])
def test_keys_generate_writes_a_private_key_readable_only_by_its_owner_and_a_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], algorithm: str
) -> None:
    outcome = run(capsys, "keys", "generate", "--out", str(tmp_path / "chn"), "--algorithm", algorithm)

    assert outcome.code == EXIT_OK, outcome.err
    public = PublicKey.from_pem((tmp_path / "chn.pub").read_bytes())
    assert outcome.out == f"{public.keyid}\n"
    assert public.algorithm == Algorithm(algorithm)
    assert stat.S_IMODE((tmp_path / "chn.key").stat().st_mode) == 0o600
    assert b"-----BEGIN PRIVATE KEY-----" in (tmp_path / "chn.key").read_bytes()
    assert signer_from_uri(str(tmp_path / "chn.key")).public_key == public


def test_keys_generate_encrypts_with_the_passphrase_file_and_the_file_signer_opens_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")

    outcome = run(capsys, "keys", "generate", "--out", str(tmp_path / "hsm"), "--passphrase-file", str(passphrase))

    assert outcome.code == EXIT_OK, outcome.err
    key = tmp_path / "hsm.key"
    assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in key.read_bytes()
    assert b"correct horse" not in key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    signer = signer_from_uri(f"file:{key}?passphrase-file={passphrase}")
    assert signer.keyid == outcome.out.strip()
    assert "passphrase-file=" in outcome.err


def test_keys_generate_refuses_an_empty_or_missing_passphrase_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")

    for passphrase_file, expected in ((empty, "is empty"), (tmp_path / "absent", "does not exist")):
        outcome = run(
            capsys, "keys", "generate", "--out", str(tmp_path / "k"), "--passphrase-file", str(passphrase_file)
        )
        assert outcome.code == EXIT_USAGE
        assert expected in outcome.err
        assert outcome.err.count("\n") == 1
    assert not (tmp_path / "k.key").exists()


def test_keys_generate_never_overwrites_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "keys", "generate", "--out", str(tmp_path / "chn")).code == EXIT_OK
    before = (tmp_path / "chn.key").read_bytes()

    outcome = run(capsys, "keys", "generate", "--out", str(tmp_path / "chn"))

    assert outcome.code == EXIT_USAGE
    assert outcome.err.startswith("carbon-gateway keys generate: refusing to overwrite")
    assert (tmp_path / "chn.key").read_bytes() == before


# -- envelope sign and verify --------------------------------------------------------------------------


def test_sign_then_verify_the_json_envelope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chn: tuple[Path, str]
) -> None:
    key, keyid = chn
    payload_file = tmp_path / "statement.bin"
    payload_file.write_bytes(PAYLOAD)

    printed = sign(capsys, str(key), payload_file)
    envelope = Envelope.from_json(printed.strip())
    assert envelope.payload == PAYLOAD
    assert envelope.payload_type == PAYLOAD_TYPE
    assert [s.keyid for s in envelope.signatures] == [keyid]

    (tmp_path / "statement.json").write_bytes(printed)
    outcome = run(
        capsys, "envelope", "verify", "--trust", str(tmp_path / "chn.trust.json"), str(tmp_path / "statement.json")
    )

    assert outcome.code == EXIT_OK, outcome.err
    assert outcome.err == ""
    report = lines(outcome.out)
    assert report["payload type"] == PAYLOAD_TYPE
    assert report["verified keyids"] == keyid
    assert report["verdict"] == "VALID (threshold 1 of role transfer met)"
    assert report["trust document"].startswith("CHN version 1, expires ")


def test_sign_reads_standard_input_and_accepts_a_file_uri(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, chn: tuple[Path, str]
) -> None:
    key, _ = chn
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(PAYLOAD)))

    outcome = run(capsys, "envelope", "sign", "--key", f"file:{key}", "--type", PAYLOAD_TYPE, "-")

    assert outcome.code == EXIT_OK, outcome.err
    assert Envelope.from_json(outcome.out.strip().encode()).payload == PAYLOAD


def test_sign_and_verify_with_an_encrypted_ecdsa_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("s3cret")
    prefix = str(tmp_path / "hsm")
    generate = ("keys", "generate", "--out", prefix, "--algorithm", "ecdsa-p256-sha256")
    assert run(capsys, *generate, "--passphrase-file", str(passphrase)).code == EXIT_OK
    uri = f"file:{prefix}.key?passphrase-file={passphrase}"
    (tmp_path / "chn.trust.json").write_bytes(trust_document("CHN", [signer_from_uri(uri)]))
    (tmp_path / "payload").write_bytes(PAYLOAD)
    (tmp_path / "envelope.json").write_bytes(sign(capsys, uri, tmp_path / "payload"))

    outcome = run(
        capsys, "envelope", "verify", "--trust", str(tmp_path / "chn.trust.json"), str(tmp_path / "envelope.json")
    )

    assert outcome.code == EXIT_OK, outcome.err
    assert lines(outcome.out)["verdict"] == "VALID (threshold 1 of role transfer met)"


def test_verify_reads_the_protobuf_wire_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chn: tuple[Path, str]
) -> None:
    key, keyid = chn
    (tmp_path / "payload").write_bytes(PAYLOAD)
    envelope = Envelope.from_json(sign(capsys, str(key), tmp_path / "payload").strip())
    (tmp_path / "envelope.pb").write_bytes(envelope_to_bytes(envelope))

    outcome = run(
        capsys, "envelope", "verify", "--trust", str(tmp_path / "chn.trust.json"), str(tmp_path / "envelope.pb")
    )

    assert outcome.code == EXIT_OK, outcome.err
    report = lines(outcome.out)
    assert report["payload type"] == PAYLOAD_TYPE
    assert report["verified keyids"] == keyid
    assert report["verdict"] == "VALID (threshold 1 of role transfer met)"


def test_verify_refuses_a_tampered_payload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chn: tuple[Path, str]
) -> None:
    key, _ = chn
    (tmp_path / "payload").write_bytes(PAYLOAD)
    document = json.loads(sign(capsys, str(key), tmp_path / "payload"))
    document["payload"] = base64.b64encode(PAYLOAD.replace(b"CHE", b"CHF")).decode()
    (tmp_path / "tampered.json").write_text(json.dumps(document))

    outcome = run(
        capsys, "envelope", "verify", "--trust", str(tmp_path / "chn.trust.json"), str(tmp_path / "tampered.json")
    )

    assert outcome.code == EXIT_INVALID
    verdict = lines(outcome.out)["verdict"]
    assert verdict.startswith("INVALID: ")
    assert "do not verify" in verdict
    assert "altered after signing" in outcome.err
    assert outcome.err.count("\n") == 1


def test_verify_refuses_an_envelope_signed_by_a_key_the_party_does_not_trust(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chn: tuple[Path, str]
) -> None:
    assert run(capsys, "keys", "generate", "--out", str(tmp_path / "intruder")).code == EXIT_OK
    (tmp_path / "payload").write_bytes(PAYLOAD)
    (tmp_path / "envelope.json").write_bytes(sign(capsys, str(tmp_path / "intruder.key"), tmp_path / "payload"))

    outcome = run(
        capsys, "envelope", "verify", "--trust", str(tmp_path / "chn.trust.json"), str(tmp_path / "envelope.json")
    )

    assert outcome.code == EXIT_INVALID
    assert lines(outcome.out)["verdict"].startswith("INVALID: no signature is from a trusted key")
    assert lines(outcome.out)["verified keyids"] == "(none)"
    assert "no signature is from a trusted key" in outcome.err


def test_verify_reports_a_threshold_that_one_signature_does_not_meet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    officers = [CryptoSigner.generate(), CryptoSigner.generate()]
    (tmp_path / "trust.json").write_bytes(trust_document("CHN", officers, transfer_threshold=2))
    (tmp_path / "envelope.json").write_bytes(sign_envelope(PAYLOAD_TYPE, PAYLOAD, officers[:1]).to_json())

    outcome = run(
        capsys, "envelope", "verify", "--trust", str(tmp_path / "trust.json"), str(tmp_path / "envelope.json")
    )

    assert outcome.code == EXIT_INVALID
    assert "but 2 are required" in lines(outcome.out)["verdict"]


def test_verify_refuses_an_expired_trust_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chn: tuple[Path, str]
) -> None:
    key, _ = chn
    (tmp_path / "payload").write_bytes(PAYLOAD)
    (tmp_path / "envelope.json").write_bytes(sign(capsys, str(key), tmp_path / "payload"))
    trust = str(tmp_path / "chn.trust.json")

    outcome = run(
        capsys, "envelope", "verify", "--trust", trust, "--at", "2100-01-01T00:00:00Z", str(tmp_path / "envelope.json")
    )

    assert outcome.code == EXIT_INVALID
    assert lines(outcome.out)["verdict"].startswith("INVALID: ")
    assert "expired" in outcome.err
    assert "newer trust document" in outcome.err


def test_verify_at_an_instant_past_year_9999_in_utc_is_an_expiry_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chn: tuple[Path, str]
) -> None:
    # 23:00 at UTC-5 on the last day datetime knows is past it in UTC: the message converting it overflowed.
    key, _ = chn
    (tmp_path / "payload").write_bytes(PAYLOAD)
    (tmp_path / "envelope.json").write_bytes(sign(capsys, str(key), tmp_path / "payload"))
    trust = str(tmp_path / "chn.trust.json")

    outcome = run(
        capsys,
        "envelope",
        "verify",
        "--trust",
        trust,
        "--at",
        "9999-12-31T23:00:00-05:00",
        str(tmp_path / "envelope.json"),
    )

    assert outcome.code == EXIT_INVALID
    assert "expired" in outcome.err and "now is 9999-12-31T23:00:00-05:00" in outcome.err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"payload": "aGVsbG8=", "payloadType": ', "is not a valid JSON envelope"),
        (b'{"payload": "aGVsbG8=", "signatures": []}', "has no 'payloadType' member"),
        (b"", "is empty"),
        (b"\xff\xfe\x00 not an envelope", "neither a JSON envelope nor a protobuf"),
    ],
)
def test_verify_refuses_a_malformed_envelope_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chn: tuple[Path, str], content: bytes, expected: str
) -> None:
    (tmp_path / "envelope").write_bytes(content)

    outcome = run(capsys, "envelope", "verify", "--trust", str(tmp_path / "chn.trust.json"), str(tmp_path / "envelope"))

    assert outcome.code == EXIT_USAGE
    assert outcome.out == ""
    assert outcome.err.startswith("carbon-gateway envelope verify: the envelope file ")
    assert expected in outcome.err
    assert outcome.err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--trust", "{dir}/absent.json", "{dir}/envelope.json"], "does not exist"),
        (["--trust", "{dir}/envelope.json", "{dir}/envelope.json"], "it is not a trust document"),
        (["--trust", "{dir}/payload", "{dir}/envelope.json"], "is not a JSON envelope"),
        (["--trust", "{dir}/chn.trust.json", "--role", "audit", "{dir}/envelope.json"], "has no role 'audit'"),
        (["--trust", "{dir}/chn.trust.json", "--at", "2100-01-01", "{dir}/envelope.json"], "has no time zone"),
        (["--trust", "{dir}/chn.trust.json", "--at", "soon", "{dir}/envelope.json"], "is not an ISO 8601 time"),
        (["--trust", "-", "-"], "only one of --trust and ENVELOPE"),
    ],
)
def test_verify_refuses_unusable_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chn: tuple[Path, str], argv: list[str], expected: str
) -> None:
    key, _ = chn
    (tmp_path / "payload").write_bytes(PAYLOAD)
    (tmp_path / "envelope.json").write_bytes(sign(capsys, str(key), tmp_path / "payload"))

    outcome = run(capsys, "envelope", "verify", *(arg.format(dir=tmp_path) for arg in argv))

    assert outcome.code == EXIT_USAGE
    assert expected in outcome.err
    assert outcome.err.count("\n") == 1


def test_verify_refuses_a_trust_document_not_signed_by_its_own_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chn: tuple[Path, str]
) -> None:
    key, _ = chn
    (tmp_path / "payload").write_bytes(PAYLOAD)
    (tmp_path / "envelope.json").write_bytes(sign(capsys, str(key), tmp_path / "payload"))
    forged = json.loads((tmp_path / "chn.trust.json").read_bytes())
    forged["signatures"] = [{"keyid": "", "sig": base64.b64encode(CryptoSigner.generate().sign(b"x")).decode()}]
    (tmp_path / "forged.json").write_text(json.dumps(forged))

    outcome = run(
        capsys, "envelope", "verify", "--trust", str(tmp_path / "forged.json"), str(tmp_path / "envelope.json")
    )

    assert outcome.code == EXIT_INVALID
    assert "not signed by a threshold of its own trust keys" in lines(outcome.out)["verdict"]


@pytest.mark.parametrize(
    ("key", "payload_type", "expected"),
    [
        ("{dir}/absent.key", PAYLOAD_TYPE, "does not exist"),
        ("{dir}/chn.pub", PAYLOAD_TYPE, "is not a PEM private key"),
        ("{dir}/chn.key", "application/vnd.ü", "is not printable ASCII"),
        ("{dir}/chn.key", "", "is not printable ASCII"),
    ],
)
def test_sign_refuses_unusable_inputs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    chn: tuple[Path, str],
    key: str,
    payload_type: str,
    expected: str,
) -> None:
    (tmp_path / "payload").write_bytes(PAYLOAD)

    outcome = run(
        capsys, "envelope", "sign", "--key", key.format(dir=tmp_path), "--type", payload_type, str(tmp_path / "payload")
    )

    assert outcome.code == EXIT_USAGE
    assert outcome.out == ""
    assert expected in outcome.err
    assert outcome.err.count("\n") == 1


def test_sign_refuses_a_missing_payload_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chn: tuple[Path, str]
) -> None:
    key, _ = chn

    outcome = run(capsys, "envelope", "sign", "--key", str(key), "--type", PAYLOAD_TYPE, str(tmp_path / "absent"))

    assert outcome.code == EXIT_USAGE
    assert "the payload file" in outcome.err
    assert "does not exist" in outcome.err


def test_verify_escapes_control_characters_in_the_payload_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signer = CryptoSigner.generate()
    (tmp_path / "trust.json").write_bytes(trust_document("CHN", [signer]))
    (tmp_path / "envelope.json").write_bytes(sign_envelope("text/x\x1b[2J", PAYLOAD, [signer]).to_json())

    outcome = run(
        capsys, "envelope", "verify", "--trust", str(tmp_path / "trust.json"), str(tmp_path / "envelope.json")
    )

    assert outcome.code == EXIT_OK, outcome.err
    assert "\x1b" not in outcome.out
    assert lines(outcome.out)["payload type"] == repr("text/x\x1b[2J")


# -- certs generate ------------------------------------------------------------------------------------


def test_certs_generate_warns_that_the_certificates_are_for_tests_and_demos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tls"

    outcome = run(capsys, "certs", "generate", "--out", str(out), "--ca-name", "Demo CA", "CHN", "CHE")

    assert outcome.code == EXIT_OK, outcome.err
    assert "not for production PKI" in outcome.err
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "ca.key", "che.crt", "che.key", "chn.crt", "chn.key"]
    assert "created CA 'Demo CA'" in outcome.out

    later = run(capsys, "certs", "generate", "--out", str(out), "--ca-name", "Demo CA", "ARG")

    assert later.code == EXIT_OK, later.err
    assert "reused CA 'Demo CA'" in later.out
    assert (out / "arg.crt").exists()


def test_certs_generate_refuses_a_ca_name_no_certificate_can_carry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, size in (("x" * 65, 65), ("é" * 40, 80)):
        outcome = run(capsys, "certs", "generate", "--out", str(tmp_path / "tls"), "--ca-name", name, "CHN")

        assert outcome.code == EXIT_USAGE
        assert f"the CA name takes {size} bytes in UTF-8; a certificate's common name takes at most 64" in outcome.err
        assert outcome.err.count("\n") == 1 and "Traceback" not in outcome.err
    assert run(capsys, "certs", "generate", "--out", str(tmp_path / "tls"), "--ca-name", "é" * 32, "CHN").code == 0


def test_a_command_whose_output_cannot_be_written_says_so_in_one_line() -> None:
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "adapters"], stdout=full, stderr=subprocess.PIPE, timeout=60
        )
    assert done.returncode == 1
    assert done.stderr.decode() == "carbon-gateway adapters: cannot write the output: No space left on device\n"


@pytest.mark.parametrize(
    ("parties", "expected"),
    [(["che"], "is not a Party code"), (["CHE", "CHE"], "named twice"), (["CHE", "../X"], "is not a Party code")],
)
def test_certs_generate_refuses_bad_party_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], parties: list[str], expected: str
) -> None:
    outcome = run(capsys, "certs", "generate", "--out", str(tmp_path / "tls"), "--ca-name", "Demo CA", *parties)

    assert outcome.code == EXIT_USAGE
    assert expected in outcome.err
    assert not (tmp_path / "tls").exists()


def test_certs_generate_refuses_a_bad_validity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = run(capsys, "certs", "generate", "--out", str(tmp_path), "--ca-name", "Demo CA", "--days", "0", "CHE")

    assert outcome.code == EXIT_USAGE
    assert "whole number of days" in outcome.err


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_device_or_fifo_named_as_an_input_file_is_refused_without_reading_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    if kind == "device":
        name = "/dev/zero"  # an endless read, were it read
    else:
        name = str(tmp_path / "fifo")
        os.mkfifo(name)  # a read that never returns, were it opened blocking
    for args in (
        ("envelope", "verify", "--trust", name, name),
        ("keys", "generate", "--out", str(tmp_path / "k"), "--passphrase-file", name),
    ):
        outcome = run(capsys, *args)
        assert outcome.code != 0
        assert "not a regular file" in outcome.err
        assert outcome.err.count("\n") == 1
