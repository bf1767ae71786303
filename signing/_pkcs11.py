"""The PKCS#11 signer backend: a key held in a hardware (or software) security module.

URI (RFC 7512, with the PIN taken from a file or an environment variable, never from the URI)::

    pkcs11:token=LABEL;object=LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/path/pin
    pkcs11:token=LABEL;object=LABEL?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-env=HSM_PIN

Path attributes: ``token`` (token label) and/or ``serial`` (token serial number) choose the token;
``object`` (key label) and/or ``id`` (key id, percent-encoded bytes) choose the key; ``type`` may only be
``private``. Query attributes: ``module-path`` (required), and one of ``pin-source`` (``file:PATH`` or an
absolute path) or ``pin-env`` (an environment variable name). Values are percent-decoded.

The token must hold the private key and a public key object of the same pair with the same label/id (a
probe signature checks they match when the session opens). ECDSA P-256 keys
sign with ``CKM_ECDSA`` over a SHA-256 digest computed here (every token supports it), and the raw
``r || s`` result is converted to DER. Ed25519 keys (``CKK_EC_EDWARDS``) sign with ``CKM_EDDSA`` where
the token supports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import pkcs11
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from signing._uri import run_together, shown_uri
from signing.errors import SignerError
from signing.files import read_small_file
from signing.keys import Algorithm, PublicKey

__all__ = ["Pkcs11Signer", "signer_from_pkcs11_uri"]

_PATH_ATTRIBUTES = ("token", "serial", "object", "id", "type")
_QUERY_ATTRIBUTES = ("module-path", "pin-source", "pin-env")
_SHOWN_ATTRIBUTES = frozenset({"token", "serial", "object", "id", "type", "module-path", "pin-env"})
"""The attributes whose values an error message shows: a pin-source given the PIN itself, or a misspelt attribute
holding it, must not reach a log."""


def _shown(uri: str) -> str:
    return shown_uri(uri, _SHOWN_ATTRIBUTES, ";")


# DER of the namedCurve OID 1.2.840.10045.3.1.7 (P-256 / secp256r1).
_P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")
# Ed25519: the OID 1.3.101.112, or the PrintableString "edwards25519" that PKCS#11 3.0 also allows.
_ED25519_PARAMS = (bytes.fromhex("06032b6570"), b"\x13\x0cedwards25519")
_P256_POINT_SIZE = 65  # 0x04 || X || Y
_ED25519_POINT_SIZE = 32
_P256_SIGNATURE_SIZE = 64
_PAIR_PROBE = b"carbon-gateway: does this private key match its public key object?"

# Errors that mean the session or its login is gone (token reset, module re-initialized, another signer of
# the same token logged the application out, which also invalidates private object handles; the token removed,
# which ends every session with it): reopen once and retry.
_SESSION_LOST = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.UserNotLoggedIn,
    p11.ObjectHandleInvalid,
    p11.KeyHandleInvalid,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
)


def signer_from_pkcs11_uri(uri: str) -> Pkcs11Signer:
    """Create a signer from a ``pkcs11:`` URI (see the module docstring)."""
    body = uri.split(":", 1)[1]
    path_part, _, query_part = body.partition("?")
    attributes = _parse_attributes(uri, path_part, ";", _PATH_ATTRIBUTES, "path")
    query = _parse_attributes(uri, query_part, "&", _QUERY_ATTRIBUTES, "query")

    if attributes.get("type", "private") != "private":
        raise SignerError(f"the pkcs11 URI {_shown(uri)!r} has type={attributes['type']}; a signer needs type=private")
    token_label = _text(attributes.get("token"))
    token_serial = _text(attributes.get("serial"))
    object_label = _text(attributes.get("object"))
    object_id = unquote_to_bytes(attributes["id"]) if "id" in attributes else None
    if token_label is None and token_serial is None:
        raise SignerError(f"the pkcs11 URI {_shown(uri)!r} names no token; add token=LABEL (or serial=SERIAL)")
    if object_label is None and object_id is None:
        raise SignerError(f"the pkcs11 URI {_shown(uri)!r} names no key; add object=LABEL (or id=%XX...)")
    module_path = _text(query.get("module-path"))
    if module_path is None:
        raise SignerError(
            f"the pkcs11 URI {_shown(uri)!r} has no module-path; add ?module-path=/path/to/the/pkcs11/module.so "
            "(for SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)"
        )
    pin = _read_pin(uri, query)
    return Pkcs11Signer(
        module_path,
        pin=pin,
        token_label=token_label,
        token_serial=token_serial,
        object_label=object_label,
        object_id=object_id,
    )


def _text(value: str | None) -> str | None:
    return None if value is None else unquote(value)


def _parse_attributes(uri: str, text: str, separator: str, allowed: tuple[str, ...], part: str) -> dict[str, str]:
    result: dict[str, str] = {}
    if not text:
        return result
    for item in text.split(separator):
        name, equals, value = item.partition("=")
        if name == "pin-value":
            raise SignerError(
                "a PIN is never accepted inside a signer URI (pin-value would leak through configuration "
                "files and process listings); use pin-source=file:PATH or pin-env=VAR"
            )
        if not equals or not name or run_together(value):
            raise SignerError(
                f"malformed attribute in the pkcs11 URI {_shown(uri)!r} (not shown: it may be a secret); write"
                " name=value"
            )
        if name not in allowed:
            raise SignerError(
                f"unsupported {part} attribute {name!r} in the pkcs11 URI {_shown(uri)!r}; supported:"
                f" {', '.join(allowed)}"
            )
        if name in result:
            raise SignerError(f"the attribute {name!r} appears twice in the pkcs11 URI {_shown(uri)!r}")
        if not value:
            raise SignerError(f"the attribute {name!r} in the pkcs11 URI {_shown(uri)!r} is empty")
        result[name] = value
    return result


def _read_pin(uri: str, query: dict[str, str]) -> str:
    if "pin-source" in query and "pin-env" in query:
        raise SignerError(f"the pkcs11 URI {_shown(uri)!r} gives both pin-source and pin-env; give only one")
    if "pin-env" in query:
        variable = unquote(query["pin-env"])
        value = os.environ.get(variable)
        if value is None:
            raise SignerError(
                f"the pkcs11 URI {_shown(uri)!r} reads the PIN from the environment variable {variable!r}, which is "
                "not set; set it before starting the process"
            )
        if not value:
            raise SignerError(f"the PIN in the environment variable {variable!r} is empty")
        return value
    if "pin-source" in query:
        source = unquote(query["pin-source"])
        if source.startswith("file:"):
            source = source[len("file:") :]
            if source.startswith("//"):
                source = source[2:]
                if not source.startswith("/"):
                    raise SignerError(f"pin-source in the pkcs11 URI {_shown(uri)!r} must name a local file")
        if not source.startswith("/"):
            raise SignerError(
                f"pin-source in the pkcs11 URI {_shown(uri)!r} must be file:/absolute/path or /absolute/path (its"
                " value is not shown: it may be the PIN itself)"
            )
        try:
            data = read_small_file(Path(source)).decode("utf-8")
        except FileNotFoundError:
            raise SignerError(f"the PIN file {source} named by the pkcs11 URI does not exist") from None
        except OSError as exc:
            raise SignerError(f"cannot read the PIN file {source!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise SignerError(f"cannot read the PIN file {source}: {exc}") from None
        pin = data.removesuffix("\n").removesuffix("\r")
        if not pin:
            raise SignerError(f"the PIN file {source} is empty")
        return pin
    raise SignerError(
        f"the pkcs11 URI {_shown(uri)!r} gives no PIN; add pin-source=file:/path/to/pin or pin-env=VAR to the query"
    )


def _serial(token: Any) -> str:
    """A token's serial number as the ``serial`` attribute of a URI names it."""
    return bytes(token.serial).decode("utf-8", "backslashreplace")


