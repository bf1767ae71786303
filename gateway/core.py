"""One gateway without its servers: store, partners, use cases, exchange, outbox worker, trust and sweeps.

`gateway.node.GatewayNode` puts gRPC and HTTP servers around a core; the deterministic simulation
(`tests/simulation`) drives cores directly, with its own transport, clock and IDs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gateway.domain.nomenclature import DEFAULT_NOMENCLATURE, Nomenclature
from gateway.domain.protocol import Deadlines, DecisionPolicy
from gateway.exchange import Exchange, ExchangeSettings, new_uuid
from gateway.outbox import Backoff, OutboxWorker, PartnerTransport
from gateway.partners import DEFAULT_PARTNER_MAX_ENVELOPE_BYTES, Partner, PartnerDirectory
from gateway.service import Gateway
from gateway.store.base import Store, database_could_not, failure_line
from gateway.trust import TrustKeeper
from gateway.usecases.base import DEFAULT_STATUS_QUERY_AFTER, LedgerOptions
from signing import Envelope, Signer, TrustedParty

log = logging.getLogger(__name__)

FOLD_PERIOD_SECONDS = 5.0
"""How often the ledger's recent changes are folded into the reconciliation tree, between runs."""
SCHEDULE_PERIOD_SECONDS = 60.0
"""How often the reconciliation schedule looks for a partner whose run is due."""


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
    max_envelope_bytes: int = DEFAULT_PARTNER_MAX_ENVELOPE_BYTES


def restore_trust(envelope: Envelope, what: str, now: dt.datetime) -> TrustedParty:
    """A trust document loaded from configuration; an expired one is kept but reported loudly."""
    trusted = TrustedParty.restore(envelope)
    if trusted.document.is_expired(now):
        log.error(
            "%s (version %d) has expired: statements it covers are refused until a newer version is applied",
            what,
            trusted.version,
        )
    return trusted


TRUST_REFRESH_SECONDS = 2.0
"""How often a gateway takes up trust documents another replica of it stored."""


