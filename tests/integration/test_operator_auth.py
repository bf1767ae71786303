"""The authenticated operator API on real gRPC servers (port 0, TLS with certificates made here): who may call
what, which credentials are refused, idempotency keys per caller, partners kept out, and the CLI's credentials."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from carbon_gateway.v1 import mapping_pb2, operator_pb2, operator_pb2_grpc, records_pb2
from gateway.cli import main
from gateway.config import OperatorTLSConfig, TLSConfig, load_config
from gateway.domain.access import (
    CALLS_AT_ONCE,
    AuthenticationRefused,
    DeliveryPlaces,
    OperatorCaller,
    Role,
    identify,
)
from gateway.domain.errors import ResponseCode
from gateway.domain.protocol import ACCEPT_ALL
from gateway.harness import self_signed_trust_document
from gateway.node import GatewayNode, PartnerSpec
from gateway.rpc import auth
from gateway.rpc.auth import (
    METHOD_ROLES,
    OPEN_REQUEST_BYTES,
    OperatorAccess,
    OperatorAuthInterceptor,
    required_role,
)
from gateway.rpc.errors import read_error_detail
from gateway.rpc.partner import DELIVER_METHOD
from gateway.store.sqlite import SQLiteStore
from gateway.tls import create_ca, issue_certificate
from signing import generate_key, signer_from_uri
from tests.integration.harness import watches_reach
from tests.integration.test_attacks import certificate_with_names, printable_string_certificate
from tests.processes import free_port
from tests.test_startup import SERVE, TIMEOUT, _assert_one_line_naming, _config, _keys

SERVICES = (
    operator_pb2.DESCRIPTOR.services_by_name["OperatorService"],
    mapping_pb2.DESCRIPTOR.services_by_name["MappingService"],
)
TOKENS = {Role.READ_ONLY: "reader-token-1", Role.OPERATOR: "clerk-token-2", Role.ADMINISTRATOR: "admin-token-3"}
NAMES = {Role.READ_ONLY: "reader", Role.OPERATOR: "clerk", Role.ADMINISTRATOR: "admin"}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


TOKEN_CALLERS = tuple(OperatorCaller(NAMES[role], role, token_sha256=_digest(TOKENS[role])) for role in Role)


def _methods() -> Iterator[tuple[str, bool, bool]]:
    for service in SERVICES:
        for method in service.methods:
            yield f"/{service.full_name}/{method.name}", method.client_streaming, method.server_streaming


@dataclass
class Certificates:
    """A CA (the partners' and the callers' here) and the certificates it issued, as files."""

    folder: Path
    ca: bytes
    ca_key: bytes

    @property
    def ca_path(self) -> Path:
        return self.folder / "ca.crt"

    def issue(self, common_name: str) -> tuple[Path, Path]:
        certificate, key = issue_certificate(self.ca, self.ca_key, common_name)
        (self.folder / f"{common_name}.crt").write_bytes(certificate)
        (self.folder / f"{common_name}.key").write_bytes(key)
        return self.folder / f"{common_name}.crt", self.folder / f"{common_name}.key"

    def credentials(self, common_name: str | None = None) -> grpc.ChannelCredentials:
        """TLS trusting this CA, with ``common_name``'s client certificate when given."""
        if common_name is None:
            return grpc.ssl_channel_credentials(self.ca)
        certificate, key = (
            self.issue(common_name)
            if not (self.folder / f"{common_name}.crt").exists()
            else (
                self.folder / f"{common_name}.crt",
                self.folder / f"{common_name}.key",
            )
        )
        return grpc.ssl_channel_credentials(self.ca, key.read_bytes(), certificate.read_bytes())


def _certificates(folder: Path, name: str) -> Certificates:
    folder.mkdir(parents=True)
    ca, ca_key = create_ca(name)
    (folder / "ca.crt").write_bytes(ca)
    return Certificates(folder, ca, ca_key)


async def _node(
    folder: Path,
    access: OperatorAccess,
    *,
    operator_tls: OperatorTLSConfig | None = None,
    partner_tls: TLSConfig | None = None,
) -> GatewayNode:
    folder.mkdir(parents=True, exist_ok=True)
    for party in ("chn", "che"):
        generate_key(folder / party)
    signer = signer_from_uri(f"file:{folder / 'chn.key'}")
    node = GatewayNode(
        party="CHN",
        store=await SQLiteStore.open(folder / "chn.db"),
        signer=signer,
        own_trust=self_signed_trust_document("CHN", signer),
        partners=[
            PartnerSpec(
                party="CHE",
                address="127.0.0.1:9",
                trust_envelope=self_signed_trust_document("CHE", signer_from_uri(f"file:{folder / 'che.key'}")),
            )
        ],
        policy=ACCEPT_ALL,
        operator_access=access,
        operator_tls=operator_tls,
        tls=partner_tls,
    )
    await node.start()
    return node


@dataclass
class Gateways:
    """Two gateways on one CA: ``tls`` has server-only TLS and token callers; ``mtls`` requires client
    certificates (the partners' CA) and has a certificate caller ``ops-1`` and the administrator's token."""

    certificates: Certificates
    tls: GatewayNode
    mtls: GatewayNode


@pytest_asyncio.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[Gateways]:
    certificates = _certificates(tmp_path / "pki", "operator and partner CA")
    server_certificate, server_key = certificates.issue("localhost")
    chn_certificate, chn_key = certificates.issue("CHN")
    tls = await _node(
        tmp_path / "tls",
        OperatorAccess(callers=TOKEN_CALLERS),
        operator_tls=OperatorTLSConfig(server_certificate, server_key),
    )
    mtls = await _node(
        tmp_path / "mtls",
        OperatorAccess(
            callers=(
                OperatorCaller("ops-1", Role.OPERATOR, certificate_common_name="ops-1"),
                OperatorCaller("admin", Role.ADMINISTRATOR, token_sha256=_digest(TOKENS[Role.ADMINISTRATOR])),
            ),
            partner_identities=frozenset({"CHE"}),
        ),
        operator_tls=OperatorTLSConfig(server_certificate, server_key, client_ca=certificates.ca_path),
        partner_tls=TLSConfig(chn_certificate, chn_key, certificates.ca_path),
    )
    try:
        yield Gateways(certificates, tls, mtls)
    finally:
        await tls.stop(0)
        await mtls.stop(0)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token is not None else ()


async def _call(
    channel: grpc.aio.Channel,
    method: str,
    client_streaming: bool = False,
    server_streaming: bool = False,
    *,
    metadata: tuple[tuple[str, str], ...] = (),
    request: bytes = b"",
) -> tuple[grpc.StatusCode, records_pb2.ErrorDetail | None]:
    """Call ``method`` with raw request bytes; return its status and its ErrorDetail (if any)."""
    call: grpc.aio.Call
    if client_streaming and server_streaming:
        call = channel.stream_stream(method, None, None)(iter([request]), metadata=metadata, timeout=10)
    elif client_streaming:
        call = channel.stream_unary(method, None, None)(iter([request]), metadata=metadata, timeout=10)
    elif server_streaming:
        call = channel.unary_stream(method, None, None)(request, metadata=metadata, timeout=10)
    else:
        call = channel.unary_unary(method, None, None)(request, metadata=metadata, timeout=10)
    code = await call.code()
    return code, read_error_detail(await call.trailing_metadata())


def _refused(outcome: tuple[grpc.StatusCode, records_pb2.ErrorDetail | None], status: grpc.StatusCode) -> bool:
    code, detail = outcome
    expected = {
        grpc.StatusCode.UNAUTHENTICATED: ResponseCode.CALLER_UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED: ResponseCode.CALLER_NOT_PERMITTED,
    }[status]
    return code == status and detail is not None and int(detail.code) == int(expected)


# The table


def test_the_role_table_covers_every_method_of_both_services_and_nothing_else() -> None:
    assert set(METHOD_ROLES) == {path for path, _, _ in _methods()}


def test_a_method_missing_from_the_table_is_refused_and_health_is_open() -> None:
    with pytest.raises(Exception) as refused:
        required_role("/carbon_gateway.v1.OperatorService/NotInTheTable")
    assert getattr(refused.value, "code", None) is ResponseCode.CALLER_NOT_PERMITTED
    assert required_role("/grpc.health.v1.Health/Check") is None
    assert required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is Role.READ_ONLY


