"""PruneChanges on real gateways (gRPC on port 0; SQLite file and PostgreSQL): the change feed loses its oldest
changes, a watcher at the pruned position resumes as before, and one behind it is refused with CHANGES_PRUNED
instead of being led past what was removed."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
import pytest

from carbon_gateway.v1 import operator_pb2
from gateway.demo import Pair
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.usecases import feed
from gateway.usecases.base import Idempotency
from tests.integration.harness import operator, setup_accounts, transfer
from tests.integration.test_watch import last_position, refusal, replay, take, watch


def prune(key: str, through: int) -> operator_pb2.PruneChangesRequest:
    return operator_pb2.PruneChangesRequest(idempotency_key=key, through_position=through)


@pytest.mark.asyncio
async def test_pruning_removes_the_oldest_changes_and_a_watcher_at_the_cut_resumes(pair: Pair) -> None:
    block = await setup_accounts(pair)
    await transfer(pair, block, 1, 10, "p1")
    await transfer(pair, block, 11, 20, "p2")
    full = await replay(pair.chn)
    cut = full[len(full) // 2]
    async with operator(pair.chn) as stub:
        answer = await stub.PruneChanges(prune("prune-1", cut.position))
        assert (answer.pruned_through, answer.removed, answer.latest_position) == (
            cut.position,
            len(full) // 2 + 1,
            full[-1].position,
        )
        # The same call again gives the first answer; the same key for another position is refused.
        assert await stub.PruneChanges(prune("prune-1", cut.position)) == answer
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PruneChanges(prune("prune-1", cut.position + 1))
        assert refusal(caught.value)[1:] == (ResponseCode.IDEMPOTENCY_KEY_REUSED, "idempotency_key")
        # Pruning to the same or an earlier position removes nothing more.
        again = await stub.PruneChanges(prune("prune-2", cut.position - 1))
        assert (again.pruned_through, again.removed) == (cut.position, 0)
        # From the beginning, or from any position before the cut: refused, naming where to continue.
        for after in (0, 1, cut.position - 1):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await watch(stub, after).read()
            assert refusal(caught.value) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                ResponseCode.CHANGES_PRUNED,
                "after_position",
            )
            assert f"watch from position {cut.position}" in (caught.value.details() or "")
    # At the cut, with or without the digest received there: the rest, as before.
    rest = full[len(full) // 2 + 1 :]
    assert await replay(pair.chn, cut.position) == rest
    assert await replay(pair.chn, cut.position, cut.digest) == rest
    # Another change's digest at the cut is still told apart.
    async with operator(pair.chn) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await watch(stub, cut.position, digest=full[0].digest).read()
        assert refusal(caught.value)[1:] == (ResponseCode.INVALID_ARGUMENT, "after_digest")


@pytest.mark.asyncio
async def test_pruning_everything_keeps_the_positions_and_new_changes_come_after(pair: Pair) -> None:
    block = await setup_accounts(pair)
    await transfer(pair, block, 1, 10, "e1")
    last = await last_position(pair.chn)
    async with operator(pair.chn) as stub:
        answer = await stub.PruneChanges(prune("all", last))
        assert (answer.pruned_through, answer.latest_position) == (last, last)
        live = watch(stub, last)
        try:
            await transfer(pair, block, 11, 20, "e2")
            [first] = await take(live, 1)
        finally:
            live.cancel()
    assert first.position > last
    assert await last_position(pair.chn) > last


@pytest.mark.asyncio
async def test_hostile_prune_positions_are_refused_and_remove_nothing(pair: Pair) -> None:
    await transfer(pair, await setup_accounts(pair), 1, 10, "h")
    full = await replay(pair.chn)
    last = full[-1].position
    async with operator(pair.chn) as stub:
        for i, through in enumerate((0, -1, -(2**63), last + 1, 2**63 - 1)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.PruneChanges(prune(f"h-{i}", through))
            assert refusal(caught.value) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                ResponseCode.INVALID_ARGUMENT,
                "through_position",
            ), through
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PruneChanges(prune("", 1))
        assert refusal(caught.value)[1:] == (ResponseCode.INVALID_ARGUMENT, "idempotency_key")
    assert await replay(pair.chn) == full


@pytest.mark.asyncio
async def test_an_interrupted_prune_claims_its_key_and_finishes_when_repeated(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = await setup_accounts(pair)
    await transfer(pair, block, 1, 10, "i1")
    await transfer(pair, block, 11, 20, "i2")
    full = await replay(pair.chn)
    async with pair.chn.store.read() as tx:
        kind = type(tx)
    prune_chunk = kind.prune_changes
    chunks: list[int] = []

    async def stops_at_the_second_chunk(tx: Any, through: int, limit: int) -> Any:
        chunks.append(through)
        if len(chunks) == 2:
            raise RuntimeError("the gateway stopped here")
        return await prune_chunk(tx, through, limit)

    monkeypatch.setattr(feed, "PRUNE_CHUNK", 2)
    monkeypatch.setattr(kind, "prune_changes", stops_at_the_second_chunk)
    idem = Idempotency("anonymous", "PruneChanges", "cut", "hash-of-the-first")
    with pytest.raises(RuntimeError):
        await pair.chn.gateway.prune_changes(idem, full[-2].position)
    monkeypatch.setattr(kind, "prune_changes", prune_chunk)
    assert await replay(pair.chn, full[1].position) == full[2:]  # the first chunk went
    # The same key for another request is refused before it removes anything more.
    other = dataclasses.replace(idem, request_hash="hash-of-another")
    with pytest.raises(GatewayError) as caught:
        await pair.chn.gateway.prune_changes(other, full[-1].position)
    assert (caught.value.code, caught.value.field) == (ResponseCode.IDEMPOTENCY_KEY_REUSED, "idempotency_key")
    assert await replay(pair.chn, full[1].position) == full[2:]
    # The same call again finishes the first; once more, it gives the same answer.
    finished = await pair.chn.gateway.prune_changes(idem, full[-2].position)
    assert (finished.through, finished.removed) == (full[-2].position, len(full) - 3)
    assert await pair.chn.gateway.prune_changes(idem, full[-2].position) == finished
    assert await replay(pair.chn, full[-2].position) == full[-1:]
