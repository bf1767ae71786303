"""The aiohttp application: the JSON partner path, the published trust document, health and metrics.

The deliver endpoint hands the raw request body to `gateway.exchange.Exchange.receive`, the same code the
gRPC path uses, so every check is made once, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.domain.access import DeliveryPlaces, Places, address_source
from gateway.domain.delivery import RETRYABLE_REFUSALS
from gateway.domain.errors import ResponseCode
from gateway.exchange import EnvelopeForm, Exchange, ReceiptUnsigned
from gateway.partners import transport_identity
from gateway.store.base import DatabaseProbe, database_could_not

DELIVER_PATH = "/v1/partner/deliver"
VERSION_PATTERN = re.compile(r"[1-9][0-9]*")
"""A version in the path: ASCII digits (str.isdigit also takes other scripts')."""
MAX_VERSION = 2**63 - 1
TRUST_PATH = "/.well-known/carbon-gateway/trust.json"
TRUST_VERSION_PATH = "/.well-known/carbon-gateway/trust/{version}.json"

IDLE_SECONDS = 60.0
"""A connection is closed when it has not sent a whole request's line and headers this long after it opened or
after its last request: one that sends nothing, or trickles its headers, does not hold a socket for ever."""
BODY_SECONDS = 60.0
"""The longest a request body may take to arrive: a slower one is answered 408, unjudged, to be sent again."""
BODY_GRACE_SECONDS = 10.0
MIN_BODY_BYTES_PER_SECOND = 8192
"""Past its first `BODY_GRACE_SECONDS`, a body must arrive at this rate on average, or it is answered 408 at once:
a client that trickles bodies cannot hold delivery places (`BODIES_AT_ONCE`) for `BODY_SECONDS` each. The
largest body the endpoint takes needs some 70 KB/s to arrive within `BODY_SECONDS` anyway."""
BODY_CHECK_SECONDS = 1.0
"""How often the rate of a body still arriving is checked."""

BODIES_AT_ONCE = DeliveryPlaces.at_once
"""How many deliveries the endpoint reads and handles at once, from all clients, unless configured (``[limits]
deliveries_at_once``). Each holds its body, up to the body limit (some four times the envelope cap), until its
receipt is sent: without a bound, clients that send large bodies slowly, or stall, could take all of the
gateway's memory. More are answered 503 before their bodies are read."""

BODIES_PER_ADDRESS = DeliveryPlaces.per_address
"""How many of those one network address (an IPv6 /64 counts as one) may have, unless configured (``[limits]
deliveries_per_address``): one client cannot take every place and shut out the other partners."""

BUSY_RETRY_SECONDS = 1
"""The ``Retry-After`` of a delivery answered 503 for want of a place."""

log = logging.getLogger(__name__)

_HTTP_STATUS: dict[ResponseCode, int] = {
    ResponseCode.ENVELOPE_TOO_LARGE: 413,
    ResponseCode.MALFORMED_PAYLOAD: 400,
    ResponseCode.UNSUPPORTED_PAYLOAD_TYPE: 415,
    ResponseCode.SIGNATURE_INVALID: 401,
    ResponseCode.KEY_UNKNOWN_OR_REVOKED: 401,
    ResponseCode.THRESHOLD_NOT_MET: 401,
    ResponseCode.TRUST_DOCUMENT_EXPIRED: 401,
    ResponseCode.PEER_IDENTITY_MISMATCH: 403,
    ResponseCode.WRONG_RECIPIENT: 421,
    ResponseCode.REPLAY: 409,
    ResponseCode.SEQUENCE_GAP: 409,
}


def http_status(code: ResponseCode, taken_in: bool) -> int:
    """200 when the statement was taken in; 503 when it was not because this gateway failed (`RETRYABLE_REFUSALS`:
    ``INTERNAL_ERROR``, which the sender retries, as the gRPC path's receipt tells it); otherwise a 4xx that
    matches the refusal of the sender's input."""
    if taken_in:
        return 200
    if code in RETRYABLE_REFUSALS:
        return 503
    return _HTTP_STATUS.get(code, 422)


TrustSource = Callable[[int | None], Awaitable[bytes | None]]
"""Returns this gateway's trust document envelope (JSON) of a version, or the current one for None."""


@dataclass
class Metrics:
    """Counters exposed at /metrics in the Prometheus text format."""

    received: dict[str, int] = field(default_factory=dict)
    busy: int = 0
    """Deliveries answered 503, unread, for want of a place (`BODIES_AT_ONCE`)."""
    timed_out: int = 0
    """Deliveries answered 408, unjudged, because their bodies came too slowly (`read_body`)."""

    def count(self, code: ResponseCode) -> None:
        """Count one delivery answered with ``code``."""
        self.received[code.name] = self.received.get(code.name, 0) + 1

    def render(self) -> str:
        """The text exposition."""
        lines = [
            "# HELP carbon_gateway_deliveries_total Partner deliveries received over HTTP, by response code.",
            "# TYPE carbon_gateway_deliveries_total counter",
        ]
        lines += [f'carbon_gateway_deliveries_total{{code="{k}"}} {v}' for k, v in sorted(self.received.items())]
        lines += [
            "# HELP carbon_gateway_deliveries_busy_total Partner deliveries over HTTP answered 503, unread, because"
            " as many were being handled as the gateway takes at once.",
            "# TYPE carbon_gateway_deliveries_busy_total counter",
            f"carbon_gateway_deliveries_busy_total {self.busy}",
            "# HELP carbon_gateway_deliveries_timed_out_total Partner deliveries over HTTP answered 408, unjudged,"
            " because their bodies arrived too slowly.",
            "# TYPE carbon_gateway_deliveries_timed_out_total counter",
            f"carbon_gateway_deliveries_timed_out_total {self.timed_out}",
        ]
        return "\n".join(lines) + "\n"


def peer_common_name(request: web.Request, *, mtls: bool = False) -> str | None:
    """The transport identity of the client's verified certificate (`transport_identity`: its common name, "" for
    none, several names joined for several), or None when the request is not over mTLS.

    ``mtls`` says the server is served over mutual TLS: then a request whose connection is gone, whose
    certificate can no longer be read, raises `ConnectionError` rather than passing for one without mTLS."""
    transport = request.transport
    if transport is None:
        if mtls:
            raise ConnectionError("the connection closed before its client certificate was read")
        return None
    if transport.get_extra_info("sslcontext") is None:
        return None
    certificate = transport.get_extra_info("peercert")
    if not certificate:
        return ""
    return transport_identity(
        [str(value) for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"]
    )


class BodyUnreadable(ValueError):
    """A request body that cannot be decoded as its ``Content-Encoding`` says."""


class BodyTooLarge(ValueError):
    """A request body larger than the limit once decoded."""


CONTENT_ENCODINGS = ("gzip", "x-gzip", "deflate")
"""The compressions a partner may send its body in (``Content-Encoding``), besides none (``identity``)."""

DECOMPRESSIONS_AT_ONCE = 1
"""Compressed bodies are decompressed off the event loop, this many at a time: a few kilobytes of gzip unpack to
the body limit (some 12 ms of CPU each), and a crowd of them must hold neither the event loop nor every CPU."""


def decoded_body(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """The body as sent, ``raw`` decompressed as ``content_encoding`` says (a `CONTENT_ENCODINGS` value, or
    empty or ``identity`` for none).

    Raises `BodyTooLarge` once the decompressed body passes ``limit`` bytes: no more of it is decompressed, so a
    small body that unpacks to gigabytes costs no more than one of ``limit`` bytes. Raises `BodyUnreadable` for
    another encoding, a stream that does not decompress, one that ends before its end mark (a truncated gzip
    body would otherwise read as what decompressed of it), and data after the end mark.
    """
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in CONTENT_ENCODINGS:
        shown = encoding if len(encoding) <= 40 else f"{encoding[:40]}..."
        raise BodyUnreadable(f"content-encoding {shown!r} is not supported: send identity, gzip or deflate")
    if encoding == "deflate":
        # RFC 9110 deflate is the zlib format; some senders send the raw stream, which aiohttp took too.
        wbits = zlib.MAX_WBITS if raw[:1] and raw[0] & 0x0F == 8 else -zlib.MAX_WBITS
    else:
        wbits = 16 + zlib.MAX_WBITS
    decompressor = zlib.decompressobj(wbits)
    try:
        body = decompressor.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise BodyUnreadable(f"the {encoding} body does not decompress ({exc})") from None
    if len(body) > limit:
        raise BodyTooLarge(f"a body of more than {limit} bytes")
    if not decompressor.eof:
        raise BodyUnreadable(f"the {encoding} body ends before the end of its compressed stream")
    if decompressor.unused_data:
        raise BodyUnreadable(
            f"{len(decompressor.unused_data)} bytes follow the end of the {encoding} body's compressed stream"
        )
    return body


class BodyTooSlow(Exception):
    """A request body that did not arrive within `BODY_SECONDS`, or fell below `MIN_BODY_BYTES_PER_SECOND`."""


async def read_body(request: web.Request) -> bytes:
    """The whole body of ``request``; `BodyTooSlow` once it takes longer than `BODY_SECONDS`, or once less of it
    has arrived than `MIN_BODY_BYTES_PER_SECOND` for each second past `BODY_GRACE_SECONDS`."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    reading = asyncio.ensure_future(request.read())
    try:
        while True:
            left = BODY_SECONDS - (loop.time() - started)
            done, _ = await asyncio.wait({reading}, timeout=max(0.0, min(BODY_CHECK_SECONDS, left)))
            if done:
                return reading.result()
            elapsed = loop.time() - started
            if elapsed >= BODY_SECONDS:
                raise BodyTooSlow(f"the body did not arrive within {BODY_SECONDS:g} s")
            arrived = request.content.total_bytes
            if arrived < MIN_BODY_BYTES_PER_SECOND * (elapsed - BODY_GRACE_SECONDS):
                raise BodyTooSlow(
                    f"{arrived} bytes of the body arrived in {elapsed:.0f} s: past the first"
                    f" {BODY_GRACE_SECONDS:g} s, a body must arrive at {MIN_BODY_BYTES_PER_SECOND} bytes/s or more"
                )
    finally:
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


def build_app(
    exchange: Exchange,
    trust: TrustSource,
    places: DeliveryPlaces | None = None,
    *,
    mtls: bool = False,
    database: DatabaseProbe | None = None,
) -> web.Application:
    """The HTTP application of one gateway; ``places`` are the configured delivery places (None for the
    module's defaults); ``mtls`` says it is served over mutual TLS, so that every delivery is bound to the
    partner its client certificate names; ``database`` is what ``/healthz`` asks whether the database answers
    (one of its own for None), shared with the gRPC health checks."""
    metrics = Metrics()
    body_limit = 4 * exchange.settings.max_envelope_bytes + 4096
    app = web.Application(client_max_size=body_limit)
    decompressing = asyncio.Semaphore(DECOMPRESSIONS_AT_ONCE)

    def limits() -> tuple[int, int]:
        return (places.at_once, places.per_address) if places else (BODIES_AT_ONCE, BODIES_PER_ADDRESS)

    handling = Places()
    """Deliveries being read and handled, by the address they come from."""

    @asynccontextmanager
    async def place(request: web.Request) -> AsyncIterator[bool]:
        """Yield whether the delivery has one of the `BODIES_AT_ONCE` places (`BODIES_PER_ADDRESS` from its
        address), held until the block ends."""
        source = address_source(request.remote or "") or "local"
        at_once, per_address = limits()
        if handling.take(source, in_all=at_once, per_source=per_address) is not None:
            yield False
            return
        try:
            yield True
        finally:
            handling.give(source)

    async def deliver(request: web.Request) -> web.Response:
        async with place(request) as admitted:
            if admitted:
                try:
                    return await handle(request)
                except ReceiptUnsigned:
                    # No receipt can be signed: nothing was judged that a receipt would tell, as after a 503
                    # for want of a place. The sender sends the statement again.
                    return web.Response(
                        status=503,
                        text="the receiver cannot sign receipts now (its signer failed): nothing was answered;"
                        f" send again in {BUSY_RETRY_SECONDS} s or more\n",
                        headers={"Retry-After": str(BUSY_RETRY_SECONDS)},
                    )
        metrics.busy += 1
        at_once, per_address = limits()
        busy = web.Response(
            status=503,
            text=f"{at_once} deliveries ({per_address} from one address) are being handled, as many as"
            f" this gateway takes at once: nothing was read; send again in {BUSY_RETRY_SECONDS} s\n",
            headers={"Retry-After": str(BUSY_RETRY_SECONDS)},
        )
        busy.force_close()  # the body is not read: nothing more from this connection
        return busy

    async def handle(request: web.Request) -> web.Response:
        try:
            # Read while the connection is open: once the client has closed it (it may, right after sending its
            # body), aiohttp has no transport left to ask, and the delivery must not pass for one without mTLS.
            identity = peer_common_name(request, mtls=mtls)
            raw = await read_body(request)
        except BodyTooSlow as exc:
            # A slow network, not a bad statement: no receipt, which a sender would take as final, and nothing
            # judged. The sender tries again, as after a 503 or a lost connection.
            metrics.timed_out += 1
            log.info("a delivery's body came too slowly from %s: %s", request.remote or "a local client", exc)
            late = web.Response(
                status=408,
                text=f"{exc}: nothing was judged; send again in {BUSY_RETRY_SECONDS} s or more\n",
                headers={"Retry-After": str(BUSY_RETRY_SECONDS)},
            )
            late.force_close()  # the rest of the body is not read: nothing more from this connection
            return late
        except ConnectionError:
            # Nothing failed here, and nobody is left to answer.
            log.info("a partner closed its connection to %s before sending the whole request body", DELIVER_PATH)
            return web.Response(status=400)
        except web.HTTPRequestEntityTooLarge:
            # aiohttp stops reading at the application's limit, some four times the cap: the rest is not read.
            received = exchange.refuse_unread(f"a body of more than {body_limit} bytes", EnvelopeForm.JSON)
            metrics.count(received.code)
            unread = web.Response(body=received.receipt, status=413, content_type="application/json")
            unread.force_close()
            return unread
        except MALFORMED_REQUEST as exc:  # a chunked body mis-framed
            received = exchange.refuse_unreadable(_reason(exc), EnvelopeForm.JSON)
            metrics.count(received.code)
            return web.Response(body=received.receipt, status=400, content_type="application/json")
        # The server leaves bodies compressed (`HttpServer`): decompressed here, only as far as the limit.
        # Two headers are one list of encodings, as HTTP reads them.
        encoding = ", ".join(request.headers.getall("Content-Encoding", []))
        try:
            if encoding.strip().lower() not in ("", "identity"):
                async with decompressing:
                    raw = await asyncio.to_thread(decoded_body, raw, encoding, body_limit)
        except (BodyTooLarge, BodyUnreadable) as exc:
            too_large = isinstance(exc, BodyTooLarge)
            refuse = exchange.refuse_unread if too_large else exchange.refuse_unreadable
            received = refuse(str(exc), EnvelopeForm.JSON)
            metrics.count(received.code)
            refused = web.Response(
                body=received.receipt, status=413 if too_large else 400, content_type="application/json"
            )
            refused.force_close()  # as for a body the server could not read: nothing more from this connection
            return refused
        received = await exchange.receive(raw, form=EnvelopeForm.JSON, peer_identity=identity)
        metrics.count(received.code)
        status = http_status(received.code, received.taken_in)
        # A failure of this gateway's (its database, a bug) is not the sender's: 503, which HTTP clients and
        # proxies retry, with the signed receipt (INTERNAL_ERROR, not taken in) as the body all the same.
        retry = {"Retry-After": str(BUSY_RETRY_SECONDS)} if status == 503 else None
        return web.Response(body=received.receipt, status=status, content_type="application/json", headers=retry)

    async def published(request: web.Request) -> web.Response:
        version_text = request.match_info.get("version")
        version = None
        if version_text is not None:
            if not VERSION_PATTERN.fullmatch(version_text):
                raise web.HTTPNotFound(text="trust document versions are positive integers (ASCII digits)")
            if len(version_text) > len(str(MAX_VERSION)) or int(version_text) > MAX_VERSION:
                digits = len(version_text)
                shown = version_text if digits <= 40 else f"{version_text[:40]}… ({digits} digits)"
                raise web.HTTPNotFound(text=f"no trust document version {shown}")
            version = int(version_text)
        try:
            document = await trust(version)
        except Exception as exc:
            # The versions are read from the database: one that cannot be read now is a passing failure of this
            # gateway, which the partner's refresh tries again, not a 500 with a traceback.
            if database_could_not(exchange.store, exc):
                log.warning("trust document version %s could not be read for %s: %r", version, request.remote, exc)
            else:
                log.error("trust document version %s could not be read for %s", version, request.remote, exc_info=exc)
            return web.Response(
                status=503,
                text=f"this gateway's database could not be read now: fetch the trust document again in"
                f" {BUSY_RETRY_SECONDS} s or more\n",
                headers={"Retry-After": str(BUSY_RETRY_SECONDS)},
            )
        if document is None:
            raise web.HTTPNotFound(text=f"no trust document version {version_text}")
        return web.Response(body=document, content_type="application/json")

    database = database or DatabaseProbe(exchange.store)

    async def health(request: web.Request) -> web.Response:
        # Serving only while the database answers: without it no statement can be taken in, and a load balancer
        # must send the partners elsewhere (503, which it reads as unhealthy), not here.
        party = exchange.settings.self_party
        problem = await database.problem()
        if problem is not None:
            return web.json_response(
                {"status": "not serving", "party": party, "reason": problem},
                status=503,
                headers={"Retry-After": str(BUSY_RETRY_SECONDS)},
            )
        return web.json_response({"status": "serving", "party": party})

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain")

    app.router.add_post(DELIVER_PATH, deliver)
    app.router.add_get(TRUST_PATH, published)
    app.router.add_get(TRUST_VERSION_PATH, published)
    app.router.add_get("/healthz", health)
    app.router.add_get("/metrics", metrics_page)
    return app


MALFORMED_REQUEST = (HttpProcessingError, web.RequestPayloadError)
"""What aiohttp raises for a request it cannot parse or decode: the client's fault, answered with 400."""


MAX_REASON = 300
"""Characters of aiohttp's reason kept: it may quote the request's bytes, as many as the client sent."""


def _reason(exc: BaseException) -> str:
    """aiohttp's reason for refusing a malformed request, on one line and cut to `MAX_REASON` characters."""
    reason = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    text = " ".join(str(reason).split())
    return text if len(text) <= MAX_REASON else f"{text[:MAX_REASON]}... ({len(text)} characters)"


_AIOHTTP_NAMES_PEER = "Error handling request from "


class _MalformedRequestsInOneLine(logging.Filter):
    """aiohttp logs a request it cannot parse (a request line too long, a bad header) with a traceback, although
    it answers 400 and nothing in the gateway failed: write it as one warning naming the problem instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, MALFORMED_REQUEST):
            # aiohttp's own words ("Unhandled exception", "Error handling request") would read as a crash; the
            # peer it names is kept.
            said = record.getMessage()
            peer = said.removeprefix(_AIOHTTP_NAMES_PEER) if said.startswith(_AIOHTTP_NAMES_PEER) else ""
            peer = "" if peer == "None" else peer  # aiohttp's name for a peer it does not know
            record.msg = f"refused a malformed HTTP request{f' from {peer}' if peer else ''}: {_reason(exc)}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


REQUEST_LOG = logging.getLogger("gateway.http.requests")
REQUEST_LOG.addFilter(_MalformedRequestsInOneLine())


class HttpServer:
    """Runs the application on one address (port 0 picks a free port), with optional mTLS."""

    def __init__(self, app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        # Bodies stay compressed (`decoded_body` decompresses them): aiohttp would decompress all that a client
        # sent, even past the 413 it answered (it reads the rest of an unread body before it closes), and read
        # a truncated gzip body as what decompressed of it.
        self.runner = web.AppRunner(
            app, access_log=None, logger=REQUEST_LOG, keepalive_timeout=IDLE_SECONDS, auto_decompress=False
        )
        self.host = host
        self.port = port
        self.ssl_context = ssl_context

    async def start(self) -> int:
        """Start serving; return the bound port."""
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop serving, letting in-flight requests finish."""
        await self.runner.cleanup()
