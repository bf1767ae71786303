"""Public key records, keyids and key generation."""

from __future__ import annotations

import copy
import hashlib
import pickle
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from signing import (
    Algorithm,
    CryptoSigner,
    KeyFormatError,
    PublicKey,
    SignerError,
    compute_keyid,
    generate_key,
    signer_from_uri,
)
from tests.signing.fixtures import fixed_public_key, fixed_signer


def test_compute_keyid_is_sha256_of_spki_der() -> None:
    key = fixed_public_key("ed25519-a")
    assert compute_keyid(key.public_bytes) == hashlib.sha256(key.public_bytes).hexdigest()
    assert len(compute_keyid(b"")) == 64
    assert compute_keyid(b"x") == compute_keyid(b"x").lower()


def test_from_pem_defaults_keyid_and_detects_algorithm() -> None:
    for name, algorithm in (("ed25519-a", Algorithm.ED25519), ("p256-a", Algorithm.ECDSA_P256_SHA256)):
        key = fixed_public_key(name)
        loaded = PublicKey.from_pem(key.to_pem())
        assert loaded.algorithm is algorithm
        assert loaded.keyid == compute_keyid(key.public_bytes)
        assert loaded == key
        assert PublicKey.from_pem(key.to_pem(), keyid="custom").keyid == "custom"


def test_pem_round_trip_is_stable() -> None:
    key = fixed_public_key("p256-a")
    assert key.to_pem().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert PublicKey.from_pem(key.to_pem(), key.keyid).to_pem() == key.to_pem()


def test_from_pem_rejects_garbage_and_private_keys() -> None:
    with pytest.raises(KeyFormatError, match="not a PEM public key"):
        PublicKey.from_pem(b"not a pem")
    private_pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFormatError, match="private key"):
        PublicKey.from_pem(private_pem)


def test_unsupported_keys_are_refused() -> None:
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFormatError, match="unsupported key type"):
        PublicKey.from_pem(rsa_pem)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(KeyFormatError, match="curve secp384r1"):
        PublicKey.from_crypto(p384)


def test_record_algorithm_must_match_key() -> None:
    ed = fixed_public_key("ed25519-a")
    with pytest.raises(KeyFormatError, match="the record says ecdsa-p256-sha256"):
        PublicKey(keyid="k", algorithm=Algorithm.ECDSA_P256_SHA256, public_bytes=ed.public_bytes)
    with pytest.raises(KeyFormatError, match="unknown algorithm"):
        PublicKey(keyid="k", algorithm="rsa", public_bytes=ed.public_bytes)  # type: ignore[arg-type]
    with pytest.raises(KeyFormatError, match="non-empty"):
        PublicKey(keyid="", algorithm=Algorithm.ED25519, public_bytes=ed.public_bytes)
    with pytest.raises(KeyFormatError, match="not a SubjectPublicKeyInfo"):
        PublicKey(keyid="k", algorithm=Algorithm.ED25519, public_bytes=b"\x30\x00")


def test_algorithm_given_as_string_is_normalized() -> None:
    ed = fixed_public_key("ed25519-a")
    key = PublicKey(keyid="k", algorithm="ed25519", public_bytes=ed.public_bytes)  # type: ignore[arg-type]
    assert key.algorithm is Algorithm.ED25519


def test_compressed_point_is_normalized() -> None:
    key = fixed_public_key("p256-a")
    crypto_key = serialization.load_der_public_key(key.public_bytes)
    assert isinstance(crypto_key, ec.EllipticCurvePublicKey)
    compressed_point = crypto_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    # SPKI with the same algorithm identifier but the 33-byte compressed point.
    prefix = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")
    compressed_spki = prefix + compressed_point
    record = PublicKey(keyid=key.keyid, algorithm=Algorithm.ECDSA_P256_SHA256, public_bytes=compressed_spki)
    assert record.public_bytes == key.public_bytes
    assert record == key


def test_dict_round_trip_and_strictness() -> None:
    key = fixed_public_key("p256-a")
    as_dict = key.to_dict()
    assert set(as_dict) == {"keyid", "algorithm", "public_key_pem"}
    assert as_dict["algorithm"] == "ecdsa-p256-sha256"
    assert PublicKey.from_dict(as_dict) == key
    with pytest.raises(KeyFormatError, match="unexpected \\['extra'\\]"):
        PublicKey.from_dict({**as_dict, "extra": 1})
    with pytest.raises(KeyFormatError, match="missing \\['keyid'\\]"):
        PublicKey.from_dict({k: v for k, v in as_dict.items() if k != "keyid"})
    with pytest.raises(KeyFormatError, match="must be a string"):
        PublicKey.from_dict({**as_dict, "keyid": 3})
    with pytest.raises(KeyFormatError, match="the record says ed25519"):
        PublicKey.from_dict({**as_dict, "algorithm": "ed25519"})
    with pytest.raises(KeyFormatError, match="JSON object"):
        PublicKey.from_dict([])  # type: ignore[arg-type]


def test_equality_ignores_cached_key_object_and_pickle_works() -> None:
    key = fixed_public_key("ed25519-a")
    again = PublicKey(key.keyid, key.algorithm, key.public_bytes)
    assert key == again
    assert hash(key) == hash(again)
    restored = pickle.loads(pickle.dumps(key))
    assert restored == key
    assert copy.deepcopy(key) == key
    signature = fixed_signer("ed25519-a").sign(b"data")
    assert restored.verify(signature, b"data")


