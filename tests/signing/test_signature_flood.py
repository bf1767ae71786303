"""Defect 10, the signature flood: caps on signatures, keyids and signature sizes, and bounded verification.

An envelope of 7,700 Ed25519 signatures in 1 MiB kept the event loop busy for 1.06 s in `verify_envelope`.
Now an envelope carries at most `MAX_SIGNATURES`, and `verify_envelope` refuses more signatures than the
distinct keys it verifies against before it checks any; each signature is tried against at most the keys its
hint allows, so there are at most keys² key verifications. These tests count the verifications with a
wrapper key instead of timing them.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signing import (
    MAX_KEYID_LENGTH,
    MAX_SIGNATURE_SIZE,
    MAX_SIGNATURES,
    CryptoSigner,
    Envelope,
    EnvelopeFormatError,
    PublicKey,
    Signature,
    ThresholdError,
    TooManySignaturesError,
    TrustedParty,
    UnknownKeyError,
    VerificationError,
    pae,
    sign_envelope,
    sign_trust_document,
    verify_envelope,
)
from tests.signing.fixtures import NOW, TRANSFER_TYPE, fixed_public_key, fixed_signer, make_document

PAYLOAD = b'{"transfer":"CA0001-CHN01-CHN-1234-2025","quantity":500}'
NAMES = ("ed25519-a", "ed25519-b", "ed25519-c", "p256-a")
SIGNERS = {name: fixed_signer(name) for name in NAMES}
CRYPTO = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class CountingKey(PublicKey):
    """A trusted key record that records every signature it is asked to verify."""

    calls: list[bytes] = field(default_factory=list, compare=False, repr=False)

    def verify(self, signature: bytes, data: bytes) -> bool:
        self.calls.append(signature)
        return super().verify(signature, data)


def counting(key: PublicKey) -> CountingKey:
    return CountingKey(key.keyid, key.algorithm, key.public_bytes)


def counting_keys(names: list[str]) -> list[CountingKey]:
    return [counting(fixed_public_key(name)) for name in names]


def calls(keys: list[CountingKey]) -> int:
    return sum(len(key.calls) for key in keys)


def signed(names: list[str], payload: bytes = PAYLOAD) -> tuple[Signature, ...]:
    return sign_envelope(TRANSFER_TYPE, payload, [SIGNERS[n] for n in names]).signatures


# -- verify_envelope: more signatures than trusted keys ------------------------------------------------------

# What one signature in a drawn envelope looks like: a valid signature or junk, under a hint that names a
# trusted key, names none, or is empty.
hints = st.one_of(st.just(""), st.sampled_from(NAMES), st.text(max_size=20))
signature_specs = st.tuples(hints, st.sampled_from(NAMES) | st.binary(min_size=1, max_size=80))


def build(specs: list[tuple[str, str | bytes]]) -> Envelope:
    keyids = {name: fixed_public_key(name).keyid for name in NAMES}
    signatures = []
    for hint, made_by in specs:
        sig = SIGNERS[made_by].sign(pae(TRANSFER_TYPE, PAYLOAD)) if isinstance(made_by, str) else made_by
        signatures.append(Signature(keyids.get(hint, hint), sig))
    return Envelope(PAYLOAD, TRANSFER_TYPE, tuple(signatures))


@CRYPTO
@given(st.data(), st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True), st.integers(1, 4))
def test_signature_flood_more_signatures_than_keys_refused_before_any_verify(
    data: st.DataObject, names: list[str], threshold: int
) -> None:
    keys = counting_keys(names)
    count = data.draw(st.integers(len(names) + 1, MAX_SIGNATURES), label="signatures")
    envelope = build(data.draw(st.lists(signature_specs, min_size=count, max_size=count)))
    with pytest.raises(TooManySignaturesError) as info:
        verify_envelope(envelope, keys, threshold)
    assert calls(keys) == 0
    message = str(info.value)
    assert f"carries {count} signatures, more than the {len(names)} distinct trusted key(s)" in message
    assert "at most one signature per trusted key" in message


@CRYPTO
@given(st.data(), st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True), st.integers(1, 4))
def test_signature_flood_verifications_are_bounded_and_follow_hints(
    data: st.DataObject, names: list[str], threshold: int
) -> None:
    keys = counting_keys(names)
    envelope = build(data.draw(st.lists(signature_specs, max_size=len(names)), label="signatures"))
    try:
        result = verify_envelope(envelope, keys, threshold)
    except TooManySignaturesError:
        raise AssertionError("an envelope within the cap was refused as a flood") from None
    except VerificationError:
        pass
    else:
        assert len(set(result.verified_keyids)) == len(result.verified_keyids) >= threshold
    assert calls(keys) <= len(envelope.signatures) * len(keys) <= len(keys) ** 2
    # A key is only asked about a signature whose hint names it or is empty.
    for key in keys:
        for sig in key.calls:
            assert any(s.sig == sig and s.keyid in ("", key.keyid) for s in envelope.signatures)


def test_signature_flood_worst_case_is_keys_squared() -> None:
    # Every signature without a hint, none valid: each is tried against every key, and no more.
    keys = counting_keys(list(NAMES))
    junk = Envelope(PAYLOAD, TRANSFER_TYPE, tuple(Signature("", bytes([i]) * 64) for i in range(len(keys))))
    with pytest.raises(UnknownKeyError):
        verify_envelope(junk, keys, threshold=1)
    assert calls(keys) == len(keys) ** 2
    # One more signature and nothing is tried at all.
    for key in keys:
        key.calls.clear()
    flood = Envelope(PAYLOAD, TRANSFER_TYPE, (*junk.signatures, Signature("", b"\x01" * 64)))
    with pytest.raises(TooManySignaturesError, match="carries 5 signatures, more than the 4 distinct"):
        verify_envelope(flood, keys, threshold=1)
    assert calls(keys) == 0


def test_signature_flood_valid_signatures_do_not_escape_the_cap() -> None:
    # Even when every signature is genuine, one more than the keys is refused: the cap is about work.
    keys = counting_keys(["ed25519-a", "ed25519-b", "ed25519-c"])
    envelope = Envelope(PAYLOAD, TRANSFER_TYPE, signed(["ed25519-a", "ed25519-b", "ed25519-c", "ed25519-a"]))
    with pytest.raises(TooManySignaturesError):
        verify_envelope(envelope, keys, threshold=1)
    assert calls(keys) == 0


def test_signature_flood_error_is_a_verification_error() -> None:
    # Existing callers that catch VerificationError (the gateway maps it to SIGNATURE_INVALID) still do.
    assert issubclass(TooManySignaturesError, VerificationError)


def test_signature_flood_unknown_hint_is_not_tried() -> None:
    keys = counting_keys(["ed25519-a", "ed25519-b"])
    (genuine,) = signed(["ed25519-a"])
    envelope = Envelope(PAYLOAD, TRANSFER_TYPE, (Signature("not-a-trusted-keyid", genuine.sig),))
    with pytest.raises(UnknownKeyError, match="names no trusted key and were not tried"):
        verify_envelope(envelope, keys, threshold=1)
    assert calls(keys) == 0
    # The same signature without a hint is tried, and verifies.
    unhinted = Envelope(PAYLOAD, TRANSFER_TYPE, (Signature("", genuine.sig),))
    assert verify_envelope(unhinted, keys, threshold=1).verified_keyids == (keys[0].keyid,)


def test_signature_flood_hinted_signature_tried_against_its_key_only() -> None:
    keys = counting_keys(["ed25519-a", "ed25519-b", "ed25519-c"])
    (by_a,) = signed(["ed25519-a"])
    # Signed by a, but labelled as b: only b is asked, once.
    envelope = Envelope(PAYLOAD, TRANSFER_TYPE, (Signature(keys[1].keyid, by_a.sig),))
    with pytest.raises(VerificationError):
        verify_envelope(envelope, keys, threshold=1)
    assert [len(k.calls) for k in keys] == [0, 1, 0]


def test_signature_flood_two_of_three_still_works() -> None:
    names = ["ed25519-a", "p256-a", "ed25519-c"]
    keys = counting_keys(names)
    for signers in (names[:2], names[1:], names):
        envelope = Envelope(PAYLOAD, TRANSFER_TYPE, signed(signers))
        result = verify_envelope(envelope, keys, threshold=2)
        assert result.verified_keyids == tuple(fixed_public_key(n).keyid for n in signers)
        # Without hints, too.
        bare = Envelope(PAYLOAD, TRANSFER_TYPE, tuple(Signature("", s.sig) for s in envelope.signatures))
        assert len(verify_envelope(bare, keys, threshold=2).verified_keyids) == len(signers)
    with pytest.raises(ThresholdError):
        verify_envelope(Envelope(PAYLOAD, TRANSFER_TYPE, signed(names[:1])), keys, threshold=2)
    assert calls(keys) <= 9 * 7  # seven verifications, each at most keys² = 9


def test_signature_flood_explicit_cap() -> None:
    keys = counting_keys(["ed25519-a"])
    envelope = Envelope(PAYLOAD, TRANSFER_TYPE, signed(["ed25519-a", "ed25519-b"]))
    assert verify_envelope(envelope, keys, 1, max_signatures=2).verified_keyids == (keys[0].keyid,)
    with pytest.raises(TooManySignaturesError, match="more than the 1 accepted here"):
        verify_envelope(envelope, keys, 1, max_signatures=1)
    with pytest.raises(ValueError, match="max_signatures must be at least 0"):
        verify_envelope(envelope, keys, 1, max_signatures=-1)


# -- the structural caps of an envelope ------------------------------------------------------------------------


def _json(signatures: list[object]) -> bytes:
    document = {"payload": base64.b64encode(PAYLOAD).decode(), "payloadType": TRANSFER_TYPE, "signatures": signatures}
    return json.dumps(document).encode()


def test_signature_flood_the_reported_envelope_is_refused_unread() -> None:
    # The reported flood: 7,700 Ed25519 signatures in about 1 MiB of JSON.
    (genuine,) = signed(["ed25519-a"])
    entry = {"keyid": genuine.keyid, "sig": base64.b64encode(genuine.sig).decode()}
    data = _json([entry] * 7700)
    assert len(data) > 1_000_000
    with pytest.raises(EnvelopeFormatError, match=f"carries 7700 signatures, more than the {MAX_SIGNATURES}"):
        Envelope.from_json(data)
    # The count is checked before any signature is decoded: junk entries give the same answer.
    with pytest.raises(EnvelopeFormatError, match="carries 17 signatures"):
        Envelope.from_json(_json([1] * (MAX_SIGNATURES + 1)))


def test_signature_flood_envelope_cap_is_sixteen() -> None:
    assert MAX_SIGNATURES == 16
    signatures = tuple(Signature(f"k{i}", bytes([i + 1]) * 64) for i in range(MAX_SIGNATURES + 1))
    at_cap = Envelope(PAYLOAD, TRANSFER_TYPE, signatures[:MAX_SIGNATURES])
    assert Envelope.from_json(at_cap.to_json()) == at_cap
    # Built directly (as the protobuf path does) or parsed from JSON, one more is refused.
    with pytest.raises(EnvelopeFormatError, match="carries 17 signatures, more than the 16"):
        Envelope(PAYLOAD, TRANSFER_TYPE, signatures)
    with pytest.raises(EnvelopeFormatError, match="carries 17 signatures, more than the 16"):
        Envelope(PAYLOAD, TRANSFER_TYPE, list(signatures))  # type: ignore[arg-type]
    entries: list[object] = [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode()} for s in signatures]
    with pytest.raises(EnvelopeFormatError, match="carries 17 signatures"):
        Envelope.from_json(_json(entries))


def test_signature_flood_keyid_length_cap() -> None:
    assert MAX_KEYID_LENGTH == 256
    sig = b"\x01" * 64
    assert Signature("k" * MAX_KEYID_LENGTH, sig).keyid == "k" * 256
    with pytest.raises(EnvelopeFormatError, match="keyid of 257 characters, more than the 256 allowed"):
        Signature("k" * (MAX_KEYID_LENGTH + 1), sig)
    entry = {"keyid": "k" * (MAX_KEYID_LENGTH + 1), "sig": base64.b64encode(sig).decode()}
    with pytest.raises(EnvelopeFormatError, match="signature 0 has a keyid of 257 characters"):
        Envelope.from_json(_json([entry]))


def test_signature_flood_signature_size_cap() -> None:
    assert MAX_SIGNATURE_SIZE == 512
    assert len(Signature("k", b"\x01" * MAX_SIGNATURE_SIZE).sig) == 512
    with pytest.raises(EnvelopeFormatError, match="signature of 513 bytes, more than the 512 allowed"):
        Signature("k", b"\x01" * (MAX_SIGNATURE_SIZE + 1))
    entry = {"keyid": "k", "sig": base64.b64encode(b"\x01" * (MAX_SIGNATURE_SIZE + 1)).decode()}
    with pytest.raises(EnvelopeFormatError, match="signature 0 has a signature of 513 bytes"):
        Envelope.from_json(_json([entry]))
    # Real signatures are far below the cap: Ed25519 64 bytes, DER ECDSA P-256 at most 72.
    for name in NAMES:
        assert len(SIGNERS[name].sign(b"x")) <= 72


# -- trust documents: rotation carries the old and the new keys' signatures ------------------------------------


def test_signature_flood_rotation_signed_by_old_and_new_keys_still_applies_and_restores() -> None:
    old = [CryptoSigner.generate()]
    new = [CryptoSigner.generate()]
    v1 = make_document(version=1, trust=old)
    v2 = make_document(version=2, trust=new, expires=v1.expires)
    party = TrustedParty.bootstrap(sign_trust_document(v1, old), NOW)
    # Two signatures, each document's trust role has one key: the update allows one per key of both.
    envelope = sign_trust_document(v2, [*old, *new])
    updated = party.update(envelope, NOW)
    assert updated.version == 2
    # A stored version-2 envelope carries version 1's signature too; it still restores and bootstraps.
    assert TrustedParty.restore(envelope).document == v2
    assert TrustedParty.bootstrap(envelope, NOW + timedelta(days=1)).document == v2
    # But not a signature more than the keys of both versions.
    padded = Envelope(envelope.payload, envelope.payload_type, (*envelope.signatures, envelope.signatures[0]))
    with pytest.raises(TooManySignaturesError, match="carries more signatures than the trust keys of versions 1 and 2"):
        party.update(padded, NOW)
