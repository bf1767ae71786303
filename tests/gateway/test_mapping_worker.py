"""`gateway.rpc.mapping.MappingWorker`: the places of the mapping calls a gateway has in hand."""

from __future__ import annotations

import contextlib

import pytest

from gateway.domain.access import Caller, Role
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.rpc import auth
from gateway.rpc.mapping import MappingWorker


def _as(name: str) -> None:
    auth._current_caller.set(Caller(name=name, role=Role.READ_ONLY))


def test_a_caller_holds_its_places_and_the_gateway_at_most_its_own() -> None:
    worker = MappingWorker(max_calls=3, max_calls_per_caller=2)
    try:
        with contextlib.ExitStack() as held:
            for name in ("a", "a"):
                _as(name)
                held.enter_context(worker.admitted())
            _as("a")
            with pytest.raises(GatewayError) as refused:
                held.enter_context(worker.admitted())
            assert refused.value.code is ResponseCode.TOO_MANY_MAPPINGS
            assert refused.value.message.startswith("this caller has 2 mapping calls in hand already")
            _as("b")
            held.enter_context(worker.admitted())
            _as("c")
            with pytest.raises(GatewayError) as refused:
                held.enter_context(worker.admitted())
            assert refused.value.message.startswith("3 mapping calls are in hand already, the most this gateway")
        _as("a")
        with worker.admitted(), worker.admitted():  # every place was given back
            pass
    finally:
        auth._current_caller.set(None)
        worker.close()