def test_ed25519_verify() -> None:
    signer = fixed_signer("ed25519-a")
    key = signer.public_key
    signature = signer.sign(b"data")
    assert key.verify(signature, b"data")
    assert not key.verify(signature, b"datA")
    assert not key.verify(signature[:-1], b"data")
    assert not key.verify(signature + b"\x00", b"data")
    assert not key.verify(b"", b"data")


def test_ecdsa_verify_accepts_der_and_raw() -> None:
    signer = fixed_signer("p256-a")
    key = signer.public_key
    der = signer.sign(b"data")
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert key.verify(der, b"data")
    assert key.verify(raw, b"data")
    assert not key.verify(der, b"other")
    assert not key.verify(raw, b"other")
    assert not key.verify(b"", b"data")
    assert not key.verify(b"\x30" * 64, b"data")
    assert not key.verify(raw[:-1], b"data")


def test_ecdsa_raw_signature_that_looks_like_der() -> None:
    # A raw r || s whose first two bytes are 0x30 0x3e (a DER SEQUENCE header of 64 bytes) must still
    # verify: DER is tried first, then raw. With the RFC 6979 nonce, key 7 and message 40210 give such an r.
    private = ec.derive_private_key(7, ec.SECP256R1())
    key = PublicKey.from_crypto(private.public_key())
    data = (40210).to_bytes(4, "big")
    r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert raw[:2] == b"\x30\x3e"
    assert key.verify(raw, data)
    assert not key.verify(raw, data + b"!")


def test_algorithm_comes_from_record_not_signature() -> None:
    ed_signature = fixed_signer("ed25519-a").sign(b"data")
    assert not fixed_public_key("p256-a").verify(ed_signature, b"data")


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_generate_key_unencrypted(tmp_path: Path, algorithm: Algorithm) -> None:
    public = generate_key(tmp_path / "node", algorithm)
    key_file, pub_file = tmp_path / "node.key", tmp_path / "node.pub"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert PublicKey.from_pem(pub_file.read_bytes()) == public
    assert public.algorithm is algorithm
    assert public.keyid == compute_keyid(public.public_bytes)
    signer = signer_from_uri(str(key_file))
    assert signer.public_key == public


def test_generate_key_encrypted(tmp_path: Path) -> None:
    public = generate_key(tmp_path / "node", passphrase=b"correct horse")
    pem = (tmp_path / "node.key").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    private = serialization.load_pem_private_key(pem, b"correct horse")
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    assert CryptoSigner(private).public_key == public
    assert stat.S_IMODE((tmp_path / "node.key").stat().st_mode) == 0o600


def test_generate_key_refuses_to_overwrite(tmp_path: Path) -> None:
    generate_key(tmp_path / "node")
    with pytest.raises(SignerError, match="refusing to overwrite"):
        generate_key(tmp_path / "node")
    (tmp_path / "other.pub").write_text("x")
    with pytest.raises(SignerError, match=r"other\.pub"):
        generate_key(tmp_path / "other")
    assert not (tmp_path / "other.key").exists()


def test_generate_key_refuses_a_symbolic_link_to_nothing_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "link.key").symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(SignerError, match=r"link\.key: it is a symbolic link to nothing.*elsewhere\.key"):
        generate_key(tmp_path / "link")
    assert not (tmp_path / "elsewhere.key").exists() and not (tmp_path / "link.pub").exists()


def test_generate_key_rejects_empty_passphrase(tmp_path: Path) -> None:
    with pytest.raises(SignerError, match="empty"):
        generate_key(tmp_path / "node", passphrase=b"")


def test_generate_key_reports_unwritable_directory(tmp_path: Path) -> None:
    with pytest.raises(SignerError, match="cannot write"):
        generate_key(tmp_path / "missing-dir" / "node")


# Ed25519 points of small order, as 32-byte encodings: the identity, the point of order 2, and one of order 8.
SMALL_ORDER_POINTS = {
    "identity": bytes([1]) + bytes(31),
    "order 2": bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    "order 8": bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
}


@pytest.mark.parametrize("point", list(SMALL_ORDER_POINTS.values()), ids=list(SMALL_ORDER_POINTS))
def test_an_ed25519_key_of_small_order_is_refused(point: bytes) -> None:
    key = ed25519.Ed25519PublicKey.from_public_bytes(point)
    # Under such a key OpenSSL's verification accepts a signature made without any private key.
    forged = bytes([1]) + bytes(31) + bytes(32)
    if point == SMALL_ORDER_POINTS["identity"]:
        key.verify(forged, b"any message")
    with pytest.raises(KeyFormatError, match="small order"):
        PublicKey.from_crypto(key)


def test_a_forged_signature_of_small_order_does_not_verify() -> None:
    signer = fixed_signer("ed25519-a")
    message = b"pae bytes"
    signature = signer.sign(message)
    assert signer.public_key.verify(signature, message)
    # R of small order with S = 0, and S pushed past the group order: both refused.
    assert not signer.public_key.verify(SMALL_ORDER_POINTS["identity"] + bytes(32), message)
    order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(signature[32:], "little") + order
    assert not signer.public_key.verify(signature[:32] + s.to_bytes(32, "little"), message)
