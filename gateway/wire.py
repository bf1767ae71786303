"""Conversions between the protobuf wire messages and the canonical domain records.

Every edge (operator gRPC, partner exchange, HTTP/JSON) converts through here. A malformed wire value is
refused with a `GatewayError` naming the field path.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Sequence

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from carbon_gateway.v1 import envelope_pb2, partner_pb2, records_pb2
from gateway.domain import text
from gateway.domain.blocks import MAX_SERIAL, BlockError, SerialSpace, UnitBlock
from gateway.domain.canonical import AefSector
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.nomenclature import Nomenclature
from gateway.domain.protocol import Rejection, parse_adjustment_method, parse_purpose
from gateway.domain.records import (
    COOPERATIVE_APPROACH_PATTERN,
    PARTY_CODES,
    PARTY_PATTERN,
    Account,
    AccountType,
    Authorization,
    FirstTransferDefinition,
    LedgerEntry,
    Purpose,
    TransferTerms,
    aef_purpose,
)
from gateway.domain.statements import Header
from gateway.domain.transfer import Transfer
from signing import Envelope, EnvelopeFormatError, Signature

STATEMENT_PAYLOAD_TYPE = "application/vnd.carbon-gateway.statement.v1+protobuf"
RECEIPT_PAYLOAD_TYPE = "application/vnd.carbon-gateway.receipt.v1+protobuf"


def _invalid(field: str, message: str) -> GatewayError:
    return GatewayError(ResponseCode.INVALID_ARGUMENT, message, field=field)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def timestamp(moment: dt.datetime) -> Timestamp:
    """An aware instant as a protobuf Timestamp (a quarter of the cost of ``Timestamp.FromDatetime``, which the
    change feed paid for every transfer it sent)."""
    since = moment - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


def from_timestamp(ts: Timestamp, field: str = "timestamp") -> dt.datetime:
    """A protobuf Timestamp as an aware UTC datetime; refuses one outside the years 1 to 9999."""
    try:
        return ts.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "the time is out of range", field=field) from None


def request_hash(request: Message, key_field: str = "idempotency_key") -> str:
    """SHA-256 of a request's semantic fields: the deterministic serialization without the idempotency key.

    Two requests that carry the same field values hash equally whatever bytes the client sent.
    """
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField(key_field)
    # Fields this version does not know carry no meaning here, so a retry from a newer client still matches.
    copy.DiscardUnknownFields()
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


# blocks


def block_to_proto(block: UnitBlock) -> records_pb2.UnitBlock:
    """A domain block as its wire message."""
    return records_pb2.UnitBlock(
        space=records_pb2.SerialSpace(
            unit_kind=block.space.unit_kind,
            issuing_registry=block.space.issuing_registry,
            issuance=block.space.issuance,
        ),
        start=block.start,
        end=block.end,
        vintage=block.vintage,
        project_id=block.project_id,
        methodology_code=block.methodology_code,
        mitigation_type=block.mitigation_type,
        registry_reference=block.registry_reference,
        first_transferred=block.first_transferred,
        attributes=[records_pb2.Attribute(name=k, value=v) for k, v in block.attributes],
        first_transferring_party=block.first_transferring_party,
        cooperative_approach=block.cooperative_approach,
        authorization_id=block.authorization_id,
    )


def block_from_proto(
    msg: records_pb2.UnitBlock, field: str = "block", nomenclature: Nomenclature | None = None
) -> UnitBlock:
    """A wire block as a domain block; refuses a malformed one naming the field.

    With ``nomenclature`` the serial space is put in its canonical spelling and an unknown code is refused
    (`ResponseCode.UNKNOWN_SERIAL_SPACE`); every edge that takes blocks in passes it. Without it (blocks a
    partner echoes back in a rejection) the codes are kept as spelled, within the length limits.
    """
    if not msg.HasField("space"):
        raise _invalid(f"{field}.space", "the block has no serial space")
    text.check_count(msg.attributes, f"{field}.attributes", text.MAX_ATTRIBUTES, what="attributes")
    names = [a.name for a in msg.attributes]
    if len(set(names)) != len(names):
        raise _invalid(f"{field}.attributes", "an attribute name appears twice")
    for i, attribute in enumerate(msg.attributes):
        where = f"{field}.attributes[{i}]"
        text.check_identifier(attribute.name, f"{where}.name", what="attribute name")
        if len(attribute.name) > text.MAX_ATTRIBUTE_NAME_LENGTH:
            raise _invalid(f"{where}.name", f"attribute names have at most {text.MAX_ATTRIBUTE_NAME_LENGTH} characters")
        text.check_text(
            attribute.value, f"{where}.value", what="attribute value", max_length=text.MAX_ATTRIBUTE_VALUE_LENGTH
        )
    for name in ("project_id", "methodology_code", "registry_reference"):
        text.check_identifier(getattr(msg, name), f"{field}.{name}", what=name.replace("_", " "), required=False)
    text.check_text(
        msg.mitigation_type, f"{field}.mitigation_type", what="mitigation type", max_length=text.MAX_NAME_LENGTH
    )
    text.check_year(msg.vintage, f"{field}.vintage", what="vintage")
    check_serials(msg.start, msg.end, field)
    _check_tie(msg, field)
    space_field = f"{field}.space"
    if nomenclature is not None:
        for name in ("unit_kind", "issuing_registry", "issuance"):
            text.check_code(getattr(msg.space, name), f"{space_field}.{name}", what=name.replace("_", " "))
        space = nomenclature.canonical(
            msg.space.unit_kind, msg.space.issuing_registry, msg.space.issuance, field=space_field
        )
    else:
        for name in ("unit_kind", "issuing_registry"):
            text.check_identifier(getattr(msg.space, name), f"{space_field}.{name}", what=name.replace("_", " "))
        text.check_identifier(msg.space.issuance, f"{space_field}.issuance", what="issuance", required=False)
        space = SerialSpace(msg.space.unit_kind, msg.space.issuing_registry, msg.space.issuance)
    try:
        return UnitBlock(
            space=space,
            start=msg.start,
            end=msg.end,
            vintage=msg.vintage,
            project_id=msg.project_id,
            methodology_code=msg.methodology_code,
            mitigation_type=msg.mitigation_type,
            registry_reference=msg.registry_reference,
            first_transferred=msg.first_transferred,
            attributes=tuple((a.name, a.value) for a in msg.attributes),
            first_transferring_party=msg.first_transferring_party,
            cooperative_approach=msg.cooperative_approach,
            authorization_id=msg.authorization_id,
        )
    except BlockError as exc:
        raise _invalid(field, str(exc)) from None


def _check_once(values: Sequence[object], field: str, what: str) -> None:
    """Refuse a list that names one value twice (as the AEF report would print it twice), naming the repeat."""
    seen: set[object] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise _invalid(f"{field}[{i}]", f"the {what} {text.quoted(str(value))} is named twice")
        seen.add(value)


def _check_tie(msg: records_pb2.UnitBlock, field: str) -> None:
    """A block's tie is all three of its fields, or none."""
    party, approach, authorization = msg.first_transferring_party, msg.cooperative_approach, msg.authorization_id
    if not (party or approach or authorization):
        return
    named = {"first_transferring_party": party, "cooperative_approach": approach, "authorization_id": authorization}
    missing = [name for name, value in named.items() if not value]
    if missing:
        raise _invalid(
            f"{field}.{missing[0]}",
            "a block's tie is its first transferring Party, cooperative approach and authorization ID together, or"
            f" nothing: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing",
        )
    if party not in PARTY_CODES:  # the AEF names Parties by these codes alone
        raise _invalid(
            f"{field}.first_transferring_party", f"{text.quoted(party)} is not an ISO 3166-1 alpha-3 Party code"
        )
    if not COOPERATIVE_APPROACH_PATTERN.fullmatch(approach):
        raise _invalid(
            f"{field}.cooperative_approach",
            f"{text.quoted(approach)} is not a cooperative approach ID: CA followed by 4 ASCII digits",
        )
    text.check_identifier(authorization, f"{field}.authorization_id", what="authorization ID")
    text.check_not_na(authorization, f"{field}.authorization_id")  # the AEF would read it as no authorization


