"""Who an operator call's caller is: loopback detection and the precedence of credentials."""

from __future__ import annotations

import pytest

from gateway.domain.access import (
    CALLS_AT_ONCE,
    LOOPBACK_CALLER,
    AuthenticationRefused,
    Caller,
    Full,
    OperatorCaller,
    Places,
    Role,
    identify,
    is_loopback_host,
    is_loopback_peer,
    peer_source,
    token_digest,
)

CALLERS = (
    OperatorCaller("reader", Role.READ_ONLY, token_sha256=token_digest("r")),
    OperatorCaller("boss", Role.ADMINISTRATOR, token_sha256=token_digest("b")),
    OperatorCaller("ops-1", Role.OPERATOR, certificate_common_name="ops-1"),
)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("[::]", False),
        ("10.0.0.1", False),
        ("gateway.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        ("ipv4:127.0.0.1:5000", True),
        ("ipv6:[::1]:5000", True),
        ("ipv6:[::ffff:127.0.0.1]:5000", True),
        ("ipv6:%5B::1%5D:59946", True),  # as grpc reports it: percent-encoded
        ("ipv6:%5B::ffff:127.0.0.1%5D:59946", True),
        ("ipv6:%5B2001:db8::1%5D:59946", False),
        ("ipv4:192.0.2.7:5000", False),
        ("ipv6:[2001:db8::1]:5000", False),
        ("unix:/run/gateway.sock", True),
        ("somethingelse", False),
    ],
)
def test_loopback_peers(peer: str, loopback: bool) -> None:
    assert is_loopback_peer(peer) is loopback


@pytest.mark.parametrize(
    ("peer", "source"),
    [
        ("ipv4:192.0.2.7:5000", "ipv4:192.0.2.7"),
        ("ipv4:192.0.2.7:6000", "ipv4:192.0.2.7"),  # another port, the same caller
        ("ipv6:%5B2001:db8::1%5D:59946", "ipv6:2001:db8::/64"),
        ("ipv6:%5B2001:db8::ffff:1%5D:1", "ipv6:2001:db8::/64"),  # the same /64
        ("ipv6:%5B2001:db8:0:1::1%5D:1", "ipv6:2001:db8:0:1::/64"),  # the next /64
        ("ipv6:[2001:DB8::1]:5000", "ipv6:2001:db8::/64"),
        ("ipv6:%5B::ffff:192.0.2.7%5D:5000", "ipv4:192.0.2.7"),  # IPv4-mapped: the IPv4 caller
        ("ipv6:%5B::1%5D:5000", "ipv6:::/64"),
        ("unix:/run/gateway.sock", "unix"),
        ("unix:", "unix"),
        ("ipv4:not-an-address:1", "ipv4:not-an-address"),
        ("somethingelse", "somethingelse"),
    ],
)
def test_callers_are_counted_by_address_and_ipv6_by_its_network(peer: str, source: str) -> None:
    assert peer_source(peer) == source


def _identify(**kwargs: object) -> Caller:
    arguments: dict[str, object] = {
        "token": None,
        "common_name": None,
        "loopback": False,
        "unauthenticated_loopback": False,
        "partner_identities": ("CHE",),
    }
    arguments.update(kwargs)
    return identify(CALLERS, **arguments)  # type: ignore[arg-type]


def test_the_caller_of_a_call_has_its_configured_calls_at_once() -> None:
    callers = (
        OperatorCaller("loader", Role.OPERATOR, token_sha256=token_digest("l"), calls_at_once=500),
        OperatorCaller("probe", Role.READ_ONLY, certificate_common_name="probe", calls_at_once=2),
        OperatorCaller("plain", Role.READ_ONLY, token_sha256=token_digest("p")),
    )

    def caller(**seen: object) -> Caller:
        arguments: dict[str, object] = {"token": None, "common_name": None, "loopback": True}
        arguments.update(seen)
        return identify(callers, unauthenticated_loopback=True, **arguments)  # type: ignore[arg-type]

    assert caller(token="l") == Caller("loader", Role.OPERATOR, 500)
    assert caller(common_name="PROBE") == Caller("probe", Role.READ_ONLY, 2)
    assert caller(token="p").calls_at_once == CALLS_AT_ONCE == 64
    assert caller().calls_at_once == CALLS_AT_ONCE  # the callers without credentials, on loopback, as one


def test_a_token_names_its_caller_even_beside_another_callers_certificate() -> None:
    assert _identify(token="b") == Caller("boss", Role.ADMINISTRATOR)
    assert _identify(token="b", common_name="ops-1") == Caller("boss", Role.ADMINISTRATOR)
    assert _identify(common_name="ops-1") == Caller("ops-1", Role.OPERATOR)
    assert _identify(common_name="OPS-1") == Caller("ops-1", Role.OPERATOR)  # as a CA may spell it


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"token": "unknown"},
        {"token": "unknown", "loopback": True, "unauthenticated_loopback": True},
        {"common_name": "stranger"},
        {"common_name": "CHE"},
        {"common_name": "che"},  # a partner's certificate, whichever spelling its CA issued
        {"common_name": "CHE", "token": "b"},
        {"loopback": True},
        {"unauthenticated_loopback": True},
    ],
)
def test_refused_credentials(credentials: dict[str, object]) -> None:
    with pytest.raises(AuthenticationRefused) as refused:
        _identify(**credentials)
    assert "unknown" not in str(refused.value) and "'b'" not in str(refused.value)


def test_loopback_without_credentials_is_the_administrator_only_when_allowed() -> None:
    assert _identify(loopback=True, unauthenticated_loopback=True) == Caller(LOOPBACK_CALLER, Role.ADMINISTRATOR)


def test_roles_are_ordered() -> None:
    assert [role.rank for role in Role] == [0, 1, 2]
    assert Role.ADMINISTRATOR.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.OPERATOR)
    assert not Role.READ_ONLY.allows(Role.OPERATOR) and not Role.OPERATOR.allows(Role.ADMINISTRATOR)


def test_places_refuse_by_the_limit_that_is_full_and_come_back_once_given() -> None:
    places = Places()
    assert places.take("a", per_source=2, in_all=3) is None
    assert places.take("a", per_source=2, in_all=3) is None
    assert places.take("a", per_source=2, in_all=3) is Full.PER_SOURCE
    assert places.take("b", per_source=2, in_all=3) is None
    assert places.take("c", per_source=2, in_all=3) is Full.IN_ALL
    assert (places.held(), places.held("a"), places.held("c")) == (3, 2, 0)
    places.give("a")
    assert places.take("c", per_source=2, in_all=3) is None
    for source in ("a", "b", "c"):
        places.give(source)
    assert places.held() == 0 and places.held("a") == 0
    # Without a limit in all, only the source's own counts.
    assert all(places.take(f"s{i}", per_source=1) is None for i in range(1000))
    assert places.take("s1", per_source=1) is Full.PER_SOURCE
