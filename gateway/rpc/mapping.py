"""The mapping gRPC service: adapters listed, and batches mapped through `adapters.rows.map_rows`.

Mapping is CPU work: each batch is mapped, and its answer built, on a thread of its own, so that the
gateway's other calls keep being served while a large batch is mapped. One batch maps at a time (more would
only share the interpreter), and never in the thread pool the rest of the gateway uses, so mapping never
delays a commit. The calls waiting for their turn are bounded, and take turns by caller (`MappingWorker`): a
caller that sends more is refused, not queued without end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal, TypeVar

import grpc

from adapters import tabular
from adapters.context import MappingContext, context_from_json
from adapters.registry import NoAdaptersInstalled, list_adapters
from adapters.rows import MappedRows, map_rows
from carbon_gateway.v1 import mapping_pb2, mapping_pb2_grpc
from gateway.domain import text
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.mapping import RecordRejected
from gateway.domain.places import Places, PlacesFull
from gateway.rpc.auth import caller_may_take_kept_places, caller_name
from gateway.rpc.errors import abort_unexpected, abort_with, refusals_as_status

Context = grpc.aio.ServicerContext
_T = TypeVar("_T")


def _context(data: bytes) -> MappingContext:
    if not data:
        return MappingContext()
    try:
        parsed = tabular.loads_finite(data)
    except (ValueError, RecursionError) as exc:
        raise GatewayError(ResponseCode.INVALID_ARGUMENT, f"not JSON: {exc}", field="context_json") from None
    if not isinstance(parsed, dict):
        raise GatewayError(ResponseCode.INVALID_ARGUMENT, "must be a JSON object", field="context_json")
    try:
        return context_from_json(parsed)
    except RecordRejected as rejected:
        # The refusal names one field; its message lists every problem, so that one call shows all to mend.
        fields = [f"context_json.{p.field.removeprefix('context.')}" for p in rejected.problems]
        message = rejected.problems[0].message
        if len(fields) > 1:
            others = "; ".join(f"{f}: {p.message}" for f, p in zip(fields[1:], rejected.problems[1:], strict=True))
            message = text.truncate(f"{message} (and {len(fields) - 1} more: {others})")
        raise GatewayError(ResponseCode.INVALID_ARGUMENT, message, field=fields[0]) from None


def response(mapped: MappedRows, offset: int = 0) -> mapping_pb2.MapRecordsResponse:
    """The wire form of a mapped batch whose first record is at stream position ``offset + 1``."""
    wire = mapping_pb2.MapRecordsResponse(applied=mapped.applied, columns=mapped.columns)
    add_row = wire.rows.add
    # Rows of a batch mostly share one list of lost fields. Copying a row that already holds it is cheaper
    # than converting the same Python strings again for every row.
    holding: dict[tuple[str, ...], mapping_pb2.MappedRow] = {}
    for position, values, lost in mapped.rows:
        row = add_row()
        prototype = holding.get(lost)
        if prototype is None:
            prototype = holding[lost] = mapping_pb2.MappedRow(lost_fields=lost)
        row.CopyFrom(prototype)
        row.position = position + offset
        row.values.extend(values)
    for issues, found in ((wire.issues, mapped.issues), (wire.notes, mapped.notes)):
        add_issue = issues.add
        for run in found:
            add_issue(
                position=run.first + offset if run.first else 0,
                last_position=run.last + offset if run.last > run.first else 0,
                field=text.encodable(run.field),
                message=text.encodable(run.message),
                code=run.code.value,
            )
    return wire


def _map(request: mapping_pb2.MapRecordsRequest, context: MappingContext) -> MappedRows:
    for name in ("source", "target"):
        if not getattr(request, name):
            raise GatewayError(ResponseCode.INVALID_ARGUMENT, f"name the {name} schema (see ListAdapters)", field=name)
    return map_rows(
        request.source,
        request.target,
        request.payload,
        strict=request.strict,
        per_record=request.per_record,
        source_format=request.source_format or None,
        context=context,
        strict_nomenclature=request.strict_nomenclature,
    )


MAX_MAPPINGS = 16
"""Mapping calls the gateway has in hand at once, mapping or waiting their turn (each holds its request)."""
MAX_MAPPINGS_PER_CALLER = 4
"""Of those, the calls one caller may have."""
KEPT_MAPPINGS = 4
"""Of `MAX_MAPPINGS`, the places read-only callers leave to operators and administrators."""


class MappingWorker:
    """Mapping, one batch at a time, each on a thread of its own, and the places of the calls waiting for it,
    in all and per caller.

    The turn goes round the callers: when a batch is done, the next is the oldest waiting batch of the caller
    served longest ago, so that a caller whose batches are slow delays another caller by one batch at most,
    not by every batch it has waiting. A batch's thread is a daemon: a gateway that stops does not wait for
    a batch nobody waits for any more.
    """

    def __init__(
        self,
        max_calls: int = MAX_MAPPINGS,
        max_calls_per_caller: int = MAX_MAPPINGS_PER_CALLER,
        kept_calls: int = KEPT_MAPPINGS,
    ) -> None:
        self.places = Places(max_calls, max_calls_per_caller, kept_calls)
        self._waiting: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._served: dict[str, int] = {}
        """Each caller's last turn, by number."""
        self._turns = 0
        self._busy = False

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one of the places of the current caller for the length of a call; `TOO_MANY_MAPPINGS` when
        the gateway's places, or the caller's, are all held, or only those kept for operators and administrators
        are left and the caller is read-only."""
        caller = caller_name()
        try:
            self.places.take(caller, may_take_kept=caller_may_take_kept_places())
        except PlacesFull as full:
            if full.by_holder:
                message = (
                    f"this caller has {full.held} mapping calls in hand already, the most one caller may: wait for"
                    " one to end, or call again later"
                )
            elif full.kept:
                message = (
                    f"{full.held} mapping calls are in hand already; the places left are kept for operators and"
                    " administrators: call again later"
                )
            else:
                message = (
                    f"{full.held} mapping calls are in hand already, the most this gateway takes at once: call"
                    " again later"
                )
            raise GatewayError(ResponseCode.TOO_MANY_MAPPINGS, message) from None
        try:
            yield
        finally:
            self.places.give_back(caller)

    async def run(self, work: Callable[..., _T], *args: Any) -> _T:
        """``work(*args)`` on a thread of its own, in the current caller's turn.

        Calls wait their turn here, on the event loop: a call its client cancels while it waits is gone, its
        request with it. The turn passes on when the thread is done, even if the call that held it was
        cancelled meanwhile (a thread cannot stop half way), so that no two batches ever map at once.
        """
        loop = asyncio.get_running_loop()
        caller = caller_name()
        turn: asyncio.Future[None] = loop.create_future()
        self._waiting.setdefault(caller, collections.deque()).append(turn)
        self._pass_turn()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._end_turn()  # given the turn, but gone before using it
            else:
                self._forget(caller, turn)
            raise
        done: asyncio.Future[_T] = loop.create_future()

        def settle(outcome: Callable[[], None]) -> None:
            if not done.done():
                outcome()

        def target() -> None:
            try:
                result = work(*args)
            except BaseException as error:  # handed to the call, which reports it
                loop.call_soon_threadsafe(settle, functools.partial(done.set_exception, error))
            else:
                loop.call_soon_threadsafe(settle, functools.partial(done.set_result, result))

        def finished(future: asyncio.Future[_T]) -> None:
            if not future.cancelled():
                future.exception()  # seen here, whether or not a call still waits for it
            self._end_turn()

        done.add_done_callback(finished)
        try:
            threading.Thread(target=target, name="mapping", daemon=True).start()
        except BaseException as error:
            done.set_exception(error)
        return await asyncio.shield(done)

    def _pass_turn(self) -> None:
        """Give the turn, if free, to the oldest waiting batch of the caller served longest ago."""
        if self._busy or not self._waiting:
            return
        caller = min(self._waiting, key=lambda c: self._served.get(c, -1))
        waiting = self._waiting[caller]
        turn = waiting.popleft()
        if not waiting:
            del self._waiting[caller]
        self._turns += 1
        self._served[caller] = self._turns
        self._busy = True
        turn.set_result(None)

    def _end_turn(self) -> None:
        self._busy = False
        self._pass_turn()

    def _forget(self, caller: str, turn: asyncio.Future[None]) -> None:
        waiting = self._waiting.get(caller)
        if waiting is not None and turn in waiting:
            waiting.remove(turn)
            if not waiting:
                del self._waiting[caller]


class MappingService(mapping_pb2_grpc.MappingServiceServicer):
    """Implements `carbon_gateway.v1.MappingService`."""

    def __init__(self, worker: MappingWorker | None = None) -> None:
        self.worker = worker or MappingWorker()

    @refusals_as_status
    async def ListAdapters(
        self, request: mapping_pb2.ListAdaptersRequest, context: Context[object, object]
    ) -> mapping_pb2.ListAdaptersResponse:
        try:
            infos = list_adapters()
        except NoAdaptersInstalled as exc:
            raise GatewayError(ResponseCode.INVALID_STATE, str(exc)) from None
        return mapping_pb2.ListAdaptersResponse(
            adapters=[
                mapping_pb2.AdapterInfo(
                    name=i.name, description=i.description, reads=i.reads, writes=i.writes, record=i.record
                )
                for i in infos
            ]
        )

    @refusals_as_status
    async def MapRecords(
        self, request: mapping_pb2.MapRecordsRequest, context: Context[object, object]
    ) -> mapping_pb2.MapRecordsResponse:
        with self.worker.admitted():
            wire, _ = await self.worker.run(_mapped, request, _context(request.context_json), 0)
        return wire

    async def StreamMapRecords(
        self, requests: AsyncIterator[mapping_pb2.MapRecordsRequest], context: Context[Any, Any]
    ) -> AsyncIterator[mapping_pb2.MapRecordsResponse]:
        first: mapping_pb2.MapRecordsRequest | None = None
        first_context = MappingContext()
        offset = 0
        try:
            with self.worker.admitted():
                async for request in requests:
                    if first is None:
                        first = request
                        first_context = mapping_context = _context(request.context_json)
                    else:
                        request = _inherit(first, request)
                        same = request.context_json == first.context_json
                        mapping_context = first_context if same else _context(request.context_json)
                    wire, records = await self.worker.run(_mapped, request, mapping_context, offset)
                    yield wire
                    offset += records
        except GatewayError as exc:
            await abort_with(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_unexpected(context, exc, "StreamMapRecords", None)


def _mapped(
    request: mapping_pb2.MapRecordsRequest, context: MappingContext, offset: int
) -> tuple[mapping_pb2.MapRecordsResponse, int]:
    """The answer to one batch whose first record is at stream position ``offset + 1``, and how many records
    the batch held."""
    mapped = _map(request, context)
    return response(mapped, offset), mapped.records


_SETTINGS = tuple(field.name for field in mapping_pb2.MapRecordsRequest.DESCRIPTOR.fields if field.name != "payload")
_Option = Literal["strict", "per_record", "strict_nomenclature"]
_OPTIONS: tuple[_Option, ...] = ("strict", "per_record", "strict_nomenclature")
"""The settings a later request can set to false: the ``optional`` ones, whose presence is kept."""


def _inherit(
    first: mapping_pb2.MapRecordsRequest, later: mapping_pb2.MapRecordsRequest
) -> mapping_pb2.MapRecordsRequest:
    """``later`` with its empty or unset settings taken from ``first``; the payload is always its own."""
    merged = mapping_pb2.MapRecordsRequest(payload=later.payload)
    for option in _OPTIONS:
        source = later if later.HasField(option) else first
        if source.HasField(option):
            setattr(merged, option, getattr(source, option))
    for name in _SETTINGS:
        if name in _OPTIONS:
            continue
        value = getattr(later, name) or getattr(first, name)
        if value:
            setattr(merged, name, value)
    return merged
