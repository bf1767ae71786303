"""The invariants the simulation checks after every step, and once more when the world has settled.

The terms, read from each gateway's store (blocks, transfers, ledger) in one read transaction. A *root* block is
one with no parent: the block `RegisterIssuance` inserted, or a block an incoming Proposal inserted as pending.
Every other block descends from a root by a split, a merge, a release or a retirement. Units are compared
serial by serial in each spelling-insensitive serial space (a weighted sweep), so each equation below holds for
every single unit, and therefore for the quantities too.

- **issued** at a gateway: its root blocks with no transfer ID (registered ranges, whatever became of them).
  Across all gateways they are exactly the ranges the simulation's registries of record issued.
- **acquired**: its root blocks whose transfer ID names an incoming (acquiring) transfer that is COMPLETED
  there, i.e. credited. Pending (not yet credited) and dropped (never credited) blocks are in no term.
- **held**, **reserved**, **used**, **cancelled**: its blocks in status held, reserved, used, cancelled.
- **transferred out**: its blocks in status debited or transferred (left by a completed outgoing transfer).

Invariants:

1. Unit conservation, per gateway and serial space: issued + acquired == held + reserved + used + cancelled +
   transferred out. Each term's blocks are where their transfer says: a reserved block belongs to an outgoing
   transfer CHECKED or ACCEPTED, a debited or transferred one to an outgoing transfer COMPLETED, a pending one
   to an incoming transfer CHECKED or ACCEPTED, a dropped one to an incoming transfer that ended otherwise.
2. Every unit ever issued is in exactly one place across all Parties: held, reserved, used or cancelled at one
   gateway, or pending at an acquiring gateway whose initiator has COMPLETED (debited) the transfer. Nothing is
   lost, nothing exists twice, nothing appears that was not issued; a used or cancelled unit is nowhere else.
3. Within one gateway no two guarded blocks (held, reserved, pending, debited, used, cancelled) overlap.
4. The ledger matches the blocks, at each gateway:
   - every entry's stored quantity (and vintage) is its block's (end - start + 1), and its block is one the AEF
     report can name: serials that do not restart per issuance (ITMO serials) and an AEF mitigation type;
   - each used block has exactly one ``Use`` entry, each cancelled block exactly one ``Cancellation`` or
     ``Voluntary Cancellation`` entry, of the same action, serial space and range (so the same quantity), and
     no such entry lacks its block; used blocks sit in a use account, cancelled ones in a cancellation or
     retirement account;
   - per action type, serial by serial and in the store's own sums (`ledger_totals`, the summary's source):
     ``Use`` == used, ``Cancellation`` + ``Voluntary Cancellation`` == cancelled, ``Acquisition`` == acquired,
     ``First transfer`` to another Party + ``Transfer`` == transferred out, ``Authorization`` == the issued
     ranges registered under an authorization; the ledger summary's groups add up to the same;
   - every other ``First transfer`` (at the issuance, or at a use or cancellation) accompanies the
     ``Authorization``, ``Transfer``, use or cancellation entry of the same action and range (its subtype is
     invariant 11's).
5. A unit is first transferred (a ``First transfer`` entry) at most once, across all Parties.
6. Each authorization's used quantity at a gateway (`first_transfer_quantity_used`) equals the units that gateway
   tied to it: the distinct serials of its ledger entries naming the authorization with itself as first
   transferring Party (tied at registration, by a transfer, or by a use or cancellation), plus the untied units
   of its outgoing transfers in flight under it; and every entry naming an authorization is dated on or after
   its first version, for a vintage inside the timeframe of one of its versions.
7. The two sides of a transfer never hold contradicting states; once the world settles they hold the same
   final state, nothing is left reserved, pending or owed, and every statement is delivered or dead-lettered.
8. No proposal from the adversary is ever accepted.
9. Reconciliation (`_reconciliations`). Every run a gateway holds as requester is one the simulation started;
   while it waits it is RUNNING, and it may end ABANDONED (a later run took its place). Once it has a result it
   must be exactly what the world's corruptions (`tests.simulation.actions.corrupt`) explain: with no
   corruption outstanding between the two Parties it is CONSISTENT (transfers completed on one side and still
   open on the other are listed in flight, never as differences); otherwise BLOCKS_INCONSISTENT, reporting
   each corruption injected before the run started and not repaired, with its kind, transfer and block, and
   nothing else (a corruption injected or repaired while the run went on may be reported or not), and the
   requester has frozen every block it reports. Its report is signed by the requester and says what the run
   says. TOTALS_INCONSISTENT and MANUAL_INTERVENTION_REQUIRED never happen between honest gateways. The
   responder's copy of a run has the requester's result once the report arrives, or is resolved.

10. Each gateway keeps exactly the versions of each authorization its operator recorded (`World.versions`:
    the first one, and the amendments and revocations of `tests.simulation.actions.amend`), in that order.
11. What acts under an authorization, the version that governs it allowed (`_governed`). The governing version
    is the one in force when the action was decided, among the versions recorded by then: for an outgoing
    transfer and the entries it records, when it was proposed (`Initiating._complete`: "the version in force
    when the transfer was proposed decides, as it did for the Proposal's blocks"), for any other entry, when it
    was recorded. So an amendment or revocation recorded while a transfer waits changes nothing for it. Every
    outgoing transfer was proposed under a version in force (not revoked, not expired), for vintages in its
    timeframe and a purpose it names; every tie at registration and every ``First transfer`` was made under a
    version in force (none under a revoked authorization but for transfers proposed before the revocation),
    for a vintage in its timeframe; a ``First transfer``'s subtype is that version's definition, and it is
    booked under one of its purposes, an NDC one exactly when the version authorizes NDC use. In the order
    units were tied (a transfer's as it was proposed), the distinct units tied to an authorization never exceed
    the authorized quantity of the version that governed the latest tie: an amendment that lowers it stops
    further ties and takes back none (`_authorized_quantity`).
12. A completed transfer's initiator books each block as its Proposal delivered it to the acquiring side:
    ``First transfer`` (or ``Transfer``, first transferred before) for a block taken in as first transferred,
    ``Transfer`` ``Not yet defined`` for one taken in as not yet first transferred, under the same tie
    (`_delivered_as_booked`).
13. Frozen units never leave (`_frozen_stay`): no block is debited, used or cancelled at a gateway while a
    reconciliation run there keeps its serials frozen. A run's frozen ranges seen at one check and still there at
    the next were frozen throughout the step between (a run freezes once and is unfrozen only when resolved), so
    a block that left in that step (a transfer that waited while its units were frozen and then completed, or a
    use or cancellation) broke the freeze. Such a transfer must be cancelled when the partner accepts it.

A corrupted gateway's ledger no longer matches its blocks, by design: from its first corruption on, invariants
4, 5, 6, 11 and 12 (the ledger's) leave that gateway out, even after the repair (the gateway may have made decisions
from its corrupted history, e.g. the provenance of units coming back). Every invariant on blocks and transfers
(1-3, 7, 8) still holds for it: a ledger entry moves no unit.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from carbon_gateway.v1 import partner_pb2
from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.canonical import ActionSubtype, MitigationType
from gateway.domain.ledger import LockedPeriod
from gateway.domain.nomenclature import fold
from gateway.domain.ranges import covers
from gateway.domain.reconciliation import DifferenceKind, Status, reconciled_block
from gateway.domain.records import (
    Account,
    AccountType,
    ActionType,
    Authorization,
    FirstTransferDefinition,
    LedgerEntry,
    Purpose,
)
from gateway.domain.summary import LedgerTotal, SummaryGroup
from gateway.domain.transfer import FINAL_STATES, Transfer, TransferRole, TransferState
from gateway.reconciliation_wire import block_from_proto
from gateway.store import codec
from gateway.store.base import BlockStatus, OutboxState, ReconciliationRun, RunRole, StoredBlock
from gateway.store.sqlite import SQLiteTransaction
from gateway.usecases.reconciling import REPORT_PAYLOAD_TYPE
from signing import Envelope, verify_envelope
from signing.errors import SigningError
from tests.simulation.world import ADVERSARY, AUTHORIZATIONS, PARTIES, Corruption, Identity, World

USES = (TransferState.CHECKED, TransferState.ACCEPTED)
"""The states of an outgoing transfer in flight: its blocks are reserved."""
GUARDED = (
    BlockStatus.HELD,
    BlockStatus.RESERVED,
    BlockStatus.PENDING,
    BlockStatus.DEBITED,
    BlockStatus.USED,
    BlockStatus.CANCELLED,
)
"""The blocks that never overlap within one gateway, spelled out here rather than taken from the gateway."""
MITIGATION_TYPES = frozenset(m.value for m in MitigationType)
"""The mitigation types an AEF row takes."""
RETIRED: dict[BlockStatus, tuple[frozenset[ActionType], frozenset[AccountType]]] = {
    BlockStatus.USED: (frozenset({ActionType.USE}), frozenset({AccountType.USE})),
    BlockStatus.CANCELLED: (
        frozenset({ActionType.CANCELLATION, ActionType.VOLUNTARY_CANCELLATION}),
        frozenset({AccountType.CANCELLATION, AccountType.RETIREMENT}),
    ),
}
"""Per retired status, the entry types that record it and the account types it lies in."""
FIRST_TRANSFER_SUBTYPES = {
    FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER: ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY.value,
    FirstTransferDefinition.AUTHORISATION: ActionSubtype.AUTHORIZATION.value,
    FirstTransferDefinition.ISSUANCE: ActionSubtype.ISSUANCE.value,
    FirstTransferDefinition.USE_OR_CANCELLATION: ActionSubtype.USE_OR_CANCELLATION.value,
}
MOVEMENT = ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY.value
CANCELLATIONS = (ActionType.CANCELLATION, ActionType.VOLUNTARY_CANCELLATION)


def _departs(kind: ActionType, subtype: str) -> bool:
    """Whether an entry of this type and subtype records units leaving for another Party."""
    return kind is ActionType.TRANSFER or (kind is ActionType.FIRST_TRANSFER and subtype == MOVEMENT)


class InvariantViolation(AssertionError):
    """A global invariant does not hold."""


Space = tuple[str, str, str]
Frozen = tuple[str, Space, int, int]
"""A frozen range: the run that froze it, its serial space (`space_key`), its first and last serial."""
Ranges = dict[Space, list[tuple[int, int]]]


def space_key(space: SerialSpace) -> Space:
    """A serial space in spelling-insensitive form: respelled codes must never make a second space."""
    return (fold(space.unit_kind), fold(space.issuing_registry), fold(space.issuance))


@dataclass
class Snapshot:
    """What one gateway has recorded, read in one transaction (the summary just after, nothing in between)."""

    party: str
    blocks: list[StoredBlock]
    transfers: dict[str, Transfer]
    ledger: list[LedgerEntry]
    stored: dict[int, tuple[int, int]]
    """Per ledger entry, the quantity and vintage columns as the store keeps them (what its sums add up)."""
    totals: list[LedgerTotal]
    summary: tuple[SummaryGroup, ...]
    accounts: dict[str, Account]
    used: dict[str, int]
    authorizations: dict[str, Authorization]
    """Per authorization, its latest version."""
    versions: dict[str, list[Authorization]]
    """Per authorization, every version in the order recorded."""
    pending_outbox: int
    dead_letters: int
    locks: list[LockedPeriod]
    frozen: frozenset[Frozen]
    """The ranges reconciliation runs keep frozen here, with the run that froze each."""


async def snapshot(world: World, party: str) -> Snapshot:
    node = world.nodes[party]
    assert node.core is not None
    async with node.core.store.read() as tx:
        blocks = await tx.list_blocks(statuses=tuple(BlockStatus))
        transfers = {t.transfer_id: t for t in await tx.list_transfers()}
        ledger = list(await tx.list_ledger())
        assert isinstance(tx, SQLiteTransaction)
        stored = {
            int(r[0]): (int(r[1]), int(r[2]))
            for r in tx._db.execute("SELECT entry_id, quantity, vintage FROM ledger").fetchall()
        }
        totals = await tx.ledger_totals()
        accounts: dict[str, Account] = {}
        for account_id in sorted({b.account_id for b in blocks}):
            account = await tx.get_account(account_id)
            if account is not None:
                accounts[account_id] = account
        authorizations: dict[str, Authorization] = {}
        versions: dict[str, list[Authorization]] = defaultdict(list)
        # What `list_authorization_versions` reads, decoded once per distinct version: it is read at every step.
        for (body,) in tx._db.execute("SELECT body FROM authorization_versions ORDER BY seq").fetchall():
            version = _decoded_version(body)
            versions[version.authorization_id].append(version)
        used: dict[str, int] = {}
        named = {t.terms.authorization_id for t in transfers.values()} | {e.authorization_id for e in ledger}
        for auth_id in sorted((named | world_auth_ids(world)) - {""}):
            authorization = await tx.get_authorization(auth_id)
            if authorization is not None:
                authorizations[auth_id] = authorization
                used[auth_id] = await tx.first_transfer_quantity_used(auth_id)
        outbox = await tx.list_outbox()
        locks = list(await tx.locked_periods())
        frozen = frozenset(
            (str(r[0]), space_key(SerialSpace(r[1], r[2], r[3])), int(r[4]), int(r[5]))
            for r in tx._db.execute(
                "SELECT run_id, unit_kind, issuing_registry, issuance, serial_start, serial_end FROM frozen_ranges"
            ).fetchall()
        )
    summary = (await node.core.gateway.ledger_summary()).groups
    return Snapshot(
        party,
        blocks,
        transfers,
        ledger,
        stored,
        totals,
        summary,
        accounts,
        used,
        authorizations,
        versions,
        sum(1 for m in outbox if m.state is OutboxState.PENDING),
        sum(1 for m in outbox if m.state is OutboxState.DEAD),
        locks,
        frozen,
    )


@functools.lru_cache(maxsize=4096)
def _decoded_version(body: str) -> Authorization:
    return codec.authorization_from_json(body)


def world_auth_ids(world: World) -> set[str]:
    return {f"{p}-{suffix}" for p in PARTIES for suffix in AUTHORIZATIONS}


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


def _balance(plus: Iterable[Ranges], minus: Iterable[Ranges]) -> list[tuple[Space, int, int, int]]:
    """Serial by serial, the units of ``plus`` less those of ``minus``, where it is not zero."""
    coverage: dict[Space, list[tuple[int, int, int]]] = defaultdict(list)
    for weight, sides in ((1, plus), (-1, minus)):
        for ranges in sides:
            for space, items in ranges.items():
                coverage[space].extend((start, end, weight) for start, end in items)
    return _sweep(coverage)


def _union_size(items: Iterable[tuple[int, int]]) -> int:
    """How many distinct serials the ranges cover."""
    total, reach = 0, None
    for start, end in sorted(items):
        if reach is None or start > reach:
            total += end - start + 1
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def _quantity(ranges: Ranges) -> int:
    return sum(end - start + 1 for items in ranges.values() for start, end in items)


def _add(ranges: Ranges, block: UnitBlock) -> None:
    ranges[space_key(block.space)].append((block.start, block.end))


async def check(world: World, *, settled: bool = False) -> None:
    """Raise `InvariantViolation` if any invariant fails now."""
    snaps = {party: await snapshot(world, party) for party in PARTIES}
    terms = {party: _terms(snap) for party, snap in snaps.items()}
    _issued(world, terms)
    _unit_conservation(snaps, terms)
    _conservation(world, snaps)
    _guard(snaps)
    # The simulation's deliberate ledger corruptions break the ledger's invariants at the corrupted gateway
    # only: those leave it out (see the module's docstring); the block and transfer invariants keep it in.
    honest = {party: snap for party, snap in snaps.items() if party not in world.corrupted_parties()}
    _ledger(honest, terms)
    _first_transfers(honest)
    for snap in honest.values():
        _locked(snap)
    _authorizations(honest)
    _versions(world, snaps)
    _governed(world, honest)
    _authorized_quantity(world, honest)
    _delivered_as_booked(snaps, honest)
    _frozen_stay(world, snaps)
    _states(snaps, settled)
    _adversary(snaps)
    await _reconciliations(world, snaps)
    if settled:
        _settled(snaps)


@dataclass
class Terms:
    """One gateway's units, per term of the conservation equation (see the module's docstring)."""

    issued: Ranges
    issued_tied: Ranges
    """The issued ranges registered under an authorization (tied at registration)."""
    acquired: Ranges
    held: Ranges
    reserved: Ranges
    used: Ranges
    cancelled: Ranges
    transferred_out: Ranges


def _ranges() -> Ranges:
    return defaultdict(list)


def _terms(snap: Snapshot) -> Terms:
    """Sort one gateway's blocks into the terms, checking that each block is where its transfer says."""
    terms = Terms(*(_ranges() for _ in range(8)))
    by_status = {
        BlockStatus.HELD: terms.held,
        BlockStatus.RESERVED: terms.reserved,
        BlockStatus.USED: terms.used,
        BlockStatus.CANCELLED: terms.cancelled,
        BlockStatus.DEBITED: terms.transferred_out,
        BlockStatus.TRANSFERRED: terms.transferred_out,
    }
    outgoing = {
        BlockStatus.RESERVED: set(USES),
        BlockStatus.DEBITED: {TransferState.COMPLETED},
        BlockStatus.TRANSFERRED: {TransferState.COMPLETED},
    }
    incoming = {
        BlockStatus.PENDING: set(USES),
        BlockStatus.DROPPED: {TransferState.REJECTED, TransferState.CANCELLED, TransferState.TERMINATED},
    }
    for stored in snap.blocks:
        block = stored.block
        transfer = snap.transfers.get(stored.transfer_id)
        where = f"{snap.party}: {block.describe()} ({stored.status.value}, block {stored.block_id})"
        if stored.parent_id is None:
            if not stored.transfer_id:
                _add(terms.issued, block)
                if block.tied:
                    _add(terms.issued_tied, block)
            elif transfer is None or transfer.role is not TransferRole.ACQUIRING:
                raise InvariantViolation(f"{where}: a root block that neither a registration nor a Proposal made")
            elif transfer.state is TransferState.COMPLETED:
                _add(terms.acquired, block)
        if stored.status in by_status:
            _add(by_status[stored.status], block)
        for side, role in ((outgoing, TransferRole.INITIATING), (incoming, TransferRole.ACQUIRING)):
            states = side.get(stored.status)
            if states is None:
                continue
            if transfer is None or transfer.role is not role or transfer.state not in states:
                state = "no transfer" if transfer is None else f"{transfer.role.value} {transfer.state.name}"
                raise InvariantViolation(f"{where}: its transfer {stored.transfer_id} is {state}")
        if stored.status in RETIRED and (transfer is not None or not stored.transfer_id):
            raise InvariantViolation(f"{where}: retired by no use or cancellation action")
    return terms


