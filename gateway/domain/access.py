"""Who may call the operator API: roles, configured callers, and the rule that picks the caller of a call.

Pure logic: the gRPC interceptor (`gateway.rpc.auth`) hands in what the transport saw (bearer token, client
certificate common name, whether the peer is on loopback) and gets back the caller or the reason for refusal.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import urllib.parse
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

LOOPBACK_CALLER = "anonymous"
"""The name of a caller admitted without credentials on loopback (``unauthenticated_loopback``). It is the name
every operator call had before callers were authenticated, so idempotency keys used then keep their meaning."""


class Role(enum.Enum):
    """An operator caller's role; each includes everything the roles before it may do."""

    READ_ONLY = "read-only"
    OPERATOR = "operator"
    ADMINISTRATOR = "administrator"

    @property
    def rank(self) -> int:
        """0 for read-only, 1 for operator, 2 for administrator."""
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        """Whether a caller with this role may call a method that needs ``needed``."""
        return self.rank >= needed.rank


CALLS_AT_ONCE = 64
"""How many calls that take one request (all but the streams, which have limits of their own) one caller may have
in progress at once, in one process, unless its configuration says otherwise (``calls_at_once``). The callers on
loopback without credentials count as one caller."""

MAX_CALLS_AT_ONCE = 1024
"""The most ``calls_at_once`` may say: each call may hold a request of up to 4 MB."""


class Full(enum.Enum):
    """Which limit refused a place (`Places.take`)."""

    IN_ALL = "in all"
    PER_SOURCE = "per source"


class Places:
    """The places that calls in progress hold, counted by where each comes from (an address, a caller), under a
    limit in all and one per source. Counting only: the edges refuse, in their own words, a call that gets none,
    and give each place back exactly once when its call ends."""

    def __init__(self) -> None:
        self._held: Counter[str] = Counter()

    def take(self, source: str, *, per_source: int, in_all: int | None = None) -> Full | None:
        """Take a place for ``source``; None when taken, else the limit that is full (``in_all`` None: no limit
        in all)."""
        if in_all is not None and self._held.total() >= in_all:
            return Full.IN_ALL
        if self._held[source] >= per_source:
            return Full.PER_SOURCE
        self._held[source] += 1
        return None

    def give(self, source: str) -> None:
        """Give back a place ``source`` took."""
        self._held[source] -= 1
        if not self._held[source]:
            del self._held[source]

    def held(self, source: str | None = None) -> int:
        """The places held, in all or by ``source``."""
        return self._held.total() if source is None else self._held[source]


@dataclass(frozen=True)
class DeliveryPlaces:
    """How many partner deliveries (gRPC ``Deliver`` and ``DeliverBatch`` calls, or JSON bodies) a gateway handles
    at once, from all callers and from one network address (``[limits] deliveries_at_once`` and
    ``deliveries_per_address``). Each holds its request in memory until its receipts are sent."""

    at_once: int = 16
    per_address: int = 4


@dataclass(frozen=True)
class OperatorCaller:
    """A configured operator caller, identified by exactly one of a token's SHA-256 or a certificate's CN."""

    name: str
    role: Role
    token_sha256: bytes = b""
    """The SHA-256 digest (32 bytes) of the caller's bearer token; empty for a certificate caller."""
    certificate_common_name: str = ""
    calls_at_once: int = CALLS_AT_ONCE
    """How many of its calls that take one request may be in progress at once (`CALLS_AT_ONCE`)."""


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one operator call."""

    name: str
    role: Role
    calls_at_once: int = CALLS_AT_ONCE
    """How many of its calls that take one request may be in progress at once, in this process."""


class AuthenticationRefused(Exception):
    """The call carries no credentials that name a caller; the message says why, never echoing a token."""


def is_loopback_host(host: str) -> bool:
    """Whether a listen host (``127.0.0.1``, ``[::1]``, ``localhost``) only accepts connections from this machine."""
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


def is_loopback_peer(peer: str) -> bool:
    """Whether a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:%5B::1%5D:5000`` as grpc percent-encodes it,
    ``unix:...``) is on loopback."""
    scheme, _, rest = peer.partition(":")
    rest = urllib.parse.unquote(rest)
    if scheme == "unix":
        return True
    if scheme not in ("ipv4", "ipv6"):
        return False
    host = rest.rpartition(":")[0]
    return is_loopback_host(host)


IPV6_PREFIX = 64
"""How much of an IPv6 address names one caller: one host commonly holds a whole /64, and could otherwise take
any number of per-address places."""


def peer_source(peer: str) -> str:
    """Where a gRPC peer string calls from, for limits per caller address: ``ipv4:192.0.2.7`` (the port left
    out), ``ipv6:2001:db8::/64`` (the `IPV6_PREFIX` network; an IPv4-mapped address counts as its IPv4
    address), ``unix`` for every local socket, and the string without its port otherwise."""
    scheme, _, rest = peer.partition(":")
    if scheme == "unix":
        return "unix"
    host = urllib.parse.unquote(rest).rpartition(":")[0] or urllib.parse.unquote(rest)
    if scheme in ("ipv4", "ipv6"):
        return address_source(host.strip("[]")) or f"{scheme}:{host}"
    return f"{scheme}:{host}" if rest else scheme


def address_source(host: str) -> str:
    """Where an IP address (``192.0.2.7``, ``2001:db8::1``) calls from, as `peer_source` names it; empty for a
    string that is not an IP address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return f"ipv4:{address}"
    return f"ipv6:{ipaddress.ip_network(f'{address}/{IPV6_PREFIX}', strict=False)}"


def token_digest(token: str) -> bytes:
    """The SHA-256 digest of a bearer token, as configured in ``token_sha256`` (in hexadecimal)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def identify(
    callers: Sequence[OperatorCaller],
    *,
    token: str | None,
    common_name: str | None,
    loopback: bool,
    unauthenticated_loopback: bool,
    partner_identities: Collection[str] = (),
) -> Caller:
    """The caller of a call, or `AuthenticationRefused`.

    A certificate whose common name is a partner's identity is refused whatever else the call carries. A bearer
    token, when present, must match a caller's digest (all digests are compared, in constant time). Without a
    token, a client certificate must name a certificate caller. Without either, a call on loopback is the
    administrator when ``unauthenticated_loopback`` is on.
    """
    # Certificate names compare without regard to case, as a CA may issue either spelling.
    if common_name is not None and common_name.casefold() in {name.casefold() for name in partner_identities}:
        raise AuthenticationRefused("a partner gateway's certificate cannot call the operator API")
    if token is not None:
        digest = token_digest(token)
        found: OperatorCaller | None = None
        for caller in callers:
            # No early exit: every configured digest is compared, so timing says nothing about which one matched.
            if caller.token_sha256 and hmac.compare_digest(caller.token_sha256, digest):
                found = caller
        if found is None:
            raise AuthenticationRefused("the bearer token is not one this gateway knows")
        return Caller(found.name, found.role, found.calls_at_once)
    if common_name is not None:
        for caller in callers:
            if caller.certificate_common_name and caller.certificate_common_name.casefold() == common_name.casefold():
                return Caller(caller.name, caller.role, caller.calls_at_once)
        raise AuthenticationRefused("the client certificate names no configured operator caller")
    if loopback and unauthenticated_loopback:
        return Caller(LOOPBACK_CALLER, Role.ADMINISTRATOR)
    raise AuthenticationRefused(
        "the call carries no credentials: send 'authorization: Bearer <token>' or a client certificate"
    )
