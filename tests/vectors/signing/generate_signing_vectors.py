"""Generate ``signing_vectors.json``: the carbon gateway's own fixed-key DSSE vectors.

This script uses only `cryptography` and its own PAE, never the project's `signing` package, so the
vectors check that package independently. Every signature is deterministic (Ed25519, and ECDSA with
RFC 6979 nonces), so running the script reproduces the file byte for byte::

    python tests/vectors/signing/generate_signing_vectors.py            # rewrite signing_vectors.json
    python tests/vectors/signing/generate_signing_vectors.py --check    # exit 1 if the file differs

The private keys are TEST KEYS, derived from public strings. Never use them for anything else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

OUT = Path(__file__).with_name("signing_vectors.json")

TRANSFER_TYPE = "application/vnd.carbon-gateway.transfer.v1+json"
TRANSFER = b'{"id":"7f0c6a58-6d4b-4e84-a1a4-3c1f1e2d9b10","quantity":1000,"sender":"CHN","receiver":"CHE"}'
# Bytes whose base64 uses '+' and '/' (so the URL-safe form differs) and whose length needs padding.
BINARY = bytes([0xFB, 0xFF, 0xBF, 0x3E, 0x3F, 0x00, 0x0A])

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode("ascii")
    return b"DSSEv1 " + str(len(t)).encode() + b" " + t + b" " + str(len(payload)).encode() + b" " + payload


def _seed(label: str) -> bytes:
    return hashlib.sha256(f"carbon-gateway signing test vector key {label}".encode()).digest()


def ed25519_key(label: str) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(_seed(label))


def p256_key(label: str) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(_seed(label), "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

KEYS: dict[str, PrivateKey] = {
    "ed25519-a": ed25519_key("ed25519-a"),
    "ed25519-b": ed25519_key("ed25519-b"),
    "ed25519-c": ed25519_key("ed25519-c"),
    "p256-a": p256_key("p256-a"),
}


def spki(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def keyid(name: str) -> str:
    return hashlib.sha256(spki(KEYS[name])).hexdigest()


def sign_der(name: str, payload_type: str, payload: bytes) -> bytes:
    key = KEYS[name]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(pae(payload_type, payload))
    return key.sign(pae(payload_type, payload), ec.ECDSA(hashes.SHA256(), deterministic_signing=True))


def der_to_raw(signature: bytes) -> bytes:
    r, s = decode_dss_signature(signature)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def b64(data: bytes, urlsafe: bool = False, padded: bool = True) -> str:
    text = (base64.urlsafe_b64encode if urlsafe else base64.standard_b64encode)(data).decode("ascii")
    return text if padded else text.rstrip("=")


def envelope(
    payload_type: str,
    payload: bytes,
    signatures: list[tuple[str, bytes]],
    *,
    urlsafe: bool = False,
    padded: bool = True,
) -> dict[str, Any]:
    return {
        "payload": b64(payload, urlsafe, padded),
        "payloadType": payload_type,
        "signatures": [{"keyid": k, "sig": b64(s, urlsafe, padded)} for k, s in signatures],
    }


def vector(
    vid: str,
    description: str,
    env: dict[str, Any],
    trusted: list[str],
    threshold: int,
    expect: str,
    *,
    error: str | None = None,
    verified: list[str] | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": vid,
        "description": description,
        "envelope": env,
        "trusted_keys": trusted,
        "threshold": threshold,
        "expect": expect,
    }
    if error is not None:
        entry["error"] = error
    if verified is not None:
        entry["verified_keys"] = verified
    return entry


def build() -> dict[str, Any]:
    a, b = keyid("ed25519-a"), keyid("ed25519-b")
    p = keyid("p256-a")
    sa = sign_der("ed25519-a", TRANSFER_TYPE, TRANSFER)
    sb = sign_der("ed25519-b", TRANSFER_TYPE, TRANSFER)
    sp = sign_der("p256-a", TRANSFER_TYPE, TRANSFER)
    s_bin = sign_der("ed25519-a", TRANSFER_TYPE, BINARY)
    s_empty = sign_der("ed25519-a", TRANSFER_TYPE, b"")
    tampered = TRANSFER.replace(b"1000", b"9000")
    other_type = "application/vnd.carbon-gateway.receipt.v1+json"

    keys = {
        name: {
            "algorithm": "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "ecdsa-p256-sha256",
            "keyid": keyid(name),
            "private_key_pem": key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode("ascii"),
            "public_key_pem": key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii"),
            "spki_der_hex": spki(key).hex(),
        }
        for name, key in KEYS.items()
    }
    pae_inputs = [
        ("http://example.com/HelloWorld", b"hello world"),
        (TRANSFER_TYPE, TRANSFER),
        (TRANSFER_TYPE, b""),
        ("", b""),
        ("a", b"b c"),
        ("x y", b"DSSEv1 3 a b"),
        (TRANSFER_TYPE, BINARY),
        ("t", bytes(range(256)) * 4),
    ]
    pae_vectors = [{"payload_type": t, "payload_hex": p_.hex(), "pae_hex": pae(t, p_).hex()} for t, p_ in pae_inputs]
    ed25519_signatures = [
        {
            "key": name,
            "payload_type": t,
            "payload_hex": p_.hex(),
            "sig_hex": sign_der(name, t, p_).hex(),
        }
        for name in ("ed25519-a", "ed25519-b", "ed25519-c")
        for t, p_ in ((TRANSFER_TYPE, TRANSFER), (TRANSFER_TYPE, b""), ("a", BINARY))
    ]
    vectors = [
        vector(
            "ed25519-single",
            "One Ed25519 signature by a trusted key.",
            envelope(TRANSFER_TYPE, TRANSFER, [(a, sa)]),
            ["ed25519-a"],
            1,
            "accept",
            verified=["ed25519-a"],
        ),
        vector(
            "p256-der",
            "One ECDSA P-256 signature in DER (RFC 6979 nonce).",
            envelope(TRANSFER_TYPE, TRANSFER, [(p, sp)]),
            ["p256-a"],
            1,
            "accept",
            verified=["p256-a"],
        ),
        vector(
            "p256-raw",
            "The same ECDSA P-256 signature as raw r || s (64 bytes); verifiers accept both encodings.",
            envelope(TRANSFER_TYPE, TRANSFER, [(p, der_to_raw(sp))]),
            ["p256-a"],
            1,
            "accept",
            verified=["p256-a"],
        ),
        vector(
            "url-safe-unpadded",
            "Payload and signature in URL-safe base64 without padding.",
            envelope(TRANSFER_TYPE, BINARY, [(a, s_bin)], urlsafe=True, padded=False),
            ["ed25519-a"],
            1,
            "accept",
            verified=["ed25519-a"],
        ),
        vector(
            "empty-payload",
            "An empty payload is signed as '... 0 ' with a trailing space.",
            envelope(TRANSFER_TYPE, b"", [(a, s_empty)]),
            ["ed25519-a"],
            1,
            "accept",
            verified=["ed25519-a"],
        ),
        vector(
            "no-keyid-hint",
            "A signature without a keyid hint is matched by trying the trusted keys.",
            envelope(TRANSFER_TYPE, TRANSFER, [("", sb)]),
            ["ed25519-a", "ed25519-b"],
            1,
            "accept",
            verified=["ed25519-b"],
        ),
        vector(
            "two-of-three",
            "Two distinct trusted keys of three meet a threshold of two.",
            envelope(TRANSFER_TYPE, TRANSFER, [(a, sa), (b, sb)]),
            ["ed25519-a", "ed25519-b", "ed25519-c"],
            2,
            "accept",
            verified=["ed25519-a", "ed25519-b"],
        ),
        vector(
            "mixed-algorithms",
            "An Ed25519 and an ECDSA P-256 key together meet a threshold of two.",
            envelope(TRANSFER_TYPE, TRANSFER, [(p, sp), (a, sa)]),
            ["ed25519-a", "p256-a"],
            2,
            "accept",
            verified=["p256-a", "ed25519-a"],
        ),
        vector(
            "one-key-twice",
            "One key signs twice under two keyid spellings; one distinct key does not meet a threshold of two.",
            envelope(TRANSFER_TYPE, TRANSFER, [(a, sa), (a.upper(), sa)]),
            ["ed25519-a", "ed25519-b", "ed25519-c"],
            2,
            "reject",
            error="ThresholdError",
        ),
        vector(
            "tampered-payload",
            "The payload was changed after signing (quantity 1000 -> 9000).",
            envelope(TRANSFER_TYPE, tampered, [(a, sa)]),
            ["ed25519-a"],
            1,
            "reject",
            error="InvalidSignatureError",
        ),
        vector(
            "tampered-payload-type",
            "The payload type was changed after signing.",
            envelope(other_type, TRANSFER, [(a, sa)]),
            ["ed25519-a"],
            1,
            "reject",
            error="InvalidSignatureError",
        ),
        vector(
            "tampered-p256",
            "The payload was changed after an ECDSA P-256 signature.",
            envelope(TRANSFER_TYPE, tampered, [(p, sp)]),
            ["p256-a"],
            1,
            "reject",
            error="InvalidSignatureError",
        ),
        vector(
            "wrong-key-claims-trusted-keyid",
            "Signed by key B, but the signature claims key A's keyid; only A is trusted.",
            envelope(TRANSFER_TYPE, TRANSFER, [(a, sb)]),
            ["ed25519-a"],
            1,
            "reject",
            error="InvalidSignatureError",
        ),
        vector(
            "untrusted-key",
            "Signed by key B under its own keyid; only A is trusted.",
            envelope(TRANSFER_TYPE, TRANSFER, [(b, sb)]),
            ["ed25519-a"],
            1,
            "reject",
            error="UnknownKeyError",
        ),
        vector(
            "algorithm-from-record",
            "An Ed25519 signature under the P-256 key's keyid: the P-256 record decides the algorithm.",
            envelope(TRANSFER_TYPE, TRANSFER, [(p, sa)]),
            ["p256-a"],
            1,
            "reject",
            error="InvalidSignatureError",
        ),
        vector(
            "no-signatures",
            "An envelope with no signatures.",
            envelope(TRANSFER_TYPE, TRANSFER, []),
            ["ed25519-a"],
            1,
            "reject",
            error="UnknownKeyError",
        ),
    ]
    return {
        "description": (
            "Carbon gateway DSSE vectors with fixed TEST keys. Generated by generate_signing_vectors.py, which "
            "uses only the cryptography package. The private keys are public test fixtures: never use them."
        ),
        "keys": keys,
        "pae": pae_vectors,
        "ed25519_signatures": ed25519_signatures,
        "envelopes": vectors,
    }


def main(argv: list[str]) -> int:
    text = json.dumps(build(), indent=2, ensure_ascii=True) + "\n"
    if "--check" in argv:
        if OUT.read_text(encoding="ascii") != text:
            print(f"{OUT.name} differs from what {Path(__file__).name} produces")
            return 1
        print(f"{OUT.name} matches")
        return 0
    OUT.write_text(text, encoding="ascii")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
