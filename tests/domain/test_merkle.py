"""The RFC 9162 Merkle tree over stored complete subtrees (gateway.domain.merkle).

Published vectors, property tests against the RFC's recursive definitions, exact read sets, hostile input.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.merkle import (
    EMPTY_ROOT,
    MAX_TREE_SIZE,
    Node,
    Row,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    nodes_for_append,
    nodes_needed_for_append,
    nodes_needed_for_consistency,
    nodes_needed_for_inclusion,
    nodes_needed_for_root,
    nodes_to_add,
    root_from_nodes,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# --------------------------------------------------------------------------------------------------------
# Published RFC 6962 / RFC 9162 vectors (the two RFCs hash identically with SHA-256).
# Source: github.com/transparency-dev/merkle
#   testonly/constants.go (commit 582a6ad190b6848f1d26f8bf08ddef29955d9db1): LeafInputs, NodeHashes, RootHashes
#   proof/verify_test.go (commit 02194e9afb6c1d95b5381350007963aa70fff472): inclusionProofs, consistencyProofs
# --------------------------------------------------------------------------------------------------------

LEAF_INPUTS: tuple[bytes, ...] = tuple(
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
)

# NodeHashes(): every complete subtree of the 8-leaf tree, indexed [level][index].
NODE_HASHES: tuple[tuple[bytes, ...], ...] = tuple(
    tuple(bytes.fromhex(h) for h in level)
    for level in (
        (
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
            "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
        ),
        (
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        ),
        (
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
        ("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",),
    )
)

# RootHashes(): the root of the first n leaves, n = 0..8.
ROOTS: tuple[bytes, ...] = tuple(
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
)

# inclusionProofs: (leaf index, tree size, path). The Go table numbers leaves from 1; these are 0-based.
INCLUSION_VECTORS: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    (0, 1, ()),
    (
        0,
        8,
        (
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        (
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, ("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",)),
    (
        1,
        5,
        (
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
)

# consistencyProofs: (old size, new size, proof).
CONSISTENCY_VECTORS: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    (1, 1, ()),
    (
        1,
        8,
        (
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        (
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        (
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        (
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
)

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


class Storage:
    """Stored complete-subtree nodes in a dict, with a ``get`` that records its reads.

    ``get`` also checks the node is complete in the tree of ``size`` leaves, the only nodes a tree of that
    size has stored.
    """

    def __init__(self) -> None:
        self.nodes: dict[Node, bytes] = {}
        self.size = 0
        self.reads: list[Node] = []

    def get(self, level: int, index: int) -> bytes:
        assert level >= 0 and index >= 0
        assert (index + 1) << level <= self.size, f"read ({level}, {index}) outside a tree of {self.size}"
        self.reads.append((level, index))
        return self.nodes[(level, index)]

    def store(self, rows: Sequence[Row], count: int) -> None:
        for level, index, value in rows:
            assert (level, index) not in self.nodes, "a node is stored twice"
            self.nodes[(level, index)] = value
        self.size += count

    def take_reads(self) -> list[Node]:
        reads, self.reads = self.reads, []
        return reads

    def reading_at(self, size: int) -> Storage:
        """A view of the first ``size`` leaves: same nodes, reads limited to a tree of ``size``."""
        view = Storage()
        view.nodes = self.nodes
        view.size = size
        return view


def entries(n: int) -> list[bytes]:
    """``n`` distinct entries (so every subtree hash differs from every other)."""
    return [b"entry-%d" % i for i in range(n)]


def build(leaves: Sequence[bytes]) -> Storage:
    """Storage for ``leaves`` (leaf hashes), appended one at a time with ``nodes_to_add``."""
    storage = Storage()
    for leaf in leaves:
        rows = nodes_to_add(storage.size, leaf, storage.get)
        assert storage.take_reads() == nodes_needed_for_append(storage.size, 1)
        storage.store(rows, 1)
    return storage


def hashed(n: int) -> list[bytes]:
    return [leaf_hash(e) for e in entries(n)]


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) written as RFC 9162 section 2.1.3.1 defines it, over leaf hashes."""
    n = len(d)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, d[:k]), root_of(d[k:])]
    return [*ref_path(m - k, d[k:]), root_of(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) written as RFC 9162 section 2.1.4.1 defines it."""
    n = len(d)
    if m == n:
        return [] if whole else [root_of(d)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*ref_subproof(m, d[:k], whole), root_of(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), root_of(d[:k])]


def flip(value: bytes, bit: int = 3) -> bytes:
    return bytes([value[0] ^ (1 << bit), *value[1:]])


def consistency_shape(old: int, new: int, proof_len: int) -> tuple[bool, tuple[bool, ...]] | None:
    """The control flow RFC 9162 section 2.1.4.2 takes for these sizes and a proof of ``proof_len`` hashes.

    ``None`` when the sizes fail on their own (a trivial case, or a proof of the wrong length); otherwise
    whether ``first_hash`` is prepended and, per subsequent path value, whether it hashes on the left. The
    verifier binds the sizes only through this shape: two size pairs with the same shape compute the same
    ``fr`` and ``sr`` from the same proof, whatever the sizes.
    """
    if not 0 < old < new:
        return None
    prepended = old & (old - 1) == 0
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    branches: list[bool] = []
    for _ in range(proof_len + prepended - 1):
        if sn == 0:
            return None
        left = bool(fn & 1 or fn == sn)
        branches.append(left)
        if left:
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        fn, sn = fn >> 1, sn >> 1
    return (prepended, tuple(branches)) if sn == 0 else None


# --------------------------------------------------------------------------------------------------------
# Hashing and the published vectors
# --------------------------------------------------------------------------------------------------------


def test_empty_root_is_sha256_of_nothing() -> None:
    assert ROOTS[0] == EMPTY_ROOT
    assert root_of([]) == EMPTY_ROOT
    assert root_from_nodes(0, Storage().get) == EMPTY_ROOT
    assert nodes_needed_for_root(0) == []


def test_leaf_and_node_hashes_match_the_vectors() -> None:
    assert [leaf_hash(e) for e in LEAF_INPUTS] == list(NODE_HASHES[0])
    for level in range(1, len(NODE_HASHES)):
        for index, value in enumerate(NODE_HASHES[level]):
            below = NODE_HASHES[level - 1]
            assert node_hash(below[2 * index], below[2 * index + 1]) == value


@pytest.mark.parametrize("size", range(9))
def test_roots_match_the_vectors(size: int) -> None:
    storage = build([leaf_hash(e) for e in LEAF_INPUTS[:size]])
    assert root_of(NODE_HASHES[0][:size]) == ROOTS[size]
    assert root_from_nodes(size, storage.get) == ROOTS[size]
    assert storage.take_reads() == nodes_needed_for_root(size)
    assert len(nodes_needed_for_root(size)) == size.bit_count()


def test_stored_nodes_are_the_published_complete_subtrees() -> None:
    storage = build([leaf_hash(e) for e in LEAF_INPUTS])
    expected = {(level, index): value for level, row in enumerate(NODE_HASHES) for index, value in enumerate(row)}
    assert storage.nodes == expected


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION_VECTORS)
def test_inclusion_vectors(index: int, size: int, path: tuple[str, ...]) -> None:
    expected = [bytes.fromhex(h) for h in path]
    leaf, root = NODE_HASHES[0][index], ROOTS[size]
    storage = build(NODE_HASHES[0]).reading_at(size)
    assert inclusion_proof(index, size, storage.get) == expected
    assert storage.take_reads() == nodes_needed_for_inclusion(index, size)
    assert verify_inclusion(index, size, leaf, expected, root)

    # The corruptions of transparency-dev/merkle's corruptInclusionProof.
    probes: list[tuple[int, int, bytes, list[bytes], bytes]] = [
        (index - 1, size, leaf, expected, root),
        (index + 1, size, leaf, expected, root),
        (index ^ 2, size, leaf, expected, root),
        (index, size * 2, leaf, expected, root),
        (index, size // 2, leaf, expected, root),
        (index, size, SOME_HASH, expected, root),
        (index, size, leaf, expected, EMPTY_ROOT),
        (index, size, leaf, expected, SOME_HASH),
        (index, size, leaf, [*expected, b""], root),
        (index, size, leaf, [*expected, root], root),
        (index, size, leaf, [b"", *expected], root),
        (index, size, leaf, [root, *expected], root),
    ]
    probes += [(index, size, leaf, [*expected[:i], flip(p), *expected[i + 1 :]], root) for i, p in enumerate(expected)]
    if expected:
        probes.append((index, size, leaf, expected[:-1], root))
    if len(expected) > 1:
        probes.append((index, size, leaf, [expected[0], SOME_HASH, *expected[1:]], root))
    for probe in probes:
        assert not verify_inclusion(*probe), probe


@pytest.mark.parametrize(("old", "new", "path"), CONSISTENCY_VECTORS)
def test_consistency_vectors(old: int, new: int, path: tuple[str, ...]) -> None:
    expected = [bytes.fromhex(h) for h in path]
    old_root, new_root = ROOTS[old], ROOTS[new]
    storage = build(NODE_HASHES[0]).reading_at(new)
    assert consistency_proof(old, new, storage.get) == expected
    assert storage.take_reads() == nodes_needed_for_consistency(old, new)
    assert verify_consistency(old, new, old_root, new_root, expected)
    if not expected:
        return

    # The corruptions of transparency-dev/merkle's corruptConsistencyProof.
    probes: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (old - 1, new, old_root, new_root, expected),
        (old + 1, new, old_root, new_root, expected),
        (old ^ 2, new, old_root, new_root, expected),
        (old, new * 2, old_root, new_root, expected),
        (old, new // 2, old_root, new_root, expected),
        (old, new, SOME_HASH, new_root, expected),
        (old, new, old_root, SOME_HASH, expected),
        (old, new, new_root, old_root, expected),
        (old, new, old_root, new_root, []),
        (old, new, old_root, new_root, [*expected, b""]),
        (old, new, old_root, new_root, [*expected, old_root]),
        (old, new, old_root, new_root, [*expected, new_root]),
        (old, new, old_root, new_root, [b"", *expected]),
        (old, new, old_root, new_root, [old_root, *expected]),
        (old, new, old_root, new_root, [new_root, *expected]),
        (old, new, old_root, new_root, [expected[0], *expected]),
        (old, new, old_root, new_root, expected[:-1]),
    ]
    probes += [
        (old, new, old_root, new_root, [*expected[:i], flip(p, 4), *expected[i + 1 :]]) for i, p in enumerate(expected)
    ]
    for probe in probes:
        assert not verify_consistency(*probe), probe


ROOT_1, ROOT_2 = leaf_hash(b"don't care 1"), leaf_hash(b"don't care 2")


@pytest.mark.parametrize(
    ("old", "new", "old_root", "new_root", "proof", "valid"),
    [
        # After transparency-dev/merkle TestVerifyConsistency, with 32-byte roots.
        (0, 0, ROOT_1, ROOT_2, [], False),
        (1, 1, ROOT_1, ROOT_2, [], False),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], True),
        (0, 1, EMPTY_ROOT, ROOT_2, [], True),
        (1, 1, ROOT_2, ROOT_2, [], True),
        (1, 0, ROOT_1, ROOT_2, [], False),
        (2, 1, ROOT_1, ROOT_2, [], False),
        (1, 2, ROOT_1, ROOT_2, [], False),
        (0, 0, EMPTY_ROOT, ROOT_2, [], False),
        (1, 1, EMPTY_ROOT, ROOT_2, [], False),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], False),
        # The empty tree's root is MTH({}); no other hash is a tree of size 0.
        (0, 1, ROOT_1, ROOT_2, [], False),
        (0, 0, ROOT_1, ROOT_1, [], False),
    ],
)
def test_verify_consistency_trivial_sizes(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes], valid: bool
) -> None:
    assert verify_consistency(old, new, old_root, new_root, proof) is valid


def test_verify_inclusion_single_entry() -> None:
    # After transparency-dev/merkle TestVerifyInclusionSingleEntry: a 1-leaf tree's root is its leaf hash.
    value = leaf_hash(b"data")
    assert verify_inclusion(0, 1, value, [], value)
    assert not verify_inclusion(0, 1, value, [], b"")
    assert not verify_inclusion(0, 1, b"", [], value)
    assert not verify_inclusion(0, 1, b"", [], b"")
    for index, size in [(0, 0), (1, 0), (2, 1)]:
        assert not verify_inclusion(index, size, SOME_HASH, [], EMPTY_ROOT)
        assert not verify_inclusion(index, size, SOME_HASH, [], SOME_HASH)


# --------------------------------------------------------------------------------------------------------
# Input validation of the computing functions
# --------------------------------------------------------------------------------------------------------


def test_proof_arguments_are_checked() -> None:
    get = build(hashed(8)).get
    with pytest.raises(ValueError, match="not in a tree of 8"):
        inclusion_proof(8, 8, get)
    with pytest.raises(ValueError, match="not in a tree of 0"):
        inclusion_proof(0, 0, get)
    with pytest.raises(ValueError, match="leaf index must not be negative"):
        inclusion_proof(-1, 8, get)
    with pytest.raises(ValueError, match="tree size must not be negative"):
        inclusion_proof(0, -1, get)
    with pytest.raises(ValueError, match="old tree size 5 exceeds new tree size 4"):
        consistency_proof(5, 4, get)
    with pytest.raises(ValueError, match="old tree size must not be negative"):
        consistency_proof(-1, 4, get)
    with pytest.raises(ValueError, match="new tree size must not be negative"):
        consistency_proof(0, -1, get)
    with pytest.raises(ValueError, match="tree size must not be negative"):
        root_from_nodes(-1, get)
    with pytest.raises(ValueError, match="tree size must not be negative"):
        nodes_to_add(-1, SOME_HASH, get)
    with pytest.raises(ValueError, match="leaf hash is 32 bytes"):
        nodes_to_add(8, b"short", get)
    with pytest.raises(ValueError, match="leaf hash is 32 bytes"):
        nodes_for_append(8, [SOME_HASH, b"short"], get)
    with pytest.raises(ValueError, match="not in a tree of 3"):
        nodes_needed_for_inclusion(3, 3)
    with pytest.raises(ValueError, match="exceeds"):
        nodes_needed_for_consistency(4, 3)
    with pytest.raises(ValueError, match="tree size must not be negative"):
        nodes_needed_for_root(-1)
    with pytest.raises(ValueError, match="leaf count must not be negative"):
        nodes_needed_for_append(3, -1)


def test_trivial_consistency_proofs_are_empty() -> None:
    storage = build(hashed(5))
    for old, new in [(0, 0), (0, 5), (3, 3), (5, 5)]:
        assert consistency_proof(old, new, storage.get) == []
        assert nodes_needed_for_consistency(old, new) == []
    assert storage.reads == []


# --------------------------------------------------------------------------------------------------------
# Hostile input to the verifiers: False, never an exception
# --------------------------------------------------------------------------------------------------------

HUGE = 2**64


@pytest.mark.parametrize(
    ("index", "size", "leaf", "proof", "root"),
    [
        (0, HUGE, SOME_HASH, [SOME_HASH] * 64, SOME_HASH),
        (HUGE - 1, HUGE, SOME_HASH, [SOME_HASH] * 64, SOME_HASH),
        (0, MAX_TREE_SIZE, SOME_HASH, [SOME_HASH] * 64, SOME_HASH),
        (0, MAX_TREE_SIZE, SOME_HASH, [SOME_HASH] * 10_000, SOME_HASH),
        (2**1000, 2**1001, SOME_HASH, [SOME_HASH], SOME_HASH),
        (-1, 8, SOME_HASH, [SOME_HASH] * 3, SOME_HASH),
        (0, -8, SOME_HASH, [SOME_HASH] * 3, SOME_HASH),
        (-1, -1, SOME_HASH, [], SOME_HASH),
        (0, 8, SOME_HASH, [SOME_HASH] * 2, SOME_HASH),
        (0, 8, SOME_HASH, [SOME_HASH] * 4, SOME_HASH),
        (0, 8, SOME_HASH, [SOME_HASH] * 1_000_000, SOME_HASH),
        (0, 8, SOME_HASH, [SOME_HASH, SOME_HASH[:31], SOME_HASH], SOME_HASH),
        (0, 8, SOME_HASH, [SOME_HASH, SOME_HASH + b"\x00", SOME_HASH], SOME_HASH),
        (0, 8, SOME_HASH, [SOME_HASH, "not bytes", SOME_HASH], SOME_HASH),
        (0, 8, SOME_HASH, [SOME_HASH, None, SOME_HASH], SOME_HASH),
        (0, 8, SOME_HASH, SOME_HASH, SOME_HASH),
        (0, 8, SOME_HASH, None, SOME_HASH),
        (0, 2, SOME_HASH, "x" * 32, SOME_HASH),
        (0, 1, SOME_HASH[:31], [], SOME_HASH[:31]),
        (0, 1, None, [], None),
        (0.0, 1, SOME_HASH, [], SOME_HASH),
        (False, True, SOME_HASH, [], SOME_HASH),
        ("0", "1", SOME_HASH, [], SOME_HASH),
        (None, None, SOME_HASH, [], SOME_HASH),
    ],
)
def test_verify_inclusion_rejects_hostile_input(
    index: object, size: object, leaf: object, proof: object, root: object
) -> None:
    assert verify_inclusion(index, size, leaf, proof, root) is False  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("old", "new", "old_root", "new_root", "proof"),
    [
        (1, HUGE, SOME_HASH, SOME_HASH, [SOME_HASH] * 64),
        (HUGE - 1, HUGE, SOME_HASH, SOME_HASH, [SOME_HASH] * 64),
        (HUGE, HUGE, SOME_HASH, SOME_HASH, []),
        (0, HUGE, EMPTY_ROOT, SOME_HASH, []),
        (1, MAX_TREE_SIZE, SOME_HASH, SOME_HASH, [SOME_HASH] * 64),
        (3, MAX_TREE_SIZE, SOME_HASH, SOME_HASH, [SOME_HASH] * 100_000),
        (2**1000, 2**1001, SOME_HASH, SOME_HASH, [SOME_HASH]),
        (-1, 8, SOME_HASH, SOME_HASH, [SOME_HASH]),
        (-8, -8, SOME_HASH, SOME_HASH, []),
        (0, -1, EMPTY_ROOT, SOME_HASH, []),
        (8, 7, SOME_HASH, SOME_HASH, [SOME_HASH]),
        (6, 8, SOME_HASH, SOME_HASH, [SOME_HASH] * 2),
        (6, 8, SOME_HASH, SOME_HASH, [SOME_HASH] * 4),
        (6, 8, SOME_HASH, SOME_HASH, [SOME_HASH] * 1_000_000),
        (6, 8, SOME_HASH, SOME_HASH, [SOME_HASH, SOME_HASH[:31], SOME_HASH]),
        (6, 8, SOME_HASH, SOME_HASH, [b"", SOME_HASH, SOME_HASH]),
        (4, 8, SOME_HASH, SOME_HASH, [b"x" * 33]),
        (6, 8, SOME_HASH, SOME_HASH, [SOME_HASH, "not bytes", SOME_HASH]),
        (6, 8, SOME_HASH, SOME_HASH, [None, None, None]),
        (6, 8, SOME_HASH, SOME_HASH, SOME_HASH),
        (6, 8, SOME_HASH, SOME_HASH, None),
        (6, 8, SOME_HASH, SOME_HASH, "x" * 96),
        (4, 4, SOME_HASH[:31], SOME_HASH[:31], []),
        (4, 8, SOME_HASH[:31], SOME_HASH, [SOME_HASH]),
        (4, 8, None, None, [SOME_HASH]),
        (1.0, 2, SOME_HASH, SOME_HASH, [SOME_HASH]),
        (True, 2, SOME_HASH, SOME_HASH, [SOME_HASH]),
        (None, 2, SOME_HASH, SOME_HASH, [SOME_HASH]),
    ],
)
def test_verify_consistency_rejects_hostile_input(
    old: object, new: object, old_root: object, new_root: object, proof: object
) -> None:
    assert verify_consistency(old, new, old_root, new_root, proof) is False  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------------

MAX_SIZE = 300
sizes = st.integers(1, MAX_SIZE)


@st.composite
def batches(draw: st.DrawFn, total: int) -> list[int]:
    """A random split of ``total`` into batch sizes (empty batches included)."""
    result: list[int] = []
    left = total
    while left:
        part = draw(st.integers(0, left))
        result.append(part)
        left -= part
    return result


@settings(max_examples=150)
@given(st.data(), st.integers(0, MAX_SIZE))
def test_batch_append_equals_single_appends_and_reads_only_what_it_announces(data: st.DataObject, size: int) -> None:
    leaves = hashed(size)
    single = build(leaves)

    batched = Storage()
    rows: list[Row] = []
    for count in data.draw(batches(size)):
        start = batched.size
        new_rows = nodes_for_append(start, leaves[start : start + count], batched.get)
        assert batched.take_reads() == nodes_needed_for_append(start, count)
        # The rows of the batch are the rows of its single appends, in the same order.
        replay = single.reading_at(start)
        expected: list[Row] = []
        for n in range(start, start + count):
            replay.size = n
            expected += nodes_to_add(n, leaves[n], replay.get)
        assert new_rows == expected
        batched.store(new_rows, count)
        rows += new_rows
        assert root_from_nodes(batched.size, batched.get) == root_of(leaves[: batched.size])
        batched.take_reads()

    assert batched.nodes == single.nodes
    # Exactly the complete subtrees are stored: sum over levels of floor(size / 2**level).
    assert len(rows) == sum(size >> level for level in range(size.bit_length()))
    # Leaf by leaf, bottom-up: the row order is (last leaf of the subtree, level).
    assert sorted(rows, key=lambda r: (((r[1] + 1) << r[0]) - 1, r[0])) == rows


@settings(max_examples=150)
@given(sizes)
def test_incremental_root_equals_reference_root(size: int) -> None:
    leaves = hashed(size)
    storage = build(leaves)
    for n in {size, size - 1, size // 2, 1}:
        view = storage.reading_at(n)
        assert root_from_nodes(n, view.get) == root_of(leaves[:n])
        assert view.take_reads() == nodes_needed_for_root(n)


@settings(max_examples=200)
@given(st.data(), sizes)
def test_inclusion_proofs_verify_and_bind_leaf_index_and_root(data: st.DataObject, size: int) -> None:
    leaves = hashed(size)
    storage = build(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    root = root_of(leaves)

    proof = inclusion_proof(index, size, storage.get)
    reads = storage.take_reads()
    assert reads == nodes_needed_for_inclusion(index, size)
    assert len(reads) <= 2 * size.bit_length()
    assert proof == ref_path(index, leaves)
    assert verify_inclusion(index, size, leaves[index], proof, root)

    other = data.draw(st.integers(-1, size).filter(lambda i: i != index), label="other index")
    assert not verify_inclusion(other, size, leaves[index], proof, root)
    assert not verify_inclusion(index, size, leaf_hash(b"another entry"), proof, root)
    assert not verify_inclusion(index, size, flip(leaves[index]), proof, root)
    if size > 1:
        assert not verify_inclusion(index, size, leaves[index ^ 1 if index ^ 1 < size else index - 1], proof, root)
    assert not verify_inclusion(index, size, leaves[index], proof, flip(root))
    assert not verify_inclusion(index, size, leaves[index], proof, root_of(leaves[:-1]) if size > 1 else SOME_HASH)
    for i, p in enumerate(proof):
        assert not verify_inclusion(index, size, leaves[index], [*proof[:i], flip(p), *proof[i + 1 :]], root)
    assert not verify_inclusion(index, size, leaves[index], [*proof, SOME_HASH], root)
    if proof:
        assert not verify_inclusion(index, size, leaves[index], proof[:-1], root)


@settings(max_examples=200)
@given(st.data(), sizes)
def test_consistency_proofs_verify_and_bind_roots_and_proof(data: st.DataObject, new: int) -> None:
    leaves = hashed(new)
    storage = build(leaves)
    old = data.draw(st.integers(0, new), label="old")
    old_root, new_root = root_of(leaves[:old]), root_of(leaves)

    proof = consistency_proof(old, new, storage.get)
    reads = storage.take_reads()
    assert reads == nodes_needed_for_consistency(old, new)
    assert len(reads) <= 2 * new.bit_length()
    assert proof == ([] if old in (0, new) else ref_subproof(old, leaves, True))
    assert verify_consistency(old, new, old_root, new_root, proof)

    assert not verify_consistency(old, new, flip(old_root), new_root, proof)
    assert not verify_consistency(old, new, SOME_HASH, new_root, proof)
    if old > 0:  # a tree is consistent with the empty tree whatever its root
        assert not verify_consistency(old, new, old_root, flip(new_root), proof)
    if old not in (0, new):
        assert not verify_consistency(old, new, old_root, root_of(leaves[:-1]), proof)
        assert not verify_consistency(old, new, new_root, old_root, proof)
    for i, p in enumerate(proof):
        assert not verify_consistency(old, new, old_root, new_root, [*proof[:i], flip(p, 4), *proof[i + 1 :]])
    assert not verify_consistency(old, new, old_root, new_root, [*proof, SOME_HASH])
    assert not verify_consistency(old, new, old_root, new_root, [SOME_HASH, *proof])
    if proof:
        assert not verify_consistency(old, new, old_root, new_root, proof[:-1])
        assert not verify_consistency(old, new, old_root, new_root, proof[1:])


@settings(max_examples=200)
@given(st.data(), st.integers(2, MAX_SIZE))
def test_consistency_proofs_bind_the_sizes_through_their_shape(data: st.DataObject, new: int) -> None:
    """A changed size fails unless RFC 9162 section 2.1.4.2 cannot tell it apart.

    The verifier sees the sizes only through the shape of the computation they prescribe (see
    ``consistency_shape``); e.g. the proof of 4 -> 5 (one hash, the fifth leaf) also verifies as 4 -> 6
    against the same two roots, which the verifier cannot distinguish. So: a changed size with another shape
    fails, one with the same shape passes, and a changed size with another proof length always fails.
    """
    leaves = hashed(new)
    storage = build(leaves)
    old = data.draw(st.integers(1, new - 1), label="old")
    old_root, new_root = root_of(leaves[:old]), root_of(leaves)
    proof = consistency_proof(old, new, storage.get)
    shape = consistency_shape(old, new, len(proof))
    assert shape is not None

    delta = st.integers(-3, 3) | st.sampled_from([old, -old, new, -new, MAX_TREE_SIZE])
    changed_old = old + data.draw(delta, label="old delta")
    changed_new = new + data.draw(delta, label="new delta")
    for o, n in {(changed_old, new), (old, changed_new), (changed_old, changed_new), (old ^ 2, new)} - {(old, new)}:
        verdict = verify_consistency(o, n, old_root, new_root, proof)
        if not (0 <= o <= n <= MAX_TREE_SIZE):
            assert not verdict
        else:
            assert verdict == (consistency_shape(o, n, len(proof)) == shape), (o, n)


def test_the_verifier_sees_sizes_only_through_their_shape() -> None:
    """RFC 9162 section 2.1.4.2 binds the sizes only through the shape of its computation.

    The proof for 4 -> 5 is the one hash of leaf 4; the verifier computes the same from it for 4 -> 6, 4 -> 7
    and 4 -> 8. Callers must therefore take the sizes from the signed tree heads, never from the proof.
    """
    leaves = hashed(8)
    storage = build(leaves)
    proof = consistency_proof(4, 5, storage.get)
    assert proof == [leaves[4]]
    old_root, new_root = root_of(leaves[:4]), root_of(leaves[:5])
    assert [n for n in range(5, 10) if verify_consistency(4, n, old_root, new_root, proof)] == [5, 6, 7, 8]
    assert [o for o in range(1, 5) if verify_consistency(o, 5, old_root, new_root, proof)] == [4]
