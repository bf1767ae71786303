"""The named table of attacks on the partner exchange, each over gRPC and over HTTP/JSON, with mTLS on.

Every case is refused with its response code, and the receiving gateway records nothing: no transfer, no
block, no ledger entry, no message, no change to a channel or to the trust it holds.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from carbon_gateway.v1 import partner_pb2
from gateway import wire
from gateway.domain.errors import ResponseCode
from gateway.exchange import ExchangeSettings
from gateway.harness import Network, start_network, tls_config
from gateway.http.app import DELIVER_PATH
from gateway.node import GatewayNode
from gateway.rpc.partner import DELIVER_METHOD
from signing import CryptoSigner, Envelope, Role, Signature, Signer, TrustDocument, sign_envelope, sign_trust_document
from tests.integration.harness import Crafter, settle

STATEMENT_V2 = wire.STATEMENT_PAYLOAD_TYPE.replace("v1", "v2")
CAP = 64 * 1024


class Clock:
    """A clock the test can move; every gateway of the network reads it."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class World:
    """CHN, CHE and SGP gateways over mTLS with HTTP on, a movable clock, and CHN's spare keys."""

    network: Network
    clock: Clock
    spare: list[CryptoSigner]

    @property
    def che(self) -> GatewayNode:
        return self.network["CHE"]

    async def crafter(self, signer: Signer | None = None) -> Crafter:
        """A crafter that continues CHN's real channel to CHE."""
        async with self.network["CHN"].store.read() as tx:
            channel = await tx.outgoing_channel("CHE")
        return Crafter(
            signer=signer or self.network.signers["CHN"],
            sender="CHN",
            receiver="CHE",
            channel=channel,
            clock=self.clock,
        )


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = Clock()

    def settings(party: str) -> ExchangeSettings:
        allowed = frozenset({wire.STATEMENT_PAYLOAD_TYPE, STATEMENT_V2})
        return ExchangeSettings(self_party=party, max_envelope_bytes=CAP, allowed_payload_types=allowed)

    network = await start_network(tmp_path, ("CHN", "CHE", "SGP"), tls=True, http=True, settings=settings, clock=clock)
    try:
        yield World(network, clock, [CryptoSigner.generate() for _ in range(3)])
    finally:
        await network.stop()


async def deliver(
    world: World, envelope: Envelope | bytes, transport: str, as_party: str = "CHN"
) -> partner_pb2.Receipt:
    """Deliver to CHE over ``transport`` from a connection holding ``as_party``'s certificate."""
    tls = tls_config(world.network.workdir, as_party)
    che = world.network["CHE"]
    if transport == "grpc":
        raw = envelope if isinstance(envelope, bytes) else wire.envelope_to_bytes(envelope)
        credentials = grpc.ssl_channel_credentials(
            tls.ca_certificate.read_bytes(), tls.private_key.read_bytes(), tls.certificate.read_bytes()
        )
        options = [("grpc.ssl_target_name_override", "CHE"), ("grpc.max_send_message_length", 8 * CAP)]
        async with grpc.aio.secure_channel(che.partner_address, credentials, options=options) as channel:
            answer: bytes = await channel.unary_unary(DELIVER_METHOD, None, None)(raw, timeout=10)
        payload = wire.envelope_from_bytes(answer).payload
    else:
        body = envelope if isinstance(envelope, bytes) else envelope.to_json()
        context = ssl.create_default_context(cafile=str(tls.ca_certificate))
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
        async with (
            aiohttp.ClientSession() as session,
            session.post(che.http_url + DELIVER_PATH, data=body, ssl=context) as response,
        ):
            answer = await response.read()
        payload = Envelope.from_json(answer).payload
    receipt = partner_pb2.Receipt()
    receipt.ParseFromString(payload)
    return receipt


async def recorded(world: World) -> tuple[object, ...]:
    """Everything CHE has recorded, trust included, once the outboxes have drained."""
    che = world.che
    await settle(*world.network.nodes.values())
    async with che.store.read() as tx:
        channels = [(await tx.incoming_channel(p), await tx.outgoing_channel(p)) for p in ("CHN", "SGP")]
        trust = [await tx.latest_trust_document(p) for p in ("CHN", "SGP")]
        return (
            await tx.list_transfers(),
            await tx.list_blocks(),
            await tx.list_ledger(),
            await tx.list_messages(),
            channels,
            trust,
            await tx.count_held(),
            che.partners.parties()["CHN"].trusted.version,
        )


