"""The partner directory: which Parties this gateway exchanges with, where they listen, and whom it trusts.

Trust in a partner comes from its signed trust document (`signing.trust`), loaded out of band the first time
and updated from the partner afterwards. The directory is the one place that answers "which keys may sign
for this Party, and how many must".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from signing import Envelope, TrustedParty, VerificationResult

TRANSFER_ROLE = "transfer"
TRUST_ROLE = "trust"


@dataclass
class Partner:
    """One partner gateway: its Party code, its partner-exchange address, and the trust held in it."""

    party: str
    address: str
    trusted: TrustedParty
    http_url: str = ""
    tls_identity: str = ""
    """The identity its mTLS certificate must carry; defaults to the Party code."""

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

    def by_keyid(self, keyids: Iterable[str]) -> Partner | None:
        """The partner one of whose transfer keys carries one of ``keyids`` (a hint, not a trust decision)."""
        wanted = set(keyids)
        for partner in self.partners.values():
            document = partner.trusted.document
            role = document.roles.get(TRANSFER_ROLE)
            if role is not None and wanted.intersection(role.keyids):
                return partner
        return None

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
