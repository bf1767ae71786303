"""Unit blocks and the serial arithmetic on them.

A unit block is a contiguous serial range ``[start, end]`` of one kind of unit from one issuing registry
(DESIGN.md section 2). Two blocks *overlap* when they name the same unit kind, the same issuing registry and
the same issuance (serials may restart per issuance), and their integer ranges intersect. Serial strings are
never compared: the spelling of a serial is the adapters' business, and they all parse to a `UnitBlock`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

MAX_SERIAL = 2**63 - 2
"""The largest serial. Serials and quantities are 64-bit signed integers in storage and on the wire, so the
largest serial leaves room for ``end + 1`` (the first serial after a block) and keeps the quantity of any
block, ``end - start + 1``, within 2^63 - 1."""


class BlockError(ValueError):
    """A block, or an operation on blocks, that the serial arithmetic refuses."""


@dataclass(frozen=True, slots=True)
class SerialSpace:
    """The numbering a serial belongs to: unit kind, issuing registry and issuance.

    ``issuance`` is empty where the registry numbers its units continuously; where serials restart per
    issuance it names the issuance, so that equal integers in two issuances do not overlap.
    """

    unit_kind: str
    issuing_registry: str
    issuance: str = ""


@dataclass(frozen=True, slots=True)
class UnitBlock:
    """A contiguous serial range of units with every attribute they carry.

    A split inherits every attribute, including ``first_transferred`` (DESIGN.md section 2).
    """

    space: SerialSpace
    start: int
    end: int
    vintage: int
    project_id: str = ""
    methodology_code: str = ""
    mitigation_type: str = ""
    registry_reference: str = ""
    first_transferred: bool = False
    attributes: tuple[tuple[str, str], ...] = field(default=())
    """Further source attributes, sorted by name, carried verbatim so that no mapping loses them."""
    first_transferring_party: str = ""
    """The Party whose authorization made these units ITMOs, and which first transfers them; empty until the
    units are tied to an authorization. Kept across splits and across borders (a Proposal carries it)."""
    cooperative_approach: str = ""
    """The cooperative approach of the authorization the units are tied to; empty until then."""
    authorization_id: str = ""
    """The authorization the units are tied to (their ITMO identity); empty until then."""

    def __post_init__(self) -> None:
        if not self.space.unit_kind:
            raise BlockError("unit_kind is empty")
        if not self.space.issuing_registry:
            raise BlockError("issuing_registry is empty")
        _check_serials(self.start, self.end)
        if tuple(sorted(self.attributes)) != self.attributes:
            object.__setattr__(self, "attributes", tuple(sorted(self.attributes)))
        names = [name for name, _ in self.attributes]
        if len(set(names)) != len(names):
            raise BlockError(f"an attribute name appears twice in {names}")

    @property
    def quantity(self) -> int:
        """Number of units in the block (whole t CO2e)."""
        return self.end - self.start + 1

    def contains(self, other: UnitBlock) -> bool:
        """True when every unit of ``other`` lies in this block."""
        return self.space == other.space and self.start <= other.start and other.end <= self.end

    def overlaps(self, other: UnitBlock) -> bool:
        """True when the two blocks share at least one unit."""
        return ranges_overlap(self.space, self.start, self.end, other.space, other.start, other.end)

    def with_range(self, start: int, end: int) -> UnitBlock:
        """The same units' attributes over another serial range."""
        _check_serials(start, end)
        return self._derived(
            start,
            end,
            self.first_transferred,
            self.first_transferring_party,
            self.cooperative_approach,
            self.authorization_id,
        )

    def with_tie(
        self,
        first_transferring_party: str,
        cooperative_approach: str,
        authorization_id: str,
        *,
        first_transferred: bool,
    ) -> UnitBlock:
        """The same units tied to another authorization (or untied, with empty values), first transferred or
        not: ``dataclasses.replace`` of these four fields, without its cost (a transfer derives a thousand)."""
        return self._derived(
            self.start, self.end, first_transferred, first_transferring_party, cooperative_approach, authorization_id
        )

    def with_first_transferred(self, first_transferred: bool = True) -> UnitBlock:
        """The same units, first transferred (or not)."""
        return self._derived(
            self.start,
            self.end,
            first_transferred,
            self.first_transferring_party,
            self.cooperative_approach,
            self.authorization_id,
        )

    def _derived(
        self,
        start: int,
        end: int,
        first_transferred: bool,
        first_transferring_party: str,
        cooperative_approach: str,
        authorization_id: str,
    ) -> UnitBlock:
        """A copy with other values of fields that `__post_init__` does not check, or has checked (the serials):
        the checks of this block's other fields hold for the copy, so they are not made again."""
        block: UnitBlock = object.__new__(UnitBlock)
        # The slots' own setters, in field order: a frozen dataclass's fields set without its __setattr__.
        (space, set_start, set_end, vintage, project, methodology, mitigation, reference, set_first, attributes,
         set_party, set_approach, set_authorization) = _SLOT_SETTERS  # fmt: skip
        space(block, self.space)
        set_start(block, start)
        set_end(block, end)
        vintage(block, self.vintage)
        project(block, self.project_id)
        methodology(block, self.methodology_code)
        mitigation(block, self.mitigation_type)
        reference(block, self.registry_reference)
        set_first(block, first_transferred)
        attributes(block, self.attributes)
        set_party(block, first_transferring_party)
        set_approach(block, cooperative_approach)
        set_authorization(block, authorization_id)
        return block

    def same_attributes(self, other: UnitBlock) -> bool:
        """True when the two blocks differ at most in their serial range."""
        return self.with_range(0, 0) == other.with_range(0, 0)

    @property
    def tied(self) -> bool:
        """True once the units are tied to an authorization (they are ITMOs, first transferred or not)."""
        return bool(self.authorization_id)

    def describe(self) -> str:
        """A short human-readable name, e.g. ``CCER/CN-CCER [1001, 1500]``."""
        issuance = f"/{self.space.issuance}" if self.space.issuance else ""
        return f"{self.space.unit_kind}/{self.space.issuing_registry}{issuance} [{self.start}, {self.end}]"


