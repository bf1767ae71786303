"""DSSE: PAE, the envelope value type, its JSON form, and signing."""

from __future__ import annotations

import base64
import json

import pytest

from signing import (
    CryptoSigner,
    Envelope,
    EnvelopeFormatError,
    Signature,
    SignerError,
    pae,
    sign_envelope,
    verify_envelope,
)
from tests.signing.fixtures import TRANSFER_TYPE, fixed_signer


def test_pae_layout() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("", b"") == b"DSSEv1 0  0 "
    assert pae("t", b"\x00\xff") == b"DSSEv1 1 t 2 \x00\xff"


def test_pae_counts_bytes_of_payload() -> None:
    payload = "碳".encode()  # 3 bytes, 1 character
    assert pae("t", payload) == b"DSSEv1 1 t 3 " + payload


@pytest.mark.parametrize("payload_type", ["application/vnd.exämple+json", "碳", "\u00a0"])
def test_pae_rejects_non_ascii_payload_type(payload_type: str) -> None:
    with pytest.raises(EnvelopeFormatError, match="not ASCII"):
        pae(payload_type, b"x")


def test_envelope_rejects_non_ascii_payload_type() -> None:
    with pytest.raises(EnvelopeFormatError, match="ASCII"):
        Envelope(payload=b"x", payload_type="tÿpe", signatures=())


def test_envelope_validates_field_types() -> None:
    with pytest.raises(EnvelopeFormatError, match="payload must be bytes"):
        Envelope(payload="x", payload_type="t", signatures=())  # type: ignore[arg-type]
    with pytest.raises(EnvelopeFormatError, match="Signature values"):
        Envelope(payload=b"x", payload_type="t", signatures=("sig",))  # type: ignore[arg-type]
    with pytest.raises(EnvelopeFormatError, match="sig must be bytes"):
        Signature(keyid="k", sig="c2ln")  # type: ignore[arg-type]
    with pytest.raises(EnvelopeFormatError, match="keyid must be a str"):
        Signature(keyid=None, sig=b"s")  # type: ignore[arg-type]


def test_a_signature_carries_bytes_and_a_keyid_utf8_can_carry() -> None:
    """What the JSON form refuses, a signature built from the protobuf form refuses too."""
    with pytest.raises(EnvelopeFormatError, match="empty 'sig'"):
        Signature(keyid="k", sig=b"")
    with pytest.raises(EnvelopeFormatError, match="UTF-8 cannot carry"):
        Signature(keyid="k\udc00", sig=b"s")


def test_envelope_stores_signatures_as_tuple() -> None:
    envelope = Envelope(payload=b"x", payload_type="t", signatures=[Signature("k", b"s")])  # type: ignore[arg-type]
    assert envelope.signatures == (Signature("k", b"s"),)


def test_to_json_shape() -> None:
    envelope = Envelope(b"hello world", "http://example.com/HelloWorld", (Signature("k1", b"\xfb\xff"),))
    assert json.loads(envelope.to_json()) == {
        "payload": "aGVsbG8gd29ybGQ=",
        "payloadType": "http://example.com/HelloWorld",
        "signatures": [{"keyid": "k1", "sig": "+/8="}],
    }
    assert envelope.to_json() == (
        b'{"payload":"aGVsbG8gd29ybGQ=","payloadType":"http://example.com/HelloWorld",'
        b'"signatures":[{"keyid":"k1","sig":"+/8="}]}'
    )


def test_json_round_trip() -> None:
    envelope = Envelope(b"\x00\x01binary\xff", "application/x", (Signature("a", b"1"), Signature("", b"22")))
    assert Envelope.from_json(envelope.to_json()) == envelope


@pytest.mark.parametrize(
    ("payload_b64", "sig_b64"),
    [
        ("+/+/Pj8=", "+/8="),  # standard, padded
        ("+/+/Pj8", "+/8"),  # standard, unpadded
        ("-_-_Pj8=", "-_8="),  # URL-safe, padded
        ("-_-_Pj8", "-_8"),  # URL-safe, unpadded
    ],
)
def test_from_json_accepts_both_alphabets_with_or_without_padding(payload_b64: str, sig_b64: str) -> None:
    data = json.dumps({"payload": payload_b64, "payloadType": "t", "signatures": [{"keyid": "k", "sig": sig_b64}]})
    envelope = Envelope.from_json(data.encode())
    assert envelope.payload == bytes([0xFB, 0xFF, 0xBF, 0x3E, 0x3F])
    assert envelope.signatures == (Signature("k", b"\xfb\xff"),)


def test_from_json_keyid_is_optional() -> None:
    data = b'{"payload":"","payloadType":"t","signatures":[{"sig":"AA=="},{"sig":"AA==","keyid":null}]}'
    assert Envelope.from_json(data).signatures == (Signature("", b"\x00"), Signature("", b"\x00"))


