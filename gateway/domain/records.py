"""Canonical records: the gateway's own typed values, independent of any wire or storage format.

Field names follow the registries' words (DESIGN.md section 2). Protobuf messages appear only at the edges.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.domain.blocks import UnitBlock

# Matched in full (``fullmatch``), ASCII only: ``$`` would let a trailing newline through, and ``\d`` other
# scripts' digits.
PARTY_PATTERN = re.compile(r"[A-Z]{3}")

PARTY_CODES = frozenset(
    """
    AFG ALA ALB DZA ASM AND AGO AIA ATA ATG ARG ARM ABW AUS AUT AZE BHS BHR BGD BRB BLR BEL BLZ BEN BMU BTN
    BOL BES BIH BWA BVT BRA IOT BRN BGR BFA BDI CPV KHM CMR CAN CYM CAF TCD CHL CHN CXR CCK COL COM COG COD
    COK CRI CIV HRV CUB CUW CYP CZE DNK DJI DMA DOM ECU EGY SLV GNQ ERI EST SWZ ETH FLK FRO FJI FIN FRA GUF
    PYF ATF GAB GMB GEO DEU GHA GIB GRC GRL GRD GLP GUM GTM GGY GIN GNB GUY HTI HMD VAT HND HKG HUN ISL IND
    IDN IRN IRQ IRL IMN ISR ITA JAM JPN JEY JOR KAZ KEN KIR PRK KOR KWT KGZ LAO LVA LBN LSO LBR LBY LIE LTU
    LUX MAC MDG MWI MYS MDV MLI MLT MHL MTQ MRT MUS MYT MEX FSM MDA MCO MNG MNE MSR MAR MOZ MMR NAM NRU NPL
    NLD NCL NZL NIC NER NGA NIU NFK MKD MNP NOR OMN PAK PLW PSE PAN PNG PRY PER PHL PCN POL PRT PRI QAT REU
    ROU RUS RWA BLM SHN KNA LCA MAF SPM VCT WSM SMR STP SAU SEN SRB SYC SLE SGP SXM SVK SVN SLB SOM ZAF SGS
    SSD ESP LKA SDN SUR SJM SWE CHE SYR TWN TJK TZA THA TLS TGO TKL TON TTO TUN TUR TKM TCA TUV UGA UKR ARE
    GBR USA UMI URY UZB VUT VEN VNM VGB VIR WLF ESH YEM ZMB ZWE
    """.split()  # noqa: SIM905
)
"""ISO 3166-1 alpha-3 codes, the Party codes of the AEF (DESIGN.md section 2)."""

COOPERATIVE_APPROACH_PATTERN = re.compile(r"CA[0-9]{4}")
PARTY_REGISTRY_PATTERN = re.compile(r"[A-Z]{3}[0-9]{2}")


class Purpose(enum.StrEnum):
    """Purposes for authorization (AEF nomenclature)."""

    NDC = "NDC"
    OIMP = "OIMP"
    IMP = "IMP"
    OP = "OP"
    NDC_AND_OIMP = "NDC and OIMP"
    NDC_AND_IMP = "NDC and IMP"
    NDC_AND_OP = "NDC and OP"


_PURPOSE_PAIRS = {
    frozenset({Purpose.NDC, Purpose.OIMP}): Purpose.NDC_AND_OIMP,
    frozenset({Purpose.NDC, Purpose.IMP}): Purpose.NDC_AND_IMP,
    frozenset({Purpose.NDC, Purpose.OP}): Purpose.NDC_AND_OP,
}


def aef_purpose(purposes: Iterable[Purpose]) -> Purpose | None:
    """The one value of the AEF's "Purposes for authorization" column that ``purposes`` spell together: one
    purpose, or NDC with one other (``NDC and OIMP``); None for any other set, which the column cannot hold."""
    found = frozenset(purposes)
    if len(found) == 1:
        return next(iter(found))
    return _PURPOSE_PAIRS.get(found)


class ActionType(enum.StrEnum):
    """AEF action types."""

    AUTHORIZATION = "Authorization"
    FIRST_TRANSFER = "First transfer"
    TRANSFER = "Transfer"
    ACQUISITION = "Acquisition"
    USE = "Use"
    CANCELLATION = "Cancellation"
    VOLUNTARY_CANCELLATION = "Voluntary Cancellation"


class FirstTransferDefinition(enum.StrEnum):
    """When an authorized outcome becomes first transferred, for OIMP use (set per authorization)."""

    FIRST_INTERNATIONAL_TRANSFER = "First international transfer"
    AUTHORISATION = "Authorisation"
    ISSUANCE = "Issuance"
    USE_OR_CANCELLATION = "Use or Cancellation"


class AdjustmentMethod(enum.StrEnum):
    """How a Party applies corresponding adjustments over its NDC period (DESIGN.md section 3)."""

    TRAJECTORY = "single-year trajectory"
    AVERAGING = "single-year averaging"
    MULTI_YEAR = "multi-year"


class AccountType(enum.StrEnum):
    """Kinds of accounts a gateway keeps (DESIGN.md section 4)."""

    COMPLIANCE_ENTITY = "compliance entity"
    PROJECT_OWNER = "project owner"
    FINANCIAL_INSTITUTION = "financial institution"
    PARTY_HOLDING = "Party holding"
    CANCELLATION = "cancellation"
    RETIREMENT = "retirement"
    USE = "use"


HOLDING_ACCOUNT_TYPES = frozenset(
    {
        AccountType.COMPLIANCE_ENTITY,
        AccountType.PROJECT_OWNER,
        AccountType.FINANCIAL_INSTITUTION,
        AccountType.PARTY_HOLDING,
    }
)


@dataclass(frozen=True, slots=True)
class Account:
    """An account at one gateway."""

    account_id: str
    holder_name: str
    account_type: AccountType

    @property
    def can_hold(self) -> bool:
        """True for holding accounts, which may receive units from a transfer."""
        return self.account_type in HOLDING_ACCOUNT_TYPES


@dataclass(frozen=True, slots=True)
class AccountRef:
    """An account named across the border: the Party whose gateway keeps it, and its ID there."""

    party: str
    account_id: str


@dataclass(frozen=True, slots=True)
class Authorization:
    """A Party's approval that mitigation outcomes may be used abroad (AEF Authorizations table)."""

    authorization_id: str
    date: dt.date
    version: str
    cooperative_approach: str
    metric: str
    purposes: frozenset[Purpose]
    authorized_quantity: int
    timeframe_start: int
    timeframe_end: int
    first_transfer_definition: FirstTransferDefinition
    sectors: tuple[str, ...] = ()
    activity_types: tuple[str, ...] = ()
    expires: dt.date | None = None
    revoked: bool = False
    """True for the version that revokes the authorization from its date: nothing may act under it after."""
    note: str = ""
    """Additional explanatory information, e.g. why a version amends or revokes the authorization."""
    authorized_parties: tuple[str, ...] = ()
    """The AEF "Authorized Party(ies) ID" (alpha-3 codes); the AEF report needs them and guesses none."""
    authorized_entities: tuple[str, ...] = ()
    """The AEF "Authorized entity(ies) ID"."""
    oimp_authorized: str = ""
    """The AEF "OIMP authorized by the Party" (e.g. CORSIA), for authorizations with OIMP."""
    terms_and_conditions: str = ""
    """The AEF "Authorization terms and conditions"."""
    documentation: str = ""
    """The AEF "Authorization documentation" (e.g. a reference to the published authorization)."""
    party: str = ""
    """The authorizing Party; empty on a version recorded before versions named it (then this gateway's own,
    unless a later version of the authorization names another: `authorizing_parties`)."""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One block action in the corresponding-adjustment ledger (one AEF Actions row)."""

    entry_id: int
    action_date: dt.datetime
    action_type: ActionType
    transfer_id: str
    block: UnitBlock
    cooperative_approach: str
    authorization_id: str
    first_transferring_party: str
    transferring_party: str
    acquiring_party: str
    purpose: Purpose
    action_subtype: str = ""
    """The AEF action subtype (`gateway.domain.canonical.ActionSubtype` values), where one applies."""
    year_of_use: int | None = None
    """Uses towards the NDC: the calendar year for which the units are used."""
    using_party: str = ""
    """Uses and cancellations: the using or cancelling Party."""
    using_entity: str = ""
    """Uses and cancellations by an authorized entity: its ID."""
    note: str = ""
    """Additional explanatory information, e.g. the reason an operator gave."""

    @property
    def quantity(self) -> int:
        """Quantity of the action in t CO2e."""
        return self.block.quantity


@dataclass(frozen=True, slots=True)
class TransferTerms:
    """What a proposal asks for: the minimum content bilateral treaties require of a transfer notice."""

    transferring_party: str
    acquiring_party: str
    source_account: str
    acquiring_account: str
    cooperative_approach: str
    authorization_id: str
    purpose: Purpose
    adjustment_method: AdjustmentMethod
    blocks: tuple[UnitBlock, ...] = field(default=())

    @property
    def quantity(self) -> int:
        """Total quantity of the transfer."""
        return sum(block.quantity for block in self.blocks)