def check_serials(start: int, end: int, field: str) -> None:
    """Refuse a serial range outside 0..`MAX_SERIAL` or backwards, naming ``field.start`` or ``field.end``."""
    if not 0 <= start <= MAX_SERIAL:
        raise _invalid(f"{field}.start", f"the start serial {start} is not in 0..{MAX_SERIAL}")
    if not 0 <= end <= MAX_SERIAL:
        raise _invalid(
            f"{field}.end", f"the end serial {end} is not in 0..{MAX_SERIAL} (the largest serial is 2^63 - 2)"
        )
    if end < start:
        raise _invalid(f"{field}.end", f"the end serial {end} precedes the start serial {start}")


def rejection_to_proto(rejection: Rejection) -> records_pb2.Rejection:
    """A domain rejection as its wire message."""
    return records_pb2.Rejection(
        code=int(rejection.code),  # type: ignore[arg-type]
        message=rejection.message,
        blocks=[block_to_proto(b) for b in rejection.blocks],
    )


def rejection_from_proto(msg: records_pb2.Rejection, field: str) -> Rejection:
    """A wire rejection as a domain rejection."""
    text.check_count(msg.blocks, f"{field}.blocks", text.MAX_BLOCKS_PER_TRANSFER, what="blocks")
    text.check_text(msg.message, f"{field}.message", what="rejection message")
    try:
        code = ResponseCode(msg.code)
    except ValueError:
        # A partner on a newer version may know codes this gateway does not: keep the rejection, say so.
        return Rejection(
            ResponseCode.MALFORMED_PAYLOAD,
            text.truncate(f"response code {msg.code}, unknown to this gateway: {msg.message}"),
            tuple(block_from_proto(b, f"{field}.blocks[{i}]") for i, b in enumerate(msg.blocks)),
        )
    if code is ResponseCode.OK:
        # OK gives no reason (and proto3 does not even carry it): keep the rejection, say it came without one.
        return Rejection(
            ResponseCode.MALFORMED_PAYLOAD,
            text.truncate(f"a rejection with response code 0 (OK), which gives no reason: {msg.message}"),
            tuple(block_from_proto(b, f"{field}.blocks[{i}]") for i, b in enumerate(msg.blocks)),
        )
    return Rejection(
        code, msg.message, tuple(block_from_proto(b, f"{field}.blocks[{i}]") for i, b in enumerate(msg.blocks))
    )


