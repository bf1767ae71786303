"""Driving transfers between a ``CHN`` and a ``CHE`` gateway through their operator APIs, across crashes, and
checking what must hold once both have healed.

Every call is retried with the same idempotency key while a gateway is down or restarting, as an operator's
client would. `check_invariants` is the one statement of what a crash may never break: units conserved, no
serial range in two places, ledger entries on both sides of every completed transfer, nothing left reserved.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias, TypeVar

import grpc

from carbon_gateway.v1 import operator_pb2, operator_pb2_grpc, records_pb2
from gateway.demo import DEMO_AUTHORIZATION, demo_block

if TYPE_CHECKING:
    Stub: TypeAlias = operator_pb2_grpc.OperatorServiceAsyncStub
else:  # the async stub type exists only in the type stubs
    Stub = operator_pb2_grpc.OperatorServiceStub
T = TypeVar("T")
Item = TypeVar("Item")


class Paged(Protocol):
    """A page of an operator list."""

    @property
    def next_page_token(self) -> str: ...


Page = TypeVar("Page", bound=Paged)

FINAL_STATES = frozenset({records_pb2.COMPLETED, records_pb2.REJECTED, records_pb2.CANCELLED, records_pb2.TERMINATED})
PASSING = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
"""What a call answers while its gateway is down, dying or restarting: retried with the same request."""

SOURCE_ACCOUNT = "PO"
ACQUIRING_ACCOUNT = "PH"
ISSUED = records_pb2.UnitBlock()
ISSUED.CopyFrom(demo_block(1, 10**9))
"""The one block issued at ``CHN``; transfer ``i`` takes serials ``i*10+1`` to ``i*10+10`` of it."""
UNITS_PER_TRANSFER = 10


async def retrying(call: Callable[[], Awaitable[T]], *, until: float, what: str) -> T:
    """``call()`` again while its gateway cannot answer, until the monotonic time ``until``."""
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in PASSING:
                raise
            if time.monotonic() > until:
                raise AssertionError(f"{what}: no answer before the deadline ({exc.code().name})") from exc
            await asyncio.sleep(0.1)


async def set_up_books(chn: Stub, che: Stub, *, timeout: float = 60.0) -> None:
    """Accounts on both sides, an authorization and the issuance at ``CHN``."""
    until = time.monotonic() + timeout
    await retrying(
        lambda: chn.OpenAccount(
            operator_pb2.OpenAccountRequest(
                idempotency_key="open-po",
                account=records_pb2.Account(
                    account_id=SOURCE_ACCOUNT, holder_name="Owner", account_type="project owner"
                ),
            ),
            timeout=10,
        ),
        until=until,
        what="OpenAccount at CHN",
    )
    await retrying(
        lambda: che.OpenAccount(
            operator_pb2.OpenAccountRequest(
                idempotency_key="open-ph",
                account=records_pb2.Account(
                    account_id=ACQUIRING_ACCOUNT, holder_name="Holder", account_type="Party holding"
                ),
            ),
            timeout=10,
        ),
        until=until,
        what="OpenAccount at CHE",
    )
    authorization = records_pb2.Authorization()
    authorization.CopyFrom(DEMO_AUTHORIZATION)
    authorization.authorized_quantity = 10**12
    await retrying(
        lambda: chn.RegisterAuthorization(
            operator_pb2.RegisterAuthorizationRequest(idempotency_key="authorize", authorization=authorization),
            timeout=10,
        ),
        until=until,
        what="RegisterAuthorization at CHN",
    )
    await retrying(
        lambda: chn.RegisterIssuance(
            operator_pb2.RegisterIssuanceRequest(idempotency_key="issue", account_id=SOURCE_ACCOUNT, block=ISSUED),
            timeout=10,
        ),
        until=until,
        what="RegisterIssuance at CHN",
    )


def transfer_request(index: int, units: int = UNITS_PER_TRANSFER) -> operator_pb2.ProposeTransferRequest:
    """The Proposal of transfer ``index``: ``units`` serials from its own slot of the issued block."""
    start = index * UNITS_PER_TRANSFER + 1
    return operator_pb2.ProposeTransferRequest(
        idempotency_key=f"transfer-{index}",
        source_account=SOURCE_ACCOUNT,
        selections=[operator_pb2.BlockSelection(space=ISSUED.space, start=start, end=start + units - 1)],
        acquiring_account=records_pb2.AccountRef(party="CHE", account_id=ACQUIRING_ACCOUNT),
        cooperative_approach=DEMO_AUTHORIZATION.cooperative_approach,
        authorization_id=DEMO_AUTHORIZATION.authorization_id,
        purpose="NDC",
        adjustment_method="single-year averaging",
    )


async def propose(chn: Stub, request: operator_pb2.ProposeTransferRequest, *, until: float) -> str:
    """Propose at ``CHN`` (again, with the same idempotency key, until it answers); the transfer ID."""
    transfer = await retrying(
        lambda: chn.ProposeTransfer(request, timeout=10), until=until, what=f"ProposeTransfer {request.idempotency_key}"
    )
    return transfer.transfer_id


@dataclass(frozen=True)
class Books:
    """What one gateway's operator API shows: transfers by ID, current holdings, ledger entries."""

    transfers: dict[str, records_pb2.Transfer]
    holdings: list[operator_pb2.Holding]
    ledger: list[records_pb2.LedgerEntry]


