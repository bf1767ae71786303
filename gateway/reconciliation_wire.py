"""Reconciliation values to and from their protobuf messages; what a partner sends is checked on the way in.

Every function reading a partner's message raises `GatewayError` (``MALFORMED_PAYLOAD``) naming the field,
so that no reply, however malformed, stops a run with a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

from carbon_gateway.v1 import partner_pb2
from gateway.domain import merkle
from gateway.domain.blocks import MAX_SERIAL
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.reconciliation import (
    DEPTH,
    FANOUT_BITS,
    Difference,
    GroupKey,
    NodeRef,
    NodeView,
    ReconciledBlock,
    Totals,
    add_up,
    check_node,
)

MAX_TEXT = 256
"""The longest text field a reconciliation message may carry (IDs, codes, names)."""
MAX_GROUPS = 10_000
MAX_BLOCKS_PER_VIEW = 4_096
MAX_PROOF = 64


def _malformed(field: str, why: str) -> GatewayError:
    return GatewayError(ResponseCode.MALFORMED_PAYLOAD, f"{field}: {why}", field=field)


def _text(value: str, field: str) -> str:
    if len(value) > MAX_TEXT:
        raise _malformed(field, f"longer than {MAX_TEXT} characters")
    if "\x1f" in value or "\x00" in value:
        raise _malformed(field, "contains a control character")
    return value


def group_to_proto(group: GroupKey) -> partner_pb2.ReconciliationGroup:
    """A group as sent."""
    return partner_pb2.ReconciliationGroup(
        unit_kind=group.unit_kind,
        issuing_registry=group.issuing_registry,
        vintage=group.vintage,
        action=group.action,
        purpose=group.purpose,
    )


def group_from_proto(message: partner_pb2.ReconciliationGroup, field: str) -> GroupKey:
    """A group as received."""
    return GroupKey(
        _text(message.unit_kind, f"{field}.unit_kind"),
        _text(message.issuing_registry, f"{field}.issuing_registry"),
        message.vintage,
        _text(message.action, f"{field}.action"),
        _text(message.purpose, f"{field}.purpose"),
    )


def totals_to_proto(totals: Totals) -> partner_pb2.ReconciliationTotals:
    """Totals as sent (the quantity in decimal: a sum may exceed 64 bits)."""
    return partner_pb2.ReconciliationTotals(blocks=totals.blocks, quantity=str(totals.quantity), digest=totals.digest)


def totals_from_proto(message: partner_pb2.ReconciliationTotals, field: str) -> Totals:
    """Totals as received."""
    text = message.quantity
    if not text.isascii() or not text.isdigit() or len(text) > 40 or (len(text) > 1 and text[0] == "0"):
        raise _malformed(f"{field}.quantity", f"not a whole number in decimal: {text[:40]!r}")
    if len(message.digest) != 32:
        raise _malformed(f"{field}.digest", f"{len(message.digest)} bytes, not 32")
    return Totals(message.blocks, int(text), message.digest)


def block_to_proto(block: ReconciledBlock) -> partner_pb2.ReconciledBlock:
    """A reconciled block as sent."""
    return partner_pb2.ReconciledBlock(
        transfer_id=block.transfer_id,
        transferring_party=block.transferring_party,
        acquiring_party=block.acquiring_party,
        unit_kind=block.unit_kind,
        issuing_registry=block.issuing_registry,
        issuance=block.issuance,
        serial_start=block.serial_start,
        serial_end=block.serial_end,
        vintage=block.vintage,
        cooperative_approach=block.cooperative_approach,
        authorization_id=block.authorization_id,
        purpose=block.purpose,
        first_transferred=block.first_transferred,
        first_transferring_party=block.first_transferring_party,
    )


def block_from_proto(message: partner_pb2.ReconciledBlock, field: str) -> ReconciledBlock:
    """A reconciled block as received: serials within bounds and in order, texts bounded."""
    if message.serial_start > MAX_SERIAL or message.serial_end > MAX_SERIAL:
        raise _malformed(field, f"a serial beyond {MAX_SERIAL}")
    if message.serial_end < message.serial_start:
        raise _malformed(field, f"serial_end {message.serial_end} precedes serial_start {message.serial_start}")
    values = {
        name: _text(getattr(message, name), f"{field}.{name}")
        for name in (
            "transfer_id",
            "transferring_party",
            "acquiring_party",
            "unit_kind",
            "issuing_registry",
            "issuance",
            "cooperative_approach",
            "authorization_id",
            "purpose",
            "first_transferring_party",
        )
    }
    return ReconciledBlock(
        serial_start=message.serial_start,
        serial_end=message.serial_end,
        vintage=message.vintage,
        first_transferred=message.first_transferred,
        **values,
    )


def ref_to_proto(ref: NodeRef) -> partner_pb2.TreeNodeRef:
    """A node reference as sent."""
    return partner_pb2.TreeNodeRef(group=group_to_proto(ref.group), level=ref.level, prefix=ref.prefix)


def ref_from_proto(message: partner_pb2.TreeNodeRef, field: str) -> NodeRef:
    """A node reference as received: the node exists in the tree."""
    try:
        check_node(message.level, message.prefix)
    except ValueError as exc:
        raise _malformed(field, str(exc)) from None
    return NodeRef(group_from_proto(message.group, f"{field}.group"), message.level, message.prefix)


def view_to_proto(view: NodeView) -> partner_pb2.TreeNodeView:
    """A node view as sent."""
    message = partner_pb2.TreeNodeView(ref=ref_to_proto(view.ref), totals=totals_to_proto(view.totals))
    if view.blocks is not None:
        message.listed = True
        message.blocks.extend(block_to_proto(b) for b in view.blocks)
    else:
        message.children.extend(
            partner_pb2.ChildTotals(prefix=p, totals=totals_to_proto(t)) for p, t in sorted(view.children.items())
        )
    return message


def view_from_proto(message: partner_pb2.TreeNodeView, field: str) -> NodeView:
    """A node view as received: children exist under the node, listed blocks lie under it and add up."""
    ref = ref_from_proto(message.ref, f"{field}.ref")
    totals = totals_from_proto(message.totals, f"{field}.totals")
    if message.listed:
        if len(message.blocks) > MAX_BLOCKS_PER_VIEW:
            raise _malformed(f"{field}.blocks", f"more than {MAX_BLOCKS_PER_VIEW} blocks")
        blocks = tuple(block_from_proto(b, f"{field}.blocks[{i}]") for i, b in enumerate(message.blocks))
        for i, block in enumerate(blocks):
            if not ref.holds(block):
                raise _malformed(f"{field}.blocks[{i}]", "the block does not lie under the node")
        if Totals.of(blocks) != totals:
            raise _malformed(f"{field}.totals", "the totals are not those of the blocks listed")
        return NodeView(ref, totals, blocks=tuple(sorted(blocks)))
    if ref.level >= DEPTH:
        raise _malformed(field, "a bucket must list its blocks")
    if message.blocks:
        raise _malformed(f"{field}.blocks", "blocks given for a node not listed")
    children: dict[int, Totals] = {}
    first = ref.prefix << FANOUT_BITS
    for i, child in enumerate(message.children):
        if not first <= child.prefix < first + (1 << FANOUT_BITS) or child.prefix in children:
            raise _malformed(f"{field}.children[{i}].prefix", f"{child.prefix} is not a child of the node, once")
        children[child.prefix] = totals_from_proto(child.totals, f"{field}.children[{i}].totals")
    if add_up(children.values()) != totals:
        raise _malformed(f"{field}.children", "the children's totals do not add up to the node's")
    return NodeView(ref, totals, children=children)


def head_to_proto(size: int, root: bytes) -> partner_pb2.TreeHead:
    """A log head as sent."""
    return partner_pb2.TreeHead(tree_size=size, root_hash=root)


def head_from_proto(message: partner_pb2.TreeHead, field: str) -> tuple[int, bytes]:
    """A log head as received."""
    if len(message.root_hash) != 32:
        raise _malformed(f"{field}.root_hash", f"{len(message.root_hash)} bytes, not 32")
    if message.tree_size >= 2**63:
        raise _malformed(f"{field}.tree_size", "beyond 2**63")
    if message.tree_size == 0 and message.root_hash != merkle.EMPTY_ROOT:
        raise _malformed(f"{field}.root_hash", "an empty log has the root of the empty tree")
    return message.tree_size, message.root_hash


def proof_from_proto(proof: Sequence[bytes], field: str) -> list[bytes]:
    """A Merkle proof as received: at most `MAX_PROOF` hashes of 32 bytes."""
    if len(proof) > MAX_PROOF:
        raise _malformed(field, f"more than {MAX_PROOF} hashes")
    for i, node in enumerate(proof):
        if len(node) != 32:
            raise _malformed(f"{field}[{i}]", f"{len(node)} bytes, not 32")
    return list(proof)


def difference_to_proto(difference: Difference) -> partner_pb2.BlockDifference:
    """A difference as the report carries it (evidence is added by the caller)."""
    return partner_pb2.BlockDifference(
        kind=int(difference.kind),  # type: ignore[arg-type]
        transfer_id=difference.transfer_id,
        requester_blocks=[block_to_proto(b) for b in difference.requester],
        responder_blocks=[block_to_proto(b) for b in difference.responder],
        fields=list(difference.fields),
    )