# accounts and authorizations


def account_to_proto(account: Account) -> records_pb2.Account:
    """A domain account as its wire message."""
    return records_pb2.Account(
        account_id=account.account_id, holder_name=account.holder_name, account_type=account.account_type.value
    )


def account_from_proto(msg: records_pb2.Account, field: str = "account") -> Account:
    """A wire account as a domain account."""
    text.check_identifier(msg.account_id, f"{field}.account_id", what="account ID")
    text.check_name(msg.holder_name, f"{field}.holder_name", what="holder name")
    try:
        account_type = AccountType(msg.account_type)
    except ValueError:
        allowed = ", ".join(repr(t.value) for t in AccountType)
        raise _invalid(
            f"{field}.account_type", f"unknown account type {text.quoted(msg.account_type)}; use one of {allowed}"
        ) from None
    return Account(msg.account_id, msg.holder_name, account_type)


def parse_date(value: str, field: str) -> dt.date:
    """An ISO 8601 date (YYYY-MM-DD) of a request field, or a refusal naming the field."""
    return _date(value, field)


ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
"""A calendar date as YYYY-MM-DD, ASCII digits: `datetime.date.fromisoformat` also takes week dates
(``2026-W03-4``) and the basic format (``20260115``)."""


def _date(value: str, field: str) -> dt.date:
    if not ISO_DATE.fullmatch(value):
        raise _invalid(field, f"{text.quoted(value)} is not an ISO 8601 date (YYYY-MM-DD, ASCII digits)")
    try:
        date = dt.date.fromisoformat(value)
    except ValueError:
        raise _invalid(field, f"{value!r} is not an ISO 8601 date (YYYY-MM-DD)") from None
    text.check_year(date.year, field)
    return date


