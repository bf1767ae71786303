"""Wiring one gateway: a `gateway.core.GatewayCore` with its gRPC servers and optional HTTP server."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from carbon_gateway.v1 import mapping_pb2, mapping_pb2_grpc, operator_pb2, operator_pb2_grpc
from gateway.config import (
    DEFAULT_SIGNER_NAME,
    MAX_TRUST_DOCUMENT_BYTES,
    ConfigError,
    GatewayConfig,
    OperatorTLSConfig,
    TLSConfig,
)
from gateway.core import GatewayCore, PartnerSpec, utc_now
from gateway.domain.access import DeliveryPlaces, is_loopback_host
from gateway.domain.errors import GatewayError
from gateway.domain.nomenclature import DEFAULT_NOMENCLATURE, Nomenclature
from gateway.domain.protocol import Deadlines, DecisionPolicy
from gateway.domain.statements import TimeWindow
from gateway.exchange import Exchange, ExchangeSettings
from gateway.http.app import HttpServer, build_app
from gateway.outbox import OutboxWorker, PartnerTransport
from gateway.partners import PartnerDirectory
from gateway.rpc.auth import OpenMethodsInterceptor, OperatorAccess, OperatorAuthInterceptor
from gateway.rpc.health import DatabaseHealth
from gateway.rpc.interceptors import MalformedRequestInterceptor
from gateway.rpc.mapping import MappingService
from gateway.rpc.operator import OperatorService
from gateway.rpc.partner import SERVICE_NAME as PARTNER_SERVICE
from gateway.rpc.partner import GrpcPartnerTransport, partner_handler
from gateway.service import Gateway
from gateway.store import UnsupportedDatabase, is_url, open_store
from gateway.store.base import DatabaseProbe, NotAGatewayDatabase, SchemaTooNew, Store
from gateway.store.sqlite import DatabaseInUse, SQLiteStore, WriteAheadLogDamaged, sqlite_advice
from gateway.trust import TrustKeeper
from gateway.usecases.base import DEFAULT_STATUS_QUERY_AFTER, LedgerOptions
from gateway.usecases.watching import ChangeFeed
from signing import (
    Envelope,
    EnvelopeFormatError,
    Signer,
    SigningError,
    TrustedParty,
    TrustError,
    VerificationError,
    signer_from_uri,
)
from signing.files import read_small_file

__all__ = ["GatewayNode", "PartnerSpec", "utc_now"]

log = logging.getLogger(__name__)

OPERATOR_SERVICE = operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name
MAPPING_SERVICE = mapping_pb2.DESCRIPTOR.services_by_name["MappingService"].full_name


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


def _operator_server_credentials(tls: OperatorTLSConfig) -> grpc.ServerCredentials:
    """TLS for the operator API. With a client CA, every connection must present a certificate it issued: gRPC
    in Python can require and verify client certificates, or not ask for them, but not ask and accept none."""
    return grpc.ssl_server_credentials(
        [(tls.private_key.read_bytes(), tls.certificate.read_bytes())],
        root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
        require_client_auth=tls.client_ca is not None,
    )


def _channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_certificate.read_bytes(),
        private_key=tls.private_key.read_bytes(),
        certificate_chain=tls.certificate.read_bytes(),
    )


ADJUSTMENT_SETTING = "adjustment settings"
"""The store setting that records the NDC period and adjustment method the first time a gateway starts with
them: the method is chosen once for the period (DESIGN.md section 3)."""


async def _recorded_once(store: Store, name: str, value: str, now: dt.datetime) -> str:
    """The store setting ``name``: ``value``, recorded now, the first time; what was recorded before after that."""
    async with store.transaction() as tx:
        recorded = await tx.get_setting(name)
        if recorded is None:
            await tx.put_setting(name, value, now)
            return value
    return recorded


async def _choose_method_once(store: Store, options: LedgerOptions, now: dt.datetime) -> None:
    """Record the configured adjustment settings the first time; refuse to start with different ones."""
    if options.adjustments is None:
        return
    chosen = options.adjustments.describe()
    recorded = await _recorded_once(store, ADJUSTMENT_SETTING, chosen, now)
    if recorded != chosen:
        raise other_adjustment_settings(recorded, chosen)


def other_adjustment_settings(recorded: str, chosen: str) -> ConfigError:
    """The refusal of adjustment settings ``chosen`` for a ledger kept under ``recorded``: what ``serve`` and
    ``config check`` both say."""
    return ConfigError(
        f"ledger: this gateway's ledger was kept under '{recorded}'; the configuration now says '{chosen}'."
        " The method is chosen once for an NDC period: restore the recorded settings"
    )


PARTY_SETTING = "party"
"""The store setting that records whose books the database keeps, the first time a gateway starts on it."""


async def _claim_database(store: Store, party: str, now: dt.datetime) -> None:
    """Record ``party`` as the database's owner the first time; refuse to start on another Party's database. Two
    Parties' gateways on one database would mix their books: one's holdings shown as the other's, and statements
    between them that never settle."""
    recorded = await _recorded_once(store, PARTY_SETTING, party, now)
    if recorded != party:
        raise another_partys_database(recorded, party)


def another_partys_database(recorded: str, party: str) -> ConfigError:
    """The refusal of a database that keeps ``recorded``'s books, for ``party``'s gateway."""
    return ConfigError(
        f"database: it keeps {recorded}'s books, and this gateway is {party}'s. Each Party's gateway needs a"
        f" database of its own (its replicas share it): name {party}'s"
    )


KEEPALIVE_SECONDS = 60.0
"""How often the gateway's servers ping each connection; a client that has not answered within
`KEEPALIVE_TIMEOUT_SECONDS` is gone (a frozen process, a cable pulled), and its calls end, their places with
them (watches, mapping calls), instead of waiting for TCP, which an idle stream never wakes."""
KEEPALIVE_TIMEOUT_SECONDS = 20.0


def keepalive_options() -> list[tuple[str, int]]:
    """The gRPC server options that ping every connection, with calls or without."""
    return [
        ("grpc.keepalive_time_ms", int(KEEPALIVE_SECONDS * 1000)),
        ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_SECONDS * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # An idle stream sends no data: keep pinging it, as often as the keepalive says (gRPC's own floor for
        # pings without data is five minutes).
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_time_between_pings_ms", int(KEEPALIVE_SECONDS * 1000)),
        ("grpc.http2.min_sent_ping_interval_without_data_ms", int(KEEPALIVE_SECONDS * 1000)),
        ("grpc.http2.ping_timeout_ms", int(KEEPALIVE_TIMEOUT_SECONDS * 1000)),
    ]


class GatewayNode:
    """A running gateway: a `GatewayCore` with its operator server, partner server and optional HTTP server."""

    def __init__(
        self,
        *,
        party: str,
        store: Store,
        signer: Signer,
        own_trust: Envelope,
        partners: Sequence[PartnerSpec],
        policy: DecisionPolicy,
        operator_listen: str = "127.0.0.1:0",
        partner_listen: str = "127.0.0.1:0",
        http_listen: str | None = None,
        tls: TLSConfig | None = None,
        operator_access: OperatorAccess | None = None,
        operator_tls: OperatorTLSConfig | None = None,
        settings: ExchangeSettings | None = None,
        deadlines: Deadlines | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        nomenclature: Nomenclature = DEFAULT_NOMENCLATURE,
        status_query_after: dt.timedelta = DEFAULT_STATUS_QUERY_AFTER,
        signers: Mapping[str, Signer] | None = None,
        ledger_options: LedgerOptions | None = None,
        reconcile_every: dt.timedelta | None = None,
        delivery_places: DeliveryPlaces | None = None,
    ) -> None:
        self.party = party
        self.delivery_places = delivery_places
        """The configured partner delivery places; None for the defaults."""
        self.clock = clock
        self.tls = tls
        self.operator_access = operator_access if operator_access is not None else OperatorAccess()
        """Who may call the operator API. The default admits nobody: the in-process harness passes
        `gateway.rpc.auth.LOOPBACK_ADMINISTRATOR`, `from_config` the configured callers."""
        self.operator_tls = operator_tls
        if self.operator_access.unauthenticated_loopback and not is_loopback_host(operator_listen.rpartition(":")[0]):
            raise ConfigError(
                f"operator.unauthenticated_loopback: {operator_listen!r} is not a loopback address; callers without"
                " credentials are only allowed on 127.0.0.1, [::1] or localhost"
            )
        self.core = GatewayCore(
            party=party,
            store=store,
            signer=signer,
            own_trust=own_trust,
            partners=partners,
            policy=policy,
            transport=lambda directory: GrpcPartnerTransport(
                directory, credentials=_channel_credentials(tls) if tls else None
            ),
            settings=settings,
            deadlines=deadlines,
            clock=clock,
            nomenclature=nomenclature,
            status_query_after=status_query_after,
            signers=signers,
            trust_ssl_context=_client_ssl_context(tls) if tls else None,
            ledger_options=ledger_options,
            reconcile_every=reconcile_every,
        )
        self._http_listen = http_listen
        self.http_server: HttpServer | None = None
        self.http_port = 0
        self._operator_listen = operator_listen
        self._partner_listen = partner_listen
        self.operator_server: grpc.aio.Server | None = None
        self.mapping: MappingService | None = None
        self.partner_server: grpc.aio.Server | None = None
        self.operator_port = 0
        self.partner_port = 0
        self.changes = ChangeFeed(self.core.store)
        self._database_probe = DatabaseProbe(self.core.store)
        """What the health checks of every port ask (`DatabaseProbe`): one read of the database at a time for all."""
        self._health: list[DatabaseHealth] = []
        """The health services of the ports started, which a stop sets NOT_SERVING first."""

    # the core's parts, as the tests and tools know them

    @property
    def store(self) -> Store:
        """The gateway's database."""
        return self.core.store

    @property
    def gateway(self) -> Gateway:
        """The use cases."""
        return self.core.gateway

    @property
    def exchange(self) -> Exchange:
        """The partner exchange."""
        return self.core.exchange

    @property
    def outbox(self) -> OutboxWorker:
        """The outbox worker."""
        return self.core.outbox

    @property
    def partners(self) -> PartnerDirectory:
        """The partners and the trust held in each."""
        return self.core.partners

    @property
    def trust(self) -> TrustKeeper:
        """Trust documents over time."""
        return self.core.trust

    @property
    def transport(self) -> PartnerTransport:
        """How statements reach partners."""
        return self.core.transport

    @property
    def signer(self) -> Signer:
        """The signer statements are signed with now."""
        return self.core.signer

    @classmethod
    async def from_config(cls, config: GatewayConfig) -> GatewayNode:
        """Open the store and build the gateway a configuration file describes.

        Every problem with a file the configuration names is a `ConfigError` naming the setting and the file.
        """
        partners = [
            PartnerSpec(
                party=p.party,
                address=p.address,
                trust_envelope=_trust_envelope(p.trust_document, f"partners[{i}].trust_document"),
                tls_identity=p.tls_identity,
                http_url=p.http_url,
                max_envelope_bytes=p.max_envelope_bytes,
            )
            for i, p in enumerate(config.partners)
        ]
        own_trust = _trust_envelope(config.trust_document, "trust_document")
        documents = [
            ("trust_document", config.trust_document, config.party, own_trust),
            *(
                (f"partners[{i}].trust_document", p.trust_document, p.party, spec.trust_envelope)
                for i, (p, spec) in enumerate(zip(config.partners, partners, strict=True))
            ),
        ]
        for setting, path, party, envelope in documents:
            document_party = TrustedParty.restore(envelope).party
            if document_party != party:
                raise ConfigError(
                    f"{setting}: {path} is {document_party}'s trust document, not {party}'s; configure {party}'s"
                )
        signers = {name: _signer(uri, name) for name, uri in config.signers.items()}
        own_names: list[str] = []
        if config.tls is not None:
            check_tls(config.tls, partner_identities(config))
            own_names = check_callers_not_own_certificate(config)
        operator_tls = config.operator_access.tls
        if operator_tls is not None:
            check_operator_tls(operator_tls)
        access = OperatorAccess(
            callers=config.operator_access.callers,
            unauthenticated_loopback=config.operator_access.unauthenticated_loopback,
            # This gateway's own partner certificate is a partner's credential too, never an operator's: its Party
            # code, and the names its [tls] certificate carries, whatever they are.
            partner_identities=frozenset([*partner_identities(config), config.party, *own_names]),
        )
        settings = ExchangeSettings(
            self_party=config.party,
            max_envelope_bytes=config.max_envelope_bytes,
            window=TimeWindow(clock_skew=config.clock_skew, max_lifetime=config.max_message_lifetime),
            message_lifetime=config.message_lifetime,
        )
        # The ports too, before the database is opened: a start refused for a taken port leaves no file behind.
        for setting, address in (
            ("operator.listen", config.operator_listen),
            ("partner.listen", config.partner_listen),
            ("http.listen", config.http_listen),
        ):
            if address is not None:
                _probe_listen(address, setting)
        store = await _open_store(config.database)
        try:
            await _claim_database(store, config.party, utc_now())
            await _choose_method_once(store, config.ledger, utc_now())
            return cls(
                party=config.party,
                store=store,
                signer=signers[DEFAULT_SIGNER_NAME],
                own_trust=own_trust,
                partners=partners,
                policy=config.policy,
                operator_listen=config.operator_listen,
                partner_listen=config.partner_listen,
                http_listen=config.http_listen,
                tls=config.tls,
                operator_access=access,
                operator_tls=operator_tls,
                settings=settings,
                deadlines=Deadlines(hold=config.hold_deadline, decision=config.decision_timeout),
                nomenclature=config.nomenclature,
                status_query_after=config.status_query_after,
                signers=signers,
                ledger_options=config.ledger,
                reconcile_every=config.reconcile_every,
                delivery_places=config.delivery_places,
            )
        except (ssl.SSLError, OSError) as exc:
            await store.close()
            raise ConfigError(f"tls: the certificate files cannot be used: {exc}") from None
        except BaseException:
            await store.close()
            raise

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
        """Load trust, bind the servers (port 0 picks a free port) and start the outbox worker and the sweep.

        A port another process holds stops the start with a `ConfigError` naming the setting: gRPC's
        ``SO_REUSEPORT`` is off, so two gateways can never share a port and split its calls.
        """
        try:
            await self.core.load()
        except GatewayError as exc:
            raise ConfigError(f"{exc.field or 'signer'}: {exc.message}") from None
        limit = self.exchange.settings.max_envelope_bytes
        options = [("grpc.so_reuseport", 0), *keepalive_options()]
        partner_options = [*options, ("grpc.max_receive_message_length", 4 * limit + 4096)]

        # Authentication first: a caller who may not call a method learns nothing else about the request.
        # Without bandwidth-delay probing, gRPC receives no more of a request than its stream window (64 KB)
        # before the handler asks for it: a crowd of calls refused before their requests are read (a wrong
        # token, too many health checks) no longer holds up to 4 MB each (377 MB for 200 calls, 85 MB so). A
        # large request over a long, fast link arrives more slowly; the operator API is meant to be near.
        self.operator_server = grpc.aio.server(
            options=[*options, ("grpc.http2.bdp_probe", 0)],
            interceptors=[OperatorAuthInterceptor(self.operator_access), MalformedRequestInterceptor()],
        )
        self.changes = ChangeFeed(self.core.store)  # a feed a previous stop closed stays closed
        self._database_probe = DatabaseProbe(self.core.store)
        self._health = []
        operator_pb2_grpc.add_OperatorServiceServicer_to_server(
            OperatorService(self.gateway, self.trust, self.changes), self.operator_server
        )
        self.mapping = MappingService()
        mapping_pb2_grpc.add_MappingServiceServicer_to_server(self.mapping, self.operator_server)
        await self._add_health_and_reflection(self.operator_server, OPERATOR_SERVICE, MAPPING_SERVICE)
        self.operator_port = _bind(
            self.operator_server,
            self._operator_listen,
            "operator.listen",
            _operator_server_credentials(self.operator_tls) if self.operator_tls else None,
        )

        # Health checks on the partner port are open to whoever reaches it, under the limits of open calls on the
        # operator port. No reflection there: a partner's engineers have the .proto files. Deliveries hold places
        # (`OpenMethodsInterceptor`); without bandwidth-delay probing, a call refused for want of one holds little
        # of its request (400 calls of 4 MB: 190 MB more, 580 MB with probing). A large statement over a long
        # link arrives a little more slowly for it (1 MB with 100 ms round trips: 0.21 s, not 0.11 s).
        self.partner_server = grpc.aio.server(
            options=[*partner_options, ("grpc.http2.bdp_probe", 0)],
            interceptors=[OpenMethodsInterceptor(self.delivery_places)],
        )
        self.partner_server.add_generic_rpc_handlers(
            (partner_handler(self.exchange, require_peer_identity=self.tls is not None),)
        )
        await self._add_health(self.partner_server, PARTNER_SERVICE)
        self.partner_port = _bind(
            self.partner_server,
            self._partner_listen,
            "partner.listen",
            _server_credentials(self.tls) if self.tls else None,
        )
        if self._http_listen is not None:
            # Checked before either gRPC server serves: a start that fails must not answer a single call.
            _probe_listen(self._http_listen, "http.listen")
        await self.operator_server.start()
        await self.partner_server.start()
        if self._http_listen is not None:
            host, _, port = self._http_listen.rpartition(":")
            self.http_server = HttpServer(
                build_app(
                    self.exchange,
                    self.trust.published,
                    self.delivery_places,
                    mtls=self.tls is not None,
                    database=self._database_probe,
                ),
                host.removeprefix("[").removesuffix("]"),
                int(port),
                _ssl_context(self.tls) if self.tls else None,
            )
            try:
                self.http_port = await self.http_server.start()
            except OSError as exc:
                raise ConfigError(
                    f"http.listen: cannot listen on {self._http_listen}: {exc.strerror or exc}; choose a free port"
                    " on an address of this machine"
                ) from None
        if not self.operator_access.callers and not self.operator_access.unauthenticated_loopback:
            log.warning(
                "%s: the operator API on %s admits nobody: configure [[operator.callers]], or set [operator]"
                " unauthenticated_loopback = true for callers on this machine",
                self.party,
                self.operator_address,
            )
        if self.tls is None:
            # Only once the start has succeeded: a failed start ends with its one line of error, nothing else.
            log.warning(
                "%s: the partner exchange listens WITHOUT TLS on %s. Use this only for local demos and tests;"
                " configure [tls] for any real partner.",
                self.party,
                self.partner_address,
            )
        self.core.start_background()

    async def _add_health(self, server: grpc.aio.Server, *services: str) -> None:
        servicer = DatabaseHealth(self._database_probe)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        self._health.append(servicer)
        for name in ("", *services):
            await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def _add_health_and_reflection(self, server: grpc.aio.Server, *services: str) -> None:
        await self._add_health(server, *services)
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
        """Finish in-flight calls (up to ``grace`` seconds), stop the background tasks and close the store.

        Watch streams end at once (UNAVAILABLE: the watcher resumes elsewhere or later), or they would hold the
        stop for the whole grace period. Health watchers learn NOT_SERVING first, and a load balancer sends
        callers elsewhere before the ports close."""
        for health in self._health:
            await health.enter_graceful_shutdown()
        self.changes.close()
        for server in (self.operator_server, self.partner_server):
            if server is not None:
                await server.stop(grace)
        if self.http_server is not None:
            await self.http_server.stop()
        await self.core.close()


