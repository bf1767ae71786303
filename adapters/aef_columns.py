"""The AEF column definitions: the one table that every AEF reader and writer uses.

Each row of `COLUMNS` gives a column's table, its header in the common nomenclature, the canonical field it
holds, its value kind, whether it is required, the action types (or purposes) it is limited to, and its key
in the CAD Trust v2 data model (empty where CAD Trust has no such field). A correction is one edit here.

The list is a careful transcription of the nomenclature (DESIGN.md section 2), not an official V2 template
(none has been published). Column rules encoded here:

* Transferring Party ID is for acquisitions only; Acquiring Party ID for transfers and first transfers to
  another Party only (a first transfer at authorization, issuance or use has none); the calendar year of use
  for uses towards the NDC only; purpose and using/cancelling Party and entity for uses and cancellations.
* First transfer definition for OIMP applies to every purpose but NDC alone; OIMP authorized by the Party to
  purposes with OIMP.
* A cell that does not apply to a row holds ``NA`` in an AEF file (`NOT_APPLICABLE`); only the platform
  columns stay blank (DESIGN.md section 2).
* Platform columns (review status, consistency results, review reference) are left blank; a filled one is
  refused on reading.
* Non-GHG columns must stay blank: non-GHG metrics are out of scope and refused with a clear error.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.domain import text
from gateway.domain.canonical import (
    AefAction,
    AefAuthorization,
    AefAuthorizedEntity,
    AefHolding,
    AefSubmission,
)
from gateway.domain.records import ActionType, Purpose

BLOCK_FIELDS = (
    "itmo_first_serial",
    "itmo_last_serial",
    "first_unit_id",
    "last_unit_id",
    "quantity",
    "mitigation_type",
    "vintage",
)
"""The canonical fields of the Actions and Holdings columns that vary with the block; a fast writer spells
these into an otherwise shared row."""

NOT_APPLICABLE = text.NOT_APPLICABLE
"""What an AEF file's cell holds where the column does not apply to the row."""


class Table(enum.StrEnum):
    """The five AEF tables, by their sheet titles, in submission order."""

    SUBMISSION = "Submission"
    AUTHORIZATIONS = "Authorizations"
    ACTIONS = "Actions"
    HOLDINGS = "Holdings"
    AUTHORIZED_ENTITIES = "Authorized entities"


class Kind(enum.Enum):
    """How a column's value is written and checked."""

    TEXT = enum.auto()
    TEXTS = enum.auto()
    PARTY = enum.auto()
    PARTIES = enum.auto()
    COOPERATIVE_APPROACH = enum.auto()
    PARTY_REGISTRY = enum.auto()
    VERSION = enum.auto()
    YEAR = enum.auto()
    QUANTITY = enum.auto()
    DATE = enum.auto()
    INSTANT = enum.auto()
    ACTION_TYPE = enum.auto()
    ACTION_SUBTYPE = enum.auto()
    PURPOSE = enum.auto()
    METRIC = enum.auto()
    MITIGATION_TYPE = enum.auto()
    SECTORS = enum.auto()
    TIMEFRAME = enum.auto()
    FIRST_TRANSFER = enum.auto()
    ITMO_FIRST = enum.auto()
    ITMO_LAST = enum.auto()
    UNDERLYING_REGISTRY = enum.auto()
    UNDERLYING_UNIT = enum.auto()
    PLATFORM = enum.auto()
    NON_GHG = enum.auto()


@dataclass(frozen=True, slots=True)
class Column:
    """One AEF column (see the module docstring)."""

    table: Table
    header: str
    field: str
    kind: Kind
    required: bool
    only_for: frozenset[str] | None = None
    cadt: str = ""


_T = Table
_K = Kind
_ACQ = frozenset({ActionType.ACQUISITION.value})
_TRANSFERS = frozenset({ActionType.FIRST_TRANSFER.value, ActionType.TRANSFER.value})
_USE = frozenset({ActionType.USE.value})
_USE_OR_CANCEL = frozenset(
    {ActionType.USE.value, ActionType.CANCELLATION.value, ActionType.VOLUNTARY_CANCELLATION.value}
)
_OIMP = frozenset({Purpose.OIMP.value, Purpose.NDC_AND_OIMP.value})
_NOT_NDC_ONLY = frozenset(p.value for p in Purpose) - {Purpose.NDC.value}


