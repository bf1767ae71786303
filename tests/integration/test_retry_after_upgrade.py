"""A retry of an authorization request an earlier release recorded is answered as its first call was.

A client whose answer was lost retries with the same idempotency key and request. Where the earlier release took
the request in under rules this one has since tightened (no activity type, a version or reason spelled ``NA``, a
first-transfer definition that does not fit the purposes), refusing the retry would tell the client that what is
recorded was not. The retry gets the recorded version; the same request under a new key, or another request under
the same key, is refused as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2, records_pb2
from gateway import wire
from gateway.demo import DEMO_AUTHORIZATION, Pair
from gateway.domain import text
from gateway.domain.errors import ResponseCode
from gateway.domain.records import Authorization
from gateway.rpc.errors import read_error_detail
from gateway.usecases import authorizations, registration
from tests.integration.harness import operator


def _refusal(error: grpc.aio.AioRpcError) -> tuple[ResponseCode, str]:
    detail = read_error_detail(error.trailing_metadata())
    assert detail is not None, error
    return ResponseCode(detail.code), detail.field


def _earlier_wire(real: Callable[..., Authorization]) -> Callable[..., Authorization]:
    """`wire.authorization_from_proto` as an earlier release had it: no activity type required."""

    def read(msg: records_pb2.Authorization, field: str = "authorization") -> Authorization:
        if msg.activity_types:
            return real(msg, field)
        patched = records_pb2.Authorization()
        patched.CopyFrom(msg)
        patched.activity_types.append("Solar")
        return dataclasses.replace(real(patched, field), activity_types=())

    return read


def _without_activity_type(authorization_id: str, version: str = "1.0") -> records_pb2.Authorization:
    msg = records_pb2.Authorization()
    msg.CopyFrom(DEMO_AUTHORIZATION)
    msg.authorization_id, msg.version = authorization_id, version
    del msg.activity_types[:]
    return msg


@pytest.mark.asyncio
async def test_a_registration_and_an_amendment_recorded_under_older_rules_are_replayed(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    register = operator_pb2.RegisterAuthorizationRequest(
        idempotency_key="auth", authorization=_without_activity_type("CHN-A-0009")
    )
    # An amendment for NDC and OIMP defined at the first international transfer, which the AEF refuses.
    amended = _without_activity_type("CHN-A-0009", "2.0")
    amended.activity_types.append("Solar")
    amended.purposes.append("OIMP")
    amended.date = "2026-02-01"
    amend = operator_pb2.AmendAuthorizationRequest(idempotency_key="amend", authorization=amended)
    async with operator(pair.chn) as chn:
        with monkeypatch.context() as earlier:
            earlier.setattr(wire, "authorization_from_proto", _earlier_wire(wire.authorization_from_proto))
            for module in (registration, authorizations):
                earlier.setattr(module, "check_definition", lambda authorization, field: None)
            first = await chn.RegisterAuthorization(register)
            first_amendment = await chn.AmendAuthorization(amend)
        assert list(first.activity_types) == [] and first_amendment.version == "2.0"

        assert await chn.RegisterAuthorization(register) == first
        assert await chn.AmendAuthorization(amend) == first_amendment

        # The same requests under new keys are refused, naming the field; nothing more is recorded.
        again = operator_pb2.RegisterAuthorizationRequest(
            idempotency_key="auth-2", authorization=register.authorization
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.RegisterAuthorization(again)
        assert _refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "authorization.activity_types")
        amended.version = "3.0"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.AmendAuthorization(
                operator_pb2.AmendAuthorizationRequest(idempotency_key="amend-2", authorization=amended)
            )
        assert _refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "authorization.first_transfer_definition")
        # Another request under a recorded key: the refusal of the request stands, not a replay.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.AmendAuthorization(
                operator_pb2.AmendAuthorizationRequest(idempotency_key="amend", authorization=amended)
            )
        assert _refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "authorization.first_transfer_definition")
        listed = await chn.ListAuthorizations(operator_pb2.ListAuthorizationsRequest(authorization_id="CHN-A-0009"))
    assert [v.version for v in listed.versions] == ["1.0", "2.0"]


@pytest.mark.asyncio
async def test_a_revocation_recorded_under_older_rules_is_replayed(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    request = operator_pb2.RevokeAuthorizationRequest(
        idempotency_key="revoke", authorization_id="CHN-A-0001", version="NA", date="2026-06-04", reason="NA"
    )
    async with operator(pair.chn) as chn:
        await chn.RegisterAuthorization(
            operator_pb2.RegisterAuthorizationRequest(idempotency_key="auth", authorization=DEMO_AUTHORIZATION)
        )
        with monkeypatch.context() as earlier:
            earlier.setattr(text, "check_not_na", lambda value, field: None)
            first = await chn.RevokeAuthorization(request)
        assert first.revoked and first.version == "NA"

        assert await chn.RevokeAuthorization(request) == first

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chn.RevokeAuthorization(
                operator_pb2.RevokeAuthorizationRequest(
                    idempotency_key="revoke-2",
                    authorization_id="CHN-A-0001",
                    version="NA",
                    date="2026-06-05",
                    reason="NA",
                )
            )
        assert _refusal(caught.value) == (ResponseCode.INVALID_ARGUMENT, "version")
