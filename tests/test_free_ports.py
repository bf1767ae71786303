"""The loopback ports tests give to ``serve`` processes come from below the kernel's ephemeral range."""

from __future__ import annotations

import socket

from tests.processes import PORTS_FROM, _ephemeral_range, free_ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low, high = _ephemeral_range()
    assert low <= high
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(PORTS_FROM <= port < low for port in ports)
    for port in ports:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
