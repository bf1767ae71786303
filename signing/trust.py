"""Trust documents per jurisdiction, and the pure state machine that accepts, updates and uses them.

A trust document is modelled on TUF's root metadata: a party, a version, an expiry, the keys, and per role
the keyids and threshold that role requires. The roles are at least ``trust`` (signs the trust document
itself) and ``transfer`` (signs transfer messages). A document travels as the payload of a DSSE envelope
of type `TRUST_PAYLOAD_TYPE`.

`TrustedParty` holds the currently trusted document of one partner. Like python-tuf's trusted metadata set,
it is pure: it takes envelopes and a ``now``, never touches files, sockets or the clock, and raises typed
errors. Every method returns a new instance; an instance never changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from signing.dsse import MAX_SIGNATURES, Envelope, sign_envelope
from signing.errors import (
    ExpiredTrustError,
    KeyFormatError,
    RollbackError,
    TooManySignaturesError,
    TrustDocumentFormatError,
    TrustError,
    VerificationError,
)
from signing.keys import PublicKey, compute_keyid
from signing.signers import Signer
from signing.verify import VerificationResult, verify_envelope

__all__ = [
    "REQUIRED_ROLES",
    "TRUST_PAYLOAD_TYPE",
    "Role",
    "TrustDocument",
    "TrustedParty",
    "sign_trust_document",
]

TRUST_PAYLOAD_TYPE = "application/vnd.carbon-gateway.trust.v1+json"
"""The DSSE payload type of a trust document."""

TRUST_ROLE = "trust"
TRANSFER_ROLE = "transfer"
REQUIRED_ROLES = (TRUST_ROLE, TRANSFER_ROLE)
"""The roles every trust document must define."""

_PARTY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_ROLE_RE = re.compile(r"[a-z][a-z0-9._-]{0,63}")
_EXPIRES_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")  # ASCII digits only
_EXPIRES_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MAX_VERSION = 2**63 - 1
"""The largest version a trust document may carry: stores keep versions as 64-bit signed integers."""

_DOCUMENT_FIELDS = frozenset({"party", "version", "expires", "keys", "roles"})
_ROLE_FIELDS = frozenset({"keyids", "threshold"})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Role:
    """The keys a role trusts (by keyid) and how many distinct keys must sign."""

    keyids: tuple[str, ...]
    threshold: int

    def __post_init__(self) -> None:
        if isinstance(self.keyids, str) or not isinstance(self.keyids, Sequence):
            raise TrustDocumentFormatError(f"a role's keyids must be a list of strings, got {self.keyids!r}")
        keyids = tuple(self.keyids)
        if not keyids:
            raise TrustDocumentFormatError("a role must list at least one keyid")
        for keyid in keyids:
            if not isinstance(keyid, str) or not keyid:
                raise TrustDocumentFormatError(f"a role's keyids must be non-empty strings, got {keyid!r}")
        if len(set(keyids)) != len(keyids):
            raise TrustDocumentFormatError(f"a role lists a keyid twice: {list(keyids)}")
        if not _is_int(self.threshold) or self.threshold < 1:
            raise TrustDocumentFormatError(f"a role's threshold must be an integer >= 1, got {self.threshold!r}")
        object.__setattr__(self, "keyids", keyids)


@dataclass(frozen=True)
class TrustDocument:
    """One version of a party's trust document.

    Construction validates the document (raising `TrustDocumentFormatError`):

    - ``party`` is a short identifier (letters, digits, ``.``, ``_``, ``:``, ``-``), e.g. ``CHN``;
    - ``version`` is an integer from 1 to `MAX_VERSION`;
    - ``expires`` is timezone-aware; it is stored in UTC, truncated to whole seconds;
    - ``keys`` maps each keyid to the key record with that keyid, and every keyid is the key's own,
      `signing.keys.compute_keyid` of its ``public_bytes`` (lowercase hex SHA-256 of the
      SubjectPublicKeyInfo DER). A receiver may choose the partner by a signature's keyid hint, so a
      document must not be able to list a key under another key's (or another partner's) keyid;
    - ``roles`` includes ``trust`` and ``transfer``; each role's keyids are in ``keys``, and its threshold
      is at most the number of distinct public keys among them.

    ``keys`` and ``roles`` are stored as read-only mappings.
    """

    party: str
    version: int
    expires: datetime
    keys: Mapping[str, PublicKey] = field(repr=False)
    roles: Mapping[str, Role]

    def __post_init__(self) -> None:
        if not isinstance(self.party, str) or not _PARTY_RE.fullmatch(self.party):
            raise TrustDocumentFormatError(
                f"party {self.party!r} is not a valid party identifier: use 1-64 letters, digits, '.', '_', "
                "':' or '-', such as 'CHN'"
            )
        if not _is_int(self.version) or not 1 <= self.version <= MAX_VERSION:
            raise TrustDocumentFormatError(
                f"trust document for {self.party}: version must be an integer from 1 to 2^63 - 1, got {self.version!r}"
            )
        if not isinstance(self.expires, datetime) or self.expires.utcoffset() is None:
            raise TrustDocumentFormatError(
                f"trust document for {self.party}: expires must be a timezone-aware datetime, got {self.expires!r}"
            )
        expires = self.expires.astimezone(UTC).replace(microsecond=0)

        if not isinstance(self.keys, Mapping) or not self.keys:
            raise TrustDocumentFormatError(f"trust document for {self.party}: keys must be a non-empty mapping")
        keys: dict[str, PublicKey] = {}
        for keyid, key in self.keys.items():
            if not isinstance(key, PublicKey):
                raise TrustDocumentFormatError(
                    f"trust document for {self.party}: key {keyid!r} is a {type(key).__name__}, not a PublicKey"
                )
            if keyid != key.keyid:
                raise TrustDocumentFormatError(
                    f"trust document for {self.party}: the key listed under {keyid!r} has keyid {key.keyid!r}; "
                    "they must be equal"
                )
            expected = compute_keyid(key.public_bytes)
            if key.keyid != expected:
                raise TrustDocumentFormatError(
                    f"trust document for {self.party}: key {key.keyid!r} ({key.algorithm.value}) has the wrong "
                    f"keyid: a trust document lists every key under its own keyid, the lowercase hex SHA-256 of "
                    f"its SubjectPublicKeyInfo DER, which is {expected!r} for this key. Rebuild the key record "
                    "with the default keyid (e.g. PublicKey.from_pem(pem)) and update the roles that name it."
                )
            keys[keyid] = key

        if not isinstance(self.roles, Mapping):
            raise TrustDocumentFormatError(f"trust document for {self.party}: roles must be a mapping")
        roles: dict[str, Role] = {}
        for name, role in self.roles.items():
            if not isinstance(name, str) or not _ROLE_RE.fullmatch(name):
                raise TrustDocumentFormatError(
                    f"trust document for {self.party}: role name {name!r} is invalid; use lowercase letters, "
                    "digits, '.', '_' or '-'"
                )
            if not isinstance(role, Role):
                raise TrustDocumentFormatError(
                    f"trust document for {self.party}: role {name!r} is a {type(role).__name__}, not a Role"
                )
            unknown = [k for k in role.keyids if k not in keys]
            if unknown:
                raise TrustDocumentFormatError(
                    f"trust document for {self.party}: role {name!r} names keyids that are not in keys: {unknown}"
                )
            distinct = len({keys[k].public_bytes for k in role.keyids})
            if role.threshold > distinct:
                raise TrustDocumentFormatError(
                    f"trust document for {self.party}: role {name!r} has threshold {role.threshold} but only "
                    f"{distinct} distinct key(s); the threshold could never be met"
                )
            roles[name] = role
        missing = [r for r in REQUIRED_ROLES if r not in roles]
        if missing:
            raise TrustDocumentFormatError(
                f"trust document for {self.party}: the required role(s) {missing} are missing; every trust "
                f"document defines {list(REQUIRED_ROLES)}"
            )
        object.__setattr__(self, "expires", expires)
        object.__setattr__(self, "keys", MappingProxyType(keys))
        object.__setattr__(self, "roles", MappingProxyType(roles))

    def __hash__(self) -> int:
        return hash(self.to_payload())

    def keys_for(self, role: str) -> tuple[PublicKey, ...]:
        """The key records of ``role``, in the role's keyid order; `TrustError` if there is no such role."""
        return tuple(self.keys[k] for k in self._role(role).keyids)

    def threshold_for(self, role: str) -> int:
        """The threshold of ``role``; `TrustError` if there is no such role."""
        return self._role(role).threshold

    def is_expired(self, now: datetime) -> bool:
        """Whether the document has expired at ``now`` (expired from the ``expires`` instant onwards)."""
        return _aware(now) >= self.expires

    def _role(self, role: str) -> Role:
        try:
            return self.roles[role]
        except KeyError:
            raise TrustError(
                f"trust document for {self.party} (version {self.version}) has no role {role!r}; its roles "
                f"are {sorted(self.roles)}"
            ) from None

    def to_payload(self) -> bytes:
        """The canonical JSON payload: sorted keys, no whitespace, UTF-8.

        ``{"expires": "YYYY-MM-DDTHH:MM:SSZ", "keys": {KEYID: PublicKey.to_dict()}, "party": ...,
        "roles": {NAME: {"keyids": [...], "threshold": N}}, "version": N}``
        """
        document = {
            "party": self.party,
            "version": self.version,
            "expires": self.expires.strftime(_EXPIRES_FORMAT),
            "keys": {keyid: key.to_dict() for keyid, key in self.keys.items()},
            "roles": {
                name: {"keyids": list(role.keyids), "threshold": role.threshold} for name, role in self.roles.items()
            },
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_payload(cls, data: bytes) -> TrustDocument:
        """Parse and strictly validate a trust document payload; raise `TrustDocumentFormatError` if bad.

        The payload must be UTF-8 JSON with no duplicate member names and no non-finite numbers, holding
        exactly the members written by `to_payload`, with the types written there, and satisfying the
        rules listed on the class.
        """
        if not isinstance(data, bytes):
            raise TrustDocumentFormatError(f"a trust document payload must be bytes, got {type(data).__name__}")
        try:
            document = json.loads(
                data.decode("utf-8"), object_pairs_hook=_strict_object, parse_constant=_reject_constant
            )
        except UnicodeDecodeError as exc:
            raise TrustDocumentFormatError(f"the trust document is not UTF-8: {exc}") from None
        except (ValueError, RecursionError) as exc:
            raise TrustDocumentFormatError(f"the trust document is not valid JSON: {exc}") from None

        _exact_fields(document, _DOCUMENT_FIELDS, "the trust document")
        party = document["party"]
        version = document["version"]
        if not _is_int(version):
            raise TrustDocumentFormatError(f"the trust document's version must be an integer, got {version!r}")
        expires_text = document["expires"]
        if not isinstance(expires_text, str) or not _EXPIRES_RE.fullmatch(expires_text):
            raise TrustDocumentFormatError(
                f"the trust document's expires must be a UTC time like '2030-01-01T00:00:00Z', got {expires_text!r}"
            )
        try:
            expires = datetime.strptime(expires_text, _EXPIRES_FORMAT).replace(tzinfo=UTC)
        except ValueError as exc:
            raise TrustDocumentFormatError(f"the trust document's expires {expires_text!r} is invalid: {exc}") from None

        raw_keys = document["keys"]
        if not isinstance(raw_keys, dict):
            raise TrustDocumentFormatError("the trust document's keys must be a JSON object")
        keys: dict[str, PublicKey] = {}
        for keyid, record in raw_keys.items():
            try:
                keys[keyid] = PublicKey.from_dict(record)
            except KeyFormatError as exc:
                raise TrustDocumentFormatError(f"the trust document's key {keyid!r} is invalid: {exc}") from None

        raw_roles = document["roles"]
        if not isinstance(raw_roles, dict):
            raise TrustDocumentFormatError("the trust document's roles must be a JSON object")
        roles: dict[str, Role] = {}
        for name, record in raw_roles.items():
            _exact_fields(record, _ROLE_FIELDS, f"role {name!r}")
            keyids = record["keyids"]
            if not isinstance(keyids, list):
                raise TrustDocumentFormatError(f"role {name!r}: keyids must be a JSON array of strings")
            roles[name] = Role(keyids=tuple(keyids), threshold=record["threshold"])
        return cls(party=party, version=version, expires=expires, keys=keys, roles=roles)


def sign_trust_document(document: TrustDocument, signers: Sequence[Signer]) -> Envelope:
    """Sign ``document.to_payload()`` as a `TRUST_PAYLOAD_TYPE` envelope with every signer."""
    return sign_envelope(TRUST_PAYLOAD_TYPE, document.to_payload(), signers)


@dataclass(frozen=True)
class TrustedParty:
    """The trust document currently trusted for one party, and the envelope it arrived in.

    Create one with `bootstrap` (or `restore`), then move it forward with `update` / `update_many`; each
    returns a new instance. Keys a new version drops are revoked from then on.
    """

    document: TrustDocument
    envelope: Envelope

    @property
    def party(self) -> str:
        """The party the document belongs to."""
        return self.document.party

    @property
    def version(self) -> int:
        """The version of the trusted document."""
        return self.document.version

    @property
    def expires(self) -> datetime:
        """When the trusted document expires (UTC)."""
        return self.document.expires

    @classmethod
    def bootstrap(cls, envelope: Envelope, now: datetime) -> TrustedParty:
        """Trust a first document obtained out of band (for example, exchanged when the approach is set up).

        1. The envelope's payload type is `TRUST_PAYLOAD_TYPE` and its payload a valid trust document.
        2. A threshold of the document's own ``trust`` keys signed it. The envelope may carry other
           signatures too (those of the previous version's trust keys), up to `signing.dsse.MAX_SIGNATURES`.
        3. The document is unexpired at ``now``.

        The caller must check, out of band, that this is the partner's genuine document (for example by
        comparing its keyids with the partner's published ones): a self-signed document proves only that
        its own keys signed it.
        """
        party = cls._restore(envelope, "bootstrap")
        _check_unexpired(party.document, now)
        return party

    @classmethod
    def restore(cls, envelope: Envelope) -> TrustedParty:
        """Reload a document this process trusted before (for example from its own database).

        Checks steps 1 and 2 of `bootstrap`, but not expiry: a stored document that has expired since can
        still be updated with `update_many`, while `verify` refuses to use it until then.
        """
        return cls._restore(envelope, "restore")

    @classmethod
    def _restore(cls, envelope: Envelope, action: str) -> TrustedParty:
        document = _parse(envelope)
        try:
            # The envelope of a version N > 1 also carries the signatures of version N-1's trust keys, which
            # this document need not list: allow up to the structural cap rather than the role's key count.
            verify_envelope(
                envelope,
                document.keys_for(TRUST_ROLE),
                document.threshold_for(TRUST_ROLE),
                max_signatures=MAX_SIGNATURES,
            )
        except VerificationError as exc:
            reason = (
                "its envelope carries too many signatures"
                if isinstance(exc, TooManySignaturesError)
                else "it is not signed by a threshold of its own trust keys"
            )
            raise type(exc)(
                f"cannot {action} the trust document for {document.party} (version {document.version}): {reason}: {exc}"
            ) from None
        return cls(document=document, envelope=envelope)

    def update(self, envelope: Envelope, now: datetime) -> TrustedParty:
        """Apply the next version of the document and require it to be unexpired at ``now``.

        1. The payload type is `TRUST_PAYLOAD_TYPE` and the payload a valid trust document
           (`TrustDocumentFormatError`).
        2. The party is the same (`TrustError`).
        3. The version is exactly current + 1: lower or equal raises `RollbackError`, higher `TrustError`.
        4. A threshold of the CURRENT document's ``trust`` keys signed it (`VerificationError`).
        5. A threshold of the NEW document's ``trust`` keys signed it (`VerificationError`).
           The envelope carries at most one signature per distinct trust key of the two documents together;
           more raises `TooManySignaturesError` before any signature is checked.
        6. The new document is unexpired at ``now`` (`ExpiredTrustError`).

        The current document may itself have expired: that is how a party that was offline catches up.
        """
        updated = self._apply(envelope)
        _check_unexpired(updated.document, now)
        return updated

    def update_many(self, envelopes: Iterable[Envelope], now: datetime) -> TrustedParty:
        """Apply several consecutive versions one at a time (steps 1-5 of `update` each).

        Only the final document must be unexpired at ``now``; the intermediate ones may have expired. With
        no envelopes, returns ``self`` unchanged.
        """
        current = self
        applied = False
        for envelope in envelopes:
            current = current._apply(envelope)
            applied = True
        if applied:
            _check_unexpired(current.document, now)
        return current

    def verify(self, envelope: Envelope, role: str, now: datetime) -> VerificationResult:
        """Verify ``envelope`` against ``role`` of the current document at ``now``.

        1. The current document is unexpired (`ExpiredTrustError`): apply the partner's newer document.
        2. The role exists (`TrustError`).
        3. A threshold of the role's keys signed the envelope (`VerificationError` subclasses); an envelope
           with more signatures than the role has distinct keys raises `TooManySignaturesError` unchecked.
        """
        _check_unexpired(self.document, now)
        keys = self.document.keys_for(role)
        return verify_envelope(envelope, keys, self.document.threshold_for(role))

    def _apply(self, envelope: Envelope) -> TrustedParty:
        current = self.document
        new = _parse(envelope)
        if new.party != current.party:
            raise TrustError(
                f"the trust document update is for party {new.party!r}, but this is the trust state of "
                f"{current.party!r}; refusing to mix parties"
            )
        if new.version <= current.version:
            raise RollbackError(
                f"the trust document for {current.party} has version {new.version}, but version "
                f"{current.version} is already trusted; refusing to roll back"
            )
        if new.version != current.version + 1:
            raise TrustError(
                f"the trust document for {current.party} jumps from version {current.version} to "
                f"{new.version}; apply versions {current.version + 1} to {new.version - 1} first, in order"
            )
        # The update is signed by the trust keys of both versions: allow one signature per distinct key of
        # either, and no more (`TooManySignaturesError` otherwise, before any signature is checked).
        trust_keys = {k.public_bytes for doc in (current, new) for k in doc.keys_for(TRUST_ROLE)}
        for signer_doc, which in ((current, "current"), (new, "new")):
            try:
                verify_envelope(
                    envelope,
                    signer_doc.keys_for(TRUST_ROLE),
                    signer_doc.threshold_for(TRUST_ROLE),
                    max_signatures=len(trust_keys),
                )
            except VerificationError as exc:
                reason = (
                    f"carries more signatures than the trust keys of versions {current.version} and {new.version} "
                    "together could make"
                    if isinstance(exc, TooManySignaturesError)
                    else f"is not signed by a threshold of the {which} (version {signer_doc.version}) trust keys"
                )
                raise type(exc)(
                    f"the trust document for {current.party} version {new.version} {reason}: {exc}"
                ) from None
        return TrustedParty(document=new, envelope=envelope)


# -- helpers -------------------------------------------------------------------------------------------


def _aware(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise ValueError(f"now must be a timezone-aware datetime (e.g. datetime.now(UTC)), got {now!r}")
    return now


def _check_unexpired(document: TrustDocument, now: datetime) -> None:
    if document.is_expired(now):
        raise ExpiredTrustError(
            f"the trust document for {document.party} (version {document.version}) expired at "
            f"{document.expires.strftime(_EXPIRES_FORMAT)} (now is {_in_utc(now)}); "
            "obtain and apply the party's newer trust document"
        )


def _in_utc(now: datetime) -> str:
    """``now`` in UTC, or as given when UTC is past year 9999 (9999-12-31T23:00:00-05:00 is, and datetime stops)."""
    try:
        return _aware(now).astimezone(UTC).isoformat()
    except OverflowError:
        return now.isoformat()


def _parse(envelope: Envelope) -> TrustDocument:
    if envelope.payload_type != TRUST_PAYLOAD_TYPE:
        raise TrustDocumentFormatError(
            f"the envelope has payload type {envelope.payload_type!r}, not {TRUST_PAYLOAD_TYPE!r}: it is not "
            "a trust document"
        )
    return TrustDocument.from_payload(envelope.payload)


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise TrustDocumentFormatError(f"the trust document has the member {key!r} twice")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise TrustDocumentFormatError(f"the trust document contains the non-JSON number {name}")


def _exact_fields(value: object, expected: frozenset[str], where: str) -> None:
    if not isinstance(value, dict):
        raise TrustDocumentFormatError(f"{where} must be a JSON object")
    missing = sorted(expected - value.keys())
    extra = sorted(value.keys() - expected)
    if missing or extra:
        raise TrustDocumentFormatError(
            f"{where} must have exactly the members {sorted(expected)}; missing {missing}, unexpected {extra}"
        )
