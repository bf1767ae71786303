"""Trust documents and the TrustedParty state machine: bootstrap, updates, rotation, revocation, expiry."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from signing import (
    TRUST_PAYLOAD_TYPE,
    CryptoSigner,
    Envelope,
    ExpiredTrustError,
    InvalidSignatureError,
    PublicKey,
    Role,
    RollbackError,
    ThresholdError,
    TrustDocument,
    TrustDocumentFormatError,
    TrustedParty,
    TrustError,
    UnknownKeyError,
    VerificationError,
    sign_envelope,
    sign_trust_document,
)
from signing.errors import SigningError
from tests.signing.fixtures import NOW, TRANSFER_TYPE, make_document

DAY = timedelta(days=1)
TRANSFER = b'{"transfer":1}'


@pytest.fixture
def root_keys() -> list[CryptoSigner]:
    return [CryptoSigner.generate() for _ in range(3)]


@pytest.fixture
def transfer_key() -> CryptoSigner:
    return CryptoSigner.generate()


@pytest.fixture
def v1(root_keys: list[CryptoSigner], transfer_key: CryptoSigner) -> TrustDocument:
    return make_document(version=1, trust=root_keys, transfer=[transfer_key], trust_threshold=2)


@pytest.fixture
def party(v1: TrustDocument, root_keys: list[CryptoSigner]) -> TrustedParty:
    return TrustedParty.bootstrap(sign_trust_document(v1, root_keys[:2]), NOW)


def _next(doc: TrustDocument, **changes: Any) -> TrustDocument:
    return dataclasses.replace(doc, version=doc.version + 1, **changes)


# -- the document -----------------------------------------------------------------------------------------


def test_error_hierarchy() -> None:
    for error in (RollbackError, ExpiredTrustError, TrustDocumentFormatError):
        assert issubclass(error, TrustError)
    assert issubclass(TrustError, SigningError)


def test_payload_is_canonical_json(v1: TrustDocument) -> None:
    payload = v1.to_payload()
    parsed = json.loads(payload)
    assert payload == json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert set(parsed) == {"party", "version", "expires", "keys", "roles"}
    assert parsed["expires"] == "2027-03-01T12:00:00Z"
    assert set(parsed["roles"]) == {"trust", "transfer"}
    assert parsed["roles"]["trust"]["threshold"] == 2


def test_payload_round_trip(v1: TrustDocument) -> None:
    again = TrustDocument.from_payload(v1.to_payload())
    assert again == v1
    assert again.to_payload() == v1.to_payload()
    assert hash(again) == hash(v1)


def test_keys_for(v1: TrustDocument, root_keys: list[CryptoSigner], transfer_key: CryptoSigner) -> None:
    assert v1.keys_for("trust") == tuple(k.public_key for k in root_keys)
    assert v1.keys_for("transfer") == (transfer_key.public_key,)
    assert v1.threshold_for("trust") == 2
    with pytest.raises(TrustError, match="no role 'audit'"):
        v1.keys_for("audit")


def test_document_is_immutable(v1: TrustDocument) -> None:
    with pytest.raises(TypeError):
        v1.keys["x"] = v1.keys_for("trust")[0]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        v1.version = 2  # type: ignore[misc]


def test_expires_is_normalized_to_utc_seconds(v1: TrustDocument) -> None:
    plus8 = timezone(timedelta(hours=8))
    doc = dataclasses.replace(v1, expires=datetime(2027, 1, 1, 8, 0, 0, 999_999, tzinfo=plus8))
    assert doc.expires == datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC)
    assert doc.expires.tzinfo is UTC


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"party": ""}, "not a valid party identifier"),
        ({"party": "CH N"}, "not a valid party identifier"),
        ({"version": 0}, "version must be an integer from 1 to 2\\^63 - 1"),
        ({"version": True}, "version must be an integer from 1 to 2\\^63 - 1"),
        ({"version": 2**63}, "version must be an integer from 1 to 2\\^63 - 1"),
        ({"version": 2**64 + 1}, "version must be an integer from 1 to 2\\^63 - 1"),
        ({"expires": datetime(2027, 1, 1)}, "timezone-aware"),
        ({"keys": {}}, "keys must be a non-empty mapping"),
    ],
)
def test_document_validation(v1: TrustDocument, change: dict[str, Any], message: str) -> None:
    with pytest.raises(TrustDocumentFormatError, match=message):
        dataclasses.replace(v1, **change)


def test_role_validation(v1: TrustDocument) -> None:
    trust = v1.roles["trust"]
    with pytest.raises(TrustDocumentFormatError, match="required role"):
        dataclasses.replace(v1, roles={"trust": trust})
    with pytest.raises(TrustDocumentFormatError, match="not in keys"):
        dataclasses.replace(v1, roles={**v1.roles, "transfer": Role(("nope",), 1)})
    with pytest.raises(TrustDocumentFormatError, match="could never be met"):
        dataclasses.replace(v1, roles={**v1.roles, "trust": Role(trust.keyids, 4)})
    with pytest.raises(TrustDocumentFormatError, match="role name"):
        dataclasses.replace(v1, roles={**v1.roles, "Bad Role": trust})
    with pytest.raises(TrustDocumentFormatError, match="at least one keyid"):
        Role((), 1)
    with pytest.raises(TrustDocumentFormatError, match="twice"):
        Role(("a", "a"), 1)
    with pytest.raises(TrustDocumentFormatError, match="threshold"):
        Role(("a",), 0)
    with pytest.raises(TrustDocumentFormatError, match="list of strings"):
        Role("abc", 1)  # type: ignore[arg-type]


def test_threshold_counts_distinct_keys_in_document(v1: TrustDocument) -> None:
    key = v1.keys_for("trust")[0]
    alias = dataclasses.replace(key, keyid="alias")
    keys = {**v1.keys, "alias": alias}
    # A second record of one key needs a second keyid, and a trust document allows only the key's own
    # keyid (defect 9): one key can no longer be listed twice to inflate a role.
    with pytest.raises(TrustDocumentFormatError, match=r"key 'alias' .* has the wrong keyid"):
        dataclasses.replace(v1, keys=keys, roles={**v1.roles, "trust": Role((key.keyid, "alias"), 2)})


def test_key_map_must_match_keyids(v1: TrustDocument) -> None:
    key = v1.keys_for("trust")[0]
    with pytest.raises(TrustDocumentFormatError, match="they must be equal"):
        dataclasses.replace(v1, keys={**v1.keys, "other": key})


def test_trust_document_keyid_must_match_key(v1: TrustDocument, transfer_key: CryptoSigner) -> None:
    # Defect 9: a key record may not carry another key's keyid (here another partner's), nor a custom one.
    key = transfer_key.public_key
    other_partner = CryptoSigner.generate().keyid
    for wrong in (other_partner, "officer-1", key.keyid.upper()):
        mislabelled = PublicKey(wrong, key.algorithm, key.public_bytes)
        keys = {k: v for k, v in v1.keys.items() if k != key.keyid} | {wrong: mislabelled}
        roles = {**v1.roles, "transfer": Role((wrong,), 1)}
        with pytest.raises(TrustDocumentFormatError) as info:
            dataclasses.replace(v1, keys=keys, roles=roles)
        message = str(info.value)
        assert f"key {wrong!r} (ed25519) has the wrong keyid" in message
        assert f"which is {key.keyid!r} for this key" in message
    # The fixture's helper, with signers of custom keyids, is refused the same way.
    with pytest.raises(TrustDocumentFormatError, match=r"'officer-1' .* has the wrong keyid"):
        make_document(version=1, trust=[CryptoSigner.generate(keyid="officer-1")])


def test_trust_document_keyid_must_match_key_in_payload(
    v1: TrustDocument, root_keys: list[CryptoSigner], transfer_key: CryptoSigner
) -> None:
    # The same rule for a document parsed from JSON, and so for one that arrives signed: a partner cannot
    # list its key under another partner's keyid, even in a document its own trust keys signed.
    other_partner = CryptoSigner.generate().keyid
    real = transfer_key.keyid

    def relabel(document: dict[str, Any]) -> None:
        record = document["keys"].pop(real)
        record["keyid"] = other_partner
        document["keys"][other_partner] = record
        document["roles"]["transfer"]["keyids"] = [other_partner]

    payload = _payload_with(v1, relabel)
    with pytest.raises(TrustDocumentFormatError, match=f"key '{other_partner}' .* which is '{real}' for this key"):
        TrustDocument.from_payload(payload)
    envelope = sign_envelope(TRUST_PAYLOAD_TYPE, payload, root_keys)
    with pytest.raises(TrustDocumentFormatError, match="has the wrong keyid"):
        TrustedParty.bootstrap(envelope, NOW)


def _payload_with(v1: TrustDocument, mutate: Any) -> bytes:
    document = json.loads(v1.to_payload())
    mutate(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("expires"), "missing \\['expires'\\]"),
        (lambda d: d.update(extra=1), "unexpected \\['extra'\\]"),
        (lambda d: d.update(version="2"), "version must be an integer"),
        (lambda d: d.update(version=1.0), "version must be an integer"),
        (lambda d: d.update(expires="2027-01-01"), "expires must be a UTC time"),
        (lambda d: d.update(expires="2027-01-01T00:00:00+08:00"), "expires must be a UTC time"),
        (lambda d: d.update(expires="2027-02-30T00:00:00Z"), "expires '2027-02-30T00:00:00Z' is invalid"),
        # Digits of other scripts (Arabic-Indic, fullwidth): the format is ASCII, as to_payload writes it.
        (lambda d: d.update(expires="\u0662\u0660\u0663\u0660-01-01T00:00:00Z"), "expires must be a UTC time"),
        (lambda d: d.update(expires="2027-01-01T00:00:0\uff10Z"), "expires must be a UTC time"),
        (lambda d: d.update(keys=[]), "keys must be a JSON object"),
        (lambda d: d.update(roles=[]), "roles must be a JSON object"),
        (lambda d: d["roles"]["trust"].update(threshold="2"), "threshold must be an integer"),
        (lambda d: d["roles"]["trust"].update(keyids="abc"), "keyids must be a JSON array"),
        (lambda d: d["roles"]["trust"].pop("threshold"), "missing \\['threshold'\\]"),
        (lambda d: d["roles"].pop("transfer"), "required role"),
        (lambda d: next(iter(d["keys"].values())).update(algorithm="rsa"), "is invalid: .*unknown algorithm"),
        (lambda d: next(iter(d["keys"].values())).update(public_key_pem="x"), "is invalid: not a PEM public key"),
    ],
)
def test_from_payload_is_strict(v1: TrustDocument, mutate: Any, message: str) -> None:
    with pytest.raises(TrustDocumentFormatError, match=message):
        TrustDocument.from_payload(_payload_with(v1, mutate))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff", "not UTF-8"),
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"version":1,"version":2}', "twice"),
        (b'{"version":NaN}', "non-JSON number NaN"),
    ],
)
def test_from_payload_rejects_bad_json(payload: bytes, message: str) -> None:
    with pytest.raises(TrustDocumentFormatError, match=message):
        TrustDocument.from_payload(payload)


# -- bootstrap --------------------------------------------------------------------------------------------


def test_bootstrap(v1: TrustDocument, root_keys: list[CryptoSigner]) -> None:
    envelope = sign_trust_document(v1, root_keys[:2])
    assert envelope.payload_type == TRUST_PAYLOAD_TYPE
    party = TrustedParty.bootstrap(envelope, NOW)
    assert party.document == v1
    assert party.envelope == envelope
    assert (party.party, party.version, party.expires) == ("CHN", 1, v1.expires)


def test_bootstrap_needs_own_threshold(v1: TrustDocument, root_keys: list[CryptoSigner]) -> None:
    with pytest.raises(ThresholdError, match="cannot bootstrap"):
        TrustedParty.bootstrap(sign_trust_document(v1, root_keys[:1]), NOW)
    with pytest.raises(UnknownKeyError):
        TrustedParty.bootstrap(sign_trust_document(v1, [CryptoSigner.generate()]), NOW)


def test_bootstrap_refuses_expired(v1: TrustDocument, root_keys: list[CryptoSigner]) -> None:
    envelope = sign_trust_document(v1, root_keys[:2])
    with pytest.raises(ExpiredTrustError, match="expired at 2027-03-01T12:00:00Z"):
        TrustedParty.bootstrap(envelope, v1.expires)
    with pytest.raises(ExpiredTrustError):
        TrustedParty.bootstrap(envelope, v1.expires + DAY)
    assert TrustedParty.bootstrap(envelope, v1.expires - timedelta(seconds=1)).version == 1


def test_bootstrap_refuses_other_payload_types(v1: TrustDocument, root_keys: list[CryptoSigner]) -> None:
    envelope = sign_envelope(TRANSFER_TYPE, v1.to_payload(), root_keys[:2])
    with pytest.raises(TrustDocumentFormatError, match="not a trust document"):
        TrustedParty.bootstrap(envelope, NOW)


def test_now_must_be_aware(party: TrustedParty, transfer_key: CryptoSigner) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        party.verify(sign_envelope(TRANSFER_TYPE, TRANSFER, [transfer_key]), "transfer", datetime(2026, 1, 1))


def test_restore_skips_expiry_but_verify_refuses(v1: TrustDocument, root_keys: list[CryptoSigner]) -> None:
    envelope = sign_trust_document(v1, root_keys[:2])
    later = v1.expires + DAY
    restored = TrustedParty.restore(envelope)
    assert restored.document == v1
    with pytest.raises(ExpiredTrustError):
        restored.verify(envelope, "trust", later)
    with pytest.raises(ThresholdError):
        TrustedParty.restore(sign_trust_document(v1, root_keys[:1]))


# -- verify -----------------------------------------------------------------------------------------------


def test_verify_transfer(party: TrustedParty, transfer_key: CryptoSigner) -> None:
    result = party.verify(sign_envelope(TRANSFER_TYPE, TRANSFER, [transfer_key]), "transfer", NOW)
    assert result.payload == TRANSFER
    assert result.verified_keyids == (transfer_key.keyid,)


def test_verify_role_is_enforced(party: TrustedParty, root_keys: list[CryptoSigner]) -> None:
    # A trust key is not a transfer key.
    with pytest.raises(VerificationError):
        party.verify(sign_envelope(TRANSFER_TYPE, TRANSFER, [root_keys[0]]), "transfer", NOW)
    with pytest.raises(TrustError, match="no role"):
        party.verify(sign_envelope(TRANSFER_TYPE, TRANSFER, [root_keys[0]]), "audit", NOW)


def test_verify_with_expired_document_refused(party: TrustedParty, transfer_key: CryptoSigner) -> None:
    envelope = sign_envelope(TRANSFER_TYPE, TRANSFER, [transfer_key])
    with pytest.raises(ExpiredTrustError, match="obtain and apply the party's newer trust document"):
        party.verify(envelope, "transfer", party.expires)


def test_transfer_threshold_of_two_officers(root_keys: list[CryptoSigner]) -> None:
    officers = [CryptoSigner.generate() for _ in range(3)]
    doc = make_document(version=1, trust=root_keys, transfer=officers, trust_threshold=2, transfer_threshold=2)
    party = TrustedParty.bootstrap(sign_trust_document(doc, root_keys), NOW)
    assert len(party.verify(sign_envelope(TRANSFER_TYPE, TRANSFER, officers[:2]), "transfer", NOW).verified_keyids) == 2
    with pytest.raises(ThresholdError):
        party.verify(sign_envelope(TRANSFER_TYPE, TRANSFER, [officers[0], officers[0]]), "transfer", NOW)


# -- updates ----------------------------------------------------------------------------------------------


def test_update_to_next_version(party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner]) -> None:
    v2 = _next(v1)
    updated = party.update(sign_trust_document(v2, root_keys[:2]), NOW)
    assert updated.version == 2
    assert updated.document == v2
    assert party.version == 1  # the old state is unchanged


def test_rollback_refused(party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner]) -> None:
    v2 = _next(v1)
    at_v2 = party.update(sign_trust_document(v2, root_keys[:2]), NOW)
    with pytest.raises(RollbackError, match="version 1, but version 2 is already trusted"):
        at_v2.update(sign_trust_document(v1, root_keys[:2]), NOW)
    with pytest.raises(RollbackError):
        at_v2.update(sign_trust_document(v2, root_keys[:2]), NOW)


def test_skipping_a_version_refused(party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner]) -> None:
    v3 = dataclasses.replace(v1, version=3)
    with pytest.raises(TrustError, match="jumps from version 1 to 3; apply versions 2 to 2 first") as info:
        party.update(sign_trust_document(v3, root_keys[:2]), NOW)
    assert not isinstance(info.value, RollbackError)


def test_update_for_another_party_refused(
    party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner]
) -> None:
    other = _next(v1, party="CHE")
    with pytest.raises(TrustError, match="for party 'CHE'"):
        party.update(sign_trust_document(other, root_keys[:2]), NOW)


def test_update_needs_current_threshold(party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner]) -> None:
    with pytest.raises(ThresholdError, match="current \\(version 1\\) trust keys"):
        party.update(sign_trust_document(_next(v1), root_keys[:1]), NOW)


def test_update_with_non_trust_payload_refused(party: TrustedParty, root_keys: list[CryptoSigner]) -> None:
    with pytest.raises(TrustDocumentFormatError):
        party.update(sign_envelope(TRANSFER_TYPE, TRANSFER, root_keys), NOW)
    with pytest.raises(TrustDocumentFormatError):
        party.update(sign_envelope(TRUST_PAYLOAD_TYPE, b"{}", root_keys), NOW)


def _rotated(v1: TrustDocument, new_keys: list[CryptoSigner], transfer_key: CryptoSigner) -> TrustDocument:
    return make_document(version=2, trust=new_keys, transfer=[transfer_key], trust_threshold=2, expires=v1.expires)


def test_rotation_signed_by_old_and_new_keys(
    party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner], transfer_key: CryptoSigner
) -> None:
    new_keys = [CryptoSigner.generate() for _ in range(3)]
    v2 = _rotated(v1, new_keys, transfer_key)
    updated = party.update(sign_trust_document(v2, [*root_keys[:2], *new_keys[:2]]), NOW)
    assert updated.document.keys_for("trust") == tuple(k.public_key for k in new_keys)
    # v3 now needs only the new keys.
    v3 = _next(v2)
    assert updated.update(sign_trust_document(v3, new_keys[1:]), NOW).version == 3


def test_rotation_signed_only_by_old_keys_refused(
    party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner], transfer_key: CryptoSigner
) -> None:
    new_keys = [CryptoSigner.generate() for _ in range(3)]
    v2 = _rotated(v1, new_keys, transfer_key)
    with pytest.raises(UnknownKeyError, match="new \\(version 2\\) trust keys"):
        party.update(sign_trust_document(v2, root_keys), NOW)


def test_rotation_signed_only_by_new_keys_refused(
    party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner], transfer_key: CryptoSigner
) -> None:
    new_keys = [CryptoSigner.generate() for _ in range(3)]
    v2 = _rotated(v1, new_keys, transfer_key)
    with pytest.raises(UnknownKeyError, match="current \\(version 1\\) trust keys"):
        party.update(sign_trust_document(v2, new_keys), NOW)


def test_rotation_with_only_one_new_key_refused(
    party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner], transfer_key: CryptoSigner
) -> None:
    new_keys = [CryptoSigner.generate() for _ in range(3)]
    v2 = _rotated(v1, new_keys, transfer_key)
    with pytest.raises(ThresholdError, match="new \\(version 2\\)"):
        party.update(sign_trust_document(v2, [*root_keys[:2], new_keys[0]]), NOW)


def test_revoked_transfer_key_refused_after_update(
    party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner], transfer_key: CryptoSigner
) -> None:
    message = sign_envelope(TRANSFER_TYPE, TRANSFER, [transfer_key])
    assert party.verify(message, "transfer", NOW).verified_keyids == (transfer_key.keyid,)

    replacement = CryptoSigner.generate()
    v2 = make_document(version=2, trust=root_keys, transfer=[replacement], trust_threshold=2)
    assert transfer_key.keyid not in v2.keys
    updated = party.update(sign_trust_document(v2, root_keys[:2]), NOW)

    with pytest.raises(UnknownKeyError):
        updated.verify(message, "transfer", NOW)
    assert updated.verify(sign_envelope(TRANSFER_TYPE, TRANSFER, [replacement]), "transfer", NOW).payload == TRANSFER


def test_revoked_trust_key_cannot_sign_next_update(
    party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner], transfer_key: CryptoSigner
) -> None:
    a, b, c = root_keys
    v2 = make_document(version=2, trust=[b, c], transfer=[transfer_key], trust_threshold=2)
    updated = party.update(sign_trust_document(v2, [a, b, c]), NOW)
    v3 = _next(v2)
    with pytest.raises(ThresholdError):
        updated.update(sign_trust_document(v3, [a, b]), NOW)  # a was revoked in v2
    assert updated.update(sign_trust_document(v3, [b, c]), NOW).version == 3


def test_update_many_with_expired_intermediate(
    party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner]
) -> None:
    later = NOW + 400 * DAY  # after v1 (and v2) expired
    v2 = _next(v1, expires=NOW + 30 * DAY)
    v3 = _next(v2, expires=later + 365 * DAY)
    envelopes = [sign_trust_document(doc, root_keys[:2]) for doc in (v2, v3)]
    updated = party.update_many(envelopes, later)
    assert updated.version == 3
    assert updated.verify(envelopes[1], "trust", later).payload == v3.to_payload()
    # One at a time, the expired intermediate is refused by update().
    with pytest.raises(ExpiredTrustError):
        party.update(envelopes[0], later)


def test_update_many_with_expired_final_refused(
    party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner]
) -> None:
    later = NOW + 400 * DAY
    v2 = _next(v1, expires=later + 365 * DAY)
    v3 = _next(v2, expires=NOW + 30 * DAY)
    envelopes = [sign_trust_document(doc, root_keys[:2]) for doc in (v2, v3)]
    with pytest.raises(ExpiredTrustError, match="version 3"):
        party.update_many(envelopes, later)


def test_update_many_applies_one_at_a_time(
    party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner]
) -> None:
    v2 = _next(v1)
    v3 = _next(v2)
    envelopes = [sign_trust_document(doc, root_keys[:2]) for doc in (v2, v3)]
    with pytest.raises(TrustError, match="jumps from version 1 to 3"):
        party.update_many(list(reversed(envelopes)), NOW)
    assert party.update_many([], NOW) is party
    assert party.update_many(iter(envelopes), NOW).version == 3


def test_update_from_expired_current_document(
    party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner]
) -> None:
    later = v1.expires + DAY
    v2 = _next(v1, expires=later + DAY)
    assert party.update(sign_trust_document(v2, root_keys[:2]), later).version == 2


def test_tampered_trust_envelope_refused(party: TrustedParty, v1: TrustDocument, root_keys: list[CryptoSigner]) -> None:
    envelope = sign_trust_document(_next(v1), root_keys[:2])
    evil = CryptoSigner.generate()
    tampered_doc = _next(v1, keys={**v1.keys, evil.keyid: evil.public_key})
    tampered = Envelope(tampered_doc.to_payload(), envelope.payload_type, envelope.signatures)
    with pytest.raises(InvalidSignatureError):
        party.update(tampered, NOW)
