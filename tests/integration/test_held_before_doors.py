"""A proposal an earlier release took in and held is checked again before its units are credited.

A partner's Proposal is refused at the door when a block, as it would be credited, is one the AEF report could not
write: first transferred with no tie, tied by a Party code outside ISO 3166-1, or tied to authorization ``NA``.
An earlier release, without those doors, may have taken such a proposal in and held it for its operator. After the
upgrade, accepting it would credit the units and record an Acquisition entry that leaves the year's report, and
every later one while the units are held, impossible to write. The accept is refused, saying to reject the
proposal; the rejection then ends it on both sides with nothing recorded in either ledger.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from adapters.aef import write_workbook
from carbon_gateway.v1 import operator_pb2, partner_pb2, records_pb2
from gateway import wire
from gateway.demo import Pair, demo_block, wait_for_state
from gateway.domain import text
from gateway.domain.errors import ResponseCode
from gateway.domain.records import PARTY_CODES
from gateway.rpc.errors import read_error_detail
from gateway.usecases import acquiring
from tests.integration.harness import TERMINAL, deliver_raw, operator, setup_accounts
from tests.integration.test_itmo_serials import holding_pair  # noqa: F401  (fixture)
from tests.integration.test_transfer import _next_crafter, _rogue_proposal

Earlier = Callable[[pytest.MonkeyPatch, partner_pb2.Proposal], None]


def _untraceable(earlier: pytest.MonkeyPatch, proposal: partner_pb2.Proposal) -> None:
    proposal.blocks[0].first_transferred = True  # and no tie
    earlier.setattr(acquiring, "untraceable", lambda block: None)


def _authorization_na(earlier: pytest.MonkeyPatch, proposal: partner_pb2.Proposal) -> None:
    proposal.authorization_id = "NA"  # the untied block is credited tied to it
    real = text.check_not_na
    earlier.setattr(text, "check_not_na", lambda v, f: None if f.endswith("authorization_id") else real(v, f))


def _tie_party_outside_iso(earlier: pytest.MonkeyPatch, proposal: partner_pb2.Proposal) -> None:
    block = proposal.blocks[0]
    block.first_transferring_party, block.cooperative_approach, block.authorization_id = "ZZZ", "CA0001", "ZZZ-A-1"
    block.first_transferred = True
    earlier.setattr(wire, "PARTY_CODES", PARTY_CODES | {"ZZZ"})


@pytest.mark.parametrize(
    ("earlier", "said"),
    [
        (_untraceable, "without its tie"),
        (_authorization_na, 'authorization ID "NA"'),
        (_tie_party_outside_iso, "'ZZZ', which is not an ISO 3166-1 alpha-3 code"),
    ],
    ids=["untraceable", "authorization-na", "tie-party-outside-iso"],
)
@pytest.mark.asyncio
async def test_a_proposal_held_before_the_doors_cannot_be_accepted_and_is_rejected_instead(
    holding_pair: Pair,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    earlier: Earlier,
    said: str,
) -> None:
    pair = holding_pair
    await setup_accounts(pair)
    proposal = _rogue_proposal(demo_block(2001, 2010), 2001, 2010, "held-before")
    assert isinstance(proposal, partner_pb2.Proposal)
    crafter = await _next_crafter(pair)
    with monkeypatch.context() as before_upgrade:
        earlier(before_upgrade, proposal)
        payload, _ = crafter.statement(proposal=proposal)
        assert (await deliver_raw(pair.che, wire.envelope_to_bytes(crafter.envelope(payload)))).taken_in
        async with operator(pair.che) as che:
            await wait_for_state(che, "held-before", {records_pb2.CHECKED})
    await _accept_refused_then_rejected(pair, "held-before", said)
    async with operator(pair.che) as che:
        held = (await che.ListHoldings(operator_pb2.ListHoldingsRequest(account_id="CH-PH-0001"))).holdings
    assert not any(h.block.start == 2001 for h in held)
    async with pair.che.store.read() as tx:
        assert [e for e in await tx.list_ledger() if e.transfer_id == "held-before"] == []
    year = dt.datetime.now(dt.UTC).year
    write_workbook(await pair.che.core.gateway.aef_report(year, version="1.0", submission_date=dt.date(year, 12, 31)))


@pytest.mark.asyncio
async def test_a_held_proposal_contradicting_this_gateway_s_records_cannot_be_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Units CHE recorded as CHN's ITMOs of vintage 2025, proposed again as vintage 2021 and held by a release
    that did not compare them with its records: accepting them would hold the same serials under two ITMO IDs."""
    from gateway.demo import start_pair
    from gateway.domain.protocol import DecisionPolicy
    from tests.integration.test_ledger import acquired_and_sent_back

    pair = await start_pair(tmp_path)
    try:
        block = await acquired_and_sent_back(pair)
        pair.che.core.gateway.policy = DecisionPolicy()  # CHE now holds every proposal for its operator
        again = records_pb2.UnitBlock()
        again.CopyFrom(block)
        again.first_transferred, again.vintage = True, 2021
        again.first_transferring_party, again.cooperative_approach, again.authorization_id = (
            "CHN",
            "CA0001",
            "CHN-A-0001",
        )
        proposal = _rogue_proposal(again, 1, 400, "again-held")
        crafter = await _next_crafter(pair)
        with monkeypatch.context() as before_upgrade:
            before_upgrade.setattr(acquiring, "check_recorded_abroad", lambda block, recorded: None)
            payload, _ = crafter.statement(proposal=proposal)
            assert (await deliver_raw(pair.che, wire.envelope_to_bytes(crafter.envelope(payload)))).taken_in
            async with operator(pair.che) as che:
                await wait_for_state(che, "again-held", {records_pb2.CHECKED})
        await _accept_refused_then_rejected(pair, "again-held", "vintage")
        async with pair.che.store.read() as tx:
            assert {e.block.vintage for e in await tx.list_ledger()} == {2025}
    finally:
        await pair.stop()


async def _accept_refused_then_rejected(pair: Pair, transfer_id: str, said: str) -> None:
    """CHE's operator accepts the held proposal and is refused, naming why and saying to reject it; the proposal
    stays held, and the rejection then ends it."""
    async with operator(pair.che) as che:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await che.DecideTransfer(
                operator_pb2.DecideTransferRequest(idempotency_key="accept", transfer_id=transfer_id, accept=True)
            )
        detail = read_error_detail(caught.value.trailing_metadata())
        assert detail is not None
        assert (ResponseCode(detail.code), detail.field) == (ResponseCode.PROVENANCE_REFUSED, "accept")
        assert said in detail.message and "reject it" in detail.message
        state = (await che.GetTransfer(operator_pb2.GetTransferRequest(transfer_id=transfer_id))).state
        assert state == records_pb2.CHECKED
        await che.DecideTransfer(
            operator_pb2.DecideTransferRequest(idempotency_key="reject", transfer_id=transfer_id, accept=False)
        )
        assert (await wait_for_state(che, transfer_id, TERMINAL)).state == records_pb2.REJECTED
