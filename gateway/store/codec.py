"""JSON forms of the canonical records, as the stores keep them in text columns."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from json.encoder import encode_basestring_ascii as _string
from typing import Any, Protocol, TypeVar

from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.canonical import ActionSubtype
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.protocol import Rejection
from gateway.domain.records import (
    ActionType,
    AdjustmentMethod,
    Authorization,
    FirstTransferDefinition,
    LedgerEntry,
    Purpose,
    TransferTerms,
)
from gateway.domain.transfer import OPEN_STATES, Transfer, TransferRole, TransferState
from gateway.store.base import (
    CURRENT_STATUSES,
    GUARDED_STATUSES,
    BlockPosition,
    BlockStatus,
    Change,
    ChangeKind,
    NewBlock,
    SerialRange,
    StoredBlock,
    TransferHead,
    change_digest,
)
from gateway.store.migrations import LEDGER_COLUMNS


def block_to_dict(block: UnitBlock) -> dict[str, Any]:
    """A block as a JSON-ready dict."""
    return {
        "unit_kind": block.space.unit_kind,
        "issuing_registry": block.space.issuing_registry,
        "issuance": block.space.issuance,
        "start": block.start,
        "end": block.end,
        "vintage": block.vintage,
        "project_id": block.project_id,
        "methodology_code": block.methodology_code,
        "mitigation_type": block.mitigation_type,
        "registry_reference": block.registry_reference,
        "first_transferred": block.first_transferred,
        "attributes": [list(pair) for pair in block.attributes],
        "first_transferring_party": block.first_transferring_party,
        "cooperative_approach": block.cooperative_approach,
        "authorization_id": block.authorization_id,
    }


_BLOCK_TEXT_KEPT = 4096
"""The longest block text `block_to_json` and `block_from_json` keep: a usual block is a few hundred
characters, and one with many long attributes is written or decoded each time rather than fill the memory."""


_TEXTS_KEPT = 8192
"""How many blocks `block_to_json` keeps the text of, by identity, forgotten all at once when full. With
`_BLOCKS_KEPT` decoded blocks, what the two keep is bounded by `_BLOCK_TEXT_KEPT`: some 80 MB at the very
most, a few MB for usual blocks."""

_texts_written: dict[int, tuple[UnitBlock, str]] = {}


def block_to_json(block: UnitBlock) -> str:
    """`block_to_dict` as JSON text: exactly what ``json.dumps(block_to_dict(block), sort_keys=True)`` writes,
    written out directly, for a fraction of the time (a transfer stores a thousand blocks, several times).

    The same block object is written out once: a transfer's block goes into its terms, its block row and its
    ledger entry. The text is kept beside the block itself, so an identity is never taken for another's."""
    kept = _texts_written.get(id(block))
    if kept is not None and kept[0] is block:
        return kept[1]
    text = _block_text(block)
    if len(text) <= _BLOCK_TEXT_KEPT:
        if len(_texts_written) >= _TEXTS_KEPT:
            # All at once: cheaper, block by block, than dropping the oldest each time (and a dict's single
            # operations need no lock between the threads that write blocks).
            _texts_written.clear()
        _texts_written[id(block)] = (block, text)
    return text


def _block_text(block: UnitBlock) -> str:
    space = block.space
    attributes = ", ".join(f"[{_string(name)}, {_string(value)}]" for name, value in block.attributes)
    return (
        f'{{"attributes": [{attributes}], "authorization_id": {_string(block.authorization_id)},'
        f' "cooperative_approach": {_string(block.cooperative_approach)}, "end": {int.__repr__(block.end)},'
        f' "first_transferred": {"true" if block.first_transferred else "false"},'
        f' "first_transferring_party": {_string(block.first_transferring_party)},'
        f' "issuance": {_string(space.issuance)}, "issuing_registry": {_string(space.issuing_registry)},'
        f' "methodology_code": {_string(block.methodology_code)}, "mitigation_type": {_string(block.mitigation_type)},'
        f' "project_id": {_string(block.project_id)}, "registry_reference": {_string(block.registry_reference)},'
        f' "start": {int.__repr__(block.start)}, "unit_kind": {_string(space.unit_kind)},'
        f' "vintage": {int.__repr__(block.vintage)}}}'
    )


