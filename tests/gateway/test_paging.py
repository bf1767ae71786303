"""`gateway.rpc.paging.fill` against a list in memory: every item once, in order, whatever the page size, the
chunk the store is read by and the byte budget; and a token gives back the position it was made from."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carbon_gateway.v1 import records_pb2
from gateway.rpc import paging


def _pages(items: list[str], size: int, chunk: int) -> list[list[records_pb2.ErrorDetail]]:
    async def read(after: paging.Position | None, limit: int) -> Sequence[tuple[int, str]]:
        start = 0 if after is None else int(after[0]) + 1
        return [(i, items[i]) for i in range(start, min(start + limit, len(items)))]

    async def follow() -> list[list[records_pb2.ErrorDetail]]:
        found: list[list[records_pb2.ErrorDetail]] = []
        token = ""
        while True:
            after = paging.decode_token(token, (int,))
            page, token = await paging.fill(
                read,
                after,
                size,
                lambda item: records_pb2.ErrorDetail(message=item[1]),
                lambda item: (item[0],),
                chunk=chunk,
            )
            found.append(page)
            if not token:
                return found

    return asyncio.run(follow())


@given(
    items=st.lists(st.text(max_size=40), max_size=60),
    size=st.integers(1, 20),
    chunk=st.integers(1, 25),
    budget=st.integers(1, 400),
)
def test_the_pages_give_every_item_once_in_order(items: list[str], size: int, chunk: int, budget: int) -> None:
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(paging, "MAX_PAGE_BYTES", budget)
        pages = _pages(items, size, chunk)
    assert [m.message for page in pages for m in page] == items
    assert all(0 < len(page) <= size for page in pages) or items == []
    # A page passes the budget only when its one item does.
    assert all(len(page) == 1 or sum(m.ByteSize() + 8 for m in page) <= budget for page in pages)


@given(st.lists(st.one_of(st.integers(0, 2**63 - 1), st.text(max_size=30)), min_size=1, max_size=5))
def test_a_token_gives_back_its_position(position: list[int | str]) -> None:
    shape = [type(value) for value in position]
    assert paging.decode_token(paging.encode_token(tuple(position)), shape) == tuple(position)
