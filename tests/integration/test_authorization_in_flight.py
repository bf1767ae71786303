"""An authorization amended while a transfer under it waits for the acquiring side's decision.

The version in force when a transfer was proposed decides how its units are booked, as it decided the Proposal's
blocks (`gateway.usecases.initiating.Initiating._complete`): an amendment recorded while the transfer waits
changes nothing for it, even one dated the day it was proposed. Found by the simulation (`tests.simulation`,
invariants 11 and 12).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from carbon_gateway.v1 import operator_pb2, records_pb2
from gateway.core import utc_now
from gateway.demo import DEMO_AUTHORIZATION, start_pair, wait_for_state
from gateway.domain.protocol import DecisionPolicy
from tests.integration.harness import TERMINAL, operator, proposal_request, setup_accounts

FIRST_TRANSFER_ABROAD = ("First transfer", "First transfer to another Party", "NDC")
"""How CHN books the demo units' first transfer under the demo authorization (NDC, first international
transfer): the entry's action type, subtype and purpose."""


def _amendment(purposes: list[str], definition: str) -> records_pb2.Authorization:
    """The demo authorization's version 2.0, dated today, for ``purposes`` with ``definition``."""
    amended = records_pb2.Authorization()
    amended.CopyFrom(DEMO_AUTHORIZATION)
    amended.version, amended.date = "2.0", dt.datetime.now(dt.UTC).date().isoformat()
    del amended.purposes[:]
    amended.purposes.extend(purposes)
    amended.first_transfer_definition = definition
    return amended