def _issued(world: World, terms: dict[str, Terms]) -> None:
    """The ranges registered at the gateways are exactly those the registries of record issued."""
    oracle: Ranges = _ranges()
    for space, items in world.issued.items():
        oracle[space].extend(items)
    wrong = _balance([t.issued for t in terms.values()], [oracle])
    if wrong:
        raise InvariantViolation(
            "the gateways' registered ranges are not what was issued (+1: registered twice or never issued;"
            " -1: issued but not registered): " + _describe(wrong)
        )


def _unit_conservation(snaps: dict[str, Snapshot], terms: dict[str, Terms]) -> None:
    """Per gateway and serial space: issued + acquired == held + reserved + used + cancelled + transferred out."""
    for party, t in terms.items():
        wrong = _balance([t.issued, t.acquired], [t.held, t.reserved, t.used, t.cancelled, t.transferred_out])
        if wrong:
            raise InvariantViolation(
                f"{party}: issued + acquired != held + reserved + used + cancelled + transferred out (+1: a unit"
                " that came in is nowhere; -1: a unit is somewhere twice, or never came in): " + _describe(wrong)
            )


def _initiator_state(snaps: dict[str, Snapshot], transfer: Transfer) -> TransferState | None:
    initiator = snaps.get(transfer.terms.transferring_party)
    if initiator is None:
        return None
    found = initiator.transfers.get(transfer.transfer_id)
    return found.state if found is not None and found.role is TransferRole.INITIATING else None


