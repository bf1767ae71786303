"""The operator API's lists come a page at a time: every item once, in order, whatever the page size or the byte
budget, and a page token works only for the list that gave it."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2
from gateway.demo import Pair
from gateway.domain.errors import ResponseCode
from gateway.rpc import paging
from gateway.rpc.errors import read_error_detail
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