_SLOT_SETTERS: tuple[Callable[[UnitBlock, Any], None], ...] = tuple(
    getattr(UnitBlock, f.name).__set__ for f in fields(UnitBlock)
)
"""The setter of each field's slot, in field order (`UnitBlock._derived`)."""


def _check_serials(start: int, end: int) -> None:
    if not 0 <= start <= MAX_SERIAL or not 0 <= end <= MAX_SERIAL:
        raise BlockError(f"serials must lie in 0..{MAX_SERIAL}: got [{start}, {end}]")
    if end < start:
        raise BlockError(f"block end {end} precedes its start {start}")


def ranges_overlap(
    space_a: SerialSpace, start_a: int, end_a: int, space_b: SerialSpace, start_b: int, end_b: int
) -> bool:
    """True when two serial ranges in the same serial space intersect."""
    return space_a == space_b and start_a <= end_b and start_b <= end_a


@dataclass(frozen=True, slots=True)
class Split:
    """The result of taking a range out of a block: the part taken and what remains on either side."""

    taken: UnitBlock
    remainder: tuple[UnitBlock, ...]


def split(block: UnitBlock, start: int, end: int) -> Split:
    """Take the range ``[start, end]`` out of ``block``.

    The taken part and the remainder inherit every attribute of ``block``; their quantities add up to the
    block's quantity.
    """
    if end < start:
        raise BlockError(f"range end {end} precedes its start {start}")
    if start < block.start or end > block.end:
        raise BlockError(f"range [{start}, {end}] is not inside {block.describe()}")
    remainder: list[UnitBlock] = []
    if start > block.start:
        remainder.append(block.with_range(block.start, start - 1))
    if end < block.end:
        remainder.append(block.with_range(end + 1, block.end))
    return Split(taken=block.with_range(start, end), remainder=tuple(remainder))


def split_first(block: UnitBlock, quantity: int) -> Split:
    """Take the first ``quantity`` units (lowest serials) out of ``block``."""
    if not 0 < quantity <= block.quantity:
        raise BlockError(f"quantity {quantity} is not in 1..{block.quantity} for {block.describe()}")
    return split(block, block.start, block.start + quantity - 1)


def merge(blocks: Iterable[UnitBlock]) -> list[UnitBlock]:
    """Merge adjacent blocks that carry identical attributes; other blocks are returned unchanged.

    Raises `BlockError` if two of the blocks overlap: merging never hides a double count.
    """
    ordered = sorted(blocks, key=_order_key)
    merged: list[UnitBlock] = []
    for block in ordered:
        if merged:
            last = merged[-1]
            if last.overlaps(block):
                raise BlockError(f"{last.describe()} overlaps {block.describe()}")
            if last.same_attributes(block) and last.end + 1 == block.start:
                merged[-1] = last.with_range(last.start, block.end)
                continue
        merged.append(block)
    return merged


def ranges_by_space(blocks: Iterable[UnitBlock]) -> dict[SerialSpace, list[tuple[int, int]]]:
    """The serial ranges of ``blocks``, by serial space, in the order given."""
    found: dict[SerialSpace, list[tuple[int, int]]] = {}
    for block in blocks:
        found.setdefault(block.space, []).append((block.start, block.end))
    return found


def ranges_disjoint(ranges: Iterable[tuple[int, int]]) -> bool:
    """True when no two of the serial ranges ``(start, end)`` share a serial: a sort and one pass.

    The ranges are taken to lie in one serial space; `find_overlaps` names the pairs when this is False.
    """
    reach = -1
    for start, end in sorted(ranges):
        if start <= reach:
            return False
        reach = end  # sorted and disjoint so far, so this end is the furthest yet
    return True


def find_overlaps(blocks: Sequence[UnitBlock]) -> list[tuple[UnitBlock, UnitBlock]]:
    """Every pair of overlapping blocks among ``blocks``, found by a sweep over each serial space."""
    pairs: list[tuple[UnitBlock, UnitBlock]] = []
    ordered = sorted(blocks, key=_order_key)
    active: list[UnitBlock] = []
    for block in ordered:
        active = [a for a in active if a.space == block.space and a.end >= block.start]
        pairs.extend((a, block) for a in active)
        active.append(block)
    return pairs


def _order_key(block: UnitBlock) -> tuple[str, str, str, int, int]:
    space = block.space
    return (space.unit_kind, space.issuing_registry, space.issuance, block.start, block.end)
