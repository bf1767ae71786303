"""The Merkle tree of RFC 9162 (Certificate Transparency 2.0) section 2.1, over stored complete subtrees.

Hashing (RFC 9162 section 2.1.1, with SHA-256)::

    MTH({})      = SHA-256()
    leaf hash    = SHA-256(0x00 || entry)
    node hash    = SHA-256(0x01 || left || right)

Storage model. A tree is kept as the hashes of its *complete (perfect) subtrees*: the node ``(level, index)``
is the hash of the perfect subtree over the leaves ``[index * 2**level, (index + 1) * 2**level)``; it exists
once the tree has at least ``(index + 1) * 2**level`` leaves and never changes afterwards, so the storage is
append-only. Appending leaf number ``n`` stores the leaf (level 0) and every perfect subtree it completes
(one per trailing one-bit of ``n``), two rows per leaf on average.

Any subtree hash the RFC needs, ``MTH(D[a:b])``, is over a range whose start is a multiple of the smallest
power of two ``>= b - a``; it splits into the perfect subtrees given by the binary digits of ``b - a``
(largest first), which are stored, and is their right fold ``node(s1, node(s2, ... node(s_{k-1}, s_k)))``.
So roots and proofs read O(log n) stored nodes and hash O(log n) times.

Reads. The accessor ``get(level, index) -> bytes`` is synchronous. A caller that reads from a database first
asks ``nodes_needed_for_*`` for the exact coordinates the computation will read, fetches them in one query,
and passes a dictionary lookup (``lambda level, index: rows[level, index]``) as ``get``. The computations below are
built on the same plans as the ``nodes_needed_for_*`` functions, so they read exactly those coordinates.

Verification (``verify_inclusion``, ``verify_consistency``) follows RFC 9162 sections 2.1.3.2 and 2.1.4.2
step by step, takes no storage, and returns ``False`` for any malformed input instead of raising.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "Node",
    "NodeGetter",
    "Row",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "nodes_for_append",
    "nodes_needed_for_append",
    "nodes_needed_for_consistency",
    "nodes_needed_for_inclusion",
    "nodes_needed_for_root",
    "nodes_to_add",
    "root_from_nodes",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

Node = tuple[int, int]
"""Coordinates ``(level, index)``: the perfect subtree over leaves ``[index << level, (index + 1) << level)``."""

Row = tuple[int, int, bytes]
"""A stored node: ``(level, index, hash)``."""

NodeGetter = Callable[[int, int], bytes]
"""Reads the stored hash of the complete subtree ``(level, index)``."""

HASH_SIZE = 32
"""Length in bytes of every hash (SHA-256)."""

MAX_TREE_SIZE = 2**64 - 1
"""Largest tree size or leaf index the verifiers accept: RFC 9162 carries both as ``uint64``."""

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""MTH({}), the root of the empty tree: SHA-256 of the empty string (RFC 9162 section 2.1.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(entry: bytes) -> bytes:
    """The leaf hash ``SHA-256(0x00 || entry)`` of one log entry (RFC 9162 section 2.1.1, MTH({d(0)}))."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The interior node hash ``SHA-256(0x01 || left || right)`` (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n > 1``): RFC 9162 section 2.1.1's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves, by the recursive definition of RFC 9162 section 2.1.1.

    The reference implementation: O(n) hashing and no storage. ``root_of([])`` is ``EMPTY_ROOT``.
    """

    def mth(lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 1:
            # MTH({d(0)}) = HASH(0x00 || d(0)): the leaf hash, which the caller has already computed.
            return leaf_hashes[lo]
        # MTH(D_n) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n])), k the largest power of two < n.
        k = _split_point(n)
        return node_hash(mth(lo, lo + k), mth(lo + k, hi))

    if not leaf_hashes:
        return EMPTY_ROOT  # MTH({}) = HASH()
    return mth(0, len(leaf_hashes))


# ------------------------------------------------------------------------------------------------------------
# Input checks of the computing (non-verifying) functions: they raise ValueError.
# ------------------------------------------------------------------------------------------------------------


def _check_size(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


def _check_leaf(leaf: bytes) -> None:
    if len(leaf) != HASH_SIZE:
        raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(leaf)}")


def _check_inclusion(index: int, size: int) -> None:
    _check_size("tree size", size)
    if index < 0:
        raise ValueError(f"leaf index must not be negative, got {index}")
    if index >= size:
        raise ValueError(f"leaf index {index} is not in a tree of {size} leaves")


def _check_consistency(old_size: int, new_size: int) -> None:
    _check_size("old tree size", old_size)
    _check_size("new tree size", new_size)
    if old_size > new_size:
        raise ValueError(f"old tree size {old_size} exceeds new tree size {new_size}")


# ------------------------------------------------------------------------------------------------------------
# Plans: which subtree ranges a computation hashes, and which stored nodes cover them.
# ------------------------------------------------------------------------------------------------------------

_Range = tuple[int, int]
"""A leaf range ``(start, count)`` whose start is a multiple of the smallest power of two >= count."""


def _range_nodes(start: int, count: int) -> list[Node]:
    """The stored perfect subtrees covering ``D[start:start+count]``, left to right (largest first).

    They follow the binary digits of ``count``; ``start`` is aligned, so every piece is a stored node.
    """
    nodes: list[Node] = []
    pos = start
    for level in range(count.bit_length() - 1, -1, -1):
        if count >> level & 1:
            nodes.append((level, pos >> level))
            pos += 1 << level
    return nodes


def _range_hash(start: int, count: int, get: NodeGetter) -> bytes:
    """MTH(D[start:start+count]) from stored perfect subtrees (``count > 0``).

    By RFC 9162 section 2.1.1 the range splits at the largest power of two below its size, whose left part
    is perfect; recursing on the right part yields the binary-digit decomposition, folded from the right.
    """
    hashes = [get(level, index) for level, index in _range_nodes(start, count)]
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def _inclusion_ranges(index: int, size: int) -> list[_Range]:
    """The subtrees whose hashes form PATH(index, D[size]) (RFC 9162 section 2.1.3.1), in proof order."""
    ranges: list[_Range] = []
    start, n, m = 0, size, index
    while n > 1:  # PATH(0, {d(0)}) = {}
        k = _split_point(n)
        if m < k:
            # PATH(m, D_n) = PATH(m, D[0:k]) : MTH(D[k:n])
            ranges.append((start + k, n - k))
            n = k
        else:
            # PATH(m, D_n) = PATH(m - k, D[k:n]) : MTH(D[0:k])
            ranges.append((start, k))
            start, n, m = start + k, n - k, m - k
    ranges.reverse()  # the deepest sibling comes first
    return ranges


def _consistency_ranges(old_size: int, new_size: int) -> list[_Range]:
    """The subtrees whose hashes form PROOF(old_size, D[new_size]) (RFC 9162 section 2.1.4.1), in order."""
    if old_size in (0, new_size):
        return []  # nothing to prove: the empty tree, or the same tree
    ranges: list[_Range] = []
    # PROOF(m, D_n) = SUBPROOF(m, D_n, true)
    start, n, m, whole = 0, new_size, old_size, True
    while m != n:
        k = _split_point(n)
        if m <= k:
            # SUBPROOF(m, D_n, b) = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            ranges.append((start + k, n - k))
            n = k
        else:
            # SUBPROOF(m, D_n, b) = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            ranges.append((start, k))
            start, n, m, whole = start + k, n - k, m - k, False
    if not whole:
        # SUBPROOF(m, D[m], false) = {MTH(D[m])}; with b = true it is {} (the verifier knows the old root).
        ranges.append((start, n))
    ranges.reverse()
    return ranges


def _nodes_of(ranges: Sequence[_Range]) -> list[Node]:
    # The ranges of one plan are disjoint, so no node appears twice.
    return [node for start, count in ranges for node in _range_nodes(start, count)]


def nodes_needed_for_root(size: int) -> list[Node]:
    """The coordinates ``root_from_nodes(size, get)`` reads: one per one-bit of ``size``, largest first."""
    _check_size("tree size", size)
    return _range_nodes(0, size)


def nodes_needed_for_inclusion(index: int, size: int) -> list[Node]:
    """The coordinates ``inclusion_proof(index, size, get)`` reads, in the order it reads them."""
    _check_inclusion(index, size)
    return _nodes_of(_inclusion_ranges(index, size))


def nodes_needed_for_consistency(old_size: int, new_size: int) -> list[Node]:
    """The coordinates ``consistency_proof(old_size, new_size, get)`` reads, in the order it reads them."""
    _check_consistency(old_size, new_size)
    return _nodes_of(_consistency_ranges(old_size, new_size))


def nodes_needed_for_append(size: int, count: int) -> list[Node]:
    """The stored coordinates ``nodes_for_append(size, leaves, get)`` reads when ``len(leaves) == count``.

    Only nodes of the current tree's decomposition (one per one-bit of ``size``) are read: the one at
    ``level`` when the appended leaves complete its right sibling, which needs ``size + count`` to reach the
    end of that sibling. Ascending level, which is the order of the reads.
    """
    _check_size("tree size", size)
    _check_size("leaf count", count)
    end = size + count
    return [
        (level, (size >> level) - 1)
        for level in range(size.bit_length())
        if size >> level & 1 and end >= ((size >> level) + 1) << level
    ]


# ------------------------------------------------------------------------------------------------------------
# Computations over stored nodes.
# ------------------------------------------------------------------------------------------------------------


def nodes_for_append(size: int, new_leaves: Sequence[bytes], get: NodeGetter) -> list[Row]:
    """The rows to store when the leaf hashes ``new_leaves`` are appended to the tree of ``size`` leaves.

    For each new leaf, in order: the leaf at level 0, then every perfect subtree it completes (leaf number
    ``n`` completes one per trailing one-bit of ``n``). The result equals the concatenation of repeated
    ``nodes_to_add`` calls; nodes created within the batch are used directly, so ``get`` is only called for
    the coordinates of ``nodes_needed_for_append(size, len(new_leaves))``.
    """
    _check_size("tree size", size)
    for leaf in new_leaves:
        _check_leaf(leaf)
    rows: list[Row] = []
    # Hashes of the perfect subtrees of the growing tree's decomposition, by level (the right "frontier").
    # A subtree created in this batch is taken from here; one that already existed is read through get.
    frontier: dict[int, bytes] = {}
    n = size
    for leaf in new_leaves:
        rows.append((0, n, leaf))
        current, level, index = leaf, 0, n
        while index & 1:
            # The node just completed is a right child; its left sibling (level, index - 1) is complete too.
            sibling = frontier.pop(level, None)
            if sibling is None:
                sibling = get(level, index - 1)
            # RFC 9162 section 2.1.1: a perfect subtree's hash is HASH(0x01 || left half || right half).
            current = node_hash(sibling, current)
            level, index = level + 1, index >> 1
            rows.append((level, index, current))
        frontier[level] = current
        n += 1
    return rows


def nodes_to_add(size: int, new_leaf: bytes, get: NodeGetter) -> list[Row]:
    """The rows to store when leaf number ``size`` (0-based), with leaf hash ``new_leaf``, is appended.

    The leaf itself ``(0, size, new_leaf)`` and then, bottom-up, every perfect subtree it completes. Reads
    ``nodes_needed_for_append(size, 1)``.
    """
    return nodes_for_append(size, (new_leaf,), get)


def root_from_nodes(size: int, get: NodeGetter) -> bytes:
    """MTH(D[size]), the root of the first ``size`` leaves (RFC 9162 section 2.1.1), from stored nodes.

    Reads the ``nodes_needed_for_root(size)`` perfect subtrees of the binary decomposition of ``size``.
    """
    _check_size("tree size", size)
    if size == 0:
        return EMPTY_ROOT  # MTH({}) = HASH()
    return _range_hash(0, size, get)


def inclusion_proof(index: int, size: int, get: NodeGetter) -> list[bytes]:
    """The audit path PATH(index, D[size]) of RFC 9162 section 2.1.3.1, from stored nodes.

    Raises ``ValueError`` unless ``0 <= index < size``. Reads ``nodes_needed_for_inclusion(index, size)``.
    """
    _check_inclusion(index, size)
    return [_range_hash(start, count, get) for start, count in _inclusion_ranges(index, size)]


def consistency_proof(old_size: int, new_size: int, get: NodeGetter) -> list[bytes]:
    """The consistency proof PROOF(old_size, D[new_size]) of RFC 9162 section 2.1.4.1, from stored nodes.

    Empty when ``old_size`` is 0 or equals ``new_size``. Raises ``ValueError`` for negative sizes or
    ``old_size > new_size``. Reads ``nodes_needed_for_consistency(old_size, new_size)``.
    """
    _check_consistency(old_size, new_size)
    return [_range_hash(start, count, get) for start, count in _consistency_ranges(old_size, new_size)]


# ------------------------------------------------------------------------------------------------------------
# Verification: never raises, answers False for anything malformed.
# ------------------------------------------------------------------------------------------------------------


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TREE_SIZE


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether ``proof`` shows the leaf hash ``leaf`` at ``index`` in the tree of ``size`` leaves with ``root``.

    ``leaf`` is the leaf *hash* (``leaf_hash(entry)``), as in RFC 9162 section 2.1.3.2, which this follows
    step by step. Returns ``False``, never raises, for malformed input: sizes outside ``uint64``, hashes that
    are not 32 bytes, a proof of the wrong length.
    """
    if not (_is_size(index) and _is_size(size) and _is_hash(leaf) and _is_hash(root)):
        return False
    if not isinstance(proof, Sequence) or isinstance(proof, (bytes, bytearray, str)):
        return False
    # 1. If leaf_index >= tree_size, fail.
    if index >= size:
        return False
    # 2. fn = leaf_index, sn = tree_size - 1.  3. r = hash.
    fn, sn, r = index, size - 1, leaf
    # 4. For each value p in the inclusion_path array:
    for p in proof:
        if not _is_hash(p):
            return False
        # 4a. If sn is 0, the path is too long: fail.
        if sn == 0:
            return False
        # 4b. If LSB(fn) is set, or if fn is equal to sn:
        if fn & 1 or fn == sn:
            # 4b.i. r = HASH(0x01 || p || r)
            r = node_hash(p, r)
            # 4b.ii. If LSB(fn) is not set, right-shift fn and sn equally until LSB(fn) is set or fn is 0.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            # Otherwise r = HASH(0x01 || r || p).
            r = node_hash(r, p)
        # 4c. Right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. Valid iff sn is 0 (the path was long enough) and r equals root_hash.
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """Whether ``proof`` shows the tree ``(new_size, new_root)`` extends the tree ``(old_size, old_root)``.

    Follows RFC 9162 section 2.1.4.2 for ``0 < old_size < new_size``. Outside that range, which the RFC leaves
    to the caller: equal sizes need an empty proof and equal roots; ``old_size == 0`` needs an empty proof and
    ``old_root == EMPTY_ROOT`` (MTH({}), RFC 9162 section 2.1.1), and is consistent with any new tree. Returns
    ``False``, never raises, for malformed input: sizes outside ``uint64`` or ``old_size > new_size``, hashes
    that are not 32 bytes, a proof of the wrong length.
    """
    if not (_is_size(old_size) and _is_size(new_size) and _is_hash(old_root) and _is_hash(new_root)):
        return False
    if not isinstance(proof, Sequence) or isinstance(proof, (bytes, bytearray, str)):
        return False
    if old_size > new_size:
        return False
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root and (old_size > 0 or old_root == EMPTY_ROOT)
    if old_size == 0:
        return len(proof) == 0 and old_root == EMPTY_ROOT
    # 1. If consistency_path is an empty array, fail.
    if len(proof) == 0:
        return False
    path: Sequence[bytes] = proof
    # 2. If first is an exact power of 2, prepend first_hash to the consistency_path array.
    if old_size & (old_size - 1) == 0:
        path = [old_root, *proof]
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 4. If LSB(fn) is set, right-shift both fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first value in the consistency_path array.
    if not _is_hash(path[0]):
        return False
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for i in range(1, len(path)):
        c = path[i]
        if not _is_hash(c):
            return False
        # 6a. If sn is 0, the path is too long: fail.
        if sn == 0:
            return False
        # 6b. If LSB(fn) is set, or if fn is equal to sn:
        if fn & 1 or fn == sn:
            # 6b.1. fr = HASH(0x01 || c || fr).  6b.2. sr = HASH(0x01 || c || sr).
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # 6b.3. If LSB(fn) is not set, right-shift fn and sn equally until LSB(fn) is set or fn is 0.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            # Otherwise sr = HASH(0x01 || sr || c).
            sr = node_hash(sr, c)
        # 6c. Right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. Valid iff fr equals first_hash, sr equals second_hash, and sn is 0.
    return fr == old_root and sr == new_root and sn == 0


def reader(nodes: Mapping[tuple[int, int], bytes]) -> Callable[[int, int], bytes]:
    """A ``get`` over node hashes a caller fetched beforehand (the coordinates a ``nodes_needed_*`` gave)."""
    return lambda level, index: nodes[(level, index)]
