"""Demo mTLS certificates (`gateway.tls`): what they contain, that they chain, and a real mutual-TLS handshake."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from gateway.tls import CertificateError, create_ca, issue_certificate, write_gateway_certificates

WHOAMI_SERVICE = "test.v1.WhoAmI"
WHOAMI_METHOD = f"/{WHOAMI_SERVICE}/Get"
CALL_TIMEOUT = 10.0


def common_name(certificate: x509.Certificate) -> str:
    """The subject common name of ``certificate``."""
    (attribute,) = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attribute.value)


def load(path: Path) -> x509.Certificate:
    """The PEM certificate at ``path``."""
    return x509.load_pem_x509_certificate(path.read_bytes())


# -- contents ------------------------------------------------------------------------------------------


def test_an_issued_certificate_chains_to_the_ca_and_names_the_party() -> None:
    ca_pem, ca_key_pem = create_ca("Test CA", days=30)
    cert_pem, key_pem = issue_certificate(ca_pem, ca_key_pem, "CHE", days=10)
    ca = x509.load_pem_x509_certificate(ca_pem)
    certificate = x509.load_pem_x509_certificate(cert_pem)

    ca_public = ca.public_key()
    assert isinstance(ca_public, ec.EllipticCurvePublicKey)
    assert certificate.signature_hash_algorithm is not None
    ca_public.verify(
        certificate.signature, certificate.tbs_certificate_bytes, ec.ECDSA(certificate.signature_hash_algorithm)
    )
    assert certificate.issuer == ca.subject
    assert common_name(certificate) == "CHE"
    assert common_name(ca) == "Test CA"

    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.IPv4Address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "CHE"]
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert b"-----BEGIN PRIVATE KEY-----" in key_pem
    lifetime = certificate.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=9) < lifetime <= dt.timedelta(days=10)


def test_an_issued_certificate_passes_path_validation_as_server_and_as_client() -> None:
    ca_pem, ca_key_pem = create_ca("Test CA")
    certificate = x509.load_pem_x509_certificate(issue_certificate(ca_pem, ca_key_pem, "CHN")[0])
    builder = PolicyBuilder().store(Store([x509.load_pem_x509_certificate(ca_pem)]))

    for name in (x509.DNSName("CHN"), x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))):
        chain = builder.build_server_verifier(name).verify(certificate, [])
        assert chain[0] == certificate
    client = builder.build_client_verifier().verify(certificate, [])
    assert client.chain[0] == certificate


def test_a_certificate_never_outlives_its_ca() -> None:
    ca_pem, ca_key_pem = create_ca("Short-lived CA", days=1)
    ca = x509.load_pem_x509_certificate(ca_pem)

    certificate = x509.load_pem_x509_certificate(issue_certificate(ca_pem, ca_key_pem, "CHE", days=365)[0])

    assert certificate.not_valid_after_utc == ca.not_valid_after_utc


def test_issuing_refuses_a_common_name_that_is_not_a_dns_label_and_a_mismatched_ca_key() -> None:
    ca_pem, ca_key_pem = create_ca("Test CA")
    _, other_key_pem = create_ca("Other CA")

    with pytest.raises(CertificateError, match="not a DNS label"):
        issue_certificate(ca_pem, ca_key_pem, "C H E")
    with pytest.raises(CertificateError, match="does not belong to the CA certificate"):
        issue_certificate(ca_pem, other_key_pem, "CHE")
    with pytest.raises(CertificateError, match="not a CA certificate"):
        leaf_pem, leaf_key_pem = issue_certificate(ca_pem, ca_key_pem, "CHE")
        issue_certificate(leaf_pem, leaf_key_pem, "CHN")


# -- files ---------------------------------------------------------------------------------------------


def test_write_gateway_certificates_writes_private_keys_with_mode_0600(tmp_path: Path) -> None:
    written = write_gateway_certificates(tmp_path / "tls", ["CHN", "CHE"], "Test CA", days=30)

    assert not written.reused_ca
    assert written.issued == {
        "CHN": (tmp_path / "tls" / "chn.crt", tmp_path / "tls" / "chn.key"),
        "CHE": (tmp_path / "tls" / "che.crt", tmp_path / "tls" / "che.key"),
    }
    for name in ("ca.key", "chn.key", "che.key"):
        assert stat.S_IMODE((tmp_path / "tls" / name).stat().st_mode) == 0o600
    ca = load(tmp_path / "tls" / "ca.crt")
    for party in ("CHN", "CHE"):
        certificate = load(tmp_path / "tls" / f"{party.lower()}.crt")
        assert common_name(certificate) == party
        certificate.verify_directly_issued_by(ca)


def test_write_gateway_certificates_reuses_the_ca_to_add_a_partner_later(tmp_path: Path) -> None:
    write_gateway_certificates(tmp_path, ["CHN", "CHE"], "Test CA")
    ca_before = (tmp_path / "ca.crt").read_bytes()

    written = write_gateway_certificates(tmp_path, ["SGP"], "Another name")

    assert written.reused_ca
    assert written.ca_name == "Test CA"
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    load(tmp_path / "sgp.crt").verify_directly_issued_by(load(tmp_path / "ca.crt"))


def test_write_gateway_certificates_overwrites_nothing(tmp_path: Path) -> None:
    write_gateway_certificates(tmp_path, ["CHE"], "Test CA")
    before = (tmp_path / "che.key").read_bytes()

    with pytest.raises(CertificateError, match="refusing to overwrite"):
        write_gateway_certificates(tmp_path, ["SGP", "CHE"], "Test CA")

    assert (tmp_path / "che.key").read_bytes() == before
    assert not (tmp_path / "sgp.crt").exists()


def test_write_gateway_certificates_refuses_half_a_ca(tmp_path: Path) -> None:
    write_gateway_certificates(tmp_path, ["CHE"], "Test CA")
    (tmp_path / "ca.key").unlink()

    with pytest.raises(CertificateError, match=r"ca\.crt exists but .*ca\.key does not"):
        write_gateway_certificates(tmp_path, ["SGP"], "Test CA")


# -- a real mutual-TLS handshake -----------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A gRPC server with mTLS on loopback, serving health and a method that answers the peer's common name."""

    port: int
    folder: Path

    def credentials(self, party: str | None, folder: Path | None = None) -> grpc.ChannelCredentials:
        """Client credentials trusting the server's CA, with ``party``'s certificate (from ``folder``) or none."""
        root = (self.folder / "ca.crt").read_bytes()
        if party is None:
            return grpc.ssl_channel_credentials(root)
        source = folder or self.folder
        return grpc.ssl_channel_credentials(
            root,
            (source / f"{party.lower()}.key").read_bytes(),
            (source / f"{party.lower()}.crt").read_bytes(),
        )

    def channel(self, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
        """A channel to the server that expects the server certificate of ``CHE``."""
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.port}", credentials, options=[("grpc.ssl_target_name_override", "CHE")]
        )


