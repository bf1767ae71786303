"""The partner-exchange gRPC service and client, carrying raw envelope bytes both ways.

The servicer hands the request bytes, unparsed, to `gateway.exchange.Exchange.receive`, so the size cap is
checked before parsing and the same checks serve the gRPC and the HTTP path. The client sends the stored
envelope bytes verbatim.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from gateway.exchange import EnvelopeForm, Exchange
from gateway.outbox import TransportError
from gateway.partners import PartnerDirectory

log = logging.getLogger(__name__)

SERVICE_NAME = "carbon_gateway.v1.PartnerExchange"
DELIVER_METHOD = f"/{SERVICE_NAME}/Deliver"


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The common name of the peer's verified TLS certificate, or None without mTLS."""
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    names = list(auth.get("x509_common_name") or [])
    return names[0].decode() if names else ""


def partner_handler(exchange: Exchange, *, require_peer_identity: bool) -> grpc.GenericRpcHandler[Any, Any]:
    """The generic handler implementing `carbon_gateway.v1.PartnerExchange`."""

    async def deliver(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        identity = peer_identity(context) if require_peer_identity else None
        received = await exchange.receive(request, form=EnvelopeForm.PROTOBUF, peer_identity=identity)
        return received.receipt

    return grpc.method_handlers_generic_handler(SERVICE_NAME, {"Deliver": grpc.unary_unary_rpc_method_handler(deliver)})


class GrpcPartnerTransport:
    """Delivers envelopes to partners over gRPC, one channel per partner, reused across calls."""

    def __init__(
        self,
        partners: PartnerDirectory,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.partners = partners
        self.credentials = credentials
        self.timeout = timeout
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}

    def _channel(self, party: str) -> grpc.aio.Channel:
        partner = self.partners.get(party)
        if partner is None:
            raise TransportError(f"no partner {party!r} is configured")
        channel = self._channels.get((party, partner.address))
        if channel is None:
            options = [("grpc.ssl_target_name_override", partner.identity)] if self.credentials else []
            channel = (
                grpc.aio.secure_channel(partner.address, self.credentials, options=options)
                if self.credentials
                else grpc.aio.insecure_channel(partner.address)
            )
            self._channels[(party, partner.address)] = channel
        return channel

    async def deliver(self, party: str, envelope: bytes) -> bytes:
        """Send ``envelope`` to ``party``; return the receipt bytes."""
        call = self._channel(party).unary_unary(DELIVER_METHOD, None, None)
        try:
            receipt: bytes = await call(envelope, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise TransportError(f"{party}: {exc.code().name}: {exc.details()}") from None
        return receipt

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
