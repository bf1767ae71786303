"""Public keys, key identifiers and key generation.

A `PublicKey` is a trusted key record: a keyid, an algorithm and the SubjectPublicKeyInfo DER of the key.
The algorithm is part of the record, so a verifier never takes it from a message. The parsed key object is
created once, when the record is created, so verification does no parsing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from nacl.bindings import crypto_core_ed25519_is_valid_point, crypto_sign_open
from nacl.exceptions import BadSignatureError

from signing.errors import KeyFormatError, SignerError
from signing.files import write_new_file

__all__ = [
    "Algorithm",
    "PublicKey",
    "compute_keyid",
    "generate_key",
]

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_ED25519_SIGNATURE_SIZE = 64
_P256_RAW_SIGNATURE_SIZE = 64
_P256_SCALAR_SIZE = 32


class Algorithm(StrEnum):
    """The signature algorithms a key record may name."""

    ED25519 = "ed25519"
    """Ed25519 (RFC 8032). Signatures are the 64 raw bytes. The default."""

    ECDSA_P256_SHA256 = "ecdsa-p256-sha256"
    """ECDSA over NIST P-256 with SHA-256, for HSM-backed keys. Signatures are DER (as `cryptography`
    produces them); verification also accepts the 64-byte raw ``r || s`` form."""


def compute_keyid(public_bytes: bytes) -> str:
    """Return the keyid of a public key: the lowercase hex SHA-256 of its SubjectPublicKeyInfo DER.

    The keyid is 64 hexadecimal characters. It identifies the key bytes, not the algorithm or the owner,
    so the same key always has the same keyid. Pass the canonical DER (``PublicKey.public_bytes``).
    """
    return hashlib.sha256(public_bytes).hexdigest()


_PublicKeyObject = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
_Checker = Callable[[bytes, bytes], bool]


def _algorithm_of(key: object) -> Algorithm:
    """The algorithm of a `cryptography` public or private key object, or KeyFormatError."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return Algorithm.ED25519
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if isinstance(key.curve, ec.SECP256R1):
            return Algorithm.ECDSA_P256_SHA256
        raise KeyFormatError(
            f"unsupported elliptic curve {key.curve.name}: only P-256 (secp256r1) ECDSA keys and Ed25519 "
            "keys are supported"
        )
    raise KeyFormatError(f"unsupported key type {type(key).__name__}: only Ed25519 and ECDSA P-256 keys are supported")


def _ed25519_checker(key: ed25519.Ed25519PublicKey) -> _Checker:
    # libsodium verifies in about half the time OpenSSL takes, and is the stricter of the two: it also refuses
    # public keys and signature points of small order, which no honest signer produces.
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def check(signature: bytes, data: bytes) -> bool:
        if len(signature) != _ED25519_SIGNATURE_SIZE:
            return False
        try:
            crypto_sign_open(signature + data, raw)
        except BadSignatureError:
            return False
        return True

    return check


def _raw_to_der(signature: bytes) -> bytes:
    return encode_dss_signature(
        int.from_bytes(signature[:_P256_SCALAR_SIZE], "big"),
        int.from_bytes(signature[_P256_SCALAR_SIZE:], "big"),
    )


def _ecdsa_p256_checker(key: ec.EllipticCurvePublicKey) -> _Checker:
    verify = key.verify
    algorithm = _ECDSA_SHA256

    def check(signature: bytes, data: bytes) -> bool:
        if len(signature) == _P256_RAW_SIGNATURE_SIZE:
            # 64 bytes is the raw r || s form, unless it is a DER SEQUENCE of exactly 64 bytes
            # (0x30 0x3e ...): then try DER first and fall back to raw.
            if signature[0] == 0x30 and signature[1] == 0x3E:
                try:
                    verify(signature, data, algorithm)
                except (InvalidSignature, ValueError):
                    pass
                else:
                    return True
            signature = _raw_to_der(signature)
        try:
            verify(signature, data, algorithm)
        except (InvalidSignature, ValueError):
            return False
        return True

    return check


