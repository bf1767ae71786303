"""The partner directory: which Parties this gateway exchanges with, where they listen, and whom it trusts.

Trust in a partner comes from its signed trust document (`signing.trust`), loaded out of band the first time
and updated from the partner afterwards. The directory is the one place that answers "which keys may sign
for this Party, and how many must".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from signing import Envelope, TrustedParty, VerificationResult

DEFAULT_PARTNER_MAX_ENVELOPE_BYTES = 1 << 20

TRANSFER_ROLE = "transfer"
TRUST_ROLE = "trust"


SEVERAL_NAMES_SEPARATOR = "\n"
"""Joins the common names of a certificate that carries several (`transport_identity`): a line break, which no
configured identity holds, as identifiers hold no control characters."""


def transport_identity(common_names: Sequence[str]) -> str:
    """The transport identity of a verified client certificate whose subject carries ``common_names``.

    Its one name; "" for none; for several, the names joined by `SEVERAL_NAMES_SEPARATOR`, which names no partner
    and which `several_names` tells apart: such a certificate is ambiguous, whichever name comes first."""
    return SEVERAL_NAMES_SEPARATOR.join(common_names)


UNREADABLE_CERTIFICATE = "\x00"
"""The transport identity of a verified client certificate whose subject cannot be read (`gateway.tls`): no
configured identity holds a NUL, so it names no partner, and `Exchange` refuses it saying why."""


def several_names(identity: str) -> list[str] | None:
    """The names of a transport identity made of several (`transport_identity`), or None for one name or none."""
    names = identity.split(SEVERAL_NAMES_SEPARATOR)
    return names if len(names) > 1 else None


@dataclass
class Partner:
    """One partner gateway: its Party code, its partner-exchange address, and the trust held in it."""

    party: str
    address: str
    trusted: TrustedParty
    http_url: str = ""
    tls_identity: str = ""
    """The identity its mTLS certificate must carry; defaults to the Party code."""
    max_envelope_bytes: int = DEFAULT_PARTNER_MAX_ENVELOPE_BYTES
    """The largest envelope the partner takes in (its own size cap): statements that would exceed it are
    refused at the operator API rather than sent to be refused for good."""

    @property
    def identity(self) -> str:
        """The transport identity expected of this partner."""
        return self.tls_identity or self.party


@dataclass
class PartnerDirectory:
    """The partners of one gateway, by Party code."""

    partners: dict[str, Partner] = field(default_factory=dict)

    @classmethod
    def of(cls, partners: Iterable[Partner]) -> PartnerDirectory:
        """A directory of the given partners."""
        return cls({p.party: p for p in partners})

    def get(self, party: str) -> Partner | None:
        """The partner for ``party``, if configured."""
        return self.partners.get(party)

    def by_identity(self, identity: str) -> Partner | None:
        """The partner whose transport identity is ``identity``."""
        for partner in self.partners.values():
            if partner.identity == identity:
                return partner
        return None

    def by_keyids(self, keyids: Iterable[str]) -> list[Partner]:
        """The partners whose transfer role lists one of ``keyids``, in Party order (hints, not a trust decision).

        An envelope with an unnamed signature (empty keyid) could be any partner's: every partner is listed.
        """
        wanted = set(keyids)
        if "" in wanted:
            return [self.partners[p] for p in sorted(self.partners)]
        found = []
        for party in sorted(self.partners):
            role = self.partners[party].trusted.document.roles.get(TRANSFER_ROLE)
            if role is not None and wanted.intersection(role.keyids):
                found.append(self.partners[party])
        return found

    def verify(self, partner: Partner, envelope: Envelope, now: dt.datetime) -> VerificationResult:
        """Verify ``envelope`` against the threshold of ``partner``'s current transfer keys."""
        return partner.trusted.verify(envelope, TRANSFER_ROLE, now)

    def replace(self, party: str, trusted: TrustedParty) -> bool:
        """Install an updated trust state for ``party`` (after a verified update); never go back a version.

        Returns False, installing nothing, when a newer version is already trusted: two updates that raced
        cannot roll trust back to the older one.
        """
        partner = self.partners[party]
        if trusted.version < partner.trusted.version:
            return False
        partner.trusted = trusted
        return True

    def parties(self) -> Mapping[str, Partner]:
        """All partners by Party code."""
        return self.partners
