"""The pkcs11: signer backend against a real SoftHSM2 token.

These tests skip when SoftHSM2 is absent, and fail instead under ``CARBON_GATEWAY_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pkcs11
import pytest

from signing import (
    Algorithm,
    SignerError,
    sign_envelope,
    signer_from_uri,
    verify_envelope,
)
from signing._pkcs11 import Pkcs11Signer
from tests.signing.fixtures import TRANSFER_TYPE
from tests.signing.softhsm import SoftHsmKey, add_softhsm_key, create_softhsm_key, require_softhsm

pytestmark = pytest.mark.softhsm

PAYLOAD = b'{"transfer":"CA0001-CHN01-CHN-1234-2025"}'


@pytest.fixture
def p256_key(tmp_path: Path) -> SoftHsmKey:
    require_softhsm()
    return create_softhsm_key(tmp_path / "hsm", token_label="chn-gateway", key_label="transfer-1")


def _open(uri: str) -> Pkcs11Signer:
    signer = signer_from_uri(uri)
    assert isinstance(signer, Pkcs11Signer)
    return signer


def test_p256_key_in_token_signs_and_verifies(p256_key: SoftHsmKey) -> None:
    with _open(p256_key.uri) as signer:
        assert signer.public_key == p256_key.public_key
        assert signer.public_key.algorithm is Algorithm.ECDSA_P256_SHA256
        assert signer.keyid == p256_key.public_key.keyid
        envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [signer])
    signature = envelope.signatures[0]
    assert signature.keyid == p256_key.public_key.keyid
    assert signature.sig[0] == 0x30  # converted from the token's raw r || s to DER
    result = verify_envelope(envelope, [p256_key.public_key], threshold=1)
    assert result.payload == PAYLOAD
    assert result.verified_keyids == (p256_key.public_key.keyid,)


def test_ed25519_key_in_token(tmp_path: Path) -> None:
    require_softhsm()
    key = create_softhsm_key(tmp_path / "hsm", algorithm=Algorithm.ED25519)
    with _open(key.uri) as signer:
        assert signer.public_key.algorithm is Algorithm.ED25519
        envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [signer])
    assert len(envelope.signatures[0].sig) == 64
    assert verify_envelope(envelope, [key.public_key], threshold=1).payload == PAYLOAD


def test_pin_from_environment(p256_key: SoftHsmKey, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_HSM_PIN", p256_key.pin)
    with _open(p256_key.uri_with(pin_env="TEST_HSM_PIN")) as signer:
        envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [signer])
    assert verify_envelope(envelope, [p256_key.public_key], 1).payload == PAYLOAD


def test_key_selected_by_id(p256_key: SoftHsmKey) -> None:
    key_id = "".join(f"%{b:02x}" for b in p256_key.key_label.encode())
    uri = p256_key.uri.replace(f"object={p256_key.key_label}", f"id={key_id}")
    with _open(uri) as signer:
        assert signer.public_key == p256_key.public_key


def test_two_tokens_in_one_process(tmp_path: Path) -> None:
    require_softhsm()
    first = create_softhsm_key(tmp_path / "a", token_label="chn-gateway")
    second = create_softhsm_key(tmp_path / "b", token_label="che-gateway")
    with _open(first.uri) as one, _open(second.uri) as two:
        envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [one, two])
    assert len(verify_envelope(envelope, [first.public_key, second.public_key], 2).verified_keyids) == 2


def test_two_signers_for_one_token(p256_key: SoftHsmKey) -> None:
    # PKCS#11 logins are per application: the second signer finds the token already logged in, and
    # closing the first one (which logs out) must not break the second.
    second_key = add_softhsm_key(p256_key, "transfer-2", algorithm=Algorithm.ED25519)
    first = _open(p256_key.uri)
    second = _open(second_key.uri)
    envelope = sign_envelope(TRANSFER_TYPE, PAYLOAD, [first, second])
    assert len(verify_envelope(envelope, [p256_key.public_key, second_key.public_key], 2).verified_keyids) == 2
    first.close()
    assert second_key.public_key.verify(second.sign(b"data"), b"data")
    third = _open(p256_key.uri)
    assert p256_key.public_key.verify(third.sign(b"data"), b"data")
    assert second_key.public_key.verify(second.sign(b"data"), b"data")
    second.close()
    third.close()


def test_wrong_pin(p256_key: SoftHsmKey, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_HSM_PIN", "0000")
    with pytest.raises(SignerError, match="PIN for PKCS#11 token 'chn-gateway' is wrong") as info:
        signer_from_uri(p256_key.uri_with(pin_env="TEST_HSM_PIN"))
    assert "0000" not in str(info.value)


def test_missing_token(p256_key: SoftHsmKey) -> None:
    uri = p256_key.uri.replace("token=chn-gateway", "token=nope")
    with pytest.raises(SignerError, match=r"no PKCS#11 token matches token 'nope'.*tokens present: 'chn-gateway'"):
        signer_from_uri(uri)


def test_missing_object(p256_key: SoftHsmKey) -> None:
    uri = p256_key.uri.replace("object=transfer-1", "object=nope")
    with pytest.raises(SignerError, match="no private key with label 'nope' in PKCS#11 token 'chn-gateway'"):
        signer_from_uri(uri)


def test_closed_signer_refuses(p256_key: SoftHsmKey) -> None:
    signer = _open(p256_key.uri)
    signer.close()
    signer.close()  # idempotent
    with pytest.raises(SignerError, match="is closed"):
        signer.sign(b"data")


def test_session_lost_is_reopened(p256_key: SoftHsmKey, monkeypatch: pytest.MonkeyPatch) -> None:
    with _open(p256_key.uri) as signer:
        # Re-initializing the module closes every session, as a token reset would.
        monkeypatch.setenv("SOFTHSM2_CONF", str(p256_key.conf_path))
        pkcs11.lib(str(p256_key.module_path)).reinitialize()
        signature = signer.sign(b"data")
    assert p256_key.public_key.verify(signature, b"data")


def test_a_token_out_of_reach_when_the_session_is_lost_is_used_again_once_back(
    p256_key: SoftHsmKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A session lost while its token cannot be reached (a network HSM away, a module being replaced) used to
    # leave the signer "closed" for good: a gateway signed nothing again until restarted.
    away = p256_key.module_path.with_name("away.so")
    with _open(p256_key.uri) as signer:
        monkeypatch.setenv("SOFTHSM2_CONF", str(p256_key.conf_path))
        pkcs11.lib(str(p256_key.module_path)).reinitialize()  # closes every session, as a token reset would
        p256_key.module_path.rename(away)
        for _ in range(2):
            with pytest.raises(SignerError, match=r"module .* does not exist"):
                signer.sign(b"data")
        away.rename(p256_key.module_path)
        signature = signer.sign(b"data")
        assert p256_key.public_key.verify(signature, b"data")
    with pytest.raises(SignerError, match="is closed"):
        signer.sign(b"data")


def test_a_token_removed_and_put_back_while_a_signer_runs_is_used_again(
    p256_key: SoftHsmKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SoftHSM2 answers CKR_GENERAL_ERROR for a token folder that went away, even once it is back, until the module
    # is initialized afresh: a gateway whose token was taken out for a moment signed nothing until restarted.
    monkeypatch.setenv("SOFTHSM2_CONF", str(p256_key.conf_path))  # as serve runs: initializing reads it again
    tokens = p256_key.conf_path.parent / "tokens"
    with _open(p256_key.uri) as signer:
        tokens.rename(tokens.with_name("tokens.away"))
        tokens.mkdir()
        with pytest.raises(SignerError, match="cannot be reopened now"):
            signer.sign(b"data")
        tokens.rmdir()
        tokens.with_name("tokens.away").rename(tokens)
        signature = signer.sign(b"data")
    assert p256_key.public_key.verify(signature, b"data")


def test_a_pin_the_token_refused_when_reopening_is_never_offered_again(
    p256_key: SoftHsmKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reopening a lost session logs in again. With the PIN changed on the token meanwhile, a signer that logged in
    # at every signature would lock the PIN of a token that counts failures (SoftHSM2 does not, real HSMs do).
    monkeypatch.setenv("SOFTHSM2_CONF", str(p256_key.conf_path))
    library = pkcs11.lib(str(p256_key.module_path))
    with _open(p256_key.uri) as signer:
        with library.get_token(token_label=p256_key.token_label).open(rw=True) as session:
            session.set_pin(p256_key.pin, "4321")
        library.reinitialize()  # the signer's session ends; its next signature logs in with the old PIN
        with pytest.raises(SignerError, match="PIN for PKCS#11 token 'chn-gateway' is wrong"):
            signer.sign(b"data")
        with library.get_token(token_label=p256_key.token_label).open(rw=True, user_pin="4321") as session:
            session.set_pin("4321", p256_key.pin)
        # The old PIN would now be right; the signer does not find out by trying it.
        with pytest.raises(SignerError, match=r"does not log in with that PIN again.*restart"):
            signer.sign(b"data")


@pytest.mark.parametrize("removed", [pkcs11.exceptions.DeviceRemoved, pkcs11.exceptions.TokenNotPresent])
def test_a_token_reported_removed_while_signing_is_reopened(
    p256_key: SoftHsmKey, removed: type[pkcs11.exceptions.PKCS11Error]
) -> None:
    # A device unplugged ends every session with it: the signer kept the dead session and answered "the token
    # refused to sign" for ever, even once the device was back.
    class Unplugged:
        def sign(self, data: bytes, mechanism: object) -> bytes:
            raise removed()

    with _open(p256_key.uri) as signer:
        signer._private = Unplugged()  # what the module answers on the session of a removed token
        signature = signer.sign(b"data")
    assert p256_key.public_key.verify(signature, b"data")


def test_child_process_uses_uri_with_env(p256_key: SoftHsmKey) -> None:
    code = (
        "import sys; from signing import signer_from_uri; s = signer_from_uri(sys.argv[1]); "
        "sys.stdout.write(s.sign(b'data').hex()); s.close()"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code, p256_key.uri],
        env={**p256_key.env, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert p256_key.public_key.verify(bytes.fromhex(result.stdout), b"data")


def test_a_private_key_of_another_pair_than_the_public_object_beside_it_is_refused(p256_key: SoftHsmKey) -> None:
    # The token's objects labelled "transfer-1": the public key of one pair and, after a key was regenerated and
    # relabelled, the private key of another. Signing under it would have every partner refuse every message.
    other = add_softhsm_key(p256_key, "transfer-2")
    token = pkcs11.lib(str(p256_key.module_path)).get_token(token_label=p256_key.token_label)
    with token.open(rw=True, user_pin=p256_key.pin) as session:
        session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label="transfer-1").destroy()
        relabelled = session.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label="transfer-2")
        relabelled[pkcs11.Attribute.LABEL] = "transfer-1"
    with pytest.raises(SignerError, match="does not match the public key object found with it") as info:
        signer_from_uri(p256_key.uri)
    assert p256_key.public_key.keyid in str(info.value)
    assert other.public_key.keyid not in str(info.value)


def test_a_key_of_an_unsupported_type_is_named_as_such(p256_key: SoftHsmKey) -> None:
    token = pkcs11.lib(str(p256_key.module_path)).get_token(token_label=p256_key.token_label)
    with token.open(rw=True, user_pin=p256_key.pin) as session:
        session.generate_keypair(pkcs11.KeyType.RSA, 2048, store=True, label="rsa-key", id=b"rsa-key")
    with pytest.raises(SignerError, match=r"label 'rsa-key' has PKCS#11 key type .*RSA.*only EC \(P-256\)"):
        signer_from_uri(p256_key.uri.replace("object=transfer-1", "object=rsa-key"))


def test_two_tokens_of_one_label_are_told_apart_by_serial(
    p256_key: SoftHsmKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            p256_key.token_label,
            "--pin",
            "1234",
            "--so-pin",
            "12345678",
        ],
        env={**p256_key.env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("SOFTHSM2_CONF", str(p256_key.conf_path))
    lib = pkcs11.lib(str(p256_key.module_path))
    lib.reinitialize()  # SoftHSM2 sees a token initialized since only then
    serials = sorted(t.serial.decode() for t in lib.get_tokens(token_label=p256_key.token_label))
    assert len(serials) == 2
    with pytest.raises(SignerError, match=rf"several PKCS#11 tokens match .*serials {', '.join(serials)}\).*serial="):
        signer_from_uri(p256_key.uri)
    opened = []
    for serial in serials:
        uri = p256_key.uri.replace(f"token={p256_key.token_label}", f"token={p256_key.token_label};serial={serial}")
        try:
            with _open(uri) as signer:
                opened.append(signer.public_key)
        except SignerError as exc:
            assert "no private key with label 'transfer-1'" in str(exc)  # the new token holds no key
    assert opened == [p256_key.public_key]