def authorization_to_proto(a: Authorization) -> records_pb2.Authorization:
    """A domain authorization as its wire message."""
    return records_pb2.Authorization(
        authorization_id=a.authorization_id,
        date=a.date.isoformat(),
        version=a.version,
        cooperative_approach=a.cooperative_approach,
        metric=a.metric,
        purposes=sorted(p.value for p in a.purposes),
        authorized_quantity=a.authorized_quantity,
        timeframe_start=a.timeframe_start,
        timeframe_end=a.timeframe_end,
        first_transfer_definition=a.first_transfer_definition.value,
        sectors=list(a.sectors),
        activity_types=list(a.activity_types),
        expires=a.expires.isoformat() if a.expires else "",
        revoked=a.revoked,
        note=a.note,
        authorized_parties=list(a.authorized_parties),
        authorized_entities=list(a.authorized_entities),
        oimp_authorized=a.oimp_authorized,
        terms_and_conditions=a.terms_and_conditions,
        documentation=a.documentation,
        party=a.party,
    )


def authorization_from_proto(msg: records_pb2.Authorization, field: str = "authorization") -> Authorization:
    """A wire authorization as a domain authorization; refuses malformed fields by name."""
    text.check_identifier(msg.authorization_id, f"{field}.authorization_id", what="authorization ID")
    text.check_identifier(msg.version, f"{field}.version", what="version")
    if not COOPERATIVE_APPROACH_PATTERN.fullmatch(msg.cooperative_approach):
        raise _invalid(
            f"{field}.cooperative_approach",
            f"{text.quoted(msg.cooperative_approach)} is not a cooperative approach ID: CA followed by 4 ASCII digits",
        )
    if msg.metric != "GHG":
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"metric {text.quoted(msg.metric)} is not supported: only GHG authorizations are handled (non-GHG NDC"
            " metrics are out of scope, decision 2/CMA.3 annex para 9)",
            field=f"{field}.metric",
        )
    if msg.authorized_quantity <= 0:
        raise _invalid(f"{field}.authorized_quantity", "the authorized quantity must be positive")
    text.check_year(msg.timeframe_start, f"{field}.timeframe_start", what="timeframe start")
    text.check_year(msg.timeframe_end, f"{field}.timeframe_end", what="timeframe end")
    if msg.timeframe_end < msg.timeframe_start:
        raise _invalid(f"{field}.timeframe_end", "the timeframe ends before it starts")
    if not msg.purposes:
        raise _invalid(f"{field}.purposes", "an authorization needs at least one purpose")
    for name in ("purposes", "sectors", "activity_types"):
        values = getattr(msg, name)
        text.check_count(values, f"{field}.{name}", text.MAX_LIST_ITEMS, what=name.replace("_", " "))
        for i, value in enumerate(values):
            text.check_name(value, f"{field}.{name}[{i}]", what=name.rstrip("s").replace("_", " "))
    parsed = [parse_purpose(p, field=f"{field}.purposes[{i}]") for i, p in enumerate(msg.purposes)]
    _check_once(parsed, f"{field}.purposes", "purpose")
    purposes = frozenset(parsed)
    # What the AEF report must carry is refused at the door: a version that cannot be reported would stay in
    # every report for ever (an amendment adds a version, it does not replace one).
    if aef_purpose(purposes) is None:
        raise _invalid(
            f"{field}.purposes",
            f'{", ".join(p.value for p in parsed)} cannot be reported: the AEF\'s "Purposes for authorization" holds'
            " one purpose, or NDC with one other (NDC and OIMP, NDC and IMP, NDC and OP)",
        )
    for name, what in (
        ("sectors", "sector"),
        ("activity_types", "activity type"),
        ("authorized_parties", "Party"),
        ("authorized_entities", "entity"),
    ):
        _check_once(list(getattr(msg, name)), f"{field}.{name}", what)
    text.check_not_na(msg.authorization_id, f"{field}.authorization_id")
    for name in ("activity_types", "authorized_entities"):
        for i, value in enumerate(getattr(msg, name)):
            text.check_not_na(value, f"{field}.{name}[{i}]")
            if text.AEF_LIST_SEPARATOR in value:
                raise _invalid(
                    f"{field}.{name}[{i}]",
                    f"{text.quoted(value)} holds {text.AEF_LIST_SEPARATOR!r}, which separates the values of the AEF's"
                    " list columns: the report would read back as more values than were recorded",
                )
    for name in ("note", "oimp_authorized", "terms_and_conditions", "documentation", "version"):
        text.check_not_na(getattr(msg, name), f"{field}.{name}")
    if not msg.sectors:
        raise _invalid(f"{field}.sectors", "name the authorization's AEF sector(s)")
    if not msg.activity_types:
        # The AEF's Activity type(s) column takes no NA: every report from the version's year on would be refused.
        raise _invalid(f"{field}.activity_types", "name the authorization's activity type(s), as the AEF records them")
    for i, sector in enumerate(msg.sectors):
        text.parse_choice(AefSector, sector, f"{field}.sectors[{i}]", what="AEF sector")
    if not msg.authorized_parties:
        raise _invalid(f"{field}.authorized_parties", "name the authorized Party(ies) (alpha-3 codes)")
    try:
        ftd = FirstTransferDefinition(msg.first_transfer_definition)
    except ValueError:
        allowed = ", ".join(repr(d.value) for d in FirstTransferDefinition)
        raise _invalid(
            f"{field}.first_transfer_definition",
            f"unknown first-transfer definition {text.quoted(msg.first_transfer_definition)}; use one of {allowed}",
        ) from None
    if msg.revoked:
        raise _invalid(f"{field}.revoked", "an authorization is revoked with RevokeAuthorization, which records why")
    text.check_text(msg.note, f"{field}.note", what="note")
    text.check_count(msg.authorized_parties, f"{field}.authorized_parties", text.MAX_LIST_ITEMS, what="Parties")
    for i, party in enumerate(msg.authorized_parties):
        if party not in PARTY_CODES:
            raise _invalid(
                f"{field}.authorized_parties[{i}]", f"{text.quoted(party)} is not an ISO 3166-1 alpha-3 Party code"
            )
    text.check_count(msg.authorized_entities, f"{field}.authorized_entities", text.MAX_LIST_ITEMS, what="entities")
    for i, entity in enumerate(msg.authorized_entities):
        text.check_identifier(entity, f"{field}.authorized_entities[{i}]", what="entity ID")
    for name in ("oimp_authorized", "terms_and_conditions", "documentation"):
        text.check_text(getattr(msg, name), f"{field}.{name}", what=name.replace("_", " "))
    if msg.party and msg.party not in PARTY_CODES:
        raise _invalid(f"{field}.party", f"{text.quoted(msg.party)} is not an ISO 3166-1 alpha-3 Party code")
    date = _date(msg.date, f"{field}.date")
    expires = _date(msg.expires, f"{field}.expires") if msg.expires else None
    if expires is not None and expires < date:
        raise _invalid(f"{field}.expires", f"the authorization expires ({expires}) before it is dated ({date})")
    return Authorization(
        authorization_id=msg.authorization_id,
        date=date,
        version=msg.version,
        cooperative_approach=msg.cooperative_approach,
        metric=msg.metric,
        purposes=purposes,
        authorized_quantity=msg.authorized_quantity,
        timeframe_start=msg.timeframe_start,
        timeframe_end=msg.timeframe_end,
        first_transfer_definition=ftd,
        sectors=tuple(msg.sectors),
        activity_types=tuple(msg.activity_types),
        expires=expires,
        note=msg.note,
        authorized_parties=tuple(msg.authorized_parties),
        authorized_entities=tuple(msg.authorized_entities),
        oimp_authorized=msg.oimp_authorized,
        terms_and_conditions=msg.terms_and_conditions,
        documentation=msg.documentation,
        party=msg.party,
    )