async def _whoami(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    names = context.auth_context().get("x509_common_name") or []
    return b",".join(names)


@pytest_asyncio.fixture
async def che_server(tmp_path: Path) -> AsyncIterator[Server]:
    """The CHE side, with certificates for CHE and CHN issued by one demo CA in ``tmp_path``."""
    write_gateway_certificates(tmp_path, ["CHE", "CHN"], "Test CA", days=1)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), server)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(WHOAMI_SERVICE, {"Get": grpc.unary_unary_rpc_method_handler(_whoami)}),)
    )
    credentials = grpc.ssl_server_credentials(
        [((tmp_path / "che.key").read_bytes(), (tmp_path / "che.crt").read_bytes())],
        root_certificates=(tmp_path / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield Server(port=port, folder=tmp_path)
    finally:
        await server.stop(None)


@pytest.mark.asyncio
async def test_mutual_tls_handshake_gives_the_server_the_client_party(che_server: Server) -> None:
    async with che_server.channel(che_server.credentials("CHN")) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        peer: bytes = await channel.unary_unary(WHOAMI_METHOD, None, None)(b"", timeout=CALL_TIMEOUT)

    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert peer == b"CHN"


@pytest.mark.asyncio
async def test_a_client_without_a_certificate_is_refused(che_server: Server) -> None:
    async with che_server.channel(che_server.credentials(None)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary(WHOAMI_METHOD, None, None)(b"", timeout=CALL_TIMEOUT)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.asyncio
async def test_a_client_certificate_from_another_ca_is_refused(che_server: Server, tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_gateway_certificates(other, ["CHN"], "Impostor CA", days=1)

    async with che_server.channel(che_server.credentials("CHN", other)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary(WHOAMI_METHOD, None, None)(b"", timeout=CALL_TIMEOUT)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_pinned_self_signed_certificate_may_be_the_ca_but_a_leaf_a_ca_issued_may_not(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import hashes, serialization

    from gateway.config import ConfigError, TLSConfig
    from gateway.node import check_tls

    ca_pem, ca_key_pem = create_ca("partners CA")
    chn_pem, chn_key_pem = issue_certificate(ca_pem, ca_key_pem, "CHN")
    (tmp_path / "chn.crt").write_bytes(chn_pem)
    (tmp_path / "chn.key").write_bytes(chn_key_pem)
    # A partner's own self-signed certificate (CA:FALSE), pinned as the one certificate to trust.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CHE")])
    now = dt.datetime.now(dt.UTC)
    pinned = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "pinned.crt").write_bytes(pinned.public_bytes(serialization.Encoding.PEM))
    check_tls(TLSConfig(tmp_path / "chn.crt", tmp_path / "chn.key", tmp_path / "pinned.crt"), {"CHE": "CHE"})
    with pytest.raises(ConfigError, match=r"tls\.ca_certificate: .* is no CA's"):
        check_tls(TLSConfig(tmp_path / "chn.crt", tmp_path / "chn.key", tmp_path / "chn.crt"), {"CHE": "CHE"})
