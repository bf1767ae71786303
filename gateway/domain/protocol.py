"""Pure decisions of the transfer protocol (DESIGN.md section 4): the checks each side runs, the acquiring
side's decision policy, and the ledger entries a completed transfer produces.

Nothing here reads a clock, a database or a socket: callers pass in what the checks need.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.domain import text
from gateway.domain.blocks import UnitBlock, find_overlaps
from gateway.domain.canonical import MitigationType
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.records import (
    COOPERATIVE_APPROACH_PATTERN,
    PARTY_PATTERN,
    Account,
    AdjustmentMethod,
    Authorization,
    Purpose,
    TransferTerms,
)

MAX_REJECTION_BLOCKS = 100
"""Blocks a rejection names at most, so that a Decision stays about the size of the Proposal it answers."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """One reason a transfer was refused, with the blocks it concerns."""

    code: ResponseCode
    message: str
    blocks: tuple[UnitBlock, ...] = ()


def parse_purpose(value: str, *, field: str = "purpose") -> Purpose:
    """The AEF purpose named by ``value``, or a GatewayError naming the field."""
    return text.parse_choice(Purpose, value, field, what="purpose")


def parse_adjustment_method(value: str, *, field: str = "adjustment_method") -> AdjustmentMethod:
    """The corresponding-adjustment method named by ``value``, or a GatewayError naming the field."""
    return text.parse_choice(AdjustmentMethod, value, field, what="adjustment method")


def validate_terms(terms: TransferTerms) -> None:
    """Refuse terms whose fields are malformed, naming the first offending field."""
    for name in ("transferring_party", "acquiring_party"):
        value = getattr(terms, name)
        if not PARTY_PATTERN.fullmatch(value):
            raise GatewayError(
                ResponseCode.INVALID_ARGUMENT, f"{value!r} is not an ISO 3166-1 alpha-3 Party code", field=name
            )
    if terms.transferring_party == terms.acquiring_party:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            "a cross-border transfer needs two different Parties",
            field="acquiring_account.party",
        )
    if not COOPERATIVE_APPROACH_PATTERN.fullmatch(terms.cooperative_approach):
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"{terms.cooperative_approach[:40]!r} is not a cooperative approach ID (CA followed by 4 digits)",
            field="cooperative_approach",
        )
    text.check_identifier(terms.source_account, "source_account", what="source account")
    text.check_identifier(terms.acquiring_account, "acquiring_account.account_id", what="acquiring account")
    if not terms.authorization_id:
        raise GatewayError(
            ResponseCode.AUTHORIZATION_MISSING, "a transfer needs an authorization ID", field="authorization_id"
        )
    text.check_identifier(terms.authorization_id, "authorization_id", what="authorization ID")
    if not terms.blocks:
        raise GatewayError(ResponseCode.INVALID_ARGUMENT, "a transfer needs at least one block", field="blocks")
    text.check_count(terms.blocks, "blocks", text.MAX_BLOCKS_PER_TRANSFER, what="blocks")
    if terms.quantity > text.MAX_INT64:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"the transfer's total quantity {terms.quantity} exceeds 2^63 - 1",
            field="blocks",
        )
    pairs = find_overlaps(terms.blocks)
    if pairs:
        first, second = pairs[0]
        raise GatewayError(
            ResponseCode.BLOCK_OVERLAP,
            f"the transfer names {first.describe()} and {second.describe()}, which overlap",
            field="blocks",
            blocks=(first, second),
        )
    check_blocks_enter_ledger(terms.blocks)


def check_blocks_enter_ledger(blocks: Sequence[UnitBlock]) -> None:
    """`check_enters_ledger` for each of a transfer's blocks, named ``blocks[i]``."""
    for index, block in enumerate(blocks):
        check_enters_ledger(block, f"blocks[{index}]")


def check_enters_ledger(block: UnitBlock, field: str) -> None:
    """Refuse ``block`` as the block of a ledger entry unless the AEF report can write it: with an AEF mitigation
    type (`check_mitigation_type`) and serials that serve as ITMO serials (`check_itmo_serials`). ``field`` names
    the block; the refusal names its ``mitigation_type`` or ``space.issuance``."""
    check_mitigation_type(block, f"{field}.mitigation_type")
    check_itmo_serials(block, f"{field}.space.issuance")


_MITIGATION_TYPES = frozenset(m.value for m in MitigationType)


def check_mitigation_type(block: UnitBlock, field: str) -> None:
    """Refuse ``block`` as the block of a ledger entry unless it states an AEF mitigation type: every entry is a
    row of the AEF Actions table, which needs one, and an entry is never changed, so a block without one would
    leave its year's report impossible to write for good. ``field`` names the block in the request."""
    if block.mitigation_type not in _MITIGATION_TYPES:
        stated = f"states mitigation type {block.mitigation_type!r}" if block.mitigation_type else "states none"
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"{block.describe()} {stated}; units enter the ledger (move abroad, or are tied, used or cancelled) only"
            f" with an AEF mitigation type: {', '.join(sorted(_MITIGATION_TYPES))}. Correct the issuance record",
            field=field,
            blocks=[block],
        )


