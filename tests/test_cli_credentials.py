"""The command line's operator API credentials on a real TLS gateway with token callers: `watch` (a server-
streaming call) and `call` send the bearer token and verify the gateway against ``--ca-cert``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, records_pb2
from gateway.cli import main
from gateway.config import OperatorTLSConfig
from gateway.demo import DEMO_AUTHORIZATION, demo_block
from gateway.domain.access import OperatorCaller, Role
from gateway.node import GatewayNode
from gateway.rpc.auth import OperatorAccess
from tests.integration.harness import proposal_request
from tests.integration.test_operator_auth import TOKEN_CALLERS, TOKENS, _certificates, _node


@dataclass
class TLSGateway:
    """A gateway whose operator API has server-only TLS and token callers, with one transfer proposed (one
    change in its feed), and the files the command line is given."""

    node: GatewayNode
    ca: Path
    reader_token: Path


@pytest_asyncio.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[TLSGateway]:
    certificates = _certificates(tmp_path / "pki", "operator CA")
    certificate, key = certificates.issue("localhost")
    node = await _node(
        tmp_path / "node", OperatorAccess(callers=TOKEN_CALLERS), operator_tls=OperatorTLSConfig(certificate, key)
    )
    try:
        channel = grpc.aio.secure_channel(node.operator_address, certificates.credentials())
        async with channel:
            stub = operator_pb2_grpc.OperatorServiceStub(channel)
            metadata = (("authorization", f"Bearer {TOKENS[Role.ADMINISTRATOR]}"),)
            account = records_pb2.Account(account_id="CN-PO-0001", holder_name="Owner", account_type="project owner")
            await stub.OpenAccount(
                operator_pb2.OpenAccountRequest(idempotency_key="open", account=account), metadata=metadata
            )
            await stub.RegisterAuthorization(
                operator_pb2.RegisterAuthorizationRequest(idempotency_key="auth", authorization=DEMO_AUTHORIZATION),
                metadata=metadata,
            )
            holding = await stub.RegisterIssuance(
                operator_pb2.RegisterIssuanceRequest(
                    idempotency_key="issue", account_id="CN-PO-0001", block=demo_block()
                ),
                metadata=metadata,
            )
            await stub.ProposeTransfer(proposal_request(holding.block, 1, 10, "t1"), metadata=metadata)
        reader = tmp_path / "reader.token"
        reader.write_text(TOKENS[Role.READ_ONLY] + "\n")
        yield TLSGateway(node, certificates.ca_path, reader)
    finally:
        await node.stop(0)


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.asyncio
async def test_watch_sends_the_token_over_tls(
    gateway: TLSGateway, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CARBON_GATEWAY_TOKEN_FILE", raising=False)
    watch = ("watch", "--address", gateway.node.operator_address, "--ca-cert", str(gateway.ca), "--limit", "1")
    code, out, err = await _cli(capsys, *watch, "--token-file", str(gateway.reader_token))
    assert code == 0, err
    [line] = [json.loads(line) for line in out.splitlines()]
    assert line["position"] == "1" and line["kind"] == "TRANSFER"
    code, out, err = await _cli(capsys, *watch)
    assert (code, out) == (1, "") and "CALLER_UNAUTHENTICATED" in err and err.count("\n") == 1, err


@pytest.mark.asyncio
async def test_call_takes_the_shared_credential_options(
    gateway: TLSGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CARBON_GATEWAY_TOKEN_FILE", raising=False)
    call = ("call", "ListTransfers", "--address", gateway.node.operator_address, "--ca-cert", str(gateway.ca))
    code, out, err = await _cli(capsys, *call, "--token-file", str(gateway.reader_token))
    assert code == 0, err
    [transfer] = json.loads(out)["transfers"]
    assert transfer["state"] == "CHECKED"
    # The streaming method carries the token too: it prints the change, then follows until the timeout.
    watch = ("call", "WatchChanges", *call[2:], "--timeout", "3")
    code, out, err = await _cli(capsys, *watch, "--token-file", str(gateway.reader_token))
    assert [json.loads(line)["position"] for line in out.splitlines()] == ["1"] and "DEADLINE_EXCEEDED" in err, err
    assert "start the gateway" not in err, err  # it answered: the stream ran to its deadline
    code, out, err = await _cli(capsys, *call)
    assert (code, out) == (1, "") and "CALLER_UNAUTHENTICATED" in err and err.count("\n") == 1, err
    code, _, err = await _cli(capsys, *call, "--token-file", str(tmp_path / "absent"))
    assert code == 2 and "--token-file" in err and err.count("\n") == 1, err
    code, _, err = await _cli(capsys, *call, "--client-cert", str(gateway.ca))
    assert code == 2 and "--client-key" in err and err.count("\n") == 1, err


@pytest.mark.asyncio
@pytest.mark.parametrize("option", ["--token-file", "--ca-cert"])
async def test_a_credential_file_that_is_a_device_is_refused_without_reading_it(
    capsys: pytest.CaptureFixture[str], option: str
) -> None:
    code, _, err = await _cli(capsys, "ledger", "summary", "--address", "127.0.0.1:1", option, "/dev/zero")
    assert code == 2
    assert f"{option} /dev/zero: cannot be read: not a regular file" in err


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("option", "content", "said"),
    [
        ("--token-file", "t\u00f6k\n", "printable ASCII"),
        ("--token-file", "tok\u00a0en\n", "printable ASCII"),
        ("--ca-cert", "not a certificate\n", "does not hold PEM certificates"),
        ("--client-cert", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "PEM certificates"),
        ("--client-key", "garbage\n", "does not hold an unencrypted PEM private key"),
    ],
    ids=["token-non-ascii", "token-no-break-space", "ca-cert-garbage", "client-cert-bad-pem", "client-key-garbage"],
)
async def test_a_credential_file_gateways_cannot_use_is_one_line_naming_its_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, content: str, said: str
) -> None:
    """Refused before any call: gRPC would fail the call with a traceback (a header it cannot send) or only log
    its own complaint and answer UNAVAILABLE."""
    bad = tmp_path / "bad"
    bad.write_text(content, encoding="utf-8")
    argv = ["ledger", "summary", "--address", "127.0.0.1:1", option, str(bad)]
    if option == "--client-cert":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = tmp_path / "client.key"
        key.write_bytes(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        argv += ["--client-key", str(key)]
    elif option == "--client-key":
        argv += ["--client-cert", str(bad)]
    code, out, err = await _cli(capsys, *argv)
    assert (code, out) == (2, "") and err.count("\n") == 1, err
    assert f"{option} {bad}: " in err and said in err, err


@pytest.mark.asyncio
async def test_a_client_key_that_is_not_the_certificates_is_one_line_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gRPC failed the call as UNAVAILABLE ("Failed to create security handshaker"), exit status 1, naming
    neither file."""
    certificates = _certificates(tmp_path / "pki", "operator CA")
    certificate, _ = certificates.issue("ops-1")
    _, other_key = certificates.issue("ops-2")
    argv = ["ledger", "summary", "--address", "127.0.0.1:1", "--ca-cert", str(certificates.ca_path)]
    code, out, err = await _cli(capsys, *argv, "--client-cert", str(certificate), "--client-key", str(other_key))
    assert (code, out) == (2, "") and err.count("\n") == 1, err
    assert f"--client-key {other_key}: not the key of the certificate --client-cert {certificate}" in err, err