def block_row(new: NewBlock) -> tuple[str, str, str, int, int, str, str, str, str, int | None]:
    """The values of the blocks table's columns from ``unit_kind`` to ``parent_id``, in order."""
    space = new.block.space
    return (
        space.unit_kind,
        space.issuing_registry,
        space.issuance,
        new.block.start,
        new.block.end,
        stored_block_text(new.block),
        new.account_id,
        new.status.value,
        new.transfer_id,
        new.parent_id,
    )


BLOCK_COLUMNS = (
    "unit_kind, issuing_registry, issuance, serial_start, serial_end, body, account_id, status, transfer_id, parent_id"
)
"""The columns `block_row` gives values of."""


_BLOCKS_KEPT = 8192
"""How many decoded blocks `block_from_json` keeps, by their text, the most recently used last."""

_blocks_read: OrderedDict[str, UnitBlock] = OrderedDict()
_blocks_lock = threading.Lock()  # the store's event loop reads blocks, and so may a worker thread


def block_from_json(text: str) -> UnitBlock:
    """The inverse of `block_to_json` (and of any JSON text of `block_to_dict`).

    Blocks are immutable, so the same text gives the same object: a block read again (the reserved copy of a
    held block, the block of each of its ledger entries, a block just stored by `stored_block_text`) is not
    decoded again.
    """
    if len(text) > _BLOCK_TEXT_KEPT:
        return _decode_block(text)
    with _blocks_lock:
        found = _blocks_read.get(text)
        if found is not None:
            _blocks_read.move_to_end(text)
            return found
    found = _decode_block(text)
    _keep_block(text, found)
    return found


def stored_block_text(block: UnitBlock) -> str:
    """`block_to_json` of a block about to be stored, which `block_from_json` then reads back without decoding:
    a transfer's blocks are read back in the next step, on either side."""
    text = block_to_json(block)
    if len(text) <= _BLOCK_TEXT_KEPT:
        _keep_block(text, block)
    return text


def _keep_block(text: str, block: UnitBlock) -> None:
    with _blocks_lock:
        _blocks_read[text] = block
        _blocks_read.move_to_end(text)
        if len(_blocks_read) > _BLOCKS_KEPT:
            _blocks_read.popitem(last=False)


def _decode_block(text: str) -> UnitBlock:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("a stored block is not a JSON object")
    return block_from_dict(data)


def block_from_dict(data: dict[str, Any]) -> UnitBlock:
    """The inverse of `block_to_dict`."""
    return UnitBlock(
        space=SerialSpace(data["unit_kind"], data["issuing_registry"], data["issuance"]),
        start=data["start"],
        end=data["end"],
        vintage=data["vintage"],
        project_id=data["project_id"],
        methodology_code=data["methodology_code"],
        mitigation_type=data["mitigation_type"],
        registry_reference=data["registry_reference"],
        first_transferred=data["first_transferred"],
        attributes=tuple((k, v) for k, v in data["attributes"]),
        # Blocks stored before ties existed have none.
        first_transferring_party=data.get("first_transferring_party", ""),
        cooperative_approach=data.get("cooperative_approach", ""),
        authorization_id=data.get("authorization_id", ""),
    )


_TERMS_KEPT = 32
"""How many transfers' terms `terms_from_json` keeps decoded."""

_terms_read: dict[str, TransferTerms] = {}
"""The latest terms written or read, by their JSON text, oldest first."""

_terms_length = 0
"""The characters of the texts `_terms_read` holds."""


_TERMS_TEXT_KEPT = 16 << 20
"""The most text (in characters) of the terms `terms_from_json` keeps decoded, all together."""


def _keep_terms(text: str, terms: TransferTerms) -> None:
    global _terms_length
    if _terms_read.pop(text, None) is not None:
        _terms_length -= len(text)
    if len(text) > _TERMS_TEXT_KEPT:
        return
    while _terms_read and (len(_terms_read) >= _TERMS_KEPT or _terms_length + len(text) > _TERMS_TEXT_KEPT):
        oldest = next(iter(_terms_read))
        del _terms_read[oldest]
        _terms_length -= len(oldest)
    _terms_read[text] = terms
    _terms_length += len(text)


