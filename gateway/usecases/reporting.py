"""The AEF report of a year, built from the ledger (DESIGN.md section 2): the five tables' canonical rows.

Writing them (one XLSX workbook, or five CSV files) is the AEF adapters' work (`adapters.aef`). Choices the
nomenclature leaves open, each made once here:

- First ID and Last ID come from the block's serials (the ITMO serial is the underlying unit's serial); a block
  whose serials restart per issuance cannot give ITMO serials and is refused, naming the entry (the API keeps
  such blocks out of the ledger: `gateway.domain.protocol.check_itmo_serials`).
- The underlying-unit columns are filled only for issuing registries with a configured AEF code
  (``[ledger] underlying_registry_codes``); the unit IDs are then the block's first and last serials in
  decimal. Without a code the three columns are empty together, as the nomenclature allows.
- An action with no subtype of its own (an onward transfer, an acquisition, a use) is reported with the subtype
  ``Not yet defined``.
- The holdings table is the ledger replayed up to 31 December 23:59:59.999 UTC of the year
  (`gateway.domain.ledger.holdings_at`), that millisecond whole (see below); entries are never changed once
  written, so the file of a past year does not change with later activity.
- Entries of earlier releases keep action instants to the microsecond; the AEF's action date has milliseconds,
  so the report truncates each instant to its millisecond (an action at 08:00:00.123456 is reported at
  08:00:00.123), and reads a year to the end of its last millisecond: an action at 23:59:59.999500 on 31
  December is the year's.

A report of a million actions is never held whole: `Reporting.aef_report_into` reads the ledger once, in one
read transaction (a consistent snapshot), and hands the rows to an `AefSink` batch by batch, the actions as
they are read and the holdings once the replay reaches the year's end. It finds every problem of the ledger
before it returns and raises them together at the end, so the sink must hold what it was given until then (the
AEF adapters write to temporary files and put them in place only when the whole report was accepted).
`Reporting.aef_report` collects the same rows into one `AefReport`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Protocol

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
from gateway.domain.ledger import Holdings, authorizing_parties, versions_ever_in_force, year_end
from gateway.domain.mapping import IssueCode, Problem, RecordRejected
from gateway.domain.records import (
    ActionType,
    Authorization,
    FirstTransferDefinition,
    LedgerEntry,
    Purpose,
    aef_purpose,
)
from gateway.usecases.base import GatewayBase

REPORT_BATCH = 5_000
"""Rows handed to an `AefSink` at a time."""

PARTS = ("submission", "authorizations", "actions", "holdings", "authorized_entities")
"""The report's tables, by their `AefReport` field names, in submission order."""

_MITIGATION_TYPES = {m.value: m for m in MitigationType}
_SUBTYPES = {s.value: s for s in ActionSubtype}
_RETIRING = frozenset({ActionType.USE, ActionType.CANCELLATION, ActionType.VOLUNTARY_CANCELLATION})
_TRANSFERS = frozenset({ActionType.FIRST_TRANSFER, ActionType.TRANSFER})


class AefSink(Protocol):
    """Where a streamed AEF report goes: the rows of each table (named as in `PARTS`), batch by batch."""

    def add(self, part: str, records: Sequence[Any]) -> None:
        """Take the next rows of ``part``."""


class _Collected:
    """An `AefSink` that keeps everything, for `Reporting.aef_report`."""

    def __init__(self) -> None:
        self.parts: dict[str, list[Any]] = {part: [] for part in PARTS}

    def add(self, part: str, records: Sequence[Any]) -> None:
        self.parts[part].extend(records)


