"""Signers chosen by URI: the file backend, the registry, and pkcs11 URI errors that need no token."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import signing.signers
from signing import (
    Algorithm,
    CryptoSigner,
    Signer,
    SignerError,
    generate_key,
    pae,
    register_signer_scheme,
    sign_envelope,
    signer_from_uri,
    verify_envelope,
)

PASSPHRASE = b"s3cret passphrase"


@pytest.fixture
def plain_key(tmp_path: Path) -> tuple[Path, Signer]:
    public = generate_key(tmp_path / "plain")
    signer = signer_from_uri(str(tmp_path / "plain.key"))
    assert signer.public_key == public
    return tmp_path / "plain.key", signer


@pytest.fixture
def encrypted_key(tmp_path: Path) -> Path:
    generate_key(tmp_path / "enc", Algorithm.ECDSA_P256_SHA256, passphrase=PASSPHRASE)
    return tmp_path / "enc.key"


@pytest.fixture
def restore_registry() -> Iterator[None]:
    saved = dict(signing.signers._SCHEMES)
    yield
    signing.signers._SCHEMES.clear()
    signing.signers._SCHEMES.update(saved)


def _signs_and_verifies(signer: Signer) -> None:
    envelope = sign_envelope("application/x", b"payload", [signer])
    assert verify_envelope(envelope, [signer.public_key], 1).verified_keyids == (signer.keyid,)


def test_plain_path(plain_key: tuple[Path, Signer]) -> None:
    _path, signer = plain_key
    assert isinstance(signer, CryptoSigner)
    assert isinstance(signer, Signer)
    assert signer.keyid == signer.public_key.keyid
    _signs_and_verifies(signer)


def test_file_uri_forms(plain_key: tuple[Path, Signer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, signer = plain_key
    for uri in (f"file:{path}", f"file://{path}", f"file://localhost{path}", f"FILE:{path}"):
        assert signer_from_uri(uri).public_key == signer.public_key, uri
    monkeypatch.chdir(tmp_path)
    assert signer_from_uri("file:plain.key").public_key == signer.public_key
    assert signer_from_uri("plain.key").public_key == signer.public_key


def test_file_uri_percent_decoding(tmp_path: Path) -> None:
    public = generate_key(tmp_path / "odd name?#")
    assert signer_from_uri(f"file:{tmp_path}/odd%20name%3F%23.key").public_key == public


def test_passphrase_env(encrypted_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY_PASSPHRASE", PASSPHRASE.decode())
    signer = signer_from_uri(f"file:{encrypted_key}?passphrase-env=TEST_KEY_PASSPHRASE")
    assert signer.public_key.algorithm is Algorithm.ECDSA_P256_SHA256
    _signs_and_verifies(signer)


def test_passphrase_file(encrypted_key: Path, tmp_path: Path) -> None:
    for content in (PASSPHRASE, PASSPHRASE + b"\n", PASSPHRASE + b"\r\n"):
        passphrase_file = tmp_path / "passphrase"
        passphrase_file.write_bytes(content)
        _signs_and_verifies(signer_from_uri(f"file:{encrypted_key}?passphrase-file={passphrase_file}"))


def test_wrong_passphrase(encrypted_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY_PASSPHRASE", "xyzzy-not-it")
    with pytest.raises(SignerError, match="wrong passphrase") as info:
        signer_from_uri(f"file:{encrypted_key}?passphrase-env=TEST_KEY_PASSPHRASE")
    assert "environment variable TEST_KEY_PASSPHRASE" in str(info.value)
    assert "xyzzy" not in str(info.value)  # the passphrase is never echoed
    (tmp_path / "passphrase").write_bytes(b"also wrong\n")
    with pytest.raises(SignerError, match="wrong passphrase"):
        signer_from_uri(f"file:{encrypted_key}?passphrase-file={tmp_path / 'passphrase'}")


def test_encrypted_key_without_passphrase(encrypted_key: Path) -> None:
    with pytest.raises(SignerError, match="is encrypted; add \\?passphrase-env"):
        signer_from_uri(str(encrypted_key))
    with pytest.raises(SignerError, match="is encrypted"):
        signer_from_uri(f"file:{encrypted_key}")


def test_passphrase_for_unencrypted_key(plain_key: tuple[Path, Signer], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY_PASSPHRASE", "x")
    with pytest.raises(SignerError, match="not encrypted"):
        signer_from_uri(f"file:{plain_key[0]}?passphrase-env=TEST_KEY_PASSPHRASE")


def test_missing_passphrase_sources(encrypted_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_PASSPHRASE_VARIABLE", raising=False)
    with pytest.raises(SignerError, match="'NO_SUCH_PASSPHRASE_VARIABLE', which is not set"):
        signer_from_uri(f"file:{encrypted_key}?passphrase-env=NO_SUCH_PASSPHRASE_VARIABLE")
    with pytest.raises(SignerError, match="does not exist"):
        signer_from_uri(f"file:{encrypted_key}?passphrase-file={tmp_path / 'nope'}")
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(SignerError, match="is empty"):
        signer_from_uri(f"file:{encrypted_key}?passphrase-file={tmp_path / 'empty'}")
    monkeypatch.setenv("EMPTY_PASSPHRASE", "")
    with pytest.raises(SignerError, match="is empty"):
        signer_from_uri(f"file:{encrypted_key}?passphrase-env=EMPTY_PASSPHRASE")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("passphrase=hunter2", "never accepted inside a signer URI"),
        ("passphrase_env=X", "unknown parameter 'passphrase_env'"),
        ("passphrase-env=A&passphrase-env=B", "appears twice"),
        ("passphrase-env=A&passphrase-file=/f", "give only one"),
        ("passphrase-env=", "is empty"),
        ("passphrase-env", "malformed"),
        ("pass=hunter2", "unknown parameter 'pass'"),
        ("Passphrase=hunter2", "unknown parameter 'Passphrase'"),
        ("hunter2", "malformed"),
        ("passphrase-env=A&hunter2", "malformed"),
    ],
)
def test_bad_file_uri_queries(encrypted_key: Path, query: str, message: str) -> None:
    with pytest.raises(SignerError, match=message) as info:
        signer_from_uri(f"file:{encrypted_key}?{query}")
    assert "hunter2" not in str(info.value)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(SignerError, match="does not exist"):
        signer_from_uri(str(tmp_path / "missing.key"))
    with pytest.raises(SignerError, match="does not exist"):
        signer_from_uri(f"file:{tmp_path / 'missing.key'}")
    with pytest.raises(SignerError, match="is a directory"):
        signer_from_uri(str(tmp_path))
    with pytest.raises(SignerError, match="has no path"):
        signer_from_uri("file:")
    with pytest.raises(SignerError, match="only local files"):
        signer_from_uri("file://remote.example/key.pem")


def test_a_key_or_passphrase_file_that_is_no_regular_small_file_is_refused_unread(
    tmp_path: Path, encrypted_key: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # without a writer, reading it would block for ever
    (tmp_path / "huge.key").write_bytes(b"x" * ((1 << 20) + 1))
    for uri in (f"file:{fifo}", "file:/dev/zero", f"file:{tmp_path / 'huge.key'}"):
        with pytest.raises(SignerError, match=r"not a regular file|larger than"):
            signer_from_uri(uri)
    with pytest.raises(SignerError, match=r"passphrase file .*not a regular file"):
        signer_from_uri(f"file:{encrypted_key}?passphrase-file={fifo}")


def test_a_file_name_with_a_nul_character_is_refused_as_a_signer_error(
    tmp_path: Path, encrypted_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A URI spells NUL %00; os.open raises ValueError for it, which escaped config check and serve as a traceback.
    monkeypatch.setenv("P", "1234")
    for uri, what in (
        (f"file:{tmp_path}/chn%00.key", "private key file"),
        (f"file:{encrypted_key}?passphrase-file={tmp_path}/pass%00word", "passphrase file"),
        (f"pkcs11:token=t;object=k?module-path=/m.so&pin-source=file:{tmp_path}/pin%00", "PIN file"),
    ):
        with pytest.raises(SignerError, match=rf"cannot read the {what} .*NUL character"):
            signer_from_uri(uri)


def test_unreadable_key_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SignerError, match="cannot read the private key file"):
        signer_from_uri(str(tmp_path / "file" / "key.pem"))


def test_not_a_private_key(tmp_path: Path) -> None:
    (tmp_path / "garbage.pem").write_bytes(b"hello")
    with pytest.raises(SignerError, match="not a PEM private key"):
        signer_from_uri(str(tmp_path / "garbage.pem"))
    public_pem = CryptoSigner.generate().public_key.to_pem()
    (tmp_path / "public.pem").write_bytes(public_pem)
    with pytest.raises(SignerError, match="not a PEM private key"):
        signer_from_uri(str(tmp_path / "public.pem"))


def test_unsupported_private_keys(tmp_path: Path) -> None:
    for name, key in (
        ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        ("p384", ec.generate_private_key(ec.SECP384R1())),
    ):
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (tmp_path / name).write_bytes(pem)
        with pytest.raises(SignerError, match="supported"):
            signer_from_uri(str(tmp_path / name))


def test_traditional_openssl_ec_key(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    (tmp_path / "ec.pem").write_bytes(pem)
    _signs_and_verifies(signer_from_uri(str(tmp_path / "ec.pem")))


def test_unknown_scheme() -> None:
    with pytest.raises(SignerError, match=r"unknown signer URI scheme 'awskms'.*file:, pkcs11:"):
        signer_from_uri("awskms:alias/gateway")


@pytest.mark.parametrize("uri", ["", None])
def test_empty_uri(uri: str | None) -> None:
    with pytest.raises(SignerError, match="non-empty"):
        signer_from_uri(uri)  # type: ignore[arg-type]


def test_register_signer_scheme(restore_registry: None) -> None:
    seen: list[str] = []
    fixed = CryptoSigner.generate()

    def factory(uri: str) -> Signer:
        seen.append(uri)
        return fixed

    register_signer_scheme("Memory", factory)
    assert signer_from_uri("memory:one") is fixed
    assert signer_from_uri("MEMORY:two") is fixed
    assert seen == ["memory:one", "MEMORY:two"]
    with pytest.raises(ValueError, match="already registered"):
        register_signer_scheme("memory", factory)
    register_signer_scheme("memory", factory, replace=True)
    with pytest.raises(ValueError, match="invalid signer URI scheme"):
        register_signer_scheme("m", factory)
    with pytest.raises(ValueError, match="invalid signer URI scheme"):
        register_signer_scheme("1abc", factory)


def test_crypto_signer() -> None:
    for algorithm in Algorithm:
        signer = CryptoSigner.generate(algorithm, keyid="officer-1")
        assert signer.keyid == "officer-1"
        assert signer.public_key.algorithm is algorithm
        assert signer.public_key.verify(signer.sign(b"data"), b"data")
        assert "officer-1" in repr(signer)
    with pytest.raises(SignerError, match="unsupported private key type"):
        CryptoSigner(rsa.generate_private_key(public_exponent=65537, key_size=1024))  # type: ignore[arg-type]
    with pytest.raises(SignerError, match="secp384r1"):
        CryptoSigner(ec.generate_private_key(ec.SECP384R1()))


def test_signature_covers_pae() -> None:
    signer = CryptoSigner.generate()
    envelope = sign_envelope("t", b"p", [signer])
    assert signer.public_key.verify(envelope.signatures[0].sig, pae("t", b"p"))


# -- pkcs11 URIs: errors found before any token is touched ----------------------------------------------


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("pkcs11:object=k?module-path=/m.so&pin-env=P", "names no token"),
        ("pkcs11:token=t?module-path=/m.so&pin-env=P", "names no key"),
        ("pkcs11:token=t;object=k?pin-env=P", "no module-path"),
        ("pkcs11:token=t;object=k?module-path=/m.so", "gives no PIN"),
        ("pkcs11:token=t;object=k?module-path=/m.so&pin-value=1234", "never accepted inside a signer URI"),
        ("pkcs11:token=t;object=k;pin-value=1234?module-path=/m.so", "never accepted inside a signer URI"),
        ("pkcs11:token=t;object=k?module-path=/m.so&pin-env=P&pin-source=/p", "give only one"),
        ("pkcs11:token=t;object=k;type=public?module-path=/m.so&pin-env=P", "type=private"),
        ("pkcs11:token=t;object=k;slot-id=1?module-path=/m.so&pin-env=P", "unsupported path attribute 'slot-id'"),
        ("pkcs11:token=t;object=k?module-name=softhsm2&pin-env=P", "unsupported query attribute 'module-name'"),
        ("pkcs11:token=t;token=u;object=k?module-path=/m.so&pin-env=P", "appears twice"),
        ("pkcs11:token=t;object?module-path=/m.so&pin-env=P", "malformed attribute"),
        ("pkcs11:token=;object=k?module-path=/m.so&pin-env=P", "is empty"),
        ("pkcs11:token=t;object=k?module-path=/m.so&pin-source=relative/pin", "must be file:/absolute/path"),
        ("pkcs11:token=t;object=k?module-path=/m.so&pin-source=%7Cprompt", "must be file:/absolute/path"),
        # A PIN misplaced, misspelt or with no name is not repeated in the message, which ends up in logs.
        ("pkcs11:token=t;object=k?module-path=/m.so&pin-source=1234", "must be file:/absolute/path"),
        ("pkcs11:token=t;object=k?module-path=/m.so&pin=1234", "unsupported query attribute 'pin'"),
        ("pkcs11:token=t;object=k;PIN-VALUE=1234?module-path=/m.so&pin-env=P", "unsupported path attribute"),
        ("pkcs11:token=t;object=k;1234?module-path=/m.so&pin-env=P", "malformed attribute"),
        ("pkcs11:token=t;object=k?module-path=/m.so&pin-env=P&1234", "malformed attribute"),
        ("pkcs11:object=k?module-path=/m.so&pin-source=1234", "names no token"),
        # Attributes of the query run together with ";" (the path's separator), a PIN among them.
        ("pkcs11:token=t;object=k?module-path=/m.so;pin=1234&pin-env=P", "malformed attribute"),
        ("pkcs11:token=t;object=k?pin-env=P;pin=1234&module-path=/m.so", "malformed attribute"),
        ("pkcs11:token=t;object=k?module-path=/m.so;pin=1234", "malformed attribute"),
    ],
)
def test_pkcs11_uri_errors(uri: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P", "1234")
    with pytest.raises(SignerError, match=message) as info:
        signer_from_uri(uri)
    assert "1234" not in str(info.value).replace("pin-value=1234", "")


def test_pkcs11_pin_sources_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_PIN_VARIABLE", raising=False)
    with pytest.raises(SignerError, match="'NO_SUCH_PIN_VARIABLE', which is not set"):
        signer_from_uri("pkcs11:token=t;object=k?module-path=/m.so&pin-env=NO_SUCH_PIN_VARIABLE")
    with pytest.raises(SignerError, match=r"PIN file .* does not exist"):
        signer_from_uri(f"pkcs11:token=t;object=k?module-path=/m.so&pin-source=file:{tmp_path}/nope")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SignerError, match="is empty"):
        signer_from_uri(f"pkcs11:token=t;object=k?module-path=/m.so&pin-source=file:{tmp_path}/empty")


def test_pkcs11_missing_module(tmp_path: Path) -> None:
    (tmp_path / "pin").write_text("1234\n")
    with pytest.raises(SignerError, match=r"PKCS#11 module .* does not exist"):
        signer_from_uri(f"pkcs11:token=t;object=k?module-path={tmp_path}/libnothing.so&pin-source=file:{tmp_path}/pin")