def check_tls(tls: TLSConfig, partner_identities: Mapping[str, str] | None = None) -> None:
    """Refuse ``[tls]`` files that are missing, not PEM, or a key that is not the certificate's, a certificate
    that names a partner (``partner_identities``: each partner's Party code and TLS identity, to the partner's
    Party) and a CA certificate that says it is no CA, with a `ConfigError` naming the setting: what
    `GatewayNode.from_config` and ``config check`` both run."""

    for name in ("certificate", "private_key", "ca_certificate"):
        path = getattr(tls, name)
        if not path.is_file():
            raise ConfigError(f"tls.{name}: {path} is not a readable file")
    _check_certificates("tls", tls.certificate, tls.private_key, ("ca_certificate", tls.ca_certificate))
    names = certificate_names(tls.certificate)
    partners = {identity.casefold(): party for identity, party in (partner_identities or {}).items()}
    for name in names:
        if name.casefold() in partners:
            raise ConfigError(
                f"tls.certificate: {tls.certificate} names {name!r}, {partners[name.casefold()]}'s identity: it is"
                " the partner's certificate, and this gateway's must name this gateway"
            )
    _check_is_ca("tls.ca_certificate", tls.ca_certificate, "the partners'")
    try:
        _ssl_context(tls)
        _client_ssl_context(tls)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls: the certificate files cannot be used: {exc}") from None
    _check_grpc_takes("tls", _server_credentials(tls))