# transfers and the ledger


_BLOCKS_KEPT = 8
"""How many transfers' blocks `transfer_to_proto` keeps in wire form."""

_blocks_wire: dict[int, tuple[tuple[UnitBlock, ...], bytes]] = {}
"""The blocks of the latest transfers converted, as a serialized ``Transfer`` holding only them, by the identity
of the blocks tuple (kept alongside, so that the identity stays theirs)."""


def _blocks_of(t: Transfer) -> records_pb2.Transfer:
    """A ``Transfer`` message holding only the transfer's blocks. A transfer's blocks never change, and its
    terms are decoded once (`gateway.store.codec.terms_from_json`): each change of a transfer that the change
    feed sends converts the same thousand blocks, so their wire form is kept for the latest few."""
    blocks = t.terms.blocks
    kept = _blocks_wire.get(id(blocks))
    message = records_pb2.Transfer()
    if kept is not None and kept[0] is blocks:
        message.ParseFromString(kept[1])
        return message
    message.blocks.extend(block_to_proto(b) for b in blocks)
    if len(blocks) > 1:
        while len(_blocks_wire) >= _BLOCKS_KEPT:
            del _blocks_wire[next(iter(_blocks_wire))]
        _blocks_wire[id(blocks)] = (blocks, message.SerializeToString())
    return message