def _conservation(world: World, snaps: dict[str, Snapshot]) -> None:
    """Every issued unit is in exactly one place across all Parties: held, reserved, used or cancelled, or
    pending at an acquiring gateway whose initiator has completed (debited) the transfer."""
    coverage: dict[Space, list[tuple[int, int, int]]] = defaultdict(list)
    for start_space, ranges in world.issued.items():
        for start, end in ranges:
            coverage[start_space].append((start, end, -1))
    placed = (BlockStatus.HELD, BlockStatus.RESERVED, BlockStatus.USED, BlockStatus.CANCELLED)
    for snap in snaps.values():
        for stored in snap.blocks:
            block = stored.block
            counted = stored.status in placed
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


def _guard(snaps: dict[str, Snapshot]) -> None:
    for snap in snaps.values():
        coverage: dict[Space, list[tuple[int, int, int]]] = defaultdict(list)
        for stored in snap.blocks:
            if stored.status in GUARDED:
                coverage[space_key(stored.block.space)].append((stored.block.start, stored.block.end, 1))
        twice = [w for w in _sweep(coverage) if w[3] > 1]
        if twice:
            raise InvariantViolation(f"{snap.party}: two guarded blocks overlap: " + _describe(twice))


def _entries(snap: Snapshot, wanted: Iterable[ActionType], subtype: str | None = None) -> Ranges:
    types = set(wanted)
    ranges = _ranges()
    for entry in snap.ledger:
        if entry.action_type in types and (subtype is None or entry.action_subtype == subtype):
            _add(ranges, entry.block)
    return ranges


