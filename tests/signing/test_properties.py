"""Property tests (hypothesis) for PAE, the JSON form, and sign-then-verify."""

from __future__ import annotations

import base64
import contextlib
import json

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from signing import (
    Envelope,
    EnvelopeFormatError,
    Signature,
    TooManySignaturesError,
    VerificationError,
    pae,
    sign_envelope,
    verify_envelope,
)
from tests.signing.fixtures import fixed_public_key, fixed_signer

payload_types = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=40)
payloads = st.binary(max_size=300)
keyids = st.text(max_size=20)
signatures = st.builds(Signature, keyid=keyids, sig=st.binary(min_size=1, max_size=80))
envelopes = st.builds(
    Envelope,
    payload=payloads,
    payload_type=payload_types,
    signatures=st.lists(signatures, max_size=4).map(tuple),
)
key_names = st.sampled_from(["ed25519-a", "ed25519-b", "p256-a"])

SIGNERS = {name: fixed_signer(name) for name in ("ed25519-a", "ed25519-b", "ed25519-c", "p256-a")}
KEYS = {name: fixed_public_key(name) for name in SIGNERS}
CRYPTO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@given(payload_types, payloads, payload_types, payloads)
def test_pae_is_injective(type1: str, payload1: bytes, type2: str, payload2: bytes) -> None:
    assume((type1, payload1) != (type2, payload2))
    assert pae(type1, payload1) != pae(type2, payload2)


@given(payload_types, payloads)
def test_pae_can_be_parsed_back(payload_type: str, payload: bytes) -> None:
    encoded = pae(payload_type, payload)
    prefix, type_length, rest = encoded.split(b" ", 2)
    assert prefix == b"DSSEv1"
    parsed_type, rest = rest[: int(type_length)], rest[int(type_length) :]
    assert rest[:1] == b" "
    payload_length, parsed_payload = rest[1:].split(b" ", 1)
    assert (parsed_type.decode("ascii"), parsed_payload) == (payload_type, payload)
    assert int(payload_length) == len(payload)


@given(envelopes)
def test_json_round_trip(envelope: Envelope) -> None:
    assert Envelope.from_json(envelope.to_json()) == envelope


@given(envelopes, st.booleans(), st.booleans())
def test_json_round_trip_in_any_base64_form(envelope: Envelope, urlsafe: bool, padded: bool) -> None:
    def b64(data: bytes) -> str:
        text = (base64.urlsafe_b64encode if urlsafe else base64.standard_b64encode)(data).decode()
        return text if padded else text.rstrip("=")

    document = {
        "payload": b64(envelope.payload),
        "payloadType": envelope.payload_type,
        "signatures": [{"keyid": s.keyid, "sig": b64(s.sig)} for s in envelope.signatures],
    }
    assert Envelope.from_json(json.dumps(document).encode()) == envelope


@given(st.binary(max_size=200))
def test_from_json_raises_only_envelope_format_error(data: bytes) -> None:
    with contextlib.suppress(EnvelopeFormatError):
        Envelope.from_json(data)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
        max_leaves=10,
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "payload": st.one_of(st.text(max_size=12), st.integers()),
            "payloadType": st.one_of(st.text(max_size=12), st.none()),
            "signatures": st.lists(
                st.fixed_dictionaries(
                    {}, optional={"sig": st.text(max_size=12) | st.integers(), "keyid": st.text(max_size=5) | st.none()}
                )
                | st.text(max_size=3),
                max_size=3,
            ),
        },
    ),
)
def test_from_json_on_arbitrary_json_raises_only_envelope_format_error(junk: object, shaped: dict[str, object]) -> None:
    for document in (junk, shaped):
        with contextlib.suppress(EnvelopeFormatError):
            Envelope.from_json(json.dumps(document).encode())


@CRYPTO
@given(key_names, payload_types, payloads)
def test_sign_then_verify(name: str, payload_type: str, payload: bytes) -> None:
    envelope = sign_envelope(payload_type, payload, [SIGNERS[name]])
    result = verify_envelope(Envelope.from_json(envelope.to_json()), [KEYS[name]], 1)
    assert (result.payload_type, result.payload) == (payload_type, payload)
    assert result.verified_keyids == (KEYS[name].keyid,)


