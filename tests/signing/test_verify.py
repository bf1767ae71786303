"""verify_envelope: keyid hints, thresholds over distinct keys, and the three kinds of failure."""

from __future__ import annotations

import pytest

from signing import (
    Algorithm,
    CryptoSigner,
    Envelope,
    InvalidSignatureError,
    PublicKey,
    Signature,
    ThresholdError,
    TooManySignaturesError,
    UnknownKeyError,
    VerificationError,
    sign_envelope,
    verify_envelope,
)
from signing.errors import SigningError
from tests.signing.fixtures import TRANSFER_TYPE

PAYLOAD = b'{"transfer":"CA0001-CHN01-CHN-1234-2025","quantity":500}'


@pytest.fixture(scope="module")
def officers() -> tuple[CryptoSigner, CryptoSigner, CryptoSigner]:
    return (
        CryptoSigner.generate(keyid="officer-a"),
        CryptoSigner.generate(Algorithm.ECDSA_P256_SHA256, keyid="officer-b"),
        CryptoSigner.generate(keyid="officer-c"),
    )


def _keys(*signers: CryptoSigner) -> list[PublicKey]:
    return [s.public_key for s in signers]


def _with_keyids(envelope: Envelope, *keyids: str) -> Envelope:
    signatures = tuple(Signature(k, s.sig) for k, s in zip(keyids, envelope.signatures, strict=True))
    return Envelope(envelope.payload, envelope.payload_type, signatures)


def test_errors_are_verification_errors() -> None:
    for error in (UnknownKeyError, InvalidSignatureError, ThresholdError, TooManySignaturesError):
        assert issubclass(error, VerificationError)
        assert issubclass(error, SigningError)


def test_two_of_three_met(officers: tuple[CryptoSigner, ...]) -> None:
    a, b, c = officers
    envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [a, b])
    result = verify_envelope(envelope, _keys(a, b, c), threshold=2)
    assert result.verified_keyids == ("officer-a", "officer-b")
    assert result.payload == PAYLOAD
    assert result.payload_type == TRANSFER_TYPE


def test_three_of_three_and_order_independent(officers: tuple[CryptoSigner, ...]) -> None:
    a, b, c = officers
    envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [c, a, b])
    assert verify_envelope(envelope, _keys(a, b, c), threshold=3).verified_keyids == (
        "officer-c",
        "officer-a",
        "officer-b",
    )


def test_one_of_three_does_not_meet_two(officers: tuple[CryptoSigner, ...]) -> None:
    a, b, c = officers
    envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [a])
    with pytest.raises(ThresholdError, match="only 1 distinct trusted key\\(s\\) signed \\(officer-a\\), but 2"):
        verify_envelope(envelope, _keys(a, b, c), threshold=2)


def test_one_key_signing_twice_counts_once(officers: tuple[CryptoSigner, ...]) -> None:
    a, b, c = officers
    envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [a, a])
    with pytest.raises(ThresholdError):
        verify_envelope(envelope, _keys(a, b, c), threshold=2)


@pytest.mark.parametrize("second_keyid", ["OFFICER-A", "", "alias-of-a", "officer-a-2"])
def test_one_key_under_two_keyid_spellings_counts_once(officers: tuple[CryptoSigner, ...], second_keyid: str) -> None:
    a, b, c = officers
    envelope = _with_keyids(sign_envelope(TRANSFER_TYPE, PAYLOAD, [a, a]), "officer-a", second_keyid)
    keys = _keys(a, b, c)
    # The same public key also trusted under a second keyid: still one key.
    keys.append(PublicKey("officer-a-2", a.public_key.algorithm, a.public_key.public_bytes))
    with pytest.raises(ThresholdError):
        verify_envelope(envelope, keys, threshold=2)
    assert verify_envelope(envelope, keys, threshold=1).verified_keyids == ("officer-a",)


def test_duplicate_trusted_records_do_not_inflate(officers: tuple[CryptoSigner, ...]) -> None:
    a, b, _c = officers
    alias = PublicKey("alias", a.public_key.algorithm, a.public_key.public_bytes)
    # One key signs twice, each time under one of its two trusted records: still one key.
    envelope = _with_keyids(sign_envelope(TRANSFER_TYPE, PAYLOAD, [a, a]), "officer-a", "alias")
    with pytest.raises(ThresholdError):
        verify_envelope(envelope, [a.public_key, alias, b.public_key], threshold=2)
    # Two records of one key are one key for the signature cap too: two signatures are one too many.
    with pytest.raises(TooManySignaturesError, match="carries 2 signatures, more than the 1 distinct"):
        verify_envelope(envelope, [a.public_key, alias], threshold=1)


def test_unknown_key(officers: tuple[CryptoSigner, ...]) -> None:
    a, b, c = officers
    stranger = CryptoSigner.generate(keyid="stranger")
    envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [stranger])
    with pytest.raises(UnknownKeyError, match=r"no signature is from a trusted key.*'stranger'"):
        verify_envelope(envelope, _keys(a, b, c), threshold=1)


