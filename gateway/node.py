"""Wiring one gateway: store, signer, partners, service, exchange, outbox worker and the gRPC servers."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc
from gateway.config import GatewayConfig, TLSConfig
from gateway.domain.protocol import DecisionPolicy
from gateway.domain.statements import TimeWindow
from gateway.exchange import Exchange, ExchangeSettings
from gateway.outbox import OutboxWorker
from gateway.partners import Partner, PartnerDirectory
from gateway.rpc.operator import OperatorService
from gateway.rpc.partner import SERVICE_NAME as PARTNER_SERVICE
from gateway.rpc.partner import GrpcPartnerTransport, partner_handler
from gateway.service import Gateway
from gateway.store.sqlite import SQLiteStore
from signing import Envelope, Signer, TrustedParty, signer_from_uri

log = logging.getLogger(__name__)

OPERATOR_SERVICE = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name


def utc_now() -> dt.datetime:
    """The current UTC time."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class PartnerSpec:
    """What a gateway knows of a partner before it starts."""

    party: str
    address: str
    trust_envelope: Envelope
    tls_identity: str = ""


def _server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(tls.private_key.read_bytes(), tls.certificate.read_bytes())],
        root_certificates=tls.ca_certificate.read_bytes(),
        require_client_auth=True,
    )


def _channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_certificate.read_bytes(),
        private_key=tls.private_key.read_bytes(),
        certificate_chain=tls.certificate.read_bytes(),
    )


class GatewayNode:
    """A running gateway: its operator server, its partner server and its outbox worker."""

    def __init__(
        self,
        *,
        party: str,
        store: SQLiteStore,
        signer: Signer,
        partners: Sequence[PartnerSpec],
        policy: DecisionPolicy,
        operator_listen: str = "127.0.0.1:0",
        partner_listen: str = "127.0.0.1:0",
        tls: TLSConfig | None = None,
        settings: ExchangeSettings | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.party = party
        self.store = store
        self.signer = signer
        self.clock = clock
        self.tls = tls
        now = clock()
        self.partners = PartnerDirectory.of(
            Partner(
                party=p.party,
                address=p.address,
                trusted=TrustedParty.bootstrap(p.trust_envelope, now),
                tls_identity=p.tls_identity,
            )
            for p in partners
        )
        self.gateway = Gateway(party=party, store=store, policy=policy, clock=clock)
        self.exchange = Exchange(
            settings or ExchangeSettings(self_party=party),
            signer=signer,
            partners=self.partners,
            store=store,
            handler=self.gateway.on_statement,
            clock=clock,
        )
        self.gateway.attach(self.exchange)
        self.transport = GrpcPartnerTransport(self.partners, credentials=_channel_credentials(tls) if tls else None)
        self.outbox = OutboxWorker(store=store, exchange=self.exchange, transport=self.transport, clock=clock)
        self.exchange.on_enqueued = self.outbox.wake
        self._operator_listen = operator_listen
        self._partner_listen = partner_listen
        self.operator_server: grpc.aio.Server | None = None
        self.partner_server: grpc.aio.Server | None = None
        self.operator_port = 0
        self.partner_port = 0

    @classmethod
    async def from_config(cls, config: GatewayConfig) -> GatewayNode:
        """Open the store and build the gateway a configuration file describes."""
        partners = [
            PartnerSpec(
                party=p.party,
                address=p.address,
                trust_envelope=Envelope.from_json(p.trust_document.read_bytes()),
                tls_identity=p.tls_identity,
            )
            for p in config.partners
        ]
        settings = ExchangeSettings(
            self_party=config.party,
            max_envelope_bytes=config.max_envelope_bytes,
            window=TimeWindow(clock_skew=config.clock_skew, max_lifetime=config.max_message_lifetime),
            message_lifetime=config.message_lifetime,
        )
        return cls(
            party=config.party,
            store=await SQLiteStore.open(config.database),
            signer=signer_from_uri(config.signer),
            partners=partners,
            policy=config.policy,
            operator_listen=config.operator_listen,
            partner_listen=config.partner_listen,
            tls=config.tls,
            settings=settings,
        )

    @property
    def operator_address(self) -> str:
        """The operator API's address, with the port actually bound."""
        return f"{self._operator_listen.rsplit(':', 1)[0]}:{self.operator_port}"

    @property
    def partner_address(self) -> str:
        """The partner exchange's address, with the port actually bound."""
        return f"{self._partner_listen.rsplit(':', 1)[0]}:{self.partner_port}"

    async def start(self) -> None:
        """Bind both servers (port 0 picks a free port) and start the outbox worker."""
        limit = self.exchange.settings.max_envelope_bytes
        options = [("grpc.max_receive_message_length", 4 * limit + 4096)]

        self.operator_server = grpc.aio.server()
        operator_pb2_grpc.add_OperatorServiceServicer_to_server(OperatorService(self.gateway), self.operator_server)
        await self._add_health_and_reflection(self.operator_server, OPERATOR_SERVICE)
        self.operator_port = self.operator_server.add_insecure_port(self._operator_listen)

        self.partner_server = grpc.aio.server(options=options)
        self.partner_server.add_generic_rpc_handlers(
            (partner_handler(self.exchange, require_peer_identity=self.tls is not None),)
        )
        await self._add_health_and_reflection(self.partner_server, PARTNER_SERVICE)
        if self.tls is not None:
            self.partner_port = self.partner_server.add_secure_port(self._partner_listen, _server_credentials(self.tls))
        else:
            log.warning(
                "%s: the partner exchange listens WITHOUT TLS on %s. Use this only for local demos and tests;"
                " configure [tls] for any real partner.",
                self.party,
                self._partner_listen,
            )
            self.partner_port = self.partner_server.add_insecure_port(self._partner_listen)
        await self.operator_server.start()
        await self.partner_server.start()
        self.outbox.start()
        self.outbox.wake()

    @staticmethod
    async def _add_health_and_reflection(server: grpc.aio.Server, service: str) -> None:
        servicer = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        for name in ("", service):
            await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            (service, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )

    def set_partner_address(self, party: str, address: str) -> None:
        """Point at a partner's address (when the partner bound port 0 after this gateway was built)."""
        partner = self.partners.get(party)
        if partner is None:
            raise KeyError(party)
        partner.address = address

    async def stop(self, grace: float = 5.0) -> None:
        """Finish in-flight calls (up to ``grace`` seconds), stop the worker and close the store."""
        for server in (self.operator_server, self.partner_server):
            if server is not None:
                await server.stop(grace)
        await self.outbox.stop()
        await self.transport.close()
        await self.store.close()