@pytest.mark.parametrize(
    ("purposes", "definition"),
    [
        pytest.param(["NDC", "OIMP"], "Use or Cancellation", id="first-transfer-definition-changed"),
        pytest.param(["OIMP"], "Authorisation", id="ndc-purpose-dropped"),
    ],
)
@pytest.mark.asyncio
async def test_an_amendment_recorded_while_a_transfer_waits_changes_nothing_for_it(
    tmp_path: Path, purposes: list[str], definition: str
) -> None:
    pair = await start_pair(tmp_path, policy=DecisionPolicy())  # every proposal is held for CHE's operator
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "t-waits"))
            await wait_for_state(che, proposed.transfer_id, {records_pb2.CHECKED})
            amended = _amendment(purposes, definition)
            await chn.AmendAuthorization(
                operator_pb2.AmendAuthorizationRequest(idempotency_key="amend", authorization=amended)
            )
            await che.DecideTransfer(
                operator_pb2.DecideTransferRequest(idempotency_key="d", transfer_id=proposed.transfer_id, accept=True)
            )
            assert (await wait_for_state(chn, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            assert (await wait_for_state(che, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            held = (await che.ListHoldings(operator_pb2.ListHoldingsRequest(account_id="CH-PH-0001"))).holdings
            assert [(h.block.start, h.block.end, h.block.first_transferred) for h in held] == [(1, 10, True)]
            entries = (await chn.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())).entries
            booked = [
                (e.action_type, e.action_subtype, e.purpose) for e in entries if e.transfer_id == proposed.transfer_id
            ]
            assert booked == [FIRST_TRANSFER_ABROAD], "CHN books the units as the Proposal delivered them"
    finally:
        await pair.stop()


@pytest.mark.parametrize(
    ("amend_first", "skew"),
    [
        # The amendment is recorded after the Proposal went, by a clock 2 s behind (another replica's, or a clock
        # stepped back): by the instants it was recorded before the transfer was created.
        pytest.param(False, -2.0, id="amended-after-by-a-clock-behind"),
        # The amendment is recorded before the proposal, by a clock 2 s ahead: by the instants it was recorded
        # after the transfer was created, though the Proposal was made under it.
        pytest.param(True, 2.0, id="amended-before-by-a-clock-ahead"),
    ],
)
@pytest.mark.asyncio
async def test_the_completion_books_the_units_under_the_version_the_proposal_used_whatever_the_clocks(
    tmp_path: Path, amend_first: bool, skew: float
) -> None:
    """Both Parties' books agree on whether the units were first transferred: the completion books them under
    the version the Proposal delivered them under, recorded with the transfer, not under the versions whose
    recording instants precede the transfer's (clocks do not follow the order of commits)."""
    offset = [dt.timedelta(0)]
    pair = await start_pair(tmp_path, policy=DecisionPolicy(), clock=lambda: utc_now() + offset[0])
    try:
        block = await setup_accounts(pair)
        async with operator(pair.chn) as chn, operator(pair.che) as che:

            async def amend() -> None:
                offset[0] = dt.timedelta(seconds=skew)
                amended = _amendment(["NDC", "OIMP"], "Use or Cancellation")
                await chn.AmendAuthorization(
                    operator_pb2.AmendAuthorizationRequest(idempotency_key="amend", authorization=amended)
                )
                offset[0] = dt.timedelta(0)

            if amend_first:
                await amend()
            proposed = await chn.ProposeTransfer(proposal_request(block, 1, 10, "t-skewed"))
            await wait_for_state(che, proposed.transfer_id, {records_pb2.CHECKED})
            if not amend_first:
                await amend()
            await che.DecideTransfer(
                operator_pb2.DecideTransferRequest(idempotency_key="d", transfer_id=proposed.transfer_id, accept=True)
            )
            assert (await wait_for_state(chn, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            assert (await wait_for_state(che, proposed.transfer_id, TERMINAL)).state == records_pb2.COMPLETED
            held = (await che.ListHoldings(operator_pb2.ListHoldingsRequest(account_id="CH-PH-0001"))).holdings
            entries = (await chn.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest())).entries
        booked = [
            (e.action_type, e.action_subtype, e.purpose) for e in entries if e.transfer_id == proposed.transfer_id
        ]
        # Under 1.0 (NDC, first international transfer) the units are first transferred now; under 2.0 (first
        # transferred at use or cancellation) they are not.
        first_transferred = not amend_first
        assert [(h.block.start, h.block.end, h.block.first_transferred) for h in held] == [(1, 10, first_transferred)]
        if first_transferred:
            assert booked == [FIRST_TRANSFER_ABROAD]
        else:
            assert [b[:2] for b in booked] == [("Transfer", "Not yet defined")]
    finally:
        await pair.stop()


@pytest.mark.asyncio
async def test_a_revocation_after_the_authorization_expired_is_a_version_that_does_not_expire_before_its_date(
    tmp_path: Path,
) -> None:
    pair = await start_pair(tmp_path)
    try:
        await setup_accounts(pair)
        async with operator(pair.chn) as chn:
            expiring = records_pb2.Authorization()
            expiring.CopyFrom(DEMO_AUTHORIZATION)
            expiring.version, expiring.expires = "2.0", "2026-06-02"
            await chn.AmendAuthorization(
                operator_pb2.AmendAuthorizationRequest(idempotency_key="expires", authorization=expiring)
            )
            await chn.RevokeAuthorization(
                operator_pb2.RevokeAuthorizationRequest(
                    idempotency_key="revoke",
                    authorization_id=DEMO_AUTHORIZATION.authorization_id,
                    version="3.0",
                    date="2026-06-04",
                    reason="withdrawn by the national authority",
                )
            )
            versions = (await chn.ListAuthorizations(operator_pb2.ListAuthorizationsRequest())).versions
        assert [(v.version, v.revoked, v.date, v.expires) for v in versions] == [
            (DEMO_AUTHORIZATION.version, False, DEMO_AUTHORIZATION.date, DEMO_AUTHORIZATION.expires),
            ("2.0", False, DEMO_AUTHORIZATION.date, "2026-06-02"),
            ("3.0", True, "2026-06-04", ""),
        ]
        # No version expires before its own date (the rule `AmendAuthorization` enforces on what it takes in).
        assert all(not v.expires or v.expires >= v.date for v in versions)
    finally:
        await pair.stop()
