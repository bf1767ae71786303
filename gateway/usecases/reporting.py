"""The AEF report of a year, built from the ledger (DESIGN.md section 2): the five tables' canonical rows.

Writing them (one XLSX workbook, or five CSV files) is the AEF adapters' work (`adapters.aef`). Choices the
nomenclature leaves open, each made once here:

- First ID and Last ID come from the block's serials (the ITMO serial is the underlying unit's serial); a block
  whose serials restart per issuance cannot give ITMO serials and is refused, naming the entry.
- The underlying-unit columns are filled only for issuing registries with a configured AEF code
  (``[ledger] underlying_registry_codes``); the unit IDs are then the block's first and last serials in
  decimal. Without a code the three columns are empty together, as the nomenclature allows.
- An action with no subtype of its own (an onward transfer, an acquisition, a use) is reported with the subtype
  ``Not yet defined``.
- The holdings table is the ledger replayed up to 31 December 23:59:59.999 UTC of the year
  (`gateway.domain.ledger.holdings_at`); entries are never changed once written, so the file of a past year
  does not change with later activity.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from gateway.domain.blocks import UnitBlock
from gateway.domain.canonical import (
    ActionHeader,
    ActionSubtype,
    AefAction,
    AefAuthorization,
    AefHolding,
    AefReport,
    AefSector,
    AefSubmission,
    Metric,
    MitigationType,
)
from gateway.domain.errors import GatewayError, ResponseCode
from gateway.domain.ledger import Holdings, year_end
from gateway.domain.mapping import IssueCode, Problem, RecordRejected
from gateway.domain.records import Authorization, FirstTransferDefinition, LedgerEntry, Purpose
from gateway.usecases.base import GatewayBase

_PAIRS = {
    frozenset({Purpose.NDC, Purpose.OIMP}): Purpose.NDC_AND_OIMP,
    frozenset({Purpose.NDC, Purpose.IMP}): Purpose.NDC_AND_IMP,
    frozenset({Purpose.NDC, Purpose.OP}): Purpose.NDC_AND_OP,
}


class Reporting(GatewayBase):
    """The AEF report of a year."""

    async def aef_report(self, year: int, *, version: str, submission_date: dt.date) -> AefReport:
        """The five AEF tables for ``year`` from the ledger: every action dated in the year (whatever its
        vintage), the holdings at the year's end, and the authorization versions dated by then."""
        options = self.ledger_options
        settings = options.adjustments
        if settings is None or not options.party_registry or not options.gwp_values:
            raise GatewayError(
                ResponseCode.INVALID_STATE,
                "the AEF report needs [ledger] ndc_first_year, ndc_last_year, adjustment_method,"
                " party_registry and gwp_values in the configuration",
                field="ledger",
            )
        start = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
        end = year_end(year)
        problems: list[Problem] = []
        actions: list[AefAction] = []
        holdings = Holdings()
        async with self.store.read() as tx:
            versions = [v for v in await tx.list_authorization_versions() if v.date <= end.date()]
            async for entry in tx.ledger_until(end):
                holdings.apply(entry)
                if entry.action_date >= start:
                    action = self._action(entry, problems)
                    if action is not None:
                        actions.append(action)
        held = [h for h in (self._holding(b, problems) for b in holdings.blocks()) if h is not None]
        authorizations = [a for a in (self._authorization(v, problems) for v in versions) if a is not None]
        if problems:
            raise RecordRejected(problems)
        submission = AefSubmission(
            party=self.party,
            version=version,
            reported_year=year,
            submission_date=submission_date,
            ndc_first_year=settings.first_year,
            ndc_last_year=settings.last_year,
        )
        return AefReport((submission,), tuple(authorizations), tuple(actions), tuple(held), ())

    def _underlying(self, block: UnitBlock) -> tuple[str, str, str]:
        code = dict(self.ledger_options.underlying_registry_codes).get(block.space.issuing_registry, "")
        return (code, str(block.start), str(block.end)) if code else ("", "", "")

    def _block_columns(self, block: UnitBlock, where: str, problems: list[Problem]) -> dict[str, object] | None:
        if block.space.issuance:
            problems.append(
                Problem(
                    where,
                    f"{block.describe()}: serials restarting per issuance cannot serve as ITMO serials",
                    IssueCode.UNSUPPORTED,
                )
            )
            return None
        try:
            mitigation = MitigationType(block.mitigation_type)
        except ValueError:
            problems.append(
                Problem(
                    f"{where}.mitigation_type", f"{block.describe()} states no AEF mitigation type", IssueCode.BAD_VALUE
                )
            )
            return None
        registry, first_unit, last_unit = self._underlying(block)
        return {
            "itmo_first_serial": block.start,
            "itmo_last_serial": block.end,
            "first_unit_id": first_unit,
            "last_unit_id": last_unit,
            "quantity": block.quantity,
            "mitigation_type": mitigation,
            "vintage": block.vintage,
            "underlying_registry": registry,
        }

    def _action(self, entry: LedgerEntry, problems: list[Problem]) -> AefAction | None:
        where = f"ledger[{entry.entry_id}]"
        columns = self._block_columns(entry.block, where, problems)
        if columns is None:
            return None
        registry = str(columns.pop("underlying_registry"))
        retiring = entry.action_type.value in ("Use", "Cancellation", "Voluntary Cancellation")
        header = ActionHeader(
            action_date=entry.action_date,
            action_type=entry.action_type,
            action_subtype=ActionSubtype(entry.action_subtype or ActionSubtype.NOT_YET_DEFINED.value),
            cooperative_approach=entry.cooperative_approach,
            authorization_id=entry.authorization_id,
            first_transferring_party=entry.first_transferring_party,
            party_registry=self.ledger_options.party_registry,
            underlying_registry=registry,
            metric=Metric.GHG,
            gwp_values=self.ledger_options.gwp_values,
            transferring_party=entry.transferring_party if entry.action_type.value == "Acquisition" else "",
            acquiring_party=entry.acquiring_party if entry.action_type.value in ("First transfer", "Transfer") else "",
            purpose=entry.purpose if retiring else None,
            using_party=entry.using_party if retiring else "",
            using_entity=entry.using_entity if retiring else "",
            ndc_year_of_use=entry.year_of_use,
            additional_information=entry.note,
        )
        return AefAction(header, **columns)  # type: ignore[arg-type]

    def _holding(self, block: UnitBlock, problems: list[Problem]) -> AefHolding | None:
        where = f"holdings[{block.describe()}]"
        columns = self._block_columns(block, where, problems)
        if columns is None:
            return None
        return AefHolding(
            cooperative_approach=block.cooperative_approach,
            authorization_id=block.authorization_id,
            first_transferring_party=block.first_transferring_party,
            party_registry=self.ledger_options.party_registry,
            metric=Metric.GHG,
            gwp_values=self.ledger_options.gwp_values,
            **columns,  # type: ignore[arg-type]
        )

    def _authorization(self, a: Authorization, problems: list[Problem]) -> AefAuthorization | None:
        where = f"authorizations[{a.authorization_id}/{a.version}]"
        purpose = _one_purpose(a.purposes)
        if purpose is None:
            problems.append(
                Problem(
                    f"{where}.purposes",
                    f"{sorted(p.value for p in a.purposes)} has no single AEF purpose",
                    IssueCode.BAD_VALUE,
                )
            )
            return None
        sectors = []
        for sector in a.sectors:
            try:
                sectors.append(AefSector(sector))
            except ValueError:
                problems.append(Problem(f"{where}.sectors", f"{sector!r} is not an AEF sector", IssueCode.BAD_VALUE))
                return None
        definition = a.first_transfer_definition
        oimp = purpose in (Purpose.OIMP, Purpose.NDC_AND_OIMP)
        return AefAuthorization(
            authorization_id=a.authorization_id,
            date=a.date,
            cooperative_approach=a.cooperative_approach,
            version=a.version,
            authorized_quantity=a.authorized_quantity,
            metric=Metric.GHG,
            gwp_values=self.ledger_options.gwp_values,
            sectors=tuple(sectors),
            activity_types=a.activity_types,
            purposes=purpose,
            authorized_parties=(self.party,),
            authorized_entities=(),
            oimp_authorized="",
            timeframe_start=a.timeframe_start,
            timeframe_end=a.timeframe_end,
            terms_and_conditions="",
            documentation="",
            first_transfer_definition=definition
            if oimp and definition is not FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER
            else None,
            additional_information=("Revoked. " if a.revoked else "") + a.note,
        )


def _one_purpose(purposes: Iterable[Purpose]) -> Purpose | None:
    found = frozenset(purposes)
    if len(found) == 1:
        return next(iter(found))
    return _PAIRS.get(found)
