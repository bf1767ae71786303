"""Canonical records beyond blocks: domestic holdings, the five AEF tables and registry units.

These are the gateway's own typed values (DESIGN.md sections 2 and 6). Adapters convert every schema to and
from them; no wire or file format appears here. Columns that the UNFCCC platform fills (review status,
consistency-check result, review reference) have no field: the gateway never sets them.

Field names follow the registries' words. Every record carrying units holds one `UnitBlock`, so that the
serial arithmetic (split, merge, overlap) applies to it unchanged.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.blocks import UnitBlock
from gateway.domain.records import ActionType, FirstTransferDefinition, Purpose


class ActionSubtype(enum.StrEnum):
    """AEF action subtypes, as transcribed in DESIGN.md section 2."""

    FIRST_TRANSFER_TO_ANOTHER_PARTY = "First transfer to another Party"
    AUTHORIZATION = "Authorization"
    ISSUANCE = "Issuance"
    USE_OR_CANCELLATION = "Use or cancellation"
    ADAPTATION_FUND_TRANSFER = "Mandatory and Voluntary transfer to the Adaptation Fund (A6.4ERs)"
    OMGE_CANCELLATION = "Mandatory and Voluntary cancellation to deliver OMGE"
    OTHER_CANCELLATIONS = "Other cancellations"
    NOT_YET_DEFINED = "Not yet defined"


class MitigationType(enum.StrEnum):
    """AEF mitigation types."""

    EMISSION_REDUCTIONS = "Emission reductions"
    REMOVALS = "Removals"
    REDUCTIONS_AND_REMOVALS = "Emission reductions and removals"


class Metric(enum.StrEnum):
    """AEF metrics. Only GHG is supported: a non-GHG metric is refused (DESIGN.md section 2)."""

    GHG = "GHG"
    NON_GHG = "non-GHG"


class AefSector(enum.StrEnum):
    """AEF sectors."""

    AGRICULTURE = "Agriculture"
    BUILDING = "Building and construction"
    CROSS_SECTORAL = "Cross-sectoral mechanisms"
    ENERGY_GENERATION = "Energy generation"
    FORESTRY = "Forestry and land use"
    INDUSTRIAL_PROCESSES = "Industrial processes"
    TRANSPORTATION = "Transportation"
    URBAN_DEVELOPMENT = "Urban development"
    WASTE_MANAGEMENT = "Waste management"


class CeaSector(enum.StrEnum):
    """Sectors covered by China's national emissions-trading scheme (DESIGN.md section 1)."""

    POWER = "power"
    STEEL = "steel"
    CEMENT = "cement"
    ALUMINIUM = "aluminium"


# --- domestic records -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CeaAllowance:
    """A block of CEA allowances held in the national emissions-trading registry.

    The allocation year is the block's vintage; the quantity is the block's quantity; the registry's own
    opaque reference is the block's ``registry_reference``. None of them is stored twice.
    """

    holder_account: str
    compliance_entity: str
    sector: CeaSector
    block: UnitBlock

    @property
    def allocation_year(self) -> int:
        """The year for which the allowances were allocated."""
        return self.block.vintage

    @property
    def quantity(self) -> int:
        """Number of allowances (t CO2)."""
        return self.block.quantity

    @property
    def registry_reference(self) -> str:
        """The registry's opaque reference for the holding."""
        return self.block.registry_reference


@dataclass(frozen=True, slots=True)
class CcerCredit:
    """A block of CCER credits with the fields the public disclosure platform shows.

    ``certified_quantity`` is the quantity certified for the whole issuance; the block may be all of it or
    a part left after splits. Vintage, project ID, methodology code, mitigation type and the CCER ID (as
    the registry reference) live in the block.
    """

    project_name: str
    project_type_code: str
    province: str
    monitoring_period_start: dt.date
    monitoring_period_end: dt.date
    certified_quantity: int
    block: UnitBlock

    @property
    def ccer_id(self) -> str:
        """The CCER issuance ID published by the registry."""
        return self.block.registry_reference

    @property
    def project_id(self) -> str:
        """The project's registry ID."""
        return self.block.project_id

    @property
    def methodology_code(self) -> str:
        """The methodology code, e.g. ``CCER-14-001-V01``."""
        return self.block.methodology_code

    @property
    def vintage(self) -> int:
        """The vintage year."""
        return self.block.vintage


@dataclass(frozen=True, slots=True)
class RegistryUnit:
    """Units as a registry or data trust records them: a block plus its status and custody facts.

    Empty strings and ``None`` mean *not stated by the source*; nothing is filled in.
    """

    block: UnitBlock
    unit_type: str = ""
    status: str = ""
    status_reason: str = ""
    status_date: dt.date | None = None
    retirement_detail: str = ""
    retirement_beneficiary: str = ""
    retirement_beneficiary_id: str = ""
    link: str = ""
    metric: str = ""
    current_owner: str = ""
    itmo_reference_id: str = ""
    marketplace: str = ""
    marketplace_link: str = ""
    marketplace_identifier: str = ""
    record_id: str = ""
    org_uid: str = ""
    issuance_record_id: str = ""


# --- AEF tables -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AefSubmission:
    """AEF table 1: the submission. The platform-filled columns have no field."""

    party: str
    version: str
    reported_year: int
    submission_date: dt.date
    ndc_first_year: int
    ndc_last_year: int


@dataclass(frozen=True, slots=True)
class AefAuthorization:
    """AEF table 2: one authorization, with every nomenclature column the gateway sets."""

    authorization_id: str
    date: dt.date
    cooperative_approach: str
    version: str
    authorized_quantity: int
    metric: Metric
    gwp_values: str
    sectors: tuple[AefSector, ...]
    activity_types: tuple[str, ...]
    purposes: Purpose
    authorized_parties: tuple[str, ...]
    authorized_entities: tuple[str, ...]
    oimp_authorized: str
    timeframe_start: int
    timeframe_end: int
    terms_and_conditions: str
    documentation: str
    first_transfer_definition: FirstTransferDefinition | None
    additional_information: str = ""