def _block(table: Table, prefix: str) -> tuple[Column, ...]:
    """The block columns shared by Actions and Holdings."""
    return (
        Column(
            table,
            "Cooperative approach ID",
            "cooperative_approach",
            _K.COOPERATIVE_APPROACH,
            True,
            cadt=f"{prefix}_coopoerative_approach_id",
        ),
        Column(table, "Authorization ID", "authorization_id", _K.TEXT, True, cadt=f"{prefix}_authorization_id"),
        Column(
            table,
            "First transferring participating Party ID",
            "first_transferring_party",
            _K.PARTY,
            True,
            cadt=f"{prefix}_first_transferring_party_id",
        ),
        Column(
            table,
            "Party ITMO registry ID",
            "party_registry",
            _K.PARTY_REGISTRY,
            True,
            cadt=f"{prefix}_party_itmo_registry_id",
        ),
        Column(table, "First ID", "itmo_first_serial", _K.ITMO_FIRST, True, cadt=f"{prefix}_itmo_first_id"),
        Column(table, "Last ID", "itmo_last_serial", _K.ITMO_LAST, True, cadt=f"{prefix}_itmo_last_id"),
        Column(
            table,
            "Underlying unit registry ID",
            "underlying_registry",
            _K.UNDERLYING_REGISTRY,
            False,
            cadt=f"{prefix}_unit_registry_id",
        ),
        Column(table, "First unit ID", "first_unit_id", _K.UNDERLYING_UNIT, False, cadt=f"{prefix}_unit_first_id"),
        Column(table, "Last unit ID", "last_unit_id", _K.UNDERLYING_UNIT, False, cadt=f"{prefix}_unit_last_id"),
        Column(table, "Metric", "metric", _K.METRIC, True, cadt=f"{prefix}_metric"),
        Column(table, "Applicable GWP value(s)", "gwp_values", _K.TEXT, True, cadt=f"{prefix}_gwp_value"),
        Column(table, "Applicable non-GHG metric", "", _K.NON_GHG, False, cadt=f"{prefix}_applicable_non_ghg_metric"),
        Column(table, "Quantity (t CO2 eq)", "quantity", _K.QUANTITY, True, cadt=f"{prefix}_quantity_t_co2"),
        Column(table, "Quantity (in non-GHG metric)", "", _K.NON_GHG, False, cadt=f"{prefix}_quantity_non_ghg"),
        Column(table, "Mitigation type", "mitigation_type", _K.MITIGATION_TYPE, True, cadt=f"{prefix}_mitigation_type"),
        Column(table, "Vintage", "vintage", _K.YEAR, True, cadt=f"{prefix}_vintage_year"),
    )


