"""The corresponding-adjustment ledger's rules (DESIGN.md sections 2 and 3): which authorization version is in
force, when a unit is first transferred, what every action records, how entries count in the arithmetic, the
holdings at an instant, and which periods are final.

Pure: callers pass in the versions, entries and locks. Nothing here reads a clock or a database.

The life of a unit in the ledger:

1. It is **tied** to an authorization (an ``Authorization`` action row) when it is registered under one, or,
   if it was registered without one, at the first transfer, use or cancellation that names one. From then on
   it carries the authorization, its cooperative approach and its first transferring Party everywhere,
   across splits and across borders.
2. It is **first transferred** once, at the event its authorization's first-transfer definition names
   (`first_transfer_subtype`): the first international transfer (NDC use), or for other international
   mitigation purposes the authorization, the issuance, or the use or cancellation.
3. It leaves the Party (``First transfer`` or ``Transfer``), arrives (``Acquisition``), or is used or
   cancelled, after which it never moves again.
"""

from __future__ import annotations

import bisect
import datetime as dt
import enum
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from gateway.domain import ranges, text
from gateway.domain.adjustments import MAX_YEAR, MIN_YEAR
from gateway.domain.blocks import SerialSpace, UnitBlock
from gateway.domain.canonical import ActionSubtype
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.records import (
    PARTY_CODES,
    ActionType,
    Authorization,
    FirstTransferDefinition,
    LedgerEntry,
    Purpose,
)

NDC_PURPOSES = frozenset({Purpose.NDC, Purpose.NDC_AND_OIMP, Purpose.NDC_AND_IMP, Purpose.NDC_AND_OP})
"""Purposes under which ITMOs are authorized for use towards NDCs; the others are OIMP only."""

AUTHORISATION_YEAR_CONVENTION = (
    "units tied to an authorization whose first transfer is its authorisation count as first transferred when"
    " they are tied to it (registered under it, or first named by a transfer, use or cancellation), dated then;"
    " the Gold Standard and Verra reporting tool of August 2026 counts units issued after the authorization in"
    " the authorization's year, which this ledger does not"
)
"""The convention for the ``Authorisation`` first-transfer definition, named in every summary."""


class Event(enum.StrEnum):
    """Events at which a unit may become first transferred."""

    REGISTRATION = "registration"  # registered (issued) under an authorization
    INTERNATIONAL_TRANSFER = "international transfer"
    USE_OR_CANCELLATION = "use or cancellation"


class Retirement(enum.StrEnum):
    """The actions that take units out of circulation for good, with their AEF action type."""

    USE_NDC = "use towards the NDC"
    USE_OIMP = "use for other international mitigation purposes"
    CANCELLATION = "cancellation"
    VOLUNTARY_CANCELLATION = "voluntary cancellation"

    @property
    def action_type(self) -> ActionType:
        """The AEF action type this retirement records."""
        return _RETIREMENT_ACTIONS[self]


_RETIREMENT_ACTIONS = {
    Retirement.USE_NDC: ActionType.USE,
    Retirement.USE_OIMP: ActionType.USE,
    Retirement.CANCELLATION: ActionType.CANCELLATION,
    Retirement.VOLUNTARY_CANCELLATION: ActionType.VOLUNTARY_CANCELLATION,
}


class CancellationSubtype(enum.StrEnum):
    """Why units are cancelled (AEF action subtypes of a cancellation)."""

    OMGE = ActionSubtype.OMGE_CANCELLATION.value
    ADAPTATION_FUND = ActionSubtype.ADAPTATION_FUND_TRANSFER.value
    OTHER = ActionSubtype.OTHER_CANCELLATIONS.value


def primary_purpose(authorization: Authorization) -> Purpose:
    """The purpose an authorization's own actions (tie, first transfer at authorisation, issuance, use or
    cancellation) are recorded under: an NDC purpose if it has one, so that they count as authorized for NDC
    use, else its first purpose in the nomenclature's order."""
    return _primary_purpose(authorization.purposes)


@functools.lru_cache(maxsize=64)
def _primary_purpose(purposes: frozenset[Purpose]) -> Purpose:
    # Asked for every block of a transfer, of a handful of distinct sets: enum hashing made it a hot spot.
    ordered = sorted(purposes, key=_PURPOSE_ORDER.__getitem__)
    return next((p for p in ordered if p in NDC_PURPOSES), ordered[0])


_PURPOSE_ORDER = {purpose: index for index, purpose in enumerate(Purpose)}
"""Each purpose's place in the nomenclature's order."""


_COMBINED = {
    Purpose.OIMP: Purpose.NDC_AND_OIMP,
    Purpose.IMP: Purpose.NDC_AND_IMP,
    Purpose.OP: Purpose.NDC_AND_OP,
}


def authorizes(authorization: Authorization, purpose: Purpose) -> bool:
    """True when ``authorization`` authorizes use for ``purpose``: NDC use under any purpose naming the NDC,
    another purpose under itself or under "NDC and" it."""
    return _purposes_allow(authorization.purposes, purpose)


def _purposes_allow(purposes: frozenset[Purpose], purpose: Purpose) -> bool:
    if purpose is Purpose.NDC:
        return bool(purposes & NDC_PURPOSES)
    if purpose in _COMBINED:
        return purpose in purposes or _COMBINED[purpose] in purposes
    return purpose in purposes