def query(transfer_id: str = "t-1") -> dict[str, object]:
    return {"status_query": partner_pb2.StatusQuery(transfer_id=transfer_id)}


def chn_document(
    world: World,
    version: int,
    keys: list[Signer],
    *,
    transfer_threshold: int = 1,
    trust_keys: list[Signer] | None = None,
    days: int = 30,
) -> TrustDocument:
    trust_keys = trust_keys or keys[:1]
    every = {s.public_key.keyid: s.public_key for s in [*keys, *trust_keys]}
    return TrustDocument(
        party="CHN",
        version=version,
        expires=world.clock.now + dt.timedelta(days=days),
        keys=every,
        roles={
            "trust": Role(tuple(s.keyid for s in trust_keys), 1),
            "transfer": Role(tuple(s.keyid for s in keys), transfer_threshold),
        },
    )


async def push(
    world: World, document: TrustDocument, signers: list[Signer], transport: str = "grpc"
) -> partner_pb2.Receipt:
    return await deliver(world, sign_trust_document(document, signers), transport)


# Each case prepares what it needs (setup, outside the "nothing recorded" window) and returns the envelope
# to deliver and the code expected.
Case = Callable[[World, str], Awaitable[tuple[Envelope | bytes, ResponseCode]]]


async def tampered_payload(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    payload, _ = (await world.crafter()).statement(**query("t-1"))
    signed = (await world.crafter()).envelope(payload)
    return Envelope(
        payload.replace(b"t-1", b"t-2"), signed.payload_type, signed.signatures
    ), ResponseCode.SIGNATURE_INVALID


async def tampered_payload_type(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    crafter = await world.crafter()
    payload, _ = crafter.statement(**query())
    signed = crafter.envelope(payload)
    return Envelope(payload, STATEMENT_V2, signed.signatures), ResponseCode.SIGNATURE_INVALID


async def unknown_key(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    crafter = await world.crafter(CryptoSigner.generate())
    payload, _ = crafter.statement(**query())
    return crafter.envelope(payload), ResponseCode.KEY_UNKNOWN_OR_REVOKED


async def revoked_key(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    old = world.network.signers["CHN"]
    new = world.spare[0]
    receipt = await push(world, chn_document(world, 2, [new]), [old, new])
    assert ResponseCode(receipt.code) is ResponseCode.OK, receipt.detail
    crafter = await world.crafter(old)
    payload, _ = crafter.statement(**query())
    return crafter.envelope(payload), ResponseCode.KEY_UNKNOWN_OR_REVOKED


async def _two_of_three(world: World) -> list[Signer]:
    old = world.network.signers["CHN"]
    keys: list[Signer] = [old, world.spare[0], world.spare[1]]
    receipt = await push(world, chn_document(world, 2, keys, transfer_threshold=2, trust_keys=[old]), [old])
    assert ResponseCode(receipt.code) is ResponseCode.OK, receipt.detail
    return keys


async def threshold_not_met(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    keys = await _two_of_three(world)
    crafter = await world.crafter(keys[1])
    payload, _ = crafter.statement(**query())
    return crafter.envelope(payload), ResponseCode.THRESHOLD_NOT_MET


async def one_key_signing_twice(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    keys = await _two_of_three(world)
    crafter = await world.crafter(keys[1])
    payload, _ = crafter.statement(**query())
    once = sign_envelope(wire.STATEMENT_PAYLOAD_TYPE, payload, [keys[1]]).signatures[0]
    twice = (once, Signature(keyid=once.keyid.upper(), sig=once.sig), Signature(keyid="", sig=once.sig))
    return Envelope(payload, wire.STATEMENT_PAYLOAD_TYPE, twice), ResponseCode.THRESHOLD_NOT_MET


async def expired_trust_document(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    world.clock.now += dt.timedelta(days=400)  # past the one-year expiry of CHN's document
    crafter = await world.crafter()
    payload, _ = crafter.statement(**query())
    return crafter.envelope(payload), ResponseCode.TRUST_DOCUMENT_EXPIRED


async def rolled_back_trust_document(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    old = world.network.signers["CHN"]
    assert ResponseCode((await push(world, chn_document(world, 2, [old]), [old])).code) is ResponseCode.OK
    return world.network.trust["CHN"], ResponseCode.TRUST_UPDATE_REFUSED


async def rotation_signed_only_by_old_keys(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    old, new = world.network.signers["CHN"], world.spare[0]
    return sign_trust_document(chn_document(world, 2, [new]), [old]), ResponseCode.TRUST_UPDATE_REFUSED


async def rotation_signed_only_by_new_keys(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    new = world.spare[0]
    return sign_trust_document(chn_document(world, 2, [new]), [new]), ResponseCode.TRUST_UPDATE_REFUSED


async def replay_of_old_sequence(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    crafter = await world.crafter()
    first, _ = crafter.statement(**query("a"))
    receipt = await deliver(world, crafter.envelope(first), transport)
    assert receipt.taken_in
    crafter.channel = dataclasses.replace(crafter.channel, last_sequence=crafter.channel.last_sequence - 1)
    again, _ = crafter.statement(**query("b"))  # a new message ID reusing the sequence number just used
    return crafter.envelope(again), ResponseCode.REPLAY


async def wrong_receiver(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    crafter = await world.crafter()
    crafter.receiver = "SGP"
    payload, _ = crafter.statement(**query())
    return crafter.envelope(payload), ResponseCode.WRONG_RECIPIENT


async def expired_message(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    crafter = await world.crafter()
    crafter.lifetime = dt.timedelta(minutes=10)
    payload, _ = crafter.statement(**query())
    world.clock.now += dt.timedelta(minutes=16)  # past expiry plus the five-minute skew
    return crafter.envelope(payload), ResponseCode.MESSAGE_EXPIRED


async def payload_type_not_allowed(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    crafter = await world.crafter()
    payload, _ = crafter.statement(**query())
    return crafter.envelope(payload, "application/vnd.example.other+json"), ResponseCode.UNSUPPORTED_PAYLOAD_TYPE


async def oversize_envelope(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    crafter = await world.crafter()
    payload, _ = crafter.statement(status_query=partner_pb2.StatusQuery(transfer_id="x" * (CAP + 1)))
    return crafter.envelope(payload), ResponseCode.ENVELOPE_TOO_LARGE


async def mtls_identity_mismatch(world: World, transport: str) -> tuple[Envelope | bytes, ResponseCode]:
    crafter = await world.crafter()
    payload, _ = crafter.statement(**query())
    return crafter.envelope(payload), ResponseCode.PEER_IDENTITY_MISMATCH


ATTACKS: dict[str, Case] = {
    "tampered payload": tampered_payload,
    "tampered payload type": tampered_payload_type,
    "unknown key": unknown_key,
    "revoked key": revoked_key,
    "threshold not met": threshold_not_met,
    "threshold met by one key signing twice": one_key_signing_twice,
    "expired trust document": expired_trust_document,
    "rolled-back trust document": rolled_back_trust_document,
    "rotation signed only by the old keys": rotation_signed_only_by_old_keys,
    "rotation signed only by the new keys": rotation_signed_only_by_new_keys,
    "replay of an old sequence number": replay_of_old_sequence,
    "wrong receiver": wrong_receiver,
    "expired message": expired_message,
    "payload type not allowed": payload_type_not_allowed,
    "oversize envelope": oversize_envelope,
    "mTLS identity mismatch": mtls_identity_mismatch,
}


@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.asyncio
async def test_attack_is_refused_with_its_code_and_records_nothing(world: World, attack: str, transport: str) -> None:
    envelope, expected = await ATTACKS[attack](world, transport)
    before = await recorded(world)
    as_party = "SGP" if attack == "mTLS identity mismatch" else "CHN"
    receipt = await deliver(world, envelope, transport, as_party=as_party)
    assert ResponseCode(receipt.code) is expected, receipt.detail
    assert not receipt.taken_in
    assert await recorded(world) == before


@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.asyncio
async def test_replay_of_a_delivered_message_returns_the_same_receipt_with_no_second_effect(
    world: World, transport: str
) -> None:
    crafter = await world.crafter()
    payload, _ = crafter.statement(**query())
    envelope = crafter.envelope(payload)
    first = await deliver(world, envelope, transport)
    assert first.taken_in
    after_first = await recorded(world)
    again = await deliver(world, envelope, transport)
    assert again == first
    assert await recorded(world) == after_first


@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.asyncio
async def test_a_sequence_gap_holds_the_statement_until_the_gap_is_filled(world: World, transport: str) -> None:
    crafter = await world.crafter()
    first, _ = crafter.statement(**query("first"))
    second, _ = crafter.statement(**query("second"))
    before = await recorded(world)
    held = await deliver(world, crafter.envelope(second), transport)
    assert ResponseCode(held.code) is ResponseCode.SEQUENCE_GAP
    assert not held.taken_in
    assert held.resend_from == crafter.channel.last_sequence - 1
    after = await recorded(world)
    assert after[:6] == before[:6]  # no effect, no channel move
    assert after[6] == 1  # but the statement is held
    filled = await deliver(world, crafter.envelope(first), transport)
    assert filled.taken_in
    async with world.che.store.read() as tx:
        channel = await tx.incoming_channel("CHN")
        assert await tx.count_held() == 0
    assert channel.last_sequence == crafter.channel.last_sequence  # the held statement was applied too


def certificate_with_names(ca_pem: bytes, ca_key_pem: bytes, names: list[str]) -> tuple[bytes, bytes]:
    """A client certificate the CA issues, whose subject lists each of ``names`` as a common name; return its PEM
    and its key's."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name) for name in names]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_with_names(world: World, stem: str, names: list[str]) -> None:
    """`certificate_with_names` from the network's demo CA, written as ``tls/<stem>.crt`` and ``.key``."""
    folder = world.network.workdir / "tls"
    certificate, key = certificate_with_names((folder / "ca.crt").read_bytes(), (folder / "ca.key").read_bytes(), names)
    (folder / f"{stem}.crt").write_bytes(certificate)
    (folder / f"{stem}.key").write_bytes(key)


@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.parametrize("names", [["CHN", "SGP"], ["SGP", "CHN"]])
@pytest.mark.asyncio
async def test_a_certificate_naming_two_partners_is_taken_for_neither(
    world: World, transport: str, names: list[str]
) -> None:
    # Each path took the subject's first common name: a certificate the CA issued to CN=CHN, CN=SGP delivered CHN's
    # statements, and one listing them the other way round was SGP's connection.
    issue_with_names(world, "two-names", names)
    crafter = await world.crafter()
    payload, _ = crafter.statement(**query())
    before = await recorded(world)
    receipt = await deliver(world, crafter.envelope(payload), transport, as_party="two-names")
    assert ResponseCode(receipt.code) is ResponseCode.PEER_IDENTITY_MISMATCH, receipt.detail
    assert "names 2 common names ('CHN', 'SGP')" in receipt.detail or "('SGP', 'CHN')" in receipt.detail
    assert not receipt.taken_in
    assert await recorded(world) == before
    # The partner's own certificate, naming it alone, still delivers.
    assert (await deliver(world, crafter.envelope(payload), transport)).taken_in


def send_and_hang_up(world: World, body: bytes, as_party: str) -> None:
    """POST ``body`` to CHE's JSON path over a connection holding ``as_party``'s certificate, and close the
    connection as soon as the whole request is sent, without reading the answer."""
    tls = tls_config(world.network.workdir, as_party)
    context = ssl.create_default_context(cafile=str(tls.ca_certificate))
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    url = urlsplit(world.che.http_url)
    assert url.hostname is not None and url.port is not None
    head = (
        f"POST {DELIVER_PATH} HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with (
        socket.create_connection((url.hostname, url.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="CHE") as connection,
    ):
        connection.sendall(head + body)


@pytest.mark.asyncio
async def test_a_json_delivery_whose_connection_closes_at_once_is_still_bound_to_its_certificate(
    world: World,
) -> None:
    # The certificate was read after the body: once the client had closed its connection aiohttp had no transport
    # left, and the delivery passed for one without mTLS, so CHN's statement sent over SGP's connection was taken in.
    crafter = await world.crafter()
    payload, _ = crafter.statement(**query())
    before = await recorded(world)
    for _ in range(3):
        await asyncio.to_thread(send_and_hang_up, world, crafter.envelope(payload).to_json(), "SGP")
    for _ in range(20):
        await asyncio.sleep(0.05)
        async with world.che.store.read() as tx:
            assert (await tx.incoming_channel("CHN")).last_sequence == 0
    assert await recorded(world) == before
    # Over CHN's own certificate, the same statement is taken in.
    assert (await deliver(world, crafter.envelope(payload), "http")).taken_in


def _der_length(length: int) -> bytes:
    if length < 128:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def printable_string_certificate(
    ca_pem: bytes, ca_key_pem: bytes, name: bytes, organization: bytes | None = None
) -> tuple[bytes, bytes]:
    """A client certificate the CA issues, whose common name is ``name`` as a PrintableString, which may hold bytes
    that type does not allow (`cryptography` writes no such certificate, so its bytes are put in the signed part by
    hand), and with ``organization`` an organization name as a PrintableString before it; return its PEM and its
    key's."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    placeholder = "Q" * len(name)
    organization_placeholder = "R" * len(organization or b"")
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, placeholder)]
    if organization is not None:
        subject.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization_placeholder))
    template = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    utf8 = b"\x0c" + bytes([len(name)]) + placeholder.encode()
    assert template.tbs_certificate_bytes.count(utf8) == 1
    signed = template.tbs_certificate_bytes.replace(utf8, b"\x13" + bytes([len(name)]) + name)
    if organization is not None:
        utf8 = b"\x0c" + bytes([len(organization)]) + organization_placeholder.encode()
        assert signed.count(utf8) == 1
        signed = signed.replace(utf8, b"\x13" + bytes([len(organization)]) + organization)
    signature = ca_key.sign(signed, ec.ECDSA(hashes.SHA256()))
    ecdsa_with_sha256 = bytes.fromhex("300a06082a8648ce3d040302")
    body = signed + ecdsa_with_sha256 + b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    der = b"\x30" + _der_length(len(body)) + body
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    return pem, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_with_printable_string(world: World, stem: str, name: bytes, organization: bytes | None = None) -> None:
    """`printable_string_certificate` from the network's demo CA, written as ``tls/<stem>.crt`` and ``.key``."""
    folder = world.network.workdir / "tls"
    certificate, key = printable_string_certificate(
        (folder / "ca.crt").read_bytes(), (folder / "ca.key").read_bytes(), name, organization
    )
    (folder / f"{stem}.crt").write_bytes(certificate)
    (folder / f"{stem}.key").write_bytes(key)


@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.asyncio
async def test_a_certificate_name_with_a_nul_byte_is_not_taken_for_the_name_before_it(
    world: World, transport: str
) -> None:
    # gRPC reports a common name only up to a NUL byte: a certificate issued to CN=CHN\0.example delivered CHN's
    # statements over gRPC (the HTTP path saw the whole name and refused it).
    issue_with_printable_string(world, "nul-name", b"CHN\x00.example")
    crafter = await world.crafter()
    payload, _ = crafter.statement(**query())
    before = await recorded(world)
    receipt = await deliver(world, crafter.envelope(payload), transport, as_party="nul-name")
    assert ResponseCode(receipt.code) is ResponseCode.PEER_IDENTITY_MISMATCH, receipt.detail
    assert not receipt.taken_in
    assert await recorded(world) == before


@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.asyncio
async def test_a_partner_certificate_with_another_attribute_cryptography_refuses_still_delivers(
    world: World, transport: str
) -> None:
    # An O=Ministry_of_Ecology written as a PrintableString (which has no '_'; CAs write such names) made
    # `cryptography` refuse the whole certificate, and gRPC deliveries of the partner it names, CN=CHN, were refused
    # as from "a certificate whose subject cannot be read (... a NUL byte ...)"; gRPC and OpenSSL take it, and
    # the HTTP path delivered.
    issue_with_printable_string(world, "odd-organization", b"CHN", organization=b"Ministry_of_Ecology")
    crafter = await world.crafter()
    payload, _ = crafter.statement(**query())
    receipt = await deliver(world, crafter.envelope(payload), transport, as_party="odd-organization")
    assert receipt.taken_in, receipt.detail
