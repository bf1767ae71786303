"""The operator API's lists come a page at a time: every item once, in order, whatever the page size or the byte
budget, and a page token works only for the list that gave it."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2
from gateway import wire
from gateway.demo import DEMO_AUTHORIZATION, Pair
from gateway.domain.errors import ResponseCode
from gateway.domain.records import Authorization
from gateway.rpc import paging
from gateway.rpc.errors import read_error_detail
from gateway.store import codec
from gateway.store.base import CURRENT_STATUSES, BlockStatus
from tests.integration.harness import operator, setup_accounts, transfer

Call = Callable[[int, str], Awaitable[Any]]


async def pages(call: Call, size: int, items: Callable[[Any], Sequence[Any]]) -> list[list[Any]]:
    """Every page of a list, following its tokens."""
    found: list[list[Any]] = []
    token = ""
    while True:
        page = await call(size, token)
        found.append(list(items(page)))
        token = page.next_page_token
        if not token:
            return found


async def seven_transfers(pair: Pair) -> None:
    block = await setup_accounts(pair)
    for i in range(7):
        await transfer(pair, block, 10 * i + 1, 10 * i + 5, f"t{i}")


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [1, 3, 1000])
async def test_each_list_gives_every_item_once_in_order_page_by_page(pair: Pair, size: int) -> None:
    await seven_transfers(pair)
    async with pair.chn.store.read() as tx:
        ledger = [e.entry_id for e in await tx.list_ledger()]
        transfers = [t.transfer_id for t in await tx.list_transfers()]
        holdings = [b.block_id for b in await tx.list_blocks(statuses=CURRENT_STATUSES)]
    assert len(ledger) >= 7 and len(transfers) == 7 and len(holdings) > 1
    async with operator(pair.chn) as chn:
        lists: list[tuple[Call, Callable[[Any], Sequence[Any]], Callable[[Any], object], list[object]]] = [
            (
                lambda n, t: chn.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest(page_size=n, page_token=t)),
                lambda page: page.entries,
                lambda e: e.entry_id,
                list(ledger),
            ),
            (
                lambda n, t: chn.ListTransfers(operator_pb2.ListTransfersRequest(page_size=n, page_token=t)),
                lambda page: page.transfers,
                lambda t: t.transfer_id,
                list(transfers),
            ),
            (
                lambda n, t: chn.ListHoldings(operator_pb2.ListHoldingsRequest(page_size=n, page_token=t)),
                lambda page: page.holdings,
                lambda h: h.block_id,
                list(holdings),
            ),
        ]
        for call, items, key, expected in lists:
            found = await pages(call, size, items)
            assert [key(item) for page in found for item in page] == expected
            assert all(len(page) == size for page in found[:-1]) and 0 < len(found[-1]) <= size
            assert len(found) == -(-len(expected) // size)


@pytest.mark.asyncio
async def test_a_page_stops_at_its_byte_budget_and_the_next_goes_on(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seven_transfers(pair)
    async with pair.chn.store.read() as tx:
        expected = [t.transfer_id for t in await tx.list_transfers()]
    monkeypatch.setattr(paging, "MAX_PAGE_BYTES", 700)  # two transfers of one block each, not three
    async with operator(pair.chn) as chn:
        found = await pages(
            lambda n, t: chn.ListTransfers(operator_pb2.ListTransfersRequest(page_size=n, page_token=t)),
            1000,
            lambda page: page.transfers,
        )
    assert [t.transfer_id for page in found for t in page] == expected
    assert [len(page) for page in found] == [2, 2, 2, 1]
    assert all(sum(t.ByteSize() for t in page) <= 700 for page in found)


@pytest.mark.asyncio
async def test_a_token_works_only_for_the_list_that_gave_it(pair: Pair) -> None:
    await seven_transfers(pair)
    async with operator(pair.chn) as chn:
        ledger = await chn.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest(page_size=1))
        held = await chn.ListHoldings(operator_pb2.ListHoldingsRequest(page_size=1))
        assert ledger.next_page_token and held.next_page_token
        for call in (
            lambda: chn.ListTransfers(operator_pb2.ListTransfersRequest(page_token=ledger.next_page_token)),
            lambda: chn.ListHoldings(operator_pb2.ListHoldingsRequest(page_token=ledger.next_page_token)),
            lambda: chn.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest(page_token=held.next_page_token)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            detail = read_error_detail(caught.value.trailing_metadata())
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert detail is not None and (ResponseCode(detail.code), detail.field) == (
                ResponseCode.INVALID_ARGUMENT,
                "page_token",
            )


@pytest.mark.asyncio
async def test_a_forged_token_holding_a_lone_surrogate_is_refused_naming_the_field(pair: Pair) -> None:
    # JSON's escapes can spell a lone surrogate, which no store takes as a parameter.
    def forged(position: str) -> str:
        return base64.urlsafe_b64encode(position.encode()).decode()

    transfers, holdings = paging.scope_tag("ListTransfers"), paging.scope_tag("ListHoldings\n")
    async with operator(pair.chn) as chn:
        for call in (
            lambda: chn.ListTransfers(
                operator_pb2.ListTransfersRequest(page_token=forged(f'["{transfers}","\\ud800","x"]'))
            ),
            lambda: chn.ListHoldings(
                operator_pb2.ListHoldingsRequest(page_token=forged(f'["{holdings}","\\ud800","a","b",1,2]'))
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            detail = read_error_detail(caught.value.trailing_metadata())
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert detail is not None and detail.field == "page_token"


@pytest.mark.asyncio
async def test_holdings_of_one_account_page_within_that_account(pair: Pair) -> None:
    await seven_transfers(pair)
    async with pair.chn.store.read() as tx:
        expected = [b.block_id for b in await tx.list_blocks("CN-PO-0001", statuses=(BlockStatus.HELD,))]
    async with operator(pair.chn) as chn:
        found = await pages(
            lambda n, t: chn.ListHoldings(
                operator_pb2.ListHoldingsRequest(account_id="CN-PO-0001", page_size=n, page_token=t)
            ),
            2,
            lambda page: page.holdings,
        )
    assert [h.block_id for page in found for h in page] == expected
    assert {h.account_id for page in found for h in page} == {"CN-PO-0001"}


@pytest.mark.asyncio
async def test_a_token_works_only_with_the_filters_that_gave_it(pair: Pair) -> None:
    """A holdings token of one account, reused for another or for all, is refused: it would skip that list's
    earlier items (or end it), not continue it."""
    await seven_transfers(pair)
    async with operator(pair.chn) as chn:
        everything = await chn.ListHoldings(operator_pb2.ListHoldingsRequest(page_size=1))
        owner = await chn.ListHoldings(operator_pb2.ListHoldingsRequest(account_id="CN-PO-0001", page_size=1))
        assert everything.next_page_token and owner.next_page_token
        for reused in (
            operator_pb2.ListHoldingsRequest(account_id="CN-PO-0001", page_token=everything.next_page_token),
            operator_pb2.ListHoldingsRequest(account_id="CN-OTHER", page_token=owner.next_page_token),
            operator_pb2.ListHoldingsRequest(page_token=owner.next_page_token),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.ListHoldings(reused)
            detail = read_error_detail(caught.value.trailing_metadata())
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert detail is not None and detail.field == "page_token"
            assert "other filters" in detail.message
        # With the filters that gave it, the token goes on.
        more = await chn.ListHoldings(
            operator_pb2.ListHoldingsRequest(account_id="CN-PO-0001", page_size=1, page_token=owner.next_page_token)
        )
        assert [h.account_id for h in more.holdings] == ["CN-PO-0001"]


@pytest.mark.asyncio
async def test_a_forged_transfers_token_whose_instant_is_no_instant_is_refused(pair: Pair) -> None:
    """A position that no transfer list can hold ends no list: it is refused, not answered with an empty page."""
    tag = paging.scope_tag("ListTransfers")
    async with operator(pair.chn) as chn:
        # Not an instant; and two that read as instants but are not spelled as the store spells them.
        for instant in ("not a date", "2026-01-01T01:00:00.1+0100Z", "2026-01-01T01:00:00,123456Z"):
            forged = base64.urlsafe_b64encode(f'["{tag}","{instant}","x"]'.encode()).decode()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chn.ListTransfers(operator_pb2.ListTransfersRequest(page_token=forged))
            detail = read_error_detail(caught.value.trailing_metadata())
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, instant
            assert detail is not None and detail.field == "page_token"


def resume(call: Call, after: str, size: int, token: str) -> Awaitable[Any]:
    """``call`` for the page after ``after`` when ``token`` is empty: following a first page read before."""
    return call(size, token or after)


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [1, 4, 1000])
async def test_authorization_versions_page_by_page_read_only_their_page(
    pair: Pair, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each page read and decoded every version in the table, then sliced: paging through N versions cost N².
    base = wire.authorization_from_proto(DEMO_AUTHORIZATION)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    recorded: dict[str, list[str]] = {}
    async with pair.chn.store.transaction() as tx:
        for a in range(3):
            first = dataclasses.replace(base, authorization_id=f"A-PAGE-{a}", version="1")
            await tx.insert_authorization(first)
            recorded.setdefault(first.authorization_id, []).append("1")
        for v in range(2, 40):
            amended = dataclasses.replace(base, authorization_id=f"A-PAGE-{v % 3}", version=str(v))
            await tx.insert_authorization_version(amended, now)
            recorded[amended.authorization_id].append(str(v))
    async with pair.chn.store.read() as tx:
        everything = [(a.authorization_id, a.version) for a in await tx.list_authorization_versions()]
    decoded = 0
    real = codec.authorization_from_json

    def counted(text: str) -> Authorization:
        nonlocal decoded
        decoded += 1
        return real(text)

    monkeypatch.setattr(codec, "authorization_from_json", counted)
    async with operator(pair.chn) as chn:
        for wanted, expected in [("", everything), *((i, [(i, v) for v in vs]) for i, vs in recorded.items())]:

            def call(n: int, t: str, wanted: str = wanted) -> Awaitable[Any]:
                request = operator_pb2.ListAuthorizationsRequest(authorization_id=wanted, page_size=n, page_token=t)
                return chn.ListAuthorizations(request)

            decoded = 0
            found = await pages(call, size, lambda page: page.versions)
            assert [(v.authorization_id, v.version) for page in found for v in page] == expected
            # A page decodes its own versions and one more, to know whether the list goes on.
            assert decoded <= len(expected) + len(found), (wanted, decoded)
            if wanted and size < len(expected):
                # Adding a version between pages puts it at the end: nothing repeated or missed.
                first = await call(size, "")
                async with pair.chn.store.transaction() as tx:
                    later = dataclasses.replace(base, authorization_id=wanted, version=f"later-{size}")
                    await tx.insert_authorization_version(later, now)
                expected = [*expected, (wanted, later.version)]
                rest = await pages(functools.partial(resume, call, first.next_page_token), size, lambda p: p.versions)
                listed = [(v.authorization_id, v.version) for v in first.versions]
                listed += [(v.authorization_id, v.version) for page in rest for v in page]
                assert listed == expected