@dataclass(frozen=True, slots=True)
class AefHolding:
    """AEF table 4: a block held at the snapshot (31 December 23:59:59.999 UTC of the reported year).

    ``itmo_first_serial`` and ``itmo_last_serial`` are the serials of the first and last ITMO; the First ID
    and Last ID columns are rendered from them and the row's other columns (see ``adapters.serials.itmo``).
    The underlying-unit columns are all set or all empty.
    """

    cooperative_approach: str
    authorization_id: str
    first_transferring_party: str
    party_registry: str
    itmo_first_serial: int
    itmo_last_serial: int
    underlying_registry: str
    first_unit_id: str
    last_unit_id: str
    metric: Metric
    gwp_values: str
    quantity: int
    mitigation_type: MitigationType
    vintage: int


@dataclass(frozen=True, slots=True)
class ActionHeader:
    """The columns of an AEF action that do not depend on its block.

    The rows of one batch usually share one header, so that a batch of many blocks costs one small
    record per block (see `AefAction`).
    """

    action_date: dt.datetime
    action_type: ActionType
    action_subtype: ActionSubtype
    cooperative_approach: str
    authorization_id: str
    first_transferring_party: str
    party_registry: str
    underlying_registry: str
    metric: Metric
    gwp_values: str
    transferring_party: str = ""
    acquiring_party: str = ""
    purpose: Purpose | None = None
    using_party: str = ""
    using_entity: str = ""
    ndc_year_of_use: int | None = None
    additional_information: str = ""


@dataclass(frozen=True, slots=True)
class AefAction:
    """AEF table 3: one block action. Action-type rules are checked by ``adapters.aef_columns``.

    Every column is readable as an attribute (``row.action_type``, ``row.quantity``); the block-independent
    ones live in the shared `ActionHeader`. Build a row from flat column values with `AefAction.of`.
    """

    header: ActionHeader
    itmo_first_serial: int
    itmo_last_serial: int
    first_unit_id: str
    last_unit_id: str
    quantity: int
    mitigation_type: MitigationType
    vintage: int

    @classmethod
    def of(cls, **columns: Any) -> AefAction:
        """A row from flat column values (the names in `ACTION_FIELDS`)."""
        header = ActionHeader(**{name: columns.pop(name) for name in _HEADER_FIELDS if name in columns})
        return cls(header, **columns)

    @property
    def action_date(self) -> dt.datetime:
        """Action date (UTC)."""
        return self.header.action_date

    @property
    def action_type(self) -> ActionType:
        """Action type."""
        return self.header.action_type

    @property
    def action_subtype(self) -> ActionSubtype:
        """Action subtype."""
        return self.header.action_subtype

    @property
    def cooperative_approach(self) -> str:
        """Cooperative approach ID."""
        return self.header.cooperative_approach

    @property
    def authorization_id(self) -> str:
        """Authorization ID."""
        return self.header.authorization_id

    @property
    def first_transferring_party(self) -> str:
        """First transferring participating Party ID."""
        return self.header.first_transferring_party

    @property
    def party_registry(self) -> str:
        """Party ITMO registry ID."""
        return self.header.party_registry

    @property
    def underlying_registry(self) -> str:
        """Underlying unit registry ID."""
        return self.header.underlying_registry

    @property
    def metric(self) -> Metric:
        """Metric."""
        return self.header.metric

    @property
    def gwp_values(self) -> str:
        """GWP value(s)."""
        return self.header.gwp_values

    @property
    def transferring_party(self) -> str:
        """Transferring Party ID (acquisitions only)."""
        return self.header.transferring_party

    @property
    def acquiring_party(self) -> str:
        """Acquiring Party ID (first transfers and transfers only)."""
        return self.header.acquiring_party

    @property
    def purpose(self) -> Purpose | None:
        """Purpose of use or cancellation."""
        return self.header.purpose

    @property
    def using_party(self) -> str:
        """Using/cancelling Party ID."""
        return self.header.using_party

    @property
    def using_entity(self) -> str:
        """Using/cancelling entity ID."""
        return self.header.using_entity

    @property
    def ndc_year_of_use(self) -> int | None:
        """NDC year of use (uses only)."""
        return self.header.ndc_year_of_use

    @property
    def additional_information(self) -> str:
        """Additional information."""
        return self.header.additional_information


_HEADER_FIELDS = tuple(ActionHeader.__dataclass_fields__)
ACTION_FIELDS: tuple[str, ...] = (*_HEADER_FIELDS, *(n for n in AefAction.__dataclass_fields__ if n != "header"))
"""Every column field of an `AefAction`, flat."""


@dataclass(frozen=True, slots=True)
class AefAuthorizedEntity:
    """AEF table 5: an entity authorized to take part in a cooperative approach."""

    authorization_date: dt.date
    name: str
    country_of_incorporation: str
    identification_number: str
    cooperative_approach: str
    conditions: str = ""
    change_and_revocation_conditions: str = ""
    additional_information: str = ""


@dataclass(frozen=True, slots=True)
class AefReport:
    """The five AEF tables of one submission, as a Party submits them in one workbook."""

    submission: tuple[AefSubmission, ...] = field(default=())
    authorizations: tuple[AefAuthorization, ...] = field(default=())
    actions: tuple[AefAction, ...] = field(default=())
    holdings: tuple[AefHolding, ...] = field(default=())
    authorized_entities: tuple[AefAuthorizedEntity, ...] = field(default=())