@CRYPTO
@given(key_names, payload_types, payloads.filter(bool), st.data())
def test_any_single_byte_tamper_of_payload_fails(
    name: str, payload_type: str, payload: bytes, data: st.DataObject
) -> None:
    envelope = sign_envelope(payload_type, payload, [SIGNERS[name]])
    index = data.draw(st.integers(0, len(payload) - 1))
    delta = data.draw(st.integers(1, 255))
    tampered = bytearray(payload)
    tampered[index] ^= delta
    forged = Envelope(bytes(tampered), payload_type, envelope.signatures)
    try:
        verify_envelope(forged, [KEYS[name]], 1)
    except VerificationError:
        return
    raise AssertionError("a tampered payload verified")


@CRYPTO
@given(key_names, payload_types.filter(bool), payloads, st.data())
def test_any_single_byte_tamper_of_payload_type_fails(
    name: str, payload_type: str, payload: bytes, data: st.DataObject
) -> None:
    envelope = sign_envelope(payload_type, payload, [SIGNERS[name]])
    index = data.draw(st.integers(0, len(payload_type) - 1))
    replacement = data.draw(
        st.characters(min_codepoint=0, max_codepoint=127).filter(lambda c: c != payload_type[index])
    )
    forged_type = payload_type[:index] + replacement + payload_type[index + 1 :]
    forged = Envelope(payload, forged_type, envelope.signatures)
    try:
        verify_envelope(forged, [KEYS[name]], 1)
    except VerificationError:
        return
    raise AssertionError("a tampered payload type verified")


@CRYPTO
@given(key_names, payloads, st.data())
def test_any_single_byte_tamper_of_signature_fails(name: str, payload: bytes, data: st.DataObject) -> None:
    envelope = sign_envelope("t", payload, [SIGNERS[name]])
    sig = envelope.signatures[0].sig
    # ECDSA signatures are randomized and vary in length: draw the position independently of it.
    index = data.draw(st.integers(0, 2**16)) % len(sig)
    tampered = bytearray(sig)
    tampered[index] ^= data.draw(st.integers(1, 255))
    forged = Envelope(payload, "t", (Signature(envelope.signatures[0].keyid, bytes(tampered)),))
    try:
        verify_envelope(forged, [KEYS[name]], 1)
    except VerificationError:
        return
    raise AssertionError("a tampered signature verified")


@CRYPTO
@given(key_names, payload_types, payloads, st.data())
def test_any_single_byte_tamper_of_json_is_caught_or_harmless(
    name: str, payload_type: str, payload: bytes, data: st.DataObject
) -> None:
    """Changing one byte of the JSON envelope either makes it malformed, or fails verification, or changes
    nothing that is signed (a keyid hint, an unused base64 bit): it never makes other content verify."""
    original = sign_envelope(payload_type, payload, [SIGNERS[name]])
    encoded = bytearray(original.to_json())
    index = data.draw(st.integers(0, 2**16)) % len(encoded)
    encoded[index] ^= data.draw(st.integers(1, 255))
    try:
        envelope = Envelope.from_json(bytes(encoded))
        result = verify_envelope(envelope, [KEYS[name]], 1)
    except (EnvelopeFormatError, VerificationError):
        return
    assert (result.payload_type, result.payload) == (payload_type, payload)


@CRYPTO
@given(st.lists(st.sampled_from(sorted(SIGNERS)), min_size=1, max_size=6), st.integers(1, 4))
def test_threshold_counts_distinct_keys(names: list[str], threshold: int) -> None:
    envelope = sign_envelope("t", b"payload", [SIGNERS[n] for n in names])
    distinct = len(set(names))
    if len(names) > len(KEYS):
        # More signatures than trusted keys: refused before any is checked (defect 10).
        try:
            verify_envelope(envelope, list(KEYS.values()), threshold)
        except TooManySignaturesError:
            return
        raise AssertionError("an envelope with more signatures than trusted keys was checked")
    try:
        result = verify_envelope(envelope, list(KEYS.values()), threshold)
    except VerificationError:
        assert distinct < threshold
        return
    assert distinct >= threshold
    assert len(result.verified_keyids) == distinct