class GatewayCore:
    """A gateway's parts, wired together, with the background tasks that deliver and sweep."""

    def __init__(
        self,
        *,
        party: str,
        store: Store,
        signer: Signer,
        own_trust: Envelope,
        partners: Sequence[PartnerSpec],
        policy: DecisionPolicy,
        transport: Callable[[PartnerDirectory], PartnerTransport],
        settings: ExchangeSettings | None = None,
        deadlines: Deadlines | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        nomenclature: Nomenclature = DEFAULT_NOMENCLATURE,
        status_query_after: dt.timedelta = DEFAULT_STATUS_QUERY_AFTER,
        signers: Mapping[str, Signer] | None = None,
        new_id: Callable[[], str] = new_uuid,
        backoff: Backoff | None = None,
        outbox_batch: int = 64,
        trust_ssl_context: ssl.SSLContext | None = None,
        ledger_options: LedgerOptions | None = None,
        reconcile_every: dt.timedelta | None = None,
    ) -> None:
        self.party = party
        self.reconcile_every = reconcile_every
        self.store = store
        self.clock = clock
        self.signers = dict(signers or {})
        now = clock()
        self.partners = PartnerDirectory.of(
            Partner(
                party=p.party,
                address=p.address,
                trusted=restore_trust(p.trust_envelope, f"{p.party}'s trust document", now),
                tls_identity=p.tls_identity,
                http_url=p.http_url,
                max_envelope_bytes=p.max_envelope_bytes,
            )
            for p in partners
        )
        self.gateway = Gateway(
            party=party,
            store=store,
            policy=policy,
            clock=clock,
            deadlines=deadlines,
            nomenclature=nomenclature,
            status_query_after=status_query_after,
            new_id=new_id,
            ledger_options=ledger_options,
        )
        self.exchange = Exchange(
            settings or ExchangeSettings(self_party=party),
            signer=signer,
            partners=self.partners,
            store=store,
            handler=self.gateway.on_statement,
            clock=clock,
            new_id=new_id,
        )
        self.exchange.on_delivered = self.gateway.on_delivered
        self.gateway.attach(self.exchange)
        self.transport = transport(self.partners)
        self.outbox = OutboxWorker(
            store=store,
            exchange=self.exchange,
            transport=self.transport,
            clock=clock,
            backoff=backoff,
            batch=outbox_batch,
        )
        self.exchange.on_enqueued = self.outbox.wake
        self.trust = TrustKeeper(
            party=party,
            own=restore_trust(own_trust, "our own trust document", now),
            store=store,
            partners=self.partners,
            exchange=self.exchange,
            clock=clock,
            ssl_context=trust_ssl_context,
            signers=self.signers,
        )
        self.exchange.on_unknown_key = self.trust.take_up_for_unknown_key
        self.outbox.before_sending = self.trust.read_stored
        self.outbox.may_sign = self.trust.can_sign
        self._sweeper: asyncio.Task[None] | None = None
        self._trust_refresher: asyncio.Task[None] | None = None

    @property
    def signer(self) -> Signer:
        """The signer statements are signed with now."""
        return self.exchange.signer

    async def load(self) -> None:
        """Reconcile trust with the store and choose the signer the current trust document lists."""
        await self.trust.load()

    def start_background(self) -> None:
        """Start the outbox worker and the sweep of deadlines and status queries."""
        self.outbox.start()
        self.outbox.wake()
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name=f"{self.party}-sweep")
        if self._trust_refresher is None:
            self._trust_refresher = asyncio.create_task(self._refresh_trust(), name=f"{self.party}-trust")

    async def _refresh_trust(self) -> None:
        # Replicas of this gateway share its database: a rotation, or a partner's new document, taken in by
        # one is signed with and trusted by the others within this period (at once, for an incoming statement
        # whose key is not known yet). One small read each time.
        while True:
            await asyncio.sleep(TRUST_REFRESH_SECONDS)
            try:
                await self.trust.take_up_stored()
            except Exception as exc:
                self._log_failure(exc, "reading trust documents another replica stored failed; retrying")

    @property
    def sweep_period(self) -> float:
        """Seconds between sweeps: a tenth of the shortest wait, between 50 ms and a minute."""
        shortest = min(
            self.gateway.deadlines.hold, self.gateway.deadlines.decision, self.gateway.status_query_after
        ).total_seconds()
        return min(max(shortest / 10, 0.05), 60.0)

    async def _sweep(self) -> None:
        last_fold = last_schedule = -math.inf
        started = self.clock()
        while True:
            try:
                await self.gateway.sweep()
            except Exception as exc:
                self._log_failure(exc, "the sweep failed; retrying")
            now = time.monotonic()
            try:
                if now - last_fold >= FOLD_PERIOD_SECONDS:
                    last_fold = now
                    await self.gateway.fold_trees()
                    await self.gateway.close_stale_runs()
                if self.reconcile_every is not None and now - last_schedule >= SCHEDULE_PERIOD_SECONDS:
                    last_schedule = now
                    await self.gateway.reconcile_due(self.reconcile_every, started)
            except Exception as exc:
                self._log_failure(exc, "keeping the reconciliation tree or schedule failed; retrying")
            await asyncio.sleep(self.sweep_period)

    def _log_failure(self, exc: Exception, what: str) -> None:
        """Log a background task's failure: one line when the database could not do the work now (it is down,
        restarting, or ended the connection; the task looks again at its next turn), a traceback for a bug."""
        if database_could_not(self.store, exc):
            log.warning("%s: %s (the database could not do it now: %s)", self.party, what, failure_line(exc))
        else:
            log.exception("%s: %s", self.party, what)

    async def stop_background(self) -> None:
        """Stop the sweep and the outbox worker (a delivery in flight is retried at the next start)."""
        if self._trust_refresher is not None:
            self._trust_refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trust_refresher
            self._trust_refresher = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.outbox.stop()

    async def close(self) -> None:
        """Stop the background tasks, close the transport, the store and any signer that holds a session."""
        await self.stop_background()
        close_transport = getattr(self.transport, "close", None)
        if callable(close_transport):
            await close_transport()
        await self.store.close()
        for signer in {id(s): s for s in (self.exchange.signer, *self.signers.values())}.values():
            close = getattr(signer, "close", None)
            if callable(close):
                close()
