"""The mapping service on a real gateway's operator port: list, unary batches and the streaming RPC."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest

from adapters.context import context_from_json
from adapters.mapping import map_batch
from adapters.rows import from_batch
from carbon_gateway.v1 import mapping_pb2, mapping_pb2_grpc
from gateway.demo import Pair
from gateway.domain.mapping import MAX_MESSAGE, bounded_message
from gateway.rpc import mapping as mapping_module
from gateway.rpc.errors import read_error_detail
from tests.adapters.strategies import ACTION_CONTEXT_JSON
from tests.adapters.test_domestic import GOOD

CONTEXT = json.dumps(ACTION_CONTEXT_JSON).encode()


def credit(n: int) -> dict[str, object]:
    return {**GOOD, "ccer_id": f"CCER-44-2024-{n:04d}", "block_start": n * 10_000 + 1, "block_end": n * 10_000 + 100}


def request(records: list[dict[str, object]], **options: object) -> mapping_pb2.MapRecordsRequest:
    return mapping_pb2.MapRecordsRequest(
        source="cn-ccer",
        target="aef-actions",
        source_format="json",
        payload=json.dumps(records).encode(),
        context_json=CONTEXT,
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.asyncio
async def test_adapters_are_listed_with_their_schemas(pair: Pair) -> None:
    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        listed = await mapping_pb2_grpc.MappingServiceStub(channel).ListAdapters(mapping_pb2.ListAdaptersRequest())
    by_name = {a.name: a for a in listed.adapters}
    assert {"cn-cea", "cn-ccer", "aef-actions", "cadt-v2-units", "serial-vcs"} <= set(by_name)
    assert list(by_name["cn-ccer"].reads) == ["cn-ccer+json", "cn-ccer+csv"]
    assert "aef-actions+xlsx" in by_name["aef-actions"].writes


@pytest.mark.asyncio
async def test_a_batch_maps_to_rows_with_lost_fields_and_a_bad_record_refuses_the_batch(pair: Pair) -> None:
    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        stub = mapping_pb2_grpc.MappingServiceStub(channel)
        mapped = await stub.MapRecords(request([credit(1), credit(2)]))
        assert mapped.applied
        assert mapped.columns[:2] == ["Action date", "Action type"]
        quantity = list(mapped.columns).index("Quantity (t CO2 eq)")
        assert [(r.position, r.values[quantity]) for r in mapped.rows] == [(1, "100"), (2, "100")]
        assert {"province", "project_name"} <= set(mapped.rows[0].lost_fields)
        # The note both records share travels once, as a run of positions.
        assert [(n.position, n.last_position, n.code) for n in mapped.notes] == [(1, 2, "nomenclature_extension")]

        bad = {**credit(3), "vintage": "twenty"}
        refused = await stub.MapRecords(request([credit(1), bad]))
        assert not refused.applied
        assert list(refused.rows) == []
        assert [(i.position, i.field) for i in refused.issues] == [(2, "vintage")]

        partial = await stub.MapRecords(request([credit(1), bad], per_record=True))
        assert [r.position for r in partial.rows] == [1]

        strict = await stub.MapRecords(request([credit(1)], strict=True))
        assert not strict.applied
        assert strict.issues and strict.issues[0].position == 1


@pytest.mark.asyncio
async def test_the_stream_maps_batch_after_batch_with_positions_across_the_stream(pair: Pair) -> None:
    batches = [[credit(b * 10 + i) for i in range(1, 4)] for b in range(3)]

    async def requests() -> AsyncIterator[mapping_pb2.MapRecordsRequest]:
        yield request(batches[0])
        for batch in batches[1:]:
            yield mapping_pb2.MapRecordsRequest(payload=json.dumps(batch).encode())  # settings inherited

    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        stub = mapping_pb2_grpc.MappingServiceStub(channel)
        responses = [r async for r in stub.StreamMapRecords(requests())]
    assert [r.applied for r in responses] == [True, True, True]
    assert [row.position for r in responses for row in r.rows] == list(range(1, 10))
    first_id = list(responses[0].columns).index("First unit ID")
    assert responses[2].rows[0].values[first_id] == "CN-CCER/2021/210001-210001"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "context_json",
    [
        b"[1]",
        b"[" * 100_000,
        b'{"x": ' + b"9" * 5000 + b"}",
        b'{"x": 1e999}',
        b'{"x": NaN}',
        b'{"facts": {"party_registry": "CHN01", "party_registry": "CHE01"}}',
    ],
    ids=["not an object", "too deep", "a number of 5000 digits", "an infinite number", "NaN", "a repeated name"],
)
async def test_a_malformed_context_is_refused_with_the_field(pair: Pair, context_json: bytes) -> None:
    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        stub = mapping_pb2_grpc.MappingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.MapRecords(
                mapping_pb2.MapRecordsRequest(source="cn-ccer", target="aef-actions", context_json=context_json)
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context_json" in (caught.value.details() or "")
    assert "sys.set_int_max_str_digits" not in (caught.value.details() or "")  # Python's advice, not ours


@pytest.mark.asyncio
async def test_a_lone_surrogate_in_a_member_name_is_refused_or_reported_escaped(pair: Pair) -> None:
    # A member name is put in the refusal's field path: it must still make a refusal, not an UNKNOWN status.
    surrogate = b'{"\\ud800": 1}'
    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        stub = mapping_pb2_grpc.MappingServiceStub(channel)
        context = mapping_pb2.MapRecordsRequest(source="cn-ccer", target="aef-actions", context_json=surrogate)
        for call in (lambda: stub.MapRecords(context), lambda: stub.StreamMapRecords(iter([context])).read()):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            detail = read_error_detail(caught.value.trailing_metadata())
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert detail is not None and detail.field == "context_json.\\ud800"
        mapped = await stub.MapRecords(
            mapping_pb2.MapRecordsRequest(
                source="cn-ccer",
                target="aef-actions",
                source_format="json",
                payload=b"[" + surrogate + b"]",
                context_json=CONTEXT,
            )
        )
    assert ("\\ud800", "unknown_field") in [(i.field, i.code) for i in mapped.issues]


@pytest.mark.asyncio
async def test_lone_surrogates_in_record_text_and_context_values_are_refused_by_name(pair: Pair) -> None:
    record = json.dumps([{**GOOD, "project_name": "a\ud800"}]).encode()
    codes = {**ACTION_CONTEXT_JSON, "extension_codes": {"CN-CCER": "\ud800"}}
    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        stub = mapping_pb2_grpc.MappingServiceStub(channel)
        for target in ("cn-ccer", "aef-actions"):
            request = mapping_pb2.MapRecordsRequest(
                source="cn-ccer", target=target, source_format="json", payload=record, context_json=CONTEXT
            )
            for answer in (await stub.MapRecords(request), await stub.StreamMapRecords(iter([request])).read()):
                assert isinstance(answer, mapping_pb2.MapRecordsResponse) and not answer.applied
                assert [(i.position, i.field, i.code) for i in answer.issues] == [(1, "project_name", "bad_value")]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.MapRecords(
                mapping_pb2.MapRecordsRequest(
                    source="cn-ccer", target="aef-actions", payload=record, context_json=json.dumps(codes).encode()
                )
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = read_error_detail(caught.value.trailing_metadata())
    assert detail is not None and detail.field == "context_json.extension_codes.CN-CCER"


@pytest.mark.asyncio
async def test_an_unnamed_target_is_named_and_a_failure_in_a_stream_is_internal_not_unknown(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        stub = mapping_pb2_grpc.MappingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.MapRecords(mapping_pb2.MapRecordsRequest(source="cn-ccer", payload=b"[]"))
        detail = read_error_detail(caught.value.trailing_metadata())
        assert detail is not None and detail.field == "target"

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("a defect")

        monkeypatch.setattr(mapping_module, "map_rows", broken)
        request = mapping_pb2.MapRecordsRequest(source="cn-ccer", target="cn-ccer", payload=b"[]")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.StreamMapRecords(iter([request])).read()
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "a defect" not in (caught.value.details() or "")


@pytest.mark.asyncio
async def test_notes_and_issues_travel_as_runs_numbered_across_the_stream(pair: Pair) -> None:
    bad = {**credit(5), "vintage": "twenty"}

    async def requests() -> AsyncIterator[mapping_pb2.MapRecordsRequest]:
        yield request([credit(1), credit(2), credit(3)])
        yield mapping_pb2.MapRecordsRequest(payload=json.dumps([credit(4), bad, {**bad, "ccer_id": "X-6"}]).encode())
        # A later request may change a setting; the others are still inherited.
        yield mapping_pb2.MapRecordsRequest(payload=json.dumps([bad, credit(8)]).encode(), per_record=True)

    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        stub = mapping_pb2_grpc.MappingServiceStub(channel)
        first, refused, partial = [r async for r in stub.StreamMapRecords(requests())]

    def runs(issues: Iterable[mapping_pb2.MappingIssue]) -> list[tuple[int, int, str, str]]:
        return [(i.position, i.last_position, i.field, i.code) for i in issues]

    assert first.applied and runs(first.notes) == [(1, 3, "Underlying unit registry ID", "nomenclature_extension")]
    assert not refused.applied and list(refused.rows) == []
    assert runs(refused.issues) == [(5, 6, "vintage", "bad_quantity")]
    assert partial.applied and [r.position for r in partial.rows] == [8]
    assert runs(partial.issues) == [(7, 0, "vintage", "bad_quantity")]
    assert runs(partial.notes) == [(8, 0, "Underlying unit registry ID", "nomenclature_extension")]


@pytest.mark.asyncio
async def test_a_large_batch_comes_back_row_for_row_as_the_full_mapping_gives_it(pair: Pair) -> None:
    records = [credit(n) for n in range(1, 2001)]
    expected = from_batch(map_batch("cn-ccer", "aef-actions", records, context=context_from_json(ACTION_CONTEXT_JSON)))
    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        stub = mapping_pb2_grpc.MappingServiceStub(channel)
        mapped = await stub.MapRecords(request(records))
    assert mapped.applied and list(mapped.columns) == list(expected.columns)
    assert [(r.position, list(r.values), tuple(r.lost_fields)) for r in mapped.rows] == [
        (r.position, list(r.values), r.lost_fields) for r in expected.rows
    ]


@pytest.mark.asyncio
async def test_a_later_request_may_turn_an_option_off_and_an_empty_context_is_the_first_requests(pair: Pair) -> None:
    other = json.loads(CONTEXT)
    other["facts"]["cooperative_approach"] = "CA0002"

    async def requests() -> AsyncIterator[mapping_pb2.MapRecordsRequest]:
        yield request([credit(1)], strict=True)  # refused: the record would lose fields
        yield mapping_pb2.MapRecordsRequest(payload=json.dumps([credit(2)]).encode(), strict=False)
        yield mapping_pb2.MapRecordsRequest(payload=json.dumps([credit(3)]).encode())  # strict again, inherited
        yield mapping_pb2.MapRecordsRequest(
            payload=json.dumps([credit(4)]).encode(), strict=False, context_json=json.dumps(other).encode()
        )
        yield mapping_pb2.MapRecordsRequest(payload=json.dumps([credit(5)]).encode(), strict=False)

    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        stub = mapping_pb2_grpc.MappingServiceStub(channel)
        responses = [r async for r in stub.StreamMapRecords(requests())]
    assert [r.applied for r in responses] == [False, True, False, True, True]
    approach = list(responses[1].columns).index("Cooperative approach ID")
    # The context a request leaves empty is the first request's, not the one a request before it gave.
    assert [r.rows[0].values[approach] for r in responses if r.applied] == ["CA0001", "CA0002", "CA0001"]


@pytest.mark.asyncio
async def test_mapping_calls_wait_for_one_thread_of_their_own_and_a_caller_holds_four_places(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import threading

    from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, records_pb2

    real, free, started = mapping_module._mapped, threading.Event(), threading.Semaphore(0)

    def held(*args: Any) -> Any:
        started.release()
        free.wait(30)
        return real(*args)

    monkeypatch.setattr(mapping_module, "_mapped", held)
    worker = pair.chn.mapping.worker if pair.chn.mapping else None
    assert worker is not None and worker.places.per_holder == 4
    request = mapping_pb2.MapRecordsRequest(
        source="cn-ccer", target="cn-ccer", source_format="json", payload=json.dumps([GOOD]).encode()
    )
    loop = asyncio.get_running_loop()
    busy = [loop.run_in_executor(None, free.wait, 30) for _ in range(64)]  # the loop's shared threads
    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        stub = mapping_pb2_grpc.MappingServiceStub(channel)
        try:
            calls = [asyncio.ensure_future(stub.MapRecords(request)) for _ in range(4)]
            for _ in range(1000):  # one maps, on the mapping thread, and three wait for it
                if worker.places.taken == 4 and started.acquire(blocking=False):
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.MapRecords(request)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            detail = read_error_detail(caught.value.trailing_metadata())
            assert detail is not None and detail.code == records_pb2.TOO_MANY_MAPPINGS
            # A commit goes on while mapping is held and the loop's shared threads are all busy.
            operator = operator_pb2_grpc.OperatorServiceStub(channel)
            opened = operator.OpenAccount(
                operator_pb2.OpenAccountRequest(
                    idempotency_key="open",
                    account=records_pb2.Account(account_id="A-1", holder_name="H", account_type="project owner"),
                )
            )
            await asyncio.wait_for(asyncio.ensure_future(opened), 10)
            # Three calls wait their turn. Cancelled by their client, they are gone, requests and all.
            for call in calls[1:]:
                call.cancel()
            for _ in range(500):
                if worker.places.taken == 1:
                    break
                await asyncio.sleep(0.01)
            # (The call left may be the one mapping, or wait behind a cancelled one the thread still maps.)
            assert worker.places.taken == 1 and sum(len(waiting) for waiting in worker._waiting.values()) <= 1
        finally:
            free.set()
        answer = await calls[0]
        again = await stub.MapRecords(request)  # the turn passed on when the thread was done
    await asyncio.gather(*busy)
    assert answer.applied and again.applied and worker.places.taken == 0


@pytest.mark.asyncio
async def test_a_context_with_several_problems_is_refused_with_all_of_them(pair: Pair) -> None:
    """The refusal names the first problem's field, and its message every problem, so that one call shows what
    to mend."""
    context = {"itmo_serials": "sometimes", "facts": {"purpose": "Fun", "ndc_year_of_use": "soon"}}
    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        stub = mapping_pb2_grpc.MappingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.MapRecords(
                mapping_pb2.MapRecordsRequest(
                    source="cn-ccer", target="aef-actions", context_json=json.dumps(context).encode()
                )
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = read_error_detail(caught.value.trailing_metadata())
    assert detail is not None and detail.field == "context_json.itmo_serials"
    assert "(and 2 more: context_json.facts.purpose: " in detail.message
    assert "; context_json.facts.ndc_year_of_use: " in detail.message


@pytest.mark.asyncio
async def test_a_value_only_a_later_record_has_comes_back_in_its_column(pair: Pair) -> None:
    stated = {**credit(2), "mitigation_type": "Removals"}
    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        mapped = await mapping_pb2_grpc.MappingServiceStub(channel).MapRecords(
            mapping_pb2.MapRecordsRequest(
                source="cn-ccer",
                target="cn-ccer",
                source_format="json",
                payload=json.dumps([credit(1), stated]).encode(),
            )
        )
    assert mapped.applied
    rows = [dict(zip(mapped.columns, row.values, strict=True)) for row in mapped.rows]
    assert [row.get("mitigation_type") for row in rows] == ["", "Removals"]


@pytest.mark.asyncio
async def test_a_value_of_megabytes_is_not_echoed_whole_into_an_answer_no_client_could_read(pair: Pair) -> None:
    """A refusal quoted the whole bad value: 3.9 MB of DEL characters (one byte each in the request, four in a
    repr) answered 15.6 MB, which the client refuses to read. The value is quoted cut, and every message is
    bounded (`MAX_MESSAGE`), keeping what to do at its end."""
    huge = "\x7f" * 3_900_000
    field_value = request([{**credit(1), "block_start": huge}])
    field_value.payload = json.dumps([{**credit(1), "block_start": huge}], ensure_ascii=False).encode()
    serial = mapping_pb2.MapRecordsRequest(
        source="serial-vcs",
        target="cadt-v2-units",
        source_format="json",
        payload=json.dumps([{"serial": huge}], ensure_ascii=False).encode(),
    )
    async with grpc.aio.insecure_channel(pair.chn.operator_address) as channel:
        stub = mapping_pb2_grpc.MappingServiceStub(channel)
        cases = [
            (field_value, "block_start", "(3900000 characters) is not a number: a serial number is required"),
            (serial, "serial", " form"),
        ]
        for sent, field, ending in cases:
            assert sent.ByteSize() < 4 << 20
            mapped = await stub.MapRecords(sent)
            assert not mapped.applied
            [issue] = [i for i in mapped.issues if i.field == field]
            assert len(issue.message) <= MAX_MESSAGE, len(issue.message)
            assert mapped.ByteSize() < 64 << 10
            assert issue.message.endswith(ending), issue.message[-200:]


def test_a_message_is_bounded_keeping_its_start_and_its_end() -> None:
    message = "A" * 5000 + " do this"
    kept = bounded_message(message)
    assert len(kept) <= MAX_MESSAGE and kept.startswith("A" * 1000) and kept.endswith("A do this")
    assert f"({len(message) - kept.count('A') - len(' do this'):,} characters left out)" in kept
    assert bounded_message("short") == "short"
