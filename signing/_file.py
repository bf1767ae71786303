"""The file signer backend: PEM private keys on disk, optionally encrypted.

URIs:

- a plain path, or ``file:PATH`` (also ``file:///ABSOLUTE/PATH``): an unencrypted PEM private key;
- ``file:PATH?passphrase-env=VAR``: an encrypted key; the passphrase is the value of environment
  variable ``VAR``;
- ``file:PATH?passphrase-file=FILE``: an encrypted key; the passphrase is the content of ``FILE`` (one
  trailing newline is ignored).

A passphrase is never accepted in the URI itself: URIs end up in configuration files, shell history and
process listings.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from signing._uri import shown_uri
from signing.errors import SignerError
from signing.files import passphrase_from_file_bytes, read_small_file
from signing.signers import CryptoSigner

__all__ = ["signer_from_file_uri", "signer_from_path"]

_FILE_PARAMS = ("passphrase-env", "passphrase-file")


def _shown(uri: str) -> str:
    """``uri`` as an error message shows it: a misspelt parameter may hold the passphrase itself."""
    return shown_uri(uri, frozenset(_FILE_PARAMS))


def signer_from_path(path: str | os.PathLike[str], passphrase: bytes | None = None) -> CryptoSigner:
    """Load the PEM private key at ``path`` (decrypting it with ``passphrase`` if given)."""
    return _load(Path(path), passphrase, source=None)


def signer_from_file_uri(uri: str) -> CryptoSigner:
    """Create a signer from a ``file:`` URI (see the module docstring)."""
    rest = uri.split(":", 1)[1]
    location, _, query = rest.partition("?")
    if location.startswith("//"):
        authority, slash, absolute = location[2:].partition("/")
        if authority not in ("", "localhost") or not slash:
            raise SignerError(
                f"file URI {_shown(uri)!r} names the host {authority!r}; only local files are supported "
                "(write file:/absolute/path or file:relative/path)"
            )
        location = "/" + absolute
    path = unquote(location)
    if not path:
        raise SignerError(f"file URI {_shown(uri)!r} has no path; write file:/path/to/key.pem")
    params = _parse_query(uri, query)
    passphrase: bytes | None = None
    source: str | None = None
    if "passphrase-env" in params:
        variable = params["passphrase-env"]
        source = f"environment variable {variable}"
        value = os.environ.get(variable) if variable else None
        if value is None:
            raise SignerError(
                f"the signer URI {_shown(uri)!r} reads the passphrase from the environment variable "
                f"{variable!r}, which is not set; set it before starting the process"
            )
        passphrase = os.fsencode(value)
    elif "passphrase-file" in params:
        passphrase_path = Path(params["passphrase-file"])
        source = f"passphrase file {passphrase_path}"
        try:
            passphrase = read_small_file(passphrase_path)
        except FileNotFoundError:
            raise SignerError(
                f"the passphrase file {passphrase_path} named by {_shown(uri)!r} does not exist"
            ) from None
        except OSError as exc:
            raise SignerError(f"cannot read the passphrase file {passphrase_path}: {exc.strerror}") from None
        passphrase = passphrase_from_file_bytes(passphrase)
    if passphrase is not None and not passphrase:
        raise SignerError(f"the passphrase from the {source} is empty")
    return _load(Path(path), passphrase, source)


def _parse_query(uri: str, query: str) -> dict[str, str]:
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise SignerError(f"the query of the signer URI {_shown(uri)!r} is malformed; write ?name=value") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name == "passphrase":
            raise SignerError(
                "a passphrase is never accepted inside a signer URI (it would leak through configuration "
                "files and process listings); use ?passphrase-env=VAR or ?passphrase-file=FILE"
            )
        if name not in _FILE_PARAMS:
            raise SignerError(
                f"unknown parameter {name!r} in the signer URI {_shown(uri)!r}; the file: scheme accepts "
                f"{', '.join(_FILE_PARAMS)}"
            )
        if name in params:
            raise SignerError(f"the parameter {name!r} appears twice in the signer URI {_shown(uri)!r}")
        if not value:
            raise SignerError(f"the parameter {name!r} in the signer URI {_shown(uri)!r} is empty")
        params[name] = value
    if len(params) > 1:
        raise SignerError(
            f"the signer URI {_shown(uri)!r} gives both passphrase-env and passphrase-file; give only one"
        )
    return params


def _load(path: Path, passphrase: bytes | None, source: str | None) -> CryptoSigner:
    try:
        pem = read_small_file(path)
    except FileNotFoundError:
        raise SignerError(
            f"the private key file {path} does not exist; check the signer URI, or create a key"
            " (`carbon-gateway keys generate --out PREFIX` writes PREFIX.key)"
        ) from None
    except IsADirectoryError:
        raise SignerError(f"the private key path {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise SignerError(f"cannot read the private key file {path}: {exc.strerror}") from None

    encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem or b"Proc-Type: 4,ENCRYPTED" in pem
    if encrypted and passphrase is None:
        raise SignerError(
            f"the private key {path} is encrypted; add ?passphrase-env=VAR or ?passphrase-file=FILE to the "
            "signer URI (file:PATH?passphrase-env=VAR)"
        )
    if not encrypted and passphrase is not None and b"PRIVATE KEY-----" in pem:
        raise SignerError(
            f"the private key {path} is not encrypted, but the signer URI gives a passphrase ({source}); "
            "remove the passphrase parameter or encrypt the key"
        )
    try:
        key = serialization.load_pem_private_key(pem, passphrase)
    except TypeError as exc:
        raise SignerError(f"cannot load the private key {path}: {exc}") from None
    except ValueError as exc:
        if encrypted:
            raise SignerError(
                f"cannot decrypt the private key {path} with the passphrase from the {source}: wrong "
                "passphrase (or a corrupt key file)"
            ) from None
        raise SignerError(f"the file {path} is not a PEM private key ({exc})") from None
    except UnsupportedAlgorithm as exc:
        raise SignerError(f"the private key {path} uses an unsupported algorithm: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise SignerError(
            f"the private key {path} is a {type(key).__name__}; only Ed25519 and ECDSA P-256 keys are supported"
        )
    try:
        return CryptoSigner(key)
    except SignerError as exc:
        raise SignerError(f"the private key {path}: {exc}") from None