COLUMNS: tuple[Column, ...] = (
    # --- Submission (9 columns) -------------------------------------------------------------------------
    Column(_T.SUBMISSION, "Party", "party", _K.PARTY, True, cadt="aef_t1_submission_party"),
    Column(_T.SUBMISSION, "Version", "version", _K.VERSION, True, cadt="aef_t1_submission_version"),
    Column(_T.SUBMISSION, "Reported year", "reported_year", _K.YEAR, True, cadt="aef_t1_submission_report_year"),
    Column(
        _T.SUBMISSION, "Date of submission", "submission_date", _K.DATE, True, cadt="aef_t1_submission_submission_date"
    ),
    Column(
        _T.SUBMISSION,
        "Review status of the initial report",
        "",
        _K.PLATFORM,
        False,
        cadt="aef_t1_submission_review_status",
    ),
    Column(
        _T.SUBMISSION,
        "Result of the consistency check of this AEF submission",
        "",
        _K.PLATFORM,
        False,
        cadt="aef_t1_submission_result_check",
    ),
    Column(
        _T.SUBMISSION,
        "First year of the NDC implementation period",
        "ndc_first_year",
        _K.YEAR,
        True,
        cadt="aef_t1_submission_ndc_first_year",
    ),
    Column(
        _T.SUBMISSION,
        "Last year of the NDC implementation period",
        "ndc_last_year",
        _K.YEAR,
        True,
        cadt="aef_t1_submission_ndc_last_year",
    ),
    Column(
        _T.SUBMISSION,
        "Reference to the Article 6 technical expert review report of the initial report",
        "",
        _K.PLATFORM,
        False,
        cadt="aef_t1_submission_reference_review_report",
    ),
    # --- Authorizations (19 columns) ----------------------------------------------------------------------
    Column(_T.AUTHORIZATIONS, "Authorization ID", "authorization_id", _K.TEXT, True, cadt="aef_t2_authorizations_id"),
    Column(_T.AUTHORIZATIONS, "Date of authorization", "date", _K.DATE, True, cadt="aef_t2_authorizations_date"),
    Column(
        _T.AUTHORIZATIONS,
        "Cooperative approach ID",
        "cooperative_approach",
        _K.COOPERATIVE_APPROACH,
        True,
        cadt="aef_t2_authorizations_cooperative_approach_id",
    ),
    Column(
        _T.AUTHORIZATIONS,
        "Version of the authorization",
        "version",
        _K.TEXT,
        True,
        cadt="aef_t2_authorizations_version",
    ),
    Column(
        _T.AUTHORIZATIONS,
        "Authorized quantity",
        "authorized_quantity",
        _K.QUANTITY,
        True,
        cadt="aef_t2_authorizations_quantity",
    ),
    Column(_T.AUTHORIZATIONS, "Metric", "metric", _K.METRIC, True, cadt="aef_t2_authorizations_metric"),
    Column(
        _T.AUTHORIZATIONS,
        "Applicable GWP value(s)",
        "gwp_values",
        _K.TEXT,
        True,
        cadt="aef_t2_authorizations_gwp_value",
    ),
    Column(
        _T.AUTHORIZATIONS,
        "Applicable non-GHG metric",
        "",
        _K.NON_GHG,
        False,
        cadt="aef_t2_authorizations_applicable_non_ghg_metric",
    ),
    Column(_T.AUTHORIZATIONS, "Sector(s)", "sectors", _K.SECTORS, True, cadt="aef_t2_authorizations_sector"),
    Column(
        _T.AUTHORIZATIONS,
        "Activity type(s)",
        "activity_types",
        _K.TEXTS,
        True,
        cadt="aef_t2_authorizations_activity_type",
    ),
    Column(
        _T.AUTHORIZATIONS,
        "Purposes for authorization",
        "purposes",
        _K.PURPOSE,
        True,
        cadt="aef_t2_authorizations_purposes_for_authorization",
    ),
    Column(
        _T.AUTHORIZATIONS,
        "Authorized Party(ies) ID",
        "authorized_parties",
        _K.PARTIES,
        True,
        cadt="aef_t2_authorizations_authorized_party_id",
    ),
    Column(
        _T.AUTHORIZATIONS,
        "Authorized entity(ies) ID",
        "authorized_entities",
        _K.TEXTS,
        False,
        cadt="aef_t2_authorizations_authozied_entity_id",
    ),
    Column(
        _T.AUTHORIZATIONS,
        "OIMP authorized by the Party",
        "oimp_authorized",
        _K.TEXT,
        False,
        only_for=_OIMP,
        cadt="aef_t2_authorizations_oimp_authorized_party",
    ),
    Column(
        _T.AUTHORIZATIONS,
        "Authorized timeframe",
        "timeframe_start",
        _K.TIMEFRAME,
        True,
        cadt="aef_t2_authorizations_authorized_timeframe",
    ),
    Column(
        _T.AUTHORIZATIONS,
        "Authorization terms and conditions",
        "terms_and_conditions",
        _K.TEXT,
        False,
        cadt="aef_t2_authorizations_authorization_terms",
    ),
    Column(
        _T.AUTHORIZATIONS,
        "Authorization documentation",
        "documentation",
        _K.TEXT,
        False,
        cadt="aef_t2_authorizations_authorization_documentation",
    ),
    Column(
        _T.AUTHORIZATIONS,
        "First transfer definition for OIMP",
        "first_transfer_definition",
        _K.FIRST_TRANSFER,
        True,
        only_for=_NOT_NDC_ONLY,
        cadt="aef_t2_authorizations_first_transfer_definition_oimp",
    ),
    Column(
        _T.AUTHORIZATIONS,
        "Additional explanatory information",
        "additional_information",
        _K.TEXT,
        False,
        cadt="aef_t2_authorizations_additional_information",
    ),
    # --- Actions (27 columns) -----------------------------------------------------------------------------
    Column(_T.ACTIONS, "Action date", "action_date", _K.INSTANT, True, cadt="aef_t3_actions_date"),
    Column(_T.ACTIONS, "Action type", "action_type", _K.ACTION_TYPE, True, cadt="aef_t3_actions_type"),
    Column(_T.ACTIONS, "Action subtype", "action_subtype", _K.ACTION_SUBTYPE, True, cadt="aef_t3_actions_subtype"),
    *_block(_T.ACTIONS, "aef_t3_actions"),
    Column(
        _T.ACTIONS,
        "Transferring participating Party ID",
        "transferring_party",
        _K.PARTY,
        True,
        only_for=_ACQ,
        cadt="aef_t3_actions_transferring_party_id",
    ),
    Column(
        _T.ACTIONS,
        "Acquiring participating Party ID",
        "acquiring_party",
        _K.PARTY,
        False,  # required for a Transfer and a first transfer to another Party; see aef_codec._check_row
        only_for=_TRANSFERS,
        cadt="aef_t3_actions_acquiring_party_id",
    ),
    Column(
        _T.ACTIONS,
        "Purpose for which the ITMO has been used towards or cancelled for OIMP",
        "purpose",
        _K.PURPOSE,
        True,
        only_for=_USE_OR_CANCEL,
        cadt="aef_t3_actions_purpose_of_use_oimp",
    ),
    Column(
        _T.ACTIONS,
        "Using/cancelling participating Party ID",
        "using_party",
        _K.PARTY,
        False,
        only_for=_USE_OR_CANCEL,
        cadt="aef_t3_actions_using_participating_party_id",
    ),
    Column(
        _T.ACTIONS,
        "Using/cancelling authorized entity ID",
        "using_entity",
        _K.TEXT,
        False,
        only_for=_USE_OR_CANCEL,
        cadt="aef_t3_actions_using_authorized_entity_id",
    ),
    Column(
        _T.ACTIONS,
        "Calendar year for which the ITMOs are used towards the Party's NDC",
        "ndc_year_of_use",
        _K.YEAR,
        False,  # required for a use towards the NDC; see aef_codec._check_row
        only_for=_USE,
        cadt="aef_t3_actions_itmo_used_year",
    ),
    Column(
        _T.ACTIONS,
        "Result of the consistency checks",
        "",
        _K.PLATFORM,
        False,
        cadt="aef_t3_actions_consistency_check_result",
    ),
    Column(
        _T.ACTIONS,
        "Additional explanatory information",
        "additional_information",
        _K.TEXT,
        False,
        cadt="aef_t3_actions_additional_information",
    ),
    # --- Holdings (16 columns) ----------------------------------------------------------------------------
    *_block(_T.HOLDINGS, "aef_t4_holdings"),
    # --- Authorized entities (8 columns) ------------------------------------------------------------------
    Column(_T.AUTHORIZED_ENTITIES, "Date of the authorization", "authorization_date", _K.DATE, True),
    Column(_T.AUTHORIZED_ENTITIES, "Name", "name", _K.TEXT, True),
    Column(
        _T.AUTHORIZED_ENTITIES,
        "Country of incorporation",
        "country_of_incorporation",
        _K.PARTY,
        True,
        cadt="aef_t5_authorized_entities_incorporation_country",
    ),
    Column(
        _T.AUTHORIZED_ENTITIES,
        "Identification number",
        "identification_number",
        _K.TEXT,
        True,
        cadt="aef_t5_authorized_entities_id",
    ),
    Column(_T.AUTHORIZED_ENTITIES, "Cooperative approach ID", "cooperative_approach", _K.COOPERATIVE_APPROACH, True),
    Column(_T.AUTHORIZED_ENTITIES, "Conditions", "conditions", _K.TEXT, False),
    Column(
        _T.AUTHORIZED_ENTITIES, "Change and revocation conditions", "change_and_revocation_conditions", _K.TEXT, False
    ),
    Column(_T.AUTHORIZED_ENTITIES, "Additional explanatory information", "additional_information", _K.TEXT, False),
)

RECORD_TYPES: dict[Table, type] = {
    Table.SUBMISSION: AefSubmission,
    Table.AUTHORIZATIONS: AefAuthorization,
    Table.ACTIONS: AefAction,
    Table.HOLDINGS: AefHolding,
    Table.AUTHORIZED_ENTITIES: AefAuthorizedEntity,
}

DISCRIMINATOR: dict[Table, str] = {Table.ACTIONS: "action_type", Table.AUTHORIZATIONS: "purposes"}
"""The field whose value decides which ``only_for`` columns apply."""

CADT_TABLES: dict[Table, str] = {
    Table.SUBMISSION: "aef_t1_submission",
    Table.AUTHORIZATIONS: "aef_t2_authorizations",
    Table.ACTIONS: "aef_t3_actions",
    Table.HOLDINGS: "aef_t4_holdings",
    Table.AUTHORIZED_ENTITIES: "aef_t5_authorized_entities",
}


def columns(table: Table) -> tuple[Column, ...]:
    """The table's columns in nomenclature order."""
    return tuple(c for c in COLUMNS if c.table is table)


def headers(table: Table) -> tuple[str, ...]:
    """The table's headers in nomenclature order."""
    return tuple(c.header for c in columns(table))
