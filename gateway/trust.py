"""Keeping trust over time: this gateway's own trust document, its partners' documents, and key rotation.

Every version ever trusted is kept in the store. At start the newest stored version wins over the one named
in the configuration, so an update survives a restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import ssl
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import aiohttp

from gateway import faults
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.text import escaped
from gateway.exchange import Exchange, apply_trust_update, apply_trust_updates
from gateway.http.app import TRUST_VERSION_PATH
from gateway.partners import TRANSFER_ROLE, PartnerDirectory
from gateway.store.base import IdempotentResult, Store, Transaction
from gateway.usecases.base import Idempotency
from signing import Envelope, EnvelopeFormatError, Signer, TrustDocument, TrustedParty, TrustError

log = logging.getLogger(__name__)

CHOSEN_SIGNER_SETTING = "own_signer_keyid"
"""The store setting that holds ``VERSION:KEYID``: the version of this Party's own trust document a rotation
installed (`TrustKeeper.rotate`), and the keyid of the signer it switched to. While that version is the current
one, a restart, and every replica, signs with that key again whenever a configured signer holds it."""

UNKNOWN_KEY_REFRESH_SECONDS = 1.0
"""The least time between two reads of stored trust documents caused by statements signed by unknown keys."""


@dataclass(frozen=True)
class PushResult:
    """What a partner answered to a pushed trust document."""

    party: str
    code: ResponseCode
    detail: str


TRUST_FETCH_SECONDS = 30.0
"""How long `TrustKeeper.refresh` waits for a partner's trust documents, all versions together."""

TRUST_VERSIONS_AT_ONCE = 64
"""How many newer versions one `TrustKeeper.refresh` fetches and applies; a call after it fetches the next."""


class PublisherUnavailable(GatewayError):
    """`TrustKeeper.refresh` could not read a partner's published trust documents: the connection failed or was
    refused, the URL answered an HTTP status other than 200 and 404, redirected without end, or did not answer in
    time. The partner is configured and nothing was taken up: a later call may succeed, hence
    ``INTERNAL_ERROR``, the response code of a failure to try again. Names the request's ``party``."""

    def __init__(self, message: str) -> None:
        super().__init__(ResponseCode.INTERNAL_ERROR, message, field="party")


class PublicationRefused(GatewayError):
    """`TrustKeeper.refresh` read a partner's published trust documents and refuses them: too large, malformed,
    or not acceptable as the next versions (``code`` says which). Nothing was taken up; the partner must correct
    what it publishes. Names the request's ``party``."""

    def __init__(self, code: ResponseCode, message: str) -> None:
        super().__init__(code, message, field="party")


MAX_PUBLISHER_TEXT = 100
"""Characters kept of what a partner's publisher wrote into an error (an HTTP reason phrase), made safe by `escaped`:
it reaches the operator's terminal and the log."""


def _fetch_failure(exc: aiohttp.ClientError) -> str:
    """What went wrong fetching, in words. aiohttp's own text may hold the repr of the SSL context in use
    (``ssl:<ssl.SSLContext object at 0x...>``), which says nothing to an operator."""
    if isinstance(exc, aiohttp.TooManyRedirects):
        return f"it redirected {len(exc.history)} times without coming to a document"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate was refused ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        where = f"{exc.host}:{exc.port}"
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return f"the host name {exc.host} could not be resolved ({exc.os_error.strerror})"
        if isinstance(exc, aiohttp.ClientSSLError):
            return f"the TLS handshake with {where} failed ({exc.os_error})"
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"the connection to {where} was refused"
        return f"the connection to {where} failed ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "it closed the connection before answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "its answer broke off before its end"
    if isinstance(exc, aiohttp.InvalidURL):
        return "it is not a URL that can be fetched"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"its answer could not be read (HTTP {exc.status}: {escaped(str(exc.message), MAX_PUBLISHER_TEXT)})"
    return f"the fetch failed ({type(exc).__name__})"


