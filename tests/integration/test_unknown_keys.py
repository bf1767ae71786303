"""Statements signed by keys not trusted here make the gateway look for trust documents another replica stored,
but a flood of them buys one database read per period, not one per statement."""

from __future__ import annotations

import asyncio

import pytest

from gateway.demo import Pair


@pytest.mark.asyncio
async def test_a_flood_of_unknown_keys_reads_the_stored_trust_documents_once(pair: Pair) -> None:
    trust, exchange = pair.che.trust, pair.che.exchange
    await pair.che.core.stop_background()  # its periodic look at stored trust documents would count too
    reads: list[int] = []
    read = trust.take_up_stored

    async def counted() -> bool:
        reads.append(1)
        return await read()

    trust.take_up_stored = counted  # type: ignore[method-assign]
    refresh = exchange.on_unknown_key
    assert refresh is not None
    answers = await asyncio.gather(*(refresh() for _ in range(50)))
    assert len(reads) == 1 and answers == [False] * 50