def check_itmo_serials(block: UnitBlock, field: str) -> None:
    """Refuse ``block`` as the block of a ledger entry when its serials restart per issuance: the AEF names an
    ITMO by its serial (`<cooperative approach>-<Party ITMO registry>-<first transferring Party>-<serial>-<vintage>`),
    which cannot tell two issuances' units apart, so the report refuses such an entry; and an entry is never
    changed, so its year's report, and every later one, could never be written. ``field`` names the block in the
    request."""
    if block.space.issuance:
        raise GatewayError(
            ResponseCode.INVALID_ARGUMENT,
            f"{block.describe()} is of issuance {block.space.issuance!r} of {block.space.issuing_registry}, whose"
            " serials restart per issuance: they cannot serve as ITMO serials (the AEF's ITMO ID is <cooperative"
            " approach>-<Party ITMO registry>-<first transferring Party>-<serial>-<vintage>, with no issuance), so"
            " these units are held here but do not enter the ledger (move abroad, or are tied, used or"
            " cancelled). Units that are to become ITMOs must be registered with serials unique across issuances"
            " (a registry configured without issuance_pattern)",
            field=field,
            blocks=[block],
        )


def first_transfer_quantity(terms: TransferTerms) -> int:
    """The part of a transfer that ties units to its authorization: those neither tied nor first transferred.

    Units count against an authorization's quantity once, when they are tied to it (here, or when they were
    registered, used or cancelled under it); onward transfers of units tied or first transferred before (and
    units that came back) do not (DESIGN.md section 3).
    """
    return sum(block.quantity for block in terms.blocks if not block.first_transferred and not block.tied)


def check_authorization(
    authorization: Authorization | None,
    terms: TransferTerms,
    *,
    first_transferred_before: int,
    today: dt.date,
) -> list[Rejection]:
    """The initiating side's authorization checks: present, in force today, covering the vintages, the purpose
    and, for the units first transferred now, the quantity.

    ``first_transferred_before`` is the quantity already first transferred, or reserved for a first transfer,
    under this authorization.
    """
    if authorization is None:
        return [Rejection(ResponseCode.AUTHORIZATION_MISSING, f"authorization {terms.authorization_id!r} is unknown")]
    rejections: list[Rejection] = []
    if authorization.revoked:
        rejections.append(
            Rejection(
                ResponseCode.AUTHORIZATION_EXPIRED,
                f"authorization {authorization.authorization_id!r} was revoked on {authorization.date.isoformat()}",
            )
        )
    if authorization.cooperative_approach != terms.cooperative_approach:
        rejections.append(
            Rejection(
                ResponseCode.AUTHORIZATION_MISSING,
                f"authorization {authorization.authorization_id!r} belongs to cooperative approach "
                f"{authorization.cooperative_approach}, not {terms.cooperative_approach}",
            )
        )
    if today < authorization.date:
        rejections.append(
            Rejection(
                ResponseCode.AUTHORIZATION_EXPIRED,
                f"authorization {authorization.authorization_id!r} is dated {authorization.date.isoformat()} and is "
                f"not in force on {today.isoformat()}",
            )
        )
    if authorization.expires is not None and today > authorization.expires:
        rejections.append(
            Rejection(
                ResponseCode.AUTHORIZATION_EXPIRED,
                f"authorization {authorization.authorization_id!r} expired on {authorization.expires.isoformat()}",
            )
        )
    outside = tuple(
        b for b in terms.blocks if not authorization.timeframe_start <= b.vintage <= authorization.timeframe_end
    )
    if outside:
        rejections.append(
            Rejection(
                ResponseCode.AUTHORIZATION_EXPIRED,
                f"vintage {outside[0].vintage} is outside the authorized timeframe "
                f"{authorization.timeframe_start} - {authorization.timeframe_end}",
                outside,
            )
        )
    if terms.purpose not in authorization.purposes:
        rejections.append(
            Rejection(
                ResponseCode.PURPOSE_NOT_ALLOWED,
                f"purpose {terms.purpose.value!r} is not authorized by {authorization.authorization_id!r}",
            )
        )
    first = first_transfer_quantity(terms)
    if first and first_transferred_before + first > authorization.authorized_quantity:
        rejections.append(
            Rejection(
                ResponseCode.AUTHORIZATION_EXCEEDED,
                f"{first_transferred_before} already first transferred + {first} to first transfer now exceeds the "
                f"authorized {authorization.authorized_quantity}",
            )
        )
    return rejections