def acquired_for(block: UnitBlock, entries: Iterable[LedgerEntry]) -> set[Purpose]:
    """The purposes the units of ``block`` were last acquired for: for each unit, the purpose of the latest
    Acquisition entry among ``entries`` that holds it. Empty when none does."""
    acquisitions = sorted(
        (e for e in entries if e.action_type is ActionType.ACQUISITION and e.block.overlaps(block)),
        key=lambda e: e.entry_id,
        reverse=True,
    )
    left: list[ranges.Range] = [(block.start, block.end)]
    purposes: set[Purpose] = set()
    for entry in acquisitions:
        held = [(entry.block.start, entry.block.end)]
        if ranges.intersection(left, held):
            purposes.add(entry.purpose)
            left = ranges.difference(left, held)
            if not left:
                break
    return purposes


def check_acquired_for(acquired: Iterable[Purpose], purpose: Purpose, field: str, block: UnitBlock) -> None:
    """Refuse a use or cancellation of units whose authorization is not known here for a purpose other than one
    they were acquired for (`acquired_for`): only their authorization could say whether it authorizes it."""
    for reason in sorted(acquired, key=_PURPOSE_ORDER.__getitem__):
        if _purposes_allow(frozenset({reason}), purpose):
            continue
        if block.authorization_id:
            why = (
                f"whether authorization {block.authorization_id!r} authorizes {purpose.value!r} only the"
                " authorization can say, and it is not known here: register a copy of it (RegisterAuthorization)"
                " first"
            )
        else:
            why = "they were acquired before blocks carried their authorization, so nothing here can say more"
        raise GatewayError(
            ResponseCode.AUTHORIZATION_MISSING,
            f"{block.describe()} was acquired for {reason.value!r}, not {purpose.value!r}; {why}",
            field=field,
            blocks=[block],
        )


def check_authorizes(authorization: Authorization, purpose: Purpose, field: str, block: UnitBlock) -> None:
    """Refuse a use or cancellation for a purpose ``authorization`` does not authorize."""
    if not authorizes(authorization, purpose):
        allowed = ", ".join(sorted(p.value for p in authorization.purposes))
        raise GatewayError(
            ResponseCode.PURPOSE_NOT_ALLOWED,
            f"purpose {purpose.value!r} is not authorized by {authorization.authorization_id!r} ({allowed})",
            field=field,
            blocks=[block],
        )


def parse_retirement(value: str, field: str = "action") -> Retirement:
    """The retirement named by ``value``, or a GatewayError listing the accepted values."""
    return text.parse_choice(Retirement, value, field, what="action")


def parse_cancellation_subtype(value: str, field: str = "subtype") -> CancellationSubtype:
    """The cancellation subtype named by ``value``, or a GatewayError listing the accepted values."""
    return text.parse_choice(CancellationSubtype, value, field, what="cancellation subtype")


# authorizations over time


def version_in_force(versions: Sequence[Authorization], on: dt.date) -> Authorization | None:
    """The version of an authorization in force on ``on``: the last recorded version dated on or before it.

    ``versions`` are in the order they were recorded. That is date order, but for a version recorded while later
    dated ones were still to come into force (`check_new_version`): from its date it supersedes them, and they
    never come into force.
    """
    found = None
    for version in versions:
        if version.date <= on:
            found = version
    return found


def versions_ever_in_force(versions: Sequence[Authorization]) -> list[Authorization]:
    """Those of ``versions`` (of any authorizations, in the order recorded) in force on some day, past or to
    come: all but a version superseded before its date, by a version of the same authorization recorded after it
    and dated no later (`check_new_version`). `version_in_force` never returns such a version."""
    earliest_after: dict[str, dt.date] = {}
    kept: list[Authorization] = []
    for version in reversed(versions):
        later = earliest_after.get(version.authorization_id)
        if later is None or version.date < later:
            kept.append(version)
            earliest_after[version.authorization_id] = version.date
    kept.reverse()
    return kept


def authorizing_parties(versions: Iterable[Authorization], own: str) -> dict[str, str]:
    """The authorizing Party of each authorization among ``versions``: the one its latest version naming one
    names (an amendment may say whose a copy registered before versions named their Party is), else ``own``."""
    parties: dict[str, str] = {}
    for version in versions:
        if version.party or version.authorization_id not in parties:
            parties[version.authorization_id] = version.party or own
    return parties


def check_new_version(versions: Sequence[Authorization], new: Authorization, today: dt.date) -> None:
    """Refuse an amendment or revocation that does not follow the versions recorded so far.

    A new version keeps the authorization's ID and cooperative approach, carries a version label not used
    before, and none follows a revocation. It is dated no earlier than the latest version, or, when versions
    dated after ``today`` are still to come into force, no earlier than ``today``: an amendment dated years ahead
    by mistake can be revoked or amended from today, and then never comes into force (`version_in_force`), while
    what was in force until today stays so.
    """
    if not versions:
        raise GatewayError(
            ResponseCode.AUTHORIZATION_MISSING,
            f"authorization {new.authorization_id[:128]!r} is not known here; register it first",
            field="authorization.authorization_id",
        )
    latest = versions[-1]
    if new.authorization_id != latest.authorization_id:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"a new version of {latest.authorization_id!r} keeps its ID; {new.authorization_id[:128]!r} is another",
            field="authorization.authorization_id",
        )
    if latest.revoked:
        raise GatewayError(
            ResponseCode.INVALID_STATE,
            f"authorization {new.authorization_id!r} was revoked on {latest.date.isoformat()}; it takes no new version",
            field="authorization.authorization_id",
        )
    if latest.party and new.party != latest.party:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"authorization {new.authorization_id!r} is {latest.party}'s; a new version cannot make it"
            f" {new.party or 'unnamed'}'s",
            field="authorization.party",
        )
    if new.cooperative_approach != latest.cooperative_approach:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"authorization {new.authorization_id!r} belongs to {latest.cooperative_approach}; a new version cannot"
            f" move it to {new.cooperative_approach}",
            field="authorization.cooperative_approach",
        )
    if any(v.version == new.version for v in versions):
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"version {new.version!r} of authorization {new.authorization_id!r} exists; give the new version its own"
            " label",
            field="authorization.version",
        )
    in_force = version_in_force(versions, today)
    if in_force is latest or (in_force is None and latest.date <= today):
        earliest, after = latest.date, f"version {latest.version!r} in force from {latest.date.isoformat()}"
    elif in_force is not None:
        # Before versions still to come, not back before today: what was in force until now stays so.
        earliest, after = today, f"today ({today.isoformat()}), while versions dated later are still to come"
    else:
        earliest, after = today, f"today ({today.isoformat()}), with no version in force yet"
    if new.date < earliest:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"the new version is dated {new.date.isoformat()}, before {after}: versions follow each other in time",
            field="authorization.date",
        )


