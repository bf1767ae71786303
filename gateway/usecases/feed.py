"""Keeping the change feed (`gateway.usecases.watching`) from growing for ever: pruning it up to a position."""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.domain import text
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.usecases.base import GatewayBase, Idempotency

PRUNE_CHUNK = 10_000
"""Changes removed per write transaction: a long prune holds the store's write lock only briefly at a time."""


@dataclass(frozen=True, slots=True)
class Pruned:
    """What a prune left: the position of the last change removed so far, how many this call removed, and the
    latest position."""

    through: int
    removed: int
    latest: int

    def remembered(self) -> str:
        """The form kept under the call's idempotency key."""
        return f"{self.through}:{self.removed}:{self.latest}"

    @classmethod
    def from_remembered(cls, kept: str) -> Pruned:
        """The result `remembered` kept."""
        through, removed, latest = (int(part) for part in kept.split(":"))
        return cls(through, removed, latest)


class FeedKeeping(GatewayBase):
    """Pruning the change feed."""

    async def prune_changes(self, idem: Idempotency, through: int) -> Pruned:
        """Remove the changes at position ``through`` and below, `PRUNE_CHUNK` per transaction.

        A watcher behind the pruned position is refused with ``CHANGES_PRUNED`` from then on
        (`gateway.usecases.watching`). A call interrupted half-way has removed a prefix of what it was asked
        to; the same call again finishes it. A position beyond the latest change is refused: the positions
        after it are not handed out yet.
        """
        if not 1 <= through <= text.MAX_INT64:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"position {through} names no change: give the position of a change, 1 or more",
                field="through_position",
            )
        async with self.store.read() as tx:
            latest = await tx.last_change_position()
        if through > latest:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"position {through} is beyond the latest change ({latest}): only recorded changes are pruned",
                field="through_position",
            )
        # The key is claimed before anything is removed, under a method name of its own: a call with the same key
        # for another position is refused before it removes anything, even while this one is under way or after
        # it was interrupted, and the same call repeated finishes what an interrupted one began.
        claim = replace(idem, method=f"{idem.method}:started")
        async with self.store.transaction() as tx:
            previous = await self._replay(tx, idem)
            if previous is not None:
                return Pruned.from_remembered(previous)
            if await self._replay(tx, claim) is None:
                await self._remember(tx, claim, "")
        removed = 0
        while True:
            async with self.store.transaction() as tx:
                previous = await self._replay(tx, idem)
                if previous is not None:
                    return Pruned.from_remembered(previous)
                pruned, count = await tx.prune_changes(through, PRUNE_CHUNK)
                removed += count
                if count < PRUNE_CHUNK:
                    result = Pruned(pruned.through, removed, await tx.last_change_position())
                    await self._remember(tx, idem, result.remembered())
                    return result