@pytest.mark.asyncio
async def test_a_served_method_missing_from_the_table_is_refused_even_to_the_administrator() -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    server = grpc.aio.server(interceptors=[OperatorAuthInterceptor(OperatorAccess(callers=TOKEN_CALLERS))])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "carbon_gateway.v1.OperatorService", {"Sneaky": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            outcome = await _call(
                channel,
                "/carbon_gateway.v1.OperatorService/Sneaky",
                metadata=_metadata(TOKENS[Role.ADMINISTRATOR]),
                request=b"x",
            )
    finally:
        await server.stop(0)
    assert _refused(outcome, grpc.StatusCode.PERMISSION_DENIED), outcome


# Roles


@pytest.mark.asyncio
@pytest.mark.parametrize("role", list(Role), ids=[role.value for role in Role])
async def test_each_role_calls_exactly_its_methods(gateways: Gateways, role: Role) -> None:
    address = gateways.tls.operator_address
    denied, admitted = set(), set()
    async with grpc.aio.secure_channel(address, gateways.certificates.credentials()) as channel:
        for method, client_streaming, server_streaming in _methods():
            outcome = await _call(channel, method, client_streaming, server_streaming, metadata=_metadata(TOKENS[role]))
            # Any outcome but PERMISSION_DENIED (a result, INVALID_ARGUMENT, NOT_FOUND ...) got past the check.
            assert outcome[0] != grpc.StatusCode.UNAUTHENTICATED, (method, outcome)
            if _refused(outcome, grpc.StatusCode.PERMISSION_DENIED):
                denied.add(method)
            else:
                assert outcome[0] != grpc.StatusCode.PERMISSION_DENIED, (method, outcome)
                admitted.add(method)
    assert denied == {method for method, needed in METHOD_ROLES.items() if not role.allows(needed)}
    assert admitted == {method for method, needed in METHOD_ROLES.items() if role.allows(needed)}
    if role is Role.READ_ONLY:
        assert "/carbon_gateway.v1.OperatorService/ProposeTransfer" in denied
    if role is Role.OPERATOR:
        assert "/carbon_gateway.v1.OperatorService/ProposeTransfer" in admitted
        assert "/carbon_gateway.v1.OperatorService/LockPeriod" in denied


# Refused credentials


@pytest.mark.asyncio
async def test_no_credentials_a_wrong_token_or_a_malformed_header_are_unauthenticated(gateways: Gateways) -> None:
    method = "/carbon_gateway.v1.OperatorService/ListTransfers"
    headers: list[tuple[tuple[str, str], ...]] = [
        (),
        _metadata("not-a-known-token"),
        (("authorization", f"Basic {TOKENS[Role.ADMINISTRATOR]}"),),
        (("authorization", "Bearer "),),
    ]
    async with grpc.aio.secure_channel(gateways.tls.operator_address, gateways.certificates.credentials()) as channel:
        for metadata in headers:
            outcome = await _call(channel, method, metadata=metadata)
            assert _refused(outcome, grpc.StatusCode.UNAUTHENTICATED), (metadata, outcome)
            detail = outcome[1]
            assert detail is not None and "not-a-known-token" not in detail.message
            assert TOKENS[Role.ADMINISTRATOR] not in detail.message
        # The same call with a good token passes: the refusals above were about the credentials.
        assert (await _call(channel, method, metadata=_metadata(TOKENS[Role.READ_ONLY])))[0] == grpc.StatusCode.OK


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [17_000, 70_000])
async def test_an_authorization_header_past_grpcs_metadata_limit_is_refused_by_grpc_itself(
    gateways: Gateways, size: int, caplog: pytest.LogCaptureFixture
) -> None:
    # gRPC's HTTP/2 layer refuses a call whose metadata passes 16 KiB (and, at random, one past 8 KiB) with
    # RESOURCE_EXHAUSTED and its own text, before the gateway reads the header: the gateway's handler never answers
    # it, so no response code can be added, and none is (README, "Limits"). The call takes no effect, and the
    # gateway's log says nothing.
    method = "/carbon_gateway.v1.OperatorService/OpenAccount"
    request = operator_pb2.OpenAccountRequest(
        idempotency_key="big-header",
        account=records_pb2.Account(account_id="PO-BIG", holder_name="Owner", account_type="project owner"),
    ).SerializeToString()
    caplog.set_level(logging.WARNING)
    async with grpc.aio.secure_channel(gateways.tls.operator_address, gateways.certificates.credentials()) as channel:
        token = TOKENS[Role.ADMINISTRATOR] + "x" * size
        code, detail = await _call(channel, method, metadata=_metadata(token), request=request)
    assert (code, detail) == (grpc.StatusCode.RESOURCE_EXHAUSTED, None)
    async with gateways.tls.store.read() as tx:
        assert await tx.get_account("PO-BIG") is None
    assert not [r for r in caplog.records if r.name.startswith("gateway")], [r.getMessage() for r in caplog.records]


async def _withheld(sent: asyncio.Event) -> AsyncIterator[bytes]:
    """A request stream that sends nothing until ``sent`` is set: the call's body, held back."""
    await sent.wait()
    yield b""


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "token", "status"),
    [
        ("ProposeTransfer", "not-a-known-token", grpc.StatusCode.UNAUTHENTICATED),
        ("ProposeTransfer", TOKENS[Role.READ_ONLY], grpc.StatusCode.PERMISSION_DENIED),
        ("WatchChanges", "not-a-known-token", grpc.StatusCode.UNAUTHENTICATED),
        ("PruneChanges", TOKENS[Role.OPERATOR], grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_a_refused_caller_is_answered_before_its_request_is_read(
    gateways: Gateways, method: str, token: str, status: grpc.StatusCode
) -> None:
    # The request is withheld until the answer has come: a server that read requests before it checked the
    # caller would wait for it, and the call would run out of time. (A crowd of 4 MB calls with a wrong token
    # took the server to about 600 MB so.)
    path = f"/carbon_gateway.v1.OperatorService/{method}"
    sent = asyncio.Event()
    async with grpc.aio.secure_channel(gateways.tls.operator_address, gateways.certificates.credentials()) as channel:
        streaming = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].methods_by_name[method].server_streaming
        if streaming:
            call: grpc.aio.Call = channel.stream_stream(path, None, None)(
                _withheld(sent), metadata=_metadata(token), timeout=10
            )
        else:
            call = channel.stream_unary(path, None, None)(_withheld(sent), metadata=_metadata(token), timeout=10)
        code = await call.code()
        sent.set()
        assert _refused((code, read_error_detail(await call.trailing_metadata())), status), code


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["ListTransfers", "WatchChanges"])
async def test_an_admitted_call_that_sends_no_request_is_malformed(gateways: Gateways, method: str) -> None:
    path = f"/carbon_gateway.v1.OperatorService/{method}"
    metadata = _metadata(TOKENS[Role.ADMINISTRATOR])
    async with grpc.aio.secure_channel(gateways.tls.operator_address, gateways.certificates.credentials()) as channel:
        if method == "WatchChanges":
            call: grpc.aio.Call = channel.stream_stream(path, None, None)(iter([]), metadata=metadata, timeout=10)
        else:
            call = channel.stream_unary(path, None, None)(iter([]), metadata=metadata, timeout=10)
        code = await call.code()
        detail = read_error_detail(await call.trailing_metadata())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and detail is not None
    assert int(detail.code) == int(ResponseCode.MALFORMED_PAYLOAD) and method in detail.message


