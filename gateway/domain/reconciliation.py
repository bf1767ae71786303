"""Reconciliation between two gateways (DESIGN.md section 7), as pure functions.

What is compared. Each side's view of what passed between it and one partner: one `ReconciledBlock` per
movement entry of its ledger (the ``First transfer``/``Transfer`` entries of its own departures to the
partner and the ``Acquisition`` entries of its arrivals from it). A block only moves, and is only adjusted,
when its transfer completes, so a completed transfer has exactly one such entry per block on each side and a
transfer that ended any other way has none. Every field is one both sides hold alike when their books agree:
the transfer ID, the parties, the units (serial space and range, so quantity), vintage, cooperative approach,
authorization, purpose and the units' first-transfer state as delivered.

Phase 1, totals. Blocks fall into groups (unit kind, issuing registry, vintage, action, purpose), where the
action names the direction of the movement (``CHN->CHE``). A group's total is its number of blocks, their
quantity and the sum of their digests. Groups whose totals agree on both sides are consistent.

Phase 2, blocks. Within a group each block has a fixed place: the first `BUCKET_BITS` bits of a hash of its
identity (transfer ID, serial space, first serial), which both sides compute alike even when they disagree on
the block's other fields. A node of the tree at ``level`` covers the buckets sharing its first
``level * FANOUT_BITS`` bits, and holds the same three sums as a group total. Sums are additive, so a node is
kept up to date by adding a block's digest as it is recorded (and subtracting it if its entry ever changes),
never recomputed from its children. The descent asks only for the children of nodes that differ, and asks for
the blocks themselves only once a node is small, so the bytes exchanged grow with the differences.

Phase 3, audit trail. For each differing block: each side's state of the transfer and the log entries it
holds for it, which `classify` and the report turn into a difference a person can act on.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

from gateway.domain.blocks import SerialSpace
from gateway.domain.canonical import ActionSubtype
from gateway.domain.records import ActionType, LedgerEntry
from gateway.domain.transfer import TransferState

BUCKET_BITS = 16
"""Bits of a block's identity hash that place it in its group's tree: 65,536 buckets."""
FANOUT_BITS = 4
"""Each node has up to 16 children."""
DEPTH = BUCKET_BITS // FANOUT_BITS
"""Levels below a group's root: level `DEPTH` is a bucket."""
LIST_BELOW = 32
"""A node with at most this many blocks is answered with its blocks instead of its children's totals."""
LIMBS = 8
"""A digest sum is kept as eight sums of 32-bit limbs, so that a database adds it without overflow."""
_MODULUS = 1 << 256
_LEAF_DOMAIN = b"carbon-gateway reconciled block v1\x00"
_KEY_DOMAIN = b"carbon-gateway block identity v1\x00"
_LOG_DOMAIN = b"carbon-gateway log entry v1\x00"


class Status(enum.IntEnum):
    """Where a reconciliation run stands. Values appear on the wire: never renumber them."""

    RUNNING = 1
    CONSISTENT = 2
    TOTALS_INCONSISTENT = 3  # totals differ and the blocks could not be compared (see the run's detail)
    BLOCKS_INCONSISTENT = 4  # differing blocks were found; they are frozen until an operator resolves them
    RESOLVED = 5  # an operator resolved the discrepancy, with a recorded reason
    MANUAL_INTERVENTION_REQUIRED = 6  # the partner rewrote its message log, or answered what cannot be true
    ABANDONED = 7  # the partner did not answer; a later run takes its place

    @property
    def freezes(self) -> bool:
        """True while the run's differing blocks stay frozen."""
        return self in (Status.BLOCKS_INCONSISTENT, Status.MANUAL_INTERVENTION_REQUIRED)

    @property
    def is_final(self) -> bool:
        """True once the run has its result."""
        return self is not Status.RUNNING