def _describe(label: str | None, ident: bytes | None) -> str:
    parts = []
    if label is not None:
        parts.append(f"label {label!r}")
    if ident is not None:
        parts.append(f"id {ident.hex()}")
    return " and ".join(parts)


class Pkcs11Signer:
    """A signer whose private key stays in a PKCS#11 token.

    The session is opened (and the user logged in) at construction and kept open; `close` ends it. If the
    token reports the session or its login lost, the signature is retried once on a fresh session; a token that
    cannot be reached then fails that signature, and the next one opens a session again. A PIN the token refuses
    is never offered again (repeated wrong PINs lock a token): the signer then fails until restarted. Signing
    is serialized by a lock, so one signer may be shared by threads.

    PKCS#11 logins are per application: several signers of one process may use keys of the same token
    (the second finds the token logged in already), and closing one logs the application out, after which
    the others log in again on their next signature.
    """

    def __init__(
        self,
        module_path: str,
        *,
        pin: str,
        token_label: str | None = None,
        token_serial: str | None = None,
        object_label: str | None = None,
        object_id: bytes | None = None,
    ) -> None:
        """Open the token and find the key; raise `SignerError` if anything is missing."""
        self._module_path = module_path
        self._pin = pin
        self._token_label = token_label
        self._token_serial = token_serial
        self._object_label = object_label
        self._object_id = object_id
        self._lock = threading.Lock()
        self._session: Any = None
        self._private: Any = None
        self._closed = False
        self._pin_refused: str | None = None
        """Why the token refused this signer's PIN, once it has: the signer never offers that PIN again."""
        self._public_key = self._open()

    @property
    def public_key(self) -> PublicKey:
        """The public key record, read from the token's public key object."""
        return self._public_key

    @property
    def keyid(self) -> str:
        """The public key record's keyid (`signing.keys.compute_keyid` of the key)."""
        return self._public_key.keyid

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` in the token. ECDSA P-256: DER; Ed25519: the 64 raw bytes.

        A session lost under the signer is reopened; if the token cannot be reached then, `SignerError` says
        why, and the next signature tries again (a token that comes back is used again without a restart).
        """
        with self._lock:
            if self._closed:
                raise SignerError(f"the PKCS#11 signer for {self._where()} is closed")
            if self._pin_refused is not None:
                raise SignerError(
                    f"{self._pin_refused}; this signer does not log in with that PIN again, as repeated wrong PINs"
                    " lock a token: correct the PIN and restart the process"
                )
            if self._session is not None:
                try:
                    return self._sign(data)
                except _SESSION_LOST:
                    # The session was closed under us (token reset, module re-initialized, another signer of the
                    # same token logged out): open a fresh one and retry once.
                    self._close_session()
            self._reopen()
            try:
                return self._sign(data)
            except _SESSION_LOST as exc:
                self._close_session()
                raise SignerError(
                    f"the PKCS#11 session for {self._where()} was lost again right after reopening it: {exc!r}"
                ) from None

    def _reopen(self) -> None:
        """Open a fresh session on the same key, or raise `SignerError` leaving the signer without one."""
        try:
            public_key = self._open()
        except SignerError:
            if self._pin_refused is not None:
                raise
            # A module whose token went away may not see it again until it is initialized afresh (SoftHSM2 answers
            # CKR_GENERAL_ERROR until then). That ends this process's other sessions with the module too, which
            # their signers reopen at their next signature.
            self._reinitialize_module()
            try:
                public_key = self._open()
            except SignerError as exc:
                raise SignerError(
                    f"the PKCS#11 session for {self._where()} was lost and cannot be reopened now: {exc}; the next"
                    " signature tries again"
                ) from None
        if public_key.public_bytes != self._public_key.public_bytes:
            self._close_session()
            raise SignerError(f"the key {self._where()} changed while the signer was running; restart the process")

    def close(self) -> None:
        """Log out and close the session. The signer cannot sign afterwards."""
        with self._lock:
            self._closed = True
            self._close_session()

    def __enter__(self) -> Pkcs11Signer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Pkcs11Signer({self._where()}, keyid={self._public_key.keyid!r})"

    # -- internals ------------------------------------------------------------------------------------

    def _token(self) -> str:
        token = f"token {self._token_label!r}" if self._token_label is not None else "token"
        if self._token_serial is not None:
            token += f" (serial {self._token_serial})"
        return token

    def _where(self) -> str:
        return f"{self._token()}, key {_describe(self._object_label, self._object_id)}"

    def _sign(self, data: bytes) -> bytes:
        return self._sign_with(self._private, self._public_key.algorithm, data)

    def _sign_with(self, private: Any, algorithm: Algorithm, data: bytes) -> bytes:
        try:
            if algorithm is Algorithm.ED25519:
                return bytes(private.sign(data, mechanism=Mechanism.EDDSA))
            raw = bytes(private.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA))
        except _SESSION_LOST:
            raise
        except p11.PKCS11Error as exc:
            raise SignerError(f"the PKCS#11 token refused to sign with {self._where()}: {exc!r}") from None
        if len(raw) != _P256_SIGNATURE_SIZE:
            raise SignerError(
                f"the PKCS#11 token returned a {len(raw)}-byte ECDSA signature for {self._where()}; "
                f"expected {_P256_SIGNATURE_SIZE} bytes (r || s)"
            )
        return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))

    def _reinitialize_module(self) -> None:
        """Finalize and initialize the module again (C_Finalize, C_Initialize), if it is there at all."""
        if not Path(self._module_path).is_file():
            return
        with contextlib.suppress(p11.PKCS11Error):
            pkcs11.lib(self._module_path).reinitialize()

    def _close_session(self) -> None:
        session, self._session, self._private = self._session, None, None
        if session is not None:
            with contextlib.suppress(p11.PKCS11Error):  # the session may already be gone
                session.close()

    def _open(self) -> PublicKey:
        if not Path(self._module_path).is_file():
            raise SignerError(
                f"the PKCS#11 module {self._module_path} does not exist; install the token's library "
                "(for SoftHSM2: apt-get install softhsm2) or fix module-path"
            )
        try:
            lib = pkcs11.lib(self._module_path)
        except p11.PKCS11Error as exc:
            raise SignerError(f"cannot load the PKCS#11 module {self._module_path}: {exc}") from None

        token_query: dict[str, Any] = {}
        if self._token_label is not None:
            token_query["token_label"] = self._token_label
        if self._token_serial is not None:
            # python-pkcs11 compares the serial as the token reports it: bytes (a str never matches).
            token_query["token_serial"] = self._token_serial.encode("utf-8")
        try:
            token = lib.get_token(**token_query)
        except p11.NoSuchToken:
            try:
                present = sorted(f"{t.label!r} (serial {_serial(t)})" for t in lib.get_tokens() if t.label)
            except p11.PKCS11Error:
                present = []
            raise SignerError(
                f"no PKCS#11 token matches {self._token()} in {self._module_path}; tokens present: "
                f"{', '.join(present) or 'none'}. Check the token label, or initialize the token."
            ) from None
        except p11.MultipleTokensReturned:
            try:
                serials = ", ".join(sorted(_serial(t) for t in lib.get_tokens(**token_query)))
            except p11.PKCS11Error:
                serials = "see pkcs11-tool --list-slots"
            raise SignerError(
                f"several PKCS#11 tokens match {self._token()} (serials {serials}); add serial=... to the URI"
            ) from None
        except p11.PKCS11Error as exc:
            raise SignerError(f"cannot list the tokens of {self._module_path}: {exc!r}") from None

        try:
            try:
                session = token.open(user_pin=self._pin)
            except p11.UserAlreadyLoggedIn:
                # PKCS#11 logins are per application: another signer of this process is logged in to
                # the same token, so every new session already has the user's rights.
                session = token.open()
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange):
            self._pin_refused = f"the PIN for PKCS#11 token {token.label!r} is wrong; check the PIN file/variable"
            raise SignerError(self._pin_refused) from None
        except p11.PinLocked:
            self._pin_refused = f"the user PIN of PKCS#11 token {token.label!r} is locked; reset it with the SO PIN"
            raise SignerError(self._pin_refused) from None
        except p11.PKCS11Error as exc:
            raise SignerError(f"cannot log in to PKCS#11 token {token.label!r}: {exc!r}") from None

        try:
            private = self._find(session, ObjectClass.PRIVATE_KEY, "private key")
            public = self._find(session, ObjectClass.PUBLIC_KEY, "public key")
            public_key = self._public_key_of(private, public)
            self._check_pair(private, public_key)
        except BaseException:
            with contextlib.suppress(p11.PKCS11Error):
                session.close()
            raise
        self._session = session
        self._private = private
        return public_key

    def _find(self, session: Any, object_class: ObjectClass, what: str) -> Any:
        query: dict[str, Any] = {"object_class": object_class}
        if self._object_label is not None:
            query["label"] = self._object_label
        if self._object_id is not None:
            query["id"] = self._object_id
        try:
            return session.get_key(**query)
        except p11.NoSuchKey:
            hint = ""
            if object_class is ObjectClass.PUBLIC_KEY:
                hint = "; the token must also hold the public key object with the same label/id"
            raise SignerError(
                f"no {what} with {_describe(self._object_label, self._object_id)} in PKCS#11 token "
                f"{self._token_label or self._token_serial!r}{hint}"
            ) from None
        except p11.MultipleObjectsReturned:
            raise SignerError(
                f"several {what}s match {_describe(self._object_label, self._object_id)} in PKCS#11 token "
                f"{self._token_label or self._token_serial!r}; add id=... to the URI"
            ) from None
        except p11.PKCS11Error as exc:
            raise SignerError(f"cannot search PKCS#11 token {self._token_label!r}: {exc!r}") from None

    def _check_pair(self, private: Any, public_key: PublicKey) -> None:
        """Refuse a private key that the public key object found beside it does not verify.

        The two objects are found separately, by label or id: a token whose public object of that label belongs
        to another pair (a key regenerated or relabelled) would otherwise have every message signed under a key
        the trust document does not list, and refused by every partner.
        """
        try:
            signature = self._sign_with(private, public_key.algorithm, _PAIR_PROBE)
        except _SESSION_LOST as exc:
            raise SignerError(f"the PKCS#11 session for {self._where()} was lost while opening it: {exc!r}") from None
        if not public_key.verify(signature, _PAIR_PROBE):
            raise SignerError(
                f"the private key {_describe(self._object_label, self._object_id)} in PKCS#11 {self._token()} does not"
                f" match the public key object found with it (keyid {public_key.keyid}); the token holds objects of"
                " different key pairs under that label/id: add id=... to the URI, or fix the objects' labels"
            )

    def _public_key_of(self, private: Any, public: Any) -> PublicKey:
        where = _describe(self._object_label, self._object_id)
        try:
            key_type = private.key_type
        except p11.PKCS11Error as exc:
            raise SignerError(f"cannot read the key type of {where}: {exc!r}") from None
        if key_type not in (KeyType.EC, KeyType.EC_EDWARDS):
            raise SignerError(
                f"the key {where} has PKCS#11 key type {key_type!r}; only EC (P-256) and EC_EDWARDS (Ed25519) "
                "keys are supported"
            )
        try:
            params = bytes(public[Attribute.EC_PARAMS])
            point = bytes(public[Attribute.EC_POINT])
        except p11.PKCS11Error as exc:
            raise SignerError(f"cannot read the public key attributes of {where}: {exc!r}") from None
        if key_type == KeyType.EC:
            if params != _P256_PARAMS:
                raise SignerError(f"the key {where} is an EC key on a curve other than P-256; use a P-256 key")
            if len(point) == _P256_POINT_SIZE + 2 and point[0] == 0x04:
                point = point[2:]  # DER OCTET STRING wrapper, as PKCS#11 specifies
            try:
                ec_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            except ValueError as exc:
                raise SignerError(f"the public key {where} has an invalid EC point: {exc}") from None
            return PublicKey.from_crypto(ec_key)
        if key_type == KeyType.EC_EDWARDS:
            if params not in _ED25519_PARAMS:
                raise SignerError(f"the key {where} is an Edwards key other than Ed25519; use Ed25519")
            if len(point) == _ED25519_POINT_SIZE + 2 and point[0] == 0x04:
                point = point[2:]
            try:
                ed_key = ed25519.Ed25519PublicKey.from_public_bytes(point)
            except ValueError as exc:
                raise SignerError(f"the public key {where} has an invalid Ed25519 point: {exc}") from None
            return PublicKey.from_crypto(ed_key)
        raise SignerError(
            f"the key {where} has PKCS#11 key type {key_type!r}; only EC (P-256) and EC_EDWARDS (Ed25519) "
            "keys are supported"
        )