@pytest.mark.asyncio
async def test_read_only_callers_leave_the_kept_watches_to_operators(gateways: Gateways) -> None:
    feed = gateways.tls.changes
    feed.max_watchers, feed.places.kept = 3, 1
    calls: list[grpc.aio.UnaryStreamCall[operator_pb2.WatchChangesRequest, operator_pb2.Change]] = []

    async with grpc.aio.secure_channel(gateways.tls.operator_address, gateways.certificates.credentials()) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)

        def watch(role: Role) -> grpc.aio.UnaryStreamCall[operator_pb2.WatchChangesRequest, operator_pb2.Change]:
            call = stub.WatchChanges(operator_pb2.WatchChangesRequest(), metadata=_metadata(TOKENS[role]), timeout=30)
            calls.append(call)
            return call

        try:
            watch(Role.READ_ONLY)
            watch(Role.READ_ONLY)
            await watches_reach(feed, 2)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await watch(Role.READ_ONLY).read()
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "kept for operators and administrators" in (refused.value.details() or "")
            # The operator (the registry of record) still gets the kept place.
            watch(Role.OPERATOR)
            await watches_reach(feed, 3)
        finally:
            for call in calls:
                call.cancel()


@pytest.mark.asyncio
async def test_health_is_open_and_reflection_needs_read_only(gateways: Gateways) -> None:
    async with grpc.aio.secure_channel(gateways.tls.operator_address, gateways.certificates.credentials()) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in reflection.ServerReflectionInfo(iter([request]), timeout=10):
                pass
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        listed = [
            response
            async for response in reflection.ServerReflectionInfo(
                iter([request]), metadata=_metadata(TOKENS[Role.READ_ONLY]), timeout=10
            )
        ]
        names = {service.name for service in listed[0].list_services_response.service}
        assert "carbon_gateway.v1.OperatorService" in names