def check_in_force(
    authorization: Authorization | None, authorization_id: str, on: dt.date, field: str
) -> Authorization:
    """The version in force on ``on``; refuse when there is none, it is revoked or it has expired."""
    if authorization is None:
        raise GatewayError(
            ResponseCode.AUTHORIZATION_MISSING,
            f"authorization {authorization_id[:128]!r} is unknown, or has no version in force on {on.isoformat()}",
            field=field,
        )
    if authorization.revoked:
        raise GatewayError(
            ResponseCode.AUTHORIZATION_EXPIRED,
            f"authorization {authorization_id!r} was revoked on {authorization.date.isoformat()}",
            field=field,
        )
    if authorization.expires is not None and on > authorization.expires:
        raise GatewayError(
            ResponseCode.AUTHORIZATION_EXPIRED,
            f"authorization {authorization_id!r} expired on {authorization.expires.isoformat()}",
            field=field,
        )
    return authorization


def check_vintage(authorization: Authorization, block: UnitBlock, field: str) -> None:
    """Refuse a block whose vintage lies outside the authorization's timeframe."""
    if not authorization.timeframe_start <= block.vintage <= authorization.timeframe_end:
        raise GatewayError(
            ResponseCode.AUTHORIZATION_EXPIRED,
            f"vintage {block.vintage} is outside the authorized timeframe {authorization.timeframe_start} -"
            f" {authorization.timeframe_end}",
            field=field,
            blocks=[block],
        )


def check_room(authorization: Authorization, tied_before: int, quantity: int, field: str) -> None:
    """Refuse to tie ``quantity`` more units to an authorization that has ``tied_before`` tied already, when
    that would exceed its authorized quantity."""
    if tied_before + quantity > authorization.authorized_quantity:
        raise GatewayError(
            ResponseCode.AUTHORIZATION_EXCEEDED,
            f"{tied_before} already tied to {authorization.authorization_id!r} + {quantity} now exceeds the"
            f" authorized {authorization.authorized_quantity}",
            field=field,
        )


# first transfer


def first_transfer_subtype(definition: FirstTransferDefinition, event: Event) -> ActionSubtype | None:
    """The AEF subtype of the first transfer that ``event`` makes of a unit not yet first transferred under an
    authorization with ``definition``, or None when the event is not its first transfer.

    A unit whose authorization defines its first transfer as the authorisation or the issuance, but which was
    registered without naming the authorization, is first transferred when it is tied to it: at the first
    transfer, use or cancellation naming it (see `AUTHORISATION_YEAR_CONVENTION`).
    """
    if definition is FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER:
        return ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY if event is Event.INTERNATIONAL_TRANSFER else None
    if definition is FirstTransferDefinition.AUTHORISATION:
        return ActionSubtype.AUTHORIZATION
    if definition is FirstTransferDefinition.ISSUANCE:
        return ActionSubtype.ISSUANCE
    return ActionSubtype.USE_OR_CANCELLATION if event is Event.USE_OR_CANCELLATION else None


def tie(block: UnitBlock, party: str, authorization: Authorization) -> UnitBlock:
    """The block tied to ``authorization`` of ``party``; a block already tied keeps its tie."""
    if block.tied:
        return block
    return block.with_tie(
        party,
        authorization.cooperative_approach,
        authorization.authorization_id,
        first_transferred=block.first_transferred,
    )