@dataclass(frozen=True)
class PublicKey:
    """A trusted public key record: keyid, algorithm and SubjectPublicKeyInfo DER.

    The key bytes are parsed once, at construction, and must hold a key of ``algorithm`` (an Ed25519 key
    for ``ed25519``, a P-256 key for ``ecdsa-p256-sha256``); otherwise `KeyFormatError` is raised.
    ``public_bytes`` is normalized to the canonical DER (uncompressed point for P-256), so two records of
    the same key always have equal ``public_bytes``.

    Records compare equal when keyid, algorithm and key bytes are equal.
    """

    keyid: str
    algorithm: Algorithm
    public_bytes: bytes
    _checker: _Checker = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.keyid, str) or not self.keyid:
            raise KeyFormatError(f"a key's keyid must be a non-empty string, got {self.keyid!r}")
        try:
            algorithm = Algorithm(self.algorithm)
        except ValueError:
            known = ", ".join(a.value for a in Algorithm)
            raise KeyFormatError(
                f"key {self.keyid}: unknown algorithm {self.algorithm!r}; expected one of: {known}"
            ) from None
        if not isinstance(self.public_bytes, bytes):
            raise KeyFormatError(
                f"key {self.keyid}: public_bytes must be bytes (SubjectPublicKeyInfo DER), "
                f"got {type(self.public_bytes).__name__}"
            )
        try:
            key = serialization.load_der_public_key(self.public_bytes)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(
                f"key {self.keyid}: public_bytes is not a SubjectPublicKeyInfo DER public key ({exc})"
            ) from None
        actual = _algorithm_of(key)
        if actual is not algorithm:
            raise KeyFormatError(
                f"key {self.keyid}: the record says {algorithm.value} but the key bytes hold an "
                f"{actual.value} key; fix the key record"
            )
        canonical = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        checker: _Checker
        if isinstance(key, ed25519.Ed25519PublicKey):
            if not crypto_core_ed25519_is_valid_point(
                key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            ):
                raise KeyFormatError(
                    f"key {self.keyid}: the Ed25519 public key is a point of small order, under which anyone can"
                    " sign anything; no generated key is one, so this record was made by hand: replace the key"
                )
            checker = _ed25519_checker(key)
        else:
            assert isinstance(key, ec.EllipticCurvePublicKey)
            checker = _ecdsa_p256_checker(key)
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "public_bytes", canonical)
        object.__setattr__(self, "_checker", checker)

    def __reduce__(self) -> tuple[Any, ...]:
        # The cached key object cannot be pickled; rebuild it from the record instead.
        return (type(self), (self.keyid, self.algorithm, self.public_bytes))

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Return whether ``signature`` is this key's valid signature over ``data``.

        Ed25519 signatures are the 64 raw bytes. ECDSA P-256 signatures are DER, or the 64-byte raw
        ``r || s`` form (as in the DSSE specification's test vector). Never raises for a bad signature.
        """
        return self._checker(signature, data)

    @classmethod
    def from_crypto(cls, key: _PublicKeyObject, keyid: str | None = None) -> PublicKey:
        """Make a record from a `cryptography` Ed25519 or P-256 public key object.

        ``keyid`` defaults to `compute_keyid` of the key's SubjectPublicKeyInfo DER.
        """
        algorithm = _algorithm_of(key)
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(keyid=keyid if keyid is not None else compute_keyid(der), algorithm=algorithm, public_bytes=der)

    def to_pem(self) -> bytes:
        """The key as a SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``)."""
        key = serialization.load_der_public_key(self.public_bytes)
        return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def from_pem(cls, pem: bytes, keyid: str | None = None) -> PublicKey:
        """Load a SubjectPublicKeyInfo PEM public key (Ed25519 or P-256).

        The algorithm follows from the key. ``keyid`` defaults to `compute_keyid` of the key's DER.
        Raises `KeyFormatError` if the PEM is not such a public key.
        """
        if not isinstance(pem, bytes):
            raise KeyFormatError(f"a PEM public key must be bytes, got {type(pem).__name__}")
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm) as exc:
            hint = " (this is a private key: pass the .pub file)" if b"PRIVATE KEY-----" in pem else ""
            raise KeyFormatError(f"not a PEM public key{hint}: {exc}") from None
        if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
            raise KeyFormatError(
                f"unsupported key type {type(key).__name__}: only Ed25519 and ECDSA P-256 keys are supported"
            )
        return cls.from_crypto(key, keyid)

    def to_dict(self) -> dict[str, str]:
        """The JSON form: ``{"keyid": ..., "algorithm": ..., "public_key_pem": ...}``."""
        return {
            "keyid": self.keyid,
            "algorithm": self.algorithm.value,
            "public_key_pem": self.to_pem().decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PublicKey:
        """Load the JSON form written by `to_dict`, strictly.

        All three fields are required and no other field is allowed. The algorithm comes from the record
        and must match the key in the PEM. Raises `KeyFormatError` with the reason otherwise.
        """
        if not isinstance(data, Mapping):
            raise KeyFormatError(f"a key record must be a JSON object, got {type(data).__name__}")
        expected = {"keyid", "algorithm", "public_key_pem"}
        missing = sorted(expected - data.keys())
        extra = sorted(str(k) for k in data.keys() - expected)
        if missing or extra:
            raise KeyFormatError(
                f"a key record must have exactly the fields {sorted(expected)}; missing {missing}, unexpected {extra}"
            )
        keyid, algorithm, pem = data["keyid"], data["algorithm"], data["public_key_pem"]
        for name, value in (("keyid", keyid), ("algorithm", algorithm), ("public_key_pem", pem)):
            if not isinstance(value, str):
                raise KeyFormatError(f"key record field {name!r} must be a string, got {type(value).__name__}")
        try:
            pem_bytes = pem.encode("ascii")
        except UnicodeEncodeError:
            raise KeyFormatError(f"key {keyid}: public_key_pem must be ASCII PEM text") from None
        loaded = cls.from_pem(pem_bytes, keyid)
        # Constructing with the record's algorithm checks that it matches the key.
        return cls(keyid=keyid, algorithm=algorithm, public_bytes=loaded.public_bytes)


def generate_key(
    out_prefix: Path,
    algorithm: Algorithm = Algorithm.ED25519,
    passphrase: bytes | None = None,
) -> PublicKey:
    """Generate a key pair and write ``PREFIX.key`` and ``PREFIX.pub``; return the public key record.

    ``PREFIX.key`` is the PKCS#8 PEM private key with mode 0600, encrypted with the best available
    encryption when ``passphrase`` is given. ``PREFIX.pub`` is the SubjectPublicKeyInfo PEM. Existing files
    are never overwritten: `SignerError` is raised instead. The keyid is `compute_keyid` of the public key.
    """
    algorithm = Algorithm(algorithm)
    out_prefix = Path(out_prefix)
    key_path = out_prefix.with_name(out_prefix.name + ".key")
    pub_path = out_prefix.with_name(out_prefix.name + ".pub")
    for path in (key_path, pub_path):
        if path.is_symlink() and not path.exists():
            raise SignerError(
                f"refusing to write {path}: it is a symbolic link to nothing, and writing would create its target"
                f" ({os.readlink(path)}). Remove it or choose another prefix."
            )
        if path.exists():
            raise SignerError(f"refusing to overwrite {path}: it already exists. Remove it or choose another prefix.")
    if passphrase is not None and not passphrase:
        raise SignerError("the passphrase is empty: pass None for an unencrypted key, or a non-empty passphrase")

    private_key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
    if algorithm is Algorithm.ED25519:
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        private_key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    private_pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public = PublicKey.from_crypto(private_key.public_key())
    try:
        write_new_file(key_path, private_pem, 0o600)
        write_new_file(pub_path, public.to_pem(), 0o644)
    except FileExistsError as exc:
        raise SignerError(
            f"refusing to overwrite {exc.filename}: it was created while the key was being generated"
        ) from None
    except OSError as exc:
        raise SignerError(f"cannot write the key files {key_path} and {pub_path}: {exc.strerror}") from None
    return public