async def _body_within(response: aiohttp.ClientResponse, budget: int, url: str) -> bytes:
    """The body of ``response``, refused unread beyond ``budget`` bytes (what is left of one refresh's)."""
    too_large = f"{url} sends more than the {budget:,} bytes left of the trust documents one refresh reads"
    if (response.content_length or 0) > budget:
        raise PublicationRefused(ResponseCode.ENVELOPE_TOO_LARGE, too_large)
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > budget:
            raise PublicationRefused(ResponseCode.ENVELOPE_TOO_LARGE, too_large)
    return bytes(body)


class TrustKeeper:
    """Loads, persists, rotates and refreshes the trust documents of one gateway."""

    def __init__(
        self,
        *,
        party: str,
        own: TrustedParty,
        store: Store,
        partners: PartnerDirectory,
        exchange: Exchange,
        clock: Callable[[], dt.datetime],
        ssl_context: ssl.SSLContext | None = None,
        signers: Mapping[str, Signer] | None = None,
    ) -> None:
        self.signers: Mapping[str, Signer] = signers if signers is not None else {}
        """Signers by configured name: the ones an operator may switch to, and the one a restart resumes."""
        self.ssl_context = ssl_context
        """Client TLS for fetching partners' published documents (the configured CA and certificate)."""
        self.party = party
        self.own = own
        self.store = store
        self.partners = partners
        self.exchange = exchange
        self.clock = clock
        self._unknown_key_refreshed = -UNKNOWN_KEY_REFRESH_SECONDS

    async def load(self) -> None:
        """Reconcile the configured documents with the stored ones: the newest version of each wins."""
        now = self.clock()
        async with self.store.transaction() as tx:
            before = await tx.latest_trust_document(self.party)
            same = None if before is None else await tx.trust_document(self.party, self.own.version)
            own, new = configured_after_stored(self.party, self.own, before, same, now, "trust_document")
            if new:
                # What a rotation checks, before anything is stored or told: a document this gateway cannot sign
                # under, once stored, would win over every configuration after it.
                previous = None if before is None else TrustedParty.restore(Envelope.from_json(before[1])).document
                self._check_can_sign(own, previous)
                await tx.put_trust_document(self.party, own.version, own.envelope.to_json(), now)
            if new and before is not None:
                # The next version, taken up from the configuration: the partners learn of it as from a rotation,
                # ahead of any statement signed under it.
                for party in sorted(self.partners.parties()):
                    await self.exchange.enqueue_trust(tx, party, own.envelope)
                log.warning(
                    "%s: took up trust document version %d from the configuration; queued it for %d partner(s)",
                    self.party,
                    own.version,
                    len(self.partners.parties()),
                )
            self.own = own
            for index, (party, partner) in enumerate(self.partners.parties().items()):
                field = f"partners[{index}].trust_document"
                self.partners.replace(party, await self._newest(tx, party, partner.trusted, now, field))
            chosen = await tx.get_setting(CHOSEN_SIGNER_SETTING)
        _one_signature_suffices(self.own.document, "own trust document", field="trust_document")
        listed = self.own.document.roles[TRANSFER_ROLE].keyids
        self._resume_chosen(chosen, listed)
        signer = self.exchange.signer
        if signer.keyid not in listed:
            # After a rotation the configuration may still name the old key first: resume with a configured
            # signer the current document lists.
            named = [(name, s) for name, s in sorted(self.signers.items()) if s.keyid in listed]
            if not named:
                raise GatewayError(
                    ResponseCode.KEY_UNKNOWN_OR_REVOKED,
                    f"the configured signer's key {signer.keyid[:16]}... is not in the transfer role of {self.party}'s"
                    f" trust document version {self.own.version}, and no signer under [signers] is; configure the"
                    " signer of the current document",
                    field="signer",
                )
            name, self.exchange.signer = named[0]
            log.warning(
                "%s: signing with the configured signer %r, listed in trust document version %d",
                self.party,
                name,
                self.own.version,
            )
        log.info(
            "%s: signing with key %s under trust document version %d",
            self.party,
            self.exchange.signer.keyid,
            self.own.version,
        )
        if self.own.document.is_expired(now):
            log.error(
                "%s: our own trust document (version %d) has expired; partners will refuse our statements",
                self.party,
                self.own.version,
            )

    def _check_can_sign(self, document: TrustedParty, previous: TrustDocument | None) -> None:
        """Refuse (`GatewayError`) an own document this gateway could not sign under: a transfer threshold above
        1, or no configured signer listed in its transfer role; or one that adds to ``previous`` (the stored own
        document it follows, None for the first) a key a partner lists."""
        _one_signature_suffices(document.document, "own trust document", field="trust_document")
        self._refuse_partners_keys(document.document, previous, field="trust_document")
        listed = document.document.roles[TRANSFER_ROLE].keyids
        keys = {self.exchange.signer.keyid, *(s.keyid for s in self.signers.values())}
        if not keys & set(listed):
            raise GatewayError(
                ResponseCode.KEY_UNKNOWN_OR_REVOKED,
                f"{self.party}'s trust document version {document.version} lists none of the configured signers in"
                " its transfer role; configure the signer of that document before taking it up",
                field="trust_document",
            )

    def _refuse_partners_keys(self, document: TrustDocument, previous: TrustDocument | None, *, field: str) -> None:
        """Refuse (`GatewayError`) an own document that adds to ``previous`` a key a partner's trust document lists:
        that partner could then sign as this Party wherever a receiver tells senders apart by their keys alone (no
        mTLS), as `carbon-gateway trust next` refuses to draft. A key ``previous`` already lists is this gateway's:
        a partner's document that lists it too (any publisher may list any public key) must not keep this gateway
        from rotating while keeping it."""
        kept = set() if previous is None else {key.public_bytes for key in previous.keys.values()}
        ours = {key.public_bytes: key.keyid for key in document.keys.values() if key.public_bytes not in kept}
        for party, partner in sorted(self.partners.parties().items()):
            theirs = [ours[k.public_bytes] for k in partner.trusted.document.keys.values() if k.public_bytes in ours]
            if theirs:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT,
                    f"{self.party}'s trust document version {document.version} lists the key {theirs[0][:16]}...,"
                    f" which {party}'s trust document version {partner.trusted.version} lists: {party} could sign as"
                    f" {self.party}; list only keys of this gateway's own",
                    field=field,
                )

    def _resume_chosen(self, setting: str | None, listed: Collection[str]) -> None:
        """Sign with the signer the rotation to the current document chose (``setting``, `CHOSEN_SIGNER_SETTING`)
        when a configured signer holds it: a rotation that kept the old key in the document must not be undone
        by a restart that finds the old key still configured as ``signer``. A choice made for another version (a
        newer document installed from the configuration, or by an earlier release) is not followed."""
        version, _, chosen = (setting or "").partition(":")
        if version != str(self.own.version) or chosen not in listed or chosen == self.exchange.signer.keyid:
            return
        named = [(name, s) for name, s in sorted(self.signers.items()) if s.keyid == chosen]
        if not named:
            log.warning(
                "%s: the latest rotation switched to key %s, which no configured signer holds; configure it under"
                " [signers] (or as signer) and restart, or the gateway signs with another key the document lists",
                self.party,
                chosen,
            )
            return
        name, self.exchange.signer = named[0]
        log.warning(
            "%s: signing with the configured signer %r, which the rotation to trust document version %d chose",
            self.party,
            name,
            self.own.version,
        )

    async def take_up_for_unknown_key(self) -> bool:
        """`take_up_stored` for a statement signed by a key not trusted here, at most once per
        `UNKNOWN_KEY_REFRESH_SECONDS` however many such statements arrive: before its sender is authenticated,
        such a statement must not buy a database read (a flood of them would starve the pool)."""
        now = time.monotonic()
        if now - self._unknown_key_refreshed < UNKNOWN_KEY_REFRESH_SECONDS:
            return False
        self._unknown_key_refreshed = now
        return await self.take_up_stored()

    def can_sign(self) -> bool:
        """Whether this gateway's signer is one the transfer role of its current trust document lists: a replica
        whose configuration lacks the signer of a document another replica installed signs nothing."""
        return self.exchange.signer.keyid in self.own.document.roles[TRANSFER_ROLE].keyids

    async def take_up_stored(self) -> bool:
        """Take up the trust documents another replica (a gateway of this Party on the same database) stored
        since this one last looked: this Party's own, after a rotation there, with the configured signer its
        transfer role lists, and the partners' newer versions. One read; returns whether anything changed."""
        async with self.store.read() as tx:
            take_up = await self.read_stored(tx)
        return take_up()

    async def read_stored(self, tx: Transaction) -> Callable[[], bool]:
        """Read in ``tx`` what `take_up_stored` takes up; the function returned takes it up, and returns whether
        anything changed. Call it only once ``tx`` has returned: a document read from a commit not yet on disk
        must be neither published nor signed under, as a crash could still take it back."""
        own = await tx.latest_trust_document(self.party)
        chosen = await tx.get_setting(CHOSEN_SIGNER_SETTING) if own is not None and own[0] > self.own.version else None
        theirs = {party: await tx.latest_trust_document(party) for party in self.partners.parties()}
        return lambda: self._take_up(own, chosen, theirs)

    def _take_up(
        self, own: tuple[int, bytes] | None, chosen: str | None, theirs: dict[str, tuple[int, bytes] | None]
    ) -> bool:
        changed = False
        if own is not None and own[0] > self.own.version:
            self.own = TrustedParty.restore(Envelope.from_json(own[1]))
            changed = True
            listed = self.own.document.roles[TRANSFER_ROLE].keyids
            self._resume_chosen(chosen, listed)
            if self.exchange.signer.keyid not in listed:
                named = [(name, s) for name, s in sorted(self.signers.items()) if s.keyid in listed]
                if named:
                    name, self.exchange.signer = named[0]
                    log.warning(
                        "%s: another replica installed trust document version %d; signing with %r",
                        self.party,
                        self.own.version,
                        name,
                    )
                else:
                    log.error(
                        "%s: another replica installed trust document version %d, whose transfer role lists no"
                        " signer configured here; configure its signer under [signers] and restart",
                        self.party,
                        self.own.version,
                    )
        for party, stored in theirs.items():
            partner = self.partners.get(party)
            if stored is not None and partner is not None and stored[0] > partner.trusted.version:
                changed = self.partners.replace(party, TrustedParty.restore(Envelope.from_json(stored[1]))) or changed
        return changed

    async def _newest(
        self, tx: Transaction, party: str, configured: TrustedParty, now: dt.datetime, field: str
    ) -> TrustedParty:
        """The newer of the configured document and the newest stored one (`configured_after_stored`), stored."""
        stored = await tx.latest_trust_document(party)
        same = None if stored is None else await tx.trust_document(party, configured.version)
        trusted, new = configured_after_stored(party, configured, stored, same, now, field)
        if new:
            await tx.put_trust_document(party, trusted.version, trusted.envelope.to_json(), now)
        return trusted

    async def published(self, version: int | None) -> bytes | None:
        """This gateway's trust document envelope (JSON) of ``version``, or the current one."""
        if version is None:
            return self.own.envelope.to_json()
        async with self.store.read() as tx:
            return await tx.trust_document(self.party, version)

    async def rotate(
        self, envelope: Envelope, signer: Signer, idem: Idempotency | None = None
    ) -> tuple[TrustedParty, list[PushResult]]:
        """Install the next version of our own document, switch signer, and queue the document for every partner.

        The pushes go through the outbox, ahead of any statement, so a partner that is down or a crash before
        delivery only delays them. Statements are signed when they are sent, so every statement sent after the
        rotation carries the new key's signature. A retry with the same idempotency key returns the first answer.
        """
        await self.take_up_stored()  # a rotation another replica made is the one this one follows
        now = self.clock()
        async with self.store.transaction() as tx:
            if idem is not None:
                stored = await tx.get_idempotent(idem.caller, idem.method, idem.key)
                if stored is not None:
                    if stored.request_hash != idem.request_hash:
                        raise GatewayError(
                            ResponseCode.IDEMPOTENCY_KEY_REUSED,
                            f"idempotency key {idem.key!r} was used for a different rotation; use a new key",
                            field="idempotency_key",
                        )
                    return await self._replayed_rotation(tx, stored.response)
            updated = apply_trust_update(self.own, envelope, now)
            _one_signature_suffices(updated.document, "new trust document", field="envelope_json")
            self._refuse_partners_keys(updated.document, self.own.document, field="envelope_json")
            if signer.keyid not in updated.document.roles[TRANSFER_ROLE].keyids:
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT,
                    "the signer's key is not in the new document's transfer role",
                    field="signer",
                )
            results = []
            latest = await tx.latest_trust_document(self.party)
            if latest is not None and latest[0] >= updated.version:
                # Another replica rotated between this one's refresh and this transaction.
                raise GatewayError(
                    ResponseCode.INVALID_ARGUMENT,
                    f"trust document version {latest[0]} was installed meanwhile (by another replica); rotate"
                    " from that version",
                    field="envelope_json",
                )
            await tx.put_trust_document(self.party, updated.version, envelope.to_json(), now)
            await tx.put_setting(CHOSEN_SIGNER_SETTING, f"{updated.version}:{signer.keyid}", now)
            for party in sorted(self.partners.parties()):
                message_id = await self.exchange.enqueue_trust(tx, party, envelope)
                results.append(PushResult(party, ResponseCode.OK, f"queued for delivery as message {message_id}"))
            if idem is not None:
                answer = json.dumps(
                    {"version": updated.version, "pushed": [[r.party, int(r.code), r.detail] for r in results]}
                )
                await tx.put_idempotent(
                    idem.caller, idem.method, idem.key, IdempotentResult(idem.request_hash, answer.encode())
                )
        faults.reach("rotation-committed")
        self.own = updated
        self.exchange.signer = signer
        self.exchange.on_enqueued()
        log.warning(
            "%s: now signing with key %s under trust document version %d", self.party, signer.keyid, updated.version
        )
        return updated, results

    async def _replayed_rotation(self, tx: Transaction, answer: bytes) -> tuple[TrustedParty, list[PushResult]]:
        first = json.loads(answer)
        stored = await tx.trust_document(self.party, int(first["version"]))
        assert stored is not None
        pushed = [PushResult(party, ResponseCode(code), detail) for party, code, detail in first["pushed"]]
        return TrustedParty.restore(Envelope.from_json(stored)), pushed

    async def refresh(self, party: str, base_url: str) -> TrustedParty:
        """Fetch ``party``'s documents newer than the trusted one from ``base_url`` and apply them in order: up to
        `TRUST_VERSIONS_AT_ONCE` of them, together no larger than a partner's largest request, all within
        `TRUST_FETCH_SECONDS`."""
        partner = self.partners.get(party)
        if partner is None:
            raise GatewayError(ResponseCode.UNKNOWN_PARTNER, f"{party!r} is not a partner", field="party")
        if not base_url:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT, f"no http_url is configured for partner {party!r}", field="party"
            )
        envelopes: list[Envelope] = []
        version = partner.trusted.version + 1
        # Trust documents travel in envelopes like any statement: all those of one call together, no more than a
        # partner's largest request.
        budget = 4 * self.exchange.settings.max_envelope_bytes + 4096
        url = base_url
        try:
            async with (
                asyncio.timeout(TRUST_FETCH_SECONDS),
                aiohttp.ClientSession() as session,
            ):
                while len(envelopes) < TRUST_VERSIONS_AT_ONCE:
                    url = base_url.rstrip("/") + TRUST_VERSION_PATH.format(version=version)
                    async with session.get(url, ssl=self.ssl_context or True) as response:
                        if response.status == 404:
                            break
                        if response.status != 200:
                            raise PublisherUnavailable(
                                f"{party}'s trust document version {version} could not be fetched: {url} answered"
                                f" HTTP {response.status} {escaped(response.reason or '', MAX_PUBLISHER_TEXT)}".rstrip()
                                + "; call again later, or ask the partner to mend its publication"
                            )
                        body = await _body_within(response, budget, url)
                        budget -= len(body)
                        try:
                            envelopes.append(Envelope.from_json(body))
                        except EnvelopeFormatError as exc:
                            raise PublicationRefused(ResponseCode.MALFORMED_PAYLOAD, f"{url}: {exc}") from None
                    version += 1
        except aiohttp.ClientError as exc:
            raise PublisherUnavailable(
                f"{party}'s trust documents could not be fetched from {url}: {_fetch_failure(exc)}; check the"
                " partner's http_url, or call again later"
            ) from None
        except TimeoutError:
            raise PublisherUnavailable(
                f"{party}'s trust documents at {base_url} did not arrive within {TRUST_FETCH_SECONDS:g} s; check the"
                " partner's http_url, or call again later"
            ) from None
        now = self.clock()
        async with self.store.transaction() as tx:
            # Read the trusted version under the store's lock: a push may have arrived while fetching.
            base = partner.trusted
            try:
                fresh = [e for e in envelopes if TrustDocument.from_payload(e.payload).version > base.version]
            except TrustError as exc:
                raise PublicationRefused(
                    ResponseCode.TRUST_UPDATE_REFUSED, f"{party}'s trust documents at {base_url}: {exc}"
                ) from None
            try:
                # As a pushed update is judged: expired is TRUST_DOCUMENT_EXPIRED, a missing threshold of
                # signatures TRUST_UPDATE_REFUSED.
                updated = apply_trust_updates(base, fresh, now) if fresh else base
            except GatewayError as exc:
                raise PublicationRefused(exc.code, f"{party}'s trust documents at {base_url}: {exc.message}") from None
            for offset, envelope in enumerate(fresh, start=1):
                await tx.put_trust_document(party, base.version + offset, envelope.to_json(), now)
        self.partners.replace(party, updated)
        return partner.trusted