@dataclass(frozen=True, slots=True)
class ActionContext:
    """What every entry of one action shares."""

    action_id: str
    action_date: dt.datetime
    party: str
    purpose: Purpose
    transferring_party: str = ""
    acquiring_party: str = ""
    year_of_use: int | None = None
    using_entity: str = ""
    note: str = ""
    entry_date: dt.datetime = field(init=False, repr=False, compare=False)
    """``action_date`` as the entries record it. The AEF dates actions to the millisecond: a finer instant could
    fall between one year's end (23:59:59.999) and the next year's start, in no year's report."""

    def __post_init__(self) -> None:
        date = self.action_date
        object.__setattr__(self, "entry_date", date.replace(microsecond=date.microsecond // 1000 * 1000))


def _entry(
    ctx: ActionContext,
    block: UnitBlock,
    action: ActionType,
    subtype: ActionSubtype | None,
    *,
    transferring_party: str = "",
    acquiring_party: str = "",
    using: bool = False,
    purpose: Purpose | None = None,
) -> LedgerEntry:
    """The entry of ``action`` on ``block``; recorded under ``purpose`` when given, else the action's."""
    return LedgerEntry(
        entry_id=0,
        action_date=ctx.entry_date,
        action_type=action,
        transfer_id=ctx.action_id,
        block=block,
        cooperative_approach=block.cooperative_approach,
        authorization_id=block.authorization_id,
        first_transferring_party=block.first_transferring_party,
        transferring_party=transferring_party,
        acquiring_party=acquiring_party,
        purpose=ctx.purpose if purpose is None else purpose,
        action_subtype=subtype.value if subtype else "",
        year_of_use=ctx.year_of_use if action is ActionType.USE else None,
        using_party=ctx.party if using else "",
        using_entity=ctx.using_entity if using else "",
        note=ctx.note,
    )


@dataclass(frozen=True, slots=True)
class Recorded:
    """The entries an action records for one block, and the block as it stands afterwards."""

    entries: tuple[LedgerEntry, ...]
    block: UnitBlock


def record_tie(ctx: ActionContext, block: UnitBlock, authorization: Authorization | None, event: Event) -> Recorded:
    """Tie ``block`` to ``authorization`` (an ``Authorization`` row) if it is not tied yet, and record its first
    transfer if ``event`` is the one the definition names. Units already first transferred record nothing."""
    entries: list[LedgerEntry] = []
    authorization = first_transfer_here(block, ctx.party, authorization)
    # A unit first transferred without a tie came from a version before ties: it is not this Party's to tie.
    if authorization is not None and not block.tied and not block.first_transferred:
        block = tie(block, ctx.party, authorization)
        # Units tied as they leave (a transfer, use or cancellation) are never held as ITMOs here: their
        # movement entry names the authorization. Only units tied and kept get an ``Authorization`` row.
        if event is Event.REGISTRATION:
            entries.append(_entry(ctx, block, ActionType.AUTHORIZATION, None))
    if _first_transfer_due(block, authorization):
        assert authorization is not None
        subtype = first_transfer_subtype(authorization.first_transfer_definition, event)
        # A first transfer that is itself the international transfer is recorded by `record_departure`.
        if subtype is not None and subtype is not ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY:
            block = block.with_first_transferred()
            entries.append(_first_transfer(ctx, block, authorization, subtype))
    return Recorded(tuple(entries), block)


def _first_transfer_due(block: UnitBlock, authorization: Authorization | None) -> bool:
    """True when ``authorization`` decides the first transfer of ``block``: the units are tied to it and not
    first transferred yet."""
    return (
        authorization is not None
        and block.tied
        and not block.first_transferred
        and block.authorization_id == authorization.authorization_id
    )


def first_transfer_here(block: UnitBlock, party: str, authorization: Authorization | None) -> Authorization | None:
    """The authorization that decides the first transfer of ``block`` at ``party``'s gateway, or None.

    Only the first transferring Party records a first transfer: another Party that holds a copy of the same
    authorization (to check onward transfers) never does, whatever the authorization's definition says.
    """
    if block.tied and block.first_transferring_party != party:
        return None
    return authorization


def _first_transfer(
    ctx: ActionContext,
    block: UnitBlock,
    authorization: Authorization,
    subtype: ActionSubtype,
    *,
    transferring_party: str = "",
    acquiring_party: str = "",
) -> LedgerEntry:
    """A ``First transfer`` entry. It counts as authorized for NDC use or for OIMP only by its authorization's
    purposes (decision 2/CMA.3, annex, para 23), whatever the purpose of the action that made it."""
    return _entry(
        ctx,
        block,
        ActionType.FIRST_TRANSFER,
        subtype,
        transferring_party=transferring_party,
        acquiring_party=acquiring_party,
        purpose=primary_purpose(authorization),
    )


def record_departure(ctx: ActionContext, block: UnitBlock, authorization: Authorization | None) -> Recorded:
    """What the initiating side records when ``block`` leaves for ``ctx.acquiring_party``: the tie and first
    transfer if due, then the movement: ``First transfer`` when this transfer is the unit's first transfer,
    ``Transfer`` otherwise (subtype ``Not yet defined`` for units whose first transfer is yet to come abroad).

    The returned block is the block as delivered: the Proposal carries it, tie and first-transfer state
    included, so the acquiring side and every onward transfer keep them.
    """
    tied = record_tie(ctx, block, authorization, Event.INTERNATIONAL_TRANSFER)
    block = tied.block
    authorization = first_transfer_here(block, ctx.party, authorization)
    if block.tied and not block.first_transferred:
        if _first_transfer_due(block, authorization):
            assert authorization is not None
            subtype = first_transfer_subtype(authorization.first_transfer_definition, Event.INTERNATIONAL_TRANSFER)
            if subtype is ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY:
                block = block.with_first_transferred()
                move = _first_transfer(
                    ctx,
                    block,
                    authorization,
                    subtype,
                    transferring_party=ctx.party,
                    acquiring_party=ctx.acquiring_party,
                )
                return Recorded((*tied.entries, move), block)
        move = _entry(
            ctx,
            block,
            ActionType.TRANSFER,
            ActionSubtype.NOT_YET_DEFINED,
            transferring_party=ctx.party,
            acquiring_party=ctx.acquiring_party,
        )
        return Recorded((*tied.entries, move), block)
    move = _entry(
        ctx, block, ActionType.TRANSFER, None, transferring_party=ctx.party, acquiring_party=ctx.acquiring_party
    )
    return Recorded((*tied.entries, move), block)


def delivered_form(
    block: UnitBlock, transferring_party: str, terms_authorization: str, terms_approach: str
) -> UnitBlock:
    """The acquiring side's view of a block a Proposal carries.

    A block that carries a tie is kept as the transferring gateway sent it (`check_own_history` refuses one
    that contradicts this gateway's own records). A block without one comes from a gateway that predates ties:
    if it was not first transferred, this transfer was its first, under the transfer's authorization, as that
    version recorded it; if it was, its first transferring Party is unknown and is not guessed.
    """
    if block.tied or block.first_transferred:
        return block
    return block.with_tie(transferring_party, terms_approach, terms_authorization, first_transferred=True)


def untraceable(block: UnitBlock) -> str | None:
    """Why ``block``, as it would be credited (`delivered_form`, `with_own_tie`), is refused: first transferred
    with no tie, so its first transferring Party, cooperative approach and authorization are unknown. The AEF
    names them in every action's row, and entries never change: its Acquisition entry would leave that year's
    report, and every later one, impossible to write."""
    if block.first_transferred and not block.tied:
        return (
            f"{block.describe()} is sent as first transferred but without its tie (first transferring Party,"
            " cooperative approach and authorization ID), and no record here gives them: the AEF report names them"
            " for every action, so the units are not taken in; the transferring gateway must send the tie"
        )
    return None


def unreportable(block: UnitBlock) -> str | None:
    """Why the AEF report could not write the entries of ``block`` as credited: `untraceable`, or a tie it cannot
    name (a first transferring Party outside ISO 3166-1, which the AEF names Parties by; an authorization ID spelled
    ``NA``, which it reads as none). A partner's Proposal is refused these at the door (`gateway.wire`); this checks
    once more, before they are credited, the units of a proposal an earlier release took in and held."""
    why = untraceable(block)
    if why is not None or not block.tied:
        return why
    if block.first_transferring_party not in PARTY_CODES:
        return (
            f"{block.describe()} is tied to first transferring Party {block.first_transferring_party!r}, which is"
            " not an ISO 3166-1 alpha-3 code: the AEF names Parties by these codes alone"
        )
    if block.authorization_id.strip() == text.NOT_APPLICABLE:
        return f'{block.describe()} is tied to authorization ID "NA", which the AEF reads as "does not apply"'
    return None


def with_own_tie(block: UnitBlock, history: Sequence[LedgerEntry]) -> UnitBlock:
    """``block``, sent without a tie, with the tie of ``history`` (this Party's own entries of the same units)
    and first transferred if they record its first transfer; `check_own_history` then checks the result."""
    latest = history[-1]
    first = [(e.block.start, e.block.end) for e in history if e.action_type is ActionType.FIRST_TRANSFER]
    return block.with_tie(
        latest.first_transferring_party,
        latest.cooperative_approach,
        latest.authorization_id,
        first_transferred=ranges.covers(ranges.normalize(first), block.start, block.end),
    )


def check_own_history(block: UnitBlock, party: str, history: Sequence[LedgerEntry]) -> str | None:
    """Why an incoming ``block`` contradicts ``party``'s own records of the same units, or None.

    ``history`` are ``party``'s ledger entries, as first transferring Party, that share a unit with the block.
    Units this Party tied come back as it tied them: tied to it, under the same cooperative approach and
    authorization, and first transferred exactly when this Party recorded their first transfer. A partner cannot
    re-tie them (a second first transfer, or one past the authorization's quantity, or the same units under a
    second ITMO ID) or untie them (a hidden one). Nor can it change what they are: their vintage (part of the ITMO
    ID), mitigation type, project and the rest of what their registry of record issued them with.
    """
    if not history:
        if block.first_transferring_party == party:
            return f"{block.describe()} is tied to {party}, whose records show no such units"
        return None
    spans = [(e.block.start, e.block.end) for e in history]
    if not ranges.covers(ranges.normalize(spans), block.start, block.end):
        return f"{block.describe()} mixes units {party} tied with units it did not"
    ties = {(e.cooperative_approach, e.authorization_id) for e in history}
    if len(ties) != 1:
        return (
            f"{block.describe()} spans units {party} tied to different authorizations or cooperative approaches:"
            " send them apart"
        )
    issued = {_as_issued(e.block) for e in history}
    if len(issued) != 1:
        return f"{block.describe()} spans units {party} recorded with different attributes: send them apart"
    [recorded] = issued
    changed = _issued_otherwise(block, recorded, f"{party}'s records give these units")
    if changed is not None:
        return changed
    first = [(e.block.start, e.block.end) for e in history if e.action_type is ActionType.FIRST_TRANSFER]
    first_transferred = ranges.covers(ranges.normalize(first), block.start, block.end)
    if not first_transferred and ranges.missing(ranges.normalize(first), block.start, block.end) != [
        (block.start, block.end)
    ]:
        return f"{block.describe()} mixes units {party} first transferred with units it did not: send them apart"
    [(approach, authorization)] = ties
    expected = (party, approach, authorization, first_transferred)
    claimed = (
        block.first_transferring_party,
        block.cooperative_approach,
        block.authorization_id,
        block.first_transferred,
    )
    if claimed != expected:
        return (
            f"{block.describe()} arrives tied to {claimed[0] or 'nobody'} under {claimed[2] or 'no authorization'}"
            f" of {claimed[1] or 'no cooperative approach'} ({'' if claimed[3] else 'not '}first transferred);"
            f" {party}'s records tie it to {party} under {authorization} of {approach}"
            f" ({'' if first_transferred else 'not '}first transferred)"
        )
    return None


def check_recorded_abroad(block: UnitBlock, recorded: Sequence[LedgerEntry]) -> str | None:
    """Why an incoming ``block`` contradicts what this gateway recorded of the same units as another Party's
    ITMOs (``recorded``: its entries of them, such as their Acquisition when they came here before), or None.

    A tie never changes and neither does what the units were issued with: units seen here before as another
    Party's ITMOs come back tied to that Party, under the same cooperative approach and authorization, and as
    issued. A first transfer is never undone: units recorded here first transferred come back so. Units recorded
    here not yet first transferred may come back first transferred (that Party may have first transferred them
    since, at their use or cancellation, say)."""
    if not recorded:
        return None
    ties = {(e.first_transferring_party, e.cooperative_approach, e.authorization_id) for e in recorded}
    issued = {_as_issued(e.block) for e in recorded}
    if len(ties) != 1 or len(issued) != 1:
        return f"{block.describe()} spans units recorded here under different ties or attributes: send them apart"
    [(party, approach, authorization)] = ties
    if (block.first_transferring_party, block.cooperative_approach, block.authorization_id) != (
        party,
        approach,
        authorization,
    ):
        return (
            f"{block.describe()} arrives tied to {block.first_transferring_party or 'nobody'} under"
            f" {block.authorization_id or 'no authorization'} of {block.cooperative_approach or 'no cooperative'}"
            f" approach; this gateway recorded these units tied to {party} under {authorization} of {approach}, and"
            " a tie never changes"
        )
    if not block.first_transferred and any(e.block.first_transferred for e in recorded):
        return (
            f"{block.describe()} arrives not first transferred; this gateway recorded these units first transferred"
            f" by {party}, and a first transfer is never undone"
        )
    [as_issued] = issued
    return _issued_otherwise(block, as_issued, "this gateway recorded for these units")


_AS_ISSUED = ("vintage", "project ID", "methodology code", "mitigation type", "registry reference", "attributes")


def _issued_otherwise(block: UnitBlock, recorded: tuple[object, ...], whose: str) -> str | None:
    """Why ``block`` contradicts what its units were ``recorded`` as issued with (`_as_issued`), or None; ``whose``
    says whose records these are."""
    theirs = _as_issued(block)
    changed = [(name, ours) for name, ours, sent in zip(_AS_ISSUED, recorded, theirs, strict=True) if ours != sent]
    if not changed:
        return None
    return (
        f"{block.describe()} arrives with another {' and '.join(name for name, _ in changed)} than {whose}"
        f" ({', '.join(f'{name} {ours!r}' for name, ours in changed)}): what their registry of record issued them"
        " with does not change abroad"
    )


def _as_issued(block: UnitBlock) -> tuple[object, ...]:
    """What the registry of record issued ``block``'s units with, in the order of `_AS_ISSUED`."""
    return (
        block.vintage,
        block.project_id,
        block.methodology_code,
        block.mitigation_type,
        block.registry_reference,
        block.attributes,
    )


def record_arrival(ctx: ActionContext, block: UnitBlock) -> LedgerEntry:
    """What the acquiring side records when ``block`` arrives from ``ctx.transferring_party``."""
    return _entry(
        ctx,
        block,
        ActionType.ACQUISITION,
        None,
        transferring_party=ctx.transferring_party,
        acquiring_party=ctx.acquiring_party,
    )


def record_retirement(
    ctx: ActionContext,
    block: UnitBlock,
    authorization: Authorization | None,
    retirement: Retirement,
    subtype: CancellationSubtype | None,
) -> Recorded:
    """The entries of a use or cancellation of ``block``: tie and first transfer if due, then the action."""
    tied = record_tie(ctx, block, authorization, Event.USE_OR_CANCELLATION)
    block = tied.block
    if retirement is Retirement.USE_NDC and not block.first_transferred:
        # Units never first transferred are no ITMOs: their reduction is already in the Party's emissions, and
        # subtracting them again would count it twice.
        raise GatewayError(
            ResponseCode.INVALID_STATE,
            f"{block.describe()} has not been first transferred: only ITMOs (first transferred, e.g. acquired) are"
            " used towards an NDC",
            field="selections",
            blocks=[block],
        )
    action = retirement.action_type
    sub = ActionSubtype(subtype.value) if subtype is not None else None
    retire = _entry(ctx, block, action, sub, using=True)
    return Recorded((*tied.entries, retire), block)


# how entries count


class Bucket(enum.StrEnum):
    """Where an entry counts in the arithmetic (DESIGN.md section 3)."""

    FIRST_TRANSFERRED_NDC = "first transferred, authorized for NDC use"
    FIRST_TRANSFERRED_OIMP = "first transferred, authorized for other international mitigation purposes only"
    USED_NDC = "acquired and used towards the NDC"
    ACQUIRED = "acquired"
    UNRESOLVED = "first transfer not yet resolved"
    NONE = "not counted"


def bucket_of(action_type: ActionType, action_subtype: str, purpose: Purpose, year_of_use: int | None) -> Bucket:
    """Where one entry counts. First transfers add by vintage, uses towards the NDC subtract by year of use;
    acquisitions, onward transfers and cancellations never move the balance themselves (a cancellation that is
    a first transfer records its own ``First transfer`` entry)."""
    if action_type is ActionType.FIRST_TRANSFER:
        return Bucket.FIRST_TRANSFERRED_NDC if purpose in NDC_PURPOSES else Bucket.FIRST_TRANSFERRED_OIMP
    if action_type is ActionType.USE and year_of_use is not None:
        return Bucket.USED_NDC
    if action_type is ActionType.ACQUISITION:
        return Bucket.ACQUIRED
    if action_type is ActionType.TRANSFER and action_subtype == ActionSubtype.NOT_YET_DEFINED.value:
        return Bucket.UNRESOLVED
    return Bucket.NONE


FirstTransferRange = tuple[int, SerialSpace, int, int]
"""A ``First transfer`` entry as `still_unresolved` needs it: entry ID, serial space, first and last serial."""


def still_unresolved(
    transfers: Sequence[LedgerEntry], first_transfers: Iterable[FirstTransferRange]
) -> list[LedgerEntry]:
    """The parts of ``transfers`` (``Transfer`` entries with subtype ``Not yet defined``) whose units have not
    been first transferred since, by a later entry of ``first_transfers`` (units that came back and were used
    or cancelled here, say).

    A unit is first transferred once, so one Party's first transfers never overlap within a serial space:
    sorted by first serial, the ones overlapping a range are found by bisection.
    """
    by_space: dict[SerialSpace, list[tuple[int, int, int]]] = {}
    for entry_id, space, start, end in first_transfers:
        by_space.setdefault(space, []).append((start, end, entry_id))
    starts: dict[SerialSpace, list[int]] = {}
    for space, found in by_space.items():
        found.sort()
        starts[space] = [start for start, _, _ in found]
    # Units that left, came back and left again have a later unresolved departure: each unit is listed once,
    # under its latest one. Departures are taken latest first, and the serials each leaves claimed for later ones.
    claimed: dict[SerialSpace, _Claimed] = {}
    kept: list[list[tuple[int, int]]] = [[] for _ in transfers]
    for index in sorted(range(len(transfers)), key=lambda i: transfers[i].entry_id, reverse=True):
        entry = transfers[index]
        space, lo, hi = entry.block.space, entry.block.start, entry.block.end
        left = claimed.setdefault(space, _Claimed())
        pieces = left.unclaimed(lo, hi)
        left.claim(lo, hi)
        found = by_space.get(space, [])
        at = max(bisect.bisect_right(starts.get(space, []), lo) - 1, 0)
        while at < len(found) and found[at][0] <= hi:
            start, end, entry_id = found[at]
            if entry_id > entry.entry_id and end >= lo:
                pieces = [p for a, b in pieces for p in _minus(a, b, start, end)]
            at += 1
        kept[index] = pieces
    return [
        replace(entry, block=entry.block.with_range(a, b))
        for entry, pieces in zip(transfers, kept, strict=True)
        for a, b in pieces
    ]


class _Claimed:
    """Disjoint serial ranges, sorted, that grow one range at a time (`still_unresolved`)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def unclaimed(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The parts of ``[lo, hi]`` no claimed range covers."""
        parts: list[tuple[int, int]] = []
        at = max(bisect.bisect_right(self.starts, lo) - 1, 0)
        reach = lo
        while at < len(self.starts) and self.starts[at] <= hi:
            start, end = self.starts[at], self.ends[at]
            if end >= reach:
                if start > reach:
                    parts.append((reach, start - 1))
                reach = end + 1
            at += 1
        if reach <= hi:
            parts.append((reach, hi))
        return parts

    def claim(self, lo: int, hi: int) -> None:
        """Add ``[lo, hi]``, merged with the ranges it meets or touches."""
        first = bisect.bisect_left(self.ends, lo - 1)
        last = bisect.bisect_right(self.starts, hi + 1)
        if first < last:
            lo, hi = min(lo, self.starts[first]), max(hi, self.ends[last - 1])
        self.starts[first:last] = [lo]
        self.ends[first:last] = [hi]


def _minus(lo: int, hi: int, start: int, end: int) -> list[tuple[int, int]]:
    if end < lo or start > hi:
        return [(lo, hi)]
    return [p for p in ((lo, start - 1), (end + 1, hi)) if p[0] <= p[1]]


# holdings at an instant

_ADDS = frozenset({ActionType.AUTHORIZATION, ActionType.ACQUISITION})
_REMOVES = frozenset({ActionType.TRANSFER, ActionType.USE, ActionType.CANCELLATION, ActionType.VOLUNTARY_CANCELLATION})


def moves_holdings(entry: LedgerEntry) -> int:
    """+1 when the entry brings ITMOs into this Party's holdings, -1 when it takes them out, 0 otherwise."""
    if entry.action_type in _ADDS:
        return 1
    if entry.action_type in _REMOVES:
        return -1
    if (
        entry.action_type is ActionType.FIRST_TRANSFER
        and entry.action_subtype == ActionSubtype.FIRST_TRANSFER_TO_ANOTHER_PARTY.value
    ):
        return -1
    return 0


class Holdings:
    """The ITMO blocks a Party holds, built by replaying ledger entries in order: a range map per serial space.

    An entry that takes units out removes whatever of its range is present; one that brings units in replaces
    whatever of its range is present (its attributes are the newer ones).
    """

    def __init__(self) -> None:
        self._spaces: dict[SerialSpace, tuple[list[int], list[UnitBlock]]] = {}

    def apply(self, entry: LedgerEntry) -> None:
        """Replay one entry."""
        move = moves_holdings(entry)
        if move == 0:
            return
        block = entry.block
        if block.first_transferred and entry.action_type is ActionType.AUTHORIZATION:
            block = replace(block, first_transferred=False)
        self._remove(block.space, block.start, block.end)
        if move > 0:
            starts, blocks = self._spaces.setdefault(block.space, ([], []))
            at = bisect.bisect_left(starts, block.start)
            starts.insert(at, block.start)
            blocks.insert(at, block)

    def _remove(self, space: SerialSpace, start: int, end: int) -> None:
        found = self._spaces.get(space)
        if not found:
            return
        starts, blocks = found
        at = bisect.bisect_right(starts, start) - 1
        at = max(at, 0)
        while at < len(blocks) and blocks[at].start <= end:
            held = blocks[at]
            if held.end < start:
                at += 1
                continue
            keep = []
            if held.start < start:
                keep.append(held.with_range(held.start, start - 1))
            if held.end > end:
                keep.append(held.with_range(end + 1, held.end))
            blocks[at : at + 1] = keep
            starts[at : at + 1] = [k.start for k in keep]
            at += len(keep)

    def blocks(self) -> list[UnitBlock]:
        """The held blocks, by serial space and serial."""
        out: list[UnitBlock] = []
        for space in sorted(self._spaces, key=lambda s: (s.unit_kind, s.issuing_registry, s.issuance)):
            out.extend(self._spaces[space][1])
        return out


def holdings_at(entries: Iterable[LedgerEntry], instant: dt.datetime) -> list[UnitBlock]:
    """The ITMO blocks held at ``instant``: every entry dated at or before it replayed in recording order."""
    holdings = Holdings()
    for entry in entries:
        if entry.action_date <= instant:
            holdings.apply(entry)
    return holdings.blocks()


def year_end(year: int) -> dt.datetime:
    """The AEF holdings snapshot instant of ``year``: 31 December 23:59:59.999 UTC."""
    return dt.datetime(year, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC)


# finality


@dataclass(frozen=True, slots=True)
class LockedPeriod:
    """Years whose adjustments are final: no action dated in them is accepted any more."""

    first_year: int
    last_year: int
    locked_at: dt.datetime
    reason: str

    def covers(self, year: int) -> bool:
        """True when ``year`` lies in the period."""
        return self.first_year <= year <= self.last_year


def check_not_locked(locks: Sequence[LockedPeriod], year: int, field: str, what: str) -> None:
    """Refuse an action dated in a locked period with `ResponseCode.PERIOD_LOCKED`."""
    for lock in locks:
        if lock.covers(year):
            raise GatewayError(
                ResponseCode.PERIOD_LOCKED,
                f"{what} falls in {year}, and {lock.first_year}-{lock.last_year} was locked on"
                f" {lock.locked_at.date().isoformat()} ({lock.reason}): record a correction as a new entry dated"
                " in an open period",
                field=field,
            )


def check_not_in_locked_reports(locks: Sequence[LockedPeriod], year: int, field: str, what: str) -> None:
    """Refuse an authorization version of this Party's dated in ``year`` when a period from that year on is
    locked, with `ResponseCode.PERIOD_LOCKED`: the AEF report of a year lists every version dated by its end, and a
    locked year's report must not change."""
    for lock in locks:
        if lock.last_year >= year:
            raise GatewayError(
                ResponseCode.PERIOD_LOCKED,
                f"{what} falls in {year}, and {lock.first_year}-{lock.last_year} was locked on"
                f" {lock.locked_at.date().isoformat()} ({lock.reason}): the AEF report of {lock.last_year} would list"
                f" it, and a locked year's report does not change; date it after {lock.last_year}",
                field=field,
            )


def check_ledger_year(year: int, field: str, what: str) -> int:
    """``year`` if the adjustment arithmetic covers it (a year of use, of emissions, of a lock); refuse
    otherwise, so that no accepted input can put the summary out of reach."""
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT, f"the {what} {year} is not in {MIN_YEAR}..{MAX_YEAR}", field=field
        )
    return year


def check_first_transfers_open(locks: Sequence[LockedPeriod], entries: Iterable[LedgerEntry], field: str) -> None:
    """Refuse first transfers that would add to a locked year: they are booked by vintage (para 8(a))."""
    for entry in entries:
        if entry.action_type is ActionType.FIRST_TRANSFER:
            for lock in locks:
                if lock.covers(entry.block.vintage):
                    raise GatewayError(
                        ResponseCode.PERIOD_LOCKED,
                        f"{entry.block.describe()} is of vintage {entry.block.vintage}, and {lock.first_year}-"
                        f"{lock.last_year} was locked on {lock.locked_at.date().isoformat()} ({lock.reason}): its"
                        " first transfer would change that year's final adjustment, so units of a locked vintage"
                        " are not first transferred any more",
                        field=field,
                        blocks=[entry.block],
                    )


def check_definition(authorization: Authorization, field: str) -> None:
    """Refuse a first-transfer definition that does not fit the authorization's purposes: for NDC use alone it is
    the first international transfer; for every other purpose (OIMP, IMP, OP, alone or with NDC) the authorization
    decides among the other three (DESIGN.md section 2), which the AEF's "First transfer definition for OIMP"
    column requires of it (`adapters.aef_columns`). A version is never changed, so one the report refuses would
    leave the Authorizations table of every later report impossible to write."""
    definition = authorization.first_transfer_definition
    fit = FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER
    if authorization.purposes == frozenset({Purpose.NDC}):
        if definition is not fit:
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT,
                f"an authorization for NDC use alone is first transferred at the first international transfer, not"
                f" at {definition.value!r}",
                field=field,
            )
    elif definition is fit:
        purposes = ", ".join(p.value for p in Purpose if p in authorization.purposes)
        allowed = ", ".join(repr(d.value) for d in FirstTransferDefinition if d is not fit)
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"an authorization for {purposes} defines when its units are first transferred for other international"
            f' mitigation purposes: one of {allowed} (the AEF\'s "First transfer definition for OIMP" requires'
            f" one for every purpose but NDC alone); {fit.value!r} is the definition for NDC use alone",
            field=field,
        )


def check_lock(first_year: int, last_year: int, today: dt.date) -> None:
    """Refuse to lock a period that has not ended: entries dated today must always be possible."""
    check_ledger_year(first_year, "first_year", "first year")
    check_ledger_year(last_year, "last_year", "last year")
    if last_year < first_year:
        raise GatewayError(ResponseCode.INVALID_ARGUMENT, "the period ends before it starts", field="last_year")
    if last_year >= today.year:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"{last_year} has not ended (today is {today.isoformat()}): only past years can be locked",
            field="last_year",
        )