class Reporting(GatewayBase):
    """The AEF report of a year."""

    async def aef_report(self, year: int, *, version: str, submission_date: dt.date) -> AefReport:
        """The five AEF tables for ``year`` from the ledger: every action dated in the year (whatever its
        vintage), the holdings at the year's end, and the authorization versions dated by then."""
        collected = _Collected()
        await self.aef_report_into(collected, year, version=version, submission_date=submission_date)
        return AefReport(**{part: tuple(rows) for part, rows in collected.parts.items()})

    async def aef_report_into(
        self, sink: AefSink, year: int, *, version: str, submission_date: dt.date, batch: int = REPORT_BATCH
    ) -> None:
        """`aef_report`, streamed: the rows go to ``sink`` in batches of at most ``batch`` as the ledger is read
        (submission, authorizations, actions, holdings, authorized entities). Every problem of the ledger is
        raised at the end as one `RecordRejected`, after rows may have been handed to the sink."""
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
        # Every instant of the year's last millisecond: an entry an earlier release dated to the microsecond
        # (23:59:59.999500) is reported at 23:59:59.999, in this year, not in no year's report.
        last = end.replace(microsecond=999_999)
        problems: list[Problem] = []
        sink.add(
            "submission",
            [
                AefSubmission(
                    party=self.party,
                    version=version,
                    reported_year=year,
                    submission_date=submission_date,
                    ndc_first_year=settings.first_year,
                    ndc_last_year=settings.last_year,
                )
            ],
        )
        holdings = Holdings()
        rows = _Rows(options.party_registry, options.gwp_values, dict(options.underlying_registry_codes), problems)
        async with self.store.read() as tx:
            try:
                recorded = await tx.list_authorization_versions()
            except _UNREADABLE as exc:
                raise RecordRejected(
                    [*problems, _unreadable("authorizations", "an authorization version", exc)]
                ) from None
            # This Party's own authorizations alone: a copy of another Party's is that Party's to report.
            parties = authorizing_parties(recorded, self.party)
            # A version superseded before its date never came into force, and is no change the AEF reports.
            versions = [
                v
                for v in versions_ever_in_force(recorded)
                if v.date <= end.date() and parties[v.authorization_id] == self.party
            ]
            gwp = options.gwp_values
            sink.add("authorizations", [a for a in (aef_authorization(v, gwp, problems) for v in versions) if a])
            actions: list[AefAction] = []
            action = rows.action
            apply = holdings.apply
            misdated = await tx.ledger_misdated_after(last)
            if misdated is not None:
                entry_id, stored = misdated
                raise RecordRejected(
                    [
                        *problems,
                        Problem(
                            f"ledger[entry {entry_id}].action_date",
                            f"{stored[:64]!r} is no instant this version writes, so the entry belongs to no year; was"
                            " the database changed outside the gateway, or by a later version?",
                            IssueCode.BAD_VALUE,
                        ),
                    ]
                )
            entries = aiter(tx.ledger_until(last))
            read = 0  # the last entry read
            while True:
                try:
                    entry = await anext(entries)
                except StopAsyncIteration:
                    break
                except _UNREADABLE as exc:
                    where = f"ledger[after {read}]" if read else "ledger[first]"
                    raise RecordRejected([*problems, _unreadable(where, "a ledger entry", exc)]) from None
                read = entry.entry_id
                apply(entry)
                if entry.action_date >= start:
                    row = action(entry)
                    if row is not None:
                        actions.append(row)
                        if len(actions) >= batch:
                            sink.add("actions", actions)
                            actions = []
            if actions:
                sink.add("actions", actions)
        held: list[AefHolding] = []
        for block in holdings.blocks():
            holding = rows.holding(block)
            if holding is not None:
                held.append(holding)
                if len(held) >= batch:
                    sink.add("holdings", held)
                    held = []
        if held:
            sink.add("holdings", held)
        if problems:
            raise RecordRejected(problems)


_UNREADABLE = (ValueError, KeyError, TypeError)
"""What the store's decoding of a row raises for a value no version of the gateway writes (an action type or
purpose it does not know, a block that is not JSON): a row changed outside the gateway, or by a later version."""


def _unreadable(where: str, what: str, exc: Exception) -> Problem:
    """The problem of a row the report cannot read: one line, naming where, never a traceback."""
    said = " ".join(str(exc).split())[:200]
    return Problem(
        where,
        f"{what} holds a value this version cannot read ({type(exc).__name__}: {said}); was the database changed"
        " outside the gateway, or by a later version?",
        IssueCode.BAD_VALUE,
    )


def aef_authorization(a: Authorization, gwp_values: str, problems: list[Problem]) -> AefAuthorization | None:
    """The AEF Authorizations row of one version, or None (and a problem) for a version the AEF cannot carry."""
    where = f"authorizations[{a.authorization_id}/{a.version}]"
    purpose = aef_purpose(a.purposes)
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
    if not a.authorized_parties:
        problems.append(
            Problem(
                f"{where}.authorized_parties",
                "names no authorized Party: amend the authorization to give them (nothing is guessed)",
                IssueCode.MISSING_FIELD,
            )
        )
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
        gwp_values=gwp_values,
        sectors=tuple(sectors),
        activity_types=a.activity_types,
        purposes=purpose,
        authorized_parties=a.authorized_parties,
        authorized_entities=a.authorized_entities,
        oimp_authorized=a.oimp_authorized if oimp else "",
        timeframe_start=a.timeframe_start,
        timeframe_end=a.timeframe_end,
        terms_and_conditions=a.terms_and_conditions,
        documentation=a.documentation,
        # The definition applies to every purpose but NDC alone (adapters.aef_columns).
        first_transfer_definition=definition
        if purpose is not Purpose.NDC and definition is not FirstTransferDefinition.FIRST_INTERNATIONAL_TRANSFER
        else None,
        additional_information=("Revoked. " if a.revoked else "") + a.note,
    )


