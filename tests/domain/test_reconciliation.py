"""Reconciliation as pure functions (gateway.domain.reconciliation): the leaf codec, additive totals, limb sums,
the descent through node views, pairing and classifying differences, and which ledger entries count."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.blocks import MAX_SERIAL, SerialSpace, UnitBlock
from gateway.domain.canonical import ActionSubtype
from gateway.domain.reconciliation import (
    DEPTH,
    LIST_BELOW,
    Difference,
    DifferenceKind,
    GroupKey,
    NodeRef,
    NodeView,
    ReconciledBlock,
    Status,
    Totals,
    TransferView,
    classify,
    compare_views,
    digest_of_limbs,
    limbs,
    listed_view,
    node_prefix,
    pair_differences,
    reconciled_block,
    repeated_difference,
    should_list,
    status_of,
)
from gateway.domain.records import ActionType, LedgerEntry, Purpose

MODULUS = 1 << 256

texts = st.text(max_size=12)
serials = st.integers(min_value=0, max_value=MAX_SERIAL)


@st.composite
def any_block(draw: st.DrawFn) -> ReconciledBlock:
    start = draw(serials)
    end = draw(st.integers(min_value=start, max_value=MAX_SERIAL))
    return ReconciledBlock(
        transfer_id=draw(texts),
        transferring_party=draw(texts),
        acquiring_party=draw(texts),
        unit_kind=draw(texts),
        issuing_registry=draw(texts),
        issuance=draw(texts),
        serial_start=start,
        serial_end=end,
        vintage=draw(st.integers(min_value=-(2**31), max_value=2**31 - 1)),
        cooperative_approach=draw(texts),
        authorization_id=draw(texts),
        purpose=draw(texts),
        first_transferred=draw(st.booleans()),
        first_transferring_party=draw(texts),
    )


def block(i: int, **changes: object) -> ReconciledBlock:
    """A plausible block of transfer ``t{i // 4}`` from CHN to CHE (four blocks per transfer)."""
    base = ReconciledBlock(
        transfer_id=f"t{i // 4}",
        transferring_party="CHN",
        acquiring_party="CHE",
        unit_kind="CCER",
        issuing_registry="CN-CCER",
        issuance="",
        serial_start=1 + 100 * i,
        serial_end=50 + 100 * i,
        vintage=2024 + i % 2,
        cooperative_approach="CA0001",
        authorization_id="CHN-A-0001",
        purpose="NDC",
        first_transferred=True,
        first_transferring_party="CHN",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def digest_sum(*digests: bytes) -> bytes:
    return (sum(int.from_bytes(d, "big") for d in digests) % MODULUS).to_bytes(32, "big")


# -- the leaf codec ---------------------------------------------------------------------------------------


@given(any_block())
def test_a_block_decodes_to_itself(value: ReconciledBlock) -> None:
    encoded = value.encode()
    assert ReconciledBlock.decode(encoded) == value
    assert ReconciledBlock.decode(encoded).digest == value.digest


def test_every_field_changes_the_digest_and_only_the_identity_places_the_block() -> None:
    original = block(3)
    changed = {
        "transfer_id": "other",
        "transferring_party": "CHX",
        "acquiring_party": "CHY",
        "unit_kind": "VCU",
        "issuing_registry": "VERRA",
        "issuance": "I-1",
        "serial_start": 2,
        "serial_end": 51,
        "vintage": 1999,
        "cooperative_approach": "CA0002",
        "authorization_id": "CHN-A-0002",
        "purpose": "OIMP",
        "first_transferred": False,
        "first_transferring_party": "CHE",
    }
    assert set(changed) == {f.name for f in dataclasses.fields(ReconciledBlock)}
    identity_fields = {"transfer_id", "unit_kind", "issuing_registry", "issuance", "serial_start"}
    for name, value in changed.items():
        other = dataclasses.replace(original, **{name: value})  # type: ignore[arg-type]
        assert other.digest != original.digest, name
        assert (other.identity == original.identity) is (name not in identity_fields), name
    # Field boundaries are part of the encoding: moving a character between fields changes the digest.
    a = dataclasses.replace(original, cooperative_approach="CA", authorization_id="1")
    b = dataclasses.replace(original, cooperative_approach="C", authorization_id="A1")
    assert a.encode() != b.encode() and a.digest != b.digest


# -- sums -------------------------------------------------------------------------------------------------


@given(st.lists(any_block(), max_size=8), st.lists(any_block(), max_size=8))
def test_totals_are_additive(left: list[ReconciledBlock], right: list[ReconciledBlock]) -> None:
    a, b = Totals.of(left), Totals.of(right)
    both = Totals.of(left + right)
    assert both == Totals(a.blocks + b.blocks, a.quantity + b.quantity, digest_sum(a.digest, b.digest))
    assert Totals.of(right + left) == both  # the order does not matter
    assert Totals.of([]) == Totals() and Totals().empty and (both.empty is (not left and not right))


def test_a_block_counted_twice_changes_the_totals() -> None:
    one = block(1)
    assert Totals.of([one, one]) != Totals.of([one])
    assert Totals.of([one, one]).digest == digest_sum(one.digest, one.digest)


@given(st.binary(min_size=32, max_size=32))
def test_limbs_round_trip(digest: bytes) -> None:
    parts = limbs(digest)
    assert len(parts) == 8 and all(0 <= p < 2**32 for p in parts)
    assert digest_of_limbs(parts) == digest
    assert sum(p << (32 * i) for i, p in enumerate(parts)) == int.from_bytes(digest, "big")


@given(
    st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=10),
    st.lists(st.binary(min_size=32, max_size=32), max_size=10),
)
def test_limb_sums_stand_for_the_digest_sum_after_subtraction(added: list[bytes], removed: list[bytes]) -> None:
    # A node of the tree keeps eight limb sums: adding a leaf adds its limbs, removing one subtracts them, so
    # a limb sum goes negative and may exceed 32 bits; the digest it stands for is still the modular sum.
    sums = [0] * 8
    for digest in added:
        sums = [s + x for s, x in zip(sums, limbs(digest), strict=True)]
    for digest in removed:
        sums = [s - x for s, x in zip(sums, limbs(digest), strict=True)]
    value = sum(int.from_bytes(d, "big") for d in added) - sum(int.from_bytes(d, "big") for d in removed)
    assert digest_of_limbs(sums) == (value % MODULUS).to_bytes(32, "big")


def test_limbs_of_a_removed_digest_cancel_out() -> None:
    digest = bytes(range(32))
    negative = [-x for x in limbs(digest)]
    assert any(s < 0 for s in negative)
    assert digest_of_limbs(negative) == ((-int.from_bytes(digest, "big")) % MODULUS).to_bytes(32, "big")
    assert digest_of_limbs([a + b for a, b in zip(limbs(digest), negative, strict=True)]) == bytes(32)
    assert digest_of_limbs([2**32 - 1] * 8) != bytes(32)  # no limb is cut to 32 bits


# -- the descent ------------------------------------------------------------------------------------------


def view(blocks: Sequence[ReconciledBlock], ref: NodeRef) -> NodeView:
    """One side's answer for a node, as a responder gives it: listed when small, else its children's totals."""
    inside = [b for b in blocks if ref.holds(b)]
    totals = Totals.of(inside)
    if should_list(ref.level, totals):
        return listed_view(ref, inside)
    children: dict[int, list[ReconciledBlock]] = {}
    for b in inside:
        children.setdefault(node_prefix(b.bucket, ref.level + 1), []).append(b)
    return NodeView(ref, totals, children={p: Totals.of(c) for p, c in children.items()})


@dataclass
class Descent:
    mine_only: list[ReconciledBlock]
    theirs_only: list[ReconciledBlock]
    repeated: list[tuple[ReconciledBlock, int, int]]
    asked: int


def descend(mine: Sequence[ReconciledBlock], theirs: Sequence[ReconciledBlock]) -> Descent:
    """The requester's descent: compare the roots of every group, ask for the children that differ, and
    derive children from a listed view instead of asking again."""
    found = Descent([], [], [], 0)
    groups = sorted({b.group for b in mine} | {b.group for b in theirs})
    pending = [NodeRef(g, 0, 0) for g in groups]
    while pending:
        ref = pending.pop()
        found.asked += 1
        queue = [(view(mine, ref), view(theirs, ref))]
        while queue:
            own, other = queue.pop()
            assert own.ref == other.ref
            step = compare_views(own, other)
            found.mine_only += step.mine_only
            found.theirs_only += step.theirs_only
            found.repeated += step.repeated
            for child in step.descend:
                assert child.level == own.ref.level + 1 <= DEPTH
                if other.listed:
                    queue.append((own.child_view(child) if own.listed else view(mine, child), other.child_view(child)))
                else:
                    pending.append(child)
    return found


def expected_difference(
    mine: Sequence[ReconciledBlock], theirs: Sequence[ReconciledBlock]
) -> tuple[Counter[ReconciledBlock], Counter[ReconciledBlock], set[tuple[ReconciledBlock, int, int]]]:
    ours, others = Counter(mine), Counter(theirs)
    mine_only = Counter({b: n for b, n in ours.items() if b not in others})
    theirs_only = Counter({b: n for b, n in others.items() if b not in ours})
    repeated = {(b, ours[b], others[b]) for b in ours.keys() & others.keys() if ours[b] != others[b]}
    return mine_only, theirs_only, repeated


MUTATIONS: dict[str, Callable[[ReconciledBlock], ReconciledBlock]] = {
    "quantity": lambda b: dataclasses.replace(b, serial_end=b.serial_end - 1),
    "vintage": lambda b: dataclasses.replace(b, vintage=b.vintage - 10),  # moves it to another group
    "first transfer": lambda b: dataclasses.replace(b, first_transferred=not b.first_transferred),
    "attributes": lambda b: dataclasses.replace(b, cooperative_approach="CA0009"),
}


@st.composite
def two_sides(draw: st.DrawFn) -> tuple[list[ReconciledBlock], list[ReconciledBlock]]:
    """A shared base (large enough that nodes are answered with their children) and what each side changed."""
    size = draw(st.integers(min_value=0, max_value=160))
    base = [block(i) for i in range(size)]
    sides = []
    for side in range(2):
        blocks = list(base)
        indexes = st.integers(min_value=0, max_value=max(size - 1, 0))
        if size:
            for i in sorted(set(draw(st.lists(indexes, max_size=6))), reverse=True):
                del blocks[i]
        for _ in range(draw(st.integers(min_value=0, max_value=4))):
            if blocks:
                where = draw(st.integers(min_value=0, max_value=len(blocks) - 1))
                blocks[where] = MUTATIONS[draw(st.sampled_from(sorted(MUTATIONS)))](blocks[where])
        if blocks:
            for i in draw(st.lists(st.integers(min_value=0, max_value=len(blocks) - 1), max_size=3)):
                blocks.append(blocks[i])  # the same movement recorded twice
        blocks += [block(1000 + 10 * side + i) for i in range(draw(st.integers(min_value=0, max_value=4)))]
        sides.append(draw(st.permutations(blocks)))
    return sides[0], sides[1]


@settings(max_examples=60, deadline=None)
@given(two_sides())
def test_the_descent_finds_exactly_the_multiset_difference(sides: tuple[list[ReconciledBlock], ...]) -> None:
    mine, theirs = sides
    found = descend(mine, theirs)
    mine_only, theirs_only, repeated = expected_difference(mine, theirs)
    assert Counter(found.mine_only) == mine_only
    assert Counter(found.theirs_only) == theirs_only
    assert sorted(found.repeated) == sorted(repeated)
    assert len(found.repeated) == len(repeated)  # each repeated block is reported once
    if Counter(mine) == Counter(theirs):
        assert found == Descent([], [], [], found.asked)


def test_the_descent_asks_for_few_nodes_when_few_blocks_differ() -> None:
    base = [block(i) for i in range(2000)]
    theirs = [*base[:1000], MUTATIONS["quantity"](base[1000]), *base[1001:]]
    found = descend(base, theirs)
    assert (found.mine_only, found.theirs_only) == ([base[1000]], [theirs[1000]])
    # Two groups of 1000 blocks: only the root of the group the block is in differs, and one node per level
    # below it at most, not the thousands of nodes of the tree.
    assert found.asked <= 2 * (DEPTH + 1)


def test_compare_views_of_a_bucket_that_is_not_listed_is_refused() -> None:
    ref = NodeRef(block(0).group, DEPTH, 0)
    with pytest.raises(ValueError, match="bucket"):
        compare_views(NodeView(ref, Totals(1, 1, bytes(32))), NodeView(ref, Totals()))
    assert should_list(DEPTH, Totals(10**6, 10**6, bytes(32)))
    assert should_list(0, Totals(LIST_BELOW, 1, bytes(32))) and not should_list(0, Totals(LIST_BELOW + 1, 1, bytes(32)))


def test_node_refs_and_group_keys() -> None:
    group = GroupKey("CCER", "CN-CCER", 2025, "CHN->CHE", "NDC")
    assert GroupKey.from_text(group.text()) == group
    root = NodeRef(group, 0, 0)
    assert [c.prefix for c in root.children()] == list(range(16))
    assert NodeRef(group, DEPTH, 5).children() == []
    b = block(0, vintage=2025)
    assert root.holds(b) and NodeRef(group, DEPTH, b.bucket).holds(b)
    assert not NodeRef(group, DEPTH, b.bucket ^ 1).holds(b)
    assert not NodeRef(dataclasses.replace(group, vintage=2024), 0, 0).holds(b)


# -- pairing and classifying -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pairing:
    name: str
    requester: tuple[ReconciledBlock, ...]
    responder: tuple[ReconciledBlock, ...]
    expected: tuple[tuple[DifferenceKind, str, tuple[str, ...]], ...]


B = block(4)  # of transfer t1
PAIRINGS = [
    Pairing(
        "quantity",
        (B,),
        (dataclasses.replace(B, serial_end=B.serial_end - 1),),
        ((DifferenceKind.QUANTITY, "t1", ("serial_end",)),),
    ),
    Pairing("vintage", (B,), (dataclasses.replace(B, vintage=1990),), ((DifferenceKind.VINTAGE, "t1", ("vintage",)),)),
    Pairing(
        "first transferred",
        (B,),
        (dataclasses.replace(B, first_transferred=False),),
        ((DifferenceKind.FIRST_TRANSFER, "t1", ("first_transferred",)),),
    ),
    Pairing(
        "first transferring party",
        (B,),
        (dataclasses.replace(B, first_transferring_party="CHE"),),
        ((DifferenceKind.FIRST_TRANSFER, "t1", ("first_transferring_party",)),),
    ),
    Pairing(
        "attributes",
        (B,),
        (dataclasses.replace(B, cooperative_approach="CA0002", purpose="OIMP"),),
        ((DifferenceKind.ATTRIBUTES, "t1", ("cooperative_approach", "purpose")),),
    ),
    Pairing(
        "quantity names the pair before vintage",
        (B,),
        (dataclasses.replace(B, serial_end=B.serial_end + 5, vintage=1990),),
        ((DifferenceKind.QUANTITY, "t1", ("serial_end", "vintage")),),
    ),
    Pairing("missing at the responder", (B,), (), ((DifferenceKind.MISSING_AT_RESPONDER, "t1", ()),)),
    Pairing("missing at the requester", (), (B,), ((DifferenceKind.MISSING_AT_REQUESTER, "t1", ()),)),
    Pairing(
        "blocks of other identities are not paired",
        (B,),
        (dataclasses.replace(B, serial_start=B.serial_start + 1),),
        ((DifferenceKind.MISSING_AT_RESPONDER, "t1", ()), (DifferenceKind.MISSING_AT_REQUESTER, "t1", ())),
    ),
    Pairing(
        "several, in order of identity",
        (block(9), block(0)),
        (dataclasses.replace(block(0), vintage=1990), block(5)),
        (
            (DifferenceKind.VINTAGE, "t0", ("vintage",)),
            (DifferenceKind.MISSING_AT_REQUESTER, "t1", ()),
            (DifferenceKind.MISSING_AT_RESPONDER, "t2", ()),
        ),
    ),
    Pairing("nothing", (), (), ()),
]


@pytest.mark.parametrize("case", PAIRINGS, ids=[c.name for c in PAIRINGS])
def test_pair_differences(case: Pairing) -> None:
    differences = pair_differences(case.requester, case.responder)
    assert tuple((d.kind, d.transfer_id, d.fields) for d in differences) == case.expected
    # Every block given comes back exactly once, on its side.
    assert Counter(b for d in differences for b in d.requester) == Counter(case.requester)
    assert Counter(b for d in differences for b in d.responder) == Counter(case.responder)


def test_a_repeated_block_is_adjusted_twice() -> None:
    difference = repeated_difference(B, 1, 2)
    assert (difference.kind, difference.transfer_id, difference.fields) == (
        DifferenceKind.ADJUSTED_TWICE,
        "t1",
        ("times recorded",),
    )
    assert (difference.requester, difference.responder) == ((B,), (B, B))
    assert difference.blocks == (B, B, B)


MISSING_HERE = Difference(DifferenceKind.MISSING_AT_RESPONDER, "t1", (B,), ())
MISSING_THERE = Difference(DifferenceKind.MISSING_AT_REQUESTER, "t1", (), (B,))
QUANTITY = Difference(DifferenceKind.QUANTITY, "t1", (B,), (B,), ("serial_end",))
STATE_OF = Difference(DifferenceKind.STATE, "t1", (B,), (), ("state",))
STATE_THERE = Difference(DifferenceKind.STATE, "t1", (), (B,), ("state",))

V = TransferView
CLASSIFY = [
    # (name, difference, requester's view, responder's view, expected)
    ("missing at responder, open there: in flight", MISSING_HERE, V.COMPLETED, V.OPEN, None),
    ("missing at responder, ended there: state", MISSING_HERE, V.COMPLETED, V.ENDED, STATE_OF),
    ("missing at responder, unknown there", MISSING_HERE, V.COMPLETED, V.UNKNOWN, MISSING_HERE),
    ("missing at responder, completed there", MISSING_HERE, V.COMPLETED, V.COMPLETED, MISSING_HERE),
    ("missing at responder, the requester's own view does not matter", MISSING_HERE, V.OPEN, V.UNKNOWN, MISSING_HERE),
    ("missing at requester, open here: in flight", MISSING_THERE, V.OPEN, V.COMPLETED, None),
    ("missing at requester, ended here: state", MISSING_THERE, V.ENDED, V.COMPLETED, STATE_THERE),
    ("missing at requester, unknown here", MISSING_THERE, V.UNKNOWN, V.COMPLETED, MISSING_THERE),
    ("a quantity stays a quantity, whatever the states", QUANTITY, V.ENDED, V.OPEN, QUANTITY),
]


@pytest.mark.parametrize(("name", "difference", "mine", "theirs", "expected"), CLASSIFY, ids=[c[0] for c in CLASSIFY])
def test_classify(
    name: str, difference: Difference, mine: TransferView, theirs: TransferView, expected: Difference | None
) -> None:
    assert classify(difference, mine, theirs) == expected


def test_status_of_the_differences() -> None:
    assert status_of([]) is Status.CONSISTENT
    assert status_of([QUANTITY]) is Status.BLOCKS_INCONSISTENT
    assert {s for s in Status if s.freezes} == {Status.BLOCKS_INCONSISTENT, Status.MANUAL_INTERVENTION_REQUIRED}
    assert [s for s in Status if not s.is_final] == [Status.RUNNING]


# -- which ledger entries count -----------------------------------------------------------------------------

SPACE = SerialSpace("CCER", "CN-CCER")


def entry(
    action_type: ActionType,
    subtype: str = "",
    transferring: str = "",
    acquiring: str = "",
    *,
    first_transferred: bool = True,
) -> LedgerEntry:
    unit = UnitBlock(
        space=SPACE,
        start=11,
        end=20,
        vintage=2025,
        first_transferred=first_transferred,
        first_transferring_party="CHN",
        cooperative_approach="CA0001",
        authorization_id="CHN-A-0001",
    )
    return LedgerEntry(
        entry_id=1,
        action_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        action_type=action_type,
        transfer_id="t-1",
        block=unit,
        cooperative_approach="CA0001",
        authorization_id="CHN-A-0001",
        first_transferring_party="CHN",
        transferring_party=transferring,
        acquiring_party=acquiring,
        purpose=Purpose.NDC,
        action_subtype=subtype,
    )


FIRST_TO_PARTY = ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY.value
ENTRIES = [
    # (name, entry, party, partner or None)
    ("first transfer to another Party", entry(ActionType.FIRST_TRANSFER, FIRST_TO_PARTY, "CHN", "CHE"), "CHN", "CHE"),
    (
        "first transfer at authorization",
        entry(ActionType.FIRST_TRANSFER, ActionSubtype.AUTHORIZATION.value, "CHN"),
        "CHN",
        None,
    ),
    ("first transfer at issuance", entry(ActionType.FIRST_TRANSFER, ActionSubtype.ISSUANCE.value, "CHN"), "CHN", None),
    ("transfer out", entry(ActionType.TRANSFER, "", "CHE", "CHN"), "CHE", "CHN"),
    ("transfer of another Party", entry(ActionType.TRANSFER, "", "CHE", "CHN"), "CHN", None),
    ("transfer to itself", entry(ActionType.TRANSFER, "", "CHN", "CHN"), "CHN", None),
    ("transfer without an acquiring Party", entry(ActionType.TRANSFER, "", "CHN", ""), "CHN", None),
    ("acquisition", entry(ActionType.ACQUISITION, "", "CHN", "CHE"), "CHE", "CHN"),
    ("acquisition by another Party", entry(ActionType.ACQUISITION, "", "CHN", "CHE"), "CHN", None),
    ("acquisition from nobody", entry(ActionType.ACQUISITION, "", "", "CHE"), "CHE", None),
    ("use", entry(ActionType.USE, ActionSubtype.USE_OR_CANCELLATION.value, "", ""), "CHE", None),
    ("cancellation", entry(ActionType.CANCELLATION, ActionSubtype.OMGE_CANCELLATION.value), "CHN", None),
    (
        "voluntary cancellation",
        entry(ActionType.VOLUNTARY_CANCELLATION, ActionSubtype.OTHER_CANCELLATIONS.value),
        "CHN",
        None,
    ),
    ("authorization", entry(ActionType.AUTHORIZATION, ActionSubtype.AUTHORIZATION.value, "CHN"), "CHN", None),
]


@pytest.mark.parametrize(("name", "ledger_entry", "party", "partner"), ENTRIES, ids=[c[0] for c in ENTRIES])
def test_reconciled_block_of_a_ledger_entry(
    name: str, ledger_entry: LedgerEntry, party: str, partner: str | None
) -> None:
    found = reconciled_block(ledger_entry, party)
    if partner is None:
        assert found is None
        return
    assert found is not None
    counterpart, leaf = found
    assert counterpart == partner
    assert leaf == ReconciledBlock(
        transfer_id="t-1",
        transferring_party=ledger_entry.transferring_party,
        acquiring_party=ledger_entry.acquiring_party,
        unit_kind="CCER",
        issuing_registry="CN-CCER",
        issuance="",
        serial_start=11,
        serial_end=20,
        vintage=2025,
        cooperative_approach="CA0001",
        authorization_id="CHN-A-0001",
        purpose="NDC",
        first_transferred=True,
        first_transferring_party="CHN",
    )


def test_both_sides_derive_the_same_block_from_a_departure_and_its_acquisition() -> None:
    # The departing side's first transfer is what makes the units first transferred: its block may not say so
    # yet, the acquiring side's does.
    departure = entry(ActionType.FIRST_TRANSFER, FIRST_TO_PARTY, "CHN", "CHE", first_transferred=False)
    arrival = entry(ActionType.ACQUISITION, "", "CHN", "CHE", first_transferred=True)
    out, into = reconciled_block(departure, "CHN"), reconciled_block(arrival, "CHE")
    assert out is not None and into is not None
    assert (out[0], into[0]) == ("CHE", "CHN")
    assert out[1] == into[1] and out[1].first_transferred
    # A plain transfer whose units were never first transferred is recorded as such on both sides.
    plain = entry(ActionType.TRANSFER, "", "CHN", "CHE", first_transferred=False)
    found = reconciled_block(plain, "CHN")
    assert found is not None and not found[1].first_transferred
