"""Wiring one gateway: store, signer, partners, service, exchange, outbox worker and the gRPC servers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from carbon_gateway.v1 import mapping_pb2, mapping_pb2_grpc, operator_pb2, operator_pb2_grpc
from gateway.config import GatewayConfig, TLSConfig
from gateway.domain.protocol import Deadlines, DecisionPolicy
from gateway.domain.statements import TimeWindow
from gateway.exchange import Exchange, ExchangeSettings
from gateway.http.app import HttpServer, build_app
from gateway.outbox import OutboxWorker
from gateway.partners import Partner, PartnerDirectory
from gateway.rpc.mapping import MappingService
from gateway.rpc.operator import OperatorService
from gateway.rpc.partner import SERVICE_NAME as PARTNER_SERVICE
from gateway.rpc.partner import GrpcPartnerTransport, partner_handler
from gateway.service import Gateway
from gateway.store.sqlite import SQLiteStore
from gateway.trust import TrustKeeper
from signing import Envelope, Signer, TrustedParty, signer_from_uri

log = logging.getLogger(__name__)

OPERATOR_SERVICE = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name
MAPPING_SERVICE = mapping_pb2.DESCRIPTOR.services_by_name["MappingService"].full_name


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
    http_url: str = ""


def _restore(envelope: Envelope, what: str, now: dt.datetime) -> TrustedParty:
    trusted = TrustedParty.restore(envelope)
    if trusted.document.is_expired(now):
        log.error(
            "%s (version %d) has expired: statements it covers are refused until a newer version is applied",
            what,
            trusted.version,
        )
    return trusted


def _client_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_certificate))
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    return context


def _ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca_certificate))
    context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


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
        own_trust: Envelope,
        partners: Sequence[PartnerSpec],
        policy: DecisionPolicy,
        operator_listen: str = "127.0.0.1:0",
        partner_listen: str = "127.0.0.1:0",
        http_listen: str | None = None,
        tls: TLSConfig | None = None,
        settings: ExchangeSettings | None = None,
        deadlines: Deadlines | None = None,
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
                trusted=_restore(p.trust_envelope, f"{p.party}'s trust document", now),
                tls_identity=p.tls_identity,
                http_url=p.http_url,
            )
            for p in partners
        )
        self.gateway = Gateway(party=party, store=store, policy=policy, clock=clock, deadlines=deadlines)
        self._sweeper: asyncio.Task[None] | None = None
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
        self.trust = TrustKeeper(
            party=party,
            own=_restore(own_trust, "our own trust document", now),
            store=store,
            partners=self.partners,
            exchange=self.exchange,
            transport=self.transport,
            clock=clock,
            ssl_context=_client_ssl_context(tls) if tls else None,
        )
        self._http_listen = http_listen
        self.http_server: HttpServer | None = None
        self.http_port = 0
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
                http_url=p.http_url,
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
            own_trust=Envelope.from_json(config.trust_document.read_bytes()),
            partners=partners,
            policy=config.policy,
            operator_listen=config.operator_listen,
            partner_listen=config.partner_listen,
            http_listen=config.http_listen,
            tls=config.tls,
            settings=settings,
            deadlines=Deadlines(hold=config.hold_deadline, decision=config.decision_timeout),
        )

    @property
    def operator_address(self) -> str:
        """The operator API's address, with the port actually bound."""
        return f"{self._operator_listen.rsplit(':', 1)[0]}:{self.operator_port}"

    @property
    def partner_address(self) -> str:
        """The partner exchange's address, with the port actually bound."""
        return f"{self._partner_listen.rsplit(':', 1)[0]}:{self.partner_port}"

    @property
    def http_url(self) -> str:
        """The base URL of the HTTP server, with the port actually bound ('' without one)."""
        if self._http_listen is None:
            return ""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._http_listen.rsplit(':', 1)[0]}:{self.http_port}"

    async def start(self) -> None:
        """Load trust, bind the servers (port 0 picks a free port) and start the outbox worker."""
        await self.trust.load()
        limit = self.exchange.settings.max_envelope_bytes
        options = [("grpc.max_receive_message_length", 4 * limit + 4096)]

        self.operator_server = grpc.aio.server()
        operator_pb2_grpc.add_OperatorServiceServicer_to_server(
            OperatorService(self.gateway, self.trust), self.operator_server
        )
        mapping_pb2_grpc.add_MappingServiceServicer_to_server(MappingService(), self.operator_server)
        await self._add_health_and_reflection(self.operator_server, OPERATOR_SERVICE, MAPPING_SERVICE)
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
        if self._http_listen is not None:
            host, _, port = self._http_listen.rpartition(":")
            self.http_server = HttpServer(
                build_app(self.exchange, self.trust.published),
                host,
                int(port),
                _ssl_context(self.tls) if self.tls else None,
            )
            self.http_port = await self.http_server.start()
        self.outbox.start()
        self.outbox.wake()
        self._sweeper = asyncio.create_task(self._sweep(), name="deadlines")

    async def _sweep(self) -> None:
        deadlines = self.gateway.deadlines
        period = min(max(min(deadlines.hold, deadlines.decision).total_seconds() / 10, 0.05), 60.0)
        while True:
            try:
                await self.gateway.expire_overdue()
            except Exception:
                log.exception("%s: ending overdue transfers failed; retrying", self.party)
            await asyncio.sleep(period)

    @staticmethod
    async def _add_health_and_reflection(server: grpc.aio.Server, *services: str) -> None:
        servicer = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        for name in ("", *services):
            await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            (*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
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
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.http_server is not None:
            await self.http_server.stop()
        await self.outbox.stop()
        await self.transport.close()
        await self.store.close()
        close = getattr(self.exchange.signer, "close", None)
        if callable(close):
            close()