class _Rows:
    """The Actions and Holdings rows of ledger entries and held blocks: the per-entry cost of the report, so the
    settings are looked up once and the enumerations through dictionaries."""

    def __init__(self, registry: str, gwp_values: str, codes: dict[str, str], problems: list[Problem]) -> None:
        self.registry, self.gwp_values, self.codes, self.problems = registry, gwp_values, codes, problems

    def _block(self, block: UnitBlock, where: str) -> tuple[MitigationType, str, str, str] | None:
        """The block's mitigation type and underlying-unit columns, or None (and a problem) for a block the
        AEF cannot name."""
        if block.space.issuance:
            self.problems.append(
                Problem(
                    where,
                    f"{block.describe()}: serials restarting per issuance cannot serve as ITMO serials",
                    IssueCode.UNSUPPORTED,
                )
            )
            return None
        mitigation = _MITIGATION_TYPES.get(block.mitigation_type)
        if mitigation is None:
            self.problems.append(
                Problem(
                    f"{where}.mitigation_type", f"{block.describe()} states no AEF mitigation type", IssueCode.BAD_VALUE
                )
            )
            return None
        code = self.codes.get(block.space.issuing_registry, "")
        if code:
            return mitigation, code, str(block.start), str(block.end)
        return mitigation, "", "", ""

    def action(self, entry: LedgerEntry) -> AefAction | None:
        """The Actions row of one entry."""
        block = entry.block
        found = self._block(block, f"ledger[{entry.entry_id}]")
        if found is None:
            return None
        mitigation, registry, first_unit, last_unit = found
        subtype = _SUBTYPES.get(entry.action_subtype or _UNDEFINED)
        if subtype is None:
            self.problems.append(
                Problem(
                    f"ledger[{entry.entry_id}].action_subtype",
                    f"{entry.action_subtype!r} is not an AEF action subtype",
                    IssueCode.BAD_VALUE,
                )
            )
            return None
        kind = entry.action_type
        retiring = kind in _RETIRING
        instant = entry.action_date
        if instant.microsecond % 1000:
            instant = instant.replace(microsecond=instant.microsecond - instant.microsecond % 1000)
        header = ActionHeader(
            action_date=instant,
            action_type=kind,
            action_subtype=subtype,
            cooperative_approach=entry.cooperative_approach,
            authorization_id=entry.authorization_id,
            first_transferring_party=entry.first_transferring_party,
            party_registry=self.registry,
            underlying_registry=registry,
            metric=Metric.GHG,
            gwp_values=self.gwp_values,
            transferring_party=entry.transferring_party if kind is ActionType.ACQUISITION else "",
            acquiring_party=entry.acquiring_party if kind in _TRANSFERS else "",
            purpose=entry.purpose if retiring else None,
            using_party=entry.using_party if retiring else "",
            using_entity=entry.using_entity if retiring else "",
            ndc_year_of_use=entry.year_of_use,
            additional_information=entry.note,
        )
        return AefAction(
            header, block.start, block.end, first_unit, last_unit, block.quantity, mitigation, block.vintage
        )

    def holding(self, block: UnitBlock) -> AefHolding | None:
        """The Holdings row of one held block."""
        found = self._block(block, f"holdings[{block.describe()}]")
        if found is None:
            return None
        mitigation, registry, first_unit, last_unit = found
        return AefHolding(
            cooperative_approach=block.cooperative_approach,
            authorization_id=block.authorization_id,
            first_transferring_party=block.first_transferring_party,
            party_registry=self.registry,
            itmo_first_serial=block.start,
            itmo_last_serial=block.end,
            underlying_registry=registry,
            first_unit_id=first_unit,
            last_unit_id=last_unit,
            metric=Metric.GHG,
            gwp_values=self.gwp_values,
            quantity=block.quantity,
            mitigation_type=mitigation,
            vintage=block.vintage,
        )


_UNDEFINED = ActionSubtype.NOT_YET_DEFINED.value