def test_from_json_ignores_unknown_members() -> None:
    data = b'{"payload":"","payloadType":"t","signatures":[{"sig":"AA==","cert":"x"}],"extension":{}}'
    assert Envelope.from_json(data) == Envelope(b"", "t", (Signature("", b"\x00"),))


def test_from_json_accepts_bytearray() -> None:
    assert Envelope.from_json(bytearray(b'{"payload":"","payloadType":"t","signatures":[]}')).payload == b""  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'{"payloadType":"t","signatures":[]}', "no 'payload'"),
        (b'{"payload":"","signatures":[]}', "no 'payloadType'"),
        (b'{"payload":"","payloadType":"t"}', "no 'signatures'"),
        (b'{"payload":1,"payloadType":"t","signatures":[]}', "must be a string"),
        (b'{"payload":"","payloadType":5,"signatures":[]}', "must be a string"),
        (b'{"payload":"","payloadType":"t","signatures":{}}', "must be an array"),
        (b'{"payload":"","payloadType":"t","signatures":["x"]}', "must be a JSON object"),
        (b'{"payload":"","payloadType":"t","signatures":[{}]}', "no 'sig'"),
        (b'{"payload":"","payloadType":"t","signatures":[{"sig":""}]}', "empty 'sig'"),
        (b'{"payload":"","payloadType":"t","signatures":[{"sig":"AA==","keyid":7}]}', "'keyid' must be a string"),
        (b'{"payload":"","payloadType":"t","signatures":[{"sig":"AA==","keyid":"\\udc00"}]}', "UTF-8 cannot carry"),
        (b'{"payload":"a","payloadType":"t","signatures":[]}', "not base64"),
        (b'{"payload":"a===","payloadType":"t","signatures":[]}', "not base64"),
        (b'{"payload":"YQ=","payloadType":"t","signatures":[]}', "not base64"),
        (b'{"payload":"Y Q==","payloadType":"t","signatures":[]}', "not base64"),
        (b'{"payload":"+-==","payloadType":"t","signatures":[]}', "mixes"),
        (b'{"payload":"YQ==YQ==","payloadType":"t","signatures":[]}', "not base64"),
        (b'{"payload":"\\u00e9A==","payloadType":"t","signatures":[]}', "non-ASCII"),
        (b'{"payload":"","payloadType":"t\\u00ff","signatures":[]}', "not ASCII"),
        (b'{"payload":"","payload":"YQ==","payloadType":"t","signatures":[]}', "twice"),
        (b'{"payload":"","payloadType":"t","signatures":[{"sig":"AA==","sig":"AQ=="}]}', "twice"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"payload":"","payloadType":"t","signatures":[],"x":NaN}', "NaN, which is not a JSON number"),
        (b'{"payload":"","payloadType":"t","signatures":[],"x":-Infinity}', "-Infinity, which is not a JSON number"),
        (b'{"payload":"","payloadType":"t","signatures":[],"x":1e999}', "1e999, too large to be a finite number"),
        (b'{"payload":"","payloadType":"t","signatures":[],"x":' + b"7" * 4001 + b"}", "4001 digits, more than 4000"),
    ],
)
def test_from_json_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(EnvelopeFormatError, match=message):
        Envelope.from_json(data)


def test_from_json_rejects_non_bytes() -> None:
    with pytest.raises(EnvelopeFormatError, match="bytes"):
        Envelope.from_json("{}")  # type: ignore[arg-type]


def test_sign_envelope_signs_pae_with_every_signer() -> None:
    a, b = fixed_signer("ed25519-a"), fixed_signer("p256-a")
    envelope = sign_envelope(TRANSFER_TYPE, b"payload", [a, b])
    assert envelope.payload == b"payload"
    assert [s.keyid for s in envelope.signatures] == [a.keyid, b.keyid]
    data = pae(TRANSFER_TYPE, b"payload")
    assert all(
        key.verify(s.sig, data) for key, s in zip([a.public_key, b.public_key], envelope.signatures, strict=True)
    )


def test_sign_envelope_requires_a_signer() -> None:
    with pytest.raises(SignerError, match="at least one signer"):
        sign_envelope("t", b"x", [])


def test_sign_envelope_rejects_non_ascii_type() -> None:
    with pytest.raises(EnvelopeFormatError):
        sign_envelope("tÿpe", b"x", [CryptoSigner.generate()])


def test_payload_is_carried_verbatim() -> None:
    # Not canonical JSON, trailing whitespace, odd bytes: the payload must round-trip byte for byte.
    payload = b'{ "b":1,  "a" : 2 }\r\n\x00\xff'
    signer = CryptoSigner.generate()
    envelope = Envelope.from_json(sign_envelope("t", payload, [signer]).to_json())
    assert envelope.payload == payload
    assert verify_envelope(envelope, [signer.public_key], 1).payload == payload
    assert base64.b64decode(json.loads(envelope.to_json())["payload"]) == payload