def terms_to_json(terms: TransferTerms) -> str:
    """Transfer terms as JSON text, keys sorted (the blocks written by `block_to_json`)."""
    text = (
        f'{{"acquiring_account": {_string(terms.acquiring_account)},'
        f' "acquiring_party": {_string(terms.acquiring_party)},'
        f' "adjustment_method": {_string(terms.adjustment_method.value)},'
        f' "authorization_id": {_string(terms.authorization_id)},'
        f' "blocks": [{", ".join(block_to_json(b) for b in terms.blocks)}],'
        f' "cooperative_approach": {_string(terms.cooperative_approach)},'
        f' "purpose": {_string(terms.purpose.value)},'
        f' "source_account": {_string(terms.source_account)},'
        f' "transferring_party": {_string(terms.transferring_party)}}}'
    )
    # The terms read back are the terms written (the tests of the codec check the round trip).
    _keep_terms(text, terms)
    return text


def terms_from_json(text: str) -> TransferTerms:
    """The inverse of `terms_to_json`.

    Terms never change once a transfer is recorded, and they are read again on every message about it and by
    every change-feed reader: the terms of the latest transfers written or read are kept by their text (they
    are immutable), so that a thousand blocks are not decoded again each time.
    """
    kept = _terms_read.get(text)
    if kept is not None:
        return kept
    terms = _decode_terms(text)
    _keep_terms(text, terms)
    return terms


def _decode_terms(text: str) -> TransferTerms:
    data = json.loads(text)
    return TransferTerms(
        transferring_party=data["transferring_party"],
        acquiring_party=data["acquiring_party"],
        source_account=data["source_account"],
        acquiring_account=data["acquiring_account"],
        cooperative_approach=data["cooperative_approach"],
        authorization_id=data["authorization_id"],
        purpose=Purpose(data["purpose"]),
        adjustment_method=AdjustmentMethod(data["adjustment_method"]),
        blocks=tuple(block_from_dict(b) for b in data["blocks"]),
    )


def rejections_to_json(rejections: tuple[Rejection, ...]) -> str:
    """Rejections as JSON text."""
    return json.dumps(
        [
            {"code": int(r.code), "message": r.message, "blocks": [block_to_dict(b) for b in r.blocks]}
            for r in rejections
        ]
    )


def rejections_from_json(text: str) -> tuple[Rejection, ...]:
    """The inverse of `rejections_to_json`."""
    return tuple(
        Rejection(ResponseCode(r["code"]), r["message"], tuple(block_from_dict(b) for b in r["blocks"]))
        for r in json.loads(text)
    )


def authorization_to_json(a: Authorization) -> str:
    """An authorization as JSON text."""
    return json.dumps(
        {
            "authorization_id": a.authorization_id,
            "date": a.date.isoformat(),
            "version": a.version,
            "cooperative_approach": a.cooperative_approach,
            "metric": a.metric,
            "purposes": sorted(p.value for p in a.purposes),
            "authorized_quantity": a.authorized_quantity,
            "timeframe_start": a.timeframe_start,
            "timeframe_end": a.timeframe_end,
            "first_transfer_definition": a.first_transfer_definition.value,
            "sectors": list(a.sectors),
            "activity_types": list(a.activity_types),
            "expires": a.expires.isoformat() if a.expires else None,
            "revoked": a.revoked,
            "note": a.note,
            "authorized_parties": list(a.authorized_parties),
            "authorized_entities": list(a.authorized_entities),
            "oimp_authorized": a.oimp_authorized,
            "terms_and_conditions": a.terms_and_conditions,
            "documentation": a.documentation,
            **({"party": a.party} if a.party else {}),
        },
        sort_keys=True,
    )