class DifferenceKind(enum.IntEnum):
    """How one block differs between the two sides. Values appear on the wire: never renumber them."""

    MISSING_AT_REQUESTER = 1  # the responder records the movement, the requester does not
    MISSING_AT_RESPONDER = 2
    QUANTITY = 3
    VINTAGE = 4
    FIRST_TRANSFER = 5  # one side records the units as first transferred (or by another Party), the other not
    ADJUSTED_TWICE = 6  # one side records the same movement more often than the other
    STATE = 7  # completed on one side, ended otherwise (terminated, cancelled, rejected) on the other
    ATTRIBUTES = 8  # the cooperative approach, authorization, purpose or parties differ


@dataclass(frozen=True, slots=True, order=True)
class GroupKey:
    """A phase-1 group: unit kind, issuing registry, vintage, action (direction) and purpose."""

    unit_kind: str
    issuing_registry: str
    vintage: int
    action: str
    purpose: str

    def text(self) -> str:
        """The group as one stored key: fields joined by a separator that no field may contain."""
        return "\x1f".join((self.unit_kind, self.issuing_registry, str(self.vintage), self.action, self.purpose))

    @classmethod
    def from_text(cls, text: str) -> GroupKey:
        """The inverse of `text`."""
        unit_kind, registry, vintage, action, purpose = text.split("\x1f")
        return cls(unit_kind, registry, int(vintage), action, purpose)


def action_of(transferring_party: str, acquiring_party: str) -> str:
    """The action of a movement, alike on both sides: its direction."""
    return f"{transferring_party}->{acquiring_party}"