async def _withheld_request(sent: asyncio.Event, request: bytes) -> AsyncIterator[bytes]:
    """A request stream that sends ``request`` once ``sent`` is set."""
    await sent.wait()
    yield request


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", ["from one address", "from all"])
async def test_only_a_few_health_checks_without_credentials_are_read_at_once_and_only_small_ones(
    gateways: Gateways, limit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls without credentials reading their requests hold places, `OPEN_READS_PER_ADDRESS` per address and
    `OPEN_CALLS_READ_AT_ONCE` in all; one more is refused before its request is read, a check with credentials
    is not counted, and an open request over `OPEN_REQUEST_BYTES` is refused once read."""
    if limit == "from all":  # every call of the test comes from one address: let it hold them all
        monkeypatch.setattr(auth, "OPEN_READS_PER_ADDRESS", 10)
        monkeypatch.setattr(auth, "OPEN_CALLS_READ_AT_ONCE", 3)
    monkeypatch.setattr(auth, "OPEN_READ_SECONDS", 30.0)  # the held calls keep their places on a busy machine
    places = min(auth.OPEN_READS_PER_ADDRESS, auth.OPEN_CALLS_READ_AT_ONCE)
    check = "/grpc.health.v1.Health/Check"
    small = health_pb2.HealthCheckRequest(service="").SerializeToString()
    sent = asyncio.Event()
    async with grpc.aio.secure_channel(gateways.tls.operator_address, gateways.certificates.credentials()) as channel:

        def hold() -> grpc.aio.StreamUnaryCall[bytes, bytes]:
            return channel.stream_unary(check, None, None)(_withheld_request(sent, small), timeout=30)

        held = [hold() for _ in range(places)]
        # The held calls take their places as the server admits them, in no set order, and a probe may take one
        # first (the held call is then refused, and held again): probe until one is refused while every held
        # call waits.
        for _ in range(1000):  # 10 s at most: the held calls may be slow to arrive on a loaded machine
            held = [hold() if call.done() else call for call in held]
            crowded = await _call(channel, check)
            if crowded[0] != grpc.StatusCode.OK and not any(call.done() for call in held):
                break
            await asyncio.sleep(0.01)
        code, detail = crowded
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and detail is not None
        assert int(detail.code) == int(ResponseCode.TOO_MANY_OPEN_CALLS) and check in detail.message
        assert (" from ipv4:127.0.0.1 " in detail.message) is (limit == "from one address")
        # With credentials, the check is not counted.
        assert (await _call(channel, check, metadata=_metadata(TOKENS[Role.READ_ONLY])))[0] == grpc.StatusCode.OK
        sent.set()
        for call in held:
            assert await call.code() == grpc.StatusCode.OK
        assert (await _call(channel, check))[0] == grpc.StatusCode.OK
        # One byte over the limit, then exactly the limit: the service name's tag and length take three bytes.
        for name_length, expected in ((OPEN_REQUEST_BYTES - 2, False), (OPEN_REQUEST_BYTES - 3, True)):
            request = health_pb2.HealthCheckRequest(service="s" * name_length)
            code, detail = await _call(channel, check, request=request.SerializeToString())
            if expected:
                assert request.ByteSize() == OPEN_REQUEST_BYTES and code == grpc.StatusCode.NOT_FOUND
            else:
                assert code == grpc.StatusCode.INVALID_ARGUMENT and detail is not None
                assert int(detail.code) == int(ResponseCode.INVALID_ARGUMENT) and detail.field == "request"


@pytest.mark.asyncio
async def test_one_caller_has_only_its_calls_at_once_in_progress() -> None:
    """A caller's calls in progress hold its places (``calls_at_once``, 2 here): one more is refused before its
    request is read, another caller (at the default) is not held up, and a place comes back when its call ends."""
    method = f"/{SERVICES[0].full_name}/ListAuthorizations"

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    reader = OperatorCaller("reader", Role.READ_ONLY, token_sha256=_digest(TOKENS[Role.READ_ONLY]), calls_at_once=2)
    clerk = OperatorCaller("clerk", Role.OPERATOR, token_sha256=_digest(TOKENS[Role.OPERATOR]))
    assert clerk.calls_at_once == CALLS_AT_ONCE == 64
    server = grpc.aio.server(interceptors=[OperatorAuthInterceptor(OperatorAccess(callers=(reader, clerk)))])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICES[0].full_name, {"ListAuthorizations": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sent = asyncio.Event()
    as_reader, as_clerk = _metadata(TOKENS[Role.READ_ONLY]), _metadata(TOKENS[Role.OPERATOR])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

            def hold() -> grpc.aio.StreamUnaryCall[bytes, bytes]:
                call = channel.stream_unary(method, None, None)
                return call(_withheld_request(sent, b""), metadata=as_reader, timeout=30)

            held = [hold() for _ in range(2)]
            # The held calls take their places as the server admits them, in no set order, and a probe may take
            # one first (the held call is then refused, and held again): probe until one is refused while every
            # held call waits.
            for _ in range(1000):  # 10 s at most: the held calls may be slow to arrive on a loaded machine
                held = [hold() if call.done() else call for call in held]
                crowded = await _call(channel, method, metadata=as_reader)
                if crowded[0] != grpc.StatusCode.OK and not any(call.done() for call in held):
                    break
                await asyncio.sleep(0.01)
            code, detail = crowded
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and detail is not None
            assert int(detail.code) == int(ResponseCode.TOO_MANY_CALLS) and "'reader' has 2 calls" in detail.message
            clerks = await asyncio.gather(*(_call(channel, method, metadata=as_clerk) for _ in range(3)))
            assert [outcome[0] for outcome in clerks] == [grpc.StatusCode.OK] * 3
            sent.set()
            for call in held:
                assert await call.code() == grpc.StatusCode.OK
            # Every place came back, the refused call's too.
            again = [_call(channel, method, metadata=as_reader) for _ in range(2)]
            assert [outcome[0] for outcome in await asyncio.gather(*again)] == [grpc.StatusCode.OK] * 2
    finally:
        await server.stop(0)


async def _watch_refused(
    health: health_pb2_grpc.HealthStub, request: health_pb2.HealthCheckRequest
) -> records_pb2.ErrorDetail:
    """The detail of a health watch refused for want of a place."""
    crowded = health.Watch(request, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await crowded.read()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    detail = read_error_detail(await crowded.trailing_metadata())
    assert detail is not None and int(detail.code) == int(ResponseCode.TOO_MANY_OPEN_CALLS)
    return detail


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", ["from one address", "from all"])
async def test_only_a_few_health_watches_without_credentials_stay_open_at_once(
    gateways: Gateways, limit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Open watches without credentials hold places for as long as they last, `OPEN_STREAMS_PER_ADDRESS` per
    address and `OPEN_STREAMS_AT_ONCE` in all; one more is refused, a watch with credentials is not counted, and a
    place comes back when its watch ends."""
    if limit == "from all":  # every call of the test comes from one address: let it hold them all
        monkeypatch.setattr(auth, "OPEN_STREAMS_PER_ADDRESS", 10)
        monkeypatch.setattr(auth, "OPEN_STREAMS_AT_ONCE", 3)
    places = min(auth.OPEN_STREAMS_PER_ADDRESS, auth.OPEN_STREAMS_AT_ONCE)
    request = health_pb2.HealthCheckRequest(service="")
    async with grpc.aio.secure_channel(gateways.tls.operator_address, gateways.certificates.credentials()) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def watching(
            metadata: tuple[tuple[str, str], ...] = (),
        ) -> grpc.aio.UnaryStreamCall[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]:
            call: grpc.aio.UnaryStreamCall[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
            call = health.Watch(request, metadata=metadata, timeout=20)
            first = await call.read()
            assert isinstance(first, health_pb2.HealthCheckResponse)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            return call

        watches = [await watching() for _ in range(places)]
        detail = await _watch_refused(health, request)
        assert "Health/Watch" in detail.message and "streams without credentials" in detail.message
        assert (" from ipv4:127.0.0.1 " in detail.message) is (limit == "from one address")
        # With credentials, the watch is not counted; checks are counted apart.
        with_token = await watching(_metadata(TOKENS[Role.READ_ONLY]))
        assert (await _call(channel, "/grpc.health.v1.Health/Check"))[0] == grpc.StatusCode.OK
        # Ended watches give their places back: all of them, however they ended.
        for call in [*watches, with_token]:
            call.cancel()
        watches = []
        for _ in range(200):
            try:
                watches.append(await watching())
            except grpc.aio.AioRpcError as exc:  # the server has not yet seen a cancellation
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.sleep(0.01)
            if len(watches) == places:
                break
        assert len(watches) == places and all(not call.done() for call in watches)
        for call in watches:
            call.cancel()


@pytest.mark.asyncio
async def test_health_on_the_partner_port_has_the_limits_of_open_calls(gateways: Gateways) -> None:
    """Whoever reaches the partner port may check health, under the same limits as on the operator port: a few
    watches and small requests; the partner exchange itself is not counted."""
    request = health_pb2.HealthCheckRequest(service="")
    async with grpc.aio.insecure_channel(gateways.tls.partner_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        # Unreadable request bytes are refused as on the operator port, not answered UNKNOWN with a traceback.
        for method, streaming in (("Check", False), ("Watch", True)):
            code, unreadable = await _call(
                channel, f"/grpc.health.v1.Health/{method}", server_streaming=streaming, request=b"\xff\xff\xff"
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT and unreadable is not None, method
            assert int(unreadable.code) == int(ResponseCode.MALFORMED_PAYLOAD)
        watches = [health.Watch(request, timeout=20) for _ in range(auth.OPEN_STREAMS_PER_ADDRESS)]
        for call in watches:
            assert (await call.read()).status == health_pb2.HealthCheckResponse.SERVING
        crowded = await _watch_refused(health, request)
        assert "the partner port" in crowded.message and "credentials from" in crowded.message
        assert "token" not in crowded.message  # no credentials count on the partner port
        big = health_pb2.HealthCheckRequest(service="s" * OPEN_REQUEST_BYTES).SerializeToString()
        code, detail = await _call(channel, "/grpc.health.v1.Health/Check", request=big)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and detail is not None and detail.field == "request"
        assert (await _call(channel, "/grpc.health.v1.Health/Check"))[0] == grpc.StatusCode.OK
        # A delivery is the exchange's to answer (here: a body that is no envelope), whatever the health places.
        delivered = channel.unary_unary("/carbon_gateway.v1.PartnerExchange/Deliver", None, None)
        answer = await delivered(b"\xff\xff", timeout=10)
        assert isinstance(answer, bytes) and answer
        for call in watches:
            call.cancel()


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", ["from one address", "from all"])
async def test_the_partner_port_serves_only_so_many_deliveries_at_once(
    gateways: Gateways, limit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery holds its place from before its request is read until it is answered: one more is refused
    with ``TOO_MANY_CALLS``, unread, and a place comes back when its delivery ends."""
    if limit == "from all":
        monkeypatch.setattr(auth, "DELIVERIES_AT_ONCE", 2)
        places, crowded = 2, "2 calls are being served"
    else:
        monkeypatch.setattr(auth, "DELIVERIES_PER_ADDRESS", 3)
        places, crowded = 3, "3 calls from ipv4:127.0.0.1 are being served"
    sent = asyncio.Event()
    async with grpc.aio.insecure_channel(gateways.tls.partner_address) as channel:

        def hold() -> grpc.aio.StreamUnaryCall[bytes, bytes]:
            call = channel.stream_unary(DELIVER_METHOD, None, None)
            return call(_withheld_request(sent, b"\xff\xff"), timeout=30)

        held = [hold() for _ in range(places)]
        # The held calls take their places as the server admits them, in no set order, and a probe may take one
        # first (the held call is then refused, and held again): probe until one is refused while every held
        # call waits.
        for _ in range(1000):  # 10 s at most: the held calls may be slow to arrive on a loaded machine
            held = [hold() if call.done() else call for call in held]
            outcome = await _call(channel, DELIVER_METHOD, request=b"\xff\xff")
            if outcome[0] != grpc.StatusCode.OK and not any(call.done() for call in held):
                break
            await asyncio.sleep(0.01)
        code, detail = outcome
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and detail is not None
        assert int(detail.code) == int(ResponseCode.TOO_MANY_CALLS)
        assert crowded in detail.message and "the partner port" in detail.message and "nothing" in detail.message
        # Health checks are not deliveries.
        assert (await _call(channel, "/grpc.health.v1.Health/Check"))[0] == grpc.StatusCode.OK
        sent.set()
        for call in held:
            assert await call.code() == grpc.StatusCode.OK
            assert await call  # the exchange's receipt of a body that is no envelope
        again = [_call(channel, DELIVER_METHOD, request=b"\xff\xff") for _ in range(places)]
        assert [outcome[0] for outcome in await asyncio.gather(*again)] == [grpc.StatusCode.OK] * places


@pytest.mark.asyncio
async def test_a_delivery_that_sends_no_request_gives_its_place_back_in_time(
    gateways: Gateways, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that takes a delivery place and never sends its request is refused after
    `DELIVERY_READ_SECONDS`, and its place comes back: stalled callers cannot hold the places for ever."""
    monkeypatch.setattr(auth, "DELIVERY_READ_SECONDS", 0.3)
    patience = 10.0
    monkeypatch.setattr(auth, "DELIVERIES_PER_ADDRESS", 1)
    never = asyncio.Event()
    async with grpc.aio.insecure_channel(gateways.tls.partner_address) as channel:
        silent = channel.stream_unary(DELIVER_METHOD, None, None)(_withheld_request(never, b""))  # no deadline
        try:
            assert await asyncio.wait_for(silent.code(), patience) == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            silent.cancel()
        detail = read_error_detail(await silent.trailing_metadata())
        assert detail is not None and int(detail.code) == int(ResponseCode.MALFORMED_PAYLOAD)
        assert "sent no whole request within 0.3 s" in detail.message
        assert (await _call(channel, DELIVER_METHOD, request=b"\xff\xff"))[0] == grpc.StatusCode.OK


@pytest.mark.asyncio
async def test_this_gateways_own_partner_certificate_name_is_a_partners_credential(tmp_path: Path) -> None:
    """The certificate this gateway presents to its partners, on a CA the operator port also trusts, is refused
    there as every partner's certificate is, even beside the administrator's token: it is not an operator's
    credential."""
    folder = _keys(tmp_path)
    # The gateway's [tls] certificate need not carry its Party code: here it is "chn-gateway".
    authority = _certificates(tmp_path / "pki", "partners' CA")
    certificate, key = authority.issue("chn-gateway")
    tls = f'[tls]\ncertificate = "{certificate}"\nprivate_key = "{key}"\nca_certificate = "{authority.ca_path}"\n'
    config = load_config(_config(folder, tail=tls))
    node = await GatewayNode.from_config(config)
    admin = OperatorCaller("admin", Role.ADMINISTRATOR, token_sha256=_digest("boss"))
    try:
        access = node.operator_access
        assert (
            identify([admin], token="boss", common_name="ops-1", loopback=False, unauthenticated_loopback=False).name
            == "admin"
        )
        for name in (config.party, config.party.lower(), "chn-gateway", *(p.party for p in config.partners)):
            with pytest.raises(AuthenticationRefused):
                identify(
                    [admin],
                    token="boss",
                    common_name=name,
                    loopback=False,
                    unauthenticated_loopback=False,
                    partner_identities=access.partner_identities,
                )
    finally:
        await node.stop()


@pytest.mark.asyncio
async def test_the_configured_delivery_places_hold_on_both_partner_paths(tmp_path: Path) -> None:
    """``[limits] deliveries_at_once`` and ``deliveries_per_address`` reach the partner port and the JSON path."""
    folder = _keys(tmp_path)
    config = _config(folder, http="127.0.0.1:0", tail="[limits]\ndeliveries_at_once = 3\ndeliveries_per_address = 1\n")
    node = await GatewayNode.from_config(load_config(config))
    await node.start()
    sent = asyncio.Event()
    try:
        assert node.delivery_places == DeliveryPlaces(3, 1)
        async with grpc.aio.insecure_channel(node.partner_address) as channel:

            def hold() -> grpc.aio.StreamUnaryCall[bytes, bytes]:
                return channel.stream_unary(DELIVER_METHOD, None, None)(_withheld_request(sent, b"\xff"), timeout=30)

            held = hold()
            # A probe may take the one place first, and the held call is then refused: hold it again.
            for _ in range(1000):  # 10 s at most: the held call may be slow to arrive on a loaded machine
                if held.done():
                    held = hold()
                outcome = await _call(channel, DELIVER_METHOD, request=b"\xff\xff")
                if outcome[0] != grpc.StatusCode.OK and not held.done():
                    break
                await asyncio.sleep(0.01)
            code, detail = outcome
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and detail is not None
            assert "1 calls from ipv4:127.0.0.1 are being served" in detail.message
            sent.set()
            assert await held.code() == grpc.StatusCode.OK
        host, port = urlsplit(node.http_url).hostname, urlsplit(node.http_url).port
        assert host is not None and port is not None
        _, stalled = await asyncio.open_connection(host, port)
        stalled.write(b"POST /v1/partner/deliver HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        await stalled.drain()
        try:
            for _ in range(1000):
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(b"POST /v1/partner/deliver HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                writer.close()
                if b" 503 " in head.split(b"\r\n")[0]:
                    break
                await asyncio.sleep(0.01)
            assert b" 503 " in head.split(b"\r\n")[0]
        finally:
            stalled.close()
    finally:
        await node.stop()


@pytest.mark.asyncio
async def test_a_health_check_without_credentials_that_sends_nothing_or_garbage_is_refused_in_time(
    gateways: Gateways, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A silent call gives its place back after `OPEN_READ_SECONDS`; unreadable bytes are ``MALFORMED_PAYLOAD``,
    as they are with credentials."""
    monkeypatch.setattr(auth, "OPEN_READ_SECONDS", 0.3)
    check, watch = "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"
    never = asyncio.Event()
    async with grpc.aio.secure_channel(gateways.tls.operator_address, gateways.certificates.credentials()) as channel:
        silent = [
            channel.stream_unary(check, None, None)(_withheld_request(never, b""), timeout=10)
            for _ in range(auth.OPEN_READS_PER_ADDRESS)
        ]
        for call in silent:
            assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
            detail = read_error_detail(await call.trailing_metadata())
            assert detail is not None and int(detail.code) == int(ResponseCode.MALFORMED_PAYLOAD)
            assert "within 0.3 s" in detail.message
        assert (await _call(channel, check))[0] == grpc.StatusCode.OK
        for method, streaming in ((check, False), (watch, True)):
            for metadata in ((), _metadata(TOKENS[Role.READ_ONLY])):
                code, detail = await _call(
                    channel, method, server_streaming=streaming, metadata=metadata, request=b"\xff\xff\xff"
                )
                assert code == grpc.StatusCode.INVALID_ARGUMENT and detail is not None, (method, metadata)
                assert int(detail.code) == int(ResponseCode.MALFORMED_PAYLOAD)


@pytest.mark.asyncio
async def test_certificate_callers_unknown_certificates_and_partner_certificates(gateways: Gateways) -> None:
    certificates = gateways.certificates
    address = gateways.mtls.operator_address
    reads, locks = "/carbon_gateway.v1.OperatorService/ListTransfers", "/carbon_gateway.v1.OperatorService/LockPeriod"
    async with grpc.aio.secure_channel(address, certificates.credentials("ops-1")) as channel:
        assert (await _call(channel, reads))[0] == grpc.StatusCode.OK
        assert _refused(await _call(channel, locks), grpc.StatusCode.PERMISSION_DENIED)
    # A certificate the CA issued to a name no caller has.
    async with grpc.aio.secure_channel(address, certificates.credentials("stranger")) as channel:
        assert _refused(await _call(channel, reads), grpc.StatusCode.UNAUTHENTICATED)
    # A partner's certificate, alone or with the administrator's token.
    certificates.issue("CHE")
    async with grpc.aio.secure_channel(address, certificates.credentials("CHE")) as channel:
        assert _refused(await _call(channel, reads), grpc.StatusCode.UNAUTHENTICATED)
        outcome = await _call(channel, reads, metadata=_metadata(TOKENS[Role.ADMINISTRATOR]))
        assert _refused(outcome, grpc.StatusCode.UNAUTHENTICATED)
        assert outcome[1] is not None and "partner" in outcome[1].message
    # The administrator's token with a caller's certificate: the token names the caller.
    async with grpc.aio.secure_channel(address, certificates.credentials("ops-1")) as channel:
        outcome = await _call(channel, locks, metadata=_metadata(TOKENS[Role.ADMINISTRATOR]))
        assert outcome[0] == grpc.StatusCode.INVALID_ARGUMENT, outcome
    # Another CA's certificate, or none: the TLS handshake fails, no call reaches the gateway.
    other = _certificates(certificates.folder.parent / "other", "another CA")
    other_certificate, other_key = other.issue("ops-1")
    foreign = grpc.ssl_channel_credentials(certificates.ca, other_key.read_bytes(), other_certificate.read_bytes())
    for credentials in (foreign, certificates.credentials()):
        async with grpc.aio.secure_channel(address, credentials) as channel:
            assert (await _call(channel, reads))[0] == grpc.StatusCode.UNAVAILABLE


def _issue_with_names(certificates: Certificates, stem: str, names: list[str]) -> grpc.ChannelCredentials:
    """TLS trusting the CA, with a client certificate it issued whose subject lists each of ``names`` as a common
    name."""
    certificate, key = certificate_with_names(certificates.ca, certificates.ca_key, names)
    return grpc.ssl_channel_credentials(certificates.ca, key, certificate)


@pytest.mark.parametrize("names", [["ops-1", "CHE"], ["ops-1", "stranger"], ["stranger", "ops-1"]])
@pytest.mark.asyncio
async def test_a_certificate_with_several_common_names_calls_nothing(gateways: Gateways, names: list[str]) -> None:
    # gRPC reports the subject's first common name alone: a certificate issued to CN=ops-1, CN=CHE was the caller
    # ops-1, though it names a partner, whose credentials never reach operator methods.
    address = gateways.mtls.operator_address
    reads = "/carbon_gateway.v1.OperatorService/ListTransfers"
    async with grpc.aio.secure_channel(address, _issue_with_names(gateways.certificates, "two", names)) as channel:
        outcome = await _call(channel, reads)
        assert _refused(outcome, grpc.StatusCode.UNAUTHENTICATED)
        assert outcome[1] is not None and "2 common names" in outcome[1].message
        # With the administrator's token as well: the certificate is refused whatever the call carries.
        assert _refused(
            await _call(channel, reads, metadata=_metadata(TOKENS[Role.ADMINISTRATOR])), grpc.StatusCode.UNAUTHENTICATED
        )
        # Health needs no credentials, and takes none it cannot read.
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def _raw_call_with_authorization(address: str, ca: Path, authorization: bytes) -> bytes:
    """Call ``ListTransfers`` over TLS in HTTP/2 frames written by hand, with an ``authorization`` value of any
    bytes (gRPC's own clients send only printable ASCII); return the bytes the server answered."""

    def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload

    def literal(name: bytes, value: bytes) -> bytes:  # HPACK: a literal field, not indexed, no Huffman coding
        return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

    fields = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", b"/carbon_gateway.v1.OperatorService/ListTransfers"),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"authorization", authorization),
    ]
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    host, _, port = address.rpartition(":")
    answer = b""
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as connection,
    ):
        connection.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + frame(4, 0, 0, b"")  # SETTINGS
            + frame(1, 4, 1, b"".join(literal(n, v) for n, v in fields))  # HEADERS, END_HEADERS
            + frame(0, 1, 1, b"\x00\x00\x00\x00\x00")  # DATA: an empty request, END_STREAM
        )
        while b"grpc-status" not in answer:
            received = connection.recv(65536)
            if not received:
                break
            answer += received
    return answer


@pytest.mark.parametrize("token", [b"\xff\xfesecret-token", b"a-near-token-\xe9"])
@pytest.mark.asyncio
async def test_a_token_that_is_not_utf_8_is_refused_and_never_logged(
    gateways: Gateways, token: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # gRPC logged each such value at ERROR with a traceback, the header's bytes included, twice per call.
    caplog.set_level(logging.INFO)
    answer = await asyncio.to_thread(
        _raw_call_with_authorization, gateways.tls.operator_address, gateways.certificates.ca_path, b"Bearer " + token
    )
    assert b"grpc-status\x0216" in answer and b"CALLER_UNAUTHENTICATED" in answer, answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert repr(token)[2:-1] not in caplog.text and token.decode("latin-1") not in caplog.text
    assert "not UTF-8" in caplog.text


@pytest.mark.asyncio
async def test_a_certificate_name_with_a_nul_byte_is_not_the_caller_named_before_it(gateways: Gateways) -> None:
    # gRPC reports a common name only up to a NUL byte: a certificate issued to CN=ops-1\0x was the caller ops-1.
    certificates = gateways.certificates
    certificate, key = printable_string_certificate(certificates.ca, certificates.ca_key, b"ops-1\x00x")
    credentials = grpc.ssl_channel_credentials(certificates.ca, key, certificate)
    async with grpc.aio.secure_channel(gateways.mtls.operator_address, credentials) as channel:
        outcome = await _call(channel, "/carbon_gateway.v1.OperatorService/ListTransfers")
    assert _refused(outcome, grpc.StatusCode.UNAUTHENTICATED)
    assert outcome[1] is not None and "cannot be read" in outcome[1].message


@pytest.mark.asyncio
async def test_the_partner_port_serves_no_operator_method(gateways: Gateways) -> None:
    certificates = gateways.certificates
    async with grpc.aio.secure_channel(gateways.mtls.partner_address, certificates.credentials("CHE")) as channel:
        for method, client_streaming, server_streaming in _methods():
            code, _ = await _call(channel, method, client_streaming, server_streaming)
            assert code == grpc.StatusCode.UNIMPLEMENTED, method


# Idempotency per caller


def _open_account(account_id: str, holder: str) -> bytes:
    return operator_pb2.OpenAccountRequest(
        idempotency_key="shared-key",
        account=records_pb2.Account(account_id=account_id, holder_name=holder, account_type="project owner"),
    ).SerializeToString()


@pytest.mark.asyncio
async def test_idempotency_keys_are_scoped_to_the_caller(gateways: Gateways) -> None:
    method = "/carbon_gateway.v1.OperatorService/OpenAccount"
    clerk, admin = _metadata(TOKENS[Role.OPERATOR]), _metadata(TOKENS[Role.ADMINISTRATOR])
    async with grpc.aio.secure_channel(gateways.tls.operator_address, gateways.certificates.credentials()) as channel:
        first = await _call(channel, method, metadata=clerk, request=_open_account("CN-A-1", "First"))
        second = await _call(channel, method, metadata=admin, request=_open_account("CN-A-2", "Second"))
        assert first[0] == second[0] == grpc.StatusCode.OK, (first, second)
        # The same caller retrying the same request gets its result; a different request under its key is refused.
        assert (await _call(channel, method, metadata=clerk, request=_open_account("CN-A-1", "First")))[0] == (
            grpc.StatusCode.OK
        )
        reused = await _call(channel, method, metadata=clerk, request=_open_account("CN-A-3", "Third"))
        assert reused[0] == grpc.StatusCode.ALREADY_EXISTS
        assert reused[1] is not None and int(reused[1].code) == ResponseCode.IDEMPOTENCY_KEY_REUSED
    async with gateways.tls.store.transaction() as tx:
        assert [await tx.get_account(a) is not None for a in ("CN-A-1", "CN-A-2", "CN-A-3")] == [True, True, False]


# Loopback without credentials


@pytest.mark.asyncio
@pytest.mark.parametrize("allowed", [False, True], ids=["off", "on"])
async def test_unauthenticated_loopback(tmp_path: Path, allowed: bool) -> None:
    node = await _node(tmp_path, OperatorAccess(callers=TOKEN_CALLERS[:1], unauthenticated_loopback=allowed))
    method = "/carbon_gateway.v1.OperatorService/LockPeriod"
    try:
        async with grpc.aio.insecure_channel(node.operator_address) as channel:
            anonymous = await _call(channel, method)
            if allowed:
                # Past authentication and the administrator's role: the empty request itself is refused.
                assert anonymous[0] == grpc.StatusCode.INVALID_ARGUMENT, anonymous
            else:
                assert _refused(anonymous, grpc.StatusCode.UNAUTHENTICATED), anonymous
            # A bad token is refused either way: loopback never overrides a wrong credential.
            assert _refused(await _call(channel, method, metadata=_metadata("wrong")), grpc.StatusCode.UNAUTHENTICATED)
            # A token works over plaintext on loopback, with its own role.
            reader = await _call(channel, method, metadata=_metadata(TOKENS[Role.READ_ONLY]))
            assert _refused(reader, grpc.StatusCode.PERMISSION_DENIED)
    finally:
        await node.stop(0)


def test_a_node_refuses_unauthenticated_callers_off_loopback(tmp_path: Path) -> None:
    from gateway.config import ConfigError

    async def build() -> None:
        store = await SQLiteStore.open(tmp_path / "x.db")
        generate_key(tmp_path / "k")
        signer = signer_from_uri(f"file:{tmp_path / 'k.key'}")
        try:
            GatewayNode(
                party="CHN",
                store=store,
                signer=signer,
                own_trust=self_signed_trust_document("CHN", signer),
                partners=[],
                policy=ACCEPT_ALL,
                operator_listen="0.0.0.0:0",
                operator_access=OperatorAccess(unauthenticated_loopback=True),
            )
        finally:
            await store.close()

    with pytest.raises(ConfigError, match=r"operator\.unauthenticated_loopback"):
        asyncio.run(build())


# The command line's credentials


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.asyncio
async def test_the_command_line_sends_a_token_over_tls(
    gateways: Gateways, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, ca = gateways.tls.operator_address, str(gateways.certificates.ca_path)
    monkeypatch.delenv("CARBON_GATEWAY_TOKEN_FILE", raising=False)
    summary = ("ledger", "summary", "--address", address, "--ca-cert", ca)
    code, _, err = await _cli(capsys, *summary)
    assert code == 1 and "CALLER_UNAUTHENTICATED" in err, err
    wrong = tmp_path / "wrong.token"
    wrong.write_text("a-wrong-token\n")
    code, out, err = await _cli(capsys, *summary, "--token-file", str(wrong))
    assert code == 1 and "CALLER_UNAUTHENTICATED" in err and "a-wrong-token" not in err + out, err
    reader = tmp_path / "reader.token"
    reader.write_text(TOKENS[Role.READ_ONLY] + "\n")
    code, out, err = await _cli(capsys, *summary, "--token-file", str(reader))
    assert code == 0 and "method:" in out, err
    # The environment variable names the file when --token-file is not given; the role still applies.
    monkeypatch.setenv("CARBON_GATEWAY_TOKEN_FILE", str(reader))
    code, _, err = await _cli(
        capsys, "ledger", "lock", "--address", address, "--ca-cert", ca, "--key", "k1", "--from", "2021", "--to",
        "2022", "--reason", "final",
    )  # fmt: skip
    assert code == 1 and "CALLER_NOT_PERMITTED" in err, err
    # Without --ca-cert the CLI speaks plaintext to a TLS port: refused, one line, no traceback.
    monkeypatch.delenv("CARBON_GATEWAY_TOKEN_FILE")
    code, _, err = await _cli(capsys, "ledger", "summary", "--address", address, "--token-file", str(reader))
    assert code == 1 and "UNAVAILABLE" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.asyncio
async def test_the_command_line_presents_a_client_certificate(
    gateways: Gateways, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certificate, key = gateways.certificates.issue("ops-1")
    base = (
        "ledger",
        "summary",
        "--address",
        gateways.mtls.operator_address,
        "--ca-cert",
        str(gateways.certificates.ca_path),
    )
    code, out, err = await _cli(capsys, *base, "--client-cert", str(certificate), "--client-key", str(key))
    assert code == 0 and "method:" in out, err
    code, _, err = await _cli(capsys, *base, "--client-cert", str(certificate))
    assert code == 2 and "--client-key" in err, err


def test_the_command_line_refuses_a_token_in_plaintext_off_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "t"
    token.write_text("secret-token")
    code = main(["ledger", "summary", "--address", "192.0.2.1:50051", "--token-file", str(token)])
    err = capsys.readouterr().err
    assert code == 2 and "plaintext" in err and "secret-token" not in err, err
    code = main(["ledger", "summary", "--address", "127.0.0.1:1", "--token-file", str(tmp_path / "absent")])
    err = capsys.readouterr().err
    assert code == 2 and "--token-file" in err and "absent" in err, err


# Refused configurations, as `carbon-gateway serve` meets them: one line naming the setting, exit status 2


def _digest_line(token: str) -> str:
    return f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'


def _caller(name: str = "ops", role: str = "operator", credential: str = "") -> str:
    return f'[[operator.callers]]\nname = "{name}"\nrole = "{role}"\n{credential or _digest_line(name)}'


def _operator_tls(folder: Path, *, client_ca: bool = True, key_of: str = "localhost") -> str:
    """Write a CA, a server certificate and its key (or another key) into ``folder``; the [operator.tls] table."""
    certificates = _certificates(folder / "operator-tls", "operator CA")
    for name in ("localhost", "other", "ops-1"):
        certificates.issue(name)
    ca = 'client_ca = "operator-tls/ca.crt"\n' if client_ca else ""
    return (
        f'[operator.tls]\ncertificate = "operator-tls/localhost.crt"\nprivate_key = "operator-tls/{key_of}.key"\n{ca}'
    )


@dataclass(frozen=True)
class Refusal:
    name: str
    prepare: Callable[[Path], Path]
    names: tuple[str, ...]


REFUSALS = [
    Refusal(
        "token_in_plaintext_off_loopback",
        lambda f: _config(f, operator="0.0.0.0:0", operator_settings=_caller()),
        ("operator.callers[0].token_sha256", "plaintext", "[operator.tls]"),
    ),
    Refusal(
        "nobody_can_authenticate_off_loopback",
        lambda f: _config(f, operator="0.0.0.0:0", operator_settings=""),
        ("operator.listen", "0.0.0.0:0", "[[operator.callers]]"),
    ),
    Refusal(
        "unauthenticated_off_loopback",
        lambda f: _config(f, operator="0.0.0.0:0", operator_settings="unauthenticated_loopback = true\n"),
        ("operator.unauthenticated_loopback", "0.0.0.0:0"),
    ),
    Refusal(
        "unauthenticated_not_a_boolean",
        lambda f: _config(f, operator_settings='unauthenticated_loopback = "yes"\n'),
        ("operator.unauthenticated_loopback", "'yes'"),
    ),
    Refusal(
        "duplicate_names",
        lambda f: _config(f, operator_settings=_caller("ops") + _caller("ops", credential=_digest_line("other"))),
        ("operator.callers[1].name", "'ops'", "operator.callers[0]"),
    ),
    Refusal(
        "duplicate_common_names_in_another_case",
        lambda f: _config(
            f,
            operator_settings=_operator_tls(f)
            + _caller("ro", "read-only", 'certificate_common_name = "ops"\n')
            + _caller("admin", "administrator", 'certificate_common_name = "OPS"\n'),
        ),
        ("operator.callers[1].certificate_common_name", "'OPS'", "operator.callers[0]"),
    ),
    Refusal(
        "duplicate_tokens",
        lambda f: _config(
            f, operator_settings=_caller("a", credential=_digest_line("t")) + _caller("b", credential=_digest_line("t"))
        ),
        ("operator.callers[1].token_sha256", "operator.callers[0]"),
    ),
    Refusal(
        "unknown_role",
        lambda f: _config(f, operator_settings=_caller(role="root")),
        ("operator.callers[0].role", "'root'", "'read-only'", "'administrator'"),
    ),
    Refusal(
        "token_digest_not_hex",
        lambda f: _config(f, operator_settings=_caller(credential='token_sha256 = "my-secret-token"\n')),
        ("operator.callers[0].token_sha256", "64 hexadecimal"),
    ),
    Refusal(
        "token_and_certificate",
        lambda f: _config(
            f, operator_settings=_caller(credential=_digest_line("x") + 'certificate_common_name = "ops-1"\n')
        ),
        ("operator.callers[0]", "exactly one"),
    ),
    Refusal(
        "calls_at_once_zero",
        lambda f: _config(f, operator_settings=_caller() + "calls_at_once = 0\n"),
        ("operator.callers[0].calls_at_once", "0", "1..1024"),
    ),
    Refusal(
        "calls_at_once_too_many",
        lambda f: _config(f, operator_settings=_caller() + "calls_at_once = 9223372036854775807\n"),
        ("operator.callers[0].calls_at_once", "1..1024"),
    ),
    Refusal(
        "calls_at_once_quoted",
        lambda f: _config(f, operator_settings=_caller() + 'calls_at_once = "64"\n'),
        ("operator.callers[0].calls_at_once", "without quotes"),
    ),
    Refusal(
        "reserved_name",
        lambda f: _config(f, operator_settings=_caller("anonymous")),
        ("operator.callers[0].name", "'anonymous'", "unauthenticated_loopback"),
    ),
    Refusal(
        "certificate_name_is_a_partner",
        lambda f: _config(
            f,
            operator_settings=_operator_tls(f) + _caller(credential='certificate_common_name = "CHE"\n'),
        ),
        ("operator.callers[0].certificate_common_name", "'CHE'", "partners[0].party"),
    ),
    Refusal(
        "certificate_caller_without_client_ca",
        lambda f: _config(
            f,
            operator_settings=_operator_tls(f, client_ca=False)
            + _caller(credential='certificate_common_name = "ops-1"\n'),
        ),
        ("operator.callers[0].certificate_common_name", "client_ca"),
    ),
    Refusal(
        "tls_unknown_setting",
        lambda f: _config(f, operator_settings='[operator.tls]\nca_certificate = "ca.crt"\n'),
        ("operator.tls.ca_certificate", "client_ca"),
    ),
    Refusal(
        "tls_certificate_missing",
        lambda f: _config(f, operator_settings='[operator.tls]\ncertificate = "absent.crt"\nprivate_key = "k.key"\n'),
        ("operator.tls.certificate", "absent.crt"),
    ),
    Refusal(
        "tls_certificate_garbage",
        lambda f: _config(
            f,
            operator_settings=_operator_tls(f).replace("operator-tls/localhost.crt", "chn.trust.json"),
        ),
        ("operator.tls.certificate", "chn.trust.json", "PEM"),
    ),
    Refusal(
        "tls_key_of_another_certificate",
        lambda f: _config(f, operator_settings=_operator_tls(f, key_of="other")),
        ("operator.tls.private_key", "other.key", "localhost.crt"),
    ),
]


@pytest.fixture(scope="module")
def refused_starts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every refusal's ``serve``, run in parallel."""
    root = tmp_path_factory.mktemp("refused-starts")
    configs = {case.name: case.prepare(_keys(root / case.name)) for case in REFUSALS}
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(configs, pool.map(_refused_serve, configs.values()), strict=True))


def _refused_serve(config: Path) -> subprocess.CompletedProcess[str]:
    """``serve`` that is expected to stop at once; the generous timeout only absorbs a loaded machine (a start
    that wrongly succeeded would still end in `subprocess.TimeoutExpired`)."""
    return subprocess.run([*SERVE, str(config)], capture_output=True, text=True, timeout=4 * TIMEOUT, check=False)


@pytest.mark.parametrize("case", REFUSALS, ids=[case.name for case in REFUSALS])
def test_a_refused_operator_configuration_ends_in_one_line_naming_it(
    case: Refusal, refused_starts: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    line = _assert_one_line_naming(refused_starts[case.name], *case.names)
    assert "my-secret-token" not in line


def test_a_served_gateway_admits_certificate_and_token_callers_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real ``serve`` on all addresses with [operator.tls] and a client CA; the CLI connects with --config (TLS,
    the server verified against client_ca), a client certificate, and a token for the administrator."""
    folder = _keys(tmp_path)
    port = free_port()
    callers = _caller("ops-1", "read-only", 'certificate_common_name = "ops-1"\n') + _caller("boss", "administrator")
    # A wildcard listen: the CLI, given --config, calls it on loopback (which the certificate names).
    config = _config(folder, operator=f"0.0.0.0:{port}", operator_settings=_operator_tls(folder) + callers)
    client_cert, client_key = folder / "operator-tls" / "other.crt", folder / "operator-tls" / "other.key"
    ops_cert, ops_key = folder / "operator-tls" / "ops-1.crt", folder / "operator-tls" / "ops-1.key"
    token = folder / "boss.token"
    token.write_text("boss\n")
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([*SERVE, str(config)], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        summary = ["ledger", "summary", "--config", str(config), "--client-cert", str(ops_cert)]
        summary += ["--client-key", str(ops_key)]
        deadline = time.monotonic() + 4 * TIMEOUT  # a loaded machine starts a gateway slowly
        while True:
            assert process.poll() is None, log.read_text()
            code = main(summary)
            out, err = capsys.readouterr()
            if code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert code == 0 and "method:" in out, err
        lock = ["ledger", "lock", "--config", str(config), "--key", "l1", "--from", "2021", "--to", "2022"]
        lock += ["--reason", "final", "--client-cert", str(ops_cert), "--client-key", str(ops_key)]
        assert main(lock) == 1
        assert "CALLER_NOT_PERMITTED" in capsys.readouterr().err
        # Another certificate of the same CA, with the administrator's token: the token names the caller.
        lock += ["--token-file", str(token)]
        lock[lock.index(str(ops_cert))], lock[lock.index(str(ops_key))] = str(client_cert), str(client_key)
        code = main(lock)
        out, err = capsys.readouterr()
        assert "CALLER" not in err, err
        assert code == 0 and "locked 2021-2022" in out, err
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(TIMEOUT)


def test_the_readme_documents_the_role_table() -> None:
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (read-only|operator|administrator) \|$", readme, flags=re.MULTILINE))
    assert rows == {method.rsplit("/", 1)[1]: role.value for method, role in METHOD_ROLES.items()}


def test_the_readme_operator_example_loads(tmp_path: Path) -> None:
    import re

    from gateway.config import load_config

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = re.search(r"```toml\n(\[operator\]\nlisten = \"0\.0\.0\.0.*?)```", readme, flags=re.DOTALL)
    assert example is not None
    path = tmp_path / "gateway.toml"
    path.write_text(
        'party = "CHN"\ndatabase = "chn.db"\nsigner = "chn.key"\ntrust_document = "chn.trust.json"\n' + example[1]
    )
    access = load_config(path).operator_access
    assert access.tls is not None and access.tls.client_ca == tmp_path / "tls" / "operator-ca.crt"
    assert [(c.name, c.role, c.certificate_common_name, c.calls_at_once) for c in access.callers] == [
        ("registry-ops", Role.OPERATOR, "", 64),
        ("ops-1", Role.READ_ONLY, "ops-1", 256),
    ]
    assert not access.unauthenticated_loopback


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ('[[operator.callers]]\nname = "x"\nrole = "operator"\ncertificate_common_name = "che-gw"\n', ("che-gw",)),
        ('[[operator.callers]]\nname = "x"\nrole = "operator"\ncertificate_common_name = "CHE"\n', ("'CHE'",)),
        # Compared without regard to case, and this gateway's own partner certificate name is refused too.
        (
            '[[operator.callers]]\nname = "x"\nrole = "operator"\ncertificate_common_name = "che"\n',
            ("'che'", "partners[0].party"),
        ),
        (
            '[[operator.callers]]\nname = "x"\nrole = "operator"\ncertificate_common_name = "CHE-GW"\n',
            ("'CHE-GW'", "partners[0].tls_identity"),
        ),
        (
            '[[operator.callers]]\nname = "x"\nrole = "operator"\ncertificate_common_name = "CHN"\n',
            ("'CHN'", "this gateway's own"),
        ),
        (
            '[[operator.callers]]\nname = "x"\nrole = "operator"\ncertificate_common_name = "chn"\n',
            ("'chn'", "this gateway's own"),
        ),
    ],
)
def test_a_certificate_caller_may_not_bear_a_partners_tls_identity(
    tmp_path: Path, settings: str, names: tuple[str, ...]
) -> None:
    from gateway.config import ConfigError, load_config

    path = tmp_path / "gateway.toml"
    path.write_text(
        'party = "CHN"\ndatabase = "chn.db"\nsigner = "chn.key"\ntrust_document = "chn.trust.json"\n'
        '[operator]\n[operator.tls]\ncertificate = "c"\nprivate_key = "k"\nclient_ca = "ca"\n'
        f"{settings}"
        '[[partners]]\nparty = "CHE"\naddress = "127.0.0.1:9"\ntrust_document = "che.json"\ntls_identity = "che-gw"\n'
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value).startswith("operator.callers[0].certificate_common_name:")
    for name in names:
        assert name in str(refused.value)


@pytest.mark.parametrize("name", ["Anonymous", "ANONYMOUS", "anonymous"])
def test_a_caller_may_not_be_named_like_unauthenticated_callers_in_any_case(tmp_path: Path, name: str) -> None:
    from gateway.config import ConfigError, load_config

    path = tmp_path / "gateway.toml"
    path.write_text(
        'party = "CHN"\ndatabase = "chn.db"\nsigner = "chn.key"\ntrust_document = "chn.trust.json"\n'
        f'[[operator.callers]]\nname = "{name}"\nrole = "read-only"\ntoken_sha256 = "{"0" * 64}"\n'
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value).startswith("operator.callers[0].name:")
    assert "unauthenticated_loopback" in str(refused.value)


@pytest.mark.asyncio
async def test_a_generated_token_authenticates_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "ops.token"
    code, out, err = await _cli(capsys, "token", "generate", "--out", str(token_file))
    assert code == 0, err
    token = token_file.read_text().strip()
    assert token not in out and token_file.stat().st_mode & 0o777 == 0o600
    digest = out.strip().removeprefix('token_sha256 = "').removesuffix('"')
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    code, _, err = await _cli(capsys, "token", "generate", "--out", str(token_file))
    assert code == 2 and "exists" in err and token_file.read_text().strip() == token
    code, _, err = await _cli(capsys, "token", "generate", "--out", str(tmp_path))
    assert code == 2 and f"{tmp_path} is a folder; name a new file in it" in err, err
    caller = OperatorCaller("generated", Role.READ_ONLY, token_sha256=bytes.fromhex(digest))
    node = await _node(tmp_path / "node", OperatorAccess(callers=(caller,)))
    try:
        summary = ("ledger", "summary", "--address", node.operator_address)
        code, out, err = await _cli(capsys, *summary, "--token-file", str(token_file))
        assert code == 0 and "method:" in out, err
        code, _, err = await _cli(capsys, *summary)
        assert code == 1 and "CALLER_UNAUTHENTICATED" in err, err
    finally:
        await node.stop(0)