def authorization_from_json(text: str) -> Authorization:
    """The inverse of `authorization_to_json`."""
    d = json.loads(text)
    return Authorization(
        authorization_id=d["authorization_id"],
        date=dt.date.fromisoformat(d["date"]),
        version=d["version"],
        cooperative_approach=d["cooperative_approach"],
        metric=d["metric"],
        purposes=frozenset(Purpose(p) for p in d["purposes"]),
        authorized_quantity=d["authorized_quantity"],
        timeframe_start=d["timeframe_start"],
        timeframe_end=d["timeframe_end"],
        first_transfer_definition=FirstTransferDefinition(d["first_transfer_definition"]),
        sectors=tuple(d["sectors"]),
        activity_types=tuple(d["activity_types"]),
        expires=dt.date.fromisoformat(d["expires"]) if d["expires"] else None,
        revoked=d.get("revoked", False),
        note=d.get("note", ""),
        authorized_parties=tuple(d.get("authorized_parties", ())),
        authorized_entities=tuple(d.get("authorized_entities", ())),
        oimp_authorized=d.get("oimp_authorized", ""),
        terms_and_conditions=d.get("terms_and_conditions", ""),
        documentation=d.get("documentation", ""),
        party=d.get("party", ""),
    )


LEDGER_ROW_COLUMNS = LEDGER_COLUMNS[1:]
"""The ledger's columns a `ledger_row` gives values of, in order: all but the entry ID."""


def ledger_row(entry: LedgerEntry) -> dict[str, Any]:
    """The column values of a ledger entry (without its ID)."""
    return dict(zip(LEDGER_ROW_COLUMNS, _ledger_values(entry, to_text(entry.action_date)), strict=True))


def _ledger_values(entry: LedgerEntry, action_date: str) -> tuple[Any, ...]:
    block = entry.block
    return (
        action_date,
        entry.action_type.value,
        entry.transfer_id,
        block_to_json(block),
        block.end - block.start + 1,
        block.vintage,
        entry.cooperative_approach,
        entry.authorization_id,
        entry.first_transferring_party,
        entry.transferring_party,
        entry.acquiring_party,
        entry.purpose.value,
        entry.action_subtype,
        entry.year_of_use,
        entry.using_party,
        entry.using_entity,
        entry.note,
    )