def transfer_to_proto(t: Transfer) -> records_pb2.Transfer:
    """A transfer as one side keeps it, as its wire message."""
    message = _blocks_of(t)
    message.MergeFrom(
        records_pb2.Transfer(
            transfer_id=t.transfer_id,
            role=t.role.value,
            state=int(t.state),  # type: ignore[arg-type]
            transferring_party=t.terms.transferring_party,
            acquiring_party=t.terms.acquiring_party,
            source_account=t.terms.source_account,
            acquiring_account=t.terms.acquiring_account,
            cooperative_approach=t.terms.cooperative_approach,
            authorization_id=t.terms.authorization_id,
            purpose=t.terms.purpose.value,
            adjustment_method=t.terms.adjustment_method.value,
            quantity=t.terms.quantity,
            rejections=[rejection_to_proto(r) for r in t.rejections],
            created_at=timestamp(t.created_at),
            updated_at=timestamp(t.updated_at),
        )
    )
    return message


def ledger_entry_to_proto(e: LedgerEntry) -> records_pb2.LedgerEntry:
    """A ledger entry as its wire message."""
    return records_pb2.LedgerEntry(
        entry_id=e.entry_id,
        action_date=timestamp(e.action_date),
        action_type=e.action_type.value,
        transfer_id=e.transfer_id,
        block=block_to_proto(e.block),
        quantity=e.quantity,
        cooperative_approach=e.cooperative_approach,
        authorization_id=e.authorization_id,
        first_transferring_party=e.first_transferring_party,
        transferring_party=e.transferring_party,
        acquiring_party=e.acquiring_party,
        purpose=e.purpose.value,
        action_subtype=e.action_subtype,
        year_of_use=e.year_of_use or 0,
        using_party=e.using_party,
        using_entity=e.using_entity,
        note=e.note,
    )


# statements


