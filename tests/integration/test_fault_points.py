"""A real crash at every fault point, on each side where it applies, and the recovery from it.

Each case starts two real ``carbon-gateway serve`` processes (``CHN`` transfers, ``CHE`` acquires and accepts
every proposal), arms one fault point in one of them, and drives a transfer (or a trust rotation, then a
transfer) through the operator gRPC API. The armed gateway must die by its own SIGKILL at that point (return
code -9, and its last words name the point); it is restarted without the fault, and the transfer must reach
the same final state on both sides, with the invariants of `tests.crash_invariants.check_invariants`.

| case                       | dies | armed                | in flight at the crash                          |
|----------------------------|------|----------------------|-------------------------------------------------|
| chn-propose-committed      | CHN  | propose-committed    | reservation committed, operator not answered    |
| chn-outbox-claimed         | CHN  | outbox-claimed       | Proposal taken from the outbox, not sent        |
| che-outbox-claimed         | CHE  | outbox-claimed       | Decision taken from the outbox, not sent        |
| chn-outbox-sent            | CHN  | outbox-sent          | Proposal sent, CHE's receipt not stored         |
| chn-outbox-sent-completion | CHN  | outbox-sent@2        | Completion sent, CHE's receipt not stored       |
| che-outbox-sent            | CHE  | outbox-sent          | Decision sent, CHN's receipt not stored         |
| che-proposal-committed     | CHE  | proposal-committed   | Proposal decided and committed, no receipt      |
| chn-decision-committed     | CHN  | decision-committed   | debit, ledger, Completion committed, no receipt |
| che-completion-committed   | CHE  | completion-committed | credit and ledger committed, no receipt         |
| chn-rotation-committed     | CHN  | rotation-committed   | new document stored and queued, no switch       |
| che-rotation-committed     | CHE  | rotation-committed   | the same at the acquiring side                  |
| chn-rotation-push-sent     | CHN  | outbox-sent          | new document pushed, receipt not stored         |
| che-rotation-push-sent     | CHE  | outbox-sent          | the same at the acquiring side                  |
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from carbon_gateway.v1 import operator_pb2, records_pb2
from gateway.node import utc_now
from signing import Role, TrustDocument, sign_trust_document, signer_from_uri
from tests.crash_invariants import (
    ISSUED,
    Stub,
    check_invariants,
    propose,
    retrying,
    set_up_books,
    transfer_request,
    wait_settled,
)
from tests.processes import ServeProcess, write_pair

CRASH_TIMEOUT = 60.0
"""Seconds the armed gateway may take to reach its point once the transfer is proposed."""
SETTLE_TIMEOUT = 120.0
"""Seconds both sides may take to settle after the restart (outbox backoff included)."""


@dataclass(frozen=True)
class Case:
    """One crash: which gateway dies, at which armed point, during a transfer or a trust rotation."""

    name: str
    victim: str
    faults: str
    rotation: bool = False


CASES = [
    Case("chn-propose-committed", "CHN", "propose-committed"),
    Case("chn-outbox-claimed", "CHN", "outbox-claimed"),
    Case("che-outbox-claimed", "CHE", "outbox-claimed"),
    Case("chn-outbox-sent", "CHN", "outbox-sent"),
    Case("chn-outbox-sent-completion", "CHN", "outbox-sent@2"),
    Case("che-outbox-sent", "CHE", "outbox-sent"),
    Case("che-proposal-committed", "CHE", "proposal-committed"),
    Case("chn-decision-committed", "CHN", "decision-committed"),
    Case("che-completion-committed", "CHE", "completion-committed"),
    Case("chn-rotation-committed", "CHN", "rotation-committed", rotation=True),
    Case("che-rotation-committed", "CHE", "rotation-committed", rotation=True),
    Case("chn-rotation-push-sent", "CHN", "outbox-sent", rotation=True),
    Case("che-rotation-push-sent", "CHE", "outbox-sent", rotation=True),
]


@asynccontextmanager
async def _running(folder: Path, case: Case) -> AsyncIterator[tuple[ServeProcess, ServeProcess]]:
    chn, che = write_pair(folder)
    try:
        for gateway in (chn, che):
            gateway.start(case.faults if gateway.party == case.victim else "")
        await asyncio.gather(chn.wait_serving(), che.wait_serving())
        yield chn, che
    finally:
        for gateway in (chn, che):
            if gateway.running:
                gateway.stop()


def _next_trust_document(gateway: ServeProcess) -> bytes:
    """Version 2 of ``gateway``'s trust document: the ``next`` key alone, signed by the old key and the new one."""
    old = signer_from_uri(str(gateway.folder / f"{gateway.party.lower()}.key"))
    new = signer_from_uri(str(gateway.folder / f"{gateway.party.lower()}-next.key"))
    document = TrustDocument(
        party=gateway.party,
        version=2,
        expires=utc_now() + dt.timedelta(days=365),
        keys={new.public_key.keyid: new.public_key},
        roles={"trust": Role((new.keyid,), 1), "transfer": Role((new.keyid,), 1)},
    )
    return sign_trust_document(document, [old, new]).to_json()