async def read_books(stub: Stub, *, until: float, party: str) -> Books:
    """One gateway's books, read through its operator API, every page."""
    transfers = await read_transfers(stub, until=until, party=party)
    holdings = await every_page(
        lambda token: stub.ListHoldings(operator_pb2.ListHoldingsRequest(page_token=token), timeout=30),
        lambda page: page.holdings,
        until=until,
        what=party,
    )
    ledger = await every_page(
        lambda token: stub.ListLedgerEntries(operator_pb2.ListLedgerEntriesRequest(page_token=token), timeout=30),
        lambda page: page.entries,
        until=until,
        what=party,
    )
    return Books(transfers, holdings, ledger)


async def read_transfers(stub: Stub, *, until: float, party: str) -> dict[str, records_pb2.Transfer]:
    """One gateway's transfers by ID: the cheap part of its books, for polling."""
    listed = await every_page(
        lambda token: stub.ListTransfers(operator_pb2.ListTransfersRequest(page_token=token), timeout=30),
        lambda page: page.transfers,
        until=until,
        what=party,
    )
    return {t.transfer_id: t for t in listed}


async def every_page(
    call: Callable[[str], Awaitable[Page]],
    items: Callable[[Page], Iterable[Item]],
    *,
    until: float,
    what: str,
) -> list[Item]:
    """Every item of an operator list, page after page (each page asked again until it answers)."""
    found: list[Item] = []
    token = ""
    while True:
        page = await retrying(functools.partial(call, token), until=until, what=what)
        found.extend(items(page))
        token = page.next_page_token
        if not token:
            return found


def _state(transfer: records_pb2.Transfer | None) -> str:
    return "unknown" if transfer is None else records_pb2.TransferState.Name(transfer.state)


def unsettled(
    chn: dict[str, records_pb2.Transfer], che: dict[str, records_pb2.Transfer], transfer_ids: Iterable[str]
) -> list[str]:
    """The transfers among ``transfer_ids`` not yet in the same final state on both sides, described."""
    waiting = []
    for transfer_id in transfer_ids:
        mine, theirs = chn.get(transfer_id), che.get(transfer_id)
        if mine is None or theirs is None or mine.state not in FINAL_STATES or theirs.state != mine.state:
            waiting.append(f"{transfer_id}: CHN {_state(mine)}, CHE {_state(theirs)}")
    return waiting