class BlockReader:
    """Reads the blocks of one message with `block_from_proto`, checking each distinct set of a block's values
    but its serials once.

    A transfer's blocks mostly differ in their serials alone: a block whose every other value (serial space,
    vintage, project, attributes, tie, first transfer) equals one already read takes that block's checked values
    and has its serials checked. What a message can hold bounds what a reader keeps.
    """

    def __init__(self, nomenclature: Nomenclature | None = None) -> None:
        self._nomenclature = nomenclature
        self._read: dict[tuple[object, ...], UnitBlock] = {}

    def read(self, msg: records_pb2.UnitBlock, field: str) -> UnitBlock:
        """The block ``msg`` holds, as `block_from_proto` reads it; refuses a malformed one naming ``field``."""
        if len(msg.attributes) > text.MAX_ATTRIBUTES:
            return block_from_proto(msg, field, self._nomenclature)  # refused before its attributes are read
        space = msg.space
        key = (
            space.unit_kind,
            space.issuing_registry,
            space.issuance,
            msg.vintage,
            msg.project_id,
            msg.methodology_code,
            msg.mitigation_type,
            msg.registry_reference,
            tuple((a.name, a.value) for a in msg.attributes),
            msg.first_transferred,
            msg.first_transferring_party,
            msg.cooperative_approach,
            msg.authorization_id,
        )
        known = self._read.get(key)
        if known is None:
            # Only a block that passed every check is kept: a message missing its space reads as one with
            # empty codes, which no kept block has.
            block = block_from_proto(msg, field, self._nomenclature)
            self._read[key] = block
            return block
        start, end = msg.start, msg.end
        check_serials(start, end, field)
        return known.with_range(start, end)


def proposal_to_proto(transfer_id: str, terms: TransferTerms) -> partner_pb2.Proposal:
    """The Proposal message for a transfer."""
    return partner_pb2.Proposal(
        transfer_id=transfer_id,
        blocks=[block_to_proto(b) for b in terms.blocks],
        source_account=records_pb2.AccountRef(party=terms.transferring_party, account_id=terms.source_account),
        acquiring_account=records_pb2.AccountRef(party=terms.acquiring_party, account_id=terms.acquiring_account),
        cooperative_approach=terms.cooperative_approach,
        authorization_id=terms.authorization_id,
        purpose=terms.purpose.value,
        adjustment_method=terms.adjustment_method.value,
    )


def proposal_from_proto(msg: partner_pb2.Proposal, nomenclature: Nomenclature) -> TransferTerms:
    """The terms a Proposal asks for; refuses a malformed proposal naming the field.

    The serial spaces are put in canonical spelling through ``nomenclature``; an unknown code is refused.
    """
    field = "proposal"
    text.check_new_identifier(msg.transfer_id, f"{field}.transfer_id", what="transfer ID")
    text.check_count(msg.blocks, f"{field}.blocks", text.MAX_BLOCKS_PER_TRANSFER, what="blocks")
    for side in ("source_account", "acquiring_account"):
        ref = getattr(msg, side)
        if not PARTY_PATTERN.fullmatch(ref.party):
            raise _invalid(f"{field}.{side}.party", f"{text.quoted(ref.party)} is not an ISO 3166-1 alpha-3 Party code")
        text.check_identifier(ref.account_id, f"{field}.{side}.account_id", what="account ID")
    text.check_identifier(msg.authorization_id, f"{field}.authorization_id", what="authorization ID")
    # Untied blocks are credited tied to it (`gateway.domain.ledger.delivered_form`): the AEF reads NA as none.
    text.check_not_na(msg.authorization_id, f"{field}.authorization_id")
    purpose: Purpose = parse_purpose(msg.purpose, field=f"{field}.purpose")
    reader = BlockReader(nomenclature)
    return TransferTerms(
        transferring_party=msg.source_account.party,
        acquiring_party=msg.acquiring_account.party,
        source_account=msg.source_account.account_id,
        acquiring_account=msg.acquiring_account.account_id,
        cooperative_approach=msg.cooperative_approach,
        authorization_id=msg.authorization_id,
        purpose=purpose,
        adjustment_method=parse_adjustment_method(msg.adjustment_method, field=f"{field}.adjustment_method"),
        blocks=tuple(reader.read(b, f"{field}.blocks[{i}]") for i, b in enumerate(msg.blocks)),
    )