def _ledger(snaps: dict[str, Snapshot], terms: dict[str, Terms]) -> None:
    for party, snap in snaps.items():
        t = terms[party]
        for entry in snap.ledger:
            quantity, vintage = snap.stored.get(entry.entry_id, (0, 0))
            if quantity != entry.block.quantity or quantity <= 0 or vintage != entry.block.vintage:
                raise InvariantViolation(
                    f"{party}: {entry.action_type.value} entry {entry.entry_id} of {entry.block.describe()} stores"
                    f" quantity {quantity} and vintage {vintage}"
                )
            if entry.block.space.issuance or entry.block.mitigation_type not in MITIGATION_TYPES:
                raise InvariantViolation(
                    f"{party}: {entry.action_type.value} entry {entry.entry_id} of {entry.block.describe()} (mitigation"
                    f" type {entry.block.mitigation_type!r}) is a row the AEF report refuses, for good"
                )
        _retirement_entries(snap)
        # Per action type, serial by serial, then in the store's own sums and in the summary's.
        movements = _entries(snap, [ActionType.FIRST_TRANSFER], MOVEMENT)
        for space, items in _entries(snap, [ActionType.TRANSFER]).items():
            movements[space].extend(items)
        pairs: list[tuple[str, Callable[[ActionType, str], bool], Ranges, Ranges]] = [
            ("Use", lambda kind, _: kind is ActionType.USE, _entries(snap, [ActionType.USE]), t.used),
            (
                "Cancellation and Voluntary Cancellation",
                lambda kind, _: kind in CANCELLATIONS,
                _entries(snap, CANCELLATIONS),
                t.cancelled,
            ),
            (
                "Acquisition",
                lambda kind, _: kind is ActionType.ACQUISITION,
                _entries(snap, [ActionType.ACQUISITION]),
                t.acquired,
            ),
            (
                "First transfer to another Party and Transfer",
                lambda kind, sub: (
                    kind is ActionType.TRANSFER or (kind is ActionType.FIRST_TRANSFER and sub == MOVEMENT)
                ),
                movements,
                t.transferred_out,
            ),
            (
                "Authorization",
                lambda kind, _: kind is ActionType.AUTHORIZATION,
                _entries(snap, [ActionType.AUTHORIZATION]),
                t.issued_tied,
            ),
        ]
        for name, counts, entries, blocks in pairs:
            wrong = _balance([entries], [blocks])
            if wrong:
                raise InvariantViolation(f"{party}: the {name} entries are not their blocks: " + _describe(wrong))
            summed = sum(total.quantity for total in snap.totals if counts(total.action_type, total.action_subtype))
            if summed != _quantity(blocks):
                raise InvariantViolation(
                    f"{party}: the ledger sums {name} to {summed}, its blocks to {_quantity(blocks)}"
                )
        _summary(snap, t)
        _first_transfer_entries(snap)


def _retirement_entries(snap: Snapshot) -> None:
    """Each used or cancelled block has exactly one entry of its kind, of its action, space and range; no such
    entry lacks its block; and the block lies in an account of the right type."""
    retiring = frozenset().union(*(types for types, _ in RETIRED.values()))
    index: dict[tuple[str, Space, int, int], list[LedgerEntry]] = defaultdict(list)
    for entry in snap.ledger:
        if entry.action_type in retiring:
            block = entry.block
            index[(entry.transfer_id, space_key(block.space), block.start, block.end)].append(entry)
    matched: set[tuple[str, Space, int, int]] = set()
    for stored in snap.blocks:
        if stored.status not in RETIRED:
            continue
        types, accounts = RETIRED[stored.status]
        block = stored.block
        key = (stored.transfer_id, space_key(block.space), block.start, block.end)
        found = index.get(key, [])
        where = f"{snap.party}: {stored.status.value} {block.describe()} (action {stored.transfer_id})"
        if len(found) != 1 or found[0].action_type not in types:
            kinds = [e.action_type.value for e in found]
            wanted = " or ".join(sorted(t.value for t in types))
            raise InvariantViolation(f"{where} has {kinds or 'no'} entries, not exactly one {wanted}")
        if found[0].quantity != block.quantity or found[0].using_party != snap.party:
            raise InvariantViolation(f"{where}: its entry says {found[0].quantity} by {found[0].using_party!r}")
        account = snap.accounts.get(stored.account_id)
        if account is None or account.account_type not in accounts:
            kind = "no" if account is None else account.account_type.value
            raise InvariantViolation(f"{where} lies in {stored.account_id!r}, {kind} account")
        matched.add(key)
    extra = sorted(set(index) - matched)
    if extra:
        action, space, start, end = extra[0]
        raise InvariantViolation(
            f"{snap.party}: {index[extra[0]][0].action_type.value} entry of {'/'.join(space)} [{start}, {end}]"
            f" (action {action}) has no used or cancelled block ({len(extra)} such entries)"
        )


