"""Fixed test vectors: the DSSE specification's vector, the DSSE repository's vectors, and our own."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import signing
from signing import (
    Algorithm,
    Envelope,
    EnvelopeFormatError,
    PublicKey,
    Signature,
    VerificationError,
    compute_keyid,
    pae,
    sign_envelope,
    verify_envelope,
)
from tests.signing.fixtures import VECTORS_DIR, fixed_public_key, fixed_signer, load_vectors

# -- the DSSE specification's own test vector ----------------------------------------------------------


def _spec_public_key() -> PublicKey:
    spec = load_vectors("dsse_spec_p256.json")
    numbers = ec.EllipticCurvePublicNumbers(int(spec["key"]["x"]), int(spec["key"]["y"]), ec.SECP256R1())
    return PublicKey.from_crypto(numbers.public_key(), keyid="dsse-spec")


def _envelope_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode("utf-8")


def test_dsse_spec_pae() -> None:
    spec = load_vectors("dsse_spec_p256.json")
    assert pae(spec["payload_type"], spec["payload_utf8"].encode()) == spec["pae_utf8"].encode()


def test_dsse_spec_private_key_matches_public_key() -> None:
    spec = load_vectors("dsse_spec_p256.json")
    private = ec.derive_private_key(int(spec["key"]["d"]), ec.SECP256R1())
    assert PublicKey.from_crypto(private.public_key(), "dsse-spec") == _spec_public_key()


def test_dsse_spec_vector_verifies_after_converting_raw_to_der() -> None:
    spec = load_vectors("dsse_spec_p256.json")
    envelope = Envelope.from_json(_envelope_bytes(spec["envelope"]))
    assert envelope.payload == spec["payload_utf8"].encode()
    assert envelope.payload_type == spec["payload_type"]
    (signature,) = envelope.signatures
    assert signature.keyid == ""
    raw = signature.sig
    assert len(raw) == 64  # raw r || s, as the specification says
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    converted = Envelope(envelope.payload, envelope.payload_type, (Signature(keyid="", sig=der),))

    result = verify_envelope(converted, [_spec_public_key()], threshold=1)
    assert result.payload == b"hello world"
    assert result.verified_keyids == ("dsse-spec",)


def test_dsse_spec_vector_verifies_in_raw_form_too() -> None:
    spec = load_vectors("dsse_spec_p256.json")
    envelope = Envelope.from_json(_envelope_bytes(spec["envelope"]))
    assert verify_envelope(envelope, [_spec_public_key()], threshold=1).verified_keyids == ("dsse-spec",)


def test_dsse_spec_vector_tampered_fails() -> None:
    spec = load_vectors("dsse_spec_p256.json")
    envelope = Envelope.from_json(_envelope_bytes(spec["envelope"]))
    tampered = Envelope(b"hello world!", envelope.payload_type, envelope.signatures)
    with pytest.raises(VerificationError):
        verify_envelope(tampered, [_spec_public_key()], threshold=1)


# -- the DSSE repository's test vectors -----------------------------------------------------------------

_DSSE = load_vectors("dsse_testvectors.json")


def _dsse_key(name: str) -> PublicKey:
    raw = bytes.fromhex(_DSSE["keys"][name]["public"])
    return PublicKey.from_crypto(ed25519.Ed25519PublicKey.from_public_bytes(raw), keyid=name)


def test_dsse_repository_keys_are_the_rfc8032_keys() -> None:
    for name, record in _DSSE["keys"].items():
        private = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(record["seed"]))
        assert PublicKey.from_crypto(private.public_key(), keyid=name) == _dsse_key(name)


@pytest.mark.parametrize("vector", _DSSE["vectors"], ids=[v["id"] for v in _DSSE["vectors"]])
def test_dsse_repository_vector(vector: dict[str, Any]) -> None:
    data = _envelope_bytes(vector["envelope"])
    keys = [_dsse_key(name) for name in vector["trustedKeys"]]

    if vector["id"] == "non-ascii-payload-type":
        # Deliberate difference: payload types are ASCII in this project, so the envelope is malformed.
        # The PAE hex in the vector counts UTF-8 bytes; check that our reading of the rule agrees.
        payload_type = vector["envelope"]["payloadType"]
        assert bytes.fromhex(vector["pae"]).startswith(b"DSSEv1 %d " % len(payload_type.encode("utf-8")))
        with pytest.raises(EnvelopeFormatError):
            Envelope.from_json(data)
        with pytest.raises(EnvelopeFormatError):
            pae(payload_type, b"")
        return

    envelope = Envelope.from_json(data)
    text = vector["envelope"]["payload"]
    decode = base64.urlsafe_b64decode if "-" in text or "_" in text else base64.standard_b64decode
    assert envelope.payload == decode(text)

    def accepted() -> bool:
        # The allow-list of payload types is the receiver's step 3, before signatures are checked.
        if envelope.payload_type not in vector["supportedPayloadTypes"]:
            return False
        try:
            verify_envelope(envelope, keys, vector["threshold"])
        except VerificationError:
            return False
        return True

    assert accepted() == (vector["expect"] == "accept")
    if vector["expect"] == "accept":
        assert pae(envelope.payload_type, envelope.payload).hex() == vector["pae"]


# -- our own fixed-key vectors --------------------------------------------------------------------------

_OURS = load_vectors("signing_vectors.json")


def test_our_vector_file_is_reproducible() -> None:
    script = VECTORS_DIR / "generate_signing_vectors.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(_OURS["keys"]))
def test_our_fixed_keys(name: str) -> None:
    record = _OURS["keys"][name]
    public = fixed_public_key(name)
    assert public.algorithm == Algorithm(record["algorithm"])
    assert public.public_bytes.hex() == record["spki_der_hex"]
    assert compute_keyid(public.public_bytes) == record["keyid"]
    assert fixed_signer(name).public_key == public
    assert PublicKey.from_dict(public.to_dict()) == public


@pytest.mark.parametrize("vector", _OURS["pae"], ids=[f"pae-{i}" for i in range(len(_OURS["pae"]))])
def test_our_pae_vectors(vector: dict[str, Any]) -> None:
    assert pae(vector["payload_type"], bytes.fromhex(vector["payload_hex"])).hex() == vector["pae_hex"]


@pytest.mark.parametrize(
    "vector", _OURS["ed25519_signatures"], ids=[f"ed25519-sig-{i}" for i in range(len(_OURS["ed25519_signatures"]))]
)
def test_our_ed25519_signatures_are_exact(vector: dict[str, Any]) -> None:
    signer = fixed_signer(vector["key"])
    payload = bytes.fromhex(vector["payload_hex"])
    envelope = sign_envelope(vector["payload_type"], payload, [signer])
    assert envelope.signatures == (Signature(keyid=signer.keyid, sig=bytes.fromhex(vector["sig_hex"])),)
    assert verify_envelope(envelope, [fixed_public_key(vector["key"])], 1).payload == payload


@pytest.mark.parametrize("vector", _OURS["envelopes"], ids=[v["id"] for v in _OURS["envelopes"]])
def test_our_envelope_vectors(vector: dict[str, Any]) -> None:
    envelope = Envelope.from_json(_envelope_bytes(vector["envelope"]))
    keys = [fixed_public_key(name) for name in vector["trusted_keys"]]
    if vector["expect"] == "accept":
        result = verify_envelope(envelope, keys, vector["threshold"])
        assert result.payload == envelope.payload
        assert result.payload_type == envelope.payload_type
        assert result.verified_keyids == tuple(_OURS["keys"][k]["keyid"] for k in vector["verified_keys"])
    else:
        error: type[Exception] = getattr(signing, vector["error"])
        with pytest.raises(error):
            verify_envelope(envelope, keys, vector["threshold"])


def test_our_p256_vector_signed_by_our_signer_verifies() -> None:
    # ECDSA signatures are randomized here, so check sign-then-verify rather than exact bytes.
    signer = fixed_signer("p256-a")
    envelope = sign_envelope("application/x", b"payload", [signer])
    assert envelope.signatures[0].sig[0] == 0x30  # DER SEQUENCE
    assert verify_envelope(envelope, [fixed_public_key("p256-a")], 1).verified_keyids == (signer.keyid,)