def _check_grpc_takes(section: str, credentials: grpc.ServerCredentials) -> None:
    """Refuse TLS files that gRPC's TLS library cannot use although `cryptography` and Python's `ssl` read them (a
    key on an elliptic curve it lacks, such as secp256k1): gRPC finds out only when a port is added, and a start
    failed there as if the port were taken. The credentials are tried on a socket file in a new temporary folder,
    with a server that never starts, so no TCP port is bound.

    The files are blamed only when the same socket file takes a port without TLS: a probe that cannot add even
    that (a TMPDIR too long for a socket file's name, or one where none can be made) says nothing of the files,
    and serve still finds out, naming them, when it adds its ports."""
    import tempfile
    import uuid

    try:
        with tempfile.TemporaryDirectory(prefix="cg-tls-") as folder:
            if len(os.fsencode(folder)) <= UNIX_SOCKET_FOLDER_LIMIT:
                probe, plain = f"unix:{folder}/probe", f"unix:{folder}/plain"
            else:  # Linux's abstract socket names are not files: no length of TMPDIR's path limits them
                probe, plain = (f"unix-abstract:cg-tls-{uuid.uuid4().hex}" for _ in range(2))
            if _probe_port(probe, credentials):
                return
            if not _probe_port(plain, None):
                return
    except OSError:
        return
    raise ConfigError(
        f"{section}: gRPC cannot use the certificate and private key files (its log above says why; a key on an"
        " elliptic curve its TLS library lacks, such as secp256k1, is one cause); issue a certificate with a key"
        " it takes, such as EC P-256, as `carbon-gateway certs generate` does"
    )