def check_acquisition(
    terms: TransferTerms,
    *,
    self_party: str,
    account: Account | None,
    known_overlapping: Sequence[UnitBlock],
    overlapping: Sequence[UnitBlock] | None = None,
    not_abroad: Sequence[UnitBlock] = (),
    contradicting: Sequence[tuple[UnitBlock, str]] = (),
    frozen_overlapping: Sequence[UnitBlock] = (),
) -> list[Rejection]:
    """The acquiring side's checks on a proposal: the account, and the double-counting guard.

    ``known_overlapping`` are (some of) the blocks this gateway holds, has reserved, has pending or still owes a
    partner that intersect the proposal's blocks; any of them refuses the proposal. ``overlapping`` are the
    proposal's blocks that intersect them (found by the caller's lookups; derived here when not given).
    ``not_abroad`` are the proposal's
    blocks of a serial space this gateway issues, or tied to this Party's authorization, whose units its history
    does not show abroad: never issued or held here, never sent, or already back (DESIGN.md section 4,
    "Provenance"). ``contradicting`` are blocks whose tie or first-transfer state contradicts this Party's own
    records of the same units, each with the reason.
    """
    rejections: list[Rejection] = []
    if terms.acquiring_party != self_party:
        rejections.append(
            Rejection(ResponseCode.WRONG_RECIPIENT, f"the acquiring Party is {terms.acquiring_party}, not {self_party}")
        )
    if account is None:
        rejections.append(
            Rejection(ResponseCode.UNKNOWN_ACCOUNT, f"account {terms.acquiring_account!r} is not known here")
        )
    elif not account.can_hold:
        rejections.append(
            Rejection(
                ResponseCode.ACCOUNT_NOT_ELIGIBLE,
                f"account {account.account_id!r} is a {account.account_type.value} account and cannot hold units",
            )
        )
    if known_overlapping:
        if overlapping is None:
            overlapping = [b for b in terms.blocks if any(b.overlaps(k) for k in known_overlapping)]
        offending = tuple(overlapping[:MAX_REJECTION_BLOCKS])
        shown = ", ".join(k.describe() for k in known_overlapping[:5])
        more = f" and {len(known_overlapping) - 5} more" if len(known_overlapping) > 5 else ""
        rejections.append(
            Rejection(ResponseCode.BLOCK_OVERLAP, f"overlaps {shown}{more}, already known here", offending)
        )
    if not_abroad:
        rejections.append(
            Rejection(
                ResponseCode.PROVENANCE_REFUSED,
                f"{not_abroad[0].describe()} is of a serial space {self_party} issues, and {self_party}'s history "
                "does not show these units abroad: never issued, never sent, or already back",
                tuple(not_abroad[:MAX_REJECTION_BLOCKS]),
            )
        )
    if contradicting:
        rejections.append(
            Rejection(
                ResponseCode.PROVENANCE_REFUSED,
                contradicting[0][1],
                tuple(b for b, _ in contradicting[:MAX_REJECTION_BLOCKS]),
            )
        )
    if frozen_overlapping:
        rejections.append(
            Rejection(ResponseCode.BLOCK_FROZEN, "a block is frozen by a discrepancy", tuple(frozen_overlapping))
        )
    return rejections


class Verdict(enum.StrEnum):
    """What a decision rule says about a proposal."""

    ACCEPT = "accept"
    REJECT = "reject"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class DecisionRule:
    """One rule of the acquiring side's decision policy. Empty matchers match anything."""

    verdict: Verdict
    partner: str = ""
    acquiring_account: str = ""
    purpose: Purpose | None = None
    max_quantity: int | None = None

    def matches(self, partner: str, terms: TransferTerms) -> bool:
        """True when the rule applies to a proposal from ``partner`` with ``terms``."""
        return (
            (not self.partner or self.partner == partner)
            and (not self.acquiring_account or self.acquiring_account == terms.acquiring_account)
            and (self.purpose is None or self.purpose == terms.purpose)
            and (self.max_quantity is None or terms.quantity <= self.max_quantity)
        )


@dataclass(frozen=True, slots=True)
class DecisionPolicy:
    """An ordered list of rules; the first that matches decides. With no match, the proposal is held."""

    rules: tuple[DecisionRule, ...] = ()

    def decide(self, partner: str, terms: TransferTerms) -> Verdict:
        """The verdict for a proposal that passed the acquiring side's checks."""
        for rule in self.rules:
            if rule.matches(partner, terms):
                return rule.verdict
        return Verdict.HOLD


ACCEPT_ALL = DecisionPolicy((DecisionRule(Verdict.ACCEPT),))
"""A policy that accepts every proposal passing the checks (demos and tests)."""


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long a transfer may wait for the other side (DESIGN.md section 4).

    ``hold`` bounds how long the acquiring side keeps a proposal its policy held for a person; past it the
    proposal is rejected. ``decision`` bounds how long the initiating side waits for any Decision; past it
    the transfer is terminated and the reserved units released. ``hold`` should be the shorter, so that a
    held proposal is answered before its initiator gives up.
    """

    hold: dt.timedelta = dt.timedelta(hours=48)
    decision: dt.timedelta = dt.timedelta(hours=72)
