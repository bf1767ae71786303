"""Envelope signing and verification against the raw Ed25519 operations on the same bytes."""

from __future__ import annotations

import datetime as dt
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from nacl.bindings import crypto_sign_open

from gateway import wire
from gateway.harness import self_signed_trust_document
from signing import CryptoSigner, Role, TrustDocument, TrustedParty, pae, sign_envelope, sign_trust_document
from tests.bench.common import Figure, rate


def run(seconds: float = 1.0) -> list[Figure]:
    """Every envelope figure: sign+verify, verification alone, and a 2-of-3 threshold."""
    return run_sign_verify(seconds) + run_verification(seconds)


def run_sign_verify(seconds: float = 1.0) -> list[Figure]:
    """DSSE envelope sign and threshold verify (PAE, envelope values, trusted-key lookup) vs raw.

    The wire conversion is left out here; the verification figures below include parsing the bytes.
    """
    payload = os.urandom(600)  # about the size of a Proposal statement with one block
    payload_type = wire.STATEMENT_PAYLOAD_TYPE
    signer = CryptoSigner.generate()
    now = dt.datetime.now(dt.UTC)
    trusted = TrustedParty.bootstrap(self_signed_trust_document("CHN", signer), now)

    # The raw primitives the signing package uses: OpenSSL signs (through cryptography), libsodium verifies.
    raw_key = ed25519.Ed25519PrivateKey.generate()
    raw_public = raw_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    message = pae(payload_type, payload)

    def raw_round() -> None:
        crypto_sign_open(raw_key.sign(message) + message, raw_public)

    def envelope_round() -> None:
        trusted.verify(sign_envelope(payload_type, payload, [signer]), "transfer", now)

    raw = rate(raw_round, seconds=seconds)
    envelope = rate(envelope_round, seconds=seconds)
    return [
        Figure(
            name="envelope sign+verify time per message",
            value=1e6 / envelope,
            unit="µs",
            limit_name="raw Ed25519 sign (OpenSSL) + verify (libsodium) of the same PAE bytes",
            limit=1e6 / raw,
            target=1.3,
            direction="max",
        )
    ]


def run_verification(seconds: float = 1.0) -> list[Figure]:
    """Verification alone, and a 2-of-3 threshold, against the raw verifications they contain."""
    payload = os.urandom(600)
    payload_type = wire.STATEMENT_PAYLOAD_TYPE
    now = dt.datetime.now(dt.UTC)
    keys = [CryptoSigner.generate() for _ in range(3)]
    message = pae(payload_type, payload)

    single = TrustedParty.bootstrap(self_signed_trust_document("CHN", keys[0]), now)
    one = wire.envelope_to_bytes(sign_envelope(payload_type, payload, [keys[0]]))
    raw_public = [k.public_key.public_bytes for k in keys]
    raw_sigs = [k.sign(message) for k in keys]

    document = TrustDocument(
        party="CHN",
        version=1,
        expires=now + dt.timedelta(days=30),
        keys={k.keyid: k.public_key for k in keys},
        roles={"trust": Role((keys[0].keyid,), 1), "transfer": Role(tuple(k.keyid for k in keys), 2)},
    )
    threshold = TrustedParty.bootstrap(sign_trust_document(document, [keys[0]]), now)
    three = wire.envelope_to_bytes(sign_envelope(payload_type, payload, keys))

    raw_public = [
        serialization.load_der_public_key(der).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        for der in raw_public
    ]

    def raw_one() -> None:
        crypto_sign_open(raw_sigs[0] + message, raw_public[0])

    def raw_three() -> None:
        for key, sig in zip(raw_public, raw_sigs, strict=True):
            crypto_sign_open(sig + message, key)

    def gateway_one() -> None:
        single.verify(wire.envelope_from_bytes(one), "transfer", now)

    def gateway_threshold() -> None:
        threshold.verify(wire.envelope_from_bytes(three), "transfer", now)

    raw1, gw1 = rate(raw_one, seconds=seconds), rate(gateway_one, seconds=seconds)
    raw3, gw3 = rate(raw_three, seconds=seconds), rate(gateway_threshold, seconds=seconds)
    return [
        Figure(
            name="envelope verification time per message",
            value=1e6 / gw1,
            unit="µs",
            limit_name="raw Ed25519 verification (libsodium) of the same PAE bytes",
            limit=1e6 / raw1,
            target=1.3,
            direction="max",
        ),
        Figure(
            name="2-of-3 threshold verification time per message (three signatures present)",
            value=1e6 / gw3,
            unit="µs",
            limit_name="three raw Ed25519 verifications (libsodium)",
            limit=1e6 / raw3,
            target=1.3,
            direction="max",
        ),
    ]
