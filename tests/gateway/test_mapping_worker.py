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
    worker = MappingWorker(max_calls=3, max_calls_per_caller=2, kept_calls=0)
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


def test_read_only_callers_leave_the_kept_places_to_operators_and_administrators() -> None:
    worker = MappingWorker(max_calls=4, max_calls_per_caller=2, kept_calls=1)
    try:
        with contextlib.ExitStack() as held:
            for name in ("a", "a", "b"):
                _as(name)
                held.enter_context(worker.admitted())
            _as("c")
            with pytest.raises(GatewayError) as refused:
                held.enter_context(worker.admitted())
            assert refused.value.code is ResponseCode.TOO_MANY_MAPPINGS
            assert "the places left are kept for operators and administrators" in refused.value.message
            auth._current_caller.set(Caller(name="clerk", role=Role.OPERATOR))
            held.enter_context(worker.admitted())
            auth._current_caller.set(Caller(name="admin", role=Role.ADMINISTRATOR))
            with pytest.raises(GatewayError) as refused:
                held.enter_context(worker.admitted())
            assert refused.value.message.startswith("4 mapping calls are in hand already, the most this gateway")
        # In-process calls (no caller) count as the loopback administrator: they may take the kept place.
        auth._current_caller.set(None)
        with contextlib.ExitStack() as held:
            for name in ("a", "b", "c"):
                _as(name)
                held.enter_context(worker.admitted())
            auth._current_caller.set(None)
            held.enter_context(worker.admitted())
    finally:
        auth._current_caller.set(None)


@pytest.mark.asyncio
async def test_the_turn_goes_round_the_callers_and_a_batch_maps_on_a_daemon_thread() -> None:
    import asyncio
    import threading

    worker = MappingWorker()
    order: list[str] = []
    release = {name: threading.Event() for name in ("a1", "a2", "a3", "b1")}
    daemons: list[bool] = []

    def work(name: str) -> str:
        daemons.append(threading.current_thread().daemon)
        order.append(name)
        release[name].wait(10)
        return name

    async def call(caller: str, name: str) -> str:
        _as(caller)
        return await worker.run(work, name)

    first = asyncio.ensure_future(call("a", "a1"))
    while order != ["a1"]:
        await asyncio.sleep(0.01)
    later = [asyncio.ensure_future(call("a", "a2")), asyncio.ensure_future(call("a", "a3"))]
    await asyncio.sleep(0.05)
    late = asyncio.ensure_future(call("b", "b1"))  # another caller, after a's two
    await asyncio.sleep(0.05)
    for name in ("a1", "b1", "a2", "a3"):
        release[name].set()
    assert await asyncio.gather(first, *later, late) == ["a1", "a2", "a3", "b1"]
    assert order == ["a1", "b1", "a2", "a3"]  # b waited for one of a's batches, not for all of them
    assert daemons == [True] * 4
    auth._current_caller.set(None)


@pytest.mark.asyncio
async def test_a_failing_batch_reaches_its_call_and_passes_the_turn_on() -> None:
    worker = MappingWorker()

    def broken() -> None:
        raise ValueError("a defect")

    with pytest.raises(ValueError, match="a defect"):
        await worker.run(broken)
    assert await worker.run(lambda: 7) == 7
