"""Signers, and choosing a signer backend by URI.

A signer is anything with a ``public_key``, a ``keyid`` and ``sign(data) -> bytes`` (see `Signer`).
`signer_from_uri` picks the backend from the URI scheme through a small registry, in the style of
securesystemslib, so that an HSM can replace a key file without code changes:

- ``/path/to/key.pem`` or ``file:/path/to/key.pem``: an unencrypted PKCS#8 (or traditional) PEM private
  key;
- ``file:PATH?passphrase-env=VAR`` or ``file:PATH?passphrase-file=FILE``: an encrypted PEM private key,
  whose passphrase is read from an environment variable or a file (never from the URI itself);
- ``pkcs11:token=LABEL;object=LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/path``
  (or ``&pin-env=VAR``): a key in a PKCS#11 token (RFC 7512 URI), through python-pkcs11.

Third parties add backends with `register_signer_scheme`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from signing.errors import SignerError
from signing.keys import _ECDSA_SHA256, Algorithm, PublicKey

__all__ = [
    "CryptoSigner",
    "Signer",
    "SignerFactory",
    "register_signer_scheme",
    "signer_from_uri",
]


@runtime_checkable
class Signer(Protocol):
    """What `sign_envelope` needs from a signing backend."""

    @property
    def public_key(self) -> PublicKey:
        """The public key record of the signing key."""
        ...

    @property
    def keyid(self) -> str:
        """The keyid placed in each signature as a hint (the public key record's keyid)."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (the PAE bytes). Ed25519: 64 raw bytes; ECDSA P-256: DER. Raises `SignerError`."""
        ...


SignerFactory = Callable[[str], Signer]
"""A backend: takes the whole signer URI and returns a signer, or raises `SignerError`."""


class CryptoSigner:
    """A signer holding a `cryptography` Ed25519 or P-256 private key in memory.

    The file backend returns one of these; tests and tools may create one directly.
    """

    __slots__ = ("_private_key", "_public_key")

    def __init__(
        self,
        private_key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
        keyid: str | None = None,
    ) -> None:
        """Wrap ``private_key``. ``keyid`` defaults to `signing.keys.compute_keyid` of its public key."""
        if not isinstance(private_key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise SignerError(
                f"unsupported private key type {type(private_key).__name__}: use an Ed25519 or ECDSA P-256 key"
            )
        if isinstance(private_key, ec.EllipticCurvePrivateKey) and not isinstance(private_key.curve, ec.SECP256R1):
            raise SignerError(
                f"unsupported elliptic curve {private_key.curve.name}: only P-256 (secp256r1) is supported"
            )
        self._private_key = private_key
        self._public_key = PublicKey.from_crypto(private_key.public_key(), keyid)

    @classmethod
    def generate(cls, algorithm: Algorithm = Algorithm.ED25519, keyid: str | None = None) -> CryptoSigner:
        """Generate a fresh in-memory key of ``algorithm``."""
        if Algorithm(algorithm) is Algorithm.ED25519:
            return cls(ed25519.Ed25519PrivateKey.generate(), keyid)
        return cls(ec.generate_private_key(ec.SECP256R1()), keyid)

    @property
    def public_key(self) -> PublicKey:
        """The public key record."""
        return self._public_key

    @property
    def keyid(self) -> str:
        """The public key record's keyid."""
        return self._public_key.keyid

    def sign(self, data: bytes) -> bytes:
        """Ed25519: the 64-byte signature; ECDSA P-256 with SHA-256: the DER signature."""
        key = self._private_key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        return key.sign(data, _ECDSA_SHA256)

    def __repr__(self) -> str:
        return f"CryptoSigner(keyid={self.keyid!r}, algorithm={self._public_key.algorithm.value!r})"


# -- the registry -------------------------------------------------------------------------------------

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_VALID_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]+$")


def _file_factory(uri: str) -> Signer:
    from signing._file import signer_from_file_uri

    return signer_from_file_uri(uri)


def _pkcs11_factory(uri: str) -> Signer:
    try:
        from signing._pkcs11 import signer_from_pkcs11_uri
    except ImportError as exc:  # pragma: no cover - python-pkcs11 is a declared dependency
        raise SignerError(
            f"the pkcs11: signer scheme needs the python-pkcs11 package ({exc}); install it with "
            "'pip install python-pkcs11'"
        ) from None
    return signer_from_pkcs11_uri(uri)


_SCHEMES: dict[str, SignerFactory] = {"file": _file_factory, "pkcs11": _pkcs11_factory}


def register_signer_scheme(scheme: str, factory: SignerFactory, *, replace: bool = False) -> None:
    """Register ``factory`` as the backend for URIs ``SCHEME:...``.

    ``scheme`` is case-insensitive, at least two characters (so that ``C:`` stays a path), made of
    letters, digits, ``+``, ``-`` and ``.``. The factory receives the whole URI. Registering a scheme that
    already exists raises `ValueError` unless ``replace`` is true.
    """
    normalized = scheme.lower()
    if not _VALID_SCHEME_RE.match(normalized):
        raise ValueError(
            f"invalid signer URI scheme {scheme!r}: use two or more letters, digits, '+', '-' or '.', "
            "starting with a letter"
        )
    if normalized in _SCHEMES and not replace:
        raise ValueError(f"the signer URI scheme {normalized!r} is already registered; pass replace=True to replace it")
    _SCHEMES[normalized] = factory


def signer_from_uri(uri: str) -> Signer:
    """Create the signer that ``uri`` names; raise `SignerError` with the reason if it cannot.

    A string with no ``SCHEME:`` prefix is a filesystem path to an unencrypted PEM private key. To use a
    path that contains a colon, write it as ``file:PATH`` (percent-encode ``%`` and ``?`` in it).
    """
    if not isinstance(uri, str) or not uri:
        raise SignerError(f"a signer URI must be a non-empty string, got {uri!r}")
    match = _SCHEME_RE.match(uri)
    if match is None or len(match.group(1)) == 1:
        from signing._file import signer_from_path

        return signer_from_path(uri)
    scheme = match.group(1).lower()
    factory = _SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}:" for s in sorted(_SCHEMES))
        raise SignerError(
            f"unknown signer URI scheme {scheme!r} in {uri!r}; known schemes: {known} or a plain path. "
            "For a path that contains ':', write file:PATH."
        )
    return factory(uri)
