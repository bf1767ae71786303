"""The operator gRPC service: registry operators' calls, translated to `gateway.service.Gateway`."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, records_pb2
from gateway import wire
from gateway.domain.blocks import BlockError, SerialSpace
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.partners import TRANSFER_ROLE
from gateway.rpc.errors import refusals_as_status
from gateway.service import BlockSelection, Gateway, Idempotency, TransferRequest
from gateway.store.base import StoredBlock
from gateway.trust import PushResult, TrustKeeper
from signing import Envelope, EnvelopeFormatError, SignerError, TrustedParty, signer_from_uri

Context = grpc.aio.ServicerContext

ANONYMOUS_CALLER = "anonymous"
"""The caller of an unauthenticated operator call (operator authentication comes later)."""


def _idempotency(method: str, request: object, key: str) -> Idempotency:
    return Idempotency(ANONYMOUS_CALLER, method, key, wire.request_hash(request))  # type: ignore[arg-type]


def _holding(stored: StoredBlock) -> operator_pb2.Holding:
    return operator_pb2.Holding(
        block_id=stored.block_id,
        account_id=stored.account_id,
        status=stored.status.value,
        block=wire.block_to_proto(stored.block),
        transfer_id=stored.transfer_id,
    )


def _trust_status(party: str, trusted: TrustedParty, pushed: Sequence[PushResult] = ()) -> operator_pb2.TrustStatus:
    return operator_pb2.TrustStatus(
        party=party,
        version=trusted.version,
        expires=trusted.expires.isoformat(),
        transfer_keyids=list(trusted.document.roles[TRANSFER_ROLE].keyids),
        pushed=[
            operator_pb2.PushResult(party=p.party, code=int(p.code), detail=p.detail)  # type: ignore[arg-type]
            for p in pushed
        ],
    )


class TrustOperations:
    """The operator calls about trust documents, mixed into `OperatorService`."""

    trust: TrustKeeper

    @refusals_as_status
    async def RotateTrustDocument(
        self, request: operator_pb2.RotateTrustDocumentRequest, context: Context[object, object]
    ) -> operator_pb2.TrustStatus:
        try:
            envelope = Envelope.from_json(request.envelope_json)
        except EnvelopeFormatError as exc:
            raise GatewayError(ResponseCode.INVALID_ARGUMENT, str(exc), field="envelope_json") from None
        try:
            signer = signer_from_uri(request.signer)
        except SignerError as exc:
            raise GatewayError(ResponseCode.INVALID_ARGUMENT, str(exc), field="signer") from None
        updated, pushed = await self.trust.rotate(envelope, signer)
        return _trust_status(self.trust.party, updated, pushed)

    @refusals_as_status
    async def RefreshPartnerTrust(
        self, request: operator_pb2.RefreshPartnerTrustRequest, context: Context[object, object]
    ) -> operator_pb2.TrustStatus:
        partner = self.trust.partners.get(request.party)
        if partner is None:
            raise GatewayError(ResponseCode.UNKNOWN_PARTNER, f"{request.party!r} is not a partner", field="party")
        updated = await self.trust.refresh(request.party, partner.http_url)
        return _trust_status(request.party, updated)

    @refusals_as_status
    async def ListTrust(
        self, request: operator_pb2.ListTrustRequest, context: Context[object, object]
    ) -> operator_pb2.ListTrustResponse:
        return operator_pb2.ListTrustResponse(
            own=_trust_status(self.trust.party, self.trust.own),
            partners=[
                _trust_status(p, partner.trusted) for p, partner in sorted(self.trust.partners.parties().items())
            ],
        )


class OperatorService(TrustOperations, operator_pb2_grpc.OperatorServiceServicer):
    """Implements `carbon_gateway.v1.OperatorService`."""

    def __init__(self, gateway: Gateway, trust: TrustKeeper) -> None:
        self.gateway = gateway
        self.trust = trust

    @refusals_as_status
    async def OpenAccount(
        self, request: operator_pb2.OpenAccountRequest, context: Context[object, object]
    ) -> records_pb2.Account:
        account = wire.account_from_proto(request.account)
        idem = _idempotency("OpenAccount", request, request.idempotency_key)
        return wire.account_to_proto(await self.gateway.open_account(idem, account))

    @refusals_as_status
    async def RegisterAuthorization(
        self, request: operator_pb2.RegisterAuthorizationRequest, context: Context[object, object]
    ) -> records_pb2.Authorization:
        authorization = wire.authorization_from_proto(request.authorization)
        idem = _idempotency("RegisterAuthorization", request, request.idempotency_key)
        return wire.authorization_to_proto(await self.gateway.register_authorization(idem, authorization))

    @refusals_as_status
    async def RegisterIssuance(
        self, request: operator_pb2.RegisterIssuanceRequest, context: Context[object, object]
    ) -> operator_pb2.Holding:
        if not request.HasField("block"):
            raise GatewayError(ResponseCode.INVALID_ARGUMENT, "the request has no block", field="block")
        block = wire.block_from_proto(request.block)
        idem = _idempotency("RegisterIssuance", request, request.idempotency_key)
        return _holding(await self.gateway.register_issuance(idem, request.account_id, block))

    @refusals_as_status
    async def ProposeTransfer(
        self, request: operator_pb2.ProposeTransferRequest, context: Context[object, object]
    ) -> records_pb2.Transfer:
        selections = []
        for i, s in enumerate(request.selections):
            field = f"selections[{i}]"
            if s.end < s.start:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT, f"end {s.end} precedes start {s.start}", field=f"{field}.end"
                )
            if s.start < 0:
                raise GatewayError(ResponseCode.INVALID_ARGUMENT, "serials are not negative", field=f"{field}.start")
            try:
                space = SerialSpace(s.space.unit_kind, s.space.issuing_registry, s.space.issuance)
            except BlockError as exc:
                raise GatewayError(ResponseCode.INVALID_ARGUMENT, str(exc), field=f"{field}.space") from None
            if not space.unit_kind or not space.issuing_registry:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT, "name the unit kind and the issuing registry", field=f"{field}.space"
                )
            selections.append(BlockSelection(space, s.start, s.end))
        transfer_request = TransferRequest(
            source_account=request.source_account,
            selections=tuple(selections),
            acquiring_party=request.acquiring_account.party,
            acquiring_account=request.acquiring_account.account_id,
            cooperative_approach=request.cooperative_approach,
            authorization_id=request.authorization_id,
            purpose=request.purpose,
            adjustment_method=request.adjustment_method,
        )
        idem = _idempotency("ProposeTransfer", request, request.idempotency_key)
        return wire.transfer_to_proto(await self.gateway.propose_transfer(idem, transfer_request))

    @refusals_as_status
    async def CancelTransfer(
        self, request: operator_pb2.CancelTransferRequest, context: Context[object, object]
    ) -> records_pb2.Transfer:
        idem = _idempotency("CancelTransfer", request, request.idempotency_key)
        return wire.transfer_to_proto(await self.gateway.cancel_transfer(idem, request.transfer_id, request.reason))

    @refusals_as_status
    async def DecideTransfer(
        self, request: operator_pb2.DecideTransferRequest, context: Context[object, object]
    ) -> records_pb2.Transfer:
        idem = _idempotency("DecideTransfer", request, request.idempotency_key)
        transfer = await self.gateway.decide_held_transfer(idem, request.transfer_id, request.accept, request.reason)
        return wire.transfer_to_proto(transfer)

    @refusals_as_status
    async def GetTransfer(
        self, request: operator_pb2.GetTransferRequest, context: Context[object, object]
    ) -> records_pb2.Transfer:
        return wire.transfer_to_proto(await self.gateway.get_transfer(request.transfer_id))

    @refusals_as_status
    async def ListTransfers(
        self, request: operator_pb2.ListTransfersRequest, context: Context[object, object]
    ) -> operator_pb2.ListTransfersResponse:
        transfers = await self.gateway.list_transfers()
        return operator_pb2.ListTransfersResponse(transfers=[wire.transfer_to_proto(t) for t in transfers])

    @refusals_as_status
    async def ListLedgerEntries(
        self, request: operator_pb2.ListLedgerEntriesRequest, context: Context[object, object]
    ) -> operator_pb2.ListLedgerEntriesResponse:
        entries = await self.gateway.list_ledger()
        return operator_pb2.ListLedgerEntriesResponse(entries=[wire.ledger_entry_to_proto(e) for e in entries])

    @refusals_as_status
    async def ListHoldings(
        self, request: operator_pb2.ListHoldingsRequest, context: Context[object, object]
    ) -> operator_pb2.ListHoldingsResponse:
        holdings = await self.gateway.list_holdings(request.account_id)
        return operator_pb2.ListHoldingsResponse(holdings=[_holding(h) for h in holdings])
