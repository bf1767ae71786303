"""The global invariants the simulation checks after every step, and once more when the world has settled.

- Every unit of every serial space is in exactly one place across all Parties (held or reserved by one
  gateway), or in exactly one transfer in flight (debited by its initiator, pending at its acquirer):
  nothing is lost, nothing exists twice, nothing appears that was not issued.
- A unit is first transferred at most once, across all Parties.
- Each authorization's used quantity equals the first transfers under it (recorded, or reserved in flight),
  never exceeds what it authorizes, and every first transfer happened while it was in force, for a vintage
  inside its timeframe.
- The two sides of a transfer never hold contradicting states; once the world settles they hold the same
  final state, nothing is left reserved, pending or owed, and every statement is delivered or dead-lettered.
- No proposal from the adversary is ever accepted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.nomenclature import fold
from gateway.domain.records import ActionType, Authorization, LedgerEntry
from gateway.domain.transfer import FINAL_STATES, Transfer, TransferRole, TransferState
from gateway.store.base import BlockStatus, OutboxState, StoredBlock
from tests.simulation.world import ADVERSARY, PARTIES, World

USES = (TransferState.CHECKED, TransferState.ACCEPTED)


class InvariantViolation(AssertionError):
    """A global invariant does not hold."""


Space = tuple[str, str, str]


def space_key(space: SerialSpace) -> Space:
    """A serial space in spelling-insensitive form: respelled codes must never make a second space."""
    return (fold(space.unit_kind), fold(space.issuing_registry), fold(space.issuance))


@dataclass
class Snapshot:
    """What one gateway has recorded, read in one transaction."""

    party: str
    blocks: list[StoredBlock]
    transfers: dict[str, Transfer]
    ledger: list[LedgerEntry]
    used: dict[str, int]
    authorizations: dict[str, Authorization]
    pending_outbox: int
    dead_letters: int


async def snapshot(world: World, party: str) -> Snapshot:
    node = world.nodes[party]
    assert node.core is not None
    async with node.core.store.read() as tx:
        blocks = await tx.list_blocks(statuses=tuple(BlockStatus))
        transfers = {t.transfer_id: t for t in await tx.list_transfers()}
        ledger = list(await tx.list_ledger())
        authorizations: dict[str, Authorization] = {}
        used: dict[str, int] = {}
        for auth_id in sorted({t.terms.authorization_id for t in transfers.values()} | world_auth_ids(world)):
            authorization = await tx.get_authorization(auth_id)
            if authorization is not None:
                authorizations[auth_id] = authorization
                used[auth_id] = await tx.first_transfer_quantity_used(auth_id)
        outbox = await tx.list_outbox()
    return Snapshot(
        party,
        blocks,
        transfers,
        ledger,
        used,
        authorizations,
        sum(1 for m in outbox if m.state is OutboxState.PENDING),
        sum(1 for m in outbox if m.state is OutboxState.DEAD),
    )


def world_auth_ids(world: World) -> set[str]:
    return {f"{p}-AUTH" for p in PARTIES} | {f"{p}-AUTH-LATER" for p in PARTIES}


def _sweep(intervals: dict[Space, list[tuple[int, int, int]]]) -> list[tuple[Space, int, int, int]]:
    """Segments where the weighted coverage is not zero: (space, start, end, value)."""
    wrong: list[tuple[Space, int, int, int]] = []
    for space, items in intervals.items():
        events: dict[int, int] = defaultdict(int)
        for start, end, weight in items:
            events[start] += weight
            events[end + 1] -= weight
        level = 0
        points = sorted(events)
        for point, following in zip(points, [*points[1:], None], strict=True):
            level += events[point]
            if level != 0 and following is not None:
                wrong.append((space, point, following - 1, level))
    return wrong


def _describe(wrong: list[tuple[Space, int, int, int]]) -> str:
    return "; ".join(f"{'/'.join(s)} [{a}, {b}] counted {v:+d}" for s, a, b, v in wrong[:5])


async def check(world: World, *, settled: bool = False) -> None:
    """Raise `InvariantViolation` if any global invariant fails now."""
    snaps = {party: await snapshot(world, party) for party in PARTIES}
    _conservation(world, snaps)
    _first_transfers(snaps)
    _authorizations(snaps)
    _states(snaps, settled)
    _adversary(snaps)
    _guard(snaps)
    if settled:
        _settled(snaps)


def _initiator_state(snaps: dict[str, Snapshot], transfer: Transfer) -> TransferState | None:
    initiator = snaps.get(transfer.terms.transferring_party)
    if initiator is None:
        return None
    found = initiator.transfers.get(transfer.transfer_id)
    return found.state if found is not None and found.role is TransferRole.INITIATING else None


def _conservation(world: World, snaps: dict[str, Snapshot]) -> None:
    coverage: dict[Space, list[tuple[int, int, int]]] = defaultdict(list)
    for start_space, ranges in world.issued.items():
        for start, end in ranges:
            coverage[start_space].append((start, end, -1))
    for snap in snaps.values():
        for stored in snap.blocks:
            block = stored.block
            counted = stored.status in (BlockStatus.HELD, BlockStatus.RESERVED)
            if stored.status is BlockStatus.PENDING:
                transfer = snap.transfers.get(stored.transfer_id)
                counted = transfer is not None and _initiator_state(snaps, transfer) is TransferState.COMPLETED
            if counted:
                coverage[space_key(block.space)].append((block.start, block.end, 1))
    wrong = _sweep(coverage)
    if wrong:
        raise InvariantViolation(
            "units are not in exactly one place (+1: counted twice or never issued; -1: lost): " + _describe(wrong)
        )


def _first_transfers(snaps: dict[str, Snapshot]) -> None:
    coverage: dict[Space, list[tuple[int, int, int]]] = defaultdict(list)
    for snap in snaps.values():
        for entry in snap.ledger:
            if entry.action_type is ActionType.FIRST_TRANSFER:
                block: UnitBlock = entry.block
                coverage[space_key(block.space)].append((block.start, block.end, 1))
    twice = [w for w in _sweep(coverage) if w[3] > 1]
    if twice:
        raise InvariantViolation("units were first transferred more than once: " + _describe(twice))


def _authorizations(snaps: dict[str, Snapshot]) -> None:
    for snap in snaps.values():
        recorded: dict[str, int] = defaultdict(int)
        for entry in snap.ledger:
            if entry.action_type is ActionType.FIRST_TRANSFER:
                recorded[entry.authorization_id] += entry.quantity
                authorization = snap.authorizations.get(entry.authorization_id)
                if authorization is None:
                    raise InvariantViolation(f"{snap.party}: a first transfer names an unknown authorization")
                day = entry.action_date.date()
                if day < authorization.date:
                    raise InvariantViolation(
                        f"{snap.party}: first transfer {entry.transfer_id} on {day} under"
                        f" {entry.authorization_id}, dated {authorization.date}"
                    )
                vintage = entry.block.vintage
                if not authorization.timeframe_start <= vintage <= authorization.timeframe_end:
                    raise InvariantViolation(f"{snap.party}: first transfer of vintage {vintage} outside the timeframe")
        for transfer in snap.transfers.values():
            if transfer.role is TransferRole.INITIATING and transfer.state in USES:
                recorded[transfer.terms.authorization_id] += sum(
                    b.quantity for b in transfer.terms.blocks if not b.first_transferred
                )
        for auth_id, used in snap.used.items():
            if used != recorded.get(auth_id, 0):
                raise InvariantViolation(
                    f"{snap.party}: authorization {auth_id} counts {used} used, but its first transfers (recorded"
                    f" or reserved) come to {recorded.get(auth_id, 0)}"
                )
            authorized = snap.authorizations[auth_id].authorized_quantity
            if used > authorized:
                raise InvariantViolation(f"{snap.party}: authorization {auth_id} used {used} of {authorized}")


CROSSING = {
    (TransferState.CANCELLED, TransferState.REJECTED),
    (TransferState.TERMINATED, TransferState.REJECTED),
}
"""Final states the two sides may hold while the initiating side's word is on its way (the acquiring side
then adopts it)."""


def _states(snaps: dict[str, Snapshot], settled: bool) -> None:
    for snap in snaps.values():
        for transfer in snap.transfers.values():
            if transfer.role is not TransferRole.ACQUIRING or transfer.partner not in snaps:
                continue
            initiating = _initiator_state(snaps, transfer)
            acquiring = transfer.state
            if initiating is None:
                raise InvariantViolation(f"{snap.party} knows transfer {transfer.transfer_id}, its initiator does not")
            if acquiring is TransferState.COMPLETED and initiating is not TransferState.COMPLETED:
                raise InvariantViolation(
                    f"transfer {transfer.transfer_id}: credited at {snap.party} but {initiating.name} at its initiator"
                )
            disagree = initiating in FINAL_STATES and acquiring in FINAL_STATES and initiating is not acquiring
            if disagree and (settled or (initiating, acquiring) not in CROSSING):
                raise InvariantViolation(
                    f"transfer {transfer.transfer_id}: {initiating.name} at {transfer.partner},"
                    f" {acquiring.name} at {snap.party}"
                )
            if settled and (initiating not in FINAL_STATES or acquiring not in FINAL_STATES):
                raise InvariantViolation(
                    f"transfer {transfer.transfer_id} did not end: {initiating.name} / {acquiring.name}"
                )


def _adversary(snaps: dict[str, Snapshot]) -> None:
    """The adversary sends only double counts: none may be accepted, held or credited. (As the initiating
    side of its own proposals it may still turn a rejection into a cancellation, which moves nothing.)"""
    refused = (TransferState.REJECTED, TransferState.CANCELLED, TransferState.TERMINATED)
    for snap in snaps.values():
        for transfer in snap.transfers.values():
            if transfer.partner == ADVERSARY and transfer.state not in refused:
                raise InvariantViolation(
                    f"{snap.party} holds the adversary's double count {transfer.transfer_id} as {transfer.state.name}"
                )


def _guard(snaps: dict[str, Snapshot]) -> None:
    guarded = (BlockStatus.HELD, BlockStatus.RESERVED, BlockStatus.PENDING, BlockStatus.DEBITED)
    for snap in snaps.values():
        coverage: dict[Space, list[tuple[int, int, int]]] = defaultdict(list)
        for stored in snap.blocks:
            if stored.status in guarded:
                coverage[space_key(stored.block.space)].append((stored.block.start, stored.block.end, 1))
        twice = [w for w in _sweep(coverage) if w[3] > 1]
        if twice:
            raise InvariantViolation(f"{snap.party}: two guarded blocks overlap: " + _describe(twice))


def _settled(snaps: dict[str, Snapshot]) -> None:
    for snap in snaps.values():
        left = [
            f"{s.block.describe()} {s.status.value}"
            for s in snap.blocks
            if s.status in (BlockStatus.RESERVED, BlockStatus.PENDING, BlockStatus.DEBITED)
        ]
        if left:
            raise InvariantViolation(f"{snap.party}: settled with blocks left in flight: {left[:5]}")
        if snap.pending_outbox:
            raise InvariantViolation(f"{snap.party}: {snap.pending_outbox} statements never left the outbox")
        open_transfers = [t.transfer_id for t in snap.transfers.values() if t.state not in FINAL_STATES]
        if open_transfers:
            raise InvariantViolation(f"{snap.party}: transfers still open: {open_transfers[:5]}")