def test_unknown_key_without_keyid(officers: tuple[CryptoSigner, ...]) -> None:
    a, b, c = officers
    envelope = _with_keyids(sign_envelope(TRANSFER_TYPE, PAYLOAD, [CryptoSigner.generate()]), "")
    with pytest.raises(UnknownKeyError):
        verify_envelope(envelope, _keys(a, b, c), threshold=1)


def test_no_signatures(officers: tuple[CryptoSigner, ...]) -> None:
    with pytest.raises(UnknownKeyError, match="0 signature"):
        verify_envelope(Envelope(PAYLOAD, TRANSFER_TYPE, ()), _keys(*officers), threshold=1)


def test_no_trusted_keys(officers: tuple[CryptoSigner, ...]) -> None:
    envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [officers[0]])
    with pytest.raises(UnknownKeyError, match="trusted keyids: none"):
        verify_envelope(envelope, [], threshold=1)


def test_invalid_signature_by_named_key(officers: tuple[CryptoSigner, ...]) -> None:
    a, b, c = officers
    envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [a])
    tampered = Envelope(PAYLOAD + b" ", TRANSFER_TYPE, envelope.signatures)
    with pytest.raises(InvalidSignatureError, match="officer-a do not verify"):
        verify_envelope(tampered, _keys(a, b, c), threshold=1)


def test_invalid_beats_threshold_error(officers: tuple[CryptoSigner, ...]) -> None:
    a, b, c = officers
    good = sign_envelope(TRANSFER_TYPE, PAYLOAD, [a]).signatures[0]
    bad = Signature("officer-b", b"\x30\x06\x02\x01\x01\x02\x01\x01")
    envelope = Envelope(PAYLOAD, TRANSFER_TYPE, (good, bad))
    with pytest.raises(InvalidSignatureError, match="officer-b"):
        verify_envelope(envelope, _keys(a, b, c), threshold=2)
    # ...but an invalid extra signature does not spoil a met threshold.
    assert verify_envelope(envelope, _keys(a, b, c), threshold=1).verified_keyids == ("officer-a",)


def test_wrong_keyid_hint_is_not_a_trust_decision(officers: tuple[CryptoSigner, ...]) -> None:
    a, b, c = officers
    # Signed by a, but labelled as b: the hint selects b, which does not verify.
    envelope = _with_keyids(sign_envelope(TRANSFER_TYPE, PAYLOAD, [a]), "officer-b")
    with pytest.raises(InvalidSignatureError):
        verify_envelope(envelope, _keys(a, b, c), threshold=1)
    # An empty hint: every trusted key is tried.
    relabelled = _with_keyids(envelope, "")
    assert verify_envelope(relabelled, _keys(a, b, c), threshold=1).verified_keyids == ("officer-a",)
    # A hint that names no trusted key narrows the keys to try to none (DSSE allows a verifier to filter
    # by keyid): the signature is not tried. The hint can make a signature fail, never make one count.
    relabelled = _with_keyids(envelope, "some-other-name")
    with pytest.raises(UnknownKeyError, match="1 signature\\(s\\) carry a keyid that names no trusted key"):
        verify_envelope(relabelled, _keys(a, b, c), threshold=1)


def test_signature_from_untrusted_key_with_trusted_keyid(officers: tuple[CryptoSigner, ...]) -> None:
    a, b, c = officers
    impostor = CryptoSigner.generate(keyid="officer-a")
    envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [impostor])
    with pytest.raises(InvalidSignatureError):
        verify_envelope(envelope, _keys(a, b, c), threshold=1)


def test_algorithm_is_from_the_trusted_record(officers: tuple[CryptoSigner, ...]) -> None:
    a, b, _c = officers
    # An Ed25519 signature presented under the P-256 key's keyid never verifies as ECDSA.
    envelope = _with_keyids(sign_envelope(TRANSFER_TYPE, PAYLOAD, [a]), "officer-b")
    with pytest.raises(InvalidSignatureError):
        verify_envelope(envelope, [b.public_key], threshold=1)


def test_threshold_must_be_positive(officers: tuple[CryptoSigner, ...]) -> None:
    envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [officers[0]])
    for threshold in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            verify_envelope(envelope, _keys(*officers), threshold=threshold)


def test_threshold_larger_than_keys(officers: tuple[CryptoSigner, ...]) -> None:
    a, b, c = officers
    envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [a, b, c])
    with pytest.raises(ThresholdError, match="3 trusted key\\(s\\), threshold 4"):
        verify_envelope(envelope, _keys(a, b, c), threshold=4)


def test_tampered_payload_type(officers: tuple[CryptoSigner, ...]) -> None:
    a, _b, _c = officers
    envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [a])
    swapped = Envelope(PAYLOAD, "application/vnd.carbon-gateway.receipt.v1+json", envelope.signatures)
    with pytest.raises(InvalidSignatureError):
        verify_envelope(swapped, [a.public_key], threshold=1)
