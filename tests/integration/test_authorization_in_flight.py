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
from gateway.demo import DEMO_AUTHORIZATION, start_pair, wait_for_state
from gateway.domain.protocol import DecisionPolicy
from tests.integration.harness import TERMINAL, operator, proposal_request, setup_accounts

FIRST_TRANSFER_ABROAD = ("First transfer", "First transfer to another Party", "NDC")
"""How CHN books the demo units' first transfer under the demo authorization (NDC, first international
transfer): the entry's action type, subtype and purpose."""


@pytest.mark.parametrize(
    ("purposes", "definition"),
    [
        pytest.param(["NDC", "OIMP"], "Use or Cancellation", id="first-transfer-definition-changed"),
        pytest.param(["OIMP"], "First international transfer", id="ndc-purpose-dropped"),
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
            amended = records_pb2.Authorization()
            amended.CopyFrom(DEMO_AUTHORIZATION)
            amended.version, amended.date = "2.0", dt.datetime.now(dt.UTC).date().isoformat()
            del amended.purposes[:]
            amended.purposes.extend(purposes)
            amended.first_transfer_definition = definition
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