UNIX_SOCKET_FOLDER_LIMIT = 100
"""The longest folder path a probe's socket file is made in: a socket file's path holds at most 107 bytes."""


def _probe_port(address: str, credentials: grpc.ServerCredentials | None) -> bool:
    """Whether a gRPC server that never starts can add a port at ``address`` (a socket file) with ``credentials``
    (None: without TLS)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as threads:
        server = grpc.server(threads)
        try:
            if credentials is None:
                return server.add_insecure_port(address) != 0
            return server.add_secure_port(address, credentials) != 0
        except RuntimeError:
            return False
        finally:
            server.stop(None)


def check_callers_not_own_certificate(config: GatewayConfig) -> list[str]:
    """The names this gateway's ``[tls]`` certificate carries, which the operator API refuses as a partner's
    credential; a `ConfigError` naming the caller whose certificate common name is one of them (it could never
    call): what `GatewayNode.from_config` and ``config check`` both run."""
    if config.tls is None:
        return []
    try:
        names = certificate_names(config.tls.certificate)
    except (OSError, ValueError):
        return []  # a certificate file that cannot be read: `check_tls` names it
    own = {name.casefold() for name in names}
    for i, caller in enumerate(config.operator_access.callers):
        name = caller.certificate_common_name
        if name and name.casefold() in own:
            raise ConfigError(
                f"operator.callers[{i}].certificate_common_name: {name!r} is a name of this gateway's own [tls]"
                f" certificate ({config.tls.certificate}), which partners see: the operator API refuses it as a"
                " partner's credential; give the caller a certificate of its own"
            )
    return names


def certificate_names(path: Path) -> list[str]:
    """The common names of the first certificate in the PEM file ``path`` (checked by `check_tls`)."""
    from cryptography import x509

    own = x509.load_pem_x509_certificates(read_small_file(path))[0]
    return [str(a.value) for a in own.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)]


def _check_is_ca(setting: str, path: Path, whose: str) -> None:
    """Refuse a CA file holding a certificate that says it is no CA: one issued to a gateway or a person, which
    would admit nobody but itself. A self-signed certificate may be pinned as it is."""
    from cryptography import x509

    for ca in x509.load_pem_x509_certificates(read_small_file(path)):
        try:
            constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            continue
        if not constraints.ca and ca.issuer != ca.subject:
            raise ConfigError(
                f"{setting}: {path} holds a certificate that is no CA's (basic constraints CA:FALSE, subject"
                f" {ca.subject.rfc4514_string()!r}): name the CA that issues {whose} certificates"
            )


def partner_identities(config: GatewayConfig) -> dict[str, str]:
    """Each name a partner's certificate may carry (its Party code, its TLS identity), to the partner's Party."""
    return {name: p.party for p in config.partners for name in (p.party, p.tls_identity) if name}


def check_operator_tls(tls: OperatorTLSConfig) -> None:
    """Refuse ``[operator.tls]`` files that are missing, not PEM, or a key that is not the certificate's, with a
    `ConfigError` naming the setting: what `GatewayNode.from_config` and ``config check`` both run."""
    for name in ("certificate", "private_key", "client_ca"):
        path = getattr(tls, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"operator.tls.{name}: {path} is not a readable file")
    _check_certificates(
        "operator.tls", tls.certificate, tls.private_key, ("client_ca", tls.client_ca) if tls.client_ca else None
    )
    if tls.client_ca is not None:
        _check_is_ca("operator.tls.client_ca", tls.client_ca, "the operator callers'")
    try:
        credentials = _operator_server_credentials(tls)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"operator.tls: the certificate files cannot be used: {exc}") from None
    _check_grpc_takes("operator.tls", credentials)


def _check_certificates(section: str, certificate: Path, private_key: Path, ca: tuple[str, Path] | None) -> None:
    """Refuse certificate files that are not PEM certificates and keys, or a key that is not the certificate's,
    naming the setting (gRPC would only fail to bind, naming the wrong one)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def read(name: str, path: Path) -> bytes:
        try:
            return read_small_file(path)
        except OSError as exc:
            raise ConfigError(f"{section}.{name}: {path} cannot be read: {exc.strerror or exc}") from None

    def not_pem(name: str, path: Path, what: str, exc: Exception) -> ConfigError:
        return ConfigError(f"{section}.{name}: {path} is not a PEM {what}: {exc}")

    # Read first: a file that cannot be read is not called a file that is not PEM.
    certificate_pem, key_pem = read("certificate", certificate), read("private_key", private_key)
    ca_pem = None if ca is None else read(*ca)
    try:
        certificates = x509.load_pem_x509_certificates(certificate_pem)
    except ValueError as exc:
        raise not_pem("certificate", certificate, "certificate", exc) from None
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as exc:
        raise not_pem("private_key", private_key, "private key without a passphrase", exc) from None
    if ca is not None and ca_pem is not None:
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError as exc:
            raise not_pem(ca[0], ca[1], "certificate", exc) from None
    if certificates[0].public_key() != key.public_key():
        raise ConfigError(
            f"{section}.private_key: {private_key} is not the key of the certificate {certificate}; keep"
            " the two files paired"
        )