def _summary(snap: Snapshot, t: Terms) -> None:
    """The ledger summary's groups add up to the blocks."""
    groups = snap.summary
    sums = {
        "used": (sum(g.used for g in groups), _quantity(t.used)),
        "cancelled": (sum(g.cancelled for g in groups), _quantity(t.cancelled)),
        "acquired": (sum(g.acquired for g in groups), _quantity(t.acquired)),
        "authorized": (sum(g.authorized for g in groups), _quantity(t.issued_tied)),
    }
    for name, (summary, blocks) in sums.items():
        if summary != blocks:
            raise InvariantViolation(f"{snap.party}: the ledger summary counts {summary} {name}, the blocks {blocks}")


def _first_transfer_entries(snap: Snapshot) -> None:
    """A first transfer that is not itself the departure accompanies the registration, transfer, use or
    cancellation entry of its action and range (that its subtype is the definition of the version that governed
    it is `_governed`'s)."""
    by_action: dict[tuple[str, Space, int, int], list[ActionType]] = defaultdict(list)
    for entry in snap.ledger:
        block = entry.block
        by_action[(entry.transfer_id, space_key(block.space), block.start, block.end)].append(entry.action_type)
    companions = {
        ActionType.AUTHORIZATION,
        ActionType.TRANSFER,
        ActionType.USE,
        ActionType.CANCELLATION,
        ActionType.VOLUNTARY_CANCELLATION,
    }
    for entry in snap.ledger:
        if entry.action_type is not ActionType.FIRST_TRANSFER:
            continue
        where = f"{snap.party}: first transfer of {entry.block.describe()} (action {entry.transfer_id})"
        if entry.authorization_id not in snap.authorizations:
            raise InvariantViolation(f"{where} names unknown authorization {entry.authorization_id!r}")
        if entry.action_subtype == MOVEMENT:
            continue
        block = entry.block
        others = by_action[(entry.transfer_id, space_key(block.space), block.start, block.end)]
        if sum(1 for kind in others if kind in companions) != 1:
            raise InvariantViolation(f"{where} ({entry.action_subtype}) accompanies {[k.value for k in others]}")


