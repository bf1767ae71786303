"""DSSE envelopes: pre-authentication encoding, the envelope value type, its JSON form, and signing.

See https://github.com/secure-systems-lab/dsse. A signature covers ``PAE(payload_type, payload)``; the
payload is carried verbatim as bytes and is never re-serialized. The JSON form (payload in base64) is the
one used on the HTTP path; the same envelope verifies whatever the transport.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from signing.errors import EnvelopeFormatError, SignerError

if TYPE_CHECKING:
    from signing.signers import Signer

__all__ = [
    "MAX_KEYID_LENGTH",
    "MAX_SIGNATURES",
    "MAX_SIGNATURE_SIZE",
    "Envelope",
    "Signature",
    "pae",
    "sign_envelope",
]

MAX_SIGNATURES = 16
"""The most signatures an envelope may carry, whatever it is verified against.

A structural cap, checked when an `Envelope` is built or parsed (`EnvelopeFormatError` otherwise), so that
no envelope makes a receiver do unbounded work. It is well above any role in a trust document (a role
counts at most one signature per key; a trust update carries the old and the new document's trust keys).
`signing.verify.verify_envelope` then applies the tighter cap of the keys it verifies against.
"""

MAX_KEYID_LENGTH = 256
"""The longest keyid hint a signature may carry, in characters.

A keyid made by `signing.keys.compute_keyid` is 64 characters; longer hints are refused with
`EnvelopeFormatError`.
"""

MAX_SIGNATURE_SIZE = 512
"""The largest signature a signature may carry, in bytes.

Ed25519 signatures are 64 bytes, DER ECDSA P-256 signatures at most 72, and raw ``r || s`` 64; anything
above this cap cannot be a signature by a supported key and is refused with `EnvelopeFormatError`.
"""


def pae(payload_type: str, payload: bytes) -> bytes:
    """Return the DSSE pre-authentication encoding of ``(payload_type, payload)``.

    ``PAE = "DSSEv1" SP LEN(type) SP type SP LEN(payload) SP payload``, where both lengths are the
    number of bytes in ASCII decimal. The payload type must be ASCII; otherwise `EnvelopeFormatError`.
    """
    try:
        type_bytes = payload_type.encode("ascii")
    except UnicodeEncodeError:
        raise EnvelopeFormatError(
            f"payload type {payload_type!r} is not ASCII; payload types are ASCII media types such as "
            "'application/vnd.carbon-gateway.transfer.v1+protobuf'"
        ) from None
    except AttributeError:
        raise EnvelopeFormatError(f"payload type must be a str, got {type(payload_type).__name__}") from None
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    """One signature in an envelope: a keyid hint (``""`` when absent) and the signature bytes.

    The keyid is text that UTF-8 can carry (no lone surrogates), at most `MAX_KEYID_LENGTH` characters, and
    the signature is 1 to `MAX_SIGNATURE_SIZE` bytes; otherwise `EnvelopeFormatError`. Both forms of an
    envelope (JSON and protobuf) meet these checks here, so both refuse the same envelopes.
    """

    keyid: str
    sig: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.keyid, str):
            raise EnvelopeFormatError(f"a signature's keyid must be a str, got {type(self.keyid).__name__}")
        if not isinstance(self.sig, bytes):
            raise EnvelopeFormatError(f"a signature's sig must be bytes, got {type(self.sig).__name__}")
        _check_keyid(self.keyid, "a signature")
        if not self.sig:
            raise EnvelopeFormatError("a signature has an empty 'sig'; every signature carries its bytes")
        _check_signature_size(self.sig, "a signature")


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope: the payload bytes (verbatim), the ASCII payload type, and the signatures.

    ``signatures`` may be given as any sequence; it is stored as a tuple. An envelope carries at most
    `MAX_SIGNATURES` signatures; otherwise `EnvelopeFormatError`.
    """

    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.payload, bytes):
            raise EnvelopeFormatError(f"an envelope's payload must be bytes, got {type(self.payload).__name__}")
        if not isinstance(self.payload_type, str) or not self.payload_type.isascii():
            raise EnvelopeFormatError(f"an envelope's payload type must be an ASCII str, got {self.payload_type!r}")
        if not isinstance(self.signatures, tuple):
            object.__setattr__(self, "signatures", tuple(self.signatures))
        _check_signature_count(len(self.signatures))
        for signature in self.signatures:
            if not isinstance(signature, Signature):
                raise EnvelopeFormatError(
                    f"an envelope's signatures must be Signature values, got {type(signature).__name__}"
                )

    def to_json(self) -> bytes:
        """The DSSE JSON envelope, compact UTF-8, with standard (padded) base64.

        ``{"payload": B64, "payloadType": TYPE, "signatures": [{"keyid": ID, "sig": B64}, ...]}``
        """
        document = {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")} for s in self.signatures],
        }
        return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        """Parse a DSSE JSON envelope; raise `EnvelopeFormatError` (and nothing else) if it is malformed.

        Rules:

        1. ``data`` is UTF-8 JSON holding one object, with no duplicate member names at any level.
        2. ``payload`` (base64) and ``payloadType`` (ASCII string) are required; ``signatures`` is a
           required list of objects, each with ``sig`` (base64, non-empty) and an optional ``keyid`` string
           (absent means ``""``). Unknown members are ignored, as DSSE allows extensions.
        3. Base64 may be standard or URL-safe, with or without padding, but not a mix of the two alphabets.
        4. At most `MAX_SIGNATURES` signatures (checked before any is decoded), each keyid at most
           `MAX_KEYID_LENGTH` characters and each signature at most `MAX_SIGNATURE_SIZE` bytes.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise EnvelopeFormatError(f"an envelope must be given as bytes, got {type(data).__name__}")
        try:
            text = bytes(data).decode("utf-8")
            document = json.loads(
                text,
                object_pairs_hook=_no_duplicates,
                parse_constant=_no_constant,
                parse_int=_bounded_int,
                parse_float=_finite_float,
            )
        except UnicodeDecodeError as exc:
            raise EnvelopeFormatError(f"the envelope is not UTF-8 text: {exc}") from None
        except (ValueError, RecursionError) as exc:
            raise EnvelopeFormatError(f"the envelope is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise EnvelopeFormatError(f"the envelope must be a JSON object, got {_json_type(document)}")

        payload_b64 = _required(document, "payload", str, "the envelope")
        payload_type = _required(document, "payloadType", str, "the envelope")
        if not payload_type.isascii():
            raise EnvelopeFormatError(f"the envelope's payloadType {payload_type!r} is not ASCII")
        raw_signatures = _required(document, "signatures", list, "the envelope")
        _check_signature_count(len(raw_signatures))
        payload = _b64decode(payload_b64, "payload")

        signatures = []
        for index, entry in enumerate(raw_signatures):
            where = f"signature {index}"
            if not isinstance(entry, dict):
                raise EnvelopeFormatError(f"{where} must be a JSON object, got {_json_type(entry)}")
            sig = _b64decode(_required(entry, "sig", str, where), f"{where} 'sig'")
            if not sig:
                raise EnvelopeFormatError(f"{where} has an empty 'sig'")
            _check_signature_size(sig, where)
            keyid = entry.get("keyid", "")
            if keyid is None:
                keyid = ""
            if not isinstance(keyid, str):
                raise EnvelopeFormatError(f"{where} 'keyid' must be a string, got {_json_type(keyid)}")
            _check_keyid(keyid, where)
            signatures.append(Signature(keyid=keyid, sig=sig))
        return cls(payload=payload, payload_type=payload_type, signatures=tuple(signatures))


def sign_envelope(payload_type: str, payload: bytes, signers: Sequence[Signer]) -> Envelope:
    """Sign ``PAE(payload_type, payload)`` with every signer and return the envelope.

    Each signature carries its signer's keyid as the hint. At least one signer is required.
    """
    if not signers:
        raise SignerError("sign_envelope needs at least one signer")
    data = pae(payload_type, payload)
    signatures = tuple(Signature(keyid=signer.keyid, sig=signer.sign(data)) for signer in signers)
    return Envelope(payload=payload, payload_type=payload_type, signatures=signatures)


# -- helpers -------------------------------------------------------------------------------------------


def _check_signature_count(count: int) -> None:
    if count > MAX_SIGNATURES:
        raise EnvelopeFormatError(
            f"the envelope carries {count} signatures, more than the {MAX_SIGNATURES} any envelope may carry; "
            "refusing it unread. A sender signs once per key of the role (a trust update: once per trust key "
            "of the old and the new document)."
        )


def _check_keyid(keyid: str, where: str) -> None:
    try:
        keyid.encode("utf-8")
    except UnicodeEncodeError:
        raise EnvelopeFormatError(
            f"{where} has a keyid {keyid!r} that UTF-8 cannot carry (a lone surrogate); a keyid is text"
        ) from None
    if len(keyid) > MAX_KEYID_LENGTH:
        raise EnvelopeFormatError(
            f"{where} has a keyid of {len(keyid)} characters, more than the {MAX_KEYID_LENGTH} allowed; a keyid "
            "is a short hint such as the 64-character hex SHA-256 of the public key"
        )


def _check_signature_size(sig: bytes, where: str) -> None:
    if len(sig) > MAX_SIGNATURE_SIZE:
        raise EnvelopeFormatError(
            f"{where} has a signature of {len(sig)} bytes, more than the {MAX_SIGNATURE_SIZE} allowed; Ed25519 "
            "signatures are 64 bytes and DER ECDSA P-256 signatures at most 72, so this is not a signature by "
            "a supported key"
        )


_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
_T = TypeVar("_T")


def _b64decode(text: str, what: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not."""
    if not text.isascii():
        raise EnvelopeFormatError(f"{what} is not base64: it contains non-ASCII characters")
    body = text.rstrip("=")
    padding = len(text) - len(body)
    if padding and len(text) % 4:
        raise EnvelopeFormatError(f"{what} is not base64: wrong padding")
    has_urlsafe = "-" in body or "_" in body
    if has_urlsafe:
        if "+" in body or "/" in body:
            raise EnvelopeFormatError(f"{what} is not base64: it mixes the standard and URL-safe alphabets")
        body = body.translate(_URLSAFE_TO_STANDARD)
    if len(body) % 4 == 1:
        raise EnvelopeFormatError(f"{what} is not base64: its length is impossible")
    body += "=" * (-len(body) % 4)
    if padding and len(body) != len(text):
        raise EnvelopeFormatError(f"{what} is not base64: wrong padding")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeFormatError(f"{what} is not base64: {exc}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise EnvelopeFormatError(f"the envelope has the member {key!r} twice; refusing an ambiguous envelope")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise EnvelopeFormatError(f"the envelope holds {name}, which is not a JSON number")


MAX_INTEGER_DIGITS = 4000
"""Digits an integer in an envelope's JSON may have (Python refuses to read more than 4,300, with a message
about its own settings)."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise EnvelopeFormatError(f"the envelope holds the number {text[:40]}, too large to be a finite number")
    return value


def _bounded_int(digits: str) -> int:
    if len(digits) > MAX_INTEGER_DIGITS:
        raise EnvelopeFormatError(
            f"the envelope holds a number of {len(digits)} digits, more than {MAX_INTEGER_DIGITS}"
        )
    return int(digits)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _required(mapping: dict[str, Any], name: str, kind: type[_T], where: str) -> _T:
    if name not in mapping:
        raise EnvelopeFormatError(f"{where} has no {name!r} member")
    value = mapping[name]
    if not isinstance(value, kind):
        expected = "a string" if kind is str else "an array" if kind is list else kind.__name__
        raise EnvelopeFormatError(f"{where}'s {name!r} must be {expected}, got {_json_type(value)}")
    return value