async def wait_settled(
    chn: Stub, che: Stub, transfer_ids: Iterable[str], *, timeout: float, context: str = "", poll: float = 0.25
) -> tuple[Books, Books]:
    """Wait until every transfer is in the same final state on both sides; both sides' books then."""
    ids = list(transfer_ids)
    until = time.monotonic() + timeout
    while True:
        transfers = (
            await read_transfers(chn, until=until, party="CHN"),
            await read_transfers(che, until=until, party="CHE"),
        )
        waiting = unsettled(*transfers, ids)
        if not waiting:
            return await read_books(chn, until=until, party="CHN"), await read_books(che, until=until, party="CHE")
        if time.monotonic() > until:
            shown = "\n  ".join(waiting[:10])
            raise AssertionError(
                f"{context}{len(waiting)} of {len(ids)} transfers not settled on both sides after {timeout} s:"
                f"\n  {shown}"
            )
        await asyncio.sleep(poll)


def _quantity(block: records_pb2.UnitBlock) -> int:
    return int(block.end - block.start + 1)


def _space(block: records_pb2.UnitBlock) -> tuple[str, str, str]:
    return (block.space.unit_kind, block.space.issuing_registry, block.space.issuance)


def check_invariants(chn: Books, che: Books, *, issued: int) -> None:
    """Assert what a crash may never break, on the books of two gateways at rest (no transfer in flight).

    - every transfer either side knows is in the same final state on both sides;
    - units are conserved: holdings at ``CHN`` plus holdings at ``CHE`` (the amounts abroad) are what was
      issued, and ``CHE`` holds exactly what the completed transfers moved;
    - no serial range is in two places: no two current holdings, on either side or across them, overlap;
    - nothing is left reserved or pending;
    - every completed transfer has its ledger entries on both sides, for its whole quantity, and every
      other transfer has none.
    """
    problems: list[str] = []
    known = set(chn.transfers) | set(che.transfers)
    problems += [f"not settled: {line}" for line in unsettled(chn.transfers, che.transfers, sorted(known))]
    for books, party in ((chn, "CHN"), (che, "CHE")):
        for holding in books.holdings:
            if holding.status != "held":
                problems.append(
                    f"{party} holds {holding.block.start}-{holding.block.end} as {holding.status!r}"
                    f" (transfer {holding.transfer_id})"
                )
    held_chn = sum(_quantity(h.block) for h in chn.holdings)
    held_che = sum(_quantity(h.block) for h in che.holdings)
    if held_chn + held_che != issued:
        problems.append(f"units not conserved: CHN holds {held_chn}, CHE {held_che}, {issued} were issued")
    completed = [t for t in chn.transfers.values() if t.state == records_pb2.COMPLETED]
    moved = sum(t.quantity for t in completed)
    if held_che != moved:
        problems.append(f"CHE holds {held_che} units, but the completed transfers moved {moved}")
    ranges = sorted(
        (_space(h.block), h.block.start, h.block.end, party)
        for books, party in ((chn, "CHN"), (che, "CHE"))
        for h in books.holdings
    )
    for (space_a, start_a, end_a, party_a), (space_b, start_b, end_b, party_b) in itertools.pairwise(ranges):
        if space_a == space_b and start_b <= end_a:
            problems.append(f"serials in two places: {start_a}-{end_a} at {party_a} and {start_b}-{end_b} at {party_b}")
    for books, party in ((chn, "CHN"), (che, "CHE")):
        entered: dict[str, int] = {}
        for entry in books.ledger:
            if entry.transfer_id:
                entered[entry.transfer_id] = entered.get(entry.transfer_id, 0) + entry.quantity
        for transfer_id in sorted(known):
            transfer = chn.transfers.get(transfer_id)
            expected = transfer.quantity if transfer is not None and transfer.state == records_pb2.COMPLETED else 0
            if entered.get(transfer_id, 0) != expected:
                problems.append(
                    f"{party}'s ledger has {entered.get(transfer_id, 0)} units for transfer {transfer_id}"
                    f" ({_state(transfer)}), expected {expected}"
                )
    if problems:
        raise AssertionError(f"{len(problems)} invariant(s) broken:\n  " + "\n  ".join(problems[:30]))