@dataclass(frozen=True, slots=True, order=True)
class ReconciledBlock:
    """One block that passed between two Parties, as one side records it (a leaf of the tree)."""

    transfer_id: str
    transferring_party: str
    acquiring_party: str
    unit_kind: str
    issuing_registry: str
    issuance: str
    serial_start: int
    serial_end: int
    vintage: int
    cooperative_approach: str
    authorization_id: str
    purpose: str
    first_transferred: bool
    first_transferring_party: str

    @property
    def quantity(self) -> int:
        """Number of units."""
        return self.serial_end - self.serial_start + 1

    @property
    def space(self) -> SerialSpace:
        """The block's serial space."""
        return SerialSpace(self.unit_kind, self.issuing_registry, self.issuance)

    @property
    def group(self) -> GroupKey:
        """The phase-1 group the block counts in."""
        return GroupKey(
            self.unit_kind,
            self.issuing_registry,
            self.vintage,
            action_of(self.transferring_party, self.acquiring_party),
            self.purpose,
        )

    @property
    def identity(self) -> tuple[str, str, str, str, int]:
        """What names the block on both sides even when they disagree on the rest: transfer and first unit."""
        return (self.transfer_id, self.unit_kind, self.issuing_registry, self.issuance, self.serial_start)

    @property
    def bucket(self) -> int:
        """The block's bucket in its group's tree."""
        key = hashlib.sha256(_KEY_DOMAIN + _encode_strings([str(v) for v in self.identity])).digest()
        return int.from_bytes(key[:4], "big") >> (32 - BUCKET_BITS)

    def encode(self) -> bytes:
        """The canonical bytes of the block: every field, in order, length-prefixed."""
        return _encode_strings(
            [
                self.transfer_id,
                self.transferring_party,
                self.acquiring_party,
                self.unit_kind,
                self.issuing_registry,
                self.issuance,
                str(self.serial_start),
                str(self.serial_end),
                str(self.vintage),
                self.cooperative_approach,
                self.authorization_id,
                self.purpose,
                "1" if self.first_transferred else "0",
                self.first_transferring_party,
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> ReconciledBlock:
        """The inverse of `encode` (for blocks this gateway stored itself)."""
        values = _decode_strings(data)
        return cls(
            transfer_id=values[0],
            transferring_party=values[1],
            acquiring_party=values[2],
            unit_kind=values[3],
            issuing_registry=values[4],
            issuance=values[5],
            serial_start=int(values[6]),
            serial_end=int(values[7]),
            vintage=int(values[8]),
            cooperative_approach=values[9],
            authorization_id=values[10],
            purpose=values[11],
            first_transferred=values[12] == "1",
            first_transferring_party=values[13],
        )

    @property
    def digest(self) -> bytes:
        """SHA-256 of the canonical bytes, domain-separated."""
        return digest_of(self.encode())

    def describe(self) -> str:
        """The block as a person reads it."""
        issuance = f"/{self.issuance}" if self.issuance else ""
        return (
            f"{self.unit_kind} {self.issuing_registry}{issuance} [{self.serial_start}, {self.serial_end}]"
            f" of transfer {self.transfer_id}"
        )


def digest_of(encoded: bytes) -> bytes:
    """The digest of a block from its canonical bytes (`ReconciledBlock.encode`)."""
    return hashlib.sha256(_LEAF_DOMAIN + encoded).digest()


def _encode_strings(values: Sequence[str]) -> bytes:
    parts = []
    for value in values:
        raw = value.encode("utf-8")
        parts.append(struct.pack(">I", len(raw)) + raw)
    return b"".join(parts)


def _decode_strings(data: bytes) -> list[str]:
    values, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4
        values.append(data[offset : offset + length].decode("utf-8"))
        offset += length
    return values


MOVEMENTS = frozenset({ActionType.FIRST_TRANSFER, ActionType.TRANSFER, ActionType.ACQUISITION})


def books_first_transfer_abroad(entry: LedgerEntry) -> bool:
    """Whether ``entry`` is a ``First transfer`` to another Party: a movement whose entry is booked under its
    authorization's purpose, not its transfer's (`reconciled_block`)."""
    return (
        entry.action_type is ActionType.FIRST_TRANSFER
        and entry.action_subtype == ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY.value
    )


def reconciled_block(
    entry: LedgerEntry, party: str, transfer_purpose: str | None = None
) -> tuple[str, ReconciledBlock] | None:
    """The partner and the block a ledger entry of ``party`` contributes to reconciliation, or None.

    Only movements between Parties count: ``party``'s own departures (``Transfer``, and ``First transfer`` to
    another Party) and its arrivals (``Acquisition``). A first transfer at authorization or issuance, a use and
    a cancellation move nothing across a border.

    The purpose compared is the transfer's, as both sides record it. A ``First transfer`` entry is booked under
    its authorization's purpose (`gateway.domain.ledger.primary_purpose`), which the acquiring side cannot know:
    for one, ``transfer_purpose`` (the purpose of the transfer that made it, from this side's record of the
    transfer) is compared instead, when given.
    """
    if entry.action_type not in MOVEMENTS:
        return None
    if entry.action_type is ActionType.FIRST_TRANSFER and not books_first_transfer_abroad(entry):
        return None
    if entry.action_type is ActionType.ACQUISITION:
        if entry.acquiring_party != party or not entry.transferring_party:
            return None
        partner = entry.transferring_party
    else:
        if entry.transferring_party != party or not entry.acquiring_party:
            return None
        partner = entry.acquiring_party
    if partner == party:
        return None
    block = entry.block
    return partner, ReconciledBlock(
        transfer_id=entry.transfer_id,
        transferring_party=entry.transferring_party,
        acquiring_party=entry.acquiring_party,
        unit_kind=block.space.unit_kind,
        issuing_registry=block.space.issuing_registry,
        issuance=block.space.issuance,
        serial_start=block.start,
        serial_end=block.end,
        vintage=block.vintage,
        cooperative_approach=entry.cooperative_approach,
        authorization_id=entry.authorization_id,
        purpose=transfer_purpose if transfer_purpose and books_first_transfer_abroad(entry) else entry.purpose.value,
        first_transferred=block.first_transferred or entry.action_type is ActionType.FIRST_TRANSFER,
        first_transferring_party=block.first_transferring_party or entry.first_transferring_party,
    )


# Sums


def limbs(digest: bytes) -> tuple[int, ...]:
    """A digest as eight 32-bit limbs, least significant first."""
    value = int.from_bytes(digest, "big")
    return tuple((value >> (32 * i)) & 0xFFFFFFFF for i in range(LIMBS))


def digest_of_limbs(sums: Sequence[int]) -> bytes:
    """The digest sum (modulo 2**256, 32 bytes) that limb sums stand for."""
    value = sum(s << (32 * i) for i, s in enumerate(sums)) % _MODULUS
    return value.to_bytes(32, "big")


@dataclass(frozen=True, slots=True)
class Totals:
    """Blocks, quantity and digest sum of a group or a node."""

    blocks: int = 0
    quantity: int = 0
    digest: bytes = bytes(32)

    @classmethod
    def of(cls, blocks: Iterable[ReconciledBlock]) -> Totals:
        """The totals of ``blocks`` (each counted as often as it occurs)."""
        count, quantity, value = 0, 0, 0
        for block in blocks:
            count += 1
            quantity += block.quantity
            value += int.from_bytes(block.digest, "big")
        return cls(count, quantity, (value % _MODULUS).to_bytes(32, "big"))

    @property
    def empty(self) -> bool:
        """True for a node or group without blocks."""
        return self.blocks == 0


def add_up(parts: Iterable[Totals]) -> Totals:
    """The totals of a node from its children's."""
    count, quantity, value = 0, 0, 0
    for part in parts:
        count += part.blocks
        quantity += part.quantity
        value += int.from_bytes(part.digest, "big")
    return Totals(count, quantity, (value % _MODULUS).to_bytes(32, "big"))


def node_prefix(bucket: int, level: int) -> int:
    """The prefix of the node at ``level`` that holds ``bucket``."""
    return bucket >> (FANOUT_BITS * (DEPTH - level))


def bucket_range(level: int, prefix: int) -> tuple[int, int]:
    """The first and last bucket under the node ``(level, prefix)``."""
    shift = FANOUT_BITS * (DEPTH - level)
    return prefix << shift, ((prefix + 1) << shift) - 1


def check_node(level: int, prefix: int) -> None:
    """Refuse a node that does not exist in the tree (ValueError)."""
    if not 0 <= level <= DEPTH:
        raise ValueError(f"level {level} is outside 0..{DEPTH}")
    if not 0 <= prefix < (1 << (FANOUT_BITS * level)):
        raise ValueError(f"prefix {prefix} does not exist at level {level}")


@dataclass(frozen=True, slots=True, order=True)
class NodeRef:
    """A node of one group's tree."""

    group: GroupKey
    level: int
    prefix: int

    def children(self) -> list[NodeRef]:
        """The node's children (none for a bucket)."""
        if self.level >= DEPTH:
            return []
        base = self.prefix << FANOUT_BITS
        return [NodeRef(self.group, self.level + 1, base + i) for i in range(1 << FANOUT_BITS)]

    def holds(self, block: ReconciledBlock) -> bool:
        """True when ``block`` lies under this node."""
        return block.group == self.group and node_prefix(block.bucket, self.level) == self.prefix


@dataclass(frozen=True, slots=True)
class NodeView:
    """What one side says of a node: its totals, and either its children's totals or its blocks in full."""

    ref: NodeRef
    totals: Totals
    children: dict[int, Totals] = field(default_factory=dict)  # child prefix -> totals (non-empty ones)
    blocks: tuple[ReconciledBlock, ...] | None = None  # listed in full when small (or a bucket)

    @property
    def listed(self) -> bool:
        """True when the view lists the node's blocks."""
        return self.blocks is not None

    def child_view(self, child: NodeRef) -> NodeView:
        """The view of a child, derived from the blocks this view lists."""
        assert self.blocks is not None
        inside = tuple(b for b in self.blocks if child.holds(b))
        return NodeView(child, Totals.of(inside), blocks=inside)

    def child_totals(self) -> dict[int, Totals]:
        """Totals per non-empty child prefix, from the children or from the listed blocks."""
        if self.blocks is None:
            return self.children
        groups: dict[int, list[ReconciledBlock]] = {}
        for block in self.blocks:
            groups.setdefault(node_prefix(block.bucket, self.ref.level + 1), []).append(block)
        return {prefix: Totals.of(blocks) for prefix, blocks in groups.items()}


def listed_view(ref: NodeRef, blocks: Sequence[ReconciledBlock]) -> NodeView:
    """The view of a node that lists its blocks."""
    return NodeView(ref, Totals.of(blocks), blocks=tuple(sorted(blocks)))


def should_list(level: int, totals: Totals) -> bool:
    """True when a node is answered with its blocks: it is a bucket, or small enough."""
    return level >= DEPTH or totals.blocks <= LIST_BELOW


@dataclass(frozen=True, slots=True)
class Step:
    """What comparing two views of one node yields: block differences, and child nodes to look at next."""

    mine_only: tuple[ReconciledBlock, ...] = ()
    theirs_only: tuple[ReconciledBlock, ...] = ()
    descend: tuple[NodeRef, ...] = ()
    repeated: tuple[tuple[ReconciledBlock, int, int], ...] = ()
    """Blocks both sides record, but not equally often: (block, times here, times there)."""


def compare_views(mine: NodeView, theirs: NodeView) -> Step:
    """Compare this side's and the partner's view of the same node.

    Both listed: the blocks that one side has more often than the other. Otherwise: the children whose totals
    differ, to be compared next (a side that listed its blocks answers for those children without being asked).
    """
    if mine.totals == theirs.totals:
        return Step()
    if mine.blocks is not None and theirs.blocks is not None:
        ours, others = Counter(mine.blocks), Counter(theirs.blocks)
        repeated = tuple(
            (block, ours[block], others[block])
            for block in sorted(set(ours) & set(others))
            if ours[block] != others[block]
        )
        return Step(
            tuple(sorted(b for b in ours if b not in others for _ in range(ours[b]))),
            tuple(sorted(b for b in others if b not in ours for _ in range(others[b]))),
            repeated=repeated,
        )
    if mine.ref.level >= DEPTH:
        raise ValueError("a bucket is always listed")
    mine_children, theirs_children = mine.child_totals(), theirs.child_totals()
    empty = Totals()
    differing = [
        NodeRef(mine.ref.group, mine.ref.level + 1, prefix)
        for prefix in sorted(set(mine_children) | set(theirs_children))
        if mine_children.get(prefix, empty) != theirs_children.get(prefix, empty)
    ]
    return Step(descend=tuple(differing))


# Differences


_COMPARED_FIELDS = [f.name for f in fields(ReconciledBlock)]


@dataclass(frozen=True, slots=True)
class Difference:
    """One block the two sides record differently: requester's and responder's records of it."""

    kind: DifferenceKind
    transfer_id: str
    requester: tuple[ReconciledBlock, ...]
    responder: tuple[ReconciledBlock, ...]
    fields: tuple[str, ...] = ()

    @property
    def blocks(self) -> tuple[ReconciledBlock, ...]:
        """Every record of the block, on either side."""
        return self.requester + self.responder


def pair_differences(
    requester_only: Sequence[ReconciledBlock], responder_only: Sequence[ReconciledBlock]
) -> list[Difference]:
    """Pair the blocks found on one side only by their identity, and say how each pair differs.

    A block recorded on both sides with other fields is one difference naming those fields; a block recorded
    more often on one side (its movement adjusted twice) is `ADJUSTED_TWICE`; one recorded on one side only is
    missing on the other (phase 3 may find it is a transfer the other side ended otherwise).
    """
    by_identity: dict[tuple[str, str, str, str, int], tuple[list[ReconciledBlock], list[ReconciledBlock]]] = {}
    for block in requester_only:
        by_identity.setdefault(block.identity, ([], []))[0].append(block)
    for block in responder_only:
        by_identity.setdefault(block.identity, ([], []))[1].append(block)
    differences = []
    for identity in sorted(by_identity):
        ours, theirs = by_identity[identity]
        transfer_id = identity[0]
        if not theirs:
            kind = DifferenceKind.MISSING_AT_RESPONDER
            differences.append(Difference(kind, transfer_id, tuple(ours), ()))
            continue
        if not ours:
            differences.append(Difference(DifferenceKind.MISSING_AT_REQUESTER, transfer_id, (), tuple(theirs)))
            continue
        differing = tuple(
            name
            for name in _COMPARED_FIELDS
            if len({getattr(b, name) for b in ours} | {getattr(b, name) for b in theirs}) > 1
        )
        differences.append(Difference(kind_of_fields(differing), transfer_id, tuple(ours), tuple(theirs), differing))
    return differences


def kind_of_fields(names: Sequence[str]) -> DifferenceKind:
    """The difference kind that best names a set of differing fields."""
    if "serial_end" in names:
        return DifferenceKind.QUANTITY
    if "vintage" in names:
        return DifferenceKind.VINTAGE
    if "first_transferred" in names or "first_transferring_party" in names:
        return DifferenceKind.FIRST_TRANSFER
    return DifferenceKind.ATTRIBUTES


def repeated_difference(block: ReconciledBlock, requester_times: int, responder_times: int) -> Difference:
    """The same movement recorded more often on one side than on the other: adjusted twice."""
    return Difference(
        DifferenceKind.ADJUSTED_TWICE,
        block.transfer_id,
        (block,) * requester_times,
        (block,) * responder_times,
        ("times recorded",),
    )


class TransferView(enum.Enum):
    """What phase 3 learns of a transfer on the side that does not record a movement for it."""

    UNKNOWN = "unknown"  # no such transfer
    OPEN = "open"  # not final yet: the movement is on its way
    COMPLETED = "completed"
    ENDED = "ended"  # terminated, cancelled, rejected or refused at check


def view_of_state(state: TransferState) -> TransferView:
    """What a transfer's state says of a movement the side does not record."""
    if state is TransferState.COMPLETED:
        return TransferView.COMPLETED
    return TransferView.ENDED if state.is_final else TransferView.OPEN


def classify(difference: Difference, requester_view: TransferView, responder_view: TransferView) -> Difference | None:
    """A difference in the light of both sides' transfer states; None when it is a movement still in flight.

    A block recorded on one side only is in flight while the other side holds the transfer open (its
    Completion is on its way); it is compared again next time. Recorded on one side only while the other side
    ended the transfer, it is a transfer completed on one side and ended on the other.
    """
    if difference.kind is DifferenceKind.MISSING_AT_RESPONDER:
        lacking = responder_view
    elif difference.kind is DifferenceKind.MISSING_AT_REQUESTER:
        lacking = requester_view
    else:
        return difference
    if lacking is TransferView.OPEN:
        return None
    if lacking is TransferView.ENDED:
        return Difference(
            DifferenceKind.STATE, difference.transfer_id, difference.requester, difference.responder, ("state",)
        )
    return difference


def status_of(differences: Sequence[Difference]) -> Status:
    """The run's status once phases 2 and 3 are done."""
    return Status.BLOCKS_INCONSISTENT if differences else Status.CONSISTENT


def log_leaf(direction: str, peer: str, message_id: str, kind: str, envelope_sha256: bytes) -> bytes:
    """The bytes a message-log entry contributes to the log's Merkle tree (RFC 9162 hashes them as a leaf).

    The envelope enters by its SHA-256, so that a partner can check an entry's inclusion from the digest alone.
    """
    return _LOG_DOMAIN + _encode_strings([direction, peer, message_id, kind, envelope_sha256.hex()])