async def _die_at_point(victim: ServeProcess, case: Case) -> None:
    """Wait for the armed gateway to kill itself, check that it was the point, and start it again unarmed."""
    code = await victim.wait_exit(CRASH_TIMEOUT)
    assert code is not None, f"{case.name}: {victim.party} never reached {case.faults}:\n{victim.log_tail()}"
    assert code == -9, f"{case.name}: {victim.party} ended with {code}, not by SIGKILL:\n{victim.log_tail()}"
    point = case.faults.split("@")[0]
    assert f"fault point {point!r} reached" in victim.log.read_text(), victim.log_tail()
    await victim.restart()


async def _transfer_across_the_crash(chn: Stub, victim: ServeProcess, case: Case) -> str:
    until = time.monotonic() + CRASH_TIMEOUT + SETTLE_TIMEOUT
    proposing = asyncio.create_task(propose(chn, transfer_request(0), until=until))
    await _die_at_point(victim, case)
    return await proposing


async def _rotate_across_the_crash(stubs: dict[str, Stub], victim: ServeProcess, case: Case) -> None:
    """Rotate the victim's trust document while it dies: in the rotation, or in the push that follows it."""
    request = operator_pb2.RotateTrustDocumentRequest(
        idempotency_key="rotate", envelope_json=_next_trust_document(victim), signer="next"
    )
    stub = stubs[victim.party]
    until = time.monotonic() + CRASH_TIMEOUT + SETTLE_TIMEOUT
    rotating = asyncio.create_task(
        retrying(lambda: stub.RotateTrustDocument(request, timeout=10), until=until, what="RotateTrustDocument")
    )
    await _die_at_point(victim, case)
    status = await rotating  # the retry after the restart, same idempotency key
    assert status.version == 2


async def _partner_trusts_version_2(partner: Stub, party: str) -> None:
    """The rotation's push reached the partner despite the crash: it trusts version 2 of ``party``'s document."""
    until = time.monotonic() + SETTLE_TIMEOUT
    while True:
        listed = await retrying(
            lambda: partner.ListTrust(operator_pb2.ListTrustRequest(), timeout=10), until=until, what="ListTrust"
        )
        versions = {p.party: p.version for p in listed.partners}
        if versions.get(party) == 2:
            return
        assert time.monotonic() < until, f"the partner still trusts {party} version {versions.get(party)}"
        await asyncio.sleep(0.25)


@pytest.mark.sqlite_only(
    reason="real serve processes on SQLite files (tests/processes.py); run on PostgreSQL too, these minutes-long"
    " cases would double the suite's longest file"
)
@pytest.mark.asyncio
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_a_crash_at_the_fault_point_is_recovered(tmp_path: Path, case: Case) -> None:
    async with _running(tmp_path, case) as (chn, che):
        victim, survivor = (chn, che) if case.victim == "CHN" else (che, chn)
        async with chn.channel() as chn_channel, che.channel() as che_channel:
            stubs = {"CHN": ServeProcess.stub(chn_channel), "CHE": ServeProcess.stub(che_channel)}
            await set_up_books(stubs["CHN"], stubs["CHE"])
            if case.rotation:
                await _rotate_across_the_crash(stubs, victim, case)
                transfer_id = await propose(stubs["CHN"], transfer_request(0), until=time.monotonic() + 60)
            else:
                transfer_id = await _transfer_across_the_crash(stubs["CHN"], victim, case)
            books = await wait_settled(
                stubs["CHN"], stubs["CHE"], [transfer_id], timeout=SETTLE_TIMEOUT, context=f"{case.name}: "
            )
            check_invariants(*books, issued=ISSUED.end - ISSUED.start + 1)
            assert books[0].transfers[transfer_id].state == records_pb2.COMPLETED
            assert list(books[0].transfers) == [transfer_id], "the retried proposal made a second transfer"
            if case.rotation:
                await _partner_trusts_version_2(stubs[survivor.party], victim.party)
        assert victim.returncodes == [-9], victim.log_tail()
        assert survivor.running, survivor.log_tail()