def configured_after_stored(
    party: str,
    configured: TrustedParty,
    newest: tuple[int, bytes] | None,
    same: bytes | None,
    now: dt.datetime,
    field: str,
) -> tuple[TrustedParty, bool]:
    """The document a gateway starts from for ``party``, and whether it is new to its store: the newer of the
    ``configured`` one and the ``newest`` stored one (its version and envelope), given the stored envelope of the
    configured document's version (``same``). What ``serve`` and ``config check`` both decide.

    A configured document is taken out of band only the first time: once versions are stored, one configured after
    them must follow on from the newest as an update would (exactly the next version, signed by its trust keys),
    and one with a stored version's number must be that very document. Otherwise `GatewayError` naming ``field``.
    """
    if newest is None:
        return configured, True
    version, envelope = newest[0], Envelope.from_json(newest[1])
    if same is not None and Envelope.from_json(same).payload != configured.envelope.payload:
        raise _not_the_stored(party, configured.version, field)
    if version >= configured.version:
        return TrustedParty.restore(envelope), False
    if configured.version != version + 1:
        raise GatewayError(
            ResponseCode.TRUST_UPDATE_REFUSED,
            f"{party}'s trust document is version {configured.version}, but the newest version this gateway trusts is"
            f" {version}: a document is taken up one version at a time, each signed by the trust keys of the one"
            f" before; configure version {version + 1}, or take up the versions with RefreshPartnerTrust (a"
            " partner's) or RotateTrustDocument (this gateway's)",
            field=field,
        )
    try:
        return apply_trust_update(TrustedParty.restore(envelope), configured.envelope, now), True
    except GatewayError as exc:
        raise GatewayError(
            exc.code,
            f"{party}'s trust document version {configured.version} does not follow on from the stored version"
            f" {version}: {exc.message}",
            field=field,
        ) from None


def _not_the_stored(party: str, version: int, field: str) -> GatewayError:
    return GatewayError(
        ResponseCode.TRUST_UPDATE_REFUSED,
        f"{party}'s trust document version {version} differs from the version {version} this gateway stored and"
        " trusts: a published version never changes; configure the document as it was published",
        field=field,
    )


def _one_signature_suffices(document: TrustDocument, what: str, *, field: str) -> None:
    """Refuse a document whose transfer role needs more signatures than this gateway makes.

    The gateway signs each statement and receipt with one key, so a transfer threshold above 1 would make
    every partner refuse everything it sends, with no error on this side.
    """
    threshold = document.threshold_for(TRANSFER_ROLE)
    if threshold != 1:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"the {what} (version {document.version}) sets the transfer role's threshold to {threshold}, but this"
            " gateway signs each message with one key; publish a document with a transfer threshold of 1",
            field=field,
        )