def _locked(snap: Snapshot) -> None:
    """No first transfer of a vintage is recorded after an operator locked that year (a transfer waiting when the
    lock came is cancelled instead)."""
    for entry in snap.ledger:
        if entry.action_type is not ActionType.FIRST_TRANSFER:
            continue
        for lock in snap.locks:
            if lock.covers(entry.block.vintage) and entry.action_date > lock.locked_at:
                raise InvariantViolation(
                    f"{snap.party}: first transfer of {entry.block.describe()} (action {entry.transfer_id}) recorded"
                    f" at {entry.action_date.isoformat()}, after {lock.first_year}-{lock.last_year} was locked at"
                    f" {lock.locked_at.isoformat()}"
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
    """Each authorization counts as used exactly the units this gateway tied to it (within the quantity of the
    version that governed each tie: `_authorized_quantity`)."""
    for snap in snaps.values():
        tied: dict[str, dict[Space, list[tuple[int, int]]]] = defaultdict(_ranges)
        for entry in snap.ledger:
            if not entry.authorization_id:
                continue
            versions = snap.versions.get(entry.authorization_id)
            where = f"{snap.party}: {entry.action_type.value} {entry.transfer_id} of {entry.block.describe()}"
            if not versions:
                raise InvariantViolation(f"{where} names an unknown authorization {entry.authorization_id!r}")
            # What the version that decided an action allowed is `_governed`'s: here, what every version allows.
            day = entry.action_date.date()
            if day < versions[0].date:
                raise InvariantViolation(f"{where} on {day}, under {entry.authorization_id} dated {versions[0].date}")
            vintage = entry.block.vintage
            if not any(v.timeframe_start <= vintage <= v.timeframe_end for v in versions):
                raise InvariantViolation(f"{where}: vintage {vintage} outside the timeframe of every version")
            if entry.first_transferring_party == snap.party:
                _add(tied[entry.authorization_id], entry.block)
        in_flight: dict[str, int] = defaultdict(int)
        for transfer in snap.transfers.values():
            if transfer.role is TransferRole.INITIATING and transfer.state in USES:
                in_flight[transfer.terms.authorization_id] += sum(
                    b.quantity for b in transfer.terms.blocks if not b.tied and not b.first_transferred
                )
        for auth_id, used in snap.used.items():
            recorded = sum(_union_size(items) for items in tied[auth_id].values())
            if used != recorded + in_flight[auth_id]:
                raise InvariantViolation(
                    f"{snap.party}: authorization {auth_id} counts {used} used, but the units tied to it here come to"
                    f" {recorded} recorded + {in_flight[auth_id]} in transfers in flight"
                )


NDC_PURPOSES = frozenset({Purpose.NDC, Purpose.NDC_AND_OIMP, Purpose.NDC_AND_IMP, Purpose.NDC_AND_OP})
"""The purposes that authorize NDC use, spelled out here rather than taken from the gateway."""
NOT_YET_DEFINED = ActionSubtype.NOT_YET_DEFINED.value
TIES = (ActionType.AUTHORIZATION, ActionType.FIRST_TRANSFER)
"""The entries that act under an authorization whatever the units did before: a tie at registration, and a first
transfer (other entries may name an authorization its units were tied to long ago)."""


def _versions(world: World, snaps: dict[str, Snapshot]) -> None:
    """Each gateway keeps exactly the versions of each authorization its operator recorded, in that order."""
    for snap in snaps.values():
        for auth_id in sorted(snap.versions.keys() | {a for p, a in world.versions if p == snap.party}):
            stored = snap.versions.get(auth_id, [])
            recorded = [v.authorization for v in world.versions.get((snap.party, auth_id), [])]
            if stored != recorded:
                raise InvariantViolation(
                    f"{snap.party}: authorization {auth_id} keeps versions {[v.version for v in stored]}, its operator"
                    f" recorded {[v.version for v in recorded]} (or they differ)"
                )


def _governing(world: World, snap: Snapshot, entry: LedgerEntry) -> tuple[Authorization | None, dt.datetime]:
    """The version that governs ``entry`` at ``snap``'s gateway, and when it was chosen: for an entry of an
    outgoing transfer, the version in force when the transfer was proposed (`Initiating._complete`: "the version in
    force when the transfer was proposed decides, as it did for the Proposal's blocks"); for any other entry, the
    version in force when it was recorded. Either among the versions recorded by then."""
    transfer = snap.transfers.get(entry.transfer_id)
    when = entry.action_date
    if transfer is not None and transfer.role is TransferRole.INITIATING:
        when = transfer.created_at
    return world.version_on(snap.party, entry.authorization_id, when.date(), when), when


def _not_in_force(version: Authorization | None, day: dt.date, vintages: Iterable[int]) -> str:
    """Why ``version`` allows no action on ``day`` for units of ``vintages`` (empty when it allows one)."""
    if version is None:
        return "no version of it was in force"
    if version.revoked:
        return f"its version {version.version} revoked it from {version.date}"
    if version.expires is not None and day > version.expires:
        return f"its version {version.version} expired on {version.expires}"
    outside = sorted({v for v in vintages if not version.timeframe_start <= v <= version.timeframe_end})
    if outside:
        return (
            f"vintages {outside} lie outside the timeframe {version.timeframe_start}-{version.timeframe_end} of its"
            f" version {version.version}"
        )
    return ""


def _governed(world: World, snaps: dict[str, Snapshot]) -> None:
    """What acts under an authorization, the version that governs it allowed (`_governing` says which): a version
    recorded while a transfer waits, amendment or revocation, changes nothing for that transfer, and governs
    whatever is proposed, tied or first transferred after it.

    - every outgoing transfer was proposed under a version in force that day (not revoked, not expired), for
      vintages inside its timeframe and a purpose it names;
    - every tie at registration and every ``First transfer`` was made under a version in force, for a vintage
      inside its timeframe: none under a revoked authorization, but for transfers proposed before the revocation;
    - a ``First transfer``'s subtype is the governing version's first-transfer definition, and it is booked under
      one of that version's purposes, an NDC one exactly when the version authorizes NDC use.
    """
    for snap in snaps.values():
        for transfer in snap.transfers.values():
            if transfer.role is not TransferRole.INITIATING:
                continue
            terms, when = transfer.terms, transfer.created_at
            version = world.version_on(snap.party, terms.authorization_id, when.date(), when)
            problem = _not_in_force(version, when.date(), (b.vintage for b in terms.blocks))
            if not problem and version is not None and terms.purpose not in version.purposes:
                problem = f"its version {version.version} does not authorize {terms.purpose.value}"
            if problem:
                raise InvariantViolation(
                    f"{snap.party}: transfer {transfer.transfer_id} ({transfer.state.name}) was proposed at"
                    f" {when.isoformat()} under {terms.authorization_id}, but {problem}"
                )
        for entry in snap.ledger:
            if entry.action_type not in TIES or entry.first_transferring_party != snap.party:
                continue
            version, when = _governing(world, snap, entry)
            where = (
                f"{snap.party}: {entry.action_type.value} of {entry.block.describe()} (action {entry.transfer_id},"
                f" recorded {entry.action_date.isoformat()}, decided {when.isoformat()}) under {entry.authorization_id}"
            )
            problem = _not_in_force(version, when.date(), [entry.block.vintage])
            if problem or version is None:
                raise InvariantViolation(f"{where}, but {problem}")
            if entry.action_type is not ActionType.FIRST_TRANSFER:
                continue
            expected = FIRST_TRANSFER_SUBTYPES[version.first_transfer_definition]
            if entry.action_subtype != expected:
                raise InvariantViolation(
                    f"{where} is {entry.action_subtype!r}, but its version {version.version} first transfers at"
                    f" {version.first_transfer_definition.value!r}"
                )
            ndc = bool(version.purposes & NDC_PURPOSES)
            if entry.purpose not in version.purposes or (entry.purpose in NDC_PURPOSES) != ndc:
                purposes = sorted(p.value for p in version.purposes)
                raise InvariantViolation(
                    f"{where} is booked for {entry.purpose.value}, but its version {version.version} authorizes"
                    f" {purposes}"
                )


def _cover(covered: list[tuple[int, int]], start: int, end: int) -> int:
    """Add [start, end] to ``covered`` (sorted, disjoint ranges); return how many of its serials were not in it."""
    i = bisect.bisect_left(covered, (start, start))
    if i > 0 and covered[i - 1][1] >= start:
        i -= 1
    j, lo, hi, overlap = i, start, end, 0
    while j < len(covered) and covered[j][0] <= end:
        first, last = covered[j]
        overlap += min(last, end) - max(first, start) + 1
        lo, hi = min(lo, first), max(hi, last)
        j += 1
    covered[i:j] = [(lo, hi)]
    return end - start + 1 - overlap


def _authorized_quantity(world: World, snaps: dict[str, Snapshot]) -> None:
    """Units tied to an authorization never pass the quantity of the version that governed their tie.

    Units count against an authorization once, when they are tied to it: registered, used or cancelled under it,
    or reserved by the transfer that ties them as it is proposed (a first transfer included). In the order they
    were tied, the distinct units tied so far never exceed the authorized quantity of the version that governed
    the latest tie (`_governing`): an amendment that lowers it below what is tied stops further ties, and takes
    back none. Transfers that ended without moving their units count for none (which only loosens the bound).
    """
    for snap in snaps.values():
        ties: list[tuple[dt.datetime, str, str, UnitBlock, Authorization | None]] = []
        for entry in snap.ledger:
            if entry.authorization_id and entry.first_transferring_party == snap.party:
                version, when = _governing(world, snap, entry)
                ties.append((when, entry.transfer_id, entry.authorization_id, entry.block, version))
        for transfer in snap.transfers.values():
            if transfer.role is TransferRole.INITIATING and transfer.state in USES:
                auth_id, when = transfer.terms.authorization_id, transfer.created_at
                version = world.version_on(snap.party, auth_id, when.date(), when)
                ties.extend(
                    (when, transfer.transfer_id, auth_id, block, version)
                    for block in transfer.terms.blocks
                    if not block.tied and not block.first_transferred
                )
        ties.sort(key=lambda tie: (tie[0], tie[1]))
        covered: dict[tuple[str, Space], list[tuple[int, int]]] = defaultdict(list)
        total: dict[str, int] = defaultdict(int)
        grew: dict[str, Authorization | None] = {}
        for index, (when, action, auth_id, block, version) in enumerate(ties):
            newly = _cover(covered[(auth_id, space_key(block.space))], block.start, block.end)
            if newly:
                total[auth_id] += newly
                grew[auth_id] = version
            following = ties[index + 1] if index + 1 < len(ties) else None
            if following is not None and following[:2] == (when, action):
                continue  # an action's ties are judged together, as its gateway checked them
            for grown, governing in grew.items():
                if governing is not None and total[grown] > governing.authorized_quantity:
                    raise InvariantViolation(
                        f"{snap.party}: action {action} at {when.isoformat()} brought the units tied to {grown} to"
                        f" {total[grown]}, past the {governing.authorized_quantity} of its version {governing.version}"
                    )
            grew.clear()


def _delivered_as_booked(snaps: dict[str, Snapshot], honest: dict[str, Snapshot]) -> None:
    """The units a completed transfer delivered are booked by their (honest) initiator as its Proposal announced
    them to the acquiring side: a block taken in as first transferred is booked ``First transfer`` (or ``Transfer``,
    first transferred before), one taken in as not yet first transferred is booked ``Transfer`` ``Not yet defined``;
    both name the same tie. Otherwise one side counts a corresponding adjustment the other never made."""
    delivered: dict[str, dict[tuple[Space, int, int], UnitBlock]] = defaultdict(dict)
    for snap in snaps.values():
        for stored in snap.blocks:
            if stored.parent_id is None and stored.transfer_id:
                root = stored.block
                delivered[stored.transfer_id][(space_key(root.space), root.start, root.end)] = root
    for snap in honest.values():
        for entry in snap.ledger:
            if not _departs(entry.action_type, entry.action_subtype) or entry.transfer_id not in delivered:
                continue
            block = delivered[entry.transfer_id].get((space_key(entry.block.space), entry.block.start, entry.block.end))
            if block is None:
                continue
            first = entry.action_subtype != NOT_YET_DEFINED
            booked = (first, entry.block.authorization_id, entry.block.first_transferring_party)
            taken = (block.first_transferred, block.authorization_id, block.first_transferring_party)
            if booked != taken:
                raise InvariantViolation(
                    f"{snap.party}: transfer {entry.transfer_id} delivered {block.describe()} as (first transferred,"
                    f" authorization, first transferring Party) {taken}, but booked it as {entry.action_type.value}"
                    f" {entry.action_subtype!r}, {booked}"
                )


DEPARTED = (BlockStatus.DEBITED, BlockStatus.TRANSFERRED, BlockStatus.USED, BlockStatus.CANCELLED)
"""The statuses of blocks that left a gateway's holdings: by a completed transfer, a use or a cancellation."""


def _frozen_stay(world: World, snaps: dict[str, Snapshot]) -> None:
    """Invariant 13: no block left a gateway in the last step while a run there kept any of its serials frozen
    from the check before to this one."""
    for party, snap in snaps.items():
        before = world.frozen_seen.get(party)
        gone = world.departed_seen.get(party)
        departed = {s.block_id: s for s in snap.blocks if s.status in DEPARTED}
        world.frozen_seen[party] = snap.frozen
        world.departed_seen[party] = set(departed)
        if before is None or gone is None:
            continue
        throughout = before & snap.frozen
        if not throughout:
            continue
        for block_id, stored in departed.items():
            if block_id in gone:
                continue
            block = stored.block
            for run_id, space, start, end in throughout:
                if space == space_key(block.space) and start <= block.end and block.start <= end:
                    raise InvariantViolation(
                        f"{party}: {block.describe()} left ({stored.status.value}, by {stored.transfer_id}) while"
                        f" reconciliation run {run_id} kept serials {start}-{end} frozen there"
                    )


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


SKEW_HINT = (
    " (it looks like snapshot skew: the lacking side's ledger holds exactly this block, recorded after the run"
    " started, so a run compared two trees folded at different times)"
)


async def _reconciliations(world: World, snaps: dict[str, Snapshot]) -> None:
    """Invariant 9: every run's result is what the injected corruptions explain. A requester's run is judged
    once, at the first check after it finishes (`World.verified` keeps the verdict)."""
    runs: dict[str, list[ReconciliationRun]] = {}
    for party in PARTIES:
        node = world.nodes[party]
        assert node.core is not None
        async with node.core.store.read() as tx:
            runs[party] = await tx.list_reconciliations("", 100_000)
    for party in PARTIES:
        for run in runs[party]:
            if run.role is RunRole.REQUESTER:
                await _requester_run(world, snaps, party, run)
    for party in PARTIES:
        for run in runs[party]:
            if run.role is RunRole.RESPONDER:
                _responder_run(world, party, run)


def _report(world: World, party: str, run: ReconciliationRun) -> partner_pb2.ReconciliationReport:
    """The run's report: a DSSE envelope signed by one of the requester's keys."""
    envelope = Envelope.from_json(run.report)
    if envelope.payload_type != REPORT_PAYLOAD_TYPE:
        raise InvariantViolation(f"{party}: run {run.run_id}'s report is of type {envelope.payload_type!r}")
    keys = [signer.public_key for signer in world.nodes[party].signers.values()]
    try:
        verify_envelope(envelope, keys, 1, max_signatures=len(envelope.signatures))
    except SigningError as exc:
        raise InvariantViolation(f"{party}: run {run.run_id}'s report is not signed by {party}: {exc}") from None
    report = partner_pb2.ReconciliationReport()
    report.ParseFromString(envelope.payload)
    return report


def _identity(difference: partner_pb2.BlockDifference) -> Identity | None:
    blocks = [*difference.requester_blocks, *difference.responder_blocks]
    if not blocks:
        return None
    block = blocks[0]
    return (block.unit_kind, block.issuing_registry, block.issuance, block.serial_start)


async def _requester_run(world: World, snaps: dict[str, Snapshot], party: str, run: ReconciliationRun) -> None:
    sim = world.runs.get(run.run_id)
    if sim is None or sim.requester != party or sim.partner != run.partner:
        raise InvariantViolation(
            f"{party} holds reconciliation run {run.run_id} with {run.partner}, which it was never asked to start"
        )
    if run.status in (Status.RUNNING, Status.ABANDONED):
        return
    if run.status is Status.RESOLVED:
        if run.run_id not in world.verified:
            raise InvariantViolation(f"{party}: run {run.run_id} was resolved, but the simulation never resolved it")
        return
    if run.run_id in world.verified:
        return
    where = (
        f"{party}'s reconciliation run {run.run_id} with {run.partner} (started at step {sim.step}) ended"
        f" {run.status.name} ({run.detail[:300] or 'no detail'})"
    )
    report = _report(world, party, run)
    pair = {party, run.partner}
    # Injected before the run started and still there: it must be reported. Injected or repaired while the run
    # went on: it may be, as whatever the run saw of it. Repaired before the run started: it must not be.
    required: dict[tuple[str, Identity], Corruption] = {}
    tolerated: dict[tuple[str, Identity], Corruption] = {}
    for corruption in world.corruptions:
        if {corruption.party, corruption.partner} != pair:
            continue
        key = (corruption.transfer_id, corruption.identity)
        if corruption.injected < sim.started and corruption.repaired is None:
            required[key] = corruption
        elif corruption.injected > sim.started or (corruption.repaired or 0) > sim.started:
            tolerated[key] = corruption
    problems: list[str] = []
    if (report.run_id, report.requester, report.responder) != (run.run_id, party, run.partner):
        problems.append(f"its report names run {report.run_id} of {report.requester} with {report.responder}")
    if int(report.status) != int(run.status):
        problems.append(f"its report says {Status(report.status).name}")
    if report.differences_omitted:
        problems.append(f"its report left out {report.differences_omitted} differences")
    reported: set[int] = set()
    found: set[tuple[str, Identity]] = set()
    for difference in report.differences:
        identity = _identity(difference)
        kind = DifferenceKind(difference.kind)
        key = (difference.transfer_id, identity) if identity is not None else ("", ("", "", "", 0))
        expected = required.get(key)
        if expected is not None and kind is expected.kind(party) and key not in found:
            found.add(key)
            reported.add(expected.number)
        elif key in tolerated:
            reported.add(tolerated[key].number)
        else:
            wanted = f" (expected {expected.kind(party).name})" if expected is not None else ""
            hint = SKEW_HINT if _skewed(snaps, party, run, difference) else ""
            problems.append(
                f"an unexplained difference {kind.name}{wanted} of transfer {difference.transfer_id}"
                f" {identity} in fields {list(difference.fields)}{hint}"
            )
    for key, corruption in sorted(required.items()):
        if key not in found:
            problems.append(f"{corruption.describe()} was not reported as {corruption.kind(party).name}")
    expected_status = Status.BLOCKS_INCONSISTENT if report.differences or required else Status.CONSISTENT
    if run.status is not expected_status:
        problems.append(f"expected {expected_status.name}")
    # Transfers in flight are transfers between the two, not yet final on one side.
    for transfer_id in report.in_flight:
        mine, theirs = snaps[party].transfers.get(transfer_id), snaps[run.partner].transfers.get(transfer_id)
        if mine is None and theirs is None:
            problems.append(f"transfer {transfer_id} in flight is known to neither side")
    if run.status is Status.BLOCKS_INCONSISTENT:
        node = world.nodes[party]
        assert node.core is not None
        async with node.core.store.read() as tx:
            assert isinstance(tx, SQLiteTransaction)
            frozen: Ranges = _ranges()
            for row in tx._db.execute(
                "SELECT unit_kind, issuing_registry, issuance, serial_start, serial_end FROM frozen_ranges"
                " WHERE run_id = ?",
                (run.run_id,),
            ):
                frozen[(row[0], row[1], row[2])].append((int(row[3]), int(row[4])))
            for corruption in required.values():
                # Every unit of the corrupted entry as it truly was (the transfer's units) is frozen here.
                unit_kind, registry, issuance, start = corruption.identity
                end = int(json.loads(corruption.original["block"])["end"])
                if not covers(sorted(frozen[(unit_kind, registry, issuance)]), start, end):
                    problems.append(f"{corruption.describe()}: its units [{start}, {end}] are not all frozen")
            for difference in report.differences:
                for block in [*difference.requester_blocks, *difference.responder_blocks]:
                    space = SerialSpace(block.unit_kind, block.issuing_registry, block.issuance)
                    if run.run_id not in await tx.frozen_by(space, block.serial_start, block.serial_end):
                        problems.append(
                            f"{'/'.join((block.unit_kind, block.issuing_registry, block.issuance))}"
                            f" [{block.serial_start}, {block.serial_end}] of transfer {block.transfer_id} is not"
                            f" frozen at {party}"
                        )
    if problems:
        outstanding = [c.describe() for c in world.corruptions if c.repaired is None and {c.party, c.partner} == pair]
        raise InvariantViolation(
            f"{where}: " + "; ".join(problems[:6]) + f" (corruptions outstanding between them: {outstanding or 'none'})"
        )
    world.verified[run.run_id] = (int(run.status), tuple(sorted(reported)))
    world.note(f"run {run.run_id} of {party} with {run.partner} verified {run.status.name}: {sorted(reported)}")


def _transfer_purpose(snap: Snapshot, entry: LedgerEntry) -> str | None:
    """The purpose of the transfer that recorded ``entry`` at ``snap``'s gateway, as its reconciliation compares a
    first transfer abroad (`reconciled_block`)."""
    transfer = snap.transfers.get(entry.transfer_id)
    return None if transfer is None else transfer.terms.purpose.value


def _skewed(
    snaps: dict[str, Snapshot], requester: str, run: ReconciliationRun, difference: partner_pb2.BlockDifference
) -> bool:
    """A block reported missing on one side, which that side's ledger does hold now, exactly as the other side
    reported it, by an entry recorded after the run started: two trees compared as folded at different times.
    A product bug the simulation found (runs compared each side's tree as last folded); phase 3's comparison of
    the differing buckets as both sides hold them then is what prevents it. Only names the failure."""
    kind = DifferenceKind(difference.kind)
    if kind is DifferenceKind.MISSING_AT_REQUESTER:
        lacking, other, blocks = requester, run.partner, difference.responder_blocks
    elif kind is DifferenceKind.MISSING_AT_RESPONDER:
        lacking, other, blocks = run.partner, requester, difference.requester_blocks
    else:
        return False
    if len(blocks) != 1:
        return False
    held = {
        found[1]: entry
        for entry in snaps[lacking].ledger
        if (found := reconciled_block(entry, lacking, _transfer_purpose(snaps[lacking], entry))) is not None
        and found[0] == other
    }
    entry = held.get(block_from_proto(blocks[0], "report"))
    return entry is not None and entry.action_date >= run.started_at


def _responder_run(world: World, party: str, run: ReconciliationRun) -> None:
    sim = world.runs.get(run.run_id)
    if sim is None or sim.partner != party or sim.requester != run.partner:
        raise InvariantViolation(f"{party} answers reconciliation run {run.run_id}, which {run.partner} never started")
    if run.status in (Status.RUNNING, Status.RESOLVED):
        return
    verified = world.verified.get(run.run_id)
    if verified is None or verified[0] != int(run.status):
        requester = "not finished" if verified is None else Status(verified[0]).name
        raise InvariantViolation(
            f"{party}'s copy of {run.partner}'s reconciliation run {run.run_id} is {run.status.name}"
            f" ({run.detail[:300] or 'no detail'}), the requester's is {requester}"
        )
