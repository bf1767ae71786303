"""Verifying a DSSE envelope against trusted keys and a threshold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from signing.dsse import Envelope, pae
from signing.errors import InvalidSignatureError, ThresholdError, TooManySignaturesError, UnknownKeyError
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


def verify_envelope(
    envelope: Envelope,
    keys: Sequence[PublicKey],
    threshold: int,
    *,
    max_signatures: int | None = None,
) -> VerificationResult:
    """Verify that at least ``threshold`` distinct trusted ``keys`` signed ``envelope``.

    Steps:

    1. Before any cryptography: refuse an envelope with more signatures than ``max_signatures``
       (`TooManySignaturesError`). By default that is the number of distinct trusted keys (by DER bytes,
       not by record or keyid): each key counts once towards the threshold, so further signatures can only
       be padding. A caller that legitimately expects signatures by other keys too passes a larger cap (a
       trust update carries the old and the new document's trust keys, see `signing.trust`). With no
       trusted keys at all nothing is ever tried, so the cap does not apply and the result is
       `UnknownKeyError`.
    2. Compute ``PAE(envelope.payload_type, envelope.payload)`` once, over the payload bytes as received.
    3. For each signature, use its keyid as a hint (DSSE: it may only narrow the keys to try):

       - a keyid that names trusted keys: check the signature against those keys only, unless one of them
         already counts;
       - an empty keyid: try every distinct trusted key that does not count yet;
       - a non-empty keyid that names no trusted key: do not try it at all. It cannot be from a trusted
         key under its own keyid, and trying it would only cost work. Such a signature never makes an
         envelope fail that its other signatures make pass.

       The algorithm is the trusted key record's, never anything in the envelope. Each signature is
       checked against at most the number of distinct trusted keys, so there are at most
       ``len(envelope.signatures) * distinct keys`` key verifications; with the default cap, at most the
       square of the number of distinct keys.
    4. Count distinct public keys (by their DER bytes), never keyid strings: one key that signs twice, even
       under two keyid spellings, counts once.
    5. If at least ``threshold`` keys verified, return the result. Otherwise raise:
       `InvalidSignatureError` if a signature names a trusted key but does not verify;
       `UnknownKeyError` if nothing verified and no signature names a trusted key;
       `ThresholdError` if some verified but from fewer than ``threshold`` distinct keys.

    ``threshold`` must be at least 1 and ``max_signatures``, when given, at least 0 (`ValueError`
    otherwise): a threshold of 0 would accept anything.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, got {threshold}")
    if max_signatures is not None and max_signatures < 0:
        raise ValueError(f"max_signatures must be at least 0, got {max_signatures}")

    distinct: dict[bytes, PublicKey] = {}  # public_bytes -> the first trusted record of that key
    by_keyid: dict[str, dict[bytes, PublicKey]] = {}  # keyid -> the distinct keys trusted under it
    for key in keys:
        distinct.setdefault(key.public_bytes, key)
        by_keyid.setdefault(key.keyid, {}).setdefault(key.public_bytes, key)

    count = len(envelope.signatures)
    limit = len(distinct) if max_signatures is None else max_signatures
    if count > limit and distinct:
        allowed = (
            f"the {len(distinct)} distinct trusted key(s) it is verified against"
            if max_signatures is None
            else f"the {limit} accepted here ({len(distinct)} distinct trusted key(s), threshold {threshold})"
        )
        raise TooManySignaturesError(
            f"the envelope (payload type {envelope.payload_type!r}) carries {count} signatures, more than "
            f"{allowed}; each key counts at most once, so the extra signatures can only be padding. Refused "
            "before checking any signature: the sender must send at most one signature per trusted key."
        )

    data = pae(envelope.payload_type, envelope.payload)
    verified: dict[bytes, str] = {}  # public_bytes -> trusted keyid
    failed_named: list[str] = []
    unknown_hints = 0
    for signature in envelope.signatures:
        if not signature.keyid:
            # No hint: try each trusted key that does not count yet.
            for public_bytes, key in distinct.items():
                if public_bytes not in verified and key.verify(signature.sig, data):
                    verified[public_bytes] = key.keyid
                    break
            continue
        named = by_keyid.get(signature.keyid)
        if named is None:
            unknown_hints += 1  # names no trusted key: not tried (see step 3)
            continue
        if any(public_bytes in verified for public_bytes in named):
            continue  # that key already counts; another signature by it adds nothing
        for public_bytes, key in named.items():
            if key.verify(signature.sig, data):
                verified[public_bytes] = key.keyid
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
        f"{len(distinct)} trusted key(s), threshold {threshold}"
    )
    untried = (
        f" {unknown_hints} signature(s) carry a keyid that names no trusted key and were not tried: a trusted "
        "key's signature must carry that key's keyid, or none."
        if unknown_hints
        else ""
    )
    if failed_named:
        names = ", ".join(sorted(set(failed_named)))
        raise InvalidSignatureError(
            f"the signature(s) by trusted key(s) {names} do not verify ({context}); the payload or payload "
            f"type was altered after signing, or the signature is corrupt. Reject the message.{untried}"
        )
    if not verified:
        hints = ", ".join(repr(s.keyid) for s in envelope.signatures) or "none"
        trusted = ", ".join(sorted(by_keyid)) or "none"
        raise UnknownKeyError(
            f"no signature is from a trusted key ({context}); signature keyids: {hints}; trusted keyids: "
            f"{trusted}. The sender may use a key this party does not (or no longer) trust: check that its "
            f"current trust document is applied.{untried}"
        )
    raise ThresholdError(
        f"only {len(verified)} distinct trusted key(s) signed ({', '.join(verified.values())}), but "
        f"{threshold} are required ({context}). Collect signatures from more of the trusted keys.{untried}"
    )