def header_from_proto(msg: partner_pb2.StatementHeader) -> Header:
    """A statement header as a domain value; refuses a header that lacks a required field or breaks a limit."""
    missing = [
        name
        for name, present in (
            ("message_id", bool(msg.message_id)),
            ("sender", bool(msg.sender)),
            ("receiver", bool(msg.receiver)),
            ("sequence", msg.sequence > 0),
            ("previous_hash", bool(msg.previous_hash)),
            ("issued_at", msg.HasField("issued_at")),
            ("expires_at", msg.HasField("expires_at")),
        )
        if not present
    ]
    if missing:
        raise GatewayError(
            ResponseCode.MALFORMED_PAYLOAD, f"the header lacks {', '.join(missing)}", field=f"header.{missing[0]}"
        )
    if len(msg.previous_hash) != 32:
        raise GatewayError(
            ResponseCode.MALFORMED_PAYLOAD,
            f"the header's previous_hash is {len(msg.previous_hash)} bytes, not 32 (a SHA-256 digest)",
            field="header.previous_hash",
        )
    if msg.sequence > text.MAX_INT64:
        raise GatewayError(
            ResponseCode.MALFORMED_PAYLOAD,
            f"the sequence {msg.sequence} exceeds 2^63 - 1",
            field="header.sequence",
        )
    for name in ("sender", "receiver"):
        if not PARTY_PATTERN.fullmatch(getattr(msg, name)):
            raise GatewayError(
                ResponseCode.MALFORMED_PAYLOAD,
                f"the {name} {getattr(msg, name)[:40]!r} is not an ISO 3166-1 alpha-3 Party code",
                field=f"header.{name}",
            )
    try:
        text.check_identifier(msg.message_id, "header.message_id", what="message ID")
    except GatewayError as exc:
        raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, exc.message, field=exc.field) from None
    return Header(
        message_id=msg.message_id,
        sender=msg.sender,
        receiver=msg.receiver,
        sequence=msg.sequence,
        previous_hash=msg.previous_hash,
        issued_at=from_timestamp(msg.issued_at, "header.issued_at"),
        expires_at=from_timestamp(msg.expires_at, "header.expires_at"),
    )


def header_to_proto(h: Header) -> partner_pb2.StatementHeader:
    """A domain header as its wire message."""
    return partner_pb2.StatementHeader(
        message_id=h.message_id,
        sender=h.sender,
        receiver=h.receiver,
        sequence=h.sequence,
        previous_hash=h.previous_hash,
        issued_at=timestamp(h.issued_at),
        expires_at=timestamp(h.expires_at),
    )


# envelopes


def envelope_to_bytes(envelope: Envelope) -> bytes:
    """The protobuf form of a DSSE envelope (in-toto Envelope field numbers)."""
    return envelope_pb2.Envelope(
        payload=envelope.payload,
        payload_type=envelope.payload_type,
        signatures=[envelope_pb2.Signature(sig=s.sig, keyid=s.keyid) for s in envelope.signatures],
    ).SerializeToString()


def envelope_from_bytes(data: bytes) -> Envelope:
    """Parse the protobuf form of a DSSE envelope; the payload bytes are kept verbatim.

    An envelope without a payload type (such as zero bytes, which parse as an empty message) is malformed.
    """
    msg = envelope_pb2.Envelope()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "the envelope is not a valid protobuf Envelope") from None
    if not msg.payload_type:
        # As in the JSON form, where payloadType is required: an empty message parses, but is no envelope.
        raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, "the envelope has no payload type (field 2)")
    try:
        return Envelope(
            payload=msg.payload,
            payload_type=msg.payload_type,
            signatures=tuple(Signature(keyid=s.keyid, sig=s.sig) for s in msg.signatures),
        )
    except EnvelopeFormatError as exc:
        raise GatewayError(ResponseCode.MALFORMED_PAYLOAD, str(exc)) from None