def _bind(server: grpc.aio.Server, address: str, setting: str, credentials: grpc.ServerCredentials | None) -> int:
    _probe_listen(address, setting)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        raise ConfigError(
            f"{setting}: cannot listen on {address}: gRPC could not bind it (the port was taken meanwhile, or the"
            " host is not an address of this machine); choose a free port on an address of this machine"
        ) from None
    if port == 0 and not address.endswith(":0"):
        raise ConfigError(
            f"{setting}: cannot listen on {address}: gRPC could not bind it; choose a free port on an address of"
            " this machine"
        )
    return port


def _probe_listen(address: str, setting: str) -> None:
    """Refuse a listen address this process cannot bind, with a `ConfigError` that names the setting and says why.

    The probe binds a plain socket, without ``SO_REUSEPORT``, to every address the host resolves to; it passes
    when one of them binds, as gRPC does. It runs before anything serves, so that a taken port or a host of
    another machine stops the start with one clear line instead of gRPC's C-core log and a generic error.
    """
    import errno
    import socket

    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        resolved = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        raise ConfigError(
            f"{setting}: cannot listen on {address}: {host!r} is neither an IP address nor a host name that"
            " resolves; use an address of this machine such as 127.0.0.1, or 0.0.0.0 for all of them"
        ) from None
    failures: list[OSError] = []
    for family, kind, proto, _, sockaddr in resolved:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                failures.append(exc)
            else:
                return
    codes = {exc.errno for exc in failures}
    if errno.EADDRINUSE in codes:
        why = (
            "the port is already in use, perhaps by another gateway; stop that process or choose another port"
            " (two gateways never share a port)"
        )
    elif errno.EADDRNOTAVAIL in codes:
        why = f"{host} is not an address of this machine; use one of its addresses, 127.0.0.1, or 0.0.0.0"
    elif errno.EACCES in codes:
        why = "permission denied (ports below 1024 need privileges); choose a port above 1023"
    else:
        why = "; ".join(sorted({exc.strerror or str(exc) for exc in failures})) or "the host resolves to nothing"
    raise ConfigError(f"{setting}: cannot listen on {address}: {why}")