def ledger_rows(ids: Sequence[int], entries: Sequence[LedgerEntry]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The ledger's column names and a row of values per entry, each with its ID first: one statement for all.
    The entries of one action share its instant, written once."""
    dates: dict[dt.datetime, str] = {}
    rows: list[tuple[Any, ...]] = []
    for entry_id, entry in zip(ids, entries, strict=True):
        date = dates.get(entry.action_date)
        if date is None:
            date = dates[entry.action_date] = to_text(entry.action_date)
        rows.append((entry_id, *_ledger_values(entry, date)))
    return ["entry_id", *LEDGER_ROW_COLUMNS], rows


def ledger_spans(entries: Sequence[LedgerEntry]) -> list[tuple[str, str, str, str, int]]:
    """The longest block of ``entries`` per first transferring Party and serial space, in key order: one upsert
    of ``ledger_spans`` per key, not one per entry (the order keeps concurrent writers' row locks in step)."""
    return _longest(entries, lambda e: (e.first_transferring_party, *_space_key(e.block.space)))


def ledger_action_spans(entries: Sequence[LedgerEntry]) -> list[tuple[str, str, str, str, str, int]]:
    """The longest block of ``entries`` per first transferring Party, action type and serial space, in key order:
    the rows of ``ledger_action_spans`` (SQLite migration 18) they raise."""
    return _longest(entries, lambda e: (e.first_transferring_party, e.action_type.value, *_space_key(e.block.space)))


def _space_key(space: SerialSpace) -> tuple[str, str, str]:
    return space.unit_kind, space.issuing_registry, space.issuance


def _longest(entries: Sequence[LedgerEntry], key_of: Callable[[LedgerEntry], tuple[str, ...]]) -> list[Any]:
    """``(*key, longest)`` per key of ``entries``, in key order."""
    longest: dict[tuple[str, ...], int] = {}
    for entry in entries:
        key = key_of(entry)
        longest[key] = max(longest.get(key, 0), entry.block.end - entry.block.start)
    return [(*key, span) for key, span in sorted(longest.items())]


LEDGER_ACTION_SPANS = (
    "SELECT action_type, longest FROM ledger_action_spans WHERE first_transferring_party = ? AND unit_kind = ?"
    " AND issuing_registry = ? AND issuance = ?"
)
"""The longest entry of each action type in a serial space, for `ledger_of_units_query`: parameters as
`ledger_of_units_query` takes them, the Party then the space."""

RECORDED_APPROACHES = (
    "SELECT DISTINCT cooperative_approach FROM ledger_totals WHERE authorization_id = ? AND cooperative_approach != ''"
    " ORDER BY cooperative_approach"
)
"""The cooperative approaches the ledger records an authorization under (`Transaction.recorded_approaches`), from
the summary groups: one row per group, not per entry."""

LEDGER_PARTIES = (
    "SELECT DISTINCT first_transferring_party FROM ledger_action_spans WHERE unit_kind = ? AND issuing_registry = ?"
    " AND issuance = ? AND first_transferring_party != '' ORDER BY first_transferring_party"
)
"""The first transferring Parties of a serial space's entries (`Transaction.ledger_parties`): parameters the
space's unit kind, issuing registry and issuance."""

_LEDGER_OF_ONE_TYPE = (
    "SELECT * FROM ledger WHERE first_transferring_party = ? AND action_type = ? AND unit_kind = ?"
    " AND issuing_registry = ? AND issuance = ? AND serial_start >= ? AND serial_start <= ? AND serial_end >= ?"
)


def ledger_of_units_query(
    party: str, space: SerialSpace, start: int, end: int, since: int, spans: Sequence[tuple[str, int]]
) -> tuple[str, list[Any]]:
    """The statement and parameters of `Transaction.ledger_of_units`, given the longest entry of each action type
    in the space (`LEDGER_ACTION_SPANS`): no entry of a type is longer than its longest, so none starting further
    back than that reaches ``start``, and each type's part of the index is searched over its own window only,
    however long the ledger and however long another type's entries."""
    params: list[Any] = []
    for action_type, longest in spans:
        window = max(since, start - int(longest))
        params += [party, action_type, space.unit_kind, space.issuing_registry, space.issuance, window, end, start]
    return f"{' UNION ALL '.join([_LEDGER_OF_ONE_TYPE] * len(spans))} ORDER BY entry_id", params


def ledger_from_row(entry_id: int, row: dict[str, Any]) -> LedgerEntry:
    """The inverse of `ledger_row`."""
    return LedgerEntry(
        entry_id=entry_id,
        action_date=from_text(row["action_date"]),
        action_type=ActionType(row["action_type"]),
        transfer_id=row["transfer_id"],
        block=block_from_json(row["block"]),
        cooperative_approach=row["cooperative_approach"],
        authorization_id=row["authorization_id"],
        first_transferring_party=row["first_transferring_party"],
        transferring_party=row["transferring_party"],
        acquiring_party=row["acquiring_party"],
        purpose=Purpose(row["purpose"]),
        action_subtype=row["action_subtype"],
        year_of_use=row["year_of_use"],
        using_party=row["using_party"],
        using_entity=row["using_entity"],
        note=row["note"],
    )


def to_text(moment: dt.datetime) -> str:
    """A UTC instant as ISO 8601 text with microseconds (``YYYY-MM-DDTHH:MM:SS.ffffffZ``), which sorts in time
    order."""
    if moment.tzinfo is dt.UTC:  # nearly always: without converting, the offset "+00:00" is cut instead
        return moment.isoformat(timespec="microseconds")[:-6] + "Z"
    return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


TEXT_LENGTH = len("2026-01-01T00:00:00.000000Z")
"""The length of every instant as `to_text` writes it."""


def from_text(text: str) -> dt.datetime:
    """The inverse of `to_text`; raises `ValueError` for text of any other form."""
    if len(text) != TEXT_LENGTH or text[-1] != "Z" or text[10] != "T":
        raise ValueError(f"not an instant as stored: {text[:40]!r}")
    return dt.datetime.fromisoformat(text[:-1]).replace(tzinfo=dt.UTC)


TRANSFERS = "SELECT t.*, k.terms AS kept_terms FROM transfers t LEFT JOIN transfer_terms k USING (transfer_id)"
"""Transfer rows with their terms kept apart (store migration 10), for `transfer_from_row`; a WHERE clause may
follow, naming the row's columns with ``t.``."""


def transfer_head(row: Any, kept_terms: str | None) -> TransferHead:
    """A `TransferHead` from the transfer's row as `transfer_from_row` takes it, read from the terms' JSON text
    without making a block of each; refused like `transfer_from_row` refuses a transfer without terms."""
    text = _terms_text(row, kept_terms, "")
    role = TransferRole(row["role"])
    # Terms decoded lately (the transfer the fold meets most, just completed) are not parsed again.
    kept = _terms_read.get(text)
    if kept is not None:
        acquiring, transferring, purpose = kept.acquiring_party, kept.transferring_party, kept.purpose.value
    else:
        terms = json.loads(text)
        acquiring, transferring, purpose = terms["acquiring_party"], terms["transferring_party"], terms["purpose"]
    return TransferHead(
        transfer_id=row["transfer_id"],
        role=role,
        state=TransferState(row["state"]),
        partner=acquiring if role is TransferRole.INITIATING else transferring,
        purpose=purpose,
    )


def serial_range(row: Any) -> SerialRange:
    """A `SerialRange` from a row of ``unit_kind``, ``issuing_registry``, ``issuance``, ``serial_start`` and
    ``serial_end``."""
    space = SerialSpace(row["unit_kind"], row["issuing_registry"], row["issuance"])
    return space, int(row["serial_start"]), int(row["serial_end"])


IDS_PER_STATEMENT = 1000
"""How many IDs one statement of a read for many transfers names, at most."""


def id_chunks(ids: Collection[str]) -> list[list[str]]:
    """``ids`` without repeats, in `IDS_PER_STATEMENT` chunks."""
    distinct = list(dict.fromkeys(ids))
    return [distinct[i : i + IDS_PER_STATEMENT] for i in range(0, len(distinct), IDS_PER_STATEMENT)]


GUARDED_LITERALS = ", ".join(f"'{s.value}'" for s in GUARDED_STATUSES)
"""The status list of the partial index ``blocks_guarded`` as SQL literals: a query that repeats it may use the
index, which a list of parameters never matches."""

CURRENT_LITERALS = ", ".join(f"'{s.value}'" for s in CURRENT_STATUSES)
"""The status list of the partial index ``blocks_current`` (migration 13), as SQL literals."""

OPEN_STATE_LITERALS = ", ".join(str(int(state)) for state in OPEN_STATES)
"""The open transfer states as SQL literals: ``state IN`` them is read through ``transfers_open``, where ``NOT IN``
the final ones (or, on PostgreSQL, a generic plan of parameters) read every transfer ever made."""


UNRESOLVED_CONDITION = (
    f"action_type = '{ActionType.TRANSFER.value}' AND action_subtype = '{ActionSubtype.NOT_YET_DEFINED.value}'"
)
"""Transfer entries whose first transfer is yet to come abroad: the condition of the partial index
``ledger_unresolved`` (SQLite migration 19), as SQL literals."""


def holdings_condition(account_id: str, statuses: Sequence[BlockStatus]) -> str:
    """The condition of a partial index that holds every block a page of holdings asks for, so that the page reads
    those blocks in order through it rather than every block ever split or sent away (and, for one account, every
    block ever used or cancelled); empty when none does."""
    if account_id and set(statuses) <= set(CURRENT_STATUSES):
        return f" AND status IN ({CURRENT_LITERALS})"
    if set(statuses) <= set(GUARDED_STATUSES):
        return f" AND status IN ({GUARDED_LITERALS})"
    return ""


def transfer_position(transfer: Transfer) -> tuple[str, str]:
    """Where a transfer stands in `Transaction.list_transfers`' order: its creation instant as stored, its ID."""
    return to_text(transfer.created_at), transfer.transfer_id


def block_position(stored: StoredBlock) -> BlockPosition:
    """Where a block stands in `Transaction.list_blocks`' order."""
    space = stored.block.space
    return space.unit_kind, space.issuing_registry, space.issuance, stored.block.start, stored.block_id


CHANGES = (
    "SELECT c.position, c.kind, c.body, c.recorded_at, k.terms AS kept_terms FROM ({}) c"
    " LEFT JOIN transfer_terms k ON c.kind = 'transfer' AND k.transfer_id = c.subject_id ORDER BY c.position"
)
"""Change-feed rows (the statement to put in: position, kind, subject_id, body and recorded_at) with the terms of
their transfers kept apart (migration 10), for `change_from_row`."""


def terms_ranges(row: Any, kept_terms: str | None) -> list[SerialRange]:
    """The serial ranges of the blocks a transfer's terms name, in their order, from the transfer's row as
    `transfer_from_row` takes it: read from the JSON text alone, without making a block of each (reconciliation
    reads thousands of transfers' terms at once)."""
    text = _terms_text(row, kept_terms, "")
    kept = _terms_read.get(text)
    if kept is not None:
        return [(b.space, b.start, b.end) for b in kept.blocks]
    blocks = json.loads(text)["blocks"]
    return [(SerialSpace(b["unit_kind"], b["issuing_registry"], b["issuance"]), b["start"], b["end"]) for b in blocks]


def _terms_text(row: Any, kept_terms: str | None, where: str) -> str:
    terms: str = row["terms"] if kept_terms is None else kept_terms
    if not terms:
        raise _no_terms(row, where)
    return terms


def _no_terms(row: Any, where: str) -> GatewayError:
    return GatewayError(
        ResponseCode.INTERNAL_ERROR,
        f"{where}transfer {str(row['transfer_id'])[:128]!r} has no terms: its row leaves them to the"
        " transfer_terms table, which has none for it. The database is damaged; restore it from a backup",
    )


def transfer_from_row(row: Any, kept_terms: str | None = None, *, where: str = "") -> Transfer:
    """A transfer from its stored row or a mapping like it (the JSON the change feed keeps of one), with the
    terms kept apart from the row if there are any (migration 10: the row's own are then empty). Refuses
    (`GatewayError`, ``INTERNAL_ERROR``) a row whose terms are neither in it nor kept apart, naming the transfer
    and ``where`` it was read."""
    terms = _terms_text(row, kept_terms, where)
    return Transfer(
        transfer_id=row["transfer_id"],
        role=TransferRole(row["role"]),
        state=TransferState(row["state"]),
        terms=terms_from_json(terms),
        rejections=rejections_from_json(row["rejections"]),
        created_at=from_text(row["created_at"]),
        updated_at=from_text(row["updated_at"]),
    )


def change_from_row(
    position: int, kind_text: str, body_text: str, recorded_at: str, kept_terms: str | None = None
) -> Change:
    """A change-feed row as stored (migration 7) read back, with its digest; ``kept_terms`` are the terms of
    its transfer kept apart from the transfer row (migration 10), which the row then records as empty."""
    kind = ChangeKind(kind_text)
    digest = change_digest(position, kind_text, recorded_at, body_text)
    body = json.loads(body_text)
    # A column written by a JSON function in the same statement (``json_set``) is nested as JSON, not as text.
    for name in ("block", "terms", "rejections"):
        if name in body and not isinstance(body[name], str):
            body[name] = json.dumps(body[name])
    moment = from_text(recorded_at)
    if kind is ChangeKind.TRANSFER:
        kept = kept_terms if body.get("terms") == "" else None
        transfer = transfer_from_row(body, kept, where=f"the change at position {position}: ")
        return Change(position, kind, moment, digest, transfer=transfer)
    return Change(position, kind, moment, digest, entry=ledger_from_row(body["entry_id"], body))


class _Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


RowT = TypeVar("RowT", bound=_Row)


def of_lanes(rows: Sequence[RowT], only: Collection[str] | None) -> Sequence[RowT]:
    """The outbox ``rows`` whose receiver is in ``only``; all of them when ``only`` is None."""
    return rows if only is None else [r for r in rows if r["receiver"] in only]
