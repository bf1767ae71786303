"""Verifying a DSSE envelope against trusted keys and a threshold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from signing.dsse import Envelope, pae
from signing.errors import InvalidSignatureError, ThresholdError, UnknownKeyError
from signing.keys import PublicKey

__all__ = ["VerificationResult", "verify_envelope"]


@dataclass(frozen=True)
class VerificationResult:
    """A verified envelope's payload type and payload, and the keyids of the trusted keys that signed it.

    ``verified_keyids`` holds one keyid (the trusted record's, not the signature's hint) per distinct
    public key whose signature verified, in the order of the signatures.
    """

    payload_type: str
    payload: bytes
    verified_keyids: tuple[str, ...]


def verify_envelope(envelope: Envelope, keys: Sequence[PublicKey], threshold: int) -> VerificationResult:
    """Verify that at least ``threshold`` distinct trusted ``keys`` signed ``envelope``.

    Steps:

    1. Compute ``PAE(envelope.payload_type, envelope.payload)`` once, over the payload bytes as received.
    2. For each signature, use its keyid as a hint: if it names trusted keys, check the signature against
       those keys only; if the keyid is empty or names no trusted key, try every trusted key not yet
       counted. The algorithm is the trusted key record's, never anything in the envelope.
    3. Count distinct public keys (by their DER bytes), never keyid strings: one key that signs twice, even
       under two keyid spellings, counts once.
    4. If at least ``threshold`` keys verified, return the result. Otherwise raise:
       `InvalidSignatureError` if a signature names a trusted key but does not verify;
       `UnknownKeyError` if nothing verified and no signature names a trusted key;
       `ThresholdError` if some verified but from fewer than ``threshold`` distinct keys.

    ``threshold`` must be at least 1 (`ValueError` otherwise): a threshold of 0 would accept anything.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, got {threshold}")
    data = pae(envelope.payload_type, envelope.payload)

    by_keyid: dict[str, list[PublicKey]] = {}
    for key in keys:
        by_keyid.setdefault(key.keyid, []).append(key)

    verified: dict[bytes, str] = {}  # public_bytes -> trusted keyid
    failed_named: list[str] = []
    for signature in envelope.signatures:
        named = by_keyid.get(signature.keyid) if signature.keyid else None
        if named is None:
            # No usable hint: try each trusted key that does not count yet.
            for key in keys:
                if key.public_bytes not in verified and key.verify(signature.sig, data):
                    verified[key.public_bytes] = key.keyid
                    break
            continue
        if any(key.public_bytes in verified for key in named):
            continue  # that key already counts; another signature by it adds nothing
        for key in named:
            if key.verify(signature.sig, data):
                verified[key.public_bytes] = key.keyid
                break
        else:
            failed_named.append(signature.keyid)

    if len(verified) >= threshold:
        return VerificationResult(
            payload_type=envelope.payload_type,
            payload=envelope.payload,
            verified_keyids=tuple(verified.values()),
        )

    context = (
        f"payload type {envelope.payload_type!r}, {len(envelope.signatures)} signature(s), "
        f"{len({k.public_bytes for k in keys})} trusted key(s), threshold {threshold}"
    )
    if failed_named:
        names = ", ".join(sorted(set(failed_named)))
        raise InvalidSignatureError(
            f"the signature(s) by trusted key(s) {names} do not verify ({context}); the payload or payload "
            f"type was altered after signing, or the signature is corrupt. Reject the message."
        )
    if not verified:
        hints = ", ".join(repr(s.keyid) for s in envelope.signatures) or "none"
        trusted = ", ".join(sorted(by_keyid)) or "none"
        raise UnknownKeyError(
            f"no signature is from a trusted key ({context}); signature keyids: {hints}; trusted keyids: "
            f"{trusted}. The sender may use a key this party does not (or no longer) trust: check that its "
            "current trust document is applied."
        )
    raise ThresholdError(
        f"only {len(verified)} distinct trusted key(s) signed ({', '.join(verified.values())}), but "
        f"{threshold} are required ({context}). Collect signatures from more of the trusted keys."
    )