def _trust_envelope(path: Path, setting: str) -> Envelope:
    try:
        envelope = Envelope.from_json(read_small_file(path, MAX_TRUST_DOCUMENT_BYTES))
        TrustedParty.restore(envelope)
    except FileNotFoundError:
        raise ConfigError(
            f"{setting}: {path}: no such file; put the signed trust document there or correct the path"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{setting}: {path}: is a folder; name the trust document's file") from None
    except OSError as exc:
        raise ConfigError(f"{setting}: {path}: cannot be read: {exc.strerror or exc}") from None
    except (EnvelopeFormatError, TrustError, VerificationError) as exc:
        raise ConfigError(
            f"{setting}: {path}: not a valid signed trust document ({exc}); use the document exactly as its Party"
            " signed and published it"
        ) from None
    return envelope


def _signer(uri: str, name: str) -> Signer:
    setting = "signer" if name == DEFAULT_SIGNER_NAME else f"signers.{name}"
    try:
        return signer_from_uri(uri)
    except SigningError as exc:
        raise ConfigError(f"{setting}: {exc}") from None


async def _open_store(location: Path | str) -> Store:
    if is_url(location):
        from gateway.store.postgres import NOT_TRANSIENT, TRANSIENT_ERRORS, DatabaseUnavailable, redact

        try:
            return await open_store(location)
        except DatabaseUnavailable as exc:
            # An unreachable server, a refused login, a database that does not exist: the message names the
            # database without its password.
            raise ConfigError(f"database: cannot use {exc}") from None
        except (UnsupportedDatabase, SchemaTooNew) as exc:
            raise ConfigError(f"database: {exc}") from None
        except NotAGatewayDatabase as exc:
            raise ConfigError(f"database: {redact(str(location))}: {exc}") from None
        except Exception as exc:
            if isinstance(exc, TRANSIENT_ERRORS) and not isinstance(exc, NOT_TRANSIENT):
                # A lock wait that ran out (another replica migrating, or holding the write lock a long time), a
                # connection lost: the database is this gateway's, and a later start goes on where this one
                # stopped.
                raise ConfigError(
                    f"database: {redact(str(location))} could not be prepared now ({type(exc).__name__}: {exc});"
                    " another replica may be migrating it or holding its write lock: start this one again later"
                ) from None
            # A failed migration: missing privileges, another program's objects (not its tables: those are refused
            # before anything is created).
            import asyncpg

            advice = (
                "grant the user CREATE on the database's schema (or make it the database's owner), or name a"
                " database it may create tables in"
                if isinstance(exc, asyncpg.InsufficientPrivilegeError)
                else "name a database of its own"
            )
            raise ConfigError(
                f"database: {redact(str(location))} cannot be used as this gateway's database"
                f" ({type(exc).__name__}: {exc}); {advice}"
            ) from None
    path = Path(location)
    check_database_file(path)
    if path.exists() and not path.is_file():  # SQLite would call a device or a pipe a disk that failed
        raise ConfigError(f"database: {path} is not a regular file; name this gateway's database file")
    try:
        return await SQLiteStore.open(path, alone=True)
    except SchemaTooNew as exc:
        raise ConfigError(f"database: {path}: {exc}") from None
    except (WriteAheadLogDamaged, DatabaseInUse, NotAGatewayDatabase) as exc:
        raise ConfigError(f"database: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            f"database: {path} cannot be used as this gateway's SQLite database ({exc}); {sqlite_advice(exc)}"
        ) from None


def check_database_file(path: Path) -> None:
    """Refuse an SQLite ``database`` path that is a folder, a symbolic link to nothing, or whose folder does not
    exist, naming the setting: what `GatewayNode.from_config` and ``config check`` both run before the file is
    opened."""
    try:
        folder = path.is_dir()
        parent = path.parent.is_dir()
        dangling = path.is_symlink() and not path.exists()
    except OSError as exc:  # a name too long for the file system, say
        raise ConfigError(f"database: {str(path)[:300]!r} cannot be used as a file name: {exc.strerror}") from None
    if dangling:
        raise ConfigError(
            f"database: {path} is a symbolic link to nothing (or a loop of links), refused rather than followed: a"
            " database created where it points (a volume not mounted, a file deleted) would start the books afresh;"
            " restore its target (for a first start, create an empty file there), or name the database file itself"
        )
    if folder:
        raise ConfigError(f"database: {path} is a folder; name a file (it is created if missing)")
    if not parent:
        raise ConfigError(
            f"database: the folder {path.parent} does not exist; create it or name a file in an existing folder"
        )