def test_a_configuration_whose_operator_tls_has_client_ca_needs_a_client_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With client_ca every connection must present a certificate; without --client-cert the gateway would end
    the handshake and gRPC would say only UNAVAILABLE, as if no gateway were there: refused before any call."""
    from tests.processes import free_port

    folder = tmp_path / "chn"
    assert (
        main(["init", "--party", "CHN", "--operator-listen", f"127.0.0.1:{free_port()}", "--demo-tls", str(folder)])
        == 0
    )
    config = folder / "gateway.toml"
    text = config.read_text().replace("unauthenticated_loopback = true", "unauthenticated_loopback = false")
    text = text.replace("[partner]\n", '[operator.tls]\ncertificate = "tls/chn.crt"\nprivate_key = "tls/chn.key"\n'
                        'client_ca = "tls/ca.crt"\n\n[partner]\n', 1)  # fmt: skip
    config.write_text(text)
    capsys.readouterr()
    assert main(["call", "ListTrust", "--config", str(config), "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert "--client-cert" in err and "client_ca" in err and err.count("\n") == 1, err


@pytest.mark.asyncio
async def test_certs_generate_issues_an_operator_caller_certificate_the_gateway_admits_as_that_caller(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's certificate caller ops-1, made with the project's own tools: `certs generate --caller` writes
    a certificate the operator API admits as ops-1, with ops-1's role (read-only: a write is refused)."""
    tls = tmp_path / "tls"
    argv = ["certs", "generate", "--out", str(tls), "--ca-name", "Operator CA", "--caller", "ops-1", "CHN"]
    code, out, err = await _cli(capsys, *argv)
    assert code == 0, err
    assert f"issued ops-1: {tls / 'ops-1.crt'} and {tls / 'ops-1.key'}" in out, out
    access = OperatorAccess(callers=[OperatorCaller("ops-1", Role.READ_ONLY, certificate_common_name="ops-1")])
    node = await _node(
        tmp_path / "node",
        access,
        operator_tls=OperatorTLSConfig(tls / "chn.crt", tls / "chn.key", client_ca=tls / "ca.crt"),
    )
    try:
        credentials = ["--address", node.operator_address, "--ca-cert", str(tls / "ca.crt")]
        credentials += ["--client-cert", str(tls / "ops-1.crt"), "--client-key", str(tls / "ops-1.key")]
        code, out, err = await _cli(capsys, "call", "ListTrust", *credentials)
        assert code == 0 and "CHN" in out, err
        request = json.dumps({"idempotency_key": "k", "account": {"account_id": "CN-PO-0009", "holder_name": "x"}})
        code, out, err = await _cli(capsys, "call", "OpenAccount", request, *credentials)
        assert code != 0 and "CALLER_NOT_PERMITTED" in err, err
    finally:
        await node.stop(0)


@pytest.mark.parametrize(
    ("names", "said"),
    [
        pytest.param(["--caller", "chn"], "reads as a Party code", id="a-party-code-in-small-letters"),
        pytest.param(["--caller", "ops 1"], "not a DNS label", id="not-a-dns-label"),
        pytest.param(["--caller", "CA"], "over the CA's files", id="the-ca-s-name"),
        pytest.param(["--caller", "ops-1", "--caller", "OPS-1"], "named twice", id="twice-in-another-case"),
        pytest.param([], "name at least one Party", id="nothing-to-issue"),
    ],
)
def test_certs_generate_refuses_a_caller_name_it_cannot_issue_safely(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], names: list[str], said: str
) -> None:
    argv = ["certs", "generate", "--out", str(tmp_path / "tls"), "--ca-name", "Operator CA", *names]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1, err
    assert not (tmp_path / "tls").exists()


@pytest.mark.asyncio
async def test_a_failed_tls_handshake_is_not_taken_for_a_gateway_that_is_not_running(
    gateway: TLSGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway that answered, with a certificate --ca-cert's CA did not issue, was reported as 'is the gateway
    running? Start it': a hint no start mends."""
    monkeypatch.delenv("CARBON_GATEWAY_TOKEN_FILE", raising=False)
    other_ca = _certificates(tmp_path / "other", "another CA").ca_path
    call = ("call", "ListTransfers", "--address", gateway.node.operator_address, "--ca-cert", str(other_ca))
    code, out, err = await _cli(capsys, *call, "--token-file", str(gateway.reader_token))
    assert (code, out) == (1, "") and err.count("\n") == 1, err
    assert "is the gateway running" not in err and "Start it" not in err, err
    assert "TLS handshake failed: give --ca-cert the CA that issued its operator certificate" in err, err


@pytest.mark.asyncio
async def test_a_client_certificate_the_gateway_refuses_is_not_taken_for_a_gateway_that_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client_ca gateway ends the handshake of a --client-cert another CA issued ('Socket closed'), which was
    reported as 'is the gateway running? Start it'."""
    monkeypatch.delenv("CARBON_GATEWAY_TOKEN_FILE", raising=False)
    certificates = _certificates(tmp_path / "pki", "operator CA")
    certificate, key = certificates.issue("localhost")
    operator_tls = OperatorTLSConfig(certificate, key, certificates.ca_path)
    node = await _node(tmp_path / "node", OperatorAccess(callers=TOKEN_CALLERS), operator_tls=operator_tls)
    try:
        stranger, stranger_key = _certificates(tmp_path / "other", "another CA").issue("ops-1")
        call = ("call", "ListTransfers", "--address", node.operator_address, "--ca-cert", str(certificates.ca_path))
        code, out, err = await _cli(capsys, *call, "--client-cert", str(stranger), "--client-key", str(stranger_key))
        assert (code, out) == (1, "") and err.count("\n") == 1, err
        assert "is the gateway running" not in err and "Start it" not in err, err
        assert "client_ca issued the --client-cert certificate" in err, err
    finally:
        await node.stop(0)


@pytest.mark.asyncio
async def test_a_plaintext_call_to_a_tls_gateway_is_not_taken_for_a_gateway_that_is_not_running(
    gateway: TLSGateway, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call without --ca-cert to a gateway whose operator API serves TLS, which ends the plaintext connection
    ('Socket closed'), was reported as 'is the gateway running? Start it': a hint no start mends."""
    monkeypatch.delenv("CARBON_GATEWAY_TOKEN_FILE", raising=False)
    call = ("call", "ListTransfers", "--address", gateway.node.operator_address)
    code, out, err = await _cli(capsys, *call, "--token-file", str(gateway.reader_token))
    assert (code, out) == (1, "") and err.count("\n") == 1, err
    assert "is the gateway running" not in err and "Start it" not in err, err
    assert "give --ca-cert" in err, err


@pytest.mark.asyncio
async def test_a_tls_call_to_a_plaintext_gateway_is_not_told_to_change_its_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call with --ca-cert to a gateway whose operator API serves no TLS fails its handshake with
    WRONG_VERSION_NUMBER, and was told to give --ca-cert the CA that issued the gateway's operator certificate,
    which it has none of."""
    monkeypatch.delenv("CARBON_GATEWAY_TOKEN_FILE", raising=False)
    certificates = _certificates(tmp_path / "pki", "operator CA")
    node = await _node(tmp_path / "node", OperatorAccess(callers=TOKEN_CALLERS))
    try:
        call = ("call", "ListTransfers", "--address", node.operator_address, "--ca-cert", str(certificates.ca_path))
        code, out, err = await _cli(capsys, *call)
        assert (code, out) == (1, "") and err.count("\n") == 1, err
        assert "is the gateway running" not in err and "Start it" not in err, err
        assert "CA that issued its operator certificate" not in err, err
        assert "without TLS" in err, err
    finally:
        await node.stop(0)
